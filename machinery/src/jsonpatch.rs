//! JSON Patch (RFC 6902) on a YAML value, as `--config-patch` and
//! `talosctl patch` take it: a list of `add`, `remove`, `replace`, `move`,
//! `copy` and `test` operations addressed by JSON Pointers (RFC 6901).
//!
//! Written here rather than taken from the `json-patch` crate: that works
//! on `serde_json` values, whose maps (without a feature that would change
//! every JSON map in the workspace) sort their keys, and a patched config
//! would come back in alphabetical order. Mapping keys here keep their
//! order; a key added goes last, one replaced stays where it was.

use serde_yaml_ng::Value;

/// Why a patch could not be applied: the operation (counted from 1), what
/// it was, and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("JSON patch operation {index} ({op}): {reason}")]
pub struct JsonPatchError {
    /// Which operation, counted from 1.
    pub index: usize,
    /// The operation and its path, as written (`add /machine/network/hostname`).
    pub op: String,
    /// What was wrong.
    pub reason: String,
}

/// Applies the operations of `patch` (a list) to `document`, all or none.
///
/// # Errors
/// [`JsonPatchError`] for the first operation that is malformed or does
/// not apply; `document` is then left as it was.
pub fn apply(document: &mut Value, patch: &Value) -> Result<(), JsonPatchError> {
    let Value::Sequence(operations) = patch else {
        return Err(JsonPatchError {
            index: 0,
            op: String::new(),
            reason: "a JSON patch is a list of operations".to_owned(),
        });
    };
    let mut patched = document.clone();
    for (i, operation) in operations.iter().enumerate() {
        let index = i + 1;
        let field = |name: &str| operation.get(name).and_then(Value::as_str);
        let op = field("op").unwrap_or_default();
        let path = field("path");
        let fail = |reason: String| JsonPatchError {
            index,
            op: format!("{op} {}", path.unwrap_or("?")).trim().to_owned(),
            reason,
        };
        if !operation.is_mapping() {
            return Err(fail(
                "an operation is a mapping with op and path".to_owned(),
            ));
        }
        let path = pointer(path.ok_or_else(|| fail("has no path".to_owned()))?).map_err(fail)?;
        let value = || {
            operation
                .get("value")
                .cloned()
                .map(json_numbers)
                .ok_or_else(|| fail("has no value".to_owned()))
        };
        let from = || {
            field("from")
                .ok_or_else(|| fail("has no from".to_owned()))
                .and_then(|from| pointer(from).map_err(fail))
        };
        match op {
            "add" => add(&mut patched, &path, value()?).map_err(fail)?,
            "remove" => {
                remove(&mut patched, &path).map_err(fail)?;
            }
            "replace" => {
                let target = get_mut(&mut patched, &path).map_err(fail)?;
                *target = value()?;
            }
            "move" => {
                let from = from()?;
                if path.len() > from.len() && path.starts_with(&from) {
                    return Err(fail("cannot move a value into itself".to_owned()));
                }
                let moved = remove(&mut patched, &from).map_err(fail)?;
                add(&mut patched, &path, moved).map_err(fail)?;
            }
            "copy" => {
                let copied = get_mut(&mut patched, &from()?).map_err(fail)?.clone();
                add(&mut patched, &path, copied).map_err(fail)?;
            }
            "test" => {
                let expected = value()?;
                let found = get_mut(&mut patched, &path).map_err(fail)?;
                if !same(found, &expected) {
                    return Err(fail("the value there is not the one given".to_owned()));
                }
            }
            "" => return Err(fail("has no op".to_owned())),
            other => {
                return Err(fail(format!(
                    "unknown op {other:?} (expected add, remove, replace, move, copy or test)"
                )));
            }
        }
    }
    *document = patched;
    Ok(())
}

/// The reference tokens of a JSON Pointer (`/a/b~1c` → `a`, `b/c`).
fn pointer(text: &str) -> Result<Vec<String>, String> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = text.strip_prefix('/') else {
        return Err(format!("path {text:?} does not start with /"));
    };
    rest.split('/')
        .map(|token| {
            // `~` is only ever `~0` or `~1` (RFC 6901).
            let mut chars = token.chars().peekable();
            while let Some(c) = chars.next() {
                if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
                    return Err(format!(
                        "path {text:?}: a ~ that is not ~0 or ~1 in {token:?}"
                    ));
                }
            }
            Ok(token.replace("~1", "/").replace("~0", "~"))
        })
        .collect()
}

/// A patch's value with JSON's numbers: JSON has one number type, so a
/// float with no fraction (`1.0`, `1e3`) is the integer it equals.
fn json_numbers(value: Value) -> Value {
    match value {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 => {
                // Exact: the value is an integer below 2^53.
                #[allow(clippy::cast_possible_truncation)]
                Value::from(f as i64)
            }
            _ => Value::Number(n),
        },
        Value::Sequence(items) => Value::Sequence(items.into_iter().map(json_numbers).collect()),
        Value::Mapping(map) => {
            Value::Mapping(map.into_iter().map(|(k, v)| (k, json_numbers(v))).collect())
        }
        other => other,
    }
}

/// Equal as JSON values are (RFC 6902 `test`): numbers by value.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => match (x.as_u64(), y.as_u64()) {
                (Some(x), Some(y)) => x == y,
                #[allow(clippy::float_cmp)]
                _ => x.as_f64() == y.as_f64(),
            },
        },
        (Value::Sequence(x), Value::Sequence(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Mapping(x), Value::Mapping(y)) => {
            x.len() == y.len()
                && x.iter().all(|(k, v)| {
                    key_text(k).is_some_and(|k| {
                        find_key(y, &k)
                            .and_then(|key| y.get(key))
                            .is_some_and(|w| same(v, w))
                    })
                })
        }
        _ => a == b,
    }
}

/// A mapping key as a pointer names it: its text (`10:` is `/10`).
fn key_text(key: &Value) -> Option<String> {
    match key {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The key of `map` a pointer token names.
fn find_key<'a>(map: &'a serde_yaml_ng::Mapping, token: &str) -> Option<&'a Value> {
    map.keys().find(|k| key_text(k).as_deref() == Some(token))
}

/// Shows a pointer's tokens as written.
fn shown(tokens: &[String]) -> String {
    tokens
        .iter()
        .map(|t| format!("/{}", t.replace('~', "~0").replace('/', "~1")))
        .collect()
}

/// A list index token: digits without a leading zero.
fn list_index(token: &str) -> Option<usize> {
    let digits = token.bytes().all(|b| b.is_ascii_digit());
    if token.is_empty() || !digits || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    token.parse().ok()
}

fn get_mut<'a>(document: &'a mut Value, tokens: &[String]) -> Result<&'a mut Value, String> {
    let mut here = document;
    for (depth, token) in tokens.iter().enumerate() {
        let missing = || format!("{} does not exist", shown(&tokens[..=depth]));
        here = match here {
            Value::Mapping(map) => {
                let key = find_key(map, token).cloned().ok_or_else(missing)?;
                map.get_mut(&key).ok_or_else(missing)?
            }
            Value::Sequence(items) => {
                let i = list_index(token).ok_or_else(missing)?;
                items.get_mut(i).ok_or_else(missing)?
            }
            _ => return Err(missing()),
        };
    }
    Ok(here)
}

/// The parent of the last token, and the last token.
fn parent<'a, 't>(
    document: &'a mut Value,
    tokens: &'t [String],
) -> Result<(&'a mut Value, &'t str), String> {
    let Some((last, up)) = tokens.split_last() else {
        return Err("the whole document cannot be the target here".to_owned());
    };
    Ok((get_mut(document, up)?, last.as_str()))
}

fn add(document: &mut Value, tokens: &[String], value: Value) -> Result<(), String> {
    if tokens.is_empty() {
        *document = value;
        return Ok(());
    }
    let (parent, last) = parent(document, tokens)?;
    match parent {
        Value::Mapping(map) => {
            match find_key(map, last).cloned() {
                Some(key) => {
                    if let Some(existing) = map.get_mut(&key) {
                        *existing = value;
                    }
                }
                None => {
                    map.insert(Value::String(last.to_owned()), value);
                }
            }
            Ok(())
        }
        Value::Sequence(items) => {
            let at = if last == "-" {
                items.len()
            } else {
                list_index(last)
                    .filter(|i| *i <= items.len())
                    .ok_or_else(|| format!("{} is past the end of the list", shown(tokens)))?
            };
            items.insert(at, value);
            Ok(())
        }
        _ => Err(format!(
            "{} is not a mapping or a list",
            shown(&tokens[..tokens.len() - 1])
        )),
    }
}

fn remove(document: &mut Value, tokens: &[String]) -> Result<Value, String> {
    let (parent, last) = parent(document, tokens)?;
    let missing = || format!("{} does not exist", shown(tokens));
    match parent {
        Value::Mapping(map) => {
            let key = find_key(map, last).cloned().ok_or_else(missing)?;
            map.shift_remove(&key).ok_or_else(missing)
        }
        Value::Sequence(items) => {
            let i = list_index(last)
                .filter(|i| *i < items.len())
                .ok_or_else(missing)?;
            Ok(items.remove(i))
        }
        _ => Err(missing()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Value {
        serde_yaml_ng::from_str(text).expect("yaml")
    }

    fn patched(document: &str, patch: &str) -> Result<Value, JsonPatchError> {
        let mut doc = yaml(document);
        apply(&mut doc, &yaml(patch)).map(|()| doc)
    }

    #[test]
    fn every_operation_applies_as_rfc_6902_says() {
        let doc = "machine:\n  type: worker\n  certSANs: [a, b]\n  network: {}\ncluster: {}\n";
        let out = patched(
            doc,
            r#"[
              {"op": "add", "path": "/machine/network/hostname", "value": "n1"},
              {"op": "add", "path": "/machine/certSANs/-", "value": "c"},
              {"op": "add", "path": "/machine/certSANs/0", "value": "z"},
              {"op": "replace", "path": "/machine/type", "value": "controlplane"},
              {"op": "remove", "path": "/machine/certSANs/1"},
              {"op": "copy", "from": "/machine/network/hostname", "path": "/cluster/name"},
              {"op": "move", "from": "/cluster/name", "path": "/cluster/clusterName"},
              {"op": "test", "path": "/machine/certSANs", "value": [z, b, c]},
              {"op": "add", "path": "/machine/a~1b~0c", "value": 1}
            ]"#,
        )
        .expect("applies");
        assert_eq!(
            out,
            yaml(
                "machine:\n  type: controlplane\n  certSANs: [z, b, c]\n  network: {hostname: n1}\n  a/b~c: 1\ncluster: {clusterName: n1}\n"
            )
        );
        // Keys keep their order: a replaced key stays, an added one is last.
        let keys: Vec<&str> = out["machine"]
            .as_mapping()
            .expect("mapping")
            .keys()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(keys, ["type", "certSANs", "network", "a/b~c"]);
    }

    #[test]
    fn numbers_and_keys_are_json_s() {
        // JSON has one number type: 1 and 1.0 are the same value, and a
        // float with no fraction is written as the integer.
        let out = patched(
            "x: 1\nl: [1, {a: 2}]\n10: ten\n",
            r#"[{"op": "test", "path": "/x", "value": 1.0},
                {"op": "test", "path": "/l", "value": [1.0, {"a": 2e0}]},
                {"op": "add", "path": "/mtu", "value": 1.5e3},
                {"op": "replace", "path": "/10", "value": "TEN"}]"#,
        )
        .expect("applies");
        assert_eq!(out, yaml("x: 1\nl: [1, {a: 2}]\n10: TEN\nmtu: 1500\n"));
        assert!(
            patched("x: 1.5", r#"[{"op": "test", "path": "/x", "value": 1}]"#).is_err(),
            "1.5 is not 1"
        );
        let err = patched("x: 1", r#"[{"op": "add", "path": "/a~2b", "value": 1}]"#)
            .expect_err("~2 is no escape");
        assert!(err.reason.contains("not ~0 or ~1"), "{err}");
    }

    #[test]
    fn a_failing_operation_names_itself_and_changes_nothing() {
        let doc = "machine:\n  type: worker\n";
        let mut value = yaml(doc);
        let err = apply(
            &mut value,
            &yaml(
                r#"[{"op": "replace", "path": "/machine/type", "value": x},
                    {"op": "remove", "path": "/machine/network/hostname"}]"#,
            ),
        )
        .expect_err("no network");
        assert_eq!(
            err.to_string(),
            "JSON patch operation 2 (remove /machine/network/hostname): /machine/network does not exist"
        );
        assert_eq!(value, yaml(doc), "all or none");

        for (patch, reason) in [
            (
                r#"[{"op": "test", "path": "/machine/type", "value": cp}]"#,
                "not the one given",
            ),
            (
                r#"[{"op": "add", "path": "machine", "value": 1}]"#,
                "does not start with /",
            ),
            (
                r#"[{"op": "add", "path": "/machine/type/x", "value": 1}]"#,
                "not a mapping or a list",
            ),
            (
                r#"[{"op": "frob", "path": "/machine"}]"#,
                "unknown op \"frob\"",
            ),
            (r#"[{"op": "add", "path": "/machine/x"}]"#, "has no value"),
            (
                r#"[{"op": "move", "from": "/machine", "path": "/machine/x"}]"#,
                "into itself",
            ),
            (r#"[{"path": "/machine"}]"#, "has no op"),
        ] {
            let err = patched(doc, patch).expect_err(patch);
            assert!(err.reason.contains(reason), "{patch}: {err}");
        }
        let err = patched("l: [a]", r#"[{"op": "add", "path": "/l/2", "value": b}]"#)
            .expect_err("past the end");
        assert!(err.reason.contains("past the end"), "{err}");
        let err = patched("l: [a, b]", r#"[{"op": "remove", "path": "/l/01"}]"#)
            .expect_err("a leading zero is not an index");
        assert!(err.reason.contains("/l/01 does not exist"), "{err}");
    }
}

//! The JSONPath templates `talosctl get -o jsonpath=...` takes, in the
//! Kubernetes syntax upstream's talosctl uses: literal text and `{...}`
//! expressions, each expression a path from the document (`@` or a leading
//! `.`) through `.key`, `["key"]`, `[n]` (negative from the end), `[*]` and
//! `.*`. Each result is printed on its own line: strings and numbers as
//! they are, objects and lists as JSON indented by four spaces. A key that
//! is not there is an error naming it, as upstream's. Filters, slices,
//! recursive descent and `range` are refused when the template is parsed.

use serde_json::Value;

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(i64),
    All,
}

/// A piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Path(Vec<Step>),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
    source: String,
}

impl Template {
    /// Parses `template`.
    ///
    /// # Errors
    /// Unbalanced braces or syntax this reader does not follow, named.
    pub fn parse(template: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            match rest.find('{') {
                Some(0) => {
                    let end = rest
                        .find('}')
                        .ok_or_else(|| format!("unclosed action in {template:?}"))?;
                    pieces.push(expression(&rest[1..end])?);
                    rest = &rest[end + 1..];
                }
                Some(at) => {
                    pieces.push(Piece::Text(rest[..at].to_owned()));
                    rest = &rest[at..];
                }
                None => {
                    pieces.push(Piece::Text(rest.to_owned()));
                    rest = "";
                }
            }
        }
        Ok(Template {
            pieces,
            source: template.to_owned(),
        })
    }

    /// The results for `doc`, one per line as upstream prints them.
    ///
    /// # Errors
    /// A key is not found or a step does not apply to the value.
    pub fn render(&self, doc: &Value) -> Result<String, String> {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => {
                    out.push_str(text);
                    out.push('\n');
                }
                Piece::Path(steps) => {
                    for value in select(doc, steps)? {
                        out.push_str(&text_of(value)?);
                        out.push('\n');
                    }
                }
            }
        }
        Ok(out)
    }

    /// The template as given.
    #[must_use]
    pub fn source(&self) -> &str {
        &self.source
    }
}

fn expression(inner: &str) -> Result<Piece, String> {
    let inner = inner.trim();
    // A quoted literal: `{"\n"}`.
    if let Some(quoted) = inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        return Ok(Piece::Text(
            quoted.replace("\\n", "\n").replace("\\t", "\t"),
        ));
    }
    // Keys may contain these words and characters; only the syntax is
    // refused: a leading range/end action, recursive descent, and
    // filters or slices inside brackets.
    let first_word = inner.split_whitespace().next().unwrap_or_default();
    let in_brackets = inner
        .split('[')
        .skip(1)
        .map(|b| b.split(']').next().unwrap_or_default());
    let unsupported = if first_word == "range" || first_word == "end" {
        Some(first_word)
    } else if inner.contains("..") {
        Some("..")
    } else {
        in_brackets.into_iter().find_map(|b| {
            if b.contains("?(") {
                Some("?(")
            } else if b.contains(':') && !b.starts_with(['\'', '"']) {
                Some(":")
            } else {
                None
            }
        })
    };
    if let Some(what) = unsupported {
        return Err(format!(
            "{inner:?}: {what:?} is not supported (paths of keys, [n], [*] and .* are)"
        ));
    }
    let mut rest = inner.strip_prefix('@').unwrap_or(inner);
    let mut steps = Vec::new();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            let key = &after[..end];
            match key {
                "" => return Err(format!("{inner:?}: an empty key")),
                "*" => steps.push(Step::All),
                key => steps.push(Step::Key(key.to_owned())),
            }
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let end = after
                .find(']')
                .ok_or_else(|| format!("{inner:?}: unclosed ["))?;
            let index = after[..end].trim();
            let step = if index == "*" {
                Step::All
            } else if let Some(key) = index
                .strip_prefix(['"', '\''])
                .and_then(|k| k.strip_suffix(['"', '\'']))
            {
                Step::Key(key.to_owned())
            } else {
                Step::Index(
                    index
                        .parse()
                        .map_err(|_| format!("{inner:?}: {index:?} is not an index"))?,
                )
            };
            steps.push(step);
            rest = &after[end + 1..];
        } else {
            return Err(format!("{inner:?}: unexpected {rest:?}"));
        }
    }
    Ok(Piece::Path(steps))
}

fn select<'a>(doc: &'a Value, steps: &[Step]) -> Result<Vec<&'a Value>, String> {
    let mut current = vec![doc];
    for step in steps {
        let mut next = Vec::new();
        for value in current {
            match (step, value) {
                (Step::Key(key), Value::Object(map)) => {
                    next.push(map.get(key).ok_or_else(|| format!("{key} is not found"))?);
                }
                (Step::Index(i), Value::Array(items)) => {
                    let len = i64::try_from(items.len()).unwrap_or(i64::MAX);
                    let at = if *i < 0 { len + i } else { *i };
                    let item = usize::try_from(at)
                        .ok()
                        .and_then(|at| items.get(at))
                        .ok_or_else(|| {
                            format!("array index out of bounds: index {i}, length {len}")
                        })?;
                    next.push(item);
                }
                (Step::All, Value::Array(items)) => next.extend(items),
                (Step::All, Value::Object(map)) => next.extend(map.values()),
                (Step::Key(key), other) => {
                    return Err(format!("{key} is not found in {}", kind(other)));
                }
                (Step::Index(i), other) => {
                    return Err(format!("cannot index {} with [{i}]", kind(other)));
                }
                (Step::All, _) => {}
            }
        }
        current = next;
    }
    Ok(current)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn text_of(value: &Value) -> Result<String, String> {
    Ok(match value {
        Value::Null => "<nil>".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        composite => crate::output::to_json_indent4(composite).map_err(|e| e.to_string())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Value {
        serde_json::json!({
            "node": "10.5.0.2",
            "metadata": {"id": "eth0", "version": 3},
            "spec": {
                "addresses": ["10.5.0.2/24", "fd00::2/64"],
                "links": [{"name": "eth0", "mtu": 1500}, {"name": "lo", "mtu": 65536}],
                "up": true
            }
        })
    }

    fn render(t: &str) -> Result<String, String> {
        Template::parse(t)?.render(&doc())
    }

    #[test]
    fn paths_pick_what_upstream_picks() {
        assert_eq!(render("{.metadata.id}").unwrap(), "eth0\n");
        assert_eq!(render("{.metadata.version}").unwrap(), "3\n");
        assert_eq!(render("{.spec.up}").unwrap(), "true\n");
        assert_eq!(render("{.spec.addresses[1]}").unwrap(), "fd00::2/64\n");
        assert_eq!(render("{.spec.addresses[-1]}").unwrap(), "fd00::2/64\n");
        assert_eq!(render("{.spec.links[*].name}").unwrap(), "eth0\nlo\n");
        assert_eq!(render("{.spec.links[0]['mtu']}").unwrap(), "1500\n");
        assert_eq!(
            render("{.spec.addresses}").unwrap(),
            "[\n    \"10.5.0.2/24\",\n    \"fd00::2/64\"\n]\n"
        );
        assert_eq!(render("{@.node}").unwrap(), "10.5.0.2\n");
        assert_eq!(render("id={.metadata.id}").unwrap(), "id=\neth0\n");
        assert_eq!(render("{.metadata.id}{\"\\n\"}").unwrap(), "eth0\n\n\n");
        assert!(render("{.metadata.*}").unwrap().contains("eth0\n"));
    }

    #[test]
    fn missing_keys_and_bad_syntax_are_named() {
        assert_eq!(
            render("{.spec.hostname}").unwrap_err(),
            "hostname is not found"
        );
        assert_eq!(
            render("{.spec.addresses[5]}").unwrap_err(),
            "array index out of bounds: index 5, length 2"
        );
        assert!(render("{.spec.up.x}").unwrap_err().contains("a boolean"));
        assert!(
            Template::parse("{.spec")
                .unwrap_err()
                .contains("unclosed action")
        );
        assert!(
            Template::parse("{..name}")
                .unwrap_err()
                .contains("not supported")
        );
        assert!(
            Template::parse("{range .items}")
                .unwrap_err()
                .contains("not supported")
        );
        assert!(
            Template::parse("{.spec.addresses[0:1]}")
                .unwrap_err()
                .contains("not supported")
        );
        // Words the syntax uses are fine inside keys.
        let doc = serde_json::json!({"spec": {"vendorID": "0x1af4", "pending": 2, "a:b": 1}});
        let t = |s: &str| Template::parse(s).and_then(|t| t.render(&doc));
        assert_eq!(t("{.spec.vendorID}").expect("vendorID"), "0x1af4\n");
        assert_eq!(t("{.spec.pending}").expect("pending"), "2\n");
        assert_eq!(t("{.spec['a:b']}").expect("quoted colon"), "1\n");
        assert!(
            Template::parse("{.spec.links[?(@.mtu>1)]}")
                .unwrap_err()
                .contains("not supported")
        );
        assert!(
            Template::parse("{.spec.addresses[x]}")
                .unwrap_err()
                .contains("not an index")
        );
    }
}

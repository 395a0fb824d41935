//! The JSONPath templates `talosctl get -o jsonpath=...` takes, in the
//! Kubernetes syntax upstream's talosctl uses (`k8s.io/client-go`'s
//! `jsonpath`), read and applied the way that package does:
//!
//! - literal text, and `{...}` actions;
//! - in an action: `@` and `$` (the current value), `.key` (a `\` escapes
//!   the next character, so `.kubernetes\.io/hostname` is one key), `.*`,
//!   `..` (recursive descent), `[n]` (negative from the end),
//!   `[start:end:step]`, `[*]`, `['key']` (read as `.key`), `["key"]` (one
//!   key, dots and all: not upstream's), unions `[a,b]`, filters
//!   `[?(@.x == 'y')]` with `==`, `!=`, `<`, `>`, `<=`, `>=` or only a path
//!   (it exists), and quoted, number and `true`/`false` literals;
//! - `{range PATH}...{end}`, which applies what is between to each value
//!   PATH picks.
//!
//! Each result is printed on its own line, as upstream's talosctl prints
//! them: strings and numbers as they are, objects and lists as JSON
//! indented by four spaces, literal text too. A key none of the values has
//! is an error naming it (`hostname is not found`), as upstream's.
//!
//! Where upstream's package has a flaw, this reads the template as its
//! syntax means and says so here:
//! - a slice that picks nothing from one list does not drop what the
//!   lists after it give (upstream returns early);
//! - a filter's path that fails on anything but a missing key does not
//!   pass the member (upstream passes it), and a null list filters to
//!   nothing (upstream: an error);
//! - `.*` and `..` do not go into strings (upstream gives their bytes);
//! - a range works for every resource (upstream's parser loses the range
//!   after the first resource of a `get`);
//! - unknown words and operators are refused when the template is read,
//!   not when it is applied to the first resource.
//!
//! Objects and lists are printed by serde's JSON: floats as serde writes
//! them and `<`, `>`, `&` unescaped (Go writes `\u003c`).

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::Value;

/// One step of an action, applied to every value the steps before picked.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    /// `.key`: the key of each object that has it.
    Field(String),
    /// `.*`: every member of objects and lists.
    Wildcard,
    /// `..`: each object and list, and every one inside it.
    Recursive,
    /// `[n]`, `[a:b:c]`, `[*]`.
    Slice(Slice),
    /// `[a,b]`: what each picks, one after the other.
    Union(Vec<Vec<Op>>),
    /// `[?(...)]`: the members of lists that pass.
    Filter(Box<Filter>),
    /// A quoted literal: replaces the values with itself, once.
    Text(String),
    /// A number or boolean literal: one for each value.
    Literal(Value),
}

/// `[start:end:step]`; `[n]` is `[n:n+1]` with the end derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slice {
    start: Option<i64>,
    end: Option<i64>,
    end_derived: bool,
    step: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Filter {
    left: Vec<Op>,
    test: Test,
    right: Vec<Op>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Test {
    Exists,
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
}

/// A piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Text(String),
    Action(Vec<Op>),
    /// `{range PATH}` BODY `{end}`.
    Range(Vec<Op>, Vec<Node>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keyword {
    Range,
    End,
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    nodes: Vec<Node>,
    source: String,
}

impl Template {
    /// Parses `template`.
    ///
    /// # Errors
    /// The syntax is not the Kubernetes JSONPath syntax, named as
    /// upstream's parser names it (`unclosed action`, `invalid array index
    /// x`, ...).
    pub fn parse(template: &str) -> Result<Template, String> {
        let mut parser = Parser {
            src: template,
            pos: 0,
        };
        // The templates of the ranges still open, each with the nodes
        // before it.
        let mut open: Vec<(Vec<Op>, Vec<Node>)> = Vec::new();
        let mut nodes = Vec::new();
        loop {
            let rest = parser.rest();
            let at = rest.find('{').unwrap_or(rest.len());
            if at > 0 {
                nodes.push(Node::Text(rest[..at].to_owned()));
            }
            parser.pos += at;
            if parser.rest().is_empty() {
                break;
            }
            parser.pos += 1;
            let (ops, keyword) = parser.action(true)?;
            match keyword {
                None => nodes.push(Node::Action(ops)),
                Some(Keyword::Range) => open.push((ops, std::mem::take(&mut nodes))),
                Some(Keyword::End) => {
                    let (path, before) = open
                        .pop()
                        .ok_or_else(|| "not in range, nothing to end".to_owned())?;
                    let body = std::mem::replace(&mut nodes, before);
                    nodes.push(Node::Range(path, body));
                }
            }
        }
        if !open.is_empty() {
            return Err(format!("{{range}} without {{end}} in {template:?}"));
        }
        Ok(Template {
            nodes,
            source: template.to_owned(),
        })
    }

    /// The results for `doc`, one per line as upstream prints them.
    ///
    /// # Errors
    /// A key none of the values has, an index out of bounds, a step that
    /// does not apply to the value, values a filter cannot compare.
    pub fn render(&self, doc: &Value) -> Result<String, String> {
        let mut out = String::new();
        render_nodes(&self.nodes, doc, &mut out)?;
        Ok(out)
    }

    /// The template as given.
    #[must_use]
    pub fn source(&self) -> &str {
        &self.source
    }
}

fn render_nodes(nodes: &[Node], current: &Value, out: &mut String) -> Result<(), String> {
    for node in nodes {
        match node {
            Node::Text(text) => {
                out.push_str(text);
                out.push('\n');
            }
            Node::Action(ops) => {
                for value in eval(vec![Cow::Borrowed(current)], ops)? {
                    out.push_str(&text_of(&value)?);
                    out.push('\n');
                }
            }
            Node::Range(path, body) => {
                for value in eval(vec![Cow::Borrowed(current)], path)? {
                    render_nodes(body, &value, out)?;
                }
            }
        }
    }
    Ok(())
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        &self.src[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    /// The steps of one action, the `{` read. In a template (`closed`) the
    /// action ends at its `}`, which is read; a part of an action (a union
    /// member, a filter's side) ends with its text.
    fn action(&mut self, closed: bool) -> Result<(Vec<Op>, Option<Keyword>), String> {
        let mut ops = Vec::new();
        let mut keyword = None;
        loop {
            let rest = self.rest();
            if closed && rest.starts_with('}') {
                self.pos += 1;
                break;
            }
            if rest.starts_with("[?(") {
                self.pos += 3;
                ops.push(self.filter()?);
                continue;
            }
            if rest.starts_with("..") {
                if ops.last() == Some(&Op::Recursive) {
                    return Err("invalid multiple recursive descent".into());
                }
                self.pos += 2;
                ops.push(Op::Recursive);
                if self.peek().is_some_and(alphanumeric) {
                    ops.extend(self.field());
                }
                continue;
            }
            let Some(c) = self.next() else {
                if closed {
                    return Err("unclosed action".into());
                }
                break;
            };
            match c {
                '\r' | '\n' => return Err("unclosed action".into()),
                ' ' | '\t' | '@' | '$' => {}
                '[' => ops.push(self.array()?),
                '"' | '\'' => ops.push(Op::Text(self.quote(c)?)),
                '.' => ops.extend(self.field()),
                '+' | '-' | '0'..='9' => {
                    self.pos -= 1;
                    ops.push(self.number()?);
                }
                c if alphanumeric(c) => {
                    self.pos -= c.len_utf8();
                    let word = self.word();
                    match word {
                        "true" => ops.push(Op::Literal(Value::Bool(true))),
                        "false" => ops.push(Op::Literal(Value::Bool(false))),
                        "range" | "end" if closed && ops.is_empty() && keyword.is_none() => {
                            keyword = Some(if word == "range" {
                                Keyword::Range
                            } else {
                                Keyword::End
                            });
                        }
                        "range" | "end" => {
                            return Err(format!("{word:?} must open an action of its own"));
                        }
                        other => return Err(format!("unrecognized identifier {other}")),
                    }
                }
                other => {
                    // As Go's %#U: the character quoted when printable.
                    let code = format!("U+{:04X}", u32::from(other));
                    return Err(if other.is_control() {
                        format!("unrecognized character in action: {code}")
                    } else {
                        format!("unrecognized character in action: {code} '{other}'")
                    });
                }
            }
        }
        if keyword == Some(Keyword::End) && !ops.is_empty() {
            return Err("{end} takes nothing else".into());
        }
        Ok((ops, keyword))
    }

    /// A key after `.`, up to the first unescaped terminator; `*` is the
    /// wildcard and nothing at all the current value.
    fn field(&mut self) -> Option<Op> {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if c == '\\' {
                self.next();
                self.next();
            } else if terminator(c) {
                break;
            } else {
                self.next();
            }
        }
        match &self.src[start..self.pos] {
            "" => None,
            "*" => Some(Op::Wildcard),
            key => Some(Op::Field(key.replace('\\', ""))),
        }
    }

    fn word(&mut self) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(|c| !terminator(c)) {
            self.next();
        }
        &self.src[start..self.pos]
    }

    fn number(&mut self) -> Result<Op, String> {
        let start = self.pos;
        if matches!(self.peek(), Some('+' | '-')) {
            self.next();
        }
        while self.peek().is_some_and(|c| c == '.' || c.is_ascii_digit()) {
            self.next();
        }
        let text = &self.src[start..self.pos];
        if let Ok(n) = text.parse::<i64>() {
            return Ok(Op::Literal(Value::from(n)));
        }
        text.parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(|n| Op::Literal(Value::Number(n)))
            .ok_or_else(|| format!("cannot parse number {text}"))
    }

    /// The text of a quoted literal, its quote `quote` read.
    fn quote(&mut self, quote: char) -> Result<String, String> {
        let start = self.pos;
        loop {
            match self.next() {
                None | Some('\n') => return Err("unterminated quoted string".into()),
                Some('\\') => {
                    self.next();
                }
                Some(c) if c == quote => break,
                Some(_) => {}
            }
        }
        let inner = &self.src[start..self.pos - 1];
        unquote(inner)
            .ok_or_else(|| format!("unquote string {quote}{inner}{quote} error invalid syntax"))
    }

    /// What is between `[` (read) and `]`: a union, a quoted key or a
    /// slice.
    fn array(&mut self) -> Result<Op, String> {
        let rest = self.rest();
        let end = rest
            .find(['\n', ']'])
            .filter(|&at| rest[at..].starts_with(']'))
            .ok_or_else(|| "unterminated array".to_owned())?;
        let text = &rest[..end];
        self.pos += end + 1;
        let text = if text == "*" { ":" } else { text };
        if text.contains(',') {
            let members = text
                .split(',')
                .map(|member| part(&format!("[{}]", member.trim_matches(' '))))
                .collect::<Result<_, _>>()?;
            return Ok(Op::Union(members));
        }
        if let Some(key) = text
            .strip_prefix('\'')
            .and_then(|t| t.strip_suffix('\''))
            .filter(|key| !key.contains('\''))
        {
            // As upstream: `['a.b']` is `.a.b`.
            let ops = part(&format!(".{key}"))?;
            return Ok(match <[Op; 1]>::try_from(ops) {
                Ok([op]) => op,
                Err(ops) => Op::Union(vec![ops]),
            });
        }
        if let Some(key) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
            return Ok(Op::Field(key.to_owned()));
        }
        slice(text)
    }

    /// A filter, `[?(` read, up to its `)]`.
    fn filter(&mut self) -> Result<Op, String> {
        let start = self.pos;
        let mut quote: Option<char> = None;
        loop {
            match self.next() {
                None | Some('\n') => return Err("unterminated filter".into()),
                Some('\\') if quote.is_some() => {
                    self.next();
                }
                Some(c @ ('"' | '\'')) => match quote {
                    None => quote = Some(c),
                    Some(open) if open == c => quote = None,
                    Some(_) => {}
                },
                Some(')') if quote.is_none() => break,
                Some(_) => {}
            }
        }
        if self.next() != Some(']') {
            return Err("unclosed array expect ]".into());
        }
        let text = &self.src[start..self.pos - 2];
        let Some(at) = text.find(['!', '<', '>', '=']).filter(|&at| at > 0) else {
            return Ok(Op::Filter(Box::new(Filter {
                left: part(text)?,
                test: Test::Exists,
                right: Vec::new(),
            })));
        };
        // As upstream's `^([^!<>=]+)([!<>=]+)(.+?)$`: the operator's
        // characters leave at least one for the right side.
        let mut op_len = text[at..]
            .find(|c| !matches!(c, '!' | '<' | '>' | '='))
            .unwrap_or(text.len() - at);
        if at + op_len == text.len() {
            op_len -= 1;
        }
        if op_len == 0 {
            return Ok(Op::Filter(Box::new(Filter {
                left: part(text)?,
                test: Test::Exists,
                right: Vec::new(),
            })));
        }
        let (operator, right) = text[at..].split_at(op_len);
        // Both sides are read first, as upstream reads them.
        let (left, right) = (part(&text[..at])?, part(right)?);
        let test = match operator {
            "==" => Test::Eq,
            "!=" => Test::Ne,
            "<" => Test::Lt,
            ">" => Test::Gt,
            "<=" => Test::Le,
            ">=" => Test::Ge,
            other => return Err(format!("unrecognized filter operator {other}")),
        };
        Ok(Op::Filter(Box::new(Filter { left, test, right })))
    }
}

/// The steps of a part of an action (a union's member, a filter's side).
fn part(text: &str) -> Result<Vec<Op>, String> {
    let mut parser = Parser { src: text, pos: 0 };
    match parser.action(false)? {
        (ops, None) => Ok(ops),
        (_, Some(_)) => Err(format!("{text:?}: range and end cannot be used here")),
    }
}

fn slice(text: &str) -> Result<Op, String> {
    let invalid = || format!("invalid array index {text}");
    let mut fields = text.split(':');
    let number = |field: Option<&str>| -> Result<Option<i64>, String> {
        match field {
            None | Some("") => Ok(None),
            Some(n) => {
                let digits = n.strip_prefix('-').unwrap_or(n);
                if !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(invalid());
                }
                n.parse()
                    .map(Some)
                    .map_err(|_| format!("array index {n} is not a number"))
            }
        }
    };
    let start = number(fields.next())?;
    let has_end = text.contains(':');
    let end = number(fields.next())?;
    let step = number(fields.next())?;
    if fields.next().is_some() {
        return Err(invalid());
    }
    Ok(Op::Slice(if has_end {
        Slice {
            start,
            end,
            end_derived: false,
            step,
        }
    } else {
        Slice {
            start,
            // Go's int wraps; the index is then out of bounds all the same.
            end: Some(start.unwrap_or(0).wrapping_add(1)),
            end_derived: true,
            step: None,
        }
    }))
}

fn terminator(c: char) -> bool {
    matches!(
        c,
        ' ' | '\t' | '\r' | '\n' | '.' | ',' | '[' | ']' | '$' | '@' | '{' | '}'
    )
}

fn alphanumeric(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

/// Go's unquoting of a literal's inside: `\n`, `\t`, `\xHH`, `\u` and the
/// rest of Go's escapes.
fn unquote(inner: &str) -> Option<String> {
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let escaped = match chars.next()? {
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            'a' => '\u{7}',
            'b' => '\u{8}',
            'f' => '\u{c}',
            'v' => '\u{b}',
            c @ ('\\' | '"' | '\'') => c,
            kind @ ('x' | 'u' | 'U') => {
                let len = match kind {
                    'x' => 2,
                    'u' => 4,
                    _ => 8,
                };
                let hex: String = chars.by_ref().take(len).collect();
                if hex.len() != len || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?
            }
            first @ '0'..='7' => {
                // Three octal digits, at most \377.
                let rest: String = chars.by_ref().take(2).collect();
                let digits = format!("{first}{rest}");
                if digits.len() != 3 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
                    return None;
                }
                char::from_u32(
                    u32::from_str_radix(&digits, 8)
                        .ok()
                        .filter(|&v| v <= 0o377)?,
                )?
            }
            _ => return None,
        };
        out.push(escaped);
    }
    Some(out)
}

type Values<'a> = Vec<Cow<'a, Value>>;

fn eval<'a>(mut current: Values<'a>, ops: &[Op]) -> Result<Values<'a>, String> {
    for op in ops {
        current = step(current, op)?;
    }
    Ok(current)
}

/// Members of `value` as references when it is borrowed.
fn members<'a>(value: &Cow<'a, Value>) -> Values<'a> {
    match value {
        Cow::Borrowed(Value::Array(items)) => items.iter().map(Cow::Borrowed).collect(),
        Cow::Borrowed(Value::Object(map)) => map.values().map(Cow::Borrowed).collect(),
        Cow::Owned(Value::Array(items)) => items.iter().cloned().map(Cow::Owned).collect(),
        Cow::Owned(Value::Object(map)) => map.values().cloned().map(Cow::Owned).collect(),
        _ => Vec::new(),
    }
}

fn step<'a>(input: Values<'a>, op: &Op) -> Result<Values<'a>, String> {
    match op {
        Op::Field(key) => {
            if input.is_empty() {
                return Ok(input);
            }
            let found: Values<'a> = input
                .into_iter()
                .filter_map(|value| match value {
                    Cow::Borrowed(Value::Object(map)) => map.get(key).map(Cow::Borrowed),
                    Cow::Owned(Value::Object(mut map)) => map.remove(key).map(Cow::Owned),
                    _ => None,
                })
                .collect();
            if found.is_empty() {
                return Err(format!("{key} is not found"));
            }
            Ok(found)
        }
        Op::Wildcard => Ok(input.iter().flat_map(members).collect()),
        Op::Recursive => {
            let mut out = Vec::new();
            let mut pending = input;
            pending.reverse();
            // Depth first, each value before what it holds, as upstream.
            while let Some(value) = pending.pop() {
                let inner = members(&value);
                if inner.is_empty() {
                    continue;
                }
                out.push(value);
                pending.extend(inner.into_iter().rev());
            }
            Ok(out)
        }
        Op::Slice(slice) => {
            let mut out = Vec::new();
            for value in input {
                out.extend(apply_slice(value, slice)?);
            }
            Ok(out)
        }
        Op::Union(members) => {
            let mut out = Vec::new();
            for ops in members {
                out.extend(eval(input.clone(), ops)?);
            }
            Ok(out)
        }
        Op::Filter(filter) => {
            let mut out = Vec::new();
            for value in input {
                let items = match value {
                    Cow::Borrowed(Value::Array(items)) => {
                        items.iter().map(Cow::Borrowed).collect::<Values<'a>>()
                    }
                    Cow::Owned(Value::Array(items)) => items.into_iter().map(Cow::Owned).collect(),
                    Cow::Borrowed(Value::Null) | Cow::Owned(Value::Null) => continue,
                    other => {
                        return Err(format!(
                            "{} is not array or slice and cannot be filtered",
                            go_value(&other)
                        ));
                    }
                };
                for item in items {
                    if passes(filter, &item)? {
                        out.push(item);
                    }
                }
            }
            Ok(out)
        }
        Op::Text(text) => Ok(vec![Cow::Owned(Value::String(text.clone()))]),
        Op::Literal(literal) => Ok(input.iter().map(|_| Cow::Owned(literal.clone())).collect()),
    }
}

fn apply_slice<'a>(value: Cow<'a, Value>, slice: &Slice) -> Result<Values<'a>, String> {
    let items: Values<'a> = match value {
        Cow::Borrowed(Value::Array(items)) => items.iter().map(Cow::Borrowed).collect(),
        Cow::Owned(Value::Array(items)) => items.into_iter().map(Cow::Owned).collect(),
        Cow::Borrowed(Value::Null) | Cow::Owned(Value::Null) => return Ok(Vec::new()),
        // `[*]` over an object: its values, as `.*` (upstream refuses).
        object @ (Cow::Borrowed(Value::Object(_)) | Cow::Owned(Value::Object(_)))
            if slice.start.is_none() && slice.end.is_none() && slice.step.is_none() =>
        {
            return Ok(members(&object));
        }
        other => return Err(format!("{} is not array or slice", go_type(&other))),
    };
    let len = i64::try_from(items.len()).unwrap_or(i64::MAX);
    let mut start = slice.start.unwrap_or(0);
    if start < 0 {
        start += len;
    }
    let mut end = slice.end.unwrap_or(len);
    if end < 0 || (end == 0 && slice.end_derived) {
        end += len;
    }
    if start == end {
        return Ok(Vec::new());
    }
    if start < 0 || start >= len {
        return Err(format!(
            "array index out of bounds: index {start}, length {len}"
        ));
    }
    if end < 0 || end > len {
        return Err(format!(
            "array index out of bounds: index {}, length {len}",
            end - 1
        ));
    }
    if start > end {
        return Err(format!(
            "starting index {start} is greater than ending index {end}"
        ));
    }
    let step = match slice.step {
        None => 1,
        Some(step) if step > 0 => step,
        Some(_) => return Err("step must be > 0".into()),
    };
    let (start, end, step) = (
        usize::try_from(start).unwrap_or(0),
        usize::try_from(end).unwrap_or(0),
        usize::try_from(step).unwrap_or(1),
    );
    Ok(items
        .into_iter()
        .skip(start)
        .take(end - start)
        .step_by(step)
        .collect())
}

fn passes(filter: &Filter, item: &Value) -> Result<bool, String> {
    let lefts = eval(vec![Cow::Borrowed(item)], &filter.left);
    if filter.test == Test::Exists {
        return Ok(lefts.is_ok_and(|l| !l.is_empty()));
    }
    let Some(left) = single(lefts?)? else {
        return Ok(false);
    };
    let Some(right) = single(eval(vec![Cow::Borrowed(item)], &filter.right)?)? else {
        return Ok(false);
    };
    let order = compare(&left, &right)?;
    let ordering = !matches!(filter.test, Test::Eq | Test::Ne);
    if ordering && (left.is_boolean() || right.is_boolean()) {
        return Err("invalid type for comparison".into());
    }
    Ok(match filter.test {
        Test::Eq => order == Some(Ordering::Equal),
        Test::Ne => order != Some(Ordering::Equal),
        ordering => {
            let order = order.ok_or_else(|| "invalid type for comparison".to_owned())?;
            match ordering {
                Test::Lt => order.is_lt(),
                Test::Gt => order.is_gt(),
                Test::Le => order.is_le(),
                _ => order.is_ge(),
            }
        }
    })
}

fn single<'a>(mut values: Values<'a>) -> Result<Option<Cow<'a, Value>>, String> {
    match values.len() {
        0 => Ok(None),
        1 => Ok(values.pop()),
        _ => Err("can only compare one element at a time".into()),
    }
}

/// The order of two values as Go's templates compare them: of one kind
/// (integers, floats, strings, booleans); booleans are only equal or not
/// (`None`).
fn compare(left: &Value, right: &Value) -> Result<Option<Ordering>, String> {
    match (left, right) {
        (Value::Number(l), Value::Number(r)) => {
            let int = |n: &serde_json::Number| {
                n.as_i64()
                    .map(i128::from)
                    .or_else(|| n.as_u64().map(i128::from))
            };
            match (int(l), int(r)) {
                (Some(l), Some(r)) => Ok(Some(l.cmp(&r))),
                (None, None) => Ok(l
                    .as_f64()
                    .zip(r.as_f64())
                    .and_then(|(l, r)| l.partial_cmp(&r))),
                _ => Err("incompatible types for comparison".into()),
            }
        }
        (Value::String(l), Value::String(r)) => Ok(Some(l.cmp(r))),
        (Value::Bool(l), Value::Bool(r)) => Ok((l == r).then_some(Ordering::Equal)),
        (Value::Null | Value::Array(_) | Value::Object(_), _)
        | (_, Value::Null | Value::Array(_) | Value::Object(_)) => {
            Err("invalid type for comparison".into())
        }
        _ => Err("incompatible types for comparison".into()),
    }
}

/// The Go type upstream's document holds `value` as (YAML decoded into
/// `interface{}`), as its errors name it.
fn go_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "<nil>",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_i64() => "int",
        Value::Number(n) if n.is_u64() => "uint64",
        Value::Number(_) => "float64",
        Value::String(_) => "string",
        Value::Array(_) => "[]interface {}",
        Value::Object(_) => "map[string]interface {}",
    }
}

/// `value` as Go's `%v` prints it (maps with their keys sorted).
fn go_value(value: &Value) -> String {
    match value {
        Value::Null => "<nil>".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => go_number(n),
        Value::String(s) => s.clone(),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(go_value).collect::<Vec<_>>().join(" ")
        ),
        Value::Object(map) => format!(
            "map[{}]",
            map.iter()
                .map(|(k, v)| format!("{k}:{}", go_value(v)))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    }
}

/// A number as Go's `%v` prints it: integers as they are, floats in the
/// shortest form, with an exponent (`1e+06`) below 1e-4 or from 1e6 up.
fn go_number(n: &serde_json::Number) -> String {
    if n.is_i64() || n.is_u64() {
        return n.to_string();
    }
    let Some(v) = n.as_f64() else {
        return n.to_string();
    };
    let scientific = format!("{v:e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if (-4..6).contains(&exponent) {
        return format!("{v}");
    }
    let sign = if exponent < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", exponent.unsigned_abs())
}

fn text_of(value: &Value) -> Result<String, String> {
    Ok(match value {
        Value::Null => "<nil>".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => go_number(n),
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
            "metadata": {"id": "eth0", "version": 3, "labels": {"kubernetes.io/hostname": "cp-1"}},
            "spec": {
                "addresses": ["10.5.0.2/24", "fd00::2/64"],
                "links": [
                    {"name": "eth0", "mtu": 1500, "up": true, "kind": "physical"},
                    {"name": "lo", "mtu": 65536, "up": true},
                    {"name": "eth1", "mtu": 9000, "up": false, "kind": "physical", "ratio": 0.5}
                ],
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
        assert_eq!(render("{.spec.links[*].name}").unwrap(), "eth0\nlo\neth1\n");
        assert_eq!(render("{.spec.links[0]['mtu']}").unwrap(), "1500\n");
        assert_eq!(
            render("{.spec.addresses}").unwrap(),
            "[\n    \"10.5.0.2/24\",\n    \"fd00::2/64\"\n]\n"
        );
        assert_eq!(render("{@.node}").unwrap(), "10.5.0.2\n");
        assert_eq!(render("{$.node}").unwrap(), "10.5.0.2\n");
        assert_eq!(render("{ .node }").unwrap(), "10.5.0.2\n");
        assert_eq!(render("id={.metadata.id}").unwrap(), "id=\neth0\n");
        assert_eq!(render("{.metadata.id}{\"\\n\"}").unwrap(), "eth0\n\n\n");
        assert_eq!(render("{'x\\ty'}").unwrap(), "x\ty\n");
        assert_eq!(render("{'\\101\\x42\\u0043'}").unwrap(), "ABC\n");
        assert!(Template::parse("{'\\x+1'}").is_err());
        // Numbers as Go's %v prints them.
        assert_eq!(
            render("{1.0}{0.5}{1000000.0}{0.00001}{-7}").unwrap(),
            "1\n0.5\n1e+06\n1e-05\n-7\n"
        );
        assert_eq!(render("{.spec.links[2].ratio}").unwrap(), "0.5\n");
        assert!(render("{.metadata.*}").unwrap().contains("eth0\n"));
        // A backslash makes a dot part of the key; a double-quoted key is
        // one key too.
        assert_eq!(
            render("{.metadata.labels.kubernetes\\.io/hostname}").unwrap(),
            "cp-1\n"
        );
        assert_eq!(
            render("{.metadata.labels[\"kubernetes.io/hostname\"]}").unwrap(),
            "cp-1\n"
        );
        // The current value itself.
        assert!(render("{@}").unwrap().starts_with("{\n    \"metadata\""));
    }

    #[test]
    fn a_key_is_missing_only_when_no_value_has_it() {
        // lo has no kind: the others' are picked, as upstream.
        assert_eq!(
            render("{.spec.links[*].kind}").unwrap(),
            "physical\nphysical\n"
        );
        assert_eq!(
            render("{.spec.links[*].speed}").unwrap_err(),
            "speed is not found"
        );
        assert_eq!(render("{.spec.up.x}").unwrap_err(), "x is not found");
    }

    #[test]
    fn slices_as_upstream() {
        assert_eq!(render("{.spec.links[0:2].name}").unwrap(), "eth0\nlo\n");
        assert_eq!(render("{.spec.links[1:].name}").unwrap(), "lo\neth1\n");
        assert_eq!(render("{.spec.links[:1].name}").unwrap(), "eth0\n");
        assert_eq!(render("{.spec.links[-2:].name}").unwrap(), "lo\neth1\n");
        assert_eq!(render("{.spec.links[::2].name}").unwrap(), "eth0\neth1\n");
        assert_eq!(render("{.spec.links[1:1].name}").unwrap(), "");
        assert_eq!(
            render("{.spec.links[0:5]}").unwrap_err(),
            "array index out of bounds: index 4, length 3"
        );
        assert_eq!(
            render("{.spec.links[2:1]}").unwrap_err(),
            "starting index 2 is greater than ending index 1"
        );
        assert_eq!(
            render("{.spec.links[0:2:0]}").unwrap_err(),
            "step must be > 0"
        );
        assert_eq!(
            render("{.spec.addresses[5]}").unwrap_err(),
            "array index out of bounds: index 5, length 2"
        );
        assert_eq!(
            render("{.spec.addresses[9223372036854775807]}").unwrap_err(),
            "array index out of bounds: index 9223372036854775807, length 2"
        );
        assert_eq!(
            render("{.spec.addresses[-9223372036854775808]}").unwrap_err(),
            "array index out of bounds: index -9223372036854775806, length 2"
        );
        assert_eq!(
            render("{.spec[0]}").unwrap_err(),
            "map[string]interface {} is not array or slice"
        );
        assert_eq!(
            Template::parse("{.spec.addresses[1:-]}").unwrap_err(),
            "array index - is not a number"
        );
        assert_eq!(
            render("{.spec.addresses[-3]}").unwrap_err(),
            "array index out of bounds: index -1, length 2"
        );
        assert_eq!(
            render("{.metadata.id[0]}").unwrap_err(),
            "string is not array or slice"
        );
    }

    #[test]
    fn filters_as_upstream() {
        assert_eq!(
            render("{.spec.links[?(@.name==\"lo\")].mtu}").unwrap(),
            "65536\n"
        );
        assert_eq!(
            render("{.spec.links[?(@.name == 'eth1')].mtu}").unwrap(),
            "9000\n"
        );
        assert_eq!(
            render("{.spec.links[?(@.name!='lo')].name}").unwrap(),
            "eth0\neth1\n"
        );
        assert_eq!(
            render("{.spec.links[?(@.mtu > 1500)].name}").unwrap(),
            "lo\neth1\n"
        );
        assert_eq!(
            render("{.spec.links[?(@.mtu<=1500)].name}").unwrap(),
            "eth0\n"
        );
        assert_eq!(
            render("{.spec.links[?(@.mtu>=9000)].name}").unwrap(),
            "lo\neth1\n"
        );
        assert_eq!(
            render("{.spec.links[?(@.up==false)].name}").unwrap(),
            "eth1\n"
        );
        // Only a path: the members that have it.
        assert_eq!(
            render("{.spec.links[?(@.kind)].name}").unwrap(),
            "eth0\neth1\n"
        );
        // A literal with a parenthesis and an operator inside.
        assert_eq!(
            render("{.spec.links[?(@.name=='a)b==c')].name}").unwrap(),
            ""
        );
        // Comparisons Go's templates refuse.
        assert_eq!(
            render("{.spec.links[?(@.mtu=='1500')]}").unwrap_err(),
            "incompatible types for comparison"
        );
        assert_eq!(
            render("{.spec.links[?(@.mtu==1500.0)]}").unwrap_err(),
            "incompatible types for comparison"
        );
        assert_eq!(
            render("{.spec.links[?(@.up<true)]}").unwrap_err(),
            "invalid type for comparison"
        );
        assert_eq!(
            render("{.spec.links[?(@.ratio>0.25)].name}").unwrap_err(),
            "ratio is not found"
        );
        // Go's %v of what cannot be filtered.
        let doc = serde_json::json!({"spec": {"b": [1, "x"], "a": {"c": null}}});
        assert_eq!(
            Template::parse("{.spec[?(@.x)]}")
                .and_then(|t| t.render(&doc))
                .unwrap_err(),
            "map[a:map[c:<nil>] b:[1 x]] is not array or slice and cannot be filtered"
        );
    }

    #[test]
    fn recursive_descent_unions_and_wildcards() {
        assert_eq!(render("{..name}").unwrap(), "eth0\nlo\neth1\n");
        assert_eq!(render("{.spec..mtu}").unwrap(), "1500\n65536\n9000\n");
        assert_eq!(render("{...name}").unwrap(), "eth0\nlo\neth1\n");
        assert_eq!(render("{.spec.links[0,2].name}").unwrap(), "eth0\neth1\n");
        assert_eq!(
            render("{.spec.links[0]['name','mtu']}").unwrap(),
            "eth0\n1500\n"
        );
        assert_eq!(render("{.spec.links[*].*}").unwrap().lines().count(), 12);
        assert_eq!(
            Template::parse("{....name}").unwrap_err(),
            "invalid multiple recursive descent"
        );
    }

    #[test]
    fn range_repeats_its_body_for_each_value() {
        assert_eq!(
            render("{range .spec.links[*]}{.name}{\"=\"}{.mtu}{end}").unwrap(),
            "eth0\n=\n1500\nlo\n=\n65536\neth1\n=\n9000\n"
        );
        // Nested, with text around and a filter.
        assert_eq!(
            render("[{range .spec.links[?(@.kind)]}{range .name}{@}{end}{end}]").unwrap(),
            "[\neth0\neth1\n]\n"
        );
        // Over the current value: once.
        assert_eq!(render("{range @}{.metadata.id}{end}").unwrap(), "eth0\n");
        assert_eq!(render("{range}{.node}{end}").unwrap(), "10.5.0.2\n");
        // A range over nothing prints nothing.
        assert_eq!(
            render("{range .spec.links[?(@.mtu>100000)]}{.name}{end}").unwrap(),
            ""
        );
        assert_eq!(
            Template::parse("{range .spec.links[*]}{.name}").unwrap_err(),
            "{range} without {end} in \"{range .spec.links[*]}{.name}\""
        );
        assert_eq!(
            Template::parse("{.name}{end}").unwrap_err(),
            "not in range, nothing to end"
        );
        assert!(Template::parse("{.a range}").is_err());
        assert!(Template::parse("{end .a}").is_err());
    }

    /// Templates made of the syntax's characters, at random: each is
    /// parsed and applied without a panic (an error is fine).
    #[test]
    fn any_template_is_an_answer_or_an_error() {
        let alphabet: Vec<char> = "{}[]()?@$.,:*'\"\\=!<>-+ 0129namespecrgdlé\n"
            .chars()
            .collect();
        let mut seed: u64 = 0x5eed;
        let mut answered = 0;
        for _ in 0..20_000 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let len = usize::try_from(seed >> 59).unwrap_or(0) + 1;
            let mut template = String::from("{");
            for _ in 0..len {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let at = usize::try_from(seed >> 33).unwrap_or(0) % alphabet.len();
                template.push(alphabet[at]);
            }
            if Template::parse(&template).is_ok_and(|parsed| parsed.render(&doc()).is_ok()) {
                answered += 1;
            }
        }
        // Some of them are real templates.
        assert!(answered > 100, "{answered}");
    }

    #[test]
    fn bad_syntax_is_named() {
        let err = |t: &str| Template::parse(t).unwrap_err();
        assert_eq!(err("{.spec"), "unclosed action");
        assert_eq!(err("{.spec\n}"), "unclosed action");
        assert_eq!(err("{.spec.addresses[x]}"), "invalid array index x");
        assert_eq!(err("{.spec.addresses[1}"), "unterminated array");
        assert_eq!(err("{.spec.links[?(@.mtu>1}"), "unterminated filter");
        assert_eq!(err("{.spec.links[?(@.mtu>1)}"), "unclosed array expect ]");
        assert_eq!(
            err("{.spec.links[?(@.mtu=~1)]}"),
            "unrecognized character in action: U+007E '~'"
        );
        assert_eq!(err("{\"abc}"), "unterminated quoted string");
        assert_eq!(
            err("{.a,.b}"),
            "unrecognized character in action: U+002C ','"
        );
        assert_eq!(err("{nope}"), "unrecognized identifier nope");
        // As upstream's regular expression splits it: `=` and then `=`.
        assert_eq!(
            err("{.spec.links[?(@.mtu==)]}"),
            "unrecognized character in action: U+003D '='"
        );
        assert_eq!(err("{\u{1}}"), "unrecognized character in action: U+0001");
        assert_eq!(err("{\\}"), "unrecognized character in action: U+005C '\\'");
        // Words the syntax uses are fine inside keys.
        let doc =
            serde_json::json!({"spec": {"vendorID": "0x1af4", "pending": 2, "a:b": 1, "range": 3}});
        let t = |s: &str| Template::parse(s).and_then(|t| t.render(&doc));
        assert_eq!(t("{.spec.vendorID}").expect("vendorID"), "0x1af4\n");
        assert_eq!(t("{.spec.pending}").expect("pending"), "2\n");
        assert_eq!(t("{.spec['a:b']}").expect("quoted colon"), "1\n");
        assert_eq!(t("{.spec.range}").expect("range as a key"), "3\n");
    }
}

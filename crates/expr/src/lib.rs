//! The subset of CEL (the Common Expression Language) that Istio's
//! Telemetry API puts in access-log filters, e.g.
//! `response.code >= 400 || request.headers['x-debug'] == 'on'`.
//!
//! Istio hands such an expression to Envoy's CEL access-log filter; a stock
//! Envoy evaluates full CEL. Trellis parses this subset at load, so an
//! expression it cannot evaluate is rejected with the reason instead of
//! silently logging everything or nothing:
//!
//! - literals: integers, single- or double-quoted strings, `true`, `false`;
//! - attributes: dotted names (`request.method`, `response.code`,
//!   `connection.mtls`, ...) and header lookups `request.headers['name']`,
//!   `response.headers['name']`;
//! - `==`, `!=`, `<`, `<=`, `>`, `>=`; `&&`, `||`, `!`; parentheses;
//! - string methods `startsWith`, `endsWith`, `contains`.
//!
//! As in CEL, a missing attribute or a type mismatch is an error, and an
//! access-log filter whose expression errs does not log.

use std::fmt;

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Lit(Value),
    Attr(Attr),
    Not(Box<Self>),
    And(Box<Self>, Box<Self>),
    Or(Box<Self>, Box<Self>),
    Cmp(Box<Self>, CmpOp, Box<Self>),
    Method(Box<Self>, StrMethod, Box<Self>),
}

/// An attribute reference: a dotted path, with a header name for
/// `request.headers[...]` / `response.headers[...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub path: String,
    pub key: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    Str(String),
    Bool(bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrMethod {
    StartsWith,
    EndsWith,
    Contains,
}

/// The attributes Trellis can supply (Envoy's attribute names).
pub const ATTRIBUTES: &[&str] = &[
    "request.path",
    "request.url_path",
    "request.host",
    "request.method",
    "request.scheme",
    "request.protocol",
    "request.id",
    "request.useragent",
    "request.referer",
    "request.size",
    "request.headers",
    "response.code",
    "response.code_details",
    "response.grpc_status",
    "response.size",
    "response.headers",
    "connection.mtls",
    "connection.requested_server_name",
    "source.address",
    "source.port",
    "destination.address",
    "destination.port",
    "upstream.address",
    "xds.cluster_name",
    "xds.route_name",
];

/// Why an expression was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

/// Parses `src`; an error says what is wrong and where.
pub fn parse(src: &str) -> Result<Expr, ParseError> {
    let tokens = lex(src)?;
    let mut p = Parser { tokens, pos: 0 };
    let e = p.or()?;
    match p.peek() {
        None => Ok(e),
        Some(t) => Err(ParseError(format!("unexpected {t} after the expression"))),
    }
}

/// What evaluation reads; `None` for a missing attribute.
pub trait Attributes {
    fn get(&self, attr: &Attr) -> Option<Value>;
}

/// Why evaluation failed (CEL's "no such attribute" or a type mismatch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalError(pub String);

impl Expr {
    /// Evaluates to a value.
    pub fn eval(&self, a: &dyn Attributes) -> Result<Value, EvalError> {
        Ok(match self {
            Self::Lit(v) => v.clone(),
            Self::Attr(at) => a.get(at).ok_or_else(|| {
                EvalError(match &at.key {
                    Some(k) => format!("no such key: {k}"),
                    None => format!("no such attribute: {}", at.path),
                })
            })?,
            Self::Not(e) => Value::Bool(!e.truth(a)?),
            // CEL's && and || absorb an error when the other side decides.
            Self::And(l, r) => match (l.truth(a), r.truth(a)) {
                (Ok(false), _) | (_, Ok(false)) => Value::Bool(false),
                (Ok(true), Ok(true)) => Value::Bool(true),
                (Err(e), _) | (_, Err(e)) => return Err(e),
            },
            Self::Or(l, r) => match (l.truth(a), r.truth(a)) {
                (Ok(true), _) | (_, Ok(true)) => Value::Bool(true),
                (Ok(false), Ok(false)) => Value::Bool(false),
                (Err(e), _) | (_, Err(e)) => return Err(e),
            },
            Self::Cmp(l, op, r) => {
                let (l, r) = (l.eval(a)?, r.eval(a)?);
                let ord = match (&l, &r) {
                    (Value::Int(x), Value::Int(y)) => x.cmp(y),
                    (Value::Str(x), Value::Str(y)) => x.cmp(y),
                    (Value::Bool(x), Value::Bool(y)) if matches!(op, CmpOp::Eq | CmpOp::Ne) => {
                        x.cmp(y)
                    }
                    _ => {
                        return Err(EvalError(format!(
                            "no matching overload for {op:?} on {l:?} and {r:?}"
                        )));
                    }
                };
                use std::cmp::Ordering::*;
                Value::Bool(match op {
                    CmpOp::Eq => ord == Equal,
                    CmpOp::Ne => ord != Equal,
                    CmpOp::Lt => ord == Less,
                    CmpOp::Le => ord != Greater,
                    CmpOp::Gt => ord == Greater,
                    CmpOp::Ge => ord != Less,
                })
            }
            Self::Method(target, m, arg) => match (target.eval(a)?, arg.eval(a)?) {
                (Value::Str(s), Value::Str(x)) => Value::Bool(match m {
                    StrMethod::StartsWith => s.starts_with(&x),
                    StrMethod::EndsWith => s.ends_with(&x),
                    StrMethod::Contains => s.contains(&x),
                }),
                _ => return Err(EvalError(format!("{m:?} needs strings"))),
            },
        })
    }

    /// Evaluates to a boolean; any other value is an error.
    pub fn truth(&self, a: &dyn Attributes) -> Result<bool, EvalError> {
        match self.eval(a)? {
            Value::Bool(b) => Ok(b),
            v => Err(EvalError(format!("expected a boolean, got {v:?}"))),
        }
    }

    /// Whether an access-log filter with this expression logs: errors do not.
    pub fn matches(&self, a: &dyn Attributes) -> bool {
        self.truth(a).unwrap_or(false)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Int(i64),
    Str(String),
    Op(&'static str),
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ident(s) => write!(f, "`{s}`"),
            Self::Int(i) => write!(f, "`{i}`"),
            Self::Str(s) => write!(f, "string {s:?}"),
            Self::Op(o) => write!(f, "`{o}`"),
        }
    }
}

const OPS: [&str; 15] = [
    "&&", "||", "==", "!=", "<=", ">=", "<", ">", "!", "(", ")", "[", "]", ".", ",",
];

fn lex(src: &str) -> Result<Vec<Tok>, ParseError> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Ident(src[start..i].to_string()));
        } else if c.is_ascii_digit() {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            let n = src[start..i]
                .parse()
                .map_err(|_| ParseError(format!("integer {} is too large", &src[start..i])))?;
            out.push(Tok::Int(n));
        } else if c == b'\'' || c == b'"' {
            let end = src[i + 1..]
                .find(c as char)
                .ok_or_else(|| ParseError(format!("unterminated string at offset {i}")))?;
            let s = &src[i + 1..i + 1 + end];
            if s.contains('\\') {
                return Err(ParseError("escapes in strings are not supported".into()));
            }
            out.push(Tok::Str(s.to_string()));
            i += end + 2;
        } else if let Some(op) = OPS.iter().find(|op| src[i..].starts_with(**op)) {
            out.push(Tok::Op(op));
            i += op.len();
        } else {
            return Err(ParseError(format!(
                "unexpected character {:?} at offset {i}",
                src[i..].chars().next().unwrap_or('?')
            )));
        }
    }
    if out.is_empty() {
        return Err(ParseError("empty expression".into()));
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos)
    }

    fn eat(&mut self, op: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Op(o)) if *o == op) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, op: &str) -> Result<(), ParseError> {
        if self.eat(op) {
            Ok(())
        } else {
            Err(ParseError(match self.peek() {
                Some(t) => format!("expected `{op}`, found {t}"),
                None => format!("expected `{op}` at the end"),
            }))
        }
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut l = self.and()?;
        while self.eat("||") {
            l = Expr::Or(Box::new(l), Box::new(self.and()?));
        }
        Ok(l)
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut l = self.unary()?;
        while self.eat("&&") {
            l = Expr::And(Box::new(l), Box::new(self.unary()?));
        }
        Ok(l)
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        if self.eat("!") {
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        let l = self.primary()?;
        let op = match self.peek() {
            Some(Tok::Op("==")) => CmpOp::Eq,
            Some(Tok::Op("!=")) => CmpOp::Ne,
            Some(Tok::Op("<")) => CmpOp::Lt,
            Some(Tok::Op("<=")) => CmpOp::Le,
            Some(Tok::Op(">")) => CmpOp::Gt,
            Some(Tok::Op(">=")) => CmpOp::Ge,
            _ => return Ok(l),
        };
        self.pos += 1;
        let r = self.primary()?;
        Ok(Expr::Cmp(Box::new(l), op, Box::new(r)))
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        let tok = self
            .peek()
            .cloned()
            .ok_or_else(|| ParseError("expression ends too early".into()))?;
        self.pos += 1;
        let base = match tok {
            Tok::Int(i) => Expr::Lit(Value::Int(i)),
            Tok::Str(s) => Expr::Lit(Value::Str(s)),
            Tok::Ident(id) if id == "true" => Expr::Lit(Value::Bool(true)),
            Tok::Ident(id) if id == "false" => Expr::Lit(Value::Bool(false)),
            Tok::Ident(id) => return self.attribute(id),
            Tok::Op("(") => {
                let e = self.or()?;
                self.expect(")")?;
                e
            }
            t => return Err(ParseError(format!("unexpected {t}"))),
        };
        self.methods(base)
    }

    fn attribute(&mut self, first: String) -> Result<Expr, ParseError> {
        if matches!(self.peek(), Some(Tok::Op("("))) {
            return Err(ParseError(format!("unsupported function `{first}`")));
        }
        let mut path = first;
        while matches!(self.peek(), Some(Tok::Op("."))) {
            match self.tokens.get(self.pos + 1) {
                // `name(`: a function call on the attribute, not a segment.
                Some(Tok::Ident(_))
                    if matches!(self.tokens.get(self.pos + 2), Some(Tok::Op("("))) =>
                {
                    break;
                }
                Some(Tok::Ident(seg)) => {
                    path.push('.');
                    path.push_str(seg);
                    self.pos += 2;
                }
                _ => return Err(ParseError(format!("expected a name after `{path}.`"))),
            }
        }
        let key = if self.eat("[") {
            let Some(Tok::Str(k)) = self.peek().cloned() else {
                return Err(ParseError(format!("`{path}[...]` takes a quoted key")));
            };
            self.pos += 1;
            self.expect("]")?;
            if path != "request.headers" && path != "response.headers" {
                return Err(ParseError(format!("`{path}` cannot be indexed")));
            }
            Some(k.to_ascii_lowercase())
        } else {
            None
        };
        if !ATTRIBUTES.contains(&path.as_str()) {
            return Err(ParseError(format!("unknown attribute `{path}`")));
        }
        if key.is_none() && path.ends_with(".headers") {
            return Err(ParseError(format!(
                "`{path}` needs a header name, e.g. {path}['x-foo']"
            )));
        }
        self.methods(Expr::Attr(Attr { path, key }))
    }

    fn methods(&mut self, mut e: Expr) -> Result<Expr, ParseError> {
        while matches!(self.peek(), Some(Tok::Op("."))) {
            let Some(Tok::Ident(name)) = self.tokens.get(self.pos + 1).cloned() else {
                return Err(ParseError("expected a method name after `.`".into()));
            };
            let m = method(&name)
                .ok_or_else(|| ParseError(format!("unsupported function `{name}`")))?;
            self.pos += 2;
            self.expect("(")?;
            let arg = self.or()?;
            self.expect(")")?;
            e = Expr::Method(Box::new(e), m, Box::new(arg));
        }
        Ok(e)
    }
}

fn method(name: &str) -> Option<StrMethod> {
    match name {
        "startsWith" => Some(StrMethod::StartsWith),
        "endsWith" => Some(StrMethod::EndsWith),
        "contains" => Some(StrMethod::Contains),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Map(HashMap<String, Value>);

    impl Attributes for Map {
        fn get(&self, a: &Attr) -> Option<Value> {
            let k = match &a.key {
                Some(k) => format!("{}[{k}]", a.path),
                None => a.path.clone(),
            };
            self.0.get(&k).cloned()
        }
    }

    fn attrs() -> Map {
        Map(HashMap::from([
            ("response.code".into(), Value::Int(503)),
            ("request.method".into(), Value::Str("GET".into())),
            ("request.path".into(), Value::Str("/api/v1".into())),
            ("request.headers[x-debug]".into(), Value::Str("on".into())),
            ("connection.mtls".into(), Value::Bool(true)),
        ]))
    }

    fn eval(src: &str) -> bool {
        parse(src)
            .map(|e| e.matches(&attrs()))
            .unwrap_or_else(|e| panic!("{src}: {e}"))
    }

    #[test]
    fn istio_examples() {
        assert!(eval("response.code >= 400"));
        assert!(!eval("response.code < 400"));
        assert!(eval("request.headers['x-debug'] == 'on'"));
        assert!(eval(
            "request.headers['X-Debug'] == \"on\" && connection.mtls"
        ));
        assert!(eval(
            "request.method == 'POST' || request.path.startsWith('/api')"
        ));
        assert!(eval("!(response.code == 200)"));
        assert!(eval(
            "request.path.contains('v1') && !request.path.endsWith('/')"
        ));
    }

    #[test]
    fn errors_do_not_log_but_short_circuits_absorb_them() {
        // A missing header is an error...
        assert!(!eval("request.headers['absent'] == 'x'"));
        // ...that `||` absorbs when the other side is true.
        assert!(eval(
            "request.headers['absent'] == 'x' || response.code == 503"
        ));
        // Type mismatch.
        assert!(!eval("response.code == '503'"));
    }

    #[test]
    fn refused_with_reasons() {
        for (src, want) in [
            ("", "empty"),
            ("response.code >=", "ends too early"),
            ("response.cod == 1", "unknown attribute `response.cod`"),
            ("request.headers == 1", "needs a header name"),
            (
                "request.path.matches('x')",
                "unsupported function `matches`",
            ),
            ("size(request.path) > 1", "unsupported function `size`"),
            ("'a", "unterminated"),
            ("response.code == 1 )", "unexpected `)`"),
            ("a @ b", "unexpected character"),
        ] {
            let err = parse(src).err().map(|e| e.0).unwrap_or_default();
            assert!(err.contains(want), "{src:?}: {err:?}");
        }
    }
}

//! Compiled `*_headers_to_add` / `*_headers_to_remove` lists (one "level": route, virtual
//! host, route configuration or weighted cluster).
//!
//! Envoy's evaluation of one level (HeaderParser::evaluateHeaders):
//! 1. remove `headers_to_remove`;
//! 2. format every value against the headers as they are *now* and decide, per entry, by its
//!    append action (ADD_IF_ABSENT / OVERWRITE_IF_EXISTS look at this snapshot);
//! 3. apply all overwrites, then all appends.
//!
//! Empty values are skipped unless `keep_empty_value`.

use envoy_types::pb::envoy::config::core::v3::{
    HeaderValueOption, header_value_option::HeaderAppendAction,
};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::error::{Result, RouteError};
use crate::format::{FormatContext, FormatEnv, Formatter};
use crate::request::header_name;

/// How a configured header combines with existing values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendAction {
    AppendIfExistsOrAdd,
    AddIfAbsent,
    OverwriteIfExistsOrAdd,
    OverwriteIfExists,
}

#[derive(Debug, Clone)]
struct HeaderAdd {
    name: HeaderName,
    value: Formatter,
    /// Pre-built value when the format string is a plain literal.
    literal: Option<HeaderValue>,
    action: AppendAction,
    keep_empty_value: bool,
}

/// One level of compiled header mutations.
#[derive(Debug, Clone, Default)]
pub struct HeaderMutations {
    remove: Vec<HeaderName>,
    add: Vec<HeaderAdd>,
}

/// Which side of the exchange is being mutated; decides where `%REQ()%`/`%RESP()%` read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Request,
    Response,
}

impl HeaderMutations {
    /// `field` is the path of the owning message; `add_name`/`remove_name` are the proto field
    /// names (they differ between request and response lists).
    pub(crate) fn compile(
        field: &str,
        add_name: &str,
        adds: &[HeaderValueOption],
        remove_name: &str,
        removes: &[String],
    ) -> Result<Self> {
        let mut remove = Vec::with_capacity(removes.len());
        for (i, r) in removes.iter().enumerate() {
            let f = format!("{field}.{remove_name}[{i}]");
            // Envoy: ":-prefixed or host headers may not be removed".
            if r.starts_with(':') || r.eq_ignore_ascii_case("host") {
                return Err(RouteError::invalid(
                    f,
                    ":-prefixed or host headers may not be removed",
                ));
            }
            remove.push(header_name(r, &f)?);
        }
        let mut add = Vec::with_capacity(adds.len());
        for (i, opt) in adds.iter().enumerate() {
            let f = format!("{field}.{add_name}[{i}]");
            add.push(compile_add(opt, &f)?);
        }
        Ok(Self { remove, add })
    }

    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.add.is_empty()
    }

    /// Names removed by this level (lowercase).
    pub fn removed(&self) -> &[HeaderName] {
        &self.remove
    }

    pub(crate) fn apply(&self, headers: &mut HeaderMap, side: Side, ctx: &dyn FormatContext) {
        if self.is_empty() {
            return;
        }
        for name in &self.remove {
            headers.remove(name);
        }
        if self.add.is_empty() {
            return;
        }
        // Phase 1: decide against a snapshot (values may read the current headers).
        let mut overwrite: Vec<(&HeaderName, HeaderValue)> = Vec::new();
        let mut append: Vec<(&HeaderName, HeaderValue)> = Vec::new();
        {
            let snapshot: &HeaderMap = headers;
            let env = FormatEnv {
                ctx,
                request: (side == Side::Request).then_some(snapshot),
                response: (side == Side::Response).then_some(snapshot),
            };
            for a in &self.add {
                let value = match &a.literal {
                    Some(v) => v.clone(),
                    None => match HeaderValue::from_str(&a.value.format(&env)) {
                        Ok(v) => v,
                        // A value that cannot be a header (e.g. a resolved variable holding a
                        // newline) is dropped rather than failing the request.
                        Err(_) => continue,
                    },
                };
                if value.is_empty() && !a.keep_empty_value {
                    continue;
                }
                let present = snapshot.contains_key(&a.name);
                match a.action {
                    AppendAction::AppendIfExistsOrAdd => append.push((&a.name, value)),
                    AppendAction::AddIfAbsent if !present => append.push((&a.name, value)),
                    AppendAction::AddIfAbsent => {}
                    AppendAction::OverwriteIfExists if !present => {}
                    AppendAction::OverwriteIfExists | AppendAction::OverwriteIfExistsOrAdd => {
                        overwrite.push((&a.name, value));
                    }
                }
            }
        }
        // Phase 2: overwrites first, then appends (Envoy's order).
        for (name, value) in overwrite {
            headers.insert(name.clone(), value);
        }
        for (name, value) in append {
            headers.append(name.clone(), value);
        }
    }
}

// `append` is deprecated but still honoured by Envoy.
#[allow(deprecated)]
fn compile_add(opt: &HeaderValueOption, field: &str) -> Result<HeaderAdd> {
    let hv = opt
        .header
        .as_ref()
        .ok_or_else(|| RouteError::invalid(format!("{field}.header"), "is required"))?;
    let key_field = format!("{field}.header.key");
    if hv.key.is_empty() {
        return Err(RouteError::invalid(key_field, "must not be empty"));
    }
    // Envoy: ":-prefixed or host headers may not be modified".
    if hv.key.starts_with(':') || hv.key.eq_ignore_ascii_case("host") {
        return Err(RouteError::invalid(
            key_field,
            ":-prefixed or host headers may not be modified",
        ));
    }
    let name = header_name(&hv.key, &key_field)?;
    let (raw, value_field) = if hv.raw_value.is_empty() {
        (hv.value.as_str(), format!("{field}.header.value"))
    } else {
        let f = format!("{field}.header.raw_value");
        let s = std::str::from_utf8(&hv.raw_value)
            .map_err(|_| RouteError::invalid(f.clone(), "must be UTF-8"))?;
        (s, f)
    };
    let value = Formatter::compile(raw, &value_field)?;
    let literal =
        match value.as_literal() {
            Some(lit) => Some(HeaderValue::from_str(lit).map_err(|_| {
                RouteError::invalid(value_field.clone(), "not a valid header value")
            })?),
            None => None,
        };
    let action = match opt.append {
        // Legacy `append`: only allowed together with the default append_action.
        Some(append) => {
            if opt.append_action != HeaderAppendAction::AppendIfExistsOrAdd as i32 {
                return Err(RouteError::invalid(
                    field,
                    "both append and append_action are set and it's not allowed",
                ));
            }
            if append.value {
                AppendAction::AppendIfExistsOrAdd
            } else {
                AppendAction::OverwriteIfExistsOrAdd
            }
        }
        None => match HeaderAppendAction::try_from(opt.append_action) {
            Ok(HeaderAppendAction::AppendIfExistsOrAdd) => AppendAction::AppendIfExistsOrAdd,
            Ok(HeaderAppendAction::AddIfAbsent) => AppendAction::AddIfAbsent,
            Ok(HeaderAppendAction::OverwriteIfExistsOrAdd) => AppendAction::OverwriteIfExistsOrAdd,
            Ok(HeaderAppendAction::OverwriteIfExists) => AppendAction::OverwriteIfExists,
            Err(_) => {
                return Err(RouteError::invalid(
                    format!("{field}.append_action"),
                    format!("unknown value {}", opt.append_action),
                ));
            }
        },
    };
    Ok(HeaderAdd {
        name,
        value,
        literal,
        action,
        keep_empty_value: opt.keep_empty_value,
    })
}

#[cfg(test)]
#[allow(deprecated)]
pub(crate) mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::HeaderValue as PbHeaderValue;
    use envoy_types::pb::google::protobuf::BoolValue;

    pub(crate) fn hvo(key: &str, value: &str, action: HeaderAppendAction) -> HeaderValueOption {
        HeaderValueOption {
            header: Some(PbHeaderValue {
                key: key.into(),
                value: value.into(),
                raw_value: vec![],
            }),
            append: None,
            append_action: action as i32,
            keep_empty_value: false,
        }
    }

    fn muts(adds: &[HeaderValueOption], removes: &[&str]) -> HeaderMutations {
        let removes: Vec<String> = removes.iter().map(|s| s.to_string()).collect();
        HeaderMutations::compile("r", "add", adds, "remove", &removes).unwrap()
    }

    fn values(h: &HeaderMap, name: &str) -> Vec<String> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    use HeaderAppendAction::*;

    #[test]
    fn append_actions_follow_envoy() {
        let m = muts(
            &[
                hvo("a", "new", AppendIfExistsOrAdd),
                hvo("b", "new", AddIfAbsent),
                hvo("c", "new", OverwriteIfExistsOrAdd),
                hvo("d", "new", OverwriteIfExists),
                hvo("e", "new", OverwriteIfExists),
                hvo("f", "new", AddIfAbsent),
            ],
            &[],
        );
        let mut h = HeaderMap::new();
        for n in ["a", "b", "c", "d"] {
            h.insert(n, "old".parse().unwrap());
        }
        m.apply(&mut h, Side::Request, &());
        assert_eq!(values(&h, "a"), ["old", "new"]);
        assert_eq!(values(&h, "b"), ["old"]);
        assert_eq!(values(&h, "c"), ["new"]);
        assert_eq!(values(&h, "d"), ["new"]);
        assert!(values(&h, "e").is_empty(), "overwrite_if_exists never adds");
        assert_eq!(values(&h, "f"), ["new"]);
    }

    #[test]
    fn removal_happens_before_additions_of_the_same_level() {
        let m = muts(&[hvo("x", "added", AddIfAbsent)], &["x"]);
        let mut h = HeaderMap::new();
        h.insert("x", "orig".parse().unwrap());
        m.apply(&mut h, Side::Request, &());
        assert_eq!(values(&h, "x"), ["added"]);
    }

    #[test]
    fn decisions_use_the_snapshot_and_overwrites_precede_appends() {
        // Both entries see "x" absent, so both are applied.
        let m = muts(
            &[
                hvo("x", "1", AppendIfExistsOrAdd),
                hvo("x", "2", AddIfAbsent),
            ],
            &[],
        );
        let mut h = HeaderMap::new();
        m.apply(&mut h, Side::Request, &());
        assert_eq!(values(&h, "x"), ["1", "2"]);

        let m = muts(
            &[
                hvo("y", "app", AppendIfExistsOrAdd),
                hvo("y", "ow", OverwriteIfExistsOrAdd),
            ],
            &[],
        );
        let mut h = HeaderMap::new();
        h.insert("y", "orig".parse().unwrap());
        m.apply(&mut h, Side::Request, &());
        assert_eq!(values(&h, "y"), ["ow", "app"]);
    }

    #[test]
    fn empty_values_are_skipped_unless_keep_empty_value() {
        let mut keep = hvo("k", "", AppendIfExistsOrAdd);
        keep.keep_empty_value = true;
        let m = muts(&[hvo("e", "", AppendIfExistsOrAdd), keep], &[]);
        let mut h = HeaderMap::new();
        m.apply(&mut h, Side::Request, &());
        assert!(!h.contains_key("e"));
        assert_eq!(values(&h, "k"), [""]);
    }

    #[test]
    fn req_operator_reads_the_request_being_mutated() {
        let m = muts(&[hvo("x-copy", "%REQ(x-src)%", AppendIfExistsOrAdd)], &[]);
        let mut h = HeaderMap::new();
        h.insert("x-src", "v".parse().unwrap());
        m.apply(&mut h, Side::Request, &());
        assert_eq!(values(&h, "x-copy"), ["v"]);
    }

    #[test]
    fn legacy_append_bool_maps_to_actions() {
        let mut o = hvo("a", "new", AppendIfExistsOrAdd);
        o.append = Some(BoolValue { value: false });
        let m = muts(&[o], &[]);
        let mut h = HeaderMap::new();
        h.insert("a", "old".parse().unwrap());
        m.apply(&mut h, Side::Request, &());
        assert_eq!(values(&h, "a"), ["new"]);

        let mut both = hvo("a", "v", AddIfAbsent);
        both.append = Some(BoolValue { value: true });
        assert!(HeaderMutations::compile("r", "add", &[both], "remove", &[]).is_err());
    }

    #[test]
    fn pseudo_and_host_headers_cannot_be_mutated() {
        let e = HeaderMutations::compile(
            "r",
            "request_headers_to_add",
            &[hvo(":path", "/", AppendIfExistsOrAdd)],
            "x",
            &[],
        )
        .unwrap_err();
        assert_eq!(e.field(), "r.request_headers_to_add[0].header.key");
        let e =
            HeaderMutations::compile("r", "a", &[], "request_headers_to_remove", &["Host".into()])
                .unwrap_err();
        assert_eq!(e.field(), "r.request_headers_to_remove[0]");
    }

    #[test]
    fn unknown_operator_names_the_value_field() {
        let e = HeaderMutations::compile(
            "virtual_hosts[0]",
            "request_headers_to_add",
            &[hvo("a", "%BOGUS%", AppendIfExistsOrAdd)],
            "r",
            &[],
        )
        .unwrap_err();
        assert_eq!(
            e.field(),
            "virtual_hosts[0].request_headers_to_add[0].header.value"
        );
    }
}

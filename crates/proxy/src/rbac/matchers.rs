//! Compiled `Permission`s and `Principal`s of `envoy.config.rbac.v3`.

use envoy_types::pb::envoy::config::rbac::v3::{
    MetadataSource, Permission as PermissionProto, Principal as PrincipalProto, SourcedMetadata,
    permission::Rule, principal::Identifier,
};

use super::Input;
use super::header::{HeaderMatcher, PathMatch};
use super::metadata::{MetadataMatcher, compile_string_matcher};
use crate::cidr::Cidr;
use crate::matcher::StringMatch;

/// A compile error: field path relative to the message compiled, and why.
pub(super) type Error = (String, String);

fn at(prefix: &str, (field, msg): Error) -> Error {
    if field.is_empty() {
        (prefix.to_string(), msg)
    } else {
        (format!("{prefix}.{field}"), msg)
    }
}

#[derive(Debug, Clone)]
pub(super) enum Permission {
    And(Vec<Self>),
    Or(Vec<Self>),
    Any,
    Header(HeaderMatcher),
    UrlPath(PathMatch),
    DestinationIp(Cidr),
    DestinationPort(u16),
    DestinationPortRange(i32, i32),
    Metadata(MetadataMatcher),
    Not(Box<Self>),
    RequestedServerName(StringMatch),
}

#[derive(Debug, Clone)]
pub(super) enum Principal {
    And(Vec<Self>),
    Or(Vec<Self>),
    Any,
    /// `None`: any authenticated (TLS) connection.
    Authenticated(Option<StringMatch>),
    /// The connection's peer (`source_ip`, deprecated).
    SourceIp(Cidr),
    DirectRemoteIp(Cidr),
    /// The downstream address after x-forwarded-for processing.
    RemoteIp(Cidr),
    Header(HeaderMatcher),
    UrlPath(PathMatch),
    Metadata(MetadataMatcher),
    Not(Box<Self>),
}

fn cidr(c: &envoy_types::pb::envoy::config::core::v3::CidrRange) -> Result<Cidr, Error> {
    Cidr::parse(c).map_err(|m| (String::new(), m))
}

fn sourced_metadata(s: &SourcedMetadata) -> Result<MetadataMatcher, Error> {
    match MetadataSource::try_from(s.metadata_source) {
        Ok(MetadataSource::Dynamic) => {}
        _ => {
            return Err((
                "metadata_source".into(),
                "only DYNAMIC metadata is supported".into(),
            ));
        }
    }
    let m = s
        .metadata_matcher
        .as_ref()
        .ok_or_else(|| ("metadata_matcher".to_string(), "is required".to_string()))?;
    MetadataMatcher::compile(m).map_err(|e| at("metadata_matcher", e))
}

impl Permission {
    #[allow(deprecated)]
    pub(super) fn compile(p: &PermissionProto) -> Result<Self, Error> {
        let set = |rules: &[PermissionProto], name: &str| -> Result<Vec<Self>, Error> {
            if rules.is_empty() {
                return Err((
                    format!("{name}.rules"),
                    "at least one rule is required".into(),
                ));
            }
            rules
                .iter()
                .enumerate()
                .map(|(i, r)| Self::compile(r).map_err(|e| at(&format!("{name}.rules[{i}]"), e)))
                .collect()
        };
        Ok(match &p.rule {
            Some(Rule::AndRules(s)) => Self::And(set(&s.rules, "and_rules")?),
            Some(Rule::OrRules(s)) => Self::Or(set(&s.rules, "or_rules")?),
            Some(Rule::Any(true)) => Self::Any,
            Some(Rule::Any(false)) => return Err(("any".into(), "must be true".into())),
            Some(Rule::Header(h)) => {
                Self::Header(HeaderMatcher::compile(h).map_err(|e| at("header", e))?)
            }
            Some(Rule::UrlPath(u)) => {
                Self::UrlPath(PathMatch::compile(u).map_err(|e| at("url_path", e))?)
            }
            Some(Rule::DestinationIp(c)) => {
                Self::DestinationIp(cidr(c).map_err(|e| at("destination_ip", e))?)
            }
            Some(Rule::DestinationPort(port)) => {
                Self::DestinationPort(u16::try_from(*port).map_err(|_| {
                    (
                        "destination_port".to_string(),
                        format!("{port} is above 65535"),
                    )
                })?)
            }
            Some(Rule::DestinationPortRange(r)) => {
                let field = "destination_port_range".to_string();
                if !(0..=65536).contains(&r.start) {
                    return Err((field, format!("range start {} is out of bounds", r.start)));
                }
                if !(0..=65536).contains(&r.end) {
                    return Err((field, format!("range end {} is out of bounds", r.end)));
                }
                if r.start >= r.end {
                    return Err((
                        field,
                        format!(
                            "range start {} cannot be greater or equal than range end {}",
                            r.start, r.end
                        ),
                    ));
                }
                Self::DestinationPortRange(r.start, r.end)
            }
            Some(Rule::Metadata(m)) => {
                Self::Metadata(MetadataMatcher::compile(m).map_err(|e| at("metadata", e))?)
            }
            Some(Rule::SourcedMetadata(s)) => {
                Self::Metadata(sourced_metadata(s).map_err(|e| at("sourced_metadata", e))?)
            }
            Some(Rule::NotRule(inner)) => Self::Not(Box::new(
                Self::compile(inner).map_err(|e| at("not_rule", e))?,
            )),
            Some(Rule::RequestedServerName(sm)) => Self::RequestedServerName(
                compile_string_matcher(sm).map_err(|e| ("requested_server_name".to_string(), e))?,
            ),
            Some(Rule::Matcher(_)) => {
                return Err((
                    "matcher".into(),
                    "permission matcher extensions are not supported".into(),
                ));
            }
            Some(Rule::UriTemplate(_)) => {
                return Err((
                    "uri_template".into(),
                    "URI template permissions are not supported".into(),
                ));
            }
            None => return Err((String::new(), "a permission rule is required".into())),
        })
    }

    pub(super) fn matches(&self, input: &Input<'_>) -> bool {
        match self {
            Self::And(all) => all.iter().all(|p| p.matches(input)),
            Self::Or(any) => any.iter().any(|p| p.matches(input)),
            Self::Any => true,
            Self::Header(h) => h.matches(input.http.as_ref()),
            Self::UrlPath(p) => p.matches(input.http.as_ref()),
            Self::DestinationIp(c) => c.contains(&input.local.ip()),
            Self::DestinationPort(p) => input.local.port() == *p,
            Self::DestinationPortRange(start, end) => {
                let port = i32::from(input.local.port());
                *start <= port && port < *end
            }
            Self::Metadata(m) => m.matches(input.metadata),
            Self::Not(inner) => !inner.matches(input),
            Self::RequestedServerName(sm) => sm.matches(input.requested_server_name),
        }
    }
}

impl Principal {
    pub(super) fn compile(p: &PrincipalProto) -> Result<Self, Error> {
        let set = |ids: &[PrincipalProto], name: &str| -> Result<Vec<Self>, Error> {
            if ids.is_empty() {
                return Err((
                    format!("{name}.ids"),
                    "at least one identifier is required".into(),
                ));
            }
            ids.iter()
                .enumerate()
                .map(|(i, r)| Self::compile(r).map_err(|e| at(&format!("{name}.ids[{i}]"), e)))
                .collect()
        };
        #[allow(deprecated)]
        Ok(match &p.identifier {
            Some(Identifier::AndIds(s)) => Self::And(set(&s.ids, "and_ids")?),
            Some(Identifier::OrIds(s)) => Self::Or(set(&s.ids, "or_ids")?),
            Some(Identifier::Any(true)) => Self::Any,
            Some(Identifier::Any(false)) => return Err(("any".into(), "must be true".into())),
            Some(Identifier::Authenticated(a)) => Self::Authenticated(
                a.principal_name
                    .as_ref()
                    .map(compile_string_matcher)
                    .transpose()
                    .map_err(|e| ("authenticated.principal_name".to_string(), e))?,
            ),
            Some(Identifier::SourceIp(c)) => {
                Self::SourceIp(cidr(c).map_err(|e| at("source_ip", e))?)
            }
            Some(Identifier::DirectRemoteIp(c)) => {
                Self::DirectRemoteIp(cidr(c).map_err(|e| at("direct_remote_ip", e))?)
            }
            Some(Identifier::RemoteIp(c)) => {
                Self::RemoteIp(cidr(c).map_err(|e| at("remote_ip", e))?)
            }
            Some(Identifier::Header(h)) => {
                Self::Header(HeaderMatcher::compile(h).map_err(|e| at("header", e))?)
            }
            Some(Identifier::UrlPath(u)) => {
                Self::UrlPath(PathMatch::compile(u).map_err(|e| at("url_path", e))?)
            }
            Some(Identifier::Metadata(m)) => {
                Self::Metadata(MetadataMatcher::compile(m).map_err(|e| at("metadata", e))?)
            }
            Some(Identifier::SourcedMetadata(s)) => {
                Self::Metadata(sourced_metadata(s).map_err(|e| at("sourced_metadata", e))?)
            }
            Some(Identifier::NotId(inner)) => {
                Self::Not(Box::new(Self::compile(inner).map_err(|e| at("not_id", e))?))
            }
            Some(Identifier::FilterState(_)) => {
                return Err((
                    "filter_state".into(),
                    "filter state principals are not supported".into(),
                ));
            }
            Some(Identifier::Custom(_)) => {
                return Err((
                    "custom".into(),
                    "custom principal extensions are not supported".into(),
                ));
            }
            None => return Err((String::new(), "a principal identifier is required".into())),
        })
    }

    pub(super) fn matches(&self, input: &Input<'_>) -> bool {
        match self {
            Self::And(all) => all.iter().all(|p| p.matches(input)),
            Self::Or(any) => any.iter().any(|p| p.matches(input)),
            Self::Any => true,
            Self::Authenticated(m) => {
                if !input.tls {
                    return false;
                }
                let Some(m) = m else {
                    return true;
                };
                // Envoy: URI SANs, then DNS SANs, then the subject.
                match input.peer {
                    Some(peer) => {
                        peer.uri_sans.iter().any(|s| m.matches(s))
                            || peer.dns_sans.iter().any(|s| m.matches(s))
                            || m.matches(&peer.subject)
                    }
                    None => m.matches(""),
                }
            }
            Self::SourceIp(c) | Self::DirectRemoteIp(c) => c.contains(&input.direct_remote.ip()),
            Self::RemoteIp(c) => c.contains(&input.remote),
            Self::Header(h) => h.matches(input.http.as_ref()),
            Self::UrlPath(p) => p.matches(input.http.as_ref()),
            Self::Metadata(m) => m.matches(input.metadata),
            Self::Not(inner) => !inner.matches(input),
        }
    }
}

//! SPIFFE ids in Istio's Kubernetes form: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! Every workload certificate the mesh CA issues carries exactly one of these
//! as its only URI SAN, and every authorization decision (AuthorizationPolicy
//! `principals`, `source.namespaces`) is made on it. Parsing is therefore
//! strict: the SPIFFE spec's character rules for the trust domain and path
//! segments, plus Istio's fixed `/ns/<ns>/sa/<sa>` path, so that two spellings
//! can never name the same workload.

use std::fmt;
use std::str::FromStr;

const SCHEME: &str = "spiffe://";
/// SPIFFE spec: a trust domain is at most 255 bytes.
const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// SPIFFE spec: the whole id is at most 2048 bytes.
const MAX_ID_LEN: usize = 2048;

/// A workload identity: which trust domain, namespace and service account.
///
/// The fields are private so that a value always holds a valid id; build one
/// with [`SpiffeId::new`] or parse one with [`str::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

/// Why a string is not an Istio-style SPIFFE id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("SPIFFE id {id:?} does not start with \"spiffe://\"")]
    MissingScheme { id: String },
    #[error("SPIFFE id is {len} bytes long; at most {MAX_ID_LEN} are allowed")]
    TooLong { len: usize },
    #[error("the trust domain is empty")]
    EmptyTrustDomain,
    #[error("trust domain {trust_domain:?} is longer than {MAX_TRUST_DOMAIN_LEN} bytes")]
    TrustDomainTooLong { trust_domain: String },
    #[error(
        "trust domain {trust_domain:?} contains {ch:?}; only lowercase letters, digits, '.', '-' and '_' are allowed"
    )]
    InvalidTrustDomainChar { trust_domain: String, ch: char },
    #[error("SPIFFE id {id:?} has path {path:?}; expected /ns/<namespace>/sa/<service-account>")]
    UnexpectedPath { id: String, path: String },
    #[error("{field} {value:?} is invalid: {reason}")]
    InvalidSegment {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
}

impl SpiffeId {
    /// Builds an id from its parts, validating each.
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Result<Self, SpiffeIdError> {
        let id = Self {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        };
        validate_trust_domain(&id.trust_domain)?;
        validate_segment("namespace", &id.namespace)?;
        validate_segment("service account", &id.service_account)?;
        let len = id.to_string().len();
        if len > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong { len });
        }
        Ok(id)
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The id as the URI that goes into a certificate's SAN.
    pub fn to_uri(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(id: &str) -> Result<Self, Self::Err> {
        if id.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong { len: id.len() });
        }
        let rest = id
            .strip_prefix(SCHEME)
            .ok_or_else(|| SpiffeIdError::MissingScheme { id: id.to_owned() })?;
        let (trust_domain, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        validate_trust_domain(trust_domain)?;
        let unexpected = || SpiffeIdError::UnexpectedPath {
            id: id.to_owned(),
            path: path.to_owned(),
        };
        // `path` starts with '/', so the first split element is empty.
        let mut segments = path.split('/').skip(1);
        let (Some("ns"), Some(namespace), Some("sa"), Some(service_account), None) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            return Err(unexpected());
        };
        Self::new(trust_domain, namespace, service_account)
    }
}

impl TryFrom<&str> for SpiffeId {
    type Error = SpiffeIdError;

    fn try_from(id: &str) -> Result<Self, Self::Error> {
        id.parse()
    }
}

/// Checks a trust domain against the SPIFFE spec: non-empty, at most 255
/// bytes, lowercase letters, digits, `.`, `-` and `_`.
pub fn validate_trust_domain(trust_domain: &str) -> Result<(), SpiffeIdError> {
    if trust_domain.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain);
    }
    if trust_domain.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong {
            trust_domain: trust_domain.to_owned(),
        });
    }
    if let Some(ch) = trust_domain
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        return Err(SpiffeIdError::InvalidTrustDomainChar {
            trust_domain: trust_domain.to_owned(),
            ch,
        });
    }
    Ok(())
}

/// SPIFFE spec path segment rules: non-empty, not `.` or `..`, and only
/// ASCII letters, digits, `.`, `-` and `_`.
fn validate_segment(field: &'static str, value: &str) -> Result<(), SpiffeIdError> {
    let invalid = |reason| SpiffeIdError::InvalidSegment {
        field,
        value: value.to_owned(),
        reason,
    };
    if value.is_empty() {
        return Err(invalid("it is empty"));
    }
    if value == "." || value == ".." {
        return Err(invalid("'.' and '..' are not allowed as path segments"));
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(invalid(
            "only ASCII letters, digits, '.', '-' and '_' are allowed",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_round_trip() {
        let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
            .parse()
            .expect("valid id");
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "bookinfo-productpage");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
        );
        assert_eq!(
            SpiffeId::new("cluster.local", "default", "bookinfo-productpage").expect("valid"),
            id
        );
    }

    #[test]
    fn rejects_malformed_ids_with_a_reason() {
        let err = |s: &str| s.parse::<SpiffeId>().expect_err(s);
        assert!(matches!(
            err("http://cluster.local/ns/a/sa/b"),
            SpiffeIdError::MissingScheme { .. }
        ));
        assert!(matches!(
            err("spiffe:///ns/a/sa/b"),
            SpiffeIdError::EmptyTrustDomain
        ));
        assert!(matches!(
            err("spiffe://Cluster.local/ns/a/sa/b"),
            SpiffeIdError::InvalidTrustDomainChar { ch: 'C', .. }
        ));
        assert!(matches!(
            err("spiffe://td:8080/ns/a/sa/b"),
            SpiffeIdError::InvalidTrustDomainChar { ch: ':', .. }
        ));
        for path in [
            "spiffe://td",
            "spiffe://td/",
            "spiffe://td/ns/a",
            "spiffe://td/ns/a/sa",
            "spiffe://td/ns/a/sa/b/",
            "spiffe://td/ns/a/sa/b/extra",
            "spiffe://td/namespace/a/sa/b",
            "spiffe://td/ns/a/serviceaccount/b",
        ] {
            assert!(
                matches!(err(path), SpiffeIdError::UnexpectedPath { .. }),
                "{path}"
            );
        }
        assert!(matches!(
            err("spiffe://td/ns//sa/b"),
            SpiffeIdError::InvalidSegment {
                field: "namespace",
                ..
            }
        ));
        assert!(matches!(
            err("spiffe://td/ns/a/sa/.."),
            SpiffeIdError::InvalidSegment {
                field: "service account",
                ..
            }
        ));
        assert!(matches!(
            err("spiffe://td/ns/a/sa/b?x=1"),
            SpiffeIdError::InvalidSegment { .. }
        ));
        let long = format!("spiffe://td/ns/a/sa/{}", "x".repeat(MAX_ID_LEN));
        assert!(matches!(err(&long), SpiffeIdError::TooLong { .. }));
        let message = err("spiffe://td/ns/a").to_string();
        assert!(
            message.contains("/ns/<namespace>/sa/<service-account>"),
            "{message}"
        );
    }
}

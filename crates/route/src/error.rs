//! Compile-time errors. Every error names the offending field as a path from the
//! `RouteConfiguration` root so that an xDS NACK tells the operator exactly what to fix.

/// Why a `RouteConfiguration` could not be compiled (the proxy should NACK it).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// A regular expression did not compile.
    #[error("{field}: invalid regex: {source}")]
    InvalidRegex {
        field: String,
        #[source]
        source: Box<regex::Error>,
    },
    /// A value violates a rule Envoy enforces at load time.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// The field changes routing behaviour but Trellis does not implement it. Rejecting
    /// is safer than silently routing differently from Envoy.
    #[error("{field}: not supported by trellis")]
    Unsupported { field: String },
}

impl RouteError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn unsupported(field: impl Into<String>) -> Self {
        Self::Unsupported {
            field: field.into(),
        }
    }

    pub(crate) fn regex(field: impl Into<String>, source: regex::Error) -> Self {
        Self::InvalidRegex {
            field: field.into(),
            source: Box::new(source),
        }
    }

    /// The field path the error refers to.
    pub fn field(&self) -> &str {
        match self {
            Self::InvalidRegex { field, .. }
            | Self::Invalid { field, .. }
            | Self::Unsupported { field } => field,
        }
    }
}

pub(crate) type Result<T, E = RouteError> = std::result::Result<T, E>;

//! Errors raised while turning xDS resources into runtime configuration.
//!
//! Every rejection names the resource and the field path, because the text
//! travels back to the control plane in a NACK and is all an operator sees.

use std::fmt;

/// A resource that cannot be turned into runtime configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// Resource kind and name, e.g. `listener 'http_8080'`.
    pub resource: String,
    /// Field path inside the resource, e.g. `filter_chains[0].filters[1].typed_config`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.resource, self.message)
        } else {
            write!(f, "{}: {}: {}", self.resource, self.field, self.message)
        }
    }
}

impl ConfigError {
    pub fn new(
        resource: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            resource: resource.into(),
            field: field.into(),
            message: message.into(),
        }
    }

    /// Prefixes the field path, used when a nested compiler reports relative to its own message.
    pub fn within(mut self, prefix: &str) -> Self {
        self.field = if self.field.is_empty() {
            prefix.to_string()
        } else {
            format!("{prefix}.{}", self.field)
        };
        self
    }
}

/// Builds errors for one resource without repeating its name at every site.
#[derive(Debug, Clone)]
pub struct ErrorScope {
    resource: String,
}

impl ErrorScope {
    pub fn new(kind: &str, name: &str) -> Self {
        Self {
            resource: format!("{kind} '{name}'"),
        }
    }

    pub fn err(&self, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::new(self.resource.clone(), field, message)
    }

    pub fn resource(&self) -> &str {
        &self.resource
    }
}

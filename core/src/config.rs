//! The one setup error: an invalid configuration value, rejected when the
//! stack, a layer's configuration or the driver service is built (never at
//! request time).
//!
//! ```
//! use tower_cql_core::ConfigError;
//!
//! let err = ConfigError::new("retry.max_attempts", "must be at least 1, got 0");
//! assert_eq!(err.to_string(), "invalid configuration `retry.max_attempts`: must be at least 1, got 0");
//! ```

/// An invalid configuration value: names the setting and says what is
/// wrong with it and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration `{field}`: {message}")]
pub struct ConfigError {
    /// The setting, e.g. `retry.max_attempts`.
    pub field: &'static str,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl ConfigError {
    /// A new error for `field`.
    pub fn new(field: &'static str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            field,
            message: message.into(),
        }
    }
}

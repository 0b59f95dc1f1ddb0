//! Configuration errors, shared by every layer's `validate()`.
//!
//! ```
//! use tower_cql_middleware::config::ConfigError;
//!
//! let err = ConfigError::new("retry.max_attempts", "must be at least 1, got 0");
//! assert_eq!(err.to_string(), "invalid configuration `retry.max_attempts`: must be at least 1, got 0");
//! ```

/// An invalid configuration value, rejected when a layer or the stack is
/// built: names the setting and says what is wrong with it.
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

impl From<ConfigError> for tower_cql_core::CqlError {
    fn from(e: ConfigError) -> tower_cql_core::CqlError {
        tower_cql_core::CqlError::new(tower_cql_core::ErrorKind::BadRequest, e.to_string())
    }
}

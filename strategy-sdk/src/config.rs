//! Strict parsing of a strategy's JSON config: unknown keys, wrong types and values
//! out of range are errors that name the key and say what is allowed.

use engine_protocol::json_kind;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::fmt;

/// A config the strategy rejects, with the key at fault when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the offending key (`""` for the whole config).
    pub key: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl ConfigError {
    /// A config rejected because of `key` (`""` for the config as a whole).
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }

    /// `key` must lie in `[min, max]`; `Ok` when it does.
    ///
    /// ```
    /// use strategy_sdk::ConfigError;
    ///
    /// assert!(ConfigError::check_range("lookback", 20, 1, 100).is_ok());
    /// let err = ConfigError::check_range("lookback", 0, 1, 100).unwrap_err();
    /// assert_eq!(err.to_string(), "invalid config key 'lookback': 0 is out of range; allowed: 1 to 100");
    /// ```
    pub fn check_range<T: PartialOrd + fmt::Display + Copy>(
        key: &str,
        value: T,
        min: T,
        max: T,
    ) -> Result<(), ConfigError> {
        if value < min || value > max {
            Err(ConfigError::new(
                key,
                format!("{value} is out of range; allowed: {min} to {max}"),
            ))
        } else {
            Ok(())
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "invalid config: {}", self.message)
        } else {
            write!(f, "invalid config key '{}': {}", self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Parse `config` into `T`, naming the offending key on error.
///
/// `T` should carry `#[serde(deny_unknown_fields)]` so that a typo such as
/// `fast_perod` is an error listing the keys that exist.
///
/// ```
/// use serde::Deserialize;
/// use serde_json::json;
/// use strategy_sdk::parse_config;
///
/// #[derive(Debug, Deserialize)]
/// #[serde(deny_unknown_fields)]
/// struct SmaConfig {
///     token: String,
///     #[serde(default = "default_fast")]
///     fast_period: u32,
/// }
/// fn default_fast() -> u32 { 5 }
///
/// let config: SmaConfig = parse_config(&json!({"token": "BTC-USD"})).unwrap();
/// assert_eq!(config.fast_period, 5);
///
/// let err = parse_config::<SmaConfig>(&json!({"token": "BTC-USD", "fast_perod": 3})).unwrap_err();
/// assert_eq!(err.key, "fast_perod");
/// assert!(err.to_string().contains("expected `token` or `fast_period`"), "{err}");
///
/// let err = parse_config::<SmaConfig>(&json!({"token": "BTC-USD", "fast_period": "3"})).unwrap_err();
/// assert_eq!(err.key, "fast_period");
/// ```
pub fn parse_config<T: DeserializeOwned>(config: &Value) -> Result<T, ConfigError> {
    if !config.is_object() {
        return Err(ConfigError::new(
            "",
            format!("expected a JSON object, got {}", json_kind(config)),
        ));
    }
    serde_path_to_error::deserialize(config).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner().to_string();
        // serde_json appends " at line 1 column N", which means nothing for a Value.
        let message = match inner.find(" at line ") {
            Some(i) => inner[..i].to_string(),
            None => inner,
        };
        let key = if path == "." { String::new() } else { path };
        ConfigError { key, message }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Cfg {
        token: String,
        fast_period: u32,
    }

    #[test]
    fn typo_names_the_key_and_the_allowed_ones() {
        let err = parse_config::<Cfg>(&json!({"token": "BTC", "fast_perod": 3})).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("fast_perod"), "{text}");
        assert!(text.contains("fast_period"), "{text}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err =
            parse_config::<Cfg>(&json!({"token": "BTC", "fast_period": "three"})).unwrap_err();
        assert_eq!(err.key, "fast_period");
        assert!(err.message.contains("invalid type"), "{}", err.message);
    }

    #[test]
    fn non_object_is_rejected() {
        let err = parse_config::<Cfg>(&json!([1])).unwrap_err();
        assert!(err.to_string().contains("expected a JSON object"));
    }

    #[test]
    fn range_check() {
        assert!(ConfigError::check_range("p", 5, 1, 10).is_ok());
        let e = ConfigError::check_range("p", 0, 1, 10).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid config key 'p': 0 is out of range; allowed: 1 to 10"
        );
    }
}

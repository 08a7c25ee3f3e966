//! The [`Registry`]: `strategy_type` name → constructor, with a description and an
//! example config for `strategy-executor --list`.

use crate::config::ConfigError;
use crate::strategy::Strategy;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;

/// Builds a strategy from its config, rejecting a bad config.
pub type Constructor = fn(&Value) -> Result<Box<dyn Strategy>, ConfigError>;

#[derive(Debug, Clone, Serialize)]
pub struct StrategyInfo {
    pub strategy_type: String,
    pub description: String,
    pub example_config: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RegistryError {
    UnknownType {
        requested: String,
        registered: Vec<String>,
    },
    InvalidConfig {
        strategy_type: String,
        source: ConfigError,
    },
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryError::UnknownType {
                requested,
                registered,
            } => write!(
                f,
                "unknown strategy_type '{requested}'; registered: {}",
                registered.join(", ")
            ),
            RegistryError::InvalidConfig {
                strategy_type,
                source,
            } => write!(f, "{strategy_type}: {source}"),
        }
    }
}

impl std::error::Error for RegistryError {}

#[derive(Default)]
pub struct Registry {
    entries: BTreeMap<String, (StrategyInfo, Constructor)>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Register `constructor` under `strategy_type` (a later call replaces it).
    pub fn register(
        &mut self,
        strategy_type: &str,
        description: &str,
        example_config: Value,
        constructor: Constructor,
    ) -> &mut Self {
        let info = StrategyInfo {
            strategy_type: strategy_type.to_string(),
            description: description.to_string(),
            example_config,
        };
        self.entries
            .insert(strategy_type.to_string(), (info, constructor));
        self
    }

    /// The registered type names, sorted.
    pub fn types(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    pub fn infos(&self) -> impl Iterator<Item = &StrategyInfo> {
        self.entries.values().map(|(info, _)| info)
    }

    /// Build the strategy `strategy_type` from `config`.
    pub fn create(
        &self,
        strategy_type: &str,
        config: &Value,
    ) -> Result<Box<dyn Strategy>, RegistryError> {
        let (_, constructor) =
            self.entries
                .get(strategy_type)
                .ok_or_else(|| RegistryError::UnknownType {
                    requested: strategy_type.to_string(),
                    registered: self.types(),
                })?;
        constructor(config).map_err(|source| RegistryError::InvalidConfig {
            strategy_type: strategy_type.to_string(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::Context;
    use engine_protocol::Tick;
    use serde_json::json;

    struct Nop;
    impl Strategy for Nop {
        fn on_start(&mut self, _ctx: &mut Context) {}
        fn on_tick(&mut self, _ctx: &mut Context, _tick: &Tick) {}
    }

    fn nop(config: &Value) -> Result<Box<dyn Strategy>, ConfigError> {
        if config.get("bad").is_some() {
            return Err(ConfigError::new("bad", "not allowed"));
        }
        Ok(Box::new(Nop))
    }

    #[test]
    fn unknown_type_lists_registered() {
        let mut r = Registry::new();
        r.register("b_nop", "", json!({}), nop)
            .register("a_nop", "", json!({}), nop);
        let err = r.create("c_nop", &json!({})).err().unwrap();
        assert_eq!(
            err.to_string(),
            "unknown strategy_type 'c_nop'; registered: a_nop, b_nop"
        );
        assert!(r.create("a_nop", &json!({})).is_ok());
        let err = r.create("a_nop", &json!({"bad": 1})).err().unwrap();
        assert_eq!(
            err.to_string(),
            "a_nop: invalid config key 'bad': not allowed"
        );
    }
}

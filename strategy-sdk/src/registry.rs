//! The [`Registry`]: `strategy_type` name → constructor, with a description and an
//! example config for `strategy-executor --list`.
//!
//! A constructor is any `Fn(&Value) -> Result<Box<dyn Strategy>, ConfigError>`: a
//! plain function, or a closure that captures what its strategies share (a default,
//! a handle), as long as it is `Send + Sync + 'static`.

use crate::config::ConfigError;
use crate::modes::RunMode;
use crate::strategy::Strategy;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;

/// Builds a strategy from its config, rejecting a bad config.
pub type Constructor = Box<dyn Fn(&Value) -> Result<Box<dyn Strategy>, ConfigError> + Send + Sync>;

/// A registered type as `strategy-executor --list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StrategyInfo {
    pub strategy_type: String,
    pub description: String,
    pub example_config: Value,
    /// The run modes the type supports: `live` always, then those it declared.
    pub modes: Vec<RunMode>,
    /// Whether the type implements [`Strategy::on_execute`]: it may be given an
    /// `execution_interval_s` and `trigger` commands
    /// ([`Registry::register_interval`]).
    pub supports_interval: bool,
}

impl StrategyInfo {
    /// Whether the type can run in `mode`.
    pub fn supports(&self, mode: RunMode) -> bool {
        self.modes.contains(&mode)
    }
}

/// Why [`Registry::create`] built nothing.
#[derive(Debug, Clone, PartialEq)]
pub enum RegistryError {
    /// No constructor is registered under that name.
    UnknownType {
        requested: String,
        registered: Vec<String>,
    },
    /// The constructor rejected the config.
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

/// The strategy types an executor can run, by `strategy_type`.
///
/// ```
/// use serde::Deserialize;
/// use serde_json::{json, Value};
/// use strategy_sdk::{parse_config, ConfigError, Context, Registry, Strategy, Tick};
///
/// struct Quiet { token: String }
///
/// impl Strategy for Quiet {
///     fn on_start(&mut self, ctx: &mut Context) {
///         ctx.subscribe(&self.token);
///     }
///     fn on_tick(&mut self, _ctx: &mut Context, _tick: &Tick) {}
/// }
///
/// #[derive(Deserialize)]
/// #[serde(deny_unknown_fields)]
/// struct QuietConfig { token: Option<String> }
///
/// fn create(config: &Value) -> Result<Box<dyn Strategy>, ConfigError> {
///     let config: QuietConfig = parse_config(config)?;
///     Ok(Box::new(Quiet { token: config.token.unwrap_or_else(|| "BTC-USD".into()) }))
/// }
///
/// let default_token = String::from("ETH-USD");
/// let mut registry = Registry::new();
/// registry
///     .register("quiet", "does nothing", json!({"token": "BTC-USD"}), create)
///     // A closure may capture what it needs.
///     .register("quiet_eth", "does nothing on ETH", json!({}), move |_config: &Value| {
///         Ok(Box::new(Quiet { token: default_token.clone() }) as Box<dyn Strategy>)
///     });
/// assert_eq!(registry.types(), ["quiet", "quiet_eth"]);
/// assert!(registry.create("quiet", &json!({})).is_ok());
/// let err = registry.create("quiet", &json!({"tokn": "X"})).err().unwrap();
/// assert!(err.to_string().starts_with("quiet: invalid config key 'tokn'"), "{err}");
/// ```
#[derive(Default)]
pub struct Registry {
    entries: BTreeMap<String, Entry>,
}

struct Entry {
    info: StrategyInfo,
    constructor: Constructor,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Register `constructor` under `strategy_type` (a later call replaces it), for
    /// live trading only. `example_config` must be a config the constructor accepts:
    /// `--list` shows it.
    pub fn register<F>(
        &mut self,
        strategy_type: &str,
        description: &str,
        example_config: Value,
        constructor: F,
    ) -> &mut Self
    where
        F: Fn(&Value) -> Result<Box<dyn Strategy>, ConfigError> + Send + Sync + 'static,
    {
        self.register_with_modes(
            strategy_type,
            description,
            example_config,
            &[RunMode::Live],
            constructor,
        )
    }

    /// [`Registry::register`], declaring the run modes the strategy supports besides
    /// `live` (which every strategy supports): `backtest` if `on_tick` trades
    /// sensibly on one tick per bar close, `screener` if it implements
    /// [`Strategy::score`], `alert` if it implements [`Strategy::signal`].
    ///
    /// ```
    /// # use strategy_sdk::{Context, Registry, RunMode, Strategy, Tick};
    /// # struct Nop;
    /// # impl Strategy for Nop {
    /// #     fn on_start(&mut self, _ctx: &mut Context) {}
    /// #     fn on_tick(&mut self, _ctx: &mut Context, _tick: &Tick) {}
    /// # }
    /// let mut registry = Registry::new();
    /// registry.register_with_modes(
    ///     "nop", "does nothing", serde_json::json!({}), &[RunMode::Backtest],
    ///     |_config: &serde_json::Value| Ok(Box::new(Nop) as Box<dyn Strategy>),
    /// );
    /// let info = registry.infos().next().unwrap();
    /// assert_eq!(info.modes, [RunMode::Live, RunMode::Backtest]);
    /// assert!(!info.supports(RunMode::Screener));
    /// ```
    pub fn register_with_modes<F>(
        &mut self,
        strategy_type: &str,
        description: &str,
        example_config: Value,
        modes: &[RunMode],
        constructor: F,
    ) -> &mut Self
    where
        F: Fn(&Value) -> Result<Box<dyn Strategy>, ConfigError> + Send + Sync + 'static,
    {
        let modes = RunMode::ALL
            .into_iter()
            .filter(|mode| *mode == RunMode::Live || modes.contains(mode))
            .collect();
        let info = StrategyInfo {
            strategy_type: strategy_type.to_string(),
            description: description.to_string(),
            example_config,
            modes,
            supports_interval: false,
        };
        let entry = Entry {
            info,
            constructor: Box::new(constructor),
        };
        self.entries.insert(strategy_type.to_string(), entry);
        self
    }

    /// [`Registry::register_with_modes`] for a strategy that also implements
    /// [`Strategy::on_execute`]: it may run with an `execution_interval_s` (executed
    /// once per interval) and take `trigger` commands. `--list` shows it.
    ///
    /// ```
    /// # use strategy_sdk::{Context, ExecuteError, ExecutionReport, Registry, RunMode, Strategy, Tick};
    /// # struct Step;
    /// # impl Strategy for Step {
    /// #     fn on_start(&mut self, _ctx: &mut Context) {}
    /// #     fn on_tick(&mut self, _ctx: &mut Context, _tick: &Tick) {}
    /// #     fn on_execute(&mut self, _ctx: &mut Context) -> Result<ExecutionReport, ExecuteError> {
    /// #         Ok(ExecutionReport::done())
    /// #     }
    /// # }
    /// let mut registry = Registry::new();
    /// registry.register_interval(
    ///     "step", "one step per interval", serde_json::json!({}), &[],
    ///     |_config: &serde_json::Value| Ok(Box::new(Step) as Box<dyn Strategy>),
    /// );
    /// let info = registry.info("step").unwrap();
    /// assert!(info.supports_interval);
    /// assert_eq!(info.modes, [RunMode::Live]);
    /// ```
    pub fn register_interval<F>(
        &mut self,
        strategy_type: &str,
        description: &str,
        example_config: Value,
        modes: &[RunMode],
        constructor: F,
    ) -> &mut Self
    where
        F: Fn(&Value) -> Result<Box<dyn Strategy>, ConfigError> + Send + Sync + 'static,
    {
        self.register_with_modes(
            strategy_type,
            description,
            example_config,
            modes,
            constructor,
        );
        if let Some(entry) = self.entries.get_mut(strategy_type) {
            entry.info.supports_interval = true;
        }
        self
    }

    /// The registered type names, sorted.
    pub fn types(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    /// Every registered type, sorted by name.
    pub fn infos(&self) -> impl Iterator<Item = &StrategyInfo> {
        self.entries.values().map(|entry| &entry.info)
    }

    /// The registered type `strategy_type`.
    pub fn info(&self, strategy_type: &str) -> Option<&StrategyInfo> {
        self.entries.get(strategy_type).map(|entry| &entry.info)
    }

    /// Build the strategy `strategy_type` from `config`.
    pub fn create(
        &self,
        strategy_type: &str,
        config: &Value,
    ) -> Result<Box<dyn Strategy>, RegistryError> {
        let entry = self
            .entries
            .get(strategy_type)
            .ok_or_else(|| RegistryError::UnknownType {
                requested: strategy_type.to_string(),
                registered: self.types(),
            })?;
        (entry.constructor)(config).map_err(|source| RegistryError::InvalidConfig {
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

    #[test]
    fn constructors_may_capture_state() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let built = Arc::new(AtomicUsize::new(0));
        let counter = built.clone();
        let mut r = Registry::new();
        r.register("counted", "", json!({}), move |config: &Value| {
            counter.fetch_add(1, Ordering::Relaxed);
            nop(config)
        });
        assert!(r.create("counted", &json!({})).is_ok());
        assert!(r.create("counted", &json!({"bad": 1})).is_err());
        assert_eq!(built.load(Ordering::Relaxed), 2);
        // A later registration replaces the earlier one.
        r.register("counted", "replaced", json!({}), nop);
        assert!(r.create("counted", &json!({})).is_ok());
        assert_eq!(built.load(Ordering::Relaxed), 2);
        assert_eq!(r.infos().next().unwrap().description, "replaced");
    }

    #[test]
    fn every_type_runs_live_and_declares_the_rest() {
        let mut r = Registry::new();
        r.register("plain", "", json!({}), nop).register_with_modes(
            "judge",
            "",
            json!({}),
            &[RunMode::Alert, RunMode::Screener, RunMode::Alert],
            nop,
        );
        assert_eq!(r.info("plain").unwrap().modes, [RunMode::Live]);
        assert_eq!(
            r.info("judge").unwrap().modes,
            [RunMode::Live, RunMode::Screener, RunMode::Alert]
        );
        assert!(r.info("judge").unwrap().supports(RunMode::Live));
        assert!(r.info("other").is_none());
        let listed = serde_json::to_value(r.info("judge").unwrap()).unwrap();
        assert_eq!(listed["modes"], json!(["live", "screener", "alert"]));
        assert_eq!(listed["supports_interval"], json!(false));
        r.register_interval("stepper", "", json!({}), &[RunMode::Backtest], nop);
        let stepper = r.info("stepper").unwrap();
        assert!(stepper.supports_interval);
        assert_eq!(stepper.modes, [RunMode::Live, RunMode::Backtest]);
        r.register("stepper", "replaced", json!({}), nop);
        assert!(!r.info("stepper").unwrap().supports_interval);
    }

    #[test]
    fn registries_can_be_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Registry>();
    }
}

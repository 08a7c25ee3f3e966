//! A custom executor: your own strategy next to the built-in ones (the walk-through is
//! `strategy-sdk/README.md`; test a strategy with `strategy_sdk::testkit`).
//!
//! Build it with `cargo build --release --example custom_executor` and start the
//! manager with `--executor-path target/release/examples/custom_executor`; then
//! `INSERT INTO strategy_configs (name, strategy_type, config) VALUES
//! ('my-momentum', 'momentum', '{"token": "BTC-USD", "lookback": 10})`.

use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::process::ExitCode;
use strategy_sdk::{parse_config, ConfigError, Context, Strategy, Tick};

/// Buy when the price is above its value `lookback` ticks ago, sell when below.
struct Momentum {
    config: MomentumConfig,
    /// The longest lookback a config may ask for (given by the executor's `main`).
    max_lookback: usize,
    prices: VecDeque<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MomentumConfig {
    token: String,
    #[serde(default = "default_lookback")]
    lookback: usize,
    #[serde(default = "default_qty")]
    order_qty: f64,
}

fn default_lookback() -> usize {
    10
}

fn default_qty() -> f64 {
    1.0
}

impl MomentumConfig {
    fn parse(config: &Value, max_lookback: usize) -> Result<Self, ConfigError> {
        let parsed: MomentumConfig = parse_config(config)?;
        ConfigError::check_range("lookback", parsed.lookback, 1, max_lookback)?;
        if !(parsed.order_qty.is_finite() && parsed.order_qty > 0.0) {
            return Err(ConfigError::new("order_qty", "must be a number above 0"));
        }
        Ok(parsed)
    }
}

impl Strategy for Momentum {
    fn on_start(&mut self, ctx: &mut Context) {
        ctx.subscribe(&self.config.token);
    }

    fn on_tick(&mut self, ctx: &mut Context, tick: &Tick) {
        self.prices.push_back(tick.price);
        if self.prices.len() <= self.config.lookback {
            return;
        }
        let then = self.prices.pop_front().expect("longer than lookback");
        let position = ctx.position(&tick.token).qty;
        let qty = self.config.order_qty;
        if tick.price > then && position <= 0.0 {
            let _ = ctx.buy(&tick.token, qty - position);
        } else if tick.price < then && position >= 0.0 {
            let _ = ctx.sell(&tick.token, qty + position);
        }
        ctx.set_metric("momentum", tick.price - then);
    }

    fn update_config(&mut self, _ctx: &mut Context, config: &Value) -> Result<(), ConfigError> {
        let new = MomentumConfig::parse(config, self.max_lookback)?;
        if new.token != self.config.token {
            return Err(ConfigError::new(
                "token",
                "cannot change while running; stop, update, start",
            ));
        }
        self.config = new;
        Ok(())
    }
}

fn create_momentum(config: &Value, max_lookback: usize) -> Result<Box<dyn Strategy>, ConfigError> {
    Ok(Box::new(Momentum {
        config: MomentumConfig::parse(config, max_lookback)?,
        max_lookback,
        prices: VecDeque::new(),
    }))
}

fn main() -> ExitCode {
    let mut registry = strategy_executor::strategies::builtin_registry();
    // A constructor is a plain `fn(&Value) -> Result<Box<dyn Strategy>, ConfigError>`
    // or, as here, a closure that captures what its strategies share.
    let max_lookback = 10_000;
    registry.register(
        "momentum",
        "long when the price rose over the lookback, short when it fell",
        json!({"token": "BTC-USD", "lookback": 10, "order_qty": 1.0}),
        move |config: &Value| create_momentum(config, max_lookback),
    );
    strategy_executor::runtime::main_with(registry)
}

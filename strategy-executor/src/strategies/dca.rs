//! `dca`: dollar-cost averaging — each interval execution buys `notional` worth of a
//! token at its latest live price, optionally only while that price is below its
//! simple moving average.
//!
//! It is an interval strategy: it trades only in `on_execute` (once per
//! `execution_interval_s`, or per `trigger` command), at the broker's latest price
//! of the token, which the order fills at. Its ticks only keep the last `below_sma`
//! prices for the average; it never trades on a tick. An execution before the
//! token's first tick of this run fails, saying so. With `below_sma`, an
//! execution whose price is not below the average of the last `below_sma` prices
//! (the latest included), or that has seen fewer prices than that, buys nothing and
//! ends well, its message saying why. It never sells: the position is what it has
//! accumulated.

use super::{check_above_zero, check_token};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::VecDeque;
use strategy_sdk::indicators::sma;
use strategy_sdk::{
    parse_config, ConfigError, Context, ExecuteError, ExecutionReport, Strategy, Tick,
};

pub const STRATEGY_TYPE: &str = "dca";
pub const DESCRIPTION: &str =
    "buys a fixed notional of a token at each interval execution, optionally only below its SMA";

/// Longest `below_sma` a config may ask for, in prices.
pub const MAX_SMA_PERIOD: u32 = 10_000;

pub fn example_config() -> Value {
    json!({"token": "BTC-USD", "notional": 100.0, "below_sma": 20})
}

/// The `config` of a `dca` strategy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DcaConfig {
    /// The token bought (its ticks come from `live_data:{token}`).
    pub token: String,
    /// What one execution spends: a finite number above 0 (quantity = notional /
    /// price).
    pub notional: f64,
    /// Buy only when the latest price is below the SMA of the last `below_sma`
    /// prices: 2 to 10 000.
    #[serde(default)]
    pub below_sma: Option<u32>,
}

impl DcaConfig {
    /// Parse and validate a whole config.
    pub fn parse(config: &Value) -> Result<Self, ConfigError> {
        let parsed: Self = parse_config(config)?;
        check_token("token", &parsed.token)?;
        check_above_zero("notional", parsed.notional)?;
        if let Some(period) = parsed.below_sma {
            ConfigError::check_range("below_sma", period, 2, MAX_SMA_PERIOD)?;
        }
        Ok(parsed)
    }

    /// How many prices the strategy keeps: those of the average (none without one).
    fn window(&self) -> usize {
        self.below_sma.map_or(0, |period| period as usize)
    }
}

/// Build a `dca` strategy from its config (the registry's constructor).
pub fn create(config: &Value) -> Result<Box<dyn Strategy>, ConfigError> {
    Ok(Box::new(Dca::new(DcaConfig::parse(config)?)))
}

#[derive(Debug)]
pub struct Dca {
    config: DcaConfig,
    /// The token's latest prices seen by `on_tick`, oldest first, at most
    /// `config.window()`: the average's.
    prices: VecDeque<f64>,
    buys: u64,
    invested: f64,
}

impl Dca {
    pub fn new(config: DcaConfig) -> Self {
        Dca {
            prices: VecDeque::with_capacity(config.window()),
            config,
            buys: 0,
            invested: 0.0,
        }
    }

    pub fn config(&self) -> &DcaConfig {
        &self.config
    }

    fn keep_last(&mut self, window: usize) {
        while self.prices.len() > window {
            self.prices.pop_front();
        }
    }

    /// Why this execution buys nothing at `price`, if it does not.
    fn reason_to_skip(&mut self, price: f64) -> Option<String> {
        let period = self.config.below_sma? as usize;
        let token = &self.config.token;
        let seen = self.prices.len();
        match sma(self.prices.make_contiguous(), period) {
            None => Some(format!(
                "nothing bought: {seen} {token} prices seen, the {period}-price SMA needs {period}"
            )),
            Some(average) if price >= average => Some(format!(
                "nothing bought: {token} at {price} is not below its {period}-price SMA ({average:.4})"
            )),
            Some(_) => None,
        }
    }

    fn report(&self, ctx: &mut Context) {
        ctx.set_metric("buys", self.buys);
        ctx.set_metric("invested", self.invested);
    }
}

impl Strategy for Dca {
    fn on_start(&mut self, ctx: &mut Context) {
        ctx.subscribe(&self.config.token);
        self.report(ctx);
    }

    /// Keeps the price; never trades.
    fn on_tick(&mut self, _ctx: &mut Context, tick: &Tick) {
        if tick.token != self.config.token || !(tick.price.is_finite() && tick.price > 0.0) {
            return;
        }
        self.prices.push_back(tick.price);
        self.keep_last(self.config.window());
    }

    fn on_execute(&mut self, ctx: &mut Context) -> Result<ExecutionReport, ExecuteError> {
        let token = self.config.token.clone();
        // The broker's price, which the order fills at: also the ticks of a pause,
        // which reached the broker but not `on_tick`.
        let Some(price) = ctx.last_price(&token) else {
            return Err(ExecuteError::new(format!(
                "no price for {token} yet: nothing bought until its first tick"
            )));
        };
        if let Some(reason) = self.reason_to_skip(price) {
            return Ok(ExecutionReport::with_message(reason));
        }
        let qty = self.config.notional / price;
        let fill = ctx
            .buy(&token, qty)
            .map_err(|e| ExecuteError::new(format!("could not buy {token}: {e}")))?;
        self.buys += 1;
        self.invested += fill.qty * fill.price;
        self.report(ctx);
        Ok(ExecutionReport::with_message(format!(
            "bought {} {token} at {}",
            fill.qty, fill.price
        )))
    }

    /// A new `notional` applies from the next execution; a new `below_sma` keeps the
    /// prices seen; a new token starts its prices afresh (the old token's position is
    /// kept: it is what was accumulated).
    fn update_config(&mut self, ctx: &mut Context, config: &Value) -> Result<(), ConfigError> {
        let new = DcaConfig::parse(config)?;
        if new.token != self.config.token {
            ctx.unsubscribe(&self.config.token);
            ctx.subscribe(&new.token);
            self.prices.clear();
        }
        self.config = new;
        self.keep_last(self.config.window());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strategy_sdk::testkit::TestHarness;

    fn harness(config: Value) -> TestHarness<Dca> {
        TestHarness::started(Dca::new(DcaConfig::parse(&config).unwrap()))
    }

    fn parse_error(config: Value) -> String {
        DcaConfig::parse(&config).unwrap_err().to_string()
    }

    #[test]
    fn each_execution_buys_the_notional_at_the_latest_price() {
        let mut h = harness(json!({"token": "BTC-USD", "notional": 100.0}));
        assert!(h.ctx().subscriptions().contains("BTC-USD"));
        h.ticks("BTC-USD", &[40.0, 50.0]).tick("ETH-USD", 1.0);
        assert!(h.fills().is_empty(), "ticks never trade");
        let report = h.execute().unwrap();
        assert_eq!(report.message(), Some("bought 2 BTC-USD at 50"));
        h.tick("BTC-USD", 80.0).execute().unwrap();
        assert_eq!(h.fills().len(), 2);
        assert_eq!(h.fills()[1].qty, 1.25);
        assert_eq!(h.position("BTC-USD").qty, 3.25);
        assert_eq!(h.metric("buys"), Some(&json!(2)));
        assert_eq!(h.metric("invested"), Some(&json!(200.0)));
    }

    #[test]
    fn an_execution_before_any_price_fails_saying_so() {
        let mut h = harness(json!({"token": "BTC-USD", "notional": 100.0}));
        h.tick("ETH-USD", 10.0);
        let err = h.execute().unwrap_err();
        assert_eq!(
            err.to_string(),
            "no price for BTC-USD yet: nothing bought until its first tick"
        );
        assert!(h.fills().is_empty());
    }

    #[test]
    fn below_sma_buys_only_under_the_average() {
        let mut h = harness(json!({"token": "BTC-USD", "notional": 90.0, "below_sma": 3}));
        h.ticks("BTC-USD", &[100.0, 100.0]);
        let report = h.execute().unwrap();
        assert_eq!(
            report.message(),
            Some("nothing bought: 2 BTC-USD prices seen, the 3-price SMA needs 3")
        );
        h.tick("BTC-USD", 110.0); // SMA of 100, 100, 110 = 103.33: 110 is above
        let report = h.execute().unwrap();
        assert!(
            report.message().unwrap().starts_with(
                "nothing bought: BTC-USD at 110 is not below its 3-price SMA (103.3333)"
            ),
            "{report:?}"
        );
        assert!(h.fills().is_empty());
        h.tick("BTC-USD", 90.0); // SMA of 100, 110, 90 = 100: 90 is below
        assert_eq!(
            h.execute().unwrap().message(),
            Some("bought 1 BTC-USD at 90")
        );
        assert_eq!(h.position("BTC-USD").qty, 1.0);
        assert_eq!(h.strategy().prices.len(), 3, "only the window is kept");
    }

    #[test]
    fn the_price_is_the_latest_even_after_a_pause() {
        let mut h = harness(json!({"token": "BTC-USD", "notional": 100.0}));
        h.tick("BTC-USD", 50.0)
            .pause()
            .tick("BTC-USD", 200.0)
            .resume();
        h.execute().unwrap();
        assert_eq!(h.fills()[0].price, 200.0);
        assert_eq!(
            h.position("BTC-USD").qty,
            0.5,
            "the notional, at the fill price"
        );
    }

    #[test]
    fn config_errors_name_the_key() {
        let unknown = parse_error(json!({"token": "BTC-USD", "notional": 1.0, "amount": 1}));
        assert!(unknown.contains("amount"), "{unknown}");
        assert!(
            unknown.contains("below_sma"),
            "lists the allowed keys: {unknown}"
        );
        let wrong_type = parse_error(json!({"token": "BTC-USD", "notional": "100"}));
        assert!(wrong_type.contains("notional"), "{wrong_type}");
        let missing = parse_error(json!({"notional": 1.0}));
        assert!(missing.contains("missing field `token`"), "{missing}");
        for notional in [0.0, -5.0] {
            let err = parse_error(json!({"token": "BTC-USD", "notional": notional}));
            assert!(err.starts_with("invalid config key 'notional'"), "{err}");
        }
        let err = parse_error(json!({"token": "BTC-USD", "notional": 1.0, "below_sma": 1}));
        assert_eq!(
            err,
            "invalid config key 'below_sma': 1 is out of range; allowed: 2 to 10000"
        );
        let err = parse_error(json!({"token": "BTC-USD", "notional": 1.0, "below_sma": 2.5}));
        assert!(err.contains("below_sma"), "{err}");
        assert!(create(&example_config()).is_ok());
    }

    #[test]
    fn updates_apply_from_the_next_execution() {
        let mut h = harness(json!({"token": "BTC-USD", "notional": 100.0}));
        h.tick("BTC-USD", 50.0);
        h.update_config(&json!({"token": "BTC-USD", "notional": 200.0}))
            .unwrap();
        h.execute().unwrap();
        assert_eq!(h.position("BTC-USD").qty, 4.0);
        h.update_config(&json!({"token": "ETH-USD", "notional": 10.0}))
            .unwrap();
        assert!(h.ctx().subscriptions().contains("ETH-USD"));
        assert!(!h.ctx().subscriptions().contains("BTC-USD"));
        assert!(h.execute().is_err(), "no ETH-USD price yet");
        assert_eq!(
            h.position("BTC-USD").qty,
            4.0,
            "the accumulated position stays"
        );
        assert!(h.update_config(&json!({"token": "ETH-USD"})).is_err());
    }
}

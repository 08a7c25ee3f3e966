//! `sma_crossover`: long when the fast simple moving average of a token's price
//! crosses above the slow one, short (or flat) when it crosses below.
//!
//! A crossover needs two observations: the first time both averages exist the
//! strategy only notes which one is on top, and trades at the next change. Equal
//! averages keep the previous side. Orders move the position straight to its target
//! (`+order_qty`, `-order_qty` or flat) in one fill, so a short is bought back and a
//! long opened by the same order.
//!
//! Outside live trading the same code judges a symbol's bars: their closes are
//! replayed through the averages `on_tick` trades on. The screener score is
//! `50 × (1 + tanh(spread / 2 %))`, `spread` = (fast − slow) / slow at the latest
//! bar: 50 with the averages equal, 73 with the fast one 1 % above, 88 at 2 %,
//! towards 0 below. The alert signal fires when the latest bar makes a crossover —
//! exactly when `on_tick` would trade: `bullish_crossover` or `bearish_crossover`.

use super::{
    abandon_token, check_max_loss, check_order_qty, check_token, enforce_max_loss, move_to_target,
    same_token, TwoMeans,
};
use serde::Deserialize;
use serde_json::{json, Value};
use strategy_sdk::{
    parse_config, Bar, ConfigError, Context, Signal, SignalPriority, Strategy, Tick,
};

pub const STRATEGY_TYPE: &str = "sma_crossover";
pub const DESCRIPTION: &str =
    "goes long when the fast SMA crosses above the slow SMA, short (or flat) when it crosses below";

/// The spread of the averages that scores 88 (tanh(1) of the way from 50 to 100).
const SCORE_SPREAD: f64 = 0.02;

/// Longest moving average a config may ask for, in ticks.
pub const MAX_PERIOD: u32 = 10_000;

pub fn example_config() -> Value {
    json!({
        "token": "BTC-USD",
        "fast_period": 5,
        "slow_period": 20,
        "order_qty": 0.1,
        "allow_short": true,
        "max_loss": 5000.0
    })
}

/// The `config` of an `sma_crossover` strategy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmaCrossoverConfig {
    /// The token traded (its ticks come from `live_data:{token}`).
    pub token: String,
    /// Ticks in the fast average: 1 to 10 000, less than `slow_period`.
    #[serde(default = "default_fast_period")]
    pub fast_period: u32,
    /// Ticks in the slow average: 1 to 10 000.
    #[serde(default = "default_slow_period")]
    pub slow_period: u32,
    /// Size of the position taken on a signal: above 0, at most 1e9.
    #[serde(default = "default_order_qty")]
    pub order_qty: f64,
    /// Go short on a downward cross; when false, only go flat.
    #[serde(default = "default_allow_short")]
    pub allow_short: bool,
    /// Halt for good (after closing the position) once the PnL reaches `-max_loss`.
    #[serde(default)]
    pub max_loss: Option<f64>,
}

fn default_fast_period() -> u32 {
    5
}

fn default_slow_period() -> u32 {
    20
}

fn default_order_qty() -> f64 {
    1.0
}

fn default_allow_short() -> bool {
    true
}

impl SmaCrossoverConfig {
    /// Parse and validate a whole config.
    pub fn parse(config: &Value) -> Result<Self, ConfigError> {
        let parsed: Self = parse_config(config)?;
        parsed.validate()?;
        Ok(parsed)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        check_token("token", &self.token)?;
        ConfigError::check_range("fast_period", self.fast_period, 1, MAX_PERIOD)?;
        ConfigError::check_range("slow_period", self.slow_period, 1, MAX_PERIOD)?;
        if self.fast_period >= self.slow_period {
            return Err(ConfigError::new(
                "fast_period",
                format!(
                    "{} must be less than slow_period ({})",
                    self.fast_period, self.slow_period
                ),
            ));
        }
        check_order_qty("order_qty", self.order_qty)?;
        check_max_loss("max_loss", self.max_loss)
    }
}

/// Build an `sma_crossover` strategy from its config (the registry's constructor).
pub fn create(config: &Value) -> Result<Box<dyn Strategy>, ConfigError> {
    Ok(Box::new(SmaCrossover::new(SmaCrossoverConfig::parse(
        config,
    )?)))
}

/// Which average is on top.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    FastAbove,
    FastBelow,
}

#[derive(Debug)]
pub struct SmaCrossover {
    config: SmaCrossoverConfig,
    /// The fast and the slow average, over one ring of prices.
    averages: TwoMeans,
    /// The side seen at the last tick where the averages differed.
    side: Option<Side>,
    ticks: u64,
}

impl SmaCrossover {
    pub fn new(config: SmaCrossoverConfig) -> Self {
        SmaCrossover {
            averages: TwoMeans::new(config.fast_period as usize, config.slow_period as usize),
            config,
            side: None,
            ticks: 0,
        }
    }

    pub fn config(&self) -> &SmaCrossoverConfig {
        &self.config
    }

    #[inline]
    fn fast_sma(&self) -> Option<f64> {
        self.averages.fast_mean()
    }

    #[inline]
    fn slow_sma(&self) -> Option<f64> {
        self.averages.slow_mean()
    }

    /// Feed one price to the averages; the side the fast one crossed to, if it did.
    /// A price that is not a finite number above 0 is ignored.
    #[inline]
    fn observe(&mut self, price: f64) -> Option<Side> {
        if !(price.is_finite() && price > 0.0) {
            return None;
        }
        self.ticks += 1;
        self.averages.push(price);
        let now = match self.averages.compare()? {
            std::cmp::Ordering::Greater => Some(Side::FastAbove),
            std::cmp::Ordering::Less => Some(Side::FastBelow),
            std::cmp::Ordering::Equal => self.side,
        };
        let crossed = match (self.side, now) {
            (Some(before), Some(after)) if before != after => Some(after),
            _ => None,
        };
        self.side = now;
        crossed
    }

    /// The position a crossover to `side` calls for.
    fn target(&self, side: Side) -> f64 {
        match side {
            Side::FastAbove => self.config.order_qty,
            Side::FastBelow if self.config.allow_short => -self.config.order_qty,
            Side::FastBelow => 0.0,
        }
    }

    /// A fresh strategy of this config that has seen `history`'s closes, and the
    /// crossover the latest one made.
    fn replay(&self, history: &[Bar]) -> (SmaCrossover, Option<Side>) {
        let mut replica = SmaCrossover::new(self.config.clone());
        let mut crossed = None;
        for bar in history {
            crossed = replica.observe(bar.close);
        }
        (replica, crossed)
    }

    #[inline]
    fn report(&self, ctx: &mut Context) {
        if !ctx.keeps_custom_metrics() {
            return;
        }
        ctx.set_metric("fast_sma", self.fast_sma());
        ctx.set_metric("slow_sma", self.slow_sma());
        ctx.set_metric("ticks", self.ticks);
    }
}

impl Strategy for SmaCrossover {
    fn on_start(&mut self, ctx: &mut Context) {
        ctx.subscribe(&self.config.token);
        self.report(ctx);
    }

    fn on_tick(&mut self, ctx: &mut Context, tick: &Tick) {
        if !same_token(&tick.token, &self.config.token) || ctx.halt_reason().is_some() {
            return;
        }
        if !(tick.price.is_finite() && tick.price > 0.0) {
            return;
        }
        let crossed = self.observe(tick.price);
        let halted = self.config.max_loss.is_some()
            && enforce_max_loss(ctx, STRATEGY_TYPE, &self.config.token, self.config.max_loss);
        if let (false, Some(side)) = (halted, crossed) {
            move_to_target(ctx, &self.config.token, self.target(side));
        }
        self.report(ctx);
    }

    /// `50 × (1 + tanh(spread / 2 %))` of the averages after `history`'s closes.
    fn score(&self, _ctx: &Context, history: &[Bar]) -> Option<f64> {
        let (replica, _) = self.replay(history);
        let (fast, slow) = (replica.fast_sma()?, replica.slow_sma()?);
        let spread = (fast - slow) / slow;
        Some(50.0 * (1.0 + (spread / SCORE_SPREAD).tanh()))
    }

    /// A crossover on the latest bar.
    fn signal(&self, _ctx: &Context, history: &[Bar]) -> Option<Signal> {
        let (replica, crossed) = self.replay(history);
        let (fast, slow) = (replica.fast_sma()?, replica.slow_sma()?);
        let (kind, direction) = match crossed? {
            Side::FastAbove => ("bullish_crossover", "above"),
            Side::FastBelow => ("bearish_crossover", "below"),
        };
        let message = format!(
            "{}: the {}-bar SMA ({fast:.4}) crossed {direction} the {}-bar SMA ({slow:.4})",
            self.config.token, self.config.fast_period, self.config.slow_period
        );
        Some(Signal::new(kind, message, SignalPriority::Normal))
    }

    /// A new token starts afresh (the old token's position is closed); new periods
    /// keep the price history and wait for the next crossover; `order_qty` and
    /// `allow_short` apply from the next crossover.
    fn update_config(&mut self, ctx: &mut Context, config: &Value) -> Result<(), ConfigError> {
        let new = SmaCrossoverConfig::parse(config)?;
        if new.token != self.config.token {
            abandon_token(ctx, STRATEGY_TYPE, &self.config.token, &new.token);
            self.averages = TwoMeans::new(new.fast_period as usize, new.slow_period as usize);
            self.side = None;
        } else if new.fast_period != self.config.fast_period
            || new.slow_period != self.config.slow_period
        {
            self.averages = self
                .averages
                .resized(new.fast_period as usize, new.slow_period as usize);
            self.side = None;
        }
        self.config = new;
        self.report(ctx);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strategy_sdk::testkit::TestHarness;

    const TOL: f64 = 1e-9;

    fn strategy(config: Value) -> SmaCrossover {
        SmaCrossover::new(SmaCrossoverConfig::parse(&config).unwrap())
    }

    /// A custom metric, `null` while unset.
    fn metric<S: Strategy + ?Sized>(h: &TestHarness<S>, key: &str) -> Value {
        h.metric(key).cloned().unwrap_or(Value::Null)
    }

    #[test]
    fn defaults() {
        let c = SmaCrossoverConfig::parse(&json!({"token": "BTC-USD"})).unwrap();
        assert_eq!(
            c,
            SmaCrossoverConfig {
                token: "BTC-USD".into(),
                fast_period: 5,
                slow_period: 20,
                order_qty: 1.0,
                allow_short: true,
                max_loss: None,
            }
        );
        assert_eq!(
            SmaCrossoverConfig::parse(&json!({"token": "BTC-USD", "max_loss": null}))
                .unwrap()
                .max_loss,
            None
        );
    }

    #[test]
    fn unknown_key_is_named_with_the_allowed_ones() {
        let err =
            SmaCrossoverConfig::parse(&json!({"token": "BTC-USD", "fast_perod": 3})).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("fast_perod"), "{text}");
        for allowed in [
            "token",
            "fast_period",
            "slow_period",
            "order_qty",
            "allow_short",
            "max_loss",
        ] {
            assert!(text.contains(allowed), "{allowed} missing from: {text}");
        }
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = SmaCrossoverConfig::parse(&json!({"token": "BTC-USD", "fast_period": "5"}))
            .unwrap_err();
        assert_eq!(err.key, "fast_period");
        assert!(err.message.contains("invalid type"), "{}", err.message);

        let err = SmaCrossoverConfig::parse(&json!({"token": "BTC-USD", "allow_short": "no"}))
            .unwrap_err();
        assert_eq!(err.key, "allow_short");

        let err = SmaCrossoverConfig::parse(&json!({"token": 7})).unwrap_err();
        assert_eq!(err.key, "token");

        let err = SmaCrossoverConfig::parse(&json!({})).unwrap_err();
        assert!(err.to_string().contains("missing field `token`"), "{err}");

        let err = SmaCrossoverConfig::parse(&json!("BTC-USD")).unwrap_err();
        assert!(err.to_string().contains("expected a JSON object"), "{err}");
    }

    #[test]
    fn out_of_range_values_are_rejected() {
        let cases = [
            (
                json!({"token": "BTC-USD", "fast_period": 0}),
                "fast_period",
                "1 to 10000",
            ),
            (
                json!({"token": "BTC-USD", "slow_period": 10_001}),
                "slow_period",
                "1 to 10000",
            ),
            (
                json!({"token": "BTC-USD", "fast_period": -1}),
                "fast_period",
                "invalid value",
            ),
            (
                json!({"token": "BTC-USD", "order_qty": 0}),
                "order_qty",
                "above 0",
            ),
            (
                json!({"token": "BTC-USD", "order_qty": -2.5}),
                "order_qty",
                "above 0",
            ),
            (
                json!({"token": "BTC-USD", "max_loss": 0}),
                "max_loss",
                "above 0",
            ),
            (
                json!({"token": "BTC-USD", "max_loss": -10}),
                "max_loss",
                "above 0",
            ),
            (json!({"token": ""}), "token", "must not be empty"),
        ];
        for (config, key, needle) in cases {
            let err = SmaCrossoverConfig::parse(&config).unwrap_err();
            assert_eq!(err.key, key, "{config}: {err}");
            assert!(err.to_string().contains(needle), "{config}: {err}");
        }
    }

    #[test]
    fn fast_period_must_be_below_slow_period() {
        for (fast, slow) in [(20, 20), (30, 20), (2, 1)] {
            let err = SmaCrossoverConfig::parse(
                &json!({"token": "BTC-USD", "fast_period": fast, "slow_period": slow}),
            )
            .unwrap_err();
            assert_eq!(err.key, "fast_period");
            assert!(err.message.contains("less than slow_period"), "{err}");
        }
        assert!(create(&json!({"token": "BTC-USD", "fast_period": 19})).is_ok());
    }

    /// fast 2, slow 4: 10 10 10 10 (equal) 9 (below, first side: no trade) 12 (cross
    /// up) 8 (still above) 7 (cross down) 20 (cross up).
    const SERIES: [f64; 9] = [10.0, 10.0, 10.0, 10.0, 9.0, 12.0, 8.0, 7.0, 20.0];

    #[test]
    fn trades_on_crossovers_long_and_short() {
        let s = strategy(json!({"token": "BTC", "fast_period": 2, "slow_period": 4}));
        let mut h = TestHarness::started(s);
        assert!(h.ctx().subscriptions().contains("BTC"));

        h.ticks("BTC", &SERIES[..5]);
        assert_eq!(h.ctx().broker().orders_count(), 0, "no crossover seen yet");
        assert_eq!(metric(&h, "fast_sma"), json!(9.5));
        assert_eq!(metric(&h, "slow_sma"), json!(9.75));

        h.tick("BTC", 12.0);
        assert_eq!(h.ctx().broker().orders_count(), 1);
        assert_eq!(h.ctx().position("BTC").qty, 1.0);
        assert_eq!(h.ctx().position("BTC").avg_price, 12.0);

        h.tick("BTC", 8.0);
        assert_eq!(h.ctx().broker().orders_count(), 1, "no cross, no order");

        // Cross down: one order of 2 sells the long and opens the short.
        h.tick("BTC", 7.0);
        assert_eq!(h.ctx().broker().orders_count(), 2);
        assert_eq!(h.ctx().position("BTC").qty, -1.0);
        assert_eq!(h.ctx().position("BTC").avg_price, 7.0);
        assert!((h.ctx().broker().realised_pnl() - -5.0).abs() < TOL);

        // Cross up: buys back the short and goes long.
        h.tick("BTC", 20.0);
        assert_eq!(h.ctx().broker().orders_count(), 3);
        assert_eq!(h.ctx().position("BTC").qty, 1.0);
        assert_eq!(h.ctx().position("BTC").avg_price, 20.0);
        assert!((h.ctx().broker().realised_pnl() - -18.0).abs() < TOL);

        assert_eq!(metric(&h, "ticks"), json!(9));
        assert_eq!(metric(&h, "fast_sma"), json!(13.5));
        assert_eq!(metric(&h, "slow_sma"), json!(11.75));
    }

    #[test]
    fn without_shorts_a_downward_cross_only_flattens() {
        let s = strategy(json!({
            "token": "BTC", "fast_period": 2, "slow_period": 4,
            "order_qty": 0.5, "allow_short": false
        }));
        let mut h = TestHarness::started(s);
        h.ticks("BTC", &SERIES[..6]);
        assert_eq!(h.ctx().position("BTC").qty, 0.5);
        h.ticks("BTC", &SERIES[6..8]);
        assert_eq!(h.ctx().position("BTC").qty, 0.0);
        assert_eq!(h.ctx().broker().positions_count(), 0);
        h.tick("BTC", 20.0);
        assert_eq!(h.ctx().position("BTC").qty, 0.5);
        assert_eq!(h.ctx().broker().orders_count(), 3);
    }

    #[test]
    fn ignores_other_tokens_and_reports_null_averages_until_full() {
        let s = strategy(json!({"token": "BTC", "fast_period": 2, "slow_period": 4}));
        let mut h = TestHarness::started(s);
        assert_eq!(metric(&h, "ticks"), json!(0));
        assert_eq!(metric(&h, "fast_sma"), Value::Null);
        h.ticks("ETH", &SERIES);
        assert_eq!(metric(&h, "ticks"), json!(0));
        assert_eq!(h.ctx().broker().orders_count(), 0);
        h.ticks("BTC", &[10.0, 11.0]);
        assert_eq!(metric(&h, "fast_sma"), json!(10.5));
        assert_eq!(metric(&h, "slow_sma"), Value::Null);
    }

    #[test]
    fn halts_and_closes_when_the_loss_limit_is_reached() {
        let s = strategy(json!({
            "token": "BTC", "fast_period": 2, "slow_period": 4, "max_loss": 5
        }));
        let mut h = TestHarness::started(s);
        h.ticks("BTC", &SERIES[..6]);
        assert_eq!(h.ctx().position("BTC").qty, 1.0);

        // A loss of 4: below the limit.
        h.tick("BTC", 8.0);
        assert!(h.ctx().halt_reason().is_none());

        // A loss of 6: halts, and the long is closed (not flipped short).
        h.tick("BTC", 6.0);
        let reason = h.ctx().halt_reason().expect("halted").to_string();
        assert!(reason.contains("max_loss"), "{reason}");
        assert!(reason.contains("6.00"), "{reason}");
        assert!(reason.contains("limit 5"), "{reason}");
        assert_eq!(h.ctx().position("BTC").qty, 0.0);
        assert_eq!(h.ctx().broker().orders_count(), 2);
        assert!((h.ctx().broker().pnl() - -6.0).abs() < TOL);

        // Halted: no more trading.
        h.ticks("BTC", &[30.0, 1.0, 30.0]);
        assert_eq!(h.ctx().broker().orders_count(), 2);
    }

    #[test]
    fn update_config_applies_a_valid_config_and_keeps_history() {
        let s = strategy(json!({"token": "BTC", "fast_period": 2, "slow_period": 4}));
        let mut h = TestHarness::started(s);
        h.ticks("BTC", &SERIES[..6]);
        assert_eq!(h.ctx().position("BTC").qty, 1.0);

        h.update_config(
            &json!({"token": "BTC", "fast_period": 1, "slow_period": 3, "order_qty": 2}),
        )
        .unwrap();
        assert_eq!(h.strategy().config().fast_period, 1);
        assert_eq!(h.strategy().config().order_qty, 2.0);
        // The last prices are kept: both averages exist at once.
        assert_eq!(metric(&h, "fast_sma"), json!(12.0));
        assert_eq!(metric(&h, "slow_sma"), json!((10.0 + 9.0 + 12.0) / 3.0));
        // The position is kept; the new size applies at the next crossover.
        assert_eq!(h.ctx().position("BTC").qty, 1.0);
        assert_eq!(h.ctx().broker().orders_count(), 1);
        // No trade on the first observation after the change (11 vs 10.67), then a
        // cross down (5 vs 9.33) goes to the new size short.
        h.tick("BTC", 11.0);
        assert_eq!(h.ctx().broker().orders_count(), 1);
        h.tick("BTC", 5.0);
        assert_eq!(h.ctx().broker().orders_count(), 2);
        assert_eq!(h.ctx().position("BTC").qty, -2.0);
    }

    #[test]
    fn update_config_rejects_a_bad_config_and_keeps_the_old_one() {
        let config = json!({"token": "BTC", "fast_period": 2, "slow_period": 4});
        let s = strategy(config.clone());
        let mut h = TestHarness::started(s);
        let before = h.strategy().config().clone();
        for bad in [
            json!({"token": "BTC", "fast_period": 30}),
            json!({"token": "BTC", "fast_period": 2, "slow_period": 4, "fast_perod": 1}),
            json!({"token": "BTC", "order_qty": "1"}),
            json!({"fast_period": 2}),
        ] {
            assert!(h.update_config(&bad).is_err(), "{bad}");
            assert_eq!(h.strategy().config(), &before);
        }
        // Still trading with the old config.
        h.ticks("BTC", &SERIES[..6]);
        assert_eq!(h.ctx().position("BTC").qty, 1.0);
    }

    #[test]
    fn update_config_to_another_token_closes_the_old_position() {
        let s = strategy(json!({"token": "BTC", "fast_period": 2, "slow_period": 4}));
        let mut h = TestHarness::started(s);
        h.ticks("BTC", &SERIES[..6]);
        assert_eq!(h.ctx().position("BTC").qty, 1.0);

        h.update_config(&json!({"token": "ETH", "fast_period": 2, "slow_period": 4}))
            .unwrap();
        assert_eq!(h.ctx().position("BTC").qty, 0.0);
        assert_eq!(
            h.ctx().subscriptions().iter().collect::<Vec<_>>(),
            vec!["ETH"]
        );
        assert_eq!(metric(&h, "fast_sma"), Value::Null);
        h.ticks("ETH", &SERIES[..6]);
        assert_eq!(h.ctx().position("ETH").qty, 1.0);
    }

    #[test]
    fn signals_fire_exactly_where_it_trades_and_scores_follow_the_spread() {
        let bars = crate::strategies::daily_bars(&SERIES);
        let s = strategy(json!({"token": "BTC", "fast_period": 2, "slow_period": 4}));
        let mut h = TestHarness::started(s);
        for n in 1..=bars.len() {
            let before = h.ctx().broker().orders_count();
            h.bars("BTC", &bars[n - 1..n]);
            let traded = h.ctx().broker().orders_count() > before;
            assert_eq!(h.signal(&bars[..n]).is_some(), traded, "bar {n}");
        }
        assert_eq!(h.ctx().broker().orders_count(), 3);
        let up = h.signal(&bars[..6]).unwrap();
        assert_eq!(up.kind, "bullish_crossover");
        assert!(
            up.message
                .starts_with("BTC: the 2-bar SMA (10.5000) crossed above"),
            "{}",
            up.message
        );
        assert_eq!(h.signal(&bars[..8]).unwrap().kind, "bearish_crossover");

        // After 10 10 10 10 9 12: fast (9 + 12) / 2 = 10.5, slow 41 / 4 = 10.25;
        // spread 0.25 / 10.25; score 50 × (1 + tanh(spread / 0.02)) ≈ 91.97.
        let score = h.score(&bars[..6]).unwrap();
        assert!((score - 50.0 * (1.0 + (0.25 / 10.25 / 0.02_f64).tanh())).abs() < TOL);
        assert!((91.9..92.0).contains(&score), "{score}");
        // After 10 10 10 10 9: fast 9.5 below slow 9.75, under 50.
        assert!(h.score(&bars[..5]).unwrap() < 50.0);
        assert_eq!(h.score(&bars[..3]), None, "slow average not full");
    }

    #[test]
    fn create_builds_a_boxed_strategy() {
        let mut h = TestHarness::from_box(create(&json!({"token": "BTC"})).unwrap());
        h.start();
        assert!(h.ctx().subscriptions().contains("BTC"));
        assert!(h.strategy().timer_interval().is_none());
    }
}

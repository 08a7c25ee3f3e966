//! `mean_reversion`: bets that a token's price returns to its rolling mean.
//!
//! Over the last `window` prices (the current one included) it computes the mean and
//! the population standard deviation, and z = (price − mean) / std. Above `entry_z`
//! the price is "too high": go short `order_qty`; below `−entry_z`: go long; within
//! `±exit_z` of the mean: go flat; in between, hold. Nothing is decided until the
//! window is full, nor while the prices in it are all equal (std = 0).
//!
//! Outside live trading the same code judges a symbol's bars: their closes are
//! replayed through the window `on_tick` trades on, giving the z-score of the latest
//! close. The screener score rates it as a buy, `50 × (1 − tanh(z / entry_z))`: 50 at
//! the mean, 88 at `−entry_z`, 12 at `+entry_z`. The alert signal fires when the
//! latest z-score calls for a position, exactly as `on_tick` would take one:
//! `oversold` (a long) below `−entry_z`, `overbought` (a short) above `entry_z`,
//! priority `high` beyond twice `entry_z`.

use super::{
    abandon_token, check_max_loss, check_order_qty, check_positive, check_token, enforce_max_loss,
    move_to_target, RollingWindow,
};
use serde::Deserialize;
use serde_json::{json, Value};
use strategy_sdk::{
    parse_config, Bar, ConfigError, Context, Signal, SignalPriority, Strategy, Tick,
};

pub const STRATEGY_TYPE: &str = "mean_reversion";
pub const DESCRIPTION: &str =
    "shorts when the price's z-score over a rolling window rises above entry_z, buys below -entry_z, flattens within exit_z";

/// Longest window a config may ask for, in ticks.
pub const MAX_WINDOW: u32 = 10_000;

/// Largest z-score threshold a config may ask for.
pub const MAX_Z: f64 = 100.0;

/// A standard deviation below this share of the mean counts as zero.
const RELATIVE_STD_FLOOR: f64 = 1e-9;

pub fn example_config() -> Value {
    json!({
        "token": "ETH-USD",
        "window": 20,
        "entry_z": 2.0,
        "exit_z": 0.5,
        "order_qty": 1.0,
        "max_loss": 1000.0
    })
}

/// The `config` of a `mean_reversion` strategy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeanReversionConfig {
    /// The token traded (its ticks come from `live_data:{token}`).
    pub token: String,
    /// Prices in the rolling window: 2 to 10 000.
    #[serde(default = "default_window")]
    pub window: u32,
    /// Enter when |z| rises above this: above 0, at most 100.
    #[serde(default = "default_entry_z")]
    pub entry_z: f64,
    /// Go flat when |z| falls below this: above 0, less than `entry_z`.
    #[serde(default = "default_exit_z")]
    pub exit_z: f64,
    /// Size of the position taken on a signal: above 0, at most 1e9.
    #[serde(default = "default_order_qty")]
    pub order_qty: f64,
    /// Halt for good (after closing the position) once the PnL reaches `-max_loss`.
    #[serde(default)]
    pub max_loss: Option<f64>,
}

fn default_window() -> u32 {
    20
}

fn default_entry_z() -> f64 {
    2.0
}

fn default_exit_z() -> f64 {
    0.5
}

fn default_order_qty() -> f64 {
    1.0
}

impl MeanReversionConfig {
    /// Parse and validate a whole config.
    pub fn parse(config: &Value) -> Result<Self, ConfigError> {
        let parsed: Self = parse_config(config)?;
        parsed.validate()?;
        Ok(parsed)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        check_token("token", &self.token)?;
        ConfigError::check_range("window", self.window, 2, MAX_WINDOW)?;
        check_positive("entry_z", self.entry_z, MAX_Z)?;
        check_positive("exit_z", self.exit_z, MAX_Z)?;
        if self.exit_z >= self.entry_z {
            return Err(ConfigError::new(
                "exit_z",
                format!(
                    "{} must be less than entry_z ({})",
                    self.exit_z, self.entry_z
                ),
            ));
        }
        check_order_qty("order_qty", self.order_qty)?;
        check_max_loss("max_loss", self.max_loss)
    }
}

/// Build a `mean_reversion` strategy from its config (the registry's constructor).
pub fn create(config: &Value) -> Result<Box<dyn Strategy>, ConfigError> {
    Ok(Box::new(MeanReversion::new(MeanReversionConfig::parse(
        config,
    )?)))
}

#[derive(Debug)]
pub struct MeanReversion {
    config: MeanReversionConfig,
    prices: RollingWindow,
    zscore: Option<f64>,
    ticks: u64,
}

impl MeanReversion {
    pub fn new(config: MeanReversionConfig) -> Self {
        MeanReversion {
            prices: RollingWindow::new(config.window as usize),
            config,
            zscore: None,
            ticks: 0,
        }
    }

    pub fn config(&self) -> &MeanReversionConfig {
        &self.config
    }

    /// The z-score of `price` in the current window, when there is one.
    fn zscore_of(&self, price: f64) -> Option<f64> {
        if !self.prices.is_full() {
            return None;
        }
        let mean = self.prices.mean()?;
        let std = self.prices.variance()?.sqrt();
        if std.is_nan() || std <= mean.abs() * RELATIVE_STD_FLOOR {
            return None;
        }
        Some((price - mean) / std)
    }

    /// The position `z` calls for, or `None` to hold.
    fn target(&self, z: f64) -> Option<f64> {
        if z > self.config.entry_z {
            Some(-self.config.order_qty)
        } else if z < -self.config.entry_z {
            Some(self.config.order_qty)
        } else if z.abs() < self.config.exit_z {
            Some(0.0)
        } else {
            None
        }
    }

    /// Feed one price (a finite number above 0) to the window; its z-score.
    fn observe(&mut self, price: f64) -> Option<f64> {
        self.ticks += 1;
        self.prices.push(price);
        self.zscore = self.zscore_of(price);
        self.zscore
    }

    /// The z-score of the latest of `history`'s closes, replayed through a fresh
    /// window of this config (closes that are not finite numbers above 0 skipped).
    fn replayed_zscore(&self, history: &[Bar]) -> Option<f64> {
        let mut replica = MeanReversion::new(self.config.clone());
        for bar in history
            .iter()
            .filter(|bar| bar.close.is_finite() && bar.close > 0.0)
        {
            replica.observe(bar.close);
        }
        replica.zscore
    }

    fn report(&self, ctx: &mut Context) {
        ctx.set_metric("zscore", self.zscore);
        ctx.set_metric("ticks", self.ticks);
    }
}

impl Strategy for MeanReversion {
    fn on_start(&mut self, ctx: &mut Context) {
        ctx.subscribe(&self.config.token);
        self.report(ctx);
    }

    fn on_tick(&mut self, ctx: &mut Context, tick: &Tick) {
        if tick.token != self.config.token || ctx.halt_reason().is_some() {
            return;
        }
        if !(tick.price.is_finite() && tick.price > 0.0) {
            return;
        }
        self.observe(tick.price);
        let halted = enforce_max_loss(ctx, STRATEGY_TYPE, &self.config.token, self.config.max_loss);
        if !halted {
            if let Some(target) = self.zscore.and_then(|z| self.target(z)) {
                move_to_target(ctx, &self.config.token, target);
            }
        }
        self.report(ctx);
    }

    /// `50 × (1 − tanh(z / entry_z))` of the latest close's z-score.
    fn score(&self, _ctx: &Context, history: &[Bar]) -> Option<f64> {
        let z = self.replayed_zscore(history)?;
        Some(50.0 * (1.0 - (z / self.config.entry_z).tanh()))
    }

    /// The position the latest close's z-score calls for, as an alert.
    fn signal(&self, _ctx: &Context, history: &[Bar]) -> Option<Signal> {
        let z = self.replayed_zscore(history)?;
        let target = self.target(z)?;
        let (kind, side) = if target > 0.0 {
            ("oversold", "below")
        } else if target < 0.0 {
            ("overbought", "above")
        } else {
            return None;
        };
        let priority = if z.abs() >= 2.0 * self.config.entry_z {
            SignalPriority::High
        } else {
            SignalPriority::Normal
        };
        let message = format!(
            "{}: z-score {z:.2} over the last {} closes is {side} ±{}",
            self.config.token, self.config.window, self.config.entry_z
        );
        Some(Signal::new(kind, message, priority))
    }

    /// A new token starts afresh (the old token's position is closed); a new window
    /// keeps the latest prices; thresholds and `order_qty` apply from the next tick.
    fn update_config(&mut self, ctx: &mut Context, config: &Value) -> Result<(), ConfigError> {
        let new = MeanReversionConfig::parse(config)?;
        if new.token != self.config.token {
            abandon_token(ctx, STRATEGY_TYPE, &self.config.token, &new.token);
            self.prices = RollingWindow::new(new.window as usize);
            self.zscore = None;
        } else if new.window != self.config.window {
            self.prices = self.prices.resized(new.window as usize);
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

    fn strategy(config: Value) -> MeanReversion {
        MeanReversion::new(MeanReversionConfig::parse(&config).unwrap())
    }

    fn zscore(h: &TestHarness<MeanReversion>) -> Option<f64> {
        h.metric("zscore").and_then(Value::as_f64)
    }

    /// window 5, entry 1.5, exit 0.5.
    fn small() -> MeanReversion {
        strategy(json!({"token": "ETH", "window": 5, "entry_z": 1.5, "exit_z": 0.5}))
    }

    #[test]
    fn scores_and_signals_replay_the_zscore_it_trades_on() {
        // window 5, entry 1.5: after 10 11 10 11 10 5 the window 11 10 11 10 5 has
        // mean 9.4, variance (2.56 + 0.36 + 2.56 + 0.36 + 19.36) / 5 = 5.04,
        // z = (5 − 9.4) / √5.04 ≈ −1.96: oversold, within 2 × 1.5, a long.
        let bars = crate::strategies::daily_bars(&[10.0, 11.0, 10.0, 11.0, 10.0, 5.0]);
        let mut h = TestHarness::started(small());
        let z = -4.4 / 5.04f64.sqrt();
        let score = h.score(&bars).unwrap();
        assert!(
            (score - 50.0 * (1.0 - (z / 1.5).tanh())).abs() < TOL,
            "{score}"
        );
        assert!((93.0..93.5).contains(&score), "{score}");
        let signal = h.signal(&bars).unwrap();
        assert_eq!(
            (signal.kind.as_str(), signal.priority),
            ("oversold", SignalPriority::Normal)
        );
        assert!(signal.message.contains("-1.96"), "{}", signal.message);
        assert_eq!(h.signal(&bars[..5]), None, "z within the thresholds");
        assert_eq!(h.score(&bars[..4]), None, "window not full");

        // Live, the same bars make it go long at the last one.
        h.bars("ETH", &bars);
        assert_eq!(h.position("ETH").qty, 1.0);
        assert_eq!(h.ctx().broker().orders_count(), 1);

        // Far above the mean: overbought, high priority.
        let spike = crate::strategies::daily_bars(&[10.0, 10.1, 9.9, 10.0, 10.0, 10.1, 30.0]);
        let signal = h.signal(&spike).unwrap();
        assert_eq!(
            (signal.kind.as_str(), signal.priority),
            ("overbought", SignalPriority::Normal)
        );
        assert!(h.score(&spike).unwrap() < 10.0);
    }

    #[test]
    fn defaults() {
        let c = MeanReversionConfig::parse(&json!({"token": "ETH-USD"})).unwrap();
        assert_eq!(
            c,
            MeanReversionConfig {
                token: "ETH-USD".into(),
                window: 20,
                entry_z: 2.0,
                exit_z: 0.5,
                order_qty: 1.0,
                max_loss: None,
            }
        );
    }

    #[test]
    fn config_errors_name_the_key() {
        let err = MeanReversionConfig::parse(&json!({"token": "ETH", "windw": 5})).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("windw"), "{text}");
        for allowed in [
            "token",
            "window",
            "entry_z",
            "exit_z",
            "order_qty",
            "max_loss",
        ] {
            assert!(text.contains(allowed), "{allowed} missing from: {text}");
        }

        let cases = [
            (
                json!({"token": "ETH", "window": "20"}),
                "window",
                "invalid type",
            ),
            (
                json!({"token": "ETH", "entry_z": true}),
                "entry_z",
                "invalid type",
            ),
            (json!({"token": "ETH", "window": 1}), "window", "2 to 10000"),
            (
                json!({"token": "ETH", "window": 10_001}),
                "window",
                "2 to 10000",
            ),
            (json!({"token": "ETH", "entry_z": 0}), "entry_z", "above 0"),
            (
                json!({"token": "ETH", "entry_z": 101}),
                "entry_z",
                "at most 100",
            ),
            (json!({"token": "ETH", "exit_z": -0.5}), "exit_z", "above 0"),
            (
                json!({"token": "ETH", "exit_z": 2.0}),
                "exit_z",
                "less than entry_z",
            ),
            (
                json!({"token": "ETH", "entry_z": 1.0, "exit_z": 1.5}),
                "exit_z",
                "less than entry_z",
            ),
            (
                json!({"token": "ETH", "order_qty": 0}),
                "order_qty",
                "above 0",
            ),
            (
                json!({"token": "ETH", "max_loss": -1}),
                "max_loss",
                "above 0",
            ),
        ];
        for (config, key, needle) in cases {
            let err = MeanReversionConfig::parse(&config).unwrap_err();
            assert_eq!(err.key, key, "{config}: {err}");
            assert!(err.to_string().contains(needle), "{config}: {err}");
        }
    }

    #[test]
    fn enters_exits_and_holds_on_the_zscore() {
        let s = small();
        let mut h = TestHarness::started(s);
        assert!(h.ctx().subscriptions().contains("ETH"));

        // A flat window: std 0, no z-score, no trade.
        h.ticks("ETH", &[100.0; 5]);
        assert_eq!(zscore(&h), None);
        assert_eq!(h.ctx().broker().orders_count(), 0);

        // 100 100 100 100 110: mean 102, std 4, z = 2 > 1.5 → short.
        h.tick("ETH", 110.0);
        assert!((zscore(&h).unwrap() - 2.0).abs() < TOL);
        assert_eq!(h.ctx().position("ETH").qty, -1.0);
        assert_eq!(h.ctx().position("ETH").avg_price, 110.0);

        // 100 100 100 110 102: z ≈ −0.10, within exit_z → flatten (+8 realised).
        h.tick("ETH", 102.0);
        assert!(zscore(&h).unwrap().abs() < 0.5);
        assert_eq!(h.ctx().broker().positions_count(), 0);
        assert!((h.ctx().broker().realised_pnl() - 8.0).abs() < TOL);

        // 100 100 110 102 90: z ≈ −1.63 → long.
        h.tick("ETH", 90.0);
        assert!(zscore(&h).unwrap() < -1.5);
        assert_eq!(h.ctx().position("ETH").qty, 1.0);

        // 100 110 102 90 95: z ≈ −0.65, between exit and entry → hold.
        h.tick("ETH", 95.0);
        let z = zscore(&h).unwrap();
        assert!(z < -0.5 && z > -1.5, "{z}");
        assert_eq!(h.ctx().position("ETH").qty, 1.0);

        assert_eq!(h.ctx().broker().orders_count(), 3);
        assert_eq!(h.ctx().broker().success_rate(), 1.0);
        assert_eq!(h.metrics().extra["ticks"], json!(9));
    }

    #[test]
    fn zscore_matches_a_direct_computation() {
        let s = strategy(json!({"token": "ETH", "window": 4, "entry_z": 50, "exit_z": 0.001}));
        let mut h = TestHarness::started(s);
        let prices = [3000.0, 3010.5, 2995.25, 3020.0, 3001.0, 2990.0];
        h.ticks("ETH", &prices);
        let w = &prices[2..];
        let mean = w.iter().sum::<f64>() / 4.0;
        let std = (w.iter().map(|p| (p - mean).powi(2)).sum::<f64>() / 4.0).sqrt();
        let expected = (2990.0 - mean) / std;
        assert!((zscore(&h).unwrap() - expected).abs() < 1e-6);
    }

    #[test]
    fn not_trading_before_the_window_is_full() {
        let s = small();
        let mut h = TestHarness::started(s);
        h.ticks("ETH", &[100.0, 200.0, 50.0, 300.0]);
        assert_eq!(zscore(&h), None);
        assert_eq!(h.ctx().broker().orders_count(), 0);
        h.ticks("BTC", &[1.0, 2.0, 3.0, 4.0, 5.0, 100.0]);
        assert_eq!(h.metrics().extra["ticks"], json!(4));
    }

    #[test]
    fn halts_and_closes_when_the_loss_limit_is_reached() {
        let s = strategy(json!({
            "token": "ETH", "window": 5, "entry_z": 1.5, "exit_z": 0.5, "max_loss": 50
        }));
        let mut h = TestHarness::started(s);
        h.ticks("ETH", &[100.0, 100.0, 100.0, 100.0, 110.0]);
        assert_eq!(h.ctx().position("ETH").qty, -1.0);
        h.tick("ETH", 150.0);
        assert!(
            h.ctx().halt_reason().is_none(),
            "a loss of 40 is within the limit"
        );
        h.tick("ETH", 170.0);
        let reason = h.ctx().halt_reason().expect("halted").to_string();
        assert!(
            reason.contains("max_loss") && reason.contains("60.00"),
            "{reason}"
        );
        assert!(reason.contains("limit 50"), "{reason}");
        assert_eq!(h.ctx().broker().positions_count(), 0);
        let orders = h.ctx().broker().orders_count();
        h.ticks("ETH", &[10.0, 500.0, 10.0]);
        assert_eq!(h.ctx().broker().orders_count(), orders);
    }

    #[test]
    fn update_config_accepts_and_rejects() {
        let s = small();
        let mut h = TestHarness::started(s);
        h.ticks("ETH", &[100.0, 100.0, 100.0, 100.0, 110.0]);
        assert_eq!(h.ctx().position("ETH").qty, -1.0);
        let before = h.strategy().config().clone();

        for bad in [
            json!({"token": "ETH", "window": 5, "entry_z": 1.5, "exit_z": 1.5}),
            json!({"token": "ETH", "window": 0}),
            json!({"token": "ETH", "entry_z": "2"}),
            json!({"token": "ETH", "exitz": 0.1}),
        ] {
            assert!(h.update_config(&bad).is_err(), "{bad}");
            assert_eq!(h.strategy().config(), &before);
        }

        // A smaller window keeps the last 3 prices (100 100 110) and a bigger size
        // applies on the next signal.
        h.update_config(
            &json!({"token": "ETH", "window": 3, "entry_z": 1.2, "exit_z": 0.2, "order_qty": 3}),
        )
        .unwrap();
        assert_eq!(h.strategy().config().window, 3);
        assert_eq!(h.ctx().position("ETH").qty, -1.0, "no trade on update");
        // 100 110 130: mean 113.3, std 12.47, z ≈ 1.34 > 1.2 → short 3.
        h.tick("ETH", 130.0);
        assert_eq!(h.ctx().position("ETH").qty, -3.0);
    }

    #[test]
    fn update_config_to_another_token_closes_the_old_position() {
        let s = small();
        let mut h = TestHarness::started(s);
        h.ticks("ETH", &[100.0, 100.0, 100.0, 100.0, 110.0]);
        h.update_config(&json!({"token": "SOL", "window": 5, "entry_z": 1.5}))
            .unwrap();
        assert_eq!(h.ctx().broker().positions_count(), 0);
        assert_eq!(
            h.ctx().subscriptions().iter().collect::<Vec<_>>(),
            vec!["SOL"]
        );
        assert_eq!(zscore(&h), None);
    }
}

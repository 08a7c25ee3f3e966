//! `bullish_breakout`: buys a token when its close breaks above its recent highs on
//! strong volume with bullish momentum, and sells when the close falls back below its
//! 20-bar average.
//!
//! One judgement of the latest bar ([`assess`]) serves every mode: live and in a
//! backtest it decides the entries, in a screener it is the score, in an alert run
//! the signal. A bar passes when all of these hold:
//! - **breakout**: the close is above the highest high of the 20 bars before it;
//! - **volume**: its volume is at least `min_volume_multiple` times the average of
//!   the 20 bars before it (no volume data passes only a multiple of 0);
//! - **momentum**: the MACD (12/26/9) line is above its signal line, and above 0
//!   with `strict_macd_positive`;
//! - **not overbought**: RSI(14) at most 70, unless `allow_overbought`;
//! - **52-week high**, with `require_52w_high`: the close within 2 % of the 52-week
//!   high ([`strategy_sdk::indicators::distance_to_52w_high`]; the bar interval is
//!   the spacing of the last two bars);
//! - **score** at least `min_score`.
//!
//! The score, 0–100, adds up: breakout 25, plus up to 5 as the close clears the
//! prior high by up to 2 %; volume up to 25 (25 × multiple / 2, full at twice the
//! average); MACD 10 for the line above the signal and 10 more above 0; RSI 15
//! between 50 and 70, 5 from 40 to 50 or above 70, 0 below 40; 52-week high up to 10
//! (10 at the high, falling to 0 at 10 % below it). A bar that does not pass has no
//! score, and its signal does not fire.
//!
//! Live, each tick is a bar of its price (and volume, when the tick has one); in a
//! backtest, each tick's bar is the replayed bar ([`Context::bar`]). The strategy
//! keeps the last [`HISTORY`] bars. Flat, it buys `order_qty` on a passing bar; long,
//! it sells out when the close is below the SMA of the last 20 closes.

use super::{
    abandon_token, check_max_loss, check_order_qty, check_token, enforce_max_loss, move_to_target,
};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::time::Duration;
use strategy_sdk::indicators::{
    closes, distance_to_52w_high, macd_standard, relative_volume, rsi, sma, MACD_SIGNAL, MACD_SLOW,
    RSI_PERIOD, VOLUME_PERIOD,
};
use strategy_sdk::{
    parse_config, Bar, ConfigError, Context, Signal, SignalPriority, Strategy, Tick,
};

pub const STRATEGY_TYPE: &str = "bullish_breakout";
pub const DESCRIPTION: &str =
    "buys a close above the 20-bar high on strong volume with bullish MACD, not overbought; sells below the 20-bar average";

/// Bars before the latest whose highs make the breakout level.
pub const BREAKOUT_LOOKBACK: usize = 20;
/// Closes in the average a long is sold below.
pub const EXIT_SMA: usize = 20;
/// The fewest bars a judgement needs (the standard MACD's 34).
pub const MIN_BARS: usize = MACD_SLOW + MACD_SIGNAL - 1;
/// Bars kept live: a year of daily bars and more.
pub const HISTORY: usize = 512;
/// How close to its 52-week high a close must be with `require_52w_high`.
pub const NEAR_52W_HIGH: f64 = 0.02;
/// Largest `min_volume_multiple`.
pub const MAX_VOLUME_MULTIPLE: f64 = 100.0;
/// RSI above which a bar is overbought.
pub const OVERBOUGHT_RSI: f64 = 70.0;

pub fn example_config() -> Value {
    json!({
        "token": "AAPL",
        "min_volume_multiple": 1.5,
        "strict_macd_positive": false,
        "allow_overbought": false,
        "require_52w_high": false,
        "min_score": 70,
        "order_qty": 10.0
    })
}

/// The `config` of a `bullish_breakout` strategy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BullishBreakoutConfig {
    /// The token traded (its ticks come from `live_data:{token}`).
    pub token: String,
    /// Least volume of the breakout bar, as a multiple of the 20-bar average: 0 to 100.
    #[serde(default = "default_min_volume_multiple")]
    pub min_volume_multiple: f64,
    /// Also require the MACD line above 0.
    #[serde(default)]
    pub strict_macd_positive: bool,
    /// Let a bar with RSI above 70 pass.
    #[serde(default)]
    pub allow_overbought: bool,
    /// Require the close within 2 % of its 52-week high.
    #[serde(default)]
    pub require_52w_high: bool,
    /// Least score that passes: 0 to 100.
    #[serde(default = "default_min_score")]
    pub min_score: f64,
    /// Size of the position bought on a breakout: above 0, at most 1e9.
    #[serde(default = "default_order_qty")]
    pub order_qty: f64,
    /// Halt for good (after closing the position) once the PnL reaches `-max_loss`.
    #[serde(default)]
    pub max_loss: Option<f64>,
}

fn default_min_volume_multiple() -> f64 {
    1.0
}

fn default_min_score() -> f64 {
    70.0
}

fn default_order_qty() -> f64 {
    1.0
}

impl BullishBreakoutConfig {
    /// Parse and validate a whole config.
    pub fn parse(config: &Value) -> Result<Self, ConfigError> {
        let parsed: Self = parse_config(config)?;
        parsed.validate()?;
        Ok(parsed)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        check_token("token", &self.token)?;
        check_finite_range(
            "min_volume_multiple",
            self.min_volume_multiple,
            MAX_VOLUME_MULTIPLE,
        )?;
        check_finite_range("min_score", self.min_score, 100.0)?;
        check_order_qty("order_qty", self.order_qty)?;
        check_max_loss("max_loss", self.max_loss)
    }
}

/// A finite number from 0 to `max`.
fn check_finite_range(key: &str, value: f64, max: f64) -> Result<(), ConfigError> {
    if value.is_finite() {
        ConfigError::check_range(key, value, 0.0, max)
    } else {
        Err(ConfigError::new(
            key,
            format!("{value} is not a number; allowed: 0 to {max}"),
        ))
    }
}

/// Build a `bullish_breakout` strategy from its config (the registry's constructor).
pub fn create(config: &Value) -> Result<Box<dyn Strategy>, ConfigError> {
    Ok(Box::new(BullishBreakout::new(
        BullishBreakoutConfig::parse(config)?,
    )))
}

/// The judgement of the latest bar of a history.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    /// 0–100, whether or not the bar passes.
    pub score: f64,
    /// The first condition the bar fails, or `None` when it passes.
    pub rejected: Option<&'static str>,
    pub close: f64,
    /// The highest high of the 20 bars before the latest.
    pub prior_high: f64,
    /// Volume as a multiple of the 20-bar average (`None` without volume data).
    pub volume_multiple: Option<f64>,
    pub rsi: f64,
    pub macd_line: f64,
    pub macd_signal: f64,
    pub distance_to_52w_high: f64,
}

impl Assessment {
    pub fn passed(&self) -> bool {
        self.rejected.is_none()
    }
}

/// Judge the latest of `bars` (oldest first) under `config`; `None` with fewer than
/// [`MIN_BARS`] bars.
pub fn assess(config: &BullishBreakoutConfig, bars: &[Bar]) -> Option<Assessment> {
    if bars.len() < MIN_BARS {
        return None;
    }
    let (latest, before) = bars.split_last()?;
    let closes = closes(bars);
    let prior_high = before[before.len() - BREAKOUT_LOOKBACK..]
        .iter()
        .map(|bar| bar.high)
        .fold(f64::NEG_INFINITY, f64::max);
    let macd = macd_standard(&closes)?;
    let interval = bar_interval(bars);
    let mut assessment = Assessment {
        score: 0.0,
        rejected: None,
        close: latest.close,
        prior_high,
        volume_multiple: relative_volume(bars, VOLUME_PERIOD),
        rsi: rsi(&closes, RSI_PERIOD)?,
        macd_line: macd.line,
        macd_signal: macd.signal,
        distance_to_52w_high: distance_to_52w_high(bars, interval)?,
    };
    assessment.score = score(&assessment);
    assessment.rejected = rejection(config, &assessment);
    Some(assessment)
}

/// The spacing of the last two bars (a day when there is one bar).
fn bar_interval(bars: &[Bar]) -> Duration {
    match bars {
        [.., before, latest] => (latest.ts - before.ts).to_std().unwrap_or_default(),
        _ => Duration::from_secs(86_400),
    }
}

/// The points of the module docs, 0–100.
fn score(a: &Assessment) -> f64 {
    let clearance = (a.close / a.prior_high - 1.0).max(0.0);
    let breakout = if a.close > a.prior_high {
        25.0 + 5.0 * (clearance / 0.02).min(1.0)
    } else {
        0.0
    };
    let volume = 25.0 * (a.volume_multiple.unwrap_or(0.0) / 2.0).min(1.0);
    let mut momentum = 0.0;
    if a.macd_line > a.macd_signal {
        momentum += 10.0;
    }
    if a.macd_line > 0.0 {
        momentum += 10.0;
    }
    let rsi = match a.rsi {
        r if (50.0..=OVERBOUGHT_RSI).contains(&r) => 15.0,
        r if r >= 40.0 => 5.0,
        _ => 0.0,
    };
    let high = 10.0 * (1.0 - (a.distance_to_52w_high / 0.10).min(1.0));
    breakout + volume + momentum + rsi + high
}

/// The first condition of the module docs the bar fails.
fn rejection(config: &BullishBreakoutConfig, a: &Assessment) -> Option<&'static str> {
    let volume_ok = match a.volume_multiple {
        Some(multiple) => multiple >= config.min_volume_multiple,
        None => config.min_volume_multiple == 0.0,
    };
    if a.close <= a.prior_high {
        Some("no breakout above the 20-bar high")
    } else if !volume_ok {
        Some("volume below min_volume_multiple")
    } else if a.macd_line <= a.macd_signal {
        Some("MACD line not above its signal")
    } else if config.strict_macd_positive && a.macd_line <= 0.0 {
        Some("MACD line not above 0")
    } else if !config.allow_overbought && a.rsi > OVERBOUGHT_RSI {
        Some("overbought: RSI above 70")
    } else if config.require_52w_high && a.distance_to_52w_high > NEAR_52W_HIGH {
        Some("not within 2 % of the 52-week high")
    } else if a.score < config.min_score {
        Some("score below min_score")
    } else {
        None
    }
}

#[derive(Debug)]
pub struct BullishBreakout {
    config: BullishBreakoutConfig,
    bars: VecDeque<Bar>,
}

impl BullishBreakout {
    pub fn new(config: BullishBreakoutConfig) -> Self {
        BullishBreakout {
            config,
            bars: VecDeque::with_capacity(HISTORY),
        }
    }

    pub fn config(&self) -> &BullishBreakoutConfig {
        &self.config
    }

    /// Keep `bar`, and judge the history with it.
    fn observe(&mut self, bar: Bar) -> Option<Assessment> {
        if self.bars.len() == HISTORY {
            self.bars.pop_front();
        }
        self.bars.push_back(bar);
        assess(&self.config, self.bars.make_contiguous())
    }

    fn report(&self, ctx: &mut Context, assessment: Option<&Assessment>) {
        ctx.set_metric("bars", self.bars.len());
        ctx.set_metric("score", assessment.map(|a| a.score));
    }
}

impl Strategy for BullishBreakout {
    fn on_start(&mut self, ctx: &mut Context) {
        ctx.subscribe(&self.config.token);
        self.report(ctx, None);
    }

    fn on_tick(&mut self, ctx: &mut Context, tick: &Tick) {
        if tick.token != self.config.token || ctx.halt_reason().is_some() {
            return;
        }
        if !(tick.price.is_finite() && tick.price > 0.0) {
            return;
        }
        let bar = ctx.bar().copied().unwrap_or_else(|| Bar::from_tick(tick));
        let assessment = self.observe(bar);
        let token = &self.config.token;
        if !enforce_max_loss(ctx, STRATEGY_TYPE, token, self.config.max_loss) {
            let held = ctx.position(token).qty;
            let closes: Vec<f64> = self.bars.iter().map(|bar| bar.close).collect();
            let below_average = sma(&closes, EXIT_SMA).is_some_and(|avg| bar.close < avg);
            if held == 0.0 && assessment.as_ref().is_some_and(Assessment::passed) {
                move_to_target(ctx, token, self.config.order_qty);
            } else if held > 0.0 && below_average {
                move_to_target(ctx, token, 0.0);
            }
        }
        self.report(ctx, assessment.as_ref());
    }

    /// The latest bar's score, when it passes.
    fn score(&self, _ctx: &Context, history: &[Bar]) -> Option<f64> {
        assess(&self.config, history)
            .filter(Assessment::passed)
            .map(|a| a.score)
    }

    /// `min_score`: the score a screener passes at (a bar that fails one of the
    /// other conditions has no score at all).
    fn passing_score(&self) -> f64 {
        self.config.min_score
    }

    /// A passing latest bar, as an alert (priority `high` from a score of 90).
    fn signal(&self, _ctx: &Context, history: &[Bar]) -> Option<Signal> {
        let a = assess(&self.config, history).filter(Assessment::passed)?;
        let volume = match a.volume_multiple {
            Some(multiple) => format!("{multiple:.1}× average volume"),
            None => "no volume data".to_string(),
        };
        let message = format!(
            "{}: closed at {} above its 20-bar high {} on {volume}, RSI {:.0}; score {:.0}",
            self.config.token, a.close, a.prior_high, a.rsi, a.score
        );
        let priority = if a.score >= 90.0 {
            SignalPriority::High
        } else {
            SignalPriority::Normal
        };
        Some(Signal::new(STRATEGY_TYPE, message, priority))
    }

    /// A new token starts afresh (the old token's position is closed); the other
    /// keys apply from the next bar, on the bars kept.
    fn update_config(&mut self, ctx: &mut Context, config: &Value) -> Result<(), ConfigError> {
        let new = BullishBreakoutConfig::parse(config)?;
        if new.token != self.config.token {
            abandon_token(ctx, STRATEGY_TYPE, &self.config.token, &new.token);
            self.bars.clear();
        }
        self.config = new;
        self.report(ctx, None);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategies::daily_bars;
    use strategy_sdk::backtest::{run_backtest, BacktestSettings};
    use strategy_sdk::testkit::TestHarness;

    fn config(extra: Value) -> BullishBreakoutConfig {
        let mut config = json!({"token": "AAPL"});
        config
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        BullishBreakoutConfig::parse(&config).unwrap()
    }

    /// Bars of `closes`, each high 0.5 above its close, volume 1000 but the last
    /// bar's `last_volume`.
    fn bars(closes: &[f64], last_volume: f64) -> Vec<Bar> {
        let mut bars = daily_bars(closes);
        for bar in &mut bars {
            bar.high = bar.close + 0.5;
        }
        bars.last_mut().unwrap().volume = last_volume;
        bars
    }

    /// 39 bars zig-zagging ±2 around a trend of +0.1 a bar, then a close at 108 on
    /// 2.5 times the volume: a clear breakout.
    fn clear_breakout() -> Vec<Bar> {
        let mut closes: Vec<f64> = (0..39)
            .map(|i| 100.0 + 0.1 * i as f64 + if i % 2 == 0 { 2.0 } else { -2.0 })
            .collect();
        closes.push(108.0);
        bars(&closes, 2500.0)
    }

    /// 39 bars rising 1 a bar (RSI 100), then a jump of 5 on 2.5 times the volume.
    fn overbought_breakout() -> Vec<Bar> {
        let mut closes: Vec<f64> = (0..39).map(|i| 100.0 + i as f64).collect();
        closes.push(143.0);
        bars(&closes, 2500.0)
    }

    /// 39 bars falling 0.5 a bar zig-zagging ±1, then a jump to 93.
    fn downtrend_breakout() -> Vec<Bar> {
        let mut closes: Vec<f64> = (0..39)
            .map(|i| 100.0 - 0.5 * i as f64 + if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        closes.push(93.0);
        bars(&closes, 2500.0)
    }

    const TOL: f64 = 1e-9;

    #[test]
    fn a_clear_breakout_passes_with_a_high_score() {
        // The close 108 clears the prior high 106.3 (bar 38: 103.8 + 2 + 0.5) by
        // 1.6 %: 25 + 5 × 0.016 / 0.02; volume 2.5 × average: 25; MACD line above
        // its signal and 0: 20; RSI ≈ 54.7: 15; 0.5 below the 52-week high 108.5:
        // 10 × (1 − (0.5 / 108.5) / 0.1). About 98.5.
        let history = clear_breakout();
        let a = assess(&config(json!({})), &history).unwrap();
        assert_eq!(
            (a.close, a.prior_high, a.volume_multiple),
            (108.0, 106.3, Some(2.5))
        );
        assert!(a.macd_line > a.macd_signal && a.macd_line > 0.0, "{a:?}");
        assert!((50.0..=70.0).contains(&a.rsi), "{a:?}");
        let expected = 25.0
            + 5.0 * (108.0 / 106.3 - 1.0) / 0.02
            + 25.0
            + 20.0
            + 15.0
            + 10.0 * (1.0 - (0.5 / 108.5) / 0.1);
        assert!(
            (a.score - expected).abs() < TOL,
            "{} vs {expected}",
            a.score
        );
        assert!(a.passed());

        let mut h = TestHarness::started(BullishBreakout::new(config(json!({}))));
        let score = h.score(&history).unwrap();
        assert!(score >= 70.0 && (score - expected).abs() < TOL);
        let signal = h.signal(&history).unwrap();
        assert_eq!(signal.kind, "bullish_breakout");
        assert_eq!(signal.priority, SignalPriority::High);
        assert!(
            signal.message.starts_with(
                "AAPL: closed at 108 above its 20-bar high 106.3 on 2.5× average volume"
            ),
            "{}",
            signal.message
        );
    }

    #[test]
    fn an_overbought_breakout_is_rejected_unless_allowed() {
        // Rising 1 a bar: RSI 100. Allowed: 25 + 5 (143 clears 138.5 by over 2 %) +
        // volume 25 + MACD 20 + RSI 5 + 10 × (1 − (0.5 / 143.5) / 0.1) ≈ 89.65.
        let history = overbought_breakout();
        let strict = BullishBreakout::new(config(json!({})));
        let mut h = TestHarness::started(strict);
        assert_eq!(h.score(&history), None);
        assert_eq!(h.signal(&history), None);
        let a = assess(&config(json!({})), &history).unwrap();
        assert_eq!(a.rejected, Some("overbought: RSI above 70"));
        assert_eq!(a.rsi, 100.0);

        let allowed = BullishBreakout::new(config(json!({"allow_overbought": true})));
        let mut h = TestHarness::started(allowed);
        let expected = 30.0 + 25.0 + 20.0 + 5.0 + 10.0 * (1.0 - (0.5 / 143.5) / 0.1);
        assert!((h.score(&history).unwrap() - expected).abs() < TOL);
        assert_eq!(h.signal(&history).unwrap().priority, SignalPriority::Normal);
    }

    #[test]
    fn each_condition_rejects_on_its_own() {
        let clear = clear_breakout();
        let rejected =
            |extra: Value, history: &[Bar]| assess(&config(extra), history).unwrap().rejected;
        // No breakout: 105 is below the prior high 106.3.
        let mut below = clear.clone();
        below[39].close = 105.0;
        assert_eq!(
            rejected(json!({}), &below),
            Some("no breakout above the 20-bar high")
        );
        // Volume: 1 × the average passes the default 1.0, not 1.5.
        let mut quiet = clear.clone();
        quiet[39].volume = 1000.0;
        assert_eq!(rejected(json!({}), &quiet), None);
        assert_eq!(
            rejected(json!({"min_volume_multiple": 1.5}), &quiet),
            Some("volume below min_volume_multiple")
        );
        // MACD: a breakout out of a downtrend has its line above the signal but
        // below 0 (score 29.1 + 25 + 10 + 15 + 1.6 ≈ 80.7).
        let down = downtrend_breakout();
        let a = assess(&config(json!({})), &down).unwrap();
        assert!(a.macd_line < 0.0 && a.passed(), "{a:?}");
        assert_eq!(
            rejected(json!({"strict_macd_positive": true}), &down),
            Some("MACD line not above 0")
        );
        // 52-week high: an old high of 130 puts 108 17 % below it.
        let mut old_high = clear.clone();
        old_high[0].high = 130.0;
        assert_eq!(rejected(json!({}), &old_high), None);
        assert_eq!(
            rejected(json!({"require_52w_high": true}), &old_high),
            Some("not within 2 % of the 52-week high")
        );
        assert_eq!(rejected(json!({"require_52w_high": true}), &clear), None);
        // The score threshold.
        assert_eq!(
            rejected(json!({"min_score": 99}), &clear),
            Some("score below min_score")
        );
        // Too little history: no judgement at all.
        assert_eq!(
            assess(&config(json!({})), &clear[clear.len() - MIN_BARS + 1..]),
            None
        );
        assert!(assess(&config(json!({})), &clear[clear.len() - MIN_BARS..]).is_some());
    }

    #[test]
    fn config_defaults_and_errors() {
        assert_eq!(
            config(json!({})),
            BullishBreakoutConfig {
                token: "AAPL".into(),
                min_volume_multiple: 1.0,
                strict_macd_positive: false,
                allow_overbought: false,
                require_52w_high: false,
                min_score: 70.0,
                order_qty: 1.0,
                max_loss: None,
            }
        );
        let err =
            BullishBreakoutConfig::parse(&json!({"token": "AAPL", "min_scor": 50})).unwrap_err();
        assert_eq!(err.key, "min_scor");
        assert!(err.to_string().contains("min_score"), "{err}");
        let cases = [
            ("min_score", json!(101), "0 to 100"),
            ("min_score", json!(-1), "0 to 100"),
            ("min_score", json!("high"), "invalid type"),
            ("min_volume_multiple", json!(-0.5), "0 to 100"),
            ("min_volume_multiple", json!(101), "0 to 100"),
            ("allow_overbought", json!("yes"), "invalid type"),
            ("strict_macd_positive", json!(1), "invalid type"),
            ("require_52w_high", Value::Null, "invalid type"),
            ("order_qty", json!(0), "above 0"),
            ("max_loss", json!(-5), "above 0"),
            ("token", json!(""), "must not be empty"),
        ];
        for (key, value, needle) in cases {
            let mut config = json!({"token": "AAPL"});
            config[key] = value;
            let err = BullishBreakoutConfig::parse(&config).unwrap_err();
            assert_eq!(err.key, key, "{config}: {err}");
            assert!(err.to_string().contains(needle), "{config}: {err}");
        }
        assert!(create(&example_config()).is_ok());
    }

    #[test]
    fn trades_the_breakout_live_and_sells_below_the_average() {
        let mut history = clear_breakout();
        let mut h = TestHarness::started(BullishBreakout::new(config(json!({"order_qty": 2}))));
        assert!(h.ctx().subscriptions().contains("AAPL"));
        h.bars("AAPL", &history[..39]);
        assert_eq!(h.fills().len(), 0);
        h.bars("AAPL", &history[39..]);
        assert_eq!(h.position("AAPL").qty, 2.0);
        assert_eq!(h.fills()[0].price, 108.0);
        // 106 stays above the 20-close average (about 103.9); 100 falls below it.
        let more = daily_bars(&[106.0, 100.0]);
        history.extend(more.iter().map(|bar| Bar {
            ts: bar.ts + chrono::TimeDelta::days(40),
            ..*bar
        }));
        h.bars("AAPL", &history[40..41]);
        assert_eq!(h.position("AAPL").qty, 2.0);
        h.bars("AAPL", &history[41..]);
        assert_eq!(h.position("AAPL").qty, 0.0);
        assert_eq!(h.pnl(), 2.0 * (100.0 - 108.0));
    }

    #[test]
    fn live_ticks_without_volume_pass_only_without_a_volume_condition() {
        let closes: Vec<f64> = clear_breakout().iter().map(|bar| bar.close).collect();
        let mut h = TestHarness::started(BullishBreakout::new(config(json!({}))));
        h.ticks("AAPL", &closes);
        assert_eq!(h.fills().len(), 0, "no volume data: the default 1.0 fails");
        let quiet = config(json!({"min_volume_multiple": 0}));
        let mut h = TestHarness::started(BullishBreakout::new(quiet));
        h.ticks("AAPL", &closes);
        assert_eq!(h.position("AAPL").qty, 1.0);
    }

    /// Five rounds of a clear breakout followed by a slide of 10 bars.
    fn rounds() -> Vec<Bar> {
        let mut closes = Vec::new();
        for round in 0..5 {
            let base = 10.0 * round as f64;
            closes.extend(clear_breakout().iter().map(|bar| bar.close + base));
            closes.extend((1..=10).map(|i| 108.0 + base - 1.5 * i as f64));
        }
        let mut bars = bars(&closes, 1000.0);
        for round in 0..5 {
            bars[round * 50 + 39].volume = 2500.0;
        }
        bars
    }

    #[test]
    fn a_backtest_of_it_is_deterministic() {
        let history = rounds();
        let settings = BacktestSettings {
            fee_bps: 5.0,
            ..BacktestSettings::new("AAPL", Duration::from_secs(86_400), 10_000.0)
        };
        let run = || {
            let strategy = create(&json!({"token": "AAPL", "order_qty": 10})).unwrap();
            run_backtest(strategy, &history, &settings).unwrap()
        };
        let first = run();
        assert_eq!(first, run());
        assert_eq!(
            serde_json::to_string(&first).unwrap(),
            serde_json::to_string(&run()).unwrap()
        );
        assert_eq!(first.bars, 250);
        assert!(!first.trades.is_empty(), "{first:?}");
        assert!(first.trades.iter().all(|t| t.qty == 10.0));
        assert!(first.metrics.hit_rate.is_some());
    }
}

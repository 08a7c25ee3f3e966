//! The built-in strategies and [`builtin_registry`], which names them for the executor.
//!
//! Each strategy lives in its own module with a strict config struct (unknown keys,
//! wrong types and values out of range are errors naming the key), a `create`
//! constructor for the [`Registry`], and live `update_config`. `dca` is an interval
//! strategy: it trades in `on_execute`, not on ticks. The helpers shared by
//! the trading strategies (a rolling window with O(1) mean and variance, moving to a
//! target position, the loss limit, field checks) live here.

pub mod bullish_breakout;
pub mod dca;
pub mod heartbeat;
pub mod mean_reversion;
pub mod sma_crossover;

use strategy_sdk::{ConfigError, Context, Registry, RunMode};

/// The registry of every built-in strategy type.
pub fn builtin_registry() -> Registry {
    let every_mode = [RunMode::Backtest, RunMode::Screener, RunMode::Alert];
    let mut registry = Registry::new();
    registry
        .register_with_modes(
            sma_crossover::STRATEGY_TYPE,
            sma_crossover::DESCRIPTION,
            sma_crossover::example_config(),
            &every_mode,
            sma_crossover::create,
        )
        .register_with_modes(
            mean_reversion::STRATEGY_TYPE,
            mean_reversion::DESCRIPTION,
            mean_reversion::example_config(),
            &every_mode,
            mean_reversion::create,
        )
        .register_with_modes(
            bullish_breakout::STRATEGY_TYPE,
            bullish_breakout::DESCRIPTION,
            bullish_breakout::example_config(),
            &every_mode,
            bullish_breakout::create,
        )
        .register_interval(
            dca::STRATEGY_TYPE,
            dca::DESCRIPTION,
            dca::example_config(),
            &[],
            dca::create,
        )
        // Backtests of `heartbeat` trade nothing: they are for its
        // `panic_after_ticks` test hook; its interval step counts itself.
        .register_interval(
            heartbeat::STRATEGY_TYPE,
            heartbeat::DESCRIPTION,
            heartbeat::example_config(),
            &[RunMode::Backtest],
            heartbeat::create,
        );
    registry
}

/// Largest order quantity a config may ask for.
const MAX_ORDER_QTY: f64 = 1e9;

/// Position sizes closer than this to the target are left alone.
const QTY_EPSILON: f64 = 1e-9;

/// A token name: not empty, at most 64 characters, no whitespace or control characters.
fn check_token(key: &str, token: &str) -> Result<(), ConfigError> {
    if token.is_empty() {
        return Err(ConfigError::new(
            key,
            "must not be empty; give a token name such as \"BTC-USD\"",
        ));
    }
    if token.chars().count() > 64 {
        return Err(ConfigError::new(key, "must be at most 64 characters long"));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ConfigError::new(
            key,
            format!("{token:?} must not contain whitespace or control characters"),
        ));
    }
    Ok(())
}

/// Whether a tick's token is the strategy's: compared inline, byte by byte (tokens
/// are short; this runs on every tick).
#[inline]
fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| x == y)
}

/// A finite number above zero and at most `max`.
fn check_positive(key: &str, value: f64, max: f64) -> Result<(), ConfigError> {
    if !value.is_finite() || value <= 0.0 || value > max {
        return Err(ConfigError::new(
            key,
            format!("{value} is out of range; allowed: a number above 0 and at most {max}"),
        ));
    }
    Ok(())
}

/// A finite number above zero.
fn check_above_zero(key: &str, value: f64) -> Result<(), ConfigError> {
    if !value.is_finite() || value <= 0.0 {
        return Err(ConfigError::new(
            key,
            format!("{value} is out of range; allowed: a finite number above 0"),
        ));
    }
    Ok(())
}

fn check_order_qty(key: &str, qty: f64) -> Result<(), ConfigError> {
    check_positive(key, qty, MAX_ORDER_QTY)
}

fn check_max_loss(key: &str, max_loss: Option<f64>) -> Result<(), ConfigError> {
    match max_loss {
        Some(limit) => check_above_zero(key, limit),
        None => Ok(()),
    }
}

/// Trade `token` so that its position becomes `target` (signed; negative = short),
/// in a single order. Returns whether an order was filled.
fn move_to_target(ctx: &mut Context, token: &str, target: f64) -> bool {
    let delta = target - ctx.position(token).qty;
    if delta.abs() < QTY_EPSILON {
        return false;
    }
    // A rejection (no price yet) is already logged by the context.
    let result = if delta > 0.0 {
        ctx.buy(token, delta)
    } else {
        ctx.sell(token, -delta)
    };
    result.is_ok()
}

/// The loss limit: when the strategy's PnL has fallen to `-max_loss` or below, close
/// the position in `token` and halt the strategy for good. Returns whether it halted.
#[inline]
fn enforce_max_loss(
    ctx: &mut Context,
    strategy_type: &str,
    token: &str,
    max_loss: Option<f64>,
) -> bool {
    if ctx.halt_reason().is_some() {
        return true;
    }
    let Some(limit) = max_loss else {
        return false;
    };
    let pnl = ctx.broker().pnl();
    if pnl > -limit {
        return false;
    }
    let closed = match ctx.close_position(token) {
        Ok(Some(fill)) => format!("; closed {} {token} at {}", fill.qty, fill.price),
        Ok(None) => String::new(),
        Err(e) => format!("; could not close {token}: {e}"),
    };
    ctx.halt(format!(
        "{strategy_type}: max_loss reached: loss {loss:.2} (pnl {pnl:.2}) is at or above the limit {limit}{closed}",
        loss = -pnl
    ));
    true
}

/// Closes the position of a token the strategy stops following after a config update
/// (nothing else would ever manage it again).
fn abandon_token(ctx: &mut Context, strategy_type: &str, old: &str, new: &str) {
    ctx.unsubscribe(old);
    ctx.subscribe(new);
    match ctx.close_position(old) {
        Ok(Some(fill)) => ctx.log(&format!(
            "{strategy_type}: token changed from {old} to {new}; closed {} {old} at {}",
            fill.qty, fill.price
        )),
        Ok(None) => ctx.log(&format!(
            "{strategy_type}: token changed from {old} to {new}"
        )),
        Err(e) => ctx.log(&format!(
            "{strategy_type}: token changed from {old} to {new}; could not close {old}: {e}"
        )),
    }
}

/// The last `capacity` values of a series with their mean and population variance,
/// each push O(1).
///
/// The sums are kept relative to a shift (a recent value) so that the variance of
/// large prices does not cancel catastrophically, and recomputed exactly once every
/// `capacity` pushes so that rounding errors never accumulate (amortised O(1)).
#[derive(Debug, Clone)]
struct RollingWindow {
    capacity: usize,
    values: std::collections::VecDeque<f64>,
    shift: f64,
    sum: f64,
    sum_sq: f64,
    pushes_since_resync: usize,
}

impl RollingWindow {
    fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        RollingWindow {
            capacity,
            values: std::collections::VecDeque::with_capacity(capacity),
            shift: 0.0,
            sum: 0.0,
            sum_sq: 0.0,
            pushes_since_resync: 0,
        }
    }

    /// A window of `capacity` holding the last values of this one.
    fn resized(&self, capacity: usize) -> Self {
        let mut window = RollingWindow::new(capacity);
        let skip = self.values.len().saturating_sub(window.capacity);
        window.values.extend(self.values.iter().skip(skip));
        window.resync();
        window
    }

    fn push(&mut self, value: f64) {
        if self.values.is_empty() {
            self.shift = value;
        }
        if self.values.len() == self.capacity {
            if let Some(old) = self.values.pop_front() {
                let d = old - self.shift;
                self.sum -= d;
                self.sum_sq -= d * d;
            }
        }
        self.values.push_back(value);
        let d = value - self.shift;
        self.sum += d;
        self.sum_sq += d * d;
        self.pushes_since_resync += 1;
        if self.pushes_since_resync >= self.capacity {
            self.resync();
        }
    }

    fn resync(&mut self) {
        self.shift = self.values.back().copied().unwrap_or(0.0);
        self.sum = 0.0;
        self.sum_sq = 0.0;
        for v in &self.values {
            let d = v - self.shift;
            self.sum += d;
            self.sum_sq += d * d;
        }
        self.pushes_since_resync = 0;
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.values.len()
    }

    fn is_full(&self) -> bool {
        self.values.len() == self.capacity
    }

    fn mean(&self) -> Option<f64> {
        let n = self.values.len();
        (n > 0).then(|| self.shift + self.sum / n as f64)
    }

    /// Population variance (divided by n).
    fn variance(&self) -> Option<f64> {
        let n = self.values.len() as f64;
        if self.values.is_empty() {
            return None;
        }
        let mean_d = self.sum / n;
        Some((self.sum_sq / n - mean_d * mean_d).max(0.0))
    }
}

/// The means of the last `fast` and of the last `slow` values of one series, over
/// one ring of the last `max(fast, slow)` values: each push O(1), with no
/// allocation and no search. The two sums are recomputed exactly once every
/// `max(fast, slow)` pushes, so that rounding errors never accumulate.
#[derive(Debug, Clone)]
struct TwoMeans {
    ring: Box<[f64]>,
    /// Where the next value goes.
    head: usize,
    /// Values held (at most the ring's length).
    len: usize,
    fast: usize,
    slow: usize,
    fast_sum: f64,
    slow_sum: f64,
    pushes_until_resync: usize,
}

impl TwoMeans {
    fn new(fast: usize, slow: usize) -> Self {
        let (fast, slow) = (fast.max(1), slow.max(1));
        let capacity = fast.max(slow);
        TwoMeans {
            ring: vec![0.0; capacity].into_boxed_slice(),
            head: 0,
            len: 0,
            fast,
            slow,
            fast_sum: 0.0,
            slow_sum: 0.0,
            pushes_until_resync: capacity,
        }
    }

    /// Two means of new lengths over the last values of these.
    fn resized(&self, fast: usize, slow: usize) -> Self {
        let mut means = TwoMeans::new(fast, slow);
        let keep = self.len.min(means.ring.len());
        for k in (0..keep).rev() {
            means.push_value(self.nth_latest(k));
        }
        means.resync();
        means
    }

    /// The value pushed `k` pushes ago (0: the latest); `k` < `len`.
    #[inline]
    fn nth_latest(&self, k: usize) -> f64 {
        let cap = self.ring.len();
        let mut at = self.head + cap - 1 - k;
        if at >= cap {
            at -= cap;
        }
        self.ring[at]
    }

    #[inline]
    fn push(&mut self, value: f64) {
        self.push_value(value);
        self.pushes_until_resync -= 1;
        if self.pushes_until_resync == 0 {
            self.resync();
        }
    }

    #[inline]
    fn push_value(&mut self, value: f64) {
        // The values leaving each window: `fast` and `slow` pushes ago (read before
        // the ring slot of the oldest is overwritten). The sums are worked in locals
        // and stored once (a load of both right after storing one stalls the CPU).
        let (mut fast_sum, mut slow_sum) = (self.fast_sum, self.slow_sum);
        if self.len >= self.fast {
            fast_sum -= self.nth_latest(self.fast - 1);
        }
        if self.len >= self.slow {
            slow_sum -= self.nth_latest(self.slow - 1);
        }
        self.ring[self.head] = value;
        self.head += 1;
        if self.head == self.ring.len() {
            self.head = 0;
        }
        self.len = (self.len + 1).min(self.ring.len());
        self.fast_sum = fast_sum + value;
        self.slow_sum = slow_sum + value;
    }

    fn resync(&mut self) {
        self.fast_sum = (0..self.len.min(self.fast))
            .map(|k| self.nth_latest(k))
            .sum();
        self.slow_sum = (0..self.len.min(self.slow))
            .map(|k| self.nth_latest(k))
            .sum();
        self.pushes_until_resync = self.ring.len();
    }

    /// How the fast mean compares with the slow one, once both exist. Compared as
    /// `fast_sum × slow` against `slow_sum × fast`: the same order as the means,
    /// without a division.
    #[inline]
    fn compare(&self) -> Option<std::cmp::Ordering> {
        if self.len < self.fast.max(self.slow) {
            return None;
        }
        let fast = self.fast_sum * self.slow as f64;
        let slow = self.slow_sum * self.fast as f64;
        fast.partial_cmp(&slow)
    }

    /// The mean of the last `fast` values, once there are that many.
    #[inline]
    fn fast_mean(&self) -> Option<f64> {
        (self.len >= self.fast).then(|| self.fast_sum / self.fast as f64)
    }

    /// The mean of the last `slow` values, once there are that many.
    #[inline]
    fn slow_mean(&self) -> Option<f64> {
        (self.len >= self.slow).then(|| self.slow_sum / self.slow as f64)
    }
}

/// Daily bars of the given closes (high and low 1 around the close, volume 1000)
/// from 2024-01-01, for the strategies' tests.
#[cfg(test)]
fn daily_bars(closes: &[f64]) -> Vec<strategy_sdk::Bar> {
    let start = chrono::DateTime::from_timestamp(1_704_067_200, 0).expect("a valid instant");
    closes
        .iter()
        .enumerate()
        .map(|(i, &close)| strategy_sdk::Bar {
            ts: start + chrono::TimeDelta::days(i as i64),
            open: close,
            high: close + 1.0,
            low: close - 1.0,
            close,
            volume: 1000.0,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn naive_mean_var(values: &[f64]) -> (f64, f64) {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        (mean, var)
    }

    #[test]
    fn rolling_window_matches_a_naive_computation() {
        let mut w = RollingWindow::new(7);
        let mut all = Vec::new();
        let mut x = 65_000.0_f64;
        for i in 0..10_000u32 {
            // A deterministic wiggle around a large level.
            x += ((i * 7919) % 200) as f64 / 100.0 - 1.0;
            w.push(x);
            all.push(x);
            let tail = &all[all.len().saturating_sub(7)..];
            let (mean, var) = naive_mean_var(tail);
            assert!((w.mean().unwrap() - mean).abs() < 1e-6, "step {i}");
            assert!((w.variance().unwrap() - var).abs() < 1e-6, "step {i}");
            assert_eq!(w.len(), tail.len());
        }
        assert!(w.is_full());
    }

    #[test]
    fn two_means_match_a_naive_computation_and_survive_resizing() {
        let values: Vec<f64> = (0..500)
            .map(|i| 1000.0 + ((i * 7919) % 113) as f64 * 0.37 - (i % 17) as f64)
            .collect();
        let naive = |upto: usize, n: usize| -> Option<f64> {
            (upto >= n).then(|| values[upto - n..upto].iter().sum::<f64>() / n as f64)
        };
        let mut means = TwoMeans::new(5, 20);
        for (i, &v) in values.iter().enumerate() {
            means.push(v);
            let (fast, slow) = (naive(i + 1, 5), naive(i + 1, 20));
            for (got, want) in [(means.fast_mean(), fast), (means.slow_mean(), slow)] {
                match (got, want) {
                    (Some(g), Some(w)) => assert!((g - w).abs() < 1e-9, "{i}: {g} vs {w}"),
                    (g, w) => assert_eq!(g, w, "{i}"),
                }
            }
            let order = fast.zip(slow).and_then(|(f, s)| f.partial_cmp(&s));
            if let (Some(f), Some(s)) = (fast, slow) {
                if (f - s).abs() > 1e-9 {
                    assert_eq!(means.compare(), order, "{i}");
                }
            } else {
                assert_eq!(means.compare(), None);
            }
        }
        // Resized: the latest values are kept, in order.
        let wider = means.resized(3, 40);
        assert!((wider.fast_mean().unwrap() - naive(500, 3).unwrap()).abs() < 1e-9);
        assert_eq!(wider.slow_mean(), None, "only 20 values were kept");
        let narrower = means.resized(2, 10);
        assert!((narrower.slow_mean().unwrap() - naive(500, 10).unwrap()).abs() < 1e-9);
        // Equal values compare equal.
        let mut flat = TwoMeans::new(2, 4);
        for _ in 0..4 {
            flat.push(10.0);
        }
        assert_eq!(flat.compare(), Some(std::cmp::Ordering::Equal));
    }

    #[test]
    fn rolling_window_of_a_constant_has_zero_variance() {
        let mut w = RollingWindow::new(3);
        assert_eq!(w.mean(), None);
        assert_eq!(w.variance(), None);
        for _ in 0..5 {
            w.push(101.25);
        }
        assert_eq!(w.mean(), Some(101.25));
        assert_eq!(w.variance(), Some(0.0));
    }

    #[test]
    fn resizing_keeps_the_latest_values() {
        let mut w = RollingWindow::new(4);
        for v in [1.0, 2.0, 3.0, 4.0, 5.0] {
            w.push(v);
        }
        let small = w.resized(2);
        assert!(small.is_full());
        assert_eq!(small.mean(), Some(4.5));
        let big = w.resized(10);
        assert_eq!(big.len(), 4);
        assert!(!big.is_full());
        assert_eq!(big.mean(), Some(3.5));
    }

    #[test]
    fn registry_lists_the_builtins_and_their_examples_are_valid() {
        let registry = builtin_registry();
        assert_eq!(
            registry.types(),
            vec![
                "bullish_breakout",
                "dca",
                "heartbeat",
                "mean_reversion",
                "sma_crossover"
            ]
        );
        for info in registry.infos() {
            assert!(!info.description.is_empty());
            assert!(
                registry
                    .create(&info.strategy_type, &info.example_config)
                    .is_ok(),
                "example config of {} is rejected",
                info.strategy_type
            );
        }
        let modes = |t: &str| registry.info(t).unwrap().modes.clone();
        assert_eq!(modes("heartbeat"), [RunMode::Live, RunMode::Backtest]);
        assert_eq!(modes("sma_crossover"), RunMode::ALL);
        assert_eq!(modes("mean_reversion"), RunMode::ALL);
        assert_eq!(modes("bullish_breakout"), RunMode::ALL);
        assert_eq!(modes("dca"), [RunMode::Live]);
        let interval: Vec<_> = registry
            .infos()
            .filter(|info| info.supports_interval)
            .map(|info| info.strategy_type.as_str())
            .collect();
        assert_eq!(interval, ["dca", "heartbeat"]);
        let err = registry
            .create(
                "sma_crossover",
                &json!({"token": "BTC-USD", "fast_perod": 3}),
            )
            .err()
            .unwrap();
        assert!(err.to_string().starts_with("sma_crossover: "), "{err}");
    }

    #[test]
    fn token_and_number_checks() {
        assert!(check_token("token", "BTC-USD").is_ok());
        assert_eq!(check_token("token", "").unwrap_err().key, "token");
        assert!(check_token("token", "BTC USD").is_err());
        assert!(check_token("token", &"X".repeat(65)).is_err());
        assert!(check_order_qty("order_qty", 0.5).is_ok());
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 2e9] {
            let e = check_order_qty("order_qty", bad).unwrap_err();
            assert_eq!(e.key, "order_qty");
        }
        assert!(check_max_loss("max_loss", None).is_ok());
        assert!(check_max_loss("max_loss", Some(0.0)).is_err());
    }
}

//! Technical indicators over plain slices, oldest value first: [`sma`], [`ema`],
//! [`macd`], [`rsi`], [`relative_volume`] and [`distance_to_52w_high`].
//!
//! Each returns the indicator's value at the latest element, or `None` when the
//! slice is too short (or a period is 0) — never a value computed from less data
//! than its definition needs. They are pure functions: a strategy can call them on
//! the closes it keeps live and on the bar history a screener hands it, and get the
//! same answer for the same prices.
//!
//! ```
//! use strategy_sdk::indicators::{ema, rsi, sma};
//!
//! let closes = [10.0, 11.0, 10.0, 12.0, 13.0];
//! assert_eq!(sma(&closes, 2), Some(12.5));
//! assert_eq!(ema(&closes, 5), Some(11.2)); // seeded with the SMA of the 5 values
//! assert!(rsi(&closes, 3).unwrap() > 80.0);
//! assert_eq!(sma(&closes, 6), None);
//! ```

use crate::modes::Bar;
use chrono::TimeDelta;
use std::time::Duration;

/// The standard MACD periods: 12, 26 and 9.
pub const MACD_FAST: usize = 12;
pub const MACD_SLOW: usize = 26;
pub const MACD_SIGNAL: usize = 9;
/// The standard RSI period: 14.
pub const RSI_PERIOD: usize = 14;
/// The standard volume average: 20 bars.
pub const VOLUME_PERIOD: usize = 20;
/// Daily bars in 52 weeks of trading: 252.
pub const DAILY_BARS_52W: usize = 252;
/// The 52 weeks of [`distance_to_52w_high`] for bars other than daily ones.
pub const WEEKS_52: TimeDelta = TimeDelta::days(364);

/// Simple moving average: the mean of the last `period` values.
pub fn sma(values: &[f64], period: usize) -> Option<f64> {
    if period == 0 || values.len() < period {
        return None;
    }
    let window = &values[values.len() - period..];
    Some(window.iter().sum::<f64>() / period as f64)
}

/// Exponential moving average at every value from the `period`-th on: seeded with
/// the SMA of the first `period` values, then `ema = ema + α × (value − ema)` with
/// `α = 2 / (period + 1)`. Empty when there are fewer than `period` values.
pub fn ema_series(values: &[f64], period: usize) -> Vec<f64> {
    if period == 0 || values.len() < period {
        return Vec::new();
    }
    let alpha = 2.0 / (period as f64 + 1.0);
    let mut current = values[..period].iter().sum::<f64>() / period as f64;
    let mut series = Vec::with_capacity(values.len() - period + 1);
    series.push(current);
    for value in &values[period..] {
        current += alpha * (value - current);
        series.push(current);
    }
    series
}

/// Exponential moving average at the latest value (see [`ema_series`]).
pub fn ema(values: &[f64], period: usize) -> Option<f64> {
    ema_series(values, period).last().copied()
}

/// Moving average convergence/divergence at the latest value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Macd {
    /// EMA(fast) − EMA(slow).
    pub line: f64,
    /// EMA(signal) of the line.
    pub signal: f64,
    /// line − signal.
    pub histogram: f64,
}

/// MACD with the given periods: the line is EMA(`fast`) − EMA(`slow`) (each as in
/// [`ema_series`]) from the `slow`-th value on, the signal the EMA(`signal`) of the
/// line. Needs `slow + signal − 1` values. [`macd_standard`] is 12/26/9.
pub fn macd(values: &[f64], fast: usize, slow: usize, signal: usize) -> Option<Macd> {
    if fast == 0 || slow == 0 || signal == 0 || values.len() < slow.max(fast) + signal - 1 {
        return None;
    }
    let fast_series = ema_series(values, fast);
    let slow_series = ema_series(values, slow);
    // Align both at the last values: the shorter series decides the length.
    let len = fast_series.len().min(slow_series.len());
    let line: Vec<f64> = fast_series[fast_series.len() - len..]
        .iter()
        .zip(&slow_series[slow_series.len() - len..])
        .map(|(f, s)| f - s)
        .collect();
    let line_now = *line.last()?;
    let signal_now = ema(&line, signal)?;
    Some(Macd {
        line: line_now,
        signal: signal_now,
        histogram: line_now - signal_now,
    })
}

/// MACD 12/26/9 (needs 34 values).
pub fn macd_standard(values: &[f64]) -> Option<Macd> {
    macd(values, MACD_FAST, MACD_SLOW, MACD_SIGNAL)
}

/// Relative strength index with Wilder's smoothing, 0–100: the first average gain
/// and loss are the means over the first `period` changes, then each next change
/// `c` gives `avg = (avg × (period − 1) + c) / period`; RSI = 100 − 100 / (1 + gain
/// / loss). Only gains gives 100, no change at all 50. Needs `period + 1` values.
pub fn rsi(values: &[f64], period: usize) -> Option<f64> {
    if period == 0 || values.len() < period + 1 {
        return None;
    }
    let changes: Vec<f64> = values.windows(2).map(|w| w[1] - w[0]).collect();
    let p = period as f64;
    let mut gain = changes[..period].iter().map(|c| c.max(0.0)).sum::<f64>() / p;
    let mut loss = changes[..period].iter().map(|c| (-c).max(0.0)).sum::<f64>() / p;
    for change in &changes[period..] {
        gain = (gain * (p - 1.0) + change.max(0.0)) / p;
        loss = (loss * (p - 1.0) + (-change).max(0.0)) / p;
    }
    Some(if loss == 0.0 {
        if gain == 0.0 {
            50.0
        } else {
            100.0
        }
    } else {
        100.0 - 100.0 / (1.0 + gain / loss)
    })
}

/// The latest bar's volume as a multiple of the average volume of the `period`
/// bars before it (the latest bar is not in its own average). `None` with fewer
/// than `period + 1` bars or an average of 0 (no volume data).
pub fn relative_volume(bars: &[Bar], period: usize) -> Option<f64> {
    let (latest, before) = bars.split_last()?;
    if period == 0 || before.len() < period {
        return None;
    }
    let average = before[before.len() - period..]
        .iter()
        .map(|bar| bar.volume)
        .sum::<f64>()
        / period as f64;
    (average > 0.0).then(|| latest.volume / average)
}

/// How far the latest close is below the 52-week high, as a fraction of that high:
/// `(high − close) / high`, 0 at the high, 0.25 a quarter below it. The high is the
/// highest `high` of the bars in the window, the latest included:
/// - daily bars (`interval` of one day): the last [`DAILY_BARS_52W`] (252) bars;
/// - any other interval, by time: the bars less than [`WEEKS_52`] (364 days) older
///   than the latest.
///
/// With less history than the window, the bars there are. `None` without bars or
/// with a high that is not above 0.
pub fn distance_to_52w_high(bars: &[Bar], interval: Duration) -> Option<f64> {
    let latest = bars.last()?;
    let window = if interval == Duration::from_secs(86_400) {
        &bars[bars.len().saturating_sub(DAILY_BARS_52W)..]
    } else {
        let since = latest.ts - WEEKS_52;
        let first = bars.partition_point(|bar| bar.ts <= since);
        &bars[first..]
    };
    let high = window
        .iter()
        .map(|bar| bar.high)
        .fold(f64::NEG_INFINITY, f64::max);
    (high > 0.0).then(|| (high - latest.close) / high)
}

/// The closes of `bars`, in order.
pub fn closes(bars: &[Bar]) -> Vec<f64> {
    bars.iter().map(|bar| bar.close).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::assert_close;
    use chrono::{DateTime, Utc};

    fn day(n: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + n * 86_400, 0).unwrap()
    }

    fn bar(ts: DateTime<Utc>, high: f64, close: f64, volume: f64) -> Bar {
        Bar {
            ts,
            open: close,
            high,
            low: close,
            close,
            volume,
        }
    }

    #[test]
    fn sma_is_the_mean_of_the_last_values() {
        // (3 + 4 + 5) / 3 = 4
        assert_close(sma(&[1.0, 2.0, 3.0, 4.0, 5.0], 3), 4.0);
        assert_eq!(sma(&[1.0, 2.0], 3), None);
        assert_eq!(sma(&[1.0], 0), None);
    }

    #[test]
    fn ema_is_seeded_with_the_sma_then_smoothed() {
        // period 3, α = 2/4 = 0.5: seed (1 + 2 + 4) / 3 = 7/3;
        // 8 → 7/3 + 0.5 × (8 − 7/3) = 31/6; 16 → 31/6 + 0.5 × (16 − 31/6) = 127/12.
        let values = [1.0, 2.0, 4.0, 8.0, 16.0];
        let series = ema_series(&values, 3);
        assert_eq!(series.len(), 3);
        assert_close(Some(series[0]), 7.0 / 3.0);
        assert_close(Some(series[1]), 31.0 / 6.0);
        assert_close(ema(&values, 3), 127.0 / 12.0);
        assert_eq!(ema(&values, 6), None);
        // A constant series has its value as EMA.
        assert_close(ema(&[5.0; 30], 12), 5.0);
    }

    #[test]
    fn macd_by_hand_with_small_periods() {
        // fast 2 (α = 2/3), slow 3 (α = 1/2), signal 2, on 1 2 4 8 16:
        // EMA2: seed 1.5; 4 → 19/6; 8 → 115/18; 16 → 691/54.
        // EMA3: seed 7/3; 8 → 31/6; 16 → 127/12.
        // line: 19/6 − 7/3 = 5/6; 115/18 − 31/6 = 11/9; 691/54 − 127/12 = 239/108.
        // signal EMA2 of the line: seed (5/6 + 11/9) / 2 = 37/36;
        //   239/108 → 37/36 + 2/3 × (239/108 − 37/36) = 589/324.
        // histogram: 239/108 − 589/324 = 32/81.
        let m = macd(&[1.0, 2.0, 4.0, 8.0, 16.0], 2, 3, 2).unwrap();
        assert_close(Some(m.line), 239.0 / 108.0);
        assert_close(Some(m.signal), 589.0 / 324.0);
        assert_close(Some(m.histogram), 32.0 / 81.0);
        // slow + signal − 1 = 4 values are the least it needs.
        assert!(macd(&[1.0, 2.0, 4.0, 8.0], 2, 3, 2).is_some());
        assert!(macd(&[1.0, 2.0, 4.0], 2, 3, 2).is_none());
    }

    #[test]
    fn standard_macd_needs_34_values_and_is_zero_on_a_flat_series() {
        assert!(macd_standard(&[100.0; 33]).is_none());
        let m = macd_standard(&[100.0; 34]).unwrap();
        assert_eq!((m.line, m.signal, m.histogram), (0.0, 0.0, 0.0));
        // A rising series: the fast EMA leads, the line is positive.
        let rising: Vec<f64> = (0..60).map(|i| 100.0 + i as f64).collect();
        assert!(macd_standard(&rising).unwrap().line > 0.0);
    }

    #[test]
    fn rsi_uses_wilder_smoothing() {
        // period 3 on 10 11 10 12 13: changes +1 −1 +2 +1.
        // First averages over +1 −1 +2: gain (1 + 0 + 2)/3 = 1, loss (0 + 1 + 0)/3 = 1/3.
        // Wilder with +1: gain (1 × 2 + 1)/3 = 1, loss (1/3 × 2 + 0)/3 = 2/9.
        // RS = 1 / (2/9) = 4.5; RSI = 100 − 100 / 5.5 = 900/11.
        assert_close(rsi(&[10.0, 11.0, 10.0, 12.0, 13.0], 3), 900.0 / 11.0);
        assert_eq!(rsi(&[10.0, 11.0, 10.0], 3), None);
        assert_close(rsi(&[1.0, 2.0, 3.0, 4.0], 3), 100.0);
        assert_close(rsi(&[4.0, 3.0, 2.0, 1.0], 3), 0.0);
        assert_close(rsi(&[2.0; 15], RSI_PERIOD), 50.0);
    }

    #[test]
    fn relative_volume_compares_with_the_bars_before() {
        // The 3 bars before: (1 + 2 + 3) / 3 = 2; the latest 6 is 3 times that.
        let bars: Vec<Bar> = [1.0, 2.0, 3.0, 6.0]
            .iter()
            .enumerate()
            .map(|(i, v)| bar(day(i as i64), 10.0, 10.0, *v))
            .collect();
        assert_close(relative_volume(&bars, 3), 3.0);
        assert_eq!(relative_volume(&bars, 4), None, "too few bars");
        let silent: Vec<Bar> = bars.iter().map(|b| Bar { volume: 0.0, ..*b }).collect();
        assert_eq!(relative_volume(&silent, 3), None, "no volume data");
    }

    #[test]
    fn distance_to_52w_high_of_daily_bars_is_over_252_bars() {
        // 300 daily bars with high 100; bar 10 (outside the last 252, which start at
        // bar 48) has a high of 500, bar 100 (inside) of 200; the last close is 150:
        // (200 − 150) / 200 = 0.25.
        let mut bars: Vec<Bar> = (0..300).map(|i| bar(day(i), 100.0, 90.0, 1.0)).collect();
        bars[10].high = 500.0;
        bars[100].high = 200.0;
        bars[299] = bar(day(299), 150.0, 150.0, 1.0);
        let daily = Duration::from_secs(86_400);
        assert_close(distance_to_52w_high(&bars, daily), 0.25);
        // Bar 48 is the oldest in the window, bar 47 is not.
        bars[47].high = 400.0;
        assert_close(distance_to_52w_high(&bars, daily), 0.25);
        bars[48].high = 300.0;
        assert_close(distance_to_52w_high(&bars, daily), 0.5);
        assert_eq!(distance_to_52w_high(&[], daily), None);
    }

    #[test]
    fn distance_to_52w_high_of_other_bars_is_over_364_days() {
        // Hourly bars: the one 400 days back (high 1000) is out, the one 10 days back
        // (high 120) is in; the latest closes at 90: (120 − 90) / 120 = 0.25. A bar
        // exactly 364 days back is out, one a second later is in.
        let hourly = Duration::from_secs(3600);
        let mut bars = vec![
            bar(day(0), 1000.0, 1000.0, 1.0),
            bar(day(36), 200.0, 200.0, 1.0),
            bar(day(390), 120.0, 110.0, 1.0),
            bar(day(400), 100.0, 90.0, 1.0),
        ];
        assert_close(distance_to_52w_high(&bars, hourly), 0.25);
        bars[1].ts = day(36) + TimeDelta::seconds(1);
        assert_close(distance_to_52w_high(&bars, hourly), (200.0 - 90.0) / 200.0);
        // At the high: 0.
        bars.push(bar(day(401), 210.0, 210.0, 1.0));
        assert_close(distance_to_52w_high(&bars, hourly), 0.0);
    }
}

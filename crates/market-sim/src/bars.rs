//! Historical bars for `enginectl data generate`: securities with names and sectors,
//! and OHLCV bars by geometric Brownian motion, seeded so that the same seed, symbol,
//! interval and span always give the same bars.
//!
//! Each symbol has its own generator, seeded from the seed and the symbol's name
//! (FNV-1a, then SplitMix64), so a symbol's bars do not depend on which other symbols
//! are generated with it, and the same symbol gets the same name, sector, drift,
//! volatility and price level at every interval.
//!
//! One bar: the open is the last close moved by a small gap; the close follows the
//! GBM step S·exp((μ − σ²/2)·dt + σ·√dt·Z) over the bar; the high and the low reach
//! beyond the open and the close by half-normal excursions of the bar's σ·√dt, so
//! `low ≤ open, close ≤ high` and every price is positive (prices are rounded to
//! cents, or to 1/10,000 below 1, which keeps that order). Volume is the symbol's
//! daily level scaled to the bar, log-normal noise, more on bigger moves, and
//! bursts: with probability 2 % a bar starts 1–4 bars at 3–8× the usual volume.

use crate::{StandardNormal, SECONDS_PER_YEAR};
use chrono::{DateTime, TimeDelta, Utc};
use engine_protocol::runs::bars_file::Bar;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

/// A bar size: its word in `market_bars.interval` and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BarInterval {
    seconds: u64,
}

const UNITS: [(char, u64); 5] = [
    ('w', 604_800),
    ('d', 86_400),
    ('h', 3_600),
    ('m', 60),
    ('s', 1),
];

impl BarInterval {
    pub fn from_seconds(seconds: u64) -> Option<BarInterval> {
        (seconds > 0).then_some(BarInterval { seconds })
    }

    pub fn seconds(self) -> u64 {
        self.seconds
    }

    pub fn delta(self) -> TimeDelta {
        TimeDelta::seconds(self.seconds as i64)
    }
}

/// The canonical word: the largest unit that divides the length (`60m` is `1h`).
impl fmt::Display for BarInterval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (unit, size) = UNITS
            .iter()
            .find(|(_, size)| self.seconds.is_multiple_of(*size))
            .copied()
            .unwrap_or(('s', 1));
        write!(f, "{}{unit}", self.seconds / size)
    }
}

/// A word that is not a bar size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a bar interval; write a count and a unit: 1m, 5m, 15m, 1h, 4h, 1d, 1w (units s, m, h, d, w)")]
pub struct BadInterval(pub String);

impl FromStr for BarInterval {
    type Err = BadInterval;

    fn from_str(word: &str) -> Result<Self, Self::Err> {
        let bad = || BadInterval(word.to_string());
        let word = word.trim();
        let unit = word.chars().last().ok_or_else(bad)?;
        let size = UNITS
            .iter()
            .find(|(u, _)| *u == unit)
            .map(|(_, size)| *size)
            .ok_or_else(bad)?;
        let count: u64 = word[..word.len() - 1].parse().map_err(|_| bad())?;
        count
            .checked_mul(size)
            .and_then(BarInterval::from_seconds)
            .ok_or_else(bad)
    }
}

/// The economic sectors securities are spread over (GICS).
pub const SECTORS: [&str; 11] = [
    "Communication Services",
    "Consumer Discretionary",
    "Consumer Staples",
    "Energy",
    "Financials",
    "Health Care",
    "Industrials",
    "Information Technology",
    "Materials",
    "Real Estate",
    "Utilities",
];

const NAME_STEMS: [&str; 24] = [
    "Apex",
    "Blue Harbor",
    "Cedar",
    "Delta Ridge",
    "Evergreen",
    "Falcon",
    "Granite",
    "Horizon",
    "Ironwood",
    "Juniper",
    "Keystone",
    "Lumen",
    "Meridian",
    "Northwind",
    "Orion",
    "Pinnacle",
    "Quarry",
    "Redwood",
    "Summit",
    "Tidewater",
    "Unity",
    "Vanguard",
    "Westbrook",
    "Zenith",
];

/// A word of the company name per sector, so names read like the sector.
const SECTOR_WORDS: [&[&str]; 11] = [
    &["Media", "Telecom", "Networks", "Broadcasting"],
    &["Retail", "Motors", "Apparel", "Leisure"],
    &["Foods", "Beverages", "Household", "Farms"],
    &["Energy", "Petroleum", "Drilling", "Gas"],
    &["Bancorp", "Financial", "Capital", "Insurance"],
    &["Health", "Pharma", "Biosciences", "Medical"],
    &["Industries", "Aerospace", "Logistics", "Machinery"],
    &["Systems", "Software", "Semiconductor", "Data"],
    &["Materials", "Chemicals", "Mining", "Steel"],
    &["Realty", "Properties", "REIT", "Estates"],
    &["Power", "Utilities", "Water", "Electric"],
];

const COMPANY_SUFFIXES: [&str; 5] = ["Inc.", "Corp.", "Holdings", "Group", "Co."];

/// How generated symbols are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SymbolNames {
    /// Three- and four-letter tickers that read like real ones (`KOVA`, `BRIX`).
    #[default]
    Tickers,
    /// `SYM0001`, `SYM0002`, ...
    Numbered,
}

/// `count` distinct symbols, the same for the same seed.
pub fn symbols(count: usize, names: SymbolNames, seed: u64) -> Vec<String> {
    match names {
        SymbolNames::Numbered => (1..=count).map(|i| format!("SYM{i:04}")).collect(),
        SymbolNames::Tickers => tickers(count, seed),
    }
}

fn tickers(count: usize, seed: u64) -> Vec<String> {
    const CONSONANTS: &[u8] = b"BCDFGHJKLMNPRSTVWXZ";
    const VOWELS: &[u8] = b"AEIOUY";
    let mut rng = StdRng::seed_from_u64(mix(seed, 0x7469_636b_6572));
    let mut seen = HashSet::with_capacity(count);
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        // Consonant-vowel patterns (KOV, BRIX, TAMO); five letters once the short
        // ones run out.
        let long = seen.len() > 9_000;
        let pattern: &[bool] = match (rng.random_range(0..4u8), long) {
            (_, true) => &[true, false, true, false, true],
            (0, _) => &[true, false, true],
            (1, _) => &[true, true, false, true],
            (2, _) => &[true, false, true, false],
            _ => &[false, true, false, true],
        };
        let ticker: String = pattern
            .iter()
            .map(|&consonant| {
                let set = if consonant { CONSONANTS } else { VOWELS };
                set[rng.random_range(0..set.len())] as char
            })
            .collect();
        if seen.insert(ticker.clone()) {
            out.push(ticker);
        }
    }
    out
}

/// A generated security: what `securities` gets, and its price process.
#[derive(Debug, Clone, PartialEq)]
pub struct SimSecurity {
    pub symbol: String,
    pub name: String,
    pub sector: &'static str,
    /// Annual drift μ and volatility σ.
    pub drift: f64,
    pub volatility: f64,
    /// The price of the first bar's open.
    pub initial_price: f64,
    /// Usual volume of a day.
    pub daily_volume: f64,
}

impl SimSecurity {
    /// The security `symbol` is under `seed`.
    pub fn new(symbol: &str, seed: u64) -> SimSecurity {
        let mut rng = StdRng::seed_from_u64(symbol_seed(seed, symbol, 1));
        let sector_index = rng.random_range(0..SECTORS.len());
        let words = SECTOR_WORDS[sector_index];
        let name = format!(
            "{} {} {}",
            NAME_STEMS[rng.random_range(0..NAME_STEMS.len())],
            words[rng.random_range(0..words.len())],
            COMPANY_SUFFIXES[rng.random_range(0..COMPANY_SUFFIXES.len())]
        );
        let mut normal = StandardNormal::new();
        SimSecurity {
            symbol: symbol.to_string(),
            name,
            sector: SECTORS[sector_index],
            drift: rng.random_range(-0.10..0.25),
            volatility: rng.random_range(0.15..0.60),
            // Log-normal around 60, mostly between 5 and 700.
            initial_price: round_price((60f64.ln() + 1.2 * normal.sample(&mut rng)).exp()),
            daily_volume: (14.0 + 1.0 * normal.sample(&mut rng)).exp().round(),
        }
    }

    /// This security's bars: `count` bars of `interval`, the first opening at
    /// `first`.
    pub fn bars(
        &self,
        interval: BarInterval,
        first: DateTime<Utc>,
        count: u64,
        seed: u64,
    ) -> SimBars {
        let dt = interval.seconds() as f64 / SECONDS_PER_YEAR;
        let vol_step = self.volatility * dt.sqrt();
        SimBars {
            rng: StdRng::seed_from_u64(symbol_seed(seed, &self.symbol, interval.seconds())),
            normal: StandardNormal::new(),
            close: self.initial_price,
            drift_step: (self.drift - self.volatility * self.volatility / 2.0) * dt,
            vol_step,
            bar_volume: self.daily_volume * interval.seconds() as f64 / 86_400.0,
            next_ts: first,
            step: interval.delta(),
            left: count,
            burst_left: 0,
            burst: 1.0,
        }
    }
}

/// The bars of one security, in time order.
#[derive(Debug, Clone)]
pub struct SimBars {
    rng: StdRng,
    normal: StandardNormal,
    close: f64,
    drift_step: f64,
    vol_step: f64,
    bar_volume: f64,
    next_ts: DateTime<Utc>,
    step: TimeDelta,
    left: u64,
    burst_left: u32,
    burst: f64,
}

/// Chance that a bar starts a burst of volume.
const BURST_CHANCE: f64 = 0.02;

impl Iterator for SimBars {
    type Item = Bar;

    fn next(&mut self) -> Option<Bar> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let rng = &mut self.rng;
        let normal = &mut self.normal;
        let gap = 0.1 * self.vol_step * normal.sample(rng);
        let open = clamp_price(self.close * gap.exp());
        let z = normal.sample(rng);
        let close = clamp_price(open * (self.drift_step + self.vol_step * z).exp());
        let up = 0.5 * self.vol_step * normal.sample(rng).abs();
        let down = 0.5 * self.vol_step * normal.sample(rng).abs();
        let high = open.max(close) * up.exp();
        let low = open.min(close) * (-down).exp();
        if self.burst_left > 0 {
            self.burst_left -= 1;
        } else if rng.random::<f64>() < BURST_CHANCE {
            self.burst_left = rng.random_range(0..4u32);
            self.burst = rng.random_range(3.0..8.0);
        } else {
            self.burst = 1.0;
        }
        let noise = (0.3 * normal.sample(rng) - 0.045).exp();
        let volume = (self.bar_volume * noise * (1.0 + 0.5 * z.abs()) * self.burst).round();
        let ts = self.next_ts;
        self.next_ts += self.step;
        self.close = close;
        Some(Bar {
            ts,
            open: round_price(open),
            high: round_price(high),
            low: round_price(low),
            close: round_price(close),
            volume,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = usize::try_from(self.left).unwrap_or(usize::MAX);
        (left, Some(left))
    }
}

fn clamp_price(price: f64) -> f64 {
    price.clamp(0.0001, 1e9)
}

/// Cents, or 1/10,000 below 1: monotonic, so the order of open, high, low and
/// close survives, and never below 0.0001.
fn round_price(price: f64) -> f64 {
    let scale = if price >= 1.0 { 100.0 } else { 10_000.0 };
    ((price * scale).round() / scale).max(0.0001)
}

/// The seed of one symbol's generator: FNV-1a of its name, mixed with the seed and
/// a stream number.
fn symbol_seed(seed: u64, symbol: &str, stream: u64) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in symbol.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    mix(mix(seed, hash), stream)
}

/// SplitMix64 of `a` combined with `b`.
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The bar times of a span: `count` bars of `interval` ending with the bar that
/// contains `end` (its open at or before `end`, aligned to the interval since the
/// Unix epoch). Returns the first bar's open.
pub fn first_bar(end: DateTime<Utc>, interval: BarInterval, count: u64) -> DateTime<Utc> {
    let size = interval.seconds() as i64;
    let last = end.timestamp().div_euclid(size) * size;
    let first = last - (count as i64 - 1) * size;
    DateTime::from_timestamp(first, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// How many bars of `interval` a span holds (at least one).
pub fn bars_in_span(span: std::time::Duration, interval: BarInterval) -> u64 {
    (span.as_secs() / interval.seconds()).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_words() {
        for (word, seconds, shown) in [
            ("1m", 60, "1m"),
            ("60m", 3600, "1h"),
            ("1d", 86_400, "1d"),
            ("24h", 86_400, "1d"),
            ("15m", 900, "15m"),
            ("7d", 604_800, "1w"),
            ("90s", 90, "90s"),
        ] {
            let interval: BarInterval = word.parse().unwrap();
            assert_eq!(interval.seconds(), seconds, "{word}");
            assert_eq!(interval.to_string(), shown, "{word}");
        }
        for bad in ["", "d", "0m", "1y", "1.5h", "-1d"] {
            let err = bad.parse::<BarInterval>().unwrap_err().to_string();
            assert!(err.contains("1m, 5m, 15m, 1h"), "{bad}: {err}");
        }
    }

    #[test]
    fn same_seed_same_bars_and_order_holds() {
        let sec = SimSecurity::new("KOVA", 7);
        assert_eq!(sec, SimSecurity::new("KOVA", 7));
        assert_ne!(sec.initial_price, SimSecurity::new("KOVA", 8).initial_price);
        let interval: BarInterval = "1d".parse().unwrap();
        let first = first_bar(Utc::now(), interval, 730);
        let a: Vec<Bar> = sec.bars(interval, first, 730, 7).collect();
        let b: Vec<Bar> = sec.bars(interval, first, 730, 7).collect();
        assert_eq!(a, b);
        assert_eq!(a.len(), 730);
        let mut bursts = 0;
        for (i, bar) in a.iter().enumerate() {
            assert!(bar.low > 0.0, "{bar:?}");
            assert!(bar.low <= bar.open.min(bar.close), "{bar:?}");
            assert!(bar.high >= bar.open.max(bar.close), "{bar:?}");
            assert!(bar.volume >= 0.0);
            if i > 0 {
                assert_eq!(bar.ts - a[i - 1].ts, TimeDelta::days(1));
            }
            if i >= 20 {
                let mean = a[i - 20..i].iter().map(|b| b.volume).sum::<f64>() / 20.0;
                bursts += usize::from(bar.volume > 2.5 * mean);
            }
        }
        assert!(bursts >= 3, "volume bursts: {bursts}");
    }

    #[test]
    fn symbols_are_distinct_and_stable() {
        let t = symbols(2000, SymbolNames::Tickers, 1);
        assert_eq!(t.len(), 2000);
        assert_eq!(t.iter().collect::<HashSet<_>>().len(), 2000);
        assert_eq!(t, symbols(2000, SymbolNames::Tickers, 1));
        assert!(t.iter().all(|s| (3..=5).contains(&s.len())));
        assert_eq!(symbols(2, SymbolNames::Numbered, 1), ["SYM0001", "SYM0002"]);
    }

    #[test]
    fn bar_times_end_with_the_bar_holding_the_end() {
        let end = DateTime::parse_from_rfc3339("2025-06-30T13:45:10Z")
            .unwrap()
            .with_timezone(&Utc);
        let day: BarInterval = "1d".parse().unwrap();
        assert_eq!(
            first_bar(end, day, 3).to_rfc3339(),
            "2025-06-28T00:00:00+00:00"
        );
        let minute: BarInterval = "1m".parse().unwrap();
        assert_eq!(
            first_bar(end, minute, 1).to_rfc3339(),
            "2025-06-30T13:45:00+00:00"
        );
        assert_eq!(
            bars_in_span(std::time::Duration::from_secs(2 * 365 * 86_400), day),
            730
        );
    }
}

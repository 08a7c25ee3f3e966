//! The market data simulator: geometric Brownian motion prices for a set of tokens,
//! published as [`Tick`]s on `live_data:{token}` for the strategies to trade on.
//!
//! # Layout
//! - [`bars`]: historical OHLCV bars and securities for `enginectl data generate`
//!   (seeded GBM per symbol, volume with bursts).
//! - [`StandardNormal`] and [`GbmTicker`]: the pure math (Box–Muller normals, one
//!   token's price process), seeded and deterministic.
//! - [`Market`]: every token's ticker stepping together, producing ticks with a
//!   volume and a bid/ask around the price.
//! - [`Flags`] → [`SimConfig`]: the command line and its validated form.
//! - [`run`]: the publishing loop: pacing, one Redis pipeline per wake-up, surviving
//!   Redis outages (ticks are dropped, not queued, while Redis is away), progress
//!   logs, shutdown on a [`CancellationToken`].
//!
//! Prices follow S(t+dt) = S(t) · exp((μ − σ²/2)·dt + σ·√dt·Z) with Z standard
//! normal, μ the annual drift, σ the annualised volatility and dt in years of
//! simulated time: each real second covers `time_scale` simulated seconds.

pub mod bars;

use chrono::{DateTime, Utc};
use clap::Parser;
use engine_protocol::backoff::Backoff;
use engine_protocol::{Channels, Tick};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Seconds in a (Julian) year: the unit of the drift and the volatility.
pub const SECONDS_PER_YEAR: f64 = 365.25 * 86_400.0;

/// Prices are kept within these bounds so that an extreme volatility over a long run
/// can neither underflow to zero nor overflow to infinity.
pub const MIN_PRICE: f64 = 1e-9;
pub const MAX_PRICE: f64 = 1e15;

/// Half the bid/ask spread, as a share of the price (a 1 basis point spread).
const HALF_SPREAD: f64 = 0.5e-4;

/// Mean traded value of one tick, in quote currency; the volume is random around it.
const MEAN_TICK_NOTIONAL: f64 = 5_000.0;

/// Starting price of a token without a known level or an `--initial-price`.
pub const DEFAULT_INITIAL_PRICE: f64 = 100.0;

/// Usual price levels of well-known base assets, for default starting prices.
const KNOWN_PRICES: [(&str, f64); 5] = [
    ("BTC", 65_000.0),
    ("ETH", 3_500.0),
    ("SOL", 150.0),
    ("XRP", 0.6),
    ("DOGE", 0.15),
];

/// Shortest wait between two publishing rounds: at higher rates several rounds go
/// out in one pipeline (the tokio timer's resolution is a millisecond).
const MIN_WAKE: Duration = Duration::from_millis(5);

/// How often progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// A publish that takes longer than this counts as a failure.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(3);

/// Backoff between reconnection attempts while Redis is away.
const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------
// The math
// ---------------------------------------------------------------------------------

/// Standard normal samples by the Box–Muller transform: each pair of uniforms gives
/// two independent normals, the second kept for the next call.
#[derive(Debug, Clone, Default)]
pub struct StandardNormal {
    spare: Option<f64>,
}

impl StandardNormal {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn sample<R: Rng + ?Sized>(&mut self, rng: &mut R) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        // u1 in (0, 1] so that ln(u1) is finite; u2 in [0, 1).
        let u1 = 1.0 - rng.random::<f64>();
        let u2 = rng.random::<f64>();
        let radius = (-2.0 * u1.ln()).sqrt();
        let angle = std::f64::consts::TAU * u2;
        self.spare = Some(radius * angle.sin());
        radius * angle.cos()
    }
}

/// One token's geometric Brownian motion with a fixed time step.
#[derive(Debug, Clone, PartialEq)]
pub struct GbmTicker {
    price: f64,
    /// (μ − σ²/2)·dt
    drift_per_step: f64,
    /// σ·√dt
    vol_per_step: f64,
}

impl GbmTicker {
    /// `drift` and `volatility` are annual; `dt_years` is the step in years.
    pub fn new(initial_price: f64, drift: f64, volatility: f64, dt_years: f64) -> Self {
        GbmTicker {
            price: initial_price.clamp(MIN_PRICE, MAX_PRICE),
            drift_per_step: (drift - volatility * volatility / 2.0) * dt_years,
            vol_per_step: volatility * dt_years.sqrt(),
        }
    }

    pub fn price(&self) -> f64 {
        self.price
    }

    /// σ·√dt: the standard deviation of one step's log return.
    pub fn step_std(&self) -> f64 {
        self.vol_per_step
    }

    /// Advance one step with the standard normal draw `z`; returns the new price.
    pub fn step_with(&mut self, z: f64) -> f64 {
        let next = self.price * (self.drift_per_step + self.vol_per_step * z).exp();
        self.price = if next.is_finite() {
            next.clamp(MIN_PRICE, MAX_PRICE)
        } else {
            MAX_PRICE
        };
        self.price
    }

    /// Advance one step, drawing from `rng`.
    pub fn step<R: Rng + ?Sized>(&mut self, normal: &mut StandardNormal, rng: &mut R) -> f64 {
        let z = normal.sample(rng);
        self.step_with(z)
    }
}

/// Every simulated token, stepping together from one seeded generator.
#[derive(Debug, Clone)]
pub struct Market {
    tokens: Vec<(String, GbmTicker)>,
    rng: StdRng,
    normal: StandardNormal,
}

impl Market {
    /// `tokens` are (name, initial price); `dt_years` is one round's step.
    pub fn new(
        tokens: &[(String, f64)],
        drift: f64,
        volatility: f64,
        dt_years: f64,
        seed: u64,
    ) -> Self {
        Market {
            tokens: tokens
                .iter()
                .map(|(token, price)| {
                    (
                        token.clone(),
                        GbmTicker::new(*price, drift, volatility, dt_years),
                    )
                })
                .collect(),
            rng: StdRng::seed_from_u64(seed),
            normal: StandardNormal::new(),
        }
    }

    pub fn from_config(config: &SimConfig) -> Self {
        Market::new(
            &config.tokens,
            config.drift,
            config.volatility,
            config.dt_years(),
            config.seed,
        )
    }

    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }

    /// One round: every token moves one step; its tick is appended to `out`, in the
    /// order of the tokens.
    pub fn step_into(&mut self, timestamp: DateTime<Utc>, out: &mut Vec<Tick>) {
        for (token, ticker) in &mut self.tokens {
            let price = ticker.step(&mut self.normal, &mut self.rng);
            // Exponentially distributed around the mean notional.
            let u = 1.0 - self.rng.random::<f64>();
            let volume = -u.ln() * MEAN_TICK_NOTIONAL / price;
            let half_spread = price * HALF_SPREAD;
            out.push(Tick {
                token: token.clone(),
                price,
                timestamp,
                volume: Some(volume),
                bid: Some(price - half_spread),
                ask: Some(price + half_spread),
            });
        }
    }

    /// One round, as a new vector.
    pub fn step(&mut self, timestamp: DateTime<Utc>) -> Vec<Tick> {
        let mut out = Vec::with_capacity(self.tokens.len());
        self.step_into(timestamp, &mut out);
        out
    }

    /// `BTC-USD=65012.31 ETH-USD=3499.87`, for logs.
    pub fn price_summary(&self) -> String {
        let mut s = String::new();
        for (token, ticker) in &self.tokens {
            if !s.is_empty() {
                s.push(' ');
            }
            let _ = write!(s, "{token}={}", format_price(ticker.price()));
        }
        s
    }
}

/// Four significant decimals at least, two at most above 1000.
fn format_price(price: f64) -> String {
    if price >= 1000.0 {
        format!("{price:.2}")
    } else if price >= 1.0 {
        format!("{price:.4}")
    } else {
        format!("{price:.6e}")
    }
}

/// The default starting price of `token`: the usual level of its base asset (the part
/// before `-`, `/` or `_`) when known, else [`DEFAULT_INITIAL_PRICE`].
pub fn default_initial_price(token: &str) -> f64 {
    let base = token
        .split(['-', '/', '_'])
        .next()
        .unwrap_or(token)
        .to_ascii_uppercase();
    KNOWN_PRICES
        .iter()
        .find(|(known, _)| *known == base)
        .map_or(DEFAULT_INITIAL_PRICE, |(_, price)| *price)
}

// ---------------------------------------------------------------------------------
// Flags and config
// ---------------------------------------------------------------------------------

/// Publishes simulated market ticks (geometric Brownian motion) on `live_data:{token}`.
#[derive(Debug, Clone, Parser)]
#[command(name = "market-sim", version)]
pub struct Flags {
    /// Redis server to publish on.
    // hide_env_values: the URL may carry a password, never shown in `--help`.
    #[arg(
        long,
        env = "REDIS_URL",
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,

    /// Prefix of every channel name (empty gives the contract's names).
    #[arg(long, env = "ENGINE_REDIS_PREFIX", default_value = "")]
    pub redis_prefix: String,

    /// Tokens to simulate, comma-separated.
    #[arg(
        long,
        env = "MARKET_SIM_TOKENS",
        value_delimiter = ',',
        default_value = "BTC-USD,ETH-USD,SOL-USD"
    )]
    pub tokens: Vec<String>,

    /// Starting prices, e.g. `BTC-USD=65000,ETH-USD=3500`. Tokens not given start at
    /// their usual level if known (BTC 65000, ETH 3500, SOL 150, XRP 0.6, DOGE 0.15),
    /// else at 100.
    #[arg(
        long = "initial-price",
        env = "MARKET_SIM_INITIAL_PRICES",
        value_delimiter = ',',
        value_parser = parse_initial_price
    )]
    pub initial_prices: Vec<(String, f64)>,

    /// Ticks per second per token (above 0, at most 100000).
    #[arg(
        long,
        env = "MARKET_SIM_RATE",
        default_value_t = 10.0,
        allow_negative_numbers = true
    )]
    pub rate: f64,

    /// Annualised volatility σ (0 to 10; 0.8 is a volatile crypto asset).
    #[arg(
        long,
        env = "MARKET_SIM_VOLATILITY",
        default_value_t = 0.8,
        allow_negative_numbers = true
    )]
    pub volatility: f64,

    /// Annual drift μ (-10 to 10).
    #[arg(
        long,
        env = "MARKET_SIM_DRIFT",
        default_value_t = 0.0,
        allow_negative_numbers = true
    )]
    pub drift: f64,

    /// Seed of the random generator, for a reproducible run (default: random, logged
    /// at start).
    #[arg(long, env = "MARKET_SIM_SEED")]
    pub seed: Option<u64>,

    /// Simulated seconds per real second (above 0, at most 10000000), so that prices
    /// visibly move.
    #[arg(
        long,
        env = "MARKET_SIM_TIME_SCALE",
        default_value_t = 60.0,
        allow_negative_numbers = true
    )]
    pub time_scale: f64,

    /// Publish this many ticks per token, then exit (default: run until stopped).
    #[arg(long, env = "MARKET_SIM_COUNT", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
}

fn parse_initial_price(s: &str) -> Result<(String, f64), String> {
    let (token, price) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}' is not TOKEN=PRICE (e.g. BTC-USD=65000)"))?;
    let price: f64 = price
        .trim()
        .parse()
        .map_err(|_| format!("'{}' in '{s}' is not a number", price.trim()))?;
    Ok((token.trim().to_string(), price))
}

/// A flag the simulator cannot run with.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("invalid --{flag}: {message}")]
    InvalidFlag { flag: &'static str, message: String },
    /// The URL is not printed: it may carry a password.
    #[error("invalid --redis-url (expected e.g. redis://127.0.0.1:6379)")]
    RedisUrl {
        #[source]
        source: redis::RedisError,
    },
}

fn invalid(flag: &'static str, message: impl Into<String>) -> SimError {
    SimError::InvalidFlag {
        flag,
        message: message.into(),
    }
}

/// A validated simulator configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    pub redis_url: String,
    pub redis_prefix: String,
    /// Each token with its starting price, in the order given.
    pub tokens: Vec<(String, f64)>,
    pub rate: f64,
    pub volatility: f64,
    pub drift: f64,
    pub seed: u64,
    pub time_scale: f64,
    pub count: Option<u64>,
}

impl SimConfig {
    pub const MAX_RATE: f64 = 100_000.0;
    pub const MAX_VOLATILITY: f64 = 10.0;
    pub const MAX_ABS_DRIFT: f64 = 10.0;
    pub const MAX_TIME_SCALE: f64 = 1e7;
    pub const MAX_TOKENS: usize = 10_000;

    /// Check the flags and fill in defaults (a random seed if none was given).
    pub fn from_flags(flags: Flags) -> Result<Self, SimError> {
        let tokens = Self::tokens_from_flags(&flags)?;
        Self::check_ranges(&flags)?;
        Ok(SimConfig {
            redis_url: flags.redis_url,
            redis_prefix: flags.redis_prefix,
            tokens,
            rate: flags.rate,
            volatility: flags.volatility,
            drift: flags.drift,
            seed: flags.seed.unwrap_or_else(rand::random),
            time_scale: flags.time_scale,
            count: flags.count,
        })
    }

    /// The tokens of `--tokens` (trimmed, unique) with their starting prices (a
    /// default per token, or `--initial-price`).
    fn tokens_from_flags(flags: &Flags) -> Result<Vec<(String, f64)>, SimError> {
        let mut tokens = Vec::new();
        let mut seen = BTreeSet::new();
        for token in &flags.tokens {
            let token = token.trim();
            if token.is_empty() {
                continue;
            }
            if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(invalid(
                    "tokens",
                    format!("{token:?} must not contain whitespace or control characters"),
                ));
            }
            if !seen.insert(token.to_string()) {
                return Err(invalid("tokens", format!("'{token}' is listed twice")));
            }
            tokens.push((token.to_string(), default_initial_price(token)));
        }
        if tokens.is_empty() {
            return Err(invalid(
                "tokens",
                "no token given; list at least one, e.g. BTC-USD,ETH-USD",
            ));
        }
        if tokens.len() > Self::MAX_TOKENS {
            return Err(invalid(
                "tokens",
                format!(
                    "{} tokens; at most {} allowed",
                    tokens.len(),
                    Self::MAX_TOKENS
                ),
            ));
        }
        for (token, price) in &flags.initial_prices {
            if !(price.is_finite() && *price > 0.0 && *price <= MAX_PRICE) {
                return Err(invalid(
                    "initial-price",
                    format!("{token}={price}: the price must be above 0 and at most {MAX_PRICE}"),
                ));
            }
            let Some(entry) = tokens.iter_mut().find(|(t, _)| t == token) else {
                return Err(invalid(
                    "initial-price",
                    format!(
                        "'{token}' is not among --tokens ({}); add it there too",
                        flags.tokens.join(",")
                    ),
                ));
            };
            entry.1 = *price;
        }
        Ok(tokens)
    }

    /// `--rate`, `--volatility`, `--drift` and `--time-scale` within their bounds.
    fn check_ranges(flags: &Flags) -> Result<(), SimError> {
        if !(flags.rate.is_finite() && flags.rate > 0.0 && flags.rate <= Self::MAX_RATE) {
            return Err(invalid(
                "rate",
                format!(
                    "{} is out of range; allowed: above 0, at most {}",
                    flags.rate,
                    Self::MAX_RATE
                ),
            ));
        }
        if !(flags.volatility.is_finite()
            && (0.0..=Self::MAX_VOLATILITY).contains(&flags.volatility))
        {
            return Err(invalid(
                "volatility",
                format!(
                    "{} is out of range; allowed: 0 to {}",
                    flags.volatility,
                    Self::MAX_VOLATILITY
                ),
            ));
        }
        if !(flags.drift.is_finite() && flags.drift.abs() <= Self::MAX_ABS_DRIFT) {
            return Err(invalid(
                "drift",
                format!(
                    "{} is out of range; allowed: -{max} to {max}",
                    flags.drift,
                    max = Self::MAX_ABS_DRIFT
                ),
            ));
        }
        if !(flags.time_scale.is_finite()
            && flags.time_scale > 0.0
            && flags.time_scale <= Self::MAX_TIME_SCALE)
        {
            return Err(invalid(
                "time-scale",
                format!(
                    "{} is out of range; allowed: above 0, at most {}",
                    flags.time_scale,
                    Self::MAX_TIME_SCALE
                ),
            ));
        }
        Ok(())
    }

    /// The simulated time between two ticks of a token, in years.
    pub fn dt_years(&self) -> f64 {
        self.time_scale / self.rate / SECONDS_PER_YEAR
    }
}

// ---------------------------------------------------------------------------------
// Publishing
// ---------------------------------------------------------------------------------

/// What a run did, returned when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimSummary {
    /// Rounds (one tick per token) that reached Redis.
    pub rounds_published: u64,
    pub ticks_published: u64,
    /// Ticks generated while Redis was unreachable, never sent.
    pub ticks_dropped: u64,
}

enum PublishOutcome {
    Published,
    Dropped,
    Cancelled,
}

/// Redis is away since `since`; the next attempt is not before `next_attempt`.
struct Outage {
    since: Instant,
    next_attempt: Instant,
    backoff: Backoff,
    dropped: u64,
}

/// Publishes ticks on their channels through one pipeline per batch, and rides out
/// Redis outages: the first failure is logged once, then reconnection is retried
/// with a doubling delay while ticks are dropped, and the return is logged.
struct TickPublisher {
    client: redis::Client,
    channels: Channels,
    connection: Option<ConnectionManager>,
    outage: Option<Outage>,
}

impl TickPublisher {
    fn new(client: redis::Client, channels: Channels) -> Self {
        TickPublisher {
            client,
            channels,
            connection: None,
            outage: None,
        }
    }

    fn connection(&mut self) -> redis::RedisResult<&mut ConnectionManager> {
        if self.connection.is_none() {
            // Our own backoff governs retries; the manager only tries once per request.
            let config = ConnectionManagerConfig::new()
                .set_number_of_retries(1)
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(PUBLISH_TIMEOUT));
            let manager = ConnectionManager::new_lazy_with_config(self.client.clone(), config)?;
            self.connection = Some(manager);
        }
        Ok(self.connection.as_mut().expect("just set"))
    }

    async fn publish(&mut self, ticks: &[Tick], shutdown: &CancellationToken) -> PublishOutcome {
        let now = Instant::now();
        if let Some(outage) = &mut self.outage {
            if now < outage.next_attempt {
                outage.dropped += ticks.len() as u64;
                return PublishOutcome::Dropped;
            }
        }
        let mut pipe = redis::pipe();
        for tick in ticks {
            // A Tick of plain numbers and strings always serialises.
            let payload = serde_json::to_vec(tick).unwrap_or_default();
            pipe.cmd("PUBLISH")
                .arg(self.channels.live_data(&tick.token))
                .arg(payload)
                .ignore();
        }
        let result = match self.connection() {
            Ok(connection) => {
                tokio::select! {
                    _ = shutdown.cancelled() => return PublishOutcome::Cancelled,
                    r = tokio::time::timeout(PUBLISH_TIMEOUT, pipe.query_async::<()>(connection)) => {
                        r.unwrap_or_else(|_| Err(redis::RedisError::from((
                            redis::ErrorKind::Io,
                            "publish timed out",
                        ))))
                    }
                }
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                if let Some(outage) = self.outage.take() {
                    info!(
                        outage_s = outage.since.elapsed().as_secs_f64().round(),
                        ticks_dropped = outage.dropped,
                        "redis is reachable again; publishing resumed"
                    );
                }
                PublishOutcome::Published
            }
            Err(error) => {
                // A fresh connection manager on the next attempt.
                self.connection = None;
                match &mut self.outage {
                    None => {
                        warn!(
                            %error,
                            "cannot publish to redis; dropping ticks and retrying with backoff \
                             until it is back"
                        );
                        let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
                        self.outage = Some(Outage {
                            since: now,
                            next_attempt: Instant::now() + backoff.next_delay(),
                            backoff,
                            dropped: ticks.len() as u64,
                        });
                    }
                    Some(outage) => {
                        let delay = outage.backoff.next_delay();
                        outage.next_attempt = Instant::now() + delay;
                        outage.dropped += ticks.len() as u64;
                        debug!(%error, retry_in_ms = delay.as_millis() as u64, "redis still unreachable");
                    }
                }
                PublishOutcome::Dropped
            }
        }
    }
}

/// The settings of a run, with the seed that replays it.
fn log_started(config: &SimConfig, market: &Market) {
    info!(
        seed = config.seed,
        tokens = %market.price_summary(),
        rate = config.rate,
        volatility = config.volatility,
        drift = config.drift,
        time_scale = config.time_scale,
        count = config.count,
        prefix = %config.redis_prefix,
        "market simulator started (rerun with --seed {} for the same prices)",
        config.seed
    );
}

/// Run the simulator until `shutdown` is cancelled or, with `count`, until that many
/// ticks per token have been published.
pub async fn run(config: SimConfig, shutdown: CancellationToken) -> Result<SimSummary, SimError> {
    let client = redis::Client::open(config.redis_url.as_str())
        .map_err(|source| SimError::RedisUrl { source })?;
    let mut publisher = TickPublisher::new(client, Channels::new(config.redis_prefix.clone()));
    let mut market = Market::from_config(&config);
    let token_count = market.token_count() as u64;
    log_started(&config, &market);

    let period = Duration::from_secs_f64(1.0 / config.rate);
    let mut wake = tokio::time::interval(period.max(MIN_WAKE));
    wake.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut progress = tokio::time::interval_at(Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    progress.set_missed_tick_behavior(MissedTickBehavior::Delay);

    // Rounds are paced against the start: at most one second's worth goes out at
    // once after a stall (the rest is skipped, not bunched up).
    let max_burst = (config.rate.ceil() as u64).max(1);
    let start = Instant::now();
    let mut rounds_due_so_far: u64 = 0;
    let mut summary = SimSummary::default();
    let mut published_at_last_progress = 0;
    let mut batch = Vec::new();

    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = progress.tick() => {
                info!(
                    ticks_published = summary.ticks_published,
                    ticks_last_period = summary.ticks_published - published_at_last_progress,
                    ticks_dropped = summary.ticks_dropped,
                    prices = %market.price_summary(),
                    "progress"
                );
                published_at_last_progress = summary.ticks_published;
            }
            _ = wake.tick() => {
                let due_total = (start.elapsed().as_secs_f64() * config.rate) as u64 + 1;
                let mut rounds = due_total.saturating_sub(rounds_due_so_far);
                rounds_due_so_far = due_total;
                rounds = rounds.min(max_burst);
                if let Some(count) = config.count {
                    rounds = rounds.min(count - summary.rounds_published);
                }
                if rounds == 0 {
                    continue;
                }
                batch.clear();
                let now = Utc::now();
                for _ in 0..rounds {
                    market.step_into(now, &mut batch);
                }
                match publisher.publish(&batch, &shutdown).await {
                    PublishOutcome::Published => {
                        summary.rounds_published += rounds;
                        summary.ticks_published += rounds * token_count;
                    }
                    PublishOutcome::Dropped => summary.ticks_dropped += rounds * token_count,
                    PublishOutcome::Cancelled => break,
                }
                if config.count.is_some_and(|count| summary.rounds_published >= count) {
                    break;
                }
            }
        }
    }

    info!(
        ticks_published = summary.ticks_published,
        ticks_dropped = summary.ticks_dropped,
        prices = %market.price_summary(),
        "market simulator stopped"
    );
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn flags(args: &[&str]) -> Flags {
        let mut argv = vec!["market-sim"];
        argv.extend_from_slice(args);
        Flags::try_parse_from(argv).unwrap()
    }

    fn log_returns(prices: &[f64]) -> Vec<f64> {
        prices.windows(2).map(|w| (w[1] / w[0]).ln()).collect()
    }

    fn mean_std(xs: &[f64]) -> (f64, f64) {
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var.sqrt())
    }

    #[test]
    fn standard_normal_has_mean_zero_and_unit_variance() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut normal = StandardNormal::new();
        let xs: Vec<f64> = (0..200_000).map(|_| normal.sample(&mut rng)).collect();
        let (mean, std) = mean_std(&xs);
        // Standard errors: 1/√n ≈ 0.0022 for the mean, 1/√(2n) ≈ 0.0016 for the std.
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((std - 1.0).abs() < 0.01, "std {std}");
        assert!(xs.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn the_same_seed_gives_the_same_prices() {
        let tokens = vec![("BTC-USD".to_string(), 65_000.0), ("X".to_string(), 1.0)];
        let ts = Utc::now();
        let mut a = Market::new(&tokens, 0.1, 0.8, 1e-6, 42);
        let mut b = Market::new(&tokens, 0.1, 0.8, 1e-6, 42);
        let mut c = Market::new(&tokens, 0.1, 0.8, 1e-6, 43);
        let (mut same, mut different) = (true, true);
        for _ in 0..1000 {
            let (ta, tb, tc) = (a.step(ts), b.step(ts), c.step(ts));
            same &= ta == tb;
            different &= ta[0].price != tc[0].price;
        }
        assert!(same, "one seed, two paths");
        assert!(different, "two seeds, one path");
    }

    #[test]
    fn prices_stay_positive_and_finite() {
        // A brutal volatility over a long time: the price must stay in bounds.
        let mut rng = StdRng::seed_from_u64(1);
        let mut normal = StandardNormal::new();
        let mut ticker = GbmTicker::new(0.01, -5.0, 10.0, 0.01);
        for _ in 0..100_000 {
            let p = ticker.step(&mut normal, &mut rng);
            assert!((MIN_PRICE..=MAX_PRICE).contains(&p), "{p}");
        }
        // And extreme draws are clamped rather than escaping.
        let mut t = GbmTicker::new(1.0, 0.0, 1.0, 1.0);
        assert_eq!(t.step_with(-1e6), MIN_PRICE);
        assert_eq!(t.step_with(1e6), MAX_PRICE);
        assert_eq!(t.step_with(f64::INFINITY), MAX_PRICE);
    }

    #[test]
    fn log_returns_have_the_expected_volatility_and_drift() {
        let sigma = 0.8;
        let mu = 0.3;
        // The default pacing: 10 ticks per second, 60 simulated seconds per second.
        let dt = 60.0 / 10.0 / SECONDS_PER_YEAR;
        let mut ticker = GbmTicker::new(65_000.0, mu, sigma, dt);
        let mut rng = StdRng::seed_from_u64(2024);
        let mut normal = StandardNormal::new();
        let n = 200_000;
        let mut prices = Vec::with_capacity(n + 1);
        prices.push(ticker.price());
        for _ in 0..n {
            prices.push(ticker.step(&mut normal, &mut rng));
        }
        let (mean, std) = mean_std(&log_returns(&prices));
        let expected_std = sigma * dt.sqrt();
        assert!((ticker.step_std() - expected_std).abs() < 1e-15);
        assert!(
            (std / expected_std - 1.0).abs() < 0.01,
            "std {std}, expected {expected_std}"
        );
        // The mean is (μ − σ²/2)·dt, tiny next to its standard error σ√dt/√n: only
        // check it is within four standard errors.
        let expected_mean = (mu - sigma * sigma / 2.0) * dt;
        let standard_error = expected_std / (n as f64).sqrt();
        assert!(
            (mean - expected_mean).abs() < 4.0 * standard_error,
            "mean {mean}, expected {expected_mean} ± {standard_error}"
        );
    }

    #[test]
    fn ticks_carry_volume_and_a_spread_around_the_price() {
        let mut market = Market::new(&[("SOL-USD".to_string(), 150.0)], 0.0, 0.8, 1e-6, 3);
        let ts = Utc::now();
        for _ in 0..100 {
            let ticks = market.step(ts);
            assert_eq!(ticks.len(), 1);
            let t = &ticks[0];
            assert_eq!(t.token, "SOL-USD");
            assert_eq!(t.timestamp, ts);
            let (bid, ask) = (t.bid.unwrap(), t.ask.unwrap());
            assert!(bid < t.price && t.price < ask);
            assert!(((ask - bid) / t.price - 2.0 * HALF_SPREAD).abs() < 1e-12);
            assert!(t.volume.unwrap() > 0.0);
            let json: serde_json::Value = serde_json::to_value(t).unwrap();
            for key in ["token", "price", "timestamp", "volume", "bid", "ask"] {
                assert!(json.get(key).is_some(), "{key} missing in {json}");
            }
        }
    }

    #[test]
    fn default_flags() {
        let config = SimConfig::from_flags(flags(&["--seed", "5"])).unwrap();
        assert_eq!(
            config.tokens,
            vec![
                ("BTC-USD".to_string(), 65_000.0),
                ("ETH-USD".to_string(), 3_500.0),
                ("SOL-USD".to_string(), 150.0),
            ]
        );
        assert_eq!(config.rate, 10.0);
        assert_eq!(config.volatility, 0.8);
        assert_eq!(config.drift, 0.0);
        assert_eq!(config.time_scale, 60.0);
        assert_eq!(config.seed, 5);
        assert_eq!(config.count, None);
        assert!((config.dt_years() - 6.0 / SECONDS_PER_YEAR).abs() < 1e-18);
    }

    #[test]
    fn flags_are_parsed_and_checked() {
        let config = SimConfig::from_flags(flags(&[
            "--tokens",
            "BTC-USD, FOO ,eth/usdt",
            "--initial-price",
            "FOO=2.5,BTC-USD=70000",
            "--drift",
            "-0.2",
            "--rate",
            "250",
            "--count",
            "3",
        ]))
        .unwrap();
        assert_eq!(
            config.tokens,
            vec![
                ("BTC-USD".to_string(), 70_000.0),
                ("FOO".to_string(), 2.5),
                ("eth/usdt".to_string(), 3_500.0),
            ]
        );
        assert_eq!(config.drift, -0.2);
        assert_eq!(config.rate, 250.0);
        assert_eq!(config.count, Some(3));

        let cases: [(&[&str], &str); 10] = [
            (&["--rate", "0"], "--rate"),
            (&["--rate", "-5"], "--rate"),
            (&["--rate", "1e9"], "--rate"),
            (&["--volatility", "-1"], "--volatility"),
            (&["--drift", "11"], "--drift"),
            (&["--time-scale", "0"], "--time-scale"),
            (&["--tokens", ","], "--tokens"),
            (&["--tokens", "A,A"], "listed twice"),
            (&["--initial-price", "DOGE-USD=1"], "not among --tokens"),
            (&["--initial-price", "BTC-USD=-5"], "above 0"),
        ];
        for (args, needle) in cases {
            let err = SimConfig::from_flags(flags(args)).unwrap_err().to_string();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
        let mut argv = vec!["market-sim", "--initial-price", "BTC-USD"];
        assert!(Flags::try_parse_from(&argv).is_err());
        argv[2] = "BTC-USD=abc";
        assert!(Flags::try_parse_from(&argv).is_err());
        assert!(Flags::try_parse_from(["market-sim", "--count", "0"]).is_err());
    }

    #[test]
    fn known_tokens_have_usual_prices() {
        assert_eq!(default_initial_price("BTC-USD"), 65_000.0);
        assert_eq!(default_initial_price("btc/usdt"), 65_000.0);
        assert_eq!(default_initial_price("ETH"), 3_500.0);
        assert_eq!(default_initial_price("WHATEVER-USD"), DEFAULT_INITIAL_PRICE);
    }

    fn test_config(redis_url: &str, prefix: &str, count: Option<u64>) -> SimConfig {
        SimConfig {
            redis_url: redis_url.to_string(),
            redis_prefix: prefix.to_string(),
            tokens: vec![("AAA".to_string(), 10.0), ("BBB".to_string(), 20.0)],
            rate: 200.0,
            volatility: 0.8,
            drift: 0.0,
            seed: 9,
            time_scale: 60.0,
            count,
        }
    }

    /// The Redis of the test environment, if one answers.
    async fn test_redis() -> Option<(String, redis::Client)> {
        let url =
            std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string());
        let client = redis::Client::open(url.as_str()).ok()?;
        let connect = client.get_multiplexed_async_connection();
        match tokio::time::timeout(Duration::from_secs(2), connect).await {
            Ok(Ok(_)) => Some((url, client)),
            _ => {
                eprintln!("skipped: no redis at {url}");
                None
            }
        }
    }

    #[tokio::test]
    async fn publishes_count_ticks_per_token_on_live_data_channels() {
        let Some((url, client)) = test_redis().await else {
            return;
        };
        let prefix = format!("test:{}:", uuid::Uuid::new_v4());
        let channels = Channels::new(prefix.clone());
        let mut pubsub = client.get_async_pubsub().await.unwrap();
        pubsub
            .psubscribe(format!("{prefix}live_data:*"))
            .await
            .unwrap();

        let summary = tokio::time::timeout(
            Duration::from_secs(10),
            run(
                test_config(&url, &prefix, Some(5)),
                CancellationToken::new(),
            ),
        )
        .await
        .expect("a run with --count ends")
        .unwrap();
        assert_eq!(summary.rounds_published, 5);
        assert_eq!(summary.ticks_published, 10);
        assert_eq!(summary.ticks_dropped, 0);

        let mut messages = pubsub.on_message();
        let mut per_token = std::collections::BTreeMap::<String, usize>::new();
        for _ in 0..10 {
            let msg = tokio::time::timeout(Duration::from_secs(5), messages.next())
                .await
                .expect("a tick within 5 s")
                .expect("the subscription is open");
            let tick: Tick = serde_json::from_slice(msg.get_payload_bytes()).unwrap();
            assert_eq!(msg.get_channel_name(), channels.live_data(&tick.token));
            assert!(tick.price > 0.0);
            *per_token.entry(tick.token).or_default() += 1;
        }
        assert_eq!(per_token.get("AAA"), Some(&5));
        assert_eq!(per_token.get("BBB"), Some(&5));
    }

    #[tokio::test]
    async fn keeps_running_without_redis_and_stops_on_cancel() {
        // Nothing listens on port 1: every publish fails.
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(
            test_config("redis://127.0.0.1:1", "test:", None),
            shutdown.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!task.is_finished(), "an outage does not end the run");
        shutdown.cancel();
        let summary = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("cancel ends the run promptly")
            .unwrap()
            .unwrap();
        assert_eq!(summary.ticks_published, 0);
        assert!(summary.ticks_dropped > 0, "{summary:?}");
    }

    #[tokio::test]
    async fn an_invalid_redis_url_is_an_error() {
        let err = run(
            test_config("http://nope", "", Some(1)),
            CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("--redis-url"), "{err}");
        assert!(!err.to_string().contains("nope"), "the url is not echoed");
    }
}

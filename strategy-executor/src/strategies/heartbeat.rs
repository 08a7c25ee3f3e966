//! `heartbeat`: a strategy that does nothing but stay alive, counting timer beats
//! (and the ticks of one token, if it is given one).
//!
//! It is the cheapest thing the engine can run, for smoke tests and load tests, and
//! it carries test hooks for the engine's failure paths: `halt_after_beats` halts
//! the strategy for good (the engine's `error` path), `fail_after_s` panics (the
//! crash-and-restart path), `start_delay_ms` hangs in initialisation (the start
//! timeout) and `shutdown_delay_ms` hangs in shutdown (SIGTERM, then SIGKILL).
//!
//! It is an interval strategy too (an execution counts itself in the `executions`
//! metric), with `execute_delay_ms`, which makes each execution take that long: the
//! concurrency cap, skips and the `max_execution_s` kill.
//!
//! It also runs in backtests (where it trades nothing), for its last hook:
//! `panic_after_ticks` panics on that tick of its token, a strategy failing mid-run.
//!
//! One hook stands for an exchange credential: `api_key` (a string, usually a secret
//! reference the manager resolves) is reported only as its SHA-256 in the
//! `api_key_sha256` metric, so a test can tell that the strategy got the right value
//! without the value appearing anywhere.
//!
//! Three hooks misbehave for the resource limits' tests: `hog_mb_per_beat` allocates
//! (and touches) that much memory every beat and never frees it, `spin_ms_per_beat`
//! burns the CPU that long every beat, `threads_per_beat` starts that many threads
//! every beat that never end.

use super::{check_positive, check_token};
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;
use strategy_sdk::{
    parse_config, ConfigError, Context, ExecuteError, ExecutionReport, Strategy, Tick,
};

pub const STRATEGY_TYPE: &str = "heartbeat";
pub const DESCRIPTION: &str =
    "does nothing but stay alive: counts timer beats (and a token's ticks, if given one)";

/// Shortest and longest timer interval a config may ask for, in milliseconds.
pub const MIN_INTERVAL_MS: u64 = 10;
pub const MAX_INTERVAL_MS: u64 = 3_600_000;

/// Longest `fail_after_s` a config may ask for (a week).
pub const MAX_FAIL_AFTER_S: f64 = 604_800.0;

pub fn example_config() -> Value {
    json!({ "interval_ms": 1000 })
}

/// The `config` of a `heartbeat` strategy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// Time between beats: 10 to 3 600 000 ms.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Subscribe to this token and count its ticks.
    #[serde(default)]
    pub token: Option<String>,
    /// Test hook: halt for good after this many beats (at least 1).
    #[serde(default)]
    pub halt_after_beats: Option<u64>,
    /// Test hook: panic once this many seconds of beats have passed (above 0, at most
    /// a week), to exercise the engine's crash handling.
    #[serde(default)]
    pub fail_after_s: Option<f64>,
    /// Test hook: panic on this tick of `token` (at least 1): a strategy failing in
    /// the middle of a run.
    #[serde(default)]
    pub panic_after_ticks: Option<u64>,
    /// Test hook: block this long in initialisation (0 to 3 600 000 ms), as a strategy
    /// stuck connecting to something would.
    #[serde(default)]
    pub start_delay_ms: Option<u64>,
    /// Test hook: block this long when shutting down (0 to 3 600 000 ms), as a
    /// strategy that ignores shutdown would.
    #[serde(default)]
    pub shutdown_delay_ms: Option<u64>,
    /// Test hook: block this long in each interval execution (0 to 3 600 000 ms), as
    /// a slow or stuck step would.
    #[serde(default)]
    pub execute_delay_ms: Option<u64>,
    /// Test hook: allocate and touch this many MB (1 to 1024) every beat, never freed:
    /// a memory hog.
    #[serde(default)]
    pub hog_mb_per_beat: Option<u64>,
    /// Test hook: spin on the CPU this long (1 to 10 000 ms) every beat.
    #[serde(default)]
    pub spin_ms_per_beat: Option<u64>,
    /// Test hook: start this many threads (1 to 1000) every beat that never end: a
    /// thread bomb. Threads the system refuses are counted (`threads_refused`).
    #[serde(default)]
    pub threads_per_beat: Option<u64>,
    /// Test hook: a credential, reported only as its SHA-256 (`api_key_sha256`).
    #[serde(default)]
    pub api_key: Option<String>,
}

fn default_interval_ms() -> u64 {
    1000
}

impl HeartbeatConfig {
    /// Parse and validate a whole config.
    pub fn parse(config: &Value) -> Result<Self, ConfigError> {
        let parsed: Self = parse_config(config)?;
        parsed.validate()?;
        Ok(parsed)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        ConfigError::check_range(
            "interval_ms",
            self.interval_ms,
            MIN_INTERVAL_MS,
            MAX_INTERVAL_MS,
        )?;
        if let Some(token) = &self.token {
            check_token("token", token)?;
        }
        if self.halt_after_beats == Some(0) {
            return Err(ConfigError::new(
                "halt_after_beats",
                "0 is out of range; allowed: a whole number of at least 1",
            ));
        }
        if let Some(seconds) = self.fail_after_s {
            check_positive("fail_after_s", seconds, MAX_FAIL_AFTER_S)?;
        }
        if self.panic_after_ticks == Some(0) {
            return Err(ConfigError::new(
                "panic_after_ticks",
                "0 is out of range; allowed: a whole number of at least 1",
            ));
        }
        for (key, value) in [
            ("start_delay_ms", self.start_delay_ms),
            ("shutdown_delay_ms", self.shutdown_delay_ms),
            ("execute_delay_ms", self.execute_delay_ms),
        ] {
            if let Some(ms) = value {
                ConfigError::check_range(key, ms, 0, MAX_INTERVAL_MS)?;
            }
        }
        for (key, value, max) in [
            ("hog_mb_per_beat", self.hog_mb_per_beat, 1024),
            ("spin_ms_per_beat", self.spin_ms_per_beat, 10_000),
            ("threads_per_beat", self.threads_per_beat, 1000),
        ] {
            if let Some(n) = value {
                ConfigError::check_range(key, n, 1, max)?;
            }
        }
        Ok(())
    }
}

/// Build a `heartbeat` strategy from its config (the registry's constructor).
pub fn create(config: &Value) -> Result<Box<dyn Strategy>, ConfigError> {
    Ok(Box::new(Heartbeat::new(HeartbeatConfig::parse(config)?)))
}

#[derive(Debug)]
pub struct Heartbeat {
    config: HeartbeatConfig,
    beats: u64,
    ticks: u64,
    executions: u64,
    /// Milliseconds of beats so far (beats × the interval at the time of each beat).
    beat_ms: u64,
    /// What `hog_mb_per_beat` holds on to.
    hoard: Vec<Vec<u8>>,
    /// Threads `threads_per_beat` started, and those the system refused.
    threads: u64,
    threads_refused: u64,
}

impl Heartbeat {
    pub fn new(config: HeartbeatConfig) -> Self {
        Heartbeat {
            config,
            beats: 0,
            ticks: 0,
            executions: 0,
            beat_ms: 0,
            hoard: Vec::new(),
            threads: 0,
            threads_refused: 0,
        }
    }

    pub fn config(&self) -> &HeartbeatConfig {
        &self.config
    }

    /// The misbehaving hooks of one beat (see the module's documentation).
    fn misbehave(&mut self) {
        if let Some(mb) = self.config.hog_mb_per_beat {
            // Every page written, so that it is resident and counted.
            self.hoard.push(vec![1u8; (mb * 1024 * 1024) as usize]);
        }
        if let Some(ms) = self.config.spin_ms_per_beat {
            let until = std::time::Instant::now() + Duration::from_millis(ms);
            let mut spins = 0u64;
            while std::time::Instant::now() < until {
                spins = std::hint::black_box(spins.wrapping_add(1));
            }
        }
        for _ in 0..self.config.threads_per_beat.unwrap_or(0) {
            let started = std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(|| loop {
                    std::thread::park();
                });
            match started {
                Ok(_) => self.threads += 1,
                Err(_) => self.threads_refused += 1,
            }
        }
    }

    fn report(&self, ctx: &mut Context) {
        ctx.set_metric("beats", self.beats);
        if self.config.threads_per_beat.is_some() {
            ctx.set_metric("threads", self.threads);
            ctx.set_metric("threads_refused", self.threads_refused);
        }
        if self.config.token.is_some() {
            ctx.set_metric("ticks", self.ticks);
        }
        if self.executions > 0 {
            ctx.set_metric("executions", self.executions);
        }
        if let Some(key) = &self.config.api_key {
            ctx.set_metric("api_key_sha256", sha256_hex(key));
        }
    }
}

/// `text`'s SHA-256 in lower-case hex.
fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Strategy for Heartbeat {
    fn on_start(&mut self, ctx: &mut Context) {
        if let Some(ms) = self.config.start_delay_ms {
            // Deliberately blocking: this hook stands for a strategy stuck in its set-up.
            std::thread::sleep(Duration::from_millis(ms));
        }
        if let Some(token) = &self.config.token {
            ctx.subscribe(token);
        }
        self.report(ctx);
    }

    fn on_tick(&mut self, _ctx: &mut Context, tick: &Tick) {
        // Kept to a comparison and an add: the `ticks` metric is refreshed on beats.
        if self.config.token.as_deref() == Some(tick.token.as_str()) {
            self.ticks += 1;
            if self.config.panic_after_ticks == Some(self.ticks) {
                panic!(
                    "heartbeat: panic_after_ticks {} reached; failing on purpose (a test hook)",
                    self.ticks
                );
            }
        }
    }

    fn timer_interval(&self) -> Option<Duration> {
        Some(Duration::from_millis(self.config.interval_ms))
    }

    fn on_timer(&mut self, ctx: &mut Context) {
        if ctx.halt_reason().is_some() {
            return;
        }
        self.beats += 1;
        self.beat_ms = self.beat_ms.saturating_add(self.config.interval_ms);
        self.misbehave();
        self.report(ctx);
        if let Some(limit) = self.config.halt_after_beats {
            if self.beats >= limit {
                ctx.halt(format!("heartbeat: halt_after_beats {limit} reached"));
                return;
            }
        }
        if let Some(seconds) = self.config.fail_after_s {
            if self.beat_ms as f64 >= seconds * 1000.0 - 1e-6 {
                panic!(
                    "heartbeat: fail_after_s {seconds} reached after {} beats; failing on purpose (a test hook)",
                    self.beats
                );
            }
        }
    }

    fn on_shutdown(&mut self, _ctx: &mut Context, _reason: strategy_sdk::ShutdownReason) {
        if let Some(ms) = self.config.shutdown_delay_ms {
            // Deliberately blocking: this hook stands for a strategy that ignores shutdown.
            std::thread::sleep(Duration::from_millis(ms));
        }
    }

    fn on_execute(&mut self, ctx: &mut Context) -> Result<ExecutionReport, ExecuteError> {
        if let Some(ms) = self.config.execute_delay_ms {
            // Deliberately blocking: this hook stands for a slow or stuck step.
            std::thread::sleep(Duration::from_millis(ms));
        }
        self.executions += 1;
        self.report(ctx);
        Ok(ExecutionReport::with_message(format!(
            "execution {}",
            self.executions
        )))
    }

    /// Counts are kept; a new token replaces the old subscription. The runtime reads
    /// the new [`Strategy::timer_interval`] after a successful update.
    fn update_config(&mut self, ctx: &mut Context, config: &Value) -> Result<(), ConfigError> {
        let new = HeartbeatConfig::parse(config)?;
        if new.token != self.config.token {
            if let Some(old) = &self.config.token {
                ctx.unsubscribe(old);
            }
            if let Some(token) = &new.token {
                ctx.subscribe(token);
            }
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

    fn heartbeat(config: Value) -> Heartbeat {
        Heartbeat::new(HeartbeatConfig::parse(&config).unwrap())
    }

    /// A custom metric, `null` while unset.
    fn metric<S: Strategy + ?Sized>(h: &TestHarness<S>, key: &str) -> Value {
        h.metric(key).cloned().unwrap_or(Value::Null)
    }

    #[test]
    fn defaults() {
        let c = HeartbeatConfig::parse(&json!({})).unwrap();
        assert_eq!(
            c,
            HeartbeatConfig {
                interval_ms: 1000,
                token: None,
                halt_after_beats: None,
                fail_after_s: None,
                panic_after_ticks: None,
                start_delay_ms: None,
                shutdown_delay_ms: None,
                execute_delay_ms: None,
                hog_mb_per_beat: None,
                spin_ms_per_beat: None,
                threads_per_beat: None,
                api_key: None,
            }
        );
        let s = Heartbeat::new(c);
        assert_eq!(s.timer_interval(), Some(Duration::from_secs(1)));
    }

    #[test]
    fn api_key_is_reported_only_as_its_sha256() {
        let h = TestHarness::started(heartbeat(json!({"api_key": "abc"})));
        assert_eq!(
            metric(&h, "api_key_sha256"),
            json!("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        let reported = serde_json::to_string(&h.metrics()).unwrap();
        assert!(!reported.contains("\"abc\""), "{reported}");
    }

    #[test]
    fn the_misbehaving_hooks_hold_memory_and_threads_and_are_bounded() {
        let mut h = TestHarness::started(heartbeat(
            json!({"hog_mb_per_beat": 1, "threads_per_beat": 2, "spin_ms_per_beat": 1}),
        ));
        h.timer().timer();
        assert_eq!(metric(&h, "threads"), json!(4));
        assert_eq!(metric(&h, "threads_refused"), json!(0));
        assert_eq!(h.strategy().hoard.len(), 2);
        assert!(h.strategy().hoard.iter().all(|b| b.len() == 1024 * 1024));
        for (key, bad) in [
            ("hog_mb_per_beat", 0),
            ("hog_mb_per_beat", 1025),
            ("spin_ms_per_beat", 10_001),
            ("threads_per_beat", 0),
        ] {
            let err = HeartbeatConfig::parse(&json!({ key: bad })).unwrap_err();
            assert_eq!(err.key, key, "{err}");
        }
    }

    #[test]
    fn config_errors_name_the_key() {
        let err = HeartbeatConfig::parse(&json!({"interval": 100})).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("interval"), "{text}");
        for allowed in ["interval_ms", "token", "halt_after_beats", "fail_after_s"] {
            assert!(text.contains(allowed), "{allowed} missing from: {text}");
        }
        let cases = [
            (json!({"interval_ms": "1s"}), "interval_ms", "invalid type"),
            (json!({"interval_ms": 1.5}), "interval_ms", "invalid type"),
            (json!({"interval_ms": 9}), "interval_ms", "10 to 3600000"),
            (
                json!({"interval_ms": 3_600_001}),
                "interval_ms",
                "10 to 3600000",
            ),
            (json!({"token": ""}), "token", "must not be empty"),
            (json!({"token": 5}), "token", "invalid type"),
            (
                json!({"halt_after_beats": 0}),
                "halt_after_beats",
                "at least 1",
            ),
            (
                json!({"halt_after_beats": -1}),
                "halt_after_beats",
                "invalid value",
            ),
            (json!({"fail_after_s": 0}), "fail_after_s", "above 0"),
            (json!({"fail_after_s": 1e7}), "fail_after_s", "at most"),
        ];
        for (config, key, needle) in cases {
            let err = HeartbeatConfig::parse(&config).unwrap_err();
            assert_eq!(err.key, key, "{config}: {err}");
            assert!(err.to_string().contains(needle), "{config}: {err}");
        }
    }

    #[test]
    fn beats_on_the_timer_and_counts_its_tokens_ticks() {
        let s = heartbeat(json!({"interval_ms": 10, "token": "SOL"}));
        let mut h = TestHarness::started(s);
        assert!(h.ctx().subscriptions().contains("SOL"));
        assert_eq!(
            h.strategy().timer_interval(),
            Some(Duration::from_millis(10))
        );
        assert_eq!(metric(&h, "beats"), json!(0));
        for _ in 0..3 {
            h.tick("SOL", 150.0);
        }
        h.tick("BTC", 65_000.0);
        for _ in 0..5 {
            h.timer();
        }
        assert_eq!(metric(&h, "beats"), json!(5));
        assert_eq!(metric(&h, "ticks"), json!(3));
        assert_eq!(h.ctx().broker().orders_count(), 0);
        assert!(h.ctx().halt_reason().is_none());
    }

    #[test]
    fn without_a_token_it_subscribes_to_nothing() {
        let s = heartbeat(json!({}));
        let mut h = TestHarness::started(s);
        assert!(h.ctx().subscriptions().is_empty());
        h.timer();
        assert_eq!(metric(&h, "beats"), json!(1));
        assert_eq!(metric(&h, "ticks"), Value::Null);
    }

    #[test]
    fn halts_after_the_given_beats() {
        let s = heartbeat(json!({"interval_ms": 10, "halt_after_beats": 3}));
        let mut h = TestHarness::started(s);
        h.timer();
        h.timer();
        assert!(h.ctx().halt_reason().is_none());
        h.timer();
        assert_eq!(
            h.ctx().halt_reason(),
            Some("heartbeat: halt_after_beats 3 reached")
        );
        h.timer();
        assert_eq!(metric(&h, "beats"), json!(3), "no beats once halted");
    }

    #[test]
    #[should_panic(expected = "heartbeat: fail_after_s 0.05 reached after 5 beats")]
    fn fails_on_purpose_after_the_given_time() {
        let s = heartbeat(json!({"interval_ms": 10, "fail_after_s": 0.05}));
        let mut h = TestHarness::started(s);
        for _ in 0..4 {
            h.timer();
        }
        assert_eq!(metric(&h, "beats"), json!(4));
        h.timer();
    }

    #[test]
    fn update_config_accepts_and_rejects() {
        let s = heartbeat(json!({"interval_ms": 100, "token": "BTC"}));
        let mut h = TestHarness::started(s);
        h.timer();
        let before = h.strategy().config().clone();
        for bad in [
            json!({"interval_ms": 5}),
            json!({"interval_ms": 100, "halt_after_beats": 0}),
            json!({"interval_ms": 100, "extra": 1}),
        ] {
            assert!(h.update_config(&bad).is_err(), "{bad}");
            assert_eq!(h.strategy().config(), &before);
        }
        assert_eq!(
            h.strategy().timer_interval(),
            Some(Duration::from_millis(100))
        );
        h.update_config(&json!({"interval_ms": 250, "token": "ETH"}))
            .unwrap();
        assert_eq!(
            h.strategy().timer_interval(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            h.ctx().subscriptions().iter().collect::<Vec<_>>(),
            vec!["ETH"]
        );
        h.timer();
        assert_eq!(metric(&h, "beats"), json!(2), "beats are kept");

        h.update_config(&json!({})).unwrap();
        assert!(h.ctx().subscriptions().is_empty());
    }

    #[test]
    fn create_through_the_registry() {
        let registry = crate::strategies::builtin_registry();
        let s = registry
            .create("heartbeat", &json!({"interval_ms": 50}))
            .unwrap();
        assert_eq!(s.timer_interval(), Some(Duration::from_millis(50)));
        assert!(registry
            .create("heartbeat", &json!({"interval_ms": 1}))
            .is_err());
    }

    #[test]
    fn executions_count_themselves_and_take_their_delay() {
        let mut h = TestHarness::started(heartbeat(json!({"execute_delay_ms": 20})));
        let began = std::time::Instant::now();
        assert_eq!(h.execute().unwrap().message(), Some("execution 1"));
        assert!(began.elapsed() >= Duration::from_millis(20));
        h.execute().unwrap();
        assert_eq!(metric(&h, "executions"), json!(2));
        let err = HeartbeatConfig::parse(&json!({"execute_delay_ms": 3_600_001}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("execute_delay_ms"), "{err}");
    }
}

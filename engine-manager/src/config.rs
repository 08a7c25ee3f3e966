//! The manager's configuration: every flag, with its environment fallback and default.

use clap::{Parser, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// engine-manager: runs one strategy-executor per strategy, driven by the
/// `strategy_commands` table, and publishes status, health and metrics on Redis.
#[derive(Debug, Clone, Parser)]
#[command(version, about, long_about = None)]
pub struct ManagerConfig {
    /// PostgreSQL URL; the database is created if it does not exist.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/strategy_engine",
        hide_env_values = true
    )]
    pub database_url: String,

    /// Redis URL (`redis://`, `rediss://` for TLS; a password goes in the URL).
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: String,

    /// Prefix for every Redis channel and key (empty gives the contract's names).
    #[arg(long, env = "ENGINE_REDIS_PREFIX", default_value = "")]
    pub redis_prefix: String,

    /// The strategy-executor binary [default: the one beside this binary].
    #[arg(long, env = "ENGINE_EXECUTOR_PATH")]
    pub executor_path: Option<PathBuf>,

    /// Directory for the control socket and the executors' logs (`logs/<name>.log`).
    #[arg(long, env = "ENGINE_STATE_DIR", default_value = "engine-state")]
    pub state_dir: PathBuf,

    /// How often health is sampled and published.
    #[arg(long, env = "ENGINE_HEALTH_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub health_interval: Duration,

    /// How often a strategy's health sample is also written to `strategy_metrics`
    /// (its CPU and memory history; `0s`: every sample). Published health is not
    /// affected: `strategy:health` goes out every health interval.
    #[arg(long, env = "ENGINE_HEALTH_HISTORY_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub health_history_interval: Duration,

    /// How often executors publish their strategy's metrics.
    #[arg(long, env = "ENGINE_METRICS_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub metrics_interval: Duration,

    /// Safety-net poll of `strategy_commands` (NOTIFY wakes the manager at once).
    #[arg(long, env = "ENGINE_POLL_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,

    /// How long an executor may take to initialise its strategy before it is killed.
    #[arg(long, env = "ENGINE_START_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub start_timeout: Duration,

    /// How long a running executor may take to acknowledge pause, resume or update.
    #[arg(long, env = "ENGINE_ACK_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub ack_timeout: Duration,

    /// `strategy_metrics` rows older than this are deleted.
    #[arg(long, env = "ENGINE_METRICS_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub metrics_retention: Duration,

    /// Finished (`executed` or `failed`) `strategy_commands` rows older than this are
    /// deleted; pending and processing rows are kept whatever their age.
    #[arg(long, env = "ENGINE_COMMAND_RETENTION", default_value = "30d", value_parser = humantime::parse_duration)]
    pub command_retention: Duration,

    /// First automatic restart delay after a crash.
    #[arg(long, env = "ENGINE_RESTART_DELAY", default_value = "1s", value_parser = humantime::parse_duration)]
    pub restart_delay: Duration,

    /// Longest automatic restart delay (the delay doubles up to this).
    #[arg(long, env = "ENGINE_RESTART_MAX_DELAY", default_value = "60s", value_parser = humantime::parse_duration)]
    pub restart_max_delay: Duration,

    /// Random spread of each restart delay, as a fraction (0.1 = ±10 %).
    #[arg(long, env = "ENGINE_RESTART_JITTER", default_value_t = 0.1)]
    pub restart_jitter: f64,

    /// A run this long resets the delay and the consecutive-crash count.
    #[arg(long, env = "ENGINE_RESTART_STABLE_AFTER", default_value = "10m", value_parser = humantime::parse_duration)]
    pub restart_stable_after: Duration,

    /// After this many consecutive crashes the strategy goes to `error`.
    #[arg(long, env = "ENGINE_RESTART_MAX_CRASHES", default_value_t = 8)]
    pub restart_max_crashes: u32,

    /// On SIGTERM/SIGINT, stop every strategy before exiting (by default they keep
    /// running and the next manager adopts them).
    #[arg(long, env = "ENGINE_STOP_STRATEGIES_ON_EXIT")]
    pub stop_strategies_on_exit: bool,

    /// Address of the HTTP API, Prometheus `/metrics` and the web dashboard; `off`
    /// (or empty) disables it. Port 0 picks a free port; the address actually bound
    /// is logged and written to `{state_dir}/http.addr`.
    #[arg(long, env = "ENGINE_HTTP_ADDR", default_value = "127.0.0.1:8080", value_parser = HttpAddr::parse)]
    pub http_addr: HttpAddr,

    /// Bearer token required by every HTTP request that changes state (the command
    /// API); without it, anyone who can reach `--http-addr` can send commands.
    #[arg(long, env = "ENGINE_HTTP_TOKEN", hide_env_values = true, value_parser = HttpToken::parse)]
    pub http_token: Option<HttpToken>,

    /// Bearer token needed to read the HTTP API and `/metrics` (`GET`); an operate
    /// token reads too. Without any read token, reads are open.
    #[arg(long, env = "ENGINE_HTTP_READ_TOKEN", hide_env_values = true, value_parser = HttpToken::parse)]
    pub http_read_token: Option<HttpToken>,

    /// File of named HTTP tokens, one a line: `NAME SCOPE SHA256HEX` (scope `read`
    /// or `operate`; the token's SHA-256 as `printf %s "$TOKEN" | sha256sum` prints it).
    #[arg(long, env = "ENGINE_HTTP_TOKENS_FILE", value_name = "PATH")]
    pub http_tokens_file: Option<PathBuf>,

    /// File of secrets that configs refer to (`{"secret": "NAME"}`), one
    /// `NAME = VALUE` a line, `#` comments. It must not be readable by group or
    /// others (`chmod 600`), or the manager refuses to start. Read again at every
    /// spawn that needs a secret. A name not in it is looked up in the manager's
    /// environment as `ENGINE_SECRET_<NAME>`.
    #[arg(long, env = "ENGINE_SECRETS_FILE", value_name = "PATH")]
    pub secrets_file: Option<PathBuf>,

    /// Log format.
    #[arg(long, env = "ENGINE_LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,

    /// Rotate an executor log (`logs/<name>.log`) once it is larger than this
    /// (`10MiB`, `500k`, `1048576`; 0 turns rotation off). Checked every
    /// `--log-check-interval`.
    #[arg(long, env = "ENGINE_LOG_MAX_SIZE", default_value = "10MiB", value_parser = crate::log_rotation::parse_size)]
    pub log_max_size: u64,

    /// How often the executor logs are checked against `--log-max-size` (on the
    /// health tick, so never more often than `--health-interval`).
    #[arg(long, env = "ENGINE_LOG_CHECK_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub log_check_interval: Duration,

    /// Rotated copies kept per executor log (`<name>.log.1` is the newest).
    #[arg(long, env = "ENGINE_LOG_KEEP", default_value_t = 5)]
    pub log_keep: u32,

    /// A running strategy that takes market data is marked `stale` in its health
    /// when no tick has arrived for this long.
    #[arg(long, env = "ENGINE_STALE_AFTER", default_value = "60s", value_parser = humantime::parse_duration)]
    pub stale_after: Duration,

    /// At most this many runs (`strategy_runs`) are `starting` or `running` at once;
    /// the others wait `queued` (high before normal before low, oldest first).
    #[arg(long, env = "ENGINE_MAX_CONCURRENT_RUNS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_runs: u32,

    /// At most this many interval executions run at once across all strategies; a due
    /// execution waits for a slot, and one still waiting when its next is due is
    /// counted in `skipped_executions` (CONTRACT.md §5).
    #[arg(long, env = "ENGINE_MAX_CONCURRENT_EXECUTIONS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_executions: u32,

    /// The least time between two progress lines of a run's process (0 writes only
    /// the first and the last; the manager throttles what it writes and publishes
    /// on its own).
    #[arg(long, env = "ENGINE_RUN_PROGRESS_INTERVAL", default_value = "50ms", value_parser = humantime::parse_duration)]
    pub run_progress_interval: Duration,

    /// In how many parts (1 or 2) the bars of a large run (300,000 bars or more) are
    /// copied out of PostgreSQL at once, each on its own connection. 2 lets
    /// PostgreSQL give one run two cores: worth it only where the database has cores
    /// to spare. On a 2-core host shared by PostgreSQL, the manager and the run, 2
    /// made the 1M-bar backtest slower and a cancel meanwhile 2.5 times slower
    /// (BENCHMARKS.md, "Runs"), hence the default 1.
    #[arg(long, env = "ENGINE_RUN_COPY_PARTS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=2))]
    pub run_copy_parts: u32,

    /// How strategies' resource limits are enforced: `auto` takes the first that
    /// works here (cgroup v2, cgroup v1, rlimits); said at start-up and in
    /// `enginectl doctor`.
    #[arg(long, env = "ENGINE_LIMITS_MECHANISM", value_enum, default_value_t = crate::limits::MechanismChoice::Auto)]
    pub limits_mechanism: crate::limits::MechanismChoice,

    /// Join a cluster: several managers (nodes) share the database, each strategy
    /// owned by one of them (README "Cluster"). Without it, a manager refuses to run
    /// beside any other one (exit code 3).
    #[arg(long, env = "ENGINE_CLUSTER")]
    pub cluster: bool,

    /// This manager's node name: in `strategy:status`, `engine:health`, and, with
    /// `--cluster`, its row in `engine_nodes` (two live nodes of one name: the second
    /// exits with code 3) [default: the host name].
    #[arg(long, env = "ENGINE_NODE", value_parser = parse_node_name)]
    pub node: Option<String>,

    /// With `--cluster`: the most strategies this node takes.
    #[arg(long, env = "ENGINE_CAPACITY", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub capacity: u32,

    /// With `--cluster`: a node whose heartbeat is older than this is dead.
    #[arg(long, env = "ENGINE_LEASE_TIME", default_value = "10s", value_parser = parse_lease_time)]
    pub lease_time: Duration,

    /// Redis users of the executors: `auto` gives each executor a Redis user of its
    /// own that may publish only its own channels, where Redis (7.0 or newer) lets the
    /// manager's user run `ACL SETUSER`; `off` gives every executor the manager's URL.
    /// Said at start-up and in `enginectl doctor`.
    #[arg(long, env = "ENGINE_REDIS_ACL", value_enum, default_value_t = crate::redis_users::RedisAclChoice::Auto)]
    pub redis_acl: crate::redis_users::RedisAclChoice,

    /// Accept TLS that does not verify the server's certificate: `sslmode=require`
    /// (or `prefer`, `allow`, `disable`) to a PostgreSQL server that is not on this
    /// host, and a `rediss://…#insecure` Redis URL. Logged as a warning at start-up.
    /// Without it, a remote database gets `sslmode=verify-full` unless the URL says
    /// `verify-ca`/`verify-full`, and the refusals say what to change.
    #[arg(long, env = "ENGINE_TLS_INSECURE")]
    pub tls_insecure: bool,

    /// Run every executor (strategies, runs, `--validate`) as this user and its
    /// primary group, with no supplementary groups, so strategy code cannot read
    /// the manager's files. The manager must run as root (or with CAP_SETUID and
    /// CAP_SETGID); the user must be able to reach the state directory and run the
    /// executor binary. Checked at start-up.
    #[arg(long, env = "ENGINE_EXECUTOR_USER", value_name = "NAME")]
    pub executor_user: Option<String>,

    /// Create the database if needed, apply migrations, and exit.
    #[arg(long)]
    pub migrate_only: bool,

    /// Apply the migrations, create the roles `engine_viewer`, `engine_operator` and
    /// `engine_manager` with their grants (idempotent), and exit. Run it as a
    /// superuser (`--database-url postgres://postgres@…/strategy_engine`).
    #[arg(long, conflicts_with = "migrate_only")]
    pub setup_roles: bool,
}

impl ManagerConfig {
    /// The executor binary: the flag, or `strategy-executor` beside this binary.
    pub fn executor_path(&self) -> PathBuf {
        if let Some(path) = &self.executor_path {
            return path.clone();
        }
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join("strategy-executor")))
            .unwrap_or_else(|| PathBuf::from("strategy-executor"))
    }

    /// This manager's node name: `--node`, else the host name.
    pub fn node_name(&self) -> String {
        self.node.clone().unwrap_or_else(engine_protocol::node_name)
    }

    /// The strategies this manager serves: every one, or with `--cluster` its node's.
    pub fn scope(&self) -> engine_store::manager::Scope {
        match self.cluster {
            true => engine_store::manager::Scope::Node(self.node_name()),
            false => engine_store::manager::Scope::All,
        }
    }

    pub fn control_socket_path(&self) -> PathBuf {
        self.state_dir.join("control.sock")
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }

    /// Runs' bars, outboxes and logs (`{state_dir}/runs`).
    pub fn runs_dir(&self) -> PathBuf {
        engine_protocol::runs::runs_dir(&self.state_dir)
    }

    pub fn restart_policy(&self) -> RestartPolicy {
        RestartPolicy {
            delay: self.restart_delay,
            max_delay: self.restart_max_delay,
            jitter: self.restart_jitter.clamp(0.0, 1.0),
            stable_after: self.restart_stable_after,
            max_crashes: self.restart_max_crashes.max(1),
        }
    }
}

/// A node name: 1 to 200 characters, none of them blank or a control character.
pub fn parse_node_name(value: &str) -> Result<String, String> {
    let value = value.trim();
    if value.is_empty() || value.chars().count() > 200 {
        return Err("a node name is 1 to 200 characters, like 'host-a' (or leave --node unset for the host name)".to_string());
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "'{value}' has a blank or a control character; a node name is one word like 'host-a'"
        ));
    }
    Ok(value.to_string())
}

/// A lease time: at least 1 s (a node beats every third of it), at most 10 min.
pub fn parse_lease_time(value: &str) -> Result<Duration, String> {
    let lease = humantime::parse_duration(value)
        .map_err(|e| format!("'{value}' is not a duration like 10s ({e})"))?;
    if lease < Duration::from_secs(1) || lease > Duration::from_secs(600) {
        return Err(format!(
            "a lease time of {value} is out of range: it must be from 1s to 10m (default 10s)"
        ));
    }
    Ok(lease)
}

/// Where the HTTP server listens (`None`: disabled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpAddr(pub Option<std::net::SocketAddr>);

impl HttpAddr {
    /// `off`, `none` or an empty value disable it; else `host:port`, an IP address.
    pub fn parse(value: &str) -> Result<HttpAddr, String> {
        let value = value.trim();
        if value.is_empty()
            || value.eq_ignore_ascii_case("off")
            || value.eq_ignore_ascii_case("none")
        {
            return Ok(HttpAddr(None));
        }
        value.parse().map(|a| HttpAddr(Some(a))).map_err(|_| {
            format!("'{value}' is not an address like 127.0.0.1:8080 or [::1]:8080 (or 'off' to disable HTTP)")
        })
    }
}

/// The HTTP bearer token; its `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpToken(pub String);

impl HttpToken {
    pub fn parse(value: &str) -> Result<HttpToken, String> {
        if value.trim().is_empty() {
            return Err("the HTTP token must not be empty (leave it unset for none)".to_string());
        }
        Ok(HttpToken(value.to_string()))
    }
}

impl std::fmt::Debug for HttpToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpToken(***)")
    }
}

/// How crashed executors are restarted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RestartPolicy {
    pub delay: Duration,
    pub max_delay: Duration,
    pub jitter: f64,
    pub stable_after: Duration,
    pub max_crashes: u32,
}

impl RestartPolicy {
    /// This policy with a strategy's `restart_policy` object applied on top: keys
    /// `delay_s`, `max_delay_s`, `jitter` (0 to 1), `stable_after_s`, `max_crashes`.
    pub fn with_overrides(&self, overrides: &serde_json::Value) -> Result<RestartPolicy, String> {
        let Some(map) = overrides.as_object() else {
            return Err("restart_policy must be a JSON object".to_string());
        };
        let mut policy = *self;
        for (key, value) in map {
            let number = value
                .as_f64()
                .filter(|n| n.is_finite() && *n >= 0.0)
                .ok_or_else(|| {
                    format!("restart_policy.{key} must be a number >= 0, got {value}")
                })?;
            let secs = || {
                Duration::try_from_secs_f64(number)
                    .map_err(|e| format!("restart_policy.{key}: {e}"))
            };
            match key.as_str() {
                "delay_s" => policy.delay = secs()?,
                "max_delay_s" => policy.max_delay = secs()?,
                "stable_after_s" => policy.stable_after = secs()?,
                "jitter" if number <= 1.0 => policy.jitter = number,
                "jitter" => return Err(format!("restart_policy.jitter must be between 0 and 1, got {value}")),
                "max_crashes" if number >= 1.0 && number.fract() == 0.0 => policy.max_crashes = number as u32,
                "max_crashes" => {
                    return Err(format!("restart_policy.max_crashes must be a whole number >= 1, got {value}"))
                }
                other => {
                    return Err(format!(
                        "unknown restart_policy key '{other}'; allowed: delay_s, max_delay_s, jitter, stable_after_s, max_crashes"
                    ))
                }
            }
        }
        Ok(policy)
    }

    /// The delay before restart number `crash` (1-based) of a run of consecutive
    /// crashes, before jitter: delay · 2^(crash-1), capped.
    pub fn base_delay(&self, crash: u32) -> Duration {
        let factor = 2u32.saturating_pow(crash.saturating_sub(1).min(30));
        self.delay.saturating_mul(factor).min(self.max_delay)
    }

    /// [`Self::base_delay`] spread by ±jitter; `unit` is a random number in [0, 1).
    pub fn jittered_delay(&self, crash: u32, unit: f64) -> Duration {
        let base = self.base_delay(crash).as_secs_f64();
        let spread = 1.0 + self.jitter * (2.0 * unit - 1.0);
        Duration::from_secs_f64((base * spread).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_flags_are_checked_with_words_that_say_what_is_right() {
        let config = ManagerConfig::parse_from(["engine-manager"]);
        assert!(!config.cluster);
        assert_eq!(config.capacity, 1000);
        assert_eq!(config.lease_time, Duration::from_secs(10));
        assert_eq!(config.node_name(), engine_protocol::node_name());
        let config = ManagerConfig::parse_from([
            "engine-manager",
            "--cluster",
            "--node",
            "host-a",
            "--lease-time",
            "3s",
        ]);
        assert!(config.cluster);
        assert_eq!(config.node_name(), "host-a");
        assert_eq!(config.lease_time, Duration::from_secs(3));
        assert!(parse_node_name(" ").unwrap_err().contains("1 to 200"));
        assert!(parse_node_name("a b").unwrap_err().contains("one word"));
        assert!(parse_lease_time("500ms")
            .unwrap_err()
            .contains("from 1s to 10m"));
        assert!(parse_lease_time("ten").unwrap_err().contains("like 10s"));
        let zero = ManagerConfig::try_parse_from(["engine-manager", "--capacity", "0"]);
        assert!(zero.is_err());
    }

    fn policy() -> RestartPolicy {
        RestartPolicy {
            delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            jitter: 0.1,
            stable_after: Duration::from_secs(600),
            max_crashes: 8,
        }
    }

    #[test]
    fn delay_doubles_and_caps() {
        let p = policy();
        let secs: Vec<u64> = (1..=9).map(|n| p.base_delay(n).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(p.base_delay(1000), Duration::from_secs(60));
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let p = policy();
        assert_eq!(p.jittered_delay(3, 0.5), Duration::from_secs(4));
        assert!((p.jittered_delay(3, 0.0).as_secs_f64() - 3.6).abs() < 1e-9);
        assert!((p.jittered_delay(3, 0.999_999).as_secs_f64() - 4.4).abs() < 1e-5);
    }

    #[test]
    fn per_strategy_overrides() {
        let p = policy();
        let o = p
            .with_overrides(&serde_json::json!({"delay_s": 0.5, "max_crashes": 3, "jitter": 0}))
            .unwrap();
        assert_eq!(o.delay, Duration::from_millis(500));
        assert_eq!(o.max_crashes, 3);
        assert_eq!(o.jitter, 0.0);
        assert_eq!(o.max_delay, p.max_delay);
        let err = p
            .with_overrides(&serde_json::json!({"delay": 1}))
            .unwrap_err();
        assert!(err.contains("allowed: delay_s"), "{err}");
        let err = p
            .with_overrides(&serde_json::json!({"max_crashes": 0}))
            .unwrap_err();
        assert!(err.contains("whole number >= 1"), "{err}");
        let err = p
            .with_overrides(&serde_json::json!({"jitter": "x"}))
            .unwrap_err();
        assert!(err.contains("must be a number"), "{err}");
    }

    #[test]
    fn defaults_parse() {
        let c = ManagerConfig::parse_from(["engine-manager"]);
        assert_eq!(c.health_interval, Duration::from_secs(2));
        assert_eq!(c.metrics_retention, Duration::from_secs(7 * 86400));
        assert_eq!(c.command_retention, Duration::from_secs(30 * 86400));
        assert_eq!(c.restart_policy(), policy());
        assert!(!c.stop_strategies_on_exit);
    }
}

//! The executor runtime: hosts one strategy in one OS process.
//!
//! # Layout
//! - [`main_with`]: the whole program behind a `main` — flags, `--list`, `--validate`
//!   and run mode. A user with their own strategies calls it with their own
//!   [`Registry`].
//! - [`Cli`]: the flags (clap derive, `REDIS_URL` / `ENGINE_REDIS_PREFIX` fallbacks).
//! - The event loop ([`StrategyHost`]): owns the strategy and its [`Context`] (no
//!   locks) and `select!`s over commands, ticks, the strategy's timer, the metrics
//!   interval and signals. It runs on a current-thread tokio runtime.
//! - Background tasks that talk to the loop only through bounded channels:
//!   - the control link ([`ControlLink`]): a Unix socket to the manager, reconnected
//!     forever, carrying `hello`, state changes, acks and `halted`;
//!   - the Redis subscriber ([`RedisSubscriber`]): command channels and
//!     `live_data:{token}` for the strategy's subscriptions, reconnected with backoff;
//!   - the Redis publisher ([`RedisPublisher`]): status and metrics messages.
//!
//! **Architecture invariant:** nothing on the start-up path or on the path to an exit
//! waits on Redis for longer than a short bound. Readiness is `State{running}` on the
//! control link; Redis may be down for the whole life of the process.
//!
//! **Architecture invariant:** the config is read from a file or stdin, never from
//! argv, and is never logged.

use clap::{CommandFactory, Parser};
use engine_protocol::control::{self, ExecutorMessage, ManagerMessage};
use engine_protocol::{Channels, Status, StopMode};
use engine_protocol::{ExecutorCommand, ExecutorCommandKind, MetricsMessage, StatusMessage};
use futures_util::{FutureExt, StreamExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};
use redis::AsyncCommands;
use serde_json::Value;
use std::collections::{BTreeSet, VecDeque};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use strategy_sdk::{Context, Registry, ShutdownReason, Strategy, Tick};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use uuid::Uuid;

/// Exit code for a failure that is not the strategy's fault (e.g. no signal handler).
const EXIT_FAILURE: u8 = 1;

/// Capacity of the tick channel between the Redis subscriber and the loop; when it is
/// full the newest tick is dropped and counted in `ticks_dropped`. Deep enough to
/// ride out a few tens of milliseconds without CPU at a few hundred thousand ticks
/// per second (BENCHMARKS.md); tokio allocates its blocks only as they fill.
const TICK_CHANNEL_CAPACITY: usize = 16_384;
/// Ticks the loop takes from the channel at once: a burst is handled in batches, and
/// the other branches of the loop (commands, signals, timers) are looked at between
/// two batches.
const TICK_BATCH: usize = 256;
/// Capacity of the command channel (commands are rare).
const COMMAND_CHANNEL_CAPACITY: usize = 64;
/// Capacity of the outgoing control-link frame channel.
const LINK_CHANNEL_CAPACITY: usize = 256;
/// Capacity of the outgoing Redis message channel; when full, messages are dropped.
const PUBLISH_CHANNEL_CAPACITY: usize = 256;
/// How many acks the link keeps while disconnected, to send after reconnecting.
const LINK_PENDING_ACKS: usize = 256;
/// How many command ids are remembered to spot duplicates.
const COMMAND_LOG_SIZE: usize = 256;

/// First and largest delay between control-link connection attempts.
const LINK_RETRY_MIN: Duration = Duration::from_millis(50);
const LINK_RETRY_MAX: Duration = Duration::from_secs(1);
/// A control-link write that takes longer than this means the manager is stuck.
const LINK_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Redis reconnect backoff of the subscriber.
const REDIS_RETRY_MIN: Duration = Duration::from_millis(100);
const REDIS_RETRY_MAX: Duration = Duration::from_secs(5);
const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const REDIS_PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the subscriber pings to notice a dead connection.
const REDIS_PING_INTERVAL: Duration = Duration::from_secs(30);
const REDIS_PING_TIMEOUT: Duration = Duration::from_secs(5);

/// The bound on the last Redis messages and link frames before the process exits.
const EXIT_FLUSH_TIMEOUT: Duration = Duration::from_millis(300);
/// How long background tasks get to finish after the loop ended.
const TASK_SHUTDOWN_TIMEOUT: Duration = Duration::from_millis(100);

/// The largest Redis command or tick payload the executor parses.
const MAX_REDIS_PAYLOAD_BYTES: usize = control::MAX_FRAME_BYTES;
/// The shortest timer or metrics period (a zero period would spin).
const MIN_PERIOD: Duration = Duration::from_millis(1);

/// Hosts one strategy: started by `engine-manager` (one process per strategy), or by
/// hand.
///
/// Modes: `--list [--json]`, `--validate --strategy-type T [--config-file PATH|-]`,
/// and run mode `--strategy-id ID --strategy-type T [--config-file PATH|-]`.
/// The config (a JSON object) is read from a file or from stdin (`-`), never from
/// the command line, because it may hold API keys.
#[derive(Debug, Clone, Parser)]
#[command(name = "strategy-executor", version)]
pub struct Cli {
    /// Print the registered strategy types (with a description and an example config)
    /// and exit.
    #[arg(long, conflicts_with = "validate")]
    pub list: bool,

    /// With --list: print a JSON array of {strategy_type, description, example_config}.
    #[arg(long, requires = "list")]
    pub json: bool,

    /// Check that --strategy-type accepts the config, print `ok` and exit 0; exit 2
    /// with the reason on stderr if it does not. Run-mode flags are ignored.
    #[arg(long, requires = "strategy_type")]
    pub validate: bool,

    /// Identity of the strategy (run mode), used in the Redis channel names.
    #[arg(long, value_name = "UUID")]
    pub strategy_id: Option<Uuid>,

    /// Human name of the strategy (run mode; defaults to the strategy type).
    #[arg(long)]
    pub name: Option<String>,

    /// The registry key of the strategy to run, e.g. `sma_crossover`.
    #[arg(long, value_name = "TYPE")]
    pub strategy_type: Option<String>,

    /// Where to read the config JSON object: a file, or `-` for stdin. Without it the
    /// config is `{}`.
    #[arg(long, value_name = "PATH|-")]
    pub config_file: Option<PathBuf>,

    /// Redis to subscribe and publish to.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: String,

    /// Prefix of every Redis channel name (empty gives the contract's names).
    #[arg(long, env = "ENGINE_REDIS_PREFIX", default_value = "")]
    pub redis_prefix: String,

    /// Unix socket of the manager's control link; the executor connects to it and
    /// reconnects forever.
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,

    /// How often metrics are published on `strategy:metrics:{id}` (e.g. `5s`, `200ms`).
    #[arg(long, default_value = "5s", value_parser = parse_period)]
    pub metrics_interval: Duration,

    /// The `node` reported in status messages (defaults to the host name).
    #[arg(long)]
    pub node: Option<String>,

    /// Come up paused: `on_start` runs, then `on_pause`, and the first status is
    /// `paused`. The manager uses it to restart a paused strategy that crashed, so
    /// that it never trades, even for a moment, while operators want it paused.
    #[arg(long)]
    pub start_paused: bool,
}

fn parse_period(text: &str) -> Result<Duration, String> {
    let period = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if period.is_zero() {
        return Err("must be above zero, e.g. 5s or 200ms".to_string());
    }
    Ok(period)
}

/// The whole executor program: parse the flags from the process arguments and run.
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     let mut registry = strategy_sdk::Registry::new();
///     // registry.register("my_strategy", "…", serde_json::json!({}), my_constructor);
///     strategy_executor::runtime::main_with(registry)
/// }
/// ```
pub fn main_with(registry: Registry) -> ExitCode {
    let cli = Cli::parse();
    run_cli(cli, &registry)
}

/// Run the program for already parsed flags.
pub fn run_cli(cli: Cli, registry: &Registry) -> ExitCode {
    if cli.list {
        return list(registry, cli.json);
    }
    if cli.validate {
        let strategy_type = cli.strategy_type.as_deref().unwrap_or_default();
        return validate(registry, strategy_type, cli.config_file.as_deref());
    }
    let (Some(strategy_id), Some(strategy_type)) = (cli.strategy_id, cli.strategy_type.clone())
    else {
        let err = Cli::command().error(
            clap::error::ErrorKind::MissingRequiredArgument,
            "run mode needs --strategy-id and --strategy-type (or use --list or --validate)",
        );
        let _ = err.print();
        return ExitCode::from(control::EXIT_BAD_CONFIG as u8);
    };
    let options = RunOptions {
        strategy_id,
        name: cli.name.unwrap_or_else(|| strategy_type.clone()),
        strategy_type,
        config_file: cli.config_file,
        redis_url: cli.redis_url,
        channels: Channels::new(cli.redis_prefix),
        control_socket: cli.control_socket,
        metrics_interval: cli.metrics_interval,
        node: cli.node.unwrap_or_else(engine_protocol::node_name),
        start_paused: cli.start_paused,
    };
    run(options, registry)
}

/// `--list`: one block per registered type.
fn list(registry: &Registry, json: bool) -> ExitCode {
    let mut out = std::io::stdout().lock();
    let written = if json {
        let infos: Vec<_> = registry.infos().collect();
        let text = serde_json::to_string_pretty(&infos).expect("strategy infos serialize");
        writeln!(out, "{text}")
    } else {
        registry.infos().try_for_each(|info| {
            writeln!(out, "{} — {}", info.strategy_type, info.description)?;
            writeln!(out, "    example config: {}", info.example_config)
        })
    };
    match written.and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(EXIT_FAILURE),
    }
}

/// `--validate`: build the strategy from the config and throw it away.
fn validate(registry: &Registry, strategy_type: &str, config_file: Option<&Path>) -> ExitCode {
    let config = match read_config(config_file) {
        Ok(config) => config,
        Err(err) => return print_error(&err, control::EXIT_BAD_CONFIG),
    };
    match registry.create(strategy_type, &config) {
        Ok(_) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(err) => print_error(&err, control::EXIT_BAD_CONFIG),
    }
}

/// Print `error: {message}: {cause}: …` as one line on stderr and return `code`.
fn print_error(err: &dyn std::error::Error, code: i32) -> ExitCode {
    let line = one_line(&error_chain(err));
    let _ = writeln!(std::io::stderr(), "error: {line}");
    ExitCode::from(code as u8)
}

/// The error and its causes, `: `-separated.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn one_line(text: &str) -> String {
    text.lines().collect::<Vec<_>>().join(" ")
}

/// Why the config could not be read. The messages never contain the config itself.
#[derive(Debug, thiserror::Error)]
pub enum ConfigReadError {
    #[error("cannot read the config from {source_name}")]
    Read {
        source_name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the config in {source_name} is not valid JSON ({detail})")]
    Json { source_name: String, detail: String },
    #[error("the config in {source_name} must be a JSON object, got {kind}")]
    NotAnObject {
        source_name: String,
        kind: &'static str,
    },
}

/// Read the config object from `path` (`-` for stdin); `{}` without a path or for
/// empty input.
pub fn read_config(path: Option<&Path>) -> Result<Value, ConfigReadError> {
    let Some(path) = path else {
        return Ok(Value::Object(Default::default()));
    };
    let (source_name, bytes) = if path == Path::new("-") {
        let mut bytes = Vec::new();
        let name = "stdin".to_string();
        std::io::stdin()
            .lock()
            .read_to_end(&mut bytes)
            .map_err(|source| ConfigReadError::Read {
                source_name: name.clone(),
                source,
            })?;
        (name, bytes)
    } else {
        let name = format!("'{}'", path.display());
        let bytes = std::fs::read(path).map_err(|source| ConfigReadError::Read {
            source_name: name.clone(),
            source,
        })?;
        (name, bytes)
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Default::default()));
    }
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| ConfigReadError::Json {
        source_name: source_name.clone(),
        // serde_json's messages say where, never what: no secret leaks through them.
        detail: e.to_string(),
    })?;
    if !value.is_object() {
        return Err(ConfigReadError::NotAnObject {
            source_name,
            kind: engine_protocol::json_kind(&value),
        });
    }
    Ok(value)
}

/// Replace the user name and password of a URL with `***`, for log lines.
///
/// `redis://user:secret@host:6379/0` → `redis://***@host:6379/0`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest_start = scheme_end + 3;
    let rest = &url[rest_start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..rest_start], &rest[at..]),
        None => url.to_string(),
    }
}

/// Run mode could not start (besides a bad config or strategy type).
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("invalid --redis-url {redacted_url}")]
    InvalidRedisUrl {
        redacted_url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("cannot start the tokio runtime")]
    Runtime(#[source] std::io::Error),
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
}

/// Everything run mode needs, from the flags.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub strategy_id: Uuid,
    pub name: String,
    pub strategy_type: String,
    pub config_file: Option<PathBuf>,
    pub redis_url: String,
    pub channels: Channels,
    pub control_socket: Option<PathBuf>,
    pub metrics_interval: Duration,
    pub node: String,
    /// Come up `paused` rather than `running` (`--start-paused`).
    pub start_paused: bool,
}

/// Run mode: build the strategy, then run the event loop until shutdown or halt.
pub fn run(options: RunOptions, registry: &Registry) -> ExitCode {
    init_tracing();
    let config = match read_config(options.config_file.as_deref()) {
        Ok(config) => config,
        Err(err) => return print_error(&err, control::EXIT_BAD_CONFIG),
    };
    let strategy = match registry.create(&options.strategy_type, &config) {
        Ok(strategy) => strategy,
        Err(err) => return print_error(&err, control::EXIT_BAD_CONFIG),
    };
    drop(config);
    let redis_client = match redis::Client::open(options.redis_url.as_str()) {
        Ok(client) => client,
        Err(err) => {
            let err = StartupError::InvalidRedisUrl {
                redacted_url: redact_url(&options.redis_url),
                source: err,
            };
            return print_error(&err, control::EXIT_BAD_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return print_error(&StartupError::Runtime(err), EXIT_FAILURE.into()),
    };
    let span = tracing::info_span!(
        "executor",
        strategy_id = %options.strategy_id,
        strategy = %options.name,
    );
    let code = runtime.block_on(run_async(options, strategy, redis_client).instrument(span));
    runtime.shutdown_timeout(TASK_SHUTDOWN_TIMEOUT);
    ExitCode::from(code)
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Who sent a command: the reply (the ack) always goes to the control link when there
/// is one, whatever the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CommandSource {
    Link,
    Redis,
}

impl CommandSource {
    fn as_str(self) -> &'static str {
        match self {
            CommandSource::Link => "control_link",
            CommandSource::Redis => "redis",
        }
    }
}

/// A command on its way from a background task to the loop.
#[derive(Debug)]
struct InboundCommand {
    command: ExecutorCommand,
    source: CommandSource,
}

/// Counters shared between the Redis subscriber and the loop.
#[derive(Debug, Default)]
struct TickCounters {
    dropped: AtomicU64,
}

async fn run_async(
    options: RunOptions,
    strategy: Box<dyn Strategy>,
    redis_client: redis::Client,
) -> u8 {
    tracing::info!(
        strategy_type = %options.strategy_type,
        redis = %redact_url(&options.redis_url),
        redis_prefix = %options.channels.prefix(),
        control_socket = ?options.control_socket,
        metrics_interval = ?options.metrics_interval,
        pid = std::process::id(),
        "executor starting"
    );
    let signals = match ProcessSignals::new() {
        Ok(signals) => signals,
        Err(err) => {
            print_error(&StartupError::Signals(err), EXIT_FAILURE.into());
            return EXIT_FAILURE;
        }
    };

    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (command_tx, command_rx) = mpsc::channel(COMMAND_CHANNEL_CAPACITY);
    let (tick_tx, tick_rx) = mpsc::channel(TICK_CHANNEL_CAPACITY);
    let counters = Arc::new(TickCounters::default());
    // True while the control link to the manager is connected: the manager then
    // delivers global commands itself, in order, and the Redis broadcast is ignored.
    let link_up = Arc::new(AtomicBool::new(false));

    let link = options.control_socket.clone().map(|path| {
        let (status_tx, status_rx) = watch::channel(Status::Starting);
        let (frame_tx, frame_rx) = mpsc::channel(LINK_CHANNEL_CAPACITY);
        let task = ControlLink {
            path,
            strategy_id: options.strategy_id,
            status: status_rx,
            outbound: frame_rx,
            commands: command_tx.clone(),
            pending: VecDeque::new(),
            flush_waiters: Vec::new(),
            link_up: link_up.clone(),
            cancel: cancel.clone(),
        };
        tracker.spawn(task.run().in_current_span());
        LinkHandle {
            status: status_tx,
            frames: frame_tx,
        }
    });

    let (publish_tx, publish_rx) = mpsc::channel(PUBLISH_CHANNEL_CAPACITY);
    let publisher = RedisPublisher {
        client: redis_client.clone(),
        outbound: publish_rx,
        cancel: cancel.clone(),
    };
    tracker.spawn(publisher.run().in_current_span());

    let base_channels: BTreeSet<String> = [
        options.channels.commands(options.strategy_id),
        options.channels.global_commands(),
    ]
    .into_iter()
    .collect();
    let (subscriptions_tx, subscriptions_rx) = watch::channel(base_channels.clone());
    let subscriber = RedisSubscriber {
        client: redis_client,
        commands_channel: options.channels.commands(options.strategy_id),
        global_channel: options.channels.global_commands(),
        live_data_prefix: options.channels.live_data(""),
        strategy_id: options.strategy_id,
        desired: subscriptions_rx,
        commands: command_tx.clone(),
        ticks: tick_tx,
        counters: counters.clone(),
        link_up,
        managed: options.control_socket.is_some(),
        cancel: cancel.clone(),
    };
    tracker.spawn(subscriber.run().in_current_span());
    tracker.close();

    let mut host = StrategyHost {
        ctx: Context::new(options.strategy_id, options.name.clone()),
        strategy,
        status: Status::Starting,
        identity: Identity {
            strategy_id: options.strategy_id,
            name: options.name,
            pid: std::process::id(),
            node: options.node,
        },
        channels: options.channels,
        link,
        publisher: publish_tx,
        subscriptions: subscriptions_tx,
        base_channels,
        commands_seen: CommandLog::default(),
        counters,
        ticks_received: 0,
        last_tick_at: None,
        started_at: Instant::now(),
        timer: None,
        timer_period: None,
    };
    // Keep one sender so that the command channel never closes under the loop.
    let code = host
        .run(
            command_rx,
            tick_rx,
            options.metrics_interval,
            options.start_paused,
            signals,
            command_tx,
        )
        .await;

    cancel.cancel();
    if tokio::time::timeout(TASK_SHUTDOWN_TIMEOUT, tracker.wait())
        .await
        .is_err()
    {
        tracing::debug!("background tasks did not finish in time; dropping them");
    }
    tracing::info!(exit_code = code, "executor exiting");
    code
}

/// SIGTERM and SIGINT end the strategy (reason `host_shutdown`); SIGHUP is ignored so
/// that a closing terminal of the manager never takes strategies down.
struct ProcessSignals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
}

impl ProcessSignals {
    fn new() -> std::io::Result<Self> {
        Ok(ProcessSignals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }
}

/// Who this process is, for status messages.
#[derive(Debug, Clone)]
struct Identity {
    strategy_id: Uuid,
    name: String,
    pid: u32,
    node: String,
}

/// The loop's side of the control link.
struct LinkHandle {
    status: watch::Sender<Status>,
    frames: mpsc::Sender<LinkOutbound>,
}

/// What the loop hands to the control-link task.
#[derive(Debug)]
enum LinkOutbound {
    Frame(ExecutorMessage),
    /// Answered once every frame before it was written (or at once when disconnected).
    Flush(oneshot::Sender<()>),
}

/// What the loop hands to the Redis publisher.
#[derive(Debug)]
enum Outgoing {
    Publish {
        channel: String,
        payload: String,
    },
    /// Answered once every message before it was attempted.
    Flush(oneshot::Sender<()>),
}

/// The last acks, by command id, so that a repeated command is acknowledged again but
/// not applied twice.
#[derive(Debug, Default)]
struct CommandLog {
    acks: VecDeque<(Uuid, Ack)>,
}

#[derive(Debug, Clone, PartialEq)]
struct Ack {
    ok: bool,
    error: Option<String>,
}

impl Ack {
    fn ok() -> Self {
        Ack {
            ok: true,
            error: None,
        }
    }
    fn failed(error: impl Into<String>) -> Self {
        Ack {
            ok: false,
            error: Some(error.into()),
        }
    }
}

impl CommandLog {
    fn get(&self, command_id: Uuid) -> Option<&Ack> {
        self.acks
            .iter()
            .find(|(id, _)| *id == command_id)
            .map(|(_, ack)| ack)
    }

    fn record(&mut self, command_id: Uuid, ack: Ack) {
        if self.acks.len() >= COMMAND_LOG_SIZE {
            self.acks.pop_front();
        }
        self.acks.push_back((command_id, ack));
    }
}

/// The loop ended: the process exits with this code.
struct Exit(u8);

/// The event loop: owns the strategy and its context.
struct StrategyHost {
    strategy: Box<dyn Strategy>,
    ctx: Context,
    status: Status,
    identity: Identity,
    channels: Channels,
    link: Option<LinkHandle>,
    publisher: mpsc::Sender<Outgoing>,
    subscriptions: watch::Sender<BTreeSet<String>>,
    /// The command channels, always subscribed.
    base_channels: BTreeSet<String>,
    commands_seen: CommandLog,
    counters: Arc<TickCounters>,
    ticks_received: u64,
    last_tick_at: Option<Instant>,
    started_at: Instant,
    timer: Option<Interval>,
    timer_period: Option<Duration>,
}

/// A transition's cause, for the status message and the link's state frame.
#[derive(Debug, Default, Clone)]
struct Cause {
    command_id: Option<Uuid>,
    reason: Option<String>,
    error: Option<String>,
}

impl StrategyHost {
    async fn run(
        &mut self,
        mut commands: mpsc::Receiver<InboundCommand>,
        mut ticks: mpsc::Receiver<Tick>,
        metrics_interval: Duration,
        start_paused: bool,
        mut signals: ProcessSignals,
        _keep_commands_open: mpsc::Sender<InboundCommand>,
    ) -> u8 {
        self.set_status(Status::Starting, Cause::default());
        self.ctx.set_now(chrono::Utc::now());
        self.strategy.on_start(&mut self.ctx);
        if let Some(Exit(code)) = self.after_callback().await {
            return code;
        }
        self.reset_timer();
        if start_paused {
            self.ctx.set_now(chrono::Utc::now());
            self.strategy.on_pause(&mut self.ctx);
            if let Some(Exit(code)) = self.after_callback().await {
                return code;
            }
            let cause = Cause {
                reason: Some("started paused".to_string()),
                ..Cause::default()
            };
            self.set_status(Status::Paused, cause);
            tracing::info!("strategy started paused");
        } else {
            self.set_status(Status::Running, Cause::default());
            tracing::info!("strategy running");
        }

        let period = metrics_interval.max(MIN_PERIOD);
        let mut metrics = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        metrics.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut tick_batch = Vec::with_capacity(TICK_BATCH);
        let mut ticks_open = true;

        loop {
            let exit = tokio::select! {
                _ = signals.terminate.recv() => {
                    tracing::info!("SIGTERM received; shutting down");
                    Some(self.shutdown(ShutdownReason::HostShutdown, StopMode::Leave, None).await)
                }
                _ = signals.interrupt.recv() => {
                    tracing::info!("SIGINT received; shutting down");
                    Some(self.shutdown(ShutdownReason::HostShutdown, StopMode::Leave, None).await)
                }
                _ = signals.hangup.recv() => {
                    tracing::info!("SIGHUP received and ignored");
                    None
                }
                Some(inbound) = commands.recv() => self.handle_command(inbound).await,
                n = ticks.recv_many(&mut tick_batch, TICK_BATCH), if ticks_open => {
                    ticks_open = n > 0;
                    self.handle_ticks(&mut tick_batch).await
                }
                _ = next_timer_tick(&mut self.timer) => self.handle_timer().await,
                _ = metrics.tick() => {
                    self.publish_metrics();
                    None
                }
            };
            if let Some(Exit(code)) = exit {
                return code;
            }
        }
    }

    /// After every strategy callback: follow subscription changes and honour a halt.
    async fn after_callback(&mut self) -> Option<Exit> {
        if self.ctx.take_subscriptions_changed() {
            let mut desired = self.base_channels.clone();
            desired.extend(
                self.ctx
                    .subscriptions()
                    .iter()
                    .map(|token| self.channels.live_data(token)),
            );
            tracing::debug!(tokens = ?self.ctx.subscriptions(), "subscriptions changed");
            self.subscriptions.send_replace(desired);
        }
        let reason = self.ctx.halt_reason()?.to_string();
        Some(self.halt(reason).await)
    }

    /// Hand a batch of ticks to the strategy, in order (the batch is left empty).
    async fn handle_ticks(&mut self, batch: &mut Vec<Tick>) -> Option<Exit> {
        for tick in batch.drain(..) {
            if let Some(exit) = self.handle_tick(tick).await {
                return Some(exit);
            }
        }
        None
    }

    async fn handle_tick(&mut self, tick: Tick) -> Option<Exit> {
        self.ticks_received += 1;
        self.last_tick_at = Some(Instant::now());
        self.ctx.set_now(tick.timestamp);
        self.ctx.mark_price(&tick.token, tick.price);
        if self.status != Status::Running {
            return None;
        }
        self.strategy.on_tick(&mut self.ctx, &tick);
        self.after_callback().await
    }

    async fn handle_timer(&mut self) -> Option<Exit> {
        if self.status != Status::Running {
            return None;
        }
        self.ctx.set_now(chrono::Utc::now());
        self.strategy.on_timer(&mut self.ctx);
        self.after_callback().await
    }

    /// (Re)build the timer when the strategy's interval changed (start, new config).
    fn reset_timer(&mut self) {
        let period = self.strategy.timer_interval().map(|p| p.max(MIN_PERIOD));
        if period == self.timer_period {
            return;
        }
        self.timer_period = period;
        self.timer = period.map(|period| {
            let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            timer.set_missed_tick_behavior(MissedTickBehavior::Skip);
            timer
        });
    }

    #[tracing::instrument(
        skip_all,
        fields(command_id = %inbound.command.command_id, command = ?inbound.command.command, source = inbound.source.as_str())
    )]
    async fn handle_command(&mut self, inbound: InboundCommand) -> Option<Exit> {
        let command = inbound.command;
        let command_id = command.command_id;
        if let Some(ack) = self.commands_seen.get(command_id).cloned() {
            tracing::debug!("duplicate command; acknowledged again, not applied");
            self.send_ack(command_id, ack);
            return None;
        }
        let cause = Cause {
            command_id: Some(command_id),
            ..Cause::default()
        };
        // The ack goes out first, then the state the command caused.
        let mut transition = None;
        let ack = match command.command {
            ExecutorCommandKind::Pause => {
                if self.status == Status::Running {
                    self.ctx.set_now(chrono::Utc::now());
                    self.strategy.on_pause(&mut self.ctx);
                    transition = Some(Status::Paused);
                    tracing::info!("strategy paused");
                }
                Ack::ok()
            }
            ExecutorCommandKind::Resume => {
                if self.status == Status::Paused {
                    self.ctx.set_now(chrono::Utc::now());
                    self.strategy.on_resume(&mut self.ctx);
                    transition = Some(Status::Running);
                    tracing::info!("strategy resumed");
                }
                Ack::ok()
            }
            ExecutorCommandKind::UpdateConfig => match &command.config {
                None => Ack::failed("update_config needs `config`, the whole new config object"),
                Some(config) => {
                    self.ctx.set_now(chrono::Utc::now());
                    match self.strategy.update_config(&mut self.ctx, config) {
                        Ok(()) => {
                            tracing::info!("new config applied");
                            self.reset_timer();
                            Ack::ok()
                        }
                        Err(err) => {
                            tracing::warn!("new config rejected; keeping the old one: {err}");
                            Ack::failed(err.to_string())
                        }
                    }
                }
            },
            ExecutorCommandKind::Shutdown => {
                let reason = match command.reason.as_deref() {
                    None => ShutdownReason::Stop,
                    Some(text) => ShutdownReason::parse(text).unwrap_or_else(|| {
                        tracing::warn!(reason = text, "unknown shutdown reason; using stop");
                        ShutdownReason::Stop
                    }),
                };
                let mode = command.mode.unwrap_or_default();
                self.commands_seen.record(command_id, Ack::ok());
                self.send_ack(command_id, Ack::ok());
                return Some(self.shutdown(reason, mode, Some(command_id)).await);
            }
        };
        self.commands_seen.record(command_id, ack.clone());
        self.send_ack(command_id, ack);
        if let Some(status) = transition {
            self.set_status(status, cause);
        }
        self.after_callback().await
    }

    /// Stop for good: `stopping`, flatten if asked, `on_shutdown`, final messages.
    async fn shutdown(
        &mut self,
        reason: ShutdownReason,
        mode: StopMode,
        command_id: Option<Uuid>,
    ) -> Exit {
        tracing::info!(%reason, ?mode, "shutting down");
        self.set_status(
            Status::Stopping,
            Cause {
                command_id,
                reason: Some(reason.as_str().to_string()),
                error: None,
            },
        );
        self.ctx.set_now(chrono::Utc::now());
        if mode == StopMode::Flatten {
            let (fills, errors) = self.ctx.broker_mut().close_all();
            for fill in &fills {
                tracing::info!(
                    token = %fill.token, side = ?fill.side, qty = fill.qty, price = fill.price,
                    realised_pnl = fill.realised_pnl, "position closed (flatten)"
                );
            }
            for err in &errors {
                tracing::warn!("could not close a position (flatten): {err}");
            }
        }
        self.strategy.on_shutdown(&mut self.ctx, reason);
        self.publish_metrics();
        self.set_status(
            Status::Stopped,
            Cause {
                command_id,
                reason: Some(reason.as_str().to_string()),
                error: None,
            },
        );
        self.flush().await;
        Exit(0)
    }

    /// The strategy ended itself: tell the manager, shut it down, exit with
    /// [`control::EXIT_HALTED`].
    async fn halt(&mut self, reason: String) -> Exit {
        tracing::warn!(%reason, "strategy halted itself");
        self.send_link(ExecutorMessage::Halted {
            reason: reason.clone(),
        });
        let _ = writeln!(std::io::stderr(), "halted: {}", one_line(&reason));
        self.ctx.set_now(chrono::Utc::now());
        self.strategy
            .on_shutdown(&mut self.ctx, ShutdownReason::Stop);
        self.publish_metrics();
        self.status = Status::Error;
        self.publish_status(
            Status::Error,
            &Cause {
                error: Some(reason),
                ..Cause::default()
            },
        );
        self.flush().await;
        Exit(control::EXIT_HALTED as u8)
    }

    /// Record a transition: the link's state frame and the Redis status message.
    ///
    /// The link carries `running`, `paused` and `stopping` (and `starting` in the
    /// hello); `stopped` and `error` go to Redis only: the manager sees the exit itself.
    fn set_status(&mut self, status: Status, cause: Cause) {
        self.status = status;
        if let Some(link) = &self.link {
            if matches!(
                status,
                Status::Starting | Status::Running | Status::Paused | Status::Stopping
            ) {
                link.status.send_replace(status);
                if status != Status::Starting {
                    self.send_link(ExecutorMessage::State {
                        status,
                        reason: cause.reason.clone(),
                        command_id: cause.command_id,
                    });
                }
            }
        }
        self.publish_status(status, &cause);
    }

    fn send_ack(&self, command_id: Uuid, ack: Ack) {
        self.send_link(ExecutorMessage::Ack {
            command_id,
            ok: ack.ok,
            error: ack.error,
        });
    }

    fn send_link(&self, message: ExecutorMessage) {
        let Some(link) = &self.link else {
            return;
        };
        if let Err(err) = link.frames.try_send(LinkOutbound::Frame(message)) {
            tracing::warn!("control link queue is full; a frame was dropped: {err}");
        }
    }

    fn publish_status(&self, status: Status, cause: &Cause) {
        let message = StatusMessage {
            strategy_id: self.identity.strategy_id,
            name: self.identity.name.clone(),
            timestamp: chrono::Utc::now(),
            status,
            pid: Some(self.identity.pid),
            node: self.identity.node.clone(),
            error: cause.error.clone(),
            reason: cause.reason.clone(),
            command_id: cause.command_id,
            source: Some("executor".to_string()),
        };
        self.publish(self.channels.status(self.identity.strategy_id), &message);
    }

    fn publish_metrics(&self) {
        let mut metrics = self.ctx.metrics();
        metrics
            .extra
            .insert("ticks_received".into(), self.ticks_received.into());
        metrics.extra.insert(
            "ticks_dropped".into(),
            self.counters.dropped.load(Ordering::Relaxed).into(),
        );
        metrics.extra.insert(
            "last_tick_age_ms".into(),
            match self.last_tick_at {
                Some(at) => Value::from(at.elapsed().as_millis() as u64),
                None => Value::Null,
            },
        );
        metrics.extra.insert(
            "uptime_s".into(),
            self.started_at.elapsed().as_secs().into(),
        );
        let message = MetricsMessage {
            strategy_id: self.identity.strategy_id,
            name: self.identity.name.clone(),
            timestamp: chrono::Utc::now(),
            metrics,
        };
        self.publish(self.channels.metrics(self.identity.strategy_id), &message);
    }

    fn publish<T: serde::Serialize>(&self, channel: String, message: &T) {
        let payload = match serde_json::to_string(message) {
            Ok(payload) => payload,
            Err(err) => {
                // Only a strategy's non-finite custom metric can get here.
                tracing::warn!(%channel, "message not published, it does not serialize: {err}");
                return;
            }
        };
        if self
            .publisher
            .try_send(Outgoing::Publish { channel, payload })
            .is_err()
        {
            tracing::debug!("redis publish queue is full; message dropped");
        }
    }

    /// Give the last link frames and Redis messages a bounded chance to go out.
    async fn flush(&self) {
        let link = async {
            if let Some(link) = &self.link {
                let (tx, rx) = oneshot::channel();
                if link.frames.try_send(LinkOutbound::Flush(tx)).is_ok() {
                    let _ = rx.await;
                }
            }
        };
        let redis = async {
            let (tx, rx) = oneshot::channel();
            if self.publisher.try_send(Outgoing::Flush(tx)).is_ok() {
                let _ = rx.await;
            }
        };
        if tokio::time::timeout(EXIT_FLUSH_TIMEOUT, futures_util::future::join(link, redis))
            .await
            .is_err()
        {
            tracing::debug!("final messages not all delivered within {EXIT_FLUSH_TIMEOUT:?}");
        }
    }
}

async fn next_timer_tick(timer: &mut Option<Interval>) {
    match timer {
        Some(timer) => {
            timer.tick().await;
        }
        None => std::future::pending().await,
    }
}

// ---------------------------------------------------------------------------------
// Control link
// ---------------------------------------------------------------------------------

/// The executor's end of the control link: connects to the manager's socket, says
/// hello with the current status, then writes state changes and acks and reads
/// commands. Reconnects forever (50 ms first, doubling to 1 s).
struct ControlLink {
    path: PathBuf,
    strategy_id: Uuid,
    status: watch::Receiver<Status>,
    outbound: mpsc::Receiver<LinkOutbound>,
    commands: mpsc::Sender<InboundCommand>,
    /// Acks and `halted` waiting for a connection (state frames are not kept: the
    /// hello carries the current status).
    pending: VecDeque<ExecutorMessage>,
    /// Flushes waiting for `pending` to go out on the next connection.
    flush_waiters: Vec<oneshot::Sender<()>>,
    /// Set while connected (read by the Redis subscriber).
    link_up: Arc<AtomicBool>,
    cancel: CancellationToken,
}

/// Why a connection ended.
enum Served {
    Cancelled,
    Disconnected(String),
}

impl ControlLink {
    async fn run(mut self) {
        let mut delay = LINK_RETRY_MIN;
        let mut failure_logged = false;
        loop {
            let connected = tokio::select! {
                _ = self.cancel.cancelled() => return,
                result = UnixStream::connect(&self.path) => result,
            };
            match connected {
                Ok(stream) => {
                    tracing::info!(socket = %self.path.display(), "control link connected");
                    failure_logged = false;
                    delay = LINK_RETRY_MIN;
                    self.link_up.store(true, Ordering::Relaxed);
                    let served = self.serve(stream).await;
                    self.link_up.store(false, Ordering::Relaxed);
                    match served {
                        Served::Cancelled => return,
                        Served::Disconnected(why) => {
                            tracing::info!("control link lost ({why}); reconnecting");
                        }
                    }
                }
                Err(err) => {
                    self.release_flush_waiters();
                    if !failure_logged {
                        tracing::info!(
                            socket = %self.path.display(),
                            "control link not connected ({err}); retrying every {}ms up to {}s",
                            LINK_RETRY_MIN.as_millis(),
                            LINK_RETRY_MAX.as_secs()
                        );
                        failure_logged = true;
                    }
                }
            }
            if !self.wait_disconnected(delay).await {
                return;
            }
            delay = (delay * 2).min(LINK_RETRY_MAX);
        }
    }

    /// Wait `delay` while keeping up with the loop's frames; false when cancelled.
    /// A flush with frames pending (the process is about to exit) cuts the wait short.
    async fn wait_disconnected(&mut self, delay: Duration) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return false,
                _ = &mut sleep => return true,
                outbound = self.outbound.recv() => match outbound {
                    Some(outbound) => {
                        self.hold(outbound);
                        if !self.flush_waiters.is_empty() {
                            return true;
                        }
                    }
                    None => return false,
                },
            }
        }
    }

    fn release_flush_waiters(&mut self) {
        for done in self.flush_waiters.drain(..) {
            let _ = done.send(());
        }
    }

    /// Keep what must survive a disconnection. A flush is answered at once when nothing
    /// is pending, else after the next connection attempt.
    fn hold(&mut self, outbound: LinkOutbound) {
        match outbound {
            LinkOutbound::Frame(ExecutorMessage::State { .. } | ExecutorMessage::Hello { .. }) => {}
            LinkOutbound::Frame(message) => {
                if self.pending.len() >= LINK_PENDING_ACKS {
                    self.pending.pop_front();
                }
                self.pending.push_back(message);
            }
            LinkOutbound::Flush(done) => {
                if self.pending.is_empty() {
                    let _ = done.send(());
                } else {
                    self.flush_waiters.push(done);
                }
            }
        }
    }

    async fn serve(&mut self, stream: UnixStream) -> Served {
        let (read_half, mut write_half) = stream.into_split();
        let mut reader = FrameReader::new(BufReader::new(read_half), control::MAX_FRAME_BYTES);

        // Everything queued so far is older than the status read below.
        while let Ok(outbound) = self.outbound.try_recv() {
            self.hold(outbound);
        }
        let status = *self.status.borrow();
        let greeting = [
            ExecutorMessage::Hello {
                strategy_id: self.strategy_id,
                pid: std::process::id(),
                status,
            },
            ExecutorMessage::State {
                status,
                reason: None,
                command_id: None,
            },
        ];
        for message in &greeting {
            if let Err(err) = write_frame(&mut write_half, message).await {
                return Served::Disconnected(format!("writing hello failed: {err}"));
            }
        }
        while let Some(message) = self.pending.pop_front() {
            if let Err(err) = write_frame(&mut write_half, &message).await {
                self.pending.push_front(message);
                return Served::Disconnected(format!("write failed: {err}"));
            }
        }
        self.release_flush_waiters();

        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return Served::Cancelled,
                frame = reader.next_frame() => match frame {
                    Ok(Some(Frame::Line(line))) => {
                        if let Some(command) = parse_manager_frame(&line) {
                            let inbound = InboundCommand { command, source: CommandSource::Link };
                            if self.commands.send(inbound).await.is_err() {
                                return Served::Cancelled;
                            }
                        }
                    }
                    Ok(Some(Frame::TooLong)) => tracing::warn!(
                        "control link frame longer than {} bytes dropped",
                        control::MAX_FRAME_BYTES
                    ),
                    Ok(None) => return Served::Disconnected("closed by the manager".to_string()),
                    Err(err) => return Served::Disconnected(format!("read failed: {err}")),
                },
                outbound = self.outbound.recv() => match outbound {
                    None => return Served::Cancelled,
                    Some(LinkOutbound::Flush(done)) => {
                        let _ = done.send(());
                    }
                    Some(LinkOutbound::Frame(message)) => {
                        if let Err(err) = write_frame(&mut write_half, &message).await {
                            if !matches!(message, ExecutorMessage::State { .. }) {
                                self.pending.push_back(message);
                            }
                            return Served::Disconnected(format!("write failed: {err}"));
                        }
                    }
                },
            }
        }
    }
}

fn parse_manager_frame(line: &[u8]) -> Option<ExecutorCommand> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    match serde_json::from_slice::<ManagerMessage>(line) {
        Ok(ManagerMessage::Command(command)) => Some(command),
        Err(err) => {
            tracing::warn!("invalid control link frame dropped: {err}");
            None
        }
    }
}

async fn write_frame(
    writer: &mut OwnedWriteHalf,
    message: &ExecutorMessage,
) -> std::io::Result<()> {
    let frame = control::encode_frame(message);
    match tokio::time::timeout(LINK_WRITE_TIMEOUT, writer.write_all(&frame)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the manager did not read for 2s",
        )),
    }
}

/// One line of the control link.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    Line(Vec<u8>),
    /// A line longer than the limit, skipped.
    TooLong,
}

/// Reads `\n`-terminated frames, never holding more than `max` bytes of one line.
///
/// Cancel-safe: state only changes after `fill_buf` returned, so it can sit in a
/// `select!` branch.
struct FrameReader<R> {
    inner: R,
    line: Vec<u8>,
    discarding: bool,
    max: usize,
}

impl<R: AsyncBufRead + Unpin> FrameReader<R> {
    fn new(inner: R, max: usize) -> Self {
        FrameReader {
            inner,
            line: Vec::new(),
            discarding: false,
            max,
        }
    }

    /// The next frame; `None` at end of stream (a partial last line is dropped).
    async fn next_frame(&mut self) -> std::io::Result<Option<Frame>> {
        loop {
            let buf = self.inner.fill_buf().await?;
            if buf.is_empty() {
                return Ok(None);
            }
            match buf.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    let frame = if self.discarding || self.line.len() + end > self.max {
                        self.line.clear();
                        Frame::TooLong
                    } else {
                        self.line.extend_from_slice(&buf[..end]);
                        Frame::Line(std::mem::take(&mut self.line))
                    };
                    self.discarding = false;
                    self.inner.consume(end + 1);
                    return Ok(Some(frame));
                }
                None => {
                    let len = buf.len();
                    if !self.discarding {
                        if self.line.len() + len > self.max {
                            self.discarding = true;
                            self.line = Vec::new();
                        } else {
                            self.line.extend_from_slice(buf);
                        }
                    }
                    self.inner.consume(len);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------

/// Subscribes to the command channels and to `live_data:{token}` for each of the
/// strategy's tokens; hands commands and ticks to the loop without ever waiting on it.
/// Reconnects with backoff and logs once per outage.
struct RedisSubscriber {
    client: redis::Client,
    /// `strategy:commands:{id}`, `strategy:global:commands` and `live_data:` with the
    /// prefix, named once rather than for every message.
    commands_channel: String,
    global_channel: String,
    live_data_prefix: String,
    strategy_id: Uuid,
    /// The channels the loop wants, kept in sync on every (re)connection.
    desired: watch::Receiver<BTreeSet<String>>,
    commands: mpsc::Sender<InboundCommand>,
    ticks: mpsc::Sender<Tick>,
    counters: Arc<TickCounters>,
    /// Whether the control link is connected (see `route_command`).
    link_up: Arc<AtomicBool>,
    /// Started by a manager (`--control-socket`).
    managed: bool,
    cancel: CancellationToken,
}

impl RedisSubscriber {
    async fn run(mut self) {
        let mut delay = REDIS_RETRY_MIN;
        let mut in_outage = false;
        let cancel = self.cancel.clone();
        loop {
            let outcome = tokio::select! {
                _ = cancel.cancelled() => return,
                outcome = self.connect_and_serve(&mut in_outage, &mut delay) => outcome,
            };
            match outcome {
                Err(err) => {
                    if !in_outage {
                        tracing::warn!(
                            "redis subscriber disconnected: {err}; reconnecting in the background (further failures are not logged until it works again)"
                        );
                        in_outage = true;
                    } else {
                        tracing::debug!("redis subscriber still disconnected: {err}");
                    }
                }
                Ok(()) => return,
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(REDIS_RETRY_MAX);
        }
    }

    /// One connection: returns `Ok` only when the loop went away.
    async fn connect_and_serve(
        &mut self,
        in_outage: &mut bool,
        delay: &mut Duration,
    ) -> Result<(), String> {
        let pubsub = tokio::time::timeout(REDIS_CONNECT_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| "connecting timed out".to_string())?
            .map_err(|err| format!("cannot connect: {err}"))?;
        let (mut sink, mut stream) = pubsub.split();
        let mut subscribed = BTreeSet::new();
        let desired = self.desired.borrow_and_update().clone();
        sync_subscriptions(&mut sink, &mut subscribed, &desired).await?;
        if *in_outage {
            tracing::info!("redis subscriber connected again");
            *in_outage = false;
        } else {
            tracing::info!("redis subscriber connected");
        }
        *delay = REDIS_RETRY_MIN;

        let mut ping = tokio::time::interval_at(
            tokio::time::Instant::now() + REDIS_PING_INTERVAL,
            REDIS_PING_INTERVAL,
        );
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = stream.next() => match message {
                    Some(message) => {
                        self.route(&message);
                        // Whatever else has already arrived, without going round
                        // the select! for each message.
                        for _ in 1..TICK_BATCH {
                            match stream.next().now_or_never() {
                                Some(Some(message)) => self.route(&message),
                                Some(None) => return Err("connection closed".to_string()),
                                None => break,
                            }
                        }
                    }
                    None => return Err("connection closed".to_string()),
                },
                changed = self.desired.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let desired = self.desired.borrow_and_update().clone();
                    sync_subscriptions(&mut sink, &mut subscribed, &desired).await?;
                }
                _ = ping.tick() => {
                    match tokio::time::timeout(REDIS_PING_TIMEOUT, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(err)) => return Err(format!("ping failed: {err}")),
                        Err(_) => return Err("ping timed out".to_string()),
                    }
                }
            }
        }
    }

    fn route(&self, message: &redis::Msg) {
        let channel = message.get_channel_name();
        let payload = message.get_payload_bytes();
        if payload.len() > MAX_REDIS_PAYLOAD_BYTES {
            tracing::warn!(
                channel,
                bytes = payload.len(),
                "oversized redis message dropped"
            );
            return;
        }
        if let Some(token) = channel.strip_prefix(self.live_data_prefix.as_str()) {
            self.route_tick(token, payload);
        } else if channel == self.commands_channel || channel == self.global_channel {
            self.route_command(channel, payload);
        } else {
            tracing::debug!(channel, "message on an unexpected channel ignored");
        }
    }

    fn route_command(&self, channel: &str, payload: &[u8]) {
        let command: ExecutorCommand = match serde_json::from_slice(payload) {
            Ok(command) => command,
            Err(err) => {
                tracing::warn!(channel, "malformed command dropped: {err}");
                return;
            }
        };
        if let Some(target) = command.strategy_id {
            if target != self.strategy_id {
                tracing::debug!(channel, %target, "command for another strategy ignored");
                return;
            }
        }
        // Under a manager, a global command reaches this executor through its
        // supervisor, in order with the strategy's other commands (or not at all, when
        // it does not apply). The broadcast is for executors no manager serves: applied
        // here it could overtake, or undo, commands given after it. That holds for the
        // manager's own broadcast (`source: manager`) even while the link is down (a
        // manager restarting): it applied the command before publishing it.
        let manager_sent = command.source.as_deref() == Some("manager");
        if channel == self.global_channel
            && (self.link_up.load(Ordering::Relaxed) || (self.managed && manager_sent))
        {
            tracing::debug!(channel, command_id = %command.command_id, "global broadcast ignored: the manager delivers it over the control link");
            return;
        }
        let inbound = InboundCommand {
            command,
            source: CommandSource::Redis,
        };
        if let Err(err) = self.commands.try_send(inbound) {
            tracing::warn!(channel, "command queue full; command dropped: {err}");
        }
    }

    fn route_tick(&self, token: &str, payload: &[u8]) {
        let tick: Tick = match serde_json::from_slice(payload) {
            Ok(tick) => tick,
            Err(err) => {
                tracing::debug!(token, "invalid tick dropped: {err}");
                return;
            }
        };
        if tick.token != token {
            tracing::debug!(token, tick_token = %tick.token, "tick for another token dropped");
            return;
        }
        if !tick.price.is_finite() || tick.price <= 0.0 {
            tracing::debug!(
                token,
                "tick with a price that is not a positive number dropped"
            );
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = self.ticks.try_send(tick) {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Make the connection's subscriptions equal `desired`.
async fn sync_subscriptions(
    sink: &mut PubSubSink,
    subscribed: &mut BTreeSet<String>,
    desired: &BTreeSet<String>,
) -> Result<(), String> {
    let to_add: Vec<&String> = desired.difference(subscribed).collect();
    if !to_add.is_empty() {
        tokio::time::timeout(REDIS_CONNECT_TIMEOUT, sink.subscribe(&to_add))
            .await
            .map_err(|_| "subscribing timed out".to_string())?
            .map_err(|err| format!("subscribing failed: {err}"))?;
        tracing::debug!(channels = ?to_add, "subscribed");
    }
    let to_remove: Vec<&String> = subscribed.difference(desired).collect();
    if !to_remove.is_empty() {
        tokio::time::timeout(REDIS_CONNECT_TIMEOUT, sink.unsubscribe(&to_remove))
            .await
            .map_err(|_| "unsubscribing timed out".to_string())?
            .map_err(|err| format!("unsubscribing failed: {err}"))?;
        tracing::debug!(channels = ?to_remove, "unsubscribed");
    }
    *subscribed = desired.clone();
    Ok(())
}

/// Publishes status and metrics messages through a reconnecting connection; a failure
/// is logged once per outage and never reaches the strategy.
struct RedisPublisher {
    client: redis::Client,
    outbound: mpsc::Receiver<Outgoing>,
    cancel: CancellationToken,
}

impl RedisPublisher {
    async fn run(mut self) {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let mut connection: ConnectionManager =
            match ConnectionManager::new_lazy_with_config(self.client.clone(), config) {
                Ok(connection) => connection,
                Err(err) => {
                    tracing::error!(
                        "redis publisher cannot start; nothing will be published: {err}"
                    );
                    while let Some(outgoing) = self.outbound.recv().await {
                        if let Outgoing::Flush(done) = outgoing {
                            let _ = done.send(());
                        }
                    }
                    return;
                }
            };
        let mut in_outage = false;
        loop {
            let outgoing = tokio::select! {
                _ = self.cancel.cancelled() => return,
                outgoing = self.outbound.recv() => match outgoing {
                    Some(outgoing) => outgoing,
                    None => return,
                },
            };
            match outgoing {
                Outgoing::Flush(done) => {
                    let _ = done.send(());
                }
                Outgoing::Publish { channel, payload } => {
                    let published = tokio::time::timeout(
                        REDIS_PUBLISH_TIMEOUT,
                        connection.publish::<_, _, i64>(&channel, &payload),
                    )
                    .await;
                    let failure = match published {
                        Ok(Ok(_)) => None,
                        Ok(Err(err)) => Some(err.to_string()),
                        Err(_) => Some("timed out".to_string()),
                    };
                    match failure {
                        None if in_outage => {
                            tracing::info!("publishing to redis works again");
                            in_outage = false;
                        }
                        None => {}
                        Some(err) if !in_outage => {
                            tracing::warn!(
                                %channel,
                                "publishing to redis failed: {err}; the strategy keeps running (further failures are not logged until it works again)"
                            );
                            in_outage = true;
                        }
                        Some(err) => {
                            tracing::debug!(%channel, "redis still unreachable for publishing: {err}")
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_hides_userinfo() {
        assert_eq!(
            redact_url("redis://user:secret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(redact_url("redis://:secret@host"), "redis://***@host");
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(redact_url("redis://host/0?x=a@b"), "redis://host/0?x=a@b");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn command_log_keeps_the_last_acks() {
        let mut log = CommandLog::default();
        let first = Uuid::new_v4();
        log.record(first, Ack::failed("no"));
        assert_eq!(log.get(first), Some(&Ack::failed("no")));
        for _ in 0..COMMAND_LOG_SIZE {
            log.record(Uuid::new_v4(), Ack::ok());
        }
        assert_eq!(log.get(first), None);
        assert_eq!(log.acks.len(), COMMAND_LOG_SIZE);
    }

    #[tokio::test]
    async fn frame_reader_splits_lines_and_skips_long_ones() {
        let input: &[u8] = b"{\"a\":1}\n0123456789abc\n\nxy\npartial";
        let mut reader = FrameReader::new(BufReader::with_capacity(4, input), 8);
        assert_eq!(
            reader.next_frame().await.unwrap(),
            Some(Frame::Line(b"{\"a\":1}".to_vec()))
        );
        assert_eq!(reader.next_frame().await.unwrap(), Some(Frame::TooLong));
        assert_eq!(
            reader.next_frame().await.unwrap(),
            Some(Frame::Line(Vec::new()))
        );
        assert_eq!(
            reader.next_frame().await.unwrap(),
            Some(Frame::Line(b"xy".to_vec()))
        );
        assert_eq!(reader.next_frame().await.unwrap(), None);
    }

    #[test]
    fn config_must_be_an_object() {
        let dir = std::env::temp_dir().join(format!("executor-unit-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.json");
        std::fs::write(&file, "[1, 2]").unwrap();
        let err = read_config(Some(&file)).unwrap_err().to_string();
        assert!(err.contains("must be a JSON object, got an array"), "{err}");
        std::fs::write(&file, "{\"api_key\": \"sekrit\"").unwrap();
        let err = read_config(Some(&file)).unwrap_err().to_string();
        assert!(err.contains("not valid JSON"), "{err}");
        assert!(!err.contains("sekrit"), "{err}");
        std::fs::write(&file, "  \n").unwrap();
        assert_eq!(read_config(Some(&file)).unwrap(), serde_json::json!({}));
        let err = error_chain(&read_config(Some(&dir.join("missing.json"))).unwrap_err());
        assert!(err.contains("cannot read the config from"), "{err}");
        assert!(err.contains("No such file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn periods_must_be_positive() {
        assert_eq!(parse_period("200ms"), Ok(Duration::from_millis(200)));
        assert!(parse_period("0s").is_err());
        assert!(parse_period("soon").is_err());
    }
}

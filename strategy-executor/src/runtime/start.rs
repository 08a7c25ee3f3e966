//! Run mode: build the strategy from its config, start the background tasks, run the
//! event loop on a current-thread tokio runtime, then give the tasks a bounded time
//! to finish.

use super::broker_state::SavedBroker;
use super::config::{read_config, read_spawn_input};
use super::control_link::{ControlLink, LinkHandle};
use super::errors::{print_error, EXIT_FAILURE};
use super::event_loop::{EventLoop, Identity, Inputs, Outlets};
use super::lease::Lease;
use super::orders::OrderOutbox;
use super::redis_publisher::RedisPublisher;
use super::redis_subscriber::{RedisSubscriber, TickCounters};
use super::signals::ProcessSignals;
use engine_protocol::control;
use engine_protocol::redact::redact_url;
use engine_protocol::Channels;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use strategy_sdk::{Host, OrderIds, Registry, Strategy};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use uuid::Uuid;

/// Capacity of the tick channel between the Redis subscriber and the loop; when it is
/// full the newest tick is dropped and counted in `ticks_dropped`. Deep enough to
/// ride out a few tens of milliseconds without CPU at a few hundred thousand ticks
/// per second (BENCHMARKS.md); tokio allocates its blocks only as they fill.
const TICK_CHANNEL_CAPACITY: usize = 16_384;
/// Capacity of the command channel (commands are rare).
const COMMAND_CHANNEL_CAPACITY: usize = 64;
/// How long background tasks get to finish after the loop ended.
const TASK_SHUTDOWN_TIMEOUT: Duration = Duration::from_millis(100);

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
    #[error(
        "strategy type '{strategy_type}' does not support interval execution, but the strategy has an execution_interval_s; types that do: {supported} (set execution_interval_s to NULL for a continuous strategy)"
    )]
    IntervalUnsupported {
        strategy_type: String,
        supported: String,
    },
    #[error(
        "the node's lease on this strategy ran out before the executor started; another node may own it now"
    )]
    LeaseOver,
}

/// Everything run mode needs, from the flags.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub strategy_id: Uuid,
    pub name: String,
    pub strategy_type: String,
    pub config_file: Option<PathBuf>,
    /// `--config-file` holds a [`control::SpawnInput`], not the bare config.
    pub spawn_envelope: bool,
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
    init_tracing("info");
    let config_file = options.config_file.as_deref();
    let input = if options.spawn_envelope {
        read_spawn_input(config_file)
    } else {
        read_config(config_file).map(|config| control::SpawnInput {
            config,
            broker_state: None,
            interval: false,
            lease: None,
            epoch: None,
        })
    };
    let (config, saved_broker, interval, grant, epoch) = match input {
        Ok(input) => {
            let epoch = input.order_epoch();
            (
                input.config,
                input.broker_state,
                input.interval,
                input.lease,
                epoch,
            )
        }
        Err(err) => return print_error(&err, control::EXIT_BAD_CONFIG),
    };
    // In a cluster: no strategy code runs under a lease that already ran out.
    if let Some(grant) = grant {
        if grant.remaining_ms() == 0 {
            return print_error(&StartupError::LeaseOver, control::EXIT_FENCED);
        }
    }
    if interval {
        if let Err(err) = check_interval_support(registry, &options.strategy_type) {
            return print_error(&err, control::EXIT_BAD_CONFIG);
        }
    }
    let strategy = match registry.create(&options.strategy_type, &config) {
        Ok(strategy) => strategy,
        Err(err) => return print_error(&err, control::EXIT_BAD_CONFIG),
    };
    drop(config);
    let saved_broker = SavedBroker::from_spawn(saved_broker);
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
    let spawned = Spawned {
        strategy,
        saved_broker,
        grant,
        epoch,
    };
    let code = runtime.block_on(run_async(options, spawned, redis_client).instrument(span));
    runtime.shutdown_timeout(TASK_SHUTDOWN_TIMEOUT);
    ExitCode::from(code)
}

/// An interval strategy needs a type that implements `on_execute` (an unknown type is
/// left to `Registry::create`, which names the known ones).
fn check_interval_support(registry: &Registry, strategy_type: &str) -> Result<(), StartupError> {
    match registry.info(strategy_type) {
        Some(info) if !info.supports_interval => {
            let supported: Vec<&str> = registry
                .infos()
                .filter(|info| info.supports_interval)
                .map(|info| info.strategy_type.as_str())
                .collect();
            Err(StartupError::IntervalUnsupported {
                strategy_type: strategy_type.to_string(),
                supported: supported.join(", "),
            })
        }
        _ => Ok(()),
    }
}

/// Log to stderr at `default_level` (`RUST_LOG` overrides it).
pub(super) fn init_tracing(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// What the spawn gave this executor: its strategy, built from the config, and the
/// rest of its [`control::SpawnInput`].
struct Spawned {
    strategy: Box<dyn Strategy>,
    saved_broker: SavedBroker,
    grant: Option<control::LeaseGrant>,
    /// The lease epoch its client order ids carry.
    epoch: i64,
}

async fn run_async(options: RunOptions, spawned: Spawned, redis_client: redis::Client) -> u8 {
    let Spawned {
        strategy,
        saved_broker,
        grant,
        epoch,
    } = spawned;
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
    let lease = grant.map(Lease::new);
    if let Some(lease) = &lease {
        tracing::info!(
            epoch = lease.epoch(),
            left_ms = lease.deadline_ms().saturating_sub(control::monotonic_ms()),
            "trading under the node's lease"
        );
        tracker.spawn(super::lease::watch(lease.clone(), cancel.clone()).in_current_span());
        super::lease::backstop(lease.clone());
    }
    let (mut event_loop, inputs) = start_tasks(
        &options,
        strategy,
        redis_client,
        &tracker,
        &cancel,
        lease,
        epoch,
    );
    tracker.close();
    event_loop.restore_broker(saved_broker, &options.strategy_type);

    let code = event_loop
        .run(
            inputs,
            signals,
            options.metrics_interval,
            options.start_paused,
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

/// Spawn the control link (when managed), the Redis publisher and subscriber on
/// `tracker`, and build the event loop connected to them.
fn start_tasks(
    options: &RunOptions,
    strategy: Box<dyn Strategy>,
    redis_client: redis::Client,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
    lease: Option<Arc<Lease>>,
    epoch: i64,
) -> (EventLoop, Inputs) {
    let (command_tx, command_rx) = mpsc::channel(COMMAND_CHANNEL_CAPACITY);
    let (tick_tx, tick_rx) = mpsc::channel(TICK_CHANNEL_CAPACITY);
    let (execution_tx, execution_rx) = mpsc::channel(COMMAND_CHANNEL_CAPACITY);
    let counters = Arc::new(TickCounters::default());

    let link: Option<LinkHandle> = options.control_socket.clone().map(|path| {
        let (task, handle) = ControlLink::new(
            path,
            options.strategy_id,
            command_tx.clone(),
            execution_tx.clone(),
            lease.clone(),
            cancel.clone(),
        );
        tracker.spawn(task.run().in_current_span());
        handle
    });

    let (publisher, publish_tx) = RedisPublisher::new(redis_client.clone(), cancel.clone());
    tracker.spawn(publisher.run().in_current_span());

    // Market data only: commands come on the control link alone (an executor run by
    // hand, without one, is stopped by a signal).
    let channels = &options.channels;
    let (subscriptions_tx, subscriptions_rx) = watch::channel(BTreeSet::new());
    let subscriber = RedisSubscriber {
        client: redis_client,
        live_data_prefix: channels.live_data(""),
        desired: subscriptions_rx,
        ticks: tick_tx,
        counters: counters.clone(),
        cancel: cancel.clone(),
    };
    tracker.spawn(subscriber.run().in_current_span());

    let identity = Identity {
        strategy_id: options.strategy_id,
        name: options.name.clone(),
        pid: std::process::id(),
        node: options.node.clone(),
        lease_epoch: lease.as_ref().map(|lease| lease.epoch()),
    };
    let mut host = Host::new(options.strategy_id, options.name.clone(), strategy);
    // Client order ids carry the epoch, and this executor's start time tells its
    // orders from those of the executors before it.
    let session = OrderIds::live_session(chrono::Utc::now());
    host.set_order_ids(OrderIds::new(epoch, options.strategy_id, &session));
    if link.is_some() {
        // Reported to the manager after each callback (`orders.rs`).
        host.record_fills();
    }
    let outlets = Outlets {
        link,
        publisher: publish_tx,
        subscriptions: subscriptions_tx,
        counters,
    };
    let orders = OrderOutbox::new(epoch);
    let event_loop = EventLoop::new(host, identity, channels.clone(), outlets, orders);
    let inputs = Inputs {
        commands: command_rx,
        ticks: tick_rx,
        keep_commands_open: command_tx,
        executions: execution_rx,
        keep_executions_open: execution_tx,
        lease,
    };
    (event_loop, inputs)
}

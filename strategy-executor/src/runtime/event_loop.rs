//! The event loop: owns the strategy's [`Host`] (no locks) and `select!`s over
//! signals, commands, ticks, the strategy's timer and the metrics interval. Every
//! strategy callback is followed by [`EventLoop::after_callback`]: subscription
//! changes go to the Redis subscriber, a halt ends the loop.

use super::broker_state::BrokerReports;
use super::commands::{CommandLog, InboundCommand};
use super::control_link::{LinkHandle, LinkOutbound};
use super::lease::Lease;
use super::orders::{orders_due, OrderOutbox};
use super::redis_publisher::Outgoing;
use super::redis_subscriber::TickCounters;
use super::report::Cause;
use super::signals::ProcessSignals;
use super::TICK_BATCH;
use engine_protocol::control::ExecutorMessage;
use engine_protocol::{Channels, Status, StopMode};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strategy_sdk::{Host, ShutdownReason, Tick};
use tokio::sync::{mpsc, watch};
use tokio::time::{Interval, MissedTickBehavior};
use uuid::Uuid;

/// The shortest timer or metrics period (a zero period would spin).
const MIN_PERIOD: Duration = Duration::from_millis(1);

/// Who this process is, for status messages.
#[derive(Debug, Clone)]
pub(super) struct Identity {
    pub(super) strategy_id: Uuid,
    pub(super) name: String,
    pub(super) pid: u32,
    pub(super) node: String,
    /// In a cluster: the lease's epoch, carried by status messages.
    pub(super) lease_epoch: Option<i64>,
}

/// Where the loop's output goes: the background tasks' ends of their channels.
pub(super) struct Outlets {
    pub(super) link: Option<LinkHandle>,
    pub(super) publisher: mpsc::Sender<Outgoing>,
    /// The channels the Redis subscriber should be subscribed to.
    pub(super) subscriptions: watch::Sender<BTreeSet<String>>,
    pub(super) counters: Arc<TickCounters>,
}

/// What the loop reads, besides signals and its own timers.
pub(super) struct Inputs {
    pub(super) commands: mpsc::Receiver<InboundCommand>,
    pub(super) ticks: mpsc::Receiver<Tick>,
    /// One sender kept so that the command channel never closes under the loop.
    pub(super) keep_commands_open: mpsc::Sender<InboundCommand>,
    /// Interval executions the manager asked for (by id), from the control link.
    pub(super) executions: mpsc::Receiver<Uuid>,
    pub(super) keep_executions_open: mpsc::Sender<Uuid>,
    /// In a cluster: the node's lease; the loop ends when it runs out.
    pub(super) lease: Option<Arc<Lease>>,
}

/// The loop ended: the process exits with this code.
pub(super) struct Exit(pub(super) u8);

/// The event loop: owns the strategy (in its [`Host`]) and what it reports.
pub(super) struct EventLoop {
    pub(super) host: Host,
    /// What the engine was last told (`running` and `paused` match the host's phase).
    pub(super) status: Status,
    pub(super) identity: Identity,
    pub(super) channels: Channels,
    pub(super) out: Outlets,
    pub(super) commands_seen: CommandLog,
    pub(super) ticks_received: u64,
    pub(super) last_tick_at: Option<Instant>,
    /// The same moment on the wall clock, reported as `last_tick_at`.
    pub(super) last_tick_wall: Option<chrono::DateTime<chrono::Utc>>,
    /// How often metrics are published (reported with them).
    pub(super) metrics_period: Duration,
    pub(super) started_at: Instant,
    pub(super) broker_reports: BrokerReports,
    /// Filled orders on their way to the manager.
    pub(super) orders: OrderOutbox,
    timer: Option<Interval>,
    timer_period: Option<Duration>,
    /// In a cluster: no strategy callback begins once it ran out.
    lease: Option<Arc<Lease>>,
}

impl EventLoop {
    pub(super) fn new(
        host: Host,
        identity: Identity,
        channels: Channels,
        out: Outlets,
        orders: OrderOutbox,
    ) -> Self {
        EventLoop {
            orders,
            host,
            status: Status::Starting,
            identity,
            channels,
            out,
            commands_seen: CommandLog::default(),
            ticks_received: 0,
            last_tick_at: None,
            last_tick_wall: None,
            metrics_period: Duration::ZERO,
            started_at: Instant::now(),
            broker_reports: BrokerReports::default(),
            timer: None,
            timer_period: None,
            lease: None,
        }
    }

    /// Start the strategy, then handle events until it stops or halts; the exit code.
    pub(super) async fn run(
        &mut self,
        mut inputs: Inputs,
        mut signals: ProcessSignals,
        metrics_interval: Duration,
        start_paused: bool,
    ) -> u8 {
        self.lease = inputs.lease.clone();
        if let Some(Exit(code)) = self.start(start_paused).await {
            return code;
        }
        let period = metrics_interval.max(MIN_PERIOD);
        self.metrics_period = period;
        let mut metrics = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        metrics.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut tick_batch = Vec::with_capacity(TICK_BATCH);
        let mut ticks_open = true;
        let _keep_commands_open = &inputs.keep_commands_open;
        let _keep_executions_open = &inputs.keep_executions_open;
        let lease = inputs.lease.clone();

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
                _ = lease_expired(lease.as_deref()) => Some(self.fenced().await),
                _ = signals.hangup.recv() => {
                    tracing::info!("SIGHUP received and ignored");
                    None
                }
                Some(inbound) = inputs.commands.recv() => self.handle_command(inbound).await,
                Some(execution_id) = inputs.executions.recv() => self.handle_execute(execution_id).await,
                n = inputs.ticks.recv_many(&mut tick_batch, TICK_BATCH), if ticks_open => {
                    ticks_open = n > 0;
                    self.handle_ticks(&mut tick_batch).await
                }
                _ = next_timer_tick(&mut self.timer) => self.handle_timer().await,
                _ = orders_due(self.orders.due()) => {
                    self.send_orders();
                    None
                }
                _ = metrics.tick() => {
                    self.publish_metrics();
                    self.report_broker_state_if_traded();
                    None
                }
            };
            if let Some(Exit(code)) = exit {
                return code;
            }
        }
    }

    /// Whether the lease ran out (cluster only): no strategy code may run.
    pub(super) fn lease_over(&self) -> bool {
        self.lease.as_ref().is_some_and(|l| l.over())
    }

    /// The lease ran out: stop trading at once, without another strategy callback
    /// (not even `on_stop`, which may trade), say so, and exit with
    /// [`control::EXIT_FENCED`]. Positions stay as they are, in the last broker state
    /// reported; the next owner carries on from there.
    pub(super) async fn fenced(&mut self) -> Exit {
        tracing::warn!("the node's lease ran out: this executor stops trading and exits");
        let cause = Cause {
            reason: Some("lease_expired".to_string()),
            error: Some(
                "the node's lease on this strategy ran out without a renewal; the executor stopped trading and exited"
                    .to_string(),
            ),
            ..Cause::default()
        };
        self.set_status(Status::Stopped, cause);
        self.flush().await;
        Exit(engine_protocol::control::EXIT_FENCED as u8)
    }

    /// `on_start` (and `on_pause` with `--start-paused`), then `running` or `paused`.
    async fn start(&mut self, start_paused: bool) -> Option<Exit> {
        if self.lease_over() {
            return Some(self.fenced().await);
        }
        self.set_status(Status::Starting, Cause::default());
        self.host.start(chrono::Utc::now());
        if let Some(exit) = self.after_callback().await {
            return Some(exit);
        }
        self.reset_timer();
        if start_paused {
            self.host.pause(chrono::Utc::now());
            if let Some(exit) = self.after_callback().await {
                return Some(exit);
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
        // What the next executor starts from, from now on (even if nothing trades).
        self.report_broker_state();
        None
    }

    /// After every strategy callback: take its orders, follow subscription changes
    /// and honour a halt.
    pub(super) async fn after_callback(&mut self) -> Option<Exit> {
        self.collect_orders();
        if self.host.take_subscriptions_changed() {
            let tokens = self.host.context().subscriptions();
            let desired: BTreeSet<String> = tokens
                .iter()
                .map(|token| self.channels.live_data(token))
                .collect();
            tracing::debug!(?tokens, "subscriptions changed");
            self.out.subscriptions.send_replace(desired);
        }
        let reason = self.host.context().halt_reason()?.to_string();
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

    /// The broker learns every price; a paused strategy does not see the tick.
    async fn handle_tick(&mut self, tick: Tick) -> Option<Exit> {
        self.ticks_received += 1;
        self.last_tick_at = Some(Instant::now());
        self.last_tick_wall = Some(chrono::Utc::now());
        if self.lease_over() {
            return Some(self.fenced().await);
        }
        if !self.host.tick(&tick) {
            return None;
        }
        self.after_callback().await
    }

    /// One interval execution (`on_execute`, on this loop, with the strategy's own
    /// `Context`), answered on the control link with its outcome and duration. A
    /// paused strategy is not executed: the answer says so.
    async fn handle_execute(&mut self, execution_id: Uuid) -> Option<Exit> {
        if self.lease_over() {
            return Some(self.fenced().await);
        }
        let began = Instant::now();
        let started_at = chrono::Utc::now();
        let result = self.host.execute(started_at);
        let duration_ms = u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (ok, error, message) = match result {
            Ok(report) => (true, None, report.message().map(str::to_string)),
            Err(err) => (false, Some(err.to_string()), None),
        };
        match &error {
            Some(error) => tracing::warn!(%execution_id, duration_ms, "execution failed: {error}"),
            None => tracing::debug!(%execution_id, duration_ms, "execution ended"),
        }
        if let Some(link) = &self.out.link {
            let frame = ExecutorMessage::Executed {
                execution_id,
                ok,
                error,
                message,
                duration_ms,
                started_at: Some(started_at),
            };
            let _ = link.frames.send(LinkOutbound::Frame(frame)).await;
        }
        self.after_callback().await
    }

    async fn handle_timer(&mut self) -> Option<Exit> {
        if self.lease_over() {
            return Some(self.fenced().await);
        }
        if !self.host.timer(chrono::Utc::now()) {
            return None;
        }
        self.after_callback().await
    }

    /// (Re)build the timer when the strategy's interval changed (start, new config).
    pub(super) fn reset_timer(&mut self) {
        let period = self.host.timer_interval().map(|p| p.max(MIN_PERIOD));
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
}

/// Ready once the lease ran out (never without one).
async fn lease_expired(lease: Option<&Lease>) {
    match lease {
        Some(lease) => lease.expired().cancelled().await,
        None => std::future::pending().await,
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

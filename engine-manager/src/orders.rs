//! The orders writer: records in `strategy_orders` the paper orders the executors
//! report on their control links (CONTRACT.md §7), off the supervisors' path.
//!
//! A supervisor checks each reported order and hands it over without waiting
//! ([`OrdersHandle::record`]); this task writes them in batches (up to [`BATCH`]
//! rows, a partial batch once its oldest row has waited [`FLUSH_EVERY`]), one
//! `INSERT … ON CONFLICT DO NOTHING` each, so a retried batch records each order
//! once. A batch the database does not take goes back to the front and is tried
//! again every [`RETRY_AFTER`]: a short outage loses nothing. What waits is bounded
//! ([`MAX_BUFFERED`]); past it new orders are dropped and counted in the log (the
//! executor's broker state and metrics still count them). At shutdown what waits is
//! written once more, and orders still arriving (executors stopping with the
//! manager) are taken until the channel has been quiet for [`CLOSING_QUIET`].
//!
//! The epoch recorded is the one the executor reported, not checked against the
//! strategy's: an order a stale owner placed is a fact, recognisable by its epoch.
//!
//! A backtest's fills come another way: its process appends them to the run's
//! orders file, and once the run has ended [`record_run`] copies the file in bulk
//! (one run at a time, in a task of its own, so neither the run's end nor the
//! queue waits for it), with the run's id, epoch and node, then removes it. A file
//! left by a manager that stopped first is recorded by the next one at its start
//! ([`record_left_runs`]).

use crate::tasks::sleep_until;
use crate::Shared;
use engine_protocol::control::OrderReport;
use engine_store::orders::{self as store, OrderRow};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use uuid::Uuid;

/// Rows per INSERT.
const BATCH: usize = 1_000;
/// A partial batch is written once its oldest row has waited this long.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Rows kept waiting at most (while the database is slow or away).
const MAX_BUFFERED: usize = 100_000;
/// Capacity of the channel from the supervisors.
const CHANNEL_CAPACITY: usize = 16_384;
/// How long a failed batch waits before it is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// The longest one INSERT may take before it counts as failed.
const INSERT_TIMEOUT: Duration = Duration::from_secs(5);
/// At shutdown: orders are taken until none came for this long.
const CLOSING_QUIET: Duration = Duration::from_millis(500);

/// The supervisors' end: never waits. It holds the writer's end of its channel
/// until the writer starts ([`OrdersWriter::start`]).
#[derive(Debug)]
pub struct OrdersHandle {
    tx: mpsc::Sender<OrderRow>,
    dropped: AtomicU64,
    inbox: Mutex<Option<mpsc::Receiver<OrderRow>>>,
    /// Runs' orders files are copied one at a time ([`record_run`]).
    run_copies: tokio::sync::Semaphore,
}

impl Default for OrdersHandle {
    fn default() -> Self {
        OrdersHandle::new()
    }
}

impl OrdersHandle {
    pub fn new() -> Self {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        OrdersHandle {
            tx,
            dropped: AtomicU64::new(0),
            inbox: Mutex::new(Some(rx)),
            run_copies: tokio::sync::Semaphore::new(1),
        }
    }

    /// The writer's end of the channel (once).
    fn take_inbox(&self) -> Option<mpsc::Receiver<OrderRow>> {
        self.inbox.lock().expect("orders inbox lock").take()
    }

    /// Record the orders strategy `strategy_id`'s executor reported on `node`. An
    /// order that cannot be one (see [`OrderReport::problem`]) is dropped with a log
    /// line; when the writer is [`MAX_BUFFERED`] behind, the order is dropped and
    /// counted.
    pub fn record(&self, strategy_id: Uuid, node: &str, orders: Vec<OrderReport>) {
        for order in orders {
            if let Some(problem) = order.problem() {
                tracing::warn!(%strategy_id, "dropped a reported order: {problem}");
                continue;
            }
            let row = OrderRow {
                strategy_id,
                run_id: None,
                client_order_id: order.client_order_id,
                lease_epoch: order.lease_epoch,
                node: Some(node.to_string()),
                token: Some(order.token),
                side: order.side.as_str(),
                quantity: order.quantity,
                price: order.price,
                fee: order.fee,
                at: order.at,
            };
            if self.tx.try_send(row).is_err() {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    tracing::warn!(
                        dropped,
                        "the orders writer is {MAX_BUFFERED} rows behind; reported orders dropped"
                    );
                }
            }
        }
    }
}

/// Record the orders file of run `run_id` (if it has one) in `strategy_orders`,
/// then remove it: in a task on the manager's tracker, one run at a time, retried
/// every second while the database is away. A run deleted meanwhile records
/// nothing; the file goes either way. If the manager stops first the file stays for
/// the next one ([`record_left_runs`]).
pub fn record_run(shared: &Arc<Shared>, run_id: Uuid, runs_dir: &std::path::Path) {
    let path = engine_protocol::runs::orders_path(runs_dir, run_id);
    let task_shared = shared.clone();
    shared
        .tracker
        .spawn_named(format!("orders of run {run_id}"), async move {
            let shared = task_shared;
            let Ok(_one_at_a_time) = shared.orders.run_copies.acquire().await else {
                return;
            };
            // Checked once it is this run's turn: not a backtest, or recorded
            // already (by the start's sweep, say).
            if !tokio::fs::try_exists(&path).await.unwrap_or(false) {
                return;
            }
            let began = Instant::now();
            let mut failing = false;
            loop {
                let copy = store::copy_run_orders(&shared.pool, run_id, &path);
                match copy.await {
                    Ok(n) => {
                        let ms = began.elapsed().as_millis() as u64;
                        tracing::info!(%run_id, orders = n, ms, "recorded the run's orders");
                        let _ = tokio::fs::remove_file(&path).await;
                        return;
                    }
                    Err(err) => {
                        if !std::mem::replace(&mut failing, true) {
                            tracing::warn!(%run_id, error = %err, "cannot record the run's orders; retrying every second");
                        }
                    }
                }
                tokio::select! {
                    _ = shared.cancel.cancelled() => return,
                    _ = tokio::time::sleep(RETRY_AFTER) => {}
                }
            }
        });
}

/// At start: the orders files runs left when their manager stopped before it
/// recorded them (of runs that ended; a run still going records its own at its end).
pub async fn record_left_runs(shared: &Arc<Shared>) {
    let runs_dir = shared.config.runs_dir();
    let Ok(mut dir) = tokio::fs::read_dir(&runs_dir).await else {
        return;
    };
    while let Ok(Some(entry)) = dir.next_entry().await {
        let name = entry.file_name();
        let Some(run_id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".orders"))
            .and_then(|id| id.parse::<Uuid>().ok())
        else {
            continue;
        };
        match engine_store::runs_api::run(&shared.pool, run_id).await {
            Ok(Some(run)) if !run.state.is_final() => {}
            Ok(_) => record_run(shared, run_id, &runs_dir),
            Err(err) => {
                tracing::warn!(%run_id, error = %err, "cannot read the run of an orders file left by the last manager; it stays");
            }
        }
    }
}

/// The writer task.
pub struct OrdersWriter {
    shared: Arc<Shared>,
    inbox: mpsc::Receiver<OrderRow>,
    backlog: Backlog,
    /// The last insert failed (logged once, until one succeeds).
    failing: bool,
    retry_at: Option<Instant>,
}

impl OrdersWriter {
    fn new(shared: Arc<Shared>, inbox: mpsc::Receiver<OrderRow>) -> Self {
        OrdersWriter {
            shared,
            inbox,
            backlog: Backlog::default(),
            failing: false,
            retry_at: None,
        }
    }

    /// Spawn the writer on the manager's tasks (once: a second call does nothing).
    pub fn start(shared: &Arc<Shared>) {
        let Some(inbox) = shared.orders.take_inbox() else {
            return;
        };
        let writer = OrdersWriter::new(shared.clone(), inbox);
        shared.tracker.spawn_named("orders writer", writer.run());
        let left = shared.clone();
        shared
            .tracker
            .spawn_named("orders files left by runs", async move {
                record_left_runs(&left).await
            });
    }

    pub async fn run(mut self) {
        let cancel = self.shared.cancel.clone();
        let mut incoming = Vec::with_capacity(1024);
        let mut quiet_until: Option<Instant> = None;
        loop {
            let room = self.backlog.len() < MAX_BUFFERED;
            let wake = self.wake_at(quiet_until.is_some());
            tokio::select! {
                _ = cancel.cancelled(), if quiet_until.is_none() => {
                    quiet_until = Some(Instant::now() + CLOSING_QUIET);
                }
                n = self.inbox.recv_many(&mut incoming, 1024), if room => {
                    if n == 0 {
                        quiet_until.get_or_insert_with(Instant::now);
                    } else if quiet_until.is_some() {
                        quiet_until = Some(Instant::now() + CLOSING_QUIET);
                    }
                    for row in incoming.drain(..) {
                        self.backlog.push(row);
                    }
                }
                _ = sleep_until(wake) => {}
                _ = sleep_until(quiet_until) => {}
            }
            let closing = quiet_until.is_some();
            self.write_due(closing).await;
            if let Some(quiet) = quiet_until {
                let done = self.backlog.len() == 0 || self.failing;
                if done && Instant::now() >= quiet {
                    break;
                }
            }
        }
        if self.backlog.len() > 0 {
            tracing::warn!(
                orders = self.backlog.len(),
                "paper orders not recorded at shutdown"
            );
        }
    }

    /// When to wake: a due partial batch or a retry.
    fn wake_at(&self, closing: bool) -> Option<Instant> {
        let due = if closing && self.backlog.len() > 0 {
            Some(Instant::now())
        } else {
            self.backlog.due_at()
        };
        match (self.retry_at, due) {
            (Some(r), Some(d)) => Some(r.max(d)),
            (_, d) => d,
        }
    }

    /// Write the batches that are due, one after the other; stop at a failure.
    async fn write_due(&mut self, closing: bool) {
        let now = Instant::now();
        if self.retry_at.is_some_and(|r| now < r) {
            return;
        }
        self.retry_at = None;
        while let Some(batch) = self.backlog.take_due(Instant::now(), closing) {
            let insert = store::insert_orders(&self.shared.pool, &batch);
            let result = match tokio::time::timeout(INSERT_TIMEOUT, insert).await {
                Ok(result) => result,
                Err(_) => Err(sqlx::Error::PoolTimedOut),
            };
            match result {
                Ok(_) => {
                    if std::mem::take(&mut self.failing) {
                        tracing::info!("recording paper orders again");
                    }
                }
                Err(err) => {
                    if !std::mem::replace(&mut self.failing, true) {
                        tracing::warn!(error = %err, waiting = self.backlog.len() + batch.len(), "cannot record paper orders in strategy_orders; keeping them and retrying every second");
                    }
                    self.backlog.put_back(batch);
                    self.retry_at = Some(Instant::now() + RETRY_AFTER);
                    return;
                }
            }
        }
    }
}

/// Orders waiting to be written, oldest first.
#[derive(Debug, Default)]
struct Backlog {
    rows: VecDeque<OrderRow>,
    /// When the oldest waiting row arrived.
    since: Option<Instant>,
}

impl Backlog {
    fn len(&self) -> usize {
        self.rows.len()
    }

    fn push(&mut self, row: OrderRow) {
        self.rows.push_back(row);
        self.since.get_or_insert_with(Instant::now);
    }

    /// The next batch, if one is due: a full one at once, a partial one once its
    /// oldest row has waited [`FLUSH_EVERY`], anything when `closing`.
    fn take_due(&mut self, now: Instant, closing: bool) -> Option<Vec<OrderRow>> {
        let full = self.rows.len() >= BATCH;
        let waited = self.since.is_some_and(|t| now >= t + FLUSH_EVERY);
        if self.rows.is_empty() || !(full || waited || closing) {
            return None;
        }
        let n = self.rows.len().min(BATCH);
        let batch: Vec<OrderRow> = self.rows.drain(..n).collect();
        self.since = (!self.rows.is_empty()).then_some(now);
        Some(batch)
    }

    /// A batch that could not be written goes back to the front.
    fn put_back(&mut self, batch: Vec<OrderRow>) {
        for row in batch.into_iter().rev() {
            self.rows.push_front(row);
        }
        self.since.get_or_insert_with(Instant::now);
    }

    fn due_at(&self) -> Option<Instant> {
        if self.rows.len() >= BATCH {
            return Some(Instant::now());
        }
        self.since.map(|t| t + FLUSH_EVERY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(n: usize) -> OrderRow {
        OrderRow {
            strategy_id: Uuid::nil(),
            run_id: None,
            client_order_id: format!("e0-00000000-s-{n}"),
            lease_epoch: 0,
            node: None,
            token: Some("BTC".into()),
            side: "buy",
            quantity: 1.0,
            price: 1.0,
            fee: 0.0,
            at: chrono::Utc::now(),
        }
    }

    #[test]
    fn full_batches_go_at_once_partial_ones_when_due_and_failed_ones_first_again() {
        let mut backlog = Backlog::default();
        let start = Instant::now();
        assert!(backlog.take_due(start, true).is_none(), "nothing to write");
        for n in 0..BATCH + 5 {
            backlog.push(row(n));
        }
        let full = backlog
            .take_due(start, false)
            .expect("a full batch at once");
        assert_eq!(full.len(), BATCH);
        assert!(backlog.take_due(start, false).is_none(), "the rest waits");
        let later = start + FLUSH_EVERY + Duration::from_millis(1);
        let rest = backlog
            .take_due(later, false)
            .expect("due after FLUSH_EVERY");
        assert_eq!(rest.len(), 5);
        assert_eq!(backlog.len(), 0);
        // The database did not take it: it goes back, in order, before newer rows.
        backlog.push(row(99));
        backlog.put_back(rest);
        let again = backlog.take_due(later, true).unwrap();
        let ids: Vec<&str> = again.iter().map(|r| r.client_order_id.as_str()).collect();
        assert_eq!(ids.first(), Some(&"e0-00000000-s-1000"));
        assert_eq!(ids.last(), Some(&"e0-00000000-s-99"));
        assert_eq!(again.len(), 6);
    }

    #[tokio::test]
    async fn bad_orders_are_dropped_and_a_full_channel_counts_what_it_drops() {
        let handle = OrdersHandle::new();
        let mut inbox = handle.take_inbox().unwrap();
        assert!(handle.take_inbox().is_none(), "taken once");
        let good = OrderReport {
            client_order_id: "e0-00000000-s-1".into(),
            lease_epoch: 3,
            token: "BTC".into(),
            side: engine_protocol::control::OrderSide::Buy,
            quantity: 1.0,
            price: 2.0,
            fee: 0.0,
            at: chrono::Utc::now(),
        };
        let bad = OrderReport {
            quantity: -1.0,
            ..good.clone()
        };
        handle.record(Uuid::nil(), "n1", vec![bad, good]);
        let row = inbox.try_recv().unwrap();
        assert_eq!(row.lease_epoch, 3);
        assert_eq!(row.node.as_deref(), Some("n1"));
        assert_eq!(row.side, "buy");
        assert!(inbox.try_recv().is_err(), "the bad one was dropped");
    }
}

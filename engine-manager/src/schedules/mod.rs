//! Schedules of runs (CONTRACT.md §5 `strategy_schedules`): the [`ScheduleTimer`]
//! task turns due times into `strategy_runs` rows, exactly one per due time.
//!
//! # Layout
//! - this module: the shell. It reads every schedule's timetable at start and on
//!   every poll interval (the safety net), and one schedule at once when its row
//!   changes (NOTIFY `strategy_schedules`, payload its id); hands each to the plan;
//!   sleeps until the plan's next due time; and carries out the plan's decisions
//!   through `engine_store::schedules` (a run made under the `overlap` rule, in one
//!   transaction with the statistics; `cancel_previous` inserts `cancel` commands,
//!   which the intake hands to the run queue like an operator's).
//! - [`plan`]: when each schedule is due, pure and unit-tested.
//!
//! Architecture invariant: "exactly once" is the database's unique key on
//! (`schedule_id`, `scheduled_for`), not this task's memory: a decision that could
//! not be written is retried, and a retry, a restart or a second manager finds the
//! due time served.

pub mod plan;

use crate::Shared;
use chrono::Utc;
use engine_protocol::schedule::Timetable;
use engine_store::schedules::{self as store, DueRun, Fired, ScheduleTiming};
use plan::{Decision, SchedulePlan, Setting};
use sqlx::postgres::PgListener;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// The NOTIFY channel of schedule changes.
const CHANNEL: &str = "strategy_schedules";

/// The longest sleep between two looks at the plan (a clock step is noticed).
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// What a schedule's row means for the plan.
pub fn setting_of(row: &ScheduleTiming) -> Setting {
    if !row.enabled {
        return Setting::Disabled;
    }
    match Timetable::from_columns(
        row.cron.as_deref(),
        row.timezone.as_deref(),
        row.interval_s.map(i64::from),
    ) {
        Ok(timetable) => Setting::Active {
            timetable,
            catch_up: row.catch_up,
        },
        Err(err) => Setting::Invalid(format!(
            "{err}; this schedule makes no runs until it is fixed"
        )),
    }
}

/// The schedules' task; see the module documentation.
pub struct ScheduleTimer {
    shared: Arc<Shared>,
    plan: SchedulePlan,
    /// Decisions not written yet (the database was away), retried in order.
    retry: Vec<Decision>,
}

impl ScheduleTimer {
    pub fn new(shared: Arc<Shared>) -> ScheduleTimer {
        ScheduleTimer {
            shared,
            plan: SchedulePlan::new(),
            retry: Vec::new(),
        }
    }

    /// Serve the schedules until the manager stops.
    pub async fn run(mut self) {
        let shared = self.shared.clone();
        let mut listener = None;
        let mut reload_due = true;
        let mut db_down = false;
        let mut reloaded = tokio::time::Instant::now();
        loop {
            if listener.is_none() {
                listener = listen(&shared).await;
            }
            if reload_due || reloaded.elapsed() >= self.poll() {
                reload_due = false;
                reloaded = tokio::time::Instant::now();
                match self.reload_all().await {
                    Ok(()) if db_down => {
                        tracing::info!("database is back; schedules are served again");
                        db_down = false;
                    }
                    Ok(()) => {}
                    Err(err) => {
                        if !db_down {
                            tracing::error!(error = %err, "cannot read the schedules; retrying every poll interval");
                        }
                        db_down = true;
                        listener = None;
                    }
                }
            }
            self.retry_pending().await;
            let decisions = self.plan.poll(Utc::now());
            self.apply_all(decisions).await;
            let sleep = self.sleep_for(reloaded);
            tokio::select! {
                _ = shared.cancel.cancelled() => break,
                notified = recv(&mut listener) => match notified {
                    Ok(ids) => {
                        for id in ids {
                            if self.reload_one(id).await.is_err() {
                                reload_due = true;
                            }
                        }
                    }
                    Err(_) => listener = None,
                },
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    fn poll(&self) -> Duration {
        self.shared.config.poll_interval.min(MAX_SLEEP)
    }

    /// Until the next due time or the next full reload, whichever comes first.
    fn sleep_for(&self, reloaded: tokio::time::Instant) -> Duration {
        let until_reload = self.poll().saturating_sub(reloaded.elapsed());
        let until_due = self
            .plan
            .next_wake()
            .map(|due| (due - Utc::now()).to_std().unwrap_or(Duration::ZERO));
        until_due.map_or(until_reload, |d| d.min(until_reload))
    }

    async fn reload_all(&mut self) -> Result<(), sqlx::Error> {
        let rows = store::timings(&self.shared.pool).await?;
        let seen: HashSet<Uuid> = rows.iter().map(|r| r.id).collect();
        let gone: Vec<Uuid> = self.plan.ids().filter(|id| !seen.contains(id)).collect();
        for id in gone {
            self.plan.remove(id);
        }
        let now = Utc::now();
        let decisions: Vec<Decision> = rows
            .iter()
            .filter_map(|row| self.plan.set(row.id, setting_of(row), row.next_run_at, now))
            .collect();
        self.apply_all(decisions).await;
        Ok(())
    }

    async fn reload_one(&mut self, id: Uuid) -> Result<(), sqlx::Error> {
        match store::timing(&self.shared.pool, id).await? {
            None => {
                tracing::info!(schedule_id = %id, "schedule deleted");
                self.plan.remove(id);
            }
            Some(row) => {
                let setting = setting_of(&row);
                if let Some(decision) = self.plan.set(id, setting, row.next_run_at, Utc::now()) {
                    self.apply_all(vec![decision]).await;
                }
            }
        }
        Ok(())
    }

    async fn retry_pending(&mut self) {
        if !self.retry.is_empty() {
            let pending = std::mem::take(&mut self.retry);
            self.apply_all(pending).await;
        }
    }

    async fn apply_all(&mut self, decisions: Vec<Decision>) {
        for decision in decisions {
            if let Err(err) = self.apply(&decision).await {
                tracing::warn!(error = %err, ?decision, "cannot write a schedule's decision; retrying");
                self.retry.push(decision);
            }
        }
    }

    async fn apply(&self, decision: &Decision) -> Result<(), sqlx::Error> {
        let pool = &self.shared.pool;
        match decision {
            Decision::Fire {
                schedule_id,
                due,
                next,
                missed,
            } => {
                let fired = store::fire(
                    pool,
                    &DueRun {
                        schedule_id: *schedule_id,
                        due: *due,
                        next: *next,
                        missed: *missed as i64,
                    },
                )
                .await?;
                log_fired(*schedule_id, *due, &fired, *missed);
            }
            Decision::Wait {
                schedule_id,
                next,
                missed,
            } => {
                if *missed > 0 {
                    tracing::info!(schedule_id = %schedule_id, missed, "due times missed while no manager ran; no run for them (catch_up none)");
                }
                store::set_next(pool, *schedule_id, *next, *missed as i64).await?;
            }
            Decision::Idle { schedule_id, error } => {
                if let Some(error) = error {
                    tracing::warn!(schedule_id = %schedule_id, %error, "schedule cannot make runs");
                }
                store::set_idle(pool, *schedule_id, error.as_deref()).await?;
            }
        }
        Ok(())
    }
}

fn log_fired(schedule_id: Uuid, due: chrono::DateTime<Utc>, fired: &Fired, missed: u64) {
    match fired {
        Fired::Made { run_id, cancelled } => {
            tracing::info!(schedule_id = %schedule_id, run_id = %run_id, %due, missed, cancelled = cancelled.len(), "schedule made a run");
        }
        Fired::SkippedOverlap { unfinished } => {
            tracing::info!(schedule_id = %schedule_id, %due, unfinished = %unfinished, "schedule due while its last run is unfinished; skipped (overlap skip)");
        }
        Fired::AlreadyServed => {
            tracing::debug!(schedule_id = %schedule_id, %due, "due time already served");
        }
        Fired::Inactive => {
            tracing::debug!(schedule_id = %schedule_id, %due, "schedule gone or disabled at its due time");
        }
    }
}

async fn listen(shared: &Shared) -> Option<PgListener> {
    let mut listener = PgListener::connect_with(&shared.pool).await.ok()?;
    listener.listen(CHANNEL).await.ok()?;
    Some(listener)
}

/// Wait for notifications: the schedules whose rows changed.
async fn recv(listener: &mut Option<PgListener>) -> Result<Vec<Uuid>, sqlx::Error> {
    let Some(l) = listener else {
        return std::future::pending().await;
    };
    let mut ids = Vec::new();
    ids.extend(l.recv().await?.payload().parse::<Uuid>().ok());
    while let Some(n) = l.next_buffered() {
        ids.extend(n.payload().parse::<Uuid>().ok());
    }
    ids.dedup();
    Ok(ids)
}

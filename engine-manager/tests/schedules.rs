//! Schedules of runs (CONTRACT.md §5 `strategy_schedules`) through a real manager,
//! PostgreSQL and run processes: runs made on the cadence, a change taking effect
//! at once, a disabled schedule making nothing; exactly one run per due time across
//! manager SIGKILLs at the due moment; `overlap` skip, queue and cancel_previous;
//! `catch_up` one and none after downtime; bad input (the cron field at fault, an
//! unknown time zone, words outside the vocabularies, interval 0); `enginectl
//! schedule`.
//!
//! A run's process here is a stand-in (`fake_run.py`):
//! it says it started, sleeps the strategy config's `sleep_s`, and completes. The
//! intervals are one second: each wait is for a condition, with a deadline.

#![allow(clippy::too_many_lines)] // a test reads best as one story

mod common;

use chrono::{DateTime, TimeDelta, Utc};
use common::{
    manager_env, sigkill, spawn_manager_binary, wait_for, wait_lease, write_executable, TestEngine,
    DEADLINE, SLEEPING_RUN,
};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::process::Stdio;
use uuid::Uuid;

// ------------------------------------------------------------------ the harness

/// A test engine whose runs are the stand-in, with `slots` runs at once, one
/// security with bars; the manager is not started yet.
async fn engine_with(slots: u32) -> TestEngine {
    let mut engine = TestEngine::new().await;
    engine.config.executor_path = Some(write_executable(
        &engine.state_dir,
        "fake_run.py",
        SLEEPING_RUN,
    ));
    engine.config.max_concurrent_runs = slots;
    engine.seed_one_security().await;
    engine
}

/// A started engine ([`engine_with`] 4 slots) with a strategy `quick` whose runs
/// complete at once; the engine, the strategy and a pool on its database.
async fn started_with_quick() -> (TestEngine, Uuid, PgPool) {
    let mut engine = engine_with(4).await;
    let quick = strategy(&engine, "quick", 0).await;
    engine.start_manager().await;
    let pool = engine.pool.clone();
    (engine, quick, pool)
}

/// A strategy whose runs sleep `sleep_s` seconds each.
async fn strategy(engine: &TestEngine, name: &str, sleep_s: u64) -> Uuid {
    engine
        .add_strategy(name, "sma_crossover", json!({"sleep_s": sleep_s}), false)
        .await
}

/// The INSERT of a schedule of screener runs for the strategy `$1`: `timing` is
/// its timetable and policy columns as SQL, e.g. `interval_s = 1, overlap = 'queue'`.
fn insert_statement(timing: &str) -> String {
    let (columns, values): (Vec<&str>, Vec<&str>) = timing
        .split(',')
        .map(|kv| kv.split_once('=').expect("column = value"))
        .map(|(k, v)| (k.trim(), v.trim()))
        .unzip();
    format!(
        "INSERT INTO strategy_schedules (strategy_id, mode, {}) VALUES ($1, 'screener', {}) RETURNING id",
        columns.join(", "),
        values.join(", ")
    )
}

/// Insert a schedule (see [`insert_statement`]); its id.
async fn schedule(pool: &PgPool, strategy: Uuid, timing: &str) -> Uuid {
    sqlx::query_scalar(&insert_statement(timing))
        .bind(strategy)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct Stats {
    next_run_at: Option<DateTime<Utc>>,
    last_run_id: Option<Uuid>,
    runs_created: i64,
    skipped_overlap: i64,
    missed: i64,
    last_error: Option<String>,
}

async fn stats(pool: &PgPool, id: Uuid) -> Stats {
    sqlx::query_as(
        "SELECT next_run_at, last_run_id, runs_created, skipped_overlap, missed, last_error \
         FROM strategy_schedules WHERE id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Wait until the schedule's statistics satisfy `pred`.
async fn wait_stats(pool: &PgPool, id: Uuid, what: &str, pred: impl Fn(&Stats) -> bool) -> Stats {
    wait_for(&format!("schedule {id}: {what}"), DEADLINE, || async {
        let s = stats(pool, id).await;
        pred(&s).then_some(s)
    })
    .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct ScheduledRun {
    id: Uuid,
    scheduled_for: DateTime<Utc>,
    created_at: DateTime<Utc>,
    state: String,
}

/// The runs a schedule made, by due time.
async fn runs_of(pool: &PgPool, schedule: Uuid) -> Vec<ScheduledRun> {
    sqlx::query_as(
        "SELECT id, scheduled_for, created_at, state FROM strategy_runs \
         WHERE schedule_id = $1 ORDER BY scheduled_for",
    )
    .bind(schedule)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// SIGKILL every run process of this engine, then finish it.
async fn finish(engine: TestEngine) {
    for (_, procs) in engine_manager::process::scan_runs(&engine.config.runs_dir()) {
        for (pid, _) in procs {
            sigkill(pid);
        }
    }
    engine.finish().await;
}

fn whole_seconds_apart(a: DateTime<Utc>, b: DateTime<Utc>) -> bool {
    (b - a).num_milliseconds() % 1000 == 0
}

// ------------------------------------------------------------------ the tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_makes_runs_on_its_cadence_and_a_change_takes_effect_at_once() {
    let (engine, quick, pool) = started_with_quick().await;

    let every = schedule(&pool, quick, "interval_s = 1, overlap = 'queue'").await;
    let s = wait_stats(&pool, every, "three runs made", |s| s.runs_created >= 3).await;
    let runs = runs_of(&pool, every).await;
    assert!(runs.len() >= 3);
    for pair in runs.windows(2) {
        assert!(
            whole_seconds_apart(pair[0].scheduled_for, pair[1].scheduled_for)
                && pair[1].scheduled_for > pair[0].scheduled_for,
            "due times follow the cadence: {runs:?}"
        );
    }
    for run in &runs {
        assert!(run.created_at >= run.scheduled_for, "never early: {run:?}");
    }
    assert!(s.next_run_at.unwrap() > runs[2].scheduled_for);
    assert_eq!(s.last_error, None);
    wait_for("the scheduled runs to complete", DEADLINE, || async {
        let runs = runs_of(&pool, every).await;
        runs[..3]
            .iter()
            .all(|r| r.state == "completed")
            .then_some(())
    })
    .await;

    // Disabled: no timer, nothing made — while another schedule makes two runs.
    sqlx::query("UPDATE strategy_schedules SET enabled = false WHERE id = $1")
        .bind(every)
        .execute(&pool)
        .await
        .unwrap();
    let disabled = wait_stats(&pool, every, "next_run_at cleared", |s| {
        s.next_run_at.is_none()
    })
    .await;
    let other = schedule(&pool, quick, "interval_s = 1, overlap = 'queue'").await;
    wait_stats(&pool, other, "two runs made", |s| s.runs_created >= 2).await;
    let after = stats(&pool, every).await;
    assert_eq!(after.runs_created, disabled.runs_created);
    assert_eq!(runs_of(&pool, every).await.len() as i64, after.runs_created);
    sqlx::query("DELETE FROM strategy_schedules WHERE id = $1")
        .bind(other)
        .execute(&pool)
        .await
        .unwrap();

    // An hourly schedule changed to every second runs within seconds, not an hour.
    let hourly = schedule(&pool, quick, "interval_s = 3600, overlap = 'queue'").await;
    let s = wait_stats(&pool, hourly, "its first due time set", |s| {
        s.next_run_at.is_some()
    })
    .await;
    assert!(s.next_run_at.unwrap() > Utc::now() + TimeDelta::minutes(50));
    sqlx::query("UPDATE strategy_schedules SET interval_s = 1 WHERE id = $1")
        .bind(hourly)
        .execute(&pool)
        .await
        .unwrap();
    wait_stats(&pool, hourly, "a run made after the change", |s| {
        s.runs_created >= 1
    })
    .await;
    finish(engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_run_per_due_time_across_manager_sigkills_at_the_due_moment() {
    let engine = engine_with(4).await;
    let quick = strategy(&engine, "quick", 0).await;
    let pool = engine.pool.clone();
    let env = manager_env(&engine.config);
    let log = engine.state_dir.join("manager.log");
    let mut manager = spawn_manager_binary(&env, &log);
    wait_lease(&engine.op(), manager.id().unwrap(), DEADLINE).await;
    let every = schedule(&pool, quick, "interval_s = 1, overlap = 'queue'").await;
    let first = wait_stats(&pool, every, "a first run", |s| s.runs_created >= 1).await;

    for round in 0..4 {
        // Kill the manager within a few milliseconds of a due time: just before it
        // in even rounds, just after it (the run being made) in odd ones.
        let margin = if round % 2 == 0 { 15 } else { -5 };
        wait_for("a due moment", DEADLINE, || async {
            let s = stats(&pool, every).await;
            let left = (s.next_run_at? - Utc::now()).num_milliseconds();
            (left <= margin).then_some(())
        })
        .await;
        manager.start_kill().unwrap();
        manager.wait().await.unwrap();
        manager = spawn_manager_binary(&env, &log);
        wait_lease(&engine.op(), manager.id().unwrap(), DEADLINE).await;
    }
    let before = stats(&pool, every).await.runs_created;
    wait_stats(&pool, every, "runs after the last restart", |s| {
        s.runs_created >= before + 2
    })
    .await;
    manager.start_kill().unwrap();
    manager.wait().await.unwrap();

    let s = stats(&pool, every).await;
    let runs = runs_of(&pool, every).await;
    assert_eq!(runs.len() as i64, s.runs_created, "every run counted once");
    let (start, end) = (runs[0].scheduled_for, runs[runs.len() - 1].scheduled_for);
    for pair in runs.windows(2) {
        assert!(
            pair[1].scheduled_for > pair[0].scheduled_for
                && whole_seconds_apart(pair[0].scheduled_for, pair[1].scheduled_for),
            "one run per due time, on one cadence through every restart: {runs:?}"
        );
    }
    // Every due time from the first run's to the last one's either has its run or
    // was counted missed (catch_up one after each restart).
    let due_times = (end - start).num_seconds() + 1;
    assert_eq!(
        due_times,
        s.runs_created + (s.missed - first.missed) + s.skipped_overlap,
        "{s:?}"
    );
    finish(engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlap_skip_queue_and_cancel_previous() {
    let mut engine = engine_with(6).await;
    let slow = strategy(&engine, "slow", 60).await;
    engine.start_manager().await;
    let pool = engine.pool.clone();
    let skip = schedule(&pool, slow, "interval_s = 1").await;
    let queue = schedule(&pool, slow, "interval_s = 1, overlap = 'queue'").await;
    let cancel = schedule(&pool, slow, "interval_s = 1, overlap = 'cancel_previous'").await;

    let s = wait_stats(&pool, skip, "two due times skipped", |s| {
        s.skipped_overlap >= 2
    })
    .await;
    assert_eq!(s.runs_created, 1, "one run while it is unfinished");
    assert_eq!(runs_of(&pool, skip).await.len(), 1);

    let s = wait_stats(&pool, queue, "three runs made", |s| s.runs_created >= 3).await;
    assert_eq!(s.skipped_overlap, 0);
    let unfinished = runs_of(&pool, queue)
        .await
        .iter()
        .filter(|r| !["completed", "error", "cancelled", "timed_out"].contains(&r.state.as_str()))
        .count();
    assert!(unfinished >= 3, "queued behind each other");

    wait_stats(&pool, cancel, "three runs made", |s| s.runs_created >= 3).await;
    let first = runs_of(&pool, cancel).await[0].id;
    wait_for("the first run to be cancelled", DEADLINE, || async {
        let runs = runs_of(&pool, cancel).await;
        (runs.iter().find(|r| r.id == first)?.state == "cancelled").then_some(())
    })
    .await;
    // Through a `cancel` command, as an operator's, that ends executed.
    let (status, params): (String, Value) = wait_for("the cancel command's outcome", DEADLINE, || async {
        let row: Option<(String, Value)> = sqlx::query_as(
            "SELECT status, parameters FROM strategy_commands \
             WHERE command = 'cancel' AND parameters->>'run_id' = $1 AND status IN ('executed', 'failed')",
        )
        .bind(first.to_string())
        .fetch_optional(&pool)
        .await
        .unwrap();
        row
    })
    .await;
    assert_eq!(
        (status.as_str(), params),
        ("executed", json!({"run_id": first}))
    );
    // At most one run of the schedule is unfinished at a time, once its cancels land.
    let s = stats(&pool, cancel).await;
    assert_eq!(s.skipped_overlap, 0);
    assert_eq!(
        s.last_run_id,
        Some(runs_of(&pool, cancel).await.last().unwrap().id)
    );
    finish(engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_one_and_none_after_downtime() {
    let (mut engine, quick, pool) = started_with_quick().await;
    let one = schedule(&pool, quick, "interval_s = 1, overlap = 'queue'").await;
    let none = schedule(
        &pool,
        quick,
        "interval_s = 1, overlap = 'queue', catch_up = 'none'",
    )
    .await;
    for id in [one, none] {
        wait_stats(&pool, id, "a run made", |s| s.runs_created >= 1).await;
    }
    engine.stop_manager().await;
    let (one_down, none_down) = (stats(&pool, one).await, stats(&pool, none).await);
    // Down until at least three due times of each have passed.
    wait_for("three due times to pass", DEADLINE, || async {
        let late: bool = sqlx::query_scalar(
            "SELECT bool_and(now() > next_run_at + interval '2 seconds') FROM strategy_schedules",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        late.then_some(())
    })
    .await;
    let restarted = Utc::now();
    engine.start_manager().await;

    let s = wait_stats(&pool, one, "the catch-up run", |s| {
        s.runs_created > one_down.runs_created
    })
    .await;
    assert!(s.missed - one_down.missed >= 2, "{s:?}");
    let runs = runs_of(&pool, one).await;
    let catch_up = &runs[one_down.runs_created as usize];
    // The latest due time that had passed when the restarted manager looked: at least
    // two after the one it was down for, and not one in the future. (It can be later
    // than `restarted`: the manager takes a moment to start, and due times go on.)
    assert!(
        catch_up.scheduled_for <= catch_up.created_at
            && catch_up.scheduled_for >= one_down.next_run_at.unwrap() + TimeDelta::seconds(2),
        "one run, for the latest missed due time: {catch_up:?} ({one_down:?})"
    );
    assert!(
        runs[one_down.runs_created as usize..]
            .iter()
            .all(|r| r.scheduled_for >= catch_up.scheduled_for),
        "no run for the earlier missed due times: {runs:?}"
    );

    let s = wait_stats(&pool, none, "the missed due times counted", |s| {
        s.missed - none_down.missed >= 3
    })
    .await;
    wait_stats(&pool, none, "runs again on its cadence", |s| {
        s.runs_created > none_down.runs_created
    })
    .await;
    let runs = runs_of(&pool, none).await;
    assert!(
        runs.iter().all(
            |r| r.scheduled_for < none_down.next_run_at.unwrap() || r.scheduled_for > restarted
        ),
        "no run for a due time that passed while the manager was down: {runs:?} ({s:?})"
    );
    finish(engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_schedules_say_why_and_make_no_runs() {
    let (engine, quick, pool) = started_with_quick().await;

    let bad_cron = schedule(&pool, quick, "cron = '61 18 * * *'").await;
    let bad_zone = schedule(
        &pool,
        quick,
        "cron = '0 18 * * *', timezone = 'Mars/Olympus'",
    )
    .await;
    let few_fields = schedule(&pool, quick, "cron = '0 18 * *'").await;
    let s = wait_stats(&pool, bad_cron, "last_error", |s| s.last_error.is_some()).await;
    let error = s.last_error.unwrap();
    assert!(
        error.contains("the minute field '61'") && error.contains("allowed: 0-59"),
        "{error}"
    );
    assert_eq!(s.next_run_at, None);
    let s = wait_stats(&pool, bad_zone, "last_error", |s| s.last_error.is_some()).await;
    assert!(
        s.last_error
            .as_deref()
            .unwrap()
            .starts_with("unknown time zone 'Mars/Olympus'"),
        "{s:?}"
    );
    let s = wait_stats(&pool, few_fields, "last_error", |s| s.last_error.is_some()).await;
    assert!(s.last_error.unwrap().contains("has 4 fields"));

    // The manager serves the next: a good schedule makes runs, the bad ones none.
    let good = schedule(&pool, quick, "interval_s = 1, overlap = 'queue'").await;
    wait_stats(&pool, good, "two runs", |s| s.runs_created >= 2).await;
    for id in [bad_cron, bad_zone, few_fields] {
        assert!(runs_of(&pool, id).await.is_empty());
        assert_eq!(stats(&pool, id).await.runs_created, 0);
    }

    // Fixed: the error clears and a due time is set at once.
    sqlx::query("UPDATE strategy_schedules SET cron = '*/5 * * * *' WHERE id = $1")
        .bind(bad_cron)
        .execute(&pool)
        .await
        .unwrap();
    let s = wait_stats(&pool, bad_cron, "fixed", |s| {
        s.last_error.is_none() && s.next_run_at.is_some()
    })
    .await;
    assert_eq!(s.next_run_at.unwrap().timestamp() % 300, 0);

    // What the schema refuses, by constraint.
    for (timing, constraint) in [
        ("interval_s = 0", "schedule_interval_positive"),
        ("interval_s = -5", "schedule_interval_positive"),
        (
            "interval_s = 5, overlap = 'never'",
            "schedule_overlap_vocabulary",
        ),
        (
            "interval_s = 5, catch_up = 'all'",
            "schedule_catch_up_vocabulary",
        ),
        (
            "interval_s = 5, cron = '* * * * *'",
            "schedule_cron_or_interval",
        ),
        ("enabled = true", "schedule_cron_or_interval"),
        (
            "interval_s = 5, timezone = 'UTC'",
            "schedule_timezone_with_cron",
        ),
        ("interval_s = 5, timeout_s = 0", "schedule_timeout_range"),
    ] {
        let err = sqlx::query(&insert_statement(timing))
            .bind(quick)
            .execute(&pool)
            .await
            .unwrap_err();
        assert_eq!(
            err.as_database_error().and_then(|e| e.constraint()),
            Some(constraint),
            "{timing}: {err}"
        );
        assert!(
            engine_store::schedules::schedule_refusal(&err).is_some(),
            "{timing}"
        );
    }
    let err = sqlx::query(
        "INSERT INTO strategy_schedules (strategy_id, mode, interval_s) VALUES ($1, 'live', 5)",
    )
    .bind(quick)
    .execute(&pool)
    .await
    .unwrap_err();
    assert_eq!(
        engine_store::schedules::schedule_refusal(&err).as_deref(),
        Some("a schedule's mode is one of backtest, screener, alert")
    );
    finish(engine).await;
}

#[derive(Debug)]
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn ctl(engine: &TestEngine, args: &[&str]) -> Ran {
    let output = tokio::process::Command::new(common::workspace_bin("enginectl"))
        .args(args)
        .env("DATABASE_URL", &engine.db_url)
        .env("REDIS_URL", &engine.config.redis_url)
        .env("ENGINE_REDIS_PREFIX", &engine.prefix)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("run enginectl");
    Ran {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enginectl_adds_lists_disables_and_removes_schedules() {
    let mut engine = engine_with(2).await;
    strategy(&engine, "screener", 0).await;
    engine.start_manager().await;

    let ran = ctl(
        &engine,
        &[
            "schedule",
            "add",
            "screener",
            "--mode",
            "screener",
            "--cron",
            "30 18 * * 1-5",
            "--tz",
            "America/New_York",
            "--set",
            "limit=20",
        ],
    )
    .await;
    assert_eq!(ran.code, 0, "{ran:?}");
    let evening: Uuid = ran.stdout.trim().parse().unwrap();
    let ran = ctl(
        &engine,
        &[
            "schedule",
            "add",
            "screener",
            "--mode",
            "alert",
            "--every",
            "5m",
            "--overlap",
            "cancel_previous",
            "--catch-up",
            "none",
        ],
    )
    .await;
    assert_eq!(ran.code, 0, "{ran:?}");
    let alerts: Uuid = ran.stdout.trim().parse().unwrap();
    wait_stats(&engine.pool, evening, "its next run time", |s| {
        s.next_run_at.is_some()
    })
    .await;
    wait_stats(&engine.pool, alerts, "its next run time", |s| {
        s.next_run_at.is_some()
    })
    .await;

    let ran = ctl(&engine, &["schedule", "list", "--json"]).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    let list: Vec<Value> = serde_json::from_str(&ran.stdout).unwrap();
    let evening_row = list.iter().find(|s| s["id"] == json!(evening)).unwrap();
    assert_eq!(evening_row["cron"], "30 18 * * 1-5");
    assert_eq!(evening_row["timezone"], "America/New_York");
    assert_eq!(evening_row["parameters"], json!({"limit": 20}));
    assert_eq!(evening_row["overlap"], "skip");
    let alerts_row = list.iter().find(|s| s["id"] == json!(alerts)).unwrap();
    assert_eq!(
        (
            &alerts_row["interval_s"],
            &alerts_row["overlap"],
            &alerts_row["catch_up"]
        ),
        (&json!(300), &json!("cancel_previous"), &json!("none"))
    );
    let ran = ctl(&engine, &["schedule", "list"]).await;
    assert!(
        ran.stdout.contains("30 18 * * 1-5 America/New_York"),
        "{}",
        ran.stdout
    );
    assert!(ran.stdout.contains("every 5m"), "{}", ran.stdout);

    // The same over HTTP, per strategy.
    let base = engine.http_base().await;
    let (status, body) = common::http_client::get(&base, "/api/schedules?strategy=screener").await;
    assert_eq!(status, 200, "{body}");
    let listed = body["schedules"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed
        .iter()
        .all(|s| s["strategy"] == "screener" && s["next_run_at"].is_string()));
    let (status, _) = common::http_client::get(&base, "/api/schedules?strategy=nope").await;
    assert_eq!(status, 404);

    let ran = ctl(&engine, &["schedule", "disable", &alerts.to_string()]).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    wait_stats(&engine.pool, alerts, "no next run", |s| {
        s.next_run_at.is_none()
    })
    .await;
    let ran = ctl(&engine, &["schedule", "list"]).await;
    assert!(ran.stdout.contains("disabled"), "{}", ran.stdout);
    let ran = ctl(&engine, &["schedule", "enable", &alerts.to_string()]).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    wait_stats(&engine.pool, alerts, "a next run again", |s| {
        s.next_run_at.is_some()
    })
    .await;

    // Bad input, refused before anything is inserted.
    for (args, words) in [
        (
            vec!["--cron", "0 25 * * *"],
            "the hour field '25' does not parse",
        ),
        (
            vec!["--cron", "0 18 * * *", "--tz", "Mars/Olympus"],
            "unknown time zone 'Mars/Olympus'",
        ),
        (vec!["--every", "0s"], "at least 1 second"),
        (
            vec!["--every", "5m", "--overlap", "never"],
            "unknown overlap 'never'; expected one of skip, queue, cancel_previous",
        ),
        (
            vec!["--every", "5m", "--catch-up", "all"],
            "unknown catch_up 'all'; expected one of one, none",
        ),
    ] {
        let mut full = vec!["schedule", "add", "screener", "--mode", "screener"];
        full.extend(args.iter().copied());
        let ran = ctl(&engine, &full).await;
        assert_ne!(ran.code, 0, "{args:?}");
        assert!(ran.stderr.contains(words), "{args:?}: {}", ran.stderr);
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM strategy_schedules")
        .fetch_one(&engine.pool)
        .await
        .unwrap();
    assert_eq!(count, 2);

    let ran = ctl(&engine, &["schedule", "remove", &evening.to_string()]).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    let ran = ctl(&engine, &["schedule", "remove", &evening.to_string()]).await;
    assert_ne!(ran.code, 0);
    assert!(ran.stderr.contains("no schedule with id"), "{}", ran.stderr);
    finish(engine).await;
}

//! Interval executions (CONTRACT.md §5) through a real manager, PostgreSQL, Redis and
//! executors: executions happen and are counted; `trigger` (ok, failed, paused,
//! stopped, continuous); the concurrency cap never exceeded, skips counted; a hanging
//! execution counted failed, then killed and restarted by the crash rules; statistics
//! kept across a manager restart, the missed executions counted skipped; bad input.
//!
//! The slow and hanging steps come from `heartbeat`'s `execute_delay_ms` test hook.

#![allow(clippy::too_many_lines)] // a test reads best as one story

mod common;

use chrono::{DateTime, TimeDelta, Utc};
use common::db_proxy::DbProxy;
use common::{sigkill, wait_for, Subscription, TestEngine, DEADLINE};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;
use uuid::Uuid;

/// The statistics columns of one strategy.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Stats {
    execution_count: i64,
    successful_executions: i64,
    failed_executions: i64,
    skipped_executions: i64,
    next_execution_at: Option<chrono::DateTime<chrono::Utc>>,
    last_execution_at: Option<chrono::DateTime<chrono::Utc>>,
    last_execution_duration_ms: Option<i64>,
    avg_execution_ms: Option<f64>,
    last_execution_error: Option<String>,
}

async fn stats(engine: &TestEngine, id: Uuid) -> Stats {
    sqlx::query_as(
        "SELECT execution_count, successful_executions, failed_executions, skipped_executions, \
                next_execution_at, last_execution_at, last_execution_duration_ms, \
                avg_execution_ms, last_execution_error \
         FROM strategy_configs WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&engine.pool)
    .await
    .expect("statistics")
}

/// Wait until the strategy's statistics satisfy `pred`; those statistics.
async fn wait_stats(
    engine: &TestEngine,
    id: Uuid,
    what: &str,
    pred: impl Fn(&Stats) -> bool,
) -> Stats {
    let pred = &pred;
    wait_for(what, DEADLINE, || async move {
        let s = stats(engine, id).await;
        pred(&s).then_some(s)
    })
    .await
}

/// Add a strategy with an interval (and a time limit, if given).
async fn add_interval(
    engine: &TestEngine,
    name: &str,
    strategy_type: &str,
    config: Value,
    interval_s: i32,
    max_execution_s: Option<i32>,
) -> Uuid {
    sqlx::query_scalar(
        "INSERT INTO strategy_configs (name, strategy_type, config, execution_interval_s, max_execution_s) \
         VALUES ($1, $2, $3, $4, coalesce($5, 30)) RETURNING id",
    )
    .bind(name)
    .bind(strategy_type)
    .bind(config)
    .bind(interval_s)
    .bind(max_execution_s)
    .fetch_one(&engine.pool)
    .await
    .expect("insert an interval strategy")
}

async fn executions(engine: &TestEngine, id: Uuid) -> Subscription {
    Subscription::start(&engine.redis, &engine.channels.execution(id)).await
}

/// The contract's fields of `strategy:execution:{id}`, and nothing else but the
/// additive `due_at` and `executor_started_at` (README).
fn assert_contract_fields(msg: &Value) {
    let keys: BTreeSet<&str> = msg
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .filter(|key| !["due_at", "executor_started_at"].contains(key))
        .collect();
    let expected: BTreeSet<&str> = [
        "strategy_id",
        "name",
        "timestamp",
        "trigger",
        "started_at",
        "duration_ms",
        "outcome",
        "error",
    ]
    .into_iter()
    .collect();
    assert_eq!(keys, expected, "{msg}");
}

/// The next message with `outcome`: exactly the contract's fields, and an error that
/// contains `error_has`.
async fn expect_outcome(sub: &mut Subscription, outcome: &str, error_has: &str) -> Value {
    let msg = sub.expect(outcome, |_, m| m["outcome"] == outcome).await;
    assert_contract_fields(&msg);
    let error = msg["error"].as_str().unwrap_or_default();
    assert!(error.contains(error_has), "{msg}");
    msg
}

#[tokio::test]
async fn executions_happen_on_the_managers_clock_and_are_counted() {
    let engine = TestEngine::started().await;
    let id = add_interval(&engine, "beat", "heartbeat", json!({}), 1, None).await;
    let mut sub = executions(&engine, id).await;
    engine.run_ok(Some(id), "start", json!({})).await;

    let first = sub
        .expect("an execution", |_, m| m["outcome"] == "ok")
        .await;
    assert_contract_fields(&first);
    assert_eq!(first["strategy_id"], id.to_string());
    assert_eq!(first["name"], "beat");
    assert_eq!(first["trigger"], "schedule");
    assert_eq!(first["error"], Value::Null);
    // The due time it served, when the manager sent it, when the executor began it:
    // in that order, and on time on a quiet test machine.
    let time = |field: &str| {
        let text = first[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field}: {first}"));
        chrono::DateTime::parse_from_rfc3339(text).unwrap()
    };
    let (due, sent, began) = (
        time("due_at"),
        time("started_at"),
        time("executor_started_at"),
    );
    assert!(due <= sent && sent <= began, "{first}");
    assert!(
        began - due < chrono::TimeDelta::milliseconds(500),
        "{first}"
    );
    sub.expect("a second execution", |_, m| m["outcome"] == "ok")
        .await;

    let s = wait_stats(&engine, id, "two executions counted", |s| {
        s.execution_count >= 2
    })
    .await;
    assert_eq!(
        s.execution_count,
        s.successful_executions + s.failed_executions
    );
    assert_eq!(s.failed_executions, 0);
    assert!(s.next_execution_at.is_some() && s.last_execution_at.is_some());
    assert!(s.last_execution_duration_ms.is_some() && s.avg_execution_ms.is_some());
    assert_eq!(s.last_execution_error, None);
    // The step ran in the strategy itself: it counts its executions in its metrics.
    wait_for("the strategy's own count", DEADLINE, || async {
        let n: Option<i64> = sqlx::query_scalar(
            "SELECT (metrics->>'executions')::bigint FROM strategy_metrics \
             WHERE strategy_id = $1 AND metrics ? 'executions' ORDER BY timestamp DESC LIMIT 1",
        )
        .bind(id)
        .fetch_optional(&engine.pool)
        .await
        .ok()
        .flatten();
        n.filter(|n| *n >= 2)
    })
    .await;

    // Paused: no executions, and no next one.
    engine.run_ok(Some(id), "pause", json!({})).await;
    let paused = wait_stats(&engine, id, "no next execution while paused", |s| {
        s.next_execution_at.is_none()
    })
    .await;
    engine.run_ok(Some(id), "resume", json!({})).await;
    wait_stats(&engine, id, "executions again after resume", |s| {
        s.execution_count > paused.execution_count && s.next_execution_at.is_some()
    })
    .await;
    let s = stats(&engine, id).await;
    assert_eq!(
        s.skipped_executions, 0,
        "a pause is not counted as skipped executions"
    );
    engine.finish().await;
}

#[tokio::test]
async fn trigger_executes_once_and_says_why_it_cannot() {
    let engine = TestEngine::started().await;
    // An hour's interval: only triggers execute it here.
    let beat = add_interval(&engine, "hourly", "heartbeat", json!({}), 3600, None).await;
    let mut sub = executions(&engine, beat).await;
    engine.run_ok(Some(beat), "start", json!({})).await;
    engine.run_ok(Some(beat), "trigger", json!({})).await;
    let msg = sub
        .expect("the manual execution", |_, m| m["trigger"] == "manual")
        .await;
    assert_contract_fields(&msg);
    assert_eq!(msg["outcome"], "ok");
    assert!(
        msg.get("due_at").is_none(),
        "a trigger serves no due time: {msg}"
    );
    let s = wait_stats(&engine, beat, "the trigger counted", |s| {
        s.execution_count == 1
    })
    .await;
    assert_eq!(s.successful_executions, 1);

    // A step that fails: the command fails with the strategy's words.
    let dca = add_interval(
        &engine,
        "dca-no-price",
        "dca",
        json!({"token": "NOPRICE-USD", "notional": 100.0}),
        3600,
        None,
    )
    .await;
    let mut dca_sub = executions(&engine, dca).await;
    engine.run_ok(Some(dca), "start", json!({})).await;
    let err = engine.run_failed(Some(dca), "trigger", json!({})).await;
    assert!(err.starts_with("the execution failed: "), "{err}");
    assert!(err.contains("NOPRICE-USD"), "{err}");
    let msg = expect_outcome(&mut dca_sub, "error", "NOPRICE-USD").await;
    assert_eq!(msg["trigger"], "manual");
    let s = wait_stats(&engine, dca, "the failure counted", |s| {
        s.failed_executions == 1
    })
    .await;
    assert!(s.last_execution_error.unwrap().contains("NOPRICE-USD"));

    // Paused, stopped, continuous: failed, saying so.
    engine.run_ok(Some(beat), "pause", json!({})).await;
    let err = engine.run_failed(Some(beat), "trigger", json!({})).await;
    assert!(
        err.contains("paused") && err.contains("resume it first"),
        "{err}"
    );
    engine.run_ok(Some(beat), "stop", json!({})).await;
    let err = engine.run_failed(Some(beat), "trigger", json!({})).await;
    assert!(
        err.contains("stopped, not running; start it first"),
        "{err}"
    );
    let continuous = engine.add_heartbeat("continuous").await;
    engine.run_ok(Some(continuous), "start", json!({})).await;
    let err = engine
        .run_failed(Some(continuous), "trigger", json!({}))
        .await;
    assert!(err.contains("no execution_interval_s"), "{err}");
    // Bad parameters, and no global trigger.
    let err = engine
        .run_failed(Some(continuous), "trigger", json!({"now": true}))
        .await;
    assert!(err.contains("takes no parameters"), "{err}");
    let err = engine.run_failed(None, "trigger", json!({})).await;
    assert!(err.contains("'trigger' cannot be global"), "{err}");
    assert_eq!(stats(&engine, beat).await.execution_count, 1);
    engine.finish().await;
}

#[tokio::test]
async fn the_concurrency_cap_is_never_exceeded_and_skips_are_counted() {
    let mut engine = TestEngine::new().await;
    engine.config.max_concurrent_executions = 2;
    engine.start_manager().await;
    let mut sub = Subscription::start(
        &engine.redis,
        &format!("{}strategy:execution:*", engine.prefix),
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..4 {
        // Each step takes 1.5 s, due every second: 4 strategies want 6 slots.
        let config = json!({"execute_delay_ms": 1500});
        let id = add_interval(&engine, &format!("slow-{i}"), "heartbeat", config, 1, None).await;
        engine.run_ok(Some(id), "start", json!({})).await;
        ids.push(id);
    }
    // Gather 12 executions; each held a slot from its start for its duration.
    let mut spans = Vec::new();
    let mut skipped_seen = 0;
    while spans.len() < 12 {
        let msg = sub
            .expect("an execution", |_, m| {
                m["outcome"] == "ok" || m["outcome"] == "skipped"
            })
            .await;
        assert_contract_fields(&msg);
        if msg["outcome"] == "skipped" {
            skipped_seen += 1;
            continue;
        }
        let start: chrono::DateTime<chrono::Utc> =
            serde_json::from_value(msg["started_at"].clone()).unwrap();
        let end = start + chrono::Duration::milliseconds(msg["duration_ms"].as_i64().unwrap());
        spans.push((start, end));
    }
    // At any start, fewer than 2 others are still running.
    for (i, (start, _)) in spans.iter().enumerate() {
        let overlapping = spans
            .iter()
            .enumerate()
            .filter(|(j, (s, e))| *j != i && s <= start && e > start)
            .count();
        assert!(
            overlapping < 2,
            "{} executions ran at once (cap 2): {spans:?}",
            overlapping + 1
        );
    }
    assert!(
        skipped_seen > 0,
        "a due execution waiting for a slot is skipped"
    );
    let skipped: i64 = wait_for("skips counted in the rows", DEADLINE, || async {
        let total: Option<i64> = sqlx::query_scalar(
            "SELECT sum(skipped_executions)::bigint FROM strategy_configs WHERE id = ANY($1)",
        )
        .bind(&ids)
        .fetch_one(&engine.pool)
        .await
        .ok()
        .flatten();
        total.filter(|n| *n > 0)
    })
    .await;
    assert!(skipped > 0);
    engine.finish().await;
}

#[tokio::test]
async fn a_hanging_execution_counts_failed_then_its_executor_is_killed_and_restarted() {
    let engine = TestEngine::started().await;
    let config = json!({"execute_delay_ms": 600_000});
    let id = add_interval(&engine, "hang", "heartbeat", config, 1, Some(1)).await;
    let mut sub = executions(&engine, id).await;
    engine.run_ok(Some(id), "start", json!({})).await;
    let pid = engine.live_pid(id).await;

    expect_outcome(&mut sub, "timeout", "max_execution_s (1s)").await;
    let s = wait_stats(&engine, id, "the timeout counted failed", |s| {
        s.failed_executions >= 1
    })
    .await;
    assert!(s.last_execution_error.unwrap().contains("timed out"));

    // 5 s past the limit: killed, and restarted by the crash rules.
    let new_pid = engine.wait_running_with_new_pid(id, Some(pid)).await;
    assert_ne!(new_pid, pid);
    let row = engine.state(id).await;
    assert!(row.restart_count >= 1, "{row:?}");
    let error = row.last_error.expect("the kill is explained");
    assert!(
        error.contains("killed by the manager")
            && error.contains("max_execution_s (1s)")
            && error.contains("5s more"),
        "{error}"
    );
    engine.finish().await;
}

#[tokio::test]
async fn statistics_survive_a_manager_restart_and_missed_executions_count_skipped() {
    let mut engine = TestEngine::started().await;
    let id = add_interval(&engine, "steady", "heartbeat", json!({}), 1, None).await;
    engine.run_ok(Some(id), "start", json!({})).await;
    let before = wait_stats(&engine, id, "two executions", |s| s.execution_count >= 2).await;
    engine.stop_manager().await;
    let stopped = stats(&engine, id).await;
    assert!(stopped.execution_count >= before.execution_count);
    assert!(
        stopped.next_execution_at.is_some(),
        "kept for the next manager"
    );
    // The manager was down for 10 s: ten due times passed.
    sqlx::query(
        "UPDATE strategy_configs SET next_execution_at = now() - interval '9.5 seconds' WHERE id = $1",
    )
    .bind(id)
    .execute(&engine.pool)
    .await
    .unwrap();
    let mut sub = executions(&engine, id).await;
    engine.start_manager().await;
    expect_outcome(&mut sub, "skipped", "missed while the manager was down").await;
    let after = wait_stats(&engine, id, "executions after the restart", |s| {
        s.execution_count > stopped.execution_count
    })
    .await;
    assert!(
        after.skipped_executions >= stopped.skipped_executions + 9,
        "{after:?}"
    );
    // One execution for the missed ones, not ten.
    assert!(
        after.execution_count <= stopped.execution_count + 2,
        "{after:?}"
    );
    assert_eq!(
        after.execution_count,
        after.successful_executions + after.failed_executions
    );
    engine.finish().await;
}

/// A time field of an execution message.
fn time_of(msg: &Value, field: &str) -> DateTime<Utc> {
    serde_json::from_value(msg[field].clone()).unwrap_or_else(|_| panic!("{field}: {msg}"))
}

/// A regression test: a slow database does not stall executions. The manager reaches
/// PostgreSQL through a proxy that is then stalled (connections open, nothing
/// passes: every query of the manager hangs) while the test reads the database
/// directly. During the stall another interval strategy's executor is killed and
/// restarted by the crash rules, so that a strategy reaches `running` and its
/// interval row must be read while the database does not answer. The steady
/// strategy's next five due times are each served once, on time, and published;
/// after the stall its statistics in the row catch up with what was published.
///
/// Against the old executions task, which awaited its reads in its own loop, this
/// fails: the restarted strategy's `running` made it await `interval_rows` with no
/// timeout until the database answered, so no execution of any strategy was started
/// and the five due times are not served within the window (and its refresh held
/// the loop up to 1 s every 2 s besides, starting executions late).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_database_does_not_stall_executions_and_statistics_catch_up() {
    let mut engine = TestEngine::new().await;
    let proxy = DbProxy::start(&engine.db_url).await;
    engine.config.database_url.clone_from(&proxy.url);
    engine.start_manager().await;
    let steady = add_interval(&engine, "steady", "heartbeat", json!({}), 1, None).await;
    let crasher = add_interval(&engine, "crasher", "heartbeat", json!({}), 1, None).await;
    let mut sub = executions(&engine, steady).await;
    let mut crasher_status = engine.subscribe(&engine.channels.status(crasher)).await;
    engine.run_ok(Some(steady), "start", json!({})).await;
    engine.run_ok(Some(crasher), "start", json!({})).await;
    let mut published = sub
        .expect_n(2, "an execution", |_, m| m["outcome"] == "ok")
        .await;
    let old_pid = engine.live_pid(crasher).await;

    proxy.stall();
    sigkill(old_pid);
    crasher_status
        .expect("the crashed strategy running again", |_, m| {
            m["status"] == "running" && m["pid"].as_u64().is_some_and(|p| p != u64::from(old_pid))
        })
        .await;
    // The executions task was told: from now on, five due times, each once.
    let since = Utc::now();
    let window = Duration::from_secs(8);
    let during = tokio::time::timeout(window, async {
        let mut during = Vec::new();
        while during.len() < 5 {
            let msg = sub.expect("an execution", |_, _| true).await;
            published.push(msg.clone());
            if time_of(&msg, "due_at") > since {
                during.push(msg);
            }
        }
        during
    })
    .await
    .unwrap_or_else(|_| panic!("five due times within {window:?} of a stalled database"));
    for pair in during.windows(2) {
        let gap = time_of(&pair[1], "due_at") - time_of(&pair[0], "due_at");
        assert_eq!(gap, TimeDelta::seconds(1), "each due time once: {pair:?}");
    }
    for msg in &during {
        assert_eq!(msg["outcome"], "ok", "{msg}");
        let late = time_of(msg, "started_at") - time_of(msg, "due_at");
        assert!(
            late < TimeDelta::milliseconds(500),
            "started on time: {msg}"
        );
    }
    // The stall was real: the manager could not record the new executor.
    let row = engine.state(crasher).await;
    assert_eq!(row.pid, Some(old_pid as i32), "{row:?}");

    proxy.release();
    let ok = published.iter().filter(|m| m["outcome"] == "ok").count() as i64;
    assert_eq!(ok as usize, published.len(), "{published:?}");
    let caught_up = wait_stats(&engine, steady, "the statistics caught up", |s| {
        s.execution_count >= ok
    })
    .await;
    assert_eq!(caught_up.failed_executions, 0, "{caught_up:?}");
    assert_eq!(caught_up.skipped_executions, 0, "{caught_up:?}");
    engine
        .wait_running_with_new_pid(crasher, Some(old_pid))
        .await;
    engine.finish().await;
}

#[tokio::test]
async fn bad_interval_input_is_refused_or_fails_in_words() {
    let engine = TestEngine::started().await;
    for (column, value, words) in [
        ("execution_interval_s", "0", "execution_interval_s is 0"),
        ("execution_interval_s", "-3", "execution_interval_s is -3"),
        ("max_execution_s", "0", "max_execution_s is 0"),
        ("max_execution_s", "86400", "max_execution_s is 86400"),
    ] {
        let err = sqlx::query(&format!(
            "INSERT INTO strategy_configs (name, strategy_type, {column}) VALUES ('bad', 'dca', {value})"
        ))
        .execute(&engine.pool)
        .await
        .unwrap_err();
        let message = err.as_database_error().unwrap().message().to_string();
        assert!(message.contains(words), "{message}");
        assert!(
            message.contains("it must be a whole number of seconds"),
            "{message}"
        );
    }

    // A type without interval execution: the start fails, naming the types that do.
    let id = add_interval(
        &engine,
        "sma-interval",
        "sma_crossover",
        json!({"token": "BTC-USD"}),
        60,
        None,
    )
    .await;
    let err = engine.run_failed(Some(id), "start", json!({})).await;
    assert!(err.contains("does not support interval execution"), "{err}");
    let row = engine.wait_status(id, "error").await;
    let last_error = row.last_error.unwrap();
    assert!(
        last_error.contains("'sma_crossover' does not support interval execution")
            && last_error.contains("dca, heartbeat"),
        "{last_error}"
    );
    // The manager serves the next command.
    let beat = engine.add_heartbeat("next").await;
    engine.run_ok(Some(beat), "start", json!({})).await;
    engine.finish().await;
}

/// `executions.recent` (the dashboard's sparkline) survives a manager restart: the
/// executions published are written with the statistics' batches to
/// `strategy_recent_executions` while the manager runs, and the next manager starts
/// from them; what it executes then follows them.
#[tokio::test]
async fn the_last_executions_listed_survive_a_manager_restart() {
    let mut engine = TestEngine::started().await;
    let slow = json!({"execute_delay_ms": 20});
    let id = add_interval(&engine, "remembered", "heartbeat", slow, 1, None).await;
    let mut sub = executions(&engine, id).await;
    engine.run_ok(Some(id), "start", json!({})).await;
    sub.expect_n(3, "an execution", |_, m| m["outcome"] == "ok")
        .await;
    // Paused, its list holds still.
    engine.run_ok(Some(id), "pause", json!({})).await;
    // (started_at to the microsecond, as PostgreSQL keeps it; duration; outcome)
    let recent = |base: String| async move {
        let (_, body) = common::http_client::get(&base, "/api/strategies/remembered").await;
        let list = body["executions"]["recent"].as_array().cloned();
        let micros = |x: &Value| time_of(x, "started_at").timestamp_micros();
        list.unwrap_or_default()
            .iter()
            .map(|x| {
                (
                    micros(x),
                    x["duration_ms"].as_u64(),
                    x["outcome"].to_string(),
                )
            })
            .collect::<Vec<_>>()
    };
    let before = recent(engine.http_base().await).await;
    assert!(before.len() >= 3, "{before:?}");
    // Written while the manager runs, not only when it stops.
    let stored = |pool: sqlx::PgPool| async move {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM strategy_recent_executions WHERE strategy_id = $1",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
        n as usize
    };
    let kept = before.len();
    wait_for("the executions in the database", DEADLINE, || async {
        (stored(engine.pool.clone()).await == kept).then_some(())
    })
    .await;

    engine.stop_manager().await;
    engine.start_manager().await;
    let after = recent(engine.http_base().await).await;
    assert_eq!(after, before, "the same executions, in the same order");

    // Executed again, its new executions follow the kept ones, in the database too
    // (in the slots after theirs, overwriting none of them).
    engine.run_ok(Some(id), "resume", json!({})).await;
    let base = engine.http_base().await;
    let grown = wait_for("a new execution listed and kept", DEADLINE, || {
        let (base, pool) = (base.clone(), engine.pool.clone());
        async move {
            let list = recent(base).await;
            (list.len() > kept && stored(pool).await == list.len()).then_some(list)
        }
    })
    .await;
    assert_eq!(grown[..before.len()], before[..]);
    engine.finish().await;
}

/// The dashboard's execution sparkline draws `executions.recent` of
/// `GET /api/strategies` (and `/api/strategies/{name}`): the last executions as
/// published on `strategy:execution:{id}`, oldest first, with their durations.
#[tokio::test]
async fn the_api_lists_the_last_executions_the_dashboard_draws() {
    let engine = TestEngine::started().await;
    let base = engine.http_base().await;
    let slow = json!({"execute_delay_ms": 40});
    let id = add_interval(&engine, "spark", "heartbeat", slow, 1, None).await;
    engine.add_heartbeat("continuous").await;
    let mut sub = executions(&engine, id).await;
    engine.run_ok(Some(id), "start", json!({})).await;
    engine.run_ok(Some(id), "trigger", json!({})).await;
    let published = sub
        .expect_n(3, "an execution", |_, m| m["outcome"] == "ok")
        .await;

    let recent = wait_for("the API lists the three executions", DEADLINE, || async {
        let (_, body) = common::http_client::get(&base, "/api/strategies/spark").await;
        let recent = body["executions"]["recent"].as_array()?.clone();
        (recent.len() >= 3).then_some(recent)
    })
    .await;
    for (listed, message) in recent.iter().zip(&published) {
        assert_eq!(
            listed["started_at"], message["started_at"],
            "{listed} vs {message}"
        );
        assert_eq!(listed["duration_ms"], message["duration_ms"], "{listed}");
        assert_eq!(listed["outcome"], "ok");
        let ms = listed["duration_ms"].as_u64().unwrap();
        assert!(ms >= 40, "the step's 40 ms are in its duration: {listed}");
    }

    let (_, list) = common::http_client::get(&base, "/api/strategies").await;
    let by_name = |name: &str| {
        list["strategies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
            .unwrap()
    };
    assert!(
        by_name("spark")["executions"]["recent"]
            .as_array()
            .unwrap()
            .len()
            >= 3
    );
    assert_eq!(by_name("continuous")["executions"], Value::Null);
    // The page draws it.
    let script = common::http_client::client()
        .get(format!("{base}/dashboard.js"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(script.contains("execSpark(d.executions && d.executions.recent)"));
    engine.finish().await;
}

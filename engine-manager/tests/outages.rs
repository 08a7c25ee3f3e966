//! Outages of the services the engine depends on, with a real manager (in-process)
//! and real executors on a test's own private PostgreSQL and Redis:
//!
//! - Redis stopped for [`REDIS_OUTAGE`]: strategies keep running (same pids), commands
//!   from the database still take effect, and when Redis is back (empty) the manager
//!   and the executors reconnect by themselves: health, metrics and status flow again
//!   and every `strategy:state:{id}` hash is rewritten.
//! - PostgreSQL stopped for [`PG_OUTAGE`]: strategies keep running, the manager neither
//!   crashes nor floods its log, commands inserted after it is back are executed and
//!   the status rows are right.
//!
//! The tests of this file run one at a time ([`SERIAL`]): they share the process's log
//! capture and the machine's two cores. Figures (how long each recovery took) are
//! printed, not asserted; run with `--nocapture` to see them.

#![allow(clippy::too_many_lines)] // a test reads best as one story

mod common;

use common::{
    executors_by_strategy, process_alive, sigkill, try_wait_for, wait_for, LogCapture, PgStop,
    RedisStop, TestEngine, DEADLINE,
};
use redis::AsyncCommands;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

/// How long Redis stays down (the soak run in RELIABILITY.md used 60 s).
const REDIS_OUTAGE: Duration = Duration::from_secs(12);
/// How long PostgreSQL stays down (the soak run in RELIABILITY.md used 60 s).
const PG_OUTAGE: Duration = Duration::from_secs(12);
/// Most log lines (info and above) the manager may write during a PostgreSQL outage
/// with three strategies: a few per task and per outage, not a line per retry.
const PG_OUTAGE_LOG_LINES_MAX: usize = 40;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The outage durations, overridable for a soak run (`OUTAGE_SECS=60`).
fn outage(default: Duration) -> Duration {
    std::env::var("OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(default)
}

/// Messages on `pattern` from the (private) Redis, collected in the background.
struct Collector {
    seen: std::sync::Arc<std::sync::Mutex<Vec<(String, Value)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    async fn start(client: &redis::Client, pattern: &str) -> Collector {
        use futures_util::StreamExt;
        let mut pubsub = client.get_async_pubsub().await.expect("redis pubsub");
        pubsub.psubscribe(pattern).await.expect("psubscribe");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            let mut stream = pubsub.on_message();
            while let Some(msg) = stream.next().await {
                let payload: Value =
                    serde_json::from_slice(msg.get_payload_bytes()).unwrap_or(Value::Null);
                sink.lock()
                    .unwrap()
                    .push((msg.get_channel_name().to_string(), payload));
            }
        });
        Collector { seen, task }
    }

    fn any(&self, pred: impl Fn(&str, &Value) -> bool) -> bool {
        self.seen.lock().unwrap().iter().any(|(c, m)| pred(c, m))
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_keeps_strategies_and_commands_working() {
    let _serial = SERIAL.lock().await;
    LogCapture::install();
    let mut engine = TestEngine::on_private_services().await;
    engine.start_manager().await;
    let token = "OUTAGE-TKN";
    let cfg = json!({"interval_ms": 50, "token": token});
    let ids = engine.start_heartbeats("hb-redis", 5, cfg).await;
    let (steady, steady2, cycled, paused, updated) = (ids[0], ids[1], ids[2], ids[3], ids[4]);
    let mut pids = HashMap::new();
    for id in &ids {
        pids.insert(*id, engine.live_pid(*id).await);
    }

    engine.services().redis.stop(RedisStop::Kill).await;
    let outage_start = Instant::now();
    let outage_len = outage(REDIS_OUTAGE);

    // Commands during the outage take effect and end `executed`.
    let t = Instant::now();
    engine
        .op()
        .run_ok(Some(cycled), "stop", json!({"timeout_s": 5}))
        .await;
    assert!(
        !process_alive(pids[&cycled]),
        "stop executed but the executor lives"
    );
    engine.op().run_ok(Some(cycled), "start", json!({})).await;
    let new_pid = engine.live_pid(cycled).await;
    assert_ne!(new_pid, pids[&cycled]);
    pids.insert(cycled, new_pid);
    engine.op().run_ok(Some(paused), "pause", json!({})).await;
    assert_eq!(engine.op().state(paused).await.status, "paused");
    engine
        .op()
        .run_ok(
            Some(updated),
            "update",
            json!({"config": {"interval_ms": 70}}),
        )
        .await;
    assert_eq!(engine.op().state(updated).await.config["interval_ms"], 70);
    engine.op().run_ok(Some(paused), "resume", json!({})).await;
    engine.op().run_ok(Some(paused), "pause", json!({})).await;
    println!(
        "redis outage: stop, start, pause, update, resume, pause executed in {:.2}s",
        t.elapsed().as_secs_f64()
    );

    // The rest of the outage: every executor stays up, with the same pid.
    tokio::time::sleep_until(outage_start + outage_len).await;
    for id in &ids {
        assert!(
            process_alive(pids[id]),
            "executor of {id} died during the outage"
        );
        assert_eq!(engine.op().state(*id).await.pid, Some(pids[id] as i32));
    }
    assert!(
        engine.manager_running(),
        "the manager stopped during the outage"
    );
    assert!(process_alive(pids[&steady]) && process_alive(pids[&steady2]));

    engine.services().redis.start_again().await;
    let back = Instant::now();
    let health = Collector::start(&engine.redis, "strategy:health").await;
    let engine_health = Collector::start(&engine.redis, "engine:health").await;
    let metrics = Collector::start(&engine.redis, "strategy:metrics:*").await;

    // The manager publishes health again, for every live strategy.
    wait_for("strategy:health for every strategy", DEADLINE, || async {
        ids.iter()
            .all(|id| health.any(|_, m| m["strategy_id"] == id.to_string()))
            .then_some(())
    })
    .await;
    let health_back = back.elapsed();
    wait_for("engine:health", DEADLINE, || async {
        engine_health
            .any(|_, m| m["strategies_running"] == ids.len())
            .then_some(())
    })
    .await;

    // Every state hash is rewritten (Redis came back empty) and says what the rows say.
    let conn = wait_for("a redis connection", DEADLINE, || engine.try_redis_conn()).await;
    for id in &ids {
        let row = engine.op().state(*id).await;
        let key = engine.channels.state_key(*id);
        let hash: HashMap<String, String> =
            wait_for(&format!("the state hash of {}", row.name), DEADLINE, || {
                let mut conn = conn.clone();
                let key = key.clone();
                let (status, pid) = (row.status.clone(), row.pid);
                async move {
                    let h: HashMap<String, String> = conn.hgetall(&key).await.ok()?;
                    (h.get("status") == Some(&status)
                        && h.get("pid").map(String::as_str)
                            == pid.map(|p| p.to_string()).as_deref())
                    .then_some(h)
                }
            })
            .await;
        assert_eq!(hash["strategy_id"], id.to_string());
    }
    let hashes_back = back.elapsed();

    // The executors reconnect too: their publishers (metrics) and their subscribers
    // (market data reaches the strategy again: its `ticks` metric moves).
    wait_for("strategy:metrics from every executor", DEADLINE, || async {
        ids.iter()
            .all(|id| metrics.any(|c, _| c == engine.channels.metrics(*id)))
            .then_some(())
    })
    .await;
    let metrics_back = back.elapsed();
    let ticks_of = |id: Uuid| {
        let channel = engine.channels.metrics(id);
        metrics
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(c, _)| *c == channel)
            .filter_map(|(_, m)| m["metrics"]["ticks"].as_u64())
            .max()
            .unwrap_or(0)
    };
    let before: HashMap<Uuid, u64> = ids.iter().map(|id| (*id, ticks_of(*id))).collect();
    let running: Vec<Uuid> = ids.iter().copied().filter(|id| *id != paused).collect();
    wait_for(
        "market data to reach every running strategy",
        DEADLINE,
        || {
            let mut conn = conn.clone();
            let channel = engine.channels.live_data(token);
            let (running, before) = (running.clone(), before.clone());
            let ticks_of = &ticks_of;
            async move {
                let tick = json!({"token": token, "price": 100.0, "timestamp": chrono::Utc::now()});
                let _: Result<i64, _> = conn.publish(&channel, tick.to_string()).await;
                running
                    .iter()
                    .all(|id| ticks_of(*id) > before[id])
                    .then_some(())
            }
        },
    )
    .await;
    let ticks_back = back.elapsed();

    // Status messages flow again on the next transition, and commands still work.
    let status = Collector::start(&engine.redis, "strategy:status:*").await;
    engine.op().run_ok(Some(paused), "resume", json!({})).await;
    wait_for("a status message after the outage", DEADLINE, || async {
        status
            .any(|c, m| c == engine.channels.status(paused) && m["status"] == "running")
            .then_some(())
    })
    .await;

    println!(
        "redis outage of {:.0}s: after redis was back, health in {:.2}s, state hashes in {:.2}s, \
         executor metrics in {:.2}s, market data in {:.2}s",
        outage_len.as_secs_f64(),
        health_back.as_secs_f64(),
        hashes_back.as_secs_f64(),
        metrics_back.as_secs_f64(),
        ticks_back.as_secs_f64()
    );
    for id in &ids {
        assert_eq!(engine.op().state(*id).await.pid, Some(pids[id] as i32));
    }
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_keeps_strategies_running_and_commands_resume() {
    let _serial = SERIAL.lock().await;
    let log = LogCapture::install();
    let mut engine = TestEngine::on_private_services().await;
    engine.start_manager().await;
    let cfg = json!({"interval_ms": 50});
    let ids = engine.start_heartbeats("hb-pg", 3, cfg).await;
    let (steady, paused, crashed) = (ids[0], ids[1], ids[2]);
    engine.op().run_ok(Some(paused), "pause", json!({})).await;
    let mut pids = HashMap::new();
    for id in &ids {
        pids.insert(*id, engine.live_pid(*id).await);
    }
    let socket = engine.control_socket();

    let mark = log.mark();
    let outage_from = chrono::Utc::now();
    engine.services().pg.stop(PgStop::Fast).await;
    let outage_start = Instant::now();
    let outage_len = outage(PG_OUTAGE);

    // An executor that crashes during the outage: is it restarted before the database
    // is back? (Measured, not asserted: the row cannot be written until then.)
    sigkill(pids[&crashed]);
    let restarted_after = try_wait_for(outage_len, || async {
        executors_by_strategy(&socket)
            .get(&crashed)
            .filter(|p| !p.contains(&pids[&crashed]))
            .map(|_| outage_start.elapsed())
    })
    .await;

    tokio::time::sleep_until(outage_start + outage_len).await;
    for id in [steady, paused] {
        assert!(
            process_alive(pids[&id]),
            "executor of {id} died during the outage"
        );
    }
    assert!(
        engine.manager_running(),
        "the manager stopped during the outage"
    );
    let during: Vec<String> = log.lines_since(mark);

    let outage_to = chrono::Utc::now();
    engine.services().pg.start_again().await;
    let back = Instant::now();

    // Commands inserted after it is back are executed.
    let op = &engine.op();
    let resume = wait_for("the operator's connection", DEADLINE, || async {
        op.try_command(Some(paused), "resume", &json!({}))
            .await
            .ok()
    })
    .await;
    let pause = op.command(Some(steady), "pause", json!({})).await;
    let update = op
        .command(
            Some(crashed),
            "update",
            json!({"config": {"interval_ms": 80}}),
        )
        .await;
    for cmd in [resume, pause, update] {
        let out = op.outcome(cmd, DEADLINE).await;
        assert_eq!(out.status, "executed", "{cmd}: {:?}", out.error);
    }
    let commands_back = back.elapsed();

    // The rows are right: each names the one executor the process table has for it.
    let rows = wait_for("rows matching the process table", DEADLINE, || async {
        let rows = op.states().await.ok()?;
        let procs = executors_by_strategy(&socket);
        rows.iter()
            .all(|r| {
                let live = procs.get(&r.id).cloned().unwrap_or_default();
                matches!(r.status.as_str(), "running" | "paused")
                    && r.pid.map(|p| vec![p as u32]) == Some(live)
            })
            .then_some(rows)
    })
    .await;
    let rows_back = back.elapsed();
    let by_id: HashMap<Uuid, _> = rows.iter().map(|r| (r.id, r)).collect();
    assert_eq!(by_id[&steady].status, "paused");
    assert_eq!(by_id[&steady].pid, Some(pids[&steady] as i32));
    assert_eq!(by_id[&paused].status, "running");
    assert_eq!(by_id[&paused].pid, Some(pids[&paused] as i32));
    assert_eq!(by_id[&crashed].status, "running");
    assert_ne!(by_id[&crashed].pid, Some(pids[&crashed] as i32));
    assert_eq!(by_id[&crashed].config["interval_ms"], 80);
    assert!(by_id[&crashed].restart_count >= 1);

    // The history lost nothing: the crash and the restart, recorded when they
    // happened (during the outage), were written once the database was back.
    let history: Vec<(String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT new_status, at FROM strategy_events WHERE strategy_id = $1 AND at >= $2 ORDER BY at, id",
    )
    .bind(crashed)
    .bind(outage_from)
    .fetch_all(&op.pool)
    .await
    .unwrap();
    let during_outage: Vec<&str> = history
        .iter()
        .filter(|(_, at)| *at <= outage_to)
        .map(|(status, _)| status.as_str())
        .collect();
    assert_eq!(
        during_outage.first(),
        Some(&"backoff"),
        "the crash during the outage is missing from strategy_events: {history:?}"
    );
    if restarted_after.is_some() {
        assert!(
            during_outage.ends_with(&["starting", "running"]),
            "the restart during the outage is missing from strategy_events: {history:?}"
        );
    }

    // The log during the outage: a line per task and per outage, not one per retry.
    let mut kinds: HashMap<String, usize> = HashMap::new();
    for line in &during {
        *kinds.entry(log_message(line)).or_default() += 1;
    }
    let mut kinds: Vec<(String, usize)> = kinds.into_iter().collect();
    kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
    println!(
        "postgres outage of {:.0}s: {} log lines during it; the most frequent:",
        outage_len.as_secs_f64(),
        during.len()
    );
    for (message, count) in kinds.iter().take(8) {
        println!("  {count:>4}  {message}");
    }
    match restarted_after {
        Some(t) => println!(
            "  the executor killed during the outage was running again after {:.2}s",
            t.as_secs_f64()
        ),
        None => println!("  the executor killed during the outage was not restarted before the database came back"),
    }
    println!(
        "  after postgres was back: commands executed in {:.2}s, rows right in {:.2}s",
        commands_back.as_secs_f64(),
        rows_back.as_secs_f64()
    );
    assert!(
        during.len() <= PG_OUTAGE_LOG_LINES_MAX,
        "{} log lines during a {:?} database outage (most frequent: {:?})",
        during.len(),
        outage_len,
        &kinds[..kinds.len().min(5)]
    );
    engine.finish().await;
}

/// What a log line says, without its timestamp, spans and fields (to group repeats):
/// `LEVEL message`.
fn log_message(line: &str) -> String {
    let level = ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"]
        .into_iter()
        .find(|l| line.contains(&format!(" {l} ")))
        .unwrap_or("");
    // The message follows the target (`engine_manager::intake: `).
    let text = line
        .match_indices(": ")
        .find(|(i, _)| {
            let before = &line[..*i];
            before[before.rfind(' ').map_or(0, |s| s + 1)..].contains("::")
        })
        .map_or(line, |(i, _)| &line[i + 2..]);
    let words: Vec<&str> = text
        .split(' ')
        .take_while(|w| {
            !w.split_once('=').is_some_and(|(k, _)| {
                !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            })
        })
        .collect();
    format!("{level} {}", words.join(" "))
}

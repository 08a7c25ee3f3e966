//! One regression test per bug the fault-injection suite (`fault_injection.rs`) and
//! the outage tests (`outages.rs`) found, each the smallest reproduction of it, on a
//! test's own private PostgreSQL and Redis. RELIABILITY.md lists them with their
//! cause and fix.

mod common;

use common::{
    executors_by_strategy, manager_env, process_alive, sigkill, spawn_manager_binary, try_wait_for,
    wait_for, wait_lease, LogCapture, PgStop, RedisStop, TestEngine, DEADLINE,
};
use serde_json::json;
use std::time::Duration;
use tokio::time::Instant;

/// How long a test waits for the supervisor to get through its database calls while
/// PostgreSQL is down (each waits out the pool's 10 s acquire timeout).
const THROUGH_THE_OUTAGE: Duration = Duration::from_secs(90);

/// Bug: `StrategySupervisor::restart_after_backoff` starts the executor and leaves it
/// running, whatever `desired_state` says: a strategy an operator paused resumes
/// trading by itself after a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_strategy_that_crashes_comes_back_paused() {
    let mut engine = TestEngine::on_private_services().await;
    engine.start_manager().await;
    let id = engine
        .start_heartbeats("hb-paused-crash", 1, json!({"interval_ms": 50}))
        .await[0];
    engine.op().run_ok(Some(id), "pause", json!({})).await;
    let pid = engine.live_pid(id).await;

    sigkill(pid);
    let row = wait_for(
        "the strategy to be back, paused, after the crash",
        DEADLINE,
        || async {
            let row = engine.op().try_state(id).await?;
            let back = row.pid.is_some() && row.pid != Some(pid as i32);
            (back && row.status == "paused").then_some(row)
        },
    )
    .await;
    assert_eq!(row.desired_state, "paused");
    assert_eq!(
        row.status, "paused",
        "the operator paused it, it crashed, and it came back {}",
        row.status
    );
    // It comes up paused (`--start-paused`): not even a moment of `running`, so not
    // one tick traded while the operator wants it paused.
    let path: Vec<(String, Option<i32>)> = sqlx::query_as(
        "SELECT new_status, pid FROM strategy_events WHERE strategy_id = $1 \
         AND id > (SELECT max(id) FROM strategy_events WHERE strategy_id = $1 AND new_status = 'backoff') \
         ORDER BY id",
    )
    .bind(id)
    .fetch_all(&engine.pool)
    .await
    .unwrap();
    let statuses: Vec<&str> = path.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        statuses,
        ["starting", "paused"],
        "after the crash: {path:?}"
    );
    assert_eq!(path[1].1, row.pid);
    engine.finish().await;
}

/// Bug (fixed by "Find executors in the process table at start-up"): a supervisor
/// that restarts a crashed executor while PostgreSQL is down cannot record the new
/// pid; a manager killed before it could left that executor running unrecorded, and
/// the next manager (the row still naming the dead pid) started a second one: two
/// executors for one strategy, the first never stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_spawned_during_a_database_outage_is_not_doubled() {
    let mut engine = TestEngine::on_private_services().await;
    let (env, log, mut manager) = binary_manager(&engine).await;
    let id = engine
        .start_heartbeats("hb-double", 1, json!({"interval_ms": 50}))
        .await[0];
    let pid = engine.live_pid(id).await;
    let socket = engine.control_socket();

    engine.services().pg.stop(PgStop::Fast).await;
    sigkill(pid);
    let outage = Instant::now();
    let orphan = wait_for(
        "the crashed executor to be restarted while the database is down",
        THROUGH_THE_OUTAGE,
        || async {
            let live = executors_by_strategy(&socket).get(&id).cloned()?;
            live.into_iter().find(|p| *p != pid)
        },
    )
    .await;
    println!(
        "restarted as pid {orphan} after {:.1}s of the outage",
        outage.elapsed().as_secs_f64()
    );

    // The manager dies before the database is back to record the new pid.
    manager.start_kill().unwrap();
    manager.wait().await.unwrap();
    engine.services().pg.start_again().await;
    let manager = respawn_manager(&engine, &env, &log).await;

    let settled = try_wait_for(DEADLINE, || async {
        let row = engine.op().try_state(id).await?;
        let live = executors_by_strategy(&socket)
            .get(&id)
            .cloned()
            .unwrap_or_default();
        (row.status == "running" && row.pid.map(|p| vec![p as u32]) == Some(live)).then_some(())
    })
    .await;
    let live = executors_by_strategy(&socket).get(&id).cloned();
    let row = engine.op().state(id).await;
    drop(manager);
    assert!(
        settled.is_some(),
        "strategy {id}: the row says {} with pid {:?}, the process table has {live:?} \
         (pid {orphan} was started during the outage)",
        row.status,
        row.pid
    );
    engine.finish().await;
}

/// Bug: `StrategySupervisor::set_desired` only logs when the database is away, and the
/// command goes on to be `executed`: an operator's stop that ran while PostgreSQL was
/// down leaves `desired_state = running`, so the next manager start starts the
/// strategy again ("a deliberately stopped strategy stays stopped").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_applied_during_a_database_outage_is_remembered() {
    let log = LogCapture::install();
    let mut engine = TestEngine::on_private_services().await;
    engine.config.ack_timeout = Duration::from_secs(6);
    engine.start_manager().await;
    let id = engine
        .start_heartbeats("hb-stop-outage", 1, json!({"interval_ms": 50}))
        .await[0];
    let pid = engine.live_pid(id).await;

    // A frozen executor keeps the supervisor busy with an update (it waits for the
    // ack), so the stop behind it starts while the database is down.
    let frozen = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::kill_process(frozen, rustix::process::Signal::STOP).unwrap();
    let op = &engine.op();
    let _update = op
        .command(Some(id), "update", json!({"config": {"interval_ms": 70}}))
        .await;
    let stop = op.command(Some(id), "stop", json!({"timeout_s": 2})).await;
    wait_for("both commands to be claimed", DEADLINE, || async {
        let claimed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM strategy_commands WHERE strategy_id = $1 AND status = 'processing'",
        )
        .bind(id)
        .fetch_one(&op.pool)
        .await
        .ok()?;
        (claimed == 2).then_some(())
    })
    .await;
    let mark = log.mark();
    engine.services().pg.stop(PgStop::Fast).await;
    wait_for(
        "the stop to try to record desired_state",
        THROUGH_THE_OUTAGE,
        || async {
            log.lines_since(mark)
                .iter()
                .any(|l| l.contains("could not record desired_state"))
                .then_some(())
        },
    )
    .await;
    engine.services().pg.start_again().await;

    let out = engine.op().outcome(stop, THROUGH_THE_OUTAGE).await;
    assert_eq!(out.status, "executed", "{:?}", out.error);
    assert!(!process_alive(pid), "stop executed but {pid} lives");
    let row = engine.op().state(id).await;
    assert_eq!(row.status, "stopped");
    assert_eq!(
        row.desired_state, "stopped",
        "the operator's stop was executed but desired_state says {}",
        row.desired_state
    );
    engine.finish().await;
}

/// Bug (the full-size fault run: a `stop` whose `stopped` appeared twice): when the
/// `desired_state` write of a command failed (each write gives up after 1 s) and the
/// status writes after it landed, the row said `stopped` with `desired_state =
/// running`; the command could even end `executed`. A manager killed then left the
/// next one to start the strategy again, and then apply the recovered stop a second
/// time. Now a command's outcome waits until its `desired_state` is written, status
/// writes wait for it too, and a manager does not start a strategy whose recovered
/// command is a stop. The database here refuses every change of `desired_state`
/// (and nothing else), as a write lost to a blip would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_whose_desired_state_was_not_recorded_is_neither_executed_nor_undone() {
    let engine = TestEngine::on_private_services().await;
    let (env, log, mut manager) = binary_manager(&engine).await;
    let id = engine
        .start_heartbeats("hb-desired-first", 1, json!({"interval_ms": 50}))
        .await[0];
    let pid = engine.live_pid(id).await;
    let op = &engine.op();
    refuse_desired_state_changes(&op.pool).await;
    let last_event: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM strategy_events")
        .fetch_one(&op.pool)
        .await
        .unwrap();

    let stop = op.command(Some(id), "stop", json!({})).await;
    // Until the stop is applied and its outcome held, or the command ends (the bug).
    let held: String = wait_for(
        "the stop to be applied, and its outcome held or recorded",
        DEADLINE,
        || async {
            let status: String =
                sqlx::query_scalar("SELECT status FROM strategy_commands WHERE id = $1")
                    .bind(stop)
                    .fetch_one(&op.pool)
                    .await
                    .ok()?;
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let held = text.contains("the outcome waits until desired_state is recorded");
            let ended = status == "executed" || status == "failed";
            (ended || (held && !process_alive(pid))).then_some(status)
        },
    )
    .await;
    assert_eq!(
        held, "processing",
        "the stop's desired_state is not recorded, yet the command is {held}"
    );
    assert!(!process_alive(pid));

    // The manager dies; the database takes desired_state again; a new manager.
    manager.start_kill().unwrap();
    manager.wait().await.unwrap();
    allow_desired_state_changes(&op.pool).await;
    let manager = respawn_manager(&engine, &env, &log).await;

    let out = op.outcome(stop, DEADLINE).await;
    assert_eq!(out.status, "executed", "{:?}", out.error);
    let row = op.state(id).await;
    assert_eq!(
        (row.status.as_str(), row.desired_state.as_str()),
        ("stopped", "stopped")
    );
    let started: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT new_status, reason FROM strategy_events WHERE strategy_id = $1 AND id > $2 \
         AND new_status IN ('starting', 'running') ORDER BY id",
    )
    .bind(id)
    .bind(last_event)
    .fetch_all(&op.pool)
    .await
    .unwrap();
    assert!(
        started.is_empty(),
        "the new manager started the strategy its recovered stop then stopped: {started:?}"
    );
    assert_eq!(
        executors_by_strategy(&engine.control_socket()).get(&id),
        None,
        "an executor runs for the stopped strategy"
    );
    drop(manager);
    engine.finish().await;
}

/// The real `engine-manager` binary as a subprocess (so it can be SIGKILLed), once it
/// holds the lease: its environment, its log file, the process.
async fn binary_manager(
    engine: &TestEngine,
) -> (
    Vec<(String, String)>,
    std::path::PathBuf,
    tokio::process::Child,
) {
    let env = manager_env(&engine.config);
    let log = engine.state_dir.join("manager.log");
    let manager = respawn_manager(engine, &env, &log).await;
    (env, log, manager)
}

/// A new manager process with the same environment and log, once it holds the lease.
async fn respawn_manager(
    engine: &TestEngine,
    env: &[(String, String)],
    log: &std::path::Path,
) -> tokio::process::Child {
    let manager = spawn_manager_binary(env, log);
    wait_lease(&engine.op(), manager.id().unwrap(), DEADLINE).await;
    manager
}

/// The database refuses every change of `strategy_configs.desired_state` (and
/// nothing else), as a write lost to a blip would be.
async fn refuse_desired_state_changes(pool: &sqlx::PgPool) {
    sqlx::raw_sql(
        "CREATE OR REPLACE FUNCTION refuse_desired() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           IF NEW.desired_state IS DISTINCT FROM OLD.desired_state THEN \
             RAISE EXCEPTION 'test: desired_state refused'; \
           END IF; RETURN NEW; END $$; \
         CREATE TRIGGER refuse_desired BEFORE UPDATE ON strategy_configs \
           FOR EACH ROW EXECUTE FUNCTION refuse_desired();",
    )
    .execute(pool)
    .await
    .unwrap();
}

async fn allow_desired_state_changes(pool: &sqlx::PgPool) {
    sqlx::raw_sql("DROP TRIGGER refuse_desired ON strategy_configs")
        .execute(pool)
        .await
        .unwrap();
}

async fn last_event_id(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM strategy_events")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// `(new_status, command_id, reason)` of one strategy's events after `after`.
async fn events_since(
    pool: &sqlx::PgPool,
    id: uuid::Uuid,
    after: i64,
) -> Vec<(String, Option<uuid::Uuid>, Option<String>)> {
    sqlx::query_as(
        "SELECT new_status, command_id, reason FROM strategy_events WHERE strategy_id = $1 AND id > $2 ORDER BY id",
    )
    .bind(id)
    .bind(after)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Bug (full-size fault run: a `pause` whose `paused` appeared twice): a pause wrote
/// `desired_state` only after the executor had paused; a manager killed in between
/// left `paused` with `desired_state = running`, and the next one resumed the
/// strategy at adoption, then applied the recovered pause again. Now `desired_state`
/// is written first (and put back if the pause fails), and the start-up acts on the
/// desired state the recovered commands imply. Here the `desired_state` write fails,
/// so the pause's outcome is held and the manager is killed with it `processing`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_pause_is_not_undone_at_adoption() {
    let engine = TestEngine::on_private_services().await;
    let (env, log, mut manager) = binary_manager(&engine).await;
    let id = engine
        .start_heartbeats("hb-pause-recovered", 1, json!({"interval_ms": 50}))
        .await[0];
    let pid = engine.live_pid(id).await;
    let op = &engine.op();
    refuse_desired_state_changes(&op.pool).await;
    let mark = last_event_id(&op.pool).await;
    let pause = op.command(Some(id), "pause", json!({})).await;
    wait_for(
        "the pause to be applied, its outcome held",
        DEADLINE,
        || async {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.contains("the outcome waits until desired_state is recorded")
                .then_some(())
        },
    )
    .await;

    manager.start_kill().unwrap();
    manager.wait().await.unwrap();
    allow_desired_state_changes(&op.pool).await;
    let manager = respawn_manager(&engine, &env, &log).await;

    let out = op.outcome(pause, DEADLINE).await;
    assert_eq!(out.status, "executed", "{:?}", out.error);
    let row = op.wait_status(id, "paused").await;
    assert_eq!(row.desired_state, "paused");
    assert_eq!(row.pid, Some(pid as i32), "the executor was replaced");
    let events = events_since(&op.pool, id, mark).await;
    // The new manager records what the row said when it adopts ("adopted"), then
    // what the executor reports; a resume would be a `running` of its own.
    assert!(
        events
            .iter()
            .all(|(status, _, reason)| status != "running" || reason.as_deref() == Some("adopted")),
        "the paused strategy was resumed on the way: {events:?}"
    );
    let paused_by_it = events
        .iter()
        .filter(|(s, c, _)| s == "paused" && *c == Some(pause))
        .count();
    assert!(
        paused_by_it <= 1,
        "the pause took effect {paused_by_it} times: {events:?}"
    );
    drop(manager);
    engine.finish().await;
}

/// Bug (full-size fault run: a global `stop` whose `stopped` appeared twice): a
/// global command ends only when every strategy has been through it; a manager
/// killed while one strategy was slow left it `processing`, and the next manager
/// applied it again to every strategy — stopping one that a later `start` had
/// started. Now a recovered command skips the strategies whose events show they
/// have been through it (or through a later command).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_global_stop_does_not_undo_a_later_start() {
    let engine = TestEngine::on_private_services().await;
    let (env, log, mut manager) = binary_manager(&engine).await;
    let ids = engine
        .start_heartbeats("hb-global-recovered", 2, json!({"interval_ms": 50}))
        .await;
    let (slow, quick) = (ids[0], ids[1]);
    let op = &engine.op();
    // A frozen executor holds the global stop up (it waits out its grace period).
    let frozen = engine.live_pid(slow).await;
    let frozen_pid = rustix::process::Pid::from_raw(frozen as i32).unwrap();
    rustix::process::kill_process(frozen_pid, rustix::process::Signal::STOP).unwrap();

    let global = op.command(None, "stop", json!({"timeout_s": 20})).await;
    op.wait_status(quick, "stopped").await;
    let start = op.run_ok(Some(quick), "start", json!({})).await;
    let restarted = engine.live_pid(quick).await;
    let still: String = sqlx::query_scalar("SELECT status FROM strategy_commands WHERE id = $1")
        .bind(global)
        .fetch_one(&op.pool)
        .await
        .unwrap();
    assert_eq!(
        still, "processing",
        "the global stop must still wait for {slow}"
    );

    manager.start_kill().unwrap();
    manager.wait().await.unwrap();
    rustix::process::kill_process(frozen_pid, rustix::process::Signal::CONT).unwrap();
    let manager = respawn_manager(&engine, &env, &log).await;

    let out = op.outcome(global, DEADLINE).await;
    assert_eq!(out.status, "executed", "{:?}", out.error);
    op.wait_status(slow, "stopped").await;
    let row = op.state(quick).await;
    assert_eq!(
        (row.status.as_str(), row.pid),
        ("running", Some(restarted as i32)),
        "the start ({start}) that came after the global stop was undone"
    );
    assert!(process_alive(restarted));
    drop(manager);
    engine.finish().await;
}

/// Limit found while fixing bug 12: a recovered command is skipped where events prove
/// it was applied, but an `update` left no event, so a recovered update whose
/// strategy had applied a later update since was applied again, over the later one.
/// Now an update records a `config updated` event. Here the first update's outcome
/// cannot be recorded (a trigger refuses it), the second goes through, and the
/// manager is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_update_does_not_undo_a_later_update() {
    let engine = TestEngine::on_private_services().await;
    let (env, log, mut manager) = binary_manager(&engine).await;
    let id = engine
        .start_heartbeats("hb-update-recovered", 1, json!({"interval_ms": 50}))
        .await[0];
    let op = &engine.op();
    sqlx::raw_sql(
        "CREATE FUNCTION hold_update() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           IF NEW.command = 'update' AND NEW.parameters->'config'->>'interval_ms' = '70' \
              AND NEW.status IN ('executed', 'failed') THEN \
             RAISE EXCEPTION 'test: outcome refused'; \
           END IF; RETURN NEW; END $$; \
         CREATE TRIGGER hold_update BEFORE UPDATE ON strategy_commands \
           FOR EACH ROW EXECUTE FUNCTION hold_update();",
    )
    .execute(&op.pool)
    .await
    .unwrap();
    let first = op
        .command(Some(id), "update", json!({"config": {"interval_ms": 70}}))
        .await;
    op.run_ok(Some(id), "update", json!({"config": {"interval_ms": 90}}))
        .await;
    assert_eq!(op.state(id).await.config["interval_ms"], 90);
    let held: String = sqlx::query_scalar("SELECT status FROM strategy_commands WHERE id = $1")
        .bind(first)
        .fetch_one(&op.pool)
        .await
        .unwrap();
    assert_eq!(held, "processing");

    manager.start_kill().unwrap();
    manager.wait().await.unwrap();
    sqlx::raw_sql("DROP TRIGGER hold_update ON strategy_commands")
        .execute(&op.pool)
        .await
        .unwrap();
    let manager = respawn_manager(&engine, &env, &log).await;
    let out = op.outcome(first, DEADLINE).await;
    assert_eq!(out.status, "executed", "{:?}", out.error);
    assert_eq!(
        op.state(id).await.config["interval_ms"],
        90,
        "the recovered first update was applied over the later one"
    );
    drop(manager);
    engine.finish().await;
}

/// Found by the slowest recovery of a full-size run: a manager killed while a
/// `restart` had its new executor still starting left the next manager unable to
/// tell that the restart had got that far (`started_at` was written only at
/// `running`): it restarted the new executor again, a second restart, and its
/// shutdown of an executor still in start-up took the SIGTERM grace period. Now
/// `started_at` is the spawn's time, recorded with `starting`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_restart_whose_executor_is_starting_is_not_restarted_again() {
    let engine = TestEngine::on_private_services().await;
    let (env, log, mut manager) = binary_manager(&engine).await;
    let id = engine
        .start_heartbeats(
            "hb-restart-starting",
            1,
            json!({"interval_ms": 50, "start_delay_ms": 1500}),
        )
        .await[0];
    let op = &engine.op();
    let first = engine.live_pid(id).await;
    let restart = op.command(Some(id), "restart", json!({})).await;
    let spawned = wait_for(
        "the restart's new executor to be starting",
        DEADLINE,
        || async {
            let row = op.try_state(id).await?;
            let pid = row.pid? as u32;
            (row.status == "starting" && pid != first).then_some(pid)
        },
    )
    .await;
    let mark = last_event_id(&op.pool).await;
    manager.start_kill().unwrap();
    manager.wait().await.unwrap();
    let manager = respawn_manager(&engine, &env, &log).await;

    let out = op.outcome(restart, DEADLINE).await;
    assert_eq!(out.status, "executed", "{:?}", out.error);
    let row = op.wait_status(id, "running").await;
    assert_eq!(
        row.pid,
        Some(spawned as i32),
        "the restart was applied a second time after the manager restart"
    );
    let events = events_since(&op.pool, id, mark).await;
    assert!(
        events.iter().all(|(status, _, _)| status != "stopping"),
        "the new manager stopped the restarted executor: {events:?}"
    );
    drop(manager);
    engine.finish().await;
}

/// Bug: while PostgreSQL is down every database call of a supervisor waits out the
/// pool's 10 s acquire timeout (`transition` → `record`, `start` →
/// `reload_definition`), so a crashed executor is restarted about 20 s late instead of
/// after its restart delay (100 ms here). The contract's 5 s is the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_a_database_outage_is_restarted_without_the_database() {
    let mut engine = TestEngine::on_private_services().await;
    engine.start_manager().await;
    let id = engine
        .start_heartbeats("hb-crash-outage", 1, json!({"interval_ms": 50}))
        .await[0];
    let pid = engine.live_pid(id).await;
    let socket = engine.control_socket();

    engine.services().pg.stop(PgStop::Fast).await;
    sigkill(pid);
    let crashed = Instant::now();
    let restarted = try_wait_for(Duration::from_secs(5), || async {
        let live = executors_by_strategy(&socket).get(&id).cloned()?;
        live.into_iter().find(|p| *p != pid)
    })
    .await;
    let waited = crashed.elapsed();
    let later = match restarted {
        Some(_) => None,
        None => {
            try_wait_for(THROUGH_THE_OUTAGE, || async {
                let live = executors_by_strategy(&socket).get(&id).cloned()?;
                live.into_iter()
                    .find(|p| *p != pid)
                    .map(|_| crashed.elapsed())
            })
            .await
        }
    };
    engine.services().pg.start_again().await;
    assert!(
        restarted.is_some(),
        "no new executor {:.1}s after the crash (one came after {:?})",
        waited.as_secs_f64(),
        later
    );
    engine.finish().await;
}

/// Bug: `StrategySupervisor::operator_start` turns every failed start into `error`,
/// even an executor killed by a signal in its start-up (the OOM killer, an operator's
/// `kill -9`): the strategy then stays down although `desired_state` is running, and
/// the contract keeps `error` for what restarting cannot fix (bad config, unknown
/// type, a crash loop). An automatic restart after a crash already tells the two
/// apart (`after_failed_start`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_killed_in_its_start_up_is_retried() {
    use std::os::unix::fs::PermissionsExt;
    let mut engine = TestEngine::on_private_services().await;
    // An executor that takes a second to start: a window to kill it in its start-up.
    let wrapper = engine.state_dir.join("slow-executor.sh");
    let real = common::workspace_bin("strategy-executor");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nsleep 1\nexec '{}' \"$@\"\n", real.display()),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    engine.config.executor_path = Some(wrapper.clone());
    engine.start_manager().await;
    let id = engine
        .op()
        .add_strategy("hb-start-killed", "heartbeat", json!({"interval_ms": 50}))
        .await;

    let start = engine.op().command(Some(id), "start", json!({})).await;
    let starting = wait_for("the executor in its start-up", DEADLINE, || async {
        let wrapper = wrapper.to_string_lossy().to_string();
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let text = String::from_utf8_lossy(&cmdline);
            (text.contains(&wrapper) && text.contains(&id.to_string())).then_some(pid)
        })
    })
    .await;
    sigkill(starting);
    let out = engine.op().outcome(start, DEADLINE).await;
    println!("the start ended {}: {:?}", out.status, out.error);

    let settled = try_wait_for(DEADLINE, || async {
        let row = engine.op().try_state(id).await?;
        let pid = row.pid? as u32;
        (row.status == "running" && process_alive(pid)).then_some(row)
    })
    .await;
    let row = engine.op().state(id).await;
    assert!(
        settled.is_some(),
        "desired_state is {} but the strategy is {} (last_error: {:?})",
        row.desired_state,
        row.status,
        row.last_error
    );
    engine.finish().await;
}

/// Bug: `CommandIntake::dispatch_global` publishes a global command on
/// `strategy:global:commands` only after every supervisor applied it, i.e. after the
/// commands queued behind it ran. An executor started in between (a restart, a crash
/// restart) has not seen its command id and applies it then, out of order: here a
/// global resume, delayed by a slow supervisor, resumes a strategy an operator paused
/// after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_command_is_not_applied_again_after_later_commands() {
    let mut engine = TestEngine::on_private_services().await;
    engine.config.ack_timeout = Duration::from_secs(5);
    engine.start_manager().await;
    let ids = engine
        .start_heartbeats("hb-global", 2, json!({"interval_ms": 50}))
        .await;
    let (paused, slow) = (ids[0], ids[1]);
    let op = &engine.op();
    op.run_ok(Some(paused), "pause", json!({})).await;

    // The slow one holds the global command back: its executor is frozen and an
    // update waits for an ack in front of it.
    let frozen = engine.live_pid(slow).await;
    let frozen = rustix::process::Pid::from_raw(frozen as i32).unwrap();
    rustix::process::kill_process(frozen, rustix::process::Signal::STOP).unwrap();
    let _update = op
        .command(Some(slow), "update", json!({"config": {"interval_ms": 70}}))
        .await;
    let resume = op.command(None, "resume", json!({})).await;
    op.wait_status(paused, "running").await;

    // After the global resume, an operator restarts the strategy (a new executor that
    // never saw the resume) and pauses it.
    op.run_ok(Some(paused), "restart", json!({})).await;
    op.run_ok(Some(paused), "pause", json!({})).await;
    let out = op.outcome(resume, DEADLINE).await;
    println!("the global resume ended {}: {:?}", out.status, out.error);
    rustix::process::kill_process(frozen, rustix::process::Signal::CONT).unwrap();

    // The contract's 5 s for the status to show what happened: it must stay paused.
    let resumed = try_wait_for(Duration::from_secs(5), || async {
        op.try_state(paused).await.filter(|r| r.status != "paused")
    })
    .await;
    assert!(
        resumed.is_none(),
        "paused after the global resume, then {:?}: the global resume was applied again",
        resumed.map(|r| (r.status, r.desired_state))
    );
    engine.finish().await;
}

/// Bug 14 (the first full-size run after the supervisor became a state machine: a
/// `stop` whose `stopped` appeared twice). A stop completed, `stopped` recorded, but
/// not its outcome; a later `start` ran its executor, but its events and status were
/// lost with the manager (killed while the database was away: they wait in memory),
/// so the row still said `stopped` with `desired_state = running`. The next manager
/// adopted the start's executor, applied the recovered stop again (only a later
/// command's events counted as proof, and those were lost), then the start: the
/// strategy stopped and started for nothing, and the stop took effect twice. Now a
/// recovered command whose own completing transition is recorded is not applied
/// again. Here triggers refuse both outcomes and the start's events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_stop_that_completed_does_not_undo_a_later_start() {
    let engine = TestEngine::on_private_services().await;
    let (env, log, mut manager) = binary_manager(&engine).await;
    let id = engine
        .start_heartbeats("hb-stop-completed", 1, json!({"interval_ms": 50}))
        .await[0];
    let op = &engine.op();
    sqlx::raw_sql(
        "CREATE FUNCTION hold_outcomes() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           IF NEW.command IN ('stop', 'start') AND NEW.status IN ('executed', 'failed') THEN \
             RAISE EXCEPTION 'test: outcome refused'; \
           END IF; RETURN NEW; END $$; \
         CREATE TRIGGER hold_outcomes BEFORE UPDATE ON strategy_commands \
           FOR EACH ROW EXECUTE FUNCTION hold_outcomes(); \
         CREATE FUNCTION lose_start_events() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           IF EXISTS (SELECT 1 FROM strategy_commands c \
                      WHERE c.id = NEW.command_id AND c.command = 'start') THEN \
             RAISE EXCEPTION 'test: events lost'; \
           END IF; RETURN NEW; END $$; \
         CREATE TRIGGER lose_start_events BEFORE INSERT ON strategy_events \
           FOR EACH ROW EXECUTE FUNCTION lose_start_events();",
    )
    .execute(&op.pool)
    .await
    .unwrap();
    let stop = op.command(Some(id), "stop", json!({})).await;
    op.wait_status(id, "stopped").await;
    let mut status = engine.subscribe(&engine.channels.status(id)).await;
    let start = op.command(Some(id), "start", json!({})).await;
    let running = status
        .expect("the start's running on the status channel", |_, m| {
            m["status"] == "running" && m["command_id"] == start.to_string()
        })
        .await;
    let pid = running["pid"].as_u64().expect("a pid") as u32;
    let row = op.state(id).await;
    assert_eq!(
        (row.status.as_str(), row.desired_state.as_str()),
        ("stopped", "running"),
        "the start's status write must have been lost"
    );

    manager.start_kill().unwrap();
    manager.wait().await.unwrap();
    sqlx::raw_sql(
        "DROP TRIGGER hold_outcomes ON strategy_commands; \
         DROP TRIGGER lose_start_events ON strategy_events;",
    )
    .execute(&op.pool)
    .await
    .unwrap();
    let manager = respawn_manager(&engine, &env, &log).await;

    for command in [stop, start] {
        let out = op.outcome(command, DEADLINE).await;
        assert_eq!(out.status, "executed", "{:?}", out.error);
    }
    let row = op.wait_status(id, "running").await;
    assert_eq!(
        row.pid,
        Some(pid as i32),
        "the start's executor was replaced: the recovered stop was applied again"
    );
    assert!(process_alive(pid));
    let stopped: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM strategy_events WHERE command_id = $1 AND new_status = 'stopped' \
         AND old_status IS DISTINCT FROM new_status",
    )
    .bind(stop)
    .fetch_one(&op.pool)
    .await
    .unwrap();
    assert_eq!(stopped, 1, "the stop took effect {stopped} times");
    drop(manager);
    engine.finish().await;
}

/// Bug 15 (full-size fault run): a global `pause` applied to a strategy that was
/// stopped when it was given, and the `restart` after it undone. A manager died with
/// both claimed (`processing`) and not yet applied to a stopped strategy. The next
/// manager started the strategy at once, because the recovered restart implied
/// `running`, then applied the recovered pause to it (now running: it paused), and
/// took the restart as done (its executor was newer than the restart). Now, without a
/// live executor, the start-up starts only what the row's `desired_state` says:
/// recovered commands may keep a strategy stopped (a stop) or start it paused, never
/// start one; they are applied next, in order, each to the state it would have found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovered_commands_are_applied_to_the_state_they_would_have_found() {
    let mut engine = TestEngine::new().await;
    let id = engine.add_heartbeat("hb-recovered-order").await;
    // A manager ran on this host (so the next start is a manager restart, not a boot).
    engine.start_manager().await;
    engine.stop_manager().await;
    let op = &engine.op();
    let pause = op.command(None, "pause", json!({})).await;
    let restart = op.command(Some(id), "restart", json!({})).await;
    // Claimed by a manager that died before applying them.
    sqlx::query("UPDATE strategy_commands SET status = 'processing' WHERE id = ANY($1)")
        .bind([pause, restart])
        .execute(&op.pool)
        .await
        .unwrap();

    engine.start_manager().await;
    for command in [pause, restart] {
        let out = op.outcome(command, DEADLINE).await;
        assert_eq!(out.status, "executed", "{:?}", out.error);
    }
    let row = op.wait_status(id, "running").await;
    assert_eq!(row.desired_state, "running");
    let paused: i64 =
        sqlx::query_scalar("SELECT count(*) FROM strategy_events WHERE command_id = $1")
            .bind(pause)
            .fetch_one(&op.pool)
            .await
            .unwrap();
    assert_eq!(
        paused, 0,
        "the global pause was applied to a strategy that was stopped when it was given"
    );
    engine.finish().await;
}

/// Found by a full-size fault run after bug 15 (its slowest recovery, 5.01 s): a
/// manager that adopts an executor which should be stopped sends the shutdown over
/// the control link and Redis; right after a manager restart the executor's link is
/// still reconnecting, and with Redis away the message reached nobody, so the stop
/// waited for the SIGTERM at half its grace period (5 s). Now a shutdown that did not
/// go over a link is sent over the link as soon as the executor connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_reaches_an_executor_that_connects_while_it_is_stopping() {
    let mut engine = TestEngine::on_private_services().await;
    let (env, log, mut manager) = binary_manager(&engine).await;
    let id = engine
        .start_heartbeats("hb-late-link", 1, json!({"interval_ms": 50}))
        .await[0];
    let op = engine.op();
    let pid = engine.live_pid(id).await;
    manager.start_kill().unwrap();
    manager.wait().await.unwrap();
    // A stop whose desired_state was written just before the manager died.
    sqlx::query("UPDATE strategy_configs SET desired_state = 'stopped' WHERE id = $1")
        .bind(id)
        .execute(&op.pool)
        .await
        .unwrap();
    engine.services().redis.stop(RedisStop::Kill).await;
    let mark = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);

    let manager = respawn_manager(&engine, &env, &log).await;
    op.wait_status(id, "stopped").await;
    assert!(!process_alive(pid));
    let text = std::fs::read_to_string(&log).unwrap();
    let since = &text[mark as usize..];
    assert!(
        since.contains("the executor connected while stopping; shutdown sent"),
        "the shutdown was not sent when the executor connected:\n{since}"
    );
    assert!(
        !since.contains("sending SIGTERM"),
        "the stop waited for the SIGTERM:\n{since}"
    );
    engine.services().redis.start_again().await;
    drop(manager);
    engine.finish().await;
}

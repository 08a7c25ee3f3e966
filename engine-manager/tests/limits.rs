//! Resource limits (CONTRACT §6) on real processes: cgroup v1 as on this project's
//! machines (memory, cpu and pids controllers mounted), and rlimits alone. The
//! strategies that misbehave are `heartbeat`'s test hooks: `hog_mb_per_beat`,
//! `spin_ms_per_beat`, `threads_per_beat`. (The v2 driver is tested against a fake
//! cgroupfs in `engine_manager::limits`'s unit tests.)

mod common;

use common::cgroups::{cgroup_v1_here, v1_group};
use common::{wait_for, TestEngine, DEADLINE};
use engine_manager::limits::MechanismChoice;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};
use uuid::Uuid;

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|err| panic!("{}/{file}: {err}", dir.display()))
        .trim()
        .to_string()
}

async fn engine_with(mechanism: MechanismChoice) -> TestEngine {
    let mut engine = TestEngine::new().await;
    engine.config.limits_mechanism = mechanism;
    engine.start_manager().await;
    engine
}

/// An engine whose manager uses cgroup v1, where this host has it.
async fn v1_engine() -> Option<TestEngine> {
    if !cgroup_v1_here() {
        return None;
    }
    Some(engine_with(MechanismChoice::CgroupV1).await)
}

/// A `heartbeat` strategy with `config` (its misbehaving hooks) and `limits`.
async fn add_limited(engine: &TestEngine, name: &str, config: Value, limits: Value) -> Uuid {
    let id = engine.add_strategy(name, "heartbeat", config, false).await;
    set_limits(engine, id, limits).await;
    id
}

async fn set_limits(engine: &TestEngine, id: Uuid, limits: Value) {
    sqlx::query("UPDATE strategy_configs SET limits = $2 WHERE id = $1")
        .bind(id)
        .bind(limits)
        .execute(&engine.pool)
        .await
        .expect("limits stored");
}

/// The first event of strategy `id` with `reason`: its `error`.
async fn wait_event(engine: &TestEngine, id: Uuid, reason: &str) -> Option<String> {
    let pool = engine.pool.clone();
    wait_for(&format!("an event '{reason}'"), DEADLINE, || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, Option<String>>(
                "SELECT error FROM strategy_events WHERE strategy_id = $1 AND reason = $2 \
                 ORDER BY id LIMIT 1",
            )
            .bind(id)
            .bind(reason)
            .fetch_optional(&pool)
            .await
            .ok()
            .flatten()
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_hog_is_killed_at_its_limit_and_said_so() {
    let Some(engine) = v1_engine().await else {
        return;
    };
    let id = add_limited(
        &engine,
        "hog",
        json!({"interval_ms": 50, "hog_mb_per_beat": 8}),
        json!({"memory_mb": 64}),
    )
    .await;
    // The start may or may not see `running` before the first kill: not asserted.
    engine.command(Some(id), "start", json!({})).await;
    let error = wait_event(&engine, id, "oom").await;
    assert_eq!(error.as_deref(), Some("killed: out of memory, limit 64 MB"));
    // The crash rules apply: it is restarted with backoff, and counted.
    let row = wait_for("a counted restart after the kill", DEADLINE, || {
        let op = engine.op();
        async move {
            let row = op.state(id).await;
            (row.restart_count >= 1).then_some(row)
        }
    })
    .await;
    assert!(
        row.last_error
            .as_deref()
            .is_some_and(|e| e.contains("out of memory")),
        "{row:?}"
    );
    engine.run_ok(Some(id), "stop", json!({})).await;
    // The group goes with its executor.
    wait_for("the group removed after the exit", DEADLINE, || async {
        (!v1_group("memory", id).exists()).then_some(())
    })
    .await;
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_strategy_is_held_to_its_cpu_quota() {
    let Some(engine) = v1_engine().await else {
        return;
    };
    let id = add_limited(
        &engine,
        "spinner",
        json!({"interval_ms": 10, "spin_ms_per_beat": 500}),
        json!({"cpu_percent": 20}),
    )
    .await;
    engine.run_ok(Some(id), "start", json!({})).await;
    let pid = engine.live_pid(id).await;
    let cpu = v1_group("cpu", id);
    assert_eq!(read(&cpu, "cpu.cfs_quota_us"), "20000");
    assert_eq!(read(&cpu, "cgroup.procs"), pid.to_string());
    // The kernel throttles it…
    wait_for("the executor throttled", DEADLINE, || async {
        let stat = std::fs::read_to_string(cpu.join("cpu.stat")).ok()?;
        let throttled = stat
            .lines()
            .find_map(|l| l.strip_prefix("nr_throttled "))
            .and_then(|n| n.trim().parse::<u64>().ok())?;
        (throttled > 0).then_some(())
    })
    .await;
    // …and over two seconds it used about its fifth of a core (a generous band: the
    // measurement is in 10 ms ticks), where unlimited it would use all of one.
    let (cpu_before, at) = (
        engine_protocol::procfs::cpu_ns(pid).unwrap(),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = engine_protocol::procfs::cpu_ns(pid).unwrap() - cpu_before;
    let share = used as f64 / at.elapsed().as_nanos() as f64;
    assert!(
        share < 0.40,
        "the spinner used {:.0} % of a core",
        share * 100.0
    );
    assert!(
        share > 0.05,
        "the spinner did not spin: {:.0} %",
        share * 100.0
    );
    engine.run_ok(Some(id), "stop", json!({})).await;
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_bomb_is_contained_by_its_pids_limit() {
    let Some(engine) = v1_engine().await else {
        return;
    };
    let id = add_limited(
        &engine,
        "bomb",
        json!({"interval_ms": 20, "threads_per_beat": 20}),
        json!({"pids": 32}),
    )
    .await;
    engine.command(Some(id), "start", json!({})).await;
    let pids = v1_group("pids", id);
    // The kernel refuses its threads past the limit (pids.events counts refusals)…
    wait_for("threads refused at the pids limit", DEADLINE, || async {
        let events = std::fs::read_to_string(pids.join("pids.events")).ok()?;
        let refused = events
            .lines()
            .find_map(|l| l.strip_prefix("max "))
            .and_then(|n| n.trim().parse::<u64>().ok())?;
        (refused > 0).then_some(())
    })
    .await;
    let current: u64 = read(&pids, "pids.current").parse().unwrap();
    assert!(current <= 32, "{current} tasks in a group limited to 32");
    // …and the host is unharmed: the manager serves the next command.
    engine.run_ok(Some(id), "stop", json!({})).await;
    let other = engine.add_heartbeat("neighbour").await;
    engine.run_ok(Some(other), "start", json!({})).await;
    engine.run_ok(Some(other), "stop", json!({})).await;
    engine.finish().await;
}

/// An executor that exits while no manager watches it (the manager down) leaves its
/// group behind, empty: the next manager removes it at start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_group_left_while_the_manager_was_down_is_removed_at_the_next_start() {
    let Some(mut engine) = v1_engine().await else {
        return;
    };
    let id = add_limited(&engine, "orphan", json!({}), json!({"memory_mb": 128})).await;
    engine.run_ok(Some(id), "start", json!({})).await;
    let pid = engine.live_pid(id).await;
    let groups = ["memory", "cpu", "pids"].map(|c| v1_group(c, id));
    assert!(groups.iter().all(|g| g.is_dir()));

    engine.stop_manager().await;
    common::processes::sigkill(pid);
    wait_for("the executor gone", DEADLINE, || async {
        (!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    })
    .await;
    assert_eq!(read(&groups[0], "cgroup.procs"), "", "left behind, empty");
    // Meanwhile an operator's stop came (the strategy is not started again, so the
    // group can only go by the sweep), and the group is past the sweep's minimum age.
    sqlx::query("UPDATE strategy_configs SET desired_state = 'stopped' WHERE id = $1")
        .bind(id)
        .execute(&engine.pool)
        .await
        .unwrap();
    wait_for(
        "the group older than the sweep's minimum age",
        DEADLINE,
        || async {
            let age = std::fs::metadata(&groups[0])
                .ok()?
                .modified()
                .ok()?
                .elapsed()
                .ok()?;
            (age >= engine_manager::limits::EMPTY_GROUP_MIN_AGE).then_some(())
        },
    )
    .await;

    engine.start_manager().await;
    wait_for(
        "the empty group removed from every hierarchy",
        DEADLINE,
        || async { groups.iter().all(|g| !g.exists()).then_some(()) },
    )
    .await;
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_updated_live_without_a_restart() {
    let Some(engine) = v1_engine().await else {
        return;
    };
    let mut health = engine.subscribe(&engine.channels.health()).await;
    let id = engine.add_heartbeat("live-limits").await;
    set_limits(&engine, id, json!({"memory_mb": 128, "cpu_percent": 50})).await;
    engine.run_ok(Some(id), "start", json!({})).await;
    let pid = engine.live_pid(id).await;
    let (memory, cpu) = (v1_group("memory", id), v1_group("cpu", id));
    assert_eq!(read(&memory, "memory.limit_in_bytes"), "134217728");
    assert_eq!(read(&cpu, "cpu.cfs_quota_us"), "50000");
    let text = id.to_string();
    health
        .expect("health with the limits", |_, m| {
            m["strategy_id"] == text.as_str()
                && m["memory_limit_mb"] == 128
                && m["cpu_limit_percent"] == 50
        })
        .await;

    engine
        .run_ok(
            Some(id),
            "update",
            json!({"limits": {"memory_mb": 256, "cpu_percent": null, "open_files": 512}}),
        )
        .await;
    assert_eq!(read(&memory, "memory.limit_in_bytes"), "268435456");
    assert_eq!(read(&cpu, "cpu.cfs_quota_us"), "-1");
    let nofile = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    assert!(
        nofile
            .lines()
            .any(|l| l.starts_with("Max open files") && l.contains(" 512 ")),
        "{nofile}"
    );
    assert_eq!(engine.live_pid(id).await, pid, "applied without a restart");
    let stored: Value = sqlx::query_scalar("SELECT limits FROM strategy_configs WHERE id = $1")
        .bind(id)
        .fetch_one(&engine.pool)
        .await
        .unwrap();
    assert_eq!(stored, json!({"memory_mb": 256, "open_files": 512}));
    health
        .expect("health with the new limits", |_, m| {
            m["strategy_id"] == text.as_str()
                && m["memory_limit_mb"] == 256
                && m.get("cpu_limit_percent").is_none()
        })
        .await;
    engine.run_ok(Some(id), "stop", json!({})).await;
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_limits_are_refused_naming_the_key_and_what_is_allowed() {
    let engine = TestEngine::started().await;
    let id = engine.add_heartbeat("bad-limits").await;
    for (limits, words) in [
        (
            json!({"memory_mb": 0}),
            "limits.memory_mb must be a whole number from 16 to 1048576 (megabytes), got 0",
        ),
        (
            json!({"cpu_percent": -20}),
            "limits.cpu_percent must be a whole number from 1 to 25600 (percent of one core), got -20",
        ),
        (
            json!({"pids": "64"}),
            "limits.pids must be a whole number from 8 to 4194304 (processes and threads), got \"64\"",
        ),
        (
            json!({"open_files": 1e12}),
            "limits.open_files must be a whole number from 16 to 1048576",
        ),
        (
            json!({"cpus": 2}),
            "unknown limit 'cpus'; allowed: memory_mb, cpu_percent, pids, open_files",
        ),
        (json!(64), "limits must be a JSON object"),
    ] {
        let error = engine
            .run_failed(Some(id), "update", json!({ "limits": limits }))
            .await;
        assert!(error.contains(words), "{limits}: {error}");
        // The schema says the same to an operator writing the row.
        if limits.is_object() {
            let refused = sqlx::query("UPDATE strategy_configs SET limits = $2 WHERE id = $1")
                .bind(id)
                .bind(&limits)
                .execute(&engine.pool)
                .await
                .unwrap_err();
            let said = engine_store::operator::schema_refusal(&refused).unwrap();
            assert!(said.contains(words), "{limits}: {said}");
        }
    }
    // Nothing was stored, and the manager serves the next command.
    let stored: Value = sqlx::query_scalar("SELECT limits FROM strategy_configs WHERE id = $1")
        .bind(id)
        .fetch_one(&engine.pool)
        .await
        .unwrap();
    assert_eq!(stored, json!({}));
    engine
        .run_ok(Some(id), "update", json!({"limits": {"pids": 64}}))
        .await;
    engine.run_ok(Some(id), "start", json!({})).await;
    engine.run_ok(Some(id), "stop", json!({})).await;
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cgroups_a_strategy_starts_and_says_which_limits_are_unenforced() {
    let engine = engine_with(MechanismChoice::Rlimits).await;
    let id = engine.add_heartbeat("no-cgroups").await;
    set_limits(
        &engine,
        id,
        json!({"cpu_percent": 20, "pids": 64, "open_files": 64, "memory_mb": 512}),
    )
    .await;
    engine.run_ok(Some(id), "start", json!({})).await;
    let pid = engine.live_pid(id).await;
    let error = wait_event(&engine, id, "limits unenforced")
        .await
        .expect("the event says why");
    assert!(
        error.contains("cpu_percent and pids not enforced: no usable cgroup"),
        "{error}"
    );
    // What rlimits can hold, they hold.
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = |name: &str| {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line("Max open files").contains(" 64 "), "{limits}");
    assert!(line("Max data size").contains(" 536870912 "), "{limits}");
    let mechanism: Option<String> =
        sqlx::query_scalar("SELECT limits_mechanism FROM engine_manager_lease WHERE id = 1")
            .fetch_one(&engine.pool)
            .await
            .unwrap();
    assert!(
        mechanism
            .as_deref()
            .is_some_and(|m| m.starts_with("rlimits")),
        "{mechanism:?}"
    );
    engine.run_ok(Some(id), "stop", json!({})).await;
    engine.finish().await;
}

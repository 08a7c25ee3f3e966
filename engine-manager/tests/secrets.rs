//! Secrets by reference and masking (CONTRACT.md §8, issue #14): a config value
//! `{"secret": "NAME"}` is resolved by the manager from `--secrets-file` or its
//! environment (`ENGINE_SECRET_<NAME>`) only for the executor, and the value is then
//! looked for everywhere it must not be — every table of the database, the
//! manager's log and every file in its state directory, the HTTP API, the
//! executor's `/proc/<pid>/cmdline` and `environ`, and every Redis message of the
//! test's namespace. An unknown reference fails the start, a run and an update in
//! words; a secrets file others may read stops the manager; values stored in clear
//! under secret-looking keys are shown `***` by the API and `enginectl`.

#![allow(clippy::too_many_lines)] // a test reads best as one story

mod common;

use common::{manager_env, spawn_manager_binary, wait_for, wait_lease, TestEngine, DEADLINE};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use uuid::Uuid;

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A secrets file beside the state directory (not in it: every file there is
/// searched for the secrets), with `mode`.
fn secrets_file(engine: &TestEngine, mode: u32, text: &str) -> PathBuf {
    let path = engine.state_dir.with_extension("secrets");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// The latest `api_key_sha256` the strategy reported into `strategy_metrics`.
async fn reported_hash(engine: &TestEngine, id: Uuid) -> Option<String> {
    sqlx::query_scalar(
        "SELECT metrics->>'api_key_sha256' FROM strategy_metrics \
         WHERE strategy_id = $1 AND metrics ? 'api_key_sha256' ORDER BY id DESC LIMIT 1",
    )
    .bind(id)
    .fetch_optional(&engine.pool)
    .await
    .unwrap()
    .flatten()
}

async fn wait_hash(engine: &TestEngine, id: Uuid, secret: &str) {
    let want = sha256_hex(secret);
    wait_for(
        "the strategy to report the secret's hash",
        DEADLINE,
        || async {
            (reported_hash(engine, id).await.as_deref() == Some(want.as_str())).then_some(())
        },
    )
    .await;
}

/// Insert a backtest of strategy `id` and wait until it ends: its id, state, error
/// and config.
async fn backtest_to_its_end(
    engine: &TestEngine,
    id: Uuid,
) -> (Uuid, String, Option<String>, Option<Value>) {
    let run = Uuid::new_v4();
    sqlx::query("INSERT INTO strategy_runs (id, strategy_id, mode, parameters) VALUES ($1, $2, 'backtest', '{}')")
        .bind(run)
        .bind(id)
        .execute(&engine.pool)
        .await
        .unwrap();
    let (state, error, config) = wait_for("the backtest to end", DEADLINE, || async {
        let row: (String, Option<String>, Option<Value>) =
            sqlx::query_as("SELECT state, error, config FROM strategy_runs WHERE id = $1")
                .bind(run)
                .fetch_one(&engine.pool)
                .await
                .ok()?;
        (!matches!(row.0.as_str(), "queued" | "starting" | "running")).then_some(row)
    })
    .await;
    (run, state, error, config)
}

async fn stored_config(engine: &TestEngine, id: Uuid) -> Value {
    sqlx::query_scalar("SELECT config FROM strategy_configs WHERE id = $1")
        .bind(id)
        .fetch_one(&engine.pool)
        .await
        .unwrap()
}

/// Every row of every table of the engine's schema as JSON text.
async fn dump_database(pool: &sqlx::PgPool) -> String {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT quote_ident(table_name) FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(tables.len() > 5, "the schema's tables: {tables:?}");
    let mut dump = String::new();
    for table in tables {
        let rows: Vec<String> =
            sqlx::query_scalar(&format!("SELECT row_to_json(t)::text FROM {table} t"))
                .fetch_all(pool)
                .await
                .unwrap();
        for row in rows {
            dump.push_str(&table);
            dump.push(' ');
            dump.push_str(&row);
            dump.push('\n');
        }
    }
    dump
}

/// Every file under `dir`, by path, as text (lossy).
fn files_under(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                found.push((path, String::from_utf8_lossy(&bytes).into_owned()));
            }
        }
    }
    found
}

#[track_caller]
fn assert_absent(secrets: &[&str], what: &str, text: &str) {
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "a secret value is in {what}: {text}"
        );
    }
}

/// `enginectl args…` against `engine`: its stdout, the exit code required to be 0.
async fn enginectl(engine: &TestEngine, args: &[&str]) -> String {
    let output = engine.enginectl(args).output();
    let output = tokio::time::timeout(DEADLINE, output)
        .await
        .expect("enginectl finishes")
        .expect("run enginectl");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "enginectl {args:?} failed: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

async fn get_text(base: &str, path: &str) -> String {
    let r = common::http_client::client()
        .get(format!("{base}{path}"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "GET {path}: {}", r.status());
    r.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_reference_reaches_the_strategy_and_nowhere_else() {
    let engine = TestEngine::new().await;
    engine.seed_one_security().await;
    let from_file = format!("file-secret-{}", Uuid::new_v4().simple());
    let from_env = format!("env-secret-{}", Uuid::new_v4().simple());
    let file = secrets_file(
        &engine,
        0o600,
        &format!("# exchange keys\nexchange_key = {from_file}\n"),
    );
    let mut env = manager_env(&engine.config);
    env.retain(|(name, _)| name != "ENGINE_HTTP_ADDR" && name != "RUST_LOG");
    for (name, value) in [
        ("ENGINE_HTTP_ADDR", "127.0.0.1:0".to_string()),
        ("RUST_LOG", "debug".to_string()),
        ("ENGINE_SECRETS_FILE", file.display().to_string()),
        ("ENGINE_SECRET_EXCHANGE_PASS", from_env.clone()),
    ] {
        env.push((name.to_string(), value));
    }
    // Every message of this test's Redis namespace, from before the manager starts.
    let mut redis = engine.subscribe(&format!("{}*", engine.prefix)).await;
    let log = engine.state_dir.join("manager.log");
    let mut manager = spawn_manager_binary(&env, &log);
    wait_lease(&engine.op(), manager.id().unwrap(), DEADLINE).await;
    let base = engine.http_base().await;

    let id = engine
        .add_strategy(
            "secret-probe",
            "heartbeat",
            json!({"interval_ms": 50, "token": "AAA", "api_key": {"secret": "exchange_key"}}),
            false,
        )
        .await;
    // Started: the strategy got the file's value (it reports its hash only).
    engine.run_ok(Some(id), "start", json!({})).await;
    wait_hash(&engine, id, &from_file).await;
    let pid = engine.live_pid(id).await;
    for part in ["cmdline", "environ"] {
        let bytes = std::fs::read(format!("/proc/{pid}/{part}")).unwrap();
        assert_absent(
            &[&from_file, &from_env],
            &format!("the executor's /proc/{pid}/{part}"),
            &String::from_utf8_lossy(&bytes),
        );
    }
    // Updated live to a reference found in the manager's environment.
    engine
        .run_ok(
            Some(id),
            "update",
            json!({"config": {"api_key": {"secret": "exchange_pass"}}}),
        )
        .await;
    wait_hash(&engine, id, &from_env).await;
    // Stopped, then updated: checked by `--validate` with the secret resolved.
    engine.run_ok(Some(id), "stop", json!({})).await;
    engine
        .run_ok(
            Some(id),
            "update",
            json!({"config": {"interval_ms": 60, "api_key": {"secret": "exchange_key"}}}),
        )
        .await;
    // The dashboard's check of an update resolves it too.
    let r = common::http_client::client()
        .post(format!("{base}/api/strategies/secret-probe/validate"))
        .json(&json!({"config": {"interval_ms": 70}}))
        .send()
        .await
        .unwrap();
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["valid"], true, "{answer}");
    assert_eq!(
        answer["config"]["api_key"],
        json!({"secret": "exchange_key"})
    );
    // A backtest of it: its process gets the secret (heartbeat refuses anything but
    // a string), the run's row keeps the reference.
    let (run, state, error, config) = backtest_to_its_end(&engine, id).await;
    assert_eq!(state, "completed", "{error:?}");
    assert_eq!(
        config.expect("a run keeps its config")["api_key"],
        json!({"secret": "exchange_key"})
    );

    let secrets = [from_file.as_str(), from_env.as_str()];
    // Every table, every row.
    let dump = dump_database(&engine.pool).await;
    assert!(
        dump.contains("exchange_key") && dump.contains("exchange_pass"),
        "the references are stored as they are"
    );
    assert!(
        dump.contains(&sha256_hex(&from_file)),
        "the metrics are in the dump"
    );
    assert_absent(&secrets, "the database", &dump);
    // The API.
    for path in [
        "/api/strategies".to_string(),
        "/api/strategies/secret-probe".to_string(),
        "/api/strategies/secret-probe/logs".to_string(),
        "/api/history".to_string(),
        "/api/audit".to_string(),
        "/api/runs".to_string(),
        format!("/api/runs/{run}"),
        format!("/api/runs/{run}/items"),
        "/metrics".to_string(),
    ] {
        let body = get_text(&base, &path).await;
        assert_absent(&secrets, &format!("GET {path}"), &body);
    }
    // enginectl.
    for args in [
        &["list", "--json"][..],
        &["history", "secret-probe", "--json"],
        &["audit", "--json"],
        &["runs", "--json"],
        &["run-show", &run.to_string(), "--json"],
    ] {
        let out = enginectl(&engine, args).await;
        assert_absent(&secrets, &format!("enginectl {args:?}"), &out);
    }
    // Redis: every message on the namespace's channels.
    let seen = redis.drain();
    assert!(
        seen.iter()
            .any(|(channel, _)| channel.ends_with(&format!("strategy:commands:{id}"))),
        "the update was announced on Redis"
    );
    for (channel, message) in &seen {
        assert_absent(&secrets, &format!("Redis {channel}"), &message.to_string());
    }
    let state_hash: std::collections::HashMap<String, String> = redis::AsyncCommands::hgetall(
        &mut engine.redis_conn().await,
        engine.channels.state_key(id),
    )
    .await
    .unwrap();
    assert_absent(&secrets, "the state hash", &format!("{state_hash:?}"));
    // The manager's log (at debug) and every file of its state directory: executor
    // and run logs, outboxes.
    let files = files_under(&engine.state_dir);
    assert!(
        files.iter().any(|(path, _)| path == &log),
        "the manager's log is among {:?}",
        files.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    assert!(files.len() > 2, "executor and run logs too");
    for (path, text) in &files {
        assert_absent(&secrets, &path.display().to_string(), text);
    }
    let _ = manager.kill().await;
    let _ = std::fs::remove_file(&file);
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_reference_fails_start_run_and_update_in_words_and_spawns_nothing() {
    let engine = TestEngine::started().await;
    engine.seed_one_security().await;
    let id = engine
        .add_strategy(
            "no-such-secret",
            "heartbeat",
            json!({"interval_ms": 50, "token": "AAA", "exchange": {"api_key": {"secret": "not_defined_anywhere"}}}),
            false,
        )
        .await;
    let words = "unknown secret reference 'not_defined_anywhere' at config.exchange.api_key: \
                 not found in the manager's environment variable ENGINE_SECRET_NOT_DEFINED_ANYWHERE \
                 (no --secrets-file is set)";
    let failed = engine.run_failed(Some(id), "start", json!({})).await;
    assert!(failed.contains(words), "{failed}");
    let state = engine.state(id).await;
    assert_eq!(state.status, "error");
    assert_eq!(state.pid, None);
    assert!(
        state
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains(words)),
        "{:?}",
        state.last_error
    );
    assert!(
        !common::executors_by_strategy(&engine.control_socket()).contains_key(&id),
        "no executor was spawned"
    );
    // A run of it ends `error` saying so.
    let (_, state, error, _) = backtest_to_its_end(&engine, id).await;
    assert_eq!(state, "error");
    let error = error.unwrap_or_default();
    assert!(error.contains(words), "{error}");
    // An update that adds one to a running strategy fails; its config stays.
    let live = engine.add_heartbeat("plain").await;
    engine.run_ok(Some(live), "start", json!({})).await;
    let failed = engine
        .run_failed(
            Some(live),
            "update",
            json!({"config": {"password": {"secret": "nope"}}}),
        )
        .await;
    assert!(
        failed.contains("the new config was not stored")
            && failed.contains("unknown secret reference 'nope' at config.password"),
        "{failed}"
    );
    assert_eq!(
        stored_config(&engine, live).await,
        json!({"interval_ms": 50})
    );
    assert_eq!(engine.state(live).await.status, "running");
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secrets_file_others_may_read_stops_the_manager_with_exit_2() {
    let engine = TestEngine::new().await;
    let file = secrets_file(&engine, 0o644, "exchange_key = x\n");
    let mut env = manager_env(&engine.config);
    env.push(("ENGINE_SECRETS_FILE".into(), file.display().to_string()));
    let log = engine.state_dir.join("refused.log");
    let mut manager = spawn_manager_binary(&env, &log);
    let status = tokio::time::timeout(DEADLINE, manager.wait())
        .await
        .expect("the manager exits at once")
        .unwrap();
    let said = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(2), "exit code 2: {said}");
    let shown = file.display();
    assert!(
        said.contains(&format!(
            "the secrets file {shown} has mode 0644, which lets its group or others read it; make it private with `chmod 600 {shown}`"
        )),
        "{said}"
    );
    let _ = std::fs::remove_file(&file);
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_secrets_are_masked_by_the_api_enginectl_and_the_update_announcement() {
    let engine = TestEngine::started().await;
    let clear = format!("clear-key-{}", Uuid::new_v4().simple());
    let clear_too = format!("clear-key-{}", Uuid::new_v4().simple());
    let id = engine
        .add_strategy(
            "in-clear",
            "heartbeat",
            json!({"interval_ms": 50, "api_key": clear}),
            false,
        )
        .await;
    engine.run_ok(Some(id), "start", json!({})).await;
    // The strategy gets the value as stored.
    wait_hash(&engine, id, &clear).await;
    let mut announced = engine.subscribe(&engine.channels.commands(id)).await;
    engine
        .run_ok(
            Some(id),
            "update",
            json!({"config": {"api_key": clear_too}}),
        )
        .await;
    wait_hash(&engine, id, &clear_too).await;
    let secrets = [clear.as_str(), clear_too.as_str()];
    // The announcement on Redis is masked, and says the manager sent it (so no
    // executor applies it: the link carries the config).
    let message = announced
        .expect("the update announced", |_, m| {
            m["command"] == "update_config"
        })
        .await;
    assert_eq!(message["config"]["api_key"], "***", "{message}");
    assert_eq!(message["source"], "manager", "{message}");
    // The API.
    let base = engine.http_base().await;
    let (_, detail) = common::http_client::get(&base, "/api/strategies/in-clear").await;
    assert_eq!(detail["config"]["api_key"], "***", "{detail}");
    assert_eq!(detail["config"]["interval_ms"], 50, "{detail}");
    for path in [
        "/api/strategies",
        "/api/strategies/in-clear",
        "/api/history",
        "/api/audit",
    ] {
        let body = get_text(&base, path).await;
        assert_absent(&secrets, &format!("GET {path}"), &body);
        if path != "/api/history" {
            assert!(body.contains("***"), "GET {path} shows the mask: {body}");
        }
    }
    // enginectl: the update's parameters in the history, the audit's before/after.
    for args in [
        &["history", "in-clear"][..],
        &["history", "in-clear", "--json"],
        &["audit", "--json"],
        &["audit"],
    ] {
        let out = enginectl(&engine, args).await;
        assert_absent(&secrets, &format!("enginectl {args:?}"), &out);
        if args != ["audit"] {
            assert!(
                out.contains("***"),
                "enginectl {args:?} shows the mask: {out}"
            );
        }
    }
    // The database keeps what the operator stored (masking is for showing).
    assert_eq!(
        stored_config(&engine, id).await["api_key"],
        clear_too.as_str()
    );
    engine.finish().await;
}

//! Least privilege (CONTRACT.md §8, issue #14), tried the way an attacker would:
//! what an executor's environment holds (read from `/proc/<pid>/environ` of a live
//! strategy executor and a live run process, under a manager binary started with a
//! database URL, an HTTP token and a made-up secret); the size caps on what people
//! put in (`config`, a command's and a run's `parameters`, HTTP bodies); HTTP tokens
//! (every route without, with a wrong, a read and an operate token) and the refusal
//! to listen beyond loopback without an operate token.

#![allow(clippy::too_many_lines)] // a test reads best as one story

mod common;

use common::{
    environ, manager_env, spawn_manager_binary, wait_for, wait_lease, TestEngine, DEADLINE,
};
use engine_manager::config::HttpToken;
use engine_store::limits::MAX_INPUT_BYTES;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use uuid::Uuid;

// ------------------------------------------------------------------ environment

/// What an executor may find in its environment (an independent copy of the
/// allow-list, so that a name added there must be added here on purpose).
fn allowed(name: &str) -> bool {
    const NAMES: &[&str] = &[
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "TMPDIR",
        "HOSTNAME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TZDIR",
        "RUST_LOG",
        "RUST_BACKTRACE",
        "RUST_LIB_BACKTRACE",
        "NO_COLOR",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
    ];
    NAMES.contains(&name) || name.starts_with("LC_")
}

const DB_PASSWORD: &str = "db-password-42";
const HTTP_SECRET: &str = "http-token-that-must-not-leak";
const MADE_UP_SECRET: &str = "made-up-secret-value";

/// Start the manager binary on `engine` with `executor` and, besides its settings,
/// the secrets an executor must never see (the database URL is one of its settings,
/// here with a password) and a locale and time zone it should see.
async fn manager_with_secrets(engine: &TestEngine, executor: &Path) -> tokio::process::Child {
    let mut config = engine.config.clone();
    config.executor_path = Some(executor.to_path_buf());
    let mut env = manager_env(&config);
    let db_url = env
        .iter_mut()
        .find(|(name, _)| name == "DATABASE_URL")
        .expect("manager_env sets DATABASE_URL");
    // The test database's URL, with a password PostgreSQL's trust ignores.
    let mut url = url::Url::parse(&db_url.1).expect("the test database URL parses");
    url.set_password(Some(DB_PASSWORD))
        .expect("a URL with a host takes a password");
    db_url.1 = url.to_string();
    for (name, value) in [
        ("ENGINE_HTTP_TOKEN", HTTP_SECRET),
        ("SECRET_SOMETHING", MADE_UP_SECRET),
        ("LANG", "C.UTF-8"),
        ("LC_TIME", "C.UTF-8"),
        ("TZ", "UTC"),
        ("RUST_BACKTRACE", "1"),
    ] {
        env.push((name.to_string(), value.to_string()));
    }
    let child = spawn_manager_binary(&env, &engine.state_dir.join("manager.log"));
    let pid = child.id().expect("a running manager has a pid");
    wait_lease(&engine.op(), pid, DEADLINE).await;
    child
}

/// Check the environment of `pid` (a `what`): only allowed names, the locale and
/// time zone passed, none of the secrets' values anywhere, and the names `given`
/// on purpose present.
fn check_environment(pid: u32, what: &str, given: &[&str]) {
    let env = environ(pid);
    let names: Vec<&str> = env.iter().map(|(n, _)| n.as_str()).collect();
    let outside: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !allowed(n) && !given.contains(n))
        .collect();
    assert!(
        outside.is_empty(),
        "the {what} holds {outside:?} outside the allow-list; all: {names:?}"
    );
    for (name, value) in &env {
        assert!(
            !value.starts_with("postgres"),
            "the {what}'s {name} is a database URL"
        );
        for secret in [DB_PASSWORD, HTTP_SECRET, MADE_UP_SECRET] {
            assert!(
                !value.contains(secret),
                "the {what}'s {name} holds a secret"
            );
        }
    }
    for name in ["PATH", "LANG", "LC_TIME", "TZ", "RUST_BACKTRACE"]
        .iter()
        .chain(given)
    {
        assert!(names.contains(name), "the {what} lacks {name}: {names:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strategy_executor_sees_the_allow_list_and_no_secret_of_the_manager() {
    let engine = TestEngine::new().await;
    let mut manager = manager_with_secrets(&engine, &common::executor_path()).await;
    let id = engine.add_heartbeat("env-probe").await;
    engine.run_ok(Some(id), "start", json!({})).await;
    let pid = engine.live_pid(id).await;
    check_environment(
        pid,
        "strategy executor",
        &["REDIS_URL", "ENGINE_REDIS_PREFIX"],
    );
    let _ = manager.kill().await;
    engine.finish().await;
}

/// The stand-in run process of `tests/runs.rs`, cut down: it takes its input and
/// then stays alive (until killed) so that its environment can be read.
const SLOW_RUN: &str = r#"#!/usr/bin/python3
import json, sys, time
inp = json.load(sys.stdin)
out = open(inp['outbox_path'], 'a')
out.write(json.dumps({'type': 'started', 'total_items': 1}) + '\n'); out.flush()
time.sleep(600)
"#;

fn slow_run_executor(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("slow_run.py");
    std::fs::write(&path, SLOW_RUN).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Queue a screener run of `strategy` (its parameters all defaults); its id.
async fn insert_screener_run(engine: &TestEngine, strategy: Uuid) -> Uuid {
    let run = Uuid::new_v4();
    sqlx::query("INSERT INTO strategy_runs (id, strategy_id, mode, parameters) VALUES ($1, $2, 'screener', '{}')")
        .bind(run)
        .bind(strategy)
        .execute(&engine.pool)
        .await
        .unwrap();
    run
}

/// The pid of `run`'s process, once the run is `running`.
async fn running_run_pid(engine: &TestEngine, run: Uuid) -> u32 {
    wait_for("the run to be running with a pid", DEADLINE, || async {
        let row: (String, Option<i32>) =
            sqlx::query_as("SELECT state, pid FROM strategy_runs WHERE id = $1")
                .bind(run)
                .fetch_one(&engine.pool)
                .await
                .ok()?;
        (row.0 == "running").then_some(row.1).flatten()
    })
    .await as u32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_process_sees_the_allow_list_and_no_secret_of_the_manager() {
    let engine = TestEngine::new().await;
    engine.seed_one_security().await;
    let mut manager = manager_with_secrets(&engine, &slow_run_executor(&engine.state_dir)).await;
    let strategy = engine
        .add_strategy("env-run", "sma_crossover", json!({}), false)
        .await;
    let run = insert_screener_run(&engine, strategy).await;
    let pid = running_run_pid(&engine, run).await;
    check_environment(pid, "run process", &[]);
    let _ = manager.kill().await;
    for (_, procs) in engine_manager::process::scan_runs(&engine.config.runs_dir()) {
        for (pid, _) in procs {
            common::sigkill(pid);
        }
    }
    engine.finish().await;
}

// ------------------------------------------------------------------ size caps

/// `{key: "aaa…"}` whose JSON text (as PostgreSQL writes it) is `bytes` long.
fn object_of_size(key: &str, bytes: usize) -> Value {
    let overhead = format!("{{\"{key}\": \"\"}}").len();
    json!({ key: "a".repeat(bytes - overhead) })
}

/// The words of a refused insert, as the store gives them to every tool.
fn refusal(err: &sqlx::Error) -> String {
    engine_store::operator::schema_refusal(err)
        .unwrap_or_else(|| panic!("not a refusal in words: {err}"))
        .into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_config_and_parameters_are_refused_naming_the_cap() {
    let engine = TestEngine::started().await;
    let pool = &engine.pool;
    let limit = MAX_INPUT_BYTES;
    assert_eq!(limit, 65536);

    // strategy_configs.config: at the cap stored, one byte over refused in words.
    let at_cap = object_of_size("token", limit);
    assert_eq!(
        engine_store::limits::json_text_len(&at_cap),
        limit,
        "the test's own sizes"
    );
    let id = engine.add_strategy("big", "heartbeat", at_cap, false).await;
    let insert = |config: Value| async move {
        sqlx::query("INSERT INTO strategy_configs (name, strategy_type, config) VALUES ('big2', 'heartbeat', $1)")
            .bind(config)
            .execute(pool)
            .await
            .unwrap_err()
    };
    let err = insert(object_of_size("token", limit + 1)).await;
    assert_eq!(refusal(&err), "config is 65537 bytes; the limit is 65536");
    let err = sqlx::query("UPDATE strategy_configs SET config = $2 WHERE id = $1")
        .bind(id)
        .bind(object_of_size("token", 200_000))
        .execute(pool)
        .await
        .unwrap_err();
    assert_eq!(refusal(&err), "config is 200000 bytes; the limit is 65536");
    // enginectl's insert says the same through the store.
    let err = engine_store::operator::insert_strategy(
        pool,
        "big3",
        "heartbeat",
        &object_of_size("token", 70_000),
        false,
        Default::default(),
    )
    .await
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("config is 70000 bytes; the limit is 65536"),
        "{err:#}"
    );

    // strategy_commands.parameters.
    let err = engine
        .op()
        .try_command(
            Some(id),
            "update",
            &json!({"config": object_of_size("x", limit)}),
        )
        .await
        .unwrap_err();
    let words = refusal(&err);
    assert!(
        words.starts_with("parameters is ") && words.ends_with("bytes; the limit is 65536"),
        "{words}"
    );

    // strategy_runs.parameters (the run refusal words too).
    let err = sqlx::query(
        "INSERT INTO strategy_runs (strategy_id, mode, parameters) VALUES ($1, 'backtest', $2)",
    )
    .bind(id)
    .bind(object_of_size("note", 100_000))
    .execute(pool)
    .await
    .unwrap_err();
    assert_eq!(
        engine_store::runs_api::run_refusal(&err).as_deref(),
        Some("parameters is 100000 bytes; the limit is 65536")
    );

    // An update whose parameters fit but whose merged config would not: a failed
    // command naming the cap, the stored config untouched.
    let small = engine
        .add_strategy("small", "heartbeat", object_of_size("token", 40_000), false)
        .await;
    let failed = engine
        .run_failed(
            Some(small),
            "update",
            json!({"config": object_of_size("start_delay_ms", 40_000)}),
        )
        .await;
    assert!(
        failed.contains("bytes; the limit is 65536"),
        "the failed command names the cap: {failed}"
    );
    let stored: Value = sqlx::query_scalar("SELECT config FROM strategy_configs WHERE id = $1")
        .bind(small)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(stored, object_of_size("token", 40_000));
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_http_bodies_are_refused_with_413_naming_the_cap() {
    let engine = TestEngine::started().await;
    engine.add_heartbeat("hb-big").await;
    let base = engine.http_base().await;
    let client = reqwest::Client::new();
    let url = format!("{base}/api/strategies/hb-big/update");
    let cap = engine_manager::http::MAX_BODY_BYTES;
    assert_eq!(cap, 131_072);

    // Declared too large: refused before it is read. (The client sends the headers
    // only, then waits: a body the server never reads would be in its socket when it
    // closes, and the kernel's reset could reach the client before the 413 does.)
    let body = serde_json::to_vec(&json!({"config": object_of_size("token", 200_000)})).unwrap();
    let declared = body.len();
    let nothing = futures_util::stream::pending::<Result<Vec<u8>, std::io::Error>>();
    let r = client
        .post(&url)
        .header(reqwest::header::CONTENT_LENGTH, declared)
        .body(reqwest::Body::wrap_stream(nothing))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(
        answer["error"],
        format!("the request body is {declared} bytes; the limit is 131072"),
        "{answer}"
    );

    // Streamed without a length: refused once the cap is passed. (17 chunks of 8 KiB
    // pass it; then the client waits, so that the server has read all it was sent.)
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..17).map(|_| Ok(vec![b' '; 8192])).collect();
    let r = client
        .post(&url)
        .body(reqwest::Body::wrap_stream(futures_util::StreamExt::chain(
            futures_util::stream::iter(chunks),
            futures_util::stream::pending(),
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(
        answer["error"], "the request body is over the limit of 131072 bytes",
        "{answer}"
    );

    // Under the HTTP cap but over the config cap: the database's words, 400.
    let r = client
        .post(&url)
        .json(&json!({"config": object_of_size("token", 100_000)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let answer: Value = r.json().await.unwrap();
    let error = answer["error"].as_str().unwrap();
    assert!(error.contains("bytes; the limit is 65536"), "{error}");

    // A body within every cap still works.
    let r = client
        .post(&url)
        .json(&json!({"config": {"interval_ms": 100}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED, "{:?}", r.text().await);
    engine.finish().await;
}

// ------------------------------------------------------------------ HTTP tokens

const OPERATE: &str = "operate-token-1";
const READ: &str = "read-token-1";
/// Tokens of the tokens file: (name, scope, token).
const FILE_TOKENS: &[(&str, &str, &str)] = &[
    ("carol", "read", "carol-token"),
    ("dave", "operate", "dave-token"),
];

fn sha256_hex(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Send `method path` with `token`; the status.
async fn status_of(base: &str, method: &str, path: &str, token: Option<&str>) -> StatusCode {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(15))
        .build()
        .unwrap();
    let url = format!("{base}{path}");
    let mut req = match method {
        "GET" => client.get(url),
        _ => client.post(url).json(&json!({})),
    };
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send().await.unwrap().status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_without_with_a_wrong_a_read_and_an_operate_token() {
    let mut engine = TestEngine::new().await;
    let file = engine.state_dir.join("tokens");
    let mut text = String::from("# name scope sha256\n\n");
    for (name, scope, token) in FILE_TOKENS {
        text.push_str(&format!("{name} {scope} {}\n", sha256_hex(token)));
    }
    std::fs::write(&file, text).unwrap();
    engine.config.http_token = Some(HttpToken(OPERATE.into()));
    engine.config.http_read_token = Some(HttpToken(READ.into()));
    engine.config.http_tokens_file = Some(file);
    engine.start_manager().await;
    let strategy = engine.add_heartbeat("hb-tokens").await;
    let base = engine.http_base().await;
    let (run, command) = (Uuid::new_v4(), Uuid::new_v4());

    let reads = [
        "/api/strategies".to_string(),
        "/api/strategies/hb-tokens".to_string(),
        "/api/strategies/hb-tokens/logs".to_string(),
        format!("/api/commands/{command}"),
        "/api/history".to_string(),
        "/api/events".to_string(),
        "/api/runs".to_string(),
        format!("/api/runs/{run}"),
        format!("/api/runs/{run}/items"),
        format!("/api/runs/{run}/events"),
        "/api/queue".to_string(),
        "/metrics".to_string(),
    ];
    let commands = [
        "/api/strategies/nope/pause".to_string(),
        "/api/strategies/hb-tokens/validate".to_string(),
        "/api/global/no_such_command".to_string(),
        "/api/runs".to_string(),
        format!("/api/runs/{run}/cancel"),
    ];
    let denied = [StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN];
    for path in &reads {
        for token in [None, Some("wrong-token")] {
            let status = status_of(&base, "GET", path, token).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "GET {path} with {token:?}"
            );
        }
        for token in [READ, OPERATE, "carol-token", "dave-token"] {
            let status = status_of(&base, "GET", path, Some(token)).await;
            assert!(
                !denied.contains(&status),
                "GET {path} with {token}: {status}"
            );
        }
    }
    for path in &commands {
        for token in [None, Some("wrong-token")] {
            let status = status_of(&base, "POST", path, token).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "POST {path} with {token:?}"
            );
        }
        for token in [READ, "carol-token"] {
            let status = status_of(&base, "POST", path, Some(token)).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "POST {path} with {token}");
        }
        for token in [OPERATE, "dave-token"] {
            let status = status_of(&base, "POST", path, Some(token)).await;
            assert!(
                !denied.contains(&status),
                "POST {path} with {token}: {status}"
            );
        }
    }
    // The dashboard's files and the liveness probe stay open.
    for path in ["/", "/dashboard.js", "/dashboard.css", "/health"] {
        let status = status_of(&base, "GET", path, None).await;
        assert!(!denied.contains(&status), "GET {path}: {status}");
    }
    // A read token's refusal says what would be right.
    let r = reqwest::Client::new()
        .post(format!("{base}/api/strategies/hb-tokens/start"))
        .bearer_auth("carol-token")
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["error"], "token 'carol' may only read; commands need an operate token",
        "{body}"
    );
    // An operate token commands for real.
    let r = reqwest::Client::new()
        .post(format!("{base}/api/strategies/hb-tokens/start"))
        .bearer_auth("dave-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    engine.wait_status(strategy, "running").await;
    engine.finish().await;
}

/// Start the manager binary with `env`, require that it exits 2 at once; what it said.
async fn refused_start(env: &[(String, String)], log: &Path) -> String {
    let mut manager = spawn_manager_binary(env, log);
    let status = tokio::time::timeout(DEADLINE, manager.wait())
        .await
        .expect("the manager exits at once")
        .unwrap();
    let said = std::fs::read_to_string(log).unwrap();
    assert_eq!(status.code(), Some(2), "exit code 2: {said}");
    said
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_address_without_an_operate_token_refuses_to_start() {
    let engine = TestEngine::new().await;
    let mut env = manager_env(&engine.config);
    env.retain(|(name, _)| name != "ENGINE_HTTP_ADDR");
    env.push(("ENGINE_HTTP_ADDR".into(), "0.0.0.0:0".into()));
    env.push(("ENGINE_HTTP_READ_TOKEN".into(), "only-a-read-token".into()));
    let said = refused_start(&env, &engine.state_dir.join("refused.log")).await;
    assert!(
        said.contains("--http-addr 0.0.0.0:0 is reachable beyond this host")
            && said.contains("set --http-token"),
        "{said}"
    );
    // A bad tokens file is refused the same way, naming the line.
    let file = engine.state_dir.join("bad-tokens");
    std::fs::write(&file, "alice admin 00\n").unwrap();
    let mut env = manager_env(&engine.config);
    env.push(("ENGINE_HTTP_TOKENS_FILE".into(), file.display().to_string()));
    let said = refused_start(&env, &engine.state_dir.join("refused-file.log")).await;
    assert!(said.contains("bad-tokens line 1: scope 'admin'"), "{said}");
    engine.finish().await;
}

// ------------------------------------------------------------------ TLS

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unverified_tls_to_a_remote_server_is_refused_naming_the_fix() {
    let engine = TestEngine::new().await;
    // An explicit sslmode that does not verify, to a host that is not this one: the
    // refusal comes before any connection is tried.
    let remote = "postgres://postgres:pw@db.example.invalid:5432/engine?sslmode=require";
    let mut env = manager_env(&engine.config);
    env.retain(|(name, _)| name != "DATABASE_URL");
    env.push(("DATABASE_URL".into(), remote.into()));
    let said = refused_start(&env, &engine.state_dir.join("refused-pg.log")).await;
    assert!(
        said.contains("sslmode=require to db.example.invalid does not verify")
            && said.contains("sslmode=verify-full")
            && said.contains("--tls-insecure")
            && !said.contains(":pw@"),
        "{said}"
    );
    // `#insecure` on a Redis URL needs the flag too.
    let mut env = manager_env(&engine.config);
    env.retain(|(name, _)| name != "REDIS_URL");
    env.push(("REDIS_URL".into(), "rediss://127.0.0.1:1/0#insecure".into()));
    let said = refused_start(&env, &engine.state_dir.join("refused-redis.log")).await;
    assert!(
        said.contains("ends in #insecure") && said.contains("--tls-insecure"),
        "{said}"
    );
    // enginectl applies the same rule, and `--tls-insecure` there is said out loud.
    let enginectl = common::workspace_bin("enginectl");
    let out = tokio::process::Command::new(&enginectl)
        .args(["--database-url", remote, "list"])
        .env_remove("ENGINE_TLS_INSECURE")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("sslmode=require to db.example.invalid does not verify"),
        "{stderr}"
    );
    let out = tokio::process::Command::new(&enginectl)
        .args(["--tls-insecure", "--database-url", &engine.db_url, "doctor"])
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        stderr.contains("warning: --tls-insecure is set"),
        "{stderr}"
    );
    assert!(
        stdout.contains("--tls-insecure: certificates may go unverified"),
        "{stdout}"
    );
    engine.finish().await;
}

// ------------------------------------------------------------------ executor user

const NOBODY: u32 = 65534;

/// A stand-in run process that says on stderr what it may open: its bars file, its
/// outbox, and the manager's private file `manager-secret` in the state directory.
const PROBING_RUN: &str = r#"#!/usr/bin/python3
import json, os, sys, time
inp = json.load(sys.stdin)
secret = os.path.join(os.path.dirname(os.path.dirname(inp['outbox_path'])), 'manager-secret')
def probe(what, path):
    try:
        open(path, 'rb').read(1)
        print(what + ': readable', file=sys.stderr, flush=True)
    except OSError as e:
        print(what + ': ' + type(e).__name__, file=sys.stderr, flush=True)
probe('bars', inp['bars_path'])
probe('secret', secret)
out = open(inp['outbox_path'], 'a')
out.write(json.dumps({'type': 'started', 'total_items': 1}) + '\n'); out.flush()
print('outbox: written', file=sys.stderr, flush=True)
time.sleep(600)
"#;

/// Require that `pid` runs as nobody, its primary group and no other group.
fn assert_runs_as_nobody(pid: u32, what: &str) {
    let ids = engine_protocol::procfs::ids(pid).expect("the process is alive");
    assert_eq!((ids.uid, ids.gid), (NOBODY, NOBODY), "the {what}'s ids");
    assert!(
        ids.groups.iter().all(|g| *g == NOBODY),
        "the {what} keeps supplementary groups {:?}",
        ids.groups
    );
}

/// A file only root may read, beside the state directory's own files.
fn manager_secret(state_dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = state_dir.join("manager-secret");
    std::fs::write(&path, "only the manager's user may read this").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executors_run_as_the_executor_user_and_are_adopted_across_a_restart() {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    assert!(
        rustix::process::geteuid().is_root(),
        "this test starts processes as nobody: run it as root"
    );
    let mut engine = TestEngine::new().await;
    let secret = manager_secret(&engine.state_dir);
    engine.config.executor_user = Some("nobody".to_string());
    engine.start_manager().await;
    let id = engine.add_heartbeat("as-nobody").await;
    engine.run_ok(Some(id), "start", json!({})).await;
    let pid = engine.live_pid(id).await;
    assert_runs_as_nobody(pid, "strategy executor");
    let env = environ(pid);
    assert!(env.contains(&("USER".into(), "nobody".into())), "{env:?}");
    assert!(
        !env.iter().any(|(n, v)| n == "HOME" && v == "/root"),
        "{env:?}"
    );
    // What it may reach and what it may not.
    let socket = std::fs::metadata(engine.control_socket()).unwrap();
    assert_eq!((socket.gid(), socket.mode() & 0o777), (NOBODY, 0o660));
    let logs = std::fs::metadata(engine.config.logs_dir()).unwrap();
    assert_eq!(
        logs.mode() & 0o777,
        0o700,
        "executor logs stay the manager's"
    );
    let file = std::fs::metadata(&secret).unwrap();
    assert_eq!((file.uid(), file.mode() & 0o777), (0, 0o600));
    // Another process of the same user (another strategy's executor) cannot read its
    // environment (its Redis password): the executor made itself non-dumpable.
    let environ_path = format!("/proc/{pid}/environ");
    assert_eq!(std::fs::metadata(&environ_path).unwrap().uid(), 0);
    let peek = std::process::Command::new("cat")
        .arg(&environ_path)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("run cat as nobody");
    assert!(
        !peek.status.success() && peek.stdout.is_empty(),
        "another process of user nobody read the executor's environment: {peek:?}"
    );
    // The control link works: a pause and a resume are acknowledged by the executor.
    engine.run_ok(Some(id), "pause", json!({})).await;
    engine.run_ok(Some(id), "resume", json!({})).await;

    // A new manager adopts it, still as nobody, and its link comes back.
    engine.stop_manager().await;
    engine.start_manager().await;
    engine.run_ok(Some(id), "pause", json!({})).await;
    let state = engine.wait_status(id, "paused").await;
    assert_eq!(state.pid, Some(pid as i32), "adopted, not started again");
    assert_runs_as_nobody(pid, "adopted strategy executor");
    engine.run_ok(Some(id), "stop", json!({})).await;
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_process_as_the_executor_user_reads_its_bars_but_not_the_managers_files() {
    let mut engine = TestEngine::new().await;
    engine.seed_one_security().await;
    manager_secret(&engine.state_dir);
    let executor = write_probe(&engine.state_dir);
    engine.config.executor_path = Some(executor);
    engine.config.executor_user = Some("nobody".to_string());
    engine.start_manager().await;
    let strategy = engine
        .add_strategy("probe-run", "sma_crossover", json!({}), false)
        .await;
    let run = insert_screener_run(&engine, strategy).await;
    let log = engine_protocol::runs::run_log_path(&engine.config.runs_dir(), run);
    let probed = common::try_wait_for(DEADLINE, || async {
        let text = std::fs::read_to_string(&log).ok()?;
        text.contains("outbox: written").then_some(text)
    })
    .await;
    let Some(said) = probed else {
        let row: (String, Option<String>) =
            sqlx::query_as("SELECT state, error FROM strategy_runs WHERE id = $1")
                .bind(run)
                .fetch_one(&engine.pool)
                .await
                .unwrap();
        panic!(
            "the run process did not probe its files: run {row:?}, log {:?}",
            std::fs::read_to_string(&log)
        );
    };
    assert!(said.contains("bars: readable"), "{said}");
    assert!(said.contains("secret: PermissionError"), "{said}");
    let pid = running_run_pid(&engine, run).await;
    assert_runs_as_nobody(pid, "run process");
    engine.stop_manager().await;
    common::sigkill(pid);
    engine.finish().await;
}

fn write_probe(dir: &Path) -> PathBuf {
    common::write_executable(dir, "probing_run.py", PROBING_RUN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_user_without_root_or_for_an_unknown_user_refuses_to_start() {
    use std::os::unix::fs::PermissionsExt;
    let engine = TestEngine::new().await;
    let mut env = manager_env(&engine.config);
    env.push(("ENGINE_EXECUTOR_USER".into(), "no-such-user-here".into()));
    let said = refused_start(&env, &engine.state_dir.join("refused-user.log")).await;
    assert!(
        said.contains("--executor-user no-such-user-here: no such user"),
        "{said}"
    );
    // The manager itself as nobody may not start processes as another user.
    let state = engine.state_dir.join("unprivileged");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut env = manager_env(&engine.config);
    env.retain(|(name, _)| name != "ENGINE_STATE_DIR");
    env.push(("ENGINE_STATE_DIR".into(), state.display().to_string()));
    env.push(("ENGINE_EXECUTOR_USER".into(), "nobody".into()));
    let log = engine.state_dir.join("refused-unprivileged.log");
    let out = std::fs::File::create(&log).unwrap();
    let status = tokio::process::Command::new(common::workspace_bin("engine-manager"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().cloned())
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .status();
    let status = tokio::time::timeout(DEADLINE, status)
        .await
        .expect("the manager exits at once")
        .unwrap();
    let said = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(2), "{said}");
    assert!(
        said.contains("needs the manager to run as root") && said.contains("uid 65534"),
        "{said}"
    );
    engine.finish().await;
}

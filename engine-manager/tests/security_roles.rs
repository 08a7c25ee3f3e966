//! Database roles and the audit (CONTRACT.md §8, issue #14), tried the way a person
//! with a login would: `engine-manager --setup-roles` creates `engine_viewer`,
//! `engine_operator` and `engine_manager`; each test then makes login roles granted
//! them (cluster-wide, named per test, dropped at the end) and connects as those.
//! Each role is tried against every column of every table, expecting the exact
//! refusal; an operator starts and stops a strategy through commands while the
//! manager (itself a login granted `engine_manager`) carries them out, and cannot
//! fake a status; the manager refuses to start without its rights, saying which;
//! `issued_by` cannot be forged; `engine_audit` survives command retention and the
//! strategy's deletion, and neither its owner nor a superuser may change it.

#![allow(clippy::too_many_lines)] // a test reads best as one story

mod common;

use common::{admin_url, wait_for, workspace_bin, Operator, TestEngine, DEADLINE};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::collections::BTreeSet;
use uuid::Uuid;

// ------------------------------------------------------------------ harness

/// A login role of this test, granted one of the engine's group roles.
struct Login {
    name: String,
    url: String,
}

/// Create login role `t{what}_{random}` granted `group` on `engine`'s server; its
/// URL points at the engine's database.
async fn login(engine: &TestEngine, what: &str, group: &str) -> Login {
    let name = format!("t{what}_{}", &Uuid::new_v4().simple().to_string()[..12]);
    sqlx::query(&format!("CREATE ROLE {name} LOGIN IN ROLE {group}"))
        .execute(&engine.pool)
        .await
        .unwrap_or_else(|e| panic!("create login role {name}: {e}"));
    let mut url = url::Url::parse(&engine.db_url).expect("the test database URL parses");
    url.set_username(&name)
        .expect("a URL with a host takes a user");
    Login {
        name,
        url: url.to_string(),
    }
}

/// Drop the test's login roles (after their pools are closed).
async fn drop_logins(logins: &[&Login]) {
    let admin = engine_store::manager::connect(&admin_url(), 1)
        .await
        .expect("admin connection");
    for login in logins {
        let _ = sqlx::query(&format!("DROP ROLE IF EXISTS {}", login.name))
            .execute(&admin)
            .await;
    }
    admin.close().await;
}

async fn connect(login: &Login) -> PgPool {
    Operator::connect(&login.url).await.pool
}

async fn setup_roles(engine: &TestEngine) {
    engine_store::roles::setup_roles(&engine.db_url)
        .await
        .expect("--setup-roles");
}

/// Run `enginectl` connected as `login` with `args`; its standard output, once it
/// succeeded.
async fn enginectl(login: &Login, args: &[&str]) -> Vec<u8> {
    let out = tokio::process::Command::new(workspace_bin("enginectl"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(["--database-url", &login.url])
        .args(args)
        .output()
        .await
        .expect("run enginectl");
    assert!(
        out.status.success(),
        "enginectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A fresh engine with its roles set up, and an operator's login.
async fn with_operator() -> (TestEngine, Login) {
    let engine = TestEngine::new().await;
    setup_roles(&engine).await;
    let operator = login(&engine, "op", "engine_operator").await;
    (engine, operator)
}

/// The SQLSTATE and message of a refused statement (`None` if it succeeded).
async fn refusal(pool: &PgPool, sql: &str) -> Option<(String, String)> {
    match sqlx::query(sql).execute(pool).await {
        Ok(_) => None,
        Err(sqlx::Error::Database(db)) => Some((
            db.code().map(|c| c.to_string()).unwrap_or_default(),
            db.message().to_string(),
        )),
        Err(other) => panic!("{sql}: not a database error: {other}"),
    }
}

/// Every (table, column) of the engine's schema.
async fn columns(pool: &PgPool) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT c.table_name::text, c.column_name::text FROM information_schema.columns c \
         JOIN information_schema.tables t USING (table_schema, table_name) \
         WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE' \
         ORDER BY c.table_name, c.ordinal_position",
    )
    .fetch_all(pool)
    .await
    .expect("read information_schema")
}

/// What an operator may write, written out here from CONTRACT.md §8 (an
/// independent copy of `engine_store::roles::OPERATOR_WRITES`, so that a grant
/// added there must be added here on purpose): (table, column) for INSERT and
/// UPDATE, tables for DELETE.
#[derive(Default)]
struct OperatorRights {
    insert: BTreeSet<(String, String)>,
    update: BTreeSet<(String, String)>,
    delete: BTreeSet<String>,
}

fn pairs(table: &str, columns: &[&str]) -> Vec<(String, String)> {
    columns
        .iter()
        .map(|c| (table.to_string(), (*c).to_string()))
        .collect()
}

fn operator_rights(all: &[(String, String)]) -> OperatorRights {
    let configs = [
        "name",
        "strategy_type",
        "config",
        "auto_start",
        "restart_policy",
        "execution_interval_s",
        "max_execution_s",
        "limits",
    ];
    let schedules = [
        "mode",
        "parameters",
        "priority",
        "timeout_s",
        "cron",
        "timezone",
        "interval_s",
        "enabled",
        "overlap",
        "catch_up",
    ];
    let mut insert: BTreeSet<(String, String)> = pairs("strategy_configs", &["id"])
        .into_iter()
        .chain(pairs("strategy_configs", &configs))
        .chain(pairs(
            "strategy_commands",
            &["id", "strategy_id", "command", "parameters", "on_behalf_of"],
        ))
        .chain(pairs(
            "strategy_runs",
            &[
                "id",
                "strategy_id",
                "mode",
                "parameters",
                "priority",
                "timeout_s",
                "on_behalf_of",
            ],
        ))
        .chain(pairs(
            "strategy_schedules",
            &["id", "strategy_id", "on_behalf_of"],
        ))
        .chain(pairs("strategy_schedules", &schedules))
        .collect();
    let mut update: BTreeSet<(String, String)> = pairs("strategy_configs", &configs)
        .into_iter()
        .chain(pairs("strategy_configs", &["broker_state", "updated_at"]))
        .chain(pairs("strategy_schedules", &schedules))
        .chain(pairs("strategy_schedules", &["updated_at"]))
        .collect();
    // Market data: every column.
    for (table, column) in all {
        if table == "securities" || table == "market_bars" {
            insert.insert((table.clone(), column.clone()));
            update.insert((table.clone(), column.clone()));
        }
    }
    OperatorRights {
        insert,
        update,
        delete: [
            "strategy_configs",
            "strategy_schedules",
            "securities",
            "market_bars",
        ]
        .map(String::from)
        .into(),
    }
}

/// The refusal of a write without the privilege: SQLSTATE 42501, naming the table.
fn assert_denied(got: Option<(String, String)>, table: &str, what: &str) {
    let (code, message) = got.unwrap_or_else(|| panic!("{what} was allowed"));
    assert_eq!(code, "42501", "{what}: {message}");
    assert_eq!(
        message,
        format!("permission denied for table {table}"),
        "{what}"
    );
}

/// Try `role` (connected as `pool`) against every column of every table: INSERT
/// and UPDATE of each column alone, DELETE and TRUNCATE of each table, each in a
/// statement that touches no row (`WHERE false`), so privileges are all that is
/// checked. What `rights` lists must pass, everything else be refused exactly.
async fn try_every_column(pool: &PgPool, role: &str, rights: &OperatorRights) {
    let all = columns(pool).await;
    assert!(
        all.iter().any(|(t, _)| t == "engine_audit"),
        "the schema has engine_audit"
    );
    let tables: BTreeSet<&str> = all.iter().map(|(t, _)| t.as_str()).collect();
    for table in &tables {
        let sql = format!("SELECT count(*) FROM {table}");
        assert_eq!(refusal(pool, &sql).await, None, "{role} reads {table}");
    }
    for (table, column) in &all {
        let key = (table.clone(), column.clone());
        let insert =
            format!("INSERT INTO {table} ({column}) SELECT {column} FROM {table} WHERE false");
        let got = refusal(pool, &insert).await;
        if rights.insert.contains(&key) {
            assert_eq!(got, None, "{role} may insert {table}.{column}");
        } else {
            assert_denied(got, table, &format!("{role} inserting {table}.{column}"));
        }
        let update = format!("UPDATE {table} SET {column} = {column} WHERE false");
        let got = refusal(pool, &update).await;
        if rights.update.contains(&key) {
            assert_eq!(got, None, "{role} may update {table}.{column}");
        } else {
            assert_denied(got, table, &format!("{role} updating {table}.{column}"));
        }
    }
    for table in &tables {
        let got = refusal(pool, &format!("DELETE FROM {table} WHERE false")).await;
        if rights.delete.contains(*table) {
            assert_eq!(got, None, "{role} may delete from {table}");
        } else {
            assert_denied(got, table, &format!("{role} deleting from {table}"));
        }
        let got = refusal(pool, &format!("TRUNCATE {table}")).await;
        assert_denied(got, table, &format!("{role} truncating {table}"));
    }
}

// ------------------------------------------------------------------ the tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_writes_exactly_what_the_contract_grants() {
    let engine = TestEngine::new().await;
    // Twice at once (roles are cluster-wide, tests run in parallel), then again:
    // idempotent, and safe against a concurrent run.
    let (a, b) = tokio::join!(
        engine_store::roles::setup_roles(&engine.db_url),
        engine_store::roles::setup_roles(&engine.db_url)
    );
    a.expect("--setup-roles");
    b.expect("--setup-roles, concurrently");
    setup_roles(&engine).await;
    let owners: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT pg_get_userbyid(relowner)::text FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' AND relkind IN ('r', 'S')",
    )
    .fetch_all(&engine.pool)
    .await
    .unwrap();
    assert_eq!(owners, ["engine_manager"], "engine_manager owns the schema");

    let viewer = login(&engine, "view", "engine_viewer").await;
    let operator = login(&engine, "op", "engine_operator").await;
    let manager = login(&engine, "mgr", "engine_manager").await;
    let all = columns(&engine.pool).await;

    let pool = connect(&viewer).await;
    try_every_column(&pool, "engine_viewer", &OperatorRights::default()).await;
    pool.close().await;

    let pool = connect(&operator).await;
    try_every_column(&pool, "engine_operator", &operator_rights(&all)).await;
    // Rows it may write, for real: a strategy, a command, a run, market data.
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO strategy_configs (name, strategy_type, config) \
         VALUES ('op-made', 'heartbeat', '{}') RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .expect("an operator adds a strategy");
    for (sql, what) in [
        (
            format!(
                "INSERT INTO strategy_commands (strategy_id, command) VALUES ('{id}', 'start')"
            ),
            "inserts a command",
        ),
        (
            "SELECT strategy_command('op-made', 'stop')".to_string(),
            "uses strategy_command()",
        ),
        (
            format!("INSERT INTO strategy_runs (strategy_id, mode) VALUES ('{id}', 'screener')"),
            "inserts a run",
        ),
        (
            "INSERT INTO securities (symbol) VALUES ('AAPL')".to_string(),
            "loads securities",
        ),
        (
            format!(
                "UPDATE strategy_configs SET config = '{{\"interval_ms\": 100}}' WHERE id = '{id}'"
            ),
            "edits a config",
        ),
    ] {
        assert_eq!(refusal(&pool, &sql).await, None, "an operator {what}");
    }
    // What it may not: a status, a desired state, a pid; a made-up broker state
    // (a reset is allowed); a command's outcome; a run's state.
    for sql in [
        "UPDATE strategy_configs SET status = 'running'",
        "UPDATE strategy_configs SET desired_state = 'running'",
        "UPDATE strategy_configs SET pid = 1",
    ] {
        assert_denied(refusal(&pool, sql).await, "strategy_configs", sql);
    }
    let sql = "UPDATE strategy_configs SET broker_state = '{\"broker\": {}}'";
    let (code, message) = refusal(&pool, sql).await.expect("a made-up broker state");
    assert_eq!(code, "42501", "{message}");
    assert!(
        message.contains("only the manager writes broker_state"),
        "{message}"
    );
    assert_eq!(
        refusal(&pool, "UPDATE strategy_configs SET broker_state = NULL").await,
        None,
        "an operator resets a broker"
    );
    assert_denied(
        refusal(&pool, "UPDATE strategy_commands SET status = 'executed'").await,
        "strategy_commands",
        "an operator writing a command's outcome",
    );
    assert_denied(
        refusal(&pool, "UPDATE strategy_runs SET state = 'completed'").await,
        "strategy_runs",
        "an operator writing a run's state",
    );
    assert_denied(
        refusal(
            &pool,
            "INSERT INTO engine_audit (who, object, action, what) VALUES ('x', 'x', 'x', 'x')",
        )
        .await,
        "engine_audit",
        "an operator writing the audit",
    );
    pool.close().await;

    // The manager's role: everything it needs (its start-up check finds nothing).
    let pool = connect(&manager).await;
    let missing = engine_store::roles::missing_privileges(&pool)
        .await
        .unwrap();
    assert!(missing.is_empty(), "engine_manager lacks {missing:?}");
    pool.close().await;

    drop_logins(&[&viewer, &operator, &manager]).await;
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_roles_is_one_command_of_the_manager_binary() {
    let engine = TestEngine::new().await;
    let out = tokio::process::Command::new(workspace_bin("engine-manager"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("NO_COLOR", "1")
        .args(["--setup-roles", "--database-url", &engine.db_url])
        .output()
        .await
        .expect("run engine-manager --setup-roles");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "--setup-roles failed: {text}");
    assert!(
        text.contains("roles engine_viewer, engine_operator and engine_manager set up"),
        "{text}"
    );
    let roles: Vec<(String, bool)> = sqlx::query_as(
        "SELECT rolname::text, rolcanlogin FROM pg_roles \
         WHERE rolname IN ('engine_viewer', 'engine_operator', 'engine_manager') ORDER BY rolname",
    )
    .fetch_all(&engine.pool)
    .await
    .unwrap();
    assert_eq!(
        roles,
        [
            ("engine_manager".to_string(), true),
            ("engine_operator".to_string(), false),
            ("engine_viewer".to_string(), false),
        ]
    );
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manager_refuses_to_start_without_its_rights_and_says_which() {
    let (engine, operator) = with_operator().await;
    let mut config = engine.config.clone();
    config.database_url = operator.url.clone();
    let result = engine_manager::run(config, tokio_util::sync::CancellationToken::new()).await;
    let err = result.expect_err("a manager connected as an operator must not start");
    assert_eq!(err.exit_code(), 2, "{err}");
    let text = engine_manager::error_chain(&err);
    assert_eq!(
        text,
        format!(
            "the database role '{}' lacks what the manager needs: UPDATE on strategy_configs, \
             INSERT on strategy_commands, UPDATE on strategy_commands, DELETE on strategy_commands, \
             INSERT on strategy_metrics, DELETE on strategy_metrics, INSERT on strategy_events, \
             DELETE on strategy_events, INSERT on strategy_recent_executions, \
             DELETE on strategy_recent_executions, INSERT on engine_manager_lease, UPDATE on engine_manager_lease, \
             INSERT on strategy_runs, UPDATE on strategy_runs, INSERT on strategy_run_items, \
             UPDATE on strategy_schedules, USAGE on sequence public.strategy_metrics_id_seq, USAGE on sequence public.strategy_events_id_seq, \
             CREATE on schema public (to apply the migrations); run `engine-manager --setup-roles` \
             as a superuser once, then start the manager as engine_manager (or a login role granted it)",
            operator.name
        )
    );
    drop_logins(&[&operator]).await;
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issued_by_is_the_login_role_whatever_the_insert_says() {
    let (engine, operator) = with_operator().await;
    let id = engine.add_heartbeat("forge-target").await;
    let pool = connect(&operator).await;
    // An operator may not even name the column.
    let sql = format!(
        "INSERT INTO strategy_commands (strategy_id, command, issued_by) VALUES ('{id}', 'start', 'mallory')"
    );
    assert_denied(
        refusal(&pool, &sql).await,
        "strategy_commands",
        "naming issued_by",
    );
    // Without it, the database stamps the login role — after SET ROLE too.
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SET ROLE engine_operator")
        .execute(&mut *conn)
        .await
        .unwrap();
    let (issued_by, on_behalf_of): (String, Option<String>) = sqlx::query_as(
        "INSERT INTO strategy_commands (strategy_id, command, on_behalf_of) \
         VALUES ($1, 'start', 'alice') RETURNING issued_by, on_behalf_of",
    )
    .bind(id)
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!(
        (issued_by.as_str(), on_behalf_of.as_deref()),
        (operator.name.as_str(), Some("alice"))
    );
    // The tool's session setting gives on_behalf_of when the row does not.
    sqlx::query("RESET ROLE").execute(&mut *conn).await.unwrap();
    sqlx::query("SET engine.on_behalf_of = 'bob'")
        .execute(&mut *conn)
        .await
        .unwrap();
    let (issued_by, on_behalf_of): (String, Option<String>) = sqlx::query_as(
        "INSERT INTO strategy_runs (strategy_id, mode) VALUES ($1, 'screener') \
         RETURNING issued_by, on_behalf_of",
    )
    .bind(id)
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!(
        (issued_by.as_str(), on_behalf_of.as_deref()),
        (operator.name.as_str(), Some("bob"))
    );
    drop(conn);
    pool.close().await;
    // Not even a superuser, who may write the column, makes it say another role;
    // and nobody changes it afterwards.
    let (command, issued_by): (Uuid, String) = sqlx::query_as(
        "INSERT INTO strategy_commands (strategy_id, command, issued_by) \
         VALUES ($1, 'stop', 'mallory') RETURNING id, issued_by",
    )
    .bind(id)
    .fetch_one(&engine.pool)
    .await
    .unwrap();
    assert_eq!(issued_by, "postgres");
    sqlx::query("UPDATE strategy_commands SET issued_by = 'mallory' WHERE id = $1")
        .bind(command)
        .execute(&engine.pool)
        .await
        .unwrap();
    let issued_by: String =
        sqlx::query_scalar("SELECT issued_by FROM strategy_commands WHERE id = $1")
            .bind(command)
            .fetch_one(&engine.pool)
            .await
            .unwrap();
    assert_eq!(issued_by, "postgres");
    drop_logins(&[&operator]).await;
    engine.finish().await;
}

/// The tables and columns that landed beside the roles: an operator's schedule is
/// stamped and audited like a command, and the interval and limits columns of a
/// strategy are audited operator columns; the manager's bookkeeping is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_intervals_and_limits_are_stamped_and_audited() {
    let (engine, operator) = with_operator().await;
    let id = engine.add_heartbeat("audited-schedules").await;
    let pool = connect(&operator).await;
    let (schedule, issued_by, on_behalf_of): (Uuid, String, Option<String>) = sqlx::query_as(
        "INSERT INTO strategy_schedules (strategy_id, mode, interval_s, on_behalf_of) \
         VALUES ($1, 'screener', 60, 'carol') RETURNING id, issued_by, on_behalf_of",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .expect("an operator adds a schedule");
    assert_eq!(
        (issued_by.as_str(), on_behalf_of.as_deref()),
        (operator.name.as_str(), Some("carol"))
    );
    sqlx::query("UPDATE strategy_schedules SET enabled = false, updated_at = now() WHERE id = $1")
        .bind(schedule)
        .execute(&pool)
        .await
        .expect("an operator disables a schedule");
    sqlx::query(
        "UPDATE strategy_configs SET execution_interval_s = 30, limits = '{\"memory_mb\": 128}', \
         updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .execute(&pool)
    .await
    .expect("an operator sets an interval and limits");
    // The manager's own columns stay out of an operator's reach, and out of the audit.
    assert_denied(
        refusal(&pool, "UPDATE strategy_schedules SET runs_created = 9").await,
        "strategy_schedules",
        "writing a schedule's statistics",
    );
    sqlx::query(
        "UPDATE strategy_schedules SET runs_created = 9, next_run_at = now() WHERE id = $1",
    )
    .bind(schedule)
    .execute(&engine.pool)
    .await
    .unwrap();
    sqlx::query("DELETE FROM strategy_schedules WHERE id = $1")
        .bind(schedule)
        .execute(&pool)
        .await
        .expect("an operator removes a schedule");
    let audit: Vec<(String, String, String, Option<String>, String)> = sqlx::query_as(
        "SELECT object, action, who, on_behalf_of, what FROM engine_audit \
         WHERE strategy_id = $1 AND object IN ('schedule', 'strategy') AND action <> 'insert' \
            OR object = 'schedule' AND object_id = $2 ORDER BY id",
    )
    .bind(id)
    .bind(schedule)
    .fetch_all(&engine.pool)
    .await
    .unwrap();
    let me = operator.name.clone();
    let row = |object: &str, action: &str, behalf: Option<&str>, what: &str| {
        (
            object.to_string(),
            action.to_string(),
            me.clone(),
            behalf.map(String::from),
            what.to_string(),
        )
    };
    assert_eq!(
        audit,
        vec![
            row("schedule", "insert", Some("carol"), "added (screener)"),
            row("schedule", "update", Some("carol"), "edited enabled"),
            row(
                "strategy",
                "update",
                None,
                "edited execution_interval_s, limits"
            ),
            row("schedule", "delete", Some("carol"), "deleted"),
        ]
    );
    pool.close().await;
    drop_logins(&[&operator]).await;
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_starts_and_stops_a_strategy_but_cannot_fake_its_status() {
    let (mut engine, operator) = with_operator().await;
    let manager = login(&engine, "mgr", "engine_manager").await;
    engine.config.database_url = manager.url.clone();
    engine.start_manager().await;

    let op = Operator::connect(&operator.url).await;
    let id = op
        .add_strategy("op-driven", "heartbeat", json!({"interval_ms": 50}))
        .await;
    let start = op.run_ok(Some(id), "start", json!({})).await;
    let state = op.wait_status(id, "running").await;
    assert!(state.pid.is_some(), "the manager started an executor");
    assert_denied(
        refusal(&op.pool, "UPDATE strategy_configs SET status = 'stopped'").await,
        "strategy_configs",
        "an operator faking a status",
    );
    assert_eq!(op.state(id).await.status, "running");
    let stop = op.run_ok(Some(id), "stop", json!({})).await;
    op.wait_status(id, "stopped").await;

    // The command log says who: the operator's login role asked, the manager's
    // carried it out (the audit's outcome rows).
    let rows: Vec<(String, String, Option<String>, String)> = sqlx::query_as(
        "SELECT who, what, role, object FROM engine_audit WHERE object_id = ANY($1) ORDER BY id",
    )
    .bind(vec![start, stop])
    .fetch_all(&engine.pool)
    .await
    .unwrap();
    let seen: Vec<(String, String)> = rows
        .iter()
        .map(|(w, what, _, _)| (w.clone(), what.clone()))
        .collect();
    assert_eq!(
        seen,
        [
            (operator.name.clone(), "start".to_string()),
            (manager.name.clone(), "start executed".to_string()),
            (operator.name.clone(), "stop".to_string()),
            (manager.name.clone(), "stop executed".to_string()),
        ]
    );
    assert_eq!(rows[0].2.as_deref(), Some("engine_operator,engine_viewer"));
    // The API shows it too: a command sent over HTTP acts for `http` (no token is
    // configured), and GET /api/audit lists who asked.
    let base = engine.http_base().await;
    let client = common::http_client::client();
    let r = client
        .post(format!("{base}/api/strategies/op-driven/start"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::ACCEPTED);
    let body: Value = r.json().await.unwrap();
    let url = body["url"].as_str().expect("a command url").to_string();
    let command = wait_for("the HTTP command to finish", DEADLINE, || {
        let (base, url) = (base.clone(), url.clone());
        async move {
            let (_, body) = common::http_client::get(&base, &url).await;
            (body["finished"] == json!(true)).then_some(body)
        }
    })
    .await;
    assert_eq!(command["issued_by"], json!(manager.name));
    assert_eq!(command["on_behalf_of"], json!("http"));
    let (status, audit) = common::http_client::get(&base, "/api/audit?strategy=op-driven").await;
    assert_eq!(status, reqwest::StatusCode::OK, "{audit}");
    let entries = audit["entries"].as_array().expect("entries");
    let first = entries.last().expect("an entry");
    assert_eq!(first["who"], json!(operator.name), "{first}");
    assert_eq!(first["what"], json!("added (heartbeat)"), "{first}");
    assert!(
        entries
            .iter()
            .any(|e| e["on_behalf_of"] == json!("http") && e["what"] == json!("start")),
        "{audit}"
    );
    let (status, bad) = common::http_client::get(&base, "/api/audit?since=yesterday").await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{bad}");
    op.run_ok(Some(id), "stop", json!({})).await;

    op.pool.close().await;
    engine.finish().await;
    drop_logins(&[&operator, &manager]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_survives_command_retention_and_strategy_deletion() {
    let (engine, operator) = with_operator().await;
    let op = Operator::connect(&operator.url).await;
    let id = op
        .add_strategy("short-lived", "heartbeat", json!({"interval_ms": 50}))
        .await;
    let command = op.command(Some(id), "start", json!({})).await;
    // The manager's side, done here by hand: the outcome, then the retention.
    sqlx::query("UPDATE strategy_commands SET status = 'failed', error = 'test', executed_at = now() - interval '40 days' WHERE id = $1")
        .bind(command)
        .execute(&engine.pool)
        .await
        .unwrap();
    let pruned = engine_store::metrics::prune_commands(&engine.pool, chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(pruned, 1);
    sqlx::query("DELETE FROM strategy_configs WHERE id = $1")
        .bind(id)
        .execute(&op.pool)
        .await
        .expect("an operator deletes a stopped strategy");
    op.pool.close().await;

    // enginectl audit, as an operator would run it, for a strategy gone.
    let out = enginectl(
        &operator,
        &[
            "--as",
            "carol",
            "audit",
            "--strategy",
            "short-lived",
            "--json",
        ],
    )
    .await;
    let rows: Vec<Value> = serde_json::from_slice(&out).expect("a JSON array");
    let lines: Vec<(String, String, String)> = rows
        .iter()
        .rev()
        .map(|r| {
            (
                r["who"].as_str().unwrap_or_default().to_string(),
                r["object"].as_str().unwrap_or_default().to_string(),
                r["what"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        lines,
        [
            (
                operator.name.clone(),
                "strategy".into(),
                "added (heartbeat)".into()
            ),
            (operator.name.clone(), "command".into(), "start".into()),
            ("postgres".into(), "command".into(), "start failed".into()),
            (operator.name.clone(), "strategy".into(), "deleted".into()),
        ]
    );
    assert_eq!(rows[0]["before"]["strategy_type"], json!("heartbeat"));
    // Append-only: not for the owner, not for a superuser.
    for sql in [
        "UPDATE engine_audit SET who = 'nobody'",
        "DELETE FROM engine_audit",
        "TRUNCATE engine_audit",
    ] {
        let (code, message) = refusal(&engine.pool, sql).await.expect("refused");
        assert_eq!(code, "42501", "{sql}: {message}");
        assert!(
            message.starts_with("engine_audit is append-only"),
            "{message}"
        );
    }
    // enginectl --as: the session says whom it acts for (any name: spaces, quotes).
    enginectl(
        &operator,
        &[
            "--as",
            "Carol O'Neil, desk 2",
            "add",
            "carol-made",
            "--type",
            "heartbeat",
            "--no-validate",
        ],
    )
    .await;
    let (who, behalf): (String, Option<String>) = sqlx::query_as(
        "SELECT who, on_behalf_of FROM engine_audit WHERE strategy_name = 'carol-made'",
    )
    .fetch_one(&engine.pool)
    .await
    .unwrap();
    assert_eq!(
        (who, behalf.as_deref()),
        (operator.name.clone(), Some("Carol O'Neil, desk 2"))
    );
    engine.finish().await;
    drop_logins(&[&operator]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_applied_by_a_login_granted_engine_manager_belong_to_engine_manager() {
    let engine = TestEngine::new().await;
    setup_roles(&engine).await;
    let manager = login(&engine, "mgr", "engine_manager").await;
    // An empty database whose schema engine_manager may create in (what
    // --setup-roles grants), as after an upgrade that brings new migrations.
    let name = format!("roles_fresh_{}", Uuid::new_v4().simple());
    let admin = engine_store::manager::connect_options(&admin_url()).expect("admin URL");
    engine_store::manager::create_database(&admin.clone().database(&name), &name)
        .await
        .expect("create the fresh database");
    let fresh_admin = Operator::connect(&format!(
        "{}/{name}",
        admin_url().rsplit_once('/').expect("a URL with a path").0
    ))
    .await
    .pool;
    sqlx::query("GRANT CREATE ON SCHEMA public TO engine_manager")
        .execute(&fresh_admin)
        .await
        .unwrap();
    let mut url = url::Url::parse(&manager.url).unwrap();
    url.set_path(&name);
    let pool = Operator::connect(url.as_str()).await.pool;
    engine_store::roles::migrate_as_manager(&pool)
        .await
        .expect("the manager's login applies the migrations");
    let current: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        current, manager.name,
        "the connection went back to its own role"
    );
    pool.close().await;
    let owners: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT pg_get_userbyid(relowner)::text FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' AND relkind IN ('r', 'S')",
    )
    .fetch_all(&fresh_admin)
    .await
    .unwrap();
    assert_eq!(owners, ["engine_manager"], "not the login's: {owners:?}");
    fresh_admin.close().await;
    engine_store::manager::drop_database(&admin, &name)
        .await
        .expect("drop the fresh database");
    drop_logins(&[&manager]).await;
    engine.finish().await;
}

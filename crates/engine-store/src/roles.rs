//! Database roles (CONTRACT.md §8): who may ask and who may observe and record.
//!
//! - `engine_viewer` (NOLOGIN): reads every table of the engine's schema.
//! - `engine_operator` (NOLOGIN, a member of `engine_viewer`): what
//!   [`OPERATOR_WRITES`] lists, column by column, and nothing else.
//! - `engine_manager` (LOGIN, the daemon's own role): owns every table, sequence and
//!   function of the schema and runs the migrations.
//!
//! A person gets a login role of their own granted a group role (`CREATE ROLE alice
//! LOGIN PASSWORD '…' IN ROLE engine_operator`), so `issued_by` and `engine_audit`
//! name the person. [`setup_roles`] (`engine-manager --setup-roles`) does it all,
//! idempotently; [`missing_privileges`] is the manager's start-up check of its own.

use crate::manager::{self, connect_options, DbError};
use engine_protocol::redact::redact_url;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

pub const VIEWER: &str = "engine_viewer";
pub const OPERATOR: &str = "engine_operator";
pub const MANAGER: &str = "engine_manager";

/// Which columns of a table a privilege covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Columns {
    None,
    All,
    Only(&'static [&'static str]),
}

/// What `engine_operator` may write in one table. Every table reads for viewers and
/// operators; a table absent from [`OPERATOR_WRITES`] is read-only to them.
#[derive(Debug, Clone, Copy)]
pub struct OperatorWrites {
    pub table: &'static str,
    pub insert: Columns,
    pub update: Columns,
    pub delete: bool,
    /// Serial columns whose sequence an INSERT draws from (`USAGE` on it).
    pub serials: &'static [&'static str],
}

/// The one list of what operators may write (CONTRACT.md §8). Never in it:
/// `status`, `desired_state`, `pid`, `node`, `lease_epoch`, a run's state, progress
/// and result, statistics, a command's outcome, `issued_by` (stamped by a trigger).
/// A table added later is one entry here (then `engine-manager --setup-roles`).
pub const OPERATOR_WRITES: &[OperatorWrites] = &[
    OperatorWrites {
        table: "strategy_configs",
        insert: Columns::Only(&[
            "id",
            "name",
            "strategy_type",
            "config",
            "auto_start",
            "restart_policy",
            "execution_interval_s",
            "max_execution_s",
            "limits",
        ]),
        // broker_state: a reset (NULL) only; a trigger refuses any other value.
        update: Columns::Only(&[
            "name",
            "strategy_type",
            "config",
            "auto_start",
            "restart_policy",
            "broker_state",
            "execution_interval_s",
            "max_execution_s",
            "limits",
            "updated_at",
        ]),
        delete: true,
        serials: &[],
    },
    OperatorWrites {
        table: "strategy_commands",
        insert: Columns::Only(&["id", "strategy_id", "command", "parameters", "on_behalf_of"]),
        update: Columns::None,
        delete: false,
        serials: &["seq"],
    },
    OperatorWrites {
        table: "strategy_runs",
        insert: Columns::Only(&[
            "id",
            "strategy_id",
            "mode",
            "parameters",
            "priority",
            "timeout_s",
            "on_behalf_of",
        ]),
        update: Columns::None,
        delete: false,
        serials: &["seq"],
    },
    OperatorWrites {
        table: "strategy_schedules",
        insert: Columns::Only(&[
            "id",
            "strategy_id",
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
            "on_behalf_of",
        ]),
        update: Columns::Only(&[
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
            "updated_at",
        ]),
        delete: true,
        serials: &[],
    },
    OperatorWrites {
        table: "securities",
        insert: Columns::All,
        update: Columns::All,
        delete: true,
        serials: &[],
    },
    OperatorWrites {
        table: "market_bars",
        insert: Columns::All,
        update: Columns::All,
        delete: true,
        serials: &[],
    },
];

/// What the manager itself does to each table (its start-up check). Sequences of
/// the tables it inserts into are checked too.
pub const MANAGER_NEEDS: &[(&str, &[&str])] = &[
    ("strategy_configs", &["SELECT", "UPDATE"]),
    (
        "strategy_commands",
        &["SELECT", "INSERT", "UPDATE", "DELETE"],
    ),
    ("strategy_metrics", &["SELECT", "INSERT", "DELETE"]),
    ("strategy_events", &["SELECT", "INSERT", "DELETE"]),
    (
        "strategy_recent_executions",
        &["SELECT", "INSERT", "DELETE"],
    ),
    ("engine_manager_lease", &["SELECT", "INSERT", "UPDATE"]),
    ("strategy_runs", &["SELECT", "INSERT", "UPDATE"]),
    ("strategy_run_items", &["SELECT", "INSERT"]),
    ("strategy_schedules", &["SELECT", "UPDATE"]),
    ("securities", &["SELECT"]),
    ("market_bars", &["SELECT"]),
    ("engine_audit", &["SELECT"]),
];

#[derive(Debug, thiserror::Error)]
pub enum RolesError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("cannot create the roles on {url} (it takes a superuser, or a role with CREATEROLE that owns the schema: connect as postgres)")]
    CreateRoles {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot give the schema to engine_manager and grant the roles their rights on {url} (it takes a superuser: connect as postgres)")]
    Grant {
        url: String,
        #[source]
        source: sqlx::Error,
    },
}

/// Roles are cluster-wide and advisory locks are per database: role creation takes
/// this lock in the `postgres` database, the grants the same key in the engine's.
const ROLES_LOCK: i64 = 0x656e_6769_6e65_7231; // "enginer1"

/// Apply the migrations as `engine_manager` when the connected role may act as it
/// and it may create in the schema (the roles are set up here): what they make is
/// then owned by `engine_manager` whichever login (a superuser, or the daemon's own
/// login granted `engine_manager`) applies them. Otherwise as the connected role.
pub async fn migrate_as_manager(pool: &PgPool) -> Result<(), DbError> {
    let switch: bool = sqlx::query_scalar(
        "SELECT CASE WHEN to_regrole('engine_manager') IS NULL THEN false \
                ELSE current_user <> 'engine_manager' \
                     AND pg_has_role(current_user, 'engine_manager', 'MEMBER') \
                     AND has_schema_privilege('engine_manager', 'public', 'CREATE') END",
    )
    .fetch_one(pool)
    .await
    .map_err(|e| DbError::Migrate(e.into()))?;
    if !switch {
        return manager::migrate(pool).await;
    }
    // A connection of its own that starts as engine_manager (`SET ROLE` at start-up).
    let options = (*pool.connect_options())
        .clone()
        .options([("role", MANAGER)]);
    let as_manager = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .map_err(|e| DbError::Migrate(e.into()))?;
    let applied = manager::migrate(&as_manager).await;
    as_manager.close().await;
    applied
}

/// Apply the migrations, create the three roles (idempotent, safe to run
/// concurrently), give the schema's objects to `engine_manager` and grant each role
/// exactly its rights. Run as a superuser.
pub async fn setup_roles(url: &str) -> Result<(), RolesError> {
    let pool = manager::connect(url, 2).await?;
    migrate_as_manager(&pool).await?;
    let options = connect_options(url)?;
    create_roles(&options, url).await?;
    grant(&pool, url).await?;
    pool.close().await;
    Ok(())
}

async fn create_roles(options: &PgConnectOptions, url: &str) -> Result<(), RolesError> {
    let fail = |source| RolesError::CreateRoles {
        url: redact_url(url),
        source,
    };
    // The maintenance database if it is there (one lock for the whole cluster),
    // else the engine's own.
    let mut conn = match PgConnection::connect_with(&options.clone().database("postgres")).await {
        Ok(conn) => conn,
        Err(_) => PgConnection::connect_with(options).await.map_err(fail)?,
    };
    let mut tx = conn.begin().await.map_err(fail)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(ROLES_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(fail)?;
    for (role, login) in [(VIEWER, false), (OPERATOR, false), (MANAGER, true)] {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
                .bind(role)
                .fetch_one(&mut *tx)
                .await
                .map_err(fail)?;
        if !exists {
            let login = if login { "LOGIN" } else { "NOLOGIN" };
            sqlx::query(&format!("CREATE ROLE {role} {login}"))
                .execute(&mut *tx)
                .await
                .map_err(fail)?;
        }
    }
    let member: bool = sqlx::query_scalar("SELECT pg_has_role($1, $2, 'MEMBER')")
        .bind(OPERATOR)
        .bind(VIEWER)
        .fetch_one(&mut *tx)
        .await
        .map_err(fail)?;
    if !member {
        sqlx::query(&format!("GRANT {VIEWER} TO {OPERATOR}"))
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
    }
    tx.commit().await.map_err(fail)
}

/// The statements that give the schema to `engine_manager` and grant the roles
/// their rights, in order. Re-running them gives the same rights (each table's
/// grants are revoked first), so an entry removed from [`OPERATOR_WRITES`] is
/// revoked too.
pub fn grant_statements() -> Vec<String> {
    let mut sql = vec![
        // Owner of everything in the schema (what the migrations made as another
        // role included), so that it runs the next migrations.
        r"DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT c.oid::regclass AS name, c.relkind FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm')
               AND pg_get_userbyid(c.relowner) <> 'engine_manager'
               AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')
    LOOP
        EXECUTE format('ALTER %s %s OWNER TO engine_manager',
                       CASE r.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END,
                       r.name);
    END LOOP;
    -- Sequences not owned by a column (those moved with their table).
    FOR r IN SELECT c.oid::regclass AS name FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'public' AND c.relkind = 'S'
               AND pg_get_userbyid(c.relowner) <> 'engine_manager'
               AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')
    LOOP
        EXECUTE format('ALTER SEQUENCE %s OWNER TO engine_manager', r.name);
    END LOOP;
    FOR r IN SELECT p.oid::regprocedure AS name FROM pg_proc p
             JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = 'public' AND pg_get_userbyid(p.proowner) <> 'engine_manager'
               AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')
    LOOP
        EXECUTE format('ALTER ROUTINE %s OWNER TO engine_manager', r.name);
    END LOOP;
END
$$"
        .to_string(),
        // Nobody but the owner creates objects in the schema (PostgreSQL 14 lets
        // everyone by default), so a definer function cannot be led astray.
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC".to_string(),
        format!("GRANT USAGE, CREATE ON SCHEMA public TO {MANAGER}"),
        format!("GRANT USAGE ON SCHEMA public TO {VIEWER}"),
        format!("DO $$ BEGIN EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO {MANAGER}, {VIEWER}', current_database()); END $$"),
        // Reads: every table there is now; tables later migrations make too.
        format!("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {VIEWER}, {OPERATOR}"),
        format!("REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {VIEWER}, {OPERATOR}"),
        format!("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {VIEWER}"),
        format!(
            "ALTER DEFAULT PRIVILEGES FOR ROLE {MANAGER} IN SCHEMA public GRANT SELECT ON TABLES TO {VIEWER}"
        ),
    ];
    for entry in OPERATOR_WRITES {
        let table = entry.table;
        for (privilege, columns) in [("INSERT", entry.insert), ("UPDATE", entry.update)] {
            match columns {
                Columns::None => {}
                Columns::All => sql.push(format!("GRANT {privilege} ON {table} TO {OPERATOR}")),
                Columns::Only(cols) => sql.push(format!(
                    "GRANT {privilege} ({}) ON {table} TO {OPERATOR}",
                    cols.join(", ")
                )),
            }
        }
        if entry.delete {
            sql.push(format!("GRANT DELETE ON {table} TO {OPERATOR}"));
        }
        for column in entry.serials {
            sql.push(format!(
                "DO $$ BEGIN EXECUTE format('GRANT USAGE ON SEQUENCE %s TO {OPERATOR}', pg_get_serial_sequence('{table}', '{column}')); END $$"
            ));
        }
    }
    sql
}

async fn grant(pool: &PgPool, url: &str) -> Result<(), RolesError> {
    let fail = |source| RolesError::Grant {
        url: redact_url(url),
        source,
    };
    let mut tx = pool.begin().await.map_err(fail)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(ROLES_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(fail)?;
    for statement in grant_statements() {
        sqlx::query(&statement)
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
    }
    tx.commit().await.map_err(fail)
}

/// The rights the connected role lacks among what the manager needs, in words
/// (`UPDATE on strategy_configs`), for the tables that exist; empty for a superuser,
/// the owner, or a member of `engine_manager`. The right to create objects in the
/// schema is one of them: applying the migrations takes it even when none is
/// pending (sqlx's `CREATE TABLE IF NOT EXISTS _sqlx_migrations`).
pub async fn missing_privileges(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    let (tables, privileges): (Vec<&str>, Vec<String>) = MANAGER_NEEDS
        .iter()
        .map(|(table, privileges)| (*table, privileges.join(",")))
        .unzip();
    let mut missing: Vec<String> = sqlx::query_scalar(
        "SELECT p.privilege || ' on ' || t.name \
         FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(name, privileges, ord) \
         CROSS JOIN LATERAL unnest(string_to_array(t.privileges, ',')) WITH ORDINALITY AS p(privilege, pord) \
         WHERE to_regclass(t.name) IS NOT NULL AND NOT has_table_privilege(t.name, p.privilege) \
         ORDER BY t.ord, p.pord",
    )
    .bind(&tables)
    .bind(&privileges)
    .fetch_all(pool)
    .await?;
    let sequences: Vec<String> = sqlx::query_scalar(
        "SELECT 'USAGE on sequence ' || s.seq FROM ( \
             SELECT pg_get_serial_sequence(t, c) AS seq \
             FROM (VALUES ('strategy_commands', 'seq'), ('strategy_runs', 'seq'), \
                          ('strategy_metrics', 'id'), ('strategy_events', 'id')) AS v(t, c) \
             WHERE to_regclass(t) IS NOT NULL) s \
         WHERE s.seq IS NOT NULL AND NOT has_sequence_privilege(s.seq, 'USAGE')",
    )
    .fetch_all(pool)
    .await?;
    missing.extend(sequences);
    let may_create: bool = sqlx::query_scalar("SELECT has_schema_privilege('public', 'CREATE')")
        .fetch_one(pool)
        .await?;
    if !may_create {
        missing.push("CREATE on schema public (to apply the migrations)".to_string());
    }
    Ok(missing)
}

/// The connected role's name (`current_user`).
pub async fn current_role(pool: &PgPool) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(pool)
        .await
}

//! `strategy_orders` (CONTRACT.md §7): every paper order, recorded by the manager
//! from what its executors report (live: batched INSERTs; a run: its orders file,
//! copied in bulk at its end), and read by the HTTP API and `enginectl orders`.
//!
//! Writes never fail on a repeat: the unique key is (`strategy_id`,
//! `client_order_id`) and every insert is `ON CONFLICT DO NOTHING`, so a batch that
//! is retried after a timeout, or a run's file copied twice, records each order once.
//! Orders of a strategy (or run) deleted meanwhile are skipped, not an error.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Row};
use uuid::Uuid;

/// One order to record.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderRow {
    pub strategy_id: Uuid,
    /// `None` for a live order.
    pub run_id: Option<Uuid>,
    pub client_order_id: String,
    /// The epoch the executor reported (not checked against the row's: an order a
    /// stale owner placed is a fact to record, recognisable by its older epoch).
    pub lease_epoch: i64,
    /// The node whose executor reported it.
    pub node: Option<String>,
    pub token: Option<String>,
    /// `buy` or `sell`.
    pub side: &'static str,
    pub quantity: f64,
    pub price: f64,
    pub fee: f64,
    pub at: DateTime<Utc>,
}

/// Record `rows` in one statement, their `id`s in the order given; how many were new.
pub async fn insert_orders(pool: &PgPool, rows: &[OrderRow]) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let n = rows.len();
    let mut strategy = Vec::with_capacity(n);
    let mut run = Vec::with_capacity(n);
    let mut id = Vec::with_capacity(n);
    let mut epoch = Vec::with_capacity(n);
    let mut node = Vec::with_capacity(n);
    let mut token = Vec::with_capacity(n);
    let mut side = Vec::with_capacity(n);
    let mut quantity = Vec::with_capacity(n);
    let mut price = Vec::with_capacity(n);
    let mut fee = Vec::with_capacity(n);
    let mut at = Vec::with_capacity(n);
    for r in rows {
        strategy.push(r.strategy_id);
        run.push(r.run_id);
        id.push(r.client_order_id.as_str());
        epoch.push(r.lease_epoch);
        node.push(r.node.as_deref());
        token.push(r.token.as_deref());
        side.push(r.side);
        quantity.push(r.quantity);
        price.push(r.price);
        fee.push(r.fee);
        at.push(r.at);
    }
    let result = sqlx::query(
        "INSERT INTO strategy_orders (strategy_id, run_id, client_order_id, lease_epoch, node, \
             token, side, quantity, price, fee, at) \
         SELECT o.strategy_id, o.run_id, o.client_order_id, o.lease_epoch, o.node, o.token, \
             o.side, o.quantity::numeric, o.price::numeric, o.fee::numeric, o.at \
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::int8[], $5::text[], $6::text[], \
             $7::text[], $8::float8[], $9::float8[], $10::float8[], $11::timestamptz[]) \
             WITH ORDINALITY AS o(strategy_id, run_id, client_order_id, lease_epoch, node, \
                  token, side, quantity, price, fee, at, ord) \
         WHERE EXISTS (SELECT 1 FROM strategy_configs c WHERE c.id = o.strategy_id) \
           AND (o.run_id IS NULL OR EXISTS (SELECT 1 FROM strategy_runs r WHERE r.id = o.run_id)) \
         ORDER BY o.ord \
         ON CONFLICT (strategy_id, client_order_id) DO NOTHING",
    )
    .bind(&strategy)
    .bind(&run)
    .bind(&id)
    .bind(&epoch)
    .bind(&node)
    .bind(&token)
    .bind(&side)
    .bind(&quantity)
    .bind(&price)
    .bind(&fee)
    .bind(&at)
    .execute(pool)
    .await?;
    Ok(result.rows_affected())
}

/// The columns of a run's orders file, in its order (CSV: see
/// `engine_protocol::runs::OrderLine`).
const RUN_ORDER_COLUMNS: &str = "client_order_id, token, side, quantity, price, fee, at";

/// Copy a run's orders file (CSV lines, streamed from `path`) into
/// `strategy_orders` with the run's strategy, epoch and node: COPY into a temporary
/// table, then one INSERT … SELECT (so a file copied twice records each order once).
/// How many were new.
pub async fn copy_run_orders(
    pool: &PgPool,
    run_id: Uuid,
    path: &std::path::Path,
) -> Result<u64, sqlx::Error> {
    let file = tokio::fs::File::open(path).await?;
    let mut tx = pool.begin().await?;
    sqlx::query(
        "CREATE TEMPORARY TABLE run_orders_in (client_order_id TEXT, token TEXT, side TEXT, \
             quantity FLOAT8, price FLOAT8, fee FLOAT8, at TIMESTAMPTZ) ON COMMIT DROP",
    )
    .execute(&mut *tx)
    .await?;
    let statement = format!("COPY run_orders_in ({RUN_ORDER_COLUMNS}) FROM STDIN (FORMAT csv)");
    let mut copy = tx.copy_in_raw(&statement).await?;
    if let Err(err) = copy.read_from(file).await {
        let _ = copy.abort("cannot read the run's orders file").await;
        return Err(err);
    }
    copy.finish().await?;
    let inserted = sqlx::query(
        "INSERT INTO strategy_orders (strategy_id, run_id, client_order_id, lease_epoch, node, \
             token, side, quantity, price, fee, at) \
         SELECT r.strategy_id, r.id, o.client_order_id, r.lease_epoch, r.node, o.token, o.side, \
             o.quantity::numeric, o.price::numeric, o.fee::numeric, o.at \
         FROM run_orders_in o CROSS JOIN strategy_runs r \
         WHERE r.id = $1 \
         ON CONFLICT (strategy_id, client_order_id) DO NOTHING",
    )
    .bind(run_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(inserted)
}

/// `strategy_runs.lease_epoch` of a run (what its client order ids carry); `None`
/// if the run is gone.
pub async fn run_lease_epoch(pool: &PgPool, run_id: Uuid) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT lease_epoch FROM strategy_runs WHERE id = $1")
        .bind(run_id)
        .fetch_optional(pool)
        .await
}

/// Which of a strategy's orders to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrdersOf {
    /// The live executors' (`run_id` NULL).
    Live,
    /// One run's.
    Run(Uuid),
}

/// An order as the API and `enginectl orders` show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OrderView {
    pub id: i64,
    pub strategy_id: Uuid,
    pub run_id: Option<Uuid>,
    pub client_order_id: String,
    pub lease_epoch: i64,
    pub node: Option<String>,
    pub token: Option<String>,
    pub side: String,
    pub quantity: f64,
    pub price: f64,
    pub fee: f64,
    pub at: DateTime<Utc>,
}

/// The most orders one read returns.
pub const MAX_ORDERS_LIMIT: i64 = 1000;

/// The newest `limit` orders of `strategy_id` (newest first).
pub async fn recent_orders(
    pool: &PgPool,
    strategy_id: Uuid,
    of: OrdersOf,
    limit: i64,
) -> Result<Vec<OrderView>, sqlx::Error> {
    // Two statements, so that each uses its index (a run's orders can be many).
    let columns = "SELECT id, strategy_id, run_id, client_order_id, lease_epoch, node, token, \
         side, quantity::float8 AS quantity, price::float8 AS price, fee::float8 AS fee, at \
         FROM strategy_orders";
    let limit = limit.clamp(1, MAX_ORDERS_LIMIT);
    let query = match of {
        OrdersOf::Live => format!(
            "{columns} WHERE strategy_id = $1 AND run_id IS NULL ORDER BY at DESC, id DESC LIMIT $2"
        ),
        OrdersOf::Run(_) => format!(
            "{columns} WHERE run_id = $3 AND strategy_id = $1 ORDER BY at DESC, id DESC LIMIT $2"
        ),
    };
    let mut query = sqlx::query(&query).bind(strategy_id).bind(limit);
    if let OrdersOf::Run(run) = of {
        query = query.bind(run);
    }
    let rows = query.fetch_all(pool).await?;
    rows.iter()
        .map(|row| {
            Ok(OrderView {
                id: row.try_get("id")?,
                strategy_id: row.try_get("strategy_id")?,
                run_id: row.try_get("run_id")?,
                client_order_id: row.try_get("client_order_id")?,
                lease_epoch: row.try_get("lease_epoch")?,
                node: row.try_get("node")?,
                token: row.try_get("token")?,
                side: row.try_get("side")?,
                quantity: row.try_get("quantity")?,
                price: row.try_get("price")?,
                fee: row.try_get("fee")?,
                at: row.try_get("at")?,
            })
        })
        .collect()
}

/// How many orders `strategy_id` has (live, or of one run).
pub async fn count_orders(
    pool: &PgPool,
    strategy_id: Uuid,
    of: OrdersOf,
) -> Result<i64, sqlx::Error> {
    let run = match of {
        OrdersOf::Live => None,
        OrdersOf::Run(run) => Some(run),
    };
    sqlx::query_scalar(
        "SELECT count(*) FROM strategy_orders WHERE strategy_id = $1 \
         AND run_id IS NOT DISTINCT FROM $2",
    )
    .bind(strategy_id)
    .bind(run)
    .fetch_one(pool)
    .await
}

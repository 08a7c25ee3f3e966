//! `enginectl orders NAME [--run RUN_ID] [-n N] [--json]`: a strategy's newest paper
//! orders from `strategy_orders` (CONTRACT.md §7), its live executors' or one run's,
//! with the lease epoch each was placed under (an order of a stale owner shows an
//! older epoch than the strategy's).

use super::table::{self, Align, Table};
use super::{store, Finished, Target};
use anyhow::anyhow;
use engine_store::orders::{self as orders_store, OrderView, OrdersOf, MAX_ORDERS_LIMIT};
use uuid::Uuid;

/// `--run`: a run's id.
pub fn parse_run(text: &str) -> anyhow::Result<Uuid> {
    text.parse().map_err(|_| {
        anyhow!("--run '{text}' is not a run id (a UUID, as `enginectl runs NAME` shows)")
    })
}

/// The orders as a table, newest first.
pub fn render(rows: &[OrderView]) -> String {
    let mut t = Table::new(&[
        ("TIME (UTC)", Align::Left),
        ("SIDE", Align::Left),
        ("TOKEN", Align::Left),
        ("QTY", Align::Right),
        ("PRICE", Align::Right),
        ("FEE", Align::Right),
        ("EPOCH", Align::Right),
        ("NODE", Align::Left),
        ("CLIENT ORDER ID", Align::Left),
    ]);
    for row in rows {
        t.push(vec![
            table::timestamp(row.at),
            row.side.clone(),
            row.token.clone().unwrap_or_else(|| "-".into()),
            format!("{}", row.quantity),
            format!("{}", row.price),
            format!("{:.4}", row.fee),
            row.lease_epoch.to_string(),
            row.node.clone().unwrap_or_else(|| "-".into()),
            row.client_order_id.clone(),
        ]);
    }
    t.render()
}

pub async fn orders(
    target: &Target,
    name: &str,
    run: Option<&str>,
    limit: i64,
    json: bool,
) -> anyhow::Result<Finished> {
    if !(1..=MAX_ORDERS_LIMIT).contains(&limit) {
        return Err(anyhow!(
            "-n {limit} is out of range; show from 1 to {MAX_ORDERS_LIMIT} orders"
        ));
    }
    let of = match run {
        Some(text) => OrdersOf::Run(parse_run(text)?),
        None => OrdersOf::Live,
    };
    let pool = target.pool().await?;
    let strategy = store::resolve_one(&pool, name).await?;
    let read = |e| store::query_error(e, "read strategy_orders");
    let rows = orders_store::recent_orders(&pool, strategy.id, of, limit)
        .await
        .map_err(read)?;
    let total = orders_store::count_orders(&pool, strategy.id, of)
        .await
        .map_err(|e| store::query_error(e, "count strategy_orders"))?;
    pool.close().await;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(Finished::Ok);
    }
    let whose = match of {
        OrdersOf::Live => format!("'{}'", strategy.name),
        OrdersOf::Run(run) => format!("run {run} of '{}'", strategy.name),
    };
    if rows.is_empty() {
        match of {
            OrdersOf::Live => println!("no orders recorded for {whose} yet"),
            OrdersOf::Run(_) => println!(
                "no orders recorded for {whose} (a backtest's orders are recorded when it ends; screener and alert runs place none)"
            ),
        }
        return Ok(Finished::Ok);
    }
    println!("{} of {total} orders of {whose}, newest first", rows.len());
    print!("{}", render(&rows));
    Ok(Finished::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_must_be_an_id_and_orders_render_as_a_table() {
        let err = parse_run("yesterday").unwrap_err().to_string();
        assert!(err.contains("not a run id"), "{err}");
        let row = OrderView {
            id: 1,
            strategy_id: Uuid::nil(),
            run_id: None,
            client_order_id: "e3-00000000-abc-7".into(),
            lease_epoch: 3,
            node: Some("n1".into()),
            token: Some("BTC-USD".into()),
            side: "buy".into(),
            quantity: 0.5,
            price: 101.25,
            fee: 0.0,
            at: chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
        };
        let text = render(&[row]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("TIME (UTC)"), "{text}");
        assert!(lines[1].contains("e3-00000000-abc-7"), "{text}");
        assert!(
            lines[1].contains("BTC-USD") && lines[1].contains("101.25"),
            "{text}"
        );
    }
}

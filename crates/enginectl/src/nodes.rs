//! `enginectl nodes`: the cluster's nodes (CONTRACT.md §7) — host, pid, heartbeat
//! age, strategies owned against capacity, draining — read from `engine_nodes`.

use crate::table::{self, Align, Table};
use crate::{Finished, Target};
use engine_store::nodes::{self, NodeInfo};

/// `enginectl nodes [--json]`.
pub async fn nodes(target: &Target, json: bool) -> anyhow::Result<Finished> {
    let pool = target.pool().await?;
    let nodes = nodes::nodes(&pool).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&nodes)?);
        return Ok(Finished::Ok);
    }
    if nodes.is_empty() {
        println!("no nodes: no manager has run here with --cluster");
        return Ok(Finished::Ok);
    }
    print!("{}", render(&nodes));
    Ok(Finished::Ok)
}

/// The table `nodes` prints.
pub fn render(nodes: &[NodeInfo]) -> String {
    let mut out = Table::new(&[
        ("NODE", Align::Left),
        ("HOST", Align::Left),
        ("PID", Align::Right),
        ("HEARTBEAT", Align::Right),
        ("STATE", Align::Left),
        ("STRATEGIES", Align::Right),
        ("DRAINING", Align::Left),
    ]);
    for n in nodes {
        out.push(vec![
            n.node.clone(),
            n.host.clone(),
            n.pid.to_string(),
            format!("{} ago", table::duration(n.heartbeat_age_s)),
            if n.is_alive() { "alive" } else { "dead" }.to_string(),
            format!("{} / {}", n.strategies, n.capacity),
            if n.draining { "yes" } else { "no" }.to_string(),
        ]);
    }
    out.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_dead_once_its_heartbeat_is_older_than_its_lease() {
        let node = |age: f64| NodeInfo {
            node: "a".into(),
            host: "h".into(),
            pid: 7,
            started_at: chrono::Utc::now(),
            heartbeat_age_s: age,
            lease_s: 10.0,
            strategies: 3,
            capacity: 1000,
            draining: false,
        };
        let text = render(&[
            node(1.0),
            NodeInfo {
                node: "b".into(),
                ..node(11.0)
            },
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NODE"), "{text}");
        assert!(
            lines[1].contains("alive") && lines[1].contains("3 / 1000"),
            "{text}"
        );
        assert!(lines[2].contains("dead"), "{text}");
    }
}

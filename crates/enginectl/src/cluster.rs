//! `drain NODE`, `undrain NODE` and `move NAME --to NODE` (CONTRACT.md §7): each
//! inserts one command row, waits for its outcome like the other commands, and says
//! where things stand afterwards.

use super::spinner::Spinner;
use super::{Finished, Target};
use clap::Args;
use engine_store::cluster_ops::{self, NodeLoad};
use engine_store::operator::{self as store, CommandProgress};
use engine_store::CommandWord;
use serde_json::json;
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

/// How often a waiting `enginectl` looks at its command row.
const POLL: Duration = Duration::from_millis(150);

/// `drain NODE` and `undrain NODE`.
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// The node, as `enginectl nodes` names it.
    pub node: String,

    /// Insert the command row and exit at once, without waiting for the outcome.
    #[arg(long)]
    pub no_wait: bool,

    /// How long to wait for the outcome (a drain waits until every strategy of the
    /// node runs elsewhere).
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// `move NAME --to NODE`.
#[derive(Debug, Clone, Args)]
pub struct MoveArgs {
    /// The strategy, by name.
    pub name: String,

    /// The node to move it to, as `enginectl nodes` names it.
    #[arg(long = "to", value_name = "NODE")]
    pub to: String,

    /// Insert the command row and exit at once, without waiting for the outcome.
    #[arg(long)]
    pub no_wait: bool,

    /// How long to wait until it runs on the target.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// `drain NODE` (`drain` true) or `undrain NODE`.
pub async fn drain(target: &Target, args: NodeArgs, drain: bool) -> anyhow::Result<Finished> {
    let verb = if drain {
        CommandWord::Drain
    } else {
        CommandWord::Undrain
    };
    let pool = target.pool().await?;
    let parameters = json!({ "node": args.node });
    let id = store::insert_command(&pool, None, verb, &parameters).await?;
    if args.no_wait {
        println!("{} {}: queued (command {id})", verb.as_str(), args.node);
        return Ok(Finished::Ok);
    }
    let what = format!("{} {}", verb.as_str(), args.node);
    let Some(outcome) = wait(&pool, id, &what, args.timeout).await? else {
        return Ok(still_waiting(&what, id, args.timeout));
    };
    if let Some(error) = failed(&outcome) {
        eprintln!("error: {what} failed: {error}");
        return Ok(Finished::Failed);
    }
    let loads = cluster_ops::node_loads(&pool).await?;
    match loads.iter().find(|n| n.node == args.node) {
        Some(node) if drain => println!(
            "{what} executed: {} now owns {} strateg{} and takes no new ones ({})",
            node.node,
            node.owned,
            if node.owned == 1 { "y" } else { "ies" },
            others(&loads, &node.node)
        ),
        Some(node) => println!(
            "{what} executed: {} takes new strategies again ({} of {})",
            node.node, node.owned, node.capacity
        ),
        None => println!("{what} executed"),
    }
    Ok(Finished::Ok)
}

/// `move NAME --to NODE`.
pub async fn move_strategy(target: &Target, args: MoveArgs) -> anyhow::Result<Finished> {
    let pool = target.pool().await?;
    let strategy = store::resolve_one(&pool, &args.name).await?;
    let parameters = json!({ "node": args.to });
    let id =
        store::insert_command(&pool, Some(strategy.id), CommandWord::Move, &parameters).await?;
    if args.no_wait {
        println!("{}: move to {} queued (command {id})", args.name, args.to);
        return Ok(Finished::Ok);
    }
    let what = format!("move {} to {}", args.name, args.to);
    let Some(outcome) = wait(&pool, id, &what, args.timeout).await? else {
        return Ok(still_waiting(&what, id, args.timeout));
    };
    if let Some(error) = failed(&outcome) {
        eprintln!("error: {}: move failed: {error}", args.name);
        return Ok(Finished::Failed);
    }
    let Some(now) = store::strategy(&pool, strategy.id).await? else {
        println!("{}: move executed", args.name);
        return Ok(Finished::Ok);
    };
    let pid = now.pid.map(|p| format!(", pid {p}")).unwrap_or_default();
    let node = now.node.as_deref().unwrap_or("no node");
    let already = if strategy.node.as_deref() == Some(args.to.as_str()) {
        " (it was there already: nothing moved)"
    } else {
        ""
    };
    println!(
        "{}: move executed: on {node} ({}{pid}){already}",
        args.name, now.status
    );
    Ok(Finished::Ok)
}

/// Wait for the row to finish (`None` after `timeout`).
async fn wait(
    pool: &PgPool,
    id: Uuid,
    what: &str,
    timeout: Duration,
) -> anyhow::Result<Option<CommandProgress>> {
    let spinner = Spinner::start(what.to_string());
    let deadline = tokio::time::Instant::now() + timeout;
    let outcome = loop {
        let progress = match store::command_progress(pool, &[id]).await {
            Ok(progress) => progress,
            Err(err) => {
                spinner.finish().await;
                return Err(err);
            }
        };
        if let Some(done) = progress.into_iter().find(CommandProgress::is_finished) {
            break Some(done);
        }
        if tokio::time::Instant::now() >= deadline {
            break None;
        }
        tokio::time::sleep(POLL).await;
    };
    spinner.finish().await;
    Ok(outcome)
}

fn failed(outcome: &CommandProgress) -> Option<&str> {
    (outcome.status == engine_store::CommandStatus::Failed)
        .then(|| outcome.error.as_deref().unwrap_or("no reason given"))
}

fn still_waiting(what: &str, id: Uuid, timeout: Duration) -> Finished {
    eprintln!(
        "error: {what} is not finished after {}; the row stays and the manager carries it out (command {id}; `enginectl nodes` shows the nodes)",
        humantime::format_duration(timeout)
    );
    Finished::Failed
}

/// `node-b 3 of 1000, node-c 2 of 1000`: the other nodes' load.
fn others(loads: &[NodeLoad], node: &str) -> String {
    let others: Vec<String> = loads
        .iter()
        .filter(|n| n.node != node)
        .map(NodeLoad::describe)
        .collect();
    if others.is_empty() {
        "no other node".to_string()
    } else {
        format!("the others: {}", others.join(", "))
    }
}

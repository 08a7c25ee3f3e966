//! The subcommands that change things: `start`, `stop`, `restart`, `pause`,
//! `resume`, `update` (each inserts command rows, then waits for the manager to
//! carry them out and reports each outcome), `add` (checks the config with the
//! executor before the INSERT) and `remove` (stop, wait, DELETE).

use super::shell::name_arg;
use super::spinner::Spinner;
use super::{executor, feed, Finished, Target};
use crate::lease_words::DescribeLease;
use anyhow::{anyhow, bail, Context};
use clap::Args;
use engine_protocol::json_kind;
use engine_store::operator::{self as store, CommandProgress, StrategyRecord};
use engine_store::{CommandStatus, CommandWord, Status};
use serde_json::{json, Map, Value};
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

/// How often a waiting `enginectl` looks at its command rows.
const POLL: Duration = Duration::from_millis(150);

/// What a stop may take on top of its grace period, and a restart on top of that.
const WAIT_MARGIN: Duration = Duration::from_secs(60);

/// Waiting for the outcome (every command but `stop`/`restart`).
#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// Insert the command rows and exit at once, without waiting for the outcome.
    #[arg(long)]
    pub no_wait: bool,

    /// How long to wait for the outcome (`30s`, `2m`).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// `start`, `pause`, `resume`: strategy names, or `--all`.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// The strategies, by name.
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,

    /// Every strategy. For pause and resume this is one global command (the kill
    /// switch, strategy_id NULL); for start, one command per strategy.
    #[arg(long, conflicts_with = "names")]
    pub all: bool,

    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `stop` and `restart`.
#[derive(Debug, Clone, Args)]
pub struct StopArgs {
    /// The strategies, by name.
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,

    /// Every strategy. For stop this is the global kill switch (one command with
    /// strategy_id NULL); for restart, one command per running or paused strategy.
    #[arg(long, conflicts_with = "names")]
    pub all: bool,

    /// Grace period before the executor is killed, in seconds (0 < S ≤ 3600; the
    /// manager's default is 10). enginectl waits that long plus a minute.
    #[arg(long, value_name = "SECONDS", value_parser = parse_grace)]
    pub timeout: Option<f64>,

    /// Close open positions before the strategy exits (by default they are left).
    #[arg(long)]
    pub flatten: bool,

    /// Insert the command rows and exit at once, without waiting for the outcome.
    #[arg(long)]
    pub no_wait: bool,
}

/// `update NAME --set key=value … | --unset key … | --config FILE|JSON`.
#[derive(Debug, Clone, Args)]
pub struct UpdateArgs {
    /// The strategy, by name.
    pub name: String,

    /// Set a config key: `--set fast_period=8`, `--set token=ETH-USD`. The value is
    /// taken as JSON when it parses as JSON, else as a string; `a.b=1` sets a nested key.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,

    /// Remove a config key (`null` in the merge patch).
    #[arg(long, value_name = "KEY")]
    pub unset: Vec<String>,

    /// A JSON merge patch (RFC 7386): a file, `-` for stdin, or inline JSON. `--set`
    /// and `--unset` apply on top of it.
    #[arg(long, value_name = "FILE|JSON")]
    pub config: Option<String>,

    /// Set a resource limit, applied live: `--limit memory_mb=256`, `--limit
    /// cpu_percent=50` (100 = one core), `pids`, `open_files`; `KEY=null` removes it.
    #[arg(long = "limit", value_name = "KEY=VALUE")]
    pub limit: Vec<String>,

    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `add NAME --type T [--config FILE|JSON] [--auto-start]`.
#[derive(Debug, Clone, Args)]
pub struct AddArgs {
    /// A unique name for the strategy.
    pub name: String,

    /// The registered strategy type (`enginectl types` lists them).
    #[arg(long = "type", value_name = "TYPE")]
    pub strategy_type: String,

    /// The config: a file, `-` for stdin, or inline JSON [default: {}].
    #[arg(long, value_name = "FILE|JSON")]
    pub config: Option<String>,

    /// Start the strategy when the host boots (unless an operator's last command
    /// for it was stop).
    #[arg(long)]
    pub auto_start: bool,

    /// Do not check the config with `strategy-executor --validate` first (for a host
    /// without the executor binary; the manager still checks it at start).
    #[arg(long)]
    pub no_validate: bool,

    /// Make it an interval strategy: executed once every SECONDS (the type must
    /// support interval execution; `enginectl types` says which do).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(i32).range(1..=31_536_000))]
    pub interval: Option<i32>,

    /// How long one execution may take before it counts as failed (1 to 3600,
    /// default 30); 5 s more and the executor is killed and restarted.
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(i32).range(1..=3600))]
    pub max_execution: Option<i32>,
}

/// `edit`: change a strategy's interval columns.
#[derive(Debug, Clone, Args)]
pub struct EditArgs {
    pub name: String,

    /// Execute it once every SECONDS (an interval strategy).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(i32).range(1..=31_536_000), conflicts_with = "no_interval")]
    pub interval: Option<i32>,

    /// Make it a continuous strategy again (execution_interval_s NULL).
    #[arg(long)]
    pub no_interval: bool,

    /// How long one execution may take (1 to 3600 seconds).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(i32).range(1..=3600))]
    pub max_execution: Option<i32>,
}

/// One command row to insert.
#[derive(Debug, Clone)]
struct Order {
    /// `None`: a global command.
    strategy: Option<StrategyRecord>,
    parameters: Value,
}

/// How to wait for the rows.
#[derive(Debug, Clone, Copy)]
struct WaitPlan {
    wait: bool,
    timeout: Duration,
}

/// `start`, `pause`, `resume`.
pub async fn simple(
    target: &Target,
    verb: CommandWord,
    args: TargetArgs,
) -> anyhow::Result<Finished> {
    let pool = target.pool().await?;
    let orders = orders_for(&pool, verb, &args.names, args.all, json!({})).await?;
    let plan = WaitPlan {
        wait: !args.wait.no_wait,
        timeout: args.wait.timeout,
    };
    if verb != CommandWord::Start {
        return issue_and_wait(&pool, verb, orders, plan).await;
    }
    // While the starts are carried out: is market data flowing on their tokens?
    let starting: Vec<(String, Value)> = orders
        .iter()
        .filter_map(|o| o.strategy.as_ref())
        .map(|s| (s.name.clone(), s.config.clone()))
        .collect();
    let check = feed::warnings(&target.redis_url, &target.channels, &starting);
    let (finished, warnings) =
        futures_util::future::join(issue_and_wait(&pool, verb, orders, plan), check).await;
    for warning in warnings {
        eprintln!("{warning}");
    }
    finished
}

/// `stop` and `restart`.
pub async fn stop_or_restart(
    target: &Target,
    verb: CommandWord,
    args: StopArgs,
) -> anyhow::Result<Finished> {
    let mut parameters = Map::new();
    if let Some(secs) = args.timeout {
        parameters.insert("timeout_s".into(), json!(secs));
    }
    if args.flatten {
        parameters.insert("mode".into(), json!("flatten"));
    }
    let grace = Duration::from_secs_f64(
        args.timeout
            .unwrap_or(engine_store::commands::DEFAULT_STOP_TIMEOUT.as_secs_f64()),
    );
    let pool = target.pool().await?;
    let orders = orders_for(
        &pool,
        verb,
        &args.names,
        args.all,
        Value::Object(parameters),
    )
    .await?;
    let plan = WaitPlan {
        wait: !args.no_wait,
        timeout: grace + WAIT_MARGIN,
    };
    issue_and_wait(&pool, verb, orders, plan).await
}

/// `update`.
pub async fn update(target: &Target, args: UpdateArgs) -> anyhow::Result<Finished> {
    let base = match &args.config {
        Some(arg) => Some(read_json_object(arg, "--config").await?),
        None => None,
    };
    let patch = build_patch(base, &args.set, &args.unset)?;
    let limits = build_patch(None, &args.limit, &[])?;
    let mut parameters = Map::new();
    if patch.as_object().is_some_and(|p| !p.is_empty()) {
        parameters.insert("config".into(), patch);
    }
    if limits.as_object().is_some_and(|l| !l.is_empty()) {
        engine_protocol::limits::ResourceLimits::check_patch(&limits)?;
        parameters.insert("limits".into(), limits);
    }
    if parameters.is_empty() {
        bail!("nothing to update: give --set KEY=VALUE, --unset KEY, --config FILE|JSON or --limit KEY=VALUE");
    }
    let pool = target.pool().await?;
    let strategy = store::resolve_one(&pool, &args.name).await?;
    let orders = vec![Order {
        strategy: Some(strategy),
        parameters: Value::Object(parameters),
    }];
    let plan = WaitPlan {
        wait: !args.wait.no_wait,
        timeout: args.wait.timeout,
    };
    issue_and_wait(&pool, CommandWord::Update, orders, plan).await
}

/// `add`: check the name and the config, then INSERT.
pub async fn add(target: &Target, args: AddArgs) -> anyhow::Result<Finished> {
    let config = match &args.config {
        Some(arg) => read_json_object(arg, "--config").await?,
        None => json!({}),
    };
    if args.name.trim().is_empty() {
        bail!("a strategy needs a name that is not blank, e.g. `enginectl add btc-fast --type sma_crossover`");
    }
    if args.strategy_type.trim().is_empty() {
        bail!("--type must not be blank; `enginectl types` lists the strategy types");
    }
    // While the config is checked and inserted: is market data flowing on its token?
    let adding = [(args.name.clone(), config.clone())];
    let check = feed::warnings(&target.redis_url, &target.channels, &adding);
    let (finished, warnings) =
        futures_util::future::join(add_checked(target, &args, &config), check).await;
    let finished = finished?;
    for warning in warnings {
        eprintln!("{warning}");
    }
    Ok(finished)
}

/// `add` once the arguments are read: check the name and the config, then INSERT.
async fn add_checked(target: &Target, args: &AddArgs, config: &Value) -> anyhow::Result<Finished> {
    let pool = target.pool().await?;
    let existing = store::strategies(&pool).await?;
    if existing.iter().any(|s| s.name == args.name) {
        bail!(
            "a strategy named '{}' already exists; pick another name (or change its config with `enginectl update {} --set KEY=VALUE`)",
            args.name,
            name_arg(&args.name)
        );
    }
    // A config with secret references is checked by the manager, which holds the
    // secrets, when it starts the strategy: the executor here would see only the
    // references.
    let references = engine_protocol::secrets::has_references(config);
    if references && !args.no_validate {
        eprintln!(
            "note: the config holds secret references ({{\"secret\": ...}}); the manager resolves and checks it when the strategy starts"
        );
    }
    if !args.no_validate && !references {
        let verdict = executor::validate(&target.executor_path, &args.strategy_type, config)
            .await
            .context("cannot check the config (pass --no-validate to skip the check)")?;
        if let Err(reason) = verdict {
            bail!("strategy '{}' was not added: {reason}", args.name);
        }
    }
    if args.interval.is_some() && !args.no_validate {
        executor::check_interval_support(&target.executor_path, &args.strategy_type).await?;
    }
    let interval = store::IntervalSettings {
        execution_interval_s: args.interval.map(Some),
        max_execution_s: args.max_execution,
    };
    let id = store::insert_strategy(
        &pool,
        &args.name,
        &args.strategy_type,
        config,
        args.auto_start,
        interval,
    )
    .await?;
    let every = args
        .interval
        .map(|s| format!(", executed every {s}s"))
        .unwrap_or_default();
    println!(
        "added '{}' ({}, id {id}{}{every}); start it with `enginectl start {}`",
        args.name,
        args.strategy_type,
        if args.auto_start { ", auto_start" } else { "" },
        name_arg(&args.name)
    );
    Ok(Finished::Ok)
}

/// `edit NAME --interval S | --no-interval [--max-execution S]`.
pub async fn edit(target: &Target, args: EditArgs) -> anyhow::Result<Finished> {
    let execution_interval_s = match (args.interval, args.no_interval) {
        (Some(seconds), _) => Some(Some(seconds)),
        (None, true) => Some(None),
        (None, false) => None,
    };
    if execution_interval_s.is_none() && args.max_execution.is_none() {
        bail!(
            "nothing to change: give --interval SECONDS, --no-interval or --max-execution SECONDS"
        );
    }
    let pool = target.pool().await?;
    let strategy = store::resolve_one(&pool, &args.name).await?;
    if let Some(Some(_)) = execution_interval_s {
        executor::check_interval_support(&target.executor_path, &strategy.strategy_type).await?;
    }
    let settings = store::IntervalSettings {
        execution_interval_s,
        max_execution_s: args.max_execution,
    };
    if !store::set_interval(&pool, strategy.id, settings).await? {
        bail!("strategy '{}' was deleted meanwhile", args.name);
    }
    let now = match execution_interval_s {
        Some(Some(seconds)) => format!("executed every {seconds}s"),
        Some(None) => "a continuous strategy".to_string(),
        None => "unchanged interval".to_string(),
    };
    println!(
        "'{}' is now {now}; a running strategy takes the change within a few seconds",
        args.name
    );
    Ok(Finished::Ok)
}

/// `remove`: stop it if it may run, then delete it.
pub async fn remove(target: &Target, name: &str, timeout: Duration) -> anyhow::Result<Finished> {
    let pool = target.pool().await?;
    let strategy = store::resolve_one(&pool, name).await?;
    if !matches!(strategy.status, Status::Stopped | Status::Error) {
        let orders = vec![Order {
            strategy: Some(strategy.clone()),
            parameters: json!({}),
        }];
        let plan = WaitPlan {
            wait: true,
            timeout: timeout.max(engine_store::commands::DEFAULT_STOP_TIMEOUT + WAIT_MARGIN),
        };
        if issue_and_wait(&pool, CommandWord::Stop, orders, plan).await? != Finished::Ok {
            bail!("'{name}' was not removed because it could not be stopped");
        }
    }
    if !store::delete_strategy(&pool, strategy.id).await? {
        bail!("'{name}' was already gone");
    }
    println!("removed '{name}'");
    Ok(Finished::Ok)
}

/// The rows for `verb` on `names`, or on every strategy with `--all`.
async fn orders_for(
    pool: &PgPool,
    verb: CommandWord,
    names: &[String],
    all: bool,
    parameters: Value,
) -> anyhow::Result<Vec<Order>> {
    if all {
        return match verb {
            // The contract's kill switch: one row, strategy_id NULL.
            CommandWord::Stop | CommandWord::Pause | CommandWord::Resume => Ok(vec![Order {
                strategy: None,
                parameters,
            }]),
            CommandWord::Start
            | CommandWord::Restart
            | CommandWord::Update
            | CommandWord::Cancel
            | CommandWord::Trigger => {
                let every = store::strategies(pool).await?;
                Ok(every
                    .into_iter()
                    .filter(|s| verb != CommandWord::Restart || s.is_live())
                    .map(|s| Order {
                        strategy: Some(s),
                        parameters: parameters.clone(),
                    })
                    .collect())
            }
            CommandWord::Drain | CommandWord::Undrain | CommandWord::Move => {
                bail!("{} names a node, not --all", verb.as_str())
            }
        };
    }
    if names.is_empty() {
        bail!(
            "name at least one strategy, or pass --all (e.g. `enginectl {} demo-sma-btc`)",
            verb.as_str()
        );
    }
    let mut unique: Vec<String> = Vec::with_capacity(names.len());
    for name in names {
        if !unique.contains(name) {
            unique.push(name.clone());
        }
    }
    Ok(store::resolve(pool, &unique)
        .await?
        .into_iter()
        .map(|s| Order {
            strategy: Some(s),
            parameters: parameters.clone(),
        })
        .collect())
}

/// Insert the rows, wait for them (unless told not to), print each outcome.
async fn issue_and_wait(
    pool: &PgPool,
    verb: CommandWord,
    orders: Vec<Order>,
    plan: WaitPlan,
) -> anyhow::Result<Finished> {
    if orders.is_empty() {
        println!(
            "nothing to {}: no strategy {}",
            verb.as_str(),
            if verb == CommandWord::Restart {
                "is running or paused"
            } else {
                "exists"
            }
        );
        return Ok(Finished::Ok);
    }
    warn_without_manager(pool).await;
    let mut ids = Vec::with_capacity(orders.len());
    for order in &orders {
        let strategy_id = order.strategy.as_ref().map(|s| s.id);
        ids.push(store::insert_command(pool, strategy_id, verb, &order.parameters).await?);
    }
    if !plan.wait {
        for (order, id) in orders.iter().zip(&ids) {
            println!(
                "{}: {} queued (command {id})",
                label(order.strategy.as_ref()),
                verb.as_str()
            );
        }
        return Ok(Finished::Ok);
    }
    let progress = wait_for_outcomes(pool, verb, &orders, &ids, plan.timeout).await?;
    let mut finished = Finished::Ok;
    for (order, id) in orders.iter().zip(&ids) {
        let name = label(order.strategy.as_ref());
        let row = progress.iter().find(|p| p.id == *id);
        match row {
            Some(p) if p.status == CommandStatus::Executed => {
                report_success(pool, verb, order, &name).await?;
            }
            Some(p) if p.status == CommandStatus::Failed => {
                finished = Finished::Failed;
                eprintln!(
                    "error: {name}: {} failed: {}",
                    verb.as_str(),
                    p.error.as_deref().unwrap_or("no reason given")
                );
            }
            other => {
                finished = Finished::Failed;
                let status = other.map(|p| p.status.as_str()).unwrap_or("gone");
                eprintln!(
                    "error: {name}: {} is still {status} after {}; the row stays and the manager will \
                     carry it out (command {id}; `enginectl history` shows its outcome)",
                    verb.as_str(),
                    humantime::format_duration(plan.timeout)
                );
            }
        }
    }
    Ok(finished)
}

/// Poll the rows until each is executed or failed, or `timeout` passes.
async fn wait_for_outcomes(
    pool: &PgPool,
    verb: CommandWord,
    orders: &[Order],
    ids: &[Uuid],
    timeout: Duration,
) -> anyhow::Result<Vec<CommandProgress>> {
    let names: Vec<String> = orders.iter().map(|o| label(o.strategy.as_ref())).collect();
    let what = if names.len() <= 3 {
        names.join(", ")
    } else {
        format!("{} strategies", names.len())
    };
    let spinner = Spinner::start(format!("{} {what}", verb.as_str()));
    let deadline = tokio::time::Instant::now() + timeout;
    let progress = loop {
        let progress = match store::command_progress(pool, ids).await {
            Ok(p) => p,
            Err(err) => {
                spinner.finish().await;
                return Err(err);
            }
        };
        let done = progress.iter().filter(|p| p.is_finished()).count();
        if done == ids.len() || tokio::time::Instant::now() >= deadline {
            break progress;
        }
        if ids.len() > 1 {
            spinner.set_message(format!(
                "{} {what}: {done} of {} done",
                verb.as_str(),
                ids.len()
            ));
        }
        tokio::time::sleep(POLL).await;
    };
    spinner.finish().await;
    Ok(progress)
}

async fn report_success(
    pool: &PgPool,
    verb: CommandWord,
    order: &Order,
    name: &str,
) -> anyhow::Result<()> {
    let word = verb.as_str();
    let Some(strategy) = &order.strategy else {
        println!("{name}: {word} executed");
        for s in store::strategies(pool).await? {
            println!("  {}: {}", s.name, s.status);
        }
        return Ok(());
    };
    let Some(now) = store::strategy(pool, strategy.id).await? else {
        println!("{name}: {word} executed");
        return Ok(());
    };
    let pid = now.pid.map(|p| format!(", pid {p}")).unwrap_or_default();
    if verb == CommandWord::Update {
        let applied: Vec<String> = [("", "config"), ("limits ", "limits")]
            .iter()
            .filter_map(|(label, key)| order.parameters.get(*key).map(|v| format!("{label}{v}")))
            .collect();
        println!(
            "{name}: update executed ({}{pid}); applied {}",
            now.status,
            applied.join(" and ")
        );
    } else {
        println!("{name}: {word} executed ({}{pid})", now.status);
    }
    Ok(())
}

fn label(strategy: Option<&StrategyRecord>) -> String {
    match strategy {
        Some(s) => s.name.clone(),
        None => "all strategies".to_string(),
    }
}

/// Say so when no live manager serves the database: the rows would only wait.
async fn warn_without_manager(pool: &PgPool) {
    match engine_store::lease::lease(pool).await {
        Ok(Some(lease)) if lease.is_alive() => {}
        Ok(Some(lease)) => eprintln!(
            "warning: no live engine-manager serves this database ({}); the command waits in \
             strategy_commands until one runs",
            lease.describe()
        ),
        Ok(None) => eprintln!(
            "warning: no engine-manager has served this database yet; the command waits in \
             strategy_commands until one starts"
        ),
        Err(_) => {}
    }
}

/// The grace period of `stop --timeout`: seconds (`30`, `2.5`) or a duration (`30s`).
pub fn parse_grace(text: &str) -> Result<f64, String> {
    let secs = match text.trim().parse::<f64>() {
        Ok(secs) => secs,
        Err(_) => humantime::parse_duration(text.trim())
            .map(|d| d.as_secs_f64())
            .map_err(|_| format!("'{text}' is not a number of seconds such as 30 or 2.5"))?,
    };
    if !(secs > 0.0 && secs <= 3600.0) {
        return Err(format!(
            "the stop timeout must be above 0 and at most 3600 seconds, got {text}"
        ));
    }
    Ok(secs)
}

/// A JSON object from `arg`: inline JSON (starting with `{`), `-` for stdin, or a
/// file path. `flag` names the argument in errors.
pub async fn read_json_object(arg: &str, flag: &str) -> anyhow::Result<Value> {
    let trimmed = arg.trim_start();
    let (source, text) = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        ("the inline JSON".to_string(), arg.to_string())
    } else if arg == "-" {
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut tokio::io::stdin(), &mut text)
            .await
            .context("cannot read the config from stdin")?;
        ("stdin".to_string(), text)
    } else {
        let text = tokio::fs::read_to_string(arg).await.with_context(|| {
            format!(
                "cannot read {flag} file '{arg}' (give a file, `-` for stdin, or inline JSON such \
                 as '{{\"interval_ms\": 1000}}')"
            )
        })?;
        (format!("'{arg}'"), text)
    };
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| anyhow!("{flag}: {source} is not valid JSON ({e})"))?;
    if !value.is_object() {
        bail!(
            "{flag}: {source} must be a JSON object such as {{\"interval_ms\": 1000}}, got {}",
            json_kind(&value)
        );
    }
    Ok(value)
}

/// The merge patch of `update`: `base` (from --config), then each `--set` and
/// `--unset` on top, in that order.
pub fn build_patch(base: Option<Value>, set: &[String], unset: &[String]) -> anyhow::Result<Value> {
    let mut patch = match base {
        Some(Value::Object(map)) => map,
        Some(other) => bail!("the patch must be a JSON object, got {}", json_kind(&other)),
        None => Map::new(),
    };
    for item in set {
        let Some((key, raw)) = item.split_once('=') else {
            bail!("--set expects KEY=VALUE (e.g. --set fast_period=8), got '{item}'");
        };
        let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
        insert_path(&mut patch, key.trim(), value, "--set")?;
    }
    for key in unset {
        insert_path(&mut patch, key.trim(), Value::Null, "--unset")?;
    }
    Ok(Value::Object(patch))
}

/// Put `value` at the dotted `key` (`a.b` → `{"a": {"b": value}}`).
fn insert_path(
    map: &mut Map<String, Value>,
    key: &str,
    value: Value,
    flag: &str,
) -> anyhow::Result<()> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        bail!(
            "{flag}: '{key}' is not a key (use names such as fast_period, or a.b for nested keys)"
        );
    }
    let (last, parents) = parts.split_last().expect("split yields one part at least");
    let mut current = map;
    for (i, part) in parents.iter().enumerate() {
        let entry = current
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        current = match entry {
            Value::Object(inner) => inner,
            _ => bail!(
                "{flag} {key}: '{}' is already set to a value that is not an object",
                parts[..=i].join(".")
            ),
        };
    }
    current.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_from_set_and_unset() {
        let patch = build_patch(
            None,
            &[
                "fast_period=8".into(),
                "token=ETH-USD".into(),
                "flag=true".into(),
                "risk.max=0.5".into(),
                "text=\"quoted\"".into(),
                "empty=".into(),
                "eq=a=b".into(),
            ],
            &["old".into()],
        )
        .unwrap();
        assert_eq!(
            patch,
            json!({"fast_period": 8, "token": "ETH-USD", "flag": true, "risk": {"max": 0.5},
                   "text": "quoted", "empty": "", "eq": "a=b", "old": null})
        );
        let on_base = build_patch(Some(json!({"a": 1, "b": 2})), &["b=3".into()], &[]).unwrap();
        assert_eq!(on_base, json!({"a": 1, "b": 3}));
    }

    #[test]
    fn bad_patches_say_what_would_be_right() {
        let err = build_patch(None, &["fast_period".into()], &[]).unwrap_err();
        assert!(err.to_string().contains("KEY=VALUE"), "{err}");
        let err = build_patch(None, &["a.=1".into()], &[]).unwrap_err();
        assert!(err.to_string().contains("not a key"), "{err}");
        let err = build_patch(None, &["a=1".into(), "a.b=2".into()], &[]).unwrap_err();
        assert!(err.to_string().contains("not an object"), "{err}");
    }

    #[test]
    fn grace_periods() {
        assert_eq!(parse_grace("30"), Ok(30.0));
        assert_eq!(parse_grace("2.5"), Ok(2.5));
        assert_eq!(parse_grace("1m"), Ok(60.0));
        assert!(parse_grace("0").unwrap_err().contains("above 0"));
        assert!(parse_grace("3601").unwrap_err().contains("at most 3600"));
        assert!(parse_grace("soon")
            .unwrap_err()
            .contains("number of seconds"));
    }

    #[tokio::test]
    async fn config_arguments() {
        let inline = read_json_object("{\"interval_ms\": 50}", "--config")
            .await
            .unwrap();
        assert_eq!(inline, json!({"interval_ms": 50}));
        let err = read_json_object("[1]", "--config").await.unwrap_err();
        assert!(err.to_string().contains("must be a JSON object"), "{err}");
        let err = read_json_object("{oops", "--config").await.unwrap_err();
        assert!(err.to_string().contains("not valid JSON"), "{err}");
        let err = read_json_object("/nonexistent/x.json", "--config")
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("inline JSON"), "{err:#}");
    }
}

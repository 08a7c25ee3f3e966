//! Schedules of runs (CONTRACT.md §5) from the command line: `schedule add` checks
//! the timetable (the cron field at fault, the time zone) and inserts a
//! `strategy_schedules` row, which the manager takes up at once; `schedule list`
//! shows each schedule's next run time and statistics; `schedule remove`,
//! `enable` and `disable` change one by id.

use super::runs::{parameters, parse_run_timeout};
use super::table::{self, Align, Table};
use super::{store, Finished, Target};
use anyhow::{anyhow, bail};
use chrono::Utc;
use clap::{Args, Subcommand};
use engine_protocol::schedule::{seconds_words, Timetable};
use engine_store::runs_api as runs_db;
use engine_store::schedules::{self as db, NewSchedule, ScheduleRecord};
use engine_store::{CatchUp, Overlap};
use uuid::Uuid;

/// `schedule add|list|remove|enable|disable`.
#[derive(Debug, Clone, Subcommand)]
pub enum ScheduleCommand {
    /// Make runs of a strategy on a timetable: `--cron '30 18 * * 1-5' --tz
    /// America/New_York` or `--every 5m`.
    Add(AddArgs),
    /// Every schedule: timetable, next run time, runs made, skipped, missed, error.
    List {
        /// Only the schedules of this strategy.
        name: Option<String>,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete a schedule (the runs it made stay).
    Remove { id: String },
    /// Let a schedule make runs again (from its next due time on).
    Enable { id: String },
    /// Stop a schedule making runs (nothing is missed while it is disabled).
    Disable { id: String },
}

/// `schedule add NAME --mode M (--cron EXPR [--tz ZONE] | --every D) [--set k=v]...`.
#[derive(Debug, Clone, Args)]
pub struct AddArgs {
    /// The strategy whose runs the schedule makes, by name.
    pub name: String,

    /// `backtest`, `screener` or `alert`.
    #[arg(long)]
    pub mode: String,

    /// A five-field cron expression: minute hour day-of-month month day-of-week.
    #[arg(long, conflicts_with = "every", required_unless_present = "every")]
    pub cron: Option<String>,

    /// The cron's time zone (an IANA name; default UTC).
    #[arg(long = "tz", requires = "cron")]
    pub timezone: Option<String>,

    /// A fixed interval instead of a cron: `30s`, `5m`, `1h`.
    #[arg(long)]
    pub every: Option<String>,

    /// A parameter of each run, as for `enginectl run`: `--set limit=20`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,

    /// When a run is due while the last is unfinished: `skip`, `queue` or
    /// `cancel_previous`.
    #[arg(long, default_value = "skip")]
    pub overlap: String,

    /// After downtime: `one` run for all missed times, or `none`.
    #[arg(long = "catch-up", default_value = "one")]
    pub catch_up: String,

    /// `high`, `normal` or `low`.
    #[arg(long, default_value = "normal")]
    pub priority: String,

    /// Longest run time of each run (`90`, `10m`; at most a day).
    #[arg(long, value_parser = parse_run_timeout)]
    pub timeout: Option<i32>,
}

/// Run one `schedule` subcommand.
pub async fn schedule(target: &Target, command: ScheduleCommand) -> anyhow::Result<Finished> {
    match command {
        ScheduleCommand::Add(args) => add(target, args).await,
        ScheduleCommand::List { name, json } => list(target, name.as_deref(), json).await,
        ScheduleCommand::Remove { id } => {
            let id = parse_id(&id)?;
            let pool = target.pool().await?;
            let found = db::delete_schedule(&pool, id)
                .await
                .map_err(|e| store::query_error(e, "delete from strategy_schedules"))?;
            if !found {
                bail!("no schedule with id {id}; `enginectl schedule list` shows them");
            }
            println!("schedule {id} removed");
            Ok(Finished::Ok)
        }
        ScheduleCommand::Enable { id } => set_enabled(target, &id, true).await,
        ScheduleCommand::Disable { id } => set_enabled(target, &id, false).await,
    }
}

/// `--every`: `300` (seconds) or a duration (`5m`), a whole number of seconds ≥ 1.
pub fn parse_every(text: &str) -> anyhow::Result<i32> {
    let seconds = match text.trim().parse::<u64>() {
        Ok(seconds) => seconds,
        Err(_) => {
            let d = humantime::parse_duration(text.trim())
                .map_err(|_| anyhow!("--every '{text}' is not a duration such as 30s, 5m or 1h"))?;
            if d.subsec_nanos() != 0 {
                bail!("--every '{text}': a schedule's interval is a whole number of seconds");
            }
            d.as_secs()
        }
    };
    match i32::try_from(seconds) {
        Ok(s) if s > 0 => Ok(s),
        _ => bail!("--every '{text}': the interval must be at least 1 second (and under 68 years)"),
    }
}

fn parse_id(id: &str) -> anyhow::Result<Uuid> {
    id.trim().parse().map_err(|_| {
        anyhow!("'{id}' is not a schedule id (a UUID); `enginectl schedule list` shows them")
    })
}

async fn add(target: &Target, args: AddArgs) -> anyhow::Result<Finished> {
    let mode = runs_db::parse_mode(&args.mode)?;
    let priority = runs_db::parse_priority(Some(&args.priority))?;
    let overlap: Overlap = args.overlap.trim().parse()?;
    let catch_up: CatchUp = args.catch_up.trim().parse()?;
    let interval_s = args.every.as_deref().map(parse_every).transpose()?;
    // The manager would say the same in last_error; say it before inserting.
    let timetable = Timetable::from_columns(
        args.cron.as_deref(),
        args.timezone.as_deref(),
        interval_s.map(i64::from),
    )?;
    let parameters = parameters(&args.set)?;
    let pool = target.pool().await?;
    let strategy = store::resolve_one(&pool, &args.name).await?;
    let new = NewSchedule {
        strategy_id: strategy.id,
        mode,
        parameters,
        priority,
        timeout_s: args.timeout,
        cron: args.cron.map(|c| c.trim().to_string()),
        timezone: args.timezone.map(|z| z.trim().to_string()),
        interval_s,
        overlap,
        catch_up,
    };
    let id =
        db::insert_schedule(&pool, &new)
            .await
            .map_err(|err| match db::schedule_refusal(&err) {
                Some(words) => anyhow!("the schedule was not inserted: {words}"),
                None => store::query_error(err, "insert into strategy_schedules"),
            })?;
    println!("{id}");
    let next = timetable
        .next_after(Utc::now())
        .map_or("never".to_string(), |t| {
            format!("{} UTC", t.format("%Y-%m-%d %H:%M:%S"))
        });
    eprintln!(
        "schedule {id}: a {mode} of '{}' {}; first run about {next} (the manager sets the exact time)",
        strategy.name,
        timetable.describe()
    );
    Ok(Finished::Ok)
}

async fn set_enabled(target: &Target, id: &str, enabled: bool) -> anyhow::Result<Finished> {
    let id = parse_id(id)?;
    let pool = target.pool().await?;
    let found = db::set_enabled(&pool, id, enabled)
        .await
        .map_err(|e| store::query_error(e, "update strategy_schedules"))?;
    if !found {
        bail!("no schedule with id {id}; `enginectl schedule list` shows them");
    }
    println!(
        "schedule {id} {}",
        if enabled { "enabled" } else { "disabled" }
    );
    Ok(Finished::Ok)
}

async fn list(target: &Target, name: Option<&str>, json: bool) -> anyhow::Result<Finished> {
    let pool = target.pool().await?;
    let strategy_id = match name {
        Some(name) => Some(store::resolve_one(&pool, name).await?.id),
        None => None,
    };
    let mut schedules = db::list_schedules(&pool, strategy_id)
        .await
        .map_err(|e| store::query_error(e, "read strategy_schedules"))?;
    for s in &mut schedules {
        s.schedule.parameters = engine_protocol::secrets::mask(&s.schedule.parameters);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&schedules)?);
    } else if schedules.is_empty() {
        println!(
            "no schedules; add one with `enginectl schedule add NAME --mode screener --cron '30 18 * * 1-5'`"
        );
    } else {
        print!("{}", schedules_table(&schedules, Utc::now()));
    }
    Ok(Finished::Ok)
}

/// How a schedule's timetable reads: `every 5m`, `30 18 * * 1-5 America/New_York`.
fn timetable_words(s: &ScheduleRecord) -> String {
    match (&s.schedule.cron, s.schedule.interval_s) {
        (Some(cron), _) => match &s.schedule.timezone {
            Some(zone) => format!("{cron} {zone}"),
            None => cron.clone(),
        },
        (None, Some(seconds)) => format!("every {}", seconds_words(seconds.into())),
        (None, None) => "-".to_string(),
    }
}

/// The schedules as `schedule list` prints them.
pub fn schedules_table(schedules: &[ScheduleRecord], now: chrono::DateTime<Utc>) -> String {
    let mut t = Table::new(&[
        ("ID", Align::Left),
        ("STRATEGY", Align::Left),
        ("MODE", Align::Left),
        ("WHEN", Align::Left),
        ("NEXT RUN", Align::Left),
        ("RUNS", Align::Right),
        ("SKIPPED", Align::Right),
        ("MISSED", Align::Right),
        ("OVERLAP", Align::Left),
        ("LAST ERROR", Align::Left),
    ]);
    for s in schedules {
        let next = match (s.enabled, s.next_run_at) {
            (false, _) => "disabled".to_string(),
            (true, None) => "-".to_string(),
            (true, Some(at)) if at <= now => format!("{} (due)", at.format("%Y-%m-%d %H:%M:%S")),
            (true, Some(at)) => format!(
                "{} (in {})",
                at.format("%Y-%m-%d %H:%M:%S"),
                table::duration((at - now).as_seconds_f64())
            ),
        };
        t.push(vec![
            s.id.to_string(),
            s.strategy.clone(),
            s.schedule.mode.to_string(),
            timetable_words(s),
            next,
            s.runs_created.to_string(),
            s.skipped_overlap.to_string(),
            s.missed.to_string(),
            s.schedule.overlap.to_string(),
            s.last_error
                .as_deref()
                .map_or("-".to_string(), |e| table::shorten(e, 80)),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_takes_seconds_or_durations_and_refuses_zero() {
        assert_eq!(parse_every("300").unwrap(), 300);
        assert_eq!(parse_every("5m").unwrap(), 300);
        assert_eq!(parse_every("1h").unwrap(), 3600);
        for bad in ["0", "0s", "soon", "1500ms", "-5"] {
            assert!(parse_every(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_every("0").unwrap_err().to_string(),
            "--every '0': the interval must be at least 1 second (and under 68 years)"
        );
    }
}

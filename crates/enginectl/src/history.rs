//! `enginectl history NAME`: a strategy's commands (its own, and the global ones
//! that concerned it — those `strategy_events` record a transition of it for —
//! from `strategy_commands`) and its state transitions (from `strategy_events`),
//! merged, newest first.

use super::table::{self, Align, Table};
use super::{Finished, Target};
use chrono::{DateTime, Utc};
use engine_store::operator::{self as store, CommandRecord, EventRecord};
use engine_store::{CommandStatus, Status};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    Command {
        at: DateTime<Utc>,
        id: Uuid,
        command: String,
        parameters: Value,
        global: bool,
        status: CommandStatus,
        error: Option<String>,
        executed_at: Option<DateTime<Utc>>,
        /// The database login role that inserted it, and whom its tool acted for.
        issued_by: String,
        on_behalf_of: Option<String>,
    },
    Transition {
        at: DateTime<Utc>,
        old_status: Option<Status>,
        new_status: Status,
        reason: Option<String>,
        error: Option<String>,
        command_id: Option<Uuid>,
        pid: Option<i32>,
        node: String,
    },
}

impl Entry {
    pub fn at(&self) -> DateTime<Utc> {
        match self {
            Entry::Command { at, .. } | Entry::Transition { at, .. } => *at,
        }
    }
}

impl From<CommandRecord> for Entry {
    fn from(c: CommandRecord) -> Entry {
        Entry::Command {
            at: c.created_at,
            id: c.id,
            command: c.command,
            // An update's config may hold secrets in clear: shown masked.
            parameters: engine_protocol::secrets::mask(&c.parameters),
            global: c.global,
            status: c.status,
            error: c.error,
            executed_at: c.executed_at,
            issued_by: c.issued_by,
            on_behalf_of: c.on_behalf_of,
        }
    }
}

impl From<EventRecord> for Entry {
    fn from(e: EventRecord) -> Entry {
        Entry::Transition {
            at: e.at,
            old_status: e.old_status,
            new_status: e.new_status,
            reason: e.reason,
            error: e.error,
            command_id: e.command_id,
            pid: e.pid,
            node: e.node,
        }
    }
}

/// Commands and events merged newest first, at most `limit`.
pub fn merge(commands: Vec<CommandRecord>, events: Vec<EventRecord>, limit: usize) -> Vec<Entry> {
    let mut entries: Vec<Entry> = commands
        .into_iter()
        .map(Entry::from)
        .chain(events.into_iter().map(Entry::from))
        .collect();
    // Stable: rows of one kind keep their (newest-first) order on equal times.
    entries.sort_by_key(|e| std::cmp::Reverse(e.at()));
    entries.truncate(limit);
    entries
}

fn short(id: Uuid) -> String {
    id.simple().to_string()[..8].to_string()
}

/// Who asked: `by ROLE`, plus `for NAME` when a tool acted for someone else.
pub fn who(issued_by: &str, on_behalf_of: Option<&str>) -> String {
    match on_behalf_of {
        Some(name) if name != issued_by => format!("by {issued_by} for {name}"),
        _ => format!("by {issued_by}"),
    }
}

/// The history as a table: TIME, WHAT, DETAIL.
pub fn render(entries: &[Entry]) -> String {
    let mut t = Table::new(&[
        ("TIME (UTC)", Align::Left),
        ("WHAT", Align::Left),
        ("DETAIL", Align::Left),
    ]);
    for entry in entries {
        let (what, detail) = match entry {
            Entry::Command {
                id,
                command,
                parameters,
                global,
                status,
                error,
                issued_by,
                on_behalf_of,
                ..
            } => {
                let mut what = format!("command {command}");
                if *global {
                    what.push_str(" (global)");
                }
                let mut detail = status.to_string();
                if parameters.as_object().is_some_and(|p| !p.is_empty()) {
                    detail.push_str(&format!(" {parameters}"));
                }
                if let Some(error) = error {
                    detail.push_str(&format!(": {}", table::shorten(error, 100)));
                }
                detail.push_str(&format!(
                    " [cmd {}] {}",
                    short(*id),
                    who(issued_by, on_behalf_of.as_deref())
                ));
                (what, detail)
            }
            Entry::Transition {
                old_status,
                new_status,
                reason,
                error,
                command_id,
                pid,
                ..
            } => {
                let what = match old_status {
                    Some(old) if old != new_status => format!("{old} → {new_status}"),
                    _ => new_status.to_string(),
                };
                let mut parts = Vec::new();
                if let Some(reason) = reason {
                    parts.push(format!("reason: {reason}"));
                }
                if let Some(error) = error {
                    parts.push(format!("error: {}", table::shorten(error, 100)));
                }
                if let Some(pid) = pid {
                    parts.push(format!("pid {pid}"));
                }
                if let Some(id) = command_id {
                    parts.push(format!("[cmd {}]", short(*id)));
                }
                (what, parts.join("; "))
            }
        };
        t.push(vec![table::timestamp(entry.at()), what, detail]);
    }
    t.render()
}

/// `enginectl history NAME [-n N] [--json]`.
pub async fn history(
    target: &Target,
    name: &str,
    limit: usize,
    json: bool,
) -> anyhow::Result<Finished> {
    let pool = target.pool().await?;
    let strategy = store::resolve_one(&pool, name).await?;
    let (commands, events) =
        store::history(&pool, &strategy, i64::try_from(limit).unwrap_or(i64::MAX)).await?;
    pool.close().await;
    let entries = merge(commands, events, limit);
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
    } else if entries.is_empty() {
        println!("no commands or transitions recorded for '{name}' yet");
    } else {
        print!("{}", render(&entries));
    }
    Ok(Finished::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merged_newest_first_and_rendered() {
        let t0 = Utc::now() - chrono::Duration::seconds(10);
        let cmd_id = Uuid::new_v4();
        let commands = vec![CommandRecord {
            id: cmd_id,
            created_at: t0,
            executed_at: Some(t0 + chrono::Duration::seconds(1)),
            command: "stop".into(),
            parameters: json!({"timeout_s": 5}),
            status: CommandStatus::Executed,
            error: None,
            global: false,
            issued_by: "alice".into(),
            on_behalf_of: Some("ops-bot".into()),
        }];
        let events = vec![
            EventRecord {
                at: t0 + chrono::Duration::seconds(2),
                old_status: Some(Status::Stopping),
                new_status: Status::Stopped,
                reason: Some("stopped by an operator".into()),
                error: None,
                command_id: Some(cmd_id),
                pid: None,
                node: "n".into(),
            },
            EventRecord {
                at: t0 - chrono::Duration::seconds(5),
                old_status: Some(Status::Starting),
                new_status: Status::Running,
                reason: None,
                error: None,
                command_id: None,
                pid: Some(42),
                node: "n".into(),
            },
        ];
        let entries = merge(commands, events, 10);
        let kinds: Vec<&str> = entries
            .iter()
            .map(|e| match e {
                Entry::Command { .. } => "command",
                Entry::Transition { .. } => "transition",
            })
            .collect();
        assert_eq!(kinds, ["transition", "command", "transition"]);
        let text = render(&entries);
        assert!(text.contains("stopping → stopped"), "{text}");
        assert!(text.contains("reason: stopped by an operator"), "{text}");
        assert!(text.contains("command stop"), "{text}");
        assert!(text.contains(r#"executed {"timeout_s":5}"#), "{text}");
        assert!(text.contains("by alice for ops-bot"), "{text}");
        assert_eq!(merge(vec![], vec![], 10), vec![]);
        let json = serde_json::to_value(&entries[0]).unwrap();
        assert_eq!(json["kind"], "transition");
    }
}

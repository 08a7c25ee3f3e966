//! Operators' command rows: inserting one (the statement `enginectl`, the HTTP API
//! and the bench share), and checking one and turning it into a typed command. Every
//! way a row can be wrong gets a message saying what was wrong and what would be right.

use crate::vocab::CommandWord;
use chrono::{DateTime, Utc};
use engine_protocol::json_kind;
use engine_protocol::StopMode;
use serde_json::{Map, Value};
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq)]
pub enum CommandKind {
    Start,
    Stop {
        timeout: Duration,
        mode: StopMode,
    },
    Restart {
        timeout: Duration,
        mode: StopMode,
    },
    /// A JSON merge patch (RFC 7386) for `config`.
    Update {
        patch: Value,
    },
    Pause,
    Resume,
}

impl CommandKind {
    pub fn command_word(&self) -> CommandWord {
        match self {
            CommandKind::Start => CommandWord::Start,
            CommandKind::Stop { .. } => CommandWord::Stop,
            CommandKind::Restart { .. } => CommandWord::Restart,
            CommandKind::Update { .. } => CommandWord::Update,
            CommandKind::Pause => CommandWord::Pause,
            CommandKind::Resume => CommandWord::Resume,
        }
    }

    pub fn word(&self) -> &'static str {
        self.command_word().as_str()
    }
}

/// A command row just inserted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct InsertedCommand {
    pub id: Uuid,
    /// `now()` of the inserting transaction.
    pub created_at: DateTime<Utc>,
}

/// Insert a `pending` command row (`strategy_id` `None`: a global command).
pub async fn insert_command_row(
    pool: &PgPool,
    strategy_id: Option<Uuid>,
    command: CommandWord,
    parameters: &Value,
) -> Result<InsertedCommand, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO strategy_commands (strategy_id, command, parameters) VALUES ($1, $2, $3) \
         RETURNING id, created_at",
    )
    .bind(strategy_id)
    .bind(command.as_str())
    .bind(parameters)
    .fetch_one(pool)
    .await
}

/// Check a row's `command` and `parameters`; `global` for rows with no strategy_id.
pub fn parse_command(word: &str, parameters: &Value, global: bool) -> Result<CommandKind, String> {
    let Some(params) = parameters.as_object() else {
        return Err(format!(
            "parameters must be a JSON object, got {}",
            json_kind(parameters)
        ));
    };
    let Ok(command) = word.parse::<CommandWord>() else {
        let trimmed = word.trim().to_lowercase();
        let hint = if trimmed != word && trimmed.parse::<CommandWord>().is_ok() {
            format!(" (did you mean '{trimmed}'?)")
        } else {
            String::new()
        };
        return Err(format!(
            "unknown command '{word}'{hint}; expected one of {}",
            CommandWord::list()
        ));
    };
    // Never allowed globally, whatever the parameters: say so before judging them.
    if global && !command.may_be_global() {
        return Err(not_global(word));
    }
    let kind = match command {
        CommandWord::Start | CommandWord::Pause | CommandWord::Resume => {
            no_parameters(word, params)?;
            match command {
                CommandWord::Start => CommandKind::Start,
                CommandWord::Pause => CommandKind::Pause,
                _ => CommandKind::Resume,
            }
        }
        CommandWord::Stop | CommandWord::Restart => {
            let (timeout, mode) = stop_parameters(word, params)?;
            if command == CommandWord::Stop {
                CommandKind::Stop { timeout, mode }
            } else {
                CommandKind::Restart { timeout, mode }
            }
        }
        CommandWord::Update => {
            if let Some(key) = params.keys().find(|k| k.as_str() != "config") {
                return Err(format!(
                    "unknown parameter '{key}' for update; it takes only \"config\": {{...}} (a JSON merge patch)"
                ));
            }
            match params.get("config") {
                Some(Value::Object(patch)) => CommandKind::Update {
                    patch: Value::Object(patch.clone()),
                },
                Some(other) => {
                    return Err(format!(
                        "parameters.config must be a JSON object (a merge patch for the config), got {}",
                        json_kind(other)
                    ))
                }
                None => {
                    return Err(
                        "update needs parameters {\"config\": {...}}: a JSON merge patch for the strategy's config"
                            .to_string(),
                    )
                }
            }
        }
    };
    Ok(kind)
}

fn not_global(word: &str) -> String {
    format!(
        "'{word}' cannot be global (strategy_id NULL); global commands are pause, resume and stop — give a strategy_id to {word} one strategy"
    )
}

fn no_parameters(word: &str, params: &Map<String, Value>) -> Result<(), String> {
    match params.keys().next() {
        Some(key) => Err(format!(
            "unknown parameter '{key}' for {word}; {word} takes no parameters (use {{}})"
        )),
        None => Ok(()),
    }
}

fn stop_parameters(
    word: &str,
    params: &Map<String, Value>,
) -> Result<(Duration, StopMode), String> {
    let mut timeout = DEFAULT_STOP_TIMEOUT;
    let mut mode = StopMode::Leave;
    for (key, value) in params {
        match key.as_str() {
            "timeout_s" => {
                let secs = value.as_f64().filter(|s| *s > 0.0 && *s <= 3600.0).ok_or_else(|| {
                    format!(
                        "parameters.timeout_s must be a number with 0 < timeout_s <= 3600 (seconds), got {value}"
                    )
                })?;
                timeout = Duration::from_secs_f64(secs);
            }
            "mode" => {
                mode = match value.as_str() {
                    Some("leave") => StopMode::Leave,
                    Some("flatten") => StopMode::Flatten,
                    _ => {
                        return Err(format!(
                            "parameters.mode must be \"leave\" (keep positions, the default) or \"flatten\" (close them first), got {value}"
                        ))
                    }
                }
            }
            other => {
                return Err(format!(
                    "unknown parameter '{other}' for {word}; allowed: timeout_s (0 < s <= 3600), mode (\"leave\" or \"flatten\")"
                ))
            }
        }
    }
    Ok((timeout, mode))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(word: &str, params: Value, global: bool) -> String {
        parse_command(word, &params, global).unwrap_err()
    }

    #[test]
    fn good_commands_parse() {
        assert_eq!(
            parse_command("start", &json!({}), false),
            Ok(CommandKind::Start)
        );
        assert_eq!(
            parse_command("stop", &json!({"timeout_s": 2.5, "mode": "flatten"}), true),
            Ok(CommandKind::Stop {
                timeout: Duration::from_millis(2500),
                mode: StopMode::Flatten
            })
        );
        assert_eq!(
            parse_command("stop", &json!({}), false),
            Ok(CommandKind::Stop {
                timeout: DEFAULT_STOP_TIMEOUT,
                mode: StopMode::Leave
            })
        );
        assert_eq!(
            parse_command("update", &json!({"config": {"a": 1}}), false),
            Ok(CommandKind::Update {
                patch: json!({"a": 1})
            })
        );
        assert_eq!(
            parse_command("pause", &json!({}), true),
            Ok(CommandKind::Pause)
        );
    }

    #[test]
    fn bad_commands_say_what_would_be_right() {
        assert!(err("strat", json!({}), false).contains("expected one of start, stop"));
        assert!(err("Stop ", json!({}), false).contains("did you mean 'stop'"));
        assert!(err("stop", json!({"timeout_s": 0}), false).contains("0 < timeout_s <= 3600"));
        assert!(err("stop", json!({"timeout_s": 3601}), false).contains("0 < timeout_s <= 3600"));
        assert!(err("stop", json!({"timeout_s": "10"}), false).contains("got \"10\""));
        assert!(err("stop", json!({"mode": "close"}), false).contains("\"flatten\""));
        assert!(err("stop", json!({"timout_s": 5}), false).contains("unknown parameter 'timout_s'"));
        assert!(err("start", json!({"x": 1}), false).contains("takes no parameters"));
        assert!(err("start", json!([1]), false).contains("must be a JSON object, got an array"));
        assert!(err("update", json!({}), false).contains("merge patch"));
        assert!(err("update", json!({"config": [1]}), false).contains("got an array"));
        assert!(
            err("update", json!({"config": {}, "x": 1}), false).contains("unknown parameter 'x'")
        );
        assert!(err("start", json!({}), true).contains("cannot be global"));
        assert!(err("update", json!({"config": {}}), true).contains("cannot be global"));
        assert!(err("restart", json!({}), true).contains("cannot be global"));
        // Refused as global before its parameters are judged.
        assert!(err("update", json!({}), true).contains("'update' cannot be global"));
        assert!(err("start", json!({"x": 1}), true).contains("'start' cannot be global"));
        assert!(err("restart", json!({"timeout_s": 0}), true).contains("cannot be global"));
    }
}

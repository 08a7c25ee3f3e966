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
    /// A JSON merge patch (RFC 7386) for `config` (`{}` when the update carries only
    /// limits), and one for `limits` (checked: `null` removes a limit).
    Update {
        patch: Value,
        limits: Option<Value>,
    },
    Pause,
    Resume,
    /// Cancel the run `run_id`, or every queued and running run of the strategy.
    Cancel {
        run_id: Option<Uuid>,
    },
    /// One execution of an interval strategy now (CONTRACT.md §5).
    Trigger,
    /// Global (CONTRACT.md §7): node `node` hands its strategies to other nodes and
    /// takes no new ones. Also what a draining node's supervisors are handed, one
    /// per strategy, to hand theirs over.
    Drain {
        node: String,
    },
    /// Global: node `node` takes new strategies again.
    Undrain {
        node: String,
    },
    /// Stop the strategy on the node that owns it and start it on node `node`.
    Move {
        node: String,
    },
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
            CommandKind::Cancel { .. } => CommandWord::Cancel,
            CommandKind::Trigger => CommandWord::Trigger,
            CommandKind::Drain { .. } => CommandWord::Drain,
            CommandKind::Undrain { .. } => CommandWord::Undrain,
            CommandKind::Move { .. } => CommandWord::Move,
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
/// `on_behalf_of`: the person or token the tool acts for (`None`: the session's
/// `engine.on_behalf_of` setting, if any); `issued_by` is the database's to stamp.
pub async fn insert_command_row(
    pool: &PgPool,
    strategy_id: Option<Uuid>,
    command: CommandWord,
    parameters: &Value,
    on_behalf_of: Option<&str>,
) -> Result<InsertedCommand, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO strategy_commands (strategy_id, command, parameters, on_behalf_of) \
         VALUES ($1, $2, $3, $4) RETURNING id, created_at",
    )
    .bind(strategy_id)
    .bind(command.as_str())
    .bind(parameters)
    .bind(on_behalf_of)
    .fetch_one(pool)
    .await
}

/// Why a command row cannot be carried out: each says what was wrong and what would
/// be right (the words go to the row's `error` column and to HTTP answers).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidCommand {
    #[error("parameters must be a JSON object, got {kind}")]
    ParametersNotAnObject { kind: &'static str },
    #[error("unknown command '{word}'{}; expected one of {}", did_you_mean(.suggestion), CommandWord::list())]
    UnknownWord {
        word: String,
        /// The word meant, when only case or spaces were off.
        suggestion: Option<CommandWord>,
    },
    #[error(
        "'{word}' cannot be global (strategy_id NULL); global commands are pause, resume, stop, drain and undrain — give a strategy_id to {word} one strategy"
    )]
    NotGlobal { word: String },
    #[error(
        "'{word}' is a global command about a node, not a strategy: insert it with strategy_id NULL and parameters {{\"node\": \"<name>\"}} (`enginectl {word} NODE`); to move one strategy use move"
    )]
    OnlyGlobal { word: String },
    #[error(
        "{word} needs parameters {{\"node\": \"<name>\"}} naming a cluster node (`enginectl nodes` lists them)"
    )]
    MissingNode { word: String },
    #[error(
        "parameters.node must be a node's name (a string of 1 to 200 characters, as `enginectl nodes` shows it), got {value}"
    )]
    BadNode { value: Value },
    #[error("unknown parameter '{key}' for {word}; it takes only \"node\": \"<name>\"")]
    UnknownNodeParameter { word: String, key: String },
    #[error("unknown parameter '{key}' for {word}; {word} takes no parameters (use {{}})")]
    TakesNoParameters { word: String, key: String },
    #[error(
        "unknown parameter '{key}' for update; it takes \"config\": {{...}} (a JSON merge patch) and/or \"limits\": {{...}}"
    )]
    UnknownUpdateParameter { key: String },
    #[error(transparent)]
    BadLimits(#[from] engine_protocol::limits::LimitError),
    #[error("parameters.config must be a JSON object (a merge patch for the config), got {kind}")]
    ConfigNotAnObject { kind: &'static str },
    #[error(
        "update needs parameters {{\"config\": {{...}}}} (a JSON merge patch for the strategy's config), {{\"limits\": {{...}}}} or both"
    )]
    UpdateWithoutConfig,
    #[error(
        "parameters.timeout_s must be a number with 0 < timeout_s <= 3600 (seconds), got {value}"
    )]
    BadTimeout { value: Value },
    #[error(
        "parameters.mode must be \"leave\" (keep positions, the default) or \"flatten\" (close them first), got {value}"
    )]
    BadMode { value: Value },
    #[error(
        "unknown parameter '{key}' for {word}; allowed: timeout_s (0 < s <= 3600), mode (\"leave\" or \"flatten\")"
    )]
    UnknownStopParameter { word: String, key: String },
    #[error(
        "unknown parameter '{key}' for cancel; it takes only \"run_id\": \"<uuid>\" (without it, every queued and running run of the strategy is cancelled)"
    )]
    UnknownCancelParameter { key: String },
    #[error("parameters.run_id must be a run's id (a UUID string), got {value}")]
    BadRunId { value: Value },
}

fn did_you_mean(suggestion: &Option<CommandWord>) -> String {
    suggestion
        .map(|w| format!(" (did you mean '{w}'?)"))
        .unwrap_or_default()
}

/// Check a row's `command` and `parameters`; `global` for rows with no strategy_id.
pub fn parse_command(
    word: &str,
    parameters: &Value,
    global: bool,
) -> Result<CommandKind, InvalidCommand> {
    let Some(params) = parameters.as_object() else {
        return Err(InvalidCommand::ParametersNotAnObject {
            kind: json_kind(parameters),
        });
    };
    let Ok(command) = word.parse::<CommandWord>() else {
        let trimmed = word.trim().to_lowercase();
        let suggestion = (trimmed != word)
            .then(|| trimmed.parse::<CommandWord>().ok())
            .flatten();
        return Err(InvalidCommand::UnknownWord {
            word: word.to_string(),
            suggestion,
        });
    };
    // Never allowed globally, whatever the parameters: say so before judging them.
    if global && !command.may_be_global() {
        return Err(InvalidCommand::NotGlobal {
            word: word.to_string(),
        });
    }
    if !global && command.only_global() {
        return Err(InvalidCommand::OnlyGlobal {
            word: word.to_string(),
        });
    }
    match command {
        CommandWord::Start | CommandWord::Pause | CommandWord::Resume | CommandWord::Trigger => {
            no_parameters(word, params)?;
            Ok(match command {
                CommandWord::Start => CommandKind::Start,
                CommandWord::Pause => CommandKind::Pause,
                CommandWord::Trigger => CommandKind::Trigger,
                _ => CommandKind::Resume,
            })
        }
        CommandWord::Stop | CommandWord::Restart => {
            let (timeout, mode) = stop_parameters(word, params)?;
            Ok(if command == CommandWord::Stop {
                CommandKind::Stop { timeout, mode }
            } else {
                CommandKind::Restart { timeout, mode }
            })
        }
        CommandWord::Update => update_parameters(params),
        CommandWord::Cancel => cancel_parameters(params),
        CommandWord::Drain | CommandWord::Undrain | CommandWord::Move => {
            let node = node_parameter(word, params)?;
            Ok(match command {
                CommandWord::Drain => CommandKind::Drain { node },
                CommandWord::Undrain => CommandKind::Undrain { node },
                _ => CommandKind::Move { node },
            })
        }
    }
}

/// The `node` of drain, undrain and move: a node's name, and nothing else.
fn node_parameter(word: &str, params: &Map<String, Value>) -> Result<String, InvalidCommand> {
    if let Some(key) = params.keys().find(|k| k.as_str() != "node") {
        return Err(InvalidCommand::UnknownNodeParameter {
            word: word.to_string(),
            key: key.clone(),
        });
    }
    let Some(value) = params.get("node") else {
        return Err(InvalidCommand::MissingNode {
            word: word.to_string(),
        });
    };
    match value.as_str() {
        Some(node) if !node.is_empty() && node.chars().count() <= 200 => Ok(node.to_string()),
        _ => Err(InvalidCommand::BadNode {
            value: value.clone(),
        }),
    }
}

fn cancel_parameters(params: &Map<String, Value>) -> Result<CommandKind, InvalidCommand> {
    if let Some(key) = params.keys().find(|k| k.as_str() != "run_id") {
        return Err(InvalidCommand::UnknownCancelParameter { key: key.clone() });
    }
    let run_id = match params.get("run_id") {
        None => None,
        Some(value) => Some(
            value
                .as_str()
                .and_then(|s| s.parse::<Uuid>().ok())
                .ok_or_else(|| InvalidCommand::BadRunId {
                    value: value.clone(),
                })?,
        ),
    };
    Ok(CommandKind::Cancel { run_id })
}

fn update_parameters(params: &Map<String, Value>) -> Result<CommandKind, InvalidCommand> {
    if let Some(key) = params
        .keys()
        .find(|k| k.as_str() != "config" && k.as_str() != "limits")
    {
        return Err(InvalidCommand::UnknownUpdateParameter { key: key.clone() });
    }
    let limits = params.get("limits");
    if let Some(limits) = limits {
        engine_protocol::limits::ResourceLimits::check_patch(limits)?;
    }
    let patch = match (params.get("config"), limits) {
        (Some(Value::Object(patch)), _) => Value::Object(patch.clone()),
        (Some(other), _) => {
            return Err(InvalidCommand::ConfigNotAnObject {
                kind: json_kind(other),
            })
        }
        (None, Some(_)) => Value::Object(Map::new()),
        (None, None) => return Err(InvalidCommand::UpdateWithoutConfig),
    };
    Ok(CommandKind::Update {
        patch,
        limits: limits.cloned(),
    })
}

fn no_parameters(word: &str, params: &Map<String, Value>) -> Result<(), InvalidCommand> {
    match params.keys().next() {
        Some(key) => Err(InvalidCommand::TakesNoParameters {
            word: word.to_string(),
            key: key.clone(),
        }),
        None => Ok(()),
    }
}

fn stop_parameters(
    word: &str,
    params: &Map<String, Value>,
) -> Result<(Duration, StopMode), InvalidCommand> {
    let mut timeout = DEFAULT_STOP_TIMEOUT;
    let mut mode = StopMode::Leave;
    for (key, value) in params {
        match key.as_str() {
            "timeout_s" => {
                let secs = value
                    .as_f64()
                    .filter(|s| *s > 0.0 && *s <= 3600.0)
                    .ok_or_else(|| InvalidCommand::BadTimeout {
                        value: value.clone(),
                    })?;
                timeout = Duration::from_secs_f64(secs);
            }
            "mode" => {
                mode = match value.as_str() {
                    Some("leave") => StopMode::Leave,
                    Some("flatten") => StopMode::Flatten,
                    _ => {
                        return Err(InvalidCommand::BadMode {
                            value: value.clone(),
                        })
                    }
                }
            }
            other => {
                return Err(InvalidCommand::UnknownStopParameter {
                    word: word.to_string(),
                    key: other.to_string(),
                })
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
        parse_command(word, &params, global)
            .unwrap_err()
            .to_string()
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
                patch: json!({"a": 1}),
                limits: None,
            })
        );
        assert_eq!(
            parse_command("update", &json!({"limits": {"memory_mb": 64}}), false),
            Ok(CommandKind::Update {
                patch: json!({}),
                limits: Some(json!({"memory_mb": 64})),
            })
        );
        assert_eq!(
            parse_command("pause", &json!({}), true),
            Ok(CommandKind::Pause)
        );
        let run = Uuid::new_v4();
        assert_eq!(
            parse_command("cancel", &json!({"run_id": run.to_string()}), false),
            Ok(CommandKind::Cancel { run_id: Some(run) })
        );
        assert_eq!(
            parse_command("cancel", &json!({}), false),
            Ok(CommandKind::Cancel { run_id: None })
        );
        assert_eq!(
            parse_command("trigger", &json!({}), false),
            Ok(CommandKind::Trigger)
        );
        assert_eq!(
            parse_command("drain", &json!({"node": "node-a"}), true),
            Ok(CommandKind::Drain {
                node: "node-a".into()
            })
        );
        assert_eq!(
            parse_command("undrain", &json!({"node": "node-a"}), true),
            Ok(CommandKind::Undrain {
                node: "node-a".into()
            })
        );
        assert_eq!(
            parse_command("move", &json!({"node": "node-b"}), false),
            Ok(CommandKind::Move {
                node: "node-b".into()
            })
        );
    }

    #[test]
    fn bad_node_commands_say_what_would_be_right() {
        assert!(err("drain", json!({}), true).contains("drain needs parameters {\"node\""));
        assert!(err("move", json!({}), false).contains("move needs parameters {\"node\""));
        assert!(err("drain", json!({"node": 7}), true).contains("node's name"));
        assert!(err("drain", json!({"node": ""}), true).contains("got \"\""));
        assert!(err("undrain", json!({"node": "a".repeat(201)}), true).contains("1 to 200"));
        assert!(err("move", json!({"node": "b", "now": true}), false)
            .contains("unknown parameter 'now' for move; it takes only \"node\""));
        assert!(
            err("drain", json!({"node": "a"}), false).contains("is a global command about a node")
        );
        assert!(err("undrain", json!({"node": "a"}), false).contains("strategy_id NULL"));
        assert!(err("move", json!({"node": "b"}), true).contains("'move' cannot be global"));
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
        assert_eq!(
            err("update", json!({"limits": {"memory_mb": 0}}), false),
            "limits.memory_mb must be a whole number from 16 to 1048576 (megabytes), got 0"
        );
        assert!(err("update", json!({"limits": {"cpus": 2}}), false)
            .contains("unknown limit 'cpus'; allowed: memory_mb, cpu_percent"));
        assert!(err("update", json!({"limits": 64}), false).contains("got a number"));
        assert!(err("start", json!({}), true).contains("cannot be global"));
        assert!(err("update", json!({"config": {}}), true).contains("cannot be global"));
        assert!(err("restart", json!({}), true).contains("cannot be global"));
        assert!(err("trigger", json!({}), true).contains("'trigger' cannot be global"));
        assert!(err("trigger", json!({"now": true}), false).contains("takes no parameters"));
        // Refused as global before its parameters are judged.
        assert!(err("update", json!({}), true).contains("'update' cannot be global"));
        assert!(err("start", json!({"x": 1}), true).contains("'start' cannot be global"));
        assert!(err("restart", json!({"timeout_s": 0}), true).contains("cannot be global"));
        assert!(err("cancel", json!({}), true).contains("'cancel' cannot be global"));
        assert!(err("cancel", json!({"run": "x"}), false).contains("takes only \"run_id\""));
        assert!(err("cancel", json!({"run_id": 7}), false).contains("a UUID string), got 7"));
    }
}

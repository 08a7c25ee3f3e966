//! Operators' command rows, checked and turned into typed commands. Every way a row
//! can be wrong gets a message saying what was wrong and what would be right.

use engine_protocol::json_kind;
use engine_protocol::StopMode;
use serde_json::{Map, Value};
use std::time::Duration;

pub const COMMAND_WORDS: &str = "start, stop, restart, update, pause, resume";
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
    pub fn word(&self) -> &'static str {
        match self {
            CommandKind::Start => "start",
            CommandKind::Stop { .. } => "stop",
            CommandKind::Restart { .. } => "restart",
            CommandKind::Update { .. } => "update",
            CommandKind::Pause => "pause",
            CommandKind::Resume => "resume",
        }
    }
}

/// Check a row's `command` and `parameters`; `global` for rows with no strategy_id.
pub fn parse_command(word: &str, parameters: &Value, global: bool) -> Result<CommandKind, String> {
    let Some(params) = parameters.as_object() else {
        return Err(format!(
            "parameters must be a JSON object, got {}",
            json_kind(parameters)
        ));
    };
    // Never allowed globally, whatever the parameters: say so before judging them.
    if global && matches!(word, "start" | "restart" | "update") {
        return Err(not_global(word));
    }
    let kind = match word {
        "start" | "pause" | "resume" => {
            no_parameters(word, params)?;
            match word {
                "start" => CommandKind::Start,
                "pause" => CommandKind::Pause,
                _ => CommandKind::Resume,
            }
        }
        "stop" | "restart" => {
            let (timeout, mode) = stop_parameters(word, params)?;
            if word == "stop" {
                CommandKind::Stop { timeout, mode }
            } else {
                CommandKind::Restart { timeout, mode }
            }
        }
        "update" => {
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
        other => {
            let trimmed = other.trim().to_lowercase();
            let hint = if trimmed != other && is_word(&trimmed) {
                format!(" (did you mean '{trimmed}'?)")
            } else {
                String::new()
            };
            return Err(format!(
                "unknown command '{other}'{hint}; expected one of {COMMAND_WORDS}"
            ));
        }
    };
    if global
        && !matches!(
            kind,
            CommandKind::Stop { .. } | CommandKind::Pause | CommandKind::Resume
        )
    {
        return Err(not_global(word));
    }
    Ok(kind)
}

fn not_global(word: &str) -> String {
    format!(
        "'{word}' cannot be global (strategy_id NULL); global commands are pause, resume and stop — give a strategy_id to {word} one strategy"
    )
}

fn is_word(s: &str) -> bool {
    ["start", "stop", "restart", "update", "pause", "resume"].contains(&s)
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

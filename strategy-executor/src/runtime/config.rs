//! The strategy's config: a JSON object read from a file or from stdin, never from
//! argv, and never logged. Under a manager (`--stdin-envelope`) the object is a
//! [`SpawnInput`]: the config and the broker state the previous executor left.

use engine_protocol::control::SpawnInput;
use serde_json::Value;
use std::io::Read;
use std::path::Path;

/// Why the config could not be read. The messages never contain the config itself.
#[derive(Debug, thiserror::Error)]
pub enum ConfigReadError {
    #[error("cannot read the config from {source_name}")]
    Read {
        source_name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the config in {source_name} is not valid JSON ({detail})")]
    Json { source_name: String, detail: String },
    #[error("the config in {source_name} must be a JSON object, got {kind}")]
    NotAnObject {
        source_name: String,
        kind: &'static str,
    },
    #[error("the spawn envelope in {source_name} must be {{\"config\": {{...}}, \"broker_state\": ...}} ({detail})")]
    BadEnvelope { source_name: String, detail: String },
}

/// Read what the manager wrote (`--stdin-envelope`): a [`SpawnInput`] whose config
/// is a JSON object. Only the config is checked here: a broker state that cannot be
/// restored is the runtime's to report, not a reason to refuse to start.
pub fn read_spawn_input(path: Option<&Path>) -> Result<SpawnInput, ConfigReadError> {
    let source_name = match path {
        Some(p) if p == Path::new("-") => "stdin".to_string(),
        Some(p) => format!("'{}'", p.display()),
        None => "no --config-file".to_string(),
    };
    let value = read_config(path)?;
    let bad = |detail: String| ConfigReadError::BadEnvelope {
        source_name: source_name.clone(),
        detail,
    };
    // serde's messages name the field at fault, never a value: no secret leaks.
    let input: SpawnInput = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
    if !input.config.is_object() {
        let kind = engine_protocol::json_kind(&input.config);
        return Err(bad(format!("config must be a JSON object, got {kind}")));
    }
    Ok(input)
}

/// Read the config object from `path` (`-` for stdin); `{}` without a path or for
/// empty input.
pub fn read_config(path: Option<&Path>) -> Result<Value, ConfigReadError> {
    let Some(path) = path else {
        return Ok(Value::Object(Default::default()));
    };
    let (source_name, bytes) = if path == Path::new("-") {
        let mut bytes = Vec::new();
        let name = "stdin".to_string();
        std::io::stdin()
            .lock()
            .read_to_end(&mut bytes)
            .map_err(|source| ConfigReadError::Read {
                source_name: name.clone(),
                source,
            })?;
        (name, bytes)
    } else {
        let name = format!("'{}'", path.display());
        let bytes = std::fs::read(path).map_err(|source| ConfigReadError::Read {
            source_name: name.clone(),
            source,
        })?;
        (name, bytes)
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Default::default()));
    }
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| ConfigReadError::Json {
        source_name: source_name.clone(),
        // serde_json's messages say where, never what: no secret leaks through them.
        detail: e.to_string(),
    })?;
    if !value.is_object() {
        return Err(ConfigReadError::NotAnObject {
            source_name,
            kind: engine_protocol::json_kind(&value),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::errors::error_chain;
    use uuid::Uuid;

    #[test]
    fn config_must_be_an_object() {
        let dir = std::env::temp_dir().join(format!("executor-unit-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.json");
        std::fs::write(&file, "[1, 2]").unwrap();
        let err = read_config(Some(&file)).unwrap_err().to_string();
        assert!(err.contains("must be a JSON object, got an array"), "{err}");
        std::fs::write(&file, "{\"api_key\": \"sekrit\"").unwrap();
        let err = read_config(Some(&file)).unwrap_err().to_string();
        assert!(err.contains("not valid JSON"), "{err}");
        assert!(!err.contains("sekrit"), "{err}");
        std::fs::write(&file, "  \n").unwrap();
        assert_eq!(read_config(Some(&file)).unwrap(), serde_json::json!({}));
        let err = error_chain(&read_config(Some(&dir.join("missing.json"))).unwrap_err());
        assert!(err.contains("cannot read the config from"), "{err}");
        assert!(err.contains("No such file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_spawn_envelope_carries_the_config_and_the_broker_state() {
        let dir = std::env::temp_dir().join(format!("executor-unit-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("input.json");
        std::fs::write(&file, r#"{"config": {"a": 1}, "broker_state": {"x": 2}}"#).unwrap();
        let input = read_spawn_input(Some(&file)).unwrap();
        assert_eq!(input.config, serde_json::json!({"a": 1}));
        assert_eq!(input.broker_state, Some(serde_json::json!({"x": 2})));
        std::fs::write(&file, r#"{"config": {"a": 1}}"#).unwrap();
        assert_eq!(read_spawn_input(Some(&file)).unwrap().broker_state, None);
        std::fs::write(&file, r#"{"config": [1], "broker_state": null}"#).unwrap();
        let err = read_spawn_input(Some(&file)).unwrap_err().to_string();
        assert!(
            err.contains("config must be a JSON object, got an array"),
            "{err}"
        );
        std::fs::write(&file, r#"{"api_key": "sekrit"}"#).unwrap();
        let err = read_spawn_input(Some(&file)).unwrap_err().to_string();
        assert!(
            err.contains("spawn envelope") && err.contains("config"),
            "{err}"
        );
        assert!(!err.contains("sekrit"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

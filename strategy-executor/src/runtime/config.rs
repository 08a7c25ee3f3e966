//! The strategy's config: a JSON object read from a file or from stdin, never from
//! argv, and never logged.

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
}

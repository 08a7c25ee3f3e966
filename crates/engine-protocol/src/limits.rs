//! A strategy's resource limits (CONTRACT §6): `strategy_configs.limits`, the
//! `limits` of an `update`, and the one check of them every reader applies. The
//! migration `resource_limits` holds the same keys and ranges, so the schema, the
//! manager and `enginectl` refuse the same things in the same words.

use crate::json_kind;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Each limit: its key, the least and the most it may be, and its unit in words.
pub const LIMIT_RANGES: &[(&str, u64, u64, &str)] = &[
    ("memory_mb", 16, 1_048_576, "megabytes"),
    ("cpu_percent", 1, 25_600, "percent of one core"),
    ("pids", 8, 4_194_304, "processes and threads"),
    ("open_files", 16, 1_048_576, "file descriptors"),
];

/// A strategy's limits; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// 100 is one core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_files: Option<u64>,
}

/// Why a `limits` object (or an update's patch of one) is refused: the key at fault,
/// what it was, and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("limits must be a JSON object such as {{\"memory_mb\": 256, \"cpu_percent\": 50}}, got {kind}")]
    NotAnObject { kind: &'static str },
    #[error("unknown limit '{key}'; allowed: {}", allowed_keys())]
    UnknownKey { key: String },
    #[error("limits.{key} must be a whole number from {min} to {max} ({unit}), got {value}")]
    OutOfRange {
        key: &'static str,
        min: u64,
        max: u64,
        unit: &'static str,
        value: Value,
    },
}

fn allowed_keys() -> String {
    LIMIT_RANGES
        .iter()
        .map(|(key, ..)| *key)
        .collect::<Vec<_>>()
        .join(", ")
}

impl ResourceLimits {
    /// Parse a stored `limits` object (every value present must be in range).
    pub fn from_value(value: &Value) -> Result<ResourceLimits, LimitError> {
        check(value, false)?;
        let mut limits = ResourceLimits::default();
        for (key, v) in value.as_object().into_iter().flatten() {
            *limits.slot(key) = v.as_u64();
        }
        Ok(limits)
    }

    /// Check an update's merge patch of `limits`: like a stored object, except that
    /// `null` removes a limit.
    pub fn check_patch(patch: &Value) -> Result<(), LimitError> {
        check(patch, true)
    }

    pub fn is_empty(&self) -> bool {
        *self == ResourceLimits::default()
    }

    fn slot(&mut self, key: &str) -> &mut Option<u64> {
        match key {
            "memory_mb" => &mut self.memory_mb,
            "cpu_percent" => &mut self.cpu_percent,
            "pids" => &mut self.pids,
            _ => &mut self.open_files,
        }
    }

    /// As JSON for `strategy_configs.limits` (absent keys are no limit).
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or_else(|_| Value::Object(Map::new()))
    }
}

impl std::fmt::Display for ResourceLimits {
    /// `memory 64 MB, cpu 20 %, pids 64, open files 256`, or `none`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = [
            self.memory_mb.map(|v| format!("memory {v} MB")),
            self.cpu_percent.map(|v| format!("cpu {v} %")),
            self.pids.map(|v| format!("pids {v}")),
            self.open_files.map(|v| format!("open files {v}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        if parts.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

fn check(value: &Value, patch: bool) -> Result<(), LimitError> {
    let Some(map) = value.as_object() else {
        return Err(LimitError::NotAnObject {
            kind: json_kind(value),
        });
    };
    for (key, v) in map {
        let Some(&(key, min, max, unit)) = LIMIT_RANGES.iter().find(|(k, ..)| k == key) else {
            return Err(LimitError::UnknownKey { key: key.clone() });
        };
        if patch && v.is_null() {
            continue;
        }
        if !v.as_u64().is_some_and(|n| (min..=max).contains(&n)) {
            return Err(LimitError::OutOfRange {
                key,
                min,
                max,
                unit,
                value: v.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn limits_parse_and_print() {
        let limits =
            ResourceLimits::from_value(&json!({"memory_mb": 64, "cpu_percent": 20})).unwrap();
        assert_eq!(limits.memory_mb, Some(64));
        assert_eq!(limits.cpu_percent, Some(20));
        assert_eq!(limits.to_string(), "memory 64 MB, cpu 20 %");
        assert_eq!(
            limits.to_value(),
            json!({"memory_mb": 64, "cpu_percent": 20})
        );
        assert!(ResourceLimits::from_value(&json!({})).unwrap().is_empty());
        assert_eq!(ResourceLimits::default().to_string(), "none");
    }

    #[test]
    fn bad_limits_name_the_key_and_what_is_allowed() {
        let err = |v: Value| ResourceLimits::from_value(&v).unwrap_err().to_string();
        assert_eq!(
            err(json!({"memory_mb": 0})),
            "limits.memory_mb must be a whole number from 16 to 1048576 (megabytes), got 0"
        );
        assert!(err(json!({"cpu_percent": -5})).contains("got -5"));
        assert!(err(json!({"pids": "64"})).contains("limits.pids must be a whole number"));
        assert!(err(json!({"pids": 1.5})).contains("got 1.5"));
        assert!(err(json!({"memory_mb": 1e12})).contains("from 16 to 1048576"));
        assert!(err(json!({"memory_mb": null})).contains("got null"));
        assert_eq!(
            err(json!({"memory": 64})),
            "unknown limit 'memory'; allowed: memory_mb, cpu_percent, pids, open_files"
        );
        assert!(err(json!([1])).contains("got an array"));
        // A patch may remove a limit with null, and nothing else.
        assert!(ResourceLimits::check_patch(&json!({"memory_mb": null})).is_ok());
        assert!(ResourceLimits::check_patch(&json!({"open_files": 0})).is_err());
    }
}

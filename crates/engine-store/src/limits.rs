//! The size caps on what people put in (migration `input_size_limits`): a strategy's
//! `config`, a command's and a run's `parameters` are at most [`MAX_INPUT_BYTES`] as
//! PostgreSQL's JSON text. The database refuses a larger row itself, saying the size
//! and the limit; [`size_refusal`] reads those words back, [`json_text_len`] lets the
//! manager refuse a merged config before an executor sees it.

use serde_json::Value;

/// The cap, in bytes of `octet_length(x::text)`; the migration's CHECKs hold the same.
pub const MAX_INPUT_BYTES: usize = 65536;

/// The constraints of the caps.
const SIZE_LIMITS: &[&str] = &[
    "config_size_limit",
    "command_parameters_size_limit",
    "run_parameters_size_limit",
];

/// The words of a size cap's refusal ("config is 70012 bytes; the limit is 65536"),
/// or `None` when `err` is not one.
pub fn size_refusal(err: &sqlx::Error) -> Option<String> {
    let db = err.as_database_error()?;
    SIZE_LIMITS
        .contains(&db.constraint()?)
        .then(|| db.message().to_string())
}

/// The length of `value` as `jsonb::text` writes it (compact JSON plus the space
/// PostgreSQL puts after each `:` and `,`); near the cap the database has the last word.
pub fn json_text_len(value: &Value) -> usize {
    let compact = serde_json::to_string(value).map_or(0, |text| text.len());
    compact + separators(value)
}

/// How many `:` and `,` separators `value` holds outside strings.
fn separators(value: &Value) -> usize {
    match value {
        Value::Object(map) => {
            let members = map.len();
            members + members.saturating_sub(1) + map.values().map(separators).sum::<usize>()
        }
        Value::Array(items) => {
            items.len().saturating_sub(1) + items.iter().map(separators).sum::<usize>()
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lengths_match_what_postgres_writes() {
        // `SELECT '{"a": [1, 2], "b": {"c": "x,y:z"}}'::jsonb::text`
        let value = json!({"a": [1, 2], "b": {"c": "x,y:z"}});
        assert_eq!(
            json_text_len(&value),
            r#"{"a": [1, 2], "b": {"c": "x,y:z"}}"#.len()
        );
        assert_eq!(json_text_len(&json!({})), 2);
        assert_eq!(json_text_len(&json!([])), 2);
    }
}

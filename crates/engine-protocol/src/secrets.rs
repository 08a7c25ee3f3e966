//! Secrets in a strategy's `config`: references resolved at spawn, and clear values
//! masked wherever a config is shown.
//!
//! A config value may be a *reference*, `{"secret": "<name>"}`: an object with
//! exactly the one key `secret` whose value is a string. The manager replaces each
//! reference by the secret's value only in what it hands an executor (stdin, the
//! control link); everything stored, published or shown keeps the reference.
//!
//! A value stored in clear under a key that looks secret ([`is_secret_key`]) is
//! shown as `"***"` by [`mask`]. References are shown as they are: they hold no
//! secret.

use serde_json::{Map, Value};

/// What [`mask`] shows in place of a secret-looking key's value.
pub const MASK: &str = "***";

/// The words a key is matched against (case-insensitive, anywhere in the key): a
/// key containing one of them is secret-looking.
pub const SECRET_KEY_WORDS: &[&str] = &[
    "secret",
    "password",
    "passwd",
    "passphrase",
    "api_key",
    "apikey",
    "private_key",
    "credential",
    "authorization",
];

/// The endings that make a key secret-looking (`access_token`, `auth-token`). A key
/// that is only `token` is not: in this engine it names a market symbol.
pub const SECRET_KEY_SUFFIXES: &[&str] = &["_token", "-token"];

/// Whether a config key looks like it holds a credential: it contains one of
/// [`SECRET_KEY_WORDS`], ends with one of [`SECRET_KEY_SUFFIXES`], or is `key`
/// (all case-insensitive).
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key == "key"
        || SECRET_KEY_WORDS.iter().any(|word| key.contains(word))
        || SECRET_KEY_SUFFIXES.iter().any(|end| key.ends_with(end))
}

/// The name a value refers to, if it is a reference: an object with exactly the one
/// key `secret` whose value is a string.
pub fn reference(value: &Value) -> Option<&str> {
    match value {
        Value::Object(map) if map.len() == 1 => map.get("secret")?.as_str(),
        _ => None,
    }
}

/// `value` as it may be shown: the value of every secret-looking key that is not
/// `null` and not a reference replaced by `"***"`, at any depth (in arrays too).
pub fn mask(value: &Value) -> Value {
    match value {
        Value::Object(map) if reference(value).is_none() => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let shown = if is_secret_key(k) && !v.is_null() && reference(v).is_none() {
                        Value::String(MASK.into())
                    } else {
                        mask(v)
                    };
                    (k.clone(), shown)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(mask).collect()),
        other => other.clone(),
    }
}

/// Whether `value` holds a reference anywhere.
pub fn has_references(value: &Value) -> bool {
    if reference(value).is_some() {
        return true;
    }
    match value {
        Value::Object(map) => map.values().any(has_references),
        Value::Array(items) => items.iter().any(has_references),
        _ => false,
    }
}

/// Whether `name` may name a secret: 1 to 128 ASCII letters, digits and `_`
/// (it is also part of an environment variable's name).
pub fn valid_name(name: &str) -> bool {
    (1..=128).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The environment variable a secret may come from: `ENGINE_SECRET_` and the name
/// upper-cased (`binance_key` → `ENGINE_SECRET_BINANCE_KEY`).
pub fn env_var(name: &str) -> String {
    format!("ENGINE_SECRET_{}", name.to_ascii_uppercase())
}

/// A reference that could not be resolved, and where in the config it sits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("secret reference '{name}' at {at} is not a valid name; a name is 1 to 128 letters, digits and _")]
    BadName { name: String, at: String },
    #[error("unknown secret reference '{name}' at {at}: not found in {looked}")]
    Unknown {
        name: String,
        at: String,
        /// Where it was looked for, in words.
        looked: String,
    },
}

/// A config with its references replaced by their values, and what keeps those
/// values out of text that comes back from the executor ([`Scrub`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub config: Value,
    pub scrub: Scrub,
}

/// The secret values a resolution used: [`Scrub::scrub`] hides them in text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrub {
    values: Vec<String>,
}

impl Scrub {
    /// `text` with every secret value used replaced by `***`: for an executor's
    /// words (its log tail, a rejection) that might quote one back.
    pub fn scrub(&self, text: &str) -> String {
        let mut text = text.to_string();
        for value in &self.values {
            if !value.is_empty() {
                text = text.replace(value.as_str(), MASK);
            }
        }
        text
    }

    /// Whether any reference was replaced.
    pub fn replaced_any(&self) -> bool {
        !self.values.is_empty()
    }
}

/// Where a secret is looked for, in words, by its name.
pub type Looked<'a> = &'a dyn Fn(&str) -> String;

/// `config` with every reference replaced by `lookup(name)`; the first reference
/// that is badly named or that `lookup` does not know is an error naming it, its
/// place (`config.exchange.api_key`) and `looked(name)` (where it was looked for).
pub fn resolve(
    config: &Value,
    looked: Looked<'_>,
    lookup: &mut dyn FnMut(&str) -> Option<String>,
) -> Result<Resolved, ReferenceError> {
    let mut values = Vec::new();
    let config = resolve_at(config, "config", looked, lookup, &mut values)?;
    Ok(Resolved {
        config,
        scrub: Scrub { values },
    })
}

fn resolve_at(
    value: &Value,
    at: &str,
    looked: Looked<'_>,
    lookup: &mut dyn FnMut(&str) -> Option<String>,
    values: &mut Vec<String>,
) -> Result<Value, ReferenceError> {
    if let Some(name) = reference(value) {
        if !valid_name(name) {
            return Err(ReferenceError::BadName {
                name: name.to_string(),
                at: at.to_string(),
            });
        }
        return match lookup(name) {
            Some(secret) => {
                values.push(secret.clone());
                Ok(Value::String(secret))
            }
            None => Err(ReferenceError::Unknown {
                name: name.to_string(),
                at: at.to_string(),
                looked: looked(name),
            }),
        };
    }
    Ok(match value {
        Value::Object(map) => {
            let mut out = Map::with_capacity(map.len());
            for (k, v) in map {
                let place = format!("{at}.{k}");
                out.insert(k.clone(), resolve_at(v, &place, looked, lookup, values)?);
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| resolve_at(v, &format!("{at}[{i}]"), looked, lookup, values))
                .collect::<Result<_, _>>()?,
        ),
        other => other.clone(),
    })
}

/// Parse a secrets file: one `name = value` a line; blank lines and lines starting
/// with `#` are skipped; the value is everything after the first `=`, trimmed (no
/// quoting: quotes are part of the value). A name defined twice, a line without
/// `=`, or a bad name is an error naming the line.
pub fn parse_secrets_file(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut secrets: Vec<(String, String)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            return Err(format!(
                "line {n} is not `name = value` (a line may also be blank or a # comment)"
            ));
        };
        let name = name.trim();
        if !valid_name(name) {
            return Err(format!(
                "line {n}: '{name}' is not a valid secret name; a name is 1 to 128 letters, digits and _"
            ));
        }
        if secrets.iter().any(|(known, _)| known == name) {
            return Err(format!("line {n}: '{name}' is defined twice"));
        }
        secrets.push((name.to_string(), value.trim().to_string()));
    }
    Ok(secrets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_looking_keys_are_masked_at_any_depth() {
        let config = json!({
            "token": "BTC-USD",
            "api_key": "k",
            "exchange": {"Secret": "s", "password": null, "access_token": "t", "fast": 5,
                         "PassPhrase": "p", "privateKey": "x", "private_key": "y"},
            "list": [{"key": "x"}],
        });
        let shown = mask(&config);
        assert_eq!(shown["token"], "BTC-USD");
        assert_eq!(shown["api_key"], MASK);
        assert_eq!(shown["exchange"]["Secret"], MASK);
        assert_eq!(shown["exchange"]["password"], Value::Null);
        assert_eq!(shown["exchange"]["access_token"], MASK);
        assert_eq!(shown["exchange"]["fast"], 5);
        assert_eq!(shown["exchange"]["PassPhrase"], MASK);
        assert_eq!(shown["exchange"]["private_key"], MASK);
        // `privateKey` has neither a listed word nor ending: shown.
        assert_eq!(shown["exchange"]["privateKey"], "x");
        assert_eq!(shown["list"][0]["key"], MASK);
    }

    #[test]
    fn references_are_shown_as_they_are() {
        let config = json!({
            "api_key": {"secret": "binance_key"},
            "nested": {"password": {"secret": "pw"}},
            "secret": {"secret": "top"},
            // Not a reference (two keys): its `secret` key is masked.
            "other": {"secret": "clear", "note": 1},
        });
        let shown = mask(&config);
        assert_eq!(shown["api_key"], json!({"secret": "binance_key"}));
        assert_eq!(shown["nested"]["password"], json!({"secret": "pw"}));
        assert_eq!(shown["secret"], json!({"secret": "top"}));
        assert_eq!(shown["other"]["secret"], MASK);
        assert_eq!(shown["other"]["note"], 1);
        // A secret-looking key whose value is an object that is not a reference: hidden whole.
        assert_eq!(
            mask(&json!({"credentials": {"user": "u"}}))["credentials"],
            MASK
        );
    }

    #[test]
    fn a_reference_is_an_object_with_exactly_a_string_secret() {
        assert_eq!(reference(&json!({"secret": "a"})), Some("a"));
        assert_eq!(reference(&json!({"secret": 1})), None);
        assert_eq!(reference(&json!({"secret": "a", "b": 1})), None);
        assert_eq!(reference(&json!("secret")), None);
        assert!(has_references(&json!({"a": [{"b": {"secret": "x"}}]})));
        assert!(!has_references(&json!({"a": [{"b": {"secret": 1}}]})));
    }

    #[test]
    fn resolve_replaces_nested_references_and_names_an_unknown_one() {
        let config = json!({
            "interval_ms": 50,
            "exchange": {"api_key": {"secret": "k1"}, "keys": [{"secret": "k2"}]},
        });
        let mut lookup = |name: &str| match name {
            "k1" => Some("value-one".to_string()),
            "k2" => Some("value-two".to_string()),
            _ => None,
        };
        let nowhere = |_: &str| "nowhere".to_string();
        let resolved = resolve(&config, &nowhere, &mut lookup).unwrap();
        assert_eq!(
            resolved.config,
            json!({"interval_ms": 50, "exchange": {"api_key": "value-one", "keys": ["value-two"]}})
        );
        assert!(resolved.scrub.replaced_any());
        assert_eq!(
            resolved.scrub.scrub("bad value 'value-one' and value-two"),
            "bad value '***' and ***"
        );

        let err = resolve(
            &json!({"a": {"b": [1, {"secret": "missing"}]}}),
            &|name| format!("the secrets file /x nor ${}", env_var(name)),
            &mut lookup,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown secret reference 'missing' at config.a.b[1]: not found in the secrets file /x nor $ENGINE_SECRET_MISSING"
        );
        let err = resolve(&json!({"a": {"secret": "no way"}}), &nowhere, &mut lookup).unwrap_err();
        assert!(matches!(err, ReferenceError::BadName { .. }), "{err}");

        let plain = resolve(&json!({"a": 1}), &nowhere, &mut lookup).unwrap();
        assert!(!plain.scrub.replaced_any());
    }

    #[test]
    fn env_var_names_are_upper_cased() {
        assert_eq!(env_var("binance_key"), "ENGINE_SECRET_BINANCE_KEY");
    }

    #[test]
    fn secrets_file_lines() {
        let text = "# exchange keys\n\nbinance_key = abc=def \n  other=  x y  \n";
        assert_eq!(
            parse_secrets_file(text).unwrap(),
            vec![
                ("binance_key".to_string(), "abc=def".to_string()),
                ("other".to_string(), "x y".to_string()),
            ]
        );
        assert_eq!(
            parse_secrets_file("a = 1\njust words\n").unwrap_err(),
            "line 2 is not `name = value` (a line may also be blank or a # comment)"
        );
        assert!(parse_secrets_file("a b = 1")
            .unwrap_err()
            .contains("line 1: 'a b' is not a valid secret name"));
        assert_eq!(
            parse_secrets_file("a = 1\na = 2").unwrap_err(),
            "line 2: 'a' is defined twice"
        );
    }
}

//! The market-data check of `add` and `start`. A config naming a token that no feed
//! publishes (`DOGE-USD` with only BTC and ETH simulated) is valid, and its strategy
//! would run without a tick forever; so `add` and `start` listen on the token's
//! `live_data:{token}` channel for [`LISTEN_FOR`] and warn (never fail) when nothing
//! arrived. The check runs while the command is carried out, so it rarely adds time.

use super::state;
use engine_protocol::redact::redact_url;
use engine_protocol::Channels;
use futures_util::StreamExt;
use serde_json::Value;
use std::time::Duration;

/// How long `add` and `start` listen for a tick on the strategy's token.
pub const LISTEN_FOR: Duration = Duration::from_secs(2);

/// The market-data token a config names: its `token` (as every built-in strategy
/// takes it). `None` for a strategy that takes no market data.
pub fn token_of(config: &Value) -> Option<&str> {
    config
        .get("token")
        .and_then(Value::as_str)
        .filter(|t| !t.trim().is_empty())
}

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedCheck {
    /// A message arrived on the channel.
    Flowing,
    /// Nothing arrived on `channel` within `waited`.
    Silent { channel: String, waited: Duration },
    /// The check could not be made (Redis unreachable): why.
    Unknown(String),
}

impl FeedCheck {
    /// The warning for strategy `name` on `token`, if there is one to give.
    pub fn warning(&self, name: &str, token: &str) -> Option<String> {
        match self {
            FeedCheck::Flowing => None,
            FeedCheck::Silent { channel, waited } => Some(format!(
                "warning: '{name}': nothing was published on {channel} in the {} enginectl listened; \
                 the strategy gets no ticks until a market-data feed publishes {token} \
                 (the manager marks it stale after its --stale-after); check the token in its config",
                humantime::format_duration(*waited)
            )),
            FeedCheck::Unknown(why) => Some(format!(
                "warning: '{name}': could not check for market data on {token}: {why}"
            )),
        }
    }
}

/// Listen on `live_data:{token}` for up to `wait`.
pub async fn check(redis_url: &str, channels: &Channels, token: &str, wait: Duration) -> FeedCheck {
    let channel = channels.live_data(token);
    let listen = async {
        let client = state::client(redis_url).map_err(|e| format!("{e:#}"))?;
        let mut pubsub = tokio::time::timeout(state::REDIS_TIMEOUT, client.get_async_pubsub())
            .await
            .map_err(|_| format!("connecting to Redis at {} timed out", redact_url(redis_url)))?
            .map_err(|e| format!("Redis at {} is unreachable: {e}", redact_url(redis_url)))?;
        pubsub
            .subscribe(&channel)
            .await
            .map_err(|e| format!("SUBSCRIBE {channel} failed: {e}"))?;
        let mut messages = pubsub.into_on_message();
        Ok::<_, String>(tokio::time::timeout(wait, messages.next()).await)
    };
    match listen.await {
        Ok(Ok(Some(_))) => FeedCheck::Flowing,
        Ok(_) => FeedCheck::Silent {
            channel,
            waited: wait,
        },
        Err(why) => FeedCheck::Unknown(why),
    }
}

/// The warnings for `strategies` (name and config): each distinct token is checked
/// once, all at the same time, for [`LISTEN_FOR`].
pub async fn warnings(
    redis_url: &str,
    channels: &Channels,
    strategies: &[(String, Value)],
) -> Vec<String> {
    let mut tokens: Vec<&str> = strategies.iter().filter_map(|(_, c)| token_of(c)).collect();
    tokens.sort_unstable();
    tokens.dedup();
    let checks = futures_util::future::join_all(
        tokens
            .iter()
            .map(|token| check(redis_url, channels, token, LISTEN_FOR)),
    )
    .await;
    strategies
        .iter()
        .filter_map(|(name, config)| {
            let token = token_of(config)?;
            let i = tokens.iter().position(|t| *t == token)?;
            checks[i].warning(name, token)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_token_is_the_configs_token() {
        assert_eq!(token_of(&json!({"token": "DOGE-USD"})), Some("DOGE-USD"));
        assert_eq!(token_of(&json!({"interval_ms": 5})), None);
        assert_eq!(token_of(&json!({"token": " "})), None);
        assert_eq!(token_of(&json!({"token": 5})), None);
    }

    #[test]
    fn silence_is_a_warning_that_says_what_was_checked() {
        let silent = FeedCheck::Silent {
            channel: "live_data:DOGE-USD".into(),
            waited: Duration::from_secs(2),
        };
        let text = silent.warning("doge", "DOGE-USD").unwrap();
        assert!(
            text.starts_with(
                "warning: 'doge': nothing was published on live_data:DOGE-USD in the 2s"
            ),
            "{text}"
        );
        assert_eq!(FeedCheck::Flowing.warning("doge", "DOGE-USD"), None);
    }
}

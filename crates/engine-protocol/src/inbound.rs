//! The check every message read from an executor's Redis channel passes before the
//! manager uses it (the metrics recorder and the dashboard relay alike): at most
//! [`MAX_MESSAGE_BYTES`], a JSON object, and on a per-strategy channel a
//! `strategy_id` equal to the channel's.

use crate::MAX_MESSAGE_BYTES;
use serde_json::{Map, Value};
use uuid::Uuid;

/// Why a message was dropped.
#[derive(Debug, thiserror::Error)]
pub enum MessageRejected {
    #[error("message of {0} bytes is over the 64 KiB limit")]
    TooLarge(usize),
    #[error("not JSON")]
    NotJson(#[source] serde_json::Error),
    #[error("not a JSON object but {0}")]
    NotAnObject(&'static str),
    #[error("strategy_id {claimed} does not match the channel's {channel}")]
    WrongStrategy { claimed: String, channel: Uuid },
}

/// Check one message. `channel_strategy` is the strategy id its channel names
/// (`strategy:metrics:{id}`, `strategy:status:{id}`), `None` for a shared channel.
/// Returns the parsed object.
pub fn check_message(
    payload: &[u8],
    channel_strategy: Option<Uuid>,
) -> Result<Map<String, Value>, MessageRejected> {
    if payload.len() > MAX_MESSAGE_BYTES {
        return Err(MessageRejected::TooLarge(payload.len()));
    }
    let object = match serde_json::from_slice(payload).map_err(MessageRejected::NotJson)? {
        Value::Object(object) => object,
        other => return Err(MessageRejected::NotAnObject(crate::json_kind(&other))),
    };
    if let Some(channel) = channel_strategy {
        let claimed = object.get("strategy_id").unwrap_or(&Value::Null);
        if claimed.as_str() != Some(channel.to_string().as_str()) {
            return Err(MessageRejected::WrongStrategy {
                claimed: claimed.to_string(),
                channel,
            });
        }
    }
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_an_object_of_its_channels_strategy() {
        let id = Uuid::new_v4();
        let good = format!("{{\"strategy_id\":\"{id}\",\"status\":\"running\"}}");
        let object = check_message(good.as_bytes(), Some(id)).unwrap();
        assert_eq!(object["status"], "running");
        // A shared channel (strategy:health) does not look at strategy_id.
        assert!(check_message(b"{\"cpu\":1}", None).is_ok());
    }

    #[test]
    fn rejects_another_strategys_message() {
        let id = Uuid::new_v4();
        let other = format!("{{\"strategy_id\":\"{}\"}}", Uuid::new_v4());
        assert!(matches!(
            check_message(other.as_bytes(), Some(id)),
            Err(MessageRejected::WrongStrategy { channel, .. }) if channel == id
        ));
        assert!(matches!(
            check_message(b"{}", Some(id)),
            Err(MessageRejected::WrongStrategy { claimed, .. }) if claimed == "null"
        ));
        let number = format!("{{\"strategy_id\":{}}}", 7);
        assert!(matches!(
            check_message(number.as_bytes(), Some(id)),
            Err(MessageRejected::WrongStrategy { .. })
        ));
    }

    #[test]
    fn rejects_what_is_not_a_json_object() {
        assert!(matches!(
            check_message(b"[1,2]", None),
            Err(MessageRejected::NotAnObject("an array"))
        ));
        assert!(matches!(
            check_message(b"{not json", None),
            Err(MessageRejected::NotJson(_))
        ));
        assert!(matches!(
            check_message(b"", None),
            Err(MessageRejected::NotJson(_))
        ));
    }

    #[test]
    fn rejects_a_message_over_64_kib_before_parsing_it() {
        let big = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(
            check_message(&big, None),
            Err(MessageRejected::TooLarge(n)) if n == MAX_MESSAGE_BYTES + 1
        ));
        let mut padded = b"{}".to_vec();
        padded.resize(MAX_MESSAGE_BYTES, b' ');
        assert!(check_message(&padded, None).is_ok());
    }
}

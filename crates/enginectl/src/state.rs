//! What `enginectl` reads from Redis: the state hashes `strategy:state:{id}` the
//! manager keeps (latest status and health of each strategy).

use anyhow::Context;
use engine_protocol::redact::redact_url;
use engine_protocol::Channels;
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

/// Connection and response timeout: a tool must not hang on a dead Redis.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// The fields of one state hash.
pub type StateHash = HashMap<String, String>;

pub fn client(url: &str) -> anyhow::Result<redis::Client> {
    // `#insecure` only with --tls-insecure, as for the manager.
    engine_protocol::redis_tls::check_redis_url(url, engine_store::tls::unverified_allowed())?;
    redis::Client::open(url).with_context(|| format!("invalid Redis URL {}", redact_url(url)))
}

/// Connect to Redis, giving up after [`REDIS_TIMEOUT`].
pub async fn connect(url: &str) -> anyhow::Result<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(REDIS_TIMEOUT))
        .set_response_timeout(Some(REDIS_TIMEOUT));
    client(url)?
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .with_context(|| {
            format!(
                "cannot connect to Redis at {} (is it running? check --redis-url / REDIS_URL)",
                redact_url(url)
            )
        })
}

/// The state hashes of `ids` (one round trip); missing hashes are left out.
pub async fn state_hashes(
    conn: &mut MultiplexedConnection,
    channels: &Channels,
    ids: &[Uuid],
) -> anyhow::Result<HashMap<Uuid, StateHash>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.hgetall(channels.state_key(*id));
    }
    let hashes: Vec<StateHash> = pipe
        .query_async(conn)
        .await
        .context("cannot read the strategy state hashes from Redis")?;
    Ok(ids
        .iter()
        .copied()
        .zip(hashes)
        .filter(|(_, h)| !h.is_empty())
        .collect())
}

/// A number field of a state hash (empty or absent → `None`).
pub fn number(hash: Option<&StateHash>, field: &str) -> Option<f64> {
    hash?
        .get(field)?
        .trim()
        .parse()
        .ok()
        .filter(|x: &f64| x.is_finite())
}

/// A time field of a state hash (RFC 3339; empty or absent → `None`).
pub fn time(hash: Option<&StateHash>, field: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    engine_protocol::parse_timestamp(hash?.get(field)?)
}

/// A boolean field of a state hash.
pub fn flag(hash: Option<&StateHash>, field: &str) -> Option<bool> {
    hash?.get(field)?.trim().parse().ok()
}

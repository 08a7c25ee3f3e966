//! `GET /api/runs/{id}/events`: a run's `strategy:run:{id}` channel as server-sent
//! events. The first event, `snapshot`, is the run's present state read from its row
//! (so a page that opens late sees where the run is); then each message of the
//! channel as an event named by its `event_type` (`started`, `progress`,
//! `ticker_completed`, `stage_completed`, `completed`, `error`, `cancelled`,
//! `timed_out`). After the final one, a last `snapshot` from the row (with the result)
//! and the stream ends; a run already over ends after its first snapshot.
//!
//! Pub/sub is lossy: the row is read every second as well, and a `snapshot` is sent
//! when it moved while the channel was quiet (Redis away) or when it is final.

use super::runs::{parse_run_id, queue_view, snapshot_event};
use super::AppState;
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use chrono::{DateTime, Utc};
use engine_protocol::inbound::check_message;
use engine_store::runs_api as db;
use futures_util::{Stream, StreamExt};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use uuid::Uuid;

/// How often the row is read under the channel.
const POLL: Duration = Duration::from_secs(1);

/// How often the row is read once the final event came, until it says so too.
const FINISH_POLL: Duration = Duration::from_millis(100);

/// How long the row may lag the final event before the stream ends without it.
const FINISH_WAIT: Duration = Duration::from_secs(5);

/// A channel silent this long (with the row moving) is taken for away.
const QUIET: Duration = Duration::from_secs(2);

const FINAL_EVENTS: [&str; 4] = ["completed", "error", "cancelled", "timed_out"];

/// One browser's view of one run.
struct Follow {
    state: Arc<AppState>,
    run_id: Uuid,
    strategy_id: Uuid,
    messages: Option<redis::aio::PubSubStream>,
    poll: Interval,
    last_updated: DateTime<Utc>,
    last_message: Instant,
    /// The final event came: the row is awaited until this deadline.
    finishing: Option<Instant>,
    done: bool,
}

/// `GET /api/runs/{id}/events`.
pub async fn events(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, super::error::ApiError> {
    let run_id = parse_run_id(&id)?;
    // Subscribe before the row is read, so that nothing falls between the two.
    let messages = subscribe(&state, run_id).await;
    let run = db::run(&state.shared.pool, run_id)
        .await
        .map_err(|e| super::error::ApiError::database("cannot read the run", e))?
        .ok_or_else(|| super::error::ApiError::not_found(format!("no run with id {run_id}")))?;
    let view = queue_view(&state).await?;
    let first = snapshot_event(&run, &view);
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    poll.reset();
    let follow = Follow {
        run_id,
        strategy_id: run.strategy_id,
        messages,
        poll,
        last_updated: run.updated_at,
        last_message: Instant::now(),
        finishing: None,
        done: run.state.is_final(),
        state: state.clone(),
    };
    let rest = futures_util::stream::unfold(follow, |mut follow| async move {
        let event = next_event(&mut follow).await?;
        Some((Ok(event), follow))
    });
    let stream = futures_util::stream::once(async move { Ok(first) })
        .chain(rest)
        .take_until(state.shared.cancel.clone().cancelled_owned());
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

async fn subscribe(state: &AppState, run_id: Uuid) -> Option<redis::aio::PubSubStream> {
    let channel = state.shared.channels.run(run_id);
    let connect = async {
        let mut pubsub = state.redis.get_async_pubsub().await?;
        pubsub.subscribe(&channel).await?;
        Ok::<_, redis::RedisError>(pubsub)
    };
    match tokio::time::timeout(Duration::from_secs(2), connect).await {
        Ok(Ok(pubsub)) => Some(pubsub.into_on_message()),
        Ok(Err(err)) => {
            tracing::debug!(%run_id, error = %err, "run events: no Redis subscription; following the row only");
            None
        }
        Err(_) => None,
    }
}

async fn next_message(messages: &mut Option<redis::aio::PubSubStream>) -> Option<redis::Msg> {
    match messages {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

/// The next event for the browser; `None` ends the stream.
async fn next_event(f: &mut Follow) -> Option<Event> {
    while !f.done {
        tokio::select! {
            msg = next_message(&mut f.messages) => {
                let Some(msg) = msg else {
                    f.messages = None; // Redis went away: the row carries on
                    continue;
                };
                if let Some(event) = channel_event(f, msg.get_payload_bytes()) {
                    return Some(event);
                }
            }
            _ = f.poll.tick() => {
                if let Some(event) = row_event(f).await {
                    return Some(event);
                }
            }
        }
    }
    None
}

/// A message of the run's channel as an event named by its `event_type`.
fn channel_event(f: &mut Follow, payload: &[u8]) -> Option<Event> {
    let object = check_message(payload, Some(f.strategy_id)).ok()?;
    let kind = object
        .get("event_type")
        .and_then(|v| v.as_str())
        .unwrap_or("progress")
        .to_string();
    f.last_message = Instant::now();
    if FINAL_EVENTS.contains(&kind.as_str()) && f.finishing.is_none() {
        f.finishing = Some(Instant::now() + FINISH_WAIT);
        f.poll = tokio::time::interval(FINISH_POLL);
    }
    Some(
        Event::default()
            .event(kind)
            .data(serde_json::Value::Object(object).to_string()),
    )
}

/// The row, when it says something the channel did not: it is final, or it moved
/// while the channel was quiet.
async fn row_event(f: &mut Follow) -> Option<Event> {
    if f.finishing
        .is_some_and(|deadline| Instant::now() >= deadline)
    {
        f.done = true;
        return None;
    }
    let run = match db::run(&f.state.shared.pool, f.run_id).await {
        Ok(Some(run)) => run,
        Ok(None) => {
            f.done = true;
            let gone = serde_json::json!({"run_id": f.run_id, "event_type": "gone",
                "message": "the run was deleted (with its strategy)"});
            return Some(Event::default().event("gone").data(gone.to_string()));
        }
        Err(_) => return None, // the database is away: try again at the next tick
    };
    let quiet = f.last_message.elapsed() >= QUIET && f.finishing.is_none();
    let moved = run.updated_at > f.last_updated;
    if !(run.state.is_final() || (moved && quiet)) {
        return None;
    }
    f.last_updated = run.updated_at;
    f.done = run.state.is_final();
    let view = queue_view(&f.state).await.ok()?;
    Some(snapshot_event(&run, &view))
}

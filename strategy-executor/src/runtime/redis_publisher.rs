//! The Redis publisher task: status and metrics messages through a reconnecting
//! connection; a failure is logged once per outage and never reaches the strategy.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Capacity of the outgoing message channel; when full, messages are dropped.
const PUBLISH_CHANNEL_CAPACITY: usize = 256;
const REDIS_PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

/// What the loop hands to the Redis publisher.
#[derive(Debug)]
pub(super) enum Outgoing {
    Publish {
        channel: String,
        payload: String,
    },
    /// Answered once every message before it was attempted.
    Flush(oneshot::Sender<()>),
}
/// Publishes what the loop hands it, in order, through one reconnecting connection.
pub(super) struct RedisPublisher {
    client: redis::Client,
    outbound: mpsc::Receiver<Outgoing>,
    cancel: CancellationToken,
}

impl RedisPublisher {
    /// The task, and the loop's end of its queue.
    pub(super) fn new(
        client: redis::Client,
        cancel: CancellationToken,
    ) -> (RedisPublisher, mpsc::Sender<Outgoing>) {
        let (tx, outbound) = mpsc::channel(PUBLISH_CHANNEL_CAPACITY);
        let publisher = RedisPublisher {
            client,
            outbound,
            cancel,
        };
        (publisher, tx)
    }

    pub(super) async fn run(mut self) {
        let mut connection = match self.connection_manager() {
            Ok(connection) => connection,
            Err(err) => {
                tracing::error!("redis publisher cannot start; nothing will be published: {err}");
                self.answer_flushes_only().await;
                return;
            }
        };
        let mut in_outage = false;
        loop {
            let outgoing = tokio::select! {
                _ = self.cancel.cancelled() => return,
                outgoing = self.outbound.recv() => match outgoing {
                    Some(outgoing) => outgoing,
                    None => return,
                },
            };
            match outgoing {
                Outgoing::Flush(done) => {
                    let _ = done.send(());
                }
                Outgoing::Publish { channel, payload } => {
                    let failure = publish(&mut connection, &channel, &payload).await;
                    if failure.as_ref().is_some_and(|f| f.refused_login) {
                        // The manager reconnects by itself only after an I/O error; a
                        // refused login (its Redis user not made again yet after a
                        // Redis restart) would stay its answer for good.
                        if let Ok(fresh) = self.connection_manager() {
                            connection = fresh;
                        }
                    }
                    log_outage(&channel, failure.map(|f| f.text), &mut in_outage);
                }
            }
        }
    }

    /// A connection manager that connects on its first use.
    fn connection_manager(&self) -> redis::RedisResult<ConnectionManager> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        ConnectionManager::new_lazy_with_config(self.client.clone(), config)
    }

    /// Without a connection: messages are dropped, flushes answered.
    async fn answer_flushes_only(&mut self) {
        while let Some(outgoing) = self.outbound.recv().await {
            if let Outgoing::Flush(done) = outgoing {
                let _ = done.send(());
            }
        }
    }
}

/// Why a message was not published.
struct PublishFailure {
    text: String,
    /// Redis refused the login (a wrong password or an unknown user).
    refused_login: bool,
}

/// Publish one message; the failure, if any.
async fn publish(
    connection: &mut ConnectionManager,
    channel: &str,
    payload: &str,
) -> Option<PublishFailure> {
    let published = tokio::time::timeout(
        REDIS_PUBLISH_TIMEOUT,
        connection.publish::<_, _, i64>(channel, payload),
    )
    .await;
    match published {
        Ok(Ok(_)) => None,
        Ok(Err(err)) => Some(PublishFailure {
            refused_login: err.kind() == redis::ErrorKind::AuthenticationFailed
                || matches!(err.code(), Some("WRONGPASS" | "NOAUTH")),
            text: err.to_string(),
        }),
        Err(_) => Some(PublishFailure {
            text: "timed out".to_string(),
            refused_login: false,
        }),
    }
}

/// Log the first failure of an outage as a warning and its end, the rest at debug.
fn log_outage(channel: &str, failure: Option<String>, in_outage: &mut bool) {
    match failure {
        None if *in_outage => {
            tracing::info!("publishing to redis works again");
            *in_outage = false;
        }
        None => {}
        Some(err) if !*in_outage => {
            tracing::warn!(
                %channel,
                "publishing to redis failed: {err}; the strategy keeps running (further failures are not logged until it works again)"
            );
            *in_outage = true;
        }
        Some(err) => {
            tracing::debug!(%channel, "redis still unreachable for publishing: {err}")
        }
    }
}

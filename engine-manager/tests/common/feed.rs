//! Market data for the tests: ticks of one token published on its `live_data`
//! channel, in the test's Redis namespace, until the feed is dropped.

use super::TestEngine;
use redis::AsyncCommands;
use serde_json::json;
use std::time::Duration;

/// Publishes a tick of a token every `every`, its prices taken in turn from a list,
/// until dropped.
pub struct Feed(tokio::task::JoinHandle<()>);

impl Feed {
    /// Publish ticks of `token` at `prices` in turn (over and over), one every `every`.
    pub async fn start(engine: &TestEngine, token: &str, prices: &[f64], every: Duration) -> Feed {
        let mut redis = engine.redis_conn().await;
        let channel = engine.channels.live_data(token);
        let token = token.to_string();
        let prices = prices.to_vec();
        Feed(tokio::spawn(async move {
            for price in prices.iter().cycle() {
                let tick = json!({"token": token, "price": price, "timestamp": chrono::Utc::now()});
                let _: Result<i64, _> = redis.publish(&channel, tick.to_string()).await;
                tokio::time::sleep(every).await;
            }
        }))
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.0.abort();
    }
}

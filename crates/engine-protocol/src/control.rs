//! The private control link between the manager and each executor.
//!
//! The manager listens on a Unix socket; every executor connects to it (and reconnects
//! after a manager restart), says [`ExecutorMessage::Hello`], then reports its state
//! changes and acknowledges commands. Readiness and acknowledgements therefore never
//! depend on Redis pub/sub, which is lossy. Frames are JSON objects, one per line.
//! The manager checks the peer's pid (SO_PEERCRED) against the pid it supervises, so
//! a process cannot speak for a strategy it does not run.

use crate::messages::{ExecutorCommand, Status};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// The longest frame either side accepts.
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;

/// Exit code of an executor whose strategy could not be created: unknown
/// `strategy_type` or a config it rejects. Restarting would not help.
pub const EXIT_BAD_CONFIG: i32 = 2;
/// Exit code of an executor whose strategy halted itself (`ctx.halt(reason)`): the
/// engine must not start it again until an operator does.
pub const EXIT_HALTED: i32 = 4;
/// Exit code of an executor whose lease ran out (cluster only, CONTRACT.md §7): it
/// stopped trading at the deadline because its node did not renew the lease.
pub const EXIT_FENCED: i32 = 5;

/// Executor → manager.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecutorMessage {
    /// First frame on every connection.
    Hello {
        strategy_id: Uuid,
        pid: u32,
        status: Status,
    },
    /// A state transition of the strategy (e.g. `running` once initialised).
    State {
        status: Status,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        command_id: Option<Uuid>,
    },
    /// The outcome of a command.
    Ack {
        command_id: Uuid,
        ok: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// The strategy ended itself for good; the executor exits with [`EXIT_HALTED`].
    Halted { reason: String },
    /// The broker's state (positions, realised PnL, counts) for the next executor of
    /// this strategy: sent once the strategy started, after fills (at most once a
    /// metrics interval) and before the process exits. The manager keeps the latest
    /// in `strategy_configs.broker_state` and hands it back in the [`SpawnInput`].
    BrokerState {
        state: Value,
        /// Why the saved state given at spawn was not used (unreadable, or saved by
        /// another `strategy_type`): the broker started fresh.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        discarded: Option<String>,
    },
    /// The end of an interval execution ([`ManagerMessage::Execute`]): `ok`, or the
    /// strategy's error; `duration_ms` as the executor measured `on_execute`.
    Executed {
        execution_id: Uuid,
        ok: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// What the strategy said about an execution that ended well.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        duration_ms: u64,
        /// When `on_execute` began, by the executor's clock (absent from older
        /// executors).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        started_at: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// Paper orders filled since the last such frame (CONTRACT.md §7), oldest first:
    /// sent after a callback that filled, batched (at most [`ORDERS_PER_FRAME`] a
    /// frame, at most about every 100 ms), and kept across a lost link up to a bound.
    /// The manager records them in `strategy_orders`.
    Orders { orders: Vec<OrderReport> },
}

/// The most orders in one [`ExecutorMessage::Orders`] frame (each about 200 bytes
/// of JSON: well inside [`MAX_FRAME_BYTES`]).
pub const ORDERS_PER_FRAME: usize = 500;

/// Which way a paper order went (`strategy_orders.side`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderSide {
    Buy,
    Sell,
}

impl OrderSide {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderSide::Buy => "buy",
            OrderSide::Sell => "sell",
        }
    }
}

/// One filled paper order, as an executor reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderReport {
    /// `e{epoch}-{owner}-{session}-{seq}`: unique per strategy, carrying the epoch.
    pub client_order_id: String,
    /// The lease epoch the executor traded under (the one in the id).
    pub lease_epoch: i64,
    pub token: String,
    pub side: OrderSide,
    pub quantity: f64,
    pub price: f64,
    #[serde(default)]
    pub fee: f64,
    /// When it filled (the executor's clock; a bar's time in a backtest).
    pub at: DateTime<Utc>,
}

/// The longest client order id the manager records.
pub const MAX_CLIENT_ORDER_ID: usize = 200;

impl OrderReport {
    /// Why the manager would not record this order (`None`: it is fine): numbers
    /// that cannot be an order's, an empty or overlong id or token.
    pub fn problem(&self) -> Option<String> {
        let id = &self.client_order_id;
        if id.is_empty() || id.len() > MAX_CLIENT_ORDER_ID {
            return Some(format!(
                "client_order_id must be 1 to {MAX_CLIENT_ORDER_ID} characters, got {}",
                id.len()
            ));
        }
        if self.token.is_empty() || self.token.len() > MAX_CLIENT_ORDER_ID {
            return Some(format!(
                "order {id}: token must be 1 to {MAX_CLIENT_ORDER_ID} characters"
            ));
        }
        if !(self.quantity.is_finite() && self.quantity > 0.0) {
            return Some(format!(
                "order {id}: quantity {} must be a finite number above zero",
                self.quantity
            ));
        }
        if !(self.price.is_finite() && self.price > 0.0) {
            return Some(format!(
                "order {id}: price {} must be a finite number above zero",
                self.price
            ));
        }
        if !(self.fee.is_finite() && self.fee >= 0.0) {
            return Some(format!(
                "order {id}: fee {} must be a finite number, zero or more",
                self.fee
            ));
        }
        None
    }
}

/// What the manager writes on an executor's stdin (with `--stdin-envelope`): the
/// config, and the broker state the previous executor reported, if any.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpawnInput {
    pub config: Value,
    #[serde(default)]
    pub broker_state: Option<Value>,
    /// The strategy has an `execution_interval_s`: an executor whose strategy type
    /// does not support interval execution refuses to start ([`EXIT_BAD_CONFIG`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interval: bool,
    /// In a cluster (`--cluster`): the lease this executor trades under. It stops
    /// trading and exits when `deadline_ms` passes without a renewal
    /// ([`ManagerMessage::Lease`]). `None` without `--cluster`: it outlives the manager.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseGrant>,
    /// `strategy_configs.lease_epoch` when spawned: what client order ids carry
    /// outside a cluster (in one, `lease.epoch` says the same). `None` from an older
    /// manager: epoch 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
}

impl SpawnInput {
    /// The lease epoch this executor's orders carry: its lease's in a cluster, else
    /// the strategy's `lease_epoch` (0 by default).
    pub fn order_epoch(&self) -> i64 {
        self.lease
            .map(|lease| lease.epoch)
            .or(self.epoch)
            .unwrap_or(0)
    }
}

/// A cluster node's lease on one strategy, as its executor sees it (CONTRACT.md §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrant {
    /// `strategy_configs.lease_epoch` of the owner: carried in client order ids.
    pub epoch: i64,
    /// When the lease ends unless renewed, in milliseconds of the host's
    /// `CLOCK_MONOTONIC` (shared by every process of the host, unlike wall time it
    /// never steps): the executor compares it with its own reading of that clock.
    pub deadline_ms: u64,
}

/// Manager → executor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ManagerMessage {
    Command(ExecutorCommand),
    /// Run the strategy's interval step (`Strategy::on_execute`) once now; answered
    /// by [`ExecutorMessage::Executed`] with the same `execution_id`.
    Execute {
        execution_id: Uuid,
    },
    /// The lease was renewed (cluster only): the new deadline.
    Lease(LeaseGrant),
}

/// The host's `CLOCK_MONOTONIC` in milliseconds: the clock lease deadlines
/// ([`LeaseGrant::deadline_ms`]) are given in, the same in every process of a host.
pub fn monotonic_ms() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64) * 1000 + (t.tv_nsec as u64) / 1_000_000
}

impl LeaseGrant {
    /// Milliseconds left before the deadline (0 once it passed).
    pub fn remaining_ms(&self) -> u64 {
        self.deadline_ms.saturating_sub(monotonic_ms())
    }
}

/// One frame as a line (JSON plus `\n`).
pub fn encode_frame<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(msg).expect("control frames always serialize");
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execution_frames_round_trip() {
        let id = Uuid::new_v4();
        let line = encode_frame(&ManagerMessage::Execute { execution_id: id });
        let text = std::str::from_utf8(&line).unwrap();
        assert_eq!(
            text,
            format!("{{\"type\":\"execute\",\"execution_id\":\"{id}\"}}\n")
        );
        let done = ExecutorMessage::Executed {
            execution_id: id,
            ok: false,
            error: Some("no price yet".into()),
            message: None,
            duration_ms: 12,
            started_at: Some(chrono::Utc::now()),
        };
        let back: ExecutorMessage = serde_json::from_slice(&encode_frame(&done)).unwrap();
        assert_eq!(back, done);
        // An older executor's frame, without `started_at`, still reads.
        let old = format!(
            "{{\"type\":\"executed\",\"execution_id\":\"{id}\",\"ok\":true,\"duration_ms\":3}}"
        );
        match serde_json::from_str::<ExecutorMessage>(&old).unwrap() {
            ExecutorMessage::Executed { started_at, .. } => assert_eq!(started_at, None),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_interval_flag_is_optional_in_the_spawn_input() {
        let input: SpawnInput = serde_json::from_str(r#"{"config": {}}"#).unwrap();
        assert!(!input.interval);
        let text = serde_json::to_string(&SpawnInput {
            config: serde_json::json!({}),
            broker_state: None,
            interval: true,
            lease: None,
            epoch: None,
        })
        .unwrap();
        assert!(text.contains(r#""interval":true"#), "{text}");
        assert!(!text.contains("epoch"), "{text}");
    }

    #[test]
    fn the_order_epoch_is_the_leases_then_the_strategys_then_zero() {
        let mut input: SpawnInput = serde_json::from_str(r#"{"config": {}}"#).unwrap();
        assert_eq!(input.order_epoch(), 0);
        input.epoch = Some(4);
        assert_eq!(input.order_epoch(), 4);
        input.lease = Some(LeaseGrant {
            epoch: 5,
            deadline_ms: 1,
        });
        assert_eq!(input.order_epoch(), 5);
    }

    #[test]
    fn order_frames_round_trip_and_bad_orders_are_named() {
        let order = OrderReport {
            client_order_id: "e2-1a2b3c4d-s-1".into(),
            lease_epoch: 2,
            token: "BTC-USD".into(),
            side: OrderSide::Sell,
            quantity: 1.5,
            price: 100.0,
            fee: 0.0,
            at: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
        };
        assert_eq!(order.problem(), None);
        let frame = ExecutorMessage::Orders {
            orders: vec![order.clone()],
        };
        let text = String::from_utf8(encode_frame(&frame)).unwrap();
        assert!(
            text.starts_with(r#"{"type":"orders","orders":[{"client_order_id":"e2-"#),
            "{text}"
        );
        assert!(text.contains(r#""side":"sell""#), "{text}");
        assert_eq!(
            serde_json::from_str::<ExecutorMessage>(&text).unwrap(),
            frame
        );
        let bad = OrderReport {
            price: f64::NAN,
            ..order.clone()
        };
        assert!(bad.problem().unwrap().contains("price NaN"));
        let bad = OrderReport {
            client_order_id: String::new(),
            ..order.clone()
        };
        assert!(bad.problem().unwrap().contains("client_order_id"));
        let bad = OrderReport { fee: -1.0, ..order };
        assert!(bad.problem().unwrap().contains("fee -1"));
    }
}

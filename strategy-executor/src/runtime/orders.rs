//! The paper orders the strategy fills, reported to the manager on the control link
//! for `strategy_orders` (CONTRACT.md §7): taken from the host after every callback,
//! sent once [`ORDERS_BATCH`] wait or the oldest has waited [`ORDERS_EVERY`], and
//! before the process exits. Without a control link (an executor run by hand) the
//! fills are not kept at all.
//!
//! A full link queue does not lose them: they wait here for the next try, at most
//! [`MAX_WAITING_ORDERS`] (past it the oldest go, counted in the log). Across a lost
//! link the link task keeps them (`control_link.rs`).

use super::control_link::LinkOutbound;
use super::event_loop::EventLoop;
use engine_protocol::control::{ExecutorMessage, OrderReport, OrderSide, ORDERS_PER_FRAME};
use std::time::Duration;
use strategy_sdk::{Fill, Side};
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::Instant;

/// Orders that are sent at once, without waiting for [`ORDERS_EVERY`].
pub(super) const ORDERS_BATCH: usize = 100;
/// How long the oldest unsent order waits at most.
pub(super) const ORDERS_EVERY: Duration = Duration::from_millis(100);
/// Orders kept here while the link queue is full.
const MAX_WAITING_ORDERS: usize = 20_000;

/// Orders filled and not handed to the link yet.
#[derive(Debug, Default)]
pub(super) struct OrderOutbox {
    /// The lease epoch the orders carry.
    epoch: i64,
    waiting: Vec<OrderReport>,
    /// When the waiting ones are due.
    due: Option<Instant>,
    dropped: u64,
}

impl OrderOutbox {
    pub(super) fn new(epoch: i64) -> Self {
        OrderOutbox {
            epoch,
            ..OrderOutbox::default()
        }
    }

    /// When the waiting orders are due to be sent.
    pub(super) fn due(&self) -> Option<Instant> {
        self.due
    }

    fn push(&mut self, fill: Fill, at: chrono::DateTime<chrono::Utc>) {
        if self.waiting.len() >= MAX_WAITING_ORDERS {
            self.waiting.remove(0);
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                tracing::warn!(
                    dropped = self.dropped,
                    "the control link does not take orders; the oldest unsent ones were dropped"
                );
            }
        }
        self.waiting.push(report(fill, self.epoch, at));
        self.due
            .get_or_insert_with(|| Instant::now() + ORDERS_EVERY);
    }
}

/// The report of one fill.
pub(super) fn report(fill: Fill, epoch: i64, at: chrono::DateTime<chrono::Utc>) -> OrderReport {
    OrderReport {
        client_order_id: fill.client_order_id,
        lease_epoch: epoch,
        token: fill.token,
        side: match fill.side {
            Side::Buy => OrderSide::Buy,
            Side::Sell => OrderSide::Sell,
        },
        quantity: fill.qty,
        price: fill.price,
        fee: fill.fee,
        at,
    }
}

impl EventLoop {
    /// After a callback: take its fills; send them if [`ORDERS_BATCH`] wait.
    pub(super) fn collect_orders(&mut self) {
        if self.out.link.is_none() {
            return;
        }
        let fills = self.host.take_fills();
        if fills.is_empty() {
            return;
        }
        let at = chrono::Utc::now();
        for fill in fills {
            self.orders.push(fill, at);
        }
        if self.orders.waiting.len() >= ORDERS_BATCH {
            self.send_orders();
        }
    }

    /// Hand the waiting orders to the link task, [`ORDERS_PER_FRAME`] a frame. What
    /// a full queue does not take waits for the next try.
    pub(super) fn send_orders(&mut self) {
        let Some(link) = &self.out.link else {
            return;
        };
        self.orders.due = None;
        let mut waiting = std::mem::take(&mut self.orders.waiting);
        while !waiting.is_empty() {
            let rest = waiting.split_off(waiting.len().min(ORDERS_PER_FRAME));
            let frame = LinkOutbound::Frame(ExecutorMessage::Orders { orders: waiting });
            match link.frames.try_send(frame) {
                Ok(()) => waiting = rest,
                Err(TrySendError::Full(LinkOutbound::Frame(ExecutorMessage::Orders {
                    mut orders,
                }))) => {
                    orders.extend(rest);
                    self.orders.waiting = orders;
                    self.orders.due = Some(Instant::now() + ORDERS_EVERY);
                    tracing::debug!("control link queue is full; orders wait for the next try");
                    return;
                }
                Err(_) => return, // the link task is gone: the process is exiting
            }
        }
    }
}

/// Ready when the waiting orders are due (never when none wait).
pub(super) async fn orders_due(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(n: u64) -> Fill {
        Fill {
            client_order_id: format!("e1-00000000-s-{n}"),
            token: "BTC".into(),
            side: Side::Sell,
            qty: 2.0,
            price: 10.0,
            realised_pnl: 0.0,
            fee: 0.5,
        }
    }

    #[test]
    fn a_fill_becomes_a_report_under_the_outbox_epoch() {
        let at = chrono::Utc::now();
        let mut outbox = OrderOutbox::new(7);
        assert!(outbox.due().is_none());
        outbox.push(fill(1), at);
        assert!(outbox.due().is_some(), "due once one waits");
        let r = &outbox.waiting[0];
        assert_eq!(r.client_order_id, "e1-00000000-s-1");
        assert_eq!(r.lease_epoch, 7);
        assert_eq!(r.side, OrderSide::Sell);
        assert_eq!((r.quantity, r.price, r.fee), (2.0, 10.0, 0.5));
        assert_eq!(r.at, at);
    }

    #[test]
    fn the_waiting_orders_are_bounded_and_the_oldest_go() {
        let at = chrono::Utc::now();
        let mut outbox = OrderOutbox::new(0);
        for n in 0..MAX_WAITING_ORDERS as u64 + 2 {
            outbox.push(fill(n), at);
        }
        assert_eq!(outbox.waiting.len(), MAX_WAITING_ORDERS);
        assert_eq!(outbox.dropped, 2);
        assert_eq!(outbox.waiting[0].client_order_id, "e1-00000000-s-2");
    }
}

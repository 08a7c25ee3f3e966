//! Round-trip trades, built from a backtest's fills.

use crate::broker::{Fill, Side, EPSILON};
use chrono::{DateTime, Utc};
use serde::Serialize;

/// Which way a trade was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Long,
    Short,
}

/// One round trip, from flat to flat (see the [module docs](super)).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trade {
    pub direction: Direction,
    /// The bar time of the fill that opened it.
    pub entry_time: DateTime<Utc>,
    /// The bar time of the fill that closed it.
    pub exit_time: DateTime<Utc>,
    /// The largest position held during it (positive).
    pub qty: f64,
    /// The value put in: quantity × price of every fill that opened or added to it.
    pub entry_value: f64,
    /// Realised profit or loss, less every fee paid on it.
    pub pnl: f64,
    /// `pnl / entry_value`.
    pub return_ratio: f64,
    /// Closed by the backtest at the last bar, not by the strategy.
    pub closed_at_end: bool,
}

/// Follows the position fill by fill and cuts it into trades.
#[derive(Debug, Default)]
pub(crate) struct TradeBook {
    position: f64,
    open: Option<Trade>,
    closed: Vec<Trade>,
}

impl TradeBook {
    pub(crate) fn is_open(&self) -> bool {
        self.open.is_some()
    }

    pub(crate) fn record_all(&mut self, fills: &[Fill], ts: DateTime<Utc>, at_end: bool) {
        for fill in fills {
            self.record(fill, ts, at_end);
        }
    }

    fn record(&mut self, fill: &Fill, ts: DateTime<Utc>, at_end: bool) {
        let delta = match fill.side {
            Side::Buy => fill.qty,
            Side::Sell => -fill.qty,
        };
        let reducing = self.position.abs() >= EPSILON && self.position.signum() != delta.signum();
        let closing_qty = if reducing {
            fill.qty.min(self.position.abs())
        } else {
            0.0
        };
        let opening_qty = fill.qty - closing_qty;
        let after = self.position + delta;
        self.position = if after.abs() < EPSILON { 0.0 } else { after };
        if closing_qty > 0.0 {
            if let Some(trade) = &mut self.open {
                trade.pnl += fill.realised_pnl - fill.fee * closing_qty / fill.qty;
                trade.exit_time = ts;
                trade.closed_at_end = at_end;
            }
            // Flat, or flipped: this trade is over.
            if self.position == 0.0 || self.position.signum() == delta.signum() {
                if let Some(mut trade) = self.open.take() {
                    trade.return_ratio = trade.pnl / trade.entry_value;
                    self.closed.push(trade);
                }
            }
        }
        if opening_qty >= EPSILON {
            let trade = self.open.get_or_insert(Trade {
                direction: if delta > 0.0 {
                    Direction::Long
                } else {
                    Direction::Short
                },
                entry_time: ts,
                exit_time: ts,
                qty: 0.0,
                entry_value: 0.0,
                pnl: 0.0,
                return_ratio: 0.0,
                closed_at_end: false,
            });
            trade.entry_value += opening_qty * fill.price;
            trade.pnl -= fill.fee * opening_qty / fill.qty;
            trade.qty = trade.qty.max(self.position.abs());
        }
    }

    pub(crate) fn into_trades(self) -> Vec<Trade> {
        self.closed
    }
}

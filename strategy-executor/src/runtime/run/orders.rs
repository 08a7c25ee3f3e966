//! A backtest's fills on their way to `strategy_orders`: appended as CSV lines to
//! the run's orders file (`{runs_dir}/{run_id}.orders`, see
//! [`engine_protocol::runs::OrderLine`]), which the manager copies in bulk at the
//! run's end. At most [`MAX_RUN_ORDERS`] are written; past it they are counted.

use engine_protocol::runs::{OrderLine, MAX_RUN_ORDERS};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use strategy_sdk::backtest::TimedFill;
use strategy_sdk::Side;

/// The orders file, open for appending.
pub(super) struct OrdersFile {
    file: BufWriter<File>,
    line: Vec<u8>,
    written: u64,
    /// Fills past [`MAX_RUN_ORDERS`], not written.
    over: u64,
}

impl OrdersFile {
    pub(super) fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(OrdersFile {
            file: BufWriter::with_capacity(64 * 1024, file),
            line: Vec::with_capacity(160),
            written: 0,
            over: 0,
        })
    }

    /// Append `orders`.
    pub(super) fn write(&mut self, orders: Vec<TimedFill>) -> io::Result<()> {
        for TimedFill { at, fill } in orders {
            if self.written >= MAX_RUN_ORDERS {
                self.over += 1;
                continue;
            }
            self.line.clear();
            OrderLine {
                client_order_id: &fill.client_order_id,
                token: &fill.token,
                side: match fill.side {
                    Side::Buy => "buy",
                    Side::Sell => "sell",
                },
                quantity: fill.qty,
                price: fill.price,
                fee: fill.fee,
                at,
            }
            .write_csv(&mut self.line);
            self.file.write_all(&self.line)?;
            self.written += 1;
        }
        Ok(())
    }

    /// Write out what is buffered; how many were written and how many were not.
    pub(super) fn finish(&mut self) -> io::Result<(u64, u64)> {
        self.file.flush()?;
        if self.over > 0 {
            tracing::warn!(
                written = self.written,
                not_written = self.over,
                "the run filled more than {MAX_RUN_ORDERS} orders; only the first are recorded"
            );
        }
        Ok((self.written, self.over))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strategy_sdk::Fill;

    #[test]
    fn fills_become_csv_lines() {
        let dir = std::env::temp_dir().join(format!("orders-file-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("run.orders");
        let mut file = OrdersFile::open(&path).unwrap();
        let at = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let fill = Fill {
            client_order_id: "e2-0000abcd-r1.0-1".into(),
            token: "A\"B".into(),
            side: Side::Sell,
            qty: 1.5,
            price: 10.25,
            realised_pnl: 0.0,
            fee: 0.01,
        };
        file.write(vec![TimedFill { at, fill }]).unwrap();
        assert_eq!(file.finish().unwrap(), (1, 0));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "\"e2-0000abcd-r1.0-1\",\"A\"\"B\",sell,1.5,10.25,0.01,2023-11-14T22:13:20.000000Z\n"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}

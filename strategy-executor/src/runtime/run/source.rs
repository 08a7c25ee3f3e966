//! The run's bars, streamed from its bars files (one, or a large run's parts in order): row by row through
//! [`BarsReader`], never the whole file in memory, and read while the manager still
//! writes it ([`GrowingFile`]), with how far the reading is (the run's progress).

use chrono::{DateTime, Utc};
use engine_protocol::runs::bars_file::{BarsFileError, BarsReader, GrowingFile};
use std::collections::VecDeque;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use strategy_sdk::Bar;

/// Bytes of the file read into the buffer at a time.
const READ_BUFFER: usize = 256 * 1024;

/// The bars files, open one after the other.
pub(super) struct BarsSource {
    reader: BarsReader<BufReader<GrowingFile>>,
    /// The parts still to read after the open one, in order.
    more: VecDeque<PathBuf>,
    /// Rows of the parts already read.
    rows_before: u64,
    start: DateTime<Utc>,
    /// The run's span in seconds (at least 1).
    span_s: f64,
    symbols: usize,
    /// The time of the last bar read.
    last: Option<DateTime<Utc>>,
}

impl BarsSource {
    /// Open the bars of a run over `symbols` symbols from `start` to `end`: the file
    /// at `path`, then those of `more` in order.
    pub(super) fn open(
        path: &Path,
        more: &[PathBuf],
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        symbols: usize,
    ) -> Result<Self, BarsFileError> {
        Ok(BarsSource {
            reader: open_part(path)?,
            more: more.iter().cloned().collect(),
            rows_before: 0,
            start,
            span_s: ((end - start).num_seconds() as f64).max(1.0),
            symbols: symbols.max(1),
            last: None,
        })
    }

    /// The next row: its symbol and bar; `None` after the last of the last part.
    #[inline]
    pub(super) fn next_bar(&mut self) -> Result<Option<(&str, Bar)>, BarsFileError> {
        loop {
            if let Some(bar) = self.reader.advance()? {
                self.last = Some(bar.ts);
                return Ok(Some((self.reader.symbol(), bar)));
            }
            let Some(next) = self.more.pop_front() else {
                return Ok(None);
            };
            self.rows_before += self.reader.rows();
            self.reader = open_part(&next)?;
        }
    }

    /// How far the reading is, 0 to 1, the last bar read being of the symbol at
    /// `position` in the run's list: the symbols before it done, and its own bars
    /// read up to that bar's time. (The file is still being written, so its size
    /// says nothing; the rows come ordered by symbol, then time.)
    pub(super) fn fraction(&self, position: usize) -> f64 {
        let within = self.last.map_or(0.0, |ts| {
            ((ts - self.start).num_seconds() as f64 / self.span_s).clamp(0.0, 1.0)
        });
        ((position as f64 + within) / self.symbols as f64).min(1.0)
    }

    /// Rows read so far.
    pub(super) fn rows(&self) -> u64 {
        self.rows_before + self.reader.rows()
    }
}

/// One part's file, its header read (waiting for it while the part is written).
fn open_part(path: &Path) -> Result<BarsReader<BufReader<GrowingFile>>, BarsFileError> {
    let file = GrowingFile::open(path)?;
    BarsReader::new(BufReader::with_capacity(READ_BUFFER, file))
}

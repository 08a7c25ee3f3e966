//! A run's bars file: PostgreSQL's binary COPY format of
//! `symbol TEXT, ts TIMESTAMPTZ, open, high, low, close, volume DOUBLE PRECISION`,
//! ordered by symbol, then time.
//!
//! The manager writes it straight from
//! `COPY (SELECT symbol, ts, open, high, low, close, volume FROM market_bars WHERE …
//! ORDER BY symbol, ts) TO STDOUT (FORMAT binary)` without decoding a row, and the
//! run's process reads it as a stream with [`BarsReader`], never loading it whole.
//! [`BarsWriter`] writes the same format (tests, the bench).
//!
//! The format: the 11-byte signature `PGCOPY\n\xff\r\n\0`, a 32-bit flags word, a
//! 32-bit header-extension length and that many bytes; then per row a 16-bit field
//! count (7) and per field a 32-bit length and the value (text as UTF-8, a
//! timestamptz as 64-bit microseconds since 2000-01-01 UTC, a float8 as its 8
//! IEEE-754 bytes), all big-endian; and last the 16-bit count -1.
//!
//! The run's process starts while the manager still writes the file (the COPY and
//! the strategy overlap): the manager holds an exclusive `flock` on the file from its
//! creation until the COPY ends, and the process reads it through [`GrowingFile`],
//! which waits at the end of what is written so far while that lock is held. A file
//! whose lock is free is all there will be: with its trailer it is whole; without,
//! its writer failed or died ([`BarsFileError::Truncated`]).

use crate::Tick;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fs::{File, TryLockError};
use std::io::{self, BufRead, Read, Write};
use std::path::Path;
use std::time::Duration;

/// One bar of market data (`market_bars`): `ts` is the bar's time (its open).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bar {
    pub ts: DateTime<Utc>,
    pub open: f64,
    pub high: f64,
    pub low: f64,
    pub close: f64,
    pub volume: f64,
}

impl Bar {
    /// A bar of one tick: open, high, low and close are its price, the volume its
    /// volume (0 without one). What a strategy that keeps bars builds from live ticks.
    pub fn from_tick(tick: &Tick) -> Bar {
        Bar {
            ts: tick.timestamp,
            open: tick.price,
            high: tick.price,
            low: tick.price,
            close: tick.price,
            volume: tick.volume.unwrap_or(0.0),
        }
    }

    /// The tick a backtest delivers for this bar: `token` at the close, stamped with
    /// the bar's time, with the bar's volume.
    pub fn close_tick(&self, token: &str) -> Tick {
        Tick {
            token: token.to_string(),
            price: self.close,
            timestamp: self.ts,
            volume: Some(self.volume),
            bid: None,
            ask: None,
        }
    }
}

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// Seconds from the Unix epoch to PostgreSQL's (2000-01-01 UTC).
const PG_EPOCH_UNIX_S: i64 = 946_684_800;
const FIELDS: i16 = 7;

/// What is wrong with a bars file.
#[derive(Debug, thiserror::Error)]
pub enum BarsFileError {
    #[error("cannot read the bars file")]
    Io(#[from] io::Error),
    #[error("not a PostgreSQL binary COPY file (the signature is missing)")]
    Signature,
    #[error("row {row} has {found} fields; a bars file has 7 (symbol, ts, open, high, low, close, volume)")]
    Fields { row: u64, found: i16 },
    #[error("row {row}, field {field}: {what}")]
    Field {
        row: u64,
        field: &'static str,
        what: String,
    },
    #[error("the bars file ends without its trailer after {rows} rows: it was cut short")]
    Truncated { rows: u64 },
}

/// Reads a bars file row by row, reusing one buffer for the symbol: no allocation
/// per bar.
pub struct BarsReader<R> {
    inner: R,
    symbol: String,
    /// The symbol's bytes as read (a buffer reused for every row).
    symbol_bytes: Vec<u8>,
    rows: u64,
    done: bool,
}

const FIELD_NAMES: [&str; 7] = ["symbol", "ts", "open", "high", "low", "close", "volume"];

impl<R: BufRead> BarsReader<R> {
    /// Checks the header.
    pub fn new(mut inner: R) -> Result<Self, BarsFileError> {
        let mut signature = [0u8; 11];
        read_exact_or(&mut inner, &mut signature, 0)?;
        if &signature != SIGNATURE {
            return Err(BarsFileError::Signature);
        }
        let mut word = [0u8; 4];
        read_exact_or(&mut inner, &mut word, 0)?; // flags
        read_exact_or(&mut inner, &mut word, 0)?;
        let extension = u32::from_be_bytes(word) as u64;
        io::copy(&mut io::Read::take(&mut inner, extension), &mut io::sink())?;
        Ok(BarsReader {
            inner,
            symbol: String::new(),
            symbol_bytes: Vec::new(),
            rows: 0,
            done: false,
        })
    }

    /// Rows read so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The next row: its symbol (valid until the next call) and bar; `None` after
    /// the last.
    pub fn next_bar(&mut self) -> Result<Option<(&str, Bar)>, BarsFileError> {
        let bar = self.advance()?;
        Ok(bar.map(|bar| (self.symbol.as_str(), bar)))
    }

    /// The symbol of the last row read (empty before the first).
    pub fn symbol(&self) -> &str {
        &self.symbol
    }

    /// The next row's bar, its symbol then in [`BarsReader::symbol`]; `None` after
    /// the last. (The bar alone borrows nothing: a caller may read on into another
    /// file when this one ends.)
    pub fn advance(&mut self) -> Result<Option<Bar>, BarsFileError> {
        if self.done {
            return Ok(None);
        }
        let mut count = [0u8; 2];
        read_exact_or(&mut self.inner, &mut count, self.rows)?;
        let count = i16::from_be_bytes(count);
        if count == -1 {
            self.done = true;
            return Ok(None);
        }
        let row = self.rows + 1;
        if count != FIELDS {
            return Err(BarsFileError::Fields { row, found: count });
        }
        let len = self.field_len(row, 0)?;
        let symbol = &mut self.symbol_bytes;
        symbol.resize(len, 0);
        read_exact_or(&mut self.inner, symbol, self.rows)?;
        // Rows of one symbol come together: decode it only when it changes.
        if symbol.as_slice() != self.symbol.as_bytes() {
            let text = std::str::from_utf8(symbol).map_err(|_| BarsFileError::Field {
                row,
                field: "symbol",
                what: "not UTF-8".into(),
            })?;
            self.symbol.clear();
            self.symbol.push_str(text);
        }
        // The six 8-byte fields after the symbol, each with its length: one read.
        let mut rest = [0u8; 6 * 12];
        read_exact_or(&mut self.inner, &mut rest, self.rows)?;
        let mut values = [0u64; 6];
        for (i, value) in values.iter_mut().enumerate() {
            let field = &rest[i * 12..i * 12 + 12];
            let len = i32::from_be_bytes(field[..4].try_into().expect("4 bytes"));
            if len != 8 {
                return Err(BarsFileError::Field {
                    row,
                    field: FIELD_NAMES[i + 1],
                    what: if len < 0 {
                        "NULL".into()
                    } else {
                        format!("{len} bytes, expected 8")
                    },
                });
            }
            *value = u64::from_be_bytes(field[4..].try_into().expect("8 bytes"));
        }
        let micros = values[0] as i64;
        let ts = pg_micros_to_utc(micros).ok_or_else(|| BarsFileError::Field {
            row,
            field: "ts",
            what: format!("{micros} µs is out of range"),
        })?;
        self.rows = row;
        let [_, open, high, low, close, volume] = values.map(f64::from_bits);
        Ok(Some(Bar {
            ts,
            open,
            high,
            low,
            close,
            volume,
        }))
    }

    fn field_len(&mut self, row: u64, field: usize) -> Result<usize, BarsFileError> {
        let mut len = [0u8; 4];
        read_exact_or(&mut self.inner, &mut len, self.rows)?;
        let len = i32::from_be_bytes(len);
        if len < 0 {
            return Err(BarsFileError::Field {
                row,
                field: FIELD_NAMES[field],
                what: "NULL".into(),
            });
        }
        Ok(len as usize)
    }
}

/// A bars file opened while its writer may still be at work: a read at the end of
/// what is written so far waits (sleeping 50 µs, doubling up to 2 ms) while the
/// writer holds its exclusive lock, and ends there once the lock is free. Counts the
/// bytes read.
pub struct GrowingFile {
    file: File,
    /// Whether the writer may still add to the file (its lock was held at the last
    /// look).
    writing: bool,
    read: u64,
}

const FIRST_PAUSE: Duration = Duration::from_micros(50);
const LONGEST_PAUSE: Duration = Duration::from_millis(2);

impl GrowingFile {
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(GrowingFile {
            file: File::open(path)?,
            writing: true,
            read: 0,
        })
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }
}

impl Read for GrowingFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut pause = FIRST_PAUSE;
        loop {
            let n = self.file.read(buf)?;
            if n > 0 || buf.is_empty() || !self.writing {
                self.read += n as u64;
                return Ok(n);
            }
            match self.file.try_lock_shared() {
                // The writer is done (or gone): what it wrote is all there is. Read
                // once more, for what it wrote between that read and its unlock.
                Ok(()) => {
                    self.file.unlock()?;
                    self.writing = false;
                }
                Err(TryLockError::WouldBlock) => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(LONGEST_PAUSE);
                }
                Err(TryLockError::Error(err)) => return Err(err),
            }
        }
    }
}

fn read_exact_or<R: BufRead>(r: &mut R, buf: &mut [u8], rows: u64) -> Result<(), BarsFileError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => BarsFileError::Truncated { rows },
        _ => BarsFileError::Io(e),
    })
}

/// Microseconds since 2000-01-01 UTC as a time.
pub fn pg_micros_to_utc(micros: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(micros.checked_add(PG_EPOCH_UNIX_S * 1_000_000)?)
}

/// A time as microseconds since 2000-01-01 UTC.
pub fn utc_to_pg_micros(ts: DateTime<Utc>) -> i64 {
    (ts.timestamp() - PG_EPOCH_UNIX_S) * 1_000_000 + i64::from(ts.timestamp_subsec_micros())
}

/// Writes a bars file (the format PostgreSQL's binary COPY reads and writes).
pub struct BarsWriter<W: Write> {
    inner: W,
    /// Set for rows of `market_bars` itself ([`BarsWriter::market_bars`]).
    interval: Option<String>,
}

impl<W: Write> BarsWriter<W> {
    pub fn new(mut inner: W) -> io::Result<Self> {
        inner.write_all(SIGNATURE)?;
        inner.write_all(&0u32.to_be_bytes())?;
        inner.write_all(&0u32.to_be_bytes())?;
        Ok(BarsWriter {
            inner,
            interval: None,
        })
    }

    /// The same format with the `interval` column after the symbol: rows of
    /// `market_bars` itself (`symbol, interval, ts, open, high, low, close, volume`),
    /// what `COPY market_bars FROM STDIN (FORMAT binary)` loads (`enginectl data`).
    /// Not a bars file: [`BarsReader`] reads the seven columns of a run's bars.
    pub fn market_bars(inner: W, interval: &str) -> io::Result<Self> {
        let mut writer = BarsWriter::new(inner)?;
        writer.interval = Some(interval.to_string());
        Ok(writer)
    }

    /// The underlying writer, to take what was written so far (a loader sends its
    /// buffer to PostgreSQL in chunks and clears it).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    pub fn write(&mut self, symbol: &str, bar: &Bar) -> io::Result<()> {
        let w = &mut self.inner;
        let fields = FIELDS + i16::from(self.interval.is_some());
        w.write_all(&fields.to_be_bytes())?;
        w.write_all(&(symbol.len() as i32).to_be_bytes())?;
        w.write_all(symbol.as_bytes())?;
        if let Some(interval) = &self.interval {
            w.write_all(&(interval.len() as i32).to_be_bytes())?;
            w.write_all(interval.as_bytes())?;
        }
        w.write_all(&8i32.to_be_bytes())?;
        w.write_all(&utc_to_pg_micros(bar.ts).to_be_bytes())?;
        for v in [bar.open, bar.high, bar.low, bar.close, bar.volume] {
            w.write_all(&8i32.to_be_bytes())?;
            w.write_all(&v.to_bits().to_be_bytes())?;
        }
        Ok(())
    }

    /// Writes the trailer and hands back the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.inner.write_all(&(-1i16).to_be_bytes())?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar(day: i64, close: f64) -> Bar {
        Bar {
            ts: DateTime::from_timestamp(1_704_067_200 + day * 86_400, 123_000).unwrap(),
            open: close - 1.0,
            high: close + 2.0,
            low: close - 2.0,
            close,
            volume: 1e6,
        }
    }

    #[test]
    fn round_trip() {
        let mut w = BarsWriter::new(Vec::new()).unwrap();
        w.write("AAPL", &bar(0, 100.0)).unwrap();
        w.write("AAPL", &bar(1, 101.5)).unwrap();
        w.write("MSFT", &bar(0, 300.25)).unwrap();
        let bytes = w.finish().unwrap();
        let mut r = BarsReader::new(&bytes[..]).unwrap();
        let mut seen = Vec::new();
        while let Some((symbol, b)) = r.next_bar().unwrap() {
            seen.push((symbol.to_string(), b));
        }
        assert_eq!(
            seen,
            vec![
                ("AAPL".to_string(), bar(0, 100.0)),
                ("AAPL".to_string(), bar(1, 101.5)),
                ("MSFT".to_string(), bar(0, 300.25)),
            ]
        );
        assert_eq!(r.rows(), 3);
        assert!(r.next_bar().unwrap().is_none());
    }

    #[test]
    fn cut_short_and_foreign_files_are_refused() {
        let mut w = BarsWriter::new(Vec::new()).unwrap();
        w.write("AAPL", &bar(0, 100.0)).unwrap();
        let bytes = w.finish().unwrap();
        let cut = &bytes[..bytes.len() - 2];
        let mut r = BarsReader::new(cut).unwrap();
        assert!(r.next_bar().unwrap().is_some());
        let err = r.next_bar().unwrap_err();
        assert!(matches!(err, BarsFileError::Truncated { rows: 1 }), "{err}");
        assert!(matches!(
            BarsReader::new(&b"date,open\n1,2\n"[..]),
            Err(BarsFileError::Signature | BarsFileError::Truncated { .. })
        ));
    }

    /// A bars file written (under the writer's lock) while it is read: two rows
    /// before the reader starts, a third once it has read those; `finish` says
    /// whether the writer ends with the trailer or dies without it. The rows read.
    fn read_while_written(name: &str, finish: bool) -> Result<Vec<Bar>, BarsFileError> {
        let path = std::env::temp_dir().join(format!("{name}-{}.bars", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let file = File::create_new(&path).unwrap();
        file.lock().unwrap();
        let mut w = BarsWriter::new(io::BufWriter::new(file)).unwrap();
        w.write("AAPL", &bar(0, 100.0)).unwrap();
        w.write("AAPL", &bar(1, 101.0)).unwrap();
        w.get_mut().flush().unwrap();
        let (told, heard) = std::sync::mpsc::channel();
        let reader = {
            let path = path.clone();
            std::thread::spawn(move || {
                let file = GrowingFile::open(&path)?;
                let mut r = BarsReader::new(io::BufReader::new(file))?;
                let mut seen = Vec::new();
                while let Some((_, b)) = r.next_bar()? {
                    seen.push(b);
                    if seen.len() == 2 {
                        told.send(()).unwrap();
                    }
                }
                Ok(seen)
            })
        };
        heard.recv().unwrap();
        // The reader is at the end of what is written: it waits for the rest.
        w.write("AAPL", &bar(2, 102.0)).unwrap();
        if finish {
            drop(w.finish().unwrap()); // the lock goes with the file
        } else {
            drop(w); // no trailer: the writer is gone, and its lock with it
        }
        let seen = reader.join().unwrap();
        std::fs::remove_file(&path).unwrap();
        seen
    }

    #[test]
    fn a_file_is_read_while_it_is_written() {
        let seen = read_while_written("growing", true).unwrap();
        assert_eq!(seen, vec![bar(0, 100.0), bar(1, 101.0), bar(2, 102.0)]);
    }

    #[test]
    fn a_file_whose_writer_dies_is_cut_short() {
        let err = read_while_written("dying", false).unwrap_err();
        assert!(matches!(err, BarsFileError::Truncated { rows: 3 }), "{err}");
    }

    #[test]
    fn postgres_epoch() {
        let ts = DateTime::from_timestamp(946_684_800, 0).unwrap();
        assert_eq!(utc_to_pg_micros(ts), 0);
        assert_eq!(
            pg_micros_to_utc(1_500_000).unwrap().timestamp_millis(),
            946_684_801_500
        );
    }
}

//! The run's bars, streamed from its bars file: row by row through
//! [`BarsReader`], never the whole file in memory, with how far into the file the
//! reading is (the run's progress).

use engine_protocol::runs::bars_file::{BarsFileError, BarsReader};
use std::cell::Cell;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;
use std::rc::Rc;
use strategy_sdk::Bar;

/// Bytes of the file read into the buffer at a time.
const READ_BUFFER: usize = 256 * 1024;

/// The bars file, open.
pub(super) struct BarsSource {
    reader: BarsReader<BufReader<Counted>>,
    read: Rc<Cell<u64>>,
    size: u64,
}

impl BarsSource {
    pub(super) fn open(path: &Path) -> Result<Self, BarsFileError> {
        let file = File::open(path)?;
        let size = file.metadata()?.len();
        let read = Rc::new(Cell::new(0));
        let counted = Counted {
            file,
            read: read.clone(),
        };
        let reader = BarsReader::new(BufReader::with_capacity(READ_BUFFER, counted))?;
        Ok(BarsSource { reader, read, size })
    }

    /// The next row: its symbol and bar; `None` after the last.
    #[inline]
    pub(super) fn next_bar(&mut self) -> Result<Option<(&str, Bar)>, BarsFileError> {
        self.reader.next_bar()
    }

    /// How much of the file has been read, 0 to 1 (by bytes: rows are all about the
    /// same size, so this is the share of the bars).
    pub(super) fn fraction(&self) -> f64 {
        if self.size == 0 {
            return 1.0;
        }
        (self.read.get() as f64 / self.size as f64).min(1.0)
    }

    /// Rows read so far.
    pub(super) fn rows(&self) -> u64 {
        self.reader.rows()
    }
}

/// The file, counting the bytes read from it.
struct Counted {
    file: File,
    read: Rc<Cell<u64>>,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

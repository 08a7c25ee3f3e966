//! CSV files of bars, as free data sites export them, checked line by line.
//!
//! The header names the columns (case and spaces do not matter, quotes are
//! stripped): a time column `date`, `timestamp`, `datetime`, `time` or `open_time`
//! (or `date` and `time` together, joined), then `open`, `high`, `low`, `close`
//! and optionally `volume` (0 without it). Other columns are ignored, `adj close`
//! among them: the bars keep the traded close, as a strategy saw it. A time is a
//! date (`2024-01-31`, Yahoo's; `01/31/2024`), a date and time without a zone
//! (UTC), an RFC 3339 time (`2024-01-31T15:30:00Z`, `2024-01-31 09:30:00-05:00`),
//! or Unix seconds (milliseconds when above 10^11, as exchanges export them).
//!
//! Rows go in time order, oldest first or newest first, each time once. Prices are
//! positive, the low is at most the open and the close and the high at least, and
//! volume is not negative. The first line that breaks a rule stops the file, with
//! its number, its column and what would be right.

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeDelta, Utc};
use engine_protocol::runs::bars_file::Bar;
use std::fmt;
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// A line of a CSV file that is not a bar, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct CsvError {
    pub file: PathBuf,
    /// 1-based; the header is line 1. 0 when the file itself is at fault.
    pub line: u64,
    pub column: Option<String>,
    pub what: String,
}

impl fmt::Display for CsvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ", line {}", self.line)?;
        }
        if let Some(column) = &self.column {
            write!(f, ", column {column}")?;
        }
        write!(f, ": {}", self.what)
    }
}

/// Which field of a line holds what.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Layout {
    /// The time column, and a separate time-of-day column when the date is alone.
    time: (usize, String),
    clock: Option<usize>,
    /// open, high, low, close, volume
    values: [Option<usize>; 5],
    fields: usize,
}

const VALUE_NAMES: [&str; 5] = ["open", "high", "low", "close", "volume"];
const TIME_NAMES: [&str; 6] = [
    "date",
    "timestamp",
    "datetime",
    "time",
    "open_time",
    "open time",
];
const EXPECTED_HEADER: &str =
    "date,open,high,low,close,volume (or timestamp,open,high,low,close,volume)";

fn clean(field: &str) -> &str {
    field.trim().trim_matches('"').trim()
}

impl Layout {
    /// The columns of a header line.
    pub fn from_header(header: &str) -> Result<Layout, String> {
        let names: Vec<String> = header
            .trim_start_matches('\u{feff}')
            .split(',')
            .map(|f| clean(f).to_ascii_lowercase())
            .collect();
        let find = |name: &str| names.iter().position(|n| n == name);
        let time_index = TIME_NAMES
            .iter()
            .find_map(|name| find(name).map(|i| (i, (*name).to_string())))
            .ok_or_else(|| {
                format!(
                    "the header has no time column (date, timestamp, datetime or time); expected {EXPECTED_HEADER}, found '{}'",
                    header.trim()
                )
            })?;
        // `Date,Time,Open,...` (MetaTrader and others): the date and the time of day.
        let clock = (time_index.1 == "date").then(|| find("time")).flatten();
        let mut values = [None; 5];
        for (slot, name) in values.iter_mut().zip(VALUE_NAMES) {
            *slot = find(name);
            if slot.is_none() && name != "volume" {
                return Err(format!(
                    "the header has no '{name}' column; expected {EXPECTED_HEADER}, found '{}'",
                    header.trim()
                ));
            }
        }
        Ok(Layout {
            time: time_index,
            clock,
            values,
            fields: names.len(),
        })
    }

    /// One data line as a bar, or the column at fault and what would be right.
    pub fn parse(&self, line: &str) -> Result<Bar, (Option<String>, String)> {
        // The fields this needs, picked without allocating: time, clock, then the
        // values in VALUE_NAMES order.
        let mut picked = [""; 7];
        let mut count = 0;
        for (index, field) in line.split(',').enumerate() {
            count += 1;
            if let Some(slot) = self.slot_of(index) {
                picked[slot] = clean(field);
            }
        }
        if count != self.fields {
            return Err((
                None,
                format!(
                    "{count} fields, but the header has {}; each line has one value per column",
                    self.fields
                ),
            ));
        }
        let ts = match self.clock {
            Some(_) => parse_time(&format!("{} {}", picked[0], picked[1])),
            None => parse_time(picked[0]),
        }
        .map_err(|what| (Some(self.time.1.clone()), what))?;
        let mut values = [0.0; 5];
        for (i, (value, name)) in values.iter_mut().zip(VALUE_NAMES).enumerate() {
            if self.values[i].is_some() {
                *value =
                    parse_number(picked[i + 2], name).map_err(|what| (Some(name.into()), what))?;
            }
        }
        let [open, high, low, close, volume] = values;
        check_bar(open, high, low, close)?;
        Ok(Bar {
            ts,
            open,
            high,
            low,
            close,
            volume,
        })
    }
}

impl Layout {
    /// Where field `index` goes in [`Layout::parse`]'s picks, if it is needed.
    fn slot_of(&self, index: usize) -> Option<usize> {
        if index == self.time.0 {
            return Some(0);
        }
        if self.clock == Some(index) {
            return Some(1);
        }
        self.values
            .iter()
            .position(|v| *v == Some(index))
            .map(|i| i + 2)
    }
}

fn parse_number(field: &str, name: &str) -> Result<f64, String> {
    let value: f64 = field.parse().map_err(|_| {
        if field.is_empty() {
            format!("the {name} is empty; write a number")
        } else {
            format!("'{field}' is not a number; write a decimal number such as 101.25")
        }
    })?;
    if !value.is_finite() {
        return Err(format!("'{field}' is not a finite number"));
    }
    if name == "volume" {
        if value < 0.0 {
            return Err(format!("volume {field} is negative; volume is 0 or more"));
        }
    } else if value <= 0.0 {
        return Err(format!("{name} {field} is not a price; prices are above 0"));
    }
    Ok(value)
}

fn check_bar(open: f64, high: f64, low: f64, close: f64) -> Result<(), (Option<String>, String)> {
    if low > open.min(close) {
        let (name, value) = if open <= close {
            ("open", open)
        } else {
            ("close", close)
        };
        return Err((
            Some("low".into()),
            format!("low {low} is above the {name} {value}; a bar's low is at most its open and its close"),
        ));
    }
    if high < open.max(close) {
        let (name, value) = if open >= close {
            ("open", open)
        } else {
            ("close", close)
        };
        return Err((
            Some("high".into()),
            format!("high {high} is below the {name} {value}; a bar's high is at least its open and its close"),
        ));
    }
    Ok(())
}

const TIME_HELP: &str = "write a date (2024-01-31), a date and time in UTC (2024-01-31 15:30:00), an RFC 3339 time (2024-01-31T15:30:00Z) or Unix seconds (1706715000)";

/// A time in any of the accepted forms.
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    let bad = || format!("'{text}' is not a time; {TIME_HELP}");
    if text.is_empty() {
        return Err(format!("the time is empty; {TIME_HELP}"));
    }
    if text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let number: f64 = text.parse().map_err(|_| bad())?;
        let seconds = if number > 1e11 {
            number / 1000.0
        } else {
            number
        };
        let micros = (seconds * 1e6).round() as i64;
        return DateTime::from_timestamp_micros(micros).ok_or_else(bad);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    for format in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Ok(t.and_utc());
        }
    }
    for format in ["%Y-%m-%d", "%m/%d/%Y"] {
        if let Ok(d) = NaiveDate::parse_from_str(text, format) {
            return Ok(d.and_hms_opt(0, 0, 0).ok_or_else(bad)?.and_utc());
        }
    }
    Err(bad())
}

/// What the first pass found in a file: everything a load needs to know before it
/// sends a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileScan {
    pub rows: u64,
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
    /// The shortest time between two consecutive rows (`None` for one row).
    pub spacing: Option<TimeDelta>,
}

/// Read a whole file and check every line (nothing is loaded yet).
pub fn scan(file: &Path, reader: impl BufRead) -> Result<FileScan, CsvError> {
    let mut bars = CsvReader::open(file, reader)?;
    let no_bars = || CsvError {
        file: file.to_path_buf(),
        line: 0,
        column: None,
        what: format!(
            "the file holds no bars; expected a header ({EXPECTED_HEADER}) and a line per bar"
        ),
    };
    let (mut previous_line, first) = bars.next_bar()?.ok_or_else(no_bars)?;
    let mut s = FileScan {
        rows: 1,
        first: first.ts,
        last: first.ts,
        spacing: None,
    };
    let mut previous_ts = first.ts;
    let mut descending = None;
    while let Some((number, bar)) = bars.next_bar()? {
        let step = bar.ts - previous_ts;
        let down = *descending.get_or_insert(step < TimeDelta::zero());
        let gap = if down { -step } else { step };
        if gap <= TimeDelta::zero() {
            let order = if down { "newest first" } else { "oldest first" };
            return Err(CsvError {
                file: file.to_path_buf(),
                line: number,
                column: Some(bars.layout.time.1.clone()),
                what: format!(
                    "{} repeats or goes back from {} on line {previous_line}; rows are in time order ({order}, as the first two), each time once",
                    bar.ts.to_rfc3339(),
                    previous_ts.to_rfc3339()
                ),
            });
        }
        s.spacing = Some(s.spacing.map_or(gap, |g| g.min(gap)));
        s.rows += 1;
        s.first = s.first.min(bar.ts);
        s.last = s.last.max(bar.ts);
        previous_ts = bar.ts;
        previous_line = number;
    }
    Ok(s)
}

/// The bars of a CSV file, line by line (blank lines skipped).
pub struct CsvReader<R> {
    file: PathBuf,
    reader: R,
    text: String,
    number: u64,
    layout: Layout,
}

impl<R: BufRead> CsvReader<R> {
    /// Reads the header.
    pub fn open(file: &Path, reader: R) -> Result<CsvReader<R>, CsvError> {
        let mut csv = CsvReader {
            file: file.to_path_buf(),
            reader,
            text: String::new(),
            number: 0,
            layout: Layout::default(),
        };
        if !csv.next_line()? {
            return Err(csv.error(
                0,
                None,
                format!(
                    "the file is empty; expected a header ({EXPECTED_HEADER}) and a line per bar"
                ),
            ));
        }
        csv.layout =
            Layout::from_header(csv.line()).map_err(|what| csv.error(csv.number, None, what))?;
        Ok(csv)
    }

    /// The next bar and its line number; `None` at the end of the file.
    pub fn next_bar(&mut self) -> Result<Option<(u64, Bar)>, CsvError> {
        if !self.next_line()? {
            return Ok(None);
        }
        let bar = self
            .layout
            .parse(self.line())
            .map_err(|(column, what)| self.error(self.number, column, what))?;
        Ok(Some((self.number, bar)))
    }

    fn line(&self) -> &str {
        self.text.trim_end_matches(['\n', '\r'])
    }

    /// Reads the next line that is not blank; false at the end.
    fn next_line(&mut self) -> Result<bool, CsvError> {
        loop {
            self.text.clear();
            let read = self.reader.read_line(&mut self.text).map_err(|e| {
                self.error(self.number + 1, None, format!("cannot read the file: {e}"))
            })?;
            if read == 0 {
                return Ok(false);
            }
            self.number += 1;
            if !self.text.trim().is_empty() {
                return Ok(true);
            }
        }
    }

    fn error(&self, line: u64, column: Option<String>, what: String) -> CsvError {
        CsvError {
            file: self.file.clone(),
            line,
            column,
            what,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_text(text: &str) -> Result<FileScan, CsvError> {
        scan(Path::new("t.csv"), text.as_bytes())
    }

    #[test]
    fn times() {
        let day = "2024-01-31T00:00:00+00:00";
        for text in ["2024-01-31", "01/31/2024", "1706659200", "1706659200000"] {
            assert_eq!(parse_time(text).unwrap().to_rfc3339(), day, "{text}");
        }
        let t = "2024-01-31T14:30:00+00:00";
        for text in [
            "2024-01-31 14:30:00",
            "2024-01-31T14:30:00",
            "2024-01-31 14:30",
            "2024-01-31T14:30:00Z",
            "2024-01-31 09:30:00-05:00",
        ] {
            assert_eq!(parse_time(text).unwrap().to_rfc3339(), t, "{text}");
        }
        assert!(parse_time("31.01.2024").unwrap_err().contains("RFC 3339"));
    }

    #[test]
    fn header_styles() {
        let yahoo = "Date,Open,High,Low,Close,Adj Close,Volume\n\
                     2024-01-02,10,11,9,10.5,10.4,1000\n2024-01-03,10.5,12,10,11,10.9,1200\n";
        let s = scan_text(yahoo).unwrap();
        assert_eq!(s.rows, 2);
        assert_eq!(s.spacing, Some(TimeDelta::days(1)));
        let split = "Date,Time,Open,High,Low,Close\n2024.01.02,10:00,1,1,1,1\n";
        assert!(scan_text(split).unwrap_err().what.contains("not a time"));
        let split =
            "Date,Time,Open,High,Low,Close\n2024-01-02,10:00,1,1,1,1\n2024-01-02,10:01,1,1,1,1\n";
        assert_eq!(
            scan_text(split).unwrap().spacing,
            Some(TimeDelta::minutes(1))
        );
        let newest_first =
            "timestamp,open,high,low,close,volume\n1706659260,1,2,1,1,5\n1706659200,1,2,1,1,5\n";
        let s = scan_text(newest_first).unwrap();
        assert_eq!(s.first.timestamp(), 1_706_659_200);
        assert_eq!(s.last.timestamp(), 1_706_659_260);
    }

    #[test]
    fn bad_lines_say_where_and_what() {
        let head = "date,open,high,low,close,volume\n";
        for (body, line, column, wanted) in [
            (
                "2024-01-02,1,2,1,1\n",
                2,
                None,
                "5 fields, but the header has 6",
            ),
            ("2024-13-02,1,2,1,1,1\n", 2, Some("date"), "is not a time"),
            (
                "2024-01-02,1,2,1,1,1\n2024-01-03,null,2,1,1,1\n",
                3,
                Some("open"),
                "'null' is not a number",
            ),
            (
                "2024-01-02,1,2,1,-1,1\n",
                2,
                Some("close"),
                "prices are above 0",
            ),
            (
                "2024-01-02,1,2,1,1,-5\n",
                2,
                Some("volume"),
                "volume is 0 or more",
            ),
            (
                "2024-01-02,1,2,1.5,2,1\n",
                2,
                Some("low"),
                "low 1.5 is above the open 1",
            ),
            (
                "2024-01-02,1,1.5,1,2,1\n",
                2,
                Some("high"),
                "high 1.5 is below the close 2",
            ),
            (
                "2024-01-02,1,2,1,1,1\n2024-01-02,1,2,1,1,1\n",
                3,
                Some("date"),
                "repeats or goes back",
            ),
            (
                "2024-01-02,1,2,1,1,1\n2024-01-03,1,2,1,1,1\n2024-01-01,1,2,1,1,1\n",
                4,
                Some("date"),
                "oldest first",
            ),
        ] {
            let err = scan_text(&format!("{head}{body}")).unwrap_err();
            assert_eq!((err.line, err.column.as_deref()), (line, column), "{err}");
            assert!(err.what.contains(wanted), "{wanted:?} not in: {err}");
        }
        let err = scan_text("day,open,high,low,close\n").unwrap_err();
        assert_eq!(err.line, 1);
        assert!(err.what.contains("no time column"), "{err}");
        let err = scan_text("date,open,high,close\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("t.csv, line 1: the header has no 'low' column"),
            "{err}"
        );
        let err = scan_text(head).unwrap_err();
        assert!(err.what.contains("no bars"), "{err}");
    }
}

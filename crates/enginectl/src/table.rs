//! Plain text tables (columns padded with spaces, like `ps` or `kubectl get`), and
//! the small formatters every view shares.

use chrono::{DateTime, Utc};

/// How a column is aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A table built row by row and rendered once.
#[derive(Debug, Clone)]
pub struct Table {
    header: Vec<&'static str>,
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these `(header, alignment)` columns.
    pub fn new(columns: &[(&'static str, Align)]) -> Table {
        Table {
            header: columns.iter().map(|(h, _)| *h).collect(),
            align: columns.iter().map(|(_, a)| *a).collect(),
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Vec<String>) {
        debug_assert_eq!(row.len(), self.header.len(), "one cell per column");
        self.rows.push(row);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as lines (no trailing spaces), two spaces between columns.
    pub fn render(&self) -> String {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(width(cell));
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.header.iter().map(|h| h.to_string()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate().take(columns) {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = widths[i] - width(cell);
                match self.align[i] {
                    Align::Left => {
                        line.push_str(cell);
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                    Align::Right => {
                        line.extend(std::iter::repeat_n(' ', pad));
                        line.push_str(cell);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

fn width(s: &str) -> usize {
    s.chars().count()
}

/// `-` for nothing.
pub const NONE: &str = "-";

/// A duration in seconds as `45s`, `3m12s`, `2h05m`, `3d04h`.
pub fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return NONE.to_string();
    }
    if secs < 10.0 {
        return format!("{secs:.1}s");
    }
    let s = secs.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

pub fn percent(x: Option<f64>) -> String {
    x.map(|x| format!("{x:.1}%")).unwrap_or_else(|| NONE.into())
}

pub fn megabytes(x: Option<f64>) -> String {
    x.map(|x| format!("{x:.1} MB"))
        .unwrap_or_else(|| NONE.into())
}

/// A use shown against its limit: `12.3 MB / 64 MB`, `19.8% / 20%`; the use alone
/// without a limit.
pub fn against_limit(used: String, limit: Option<u64>, unit: &str) -> String {
    match limit {
        Some(limit) => format!("{used} / {limit}{unit}"),
        None => used,
    }
}

/// A PnL with its sign: `+42.15`, `-3.20`, `0.00`.
pub fn money(x: Option<f64>) -> String {
    match x {
        Some(x) if x > 0.0 => format!("+{x:.2}"),
        Some(0.0) => "0.00".into(),
        Some(x) => format!("{x:.2}"),
        None => NONE.into(),
    }
}

/// `text` on one line and at most `max` characters, ending in `…` when cut.
pub fn shorten(text: &str, max: usize) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// A timestamp as `2026-11-21 10:15:02.481` (UTC).
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S%.3f").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_trim() {
        let mut t = Table::new(&[
            ("NAME", Align::Left),
            ("CPU", Align::Right),
            ("X", Align::Left),
        ]);
        t.push(vec!["a".into(), "1.0%".into(), String::new()]);
        t.push(vec!["longer".into(), "12.5%".into(), "z".into()]);
        assert_eq!(
            t.render(),
            "NAME      CPU  X\na        1.0%\nlonger  12.5%  z\n"
        );
    }

    #[test]
    fn formatters() {
        assert_eq!(duration(3.31), "3.3s");
        assert_eq!(duration(45.0), "45s");
        assert_eq!(duration(192.0), "3m12s");
        assert_eq!(duration(7500.0), "2h05m");
        assert_eq!(duration(3.0 * 86_400.0 + 4.0 * 3600.0), "3d04h");
        assert_eq!(duration(-1.0), "-");
        assert_eq!(money(Some(42.149)), "+42.15");
        assert_eq!(money(Some(-3.2)), "-3.20");
        assert_eq!(money(None), "-");
        assert_eq!(shorten("a\nb  c", 10), "a b c");
        assert_eq!(shorten("abcdefghijkl", 5), "abcd…");
    }
}

//! The progress of a bulk load on stderr: a bar redrawn in place (rows, percent,
//! rows/s, ETA) when stderr is a terminal, else a plain line every few seconds, so
//! logs stay readable.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often the bar is redrawn on a terminal.
const DRAW_EVERY: Duration = Duration::from_millis(100);
/// How often a plain line is written when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(2);
const WIDTH: usize = 24;

/// One load's progress.
pub struct Progress {
    label: String,
    total: u64,
    started: Instant,
    last_shown: Option<Instant>,
    terminal: bool,
}

impl Progress {
    /// `total` rows are expected (0 when unknown).
    pub fn new(label: impl Into<String>, total: u64) -> Progress {
        Progress {
            label: label.into(),
            total,
            started: Instant::now(),
            last_shown: None,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    /// `rows` are done so far.
    pub fn update(&mut self, rows: u64) {
        let now = Instant::now();
        let every = if self.terminal {
            DRAW_EVERY
        } else {
            LINE_EVERY
        };
        if self
            .last_shown
            .is_some_and(|shown| now.duration_since(shown) < every)
        {
            return;
        }
        self.last_shown = Some(now);
        let text = self.line(rows, self.started.elapsed());
        let mut err = std::io::stderr().lock();
        let _ = if self.terminal {
            write!(err, "\r{text}\x1b[K")
        } else {
            writeln!(err, "{text}")
        };
        let _ = err.flush();
    }

    /// Erase the bar; returns the time since the start.
    pub fn finish(self) -> Duration {
        if self.terminal && self.last_shown.is_some() {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
        }
        self.started.elapsed()
    }

    /// `[#########.......]  41%  150,000/365,000 rows  310,000 rows/s  ETA 0.7s  label`
    pub fn line(&self, rows: u64, elapsed: Duration) -> String {
        let rate = per_second(rows, elapsed);
        let mut text = String::new();
        if self.total > 0 {
            let share = (rows as f64 / self.total as f64).clamp(0.0, 1.0);
            let filled = (share * WIDTH as f64).round() as usize;
            text.push_str(&format!(
                "[{}{}] {:>3.0}%  {}/{} rows",
                "#".repeat(filled),
                ".".repeat(WIDTH - filled),
                share * 100.0,
                thousands(rows),
                thousands(self.total)
            ));
        } else {
            text.push_str(&format!("{} rows", thousands(rows)));
        }
        text.push_str(&format!("  {} rows/s", thousands(rate as u64)));
        if self.total > rows && rate > 0.0 {
            let eta = (self.total - rows) as f64 / rate;
            text.push_str(&format!("  ETA {}", crate::table::duration(eta)));
        }
        text.push_str("  ");
        text.push_str(&self.label);
        text
    }
}

/// Rows per second, 0 before any time passed.
pub fn per_second(rows: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        rows as f64 / secs
    } else {
        0.0
    }
}

/// `1234567` → `1,234,567`
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_says_rows_percent_rate_and_eta() {
        let p = Progress::new("KOVA 1d", 400_000);
        let line = p.line(100_000, Duration::from_millis(250));
        assert_eq!(
            line,
            "[######..................]  25%  100,000/400,000 rows  400,000 rows/s  ETA 0.8s  KOVA 1d"
        );
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
    }
}

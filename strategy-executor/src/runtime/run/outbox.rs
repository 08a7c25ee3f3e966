//! The run's outbox (`{runs_dir}/{run_id}.out`): [`RunOutput`] lines appended one
//! `write` each, so the manager following the file sees a line whole and at once;
//! and the throttle of `progress` lines.

use engine_protocol::runs::RunOutput;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// The outbox file, open for appending.
pub(super) struct Outbox {
    file: File,
    line: Vec<u8>,
}

impl Outbox {
    pub(super) fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Outbox {
            file,
            line: Vec::with_capacity(512),
        })
    }

    /// Append `output` as one line, in one write.
    pub(super) fn write(&mut self, output: &RunOutput) -> io::Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, output).map_err(io::Error::other)?;
        self.line.push(b'\n');
        self.file.write_all(&self.line)
    }
}

/// Where a run is, for a `progress` line.
#[derive(Debug, Clone, Copy)]
pub(super) struct Position<'a> {
    /// Share of the work done, 0 to 1 (moves within an item).
    pub fraction: f64,
    pub completed_items: i64,
    pub current_item: Option<&'a str>,
}

/// The outbox and the rules of what goes in it: `progress` at most once per
/// interval (always the first and the last), and the stage and throughput with it.
pub(super) struct Reporter {
    outbox: Outbox,
    /// The least time between two progress lines; zero writes only the first and
    /// the last.
    interval: Duration,
    started: Instant,
    last_progress: Option<Instant>,
    total_items: i64,
    stage: &'static str,
}

impl Reporter {
    pub(super) fn new(outbox: Outbox, interval: Duration, total_items: i64) -> Self {
        Reporter {
            outbox,
            interval,
            started: Instant::now(),
            last_progress: None,
            total_items,
            stage: "loading",
        }
    }

    pub(super) fn write(&mut self, output: &RunOutput) -> io::Result<()> {
        self.outbox.write(output)
    }

    /// Enter `stage` (and say the one before it completed).
    pub(super) fn stage(&mut self, stage: &'static str) -> io::Result<()> {
        let done = std::mem::replace(&mut self.stage, stage);
        self.write(&RunOutput::StageCompleted {
            stage: done.to_string(),
        })
    }

    /// Say the current stage completed (the last one, before the result).
    pub(super) fn stage_completed(&mut self) -> io::Result<()> {
        self.write(&RunOutput::StageCompleted {
            stage: self.stage.to_string(),
        })
    }

    /// A progress line if one is due: the first, or `interval` after the last.
    pub(super) fn progress(&mut self, at: Position<'_>) -> io::Result<()> {
        let now = Instant::now();
        let due = match self.last_progress {
            None => true,
            Some(_) if self.interval.is_zero() => false,
            Some(last) => now.duration_since(last) >= self.interval,
        };
        if due {
            self.write_progress(at, now, None)?;
        }
        Ok(())
    }

    /// A progress line whatever the throttle says (the last one).
    pub(super) fn final_progress(&mut self, at: Position<'_>, message: String) -> io::Result<()> {
        self.write_progress(at, Instant::now(), Some(message))
    }

    fn write_progress(
        &mut self,
        at: Position<'_>,
        now: Instant,
        message: Option<String>,
    ) -> io::Result<()> {
        self.last_progress = Some(now);
        let elapsed = now.duration_since(self.started).as_secs_f64();
        let fraction = at.fraction.clamp(0.0, 1.0);
        let items_per_second = (elapsed > 0.0).then(|| at.completed_items as f64 / elapsed);
        let eta_s = (fraction > 0.0).then(|| elapsed * (1.0 - fraction) / fraction);
        self.write(&RunOutput::Progress {
            stage: self.stage.to_string(),
            progress_percent: fraction * 100.0,
            completed_items: at.completed_items,
            total_items: self.total_items,
            current_item: at.current_item.map(str::to_string),
            message,
            items_per_second,
            eta_s,
        })
    }
}

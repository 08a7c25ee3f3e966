//! The command counters of Prometheus `/metrics`, kept in memory: finished commands
//! by word and outcome (`engine_commands_total`) and their latency histogram
//! (`engine_command_latency_seconds`, `executed_at - created_at`).
//!
//! Seeded once at start-up from `strategy_commands` (one query), so they are totals
//! that survive manager restarts, then counted as each outcome is written (the
//! database's own times come back from the write). Rows the command retention
//! deletes later stay counted.

use engine_store::metrics::{self as store, CommandTotal, FinishedCommand};
use engine_store::{CommandStatus, CommandWord};
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Upper bounds (seconds) of the command latency histogram.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
];

/// The `command` label values: every command word, and `other` for any other word.
fn command_labels() -> impl Iterator<Item = &'static str> {
    CommandWord::ALL
        .into_iter()
        .map(CommandWord::as_str)
        .chain(["other"])
}

/// The `status` label values of finished commands.
const OUTCOMES: [CommandStatus; 2] = [CommandStatus::Executed, CommandStatus::Failed];

/// Labels `command`, `status`.
type OutcomeLabels = [(&'static str, &'static str); 2];
/// Label `command`.
type CommandLabel = [(&'static str, &'static str); 1];

/// The `command` label of a command word (exact words only, as the table holds them).
fn command_label(word: &str) -> &'static str {
    word.parse::<CommandWord>()
        .map(CommandWord::as_str)
        .unwrap_or("other")
}

/// The `status` label of a finished row, `None` for a row not finished.
fn outcome_label(status: &str) -> Option<&'static str> {
    OUTCOMES
        .into_iter()
        .map(CommandStatus::as_str)
        .find(|o| *o == status)
}

/// Finished commands counted since the start of the table.
#[derive(Debug)]
pub struct CommandMetrics {
    finished: Family<OutcomeLabels, Counter>,
    latency: Family<CommandLabel, LatencyHistogram>,
    /// Set once [`Self::seed`] has read the table: before, the counters would read
    /// as a reset to 0.
    seeded: AtomicBool,
}

impl Default for CommandMetrics {
    fn default() -> Self {
        let metrics = CommandMetrics {
            finished: Family::default(),
            latency: Family::default(),
            seeded: AtomicBool::new(false),
        };
        // Every series exists from the start, at 0.
        for command in command_labels() {
            for status in OUTCOMES {
                metrics.counter(command, status.as_str());
            }
            let _created = metrics.latency.get_or_create(&[("command", command)]);
        }
        metrics
    }
}

impl CommandMetrics {
    /// Read the totals from `strategy_commands`, replacing whatever was counted (so a
    /// retried start-up does not count twice). Call it before any outcome is written.
    pub async fn seed(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let totals = store::command_totals(pool, &LATENCY_BUCKETS).await?;
        self.seed_from(&totals);
        Ok(())
    }

    fn seed_from(&self, totals: &[CommandTotal]) {
        for command in command_labels() {
            for status in OUTCOMES {
                self.counter(command, status.as_str())
                    .inner()
                    .store(0, Ordering::Relaxed);
            }
            self.latency.get_or_create(&[("command", command)]).reset();
        }
        for total in totals {
            let Some(status) = outcome_label(&total.status) else {
                continue;
            };
            let command = command_label(&total.command);
            let count = u64::try_from(total.count).unwrap_or(0);
            self.counter(command, status).inc_by(count);
            if let Some(bucket) = total.bucket {
                let bucket = usize::try_from(bucket).unwrap_or(0);
                self.latency.get_or_create(&[("command", command)]).add(
                    bucket,
                    count,
                    total.sum.unwrap_or(0.0),
                );
            }
        }
        self.seeded.store(true, Ordering::Release);
    }

    /// Count one outcome as written (`None`: no row had the id, nothing to count).
    pub fn record(&self, written: Option<&FinishedCommand>) {
        let Some(row) = written else { return };
        let Some(status) = outcome_label(&row.status) else {
            return;
        };
        let command = command_label(&row.command);
        self.counter(command, status).inc();
        if let Some(seconds) = row.latency_s {
            self.latency
                .get_or_create(&[("command", command)])
                .observe(seconds);
        }
    }

    fn counter(&self, command: &'static str, status: &'static str) -> Counter {
        self.finished
            .get_or_create_owned(&[("command", command), ("status", status)])
    }

    /// Add `engine_commands_total` and `engine_command_latency_seconds` to a scrape,
    /// once seeded.
    pub fn register(&self, registry: &mut Registry) {
        if !self.seeded.load(Ordering::Acquire) {
            return;
        }
        registry.register(
            "engine_commands",
            "Finished command rows in strategy_commands, by command word and outcome",
            self.finished.clone(),
        );
        registry.register(
            "engine_command_latency_seconds",
            "Time from a command row's created_at to its executed_at, finished commands",
            self.latency.clone(),
        );
    }
}

/// A latency histogram over [`LATENCY_BUCKETS`] whose bucket counts can be set from
/// the database (a stock `Histogram` only observes one value at a time). A value
/// equal to a bound counts in the bucket above it, as PostgreSQL's `width_bucket`
/// does for the seed.
#[derive(Debug, Default)]
struct LatencyHistogram {
    state: Mutex<Buckets>,
}

#[derive(Debug, Default)]
struct Buckets {
    /// Per bucket (not cumulative); the last one is above the last bound.
    counts: [u64; LATENCY_BUCKETS.len() + 1],
    sum: f64,
}

impl LatencyHistogram {
    fn observe(&self, seconds: f64) {
        let bucket = LATENCY_BUCKETS.partition_point(|bound| *bound <= seconds);
        self.add(bucket, 1, seconds);
    }

    fn add(&self, bucket: usize, count: u64, sum: f64) {
        let mut state = self.state.lock().expect("latency histogram lock");
        let last = state.counts.len() - 1;
        state.counts[bucket.min(last)] += count;
        state.sum += sum;
    }

    fn reset(&self) {
        *self.state.lock().expect("latency histogram lock") = Buckets::default();
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, buckets) = {
            let state = self.state.lock().expect("latency histogram lock");
            let bounds = LATENCY_BUCKETS.iter().copied().chain([f64::INFINITY]);
            let buckets: Vec<(f64, u64)> = bounds.zip(state.counts).collect();
            (state.sum, buckets)
        };
        let count = buckets.iter().map(|(_, n)| n).sum();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(metrics: &CommandMetrics) -> String {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        text
    }

    fn total(
        command: &str,
        status: &str,
        bucket: Option<i32>,
        count: i64,
        sum: f64,
    ) -> CommandTotal {
        CommandTotal {
            command: command.to_string(),
            status: status.to_string(),
            bucket,
            count,
            sum: bucket.map(|_| sum),
        }
    }

    fn finished(command: &str, status: &str, latency_s: Option<f64>) -> FinishedCommand {
        FinishedCommand {
            command: command.to_string(),
            status: status.to_string(),
            latency_s,
        }
    }

    #[test]
    fn words_map_to_their_labels() {
        assert_eq!(command_label("start"), "start");
        assert_eq!(command_label("update"), "update");
        assert_eq!(command_label("Start"), "other");
        assert_eq!(command_label("other"), "other");
        assert_eq!(command_label("frobnicate"), "other");
        assert_eq!(outcome_label("failed"), Some("failed"));
        assert_eq!(outcome_label("pending"), None);
    }

    #[test]
    fn nothing_is_exported_before_the_seed() {
        assert_eq!(encoded(&CommandMetrics::default()), "");
    }

    #[test]
    fn seeded_totals_and_recorded_outcomes_add_up() {
        let metrics = CommandMetrics::default();
        metrics.seed_from(&[
            total("start", "executed", Some(3), 4, 0.4),
            total("start", "failed", Some(0), 1, 0.001),
            total("bogus", "failed", None, 2, 0.0),
            total("stop", "pending", None, 9, 0.0),
        ]);
        metrics.record(Some(&finished("start", "executed", Some(0.3))));
        metrics.record(Some(&finished("Stop", "failed", Some(5000.0))));
        metrics.record(None);
        let text = encoded(&metrics);
        for line in [
            "# HELP engine_commands_total Finished command rows in strategy_commands, by command word and outcome.",
            "# TYPE engine_commands_total counter",
            "engine_commands_total{command=\"start\",status=\"executed\"} 5",
            "engine_commands_total{command=\"start\",status=\"failed\"} 1",
            "engine_commands_total{command=\"other\",status=\"failed\"} 3",
            "engine_commands_total{command=\"stop\",status=\"executed\"} 0",
            "# TYPE engine_command_latency_seconds histogram",
            "engine_command_latency_seconds_bucket{command=\"start\",le=\"0.01\"} 1",
            "engine_command_latency_seconds_bucket{command=\"start\",le=\"0.05\"} 1",
            "engine_command_latency_seconds_bucket{command=\"start\",le=\"0.1\"} 5",
            "engine_command_latency_seconds_bucket{command=\"start\",le=\"0.25\"} 5",
            "engine_command_latency_seconds_bucket{command=\"start\",le=\"0.5\"} 6",
            "engine_command_latency_seconds_bucket{command=\"start\",le=\"+Inf\"} 6",
            "engine_command_latency_seconds_count{command=\"start\"} 6",
            "engine_command_latency_seconds_bucket{command=\"other\",le=\"3600\"} 0",
            "engine_command_latency_seconds_bucket{command=\"other\",le=\"+Inf\"} 1",
            "engine_command_latency_seconds_sum{command=\"other\"} 5000.0",
            "engine_command_latency_seconds_count{command=\"pause\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in\n{text}");
        }
        assert!(!text.contains("pending"), "{text}");
    }

    #[test]
    fn a_value_on_a_bound_counts_above_it_like_width_bucket() {
        let h = LatencyHistogram::default();
        h.observe(0.0);
        h.observe(0.01);
        h.observe(1e9);
        let state = h.state.lock().unwrap();
        assert_eq!(state.counts[0], 1);
        assert_eq!(state.counts[1], 1);
        assert_eq!(state.counts[LATENCY_BUCKETS.len()], 1);
    }

    #[test]
    fn seeding_again_replaces_the_totals() {
        let metrics = CommandMetrics::default();
        let totals = [total("pause", "executed", Some(5), 2, 0.6)];
        metrics.seed_from(&totals);
        metrics.seed_from(&totals);
        let text = encoded(&metrics);
        assert!(text.contains("engine_commands_total{command=\"pause\",status=\"executed\"} 2\n"));
        assert!(text.contains("engine_command_latency_seconds_count{command=\"pause\"} 2\n"));
        assert!(text.contains("engine_command_latency_seconds_sum{command=\"pause\"} 0.6\n"));
    }
}

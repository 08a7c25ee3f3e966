//! Every SQL statement the engine runs, the typed rows they return, and the
//! vocabularies of the database (status words, desired states, command words,
//! command outcomes).
//!
//! # Layout
//! - [`vocab`]: the words the database stores, as types ([`Status`],
//!   [`DesiredState`], [`CommandWord`], [`CommandStatus`]) mapped to their `TEXT`
//!   columns with `sqlx::Type`; an unknown word read is an error.
//! - [`manager`]: what the daemon says to PostgreSQL: connecting (creating the
//!   database when missing), migrations, claiming and finishing commands, recording
//!   observed and desired state, metrics and their pruning.
//! - [`lease`]: one manager per database, or a cluster's nodes: the advisory locks,
//!   the lease row and `engine_nodes`, taken and beaten by the daemon, read by
//!   operators' tools. [`nodes`]: the cluster's nodes as `enginectl nodes` shows them.
//! - [`command_parts`]: global commands in a cluster: every node's part of one,
//!   claimed in order with the node's own commands, the row finished with the last.
//!   [`cluster_ops`]: draining nodes and moving strategies (the hand-over statement,
//!   the nodes' room, commands put back for a new owner).
//! - [`commands`]: inserting a command row (one statement for every tool), and
//!   checking a row and turning it into a typed command.
//! - [`executions`]: interval strategies' columns and their statistics (read when a
//!   strategy is planned, written in batches).
//! - [`operator`]: what `enginectl` reads and inserts (strategies, latest metrics,
//!   history, progress of its commands, `doctor`'s checks).
//! - [`api`]: what the manager's HTTP API reads (strategies with metrics, recent
//!   commands and events, a command's outcome, the metrics history).
//! - [`runs_api`]: what the HTTP API and `enginectl` read and insert about runs:
//!   a run (queued), runs and their items, the queue, the estimated start, `cancel`.
//! - [`limits`]: the size caps on `config` and `parameters`, and their refusals.
//! - [`audit`]: reading `engine_audit`, the append-only record of who asked for
//!   what (kept by triggers).
//! - [`roles`]: the database roles (`engine_viewer`, `engine_operator`,
//!   `engine_manager`): creating them and their grants (one table-driven list), and
//!   the manager's start-up check of its own rights.
//! - [`bench`]: what `engine-bench` reads and writes to time the engine.
//! - [`metrics`]: what Prometheus `/metrics` reads, and the command retention.
//! - [`market`]: market data at rest: bulk loads of `securities` and `market_bars`
//!   (binary COPY) and what `enginectl data` reads.
//! - [`runs`]: what the manager says about runs: claims, transitions, progress,
//!   items, adoption and cancel reads, `securities`, and the bars COPY to a file.
//! - [`schedules`]: schedules of runs: a due time fired into exactly one run (the
//!   `overlap` rule, the statistics), and what operators insert, change and list.
//! - [`orders`]: `strategy_orders`: recording the paper orders executors report
//!   (batched inserts; a run's orders file copied at its end) and reading them.
//! - [`tls`]: the `sslmode` of every connection: remote servers' certificates
//!   verified by default, unverified modes only with `--tls-insecure`.
//!
//! Architecture invariant: no other crate writes SQL against the engine's tables.
//! The daemon, `enginectl`, the HTTP API and the bench call functions here.

pub mod api;
pub mod audit;
pub mod bench;
pub mod cluster_ops;
pub mod command_parts;
pub mod commands;
pub mod executions;
pub mod lease;
pub mod limits;
pub mod manager;
pub mod market;
pub mod metrics;
pub mod nodes;
pub mod operator;
pub mod orders;
pub mod roles;
pub mod runs;
pub mod runs_api;
pub mod schedules;
pub mod tls;
pub mod vocab;

#[cfg(test)]
mod test_db;

pub use lease::LOCK_KEY;
pub use manager::MIGRATOR;
pub use vocab::{CatchUp, CommandStatus, CommandWord, DesiredState, Overlap, Status, UnknownWord};

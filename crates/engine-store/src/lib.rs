//! Every SQL statement the engine runs, the typed rows they return, and the
//! vocabularies of the database (status words, desired states, command words,
//! command outcomes).
//!
//! # Layout
//! - [`manager`]: what the daemon says to PostgreSQL: connecting (creating the
//!   database when missing), migrations, claiming commands, recording observed state.
//! - [`operator`]: what operators' tools (`enginectl`, the HTTP API) read and insert.
//! - [`commands`]: command rows checked and turned into typed commands.
//! - [`metrics`]: what Prometheus `/metrics` reads, and the command retention.
//! - [`duty`]: the dashboard's kill switch (global command rows).
//!
//! Architecture invariant: no other crate writes SQL. The daemon, `enginectl`, the
//! HTTP API and the bench call functions here.

pub mod commands;
pub mod duty;
pub mod manager;
pub mod metrics;
pub mod operator;

pub use manager::MIGRATOR;

/// The advisory lock key ("STRATENG" in ASCII). A session holding it is the live
/// manager of the database (`enginectl doctor` looks for it in `pg_locks`).
pub const LOCK_KEY: i64 = 0x5354_5241_5445_4e47;

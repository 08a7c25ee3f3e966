//! The runtime that hosts one strategy in one process, and the built-in strategies.
//!
//! # Layout
//! - [`runtime`]: the whole executor — flags, config from stdin, the control link to
//!   the manager, Redis subscriptions, the event loop, shutdown. `main_with(registry)`
//!   is the entry point (see `examples/custom_executor.rs`).
//! - [`strategies`]: `sma_crossover`, `mean_reversion`, `heartbeat` and
//!   [`strategies::builtin_registry`].
//!
//! A user with their own strategies writes a `main` that builds a
//! [`strategy_sdk::Registry`], registers them, and calls [`runtime::main_with`].

pub mod runtime;
pub mod strategies;

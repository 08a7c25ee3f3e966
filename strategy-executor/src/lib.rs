//! The runtime that hosts one strategy in one process, and the built-in strategies.
//!
//! # Layout
//! - [`runtime`]: the whole executor, a file per concern — flags and modes, config
//!   from a file or stdin, the event loop around the strategy's
//!   [`strategy_sdk::Host`], the control link to the manager, the Redis subscriber
//!   and publisher. `main_with(registry)` is the entry point (see
//!   `examples/custom_executor.rs`).
//! - [`strategies`]: `sma_crossover`, `mean_reversion`, `heartbeat` and
//!   [`strategies::builtin_registry`].
//!
//! A user with their own strategies writes a `main` that builds a
//! [`strategy_sdk::Registry`], registers them, and calls [`runtime::main_with`]
//! (walk-through: `strategy-sdk/README.md`).

pub mod runtime;
pub mod strategies;

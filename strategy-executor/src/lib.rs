//! The runtime that hosts one strategy in one process, the built-in strategies, and
//! the market data simulator.
//!
//! # Layout
//! - [`runtime`]: the whole executor — flags, config from stdin, the control link to
//!   the manager, Redis subscriptions, the event loop, shutdown. `main_with(registry)`
//!   is the entry point (see `examples/custom_executor.rs`).
//! - [`strategies`]: `sma_crossover`, `mean_reversion`, `heartbeat` and
//!   [`strategies::builtin_registry`].
//! - [`market_sim`]: geometric Brownian motion ticks on `live_data:{token}`.
//!
//! A user with their own strategies writes a `main` that builds a
//! [`strategy_sdk::Registry`], registers them, and calls [`runtime::main_with`].

pub mod market_sim;
pub mod runtime;
pub mod strategies;

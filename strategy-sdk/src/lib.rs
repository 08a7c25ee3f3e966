#![doc = include_str!("../README.md")]
//!
//! # Layout
//! - [`strategy`]: the [`Strategy`] trait a strategy implements, and why it is shut
//!   down ([`ShutdownReason`]).
//! - [`context`]: the [`Context`] a strategy acts through (subscriptions, paper
//!   orders, custom metrics, halting itself) — only what a strategy calls.
//! - [`broker`]: the [`PaperBroker`] that fills orders at the last price and keeps
//!   positions, PnL, orders count and success rate.
//! - [`execution`]: one interval execution step's outcome ([`ExecutionReport`],
//!   [`ExecuteError`]) and why a host could not run one ([`ExecutionError`]).
//! - [`modes`]: the [`RunMode`]s (`live`, `backtest`, `screener`, `alert`), the
//!   [`Bar`]s a strategy is given outside live trading, and the [`Signal`] an alert
//!   raises.
//! - [`indicators`]: SMA, EMA, MACD, RSI, relative volume and the distance to the
//!   52-week high, over plain slices.
//! - [`backtest`]: replaying bars through a strategy and the paper broker, with the
//!   performance metrics of a run.
//! - [`config`]: strict parsing of a strategy's JSON config into a typed struct.
//! - [`registry`]: the [`Registry`] from `strategy_type` names to constructors.
//! - [`testkit`]: [`testkit::TestHarness`], to test a strategy with plain
//!   `cargo test`.
//! - [`host`]: [`Host`], the driving side of a strategy (feeding events, reading
//!   reports), shared by the executor runtime and the test kit. Strategy authors do
//!   not need it.
//!
//! The wire protocol between the engine's binaries lives in the `engine-protocol`
//! crate; the types of it an author meets, [`Tick`] and [`ShutdownReason`], are
//! re-exported here.
//!
//! **Architecture invariant:** the SDK does no I/O; strategies are synchronous and
//! act only through [`Context`].

pub mod backtest;
pub mod broker;
pub mod config;
pub mod context;
pub mod execution;
pub mod host;
pub mod indicators;
pub mod modes;
pub mod registry;
pub mod strategy;
#[cfg(test)]
mod testing;
pub mod testkit;

pub use broker::{
    BrokerSnapshot, Fill, OrderError, OrderIds, PaperBroker, Position, Side, SnapshotError,
};
pub use config::{parse_config, ConfigError};
pub use context::Context;
pub use execution::{ExecuteError, ExecutionError, ExecutionReport};
pub use host::Host;
pub use modes::{Bar, RunMode, Signal, SignalPriority};
pub use registry::{Registry, RegistryError, StrategyInfo};
pub use strategy::{ShutdownReason, Strategy, Tick};

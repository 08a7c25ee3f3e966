//! What a strategy author needs: the `Strategy` trait, the `Context` it acts through,
//! the paper broker, strict config parsing and the `Registry`.
//!
//! # Layout
//! - [`strategy`]: the [`Strategy`] trait a strategy implements, and why it is shut down.
//! - [`context`]: the [`Context`] a strategy acts through (subscriptions, paper orders,
//!   custom metrics, halting itself).
//! - [`broker`]: the [`PaperBroker`] that fills orders at the last price and keeps
//!   positions, PnL, orders count and success rate.
//! - [`config`]: strict parsing of a strategy's JSON config into a typed struct.
//! - [`registry`]: the [`Registry`] from `strategy_type` names to constructors.
//!
//! The wire protocol between the engine's binaries lives in the `engine-protocol`
//! crate; the only types of it an author meets, [`Tick`] and [`ShutdownReason`], are
//! re-exported here.

pub mod broker;
pub mod config;
pub mod context;
pub mod registry;
pub mod strategy;

pub use broker::{Fill, OrderError, PaperBroker, Position, Side};
pub use config::{parse_config, ConfigError};
pub use context::Context;
pub use engine_protocol::Tick;
pub use registry::{Registry, RegistryError, StrategyInfo};
pub use strategy::{ShutdownReason, Strategy};

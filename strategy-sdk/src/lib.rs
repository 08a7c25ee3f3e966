//! What a strategy author needs, and the wire protocol the engine's two binaries share.
//!
//! # Layout
//! - [`strategy`]: the [`Strategy`] trait a strategy implements, and why it is shut down.
//! - [`context`]: the [`Context`] a strategy acts through (subscriptions, paper orders,
//!   custom metrics, halting itself).
//! - [`broker`]: the [`PaperBroker`] that fills orders at the last price and keeps
//!   positions, PnL, orders count and success rate.
//! - [`config`]: strict parsing of a strategy's JSON config into a typed struct.
//! - [`registry`]: the [`Registry`] from `strategy_type` names to constructors.
//! - [`protocol`]: Redis channel names and payload structs (the public contract).
//! - [`control`]: the private manager ⇄ executor control link (a Unix socket), which
//!   carries readiness and acknowledgements so they never depend on pub/sub.

pub mod broker;
pub mod config;
pub mod context;
pub mod control;
pub mod protocol;
pub mod registry;
pub mod strategy;

pub use broker::{Fill, OrderError, PaperBroker, Position, Side};
pub use config::{parse_config, ConfigError};
pub use context::Context;
pub use protocol::{Channels, Status, StopMode, Tick};
pub use registry::{Registry, RegistryError, StrategyInfo};
pub use strategy::{ShutdownReason, Strategy};

//! The [`Strategy`] trait: the whole surface a strategy author implements.
//!
//! Strategy logic is synchronous and does no I/O of its own: it reacts to events and
//! acts through the [`Context`] (paper orders, subscriptions, metrics); the executor
//! runtime does the networking.

use crate::config::ConfigError;
use crate::context::Context;
pub use engine_protocol::{ShutdownReason, Tick};

use serde_json::Value;
use std::time::Duration;

/// A trading strategy. Constructed from its config by the function registered in the
/// [`crate::Registry`], which is where a bad config is rejected.
pub trait Strategy: Send {
    /// Called once before any tick: subscribe to tokens here.
    fn on_start(&mut self, ctx: &mut Context);

    /// A market tick for a subscribed token (the broker already knows its price).
    fn on_tick(&mut self, ctx: &mut Context, tick: &Tick);

    /// How often [`Strategy::on_timer`] runs; `None` (the default) for never.
    fn timer_interval(&self) -> Option<Duration> {
        None
    }

    fn on_timer(&mut self, _ctx: &mut Context) {}

    /// Paused: no ticks or timers are delivered until resumed.
    fn on_pause(&mut self, _ctx: &mut Context) {}

    fn on_resume(&mut self, _ctx: &mut Context) {}

    /// A new config at run time. Validate it fully; on `Err` keep the old one.
    fn update_config(&mut self, _ctx: &mut Context, _config: &Value) -> Result<(), ConfigError> {
        Err(ConfigError::new(
            "",
            "this strategy does not accept config updates while running; stop it, update, then start it",
        ))
    }

    /// Called once before the process exits.
    fn on_shutdown(&mut self, _ctx: &mut Context, _reason: ShutdownReason) {}
}

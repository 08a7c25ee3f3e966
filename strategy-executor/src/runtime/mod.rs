//! The executor runtime: hosts one strategy in one OS process.
//!
//! # Layout
//! - [`cli`]: the flags ([`Cli`]: clap derive, `REDIS_URL` / `ENGINE_REDIS_PREFIX`
//!   fallbacks) and the modes: `--list`, `--validate` and run mode. [`main_with`] is
//!   the whole program behind a `main`; a user with their own strategies calls it
//!   with their own [`Registry`](strategy_sdk::Registry).
//! - [`config`]: reading the strategy's config from a file or stdin.
//! - [`run`]: `--run-id`: one backtest, screener or alert run, streamed from its
//!   bars file into its outbox (no Redis, no control link, no database).
//! - `errors.rs`: how a failure reaches stderr (one line, the whole chain).
//! - [`start`]: run mode: build the strategy, start the background tasks, run the
//!   event loop on a current-thread tokio runtime, wait for the tasks.
//! - `event_loop.rs`: the `EventLoop` owns the strategy's
//!   [`Host`](strategy_sdk::Host) (no locks) and `select!`s over commands, ticks, the
//!   strategy's timer, the metrics interval and signals (`signals.rs`);
//!   `commands.rs` is how it applies a command, `report.rs` what it sends out
//!   (state frames, acks, status and metrics messages), `broker_state.rs` the
//!   broker's state restored at start and reported for the next executor,
//!   `orders.rs` the paper orders reported for `strategy_orders`.
//! - Background tasks that talk to the loop only through bounded channels:
//!   - `control_link.rs`: a Unix socket to the manager, reconnected forever,
//!     carrying `hello`, state changes, acks and `halted` out and commands in
//!     (framed by `LinesCodec`);
//!   - `redis_subscriber.rs`: `live_data:{token}` for the strategy's
//!     subscriptions, reconnected with backoff;
//!   - `redis_publisher.rs`: status and metrics messages.
//!
//! **Architecture invariant:** nothing on the start-up path or on the path to an exit
//! waits on Redis for longer than a short bound. Readiness is `State{running}` on the
//! control link; Redis may be down for the whole life of the process.
//!
//! **Architecture invariant:** commands come only on the control link. The Redis
//! command channels are the manager's announcements for dashboards; the executor
//! does not subscribe to them, so whoever can publish on Redis cannot command it.
//!
//! **Architecture invariant:** the config is read from a file or stdin, never from
//! argv, and is never logged.

mod broker_state;
pub mod cli;
mod commands;
pub mod config;
mod control_link;
mod errors;
mod event_loop;
mod lease;
mod orders;
mod redis_publisher;
mod redis_subscriber;
mod report;
pub mod run;
mod signals;
pub mod start;

pub use cli::{main_with, run_cli, Cli};
pub use config::{read_config, ConfigReadError};
pub use start::{run, RunOptions, StartupError};

/// Ticks taken at once: by the loop from the tick channel (a burst is handled in
/// batches, and the other branches of the loop — commands, signals, timers — are
/// looked at between two batches), and by the Redis subscriber from its connection.
const TICK_BATCH: usize = 256;

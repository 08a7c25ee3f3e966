//! The signals the executor handles: SIGTERM and SIGINT end the strategy (reason
//! `host_shutdown`); SIGHUP is ignored so that a closing terminal of the manager never
//! takes strategies down.

use tokio::signal::unix::{signal, Signal, SignalKind};

pub(super) struct ProcessSignals {
    pub(super) terminate: Signal,
    pub(super) interrupt: Signal,
    pub(super) hangup: Signal,
}

impl ProcessSignals {
    pub(super) fn new() -> std::io::Result<Self> {
        Ok(ProcessSignals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }
}

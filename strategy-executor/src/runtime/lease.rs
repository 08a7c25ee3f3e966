//! In a cluster (the manager runs with `--cluster`), the executor trades under its
//! node's lease on the strategy (CONTRACT.md §7): it stops trading and exits with
//! [`control::EXIT_FENCED`] when the lease's deadline passes without a renewal,
//! on its own clock, whatever became of its manager. Another node starts the strategy
//! only after that deadline, so two executors never trade one strategy.
//!
//! Three guards, from the gentlest: the event loop ends at the deadline (the
//! `expired` token, fired by [`watch`]); no strategy callback begins once the
//! deadline passed ([`Lease::over`], checked before each); and a thread of its own
//! ([`backstop`]) ends the process outright shortly after, should strategy code hold
//! the loop.

use engine_protocol::control::{self, monotonic_ms, LeaseGrant};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How long after the deadline the backstop ends the process if the loop has not:
/// well inside the room the manager leaves between this deadline and the moment
/// another node may take over (at least 200 ms, `fence_margin`).
const BACKSTOP_MS: u64 = 100;

/// The lease: its deadline (in [`monotonic_ms`]) and epoch.
#[derive(Debug)]
pub(super) struct Lease {
    deadline_ms: AtomicU64,
    epoch: i64,
    renewed: Notify,
    expired: CancellationToken,
}

impl Lease {
    pub(super) fn new(grant: LeaseGrant) -> Arc<Lease> {
        Arc::new(Lease {
            deadline_ms: AtomicU64::new(grant.deadline_ms),
            epoch: grant.epoch,
            renewed: Notify::new(),
            expired: CancellationToken::new(),
        })
    }

    /// The epoch of the lease (client order ids carry it).
    pub(super) fn epoch(&self) -> i64 {
        self.epoch
    }

    pub(super) fn deadline_ms(&self) -> u64 {
        self.deadline_ms.load(Ordering::Acquire)
    }

    /// Whether the deadline has passed: nothing may trade any more.
    pub(super) fn over(&self) -> bool {
        self.expired.is_cancelled() || monotonic_ms() >= self.deadline_ms()
    }

    /// Fired once the deadline passed.
    pub(super) fn expired(&self) -> &CancellationToken {
        &self.expired
    }

    /// A renewal from the manager. A lease that already ran out stays out (its
    /// strategy may be another node's by now), and a renewal of another epoch is not
    /// this lease's.
    pub(super) fn renew(&self, grant: LeaseGrant) {
        if grant.epoch != self.epoch {
            tracing::warn!(
                epoch = self.epoch,
                offered = grant.epoch,
                "a lease renewal for another epoch; ignored"
            );
            return;
        }
        if self.over() {
            tracing::warn!("a lease renewal came after the deadline; ignored");
            return;
        }
        self.deadline_ms
            .fetch_max(grant.deadline_ms, Ordering::AcqRel);
        self.renewed.notify_one();
    }
}

/// Fire `expired` when the deadline passes unrenewed (or end with `cancel`).
pub(super) async fn watch(lease: Arc<Lease>, cancel: CancellationToken) {
    loop {
        let left = lease.deadline_ms().saturating_sub(monotonic_ms());
        if left == 0 {
            tracing::warn!(
                "the lease ran out without a renewal from the manager; stopping trading"
            );
            lease.expired.cancel();
            return;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(left)) => {}
            _ = lease.renewed.notified() => {}
        }
    }
}

/// A thread that ends the process [`BACKSTOP_MS`] after the deadline, if it is
/// still there: strategy code stuck in a callback cannot keep it trading.
pub(super) fn backstop(lease: Arc<Lease>) {
    let spawned = std::thread::Builder::new()
        .name("lease-backstop".into())
        .spawn(move || loop {
            let end = lease.deadline_ms() + BACKSTOP_MS;
            let now = monotonic_ms();
            if now >= end {
                eprintln!("the lease ran out and the strategy did not stop in time; exiting");
                std::process::exit(control::EXIT_FENCED);
            }
            std::thread::sleep(Duration::from_millis(end - now));
        });
    if let Err(err) = spawned {
        // Without the thread the loop's own guards still hold.
        tracing::error!(error = %err, "cannot start the lease backstop thread");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(epoch: i64, in_ms: u64) -> LeaseGrant {
        LeaseGrant {
            epoch,
            deadline_ms: monotonic_ms() + in_ms,
        }
    }

    #[test]
    fn a_renewal_extends_only_a_live_lease_of_the_same_epoch() {
        let lease = Lease::new(grant(3, 60_000));
        let first = lease.deadline_ms();
        lease.renew(grant(4, 120_000));
        assert_eq!(lease.deadline_ms(), first, "another epoch's renewal");
        lease.renew(grant(3, 120_000));
        assert!(lease.deadline_ms() > first);
        let later = lease.deadline_ms();
        lease.renew(grant(3, 1_000));
        assert_eq!(lease.deadline_ms(), later, "a renewal never shortens");
        assert!(!lease.over());

        let gone = Lease::new(LeaseGrant {
            epoch: 1,
            deadline_ms: monotonic_ms().saturating_sub(1),
        });
        assert!(gone.over());
        gone.renew(grant(1, 60_000));
        assert!(gone.over(), "a lease that ran out stays out");
    }

    #[tokio::test]
    async fn the_watch_fires_at_the_deadline_unless_renewed() {
        let lease = Lease::new(grant(1, 2_000));
        let first = lease.deadline_ms();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(watch(lease.clone(), cancel.clone()));
        // Renewed before it runs out: it lasts past the first deadline.
        lease.renew(grant(1, 2_500));
        tokio::time::timeout(Duration::from_secs(10), lease.expired().cancelled())
            .await
            .expect("the lease expires once renewals stop");
        assert!(
            monotonic_ms() >= first + 400,
            "it outlived its first deadline"
        );
        assert!(lease.over());
        task.await.unwrap();
    }
}

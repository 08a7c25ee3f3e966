//! The manager's lease, in an operator's words.

use engine_store::lease::{LeaseInfo, ManagerState};

/// Says how the manager holding the lease is doing.
pub trait DescribeLease {
    /// "pid 123 on host" and how it is doing, in words.
    fn describe(&self) -> String;
}

impl DescribeLease for LeaseInfo {
    /// "pid 123 on host" and how it is doing, in words.
    fn describe(&self) -> String {
        let age = crate::table::duration(self.heartbeat_age_s);
        match self.state() {
            ManagerState::Alive => {
                format!("pid {} on {}, heartbeat {age} ago", self.pid, self.host)
            }
            ManagerState::Gone => format!(
                "the last one, pid {} on {}, is gone (its lock is free; last heartbeat {age} ago)",
                self.pid, self.host
            ),
            ManagerState::Silent => format!(
                "pid {} on {} holds the lock but its last heartbeat was {age} ago (hung, or its \
                 database connection is stuck)",
                self.pid, self.host
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    #[test]
    fn a_lease_is_described_in_words() {
        let lease = |lock_held, heartbeat_age_s| LeaseInfo {
            host: "h".into(),
            pid: 7,
            started_at: Utc::now(),
            heartbeat_age_s,
            lock_held,
        };
        assert!(lease(false, 1.0).describe().contains("is gone"));
        assert_eq!(
            lease(true, 1.0).describe(),
            "pid 7 on h, heartbeat 1.0s ago"
        );
    }
}

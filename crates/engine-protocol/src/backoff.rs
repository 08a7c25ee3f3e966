//! [`Backoff`]: the doubling delay between attempts to reach something that is away
//! (the database, Redis, the manager's control socket), capped, and reset once it
//! answers again.

use std::time::Duration;

/// A doubling delay from `min` up to `max`.
///
/// ```
/// use engine_protocol::backoff::Backoff;
/// use std::time::Duration;
///
/// let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(300));
/// assert_eq!(backoff.next_delay(), Duration::from_millis(100));
/// assert_eq!(backoff.next_delay(), Duration::from_millis(200));
/// assert_eq!(backoff.next_delay(), Duration::from_millis(300));
/// backoff.reset();
/// assert_eq!(backoff.next_delay(), Duration::from_millis(100));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// Start at `min`; never wait longer than `max`.
    pub const fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            current: min,
        }
    }

    /// The delay to wait now; the next one is twice as long (at most `max`).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.current;
        self.current = self.current.saturating_mul(2).min(self.max);
        delay
    }

    /// The delay [`Backoff::next_delay`] returns next, without advancing.
    pub fn peek(&self) -> Duration {
        self.current
    }

    /// Start over at `min` (the other side answered).
    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_up_to_the_cap() {
        let mut b = Backoff::new(50 * MS, 1000 * MS);
        let delays: Vec<_> = (0..8).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [50, 100, 200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(b.peek(), 1000 * MS);
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(100 * MS, 5000 * MS);
        b.next_delay();
        b.next_delay();
        assert_eq!(b.peek(), 400 * MS);
        b.reset();
        assert_eq!(b.peek(), 100 * MS);
        assert_eq!(b.next_delay(), 100 * MS);
    }

    #[test]
    fn never_overflows() {
        let mut b = Backoff::new(Duration::MAX / 2 + MS, Duration::MAX);
        b.next_delay();
        assert_eq!(b.next_delay(), Duration::MAX);
        assert_eq!(b.next_delay(), Duration::MAX);
        // A cap below the start is the delay from the second attempt on.
        let mut b = Backoff::new(10 * MS, 5 * MS);
        assert_eq!((b.next_delay(), b.next_delay()), (10 * MS, 5 * MS));
    }
}

//! Retry pacing: every retry loop of the client waits through one
//! [`RetryPolicy`] — exponential backoff with jitter, built on `backon` —
//! instead of a fixed pause.
//!
//! Why not a fixed pause: after a leader election or a broker restart,
//! every client of the cluster retries at once. A fixed 100 ms pause makes
//! them retry in lockstep (a thundering herd) and keeps hammering a broker
//! that stays away for seconds; doubling pauses with random jitter spread
//! the retries out and back off from a long outage, while the first retry
//! still comes quickly for the common short hiccup.
//!
//! Jitter (backon's): each pause is its exponential delay plus a random
//! fraction of it, so a pause lies in `[delay, 2 * delay)`; the delay
//! itself doubles from `first` up to `max`.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};

use crate::error::ClientError;

/// How a retry loop paces itself: pauses double from `first` up to `max`
/// (each plus up to 100 % jitter), for at most `attempts_max` retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetryPolicy {
    /// Pause before the first retry (before jitter).
    pub(crate) first: Duration,
    /// Longest pause before jitter.
    pub(crate) max: Duration,
    /// Retries after the first attempt; `None`: as long as the caller
    /// keeps asking (heartbeats, lease renewals bound themselves).
    pub(crate) attempts_max: Option<usize>,
}

impl RetryPolicy {
    /// Coordination requests (commits, releases, joins) ridden through an
    /// election: 50 ms doubling to 500 ms, 8 retries — about 2.5–5 s of
    /// pauses, as long as a metadata-group election takes at worst.
    pub(crate) const COORDINATION: RetryPolicy = RetryPolicy {
        first: Duration::from_millis(50),
        max: Duration::from_millis(500),
        attempts_max: Some(8),
    };

    /// Background loops that retry until they succeed or are stopped (the
    /// group heartbeat): 50 ms doubling to 1 s.
    pub(crate) const BACKGROUND: RetryPolicy = RetryPolicy {
        first: Duration::from_millis(50),
        max: Duration::from_secs(1),
        attempts_max: None,
    };

    /// This policy with its pauses capped at `max` (a lease renewal must
    /// retry well within the lease).
    pub(crate) fn capped(self, max: Duration) -> RetryPolicy {
        RetryPolicy {
            first: self.first.min(max),
            max: self.max.min(max),
            ..self
        }
    }

    fn builder(&self) -> ExponentialBuilder {
        let b = ExponentialBuilder::new()
            .with_jitter()
            .with_factor(2.0)
            .with_min_delay(self.first)
            .with_max_delay(self.max.max(self.first));
        match self.attempts_max {
            Some(n) => b.with_max_times(n),
            None => b.without_max_times(),
        }
    }

    /// A fresh sequence of pauses for one retry loop.
    pub(crate) fn backoff(&self) -> Backoff {
        Backoff {
            pauses: self.builder().build(),
        }
    }

    /// Runs `op` until it succeeds, fails with an error that is not
    /// [retriable](ClientError::is_retriable), or the policy runs out of
    /// retries (then the last error is returned).
    ///
    /// # Cancel safety
    /// Dropping the future stops retrying; an attempt in flight may or may
    /// not have reached the broker.
    pub(crate) async fn retry<T, F, Fut>(&self, op: F) -> Result<T, ClientError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        op.retry(self.builder())
            .sleep(tokio::time::sleep)
            .when(ClientError::is_retriable)
            .notify(|e, pause| tracing::debug!(error = %e, ?pause, "retrying"))
            .await
    }
}

/// The pauses of one retry loop, in order.
#[derive(Debug)]
pub(crate) struct Backoff {
    pauses: backon::ExponentialBackoff,
}

impl Backoff {
    /// The next pause, or `None` once the policy's retries are used up.
    pub(crate) fn next_pause(&mut self) -> Option<Duration> {
        self.pauses.next()
    }

    /// Sleeps for the next pause; `false` (at once) when the retries are
    /// used up.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped wait uses up one pause, nothing else.
    pub(crate) async fn wait(&mut self) -> bool {
        match self.next_pause() {
            Some(pause) => {
                tokio::time::sleep(pause).await;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_with_jitter_up_to_the_cap_and_stop_at_the_limit() {
        let policy = RetryPolicy {
            first: Duration::from_millis(10),
            max: Duration::from_millis(40),
            attempts_max: Some(5),
        };
        let mut b = policy.backoff();
        let bases = [10, 20, 40, 40, 40];
        for base in bases {
            let base = Duration::from_millis(base);
            let pause = b.next_pause().expect("within the limit");
            assert!(
                pause >= base && pause < base * 2,
                "{pause:?} not in [{base:?}, 2 * {base:?})"
            );
        }
        assert_eq!(b.next_pause(), None, "the sixth retry is refused");
    }

    #[test]
    fn jitter_spreads_clients_apart() {
        // Two clients starting together must not retry in lockstep.
        let policy = RetryPolicy::BACKGROUND;
        let a: Vec<Duration> = {
            let mut b = policy.backoff();
            (0..6).map(|_| b.next_pause().expect("unbounded")).collect()
        };
        let b: Vec<Duration> = {
            let mut b = policy.backoff();
            (0..6).map(|_| b.next_pause().expect("unbounded")).collect()
        };
        assert_ne!(a, b, "jittered pauses of two loops coincide");
    }

    #[test]
    fn a_cap_bounds_every_pause() {
        let policy = RetryPolicy::BACKGROUND.capped(Duration::from_millis(30));
        let mut b = policy.backoff();
        for _ in 0..20 {
            assert!(b.next_pause().expect("unbounded") < Duration::from_millis(60));
        }
    }

    #[tokio::test]
    async fn retry_stops_at_a_permanent_error_and_gives_up_after_the_limit() {
        let policy = RetryPolicy {
            first: Duration::from_millis(1),
            max: Duration::from_millis(1),
            attempts_max: Some(3),
        };
        let mut calls = 0;
        let r: Result<(), _> = policy
            .retry(|| {
                calls += 1;
                async { Err(ClientError::InvalidArgument("no".into())) }
            })
            .await;
        assert!(matches!(r, Err(ClientError::InvalidArgument(_))));
        assert_eq!(calls, 1, "a permanent error is not retried");

        let mut calls = 0;
        let r: Result<(), _> = policy
            .retry(|| {
                calls += 1;
                async { Err(ClientError::Timeout(Duration::from_secs(1))) }
            })
            .await;
        assert!(matches!(r, Err(ClientError::Timeout(_))));
        assert_eq!(calls, 4, "one attempt and three retries");

        let mut calls = 0;
        let r = policy
            .retry(|| {
                calls += 1;
                let n = calls;
                async move {
                    if n < 3 {
                        Err(ClientError::Timeout(Duration::from_secs(1)))
                    } else {
                        Ok(n)
                    }
                }
            })
            .await;
        assert_eq!(r.expect("third attempt succeeds"), 3);
    }
}

//! The one retry policy of the crate ([`Backoff`]): how long to pause before trying a failed
//! database operation again, how often, and which layer does it.
//!
//! A policy of our own rather than a crate's: besides "retry this closure" (which a crate such
//! as `backon` does well), the runners pause between the rounds of their own loops, counting
//! consecutive failures that a success resets and sleeping in a `select!` with their shutdown
//! signal. One small type serves both forms with one formula.

use std::future::Future;
use std::time::Duration;

use crate::error::Result;

/// A retry policy: pauses that double from `first` up to `max`, each spread by ±25 %
/// ([`jitter`]), for at most `retries` retries.
///
/// # Which layer retries which errors
///
/// Only errors that say so ([`Error::is_retryable`](crate::Error::is_retryable)) are retried,
/// by two layers with different jobs:
///
/// 1. **The stores** ([`Backoff::STORE`]: 2 ms doubling to 250 ms, 9 retries, about 1 s in
///    all) retry every retryable error of one operation at once: a deadlock or serialization
///    victim, SQLite busy, a connection lost mid-statement. Only the store can: it re-runs its
///    own transaction from `BEGIN`, and it alone knows how to make the repeat safe (the same
///    claim id, the already-enqueued check, fencing tokens). Contention clears in milliseconds.
/// 2. **The runners** (the batch worker, the executor's loops; [`Backoff::RUNNER`]: 100 ms
///    doubling to 5 s) retry what is still retryable after the store gave up: the database is
///    unavailable (restarting, refusing connections, its pool exhausted) for longer than a
///    second. They pause for seconds and never re-run a store call at once. The batch worker
///    gives up after 20 consecutive failures (about a minute and a quarter of pauses, enough
///    for a server restart); the executor's loops pause and go on until shut down.
///
/// 3. **The callers that recognize their own write** ([`Backoff::REPEAT`]: 10 ms doubling to
///    100 ms, 3 retries): `TaskHandle::cancel`, `Executor::enqueue`, `Executor::wake` and
///    `Executor::schedule` repeat the same call, with the same arguments and time, when a
///    storage answers a retryable error (a storage that does not retry internally, or one
///    that gave up). The repeat finds what an attempt whose reply was lost did and answers it
///    (see the storage port's docs on lost replies); a caller that built the call anew would
///    be another call.
///
/// So the layers stack on purpose, fast inside slow: each runner retry is one store call with
/// its own second of fast retries. Nothing else retries database errors. A task's failed run
/// (its `RetryOptions`) and a record's failed processing (the job's retry settings) are
/// retried by the domain rules, not by this policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    /// The pause before the first retry (before jitter).
    first: Duration,
    /// The longest pause (before jitter).
    max: Duration,
    /// Retries after the first attempt before giving up.
    retries: u32,
    /// Whether a retry is worth a warning (a runner's) or only a debug line (a store's, which
    /// is routine under contention).
    warn: bool,
}

impl Backoff {
    /// Inside a store operation: see the type's docs.
    pub(crate) const STORE: Backoff = Backoff {
        first: Duration::from_millis(2),
        max: Duration::from_millis(250),
        retries: 9,
        warn: false,
    };

    /// In the runners, between store calls: see the type's docs.
    pub(crate) const RUNNER: Backoff = Backoff {
        first: Duration::from_millis(100),
        max: Duration::from_secs(5),
        retries: 20,
        warn: true,
    };

    /// Around one call to a storage, repeated with the same arguments: see the type's docs.
    pub(crate) const REPEAT: Backoff = Backoff {
        first: Duration::from_millis(10),
        max: Duration::from_millis(100),
        retries: 3,
        warn: true,
    };

    /// The pause before retry number `retry` (1 for the first), jittered; it grows with
    /// `retry` up to the policy's longest, however many retries were made.
    pub(crate) fn delay(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(16);
        jitter(self.first.saturating_mul(1 << doublings).min(self.max))
    }

    /// The pause before retry number `retry` (1 for the first), or `None` when the policy
    /// allows no more retries.
    pub(crate) fn pause(&self, retry: u32) -> Option<Duration> {
        (retry <= self.retries).then(|| self.delay(retry))
    }

    /// Runs `op` until it succeeds, fails with an error that is not retryable, or the policy
    /// gives up, pausing between attempts; `what` names the operation in the logs.
    ///
    /// `op` must be safe to repeat: an attempt may have taken effect although it failed (its
    /// reply lost), and a transaction it began is rolled back before the next.
    pub(crate) async fn retry<T, F, Fut>(&self, what: &'static str, op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.retry_observed(what, || {}, op).await
    }

    /// [`retry`](Self::retry), calling `on_retry` before each pause (to count the retries).
    pub(crate) async fn retry_observed<T, F, Fut>(
        &self,
        what: &'static str,
        on_retry: impl Fn(),
        mut op: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut retry = 0;
        loop {
            match op().await {
                Err(err) if err.is_retryable() => {
                    retry += 1;
                    let Some(delay) = self.pause(retry) else {
                        return Err(err);
                    };
                    on_retry();
                    if self.warn {
                        tracing::warn!(operation = what, retry, error = %err, "database operation failed; backing off");
                    } else {
                        tracing::debug!(operation = what, retry, error = %err, "retrying transient error");
                    }
                    tokio::time::sleep(delay).await;
                }
                result => return result,
            }
        }
    }
}

/// `d` spread by ±25 % at random, so that processes that failed (or polled) together do not
/// come back together.
pub(crate) fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.75 + fastrand::f64() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_longest_and_stay_within_the_jitter() {
        for retry in 1..=30 {
            let expected = Duration::from_millis(2)
                .saturating_mul(1 << (retry - 1).min(16))
                .min(Duration::from_millis(250));
            let delay = Backoff::STORE.delay(retry);
            assert!(
                delay >= expected.mul_f64(0.75) && delay <= expected.mul_f64(1.25),
                "retry {retry}: {delay:?} not within 25 % of {expected:?}"
            );
        }
    }

    #[test]
    fn pauses_end_after_the_last_retry() {
        assert!(Backoff::STORE.pause(9).is_some());
        assert!(Backoff::STORE.pause(10).is_none());
        assert!(Backoff::RUNNER.pause(20).is_some());
        assert!(Backoff::RUNNER.pause(21).is_none());
    }
}

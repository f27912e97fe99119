//! Where stores and runners read the time from.
//!
//! Every timestamp is milliseconds since the Unix epoch, read from the application's clock and
//! never from the database's `now()`, so that all backends agree and tests can move time.
//! Durations are [`Duration`]s in the public API and whole milliseconds in the columns; the
//! conversions between the two are here.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// A source of the current time in epoch milliseconds.
pub trait Clock: Send + Sync + Debug {
    /// The current time in milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
    }
}

/// A clock that only moves when told to, for tests of time-dependent behaviour.
///
/// Clones share the same time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    now: Arc<AtomicI64>,
}

impl ManualClock {
    /// A clock reading `now_ms`.
    pub fn new(now_ms: i64) -> Self {
        Self {
            now: Arc::new(AtomicI64::new(now_ms)),
        }
    }

    /// Sets the time.
    pub fn set(&self, now_ms: i64) {
        self.now.store(now_ms, Ordering::SeqCst);
    }

    /// Moves the time forward by `by` (whole milliseconds; saturating at the largest time).
    pub fn advance(&self, by: Duration) {
        let by = millis(by);
        // `fetch_update` cannot fail with a closure that always returns `Some`.
        let _ = self
            .now
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| {
                Some(now.saturating_add(by))
            });
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now.load(Ordering::SeqCst)
    }
}

/// How far one clock reads from another ([`Executor::clock_skew`](crate::Executor::clock_skew)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClockSkew {
    /// This clock reads later than the reference by this much.
    Ahead(Duration),
    /// This clock reads earlier than the reference by this much.
    Behind(Duration),
}

impl ClockSkew {
    /// The skew of a clock that read `ms` milliseconds later than the reference (earlier when
    /// negative).
    pub(crate) fn from_millis(ms: i64) -> Self {
        let by = Duration::from_millis(ms.unsigned_abs());
        if ms < 0 {
            Self::Behind(by)
        } else {
            Self::Ahead(by)
        }
    }

    /// How far apart the clocks are, either way.
    pub fn magnitude(self) -> Duration {
        match self {
            Self::Ahead(by) | Self::Behind(by) => by,
        }
    }
}

/// The clock stores use unless given another.
pub(crate) fn system() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// A duration in whole milliseconds, saturating at `i64::MAX` (which every limit refuses).
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `d` truncated to whole milliseconds, as a column keeps it.
pub(crate) fn whole_millis(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A column's milliseconds as a duration; `None` when negative.
pub(crate) fn from_millis(ms: i64) -> Option<Duration> {
    u64::try_from(ms).ok().map(Duration::from_millis)
}

/// Serde for a duration kept as whole milliseconds in a JSON document (the `…Ms` keys stored in
/// the JSON columns).
pub(crate) mod serde_millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes whole milliseconds, saturating at `u64::MAX`.
    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// Reads whole milliseconds.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }

    /// The same for an optional duration (`None` is left out or `null`).
    pub(crate) mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer};

        /// Writes whole milliseconds, or nothing.
        pub(crate) fn serialize<S: Serializer>(
            d: &Option<Duration>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }

        /// Reads whole milliseconds or `null`.
        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<Duration>, D::Error> {
            Option::<u64>::deserialize(d).map(|ms| ms.map(Duration::from_millis))
        }
    }
}

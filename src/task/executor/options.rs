//! The executor's settings: [`ExecutorOptions`], how long finished executions are kept
//! ([`Retention`]) and when one enqueued execution may first run ([`EnqueueOptions`]).

use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::task::TaskExecutionStatus;
#[cfg(doc)]
use crate::task::{Executor, TaskExecution, TaskOptions};

/// Settings of an [`Executor`].
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// This executor's id, recorded on the executions it claims (default: a fresh `ex_` id).
    pub executor_id: Option<String>,
    /// Most executions run at once by this executor.
    pub max_concurrent: usize,
    /// Most executions claimed by one claim statement.
    pub claim_batch_size: u64,
    /// Most rows handled per iteration of the parents, close, expire and cancel loops.
    pub background_batch_size: u64,
    /// How long an idle loop sleeps before polling again (with ±25 % jitter).
    pub poll_interval: Duration,
    /// How long the expire loop sleeps between scans.
    pub expire_interval: Duration,
    /// How far past its timeout a running execution's lease reaches, and how long a parent
    /// claimed for processing stays claimed. Another executor takes over after it. Taken as at
    /// most [`MAX_LEASE_MARGIN`](crate::task::MAX_LEASE_MARGIN).
    ///
    /// Leases compare the clocks of the executors that share the storage: keep their skew well
    /// below this margin (see [`Executor::clock_skew`]).
    pub lease_margin: Duration,
    /// The queues this executor claims from (`None`, the default: every queue). Either way it
    /// only claims executions of tasks registered with it.
    pub queues: Option<Vec<String>>,
    /// How long finished executions are kept before this executor deletes them (`None`, the
    /// default: kept forever). Any number of executors may prune at once.
    pub retention: Option<Retention>,
    /// Where time is read from.
    pub clock: Arc<dyn Clock>,
    /// Constant labels added to every metric of this executor (default: none), for example
    /// `("executor", "billing")` to tell two executors of one process apart; see
    /// [`metric`](crate::metric). Keep their values few: each distinct set is a time series.
    pub metric_labels: Vec<(String, String)>,
    /// How often this executor samples the number of unfinished executions per queue and
    /// status for the [`TASK_QUEUE_DEPTH`](crate::metric::TASK_QUEUE_DEPTH) gauge (default:
    /// every 30 s; `None`: never). One aggregate query per sample; with many executors, one
    /// or two sampling is enough.
    pub queue_depth_interval: Option<Duration>,
    /// Whether the span of a run follows from the span that enqueued it, when it was
    /// enqueued through this executor and is due at once (default: true). The enqueuing span
    /// is kept until the run starts, so exporters that time a span by its close see it end
    /// then: turn this off when that matters more than the link.
    pub follow_enqueuer_spans: bool,
}

impl Default for ExecutorOptions {
    fn default() -> Self {
        Self {
            executor_id: None,
            max_concurrent: 1000,
            claim_batch_size: 100,
            background_batch_size: 100,
            poll_interval: Duration::from_millis(100),
            expire_interval: Duration::from_secs(1),
            lease_margin: Duration::from_secs(60),
            queues: None,
            retention: None,
            clock: Arc::new(SystemClock),
            metric_labels: Vec::new(),
            queue_depth_interval: Some(Duration::from_secs(30)),
            follow_enqueuer_spans: true,
        }
    }
}

/// How long finished executions are kept, by how they ended; see [`Executor::prune`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Keep `completed` executions this long after they finished (`None`: forever).
    pub completed: Option<Duration>,
    /// Keep executions that failed (`failed`, `timed_out`, `children_tasks_failed`,
    /// `finalize_task_failed`) this long.
    pub failed: Option<Duration>,
    /// Keep `cancelled` executions this long.
    pub cancelled: Option<Duration>,
    /// Most executions deleted by one storage call (one transaction).
    pub batch_size: u64,
    /// How long an executor's prune loop waits after a step that found less than a full batch
    /// (after a full one it goes on at once, a batch at a time, beside the other loops).
    pub interval: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            completed: Some(Duration::from_secs(24 * 3600)),
            failed: Some(Duration::from_secs(7 * 24 * 3600)),
            cancelled: Some(Duration::from_secs(24 * 3600)),
            batch_size: 1_000,
            interval: Duration::from_secs(60),
        }
    }
}

impl Retention {
    /// Each kept age with the statuses it applies to.
    pub(super) fn ages(&self) -> [(Option<Duration>, &'static [TaskExecutionStatus]); 3] {
        use TaskExecutionStatus as S;
        [
            (self.completed, &[S::Completed]),
            (
                self.failed,
                &[S::Failed, S::TimedOut, S::ChildrenFailed, S::FinalizeFailed],
            ),
            (self.cancelled, &[S::Cancelled]),
        ]
    }
}

/// When an enqueued execution may first run ([`Executor::enqueue_with`]).
///
/// By default the task's [`sleep_before_run`](TaskOptions::sleep_before_run) applies; a delay
/// or a run-at time replaces it for this one execution. Either way the execution waits `ready`
/// with its `start_at` in the future, which the inspection API shows
/// ([`TaskExecution::start_at`], [`TaskExecutionFilter::starts_after`](crate::task::TaskExecutionFilter::starts_after)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnqueueOptions {
    /// Run no earlier than this long after the enqueue. At most
    /// [`MAX_SLEEP_BEFORE_RUN`](crate::task::MAX_SLEEP_BEFORE_RUN).
    pub delay: Option<Duration>,
    /// Run no earlier than this time (epoch ms, on the executor's [`Clock`]); a time already
    /// past runs as soon as possible. At most
    /// [`MAX_SLEEP_BEFORE_RUN`](crate::task::MAX_SLEEP_BEFORE_RUN) ahead.
    pub run_at: Option<i64>,
}

impl EnqueueOptions {
    /// Runs no earlier than `delay` after the enqueue.
    pub fn delay(delay: Duration) -> Self {
        Self {
            delay: Some(delay),
            run_at: None,
        }
    }

    /// Runs no earlier than `run_at` (epoch ms).
    pub fn run_at(run_at: i64) -> Self {
        Self {
            delay: None,
            run_at: Some(run_at),
        }
    }

    /// The delay before the first run of an execution enqueued at `now`, if these options set
    /// one.
    pub(super) fn sleep(&self, now: i64) -> Result<Option<Duration>> {
        match (self.delay, self.run_at) {
            (Some(_), Some(_)) => Err(Error::InvalidArgument {
                name: "enqueue options",
                reason: "set a delay or a run-at time, not both".to_owned(),
            }),
            (Some(delay), None) => Ok(Some(delay)),
            (None, Some(at)) => Ok(Some(
                crate::clock::from_millis(at.saturating_sub(now)).unwrap_or_default(),
            )),
            (None, None) => Ok(None),
        }
    }
}

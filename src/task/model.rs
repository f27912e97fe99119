//! Domain types of durable task executions. Nothing here knows about SeaORM.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::{millis, whole_millis};
use crate::status::status_enum;

status_enum! {
    /// The state of a task execution, and the moves between states that executors and stores
    /// make:
    ///
    /// ```text
    ///   enqueue
    ///      │
    ///      ▼
    ///    ready ◄──────────────────────────────────┐ retryable error, or lease lapsed,
    ///      │ claim                                │ with retries left
    ///      ▼                                      │
    ///   running ──────────────────────────────────┘
    ///      ├─ returned; no children, no finalize ──────────────────────► completed
    ///      ├─ fatal error, or no retries left (error or lease lapsed) ─► failed
    ///      ├─ timed out; no retries left ──────────────────────────────► timed_out
    ///      ├─ returned; no children, a finalize ───────┐
    ///      └─ returned children                        │
    ///            │                                     │
    ///            ▼                                     │
    ///   waiting_for_children_tasks                     │
    ///      ├─ all children completed; no finalize ─────┼───────────────► completed
    ///      ├─ a child did not complete ────────────────┼───────────────► children_tasks_failed
    ///      └─ all children completed; a finalize ──────┤
    ///                                                  ▼
    ///                               waiting_for_finalize_task
    ///                                  ├─ finalize completed ────────► completed
    ///                                  └─ finalize did not complete ─► finalize_task_failed
    ///
    ///   enqueue with a wake key
    ///      │
    ///      ▼
    ///   sleeping
    ///      ├─ woken with an output ──► completed
    ///      ├─ woken with an error ───► failed
    ///      └─ not woken in time ─────► timed_out
    ///
    ///   ready, running, waiting_for_children_tasks, waiting_for_finalize_task or sleeping
    ///      └─ cancel, or the parent closed without completing ──► cancelled
    /// ```
    ///
    /// Besides, an execution a claim finds unreadable ends `failed` (with an internal error)
    /// instead of running, and so does a waiting parent whose task is not registered with the
    /// executor that processes it; a parent whose run output or children's outputs cannot be read
    /// ends `children_tasks_failed`. Processing a parent takes a claim on it but leaves its status
    /// as it is: if the executor dies, the claim lapses and another executor takes the parent.
    ///
    /// A `sleeping` execution is never claimed and holds no executor slot: it waits, durably, until
    /// some process wakes it by its key
    /// ([`wake_task_execution`](super::storage::TaskExecutionStorage::wake_task_execution)) or lease expiry
    /// times it out.
    ///
    /// Every finished execution is later *closed*: its outcome is propagated to its parent (a
    /// finished-child record, or the parent's final status for a finalize execution) and, when it
    /// did not complete, its still-active children and finalize execution are cancelled.
    #[strum(serialize_all = "snake_case")]
    pub enum TaskExecutionStatus {
        /// Waiting to be claimed once `start_at` has passed.
        Ready,
        /// Claimed by an executor, which is running it under a lease.
        Running,
        /// Failed with an error and no retries left.
        Failed,
        /// Ran past its timeout with no retries left.
        TimedOut,
        /// The run finished and returned children, which have not all finished yet.
        #[strum(serialize = "waiting_for_children_tasks")]
        WaitingForChildren,
        /// At least one child finished without completing.
        #[strum(serialize = "children_tasks_failed")]
        ChildrenFailed,
        /// Waiting for the finalize execution to finish.
        #[strum(serialize = "waiting_for_finalize_task")]
        WaitingForFinalize,
        /// The finalize execution finished without completing.
        #[strum(serialize = "finalize_task_failed")]
        FinalizeFailed,
        /// Finished successfully; `output` holds the result.
        Completed,
        /// Cancelled before it finished.
        Cancelled,
        /// A sleeping task's execution, waiting to be woken by its key or to time out.
        Sleeping,
    }
}

impl TaskExecutionStatus {
    /// The statuses of executions that have not finished.
    pub const ACTIVE: [TaskExecutionStatus; 5] = [
        Self::Ready,
        Self::Running,
        Self::WaitingForChildren,
        Self::WaitingForFinalize,
        Self::Sleeping,
    ];

    /// Whether this status is final: the execution will never run or change status again.
    pub fn is_finished(self) -> bool {
        !Self::ACTIVE.contains(&self)
    }
}

/// Identifies an execution of a task.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskExecutionRef {
    /// The task's id.
    pub task_id: String,
    /// The execution's id.
    pub execution_id: String,
}

/// The parent of a child or finalize execution.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    /// The parent's task id.
    pub task_id: String,
    /// The parent's execution id.
    pub execution_id: String,
    /// Position among the parent's children (0 for a finalize execution).
    pub index: u32,
    /// Whether this is the parent's finalize execution rather than one of its children.
    pub is_finalize: bool,
}

/// How an execution is retried after a retryable error.
///
/// The delay before retry `n` (1-based) is `base_delay * delay_multiplier^(n-1)`, capped at
/// `max_delay`, in whole milliseconds, with jitter applied by the executor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryOptions {
    /// Retries allowed after the first run (`3` allows four runs).
    pub max_attempts: u32,
    /// Delay before the first retry.
    #[serde(default, rename = "baseDelayMs", with = "crate::clock::serde_millis")]
    pub base_delay: Duration,
    /// Factor applied to the delay for each further retry.
    #[serde(default = "one")]
    pub delay_multiplier: f64,
    /// Upper bound of the delay.
    #[serde(
        default,
        rename = "maxDelayMs",
        skip_serializing_if = "Option::is_none",
        with = "crate::clock::serde_millis::option"
    )]
    pub max_delay: Option<Duration>,
}

fn one() -> f64 {
    1.0
}

impl Default for RetryOptions {
    fn default() -> Self {
        Self {
            max_attempts: 0,
            base_delay: Duration::ZERO,
            delay_multiplier: 1.0,
            max_delay: None,
        }
    }
}

impl RetryOptions {
    /// The delay before retry number `attempt` (1 for the first retry), without jitter, in
    /// whole milliseconds (saturating).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let raw = ms(self.base_delay) * self.delay_multiplier.max(0.0).powi(exponent);
        let capped = match self.max_delay {
            Some(max) => raw.min(ms(max)),
            None => raw,
        };
        if !capped.is_finite() {
            return Duration::from_millis(u64::MAX);
        }
        // There is no lossless float-to-integer conversion; `as` saturates at the bounds, which
        // is exactly what a delay wants.
        #[allow(clippy::as_conversions)]
        let delay = capped.max(0.0).round() as u64;
        Duration::from_millis(delay)
    }
}

/// What kind of error ended or interrupted a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionErrorKind {
    /// The task returned an error.
    Generic,
    /// No task with the execution's task id is registered with the executor that claimed it.
    NotFound,
    /// The run exceeded its timeout.
    TimedOut,
    /// The execution was cancelled.
    Cancelled,
}

/// An error recorded on an execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionError {
    /// The kind of error.
    #[serde(rename = "errorType")]
    pub kind: ExecutionErrorKind,
    /// Whether another attempt may succeed.
    pub is_retryable: bool,
    /// Whether the error came from the executor rather than the task.
    #[serde(default)]
    pub is_internal: bool,
    /// The message.
    pub message: String,
}

impl ExecutionError {
    /// A generic error with `message`.
    pub fn generic(message: impl Into<String>, is_retryable: bool) -> Self {
        Self {
            kind: ExecutionErrorKind::Generic,
            is_retryable,
            is_internal: false,
            message: message.into(),
        }
    }

    /// A cancellation error with `message`.
    pub fn cancelled(message: impl Into<String>) -> Self {
        Self {
            kind: ExecutionErrorKind::Cancelled,
            is_retryable: false,
            is_internal: false,
            message: message.into(),
        }
    }

    /// A timeout error with `message`; timeouts are retryable.
    pub fn timed_out(message: impl Into<String>) -> Self {
        Self {
            kind: ExecutionErrorKind::TimedOut,
            is_retryable: true,
            is_internal: false,
            message: message.into(),
        }
    }
}

impl fmt::Display for ExecutionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// One execution of a task, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskExecution {
    /// Unique id of this execution.
    pub execution_id: String,
    /// The task this is an execution of.
    pub task_id: String,
    /// The queue it waits in; executors claim from the queues they serve.
    pub queue: String,
    /// The key a sleeping task's execution is woken by (kept after it wakes, so a second wake
    /// can be answered); `None` for every other execution.
    pub wake_key: Option<String>,
    /// The top-most ancestor, for children and finalize executions.
    pub root: Option<TaskExecutionRef>,
    /// The direct parent, for children and finalize executions.
    pub parent: Option<ParentRef>,
    /// How the execution is retried.
    pub retry_options: RetryOptions,
    /// Delay between enqueueing and the first run (whole milliseconds).
    pub sleep_before_run: Duration,
    /// Maximum duration of one run (whole milliseconds).
    pub timeout: Duration,
    /// Current status.
    pub status: TaskExecutionStatus,
    /// Whether the status is final (kept as a column so scans need not list statuses).
    pub is_finished: bool,
    /// The serialized input.
    pub input: String,
    /// The serialized output of the run itself (before children and finalize).
    pub run_output: Option<String>,
    /// The serialized final output, once `completed`.
    pub output: Option<String>,
    /// The last error.
    pub error: Option<ExecutionError>,
    /// The executor holding the current claim (running, or processing a parent).
    pub executor_id: Option<String>,
    /// Changed by every claim; writes by a claim holder are conditional on it.
    pub fencing_token: i64,
    /// The id of the claim that took it last ([`ClaimParams::claim_id`]).
    pub claim_id: Option<String>,
    /// Set when the execution was cancelled while an executor may be running it.
    pub cancel_requested: bool,
    /// Retries done so far (also the attempt number of the current run, from 0).
    pub retry_attempts: u32,
    /// Earliest time the execution may be claimed (epoch ms).
    pub start_at: i64,
    /// When the current or last run started (epoch ms).
    pub started_at: Option<i64>,
    /// When the current claim lapses (epoch ms).
    pub expires_at: Option<i64>,
    /// When the execution finished (epoch ms).
    pub finished_at: Option<i64>,
    /// Number of children the run spawned.
    pub children_count: u32,
    /// Number of children that have finished (recorded in the finished-children table).
    pub finished_children_count: u32,
    /// Number of finished children that did not complete.
    pub failed_children_count: u32,
    /// The finalize execution, once spawned.
    pub finalize: Option<TaskExecutionRef>,
    /// Whether the finished execution's outcome has been propagated.
    pub is_closed: bool,
    /// When it was closed (epoch ms).
    pub closed_at: Option<i64>,
    /// When the execution was enqueued (epoch ms).
    pub created_at: i64,
    /// When the execution was last written (epoch ms).
    pub updated_at: i64,
    /// The JSON value the run last reported through
    /// [`TaskContext::report_progress`](crate::TaskContext::report_progress), kept after the
    /// run; `None` until one is reported.
    pub progress: Option<String>,
}

/// What is needed to enqueue a new execution.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NewTaskExecution {
    /// Unique id of the execution.
    pub execution_id: String,
    /// The task to run.
    pub task_id: String,
    /// The queue to wait in (`None`: [`DEFAULT_QUEUE`]).
    pub queue: Option<String>,
    /// Enqueues the execution `sleeping` under this key instead of `ready`: it is never claimed
    /// and finishes when woken by the key, or times out `timeout` after its `start_at`. The
    /// key is unique among sleeping executions.
    pub wake_key: Option<String>,
    /// The top-most ancestor, for children and finalize executions.
    pub root: Option<TaskExecutionRef>,
    /// The direct parent, for children and finalize executions.
    pub parent: Option<ParentRef>,
    /// How the execution is retried.
    pub retry_options: RetryOptions,
    /// Delay before the first run (whole milliseconds), at most
    /// [`MAX_SLEEP_BEFORE_RUN`].
    pub sleep_before_run: Duration,
    /// Maximum duration of one run (whole milliseconds), 1 ms to [`MAX_TIMEOUT`].
    pub timeout: Duration,
    /// The serialized input.
    pub input: String,
}

impl NewTaskExecution {
    /// The stored execution as enqueued at `now`: `ready`, starting after the sleep; or, with a
    /// wake key, `sleeping` until `start_at + timeout` (its `expires_at`).
    pub fn into_execution(self, now: i64) -> TaskExecution {
        let start_at = now.saturating_add(millis(self.sleep_before_run));
        let sleeping = self.wake_key.is_some();
        TaskExecution {
            start_at,
            status: if sleeping {
                TaskExecutionStatus::Sleeping
            } else {
                TaskExecutionStatus::Ready
            },
            expires_at: sleeping.then(|| start_at.saturating_add(millis(self.timeout).max(1))),
            execution_id: self.execution_id,
            task_id: self.task_id,
            queue: self.queue.unwrap_or_else(|| DEFAULT_QUEUE.to_owned()),
            wake_key: self.wake_key,
            root: self.root,
            parent: self.parent,
            retry_options: RetryOptions {
                base_delay: whole_millis(self.retry_options.base_delay),
                max_delay: self.retry_options.max_delay.map(whole_millis),
                ..self.retry_options
            },
            // Kept as the columns keep them, so every storage returns the same values.
            sleep_before_run: whole_millis(self.sleep_before_run),
            timeout: whole_millis(self.timeout),
            is_finished: false,
            input: self.input,
            run_output: None,
            output: None,
            error: None,
            executor_id: None,
            fencing_token: 0,
            claim_id: None,
            cancel_requested: false,
            retry_attempts: 0,
            started_at: None,
            finished_at: None,
            children_count: 0,
            finished_children_count: 0,
            failed_children_count: 0,
            finalize: None,
            is_closed: false,
            closed_at: None,
            created_at: now,
            updated_at: now,
            progress: None,
        }
    }
}

/// A child execution that has finished, recorded for its parent.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedChildTaskExecution {
    /// The parent's execution id.
    pub parent_execution_id: String,
    /// The child's execution id.
    pub child_execution_id: String,
    /// The child's task id.
    pub child_task_id: String,
    /// The child's position among the parent's children.
    pub index: u32,
    /// The child's final status.
    pub status: TaskExecutionStatus,
    /// The child's serialized output, when it completed.
    pub output: Option<String>,
    /// The child's error, when it did not complete.
    pub error: Option<ExecutionError>,
    /// When the record was written (epoch ms).
    pub created_at: i64,
}

/// Which executions [`get_task_executions`](super::storage::TaskExecutionStorage::get_task_executions)
/// returns. Every set field must match; results are ordered by `created_at`, then position in
/// the parent, then execution id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskExecutionFilter {
    /// Only these executions (an empty list matches nothing).
    pub execution_ids: Option<Vec<String>>,
    /// Only executions in one of these statuses (an empty list matches nothing).
    pub statuses: Option<Vec<TaskExecutionStatus>>,
    /// Only children and the finalize execution of this parent.
    pub parent_execution_id: Option<String>,
    /// Only executions whose `start_at` is later than this (epoch ms). With `statuses:
    /// [Ready]` and the current time, the executions enqueued with a delay that are not due yet.
    pub starts_after: Option<i64>,
    /// Only executions of sleeping tasks enqueued under this wake key (the sleeping one and
    /// any that finished before it).
    pub wake_key: Option<String>,
    /// Only executions of these tasks (an empty list matches nothing).
    pub task_ids: Option<Vec<String>>,
    /// Only executions waiting in these queues (an empty list matches nothing).
    pub queues: Option<Vec<String>>,
    /// Only executions enqueued before this time (`created_at < created_before`, epoch ms).
    pub created_before: Option<i64>,
    /// Only executions enqueued at or after this time (`created_at >= created_after`, epoch ms).
    pub created_after: Option<i64>,
    /// Only executions after this one in the listing's order: the next page of a keyset
    /// pagination, which neither skips nor repeats a row however many pages are read (set it to
    /// [`ExecutionCursor::of`] the last execution of the previous page).
    pub after: Option<ExecutionCursor>,
    /// At most this many rows.
    pub limit: Option<u64>,
}

/// A position in the order of [`TaskExecutionFilter`]'s listings: `created_at`, then position
/// in the parent (0 for an execution without one), then execution id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionCursor {
    /// The execution's `created_at` (epoch ms).
    pub created_at: i64,
    /// Its position in its parent (0 without a parent).
    pub index: u32,
    /// Its execution id.
    pub execution_id: String,
}

impl ExecutionCursor {
    /// The position of `e`: a listing [`after`](TaskExecutionFilter::after) it starts with
    /// the execution that follows `e`.
    pub fn of(e: &TaskExecution) -> Self {
        Self {
            created_at: e.created_at,
            index: e.parent.as_ref().map_or(0, |p| p.index),
            execution_id: e.execution_id.clone(),
        }
    }

    /// Reads a cursor as [`Display`](fmt::Display) writes it: `created_at.index.execution_id`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for text of another shape.
    pub fn parse(text: &str) -> crate::Result<Self> {
        let bad = || crate::Error::InvalidArgument {
            name: "cursor",
            reason: format!("{text:?} is not `created_at.index.execution_id`"),
        };
        let mut parts = text.splitn(3, '.');
        let created_at = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let index = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let execution_id = parts.next().ok_or_else(bad)?.to_owned();
        Ok(Self {
            created_at,
            index,
            execution_id,
        })
    }

    /// Whether `e` comes after this position.
    pub(crate) fn precedes(&self, e: &TaskExecution) -> bool {
        let index = e.parent.as_ref().map_or(0, |p| p.index);
        (e.created_at, index, e.execution_id.as_str())
            > (self.created_at, self.index, self.execution_id.as_str())
    }
}

impl TaskExecutionFilter {
    /// Whether the filter can match nothing, so no statement needs to be sent.
    pub(crate) fn matches_nothing(&self) -> bool {
        self.execution_ids.as_ref().is_some_and(Vec::is_empty)
            || self.statuses.as_ref().is_some_and(Vec::is_empty)
            || self.task_ids.as_ref().is_some_and(Vec::is_empty)
            || self.queues.as_ref().is_some_and(Vec::is_empty)
            || self.limit == Some(0)
    }

    /// Whether `e` passes every field but `limit` (the in-memory storage's reading of the
    /// filter; the SQL storage writes the same conditions as a `WHERE` clause).
    pub(crate) fn matches(&self, e: &TaskExecution) -> bool {
        let listed = |list: &Option<Vec<String>>, value: &str| {
            list.as_ref().is_none_or(|l| l.iter().any(|v| v == value))
        };
        listed(&self.execution_ids, &e.execution_id)
            && self.statuses.as_ref().is_none_or(|s| s.contains(&e.status))
            && self
                .parent_execution_id
                .as_ref()
                .is_none_or(|p| e.parent.as_ref().is_some_and(|ep| &ep.execution_id == p))
            && self.starts_after.is_none_or(|t| e.start_at > t)
            && self
                .wake_key
                .as_ref()
                .is_none_or(|k| e.wake_key.as_ref() == Some(k))
            && listed(&self.task_ids, &e.task_id)
            && listed(&self.queues, &e.queue)
            && self.after.as_ref().is_none_or(|c| c.precedes(e))
            && self.created_before.is_none_or(|t| e.created_at < t)
            && self.created_after.is_none_or(|t| e.created_at >= t)
    }
}

/// How many executions wait in one queue with one status
/// ([`count_task_executions`](super::storage::TaskExecutionStorage::count_task_executions)).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaskExecutionCount {
    /// The queue.
    pub queue: String,
    /// The status.
    pub status: TaskExecutionStatus,
    /// How many executions of the queue have the status (never 0: empty groups are left out).
    pub count: u64,
}

/// The due `ready` executions of one task in one queue, waiting to be claimed
/// ([`ready_task_executions`](super::storage::TaskExecutionStorage::ready_task_executions)).
///
/// A task that no executor serves (registered nowhere, or only on executors that do not serve
/// its queue) shows here with a count that only grows and an ever older `oldest_start_at`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadyTaskExecutions {
    /// The task.
    pub task_id: String,
    /// The queue.
    pub queue: String,
    /// How many executions of the task in the queue are `ready` and due (never 0).
    pub count: u64,
    /// The `start_at` of the one due longest ago (epoch ms): it has waited `now` minus this.
    pub oldest_start_at: i64,
}

impl fmt::Display for ExecutionCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}.{}",
            self.created_at, self.index, self.execution_id
        )
    }
}

/// A paused queue: no executor claims its executions until it is resumed
/// ([`TaskExecutionStorage::pause_task_queue`](super::storage::TaskExecutionStorage::pause_task_queue)).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PausedQueue {
    /// The queue.
    pub queue: String,
    /// When it was paused (epoch ms): the first of the pauses since it last ran.
    pub paused_at: i64,
}

/// Why an execution cannot be retried by
/// [`retry_task_execution`](super::storage::TaskExecutionStorage::retry_task_execution), with what to
/// do instead; `None` when it can.
///
/// Only a root execution whose own run failed or timed out is retried: its outcome reached no
/// parent and it spawned nothing, so running it again changes nothing anyone else has seen.
pub(crate) fn retry_refusal(e: &TaskExecution) -> Option<String> {
    use TaskExecutionStatus as S;
    if !matches!(e.status, S::Failed | S::TimedOut) {
        let what = match e.status {
            S::Completed => "it completed; enqueue a new execution to run the task again",
            S::Cancelled => "it was cancelled; enqueue a new execution to run the task again",
            S::ChildrenFailed | S::FinalizeFailed => {
                "a child or its finalize task failed, and its children already ran; enqueue a \
                 new execution of the task to run the whole tree again"
            }
            _ => "it has not finished; wait for it to fail, or cancel it",
        };
        return Some(format!(
            "cannot be retried: it is {} ({what})",
            e.status.as_str()
        ));
    }
    if let Some(parent) = &e.parent {
        return Some(format!(
            "cannot be retried: it is a {} of execution {}, which has seen its outcome already; \
             retry or enqueue again the root execution{}",
            if parent.is_finalize {
                "finalize execution"
            } else {
                "child"
            },
            parent.execution_id,
            e.root
                .as_ref()
                .map(|r| format!(" {}", r.execution_id))
                .unwrap_or_default(),
        ));
    }
    if e.wake_key.is_some() {
        return Some(
            "cannot be retried: it is a sleeping task's execution, which finishes only when \
             woken; enqueue a new one under its wake key"
                .to_owned(),
        );
    }
    if e.children_count > 0 || e.finalize.is_some() {
        return Some(format!(
            "cannot be retried: its run spawned {} children{}, which would run again; enqueue a \
             new execution of the task instead",
            e.children_count,
            if e.finalize.is_some() {
                " and a finalize task"
            } else {
                ""
            },
        ));
    }
    None
}

/// The retry update applied to an execution [`retry_refusal`] lets through, at `now`: `ready`
/// from `now`, one more attempt counted, unfinished and unclosed again, every trace of the
/// failed run's claim and outputs cleared. The error stays: the new run sees it as its
/// previous error, and inspection shows it until the run ends.
pub(crate) fn apply_retry(e: &mut TaskExecution, now: i64) {
    e.status = TaskExecutionStatus::Ready;
    e.is_finished = false;
    e.finished_at = None;
    e.is_closed = false;
    e.closed_at = None;
    e.start_at = now;
    e.retry_attempts = e.retry_attempts.saturating_add(1).min(MAX_RETRY_ATTEMPTS);
    e.expires_at = None;
    e.executor_id = None;
    e.cancel_requested = false;
    e.output = None;
    e.run_output = None;
    e.updated_at = now;
}

/// Whether `e` is what a retry at `now` ([`apply_retry`]) left, or has moved on from there
/// without finishing (claimed since): unfinished, due from `now`, with an attempt counted and
/// the failed run's error still kept. What a retry repeated after a lost reply, with the same
/// `now`, finds when its first attempt took effect.
pub(crate) fn retried_at(e: &TaskExecution, now: i64) -> bool {
    !e.is_finished
        && e.start_at == now
        && e.retry_attempts > 0
        && e.error.is_some()
        && e.parent.is_none()
}

/// Whether `stored` is the row an enqueue of `new` at `now` inserted: the same task and
/// parent, enqueued at `now`. What an enqueue repeated after a lost reply (the same executions
/// at the same time) finds when its first attempt took effect; an enqueue of the same id at
/// another time, or of another task, is a conflict.
pub(crate) fn enqueued_as(stored: &TaskExecution, new: &NewTaskExecution, now: i64) -> bool {
    stored.task_id == new.task_id
        && stored.parent.as_ref().map(|p| &p.execution_id)
            == new.parent.as_ref().map(|p| &p.execution_id)
        && stored.created_at == now
}

/// `now`, or the millisecond after the last time this process handed out here when `now` is
/// not past it: the time of a write that its caller recognizes afterwards by its time (a
/// cancel, a wake). Two such writes from one process never share a millisecond, so the second
/// of two cancels in one millisecond does not take the first one's row for its own.
pub(crate) fn distinct_write_time(now: i64) -> i64 {
    use std::sync::atomic::{AtomicI64, Ordering};
    static LAST: AtomicI64 = AtomicI64::new(i64::MIN);
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let time = now.max(last.saturating_add(1));
        match LAST.compare_exchange_weak(last, time, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return time,
            Err(seen) => last = seen,
        }
    }
}

/// Whether `e` finished at `now` as an update at `now` finishes an execution (never before
/// its `started_at`, which another clock may have written).
pub(crate) fn finished_by_update_at(e: &TaskExecution, now: i64) -> bool {
    e.finished_at == Some(e.started_at.map_or(now, |started| started.max(now)))
}

/// Most retry attempts a row can count (the column is a signed 32-bit integer).
pub(crate) const MAX_RETRY_ATTEMPTS: u32 = 2_147_483_647;

/// The condition a guarded update requires of each row it changes.
///
/// A guard always names the executions; the other conditions make the update a
/// compare-and-swap: on the status the writer last saw, and for a claim holder on the fencing
/// token of its claim, so a writer whose claim was taken over changes nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskExecutionGuard {
    /// The executions to update.
    pub execution_ids: Vec<String>,
    /// Required current statuses (`None`: any).
    pub statuses: Option<Vec<TaskExecutionStatus>>,
    /// Required fencing token (`None`: any).
    pub fencing_token: Option<i64>,
}

impl TaskExecutionGuard {
    /// A guard on one execution, with no further condition.
    pub fn id(execution_id: impl Into<String>) -> Self {
        Self {
            execution_ids: vec![execution_id.into()],
            ..Self::default()
        }
    }

    /// Requires the execution to be in `status`.
    pub fn status(mut self, status: TaskExecutionStatus) -> Self {
        self.statuses = Some(vec![status]);
        self
    }

    /// Requires the execution to be in one of `statuses`.
    pub fn statuses(mut self, statuses: impl IntoIterator<Item = TaskExecutionStatus>) -> Self {
        self.statuses = Some(statuses.into_iter().collect());
        self
    }

    /// Requires the execution's fencing token to be `token`.
    pub fn fencing_token(mut self, token: i64) -> Self {
        self.fencing_token = Some(token);
        self
    }
}

/// Changes applied by a guarded update. Unset fields are left alone.
///
/// The store also maintains fields that follow from the status, so that callers cannot leave
/// them inconsistent:
/// - a finished status sets `is_finished` and `finished_at = now`, or `started_at` if that is
///   later (executors' clocks, or the `now` they hold, may differ);
/// - any status other than `running` clears `expires_at`, and any status other than `running` or
///   `cancelled` clears `executor_id`;
/// - any status other than `sleeping` frees the execution's wake key for another sleeper (the
///   key itself stays readable in [`TaskExecution::wake_key`]);
/// - `updated_at = now` always.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskExecutionUpdate {
    /// The time of the update (epoch ms).
    pub now: i64,
    /// New status.
    pub status: Option<TaskExecutionStatus>,
    /// New run output.
    pub run_output: Option<String>,
    /// New final output.
    pub output: Option<String>,
    /// New error.
    pub error: Option<ExecutionError>,
    /// Clears the error (applied after `error`).
    pub clear_error: bool,
    /// Sets or clears the cancellation request.
    pub cancel_requested: Option<bool>,
    /// New retry count.
    pub retry_attempts: Option<u32>,
    /// New earliest start (epoch ms).
    pub start_at: Option<i64>,
    /// Number of children spawned.
    pub children_count: Option<u32>,
    /// The finalize execution spawned.
    pub finalize: Option<TaskExecutionRef>,
    /// New lease end (epoch ms): a heartbeat of the run holding the execution. Cleared
    /// instead when `status` is set to anything but `running`.
    pub expires_at: Option<i64>,
    /// New progress report (JSON text).
    pub progress: Option<String>,
}

impl TaskExecutionUpdate {
    /// Whether `e` holds every value this update writes: its status and each field it sets
    /// (not its times, which a repeated write takes anew). What a repeated write finds when
    /// its first attempt took effect although its reply was lost.
    pub(crate) fn is_held_by(&self, e: &TaskExecution) -> bool {
        fn same<T: PartialEq>(set: Option<&T>, stored: Option<&T>) -> bool {
            set.is_none_or(|v| stored == Some(v))
        }
        self.status.is_none_or(|s| s == e.status)
            && same(self.run_output.as_ref(), e.run_output.as_ref())
            && same(self.output.as_ref(), e.output.as_ref())
            && if self.clear_error {
                e.error.is_none()
            } else {
                same(self.error.as_ref(), e.error.as_ref())
            }
            && self
                .cancel_requested
                .is_none_or(|v| v == e.cancel_requested)
            && self.retry_attempts.is_none_or(|v| v == e.retry_attempts)
            && self.children_count.is_none_or(|v| v == e.children_count)
            && same(self.finalize.as_ref(), e.finalize.as_ref())
            && same(self.expires_at.as_ref(), e.expires_at.as_ref())
            && same(self.progress.as_ref(), e.progress.as_ref())
    }
}

/// Parameters of the claim operations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimParams {
    /// The claiming executor.
    pub executor_id: String,
    /// The time of the claim (epoch ms).
    pub now: i64,
    /// At most this many executions.
    pub limit: u64,
    /// Lease length beyond the execution's own timeout (whole milliseconds): a running
    /// execution's lease lapses at `now + timeout + lease_margin`; a parent claimed for
    /// processing holds it until `now + lease_margin`. Taken as at most [`MAX_LEASE_MARGIN`].
    pub lease_margin: Duration,
    /// Only executions of these tasks (`None`: any task). An executor passes the tasks it has
    /// registered, so it never takes work it cannot run.
    pub task_ids: Option<Vec<String>>,
    /// Only executions waiting in these queues (`None`: any queue).
    pub queues: Option<Vec<String>>,
    /// An id for this claim, recorded on every execution it takes (`None`: none recorded).
    pub claim_id: Option<String>,
    /// Set when an earlier call with the same `claim_id` failed and may have committed (its
    /// reply lost): the executions already taken under `claim_id` by `executor_id`, and still
    /// held, are returned first, as they are, and count against `limit`. A storage retrying a
    /// claim internally after an ambiguous error must do the same.
    pub resume: bool,
}

/// The queue of executions enqueued without one.
pub const DEFAULT_QUEUE: &str = "default";

/// Longest run timeout an execution may have (365 days). Longer ones are refused with
/// [`Error::InvalidArgument`](crate::Error::InvalidArgument) when registered or enqueued.
pub const MAX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

/// Longest delay before a first run (365 days), refused like [`MAX_TIMEOUT`].
pub const MAX_SLEEP_BEFORE_RUN: std::time::Duration = MAX_TIMEOUT;

/// Longest lease margin (365 days); a longer one is taken as this.
pub const MAX_LEASE_MARGIN: std::time::Duration = MAX_TIMEOUT;

/// [`MAX_TIMEOUT`] in milliseconds.
pub(crate) const MAX_TIMEOUT_MS: i64 = 31_536_000_000;
/// [`MAX_SLEEP_BEFORE_RUN`] in milliseconds.
pub(crate) const MAX_SLEEP_MS: i64 = MAX_TIMEOUT_MS;
/// [`MAX_LEASE_MARGIN`] in milliseconds.
pub(crate) const MAX_LEASE_MARGIN_MS: i64 = MAX_TIMEOUT_MS;

impl ClaimParams {
    /// The lease margin as used: within `0..=MAX_LEASE_MARGIN`.
    pub(crate) fn margin_ms(&self) -> i64 {
        millis(self.lease_margin).min(MAX_LEASE_MARGIN_MS)
    }

    /// `now + margin`, kept low enough that adding any valid timeout cannot overflow.
    pub(crate) fn lease_base(&self) -> i64 {
        self.now
            .saturating_add(self.margin_ms())
            .min(i64::MAX - MAX_TIMEOUT_MS)
    }

    /// Whether an execution of `task_id` in `queue` may be taken by this claim.
    pub(crate) fn admits(&self, task_id: &str, queue: &str) -> bool {
        self.task_ids
            .as_ref()
            .is_none_or(|ids| ids.iter().any(|t| t == task_id))
            && self
                .queues
                .as_ref()
                .is_none_or(|qs| qs.iter().any(|q| q == queue))
    }

    /// Whether the filters can match nothing, so no statement needs to be sent.
    pub(crate) fn admits_nothing(&self) -> bool {
        self.limit == 0
            || self.task_ids.as_ref().is_some_and(Vec::is_empty)
            || self.queues.as_ref().is_some_and(Vec::is_empty)
    }
}

/// How a sleeping execution is woken ([`Wake::outcome`]).
#[derive(Debug, Clone, PartialEq)]
pub enum WakeOutcome {
    /// The execution completes with this serialized output.
    Completed {
        /// The serialized output.
        output: String,
    },
    /// The execution fails with this error.
    Failed {
        /// The error recorded on it.
        error: ExecutionError,
    },
}

/// A request to wake the sleeping execution enqueued under a key.
#[derive(Debug, Clone, PartialEq)]
pub struct Wake {
    /// The key the execution sleeps under.
    pub wake_key: String,
    /// How it finishes.
    pub outcome: WakeOutcome,
    /// The time of the wake (epoch ms).
    pub now: i64,
}

/// The answer to a [`Wake`] whose key is known.
#[derive(Debug, Clone, PartialEq)]
pub enum WakeResult {
    /// This call woke the execution; it is returned as it is now (finished, not closed yet).
    Woken(TaskExecution),
    /// No execution sleeps under the key any more: the latest one enqueued under it finished
    /// already (woken earlier, timed out or cancelled), and is returned as it is. Waking is
    /// idempotent: the first wake wins, later ones get this answer and change nothing.
    AlreadyFinished(TaskExecution),
}

impl WakeResult {
    /// The execution, however the wake went.
    pub fn execution(&self) -> &TaskExecution {
        match self {
            Self::Woken(e) | Self::AlreadyFinished(e) => e,
        }
    }

    /// Whether this call woke it.
    pub fn is_woken(&self) -> bool {
        matches!(self, Self::Woken(_))
    }
}

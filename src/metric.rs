//! The metrics the executor and the batch worker emit, through the [`metrics`] facade.
//!
//! The library only records: the application installs an exporter (a `metrics` recorder, for
//! example a Prometheus exporter) once at start, before it starts executors and workers, and
//! may call [`describe`] after it to give the exporter each metric's help text and unit.
//! Without a recorder every metric is a no-op.
//!
//! Names follow Prometheus conventions: counters end in `_total`, histograms of durations are in
//! seconds and end in `_seconds`. Every metric carries the constant labels of its executor or
//! worker ([`ExecutorOptions::metric_labels`](crate::ExecutorOptions::metric_labels),
//! [`WorkerOptions::metric_labels`](crate::WorkerOptions::metric_labels)); the per-task ones
//! also carry [`QUEUE_LABEL`] and [`TASK_LABEL`]. No metric is labelled by an execution id, a
//! job id or anything else without bound.
//!
//! An executor resolves the handles of a queue and task the first time it sees them, and a
//! worker its handles when it starts; they are kept, so a recorder installed after that is not
//! seen by them.
//!
//! # Example
//!
//! The debugging recorder of `metrics-util` stands in for the application's exporter:
//!
//! ```
//! use std::sync::Arc;
//!
//! use metrics_util::debugging::{DebugValue, DebuggingRecorder};
//! use sea_orm_durable::task::InMemoryTaskExecutionStorage;
//! use sea_orm_durable::{Executor, ExecutorOptions, TaskDefinition, TaskError, metric};
//!
//! # #[tokio::main(flavor = "multi_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Once, at start, before any executor or worker: install the exporter, then describe.
//! let recorder = DebuggingRecorder::new();
//! let snapshotter = recorder.snapshotter();
//! recorder.install()?;
//! metric::describe();
//!
//! let double = TaskDefinition::new("double", |_ctx, n: u64| async move { Ok::<_, TaskError>(n * 2) });
//! let executor = Executor::new(
//!     Arc::new(InMemoryTaskExecutionStorage::new()),
//!     ExecutorOptions {
//!         // Told apart from the other executors of the process by this label.
//!         metric_labels: vec![("executor".to_owned(), "example".to_owned())],
//!         ..ExecutorOptions::default()
//!     },
//! );
//! executor.register(&double)?;
//! executor.start();
//! executor.enqueue(&double, &21).await?.wait().await?;
//! executor.shutdown().await;
//!
//! let completed = snapshotter.snapshot().into_vec().into_iter().find_map(|(key, _, _, value)| {
//!     (key.key().name() == metric::TASK_COMPLETED).then_some(value)
//! });
//! assert_eq!(completed, Some(DebugValue::Counter(1)));
//! # Ok(())
//! # }
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use metrics::{Counter, Histogram, Label, Unit};

use crate::task::{ReadyTaskExecutions, TaskExecutionCount, TaskExecutionStatus};

/// Label of the per-task executor metrics: the execution's queue.
pub const QUEUE_LABEL: &str = "queue";
/// Label of the per-task executor metrics: the execution's task id.
pub const TASK_LABEL: &str = "task";
/// Label of [`EXECUTOR_LOOP_ERRORS`] and [`EXECUTOR_LOOP_PANICS`]: the loop that failed
/// (`claim`, `parents`, `close`, `expire`, `prune`, `cancel`, `schedules`, and for panics also
/// `writer`, the batched result writer, and `run`, a run's writing of its result); and of
/// [`BATCH_WORKER_PANICS`] (`worker` or `heartbeat`).
pub const LOOP_LABEL: &str = "loop";
/// Label of [`BATCH_JOBS_FINALIZED`] (the job's final status: `COMPLETED`, `FAILED`, ...) and
/// of [`TASK_QUEUE_DEPTH`] (the executions' status: `ready`, `running`, ...).
pub const STATUS_LABEL: &str = "status";

/// Counter, per queue and task: executions claimed to run.
pub const TASK_CLAIMED: &str = "durable_task_executions_claimed_total";
/// Counter, per queue and task: runs that succeeded (the execution completed, or, for a
/// parent, went on to wait for its children or its finalize task).
pub const TASK_COMPLETED: &str = "durable_task_executions_completed_total";
/// Counter, per queue and task: runs that failed with no retry left (the execution is
/// `failed`), including tasks not registered and results the database refused.
pub const TASK_FAILED: &str = "durable_task_executions_failed_total";
/// Counter, per queue and task: runs that failed or timed out and will run again.
pub const TASK_RETRIED: &str = "durable_task_executions_retried_total";
/// Counter, per queue and task: runs that [snoozed](crate::TaskError::snooze): the execution
/// runs again later without counting an attempt.
pub const TASK_SNOOZED: &str = "durable_task_executions_snoozed_total";
/// Counter, per queue and task: runs that exceeded their timeout with no retry left (the
/// execution is `timed_out`). A timed-out run that will run again counts as retried.
pub const TASK_TIMED_OUT: &str = "durable_task_executions_timed_out_total";
/// Counter, per queue and task: runs stopped because their execution was cancelled.
pub const TASK_CANCELLED: &str = "durable_task_executions_cancelled_total";
/// Counter, per queue and task: parents whose children all finished, moved on by the parents
/// loop (completed, failed with their children, or handed to their finalize task).
pub const TASK_PARENTS_FINALIZED: &str = "durable_task_parents_finalized_total";
/// Histogram, per queue and task, in seconds: how late a claim was, from the execution's
/// `start_at` (when it was due) to its claim.
pub const TASK_CLAIM_LATENCY: &str = "durable_task_claim_latency_seconds";
/// Histogram, per queue and task, in seconds: how long runs took, from the start of the task
/// function to its result (before the result is written).
pub const TASK_RUN_DURATION: &str = "durable_task_run_duration_seconds";
/// Counter, per executor (no queue or task: the storage reports a count): executions
/// recovered by the expire loop, running ones whose lease lapsed (their executor died) and
/// sleeping ones whose timeout passed.
pub const TASK_EXPIRED: &str = "durable_task_executions_expired_total";
/// Counter, per executor and [`LOOP_LABEL`]: failed iterations of the executor's loops (each
/// is retried with backoff).
pub const EXECUTOR_LOOP_ERRORS: &str = "durable_executor_loop_errors_total";
/// Counter, per executor and [`LOOP_LABEL`]: iterations of the executor's loops that panicked
/// (in the storage, a driver or the executor itself). The panic is caught and logged, and the
/// loop goes on after its error backoff. A panic of a task's own function is not one of these:
/// it fails the run.
pub const EXECUTOR_LOOP_PANICS: &str = "durable_executor_loop_panics_total";

/// Gauge, per [`QUEUE_LABEL`] and [`STATUS_LABEL`]: unfinished executions (`ready`,
/// `running`, `waiting_for_children_tasks`, `waiting_for_finalize_task`, `sleeping`), as
/// counted by the executor's last sample
/// ([`ExecutorOptions::queue_depth_interval`](crate::ExecutorOptions::queue_depth_interval)).
/// Every executor that samples reports the whole table, not only its own queues: read one
/// executor's series (or the maximum over executors), never their sum.
pub const TASK_QUEUE_DEPTH: &str = "durable_task_queue_depth";
/// Gauge, per [`QUEUE_LABEL`] and [`TASK_LABEL`], in seconds: how long the oldest due `ready`
/// execution of the task in the queue has waited to be claimed, as of the executor's last
/// sample (with the queue depth); 0 once none waits. An age that only grows means that no
/// executor serves the task in that queue (a child task registered nowhere, say). Like the
/// queue depth, every sampling executor reports the whole table.
pub const TASK_OLDEST_READY_AGE: &str = "durable_task_oldest_ready_age_seconds";

/// Counter, per worker: records processed successfully, counted when their batch is completed.
pub const BATCH_RECORDS_PROCESSED: &str = "durable_batch_records_processed_total";
/// Counter, per worker: records that failed, counted when their batch is completed.
pub const BATCH_RECORDS_FAILED: &str = "durable_batch_records_failed_total";
/// Counter, per worker: batches claimed.
pub const BATCH_CLAIMED: &str = "durable_batch_batches_claimed_total";
/// Counter, per worker: batches completed (failed records included when the job continues on
/// errors).
pub const BATCH_COMPLETED: &str = "durable_batch_batches_completed_total";
/// Counter, per worker: batches that stopped at a failed record and ended `FAILED` (jobs that
/// do not continue on errors).
pub const BATCH_FAILED: &str = "durable_batch_batches_failed_total";
/// Counter, per worker: batches given up because their claim was lost (they were reclaimed).
pub const BATCH_CLAIMS_LOST: &str = "durable_batch_claims_lost_total";
/// Counter, per worker: stale batches of dead workers reclaimed.
pub const BATCH_RECLAIMED: &str = "durable_batch_batches_reclaimed_total";
/// Counter, per worker and [`STATUS_LABEL`]: jobs this worker finalized.
pub const BATCH_JOBS_FINALIZED: &str = "durable_batch_jobs_finalized_total";
/// Histogram, per worker, in seconds: how long a batch took from its claim to its completion.
pub const BATCH_DURATION: &str = "durable_batch_duration_seconds";
/// Counter, per worker: failed store calls the worker backed off from and retried.
pub const BATCH_WORKER_ERRORS: &str = "durable_batch_worker_errors_total";
/// Counter, per worker and [`LOOP_LABEL`] (`worker` or `heartbeat`): steps of the worker loop
/// and heartbeats that panicked in the store (or the worker itself), caught, logged and retried
/// with backoff. A panic of the record processor is not one of these: it fails the record.
pub const BATCH_WORKER_PANICS: &str = "durable_batch_worker_panics_total";

/// Gives the installed recorder the help text and unit of every metric above. Call it once,
/// after installing the recorder; exporters that show help text use it.
pub fn describe() {
    use metrics::{describe_counter, describe_histogram};
    describe_counter!(TASK_CLAIMED, Unit::Count, "Executions claimed to run.");
    describe_counter!(TASK_COMPLETED, Unit::Count, "Runs that succeeded.");
    describe_counter!(
        TASK_FAILED,
        Unit::Count,
        "Runs that failed with no retry left."
    );
    describe_counter!(
        TASK_RETRIED,
        Unit::Count,
        "Failed runs that will run again."
    );
    describe_counter!(
        TASK_SNOOZED,
        Unit::Count,
        "Runs that snoozed, to run again later without counting an attempt."
    );
    describe_counter!(
        TASK_TIMED_OUT,
        Unit::Count,
        "Runs that timed out with no retry left."
    );
    describe_counter!(
        TASK_CANCELLED,
        Unit::Count,
        "Runs stopped by a cancellation."
    );
    describe_counter!(
        TASK_PARENTS_FINALIZED,
        Unit::Count,
        "Parents moved on once all their children finished."
    );
    describe_histogram!(
        TASK_CLAIM_LATENCY,
        Unit::Seconds,
        "Time from an execution's start_at to its claim."
    );
    describe_histogram!(TASK_RUN_DURATION, Unit::Seconds, "Duration of runs.");
    describe_counter!(
        TASK_EXPIRED,
        Unit::Count,
        "Executions whose lease lapsed, recovered; sleeping executions timed out."
    );
    metrics::describe_gauge!(
        TASK_QUEUE_DEPTH,
        Unit::Count,
        "Unfinished executions by queue and status, at the last sample."
    );
    metrics::describe_gauge!(
        TASK_OLDEST_READY_AGE,
        Unit::Seconds,
        "How long the oldest due ready execution of a task in a queue has waited, at the last sample."
    );
    describe_counter!(
        EXECUTOR_LOOP_ERRORS,
        Unit::Count,
        "Failed iterations of an executor loop."
    );
    describe_counter!(
        EXECUTOR_LOOP_PANICS,
        Unit::Count,
        "Iterations of an executor loop that panicked, caught and retried."
    );
    describe_counter!(
        BATCH_RECORDS_PROCESSED,
        Unit::Count,
        "Records processed successfully."
    );
    describe_counter!(BATCH_RECORDS_FAILED, Unit::Count, "Records that failed.");
    describe_counter!(BATCH_CLAIMED, Unit::Count, "Batches claimed.");
    describe_counter!(BATCH_COMPLETED, Unit::Count, "Batches completed.");
    describe_counter!(
        BATCH_FAILED,
        Unit::Count,
        "Batches stopped by a failed record."
    );
    describe_counter!(
        BATCH_CLAIMS_LOST,
        Unit::Count,
        "Batches given up because their claim was lost."
    );
    describe_counter!(BATCH_RECLAIMED, Unit::Count, "Stale batches reclaimed.");
    describe_counter!(BATCH_JOBS_FINALIZED, Unit::Count, "Jobs finalized.");
    describe_histogram!(
        BATCH_DURATION,
        Unit::Seconds,
        "Time from a batch's claim to its completion."
    );
    describe_counter!(
        BATCH_WORKER_ERRORS,
        Unit::Count,
        "Failed store calls a worker retried."
    );
    describe_counter!(
        BATCH_WORKER_PANICS,
        Unit::Count,
        "Worker steps and heartbeats that panicked, caught and retried."
    );
}

/// The constant labels of an executor or worker, as `metrics` labels.
fn labels(constant: &[(String, String)]) -> Vec<Label> {
    constant
        .iter()
        .map(|(key, value)| Label::new(key.clone(), value.clone()))
        .collect()
}

/// The labels `base` and one more.
fn with(base: &[Label], key: &'static str, value: &str) -> Vec<Label> {
    let mut labels = Vec::with_capacity(base.len() + 1);
    labels.extend_from_slice(base);
    labels.push(Label::new(key, value.to_owned()));
    labels
}

/// The handles of one queue and task of an executor.
pub(crate) struct TaskMetrics {
    pub(crate) claimed: Counter,
    completed: Counter,
    failed: Counter,
    retried: Counter,
    pub(crate) snoozed: Counter,
    timed_out: Counter,
    pub(crate) cancelled: Counter,
    pub(crate) parents_finalized: Counter,
    pub(crate) claim_latency: Histogram,
    pub(crate) run_duration: Histogram,
}

impl TaskMetrics {
    fn new(labels: Vec<Label>) -> Self {
        Self {
            claimed: metrics::counter!(TASK_CLAIMED, labels.clone()),
            completed: metrics::counter!(TASK_COMPLETED, labels.clone()),
            failed: metrics::counter!(TASK_FAILED, labels.clone()),
            retried: metrics::counter!(TASK_RETRIED, labels.clone()),
            snoozed: metrics::counter!(TASK_SNOOZED, labels.clone()),
            timed_out: metrics::counter!(TASK_TIMED_OUT, labels.clone()),
            cancelled: metrics::counter!(TASK_CANCELLED, labels.clone()),
            parents_finalized: metrics::counter!(TASK_PARENTS_FINALIZED, labels.clone()),
            claim_latency: metrics::histogram!(TASK_CLAIM_LATENCY, labels.clone()),
            run_duration: metrics::histogram!(TASK_RUN_DURATION, labels),
        }
    }

    /// Counts a run's result, written with `status`, by what that status means for the run.
    pub(crate) fn result(&self, status: Option<TaskExecutionStatus>) {
        use TaskExecutionStatus as S;
        match status {
            Some(S::Completed | S::WaitingForChildren | S::WaitingForFinalize) => {
                self.completed.increment(1);
            }
            // A failed run goes back to `ready` only to be retried.
            Some(S::Ready) => self.retried.increment(1),
            Some(S::TimedOut) => self.timed_out.increment(1),
            Some(S::Failed) => self.failed.increment(1),
            _ => {}
        }
    }
}

/// An executor's metrics: its constant labels, and the handles of each queue and task it met.
pub(crate) struct ExecutorMetrics {
    labels: Vec<Label>,
    /// Task id → queue → handles. Bounded: an executor only claims the tasks registered with
    /// it, from its queues.
    tasks: RwLock<HashMap<String, HashMap<String, Arc<TaskMetrics>>>>,
    /// The (queue, status) series the last queue-depth sample set.
    depth_series: Mutex<HashSet<(String, TaskExecutionStatus)>>,
    /// The (queue, task) series the last oldest-ready sample set.
    ready_series: Mutex<HashSet<(String, String)>>,
}

impl ExecutorMetrics {
    pub(crate) fn new(constant: &[(String, String)]) -> Self {
        Self {
            labels: labels(constant),
            tasks: RwLock::new(HashMap::new()),
            depth_series: Mutex::new(HashSet::new()),
            ready_series: Mutex::new(HashSet::new()),
        }
    }

    /// The handles of `task` in `queue`, resolved the first time they are asked for.
    pub(crate) fn task(&self, queue: &str, task: &str) -> Arc<TaskMetrics> {
        if let Some(found) = self
            .tasks
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(task)
            .and_then(|queues| queues.get(queue))
        {
            return Arc::clone(found);
        }
        let mut tasks = self
            .tasks
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let queues = tasks.entry(task.to_owned()).or_default();
        Arc::clone(queues.entry(queue.to_owned()).or_insert_with(|| {
            let mut labels = with(&self.labels, QUEUE_LABEL, queue);
            labels.push(Label::new(TASK_LABEL, task.to_owned()));
            Arc::new(TaskMetrics::new(labels))
        }))
    }

    /// Counts executions recovered by the expire loop. Rare: resolved on each call.
    pub(crate) fn expired(&self, count: u64) {
        metrics::counter!(TASK_EXPIRED, self.labels.clone()).increment(count);
    }

    /// Sets the queue-depth gauges from `counts`, and to 0 those of the previous sample that
    /// `counts` no longer lists (their queue and status emptied). Every few seconds at most:
    /// resolved on each call.
    pub(crate) fn queue_depth(&self, counts: &[TaskExecutionCount]) {
        let mut seen = self
            .depth_series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now: HashSet<(String, TaskExecutionStatus)> =
            counts.iter().map(|c| (c.queue.clone(), c.status)).collect();
        for (queue, status) in seen.difference(&now) {
            self.depth_gauge(queue, *status).set(0.0);
        }
        for count in counts {
            // Counts above 2^53 lose precision in a gauge's f64, which no queue reaches.
            #[allow(clippy::as_conversions)]
            let value = count.count as f64;
            self.depth_gauge(&count.queue, count.status).set(value);
        }
        *seen = now;
    }

    fn depth_gauge(&self, queue: &str, status: TaskExecutionStatus) -> metrics::Gauge {
        let mut labels = with(&self.labels, QUEUE_LABEL, queue);
        labels.push(Label::new(STATUS_LABEL, status.as_str()));
        metrics::gauge!(TASK_QUEUE_DEPTH, labels)
    }

    /// Sets the oldest-ready gauges from `ready` (sampled at `now`), and to 0 those of the
    /// previous sample that `ready` no longer lists. Resolved on each call, as the queue depth.
    pub(crate) fn oldest_ready(&self, ready: &[ReadyTaskExecutions], now: i64) {
        let mut seen = self
            .ready_series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let current: HashSet<(String, String)> = ready
            .iter()
            .map(|r| (r.queue.clone(), r.task_id.clone()))
            .collect();
        for (queue, task) in seen.difference(&current) {
            self.ready_gauge(queue, task).set(0.0);
        }
        for group in ready {
            let waited = Duration::from_millis(
                u64::try_from(now.saturating_sub(group.oldest_start_at)).unwrap_or(0),
            );
            self.ready_gauge(&group.queue, &group.task_id)
                .set(waited.as_secs_f64());
        }
        *seen = current;
    }

    fn ready_gauge(&self, queue: &str, task: &str) -> metrics::Gauge {
        let mut labels = with(&self.labels, QUEUE_LABEL, queue);
        labels.push(Label::new(TASK_LABEL, task.to_owned()));
        metrics::gauge!(TASK_OLDEST_READY_AGE, labels)
    }

    /// Counts a failed iteration of the loop `name`. Rare: resolved on each call.
    pub(crate) fn loop_error(&self, name: &'static str) {
        metrics::counter!(EXECUTOR_LOOP_ERRORS, with(&self.labels, LOOP_LABEL, name)).increment(1);
    }

    /// The counter of panicked iterations of the loop `name`. Rare: resolved on each call.
    pub(crate) fn loop_panics(&self, name: &'static str) -> Counter {
        metrics::counter!(EXECUTOR_LOOP_PANICS, with(&self.labels, LOOP_LABEL, name))
    }
}

/// A batch worker's handles, resolved when it starts.
pub(crate) struct WorkerMetrics {
    labels: Vec<Label>,
    pub(crate) records_processed: Counter,
    pub(crate) records_failed: Counter,
    pub(crate) claimed: Counter,
    pub(crate) completed: Counter,
    pub(crate) failed: Counter,
    pub(crate) claims_lost: Counter,
    pub(crate) reclaimed: Counter,
    pub(crate) errors: Counter,
    pub(crate) duration: Histogram,
}

impl WorkerMetrics {
    pub(crate) fn new(constant: &[(String, String)]) -> Self {
        let labels = labels(constant);
        Self {
            records_processed: metrics::counter!(BATCH_RECORDS_PROCESSED, labels.clone()),
            records_failed: metrics::counter!(BATCH_RECORDS_FAILED, labels.clone()),
            claimed: metrics::counter!(BATCH_CLAIMED, labels.clone()),
            completed: metrics::counter!(BATCH_COMPLETED, labels.clone()),
            failed: metrics::counter!(BATCH_FAILED, labels.clone()),
            claims_lost: metrics::counter!(BATCH_CLAIMS_LOST, labels.clone()),
            reclaimed: metrics::counter!(BATCH_RECLAIMED, labels.clone()),
            errors: metrics::counter!(BATCH_WORKER_ERRORS, labels.clone()),
            duration: metrics::histogram!(BATCH_DURATION, labels.clone()),
            labels,
        }
    }

    /// Counts a job this worker finalized. Once per job: resolved on each call.
    pub(crate) fn job_finalized(&self, status: &str) {
        metrics::counter!(
            BATCH_JOBS_FINALIZED,
            with(&self.labels, STATUS_LABEL, status)
        )
        .increment(1);
    }

    /// The counter of panicked steps of the worker's loop `name` (`worker`, `heartbeat`).
    /// Rare: resolved on each call.
    pub(crate) fn panics(&self, name: &'static str) -> Counter {
        metrics::counter!(BATCH_WORKER_PANICS, with(&self.labels, LOOP_LABEL, name))
    }
}

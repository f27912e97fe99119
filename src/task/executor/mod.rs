//! The durable executor: runs registered tasks from a [`TaskExecutionStorage`] shared by any
//! number of executors.
//!
//! An executor runs six background loops:
//! - **claim**: claims ready executions in batches up to its free capacity and runs each;
//! - **parents**: claims parents whose children all finished, and completes them, fails them or
//!   spawns their finalize execution;
//! - **close**: propagates finished executions to their parents and cancels the children of
//!   executions that did not complete;
//! - **expire**: returns executions whose executor died (their lease lapsed) to `ready`;
//! - **cancel**: stops local runs of executions that were cancelled;
//! - **schedules**: enqueues the due ticks of the periodic schedules of its tasks.
//!
//! A loop that found a full batch runs again at once; an idle loop sleeps its poll interval with
//! jitter, and is woken early by in-process events (an enqueue wakes the claim loop, a finished
//! run the close loop, a close the parents loop). Errors back off exponentially.
//!
//! Every write a run makes is guarded by the fencing token of its claim: an execution whose
//! lease lapsed and was claimed again elsewhere cannot be overwritten by the old run.

mod definition;
mod enqueuer;
mod handle;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use definition::{
    ChildOutput, ChildTask, FinalizeInput, ParentDefinition, ParentOutcome, ParentTaskOutput,
    Sequence, TaskContext, TaskDefinition, TaskError, TaskOptions,
};
pub use handle::{FinishedExecution, TaskHandle, WaitOptions};

use crate::clock::millis;
use definition::{RunOutcome, TaskSpec};
use enqueuer::EnqueueSpans;

use crate::clock::{Clock, SystemClock};
use crate::dialect::{Backoff, jitter};
use crate::error::{Error, Result};
use crate::id::new_id;
use crate::metric::{ExecutorMetrics, TaskMetrics};
use crate::task::model::{
    ClaimParams, ExecutionError, ExecutionErrorKind, NewTaskExecution, ParentRef, TaskExecution,
    TaskExecutionGuard, TaskExecutionRef, TaskExecutionStatus, TaskExecutionUpdate, Wake,
    WakeOutcome, WakeResult,
};
use crate::task::storage::TaskExecutionStorage;
use crate::task::{
    Schedule, ScheduleFire, TaskExecutionFilter, TaskSchedule, Ticks, tick_execution_id,
    validate_schedule_id,
};

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
    /// most [`MAX_LEASE_MARGIN`](crate::MAX_LEASE_MARGIN).
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
    /// How often an executor with this retention prunes.
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
    fn ages(&self) -> [(Option<Duration>, &'static [TaskExecutionStatus]); 3] {
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
/// ([`TaskExecution::start_at`], [`TaskExecutionFilter::starts_after`](crate::TaskExecutionFilter::starts_after)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnqueueOptions {
    /// Run no earlier than this long after the enqueue. At most
    /// [`MAX_SLEEP_BEFORE_RUN`](crate::MAX_SLEEP_BEFORE_RUN).
    pub delay: Option<Duration>,
    /// Run no earlier than this time (epoch ms, on the executor's [`Clock`]); a time already
    /// past runs as soon as possible. At most
    /// [`MAX_SLEEP_BEFORE_RUN`](crate::MAX_SLEEP_BEFORE_RUN) ahead.
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
    fn sleep(&self, now: i64) -> Result<Option<Duration>> {
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

/// Runs durable tasks registered with it, from a storage shared by any number of executors.
///
/// It runs six background loops: **claim** (claims ready executions in batches up to its free
/// capacity and runs each), **parents** (completes, fails or finalizes parents whose children
/// all finished), **close** (propagates finished executions to their parents and cancels the
/// children of executions that did not complete), **expire** (returns executions whose executor
/// died to `ready`, counting the attempt, and times out sleepers), **cancel** (stops local runs
/// of cancelled executions) and **schedules** (enqueues each due tick of a periodic schedule,
/// once across all executors). A loop that found a full batch runs again at once; an idle one sleeps its poll
/// interval with jitter and is woken early by in-process events. Every write of a run is
/// guarded by its claim's fencing token.
#[derive(Clone)]
pub struct Executor {
    inner: Arc<Inner>,
}

impl fmt::Debug for Executor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Executor")
            .field("id", &self.inner.id)
            .finish()
    }
}

struct Inner {
    id: String,
    storage: Arc<dyn TaskExecutionStorage>,
    options: ExecutorOptions,
    tasks: RwLock<HashMap<String, Arc<TaskSpec>>>,
    /// Runs in progress: execution id → (fencing token of the claim, cancellation token).
    running: Mutex<HashMap<String, (i64, CancellationToken)>>,
    permits: Arc<Semaphore>,
    /// Counts the claim loop's claims: odd while one is in flight. The cancel loop uses it to
    /// tell a run not registered yet (its claim's reply still on the way) from one that ended.
    claim_epoch: AtomicU64,
    /// The claim id of the parents claim that failed last, to be resumed by the next one.
    failed_parent_claim: Mutex<Option<String>>,
    /// The last measured offset of this executor's clock from the storage's, in ms
    /// ([`NO_SKEW`] until measured or when the storage has no clock).
    clock_skew_ms: AtomicI64,
    /// When the clock skew was measured last.
    skew_measured: Mutex<Option<std::time::Instant>>,
    /// When finished executions were pruned last.
    pruned: Mutex<Option<std::time::Instant>>,
    /// When the queue depth was sampled last.
    depth_sampled: Mutex<Option<std::time::Instant>>,
    metrics: ExecutorMetrics,
    /// The spans that enqueued executions in this process, for their runs to follow from.
    enqueuers: EnqueueSpans,
    wake_claim: Notify,
    wake_parents: Notify,
    /// Shared with the batch writer, which wakes the close loop once per written batch.
    wake_close: Arc<Notify>,
    shutdown: CancellationToken,
    loops: Mutex<Vec<JoinHandle<()>>>,
    runs: TaskTracker,
    /// Guarded updates waiting to be written together; see [`write_batches`].
    writes: mpsc::UnboundedSender<PendingWrite>,
    /// The batch writer's end of `writes`, until [`Executor::start`] spawns it.
    pending_writes: Mutex<Option<mpsc::UnboundedReceiver<PendingWrite>>>,
}

/// A guarded update waiting for the batch writer, and where its match count goes.
type PendingWrite = (
    TaskExecutionGuard,
    TaskExecutionUpdate,
    oneshot::Sender<Result<u64>>,
);

/// [`Inner::clock_skew_ms`] before a measurement.
const NO_SKEW: i64 = i64::MIN;

/// How often the expire loop measures the clock skew.
const SKEW_INTERVAL: Duration = Duration::from_secs(60);

/// Most guarded updates written in one batch.
const WRITE_BATCH: usize = 128;

/// Writes the results of runs in batches: whatever accumulated while earlier batches were being
/// written goes out in the next one, in one call (one transaction on SQL storages). An idle
/// executor writes a lone result at once; a busy one pays one commit per batch instead of one per
/// execution. Up to [`WRITES_IN_FLIGHT`] batches are written at once. Ends when the channel
/// closes, after [`Executor::shutdown`] and the last reference to the executor are gone.
async fn write_batches(
    storage: Arc<dyn TaskExecutionStorage>,
    mut pending: mpsc::UnboundedReceiver<PendingWrite>,
    written: Arc<Notify>,
) {
    let in_flight = Arc::new(Semaphore::new(WRITES_IN_FLIGHT));
    loop {
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            return;
        };
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        if pending.recv_many(&mut batch, WRITE_BATCH).await == 0 {
            return;
        }
        // Runs claimed together tend to finish together: give the others a moment to join
        // this batch rather than each paying for a transaction of its own.
        for _ in 0..4 {
            if batch.len() >= WRITE_BATCH {
                break;
            }
            tokio::task::yield_now().await;
            while batch.len() < WRITE_BATCH {
                match pending.try_recv() {
                    Ok(write) => batch.push(write),
                    Err(_) => break,
                }
            }
        }
        let (storage, written) = (Arc::clone(&storage), Arc::clone(&written));
        tokio::spawn(async move {
            write_batch(&*storage, batch).await;
            drop(permit);
            // The executions just finished are the close loop's next work.
            written.notify_one();
        });
    }
}

/// Most batches of results written at once.
const WRITES_IN_FLIGHT: usize = 4;

async fn write_batch(storage: &dyn TaskExecutionStorage, batch: Vec<PendingWrite>) {
    let (updates, replies): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .map(|(guard, update, reply)| ((guard, update), reply))
        .unzip();
    match storage.update_task_executions_many(&updates).await {
        Ok(matched) => {
            for (reply, n) in replies.into_iter().zip(matched) {
                let _ = reply.send(Ok(n));
            }
        }
        Err(err) => {
            // One bad row must not sink the others: write them one by one, so each writer
            // gets its own result.
            tracing::warn!(error = %err, count = updates.len(), "batched write failed; writing one by one");
            for ((guard, update), reply) in updates.iter().zip(replies) {
                let _ = reply.send(storage.update_task_executions(guard, update).await);
            }
        }
    }
}

/// The message of a panicked run.
fn panic_message(join: tokio::task::JoinError) -> String {
    match join.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".to_owned()),
        Err(join) => join.to_string(),
    }
}

/// Most (queue, status) series of the queue-depth gauge one sample sets.
const QUEUE_DEPTH_SERIES: u64 = 1000;

/// Whether `interval` has passed since `last` (or nothing happened yet); if so, records now.
fn due(last: &Mutex<Option<std::time::Instant>>, interval: Duration) -> bool {
    let mut last = last
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if last.is_some_and(|at| at.elapsed() < interval) {
        return false;
    }
    *last = Some(std::time::Instant::now());
    true
}

/// A span of epoch milliseconds in seconds, for histograms (negative spans count as 0).
fn seconds(ms: i64) -> f64 {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0)).as_secs_f64()
}

impl Executor {
    /// An executor over `storage`. Register tasks, then [`start`](Self::start) it.
    pub fn new(storage: Arc<dyn TaskExecutionStorage>, options: ExecutorOptions) -> Self {
        let mut options = options;
        // Zero batches or a zero poll interval would make the loops spin without pause.
        options.claim_batch_size = options.claim_batch_size.max(1);
        options.background_batch_size = options.background_batch_size.max(1);
        options.poll_interval = options.poll_interval.max(Duration::from_millis(1));
        options.expire_interval = options.expire_interval.max(Duration::from_millis(1));
        options.lease_margin = options.lease_margin.min(crate::task::MAX_LEASE_MARGIN);
        let id = options.executor_id.clone().unwrap_or_else(|| new_id("ex_"));
        let permits = Arc::new(Semaphore::new(options.max_concurrent.max(1)));
        let (writes, pending) = mpsc::unbounded_channel();
        let metrics = ExecutorMetrics::new(&options.metric_labels);
        Self {
            inner: Arc::new(Inner {
                id,
                storage,
                options,
                tasks: RwLock::new(HashMap::new()),
                running: Mutex::new(HashMap::new()),
                permits,
                claim_epoch: AtomicU64::new(0),
                failed_parent_claim: Mutex::new(None),
                clock_skew_ms: AtomicI64::new(NO_SKEW),
                skew_measured: Mutex::new(None),
                pruned: Mutex::new(None),
                depth_sampled: Mutex::new(None),
                metrics,
                enqueuers: EnqueueSpans::default(),
                wake_claim: Notify::new(),
                wake_parents: Notify::new(),
                wake_close: Arc::new(Notify::new()),
                shutdown: CancellationToken::new(),
                loops: Mutex::new(Vec::new()),
                runs: TaskTracker::new(),
                writes,
                pending_writes: Mutex::new(Some(pending)),
            }),
        }
    }

    /// This executor's id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The storage this executor uses.
    pub fn storage(&self) -> &Arc<dyn TaskExecutionStorage> {
        &self.inner.storage
    }

    /// Registers `task`, its finalize task and the internal tasks of a sequence, so this
    /// executor can run them. Registering the same definition again does nothing.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] when another task is registered under the same id.
    pub fn register<I, O>(&self, task: &TaskDefinition<I, O>) -> Result<()> {
        let mut tasks = self
            .inner
            .tasks
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut pending = vec![Arc::clone(&task.spec)];
        while let Some(spec) = pending.pop() {
            crate::task::validate_task_id(&spec.id)?;
            spec.options.validate()?;
            match tasks.get(&spec.id) {
                Some(existing) if Arc::ptr_eq(existing, &spec) => continue,
                Some(_) => {
                    return Err(Error::InvalidArgument {
                        name: "task",
                        reason: format!("another task is registered with id `{}`", spec.id),
                    });
                }
                None => {}
            }
            pending.extend(spec.dependencies.iter().cloned());
            tasks.insert(spec.id.clone(), spec);
        }
        Ok(())
    }

    /// Starts the background loops on the current tokio runtime. Calling it again does nothing.
    /// The loops run until [`shutdown`](Self::shutdown); dropping the executor does not stop
    /// them.
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime.
    pub fn start(&self) {
        let mut loops = self
            .inner
            .loops
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !loops.is_empty() || self.inner.shutdown.is_cancelled() {
            return;
        }
        let inner = &self.inner;
        let pending = inner
            .pending_writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(pending) = pending {
            tokio::spawn(write_batches(
                Arc::clone(&inner.storage),
                pending,
                Arc::clone(&inner.wake_close),
            ));
        }
        loops.push(tokio::spawn(Arc::clone(inner).claim_loop()));
        loops.push(tokio::spawn(
            Arc::clone(inner).background_loop("parents", |i| i.process_parents()),
        ));
        loops.push(tokio::spawn(
            Arc::clone(inner).background_loop("close", |i| i.close_finished()),
        ));
        loops.push(tokio::spawn(
            Arc::clone(inner).background_loop("expire", |i| i.expire()),
        ));
        loops.push(tokio::spawn(
            Arc::clone(inner).background_loop("cancel", |i| i.take_cancellations()),
        ));
        loops.push(tokio::spawn(
            Arc::clone(inner).background_loop("schedules", |i| i.fire_schedules()),
        ));
        tracing::info!(executor_id = %inner.id, "executor started");
    }

    /// Stops claiming, waits for the running executions to finish (each is bounded by its own
    /// timeout) and for the loops to stop. Returns when nothing of this executor is running.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        let loops = std::mem::take(
            &mut *self
                .inner
                .loops
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for handle in loops {
            if let Err(err) = handle.await {
                tracing::error!(error = %err, "executor loop panicked");
            }
        }
        self.inner.runs.close();
        self.inner.runs.wait().await;
        tracing::info!(executor_id = %self.inner.id, "executor stopped");
    }

    /// The new execution of `task` with `input`, for enqueueing it yourself (for example inside
    /// your own database transaction); rebuild its handle with [`Executor::handle`].
    ///
    /// # Errors
    ///
    /// [`Error::Serialization`] when `input` does not serialize.
    pub fn new_execution<I: Serialize, O>(
        &self,
        task: &TaskDefinition<I, O>,
        input: &I,
    ) -> Result<NewTaskExecution> {
        Ok(new_execution(
            &task.spec,
            serde_json::to_string(input)?,
            None,
            None,
        ))
    }

    /// Like [`new_execution`](Self::new_execution), first running when `options` say, as of
    /// `now` (epoch ms).
    ///
    /// # Errors
    ///
    /// [`Error::Serialization`] when `input` does not serialize;
    /// [`Error::InvalidArgument`] when `options` set both a delay and a run-at time.
    pub fn new_execution_with<I: Serialize, O>(
        &self,
        task: &TaskDefinition<I, O>,
        input: &I,
        options: &EnqueueOptions,
        now: i64,
    ) -> Result<NewTaskExecution> {
        let mut execution = self.new_execution(task, input)?;
        if let Some(sleep) = options.sleep(now)? {
            execution.sleep_before_run = sleep;
        }
        Ok(execution)
    }

    /// Enqueues an execution of `task` with `input` and returns its handle.
    ///
    /// # Errors
    ///
    /// [`Error::Serialization`] when `input` does not serialize; storage errors.
    pub async fn enqueue<I: Serialize, O: DeserializeOwned>(
        &self,
        task: &TaskDefinition<I, O>,
        input: &I,
    ) -> Result<TaskHandle<O>> {
        self.enqueue_with(task, input, &EnqueueOptions::default())
            .await
    }

    /// Enqueues an execution of `task` with `input` that first runs when `options` say (after
    /// a delay, or at a time), and returns its handle.
    ///
    /// # Errors
    ///
    /// [`Error::Serialization`] when `input` does not serialize;
    /// [`Error::InvalidArgument`] when `options` set both a delay and a run-at time, or one
    /// further ahead than [`MAX_SLEEP_BEFORE_RUN`](crate::MAX_SLEEP_BEFORE_RUN); storage errors.
    pub async fn enqueue_with<I: Serialize, O: DeserializeOwned>(
        &self,
        task: &TaskDefinition<I, O>,
        input: &I,
        options: &EnqueueOptions,
    ) -> Result<TaskHandle<O>> {
        let now = self.inner.options.clock.now_ms();
        let execution = self.new_execution_with(task, input, options, now)?;
        let id = execution.execution_id.clone();
        let due_now = execution.sleep_before_run.is_zero();
        self.inner
            .storage
            .enqueue_task_executions(vec![execution], now)
            .await?;
        if due_now {
            self.inner.follow_from_current([id.as_str()]);
        }
        self.inner.wake_claim.notify_one();
        Ok(self.handle(id))
    }

    /// Enqueues an execution of `task` with `input` on `conn`, which may be the application's
    /// own SeaORM transaction: the execution exists if and only if that transaction commits
    /// (a transactional outbox). The tables must be the ones this executor's storage reads.
    ///
    /// # Errors
    ///
    /// [`Error::Serialization`] when `input` does not serialize; database errors.
    pub async fn enqueue_in<C, I, O>(
        &self,
        conn: &C,
        task: &TaskDefinition<I, O>,
        input: &I,
    ) -> Result<TaskHandle<O>>
    where
        C: sea_orm::ConnectionTrait,
        I: Serialize,
        O: DeserializeOwned,
    {
        self.enqueue_in_with(conn, task, input, &EnqueueOptions::default())
            .await
    }

    /// [`enqueue_in`](Self::enqueue_in) with a delay or a run-at time, as
    /// [`enqueue_with`](Self::enqueue_with).
    ///
    /// # Errors
    ///
    /// As [`enqueue_with`](Self::enqueue_with); database errors.
    pub async fn enqueue_in_with<C, I, O>(
        &self,
        conn: &C,
        task: &TaskDefinition<I, O>,
        input: &I,
        options: &EnqueueOptions,
    ) -> Result<TaskHandle<O>>
    where
        C: sea_orm::ConnectionTrait,
        I: Serialize,
        O: DeserializeOwned,
    {
        let now = self.inner.options.clock.now_ms();
        let execution = self.new_execution_with(task, input, options, now)?;
        crate::task::validate_new(&execution)?;
        let id = execution.execution_id.clone();
        let due_now = execution.sleep_before_run.is_zero();
        crate::task::sea_orm::enqueue_in(conn, vec![execution], now).await?;
        if due_now {
            // Forgotten in time if the transaction rolls back.
            self.inner.follow_from_current([id.as_str()]);
        }
        // Wakes the claim loop early; if the transaction is still open the claim finds nothing
        // yet and the regular poll picks the execution up after the commit.
        self.inner.wake_claim.notify_one();
        Ok(self.handle(id))
    }

    /// Wakes the execution of a [sleeping task](TaskDefinition::sleeping) enqueued under
    /// `wake_key`: it completes with `output`, and its parent, if any, continues. The first wake
    /// wins; a later one changes nothing and answers [`WakeResult::AlreadyFinished`] with the
    /// finished execution (also when its timeout or a cancellation came first).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when nothing was ever enqueued under `wake_key`;
    /// [`Error::Serialization`] when `output` does not serialize; storage errors.
    pub async fn wake<O: Serialize>(&self, wake_key: &str, output: &O) -> Result<WakeResult> {
        let outcome = WakeOutcome::Completed {
            output: serde_json::to_string(output)?,
        };
        self.wake_with(wake_key, outcome).await
    }

    /// Wakes the execution sleeping under `wake_key` with a failure: it ends `failed` with
    /// `message`, and its parent sees a failed child. Otherwise as [`wake`](Self::wake).
    ///
    /// # Errors
    ///
    /// As [`wake`](Self::wake).
    pub async fn wake_failed(
        &self,
        wake_key: &str,
        message: impl Into<String>,
    ) -> Result<WakeResult> {
        let outcome = WakeOutcome::Failed {
            error: ExecutionError::generic(message, false),
        };
        self.wake_with(wake_key, outcome).await
    }

    #[tracing::instrument(skip(self, outcome), err)]
    async fn wake_with(&self, wake_key: &str, outcome: WakeOutcome) -> Result<WakeResult> {
        let wake = Wake {
            wake_key: wake_key.to_owned(),
            outcome,
            now: self.inner.options.clock.now_ms(),
        };
        let result = self.inner.storage.wake_task_execution(&wake).await?;
        if result.is_woken() {
            // The woken execution is the close loop's next work (its parent's, after that).
            self.inner.wake_close.notify_one();
        }
        Ok(result)
    }

    /// Saves a periodic schedule of `task` with `input` and registers the task: every
    /// executor that has the task registered enqueues its due ticks, each tick once however
    /// many executors run. Saving the same schedule again (every executor may do so at start)
    /// keeps its progress; saving a changed one under the same id replaces it, its next tick
    /// counted from now. Returns the schedule as stored.
    ///
    /// Each tick's execution has the id `sch_<schedule id>_<tick in epoch ms>`. Ticks missed
    /// while no executor ran follow [`Schedule::missed_ticks`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a schedule id outside 1..=[`MAX_SCHEDULE_ID_LEN`](crate::MAX_SCHEDULE_ID_LEN)
    /// bytes, a cron expression or time zone that does not parse, or an interval below 1 ms;
    /// as [`register`](Self::register); [`Error::Serialization`] when `input` does not
    /// serialize; storage errors.
    pub async fn schedule<I: Serialize, O>(
        &self,
        task: &TaskDefinition<I, O>,
        input: &I,
        schedule: &Schedule,
    ) -> Result<TaskSchedule> {
        validate_schedule_id(&schedule.id)?;
        let ticks = Ticks::parse(&schedule.spec)?;
        self.register(task)?;
        let now = self.inner.now();
        let stored = self
            .inner
            .storage
            .save_task_schedule(TaskSchedule {
                schedule_id: schedule.id.clone(),
                task_id: task.spec.id.clone(),
                input: serde_json::to_string(input)?,
                spec: schedule.spec.clone(),
                missed_ticks: schedule.missed_ticks,
                next_tick_at: ticks.next_after(now)?,
                last_tick_at: None,
                created_at: now,
                updated_at: now,
            })
            .await?;
        Ok(stored)
    }

    /// Deletes the periodic schedule `schedule_id`; the executions it enqueued stay. Returns
    /// whether it existed.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub async fn unschedule(&self, schedule_id: &str) -> Result<bool> {
        self.inner.storage.delete_task_schedule(schedule_id).await
    }

    /// The handle of an existing execution.
    pub fn handle<O: DeserializeOwned>(&self, execution_id: impl Into<String>) -> TaskHandle<O> {
        TaskHandle::new(
            execution_id.into(),
            Arc::clone(&self.inner.storage),
            Arc::clone(&self.inner.options.clock),
        )
    }

    /// How far this executor's clock was ahead of the storage's (the database server's) at the
    /// last measurement, in whole milliseconds; `None` before the first one or when the storage
    /// has no clock of its own.
    ///
    /// Leases are written with one executor's clock and judged by another's, so every executor
    /// sharing the tables should stay within a small part of
    /// [`lease_margin`](ExecutorOptions::lease_margin) of one reference. The expire loop
    /// measures the skew against the database at start and every minute after, and logs a
    /// warning when it exceeds a quarter of the lease margin.
    pub fn clock_skew(&self) -> Option<crate::ClockSkew> {
        match self.inner.clock_skew_ms.load(Ordering::SeqCst) {
            NO_SKEW => None,
            skew => Some(crate::ClockSkew::from_millis(skew)),
        }
    }

    /// Deletes the finished, closed executions older than `retention` keeps (with the
    /// finished-child records of pruned parents), in batches of `retention.batch_size`, until
    /// none is left; returns how many it deleted. Unfinished work is never touched. An executor
    /// with [`ExecutorOptions::retention`] does this by itself every `retention.interval`.
    ///
    /// # Errors
    ///
    /// Storage errors; what was deleted before stays deleted.
    pub async fn prune(&self, retention: &Retention) -> Result<u64> {
        self.inner.prune(retention).await
    }

    /// How many executions this executor is running now.
    pub fn running_count(&self) -> usize {
        self.inner
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

fn new_execution(
    spec: &TaskSpec,
    input: String,
    root: Option<TaskExecutionRef>,
    parent: Option<ParentRef>,
) -> NewTaskExecution {
    // A sleeping task's input is its wake key (a JSON string).
    let wake_key = spec
        .sleeping
        .then(|| serde_json::from_str::<String>(&input).unwrap_or_else(|_| input.clone()));
    NewTaskExecution {
        execution_id: new_id("te_"),
        task_id: spec.id.clone(),
        queue: Some(spec.options.queue.clone()),
        wake_key,
        root,
        parent,
        retry_options: spec.options.retry.clone(),
        sleep_before_run: spec.options.sleep_before_run,
        timeout: spec.options.timeout,
        input,
    }
}

/// How a run ended, before it is written.
enum RunResult {
    Finished(RunOutcome),
    Failed(TaskError, ExecutionErrorKind),
    /// Cancelled through its handle: the row already says so.
    Cancelled,
}

impl Inner {
    fn now(&self) -> i64 {
        self.options.clock.now_ms()
    }

    /// Makes the runs of `ids`, when they run here, follow from the current span.
    fn follow_from_current<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        if self.options.follow_enqueuer_spans {
            self.enqueuers.remember(ids);
        }
    }

    /// The ids of `executions`, when their runs are to follow from the current span (a run,
    /// or a parent's processing); `None` without a recording span, so that nothing is copied
    /// then.
    fn followers(&self, executions: &[NewTaskExecution]) -> Option<Vec<String>> {
        (self.options.follow_enqueuer_spans && !tracing::Span::current().is_disabled())
            .then(|| executions.iter().map(|e| e.execution_id.clone()).collect())
    }

    fn remember_followers(&self, ids: Option<Vec<String>>) {
        if let Some(ids) = ids {
            self.enqueuers.remember(ids.iter().map(String::as_str));
        }
    }

    fn task(&self, id: &str) -> Option<Arc<TaskSpec>> {
        self.tasks
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// A guarded update through the batch writer.
    async fn write(&self, guard: TaskExecutionGuard, update: TaskExecutionUpdate) -> Result<u64> {
        let (reply, matched) = oneshot::channel();
        if self
            .writes
            .send((guard.clone(), update.clone(), reply))
            .is_err()
        {
            return self.storage.update_task_executions(&guard, &update).await;
        }
        match matched.await {
            Ok(result) => result,
            Err(_) => self.storage.update_task_executions(&guard, &update).await,
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, (i64, CancellationToken)>> {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sleeps the poll interval, or less when woken or shut down.
    async fn idle(&self, wake: &Notify) {
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(jitter(self.options.poll_interval)) => {}
            () = self.shutdown.cancelled() => {}
        }
    }

    async fn backoff(&self, errors: u32) {
        tokio::select! {
            () = tokio::time::sleep(Backoff::RUNNER.delay(errors)) => {}
            () = self.shutdown.cancelled() => {}
        }
    }

    /// The parameters of a claim by this executor: only tasks registered here, only its
    /// queues. `failed` is the id of the previous claim when it failed (its reply may have been
    /// lost after it committed): the claim resumes it, taking back what it took.
    fn claim_params(&self, limit: u64, failed: Option<String>) -> ClaimParams {
        let resume = failed.is_some();
        let mut task_ids: Vec<String> = self
            .tasks
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        // A stable order keeps the statement text, and so prepared statements, the same.
        task_ids.sort_unstable();
        ClaimParams {
            executor_id: self.id.clone(),
            now: self.now(),
            limit,
            lease_margin: self.options.lease_margin,
            task_ids: Some(task_ids),
            queues: self.options.queues.clone(),
            claim_id: Some(failed.unwrap_or_else(|| new_id("cl_"))),
            resume,
        }
    }

    async fn claim_loop(self: Arc<Self>) {
        let mut errors = 0;
        // The claim id of a claim that failed, resumed by the next attempt.
        let mut failed_claim: Option<String> = None;
        while !self.shutdown.is_cancelled() {
            let free = self.permits.available_permits();
            if free == 0 {
                // A finishing run wakes the claim loop.
                self.idle(&self.wake_claim).await;
                continue;
            }
            let limit = self
                .options
                .claim_batch_size
                .min(u64::try_from(free).unwrap_or(u64::MAX));
            let Ok(mut permits) = Arc::clone(&self.permits)
                .try_acquire_many_owned(u32::try_from(limit).unwrap_or(u32::MAX))
            else {
                self.idle(&self.wake_claim).await;
                continue;
            };
            let params = self.claim_params(limit, failed_claim.take());
            self.claim_epoch.fetch_add(1, Ordering::SeqCst);
            let claimed = self.storage.claim_task_executions(&params).await;
            match claimed {
                Ok(claimed) => {
                    errors = 0;
                    let full = u64::try_from(claimed.len()).unwrap_or(u64::MAX) >= limit;
                    for execution in claimed {
                        let Some(permit) = permits.split(1) else {
                            break;
                        };
                        self.spawn_run(execution, permit);
                    }
                    self.claim_epoch.fetch_add(1, Ordering::SeqCst);
                    drop(permits);
                    if !full {
                        self.idle(&self.wake_claim).await;
                    }
                }
                Err(err) => {
                    self.claim_epoch.fetch_add(1, Ordering::SeqCst);
                    drop(permits);
                    failed_claim = params.claim_id;
                    errors += 1;
                    self.metrics.loop_error("claim");
                    tracing::warn!(error = %err, errors, "claiming task executions failed");
                    self.backoff(errors).await;
                }
            }
        }
    }

    /// Runs `iteration` until shutdown: again at once while it reports a full batch, after the
    /// poll interval (or a wake-up) when not, with backoff on errors.
    async fn background_loop<F, Fut>(self: Arc<Self>, name: &'static str, iteration: F)
    where
        F: Fn(Arc<Self>) -> Fut,
        Fut: Future<Output = Result<bool>>,
    {
        let mut errors = 0;
        while !self.shutdown.is_cancelled() {
            match iteration(Arc::clone(&self)).await {
                Ok(true) => errors = 0,
                Ok(false) => {
                    errors = 0;
                    let wake = match name {
                        "parents" => &self.wake_parents,
                        "close" => &self.wake_close,
                        _ => {
                            let interval = if name == "expire" {
                                self.options.expire_interval
                            } else {
                                self.options.poll_interval
                            };
                            tokio::select! {
                                () = tokio::time::sleep(jitter(interval)) => {}
                                () = self.shutdown.cancelled() => {}
                            }
                            continue;
                        }
                    };
                    self.idle(wake).await;
                }
                Err(err) => {
                    errors += 1;
                    self.metrics.loop_error(name);
                    tracing::warn!(loop_name = name, error = %err, errors, "executor loop failed");
                    self.backoff(errors).await;
                }
            }
        }
    }

    fn spawn_run(self: &Arc<Self>, execution: TaskExecution, permit: OwnedSemaphorePermit) {
        // Not a child of the shutdown token: shutting down lets running executions finish.
        let token = CancellationToken::new();
        let fencing_token = execution.fencing_token;
        let metrics = self.metrics.task(&execution.queue, &execution.task_id);
        metrics.claimed.increment(1);
        // The claim records its time as the run's start.
        let claimed_at = execution.started_at.unwrap_or_else(|| self.now());
        metrics
            .claim_latency
            .record(seconds(claimed_at.saturating_sub(execution.start_at)));
        self.running().insert(
            execution.execution_id.clone(),
            (fencing_token, token.clone()),
        );
        let inner = Arc::clone(self);
        self.runs.spawn(async move {
            let id = execution.execution_id.clone();
            inner.run(execution, token, &metrics).await;
            // Only this run's entry: a newer claim of the same execution may have replaced it.
            let mut running = inner.running();
            if running
                .get(&id)
                .is_some_and(|(fence, _)| *fence == fencing_token)
            {
                running.remove(&id);
            }
            drop(running);
            drop(permit);
            inner.wake_claim.notify_one();
        });
    }

    #[tracing::instrument(skip_all, fields(execution_id = %execution.execution_id, task_id = %execution.task_id))]
    async fn run(&self, execution: TaskExecution, token: CancellationToken, metrics: &TaskMetrics) {
        if let Some(enqueuer) = self.enqueuers.take(&execution.execution_id) {
            tracing::Span::current().follows_from(&enqueuer);
        }
        let result = match self.task(&execution.task_id) {
            None => RunResult::Failed(
                TaskError::fatal(format!("task `{}` is not registered", execution.task_id)),
                ExecutionErrorKind::NotFound,
            ),
            Some(spec) => {
                let started = std::time::Instant::now();
                let result = self.execute(&spec, &execution, token).await;
                metrics.run_duration.record(started.elapsed());
                result
            }
        };
        // Retry a result that could not be written for as long as the claim's lease lasts (the
        // fencing token makes a repeated write harmless); after that the lease lapses and the
        // execution is recovered by expiry.
        let lease_ends = execution.expires_at.unwrap_or(i64::MIN);
        let mut attempt: u32 = 0;
        loop {
            match self.record(&execution, &result, metrics).await {
                Ok(()) => break,
                Err(err) if err.is_retryable() && self.now() < lease_ends => {
                    attempt += 1;
                    tracing::warn!(error = %err, attempt, "recording the run's result failed; retrying");
                    tokio::time::sleep(Backoff::RUNNER.delay(attempt)).await;
                }
                Err(err) if err.is_retryable() => {
                    tracing::error!(error = %err, "recording the run's result failed until its lease ended; the lease will lapse");
                    break;
                }
                Err(err) => {
                    // No retry can write this result (too large for the database, say): the
                    // execution fails with the real reason instead of waiting for its lease to
                    // lapse and being mistaken for a dead executor's.
                    tracing::error!(error = %err, "the run's result cannot be stored; failing the execution");
                    self.record_unstorable(&execution, &err, metrics).await;
                    break;
                }
            }
        }
    }

    async fn execute(
        &self,
        spec: &TaskSpec,
        execution: &TaskExecution,
        token: CancellationToken,
    ) -> RunResult {
        let ctx = TaskContext {
            execution_id: execution.execution_id.clone(),
            task_id: execution.task_id.clone(),
            attempt: execution.retry_attempts,
            prev_error: execution.error.clone(),
            cancellation: token.clone(),
        };
        let timeout = execution.timeout.max(Duration::from_millis(1));
        // The run gets a task of its own, so that a panic in task code is caught here (and
        // recorded as the run's failure) instead of unwinding through the executor.
        let mut run = tokio::spawn((spec.run)(ctx, execution.input.clone()));
        let result = tokio::select! {
            r = tokio::time::timeout(timeout, &mut run) => match r {
                Ok(Ok(Ok(outcome))) => RunResult::Finished(outcome),
                Ok(Ok(Err(err))) => RunResult::Failed(err, ExecutionErrorKind::Generic),
                Ok(Err(join)) => RunResult::Failed(
                    TaskError::fatal(format!("task panicked: {}", panic_message(join))),
                    ExecutionErrorKind::Generic,
                ),
                Err(_) => RunResult::Failed(
                    TaskError::retryable(format!("task timed out after {} ms", execution.timeout.as_millis())),
                    ExecutionErrorKind::TimedOut,
                ),
            },
            () = token.cancelled() => RunResult::Cancelled,
        };
        run.abort();
        // Tell anything the run spawned that it is over.
        token.cancel();
        result
    }

    /// Writes how a run ended, guarded by the run's claim.
    async fn record(
        &self,
        execution: &TaskExecution,
        result: &RunResult,
        metrics: &TaskMetrics,
    ) -> Result<()> {
        let guard = TaskExecutionGuard::id(execution.execution_id.clone())
            .status(TaskExecutionStatus::Running)
            .fencing_token(execution.fencing_token);
        let now = self.now();
        let written = match result {
            RunResult::Cancelled => {
                metrics.cancelled.increment(1);
                return Ok(());
            }
            RunResult::Failed(err, kind) => {
                let update = self.failure_update(execution, err, *kind, now);
                let status = update.status;
                let written = self.write(guard, update).await? > 0;
                if written {
                    metrics.result(status);
                }
                written
            }
            RunResult::Finished(outcome) => {
                let spec = self.task(&execution.task_id);
                let written = self
                    .record_success(execution, &guard, spec.as_deref(), outcome, now)
                    .await?;
                if let Some(status) = written {
                    metrics.result(Some(status));
                }
                written.is_some()
            }
        };
        if !written {
            tracing::info!(
                "the execution changed while it ran (cancelled or taken over); result discarded"
            );
        }
        Ok(())
    }

    /// Fails `execution`, whose result cannot be stored, with the error that prevented it.
    async fn record_unstorable(
        &self,
        execution: &TaskExecution,
        cause: &Error,
        metrics: &TaskMetrics,
    ) {
        let guard = TaskExecutionGuard::id(execution.execution_id.clone())
            .status(TaskExecutionStatus::Running)
            .fencing_token(execution.fencing_token);
        let update = TaskExecutionUpdate {
            now: self.now(),
            status: Some(TaskExecutionStatus::Failed),
            error: Some(ExecutionError {
                kind: ExecutionErrorKind::Generic,
                is_retryable: false,
                is_internal: true,
                message: format!("the run's result could not be stored: {cause}"),
            }),
            ..Default::default()
        };
        match self.storage.update_task_executions(&guard, &update).await {
            Ok(0) => {}
            Ok(_) => metrics.result(update.status),
            Err(err) => {
                tracing::error!(error = %err, "failing the execution failed too; its lease will lapse");
            }
        }
    }

    fn failure_update(
        &self,
        execution: &TaskExecution,
        err: &TaskError,
        kind: ExecutionErrorKind,
        now: i64,
    ) -> TaskExecutionUpdate {
        let retry =
            err.is_retryable() && execution.retry_attempts < execution.retry_options.max_attempts;
        let error = ExecutionError {
            kind,
            is_retryable: err.is_retryable(),
            is_internal: kind == ExecutionErrorKind::NotFound,
            message: err.message().to_owned(),
        };
        if retry {
            let attempt = execution.retry_attempts.saturating_add(1);
            let delay = execution.retry_options.delay(attempt);
            // Jitter only lengthens the delay: a retry never runs before its configured delay.
            let delay = delay.mul_f64(1.0 + fastrand::f64() * 0.25);
            TaskExecutionUpdate {
                now,
                status: Some(TaskExecutionStatus::Ready),
                error: Some(error),
                retry_attempts: Some(attempt),
                start_at: Some(now.saturating_add(millis(delay))),
                ..Default::default()
            }
        } else {
            let status = match kind {
                ExecutionErrorKind::TimedOut => TaskExecutionStatus::TimedOut,
                _ => TaskExecutionStatus::Failed,
            };
            TaskExecutionUpdate {
                now,
                status: Some(status),
                error: Some(error),
                ..Default::default()
            }
        }
    }

    async fn record_success(
        &self,
        execution: &TaskExecution,
        guard: &TaskExecutionGuard,
        spec: Option<&TaskSpec>,
        outcome: &RunOutcome,
        now: i64,
    ) -> Result<Option<TaskExecutionStatus>> {
        let storage = &self.storage;
        let this = TaskExecutionRef {
            task_id: execution.task_id.clone(),
            execution_id: execution.execution_id.clone(),
        };
        let root = execution.root.clone().unwrap_or_else(|| this.clone());
        if !outcome.children.is_empty() {
            let mut children = Vec::with_capacity(outcome.children.len());
            for (index, child) in outcome.children.iter().enumerate() {
                let input = match &child.input {
                    Ok(input) => input.clone(),
                    Err(e) => {
                        let err = TaskError::fatal(format!(
                            "child {index} input does not serialize: {e}"
                        ));
                        let update =
                            self.failure_update(execution, &err, ExecutionErrorKind::Generic, now);
                        let written = storage.update_task_executions(guard, &update).await? > 0;
                        return Ok(if written { update.status } else { None });
                    }
                };
                let parent = ParentRef {
                    task_id: this.task_id.clone(),
                    execution_id: this.execution_id.clone(),
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                    is_finalize: false,
                };
                children.push(new_execution(
                    &child.spec,
                    input,
                    Some(root.clone()),
                    Some(parent),
                ));
            }
            let update = TaskExecutionUpdate {
                now,
                status: Some(TaskExecutionStatus::WaitingForChildren),
                run_output: Some(outcome.output.clone()),
                children_count: Some(u32::try_from(children.len()).unwrap_or(u32::MAX)),
                clear_error: true,
                ..Default::default()
            };
            let followers = self.followers(&children);
            let written = storage
                .update_task_execution_and_enqueue(guard, &update, children)
                .await?;
            if written {
                self.remember_followers(followers);
                self.wake_claim.notify_one();
            }
            return Ok(written.then_some(TaskExecutionStatus::WaitingForChildren));
        }
        let parent_output = |run_output: &str| -> Result<String> {
            let output: Value = serde_json::from_str(run_output)?;
            Ok(serde_json::to_string(&ParentTaskOutput {
                output,
                children: Vec::new(),
            })?)
        };
        // The run's output is stored once: as the final output, or inside the finalize
        // execution's input. `run_output` is kept only for parents that wait for children.
        match spec.and_then(|s| s.finalize.clone()) {
            Some(finalize) => {
                let input = parent_output(&outcome.output)?;
                let written = self
                    .spawn_finalize(execution, guard, &finalize, input, now)
                    .await?;
                Ok(written.then_some(TaskExecutionStatus::WaitingForFinalize))
            }
            None => {
                let output = if spec.is_some_and(|s| s.is_parent) {
                    parent_output(&outcome.output)?
                } else {
                    outcome.output.clone()
                };
                let update = TaskExecutionUpdate {
                    now,
                    status: Some(TaskExecutionStatus::Completed),
                    output: Some(output),
                    clear_error: true,
                    ..Default::default()
                };
                let written = self.write(guard.clone(), update).await? > 0;
                Ok(written.then_some(TaskExecutionStatus::Completed))
            }
        }
    }

    /// Moves `parent` to `waiting_for_finalize_task` and enqueues its finalize execution.
    async fn spawn_finalize(
        &self,
        parent: &TaskExecution,
        guard: &TaskExecutionGuard,
        finalize: &TaskSpec,
        input: String,
        now: i64,
    ) -> Result<bool> {
        let this = TaskExecutionRef {
            task_id: parent.task_id.clone(),
            execution_id: parent.execution_id.clone(),
        };
        let root = parent.root.clone().unwrap_or_else(|| this.clone());
        let parent_ref = ParentRef {
            task_id: this.task_id.clone(),
            execution_id: this.execution_id.clone(),
            index: 0,
            is_finalize: true,
        };
        let execution = new_execution(finalize, input, Some(root), Some(parent_ref));
        let update = TaskExecutionUpdate {
            now,
            status: Some(TaskExecutionStatus::WaitingForFinalize),
            finalize: Some(TaskExecutionRef {
                task_id: execution.task_id.clone(),
                execution_id: execution.execution_id.clone(),
            }),
            clear_error: true,
            ..Default::default()
        };
        let execution = vec![execution];
        let followers = self.followers(&execution);
        let written = self
            .storage
            .update_task_execution_and_enqueue(guard, &update, execution)
            .await?;
        if written {
            self.remember_followers(followers);
            self.wake_claim.notify_one();
        }
        Ok(written)
    }

    /// One iteration of the parents loop; true when the batch was full.
    async fn process_parents(self: Arc<Self>) -> Result<bool> {
        let limit = self.options.background_batch_size;
        let failed = self
            .failed_parent_claim
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let params = self.claim_params(limit, failed);
        let parents = match self
            .storage
            .claim_parents_with_finished_children(&params)
            .await
        {
            Ok(parents) => parents,
            Err(err) => {
                // Its reply may have been lost after it committed: the next claim resumes it.
                *self
                    .failed_parent_claim
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = params.claim_id;
                return Err(err);
            }
        };
        let full = u64::try_from(parents.len()).unwrap_or(u64::MAX) >= limit;
        let parents_empty = parents.is_empty();
        for parent in parents {
            // One parent's failure must not hold up the others claimed with it.
            let processed = self.process_parent(&parent).await;
            if let Ok(true) = processed {
                self.count_parent_finalized(&parent);
            }
            if let Err(err) = processed {
                if err.is_retryable() {
                    tracing::warn!(execution_id = %parent.execution_id, error = %err, "processing a parent failed; it is retried after its lease");
                    continue;
                }
                // Unreadable child outputs or run output: no retry can fix that.
                let guard = TaskExecutionGuard::id(parent.execution_id.clone())
                    .status(TaskExecutionStatus::WaitingForChildren)
                    .fencing_token(parent.fencing_token);
                let update = TaskExecutionUpdate {
                    now: self.now(),
                    status: Some(TaskExecutionStatus::ChildrenFailed),
                    error: Some(ExecutionError {
                        kind: ExecutionErrorKind::Generic,
                        is_retryable: false,
                        is_internal: true,
                        message: format!("the children's results could not be combined: {err}"),
                    }),
                    ..Default::default()
                };
                if self.storage.update_task_executions(&guard, &update).await? > 0 {
                    self.count_parent_finalized(&parent);
                }
            }
        }
        if !parents_empty {
            // Finished parents are closed next.
            self.wake_close.notify_one();
        }
        Ok(full)
    }

    fn count_parent_finalized(&self, parent: &TaskExecution) {
        self.metrics
            .task(&parent.queue, &parent.task_id)
            .parents_finalized
            .increment(1);
    }

    /// Moves a parent whose children all finished on; returns whether it did (false: the
    /// parent changed meanwhile).
    #[tracing::instrument(skip_all, fields(execution_id = %parent.execution_id))]
    async fn process_parent(&self, parent: &TaskExecution) -> Result<bool> {
        let guard = TaskExecutionGuard::id(parent.execution_id.clone())
            .status(TaskExecutionStatus::WaitingForChildren)
            .fencing_token(parent.fencing_token);
        let now = self.now();
        let children = self
            .storage
            .get_finished_child_task_executions(&parent.execution_id)
            .await?;
        if let Some(failed) = children
            .iter()
            .find(|c| c.status != TaskExecutionStatus::Completed)
        {
            let cause = failed
                .error
                .as_ref()
                .map_or("no error recorded", |e| e.message.as_str());
            let update = TaskExecutionUpdate {
                now,
                status: Some(TaskExecutionStatus::ChildrenFailed),
                error: Some(ExecutionError::generic(
                    format!(
                        "child task {} with execution id {} finished as {}: {cause}",
                        failed.child_task_id, failed.child_execution_id, failed.status
                    ),
                    false,
                )),
                ..Default::default()
            };
            return Ok(self.storage.update_task_executions(&guard, &update).await? > 0);
        }
        let mut outputs = Vec::with_capacity(children.len());
        for child in children {
            let output = match &child.output {
                Some(raw) => serde_json::from_str(raw)?,
                None => Value::Null,
            };
            outputs.push(ChildOutput {
                index: child.index,
                task_id: child.child_task_id,
                execution_id: child.child_execution_id,
                output,
            });
        }
        let run_output: Value = match &parent.run_output {
            Some(raw) => serde_json::from_str(raw)?,
            None => Value::Null,
        };
        let combined = serde_json::to_string(&ParentTaskOutput {
            output: run_output,
            children: outputs,
        })?;
        let Some(spec) = self.task(&parent.task_id) else {
            let update = self.failure_update(
                parent,
                &TaskError::fatal(format!("task `{}` is not registered", parent.task_id)),
                ExecutionErrorKind::NotFound,
                now,
            );
            return Ok(self.storage.update_task_executions(&guard, &update).await? > 0);
        };
        match &spec.finalize {
            Some(finalize) => {
                self.spawn_finalize(parent, &guard, finalize, combined, now)
                    .await
            }
            None => {
                let update = TaskExecutionUpdate {
                    now,
                    status: Some(TaskExecutionStatus::Completed),
                    output: Some(combined),
                    clear_error: true,
                    ..Default::default()
                };
                Ok(self.storage.update_task_executions(&guard, &update).await? > 0)
            }
        }
    }

    /// One iteration of the schedules loop: fires the due schedules of the tasks registered
    /// here; true when the batch was full.
    async fn fire_schedules(self: Arc<Self>) -> Result<bool> {
        let limit = self.options.background_batch_size;
        let now = self.now();
        let mut task_ids: Vec<String> = self
            .tasks
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        task_ids.sort_unstable();
        let due = self
            .storage
            .due_task_schedules(now, Some(&task_ids), limit)
            .await?;
        let mut fired = false;
        for schedule in &due {
            // One schedule that cannot fire must not hold up the others.
            match self.fire_schedule(schedule, now).await {
                Ok(won) => fired |= won,
                Err(err) => {
                    tracing::warn!(schedule_id = %schedule.schedule_id, error = %err, "firing a schedule failed");
                }
            }
        }
        if fired {
            self.wake_claim.notify_one();
        }
        Ok(u64::try_from(due.len()).unwrap_or(u64::MAX) >= limit)
    }

    /// Enqueues the due ticks of `schedule` if no other executor did first; returns whether
    /// this one did.
    #[tracing::instrument(skip_all, fields(schedule_id = %schedule.schedule_id))]
    async fn fire_schedule(&self, schedule: &TaskSchedule, now: i64) -> Result<bool> {
        let Some(spec) = self.task(&schedule.task_id) else {
            return Ok(false);
        };
        let ticks = Ticks::parse(&schedule.spec)?;
        let (due, next) = ticks.due(schedule.next_tick_at, now, schedule.missed_ticks)?;
        let Some(&last) = due.last() else {
            return Ok(false);
        };
        let executions = due
            .iter()
            .map(|tick| NewTaskExecution {
                execution_id: tick_execution_id(&schedule.schedule_id, *tick),
                ..new_execution(&spec, schedule.input.clone(), None, None)
            })
            .collect();
        let mut fire = ScheduleFire {
            schedule_id: schedule.schedule_id.clone(),
            expected_next_tick_at: schedule.next_tick_at,
            new_next_tick_at: next,
            last_tick_at: last,
            executions,
            now,
        };
        match self.storage.fire_task_schedule(&fire).await {
            Err(Error::Conflict { .. }) => {
                // Some of these ticks were enqueued already (the schedule was deleted and saved
                // again): enqueue the others, and move on.
                let ids = fire
                    .executions
                    .iter()
                    .map(|e| e.execution_id.clone())
                    .collect();
                let existing: Vec<String> = self
                    .storage
                    .get_task_executions(&TaskExecutionFilter {
                        execution_ids: Some(ids),
                        ..TaskExecutionFilter::default()
                    })
                    .await?
                    .into_iter()
                    .map(|e| e.execution_id)
                    .collect();
                fire.executions
                    .retain(|e| !existing.contains(&e.execution_id));
                self.storage.fire_task_schedule(&fire).await
            }
            other => other,
        }
    }

    /// One iteration of the close loop.
    async fn close_finished(self: Arc<Self>) -> Result<bool> {
        let limit = self.options.background_batch_size;
        let closed = self
            .storage
            .close_finished_task_executions(self.now(), limit)
            .await?;
        if closed > 0 {
            self.wake_parents.notify_one();
            // Closing can finish parents (through their finalize) and cancel children.
            self.wake_close.notify_one();
        }
        Ok(closed >= limit)
    }

    /// Measures this executor's clock against the storage's when due ([`SKEW_INTERVAL`]),
    /// and warns when they are further apart than a quarter of the lease margin.
    async fn measure_clock_skew(&self) -> Result<()> {
        {
            let mut measured = self
                .skew_measured
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if measured.is_some_and(|at| at.elapsed() < SKEW_INTERVAL) {
                return Ok(());
            }
            *measured = Some(std::time::Instant::now());
        }
        let before = self.now();
        let Some(database) = self.storage.database_time_ms().await? else {
            return Ok(());
        };
        let after = self.now();
        // The server read its clock somewhere in the round trip: compare with the middle.
        let local = before.saturating_add(after.saturating_sub(before) / 2);
        let skew = local.saturating_sub(database);
        self.clock_skew_ms.store(skew, Ordering::SeqCst);
        let tolerance = millis(self.options.lease_margin) / 4;
        if skew.saturating_abs() > tolerance {
            tracing::warn!(
                skew_ms = skew,
                tolerance_ms = tolerance,
                "this executor's clock is far from the database's; leases of executions may lapse early or late"
            );
        }
        Ok(())
    }

    /// Deletes what `retention` no longer keeps; see [`Executor::prune`].
    async fn prune(&self, retention: &Retention) -> Result<u64> {
        let batch = retention.batch_size.max(1);
        let mut deleted = 0;
        for (age, statuses) in retention.ages() {
            let Some(age) = age else { continue };
            let before = self.now().saturating_sub(millis(age));
            loop {
                let n = self
                    .storage
                    .prune_task_executions(statuses, before, batch)
                    .await?;
                deleted += n;
                if n < batch || self.shutdown.is_cancelled() {
                    break;
                }
            }
        }
        if deleted > 0 {
            tracing::info!(deleted, "pruned finished executions");
        }
        Ok(deleted)
    }

    /// Prunes when [`ExecutorOptions::retention`] asks for it and its interval passed.
    async fn prune_when_due(&self) -> Result<()> {
        let Some(retention) = &self.options.retention else {
            return Ok(());
        };
        if !due(&self.pruned, retention.interval) {
            return Ok(());
        }
        self.prune(retention).await.map(|_| ())
    }

    /// Sets the queue-depth gauges from one count of the unfinished executions, when
    /// [`ExecutorOptions::queue_depth_interval`] has passed since the last sample.
    async fn sample_queue_depth(&self) -> Result<()> {
        let Some(interval) = self.options.queue_depth_interval else {
            return Ok(());
        };
        if !due(&self.depth_sampled, interval) {
            return Ok(());
        }
        let counts = self
            .storage
            .count_task_executions(&TaskExecutionStatus::ACTIVE, QUEUE_DEPTH_SERIES)
            .await?;
        self.metrics.queue_depth(&counts);
        Ok(())
    }

    /// One iteration of the expire loop.
    async fn expire(self: Arc<Self>) -> Result<bool> {
        if let Err(err) = self.measure_clock_skew().await {
            tracing::debug!(error = %err, "measuring the clock skew failed");
        }
        if let Err(err) = self.prune_when_due().await {
            tracing::warn!(error = %err, "pruning finished executions failed");
        }
        if let Err(err) = self.sample_queue_depth().await {
            tracing::debug!(error = %err, "sampling the queue depth failed");
        }
        let limit = self.options.background_batch_size;
        let expired = self
            .storage
            .expire_task_executions(self.now(), limit)
            .await?;
        if expired > 0 {
            self.metrics.expired(expired);
            tracing::warn!(expired, "recovered executions whose lease lapsed");
            self.wake_claim.notify_one();
        }
        Ok(expired >= limit)
    }

    /// One iteration of the cancel loop: stops the local runs of cancelled executions, then
    /// acknowledges the requests it acted on. A request for an execution whose run is not
    /// registered yet (its claim's reply still on the way) is left for the next iteration; one
    /// for an execution no longer running here is acknowledged as stale.
    async fn take_cancellations(self: Arc<Self>) -> Result<bool> {
        if self.running().is_empty() {
            return Ok(false);
        }
        let limit = self.options.background_batch_size;
        let epoch = self.claim_epoch.load(Ordering::SeqCst);
        let ids = self.storage.cancellation_requests(&self.id, limit).await?;
        if ids.is_empty() {
            return Ok(false);
        }
        let full = u64::try_from(ids.len()).unwrap_or(u64::MAX) >= limit;
        let mut acted = Vec::with_capacity(ids.len());
        {
            let running = self.running();
            let claims_settled =
                epoch.is_multiple_of(2) && self.claim_epoch.load(Ordering::SeqCst) == epoch;
            for id in ids {
                if let Some((_, token)) = running.get(&id) {
                    tracing::info!(execution_id = %id, "cancelling a running execution");
                    token.cancel();
                    acted.push(id);
                } else if claims_settled {
                    acted.push(id);
                }
            }
        }
        self.storage
            .acknowledge_cancellation_requests(&self.id, &acted, self.now())
            .await?;
        Ok(full && !acted.is_empty())
    }
}

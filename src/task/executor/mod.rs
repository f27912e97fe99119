//! The durable executor: runs registered tasks from a [`TaskExecutionStorage`] shared by any
//! number of executors.
//!
//! An executor runs up to seven background loops:
//! - **claim**: claims ready executions in batches up to its free capacity and runs each;
//! - **parents**: claims parents whose children all finished, and completes them, fails them or
//!   spawns their finalize execution;
//! - **close**: propagates finished executions to their parents and cancels the children of
//!   executions that did not complete (a storage may have done so already when it wrote the
//!   run's result, as the SeaORM storage does);
//! - **expire**: returns executions whose executor died (their lease lapsed) to `ready`;
//! - **prune** (with a [`Retention`]): deletes old finished executions, a batch at a time;
//! - **cancel**: stops local runs of executions that were cancelled;
//! - **schedules**: enqueues the due ticks of the periodic schedules of its tasks.
//!
//! A loop that found a full batch runs again at once; an idle loop sleeps its poll interval with
//! jitter, and is woken early by in-process events (an enqueue wakes the claim loop, a written
//! batch of results the close and parents loops, a close the parents loop). Errors back off
//! exponentially. Each iteration is a bounded step, and a panic in one (in the storage, a
//! driver, or here) is caught, logged, counted
//! ([`EXECUTOR_LOOP_PANICS`](crate::metric::EXECUTOR_LOOP_PANICS)) and backed off from like an
//! error: no loop dies.
//!
//! Every write a run makes is guarded by the fencing token of its claim: an execution whose
//! lease lapsed and was claimed again elsewhere cannot be overwritten by the old run.
//!
//! This module holds the [`Executor`] and its public API (registering, enqueueing, waking,
//! scheduling, handles); the rest lives beside it: `options` (the settings), `definition`
//! (tasks), `handle` (handles to executions), `writer` (the batched result writer), `loops`
//! (the loops and their chores), `run` (a run's lifecycle), `parent` (parents and finalize),
//! `enqueuer` (the spans runs follow from).

mod definition;
mod enqueuer;
mod handle;
mod lease;
mod loops;
mod options;
mod parent;
mod run;
mod writer;

use std::collections::{HashMap, HashSet};
use std::fmt;
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
pub use lease::MAX_PROGRESS_BYTES;
pub use options::{EnqueueOptions, ExecutorOptions, Retention};

use loops::{Loop, NO_SKEW};
use writer::{PendingWrite, write_batches};

use crate::clock::millis;
use definition::{RunOutcome, TaskSpec};
use enqueuer::EnqueueSpans;

use crate::dialect::{Backoff, jitter};
use crate::error::{Error, Result};
use crate::id::new_id;
use crate::metric::{ExecutorMetrics, TaskMetrics};
use crate::task::model::{
    ClaimParams, ExecutionError, ExecutionErrorKind, NewTaskExecution, ParentRef, TaskExecution,
    TaskExecutionGuard, TaskExecutionRef, TaskExecutionStatus, TaskExecutionUpdate, Wake,
    WakeOutcome, WakeResult,
};
use crate::task::storage::ScheduleFire;
use crate::task::storage::TaskExecutionStorage;
use crate::task::{
    Schedule, TaskExecutionFilter, TaskSchedule, Ticks, tick_execution_id, validate_schedule_id,
};

/// Runs durable tasks registered with it, from a storage shared by any number of executors.
///
/// It runs up to seven background loops: **claim** (claims ready executions in batches up to its free
/// capacity and runs each), **parents** (completes, fails or finalizes parents whose children
/// all finished), **close** (propagates finished executions to their parents and cancels the
/// children of executions that did not complete), **expire** (returns executions whose executor
/// died to `ready`, counting the attempt, and times out sleepers), **prune** (with a
/// [`Retention`]: deletes old finished executions, a batch at a time), **cancel** (stops local runs
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
    metrics: ExecutorMetrics,
    /// The tasks not registered here whose children this executor spawned, each warned about
    /// once.
    unregistered_children: Mutex<HashSet<String>>,
    /// The spans that enqueued executions in this process, for their runs to follow from.
    enqueuers: EnqueueSpans,
    wake_claim: Notify,
    /// Shared with the batch writer, which wakes the parents loop and the close loop once per
    /// written batch.
    wake_parents: Arc<Notify>,
    wake_close: Arc<Notify>,
    shutdown: CancellationToken,
    loops: Mutex<Vec<JoinHandle<()>>>,
    runs: TaskTracker,
    /// Guarded updates waiting to be written together; see [`write_batches`].
    writes: mpsc::UnboundedSender<PendingWrite>,
    /// The batch writer's end of `writes`, until [`Executor::start`] spawns it.
    pending_writes: Mutex<Option<mpsc::UnboundedReceiver<PendingWrite>>>,
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
                metrics,
                unregistered_children: Mutex::new(HashSet::new()),
                enqueuers: EnqueueSpans::default(),
                wake_claim: Notify::new(),
                wake_parents: Arc::new(Notify::new()),
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
    /// [`Error::InvalidArgument`] when another task is registered under the same id, when a
    /// task's id or options are out of their limits, or when the executor's own id
    /// ([`ExecutorOptions::executor_id`]) is (an executor with tasks stores it with every
    /// execution it claims, so it is checked before any claim).
    pub fn register<I, O>(&self, task: &TaskDefinition<I, O>) -> Result<()> {
        crate::task::validate_executor_id(&self.inner.id)?;
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
                [
                    Arc::clone(&inner.wake_close),
                    Arc::clone(&inner.wake_parents),
                ],
                inner.metrics.loop_panics("writer"),
            ));
        }
        loops.push(tokio::spawn(Arc::clone(inner).claim_loop()));
        for which in Loop::ALL {
            if (which == Loop::Prune && inner.options.retention.is_none())
                || (which == Loop::Sample && inner.options.queue_depth_interval.is_none())
            {
                continue;
            }
            loops.push(tokio::spawn(Arc::clone(inner).background_loop(which)));
        }
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
    /// further ahead than [`MAX_SLEEP_BEFORE_RUN`](crate::task::MAX_SLEEP_BEFORE_RUN); storage errors.
    pub async fn enqueue_with<I: Serialize, O: DeserializeOwned>(
        &self,
        task: &TaskDefinition<I, O>,
        input: &I,
        options: &EnqueueOptions,
    ) -> Result<TaskHandle<O>> {
        self.enqueue_one(None, task, input, options).await
    }

    /// Enqueues an execution of `task` with `input` inside the application's own SeaORM
    /// transaction `txn`: the execution exists if and only if that transaction commits (a
    /// transactional outbox). Goes through the storage's
    /// [`enqueue_task_executions_in_transaction`](TaskExecutionStorage::enqueue_task_executions_in_transaction),
    /// so the storage must keep its tables in the database `txn` belongs to.
    ///
    /// # Errors
    ///
    /// [`Error::Serialization`] when `input` does not serialize; [`Error::Unsupported`] from a
    /// storage that cannot join the transaction (the in-memory one); database errors.
    pub async fn enqueue_in<I, O>(
        &self,
        txn: &sea_orm::DatabaseTransaction,
        task: &TaskDefinition<I, O>,
        input: &I,
    ) -> Result<TaskHandle<O>>
    where
        I: Serialize,
        O: DeserializeOwned,
    {
        self.enqueue_in_with(txn, task, input, &EnqueueOptions::default())
            .await
    }

    /// [`enqueue_in`](Self::enqueue_in) with a delay or a run-at time, as
    /// [`enqueue_with`](Self::enqueue_with).
    ///
    /// # Errors
    ///
    /// As [`enqueue_with`](Self::enqueue_with) and [`enqueue_in`](Self::enqueue_in).
    pub async fn enqueue_in_with<I, O>(
        &self,
        txn: &sea_orm::DatabaseTransaction,
        task: &TaskDefinition<I, O>,
        input: &I,
        options: &EnqueueOptions,
    ) -> Result<TaskHandle<O>>
    where
        I: Serialize,
        O: DeserializeOwned,
    {
        self.enqueue_one(Some(txn), task, input, options).await
    }

    /// Enqueues one execution through the storage, in `txn` when given, then links its run to
    /// the current span and wakes the claim loop.
    async fn enqueue_one<I: Serialize, O: DeserializeOwned>(
        &self,
        txn: Option<&sea_orm::DatabaseTransaction>,
        task: &TaskDefinition<I, O>,
        input: &I,
        options: &EnqueueOptions,
    ) -> Result<TaskHandle<O>> {
        let now = self.inner.options.clock.now_ms();
        let execution = self.new_execution_with(task, input, options, now)?;
        let id = execution.execution_id.clone();
        let due_now = execution.sleep_before_run.is_zero();
        let storage = &self.inner.storage;
        match txn {
            Some(txn) => {
                storage
                    .enqueue_task_executions_in_transaction(txn, vec![execution], now)
                    .await?;
            }
            None => {
                // Repeated as it was (same id, same time) after a lost reply, so that the
                // storage recognizes its first attempt's row instead of calling it a conflict.
                Backoff::REPEAT
                    .retry("enqueue", || {
                        storage.enqueue_task_executions(vec![execution.clone()], now)
                    })
                    .await?
            }
        }
        if due_now {
            // Inside a transaction that rolls back, forgotten in time.
            self.inner.follow_from_current([id.as_str()]);
        }
        // Inside a transaction still open, the claim finds nothing yet and the regular poll
        // picks the execution up after the commit.
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
            now: crate::task::model::distinct_write_time(self.inner.options.clock.now_ms()),
        };
        // Repeated as it was after a lost reply: the storage then answers `Woken` from what
        // the first attempt left.
        let result = Backoff::REPEAT
            .retry("wake", || self.inner.storage.wake_task_execution(&wake))
            .await?;
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
    /// while no executor ran follow [`Schedule::missed_ticks`]. A bounded cron expression
    /// (`0 0 0 1 1 * 2027`) enqueues its last tick and then ends: its `next_tick_at` becomes
    /// `None`; saving one with no tick left after now stores it as ended.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a schedule id outside 1..=[`MAX_SCHEDULE_ID_LEN`](crate::task::MAX_SCHEDULE_ID_LEN)
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
        let schedule = TaskSchedule {
            schedule_id: schedule.id.clone(),
            task_id: task.spec.id.clone(),
            input: serde_json::to_string(input)?,
            spec: schedule.spec.clone(),
            missed_ticks: schedule.missed_ticks,
            next_tick_at: ticks.next_after(now)?,
            last_tick_at: None,
            created_at: now,
            updated_at: now,
        };
        // Saving is idempotent: a repeat after a lost reply finds the schedule as saved.
        Backoff::REPEAT
            .retry("schedule", || {
                self.inner.storage.save_task_schedule(schedule.clone())
            })
            .await
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
    pub fn clock_skew(&self) -> Option<crate::clock::ClockSkew> {
        match self.inner.clock_skew_ms.load(Ordering::SeqCst) {
            NO_SKEW => None,
            skew => Some(crate::clock::ClockSkew::from_millis(skew)),
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

    /// The ids of the tasks registered here, sorted: a stable order keeps the text of the
    /// statements they go into, and so their prepared statements, the same.
    fn task_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .tasks
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The tasks of `children` not registered here, each once, the ones warned about already
    /// left out.
    fn unregistered_tasks(&self, children: &[NewTaskExecution]) -> Vec<String> {
        let tasks = self
            .tasks
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let warned = self
            .unregistered_children
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut ids: Vec<String> = children
            .iter()
            .map(|c| &c.task_id)
            .filter(|id| !tasks.contains_key(*id) && !warned.contains(*id))
            .cloned()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Warns once per task about children of `tasks` (not registered here) that `parent`
    /// spawned: unless another executor registers the task, they are never claimed and the
    /// parent waits for ever. Their wait shows in the oldest-ready gauge and in `stats`.
    fn warn_unregistered_children(&self, parent: &str, tasks: Vec<String>) {
        let mut warned = self
            .unregistered_children
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for task_id in tasks {
            if warned.insert(task_id.clone()) {
                tracing::warn!(
                    task_id = %task_id,
                    parent_execution_id = %parent,
                    "spawned children of a task not registered on this executor: unless another \
                     executor registers it, they are never claimed and their parent waits for ever"
                );
            }
        }
    }

    fn task(&self, id: &str) -> Option<Arc<TaskSpec>> {
        self.tasks
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, (i64, CancellationToken)>> {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

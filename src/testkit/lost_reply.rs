//! A storage that loses replies ([`LoseReplies`]): it runs each call on the storage it wraps
//! and then, when told to, answers a write with the retryable error of a connection that broke
//! after the commit, as if the reply had been lost on the way. It wraps any
//! [`TaskExecutionStorage`] or [`DistributedStateStore`], so the lost-reply cases of the
//! conformance suites (and a third party's own tests of its callers) run on storages that no
//! network proxy can stand in front of: in memory, SQLite, or one of its own.
//!
//! What a caller then does is the point: it repeats the call with the same arguments (the
//! stores' and the executor's own retries do), and the repeat must answer the true outcome of
//! the first attempt, or be a harmless no-op where the port says so. Each port method's docs
//! say which.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use crate::batch::store::{
    BatchOutcome, BatchReservation, ClaimBatchResult, DistributedStateStore, RecordFilter,
    RecordOutcome, StateStore,
};
use crate::batch::{
    BatchState, DistributedJobStatus, JobProgress, JobState, ProcessedRecord, RequeuedRecords,
};
use crate::error::{Error, Result};
use crate::task::storage::{
    ClaimParams, FinishedChildTaskExecution, NewTaskExecution, ScheduleFire, TaskExecutionGuard,
    TaskExecutionStorage, TaskExecutionUpdate, Wake,
};
use crate::task::{
    TaskExecution, TaskExecutionCount, TaskExecutionFilter, TaskExecutionStatus, TaskSchedule,
    WakeResult,
};

/// Which write's reply is lost next.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Armed {
    /// The next write that succeeds, whichever it is.
    Any,
    /// The next successful call of the port method of this name.
    Named(String),
    /// The successful write of this number (1 for the first this wrapper answered).
    Number(u32),
}

/// The state of a [`LoseReplies`]: what to lose next, and what was lost.
#[derive(Debug, Default)]
struct Lost {
    armed: Mutex<Option<Armed>>,
    count: AtomicU32,
    /// Successful writes so far, lost or not.
    writes: AtomicU32,
    /// The port methods whose replies were lost, in order.
    operations: Mutex<Vec<&'static str>>,
}

impl Lost {
    /// `answer`, or in its place the error of a lost reply when `operation` is armed and the
    /// inner call succeeded (took effect: a failed call committed nothing to lose).
    fn answer<T>(&self, operation: &'static str, answer: Result<T>) -> Result<T> {
        let value = answer?;
        let number = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        let mut armed = self
            .armed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let hit = match armed.as_ref() {
            Some(Armed::Any) => true,
            Some(Armed::Named(name)) => name == operation,
            Some(Armed::Number(n)) => *n == number,
            None => false,
        };
        if !hit {
            return Ok(value);
        }
        *armed = None;
        self.count.fetch_add(1, Ordering::SeqCst);
        self.operations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(operation);
        tracing::debug!(operation, "losing the reply of a write that took effect");
        Err(lost_reply_error())
    }

    fn arm(&self, armed: Armed) {
        *self
            .armed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(armed);
    }
}

/// The error a caller sees when the reply of a committed write was lost: the connection
/// closed, which is retryable ([`Error::is_retryable`]).
pub fn lost_reply_error() -> Error {
    Error::from(sea_orm::DbErr::ConnectionAcquire(
        sea_orm::ConnAcquireErr::ConnectionClosed,
    ))
}

/// A storage (`S` is an `Arc` of a task storage or a batch store) that loses the reply of a
/// write when told to: the write takes effect on the inner storage, and the caller gets
/// [`lost_reply_error`] instead of its answer. Reads always answer.
///
/// ```
/// # async fn demo() -> sea_orm_durable::Result<()> {
/// use std::sync::Arc;
/// use sea_orm_durable::task::InMemoryTaskExecutionStorage;
/// use sea_orm_durable::task::storage::TaskExecutionStorage;
/// use sea_orm_durable::testkit::lost_reply::LoseReplies;
///
/// let storage = LoseReplies::new(Arc::new(InMemoryTaskExecutionStorage::new()));
/// storage.lose_next("expire_task_executions");
/// let lost = storage.expire_task_executions(0, 10).await;
/// assert!(lost.is_err_and(|e| e.is_retryable()));
/// assert_eq!(storage.lost(), 1);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct LoseReplies<S> {
    inner: S,
    lost: Arc<Lost>,
}

impl<S> LoseReplies<S> {
    /// Wraps `inner`; nothing is lost until [`lose_next`](Self::lose_next) or
    /// [`lose_next_write`](Self::lose_next_write) says so.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            lost: Arc::new(Lost::default()),
        }
    }

    /// The wrapped storage, to call without losing anything.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Loses the reply of the next successful call of the port method named `operation`
    /// (`"retry_task_execution"`, `"requeue_failed_records"`, ...). Replaces what was armed.
    pub fn lose_next(&self, operation: &str) {
        self.lost.arm(Armed::Named(operation.to_owned()));
    }

    /// Loses the reply of the next successful write, whichever it is.
    pub fn lose_next_write(&self) {
        self.lost.arm(Armed::Any);
    }

    /// Loses the reply of the successful write of number `number`, counted from 1 over every
    /// write this wrapper (and its clones) answered; a sweep loses each write of a scenario in
    /// turn, up to the number [`writes`](Self::writes) counted in a run that lost nothing.
    /// Replaces what was armed.
    pub fn lose_write_number(&self, number: u32) {
        self.lost.arm(Armed::Number(number));
    }

    /// How many replies were lost so far.
    pub fn lost(&self) -> u32 {
        self.lost.count.load(Ordering::SeqCst)
    }

    /// How many writes succeeded on the inner storage so far, their replies lost or not.
    pub fn writes(&self) -> u32 {
        self.lost.writes.load(Ordering::SeqCst)
    }

    /// The port methods whose replies were lost so far, in order.
    pub fn lost_operations(&self) -> Vec<&'static str> {
        self.lost
            .operations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[async_trait]
impl<S: TaskExecutionStorage + ?Sized> TaskExecutionStorage for LoseReplies<Arc<S>> {
    async fn enqueue_task_executions(
        &self,
        executions: Vec<NewTaskExecution>,
        now: i64,
    ) -> Result<()> {
        let answer = self.inner.enqueue_task_executions(executions, now).await;
        self.lost.answer("enqueue_task_executions", answer)
    }

    async fn retry_task_execution(&self, execution_id: &str, now: i64) -> Result<TaskExecution> {
        let answer = self.inner.retry_task_execution(execution_id, now).await;
        self.lost.answer("retry_task_execution", answer)
    }

    async fn pause_task_queue(&self, queue: &str, now: i64) -> Result<crate::task::PausedQueue> {
        let answer = self.inner.pause_task_queue(queue, now).await;
        self.lost.answer("pause_task_queue", answer)
    }

    async fn resume_task_queue(&self, queue: &str) -> Result<bool> {
        let answer = self.inner.resume_task_queue(queue).await;
        self.lost.answer("resume_task_queue", answer)
    }

    async fn paused_task_queues(&self) -> Result<Vec<crate::task::PausedQueue>> {
        self.inner.paused_task_queues().await
    }

    async fn claim_task_executions(&self, params: &ClaimParams) -> Result<Vec<TaskExecution>> {
        let answer = self.inner.claim_task_executions(params).await;
        self.lost.answer("claim_task_executions", answer)
    }

    async fn update_task_executions(
        &self,
        guard: &TaskExecutionGuard,
        update: &TaskExecutionUpdate,
    ) -> Result<u64> {
        let answer = self.inner.update_task_executions(guard, update).await;
        self.lost.answer("update_task_executions", answer)
    }

    async fn update_task_executions_many(
        &self,
        updates: &[(TaskExecutionGuard, TaskExecutionUpdate)],
    ) -> Result<Vec<u64>> {
        let answer = self.inner.update_task_executions_many(updates).await;
        self.lost.answer("update_task_executions_many", answer)
    }

    async fn update_task_execution_and_enqueue(
        &self,
        guard: &TaskExecutionGuard,
        update: &TaskExecutionUpdate,
        children: Vec<NewTaskExecution>,
    ) -> Result<bool> {
        let answer = self
            .inner
            .update_task_execution_and_enqueue(guard, update, children)
            .await;
        self.lost
            .answer("update_task_execution_and_enqueue", answer)
    }

    async fn add_finished_child_task_executions(
        &self,
        children: Vec<FinishedChildTaskExecution>,
    ) -> Result<()> {
        let answer = self
            .inner
            .add_finished_child_task_executions(children)
            .await;
        self.lost
            .answer("add_finished_child_task_executions", answer)
    }

    async fn expire_task_executions(&self, now: i64, limit: u64) -> Result<u64> {
        let answer = self.inner.expire_task_executions(now, limit).await;
        self.lost.answer("expire_task_executions", answer)
    }

    async fn claim_parents_with_finished_children(
        &self,
        params: &ClaimParams,
    ) -> Result<Vec<TaskExecution>> {
        let answer = self
            .inner
            .claim_parents_with_finished_children(params)
            .await;
        self.lost
            .answer("claim_parents_with_finished_children", answer)
    }

    async fn close_finished_task_executions(&self, now: i64, limit: u64) -> Result<u64> {
        let answer = self.inner.close_finished_task_executions(now, limit).await;
        self.lost.answer("close_finished_task_executions", answer)
    }

    async fn acknowledge_cancellation_requests(
        &self,
        executor_id: &str,
        execution_ids: &[String],
        now: i64,
    ) -> Result<u64> {
        let answer = self
            .inner
            .acknowledge_cancellation_requests(executor_id, execution_ids, now)
            .await;
        self.lost
            .answer("acknowledge_cancellation_requests", answer)
    }

    async fn prune_task_executions(
        &self,
        statuses: &[TaskExecutionStatus],
        finished_before: i64,
        limit: u64,
    ) -> Result<u64> {
        let answer = self
            .inner
            .prune_task_executions(statuses, finished_before, limit)
            .await;
        self.lost.answer("prune_task_executions", answer)
    }

    async fn wake_task_execution(&self, wake: &Wake) -> Result<WakeResult> {
        let answer = self.inner.wake_task_execution(wake).await;
        self.lost.answer("wake_task_execution", answer)
    }

    async fn save_task_schedule(&self, schedule: TaskSchedule) -> Result<TaskSchedule> {
        let answer = self.inner.save_task_schedule(schedule).await;
        self.lost.answer("save_task_schedule", answer)
    }

    async fn delete_task_schedule(&self, schedule_id: &str) -> Result<bool> {
        let answer = self.inner.delete_task_schedule(schedule_id).await;
        self.lost.answer("delete_task_schedule", answer)
    }

    async fn fire_task_schedule(&self, fire: &ScheduleFire) -> Result<bool> {
        let answer = self.inner.fire_task_schedule(fire).await;
        self.lost.answer("fire_task_schedule", answer)
    }

    async fn get_task_execution(&self, execution_id: &str) -> Result<Option<TaskExecution>> {
        self.inner.get_task_execution(execution_id).await
    }

    async fn get_task_executions(
        &self,
        filter: &TaskExecutionFilter,
    ) -> Result<Vec<TaskExecution>> {
        self.inner.get_task_executions(filter).await
    }

    async fn count_task_executions(
        &self,
        statuses: &[TaskExecutionStatus],
        limit: u64,
    ) -> Result<Vec<TaskExecutionCount>> {
        self.inner.count_task_executions(statuses, limit).await
    }

    async fn ready_task_executions(
        &self,
        now: i64,
        limit: u64,
    ) -> Result<Vec<crate::task::ReadyTaskExecutions>> {
        self.inner.ready_task_executions(now, limit).await
    }

    async fn get_finished_child_task_executions(
        &self,
        parent_execution_id: &str,
    ) -> Result<Vec<FinishedChildTaskExecution>> {
        self.inner
            .get_finished_child_task_executions(parent_execution_id)
            .await
    }

    async fn cancellation_requests(&self, executor_id: &str, limit: u64) -> Result<Vec<String>> {
        self.inner.cancellation_requests(executor_id, limit).await
    }

    async fn get_task_schedules(&self) -> Result<Vec<TaskSchedule>> {
        self.inner.get_task_schedules().await
    }

    async fn due_task_schedules(
        &self,
        now: i64,
        task_ids: Option<&[String]>,
        limit: u64,
    ) -> Result<Vec<TaskSchedule>> {
        self.inner.due_task_schedules(now, task_ids, limit).await
    }

    async fn database_time_ms(&self) -> Result<Option<i64>> {
        self.inner.database_time_ms().await
    }

    async fn enqueue_task_executions_in_transaction(
        &self,
        txn: &sea_orm::DatabaseTransaction,
        executions: Vec<NewTaskExecution>,
        now: i64,
    ) -> Result<()> {
        // The application's transaction: its commit, and the loss of its reply, are the
        // application's.
        self.inner
            .enqueue_task_executions_in_transaction(txn, executions, now)
            .await
    }
}

#[async_trait]
impl<S: DistributedStateStore + ?Sized> StateStore for LoseReplies<Arc<S>> {
    async fn save_job_state(&self, job: &JobState) -> Result<()> {
        let answer = self.inner.save_job_state(job).await;
        self.lost.answer("save_job_state", answer)
    }

    async fn reset_job_state(&self, job: &JobState) -> Result<()> {
        let answer = self.inner.reset_job_state(job).await;
        self.lost.answer("reset_job_state", answer)
    }

    async fn update_batch_state(
        &self,
        job_id: &str,
        batch_id: &str,
        state: &BatchState,
    ) -> Result<()> {
        let answer = self.inner.update_batch_state(job_id, batch_id, state).await;
        self.lost.answer("update_batch_state", answer)
    }

    async fn save_processed_records(
        &self,
        job_id: &str,
        batch_id: &str,
        records: &[ProcessedRecord],
    ) -> Result<()> {
        let answer = self
            .inner
            .save_processed_records(job_id, batch_id, records)
            .await;
        self.lost.answer("save_processed_records", answer)
    }

    async fn reset_records(
        &self,
        job_id: &str,
        batch_id: &str,
        records: &[ProcessedRecord],
    ) -> Result<()> {
        let answer = self.inner.reset_records(job_id, batch_id, records).await;
        self.lost.answer("reset_records", answer)
    }

    async fn prune_finished_jobs(&self, finished_before: i64, limit: u64) -> Result<u64> {
        let answer = self.inner.prune_finished_jobs(finished_before, limit).await;
        self.lost.answer("prune_finished_jobs", answer)
    }

    async fn get_job_state(&self, job_id: &str) -> Result<Option<JobState>> {
        self.inner.get_job_state(job_id).await
    }

    async fn get_job_without_batches(&self, job_id: &str) -> Result<Option<JobState>> {
        self.inner.get_job_without_batches(job_id).await
    }

    async fn get_records(
        &self,
        job_id: &str,
        filter: &RecordFilter,
    ) -> Result<Vec<ProcessedRecord>> {
        self.inner.get_records(job_id, filter).await
    }

    async fn get_progress(&self, job_id: &str) -> Result<JobProgress> {
        self.inner.get_progress(job_id).await
    }
}

#[async_trait]
impl<S: DistributedStateStore + ?Sized> DistributedStateStore for LoseReplies<Arc<S>> {
    async fn create_job(&self, job: &JobState) -> Result<bool> {
        let answer = self.inner.create_job(job).await;
        self.lost.answer("create_job", answer)
    }

    async fn start_job(&self, job: &JobState) -> Result<bool> {
        let answer = self.inner.start_job(job).await;
        self.lost.answer("start_job", answer)
    }

    async fn claim_batch_with_id(
        &self,
        job_id: &str,
        worker_id: &str,
        claim_id: &str,
    ) -> Result<ClaimBatchResult> {
        let answer = self
            .inner
            .claim_batch_with_id(job_id, worker_id, claim_id)
            .await;
        self.lost.answer("claim_batch_with_id", answer)
    }

    async fn release_batch(&self, reservation: &BatchReservation) -> Result<bool> {
        let answer = self.inner.release_batch(reservation).await;
        self.lost.answer("release_batch", answer)
    }

    async fn reclaim_stale_batches(&self, job_id: &str, timeout: Duration) -> Result<u64> {
        let answer = self.inner.reclaim_stale_batches(job_id, timeout).await;
        self.lost.answer("reclaim_stale_batches", answer)
    }

    async fn save_batch_records(
        &self,
        job_id: &str,
        batch_id: &str,
        records: &[ProcessedRecord],
    ) -> Result<()> {
        let answer = self
            .inner
            .save_batch_records(job_id, batch_id, records)
            .await;
        self.lost.answer("save_batch_records", answer)
    }

    async fn try_finalize_job_with_id(&self, job_id: &str, finalizer_id: &str) -> Result<bool> {
        let answer = self
            .inner
            .try_finalize_job_with_id(job_id, finalizer_id)
            .await;
        self.lost.answer("try_finalize_job_with_id", answer)
    }

    async fn requeue_failed_records(&self, job_id: &str) -> Result<RequeuedRecords> {
        let answer = self.inner.requeue_failed_records(job_id).await;
        self.lost.answer("requeue_failed_records", answer)
    }

    async fn complete_batch(
        &self,
        reservation: &BatchReservation,
        outcome: BatchOutcome,
    ) -> Result<bool> {
        let answer = self.inner.complete_batch(reservation, outcome).await;
        self.lost.answer("complete_batch", answer)
    }

    async fn heartbeat_batch(&self, reservation: &BatchReservation) -> Result<bool> {
        let answer = self.inner.heartbeat_batch(reservation).await;
        self.lost.answer("heartbeat_batch", answer)
    }

    async fn save_record_outcomes(
        &self,
        job_id: &str,
        batch_id: &str,
        outcomes: &[RecordOutcome],
    ) -> Result<u64> {
        let answer = self
            .inner
            .save_record_outcomes(job_id, batch_id, outcomes)
            .await;
        self.lost.answer("save_record_outcomes", answer)
    }

    async fn complete_batch_with_outcomes(
        &self,
        reservation: &BatchReservation,
        outcome: BatchOutcome,
        outcomes: &[RecordOutcome],
    ) -> Result<bool> {
        let answer = self
            .inner
            .complete_batch_with_outcomes(reservation, outcome, outcomes)
            .await;
        self.lost.answer("complete_batch_with_outcomes", answer)
    }

    async fn get_batch_records(
        &self,
        job_id: &str,
        batch_id: &str,
    ) -> Result<Vec<ProcessedRecord>> {
        self.inner.get_batch_records(job_id, batch_id).await
    }

    async fn get_distributed_status(&self, job_id: &str) -> Result<DistributedJobStatus> {
        self.inner.get_distributed_status(job_id).await
    }
}

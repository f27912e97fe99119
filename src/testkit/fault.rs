//! Stores that misbehave on purpose, for testing what runs on top of them: a
//! [`TaskExecutionStorage`] ([`PanickingStorage`]) and a [`DistributedStateStore`]
//! ([`PanickingStateStore`]) that delegate every call to an inner store, and panic on (or delay)
//! the calls of chosen methods, as a storage, a driver or a bug below the runner would.
//!
//! ```
//! # async fn example() -> sea_orm_durable::Result<()> {
//! use std::sync::Arc;
//! use sea_orm_durable::task::InMemoryTaskExecutionStorage;
//! use sea_orm_durable::testkit::fault::{Faults, PanickingStorage};
//!
//! let faults = Faults::new().panic_on("expire_task_executions", 2);
//! let storage = PanickingStorage::new(Arc::new(InMemoryTaskExecutionStorage::new()), faults.clone());
//! // ... run an executor over `storage`; then:
//! assert!(faults.panicked("expire_task_executions") <= 2);
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::batch::model::{
    BatchState, DistributedJobStatus, JobProgress, JobState, ProcessedRecord, RequeuedRecords,
};
use crate::batch::store::{
    BatchOutcome, BatchReservation, ClaimBatchResult, DistributedStateStore, RecordFilter,
    RecordOutcome, StateStore,
};
use crate::error::Result;
use crate::task::storage::{
    ClaimParams, FinishedChildTaskExecution, NewTaskExecution, ScheduleFire, TaskExecutionGuard,
    TaskExecutionStorage, TaskExecutionUpdate, Wake,
};
use crate::task::{
    TaskExecution, TaskExecutionCount, TaskExecutionFilter, TaskExecutionStatus, TaskSchedule,
    WakeResult,
};

/// Which calls of a faulty store panic or are delayed, and how many calls each method got.
/// Methods are named as in their trait (`"claim_task_executions"`). Cloning shares the state,
/// so a test keeps a clone to read the counts while the store is in use.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    state: Arc<Mutex<FaultState>>,
}

#[derive(Debug, Default)]
struct FaultState {
    /// Method → how many of its next calls still panic.
    panics_left: HashMap<&'static str, u32>,
    /// Method → how long each of its calls waits before it is delegated.
    delays: HashMap<&'static str, Duration>,
    /// Method → calls so far (those that panicked included).
    calls: HashMap<&'static str, u64>,
    /// Method → calls that panicked.
    panicked: HashMap<&'static str, u64>,
}

impl Faults {
    /// No faults: every call is delegated.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next `times` calls of `method` panic (before reaching the inner store).
    #[must_use]
    pub fn panic_on(self, method: &'static str, times: u32) -> Self {
        self.lock().panics_left.insert(method, times);
        self
    }

    /// Every call of `method` waits `delay` before it is delegated (a slow statement).
    #[must_use]
    pub fn delay(self, method: &'static str, delay: Duration) -> Self {
        self.lock().delays.insert(method, delay);
        self
    }

    /// How many calls `method` got so far, those that panicked included.
    pub fn calls(&self, method: &str) -> u64 {
        self.lock().calls.get(method).copied().unwrap_or(0)
    }

    /// How many calls of `method` panicked so far.
    pub fn panicked(&self, method: &str) -> u64 {
        self.lock().panicked.get(method).copied().unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FaultState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a call of `method`, waits its delay, and panics when it is one of those chosen.
    async fn enter(&self, method: &'static str) {
        let (panic, delay) =
            {
                let mut state = self.lock();
                *state.calls.entry(method).or_default() += 1;
                let panic = state.panics_left.get_mut(method).is_some_and(|left| {
                    match left.checked_sub(1) {
                        Some(rest) => {
                            *left = rest;
                            true
                        }
                        None => false,
                    }
                });
                if panic {
                    *state.panicked.entry(method).or_default() += 1;
                }
                (panic, state.delays.get(method).copied())
            };
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        // The lock is released: the panic poisons nothing a later call needs.
        if panic {
            panic!("injected panic in {method}");
        }
    }
}

/// A [`TaskExecutionStorage`] that delegates to `inner`, except for the calls its [`Faults`]
/// choose to panic on or delay.
#[derive(Clone)]
pub struct PanickingStorage {
    inner: Arc<dyn TaskExecutionStorage>,
    faults: Faults,
}

impl PanickingStorage {
    /// Delegates to `inner` under `faults`.
    pub fn new(inner: Arc<dyn TaskExecutionStorage>, faults: Faults) -> Self {
        Self { inner, faults }
    }
}

#[async_trait]
impl TaskExecutionStorage for PanickingStorage {
    async fn enqueue_task_executions(
        &self,
        executions: Vec<NewTaskExecution>,
        now: i64,
    ) -> Result<()> {
        self.faults.enter("enqueue_task_executions").await;
        self.inner.enqueue_task_executions(executions, now).await
    }
    async fn enqueue_task_executions_in_transaction(
        &self,
        txn: &sea_orm::DatabaseTransaction,
        executions: Vec<NewTaskExecution>,
        now: i64,
    ) -> Result<()> {
        self.faults
            .enter("enqueue_task_executions_in_transaction")
            .await;
        self.inner
            .enqueue_task_executions_in_transaction(txn, executions, now)
            .await
    }
    async fn get_task_execution(&self, execution_id: &str) -> Result<Option<TaskExecution>> {
        self.faults.enter("get_task_execution").await;
        self.inner.get_task_execution(execution_id).await
    }
    async fn get_task_executions(
        &self,
        filter: &TaskExecutionFilter,
    ) -> Result<Vec<TaskExecution>> {
        self.faults.enter("get_task_executions").await;
        self.inner.get_task_executions(filter).await
    }
    async fn count_task_executions(
        &self,
        statuses: &[TaskExecutionStatus],
        limit: u64,
    ) -> Result<Vec<TaskExecutionCount>> {
        self.faults.enter("count_task_executions").await;
        self.inner.count_task_executions(statuses, limit).await
    }
    async fn ready_task_executions(
        &self,
        now: i64,
        limit: u64,
    ) -> Result<Vec<crate::task::ReadyTaskExecutions>> {
        self.faults.enter("ready_task_executions").await;
        self.inner.ready_task_executions(now, limit).await
    }
    async fn retry_task_execution(&self, execution_id: &str, now: i64) -> Result<TaskExecution> {
        self.faults.enter("retry_task_execution").await;
        self.inner.retry_task_execution(execution_id, now).await
    }
    async fn pause_task_queue(&self, queue: &str, now: i64) -> Result<crate::task::PausedQueue> {
        self.faults.enter("pause_task_queue").await;
        self.inner.pause_task_queue(queue, now).await
    }
    async fn resume_task_queue(&self, queue: &str) -> Result<bool> {
        self.faults.enter("resume_task_queue").await;
        self.inner.resume_task_queue(queue).await
    }
    async fn paused_task_queues(&self) -> Result<Vec<crate::task::PausedQueue>> {
        self.faults.enter("paused_task_queues").await;
        self.inner.paused_task_queues().await
    }
    async fn claim_task_executions(&self, params: &ClaimParams) -> Result<Vec<TaskExecution>> {
        self.faults.enter("claim_task_executions").await;
        self.inner.claim_task_executions(params).await
    }
    async fn update_task_executions(
        &self,
        guard: &TaskExecutionGuard,
        update: &TaskExecutionUpdate,
    ) -> Result<u64> {
        self.faults.enter("update_task_executions").await;
        self.inner.update_task_executions(guard, update).await
    }
    async fn update_task_executions_many(
        &self,
        updates: &[(TaskExecutionGuard, TaskExecutionUpdate)],
    ) -> Result<Vec<u64>> {
        self.faults.enter("update_task_executions_many").await;
        self.inner.update_task_executions_many(updates).await
    }
    async fn update_task_execution_and_enqueue(
        &self,
        guard: &TaskExecutionGuard,
        update: &TaskExecutionUpdate,
        children: Vec<NewTaskExecution>,
    ) -> Result<bool> {
        self.faults.enter("update_task_execution_and_enqueue").await;
        self.inner
            .update_task_execution_and_enqueue(guard, update, children)
            .await
    }
    async fn add_finished_child_task_executions(
        &self,
        children: Vec<FinishedChildTaskExecution>,
    ) -> Result<()> {
        self.faults
            .enter("add_finished_child_task_executions")
            .await;
        self.inner
            .add_finished_child_task_executions(children)
            .await
    }
    async fn get_finished_child_task_executions(
        &self,
        parent_execution_id: &str,
    ) -> Result<Vec<FinishedChildTaskExecution>> {
        self.faults
            .enter("get_finished_child_task_executions")
            .await;
        self.inner
            .get_finished_child_task_executions(parent_execution_id)
            .await
    }
    async fn expire_task_executions(&self, now: i64, limit: u64) -> Result<u64> {
        self.faults.enter("expire_task_executions").await;
        self.inner.expire_task_executions(now, limit).await
    }
    async fn claim_parents_with_finished_children(
        &self,
        params: &ClaimParams,
    ) -> Result<Vec<TaskExecution>> {
        self.faults
            .enter("claim_parents_with_finished_children")
            .await;
        self.inner
            .claim_parents_with_finished_children(params)
            .await
    }
    async fn close_finished_task_executions(&self, now: i64, limit: u64) -> Result<u64> {
        self.faults.enter("close_finished_task_executions").await;
        self.inner.close_finished_task_executions(now, limit).await
    }
    async fn cancellation_requests(&self, executor_id: &str, limit: u64) -> Result<Vec<String>> {
        self.faults.enter("cancellation_requests").await;
        self.inner.cancellation_requests(executor_id, limit).await
    }
    async fn acknowledge_cancellation_requests(
        &self,
        executor_id: &str,
        execution_ids: &[String],
        now: i64,
    ) -> Result<u64> {
        self.faults.enter("acknowledge_cancellation_requests").await;
        self.inner
            .acknowledge_cancellation_requests(executor_id, execution_ids, now)
            .await
    }
    async fn prune_task_executions(
        &self,
        statuses: &[TaskExecutionStatus],
        finished_before: i64,
        limit: u64,
    ) -> Result<u64> {
        self.faults.enter("prune_task_executions").await;
        self.inner
            .prune_task_executions(statuses, finished_before, limit)
            .await
    }
    async fn wake_task_execution(&self, wake: &Wake) -> Result<WakeResult> {
        self.faults.enter("wake_task_execution").await;
        self.inner.wake_task_execution(wake).await
    }
    async fn save_task_schedule(&self, schedule: TaskSchedule) -> Result<TaskSchedule> {
        self.faults.enter("save_task_schedule").await;
        self.inner.save_task_schedule(schedule).await
    }
    async fn get_task_schedules(&self) -> Result<Vec<TaskSchedule>> {
        self.faults.enter("get_task_schedules").await;
        self.inner.get_task_schedules().await
    }
    async fn delete_task_schedule(&self, schedule_id: &str) -> Result<bool> {
        self.faults.enter("delete_task_schedule").await;
        self.inner.delete_task_schedule(schedule_id).await
    }
    async fn due_task_schedules(
        &self,
        now: i64,
        task_ids: Option<&[String]>,
        limit: u64,
    ) -> Result<Vec<TaskSchedule>> {
        self.faults.enter("due_task_schedules").await;
        self.inner.due_task_schedules(now, task_ids, limit).await
    }
    async fn fire_task_schedule(&self, fire: &ScheduleFire) -> Result<bool> {
        self.faults.enter("fire_task_schedule").await;
        self.inner.fire_task_schedule(fire).await
    }
    async fn database_time_ms(&self) -> Result<Option<i64>> {
        self.faults.enter("database_time_ms").await;
        self.inner.database_time_ms().await
    }
}

/// A [`DistributedStateStore`] that delegates to `inner`, except for the calls its [`Faults`]
/// choose to panic on or delay.
#[derive(Clone)]
pub struct PanickingStateStore {
    inner: Arc<dyn DistributedStateStore>,
    faults: Faults,
}

impl PanickingStateStore {
    /// Delegates to `inner` under `faults`.
    pub fn new(inner: Arc<dyn DistributedStateStore>, faults: Faults) -> Self {
        Self { inner, faults }
    }
}

#[async_trait]
impl StateStore for PanickingStateStore {
    async fn save_job_state(&self, job: &JobState) -> Result<()> {
        self.faults.enter("save_job_state").await;
        self.inner.save_job_state(job).await
    }
    async fn reset_job_state(&self, job: &JobState) -> Result<()> {
        self.faults.enter("reset_job_state").await;
        self.inner.reset_job_state(job).await
    }
    async fn get_job_state(&self, job_id: &str) -> Result<Option<JobState>> {
        self.faults.enter("get_job_state").await;
        self.inner.get_job_state(job_id).await
    }
    async fn get_job_without_batches(&self, job_id: &str) -> Result<Option<JobState>> {
        self.faults.enter("get_job_without_batches").await;
        self.inner.get_job_without_batches(job_id).await
    }
    async fn update_batch_state(
        &self,
        job_id: &str,
        batch_id: &str,
        state: &BatchState,
    ) -> Result<()> {
        self.faults.enter("update_batch_state").await;
        self.inner.update_batch_state(job_id, batch_id, state).await
    }
    async fn save_processed_record(
        &self,
        job_id: &str,
        batch_id: &str,
        record: &ProcessedRecord,
    ) -> Result<()> {
        self.faults.enter("save_processed_record").await;
        self.inner
            .save_processed_record(job_id, batch_id, record)
            .await
    }
    async fn save_processed_records(
        &self,
        job_id: &str,
        batch_id: &str,
        records: &[ProcessedRecord],
    ) -> Result<()> {
        self.faults.enter("save_processed_records").await;
        self.inner
            .save_processed_records(job_id, batch_id, records)
            .await
    }
    async fn reset_records(
        &self,
        job_id: &str,
        batch_id: &str,
        records: &[ProcessedRecord],
    ) -> Result<()> {
        self.faults.enter("reset_records").await;
        self.inner.reset_records(job_id, batch_id, records).await
    }
    async fn get_records(
        &self,
        job_id: &str,
        filter: &RecordFilter,
    ) -> Result<Vec<ProcessedRecord>> {
        self.faults.enter("get_records").await;
        self.inner.get_records(job_id, filter).await
    }
    async fn get_failed_records(&self, job_id: &str) -> Result<Vec<ProcessedRecord>> {
        self.faults.enter("get_failed_records").await;
        self.inner.get_failed_records(job_id).await
    }
    async fn get_pending_records(&self, job_id: &str) -> Result<Vec<ProcessedRecord>> {
        self.faults.enter("get_pending_records").await;
        self.inner.get_pending_records(job_id).await
    }
    async fn get_processed_records(&self, job_id: &str) -> Result<Vec<ProcessedRecord>> {
        self.faults.enter("get_processed_records").await;
        self.inner.get_processed_records(job_id).await
    }
    async fn get_progress(&self, job_id: &str) -> Result<JobProgress> {
        self.faults.enter("get_progress").await;
        self.inner.get_progress(job_id).await
    }
    async fn prune_finished_jobs(&self, finished_before: i64, limit: u64) -> Result<u64> {
        self.faults.enter("prune_finished_jobs").await;
        self.inner.prune_finished_jobs(finished_before, limit).await
    }
}

#[async_trait]
impl DistributedStateStore for PanickingStateStore {
    async fn create_job(&self, job: &JobState) -> Result<bool> {
        self.faults.enter("create_job").await;
        self.inner.create_job(job).await
    }
    async fn start_job(&self, job: &JobState) -> Result<bool> {
        self.faults.enter("start_job").await;
        self.inner.start_job(job).await
    }
    async fn claim_batch(&self, job_id: &str, worker_id: &str) -> Result<ClaimBatchResult> {
        self.faults.enter("claim_batch").await;
        self.inner.claim_batch(job_id, worker_id).await
    }
    async fn claim_batch_with_id(
        &self,
        job_id: &str,
        worker_id: &str,
        claim_id: &str,
    ) -> Result<ClaimBatchResult> {
        self.faults.enter("claim_batch_with_id").await;
        self.inner
            .claim_batch_with_id(job_id, worker_id, claim_id)
            .await
    }
    async fn release_batch(&self, reservation: &BatchReservation) -> Result<bool> {
        self.faults.enter("release_batch").await;
        self.inner.release_batch(reservation).await
    }
    async fn reclaim_stale_batches(&self, job_id: &str, timeout: Duration) -> Result<u64> {
        self.faults.enter("reclaim_stale_batches").await;
        self.inner.reclaim_stale_batches(job_id, timeout).await
    }
    async fn save_batch_records(
        &self,
        job_id: &str,
        batch_id: &str,
        records: &[ProcessedRecord],
    ) -> Result<()> {
        self.faults.enter("save_batch_records").await;
        self.inner
            .save_batch_records(job_id, batch_id, records)
            .await
    }
    async fn get_batch_records(
        &self,
        job_id: &str,
        batch_id: &str,
    ) -> Result<Vec<ProcessedRecord>> {
        self.faults.enter("get_batch_records").await;
        self.inner.get_batch_records(job_id, batch_id).await
    }
    async fn get_distributed_status(&self, job_id: &str) -> Result<DistributedJobStatus> {
        self.faults.enter("get_distributed_status").await;
        self.inner.get_distributed_status(job_id).await
    }
    async fn try_finalize_job(&self, job_id: &str) -> Result<bool> {
        self.faults.enter("try_finalize_job").await;
        self.inner.try_finalize_job(job_id).await
    }
    async fn try_finalize_job_with_id(&self, job_id: &str, finalizer_id: &str) -> Result<bool> {
        self.faults.enter("try_finalize_job_with_id").await;
        self.inner
            .try_finalize_job_with_id(job_id, finalizer_id)
            .await
    }
    async fn requeue_failed_records(&self, job_id: &str) -> Result<RequeuedRecords> {
        self.faults.enter("requeue_failed_records").await;
        self.inner.requeue_failed_records(job_id).await
    }
    async fn complete_batch(
        &self,
        reservation: &BatchReservation,
        outcome: BatchOutcome,
    ) -> Result<bool> {
        self.faults.enter("complete_batch").await;
        self.inner.complete_batch(reservation, outcome).await
    }
    async fn heartbeat_batch(&self, reservation: &BatchReservation) -> Result<bool> {
        self.faults.enter("heartbeat_batch").await;
        self.inner.heartbeat_batch(reservation).await
    }
    async fn save_record_outcomes(
        &self,
        job_id: &str,
        batch_id: &str,
        outcomes: &[RecordOutcome],
    ) -> Result<u64> {
        self.faults.enter("save_record_outcomes").await;
        self.inner
            .save_record_outcomes(job_id, batch_id, outcomes)
            .await
    }
    async fn complete_batch_with_outcomes(
        &self,
        reservation: &BatchReservation,
        outcome: BatchOutcome,
        outcomes: &[RecordOutcome],
    ) -> Result<bool> {
        self.faults.enter("complete_batch_with_outcomes").await;
        self.inner
            .complete_batch_with_outcomes(reservation, outcome, outcomes)
            .await
    }
}

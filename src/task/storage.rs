//! The port through which executors keep task executions ([`TaskExecutionStorage`]), and the
//! types that only an implementation of it (or a test of one) needs: the parameters of its
//! operations and the rows it writes.

use async_trait::async_trait;

pub use super::model::{
    ClaimParams, FinishedChildTaskExecution, NewTaskExecution, TaskExecutionGuard,
    TaskExecutionUpdate, Wake, WakeOutcome,
};
pub use super::schedule::ScheduleFire;

use super::model::{
    PausedQueue, ReadyTaskExecutions, TaskExecution, TaskExecutionCount, TaskExecutionFilter,
    TaskExecutionStatus, WakeResult,
};
use super::schedule::TaskSchedule;
use crate::error::Result;

/// Storage of task executions shared by any number of executors.
///
/// Every operation is atomic on its own. Claims hand each execution to one executor only and
/// never wait on executions another executor is claiming. Writes by a claim holder carry the
/// claim's fencing token in their [`TaskExecutionGuard`], so an executor whose claim lapsed and
/// was taken over cannot overwrite the new owner's work.
///
/// All times are epoch milliseconds passed in by the caller; the store never reads a clock.
#[async_trait]
pub trait TaskExecutionStorage: Send + Sync {
    /// Inserts new executions, `ready` and starting after their sleep, as of `now`.
    ///
    /// All or nothing. A storage that retries the insert after an ambiguous error (the first
    /// attempt may have committed) must not report the first attempt's rows as a conflict.
    /// Statements stay within the backend's limits however large the inputs (split by bind
    /// parameters and by bytes).
    ///
    /// An execution with a [`wake_key`](NewTaskExecution::wake_key) is inserted `sleeping`
    /// (see [`NewTaskExecution::into_execution`]).
    ///
    /// # Errors
    ///
    /// [`Error::Conflict`](crate::Error::Conflict) when an execution id already exists, or an
    /// execution already sleeps under one of the wake keys (nothing is inserted then);
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for an empty
    /// or too long id or queue, a timeout outside 1 ms..=[`MAX_TIMEOUT`](crate::task::MAX_TIMEOUT), a
    /// delay outside 0..=[`MAX_SLEEP_BEFORE_RUN`](crate::task::MAX_SLEEP_BEFORE_RUN) or retry options
    /// that do not fit (nothing is written then).
    async fn enqueue_task_executions(
        &self,
        executions: Vec<NewTaskExecution>,
        now: i64,
    ) -> Result<()>;

    /// Enqueues executions as [`enqueue_task_executions`](Self::enqueue_task_executions) does,
    /// inside the application's own SeaORM transaction `txn`: they exist if and only if `txn`
    /// commits (a transactional outbox). Only a storage that keeps its rows in the database
    /// `txn` belongs to can; the default refuses.
    ///
    /// # Errors
    ///
    /// As [`enqueue_task_executions`](Self::enqueue_task_executions);
    /// [`Error::Unsupported`](crate::Error::Unsupported) from a storage that cannot join the
    /// transaction (nothing is written then).
    async fn enqueue_task_executions_in_transaction(
        &self,
        txn: &sea_orm::DatabaseTransaction,
        executions: Vec<NewTaskExecution>,
        now: i64,
    ) -> Result<()> {
        let _ = (txn, executions, now);
        Err(crate::Error::Unsupported {
            operation: "enqueuing in the application's transaction",
        })
    }

    /// The execution with this id, if any.
    ///
    /// # Errors
    ///
    /// [`Error::CorruptRow`](crate::Error::CorruptRow) when the stored row cannot be read.
    async fn get_task_execution(&self, execution_id: &str) -> Result<Option<TaskExecution>>;

    /// The executions matching `filter`, ordered by `created_at`, position in the parent and
    /// execution id.
    ///
    /// # Errors
    ///
    /// [`Error::CorruptRow`](crate::Error::CorruptRow) when a matching row cannot be read.
    async fn get_task_executions(&self, filter: &TaskExecutionFilter)
    -> Result<Vec<TaskExecution>>;

    /// How many executions each queue holds in each of `statuses`: one
    /// [`TaskExecutionCount`] per (queue, status) that has any, ordered by queue then status
    /// name, at most `limit` of them. Cheap enough to poll: one aggregate query, each status
    /// counted from the index that serves its hot path where the backend has one (`ready`,
    /// `running`, `waiting_for_children_tasks`); finished statuses have no such index and are
    /// counted by a scan of the table.
    ///
    /// # Errors
    ///
    /// Database errors.
    async fn count_task_executions(
        &self,
        statuses: &[TaskExecutionStatus],
        limit: u64,
    ) -> Result<Vec<TaskExecutionCount>>;

    /// Per task and queue, the `ready` executions due at `now` (`start_at <= now`): how many,
    /// and the `start_at` of the one due longest ago; the longest waits first (then task and
    /// queue), at most `limit` groups. One aggregate query over the claims' per-task index of
    /// ready rows, so its cost grows with the ready rows, not the table. It makes work that no
    /// executor claims visible: a child task registered nowhere waits here for ever.
    ///
    /// # Errors
    ///
    /// Database errors.
    async fn ready_task_executions(&self, now: i64, limit: u64)
    -> Result<Vec<ReadyTaskExecutions>>;

    /// Runs a failed root execution again: if it is `failed` or `timed_out`, has no parent,
    /// spawned no children nor finalize execution and is not a sleeping task's, it goes back
    /// to `ready` from `now` with one more retry attempt counted, unfinished and unclosed,
    /// through one conditional update (so of two retries, or a retry racing anything else that
    /// changes the row, one wins). Its `error` stays: the new run sees it as the previous
    /// error ([`TaskContext::prev_error`](crate::TaskContext::prev_error)) and inspection shows
    /// it until the run ends. Returns the execution as stored afterwards.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`](crate::Error::NotFound) for an unknown id;
    /// [`Error::InvalidState`](crate::Error::InvalidState), saying why and what to do instead,
    /// for an execution that cannot be retried (nothing is written then).
    async fn retry_task_execution(&self, execution_id: &str, now: i64) -> Result<TaskExecution>;

    /// Moves up to `limit` `ready` executions whose `start_at <= now`, of the tasks and queues
    /// `params` admits and of no [paused](Self::pause_task_queue) queue, to `running` for `executor_id`, earliest `start_at` first (then by
    /// execution id): sets `started_at = now`, the lease
    /// `expires_at = now + timeout + lease_margin`, a new fencing token and the claim id.
    /// Returns the executions as they are after the update.
    ///
    /// With [`ClaimParams::resume`], the executions an earlier call with the same claim id took
    /// (and `executor_id` still holds) are returned first, unchanged. The lease arithmetic never
    /// overflows, whatever numbers a row holds.
    ///
    /// # Errors
    ///
    /// Database errors. A claimed row that cannot be read (see
    /// [`Error::CorruptRow`](crate::Error::CorruptRow)), including one whose timeout lies outside
    /// the limits, is not an error of the claim: it is left out of the result and marked
    /// `failed` with an internal error saying why, so it neither runs nor blocks the executions
    /// behind it.
    async fn claim_task_executions(&self, params: &ClaimParams) -> Result<Vec<TaskExecution>>;

    /// Applies `update` to the executions matching `guard`; returns how many matched.
    ///
    /// # Errors
    ///
    /// Database errors.
    async fn update_task_executions(
        &self,
        guard: &TaskExecutionGuard,
        update: &TaskExecutionUpdate,
    ) -> Result<u64>;

    /// Applies several guarded updates, each as [`update_task_executions`] would, and returns
    /// how many rows each matched. Implementations should write them in one transaction (one
    /// commit for the lot); the default applies them one by one.
    ///
    /// An implementation may also close, in the same transaction, the executions these updates
    /// finish, propagating their outcomes exactly as [`close_finished_task_executions`] would
    /// (the SeaORM storage does, for updates of one fenced execution out of an unfinished
    /// status); callers must not rely on either.
    ///
    /// [`close_finished_task_executions`]: TaskExecutionStorage::close_finished_task_executions
    /// # Errors
    ///
    /// Database errors; updates before the failing one may have been applied.
    ///
    /// [`update_task_executions`]: TaskExecutionStorage::update_task_executions
    async fn update_task_executions_many(
        &self,
        updates: &[(TaskExecutionGuard, TaskExecutionUpdate)],
    ) -> Result<Vec<u64>> {
        let mut matched = Vec::with_capacity(updates.len());
        for (guard, update) in updates {
            matched.push(self.update_task_executions(guard, update).await?);
        }
        Ok(matched)
    }

    /// Applies `update` to the executions matching `guard` and, only if at least one matched,
    /// enqueues `children` (children or a finalize execution), all in one transaction. Returns
    /// whether the guard matched.
    ///
    /// # Errors
    ///
    /// [`Error::Conflict`](crate::Error::Conflict) when a child id already exists; nothing is
    /// written then.
    async fn update_task_execution_and_enqueue(
        &self,
        guard: &TaskExecutionGuard,
        update: &TaskExecutionUpdate,
        children: Vec<NewTaskExecution>,
    ) -> Result<bool>;

    /// Records that children finished, once per (parent, child): a record that exists already
    /// is left as it is. Keeps each parent's `finished_children_count` and
    /// `failed_children_count` equal to its records.
    ///
    /// # Errors
    ///
    /// Database errors.
    async fn add_finished_child_task_executions(
        &self,
        children: Vec<FinishedChildTaskExecution>,
    ) -> Result<()>;

    /// The finished children of a parent, in child-index order.
    ///
    /// # Errors
    ///
    /// [`Error::CorruptRow`](crate::Error::CorruptRow) when a record cannot be read.
    async fn get_finished_child_task_executions(
        &self,
        parent_execution_id: &str,
    ) -> Result<Vec<FinishedChildTaskExecution>>;

    /// Recovers executions whose executor died: every `running` execution whose lease passed
    /// (`expires_at < now`), up to `limit`, goes back to `ready` (`start_at = now`) with the
    /// attempt counted against its retries, or, with no retries left, to `failed`. Also times
    /// out, up to `limit` more, the `sleeping` executions whose timeout passed (`expires_at <
    /// now`): they end `timed_out`, never retried. Each row changes through one conditional
    /// update, so a concurrent [`wake_task_execution`](Self::wake_task_execution) and the timeout
    /// have exactly one winner. Returns how many it recovered or timed out.
    ///
    /// # Errors
    ///
    /// Database errors.
    async fn expire_task_executions(&self, now: i64, limit: u64) -> Result<u64>;

    /// Claims up to `limit` parents waiting for children whose children have all finished (or
    /// one of which failed), of the tasks and queues `params` admits, and that no live claim
    /// holds: sets `executor_id`, the claim id, a new fencing token and
    /// `expires_at = now + lease_margin`. Returns them as they are after the update.
    /// [`ClaimParams::resume`] takes back an earlier attempt's parents as for
    /// [`claim_task_executions`](TaskExecutionStorage::claim_task_executions).
    ///
    /// # Errors
    ///
    /// Database errors. A claimed parent whose row cannot be read is marked `failed` with an
    /// internal error instead of being returned (or claimed again after every lease).
    async fn claim_parents_with_finished_children(
        &self,
        params: &ClaimParams,
    ) -> Result<Vec<TaskExecution>>;

    /// Closes up to `limit` finished executions that are not closed yet, propagating each
    /// outcome in the same transaction:
    /// - a child records itself as a finished child of its parent;
    /// - a finalize execution finishes its parent (`completed` with the finalize output, or
    ///   `finalize_task_failed` with its error) if the parent still waits for it;
    /// - an execution that did not complete cancels its still-active children and finalize.
    ///
    /// An execution whose outcome cannot be propagated (its row cannot be read, or writing its
    /// record fails for good) never holds up the others: it is closed and its parent told that
    /// it failed, with an error saying why. Returns how many it closed.
    ///
    /// # Errors
    ///
    /// Database errors.
    async fn close_finished_task_executions(&self, now: i64, limit: u64) -> Result<u64>;

    /// Up to `limit` executions whose cancellation was requested while `executor_id` held them,
    /// oldest request first. Reading changes nothing: a request stays until it is
    /// [acknowledged](TaskExecutionStorage::acknowledge_cancellation_requests), so none is lost
    /// to a reply that never arrived.
    ///
    /// # Errors
    ///
    /// Database errors.
    async fn cancellation_requests(&self, executor_id: &str, limit: u64) -> Result<Vec<String>>;

    /// Clears the cancellation requests of `execution_ids` addressed to `executor_id`, once the
    /// executor has acted on them. Idempotent; returns how many it cleared.
    ///
    /// # Errors
    ///
    /// Database errors.
    async fn acknowledge_cancellation_requests(
        &self,
        executor_id: &str,
        execution_ids: &[String],
        now: i64,
    ) -> Result<u64>;

    /// Deletes up to `limit` finished, closed executions whose status is one of `statuses` and
    /// whose `finished_at` is before `finished_before`, oldest first, with the finished-child
    /// records of those that were parents. Returns how many executions it deleted; call it again
    /// until it returns less than `limit`.
    ///
    /// Only rows no executor works on are touched: unfinished and unclosed executions are never
    /// deleted, so a parent still waiting keeps its children's records.
    ///
    /// # Errors
    ///
    /// Database errors.
    async fn prune_task_executions(
        &self,
        statuses: &[TaskExecutionStatus],
        finished_before: i64,
        limit: u64,
    ) -> Result<u64>;

    /// Wakes the execution sleeping under `wake.wake_key`: it finishes `completed` with the
    /// output or `failed` with the error, and frees the key, through one conditional update
    /// (it must still be `sleeping`), so of a wake racing another wake, a cancellation or its
    /// timeout exactly one wins. Its parent learns of it when it is closed, as of any child.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`](crate::Error::NotFound) when no execution was ever enqueued under
    /// the key (an execution that finished answers [`WakeResult::AlreadyFinished`] instead);
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for an empty or too long key.
    async fn wake_task_execution(&self, wake: &Wake) -> Result<WakeResult>;

    /// Saves a periodic schedule: inserts it when its id is new; when a schedule with the id
    /// exists and [defines the same](TaskSchedule::same_definition) ticks of the same task with
    /// the same input, leaves it as it is (its progress, `next_tick_at`, is kept: every executor
    /// can save its schedules at start); otherwise replaces its definition and `next_tick_at`.
    /// Returns the schedule as stored.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for an id outside
    /// 1..=[`MAX_SCHEDULE_ID_LEN`](crate::task::MAX_SCHEDULE_ID_LEN) bytes, a bad task id, or a
    /// cron expression, time zone or interval that does not parse.
    async fn save_task_schedule(&self, schedule: TaskSchedule) -> Result<TaskSchedule>;

    /// Every schedule, by id.
    ///
    /// # Errors
    ///
    /// [`Error::CorruptRow`](crate::Error::CorruptRow) when a row cannot be read.
    async fn get_task_schedules(&self) -> Result<Vec<TaskSchedule>>;

    /// Deletes a schedule (the executions it enqueued stay); returns whether it existed.
    ///
    /// # Errors
    ///
    /// Database errors.
    async fn delete_task_schedule(&self, schedule_id: &str) -> Result<bool>;

    /// Up to `limit` schedules whose `next_tick_at <= now`, of the tasks in `task_ids` (`None`:
    /// any), earliest tick first. Reading takes nothing: the firing decides. A due row that
    /// cannot be read is left out (and logged), so it never keeps the others from firing.
    ///
    /// # Errors
    ///
    /// Database errors.
    async fn due_task_schedules(
        &self,
        now: i64,
        task_ids: Option<&[String]>,
        limit: u64,
    ) -> Result<Vec<TaskSchedule>>;

    /// Fires a due schedule: if its `next_tick_at` is still `fire.expected_next_tick_at`, moves
    /// it to `fire.new_next_tick_at` and enqueues `fire.executions`, in one transaction; returns
    /// whether it did. Of any number of executors firing the same tick, exactly one succeeds.
    ///
    /// # Errors
    ///
    /// As [`enqueue_task_executions`](Self::enqueue_task_executions) (nothing is written then).
    async fn fire_task_schedule(&self, fire: &ScheduleFire) -> Result<bool>;

    /// Pauses `queue`: from the next claim on, no executor claims its executions (what runs
    /// already finishes; parents whose children finished still move on; enqueues into it are
    /// kept, `ready`). Idempotent: pausing a paused queue keeps its first `paused_at`. The
    /// pause is stored, so it holds across restarts and for executors started later. Returns
    /// the queue as paused. A claim that began before the pause committed may still take
    /// executions of the queue.
    ///
    /// A queue needs no executions to be paused: pausing one that does not exist yet holds
    /// back what is enqueued into it later.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for an empty or too long
    /// queue name, or one with U+0000 (nothing is written then).
    async fn pause_task_queue(&self, queue: &str, now: i64) -> Result<PausedQueue>;

    /// Resumes a paused queue: its executions are claimed again from the next claim on.
    /// Returns whether it was paused; resuming a queue that is not paused changes nothing.
    /// After a lost reply, a repeat answers `false` although the first attempt resumed it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for a queue name that
    /// [`pause_task_queue`](Self::pause_task_queue) would refuse.
    async fn resume_task_queue(&self, queue: &str) -> Result<bool>;

    /// Every paused queue, by name.
    ///
    /// # Errors
    ///
    /// Database errors.
    async fn paused_task_queues(&self) -> Result<Vec<PausedQueue>>;

    /// The storage's own clock (the database server's), in epoch milliseconds, when it has
    /// one; `None` (the default) when it does not. Executors compare it with their clock to
    /// detect skew, since leases written by one executor are judged by another's clock.
    ///
    /// # Errors
    ///
    /// Database errors.
    async fn database_time_ms(&self) -> Result<Option<i64>> {
        Ok(None)
    }
}

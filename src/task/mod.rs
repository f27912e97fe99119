//! Durable task executions: tasks and the [`Executor`] that runs them, the executions as
//! stored ([`TaskExecution`]), their limits, schedules, and the storages: in memory
//! ([`InMemoryTaskExecutionStorage`]) and through SeaORM ([`SeaOrmTaskExecutionStorage`]).
//!
//! The port a storage implements, and the types only an implementer needs, are in
//! [`storage`]. The storage rules shared by every implementation are written once: the argument
//! checks in `check`, lease expiry and closing here.

mod check;
pub(crate) mod executor;
mod mapper;
mod memory;
mod model;
mod schedule;
pub(crate) mod sea_orm;
pub mod storage;

pub use check::{MAX_CRON_LEN, MAX_QUEUE_LEN, MAX_SCHEDULE_ID_LEN};
pub(crate) use check::{
    storable_claim, storable_filter, storable_guard, storable_ids, validate_claim,
    validate_executor_id, validate_finished_child, validate_new, validate_queue, validate_retry,
    validate_schedule, validate_schedule_id, validate_sleep_ms, validate_task_id,
    validate_timeout_ms, validate_wake_key,
};
pub use executor::{
    ChildOutput, ChildTask, EnqueueOptions, Executor, ExecutorOptions, FinalizeInput,
    FinishedExecution, MAX_PROGRESS_BYTES, ParentDefinition, ParentOutcome, ParentTaskOutput,
    Retention, Sequence, TaskContext, TaskDefinition, TaskError, TaskHandle, TaskOptions,
    WaitOptions,
};
pub use memory::InMemoryTaskExecutionStorage;
pub use model::{
    DEFAULT_QUEUE, ExecutionCursor, ExecutionError, ExecutionErrorKind, MAX_LEASE_MARGIN,
    MAX_SLEEP_BEFORE_RUN, MAX_TIMEOUT, ParentRef, PausedQueue, ReadyTaskExecutions, RetryOptions,
    TaskExecution, TaskExecutionCount, TaskExecutionFilter, TaskExecutionRef, TaskExecutionStatus,
    WakeResult,
};
pub use schedule::{MissedTicks, Schedule, ScheduleSpec, TaskSchedule};
pub(crate) use schedule::{Ticks, tick_execution_id};
pub use sea_orm::SeaOrmTaskExecutionStorage;

use model::{FinishedChildTaskExecution, TaskExecutionUpdate, WakeOutcome};

use crate::error::Error;

/// The message recorded on an execution whose lease lapsed while it was running.
pub(crate) const LEASE_EXPIRED: &str =
    "the execution's lease expired before it finished; its executor is presumed dead";

/// The message recorded on a sleeping execution that was not woken in time.
pub(crate) const SLEEP_TIMED_OUT: &str = "the sleeping execution was not woken before its timeout";

/// The error recorded on a sleeping execution that was not woken in time (not retryable: a
/// sleeping execution has nothing to run again).
pub(crate) fn sleep_timed_out_error() -> ExecutionError {
    ExecutionError {
        kind: ExecutionErrorKind::TimedOut,
        is_retryable: false,
        is_internal: false,
        message: SLEEP_TIMED_OUT.to_owned(),
    }
}

/// The update that wakes a sleeping execution with `outcome`.
pub(crate) fn wake_update(outcome: &WakeOutcome, now: i64) -> TaskExecutionUpdate {
    match outcome {
        WakeOutcome::Completed { output } => TaskExecutionUpdate {
            now,
            status: Some(TaskExecutionStatus::Completed),
            output: Some(output.clone()),
            clear_error: true,
            ..Default::default()
        },
        WakeOutcome::Failed { error } => TaskExecutionUpdate {
            now,
            status: Some(TaskExecutionStatus::Failed),
            error: Some(error.clone()),
            ..Default::default()
        },
    }
}

/// Whether `e`, the latest execution under the wake's key, is what `wake` left: finished with
/// its outcome, at its time. A wake repeated after a lost reply (the same key, outcome and
/// time) finds this when its first attempt took effect, and answers it woken again; a wake
/// that differs in outcome or time is another wake, told the execution finished already.
pub(crate) fn woken_by(e: &model::TaskExecution, wake: &model::Wake) -> bool {
    wake_update(&wake.outcome, wake.now).is_held_by(e) && model::finished_by_update_at(e, wake.now)
}

/// The error of a wake under a key nothing was ever enqueued under.
pub(crate) fn unknown_wake_key(key: &str) -> Error {
    Error::NotFound {
        entity: "sleeping task execution",
        key: key.to_owned(),
    }
}

/// The update that recovers a running execution whose lease passed: back to `ready` with the
/// attempt counted, or `failed` when no retries are left.
pub(crate) fn expiry_update(e: &TaskExecution, now: i64) -> TaskExecutionUpdate {
    let retry = e.retry_attempts < e.retry_options.max_attempts;
    TaskExecutionUpdate {
        now,
        status: Some(if retry {
            TaskExecutionStatus::Ready
        } else {
            TaskExecutionStatus::Failed
        }),
        error: Some(lease_expired_error(retry)),
        retry_attempts: retry.then(|| e.retry_attempts.saturating_add(1)),
        start_at: retry.then_some(now),
        ..Default::default()
    }
}

/// The error recorded by lease expiry: retryable when the execution goes back to `ready`.
pub(crate) fn lease_expired_error(retry: bool) -> ExecutionError {
    ExecutionError {
        kind: ExecutionErrorKind::Generic,
        is_retryable: retry,
        is_internal: true,
        message: LEASE_EXPIRED.to_owned(),
    }
}

/// The error recorded on the still-active children (and finalize) of a parent that finished
/// without completing, when the parent is closed.
pub(crate) fn parent_finished_error(parent: &TaskExecution) -> ExecutionError {
    ExecutionError::cancelled(format!(
        "parent task {} with execution id {} finished as {}",
        parent.task_id, parent.execution_id, parent.status
    ))
}

/// The update a finished finalize execution applies to its parent.
pub(crate) fn finalize_outcome_update(finalize: &TaskExecution, now: i64) -> TaskExecutionUpdate {
    if finalize.status == TaskExecutionStatus::Completed {
        TaskExecutionUpdate {
            now,
            status: Some(TaskExecutionStatus::Completed),
            output: finalize.output.clone(),
            clear_error: true,
            ..Default::default()
        }
    } else {
        let cause = finalize
            .error
            .as_ref()
            .map_or("unknown error", |e| e.message.as_str());
        TaskExecutionUpdate {
            now,
            status: Some(TaskExecutionStatus::FinalizeFailed),
            error: Some(ExecutionError::generic(
                format!(
                    "finalize task with id {} ({}) failed: {cause}",
                    finalize.task_id, finalize.status
                ),
                false,
            )),
            ..Default::default()
        }
    }
}

/// The record a finished child leaves for its parent.
pub(crate) fn finished_child_record(
    child: &TaskExecution,
    parent: &ParentRef,
    now: i64,
) -> FinishedChildTaskExecution {
    FinishedChildTaskExecution {
        parent_execution_id: parent.execution_id.clone(),
        child_execution_id: child.execution_id.clone(),
        child_task_id: child.task_id.clone(),
        index: parent.index,
        status: child.status,
        output: child.output.clone(),
        error: child.error.clone(),
        created_at: now,
    }
}

/// Puts executions in the order [`TaskExecutionStorage::get_task_executions`] lists them (by
/// creation time, then index in the parent, then id) and keeps the first `limit`.
pub(crate) fn list_in_order(executions: &mut Vec<TaskExecution>, limit: Option<u64>) {
    executions.sort_by(|a, b| {
        let index = |e: &TaskExecution| e.parent.as_ref().map_or(0, |p| p.index);
        (a.created_at, index(a), &a.execution_id).cmp(&(b.created_at, index(b), &b.execution_id))
    });
    if let Some(limit) = limit {
        executions.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    }
}

//! Durable task executions: the domain, the storage port and its implementations.
//!
//! The [`Executor`](executor::Executor) runs tasks over the storage. The storage rules shared by every implementation (validation, lease expiry, closing) are
//! here, written once.

pub(crate) mod executor;
mod mapper;
mod memory;
mod model;
mod schedule;
pub(crate) mod sea_orm;
mod storage;

pub use memory::InMemoryTaskExecutionStorage;
pub use model::{
    ClaimParams, DEFAULT_QUEUE, ExecutionError, ExecutionErrorKind, FinishedChildTaskExecution,
    MAX_LEASE_MARGIN, MAX_QUEUE_LEN, MAX_SLEEP_BEFORE_RUN, MAX_TIMEOUT, NewTaskExecution,
    ParentRef, RetryOptions, TaskExecution, TaskExecutionCount, TaskExecutionFilter,
    TaskExecutionGuard, TaskExecutionRef, TaskExecutionStatus, TaskExecutionUpdate, Wake,
    WakeOutcome, WakeResult,
};
pub use schedule::{
    MAX_SCHEDULE_ID_LEN, MissedTicks, Schedule, ScheduleFire, ScheduleSpec, TaskSchedule,
};
pub(crate) use schedule::{Ticks, tick_execution_id, validate_schedule_id};
pub use sea_orm::SeaOrmTaskExecutionStorage;
pub use storage::TaskExecutionStorage;

use crate::error::{Error, Result};

/// Longest execution id or task id accepted (the columns are `VARCHAR(255)`).
pub(crate) const MAX_ID_LEN: usize = 255;

/// The message recorded on an execution whose lease lapsed while it was running.
pub(crate) const LEASE_EXPIRED: &str =
    "the execution's lease expired before it finished; its executor is presumed dead";

/// Checks an id: not empty, at most [`MAX_ID_LEN`] bytes.
fn validate_id(name: &'static str, id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::InvalidArgument {
            name,
            reason: "must not be empty".to_owned(),
        });
    }
    if id.len() > MAX_ID_LEN {
        return Err(Error::InvalidArgument {
            name,
            reason: format!("longer than {MAX_ID_LEN} bytes"),
        });
    }
    Ok(())
}

/// Checks a task id.
pub(crate) fn validate_task_id(id: &str) -> Result<()> {
    validate_id("task_id", id)
}

/// Checks a queue name: not empty, at most [`MAX_QUEUE_LEN`] bytes.
pub(crate) fn validate_queue(queue: &str) -> Result<()> {
    if queue.is_empty() || queue.len() > MAX_QUEUE_LEN {
        return Err(Error::InvalidArgument {
            name: "queue",
            reason: format!("must be 1 to {MAX_QUEUE_LEN} bytes, got {}", queue.len()),
        });
    }
    Ok(())
}

/// Checks a run timeout in milliseconds: positive, at most [`MAX_TIMEOUT`].
pub(crate) fn validate_timeout_ms(timeout_ms: i64) -> Result<()> {
    if !(1..=model::MAX_TIMEOUT_MS).contains(&timeout_ms) {
        return Err(Error::InvalidArgument {
            name: "timeout",
            reason: format!(
                "must be 1 ms to {} ms (365 days), got {timeout_ms} ms",
                model::MAX_TIMEOUT_MS
            ),
        });
    }
    Ok(())
}

/// Checks a delay before the first run in milliseconds: not negative, at most
/// [`MAX_SLEEP_BEFORE_RUN`].
pub(crate) fn validate_sleep_ms(sleep_ms: i64) -> Result<()> {
    if !(0..=model::MAX_SLEEP_MS).contains(&sleep_ms) {
        return Err(Error::InvalidArgument {
            name: "sleep_before_run",
            reason: format!(
                "must be 0 ms to {} ms (365 days), got {sleep_ms} ms",
                model::MAX_SLEEP_MS
            ),
        });
    }
    Ok(())
}

/// Checks retry options: retries fit the `INT` column, the multiplier is a finite number that
/// does not shrink delays below zero.
pub(crate) fn validate_retry(retry: &RetryOptions) -> Result<()> {
    if i32::try_from(retry.max_attempts).is_err() {
        return Err(Error::InvalidArgument {
            name: "retry.max_attempts",
            reason: format!("at most {}, got {}", i32::MAX, retry.max_attempts),
        });
    }
    if !retry.delay_multiplier.is_finite() || retry.delay_multiplier < 0.0 {
        return Err(Error::InvalidArgument {
            name: "retry.delay_multiplier",
            reason: format!(
                "must be a finite number >= 0, got {}",
                retry.delay_multiplier
            ),
        });
    }
    Ok(())
}

/// Checks a new execution before anything is written.
pub(crate) fn validate_new(e: &NewTaskExecution) -> Result<()> {
    validate_id("execution_id", &e.execution_id)?;
    validate_task_id(&e.task_id)?;
    if let Some(queue) = &e.queue {
        validate_queue(queue)?;
    }
    validate_timeout_ms(e.timeout_ms)?;
    validate_sleep_ms(e.sleep_ms_before_run)?;
    validate_retry(&e.retry_options)?;
    if let Some(key) = &e.wake_key {
        validate_wake_key(key)?;
    }
    if let Some(parent) = &e.parent {
        validate_id("parent.execution_id", &parent.execution_id)?;
        validate_task_id(&parent.task_id)?;
        if i32::try_from(parent.index).is_err() {
            return Err(Error::InvalidArgument {
                name: "parent.index",
                reason: format!("at most {}, got {}", i32::MAX, parent.index),
            });
        }
    }
    if let Some(root) = &e.root {
        validate_id("root.execution_id", &root.execution_id)?;
        validate_task_id(&root.task_id)?;
    }
    Ok(())
}

/// Checks a wake key: not empty, at most [`MAX_ID_LEN`] bytes.
pub(crate) fn validate_wake_key(key: &str) -> Result<()> {
    validate_id("wake_key", key)
}

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

/// The error of a wake under a key nothing was ever enqueued under.
pub(crate) fn unknown_wake_key(key: &str) -> Error {
    Error::NotFound {
        entity: "sleeping task execution",
        key: key.to_owned(),
    }
}

/// Checks a schedule before it is saved.
pub(crate) fn validate_schedule(schedule: &TaskSchedule) -> Result<()> {
    validate_schedule_id(&schedule.schedule_id)?;
    validate_task_id(&schedule.task_id)?;
    Ticks::parse(&schedule.spec).map(|_| ())
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

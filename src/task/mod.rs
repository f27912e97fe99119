//! Durable task executions: the domain, the storage port and its implementations.
//!
//! The [`Executor`](executor::Executor) runs tasks over the storage. The storage rules shared by every implementation (validation, lease expiry, closing) are
//! here, written once.

pub(crate) mod executor;
mod mapper;
mod memory;
mod model;
pub(crate) mod sea_orm;
mod storage;

pub use memory::InMemoryTaskExecutionStorage;
pub use model::{
    ClaimParams, ExecutionError, ExecutionErrorKind, FinishedChildTaskExecution, NewTaskExecution,
    ParentRef, RetryOptions, TaskExecution, TaskExecutionFilter, TaskExecutionGuard,
    TaskExecutionRef, TaskExecutionStatus, TaskExecutionUpdate,
};
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

/// Checks a new execution before anything is written.
pub(crate) fn validate_new(e: &NewTaskExecution) -> Result<()> {
    validate_id("execution_id", &e.execution_id)?;
    validate_task_id(&e.task_id)?;
    if e.timeout_ms <= 0 {
        return Err(Error::InvalidArgument {
            name: "timeout_ms",
            reason: format!("must be positive, got {}", e.timeout_ms),
        });
    }
    Ok(())
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

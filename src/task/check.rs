//! The checks every task storage runs on its arguments before writing, written once, so that
//! the in-memory and the SeaORM storage refuse the same inputs with the same errors. Id and name
//! lengths come from the migration crate, which sizes the columns.

use sea_orm_durable_migration::limit;

use super::model::{self, NewTaskExecution, RetryOptions};
use super::schedule::{TaskSchedule, Ticks};
use crate::dialect::column_len;
use crate::error::{Error, Result};

/// Longest execution id, task id or wake key accepted, in bytes (the columns' length).
pub(crate) const MAX_ID_LEN: usize = column_len(limit::TASK_ID_LEN);

/// Longest queue name, in bytes (the length of the `queue` column).
pub const MAX_QUEUE_LEN: usize = column_len(limit::QUEUE_LEN);

/// Longest schedule id, in bytes: short enough that the id of a tick's execution
/// (`sch_<schedule id>_<tick>`, at most 25 bytes more) fits the execution ids, with room to
/// spare for a longer prefix.
pub const MAX_SCHEDULE_ID_LEN: usize = MAX_ID_LEN - 55;

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

/// Checks that a name is 1 to `max` bytes long.
fn validate_len(name: &'static str, value: &str, max: usize) -> Result<()> {
    if value.is_empty() || value.len() > max {
        return Err(Error::InvalidArgument {
            name,
            reason: format!("must be 1 to {max} bytes, got {}", value.len()),
        });
    }
    Ok(())
}

/// Checks a queue name: not empty, at most [`MAX_QUEUE_LEN`] bytes.
pub(crate) fn validate_queue(queue: &str) -> Result<()> {
    validate_len("queue", queue, MAX_QUEUE_LEN)
}

/// Checks that a time span of `ms` milliseconds lies in `range` (at most 365 days).
fn validate_ms(name: &'static str, ms: i64, range: std::ops::RangeInclusive<i64>) -> Result<()> {
    if !range.contains(&ms) {
        return Err(Error::InvalidArgument {
            name,
            reason: format!(
                "must be {} ms to {} ms (365 days), got {ms} ms",
                range.start(),
                range.end()
            ),
        });
    }
    Ok(())
}

/// Checks a run timeout in milliseconds: positive, at most [`MAX_TIMEOUT`](model::MAX_TIMEOUT).
pub(crate) fn validate_timeout_ms(timeout_ms: i64) -> Result<()> {
    validate_ms("timeout", timeout_ms, 1..=model::MAX_TIMEOUT_MS)
}

/// Checks a delay before the first run in milliseconds: not negative, at most
/// [`MAX_SLEEP_BEFORE_RUN`](model::MAX_SLEEP_BEFORE_RUN).
pub(crate) fn validate_sleep_ms(sleep_ms: i64) -> Result<()> {
    validate_ms("sleep_before_run", sleep_ms, 0..=model::MAX_SLEEP_MS)
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
    validate_timeout_ms(crate::clock::millis(e.timeout))?;
    validate_sleep_ms(crate::clock::millis(e.sleep_before_run))?;
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

/// Checks a schedule id: 1 to [`MAX_SCHEDULE_ID_LEN`] bytes.
pub(crate) fn validate_schedule_id(id: &str) -> Result<()> {
    validate_len("schedule_id", id, MAX_SCHEDULE_ID_LEN)
}

/// Checks a schedule before it is saved.
pub(crate) fn validate_schedule(schedule: &TaskSchedule) -> Result<()> {
    validate_schedule_id(&schedule.schedule_id)?;
    validate_task_id(&schedule.task_id)?;
    Ticks::parse(&schedule.spec).map(|_| ())
}

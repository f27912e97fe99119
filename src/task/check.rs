//! The checks every task storage runs on its arguments before writing, written once, so that
//! the in-memory and the SeaORM storage refuse the same inputs with the same errors. Id and name
//! lengths come from the migration crate, which sizes the columns.

use sea_orm_durable_migration::limit;

use std::borrow::Cow;

use super::model::{
    self, ClaimParams, FinishedChildTaskExecution, NewTaskExecution, RetryOptions,
    TaskExecutionFilter, TaskExecutionGuard,
};
use super::schedule::{ScheduleSpec, TaskSchedule, Ticks};
use crate::dialect::{column_len, text};
use crate::error::{Error, Result};

/// Longest execution id, task id, wake key or executor id accepted, in characters (the
/// columns' length).
pub(crate) const MAX_ID_LEN: usize = column_len(limit::TASK_ID_LEN);

/// Longest queue name, in characters (the length of the `queue` column).
pub const MAX_QUEUE_LEN: usize = column_len(limit::QUEUE_LEN);

/// Longest schedule id, in characters: short enough that the id of a tick's execution
/// (`sch_<schedule id>_<tick>`, at most 25 characters more) fits the execution ids, with room
/// to spare for a longer prefix.
pub const MAX_SCHEDULE_ID_LEN: usize = MAX_ID_LEN - 55;

/// Longest claim id, in characters (the length of the `claim_id` column).
pub(crate) const MAX_CLAIM_ID_LEN: usize = column_len(limit::CLAIM_ID_LEN);

/// Longest cron expression, in characters (the length of the `cron_expression` column).
pub const MAX_CRON_LEN: usize = column_len(limit::CRON_EXPRESSION_LEN);

/// Longest time zone name, in characters (the length of the `time_zone` column).
pub(crate) const MAX_TIME_ZONE_LEN: usize = column_len(limit::TIME_ZONE_LEN);

/// Checks an id: 1 to [`MAX_ID_LEN`] characters, no U+0000.
fn validate_id(name: &'static str, id: &str) -> Result<()> {
    text::check_name(name, id, MAX_ID_LEN)
}

/// Checks an executor id (it is stored with the executions it runs): as any id.
pub(crate) fn validate_executor_id(id: &str) -> Result<()> {
    validate_id("executor_id", id)
}

/// Checks a claim id: 1 to [`MAX_CLAIM_ID_LEN`] characters, no U+0000.
pub(crate) fn validate_claim_id(id: &str) -> Result<()> {
    text::check_name("claim_id", id, MAX_CLAIM_ID_LEN)
}

/// Checks a task id.
pub(crate) fn validate_task_id(id: &str) -> Result<()> {
    validate_id("task_id", id)
}

/// Checks a queue name: 1 to [`MAX_QUEUE_LEN`] characters, no U+0000.
pub(crate) fn validate_queue(queue: &str) -> Result<()> {
    text::check_name("queue", queue, MAX_QUEUE_LEN)
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

/// Checks a wake key: 1 to [`MAX_ID_LEN`] characters, no U+0000.
pub(crate) fn validate_wake_key(key: &str) -> Result<()> {
    validate_id("wake_key", key)
}

/// Checks a schedule id: 1 to [`MAX_SCHEDULE_ID_LEN`] characters, no U+0000.
pub(crate) fn validate_schedule_id(id: &str) -> Result<()> {
    text::check_name("schedule_id", id, MAX_SCHEDULE_ID_LEN)
}

/// Checks a schedule before it is saved.
pub(crate) fn validate_schedule(schedule: &TaskSchedule) -> Result<()> {
    validate_schedule_id(&schedule.schedule_id)?;
    validate_task_id(&schedule.task_id)?;
    if let ScheduleSpec::Cron {
        expression,
        time_zone,
    } = &schedule.spec
    {
        // Checked before parsing: the columns bound them, and croner would accept a longer one.
        text::check_name("cron", expression, MAX_CRON_LEN)?;
        text::check_name("time_zone", time_zone, MAX_TIME_ZONE_LEN)?;
    }
    Ticks::parse(&schedule.spec).map(|_| ())
}

/// Checks the claimer's names: the executor id and the claim id are stored with every
/// execution a claim takes.
pub(crate) fn validate_claim(params: &ClaimParams) -> Result<()> {
    validate_executor_id(&params.executor_id)?;
    if let Some(id) = &params.claim_id {
        validate_claim_id(id)?;
    }
    Ok(())
}

/// Checks a finished-child record before it is written.
pub(crate) fn validate_finished_child(c: &FinishedChildTaskExecution) -> Result<()> {
    validate_id("parent_execution_id", &c.parent_execution_id)?;
    validate_id("child_execution_id", &c.child_execution_id)?;
    validate_task_id(&c.child_task_id)?;
    if i32::try_from(c.index).is_err() {
        return Err(Error::invalid(
            "index",
            format!("at most {}, got {}", i32::MAX, c.index),
        ));
    }
    Ok(())
}

/// Whether any name in `names` cannot be stored.
fn any_unstorable(names: Option<&Vec<String>>) -> bool {
    names.is_some_and(|names| names.iter().any(|n| !text::storable(n)))
}

/// `names` without those no storage can hold (they match nothing; an emptied list matches
/// nothing, as an empty list does).
fn storable_only(names: &mut Option<Vec<String>>) {
    if let Some(names) = names {
        names.retain(|n| text::storable(n));
    }
}

/// The filter to send to a database: `None` when it can match nothing because a single-valued
/// name in it cannot be stored; lists keep their storable names. Borrowed when nothing changes.
pub(crate) fn storable_filter(
    filter: &TaskExecutionFilter,
) -> Option<Cow<'_, TaskExecutionFilter>> {
    let single = [&filter.parent_execution_id, &filter.wake_key];
    if single
        .iter()
        .any(|name| name.as_deref().is_some_and(|n| !text::storable(n)))
    {
        return None;
    }
    let lists = [&filter.execution_ids, &filter.task_ids, &filter.queues];
    let cursor_unstorable = filter
        .after
        .as_ref()
        .is_some_and(|c| !text::storable(&c.execution_id));
    if !cursor_unstorable && !lists.iter().any(|list| any_unstorable(list.as_ref())) {
        return Some(Cow::Borrowed(filter));
    }
    let mut filter = filter.clone();
    // No stored id holds U+0000, so the ids after `a\0b` are those after `a`: the prefix
    // before the first U+0000 selects the same rows and can be sent.
    if let Some(cursor) = filter.after.as_mut()
        && let Some(at) = cursor.execution_id.find('\0')
    {
        cursor.execution_id.truncate(at);
    }
    storable_only(&mut filter.execution_ids);
    storable_only(&mut filter.task_ids);
    storable_only(&mut filter.queues);
    Some(Cow::Owned(filter))
}

/// The claim to send to a database: its task and queue lists keep their storable names.
pub(crate) fn storable_claim(params: &ClaimParams) -> Cow<'_, ClaimParams> {
    if !any_unstorable(params.task_ids.as_ref()) && !any_unstorable(params.queues.as_ref()) {
        return Cow::Borrowed(params);
    }
    let mut params = params.clone();
    storable_only(&mut params.task_ids);
    storable_only(&mut params.queues);
    Cow::Owned(params)
}

/// The guard to send to a database: its ids keep the storable ones.
pub(crate) fn storable_guard(guard: &TaskExecutionGuard) -> Cow<'_, TaskExecutionGuard> {
    if guard.execution_ids.iter().all(|id| text::storable(id)) {
        return Cow::Borrowed(guard);
    }
    let mut guard = guard.clone();
    guard.execution_ids.retain(|id| text::storable(id));
    Cow::Owned(guard)
}

/// `ids` without those no storage can hold.
pub(crate) fn storable_ids(ids: &[String]) -> Cow<'_, [String]> {
    if ids.iter().all(|id| text::storable(id)) {
        return Cow::Borrowed(ids);
    }
    Cow::Owned(
        ids.iter()
            .filter(|id| text::storable(id))
            .cloned()
            .collect(),
    )
}

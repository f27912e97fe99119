//! Rows of `durable_task_executions` and `durable_finished_child_task_executions` to domain
//! values and back.
//!
//! The only module that knows both the entities and the domain types. Every conversion is
//! checked: a stored value the domain cannot hold (an unknown status, malformed JSON, a negative
//! counter, half of a reference) is an [`Error::CorruptRow`] naming the table, the row and the
//! column, never a panic.

use crate::dialect::text;
use sea_orm::{FromQueryResult, QueryResult};
use sea_orm_durable_entity::{
    finished_child_task_executions as fc, task_executions as te, task_schedules as ts,
};

use super::schedule::{ScheduleSpec, TaskSchedule};
use serde::de::DeserializeOwned;

use super::model::{
    ExecutionError, FinishedChildTaskExecution, ParentRef, RetryOptions, TaskExecution,
    TaskExecutionRef, TaskExecutionStatus,
};
use std::time::Duration;

use crate::clock::millis;
use crate::error::{Error, Result};

/// The table of task executions.
pub(crate) const EXECUTIONS: &str = "durable_task_executions";
/// The table of finished-child records.
pub(crate) const FINISHED_CHILDREN: &str = "durable_finished_child_task_executions";

/// Builds [`Error::CorruptRow`] for one column of one row.
struct Row<'a> {
    table: &'static str,
    key: &'a str,
}

impl Row<'_> {
    fn corrupt(&self, column: &'static str, reason: impl Into<String>) -> Error {
        Error::CorruptRow {
            table: self.table,
            key: self.key.to_owned(),
            column,
            reason: reason.into(),
        }
    }

    fn count(&self, column: &'static str, value: i32) -> Result<u32> {
        u32::try_from(value).map_err(|_| self.corrupt(column, format!("negative value {value}")))
    }

    /// A number that must lie within `min..=max` (the limits enqueue checks).
    fn within(&self, column: &'static str, value: i64, min: i64, max: i64) -> Result<i64> {
        if (min..=max).contains(&value) {
            Ok(value)
        } else {
            Err(self.corrupt(column, format!("{value} is outside {min}..={max}")))
        }
    }

    /// Milliseconds within `min..=max` (`min >= 0`) as a duration.
    fn duration(&self, column: &'static str, value: i64, min: i64, max: i64) -> Result<Duration> {
        let ms = self.within(column, value, min, max)?;
        crate::clock::from_millis(ms)
            .ok_or_else(|| self.corrupt(column, format!("{ms} is negative")))
    }

    fn status(&self, column: &'static str, value: &str) -> Result<TaskExecutionStatus> {
        value
            .parse()
            .map_err(|e: crate::error::UnknownStatus| self.corrupt(column, e.to_string()))
    }

    fn json<T: DeserializeOwned>(
        &self,
        column: &'static str,
        value: serde_json::Value,
    ) -> Result<T> {
        serde_json::from_value(value).map_err(|e| self.corrupt(column, e.to_string()))
    }

    /// A reference stored as two nullable columns: both or neither must be set.
    fn pair(
        &self,
        column: &'static str,
        task_id: Option<String>,
        execution_id: Option<String>,
    ) -> Result<Option<(String, String)>> {
        match (task_id, execution_id) {
            (Some(t), Some(e)) => Ok(Some((t, e))),
            (None, None) => Ok(None),
            _ => Err(self.corrupt(
                column,
                "only one of the task id and the execution id is set",
            )),
        }
    }
}

/// Converts a domain count to its `INT` column.
fn int(name: &'static str, value: u32) -> Result<i32> {
    i32::try_from(value).map_err(|_| Error::InvalidArgument {
        name,
        reason: format!("{value} does not fit the column (at most {})", i32::MAX),
    })
}

/// The stored JSON of an execution error.
pub(crate) fn error_json(error: &ExecutionError) -> Result<serde_json::Value> {
    Ok(serde_json::to_value(error)?)
}

/// The row of an execution.
///
/// # Errors
///
/// [`Error::InvalidArgument`] when a count exceeds the `INT` columns.
pub(crate) fn execution_to_model(e: TaskExecution) -> Result<te::Model> {
    let (parent_task_id, parent_execution_id, index_in_parent, is_finalize) = match e.parent {
        Some(p) => (
            Some(p.task_id),
            Some(p.execution_id),
            int("parent.index", p.index)?,
            p.is_finalize,
        ),
        None => (None, None, 0, false),
    };
    let (root_task_id, root_execution_id) = match e.root {
        Some(r) => (Some(r.task_id), Some(r.execution_id)),
        None => (None, None),
    };
    let (finalize_task_id, finalize_execution_id) = match e.finalize {
        Some(f) => (Some(f.task_id), Some(f.execution_id)),
        None => (None, None),
    };
    Ok(te::Model {
        // Retries beyond `i32::MAX` are as good as unlimited.
        max_retry_attempts: i32::try_from(e.retry_options.max_attempts).unwrap_or(i32::MAX),
        retry_options: serde_json::to_value(&e.retry_options)?,
        execution_id: e.execution_id,
        task_id: e.task_id,
        queue: e.queue,
        // Set only while sleeping: the unique index then holds each key once among sleepers.
        sleeping_key: e
            .wake_key
            .clone()
            .filter(|_| e.status == TaskExecutionStatus::Sleeping),
        wake_key: e.wake_key,
        root_task_id,
        root_execution_id,
        parent_task_id,
        parent_execution_id,
        index_in_parent,
        is_finalize,
        sleep_ms_before_run: millis(e.sleep_before_run),
        timeout_ms: millis(e.timeout),
        status: e.status.as_str().to_owned(),
        is_finished: e.is_finished,
        input: text::encode_owned(e.input),
        run_output: text::encode_opt(e.run_output),
        output: text::encode_opt(e.output),
        error: e.error.as_ref().map(error_json).transpose()?,
        executor_id: e.executor_id,
        fencing_token: e.fencing_token,
        claim_id: e.claim_id,
        cancel_requested: e.cancel_requested,
        retry_attempts: int("retry_attempts", e.retry_attempts)?,
        start_at: e.start_at,
        started_at: e.started_at,
        expires_at: e.expires_at,
        finished_at: e.finished_at,
        children_count: int("children_count", e.children_count)?,
        finished_children_count: int("finished_children_count", e.finished_children_count)?,
        failed_children_count: int("failed_children_count", e.failed_children_count)?,
        finalize_task_id,
        finalize_execution_id,
        is_closed: e.is_closed,
        closed_at: e.closed_at,
        created_at: e.created_at,
        updated_at: e.updated_at,
        progress: text::encode_opt(e.progress),
    })
}

/// The execution a row holds.
///
/// # Errors
///
/// [`Error::CorruptRow`] when a column holds a value the domain cannot.
pub(crate) fn execution_from_model(m: te::Model) -> Result<TaskExecution> {
    let row = Row {
        table: EXECUTIONS,
        key: &m.execution_id,
    };
    let status = row.status("status", &m.status)?;
    let retry_options: RetryOptions = row.json("retry_options", m.retry_options)?;
    let error = match m.error {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(row.json::<ExecutionError>("error", v)?),
    };
    let root = row
        .pair("root_execution_id", m.root_task_id, m.root_execution_id)?
        .map(|(task_id, execution_id)| TaskExecutionRef {
            task_id,
            execution_id,
        });
    let parent = match row.pair(
        "parent_execution_id",
        m.parent_task_id,
        m.parent_execution_id,
    )? {
        Some((task_id, execution_id)) => Some(ParentRef {
            task_id,
            execution_id,
            index: row.count("index_in_parent", m.index_in_parent)?,
            is_finalize: m.is_finalize,
        }),
        None => None,
    };
    let finalize = row
        .pair(
            "finalize_execution_id",
            m.finalize_task_id,
            m.finalize_execution_id,
        )?
        .map(|(task_id, execution_id)| TaskExecutionRef {
            task_id,
            execution_id,
        });
    Ok(TaskExecution {
        retry_attempts: row.count("retry_attempts", m.retry_attempts)?,
        children_count: row.count("children_count", m.children_count)?,
        finished_children_count: row.count("finished_children_count", m.finished_children_count)?,
        failed_children_count: row.count("failed_children_count", m.failed_children_count)?,
        sleep_before_run: row.duration(
            "sleep_ms_before_run",
            m.sleep_ms_before_run,
            0,
            super::model::MAX_SLEEP_MS,
        )?,
        timeout: row.duration("timeout_ms", m.timeout_ms, 1, super::model::MAX_TIMEOUT_MS)?,
        execution_id: m.execution_id,
        task_id: m.task_id,
        queue: m.queue,
        wake_key: m.wake_key,
        root,
        parent,
        retry_options,
        status,
        is_finished: m.is_finished,
        input: text::decode(m.input),
        run_output: text::decode_opt(m.run_output),
        output: text::decode_opt(m.output),
        error,
        executor_id: m.executor_id,
        fencing_token: m.fencing_token,
        claim_id: m.claim_id,
        cancel_requested: m.cancel_requested,
        start_at: m.start_at,
        started_at: m.started_at,
        expires_at: m.expires_at,
        finished_at: m.finished_at,
        finalize,
        is_closed: m.is_closed,
        closed_at: m.closed_at,
        created_at: m.created_at,
        updated_at: m.updated_at,
        progress: text::decode_opt(m.progress),
    })
}

/// Finds the first column of a row that does not decode, for an error that names it.
macro_rules! first_undecodable {
    ($row:expr, $($column:ident: $ty:ty),* $(,)?) => {{
        let row: &QueryResult = $row;
        let mut found: Option<(&'static str, String)> = None;
        $(
            if found.is_none() {
                if let Err(e) = row.try_get::<$ty>("", stringify!($column)) {
                    found = Some((stringify!($column), e.to_string()));
                }
            }
        )*
        found
    }};
}

/// The execution in a raw result row (`SELECT *`, `RETURNING *`).
///
/// # Errors
///
/// [`Error::CorruptRow`] when a column does not decode (malformed JSON in SQLite, which does not
/// validate it) or holds a value the domain cannot.
pub(crate) fn execution_from_row(row: &QueryResult) -> Result<TaskExecution> {
    match te::Model::from_query_result(row, "") {
        Ok(m) => execution_from_model(m),
        Err(err) => {
            let key = row
                .try_get::<String>("", "execution_id")
                .unwrap_or_else(|_| "<unreadable>".to_owned());
            let (column, reason) = first_undecodable!(
                row,
                execution_id: String,
                task_id: String,
                queue: String,
                wake_key: Option<String>,
                sleeping_key: Option<String>,
                root_task_id: Option<String>,
                root_execution_id: Option<String>,
                parent_task_id: Option<String>,
                parent_execution_id: Option<String>,
                index_in_parent: i32,
                is_finalize: bool,
                retry_options: serde_json::Value,
                max_retry_attempts: i32,
                sleep_ms_before_run: i64,
                timeout_ms: i64,
                status: String,
                is_finished: bool,
                input: String,
                run_output: Option<String>,
                output: Option<String>,
                error: Option<serde_json::Value>,
                executor_id: Option<String>,
                fencing_token: i64,
                claim_id: Option<String>,
                cancel_requested: bool,
                retry_attempts: i32,
                start_at: i64,
                started_at: Option<i64>,
                expires_at: Option<i64>,
                finished_at: Option<i64>,
                children_count: i32,
                finished_children_count: i32,
                failed_children_count: i32,
                finalize_task_id: Option<String>,
                finalize_execution_id: Option<String>,
                is_closed: bool,
                closed_at: Option<i64>,
                created_at: i64,
                updated_at: i64,
                progress: Option<String>,
            )
            .unwrap_or(("<row>", err.to_string()));
            Err(Row {
                table: EXECUTIONS,
                key: &key,
            }
            .corrupt(column, reason))
        }
    }
}

/// The row of a finished-child record.
///
/// # Errors
///
/// [`Error::InvalidArgument`] when the index exceeds the `INT` column.
pub(crate) fn finished_child_to_model(c: FinishedChildTaskExecution) -> Result<fc::Model> {
    Ok(fc::Model {
        child_index: int("index", c.index)?,
        status: c.status.as_str().to_owned(),
        error: c.error.as_ref().map(error_json).transpose()?,
        parent_execution_id: c.parent_execution_id,
        child_execution_id: c.child_execution_id,
        child_task_id: c.child_task_id,
        output: text::encode_opt(c.output),
        created_at: c.created_at,
    })
}

/// The finished-child record a row holds.
///
/// # Errors
///
/// [`Error::CorruptRow`] when a column holds a value the domain cannot.
pub(crate) fn finished_child_from_model(m: fc::Model) -> Result<FinishedChildTaskExecution> {
    let key = format!("{}/{}", m.parent_execution_id, m.child_execution_id);
    let row = Row {
        table: FINISHED_CHILDREN,
        key: &key,
    };
    let error = match m.error {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(row.json::<ExecutionError>("error", v)?),
    };
    Ok(FinishedChildTaskExecution {
        index: row.count("child_index", m.child_index)?,
        status: row.status("status", &m.status)?,
        error,
        parent_execution_id: m.parent_execution_id,
        child_execution_id: m.child_execution_id,
        child_task_id: m.child_task_id,
        output: text::decode_opt(m.output),
        created_at: m.created_at,
    })
}

/// The finished-child record in a raw result row.
///
/// # Errors
///
/// [`Error::CorruptRow`] when a column does not decode or holds a value the domain cannot.
pub(crate) fn finished_child_from_row(row: &QueryResult) -> Result<FinishedChildTaskExecution> {
    match fc::Model::from_query_result(row, "") {
        Ok(m) => finished_child_from_model(m),
        Err(err) => {
            let parent = row
                .try_get::<String>("", "parent_execution_id")
                .unwrap_or_else(|_| "<unreadable>".to_owned());
            let child = row
                .try_get::<String>("", "child_execution_id")
                .unwrap_or_else(|_| "<unreadable>".to_owned());
            let (column, reason) = first_undecodable!(
                row,
                child_task_id: String,
                child_index: i32,
                status: String,
                output: Option<String>,
                error: Option<serde_json::Value>,
                created_at: i64,
            )
            .unwrap_or(("<row>", err.to_string()));
            Err(Row {
                table: FINISHED_CHILDREN,
                key: &format!("{parent}/{child}"),
            }
            .corrupt(column, reason))
        }
    }
}

/// The table of periodic schedules.
pub(crate) const SCHEDULES: &str = "durable_task_schedules";

/// The row of a schedule.
pub(crate) fn schedule_to_model(s: TaskSchedule) -> ts::Model {
    let (cron_expression, time_zone, interval_ms) = match s.spec {
        ScheduleSpec::Cron {
            expression,
            time_zone,
        } => (Some(expression), Some(time_zone), None),
        ScheduleSpec::Interval { every_ms } => (None, None, Some(every_ms)),
    };
    ts::Model {
        schedule_id: s.schedule_id,
        task_id: s.task_id,
        input: text::encode_owned(s.input),
        cron_expression,
        time_zone,
        interval_ms,
        missed_ticks: s.missed_ticks.as_str().to_owned(),
        next_tick_at: s.next_tick_at.unwrap_or(ENDED_SCHEDULE_TICK),
        last_tick_at: s.last_tick_at,
        created_at: s.created_at,
        updated_at: s.updated_at,
    }
}

/// The `next_tick_at` stored for a schedule that has ended: past every `now`, so the due-schedule
/// query and its index pass over it without a condition of their own.
pub(crate) const ENDED_SCHEDULE_TICK: i64 = i64::MAX;

/// The schedule a row holds.
///
/// # Errors
///
/// [`Error::CorruptRow`] when the row holds neither a cron expression with its time zone nor
/// an interval, or an unknown missed-ticks policy.
pub(crate) fn schedule_from_model(m: ts::Model) -> Result<TaskSchedule> {
    let row = Row {
        table: SCHEDULES,
        key: &m.schedule_id,
    };
    let spec = match (m.cron_expression, m.time_zone, m.interval_ms) {
        (Some(expression), Some(time_zone), None) => ScheduleSpec::Cron {
            expression,
            time_zone,
        },
        (None, None, Some(every_ms)) => ScheduleSpec::Interval { every_ms },
        _ => {
            return Err(row.corrupt(
                "cron_expression",
                "expected a cron expression with its time zone, or an interval",
            ));
        }
    };
    let missed_ticks = m
        .missed_ticks
        .parse()
        .map_err(|e: crate::error::UnknownStatus| row.corrupt("missed_ticks", e.to_string()))?;
    Ok(TaskSchedule {
        schedule_id: m.schedule_id,
        task_id: m.task_id,
        input: text::decode(m.input),
        spec,
        missed_ticks,
        next_tick_at: (m.next_tick_at != ENDED_SCHEDULE_TICK).then_some(m.next_tick_at),
        last_tick_at: m.last_tick_at,
        created_at: m.created_at,
        updated_at: m.updated_at,
    })
}

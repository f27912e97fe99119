//! Rows of the batch tables to domain values and back.
//!
//! The only module that knows both the entities and the domain types. Numbers are converted
//! with checks, and a value that does not fit, a status string the domain does not know or a
//! JSON column that does not parse becomes [`Error::CorruptRow`] naming the table, the row's
//! key and the column, never a panic.
//!
//! Job and record rows are read column by column from the raw [`QueryResult`] rather than
//! through the entity's derived `Model`, because a JSON column that does not decode would
//! otherwise fail the whole query without saying which row and column it was.

use std::fmt::Display;
use std::str::FromStr;

use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::Expr;
use sea_orm::{DbBackend, JsonValue, QueryResult, TryGetable};
use sea_orm_durable_entity::{
    batchactions_batches as batches, batchactions_jobs as jobs, batchactions_records as records,
};

use super::check;
use super::model::{
    Batch, BatchReservation, BatchStatus, JobConfig, JobState, JobStatus, ProcessedRecord,
    RecordStatus, ValidationError,
};
use crate::dialect::{self, text};
use crate::error::{Error, Result};

/// Table name of job rows.
pub(crate) const JOBS: &str = "batchactions_jobs";
/// Table name of batch rows.
pub(crate) const BATCHES: &str = "batchactions_batches";
/// Table name of record rows.
pub(crate) const RECORDS: &str = "batchactions_records";

/// Reads column `column` of `row`; a value that cannot be decoded is a corrupt row.
fn column<T: TryGetable>(
    row: &QueryResult,
    table: &'static str,
    key: &dyn Fn() -> String,
    column: &'static str,
) -> Result<T> {
    row.try_get::<T>("", column)
        .map_err(|e| Error::corrupt(table, key(), column, e))
}

/// Parses a stored status string.
fn status<T>(
    table: &'static str,
    key: &dyn Fn() -> String,
    column: &'static str,
    value: &str,
) -> Result<T>
where
    T: FromStr,
    T::Err: Display,
{
    value
        .parse()
        .map_err(|e| Error::corrupt(table, key(), column, e))
}

/// Converts a stored `BIGINT` that must not be negative.
fn unsigned(
    table: &'static str,
    key: &dyn Fn() -> String,
    column: &'static str,
    value: i64,
) -> Result<u64> {
    u64::try_from(value)
        .map_err(|_| Error::corrupt(table, key(), column, format!("{value} is negative")))
}

/// The columns of a job row, in the order [`job_values`] gives their values.
pub(crate) const JOB_COLUMNS: [jobs::Column; 10] = [
    jobs::Column::Id,
    jobs::Column::Status,
    jobs::Column::Config,
    jobs::Column::Batches,
    jobs::Column::TotalRecords,
    jobs::Column::StartedAt,
    jobs::Column::CompletedAt,
    jobs::Column::Distributed,
    jobs::Column::CreatedAt,
    jobs::Column::UpdatedAt,
];

/// The values of the row to write for `job` at `now` (`created_at` only counts on the first
/// insert), JSON written as [`dialect::json_expr`] says for `backend`.
///
/// A distributed job's batches live in their own rows, so its `batches` column is an empty
/// array rather than a second copy that could disagree with them.
pub(crate) fn job_values(backend: DbBackend, job: &JobState, now: i64) -> Result<Vec<Expr>> {
    let batches = if job.distributed {
        JsonValue::Array(Vec::new())
    } else {
        serde_json::to_value(&job.batches)?
    };
    Ok(vec![
        Expr::val(job.id.clone()),
        Expr::val(job.status.as_str()),
        dialect::json_expr(backend, &serde_json::to_value(&job.config)?),
        dialect::json_expr(backend, &batches),
        Expr::val(check::fits_i64("job.total_records", job.total_records)?),
        Expr::val(job.started_at),
        Expr::val(job.completed_at),
        Expr::val(job.distributed),
        Expr::val(now),
        Expr::val(now),
    ])
}

/// The columns of a job row, checked, with the batch list left as JSON (only a
/// non-distributed job's list is read from it).
pub(crate) struct JobRow {
    /// The job, with no batches yet.
    pub(crate) job: JobState,
    batches: JsonValue,
}

impl JobRow {
    /// Reads the job columns of `row`. With `with_config` false the configuration is not
    /// parsed (a default one is filled in), for reads that do not need it.
    pub(crate) fn read(row: &QueryResult, with_config: bool) -> Result<Self> {
        let id: String = row.try_get("", "id")?;
        let key = || id.clone();
        let key: &dyn Fn() -> String = &key;
        let status_text: String = column(row, JOBS, key, "status")?;
        let config = if with_config {
            let value: JsonValue = column(row, JOBS, key, "config")?;
            serde_json::from_value::<JobConfig>(value)
                .map_err(|e| Error::corrupt(JOBS, key(), "config", e))?
        } else {
            JobConfig::new(1)
        };
        let total_records: i64 = column(row, JOBS, key, "total_records")?;
        let job = JobState {
            status: status(JOBS, key, "status", &status_text)?,
            config,
            batches: Vec::new(),
            total_records: unsigned(JOBS, key, "total_records", total_records)?,
            started_at: column(row, JOBS, key, "started_at")?,
            completed_at: column(row, JOBS, key, "completed_at")?,
            distributed: column(row, JOBS, key, "distributed")?,
            id: id.clone(),
        };
        let batches = if job.distributed {
            JsonValue::Null
        } else {
            column(row, JOBS, key, "batches")?
        };
        Ok(Self { job, batches })
    }

    /// The batch list stored in the job row (non-distributed jobs).
    pub(crate) fn stored_batches(&self) -> Result<Vec<Batch>> {
        serde_json::from_value(self.batches.clone())
            .map_err(|e| Error::corrupt(JOBS, self.job.id.clone(), "batches", e))
    }
}

/// The row to insert for a new batch of distributed job `job_id`.
pub(crate) fn batch_to_model(
    job_id: &str,
    batch: &Batch,
    now: i64,
) -> Result<batches::ActiveModel> {
    let index = i32::try_from(batch.index)
        .map_err(|_| Error::invalid("batch.index", format!("{} exceeds i32::MAX", batch.index)))?;
    let start = batch.record_start_index.unwrap_or(0);
    let end = batch.record_end_index.unwrap_or(start);
    // A batch saved as PROCESSING starts its staleness clock at its claim (or now).
    let heartbeat_at =
        (batch.status == BatchStatus::Processing).then(|| batch.claimed_at.unwrap_or(now));
    Ok(batches::ActiveModel {
        id: Set(batch.id.clone()),
        job_id: Set(job_id.to_owned()),
        batch_index: Set(index),
        status: Set(batch.status.as_str().to_owned()),
        worker_id: Set(batch.worker_id.clone()),
        claimed_at: Set(batch.claimed_at),
        heartbeat_at: Set(heartbeat_at),
        record_start_index: Set(check::fits_i64("batch.record_start_index", start)?),
        record_end_index: Set(check::fits_i64("batch.record_end_index", end)?),
        processed_count: Set(check::fits_i64(
            "batch.processed_count",
            batch.processed_count,
        )?),
        failed_count: Set(check::fits_i64("batch.failed_count", batch.failed_count)?),
        version: Set(0),
        created_at: Set(now),
        updated_at: Set(now),
        completed_at: Set(batch.status.is_terminal().then_some(now)),
        // Left to the column's default (NULL): a new batch has no claim, and the insert keeps
        // 15 columns a row.
        claim_id: sea_orm::ActiveValue::NotSet,
    })
}

/// The batch row of a raw query result, each column read with a check, so that a value that
/// cannot be decoded is a corrupt row naming its column (and not a failed query).
pub(crate) fn batch_model_from_row(row: &QueryResult) -> Result<batches::Model> {
    let id: String = row.try_get("", "id")?;
    let key = || id.clone();
    let key: &dyn Fn() -> String = &key;
    Ok(batches::Model {
        job_id: column(row, BATCHES, key, "job_id")?,
        batch_index: column(row, BATCHES, key, "batch_index")?,
        status: column(row, BATCHES, key, "status")?,
        worker_id: column(row, BATCHES, key, "worker_id")?,
        claimed_at: column(row, BATCHES, key, "claimed_at")?,
        heartbeat_at: column(row, BATCHES, key, "heartbeat_at")?,
        record_start_index: column(row, BATCHES, key, "record_start_index")?,
        record_end_index: column(row, BATCHES, key, "record_end_index")?,
        processed_count: column(row, BATCHES, key, "processed_count")?,
        failed_count: column(row, BATCHES, key, "failed_count")?,
        version: column(row, BATCHES, key, "version")?,
        created_at: column(row, BATCHES, key, "created_at")?,
        updated_at: column(row, BATCHES, key, "updated_at")?,
        completed_at: column(row, BATCHES, key, "completed_at")?,
        claim_id: column(row, BATCHES, key, "claim_id")?,
        id: id.clone(),
    })
}

/// The batch of a batch row.
pub(crate) fn batch_from_model(model: &batches::Model) -> Result<Batch> {
    let key = || model.id.clone();
    let key: &dyn Fn() -> String = &key;
    Ok(Batch {
        id: model.id.clone(),
        index: u32::try_from(model.batch_index).map_err(|_| {
            Error::corrupt(
                BATCHES,
                key(),
                "batch_index",
                format!("{} is negative", model.batch_index),
            )
        })?,
        status: status(BATCHES, key, "status", &model.status)?,
        processed_count: unsigned(BATCHES, key, "processed_count", model.processed_count)?,
        failed_count: unsigned(BATCHES, key, "failed_count", model.failed_count)?,
        worker_id: model.worker_id.clone(),
        claimed_at: model.claimed_at,
        record_start_index: Some(unsigned(
            BATCHES,
            key,
            "record_start_index",
            model.record_start_index,
        )?),
        record_end_index: Some(unsigned(
            BATCHES,
            key,
            "record_end_index",
            model.record_end_index,
        )?),
    })
}

/// The reservation of a batch row just claimed by `worker_id` at `now`, whose version was
/// `model.version` before the claim bumped it.
pub(crate) fn reservation_from_model(
    model: &batches::Model,
    worker_id: &str,
    now: i64,
) -> Result<BatchReservation> {
    let batch = batch_from_model(model)?;
    Ok(BatchReservation {
        job_id: model.job_id.clone(),
        batch_id: batch.id,
        batch_index: batch.index,
        worker_id: worker_id.to_owned(),
        claimed_at: now,
        record_start_index: batch.record_start_index.unwrap_or(0),
        record_end_index: batch.record_end_index.unwrap_or(0),
        version: crate::dialect::next_token(model.version),
    })
}

/// The columns of a record row, in the order [`record_values`] gives their values.
pub(crate) const RECORD_COLUMNS: [records::Column; 10] = [
    records::Column::JobId,
    records::Column::RecordIndex,
    records::Column::BatchId,
    records::Column::Status,
    records::Column::Raw,
    records::Column::Parsed,
    records::Column::Errors,
    records::Column::ProcessingError,
    records::Column::RetryCount,
    records::Column::UpdatedAt,
];

/// The values of the row to write for `record` of `job_id`, written for `batch_id` at `now`.
pub(crate) fn record_values(
    backend: DbBackend,
    job_id: &str,
    batch_id: &str,
    record: &ProcessedRecord,
    now: i64,
) -> Result<Vec<Expr>> {
    let retry_count = i32::try_from(record.retry_count).map_err(|_| {
        Error::invalid(
            "record.retry_count",
            format!("{} exceeds i32::MAX", record.retry_count),
        )
    })?;
    Ok(vec![
        Expr::val(job_id.to_owned()),
        Expr::val(check::fits_i64("record.index", record.index)?),
        Expr::val(batch_id.to_owned()),
        Expr::val(record.status.as_str()),
        dialect::json_expr(backend, &record.raw),
        dialect::json_expr(backend, &record.parsed),
        dialect::json_expr(backend, &serde_json::to_value(&record.errors)?),
        Expr::val(text::encode_opt(record.processing_error.clone())),
        Expr::val(retry_count),
        Expr::val(now),
    ])
}

/// The reservation a batch row still `PROCESSING` under `worker_id` stands for: a claim
/// taken earlier, found again by its claim id.
pub(crate) fn held_reservation(
    model: &batches::Model,
    worker_id: &str,
) -> Result<BatchReservation> {
    let batch = batch_from_model(model)?;
    Ok(BatchReservation {
        job_id: model.job_id.clone(),
        batch_id: batch.id,
        batch_index: batch.index,
        worker_id: model
            .worker_id
            .clone()
            .unwrap_or_else(|| worker_id.to_owned()),
        claimed_at: model.claimed_at.unwrap_or(model.updated_at),
        record_start_index: batch.record_start_index.unwrap_or(0),
        record_end_index: batch.record_end_index.unwrap_or(0),
        version: model.version,
    })
}

/// The record of a record row.
pub(crate) fn record_from_row(row: &QueryResult) -> Result<ProcessedRecord> {
    let job_id: String = row.try_get("", "job_id")?;
    let stored_index: i64 = row.try_get("", "record_index")?;
    let key = || format!("job_id={job_id}, record_index={stored_index}");
    let key: &dyn Fn() -> String = &key;
    let status_text: String = column(row, RECORDS, key, "status")?;
    let errors: JsonValue = column(row, RECORDS, key, "errors")?;
    let retry_count: i32 = column(row, RECORDS, key, "retry_count")?;
    Ok(ProcessedRecord {
        index: unsigned(RECORDS, key, "record_index", stored_index)?,
        raw: column(row, RECORDS, key, "raw")?,
        parsed: column(row, RECORDS, key, "parsed")?,
        status: status::<RecordStatus>(RECORDS, key, "status", &status_text)?,
        errors: serde_json::from_value::<Vec<ValidationError>>(errors)
            .map_err(|e| Error::corrupt(RECORDS, key(), "errors", e))?,
        processing_error: text::decode_opt(column(row, RECORDS, key, "processing_error")?),
        retry_count: u32::try_from(retry_count).map_err(|_| {
            Error::corrupt(
                RECORDS,
                key(),
                "retry_count",
                format!("{retry_count} is negative"),
            )
        })?,
    })
}

/// A stored job status, for code that reads only the status column.
pub(crate) fn job_status(job_id: &str, value: &str) -> Result<JobStatus> {
    status(JOBS, &|| job_id.to_owned(), "status", value)
}

/// A rough count of the bytes `value` takes when serialized, to keep statements under the
/// server's packet limit.
pub(crate) fn json_size(value: &JsonValue) -> usize {
    match value {
        JsonValue::Null | JsonValue::Bool(_) => 5,
        JsonValue::Number(_) => 24,
        JsonValue::String(s) => s.len() + 2,
        JsonValue::Array(items) => items.iter().map(json_size).sum::<usize>() + items.len() + 2,
        JsonValue::Object(map) => {
            map.iter()
                .map(|(k, v)| k.len() + 4 + json_size(v))
                .sum::<usize>()
                + 2
        }
    }
}

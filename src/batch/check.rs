//! The rules every batch store follows, written once so that the in-memory and the SeaORM
//! store agree: the argument checks (id lengths come from the migration crate, which sizes the
//! columns) and when a claim is stale.

use std::collections::HashSet;
use std::time::Duration;

use sea_orm_durable_migration::limit;

use super::model::{JobState, ProcessedRecord};
use crate::dialect::{column_len, text};
use crate::error::{Error, Result};

/// Longest id the tables hold, in characters.
pub(crate) const MAX_ID_LEN: usize = column_len(limit::BATCH_ID_LEN);

/// The longest job id [`prepare`](crate::prepare) accepts, in characters: the ids it derives
/// for the job's batches (`{job_id}-b{index}`, the index a `u32`) must fit the ids every store
/// holds.
pub const MAX_PREPARED_JOB_ID_LEN: usize = MAX_ID_LEN - "-b4294967295".len();

/// Rejects an empty id, one longer than [`MAX_ID_LEN`] characters, or one holding U+0000.
pub(crate) fn id(name: &'static str, value: &str) -> Result<()> {
    text::check_name(name, value, MAX_ID_LEN)
}

/// Longest claim or finalizer id the tables hold, in characters.
pub(crate) const MAX_CLAIM_ID_LEN: usize = column_len(limit::CLAIM_ID_LEN);

/// Rejects an empty claim or finalizer id, one longer than [`MAX_CLAIM_ID_LEN`] characters, or
/// one holding U+0000.
pub(crate) fn claim_id(name: &'static str, value: &str) -> Result<()> {
    text::check_name(name, value, MAX_CLAIM_ID_LEN)
}

/// Rejects the arguments of a batch claim: empty ids, ids too long.
pub(crate) fn claim_args(job_id: &str, worker_id: &str, claim_id: &str) -> Result<()> {
    id("job_id", job_id)?;
    id("worker_id", worker_id)?;
    self::claim_id("claim_id", claim_id)
}

/// Rejects a job that cannot be saved.
///
/// A distributed job's batches become rows claimed by index and read by record range, so each
/// needs a unique id, a unique index, and a record range `start <= end`.
pub(crate) fn job(job: &JobState) -> Result<()> {
    id("job.id", &job.id)?;
    if job.config.batch_size == 0 {
        return Err(Error::invalid(
            "job.config.batch_size",
            "must be at least 1",
        ));
    }
    fits_i64("job.total_records", job.total_records)?;
    for batch in &job.batches {
        fits_i64("job.batches[].processed_count", batch.processed_count)?;
        fits_i64("job.batches[].failed_count", batch.failed_count)?;
        for index in [batch.record_start_index, batch.record_end_index]
            .into_iter()
            .flatten()
        {
            fits_i64("job.batches[].record_start_index", index)?;
        }
    }
    if !job.distributed {
        return Ok(());
    }
    let mut ids = HashSet::with_capacity(job.batches.len());
    let mut indexes = HashSet::with_capacity(job.batches.len());
    for batch in &job.batches {
        id("job.batches[].id", &batch.id)?;
        if i32::try_from(batch.index).is_err() {
            return Err(Error::invalid(
                "job.batches[].index",
                format!("{} does not fit in 31 bits", batch.index),
            ));
        }
        if !ids.insert(batch.id.as_str()) {
            return Err(Error::invalid(
                "job.batches[].id",
                format!("batch id {} appears twice", batch.id),
            ));
        }
        if !indexes.insert(batch.index) {
            return Err(Error::invalid(
                "job.batches[].index",
                format!("batch index {} appears twice", batch.index),
            ));
        }
        match (batch.record_start_index, batch.record_end_index) {
            (Some(start), Some(end)) if start <= end => {}
            (Some(_), Some(_)) => {
                return Err(Error::invalid(
                    "job.batches[].record_start_index",
                    format!("batch {} starts after it ends", batch.id),
                ));
            }
            _ => {
                return Err(Error::invalid(
                    "job.batches[].record_start_index",
                    format!("distributed batch {} has no record range", batch.id),
                ));
            }
        }
    }
    Ok(())
}

/// Rejects a number that does not fit the `BIGINT` column it is stored in.
pub(crate) fn fits_i64(name: &'static str, value: u64) -> Result<i64> {
    i64::try_from(value).map_err(|_| Error::invalid(name, format!("{value} exceeds i64::MAX")))
}

/// Rejects empty ids and records that do not fit their columns: the arguments of a record
/// write.
pub(crate) fn record_args(job_id: &str, batch_id: &str, records: &[ProcessedRecord]) -> Result<()> {
    id("job_id", job_id)?;
    id("batch_id", batch_id)?;
    self::records(records)
}

/// Rejects records whose index or retry count do not fit their columns.
pub(crate) fn records(records: &[ProcessedRecord]) -> Result<()> {
    for record in records {
        fits_i64("record.index", record.index)?;
        if i32::try_from(record.retry_count).is_err() {
            return Err(Error::invalid(
                "record.retry_count",
                format!("{} exceeds i32::MAX", record.retry_count),
            ));
        }
    }
    Ok(())
}

/// The time before which a claim's last sign of life makes it stale, for a stale `timeout`;
/// a timeout beyond the range of time makes nothing stale.
pub(crate) fn stale_cutoff(now: i64, timeout: Duration) -> i64 {
    let timeout = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
    now.saturating_sub(timeout)
}

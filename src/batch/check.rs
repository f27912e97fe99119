//! Argument checks shared by every store, so that all of them reject the same inputs.

use std::collections::HashSet;

use super::model::JobState;
use crate::error::{Error, Result};

/// Longest id the tables hold (`VARCHAR(128)`), in characters.
pub(crate) const MAX_ID_LEN: usize = 128;

/// Rejects an empty id or one longer than [`MAX_ID_LEN`] characters.
pub(crate) fn id(name: &'static str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid(name, "must not be empty"));
    }
    if value.chars().count() > MAX_ID_LEN {
        return Err(Error::invalid(
            name,
            format!("longer than {MAX_ID_LEN} characters"),
        ));
    }
    Ok(())
}

/// Longest claim or finalizer id the tables hold (`VARCHAR(64)`), in characters.
pub(crate) const MAX_CLAIM_ID_LEN: usize = 64;

/// Rejects an empty claim or finalizer id, or one longer than [`MAX_CLAIM_ID_LEN`].
pub(crate) fn claim_id(name: &'static str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid(name, "must not be empty"));
    }
    if value.chars().count() > MAX_CLAIM_ID_LEN {
        return Err(Error::invalid(
            name,
            format!("longer than {MAX_CLAIM_ID_LEN} characters"),
        ));
    }
    Ok(())
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

/// Rejects records whose index or retry count do not fit their columns.
pub(crate) fn records(records: &[super::model::ProcessedRecord]) -> Result<()> {
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

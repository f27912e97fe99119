//! The batch-job domain: jobs, batches, records, claims and progress.
//!
//! These types mirror `@batchactions/core` with Rust naming. They know nothing about storage;
//! [`super::mapper`] turns them into rows and back. Times are epoch milliseconds (`i64`), counts
//! and indexes are unsigned, and every status is stored as the upstream string.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::status::status_enum;

status_enum! {
    /// Where a job is in its life.
    ///
    /// The upstream life of a job is `CREATED → PREVIEWING | PROCESSING`,
    /// `PREVIEWING → PREVIEWED | FAILED`, `PREVIEWED → PROCESSING`,
    /// `PROCESSING → PAUSED | COMPLETED | ABORTED | FAILED`, `PAUSED → PROCESSING | ABORTED`.
    /// This crate makes two of those moves: [`prepare`](super::prepare) starts a job
    /// (`CREATED → PROCESSING`, or `COMPLETED` when it has no records) and
    /// [`try_finalize_job`](super::store::DistributedStateStore::try_finalize_job) ends it
    /// (`PROCESSING → COMPLETED | FAILED`). The others are the application's (or another
    /// tool's), written with [`save_job_state`](super::store::StateStore::save_job_state); workers
    /// claim batches only of a `PROCESSING` job. Stores do not police transitions, except that
    /// `try_finalize_job` only leaves `PROCESSING`.
    #[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
    pub enum JobStatus {
        /// Created, not started.
        Created,
        /// A preview of the first records is running (set by the application: this crate
        /// has no preview).
        Previewing,
        /// The preview finished (set by the application).
        Previewed,
        /// Batches are being processed.
        Processing,
        /// Paused by the application.
        Paused,
        /// Every batch finished and none failed.
        Completed,
        /// Stopped by the application.
        Aborted,
        /// Finished with at least one failed batch, or failed outright.
        Failed,
    }
}

impl JobStatus {
    /// Whether the job can no longer change (`COMPLETED`, `ABORTED`, `FAILED`).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Aborted | JobStatus::Failed
        )
    }
}

status_enum! {
    /// Where a batch is in its life.
    #[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
    pub enum BatchStatus {
        /// Waiting to be claimed or processed.
        Pending,
        /// Claimed by a worker (distributed) or being processed (single process).
        Processing,
        /// Paused; never set by the stores themselves.
        Paused,
        /// Processed; its records may still include failures.
        Completed,
        /// The batch as a whole failed.
        Failed,
    }
}

impl BatchStatus {
    /// Whether the batch is finished (`COMPLETED` or `FAILED`).
    pub fn is_terminal(self) -> bool {
        matches!(self, BatchStatus::Completed | BatchStatus::Failed)
    }
}

status_enum! {
    /// The state of one record.
    #[strum(serialize_all = "lowercase")]
    pub enum RecordStatus {
        /// Validated, not yet processed.
        Valid,
        /// Rejected by validation; `errors` says why.
        Invalid,
        /// Processed successfully.
        Processed,
        /// Processing failed; `processing_error` says why.
        Failed,
        /// Read from the source, not yet validated.
        Pending,
    }
}

impl RecordStatus {
    /// The statuses read by [`get_failed_records`](super::store::StateStore::get_failed_records).
    pub const FAILED: &'static [RecordStatus] = &[RecordStatus::Failed, RecordStatus::Invalid];
    /// The statuses read by [`get_pending_records`](super::store::StateStore::get_pending_records).
    pub const PENDING: &'static [RecordStatus] = &[RecordStatus::Pending, RecordStatus::Valid];
    /// The statuses read by [`get_processed_records`](super::store::StateStore::get_processed_records).
    pub const PROCESSED: &'static [RecordStatus] = &[RecordStatus::Processed];
}

/// How a job is run. Serialized with the upstream camelCase keys; keys this type does not know
/// are kept in [`extra`](Self::extra) and written back unchanged.
///
/// This crate acts on `batch_size` ([`prepare`](super::prepare)) and on `continue_on_error`,
/// `max_retries` and `retry_delay` ([`run_worker`](super::run_worker), where they override its
/// [`WorkerOptions`](super::WorkerOptions)). `schema`, `max_concurrent_batches` and
/// `skip_empty_rows` are only stored and read back, for the upstream processors and other tools
/// that share the tables: nothing here acts on them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobConfig {
    /// Records per batch; at least 1.
    pub batch_size: u32,
    /// The upstream validation schema, as JSON (field definitions without validator functions).
    /// Stored and read back only: this crate validates nothing; a record processor passed to
    /// [`run_worker`](super::run_worker) does its own checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    /// How many batches the upstream processor runs at once in one process. Stored and read
    /// back only: each [`run_worker`](super::run_worker) call processes one batch at a time, so
    /// a process runs as many batches at once as it runs workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_batches: Option<u32>,
    /// Whether a failed record lets the rest of its batch go on (overrides
    /// [`WorkerOptions::continue_on_error`](super::WorkerOptions::continue_on_error)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continue_on_error: Option<bool>,
    /// Processing attempts after the first for a failing record (overrides
    /// [`WorkerOptions::max_retries`](super::WorkerOptions::max_retries)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Delay before the first retry of a record, doubled for each further one (overrides
    /// [`WorkerOptions::retry_delay`](super::WorkerOptions::retry_delay); kept as whole
    /// milliseconds, key `retryDelayMs`).
    #[serde(
        default,
        rename = "retryDelayMs",
        skip_serializing_if = "Option::is_none",
        with = "crate::clock::serde_millis::option"
    )]
    pub retry_delay: Option<Duration>,
    /// Whether the upstream source parsers skip empty rows. Stored and read back only:
    /// [`prepare`](super::prepare) stores every record it is given, empty or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_empty_rows: Option<bool>,
    /// Keys this version does not know, kept as they were.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl JobConfig {
    /// A configuration with `batch_size` and nothing else set.
    pub fn new(batch_size: u32) -> Self {
        Self {
            batch_size,
            schema: None,
            max_concurrent_batches: None,
            continue_on_error: None,
            max_retries: None,
            retry_delay: None,
            skip_empty_rows: None,
            extra: Map::new(),
        }
    }
}

/// A batch of a job: a contiguous range of records processed together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Batch {
    /// The batch id (unique across jobs).
    pub id: String,
    /// Zero-based position of the batch in its job; the claim order.
    pub index: u32,
    /// Where the batch is in its life.
    pub status: BatchStatus,
    /// Records processed successfully.
    pub processed_count: u64,
    /// Records that failed or were invalid.
    pub failed_count: u64,
    /// The worker holding or last holding the claim (distributed jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    /// When the current claim was taken, epoch ms (distributed jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_at: Option<i64>,
    /// Index of the batch's first record, inclusive. Required for distributed jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_start_index: Option<u64>,
    /// Index of the batch's last record, inclusive. Required for distributed jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_end_index: Option<u64>,
}

impl Batch {
    /// A `PENDING` batch with no counts and no record range.
    pub fn new(id: impl Into<String>, index: u32) -> Self {
        Self {
            id: id.into(),
            index,
            status: BatchStatus::Pending,
            processed_count: 0,
            failed_count: 0,
            worker_id: None,
            claimed_at: None,
            record_start_index: None,
            record_end_index: None,
        }
    }

    /// Sets the inclusive record range `start..=end`.
    pub fn with_records(mut self, start: u64, end: u64) -> Self {
        self.record_start_index = Some(start);
        self.record_end_index = Some(end);
        self
    }
}

/// A job and its batches, as saved and read by a [`StateStore`](super::store::StateStore).
///
/// For a distributed job the store's batch rows are the truth: saving the job creates the
/// batches it does not have yet and never touches the others, and reading it returns the
/// batches as they are now.
#[derive(Debug, Clone, PartialEq)]
pub struct JobState {
    /// The job id, chosen by the application.
    pub id: String,
    /// How the job is run.
    pub config: JobConfig,
    /// Where the job is in its life.
    pub status: JobStatus,
    /// The job's batches; for a distributed job, in index order.
    pub batches: Vec<Batch>,
    /// Number of records in the job.
    pub total_records: u64,
    /// When processing started, epoch ms.
    pub started_at: Option<i64>,
    /// When the job reached a terminal status, epoch ms.
    pub completed_at: Option<i64>,
    /// Whether the batches are claimed by distributed workers.
    pub distributed: bool,
}

impl JobState {
    /// A `CREATED`, non-distributed job with no batches.
    pub fn new(id: impl Into<String>, config: JobConfig) -> Self {
        Self {
            id: id.into(),
            config,
            status: JobStatus::Created,
            batches: Vec::new(),
            total_records: 0,
            started_at: None,
            completed_at: None,
            distributed: false,
        }
    }
}

/// The new state of a batch for
/// [`update_batch_state`](super::store::StateStore::update_batch_state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchState {
    /// The new status.
    pub status: BatchStatus,
    /// Records processed successfully.
    pub processed_count: u64,
    /// Records that failed or were invalid.
    pub failed_count: u64,
}

/// One validation problem of a record. Stored as opaque JSON: keys this type does not know are
/// kept in [`extra`](Self::extra), and `code`, `severity` and `category` are free strings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidationError {
    /// The field the problem is about.
    pub field: String,
    /// A human-readable description.
    pub message: String,
    /// The kind of problem (`REQUIRED`, `TYPE_MISMATCH`, ... upstream).
    pub code: String,
    /// The offending value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// `error` (the default) or `warning`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    /// A grouping (`VALIDATION`, `FORMAT`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// How to fix it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suggestion: Option<String>,
    /// Anything else the validator attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
    /// Keys this version does not know, kept as they were.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ValidationError {
    /// A validation error with only `field`, `message` and `code` set.
    pub fn new(
        field: impl Into<String>,
        message: impl Into<String>,
        code: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
            code: code.into(),
            value: None,
            severity: None,
            category: None,
            suggestion: None,
            metadata: None,
            extra: Map::new(),
        }
    }
}

/// A record of a job and its outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessedRecord {
    /// Zero-based position of the record in its job; the record's key within the job.
    pub index: u64,
    /// The record as read from the source.
    pub raw: Value,
    /// The record after aliases and transforms (initially equal to `raw`).
    pub parsed: Value,
    /// Where the record is in its life.
    pub status: RecordStatus,
    /// Validation errors (for `invalid`) or warnings.
    pub errors: Vec<ValidationError>,
    /// Why processing failed (for `failed`).
    pub processing_error: Option<String>,
    /// Processing attempts beyond the first.
    pub retry_count: u32,
}

impl ProcessedRecord {
    /// A `pending` record whose `parsed` value is a copy of `raw`.
    pub fn pending(index: u64, raw: Value) -> Self {
        Self {
            index,
            parsed: raw.clone(),
            raw,
            status: RecordStatus::Pending,
            errors: Vec::new(),
            processing_error: None,
            retry_count: 0,
        }
    }

    /// The same record with another status.
    pub fn with_status(mut self, status: RecordStatus) -> Self {
        self.status = status;
        self
    }
}

/// The outcome of processing one record, without its payload: what
/// [`save_record_outcomes`](super::store::DistributedStateStore::save_record_outcomes) writes.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordOutcome {
    /// The record's index in its job.
    pub index: u64,
    /// Where the record is in its life after processing.
    pub status: RecordStatus,
    /// Validation errors or warnings.
    pub errors: Vec<ValidationError>,
    /// Why processing failed (for `failed`).
    pub processing_error: Option<String>,
    /// Processing attempts beyond the first.
    pub retry_count: u32,
}

impl RecordOutcome {
    /// The outcome part of `record`.
    pub fn of(record: &ProcessedRecord) -> Self {
        Self {
            index: record.index,
            status: record.status,
            errors: record.errors.clone(),
            processing_error: record.processing_error.clone(),
            retry_count: record.retry_count,
        }
    }
}

/// Which records of a job to read, for
/// [`get_records`](super::store::StateStore::get_records). Records come back in index order.
///
/// Page through a large job by passing the last index of one page as
/// [`after_index`](Self::after_index) of the next.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecordFilter {
    /// Only records with one of these statuses; every status when empty.
    pub statuses: Vec<RecordStatus>,
    /// Only records last written for this batch.
    pub batch_id: Option<String>,
    /// Only records whose index is greater than this.
    pub after_index: Option<u64>,
    /// At most this many records; all when `None`.
    pub limit: Option<u64>,
}

impl RecordFilter {
    /// Every record of the job.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only records with one of `statuses`.
    pub fn statuses(mut self, statuses: impl IntoIterator<Item = RecordStatus>) -> Self {
        self.statuses = statuses.into_iter().collect();
        self
    }

    /// Only records of batch `batch_id`.
    pub fn batch(mut self, batch_id: impl Into<String>) -> Self {
        self.batch_id = Some(batch_id.into());
        self
    }

    /// Only records after index `index`.
    pub fn after(mut self, index: u64) -> Self {
        self.after_index = Some(index);
        self
    }

    /// At most `limit` records.
    pub fn limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Whether `record`, written for `batch_id`, passes the filter (ignoring the limit).
    pub fn matches(&self, batch_id: &str, record: &ProcessedRecord) -> bool {
        (self.statuses.is_empty() || self.statuses.contains(&record.status))
            && self.batch_id.as_deref().is_none_or(|b| b == batch_id)
            && self.after_index.is_none_or(|after| record.index > after)
    }
}

/// A worker's claim on a batch, returned by
/// [`claim_batch`](super::store::DistributedStateStore::claim_batch).
///
/// It carries the batch's `version` at the time of the claim: completing or heartbeating the
/// batch succeeds only while the batch is still `PROCESSING` under this worker and this
/// version. A reclaim bumps the version, so a worker whose claim was taken away is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchReservation {
    /// The job of the batch.
    pub job_id: String,
    /// The claimed batch.
    pub batch_id: String,
    /// The claimed batch's index.
    pub batch_index: u32,
    /// The worker that holds the claim.
    pub worker_id: String,
    /// When the claim was taken, epoch ms.
    pub claimed_at: i64,
    /// Index of the batch's first record, inclusive.
    pub record_start_index: u64,
    /// Index of the batch's last record, inclusive.
    pub record_end_index: u64,
    /// The batch's version after the claim: the fencing token of this claim.
    pub version: i64,
}

/// What [`claim_batch`](super::store::DistributedStateStore::claim_batch) found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimBatchResult {
    /// A batch was claimed.
    Claimed(BatchReservation),
    /// The job is processing but has no `PENDING` batch left.
    NoPendingBatches,
    /// There is no such job.
    JobNotFound,
    /// The job is not `PROCESSING` (finalized, paused, aborted, not started).
    JobNotProcessing,
}

impl ClaimBatchResult {
    /// The reservation, when a batch was claimed.
    pub fn reservation(&self) -> Option<&BatchReservation> {
        match self {
            ClaimBatchResult::Claimed(r) => Some(r),
            _ => None,
        }
    }
}

/// How a claimed batch ended, for
/// [`complete_batch`](super::store::DistributedStateStore::complete_batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOutcome {
    /// `true` for `FAILED`, `false` for `COMPLETED`.
    pub failed: bool,
    /// Records processed successfully.
    pub processed_count: u64,
    /// Records that failed or were invalid.
    pub failed_count: u64,
}

impl BatchOutcome {
    /// The batch was processed (some records may have failed).
    pub fn completed(processed_count: u64, failed_count: u64) -> Self {
        Self {
            failed: false,
            processed_count,
            failed_count,
        }
    }

    /// The batch as a whole failed.
    pub fn failed(processed_count: u64, failed_count: u64) -> Self {
        Self {
            failed: true,
            processed_count,
            failed_count,
        }
    }

    /// The terminal status this outcome stores.
    pub fn status(self) -> BatchStatus {
        if self.failed {
            BatchStatus::Failed
        } else {
            BatchStatus::Completed
        }
    }
}

/// Batch counts of a distributed job, read from its batch rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistributedJobStatus {
    /// The job.
    pub job_id: String,
    /// Every batch of the job, whatever its status.
    pub total_batches: u64,
    /// Batches `COMPLETED`.
    pub completed_batches: u64,
    /// Batches `FAILED`.
    pub failed_batches: u64,
    /// Batches `PROCESSING`.
    pub processing_batches: u64,
    /// Batches `PENDING`.
    pub pending_batches: u64,
    /// Whether the job has batches and every one is `COMPLETED` or `FAILED`.
    pub is_complete: bool,
}

impl DistributedJobStatus {
    /// The status of a job without batches.
    pub fn empty(job_id: impl Into<String>) -> Self {
        Self {
            job_id: job_id.into(),
            total_batches: 0,
            completed_batches: 0,
            failed_batches: 0,
            processing_batches: 0,
            pending_batches: 0,
            is_complete: false,
        }
    }

    /// Counts one batch of `status`, or of a status the store does not know (`None`), which
    /// counts only towards the total.
    pub fn count(&mut self, status: Option<BatchStatus>, n: u64) {
        self.total_batches += n;
        match status {
            Some(BatchStatus::Completed) => self.completed_batches += n,
            Some(BatchStatus::Failed) => self.failed_batches += n,
            Some(BatchStatus::Processing) => self.processing_batches += n,
            Some(BatchStatus::Pending) => self.pending_batches += n,
            Some(BatchStatus::Paused) | None => {}
        }
        self.is_complete = self.total_batches > 0
            && self.completed_batches + self.failed_batches == self.total_batches;
    }
}

/// Progress of a job in records and batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobProgress {
    /// Records in the job (the saved total; the number of stored records when the job is
    /// unknown).
    pub total_records: u64,
    /// Records `processed`.
    pub processed_records: u64,
    /// Records `failed` or `invalid`.
    pub failed_records: u64,
    /// Records neither processed nor failed: `total - processed - failed`, never below 0.
    pub pending_records: u64,
    /// `(processed + failed) / total` as a whole percentage, rounded half up (0 to 100).
    pub percentage: u8,
    /// Batches `COMPLETED` (upstream `currentBatch`).
    pub completed_batches: u64,
    /// Batches of the job.
    pub total_batches: u64,
    /// Time from the job's start to its completion, or to now while it runs (whole
    /// milliseconds); zero before it starts.
    pub elapsed: Duration,
}

impl JobProgress {
    /// Progress from the counts, computing the pending records, the percentage and the elapsed
    /// time (`now_ms` is used while the job has not completed).
    pub fn compute(
        counts: RecordCounts,
        completed_batches: u64,
        total_batches: u64,
        started_at: Option<i64>,
        completed_at: Option<i64>,
        now_ms: i64,
    ) -> Self {
        let done = counts.processed.saturating_add(counts.failed);
        let percentage = if counts.total == 0 {
            0
        } else {
            // Rounded half up in integers: (200 done + total) / (2 total), capped at 100.
            let scaled = done
                .saturating_mul(200)
                .saturating_add(counts.total)
                .checked_div(counts.total.saturating_mul(2))
                .unwrap_or(0);
            u8::try_from(scaled.min(100)).unwrap_or(100)
        };
        let elapsed = started_at
            .and_then(|start| {
                crate::clock::from_millis(completed_at.unwrap_or(now_ms).saturating_sub(start))
            })
            .unwrap_or_default();
        Self {
            total_records: counts.total,
            processed_records: counts.processed,
            failed_records: counts.failed,
            pending_records: counts.total.saturating_sub(done),
            percentage,
            completed_batches,
            total_batches,
            elapsed,
        }
    }
}

/// Record counts of a job, the input of [`JobProgress::compute`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordCounts {
    /// Records in the job.
    pub total: u64,
    /// Records `processed`.
    pub processed: u64,
    /// Records `failed` or `invalid`.
    pub failed: u64,
}

impl RecordCounts {
    /// Adds `n` records of `status` (statuses the store does not know, `None`, are not counted).
    pub fn count(&mut self, status: Option<RecordStatus>, n: u64) {
        match status {
            Some(RecordStatus::Processed) => self.processed += n,
            Some(RecordStatus::Failed | RecordStatus::Invalid) => self.failed += n,
            _ => {}
        }
    }
}

/// What [`requeue_failed_records`](super::store::DistributedStateStore::requeue_failed_records) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequeuedRecords {
    /// `failed` records moved back to `pending`.
    pub records: u64,
    /// Finished batches moved back to `PENDING` because they hold such records.
    pub batches: u64,
    /// `failed` records left as they are because a worker holds their batch (or the batch is
    /// `PAUSED`): requeue again once it finished.
    pub left_failed: u64,
    /// The job's status afterwards: `PROCESSING` for a finished job whose records were
    /// requeued, otherwise as it was.
    pub job_status: JobStatus,
}

/// Why the failed records of a job with `status` cannot be requeued, with what to do instead;
/// `None` when they can (the rules of
/// [`requeue_failed_records`](super::store::DistributedStateStore::requeue_failed_records)).
pub(crate) fn requeue_refusal(status: JobStatus, distributed: bool) -> Option<String> {
    if !distributed {
        return Some(
            "is not distributed: its batches are run by one process, which reprocesses records \
             itself (reset_records)"
                .to_owned(),
        );
    }
    match status {
        JobStatus::Completed | JobStatus::Failed | JobStatus::Processing | JobStatus::Paused => {
            None
        }
        JobStatus::Aborted => Some(
            "was aborted: its records are not processed any more; prepare a new job to process \
             them"
                .to_owned(),
        ),
        other => Some(format!(
            "is {other}: it has not started, so no record has failed yet"
        )),
    }
}

/// The refusal of a requeue on a `PROCESSING` job whose batches have all finished.
pub(crate) const REQUEUE_WHILE_FINALIZING: &str = "is being finalized (every batch has \
    finished): requeue its failed records once it is COMPLETED or FAILED";

//! The two ports of the batch-job domain ([`StateStore`], [`DistributedStateStore`]), and the
//! types that only an implementation of them (or a test of one) needs: claims, reservations and
//! record outcomes.

use std::time::Duration;

use async_trait::async_trait;

pub use super::model::{
    BatchOutcome, BatchReservation, ClaimBatchResult, RecordFilter, RecordOutcome,
};

use super::model::{
    BatchState, DistributedJobStatus, JobProgress, JobState, ProcessedRecord, RecordStatus,
    RequeuedRecords,
};
use crate::error::Result;
use crate::id::new_id;

/// Where a batch job keeps its state: the job, its batches and every record's outcome.
///
/// Implementations must be safe to share between tasks (`Arc<dyn StateStore>`).
#[async_trait]
pub trait StateStore: Send + Sync {
    /// Saves the job, replacing the stored status, configuration, totals and timestamps, but
    /// never moving a finished job (`COMPLETED`, `ABORTED`, `FAILED`) back to an unfinished
    /// status: that is refused, and [`reset_job_state`](Self::reset_job_state) does it on
    /// purpose.
    ///
    /// For a distributed job (`job.distributed`), every batch gets a batch row if it has none
    /// yet (matched by job and batch index); batches that already have a row are left exactly as
    /// they are, so saving again never resets a claimed or finished batch.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for an empty or too long id, a
    /// batch size of 0, or (distributed) a batch without a record range, duplicate batch ids
    /// or indexes; [`Error::Conflict`](crate::Error::Conflict) when a batch id belongs to
    /// another job, or when the stored job is finished and `job` is not; database errors.
    async fn save_job_state(&self, job: &JobState) -> Result<()>;

    /// Saves the job as [`save_job_state`](Self::save_job_state) does, also when that moves a
    /// finished job back to an unfinished status (restarting a job on purpose). Batch rows of
    /// a distributed job are still only added, never reset.
    ///
    /// # Errors
    ///
    /// As [`save_job_state`](Self::save_job_state), without the conflict for a finished job.
    async fn reset_job_state(&self, job: &JobState) -> Result<()>;

    /// The job, or `None` when there is none. The batches of a distributed job are read from
    /// its batch rows, in index order.
    ///
    /// # Errors
    ///
    /// [`Error::CorruptRow`](crate::Error::CorruptRow) when the job row or one of its batch
    /// rows cannot be read; database errors.
    async fn get_job_state(&self, job_id: &str) -> Result<Option<JobState>>;

    /// The job without its batches (`batches` is empty), or `None` when there is none: one
    /// row to read however many batches the job has, and readable while one of its batch rows
    /// is corrupt.
    ///
    /// # Errors
    ///
    /// [`Error::CorruptRow`](crate::Error::CorruptRow) when the job row cannot be read;
    /// database errors.
    async fn get_job_without_batches(&self, job_id: &str) -> Result<Option<JobState>> {
        Ok(self.get_job_state(job_id).await?.map(|job| JobState {
            batches: Vec::new(),
            ..job
        }))
    }

    /// Sets the status and counts of one batch. Does nothing when the job or batch does not
    /// exist. On a distributed job this write is not fenced: workers holding a claim use
    /// [`DistributedStateStore::complete_batch`] instead; a status change bumps the batch's
    /// version, so whoever held it loses the claim.
    ///
    /// # Errors
    ///
    /// [`Error::CorruptRow`](crate::Error::CorruptRow) when the stored batch list cannot be
    /// read; database errors.
    async fn update_batch_state(
        &self,
        job_id: &str,
        batch_id: &str,
        state: &BatchState,
    ) -> Result<()>;

    /// Saves the outcome of one record, replacing any earlier outcome of the same index,
    /// except that a finished record (`processed`, `failed`, `invalid`) is never moved back to
    /// `pending` or `valid`: such a write leaves the stored record as it is.
    /// [`reset_records`](Self::reset_records) does that on purpose.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for empty ids; database
    /// errors.
    async fn save_processed_record(
        &self,
        job_id: &str,
        batch_id: &str,
        record: &ProcessedRecord,
    ) -> Result<()> {
        self.save_processed_records(job_id, batch_id, std::slice::from_ref(record))
            .await
    }

    /// Saves many record outcomes of one batch, in as few statements as the backend allows;
    /// each replaces any earlier outcome of the same index, except that a finished record is
    /// never moved back to `pending` or `valid` (as
    /// [`save_processed_record`](Self::save_processed_record)). When one index appears
    /// several times, the last one wins.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for empty ids; database
    /// errors.
    async fn save_processed_records(
        &self,
        job_id: &str,
        batch_id: &str,
        records: &[ProcessedRecord],
    ) -> Result<()>;

    /// Saves records of the job for `batch_id`, replacing whatever is stored for their indexes,
    /// finished or not: the explicit way to reprocess records.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for empty ids; database
    /// errors.
    async fn reset_records(
        &self,
        job_id: &str,
        batch_id: &str,
        records: &[ProcessedRecord],
    ) -> Result<()>;

    /// Records of the job that pass `filter`, in index order.
    ///
    /// A page that contains a row which cannot be read fails with
    /// [`Error::CorruptRow`](crate::Error::CorruptRow) naming that row; pages that do not
    /// contain it (for instance the next page, with `after_index` set to its index) read fine.
    ///
    /// # Errors
    ///
    /// [`Error::CorruptRow`](crate::Error::CorruptRow) for an unreadable row in the page;
    /// database errors.
    async fn get_records(
        &self,
        job_id: &str,
        filter: &RecordFilter,
    ) -> Result<Vec<ProcessedRecord>>;

    /// Every `failed` or `invalid` record of the job, in index order.
    ///
    /// # Errors
    ///
    /// As [`get_records`](Self::get_records).
    async fn get_failed_records(&self, job_id: &str) -> Result<Vec<ProcessedRecord>> {
        self.get_records(
            job_id,
            &RecordFilter::new().statuses(RecordStatus::FAILED.iter().copied()),
        )
        .await
    }

    /// Every `pending` or `valid` record of the job, in index order.
    ///
    /// # Errors
    ///
    /// As [`get_records`](Self::get_records).
    async fn get_pending_records(&self, job_id: &str) -> Result<Vec<ProcessedRecord>> {
        self.get_records(
            job_id,
            &RecordFilter::new().statuses(RecordStatus::PENDING.iter().copied()),
        )
        .await
    }

    /// Every `processed` record of the job, in index order.
    ///
    /// # Errors
    ///
    /// As [`get_records`](Self::get_records).
    async fn get_processed_records(&self, job_id: &str) -> Result<Vec<ProcessedRecord>> {
        self.get_records(
            job_id,
            &RecordFilter::new().statuses(RecordStatus::PROCESSED.iter().copied()),
        )
        .await
    }

    /// Progress of the job. Record counts come from the stored records, batch counts from the
    /// batches (the batch rows of a distributed job). An unknown job has the number of its
    /// stored records as its total.
    ///
    /// # Errors
    ///
    /// [`Error::CorruptRow`](crate::Error::CorruptRow) when the job row cannot be read;
    /// database errors.
    async fn get_progress(&self, job_id: &str) -> Result<JobProgress>;

    /// Deletes finished jobs (`COMPLETED`, `FAILED`, `ABORTED`) whose `completed_at` is before
    /// `finished_before`, oldest first, with their batches and records: at most `limit` rows a
    /// call, records first, then batches, then the job row once nothing of it is left. Returns
    /// how many rows it deleted; call it again until it returns 0. A job that is not finished
    /// (or was reset meanwhile) is never touched.
    ///
    /// # Errors
    ///
    /// Database errors.
    async fn prune_finished_jobs(&self, finished_before: i64, limit: u64) -> Result<u64>;
}

/// A [`StateStore`] whose batches many workers claim at once.
///
/// Claims are exclusive: a batch is `PROCESSING` under at most one worker, and every write by
/// a claim holder ([`complete_batch`](Self::complete_batch),
/// [`complete_batch_with_outcomes`](Self::complete_batch_with_outcomes),
/// [`heartbeat_batch`](Self::heartbeat_batch), [`release_batch`](Self::release_batch)) is
/// checked against the claim's version, so a worker whose batch was reclaimed is refused.
///
/// Preparing a job is safe from any number of places at once: [`create_job`](Self::create_job)
/// creates the job row only if it is absent, [`save_batch_records`](Self::save_batch_records)
/// inserts only absent records, and [`start_job`](Self::start_job) adds the absent batch rows
/// and leaves `CREATED` in one conditional step.
#[async_trait]
pub trait DistributedStateStore: StateStore {
    /// Creates the job row if no job has this id, and returns whether it did; an existing job
    /// is left exactly as it is. Only the job row is written: batches come with
    /// [`start_job`](Self::start_job). Workers do not claim batches of a `CREATED` job, so a
    /// job being prepared is created `CREATED`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) as for
    /// [`save_job_state`](StateStore::save_job_state); database errors.
    async fn create_job(&self, job: &JobState) -> Result<bool>;

    /// Starts a prepared distributed job: if the stored job is `CREATED`, adds the batch rows
    /// it lacks (as [`save_job_state`](StateStore::save_job_state) does) and saves `job`'s
    /// status, configuration, total and times, all at once; returns whether it did. A job that
    /// is not `CREATED` (another preparer started it, or it ran since) or does not exist is
    /// left alone and `false` returned: among concurrent callers, at most one gets `true`.
    ///
    /// A `started_at` of `None` is set to the store's clock, and so is `completed_at` when the
    /// new status is finished.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) as for
    /// [`save_job_state`](StateStore::save_job_state), and for a job that is not distributed;
    /// [`Error::Conflict`](crate::Error::Conflict) when a batch id belongs to another job;
    /// database errors.
    async fn start_job(&self, job: &JobState) -> Result<bool>;

    /// Claims the `PENDING` batch of the job with the lowest index for `worker_id`.
    ///
    /// Answers [`ClaimBatchResult::NoPendingBatches`] only when the job has no pending batch
    /// at all: a claim that loses a race for one batch tries the next.
    ///
    /// A pending batch whose row cannot be read is not handed out: the claim marks it
    /// `FAILED` (so the job can still finish, as `FAILED`) and goes on with the next one.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for empty ids;
    /// [`Error::CorruptRow`](crate::Error::CorruptRow) when the job row cannot be read;
    /// database errors.
    ///
    /// Each call is a new claim; a caller that retries after an error that may have hidden a
    /// successful claim uses [`claim_batch_with_id`](Self::claim_batch_with_id) instead.
    async fn claim_batch(&self, job_id: &str, worker_id: &str) -> Result<ClaimBatchResult> {
        self.claim_batch_with_id(job_id, worker_id, &new_id("claim-"))
            .await
    }

    /// Claims as [`claim_batch`](Self::claim_batch), naming the claim `claim_id` (unique to
    /// this claim: a caller makes a new one for each claim it means to take). When a batch of
    /// the job is still `PROCESSING` under this claim id, that claim is returned again instead
    /// of a new one: a retry after an error whose claim took effect (a commit whose answer
    /// was lost) recovers the batch rather than leaving it idle until it goes stale.
    ///
    /// # Errors
    ///
    /// As [`claim_batch`](Self::claim_batch), and
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for an empty or too long
    /// claim id.
    async fn claim_batch_with_id(
        &self,
        job_id: &str,
        worker_id: &str,
        claim_id: &str,
    ) -> Result<ClaimBatchResult>;

    /// Gives a claimed batch back: puts it back to `PENDING`, bumping its version, if the
    /// reservation still holds (the batch is `PROCESSING` under the same worker and version,
    /// as for [`complete_batch`](Self::complete_batch)); returns whether it did.
    ///
    /// A finished batch, one held by another worker, and one reclaimed and claimed again since
    /// (even by a process using the same worker id) are left alone.
    ///
    /// # Errors
    ///
    /// Database errors.
    async fn release_batch(&self, reservation: &BatchReservation) -> Result<bool>;

    /// Puts every `PROCESSING` batch of the job whose last heartbeat (or claim) is older than
    /// `timeout` back to `PENDING`, bumping its version; returns how many. Safe to call from
    /// many workers at once: each stale batch is counted by exactly one caller.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for a timeout beyond `i64`
    /// milliseconds; database errors.
    async fn reclaim_stale_batches(&self, job_id: &str, timeout: Duration) -> Result<u64>;

    /// Saves the records of a batch (usually `pending`, before the job is started) whose
    /// indexes have no record yet; a stored record is left exactly as it is, whatever its
    /// status. Calling it again, from any number of places at once, is harmless: it never
    /// resets an outcome.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for empty ids; database
    /// errors.
    async fn save_batch_records(
        &self,
        job_id: &str,
        batch_id: &str,
        records: &[ProcessedRecord],
    ) -> Result<()>;

    /// Every record of the batch, in index order.
    ///
    /// # Errors
    ///
    /// As [`StateStore::get_records`].
    async fn get_batch_records(
        &self,
        job_id: &str,
        batch_id: &str,
    ) -> Result<Vec<ProcessedRecord>> {
        self.get_records(job_id, &RecordFilter::new().batch(batch_id))
            .await
    }

    /// Batch counts of the job (all zero for an unknown job).
    ///
    /// # Errors
    ///
    /// Database errors.
    async fn get_distributed_status(&self, job_id: &str) -> Result<DistributedJobStatus>;

    /// Moves the job from `PROCESSING` to `COMPLETED` (or `FAILED` when a batch failed) and
    /// sets its completion time, if every batch is `COMPLETED` or `FAILED`. Returns whether
    /// this call did it: among any number of concurrent callers, at most one gets `true`.
    ///
    /// A caller that retries after an error that may have hidden its success uses
    /// [`try_finalize_job_with_id`](Self::try_finalize_job_with_id) instead.
    ///
    /// # Errors
    ///
    /// Database errors.
    async fn try_finalize_job(&self, job_id: &str) -> Result<bool> {
        self.try_finalize_job_with_id(job_id, &new_id("finalize-"))
            .await
    }

    /// Finalizes as [`try_finalize_job`](Self::try_finalize_job), recording `finalizer_id`
    /// (unique to this caller) as the finalizer. A call with the finalizer id that finalized
    /// the job answers `true` again, so a retry after an error whose finalization took effect
    /// (a commit whose answer was lost) is told it won; every other finalizer gets `false`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for an empty or too long
    /// finalizer id; database errors.
    async fn try_finalize_job_with_id(&self, job_id: &str, finalizer_id: &str) -> Result<bool>;

    /// Puts the `failed` records of distributed job `job_id` back to `pending` so that workers
    /// process them again, all at once (one write transaction):
    ///
    /// - each `failed` record whose batch is finished (`COMPLETED`, `FAILED`) or `PENDING`
    ///   becomes `pending` with its processing error cleared (its `retry_count` and payloads
    ///   stay);
    /// - each finished batch holding one goes back to `PENDING` without an owner, its version
    ///   bumped and its failed count zeroed, to be claimed like any other;
    /// - a batch a worker holds (`PROCESSING`) or that is `PAUSED` is left alone with its
    ///   records ([`RequeuedRecords::left_failed`] counts them);
    /// - a finished job (`COMPLETED`, `FAILED`) that got records back goes back to
    ///   `PROCESSING` with its completion time and finalizer cleared, so that
    ///   [`try_finalize_job`](Self::try_finalize_job) finalizes it again, exactly once, when
    ///   its batches have finished again. A `PROCESSING` or `PAUSED` job keeps its status.
    ///
    /// `invalid` records are never requeued: validation rejected their data, and processing
    /// them would bypass it. A job with no `failed` record is left exactly as it is.
    ///
    /// After a lost reply: a store that retries its own transaction answers what the attempt
    /// that committed requeued (the SeaORM store does, recognizing its rows by the time it
    /// wrote). A caller that calls again after the error makes another call, which finds
    /// nothing left to requeue, changes nothing and answers zero counts: idempotent, never a
    /// second requeue.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`](crate::Error::NotFound) when the job does not exist;
    /// [`Error::InvalidState`](crate::Error::InvalidState) (nothing written) when the job is not
    /// distributed, is `ABORTED` or not started yet, or is `PROCESSING` with every batch
    /// finished (a worker is finalizing it: requeue once it is `COMPLETED` or `FAILED`);
    /// database errors.
    async fn requeue_failed_records(&self, job_id: &str) -> Result<RequeuedRecords>;

    /// Finishes the claimed batch with `outcome`, if the reservation still holds (the batch
    /// is `PROCESSING` under the same worker and version). Returns whether it did; `false`
    /// means the claim was lost and the batch belongs to someone else now.
    ///
    /// # Errors
    ///
    /// Database errors.
    async fn complete_batch(
        &self,
        reservation: &BatchReservation,
        outcome: BatchOutcome,
    ) -> Result<bool>;

    /// Records that the claim holder is alive, so the batch is not reclaimed as stale.
    /// Returns `false` when the claim was lost.
    ///
    /// # Errors
    ///
    /// Database errors.
    async fn heartbeat_batch(&self, reservation: &BatchReservation) -> Result<bool>;

    /// Records the outcomes of records saved earlier for this batch, leaving their payloads
    /// (`raw`, `parsed`) as they are. Returns how many records were updated; outcomes for
    /// indexes the batch does not have change nothing.
    ///
    /// This write is not fenced by a claim: a worker holding a claim uses
    /// [`complete_batch_with_outcomes`](Self::complete_batch_with_outcomes), which writes
    /// nothing once the claim is lost.
    ///
    /// Outcomes that are alike (same status, errors, processing error and retries) are written
    /// together, so a batch whose records all succeeded costs one short statement, where
    /// [`save_processed_records`](StateStore::save_processed_records) rewrites every payload.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for empty ids; database
    /// errors.
    async fn save_record_outcomes(
        &self,
        job_id: &str,
        batch_id: &str,
        outcomes: &[RecordOutcome],
    ) -> Result<u64>;

    /// Finishes the claimed batch with `outcome` and records its records' outcomes (as
    /// [`save_record_outcomes`](Self::save_record_outcomes)), all or nothing and only while
    /// the reservation holds: a worker whose claim was lost writes nothing at all. Returns
    /// whether it did.
    ///
    /// # Errors
    ///
    /// Database errors; nothing is written then.
    async fn complete_batch_with_outcomes(
        &self,
        reservation: &BatchReservation,
        outcome: BatchOutcome,
        outcomes: &[RecordOutcome],
    ) -> Result<bool>;
}

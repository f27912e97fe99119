//! The distributed batch runner: prepares a job from records, and runs workers that claim its
//! batches, process their records and finalize the job, over any [`DistributedStateStore`].
//!
//! Many workers, in one process or many, share a job through the store:
//!
//! 1. [`prepare`] splits the records into batches, saves them (bulk) and saves the job as
//!    `PROCESSING`, which creates the batch rows. Running it again with the same job id is safe.
//! 2. [`run_worker`] loops: claim a batch → load its records → run the processor on each
//!    (with per-record retries) → save the outcomes in bulk → complete the batch (fenced by the
//!    claim) → try to finalize the job. A heartbeat keeps a long batch claimed; batches of dead
//!    workers are reclaimed once stale. It returns when the job is finalized.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::model::{
    Batch, BatchOutcome, BatchReservation, ClaimBatchResult, JobConfig, JobState, JobStatus,
    ProcessedRecord, RecordOutcome, RecordStatus,
};
use super::store::DistributedStateStore;
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};

/// What [`prepare`] created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedJob {
    /// The job id.
    pub job_id: String,
    /// Records saved.
    pub total_records: u64,
    /// Batches created.
    pub total_batches: u32,
}

/// The id of batch `index` of `job_id`: derived, so that preparing again finds the same rows.
fn batch_id(job_id: &str, index: u32) -> String {
    format!("{job_id}-b{index}")
}

/// Splits `records` into batches of `config.batch_size`, saves them as `pending` records and
/// saves the job as a `PROCESSING` distributed job, which creates its batch rows.
///
/// Records are consumed batch by batch, so a large source is never held in memory at once.
/// Preparing again with the same job id is safe: when an earlier prepare finished (the job
/// exists), nothing is written and its totals are returned, whatever its workers did since;
/// when it stopped half way, the records are saved again (upserted) and the job is created.
/// A job without records is saved as `COMPLETED`. Preparing *at the same time* from two places
/// is not safe: both may find no job and the later one would reset records the workers already
/// finished; prepare a job from one place.
///
/// # Errors
///
/// [`Error::InvalidArgument`] for an empty job id or a batch size of 0;
/// [`Error::Conflict`] when the id belongs to a job that is not distributed;
/// [`Error::Serialization`] when a record does not serialize; store errors.
#[tracing::instrument(skip(store, config, records), err)]
pub async fn prepare<T, I>(
    store: &dyn DistributedStateStore,
    job_id: &str,
    config: JobConfig,
    records: I,
) -> Result<PreparedJob>
where
    T: Serialize,
    I: IntoIterator<Item = T>,
{
    if job_id.is_empty() {
        return Err(Error::InvalidArgument {
            name: "job_id",
            reason: "must not be empty".to_owned(),
        });
    }
    let size = usize::try_from(config.batch_size).unwrap_or(usize::MAX);
    if size == 0 {
        return Err(Error::InvalidArgument {
            name: "batch_size",
            reason: "must be at least 1".to_owned(),
        });
    }
    // The job row is saved last, so its presence means an earlier prepare finished: its
    // records and batches stay as they are (some may already be claimed or finished).
    if let Some(job) = store.get_job_state(job_id).await? {
        if !job.distributed {
            return Err(Error::conflict(format!(
                "job {job_id} exists and is not a distributed job"
            )));
        }
        return Ok(PreparedJob {
            job_id: job_id.to_owned(),
            total_records: job.total_records,
            total_batches: u32::try_from(job.batches.len()).unwrap_or(u32::MAX),
        });
    }
    let mut batches: Vec<Batch> = Vec::new();
    let mut chunk: Vec<ProcessedRecord> = Vec::with_capacity(size);
    let mut next_index: u64 = 0;
    let mut records = records.into_iter().peekable();
    while records.peek().is_some() {
        chunk.clear();
        for record in records.by_ref().take(size) {
            chunk.push(ProcessedRecord::pending(
                next_index,
                serde_json::to_value(record)?,
            ));
            next_index += 1;
        }
        let index = u32::try_from(batches.len()).map_err(|_| Error::InvalidArgument {
            name: "records",
            reason: "more batches than fit in u32".to_owned(),
        })?;
        let id = batch_id(job_id, index);
        store.save_batch_records(job_id, &id, &chunk).await?;
        if let (Some(first), Some(last)) = (chunk.first(), chunk.last()) {
            batches.push(Batch::new(id, index).with_records(first.index, last.index));
        }
    }
    let total_batches = u32::try_from(batches.len()).unwrap_or(u32::MAX);
    let now = SystemClock.now_ms();
    let mut job = JobState::new(job_id, config);
    job.distributed = true;
    job.total_records = next_index;
    job.started_at = Some(now);
    if batches.is_empty() {
        // Nothing to claim, so no worker would ever finalize it: it is done already.
        job.status = JobStatus::Completed;
        job.completed_at = Some(now);
    } else {
        job.status = JobStatus::Processing;
    }
    job.batches = batches;
    store.save_job_state(&job).await?;
    tracing::info!(total_records = next_index, total_batches, "job prepared");
    Ok(PreparedJob {
        job_id: job_id.to_owned(),
        total_records: next_index,
        total_batches,
    })
}

/// What a record processor knows about the record it is given.
#[derive(Debug, Clone)]
pub struct RecordContext {
    /// The job.
    pub job_id: String,
    /// The batch being processed.
    pub batch_id: String,
    /// The record's index in the job.
    pub index: u64,
    /// The attempt, from 0.
    pub attempt: u32,
}

/// The error a record processor returns; its text is stored as the record's processing error.
pub type ProcessError = Box<dyn std::error::Error + Send + Sync>;

/// Settings of [`run_worker`].
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Processing attempts after the first for a failing record (the job's `max_retries`
    /// overrides it).
    pub max_retries: u32,
    /// Delay before the first retry of a record, doubled for each further one (the job's
    /// `retry_delay_ms` overrides it).
    pub retry_delay: Duration,
    /// Whether a failed record lets the rest of the batch go on (the job's
    /// `continue_on_error` overrides it). When not, the batch stops and is marked `FAILED`.
    pub continue_on_error: bool,
    /// How often a worker proves it is alive while it processes a batch.
    pub heartbeat_interval: Duration,
    /// How long a batch may go without a heartbeat before other workers reclaim it.
    pub stale_timeout: Duration,
    /// How long an idle worker waits before looking again when other workers hold the last
    /// batches.
    pub poll_interval: Duration,
    /// Where progress events go, if anywhere.
    pub progress: Option<mpsc::UnboundedSender<WorkerEvent>>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            max_retries: 0,
            retry_delay: Duration::from_millis(100),
            continue_on_error: true,
            heartbeat_interval: Duration::from_secs(10),
            stale_timeout: Duration::from_secs(60),
            poll_interval: Duration::from_millis(200),
            progress: None,
        }
    }
}

/// Something a worker did, for progress displays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerEvent {
    /// A batch was finished by this worker.
    BatchFinished {
        /// The worker.
        worker_id: String,
        /// The batch's index.
        batch_index: u32,
        /// Records processed successfully.
        processed: u64,
        /// Records that failed.
        failed: u64,
        /// Whether the batch as a whole failed.
        batch_failed: bool,
    },
    /// This worker's claim on a batch was lost (the batch was reclaimed); its work was discarded.
    ClaimLost {
        /// The worker.
        worker_id: String,
        /// The batch's index.
        batch_index: u32,
    },
    /// This worker finalized the job.
    JobFinalized {
        /// The worker.
        worker_id: String,
        /// The job's final status.
        status: JobStatus,
    },
}

/// What one worker did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// Batches this worker finished.
    pub batches: u64,
    /// Records it processed successfully.
    pub processed: u64,
    /// Records that failed.
    pub failed: u64,
    /// Batches it had to give up because their claim was lost.
    pub claims_lost: u64,
    /// Stale batches it reclaimed.
    pub reclaimed: u64,
    /// Whether this worker finalized the job.
    pub finalized: bool,
}

/// Runs a worker on `job_id` until the job is finalized: it claims a batch, runs `processor` on
/// its records (with per-record retries), saves the outcomes, completes the batch (fenced by the
/// claim, with a heartbeat keeping a long batch claimed) and tries to finalize the job; when no
/// batch is left to claim, it reclaims stale batches of dead workers or waits for the others.
///
/// `processor` is called once per record to process (records already `processed` or `failed`
/// by an earlier run are skipped), with the record's parsed value.
///
/// # Errors
///
/// [`Error::NotFound`] when the job does not exist; store errors that are not retryable
/// (retryable ones are retried with backoff).
#[tracing::instrument(skip(store, processor, options), err)]
pub async fn run_worker<F, Fut>(
    store: Arc<dyn DistributedStateStore>,
    job_id: &str,
    worker_id: &str,
    processor: F,
    options: WorkerOptions,
) -> Result<WorkerReport>
where
    F: Fn(RecordContext, Value) -> Fut + Send + Sync,
    Fut: Future<Output = std::result::Result<(), ProcessError>> + Send,
{
    let mut report = WorkerReport::default();
    let mut errors: u32 = 0;
    let mut config: Option<JobConfig> = None;
    loop {
        let step = async {
            if config.is_none() {
                let job = store
                    .get_job_state(job_id)
                    .await?
                    .ok_or_else(|| Error::NotFound {
                        entity: "job",
                        key: job_id.to_owned(),
                    })?;
                config = Some(job.config);
            }
            let settings = Settings::new(config.as_ref(), &options);
            match store.claim_batch(job_id, worker_id).await? {
                ClaimBatchResult::Claimed(reservation) => {
                    let processed = process_batch(
                        &store,
                        &reservation,
                        &processor,
                        &settings,
                        &options,
                        &mut report,
                    )
                    .await;
                    if let Err(err) = processed {
                        // Give the batch back rather than leave it to the stale timeout (a
                        // finished batch is left alone); when that fails too, the timeout
                        // reclaims it.
                        if let Err(release) = store
                            .release_batch(job_id, &reservation.batch_id, worker_id)
                            .await
                        {
                            tracing::warn!(error = %release, "could not release the batch");
                        }
                        return Err(err);
                    }
                    Ok(false)
                }
                ClaimBatchResult::NoPendingBatches => {
                    let status = store.get_distributed_status(job_id).await?;
                    if status.is_complete {
                        finalize(&*store, job_id, worker_id, &options, &mut report).await?;
                        return Ok(true);
                    }
                    let reclaimed = store
                        .reclaim_stale_batches(job_id, options.stale_timeout)
                        .await?;
                    report.reclaimed += reclaimed;
                    if reclaimed == 0 {
                        tokio::time::sleep(options.poll_interval).await;
                    }
                    Ok(false)
                }
                ClaimBatchResult::JobNotProcessing => Ok(true),
                ClaimBatchResult::JobNotFound => Err(Error::NotFound {
                    entity: "job",
                    key: job_id.to_owned(),
                }),
            }
        };
        match step.await {
            Ok(true) => return Ok(report),
            Ok(false) => errors = 0,
            Err(err) if err.is_retryable() && errors < MAX_ERRORS => {
                errors += 1;
                tracing::warn!(error = %err, errors, "worker step failed; backing off");
                tokio::time::sleep(backoff(errors)).await;
            }
            Err(err) => return Err(err),
        }
    }
}

/// Consecutive retryable failures a worker rides out (about 50 s of backoff in all, enough for
/// a database server restart) before it gives up with the last error.
const MAX_ERRORS: u32 = 20;

/// The pause after the `errors`-th consecutive failure: 100 ms doubling up to 3.2 s.
fn backoff(errors: u32) -> Duration {
    Duration::from_millis(50u64 << errors.clamp(1, 6))
}

/// Runs a store call of a claimed batch, retrying retryable failures with [`backoff`], so that a
/// short outage does not throw away the batch's work.
async fn retrying<T, F, Fut>(what: &'static str, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut errors = 0;
    loop {
        match op().await {
            Err(err) if err.is_retryable() && errors < MAX_ERRORS => {
                errors += 1;
                tracing::warn!(operation = what, error = %err, errors, "store call failed; backing off");
                tokio::time::sleep(backoff(errors)).await;
            }
            result => return result,
        }
    }
}

/// The effective per-record settings: the job's configuration over the worker's options.
struct Settings {
    max_retries: u32,
    retry_delay: Duration,
    continue_on_error: bool,
}

impl Settings {
    fn new(config: Option<&JobConfig>, options: &WorkerOptions) -> Self {
        Self {
            max_retries: config
                .and_then(|c| c.max_retries)
                .unwrap_or(options.max_retries),
            retry_delay: config
                .and_then(|c| c.retry_delay_ms)
                .map_or(options.retry_delay, Duration::from_millis),
            continue_on_error: config
                .and_then(|c| c.continue_on_error)
                .unwrap_or(options.continue_on_error),
        }
    }
}

async fn finalize(
    store: &dyn DistributedStateStore,
    job_id: &str,
    worker_id: &str,
    options: &WorkerOptions,
    report: &mut WorkerReport,
) -> Result<()> {
    if store.try_finalize_job(job_id).await? {
        report.finalized = true;
        let status = store
            .get_job_state(job_id)
            .await?
            .map_or(JobStatus::Completed, |j| j.status);
        tracing::info!(%status, "job finalized");
        emit(
            options,
            WorkerEvent::JobFinalized {
                worker_id: worker_id.to_owned(),
                status,
            },
        );
    }
    Ok(())
}

fn emit(options: &WorkerOptions, event: WorkerEvent) {
    if let Some(progress) = &options.progress {
        let _ = progress.send(event);
    }
}

#[tracing::instrument(skip_all, fields(batch_index = reservation.batch_index))]
async fn process_batch<F, Fut>(
    store: &Arc<dyn DistributedStateStore>,
    reservation: &BatchReservation,
    processor: &F,
    settings: &Settings,
    options: &WorkerOptions,
    report: &mut WorkerReport,
) -> Result<()>
where
    F: Fn(RecordContext, Value) -> Fut + Send + Sync,
    Fut: Future<Output = std::result::Result<(), ProcessError>> + Send,
{
    let records = retrying("get_batch_records", || {
        store.get_batch_records(&reservation.job_id, &reservation.batch_id)
    })
    .await?;

    // The heartbeat runs beside the processing; it stops with the batch, and cancels the
    // processing when the claim turns out to be lost.
    let lost = CancellationToken::new();
    let done = CancellationToken::new();
    let heartbeat = {
        let (store, reservation) = (Arc::clone(store), reservation.clone());
        let (lost, done) = (lost.clone(), done.clone());
        let interval = options.heartbeat_interval;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = done.cancelled() => return,
                    () = tokio::time::sleep(interval) => {}
                }
                match store.heartbeat_batch(&reservation).await {
                    Ok(true) => {}
                    Ok(false) => {
                        lost.cancel();
                        return;
                    }
                    Err(err) => tracing::warn!(error = %err, "heartbeat failed"),
                }
            }
        })
    };
    // Stops the heartbeat however this function ends: returned, dropped by a caller's timeout,
    // or unwound by a panicking processor. A heartbeat outliving its batch would keep the batch
    // from ever being reclaimed.
    let _stop_heartbeat = done.clone().drop_guard();

    let mut outcomes = Vec::with_capacity(records.len());
    let (mut processed, mut failed, mut stopped) = (0u64, 0u64, false);
    for record in records {
        match record.status {
            // Outcomes an earlier owner of this batch already saved.
            RecordStatus::Processed => {
                processed += 1;
                continue;
            }
            RecordStatus::Failed | RecordStatus::Invalid => {
                failed += 1;
                continue;
            }
            RecordStatus::Pending | RecordStatus::Valid => {}
        }
        if stopped || lost.is_cancelled() {
            break;
        }
        let outcome = process_record(reservation, record, processor, settings).await;
        if outcome.status == RecordStatus::Processed {
            processed += 1;
        } else {
            failed += 1;
            if !settings.continue_on_error {
                stopped = true;
            }
        }
        outcomes.push(outcome);
    }
    done.cancel();
    let _ = heartbeat.await;

    let worker_id = reservation.worker_id.clone();
    if lost.is_cancelled() {
        report.claims_lost += 1;
        emit(
            options,
            WorkerEvent::ClaimLost {
                worker_id,
                batch_index: reservation.batch_index,
            },
        );
        return Ok(());
    }
    // Only the outcome columns: the payloads were saved by `prepare` and did not change.
    let outcomes: Vec<RecordOutcome> = outcomes.iter().map(RecordOutcome::of).collect();
    let outcome = if stopped {
        BatchOutcome::failed(processed, failed)
    } else {
        BatchOutcome::completed(processed, failed)
    };
    // Outcomes and completion in one fenced write: a worker whose claim was lost writes
    // nothing. A completion that took effect but whose answer was lost reads as a lost claim
    // when retried; the batch is finished either way, and whoever comes next finalizes the job.
    if !retrying("complete_batch_with_outcomes", || {
        store.complete_batch_with_outcomes(reservation, outcome, &outcomes)
    })
    .await?
    {
        report.claims_lost += 1;
        tracing::warn!("claim lost before completion; the batch belongs to another worker now");
        emit(
            options,
            WorkerEvent::ClaimLost {
                worker_id,
                batch_index: reservation.batch_index,
            },
        );
        return Ok(());
    }
    report.batches += 1;
    report.processed += processed;
    report.failed += failed;
    emit(
        options,
        WorkerEvent::BatchFinished {
            worker_id: worker_id.clone(),
            batch_index: reservation.batch_index,
            processed,
            failed,
            batch_failed: stopped,
        },
    );
    finalize(&**store, &reservation.job_id, &worker_id, options, report).await
}

async fn process_record<F, Fut>(
    reservation: &BatchReservation,
    mut record: ProcessedRecord,
    processor: &F,
    settings: &Settings,
) -> ProcessedRecord
where
    F: Fn(RecordContext, Value) -> Fut + Send + Sync,
    Fut: Future<Output = std::result::Result<(), ProcessError>> + Send,
{
    let mut attempt = 0;
    loop {
        let ctx = RecordContext {
            job_id: reservation.job_id.clone(),
            batch_id: reservation.batch_id.clone(),
            index: record.index,
            attempt,
        };
        match processor(ctx, record.parsed.clone()).await {
            Ok(()) => {
                record.status = RecordStatus::Processed;
                record.processing_error = None;
                record.retry_count = attempt;
                return record;
            }
            Err(err) if attempt < settings.max_retries => {
                let delay = settings.retry_delay.saturating_mul(1u32 << attempt.min(16));
                tracing::debug!(index = record.index, attempt, error = %err, "record failed; retrying");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            Err(err) => {
                record.status = RecordStatus::Failed;
                record.processing_error = Some(err.to_string());
                record.retry_count = attempt;
                return record;
            }
        }
    }
}

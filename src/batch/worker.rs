//! The distributed batch runner: prepares a job from records, and runs workers that claim its
//! batches, process their records and finalize the job, over any [`DistributedStateStore`].
//!
//! Many workers, in one process or many, share a job through the store:
//!
//! 1. [`prepare`] creates the job `CREATED` if it is absent, splits the records into batches,
//!    saves the records that are not stored yet (bulk), then adds the batch rows and starts the
//!    job (`PROCESSING`) in one conditional step. Running it from many places at once, or again
//!    later, is safe.
//! 2. [`run_worker`] loops: claim a batch → load its records → run the processor on each
//!    (with per-record retries) → save the outcomes and complete the batch in one write (fenced
//!    by the claim) → try to finalize the job. A heartbeat keeps a long batch claimed; batches
//!    of dead workers are reclaimed once stale. It returns when the job is finished or paused,
//!    or when its shutdown token is cancelled.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::model::{
    Batch, BatchOutcome, BatchReservation, ClaimBatchResult, JobConfig, JobState, JobStatus,
    ProcessedRecord, RecordOutcome, RecordStatus,
};
use super::store::DistributedStateStore;
use crate::dialect::Backoff;
use crate::error::{Error, Result};
use crate::id::new_id;
use crate::metric::WorkerMetrics;
use crate::unwind::caught;

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

pub use super::check::MAX_PREPARED_JOB_ID_LEN;

/// The id of batch `index` of `job_id`: derived, so that preparing again finds the same rows.
fn batch_id(job_id: &str, index: u32) -> String {
    format!("{job_id}-b{index}")
}

/// Splits `records` into batches of `config.batch_size`, saves them as `pending` records and
/// starts the job as a `PROCESSING` distributed job with one batch row per batch.
///
/// Records are consumed batch by batch, so a large source is never held in memory at once.
///
/// Preparing is safe from any number of places at once, and to repeat, as long as every
/// caller passes the same records (for example every worker process prepares before it
/// runs):
///
/// 1. the job row is created `CREATED` only if the job does not exist
///    ([`create_job`](DistributedStateStore::create_job)); workers do not claim a `CREATED`
///    job, they wait for it;
/// 2. records are saved only where none is stored
///    ([`save_batch_records`](DistributedStateStore::save_batch_records)), so an outcome is
///    never reset;
/// 3. the batch rows are added and the job moves from `CREATED` to `PROCESSING` in one
///    conditional step ([`start_job`](DistributedStateStore::start_job)), taken by one caller.
///
/// A job that was started already (whatever its workers did since) is left as it is and its
/// totals are returned; a `CREATED` job (a prepare that stopped half way, or one running
/// now) is prepared again, writing only what is missing. A job without records is started
/// `COMPLETED`. Times come from the store's clock.
///
/// # Errors
///
/// [`Error::InvalidArgument`] for an empty job id, one longer than
/// [`MAX_PREPARED_JOB_ID_LEN`] characters or a batch size of 0 (nothing is written then);
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
        return Err(Error::invalid("job_id", "must not be empty"));
    }
    if job_id.chars().count() > MAX_PREPARED_JOB_ID_LEN {
        return Err(Error::invalid(
            "job_id",
            format!(
                "longer than {MAX_PREPARED_JOB_ID_LEN} characters (the ids of its batches would not fit)"
            ),
        ));
    }
    let size = usize::try_from(config.batch_size).unwrap_or(usize::MAX);
    if size == 0 {
        return Err(Error::invalid("batch_size", "must be at least 1"));
    }
    let mut job = JobState::new(job_id, config);
    job.distributed = true;
    // Each step is safe to repeat (see above), so one whose reply was lost is repeated as it
    // was: a repeated create finds the job `CREATED` and goes on, a repeated start finds it
    // started and answers its totals.
    if !Backoff::REPEAT
        .retry("create_job", || store.create_job(&job))
        .await?
    {
        let existing = existing_job(store, job_id).await?;
        if !existing.distributed {
            return Err(Error::conflict(format!(
                "job {job_id} exists and is not a distributed job"
            )));
        }
        if existing.status != JobStatus::Created {
            return prepared(store, &existing).await;
        }
        // Still CREATED: another prepare is running or stopped half way. Going on writes only
        // what is missing, and only one of us starts the job.
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
        let index = u32::try_from(batches.len())
            .map_err(|_| Error::invalid("records", "more batches than fit in u32"))?;
        let id = batch_id(job_id, index);
        Backoff::REPEAT
            .retry("save_batch_records", || {
                store.save_batch_records(job_id, &id, &chunk)
            })
            .await?;
        if let (Some(first), Some(last)) = (chunk.first(), chunk.last()) {
            batches.push(Batch::new(id, index).with_records(first.index, last.index));
        }
    }
    let total_batches = u32::try_from(batches.len()).unwrap_or(u32::MAX);
    job.total_records = next_index;
    // Nothing to claim means no worker would ever finalize it: it is done already.
    job.status = if batches.is_empty() {
        JobStatus::Completed
    } else {
        JobStatus::Processing
    };
    job.batches = batches;
    if !Backoff::REPEAT
        .retry("start_job", || store.start_job(&job))
        .await?
    {
        tracing::info!("job started by another prepare");
        return prepared(store, &existing_job(store, job_id).await?).await;
    }
    tracing::info!(total_records = next_index, total_batches, "job prepared");
    Ok(PreparedJob {
        job_id: job_id.to_owned(),
        total_records: next_index,
        total_batches,
    })
}

/// The stored job `job_id`, which a failed create or start showed to exist.
async fn existing_job(store: &dyn DistributedStateStore, job_id: &str) -> Result<JobState> {
    store
        .get_job_without_batches(job_id)
        .await?
        .ok_or_else(|| Error::conflict(format!("job {job_id} was deleted while being prepared")))
}

/// What preparing `job`, started already, created.
async fn prepared(store: &dyn DistributedStateStore, job: &JobState) -> Result<PreparedJob> {
    let status = store.get_distributed_status(&job.id).await?;
    Ok(PreparedJob {
        job_id: job.id.clone(),
        total_records: job.total_records,
        total_batches: u32::try_from(status.total_batches).unwrap_or(u32::MAX),
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
    /// `retry_delay` overrides it).
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
    /// Cancel it to stop the worker: it stops claiming, gives a batch it holds back after the
    /// record in progress (the records of that batch it did not save are processed again by
    /// whoever claims it next), and returns with [`WorkerReport::shut_down`] set.
    pub shutdown: CancellationToken,
    /// Constant labels added to every metric of this worker (default: none), for example
    /// `("pipeline", "import")`; see [`metric`](crate::metric). Never a job id: each distinct
    /// set is a time series.
    pub metric_labels: Vec<(String, String)>,
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
            shutdown: CancellationToken::new(),
            metric_labels: Vec::new(),
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
    /// The job's status when the worker returned: finished (`COMPLETED`, `FAILED`,
    /// `ABORTED`) or `PAUSED` (run the workers again once it is resumed). `None` when the
    /// worker stopped for its [`shutdown`](WorkerOptions::shutdown) token first.
    pub job_status: Option<JobStatus>,
    /// Whether the worker stopped because its shutdown token was cancelled.
    pub shut_down: bool,
}

/// Runs a worker on `job_id` until the job is finished or paused, or the worker is shut down:
/// it claims a batch, runs `processor` on its records (with per-record retries), saves the
/// outcomes, completes the batch (fenced by the claim, with a heartbeat keeping a long batch
/// claimed) and tries to finalize the job; when no batch is left to claim, it reclaims stale
/// batches of dead workers or waits for the others. While the job is still being prepared
/// (`CREATED`) it waits for it to start; a job left `CREATED` by a prepare that died half way
/// starts when [`prepare`] runs again (or the worker is shut down).
///
/// `processor` is called once per record to process (records already `processed` or `failed`
/// by an earlier run are skipped), with the record's parsed value deserialized into `T`
/// (`serde_json::Value` takes any record). A record that does not deserialize fails without
/// being retried, its processing error saying why.
///
/// The report says how the job stood when the worker returned
/// ([`WorkerReport::job_status`]): a `PAUSED` job makes every worker return, to be run again
/// when the job is resumed.
///
/// # Errors
///
/// [`Error::NotFound`] when the job does not exist; store errors that are not retryable
/// (retryable ones are retried with backoff).
#[tracing::instrument(skip(store, processor, options), err)]
pub async fn run_worker<T, F, Fut>(
    store: Arc<dyn DistributedStateStore>,
    job_id: &str,
    worker_id: &str,
    processor: F,
    options: WorkerOptions,
) -> Result<WorkerReport>
where
    T: DeserializeOwned,
    F: Fn(RecordContext, T) -> Fut + Send + Sync,
    Fut: Future<Output = std::result::Result<(), ProcessError>> + Send,
{
    let mut report = WorkerReport::default();
    // Resolved once: a worker's handles are the same for all its batches.
    let metrics = WorkerMetrics::new(&options.metric_labels);
    let mut errors: u32 = 0;
    let mut config: Option<JobConfig> = None;
    let shutdown = &options.shutdown;
    // Kept across a failed claim and a failed finalization, so that their retries recognize
    // one that took effect although its answer was lost.
    let mut claim_id = new_id("claim-");
    let mut finalizer = Finalizer {
        id: new_id("finalize-"),
        unsure: false,
    };
    loop {
        if shutdown.is_cancelled() {
            report.shut_down = true;
            return Ok(report);
        }
        let step = async {
            if config.is_none() {
                let job = store
                    .get_job_without_batches(job_id)
                    .await?
                    .ok_or_else(|| Error::NotFound {
                        entity: "job",
                        key: job_id.to_owned(),
                    })?;
                config = Some(job.config);
            }
            let settings = Settings::new(config.as_ref(), &options, &metrics);
            let claimed = store
                .claim_batch_with_id(job_id, worker_id, &claim_id)
                .await?;
            // Answered: the next claim is a new one.
            claim_id = new_id("claim-");
            match claimed {
                ClaimBatchResult::Claimed(reservation) => {
                    metrics.claimed.increment(1);
                    let processed = caught(process_batch(
                        &store,
                        &reservation,
                        &processor,
                        &settings,
                        &options,
                        &mut report,
                        &mut finalizer,
                    ))
                    .await;
                    let processed = match processed {
                        Ok(processed) => processed,
                        Err(panic) => {
                            // Give the batch back as after an error, then let the step's own
                            // catch count the panic and back off.
                            if let Err(release) = store.release_batch(&reservation).await {
                                tracing::warn!(error = %release, "could not release the batch");
                            }
                            std::panic::resume_unwind(Box::new(panic));
                        }
                    };
                    if let Err(err) = processed {
                        // Give the batch back rather than leave it to the stale timeout (fenced:
                        // a finished batch, or one claimed again since, is left alone); when
                        // that fails too, the timeout reclaims it.
                        if let Err(release) = store.release_batch(&reservation).await {
                            tracing::warn!(error = %release, "could not release the batch");
                        }
                        return Err(err);
                    }
                    Ok(None)
                }
                ClaimBatchResult::NoPendingBatches => {
                    let status = store.get_distributed_status(job_id).await?;
                    if status.is_complete {
                        // Whoever finalizes, the next claim finds the job finished.
                        finalize(
                            &*store,
                            job_id,
                            worker_id,
                            &mut finalizer,
                            &options,
                            &metrics,
                            &mut report,
                        )
                        .await?;
                        return Ok(None);
                    }
                    let reclaimed = store
                        .reclaim_stale_batches(job_id, options.stale_timeout)
                        .await?;
                    report.reclaimed += reclaimed;
                    metrics.reclaimed.increment(reclaimed);
                    if reclaimed == 0 {
                        pause(shutdown, options.poll_interval).await;
                    }
                    Ok(None)
                }
                ClaimBatchResult::JobNotProcessing => {
                    let job = store
                        .get_job_without_batches(job_id)
                        .await?
                        .ok_or_else(|| Error::NotFound {
                            entity: "job",
                            key: job_id.to_owned(),
                        })?;
                    match job.status {
                        // Not started yet: a prepare is still saving its records.
                        JobStatus::Created | JobStatus::Previewing | JobStatus::Previewed => {
                            pause(shutdown, options.poll_interval).await;
                            Ok(None)
                        }
                        // Paused or finished: nothing to do for now. When this worker's
                        // finalization failed without an answer, ask whether it took effect.
                        status => {
                            if finalizer.unsure {
                                finalize(
                                    &*store,
                                    job_id,
                                    worker_id,
                                    &mut finalizer,
                                    &options,
                                    &metrics,
                                    &mut report,
                                )
                                .await?;
                            }
                            Ok(Some(status))
                        }
                    }
                }
                ClaimBatchResult::JobNotFound => Err(Error::NotFound {
                    entity: "job",
                    key: job_id.to_owned(),
                }),
            }
        };
        match caught(step).await {
            Ok(Ok(Some(status))) => {
                report.job_status = Some(status);
                return Ok(report);
            }
            Ok(Ok(None)) => errors = 0,
            // A panic in the store, its driver or the worker: the step is tried again after
            // the same backoff as a retryable error, and given up after as many.
            Err(panic) => {
                errors += 1;
                metrics.panics("worker").increment(1);
                tracing::error!(
                    loop_name = "worker",
                    panic,
                    errors,
                    "worker step panicked; backing off"
                );
                let Some(delay) = Backoff::RUNNER.pause(errors) else {
                    return Err(Error::InvalidState {
                        entity: "job",
                        key: job_id.to_owned(),
                        reason: format!(
                            "the worker's step panicked {errors} times in a row, last: {panic}"
                        ),
                    });
                };
                pause(shutdown, delay).await;
            }
            Ok(Err(err)) if err.is_retryable() => {
                errors += 1;
                let Some(delay) = Backoff::RUNNER.pause(errors) else {
                    return Err(err);
                };
                metrics.errors.increment(1);
                tracing::warn!(error = %err, errors, "worker step failed; backing off");
                pause(shutdown, delay).await;
            }
            Ok(Err(err)) => return Err(err),
        }
    }
}

/// Sleeps for `duration`, or until `shutdown` is cancelled.
async fn pause(shutdown: &CancellationToken, duration: Duration) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(duration) => {}
    }
}

/// The effective per-record settings: the job's configuration over the worker's options; and
/// the worker's metrics.
struct Settings<'a> {
    max_retries: u32,
    retry_delay: Duration,
    continue_on_error: bool,
    metrics: &'a WorkerMetrics,
}

impl<'a> Settings<'a> {
    fn new(
        config: Option<&JobConfig>,
        options: &WorkerOptions,
        metrics: &'a WorkerMetrics,
    ) -> Self {
        Self {
            metrics,
            max_retries: config
                .and_then(|c| c.max_retries)
                .unwrap_or(options.max_retries),
            retry_delay: config
                .and_then(|c| c.retry_delay)
                .unwrap_or(options.retry_delay),
            continue_on_error: config
                .and_then(|c| c.continue_on_error)
                .unwrap_or(options.continue_on_error),
        }
    }
}

/// This worker's finalizer id, and whether its last finalization failed without an answer.
struct Finalizer {
    id: String,
    unsure: bool,
}

async fn finalize(
    store: &dyn DistributedStateStore,
    job_id: &str,
    worker_id: &str,
    finalizer: &mut Finalizer,
    options: &WorkerOptions,
    metrics: &WorkerMetrics,
    report: &mut WorkerReport,
) -> Result<()> {
    // Cleared only by an answer: after an error the finalization may have taken effect.
    finalizer.unsure = true;
    let finalized = store
        .try_finalize_job_with_id(job_id, &finalizer.id)
        .await?;
    finalizer.unsure = false;
    if finalized && !report.finalized {
        report.finalized = true;
        // The job row only: a batch row that cannot be read must not fail the finalizer.
        let status = store
            .get_job_without_batches(job_id)
            .await?
            .map_or(JobStatus::Completed, |j| j.status);
        tracing::info!(%status, "job finalized");
        metrics.job_finalized(status.as_str());
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
async fn process_batch<T, F, Fut>(
    store: &Arc<dyn DistributedStateStore>,
    reservation: &BatchReservation,
    processor: &F,
    settings: &Settings<'_>,
    options: &WorkerOptions,
    report: &mut WorkerReport,
    finalizer: &mut Finalizer,
) -> Result<()>
where
    T: DeserializeOwned,
    F: Fn(RecordContext, T) -> Fut + Send + Sync,
    Fut: Future<Output = std::result::Result<(), ProcessError>> + Send,
{
    let started = std::time::Instant::now();
    let metrics = settings.metrics;
    let records = Backoff::RUNNER
        .retry_observed(
            "get_batch_records",
            || metrics.errors.increment(1),
            || store.get_batch_records(&reservation.job_id, &reservation.batch_id),
        )
        .await?;

    // The heartbeat runs beside the processing; it stops with the batch, and cancels the
    // processing when the claim turns out to be lost.
    let lost = CancellationToken::new();
    let done = CancellationToken::new();
    let heartbeat = {
        let (store, reservation) = (Arc::clone(store), reservation.clone());
        let (lost, done) = (lost.clone(), done.clone());
        let interval = options.heartbeat_interval;
        let panics = metrics.panics("heartbeat");
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = done.cancelled() => return,
                    () = tokio::time::sleep(interval) => {}
                }
                match caught(store.heartbeat_batch(&reservation)).await {
                    Ok(Ok(true)) => {}
                    Ok(Ok(false)) => {
                        lost.cancel();
                        return;
                    }
                    Ok(Err(err)) => tracing::warn!(error = %err, "heartbeat failed"),
                    // The next heartbeat is tried at its time, as after an error: a dead
                    // heartbeat would let the batch be reclaimed while it is processed.
                    Err(panic) => {
                        panics.increment(1);
                        tracing::error!(loop_name = "heartbeat", panic, "heartbeat panicked");
                    }
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
        if stopped || lost.is_cancelled() || options.shutdown.is_cancelled() {
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
    if options.shutdown.is_cancelled() && !lost.is_cancelled() {
        // Shut down part way: give the batch back at once rather than leave it to the stale
        // timeout. Fenced, so a claim lost meanwhile is left to its new owner.
        if !Backoff::RUNNER
            .retry_observed(
                "release_batch",
                || metrics.errors.increment(1),
                || store.release_batch(reservation),
            )
            .await?
        {
            tracing::warn!("claim lost before the batch could be given back");
        }
        return Ok(());
    }
    if lost.is_cancelled() {
        report.claims_lost += 1;
        metrics.claims_lost.increment(1);
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
    if !Backoff::RUNNER
        .retry_observed(
            "complete_batch_with_outcomes",
            || metrics.errors.increment(1),
            || store.complete_batch_with_outcomes(reservation, outcome, &outcomes),
        )
        .await?
    {
        report.claims_lost += 1;
        metrics.claims_lost.increment(1);
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
    metrics.records_processed.increment(processed);
    metrics.records_failed.increment(failed);
    if stopped {
        metrics.failed.increment(1);
    } else {
        metrics.completed.increment(1);
    }
    metrics.duration.record(started.elapsed());
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
    finalize(
        &**store,
        &reservation.job_id,
        &worker_id,
        finalizer,
        options,
        metrics,
        report,
    )
    .await
}

async fn process_record<T, F, Fut>(
    reservation: &BatchReservation,
    mut record: ProcessedRecord,
    processor: &F,
    settings: &Settings<'_>,
) -> ProcessedRecord
where
    T: DeserializeOwned,
    F: Fn(RecordContext, T) -> Fut + Send + Sync,
    Fut: Future<Output = std::result::Result<(), ProcessError>> + Send,
{
    let mut attempt = 0;
    loop {
        // Deserialized for each attempt, so `T` need not be `Clone`.
        let input = match T::deserialize(&record.parsed) {
            Ok(input) => input,
            Err(err) => {
                // Retrying cannot change the record: it fails at once.
                record.status = RecordStatus::Failed;
                record.processing_error = Some(format!("record does not deserialize: {err}"));
                record.retry_count = attempt;
                return record;
            }
        };
        let ctx = RecordContext {
            job_id: reservation.job_id.clone(),
            batch_id: reservation.batch_id.clone(),
            index: record.index,
            attempt,
        };
        // A panicking processor fails the record (and is retried like any failure) instead
        // of unwinding through the worker.
        let processed = caught(processor(ctx, input))
            .await
            .unwrap_or_else(|panic| Err(format!("record processor panicked: {panic}").into()));
        match processed {
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

//! The distributed batch worker ([`prepare`] and [`run_worker`]) on every backend, and on the
//! in-memory store where no database is needed: many workers finish a job with every record
//! processed once, a failing record stops its batch when asked to, a worker process killed
//! with SIGKILL loses nothing, workers ride out a PostgreSQL outage, and preparing is safe to
//! repeat.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use sea_orm::{ConnectionTrait, Database, Statement};
use sea_orm_durable::batch::store::{
    BatchOutcome, ClaimBatchResult, DistributedStateStore, RecordFilter,
};
use sea_orm_durable::batch::{
    BatchStatus, InMemoryStateStore, JobStatus, ProcessError, RecordContext, RecordStatus,
    WorkerEvent, WorkerReport,
};
use sea_orm_durable::{Error, JobConfig, SeaOrmStateStore, WorkerOptions, prepare, run_worker};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::harness::{Backend, TestDb, child_db, connect_options, per_backend, spawn_child};

per_backend!(
    workers_process_every_record_once,
    stop_on_error_fails_the_batch_and_the_job,
    killed_worker_batch_is_reclaimed_and_finished,
    prepare_twice_changes_nothing,
    prepare_rejects_bad_arguments_and_completes_an_empty_job,
    concurrent_prepares_and_workers_process_every_record_once,
    paused_job_returns_its_workers,
    shutdown_gives_the_batch_back,
    typed_input_fails_records_that_do_not_fit,
    corrupt_pending_batch_fails_the_job_instead_of_blocking_it,
    errors_holding_nul_are_stored_and_the_job_finishes,
);

mod memory {
    use super::*;

    fn store() -> Arc<dyn DistributedStateStore> {
        Arc::new(InMemoryStateStore::new())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn workers_process_every_record_once() -> anyhow::Result<()> {
        super::many_workers(store()).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn stop_on_error_fails_the_batch_and_the_job() -> anyhow::Result<()> {
        super::stop_on_error(store()).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn prepare_twice_changes_nothing() -> anyhow::Result<()> {
        super::prepare_twice(store()).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn prepare_rejects_bad_arguments_and_completes_an_empty_job() -> anyhow::Result<()> {
        super::prepare_edges(store()).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_prepares_and_workers_process_every_record_once() -> anyhow::Result<()> {
        super::concurrent_prepares(store()).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn paused_job_returns_its_workers() -> anyhow::Result<()> {
        super::paused_job(store()).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn shutdown_gives_the_batch_back() -> anyhow::Result<()> {
        super::shutdown(store()).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn typed_input_fails_records_that_do_not_fit() -> anyhow::Result<()> {
        super::typed_input(store()).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn errors_holding_nul_are_stored_and_the_job_finishes() -> anyhow::Result<()> {
        super::nul_errors(store()).await
    }
}

fn sea_orm_store(t: &TestDb) -> Arc<dyn DistributedStateStore> {
    Arc::new(SeaOrmStateStore::new(t.db.clone()))
}

async fn workers_process_every_record_once(t: TestDb) -> anyhow::Result<()> {
    many_workers(sea_orm_store(&t)).await
}

async fn stop_on_error_fails_the_batch_and_the_job(t: TestDb) -> anyhow::Result<()> {
    stop_on_error(sea_orm_store(&t)).await
}

async fn prepare_twice_changes_nothing(t: TestDb) -> anyhow::Result<()> {
    prepare_twice(sea_orm_store(&t)).await
}

async fn prepare_rejects_bad_arguments_and_completes_an_empty_job(t: TestDb) -> anyhow::Result<()> {
    prepare_edges(sea_orm_store(&t)).await
}

async fn concurrent_prepares_and_workers_process_every_record_once(
    t: TestDb,
) -> anyhow::Result<()> {
    let pool = t.connect(8).await?;
    concurrent_prepares(Arc::new(SeaOrmStateStore::new(pool))).await
}

async fn paused_job_returns_its_workers(t: TestDb) -> anyhow::Result<()> {
    paused_job(sea_orm_store(&t)).await
}

async fn shutdown_gives_the_batch_back(t: TestDb) -> anyhow::Result<()> {
    shutdown(sea_orm_store(&t)).await
}

async fn typed_input_fails_records_that_do_not_fit(t: TestDb) -> anyhow::Result<()> {
    typed_input(sea_orm_store(&t)).await
}

async fn errors_holding_nul_are_stored_and_the_job_finishes(t: TestDb) -> anyhow::Result<()> {
    nul_errors(sea_orm_store(&t)).await
}

/// A processor error that echoes a record field holding U+0000 (which PostgreSQL refuses in
/// text) is stored as it is, and the job goes on to the end instead of failing every worker
/// that claims the batch.
async fn nul_errors(store: Arc<dyn DistributedStateStore>) -> anyhow::Result<()> {
    let job = "nul-errors";
    let config = JobConfig {
        max_retries: Some(0),
        ..JobConfig::new(10)
    };
    let rows = (0..40_u64).map(|i| json!({ "i": i, "name": format!("row\u{0}{i}") }));
    prepare(&*store, job, config, rows).await?;
    let processor = |ctx: RecordContext, value: Value| async move {
        if ctx.index % 7 == 3 {
            let name = value["name"].as_str().unwrap_or_default().to_owned();
            return Err(ProcessError::from(format!("refused {name}")));
        }
        Ok(())
    };
    let reports = run_workers(&store, job, 2, processor, &options(None)).await?;
    ensure!(
        reports
            .iter()
            .any(|r| r.job_status == Some(JobStatus::Completed)),
        "no worker saw the job complete: {reports:?}"
    );
    let failed = store
        .get_records(job, &RecordFilter::new().statuses([RecordStatus::Failed]))
        .await?;
    ensure!(failed.len() == 6, "{} failed records", failed.len());
    for record in failed {
        let expected = format!("refused row\u{0}{}", record.index);
        ensure!(
            record.processing_error.as_deref() == Some(expected.as_str()),
            "record {}: {:?}",
            record.index,
            record.processing_error
        );
    }
    Ok(())
}

/// A pending batch row that cannot be read (a negative record range) fails that batch: the
/// workers finish every other batch and the job ends `FAILED` instead of never ending.
async fn corrupt_pending_batch_fails_the_job_instead_of_blocking_it(
    t: TestDb,
) -> anyhow::Result<()> {
    let store = sea_orm_store(&t);
    let job = "corrupt";
    prepare(&*store, job, JobConfig::new(10), records(50)).await?;
    t.db.execute_unprepared(
        "UPDATE batchactions_batches SET record_end_index = -5 WHERE id = 'corrupt-b2'",
    )
    .await?;
    let calls = Calls::new(50);
    let processor = {
        let calls = Arc::clone(&calls);
        move |ctx: RecordContext, value: Value| {
            let calls = Arc::clone(&calls);
            async move {
                calls.record(&ctx, &value);
                Ok(())
            }
        }
    };
    let reports = tokio::time::timeout(
        Duration::from_secs(60),
        run_workers(&store, job, 3, processor, &options(None)),
    )
    .await
    .context("workers blocked by a corrupt batch")??;
    ensure!(
        reports.iter().map(|r| r.batches).sum::<u64>() == 4,
        "{reports:?}"
    );
    ensure!(
        reports
            .iter()
            .all(|r| r.job_status == Some(JobStatus::Failed)),
        "{reports:?}"
    );
    let processed = (0..50).filter(|&i| calls.get(i) == 1).count();
    ensure!(processed == 40, "{processed} records processed");
    let status = store.get_distributed_status(job).await?;
    ensure!(
        status.failed_batches == 1 && status.completed_batches == 4,
        "{status:?}"
    );
    Ok(())
}

/// Records `{"i": 0}`, `{"i": 1}`, ... so a processor can check it got the right one.
fn records(n: u64) -> impl Iterator<Item = Value> {
    (0..n).map(|i| json!({ "i": i }))
}

/// How often the processor was called for each record index, and whether it was ever handed a
/// value that does not belong to the index.
struct Calls {
    counts: Vec<AtomicU32>,
    mismatches: AtomicU32,
}

impl Calls {
    fn new(n: u64) -> Arc<Self> {
        Arc::new(Self {
            counts: (0..n).map(|_| AtomicU32::new(0)).collect(),
            mismatches: AtomicU32::new(0),
        })
    }

    /// Counts a call for the record of `ctx`.
    fn record(&self, ctx: &RecordContext, value: &Value) {
        if value["i"].as_u64() != Some(ctx.index) {
            self.mismatches.fetch_add(1, Ordering::Relaxed);
        }
        match usize::try_from(ctx.index)
            .ok()
            .and_then(|i| self.counts.get(i))
        {
            Some(count) => count.fetch_add(1, Ordering::Relaxed),
            None => self.mismatches.fetch_add(1, Ordering::Relaxed),
        };
    }

    fn get(&self, index: usize) -> u32 {
        self.counts
            .get(index)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    fn check_matched(&self) -> anyhow::Result<()> {
        let mismatches = self.mismatches.load(Ordering::Relaxed);
        ensure!(
            mismatches == 0,
            "{mismatches} calls got a value of another index"
        );
        Ok(())
    }
}

/// Options for workers in tests: quick polls and retries, no reclaim unless a test asks.
fn options(progress: Option<mpsc::UnboundedSender<WorkerEvent>>) -> WorkerOptions {
    WorkerOptions {
        max_retries: 2,
        retry_delay: Duration::from_millis(1),
        heartbeat_interval: Duration::from_millis(200),
        stale_timeout: Duration::from_secs(30),
        poll_interval: Duration::from_millis(10),
        progress,
        ..WorkerOptions::default()
    }
}

/// Runs `n` workers (`worker-0`, ...) on the job until each returns; every one must succeed.
async fn run_workers<F, Fut>(
    store: &Arc<dyn DistributedStateStore>,
    job_id: &str,
    n: usize,
    processor: F,
    options: &WorkerOptions,
) -> anyhow::Result<Vec<WorkerReport>>
where
    F: Fn(RecordContext, Value) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), ProcessError>> + Send + 'static,
{
    let handles: Vec<_> = (0..n)
        .map(|w| {
            let (store, job_id) = (Arc::clone(store), job_id.to_owned());
            let (processor, options) = (processor.clone(), options.clone());
            tokio::spawn(async move {
                run_worker(store, &job_id, &format!("worker-{w}"), processor, options).await
            })
        })
        .collect();
    let mut reports = Vec::with_capacity(n);
    for (w, handle) in handles.into_iter().enumerate() {
        reports.push(handle.await?.with_context(|| format!("worker-{w}"))?);
    }
    Ok(reports)
}

fn drain(rx: &mut mpsc::UnboundedReceiver<WorkerEvent>) -> Vec<WorkerEvent> {
    let mut events = Vec::new();
    while let Ok(event) = rx.try_recv() {
        events.push(event);
    }
    events
}

/// Fails its first two attempts, then succeeds (retried within `max_retries` = 2).
fn flaky(index: u64) -> bool {
    index % 97 == 3
}

/// Fails every attempt.
fn broken(index: u64) -> bool {
    index % 401 == 7
}

async fn many_workers(store: Arc<dyn DistributedStateStore>) -> anyhow::Result<()> {
    const RECORDS: u64 = 2000;
    const BATCHES: u64 = 40;
    let job = "many-workers";
    let prepared = prepare(&*store, job, JobConfig::new(50), records(RECORDS)).await?;
    ensure!(prepared.total_records == RECORDS && u64::from(prepared.total_batches) == BATCHES);

    let calls = Calls::new(RECORDS);
    let processor = {
        let calls = Arc::clone(&calls);
        move |ctx: RecordContext, value: Value| {
            let calls = Arc::clone(&calls);
            async move {
                calls.record(&ctx, &value);
                if broken(ctx.index) || (flaky(ctx.index) && ctx.attempt < 2) {
                    return Err(ProcessError::from(format!("record {} refused", ctx.index)));
                }
                Ok(())
            }
        }
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let reports = run_workers(&store, job, 4, processor, &options(Some(tx))).await?;

    // Every record was processed once (three times when it had to be retried twice).
    calls.check_matched()?;
    let broken_count = (0..RECORDS).filter(|&i| broken(i)).count();
    for i in 0..RECORDS {
        let index = usize::try_from(i)?;
        let expected = if broken(i) || flaky(i) { 3 } else { 1 };
        ensure!(
            calls.get(index) == expected,
            "record {i}: {} calls, expected {expected}",
            calls.get(index)
        );
    }

    // The stored outcome of every record.
    let stored = store.get_records(job, &RecordFilter::new()).await?;
    ensure!(
        stored.len() == usize::try_from(RECORDS)?,
        "{} records",
        stored.len()
    );
    for (i, record) in (0..RECORDS).zip(&stored) {
        ensure!(record.index == i, "record {i} stored as {}", record.index);
        let (status, retries) = match (broken(i), flaky(i)) {
            (true, _) => (RecordStatus::Failed, 2),
            (false, true) => (RecordStatus::Processed, 2),
            (false, false) => (RecordStatus::Processed, 0),
        };
        ensure!(
            record.status == status && record.retry_count == retries,
            "record {i}: {:?} after {} retries, expected {status:?} after {retries}",
            record.status,
            record.retry_count
        );
        ensure!(
            record.processing_error.is_some() == broken(i),
            "record {i}: error {:?}",
            record.processing_error
        );
    }

    // Batches, job and progress.
    let status = store.get_distributed_status(job).await?;
    ensure!(
        status.total_batches == BATCHES
            && status.completed_batches == BATCHES
            && status.failed_batches == 0
            && status.is_complete,
        "{status:?}"
    );
    let state = store.get_job_state(job).await?.context("job gone")?;
    ensure!(state.status == JobStatus::Completed, "job {}", state.status);
    ensure!(state.completed_at.is_some(), "no completion time");
    let failed = u64::try_from(broken_count)?;
    let batch_processed: u64 = state.batches.iter().map(|b| b.processed_count).sum();
    let batch_failed: u64 = state.batches.iter().map(|b| b.failed_count).sum();
    ensure!(
        batch_processed == RECORDS - failed && batch_failed == failed,
        "batch counts {batch_processed} processed, {batch_failed} failed"
    );
    let progress = store.get_progress(job).await?;
    ensure!(
        (
            progress.total_records,
            progress.processed_records,
            progress.failed_records,
            progress.pending_records,
            progress.percentage,
            progress.completed_batches,
            progress.total_batches
        ) == (RECORDS, RECORDS - failed, failed, 0, 100, BATCHES, BATCHES),
        "{progress:?}"
    );

    // What the workers said: every batch finished once, one finalizer.
    ensure!(
        reports.iter().filter(|r| r.finalized).count() == 1,
        "{reports:?}"
    );
    let sum = |f: fn(&WorkerReport) -> u64| reports.iter().map(f).sum::<u64>();
    ensure!(
        sum(|r| r.batches) == BATCHES
            && sum(|r| r.processed) == RECORDS - failed
            && sum(|r| r.failed) == failed
            && sum(|r| r.claims_lost) == 0,
        "{reports:?}"
    );
    let events = drain(&mut rx);
    let finished: BTreeSet<u32> = events
        .iter()
        .filter_map(|e| match e {
            WorkerEvent::BatchFinished { batch_index, .. } => Some(*batch_index),
            _ => None,
        })
        .collect();
    let finished_events = events
        .iter()
        .filter(|e| matches!(e, WorkerEvent::BatchFinished { .. }))
        .count();
    ensure!(
        finished.len() == 40 && finished_events == 40,
        "{finished_events} batch events for {} batches",
        finished.len()
    );
    let finalized: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            WorkerEvent::JobFinalized { status, .. } => Some(*status),
            _ => None,
        })
        .collect();
    ensure!(finalized == [JobStatus::Completed], "{finalized:?}");
    Ok(())
}

async fn stop_on_error(store: Arc<dyn DistributedStateStore>) -> anyhow::Result<()> {
    let job = "stop-on-error";
    let config = JobConfig {
        continue_on_error: Some(false),
        max_retries: Some(0),
        ..JobConfig::new(50)
    };
    prepare(&*store, job, config, records(200)).await?;
    let calls = Calls::new(200);
    let processor = {
        let calls = Arc::clone(&calls);
        move |ctx: RecordContext, value: Value| {
            let calls = Arc::clone(&calls);
            async move {
                calls.record(&ctx, &value);
                if ctx.index == 60 {
                    return Err(ProcessError::from("record 60 refused"));
                }
                Ok(())
            }
        }
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let reports = run_workers(&store, job, 2, processor, &options(Some(tx))).await?;

    // The batch stopped at its failing record: the records after it were never tried.
    calls.check_matched()?;
    for i in 0..200 {
        let expected = u32::from(!(61..100).contains(&i));
        ensure!(
            calls.get(i) == expected,
            "record {i}: {} calls",
            calls.get(i)
        );
    }
    let stored = store.get_records(job, &RecordFilter::new()).await?;
    for record in &stored {
        let expected = match record.index {
            60 => RecordStatus::Failed,
            61..100 => RecordStatus::Pending,
            _ => RecordStatus::Processed,
        };
        ensure!(
            record.status == expected,
            "record {}: {:?}",
            record.index,
            record.status
        );
    }
    let state = store.get_job_state(job).await?.context("job gone")?;
    ensure!(state.status == JobStatus::Failed, "job {}", state.status);
    let batches: Vec<_> = state
        .batches
        .iter()
        .map(|b| (b.status, b.processed_count, b.failed_count))
        .collect();
    ensure!(
        batches
            == [
                (BatchStatus::Completed, 50, 0),
                (BatchStatus::Failed, 10, 1),
                (BatchStatus::Completed, 50, 0),
                (BatchStatus::Completed, 50, 0),
            ],
        "{batches:?}"
    );
    let progress = store.get_progress(job).await?;
    ensure!(
        (
            progress.processed_records,
            progress.failed_records,
            progress.pending_records,
            progress.completed_batches
        ) == (160, 1, 39, 3),
        "{progress:?}"
    );
    ensure!(
        reports.iter().filter(|r| r.finalized).count() == 1,
        "{reports:?}"
    );
    let events = drain(&mut rx);
    ensure!(
        events.iter().any(|e| matches!(
            e,
            WorkerEvent::BatchFinished {
                batch_index: 1,
                processed: 10,
                failed: 1,
                batch_failed: true,
                ..
            }
        )),
        "{events:?}"
    );
    ensure!(
        events.iter().any(|e| matches!(
            e,
            WorkerEvent::JobFinalized {
                status: JobStatus::Failed,
                ..
            }
        )),
        "{events:?}"
    );
    Ok(())
}

async fn prepare_twice(store: Arc<dyn DistributedStateStore>) -> anyhow::Result<()> {
    let job = "prepared-twice";
    let first = prepare(&*store, job, JobConfig::new(50), records(120)).await?;
    ensure!(
        first.total_records == 120 && first.total_batches == 3,
        "{first:?}"
    );
    let again = prepare(&*store, job, JobConfig::new(50), records(120)).await?;
    ensure!(again == first, "{again:?} after {first:?}");

    // A batch finished between two prepares stays finished, and its records keep their outcome.
    let ClaimBatchResult::Claimed(claim) = store.claim_batch(job, "w").await? else {
        bail!("nothing to claim");
    };
    let mut outcomes = store.get_batch_records(job, &claim.batch_id).await?;
    for record in &mut outcomes {
        record.status = RecordStatus::Processed;
    }
    store
        .save_processed_records(job, &claim.batch_id, &outcomes)
        .await?;
    ensure!(
        store
            .complete_batch(&claim, BatchOutcome::completed(50, 0))
            .await?
    );
    let third = prepare(&*store, job, JobConfig::new(50), records(120)).await?;
    ensure!(third == first, "{third:?} after {first:?}");

    let stored = store.get_records(job, &RecordFilter::new()).await?;
    let indexes: Vec<u64> = stored.iter().map(|r| r.index).collect();
    ensure!(indexes == (0..120).collect::<Vec<_>>(), "{indexes:?}");
    let processed = stored
        .iter()
        .filter(|r| r.status == RecordStatus::Processed)
        .count();
    ensure!(processed == 50, "{processed} processed records");
    let status = store.get_distributed_status(job).await?;
    ensure!(
        (
            status.total_batches,
            status.completed_batches,
            status.pending_batches
        ) == (3, 1, 2),
        "{status:?}"
    );
    let state = store.get_job_state(job).await?.context("job gone")?;
    ensure!(state.status == JobStatus::Processing && state.total_records == 120);
    Ok(())
}

async fn prepare_edges(store: Arc<dyn DistributedStateStore>) -> anyhow::Result<()> {
    let zero = prepare(&*store, "zero", JobConfig::new(0), records(3)).await;
    ensure!(
        matches!(
            zero,
            Err(Error::InvalidArgument {
                name: "batch_size",
                ..
            })
        ),
        "{zero:?}"
    );
    let unnamed = prepare(&*store, "", JobConfig::new(10), records(3)).await;
    ensure!(
        matches!(unnamed, Err(Error::InvalidArgument { name: "job_id", .. })),
        "{unnamed:?}"
    );
    ensure!(
        store.get_job_state("zero").await?.is_none(),
        "a rejected prepare saved a job"
    );

    // A job without records is complete at once; a worker on it returns without work.
    let empty = prepare(&*store, "empty", JobConfig::new(10), records(0)).await?;
    ensure!(
        empty.total_records == 0 && empty.total_batches == 0,
        "{empty:?}"
    );
    let state = store.get_job_state("empty").await?.context("job gone")?;
    ensure!(state.status == JobStatus::Completed, "job {}", state.status);
    let report = tokio::time::timeout(
        Duration::from_secs(10),
        run_worker(
            Arc::clone(&store),
            "empty",
            "w",
            |_, _: Value| async { Ok(()) },
            options(None),
        ),
    )
    .await
    .context("a worker on an empty job did not return")??;
    let expected = WorkerReport {
        job_status: Some(JobStatus::Completed),
        ..WorkerReport::default()
    };
    ensure!(report == expected, "{report:?}");
    Ok(())
}

// A worker process killed mid-batch.

const DOOMED: &str = "doomed-worker";
const CRASH_JOB: &str = "crash-job";

/// Options of the crash test's workers: the killed worker's batch is stale after 1 s.
fn crash_options() -> WorkerOptions {
    WorkerOptions {
        heartbeat_interval: Duration::from_millis(100),
        stale_timeout: Duration::from_secs(1),
        poll_interval: Duration::from_millis(50),
        ..options(None)
    }
}

/// The child process: a worker that processes half of its first batch, then hangs until it is
/// killed. Only the crash test starts it (as `worker::child_worker --exact --ignored`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "entry point of the worker crash test's child process"]
async fn child_worker() -> anyhow::Result<()> {
    let store: Arc<dyn DistributedStateStore> = Arc::new(SeaOrmStateStore::new(child_db(4).await?));
    run_worker(
        store,
        CRASH_JOB,
        DOOMED,
        |ctx, _: Value| async move {
            if ctx.index % 50 == 25 {
                tokio::time::sleep(Duration::from_secs(120)).await;
            }
            Ok(())
        },
        crash_options(),
    )
    .await?;
    bail!("the child worker was not killed")
}

async fn killed_worker_batch_is_reclaimed_and_finished(t: TestDb) -> anyhow::Result<()> {
    let store = sea_orm_store(&t);
    prepare(&*store, CRASH_JOB, JobConfig::new(50), records(300)).await?;
    let mut child = spawn_child(&t, "worker::child_worker")?;

    // Wait until the child holds a batch, then give it time to get half way through it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let doomed_batch = loop {
        let state = store.get_job_state(CRASH_JOB).await?.context("job gone")?;
        if let Some(batch) = state
            .batches
            .iter()
            .find(|b| b.worker_id.as_deref() == Some(DOOMED))
        {
            break batch.index;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the child never claimed a batch");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    child.kill()?; // SIGKILL
    child.wait()?;

    let calls = Calls::new(300);
    let processor = {
        let calls = Arc::clone(&calls);
        move |ctx: RecordContext, value: Value| {
            let calls = Arc::clone(&calls);
            async move {
                calls.record(&ctx, &value);
                Ok(())
            }
        }
    };
    let reports = run_workers(&store, CRASH_JOB, 3, processor, &crash_options()).await?;

    // The survivors did every record once, the killed worker's batch included.
    calls.check_matched()?;
    for i in 0..300 {
        ensure!(calls.get(i) == 1, "record {i}: {} calls", calls.get(i));
    }
    ensure!(
        reports.iter().map(|r| r.reclaimed).sum::<u64>() == 1,
        "{reports:?}"
    );
    ensure!(
        reports.iter().map(|r| r.batches).sum::<u64>() == 6,
        "{reports:?}"
    );
    ensure!(
        reports.iter().filter(|r| r.finalized).count() == 1,
        "{reports:?}"
    );
    let state = store.get_job_state(CRASH_JOB).await?.context("job gone")?;
    ensure!(state.status == JobStatus::Completed, "job {}", state.status);
    let batch = state
        .batches
        .iter()
        .find(|b| b.index == doomed_batch)
        .context("batch gone")?;
    ensure!(
        batch.status == BatchStatus::Completed && batch.worker_id.as_deref() != Some(DOOMED),
        "{batch:?}"
    );
    let processed = store.get_processed_records(CRASH_JOB).await?.len();
    ensure!(processed == 300, "{processed} records processed");
    Ok(())
}

// A PostgreSQL outage while workers run.

mod postgres_outage {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[cfg_attr(durable_no_postgres, ignore = "DATABASE_URL_POSTGRES is not set")]
    async fn workers_back_off_and_finish() -> anyhow::Result<()> {
        crate::harness::run(crate::harness::Backend::Postgres, super::outage).await
    }
}

/// Four workers on a PostgreSQL job whose database refuses connections and loses every
/// session for a second while they run: they back off, reconnect and finish, losing nothing.
async fn outage(t: TestDb) -> anyhow::Result<()> {
    const RECORDS: u64 = 3000;
    let (admin_url, name) = t.server().context("not on a server")?;
    let admin = Database::connect(connect_options(Backend::Postgres, admin_url, 1)).await?;
    let store = sea_orm_store(&t);
    prepare(&*store, "outage", JobConfig::new(25), records(RECORDS)).await?;

    let calls = Calls::new(RECORDS);
    let processor = {
        let calls = Arc::clone(&calls);
        move |ctx: RecordContext, value: Value| {
            let calls = Arc::clone(&calls);
            async move {
                calls.record(&ctx, &value);
                tokio::time::sleep(Duration::from_millis(2)).await;
                Ok(())
            }
        }
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let workers = {
        let (store, options) = (Arc::clone(&store), options(Some(tx)));
        tokio::spawn(async move { run_workers(&store, "outage", 4, processor, &options).await })
    };

    // Once the job is under way, take the database away for a second.
    let mut finished = 0;
    while finished < 5 {
        match rx.recv().await {
            Some(WorkerEvent::BatchFinished { .. }) => finished += 1,
            Some(_) => {}
            None => bail!("the workers stopped before the outage"),
        }
    }
    let ended = take_away(&admin, name, Duration::from_secs(1)).await;
    let allowed = admin
        .execute_unprepared(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .await;
    let ended = ended?;
    allowed?;
    let events_during = drain(&mut rx);
    ensure!(ended > 0, "no session was ended");
    ensure!(
        !events_during
            .iter()
            .any(|e| matches!(e, WorkerEvent::JobFinalized { .. })),
        "the job finished before the outage ended"
    );

    let reports = tokio::time::timeout(Duration::from_secs(60), workers)
        .await
        .context("the workers did not finish after the outage")???;
    ensure!(
        reports.iter().filter(|r| r.finalized).count() == 1,
        "{reports:?}"
    );
    calls.check_matched()?;
    for i in 0..usize::try_from(RECORDS)? {
        ensure!(calls.get(i) == 1, "record {i}: {} calls", calls.get(i));
    }
    let state = store.get_job_state("outage").await?.context("job gone")?;
    ensure!(state.status == JobStatus::Completed, "job {}", state.status);
    let progress = store.get_progress("outage").await?;
    ensure!(
        progress.processed_records == RECORDS && progress.completed_batches == 120,
        "{progress:?}"
    );
    Ok(())
}

/// Refuses new connections to database `name` and ends its sessions, then waits `length`;
/// returns how many sessions were ended. The caller allows connections again.
async fn take_away(
    admin: &sea_orm::DatabaseConnection,
    name: &str,
    length: Duration,
) -> anyhow::Result<i64> {
    admin
        .execute_unprepared(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
        .await?;
    let row = admin
        .query_one_raw(Statement::from_string(
            admin.get_database_backend(),
            format!(
                "SELECT count(pg_terminate_backend(pid)) AS ended FROM pg_stat_activity \
                 WHERE datname = '{name}' AND pid <> pg_backend_pid()"
            ),
        ))
        .await?
        .context("no row")?;
    let ended: i64 = row.try_get("", "ended")?;
    tokio::time::sleep(length).await;
    Ok(ended)
}

/// Four processes prepare the same job at once and each runs a worker right after: the job is
/// prepared once, every record processed exactly once, and every prepare reports the same
/// totals.
async fn concurrent_prepares(store: Arc<dyn DistributedStateStore>) -> anyhow::Result<()> {
    const RECORDS: u64 = 400;
    for round in 0..3 {
        let job = format!("prepared-at-once-{round}");
        let calls = Calls::new(RECORDS);
        let barrier = Arc::new(tokio::sync::Barrier::new(4));
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..4 {
            let (store, job, calls, barrier) = (
                Arc::clone(&store),
                job.clone(),
                Arc::clone(&calls),
                Arc::clone(&barrier),
            );
            tasks.spawn(async move {
                barrier.wait().await;
                let prepared = prepare(&*store, &job, JobConfig::new(20), records(RECORDS)).await?;
                let processor = move |ctx: RecordContext, value: Value| {
                    let calls = Arc::clone(&calls);
                    async move {
                        calls.record(&ctx, &value);
                        Ok(())
                    }
                };
                let report = run_worker(
                    store,
                    &job,
                    &format!("worker-{w}"),
                    processor,
                    options(None),
                )
                .await?;
                anyhow::Ok((prepared, report))
            });
        }
        let mut results = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            results.push(joined??);
        }
        calls.check_matched()?;
        for i in 0..usize::try_from(RECORDS)? {
            ensure!(calls.get(i) == 1, "record {i}: {} calls", calls.get(i));
        }
        for (prepared, report) in &results {
            ensure!(
                prepared.total_records == RECORDS && prepared.total_batches == 20,
                "{prepared:?}"
            );
            ensure!(
                report.job_status == Some(JobStatus::Completed),
                "{report:?}"
            );
        }
        ensure!(
            results.iter().filter(|(_, r)| r.finalized).count() == 1,
            "{results:?}"
        );
        let progress = store.get_progress(&job).await?;
        ensure!(
            progress.processed_records == RECORDS && progress.pending_records == 0,
            "{progress:?}"
        );
        // And once more, after the fact: nothing changes.
        let again = prepare(&*store, &job, JobConfig::new(20), records(RECORDS)).await?;
        ensure!(again.total_records == RECORDS, "{again:?}");
        let state = store.get_job_state(&job).await?.context("job gone")?;
        ensure!(state.status == JobStatus::Completed, "job {}", state.status);
    }
    Ok(())
}

/// Workers of a paused job return at once, saying it is paused, without processing anything;
/// once it is resumed, workers finish it.
async fn paused_job(store: Arc<dyn DistributedStateStore>) -> anyhow::Result<()> {
    let job = "paused";
    prepare(&*store, job, JobConfig::new(10), records(30)).await?;
    let mut state = store.get_job_state(job).await?.context("job gone")?;
    state.status = JobStatus::Paused;
    store.save_job_state(&state).await?;
    let noop = |_: RecordContext, _: Value| async { Ok(()) };
    let report = tokio::time::timeout(
        Duration::from_secs(10),
        run_worker(Arc::clone(&store), job, "w", noop, options(None)),
    )
    .await
    .context("a worker kept polling a paused job")??;
    ensure!(
        report.job_status == Some(JobStatus::Paused) && report.batches == 0,
        "{report:?}"
    );
    state.status = JobStatus::Processing;
    store.save_job_state(&state).await?;
    let report = run_worker(Arc::clone(&store), job, "w", noop, options(None)).await?;
    ensure!(
        report.job_status == Some(JobStatus::Completed) && report.batches == 3,
        "{report:?}"
    );
    Ok(())
}

/// A worker shut down in the middle of a batch stops after the record in progress, gives the
/// batch back at once (no stale timeout), and returns saying it was shut down; another worker
/// then finishes every record.
async fn shutdown(store: Arc<dyn DistributedStateStore>) -> anyhow::Result<()> {
    let job = "shutdown";
    prepare(&*store, job, JobConfig::new(10), records(20)).await?;
    let token = sea_orm_durable::batch::CancellationToken::new();
    let worker_options = WorkerOptions {
        shutdown: token.clone(),
        ..options(None)
    };
    let processor = {
        let token = token.clone();
        move |ctx: RecordContext, _: Value| {
            let token = token.clone();
            async move {
                if ctx.index == 3 {
                    token.cancel();
                }
                Ok(())
            }
        }
    };
    let report = tokio::time::timeout(
        Duration::from_secs(10),
        run_worker(Arc::clone(&store), job, "w1", processor, worker_options),
    )
    .await
    .context("shutdown ignored")??;
    ensure!(
        report.shut_down && report.batches == 0 && report.job_status.is_none(),
        "{report:?}"
    );
    let status = store.get_distributed_status(job).await?;
    ensure!(
        status.pending_batches == 2 && status.processing_batches == 0,
        "{status:?}"
    );
    let noop = |_: RecordContext, _: Value| async { Ok(()) };
    let report = run_worker(Arc::clone(&store), job, "w2", noop, options(None)).await?;
    ensure!(
        report.batches == 2 && report.job_status == Some(JobStatus::Completed),
        "{report:?}"
    );
    Ok(())
}

/// The processor's input type.
#[derive(Debug, serde::Deserialize)]
struct Order {
    i: u64,
}

/// A processor taking a typed input gets each record deserialized; a record that does not fit
/// the type fails once, saying why, and the others are processed.
async fn typed_input(store: Arc<dyn DistributedStateStore>) -> anyhow::Result<()> {
    let job = "typed";
    let source = (0..10u64).map(|i| {
        if i == 4 {
            json!({ "i": "four" })
        } else {
            json!({ "i": i })
        }
    });
    prepare(&*store, job, JobConfig::new(5), source).await?;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let processor = {
        let seen = Arc::clone(&seen);
        move |ctx: RecordContext, order: Order| {
            let seen = Arc::clone(&seen);
            async move {
                if order.i != ctx.index {
                    return Err(ProcessError::from("wrong record"));
                }
                seen.lock().map_err(|e| e.to_string())?.push(order.i);
                Ok(())
            }
        }
    };
    let report = run_worker(Arc::clone(&store), job, "w", processor, options(None)).await?;
    ensure!(report.processed == 9 && report.failed == 1, "{report:?}");
    let failed = store.get_failed_records(job).await?;
    ensure!(failed.len() == 1 && failed[0].index == 4, "{failed:?}");
    let error = failed[0].processing_error.clone().unwrap_or_default();
    ensure!(
        error.contains("does not deserialize") && failed[0].retry_count == 0,
        "{error}"
    );
    let mut seen = seen.lock().map_err(|e| anyhow::anyhow!("{e}"))?.clone();
    seen.sort_unstable();
    ensure!(seen == [0, 1, 2, 3, 5, 6, 7, 8, 9], "{seen:?}");
    Ok(())
}

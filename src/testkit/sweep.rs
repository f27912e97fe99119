//! Sweeps of lost replies over whole scenarios, for both ports: a scenario runs once behind a
//! [`LoseReplies`] that loses nothing, counting the writes it makes, and then once more for
//! each of those writes with that write's reply lost (it took effect; the caller is told the
//! connection broke). Every run must end as the first did: each call of the library answers
//! its true outcome, no work is lost, run twice or left waiting. Nothing names the writes: a
//! write that a new feature adds to the scenario is swept with the others.
//!
//! The cases are re-exported by [`executor`](super::executor) and [`batch`](super::batch),
//! whose conformance lists run them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;

use super::batch::Ctx;
use super::lost_reply::LoseReplies;
use super::{CaseFailure, CaseResult};
use crate::batch::store::DistributedStateStore;
use crate::batch::{
    JobConfig, JobStatus, ProcessError, RecordContext, WorkerEvent, WorkerOptions, prepare,
    run_worker,
};
use crate::task::executor::{
    Executor, ExecutorOptions, FinalizeInput, ParentOutcome, TaskDefinition, TaskError, WaitOptions,
};
use crate::task::storage::TaskExecutionStorage;
use crate::task::{RetryOptions, TaskExecutionStatus};

/// Most writes of one scenario that a sweep loses in turn (a scenario that writes more than
/// this is a scenario grown too large for a sweep, and fails it).
const MAX_SWEPT_WRITES: u32 = 200;

/// How long one run of a scenario may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// The number of writes a first, lossless run made, checked against [`MAX_SWEPT_WRITES`].
fn swept_writes(writes: u32) -> CaseResult<u32> {
    if writes == 0 || writes > MAX_SWEPT_WRITES {
        return Err(CaseFailure::new(format!(
            "the lossless run made {writes} writes; a sweep takes 1 to {MAX_SWEPT_WRITES}"
        )));
    }
    Ok(writes)
}

/// What went wrong in the run that lost the reply of write `number` (of `operations`).
fn in_run(number: u32, operations: &[&str], failure: &CaseFailure) -> CaseFailure {
    CaseFailure::new(format!(
        "with the reply of write {number} lost ({}): {failure}",
        if operations.is_empty() {
            "none was lost".to_owned()
        } else {
            operations.join(", ")
        }
    ))
}

// ---------------------------------------------------------------------------------------------
// The batch port

/// A job of 6 records in batches of 2, whose record 3 fails the first time; its failed record
/// is requeued and processed again by a second worker run. Run once losing nothing, then once
/// for each write of that run with its reply lost: `prepare`, both worker runs and the requeue
/// succeed with the answers of the lossless run (the job finalized once by each run, the
/// requeue's counts), every record ends processed and the job completed.
///
/// # Errors
///
/// The first expectation that does not hold, naming the write whose reply was lost.
pub async fn every_batch_write_whose_reply_is_lost_tells_the_truth(ctx: Ctx) -> CaseResult {
    let lossless = LoseReplies::new(Arc::clone(&ctx.store));
    batch_scenario(&lossless, "sweep-0").await?;
    let writes = swept_writes(lossless.writes())?;
    for number in 1..=writes {
        let lossy = LoseReplies::new(Arc::clone(&ctx.store));
        lossy.lose_write_number(number);
        let outcome = batch_scenario(&lossy, &format!("sweep-{number}")).await;
        let operations = lossy.lost_operations();
        outcome.map_err(|failure| in_run(number, &operations, &failure))?;
        if lossy.lost() != 1 {
            return Err(in_run(
                number,
                &operations,
                &CaseFailure::new("the run made fewer writes than the lossless one"),
            ));
        }
    }
    Ok(())
}

/// The batch scenario on `store` under `job_id`.
async fn batch_scenario(
    store: &LoseReplies<Arc<dyn DistributedStateStore>>,
    job_id: &str,
) -> CaseResult {
    let store: Arc<dyn DistributedStateStore> = Arc::new(store.clone());
    let prepared = prepare(&*store, job_id, JobConfig::new(2), 0..6u32).await?;
    check_eq!(prepared.total_records, 6);
    let attempts = Arc::new(AtomicU32::new(0));
    let processor = {
        let attempts = Arc::clone(&attempts);
        move |ctx: RecordContext, _value: Value| {
            let first = ctx.index == 3 && attempts.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if first {
                    return Err(ProcessError::from("record 3 refused once"));
                }
                Ok(())
            }
        }
    };
    let first = worker_run(&store, job_id, processor.clone()).await?;
    check!(first.0, "the first run was not told it finalized the job");
    check_eq!(first.1, 1);
    let (requeued, repeats) = repeated(|| store.requeue_failed_records(job_id)).await?;
    // A repeat after a lost reply is another call: it finds nothing left to requeue and
    // changes nothing (the port's docs); the first answer counts what it requeued.
    let expected = if repeats == 0 { (1, 1, 0) } else { (0, 0, 0) };
    check_eq!(
        (requeued.records, requeued.batches, requeued.left_failed),
        expected
    );
    check_eq!(requeued.job_status, JobStatus::Processing);
    let second = worker_run(&store, job_id, processor).await?;
    check!(second.0, "the second run was not told it finalized the job");
    check_eq!(second.1, 1);
    let progress = store.get_progress(job_id).await?;
    check_eq!(
        (progress.processed_records, progress.failed_records),
        (6, 0)
    );
    let job = store
        .get_job_without_batches(job_id)
        .await?
        .ok_or_else(|| CaseFailure::new("the job is gone"))?;
    check_eq!(job.status, JobStatus::Completed);
    Ok(())
}

/// `call`, repeated as it was while it fails with a retryable error (at most 5 times), as a
/// careful caller of a port method does after a lost reply; its answer and how many times it
/// was repeated.
async fn repeated<T, F, Fut>(mut call: F) -> crate::Result<(T, u32)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = crate::Result<T>>,
{
    let mut repeats = 0;
    loop {
        match call().await {
            Err(e) if e.is_retryable() && repeats < 5 => repeats += 1,
            other => return other.map(|answer| (answer, repeats)),
        }
    }
}

/// Runs one worker on `job_id` to its end: whether its report says it finalized the job, and
/// how many finalization events it sent.
async fn worker_run<F, Fut>(
    store: &Arc<dyn DistributedStateStore>,
    job_id: &str,
    processor: F,
) -> CaseResult<(bool, u32)>
where
    F: Fn(RecordContext, Value) -> Fut + Send + Sync,
    Fut: std::future::Future<Output = Result<(), ProcessError>> + Send,
{
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let options = WorkerOptions {
        // A batch left idle would wait for this: far longer than the case may take.
        stale_timeout: Duration::from_secs(3600),
        poll_interval: Duration::from_millis(5),
        progress: Some(tx),
        ..WorkerOptions::default()
    };
    let report = tokio::time::timeout(
        RUN_TIMEOUT,
        run_worker(Arc::clone(store), job_id, "sweeper", processor, options),
    )
    .await
    .map_err(|_| CaseFailure::new("the worker did not finish"))??;
    check_eq!(report.job_status, Some(JobStatus::Completed));
    let mut finalized = 0;
    while let Ok(event) = rx.try_recv() {
        if matches!(event, WorkerEvent::JobFinalized { .. }) {
            finalized += 1;
        }
    }
    Ok((report.finalized, finalized))
}

// ---------------------------------------------------------------------------------------------
// The task port, through the executor

/// The runs each task of the executor scenario makes.
#[derive(Debug, Default)]
struct Runs {
    parent: AtomicU32,
    child: AtomicU32,
    finalize: AtomicU32,
    flaky: AtomicU32,
    long: AtomicU32,
}

/// `call` repeated while it fails with a retryable error, as a task repeats a heartbeat.
async fn until_answered<F, Fut>(call: F) -> Result<(), TaskError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = crate::Result<()>>,
{
    repeated(call)
        .await
        .map(drop)
        .map_err(|e| TaskError::fatal(e.to_string()))
}

/// An executor scenario: a parent spawning two children and a finalize that sums their
/// outputs, a task that fails its first attempt and succeeds on its retry, a sleeping task
/// woken by key, a delayed task cancelled before it runs, a task that reports progress,
/// snoozes and heartbeats, and a queue paused and resumed. Run once losing nothing, then
/// once for each write of that run with its reply lost: every call (enqueue, wake, cancel)
/// answers as in the lossless run, every execution ends as it did there, and each task body
/// runs as often (once; the flaky one twice), so no lost reply makes the executor run work
/// again or lose it.
///
/// # Errors
///
/// The first expectation that does not hold, naming the write whose reply was lost.
pub async fn every_task_write_whose_reply_is_lost_tells_the_truth(
    storage: Arc<dyn TaskExecutionStorage>,
) -> CaseResult {
    let lossless = LoseReplies::new(Arc::clone(&storage));
    task_scenario(&lossless, 0).await?;
    let writes = swept_writes(lossless.writes())?;
    for number in 1..=writes {
        let lossy = LoseReplies::new(Arc::clone(&storage));
        lossy.lose_write_number(number);
        let outcome = task_scenario(&lossy, number).await;
        let operations = lossy.lost_operations();
        outcome.map_err(|failure| in_run(number, &operations, &failure))?;
    }
    Ok(())
}

/// The executor scenario on `storage`, run number `run` (which names its tasks and keys).
async fn task_scenario(
    storage: &LoseReplies<Arc<dyn TaskExecutionStorage>>,
    run: u32,
) -> CaseResult {
    let runs = Arc::new(Runs::default());
    let child = {
        let runs = Arc::clone(&runs);
        TaskDefinition::new(format!("sweepChild{run}"), move |_ctx, n: u32| {
            runs.child.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, TaskError>(n * 10) }
        })
    };
    let finalize = {
        let runs = Arc::clone(&runs);
        TaskDefinition::new(
            format!("sweepFinalize{run}"),
            move |_ctx, input: FinalizeInput<()>| {
                runs.finalize.fetch_add(1, Ordering::SeqCst);
                async move {
                    let mut sum = 0u32;
                    for child in &input.children {
                        sum += child
                            .output_as::<u32>()
                            .map_err(|e| TaskError::fatal(e.to_string()))?;
                    }
                    Ok::<_, TaskError>(sum)
                }
            },
        )
    };
    let parent = {
        let runs = Arc::clone(&runs);
        let child = child.clone();
        TaskDefinition::parent(format!("sweepParent{run}"), move |_ctx, (): ()| {
            runs.parent.fetch_add(1, Ordering::SeqCst);
            let child = child.clone();
            async move { Ok(ParentOutcome::new(()).child(&child, &1).child(&child, &2)) }
        })
        .finalize(&finalize)
    };
    let flaky = {
        let runs = Arc::clone(&runs);
        TaskDefinition::new(format!("sweepFlaky{run}"), move |_ctx, (): ()| {
            let attempt = runs.flaky.fetch_add(1, Ordering::SeqCst);
            async move {
                if attempt == 0 {
                    return Err(TaskError::retryable("first attempt fails"));
                }
                Ok::<_, TaskError>("second attempt".to_owned())
            }
        })
        .retry(RetryOptions {
            max_attempts: 1,
            base_delay: Duration::from_millis(10),
            ..RetryOptions::default()
        })
    };
    // Reports progress and snoozes on its first run, heartbeats and completes on its second.
    let long = {
        let runs = Arc::clone(&runs);
        TaskDefinition::new(format!("sweepLong{run}"), move |ctx, (): ()| {
            let attempt = runs.long.fetch_add(1, Ordering::SeqCst);
            async move {
                if attempt == 0 {
                    let half = serde_json::json!({ "half": true });
                    until_answered(|| ctx.report_progress(&half)).await?;
                    return Err(TaskError::snooze(Duration::from_millis(10)));
                }
                until_answered(|| ctx.heartbeat()).await?;
                Ok::<_, TaskError>(ctx.attempt)
            }
        })
    };
    let sleeper = TaskDefinition::<String, String>::sleeping(format!("sweepSleeper{run}"))
        .timeout(Duration::from_secs(60));
    let delayed = TaskDefinition::new(format!("sweepDelayed{run}"), |_ctx, (): ()| async {
        Ok::<_, TaskError>(())
    })
    .sleep_before_run(Duration::from_secs(3600));

    let shared: Arc<dyn TaskExecutionStorage> = Arc::new(storage.clone());
    let executor = Executor::new(
        shared,
        ExecutorOptions {
            poll_interval: Duration::from_millis(10),
            expire_interval: Duration::from_millis(50),
            ..ExecutorOptions::default()
        },
    );
    executor.register(&parent)?;
    executor.register(&child)?;
    executor.register(&flaky)?;
    executor.register(&sleeper)?;
    executor.register(&delayed)?;
    executor.register(&long)?;
    // A pause and a resume of a queue, repeated as a careful caller does: the pause answers
    // its first time, and the queue ends resumed.
    let queue = format!("sweepQueue{run}");
    let (paused, _) = repeated(|| storage.pause_task_queue(&queue, 1_000)).await?;
    check_eq!(paused.paused_at, 1_000);
    let (resumed, repeats) = repeated(|| storage.resume_task_queue(&queue)).await?;
    check!(resumed || repeats > 0, "the resume found no pause");
    check!(
        storage
            .paused_task_queues()
            .await?
            .iter()
            .all(|p| p.queue != queue),
        "the queue is still paused"
    );
    executor.start();
    let outcome = tokio::time::timeout(RUN_TIMEOUT, async {
        let key = format!("sweep-key-{run}-{}", fastrand::u64(..));
        let parent = executor.enqueue(&parent, &()).await?;
        let flaky = executor.enqueue(&flaky, &()).await?;
        let sleeper = executor.enqueue(&sleeper, &key).await?;
        let delayed = executor.enqueue(&delayed, &()).await?;
        let long = executor.enqueue(&long, &()).await?;
        check!(
            delayed.cancel().await?,
            "the cancel was told it changed nothing"
        );
        let wait = WaitOptions {
            poll_interval: Duration::from_millis(5),
            timeout: Some(RUN_TIMEOUT),
        };
        // Woken once its execution is stored (the enqueue answered), before or after an
        // executor saw it.
        let woken = executor.wake(&key, &"approved".to_owned()).await?;
        check!(woken.is_woken(), "the wake was told {woken:?}");
        let parent = parent.wait_with(&wait).await?;
        check!(
            parent.status() == TaskExecutionStatus::Completed,
            "parent {:?} {:?}",
            parent.status(),
            parent.error()
        );
        check_eq!(parent.output, Some(30));
        let flaky = flaky.wait_with(&wait).await?;
        check!(
            flaky.status() == TaskExecutionStatus::Completed,
            "flaky {:?} {:?}",
            flaky.status(),
            flaky.error()
        );
        let sleeper = sleeper.wait_with(&wait).await?;
        check_eq!(sleeper.output.as_deref(), Some("approved"));
        let delayed = delayed.get().await?;
        check_eq!(delayed.status, TaskExecutionStatus::Cancelled);
        let long = long.wait_with(&wait).await?;
        check!(
            long.status() == TaskExecutionStatus::Completed,
            "long {:?} {:?}",
            long.status(),
            long.error()
        );
        check_eq!(long.output, Some(0));
        check_eq!(long.execution.progress.as_deref(), Some(r#"{"half":true}"#));
        Ok::<_, CaseFailure>(())
    })
    .await;
    executor.shutdown().await;
    outcome.map_err(|_| CaseFailure::new("the scenario did not finish"))??;
    check_eq!(runs.parent.load(Ordering::SeqCst), 1);
    check_eq!(runs.child.load(Ordering::SeqCst), 2);
    check_eq!(runs.finalize.load(Ordering::SeqCst), 1);
    check_eq!(runs.flaky.load(Ordering::SeqCst), 2);
    check_eq!(runs.long.load(Ordering::SeqCst), 2);
    Ok(())
}

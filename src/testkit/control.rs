//! Executor cases of queue control and long runs: paused queues across many executors,
//! heartbeats and progress reports, snoozes. Re-exported by [`executor`](super::executor).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::executor::fast_options;
use super::{CaseFailure, CaseResult};
use crate::Error;
use crate::clock::{Clock, SystemClock};
use crate::task::executor::{
    Executor, ExecutorOptions, TaskDefinition, TaskError, TaskHandle, WaitOptions,
};
use crate::task::storage::TaskExecutionStorage;
use crate::task::{RetryOptions, TaskExecutionFilter, TaskExecutionStatus};

/// How many executors race in [`a_paused_queue_stops_every_executor_until_resumed`].
const EXECUTORS: usize = 8;

fn wait_options() -> WaitOptions {
    WaitOptions {
        poll_interval: Duration::from_millis(20),
        timeout: Some(Duration::from_secs(60)),
    }
}

/// How many executions of `task_id` are in `status`.
async fn count(
    storage: &Arc<dyn TaskExecutionStorage>,
    task_id: &str,
    status: TaskExecutionStatus,
) -> CaseResult<usize> {
    let filter = TaskExecutionFilter {
        task_ids: Some(vec![task_id.to_owned()]),
        statuses: Some(vec![status]),
        ..TaskExecutionFilter::default()
    };
    Ok(storage.get_task_executions(&filter).await?.len())
}

/// Polls until `done` answers true (at most 30 s).
async fn until<F, Fut>(what: &str, mut done: F) -> CaseResult
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = CaseResult<bool>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done().await? {
        if Instant::now() > deadline {
            return Err(CaseFailure::new(format!("timed out waiting until {what}")));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Eight executors work through a queue; once it is paused, the runs they hold finish and
/// none claims another, while other queues go on and an executor started later claims
/// nothing from it either. Resumed, the rest runs, each execution once.
///
/// # Errors
///
/// The first expectation that does not hold.
pub async fn a_paused_queue_stops_every_executor_until_resumed(
    storage: Arc<dyn TaskExecutionStorage>,
) -> CaseResult {
    const TOTAL: u32 = 200;
    let runs = Arc::new(AtomicU32::new(0));
    // Ten runs may finish before the pause; the others that started wait here until after
    // it, holding their executors' slots, so the pause always comes with most of the queue
    // unclaimed, however fast the executors are.
    let gate = Arc::new(tokio::sync::Semaphore::new(10));
    let pausable = {
        let runs = Arc::clone(&runs);
        let gate = Arc::clone(&gate);
        TaskDefinition::new("pausable", move |_ctx, i: u32| {
            runs.fetch_add(1, Ordering::SeqCst);
            let gate = Arc::clone(&gate);
            async move {
                if let Ok(permit) = gate.acquire().await {
                    permit.forget();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok::<_, TaskError>(i)
            }
        })
        .queue("bulk")
    };
    let other = TaskDefinition::new(
        "unpaused",
        |_ctx, i: u32| async move { Ok::<_, TaskError>(i) },
    );
    let start = |storage: &Arc<dyn TaskExecutionStorage>| -> CaseResult<Executor> {
        // Two runs at a time each: sixteen in all, far fewer than the queue holds.
        let options = ExecutorOptions {
            max_concurrent: 2,
            ..fast_options()
        };
        let executor = Executor::new(Arc::clone(storage), options);
        executor.register(&pausable)?;
        executor.register(&other)?;
        executor.start();
        Ok(executor)
    };
    let mut executors = Vec::new();
    for _ in 0..EXECUTORS {
        executors.push(start(&storage)?);
    }
    let mut handles: Vec<TaskHandle<u32>> = Vec::new();
    for i in 0..TOTAL {
        handles.push(executors[0].enqueue(&pausable, &i).await?);
    }
    until("some runs started", || async {
        Ok(runs.load(Ordering::SeqCst) >= 5)
    })
    .await?;
    storage
        .pause_task_queue("bulk", SystemClock.now_ms())
        .await?;
    // Claims that began before the pause are over by now; then the waiting runs go on.
    tokio::time::sleep(Duration::from_millis(200)).await;
    gate.add_permits(usize::try_from(TOTAL).unwrap_or(usize::MAX));
    // The runs taken before the pause (and by claims that began before it) finish.
    until("no run of the paused queue is left", || async {
        Ok(count(&storage, "pausable", TaskExecutionStatus::Running).await? == 0)
    })
    .await?;
    let after_pause = runs.load(Ordering::SeqCst);
    check!(
        after_pause < TOTAL,
        "every execution ran although the queue was paused"
    );
    // Other queues go on meanwhile, and an executor started now claims nothing from it.
    executors.push(start(&storage)?);
    let unpaused = executors[1].enqueue(&other, &7).await?;
    check_eq!(unpaused.wait_with(&wait_options()).await?.output, Some(7));
    tokio::time::sleep(Duration::from_millis(300)).await;
    check_eq!(runs.load(Ordering::SeqCst), after_pause);
    check_eq!(
        count(&storage, "pausable", TaskExecutionStatus::Running).await?,
        0
    );
    check_eq!(
        count(&storage, "pausable", TaskExecutionStatus::Ready).await?,
        usize::try_from(TOTAL - after_pause).unwrap_or(usize::MAX)
    );
    check!(
        storage.resume_task_queue("bulk").await?,
        "the resume found no pause"
    );
    for (i, handle) in handles.iter().enumerate() {
        let done = handle.wait_with(&wait_options()).await?;
        check_eq!(done.output, u32::try_from(i).ok());
    }
    for executor in executors {
        executor.shutdown().await;
    }
    check_eq!(runs.load(Ordering::SeqCst), TOTAL);
    Ok(())
}

/// A run that heartbeats (here, through progress reports) outlives its timeout many times
/// over and completes, its progress readable while it runs and kept after; the same run
/// without heartbeats times out.
///
/// # Errors
///
/// The first expectation that does not hold.
pub async fn heartbeats_keep_a_long_run_alive_and_report_progress(
    storage: Arc<dyn TaskExecutionStorage>,
) -> CaseResult {
    let no_retry = RetryOptions {
        max_attempts: 0,
        ..RetryOptions::default()
    };
    let beating = TaskDefinition::new("beating", |ctx, steps: u32| async move {
        for step in 1..=steps {
            tokio::time::sleep(Duration::from_millis(100)).await;
            ctx.report_progress(&serde_json::json!({ "step": step, "of": steps }))
                .await?;
        }
        ctx.heartbeat().await?;
        Ok::<_, TaskError>(steps)
    })
    .timeout(Duration::from_millis(400))
    .retry(no_retry.clone());
    let silent = TaskDefinition::new("silent", |_ctx, steps: u32| async move {
        tokio::time::sleep(Duration::from_millis(100) * steps).await;
        Ok::<_, TaskError>(steps)
    })
    .timeout(Duration::from_millis(400))
    .retry(no_retry);
    let executor = Executor::new(Arc::clone(&storage), fast_options());
    executor.register(&beating)?;
    executor.register(&silent)?;
    executor.start();
    let long = executor.enqueue(&beating, &12).await?;
    let quiet = executor.enqueue(&silent, &12).await?;
    until("the long run reported progress", || async {
        Ok(long.get().await?.progress.is_some())
    })
    .await?;
    let running = long.get().await?;
    check_eq!(running.status, TaskExecutionStatus::Running);
    let done = long.wait_with(&wait_options()).await?;
    let quiet = quiet.wait_with(&wait_options()).await?;
    executor.shutdown().await;
    check!(
        done.status() == TaskExecutionStatus::Completed,
        "the heartbeating run ended {:?}: {:?}",
        done.status(),
        done.error()
    );
    check_eq!(done.output, Some(12));
    let progress: serde_json::Value =
        serde_json::from_str(done.execution.progress.as_deref().unwrap_or("null"))
            .map_err(|e| CaseFailure::new(e.to_string()))?;
    check_eq!(progress, serde_json::json!({ "step": 12, "of": 12 }));
    check!(
        quiet.status() == TaskExecutionStatus::TimedOut,
        "the run without heartbeats ended {:?}",
        quiet.status()
    );
    Ok(())
}

/// A run that snoozes runs again after the delay, without counting an attempt and without an
/// error, until it completes; a progress report too large is refused and stores nothing.
///
/// # Errors
///
/// The first expectation that does not hold.
pub async fn snoozed_runs_run_again_without_counting_an_attempt(
    storage: Arc<dyn TaskExecutionStorage>,
) -> CaseResult {
    let runs = Arc::new(AtomicU32::new(0));
    let refused = Arc::new(std::sync::Mutex::new(None));
    let snoozer = {
        let runs = Arc::clone(&runs);
        let refused = Arc::clone(&refused);
        TaskDefinition::new("snoozer", move |ctx, (): ()| {
            let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
            let refused = Arc::clone(&refused);
            async move {
                if run == 1 {
                    let big = "x".repeat(crate::task::MAX_PROGRESS_BYTES);
                    let answer = ctx.report_progress(&big).await;
                    *refused
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(answer);
                }
                if run < 3 {
                    return Err(TaskError::snooze(Duration::from_millis(50)));
                }
                Ok::<_, TaskError>((run, ctx.attempt))
            }
        })
        .retry(RetryOptions {
            max_attempts: 0,
            ..RetryOptions::default()
        })
    };
    let executor = Executor::new(Arc::clone(&storage), fast_options());
    executor.register(&snoozer)?;
    executor.start();
    let started = Instant::now();
    let done = executor
        .enqueue(&snoozer, &())
        .await?
        .wait_with(&wait_options())
        .await?;
    let took = started.elapsed();
    executor.shutdown().await;
    check!(
        done.status() == TaskExecutionStatus::Completed,
        "the snoozing run ended {:?}: {:?}",
        done.status(),
        done.error()
    );
    check_eq!(done.output, Some((3, 0)));
    check_eq!(done.execution.retry_attempts, 0);
    check_eq!(done.execution.error, None);
    check_eq!(done.execution.progress, None);
    check!(
        took >= Duration::from_millis(100),
        "two snoozes of 50 ms took {took:?}"
    );
    let refused = refused
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    check!(
        matches!(refused, Some(Err(Error::InvalidArgument { .. }))),
        "a progress report of {} bytes: {refused:?}",
        crate::task::MAX_PROGRESS_BYTES + 2
    );
    Ok(())
}

/// A heartbeat from a run whose execution was cancelled under it is refused with
/// [`Error::InvalidState`] (the run should stop) and changes nothing.
///
/// # Errors
///
/// The first expectation that does not hold.
pub async fn heartbeat_of_a_run_that_lost_its_execution_is_refused(
    storage: Arc<dyn TaskExecutionStorage>,
) -> CaseResult {
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let (beat_tx, beat_rx) = tokio::sync::oneshot::channel::<crate::Result<()>>();
    let go = Arc::new(tokio::sync::Notify::new());
    let slots = Arc::new(std::sync::Mutex::new(Some((started_tx, beat_tx))));
    let task = {
        let go = Arc::clone(&go);
        TaskDefinition::new("outlived", move |ctx, (): ()| {
            let slots = slots
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            let go = Arc::clone(&go);
            async move {
                if let Some((started, beat)) = slots {
                    // Outlives the run, which the cancellation stops.
                    tokio::spawn(async move {
                        go.notified().await;
                        let _ = beat.send(ctx.heartbeat().await);
                    });
                    let _ = started.send(());
                }
                std::future::pending::<Result<(), TaskError>>().await
            }
        })
        // Bounds the case should the cancellation never reach the run.
        .timeout(Duration::from_secs(20))
    };
    let executor = Executor::new(Arc::clone(&storage), fast_options());
    executor.register(&task)?;
    executor.start();
    let handle = executor.enqueue(&task, &()).await?;
    tokio::time::timeout(Duration::from_secs(30), started_rx)
        .await
        .map_err(|_| CaseFailure::new("the run did not start"))?
        .map_err(|_| CaseFailure::new("the run ended before it started"))?;
    check!(handle.cancel().await?, "the cancel changed nothing");
    let before = handle.get().await?;
    go.notify_one();
    let beat = tokio::time::timeout(Duration::from_secs(30), beat_rx)
        .await
        .map_err(|_| CaseFailure::new("the heartbeat did not answer"))?
        .map_err(|_| CaseFailure::new("the heartbeat was dropped"))?;
    // The cancel loop stops the run; a shutdown before it would wait for the run's timeout.
    until("the cancelled run was stopped", || async {
        Ok(executor.running_count() == 0)
    })
    .await?;
    executor.shutdown().await;
    check!(
        matches!(beat, Err(Error::InvalidState { .. })),
        "the heartbeat of a cancelled run answered {beat:?}"
    );
    let after = handle.get().await?;
    check_eq!(after.status, TaskExecutionStatus::Cancelled);
    check_eq!(after.expires_at, before.expires_at);
    Ok(())
}

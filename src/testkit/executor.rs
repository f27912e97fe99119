//! The end-to-end executor scenario: the workload the upstream storage suite runs, with the same
//! expectations, driven through [`Executor`]s over any [`TaskExecutionStorage`].
//!
//! Every case is a public async fn taking a fresh, empty storage; run each one with
//! [`run_case`](super::run_case) and a factory, the same factory as for
//! [`task_storage_conformance!`](crate::task_storage_conformance), so a case is skipped the same
//! way ([`Setup::Skip`](super::Setup::Skip), with one printed line) in every suite:
//!
//! ```no_run
//! # async fn example() -> sea_orm_durable::testkit::CaseResult {
//! use std::sync::Arc;
//! use sea_orm_durable::testkit::task::Storage;
//! use sea_orm_durable::testkit::{Setup, UnderTest, executor, run_case};
//!
//! let factory = async {
//!     let storage: Storage = Arc::new(sea_orm_durable::task::InMemoryTaskExecutionStorage::new());
//!     Ok::<_, sea_orm_durable::Error>(Setup::Ready(UnderTest::new(storage)))
//! };
//! run_case("cancel_ready_execution", factory, executor::cancel_ready_execution).await?;
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{CaseFailure, CaseResult};
use crate::clock::ManualClock;
use crate::task::executor::{
    EnqueueOptions, Executor, ExecutorOptions, FinalizeInput, FinishedExecution, ParentOutcome,
    ParentTaskOutput, Sequence, TaskDefinition, TaskError, TaskHandle, WaitOptions,
};
use crate::task::storage::TaskExecutionStorage;
use crate::task::{
    MissedTicks, RetryOptions, TaskExecution, TaskExecutionFilter, TaskExecutionStatus, WakeResult,
};
use crate::{Error, Schedule};

pub use super::control::{
    a_paused_queue_stops_every_executor_until_resumed,
    heartbeat_of_a_run_that_lost_its_execution_is_refused,
    heartbeats_keep_a_long_run_alive_and_report_progress,
    snoozed_runs_run_again_without_counting_an_attempt,
};
pub use super::sweep::every_task_write_whose_reply_is_lost_tells_the_truth;
pub use super::values::executor_with_limits_at_the_end_of_u64_finishes_its_work;

/// Executor options suited to tests: short polls, everything else default.
pub fn fast_options() -> ExecutorOptions {
    ExecutorOptions {
        poll_interval: Duration::from_millis(20),
        expire_interval: Duration::from_millis(200),
        ..ExecutorOptions::default()
    }
}

/// The tasks of the scenario.
struct Tasks {
    root: TaskDefinition<String, Vec<String>>,
    independent: TaskDefinition<u32, String>,
    retry: TaskDefinition<(), String>,
    failing: TaskDefinition<(), String>,
    parent_with_failing_child: TaskDefinition<(), ParentTaskOutput<()>>,
    parent_with_failing_finalize: TaskDefinition<(), String>,
    wide_parent: TaskDefinition<u32, ParentTaskOutput<()>>,
    /// Tasks only spawned as children, registered on their own.
    children: Vec<TaskDefinition<String, String>>,
    wide_child: TaskDefinition<u32, u32>,
    a: TaskDefinition<String, Vec<String>>,
    b: TaskDefinition<String, Greetings>,
}

fn hello(task: &'static str) -> TaskDefinition<String, String> {
    TaskDefinition::new(
        format!("task{task}"),
        move |_ctx, name: String| async move { Ok(format!("Hello from task {task}, {name}!")) },
    )
}

type Greetings = (String, Vec<String>);

fn greet_step(task: &'static str) -> TaskDefinition<Greetings, Greetings> {
    TaskDefinition::new(
        format!("task{task}"),
        move |_ctx, (name, mut said): Greetings| async move {
            said.push(format!("Hello from task {task}, {name}!"));
            Ok((name, said))
        },
    )
}

fn tasks() -> Tasks {
    let (a1, a2, a3) = (hello("A1"), hello("A2"), hello("A3"));
    let a_finalize = TaskDefinition::new(
        "taskAFinalize",
        |_ctx, input: FinalizeInput<String>| async move {
            let mut said = vec![input.output];
            for child in &input.children {
                said.push(child.output_as::<String>()?);
            }
            Ok(said)
        },
    );
    let children = vec![a1.clone(), a2.clone(), a3.clone()];
    let a = TaskDefinition::parent("taskA", move |_ctx, name: String| {
        let (a1, a2, a3) = (a1.clone(), a2.clone(), a3.clone());
        async move {
            Ok(ParentOutcome::new(format!("Hello from task A, {name}!"))
                .child(&a1, &name)
                .child(&a2, &name)
                .child(&a3, &name))
        }
    })
    .finalize(&a_finalize);
    let b_start = TaskDefinition::new("taskBStart", |_ctx, name: String| async move {
        Ok::<Greetings, TaskError>((name, Vec::new()))
    });
    let b = Sequence::new("taskB", &b_start)
        .then(&greet_step("B1"))
        .then(&greet_step("B2"))
        .then(&greet_step("B3"))
        .build();
    let root_finalize = TaskDefinition::new(
        "rootFinalize",
        |_ctx, input: FinalizeInput<()>| async move {
            let mut said: Vec<String> = Vec::new();
            if let Some(a) = input.children.first() {
                said.extend(a.output_as::<Vec<String>>()?);
            }
            if let Some(b) = input.children.get(1) {
                said.extend(b.output_as::<Greetings>()?.1);
            }
            Ok(said)
        },
    );
    let (a_task, b_task) = (a.clone(), b.clone());
    let root = TaskDefinition::parent("root", move |_ctx, name: String| {
        let (a, b) = (a_task.clone(), b_task.clone());
        async move { Ok(ParentOutcome::new(()).child(&a, &name).child(&b, &name)) }
    })
    .finalize(&root_finalize);

    let independent = TaskDefinition::new("independent", |_ctx, i: u32| async move {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..10))).await;
        Ok(format!("Hello from task T{i}, world!"))
    });
    let retry = TaskDefinition::new("retry", |ctx, ()| async move {
        if ctx.attempt < 2 {
            return Err(TaskError::retryable(format!(
                "attempt {} fails",
                ctx.attempt
            )));
        }
        Ok("Success".to_owned())
    })
    .retry(RetryOptions {
        max_attempts: 3,
        ..RetryOptions::default()
    });
    let failing = TaskDefinition::new("failing", |_ctx, ()| async move {
        Err::<String, _>(TaskError::retryable("Failed"))
    });
    let failing_child = failing.clone();
    let parent_with_failing_child =
        TaskDefinition::parent("parentWithFailingChild", move |_ctx, ()| {
            let failing = failing_child.clone();
            async move { Ok(ParentOutcome::new(()).child(&failing, &())) }
        })
        .without_finalize();
    let failing_finalize = TaskDefinition::new(
        "failingFinalize",
        |_ctx, _input: FinalizeInput<()>| async move {
            Err::<String, _>(TaskError::retryable("Failed"))
        },
    );
    let a1 = children[0].clone();
    let parent_with_failing_finalize =
        TaskDefinition::parent("parentWithFailingFinalizeTask", move |_ctx, ()| {
            let a1 = a1.clone();
            async move { Ok(ParentOutcome::new(()).child(&a1, &"world".to_owned())) }
        })
        .finalize(&failing_finalize);
    let wide_child = TaskDefinition::new("concurrentChild", |_ctx, index: u32| async move {
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok(index)
    });
    let wide_child_task = wide_child.clone();
    let wide_parent = TaskDefinition::parent("concurrentParent", move |_ctx, count: u32| {
        let child = wide_child_task.clone();
        async move {
            let mut outcome = ParentOutcome::new(());
            for i in 0..count {
                outcome = outcome.child(&child, &i);
            }
            Ok(outcome)
        }
    })
    .without_finalize();
    Tasks {
        root,
        independent,
        retry,
        failing,
        parent_with_failing_child,
        parent_with_failing_finalize,
        wide_parent,
        children,
        wide_child,
        a,
        b,
    }
}

fn register(executor: &Executor, t: &Tasks) -> CaseResult {
    executor.register(&t.root)?;
    executor.register(&t.independent)?;
    executor.register(&t.retry)?;
    executor.register(&t.failing)?;
    executor.register(&t.parent_with_failing_child)?;
    executor.register(&t.parent_with_failing_finalize)?;
    executor.register(&t.wide_parent)?;
    for child in &t.children {
        executor.register(child)?;
    }
    executor.register(&t.wide_child)?;
    executor.register(&t.a)?;
    executor.register(&t.b)?;
    Ok(())
}

/// Checks the timestamps every finished execution must have.
fn check_times<O>(name: &str, finished: &FinishedExecution<O>) -> CaseResult {
    let e = &finished.execution;
    let (Some(started), Some(ended)) = (e.started_at, e.finished_at) else {
        return Err(CaseFailure::new(format!(
            "{name}: started_at {:?}, finished_at {:?}",
            e.started_at, e.finished_at
        )));
    };
    check!(
        ended >= started,
        "{name}: finished_at {ended} before started_at {started}"
    );
    Ok(())
}

async fn wait<O: serde::de::DeserializeOwned>(
    handle: &TaskHandle<O>,
) -> CaseResult<FinishedExecution<O>> {
    let options = WaitOptions {
        poll_interval: Duration::from_millis(50),
        timeout: Some(Duration::from_secs(120)),
    };
    Ok(handle.wait_with(&options).await?)
}

/// Runs the scenario with `executors` executors sharing `storage`; returns its wall time.
///
/// The workload: a root parent with a parent child (three children and a finalize) and a
/// three-step sequence, with a finalize; 250 independent tasks; a task that succeeds on its
/// third attempt; a failing task; a parent with a failing child; a parent whose finalize fails;
/// and a parent with 500 children whose outputs must come back in order.
///
/// # Errors
///
/// The first expectation that does not hold, or an executor or storage error.
pub async fn upstream_scenario(
    storage: Arc<dyn TaskExecutionStorage>,
    executors: usize,
) -> CaseResult<Duration> {
    let started = Instant::now();
    let tasks = tasks();
    let mut pool = Vec::new();
    for _ in 0..executors.max(1) {
        let executor = Executor::new(Arc::clone(&storage), fast_options());
        register(&executor, &tasks)?;
        executor.start();
        pool.push(executor);
    }
    let result = scenario(&pool[0], &tasks).await;
    for executor in &pool {
        executor.shutdown().await;
    }
    result?;
    Ok(started.elapsed())
}

async fn scenario(executor: &Executor, t: &Tasks) -> CaseResult {
    let world = "world".to_owned();
    let root = executor.enqueue(&t.root, &world).await?;
    let mut independent = Vec::with_capacity(250);
    for i in 0..250 {
        independent.push(executor.enqueue(&t.independent, &i).await?);
    }
    let retry = executor.enqueue(&t.retry, &()).await?;
    let failing = executor.enqueue(&t.failing, &()).await?;
    let failing_child = executor.enqueue(&t.parent_with_failing_child, &()).await?;
    let failing_finalize = executor
        .enqueue(&t.parent_with_failing_finalize, &())
        .await?;
    let wide = executor.enqueue(&t.wide_parent, &500).await?;

    let done = wait(&root).await?;
    check!(
        done.status() == TaskExecutionStatus::Completed,
        "root: {:?} {:?}",
        done.status(),
        done.error()
    );
    check!(
        done.execution.task_id == "root",
        "root task id {}",
        done.execution.task_id
    );
    check!(
        done.execution.execution_id.starts_with("te_"),
        "root id {}",
        done.execution.execution_id
    );
    let expected: Vec<String> = ["A", "A1", "A2", "A3", "B1", "B2", "B3"]
        .iter()
        .map(|t| format!("Hello from task {t}, world!"))
        .collect();
    check!(
        done.output.as_ref() == Some(&expected),
        "root output {:?}",
        done.output
    );
    check_times("root", &done)?;

    for (i, handle) in independent.iter().enumerate() {
        let finished = wait(handle).await?;
        check!(
            finished.status() == TaskExecutionStatus::Completed,
            "T{i}: {:?}",
            finished.status()
        );
        let want = format!("Hello from task T{i}, world!");
        check!(
            finished.output.as_ref() == Some(&want),
            "T{i} output {:?}",
            finished.output
        );
        check_times("independent", &finished)?;
    }

    let done = wait(&retry).await?;
    check!(
        done.status() == TaskExecutionStatus::Completed,
        "retry: {:?} {:?}",
        done.status(),
        done.error()
    );
    check!(
        done.output.as_deref() == Some("Success"),
        "retry output {:?}",
        done.output
    );
    check!(
        done.execution.retry_attempts == 2,
        "retry attempts {}",
        done.execution.retry_attempts
    );
    check_times("retry", &done)?;

    let done = wait(&failing).await?;
    check!(
        done.status() == TaskExecutionStatus::Failed,
        "failing: {:?}",
        done.status()
    );
    check!(
        done.error().map(|e| e.message.as_str()) == Some("Failed"),
        "failing error {:?}",
        done.error()
    );
    check_times("failing", &done)?;

    let done = wait(&failing_child).await?;
    check!(
        done.status() == TaskExecutionStatus::ChildrenFailed,
        "failing child: {:?}",
        done.status()
    );
    let children = executor
        .storage()
        .get_finished_child_task_executions(failing_child.execution_id())
        .await?;
    let first_error = children
        .first()
        .and_then(|c| c.error.as_ref())
        .map(|e| e.message.as_str());
    check!(
        first_error == Some("Failed"),
        "failing child's error {first_error:?}"
    );
    check!(
        done.error().is_some_and(|e| e.message.contains("Failed")),
        "parent error {:?}",
        done.error()
    );
    check_times("parent with failing child", &done)?;

    let done = wait(&failing_finalize).await?;
    check!(
        done.status() == TaskExecutionStatus::FinalizeFailed,
        "failing finalize: {:?}",
        done.status()
    );
    check!(
        done.error().is_some_and(|e| e.message.contains("Failed")),
        "finalize error {:?}",
        done.error()
    );
    check_times("parent with failing finalize", &done)?;

    let done = wait(&wide).await?;
    check!(
        done.status() == TaskExecutionStatus::Completed,
        "wide parent: {:?} {:?}",
        done.status(),
        done.error()
    );
    let output = done.output.as_ref().ok_or("wide parent has no output")?;
    check!(
        output.children.len() == 500,
        "wide parent has {} outputs",
        output.children.len()
    );
    for (i, child) in output.children.iter().enumerate() {
        let value = child.output_as::<usize>()?;
        let index = usize::try_from(child.index)?;
        check!(
            value == i && index == i,
            "child {i}: index {index}, output {value}"
        );
    }
    check!(
        done.execution.started_at.is_some(),
        "wide parent never started"
    );
    Ok(())
}

/// Starts one executor over `storage` with `tasks` registered.
fn start_with(
    storage: &Arc<dyn TaskExecutionStorage>,
    register: impl FnOnce(&Executor) -> crate::Result<()>,
) -> CaseResult<Executor> {
    let executor = Executor::new(Arc::clone(storage), fast_options());
    register(&executor)?;
    executor.start();
    Ok(executor)
}

/// Polls `handle` until its status is `status` (at most 30 s).
async fn until_status<O: serde::de::DeserializeOwned>(
    handle: &TaskHandle<O>,
    status: TaskExecutionStatus,
) -> CaseResult {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = handle.get().await?.status;
        if now == status {
            return Ok(());
        }
        check!(
            Instant::now() < deadline,
            "{} stayed {now}, never {status}",
            handle.execution_id()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A task that blocks until cancelled (or 30 s), counting its runs.
fn blocking_task(id: &str, runs: Arc<std::sync::atomic::AtomicU32>) -> TaskDefinition<(), String> {
    TaskDefinition::new(id.to_owned(), move |ctx, ()| {
        let runs = Arc::clone(&runs);
        async move {
            runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::select! {
                () = ctx.cancellation.cancelled() => Err(TaskError::fatal("stopped")),
                () = tokio::time::sleep(Duration::from_secs(30)) => Ok("finished".to_owned()),
            }
        }
    })
}

/// Two cancels of one execution in the same millisecond (a clock that stands still): the
/// first reports the change, the second does not take the first one's row for its own.
///
/// # Errors
///
/// The first expectation that does not hold.
pub async fn second_cancel_in_the_same_millisecond_reports_no_change(
    storage: Arc<dyn TaskExecutionStorage>,
) -> CaseResult {
    let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let task =
        blocking_task("cancelTwice", Arc::clone(&runs)).sleep_before_run(Duration::from_secs(60));
    let executor = Executor::new(
        Arc::clone(&storage),
        ExecutorOptions {
            clock: Arc::new(ManualClock::new(1_700_000_000_000)),
            ..fast_options()
        },
    );
    executor.register(&task)?;
    let handle = executor.enqueue(&task, &()).await?;
    check!(handle.cancel().await?, "first cancel reported no change");
    for _ in 0..3 {
        check!(!handle.cancel().await?, "a later cancel reported a change");
    }
    let done = handle.get().await?;
    check!(
        done.status == TaskExecutionStatus::Cancelled,
        "status {:?}",
        done.status
    );
    check!(
        runs.load(std::sync::atomic::Ordering::SeqCst) == 0,
        "it ran"
    );
    Ok(())
}

/// Cancelling a ready execution stops it from ever running.
///
/// # Errors
///
/// The first expectation that does not hold.
pub async fn cancel_ready_execution(storage: Arc<dyn TaskExecutionStorage>) -> CaseResult {
    let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let task =
        blocking_task("cancelReady", Arc::clone(&runs)).sleep_before_run(Duration::from_secs(60));
    let executor = start_with(&storage, |e| e.register(&task))?;
    let handle = executor.enqueue(&task, &()).await?;
    check!(
        handle.cancel().await?,
        "cancel of a ready execution reported no change"
    );
    check!(!handle.cancel().await?, "second cancel reported a change");
    let done = wait(&handle).await?;
    executor.shutdown().await;
    check!(
        done.status() == TaskExecutionStatus::Cancelled,
        "status {:?}",
        done.status()
    );
    check!(
        runs.load(std::sync::atomic::Ordering::SeqCst) == 0,
        "a cancelled execution ran"
    );
    Ok(())
}

/// Cancelling a running execution stops the run, and whatever it returns late is discarded.
///
/// # Errors
///
/// The first expectation that does not hold.
pub async fn cancel_running_execution(storage: Arc<dyn TaskExecutionStorage>) -> CaseResult {
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = Arc::clone(&stopped);
    // Ignores cancellation and returns late: its result must not be recorded.
    let stubborn = TaskDefinition::new("cancelRunningLate", move |ctx, ()| {
        let seen = Arc::clone(&seen);
        async move {
            let cancelled = ctx.cancellation.clone();
            let watcher = tokio::spawn(async move {
                cancelled.cancelled().await;
                seen.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            tokio::time::sleep(Duration::from_millis(300)).await;
            watcher.abort();
            Ok::<_, TaskError>("late".to_owned())
        }
    });
    let executor = start_with(&storage, |e| e.register(&stubborn))?;
    let handle = executor.enqueue(&stubborn, &()).await?;
    until_status(&handle, TaskExecutionStatus::Running).await?;
    check!(
        handle.cancel().await?,
        "cancel of a running execution reported no change"
    );
    let done = wait(&handle).await?;
    check!(
        done.status() == TaskExecutionStatus::Cancelled,
        "status {:?}",
        done.status()
    );
    // Give the run time to return, then check that nothing it produced was written.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let after = handle.get().await?;
    executor.shutdown().await;
    check!(
        after.status == TaskExecutionStatus::Cancelled,
        "status became {}",
        after.status
    );
    check!(
        after.output.is_none(),
        "late output recorded: {:?}",
        after.output
    );
    check!(
        stopped.load(std::sync::atomic::Ordering::SeqCst),
        "the run was never told to stop"
    );
    Ok(())
}

/// Cancelling a parent that waits for its children cancels the children too.
///
/// # Errors
///
/// The first expectation that does not hold.
pub async fn cancel_parent_cancels_children(storage: Arc<dyn TaskExecutionStorage>) -> CaseResult {
    let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let child = blocking_task("cancelChild", Arc::clone(&runs));
    let child_task = child.clone();
    let parent = TaskDefinition::parent("cancelParent", move |_ctx, ()| {
        let child = child_task.clone();
        async move {
            Ok(ParentOutcome::new(())
                .child(&child, &())
                .child(&child, &())
                .child(&child, &()))
        }
    })
    .without_finalize();
    let executor = start_with(&storage, |e| {
        e.register(&parent)?;
        e.register(&child)
    })?;
    let handle = executor.enqueue(&parent, &()).await?;
    until_status(&handle, TaskExecutionStatus::WaitingForChildren).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while runs.load(std::sync::atomic::Ordering::SeqCst) < 3 {
        check!(Instant::now() < deadline, "children never all started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check!(
        handle.cancel().await?,
        "cancel of a waiting parent reported no change"
    );
    let filter = crate::task::TaskExecutionFilter {
        parent_execution_id: Some(handle.execution_id().to_owned()),
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let children = storage.get_task_executions(&filter).await?;
        check!(
            children.len() == 3,
            "parent has {} children",
            children.len()
        );
        if children
            .iter()
            .all(|c| c.status == TaskExecutionStatus::Cancelled)
        {
            break;
        }
        check!(
            Instant::now() < deadline,
            "children not cancelled: {:?}",
            children.iter().map(|c| c.status).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The executor stops the children's runs too.
    let deadline = Instant::now() + Duration::from_secs(30);
    while executor.running_count() > 0 {
        check!(
            Instant::now() < deadline,
            "{} runs still going",
            executor.running_count()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    executor.shutdown().await;
    let parent_row = handle.get().await?;
    check!(
        parent_row.status == TaskExecutionStatus::Cancelled,
        "parent became {}",
        parent_row.status
    );
    Ok(())
}

/// A run past its timeout ends `timed_out` after its retries.
///
/// # Errors
///
/// The first expectation that does not hold.
pub async fn timeout_ends_timed_out_after_retries(
    storage: Arc<dyn TaskExecutionStorage>,
) -> CaseResult {
    let slow = TaskDefinition::new("slowTask", |_ctx, ()| async move {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Ok::<_, TaskError>(())
    })
    .timeout(Duration::from_millis(150))
    .retry(RetryOptions {
        max_attempts: 1,
        ..RetryOptions::default()
    });
    let executor = start_with(&storage, |e| e.register(&slow))?;
    let handle = executor.enqueue(&slow, &()).await?;
    let done = wait(&handle).await?;
    executor.shutdown().await;
    check!(
        done.status() == TaskExecutionStatus::TimedOut,
        "status {:?}",
        done.status()
    );
    check!(
        done.execution.retry_attempts == 1,
        "retries {}",
        done.execution.retry_attempts
    );
    let kind = done.error().map(|e| e.kind);
    check!(
        kind == Some(crate::task::ExecutionErrorKind::TimedOut),
        "error kind {kind:?}"
    );
    Ok(())
}

/// `sleep_before_run` and retry delays hold executions back: they are not claimed early.
///
/// # Errors
///
/// The first expectation that does not hold.
pub async fn delays_are_honoured(storage: Arc<dyn TaskExecutionStorage>) -> CaseResult {
    let sleeper = TaskDefinition::new("sleeper", |_ctx, ()| async move { Ok::<_, TaskError>(()) })
        .sleep_before_run(Duration::from_millis(700));
    let flaky = TaskDefinition::new("flaky", |ctx, ()| async move {
        if ctx.attempt == 0 {
            return Err(TaskError::retryable("first attempt fails"));
        }
        Ok(())
    })
    .retry(RetryOptions {
        max_attempts: 1,
        base_delay: Duration::from_millis(600),
        ..RetryOptions::default()
    });
    let executor = start_with(&storage, |e| {
        e.register(&sleeper)?;
        e.register(&flaky)
    })?;
    let sleeping = executor.enqueue(&sleeper, &()).await?;
    let retried = executor.enqueue(&flaky, &()).await?;
    let (slept, retried) = (wait(&sleeping).await?, wait(&retried).await?);
    executor.shutdown().await;
    let e = &slept.execution;
    let waited = e.started_at.unwrap_or_default() - e.created_at;
    check!(
        slept.status() == TaskExecutionStatus::Completed,
        "sleeper {:?}",
        slept.status()
    );
    check!(
        waited >= 700,
        "sleeper started {waited} ms after enqueue, before its 700 ms sleep"
    );
    let e = &retried.execution;
    let waited = e.started_at.unwrap_or_default() - e.created_at;
    check!(
        retried.status() == TaskExecutionStatus::Completed,
        "flaky {:?}",
        retried.status()
    );
    check!(e.retry_attempts == 1, "flaky retries {}", e.retry_attempts);
    check!(
        waited >= 600,
        "retry started {waited} ms after enqueue, before its 600 ms delay"
    );
    Ok(())
}

/// Shutting an executor down lets its running executions finish and record their results.
///
/// # Errors
///
/// The first expectation that does not hold.
pub async fn shutdown_lets_running_executions_finish(
    storage: Arc<dyn TaskExecutionStorage>,
) -> CaseResult {
    let task = TaskDefinition::new("finishesDuringShutdown", |_ctx, ()| async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok::<_, TaskError>("done".to_owned())
    });
    let executor = start_with(&storage, |e| e.register(&task))?;
    let handle = executor.enqueue(&task, &()).await?;
    until_status(&handle, TaskExecutionStatus::Running).await?;
    executor.shutdown().await;
    check!(executor.running_count() == 0, "runs left after shutdown");
    let after = handle.get().await?;
    check!(
        after.status == TaskExecutionStatus::Completed,
        "status after shutdown {}",
        after.status
    );
    // A stopped executor claims nothing more.
    let late = executor.enqueue(&task, &()).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = late.get().await?.status;
    check!(
        status == TaskExecutionStatus::Ready,
        "a stopped executor ran an execution: {status}"
    );
    Ok(())
}

/// A task that panics fails its execution with the panic's message; the executor goes on.
///
/// # Errors
///
/// The first expectation that does not hold.
pub async fn panicking_task_fails_its_execution(
    storage: Arc<dyn TaskExecutionStorage>,
) -> CaseResult {
    let panicky = TaskDefinition::new("panicky", |_ctx, n: u32| async move {
        if n == 0 {
            panic!("division by zero requested");
        }
        Ok::<_, TaskError>(100 / n)
    });
    let executor = start_with(&storage, |e| e.register(&panicky))?;
    let bad = executor.enqueue(&panicky, &0).await?;
    let good = executor.enqueue(&panicky, &4).await?;
    let (bad, good) = (wait(&bad).await?, wait(&good).await?);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let running = executor.running_count();
    executor.shutdown().await;
    check!(
        bad.status() == TaskExecutionStatus::Failed,
        "panicked run: {:?}",
        bad.status()
    );
    check!(
        bad.error()
            .is_some_and(|e| e.message.contains("division by zero requested")),
        "error {:?}",
        bad.error()
    );
    check!(good.output == Some(25), "the other run: {:?}", good.output);
    check!(
        running == 0,
        "{running} runs still counted after they ended"
    );
    Ok(())
}

/// Options out of the documented limits are refused when a task is registered or enqueued,
/// with a typed error, and nothing is written.
///
/// # Errors
///
/// The first expectation that does not hold.
pub async fn options_beyond_the_limits_are_refused(
    storage: Arc<dyn TaskExecutionStorage>,
) -> CaseResult {
    let executor = Executor::new(Arc::clone(&storage), fast_options());
    let task = || TaskDefinition::new("limits", |_ctx, ()| async move { Ok::<_, TaskError>(()) });
    for (name, bad) in [
        ("timeout Duration::MAX", task().timeout(Duration::MAX)),
        (
            "timeout past the maximum",
            task().timeout(crate::task::MAX_TIMEOUT + Duration::from_millis(1)),
        ),
        ("zero timeout", task().timeout(Duration::ZERO)),
        (
            "sleep Duration::MAX",
            task().sleep_before_run(Duration::MAX),
        ),
        ("empty queue", task().queue("")),
        (
            "NaN multiplier",
            task().retry(RetryOptions {
                delay_multiplier: f64::NAN,
                ..RetryOptions::default()
            }),
        ),
    ] {
        let registered = executor.register(&bad);
        check!(
            matches!(registered, Err(crate::Error::InvalidArgument { .. })),
            "{name}: register gave {registered:?}"
        );
        let enqueued = executor.enqueue(&bad, &()).await;
        check!(
            matches!(enqueued, Err(crate::Error::InvalidArgument { .. })),
            "{name}: enqueue gave {:?}",
            enqueued.map(|h| h.execution_id().to_owned())
        );
    }
    let all = storage
        .get_task_executions(&crate::task::TaskExecutionFilter::default())
        .await?;
    check!(all.is_empty(), "{} executions were written", all.len());
    // The limits themselves are fine.
    executor.register(&task().timeout(crate::task::MAX_TIMEOUT))?;
    Ok(())
}

/// Executors that share a storage but know different tasks never fail each other's work (a
/// rolling deploy, or two services on one database): each claims only the tasks registered
/// with it, and only from its queues.
///
/// # Errors
///
/// The first expectation that does not hold.
pub async fn executors_claim_only_their_tasks_and_queues(
    storage: Arc<dyn TaskExecutionStorage>,
) -> CaseResult {
    let echo = |id: &str| {
        TaskDefinition::new(id.to_owned(), |_ctx, n: u32| async move {
            Ok::<_, TaskError>(n)
        })
    };
    let old_task = echo("oldTask");
    let new_task = echo("newTask");
    let reports = echo("reports").queue("reports");
    // The old release knows only `oldTask`; it also serves every queue.
    let old = start_with(&storage, |e| e.register(&old_task))?;
    let new_handle = old.enqueue(&new_task, &1).await?;
    let report_handle = old.enqueue(&reports, &2).await?;
    let old_handle = old.enqueue(&old_task, &3).await?;
    check!(
        wait(&old_handle).await?.output == Some(3),
        "the old executor did not run its own task"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (name, handle) in [("newTask", &new_handle), ("reports", &report_handle)] {
        let e = handle.get().await?;
        check!(
            e.status == TaskExecutionStatus::Ready,
            "{name} was taken by an executor that does not know it: {} {:?}",
            e.status,
            e.error
        );
    }
    // A reporting service serves only its own queue, though it knows `newTask` too.
    let reporting = Executor::new(
        Arc::clone(&storage),
        ExecutorOptions {
            queues: Some(vec!["reports".to_owned()]),
            ..fast_options()
        },
    );
    reporting.register(&reports)?;
    reporting.register(&new_task)?;
    reporting.start();
    check!(
        wait(&report_handle).await?.output == Some(2),
        "the reporting executor did not run its queue"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    check!(
        new_handle.get().await?.status == TaskExecutionStatus::Ready,
        "an executor claimed from a queue it does not serve"
    );
    // The new release runs what it knows.
    let new = start_with(&storage, |e| e.register(&new_task))?;
    let done = wait(&new_handle).await?;
    for executor in [old, reporting, new] {
        executor.shutdown().await;
    }
    check!(done.output == Some(1), "newTask: {:?}", done.status());
    Ok(())
}

/// A completed run's output is stored once (as the output; `run_output` only for parents that
/// wait for children).
///
/// # Errors
///
/// The first expectation that does not hold.
pub async fn outputs_are_stored_once(storage: Arc<dyn TaskExecutionStorage>) -> CaseResult {
    let plain = TaskDefinition::new("storedOnce", |_ctx, s: String| async move {
        Ok::<_, TaskError>(s)
    });
    let combine = TaskDefinition::new(
        "storedOnceFinalize",
        |_ctx, input: FinalizeInput<String>| async move { Ok::<_, TaskError>(input.output) },
    );
    let childless = TaskDefinition::parent("storedOnceParent", |_ctx, s: String| async move {
        Ok(ParentOutcome::new(s))
    })
    .finalize(&combine);
    let executor = start_with(&storage, |e| {
        e.register(&plain)?;
        e.register(&childless)
    })?;
    let a = wait(&executor.enqueue(&plain, &"a".to_owned()).await?).await?;
    let b = wait(&executor.enqueue(&childless, &"b".to_owned()).await?).await?;
    executor.shutdown().await;
    check!(
        a.output.as_deref() == Some("a"),
        "plain output {:?}",
        a.output
    );
    check!(
        a.execution.run_output.is_none(),
        "plain run output stored twice"
    );
    check!(
        b.output.as_deref() == Some("b"),
        "parent output {:?}",
        b.output
    );
    check!(
        b.execution.run_output.is_none(),
        "childless parent's run output stored beside its finalize input"
    );
    Ok(())
}

/// A storage that loses the replies of chosen calls after they took effect (as a connection
/// that breaks after the commit would), or delays them.
struct LossyStorage {
    inner: Arc<dyn TaskExecutionStorage>,
    /// Claims whose reply is still to be lost.
    lose_claims: std::sync::atomic::AtomicU32,
    /// Parent claims whose reply is still to be lost.
    lose_parent_claims: std::sync::atomic::AtomicU32,
    /// How long every claim's reply takes after the claim took effect.
    claim_delay: Duration,
}

impl LossyStorage {
    fn lost() -> crate::Error {
        crate::Error::from(sea_orm::DbErr::ConnectionAcquire(
            sea_orm::ConnAcquireErr::ConnectionClosed,
        ))
    }

    fn take(counter: &std::sync::atomic::AtomicU32) -> bool {
        counter
            .fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |n| n.checked_sub(1),
            )
            .is_ok()
    }
}

#[async_trait::async_trait]
impl TaskExecutionStorage for LossyStorage {
    async fn enqueue_task_executions(
        &self,
        executions: Vec<crate::task::storage::NewTaskExecution>,
        now: i64,
    ) -> crate::Result<()> {
        self.inner.enqueue_task_executions(executions, now).await
    }
    async fn get_task_execution(
        &self,
        execution_id: &str,
    ) -> crate::Result<Option<crate::task::TaskExecution>> {
        self.inner.get_task_execution(execution_id).await
    }
    async fn get_task_executions(
        &self,
        filter: &crate::task::TaskExecutionFilter,
    ) -> crate::Result<Vec<crate::task::TaskExecution>> {
        self.inner.get_task_executions(filter).await
    }
    async fn claim_task_executions(
        &self,
        params: &crate::task::storage::ClaimParams,
    ) -> crate::Result<Vec<crate::task::TaskExecution>> {
        let claimed = self.inner.claim_task_executions(params).await?;
        tokio::time::sleep(self.claim_delay).await;
        if !claimed.is_empty() && Self::take(&self.lose_claims) {
            return Err(Self::lost());
        }
        Ok(claimed)
    }
    async fn update_task_executions(
        &self,
        guard: &crate::task::storage::TaskExecutionGuard,
        update: &crate::task::storage::TaskExecutionUpdate,
    ) -> crate::Result<u64> {
        self.inner.update_task_executions(guard, update).await
    }
    async fn update_task_executions_many(
        &self,
        updates: &[(
            crate::task::storage::TaskExecutionGuard,
            crate::task::storage::TaskExecutionUpdate,
        )],
    ) -> crate::Result<Vec<u64>> {
        self.inner.update_task_executions_many(updates).await
    }
    async fn update_task_execution_and_enqueue(
        &self,
        guard: &crate::task::storage::TaskExecutionGuard,
        update: &crate::task::storage::TaskExecutionUpdate,
        children: Vec<crate::task::storage::NewTaskExecution>,
    ) -> crate::Result<bool> {
        self.inner
            .update_task_execution_and_enqueue(guard, update, children)
            .await
    }
    async fn add_finished_child_task_executions(
        &self,
        children: Vec<crate::task::storage::FinishedChildTaskExecution>,
    ) -> crate::Result<()> {
        self.inner
            .add_finished_child_task_executions(children)
            .await
    }
    async fn get_finished_child_task_executions(
        &self,
        parent_execution_id: &str,
    ) -> crate::Result<Vec<crate::task::storage::FinishedChildTaskExecution>> {
        self.inner
            .get_finished_child_task_executions(parent_execution_id)
            .await
    }
    async fn expire_task_executions(&self, now: i64, limit: u64) -> crate::Result<u64> {
        self.inner.expire_task_executions(now, limit).await
    }
    async fn claim_parents_with_finished_children(
        &self,
        params: &crate::task::storage::ClaimParams,
    ) -> crate::Result<Vec<crate::task::TaskExecution>> {
        let claimed = self
            .inner
            .claim_parents_with_finished_children(params)
            .await?;
        if !claimed.is_empty() && Self::take(&self.lose_parent_claims) {
            return Err(Self::lost());
        }
        Ok(claimed)
    }
    async fn close_finished_task_executions(&self, now: i64, limit: u64) -> crate::Result<u64> {
        self.inner.close_finished_task_executions(now, limit).await
    }
    async fn cancellation_requests(
        &self,
        executor_id: &str,
        limit: u64,
    ) -> crate::Result<Vec<String>> {
        self.inner.cancellation_requests(executor_id, limit).await
    }
    async fn wake_task_execution(
        &self,
        wake: &crate::task::storage::Wake,
    ) -> crate::Result<crate::task::WakeResult> {
        self.inner.wake_task_execution(wake).await
    }
    async fn save_task_schedule(
        &self,
        schedule: crate::task::TaskSchedule,
    ) -> crate::Result<crate::task::TaskSchedule> {
        self.inner.save_task_schedule(schedule).await
    }
    async fn get_task_schedules(&self) -> crate::Result<Vec<crate::task::TaskSchedule>> {
        self.inner.get_task_schedules().await
    }
    async fn delete_task_schedule(&self, schedule_id: &str) -> crate::Result<bool> {
        self.inner.delete_task_schedule(schedule_id).await
    }
    async fn due_task_schedules(
        &self,
        now: i64,
        task_ids: Option<&[String]>,
        limit: u64,
    ) -> crate::Result<Vec<crate::task::TaskSchedule>> {
        self.inner.due_task_schedules(now, task_ids, limit).await
    }
    async fn fire_task_schedule(
        &self,
        fire: &crate::task::storage::ScheduleFire,
    ) -> crate::Result<bool> {
        self.inner.fire_task_schedule(fire).await
    }
    async fn acknowledge_cancellation_requests(
        &self,
        executor_id: &str,
        execution_ids: &[String],
        now: i64,
    ) -> crate::Result<u64> {
        self.inner
            .acknowledge_cancellation_requests(executor_id, execution_ids, now)
            .await
    }
    async fn prune_task_executions(
        &self,
        statuses: &[TaskExecutionStatus],
        finished_before: i64,
        limit: u64,
    ) -> crate::Result<u64> {
        self.inner
            .prune_task_executions(statuses, finished_before, limit)
            .await
    }
    async fn database_time_ms(&self) -> crate::Result<Option<i64>> {
        self.inner.database_time_ms().await
    }
    async fn count_task_executions(
        &self,
        statuses: &[TaskExecutionStatus],
        limit: u64,
    ) -> crate::Result<Vec<crate::task::TaskExecutionCount>> {
        self.inner.count_task_executions(statuses, limit).await
    }

    async fn ready_task_executions(
        &self,
        now: i64,
        limit: u64,
    ) -> crate::Result<Vec<crate::task::ReadyTaskExecutions>> {
        self.inner.ready_task_executions(now, limit).await
    }
    async fn retry_task_execution(
        &self,
        execution_id: &str,
        now: i64,
    ) -> crate::Result<crate::task::TaskExecution> {
        self.inner.retry_task_execution(execution_id, now).await
    }
    async fn pause_task_queue(
        &self,
        queue: &str,
        now: i64,
    ) -> crate::Result<crate::task::PausedQueue> {
        self.inner.pause_task_queue(queue, now).await
    }
    async fn resume_task_queue(&self, queue: &str) -> crate::Result<bool> {
        self.inner.resume_task_queue(queue).await
    }
    async fn paused_task_queues(&self) -> crate::Result<Vec<crate::task::PausedQueue>> {
        self.inner.paused_task_queues().await
    }
}

/// Claims whose replies are lost after they committed are taken back by the executor's next
/// claim, instead of sitting `running` until their leases lapse and failing without ever
/// running (these tasks have no retries and a lease far longer than the test).
///
/// # Errors
///
/// The first expectation that does not hold.
pub async fn claims_whose_reply_was_lost_are_taken_back(
    storage: Arc<dyn TaskExecutionStorage>,
) -> CaseResult {
    let lossy: Arc<dyn TaskExecutionStorage> = Arc::new(LossyStorage {
        inner: storage,
        lose_claims: std::sync::atomic::AtomicU32::new(2),
        lose_parent_claims: std::sync::atomic::AtomicU32::new(1),
        claim_delay: Duration::ZERO,
    });
    let child = TaskDefinition::new("lostReplyChild", |_ctx, n: u32| async move {
        Ok::<_, TaskError>(n * 10)
    });
    let child_task = child.clone();
    let parent = TaskDefinition::parent("lostReplyParent", move |_ctx, n: u32| {
        let child = child_task.clone();
        async move { Ok((0..n).fold(ParentOutcome::new(()), |p, i| p.child(&child, &i))) }
    })
    .without_finalize();
    let executor = Executor::new(Arc::clone(&lossy), fast_options());
    executor.register(&child)?;
    executor.register(&parent)?;
    let mut handles = Vec::new();
    for n in 0..5 {
        handles.push(executor.enqueue(&child, &n).await?);
    }
    let parent_handle = executor.enqueue(&parent, &3).await?;
    executor.start();
    for (n, handle) in (0..5).zip(&handles) {
        let done = wait_briefly(handle).await?;
        check!(
            done.output == Some(n * 10),
            "execution {n}: {} {:?}",
            done.status(),
            done.error()
        );
    }
    let done = wait_briefly(&parent_handle).await?;
    executor.shutdown().await;
    check!(
        done.status() == TaskExecutionStatus::Completed,
        "parent {} {:?}",
        done.status(),
        done.error()
    );
    Ok(())
}

/// Waits for `handle` at most 20 s (much less than the default lease).
async fn wait_briefly<O: serde::de::DeserializeOwned>(
    handle: &TaskHandle<O>,
) -> CaseResult<FinishedExecution<O>> {
    let options = WaitOptions {
        poll_interval: Duration::from_millis(20),
        timeout: Some(Duration::from_secs(20)),
    };
    Ok(handle.wait_with(&options).await?)
}

/// A cancellation requested while the run's claim is still on its way back to the executor
/// (the run not yet registered) still stops the run.
///
/// # Errors
///
/// The first expectation that does not hold.
pub async fn cancellation_before_the_run_is_registered_is_kept(
    storage: Arc<dyn TaskExecutionStorage>,
) -> CaseResult {
    let slow: Arc<dyn TaskExecutionStorage> = Arc::new(LossyStorage {
        inner: Arc::clone(&storage),
        lose_claims: std::sync::atomic::AtomicU32::new(0),
        lose_parent_claims: std::sync::atomic::AtomicU32::new(0),
        claim_delay: Duration::from_millis(400),
    });
    let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
    // Keeps the executor's set of running executions non-empty, so it looks for requests.
    let busy = blocking_task("cancelEarlyBusy", Arc::clone(&runs));
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (seen, began) = (Arc::clone(&stopped), Arc::clone(&started));
    let target = TaskDefinition::new("cancelEarlyTarget", move |ctx, ()| {
        let (seen, began) = (Arc::clone(&seen), Arc::clone(&began));
        async move {
            began.store(true, std::sync::atomic::Ordering::SeqCst);
            // Watched from a task of its own: the executor drops the run once it cancels it.
            let cancelled = ctx.cancellation.clone();
            tokio::spawn(async move {
                cancelled.cancelled().await;
                seen.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<_, TaskError>(())
        }
    });
    let executor = Executor::new(Arc::clone(&slow), fast_options());
    executor.register(&busy)?;
    executor.register(&target)?;
    executor.start();
    let busy_handle = executor.enqueue(&busy, &()).await?;
    until_status(&busy_handle, TaskExecutionStatus::Running).await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while executor.running_count() == 0 {
        check!(Instant::now() < deadline, "the busy task never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let handle = executor.enqueue(&target, &()).await?;
    // Cancel as soon as the claim took it, while its reply is still delayed.
    until_status(&handle, TaskExecutionStatus::Running).await?;
    check!(handle.cancel().await?, "cancel reported no change");
    // Told, or (on a busy machine) stopped before its body was first polled: either way the
    // run does not go on. A run that began and was never told is the failure.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !stopped.load(std::sync::atomic::Ordering::SeqCst) {
        if Instant::now() >= deadline {
            check!(
                !started.load(std::sync::atomic::Ordering::SeqCst),
                "the run was never told it was cancelled"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    busy_handle.cancel().await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while executor.running_count() > 0 {
        check!(Instant::now() < deadline, "the busy run was not cancelled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    executor.shutdown().await;
    Ok(())
}

/// With a retention, an executor deletes finished executions once they are older than their
/// status's age, and keeps the others; [`Executor::prune`] does the same on demand.
///
/// # Errors
///
/// The first expectation that does not hold.
pub async fn retention_deletes_old_finished_executions(
    storage: Arc<dyn TaskExecutionStorage>,
) -> CaseResult {
    let echo = TaskDefinition::new("retained", |_ctx, ok: bool| async move {
        if ok {
            Ok(ok)
        } else {
            Err(TaskError::fatal("no"))
        }
    });
    let executor = Executor::new(
        Arc::clone(&storage),
        ExecutorOptions {
            retention: Some(crate::task::Retention {
                completed: Some(Duration::ZERO),
                failed: None,
                cancelled: None,
                batch_size: 2,
                interval: Duration::from_millis(50),
            }),
            ..fast_options()
        },
    );
    executor.register(&echo)?;
    executor.start();
    let mut handles = Vec::new();
    for ok in [true, true, true, true, true, false] {
        handles.push(executor.enqueue(&echo, &ok).await?);
    }
    let failed = handles.pop().ok_or("no handle")?;
    check!(
        wait(&failed).await?.status() == TaskExecutionStatus::Failed,
        "the failing task did not fail"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while count_executions(&storage).await? > 1 {
        check!(
            Instant::now() < deadline,
            "{} executions left, expected the failed one only",
            count_executions(&storage).await?
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check!(
        failed.get().await?.status == TaskExecutionStatus::Failed,
        "the failed execution was pruned"
    );
    executor.shutdown().await;
    // On demand, with the failed age.
    let pruned = executor
        .prune(&crate::task::Retention {
            completed: None,
            failed: Some(Duration::ZERO),
            cancelled: None,
            batch_size: 10,
            interval: Duration::from_secs(60),
        })
        .await?;
    check!(pruned == 1, "pruned {pruned}");
    check!(count_executions(&storage).await? == 0, "executions left");
    Ok(())
}

/// How many executions `storage` holds.
async fn count_executions(storage: &Arc<dyn TaskExecutionStorage>) -> CaseResult<usize> {
    Ok(storage
        .get_task_executions(&crate::task::TaskExecutionFilter::default())
        .await?
        .len())
}

/// Executions enqueued with a delay or a run-at time wait `ready` with their `start_at` in the
/// future (listed by `starts_after`) and start no earlier; both options at once are refused.
///
/// # Errors
///
/// The first expectation that does not hold.
pub async fn delayed_enqueue_runs_at_its_time(
    storage: Arc<dyn TaskExecutionStorage>,
) -> CaseResult {
    let task = TaskDefinition::new(
        "delayed",
        |_ctx, n: u32| async move { Ok::<_, TaskError>(n) },
    );
    let executor = start_with(&storage, |e| e.register(&task))?;
    let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
    let by_delay = executor
        .enqueue_with(
            &task,
            &1,
            &EnqueueOptions::delay(Duration::from_millis(600)),
        )
        .await?;
    let by_time = executor
        .enqueue_with(&task, &2, &EnqueueOptions::run_at(now + 700))
        .await?;
    let in_the_past = executor
        .enqueue_with(&task, &3, &EnqueueOptions::run_at(now - 60_000))
        .await?;
    let both = executor
        .enqueue_with(
            &task,
            &4,
            &EnqueueOptions {
                delay: Some(Duration::from_millis(1)),
                run_at: Some(now),
            },
        )
        .await;
    check!(
        matches!(both, Err(Error::InvalidArgument { .. })),
        "delay and run-at together: {both:?}"
    );
    let e = by_delay.get().await?;
    check!(
        e.status == TaskExecutionStatus::Ready && e.start_at == e.created_at + 600,
        "delayed execution as stored: {:?} start {} created {}",
        e.status,
        e.start_at,
        e.created_at
    );
    let pending = storage
        .get_task_executions(&TaskExecutionFilter {
            statuses: Some(vec![TaskExecutionStatus::Ready]),
            starts_after: Some(crate::clock::Clock::now_ms(&crate::clock::SystemClock)),
            ..TaskExecutionFilter::default()
        })
        .await?;
    check!(
        pending
            .iter()
            .any(|p| p.execution_id == by_delay.execution_id())
            && pending
                .iter()
                .any(|p| p.execution_id == by_time.execution_id()),
        "delayed executions not listed as pending: {:?}",
        pending.iter().map(|p| &p.execution_id).collect::<Vec<_>>()
    );
    let past = wait(&in_the_past).await?;
    let delayed = wait(&by_delay).await?;
    let e = &delayed.execution;
    let waited = e.started_at.unwrap_or_default() - e.created_at;
    check!(
        delayed.status() == TaskExecutionStatus::Completed && waited >= 600,
        "started {waited} ms after enqueue, before its 600 ms delay ({:?})",
        delayed.status()
    );
    let timed = wait(&by_time).await?;
    let e = &timed.execution;
    check!(
        timed.status() == TaskExecutionStatus::Completed
            && e.start_at == now + 700
            && e.started_at.unwrap_or_default() >= now + 700,
        "run at {} started at {:?} (start_at {}, {:?})",
        now + 700,
        e.started_at,
        e.start_at,
        timed.status()
    );
    executor.shutdown().await;
    check!(
        past.status() == TaskExecutionStatus::Completed && past.output == Some(3),
        "a run-at time in the past: {:?}",
        past.status()
    );
    Ok(())
}

/// The sleeping child of a parent waits (holding no executor slot) until woken by its key;
/// the wake's output reaches the parent's finalize; a second wake answers `AlreadyFinished`,
/// an unknown key `NotFound`.
///
/// # Errors
///
/// The first expectation that does not hold.
pub async fn sleeping_child_woken_by_key_lets_its_parent_finish(
    storage: Arc<dyn TaskExecutionStorage>,
) -> CaseResult {
    let webhook =
        TaskDefinition::<String, u64>::sleeping("paymentWebhook").timeout(Duration::from_secs(60));
    let total = TaskDefinition::new(
        "paymentTotal",
        |_ctx, input: FinalizeInput<u64>| async move {
            let paid = input
                .children
                .first()
                .map(|c| c.output_as::<u64>())
                .transpose()?
                .unwrap_or_default();
            Ok::<_, TaskError>(input.output + paid)
        },
    );
    let child = webhook.clone();
    let order = TaskDefinition::parent("order", move |_ctx, key: String| {
        let webhook = child.clone();
        async move { Ok(ParentOutcome::new(1_u64).child(&webhook, &key)) }
    })
    .finalize(&total);
    let executor = start_with(&storage, |e| e.register(&order))?;
    let key = format!("payment-{}", fastrand::u64(..));
    let handle = executor.enqueue(&order, &key).await?;
    until_status(&handle, TaskExecutionStatus::WaitingForChildren).await?;
    let sleeping = sleeper_of(&storage, &key).await?;
    // The parent's run lets go of its slot a moment after its result is written.
    let deadline = Instant::now() + Duration::from_secs(5);
    while executor.running_count() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check!(
        executor.running_count() == 0,
        "a sleeper holds an executor slot"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let e = storage
        .get_task_execution(&sleeping)
        .await?
        .ok_or("sleeper vanished")?;
    check!(
        e.status == TaskExecutionStatus::Sleeping,
        "sleeper {:?}",
        e.status
    );
    let woken = executor.wake(&key, &41_u64).await?;
    check!(woken.is_woken(), "first wake: {woken:?}");
    let done = wait(&handle).await?;
    let again = executor.wake(&key, &0_u64).await?;
    let unknown = executor.wake("no-such-key", &0_u64).await;
    executor.shutdown().await;
    check!(
        done.status() == TaskExecutionStatus::Completed && done.output == Some(42),
        "parent {:?} {:?} {:?}",
        done.status(),
        done.output,
        done.error()
    );
    check!(
        matches!(&again, WakeResult::AlreadyFinished(a) if a.status == TaskExecutionStatus::Completed && a.output.as_deref() == Some("41")),
        "second wake: {again:?}"
    );
    check!(
        matches!(unknown, Err(Error::NotFound { .. })),
        "unknown key: {unknown:?}"
    );
    Ok(())
}

/// The id of the execution sleeping under `key`, once it exists (at most 30 s).
async fn sleeper_of(storage: &Arc<dyn TaskExecutionStorage>, key: &str) -> CaseResult<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = storage
            .get_task_executions(&TaskExecutionFilter {
                wake_key: Some(key.to_owned()),
                ..TaskExecutionFilter::default()
            })
            .await?;
        if let Some(e) = found.into_iter().next() {
            return Ok(e.execution_id);
        }
        check!(Instant::now() < deadline, "no execution sleeps under {key}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A sleeping task not woken within its timeout ends `timed_out`, and so does its parent's
/// child: the parent fails.
///
/// # Errors
///
/// The first expectation that does not hold.
pub async fn sleeping_task_times_out_when_not_woken(
    storage: Arc<dyn TaskExecutionStorage>,
) -> CaseResult {
    let webhook =
        TaskDefinition::<String, ()>::sleeping("neverCalled").timeout(Duration::from_millis(300));
    let child = webhook.clone();
    let parent = TaskDefinition::parent("waitsInVain", move |_ctx, key: String| {
        let webhook = child.clone();
        async move { Ok(ParentOutcome::new(()).child(&webhook, &key)) }
    })
    .without_finalize();
    let executor = start_with(&storage, |e| {
        e.register(&webhook)?;
        e.register(&parent)
    })?;
    let alone = executor
        .enqueue(&webhook, &format!("alone-{}", fastrand::u64(..)))
        .await?;
    let waiting = executor
        .enqueue(&parent, &format!("child-{}", fastrand::u64(..)))
        .await?;
    let (alone, waiting) = (wait(&alone).await?, wait(&waiting).await?);
    executor.shutdown().await;
    check!(
        alone.status() == TaskExecutionStatus::TimedOut
            && alone.execution.finished_at.unwrap_or_default() - alone.execution.created_at >= 300,
        "sleeper alone: {:?} {:?}",
        alone.status(),
        alone.error()
    );
    check!(
        waiting.status() == TaskExecutionStatus::ChildrenFailed,
        "parent of a timed out sleeper: {:?}",
        waiting.status()
    );
    Ok(())
}

/// A wait survives its executors: the one that spawned the sleeper shuts down, another one
/// started later on the same storage wakes it, and the parent finishes there.
///
/// # Errors
///
/// The first expectation that does not hold.
pub async fn sleeping_wait_survives_executor_restart(
    storage: Arc<dyn TaskExecutionStorage>,
) -> CaseResult {
    let approval =
        TaskDefinition::<String, String>::sleeping("approval").timeout(Duration::from_secs(60));
    let child = approval.clone();
    let request = TaskDefinition::parent("request", move |_ctx, key: String| {
        let approval = child.clone();
        async move { Ok(ParentOutcome::new(()).child(&approval, &key)) }
    })
    .without_finalize();
    let key = format!("approval-{}", fastrand::u64(..));
    let first = start_with(&storage, |e| e.register(&request))?;
    let handle = first.enqueue(&request, &key).await?;
    until_status(&handle, TaskExecutionStatus::WaitingForChildren).await?;
    sleeper_of(&storage, &key).await?;
    first.shutdown().await;
    drop(first);
    let second = start_with(&storage, |e| e.register(&request))?;
    let woken = second.wake(&key, &"approved".to_owned()).await?;
    check!(woken.is_woken(), "wake after restart: {woken:?}");
    let done = wait(&second.handle::<ParentTaskOutput<()>>(handle.execution_id())).await?;
    second.shutdown().await;
    check!(
        done.status() == TaskExecutionStatus::Completed,
        "parent {:?} {:?}",
        done.status(),
        done.error()
    );
    let output = done.output.ok_or("no output")?;
    check!(
        output.children.len() == 1 && output.children[0].output == "approved",
        "children outputs {:?}",
        output.children
    );
    Ok(())
}

/// The ticks (epoch ms) of the executions `schedule_id` enqueued, in order.
async fn ticks_of(
    storage: &Arc<dyn TaskExecutionStorage>,
    schedule_id: &str,
) -> CaseResult<Vec<(i64, TaskExecution)>> {
    let prefix = format!("sch_{schedule_id}_");
    let mut ticks = Vec::new();
    for e in storage
        .get_task_executions(&TaskExecutionFilter::default())
        .await?
    {
        if let Some(tick) = e.execution_id.strip_prefix(&prefix) {
            ticks.push((tick.parse::<i64>()?, e));
        }
    }
    ticks.sort_by_key(|(tick, _)| *tick);
    Ok(ticks)
}

/// Three executors saving and serving the same interval schedule enqueue every tick exactly
/// once: consecutive ticks, none missing, none twice, each run once.
///
/// # Errors
///
/// The first expectation that does not hold.
pub async fn many_executors_enqueue_each_tick_once(
    storage: Arc<dyn TaskExecutionStorage>,
) -> CaseResult {
    use std::sync::atomic::{AtomicUsize, Ordering};
    const EVERY: i64 = 150;
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&runs);
    let tick = TaskDefinition::new("tick", move |_ctx, ()| {
        let counter = Arc::clone(&counter);
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok::<_, TaskError>(())
        }
    });
    let every = Schedule::interval("heartbeat", Duration::from_millis(150))
        .missed_ticks(MissedTicks::CatchUp);
    let mut executors = Vec::new();
    for _ in 0..3 {
        let executor = Executor::new(Arc::clone(&storage), fast_options());
        // Every executor saves the schedule at its start; the first save wins, the others keep it.
        executor.schedule(&tick, &(), &every).await?;
        executor.start();
        executors.push(executor);
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    check!(executors[0].unschedule("heartbeat").await?, "unschedule");
    // A firing read before the delete may still land; then let every tick's run finish.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while ticks_of(&storage, "heartbeat")
        .await?
        .iter()
        .any(|(_, e)| !e.is_finished)
    {
        check!(Instant::now() < deadline, "the ticks' runs never finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for executor in &executors {
        executor.shutdown().await;
    }
    let ticks = ticks_of(&storage, "heartbeat").await?;
    check!(ticks.len() >= 5, "only {} ticks in 1.5 s", ticks.len());
    for pair in ticks.windows(2) {
        check!(
            pair[1].0 - pair[0].0 == EVERY,
            "ticks {} and {} are not one interval apart",
            pair[0].0,
            pair[1].0
        );
    }
    check!(
        ticks
            .iter()
            .all(|(_, e)| e.status == TaskExecutionStatus::Completed),
        "not every tick completed"
    );
    check!(
        runs.load(Ordering::SeqCst) == ticks.len(),
        "{} runs for {} ticks",
        runs.load(Ordering::SeqCst),
        ticks.len()
    );
    Ok(())
}

/// Ticks missed while no executor ran: a `Skip` schedule enqueues only the latest, a
/// `CatchUp` one every missed tick.
///
/// # Errors
///
/// The first expectation that does not hold.
pub async fn missed_ticks_follow_the_schedule_policy(
    storage: Arc<dyn TaskExecutionStorage>,
) -> CaseResult {
    let t0 = 1_800_000_000_000;
    let clock = Arc::new(ManualClock::new(t0));
    let task = TaskDefinition::new("report", |_ctx, ()| async move { Ok::<_, TaskError>(()) });
    let options = || {
        let clock: Arc<dyn crate::clock::Clock> = clock.clone();
        ExecutorOptions {
            clock,
            ..fast_options()
        }
    };
    let second = Duration::from_secs(1);
    let before = Executor::new(Arc::clone(&storage), options());
    before
        .schedule(&task, &(), &Schedule::interval("skipping", second))
        .await?;
    before
        .schedule(
            &task,
            &(),
            &Schedule::interval("catching-up", second).missed_ticks(MissedTicks::CatchUp),
        )
        .await?;
    // Down for 5.5 s: ticks at +1 s .. +5 s were missed.
    clock.advance(Duration::from_millis(5_500));
    let after = Executor::new(Arc::clone(&storage), options());
    after.register(&task)?;
    after.start();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (skipped, caught_up) = (
            ticks_of(&storage, "skipping").await?,
            ticks_of(&storage, "catching-up").await?,
        );
        if !skipped.is_empty() && caught_up.len() >= 5 {
            break;
        }
        check!(Instant::now() < deadline, "the missed ticks never fired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Give a wrong extra firing the time to show.
    tokio::time::sleep(Duration::from_millis(300)).await;
    after.shutdown().await;
    let skipped: Vec<i64> = ticks_of(&storage, "skipping")
        .await?
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    let caught_up: Vec<i64> = ticks_of(&storage, "catching-up")
        .await?
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    check!(skipped == vec![t0 + 5_000], "skip enqueued {skipped:?}");
    check!(
        caught_up == (1..=5).map(|k| t0 + k * 1_000).collect::<Vec<_>>(),
        "catch-up enqueued {caught_up:?}"
    );
    let stored = storage.get_task_schedules().await?;
    check!(
        stored.iter().all(|s| s.next_tick_at == Some(t0 + 6_000)),
        "next ticks {:?}",
        stored.iter().map(|s| s.next_tick_at).collect::<Vec<_>>()
    );
    Ok(())
}

/// A bounded cron expression (`0 0 0 1 1 * 2027`) enqueues its last tick once, then ends:
/// `next_tick_at` becomes `None`, no later poll fails or fires again, and an executor that saves
/// the same schedule at a later start leaves it ended.
///
/// # Errors
///
/// The first expectation that does not hold.
pub async fn bounded_cron_fires_its_last_tick_and_ends(
    storage: Arc<dyn TaskExecutionStorage>,
) -> CaseResult {
    // 2026-12-31 23:59:59 UTC, one second before the only tick.
    let before = 1_798_761_599_000;
    let last = before + 1_000;
    let clock = Arc::new(ManualClock::new(before));
    let task = TaskDefinition::new("newYear", |_ctx, ()| async move { Ok::<_, TaskError>(()) });
    let options = || {
        let clock: Arc<dyn crate::clock::Clock> = clock.clone();
        ExecutorOptions {
            clock,
            ..fast_options()
        }
    };
    let bounded = Schedule::cron("new-year-2027", "0 0 0 1 1 * 2027");
    let executor = Executor::new(Arc::clone(&storage), options());
    let saved = executor.schedule(&task, &(), &bounded).await?;
    check_eq!(saved.next_tick_at, Some(last));
    executor.start();
    clock.advance(Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ended = storage
            .get_task_schedules()
            .await?
            .into_iter()
            .any(|s| s.schedule_id == "new-year-2027" && s.next_tick_at.is_none());
        if ended && !ticks_of(&storage, "new-year-2027").await?.is_empty() {
            break;
        }
        check!(Instant::now() < deadline, "the last tick never fired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Later polls, a year on, neither fail nor fire again.
    clock.advance(Duration::from_secs(366 * 86_400));
    tokio::time::sleep(Duration::from_millis(300)).await;
    executor.shutdown().await;
    let ticks = ticks_of(&storage, "new-year-2027").await?;
    check_eq!(
        ticks.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
        vec![last]
    );
    let stored = storage
        .get_task_schedules()
        .await?
        .into_iter()
        .find(|s| s.schedule_id == "new-year-2027")
        .ok_or_else(|| CaseFailure::new("the schedule vanished".to_owned()))?;
    check_eq!(stored.next_tick_at, None);
    check_eq!(stored.last_tick_at, Some(last));
    // Saved again at a later start, it stays ended; saved new with no tick left, it is ended.
    let again = Executor::new(Arc::clone(&storage), options());
    check_eq!(
        again.schedule(&task, &(), &bounded).await?.next_tick_at,
        None
    );
    let past = again
        .schedule(
            &task,
            &(),
            &Schedule::cron("new-year-2020", "0 0 0 1 1 * 2020"),
        )
        .await?;
    check_eq!(past.next_tick_at, None);
    check_eq!(past.last_tick_at, None);
    Ok(())
}

/// A schedule with a bad cron expression or time zone is refused when saved.
///
/// # Errors
///
/// The first expectation that does not hold.
pub async fn bad_schedules_are_refused(storage: Arc<dyn TaskExecutionStorage>) -> CaseResult {
    let task = TaskDefinition::new("cronTask", |_ctx, ()| async move { Ok::<_, TaskError>(()) });
    let executor = Executor::new(Arc::clone(&storage), fast_options());
    for schedule in [
        Schedule::cron("bad-expression", "61 * * * *"),
        Schedule::cron("bad-zone", "0 3 * * *").time_zone("Atlantis/Capital"),
        Schedule::interval("zero", Duration::ZERO),
    ] {
        let result = executor.schedule(&task, &(), &schedule).await;
        check!(
            matches!(result, Err(Error::InvalidArgument { .. })),
            "{schedule:?}: {result:?}"
        );
    }
    let stored = executor
        .schedule(
            &task,
            &(),
            &Schedule::cron("nightly", "0 3 * * *").time_zone("Europe/Zurich"),
        )
        .await?;
    check!(
        stored.next_tick_at > Some(crate::clock::Clock::now_ms(&crate::clock::SystemClock)),
        "next tick {:?}",
        stored.next_tick_at
    );
    Ok(())
}

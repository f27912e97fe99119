//! Crash recovery with real processes: an executor in a child process is killed with SIGKILL
//! while it runs a task, and another executor takes the task over once the lease lapsed; and a
//! sleeping execution outlives the killed executor that spawned it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use sea_orm_durable::task::storage::{
    TaskExecutionGuard, TaskExecutionStorage, TaskExecutionUpdate,
};
use sea_orm_durable::task::{
    ParentTaskOutput, RetryOptions, TaskExecutionFilter, TaskExecutionStatus, WaitOptions,
};
use sea_orm_durable::{
    Executor, ExecutorOptions, ParentOutcome, SeaOrmTaskExecutionStorage, TaskDefinition, TaskError,
};

use crate::harness::{TestDb, child_db, per_backend, spawn_child};

per_backend!(
    killed_executor_task_is_rerun_and_its_token_refused,
    sleeping_child_outlives_its_killed_executor,
);

const DOOMED: &str = "doomed-executor";

/// The task both executors run: the first attempt hangs (its process is killed meanwhile),
/// later attempts return their attempt number.
fn crashable() -> TaskDefinition<(), u32> {
    TaskDefinition::new("crashable", |ctx, ()| async move {
        if ctx.attempt == 0 {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        Ok::<_, TaskError>(ctx.attempt)
    })
    .timeout(Duration::from_secs(3))
    .retry(RetryOptions {
        max_attempts: 2,
        ..RetryOptions::default()
    })
}

fn options(executor_id: Option<&str>) -> ExecutorOptions {
    ExecutorOptions {
        executor_id: executor_id.map(str::to_owned),
        poll_interval: Duration::from_millis(20),
        expire_interval: Duration::from_millis(100),
        lease_margin: Duration::from_millis(500),
        ..ExecutorOptions::default()
    }
}

/// The child process: an executor that runs until it is killed. Only the crash test starts it
/// (as `<test binary> crash::child_executor --exact --ignored`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "entry point of the crash test's child process"]
async fn child_executor() -> anyhow::Result<()> {
    let db = child_db(4).await?;
    let executor = Executor::new(
        Arc::new(SeaOrmTaskExecutionStorage::new(db)),
        options(Some(DOOMED)),
    );
    executor.register(&crashable())?;
    executor.start();
    tokio::time::sleep(Duration::from_secs(120)).await;
    bail!("the child executor was not killed")
}

async fn killed_executor_task_is_rerun_and_its_token_refused(t: TestDb) -> anyhow::Result<()> {
    let storage: Arc<dyn TaskExecutionStorage> =
        Arc::new(SeaOrmTaskExecutionStorage::new(t.db.clone()));
    // Enqueue through an executor that is not started: only the child can claim it at first.
    let task = crashable();
    let enqueuer = Executor::new(Arc::clone(&storage), options(None));
    let handle = enqueuer.enqueue(&task, &()).await?;

    let mut child = spawn_child(&t, "crash::child_executor")?;

    // Wait until the child runs the task, and remember the token of its claim.
    let deadline = Instant::now() + Duration::from_secs(60);
    let claimed = loop {
        let e = handle.get().await?;
        if e.status == TaskExecutionStatus::Running && e.executor_id.as_deref() == Some(DOOMED) {
            break e;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the child never claimed the task: {:?}", e.status);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    child.kill()?; // SIGKILL
    child.wait()?;

    // A second executor recovers the execution after the lease and runs it again.
    let survivor = Executor::new(Arc::clone(&storage), options(None));
    survivor.register(&task)?;
    survivor.start();
    let wait = WaitOptions {
        poll_interval: Duration::from_millis(50),
        timeout: Some(Duration::from_secs(60)),
    };
    let done = handle.wait_with(&wait).await;
    survivor.shutdown().await;
    let done = done?;
    ensure!(
        done.status() == TaskExecutionStatus::Completed,
        "status {:?}, error {:?}",
        done.status(),
        done.error()
    );
    ensure!(
        done.execution.retry_attempts == 1,
        "the crash was not counted: {} retries",
        done.execution.retry_attempts
    );
    ensure!(done.output == Some(1), "output {:?}", done.output);
    ensure!(
        done.execution.fencing_token > claimed.fencing_token,
        "fencing token did not move"
    );

    // A late write carrying the dead executor's fencing token is refused.
    let zombie = TaskExecutionGuard::id(claimed.execution_id.clone())
        .status(TaskExecutionStatus::Running)
        .fencing_token(claimed.fencing_token);
    let late = TaskExecutionUpdate {
        now: claimed.updated_at + 1,
        status: Some(TaskExecutionStatus::Completed),
        output: Some("\"zombie\"".to_owned()),
        ..Default::default()
    };
    ensure!(
        storage.update_task_executions(&zombie, &late).await? == 0,
        "the dead executor's write matched"
    );
    let stale_token_only =
        TaskExecutionGuard::id(claimed.execution_id.clone()).fencing_token(claimed.fencing_token);
    ensure!(
        storage
            .update_task_executions(&stale_token_only, &late)
            .await?
            == 0,
        "a stale token matched"
    );
    let after = handle.get().await?;
    ensure!(
        after.output.as_deref() == Some("1"),
        "output overwritten: {:?}",
        after.output
    );
    Ok(())
}

/// A parent whose only child sleeps until an approval arrives under the key it was given.
fn awaits_approval() -> TaskDefinition<String, ParentTaskOutput<()>> {
    let approval =
        TaskDefinition::<String, String>::sleeping("approval").timeout(Duration::from_secs(120));
    TaskDefinition::parent("awaitsApproval", move |_ctx, key: String| {
        let approval = approval.clone();
        async move { Ok(ParentOutcome::new(()).child(&approval, &key)) }
    })
    .without_finalize()
}

/// The child process of the sleeping test: an executor that spawns the sleeper and is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "entry point of the sleeping crash test's child process"]
async fn child_sleeping_executor() -> anyhow::Result<()> {
    let db = child_db(4).await?;
    let executor = Executor::new(
        Arc::new(SeaOrmTaskExecutionStorage::new(db)),
        options(Some(DOOMED)),
    );
    executor.register(&awaits_approval())?;
    executor.start();
    tokio::time::sleep(Duration::from_secs(120)).await;
    bail!("the child executor was not killed")
}

async fn sleeping_child_outlives_its_killed_executor(t: TestDb) -> anyhow::Result<()> {
    let storage: Arc<dyn TaskExecutionStorage> =
        Arc::new(SeaOrmTaskExecutionStorage::new(t.db.clone()));
    let task = awaits_approval();
    let enqueuer = Executor::new(Arc::clone(&storage), options(None));
    let key = format!("approval-{}", fastrand::u64(..));
    let handle = enqueuer.enqueue(&task, &key).await?;

    let mut child = spawn_child(&t, "crash::child_sleeping_executor")?;
    // Wait until the child's run spawned the sleeper, then kill it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sleepers = storage
            .get_task_executions(&TaskExecutionFilter {
                wake_key: Some(key.clone()),
                ..TaskExecutionFilter::default()
            })
            .await?;
        if sleepers
            .first()
            .is_some_and(|s| s.status == TaskExecutionStatus::Sleeping)
        {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the child never spawned the sleeper");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill()?; // SIGKILL
    child.wait()?;

    // Another process (here: this one) wakes the sleeper; a new executor finishes the parent.
    let survivor = Executor::new(Arc::clone(&storage), options(None));
    survivor.register(&task)?;
    survivor.start();
    let woken = survivor.wake(&key, &"approved".to_owned()).await?;
    ensure!(woken.is_woken(), "{woken:?}");
    let wait = WaitOptions {
        poll_interval: Duration::from_millis(50),
        timeout: Some(Duration::from_secs(60)),
    };
    let done = handle.wait_with(&wait).await;
    survivor.shutdown().await;
    let done = done?;
    ensure!(
        done.status() == TaskExecutionStatus::Completed,
        "status {:?}, error {:?}",
        done.status(),
        done.error()
    );
    let output = done.output.ok_or_else(|| anyhow::anyhow!("no output"))?;
    ensure!(
        output.children.len() == 1 && output.children[0].output == "approved",
        "{:?}",
        output.children
    );
    Ok(())
}

//! Writes whose reply is lost after they took effect, on every backend: on PostgreSQL and
//! MariaDB behind the proxy (the connection breaks after the server ran the statement, commit
//! included, and the store retries), and on SQLite and in memory behind the testkit's
//! [`LoseReplies`] (the caller gets the retryable error and repeats the call). Either way the
//! write must answer its true outcome: the conflict, refusal, `false` or uncounted result of
//! a repeat that finds its own first attempt is the defect these tests catch.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use sea_orm_durable::batch::store::{DistributedStateStore, StateStore};
use sea_orm_durable::batch::{JobStatus, ProcessError, RecordContext, RequeuedRecords};
use sea_orm_durable::metric;
use sea_orm_durable::task::storage::{
    ClaimParams, NewTaskExecution, TaskExecutionGuard, TaskExecutionStorage, TaskExecutionUpdate,
    Wake, WakeOutcome,
};
use sea_orm_durable::task::{
    ExecutionError, InMemoryTaskExecutionStorage, TaskExecutionFilter, TaskExecutionStatus,
    WaitOptions, WakeResult,
};
use sea_orm_durable::testkit::executor::fast_options;
use sea_orm_durable::testkit::lost_reply::LoseReplies;
use sea_orm_durable::{
    Executor, ExecutorOptions, JobConfig, SeaOrmStateStore, SeaOrmTaskExecutionStorage,
    TaskDefinition, TaskError, WorkerOptions, prepare, run_worker,
};
use serde_json::{Value, json};

use crate::harness::{Backend, TestDb, run};
use crate::metrics::Series;
use crate::proxy::{Proxy, connect_through};

const T0: i64 = 1_700_000_000_000;

fn execution(id: String) -> NewTaskExecution {
    NewTaskExecution {
        execution_id: id,
        task_id: "task".to_owned(),
        timeout: Duration::from_secs(60),
        input: "null".to_owned(),
        ..Default::default()
    }
}

/// How a test loses the reply of the write under test.
enum Loss {
    /// On a server, through a proxy in front of it.
    Proxy(Proxy),
    /// Through the testkit's wrapper (SQLite, memory).
    Wrapper(LoseReplies<Arc<dyn TaskExecutionStorage>>),
}

impl Loss {
    fn lost(&self) -> u32 {
        match self {
            Loss::Proxy(p) => p.lost(),
            Loss::Wrapper(w) => w.lost(),
        }
    }
}

/// The storage under test for `t` (`None`: in memory) and how it loses replies: behind a proxy
/// on a server, behind the wrapper otherwise. Setting up goes through `direct`, which loses
/// nothing.
async fn lossy_storage(
    t: Option<&TestDb>,
) -> anyhow::Result<(
    Arc<dyn TaskExecutionStorage>,
    Arc<dyn TaskExecutionStorage>,
    Loss,
)> {
    match t {
        Some(t) if t.backend != Backend::Sqlite => {
            let (proxy, db) = connect_through(t.backend, &t.url, 2).await?;
            let storage: Arc<dyn TaskExecutionStorage> =
                Arc::new(SeaOrmTaskExecutionStorage::new(db));
            // Opens the pool's connection before anything is armed.
            storage.get_task_execution("warm-up").await?;
            let direct: Arc<dyn TaskExecutionStorage> =
                Arc::new(SeaOrmTaskExecutionStorage::new(t.db.clone()));
            Ok((storage, direct, Loss::Proxy(proxy)))
        }
        _ => {
            let direct: Arc<dyn TaskExecutionStorage> = match t {
                Some(t) => Arc::new(SeaOrmTaskExecutionStorage::new(t.db.clone())),
                None => Arc::new(InMemoryTaskExecutionStorage::new()),
            };
            let wrapper = LoseReplies::new(Arc::clone(&direct));
            let storage: Arc<dyn TaskExecutionStorage> = Arc::new(wrapper.clone());
            Ok((storage, direct, Loss::Wrapper(wrapper)))
        }
    }
}

/// Loses the reply of the next commit (a server), or of the next call of `operation`.
fn lose_commit(loss: &Loss, operation: &str) {
    match loss {
        Loss::Proxy(p) => p.lose_reply_to(b"COMMIT"),
        Loss::Wrapper(w) => w.lose_next(operation),
    }
}

/// Loses the reply of the next statement whose text contains `sql` (a server), or of the next
/// call of `operation`.
fn lose_statement(loss: &Loss, sql: &[u8], operation: &str) {
    match loss {
        Loss::Proxy(p) => p.lose_reply_to(sql),
        Loss::Wrapper(w) => w.lose_next(operation),
    }
}

/// Declares the test `$name` on every backend and in memory, running `$body(Option<TestDb>)`.
macro_rules! everywhere {
    ($($name:ident => $body:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() -> anyhow::Result<()> {
                super::$body(None).await
            })*
        }
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() -> anyhow::Result<()> {
                crate::harness::run(crate::harness::Backend::Sqlite, |t| super::$body(Some(t))).await
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[cfg_attr(durable_no_postgres, ignore = "DATABASE_URL_POSTGRES is not set")]
            async fn $name() -> anyhow::Result<()> {
                crate::harness::run(crate::harness::Backend::Postgres, |t| super::$body(Some(t))).await
            })*
        }
        mod mysql {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[cfg_attr(durable_no_mysql, ignore = "DATABASE_URL_MYSQL is not set")]
            async fn $name() -> anyhow::Result<()> {
                crate::harness::run(crate::harness::Backend::MySql, |t| super::$body(Some(t))).await
            })*
        }
    };
}

everywhere!(
    bulk_enqueue_whose_commit_reply_was_lost_is_not_a_conflict => bulk_enqueue,
    retry_whose_reply_was_lost_answers_the_retried_execution => retry,
    wake_whose_reply_was_lost_answers_woken => wake,
    cancel_whose_reply_was_lost_answers_cancelled => cancel,
    result_whose_reply_was_lost_is_counted_as_the_run_outcome => result,
    executor_enqueue_and_wake_whose_replies_were_lost_succeed => executor_enqueue_and_wake,
);

/// An enqueue of more executions than one statement holds, whose commit reply is lost.
async fn bulk_enqueue(t: Option<TestDb>) -> anyhow::Result<()> {
    const N: usize = 2_500;
    let backend = t.as_ref().map(|t| t.backend);
    let (storage, direct, loss) = lossy_storage(t.as_ref()).await?;
    let executions = || {
        (0..N)
            .map(|i| execution(format!("e{i:05}")))
            .collect::<Vec<_>>()
    };
    lose_commit(&loss, "enqueue_task_executions");
    let first = storage.enqueue_task_executions(executions(), T0).await;
    if matches!(loss, Loss::Wrapper(_)) {
        // The caller sees the lost reply, and repeats the enqueue.
        ensure!(first.as_ref().is_err_and(|e| e.is_retryable()), "{first:?}");
        storage.enqueue_task_executions(executions(), T0).await?;
    } else {
        first.context("the enqueue whose commit reply was lost")?;
    }
    ensure!(loss.lost() == 1, "no reply was lost on {backend:?}");
    let all = direct
        .get_task_executions(&TaskExecutionFilter {
            limit: Some(u64::try_from(N)? + 1),
            ..TaskExecutionFilter::default()
        })
        .await?;
    ensure!(all.len() == N, "{} executions", all.len());
    if let Loss::Proxy(proxy) = &loss {
        // The reply of the second insert is lost: the transaction never committed (its
        // connection broke before the commit), and the store's retry inserts the lot once.
        proxy.lose_reply_to_nth(b"INSERT", 2);
        let more = || {
            (0..N)
                .map(|i| execution(format!("f{i:05}")))
                .collect::<Vec<_>>()
        };
        storage.enqueue_task_executions(more(), T0).await?;
        ensure!(proxy.lost() == 2, "the second insert's reply was not lost");
        let all = direct
            .get_task_executions(&TaskExecutionFilter {
                limit: Some(u64::try_from(3 * N)?),
                ..TaskExecutionFilter::default()
            })
            .await?;
        ensure!(all.len() == 2 * N, "{} executions", all.len());
    }
    Ok(())
}

/// Enqueues `id`, claims it and fails its run through `direct`.
async fn failed(direct: &Arc<dyn TaskExecutionStorage>, id: &str) -> anyhow::Result<()> {
    direct
        .enqueue_task_executions(vec![execution(id.to_owned())], T0)
        .await?;
    let claimed = direct
        .claim_task_executions(&ClaimParams {
            executor_id: "e".to_owned(),
            now: T0,
            limit: 1,
            lease_margin: Duration::from_secs(1),
            ..ClaimParams::default()
        })
        .await?;
    let token = claimed.first().context("not claimed")?.fencing_token;
    let n = direct
        .update_task_executions(
            &TaskExecutionGuard::id(id)
                .status(TaskExecutionStatus::Running)
                .fencing_token(token),
            &TaskExecutionUpdate {
                now: T0 + 1,
                status: Some(TaskExecutionStatus::Failed),
                error: Some(ExecutionError::generic("boom", false)),
                ..Default::default()
            },
        )
        .await?;
    ensure!(n == 1);
    Ok(())
}

/// Repeats `call` once after the wrapper's lost reply (the caller's retry); on a server the
/// store retried by itself and `call` answered at once.
macro_rules! answered {
    ($loss:expr, $call:expr) => {{
        let first = $call.await;
        match (&$loss, first) {
            (Loss::Wrapper(_), Err(e)) if e.is_retryable() => $call.await,
            (_, other) => other,
        }
    }};
}

async fn retry(t: Option<TestDb>) -> anyhow::Result<()> {
    let (storage, direct, loss) = lossy_storage(t.as_ref()).await?;
    failed(&direct, "r").await?;
    lose_commit(&loss, "retry_task_execution");
    let retried = answered!(loss, storage.retry_task_execution("r", T0 + 50))
        .context("the retry whose reply was lost")?;
    ensure!(loss.lost() == 1, "no reply was lost");
    ensure!(
        retried.status == TaskExecutionStatus::Ready && retried.retry_attempts == 1,
        "{retried:?}"
    );
    Ok(())
}

async fn wake(t: Option<TestDb>) -> anyhow::Result<()> {
    let (storage, direct, loss) = lossy_storage(t.as_ref()).await?;
    direct
        .enqueue_task_executions(
            vec![NewTaskExecution {
                wake_key: Some("hook".to_owned()),
                ..execution("s".to_owned())
            }],
            T0,
        )
        .await?;
    let wake = Wake {
        wake_key: "hook".to_owned(),
        outcome: WakeOutcome::Completed {
            output: "\"yes\"".to_owned(),
        },
        now: T0 + 5,
    };
    // The wake reads the sleeper, then updates it: the update's reply is lost.
    lose_statement(&loss, b"UPDATE", "wake_task_execution");
    let woken = answered!(loss, storage.wake_task_execution(&wake))?;
    ensure!(loss.lost() == 1, "no reply was lost");
    ensure!(matches!(woken, WakeResult::Woken(_)), "{woken:?}");
    Ok(())
}

async fn cancel(t: Option<TestDb>) -> anyhow::Result<()> {
    let (storage, direct, loss) = lossy_storage(t.as_ref()).await?;
    direct
        .enqueue_task_executions(vec![execution("c".to_owned())], T0)
        .await?;
    let executor = Executor::new(storage, ExecutorOptions::default());
    // The cancellation is one update.
    lose_statement(&loss, b"UPDATE", "update_task_executions");
    let cancelled = executor.handle::<Value>("c").cancel().await?;
    ensure!(loss.lost() == 1, "no reply was lost");
    ensure!(
        cancelled,
        "the cancellation that took effect answered false"
    );
    let e = direct.get_task_execution("c").await?.context("c")?;
    ensure!(e.status == TaskExecutionStatus::Cancelled, "{:?}", e.status);
    // Another cancellation, later, did not cancel it.
    ensure!(!executor.handle::<Value>("c").cancel().await?);
    Ok(())
}

/// A run completes; the commit of its result loses its reply. The executor recognizes the row
/// as holding its result and counts the run completed.
async fn result(t: Option<TestDb>) -> anyhow::Result<()> {
    let (storage, direct, loss) = lossy_storage(t.as_ref()).await?;
    let series = Series::new("lost-result")?;
    let gate = Arc::new(tokio::sync::Notify::new());
    let task = {
        let gate = Arc::clone(&gate);
        TaskDefinition::new("lrDone", move |_ctx, ()| {
            let gate = Arc::clone(&gate);
            async move {
                gate.notified().await;
                Ok::<_, TaskError>(7_u32)
            }
        })
    };
    // Only the claim and the result write run while the run waits: every other loop's next
    // round is a minute away.
    let executor = Executor::new(
        storage,
        ExecutorOptions {
            metric_labels: series.labels(),
            max_concurrent: 1,
            poll_interval: Duration::from_secs(60),
            expire_interval: Duration::from_secs(60),
            ..fast_options()
        },
    );
    executor.register(&task)?;
    executor.start();
    let handle = executor.enqueue(&task, &()).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while direct
        .get_task_execution(handle.execution_id())
        .await?
        .is_none_or(|e| e.status != TaskExecutionStatus::Running)
    {
        ensure!(tokio::time::Instant::now() < deadline, "never claimed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    lose_commit(&loss, "update_task_executions_many");
    gate.notify_one();
    let finished = handle
        .wait_with(&WaitOptions {
            timeout: Some(Duration::from_secs(20)),
            ..WaitOptions::default()
        })
        .await?;
    ensure!(finished.output == Some(7), "{:?}", finished.execution);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while series.counter(metric::TASK_COMPLETED, &[]) == 0 && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    executor.shutdown().await;
    ensure!(loss.lost() == 1, "no reply was lost");
    let claimed = series.counter(metric::TASK_CLAIMED, &[]);
    let completed = series.counter(metric::TASK_COMPLETED, &[]);
    ensure!(
        claimed == 1 && completed == 1,
        "claimed {claimed}, completed {completed}"
    );
    Ok(())
}

/// `Executor::enqueue` and `Executor::wake` repeat their call when a storage answers a lost
/// reply, and the repeat answers the first attempt's outcome.
async fn executor_enqueue_and_wake(t: Option<TestDb>) -> anyhow::Result<()> {
    let (storage, direct, loss) = lossy_storage(t.as_ref()).await?;
    let executor = Executor::new(storage, ExecutorOptions::default());
    let sleeper = TaskDefinition::<String, String>::sleeping("lrSleeper");
    executor.register(&sleeper)?;
    // One insert, committed by itself: its reply is the one lost.
    lose_statement(&loss, b"INSERT", "enqueue_task_executions");
    let handle = executor.enqueue(&sleeper, &"hook".to_owned()).await?;
    ensure!(loss.lost() == 1, "no enqueue reply was lost");
    let all = direct
        .get_task_executions(&TaskExecutionFilter::default())
        .await?;
    ensure!(
        all.len() == 1 && all[0].execution_id == handle.execution_id(),
        "{all:?}"
    );
    lose_statement(&loss, b"UPDATE", "wake_task_execution");
    let woken = executor.wake("hook", &"hello").await?;
    ensure!(loss.lost() == 2, "no wake reply was lost");
    ensure!(woken.is_woken(), "{woken:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The batch store: a requeue whose commit reply is lost.

mod batch {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[cfg_attr(durable_no_postgres, ignore = "DATABASE_URL_POSTGRES is not set")]
    async fn postgres_requeue_whose_commit_reply_was_lost_answers_what_it_requeued()
    -> anyhow::Result<()> {
        run(Backend::Postgres, requeue).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[cfg_attr(durable_no_mysql, ignore = "DATABASE_URL_MYSQL is not set")]
    async fn mysql_requeue_whose_commit_reply_was_lost_answers_what_it_requeued()
    -> anyhow::Result<()> {
        run(Backend::MySql, requeue).await
    }

    /// A job of 4 records in batches of 2 whose record 1 failed; its requeue's commit reply is
    /// lost, and the store's retry answers what the first attempt requeued.
    async fn requeue(t: TestDb) -> anyhow::Result<()> {
        let direct: Arc<dyn DistributedStateStore> = Arc::new(SeaOrmStateStore::new(t.db.clone()));
        prepare(
            &*direct,
            "rq",
            JobConfig::new(2),
            (0..4).map(|i| json!({ "i": i })),
        )
        .await?;
        let processor = |ctx: RecordContext, _value: Value| async move {
            if ctx.index == 1 {
                return Err(ProcessError::from("record 1 refused"));
            }
            Ok(())
        };
        run_worker(
            Arc::clone(&direct),
            "rq",
            "w",
            processor,
            WorkerOptions::default(),
        )
        .await?;
        let (proxy, db) = connect_through(t.backend, &t.url, 2).await?;
        let store = SeaOrmStateStore::new(db);
        store.get_progress("rq").await?;
        proxy.lose_reply_to(b"COMMIT");
        let done = store.requeue_failed_records("rq").await?;
        ensure!(proxy.lost() == 1, "no reply was lost");
        ensure!(
            done == RequeuedRecords {
                records: 1,
                batches: 1,
                left_failed: 0,
                job_status: JobStatus::Processing,
            },
            "{done:?}"
        );
        Ok(())
    }
}

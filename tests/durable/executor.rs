//! The durable executor end to end, on every storage: the in-memory one and SeaORM on SQLite,
//! PostgreSQL and MySQL/MariaDB.

use std::future::Future;
use std::sync::Arc;

use anyhow::anyhow;
use sea_orm_durable::testkit::TestResult;
use sea_orm_durable::testkit::executor as cases;
use sea_orm_durable::{
    InMemoryTaskExecutionStorage, SeaOrmTaskExecutionStorage, TaskExecutionStorage,
};

use crate::harness::{Backend, run};

/// Runs `case` on a fresh storage: in memory (`None`) or in a fresh database of `backend`.
async fn on_storage<F, Fut, T>(backend: Option<Backend>, case: F) -> anyhow::Result<()>
where
    F: FnOnce(Arc<dyn TaskExecutionStorage>) -> Fut,
    Fut: Future<Output = TestResult<T>>,
    T: std::fmt::Debug,
{
    let report = |label: String, value: T| {
        if std::mem::size_of::<T>() > 0 {
            eprintln!("{label}: {value:?}");
        }
    };
    match backend {
        None => {
            let value = case(Arc::new(InMemoryTaskExecutionStorage::new()))
                .await
                .map_err(|e| anyhow!(e))?;
            report("memory".to_owned(), value);
            Ok(())
        }
        Some(backend) => {
            run(backend, |t| async move {
                let storage = Arc::new(SeaOrmTaskExecutionStorage::new(t.db.clone()));
                let value = case(storage).await.map_err(|e| anyhow!(e))?;
                report(format!("{backend:?}"), value);
                drop(t);
                Ok(())
            })
            .await
        }
    }
}

/// Declares one test per executor case on the storage selected by `$backend`.
macro_rules! executor_cases {
    ($backend:expr) => {
        use super::*;

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn upstream_scenario_one_executor() -> anyhow::Result<()> {
            on_storage($backend, |s| cases::upstream_scenario(s, 1)).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn upstream_scenario_three_executors() -> anyhow::Result<()> {
            on_storage($backend, |s| cases::upstream_scenario(s, 3)).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn cancel_ready_execution() -> anyhow::Result<()> {
            on_storage($backend, cases::cancel_ready_execution).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn cancel_running_execution() -> anyhow::Result<()> {
            on_storage($backend, cases::cancel_running_execution).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn cancel_parent_cancels_children() -> anyhow::Result<()> {
            on_storage($backend, cases::cancel_parent_cancels_children).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn timeout_ends_timed_out_after_retries() -> anyhow::Result<()> {
            on_storage($backend, cases::timeout_ends_timed_out_after_retries).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn shutdown_lets_running_executions_finish() -> anyhow::Result<()> {
            on_storage($backend, cases::shutdown_lets_running_executions_finish).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn panicking_task_fails_its_execution() -> anyhow::Result<()> {
            on_storage($backend, cases::panicking_task_fails_its_execution).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn delays_are_honoured() -> anyhow::Result<()> {
            on_storage($backend, cases::delays_are_honoured).await
        }
    };
}

mod memory {
    executor_cases!(None);
}

mod sqlite {
    executor_cases!(Some(Backend::Sqlite));
}

mod postgres {
    executor_cases!(Some(Backend::Postgres));
}

mod mysql {
    executor_cases!(Some(Backend::MySql));
}

mod outbox {
    use std::time::Duration;

    use anyhow::ensure;
    use sea_orm::TransactionTrait;
    use sea_orm_durable::testkit::executor::fast_options;
    use sea_orm_durable::{Executor, TaskDefinition, TaskError, TaskExecutionStatus};

    use super::*;
    use crate::harness::{TestDb, per_backend};

    per_backend!(enqueue_in_transaction_runs_only_after_commit);

    async fn enqueue_in_transaction_runs_only_after_commit(t: TestDb) -> anyhow::Result<()> {
        let storage = Arc::new(SeaOrmTaskExecutionStorage::new(t.db.clone()));
        let executor = Executor::new(storage, fast_options());
        let double =
            TaskDefinition::new(
                "double",
                |_ctx, n: i64| async move { Ok::<_, TaskError>(n * 2) },
            );
        executor.register(&double)?;
        executor.start();

        let txn = t.db.begin().await?;
        let rolled_back = executor.enqueue_in(&txn, &double, &1).await?;
        txn.rollback().await?;
        let txn = t.db.begin().await?;
        let committed = executor.enqueue_in(&txn, &double, &21).await?;
        // Not visible, so not runnable, before the commit.
        tokio::time::sleep(Duration::from_millis(100)).await;
        ensure!(
            committed.get().await.is_err(),
            "execution visible before commit"
        );
        txn.commit().await?;

        let done = committed.wait().await?;
        ensure!(
            done.status() == TaskExecutionStatus::Completed,
            "status {:?}",
            done.status()
        );
        ensure!(done.output == Some(42), "output {:?}", done.output);
        ensure!(
            rolled_back.get().await.is_err(),
            "rolled back execution exists"
        );
        executor.shutdown().await;
        Ok(())
    }
}

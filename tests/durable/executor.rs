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

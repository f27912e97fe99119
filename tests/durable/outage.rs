//! Work resumes after the database was unreachable for a while (a restart, a failover), with
//! no restart of the application: an executor whose every connection broke, and whose new
//! connections were refused for five seconds, runs what was enqueued meanwhile once the server
//! answers again. On PostgreSQL and MariaDB, behind the proxy. How long resuming took is
//! printed (the README quotes it); the assertion is only that it happens.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::ensure;
use sea_orm_durable::task::storage::TaskExecutionStorage;
use sea_orm_durable::task::{TaskExecutionStatus, WaitOptions};
use sea_orm_durable::{
    Executor, ExecutorOptions, SeaOrmTaskExecutionStorage, TaskDefinition, TaskError,
};

use crate::harness::TestDb;
use crate::proxy::connect_through_with;

/// How long the server stays unreachable.
const OUTAGE: Duration = Duration::from_secs(5);

macro_rules! on_servers {
    ($($name:ident => $acquire:expr),* $(,)?) => {
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[cfg_attr(durable_no_postgres, ignore = "DATABASE_URL_POSTGRES is not set")]
            async fn $name() -> anyhow::Result<()> {
                crate::harness::run(crate::harness::Backend::Postgres, |t| super::resumes(t, $acquire)).await
            })*
        }
        mod mysql {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[cfg_attr(durable_no_mysql, ignore = "DATABASE_URL_MYSQL is not set")]
            async fn $name() -> anyhow::Result<()> {
                crate::harness::run(crate::harness::Backend::MySql, |t| super::resumes(t, $acquire)).await
            })*
        }
    };
}

on_servers!(
    executor_resumes_after_an_outage_with_the_default_acquire_timeout => None,
    executor_resumes_after_an_outage_with_a_short_acquire_timeout => Some(std::time::Duration::from_millis(250)),
);

/// An executor with default options on a pool through the proxy (`acquire`: the pool's
/// acquire timeout, `None` for sqlx's 30 s) runs one task, loses the server for [`OUTAGE`],
/// and runs the task enqueued meanwhile once the server is back.
async fn resumes(t: TestDb, acquire: Option<Duration>) -> anyhow::Result<()> {
    let (proxy, db) = connect_through_with(t.backend, &t.url, 4, |options| {
        // The harness's pools wait sqlx's default 30 s.
        if let Some(acquire) = acquire {
            options.acquire_timeout(acquire);
        }
    })
    .await?;
    let task = TaskDefinition::new("afterOutage", |_ctx, n: u32| async move {
        Ok::<_, TaskError>(n)
    });
    let executor = Executor::new(
        Arc::new(SeaOrmTaskExecutionStorage::new(db)),
        ExecutorOptions::default(),
    );
    executor.register(&task)?;
    executor.start();
    let wait = WaitOptions {
        poll_interval: Duration::from_millis(5),
        timeout: Some(Duration::from_secs(60)),
    };
    let before = executor.enqueue(&task, &1).await?.wait_with(&wait).await?;
    ensure!(
        before.status() == TaskExecutionStatus::Completed,
        "{before:?}"
    );

    proxy.set_reachable(false).await?;
    // Enqueued directly while the executor cannot reach the server.
    let direct = Executor::new(
        Arc::new(SeaOrmTaskExecutionStorage::new(t.db.clone())),
        ExecutorOptions::default(),
    );
    let during = direct.enqueue(&task, &2).await?;
    tokio::time::sleep(OUTAGE).await;
    proxy.set_reachable(true).await?;
    let back = Instant::now();
    let storage = SeaOrmTaskExecutionStorage::new(t.db.clone());
    loop {
        let status = storage
            .get_task_execution(during.execution_id())
            .await?
            .map(|e| e.status);
        if status == Some(TaskExecutionStatus::Completed) {
            break;
        }
        ensure!(
            back.elapsed() < Duration::from_secs(60),
            "not run 60 s after the server came back: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let resumed = back.elapsed();
    executor.shutdown().await;
    eprintln!(
        "{:?}, acquire timeout {:?}: the execution enqueued during a {OUTAGE:?} outage ran {} ms after the server came back",
        t.backend,
        acquire.unwrap_or(Duration::from_secs(30)),
        resumed.as_millis()
    );
    Ok(())
}

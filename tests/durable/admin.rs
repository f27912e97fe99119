//! The admin operations over both ports, on every storage: an execution shown with its parent
//! and children, stats with unserved work, cancel and retry with their refusals, a job's detail.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use sea_orm_durable::admin::Admin;
use sea_orm_durable::batch::InMemoryStateStore;
use sea_orm_durable::batch::store::DistributedStateStore;
use sea_orm_durable::task::storage::TaskExecutionStorage;
use sea_orm_durable::task::{InMemoryTaskExecutionStorage, TaskExecutionStatus};
use sea_orm_durable::testkit::executor::fast_options;
use sea_orm_durable::{
    Error, Executor, JobConfig, ParentOutcome, SeaOrmStateStore, SeaOrmTaskExecutionStorage,
    TaskDefinition, TaskError, prepare,
};

use crate::harness::{TestDb, per_backend};

per_backend!(admin_shows_counts_cancels_and_refuses);

mod memory {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn admin_shows_counts_cancels_and_refuses() -> anyhow::Result<()> {
        super::admin_case(
            std::sync::Arc::new(super::InMemoryTaskExecutionStorage::new()),
            std::sync::Arc::new(super::InMemoryStateStore::new()),
        )
        .await
    }
}

async fn admin_shows_counts_cancels_and_refuses(t: TestDb) -> anyhow::Result<()> {
    admin_case(
        Arc::new(SeaOrmTaskExecutionStorage::new(t.db.clone())),
        Arc::new(SeaOrmStateStore::new(t.db.clone())),
    )
    .await
}

/// A parent spawns two children of a task no executor serves: the parent's detail lists them,
/// a child's names its parent, stats show them waiting; a child is cancelled once and refused
/// the second time; a ready execution is refused a retry; unknown ids are `NotFound`; a prepared
/// job shows its progress and batches.
async fn admin_case(
    tasks: Arc<dyn TaskExecutionStorage>,
    jobs: Arc<dyn DistributedStateStore>,
) -> anyhow::Result<()> {
    let nobody = TaskDefinition::new("aNobody", |_ctx, ()| async move { Ok::<_, TaskError>(()) });
    let parent = TaskDefinition::parent("aParent", move |_ctx, ()| {
        let nobody = nobody.clone();
        async move {
            Ok(ParentOutcome::new(())
                .child(&nobody, &())
                .child(&nobody, &()))
        }
    })
    .without_finalize();
    let executor = Executor::new(Arc::clone(&tasks), fast_options());
    executor.register(&parent)?;
    executor.start();
    let handle = executor.enqueue(&parent, &()).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while handle.get().await?.status != TaskExecutionStatus::WaitingForChildren {
        ensure!(
            Instant::now() < deadline,
            "the parent never spawned its children"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let admin = Admin::new(Arc::clone(&tasks), Arc::clone(&jobs));

    let detail = admin.execution(handle.execution_id()).await?;
    ensure!(
        detail.children_count == 2 && detail.children.len() == 2,
        "{detail:?}"
    );
    ensure!(detail.parent.is_none());
    let child = detail.children[0].execution_id.clone();
    let of_child = admin.execution(&child).await?;
    ensure!(
        of_child.parent.as_ref().map(|p| p.execution_id.as_str()) == Some(handle.execution_id()),
        "{of_child:?}"
    );

    let stats = admin.stats().await?;
    ensure!(stats.count(TaskExecutionStatus::Ready) == 2, "{stats:?}");
    ensure!(
        stats.count(TaskExecutionStatus::WaitingForChildren) == 1,
        "{stats:?}"
    );
    ensure!(stats.total() == 3, "{stats:?}");
    ensure!(
        stats.ready.len() == 1 && stats.ready[0].task_id == "aNobody" && stats.ready[0].count == 2,
        "{stats:?}"
    );
    ensure!(stats.waited(&stats.ready[0]) < Duration::from_secs(60));

    let retried = admin.retry(&child).await;
    ensure!(
        matches!(retried, Err(Error::InvalidState { .. })),
        "{retried:?}"
    );
    let cancelled = admin.cancel(&child).await?;
    ensure!(cancelled.was == TaskExecutionStatus::Ready, "{cancelled:?}");
    ensure!(cancelled.execution.status == TaskExecutionStatus::Cancelled);
    let again = admin.cancel(&child).await;
    ensure!(
        matches!(again, Err(Error::InvalidState { .. })),
        "{again:?}"
    );
    executor.shutdown().await;

    for result in [
        admin.execution("nope").await.map(|_| ()),
        admin.cancel("nope").await.map(|_| ()),
        admin.retry("nope").await.map(|_| ()),
        admin.job("nope", 10).await.map(|_| ()),
    ] {
        match result {
            Err(Error::NotFound { .. }) => {}
            other => bail!("expected NotFound, got {other:?}"),
        }
    }

    prepare(&*jobs, "admin-job", JobConfig::new(2), 0..5u32).await?;
    let job = admin.job("admin-job", 10).await?;
    ensure!(job.progress.total_records == 5, "{job:?}");
    ensure!(
        job.batches.as_ref().map(|b| b.total_batches) == Some(3),
        "{job:?}"
    );
    ensure!(job.failed_records.is_empty());
    ensure!(admin.schedules().await?.is_empty());
    Ok(())
}

//! The task execution storage: the conformance suite on the in-memory storage and on every
//! backend, concurrency on the real servers, and rows the domain cannot read.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, ensure};
use sea_orm::ConnectionTrait;
use sea_orm_durable::testkit::task::{CaseResult, Storage};
use sea_orm_durable::{
    ClaimParams, Error, FinishedChildTaskExecution, NewTaskExecution, ParentRef,
    SeaOrmTaskExecutionStorage, TaskExecutionFilter, TaskExecutionGuard, TaskExecutionStatus,
    TaskExecutionStorage, TaskExecutionUpdate,
};

use crate::harness::{Backend, TestDb, per_backend};

/// Runs one conformance case against a fresh database of `backend`.
async fn run_case<F, Fut>(backend: Backend, case: F) -> anyhow::Result<()>
where
    F: FnOnce(Storage) -> Fut,
    Fut: Future<Output = CaseResult>,
{
    let Some(t) = TestDb::create(backend).await? else {
        return Ok(());
    };
    case(Arc::new(SeaOrmTaskExecutionStorage::new(t.db.clone()))).await?;
    Ok(())
}

async fn on_sqlite<F, Fut>(case: F) -> anyhow::Result<()>
where
    F: FnOnce(Storage) -> Fut,
    Fut: Future<Output = CaseResult>,
{
    run_case(Backend::Sqlite, case).await
}

async fn on_postgres<F, Fut>(case: F) -> anyhow::Result<()>
where
    F: FnOnce(Storage) -> Fut,
    Fut: Future<Output = CaseResult>,
{
    run_case(Backend::Postgres, case).await
}

async fn on_mysql<F, Fut>(case: F) -> anyhow::Result<()>
where
    F: FnOnce(Storage) -> Fut,
    Fut: Future<Output = CaseResult>,
{
    run_case(Backend::MySql, case).await
}

mod conformance {
    mod memory {
        sea_orm_durable::task_storage_conformance!(
            storage: std::sync::Arc::new(sea_orm_durable::InMemoryTaskExecutionStorage::new())
        );
    }
    mod sqlite {
        sea_orm_durable::task_storage_conformance!(runner: crate::task::on_sqlite);
    }
    mod postgres {
        sea_orm_durable::task_storage_conformance!(runner: crate::task::on_postgres);
    }
    mod mysql {
        sea_orm_durable::task_storage_conformance!(runner: crate::task::on_mysql);
    }
}

per_backend!(
    concurrent_claimers_take_each_execution_exactly_once,
    concurrent_finished_children_keep_exact_counts_and_one_parent_claim,
    concurrent_closers_record_every_child_of_a_wide_parent,
    corrupt_rows_are_reported_and_do_not_block_claims,
);

const T0: i64 = 1_700_000_000_000;

fn execution(id: String) -> NewTaskExecution {
    NewTaskExecution {
        execution_id: id,
        task_id: "task".to_owned(),
        timeout_ms: 60_000,
        input: "{}".to_owned(),
        ..Default::default()
    }
}

fn claim(executor: &str, now: i64, limit: u64, lease_margin_ms: i64) -> ClaimParams {
    ClaimParams {
        executor_id: executor.to_owned(),
        now,
        limit,
        lease_margin_ms,
    }
}

async fn concurrent_claimers_take_each_execution_exactly_once(t: TestDb) -> anyhow::Result<()> {
    const EXECUTIONS: usize = 2000;
    // SQLite has one writer at a time; four claimers already contend for it.
    let claimers = if t.backend == Backend::Sqlite { 4 } else { 8 };
    let pool = t.connect(u32::try_from(claimers)?).await?;
    let storage = Arc::new(SeaOrmTaskExecutionStorage::new(pool));
    storage
        .enqueue_task_executions(
            (0..EXECUTIONS)
                .map(|i| execution(format!("e{i:05}")))
                .collect(),
            T0,
        )
        .await?;

    let started = Instant::now();
    let barrier = Arc::new(tokio::sync::Barrier::new(claimers));
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..claimers {
        let (storage, barrier) = (storage.clone(), barrier.clone());
        workers.spawn(async move {
            let executor = format!("w{w}");
            barrier.wait().await;
            let mut mine = Vec::new();
            loop {
                let claimed = storage
                    .claim_task_executions(&claim(&executor, T0, 10, 60_000))
                    .await?;
                if claimed.is_empty() {
                    return anyhow::Ok(mine);
                }
                for e in claimed {
                    ensure!(e.executor_id.as_deref() == Some(executor.as_str()));
                    ensure!(e.status == TaskExecutionStatus::Running && e.fencing_token == 1);
                    mine.push(e.execution_id);
                }
            }
        });
    }
    let mut seen = HashSet::new();
    let mut per_worker = Vec::new();
    while let Some(joined) = workers.join_next().await {
        let mine = joined??;
        per_worker.push(mine.len());
        for id in mine {
            ensure!(seen.insert(id.clone()), "{id} was claimed twice");
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{:?}: {claimers} claimers took {EXECUTIONS} executions in {elapsed:?} (per claimer: {per_worker:?})",
        t.backend
    );
    ensure!(
        seen.len() == EXECUTIONS,
        "claimed {} of {EXECUTIONS}",
        seen.len()
    );
    let left = storage
        .get_task_executions(&TaskExecutionFilter {
            statuses: Some(vec![TaskExecutionStatus::Ready]),
            ..Default::default()
        })
        .await?;
    ensure!(left.is_empty(), "{} executions left ready", left.len());
    Ok(())
}

async fn concurrent_finished_children_keep_exact_counts_and_one_parent_claim(
    t: TestDb,
) -> anyhow::Result<()> {
    const CHILDREN: u32 = 500;
    const RECORDERS: u32 = 20;
    let pool = t.connect(8).await?;
    let storage = Arc::new(SeaOrmTaskExecutionStorage::new(pool));
    storage
        .enqueue_task_executions(vec![execution("parent".to_owned())], T0)
        .await?;
    storage
        .update_task_executions(
            &TaskExecutionGuard::id("parent"),
            &TaskExecutionUpdate {
                now: T0,
                status: Some(TaskExecutionStatus::WaitingForChildren),
                children_count: Some(CHILDREN),
                ..Default::default()
            },
        )
        .await?;
    let record = |index: u32| FinishedChildTaskExecution {
        parent_execution_id: "parent".to_owned(),
        child_execution_id: format!("child-{index:04}"),
        child_task_id: "task".to_owned(),
        index,
        status: TaskExecutionStatus::Completed,
        output: Some(index.to_string()),
        error: None,
        created_at: T0,
    };

    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut recorders = tokio::task::JoinSet::new();
    for r in 0..RECORDERS {
        let storage = storage.clone();
        recorders.spawn(async move {
            // Each recorder writes its share one child at a time, and repeats its first record
            // at the end, as a closer retried after a crash would.
            let mine: Vec<u32> = (0..CHILDREN).filter(|i| i % RECORDERS == r).collect();
            for &i in &mine {
                storage
                    .add_finished_child_task_executions(vec![record(i)])
                    .await?;
            }
            if let Some(&first) = mine.first() {
                storage
                    .add_finished_child_task_executions(vec![record(first)])
                    .await?;
            }
            anyhow::Ok(())
        });
    }
    // Parent processors poll while the children finish; the lease is long enough that only
    // one of them may ever claim the parent.
    let mut processors = tokio::task::JoinSet::new();
    for p in 0..3 {
        let (storage, done) = (storage.clone(), done.clone());
        processors.spawn(async move {
            let mut claims = 0_usize;
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let claimed = storage
                    .claim_parents_with_finished_children(&claim(
                        &format!("p{p}"),
                        T0 + 1,
                        10,
                        3_600_000,
                    ))
                    .await?;
                claims += claimed.len();
                for parent in claimed {
                    ensure!(parent.finished_children_count == CHILDREN);
                }
                if finished {
                    return anyhow::Ok(claims);
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        });
    }
    while let Some(joined) = recorders.join_next().await {
        joined??;
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut claims = 0;
    while let Some(joined) = processors.join_next().await {
        claims += joined??;
    }
    ensure!(claims == 1, "the parent was claimed {claims} times");
    let records = storage.get_finished_child_task_executions("parent").await?;
    ensure!(records.len() == usize::try_from(CHILDREN)?);
    ensure!(
        records.iter().map(|r| r.index).eq(0..CHILDREN),
        "records out of index order"
    );
    let parent = storage
        .get_task_execution("parent")
        .await?
        .context("parent vanished")?;
    ensure!(parent.finished_children_count == CHILDREN);
    ensure!(parent.failed_children_count == 0);
    Ok(())
}

async fn concurrent_closers_record_every_child_of_a_wide_parent(t: TestDb) -> anyhow::Result<()> {
    const CHILDREN: u32 = 500;
    let closers = if t.backend == Backend::Sqlite { 4 } else { 8 };
    let pool = t.connect(u32::try_from(closers)?).await?;
    let storage = Arc::new(SeaOrmTaskExecutionStorage::new(pool));
    storage
        .enqueue_task_executions(vec![execution("parent".to_owned())], T0)
        .await?;
    let children: Vec<NewTaskExecution> = (0..CHILDREN)
        .map(|index| NewTaskExecution {
            parent: Some(ParentRef {
                task_id: "task".to_owned(),
                execution_id: "parent".to_owned(),
                index,
                is_finalize: false,
            }),
            ..execution(format!("child-{index:04}"))
        })
        .collect();
    let child_ids: Vec<String> = children.iter().map(|c| c.execution_id.clone()).collect();
    let spawned = storage
        .update_task_execution_and_enqueue(
            &TaskExecutionGuard::id("parent").status(TaskExecutionStatus::Ready),
            &TaskExecutionUpdate {
                now: T0,
                status: Some(TaskExecutionStatus::WaitingForChildren),
                children_count: Some(CHILDREN),
                ..Default::default()
            },
            children,
        )
        .await?;
    ensure!(spawned);
    // Every child completes except one, which fails.
    storage
        .update_task_executions(
            &TaskExecutionGuard {
                execution_ids: child_ids[1..].to_vec(),
                ..Default::default()
            },
            &TaskExecutionUpdate {
                now: T0 + 1,
                status: Some(TaskExecutionStatus::Completed),
                output: Some("ok".to_owned()),
                ..Default::default()
            },
        )
        .await?;
    storage
        .update_task_executions(
            &TaskExecutionGuard::id(child_ids[0].clone()),
            &TaskExecutionUpdate {
                now: T0 + 1,
                status: Some(TaskExecutionStatus::Failed),
                ..Default::default()
            },
        )
        .await?;

    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..closers {
        let storage = storage.clone();
        workers.spawn(async move {
            let mut closed = 0;
            loop {
                let n = storage.close_finished_task_executions(T0 + 2, 10).await?;
                if n == 0 {
                    return anyhow::Ok(closed);
                }
                closed += n;
            }
        });
    }
    let mut closed = 0;
    while let Some(joined) = workers.join_next().await {
        closed += joined??;
    }
    eprintln!(
        "{:?}: {closers} closers closed {closed} children in {:?}",
        t.backend,
        started.elapsed()
    );
    ensure!(closed == u64::from(CHILDREN), "closed {closed}");
    let records = storage.get_finished_child_task_executions("parent").await?;
    ensure!(records.len() == usize::try_from(CHILDREN)?);
    let parent = storage
        .get_task_execution("parent")
        .await?
        .context("parent vanished")?;
    ensure!(parent.finished_children_count == CHILDREN);
    ensure!(parent.failed_children_count == 1);
    let claimed = storage
        .claim_parents_with_finished_children(&claim("p", T0 + 3, 10, 60_000))
        .await?;
    ensure!(claimed.len() == 1);
    Ok(())
}

async fn corrupt_rows_are_reported_and_do_not_block_claims(t: TestDb) -> anyhow::Result<()> {
    let storage = SeaOrmTaskExecutionStorage::new(t.db.clone());
    let mut executions: Vec<_> = ["a", "bad-status", "c", "bad-count", "bad-json"]
        .into_iter()
        .map(|id| execution(id.to_owned()))
        .collect();
    executions[2].parent = Some(ParentRef {
        task_id: "task".to_owned(),
        execution_id: "a".to_owned(),
        index: 0,
        is_finalize: false,
    });
    storage.enqueue_task_executions(executions, T0).await?;
    // PostgreSQL and MariaDB validate JSON columns, so malformed JSON can only be planted in
    // SQLite; an unknown status and a negative counter can be planted everywhere.
    t.db.execute_unprepared(
        "UPDATE task_executions SET status = 'exploded' WHERE execution_id = 'bad-status'",
    )
    .await?;
    t.db.execute_unprepared(
        "UPDATE task_executions SET children_count = -1 WHERE execution_id = 'bad-count'",
    )
    .await?;
    let mut expected = vec![("bad-status", "status"), ("bad-count", "children_count")];
    if t.backend == Backend::Sqlite {
        t.db.execute_unprepared(
            "UPDATE task_executions SET retry_options = '{not json' WHERE execution_id = 'bad-json'",
        )
        .await?;
        expected.push(("bad-json", "retry_options"));
    }
    for (id, column_name) in &expected {
        match storage.get_task_execution(id).await {
            Err(Error::CorruptRow {
                table, key, column, ..
            }) => ensure!(
                table == "task_executions" && key == *id && column == *column_name,
                "wrong corrupt-row details for {id}: {table} {key} {column}"
            ),
            other => anyhow::bail!("reading {id} gave {other:?}"),
        }
    }
    ensure!(matches!(
        storage
            .get_task_executions(&TaskExecutionFilter::default())
            .await,
        Err(Error::CorruptRow { .. })
    ));

    // The readable rows are claimed; the unreadable ready ones are failed instead of being
    // handed out (and of blocking the queue).
    let claimed = storage
        .claim_task_executions(&claim("e", T0, 10, 1000))
        .await?;
    let mut ids: Vec<_> = claimed.iter().map(|e| e.execution_id.as_str()).collect();
    ids.sort_unstable();
    let mut want = vec!["a", "c"];
    if t.backend != Backend::Sqlite {
        want.push("bad-json");
    }
    want.sort_unstable();
    ensure!(ids == want, "claimed {ids:?}");
    let failed = t
        .db
        .query_one_raw(sea_orm::Statement::from_string(
            t.db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM task_executions WHERE status = 'failed' AND is_finished = TRUE",
        ))
        .await?
        .context("no count")?
        .try_get::<i64>("", "n")?;
    let unreadable_ready = if t.backend == Backend::Sqlite { 2 } else { 1 };
    ensure!(failed == unreadable_ready, "{failed} rows failed");
    ensure!(
        storage
            .claim_task_executions(&claim("e", T0, 10, 1000))
            .await?
            .is_empty()
    );
    Ok(())
}

//! The task execution storage: the conformance suite on the in-memory storage and on every
//! backend, concurrency on the real servers, and rows the domain cannot read.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use sea_orm::ConnectionTrait;
use sea_orm_durable::task::storage::{
    ClaimParams, FinishedChildTaskExecution, NewTaskExecution, TaskExecutionGuard,
    TaskExecutionStorage, TaskExecutionUpdate, Wake, WakeOutcome,
};
use sea_orm_durable::task::{
    ParentRef, TaskExecution, TaskExecutionFilter, TaskExecutionStatus, WakeResult,
};
use sea_orm_durable::testkit::task::Storage;
use sea_orm_durable::testkit::{Setup, UnderTest};
use sea_orm_durable::{Error, SeaOrmTaskExecutionStorage};

use crate::harness::{Backend, TestDb, per_backend, setup};

/// The conformance suites' factory: a SeaORM storage on a fresh database of `backend`.
pub(crate) async fn storage(backend: Backend) -> anyhow::Result<Setup<UnderTest<Storage>>> {
    setup(backend, |t| -> Storage {
        Arc::new(SeaOrmTaskExecutionStorage::new(t.db.clone()))
    })
    .await
}

mod conformance {
    mod memory {
        sea_orm_durable::task_storage_conformance!(
            storage: std::sync::Arc::new(sea_orm_durable::task::InMemoryTaskExecutionStorage::new())
        );
    }
    mod sqlite {
        sea_orm_durable::task_storage_conformance!(factory: || crate::task::storage(crate::harness::Backend::Sqlite));
    }
    mod postgres {
        sea_orm_durable::task_storage_conformance!(
            #[cfg_attr(durable_no_postgres, ignore = "DATABASE_URL_POSTGRES is not set")]
            factory: || crate::task::storage(crate::harness::Backend::Postgres)
        );
    }
    mod mysql {
        sea_orm_durable::task_storage_conformance!(
            #[cfg_attr(durable_no_mysql, ignore = "DATABASE_URL_MYSQL is not set")]
            factory: || crate::task::storage(crate::harness::Backend::MySql)
        );
    }
}

per_backend!(
    concurrent_claimers_take_each_execution_exactly_once,
    concurrent_finished_children_keep_exact_counts_and_one_parent_claim,
    concurrent_closers_record_every_child_of_a_wide_parent,
    corrupt_rows_are_reported_and_do_not_block_claims,
    extreme_stored_numbers_neither_overflow_nor_block_claims,
    unreadable_parents_children_and_finalizes_end_explained,
    a_record_that_cannot_be_written_fails_its_parent_without_blocking_closes,
    wake_in_transaction_applies_only_on_commit,
    concurrent_wakes_and_timeouts_have_one_winner_per_sleeper,
    unreadable_schedule_does_not_keep_the_others_from_firing,
);

const T0: i64 = 1_700_000_000_000;

fn execution(id: String) -> NewTaskExecution {
    NewTaskExecution {
        execution_id: id,
        task_id: "task".to_owned(),
        timeout: Duration::from_secs(60),
        input: "{}".to_owned(),
        ..Default::default()
    }
}

fn claim(executor: &str, now: i64, limit: u64, lease_margin_ms: i64) -> ClaimParams {
    ClaimParams {
        executor_id: executor.to_owned(),
        now,
        limit,
        lease_margin: Duration::from_millis(u64::try_from(lease_margin_ms).unwrap_or(u64::MAX)),
        ..ClaimParams::default()
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
        "UPDATE durable_task_executions SET status = 'exploded' WHERE execution_id = 'bad-status'",
    )
    .await?;
    t.db.execute_unprepared(
        "UPDATE durable_task_executions SET children_count = -1 WHERE execution_id = 'bad-count'",
    )
    .await?;
    let mut expected = vec![("bad-status", "status"), ("bad-count", "children_count")];
    if t.backend == Backend::Sqlite {
        t.db.execute_unprepared(
            "UPDATE durable_task_executions SET retry_options = '{not json' WHERE execution_id = 'bad-json'",
        )
        .await?;
        expected.push(("bad-json", "retry_options"));
    }
    for (id, column_name) in &expected {
        match storage.get_task_execution(id).await {
            Err(Error::CorruptRow {
                table, key, column, ..
            }) => ensure!(
                table == "durable_task_executions" && key == *id && column == *column_name,
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
            "SELECT COUNT(*) AS n FROM durable_task_executions WHERE status = 'failed' AND is_finished = TRUE",
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

/// Runs `sql` on the test's database.
async fn exec(t: &TestDb, sql: &str) -> anyhow::Result<()> {
    t.db.execute_unprepared(sql).await?;
    Ok(())
}

async fn fetch(storage: &SeaOrmTaskExecutionStorage, id: &str) -> anyhow::Result<TaskExecution> {
    storage
        .get_task_execution(id)
        .await?
        .with_context(|| format!("{id} vanished"))
}

/// A parent `id` waiting for `children` children, spawned through the storage.
async fn spawn_children(
    storage: &SeaOrmTaskExecutionStorage,
    id: &str,
    children: &[&str],
) -> anyhow::Result<()> {
    storage
        .enqueue_task_executions(vec![execution(id.to_owned())], T0)
        .await?;
    let children: Vec<NewTaskExecution> = children
        .iter()
        .zip(0..)
        .map(|(child, index)| NewTaskExecution {
            parent: Some(ParentRef {
                task_id: "task".to_owned(),
                execution_id: id.to_owned(),
                index,
                is_finalize: false,
            }),
            ..execution((*child).to_owned())
        })
        .collect();
    let spawned = storage
        .update_task_execution_and_enqueue(
            &TaskExecutionGuard::id(id),
            &TaskExecutionUpdate {
                now: T0,
                status: Some(TaskExecutionStatus::WaitingForChildren),
                children_count: Some(u32::try_from(children.len())?),
                ..Default::default()
            },
            children,
        )
        .await?;
    ensure!(spawned);
    Ok(())
}

/// Completes `ids` with `output`.
async fn complete(
    storage: &SeaOrmTaskExecutionStorage,
    ids: &[&str],
    output: &str,
) -> anyhow::Result<()> {
    storage
        .update_task_executions(
            &TaskExecutionGuard {
                execution_ids: ids.iter().map(|s| (*s).to_owned()).collect(),
                ..Default::default()
            },
            &TaskExecutionUpdate {
                now: T0 + 1,
                status: Some(TaskExecutionStatus::Completed),
                output: Some(output.to_owned()),
                ..Default::default()
            },
        )
        .await?;
    Ok(())
}

/// Numbers at the ends of `BIGINT`, written behind the storage's back, make neither the claim
/// arithmetic overflow (which would fail every claim, for every executor, for as long as the
/// row sorts first) nor anything else: a timeout out of range fails just that row, a fencing
/// token at the maximum wraps.
async fn extreme_stored_numbers_neither_overflow_nor_block_claims(t: TestDb) -> anyhow::Result<()> {
    let storage = SeaOrmTaskExecutionStorage::new(t.db.clone());
    let ids = ["huge-timeout", "huge-fence", "negative-timeout", "plain"];
    storage
        .enqueue_task_executions(
            ids.iter().map(|id| execution((*id).to_owned())).collect(),
            T0,
        )
        .await?;
    exec(&t, "UPDATE durable_task_executions SET timeout_ms = 9223372036854775807 WHERE execution_id = 'huge-timeout'").await?;
    exec(&t, "UPDATE durable_task_executions SET fencing_token = 9223372036854775807 WHERE execution_id = 'huge-fence'").await?;
    exec(&t, "UPDATE durable_task_executions SET timeout_ms = -9223372036854775807 WHERE execution_id = 'negative-timeout'").await?;
    let claimed = storage
        .claim_task_executions(&claim("e", T0, 10, i64::MAX))
        .await?;
    let mut claimed_ids: Vec<_> = claimed.iter().map(|e| e.execution_id.as_str()).collect();
    claimed_ids.sort_unstable();
    ensure!(
        claimed_ids == ["huge-fence", "plain"],
        "claimed {claimed_ids:?}"
    );
    let fenced = claimed
        .iter()
        .find(|e| e.execution_id == "huge-fence")
        .context("huge-fence not claimed")?;
    ensure!(fenced.fencing_token == 1, "token {}", fenced.fencing_token);
    ensure!(
        fenced.expires_at.is_some_and(|x| x > T0),
        "lease {:?}",
        fenced.expires_at
    );
    for id in ["huge-timeout", "negative-timeout"] {
        let row =
            t.db.query_one_raw(sea_orm::Statement::from_string(
                t.db.get_database_backend(),
                format!(
                    "SELECT status, error FROM durable_task_executions WHERE execution_id = '{id}'"
                ),
            ))
            .await?
            .context("row vanished")?;
        let status: String = row.try_get("", "status")?;
        let error: serde_json::Value = row.try_get("", "error")?;
        ensure!(status == "failed", "{id} is {status}");
        ensure!(
            error.to_string().contains("timeout_ms"),
            "{id} error {error}"
        );
    }
    // The parents claim wraps the token too.
    exec(&t, "UPDATE durable_task_executions SET status = 'waiting_for_children_tasks', children_count = 0, fencing_token = 9223372036854775807, expires_at = NULL WHERE execution_id = 'plain'").await?;
    let parents = storage
        .claim_parents_with_finished_children(&claim("e", T0 + 1, 10, i64::MAX))
        .await?;
    ensure!(
        parents.len() == 1 && parents[0].fencing_token == 1,
        "{parents:?}"
    );
    Ok(())
}

/// A parent whose row cannot be read is failed instead of being claimed after every lease,
/// forever; a finished child that cannot be read is recorded for its parent as failed, and a
/// finalize execution that cannot be read fails its parent, instead of leaving them waiting.
async fn unreadable_parents_children_and_finalizes_end_explained(t: TestDb) -> anyhow::Result<()> {
    use TaskExecutionStatus as S;
    let storage = SeaOrmTaskExecutionStorage::new(t.db.clone());
    // A parent that cannot be read (a negative counter) whose children finished.
    spawn_children(&storage, "bad-parent", &["bp0"]).await?;
    storage
        .add_finished_child_task_executions(vec![FinishedChildTaskExecution {
            parent_execution_id: "bad-parent".to_owned(),
            child_execution_id: "bp0".to_owned(),
            child_task_id: "task".to_owned(),
            index: 0,
            status: S::Completed,
            output: Some("1".to_owned()),
            error: None,
            created_at: T0,
        }])
        .await?;
    exec(
        &t,
        "UPDATE durable_task_executions SET retry_attempts = -1 WHERE execution_id = 'bad-parent'",
    )
    .await?;
    ensure!(
        storage
            .claim_parents_with_finished_children(&claim("e", T0 + 2, 10, 1_000))
            .await?
            .is_empty()
    );
    ensure!(
        storage
            .claim_parents_with_finished_children(&claim("e", T0 + 10_000, 10, 1_000))
            .await?
            .is_empty(),
        "an unreadable parent was claimed again"
    );
    let status: String =
        t.db.query_one_raw(sea_orm::Statement::from_string(
            t.db.get_database_backend(),
            "SELECT status FROM durable_task_executions WHERE execution_id = 'bad-parent'",
        ))
        .await?
        .context("row vanished")?
        .try_get("", "status")?;
    ensure!(status == "failed", "unreadable parent is {status}");

    // A child that cannot be read, among readable siblings.
    spawn_children(&storage, "p", &["good", "bad-child"]).await?;
    complete(&storage, &["good", "bad-child"], "2").await?;
    exec(
        &t,
        "UPDATE durable_task_executions SET status = 'exploded' WHERE execution_id = 'bad-child'",
    )
    .await?;
    // A finalize execution that cannot be read.
    storage
        .enqueue_task_executions(vec![execution("q".to_owned())], T0)
        .await?;
    let finalize = NewTaskExecution {
        parent: Some(ParentRef {
            task_id: "task".to_owned(),
            execution_id: "q".to_owned(),
            index: 0,
            is_finalize: true,
        }),
        ..execution("bad-finalize".to_owned())
    };
    ensure!(
        storage
            .update_task_execution_and_enqueue(
                &TaskExecutionGuard::id("q"),
                &TaskExecutionUpdate {
                    now: T0,
                    status: Some(S::WaitingForFinalize),
                    ..Default::default()
                },
                vec![finalize],
            )
            .await?
    );
    complete(&storage, &["bad-finalize"], "3").await?;
    exec(
        &t,
        "UPDATE durable_task_executions SET children_count = -7 WHERE execution_id = 'bad-finalize'",
    )
    .await?;

    let mut closed = 0;
    loop {
        let n = storage.close_finished_task_executions(T0 + 3, 10).await?;
        if n == 0 {
            break;
        }
        closed += n;
    }
    // bad-parent (failed), good, bad-child, bad-finalize, and q once it failed.
    ensure!(closed >= 4, "closed {closed}");
    let p = fetch(&storage, "p").await?;
    ensure!(
        p.finished_children_count == 2 && p.failed_children_count == 1,
        "parent counts {} / {}",
        p.finished_children_count,
        p.failed_children_count
    );
    let records = storage.get_finished_child_task_executions("p").await?;
    let bad = records
        .iter()
        .find(|r| r.child_execution_id == "bad-child")
        .context("no record of the unreadable child")?;
    ensure!(bad.status == S::Failed && bad.index == 1, "{bad:?}");
    ensure!(
        bad.error
            .as_ref()
            .is_some_and(|e| e.message.contains("cannot be read")),
        "{bad:?}"
    );
    let q = fetch(&storage, "q").await?;
    ensure!(q.status == S::FinalizeFailed, "q is {:?}", q.status);
    ensure!(
        q.error
            .as_ref()
            .is_some_and(|e| e.message.contains("cannot be read")),
        "{:?}",
        q.error
    );
    Ok(())
}

/// A finished-child record the database refuses for good (here a trigger; in life, a packet
/// limit or a constraint) is written alone, then recorded as a failure that carries the real
/// error: its parent learns that the child failed and why, and every other execution closes.
async fn a_record_that_cannot_be_written_fails_its_parent_without_blocking_closes(
    t: TestDb,
) -> anyhow::Result<()> {
    poison_inserts(&t, "durable_finished_child_task_executions").await?;
    let storage = SeaOrmTaskExecutionStorage::new(t.db.clone());
    spawn_children(&storage, "p", &["c0", "c1", "c2"]).await?;
    spawn_children(&storage, "q", &["d0"]).await?;
    complete(&storage, &["c0", "c2", "d0"], "\"fine\"").await?;
    complete(&storage, &["c1"], "\"poison\"").await?;
    let mut closed = 0;
    for _ in 0..5 {
        closed += storage.close_finished_task_executions(T0 + 2, 10).await?;
    }
    ensure!(closed == 4, "closed {closed}");
    let p = fetch(&storage, "p").await?;
    ensure!(
        p.finished_children_count == 3 && p.failed_children_count == 1,
        "p counts {} / {}",
        p.finished_children_count,
        p.failed_children_count
    );
    let records = storage.get_finished_child_task_executions("p").await?;
    let poisoned = records
        .iter()
        .find(|r| r.child_execution_id == "c1")
        .context("no record of c1")?;
    ensure!(
        poisoned.status == TaskExecutionStatus::Failed,
        "{poisoned:?}"
    );
    ensure!(
        poisoned
            .error
            .as_ref()
            .is_some_and(|e| e.message.contains("poisoned output")),
        "{poisoned:?}"
    );
    let q = fetch(&storage, "q").await?;
    ensure!(q.finished_children_count == 1 && q.failed_children_count == 0);
    let claimed = storage
        .claim_parents_with_finished_children(&claim("e", T0 + 3, 10, 1_000))
        .await?;
    ensure!(claimed.len() == 2, "{} parents claimable", claimed.len());
    Ok(())
}

/// Makes the database refuse, for good, every row of `table` whose `output` mentions
/// "poison": a trigger, on each backend.
pub(crate) async fn poison_writes(t: &TestDb, table: &str, event: &str) -> anyhow::Result<()> {
    let name = format!("poison_{}", event.to_lowercase());
    match t.backend {
        Backend::Postgres => {
            exec(
                t,
                &format!(
                    "CREATE OR REPLACE FUNCTION {name}() RETURNS trigger AS $$ BEGIN \
                     IF NEW.output LIKE '%poison%' THEN RAISE EXCEPTION 'poisoned output'; END IF; \
                     RETURN NEW; END $$ LANGUAGE plpgsql"
                ),
            )
            .await?;
            exec(
                t,
                &format!(
                    "CREATE TRIGGER {name} BEFORE {event} ON {table} FOR EACH ROW EXECUTE FUNCTION {name}()"
                ),
            )
            .await
        }
        Backend::MySql => {
            exec(
                t,
                &format!(
                    "CREATE TRIGGER {name} BEFORE {event} ON {table} FOR EACH ROW BEGIN \
                     IF NEW.output LIKE '%poison%' THEN \
                     SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'poisoned output'; END IF; END"
                ),
            )
            .await
        }
        Backend::Sqlite => {
            exec(
                t,
                &format!(
                    "CREATE TRIGGER {name} BEFORE {event} ON {table} FOR EACH ROW \
                     WHEN NEW.output LIKE '%poison%' BEGIN SELECT RAISE(ABORT, 'poisoned output'); END"
                ),
            )
            .await
        }
    }
}

async fn poison_inserts(t: &TestDb, table: &str) -> anyhow::Result<()> {
    poison_writes(t, table, "INSERT").await
}

/// Replies lost after the statement committed, on a real PostgreSQL server behind a proxy that
/// breaks the connection at that moment (the backend-independent recovery code runs the same on
/// the other servers; only PostgreSQL's protocol names the statement in its reply).
mod lost_reply {
    use super::*;
    use crate::harness::run;
    use crate::proxy::{Proxy, connect_through};

    /// A storage on `t`'s database through a proxy.
    async fn behind_proxy(t: &TestDb) -> anyhow::Result<(Proxy, SeaOrmTaskExecutionStorage)> {
        let (proxy, db) = connect_through(t.backend, &t.url, 2).await?;
        Ok((proxy, SeaOrmTaskExecutionStorage::new(db)))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[cfg_attr(durable_no_postgres, ignore = "DATABASE_URL_POSTGRES is not set")]
    async fn postgres_enqueue_whose_reply_was_lost_is_not_a_conflict() -> anyhow::Result<()> {
        run(Backend::Postgres, |t| async move {
            let (proxy, storage) = behind_proxy(&t).await?;
            ensure!(storage.get_task_execution("warm-up").await?.is_none());
            proxy.lose_reply_containing(b"INSERT 0 ");
            storage
                .enqueue_task_executions(vec![execution("once".to_owned())], T0)
                .await
                .context("the retried enqueue failed")?;
            ensure!(proxy.lost() == 1, "no reply was lost");
            let all = storage
                .get_task_executions(&TaskExecutionFilter::default())
                .await?;
            ensure!(all.len() == 1 && all[0].execution_id == "once");
            // A real duplicate (another enqueue, at another time) is still a conflict.
            let again = storage
                .enqueue_task_executions(vec![execution("once".to_owned())], T0 + 1)
                .await;
            ensure!(matches!(again, Err(Error::Conflict { .. })), "{again:?}");
            Ok(())
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[cfg_attr(durable_no_postgres, ignore = "DATABASE_URL_POSTGRES is not set")]
    async fn postgres_claim_whose_reply_was_lost_is_taken_back() -> anyhow::Result<()> {
        run(Backend::Postgres, |t| async move {
            let (proxy, storage) = behind_proxy(&t).await?;
            storage
                .enqueue_task_executions((0..3).map(|i| execution(format!("x{i}"))).collect(), T0)
                .await?;
            proxy.lose_reply_containing(b"UPDATE 2");
            let params = ClaimParams {
                claim_id: Some("claim-1".to_owned()),
                ..claim("e", T0, 2, 60_000)
            };
            let claimed = storage.claim_task_executions(&params).await?;
            ensure!(proxy.lost() == 1, "no reply was lost");
            let ids: Vec<_> = claimed.iter().map(|e| e.execution_id.as_str()).collect();
            ensure!(ids == ["x0", "x1"], "the retry claimed {ids:?}");
            let rest = storage
                .claim_task_executions(&claim("e", T0, 10, 60_000))
                .await?;
            ensure!(rest.len() == 1 && rest[0].execution_id == "x2");
            Ok(())
        })
        .await
    }
}

fn sleeper(id: String, key: String, timeout_ms: i64) -> NewTaskExecution {
    NewTaskExecution {
        wake_key: Some(key),
        timeout: Duration::from_millis(u64::try_from(timeout_ms).unwrap_or(u64::MAX)),
        ..execution(id)
    }
}

fn wake_completed(key: &str, now: i64) -> Wake {
    Wake {
        wake_key: key.to_owned(),
        outcome: WakeOutcome::Completed {
            output: "true".to_owned(),
        },
        now,
    }
}

/// A wake inside the application's transaction happens only if that transaction commits.
async fn wake_in_transaction_applies_only_on_commit(t: TestDb) -> anyhow::Result<()> {
    use sea_orm::TransactionTrait;
    let storage = SeaOrmTaskExecutionStorage::new(t.db.clone());
    storage
        .enqueue_task_executions(vec![sleeper("s".into(), "hook".into(), 60_000)], T0)
        .await?;
    let txn = t.db.begin().await?;
    let woken = storage
        .wake_task_execution_in(&txn, &wake_completed("hook", T0 + 1))
        .await?;
    ensure!(woken.is_woken(), "{woken:?}");
    txn.rollback().await?;
    let e = storage.get_task_execution("s").await?.context("s")?;
    ensure!(
        e.status == TaskExecutionStatus::Sleeping,
        "rolled back wake left {:?}",
        e.status
    );
    let txn = t.db.begin().await?;
    let woken = storage
        .wake_task_execution_in(&txn, &wake_completed("hook", T0 + 2))
        .await?;
    ensure!(woken.is_woken(), "{woken:?}");
    txn.commit().await?;
    let e = storage.get_task_execution("s").await?.context("s")?;
    ensure!(
        e.status == TaskExecutionStatus::Completed && e.output.as_deref() == Some("true"),
        "committed wake left {:?}",
        e.status
    );
    let again = storage
        .wake_task_execution(&wake_completed("hook", T0 + 3))
        .await?;
    ensure!(matches!(again, WakeResult::AlreadyFinished(_)), "{again:?}");
    Ok(())
}

/// Many wakers on their own connections wake the same keys while expiry times the sleepers
/// out: each sleeper ends with one outcome, exactly one waker or the expiry won it, and every
/// other waker was told it had finished already.
async fn concurrent_wakes_and_timeouts_have_one_winner_per_sleeper(
    t: TestDb,
) -> anyhow::Result<()> {
    const SLEEPERS: usize = 60;
    const WAKERS: usize = 4;
    let pool = t.connect(u32::try_from(WAKERS + 2)?).await?;
    let storage = Arc::new(SeaOrmTaskExecutionStorage::new(pool));
    storage
        .enqueue_task_executions(
            (0..SLEEPERS)
                .map(|i| sleeper(format!("s{i:03}"), format!("k{i:03}"), 1_000))
                .collect(),
            T0,
        )
        .await?;
    let late = T0 + 1_001;
    let barrier = Arc::new(tokio::sync::Barrier::new(WAKERS + 1));
    let mut wakers = tokio::task::JoinSet::new();
    for w in 0..WAKERS {
        let (storage, barrier) = (storage.clone(), barrier.clone());
        wakers.spawn(async move {
            barrier.wait().await;
            let mut won = Vec::new();
            // Each waker goes through the keys in its own order.
            for j in 0..SLEEPERS {
                let i = (j * (w + 1) * 7 + w) % SLEEPERS;
                let key = format!("k{i:03}");
                // Each wake (some wakers come to a key twice) has an outcome of its own: the
                // same wake (key, outcome and time) twice is one wake repeated, answered woken
                // both times.
                let wake = Wake {
                    outcome: WakeOutcome::Completed {
                        output: format!("[{w},{j}]"),
                    },
                    ..wake_completed(&key, late)
                };
                if storage.wake_task_execution(&wake).await?.is_woken() {
                    won.push(format!("s{i:03}"));
                }
            }
            anyhow::Ok(won)
        });
    }
    let expirer = {
        let (storage, barrier) = (storage.clone(), barrier.clone());
        tokio::spawn(async move {
            barrier.wait().await;
            let mut expired = 0;
            for _ in 0..SLEEPERS {
                expired += storage.expire_task_executions(late, 2).await?;
            }
            anyhow::Ok(expired)
        })
    };
    let mut woken = HashSet::new();
    while let Some(won) = wakers.join_next().await {
        for id in won?? {
            ensure!(woken.insert(id.clone()), "{id} woken twice");
        }
    }
    let expired = expirer.await??;
    let all = storage
        .get_task_executions(&TaskExecutionFilter::default())
        .await?;
    let mut timed_out = 0;
    for e in &all {
        match e.status {
            TaskExecutionStatus::Completed => {
                ensure!(
                    woken.contains(&e.execution_id),
                    "{} completed by nobody",
                    e.execution_id
                );
            }
            TaskExecutionStatus::TimedOut => {
                ensure!(
                    !woken.contains(&e.execution_id),
                    "{} woken and timed out",
                    e.execution_id
                );
                timed_out += 1;
            }
            other => anyhow::bail!("{} ended {other:?}", e.execution_id),
        }
    }
    ensure!(
        usize::try_from(expired)? == timed_out && woken.len() + timed_out == SLEEPERS,
        "woken {}, expired {expired}, timed out {timed_out}",
        woken.len()
    );
    Ok(())
}

/// A schedule row with an unknown missed-ticks policy is left out of the due schedules, and the
/// readable ones still come back.
async fn unreadable_schedule_does_not_keep_the_others_from_firing(t: TestDb) -> anyhow::Result<()> {
    let storage = SeaOrmTaskExecutionStorage::new(t.db.clone());
    for id in ["bad", "good"] {
        storage
            .save_task_schedule(sea_orm_durable::task::TaskSchedule {
                schedule_id: id.to_owned(),
                task_id: "task".to_owned(),
                input: "null".to_owned(),
                spec: sea_orm_durable::task::ScheduleSpec::Interval { every_ms: 1_000 },
                missed_ticks: sea_orm_durable::task::MissedTicks::Skip,
                next_tick_at: Some(T0),
                last_tick_at: None,
                created_at: T0,
                updated_at: T0,
            })
            .await?;
    }
    t.db.execute_unprepared(
        "UPDATE durable_task_schedules SET missed_ticks = 'sometimes' WHERE schedule_id = 'bad'",
    )
    .await?;
    let due = storage.due_task_schedules(T0, None, 10).await?;
    ensure!(
        due.iter()
            .map(|s| s.schedule_id.as_str())
            .collect::<Vec<_>>()
            == vec!["good"],
        "{due:?}"
    );
    let all = storage.get_task_schedules().await;
    ensure!(
        matches!(all, Err(Error::CorruptRow { .. })),
        "listing reports the bad row: {all:?}"
    );
    Ok(())
}

//! Throughput of distributed batch jobs and durable tasks, each beside a raw-SQL floor: the
//! same statements issued by a minimal hand-written loop in the same run, so the report shows
//! what the library costs on top of the SQL it needs.
//!
//! ```text
//! cargo bench --bench throughput -- [--database-url URL] [--workload w1,w2,w3,w4,w5,w6] [--quick] [--repeat N]
//! cargo bench --bench throughput -- [--database-url URL] --scale [--quick]
//! ```
//!
//! Without `--database-url` it runs on a SQLite file in a temporary directory. A PostgreSQL or
//! MySQL URL is used as an admin URL: every run creates a scratch database of its own there and
//! drops it afterwards. `--quick` shrinks every workload to a smoke run of a few seconds.
//! Each figure is the median of `--repeat` runs (3 by default, 1 with `--quick`), ours and the
//! floor alternating.
//!
//! Workloads:
//! - W1: a distributed job of 200 batches × 10 records, 4 workers, a processor that does nothing;
//! - W2: a distributed job of 100 000 records in batches of 500, 4 workers;
//! - W3: 10 000 no-op durable tasks, one executor, then three executors;
//! - W4: parents and children: 3 executors, 100 parents × 100 no-op children + a finalize each
//!   (10 200 executions), one warm-up run and then `--repeat` measured ones, beside a floor
//!   that does the same with hand-written statements;
//! - W5: `prepare` of a job of 100 000 records in batches of 500, beside the same INSERTs by hand;
//! - W6: claims of an executor serving one task beside 200 000 ready executions of a task no
//!   executor serves: the median idle claim and claim of 10, beside the same claims on a table
//!   without that backlog.
//!
//! `--scale` runs W2 at 10 000, 100 000 and 1 000 000 records and W3 (one executor) at 10 000 and
//! 100 000 tasks, ours only, and prints the throughput and the peak memory (the process's peak
//! resident set, reset before each run) per size: a flat line is linear cost.

// A benchmark is a program that prints its figures.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement,
    TransactionTrait, Value,
};
use sea_orm_durable::batch::JobStatus;
use sea_orm_durable::batch::store::DistributedStateStore;
use sea_orm_durable::migration::{Migrator, MigratorTrait};
use sea_orm_durable::task::storage::{NewTaskExecution, TaskExecutionStorage};
use sea_orm_durable::{
    Executor, ExecutorOptions, FinalizeInput, JobConfig, ParentOutcome, SeaOrmStateStore,
    SeaOrmTaskExecutionStorage, TaskDefinition, TaskError, WorkerOptions, prepare, run_worker,
};
use serde_json::json;

/// Where the bench runs.
struct Target {
    backend: DbBackend,
    admin_url: Option<String>,
    dir: tempfile::TempDir,
}

/// A database of its own for one measured run.
struct Scratch {
    db: DatabaseConnection,
    url: String,
    name: String,
}

static SCRATCH: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn with_database(url: &str, name: &str) -> Result<String> {
    let scheme_end = url.find("://").context("database URL has no scheme")? + 3;
    let (base, query) = match url.find('?') {
        Some(q) => (&url[..q], &url[q..]),
        None => (url, ""),
    };
    let path_start = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    Ok(format!("{}/{}{}", &base[..path_start], name, query))
}

fn options(backend: DbBackend, url: &str, pool: u32) -> ConnectOptions {
    let mut o = ConnectOptions::new(url.to_owned());
    o.max_connections(pool)
        .min_connections(1)
        .sqlx_logging(false);
    if backend == DbBackend::Sqlite {
        o.map_sqlx_sqlite_opts(|s| {
            s.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
        });
    }
    o
}

impl Target {
    fn new(url: Option<String>) -> Result<Self> {
        let backend = match url.as_deref() {
            None => DbBackend::Sqlite,
            Some(u) if u.starts_with("postgres") => DbBackend::Postgres,
            Some(u) if u.starts_with("mysql") => DbBackend::MySql,
            Some(u) if u.starts_with("sqlite") => {
                bail!("give no URL for SQLite; the bench uses a temporary file")
            }
            Some(u) => bail!("unsupported database URL {u}"),
        };
        Ok(Self {
            backend,
            admin_url: url,
            dir: tempfile::tempdir()?,
        })
    }

    fn label(&self) -> &'static str {
        match self.backend {
            DbBackend::Postgres => "PostgreSQL",
            DbBackend::MySql => "MySQL/MariaDB",
            _ => "SQLite",
        }
    }

    fn pool_size(&self) -> u32 {
        // SQLite has one writer at a time; more connections only queue on its lock.
        if self.backend == DbBackend::Sqlite {
            4
        } else {
            16
        }
    }

    async fn scratch(&self) -> Result<Scratch> {
        let name = format!(
            "sod_bench_{}_{}",
            std::process::id(),
            SCRATCH.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let url = match &self.admin_url {
            None => format!(
                "sqlite://{}?mode=rwc",
                self.dir.path().join(format!("{name}.db")).display()
            ),
            Some(admin) => {
                let db = Database::connect(options(self.backend, admin, 1)).await?;
                db.execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await?;
                db.close().await?;
                with_database(admin, &name)?
            }
        };
        let db = Database::connect(options(self.backend, &url, self.pool_size())).await?;
        Migrator::up(&db, None).await?;
        Ok(Scratch { db, url, name })
    }

    async fn drop_scratch(&self, scratch: Scratch) -> Result<()> {
        scratch.db.close().await?;
        if let Some(admin) = &self.admin_url {
            let db = Database::connect(options(self.backend, admin, 1)).await?;
            db.execute_unprepared(&format!("DROP DATABASE IF EXISTS {}", scratch.name))
                .await?;
            db.close().await?;
        }
        Ok(())
    }
}

/// A statement with `$n` placeholders, rewritten to `?` for MySQL and SQLite.
fn stmt(backend: DbBackend, sql: &str, values: Vec<Value>) -> Statement {
    let sql = if backend == DbBackend::Postgres {
        sql.to_owned()
    } else {
        let mut out = String::with_capacity(sql.len());
        let mut chars = sql.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
                while chars.peek().is_some_and(char::is_ascii_digit) {
                    chars.next();
                }
                out.push('?');
            } else {
                out.push(c);
            }
        }
        out
    };
    Statement::from_sql_and_values(backend, sql, values)
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(i64::MAX)
}

// ---------------------------------------------------------------------------------------------
// Batch jobs (W1, W2)

struct JobShape {
    records: u64,
    batch_size: u32,
    workers: usize,
}

async fn prepare_job(
    scratch: &Scratch,
    shape: &JobShape,
) -> Result<Arc<dyn DistributedStateStore>> {
    let store: Arc<dyn DistributedStateStore> = Arc::new(SeaOrmStateStore::new(scratch.db.clone()));
    let records = (0..shape.records).map(|i| json!({ "id": i, "name": format!("record {i}") }));
    prepare(&*store, "job", JobConfig::new(shape.batch_size), records).await?;
    Ok(store)
}

async fn job_library(target: &Target, shape: &JobShape) -> Result<Duration> {
    let scratch = target.scratch().await?;
    let store = prepare_job(&scratch, shape).await?;
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..shape.workers {
        let store = Arc::clone(&store);
        workers.push(tokio::spawn(async move {
            let options = WorkerOptions {
                poll_interval: Duration::from_millis(5),
                ..WorkerOptions::default()
            };
            run_worker(
                store,
                "job",
                &format!("worker-{w}"),
                |_ctx, _record: serde::de::IgnoredAny| async { Ok(()) },
                options,
            )
            .await
        }));
    }
    for worker in workers {
        worker.await??;
    }
    let took = started.elapsed();
    let job = store.get_job_state("job").await?.context("job vanished")?;
    ensure!(
        job.status == JobStatus::Completed,
        "job ended {:?}",
        job.status
    );
    let progress = store.get_progress("job").await?;
    ensure!(
        progress.processed_records == shape.records,
        "processed {} of {}",
        progress.processed_records,
        shape.records
    );
    target.drop_scratch(scratch).await?;
    Ok(took)
}

/// The same statements a worker issues per batch, written by hand: claim (a locking select and a
/// version compare-and-swap in one transaction), read the batch's records, write their outcomes,
/// complete the batch, try to finalize the job.
async fn job_floor(target: &Target, shape: &JobShape) -> Result<Duration> {
    let scratch = target.scratch().await?;
    prepare_job(&scratch, shape).await?;
    let backend = target.backend;
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..shape.workers {
        let db = scratch.db.clone();
        workers.push(tokio::spawn(async move {
            floor_worker(db, backend, format!("worker-{w}")).await
        }));
    }
    for worker in workers {
        worker.await??;
    }
    let took = started.elapsed();
    let row = scratch
        .db
        .query_one_raw(stmt(
            backend,
            "SELECT status FROM batchactions_jobs WHERE id = $1",
            vec!["job".into()],
        ))
        .await?
        .context("job vanished")?;
    let status: String = row.try_get("", "status")?;
    ensure!(status == "COMPLETED", "floor job ended {status}");
    target.drop_scratch(scratch).await?;
    Ok(took)
}

async fn floor_worker(db: DatabaseConnection, backend: DbBackend, worker: String) -> Result<()> {
    // A hand-written loop has to retry deadlocks too (MariaDB reports them under contention).
    let mut attempts = 0;
    loop {
        match floor_batch(&db, backend, &worker).await {
            Ok(true) => attempts = 0,
            Ok(false) => return Ok(()),
            Err(err) if attempts < 10 && is_transient(&err) => attempts += 1,
            Err(err) => return Err(err),
        }
    }
}

fn is_transient(err: &anyhow::Error) -> bool {
    err.downcast_ref::<sea_orm::DbErr>()
        .is_some_and(|e| sea_orm_durable::Error::from(e.clone()).is_retryable())
}

async fn floor_batch(db: &DatabaseConnection, backend: DbBackend, worker: &str) -> Result<bool> {
    let lock = if backend == DbBackend::Sqlite {
        ""
    } else {
        " FOR UPDATE SKIP LOCKED"
    };
    let txn = db.begin_with_options(write_options(backend)).await?;
    let candidate = txn
        .query_one_raw(stmt(
            backend,
            &format!(
                "SELECT id, version FROM batchactions_batches WHERE job_id = $1 AND status = 'PENDING' \
                 ORDER BY batch_index LIMIT 1{lock}"
            ),
            vec!["job".into()],
        ))
        .await?;
    let Some(candidate) = candidate else {
        txn.commit().await?;
        return Ok(false);
    };
    let (id, version): (String, i64) = (
        candidate.try_get("", "id")?,
        candidate.try_get("", "version")?,
    );
    txn.execute_raw(stmt(
        backend,
        "UPDATE batchactions_batches SET status = 'PROCESSING', worker_id = $1, claimed_at = $2, \
         heartbeat_at = $3, version = version + 1 WHERE id = $4 AND version = $5 AND status = 'PENDING'",
        vec![worker.into(), now_ms().into(), now_ms().into(), id.clone().into(), version.into()],
    ))
    .await?;
    txn.commit().await?;
    let rows = db
        .query_all_raw(stmt(
            backend,
            "SELECT record_index, raw, parsed FROM batchactions_records WHERE job_id = $1 AND batch_id = $2 \
             ORDER BY record_index",
            vec!["job".into(), id.clone().into()],
        ))
        .await?;
    // The fenced completion, then the outcomes (every record processed, one group), in one
    // write transaction.
    let indexes = rows
        .iter()
        .map(|r| r.try_get::<i64>("", "record_index").map(|i| i.to_string()))
        .collect::<Result<Vec<_>, _>>()?
        .join(", ");
    let txn = db.begin_with_options(write_options(backend)).await?;
    txn.execute_raw(stmt(
        backend,
        "UPDATE batchactions_batches SET status = 'COMPLETED', processed_count = $1, failed_count = 0, \
         completed_at = $2 WHERE id = $3 AND version = $4 AND status = 'PROCESSING'",
        vec![i64::try_from(rows.len())?.into(), now_ms().into(), id.clone().into(), (version + 1).into()],
    ))
    .await?;
    txn.execute_raw(stmt(
        backend,
        &format!(
            "UPDATE batchactions_records SET status = 'processed', errors = $1, processing_error = NULL, \
             retry_count = 0, updated_at = $2 WHERE job_id = $3 AND batch_id = $4 AND record_index IN ({indexes})"
        ),
        vec![json!([]).into(), now_ms().into(), "job".into(), id.clone().into()],
    ))
    .await?;
    txn.commit().await?;
    db.execute_raw(stmt(
        backend,
        "UPDATE batchactions_jobs SET status = 'COMPLETED', completed_at = $1 WHERE id = $2 AND status = 'PROCESSING' \
         AND NOT EXISTS (SELECT 1 FROM batchactions_batches WHERE job_id = $3 AND status NOT IN ('COMPLETED', 'FAILED'))",
        vec![now_ms().into(), "job".into(), "job".into()],
    ))
    .await?;
    Ok(true)
}

fn write_options(backend: DbBackend) -> sea_orm::TransactionOptions {
    if backend == DbBackend::Sqlite {
        sea_orm::TransactionOptions {
            sqlite_transaction_mode: Some(sea_orm::SqliteTransactionMode::Immediate),
            ..Default::default()
        }
    } else {
        sea_orm::TransactionOptions {
            isolation_level: Some(sea_orm::IsolationLevel::ReadCommitted),
            ..Default::default()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Durable tasks (W3)

async fn enqueue_noops(storage: &dyn TaskExecutionStorage, count: usize) -> Result<()> {
    let mut next = 0;
    while next < count {
        let chunk = (next..count.min(next + 1000))
            .map(|i| NewTaskExecution {
                execution_id: format!("te_{i:08}"),
                task_id: "noop".to_owned(),
                timeout: Duration::from_secs(60),
                input: "null".to_owned(),
                ..Default::default()
            })
            .collect();
        storage.enqueue_task_executions(chunk, now_ms()).await?;
        next += 1000;
    }
    Ok(())
}

/// Enqueues `count` ready executions of `task_id`, ids prefixed with `prefix`.
async fn enqueue_ready(
    storage: &dyn TaskExecutionStorage,
    task_id: &str,
    prefix: &str,
    count: usize,
) -> Result<()> {
    let mut next = 0;
    while next < count {
        let chunk = (next..count.min(next + 1000))
            .map(|i| NewTaskExecution {
                execution_id: format!("{prefix}_{i:08}"),
                task_id: task_id.to_owned(),
                timeout: Duration::from_secs(60),
                input: "null".to_owned(),
                ..Default::default()
            })
            .collect();
        storage.enqueue_task_executions(chunk, now_ms()).await?;
        next += 1000;
    }
    Ok(())
}

/// What the claims of an executor serving task `served` cost beside `unserved` ready
/// executions of a task nobody serves (W6): the median time of an idle claim (nothing of its
/// task is ready), then of a claim of 10 that finds work, over `claims` claims each.
async fn claims_beside_backlog(
    target: &Target,
    unserved: usize,
    claims: usize,
) -> Result<(Duration, Duration)> {
    let scratch = target.scratch().await?;
    let storage = SeaOrmTaskExecutionStorage::new(scratch.db.clone());
    enqueue_ready(&storage, "unserved", "un", unserved).await?;
    let analyze = if target.backend == DbBackend::MySql {
        "ANALYZE TABLE durable_task_executions"
    } else {
        "ANALYZE"
    };
    scratch.db.execute_unprepared(analyze).await?;
    let params = |claim: usize| sea_orm_durable::task::storage::ClaimParams {
        executor_id: "bench".to_owned(),
        now: now_ms(),
        limit: 10,
        lease_margin: Duration::from_secs(60),
        task_ids: Some(vec!["served".to_owned()]),
        queues: None,
        claim_id: Some(format!("claim-{claim}")),
        resume: false,
    };
    let mut idle = Vec::with_capacity(claims);
    for claim in 0..claims {
        let started = Instant::now();
        let got = storage.claim_task_executions(&params(claim)).await?;
        idle.push(started.elapsed());
        ensure!(
            got.is_empty(),
            "an idle claim took {} executions",
            got.len()
        );
    }
    enqueue_ready(&storage, "served", "se", claims * 10).await?;
    let mut working = Vec::with_capacity(claims);
    for claim in 0..claims {
        let started = Instant::now();
        let got = storage
            .claim_task_executions(&params(claims + claim))
            .await?;
        working.push(started.elapsed());
        ensure!(
            got.len() == 10,
            "a claim took {} executions, not 10",
            got.len()
        );
    }
    target.drop_scratch(scratch).await?;
    idle.sort();
    working.sort();
    Ok((idle[idle.len() / 2], working[working.len() / 2]))
}

async fn completed(db: &DatabaseConnection, backend: DbBackend) -> Result<i64> {
    let row = db
        .query_one_raw(stmt(
            backend,
            "SELECT COUNT(*) AS n FROM durable_task_executions WHERE status = 'completed'",
            vec![],
        ))
        .await?
        .context("no count")?;
    Ok(row.try_get("", "n")?)
}

/// Statements the executors sent while they ran the W3 tasks or the W4 executions (transaction
/// control not counted).
static STATEMENTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Whether any execution is still `ready` or `running`.
async fn unfinished(db: &DatabaseConnection, backend: DbBackend) -> Result<bool> {
    for status in ["ready", "running"] {
        let probe = stmt(
            backend,
            &format!(
                "SELECT execution_id FROM durable_task_executions WHERE status = '{status}' LIMIT 1"
            ),
            vec![],
        );
        if db.query_one_raw(probe).await?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Starts `count` executors on the database at `url`, each with a connection pool of its own
/// (as separate processes would have) whose statements are counted in [`STATEMENTS`] (reset
/// here), after `register` registered their tasks.
async fn start_executors(
    target: &Target,
    url: &str,
    count: usize,
    register: impl Fn(&Executor) -> sea_orm_durable::Result<()>,
) -> Result<Vec<(Executor, DatabaseConnection)>> {
    STATEMENTS.store(0, std::sync::atomic::Ordering::Relaxed);
    let mut pool = Vec::with_capacity(count);
    for _ in 0..count {
        let mut db = Database::connect(options(target.backend, url, target.pool_size())).await?;
        db.set_metric_callback(|_| {
            STATEMENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        let executor = Executor::new(
            Arc::new(SeaOrmTaskExecutionStorage::new(db.clone())),
            ExecutorOptions {
                poll_interval: Duration::from_millis(10),
                ..ExecutorOptions::default()
            },
        );
        register(&executor)?;
        executor.start();
        pool.push((executor, db));
    }
    Ok(pool)
}

/// Shuts the executors of [`start_executors`] down and closes their pools.
async fn stop_executors(pool: Vec<(Executor, DatabaseConnection)>) -> Result<()> {
    for (executor, db) in pool {
        executor.shutdown().await;
        db.close().await?;
    }
    Ok(())
}

async fn tasks_library(target: &Target, count: usize, executors: usize) -> Result<Duration> {
    let scratch = target.scratch().await?;
    enqueue_noops(&SeaOrmTaskExecutionStorage::new(scratch.db.clone()), count).await?;
    let noop = TaskDefinition::new("noop", |_ctx, ()| async { Ok::<_, TaskError>(()) });
    let started = Instant::now();
    let pool = start_executors(target, &scratch.url, executors, |e| e.register(&noop)).await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    // Watching with index-served probes, not a COUNT over the table, so that the watching does
    // not cost the database more than the work it watches.
    while unfinished(&scratch.db, target.backend).await? {
        ensure!(Instant::now() < deadline, "tasks did not finish in 300 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = started.elapsed();
    ensure!(
        completed(&scratch.db, target.backend).await? == i64::try_from(count)?,
        "tasks did not all complete"
    );
    stop_executors(pool).await?;
    target.drop_scratch(scratch).await?;
    Ok(took)
}

/// The statements the executor needs per batch of tasks, by hand: claim up to 100 ready
/// executions, then complete and close them with one statement.
async fn tasks_floor(target: &Target, count: usize, loops: usize) -> Result<Duration> {
    let scratch = target.scratch().await?;
    enqueue_noops(&SeaOrmTaskExecutionStorage::new(scratch.db.clone()), count).await?;
    let backend = target.backend;
    let started = Instant::now();
    let mut handles = Vec::new();
    for l in 0..loops {
        let db = scratch.db.clone();
        handles.push(tokio::spawn(async move {
            tasks_floor_loop(db, backend, format!("floor-{l}")).await
        }));
    }
    for h in handles {
        h.await??;
    }
    let took = started.elapsed();
    ensure!(
        completed(&scratch.db, backend).await? == i64::try_from(count)?,
        "floor left tasks behind"
    );
    target.drop_scratch(scratch).await?;
    Ok(took)
}

/// An execution taken by a floor's claim.
struct FloorClaim {
    id: String,
    task_id: String,
    parent: Option<String>,
}

/// The claim statement(s) of the executor, by hand: up to 100 due `ready` executions.
async fn claim_floor(
    db: &DatabaseConnection,
    backend: DbBackend,
    executor: &str,
) -> Result<Vec<FloorClaim>> {
    let now = now_ms();
    let set = "status = 'running', executor_id = $1, started_at = $2, expires_at = $3 + timeout_ms, \
               fencing_token = fencing_token + 1, updated_at = $4";
    let rows = match backend {
        DbBackend::Postgres => {
            db.query_all_raw(stmt(
                backend,
                &format!(
                    "WITH picked AS MATERIALIZED (SELECT execution_id FROM durable_task_executions WHERE status = 'ready' \
                     AND start_at <= $5 ORDER BY start_at, execution_id LIMIT 100 FOR UPDATE SKIP LOCKED) \
                     UPDATE durable_task_executions t SET {set} FROM picked WHERE t.execution_id = picked.execution_id \
                     RETURNING t.execution_id, t.task_id, t.parent_execution_id"
                ),
                vec![executor.into(), now.into(), now.into(), now.into(), now.into()],
            ))
            .await?
        }
        DbBackend::Sqlite => {
            let txn = db.begin_with_options(write_options(backend)).await?;
            let rows = txn
                .query_all_raw(stmt(
                    backend,
                    &format!(
                        "UPDATE durable_task_executions SET {set} WHERE execution_id IN (SELECT execution_id FROM \
                         durable_task_executions WHERE status = 'ready' AND start_at <= $5 ORDER BY start_at, execution_id \
                         LIMIT 100) RETURNING execution_id, task_id, parent_execution_id"
                    ),
                    vec![executor.into(), now.into(), now.into(), now.into(), now.into()],
                ))
                .await?;
            txn.commit().await?;
            rows
        }
        _ => {
            let txn = db.begin_with_options(write_options(backend)).await?;
            let picked = txn
                .query_all_raw(stmt(
                    backend,
                    "SELECT execution_id FROM durable_task_executions WHERE status = 'ready' AND start_at <= $1 \
                     ORDER BY start_at, execution_id LIMIT 100 FOR UPDATE SKIP LOCKED",
                    vec![now.into()],
                ))
                .await?;
            if picked.is_empty() {
                txn.commit().await?;
                return Ok(Vec::new());
            }
            let ids: Vec<String> = picked.iter().map(|r| r.try_get("", "execution_id")).collect::<Result<_, _>>()?;
            let list = ids.iter().map(|id| format!("'{id}'")).collect::<Vec<_>>().join(", ");
            txn.execute_raw(stmt(
                backend,
                &format!("UPDATE durable_task_executions SET {set} WHERE execution_id IN ({list})"),
                vec![executor.into(), now.into(), now.into(), now.into()],
            ))
            .await?;
            let rows = txn
                .query_all_raw(stmt(
                    backend,
                    &format!("SELECT execution_id, task_id, parent_execution_id FROM durable_task_executions WHERE execution_id IN ({list})"),
                    vec![],
                ))
                .await?;
            txn.commit().await?;
            rows
        }
    };
    rows.iter()
        .map(|r| {
            Ok(FloorClaim {
                id: r.try_get("", "execution_id")?,
                task_id: r.try_get("", "task_id")?,
                parent: r.try_get("", "parent_execution_id")?,
            })
        })
        .collect()
}

/// `'a', 'b', …`: generated ids as an SQL list.
fn id_list<'a>(ids: impl IntoIterator<Item = &'a str>) -> String {
    ids.into_iter()
        .map(|id| format!("'{id}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Completes (and closes) the claimed executions `ids` in one statement, as the executor's
/// result writer does.
const COMPLETE_FLOOR: &str = "UPDATE durable_task_executions SET status = 'completed', is_finished = TRUE, \
     run_output = 'null', output = 'null', error = NULL, finished_at = $1, expires_at = NULL, \
     executor_id = NULL, is_closed = TRUE, closed_at = $2, updated_at = $3 \
     WHERE execution_id IN ({list}) AND status = 'running'";

/// Completes and closes the claimed executions `ids` with [`COMPLETE_FLOOR`].
async fn complete_floor<'a, C: ConnectionTrait>(
    conn: &C,
    backend: DbBackend,
    ids: impl IntoIterator<Item = &'a str>,
    now: i64,
) -> Result<()> {
    conn.execute_raw(stmt(
        backend,
        &COMPLETE_FLOOR.replace("{list}", &id_list(ids)),
        vec![now.into(), now.into(), now.into()],
    ))
    .await?;
    Ok(())
}

async fn tasks_floor_loop(
    db: DatabaseConnection,
    backend: DbBackend,
    executor: String,
) -> Result<()> {
    loop {
        let claimed = claim_floor(&db, backend, &executor).await?;
        if claimed.is_empty() {
            return Ok(());
        }
        complete_floor(
            &db,
            backend,
            claimed.iter().map(|c| c.id.as_str()),
            now_ms(),
        )
        .await?;
    }
}

// ---------------------------------------------------------------------------------------------
// Parents and children (W4)

/// `parents` parents with `children` no-op children and a no-op finalize each, run by
/// `executors` executors; the time from the first enqueue until every parent completed.
async fn parent_child_library(
    target: &Target,
    parents: usize,
    children: u32,
    executors: usize,
) -> Result<Duration> {
    let scratch = target.scratch().await?;
    let child = TaskDefinition::new("pc_child", |_ctx, ()| async { Ok::<_, TaskError>(()) });
    let finalize = TaskDefinition::new("pc_finalize", |_ctx, _input: FinalizeInput<u32>| async {
        Ok::<_, TaskError>(())
    });
    let spawn = child.clone();
    let parent = TaskDefinition::parent("pc_parent", move |_ctx, count: u32| {
        let spawn = spawn.clone();
        async move {
            let mut outcome = ParentOutcome::new(count);
            for _ in 0..count {
                outcome = outcome.child(&spawn, &());
            }
            Ok::<_, TaskError>(outcome)
        }
    })
    .finalize(&finalize);
    let pool = start_executors(target, &scratch.url, executors, |e| {
        e.register(&parent)?;
        e.register(&child)
    })
    .await?;
    let started = Instant::now();
    let mut ids = Vec::with_capacity(parents);
    for _ in 0..parents {
        ids.push(
            pool[0]
                .0
                .enqueue(&parent, &children)
                .await?
                .execution_id()
                .to_owned(),
        );
    }
    let list = ids
        .iter()
        .map(|id| format!("'{id}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let deadline = Instant::now() + Duration::from_secs(600);
    // The parents by primary key: the watching costs the database next to nothing.
    let probe = format!(
        "SELECT COUNT(*) AS n FROM durable_task_executions WHERE execution_id IN ({list}) AND is_finished = TRUE"
    );
    loop {
        let row = scratch
            .db
            .query_one_raw(stmt(target.backend, &probe, vec![]))
            .await?
            .context("no count")?;
        if row.try_get::<i64>("", "n")? == i64::try_from(parents)? {
            break;
        }
        ensure!(Instant::now() < deadline, "parents did not finish in 600 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = started.elapsed();
    let done = scratch
        .db
        .query_one_raw(stmt(
            target.backend,
            &format!(
                "SELECT COUNT(*) AS n FROM durable_task_executions WHERE execution_id IN ({list}) AND status = 'completed'"
            ),
            vec![],
        ))
        .await?
        .context("no count")?;
    ensure!(
        done.try_get::<i64>("", "n")? == i64::try_from(parents)?,
        "parents did not all complete"
    );
    stop_executors(pool).await?;
    target.drop_scratch(scratch).await?;
    Ok(took)
}

/// The columns a floor gives a new execution (the rest keep their defaults).
const EXECUTION_COLUMNS: &str = "execution_id, task_id, parent_task_id, parent_execution_id, \
     index_in_parent, is_finalize, retry_options, timeout_ms, status, input, start_at, \
     created_at, updated_at";

/// A new `ready` execution as a row of a floor's multi-row insert.
fn execution_row(
    id: &str,
    task: &str,
    parent: Option<&str>,
    index: u32,
    finalize: bool,
    now: i64,
) -> String {
    let (parent_task, parent) = match parent {
        Some(p) => ("'pc_parent'".to_owned(), format!("'{p}'")),
        None => ("NULL".to_owned(), "NULL".to_owned()),
    };
    let finalize = if finalize { "TRUE" } else { "FALSE" };
    format!(
        "('{id}', '{task}', {parent_task}, {parent}, {index}, {finalize}, '{{}}', 60000, 'ready', \
         'null', {now}, {now}, {now})"
    )
}

/// Inserts the rows of [`execution_row`] with one statement.
async fn insert_floor_rows<C: ConnectionTrait>(
    conn: &C,
    rows: impl Iterator<Item = String>,
) -> Result<()> {
    let rows = rows.collect::<Vec<_>>().join(", ");
    conn.execute_unprepared(&format!(
        "INSERT INTO durable_task_executions ({EXECUTION_COLUMNS}) VALUES {rows}"
    ))
    .await?;
    Ok(())
}

/// W4 by hand: the statements the executors need, issued by `executors` minimal loops (see
/// [`parent_child_floor_loop`]); the time from the insert of the parents until every parent
/// completed.
async fn parent_child_floor(
    target: &Target,
    parents: usize,
    children: u32,
    executors: usize,
) -> Result<Duration> {
    let scratch = target.scratch().await?;
    let backend = target.backend;
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let now = now_ms();
    insert_floor_rows(
        &scratch.db,
        (0..parents)
            .map(|i| execution_row(&format!("fp_{i:06}"), "pc_parent", None, 0, false, now)),
    )
    .await?;
    let mut handles = Vec::new();
    for l in 0..executors {
        let (db, done) = (scratch.db.clone(), Arc::clone(&done));
        handles.push(tokio::spawn(async move {
            parent_child_floor_loop(db, backend, format!("floor-{l}"), children, parents, done)
                .await
        }));
    }
    for h in handles {
        h.await??;
    }
    let took = started.elapsed();
    let row = scratch
        .db
        .query_one_raw(stmt(
            backend,
            "SELECT COUNT(*) AS n FROM durable_task_executions WHERE task_id = 'pc_parent' AND status = 'completed'",
            vec![],
        ))
        .await?
        .context("no count")?;
    ensure!(
        row.try_get::<i64>("", "n")? == i64::try_from(parents)?,
        "floor left parents behind"
    );
    target.drop_scratch(scratch).await?;
    Ok(took)
}

/// One executor of [`parent_child_floor`], until `parents` parents completed: claim up to 100
/// ready executions, then, each kind in one transaction,
/// - parents: insert their children (one statement per parent) and mark them waiting;
/// - children: complete and close them, record them for their parents and add to the parents'
///   counters (parents in id order);
/// - finalize executions: complete and close them, and complete and close their parents;
///
/// then take up to 100 parents whose children all finished (`FOR UPDATE SKIP LOCKED`), mark
/// them waiting for their finalize and insert it. An idle round sleeps 1 ms.
async fn parent_child_floor_loop(
    db: DatabaseConnection,
    backend: DbBackend,
    executor: String,
    children: u32,
    parents: usize,
    done: Arc<std::sync::atomic::AtomicUsize>,
) -> Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    while done.load(Relaxed) < parents {
        let claimed = claim_floor(&db, backend, &executor).await?;
        let now = now_ms();
        let of_task = |task: &str| -> Vec<&FloorClaim> {
            claimed.iter().filter(|c| c.task_id == task).collect()
        };
        let (spawning, finished, finalizes) = (
            of_task("pc_parent"),
            of_task("pc_child"),
            of_task("pc_finalize"),
        );
        if !spawning.is_empty() {
            let txn = db.begin_with_options(write_options(backend)).await?;
            for p in &spawning {
                insert_floor_rows(
                    &txn,
                    (0..children).map(|i| {
                        execution_row(
                            &format!("{}_c{i:04}", p.id),
                            "pc_child",
                            Some(&p.id),
                            i,
                            false,
                            now,
                        )
                    }),
                )
                .await?;
            }
            txn.execute_raw(stmt(
                backend,
                &format!(
                    "UPDATE durable_task_executions SET status = 'waiting_for_children_tasks', \
                     children_count = {children}, executor_id = NULL, expires_at = NULL, updated_at = $1 \
                     WHERE execution_id IN ({})",
                    id_list(spawning.iter().map(|c| c.id.as_str()))
                ),
                vec![now.into()],
            ))
            .await?;
            txn.commit().await?;
        }
        if !finished.is_empty() {
            let txn = db.begin_with_options(write_options(backend)).await?;
            complete_floor(&txn, backend, finished.iter().map(|c| c.id.as_str()), now).await?;
            let mut counts: std::collections::BTreeMap<&str, usize> =
                std::collections::BTreeMap::new();
            let records = finished
                .iter()
                .filter_map(|c| {
                    let parent = c.parent.as_deref()?;
                    *counts.entry(parent).or_default() += 1;
                    Some(format!(
                        "('{parent}', '{}', 'pc_child', 0, 'completed', 'null', {now})",
                        c.id
                    ))
                })
                .collect::<Vec<_>>()
                .join(", ");
            txn.execute_unprepared(&format!(
                "INSERT INTO durable_finished_child_task_executions (parent_execution_id, \
                 child_execution_id, child_task_id, child_index, status, output, created_at) VALUES {records}"
            ))
            .await?;
            for (parent, n) in counts {
                txn.execute_unprepared(&format!(
                    "UPDATE durable_task_executions SET finished_children_count = finished_children_count + {n} \
                     WHERE execution_id = '{parent}'"
                ))
                .await?;
            }
            txn.commit().await?;
        }
        if !finalizes.is_empty() {
            let txn = db.begin_with_options(write_options(backend)).await?;
            complete_floor(&txn, backend, finalizes.iter().map(|c| c.id.as_str()), now).await?;
            let list = id_list(finalizes.iter().filter_map(|c| c.parent.as_deref()));
            txn.execute_raw(stmt(
                backend,
                &format!(
                    "UPDATE durable_task_executions SET status = 'completed', is_finished = TRUE, \
                     output = 'null', finished_at = $1, is_closed = TRUE, closed_at = $2, updated_at = $3 \
                     WHERE execution_id IN ({list}) AND status = 'waiting_for_finalize_task'"
                ),
                vec![now.into(), now.into(), now.into()],
            ))
            .await?;
            txn.commit().await?;
            done.fetch_add(finalizes.len(), Relaxed);
        }
        let txn = db.begin_with_options(write_options(backend)).await?;
        let mut pick = "SELECT execution_id FROM durable_task_executions WHERE status = 'waiting_for_children_tasks' \
                        AND finished_children_count >= children_count ORDER BY updated_at, execution_id LIMIT 100"
            .to_owned();
        if backend != DbBackend::Sqlite {
            pick.push_str(" FOR UPDATE SKIP LOCKED");
        }
        let waiting: Vec<String> = txn
            .query_all_raw(stmt(backend, &pick, vec![]))
            .await?
            .iter()
            .map(|r| r.try_get("", "execution_id"))
            .collect::<Result<_, _>>()?;
        if !waiting.is_empty() {
            txn.execute_raw(stmt(
                backend,
                &format!(
                    "UPDATE durable_task_executions SET status = 'waiting_for_finalize_task', updated_at = $1 \
                     WHERE execution_id IN ({})",
                    id_list(waiting.iter().map(String::as_str))
                ),
                vec![now.into()],
            ))
            .await?;
            insert_floor_rows(
                &txn,
                waiting.iter().map(|p| {
                    execution_row(&format!("{p}_fin"), "pc_finalize", Some(p), 0, true, now)
                }),
            )
            .await?;
        }
        txn.commit().await?;
        if claimed.is_empty() && waiting.is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Prepare (W5)

fn job_record(i: u64) -> serde_json::Value {
    json!({ "id": i, "name": format!("record {i}") })
}

/// `prepare` of a job of `records` records in batches of `batch_size`.
async fn prepare_library(target: &Target, records: u64, batch_size: u32) -> Result<Duration> {
    let scratch = target.scratch().await?;
    let store = SeaOrmStateStore::new(scratch.db.clone());
    let started = Instant::now();
    prepare(
        &store,
        "job",
        JobConfig::new(batch_size),
        (0..records).map(job_record),
    )
    .await?;
    let took = started.elapsed();
    target.drop_scratch(scratch).await?;
    Ok(took)
}

/// What `prepare` writes, by hand: the job row, one multi-row insert-if-absent of the records
/// of each batch (10 bound values a row, JSON cast from text on PostgreSQL as the library
/// writes it), the batch rows, the job's start.
async fn prepare_floor(target: &Target, records: u64, batch_size: u32) -> Result<Duration> {
    let scratch = target.scratch().await?;
    let backend = target.backend;
    let db = &scratch.db;
    let json_value = |v: serde_json::Value| -> (Value, &'static str) {
        if backend == DbBackend::Postgres {
            (v.to_string().into(), "CAST(? AS json)")
        } else {
            (v.into(), "?")
        }
    };
    let conflict = match backend {
        DbBackend::MySql => " ON DUPLICATE KEY UPDATE job_id = job_id",
        _ => " ON CONFLICT (job_id, record_index) DO NOTHING",
    };
    let started = Instant::now();
    let now = now_ms();
    let config = if backend == DbBackend::Postgres {
        "CAST($2 AS json)"
    } else {
        "$2"
    };
    db.execute_raw(stmt(
        backend,
        &format!(
            "INSERT INTO batchactions_jobs (id, status, config, batches, total_records, distributed, \
             created_at, updated_at) VALUES ($1, 'CREATED', {config}, '[]', 0, TRUE, $3, $4)"
        ),
        vec![
            "job".into(),
            json!({ "batchSize": batch_size }).to_string().into(),
            now.into(),
            now.into(),
        ],
    ))
    .await?;
    let size = u64::from(batch_size);
    let mut batches = Vec::new();
    let mut first = 0;
    while first < records {
        let last = (first + size).min(records) - 1;
        let batch_id = format!("job-b{}", batches.len());
        // Split as the library splits a batch: by the bytes of the values, so that each
        // statement fits one TCP segment (see `statement_bytes`).
        let mut start = first;
        while start <= last {
            let mut sql = String::from(
                "INSERT INTO batchactions_records (job_id, record_index, batch_id, status, raw, \
                 parsed, errors, processing_error, retry_count, updated_at) VALUES ",
            );
            let mut values: Vec<Value> = Vec::new();
            let mut bytes = 0;
            let mut i = start;
            while i <= last {
                let record = job_record(i);
                let row_bytes =
                    2 * record.to_string().len() + 2 + "job".len() + batch_id.len() + 64;
                if i > start && bytes + row_bytes > statement_bytes(backend) {
                    break;
                }
                bytes += row_bytes;
                let (raw, cast) = json_value(record.clone());
                let (parsed, _) = json_value(record);
                let (errors, _) = json_value(json!([]));
                if i > start {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("(?, ?, ?, ?, {cast}, {cast}, {cast}, ?, ?, ?)"));
                values.extend([
                    "job".into(),
                    i64::try_from(i)?.into(),
                    batch_id.clone().into(),
                    "pending".into(),
                    raw,
                    parsed,
                    errors,
                    Option::<String>::None.into(),
                    0_i32.into(),
                    now_ms().into(),
                ]);
                i += 1;
            }
            sql.push_str(conflict);
            db.execute_raw(placeholders(backend, &sql, values)).await?;
            start = i;
        }
        batches.push((batch_id, first, last));
        first = last + 1;
    }
    for chunk in batches.chunks(500) {
        let mut sql = String::from(
            "INSERT INTO batchactions_batches (id, job_id, batch_index, status, record_start_index, \
             record_end_index, created_at, updated_at) VALUES ",
        );
        let mut values: Vec<Value> = Vec::new();
        for (n, (id, start, end)) in chunk.iter().enumerate() {
            if n > 0 {
                sql.push_str(", ");
            }
            sql.push_str("(?, ?, ?, 'PENDING', ?, ?, ?, ?)");
            let index = id.rsplit('b').next().context("batch id")?.parse::<i32>()?;
            values.extend([
                id.clone().into(),
                "job".into(),
                index.into(),
                i64::try_from(*start)?.into(),
                i64::try_from(*end)?.into(),
                now.into(),
                now.into(),
            ]);
        }
        db.execute_raw(placeholders(backend, &sql, values)).await?;
    }
    db.execute_raw(stmt(
        backend,
        "UPDATE batchactions_jobs SET status = 'PROCESSING', total_records = $1, started_at = $2, \
         updated_at = $3 WHERE id = $4 AND status = 'CREATED'",
        vec![
            i64::try_from(records)?.into(),
            now.into(),
            now.into(),
            "job".into(),
        ],
    ))
    .await?;
    let took = started.elapsed();
    target.drop_scratch(scratch).await?;
    Ok(took)
}

/// The bytes of values the library puts in one multi-row statement on `backend`: PostgreSQL
/// 12 KiB and MySQL 48 KiB, so that each statement fits one TCP segment (sqlx 0.9.0 does not set
/// `TCP_NODELAY`); SQLite 2 MiB.
fn statement_bytes(backend: DbBackend) -> usize {
    match backend {
        DbBackend::Postgres => 12 * 1024,
        DbBackend::MySql => 48 * 1024,
        _ => 2 * 1024 * 1024,
    }
}

/// A statement with `?` placeholders, numbered `$1, $2, …` for PostgreSQL.
fn placeholders(backend: DbBackend, sql: &str, values: Vec<Value>) -> Statement {
    if backend != DbBackend::Postgres {
        return Statement::from_sql_and_values(backend, sql, values);
    }
    let mut out = String::with_capacity(sql.len() + sql.len() / 2);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    Statement::from_sql_and_values(backend, out, values)
}

// ---------------------------------------------------------------------------------------------
// Scale (--scale)

/// Resets the process's peak resident set (Linux: `5` into `/proc/self/clear_refs`), so that
/// [`peak_memory_mib`] reports the peak of what runs next. Elsewhere it does nothing.
fn reset_peak_memory() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak resident set in MiB since the last [`reset_peak_memory`] (Linux
/// `VmHWM`), if known.
fn peak_memory_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

async fn scale(target: &Target, quick: bool) -> Result<()> {
    println!("scale: ours only; throughput and peak memory per size (flat = linear)");
    let sizes: &[u64] = if quick {
        &[2_000, 10_000]
    } else {
        &[10_000, 100_000, 1_000_000]
    };
    let mut first: Option<f64> = None;
    for &records in sizes {
        let shape = JobShape {
            records,
            batch_size: 500,
            workers: 4,
        };
        reset_peak_memory();
        let took = job_library(target, &shape).await?;
        let r = rate(f64::from(u32::try_from(records)?), took);
        let base = *first.get_or_insert(r);
        println!(
            "W2 job {records:>9} records, batch 500, 4 workers {:>9.3} s {r:>11.0} rec/s  {:>6.2} × smallest   peak {:>7.1} MiB",
            took.as_secs_f64(),
            r / base,
            peak_memory_mib().unwrap_or(f64::NAN)
        );
    }
    let sizes: &[usize] = if quick {
        &[1_000, 5_000]
    } else {
        &[10_000, 100_000]
    };
    let mut first: Option<f64> = None;
    for &count in sizes {
        reset_peak_memory();
        let took = tasks_library(target, count, 1).await?;
        let r = rate(f64::from(u32::try_from(count)?), took);
        let base = *first.get_or_insert(r);
        println!(
            "W3 {count:>9} no-op tasks queued, 1 executor      {:>9.3} s {r:>11.0} task/s {:>6.2} × smallest   peak {:>7.1} MiB",
            took.as_secs_f64(),
            r / base,
            peak_memory_mib().unwrap_or(f64::NAN)
        );
    }
    Ok(())
}

/// Runs `ours` and `floor` alternately `repeat` times; the median time of each.
async fn median_pair<A, B, FA, FB>(repeat: usize, ours: A, floor: B) -> Result<(Duration, Duration)>
where
    A: Fn() -> FA,
    B: Fn() -> FB,
    FA: std::future::Future<Output = Result<Duration>>,
    FB: std::future::Future<Output = Result<Duration>>,
{
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..repeat.max(1) {
        a.push(ours().await?);
        b.push(floor().await?);
    }
    a.sort();
    b.sort();
    Ok((a[a.len() / 2], b[b.len() / 2]))
}

// ---------------------------------------------------------------------------------------------
// Report

struct Row {
    workload: String,
    items: f64,
    unit: &'static str,
    ours: Duration,
    floor: Duration,
    target: String,
}

fn rate(items: f64, d: Duration) -> f64 {
    items / d.as_secs_f64().max(1e-9)
}

fn print_row(row: &Row) {
    println!(
        "{:<44} {:>9.3} s {:>11.0} {}/s   floor {:>8.3} s {:>11.0}/s   ratio {:>5.2}   target {}",
        row.workload,
        row.ours.as_secs_f64(),
        rate(row.items, row.ours),
        row.unit,
        row.floor.as_secs_f64(),
        rate(row.items, row.floor),
        row.floor.as_secs_f64() / row.ours.as_secs_f64().max(1e-9),
        row.target,
    );
}

/// Throughput of batch jobs and durable tasks beside a raw-SQL floor (see the file's docs).
#[derive(Parser)]
#[command(name = "throughput")]
struct Args {
    /// Admin URL of a PostgreSQL or MySQL server, where each run creates a scratch database
    /// (none, or an SQLite URL: an SQLite file in a temporary directory).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    database_url: Option<String>,
    /// The workloads to run, comma-separated.
    #[arg(
        long = "workload",
        value_name = "LIST",
        value_delimiter = ',',
        value_parser = ["w1", "w2", "w3", "w4", "w5", "w6"],
        default_value = "w1,w2,w3,w4,w5,w6"
    )]
    workloads: Vec<String>,
    /// Shrinks every workload to a smoke run of a few seconds.
    #[arg(long)]
    quick: bool,
    /// Runs W2 and W3 at growing sizes and prints throughput and peak memory per size.
    #[arg(long)]
    scale: bool,
    /// Runs per figure, of which the median is shown (default: 3, or 1 with `--quick`).
    #[arg(long, value_name = "N")]
    repeat: Option<usize>,
    /// Passed by `cargo bench` to every bench binary; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let Args {
        database_url,
        workloads,
        quick,
        scale: scale_mode,
        repeat,
        bench: _,
    } = Args::parse();
    // SQLite needs no admin URL: it runs on a file of its own.
    let url = database_url.filter(|u| !u.is_empty() && !u.starts_with("sqlite"));
    let repeat = repeat
        .filter(|&n| n > 0)
        .unwrap_or(if quick { 1 } else { 3 });
    let target = Target::new(url)?;
    let pg = target.backend == DbBackend::Postgres;
    println!(
        "sea-orm-durable throughput on {}{}; each workload beside its raw-SQL floor (ratio = floor time / ours)",
        target.label(),
        if quick { " (quick smoke run)" } else { "" }
    );
    if cfg!(debug_assertions) {
        println!(
            "debug build: figures are far below a release build's (`cargo bench` builds release)"
        );
    }
    if scale_mode {
        return scale(&target, quick).await;
    }
    let mut rows = Vec::new();
    for workload in &workloads {
        match workload.as_str() {
            "w1" => {
                let shape = JobShape {
                    records: if quick { 400 } else { 2000 },
                    batch_size: 10,
                    workers: 4,
                };
                let (ours, floor) = median_pair(
                    repeat,
                    || job_library(&target, &shape),
                    || job_floor(&target, &shape),
                )
                .await?;
                let row = Row {
                    workload: format!("W1 job {}×{} records, 4 workers", shape.records / 10, 10),
                    items: f64::from(u32::try_from(shape.records)?),
                    unit: "rec",
                    ours,
                    floor,
                    target: if pg {
                        "≤ 0.4 s".to_owned()
                    } else {
                        "—".to_owned()
                    },
                };
                print_row(&row);
                rows.push(row);
            }
            "w2" => {
                let shape = JobShape {
                    records: if quick { 10_000 } else { 100_000 },
                    batch_size: 500,
                    workers: 4,
                };
                let (ours, floor) = median_pair(
                    repeat,
                    || job_library(&target, &shape),
                    || job_floor(&target, &shape),
                )
                .await?;
                let goal = match target.backend {
                    DbBackend::Postgres => "≥ 50 000 rec/s",
                    DbBackend::MySql => "≥ 30 000 rec/s",
                    _ => "≥ 20 000 rec/s",
                };
                let row = Row {
                    workload: format!("W2 job {} records, batch 500, 4 workers", shape.records),
                    items: f64::from(u32::try_from(shape.records)?),
                    unit: "rec",
                    ours,
                    floor,
                    target: goal.to_owned(),
                };
                print_row(&row);
                rows.push(row);
            }
            "w3" => {
                let count = if quick { 2000 } else { 10_000 };
                for executors in [1, 3] {
                    let (ours, floor) = median_pair(
                        repeat,
                        || tasks_library(&target, count, executors),
                        || tasks_floor(&target, count, executors),
                    )
                    .await?;
                    // Counted during the last of our runs.
                    let statements = STATEMENTS.load(std::sync::atomic::Ordering::Relaxed);
                    let row = Row {
                        workload: format!("W3 {count} no-op tasks, {executors} executor(s)"),
                        items: f64::from(u32::try_from(count)?),
                        unit: "task",
                        ours,
                        floor,
                        target: if pg {
                            "≥ 10 000 task/s, ratio ≥ 0.7".to_owned()
                        } else {
                            "—".to_owned()
                        },
                    };
                    print_row(&row);
                    println!(
                        "   ↳ {:.2} statements per task sent by the executor(s) (BEGIN/COMMIT not counted)",
                        f64::from(u32::try_from(statements)?) / f64::from(u32::try_from(count)?)
                    );
                    rows.push(row);
                }
            }
            "w4" => {
                let (parents, children) = if quick { (10, 20) } else { (100, 100) };
                let executions = parents * (usize::try_from(children)? + 2);
                // One warm-up run, then the measured ones.
                parent_child_library(&target, parents, children, 3).await?;
                let (ours, floor) = median_pair(
                    repeat,
                    || parent_child_library(&target, parents, children, 3),
                    || parent_child_floor(&target, parents, children, 3),
                )
                .await?;
                // Counted during the last of our runs.
                let statements = STATEMENTS.load(std::sync::atomic::Ordering::Relaxed);
                let row = Row {
                    workload: format!(
                        "W4 {parents} parents × {children} children + finalize, 3 executors"
                    ),
                    items: f64::from(u32::try_from(executions)?),
                    unit: "exec",
                    ours,
                    floor,
                    target: if pg {
                        "≥ 7 000 exec/s"
                    } else {
                        "≥ 5 000 exec/s"
                    }
                    .to_owned(),
                };
                print_row(&row);
                println!(
                    "   ↳ {:.2} statements per execution sent by the executors, idle polls included (BEGIN/COMMIT not counted)",
                    f64::from(u32::try_from(statements)?) / f64::from(u32::try_from(executions)?)
                );
                rows.push(row);
            }
            "w5" => {
                let records: u64 = if quick { 10_000 } else { 100_000 };
                let (ours, floor) = median_pair(
                    repeat,
                    || prepare_library(&target, records, 500),
                    || prepare_floor(&target, records, 500),
                )
                .await?;
                let row = Row {
                    workload: format!("W5 prepare {records} records, batch 500"),
                    items: f64::from(u32::try_from(records)?),
                    unit: "rec",
                    ours,
                    floor,
                    target: if pg {
                        "≥ 50 000 rec/s, ratio ≥ 0.7".to_owned()
                    } else {
                        "—".to_owned()
                    },
                };
                print_row(&row);
                rows.push(row);
            }
            "w6" => {
                let (unserved, claims) = if quick { (20_000, 20) } else { (200_000, 200) };
                // The floor: the same claims on a table holding no backlog.
                let mut backlog = Vec::with_capacity(repeat);
                let mut empty = Vec::with_capacity(repeat);
                for _ in 0..repeat {
                    backlog.push(claims_beside_backlog(&target, unserved, claims).await?);
                    empty.push(claims_beside_backlog(&target, 0, claims).await?);
                }
                let median = |runs: &[(Duration, Duration)], idle: bool| {
                    let mut picked: Vec<Duration> = runs
                        .iter()
                        .map(|&(i, w)| if idle { i } else { w })
                        .collect();
                    picked.sort();
                    picked[picked.len() / 2]
                };
                for (what, idle) in [("idle claim", true), ("claim of 10", false)] {
                    let ours = median(&backlog, idle);
                    let floor = median(&empty, idle);
                    println!(
                        "W6 {what} beside {unserved} unserved ready rows   p50 {:>8.3} ms   without them {:>8.3} ms   ratio {:>5.2}   target ≤ 8 ms, ratio ≥ 0.5",
                        ours.as_secs_f64() * 1e3,
                        floor.as_secs_f64() * 1e3,
                        floor.as_secs_f64() / ours.as_secs_f64().max(1e-9),
                    );
                }
            }
            other => bail!("unknown workload {other}"),
        }
    }
    println!(
        "summary: {} workloads on {} ({} rows beside a floor)",
        workloads.len(),
        target.label(),
        rows.len()
    );
    Ok(())
}

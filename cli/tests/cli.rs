//! The command line end to end: data seeded with the library (an executor running tasks that
//! fail, a prepared job whose worker fails records), then the built binary run against the same
//! database, on SQLite, PostgreSQL and MariaDB. Assertions read its `--json` output and the
//! database afterwards.
//!
//! PostgreSQL and MariaDB come from admin URLs in `DATABASE_URL_POSTGRES` and
//! `DATABASE_URL_MYSQL`; each test creates a uniquely named database there and drops it
//! afterwards. Without a URL the server's tests are ignored (see `build.rs`), unless
//! `REQUIRE_ALL_BACKENDS=1`, which turns a missing server into a failure.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection};
use sea_orm_durable::batch::store::DistributedStateStore;
use sea_orm_durable::batch::{JobStatus, ProcessError, RecordContext};
use sea_orm_durable::migration::{Migrator, MigratorTrait};
use sea_orm_durable::task::storage::TaskExecutionStorage;
use sea_orm_durable::task::{
    MissedTicks, ScheduleSpec, TaskExecutionStatus, TaskSchedule, WaitOptions,
};
use sea_orm_durable::{
    EnqueueOptions, Executor, ExecutorOptions, JobConfig, SeaOrmStateStore,
    SeaOrmTaskExecutionStorage, TaskContext, TaskDefinition, TaskError, WorkerOptions, prepare,
    run_worker,
};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Databases

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
    MySql,
}

/// A fresh, migrated database of one test; a server database is dropped with it.
struct TestDb {
    db: DatabaseConnection,
    url: String,
    backend: Backend,
    admin: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!(
        "sod_cli_test_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos % 100_000
    )
}

/// `url` with its database (the path) replaced by `name`.
fn with_database(url: &str, name: &str) -> anyhow::Result<String> {
    let scheme_end = url.find("://").context("database URL has no scheme")? + 3;
    let (base, query) = url.find('?').map_or((url, ""), |q| (&url[..q], &url[q..]));
    let path_start = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    Ok(format!("{}/{name}{query}", &base[..path_start]))
}

fn options(backend: Backend, url: &str) -> ConnectOptions {
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.max_connections(8)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(30))
        .sqlx_logging(false);
    if backend == Backend::Sqlite {
        opts.map_sqlx_sqlite_opts(|o| {
            o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(10))
        });
    }
    opts
}

impl TestDb {
    async fn create(backend: Backend) -> anyhow::Result<Option<TestDb>> {
        let name = unique_name();
        let var = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some("DATABASE_URL_POSTGRES"),
            Backend::MySql => Some("DATABASE_URL_MYSQL"),
        };
        let (url, admin, dir) = match var {
            None => {
                let dir = tempfile::tempdir()?;
                let path = dir.path().join(format!("{name}.db"));
                (
                    format!("sqlite://{}?mode=rwc", path.display()),
                    None,
                    Some(dir),
                )
            }
            Some(var) => {
                let Ok(admin_url) = std::env::var(var) else {
                    if std::env::var("REQUIRE_ALL_BACKENDS").is_ok_and(|v| v == "1") {
                        bail!("{var} is not set and REQUIRE_ALL_BACKENDS=1");
                    }
                    eprintln!("skipped: {var} is not set");
                    return Ok(None);
                };
                let server = Database::connect(options(backend, &admin_url))
                    .await
                    .with_context(|| format!("connecting to {var}"))?;
                server
                    .execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await?;
                server.close().await?;
                (
                    with_database(&admin_url, &name)?,
                    Some((admin_url, name)),
                    None,
                )
            }
        };
        let db = Database::connect(options(backend, &url)).await?;
        Migrator::up(&db, None).await?;
        Ok(Some(TestDb {
            db,
            url,
            backend,
            admin,
            _dir: dir,
        }))
    }

    async fn count(&self, table: &str) -> anyhow::Result<i64> {
        let row = self
            .db
            .query_one_raw(sea_orm::Statement::from_string(
                self.db.get_database_backend(),
                format!("SELECT COUNT(*) AS n FROM {table}"),
            ))
            .await?
            .context("no count row")?;
        Ok(row.try_get("", "n")?)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((admin_url, name)) = self.admin.clone() else {
            return;
        };
        let backend = self.backend;
        // Drop runs inside the test's runtime, which cannot block on async work.
        let dropped = std::thread::spawn(move || -> anyhow::Result<()> {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(async {
                    let server = Database::connect(options(backend, &admin_url)).await?;
                    let force = if backend == Backend::Postgres {
                        " WITH (FORCE)"
                    } else {
                        ""
                    };
                    server
                        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name}{force}"))
                        .await?;
                    server.close().await?;
                    Ok(())
                })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop a test database");
        }
    }
}

async fn run<F, Fut>(backend: Backend, test: F) -> anyhow::Result<()>
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    match TestDb::create(backend).await? {
        Some(db) => test(db).await,
        None => Ok(()),
    }
}

/// One test per backend for each listed async fn taking a [`TestDb`].
macro_rules! per_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() -> anyhow::Result<()> {
                super::run(super::Backend::Sqlite, super::$name).await
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[cfg_attr(durable_no_postgres, ignore = "DATABASE_URL_POSTGRES is not set")]
            async fn $name() -> anyhow::Result<()> {
                super::run(super::Backend::Postgres, super::$name).await
            })*
        }
        mod mysql {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[cfg_attr(durable_no_mysql, ignore = "DATABASE_URL_MYSQL is not set")]
            async fn $name() -> anyhow::Result<()> {
                super::run(super::Backend::MySql, super::$name).await
            })*
        }
    };
}

per_backend!(
    executions_are_listed_shown_cancelled_retried_counted_and_pruned,
    jobs_are_shown_requeued_finalized_again_once_and_pruned,
    errors_exit_non_zero_with_a_message,
    schedules_are_listed_and_an_ended_one_shows_as_ended,
    stats_show_how_long_unserved_ready_work_has_waited,
    queues_are_paused_listed_and_resumed,
);

// ---------------------------------------------------------------------------------------------
// Running the binary

/// What one run of the binary printed and how it exited.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ran {
    /// The JSON document it printed, if it succeeded.
    fn json(&self) -> anyhow::Result<Value> {
        ensure!(
            self.code == Some(0),
            "exit {:?}\nstdout: {}\nstderr: {}",
            self.code,
            self.stdout,
            self.stderr
        );
        serde_json::from_str(&self.stdout)
            .with_context(|| format!("not one JSON document: {}", self.stdout))
    }

    /// The error kind of a failed run's JSON document.
    fn error_kind(&self) -> anyhow::Result<String> {
        ensure!(
            self.code == Some(1),
            "expected exit 1, got {:?}: {}",
            self.code,
            self.stdout
        );
        ensure!(
            self.stderr.contains("error: "),
            "no message: {}",
            self.stderr
        );
        let doc: Value = serde_json::from_str(&self.stdout)?;
        Ok(doc["error"]["kind"].as_str().unwrap_or_default().to_owned())
    }
}

async fn cli(url: Option<&str>, args: &[&str]) -> anyhow::Result<Ran> {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_sea-orm-durable"));
    command.env_remove("DATABASE_URL");
    if let Some(url) = url {
        command.args(["--database-url", url]);
    }
    let output = command.args(args).output().await?;
    Ok(Ran {
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout)?,
        stderr: String::from_utf8(output.stderr)?,
    })
}

/// Runs `args` with `--json` against `t` and returns the document.
async fn json(t: &TestDb, args: &[&str]) -> anyhow::Result<Value> {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    cli(Some(&t.url), &all).await?.json()
}

fn ids(doc: &Value) -> Vec<String> {
    doc["executions"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|e| e["executionId"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Sets its flag when dropped.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Polls `check` every 20 ms until it holds, for at most `seconds`.
async fn eventually<F, Fut>(seconds: u64, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    while !check().await? {
        if tokio::time::Instant::now() > deadline {
            bail!("timed out waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Executions

/// Two executions complete, one fails (its task succeeds only when it sees the previous
/// error), one runs until cancelled and one waits an hour in another queue; the command line
/// lists them by status, task, queue and age, shows the failed one, counts them, cancels the
/// running one through the library's cancellation (its run is stopped), refuses to cancel or
/// retry a completed one, retries the failed one (which then completes, having seen its
/// previous error), and prunes the finished ones.
async fn executions_are_listed_shown_cancelled_retried_counted_and_pruned(
    t: TestDb,
) -> anyhow::Result<()> {
    let storage: Arc<dyn TaskExecutionStorage> =
        Arc::new(SeaOrmTaskExecutionStorage::new(t.db.clone()));
    let executor = Executor::new(
        Arc::clone(&storage),
        ExecutorOptions {
            poll_interval: Duration::from_millis(20),
            ..ExecutorOptions::default()
        },
    );
    let echo = TaskDefinition::new("echo", |_ctx, n: u32| async move { Ok::<_, TaskError>(n) });
    let flaky = TaskDefinition::new("flaky", |ctx: TaskContext, _: ()| async move {
        match ctx.prev_error {
            Some(prev) => Ok(format!("recovered after: {}", prev.message)),
            None => Err(TaskError::fatal("first run fails")),
        }
    })
    .queue("mail");
    let stopped = Arc::new(AtomicBool::new(false));
    let slow = {
        let stopped = Arc::clone(&stopped);
        TaskDefinition::new("slow", move |ctx: TaskContext, _: ()| {
            let stopped = Arc::clone(&stopped);
            async move {
                // Set however the run ends: the executor may abort it as soon as its
                // cancellation token fires, dropping this future.
                let _stopped = SetOnDrop(stopped);
                ctx.cancellation.cancelled().await;
                Ok::<_, TaskError>(())
            }
        })
        .timeout(Duration::from_secs(600))
    };
    let later = TaskDefinition::new(
        "echo-later",
        |_ctx, n: u32| async move { Ok::<_, TaskError>(n) },
    )
    .queue("mail");
    executor.register(&echo)?;
    executor.register(&flaky)?;
    executor.register(&slow)?;
    executor.register(&later)?;
    executor.start();

    let one = executor.enqueue(&echo, &1).await?;
    let two = executor.enqueue(&echo, &2).await?;
    let failing = executor.enqueue(&flaky, &()).await?;
    let running = executor.enqueue(&slow, &()).await?;
    let waiting = executor
        .enqueue_with(
            &later,
            &3,
            &EnqueueOptions::delay(Duration::from_secs(3_600)),
        )
        .await?;
    let wait = WaitOptions {
        timeout: Some(Duration::from_secs(30)),
        ..WaitOptions::default()
    };
    one.wait_with(&wait).await?;
    two.wait_with(&wait).await?;
    ensure!(
        failing.wait_with(&wait).await?.status() == TaskExecutionStatus::Failed,
        "the flaky task did not fail"
    );
    eventually(30, "the slow task runs", || async {
        Ok(running.get().await?.status == TaskExecutionStatus::Running)
    })
    .await?;
    let id = |h: &str| h.to_owned();
    let (one_id, two_id, failing_id, running_id, waiting_id) = (
        id(one.execution_id()),
        id(two.execution_id()),
        id(failing.execution_id()),
        id(running.execution_id()),
        id(waiting.execution_id()),
    );

    // list: filters by status, task, queue and age, and a limit.
    let failed = json(&t, &["executions", "list", "--status", "failed"]).await?;
    assert_eq!(ids(&failed), vec![failing_id.clone()]);
    assert_eq!(
        failed["executions"][0]["error"]["message"],
        "first run fails"
    );
    let echoes = json(&t, &["executions", "list", "--task", "echo"]).await?;
    assert_eq!(
        sorted(ids(&echoes)),
        sorted(vec![one_id.clone(), two_id.clone()])
    );
    let mail_ready = json(
        &t,
        &["executions", "list", "--queue", "mail", "--status", "ready"],
    )
    .await?;
    assert_eq!(ids(&mail_ready), vec![waiting_id.clone()]);
    let several = json(
        &t,
        &[
            "executions",
            "list",
            "--status",
            "failed",
            "--status",
            "running",
        ],
    )
    .await?;
    assert_eq!(
        sorted(ids(&several)),
        sorted(vec![failing_id.clone(), running_id.clone()])
    );
    let old = json(&t, &["executions", "list", "--older-than", "1h"]).await?;
    assert!(ids(&old).is_empty(), "{old}");
    let recent = json(&t, &["executions", "list", "--newer-than", "1h"]).await?;
    assert_eq!(ids(&recent).len(), 5);
    let limited = json(&t, &["executions", "list", "--limit", "2"]).await?;
    assert_eq!(ids(&limited).len(), 2);
    // Pages of two through `next` list the five executions once each, in order.
    let mut paged = ids(&limited);
    let mut next = limited["next"].as_str().map(str::to_owned);
    while let Some(after) = next {
        let page = json(
            &t,
            &["executions", "list", "--limit", "2", "--after", &after],
        )
        .await?;
        paged.extend(ids(&page));
        next = page["next"].as_str().map(str::to_owned);
    }
    assert_eq!(paged, ids(&recent));
    let bad_cursor = cli(Some(&t.url), &["executions", "list", "--after", "soon"]).await?;
    assert_eq!(bad_cursor.code, Some(2), "{}", bad_cursor.stderr);
    // The table for people has a header and one line per execution.
    let table = cli(Some(&t.url), &["executions", "list", "--task", "echo"]).await?;
    assert_eq!(table.code, Some(0), "{}", table.stderr);
    assert_eq!(table.stdout.lines().count(), 3, "{}", table.stdout);
    assert!(table.stdout.starts_with("EXECUTION"), "{}", table.stdout);

    // show: everything about one execution.
    let shown = json(&t, &["executions", "show", &failing_id]).await?;
    assert_eq!(shown["status"], "failed");
    assert_eq!(shown["taskId"], "flaky");
    assert_eq!(shown["queue"], "mail");
    assert_eq!(shown["error"]["message"], "first run fails");
    assert_eq!(shown["childrenCount"], 0);
    assert_eq!(shown["retryAttempts"], 0);

    // stats: counts by queue and status.
    let stats = json(&t, &["stats"]).await?;
    assert_eq!(stats["byStatus"]["completed"], 2);
    assert_eq!(stats["byStatus"]["failed"], 1);
    assert_eq!(stats["byStatus"]["running"], 1);
    assert_eq!(stats["byStatus"]["ready"], 1);
    assert_eq!(stats["total"], 5);
    let groups = stats["executions"].as_array().context("no groups")?;
    assert!(
        groups.contains(&serde_json::json!({ "queue": "mail", "status": "failed", "count": 1 })),
        "{stats}"
    );
    assert!(
        groups.contains(
            &serde_json::json!({ "queue": "default", "status": "completed", "count": 2 })
        ),
        "{stats}"
    );

    // cancel: the running execution is cancelled and its executor stops the run.
    let cancelled = json(&t, &["executions", "cancel", &running_id]).await?;
    assert_eq!(cancelled["cancelled"], true);
    assert_eq!(cancelled["execution"]["status"], "cancelled");
    eventually(30, "the cancelled run is stopped", || async {
        Ok(stopped.load(Ordering::SeqCst))
    })
    .await?;
    assert_eq!(running.get().await?.status, TaskExecutionStatus::Cancelled);
    let refused = cli(Some(&t.url), &["--json", "executions", "cancel", &one_id]).await?;
    assert_eq!(refused.error_kind()?, "invalid_state");
    assert!(refused.stderr.contains("completed"), "{}", refused.stderr);

    // retry: refused for a completed one; the failed one runs again and completes, having
    // seen its previous error.
    let refused = cli(Some(&t.url), &["--json", "executions", "retry", &one_id]).await?;
    assert_eq!(refused.error_kind()?, "invalid_state");
    assert!(
        refused.stderr.contains("cannot be retried"),
        "{}",
        refused.stderr
    );
    let retried = json(&t, &["executions", "retry", &failing_id]).await?;
    assert_eq!(retried["retried"], true);
    assert_eq!(retried["execution"]["retryAttempts"], 1);
    assert_eq!(retried["execution"]["error"]["message"], "first run fails");
    let finished = failing.wait_with(&wait).await?;
    assert_eq!(finished.status(), TaskExecutionStatus::Completed);
    assert_eq!(
        finished.execution.output.as_deref(),
        Some("\"recovered after: first run fails\"")
    );
    assert_eq!(finished.execution.retry_attempts, 1);
    let shown = json(&t, &["executions", "show", &failing_id]).await?;
    assert_eq!(shown["status"], "completed");

    // prune: nothing is old enough for an hour; with no age, every finished, closed one goes.
    eventually(30, "every finished execution is closed", || async {
        let all = storage
            .get_task_executions(&sea_orm_durable::task::TaskExecutionFilter::default())
            .await?;
        Ok(all.iter().all(|e| !e.is_finished || e.is_closed))
    })
    .await?;
    executor.shutdown().await;
    assert_eq!(t.count("durable_task_executions").await?, 5);
    let kept = json(&t, &["prune", "--executions-older-than", "1h"]).await?;
    assert_eq!(kept["executionsDeleted"], 0);
    assert_eq!(t.count("durable_task_executions").await?, 5);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let pruned = json(&t, &["prune", "--executions-older-than", "0s"]).await?;
    assert_eq!(pruned["executionsDeleted"], 4);
    assert_eq!(pruned["jobRowsDeleted"], Value::Null);
    assert_eq!(t.count("durable_task_executions").await?, 1);
    let left = json(&t, &["executions", "list"]).await?;
    assert_eq!(ids(&left), vec![waiting_id]);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Jobs

/// A prepared job of 20 records in 4 batches, whose worker fails records 3, 10 and 17: the
/// command line shows its progress and failed records, requeues them (the job back to
/// `PROCESSING`), two workers process exactly those records again and the job is finalized
/// again exactly once; then the finished job is pruned with its batches and records.
async fn jobs_are_shown_requeued_finalized_again_once_and_pruned(t: TestDb) -> anyhow::Result<()> {
    let store: Arc<dyn DistributedStateStore> = Arc::new(SeaOrmStateStore::new(t.db.clone()));
    let mut config = JobConfig::new(5);
    config.continue_on_error = Some(true);
    prepare(
        &*store,
        "import",
        config,
        (0..20_u32).map(|n| serde_json::json!({ "n": n })),
    )
    .await?;
    let failing = Arc::new(AtomicBool::new(true));
    let calls = Arc::new(AtomicUsize::new(0));
    let worker = |name: &'static str| {
        let (store, failing, calls) =
            (Arc::clone(&store), Arc::clone(&failing), Arc::clone(&calls));
        async move {
            run_worker(
                store,
                "import",
                name,
                move |_ctx: RecordContext, record: Value| {
                    let (failing, calls) = (Arc::clone(&failing), Arc::clone(&calls));
                    async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        let n = record["n"].as_u64().unwrap_or_default();
                        if failing.load(Ordering::SeqCst) && n % 7 == 3 {
                            return Err(ProcessError::from(format!("record {n} is broken")));
                        }
                        Ok(())
                    }
                },
                WorkerOptions {
                    poll_interval: Duration::from_millis(20),
                    ..WorkerOptions::default()
                },
            )
            .await
        }
    };
    let first = worker("w1").await?;
    assert!(first.finalized, "{first:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 20);

    let shown = json(&t, &["jobs", "show", "import"]).await?;
    assert_eq!(shown["job"]["status"], "COMPLETED");
    assert_eq!(shown["progress"]["processedRecords"], 17);
    assert_eq!(shown["progress"]["failedRecords"], 3);
    assert_eq!(shown["batches"]["completed"], 4);
    let failed: Vec<u64> = shown["failedRecords"]
        .as_array()
        .context("no failed records")?
        .iter()
        .filter_map(|r| r["index"].as_u64())
        .collect();
    assert_eq!(failed, vec![3, 10, 17]);
    assert_eq!(
        shown["failedRecords"][0]["processingError"],
        "record 3 is broken"
    );
    let table = cli(Some(&t.url), &["jobs", "show", "import"]).await?;
    assert!(
        table.stdout.contains("record 10 is broken"),
        "{}",
        table.stdout
    );

    let requeued = json(&t, &["jobs", "requeue-failed", "import"]).await?;
    assert_eq!(requeued["requeued"]["records"], 3);
    assert_eq!(requeued["requeued"]["batches"], 3);
    assert_eq!(requeued["requeued"]["leftFailed"], 0);
    assert_eq!(requeued["requeued"]["jobStatus"], "PROCESSING");
    let job = store.get_job_state("import").await?.context("job gone")?;
    assert_eq!(job.status, JobStatus::Processing);
    assert_eq!(job.completed_at, None);
    let shown = json(&t, &["jobs", "show", "import"]).await?;
    assert_eq!(shown["progress"]["pendingRecords"], 3);
    assert_eq!(shown["batches"]["pending"], 3);

    // Processed again by two workers: only the requeued records, one finalization.
    failing.store(false, Ordering::SeqCst);
    let (a, b) = tokio::join!(worker("w2"), worker("w3"));
    let (a, b) = (a?, b?);
    assert_eq!(calls.load(Ordering::SeqCst), 23);
    assert_eq!(
        usize::from(a.finalized) + usize::from(b.finalized),
        1,
        "{a:?} {b:?}"
    );
    let shown = json(&t, &["jobs", "show", "import"]).await?;
    assert_eq!(shown["job"]["status"], "COMPLETED");
    assert_eq!(shown["progress"]["processedRecords"], 20);
    assert_eq!(shown["progress"]["failedRecords"], 0);
    assert_eq!(shown["failedRecords"], serde_json::json!([]));
    let nothing = json(&t, &["jobs", "requeue-failed", "import"]).await?;
    assert_eq!(nothing["requeued"]["records"], 0);
    assert_eq!(nothing["requeued"]["jobStatus"], "COMPLETED");

    // prune: the finished job goes with its batches and records, only once old enough.
    assert_eq!(rows(&t).await?, (1, 4, 20));
    let kept = json(&t, &["prune", "--jobs-older-than", "1h"]).await?;
    assert_eq!(kept["jobRowsDeleted"], 0);
    assert_eq!(rows(&t).await?, (1, 4, 20));
    tokio::time::sleep(Duration::from_millis(5)).await;
    let pruned = json(
        &t,
        &["prune", "--jobs-older-than", "0s", "--batch-size", "7"],
    )
    .await?;
    assert_eq!(pruned["jobRowsDeleted"], 25);
    assert_eq!(pruned["executionsDeleted"], Value::Null);
    assert_eq!(rows(&t).await?, (0, 0, 0));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Schedules

/// A running interval schedule and an ended cron one (its expression has no tick left) are
/// listed, the ended one as ended.
async fn schedules_are_listed_and_an_ended_one_shows_as_ended(t: TestDb) -> anyhow::Result<()> {
    let storage = SeaOrmTaskExecutionStorage::new(t.db.clone());
    let empty = json(&t, &["schedules"]).await?;
    assert_eq!(empty["schedules"], serde_json::json!([]));
    let t0 = 1_798_761_600_000;
    let base = TaskSchedule {
        schedule_id: "every-minute".to_owned(),
        task_id: "sync".to_owned(),
        input: "null".to_owned(),
        spec: ScheduleSpec::Interval { every_ms: 60_000 },
        missed_ticks: MissedTicks::Skip,
        next_tick_at: Some(t0 + 60_000),
        last_tick_at: Some(t0),
        created_at: t0,
        updated_at: t0,
    };
    storage.save_task_schedule(base.clone()).await?;
    storage
        .save_task_schedule(TaskSchedule {
            schedule_id: "new-year-2027".to_owned(),
            spec: ScheduleSpec::Cron {
                expression: "0 0 0 1 1 * 2027".to_owned(),
                time_zone: "UTC".to_owned(),
            },
            missed_ticks: MissedTicks::CatchUp,
            next_tick_at: None,
            ..base
        })
        .await?;
    let doc = json(&t, &["schedules"]).await?;
    let list = doc["schedules"].as_array().context("no schedules")?;
    assert_eq!(list.len(), 2, "{doc}");
    assert_eq!(list[0]["scheduleId"], "every-minute");
    assert_eq!(list[0]["intervalMs"], 60_000);
    assert_eq!(list[0]["nextTickAt"], t0 + 60_000);
    assert_eq!(list[0]["ended"], false);
    assert_eq!(list[1]["scheduleId"], "new-year-2027");
    assert_eq!(list[1]["cron"], "0 0 0 1 1 * 2027");
    assert_eq!(list[1]["timeZone"], "UTC");
    assert_eq!(list[1]["missedTicks"], "catch_up");
    assert_eq!(list[1]["nextTickAt"], Value::Null);
    assert_eq!(list[1]["lastTickAt"], t0);
    assert_eq!(list[1]["ended"], true);
    let table = cli(Some(&t.url), &["schedules"]).await?;
    assert_eq!(table.code, Some(0), "{}", table.stderr);
    let ended = table
        .stdout
        .lines()
        .find(|l| l.starts_with("new-year-2027"))
        .context("no row for the ended schedule")?;
    assert!(ended.contains("ended"), "{}", table.stdout);
    assert!(ended.contains("0 0 0 1 1 * 2027 (UTC)"), "{}", table.stdout);
    Ok(())
}

/// Executions of a task that no executor serves, due 90 s ago, show in `stats` by task and
/// queue with how long the oldest has waited; one not due yet does not.
async fn stats_show_how_long_unserved_ready_work_has_waited(t: TestDb) -> anyhow::Result<()> {
    use sea_orm_durable::clock::{Clock, SystemClock};
    use sea_orm_durable::task::storage::NewTaskExecution;
    let storage = SeaOrmTaskExecutionStorage::new(t.db.clone());
    let new = |id: &str, sleep: Duration| NewTaskExecution {
        execution_id: id.to_owned(),
        task_id: "orphan".to_owned(),
        queue: Some("reports".to_owned()),
        sleep_before_run: sleep,
        timeout: Duration::from_secs(60),
        input: "null".to_owned(),
        ..NewTaskExecution::default()
    };
    let due_at = SystemClock.now_ms() - 90_000;
    storage
        .enqueue_task_executions(
            vec![
                new("o1", Duration::ZERO),
                new("o2", Duration::from_secs(30)),
                new("later", Duration::from_secs(3_600)),
            ],
            due_at,
        )
        .await?;
    let stats = json(&t, &["stats"]).await?;
    let ready = stats["ready"].as_array().context("no ready groups")?;
    assert_eq!(ready.len(), 1, "{stats}");
    assert_eq!(ready[0]["taskId"], "orphan");
    assert_eq!(ready[0]["queue"], "reports");
    assert_eq!(ready[0]["count"], 2);
    assert_eq!(ready[0]["oldestStartAt"], due_at);
    let waited = ready[0]["oldestWaitedMs"].as_i64().context("no wait")?;
    assert!((90_000..600_000).contains(&waited), "{stats}");
    let table = cli(Some(&t.url), &["stats"]).await?;
    assert_eq!(table.code, Some(0), "{}", table.stderr);
    let line = table
        .stdout
        .lines()
        .find(|l| l.starts_with("orphan"))
        .context("no row for the unserved task")?;
    assert!(
        line.contains("reports") && line.contains(" 2 ") && line.contains("1m 3"),
        "{}",
        table.stdout
    );
    Ok(())
}

/// `queues pause` stops claims from the queue (a claim through the storage takes nothing),
/// `queues list` and `stats` show the pause, `queues resume` lifts it; a second pause keeps the
/// first time, a second resume says nothing changed, and a bad name exits with
/// `invalid_argument`.
async fn queues_are_paused_listed_and_resumed(t: TestDb) -> anyhow::Result<()> {
    use sea_orm_durable::clock::{Clock, SystemClock};
    use sea_orm_durable::task::storage::{ClaimParams, NewTaskExecution};
    let storage = SeaOrmTaskExecutionStorage::new(t.db.clone());
    let now = SystemClock.now_ms();
    storage
        .enqueue_task_executions(
            vec![NewTaskExecution {
                execution_id: "r1".to_owned(),
                task_id: "report".to_owned(),
                queue: Some("reports".to_owned()),
                timeout: Duration::from_secs(60),
                input: "null".to_owned(),
                ..NewTaskExecution::default()
            }],
            now,
        )
        .await?;
    let paused = json(&t, &["queues", "pause", "reports"]).await?;
    assert_eq!(paused["paused"]["queue"], "reports", "{paused}");
    let first = paused["paused"]["pausedAt"].as_i64().context("no time")?;
    let again = json(&t, &["queues", "pause", "reports"]).await?;
    assert_eq!(again["paused"]["pausedAt"], first, "{again}");
    json(&t, &["queues", "pause", "idle"]).await?;
    let claim = ClaimParams {
        executor_id: "cli-test".to_owned(),
        now: SystemClock.now_ms(),
        limit: 10,
        ..ClaimParams::default()
    };
    assert!(storage.claim_task_executions(&claim).await?.is_empty());
    let listed = json(&t, &["queues", "list"]).await?;
    let queues = listed["queues"].as_array().context("no queues")?;
    let names: Vec<&str> = queues.iter().filter_map(|q| q["queue"].as_str()).collect();
    assert_eq!(names, ["idle", "reports"], "{listed}");
    assert_eq!(queues[1]["paused"], true);
    assert_eq!(queues[1]["ready"], 1);
    assert_eq!(queues[0]["unfinished"], 0);
    let stats = json(&t, &["stats"]).await?;
    assert_eq!(stats["paused"].as_array().map(Vec::len), Some(2), "{stats}");
    let table = cli(Some(&t.url), &["queues", "list"]).await?;
    assert_eq!(table.code, Some(0), "{}", table.stderr);
    let line = table
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("reports"))
        .context("no row for the paused queue")?;
    assert!(line.contains("since"), "{}", table.stdout);
    let resumed = json(&t, &["queues", "resume", "reports"]).await?;
    assert_eq!(resumed["wasPaused"], true, "{resumed}");
    let text = cli(Some(&t.url), &["queues", "resume", "reports"]).await?;
    assert!(text.stdout.contains("was not paused"), "{}", text.stdout);
    let claimed = storage.claim_task_executions(&claim).await?;
    assert_eq!(claimed.len(), 1);
    let bad = "q".repeat(65);
    let refused = cli(Some(&t.url), &["--json", "queues", "pause", &bad]).await?;
    assert_eq!(refused.error_kind()?, "invalid_argument");
    Ok(())
}

/// Rows of the job tables: (jobs, batches, records).
async fn rows(t: &TestDb) -> anyhow::Result<(i64, i64, i64)> {
    Ok((
        t.count("batchactions_jobs").await?,
        t.count("batchactions_batches").await?,
        t.count("batchactions_records").await?,
    ))
}

// ---------------------------------------------------------------------------------------------
// Errors

/// Unknown ids, a missing URL, a bad status or duration: a non-zero exit and a message, and
/// with `--json` an error document.
async fn errors_exit_non_zero_with_a_message(t: TestDb) -> anyhow::Result<()> {
    let url = Some(t.url.as_str());
    for args in [
        &["--json", "executions", "show", "nope"][..],
        &["--json", "executions", "cancel", "nope"],
        &["--json", "executions", "retry", "nope"],
        &["--json", "jobs", "show", "nope"],
        &["--json", "jobs", "requeue-failed", "nope"],
    ] {
        let ran = cli(url, args).await?;
        assert_eq!(ran.error_kind()?, "not_found", "{args:?}");
        assert!(ran.stderr.contains("not found: nope"), "{}", ran.stderr);
    }
    let ran = cli(None, &["stats"]).await?;
    assert_eq!(ran.code, Some(1));
    assert!(ran.stderr.contains("DATABASE_URL"), "{}", ran.stderr);
    for args in [
        &["executions", "list", "--status", "bogus"][..],
        &["executions", "list", "--older-than", "5 parsecs"],
        &["prune"],
    ] {
        let ran = cli(url, args).await?;
        assert_eq!(ran.code, Some(2), "{args:?}: {}", ran.stdout);
        assert!(!ran.stderr.is_empty());
    }
    let empty = json(&t, &["stats"]).await?;
    assert_eq!(empty["total"], 0);
    Ok(())
}

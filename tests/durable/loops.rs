//! The runners' loops under a misbehaving store, on every storage: each loop of the executor
//! and of the batch worker goes on after panics in the store (counted in its metric), and a
//! long pruning backlog does not hold up the recovery of a dead executor's execution.
//!
//! The stores are the testkit's faulty wrappers around the real ones; the metrics are read
//! from the recorder of [`crate::metrics`], each test under its own label.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use sea_orm_durable::batch::store::DistributedStateStore;
use sea_orm_durable::batch::{InMemoryStateStore, JobStatus, ProcessError, RecordContext};
use sea_orm_durable::clock::{Clock, SystemClock};
use sea_orm_durable::metric;
use sea_orm_durable::task::storage::{
    ClaimParams, NewTaskExecution, TaskExecutionGuard, TaskExecutionStorage, TaskExecutionUpdate,
};
use sea_orm_durable::task::{
    InMemoryTaskExecutionStorage, ParentTaskOutput, Retention, RetryOptions, TaskExecutionStatus,
    WaitOptions,
};
use sea_orm_durable::testkit::executor::fast_options;
use sea_orm_durable::testkit::fault::{Faults, PanickingStateStore, PanickingStorage};
use sea_orm_durable::{
    Executor, ExecutorOptions, JobConfig, ParentOutcome, Schedule, SeaOrmStateStore,
    SeaOrmTaskExecutionStorage, TaskDefinition, TaskError, WorkerOptions, prepare, run_worker,
};
use serde_json::{Value, json};

use crate::harness::{TestDb, per_backend};
use crate::metrics::Series;

/// How many calls of the chosen method panic in each case.
const PANICS: u32 = 3;

const WAIT: WaitOptions = WaitOptions {
    poll_interval: Duration::from_millis(20),
    timeout: Some(Duration::from_secs(30)),
};

/// The two stores of one backend.
struct Stores {
    task: Arc<dyn TaskExecutionStorage>,
    batch: Arc<dyn DistributedStateStore>,
}

impl Stores {
    fn memory() -> Self {
        Self {
            task: Arc::new(InMemoryTaskExecutionStorage::new()),
            batch: Arc::new(InMemoryStateStore::new()),
        }
    }

    fn sql(t: &TestDb) -> Self {
        Self {
            task: Arc::new(SeaOrmTaskExecutionStorage::new(t.db.clone())),
            batch: Arc::new(SeaOrmStateStore::new(t.db.clone())),
        }
    }
}

/// Declares each case on memory (`memory::<name>`) and on every SQL backend.
macro_rules! loop_cases {
    ($($name:ident => $case:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() -> anyhow::Result<()> {
                super::$case(super::Stores::memory()).await
            })*
        }
        $(async fn $name(t: TestDb) -> anyhow::Result<()> {
            $case(Stores::sql(&t)).await
        })*
        per_backend!($($name),*);
    };
}

loop_cases!(
    claim_loop_survives_panics => claim_loop,
    parents_loop_survives_panics => parents_loop,
    close_loop_survives_panics => close_loop,
    expire_loop_survives_panics => expire_loop,
    prune_loop_survives_panics => prune_loop,
    cancel_loop_survives_panics => cancel_loop,
    schedules_loop_survives_panics => schedules_loop,
    sample_loop_survives_panics => sample_loop,
    result_writer_survives_panics => writer_loop,
    run_result_survives_panics => run_loop,
    worker_loop_survives_panics => worker_loop,
    heartbeat_survives_panics => heartbeat_loop,
    panicking_processor_fails_its_record => processor_panic,
    pruning_backlog_does_not_delay_recovery => prune_backlog,
);

/// The storage of `stores` with the first [`PANICS`] calls of `method` panicking.
fn faulty(stores: &Stores, method: &'static str) -> (Arc<dyn TaskExecutionStorage>, Faults) {
    let faults = Faults::new().panic_on(method, PANICS);
    let storage = PanickingStorage::new(Arc::clone(&stores.task), faults.clone());
    (Arc::new(storage), faults)
}

/// Executor options for a case: short polls, the case's metric label.
fn options(series: &Series) -> ExecutorOptions {
    ExecutorOptions {
        metric_labels: series.labels(),
        expire_interval: Duration::from_millis(50),
        ..fast_options()
    }
}

/// The loop `label` counted every panic of `method`, and called `method` again after them.
async fn went_on(
    series: &Series,
    name: &str,
    label: &str,
    faults: &Faults,
    method: &str,
) -> anyhow::Result<()> {
    series
        .expect(&[(name, &[("loop", label)], u64::from(PANICS))])
        .await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while faults.calls(method) <= u64::from(PANICS) {
        ensure!(
            Instant::now() < deadline,
            "{method} was called {} times, none after its panics: the {label} loop died",
            faults.calls(method)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ensure!(
        faults.panicked(method) == u64::from(PANICS),
        "{method} panicked {} times",
        faults.panicked(method)
    );
    Ok(())
}

fn echo(id: &str) -> TaskDefinition<u32, u32> {
    TaskDefinition::new(id, |_ctx, n: u32| async move { Ok::<_, TaskError>(n) })
}

/// A parent of three `echo` children, without finalize.
fn parent_of(
    id: &str,
    child: &TaskDefinition<u32, u32>,
) -> TaskDefinition<(), ParentTaskOutput<()>> {
    let child = child.clone();
    TaskDefinition::parent(id, move |_ctx, ()| {
        let child = child.clone();
        async move {
            Ok(ParentOutcome::new(())
                .child(&child, &1)
                .child(&child, &2)
                .child(&child, &3))
        }
    })
    .without_finalize()
}

/// Plain executions complete although the claim panics, and no claim capacity leaks.
async fn claim_loop(stores: Stores) -> anyhow::Result<()> {
    let series = Series::new("claim-panics")?;
    let (storage, faults) = faulty(&stores, "claim_task_executions");
    let executor = Executor::new(
        storage,
        ExecutorOptions {
            // Two permits: a claim that leaked its permits on a panic would run nothing.
            max_concurrent: 2,
            ..options(&series)
        },
    );
    let task = echo("lpClaim");
    executor.register(&task)?;
    executor.start();
    let mut handles = Vec::new();
    for n in 0..5 {
        handles.push(executor.enqueue(&task, &n).await?);
    }
    let result = async {
        for (n, handle) in (0..5).zip(&handles) {
            let done = handle.wait_with(&WAIT).await?;
            ensure!(done.output == Some(n), "{n}: {}", done.status());
        }
        went_on(
            &series,
            metric::EXECUTOR_LOOP_PANICS,
            "claim",
            &faults,
            "claim_task_executions",
        )
        .await
    }
    .await;
    executor.shutdown().await;
    result
}

/// A parent whose children all finished completes although `method` panics in `label`.
async fn parent_completes(stores: Stores, method: &'static str, label: &str) -> anyhow::Result<()> {
    let series = Series::new(label)?;
    let (storage, faults) = faulty(&stores, method);
    let executor = Executor::new(storage, options(&series));
    let child = echo("lpChild");
    let parent = parent_of("lpParent", &child);
    executor.register(&child)?;
    executor.register(&parent)?;
    executor.start();
    let result = async {
        let done = executor
            .enqueue(&parent, &())
            .await?
            .wait_with(&WAIT)
            .await?;
        ensure!(
            done.status() == TaskExecutionStatus::Completed,
            "parent {} {:?}",
            done.status(),
            done.error()
        );
        went_on(
            &series,
            metric::EXECUTOR_LOOP_PANICS,
            label,
            &faults,
            method,
        )
        .await
    }
    .await;
    executor.shutdown().await;
    result
}

async fn parents_loop(stores: Stores) -> anyhow::Result<()> {
    parent_completes(stores, "claim_parents_with_finished_children", "parents").await
}

async fn close_loop(stores: Stores) -> anyhow::Result<()> {
    parent_completes(stores, "close_finished_task_executions", "close").await
}

/// The run's own write of its children panics: it is written again, not lost with the run.
async fn run_loop(stores: Stores) -> anyhow::Result<()> {
    parent_completes(stores, "update_task_execution_and_enqueue", "run").await
}

/// Results are written although the batched writes panic.
async fn writer_loop(stores: Stores) -> anyhow::Result<()> {
    let series = Series::new("writer-panics")?;
    let (storage, faults) = faulty(&stores, "update_task_executions_many");
    let executor = Executor::new(storage, options(&series));
    let task = echo("lpWriter");
    executor.register(&task)?;
    executor.start();
    let result = async {
        // One at a time, so that each one is a batch of its own.
        for n in 0..5 {
            let done = executor.enqueue(&task, &n).await?.wait_with(&WAIT).await?;
            ensure!(done.output == Some(n), "{n}: {}", done.status());
        }
        went_on(
            &series,
            metric::EXECUTOR_LOOP_PANICS,
            "writer",
            &faults,
            "update_task_executions_many",
        )
        .await
    }
    .await;
    executor.shutdown().await;
    result
}

/// A dead executor's execution is recovered although the expiry panics.
async fn expire_loop(stores: Stores) -> anyhow::Result<()> {
    let series = Series::new("expire-panics")?;
    let (storage, faults) = faulty(&stores, "expire_task_executions");
    let executor = Executor::new(Arc::clone(&storage), options(&series));
    let lapse = lapsing_task("lpLapse");
    executor.register(&lapse)?;
    let lapsed = executor.enqueue(&lapse, &()).await?;
    claim_by_dead_executor(&*stores.task, "lpLapse").await?;
    executor.start();
    let result = async {
        let done = lapsed.wait_with(&WAIT).await?;
        ensure!(
            done.status() == TaskExecutionStatus::Completed,
            "lapsed {} {:?}",
            done.status(),
            done.error()
        );
        went_on(
            &series,
            metric::EXECUTOR_LOOP_PANICS,
            "expire",
            &faults,
            "expire_task_executions",
        )
        .await
    }
    .await;
    executor.shutdown().await;
    result
}

/// A task whose lease lapses 100 ms after a claim, with a retry left for the lapse.
fn lapsing_task(id: &str) -> TaskDefinition<(), ()> {
    TaskDefinition::new(id, |_ctx, ()| async move { Ok::<_, TaskError>(()) })
        .timeout(Duration::from_millis(100))
        .retry(RetryOptions {
            max_attempts: 1,
            ..RetryOptions::default()
        })
}

/// Claims the ready execution of `task_id` for an executor that then dies: its lease lapses
/// after the task's timeout.
async fn claim_by_dead_executor(
    storage: &dyn TaskExecutionStorage,
    task_id: &str,
) -> anyhow::Result<()> {
    let taken = storage
        .claim_task_executions(&ClaimParams {
            executor_id: "dead".to_owned(),
            now: SystemClock.now_ms(),
            limit: 1,
            lease_margin: Duration::ZERO,
            task_ids: Some(vec![task_id.to_owned()]),
            queues: None,
            claim_id: None,
            resume: false,
        })
        .await?;
    ensure!(
        taken.len() == 1,
        "the dead executor claimed {}",
        taken.len()
    );
    Ok(())
}

/// Finished executions are pruned although pruning panics.
async fn prune_loop(stores: Stores) -> anyhow::Result<()> {
    let series = Series::new("prune-panics")?;
    let (storage, faults) = faulty(&stores, "prune_task_executions");
    let executor = Executor::new(
        Arc::clone(&storage),
        ExecutorOptions {
            retention: Some(Retention {
                completed: Some(Duration::from_millis(1)),
                batch_size: 10,
                interval: Duration::from_millis(20),
                ..Retention::default()
            }),
            ..options(&series)
        },
    );
    let task = echo("lpPrune");
    executor.register(&task)?;
    executor.start();
    let result = async {
        let handle = executor.enqueue(&task, &1).await?;
        handle.wait_with(&WAIT).await?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while stores
            .task
            .get_task_execution(handle.execution_id())
            .await?
            .is_some()
        {
            ensure!(Instant::now() < deadline, "the execution was never pruned");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        went_on(
            &series,
            metric::EXECUTOR_LOOP_PANICS,
            "prune",
            &faults,
            "prune_task_executions",
        )
        .await
    }
    .await;
    executor.shutdown().await;
    result
}

/// A running execution cancelled through its handle is stopped here although reading the
/// cancellation requests panics.
async fn cancel_loop(stores: Stores) -> anyhow::Result<()> {
    let series = Series::new("cancel-panics")?;
    let (storage, faults) = faulty(&stores, "cancellation_requests");
    let executor = Executor::new(storage, options(&series));
    let stuck = TaskDefinition::new("lpStuck", |_ctx, ()| async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok::<_, TaskError>(())
    });
    executor.register(&stuck)?;
    executor.start();
    let result = async {
        let handle = executor.enqueue(&stuck, &()).await?;
        // The cancel loop reads requests only while something runs here: its panics come now.
        let deadline = Instant::now() + Duration::from_secs(15);
        while faults.panicked("cancellation_requests") < u64::from(PANICS) {
            ensure!(
                Instant::now() < deadline,
                "the cancel loop panicked {} times",
                faults.panicked("cancellation_requests")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ensure!(handle.cancel().await?, "the cancel changed nothing");
        let deadline = Instant::now() + Duration::from_secs(10);
        while executor.running_count() > 0 {
            ensure!(
                Instant::now() < deadline,
                "the cancelled run was never stopped"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        went_on(
            &series,
            metric::EXECUTOR_LOOP_PANICS,
            "cancel",
            &faults,
            "cancellation_requests",
        )
        .await
    }
    .await;
    executor.shutdown().await;
    result
}

/// The gauges are sampled again after the counts panicked: the sample loop went on.
async fn sample_loop(stores: Stores) -> anyhow::Result<()> {
    let series = Series::new("sample-panics")?;
    let (storage, faults) = faulty(&stores, "count_task_executions");
    let executor = Executor::new(
        storage,
        ExecutorOptions {
            queue_depth_interval: Some(Duration::from_millis(30)),
            ..options(&series)
        },
    );
    executor.register(&echo("lpSampled"))?;
    executor.start();
    let result = went_on(
        &series,
        metric::EXECUTOR_LOOP_PANICS,
        "sample",
        &faults,
        "count_task_executions",
    )
    .await;
    executor.shutdown().await;
    result
}

/// A schedule ticks although reading the due schedules panics.
async fn schedules_loop(stores: Stores) -> anyhow::Result<()> {
    let series = Series::new("schedules-panics")?;
    let (storage, faults) = faulty(&stores, "due_task_schedules");
    let executor = Executor::new(storage, options(&series));
    let ticks = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&ticks);
    let tick = TaskDefinition::new("lpTick", move |_ctx, ()| {
        let counted = Arc::clone(&counted);
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok::<_, TaskError>(())
        }
    });
    executor
        .schedule(
            &tick,
            &(),
            &Schedule::interval("lp-every", Duration::from_millis(100)),
        )
        .await?;
    executor.start();
    let result = async {
        let deadline = Instant::now() + Duration::from_secs(20);
        while ticks.load(Ordering::SeqCst) == 0 {
            ensure!(Instant::now() < deadline, "the schedule never ticked");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        went_on(
            &series,
            metric::EXECUTOR_LOOP_PANICS,
            "schedules",
            &faults,
            "due_task_schedules",
        )
        .await
    }
    .await;
    executor.shutdown().await;
    result
}

/// The batch store of `stores` with the first [`PANICS`] calls of `method` panicking.
fn faulty_batch(stores: &Stores, method: &'static str) -> (Arc<dyn DistributedStateStore>, Faults) {
    let faults = Faults::new().panic_on(method, PANICS);
    let store = PanickingStateStore::new(Arc::clone(&stores.batch), faults.clone());
    (Arc::new(store), faults)
}

fn worker_options(series: &Series) -> WorkerOptions {
    WorkerOptions {
        heartbeat_interval: Duration::from_millis(10),
        poll_interval: Duration::from_millis(20),
        metric_labels: series.labels(),
        ..WorkerOptions::default()
    }
}

/// A job completes although claiming batches panics.
async fn worker_loop(stores: Stores) -> anyhow::Result<()> {
    let series = Series::new("worker-panics")?;
    let (store, faults) = faulty_batch(&stores, "claim_batch_with_id");
    prepare(
        &*store,
        "lp-job",
        JobConfig::new(2),
        (0..10).map(|n| json!(n)),
    )
    .await?;
    let processor = |_ctx: RecordContext, _value: Value| async move { Ok::<(), ProcessError>(()) };
    let report = tokio::time::timeout(
        Duration::from_secs(30),
        run_worker(store, "lp-job", "w", processor, worker_options(&series)),
    )
    .await??;
    ensure!(report.batches == 5 && report.processed == 10, "{report:?}");
    ensure!(
        report.job_status == Some(JobStatus::Completed),
        "{report:?}"
    );
    went_on(
        &series,
        metric::BATCH_WORKER_PANICS,
        "worker",
        &faults,
        "claim_batch_with_id",
    )
    .await
}

/// A long batch keeps its heartbeat although heartbeats panic.
async fn heartbeat_loop(stores: Stores) -> anyhow::Result<()> {
    let series = Series::new("heartbeat-panics")?;
    let (store, faults) = faulty_batch(&stores, "heartbeat_batch");
    prepare(
        &*store,
        "lp-beat",
        JobConfig::new(10),
        (0..10).map(|n| json!(n)),
    )
    .await?;
    let processor = |_ctx: RecordContext, _value: Value| async move {
        tokio::time::sleep(Duration::from_millis(30)).await;
        Ok::<(), ProcessError>(())
    };
    let report = tokio::time::timeout(
        Duration::from_secs(30),
        run_worker(store, "lp-beat", "w", processor, worker_options(&series)),
    )
    .await??;
    ensure!(report.batches == 1 && report.processed == 10, "{report:?}");
    went_on(
        &series,
        metric::BATCH_WORKER_PANICS,
        "heartbeat",
        &faults,
        "heartbeat_batch",
    )
    .await
}

/// A processor that panics fails its record, with the panic's message; the job goes on.
async fn processor_panic(stores: Stores) -> anyhow::Result<()> {
    let series = Series::new("processor-panics")?;
    let store = Arc::clone(&stores.batch);
    prepare(
        &*store,
        "lp-proc",
        JobConfig::new(5),
        (0..5).map(|n| json!(n)),
    )
    .await?;
    let processor = |ctx: RecordContext, _value: Value| async move {
        if ctx.index == 2 {
            panic!("record two is cursed");
        }
        Ok::<(), ProcessError>(())
    };
    let report = tokio::time::timeout(
        Duration::from_secs(30),
        run_worker(
            Arc::clone(&store),
            "lp-proc",
            "w",
            processor,
            worker_options(&series),
        ),
    )
    .await??;
    ensure!(report.processed == 4 && report.failed == 1, "{report:?}");
    let failed = store.get_failed_records("lp-proc").await?;
    let error = failed
        .first()
        .and_then(|r| r.processing_error.clone())
        .context("no failed record")?;
    ensure!(error.contains("record two is cursed"), "{error}");
    ensure!(
        series.counter(metric::BATCH_WORKER_PANICS, &[]) == 0,
        "a processor's panic counted as the worker's"
    );
    Ok(())
}

/// With a long backlog to prune a row at a time (each delete slowed down), a dead executor's
/// execution is recovered while most of the backlog is still there: pruning does not hold up
/// the expire loop.
async fn prune_backlog(stores: Stores) -> anyhow::Result<()> {
    const BACKLOG: usize = 300;
    let series = Series::new("prune-backlog")?;
    let faults = Faults::new().delay("prune_task_executions", Duration::from_millis(10));
    let storage: Arc<dyn TaskExecutionStorage> = Arc::new(PanickingStorage::new(
        Arc::clone(&stores.task),
        faults.clone(),
    ));
    // The backlog: executions of a task no executor has, finished and closed an hour ago.
    let old = SystemClock.now_ms() - 3_600_000;
    let new: Vec<NewTaskExecution> = (0..BACKLOG)
        .map(|i| NewTaskExecution {
            execution_id: format!("lp-old-{i}"),
            task_id: "lpOld".to_owned(),
            timeout: Duration::from_secs(600),
            input: "null".to_owned(),
            ..NewTaskExecution::default()
        })
        .collect();
    stores.task.enqueue_task_executions(new, old).await?;
    let claimed = stores
        .task
        .claim_task_executions(&ClaimParams {
            executor_id: "old".to_owned(),
            now: old,
            limit: u64::try_from(BACKLOG)?,
            lease_margin: Duration::ZERO,
            task_ids: Some(vec!["lpOld".to_owned()]),
            queues: None,
            claim_id: None,
            resume: false,
        })
        .await?;
    ensure!(claimed.len() == BACKLOG, "claimed {}", claimed.len());
    let updates: Vec<_> = claimed
        .iter()
        .map(|e| {
            (
                TaskExecutionGuard::id(e.execution_id.clone())
                    .status(TaskExecutionStatus::Running)
                    .fencing_token(e.fencing_token),
                TaskExecutionUpdate {
                    now: old,
                    status: Some(TaskExecutionStatus::Completed),
                    output: Some("null".to_owned()),
                    ..TaskExecutionUpdate::default()
                },
            )
        })
        .collect();
    stores.task.update_task_executions_many(&updates).await?;
    while stores
        .task
        .close_finished_task_executions(old, u64::try_from(BACKLOG)?)
        .await?
        > 0
    {}

    let executor = Executor::new(
        Arc::clone(&storage),
        ExecutorOptions {
            retention: Some(Retention {
                completed: Some(Duration::from_secs(60)),
                failed: None,
                cancelled: None,
                batch_size: 1,
                interval: Duration::from_millis(20),
            }),
            ..options(&series)
        },
    );
    let lapse = lapsing_task("lpBacklogLapse");
    executor.register(&lapse)?;
    let lapsed = executor.enqueue(&lapse, &()).await?;
    claim_by_dead_executor(&*stores.task, "lpBacklogLapse").await?;
    executor.start();
    let result = async {
        let done = lapsed.wait_with(&WAIT).await?;
        let pruned = faults.calls("prune_task_executions");
        ensure!(
            done.status() == TaskExecutionStatus::Completed,
            "lapsed {} {:?}",
            done.status(),
            done.error()
        );
        // A delete a call: half the backlog takes 1.5 s at least, far more than a recovery.
        ensure!(
            pruned < u64::try_from(BACKLOG / 2)?,
            "recovered only after {pruned} of {BACKLOG} prune steps"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while faults.calls("prune_task_executions") == 0 {
            ensure!(Instant::now() < deadline, "the prune loop never ran");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
    .await;
    executor.shutdown().await;
    result
}

//! The metrics of the executor and the batch worker, counted through a recorder installed once
//! for this test binary, on every storage; and the run's span following the enqueuer's.
//!
//! The recorder is global and tests run in parallel: each test gives its executor or worker a
//! constant label of its own (`test`) and reads only the series that carry it. The recorder
//! never resets on read (a snapshot of metrics-util's `DebuggingRecorder` would reset the
//! counters of every test at once).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ::metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use anyhow::{Context, bail, ensure};
use metrics_util::registry::{AtomicStorage, Registry};
use sea_orm_durable::batch::store::{ClaimBatchResult, DistributedStateStore};
use sea_orm_durable::batch::{InMemoryStateStore, JobStatus, ProcessError, RecordContext};
use sea_orm_durable::clock::{Clock, SystemClock};
use sea_orm_durable::metric;
use sea_orm_durable::task::storage::{ClaimParams, TaskExecutionStorage};
use sea_orm_durable::task::storage::{NewTaskExecution, TaskExecutionGuard, TaskExecutionUpdate};
use sea_orm_durable::task::{
    InMemoryTaskExecutionStorage, RetryOptions, TaskExecutionStatus, WaitOptions,
};
use sea_orm_durable::testkit::executor::fast_options;
use sea_orm_durable::{
    Executor, ExecutorOptions, JobConfig, ParentOutcome, SeaOrmStateStore,
    SeaOrmTaskExecutionStorage, TaskDefinition, TaskError, TaskHandle, WorkerOptions, prepare,
    run_worker,
};
use serde_json::{Value, json};

use crate::harness::{TestDb, per_backend};

per_backend!(
    executor_counts_each_outcome,
    executor_samples_the_queue_depth_by_status,
    worker_counts_records_batches_and_reclaims,
);

mod memory {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn executor_counts_each_outcome() -> anyhow::Result<()> {
        super::executor_counts(Arc::new(InMemoryTaskExecutionStorage::new())).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn worker_counts_records_batches_and_reclaims() -> anyhow::Result<()> {
        super::worker_counts(Arc::new(InMemoryStateStore::new())).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn executor_samples_the_queue_depth_by_status() -> anyhow::Result<()> {
        super::queue_depth(Arc::new(InMemoryTaskExecutionStorage::new())).await
    }

    /// Runs [`span_child`] alone in a process of its own: `tracing` caches per call site
    /// whether any subscriber wants it, and tests running beside it on other threads (with no
    /// subscriber) can register the executor's call sites as unwanted before this test's
    /// subscriber exists.
    #[test]
    fn runs_follow_from_the_span_that_enqueued_them() -> anyhow::Result<()> {
        alone("metrics::memory::span_child")
    }

    /// Runs [`unregistered_child`] alone in its process, for the reason above.
    #[test]
    fn children_of_an_unregistered_task_are_warned_about_once() -> anyhow::Result<()> {
        alone("metrics::memory::unregistered_child")
    }

    /// Runs the ignored test `name` alone in a process of its own and fails with its output
    /// unless it passed.
    fn alone(name: &str) -> anyhow::Result<()> {
        let out = std::process::Command::new(std::env::current_exe()?)
            .args([name, "--exact", "--ignored", "--nocapture"])
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success() && stdout.contains("1 passed"),
            "{name} failed in its process:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    #[tokio::test(flavor = "current_thread")]
    #[ignore = "entry point of the unregistered-child test's own process"]
    async fn unregistered_child() -> anyhow::Result<()> {
        super::warns_once_per_unregistered_child_task().await
    }

    /// One thread, so that the subscriber set for this test sees the spans of the executor's
    /// tasks too.
    #[tokio::test(flavor = "current_thread")]
    #[ignore = "entry point of the span test's own process"]
    async fn span_child() -> anyhow::Result<()> {
        super::follows_from_enqueuer().await
    }

    use super::*;
}

async fn executor_counts_each_outcome(t: TestDb) -> anyhow::Result<()> {
    executor_counts(Arc::new(SeaOrmTaskExecutionStorage::new(t.db.clone()))).await
}

async fn worker_counts_records_batches_and_reclaims(t: TestDb) -> anyhow::Result<()> {
    worker_counts(Arc::new(SeaOrmStateStore::new(t.db.clone()))).await
}

async fn executor_samples_the_queue_depth_by_status(t: TestDb) -> anyhow::Result<()> {
    queue_depth(Arc::new(SeaOrmTaskExecutionStorage::new(t.db.clone()))).await
}

// ---------------------------------------------------------------------------------------------
// The recorder.

type Store = Registry<Key, AtomicStorage>;

/// Keeps every metric in a registry that is read without being reset.
struct TestRecorder(Arc<Store>);

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.0
            .get_or_create_counter(key, |c| Counter::from_arc(Arc::clone(c)))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.0
            .get_or_create_gauge(key, |g| Gauge::from_arc(Arc::clone(g)))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.0
            .get_or_create_histogram(key, |h| Histogram::from_arc(Arc::clone(h)))
    }
}

/// The global recorder of this test binary, installed by the first test that asks.
fn recorder() -> anyhow::Result<&'static Store> {
    static RECORDER: OnceLock<Option<Arc<Store>>> = OnceLock::new();
    let store = RECORDER.get_or_init(|| {
        let store = Arc::new(Registry::atomic());
        ::metrics::set_global_recorder(TestRecorder(Arc::clone(&store)))
            .ok()
            .map(|()| store)
    });
    store
        .as_deref()
        .context("another global metrics recorder was installed first")
}

/// A label value no other test uses.
fn unique(test: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{test}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A metric's name, the labels it is read with, and the value it should have.
pub(crate) type Expected<'a> = (&'a str, &'a [(&'a str, &'a str)], u64);

/// A gauge's name, the labels it is read with, and the value it should have.
type ExpectedGauge<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

/// The series of one test (those labelled `test` = its value), read from the recorder.
pub(crate) struct Series {
    store: &'static Store,
    test: String,
}

impl Series {
    pub(crate) fn new(test: &str) -> anyhow::Result<Self> {
        Ok(Self {
            store: recorder()?,
            test: unique(test),
        })
    }

    /// The constant labels to give the executor or worker under test.
    pub(crate) fn labels(&self) -> Vec<(String, String)> {
        vec![("test".to_owned(), self.test.clone())]
    }

    /// Whether `key` is one of this test's series and carries every label of `with`.
    fn matches(&self, key: &Key, name: &str, with: &[(&str, &str)]) -> bool {
        let has = |k: &str, v: &str| key.labels().any(|l| l.key() == k && l.value() == v);
        key.name() == name && has("test", &self.test) && with.iter().all(|(k, v)| has(k, v))
    }

    /// The sum of the counters `name` of this test with the labels `with`.
    pub(crate) fn counter(&self, name: &str, with: &[(&str, &str)]) -> u64 {
        self.store
            .get_counter_handles()
            .into_iter()
            .filter(|(key, _)| self.matches(key, name, with))
            .map(|(_, value)| value.load(Ordering::SeqCst))
            .sum()
    }

    /// The value of the gauge `name` of this test with the labels `with`, if it was set.
    fn gauge(&self, name: &str, with: &[(&str, &str)]) -> Option<f64> {
        self.store
            .get_gauge_handles()
            .into_iter()
            .find(|(key, _)| self.matches(key, name, with))
            .map(|(_, bits)| f64::from_bits(bits.load(Ordering::SeqCst)))
    }

    /// Reads the gauges `(name, labels, value)` until they all hold their value or 10 s
    /// passed; fails with every difference then.
    async fn expect_gauges(&self, expected: &[ExpectedGauge<'_>]) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let wrong: Vec<String> = expected
                .iter()
                .filter_map(|(name, with, want)| {
                    let got = self.gauge(name, with);
                    (got != Some(*want))
                        .then(|| format!("{name}{with:?}: {got:?}, expected {want}"))
                })
                .collect();
            if wrong.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("gauges of {}: {}", self.test, wrong.join("; "));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The values recorded by the histograms `name` of this test with the labels `with`.
    fn histogram(&self, name: &str, with: &[(&str, &str)]) -> Vec<f64> {
        self.store
            .get_histogram_handles()
            .into_iter()
            .filter(|(key, _)| self.matches(key, name, with))
            .flat_map(|(_, bucket)| bucket.data())
            .collect()
    }

    /// The counters `(name, labels)` of `expected`, read until they all hold their expected
    /// value (the count of a run's result follows its write by a moment) or 10 s passed;
    /// fails with every difference then.
    pub(crate) async fn expect(&self, expected: &[Expected<'_>]) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let wrong: Vec<String> = expected
                .iter()
                .filter_map(|(name, with, want)| {
                    let got = self.counter(name, with);
                    (got != *want).then(|| format!("{name}{with:?}: {got}, expected {want}"))
                })
                .collect();
            if wrong.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("metrics of {}: {}", self.test, wrong.join("; "));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The executor.

const WAIT: WaitOptions = WaitOptions {
    poll_interval: Duration::from_millis(20),
    timeout: Some(Duration::from_secs(30)),
};

/// Waits until the execution of `handle` is running.
async fn until_running<O: serde::de::DeserializeOwned>(
    handle: &TaskHandle<O>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while handle.get().await?.status != TaskExecutionStatus::Running {
        ensure!(Instant::now() < deadline, "never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// One executor runs tasks that complete, fail, fail once then complete, time out, get
/// cancelled, a parent with two children, and an execution whose lease lapsed under a dead
/// executor; each outcome is counted once under its queue and task.
/// The executor samples the unfinished executions per queue and status into the queue-depth
/// gauge, and sets a series that emptied back to 0.
async fn queue_depth(storage: Arc<dyn TaskExecutionStorage>) -> anyhow::Result<()> {
    let series = Series::new("depth")?;
    let now = SystemClock.now_ms();
    let new = |id: &str, queue: &str, wake_key: Option<&str>| NewTaskExecution {
        execution_id: id.to_owned(),
        // No executor has this task: its executions stay where they are.
        task_id: "mNobody".to_owned(),
        queue: Some(queue.to_owned()),
        wake_key: wake_key.map(str::to_owned),
        timeout: Duration::from_secs(600),
        input: "null".to_owned(),
        ..NewTaskExecution::default()
    };
    storage
        .enqueue_task_executions(
            vec![
                new("a1", "mqa", None),
                new("a2", "mqa", None),
                new("a3", "mqa", None),
                new("b1", "mqb", None),
                new("b2", "mqb", None),
                new("s1", "mqa", Some("depth-key")),
            ],
            now,
        )
        .await?;
    let executor = Executor::new(
        Arc::clone(&storage),
        ExecutorOptions {
            metric_labels: series.labels(),
            queue_depth_interval: Some(Duration::from_millis(50)),
            expire_interval: Duration::from_millis(20),
            ..fast_options()
        },
    );
    executor.start();
    let depth = metric::TASK_QUEUE_DEPTH;
    let result = async {
        series
            .expect_gauges(&[
                (depth, &[("queue", "mqa"), ("status", "ready")], 3.0),
                (depth, &[("queue", "mqb"), ("status", "ready")], 2.0),
                (depth, &[("queue", "mqa"), ("status", "sleeping")], 1.0),
            ])
            .await?;
        ensure!(
            series
                .gauge(depth, &[("queue", "mqb"), ("status", "running")])
                .is_none(),
            "a series was set for a queue and status that holds nothing"
        );
        // The oldest ready execution of each (queue, task) ages from its start, sample by
        // sample: nobody serves `mNobody`.
        let age = |queue: &str| {
            series.gauge(
                metric::TASK_OLDEST_READY_AGE,
                &[("queue", queue), ("task", "mNobody")],
            )
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(age("mqa").is_some_and(|s| s >= 0.3) && age("mqb").is_some_and(|s| s >= 0.3)) {
            ensure!(
                Instant::now() < deadline,
                "oldest-ready ages {:?} {:?}",
                age("mqa"),
                age("mqb")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ensure!(
            age("mqa").is_some_and(|s| s < 60.0),
            "age {:?} beyond the test's own age",
            age("mqa")
        );
        // Queue `mqb` empties: its series goes back to 0 while the others stay.
        storage
            .update_task_executions(
                &TaskExecutionGuard {
                    execution_ids: vec!["b1".to_owned(), "b2".to_owned()],
                    ..TaskExecutionGuard::default()
                },
                &TaskExecutionUpdate {
                    now: SystemClock.now_ms(),
                    status: Some(TaskExecutionStatus::Cancelled),
                    ..TaskExecutionUpdate::default()
                },
            )
            .await?;
        series
            .expect_gauges(&[
                (depth, &[("queue", "mqa"), ("status", "ready")], 3.0),
                (depth, &[("queue", "mqb"), ("status", "ready")], 0.0),
                (depth, &[("queue", "mqa"), ("status", "sleeping")], 1.0),
                (
                    metric::TASK_OLDEST_READY_AGE,
                    &[("queue", "mqb"), ("task", "mNobody")],
                    0.0,
                ),
            ])
            .await
    }
    .await;
    executor.shutdown().await;
    result
}

async fn executor_counts(storage: Arc<dyn TaskExecutionStorage>) -> anyhow::Result<()> {
    let series = Series::new("executor")?;
    let ok =
        TaskDefinition::new("mOk", |_ctx, n: u32| async move { Ok::<_, TaskError>(n) }).queue("mq");
    let fail = TaskDefinition::new("mFail", |_ctx, ()| async move {
        Err::<(), _>(TaskError::fatal("refused"))
    });
    let flaky = TaskDefinition::new("mFlaky", |ctx, ()| async move {
        if ctx.attempt == 0 {
            return Err(TaskError::retryable("first attempt fails"));
        }
        Ok(())
    })
    .retry(RetryOptions {
        max_attempts: 1,
        ..RetryOptions::default()
    });
    let slow = TaskDefinition::new("mSlow", |_ctx, ()| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok::<_, TaskError>(())
    })
    .timeout(Duration::from_millis(100));
    let stuck = TaskDefinition::new("mStuck", |_ctx, ()| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok::<_, TaskError>(())
    });
    // Retried once: the lapse of its lease counts as an attempt.
    let lapse = TaskDefinition::new("mLapse", |_ctx, ()| async move { Ok::<_, TaskError>(()) })
        .timeout(Duration::from_millis(100))
        .retry(RetryOptions {
            max_attempts: 1,
            ..RetryOptions::default()
        });
    let child = ok.clone();
    let parent = TaskDefinition::parent("mParent", move |_ctx, ()| {
        let ok = child.clone();
        async move { Ok(ParentOutcome::new(()).child(&ok, &1).child(&ok, &2)) }
    })
    .without_finalize();

    let executor = Executor::new(
        Arc::clone(&storage),
        ExecutorOptions {
            metric_labels: series.labels(),
            ..fast_options()
        },
    );
    executor.register(&ok)?;
    executor.register(&fail)?;
    executor.register(&flaky)?;
    executor.register(&slow)?;
    executor.register(&stuck)?;
    executor.register(&lapse)?;
    executor.register(&parent)?;

    // A dead executor claimed this one: its lease lapses 100 ms later, and the expire loop
    // gives it back.
    let lapsed = executor.enqueue(&lapse, &()).await?;
    let now = sea_orm_durable::clock::SystemClock.now_ms();
    let taken = storage
        .claim_task_executions(&ClaimParams {
            executor_id: "dead".to_owned(),
            now,
            limit: 1,
            lease_margin: Duration::ZERO,
            task_ids: Some(vec!["mLapse".to_owned()]),
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
    executor.start();

    let handles = (
        executor.enqueue(&ok, &7).await?,
        executor.enqueue(&fail, &()).await?,
        executor.enqueue(&flaky, &()).await?,
        executor.enqueue(&slow, &()).await?,
        executor.enqueue(&parent, &()).await?,
    );
    let cancelled = executor.enqueue(&stuck, &()).await?;
    until_running(&cancelled).await?;
    ensure!(cancelled.cancel().await?, "the cancel changed nothing");
    let statuses = [
        handles.0.wait_with(&WAIT).await?.status(),
        handles.1.wait_with(&WAIT).await?.status(),
        handles.2.wait_with(&WAIT).await?.status(),
        handles.3.wait_with(&WAIT).await?.status(),
        handles.4.wait_with(&WAIT).await?.status(),
        lapsed.wait_with(&WAIT).await?.status(),
    ];
    use TaskExecutionStatus as S;
    ensure!(
        statuses
            == [
                S::Completed,
                S::Failed,
                S::Completed,
                S::TimedOut,
                S::Completed,
                S::Completed
            ],
        "{statuses:?}"
    );

    let task = |id| [("task", id)];
    let result = series
        .expect(&[
            // Two children of the parent and one enqueued directly, in their queue.
            (metric::TASK_CLAIMED, &[("task", "mOk"), ("queue", "mq")], 3),
            (
                metric::TASK_COMPLETED,
                &[("task", "mOk"), ("queue", "mq")],
                3,
            ),
            (metric::TASK_CLAIMED, &task("mFail"), 1),
            (metric::TASK_FAILED, &task("mFail"), 1),
            (metric::TASK_CLAIMED, &task("mFlaky"), 2),
            (metric::TASK_RETRIED, &task("mFlaky"), 1),
            (metric::TASK_COMPLETED, &task("mFlaky"), 1),
            (metric::TASK_TIMED_OUT, &task("mSlow"), 1),
            (metric::TASK_RETRIED, &task("mSlow"), 0),
            (metric::TASK_CANCELLED, &task("mStuck"), 1),
            (metric::TASK_COMPLETED, &task("mStuck"), 0),
            // The run, then the parents loop once its children finished.
            (metric::TASK_COMPLETED, &task("mParent"), 1),
            (metric::TASK_PARENTS_FINALIZED, &task("mParent"), 1),
            // Claimed once here (the dead executor's claim is not this executor's).
            (metric::TASK_CLAIMED, &task("mLapse"), 1),
            (metric::TASK_COMPLETED, &task("mLapse"), 1),
            (metric::TASK_EXPIRED, &[], 1),
            // Every claim ended in exactly one counted result.
            (metric::TASK_CLAIMED, &[], 10),
            (metric::TASK_COMPLETED, &[], 6),
            (metric::TASK_FAILED, &[], 1),
        ])
        .await;
    executor.shutdown().await;
    result?;

    // One claim latency and one run duration per run; the time-out ran for its timeout.
    let latencies = series.histogram(metric::TASK_CLAIM_LATENCY, &[]);
    ensure!(latencies.len() == 10, "{} claim latencies", latencies.len());
    ensure!(
        latencies.iter().all(|s| (0.0..30.0).contains(s)),
        "{latencies:?}"
    );
    let durations = series.histogram(metric::TASK_RUN_DURATION, &task("mSlow"));
    ensure!(
        durations.len() == 1 && durations[0] >= 0.09 && durations[0] < 10.0,
        "mSlow ran {durations:?} s"
    );
    ensure!(series.histogram(metric::TASK_RUN_DURATION, &[]).len() == 10);
    // Another executor's series are not this one's.
    let other = Series::new("executor")?;
    ensure!(other.counter(metric::TASK_CLAIMED, &[]) == 0);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The batch worker.

/// A worker finishes a job of 10 records in batches of 2, two records failing, one batch first
/// held by a dead worker and reclaimed once stale: every record, batch and reclaim is counted
/// once, and the finalization under the job's status.
async fn worker_counts(store: Arc<dyn DistributedStateStore>) -> anyhow::Result<()> {
    let series = Series::new("worker")?;
    let job = "metrics-job";
    let records = (0..10).map(|i| json!({ "n": i }));
    prepare(&*store, job, JobConfig::new(2), records).await?;
    // A worker that dies holding a batch.
    let ClaimBatchResult::Claimed(_) = store.claim_batch(job, "dead").await? else {
        bail!("the dead worker claimed nothing");
    };
    let options = WorkerOptions {
        stale_timeout: Duration::from_millis(300),
        heartbeat_interval: Duration::from_millis(100),
        poll_interval: Duration::from_millis(20),
        metric_labels: series.labels(),
        ..WorkerOptions::default()
    };
    let processor = |ctx: RecordContext, _value: Value| async move {
        if ctx.index.is_multiple_of(5) {
            return Err(ProcessError::from(format!("record {} refused", ctx.index)));
        }
        Ok(())
    };
    let report = tokio::time::timeout(
        Duration::from_secs(30),
        run_worker(Arc::clone(&store), job, "w", processor, options),
    )
    .await??;
    ensure!(
        report.batches == 5 && report.reclaimed == 1 && report.finalized,
        "{report:?}"
    );
    let status = report.job_status.context("no job status")?;
    ensure!(status == JobStatus::Completed, "job {status}");
    series
        .expect(&[
            (metric::BATCH_RECORDS_PROCESSED, &[], 8),
            (metric::BATCH_RECORDS_FAILED, &[], 2),
            (metric::BATCH_CLAIMED, &[], 5),
            (metric::BATCH_COMPLETED, &[], 5),
            (metric::BATCH_FAILED, &[], 0),
            (metric::BATCH_CLAIMS_LOST, &[], 0),
            (metric::BATCH_RECLAIMED, &[], 1),
            (metric::BATCH_JOBS_FINALIZED, &[("status", "COMPLETED")], 1),
        ])
        .await?;
    let durations = series.histogram(metric::BATCH_DURATION, &[]);
    ensure!(
        durations.len() == 5 && durations.iter().all(|s| (0.0..30.0).contains(s)),
        "{durations:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Tracing.

/// Spans by id with their names, and the `follows_from` links recorded between them.
#[derive(Default)]
struct Links {
    names: BTreeMap<u64, &'static str>,
    follows: Vec<(u64, u64)>,
}

/// A layer that keeps [`Links`].
#[derive(Clone, Default)]
struct LinkLayer(Arc<Mutex<Links>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LinkLayer {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if let Ok(mut links) = self.0.lock() {
            links.names.insert(id.into_u64(), attrs.metadata().name());
        }
    }

    fn on_follows_from(
        &self,
        span: &tracing::span::Id,
        follows: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if let Ok(mut links) = self.0.lock() {
            links.follows.push((span.into_u64(), follows.into_u64()));
        }
    }
}

/// The run of an execution enqueued inside a span follows from that span, and the run of a
/// child follows from its parent's run.
async fn follows_from_enqueuer() -> anyhow::Result<()> {
    use tracing::Instrument;
    use tracing_subscriber::layer::SubscriberExt;

    let layer = LinkLayer::default();
    let subscriber = tracing_subscriber::registry().with(layer.clone());
    let _default = tracing::subscriber::set_default(subscriber);

    let leaf = TaskDefinition::new("fLeaf", |_ctx, n: u32| async move { Ok::<_, TaskError>(n) });
    let child = leaf.clone();
    let parent = TaskDefinition::parent("fParent", move |_ctx, ()| {
        let leaf = child.clone();
        async move { Ok(ParentOutcome::new(()).child(&leaf, &1)) }
    })
    .without_finalize();
    let executor = Executor::new(
        Arc::new(InMemoryTaskExecutionStorage::new()),
        fast_options(),
    );
    executor.register(&leaf)?;
    executor.register(&parent)?;
    executor.start();
    let handle = executor
        .enqueue(&parent, &())
        .instrument(tracing::info_span!("request"))
        .await?;
    let done = handle.wait_with(&WAIT).await?;
    executor.shutdown().await;
    ensure!(done.status() == TaskExecutionStatus::Completed);

    let links = layer.0.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let name = |id: u64| links.names.get(&id).copied().unwrap_or("?");
    let pairs: Vec<(&str, &str)> = links
        .follows
        .iter()
        .map(|(span, from)| (name(*span), name(*from)))
        .collect();
    ensure!(
        pairs == [("run", "request"), ("run", "run")],
        "follows_from links {pairs:?}"
    );
    Ok(())
}

/// The WARN events seen: their `task_id` field and message.
#[derive(Clone, Default)]
struct WarnLayer(Arc<Mutex<Vec<(String, String)>>>);

/// Reads the `task_id` and `message` fields of one event.
#[derive(Default)]
struct WarnFields {
    task_id: String,
    message: String,
}

impl tracing::field::Visit for WarnFields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "task_id" => self.task_id = format!("{value:?}"),
            "message" => self.message = format!("{value:?}"),
            _ => {}
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for WarnLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if *event.metadata().level() != tracing::Level::WARN {
            return;
        }
        let mut fields = WarnFields::default();
        event.record(&mut fields);
        if let Ok(mut seen) = self.0.lock() {
            seen.push((fields.task_id, fields.message));
        }
    }
}

/// Two parents spawn children of a task registered nowhere (and one of a registered task): the
/// executor warns once about the unregistered task, naming it, and not about the registered
/// one; the children wait `ready`, visible with their age in `ready_task_executions`.
async fn warns_once_per_unregistered_child_task() -> anyhow::Result<()> {
    use tracing_subscriber::layer::SubscriberExt;

    let layer = WarnLayer::default();
    let subscriber = tracing_subscriber::registry().with(layer.clone());
    let _default = tracing::subscriber::set_default(subscriber);

    let served = TaskDefinition::new("uServed", |_ctx, ()| async move { Ok::<_, TaskError>(()) });
    let nobody = TaskDefinition::new("uNobody", |_ctx, ()| async move { Ok::<_, TaskError>(()) });
    let (a, b) = (served.clone(), nobody.clone());
    let parent = TaskDefinition::parent("uParent", move |_ctx, ()| {
        let (served, nobody) = (a.clone(), b.clone());
        async move {
            Ok(ParentOutcome::new(())
                .child(&served, &())
                .child(&nobody, &())
                .child(&nobody, &()))
        }
    })
    .without_finalize();
    let storage: Arc<dyn TaskExecutionStorage> = Arc::new(InMemoryTaskExecutionStorage::new());
    let executor = Executor::new(Arc::clone(&storage), fast_options());
    executor.register(&served)?;
    executor.register(&parent)?;
    executor.start();
    for _ in 0..2 {
        let handle = executor.enqueue(&parent, &()).await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while handle.get().await?.status != TaskExecutionStatus::WaitingForChildren {
            ensure!(
                Instant::now() < deadline,
                "the parent never spawned its children"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    executor.shutdown().await;
    let warned: Vec<(String, String)> = layer
        .0
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .iter()
        .filter(|(_, message)| message.contains("not registered"))
        .cloned()
        .collect();
    ensure!(
        warned.len() == 1 && warned[0].0 == "uNobody",
        "warnings {warned:?}"
    );
    let ready = storage
        .ready_task_executions(SystemClock.now_ms(), 100)
        .await?;
    ensure!(
        ready.len() == 1 && ready[0].task_id == "uNobody" && ready[0].count == 4,
        "ready {ready:?}"
    );
    Ok(())
}

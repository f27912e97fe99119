//! The durable executor end to end, on every storage: the in-memory one and SeaORM on SQLite,
//! PostgreSQL and MySQL/MariaDB.

use std::future::Future;
use std::sync::Arc;

use sea_orm_durable::SeaOrmTaskExecutionStorage;
use sea_orm_durable::task::InMemoryTaskExecutionStorage;
use sea_orm_durable::testkit::executor as cases;
use sea_orm_durable::testkit::task::Storage;
use sea_orm_durable::testkit::{CaseResult, Setup, UnderTest, run_case};

use crate::harness::Backend;

/// Runs `case` on a fresh storage, in memory (`None`) or on a fresh database of `backend`, and
/// prints what it measured, if anything.
async fn on_storage<F, Fut, T>(backend: Option<Backend>, case: F) -> anyhow::Result<()>
where
    F: FnOnce(Storage) -> Fut,
    Fut: Future<Output = CaseResult<T>>,
    T: std::fmt::Debug,
{
    let label = backend.map_or_else(|| "memory".to_owned(), |b| format!("{b:?}"));
    let factory = async move {
        match backend {
            None => {
                let storage: Storage = Arc::new(InMemoryTaskExecutionStorage::new());
                Ok(Setup::Ready(UnderTest::new(storage)))
            }
            Some(backend) => crate::task::storage(backend).await,
        }
    };
    // libtest names each test's thread after the test, and the test's future runs on it.
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("executor case");
    if let Some(value) = run_case(name, factory, case).await?
        && std::mem::size_of::<T>() > 0
    {
        eprintln!("{label}: {value:?}");
    }
    Ok(())
}

/// Declares one test per executor case on the storage selected by `$backend`, each with the
/// attributes given after it (for example, ignored when that server is not configured).
macro_rules! executor_cases {
    ($backend:expr $(, #[$attr:meta])*) => {
        use super::*;

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        $(#[$attr])*
        async fn upstream_scenario_one_executor() -> anyhow::Result<()> {
            on_storage($backend, |s| cases::upstream_scenario(s, 1)).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        $(#[$attr])*
        async fn upstream_scenario_three_executors() -> anyhow::Result<()> {
            on_storage($backend, |s| cases::upstream_scenario(s, 3)).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        $(#[$attr])*
        async fn cancel_ready_execution() -> anyhow::Result<()> {
            on_storage($backend, cases::cancel_ready_execution).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        $(#[$attr])*
        async fn every_task_write_whose_reply_is_lost_tells_the_truth() -> anyhow::Result<()> {
            on_storage($backend, cases::every_task_write_whose_reply_is_lost_tells_the_truth).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        $(#[$attr])*
        async fn second_cancel_in_the_same_millisecond_reports_no_change() -> anyhow::Result<()> {
            on_storage($backend, cases::second_cancel_in_the_same_millisecond_reports_no_change).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        $(#[$attr])*
        async fn cancel_running_execution() -> anyhow::Result<()> {
            on_storage($backend, cases::cancel_running_execution).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        $(#[$attr])*
        async fn cancel_parent_cancels_children() -> anyhow::Result<()> {
            on_storage($backend, cases::cancel_parent_cancels_children).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        $(#[$attr])*
        async fn timeout_ends_timed_out_after_retries() -> anyhow::Result<()> {
            on_storage($backend, cases::timeout_ends_timed_out_after_retries).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        $(#[$attr])*
        async fn shutdown_lets_running_executions_finish() -> anyhow::Result<()> {
            on_storage($backend, cases::shutdown_lets_running_executions_finish).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        $(#[$attr])*
        async fn panicking_task_fails_its_execution() -> anyhow::Result<()> {
            on_storage($backend, cases::panicking_task_fails_its_execution).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        $(#[$attr])*
        async fn delays_are_honoured() -> anyhow::Result<()> {
            on_storage($backend, cases::delays_are_honoured).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        $(#[$attr])*
        async fn delayed_enqueue_runs_at_its_time() -> anyhow::Result<()> {
            on_storage($backend, cases::delayed_enqueue_runs_at_its_time).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        $(#[$attr])*
        async fn sleeping_child_woken_by_key_lets_its_parent_finish() -> anyhow::Result<()> {
            on_storage(
                $backend,
                cases::sleeping_child_woken_by_key_lets_its_parent_finish,
            )
            .await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        $(#[$attr])*
        async fn sleeping_task_times_out_when_not_woken() -> anyhow::Result<()> {
            on_storage($backend, cases::sleeping_task_times_out_when_not_woken).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        $(#[$attr])*
        async fn sleeping_wait_survives_executor_restart() -> anyhow::Result<()> {
            on_storage($backend, cases::sleeping_wait_survives_executor_restart).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        $(#[$attr])*
        async fn many_executors_enqueue_each_tick_once() -> anyhow::Result<()> {
            on_storage($backend, cases::many_executors_enqueue_each_tick_once).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        $(#[$attr])*
        async fn missed_ticks_follow_the_schedule_policy() -> anyhow::Result<()> {
            on_storage($backend, cases::missed_ticks_follow_the_schedule_policy).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        $(#[$attr])*
        async fn bounded_cron_fires_its_last_tick_and_ends() -> anyhow::Result<()> {
            on_storage($backend, cases::bounded_cron_fires_its_last_tick_and_ends).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        $(#[$attr])*
        async fn bad_schedules_are_refused() -> anyhow::Result<()> {
            on_storage($backend, cases::bad_schedules_are_refused).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        $(#[$attr])*
        async fn options_beyond_the_limits_are_refused() -> anyhow::Result<()> {
            on_storage($backend, cases::options_beyond_the_limits_are_refused).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        $(#[$attr])*
        async fn executor_with_limits_at_the_end_of_u64_finishes_its_work() -> anyhow::Result<()> {
            on_storage(
                $backend,
                cases::executor_with_limits_at_the_end_of_u64_finishes_its_work,
            )
            .await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        $(#[$attr])*
        async fn executors_claim_only_their_tasks_and_queues() -> anyhow::Result<()> {
            on_storage($backend, cases::executors_claim_only_their_tasks_and_queues).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        $(#[$attr])*
        async fn a_paused_queue_stops_every_executor_until_resumed() -> anyhow::Result<()> {
            on_storage($backend, cases::a_paused_queue_stops_every_executor_until_resumed).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        $(#[$attr])*
        async fn heartbeats_keep_a_long_run_alive_and_report_progress() -> anyhow::Result<()> {
            on_storage(
                $backend,
                cases::heartbeats_keep_a_long_run_alive_and_report_progress,
            )
            .await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        $(#[$attr])*
        async fn snoozed_runs_run_again_without_counting_an_attempt() -> anyhow::Result<()> {
            on_storage(
                $backend,
                cases::snoozed_runs_run_again_without_counting_an_attempt,
            )
            .await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        $(#[$attr])*
        async fn heartbeat_of_a_run_that_lost_its_execution_is_refused() -> anyhow::Result<()> {
            on_storage(
                $backend,
                cases::heartbeat_of_a_run_that_lost_its_execution_is_refused,
            )
            .await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        $(#[$attr])*
        async fn retention_deletes_old_finished_executions() -> anyhow::Result<()> {
            on_storage($backend, cases::retention_deletes_old_finished_executions).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        $(#[$attr])*
        async fn outputs_are_stored_once() -> anyhow::Result<()> {
            on_storage($backend, cases::outputs_are_stored_once).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        $(#[$attr])*
        async fn claims_whose_reply_was_lost_are_taken_back() -> anyhow::Result<()> {
            on_storage($backend, cases::claims_whose_reply_was_lost_are_taken_back).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        $(#[$attr])*
        async fn cancellation_before_the_run_is_registered_is_kept() -> anyhow::Result<()> {
            on_storage(
                $backend,
                cases::cancellation_before_the_run_is_registered_is_kept,
            )
            .await
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
    executor_cases!(
        Some(Backend::Postgres),
        #[cfg_attr(durable_no_postgres, ignore = "DATABASE_URL_POSTGRES is not set")]
    );
}

mod mysql {
    executor_cases!(
        Some(Backend::MySql),
        #[cfg_attr(durable_no_mysql, ignore = "DATABASE_URL_MYSQL is not set")]
    );
}

mod sql {
    use std::time::Duration;

    use anyhow::{Context, ensure};
    use sea_orm::TransactionTrait;
    use sea_orm_durable::task::{TaskExecutionStatus, WaitOptions};
    use sea_orm_durable::testkit::executor::fast_options;
    use sea_orm_durable::{Executor, ParentOutcome, TaskDefinition, TaskError};

    use super::*;
    use crate::harness::{TestDb, per_backend};

    per_backend!(
        enqueue_in_transaction_runs_only_after_commit,
        a_result_that_cannot_be_stored_fails_with_the_real_error,
        outputs_beyond_the_packet_limit_do_not_wedge_the_executors,
        clock_skew_against_the_database_is_measured,
    );

    /// The system clock moved by a fixed offset.
    #[derive(Debug)]
    struct OffsetClock(i64);

    impl sea_orm_durable::clock::Clock for OffsetClock {
        fn now_ms(&self) -> i64 {
            sea_orm_durable::clock::SystemClock.now_ms() + self.0
        }
    }

    /// An executor measures how far its clock is from the database's at start (and warns when
    /// it is more than a quarter of the lease margin); in step it reads about zero.
    async fn clock_skew_against_the_database_is_measured(t: TestDb) -> anyhow::Result<()> {
        for (offset, name) in [(0_i64, "in step"), (600_000, "ten minutes ahead")] {
            let storage = Arc::new(SeaOrmTaskExecutionStorage::new(t.db.clone()));
            let executor = Executor::new(
                storage,
                sea_orm_durable::ExecutorOptions {
                    clock: Arc::new(OffsetClock(offset)),
                    ..fast_options()
                },
            );
            ensure!(executor.clock_skew().is_none());
            executor.start();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let skew = loop {
                if let Some(skew) = executor.clock_skew() {
                    let ms = i64::try_from(skew.magnitude().as_millis())?;
                    break match skew {
                        sea_orm_durable::clock::ClockSkew::Ahead(_) => ms,
                        sea_orm_durable::clock::ClockSkew::Behind(_) => -ms,
                    };
                }
                ensure!(
                    std::time::Instant::now() < deadline,
                    "{name}: never measured"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            executor.shutdown().await;
            ensure!(
                (skew - offset).abs() < 2_000,
                "{name}: measured {skew} ms, expected about {offset} ms"
            );
        }
        // A storage without a clock of its own reports none.
        let executor = Executor::new(
            Arc::new(InMemoryTaskExecutionStorage::new()),
            fast_options(),
        );
        executor.start();
        tokio::time::sleep(Duration::from_millis(300)).await;
        executor.shutdown().await;
        ensure!(executor.clock_skew().is_none());
        Ok(())
    }

    /// A result the database refuses for good (here a trigger; in life a packet limit or a
    /// constraint) fails its execution at once with the database's error, and its parent with
    /// it, instead of leaving it `running` until the lease lapses and blaming a dead executor.
    async fn a_result_that_cannot_be_stored_fails_with_the_real_error(
        t: TestDb,
    ) -> anyhow::Result<()> {
        crate::task::poison_writes(&t, "durable_task_executions", "UPDATE").await?;
        let storage = Arc::new(SeaOrmTaskExecutionStorage::new(t.db.clone()));
        let executor = Executor::new(storage, fast_options());
        let echo = TaskDefinition::new(
            "echo",
            |_ctx, s: String| async move { Ok::<_, TaskError>(s) },
        );
        let echo_child = echo.clone();
        let parent = TaskDefinition::parent("echoParent", move |_ctx, ()| {
            let echo = echo_child.clone();
            async move {
                Ok(ParentOutcome::new(())
                    .child(&echo, &"fine".to_owned())
                    .child(&echo, &"poison".to_owned()))
            }
        })
        .without_finalize();
        executor.register(&echo)?;
        executor.register(&parent)?;
        executor.start();
        let wait = WaitOptions {
            poll_interval: Duration::from_millis(20),
            timeout: Some(Duration::from_secs(30)),
        };
        let poisoned = executor.enqueue(&echo, &"poison".to_owned()).await?;
        let fine = executor.enqueue(&echo, &"fine".to_owned()).await?;
        let family = executor.enqueue(&parent, &()).await?;
        let poisoned = poisoned.wait_with(&wait).await?;
        let fine = fine.wait_with(&wait).await?;
        let family = family.wait_with(&wait).await?;
        executor.shutdown().await;
        ensure!(
            poisoned.status() == TaskExecutionStatus::Failed,
            "{:?}",
            poisoned.status()
        );
        let message = poisoned
            .error()
            .map(|e| e.message.clone())
            .unwrap_or_default();
        ensure!(
            message.contains("could not be stored") && message.contains("poisoned output"),
            "error {message}"
        );
        ensure!(fine.output.as_deref() == Some("fine"));
        ensure!(
            family.status() == TaskExecutionStatus::ChildrenFailed,
            "parent {:?}",
            family.status()
        );
        Ok(())
    }

    /// Outputs near MySQL's default 16 MiB packet: a 9 MiB result is written once (not as run
    /// output and output, 18 MiB), and the records of several 6 MiB children closed together
    /// are split by bytes. On MariaDB either wedged the executors before.
    async fn outputs_beyond_the_packet_limit_do_not_wedge_the_executors(
        t: TestDb,
    ) -> anyhow::Result<()> {
        let storage = Arc::new(SeaOrmTaskExecutionStorage::new(t.db.clone()));
        let executor = Executor::new(storage, fast_options());
        let big = TaskDefinition::new("bigOutput", |_ctx, n: usize| async move {
            Ok::<_, TaskError>("x".repeat(n))
        });
        let big_child = big.clone();
        let parent = TaskDefinition::parent("bigParent", move |_ctx, sizes: Vec<usize>| {
            let big = big_child.clone();
            async move {
                Ok(sizes
                    .iter()
                    .fold(ParentOutcome::new(()), |p, n| p.child(&big, n)))
            }
        })
        .without_finalize();
        executor.register(&big)?;
        executor.register(&parent)?;
        executor.start();
        let sizes = [9 << 20, 6 << 20, 6 << 20, 6 << 20];
        let mut handles = Vec::new();
        for size in sizes {
            handles.push(executor.enqueue(&parent, &vec![size]).await?);
        }
        let wait = WaitOptions {
            poll_interval: Duration::from_millis(50),
            timeout: Some(Duration::from_secs(60)),
        };
        let mut finished = Vec::new();
        for handle in &handles {
            finished.push(handle.wait_with(&wait).await?);
        }
        executor.shutdown().await;
        for (size, done) in sizes.iter().zip(finished) {
            ensure!(
                done.status() == TaskExecutionStatus::Completed,
                "{:?} {:?}",
                done.status(),
                done.error()
            );
            let output = done.output.context("no output")?;
            ensure!(
                output.children.len() == 1
                    && output.children[0]
                        .output
                        .as_str()
                        .is_some_and(|s| s.len() == *size),
                "child output of the wrong size"
            );
        }
        Ok(())
    }

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

        // A storage outside the application's database cannot join its transaction.
        let elsewhere = Executor::new(
            Arc::new(InMemoryTaskExecutionStorage::new()),
            fast_options(),
        );
        let txn = t.db.begin().await?;
        let refused = elsewhere.enqueue_in(&txn, &double, &1).await;
        txn.rollback().await?;
        ensure!(
            matches!(refused, Err(sea_orm_durable::Error::Unsupported { .. })),
            "the in-memory storage joined a database transaction: {refused:?}"
        );
        Ok(())
    }
}

/// SQLite with the pool the README recommends (4 connections, WAL, 10 s busy timeout).
mod sqlite_pool {
    use std::time::{Duration, Instant};

    use anyhow::ensure;
    use sea_orm::TransactionTrait;
    use sea_orm_durable::task::storage::TaskExecutionStorage;
    use sea_orm_durable::task::{TaskExecutionStatus, WaitOptions};
    use sea_orm_durable::testkit::executor::fast_options;
    use sea_orm_durable::{Executor, TaskDefinition, TaskError};

    use super::*;
    use crate::harness::TestDb;

    mod sqlite {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn reads_answer_while_the_application_holds_the_write_lock() -> anyhow::Result<()> {
            crate::harness::run(
                crate::harness::Backend::Sqlite,
                super::reads_answer_while_the_application_holds_the_write_lock,
            )
            .await
        }
    }

    /// While the application's transaction holds SQLite's write lock (an `enqueue_in` not yet
    /// committed), the executor's loops keep trying to write; reads through the same pool still
    /// answer at once instead of queueing for a connection for up to the busy timeout (9.7 s
    /// before the library's writers passed one gate).
    async fn reads_answer_while_the_application_holds_the_write_lock(
        t: TestDb,
    ) -> anyhow::Result<()> {
        let db = t.connect(4).await?;
        let storage = Arc::new(SeaOrmTaskExecutionStorage::new(db.clone()));
        let executor = Executor::new(storage.clone(), fast_options());
        let echo = TaskDefinition::new(
            "echo",
            |_ctx, s: String| async move { Ok::<_, TaskError>(s) },
        );
        executor.register(&echo)?;
        executor.start();
        let wait = WaitOptions {
            poll_interval: Duration::from_millis(20),
            timeout: Some(Duration::from_secs(60)),
        };
        let before = executor.enqueue(&echo, &"before".to_owned()).await?;
        before.wait_with(&wait).await?;

        let txn = db.begin().await?;
        let held = executor.enqueue_in(&txn, &echo, &"held".to_owned()).await?;
        // Every loop of the executor is now waiting to write.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut slowest = Duration::ZERO;
        for _ in 0..5 {
            let started = Instant::now();
            let read = storage.get_task_execution(before.execution_id()).await?;
            slowest = slowest.max(started.elapsed());
            ensure!(read.is_some(), "the finished execution is gone");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        txn.commit().await?;
        let held = held.wait_with(&wait).await?;
        executor.shutdown().await;
        ensure!(
            slowest < Duration::from_secs(2),
            "a read took {slowest:?} while the application held the write lock"
        );
        ensure!(
            held.status() == TaskExecutionStatus::Completed,
            "the execution enqueued in the application's transaction ended {:?}",
            held.status()
        );
        Ok(())
    }
}

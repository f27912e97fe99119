//! The durable executor end to end, on every storage.

use std::sync::Arc;

use anyhow::anyhow;
use sea_orm_durable::testkit::executor as cases;
use sea_orm_durable::{InMemoryTaskExecutionStorage, TaskExecutionStorage};

/// Declares one test per executor case for a storage built by `$storage`.
macro_rules! executor_cases {
    ($storage:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn upstream_scenario_one_executor() -> anyhow::Result<()> {
            let took = cases::upstream_scenario($storage, 1)
                .await
                .map_err(|e| anyhow!(e))?;
            eprintln!(
                "upstream scenario, {}, 1 executor: {took:?}",
                module_path!()
            );
            Ok(())
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn upstream_scenario_three_executors() -> anyhow::Result<()> {
            let took = cases::upstream_scenario($storage, 3)
                .await
                .map_err(|e| anyhow!(e))?;
            eprintln!(
                "upstream scenario, {}, 3 executors: {took:?}",
                module_path!()
            );
            Ok(())
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn cancel_ready_execution() -> anyhow::Result<()> {
            cases::cancel_ready_execution($storage)
                .await
                .map_err(|e| anyhow!(e))
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn cancel_running_execution() -> anyhow::Result<()> {
            cases::cancel_running_execution($storage)
                .await
                .map_err(|e| anyhow!(e))
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn cancel_parent_cancels_children() -> anyhow::Result<()> {
            cases::cancel_parent_cancels_children($storage)
                .await
                .map_err(|e| anyhow!(e))
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn timeout_ends_timed_out_after_retries() -> anyhow::Result<()> {
            cases::timeout_ends_timed_out_after_retries($storage)
                .await
                .map_err(|e| anyhow!(e))
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn shutdown_lets_running_executions_finish() -> anyhow::Result<()> {
            cases::shutdown_lets_running_executions_finish($storage)
                .await
                .map_err(|e| anyhow!(e))
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn delays_are_honoured() -> anyhow::Result<()> {
            cases::delays_are_honoured($storage)
                .await
                .map_err(|e| anyhow!(e))
        }
    };
}

fn memory() -> Arc<dyn TaskExecutionStorage> {
    Arc::new(InMemoryTaskExecutionStorage::new())
}

mod memory {
    use super::*;

    executor_cases!(memory());
}

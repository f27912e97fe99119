//! The durable executor end to end, on every storage.

use std::sync::Arc;

use anyhow::anyhow;
use sea_orm_durable::InMemoryTaskExecutionStorage;
use sea_orm_durable::testkit::executor::upstream_scenario;

mod memory {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn upstream_scenario_one_executor() -> anyhow::Result<()> {
        let storage = Arc::new(InMemoryTaskExecutionStorage::new());
        let took = upstream_scenario(storage, 1)
            .await
            .map_err(|e| anyhow!(e))?;
        eprintln!("upstream scenario, memory, 1 executor: {took:?}");
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn upstream_scenario_three_executors() -> anyhow::Result<()> {
        let storage = Arc::new(InMemoryTaskExecutionStorage::new());
        let took = upstream_scenario(storage, 3)
            .await
            .map_err(|e| anyhow!(e))?;
        eprintln!("upstream scenario, memory, 3 executors: {took:?}");
        Ok(())
    }
}

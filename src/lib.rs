//! Durable work kept in a SeaORM application's own database.
//!
//! `sea-orm-durable` stores two kinds of durable work through SeaORM 2, on PostgreSQL,
//! MySQL/MariaDB and SQLite, reusing the application's `DatabaseConnection`:
//!
//! - **durable task executions** ([`Executor`], [`TaskDefinition`], module [`task`]):
//!   tasks with typed input and output, retries with backoff, timeouts, parents that spawn
//!   children and a finalize task, cancellation, and recovery when a process dies, delayed
//!   enqueue ([`EnqueueOptions`]), sleeping tasks woken by a key ([`Executor::wake`]) and
//!   periodic schedules ([`Schedule`]), with any number of executors sharing one database
//!   (tables `durable_task_executions`, `durable_finished_child_task_executions` and
//!   `durable_task_schedules`);
//! - **batch job state** ([`prepare`], [`run_worker`], module [`batch`]): a job split
//!   into batches of records that many workers claim atomically, with stale-batch recovery,
//!   exactly-once finalization and per-record outcomes (tables `batchactions_jobs`,
//!   `batchactions_batches`, `batchactions_records`).
//!
//! The root holds what an application needs to run work; everything else lives in its module:
//! the task domain in [`task`] and the batch domain in [`batch`], each with the port a storage
//! implements and the types only an implementer needs ([`task::storage`], [`batch::store`]);
//! clocks in [`clock`], errors in [`error`], metric names in [`metric`]. What operators and
//! front ends do with the work (list, show, count, cancel, retry, requeue, prune) is in
//! [`admin`].
//!
//! Each port has an in-memory implementation for unit tests
//! ([`InMemoryTaskExecutionStorage`](task::InMemoryTaskExecutionStorage),
//! [`InMemoryStateStore`](batch::InMemoryStateStore)) and a SeaORM one
//! ([`SeaOrmTaskExecutionStorage`], [`SeaOrmStateStore`]). The tables come from the migrations
//! re-exported as [`migration`].
//!
//! # Quick start
//!
//! ```
//! use std::sync::Arc;
//!
//! use sea_orm_durable::migration::{Migrator, MigratorTrait};
//! use sea_orm_durable::{
//!     Executor, ExecutorOptions, FinalizeInput, ParentOutcome, SeaOrmTaskExecutionStorage,
//!     TaskDefinition, TaskError,
//! };
//!
//! # #[tokio::main(flavor = "multi_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let url = format!("sqlite://{}?mode=rwc", dir.path().join("durable.db").display());
//! // Reuse the application's connection; create the tables once.
//! let db = sea_orm::Database::connect(url.as_str()).await?;
//! Migrator::up(&db, None).await?;
//!
//! // A task is a typed async function registered under an id.
//! let square = TaskDefinition::new("square", |_ctx, n: u64| async move { Ok::<_, TaskError>(n * n) });
//! // A parent spawns children; its finalize task receives their outputs in order.
//! let sum = TaskDefinition::new("sum", |_ctx, input: FinalizeInput<()>| async move {
//!     let mut total = 0;
//!     for child in &input.children {
//!         total += child.output_as::<u64>()?;
//!     }
//!     Ok::<_, TaskError>(total)
//! });
//! let child = square.clone();
//! let sum_of_squares = TaskDefinition::parent("sumOfSquares", move |_ctx, n: u64| {
//!     let square = child.clone();
//!     async move { Ok((1..=n).fold(ParentOutcome::new(()), |p, i| p.child(&square, &i))) }
//! })
//! .finalize(&sum);
//!
//! let storage = Arc::new(SeaOrmTaskExecutionStorage::new(db));
//! let executor = Executor::new(storage, ExecutorOptions::default());
//! executor.register(&square)?;
//! executor.register(&sum_of_squares)?;
//! executor.start();
//!
//! let handle = executor.enqueue(&sum_of_squares, &10).await?;
//! let finished = handle.wait().await?;
//! assert_eq!(finished.output, Some(385));
//! executor.shutdown().await;
//! # Ok(())
//! # }
//! ```

pub mod admin;
pub mod batch;
pub mod clock;
mod dialect;
pub mod error;
mod id;
pub mod metric;
mod status;
pub mod task;
#[cfg(feature = "testkit")]
pub mod testkit;
mod unwind;

pub use batch::{JobConfig, SeaOrmStateStore, WorkerOptions, prepare, run_worker};
pub use error::{Error, Result};
pub use task::{
    EnqueueOptions, Executor, ExecutorOptions, FinalizeInput, ParentOutcome, Schedule,
    SeaOrmTaskExecutionStorage, TaskContext, TaskDefinition, TaskError, TaskHandle,
};

/// The migrations that create this crate's tables (the `sea-orm-durable-migration` crate).
pub use sea_orm_durable_migration as migration;

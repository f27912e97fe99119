//! Durable work kept in a SeaORM application's own database.
//!
//! `sea-orm-durable` stores two kinds of durable work through SeaORM 2, on PostgreSQL,
//! MySQL/MariaDB and SQLite, reusing the application's `DatabaseConnection`:
//!
//! - **durable task executions** ([`Executor`], [`TaskDefinition`], [`TaskExecutionStorage`]):
//!   tasks with typed input and output, retries with backoff, timeouts, parents that spawn
//!   children and a finalize task, cancellation, and recovery when a process dies, delayed
//!   enqueue ([`EnqueueOptions`]), sleeping tasks woken by a key ([`Executor::wake`]) and
//!   periodic schedules ([`Schedule`]), with any number of executors sharing one database
//!   (tables `durable_task_executions`, `durable_finished_child_task_executions` and
//!   `durable_task_schedules`);
//! - **batch job state** ([`DistributedStateStore`], [`prepare`], [`run_worker`]): a job split
//!   into batches of records that many workers claim atomically, with stale-batch recovery,
//!   exactly-once finalization and per-record outcomes (tables `batchactions_jobs`,
//!   `batchactions_batches`, `batchactions_records`).
//!
//! Each port has an in-memory implementation for unit tests ([`InMemoryTaskExecutionStorage`],
//! [`InMemoryStateStore`]) and a SeaORM one ([`SeaOrmTaskExecutionStorage`],
//! [`SeaOrmStateStore`]). The tables come from the migrations re-exported as [`migration`].
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

mod batch;
mod clock;
mod dialect;
mod error;
mod id;
pub mod metric;
mod status;
mod task;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use batch::{
    Batch, BatchOutcome, BatchReservation, BatchState, BatchStatus, ClaimBatchResult,
    DistributedJobStatus, DistributedStateStore, InMemoryStateStore, JobConfig, JobProgress,
    JobState, JobStatus, MAX_PREPARED_JOB_ID_LEN, PreparedJob, ProcessError, ProcessedRecord,
    RecordContext, RecordCounts, RecordFilter, RecordOutcome, RecordStatus, RequeuedRecords,
    SeaOrmStateStore, StateStore, ValidationError, WorkerEvent, WorkerOptions, WorkerReport,
    prepare, run_worker,
};
pub use clock::{Clock, ClockSkew, ManualClock, SystemClock};
pub use error::{DatabaseError, Error, Result, UnknownStatus};
pub use task::executor::{
    ChildOutput, ChildTask, EnqueueOptions, Executor, ExecutorOptions, FinalizeInput,
    FinishedExecution, ParentDefinition, ParentOutcome, ParentTaskOutput, Retention, Sequence,
    TaskContext, TaskDefinition, TaskError, TaskHandle, TaskOptions, WaitOptions,
};
pub use task::{
    ClaimParams, DEFAULT_QUEUE, ExecutionError, ExecutionErrorKind, FinishedChildTaskExecution,
    InMemoryTaskExecutionStorage, MAX_LEASE_MARGIN, MAX_QUEUE_LEN, MAX_SLEEP_BEFORE_RUN,
    MAX_TIMEOUT, NewTaskExecution, ParentRef, RetryOptions, SeaOrmTaskExecutionStorage,
    TaskExecution, TaskExecutionCount, TaskExecutionFilter, TaskExecutionGuard, TaskExecutionRef,
    TaskExecutionStatus, TaskExecutionStorage, TaskExecutionUpdate, Wake, WakeOutcome, WakeResult,
};
pub use task::{
    MAX_SCHEDULE_ID_LEN, MissedTicks, Schedule, ScheduleFire, ScheduleSpec, TaskSchedule,
};
/// The token that shuts a batch worker down ([`WorkerOptions::shutdown`]).
pub use tokio_util::sync::CancellationToken;

/// The migrations that create this crate's tables (the `sea-orm-durable-migration` crate).
pub use sea_orm_durable_migration as migration;

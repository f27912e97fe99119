//! Durable work kept in a SeaORM application's own database.
//!
//! `sea-orm-durable` stores two kinds of durable work through SeaORM 2, on PostgreSQL,
//! MySQL/MariaDB and SQLite, reusing the application's `DatabaseConnection`:
//!
//! - **batch job state**: a job split into batches of records that many workers claim
//!   atomically, with stale-batch recovery, exactly-once finalization and per-record outcomes
//!   (tables `batchactions_jobs`, `batchactions_batches`, `batchactions_records`);
//! - **durable task executions** (tables `task_executions` and `finished_child_task_executions`).
//!
//! The tables are created by the migrations in the `sea-orm-durable-migration` crate, re-exported
//! here as [`migration`].
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use sea_orm_durable::migration::{Migrator, MigratorTrait};
//!
//! let db = sea_orm::Database::connect("sqlite://durable.db?mode=rwc").await?;
//! Migrator::up(&db, None).await?;
//! # Ok(())
//! # }
//! ```

mod batch;
mod clock;
mod dialect;
mod error;
mod task;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use batch::{
    Batch, BatchOutcome, BatchReservation, BatchState, BatchStatus, ClaimBatchResult,
    DistributedJobStatus, DistributedStateStore, InMemoryStateStore, JobConfig, JobProgress,
    JobState, JobStatus, PreparedJob, ProcessError, ProcessedRecord, RecordContext, RecordCounts,
    RecordFilter, RecordOutcome, RecordStatus, SeaOrmStateStore, StateStore, ValidationError,
    WorkerEvent, WorkerOptions, WorkerReport, prepare, run_worker,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{DatabaseError, Error, Result, UnknownStatus};
pub use task::executor::{
    ChildOutput, ChildTask, Executor, ExecutorOptions, FinalizeInput, FinishedExecution,
    ParentDefinition, ParentOutcome, ParentTaskOutput, Sequence, TaskContext, TaskDefinition,
    TaskError, TaskHandle, TaskOptions, WaitOptions,
};
pub use task::{
    ClaimParams, ExecutionError, ExecutionErrorKind, FinishedChildTaskExecution,
    InMemoryTaskExecutionStorage, NewTaskExecution, ParentRef, RetryOptions,
    SeaOrmTaskExecutionStorage, TaskExecution, TaskExecutionFilter, TaskExecutionGuard,
    TaskExecutionRef, TaskExecutionStatus, TaskExecutionStorage, TaskExecutionUpdate,
};

/// The migrations that create this crate's tables (the `sea-orm-durable-migration` crate).
pub use sea_orm_durable_migration as migration;

//! Batch jobs: a job split into batches of records, claimed by many workers, with per-record
//! outcomes and progress. [`prepare`] a job, run workers on it with [`run_worker`]; the state
//! lives in a [`StateStore`](store::StateStore): in memory ([`InMemoryStateStore`]) or through
//! SeaORM ([`SeaOrmStateStore`]).
//!
//! The ports a store implements, and the types only an implementer needs, are in [`store`].

mod check;
mod mapper;
mod memory;
pub(crate) mod model;
mod sea_orm;
pub mod store;
mod worker;

pub use self::memory::InMemoryStateStore;
pub use self::model::{
    Batch, BatchState, BatchStatus, DistributedJobStatus, JobConfig, JobProgress, JobState,
    JobStatus, ProcessedRecord, RecordCounts, RecordStatus, RequeuedRecords, ValidationError,
};
pub use self::sea_orm::SeaOrmStateStore;
pub use self::worker::{
    MAX_PREPARED_JOB_ID_LEN, PreparedJob, ProcessError, RecordContext, WorkerEvent, WorkerOptions,
    WorkerReport, prepare, run_worker,
};
/// The token that shuts a batch worker down ([`WorkerOptions::shutdown`]).
pub use tokio_util::sync::CancellationToken;

//! Batch jobs: a job split into batches of records, claimed by many workers, with per-record
//! outcomes and progress.

mod check;
mod mapper;
mod memory;
pub(crate) mod model;
mod sea_orm;
mod store;
mod worker;

pub use self::memory::InMemoryStateStore;
pub use self::model::{
    Batch, BatchOutcome, BatchReservation, BatchState, BatchStatus, ClaimBatchResult,
    DistributedJobStatus, JobConfig, JobProgress, JobState, JobStatus, ProcessedRecord,
    RecordCounts, RecordFilter, RecordOutcome, RecordStatus, RequeuedRecords, ValidationError,
};
pub use self::sea_orm::SeaOrmStateStore;
pub use self::store::{DistributedStateStore, StateStore};
pub use self::worker::{
    MAX_PREPARED_JOB_ID_LEN, PreparedJob, ProcessError, RecordContext, WorkerEvent, WorkerOptions,
    WorkerReport, prepare, run_worker,
};

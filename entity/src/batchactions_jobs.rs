//! `batchactions_jobs`: one row per batch job.

use sea_orm::entity::prelude::*;

/// A batch job as stored.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "batchactions_jobs")]
pub struct Model {
    /// The job id, chosen by the application.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// Job status, one of the upstream strings (`CREATED`, `PROCESSING`, `COMPLETED`, ...).
    pub status: String,
    /// The job configuration as a JSON object; unknown keys are kept.
    pub config: Json,
    /// The job's batch list as a JSON array, for jobs run in one process. Distributed jobs keep
    /// their batches in `batchactions_batches` only, and this column holds `[]`.
    pub batches: Json,
    /// Number of records in the job.
    pub total_records: i64,
    /// When processing started (epoch ms).
    pub started_at: Option<i64>,
    /// When the job reached a terminal status (epoch ms).
    pub completed_at: Option<i64>,
    /// Whether the job's batches are claimed by distributed workers.
    pub distributed: bool,
    /// When the row was first written (epoch ms).
    pub created_at: i64,
    /// When the row was last written (epoch ms).
    pub updated_at: i64,
    /// The id of the caller that finalized the job, so that a finalization whose answer was
    /// lost is recognized by its retry.
    pub finalized_by: Option<String>,
}

/// `batchactions_jobs` has no declared relations; batches and records refer to it by `job_id`.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

//! `batchactions_batches`: one row per batch of a job; the source of truth for claims.

use sea_orm::entity::prelude::*;

/// A batch as stored.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "batchactions_batches")]
pub struct Model {
    /// The batch id.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// The job this batch belongs to.
    pub job_id: String,
    /// Zero-based position of the batch in its job; unique per job and the claim order.
    pub batch_index: i32,
    /// Batch status (`PENDING`, `PROCESSING`, `PAUSED`, `COMPLETED`, `FAILED`).
    pub status: String,
    /// The worker holding the claim, while `PROCESSING`.
    pub worker_id: Option<String>,
    /// When the current claim was taken (epoch ms).
    pub claimed_at: Option<i64>,
    /// Last proof of life from the claiming worker (epoch ms); staleness is measured from it.
    pub heartbeat_at: Option<i64>,
    /// Index of the batch's first record (inclusive).
    pub record_start_index: i64,
    /// Index of the batch's last record (inclusive).
    pub record_end_index: i64,
    /// Records processed successfully.
    pub processed_count: i64,
    /// Records that failed or were invalid.
    pub failed_count: i64,
    /// Optimistic-lock version and fencing token: bumped by every claim, release and reclaim,
    /// and by a status change made outside the claim protocol.
    pub version: i64,
    /// When the row was first written (epoch ms).
    pub created_at: i64,
    /// When the row was last written (epoch ms).
    pub updated_at: i64,
    /// When the batch reached `COMPLETED` or `FAILED` (epoch ms).
    pub completed_at: Option<i64>,
    /// The id of the claim that took the batch last, so that a claim whose answer was lost is
    /// recognized by its retry; cleared when the batch goes back to `PENDING`.
    pub claim_id: Option<String>,
}

/// `batchactions_batches` has no declared relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

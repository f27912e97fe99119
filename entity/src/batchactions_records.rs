//! `batchactions_records`: one row per record of a job, keyed by `(job_id, record_index)`.

use sea_orm::entity::prelude::*;

/// A record and its outcome as stored.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "batchactions_records")]
pub struct Model {
    /// The job this record belongs to.
    #[sea_orm(primary_key, auto_increment = false)]
    pub job_id: String,
    /// Zero-based position of the record in its job.
    #[sea_orm(primary_key, auto_increment = false)]
    pub record_index: i64,
    /// The batch the record was last written for.
    pub batch_id: String,
    /// Record status (`pending`, `valid`, `invalid`, `processed`, `failed`).
    pub status: String,
    /// The record as read from the source (JSON).
    pub raw: Json,
    /// The record after parsing and transforms (JSON).
    pub parsed: Json,
    /// Validation errors and warnings (JSON array).
    pub errors: Json,
    /// The processing error message, when the record failed.
    #[sea_orm(column_type = "Text", nullable)]
    pub processing_error: Option<String>,
    /// Processing attempts beyond the first.
    pub retry_count: i32,
    /// When the row was last written (epoch ms).
    pub updated_at: i64,
}

/// `batchactions_records` has no declared relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

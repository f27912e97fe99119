//! `durable_finished_child_task_executions`: one row per finished child of a parent execution.

use sea_orm::entity::prelude::*;

/// A finished child as recorded for its parent.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "durable_finished_child_task_executions")]
pub struct Model {
    /// The parent's execution id.
    #[sea_orm(primary_key, auto_increment = false)]
    pub parent_execution_id: String,
    /// The child's execution id.
    #[sea_orm(primary_key, auto_increment = false)]
    pub child_execution_id: String,
    /// The child's task id.
    pub child_task_id: String,
    /// The child's position among the parent's children.
    pub child_index: i32,
    /// The child's final status.
    pub status: String,
    /// The child's serialized output, when it completed.
    #[sea_orm(column_type = "Text", nullable)]
    pub output: Option<String>,
    /// The child's error as JSON, when it did not complete.
    pub error: Option<Json>,
    /// When the record was written (epoch ms).
    pub created_at: i64,
}

/// `durable_finished_child_task_executions` has no declared relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

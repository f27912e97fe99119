//! `durable_paused_task_queues`: one row per paused queue of task executions.
//!
//! No executor claims an execution whose queue has a row here; deleting the row resumes the
//! queue.

use sea_orm::entity::prelude::*;

/// A paused queue as stored.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "durable_paused_task_queues")]
pub struct Model {
    /// The queue's name.
    #[sea_orm(primary_key, auto_increment = false)]
    pub queue: String,
    /// When the queue was paused (epoch ms).
    pub paused_at: i64,
}

/// `durable_paused_task_queues` has no declared relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

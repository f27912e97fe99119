//! `durable_task_executions`: one row per execution of a durable task.

use sea_orm::entity::prelude::*;

/// A task execution as stored.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "durable_task_executions")]
pub struct Model {
    /// Unique id of the execution.
    #[sea_orm(primary_key, auto_increment = false)]
    pub execution_id: String,
    /// The task this is an execution of.
    pub task_id: String,
    /// The queue the execution waits in.
    pub queue: String,
    /// The key a sleeping task's execution is woken by (kept after it wakes).
    pub wake_key: Option<String>,
    /// The wake key while the execution is `sleeping`, NULL otherwise: a unique index on it
    /// keeps each key once among sleeping executions.
    pub sleeping_key: Option<String>,
    /// Task id of the top-most ancestor, for children and finalize executions.
    pub root_task_id: Option<String>,
    /// Execution id of the top-most ancestor.
    pub root_execution_id: Option<String>,
    /// Task id of the direct parent.
    pub parent_task_id: Option<String>,
    /// Execution id of the direct parent.
    pub parent_execution_id: Option<String>,
    /// Position among the parent's children (0 for roots and finalize executions).
    pub index_in_parent: i32,
    /// Whether this is its parent's finalize execution.
    pub is_finalize: bool,
    /// Retry options as JSON (`{"maxAttempts", "baseDelayMs", "delayMultiplier", "maxDelayMs"}`).
    pub retry_options: Json,
    /// `retry_options.maxAttempts`, copied so lease expiry can decide in SQL.
    pub max_retry_attempts: i32,
    /// Delay before the first run, in milliseconds.
    pub sleep_ms_before_run: i64,
    /// Maximum duration of one run, in milliseconds.
    pub timeout_ms: i64,
    /// Status (`ready`, `running`, `waiting_for_children_tasks`, `completed`, ...).
    pub status: String,
    /// Whether the status is final.
    pub is_finished: bool,
    /// The serialized input.
    #[sea_orm(column_type = "Text")]
    pub input: String,
    /// The serialized output of the run itself.
    #[sea_orm(column_type = "Text", nullable)]
    pub run_output: Option<String>,
    /// The serialized final output.
    #[sea_orm(column_type = "Text", nullable)]
    pub output: Option<String>,
    /// The last error as JSON (`{"errorType", "isRetryable", "isInternal", "message"}`).
    pub error: Option<Json>,
    /// The executor holding the current claim.
    pub executor_id: Option<String>,
    /// Changed by every claim.
    pub fencing_token: i64,
    /// The id of the claim that took the execution last, so a claim whose reply was lost can
    /// be taken back by its retry.
    pub claim_id: Option<String>,
    /// Whether the execution was cancelled while an executor may be running it.
    pub cancel_requested: bool,
    /// Retries done so far.
    pub retry_attempts: i32,
    /// Earliest time the execution may be claimed (epoch ms).
    pub start_at: i64,
    /// When the current or last run started (epoch ms).
    pub started_at: Option<i64>,
    /// When the current claim lapses (epoch ms).
    pub expires_at: Option<i64>,
    /// When the execution finished (epoch ms).
    pub finished_at: Option<i64>,
    /// Number of children the run spawned.
    pub children_count: i32,
    /// Number of finished children recorded in `durable_finished_child_task_executions`.
    pub finished_children_count: i32,
    /// Number of those that did not complete.
    pub failed_children_count: i32,
    /// Task id of the finalize execution, once spawned.
    pub finalize_task_id: Option<String>,
    /// Execution id of the finalize execution, once spawned.
    pub finalize_execution_id: Option<String>,
    /// Whether the finished execution's outcome has been propagated.
    pub is_closed: bool,
    /// When it was closed (epoch ms).
    pub closed_at: Option<i64>,
    /// When the execution was enqueued (epoch ms).
    pub created_at: i64,
    /// When the row was last written (epoch ms).
    pub updated_at: i64,
    /// The JSON value the run last reported as its progress, if any.
    #[sea_orm(column_type = "Text", nullable)]
    pub progress: Option<String>,
}

/// `durable_task_executions` has no declared relations (parents and children are found by id).
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

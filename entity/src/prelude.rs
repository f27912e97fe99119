//! The entities under short names, for `use sea_orm_durable_entity::prelude::*`.

pub use crate::batchactions_batches::Entity as BatchactionsBatches;
pub use crate::batchactions_jobs::Entity as BatchactionsJobs;
pub use crate::batchactions_records::Entity as BatchactionsRecords;
pub use crate::finished_child_task_executions::Entity as FinishedChildTaskExecutions;
pub use crate::paused_task_queues::Entity as PausedTaskQueues;
pub use crate::task_executions::Entity as TaskExecutions;
pub use crate::task_schedules::Entity as TaskSchedules;

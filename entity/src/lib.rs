//! SeaORM entities for the tables that `sea-orm-durable` keeps in the application's database.
//!
//! One module per table. The library maps these rows to its own domain types; applications
//! normally never touch them, but they are public so that reports, admin screens and ad-hoc
//! queries can read the same tables with SeaORM.
//!
//! The durable task tables are `durable_task_executions` ([`task_executions`]),
//! `durable_finished_child_task_executions` ([`finished_child_task_executions`]),
//! `durable_task_schedules` ([`task_schedules`]) and `durable_paused_task_queues`
//! ([`paused_task_queues`]).
//!
//! Every timestamp column is an `i64` holding milliseconds since the Unix epoch, written from the
//! application's clock, never the database's.

pub mod batchactions_batches;
pub mod batchactions_jobs;
pub mod batchactions_records;
pub mod finished_child_task_executions;
pub mod paused_task_queues;
pub mod prelude;
pub mod task_executions;
pub mod task_schedules;

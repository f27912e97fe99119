//! Migrations for the tables of `sea-orm-durable`.
//!
//! Two ways to use them:
//!
//! - Run [`Migrator`] on its own. It records what it applied in its own bookkeeping table,
//!   `sea_orm_durable_migrations`, so it never mixes with the application's `seaql_migrations`.
//!   From the shell: `sea-orm-cli migrate -d migration up`, or
//!   `cargo run -p sea-orm-durable-migration -- -u <DATABASE_URL> up`.
//!   From code: `Migrator::up(&db, None).await?`.
//! - Splice [`migrations()`] into the application's own `MigratorTrait::migrations()`; they are
//!   then recorded in the application's table. Use one way or the other for a database, not both:
//!   each ledger would try to apply the same migrations.
//!
//! Every migration is idempotent (it creates only what is missing) and has a `down()`.

use sea_orm_migration::prelude::*;

/// The traits a caller needs to run the migrator (`Migrator::up(&db, None)`) or splice its list.
pub use sea_orm_migration::{MigrationTrait, MigratorTrait};

pub mod limit;
mod m20261123_000001_durable_create_batch_tables;
mod m20261123_000002_durable_create_task_tables;
mod m20261130_000003_durable_task_queues;
mod m20261130_000010_durable_binary_id_collation;
mod m20261130_000011_durable_batch_claim_ids;
mod m20261130_000020_durable_ordered_indexes;
mod m20261130_000030_durable_waiting;
mod m20261130_000031_durable_task_schedules;
mod m20261130_000040_durable_retention;
mod m20261130_000050_durable_lean_indexes;
mod m20261214_000060_durable_claims_by_task;
mod m20261221_000070_durable_paused_queues;
mod m20261221_000071_durable_progress;
mod schema;

/// The migrator for the `sea-orm-durable` tables, with its own bookkeeping table.
#[derive(Debug, Clone, Copy, Default)]
pub struct Migrator;

/// The name of the table in which [`Migrator`] records applied migrations.
pub const MIGRATION_TABLE: &str = "sea_orm_durable_migrations";

/// All migrations of `sea-orm-durable`, in order, for splicing into an application's migrator.
///
/// Their names carry a `durable` infix, so they cannot clash with the application's own
/// migration file names.
pub fn migrations() -> Vec<Box<dyn MigrationTrait>> {
    vec![
        Box::new(m20261123_000001_durable_create_batch_tables::Migration),
        Box::new(m20261123_000002_durable_create_task_tables::Migration),
        Box::new(m20261130_000003_durable_task_queues::Migration),
        Box::new(m20261130_000010_durable_binary_id_collation::Migration),
        Box::new(m20261130_000011_durable_batch_claim_ids::Migration),
        Box::new(m20261130_000020_durable_ordered_indexes::Migration),
        Box::new(m20261130_000030_durable_waiting::Migration),
        Box::new(m20261130_000031_durable_task_schedules::Migration),
        Box::new(m20261130_000040_durable_retention::Migration),
        Box::new(m20261130_000050_durable_lean_indexes::Migration),
        Box::new(m20261214_000060_durable_claims_by_task::Migration),
        Box::new(m20261221_000070_durable_paused_queues::Migration),
        Box::new(m20261221_000071_durable_progress::Migration),
    ]
}

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        migrations()
    }

    fn migration_table_name() -> DynIden {
        MIGRATION_TABLE.into_iden()
    }
}

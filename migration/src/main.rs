//! Command-line runner for the `sea-orm-durable` migrations.
//!
//! `cargo run -p sea-orm-durable-migration -- -u <DATABASE_URL> up|down|status|refresh`
//! (or `sea-orm-cli migrate -d migration <command>`, which runs this binary). `fresh` drops
//! every table of the database, not only ours: never use it on a shared database.

use sea_orm_migration::prelude::*;

#[tokio::main]
async fn main() {
    cli::run_cli(sea_orm_durable_migration::Migrator).await;
}

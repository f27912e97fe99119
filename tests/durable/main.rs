//! Integration tests on every backend, in one test binary (one link of SeaORM instead of one per
//! backend). Tests are named `<area>::<backend>::<behaviour>`, so `cargo test postgres` runs one
//! backend and `cargo test schema::` one area.

mod admin;
mod batch;
mod crash;
mod executor;
mod harness;
mod loops;
mod lost_reply;
mod metrics;
mod outage;
mod proxy;
mod schema;
mod task;
mod worker;

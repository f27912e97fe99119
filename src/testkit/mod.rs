//! Conformance suites for third-party implementations of the ports (feature `testkit`).
//!
//! Each suite is a set of public async case functions plus a macro that declares one
//! `#[tokio::test]` per case, so an implementation proves it behaves like the reference one.

pub mod task;

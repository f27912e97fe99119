//! Conformance suites that any implementation of this crate's ports can run.

pub mod batch;

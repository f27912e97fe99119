//! Conformance suites for implementations of this crate's ports, public so that other
//! implementations can run them too (feature `testkit`).
//!
//! Each suite is a set of public async case functions (plus, for the storage ports, a macro that
//! declares one `#[tokio::test]` per case), so an implementation proves it behaves like the
//! reference one. A failed expectation is an error naming what differed.

pub mod batch;
pub mod executor;
pub mod task;

/// The result of a conformance case: `Err` describes the first expectation that failed.
pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Fails the current case with a formatted message unless `cond` holds.
#[macro_export]
#[doc(hidden)]
macro_rules! testkit_ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+).into());
        }
    };
}

//! The lengths of the id and name columns, in one place: the migrations size the columns with
//! them, and the library checks every id against them before writing, so that a value too long
//! is refused with a clear error on every backend instead of being cut or rejected by one.
//!
//! A migration that has shipped never changes what it creates: a column widened later gets a
//! migration of its own, and the constant here follows the newest one.

/// Ids of the batch tables: job, batch and worker ids (`VARCHAR(128)`). Ids are
/// application-chosen strings (UUIDs upstream); 128 characters leave room for prefixed ids while
/// keeping composite keys well under MySQL's index length limit.
pub const BATCH_ID_LEN: u32 = 128;

/// Claim ids of batches and task executions and the finalizer ids of jobs (`VARCHAR(64)`): they
/// are generated (a prefix and a random part) or chosen by callers.
pub const CLAIM_ID_LEN: u32 = 64;

/// Ids of the task tables: execution and task ids, wake keys and schedule ids
/// (`VARCHAR(255)`).
pub const TASK_ID_LEN: u32 = 255;

/// Queue names of task executions (`VARCHAR(64)`): short enough that the claim index fits
/// MySQL's 3072-byte keys.
pub const QUEUE_LEN: u32 = 64;

/// Cron expressions of schedules (`VARCHAR(255)`).
pub const CRON_EXPRESSION_LEN: u32 = 255;

/// IANA time zone names of schedules (`VARCHAR(64)`; the longest name is about 30).
pub const TIME_ZONE_LEN: u32 = 64;

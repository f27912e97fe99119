//! The conformance suite of [`StateStore`](crate::batch::store::StateStore) and [`DistributedStateStore`].
//!
//! Every case is a public async fn taking a [`Ctx`] (a fresh, empty store and the
//! [`ManualClock`] it reads), so an implementation can run them one by one. The
//! [`batch_store_conformance!`](crate::batch_store_conformance) macro declares one
//! `#[tokio::test]` per case for a store factory:
//!
//! ```no_run
//! use std::sync::Arc;
//! use sea_orm_durable::testkit::Setup;
//! use sea_orm_durable::testkit::batch::StoreUnderTest;
//! use sea_orm_durable::batch::InMemoryStateStore;
//!
//! sea_orm_durable::batch_store_conformance!(|clock: sea_orm_durable::clock::ManualClock| async move {
//!     let store = InMemoryStateStore::with_clock(Arc::new(clock));
//!     Ok::<_, sea_orm_durable::Error>(Setup::Ready(StoreUnderTest::new(Arc::new(store))))
//! });
//! ```
//!
//! The calling crate needs `tokio` with the `macros` and `rt-multi-thread` features. A factory
//! returns [`Setup::Skip`] with a reason to skip a case (for instance when a database server is
//! not configured); the case prints that it was skipped and why.
//!
//! [`race_claim_complete_finalize`] is the many-worker race of a whole job, for tests that
//! choose their own worker and batch counts per backend.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::{CaseFailure, CaseResult, Setup, UnderTest, run_case};
use crate::batch::store::{
    BatchOutcome, BatchReservation, ClaimBatchResult, DistributedStateStore, RecordFilter,
    RecordOutcome,
};
use crate::batch::{
    Batch, BatchState, BatchStatus, JobConfig, JobState, JobStatus, ProcessedRecord, RecordStatus,
    ValidationError,
};
use crate::clock::ManualClock;
use crate::error::Error;

pub use super::sweep::every_batch_write_whose_reply_is_lost_tells_the_truth;
pub use super::values::{
    batch_names_at_their_limits_round_trip_one_more_is_refused,
    batch_numbers_at_the_ends_of_their_types_never_panic,
    batch_text_with_nul_round_trips_or_is_refused,
};

/// The time every case starts at, epoch ms.
pub const START_MS: i64 = 1_700_000_000_000;

/// A store to run the suite against (it must read the clock the factory was given), and
/// whatever must live as long as it.
pub type StoreUnderTest = UnderTest<Arc<dyn DistributedStateStore>>;

/// What a case gets: an empty store and the clock it reads (starting at [`START_MS`]).
#[derive(Clone)]
pub struct Ctx {
    /// The store under test.
    pub store: Arc<dyn DistributedStateStore>,
    /// The store's clock.
    pub clock: ManualClock,
}

/// Runs `case` (named `name` in the skip line) against a store made by `factory` for a fresh
/// [`ManualClock`]; a factory that returns [`Setup::Skip`] skips the case (see
/// [`run_case`]).
///
/// # Errors
///
/// The factory's error, or the case's.
pub async fn run<F, Fut, E, C, CFut>(name: &str, factory: F, case: C) -> CaseResult
where
    F: FnOnce(ManualClock) -> Fut,
    Fut: Future<Output = Result<Setup<StoreUnderTest>, E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
    C: FnOnce(Ctx) -> CFut,
    CFut: Future<Output = CaseResult>,
{
    let clock = ManualClock::new(START_MS);
    run_case(name, factory(clock.clone()), |store| {
        case(Ctx { store, clock })
    })
    .await
    .map(drop)
}

/// Declares one `#[tokio::test]` per case of the batch-store conformance suite, each running
/// [`run`](crate::testkit::batch::run) with `$factory`, an expression of type
/// `FnOnce(ManualClock) -> impl Future<Output = Result<Setup<StoreUnderTest>, E>>` where `E`
/// converts into `Box<dyn Error + Send + Sync>`. The factory makes a fresh store reading the
/// clock it is given ([`Setup::Ready`](crate::testkit::Setup::Ready)), or skips the case with
/// [`Setup::Skip`](crate::testkit::Setup::Skip) and the reason, which the case prints before it
/// passes. `batch_store_conformance!(#[attr]... factory: $factory)` puts the attributes on every
/// generated test (for example an `ignore` when the store's server is not configured).
#[macro_export]
macro_rules! batch_store_conformance {
    (@cases $attrs:tt $factory:expr; $($case:ident),* $(,)?) => {
        $( $crate::batch_store_conformance!(@case $attrs $factory; $case); )*
    };
    (@case [$(#[$attr:meta])*] $factory:expr; $case:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        $(#[$attr])*
        async fn $case() -> $crate::testkit::CaseResult {
            $crate::testkit::batch::run(
                concat!(module_path!(), "::", stringify!($case)),
                $factory,
                $crate::testkit::batch::$case,
            )
            .await
        }
    };
    ($(#[$attr:meta])+ factory: $factory:expr) => {
        $crate::batch_store_conformance!(@all [$(#[$attr])*] $factory);
    };
    ($factory:expr) => {
        $crate::batch_store_conformance!(@all [] $factory);
    };
    // The one list of cases, for both forms.
    (@all $attrs:tt $factory:expr) => {
        $crate::batch_store_conformance!(@cases $attrs $factory;
            prune_deletes_finished_jobs_in_bounded_steps,
            batch_text_with_nul_round_trips_or_is_refused,
            batch_names_at_their_limits_round_trip_one_more_is_refused,
            batch_numbers_at_the_ends_of_their_types_never_panic,
            saved_job_round_trips,
            missing_job_reads_as_none,
            saving_again_replaces_the_job,
            config_keeps_unknown_keys,
            update_batch_state_changes_only_that_batch,
            update_batch_state_of_missing_job_is_a_no_op,
            saved_record_round_trips,
            saving_a_record_again_replaces_it,
            failed_records_are_failed_and_invalid_in_index_order,
            no_failed_records_reads_empty,
            pending_records_are_pending_and_valid,
            processed_records_are_in_index_order,
            records_of_jobs_do_not_mix,
            records_read_in_pages,
            progress_counts_processed_failed_and_pending,
            progress_of_missing_job_counts_stored_records,
            progress_clamps_pending_and_measures_elapsed,
            large_and_non_ascii_payloads_round_trip,
            invalid_arguments_are_rejected,
            prepared_job_is_claimable_without_hand_made_batch_rows,
            claim_takes_lowest_pending_batch,
            claim_of_missing_job_is_job_not_found,
            claim_of_job_not_processing_is_refused,
            claims_run_out_with_no_pending_batches,
            workers_get_distinct_batches_in_order,
            released_batch_is_claimable_again,
            release_by_another_worker_is_a_no_op,
            release_never_resets_a_finished_batch,
            release_after_reclaim_is_a_no_op,
            stale_batch_is_reclaimed_and_claimable,
            fresh_batch_is_not_reclaimed,
            heartbeat_keeps_a_batch_from_being_reclaimed,
            zero_timeout_reclaims_claims_older_than_now,
            batch_records_round_trip_in_index_order,
            batch_records_do_not_leak_between_batches,
            saving_batch_records_again_is_idempotent,
            saving_job_again_never_resets_claimed_or_finished_batches,
            distributed_status_counts_batches,
            distributed_status_of_missing_job_is_empty,
            finalize_completes_job_when_all_batches_finished,
            finalize_fails_job_when_a_batch_failed,
            finalize_refuses_while_batches_unfinished,
            finalize_of_missing_job_is_false,
            finalize_happens_once,
            distributed_flag_round_trips,
            full_distributed_flow,
            zombie_worker_cannot_complete_reclaimed_batch,
            zombie_worker_writes_no_outcomes,
            complete_batch_requires_same_worker_and_version,
            job_batches_and_progress_come_from_batch_rows,
            update_batch_state_fences_the_holder,
            bulk_save_keeps_last_duplicate,
            record_outcomes_update_outcomes_and_keep_payloads,
            many_records_save_in_chunks,
            thousands_of_batches_save_in_chunks,
            batch_saved_as_processing_is_reclaimable,
            non_distributed_job_keeps_duplicate_batch_indexes,
            concurrent_batch_updates_of_a_job_are_not_lost,
            batch_id_of_another_job_is_a_conflict,
            concurrent_claims_never_duplicate,
            concurrent_finalize_has_exactly_one_winner,
            concurrent_reclaim_counts_each_stale_batch_once,
            reclaim_racing_completion_has_one_winner,
            late_prepare_loses_no_processed_record,
            saving_batch_records_again_keeps_outcomes,
            saving_a_finished_job_as_unfinished_is_refused,
            stale_release_with_the_same_worker_id_is_refused,
            ids_are_exact,
            json_with_nul_round_trips,
            prepare_reads_the_store_clock,
            prepare_checks_the_job_id_length_up_front,
            claim_retried_with_its_id_gets_the_same_batch,
            finalize_retried_with_its_id_is_told_it_won,
            worker_recovers_a_claim_and_a_finalization_whose_answers_were_lost,
            saving_records_never_moves_a_finished_record_back,
            reset_job_state_moves_a_finished_job_back,
            requeue_reopens_a_finished_job_that_finalizes_again_once,
            requeue_leaves_held_batches_and_refuses_what_it_cannot_reopen,
            every_batch_write_whose_reply_is_lost_tells_the_truth,
        );
    };

}

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// A `PROCESSING`, distributed job `id` of `batches` batches of `per_batch` records each;
/// batch `i` has id `{id}-b{i}` and records `i * per_batch ..= i * per_batch + per_batch - 1`.
pub fn distributed_job(id: &str, batches: u32, per_batch: u64) -> JobState {
    let per_batch = per_batch.max(1);
    let mut job = JobState::new(
        id,
        JobConfig::new(u32::try_from(per_batch).unwrap_or(u32::MAX)),
    );
    job.status = JobStatus::Processing;
    job.distributed = true;
    job.started_at = Some(START_MS);
    job.total_records = u64::from(batches) * per_batch;
    job.batches = (0..batches)
        .map(|i| {
            let start = u64::from(i) * per_batch;
            Batch::new(batch_id(id, i), i).with_records(start, start + per_batch - 1)
        })
        .collect();
    job
}

/// The id [`distributed_job`] gives batch `index` of job `job_id`.
pub fn batch_id(job_id: &str, index: u32) -> String {
    format!("{job_id}-b{index}")
}

/// `pending` records `range`, each with a small raw object.
pub fn pending_records(range: std::ops::Range<u64>) -> Vec<ProcessedRecord> {
    range
        .map(|i| {
            ProcessedRecord::pending(
                i,
                json!({ "email": format!("user{i}@example.com"), "n": i }),
            )
        })
        .collect()
}

/// A record `index` with `status`.
fn record(index: u64, status: RecordStatus) -> ProcessedRecord {
    ProcessedRecord::pending(index, json!({ "i": index })).with_status(status)
}

/// The non-distributed fixture job of the upstream suites: `b1` COMPLETED 5/1, `b2` PENDING,
/// 20 records, started at [`START_MS`].
fn fixture_job(id: &str) -> JobState {
    let mut config = JobConfig::new(10);
    config.schema = Some(json!({
        "fields": [
            { "name": "email", "type": "email", "required": true },
            { "name": "name", "type": "string", "required": false, "aliases": ["full_name"] },
        ],
        "strict": true,
    }));
    config.continue_on_error = Some(true);
    config.max_concurrent_batches = Some(2);
    config.max_retries = Some(3);
    config.retry_delay = Some(Duration::from_millis(250));
    config.skip_empty_rows = Some(false);
    let mut b1 = Batch::new("b1", 0).with_records(0, 9);
    b1.status = BatchStatus::Completed;
    b1.processed_count = 5;
    b1.failed_count = 1;
    let b2 = Batch::new("b2", 1).with_records(10, 19);
    JobState {
        status: JobStatus::Processing,
        batches: vec![b1, b2],
        total_records: 20,
        started_at: Some(START_MS),
        ..JobState::new(id, config)
    }
}

pub(super) async fn claim(
    ctx: &Ctx,
    job_id: &str,
    worker_id: &str,
) -> CaseResult<BatchReservation> {
    match ctx.store.claim_batch(job_id, worker_id).await? {
        ClaimBatchResult::Claimed(r) => Ok(r),
        other => Err(CaseFailure::new(format!(
            "{worker_id} expected a claim on {job_id}, got {other:?}"
        ))),
    }
}

fn indexes(records: &[ProcessedRecord]) -> Vec<u64> {
    records.iter().map(|r| r.index).collect()
}

async fn load_job(ctx: &Ctx, id: &str) -> CaseResult<JobState> {
    ctx.store
        .get_job_state(id)
        .await?
        .ok_or_else(|| CaseFailure::new(format!("job {id} not found")))
}

fn is_invalid(result: Result<impl std::fmt::Debug, Error>) -> CaseResult {
    match result {
        Err(Error::InvalidArgument { .. }) => Ok(()),
        other => Err(CaseFailure::new(format!(
            "expected an invalid-argument error, got {other:?}"
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// StateStore
// ---------------------------------------------------------------------------------------------

/// A saved job reads back equal: status, totals, timestamps, configuration, batches with
/// their record ranges.
pub async fn saved_job_round_trips(ctx: Ctx) -> CaseResult {
    let job = fixture_job("job-001");
    ctx.store.save_job_state(&job).await?;
    let read = load_job(&ctx, "job-001").await?;
    check_eq!(read, job);
    check!(read.completed_at.is_none(), "completed_at set");
    check!(!read.distributed, "distributed set");
    Ok(())
}

/// An unknown job reads as `None`.
pub async fn missing_job_reads_as_none(ctx: Ctx) -> CaseResult {
    check!(
        ctx.store.get_job_state("nope").await?.is_none(),
        "found a job"
    );
    Ok(())
}

/// Saving a job again replaces its status and timestamps.
pub async fn saving_again_replaces_the_job(ctx: Ctx) -> CaseResult {
    let mut job = fixture_job("job-001");
    ctx.store.save_job_state(&job).await?;
    job.status = JobStatus::Completed;
    job.completed_at = Some(START_MS + 5_000);
    job.total_records = 21;
    ctx.store.save_job_state(&job).await?;
    check_eq!(load_job(&ctx, "job-001").await?, job);
    Ok(())
}

/// Configuration keys the type does not know survive a round trip, and so does every
/// optional field.
pub async fn config_keeps_unknown_keys(ctx: Ctx) -> CaseResult {
    let mut job = fixture_job("job-001");
    job.config.extra.insert("id".into(), json!("cfg-1"));
    job.config.extra.insert(
        "futureOption".into(),
        json!({ "nested": [1, 2.5, "x", null, true] }),
    );
    ctx.store.save_job_state(&job).await?;
    let read = load_job(&ctx, "job-001").await?;
    check_eq!(read.config, job.config);
    let as_json = serde_json::to_value(&read.config)?;
    check_eq!(as_json["batchSize"], json!(10));
    check_eq!(as_json["futureOption"]["nested"][1], json!(2.5));
    check_eq!(as_json["retryDelayMs"], json!(250));
    Ok(())
}

/// `update_batch_state` changes the named batch and leaves the others alone.
pub async fn update_batch_state_changes_only_that_batch(ctx: Ctx) -> CaseResult {
    let job = fixture_job("job-001");
    ctx.store.save_job_state(&job).await?;
    let state = BatchState {
        status: BatchStatus::Completed,
        processed_count: 8,
        failed_count: 2,
    };
    ctx.store
        .update_batch_state("job-001", "b2", &state)
        .await?;
    let read = load_job(&ctx, "job-001").await?;
    check_eq!(read.batches.len(), 2);
    check_eq!(read.batches[0], job.batches[0]);
    let b2 = &read.batches[1];
    check_eq!(
        (
            b2.id.as_str(),
            b2.status,
            b2.processed_count,
            b2.failed_count
        ),
        ("b2", BatchStatus::Completed, 8, 2)
    );
    check_eq!(b2.record_start_index, Some(10));
    Ok(())
}

/// `update_batch_state` on an unknown job or batch does nothing and does not fail.
pub async fn update_batch_state_of_missing_job_is_a_no_op(ctx: Ctx) -> CaseResult {
    let state = BatchState {
        status: BatchStatus::Completed,
        processed_count: 1,
        failed_count: 0,
    };
    ctx.store.update_batch_state("nope", "b1", &state).await?;
    check!(
        ctx.store.get_job_state("nope").await?.is_none(),
        "job created"
    );
    let job = fixture_job("job-001");
    ctx.store.save_job_state(&job).await?;
    ctx.store
        .update_batch_state("job-001", "b9", &state)
        .await?;
    check_eq!(load_job(&ctx, "job-001").await?, job);
    Ok(())
}

/// Every field of a record round-trips, including validation errors with extra keys, the
/// processing error and the retry count.
pub async fn saved_record_round_trips(ctx: Ctx) -> CaseResult {
    let mut error = ValidationError::new("email", "Invalid email", "PATTERN_MISMATCH");
    error.value = Some(json!("not-an-email"));
    error.severity = Some("error".into());
    error.category = Some("format".into());
    error.suggestion = Some("use user@host".into());
    error.metadata = Some(serde_json::Map::from_iter([(
        "rule".to_owned(),
        json!("rfc5322"),
    )]));
    error
        .extra
        .insert("unknownKey".into(), json!({ "kept": true }));
    let record = ProcessedRecord {
        index: 7,
        raw: json!({ "email": "not-an-email", "age": "42" }),
        parsed: json!({ "email": "not-an-email", "age": 42 }),
        status: RecordStatus::Failed,
        errors: vec![error],
        processing_error: Some("downstream refused".into()),
        retry_count: 3,
    };
    ctx.store
        .save_processed_record("job-001", "b1", &record)
        .await?;
    let read = ctx.store.get_failed_records("job-001").await?;
    check_eq!(read, vec![record]);
    Ok(())
}

/// Saving the same (job, index) again replaces the record: one record, the new status.
pub async fn saving_a_record_again_replaces_it(ctx: Ctx) -> CaseResult {
    ctx.store
        .save_processed_record("job-001", "b1", &record(0, RecordStatus::Valid))
        .await?;
    let mut processed = record(0, RecordStatus::Processed);
    processed.retry_count = 1;
    ctx.store
        .save_processed_record("job-001", "b2", &processed)
        .await?;
    let all = ctx
        .store
        .get_records("job-001", &RecordFilter::new())
        .await?;
    check_eq!(all, vec![processed]);
    let of_b2 = ctx.store.get_batch_records("job-001", "b2").await?;
    check_eq!(of_b2.len(), 1);
    check!(
        ctx.store
            .get_batch_records("job-001", "b1")
            .await?
            .is_empty(),
        "record still in b1"
    );
    Ok(())
}

/// Saving outcomes changes status, errors, processing error and retries of the batch's records
/// (alike outcomes or not), keeps their payloads, and ignores indexes the batch does not have.
pub async fn record_outcomes_update_outcomes_and_keep_payloads(ctx: Ctx) -> CaseResult {
    let records: Vec<ProcessedRecord> = (0..6).map(|i| record(i, RecordStatus::Pending)).collect();
    ctx.store
        .save_batch_records("job-001", "b1", &records)
        .await?;
    ctx.store
        .save_batch_records("job-001", "b2", &[record(6, RecordStatus::Pending)])
        .await?;
    let mut outcomes: Vec<RecordOutcome> = (0..5)
        .map(|i| RecordOutcome::of(&record(i, RecordStatus::Processed)))
        .collect();
    outcomes[3].status = RecordStatus::Failed;
    outcomes[3].processing_error = Some("boom ✗".to_owned());
    outcomes[3].retry_count = 2;
    outcomes[4].status = RecordStatus::Invalid;
    outcomes[4].errors = vec![ValidationError::new("email", "missing", "REQUIRED")];
    // Index 6 belongs to another batch, 99 to none: neither changes.
    outcomes.push(RecordOutcome::of(&record(6, RecordStatus::Processed)));
    outcomes.push(RecordOutcome::of(&record(99, RecordStatus::Processed)));
    let updated = ctx
        .store
        .save_record_outcomes("job-001", "b1", &outcomes)
        .await?;
    check_eq!(updated, 5);
    let stored = ctx.store.get_batch_records("job-001", "b1").await?;
    check_eq!(stored.len(), 6);
    for (i, got) in stored.iter().enumerate() {
        check_eq!(got.raw, json!({ "i": i }));
        check_eq!(got.parsed, json!({ "i": i }));
    }
    let statuses: Vec<RecordStatus> = stored.iter().map(|r| r.status).collect();
    check_eq!(
        statuses,
        vec![
            RecordStatus::Processed,
            RecordStatus::Processed,
            RecordStatus::Processed,
            RecordStatus::Failed,
            RecordStatus::Invalid,
            RecordStatus::Pending,
        ]
    );
    check_eq!(stored[3].processing_error.as_deref(), Some("boom ✗"));
    check_eq!(stored[3].retry_count, 2);
    check_eq!(stored[4].errors.len(), 1);
    let other = ctx.store.get_batch_records("job-001", "b2").await?;
    check_eq!(other[0].status, RecordStatus::Pending);
    check_eq!(
        ctx.store.save_record_outcomes("job-001", "b1", &[]).await?,
        0
    );
    Ok(())
}

async fn save_statuses(ctx: &Ctx, job_id: &str, statuses: &[(u64, RecordStatus)]) -> CaseResult {
    for (index, status) in statuses {
        ctx.store
            .save_processed_record(job_id, "b1", &record(*index, *status))
            .await?;
    }
    Ok(())
}

/// Failed records are the `failed` and `invalid` ones, in index order.
pub async fn failed_records_are_failed_and_invalid_in_index_order(ctx: Ctx) -> CaseResult {
    save_statuses(
        &ctx,
        "job-001",
        &[
            (2, RecordStatus::Invalid),
            (0, RecordStatus::Processed),
            (1, RecordStatus::Failed),
            (3, RecordStatus::Pending),
        ],
    )
    .await?;
    let failed = ctx.store.get_failed_records("job-001").await?;
    check_eq!(indexes(&failed), vec![1, 2]);
    check_eq!(failed[0].status, RecordStatus::Failed);
    check_eq!(failed[1].status, RecordStatus::Invalid);
    Ok(())
}

/// A job without failures, or an unknown job, has no failed records.
pub async fn no_failed_records_reads_empty(ctx: Ctx) -> CaseResult {
    save_statuses(&ctx, "job-001", &[(0, RecordStatus::Processed)]).await?;
    check!(
        ctx.store.get_failed_records("job-001").await?.is_empty(),
        "failed records"
    );
    check!(
        ctx.store.get_failed_records("nope").await?.is_empty(),
        "records of unknown job"
    );
    check!(
        ctx.store.get_pending_records("nope").await?.is_empty(),
        "records of unknown job"
    );
    check!(
        ctx.store.get_processed_records("nope").await?.is_empty(),
        "records of unknown job"
    );
    Ok(())
}

/// Pending records are the `pending` and `valid` ones, in index order.
pub async fn pending_records_are_pending_and_valid(ctx: Ctx) -> CaseResult {
    save_statuses(
        &ctx,
        "job-001",
        &[
            (1, RecordStatus::Valid),
            (0, RecordStatus::Pending),
            (2, RecordStatus::Processed),
            (3, RecordStatus::Failed),
        ],
    )
    .await?;
    let pending = ctx.store.get_pending_records("job-001").await?;
    check_eq!(indexes(&pending), vec![0, 1]);
    Ok(())
}

/// Processed records are only the `processed` ones, in index order whatever the save order.
pub async fn processed_records_are_in_index_order(ctx: Ctx) -> CaseResult {
    save_statuses(
        &ctx,
        "job-001",
        &[
            (5, RecordStatus::Processed),
            (2, RecordStatus::Processed),
            (3, RecordStatus::Failed),
            (8, RecordStatus::Processed),
        ],
    )
    .await?;
    let processed = ctx.store.get_processed_records("job-001").await?;
    check_eq!(indexes(&processed), vec![2, 5, 8]);
    Ok(())
}

/// Records with the same index in two jobs stay apart.
pub async fn records_of_jobs_do_not_mix(ctx: Ctx) -> CaseResult {
    let mut a = record(0, RecordStatus::Processed);
    a.raw = json!({ "job": "a" });
    let mut b = record(0, RecordStatus::Processed);
    b.raw = json!({ "job": "b" });
    ctx.store.save_processed_record("job-a", "b1", &a).await?;
    ctx.store.save_processed_record("job-b", "b1", &b).await?;
    check_eq!(ctx.store.get_processed_records("job-a").await?, vec![a]);
    check_eq!(ctx.store.get_processed_records("job-b").await?, vec![b]);
    Ok(())
}

/// Records read in pages: status set, batch, `after_index` and `limit` combine, in index
/// order, and walking the pages visits every matching record once.
pub async fn records_read_in_pages(ctx: Ctx) -> CaseResult {
    let records: Vec<ProcessedRecord> = (0..50)
        .map(|i| {
            let status = match i % 3 {
                0 => RecordStatus::Processed,
                1 => RecordStatus::Failed,
                _ => RecordStatus::Invalid,
            };
            record(i, status)
        })
        .collect();
    ctx.store
        .save_processed_records("job-001", "b1", &records[..25])
        .await?;
    ctx.store
        .save_processed_records("job-001", "b2", &records[25..])
        .await?;
    let failed = RecordFilter::new().statuses(RecordStatus::FAILED.iter().copied());
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let mut page = failed.clone().limit(7);
        if let Some(index) = after {
            page = page.after(index);
        }
        let rows = ctx.store.get_records("job-001", &page).await?;
        check!(rows.len() <= 7, "page of {}", rows.len());
        let Some(last) = rows.last() else { break };
        after = Some(last.index);
        seen.extend(indexes(&rows));
    }
    let expected: Vec<u64> = (0..50).filter(|i| i % 3 != 0).collect();
    check_eq!(seen, expected);
    let of_b2 = ctx
        .store
        .get_records(
            "job-001",
            &RecordFilter::new().batch("b2").after(40).limit(3),
        )
        .await?;
    check_eq!(indexes(&of_b2), vec![41, 42, 43]);
    let none = ctx
        .store
        .get_records("job-001", &RecordFilter::new().limit(0))
        .await?;
    check!(none.is_empty(), "limit 0 returned {}", none.len());
    let beyond = ctx
        .store
        .get_records("job-001", &RecordFilter::new().after(u64::MAX))
        .await?;
    check!(beyond.is_empty(), "records after u64::MAX");
    Ok(())
}

/// Progress counts processed, failed (failed + invalid) and pending records against the
/// job's total, and the batches from the job's batch list.
pub async fn progress_counts_processed_failed_and_pending(ctx: Ctx) -> CaseResult {
    let mut job = fixture_job("job-001");
    job.total_records = 10;
    ctx.store.save_job_state(&job).await?;
    save_statuses(
        &ctx,
        "job-001",
        &[
            (0, RecordStatus::Processed),
            (1, RecordStatus::Processed),
            (2, RecordStatus::Failed),
            (3, RecordStatus::Invalid),
            (4, RecordStatus::Valid),
            (5, RecordStatus::Pending),
        ],
    )
    .await?;
    ctx.clock.advance(Duration::from_millis(5_000));
    let progress = ctx.store.get_progress("job-001").await?;
    check_eq!(progress.total_records, 10);
    check_eq!(progress.processed_records, 2);
    check_eq!(progress.failed_records, 2);
    check_eq!(progress.pending_records, 6);
    check_eq!(progress.percentage, 40);
    check_eq!(progress.completed_batches, 1);
    check_eq!(progress.total_batches, 2);
    check_eq!(progress.elapsed, Duration::from_millis(5_000));
    Ok(())
}

/// An unknown job's progress is all zero, or counts its stored records as the total.
pub async fn progress_of_missing_job_counts_stored_records(ctx: Ctx) -> CaseResult {
    let empty = ctx.store.get_progress("nope").await?;
    check_eq!(
        (
            empty.total_records,
            empty.processed_records,
            empty.pending_records,
            empty.percentage
        ),
        (0, 0, 0, 0)
    );
    check_eq!((empty.total_batches, empty.elapsed), (0, Duration::ZERO));
    save_statuses(
        &ctx,
        "records-only",
        &[
            (0, RecordStatus::Processed),
            (1, RecordStatus::Invalid),
            (2, RecordStatus::Pending),
        ],
    )
    .await?;
    let progress = ctx.store.get_progress("records-only").await?;
    check_eq!(progress.total_records, 3);
    check_eq!(progress.processed_records, 1);
    check_eq!(progress.failed_records, 1);
    check_eq!(progress.pending_records, 1);
    check_eq!(progress.percentage, 67);
    Ok(())
}

/// Pending records never go below zero, the percentage stops at 100, and the elapsed time
/// of a finished job ends at its completion.
pub async fn progress_clamps_pending_and_measures_elapsed(ctx: Ctx) -> CaseResult {
    let mut job = fixture_job("job-001");
    job.total_records = 2;
    job.status = JobStatus::Completed;
    job.completed_at = Some(START_MS + 1_234);
    ctx.store.save_job_state(&job).await?;
    save_statuses(
        &ctx,
        "job-001",
        &[
            (0, RecordStatus::Processed),
            (1, RecordStatus::Processed),
            (2, RecordStatus::Failed),
        ],
    )
    .await?;
    ctx.clock.advance(Duration::from_millis(60_000));
    let progress = ctx.store.get_progress("job-001").await?;
    check_eq!(progress.pending_records, 0);
    check_eq!(progress.percentage, 100);
    check_eq!(progress.elapsed, Duration::from_millis(1_234));
    let mut unstarted = fixture_job("job-002");
    unstarted.started_at = None;
    ctx.store.save_job_state(&unstarted).await?;
    check_eq!(
        ctx.store.get_progress("job-002").await?.elapsed,
        Duration::ZERO
    );
    Ok(())
}

/// A 1 MiB `raw` payload, non-ASCII keys and values, and a non-ASCII job id round-trip.
pub async fn large_and_non_ascii_payloads_round_trip(ctx: Ctx) -> CaseResult {
    let big = "x".repeat(1024 * 1024);
    let mut large = ProcessedRecord::pending(0, json!({ "blob": big }));
    large.parsed = json!({ "size": 1_048_576 });
    let mut unicode = ProcessedRecord::pending(
        1,
        json!({ "naïve-ключ": "значение ✓", "名前": "山田 🍣", "emoji 😀": [1, "ß"] }),
    );
    unicode.processing_error = Some("échec: 失敗 ❌".into());
    // A JSON document stored as a string stays a string (no double decoding), and integers
    // beyond 2^53 stay exact.
    let mut encoded = ProcessedRecord::pending(2, json!("{\"a\":1}"));
    encoded.parsed = json!(9_007_199_254_740_993_i64);
    let job_id = "jöb-ünïcode-名前";
    let saved = [large.clone(), unicode.clone(), encoded.clone()];
    ctx.store
        .save_batch_records(job_id, "bätch-1", &saved)
        .await?;
    let read = ctx.store.get_batch_records(job_id, "bätch-1").await?;
    check_eq!(read.len(), 3);
    check!(read[0] == large, "1 MiB record changed");
    check_eq!(read[1], unicode);
    check_eq!(read[2], encoded);
    let mut job = fixture_job(job_id);
    job.config.extra.insert("ключ".into(), json!("値"));
    ctx.store.save_job_state(&job).await?;
    check_eq!(load_job(&ctx, job_id).await?, job);
    Ok(())
}

/// Empty ids, a batch size of 0, ids too long for the tables and malformed distributed
/// batches are invalid arguments.
pub async fn invalid_arguments_are_rejected(ctx: Ctx) -> CaseResult {
    let s = &ctx.store;
    is_invalid(s.save_job_state(&fixture_job("")).await)?;
    is_invalid(s.save_job_state(&fixture_job(&"j".repeat(129))).await)?;
    let mut zero = fixture_job("job-001");
    zero.config.batch_size = 0;
    is_invalid(s.save_job_state(&zero).await)?;
    let mut no_range = distributed_job("job-001", 2, 3);
    no_range.batches[1].record_end_index = None;
    is_invalid(s.save_job_state(&no_range).await)?;
    let mut backwards = distributed_job("job-001", 2, 3);
    backwards.batches[0].record_start_index = Some(5);
    is_invalid(s.save_job_state(&backwards).await)?;
    let mut twice = distributed_job("job-001", 2, 3);
    twice.batches[1].index = 0;
    is_invalid(s.save_job_state(&twice).await)?;
    let mut same_id = distributed_job("job-001", 2, 3);
    same_id.batches[1].id = same_id.batches[0].id.clone();
    is_invalid(s.save_job_state(&same_id).await)?;
    let mut empty_batch_id = distributed_job("job-001", 2, 3);
    empty_batch_id.batches[0].id.clear();
    is_invalid(s.save_job_state(&empty_batch_id).await)?;
    check!(
        s.get_job_state("job-001").await?.is_none(),
        "an invalid job was saved"
    );
    s.save_job_state(&distributed_job("job-001", 2, 3)).await?;
    is_invalid(s.claim_batch("job-001", "").await)?;
    is_invalid(s.claim_batch("", "worker-1").await)?;
    is_invalid(
        s.save_processed_record("", "b1", &record(0, RecordStatus::Processed))
            .await,
    )?;
    is_invalid(
        s.save_processed_record("job-001", "", &record(0, RecordStatus::Processed))
            .await,
    )?;
    is_invalid(
        s.save_batch_records("job-001", "", &pending_records(0..2))
            .await,
    )?;
    is_invalid(
        s.save_processed_records("job-001", "b1", &[record(u64::MAX, RecordStatus::Failed)])
            .await,
    )?;
    check_eq!(s.reclaim_stale_batches("job-001", Duration::MAX).await?, 0);
    check!(
        s.get_records("job-001", &RecordFilter::new())
            .await?
            .is_empty(),
        "records saved"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// DistributedStateStore
// ---------------------------------------------------------------------------------------------

/// The upstream prepare sequence (records per batch, then the job) makes every batch
/// claimable, and each claim's records are exactly that batch's records.
pub async fn prepared_job_is_claimable_without_hand_made_batch_rows(ctx: Ctx) -> CaseResult {
    let job = distributed_job("job-001", 3, 4);
    for (i, batch) in job.batches.iter().enumerate() {
        let start = u64::try_from(i)? * 4;
        ctx.store
            .save_batch_records("job-001", &batch.id, &pending_records(start..start + 4))
            .await?;
    }
    ctx.store.save_job_state(&job).await?;
    let status = ctx.store.get_distributed_status("job-001").await?;
    check_eq!((status.total_batches, status.pending_batches), (3, 3));
    for i in 0..3u32 {
        let r = claim(&ctx, "job-001", "worker-1").await?;
        check_eq!(r.batch_index, i);
        let records = ctx.store.get_batch_records("job-001", &r.batch_id).await?;
        let expected: Vec<u64> = (r.record_start_index..=r.record_end_index).collect();
        check_eq!(indexes(&records), expected);
        check!(
            records.iter().all(|r| r.status == RecordStatus::Pending),
            "not pending"
        );
    }
    Ok(())
}

/// A claim takes the lowest-index pending batch and says who holds it since when, which
/// records it covers and at which version.
pub async fn claim_takes_lowest_pending_batch(ctx: Ctx) -> CaseResult {
    ctx.store
        .save_job_state(&distributed_job("job-001", 3, 3))
        .await?;
    let r = claim(&ctx, "job-001", "worker-1").await?;
    check_eq!(r.job_id, "job-001");
    check_eq!(r.batch_id, batch_id("job-001", 0));
    check_eq!(r.batch_index, 0);
    check_eq!(r.worker_id, "worker-1");
    check_eq!(r.claimed_at, START_MS);
    check_eq!((r.record_start_index, r.record_end_index), (0, 2));
    let batch = &load_job(&ctx, "job-001").await?.batches[0];
    check_eq!(batch.status, BatchStatus::Processing);
    check_eq!(batch.worker_id.as_deref(), Some("worker-1"));
    check_eq!(batch.claimed_at, Some(START_MS));
    Ok(())
}

/// Claiming a batch of an unknown job answers `JobNotFound`.
pub async fn claim_of_missing_job_is_job_not_found(ctx: Ctx) -> CaseResult {
    check_eq!(
        ctx.store.claim_batch("nope", "worker-1").await?,
        ClaimBatchResult::JobNotFound
    );
    Ok(())
}

/// Claiming from a job that is not `PROCESSING` answers `JobNotProcessing`.
pub async fn claim_of_job_not_processing_is_refused(ctx: Ctx) -> CaseResult {
    for status in [JobStatus::Completed, JobStatus::Created, JobStatus::Paused] {
        let id = format!("job-{status}");
        let mut job = distributed_job(&id, 2, 3);
        job.status = status;
        ctx.store.save_job_state(&job).await?;
        check_eq!(
            ctx.store.claim_batch(&id, "worker-1").await?,
            ClaimBatchResult::JobNotProcessing
        );
    }
    Ok(())
}

/// Once every batch is claimed, a claim answers `NoPendingBatches`.
pub async fn claims_run_out_with_no_pending_batches(ctx: Ctx) -> CaseResult {
    ctx.store
        .save_job_state(&distributed_job("job-001", 3, 3))
        .await?;
    for _ in 0..3 {
        claim(&ctx, "job-001", "worker-1").await?;
    }
    check_eq!(
        ctx.store.claim_batch("job-001", "worker-1").await?,
        ClaimBatchResult::NoPendingBatches
    );
    Ok(())
}

/// Workers claiming one after another get distinct batches in index order.
pub async fn workers_get_distinct_batches_in_order(ctx: Ctx) -> CaseResult {
    ctx.store
        .save_job_state(&distributed_job("job-001", 3, 3))
        .await?;
    let mut ids = HashSet::new();
    for (i, worker) in ["A", "B", "C"].into_iter().enumerate() {
        let r = claim(&ctx, "job-001", worker).await?;
        check_eq!(r.batch_index, u32::try_from(i)?);
        check!(ids.insert(r.batch_id), "batch claimed twice");
    }
    check_eq!(
        ctx.store.claim_batch("job-001", "D").await?,
        ClaimBatchResult::NoPendingBatches
    );
    Ok(())
}

/// A released batch goes back to `PENDING` and is claimed again first, at a new version.
pub async fn released_batch_is_claimable_again(ctx: Ctx) -> CaseResult {
    ctx.store
        .save_job_state(&distributed_job("job-001", 3, 3))
        .await?;
    let first = claim(&ctx, "job-001", "worker-1").await?;
    check!(ctx.store.release_batch(&first).await?, "release refused");
    let batch = &load_job(&ctx, "job-001").await?.batches[0];
    check_eq!(
        (batch.status, batch.worker_id.as_deref()),
        (BatchStatus::Pending, None)
    );
    let again = claim(&ctx, "job-001", "worker-2").await?;
    check_eq!(again.batch_id, first.batch_id);
    check!(again.version > first.version, "version not bumped");
    Ok(())
}

/// Another worker cannot release a batch it does not hold.
pub async fn release_by_another_worker_is_a_no_op(ctx: Ctx) -> CaseResult {
    ctx.store
        .save_job_state(&distributed_job("job-001", 3, 3))
        .await?;
    let first = claim(&ctx, "job-001", "worker-1").await?;
    let stranger = BatchReservation {
        worker_id: "worker-2".into(),
        ..first.clone()
    };
    check!(
        !ctx.store.release_batch(&stranger).await?,
        "released by a stranger"
    );
    let other_job = BatchReservation {
        job_id: "job-002".into(),
        ..first.clone()
    };
    check!(
        !ctx.store.release_batch(&other_job).await?,
        "released through another job"
    );
    let next = claim(&ctx, "job-001", "worker-2").await?;
    check_eq!(next.batch_index, 1);
    check!(ctx.store.heartbeat_batch(&first).await?, "first claim lost");
    Ok(())
}

/// A finished batch stays finished when its former owner releases it.
pub async fn release_never_resets_a_finished_batch(ctx: Ctx) -> CaseResult {
    ctx.store
        .save_job_state(&distributed_job("job-001", 1, 3))
        .await?;
    let r = claim(&ctx, "job-001", "worker-1").await?;
    check!(
        ctx.store
            .complete_batch(&r, BatchOutcome::completed(3, 0))
            .await?,
        "completion refused"
    );
    check!(
        !ctx.store.release_batch(&r).await?,
        "finished batch released"
    );
    let status = ctx.store.get_distributed_status("job-001").await?;
    check_eq!((status.completed_batches, status.pending_batches), (1, 0));
    Ok(())
}

/// After a reclaim and a new claim by another worker, the old owner cannot release it.
pub async fn release_after_reclaim_is_a_no_op(ctx: Ctx) -> CaseResult {
    ctx.store
        .save_job_state(&distributed_job("job-001", 1, 3))
        .await?;
    let old = claim(&ctx, "job-001", "worker-1").await?;
    ctx.clock.advance(Duration::from_millis(60_000));
    check_eq!(
        ctx.store
            .reclaim_stale_batches("job-001", Duration::from_secs(30))
            .await?,
        1
    );
    let new = claim(&ctx, "job-001", "worker-2").await?;
    check!(
        !ctx.store.release_batch(&old).await?,
        "old owner released the new claim"
    );
    check!(ctx.store.heartbeat_batch(&new).await?, "new claim lost");
    Ok(())
}

/// A batch whose claim is older than the timeout goes back to `PENDING`, counted once, and
/// can be claimed by another worker.
pub async fn stale_batch_is_reclaimed_and_claimable(ctx: Ctx) -> CaseResult {
    ctx.store
        .save_job_state(&distributed_job("job-001", 3, 3))
        .await?;
    let old = claim(&ctx, "job-001", "worker-1").await?;
    ctx.clock.advance(Duration::from_millis(60_000));
    check_eq!(
        ctx.store
            .reclaim_stale_batches("job-001", Duration::from_secs(30))
            .await?,
        1
    );
    check_eq!(
        ctx.store
            .reclaim_stale_batches("job-001", Duration::from_secs(30))
            .await?,
        0
    );
    let new = claim(&ctx, "job-001", "worker-2").await?;
    check_eq!(new.batch_id, old.batch_id);
    check_eq!(new.claimed_at, START_MS + 60_000);
    check!(
        new.version > old.version,
        "version not bumped by the reclaim"
    );
    Ok(())
}

/// Claims within the timeout, and jobs without processing batches, reclaim nothing.
pub async fn fresh_batch_is_not_reclaimed(ctx: Ctx) -> CaseResult {
    ctx.store
        .save_job_state(&distributed_job("job-001", 3, 3))
        .await?;
    check_eq!(
        ctx.store
            .reclaim_stale_batches("job-001", Duration::ZERO)
            .await?,
        0
    );
    check_eq!(
        ctx.store
            .reclaim_stale_batches("nope", Duration::ZERO)
            .await?,
        0
    );
    let r = claim(&ctx, "job-001", "worker-1").await?;
    ctx.clock.advance(Duration::from_millis(30_000));
    // Exactly at the timeout is not yet stale.
    check_eq!(
        ctx.store
            .reclaim_stale_batches("job-001", Duration::from_secs(30))
            .await?,
        0
    );
    check!(ctx.store.heartbeat_batch(&r).await?, "claim lost");
    Ok(())
}

/// Heartbeats move the staleness clock: a batch older than the timeout but recently
/// heartbeaten is not reclaimed.
pub async fn heartbeat_keeps_a_batch_from_being_reclaimed(ctx: Ctx) -> CaseResult {
    ctx.store
        .save_job_state(&distributed_job("job-001", 2, 3))
        .await?;
    let r = claim(&ctx, "job-001", "worker-1").await?;
    for _ in 0..4 {
        ctx.clock.advance(Duration::from_millis(20_000));
        check!(ctx.store.heartbeat_batch(&r).await?, "heartbeat refused");
        check_eq!(
            ctx.store
                .reclaim_stale_batches("job-001", Duration::from_secs(30))
                .await?,
            0
        );
    }
    ctx.clock.advance(Duration::from_millis(31_000));
    check_eq!(
        ctx.store
            .reclaim_stale_batches("job-001", Duration::from_secs(30))
            .await?,
        1
    );
    check!(
        !ctx.store.heartbeat_batch(&r).await?,
        "heartbeat after reclaim accepted"
    );
    Ok(())
}

/// A zero timeout reclaims every claim older than now, and none taken this very millisecond.
pub async fn zero_timeout_reclaims_claims_older_than_now(ctx: Ctx) -> CaseResult {
    ctx.store
        .save_job_state(&distributed_job("job-001", 3, 3))
        .await?;
    claim(&ctx, "job-001", "worker-1").await?;
    ctx.clock.advance(Duration::from_millis(1));
    claim(&ctx, "job-001", "worker-2").await?;
    check_eq!(
        ctx.store
            .reclaim_stale_batches("job-001", Duration::ZERO)
            .await?,
        1
    );
    ctx.clock.advance(Duration::from_millis(1));
    check_eq!(
        ctx.store
            .reclaim_stale_batches("job-001", Duration::ZERO)
            .await?,
        1
    );
    Ok(())
}

/// Batch records come back whole and in index order whatever the save order.
pub async fn batch_records_round_trip_in_index_order(ctx: Ctx) -> CaseResult {
    let mut records = pending_records(3..6);
    records.rotate_left(2);
    ctx.store
        .save_batch_records("job-001", "b1", &records)
        .await?;
    let read = ctx.store.get_batch_records("job-001", "b1").await?;
    check_eq!(indexes(&read), vec![3, 4, 5]);
    check_eq!(read[0].raw, json!({ "email": "user3@example.com", "n": 3 }));
    check_eq!(read[0].parsed, read[0].raw);
    Ok(())
}

/// Each batch reads only its own records.
pub async fn batch_records_do_not_leak_between_batches(ctx: Ctx) -> CaseResult {
    ctx.store
        .save_batch_records("job-001", "b1", &pending_records(0..3))
        .await?;
    ctx.store
        .save_batch_records("job-001", "b2", &pending_records(3..6))
        .await?;
    check_eq!(
        indexes(&ctx.store.get_batch_records("job-001", "b1").await?),
        vec![0, 1, 2]
    );
    check_eq!(
        indexes(&ctx.store.get_batch_records("job-001", "b2").await?),
        vec![3, 4, 5]
    );
    check!(
        ctx.store
            .get_batch_records("job-001", "b3")
            .await?
            .is_empty(),
        "b3 has records"
    );
    check!(
        ctx.store
            .get_batch_records("job-002", "b1")
            .await?
            .is_empty(),
        "leak across jobs"
    );
    Ok(())
}

/// Saving a batch's records twice (a retried prepare) succeeds and leaves one copy.
pub async fn saving_batch_records_again_is_idempotent(ctx: Ctx) -> CaseResult {
    ctx.store
        .save_batch_records("job-001", "b1", &pending_records(0..3))
        .await?;
    ctx.store
        .save_batch_records("job-001", "b1", &pending_records(0..3))
        .await?;
    ctx.store.save_batch_records("job-001", "b1", &[]).await?;
    let read = ctx.store.get_batch_records("job-001", "b1").await?;
    check_eq!(read, pending_records(0..3));
    Ok(())
}

/// Saving a distributed job again keeps claimed and finished batches as they are and adds
/// batches it did not have.
pub async fn saving_job_again_never_resets_claimed_or_finished_batches(ctx: Ctx) -> CaseResult {
    let job = distributed_job("job-001", 3, 3);
    ctx.store.save_job_state(&job).await?;
    let done = claim(&ctx, "job-001", "worker-1").await?;
    check!(
        ctx.store
            .complete_batch(&done, BatchOutcome::completed(3, 0))
            .await?,
        "completion refused"
    );
    let held = claim(&ctx, "job-001", "worker-2").await?;
    // The same job saved again, as a restarted preparer would, with regenerated batch ids and
    // one more batch.
    let mut again = distributed_job("job-001", 4, 3);
    for batch in &mut again.batches {
        batch.id = format!("regenerated-{}", batch.index);
    }
    ctx.store.save_job_state(&again).await?;
    let batches = load_job(&ctx, "job-001").await?.batches;
    check_eq!(batches.len(), 4);
    check_eq!(
        (batches[0].id.clone(), batches[0].status),
        (done.batch_id.clone(), BatchStatus::Completed)
    );
    check_eq!(batches[0].processed_count, 3);
    check_eq!(
        (batches[1].id.clone(), batches[1].status),
        (held.batch_id.clone(), BatchStatus::Processing)
    );
    check_eq!(batches[2].id, batch_id("job-001", 2));
    check_eq!(
        (batches[3].id.as_str(), batches[3].status),
        ("regenerated-3", BatchStatus::Pending)
    );
    check!(
        ctx.store.heartbeat_batch(&held).await?,
        "claim lost by saving the job"
    );
    ctx.store.save_job_state(&job).await?;
    check_eq!(
        ctx.store
            .get_distributed_status("job-001")
            .await?
            .total_batches,
        4
    );
    Ok(())
}

/// Batch counts by status, and `is_complete` only when completed + failed = total.
pub async fn distributed_status_counts_batches(ctx: Ctx) -> CaseResult {
    ctx.store
        .save_job_state(&distributed_job("job-001", 3, 3))
        .await?;
    let a = claim(&ctx, "job-001", "worker-1").await?;
    ctx.store
        .complete_batch(&a, BatchOutcome::completed(3, 0))
        .await?;
    let b = claim(&ctx, "job-001", "worker-1").await?;
    let status = ctx.store.get_distributed_status("job-001").await?;
    check_eq!(status.job_id, "job-001");
    check_eq!(
        (
            status.total_batches,
            status.completed_batches,
            status.processing_batches,
            status.pending_batches,
            status.failed_batches
        ),
        (3, 1, 1, 1, 0)
    );
    check!(!status.is_complete, "complete too early");
    ctx.store
        .complete_batch(&b, BatchOutcome::failed(1, 2))
        .await?;
    let c = claim(&ctx, "job-001", "worker-1").await?;
    ctx.store
        .complete_batch(&c, BatchOutcome::completed(3, 0))
        .await?;
    let status = ctx.store.get_distributed_status("job-001").await?;
    check_eq!((status.completed_batches, status.failed_batches), (2, 1));
    check!(status.is_complete, "not complete");
    Ok(())
}

/// An unknown job has no batches and is not complete.
pub async fn distributed_status_of_missing_job_is_empty(ctx: Ctx) -> CaseResult {
    let status = ctx.store.get_distributed_status("nope").await?;
    check_eq!(status, crate::batch::DistributedJobStatus::empty("nope"));
    Ok(())
}

async fn finish_all(ctx: &Ctx, job_id: &str, fail_index: Option<u32>) -> CaseResult {
    loop {
        match ctx.store.claim_batch(job_id, "worker-1").await? {
            ClaimBatchResult::Claimed(r) => {
                let outcome = if Some(r.batch_index) == fail_index {
                    BatchOutcome::failed(0, 3)
                } else {
                    BatchOutcome::completed(3, 0)
                };
                check!(
                    ctx.store.complete_batch(&r, outcome).await?,
                    "completion refused"
                );
            }
            ClaimBatchResult::NoPendingBatches => return Ok(()),
            other => return Err(CaseFailure::new(format!("unexpected {other:?}"))),
        }
    }
}

/// With every batch finished, finalizing moves the job to `COMPLETED` at the clock's time.
pub async fn finalize_completes_job_when_all_batches_finished(ctx: Ctx) -> CaseResult {
    ctx.store
        .save_job_state(&distributed_job("job-001", 3, 3))
        .await?;
    finish_all(&ctx, "job-001", None).await?;
    ctx.clock.advance(Duration::from_millis(777));
    check!(
        ctx.store.try_finalize_job("job-001").await?,
        "finalize refused"
    );
    let job = load_job(&ctx, "job-001").await?;
    check_eq!(job.status, JobStatus::Completed);
    check_eq!(job.completed_at, Some(START_MS + 777));
    check_eq!(
        ctx.store.claim_batch("job-001", "late").await?,
        ClaimBatchResult::JobNotProcessing
    );
    Ok(())
}

/// A failed batch makes the finalized job `FAILED`, with its completion time set.
pub async fn finalize_fails_job_when_a_batch_failed(ctx: Ctx) -> CaseResult {
    ctx.store
        .save_job_state(&distributed_job("job-001", 3, 3))
        .await?;
    finish_all(&ctx, "job-001", Some(1)).await?;
    check!(
        ctx.store.try_finalize_job("job-001").await?,
        "finalize refused"
    );
    let job = load_job(&ctx, "job-001").await?;
    check_eq!(job.status, JobStatus::Failed);
    check_eq!(job.completed_at, Some(START_MS));
    Ok(())
}

/// Pending, processing or paused batches block finalization, as does having no batches.
pub async fn finalize_refuses_while_batches_unfinished(ctx: Ctx) -> CaseResult {
    ctx.store
        .save_job_state(&distributed_job("job-001", 3, 3))
        .await?;
    check!(
        !ctx.store.try_finalize_job("job-001").await?,
        "finalized with pending batches"
    );
    let a = claim(&ctx, "job-001", "w").await?;
    ctx.store
        .complete_batch(&a, BatchOutcome::completed(3, 0))
        .await?;
    let b = claim(&ctx, "job-001", "w").await?;
    ctx.store
        .complete_batch(&b, BatchOutcome::completed(3, 0))
        .await?;
    let c = claim(&ctx, "job-001", "w").await?;
    check!(
        !ctx.store.try_finalize_job("job-001").await?,
        "finalized while processing"
    );
    ctx.store
        .update_batch_state(
            "job-001",
            &c.batch_id,
            &BatchState {
                status: BatchStatus::Paused,
                processed_count: 0,
                failed_count: 0,
            },
        )
        .await?;
    check!(
        !ctx.store.try_finalize_job("job-001").await?,
        "finalized with a paused batch"
    );
    check!(
        !ctx.store
            .get_distributed_status("job-001")
            .await?
            .is_complete,
        "paused counted"
    );
    ctx.store
        .save_job_state(&distributed_job("job-002", 0, 3))
        .await?;
    check!(
        !ctx.store.try_finalize_job("job-002").await?,
        "finalized a job without batches"
    );
    check_eq!(
        load_job(&ctx, "job-001").await?.status,
        JobStatus::Processing
    );
    Ok(())
}

/// Finalizing an unknown job answers `false`.
pub async fn finalize_of_missing_job_is_false(ctx: Ctx) -> CaseResult {
    check!(
        !ctx.store.try_finalize_job("nope").await?,
        "finalized nothing"
    );
    Ok(())
}

/// Only the first of several finalize calls succeeds.
pub async fn finalize_happens_once(ctx: Ctx) -> CaseResult {
    ctx.store
        .save_job_state(&distributed_job("job-001", 2, 3))
        .await?;
    finish_all(&ctx, "job-001", None).await?;
    let results = [
        ctx.store.try_finalize_job("job-001").await?,
        ctx.store.try_finalize_job("job-001").await?,
        ctx.store.try_finalize_job("job-001").await?,
    ];
    check_eq!(results, [true, false, false]);
    Ok(())
}

/// `distributed` reads back as saved, `true` or `false`.
pub async fn distributed_flag_round_trips(ctx: Ctx) -> CaseResult {
    ctx.store
        .save_job_state(&distributed_job("job-d", 1, 3))
        .await?;
    ctx.store.save_job_state(&fixture_job("job-n")).await?;
    check!(
        load_job(&ctx, "job-d").await?.distributed,
        "distributed lost"
    );
    check!(
        !load_job(&ctx, "job-n").await?.distributed,
        "distributed invented"
    );
    Ok(())
}

/// The upstream end-to-end flow: prepare, three workers claim, read, record and complete
/// their batches; only the last finalize succeeds; progress is 100 %; late claims are refused.
pub async fn full_distributed_flow(ctx: Ctx) -> CaseResult {
    let job = distributed_job("job-001", 3, 3);
    for batch in &job.batches {
        let (start, end) = (
            batch.record_start_index.unwrap_or(0),
            batch.record_end_index.unwrap_or(0),
        );
        ctx.store
            .save_batch_records("job-001", &batch.id, &pending_records(start..end + 1))
            .await?;
    }
    ctx.store.save_job_state(&job).await?;
    let mut finalized = Vec::new();
    for worker in ["worker-1", "worker-2", "worker-3"] {
        let r = claim(&ctx, "job-001", worker).await?;
        let records = ctx.store.get_batch_records("job-001", &r.batch_id).await?;
        check_eq!(records.len(), 3);
        for record in records {
            let mut done = record.with_status(RecordStatus::Processed);
            done.parsed = json!({ "ok": true });
            ctx.store
                .save_processed_record("job-001", &r.batch_id, &done)
                .await?;
        }
        check!(
            ctx.store
                .complete_batch(&r, BatchOutcome::completed(3, 0))
                .await?,
            "refused"
        );
        finalized.push(ctx.store.try_finalize_job("job-001").await?);
    }
    check_eq!(finalized, vec![false, false, true]);
    check_eq!(
        ctx.store.claim_batch("job-001", "worker-4").await?,
        ClaimBatchResult::JobNotProcessing
    );
    check_eq!(
        load_job(&ctx, "job-001").await?.status,
        JobStatus::Completed
    );
    check_eq!(ctx.store.get_processed_records("job-001").await?.len(), 9);
    let progress = ctx.store.get_progress("job-001").await?;
    check_eq!(
        (progress.processed_records, progress.failed_records),
        (9, 0)
    );
    check_eq!(
        (
            progress.percentage,
            progress.completed_batches,
            progress.total_batches
        ),
        (100, 3, 3)
    );
    Ok(())
}

/// A worker whose batch was reclaimed and claimed by another cannot complete or heartbeat it,
/// and cannot finalize the job; the new owner can.
pub async fn zombie_worker_cannot_complete_reclaimed_batch(ctx: Ctx) -> CaseResult {
    ctx.store
        .save_job_state(&distributed_job("job-001", 1, 3))
        .await?;
    let zombie = claim(&ctx, "job-001", "worker-a").await?;
    ctx.clock.advance(Duration::from_millis(120_000));
    check_eq!(
        ctx.store
            .reclaim_stale_batches("job-001", Duration::from_secs(60))
            .await?,
        1
    );
    let owner = claim(&ctx, "job-001", "worker-b").await?;
    check!(
        !ctx.store
            .complete_batch(&zombie, BatchOutcome::completed(3, 0))
            .await?,
        "zombie completed the batch"
    );
    check!(
        !ctx.store.heartbeat_batch(&zombie).await?,
        "zombie heartbeat accepted"
    );
    check!(
        !ctx.store.try_finalize_job("job-001").await?,
        "finalized during the new claim"
    );
    check!(
        ctx.store.heartbeat_batch(&owner).await?,
        "owner heartbeat refused"
    );
    check!(
        ctx.store
            .complete_batch(&owner, BatchOutcome::completed(3, 0))
            .await?,
        "owner refused"
    );
    check!(
        ctx.store.try_finalize_job("job-001").await?,
        "finalize refused"
    );
    Ok(())
}

/// Completing with outcomes is fenced as a whole: a worker whose claim was reclaimed writes
/// neither the batch nor any record outcome; the new owner writes both.
pub async fn zombie_worker_writes_no_outcomes(ctx: Ctx) -> CaseResult {
    ctx.store
        .save_job_state(&distributed_job("job-001", 1, 3))
        .await?;
    let zombie = claim(&ctx, "job-001", "worker-a").await?;
    let records: Vec<ProcessedRecord> = (0..3).map(|i| record(i, RecordStatus::Pending)).collect();
    ctx.store
        .save_batch_records("job-001", &zombie.batch_id, &records)
        .await?;
    ctx.clock.advance(Duration::from_millis(120_000));
    ctx.store
        .reclaim_stale_batches("job-001", Duration::from_secs(60))
        .await?;
    let owner = claim(&ctx, "job-001", "worker-b").await?;
    let failed: Vec<RecordOutcome> = (0..3)
        .map(|i| {
            let mut outcome = RecordOutcome::of(&record(i, RecordStatus::Failed));
            outcome.processing_error = Some("zombie".to_owned());
            outcome
        })
        .collect();
    check!(
        !ctx.store
            .complete_batch_with_outcomes(&zombie, BatchOutcome::completed(0, 3), &failed)
            .await?,
        "zombie completed the batch"
    );
    let stored = ctx
        .store
        .get_batch_records("job-001", &owner.batch_id)
        .await?;
    check!(
        stored.iter().all(|r| r.status == RecordStatus::Pending),
        "zombie wrote outcomes: {:?}",
        stored.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    let processed: Vec<RecordOutcome> = (0..3)
        .map(|i| RecordOutcome::of(&record(i, RecordStatus::Processed)))
        .collect();
    check!(
        ctx.store
            .complete_batch_with_outcomes(&owner, BatchOutcome::completed(3, 0), &processed)
            .await?,
        "owner refused"
    );
    let stored = ctx
        .store
        .get_batch_records("job-001", &owner.batch_id)
        .await?;
    check!(
        stored.iter().all(|r| r.status == RecordStatus::Processed),
        "owner's outcomes missing"
    );
    check!(
        !ctx.store
            .complete_batch_with_outcomes(&owner, BatchOutcome::completed(3, 0), &processed)
            .await?,
        "completed twice"
    );
    check!(
        ctx.store.try_finalize_job("job-001").await?,
        "finalize refused"
    );
    Ok(())
}

/// Completion needs the same worker and version as the claim, and happens once.
pub async fn complete_batch_requires_same_worker_and_version(ctx: Ctx) -> CaseResult {
    ctx.store
        .save_job_state(&distributed_job("job-001", 1, 3))
        .await?;
    let r = claim(&ctx, "job-001", "worker-1").await?;
    let stranger = BatchReservation {
        worker_id: "worker-2".into(),
        ..r.clone()
    };
    check!(
        !ctx.store
            .complete_batch(&stranger, BatchOutcome::completed(3, 0))
            .await?,
        "stranger"
    );
    let stale = BatchReservation {
        version: r.version - 1,
        ..r.clone()
    };
    check!(
        !ctx.store
            .complete_batch(&stale, BatchOutcome::completed(3, 0))
            .await?,
        "old version"
    );
    let other_job = BatchReservation {
        job_id: "job-002".into(),
        ..r.clone()
    };
    check!(
        !ctx.store
            .complete_batch(&other_job, BatchOutcome::completed(3, 0))
            .await?,
        "other job"
    );
    check!(
        ctx.store
            .complete_batch(&r, BatchOutcome::completed(2, 1))
            .await?,
        "owner refused"
    );
    check!(
        !ctx.store
            .complete_batch(&r, BatchOutcome::failed(0, 3))
            .await?,
        "completed twice"
    );
    let batch = &load_job(&ctx, "job-001").await?.batches[0];
    check_eq!(
        (batch.status, batch.processed_count, batch.failed_count),
        (BatchStatus::Completed, 2, 1)
    );
    Ok(())
}

/// A distributed job's batches and batch counts are read from the batch rows: claims and
/// completions show up in `get_job_state` and `get_progress` without saving the job again.
pub async fn job_batches_and_progress_come_from_batch_rows(ctx: Ctx) -> CaseResult {
    ctx.store
        .save_job_state(&distributed_job("job-001", 4, 3))
        .await?;
    let a = claim(&ctx, "job-001", "worker-1").await?;
    ctx.store
        .complete_batch(&a, BatchOutcome::completed(2, 1))
        .await?;
    ctx.clock.advance(Duration::from_millis(10));
    let b = claim(&ctx, "job-001", "worker-2").await?;
    let job = load_job(&ctx, "job-001").await?;
    let summary: Vec<_> = job
        .batches
        .iter()
        .map(|b| {
            (
                b.index,
                b.status,
                b.worker_id.clone(),
                b.claimed_at,
                b.processed_count,
                b.failed_count,
            )
        })
        .collect();
    check_eq!(
        summary,
        vec![
            (
                0,
                BatchStatus::Completed,
                Some("worker-1".to_owned()),
                Some(START_MS),
                2,
                1
            ),
            (
                1,
                BatchStatus::Processing,
                Some("worker-2".to_owned()),
                Some(START_MS + 10),
                0,
                0
            ),
            (2, BatchStatus::Pending, None, None, 0, 0),
            (3, BatchStatus::Pending, None, None, 0, 0),
        ]
    );
    check_eq!(
        (
            job.batches[3].record_start_index,
            job.batches[3].record_end_index
        ),
        (Some(9), Some(11))
    );
    let progress = ctx.store.get_progress("job-001").await?;
    check_eq!((progress.completed_batches, progress.total_batches), (1, 4));
    check_eq!(progress.total_records, 12);
    check!(ctx.store.heartbeat_batch(&b).await?, "claim lost");
    Ok(())
}

/// `update_batch_state` on a distributed batch writes the batch row, and a status change
/// fences the worker that held it.
pub async fn update_batch_state_fences_the_holder(ctx: Ctx) -> CaseResult {
    ctx.store
        .save_job_state(&distributed_job("job-001", 2, 3))
        .await?;
    let r = claim(&ctx, "job-001", "worker-1").await?;
    ctx.store
        .update_batch_state(
            "job-001",
            &r.batch_id,
            &BatchState {
                status: BatchStatus::Processing,
                processed_count: 1,
                failed_count: 0,
            },
        )
        .await?;
    check!(
        ctx.store.heartbeat_batch(&r).await?,
        "same-status update fenced the holder"
    );
    ctx.store
        .update_batch_state(
            "job-001",
            &r.batch_id,
            &BatchState {
                status: BatchStatus::Completed,
                processed_count: 3,
                failed_count: 0,
            },
        )
        .await?;
    check!(
        !ctx.store
            .complete_batch(&r, BatchOutcome::failed(0, 3))
            .await?,
        "holder not fenced"
    );
    let status = ctx.store.get_distributed_status("job-001").await?;
    check_eq!(
        (status.completed_batches, status.processing_batches),
        (1, 0)
    );
    ctx.store
        .update_batch_state(
            "job-001",
            &r.batch_id,
            &BatchState {
                status: BatchStatus::Pending,
                processed_count: 0,
                failed_count: 0,
            },
        )
        .await?;
    let again = claim(&ctx, "job-001", "worker-2").await?;
    check_eq!(again.batch_id, r.batch_id);
    Ok(())
}

/// When one bulk save holds the same index twice, the later record wins.
pub async fn bulk_save_keeps_last_duplicate(ctx: Ctx) -> CaseResult {
    let first = record(4, RecordStatus::Failed);
    let mut last = record(4, RecordStatus::Processed);
    last.retry_count = 2;
    ctx.store
        .save_processed_records(
            "job-001",
            "b1",
            &[first, record(5, RecordStatus::Processed), last.clone()],
        )
        .await?;
    let read = ctx
        .store
        .get_records("job-001", &RecordFilter::new())
        .await?;
    check_eq!(indexes(&read), vec![4, 5]);
    check_eq!(read[0], last);
    Ok(())
}

/// Many thousands of records save in one call (split under the backend's parameter limit)
/// and read back exactly, in pages.
pub async fn many_records_save_in_chunks(ctx: Ctx) -> CaseResult {
    let records: Vec<ProcessedRecord> = (0..7_000)
        .map(|i| {
            record(
                i,
                if i % 10 == 0 {
                    RecordStatus::Failed
                } else {
                    RecordStatus::Processed
                },
            )
        })
        .collect();
    ctx.store
        .save_processed_records("job-001", "b1", &records)
        .await?;
    ctx.store
        .save_processed_records("job-001", "b1", &records)
        .await?;
    let progress = ctx.store.get_progress("job-001").await?;
    check_eq!(
        (
            progress.total_records,
            progress.processed_records,
            progress.failed_records
        ),
        (7_000, 6_300, 700)
    );
    let page = ctx
        .store
        .get_records("job-001", &RecordFilter::new().after(6_989).limit(100))
        .await?;
    check_eq!(indexes(&page), (6_990..7_000).collect::<Vec<_>>());
    check_eq!(page, records[6_990..].to_vec());
    Ok(())
}

/// A job of thousands of one-record batches saves in one call and counts exactly.
pub async fn thousands_of_batches_save_in_chunks(ctx: Ctx) -> CaseResult {
    let job = distributed_job("job-001", 5_000, 1);
    ctx.store.save_job_state(&job).await?;
    ctx.store.save_job_state(&job).await?;
    let status = ctx.store.get_distributed_status("job-001").await?;
    check_eq!(
        (status.total_batches, status.pending_batches),
        (5_000, 5_000)
    );
    let read = load_job(&ctx, "job-001").await?;
    check_eq!(read.batches.len(), 5_000);
    check_eq!(read.batches[4_999].record_start_index, Some(4_999));
    check_eq!(claim(&ctx, "job-001", "w").await?.batch_index, 0);
    Ok(())
}

/// A batch saved as `PROCESSING` without a claim time is reclaimed once the timeout has
/// passed since it was saved.
pub async fn batch_saved_as_processing_is_reclaimable(ctx: Ctx) -> CaseResult {
    let mut job = distributed_job("job-001", 2, 3);
    job.batches[0].status = BatchStatus::Processing;
    job.batches[0].worker_id = Some("gone".into());
    ctx.store.save_job_state(&job).await?;
    let timeout = Duration::from_secs(30);
    check_eq!(
        ctx.store.reclaim_stale_batches("job-001", timeout).await?,
        0
    );
    ctx.clock.advance(Duration::from_millis(30_001));
    check_eq!(
        ctx.store.reclaim_stale_batches("job-001", timeout).await?,
        1
    );
    check_eq!(claim(&ctx, "job-001", "worker-1").await?.batch_index, 0);
    Ok(())
}

/// A non-distributed job's batch list is kept as saved, even with two entries of one index
/// (what an upstream restore leaves behind), and an update reaches the entry of its id.
pub async fn non_distributed_job_keeps_duplicate_batch_indexes(ctx: Ctx) -> CaseResult {
    let mut job = fixture_job("job-001");
    let mut stale = Batch::new("b2-old", 1);
    stale.status = BatchStatus::Processing;
    job.batches.insert(1, stale);
    ctx.store.save_job_state(&job).await?;
    check_eq!(load_job(&ctx, "job-001").await?, job);
    let state = BatchState {
        status: BatchStatus::Completed,
        processed_count: 10,
        failed_count: 0,
    };
    ctx.store
        .update_batch_state("job-001", "b2", &state)
        .await?;
    let read = load_job(&ctx, "job-001").await?;
    check_eq!(read.batches[1].status, BatchStatus::Processing);
    check_eq!(read.batches[2].status, BatchStatus::Completed);
    let progress = ctx.store.get_progress("job-001").await?;
    check_eq!((progress.completed_batches, progress.total_batches), (2, 3));
    Ok(())
}

/// Concurrent `update_batch_state` calls on different batches of one non-distributed job
/// (an engine running several batches at once) lose no update.
pub async fn concurrent_batch_updates_of_a_job_are_not_lost(ctx: Ctx) -> CaseResult {
    let mut job = JobState::new("job-001", JobConfig::new(10));
    job.status = JobStatus::Processing;
    job.batches = (0..16).map(|i| Batch::new(format!("b{i}"), i)).collect();
    ctx.store.save_job_state(&job).await?;
    let barrier = Arc::new(tokio::sync::Barrier::new(16));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16u64 {
        let (store, barrier) = (Arc::clone(&ctx.store), Arc::clone(&barrier));
        tasks.spawn(async move {
            barrier.wait().await;
            let state = BatchState {
                status: BatchStatus::Completed,
                processed_count: i,
                failed_count: 1,
            };
            store
                .update_batch_state("job-001", &format!("b{i}"), &state)
                .await
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    let read = load_job(&ctx, "job-001").await?;
    for (i, batch) in (0u64..).zip(&read.batches) {
        check_eq!(
            (batch.status, batch.processed_count),
            (BatchStatus::Completed, i)
        );
    }
    Ok(())
}

/// A batch id already used by another job is a conflict, and nothing of the job is saved.
pub async fn batch_id_of_another_job_is_a_conflict(ctx: Ctx) -> CaseResult {
    ctx.store
        .save_job_state(&distributed_job("job-001", 2, 3))
        .await?;
    let mut other = distributed_job("job-002", 2, 3);
    other.batches[1].id = batch_id("job-001", 0);
    match ctx.store.save_job_state(&other).await {
        Err(Error::Conflict { .. }) => {}
        result => {
            return Err(CaseFailure::new(format!(
                "expected a conflict, got {result:?}"
            )));
        }
    }
    check!(
        ctx.store.get_job_state("job-002").await?.is_none(),
        "half-saved job"
    );
    let first = load_job(&ctx, "job-001").await?;
    check_eq!(first.batches.len(), 2);
    check_eq!(first.batches[0].status, BatchStatus::Pending);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------------------

/// What [`race_claim_complete_finalize`] saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaceReport {
    /// Claims granted, over all workers.
    pub claims: u64,
    /// Batches completed (each exactly once when the race is sound).
    pub completed: u64,
    /// Finalize calls that returned `true`.
    pub finalizers: u64,
    /// Records saved as processed.
    pub records: u64,
}

/// Options of [`race_claim_complete_finalize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaceOptions {
    /// Concurrent workers.
    pub workers: usize,
    /// Batches in the job.
    pub batches: u32,
    /// Records per batch, each saved as processed by the worker that claimed its batch.
    pub records_per_batch: u64,
}

impl Default for RaceOptions {
    fn default() -> Self {
        Self {
            workers: 16,
            batches: 1_000,
            records_per_batch: 2,
        }
    }
}

/// Races `workers` tasks over one job of `batches` batches: each claims, saves its batch's
/// records as processed, completes the batch, and on `NoPendingBatches` tries to finalize.
///
/// Fails on a batch claimed twice, a `NoPendingBatches` while pending batches remain, a batch
/// not completed exactly once, a number of finalizers other than one, or record counts that
/// are off.
///
/// # Errors
///
/// The first broken invariant, or a store error.
pub async fn race_claim_complete_finalize(
    store: Arc<dyn DistributedStateStore>,
    job_id: &str,
    options: RaceOptions,
) -> CaseResult<RaceReport> {
    let job = distributed_job(job_id, options.batches, options.records_per_batch);
    store.save_job_state(&job).await?;
    let barrier = Arc::new(tokio::sync::Barrier::new(options.workers));
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..options.workers {
        let (store, barrier, job_id) =
            (Arc::clone(&store), Arc::clone(&barrier), job_id.to_owned());
        tasks.spawn(async move {
            let worker = format!("worker-{w}");
            let mut claimed = Vec::new();
            let mut finalized = false;
            barrier.wait().await;
            loop {
                match store.claim_batch(&job_id, &worker).await? {
                    ClaimBatchResult::Claimed(r) => {
                        let records: Vec<ProcessedRecord> = (r.record_start_index
                            ..=r.record_end_index)
                            .map(|i| record(i, RecordStatus::Processed))
                            .collect();
                        store
                            .save_processed_records(&job_id, &r.batch_id, &records)
                            .await?;
                        let n = u64::try_from(records.len())?;
                        if !store
                            .complete_batch(&r, BatchOutcome::completed(n, 0))
                            .await?
                        {
                            return Err(CaseFailure::new(format!("{worker} lost {}", r.batch_id)));
                        }
                        claimed.push(r.batch_id);
                    }
                    ClaimBatchResult::NoPendingBatches => {
                        let pending = store.get_distributed_status(&job_id).await?.pending_batches;
                        if pending != 0 {
                            return Err(CaseFailure::new(format!(
                                "{worker} was told no pending batches while {pending} were pending"
                            )));
                        }
                        finalized = store.try_finalize_job(&job_id).await?;
                        break;
                    }
                    ClaimBatchResult::JobNotProcessing => break,
                    ClaimBatchResult::JobNotFound => return Err(CaseFailure::new("job vanished")),
                }
            }
            Ok((claimed, finalized))
        });
    }
    let mut report = RaceReport::default();
    let mut owners: HashMap<String, u32> = HashMap::new();
    while let Some(joined) = tasks.join_next().await {
        let (claimed, finalized) = joined??;
        report.claims += u64::try_from(claimed.len())?;
        report.finalizers += u64::from(finalized);
        for id in claimed {
            *owners.entry(id).or_default() += 1;
        }
    }
    let duplicates: Vec<_> = owners.iter().filter(|(_, n)| **n > 1).collect();
    check!(
        duplicates.is_empty(),
        "batches claimed more than once: {duplicates:?}"
    );
    check_eq!(report.claims, u64::from(options.batches));
    let status = store.get_distributed_status(job_id).await?;
    report.completed = status.completed_batches;
    check_eq!(status.completed_batches, u64::from(options.batches));
    check_eq!(report.finalizers, 1);
    let final_job = store.get_job_state(job_id).await?.ok_or("job vanished")?;
    check_eq!(final_job.status, JobStatus::Completed);
    let progress = store.get_progress(job_id).await?;
    report.records = progress.processed_records;
    check_eq!(progress.processed_records, job.total_records);
    check_eq!((progress.pending_records, progress.percentage), (0, 100));
    check_eq!(progress.completed_batches, u64::from(options.batches));
    let counted: u64 = final_job.batches.iter().map(|b| b.processed_count).sum();
    check_eq!(counted, job.total_records);
    Ok(report)
}

/// 8 workers racing over 200 batches never share a batch and finalize once.
pub async fn concurrent_claims_never_duplicate(ctx: Ctx) -> CaseResult {
    let options = RaceOptions {
        workers: 8,
        batches: 200,
        records_per_batch: 1,
    };
    race_claim_complete_finalize(Arc::clone(&ctx.store), "job-race", options).await?;
    Ok(())
}

/// 16 concurrent finalize calls on a finished job: exactly one `true`, in each of 50 trials.
pub async fn concurrent_finalize_has_exactly_one_winner(ctx: Ctx) -> CaseResult {
    for trial in 0..50 {
        let job_id = format!("job-{trial}");
        let mut job = distributed_job(&job_id, 3, 2);
        for batch in &mut job.batches {
            batch.status = BatchStatus::Completed;
        }
        if trial % 2 == 1 {
            job.batches[1].status = BatchStatus::Failed;
        }
        ctx.store.save_job_state(&job).await?;
        let barrier = Arc::new(tokio::sync::Barrier::new(16));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let (store, barrier, job_id) =
                (Arc::clone(&ctx.store), Arc::clone(&barrier), job_id.clone());
            tasks.spawn(async move {
                barrier.wait().await;
                store.try_finalize_job(&job_id).await
            });
        }
        let mut winners = 0;
        while let Some(joined) = tasks.join_next().await {
            winners += u32::from(joined??);
        }
        check_eq!(winners, 1);
        let expected = if trial % 2 == 1 {
            JobStatus::Failed
        } else {
            JobStatus::Completed
        };
        check_eq!(load_job(&ctx, &job_id).await?.status, expected);
    }
    Ok(())
}

/// 8 concurrent reclaimers split the stale batches while 4 workers claim: the reclaim counts
/// add up to the stale count, no batch is claimed twice, fresh claims are untouched; 10
/// trials.
pub async fn concurrent_reclaim_counts_each_stale_batch_once(ctx: Ctx) -> CaseResult {
    for trial in 0..10 {
        let job_id = format!("job-{trial}");
        ctx.store
            .save_job_state(&distributed_job(&job_id, 30, 1))
            .await?;
        for _ in 0..20 {
            claim(&ctx, &job_id, "old").await?;
        }
        ctx.clock.advance(Duration::from_millis(60_000));
        let mut fresh = Vec::new();
        for _ in 0..5 {
            fresh.push(claim(&ctx, &job_id, "new").await?);
        }
        // Four claimers race the reclaimers: they only take pending batches, and their fresh
        // claims are never stale, so the reclaim count stays exact.
        let barrier = Arc::new(tokio::sync::Barrier::new(12));
        let mut reclaimers = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (store, barrier, job_id) =
                (Arc::clone(&ctx.store), Arc::clone(&barrier), job_id.clone());
            reclaimers.spawn(async move {
                barrier.wait().await;
                store
                    .reclaim_stale_batches(&job_id, Duration::from_secs(30))
                    .await
            });
        }
        let mut claimers = tokio::task::JoinSet::new();
        for w in 0..4 {
            let (store, barrier, job_id) =
                (Arc::clone(&ctx.store), Arc::clone(&barrier), job_id.clone());
            claimers.spawn(async move {
                barrier.wait().await;
                let mut claimed = Vec::new();
                for _ in 0..3 {
                    if let ClaimBatchResult::Claimed(r) =
                        store.claim_batch(&job_id, &format!("c{w}")).await?
                    {
                        claimed.push(r.batch_id);
                    }
                }
                Ok::<_, Error>(claimed)
            });
        }
        let mut total = 0;
        while let Some(joined) = reclaimers.join_next().await {
            total += joined??;
        }
        check_eq!(total, 20);
        let mut claimed = HashSet::new();
        while let Some(joined) = claimers.join_next().await {
            for id in joined?? {
                check!(claimed.insert(id.clone()), "{id} claimed twice");
            }
        }
        let claimed_now = u64::try_from(claimed.len())?;
        let status = ctx.store.get_distributed_status(&job_id).await?;
        check_eq!(
            (status.pending_batches, status.processing_batches),
            (25 - claimed_now, 5 + claimed_now)
        );
        for r in &fresh {
            check!(ctx.store.heartbeat_batch(r).await?, "fresh claim reclaimed");
        }
    }
    Ok(())
}

/// A slow worker completing its batch while a reclaimer takes it: exactly one of them wins,
/// and when the reclaim wins the worker's completion and heartbeat are refused; 50 trials.
pub async fn reclaim_racing_completion_has_one_winner(ctx: Ctx) -> CaseResult {
    for trial in 0..50 {
        let job_id = format!("job-{trial}");
        ctx.store
            .save_job_state(&distributed_job(&job_id, 1, 3))
            .await?;
        let r = claim(&ctx, &job_id, "slow").await?;
        ctx.clock.advance(Duration::from_millis(60_000));
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let complete = {
            let (store, barrier, r) = (Arc::clone(&ctx.store), Arc::clone(&barrier), r.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .complete_batch(&r, BatchOutcome::completed(3, 0))
                    .await
            })
        };
        let reclaim = {
            let (store, barrier, job_id) =
                (Arc::clone(&ctx.store), Arc::clone(&barrier), job_id.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .reclaim_stale_batches(&job_id, Duration::from_secs(30))
                    .await
            })
        };
        let completed = complete.await??;
        let reclaimed = reclaim.await??;
        check!(
            completed != (reclaimed == 1),
            "completed={completed}, reclaimed={reclaimed}"
        );
        let status = ctx.store.get_distributed_status(&job_id).await?;
        if completed {
            check_eq!(status.completed_batches, 1);
        } else {
            check_eq!(status.pending_batches, 1);
            check!(
                !ctx.store.heartbeat_batch(&r).await?,
                "zombie heartbeat accepted"
            );
            check!(
                !ctx.store
                    .complete_batch(&r, BatchOutcome::completed(3, 0))
                    .await?,
                "zombie completed"
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Preparing from many places, fenced releases, exact ids, any JSON
// ---------------------------------------------------------------------------------------------

/// A store that runs the first call made through it and then holds its answer until
/// [`open`](Self::open) is called: a preparer that read the store before another one finished,
/// and writes after it.
///
/// It can also lose answers: the first claim and the first finalization made through a store
/// built by [`losing_answers`](Self::losing_answers) take effect, but their caller gets a
/// retryable error instead of the answer (a commit whose reply never came).
struct HeldStore {
    inner: Arc<dyn DistributedStateStore>,
    first: std::sync::atomic::AtomicBool,
    gate: tokio::sync::Semaphore,
    lose_claim: std::sync::atomic::AtomicBool,
    lose_finalize: std::sync::atomic::AtomicBool,
}

impl HeldStore {
    fn new(inner: Arc<dyn DistributedStateStore>) -> Self {
        Self {
            inner,
            first: std::sync::atomic::AtomicBool::new(true),
            gate: tokio::sync::Semaphore::new(0),
            lose_claim: std::sync::atomic::AtomicBool::new(false),
            lose_finalize: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// A store that holds nothing back but loses the answer of the first claim that takes a
    /// batch and of the first finalization that finalizes.
    fn losing_answers(inner: Arc<dyn DistributedStateStore>) -> Self {
        let store = Self::new(inner);
        store
            .first
            .store(false, std::sync::atomic::Ordering::SeqCst);
        store
            .lose_claim
            .store(true, std::sync::atomic::Ordering::SeqCst);
        store
            .lose_finalize
            .store(true, std::sync::atomic::Ordering::SeqCst);
        store
    }

    /// `answer`, or a retryable error in its place when `flag` is still set and `took_effect`.
    fn lose<T>(
        flag: &std::sync::atomic::AtomicBool,
        answer: crate::Result<T>,
        took_effect: impl Fn(&T) -> bool,
    ) -> crate::Result<T> {
        match answer {
            Ok(value)
                if took_effect(&value) && flag.swap(false, std::sync::atomic::Ordering::SeqCst) =>
            {
                Err(crate::Error::from(sea_orm::DbErr::ConnectionAcquire(
                    sea_orm::ConnAcquireErr::ConnectionClosed,
                )))
            }
            other => other,
        }
    }

    fn open(&self) {
        self.gate.add_permits(1_000);
    }

    async fn hold<T>(&self, value: T) -> T {
        if self.first.swap(false, std::sync::atomic::Ordering::SeqCst) {
            let _ = self.gate.acquire().await;
        }
        value
    }
}

#[async_trait::async_trait]
impl crate::batch::store::StateStore for HeldStore {
    async fn save_job_state(&self, job: &JobState) -> crate::Result<()> {
        let r = self.inner.save_job_state(job).await;
        self.hold(r).await
    }
    async fn prune_finished_jobs(&self, finished_before: i64, limit: u64) -> crate::Result<u64> {
        let r = self.inner.prune_finished_jobs(finished_before, limit).await;
        self.hold(r).await
    }
    async fn reset_job_state(&self, job: &JobState) -> crate::Result<()> {
        let r = self.inner.reset_job_state(job).await;
        self.hold(r).await
    }
    async fn get_job_without_batches(&self, job_id: &str) -> crate::Result<Option<JobState>> {
        let r = self.inner.get_job_without_batches(job_id).await;
        self.hold(r).await
    }
    async fn reset_records(
        &self,
        job_id: &str,
        batch_id: &str,
        records: &[ProcessedRecord],
    ) -> crate::Result<()> {
        let r = self.inner.reset_records(job_id, batch_id, records).await;
        self.hold(r).await
    }
    async fn get_job_state(&self, job_id: &str) -> crate::Result<Option<JobState>> {
        let r = self.inner.get_job_state(job_id).await;
        self.hold(r).await
    }
    async fn update_batch_state(
        &self,
        job_id: &str,
        batch_id: &str,
        state: &BatchState,
    ) -> crate::Result<()> {
        let r = self.inner.update_batch_state(job_id, batch_id, state).await;
        self.hold(r).await
    }
    async fn save_processed_records(
        &self,
        job_id: &str,
        batch_id: &str,
        records: &[ProcessedRecord],
    ) -> crate::Result<()> {
        let r = self
            .inner
            .save_processed_records(job_id, batch_id, records)
            .await;
        self.hold(r).await
    }
    async fn get_records(
        &self,
        job_id: &str,
        filter: &RecordFilter,
    ) -> crate::Result<Vec<ProcessedRecord>> {
        let r = self.inner.get_records(job_id, filter).await;
        self.hold(r).await
    }
    async fn get_progress(&self, job_id: &str) -> crate::Result<crate::batch::JobProgress> {
        let r = self.inner.get_progress(job_id).await;
        self.hold(r).await
    }
}

#[async_trait::async_trait]
impl DistributedStateStore for HeldStore {
    async fn create_job(&self, job: &JobState) -> crate::Result<bool> {
        let r = self.inner.create_job(job).await;
        self.hold(r).await
    }
    async fn start_job(&self, job: &JobState) -> crate::Result<bool> {
        let r = self.inner.start_job(job).await;
        self.hold(r).await
    }
    async fn claim_batch_with_id(
        &self,
        job_id: &str,
        worker_id: &str,
        claim_id: &str,
    ) -> crate::Result<ClaimBatchResult> {
        let r = self
            .inner
            .claim_batch_with_id(job_id, worker_id, claim_id)
            .await;
        let r = Self::lose(&self.lose_claim, r, |c| c.reservation().is_some());
        self.hold(r).await
    }
    async fn release_batch(&self, reservation: &BatchReservation) -> crate::Result<bool> {
        let r = self.inner.release_batch(reservation).await;
        self.hold(r).await
    }
    async fn reclaim_stale_batches(&self, job_id: &str, timeout: Duration) -> crate::Result<u64> {
        let r = self.inner.reclaim_stale_batches(job_id, timeout).await;
        self.hold(r).await
    }
    async fn save_batch_records(
        &self,
        job_id: &str,
        batch_id: &str,
        records: &[ProcessedRecord],
    ) -> crate::Result<()> {
        let r = self
            .inner
            .save_batch_records(job_id, batch_id, records)
            .await;
        self.hold(r).await
    }
    async fn get_distributed_status(
        &self,
        job_id: &str,
    ) -> crate::Result<crate::batch::DistributedJobStatus> {
        let r = self.inner.get_distributed_status(job_id).await;
        self.hold(r).await
    }
    async fn try_finalize_job_with_id(
        &self,
        job_id: &str,
        finalizer_id: &str,
    ) -> crate::Result<bool> {
        let r = self
            .inner
            .try_finalize_job_with_id(job_id, finalizer_id)
            .await;
        let r = Self::lose(&self.lose_finalize, r, |finalized| *finalized);
        self.hold(r).await
    }
    async fn requeue_failed_records(
        &self,
        job_id: &str,
    ) -> crate::Result<crate::batch::RequeuedRecords> {
        let r = self.inner.requeue_failed_records(job_id).await;
        self.hold(r).await
    }
    async fn complete_batch(
        &self,
        reservation: &BatchReservation,
        outcome: BatchOutcome,
    ) -> crate::Result<bool> {
        let r = self.inner.complete_batch(reservation, outcome).await;
        self.hold(r).await
    }
    async fn heartbeat_batch(&self, reservation: &BatchReservation) -> crate::Result<bool> {
        let r = self.inner.heartbeat_batch(reservation).await;
        self.hold(r).await
    }
    async fn save_record_outcomes(
        &self,
        job_id: &str,
        batch_id: &str,
        outcomes: &[RecordOutcome],
    ) -> crate::Result<u64> {
        let r = self
            .inner
            .save_record_outcomes(job_id, batch_id, outcomes)
            .await;
        self.hold(r).await
    }
    async fn complete_batch_with_outcomes(
        &self,
        reservation: &BatchReservation,
        outcome: BatchOutcome,
        outcomes: &[RecordOutcome],
    ) -> crate::Result<bool> {
        let r = self
            .inner
            .complete_batch_with_outcomes(reservation, outcome, outcomes)
            .await;
        self.hold(r).await
    }
}

/// Claims, processes (every record `processed`) and completes every batch of `job_id` as
/// `worker`, then finalizes the job; returns how many batches it finished.
async fn work_off(ctx: &Ctx, job_id: &str, worker: &str) -> CaseResult<u64> {
    let mut finished = 0;
    while let ClaimBatchResult::Claimed(r) = ctx.store.claim_batch(job_id, worker).await? {
        let outcomes: Vec<RecordOutcome> = (r.record_start_index..=r.record_end_index)
            .map(|i| RecordOutcome::of(&record(i, RecordStatus::Processed)))
            .collect();
        let n = u64::try_from(outcomes.len())?;
        check!(
            ctx.store
                .complete_batch_with_outcomes(&r, BatchOutcome::completed(n, 0), &outcomes)
                .await?,
            "{worker} lost {}",
            r.batch_id
        );
        finished += 1;
    }
    ctx.store.try_finalize_job(job_id).await?;
    Ok(finished)
}

/// Two prepares of one job at once: the late one read the store before the early one finished
/// and writes after the workers finished the job. Nothing is redone or lost: every record
/// stays `processed`, every batch `COMPLETED`, the job `COMPLETED`, and both prepares report
/// the same totals.
pub async fn late_prepare_loses_no_processed_record(ctx: Ctx) -> CaseResult {
    let held = Arc::new(HeldStore::new(Arc::clone(&ctx.store)));
    let late = {
        let held = Arc::clone(&held);
        tokio::spawn(async move {
            crate::batch::prepare(
                &*held,
                "job-001",
                JobConfig::new(4),
                (0..12u64).map(|i| json!({ "i": i })),
            )
            .await
        })
    };
    // Let the late prepare make its first store call, then prepare and finish the job.
    while held.first.load(std::sync::atomic::Ordering::SeqCst) {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let early = crate::batch::prepare(
        &*ctx.store,
        "job-001",
        JobConfig::new(4),
        (0..12u64).map(|i| json!({ "i": i })),
    )
    .await?;
    check_eq!((early.total_records, early.total_batches), (12, 3));
    check_eq!(work_off(&ctx, "job-001", "worker-1").await?, 3);
    check_eq!(
        load_job(&ctx, "job-001").await?.status,
        JobStatus::Completed
    );
    held.open();
    let late = late.await??;
    check_eq!(late, early);
    let job = load_job(&ctx, "job-001").await?;
    check_eq!(job.status, JobStatus::Completed);
    check!(
        job.batches
            .iter()
            .all(|b| b.status == BatchStatus::Completed),
        "batches reset: {:?}",
        job.batches
    );
    let progress = ctx.store.get_progress("job-001").await?;
    check_eq!(
        (progress.processed_records, progress.pending_records),
        (12, 0)
    );
    check_eq!(
        ctx.store.claim_batch("job-001", "worker-2").await?,
        ClaimBatchResult::JobNotProcessing
    );
    Ok(())
}

/// Saving a batch's records again (as a repeated prepare does) never resets records that
/// already have an outcome.
pub async fn saving_batch_records_again_keeps_outcomes(ctx: Ctx) -> CaseResult {
    ctx.store
        .save_batch_records("job-001", "b1", &pending_records(0..4))
        .await?;
    let outcomes: Vec<RecordOutcome> = (0..4)
        .map(|i| RecordOutcome::of(&record(i, RecordStatus::Processed)))
        .collect();
    check_eq!(
        ctx.store
            .save_record_outcomes("job-001", "b1", &outcomes)
            .await?,
        4
    );
    ctx.store
        .save_batch_records("job-001", "b1", &pending_records(0..6))
        .await?;
    let stored = ctx.store.get_batch_records("job-001", "b1").await?;
    let statuses: Vec<RecordStatus> = stored.iter().map(|r| r.status).collect();
    check_eq!(
        statuses,
        vec![
            RecordStatus::Processed,
            RecordStatus::Processed,
            RecordStatus::Processed,
            RecordStatus::Processed,
            RecordStatus::Pending,
            RecordStatus::Pending,
        ]
    );
    Ok(())
}

/// Saving a finished job as unfinished again is refused with a conflict and changes nothing.
pub async fn saving_a_finished_job_as_unfinished_is_refused(ctx: Ctx) -> CaseResult {
    let mut job = distributed_job("job-001", 2, 2);
    ctx.store.save_job_state(&job).await?;
    job.status = JobStatus::Completed;
    job.completed_at = Some(START_MS + 5);
    ctx.store.save_job_state(&job).await?;
    let mut again = distributed_job("job-001", 2, 2);
    again.total_records = 99;
    match ctx.store.save_job_state(&again).await {
        Err(Error::Conflict { .. }) => {}
        other => {
            return Err(CaseFailure::new(format!(
                "expected a conflict, got {other:?}"
            )));
        }
    }
    let stored = load_job(&ctx, "job-001").await?;
    check_eq!(
        (stored.status, stored.total_records, stored.completed_at),
        (JobStatus::Completed, 4, Some(START_MS + 5))
    );
    Ok(())
}

/// A process whose claim went stale releases "its" batch after another process with the same
/// worker id claimed it again: the release is refused, the live claim keeps the batch, and no
/// third worker can claim it.
pub async fn stale_release_with_the_same_worker_id_is_refused(ctx: Ctx) -> CaseResult {
    ctx.store
        .save_job_state(&distributed_job("job-001", 1, 3))
        .await?;
    let stale = claim(&ctx, "job-001", "worker-1").await?;
    ctx.clock.advance(Duration::from_millis(60_000));
    check_eq!(
        ctx.store
            .reclaim_stale_batches("job-001", Duration::from_secs(30))
            .await?,
        1
    );
    let live = claim(&ctx, "job-001", "worker-1").await?;
    check_eq!(live.batch_id, stale.batch_id);
    check!(
        !ctx.store.release_batch(&stale).await?,
        "a stale claim released the live one"
    );
    check_eq!(
        ctx.store.claim_batch("job-001", "worker-3").await?,
        ClaimBatchResult::NoPendingBatches
    );
    check!(ctx.store.heartbeat_batch(&live).await?, "live claim lost");
    Ok(())
}

/// Ids are compared exactly: ids that differ only in case, a trailing space or an accent name
/// different jobs, batches and records.
pub async fn ids_are_exact(ctx: Ctx) -> CaseResult {
    let pairs = [
        ("CaseJob", "casejob"),
        ("pad", "pad "),
        ("resume", "résumé"),
    ];
    for (n, (a, b)) in pairs.into_iter().enumerate() {
        let per_batch = u64::try_from(n)? + 2;
        let job_a = distributed_job(a, 1, per_batch);
        let job_b = distributed_job(b, 2, per_batch);
        for job in [&job_a, &job_b] {
            for batch in &job.batches {
                let start = batch.record_start_index.unwrap_or(0);
                let end = batch.record_end_index.unwrap_or(0);
                ctx.store
                    .save_batch_records(&job.id, &batch.id, &pending_records(start..end + 1))
                    .await?;
            }
            ctx.store.save_job_state(job).await?;
        }
        for job in [&job_a, &job_b] {
            let stored = load_job(&ctx, &job.id).await?;
            check_eq!(stored.id, job.id);
            check_eq!(stored.total_records, job.total_records);
            check_eq!(stored.batches.len(), job.batches.len());
            let records = ctx.store.get_records(&job.id, &RecordFilter::new()).await?;
            check_eq!(u64::try_from(records.len())?, job.total_records);
            let status = ctx.store.get_distributed_status(&job.id).await?;
            check_eq!(status.total_batches, u64::try_from(job.batches.len())?);
        }
        let r = claim(&ctx, b, "worker-1").await?;
        check_eq!(r.job_id, b);
        check_eq!(r.batch_id, batch_id(b, 0));
        check_eq!(
            ctx.store.get_batch_records(b, &r.batch_id).await?.len(),
            usize::try_from(per_batch)?
        );
        check_eq!(
            ctx.store.get_distributed_status(a).await?.pending_batches,
            1
        );
    }
    check!(
        ctx.store.get_job_state("CASEJOB").await?.is_none(),
        "CASEJOB found"
    );
    Ok(())
}

/// Any valid JSON round-trips, including strings holding U+0000, in records (payloads,
/// errors, outcomes) and in job configurations.
pub async fn json_with_nul_round_trips(ctx: Ctx) -> CaseResult {
    let nul = "a\u{0}b";
    let mut saved = ProcessedRecord::pending(0, json!({ "s": nul, nul: [nul] }));
    saved.parsed = json!(nul);
    saved.errors = vec![ValidationError::new(nul, nul, "NUL")];
    ctx.store
        .save_batch_records("job-001", "b1", std::slice::from_ref(&saved))
        .await?;
    ctx.store
        .save_processed_records("job-001", "b1", std::slice::from_ref(&saved))
        .await?;
    check_eq!(
        ctx.store.get_batch_records("job-001", "b1").await?,
        vec![saved.clone()]
    );
    let mut outcome = RecordOutcome::of(&saved);
    outcome.status = RecordStatus::Invalid;
    outcome.errors = vec![ValidationError::new("f", format!("bad {nul}"), "NUL")];
    ctx.store
        .save_record_outcomes("job-001", "b1", std::slice::from_ref(&outcome))
        .await?;
    let read = ctx.store.get_batch_records("job-001", "b1").await?;
    check_eq!(read[0].errors, outcome.errors);
    let mut job = fixture_job("job-002");
    job.config.extra.insert(nul.into(), json!({ "v": nul }));
    job.config.schema = Some(json!([nul]));
    ctx.store.save_job_state(&job).await?;
    check_eq!(load_job(&ctx, "job-002").await?, job);
    ctx.store
        .update_batch_state(
            "job-002",
            "b2",
            &BatchState {
                status: BatchStatus::Completed,
                processed_count: 10,
                failed_count: 0,
            },
        )
        .await?;
    check_eq!(load_job(&ctx, "job-002").await?.config, job.config);
    let mut distributed = distributed_job("job-003", 1, 1);
    distributed.config.extra.insert("k".into(), json!(nul));
    ctx.store.save_job_state(&distributed).await?;
    check_eq!(load_job(&ctx, "job-003").await?.config, distributed.config);
    Ok(())
}

/// `prepare` stamps the job with the store's clock, not the system's.
pub async fn prepare_reads_the_store_clock(ctx: Ctx) -> CaseResult {
    crate::batch::prepare(&*ctx.store, "job-001", JobConfig::new(2), [1, 2, 3]).await?;
    check_eq!(load_job(&ctx, "job-001").await?.started_at, Some(START_MS));
    crate::batch::prepare(&*ctx.store, "job-002", JobConfig::new(2), Vec::<u8>::new()).await?;
    let empty = load_job(&ctx, "job-002").await?;
    check_eq!(
        (empty.status, empty.started_at, empty.completed_at),
        (JobStatus::Completed, Some(START_MS), Some(START_MS))
    );
    Ok(())
}

/// The longest job id `prepare` accepts works with any number of batches; a longer one is
/// rejected before anything is written.
pub async fn prepare_checks_the_job_id_length_up_front(ctx: Ctx) -> CaseResult {
    let longest = "j".repeat(crate::batch::MAX_PREPARED_JOB_ID_LEN);
    let prepared =
        crate::batch::prepare(&*ctx.store, &longest, JobConfig::new(1), 0..12u32).await?;
    check_eq!(prepared.total_batches, 12);
    check_eq!(
        ctx.store
            .get_distributed_status(&longest)
            .await?
            .pending_batches,
        12
    );
    // One character too many, and so many that the ids of later batches would not fit.
    let too_long = "k".repeat(crate::batch::MAX_PREPARED_JOB_ID_LEN + 1);
    is_invalid(crate::batch::prepare(&*ctx.store, &too_long, JobConfig::new(1), 0..12u32).await)?;
    let too_long = "k".repeat(crate::batch::MAX_PREPARED_JOB_ID_LEN + 9);
    is_invalid(crate::batch::prepare(&*ctx.store, &too_long, JobConfig::new(1), 0..12u32).await)?;
    check!(
        ctx.store
            .get_records(&too_long, &RecordFilter::new())
            .await?
            .is_empty(),
        "records of a rejected job were saved"
    );
    check!(
        ctx.store.get_job_state(&too_long).await?.is_none(),
        "a rejected job was saved"
    );
    Ok(())
}

/// A claim retried with the same claim id after its answer was lost (the first call took a
/// batch) gets that same claim back, at the same version, instead of taking a second batch
/// and leaving the first idle until it goes stale; another claim id gets the next batch.
pub async fn claim_retried_with_its_id_gets_the_same_batch(ctx: Ctx) -> CaseResult {
    ctx.store
        .save_job_state(&distributed_job("job-001", 3, 2))
        .await?;
    let first = ctx
        .store
        .claim_batch_with_id("job-001", "worker-1", "claim-a")
        .await?;
    let again = ctx
        .store
        .claim_batch_with_id("job-001", "worker-1", "claim-a")
        .await?;
    check_eq!(again, first);
    let first = first
        .reservation()
        .cloned()
        .ok_or("first claim took nothing")?;
    let other = claim(&ctx, "job-001", "worker-1").await?;
    check_eq!(other.batch_index, 1);
    check!(
        ctx.store
            .complete_batch(&first, BatchOutcome::completed(2, 0))
            .await?,
        "the recovered claim does not hold"
    );
    // Finished: the id no longer names a claim, so a retry claims a new batch.
    let next = ctx
        .store
        .claim_batch_with_id("job-001", "worker-1", "claim-a")
        .await?;
    check_eq!(next.reservation().map(|r| r.batch_index), Some(2));
    Ok(())
}

/// A finalize retried with the same finalizer id after its answer was lost (the first call
/// finalized the job) is told `true` again; any other finalizer gets `false`.
pub async fn finalize_retried_with_its_id_is_told_it_won(ctx: Ctx) -> CaseResult {
    let mut job = distributed_job("job-001", 2, 2);
    for batch in &mut job.batches {
        batch.status = BatchStatus::Completed;
    }
    ctx.store.save_job_state(&job).await?;
    check!(
        ctx.store
            .try_finalize_job_with_id("job-001", "fin-a")
            .await?,
        "finalize refused"
    );
    check!(
        ctx.store
            .try_finalize_job_with_id("job-001", "fin-a")
            .await?,
        "the retried finalizer was told it lost"
    );
    check!(
        !ctx.store
            .try_finalize_job_with_id("job-001", "fin-b")
            .await?,
        "a second finalizer won"
    );
    check!(
        !ctx.store.try_finalize_job("job-001").await?,
        "a second finalizer won"
    );
    check_eq!(
        load_job(&ctx, "job-001").await?.status,
        JobStatus::Completed
    );
    Ok(())
}

/// A worker whose first claim and whose finalization took effect but whose answers were lost
/// (it got retryable errors) processes the claimed batch at once instead of leaving it idle
/// until it goes stale, and learns that it finalized the job.
pub async fn worker_recovers_a_claim_and_a_finalization_whose_answers_were_lost(
    ctx: Ctx,
) -> CaseResult {
    crate::batch::prepare(&*ctx.store, "job-001", JobConfig::new(2), 0..6u32).await?;
    let store: Arc<dyn DistributedStateStore> =
        Arc::new(HeldStore::losing_answers(Arc::clone(&ctx.store)));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let options = crate::batch::WorkerOptions {
        // A batch left idle would wait for this: far longer than the case may take.
        stale_timeout: Duration::from_secs(3600),
        poll_interval: Duration::from_millis(5),
        progress: Some(tx),
        ..crate::batch::WorkerOptions::default()
    };
    let report = tokio::time::timeout(
        Duration::from_secs(30),
        crate::batch::run_worker(
            store,
            "job-001",
            "worker-1",
            |_: crate::batch::RecordContext, _: serde_json::Value| async { Ok(()) },
            options,
        ),
    )
    .await
    .map_err(|_| CaseFailure::new("the worker waited for its own lost claim to go stale"))??;
    check_eq!(report.batches, 3);
    check_eq!(report.job_status, Some(JobStatus::Completed));
    check!(
        report.finalized,
        "the finalizer was told it lost: {report:?}"
    );
    let mut finalized_events = 0;
    while let Ok(event) = rx.try_recv() {
        if matches!(event, crate::batch::WorkerEvent::JobFinalized { .. }) {
            finalized_events += 1;
        }
    }
    check_eq!(finalized_events, 1);
    let status = ctx.store.get_distributed_status("job-001").await?;
    check_eq!(
        (status.completed_batches, status.processing_batches),
        (3, 0)
    );
    Ok(())
}

/// Saving records never moves a finished record (`processed`, `failed`, `invalid`) back to
/// `pending` or `valid` (that write leaves it as it is), while other writes in the same call,
/// and finished-to-finished changes, go through; `reset_records` replaces on purpose.
pub async fn saving_records_never_moves_a_finished_record_back(ctx: Ctx) -> CaseResult {
    let s = &ctx.store;
    let done = [
        record(0, RecordStatus::Processed),
        record(1, RecordStatus::Failed),
        record(2, RecordStatus::Invalid),
        record(3, RecordStatus::Pending),
    ];
    s.save_processed_records("job-001", "b1", &done).await?;
    let mut back: Vec<ProcessedRecord> = (0..4)
        .map(|i| {
            let mut r = ProcessedRecord::pending(i, json!({ "changed": i }));
            if i == 2 {
                r.status = RecordStatus::Valid;
            }
            r
        })
        .collect();
    back.push(record(4, RecordStatus::Pending));
    s.save_processed_records("job-001", "b2", &back).await?;
    let stored = s.get_records("job-001", &RecordFilter::new()).await?;
    check_eq!(stored[..3].to_vec(), done[..3].to_vec());
    check_eq!(stored[3], back[3]);
    check_eq!(stored[4], back[4]);
    check_eq!(s.get_batch_records("job-001", "b1").await?.len(), 3);
    // Finished to finished (a retried record that now succeeds) is a change forward.
    let mut retried = record(1, RecordStatus::Processed);
    retried.retry_count = 3;
    s.save_processed_record("job-001", "b1", &retried).await?;
    let stored = s.get_records("job-001", &RecordFilter::new()).await?;
    check_eq!(stored[1], retried);
    // On purpose: every record replaced, finished or not.
    s.reset_records("job-001", "b3", &back).await?;
    check_eq!(s.get_records("job-001", &RecordFilter::new()).await?, back);
    check_eq!(s.get_batch_records("job-001", "b3").await?.len(), 5);
    Ok(())
}

/// `reset_job_state` moves a finished job back on purpose; its batch rows stay as they are.
pub async fn reset_job_state_moves_a_finished_job_back(ctx: Ctx) -> CaseResult {
    let job = distributed_job("job-001", 2, 2);
    ctx.store.save_job_state(&job).await?;
    let r = claim(&ctx, "job-001", "worker-1").await?;
    check!(
        ctx.store
            .complete_batch(&r, BatchOutcome::completed(2, 0))
            .await?,
        "completion refused"
    );
    let mut finished = job.clone();
    finished.status = JobStatus::Failed;
    ctx.store.save_job_state(&finished).await?;
    ctx.store.reset_job_state(&job).await?;
    let stored = load_job(&ctx, "job-001").await?;
    check_eq!(stored.status, JobStatus::Processing);
    check_eq!(stored.batches[0].status, BatchStatus::Completed);
    check_eq!(claim(&ctx, "job-001", "worker-2").await?.batch_index, 1);
    Ok(())
}

/// Pruning deletes finished jobs completed before the cutoff with their batches and records,
/// oldest first, at most `limit` rows a call (records, then batches, then the job); unfinished
/// jobs and jobs finished after the cutoff stay whole.
pub async fn prune_deletes_finished_jobs_in_bounded_steps(ctx: Ctx) -> CaseResult {
    let store = &ctx.store;
    for (id, finish) in [("old", true), ("newer", true), ("running", false)] {
        store.save_job_state(&distributed_job(id, 2, 3)).await?;
        store
            .save_batch_records(id, &batch_id(id, 0), &pending_records(0..3))
            .await?;
        store
            .save_batch_records(id, &batch_id(id, 1), &pending_records(3..6))
            .await?;
        if finish {
            finish_all(&ctx, id, None).await?;
            check!(store.try_finalize_job(id).await?, "{id} not finalized");
        }
        ctx.clock.advance(Duration::from_millis(1_000));
    }
    // "old" finished at START_MS, "newer" a second later.
    let cutoff = START_MS + 500;
    check!(
        store.prune_finished_jobs(cutoff, 0).await? == 0,
        "limit 0 deleted"
    );
    // 6 records, 2 batches, 1 job, 4 rows a call.
    let mut calls = Vec::new();
    loop {
        let n = store.prune_finished_jobs(cutoff, 4).await?;
        if n == 0 {
            break;
        }
        check!(n <= 4, "deleted {n} rows in one call");
        calls.push(n);
        check!(calls.len() < 10, "pruning does not end: {calls:?}");
    }
    check!(calls.iter().sum::<u64>() == 9, "deleted {calls:?}");
    check!(store.get_job_state("old").await?.is_none(), "old job kept");
    check!(
        store
            .get_records("old", &RecordFilter::new())
            .await?
            .is_empty(),
        "old records kept"
    );
    for kept in ["newer", "running"] {
        let job = load_job(&ctx, kept).await?;
        check!(job.batches.len() == 2, "{kept} lost batches");
        check!(
            store.get_records(kept, &RecordFilter::new()).await?.len() == 6,
            "{kept} lost records"
        );
    }
    // A later cutoff takes the newer job too, never the running one.
    while store.prune_finished_jobs(START_MS + 10_000, 100).await? > 0 {}
    check!(
        store.get_job_state("newer").await?.is_none(),
        "newer job kept"
    );
    check!(
        store.get_job_state("running").await?.is_some(),
        "the running job was pruned"
    );
    Ok(())
}

/// Saves a distributed job of `batches` × 3 records with its pending records.
pub(super) async fn prepared_job(ctx: &Ctx, id: &str, batches: u32) -> CaseResult {
    let job = distributed_job(id, batches, 3);
    for batch in &job.batches {
        let start = batch.record_start_index.unwrap_or(0);
        ctx.store
            .save_batch_records(id, &batch.id, &pending_records(start..start + 3))
            .await?;
    }
    ctx.store.save_job_state(&job).await?;
    Ok(())
}

/// Claims the next batch of `job_id` for `worker` and completes it with every record
/// processed except those in `fail` (failed, with a processing error) and `invalid`.
async fn run_batch(
    ctx: &Ctx,
    job_id: &str,
    worker: &str,
    fail: &[u64],
    invalid: &[u64],
) -> CaseResult<BatchReservation> {
    let r = claim(ctx, job_id, worker).await?;
    let outcomes: Vec<RecordOutcome> = ctx
        .store
        .get_batch_records(job_id, &r.batch_id)
        .await?
        .iter()
        .map(|record| {
            let mut record = record.clone();
            if fail.contains(&record.index) {
                record.status = RecordStatus::Failed;
                record.processing_error = Some(format!("record {} failed", record.index));
                record.retry_count = 2;
            } else if invalid.contains(&record.index) {
                record.status = RecordStatus::Invalid;
            } else {
                record.status = RecordStatus::Processed;
            }
            RecordOutcome::of(&record)
        })
        .collect();
    let failed = u64::try_from(
        outcomes
            .iter()
            .filter(|o| o.status != RecordStatus::Processed)
            .count(),
    )?;
    let processed = u64::try_from(outcomes.len())? - failed;
    check!(
        ctx.store
            .complete_batch_with_outcomes(&r, BatchOutcome::completed(processed, failed), &outcomes)
            .await?,
        "completion refused"
    );
    Ok(r)
}

/// Requeueing the failed records of a finished job puts them back to `pending` (error
/// cleared, retry count kept) with their batch, and the job back to `PROCESSING` without its
/// completion or finalizer; `invalid` records stay. Once the batch is processed again, the job
/// is finalized again, exactly once, and a finalizer of the first round is not told it won.
pub async fn requeue_reopens_a_finished_job_that_finalizes_again_once(ctx: Ctx) -> CaseResult {
    prepared_job(&ctx, "job-rq", 3).await?;
    run_batch(&ctx, "job-rq", "w1", &[], &[]).await?;
    run_batch(&ctx, "job-rq", "w1", &[4], &[]).await?;
    run_batch(&ctx, "job-rq", "w1", &[], &[7]).await?;
    check!(
        ctx.store
            .try_finalize_job_with_id("job-rq", "finalize-first-round")
            .await?,
        "first finalization refused"
    );
    check_eq!(load_job(&ctx, "job-rq").await?.status, JobStatus::Completed);
    ctx.clock.advance(Duration::from_millis(1_000));

    let done = ctx.store.requeue_failed_records("job-rq").await?;
    check_eq!(
        done,
        crate::batch::RequeuedRecords {
            records: 1,
            batches: 1,
            left_failed: 0,
            job_status: JobStatus::Processing,
        }
    );
    let job = load_job(&ctx, "job-rq").await?;
    check_eq!(job.status, JobStatus::Processing);
    check_eq!(job.completed_at, None);
    let statuses: Vec<BatchStatus> = job.batches.iter().map(|b| b.status).collect();
    check_eq!(
        statuses,
        vec![
            BatchStatus::Completed,
            BatchStatus::Pending,
            BatchStatus::Completed
        ]
    );
    check_eq!(job.batches[1].worker_id, None);
    check_eq!(job.batches[1].failed_count, 0);
    let failed = ctx.store.get_failed_records("job-rq").await?;
    check_eq!(indexes(&failed), vec![7]);
    check_eq!(failed[0].status, RecordStatus::Invalid);
    let requeued = ctx
        .store
        .get_batch_records("job-rq", &batch_id("job-rq", 1))
        .await?;
    check_eq!(requeued[1].status, RecordStatus::Pending);
    check_eq!(requeued[1].processing_error, None);
    check_eq!(requeued[1].retry_count, 2);
    check_eq!(requeued[0].status, RecordStatus::Processed);
    let progress = ctx.store.get_progress("job-rq").await?;
    check_eq!(
        (progress.processed_records, progress.failed_records),
        (7, 1)
    );
    check!(
        !ctx.store
            .try_finalize_job_with_id("job-rq", "finalize-first-round")
            .await?,
        "the first round's finalizer was told it won while the job runs again"
    );

    // Processed again: only that batch is claimed, then the job finalizes once.
    let again = run_batch(&ctx, "job-rq", "w2", &[], &[]).await?;
    check_eq!(again.batch_index, 1);
    check_eq!(
        ctx.store.claim_batch("job-rq", "w3").await?,
        ClaimBatchResult::NoPendingBatches
    );
    let mut winners = 0;
    for finalizer in ["finalize-a", "finalize-b", "finalize-first-round"] {
        if ctx
            .store
            .try_finalize_job_with_id("job-rq", finalizer)
            .await?
        {
            winners += 1;
        }
    }
    check_eq!(winners, 1);
    let job = load_job(&ctx, "job-rq").await?;
    check_eq!(job.status, JobStatus::Completed);
    check_eq!(job.completed_at, Some(START_MS + 1_000));
    check_eq!(ctx.store.get_processed_records("job-rq").await?.len(), 8);

    // Nothing failed any more: nothing changes.
    check_eq!(
        ctx.store.requeue_failed_records("job-rq").await?,
        crate::batch::RequeuedRecords {
            records: 0,
            batches: 0,
            left_failed: 0,
            job_status: JobStatus::Completed,
        }
    );
    check_eq!(load_job(&ctx, "job-rq").await?.status, JobStatus::Completed);
    Ok(())
}

/// On a running job, failed records of a batch a worker holds are left to it (its claim still
/// holds), those of finished batches are requeued; a job being finalized, an aborted or
/// non-distributed job is refused with [`Error::InvalidState`] and left as it is, and an
/// unknown job is [`Error::NotFound`].
pub async fn requeue_leaves_held_batches_and_refuses_what_it_cannot_reopen(ctx: Ctx) -> CaseResult {
    prepared_job(&ctx, "job-run", 3).await?;
    run_batch(&ctx, "job-run", "w1", &[1], &[]).await?;
    // A worker holds batch 1, whose record 3 an earlier owner recorded as failed.
    let held = claim(&ctx, "job-run", "w2").await?;
    let outcome = |index: u64| RecordOutcome {
        index,
        status: RecordStatus::Failed,
        errors: Vec::new(),
        processing_error: Some("earlier owner".to_owned()),
        retry_count: 0,
    };
    ctx.store
        .save_record_outcomes("job-run", &held.batch_id, &[outcome(3)])
        .await?;
    let done = ctx.store.requeue_failed_records("job-run").await?;
    check_eq!(
        done,
        crate::batch::RequeuedRecords {
            records: 1,
            batches: 1,
            left_failed: 1,
            job_status: JobStatus::Processing,
        }
    );
    check!(
        ctx.store.heartbeat_batch(&held).await?,
        "the holder lost its claim"
    );
    check!(
        ctx.store
            .complete_batch(&held, BatchOutcome::completed(2, 1))
            .await?,
        "the holder could not complete its batch"
    );

    // Every batch finished, the job not finalized yet: a worker is about to finalize it.
    run_batch(&ctx, "job-run", "w1", &[], &[]).await?;
    run_batch(&ctx, "job-run", "w1", &[6], &[]).await?;
    let refused = |result: crate::Result<crate::batch::RequeuedRecords>, what: &str| match result {
        Err(Error::InvalidState { .. }) => Ok(()),
        other => Err(CaseFailure::new(format!(
            "{what}: expected an invalid-state error, got {other:?}"
        ))),
    };
    check_eq!(
        ctx.store.claim_batch("job-run", "w9").await?,
        ClaimBatchResult::NoPendingBatches
    );
    refused(
        ctx.store.requeue_failed_records("job-run").await,
        "finalizing job",
    )?;
    check_eq!(ctx.store.get_failed_records("job-run").await?.len(), 2);
    check!(
        ctx.store.try_finalize_job("job-run").await?,
        "finalize refused"
    );

    let mut aborted = distributed_job("job-aborted", 1, 3);
    aborted.status = JobStatus::Aborted;
    ctx.store.save_job_state(&aborted).await?;
    refused(
        ctx.store.requeue_failed_records("job-aborted").await,
        "aborted job",
    )?;
    ctx.store.save_job_state(&fixture_job("job-local")).await?;
    ctx.store
        .save_processed_record("job-local", "b1", &record(0, RecordStatus::Failed))
        .await?;
    refused(
        ctx.store.requeue_failed_records("job-local").await,
        "non-distributed job",
    )?;
    check_eq!(ctx.store.get_failed_records("job-local").await?.len(), 1);
    check!(
        matches!(
            ctx.store.requeue_failed_records("nope").await,
            Err(Error::NotFound { .. })
        ),
        "unknown job"
    );
    Ok(())
}

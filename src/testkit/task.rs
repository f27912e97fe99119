//! The conformance suite of [`TaskExecutionStorage`].
//!
//! Every case is a public async fn taking a fresh, empty storage. Run them all with
//! [`task_storage_conformance!`](crate::task_storage_conformance), which declares one
//! `#[tokio::test]` per case (the calling crate needs `tokio` with the `macros` and
//! `rt-multi-thread` features):
//!
//! ```no_run
//! use std::sync::Arc;
//! use sea_orm_durable::testkit::{Setup, UnderTest};
//! use sea_orm_durable::testkit::task::Storage;
//!
//! mod in_memory {
//!     sea_orm_durable::task_storage_conformance!(storage: std::sync::Arc::new(
//!         sea_orm_durable::task::InMemoryTaskExecutionStorage::new()
//!     ));
//! }
//!
//! // A factory makes a fresh storage for each case, or says why the case cannot run here.
//! async fn my_storage() -> Result<Setup<UnderTest<Storage>>, std::io::Error> {
//!     if std::env::var("MY_STORE_URL").is_err() {
//!         return Ok(Setup::Skip("MY_STORE_URL is not set".to_owned()));
//!     }
//!     // A real store would keep its temporary database alive with `UnderTest::with_guard`.
//!     let storage = Arc::new(sea_orm_durable::task::InMemoryTaskExecutionStorage::new());
//!     Ok(Setup::Ready(UnderTest::new(storage)))
//! }
//!
//! mod my_store {
//!     sea_orm_durable::task_storage_conformance!(factory: crate::my_storage);
//! }
//! # fn main() {}
//! ```

use std::sync::Arc;
use std::time::Duration;

use super::lost_reply::LoseReplies;
use super::{CaseFailure, CaseResult};
use crate::task::storage::ScheduleFire;
use crate::task::storage::{
    ClaimParams, FinishedChildTaskExecution, NewTaskExecution, TaskExecutionGuard,
    TaskExecutionStorage, TaskExecutionUpdate, Wake, WakeOutcome,
};
use crate::task::{
    ExecutionError, ExecutionErrorKind, ParentRef, RetryOptions, TaskExecution,
    TaskExecutionFilter, TaskExecutionRef, TaskExecutionStatus, WakeResult,
};
use crate::task::{MissedTicks, ScheduleSpec, TaskSchedule};
use crate::{Error, Result};

pub use super::values::{
    names_at_their_limits_round_trip_one_more_is_refused,
    numbers_at_the_ends_of_their_types_never_panic, text_with_nul_round_trips_or_is_refused,
};

/// A storage under test.
pub type Storage = Arc<dyn TaskExecutionStorage>;

/// Declares one `#[tokio::test]` per case of the [`TaskExecutionStorage`] conformance suite.
///
/// - `task_storage_conformance!(storage: <expr>)`: `<expr>` evaluates to a fresh
///   `Arc<dyn TaskExecutionStorage>` (or a type that coerces to it) for each case.
/// - `task_storage_conformance!(factory: <expr>)`: `<expr>` is an
///   `FnOnce() -> impl Future<Output = Result<Setup<UnderTest<Storage>>, E>>` (an async fn's
///   path, or a closure) where `E` converts into `Box<dyn Error + Send + Sync>`. It makes a
///   fresh storage for each case ([`Setup::Ready`](crate::testkit::Setup::Ready)), kept with
///   whatever must outlive the case in an [`UnderTest`](crate::testkit::UnderTest), or skips
///   the case with [`Setup::Skip`](crate::testkit::Setup::Skip) and the reason, which the case
///   prints before it passes (see [`run_case`](crate::testkit::run_case)).
///
/// Attributes written before either form are put on every generated test, for example
/// `#[ignore = "no server configured"]` or a `cfg_attr` of it.
#[macro_export]
macro_rules! task_storage_conformance {
    ($(#[$attr:meta])* storage: $make:expr) => {
        $crate::task_storage_conformance!(@all [$(#[$attr])*] (storage: $make));
    };
    ($(#[$attr:meta])* factory: $factory:expr) => {
        $crate::task_storage_conformance!(@all [$(#[$attr])*] (factory: $factory));
    };
    // The one list of cases, for both forms.
    (@all $attrs:tt $how:tt) => {
        $crate::task_storage_conformance!(@cases $attrs $how;
            enqueue_then_get_round_trips_every_field,
            text_with_nul_round_trips_or_is_refused,
            names_at_their_limits_round_trip_one_more_is_refused,
            numbers_at_the_ends_of_their_types_never_panic,
            enqueue_of_nothing_is_a_no_op,
            duplicate_enqueue_is_conflict_and_inserts_nothing,
            invalid_executions_are_rejected_before_writing,
            get_task_executions_filters_orders_and_limits,
            claim_takes_due_ready_executions_earliest_first,
            claim_respects_the_limit,
            guarded_update_checks_status_and_fencing_token,
            batched_updates_count_each_guard_and_write_each_value,
            batched_finishes_reach_their_parents_once,
            update_maintains_status_derived_fields,
            finished_at_never_precedes_started_at,
            update_and_enqueue_inserts_children_only_when_the_guard_matched,
            update_and_enqueue_conflict_rolls_back_the_update,
            finished_child_records_are_idempotent_and_counted,
            expiry_counts_the_attempt_and_fails_when_retries_are_exhausted,
            claim_parents_when_children_finished_or_one_failed,
            close_records_children_and_completes_parent_through_finalize,
            close_of_failed_finalize_fails_the_parent,
            close_of_unsuccessful_parent_cancels_its_active_children,
            cancellation_requests_stay_until_acknowledged,
            megabyte_non_ascii_payloads_round_trip,
            numbers_beyond_the_limits_are_rejected_before_writing,
            claims_take_only_the_tasks_and_queues_they_admit,
            claims_of_some_tasks_keep_their_order_past_a_backlog_of_others,
            resumed_claim_takes_back_what_the_lost_claim_took,
            many_megabytes_of_children_enqueue_in_one_call,
            ids_compare_exactly,
            json_and_text_with_nul_round_trip,
            prune_deletes_only_closed_executions_finished_before_the_cutoff,
            delayed_executions_are_listed_and_claimed_only_when_due,
            sleeping_executions_wake_once_by_key,
            sleeping_executions_time_out_once_and_free_their_key,
            cancelled_sleeper_frees_its_key,
            woken_sleeping_child_is_recorded_for_its_parent,
            wake_racing_timeout_has_exactly_one_winner,
            schedules_are_saved_once_and_keep_their_progress,
            due_schedules_fire_once_per_tick,
            concurrent_fires_of_one_tick_enqueue_once,
            schedule_fired_without_a_next_tick_ends,
            invalid_schedules_are_rejected_before_writing,
            get_task_executions_filters_by_task_queue_and_age,
            counts_group_by_queue_and_status,
            ready_executions_are_grouped_by_task_and_queue_with_the_oldest,
            retry_runs_a_failed_root_again_and_keeps_its_error,
            retry_refuses_what_it_cannot_run_again,
            concurrent_retries_have_one_winner,
            lost_reply_of_enqueue_is_not_a_conflict,
            lost_reply_of_retry_answers_the_retried_execution,
            lost_reply_of_claim_is_taken_back,
            lost_reply_of_guarded_update_changes_nothing_more,
            lost_reply_of_batched_updates_changes_nothing_more,
            lost_reply_of_update_and_enqueue_spawns_once,
            lost_reply_of_finished_children_counts_once,
            lost_reply_of_expiry_counts_the_attempt_once,
            lost_reply_of_wake_answers_woken,
            lost_reply_of_schedule_save_answers_the_schedule,
            lost_reply_of_schedule_delete_leaves_it_deleted,
            lost_reply_of_fire_enqueues_the_tick_once,
            paused_queues_are_not_claimed_until_resumed,
            lost_reply_of_pause_and_resume_leaves_one_pause,
            heartbeats_move_the_lease_and_keep_the_progress,
            listings_page_by_cursor_without_skipping_or_repeating,
        );
    };
    (@cases $attrs:tt $how:tt; $($case:ident),* $(,)?) => {
        $( $crate::task_storage_conformance!(@case $attrs $how; $case); )*
    };
    (@case [$(#[$attr:meta])*] (storage: $make:expr); $case:ident) => {
        #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $(#[$attr])*
        async fn $case() -> $crate::testkit::CaseResult {
            let storage: $crate::testkit::task::Storage = $make;
            $crate::testkit::task::$case(storage).await
        }
    };
    (@case [$(#[$attr:meta])*] (factory: $factory:expr); $case:ident) => {
        #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $(#[$attr])*
        async fn $case() -> $crate::testkit::CaseResult {
            let factory = $factory;
            $crate::testkit::run_case(
                concat!(module_path!(), "::", stringify!($case)),
                factory(),
                $crate::testkit::task::$case,
            )
            .await
            .map(drop)
        }
    };
}

/// The time the cases start at (epoch ms).
const T0: i64 = 1_700_000_000_000;
/// Lease margin used by the cases' claims.
const MARGIN: Duration = Duration::from_millis(1_000);
/// [`MARGIN`] in milliseconds, for arithmetic on timestamps.
const MARGIN_MS: i64 = 1_000;
/// Timeout of the cases' executions.
const TIMEOUT: Duration = Duration::from_millis(5_000);
/// [`TIMEOUT`] in milliseconds.
const TIMEOUT_MS: i64 = 5_000;

fn new_execution(id: &str) -> NewTaskExecution {
    NewTaskExecution {
        execution_id: id.to_owned(),
        task_id: "task".to_owned(),
        timeout: TIMEOUT,
        input: format!("input of {id}"),
        ..Default::default()
    }
}

fn new_child(id: &str, parent: &str, index: u32) -> NewTaskExecution {
    NewTaskExecution {
        root: Some(TaskExecutionRef {
            task_id: "task".to_owned(),
            execution_id: parent.to_owned(),
        }),
        parent: Some(ParentRef {
            task_id: "task".to_owned(),
            execution_id: parent.to_owned(),
            index,
            is_finalize: false,
        }),
        ..new_execution(id)
    }
}

fn new_finalize(id: &str, parent: &str) -> NewTaskExecution {
    let mut e = new_child(id, parent, 0);
    if let Some(p) = e.parent.as_mut() {
        p.is_finalize = true;
    }
    e
}

fn claim(executor: &str, now: i64, limit: u64) -> ClaimParams {
    ClaimParams {
        executor_id: executor.to_owned(),
        now,
        limit,
        lease_margin: MARGIN,
        ..ClaimParams::default()
    }
}

fn ids(executions: &[TaskExecution]) -> Vec<&str> {
    executions.iter().map(|e| e.execution_id.as_str()).collect()
}

async fn get(storage: &Storage, id: &str) -> CaseResult<TaskExecution> {
    storage
        .get_task_execution(id)
        .await?
        .ok_or_else(|| CaseFailure::new(format!("execution {id} not found")))
}

/// Sets `status` on `id` regardless of its current state.
async fn force_status(
    storage: &Storage,
    id: &str,
    status: TaskExecutionStatus,
    now: i64,
) -> Result<u64> {
    storage
        .update_task_executions(
            &TaskExecutionGuard::id(id),
            &TaskExecutionUpdate {
                now,
                status: Some(status),
                ..Default::default()
            },
        )
        .await
}

fn finished_child(
    parent: &str,
    child: &str,
    index: u32,
    status: TaskExecutionStatus,
) -> FinishedChildTaskExecution {
    FinishedChildTaskExecution {
        parent_execution_id: parent.to_owned(),
        child_execution_id: child.to_owned(),
        child_task_id: "task".to_owned(),
        index,
        status,
        output: (status == TaskExecutionStatus::Completed).then(|| format!("output of {child}")),
        error: (status != TaskExecutionStatus::Completed)
            .then(|| ExecutionError::generic(format!("{child} failed"), false)),
        created_at: T0,
    }
}

/// An enqueued execution reads back exactly as [`NewTaskExecution::into_execution`] describes;
/// an unknown id reads as `None`.
pub async fn enqueue_then_get_round_trips_every_field(storage: Storage) -> CaseResult {
    let new = NewTaskExecution {
        retry_options: RetryOptions {
            max_attempts: 3,
            base_delay: Duration::from_millis(10),
            delay_multiplier: 2.5,
            max_delay: Some(Duration::from_millis(100)),
        },
        sleep_before_run: Duration::from_millis(50),
        ..new_child("child-ü", "parent-東京", 7)
    };
    storage
        .enqueue_task_executions(vec![new.clone(), new_execution("plain")], T0)
        .await?;
    check_eq!(get(&storage, "child-ü").await?, new.into_execution(T0));
    check_eq!(
        get(&storage, "plain").await?,
        new_execution("plain").into_execution(T0)
    );
    check!(
        storage.get_task_execution("missing").await?.is_none(),
        "an unknown id was found"
    );
    Ok(())
}

/// Enqueueing no executions succeeds and writes nothing.
pub async fn enqueue_of_nothing_is_a_no_op(storage: Storage) -> CaseResult {
    storage.enqueue_task_executions(Vec::new(), T0).await?;
    storage
        .add_finished_child_task_executions(Vec::new())
        .await?;
    check!(
        storage
            .get_task_executions(&TaskExecutionFilter::default())
            .await?
            .is_empty(),
        "rows appeared"
    );
    Ok(())
}

/// A duplicate execution id, in the store or within the batch, is a conflict and nothing of the
/// batch is inserted.
pub async fn duplicate_enqueue_is_conflict_and_inserts_nothing(storage: Storage) -> CaseResult {
    storage
        .enqueue_task_executions(vec![new_execution("a")], T0)
        .await?;
    for batch in [
        vec![new_execution("b"), new_execution("a")],
        vec![new_execution("c"), new_execution("c")],
    ] {
        let result = storage.enqueue_task_executions(batch, T0 + 1).await;
        check!(
            matches!(result, Err(Error::Conflict { .. })),
            "expected a conflict, got {result:?}"
        );
    }
    let all = storage
        .get_task_executions(&TaskExecutionFilter::default())
        .await?;
    check_eq!(ids(&all), vec!["a"]);
    check_eq!(all[0].created_at, T0);
    Ok(())
}

/// Empty ids and non-positive timeouts are refused before anything is written.
pub async fn invalid_executions_are_rejected_before_writing(storage: Storage) -> CaseResult {
    let bad = [
        NewTaskExecution {
            execution_id: String::new(),
            ..new_execution("x")
        },
        NewTaskExecution {
            timeout: Duration::ZERO,
            ..new_execution("y")
        },
        NewTaskExecution {
            execution_id: "z".repeat(256),
            ..new_execution("z")
        },
    ];
    for e in bad {
        let result = storage
            .enqueue_task_executions(vec![new_execution("ok"), e], T0)
            .await;
        check!(
            matches!(result, Err(Error::InvalidArgument { .. })),
            "expected an invalid argument, got {result:?}"
        );
    }
    check!(
        storage.get_task_execution("ok").await?.is_none(),
        "the valid execution of a rejected batch was inserted"
    );
    Ok(())
}

/// Filters combine, results come by `created_at`, index in the parent, then id, and the limit
/// applies after ordering; empty id or status lists match nothing.
pub async fn get_task_executions_filters_orders_and_limits(storage: Storage) -> CaseResult {
    storage
        .enqueue_task_executions(vec![new_execution("p"), new_execution("q")], T0)
        .await?;
    storage
        .enqueue_task_executions(
            vec![
                new_child("c2", "p", 2),
                new_child("c0", "p", 0),
                new_child("c1", "p", 1),
            ],
            T0 + 1,
        )
        .await?;
    storage
        .enqueue_task_executions(vec![new_child("d0", "q", 0)], T0 + 2)
        .await?;
    force_status(&storage, "c1", TaskExecutionStatus::Running, T0 + 3).await?;

    let all = storage
        .get_task_executions(&TaskExecutionFilter::default())
        .await?;
    check_eq!(ids(&all), vec!["p", "q", "c0", "c1", "c2", "d0"]);
    let children = storage
        .get_task_executions(&TaskExecutionFilter {
            parent_execution_id: Some("p".to_owned()),
            ..Default::default()
        })
        .await?;
    check_eq!(ids(&children), vec!["c0", "c1", "c2"]);
    let ready_children = storage
        .get_task_executions(&TaskExecutionFilter {
            parent_execution_id: Some("p".to_owned()),
            statuses: Some(vec![TaskExecutionStatus::Ready]),
            limit: Some(1),
            ..Default::default()
        })
        .await?;
    check_eq!(ids(&ready_children), vec!["c0"]);
    let by_id = storage
        .get_task_executions(&TaskExecutionFilter {
            execution_ids: Some(vec!["d0".to_owned(), "c1".to_owned(), "nope".to_owned()]),
            statuses: Some(vec![
                TaskExecutionStatus::Running,
                TaskExecutionStatus::Ready,
            ]),
            ..Default::default()
        })
        .await?;
    check_eq!(ids(&by_id), vec!["c1", "d0"]);
    for filter in [
        TaskExecutionFilter {
            execution_ids: Some(Vec::new()),
            ..Default::default()
        },
        TaskExecutionFilter {
            statuses: Some(Vec::new()),
            ..Default::default()
        },
        TaskExecutionFilter {
            limit: Some(0),
            ..Default::default()
        },
    ] {
        check!(
            storage.get_task_executions(&filter).await?.is_empty(),
            "{filter:?} matched rows"
        );
    }
    Ok(())
}

/// A claim takes `ready` executions whose start has come, earliest start first, and returns
/// them as they are after the update: `running`, owned, leased, with a new fencing token.
pub async fn claim_takes_due_ready_executions_earliest_first(storage: Storage) -> CaseResult {
    storage
        .enqueue_task_executions(vec![new_execution("early")], T0 - 10)
        .await?;
    storage
        .enqueue_task_executions(
            vec![
                new_execution("now"),
                NewTaskExecution {
                    sleep_before_run: Duration::from_millis(100),
                    ..new_execution("later")
                },
            ],
            T0,
        )
        .await?;
    let claimed = storage.claim_task_executions(&claim("e1", T0, 10)).await?;
    check_eq!(ids(&claimed), vec!["early", "now"]);
    for e in &claimed {
        check_eq!(e.status, TaskExecutionStatus::Running);
        check_eq!(e.executor_id.as_deref(), Some("e1"));
        check_eq!(e.started_at, Some(T0));
        check_eq!(e.expires_at, Some(T0 + TIMEOUT_MS + MARGIN_MS));
        check_eq!(e.fencing_token, 1);
        check_eq!(e.updated_at, T0);
        check_eq!(&get(&storage, &e.execution_id).await?, e);
    }
    check!(
        storage
            .claim_task_executions(&claim("e2", T0 + 99, 10))
            .await?
            .is_empty(),
        "claimed an execution twice or before its start"
    );
    let later = storage
        .claim_task_executions(&claim("e2", T0 + 100, 10))
        .await?;
    check_eq!(ids(&later), vec!["later"]);
    check_eq!(later[0].executor_id.as_deref(), Some("e2"));
    Ok(())
}

/// A claim takes at most `limit` executions, the earliest ones; a limit of 0 takes none.
pub async fn claim_respects_the_limit(storage: Storage) -> CaseResult {
    for (i, id) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
        let offset = i64::try_from(i).unwrap_or_default();
        storage
            .enqueue_task_executions(vec![new_execution(id)], T0 + offset)
            .await?;
    }
    check!(
        storage
            .claim_task_executions(&claim("e", T0 + 10, 0))
            .await?
            .is_empty(),
        "limit 0 claimed something"
    );
    let mut taken = Vec::new();
    for expected in [2, 2, 1, 0] {
        let claimed = storage
            .claim_task_executions(&claim("e", T0 + 10, 2))
            .await?;
        check_eq!(claimed.len(), expected);
        taken.extend(claimed.into_iter().map(|e| e.execution_id));
    }
    check_eq!(taken, vec!["a", "b", "c", "d", "e"]);
    Ok(())
}

/// An execution finished with a `now` older than its start (another executor's clock, or a
/// `now` taken before a wait for a lock) records `finished_at = started_at`, never earlier.
pub async fn finished_at_never_precedes_started_at(storage: Storage) -> CaseResult {
    storage
        .enqueue_task_executions(vec![new_execution("a")], T0)
        .await?;
    storage
        .claim_task_executions(&claim("e", T0 + 100, 1))
        .await?;
    let late_clock = TaskExecutionUpdate {
        now: T0 + 40,
        status: Some(TaskExecutionStatus::Completed),
        ..Default::default()
    };
    let guard = TaskExecutionGuard::id("a").status(TaskExecutionStatus::Running);
    check_eq!(
        storage.update_task_executions(&guard, &late_clock).await?,
        1
    );
    let done = get(&storage, "a").await?;
    check_eq!(done.started_at, Some(T0 + 100));
    check_eq!(done.finished_at, Some(T0 + 100));
    Ok(())
}

/// A guarded update changes only executions in an expected status with the expected fencing
/// token, and returns how many matched.
pub async fn guarded_update_checks_status_and_fencing_token(storage: Storage) -> CaseResult {
    storage
        .enqueue_task_executions(vec![new_execution("a"), new_execution("b")], T0)
        .await?;
    let claimed = storage.claim_task_executions(&claim("e", T0, 1)).await?;
    check_eq!(ids(&claimed), vec!["a"]);
    let complete = TaskExecutionUpdate {
        now: T0 + 1,
        status: Some(TaskExecutionStatus::Completed),
        output: Some("done".to_owned()),
        ..Default::default()
    };
    let stale = TaskExecutionGuard::id("a")
        .status(TaskExecutionStatus::Running)
        .fencing_token(0);
    check_eq!(storage.update_task_executions(&stale, &complete).await?, 0);
    let wrong_status = TaskExecutionGuard::id("a")
        .status(TaskExecutionStatus::Ready)
        .fencing_token(1);
    check_eq!(
        storage
            .update_task_executions(&wrong_status, &complete)
            .await?,
        0
    );
    check_eq!(get(&storage, "a").await?, claimed[0]);
    let nothing = [
        TaskExecutionGuard::default(),
        TaskExecutionGuard::id("a").statuses([]),
        TaskExecutionGuard::id("missing"),
    ];
    for guard in nothing {
        check_eq!(storage.update_task_executions(&guard, &complete).await?, 0);
    }
    let owner = TaskExecutionGuard::id("a")
        .status(TaskExecutionStatus::Running)
        .fencing_token(1);
    check_eq!(storage.update_task_executions(&owner, &complete).await?, 1);
    let a = get(&storage, "a").await?;
    check_eq!(a.status, TaskExecutionStatus::Completed);
    check_eq!(a.output.as_deref(), Some("done"));
    // Several ids: only the ones that match count.
    let both = TaskExecutionGuard {
        execution_ids: vec!["a".to_owned(), "b".to_owned()],
        statuses: Some(TaskExecutionStatus::ACTIVE.to_vec()),
        fencing_token: None,
    };
    let touch = TaskExecutionUpdate {
        now: T0 + 2,
        ..Default::default()
    };
    check_eq!(storage.update_task_executions(&both, &touch).await?, 1);
    check_eq!(get(&storage, "b").await?.updated_at, T0 + 2);
    check_eq!(get(&storage, "a").await?.updated_at, T0 + 1);
    Ok(())
}

/// A batch of guarded updates (the executor's result writer) counts each guard on its own and
/// writes each execution its own values, in batch order where an execution appears twice.
pub async fn batched_updates_count_each_guard_and_write_each_value(storage: Storage) -> CaseResult {
    let all = ["a", "b", "c", "d", "e", "f"];
    storage
        .enqueue_task_executions(all.iter().map(|id| new_execution(id)).collect(), T0)
        .await?;
    check_eq!(
        storage
            .claim_task_executions(&claim("e", T0, 6))
            .await?
            .len(),
        6
    );
    // "f" is claimed a second time: its fencing token differs from the others'.
    let again = TaskExecutionUpdate {
        now: T0 + 1,
        status: Some(TaskExecutionStatus::Ready),
        ..Default::default()
    };
    check_eq!(
        storage
            .update_task_executions(&TaskExecutionGuard::id("f"), &again)
            .await?,
        1
    );
    let f = storage
        .claim_task_executions(&claim("e", T0 + 2, 1))
        .await?;
    check_eq!(ids(&f), vec!["f"]);
    let running = |id: &str, token: i64| {
        TaskExecutionGuard::id(id)
            .status(TaskExecutionStatus::Running)
            .fencing_token(token)
    };
    let complete = |now: i64, output: &str| TaskExecutionUpdate {
        now,
        status: Some(TaskExecutionStatus::Completed),
        output: Some(output.to_owned()),
        ..Default::default()
    };
    let error = ExecutionError::generic("broken", false);
    let fail = TaskExecutionUpdate {
        now: T0 + 11,
        status: Some(TaskExecutionStatus::Failed),
        error: Some(error.clone()),
        ..Default::default()
    };
    let touch = TaskExecutionUpdate {
        now: T0 + 20,
        ..Default::default()
    };
    let updates = vec![
        (running("a", 1), complete(T0 + 10, "out-a")),
        (running("b", 0), complete(T0 + 10, "stale")),
        (
            TaskExecutionGuard::id("c")
                .status(TaskExecutionStatus::Ready)
                .fencing_token(1),
            complete(T0 + 10, "wrong status"),
        ),
        (running("d", 1), fail),
        (running("e", 1), complete(T0 + 12, "out-e")),
        (running("f", f[0].fencing_token), complete(T0 + 13, "out-f")),
        (running("missing", 1), complete(T0 + 10, "nobody")),
        (
            TaskExecutionGuard::id("a")
                .status(TaskExecutionStatus::Completed)
                .fencing_token(1),
            touch,
        ),
        (TaskExecutionGuard::default(), complete(T0 + 10, "no ids")),
    ];
    check_eq!(
        storage.update_task_executions_many(&updates).await?,
        vec![1, 0, 0, 1, 1, 1, 0, 1, 0]
    );
    let a = get(&storage, "a").await?;
    check_eq!(
        (a.status, a.output.as_deref(), a.finished_at, a.updated_at),
        (
            TaskExecutionStatus::Completed,
            Some("out-a"),
            Some(T0 + 10),
            T0 + 20
        )
    );
    for id in ["b", "c"] {
        let untouched = get(&storage, id).await?;
        check_eq!(
            (untouched.status, untouched.output, untouched.updated_at),
            (TaskExecutionStatus::Running, None, T0)
        );
    }
    let d = get(&storage, "d").await?;
    check_eq!(
        (d.status, d.output, d.error, d.finished_at),
        (
            TaskExecutionStatus::Failed,
            None,
            Some(error),
            Some(T0 + 11)
        )
    );
    for (id, output, at) in [("e", "out-e", T0 + 12), ("f", "out-f", T0 + 13)] {
        let done = get(&storage, id).await?;
        check_eq!(
            (done.status, done.output.as_deref(), done.finished_at),
            (TaskExecutionStatus::Completed, Some(output), Some(at))
        );
    }
    Ok(())
}

/// Executions finished through a batch of guarded updates reach their parents exactly as a
/// close propagates them, whether the storage closes them in the same transaction or leaves
/// them to [`close_finished_task_executions`](TaskExecutionStorage::close_finished_task_executions).
pub async fn batched_finishes_reach_their_parents_once(storage: Storage) -> CaseResult {
    use TaskExecutionStatus::{Completed, Failed, Running, WaitingForFinalize};
    waiting_parent(&storage, "p", 3, T0).await?;
    storage
        .enqueue_task_executions(
            vec![
                new_child("c0", "p", 0),
                new_child("c1", "p", 1),
                new_child("c2", "p", 2),
            ],
            T0,
        )
        .await?;
    check_eq!(
        storage
            .claim_task_executions(&claim("e", T0, 3))
            .await?
            .len(),
        3
    );
    let running = |id: &str| TaskExecutionGuard::id(id).status(Running).fencing_token(1);
    let end =
        |status, output: Option<&str>, error: Option<ExecutionError>, now| TaskExecutionUpdate {
            now,
            status: Some(status),
            output: output.map(str::to_owned),
            error,
            ..Default::default()
        };
    let error = ExecutionError::generic("c1 broke", false);
    let updates = vec![
        (running("c0"), end(Completed, Some("zero"), None, T0 + 1)),
        (
            running("c1"),
            end(Failed, None, Some(error.clone()), T0 + 2),
        ),
        (running("c2"), end(Completed, Some("two"), None, T0 + 1)),
    ];
    check_eq!(
        storage.update_task_executions_many(&updates).await?,
        vec![1, 1, 1]
    );
    storage.close_finished_task_executions(T0 + 3, 10).await?;
    check_eq!(storage.close_finished_task_executions(T0 + 4, 10).await?, 0);
    for id in ["c0", "c1", "c2"] {
        check!(get(&storage, id).await?.is_closed, "{id} was not closed");
    }
    let records = storage.get_finished_child_task_executions("p").await?;
    let summary: Vec<_> = records
        .iter()
        .map(|r| {
            (
                r.child_execution_id.as_str(),
                r.status,
                r.output.as_deref(),
                r.error.clone(),
            )
        })
        .collect();
    check_eq!(
        summary,
        vec![
            ("c0", Completed, Some("zero"), None),
            ("c1", Failed, None, Some(error)),
            ("c2", Completed, Some("two"), None),
        ]
    );
    let p = get(&storage, "p").await?;
    check_eq!((p.finished_children_count, p.failed_children_count), (3, 1));

    // A finalize execution finished through a batch finishes its parent.
    storage
        .update_task_executions(
            &TaskExecutionGuard::id("p"),
            &TaskExecutionUpdate {
                now: T0 + 5,
                status: Some(WaitingForFinalize),
                ..Default::default()
            },
        )
        .await?;
    storage
        .enqueue_task_executions(vec![new_finalize("fin", "p")], T0 + 5)
        .await?;
    check_eq!(
        ids(&storage
            .claim_task_executions(&claim("e", T0 + 6, 1))
            .await?),
        vec!["fin"]
    );
    let finalize = vec![(running("fin"), end(Completed, Some("final"), None, T0 + 7))];
    check_eq!(
        storage.update_task_executions_many(&finalize).await?,
        vec![1]
    );
    storage.close_finished_task_executions(T0 + 8, 10).await?;
    let p = get(&storage, "p").await?;
    check_eq!((p.status, p.output.as_deref()), (Completed, Some("final")));
    check!(get(&storage, "fin").await?.is_closed, "fin was not closed");
    Ok(())
}

/// Updates set the fields they name and the fields that follow from the status.
pub async fn update_maintains_status_derived_fields(storage: Storage) -> CaseResult {
    storage
        .enqueue_task_executions(vec![new_execution("a"), new_execution("b")], T0)
        .await?;
    storage.claim_task_executions(&claim("e", T0, 2)).await?;
    let error = ExecutionError::timed_out("too slow");
    let retry = TaskExecutionUpdate {
        now: T0 + 1,
        status: Some(TaskExecutionStatus::Ready),
        error: Some(error.clone()),
        retry_attempts: Some(1),
        start_at: Some(T0 + 500),
        run_output: Some("partial".to_owned()),
        ..Default::default()
    };
    check_eq!(
        storage
            .update_task_executions(&TaskExecutionGuard::id("a"), &retry)
            .await?,
        1
    );
    let a = get(&storage, "a").await?;
    check_eq!(a.status, TaskExecutionStatus::Ready);
    check!(!a.is_finished, "a ready execution is finished");
    check_eq!(a.error, Some(error));
    check_eq!(a.retry_attempts, 1);
    check_eq!(a.start_at, T0 + 500);
    check_eq!(a.run_output.as_deref(), Some("partial"));
    check_eq!(a.expires_at, None);
    check_eq!(a.executor_id, None);
    check_eq!(a.finished_at, None);
    check_eq!(a.updated_at, T0 + 1);

    let spawn = TaskExecutionUpdate {
        now: T0 + 2,
        status: Some(TaskExecutionStatus::WaitingForFinalize),
        clear_error: true,
        error: Some(ExecutionError::generic("ignored", true)),
        children_count: Some(4),
        finalize: Some(TaskExecutionRef {
            task_id: "fin".to_owned(),
            execution_id: "a-fin".to_owned(),
        }),
        ..Default::default()
    };
    storage
        .update_task_executions(&TaskExecutionGuard::id("a"), &spawn)
        .await?;
    let a = get(&storage, "a").await?;
    check_eq!(a.error, None);
    check_eq!(a.children_count, 4);
    check_eq!(a.finalize, spawn.finalize);

    let cancel = TaskExecutionUpdate {
        now: T0 + 3,
        status: Some(TaskExecutionStatus::Cancelled),
        error: Some(ExecutionError::cancelled("stop")),
        cancel_requested: Some(true),
        ..Default::default()
    };
    storage
        .update_task_executions(&TaskExecutionGuard::id("b"), &cancel)
        .await?;
    let b = get(&storage, "b").await?;
    check_eq!(b.status, TaskExecutionStatus::Cancelled);
    check!(b.is_finished, "a cancelled execution is not finished");
    check_eq!(b.finished_at, Some(T0 + 3));
    check_eq!(b.expires_at, None);
    // The executor that runs it must still learn about the cancellation.
    check_eq!(b.executor_id.as_deref(), Some("e"));
    check!(b.cancel_requested, "cancel request not set");
    Ok(())
}

/// Update-and-enqueue inserts the children (as of the update's time) only when the guard
/// matched; when it did not, nothing at all is written.
pub async fn update_and_enqueue_inserts_children_only_when_the_guard_matched(
    storage: Storage,
) -> CaseResult {
    storage
        .enqueue_task_executions(vec![new_execution("p")], T0)
        .await?;
    let claimed = storage.claim_task_executions(&claim("e", T0, 1)).await?;
    check_eq!(claimed.len(), 1);
    let update = TaskExecutionUpdate {
        now: T0 + 5,
        status: Some(TaskExecutionStatus::WaitingForChildren),
        run_output: Some("ran".to_owned()),
        children_count: Some(2),
        ..Default::default()
    };
    let children = vec![new_child("c0", "p", 0), new_child("c1", "p", 1)];
    let stale = TaskExecutionGuard::id("p")
        .status(TaskExecutionStatus::Running)
        .fencing_token(7);
    check!(
        !storage
            .update_task_execution_and_enqueue(&stale, &update, children.clone())
            .await?,
        "a stale guard matched"
    );
    check_eq!(get(&storage, "p").await?, claimed[0]);
    check!(
        storage.get_task_execution("c0").await?.is_none(),
        "a child was inserted although the guard did not match"
    );
    let owner = TaskExecutionGuard::id("p")
        .status(TaskExecutionStatus::Running)
        .fencing_token(1);
    check!(
        storage
            .update_task_execution_and_enqueue(&owner, &update, children.clone())
            .await?,
        "the owner's guard did not match"
    );
    let p = get(&storage, "p").await?;
    check_eq!(p.status, TaskExecutionStatus::WaitingForChildren);
    check_eq!(p.children_count, 2);
    for child in children {
        check_eq!(
            get(&storage, &child.execution_id).await?,
            child.into_execution(T0 + 5)
        );
    }
    Ok(())
}

/// A child whose id exists makes update-and-enqueue a conflict that writes nothing: neither the
/// update nor the other children.
pub async fn update_and_enqueue_conflict_rolls_back_the_update(storage: Storage) -> CaseResult {
    storage
        .enqueue_task_executions(vec![new_execution("p"), new_execution("taken")], T0)
        .await?;
    let before = get(&storage, "p").await?;
    let update = TaskExecutionUpdate {
        now: T0 + 1,
        status: Some(TaskExecutionStatus::WaitingForChildren),
        children_count: Some(2),
        ..Default::default()
    };
    let result = storage
        .update_task_execution_and_enqueue(
            &TaskExecutionGuard::id("p"),
            &update,
            vec![new_child("fresh", "p", 0), new_child("taken", "p", 1)],
        )
        .await;
    check!(
        matches!(result, Err(Error::Conflict { .. })),
        "expected a conflict, got {result:?}"
    );
    check_eq!(get(&storage, "p").await?, before);
    check!(
        storage.get_task_execution("fresh").await?.is_none(),
        "a child of the failed batch was inserted"
    );
    Ok(())
}

/// Finished-child records are written once per (parent, child), read back in index order, and
/// the parent's counters equal its records.
pub async fn finished_child_records_are_idempotent_and_counted(storage: Storage) -> CaseResult {
    storage
        .enqueue_task_executions(vec![new_execution("p"), new_execution("q")], T0)
        .await?;
    use TaskExecutionStatus::{Completed, Failed, TimedOut};
    storage
        .add_finished_child_task_executions(vec![
            finished_child("p", "c2", 2, Completed),
            finished_child("p", "c0", 0, Failed),
        ])
        .await?;
    let mut again = finished_child("p", "c0", 0, Completed);
    again.output = Some("different".to_owned());
    storage
        .add_finished_child_task_executions(vec![
            again,
            finished_child("p", "c1", 1, Completed),
            finished_child("p", "c1", 1, Completed),
            finished_child("q", "d0", 0, TimedOut),
        ])
        .await?;
    let records = storage.get_finished_child_task_executions("p").await?;
    check_eq!(
        records,
        vec![
            finished_child("p", "c0", 0, Failed),
            finished_child("p", "c1", 1, Completed),
            finished_child("p", "c2", 2, Completed),
        ]
    );
    let p = get(&storage, "p").await?;
    check_eq!((p.finished_children_count, p.failed_children_count), (3, 1));
    let q = get(&storage, "q").await?;
    check_eq!((q.finished_children_count, q.failed_children_count), (1, 1));
    check!(
        storage
            .get_finished_child_task_executions("nobody")
            .await?
            .is_empty(),
        "records for an unknown parent"
    );
    Ok(())
}

/// A running execution whose lease passed goes back to `ready` with the attempt counted while
/// retries are left, and to `failed` when none are; live leases are left alone.
pub async fn expiry_counts_the_attempt_and_fails_when_retries_are_exhausted(
    storage: Storage,
) -> CaseResult {
    let with_retry = NewTaskExecution {
        retry_options: RetryOptions {
            max_attempts: 1,
            ..Default::default()
        },
        ..new_execution("retry")
    };
    storage
        .enqueue_task_executions(vec![with_retry, new_execution("once")], T0)
        .await?;
    storage.claim_task_executions(&claim("e", T0, 2)).await?;
    let lapse = T0 + TIMEOUT_MS + MARGIN_MS;
    check_eq!(storage.expire_task_executions(lapse, 10).await?, 0);
    check_eq!(storage.expire_task_executions(lapse + 1, 0).await?, 0);
    check_eq!(storage.expire_task_executions(lapse + 1, 10).await?, 2);

    let retry = get(&storage, "retry").await?;
    check_eq!(retry.status, TaskExecutionStatus::Ready);
    check_eq!(retry.retry_attempts, 1);
    check_eq!(retry.start_at, lapse + 1);
    check_eq!((retry.executor_id.as_ref(), retry.expires_at), (None, None));
    check!(!retry.is_finished, "a retried execution is finished");
    check_eq!(retry.error, Some(crate::task::lease_expired_error(true)));
    let once = get(&storage, "once").await?;
    check_eq!(once.status, TaskExecutionStatus::Failed);
    check!(once.is_finished, "a failed execution is not finished");
    check_eq!(once.finished_at, Some(lapse + 1));
    check_eq!(once.retry_attempts, 0);
    check_eq!(once.error, Some(crate::task::lease_expired_error(false)));

    // The retry's second lease lapses too: no retries are left.
    let now = lapse + 1;
    check_eq!(
        storage
            .claim_task_executions(&claim("e", now, 5))
            .await?
            .len(),
        1
    );
    check_eq!(
        storage
            .expire_task_executions(now + TIMEOUT_MS + MARGIN_MS + 1, 1)
            .await?,
        1
    );
    let retry = get(&storage, "retry").await?;
    check_eq!(retry.status, TaskExecutionStatus::Failed);
    check_eq!(retry.retry_attempts, 1);
    Ok(())
}

async fn waiting_parent(storage: &Storage, id: &str, children: u32, now: i64) -> Result<()> {
    storage
        .enqueue_task_executions(vec![new_execution(id)], now)
        .await?;
    storage
        .update_task_executions(
            &TaskExecutionGuard::id(id),
            &TaskExecutionUpdate {
                now,
                status: Some(TaskExecutionStatus::WaitingForChildren),
                children_count: Some(children),
                ..Default::default()
            },
        )
        .await?;
    Ok(())
}

/// A claim of several tasks returns their executions merged in `(start_at, execution_id)`
/// order (ties across tasks included), at most the limit, however many ready executions of a
/// task it does not admit sort before them; parent claims likewise in `(updated_at,
/// execution_id)` order. The backlog stays untouched.
pub async fn claims_of_some_tasks_keep_their_order_past_a_backlog_of_others(
    storage: Storage,
) -> CaseResult {
    let of_task = |id: String, task: &str| NewTaskExecution {
        task_id: task.to_owned(),
        ..new_execution(&id)
    };
    let backlog: Vec<_> = (0..3000)
        .map(|i| of_task(format!("backlog{i:05}"), "backlog"))
        .collect();
    storage.enqueue_task_executions(backlog, T0 - 5000).await?;
    // Served executions of three tasks, two at each start time, each pair of two tasks.
    let served = ["s1", "s2", "s3"];
    for i in 0..12_usize {
        let start = T0 - 1000 + i64::try_from(i / 2).unwrap_or_default() * 10;
        storage
            .enqueue_task_executions(vec![of_task(format!("x{i:02}"), served[i % 3])], start)
            .await?;
    }
    // Due later than the claims: left alone.
    storage
        .enqueue_task_executions(vec![of_task("later".to_owned(), "s1")], T0 + 1000)
        .await?;
    let admits = |limit: u64| ClaimParams {
        task_ids: Some(served.iter().map(|s| (*s).to_owned()).collect()),
        ..claim("e", T0, limit)
    };
    let expected: Vec<String> = (0..12).map(|i| format!("x{i:02}")).collect();
    let first = storage.claim_task_executions(&admits(5)).await?;
    check_eq!(ids(&first), expected[..5].to_vec());
    let rest = storage.claim_task_executions(&admits(100)).await?;
    check_eq!(ids(&rest), expected[5..].to_vec());
    check!(
        storage
            .claim_task_executions(&admits(100))
            .await?
            .is_empty(),
        "claimed more than the served due executions"
    );
    let untouched = storage
        .get_task_executions(&TaskExecutionFilter {
            task_ids: Some(vec!["backlog".to_owned()]),
            statuses: Some(vec![TaskExecutionStatus::Ready]),
            ..Default::default()
        })
        .await?;
    check_eq!(untouched.len(), 3000);

    // Parents with nothing left to wait for, of the served tasks and of the backlog's.
    let mut parents = Vec::new();
    for (i, task) in ["backlog", "s2", "backlog", "s1", "s3", "s2", "backlog"]
        .into_iter()
        .enumerate()
    {
        let id = format!("p{i}");
        let now = T0 + 2000 + i64::try_from(i / 2).unwrap_or_default();
        storage
            .enqueue_task_executions(vec![of_task(id.clone(), task)], now)
            .await?;
        storage
            .update_task_executions(
                &TaskExecutionGuard::id(id.clone()),
                &TaskExecutionUpdate {
                    now,
                    status: Some(TaskExecutionStatus::WaitingForChildren),
                    children_count: Some(0),
                    ..Default::default()
                },
            )
            .await?;
        if task != "backlog" {
            parents.push(id);
        }
    }
    let parent_claim = |limit: u64| ClaimParams {
        now: T0 + 3000,
        ..admits(limit)
    };
    let first = storage
        .claim_parents_with_finished_children(&parent_claim(2))
        .await?;
    check_eq!(ids(&first), parents[..2].to_vec());
    let rest = storage
        .claim_parents_with_finished_children(&parent_claim(10))
        .await?;
    check_eq!(ids(&rest), parents[2..].to_vec());
    Ok(())
}

/// Parents become claimable for processing once all children finished or one failed, and a
/// claim holds them until its lease passes.
pub async fn claim_parents_when_children_finished_or_one_failed(storage: Storage) -> CaseResult {
    use TaskExecutionStatus::{Completed, Failed};
    waiting_parent(&storage, "all", 2, T0).await?;
    waiting_parent(&storage, "one-failed", 3, T0 + 1).await?;
    waiting_parent(&storage, "pending", 2, T0 + 2).await?;
    storage
        .enqueue_task_executions(vec![new_execution("ready")], T0)
        .await?;
    storage
        .add_finished_child_task_executions(vec![
            finished_child("all", "a0", 0, Completed),
            finished_child("one-failed", "b0", 0, Failed),
            finished_child("pending", "c0", 0, Completed),
        ])
        .await?;
    let now = T0 + 10;
    let claimed = storage
        .claim_parents_with_finished_children(&claim("e", now, 10))
        .await?;
    check_eq!(ids(&claimed), vec!["one-failed"]);
    storage
        .add_finished_child_task_executions(vec![finished_child("all", "a1", 1, Completed)])
        .await?;
    let claimed = storage
        .claim_parents_with_finished_children(&claim("e", now, 10))
        .await?;
    check_eq!(ids(&claimed), vec!["all"]);
    let all = &claimed[0];
    check_eq!(all.executor_id.as_deref(), Some("e"));
    check_eq!(all.fencing_token, 1);
    check_eq!(all.expires_at, Some(now + MARGIN_MS));
    check_eq!(all.updated_at, now);
    check_eq!(all.status, TaskExecutionStatus::WaitingForChildren);
    check_eq!(&get(&storage, "all").await?, all);
    check!(
        storage
            .claim_parents_with_finished_children(&claim("f", now + MARGIN_MS - 1, 10))
            .await?
            .is_empty(),
        "a parent was claimed during another claim's lease"
    );
    // Once the leases pass both are claimable again, oldest change first.
    let reclaimed = storage
        .claim_parents_with_finished_children(&claim("f", now + MARGIN_MS, 10))
        .await?;
    check_eq!(ids(&reclaimed), vec!["all", "one-failed"]);
    check!(
        reclaimed.iter().all(|p| p.fencing_token == 2),
        "the second claim did not advance the fencing token"
    );
    check!(
        storage
            .claim_parents_with_finished_children(&claim("f", now + MARGIN_MS, 0))
            .await?
            .is_empty(),
        "limit 0 claimed a parent"
    );
    Ok(())
}

async fn finish(
    storage: &Storage,
    id: &str,
    status: TaskExecutionStatus,
    output: Option<&str>,
    now: i64,
) -> Result<()> {
    let error = (status != TaskExecutionStatus::Completed)
        .then(|| ExecutionError::generic(format!("{id} failed"), false));
    storage
        .update_task_executions(
            &TaskExecutionGuard::id(id),
            &TaskExecutionUpdate {
                now,
                status: Some(status),
                output: output.map(str::to_owned),
                error,
                ..Default::default()
            },
        )
        .await?;
    Ok(())
}

/// Closing a finished child records it for its parent; closing a completed finalize execution
/// completes its parent with the finalize output.
pub async fn close_records_children_and_completes_parent_through_finalize(
    storage: Storage,
) -> CaseResult {
    use TaskExecutionStatus::{Completed, Failed, WaitingForFinalize};
    waiting_parent(&storage, "p", 2, T0).await?;
    storage
        .enqueue_task_executions(vec![new_child("c0", "p", 0), new_child("c1", "p", 1)], T0)
        .await?;
    finish(&storage, "c1", Completed, Some("one"), T0 + 1).await?;
    finish(&storage, "c0", Failed, None, T0 + 2).await?;
    check_eq!(storage.close_finished_task_executions(T0 + 3, 1).await?, 1);
    let c1 = get(&storage, "c1").await?;
    check!(
        c1.is_closed,
        "the earliest finished child was not closed first"
    );
    check_eq!(c1.closed_at, Some(T0 + 3));
    check_eq!(storage.close_finished_task_executions(T0 + 4, 10).await?, 1);
    check_eq!(storage.close_finished_task_executions(T0 + 5, 10).await?, 0);
    let records = storage.get_finished_child_task_executions("p").await?;
    check_eq!(records.len(), 2);
    check_eq!(
        (
            &records[0].child_execution_id,
            records[0].status,
            records[0].created_at
        ),
        (&"c0".to_owned(), Failed, T0 + 4)
    );
    check_eq!(records[0].error, get(&storage, "c0").await?.error);
    check_eq!(
        (&records[1].child_execution_id, records[1].output.as_deref()),
        (&"c1".to_owned(), Some("one"))
    );
    let p = get(&storage, "p").await?;
    check_eq!((p.finished_children_count, p.failed_children_count), (2, 1));

    // A parent waiting for its finalize execution completes with the finalize output.
    storage
        .update_task_executions(
            &TaskExecutionGuard::id("p"),
            &TaskExecutionUpdate {
                now: T0 + 6,
                status: Some(WaitingForFinalize),
                error: Some(ExecutionError::generic("stale", true)),
                ..Default::default()
            },
        )
        .await?;
    storage
        .enqueue_task_executions(vec![new_finalize("fin", "p")], T0 + 6)
        .await?;
    finish(&storage, "fin", Completed, Some("final ✓"), T0 + 7).await?;
    check_eq!(storage.close_finished_task_executions(T0 + 8, 10).await?, 1);
    let p = get(&storage, "p").await?;
    check_eq!(p.status, Completed);
    check_eq!(p.output.as_deref(), Some("final ✓"));
    check_eq!(p.error, None);
    check_eq!(p.finished_at, Some(T0 + 8));
    check_eq!(
        storage.get_finished_child_task_executions("p").await?.len(),
        2
    );
    // The parent, now finished, is closed in turn; as a root it propagates nothing.
    check_eq!(storage.close_finished_task_executions(T0 + 9, 10).await?, 1);
    check!(get(&storage, "p").await?.is_closed, "parent not closed");
    Ok(())
}

/// Closing a finalize execution that did not complete fails its parent with
/// `finalize_task_failed`.
pub async fn close_of_failed_finalize_fails_the_parent(storage: Storage) -> CaseResult {
    use TaskExecutionStatus::{FinalizeFailed, TimedOut, WaitingForFinalize};
    storage
        .enqueue_task_executions(vec![new_execution("p")], T0)
        .await?;
    force_status(&storage, "p", WaitingForFinalize, T0).await?;
    storage
        .enqueue_task_executions(vec![new_finalize("fin", "p")], T0)
        .await?;
    finish(&storage, "fin", TimedOut, None, T0 + 1).await?;
    check_eq!(storage.close_finished_task_executions(T0 + 2, 10).await?, 1);
    let p = get(&storage, "p").await?;
    check_eq!(p.status, FinalizeFailed);
    check!(p.is_finished, "parent not finished");
    let message = p.error.map(|e| e.message).unwrap_or_default();
    check!(
        message.contains("fin failed"),
        "the parent's error does not carry the finalize error: {message}"
    );
    Ok(())
}

/// Closing an execution that did not complete cancels its still-active children and finalize,
/// and leaves finished ones alone.
pub async fn close_of_unsuccessful_parent_cancels_its_active_children(
    storage: Storage,
) -> CaseResult {
    use TaskExecutionStatus::{Cancelled, ChildrenFailed, Completed, Ready};
    waiting_parent(&storage, "p", 3, T0).await?;
    waiting_parent(&storage, "other", 1, T0).await?;
    storage
        .enqueue_task_executions(
            vec![
                new_child("done", "p", 0),
                new_child("running", "p", 1),
                new_child("waiting", "p", 2),
                new_finalize("fin", "p"),
                new_child("unrelated", "other", 0),
            ],
            T0,
        )
        .await?;
    finish(&storage, "done", Completed, Some("ok"), T0 + 1).await?;
    check_eq!(storage.close_finished_task_executions(T0 + 1, 10).await?, 1);
    let running = storage
        .claim_task_executions(&claim("e", T0 + 2, 10))
        .await?;
    check_eq!(running.len(), 4);
    for id in ["waiting", "fin", "unrelated"] {
        storage
            .update_task_executions(
                &TaskExecutionGuard::id(id),
                &TaskExecutionUpdate {
                    now: T0 + 2,
                    status: Some(Ready),
                    ..Default::default()
                },
            )
            .await?;
    }
    force_status(&storage, "p", ChildrenFailed, T0 + 3).await?;
    check_eq!(storage.close_finished_task_executions(T0 + 4, 10).await?, 1);

    for id in ["running", "waiting", "fin"] {
        let child = get(&storage, id).await?;
        check_eq!(child.status, Cancelled);
        check!(
            child.is_finished && child.cancel_requested,
            "{id} not cancelled"
        );
        check_eq!(child.finished_at, Some(T0 + 4));
        check_eq!(child.expires_at, None);
        let error = child
            .error
            .unwrap_or_else(|| ExecutionError::generic("", false));
        check_eq!(error.kind, crate::task::ExecutionErrorKind::Cancelled);
        check!(
            error.message.contains("children_tasks_failed") && error.message.contains('p'),
            "error does not name the parent's outcome: {}",
            error.message
        );
    }
    check_eq!(
        get(&storage, "running").await?.executor_id.as_deref(),
        Some("e")
    );
    check_eq!(get(&storage, "done").await?.status, Completed);
    check_eq!(get(&storage, "unrelated").await?.status, Ready);
    check_eq!(
        get(&storage, "other").await?.status,
        TaskExecutionStatus::WaitingForChildren
    );
    // The cancelled child is closed in turn and recorded as a failed child.
    check_eq!(storage.close_finished_task_executions(T0 + 5, 10).await?, 3);
    let records = storage.get_finished_child_task_executions("p").await?;
    check_eq!(records.len(), 3);
    check_eq!(records.iter().filter(|r| r.status == Cancelled).count(), 2);
    Ok(())
}

/// Cancellation requests are read by the executor holding the execution, and stay until that
/// executor acknowledges them: a read whose reply is lost loses nothing.
pub async fn cancellation_requests_stay_until_acknowledged(storage: Storage) -> CaseResult {
    storage
        .enqueue_task_executions(
            vec![new_execution("a"), new_execution("b"), new_execution("c")],
            T0,
        )
        .await?;
    storage.claim_task_executions(&claim("e1", T0, 2)).await?;
    storage.claim_task_executions(&claim("e2", T0, 2)).await?;
    let cancel = TaskExecutionUpdate {
        now: T0 + 1,
        status: Some(TaskExecutionStatus::Cancelled),
        error: Some(ExecutionError::cancelled("cancelled")),
        cancel_requested: Some(true),
        ..Default::default()
    };
    let guard = TaskExecutionGuard {
        execution_ids: vec!["a".to_owned(), "c".to_owned()],
        statuses: Some(TaskExecutionStatus::ACTIVE.to_vec()),
        fencing_token: None,
    };
    check_eq!(storage.update_task_executions(&guard, &cancel).await?, 2);
    check!(
        storage.cancellation_requests("e1", 0).await?.is_empty(),
        "limit 0 returned requests"
    );
    check_eq!(
        storage.cancellation_requests("e1", 10).await?,
        vec!["a".to_owned()]
    );
    // Read again (as after a lost reply): still there.
    check_eq!(
        storage.cancellation_requests("e1", 10).await?,
        vec!["a".to_owned()]
    );
    check_eq!(
        storage.cancellation_requests("e2", 10).await?,
        vec!["c".to_owned()]
    );
    // Another executor cannot acknowledge e1's request.
    check_eq!(
        storage
            .acknowledge_cancellation_requests("e2", &["a".to_owned()], T0 + 2)
            .await?,
        0
    );
    check_eq!(
        storage
            .acknowledge_cancellation_requests("e1", &["a".to_owned()], T0 + 2)
            .await?,
        1
    );
    // Acknowledging again (a retry after a lost reply) changes nothing.
    check_eq!(
        storage
            .acknowledge_cancellation_requests("e1", &["a".to_owned()], T0 + 3)
            .await?,
        0
    );
    check!(
        storage.cancellation_requests("e1", 10).await?.is_empty(),
        "an acknowledged request came back"
    );
    let a = get(&storage, "a").await?;
    check!(!a.cancel_requested, "request not cleared");
    check_eq!(a.updated_at, T0 + 2);
    check!(!get(&storage, "b").await?.cancel_requested, "b was touched");
    check!(get(&storage, "c").await?.cancel_requested, "c was cleared");
    Ok(())
}

/// Inputs, outputs and child outputs of more than 1 MiB of multi-byte text round-trip.
pub async fn megabyte_non_ascii_payloads_round_trip(storage: Storage) -> CaseResult {
    let big = "Zoë 東京 🚀 ошибка ".repeat(1024 * 1024 / 28 + 1);
    check!(big.len() > 1024 * 1024, "payload too small");
    storage
        .enqueue_task_executions(
            vec![NewTaskExecution {
                input: big.clone(),
                ..new_execution("big")
            }],
            T0,
        )
        .await?;
    let update = TaskExecutionUpdate {
        now: T0 + 1,
        run_output: Some(big.clone()),
        output: Some(big.clone()),
        ..Default::default()
    };
    storage
        .update_task_executions(&TaskExecutionGuard::id("big"), &update)
        .await?;
    let e = get(&storage, "big").await?;
    check!(e.input == big, "input differs");
    check!(
        e.run_output.as_deref() == Some(big.as_str()),
        "run output differs"
    );
    check!(e.output.as_deref() == Some(big.as_str()), "output differs");
    let mut record = finished_child("big", "child", 0, TaskExecutionStatus::Completed);
    record.output = Some(big.clone());
    storage
        .add_finished_child_task_executions(vec![record.clone()])
        .await?;
    check_eq!(
        storage.get_finished_child_task_executions("big").await?,
        vec![record]
    );
    Ok(())
}

/// Timeouts, delays, retry options, queues and parent indexes outside the documented limits are
/// refused with a typed error before anything is written, whatever else the batch holds.
pub async fn numbers_beyond_the_limits_are_rejected_before_writing(storage: Storage) -> CaseResult {
    let max_timeout = crate::task::MAX_TIMEOUT;
    let bad = [
        NewTaskExecution {
            timeout: Duration::MAX,
            ..new_execution("timeout-max")
        },
        NewTaskExecution {
            timeout: max_timeout + Duration::from_millis(1),
            ..new_execution("timeout-over")
        },
        NewTaskExecution {
            timeout: Duration::ZERO,
            ..new_execution("timeout-zero")
        },
        NewTaskExecution {
            timeout: Duration::from_micros(999),
            ..new_execution("timeout-below-a-millisecond")
        },
        NewTaskExecution {
            sleep_before_run: Duration::MAX,
            ..new_execution("sleep-max")
        },
        NewTaskExecution {
            sleep_before_run: crate::task::MAX_SLEEP_BEFORE_RUN + Duration::from_millis(1),
            ..new_execution("sleep-over")
        },
        NewTaskExecution {
            retry_options: RetryOptions {
                max_attempts: u32::MAX,
                ..RetryOptions::default()
            },
            ..new_execution("retries")
        },
        NewTaskExecution {
            retry_options: RetryOptions {
                delay_multiplier: f64::NAN,
                ..RetryOptions::default()
            },
            ..new_execution("multiplier")
        },
        NewTaskExecution {
            queue: Some(String::new()),
            ..new_execution("queue-empty")
        },
        NewTaskExecution {
            queue: Some("q".repeat(crate::task::MAX_QUEUE_LEN + 1)),
            ..new_execution("queue-long")
        },
        {
            let mut child = new_child("index", "p", 0);
            if let Some(parent) = child.parent.as_mut() {
                parent.index = u32::MAX;
            }
            child
        },
    ];
    for e in bad {
        let id = e.execution_id.clone();
        let result = storage
            .enqueue_task_executions(vec![new_execution("ok"), e], T0)
            .await;
        check!(
            matches!(result, Err(Error::InvalidArgument { .. })),
            "{id}: expected an invalid argument, got {result:?}"
        );
    }
    check!(
        storage
            .get_task_executions(&TaskExecutionFilter::default())
            .await?
            .is_empty(),
        "a rejected batch wrote something"
    );
    // The limits themselves are accepted, and their lease arithmetic does not overflow even at
    // the end of time.
    storage
        .enqueue_task_executions(
            vec![NewTaskExecution {
                timeout: max_timeout,
                sleep_before_run: crate::task::MAX_SLEEP_BEFORE_RUN,
                ..new_execution("at-limits")
            }],
            T0,
        )
        .await?;
    let mut late = claim("e", i64::MAX, 1);
    late.lease_margin = Duration::MAX;
    let claimed = storage.claim_task_executions(&late).await?;
    check_eq!(ids(&claimed), vec!["at-limits"]);
    check!(
        claimed[0].expires_at.is_some_and(|x| x > T0),
        "lease {:?}",
        claimed[0].expires_at
    );
    Ok(())
}

/// A claim takes only executions of the tasks and queues it admits (an executor never takes
/// work it cannot run); an empty list admits nothing. Parent claims filter the same way.
pub async fn claims_take_only_the_tasks_and_queues_they_admit(storage: Storage) -> CaseResult {
    let make = |id: &str, task: &str, queue: Option<&str>| NewTaskExecution {
        task_id: task.to_owned(),
        queue: queue.map(str::to_owned),
        ..new_execution(id)
    };
    storage
        .enqueue_task_executions(
            vec![
                make("a1", "a", None),
                make("b1", "b", None),
                make("a2", "a", Some("other")),
                make("c1", "c", Some("other")),
            ],
            T0,
        )
        .await?;
    check_eq!(get(&storage, "a1").await?.queue, crate::task::DEFAULT_QUEUE);
    check_eq!(get(&storage, "a2").await?.queue, "other");
    let only = |tasks: Option<&[&str]>, queues: Option<&[&str]>| ClaimParams {
        task_ids: tasks.map(|t| t.iter().map(|s| (*s).to_owned()).collect()),
        queues: queues.map(|q| q.iter().map(|s| (*s).to_owned()).collect()),
        ..claim("e", T0, 10)
    };
    check!(
        storage
            .claim_task_executions(&only(Some(&[]), None))
            .await?
            .is_empty(),
        "an empty task list admitted something"
    );
    check!(
        storage
            .claim_task_executions(&only(None, Some(&[])))
            .await?
            .is_empty(),
        "an empty queue list admitted something"
    );
    check!(
        storage
            .claim_task_executions(&only(Some(&["zzz"]), None))
            .await?
            .is_empty(),
        "an unknown task was admitted"
    );
    let claimed = storage
        .claim_task_executions(&only(Some(&["a"]), Some(&["default"])))
        .await?;
    check_eq!(ids(&claimed), vec!["a1"]);
    let claimed = storage
        .claim_task_executions(&only(None, Some(&["other"])))
        .await?;
    check_eq!(ids(&claimed), vec!["a2", "c1"]);
    let claimed = storage
        .claim_task_executions(&only(Some(&["b", "c"]), None))
        .await?;
    check_eq!(ids(&claimed), vec!["b1"]);

    // Parents of a task the claimer does not know are left alone.
    waiting_parent(&storage, "p", 1, T0).await?;
    storage
        .add_finished_child_task_executions(vec![finished_child(
            "p",
            "p0",
            0,
            TaskExecutionStatus::Completed,
        )])
        .await?;
    check!(
        storage
            .claim_parents_with_finished_children(&only(Some(&["other-task"]), None))
            .await?
            .is_empty(),
        "a parent of an unadmitted task was claimed"
    );
    check!(
        storage
            .claim_parents_with_finished_children(&only(None, Some(&["other"])))
            .await?
            .is_empty(),
        "a parent of an unadmitted queue was claimed"
    );
    let claimed = storage
        .claim_parents_with_finished_children(&only(Some(&["task"]), Some(&["default"])))
        .await?;
    check_eq!(ids(&claimed), vec!["p"]);
    Ok(())
}

/// A claim whose reply was lost is taken back by its retry: the resumed claim (same claim id,
/// `resume`) returns the executions the first attempt took, unchanged, before taking more within
/// the limit. Nobody else (another executor, another claim id, a claim that does not resume)
/// gets them. Parent claims resume the same way.
pub async fn resumed_claim_takes_back_what_the_lost_claim_took(storage: Storage) -> CaseResult {
    storage
        .enqueue_task_executions(
            (0..5).map(|i| new_execution(&format!("x{i}"))).collect(),
            T0,
        )
        .await?;
    let first = ClaimParams {
        claim_id: Some("claim-1".to_owned()),
        ..claim("e", T0, 2)
    };
    let lost = storage.claim_task_executions(&first).await?;
    check_eq!(ids(&lost), vec!["x0", "x1"]);
    check_eq!(lost[0].claim_id.as_deref(), Some("claim-1"));

    let resume = |executor: &str, claim_id: &str, limit: u64, resume: bool| ClaimParams {
        claim_id: Some(claim_id.to_owned()),
        resume,
        ..claim(executor, T0 + 5, limit)
    };
    // Someone else's resume takes back nothing of it.
    let other = storage
        .claim_task_executions(&resume("f", "claim-1", 1, true))
        .await?;
    check_eq!(ids(&other), vec!["x2"]);
    let resumed = storage
        .claim_task_executions(&resume("e", "claim-1", 3, true))
        .await?;
    check_eq!(ids(&resumed), vec!["x0", "x1", "x3"]);
    check_eq!(&resumed[0], &lost[0]);
    check_eq!(&resumed[1], &lost[1]);
    check_eq!(resumed[2].claim_id.as_deref(), Some("claim-1"));
    // Taken back at most `limit`.
    let resumed = storage
        .claim_task_executions(&resume("e", "claim-1", 1, true))
        .await?;
    check_eq!(resumed.len(), 1);
    // Without `resume`, or under another claim id, nothing is taken back.
    let fresh = storage
        .claim_task_executions(&resume("e", "claim-2", 5, false))
        .await?;
    check_eq!(ids(&fresh), vec!["x4"]);
    check!(
        storage
            .claim_task_executions(&resume("e", "claim-1", 5, false))
            .await?
            .is_empty(),
        "a claim that does not resume took back executions"
    );
    // Once finished, an execution is no longer taken back.
    finish(
        &storage,
        "x0",
        TaskExecutionStatus::Completed,
        Some("done"),
        T0 + 6,
    )
    .await?;
    let resumed = storage
        .claim_task_executions(&resume("e", "claim-1", 5, true))
        .await?;
    check_eq!(ids(&resumed), vec!["x1", "x3"]);

    // Parent claims.
    waiting_parent(&storage, "p", 1, T0).await?;
    storage
        .add_finished_child_task_executions(vec![finished_child(
            "p",
            "p0",
            0,
            TaskExecutionStatus::Completed,
        )])
        .await?;
    let lost = storage
        .claim_parents_with_finished_children(&resume("e", "parents-1", 5, false))
        .await?;
    check_eq!(ids(&lost), vec!["p"]);
    let resumed = storage
        .claim_parents_with_finished_children(&resume("e", "parents-1", 5, true))
        .await?;
    check_eq!(&resumed, &lost);
    check!(
        storage
            .claim_parents_with_finished_children(&resume("e", "parents-2", 5, true))
            .await?
            .is_empty(),
        "another claim id took back a held parent"
    );
    Ok(())
}

/// A fan-out whose inputs add up to 20 MiB (more than MySQL's default 16 MiB packet) is enqueued in one call (split into
/// statements the backend accepts), all or nothing, and its children's outputs recorded for
/// the parent in one call too.
pub async fn many_megabytes_of_children_enqueue_in_one_call(storage: Storage) -> CaseResult {
    let big = "é".repeat(512 * 1024);
    storage
        .enqueue_task_executions(vec![new_execution("p")], T0)
        .await?;
    let children: Vec<NewTaskExecution> = (0..20)
        .map(|i| NewTaskExecution {
            input: big.clone(),
            ..new_child(&format!("c{i:02}"), "p", i)
        })
        .collect();
    let spawned = storage
        .update_task_execution_and_enqueue(
            &TaskExecutionGuard::id("p"),
            &TaskExecutionUpdate {
                now: T0 + 1,
                status: Some(TaskExecutionStatus::WaitingForChildren),
                children_count: Some(20),
                ..Default::default()
            },
            children,
        )
        .await?;
    check!(spawned, "the guard did not match");
    let records: Vec<FinishedChildTaskExecution> = (0..20)
        .map(|i| FinishedChildTaskExecution {
            output: Some(big.clone()),
            ..finished_child("p", &format!("c{i:02}"), i, TaskExecutionStatus::Completed)
        })
        .collect();
    storage.add_finished_child_task_executions(records).await?;
    let parent = get(&storage, "p").await?;
    check_eq!(parent.finished_children_count, 20);
    let stored = storage.get_finished_child_task_executions("p").await?;
    check_eq!(stored.len(), 20);
    check!(
        stored
            .iter()
            .all(|r| r.output.as_deref() == Some(big.as_str())),
        "a child output differs"
    );
    let child = get(&storage, "c19").await?;
    check!(child.input == big, "a child input differs");
    Ok(())
}

/// Ids are compared byte for byte: ids that differ only in case, accents or trailing spaces are
/// different executions, and task ids and parent ids match exactly too.
pub async fn ids_compare_exactly(storage: Storage) -> CaseResult {
    let ids = ["CaseJob", "casejob", "pad", "pad ", "resume", "résumé"];
    storage
        .enqueue_task_executions(
            ids.iter()
                .map(|id| NewTaskExecution {
                    input: format!("input of {id:?}"),
                    ..new_execution(id)
                })
                .collect(),
            T0,
        )
        .await?;
    for id in ids {
        let e = get(&storage, id).await?;
        check_eq!(e.execution_id.as_str(), id);
        check_eq!(e.input, format!("input of {id:?}"));
    }
    check!(
        storage.get_task_execution("CASEJOB").await?.is_none(),
        "an id matched another case"
    );
    let found = storage
        .get_task_executions(&TaskExecutionFilter {
            execution_ids: Some(vec!["casejob".to_owned(), "pad".to_owned()]),
            ..Default::default()
        })
        .await?;
    let mut found_ids = ids_of_owned(&found);
    found_ids.sort();
    check_eq!(found_ids, vec!["casejob".to_owned(), "pad".to_owned()]);
    // Updates and claims filtered by task id address exactly one of them.
    check_eq!(
        force_status(&storage, "pad", TaskExecutionStatus::Cancelled, T0 + 1).await?,
        1
    );
    check_eq!(
        get(&storage, "pad ").await?.status,
        TaskExecutionStatus::Ready
    );
    let exact_task = ClaimParams {
        task_ids: Some(vec!["TASK".to_owned()]),
        ..claim("e", T0 + 2, 10)
    };
    check!(
        storage.claim_task_executions(&exact_task).await?.is_empty(),
        "a task id matched another case"
    );
    // Children of "CaseJob" are not children of "casejob".
    storage
        .add_finished_child_task_executions(vec![finished_child(
            "CaseJob",
            "child",
            0,
            TaskExecutionStatus::Completed,
        )])
        .await?;
    check!(
        storage
            .get_finished_child_task_executions("casejob")
            .await?
            .is_empty(),
        "finished children matched another parent's case"
    );
    check_eq!(get(&storage, "CaseJob").await?.finished_children_count, 1);
    check_eq!(get(&storage, "casejob").await?.finished_children_count, 0);
    Ok(())
}

fn ids_of_owned(executions: &[TaskExecution]) -> Vec<String> {
    executions.iter().map(|e| e.execution_id.clone()).collect()
}

/// Any valid JSON round-trips, U+0000 included: in an input, an output, an execution's error
/// (a JSON column), the error a lease expiry or a cancellation writes, and a finished child's
/// error.
pub async fn json_and_text_with_nul_round_trip(storage: Storage) -> CaseResult {
    let text = "nul \u{0} inside, ü and 🚀";
    let json = serde_json::to_string(text)?;
    check!(json.contains("\\u0000"), "serialized as {json}");
    storage
        .enqueue_task_executions(
            vec![NewTaskExecution {
                input: json.clone(),
                ..new_execution("nul")
            }],
            T0,
        )
        .await?;
    let error = ExecutionError::generic(text, false);
    check_eq!(
        storage
            .update_task_executions(
                &TaskExecutionGuard::id("nul"),
                &TaskExecutionUpdate {
                    now: T0 + 1,
                    status: Some(TaskExecutionStatus::Failed),
                    output: Some(json.clone()),
                    error: Some(error.clone()),
                    ..Default::default()
                },
            )
            .await?,
        1
    );
    let e = get(&storage, "nul").await?;
    check_eq!(e.input, json);
    check_eq!(e.output.as_deref(), Some(json.as_str()));
    check_eq!(e.error.as_ref(), Some(&error));
    let mut record = finished_child("nul", "child", 0, TaskExecutionStatus::Failed);
    record.error = Some(error.clone());
    storage
        .add_finished_child_task_executions(vec![record.clone()])
        .await?;
    check_eq!(
        storage.get_finished_child_task_executions("nul").await?,
        vec![record]
    );
    Ok(())
}

/// Pruning deletes closed executions of the given statuses finished before the cutoff, oldest
/// first, at most `limit` a call, with the finished-child records of pruned parents; it never
/// touches unfinished or unclosed executions, nor a waiting parent's records.
pub async fn prune_deletes_only_closed_executions_finished_before_the_cutoff(
    storage: Storage,
) -> CaseResult {
    use TaskExecutionStatus::{Cancelled, Completed, Failed};
    let ids = [
        "old-done",
        "older-done",
        "old-failed",
        "new-done",
        "open",
        "unclosed",
    ];
    storage
        .enqueue_task_executions(ids.iter().map(|id| new_execution(id)).collect(), T0)
        .await?;
    finish(&storage, "older-done", Completed, Some("1"), T0 + 5).await?;
    finish(&storage, "old-done", Completed, Some("2"), T0 + 10).await?;
    finish(&storage, "old-failed", Failed, None, T0 + 10).await?;
    finish(&storage, "new-done", Completed, Some("3"), T0 + 1_000).await?;
    // A finished parent with records of its children.
    waiting_parent(&storage, "parent", 1, T0).await?;
    storage
        .add_finished_child_task_executions(vec![finished_child("parent", "p0", 0, Completed)])
        .await?;
    finish(&storage, "parent", Completed, Some("4"), T0 + 10).await?;
    // A waiting parent keeps its records whatever happens to its finished children.
    waiting_parent(&storage, "waiting", 1, T0).await?;
    storage
        .add_finished_child_task_executions(vec![finished_child("waiting", "w0", 0, Completed)])
        .await?;
    // Everything finished is closed except `unclosed`, finished after the close.
    check_eq!(
        storage.close_finished_task_executions(T0 + 20, 100).await?,
        5
    );
    finish(&storage, "unclosed", Completed, Some("5"), T0 + 10).await?;

    check_eq!(
        storage
            .prune_task_executions(&[Completed], T0 + 100, 0)
            .await?,
        0
    );
    check_eq!(storage.prune_task_executions(&[], T0 + 100, 10).await?, 0);
    // Oldest first, at most the limit.
    check_eq!(
        storage
            .prune_task_executions(&[Completed], T0 + 100, 1)
            .await?,
        1
    );
    check!(
        storage.get_task_execution("older-done").await?.is_none(),
        "the oldest was not pruned first"
    );
    check_eq!(
        storage
            .prune_task_executions(&[Completed], T0 + 100, 10)
            .await?,
        2
    );
    for gone in ["old-done", "parent"] {
        check!(
            storage.get_task_execution(gone).await?.is_none(),
            "{gone} was not pruned"
        );
    }
    check!(
        storage
            .get_finished_child_task_executions("parent")
            .await?
            .is_empty(),
        "a pruned parent's records remain"
    );
    for kept in ["old-failed", "new-done", "open", "unclosed", "waiting"] {
        check!(
            storage.get_task_execution(kept).await?.is_some(),
            "{kept} was pruned"
        );
    }
    check_eq!(
        storage
            .get_finished_child_task_executions("waiting")
            .await?
            .len(),
        1
    );
    check_eq!(
        storage
            .prune_task_executions(&[Failed, Cancelled], T0 + 100, 10)
            .await?,
        1
    );
    check!(
        storage.get_task_execution("old-failed").await?.is_none(),
        "the failed execution was not pruned"
    );
    Ok(())
}

fn sleeper(id: &str, key: &str) -> NewTaskExecution {
    NewTaskExecution {
        wake_key: Some(key.to_owned()),
        ..new_execution(id)
    }
}

fn wake_completed(key: &str, output: &str, now: i64) -> Wake {
    Wake {
        wake_key: key.to_owned(),
        outcome: WakeOutcome::Completed {
            output: output.to_owned(),
        },
        now,
    }
}

/// An execution enqueued with a delay is listed by `starts_after` while it is not due, and is
/// claimed only once its `start_at` has come.
pub async fn delayed_executions_are_listed_and_claimed_only_when_due(
    storage: Storage,
) -> CaseResult {
    let later = NewTaskExecution {
        sleep_before_run: Duration::from_millis(1_000),
        ..new_execution("later")
    };
    storage
        .enqueue_task_executions(vec![later, new_execution("now")], T0)
        .await?;
    let e = get(&storage, "later").await?;
    check_eq!(e.start_at, T0 + 1_000);
    check_eq!(e.sleep_before_run, Duration::from_millis(1_000));
    let delayed = storage
        .get_task_executions(&TaskExecutionFilter {
            statuses: Some(vec![TaskExecutionStatus::Ready]),
            starts_after: Some(T0),
            ..TaskExecutionFilter::default()
        })
        .await?;
    check_eq!(ids(&delayed), vec!["later"]);
    check_eq!(
        ids(&storage.claim_task_executions(&claim("x", T0, 10)).await?),
        vec!["now"]
    );
    check!(
        storage
            .claim_task_executions(&claim("x", T0 + 999, 10))
            .await?
            .is_empty(),
        "a delayed execution was claimed before its start"
    );
    check_eq!(
        ids(&storage
            .claim_task_executions(&claim("x", T0 + 1_000, 10))
            .await?),
        vec!["later"]
    );
    Ok(())
}

/// A sleeping execution is never claimed; its key is unique among sleepers; the first wake
/// finishes it, a second one answers `AlreadyFinished`, an unknown key is `NotFound`; once
/// woken, the key can be slept under again, and both executions are found by the key.
pub async fn sleeping_executions_wake_once_by_key(storage: Storage) -> CaseResult {
    storage
        .enqueue_task_executions(vec![sleeper("s1", "k1")], T0)
        .await?;
    let e = get(&storage, "s1").await?;
    check_eq!(e.status, TaskExecutionStatus::Sleeping);
    check_eq!(e.wake_key.as_deref(), Some("k1"));
    check_eq!(e.expires_at, Some(T0 + TIMEOUT_MS));
    check!(!e.is_finished, "a sleeper is finished");
    check!(
        storage
            .claim_task_executions(&claim("x", T0 + 1, 10))
            .await?
            .is_empty(),
        "a sleeping execution was claimed"
    );
    for batch in [
        vec![sleeper("s2", "k1")],
        vec![sleeper("s3", "k3"), sleeper("s4", "k3")],
    ] {
        let result = storage.enqueue_task_executions(batch, T0).await;
        check!(
            matches!(result, Err(Error::Conflict { .. })),
            "expected a conflict for a key already sleeping, got {result:?}"
        );
    }
    check!(
        storage.get_task_execution("s3").await?.is_none(),
        "a sleeper of the refused batch was inserted"
    );
    let unknown = storage
        .wake_task_execution(&wake_completed("nobody", "1", T0 + 2))
        .await;
    check!(
        matches!(unknown, Err(Error::NotFound { .. })),
        "expected NotFound for an unknown key, got {unknown:?}"
    );
    let woken = storage
        .wake_task_execution(&wake_completed("k1", "\"paid\"", T0 + 3))
        .await?;
    let WakeResult::Woken(e) = woken else {
        return Err(CaseFailure::new(format!(
            "first wake did not wake: {woken:?}"
        )));
    };
    check_eq!(e.status, TaskExecutionStatus::Completed);
    check_eq!(e.output.as_deref(), Some("\"paid\""));
    check_eq!(e.finished_at, Some(T0 + 3));
    check_eq!(e.expires_at, None);
    check_eq!(get(&storage, "s1").await?, e);
    let again = storage
        .wake_task_execution(&wake_completed("k1", "\"twice\"", T0 + 4))
        .await?;
    check!(
        matches!(&again, WakeResult::AlreadyFinished(a) if *a == e),
        "second wake: {again:?}"
    );
    // The key is free again once its sleeper woke.
    storage
        .enqueue_task_executions(vec![sleeper("s5", "k1")], T0 + 5)
        .await?;
    let failed = storage
        .wake_task_execution(&Wake {
            wake_key: "k1".to_owned(),
            outcome: WakeOutcome::Failed {
                error: ExecutionError::generic("declined", false),
            },
            now: T0 + 6,
        })
        .await?;
    check!(
        matches!(&failed, WakeResult::Woken(f) if f.execution_id == "s5"
            && f.status == TaskExecutionStatus::Failed
            && f.error.as_ref().is_some_and(|e| e.message == "declined")),
        "wake with a failure: {failed:?}"
    );
    let by_key = storage
        .get_task_executions(&TaskExecutionFilter {
            wake_key: Some("k1".to_owned()),
            ..TaskExecutionFilter::default()
        })
        .await?;
    check_eq!(ids(&by_key), vec!["s1", "s5"]);
    let empty = storage
        .wake_task_execution(&wake_completed("", "1", T0 + 7))
        .await;
    check!(
        matches!(empty, Err(Error::InvalidArgument { .. })),
        "expected InvalidArgument for an empty key, got {empty:?}"
    );
    Ok(())
}

/// A sleeper not woken by its timeout ends `timed_out` through expiry, once; a later wake
/// answers `AlreadyFinished`, and the key can be slept under again.
pub async fn sleeping_executions_time_out_once_and_free_their_key(storage: Storage) -> CaseResult {
    storage
        .enqueue_task_executions(vec![sleeper("s", "k"), sleeper("other", "k2")], T0)
        .await?;
    check_eq!(
        storage.expire_task_executions(T0 + TIMEOUT_MS, 10).await?,
        0
    );
    storage
        .wake_task_execution(&wake_completed("k2", "1", T0 + 1))
        .await?;
    check_eq!(
        storage
            .expire_task_executions(T0 + TIMEOUT_MS + 1, 10)
            .await?,
        1
    );
    let e = get(&storage, "s").await?;
    check_eq!(e.status, TaskExecutionStatus::TimedOut);
    check!(e.is_finished, "a timed out sleeper is not finished");
    check!(
        e.error
            .as_ref()
            .is_some_and(|err| err.kind == ExecutionErrorKind::TimedOut && !err.is_retryable),
        "error {:?}",
        e.error
    );
    check_eq!(
        storage
            .expire_task_executions(T0 + TIMEOUT_MS + 2, 10)
            .await?,
        0
    );
    let late = storage
        .wake_task_execution(&wake_completed("k", "1", T0 + TIMEOUT_MS + 3))
        .await?;
    check!(
        matches!(&late, WakeResult::AlreadyFinished(a) if a.status == TaskExecutionStatus::TimedOut),
        "wake after the timeout: {late:?}"
    );
    storage
        .enqueue_task_executions(vec![sleeper("s-again", "k")], T0 + TIMEOUT_MS + 4)
        .await?;
    Ok(())
}

/// Cancelling a sleeper (directly or through its parent's close) frees its key; a wake then
/// answers `AlreadyFinished` with the cancelled execution.
pub async fn cancelled_sleeper_frees_its_key(storage: Storage) -> CaseResult {
    storage
        .enqueue_task_executions(
            vec![
                sleeper("s", "k"),
                new_execution("p"),
                NewTaskExecution {
                    wake_key: Some("child-key".to_owned()),
                    ..new_child("c", "p", 0)
                },
            ],
            T0,
        )
        .await?;
    force_status(&storage, "s", TaskExecutionStatus::Cancelled, T0 + 1).await?;
    let answer = storage
        .wake_task_execution(&wake_completed("k", "1", T0 + 2))
        .await?;
    check!(
        matches!(&answer, WakeResult::AlreadyFinished(a) if a.status == TaskExecutionStatus::Cancelled),
        "wake of a cancelled sleeper: {answer:?}"
    );
    storage
        .enqueue_task_executions(vec![sleeper("s2", "k")], T0 + 3)
        .await?;
    // A parent that fails cancels its sleeping child when it is closed.
    force_status(&storage, "p", TaskExecutionStatus::Failed, T0 + 4).await?;
    storage.close_finished_task_executions(T0 + 5, 10).await?;
    check_eq!(
        get(&storage, "c").await?.status,
        TaskExecutionStatus::Cancelled
    );
    storage
        .enqueue_task_executions(vec![sleeper("c2", "child-key")], T0 + 6)
        .await?;
    Ok(())
}

/// A sleeping child woken by its key is closed like any child: recorded for its parent, whose
/// children have then all finished.
pub async fn woken_sleeping_child_is_recorded_for_its_parent(storage: Storage) -> CaseResult {
    storage
        .enqueue_task_executions(vec![new_execution("p")], T0)
        .await?;
    let spawned = storage
        .update_task_execution_and_enqueue(
            &TaskExecutionGuard::id("p"),
            &TaskExecutionUpdate {
                now: T0 + 1,
                status: Some(TaskExecutionStatus::WaitingForChildren),
                children_count: Some(1),
                ..Default::default()
            },
            vec![NewTaskExecution {
                wake_key: Some("webhook".to_owned()),
                ..new_child("c", "p", 0)
            }],
        )
        .await?;
    check!(spawned, "the parent did not spawn its sleeping child");
    check!(
        storage
            .claim_parents_with_finished_children(&claim("x", T0 + 2, 10))
            .await?
            .is_empty(),
        "the parent was claimed while its child sleeps"
    );
    let woken = storage
        .wake_task_execution(&wake_completed("webhook", "42", T0 + 3))
        .await?;
    check!(woken.is_woken(), "wake: {woken:?}");
    check_eq!(storage.close_finished_task_executions(T0 + 4, 10).await?, 1);
    let records = storage.get_finished_child_task_executions("p").await?;
    check_eq!(records.len(), 1);
    check_eq!(records[0].output.as_deref(), Some("42"));
    check_eq!(
        ids(&storage
            .claim_parents_with_finished_children(&claim("x", T0 + 5, 10))
            .await?),
        vec!["p"]
    );
    Ok(())
}

/// Wakes racing the expiry of the same sleepers past their timeout: every sleeper ends with
/// exactly one outcome, and each wake's answer agrees with it.
pub async fn wake_racing_timeout_has_exactly_one_winner(storage: Storage) -> CaseResult {
    const SLEEPERS: usize = 24;
    let sleepers = (0..SLEEPERS)
        .map(|i| sleeper(&format!("s{i:02}"), &format!("k{i:02}")))
        .collect();
    storage.enqueue_task_executions(sleepers, T0).await?;
    let late = T0 + TIMEOUT_MS + 1;
    let mut wakes = Vec::new();
    for i in 0..SLEEPERS {
        let storage = Arc::clone(&storage);
        wakes.push(tokio::spawn(async move {
            storage
                .wake_task_execution(&wake_completed(&format!("k{i:02}"), "1", late))
                .await
        }));
    }
    let expirer = {
        let storage = Arc::clone(&storage);
        tokio::spawn(async move {
            let mut expired = 0;
            for _ in 0..4 {
                expired += storage.expire_task_executions(late, 5).await?;
            }
            Ok::<u64, Error>(expired)
        })
    };
    let mut woken = 0;
    for (i, wake) in wakes.into_iter().enumerate() {
        let answer = wake
            .await
            .map_err(|e| CaseFailure::new(format!("wake task: {e}")))??;
        let e = get(&storage, &format!("s{i:02}")).await?;
        match &answer {
            WakeResult::Woken(w) => {
                woken += 1;
                check_eq!(e.status, TaskExecutionStatus::Completed);
                check_eq!(w.status, TaskExecutionStatus::Completed);
            }
            WakeResult::AlreadyFinished(_) => {
                check_eq!(e.status, TaskExecutionStatus::TimedOut);
            }
        }
    }
    let mut expired = expirer
        .await
        .map_err(|e| CaseFailure::new(format!("expire task: {e}")))??;
    // Whatever the racing expiry left, a last one finishes.
    expired += storage.expire_task_executions(late, 100).await?;
    check_eq!(
        woken + usize::try_from(expired).unwrap_or(usize::MAX),
        SLEEPERS
    );
    Ok(())
}

fn schedule(id: &str, next_tick_at: i64) -> TaskSchedule {
    TaskSchedule {
        schedule_id: id.to_owned(),
        task_id: "task".to_owned(),
        input: "{\"report\":\"daily\"}".to_owned(),
        spec: ScheduleSpec::Cron {
            expression: "0 3 * * *".to_owned(),
            time_zone: "Europe/Zurich".to_owned(),
        },
        missed_ticks: MissedTicks::CatchUp,
        next_tick_at: Some(next_tick_at),
        last_tick_at: None,
        created_at: T0,
        updated_at: T0,
    }
}

fn fire(id: &str, expected: i64, next: i64, executions: Vec<NewTaskExecution>) -> ScheduleFire {
    ScheduleFire {
        schedule_id: id.to_owned(),
        expected_next_tick_at: expected,
        new_next_tick_at: Some(next),
        last_tick_at: expected,
        executions,
        now: expected + 1,
    }
}

/// Saving a schedule inserts it; saving the same definition again keeps its progress; saving a
/// changed one replaces it; deleting it works once.
pub async fn schedules_are_saved_once_and_keep_their_progress(storage: Storage) -> CaseResult {
    let first = storage
        .save_task_schedule(schedule("nightly", T0 + 10))
        .await?;
    check_eq!(first, schedule("nightly", T0 + 10));
    storage
        .save_task_schedule(TaskSchedule {
            spec: ScheduleSpec::Interval { every_ms: 60_000 },
            missed_ticks: MissedTicks::Skip,
            ..schedule("hourly", T0 + 20)
        })
        .await?;
    // Saved again at a later start: same definition, so the stored progress stays.
    let again = storage
        .save_task_schedule(TaskSchedule {
            updated_at: T0 + 5,
            ..schedule("nightly", T0 + 99)
        })
        .await?;
    check_eq!(again, first);
    let changed = storage
        .save_task_schedule(TaskSchedule {
            input: "{}".to_owned(),
            created_at: T0 + 7,
            updated_at: T0 + 7,
            ..schedule("nightly", T0 + 70)
        })
        .await?;
    check_eq!(changed.input, "{}");
    check_eq!(changed.next_tick_at, Some(T0 + 70));
    check_eq!(changed.created_at, T0);
    let all = storage.get_task_schedules().await?;
    check_eq!(
        all.iter()
            .map(|s| s.schedule_id.as_str())
            .collect::<Vec<_>>(),
        vec!["hourly", "nightly"]
    );
    check_eq!(all[1], changed);
    check_eq!(all[0].spec, ScheduleSpec::Interval { every_ms: 60_000 });
    check!(storage.delete_task_schedule("hourly").await?, "delete");
    check!(
        !storage.delete_task_schedule("hourly").await?,
        "deleted twice"
    );
    check_eq!(storage.get_task_schedules().await?.len(), 1);
    Ok(())
}

/// A schedule is due once its next tick has come (for the tasks asked for); firing it moves the
/// tick and enqueues the executions once: a second firing of the same tick does nothing.
pub async fn due_schedules_fire_once_per_tick(storage: Storage) -> CaseResult {
    storage.save_task_schedule(schedule("s", T0 + 10)).await?;
    storage
        .save_task_schedule(TaskSchedule {
            task_id: "other".to_owned(),
            ..schedule("t", T0)
        })
        .await?;
    check!(
        storage
            .due_task_schedules(T0 + 9, Some(&["task".to_owned()]), 10)
            .await?
            .is_empty(),
        "a schedule was due before its tick"
    );
    let due = storage
        .due_task_schedules(T0 + 10, Some(&["task".to_owned()]), 10)
        .await?;
    check_eq!(
        due.iter()
            .map(|s| s.schedule_id.as_str())
            .collect::<Vec<_>>(),
        vec!["s"]
    );
    check_eq!(
        storage.due_task_schedules(T0 + 10, None, 10).await?.len(),
        2
    );
    let tick = || vec![new_execution("s@10")];
    check!(
        storage
            .fire_task_schedule(&fire("s", T0 + 10, T0 + 20, tick()))
            .await?,
        "the first firing did not fire"
    );
    check!(
        !storage
            .fire_task_schedule(&fire("s", T0 + 10, T0 + 20, tick()))
            .await?,
        "the same tick fired twice"
    );
    check!(
        !storage
            .fire_task_schedule(&fire("gone", T0, T0 + 1, vec![new_execution("x")]))
            .await?,
        "a missing schedule fired"
    );
    check!(
        storage.get_task_execution("x").await?.is_none(),
        "a failed firing enqueued"
    );
    let s = storage
        .get_task_schedules()
        .await?
        .into_iter()
        .find(|s| s.schedule_id == "s")
        .ok_or_else(|| CaseFailure::new("schedule s vanished".to_owned()))?;
    check_eq!(s.next_tick_at, Some(T0 + 20));
    check_eq!(s.last_tick_at, Some(T0 + 10));
    check_eq!(s.updated_at, T0 + 11);
    check_eq!(
        get(&storage, "s@10").await?.status,
        TaskExecutionStatus::Ready
    );
    check!(
        storage
            .due_task_schedules(T0 + 19, Some(&["task".to_owned()]), 10)
            .await?
            .is_empty(),
        "still due after firing"
    );
    // A firing whose execution exists already changes nothing.
    let clash = storage
        .fire_task_schedule(&fire("s", T0 + 20, T0 + 30, vec![new_execution("s@10")]))
        .await;
    check!(
        matches!(clash, Err(Error::Conflict { .. })),
        "expected a conflict, got {clash:?}"
    );
    let s = storage.get_task_schedules().await?;
    check!(
        s.iter()
            .any(|s| s.schedule_id == "s" && s.next_tick_at == Some(T0 + 20)),
        "a conflicting firing moved the tick"
    );
    Ok(())
}

/// A firing with no next tick (the last tick of a bounded expression) ends the schedule: it
/// reads back with no `next_tick_at`, is never due again however late, and saving the same
/// definition again keeps it ended.
pub async fn schedule_fired_without_a_next_tick_ends(storage: Storage) -> CaseResult {
    storage
        .save_task_schedule(schedule("last", T0 + 10))
        .await?;
    let last = ScheduleFire {
        new_next_tick_at: None,
        ..fire("last", T0 + 10, 0, vec![new_execution("last@10")])
    };
    check!(
        storage.fire_task_schedule(&last).await?,
        "the last tick did not fire"
    );
    let ended = || async {
        storage
            .get_task_schedules()
            .await?
            .into_iter()
            .find(|s| s.schedule_id == "last")
            .ok_or_else(|| CaseFailure::new("the schedule vanished".to_owned()))
    };
    let s = ended().await?;
    check_eq!(s.next_tick_at, None);
    check_eq!(s.last_tick_at, Some(T0 + 10));
    check!(
        storage
            .due_task_schedules(i64::MAX - 1, None, 10)
            .await?
            .is_empty(),
        "an ended schedule was due"
    );
    check!(
        !storage.fire_task_schedule(&last).await?,
        "an ended schedule fired again"
    );
    storage
        .save_task_schedule(schedule("last", T0 + 99))
        .await?;
    check_eq!(ended().await?.next_tick_at, None);
    // Saved as ended (no tick left when it was first saved).
    storage
        .save_task_schedule(TaskSchedule {
            next_tick_at: None,
            ..schedule("never", T0)
        })
        .await?;
    check!(
        storage
            .get_task_schedules()
            .await?
            .iter()
            .any(|s| s.schedule_id == "never" && s.next_tick_at.is_none()),
        "a schedule saved as ended reads back otherwise"
    );
    Ok(())
}

/// Many firings of the same tick at once: exactly one wins and the tick's execution exists
/// once.
pub async fn concurrent_fires_of_one_tick_enqueue_once(storage: Storage) -> CaseResult {
    const FIRERS: usize = 8;
    storage.save_task_schedule(schedule("s", T0 + 10)).await?;
    let mut firers = Vec::new();
    for _ in 0..FIRERS {
        let storage = Arc::clone(&storage);
        firers.push(tokio::spawn(async move {
            storage
                .fire_task_schedule(&fire("s", T0 + 10, T0 + 20, vec![new_execution("s@10")]))
                .await
        }));
    }
    let mut won = 0;
    for firer in firers {
        match firer
            .await
            .map_err(|e| CaseFailure::new(format!("firer: {e}")))?
        {
            Ok(true) => won += 1,
            Ok(false) => {}
            // A firer that read the tick before the winner committed may meet its execution.
            Err(Error::Conflict { .. }) => {}
            Err(other) => return Err(other.into()),
        }
    }
    check_eq!(won, 1);
    check_eq!(
        storage
            .get_task_executions(&TaskExecutionFilter::default())
            .await?
            .len(),
        1
    );
    Ok(())
}

/// Bad ids, expressions, time zones and intervals are refused before anything is written.
pub async fn invalid_schedules_are_rejected_before_writing(storage: Storage) -> CaseResult {
    let bad = [
        schedule("", T0),
        schedule(&"s".repeat(201), T0),
        TaskSchedule {
            spec: ScheduleSpec::Cron {
                expression: "every day".to_owned(),
                time_zone: "UTC".to_owned(),
            },
            ..schedule("cron", T0)
        },
        TaskSchedule {
            spec: ScheduleSpec::Cron {
                expression: "* * * * *".to_owned(),
                time_zone: "Nowhere/Special".to_owned(),
            },
            ..schedule("zone", T0)
        },
        TaskSchedule {
            spec: ScheduleSpec::Interval { every_ms: 0 },
            ..schedule("interval", T0)
        },
        TaskSchedule {
            task_id: String::new(),
            ..schedule("task", T0)
        },
    ];
    for s in bad {
        let result = storage.save_task_schedule(s.clone()).await;
        check!(
            matches!(result, Err(Error::InvalidArgument { .. })),
            "{s:?}: expected InvalidArgument, got {result:?}"
        );
    }
    check!(
        storage.get_task_schedules().await?.is_empty(),
        "a refused schedule was saved"
    );
    Ok(())
}

/// The filter's task, queue and age bounds: every set field must match; the age bounds are
/// `created_at < created_before` and `created_at >= created_after`.
pub async fn get_task_executions_filters_by_task_queue_and_age(storage: Storage) -> CaseResult {
    let with = |id: &str, task: &str, queue: &str| NewTaskExecution {
        task_id: task.to_owned(),
        queue: Some(queue.to_owned()),
        ..new_execution(id)
    };
    storage
        .enqueue_task_executions(vec![with("a", "t1", "q1"), with("b", "t2", "q1")], T0)
        .await?;
    storage
        .enqueue_task_executions(vec![with("c", "t1", "q2")], T0 + 10)
        .await?;
    storage
        .enqueue_task_executions(vec![with("d", "t2", "q2")], T0 + 20)
        .await?;
    let list = |filter: TaskExecutionFilter| {
        let storage = Arc::clone(&storage);
        async move {
            Ok::<_, CaseFailure>(
                storage
                    .get_task_executions(&filter)
                    .await?
                    .into_iter()
                    .map(|e| e.execution_id)
                    .collect::<Vec<_>>(),
            )
        }
    };
    let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    check_eq!(
        list(TaskExecutionFilter {
            task_ids: Some(names(&["t1"])),
            ..Default::default()
        })
        .await?,
        names(&["a", "c"])
    );
    check_eq!(
        list(TaskExecutionFilter {
            queues: Some(names(&["q2"])),
            ..Default::default()
        })
        .await?,
        names(&["c", "d"])
    );
    check_eq!(
        list(TaskExecutionFilter {
            task_ids: Some(names(&["t2", "nope"])),
            queues: Some(names(&["q1"])),
            ..Default::default()
        })
        .await?,
        names(&["b"])
    );
    check_eq!(
        list(TaskExecutionFilter {
            created_before: Some(T0 + 10),
            ..Default::default()
        })
        .await?,
        names(&["a", "b"])
    );
    check_eq!(
        list(TaskExecutionFilter {
            created_after: Some(T0 + 10),
            ..Default::default()
        })
        .await?,
        names(&["c", "d"])
    );
    check_eq!(
        list(TaskExecutionFilter {
            created_after: Some(T0 + 5),
            created_before: Some(T0 + 20),
            statuses: Some(vec![TaskExecutionStatus::Ready]),
            ..Default::default()
        })
        .await?,
        names(&["c"])
    );
    for filter in [
        TaskExecutionFilter {
            task_ids: Some(Vec::new()),
            ..Default::default()
        },
        TaskExecutionFilter {
            queues: Some(Vec::new()),
            ..Default::default()
        },
    ] {
        check!(
            list(filter.clone()).await?.is_empty(),
            "{filter:?} matched rows"
        );
    }
    Ok(())
}

/// Due `ready` executions are grouped by task and queue with the `start_at` of the oldest, the
/// longest waits first; delayed, running and finished ones are left out; the limit holds.
pub async fn ready_executions_are_grouped_by_task_and_queue_with_the_oldest(
    storage: Storage,
) -> CaseResult {
    let of = |id: &str, task: &str, queue: &str, start_at: i64| NewTaskExecution {
        task_id: task.to_owned(),
        queue: Some(queue.to_owned()),
        sleep_before_run: Duration::from_millis(
            u64::try_from(start_at - (T0 - 1_000)).unwrap_or_default(),
        ),
        ..new_execution(id)
    };
    storage
        .enqueue_task_executions(
            vec![
                of("c1", "child", "default", T0 - 500),
                of("c2", "child", "default", T0 - 100),
                of("c3", "child", "default", T0 + 1_000),
                of("m1", "mail", "mail", T0 - 50),
                of("m2", "mail", "bulk", T0 - 300),
                of("r1", "report", "default", T0 - 900),
            ],
            T0 - 1_000,
        )
        .await?;
    force_status(&storage, "r1", TaskExecutionStatus::Running, T0).await?;
    let group =
        |task: &str, queue: &str, count: u64, oldest: i64| crate::task::ReadyTaskExecutions {
            task_id: task.to_owned(),
            queue: queue.to_owned(),
            count,
            oldest_start_at: oldest,
        };
    check_eq!(
        storage.ready_task_executions(T0, 100).await?,
        vec![
            group("child", "default", 2, T0 - 500),
            group("mail", "bulk", 1, T0 - 300),
            group("mail", "mail", 1, T0 - 50),
        ]
    );
    check_eq!(
        storage.ready_task_executions(T0 + 1_000, 1).await?,
        vec![group("child", "default", 3, T0 - 500)]
    );
    check!(
        storage.ready_task_executions(T0, 0).await?.is_empty(),
        "a limit of 0 listed something"
    );
    check!(
        storage
            .ready_task_executions(T0 - 1_000, 100)
            .await?
            .is_empty(),
        "executions not yet due were listed"
    );
    Ok(())
}

/// Counts come one per (queue, status) that has executions, ordered by queue then status
/// name, only of the statuses asked for, at most `limit` of them.
pub async fn counts_group_by_queue_and_status(storage: Storage) -> CaseResult {
    use TaskExecutionStatus as S;
    let in_queue = |id: &str, queue: &str| NewTaskExecution {
        queue: Some(queue.to_owned()),
        ..new_execution(id)
    };
    storage
        .enqueue_task_executions(
            vec![
                in_queue("a1", "alpha"),
                in_queue("a2", "alpha"),
                in_queue("a3", "alpha"),
                in_queue("b1", "beta"),
                new_execution("d1"),
            ],
            T0,
        )
        .await?;
    force_status(&storage, "a3", S::Failed, T0 + 1).await?;
    force_status(&storage, "b1", S::Running, T0 + 1).await?;
    let count = |queue: &str, status: S, count: u64| crate::task::TaskExecutionCount {
        queue: queue.to_owned(),
        status,
        count,
    };
    check_eq!(
        storage.count_task_executions(S::ALL, 100).await?,
        vec![
            count("alpha", S::Failed, 1),
            count("alpha", S::Ready, 2),
            count("beta", S::Running, 1),
            count("default", S::Ready, 1),
        ]
    );
    check_eq!(
        storage
            .count_task_executions(&[S::Ready, S::Running, S::Ready], 100)
            .await?,
        vec![
            count("alpha", S::Ready, 2),
            count("beta", S::Running, 1),
            count("default", S::Ready, 1),
        ]
    );
    check_eq!(
        storage.count_task_executions(&S::ACTIVE, 2).await?,
        vec![count("alpha", S::Ready, 2), count("beta", S::Running, 1)]
    );
    check!(
        storage.count_task_executions(&[], 100).await?.is_empty(),
        "no status counted something"
    );
    check!(
        storage.count_task_executions(S::ALL, 0).await?.is_empty(),
        "a limit of 0 counted something"
    );
    check!(
        storage
            .count_task_executions(&[S::Completed], 100)
            .await?
            .is_empty(),
        "an empty status has a group"
    );
    Ok(())
}

/// Fails `id` (claimed and run to a non-retryable error) at `now`.
async fn fail_run(storage: &Storage, id: &str, now: i64) -> std::result::Result<(), CaseFailure> {
    let claimed = storage.claim_task_executions(&claim("ex", now, 10)).await?;
    let run = claimed
        .iter()
        .find(|e| e.execution_id == id)
        .ok_or_else(|| CaseFailure::new(format!("{id} was not claimed")))?;
    let failed = storage
        .update_task_executions(
            &TaskExecutionGuard::id(id)
                .status(TaskExecutionStatus::Running)
                .fencing_token(run.fencing_token),
            &TaskExecutionUpdate {
                now: now + 1,
                status: Some(TaskExecutionStatus::Failed),
                error: Some(ExecutionError::generic("boom", false)),
                run_output: Some("partial".to_owned()),
                ..Default::default()
            },
        )
        .await?;
    check_eq!(failed, 1);
    Ok(())
}

/// A retried root execution is `ready` again from `now`, one attempt more, unfinished and
/// unclosed, without its outputs or claim, and keeps its error for the new run to see; it is
/// claimed and can complete like any other.
pub async fn retry_runs_a_failed_root_again_and_keeps_its_error(storage: Storage) -> CaseResult {
    storage
        .enqueue_task_executions(vec![new_execution("r")], T0)
        .await?;
    fail_run(&storage, "r", T0).await?;
    // Closed or not, it can be retried; close it to see the retry reopen it.
    storage.close_finished_task_executions(T0 + 2, 10).await?;
    check!(get(&storage, "r").await?.is_closed, "r was not closed");

    let retried = storage.retry_task_execution("r", T0 + 100).await?;
    check_eq!(retried.status, TaskExecutionStatus::Ready);
    check!(!retried.is_finished && !retried.is_closed, "{retried:?}");
    check_eq!(retried.finished_at, None);
    check_eq!(retried.closed_at, None);
    check_eq!(retried.start_at, T0 + 100);
    check_eq!(retried.retry_attempts, 1);
    check_eq!(retried.executor_id, None);
    check_eq!(retried.expires_at, None);
    check_eq!(retried.run_output, None);
    check_eq!(retried.updated_at, T0 + 100);
    check_eq!(retried.error, Some(ExecutionError::generic("boom", false)));
    check_eq!(get(&storage, "r").await?, retried);

    // Not before `now`, then like any ready execution.
    check!(
        storage
            .claim_task_executions(&claim("ex", T0 + 99, 10))
            .await?
            .is_empty(),
        "claimed before its new start"
    );
    let claimed = storage
        .claim_task_executions(&claim("ex", T0 + 100, 10))
        .await?;
    check_eq!(ids(&claimed), vec!["r"]);
    check_eq!(
        claimed[0].error,
        Some(ExecutionError::generic("boom", false))
    );
    let completed = storage
        .update_task_executions(
            &TaskExecutionGuard::id("r").fencing_token(claimed[0].fencing_token),
            &TaskExecutionUpdate {
                now: T0 + 200,
                status: Some(TaskExecutionStatus::Completed),
                output: Some("done".to_owned()),
                clear_error: true,
                ..Default::default()
            },
        )
        .await?;
    check_eq!(completed, 1);
    let done = get(&storage, "r").await?;
    check_eq!(done.status, TaskExecutionStatus::Completed);
    check_eq!(done.retry_attempts, 1);

    // A timed-out root is retried too.
    storage
        .enqueue_task_executions(vec![new_execution("t")], T0)
        .await?;
    force_status(&storage, "t", TaskExecutionStatus::TimedOut, T0 + 1).await?;
    check_eq!(
        storage.retry_task_execution("t", T0 + 5).await?.status,
        TaskExecutionStatus::Ready
    );
    Ok(())
}

/// What cannot be run again without repeating work someone has seen is refused with
/// [`Error::InvalidState`], and left exactly as it was; an unknown id is
/// [`Error::NotFound`].
pub async fn retry_refuses_what_it_cannot_run_again(storage: Storage) -> CaseResult {
    use TaskExecutionStatus as S;
    storage
        .enqueue_task_executions(
            vec![
                new_execution("ready"),
                new_execution("done"),
                new_execution("parent"),
            ],
            T0,
        )
        .await?;
    force_status(&storage, "done", S::Completed, T0 + 1).await?;
    // A parent whose run spawned a child, then failed as a whole.
    let spawned = storage
        .update_task_execution_and_enqueue(
            &TaskExecutionGuard::id("parent"),
            &TaskExecutionUpdate {
                now: T0 + 1,
                status: Some(S::WaitingForChildren),
                children_count: Some(1),
                ..Default::default()
            },
            vec![new_child("child", "parent", 0)],
        )
        .await?;
    check!(spawned, "the parent did not spawn its child");
    force_status(&storage, "parent", S::Failed, T0 + 2).await?;
    force_status(&storage, "child", S::Failed, T0 + 2).await?;
    storage
        .enqueue_task_executions(
            vec![NewTaskExecution {
                wake_key: Some("key".to_owned()),
                ..new_execution("woken")
            }],
            T0,
        )
        .await?;
    storage
        .wake_task_execution(&Wake {
            wake_key: "key".to_owned(),
            outcome: WakeOutcome::Failed {
                error: ExecutionError::generic("no", false),
            },
            now: T0 + 3,
        })
        .await?;
    for id in ["ready", "done", "parent", "child", "woken"] {
        let before = get(&storage, id).await?;
        match storage.retry_task_execution(id, T0 + 10).await {
            Err(Error::InvalidState { reason, .. }) => {
                check!(reason.contains("cannot be retried"), "{id}: {reason}");
            }
            other => return Err(CaseFailure::new(format!("{id}: {other:?}"))),
        }
        check_eq!(get(&storage, id).await?, before);
    }
    check!(
        matches!(
            storage.retry_task_execution("nope", T0).await,
            Err(Error::NotFound { .. })
        ),
        "unknown id"
    );
    Ok(())
}

/// Of concurrent retries of one failed execution, exactly one succeeds; the others are told
/// it is not failed any more.
pub async fn concurrent_retries_have_one_winner(storage: Storage) -> CaseResult {
    storage
        .enqueue_task_executions(vec![new_execution("r")], T0)
        .await?;
    fail_run(&storage, "r", T0).await?;
    let mut racers = Vec::new();
    for i in 0..8 {
        let storage = Arc::clone(&storage);
        racers.push(tokio::spawn(async move {
            storage.retry_task_execution("r", T0 + 10 + i).await
        }));
    }
    let mut won = 0;
    for racer in racers {
        match racer
            .await
            .map_err(|e| CaseFailure::new(format!("racer panicked: {e}")))?
        {
            Ok(_) => won += 1,
            Err(Error::InvalidState { .. }) => {}
            Err(other) => return Err(other.into()),
        }
    }
    check_eq!(won, 1);
    check_eq!(get(&storage, "r").await?.retry_attempts, 1);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Lost replies: each write is called through a storage that loses its reply after it took
// effect, then called again with the same arguments, as a retry does. The repeat answers the
// true outcome, or (where the port says so) changes nothing more.

/// A storage over `storage` that loses the next reply of `operation`.
fn losing(storage: &Storage, operation: &str) -> LoseReplies<Storage> {
    let lossy = LoseReplies::new(Arc::clone(storage));
    lossy.lose_next(operation);
    lossy
}

/// Checks that `answer` is the error of a lost reply, and that `lossy` lost it.
fn check_lost<T: std::fmt::Debug>(lossy: &LoseReplies<Storage>, answer: Result<T>) -> CaseResult {
    check!(
        matches!(&answer, Err(e) if e.is_retryable()),
        "expected the retryable error of a lost reply, got {answer:?}"
    );
    check_eq!(lossy.lost(), 1);
    Ok(())
}

/// An enqueue of several executions repeated after its reply was lost succeeds (the rows are
/// the ones it inserted), inserts nothing twice; an enqueue of one of the ids at another time
/// is still a conflict.
pub async fn lost_reply_of_enqueue_is_not_a_conflict(storage: Storage) -> CaseResult {
    let batch = || vec![new_execution("a"), new_execution("b"), new_execution("c")];
    let lossy = losing(&storage, "enqueue_task_executions");
    check_lost(&lossy, lossy.enqueue_task_executions(batch(), T0).await)?;
    lossy.enqueue_task_executions(batch(), T0).await?;
    let all = storage
        .get_task_executions(&TaskExecutionFilter::default())
        .await?;
    check_eq!(ids(&all), vec!["a", "b", "c"]);
    let again = storage
        .enqueue_task_executions(vec![new_execution("b")], T0 + 1)
        .await;
    check!(
        matches!(again, Err(Error::Conflict { .. })),
        "a later enqueue of b: {again:?}"
    );
    Ok(())
}

/// A retry repeated after its reply was lost answers the execution it retried, counted once;
/// a retry at another time is refused (the execution is not failed any more).
pub async fn lost_reply_of_retry_answers_the_retried_execution(storage: Storage) -> CaseResult {
    storage
        .enqueue_task_executions(vec![new_execution("r")], T0)
        .await?;
    fail_run(&storage, "r", T0).await?;
    let lossy = losing(&storage, "retry_task_execution");
    check_lost(&lossy, lossy.retry_task_execution("r", T0 + 50).await)?;
    let retried = lossy.retry_task_execution("r", T0 + 50).await?;
    check_eq!(retried.status, TaskExecutionStatus::Ready);
    check_eq!(retried.retry_attempts, 1);
    check_eq!(retried.start_at, T0 + 50);
    check_eq!(get(&storage, "r").await?.retry_attempts, 1);
    let other = storage.retry_task_execution("r", T0 + 60).await;
    check!(
        matches!(other, Err(Error::InvalidState { .. })),
        "another retry: {other:?}"
    );
    Ok(())
}

/// A claim repeated with `resume` after its reply was lost hands back what it took, and
/// nothing else is taken twice.
pub async fn lost_reply_of_claim_is_taken_back(storage: Storage) -> CaseResult {
    storage
        .enqueue_task_executions(
            vec![
                new_execution("x0"),
                new_execution("x1"),
                new_execution("x2"),
            ],
            T0,
        )
        .await?;
    let params = ClaimParams {
        claim_id: Some("claim-1".to_owned()),
        ..claim("e", T0, 2)
    };
    let lossy = losing(&storage, "claim_task_executions");
    check_lost(&lossy, lossy.claim_task_executions(&params).await)?;
    let resumed = lossy
        .claim_task_executions(&ClaimParams {
            resume: true,
            ..params
        })
        .await?;
    check_eq!(ids(&resumed), vec!["x0", "x1"]);
    let rest = storage.claim_task_executions(&claim("f", T0, 10)).await?;
    check_eq!(ids(&rest), vec!["x2"]);
    Ok(())
}

/// A run's result, for the claim holder to write.
fn completion(now: i64) -> TaskExecutionUpdate {
    TaskExecutionUpdate {
        now,
        status: Some(TaskExecutionStatus::Completed),
        output: Some("\"done\"".to_owned()),
        clear_error: true,
        ..Default::default()
    }
}

/// A claimed execution and the guard of its claim.
async fn claimed_one(storage: &Storage, id: &str) -> CaseResult<TaskExecutionGuard> {
    storage
        .enqueue_task_executions(vec![new_execution(id)], T0)
        .await?;
    let claimed = storage.claim_task_executions(&claim("e", T0, 1)).await?;
    check_eq!(ids(&claimed), vec![id]);
    Ok(TaskExecutionGuard::id(id)
        .status(TaskExecutionStatus::Running)
        .fencing_token(claimed[0].fencing_token))
}

/// A guarded update repeated after its reply was lost matches nothing (its guard no longer
/// holds) and changes nothing: the row holds the first attempt's values, by which the writer
/// recognizes its own write.
pub async fn lost_reply_of_guarded_update_changes_nothing_more(storage: Storage) -> CaseResult {
    let guard = claimed_one(&storage, "u").await?;
    let lossy = losing(&storage, "update_task_executions");
    check_lost(
        &lossy,
        lossy
            .update_task_executions(&guard, &completion(T0 + 5))
            .await,
    )?;
    check_eq!(
        lossy
            .update_task_executions(&guard, &completion(T0 + 9))
            .await?,
        0
    );
    let e = get(&storage, "u").await?;
    check_eq!(e.status, TaskExecutionStatus::Completed);
    check_eq!(e.updated_at, T0 + 5);
    check!(
        completion(T0 + 9).is_held_by(&e),
        "the row does not hold the write"
    );
    Ok(())
}

/// A batch of guarded updates repeated after its reply was lost matches nothing and changes
/// nothing; the parent of a finished child hears of it once.
pub async fn lost_reply_of_batched_updates_changes_nothing_more(storage: Storage) -> CaseResult {
    let guard = claimed_one(&storage, "m").await?;
    let updates = vec![(guard, completion(T0 + 5))];
    let lossy = losing(&storage, "update_task_executions_many");
    check_lost(&lossy, lossy.update_task_executions_many(&updates).await)?;
    check_eq!(lossy.update_task_executions_many(&updates).await?, vec![0]);
    let e = get(&storage, "m").await?;
    check_eq!(e.status, TaskExecutionStatus::Completed);
    check_eq!(e.output.as_deref(), Some("\"done\""));
    Ok(())
}

/// Spawning children, repeated after its reply was lost, answers that the guard no longer
/// matched and inserts no child twice.
pub async fn lost_reply_of_update_and_enqueue_spawns_once(storage: Storage) -> CaseResult {
    let guard = claimed_one(&storage, "p").await?;
    let update = TaskExecutionUpdate {
        now: T0 + 5,
        status: Some(TaskExecutionStatus::WaitingForChildren),
        run_output: Some("1".to_owned()),
        children_count: Some(2),
        clear_error: true,
        ..Default::default()
    };
    let children = || vec![new_child("p.0", "p", 0), new_child("p.1", "p", 1)];
    let lossy = losing(&storage, "update_task_execution_and_enqueue");
    check_lost(
        &lossy,
        lossy
            .update_task_execution_and_enqueue(&guard, &update, children())
            .await,
    )?;
    check!(
        !lossy
            .update_task_execution_and_enqueue(&guard, &update, children())
            .await?,
        "the repeat matched"
    );
    let e = get(&storage, "p").await?;
    check_eq!(e.status, TaskExecutionStatus::WaitingForChildren);
    check!(update.is_held_by(&e), "the row does not hold the spawn");
    check_eq!(
        storage
            .get_task_executions(&TaskExecutionFilter::default())
            .await?
            .len(),
        3
    );
    Ok(())
}

/// Finished-child records repeated after their reply was lost are not counted twice.
pub async fn lost_reply_of_finished_children_counts_once(storage: Storage) -> CaseResult {
    waiting_parent(&storage, "p", 2, T0).await?;
    let records = || {
        vec![
            finished_child("p", "c0", 0, TaskExecutionStatus::Completed),
            finished_child("p", "c1", 1, TaskExecutionStatus::Failed),
        ]
    };
    let lossy = losing(&storage, "add_finished_child_task_executions");
    check_lost(
        &lossy,
        lossy.add_finished_child_task_executions(records()).await,
    )?;
    lossy.add_finished_child_task_executions(records()).await?;
    let p = get(&storage, "p").await?;
    check_eq!(p.finished_children_count, 2);
    check_eq!(p.failed_children_count, 1);
    check_eq!(
        storage.get_finished_child_task_executions("p").await?.len(),
        2
    );
    Ok(())
}

/// Expiry repeated after its reply was lost recovers nothing more and counts the attempt once.
pub async fn lost_reply_of_expiry_counts_the_attempt_once(storage: Storage) -> CaseResult {
    let with_retry = NewTaskExecution {
        retry_options: RetryOptions {
            max_attempts: 3,
            ..Default::default()
        },
        ..new_execution("x")
    };
    storage
        .enqueue_task_executions(vec![with_retry], T0)
        .await?;
    storage.claim_task_executions(&claim("e", T0, 1)).await?;
    let lapse = T0 + TIMEOUT_MS + MARGIN_MS + 1;
    let lossy = losing(&storage, "expire_task_executions");
    check_lost(&lossy, lossy.expire_task_executions(lapse, 10).await)?;
    check_eq!(lossy.expire_task_executions(lapse, 10).await?, 0);
    let e = get(&storage, "x").await?;
    check_eq!(e.status, TaskExecutionStatus::Ready);
    check_eq!(e.retry_attempts, 1);
    Ok(())
}

/// A wake repeated after its reply was lost answers `Woken` with the execution it woke; a
/// wake with another outcome or at another time is told it finished already.
pub async fn lost_reply_of_wake_answers_woken(storage: Storage) -> CaseResult {
    storage
        .enqueue_task_executions(vec![sleeper("s", "hook")], T0)
        .await?;
    let wake = wake_completed("hook", "\"yes\"", T0 + 5);
    let lossy = losing(&storage, "wake_task_execution");
    check_lost(&lossy, lossy.wake_task_execution(&wake).await)?;
    let again = lossy.wake_task_execution(&wake).await?;
    check!(
        matches!(&again, WakeResult::Woken(e) if e.output.as_deref() == Some("\"yes\"")),
        "the repeat answered {again:?}"
    );
    for other in [
        wake_completed("hook", "\"yes\"", T0 + 6),
        wake_completed("hook", "\"no\"", T0 + 5),
    ] {
        let answer = storage.wake_task_execution(&other).await?;
        check!(
            matches!(answer, WakeResult::AlreadyFinished(_)),
            "another wake answered {answer:?}"
        );
    }
    Ok(())
}

/// Saving a schedule repeated after its reply was lost answers it as saved, once.
pub async fn lost_reply_of_schedule_save_answers_the_schedule(storage: Storage) -> CaseResult {
    let lossy = losing(&storage, "save_task_schedule");
    check_lost(
        &lossy,
        lossy.save_task_schedule(schedule("s", T0 + 10)).await,
    )?;
    let saved = lossy.save_task_schedule(schedule("s", T0 + 10)).await?;
    check_eq!(saved, schedule("s", T0 + 10));
    check_eq!(storage.get_task_schedules().await?, vec![saved]);
    Ok(())
}

/// Deleting a schedule repeated after its reply was lost answers that none is left to delete,
/// and the schedule is gone.
pub async fn lost_reply_of_schedule_delete_leaves_it_deleted(storage: Storage) -> CaseResult {
    storage.save_task_schedule(schedule("s", T0 + 10)).await?;
    let lossy = losing(&storage, "delete_task_schedule");
    check_lost(&lossy, lossy.delete_task_schedule("s").await)?;
    check!(
        !lossy.delete_task_schedule("s").await?,
        "deleted a second time"
    );
    check!(
        storage.get_task_schedules().await?.is_empty(),
        "the schedule is still there"
    );
    Ok(())
}

/// Firing a tick repeated after its reply was lost fires nothing more: the tick moved once and
/// its execution is there once.
pub async fn lost_reply_of_fire_enqueues_the_tick_once(storage: Storage) -> CaseResult {
    storage.save_task_schedule(schedule("s", T0 + 10)).await?;
    let tick = fire("s", T0 + 10, T0 + 20, vec![new_execution("s@10")]);
    let lossy = losing(&storage, "fire_task_schedule");
    check_lost(&lossy, lossy.fire_task_schedule(&tick).await)?;
    check!(
        !lossy.fire_task_schedule(&tick).await?,
        "the tick fired twice"
    );
    check_eq!(
        ids(&storage
            .get_task_executions(&TaskExecutionFilter::default())
            .await?),
        vec!["s@10"]
    );
    check_eq!(
        storage.get_task_schedules().await?[0].next_tick_at,
        Some(T0 + 20)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Paused queues, heartbeats and progress

fn in_queue(id: &str, queue: &str) -> NewTaskExecution {
    NewTaskExecution {
        queue: Some(queue.to_owned()),
        ..new_execution(id)
    }
}

/// A paused queue's executions are passed over by every form of claim (of any task, and of
/// listed tasks, which read the per-task index) until it is resumed; a pause is idempotent
/// and keeps its first time, a queue with nothing in it can be paused, and resuming twice
/// answers `true` then `false`. Bad queue names are refused.
pub async fn paused_queues_are_not_claimed_until_resumed(storage: Storage) -> CaseResult {
    storage
        .enqueue_task_executions(
            vec![
                in_queue("held-1", "held"),
                in_queue("free-1", "free"),
                in_queue("held-2", "held"),
            ],
            T0,
        )
        .await?;
    let paused = storage.pause_task_queue("held", T0).await?;
    check_eq!(paused.queue.as_str(), "held");
    check_eq!(paused.paused_at, T0);
    check_eq!(
        storage.pause_task_queue("held", T0 + 5).await?.paused_at,
        T0
    );
    check_eq!(
        storage.pause_task_queue("empty", T0 + 6).await?.paused_at,
        T0 + 6
    );
    let listed: Vec<(String, i64)> = storage
        .paused_task_queues()
        .await?
        .into_iter()
        .map(|p| (p.queue, p.paused_at))
        .collect();
    check_eq!(
        listed,
        vec![("empty".to_owned(), T0 + 6), ("held".to_owned(), T0)]
    );
    let by_task = ClaimParams {
        task_ids: Some(vec!["task".to_owned(), "other".to_owned()]),
        ..claim("e", T0 + 10, 10)
    };
    check_eq!(
        ids(&storage.claim_task_executions(&by_task).await?),
        vec!["free-1"]
    );
    check!(
        storage
            .claim_task_executions(&claim("e", T0 + 10, 10))
            .await?
            .is_empty(),
        "a claim of any task took an execution of a paused queue"
    );
    let named = ClaimParams {
        queues: Some(vec!["held".to_owned()]),
        ..claim("e", T0 + 10, 10)
    };
    check!(
        storage.claim_task_executions(&named).await?.is_empty(),
        "a claim naming the paused queue took from it"
    );
    check_eq!(
        get(&storage, "held-1").await?.status,
        TaskExecutionStatus::Ready
    );
    check!(
        storage.resume_task_queue("held").await?,
        "the resume found no pause"
    );
    check!(
        !storage.resume_task_queue("held").await?,
        "a second resume found a pause"
    );
    check_eq!(
        ids(&storage
            .claim_task_executions(&claim("e", T0 + 20, 10))
            .await?),
        vec!["held-1", "held-2"]
    );
    let listed: Vec<String> = storage
        .paused_task_queues()
        .await?
        .into_iter()
        .map(|p| p.queue)
        .collect();
    check_eq!(listed, vec!["empty".to_owned()]);
    for bad in [
        String::new(),
        "q".repeat(crate::task::MAX_QUEUE_LEN + 1),
        "a\0b".to_owned(),
    ] {
        let pause = storage.pause_task_queue(&bad, T0).await;
        check!(
            matches!(pause, Err(Error::InvalidArgument { .. })),
            "pause of {bad:?}: {pause:?}"
        );
        let resume = storage.resume_task_queue(&bad).await;
        check!(
            matches!(resume, Err(Error::InvalidArgument { .. })),
            "resume of {bad:?}: {resume:?}"
        );
    }
    check_eq!(storage.paused_task_queues().await?.len(), 1);
    Ok(())
}

/// A pause repeated after its reply was lost answers the first pause's time; a resume repeated
/// so answers `false`, and the queue is resumed either way.
pub async fn lost_reply_of_pause_and_resume_leaves_one_pause(storage: Storage) -> CaseResult {
    let lossy = losing(&storage, "pause_task_queue");
    check_lost(&lossy, lossy.pause_task_queue("q", T0).await)?;
    check_eq!(lossy.pause_task_queue("q", T0 + 9).await?.paused_at, T0);
    check_eq!(storage.paused_task_queues().await?.len(), 1);
    let lossy = losing(&storage, "resume_task_queue");
    check_lost(&lossy, lossy.resume_task_queue("q").await)?;
    check!(
        !lossy.resume_task_queue("q").await?,
        "the repeat found a pause"
    );
    check!(
        storage.paused_task_queues().await?.is_empty(),
        "the queue is still paused"
    );
    Ok(())
}

/// The writes of a heartbeat: a new lease end and a progress report, under the claim's guard
/// (a stale token matches nothing), alone and batched; the progress stays after the run
/// finishes, whose status clears the lease even when the same update names one.
pub async fn heartbeats_move_the_lease_and_keep_the_progress(storage: Storage) -> CaseResult {
    let guard = claimed_one(&storage, "h").await?;
    let first = get(&storage, "h").await?;
    check_eq!(first.progress, None);
    let lease = first.expires_at.unwrap_or_default() + 60_000;
    let beat = TaskExecutionUpdate {
        now: T0 + 100,
        expires_at: Some(lease),
        progress: Some(r#"{"done":3,"of":10,"note":"é"}"#.to_owned()),
        ..Default::default()
    };
    check_eq!(storage.update_task_executions(&guard, &beat).await?, 1);
    let beaten = get(&storage, "h").await?;
    check_eq!(beaten.expires_at, Some(lease));
    check_eq!(
        beaten.progress.as_deref(),
        Some(r#"{"done":3,"of":10,"note":"é"}"#)
    );
    check_eq!(beaten.status, TaskExecutionStatus::Running);
    check_eq!(beaten.fencing_token, first.fencing_token);
    let stale = TaskExecutionGuard {
        fencing_token: Some(first.fencing_token + 1),
        ..guard.clone()
    };
    check_eq!(storage.update_task_executions(&stale, &beat).await?, 0);
    let batched = TaskExecutionUpdate {
        now: T0 + 200,
        expires_at: Some(lease + 1),
        progress: Some("[4]".to_owned()),
        ..Default::default()
    };
    check_eq!(
        storage
            .update_task_executions_many(&[(guard.clone(), batched), (stale, beat.clone())])
            .await?,
        vec![1, 0]
    );
    let beaten = get(&storage, "h").await?;
    check_eq!(beaten.expires_at, Some(lease + 1));
    check_eq!(beaten.progress.as_deref(), Some("[4]"));
    let done = TaskExecutionUpdate {
        expires_at: Some(lease + 2),
        ..completion(T0 + 300)
    };
    check_eq!(storage.update_task_executions(&guard, &done).await?, 1);
    let done = get(&storage, "h").await?;
    check_eq!(done.status, TaskExecutionStatus::Completed);
    check_eq!(done.expires_at, None);
    check_eq!(done.progress.as_deref(), Some("[4]"));
    Ok(())
}

/// Pages read through [`TaskExecutionFilter::after`] list every execution once, in the
/// listing's order, with ties in `created_at` broken by position and id, alone and with other
/// filters; a cursor holding U+0000 selects what follows its prefix, and a cursor read back
/// from its text is the same cursor.
pub async fn listings_page_by_cursor_without_skipping_or_repeating(storage: Storage) -> CaseResult {
    use crate::task::ExecutionCursor;
    let roots: Vec<NewTaskExecution> = ["r3", "r1", "r0", "r2", "r4"]
        .iter()
        .map(|id| new_execution(id))
        .collect();
    storage.enqueue_task_executions(roots, T0).await?;
    storage
        .enqueue_task_executions(
            vec![
                new_child("c2", "r0", 2),
                new_child("c0", "r0", 0),
                new_child("c1", "r0", 1),
                new_child("b1", "r1", 1),
            ],
            T0,
        )
        .await?;
    storage
        .enqueue_task_executions(vec![new_execution("late")], T0 + 1)
        .await?;
    let all = storage
        .get_task_executions(&TaskExecutionFilter::default())
        .await?;
    check_eq!(
        ids(&all),
        vec!["c0", "r0", "r1", "r2", "r3", "r4", "b1", "c1", "c2", "late"]
    );
    for page_size in [1_u64, 3, 4] {
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = storage
                .get_task_executions(&TaskExecutionFilter {
                    after: after.clone(),
                    limit: Some(page_size),
                    ..Default::default()
                })
                .await?;
            seen.extend(page.iter().map(|e| e.execution_id.clone()));
            match page.last() {
                Some(last) if u64::try_from(page.len()).ok() == Some(page_size) => {
                    let cursor = ExecutionCursor::of(last);
                    check_eq!(ExecutionCursor::parse(&cursor.to_string())?, cursor);
                    after = Some(cursor);
                }
                _ => break,
            }
        }
        check_eq!(seen, ids_of_owned(&all));
    }
    let children_after = storage
        .get_task_executions(&TaskExecutionFilter {
            parent_execution_id: Some("r0".to_owned()),
            after: Some(ExecutionCursor {
                created_at: T0,
                index: 0,
                execution_id: "c0".to_owned(),
            }),
            ..Default::default()
        })
        .await?;
    check_eq!(ids(&children_after), vec!["c1", "c2"]);
    let after_nul = storage
        .get_task_executions(&TaskExecutionFilter {
            after: Some(ExecutionCursor {
                created_at: T0,
                index: 0,
                execution_id: "r1\0zzz".to_owned(),
            }),
            limit: Some(2),
            ..Default::default()
        })
        .await?;
    check_eq!(ids(&after_nul), vec!["r2", "r3"]);
    let beyond = storage
        .get_task_executions(&TaskExecutionFilter {
            after: Some(ExecutionCursor {
                created_at: T0,
                index: u32::MAX,
                execution_id: String::new(),
            }),
            ..Default::default()
        })
        .await?;
    check_eq!(ids(&beyond), vec!["late"]);
    check!(
        ExecutionCursor::parse("12.x.id").is_err() && ExecutionCursor::parse("12").is_err(),
        "a malformed cursor was read"
    );
    check_eq!(
        ExecutionCursor::parse("-5.2.a.b")?,
        ExecutionCursor {
            created_at: -5,
            index: 2,
            execution_id: "a.b".to_owned(),
        }
    );
    Ok(())
}

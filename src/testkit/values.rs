//! Sweeps of the value classes every storage must survive, for both ports: text with U+0000
//! (names refused, free text stored losslessly, reads by an unstorable name answered as for
//! any unknown one), and numbers at the ends of their types (every limit and count passed as
//! `u64::MAX`, times at `i64::MIN`/`i64::MAX`): a typed answer, never a panic or a raw database
//! error; and every name at its limit in four-byte characters (stored and read back) or one
//! character past it (refused before writing). The cases are re-exported by [`task`](super::task) and [`batch`](super::batch), whose
//! conformance macros run them.

use std::time::Duration;

use serde_json::json;

use super::batch::Ctx;
use super::task::Storage;
use super::{CaseFailure, CaseResult};
use crate::batch::store::{BatchOutcome, RecordFilter, RecordOutcome};
use crate::batch::{JobConfig, JobState, ProcessedRecord, RecordStatus};
use crate::error::Error;
use crate::task::storage::{
    ClaimParams, FinishedChildTaskExecution, NewTaskExecution, TaskExecutionGuard,
    TaskExecutionUpdate, Wake, WakeOutcome,
};
use crate::task::{
    ExecutionError, MissedTicks, ParentRef, ScheduleSpec, TaskExecutionFilter, TaskExecutionRef,
    TaskExecutionStatus, TaskSchedule, WakeResult,
};

/// The time the cases start at, epoch ms.
const T0: i64 = 1_700_000_000_000;

/// Free text holding U+0000, the stored form's escape character and what looks like an
/// escaped NUL, with non-ASCII around them.
const NUL_TEXT: &str = "nul \u{0} here, ␀ there, ␀0 not a nul, \u{0}\u{0} ü 🚀";

/// A name holding U+0000.
const NUL_NAME: &str = "name\u{0}x";

fn new_execution(id: &str) -> NewTaskExecution {
    NewTaskExecution {
        execution_id: id.to_owned(),
        task_id: "task".to_owned(),
        timeout: Duration::from_secs(5),
        input: format!("input of {id}"),
        ..Default::default()
    }
}

fn claim(executor: &str, now: i64, limit: u64) -> ClaimParams {
    ClaimParams {
        executor_id: executor.to_owned(),
        now,
        limit,
        lease_margin: Duration::from_secs(1),
        ..ClaimParams::default()
    }
}

fn schedule(id: &str) -> TaskSchedule {
    TaskSchedule {
        schedule_id: id.to_owned(),
        task_id: "task".to_owned(),
        input: "{}".to_owned(),
        spec: ScheduleSpec::Cron {
            expression: "0 3 * * *".to_owned(),
            time_zone: "UTC".to_owned(),
        },
        missed_ticks: MissedTicks::Skip,
        next_tick_at: Some(T0),
        last_tick_at: None,
        created_at: T0,
        updated_at: T0,
    }
}

/// Whether `result` is an [`Error::InvalidArgument`].
fn is_invalid<T>(result: &crate::Result<T>) -> bool {
    matches!(result, Err(Error::InvalidArgument { .. }))
}

/// Text from users with U+0000: every payload (input, run output, output, progress, a wake's output, a
/// finished child's output, a schedule's input) reads back exactly as given; every name (ids,
/// task ids, queues, keys, executor and claim ids, schedule ids, cron expressions, time zones)
/// is refused with [`Error::InvalidArgument`] before anything is written; and a read or a
/// guarded write by such a name answers as for a name that is not stored.
pub async fn text_with_nul_round_trips_or_is_refused(storage: Storage) -> CaseResult {
    // Payloads.
    let sleeper = NewTaskExecution {
        wake_key: Some("key".to_owned()),
        ..new_execution("sleeper")
    };
    storage
        .enqueue_task_executions(
            vec![
                NewTaskExecution {
                    input: NUL_TEXT.to_owned(),
                    ..new_execution("payload")
                },
                sleeper,
            ],
            T0,
        )
        .await?;
    let claimed = storage.claim_task_executions(&claim("ex", T0, 10)).await?;
    check_eq!(claimed.len(), 1);
    check_eq!(claimed[0].input, NUL_TEXT);
    let updated = storage
        .update_task_executions(
            &TaskExecutionGuard::id("payload"),
            &TaskExecutionUpdate {
                now: T0 + 1,
                status: Some(TaskExecutionStatus::Completed),
                run_output: Some(format!("run {NUL_TEXT}")),
                output: Some(NUL_TEXT.to_owned()),
                progress: Some(format!("progress {NUL_TEXT}")),
                ..Default::default()
            },
        )
        .await?;
    check_eq!(updated, 1);
    let e = storage
        .get_task_execution("payload")
        .await?
        .ok_or_else(|| CaseFailure::new("payload execution gone"))?;
    check_eq!(e.input, NUL_TEXT);
    check_eq!(
        e.run_output.as_deref(),
        Some(format!("run {NUL_TEXT}").as_str())
    );
    check_eq!(e.output.as_deref(), Some(NUL_TEXT));
    check_eq!(
        e.progress.as_deref(),
        Some(format!("progress {NUL_TEXT}").as_str())
    );
    let listed = storage
        .get_task_executions(&TaskExecutionFilter {
            execution_ids: Some(vec!["payload".to_owned()]),
            ..Default::default()
        })
        .await?;
    check_eq!(listed.len(), 1);
    check_eq!(listed[0].output.as_deref(), Some(NUL_TEXT));
    let woken = storage
        .wake_task_execution(&Wake {
            wake_key: "key".to_owned(),
            outcome: WakeOutcome::Completed {
                output: NUL_TEXT.to_owned(),
            },
            now: T0 + 2,
        })
        .await?;
    match woken {
        WakeResult::Woken(e) => check_eq!(e.output.as_deref(), Some(NUL_TEXT)),
        other => return Err(CaseFailure::new(format!("expected Woken, got {other:?}"))),
    }
    let record = FinishedChildTaskExecution {
        parent_execution_id: "payload".to_owned(),
        child_execution_id: "child".to_owned(),
        child_task_id: "task".to_owned(),
        index: 0,
        status: TaskExecutionStatus::Completed,
        output: Some(NUL_TEXT.to_owned()),
        error: None,
        created_at: T0,
    };
    storage
        .add_finished_child_task_executions(vec![record.clone()])
        .await?;
    check_eq!(
        storage
            .get_finished_child_task_executions("payload")
            .await?,
        vec![record]
    );
    storage
        .save_task_schedule(TaskSchedule {
            input: NUL_TEXT.to_owned(),
            ..schedule("nul-input")
        })
        .await?;
    let schedules = storage.get_task_schedules().await?;
    check_eq!(schedules.len(), 1);
    check_eq!(schedules[0].input, NUL_TEXT);

    // Names are refused before anything is written.
    let parent = |execution_id: &str, task_id: &str| ParentRef {
        task_id: task_id.to_owned(),
        execution_id: execution_id.to_owned(),
        index: 0,
        is_finalize: false,
    };
    let bad_executions = [
        new_execution(NUL_NAME),
        NewTaskExecution {
            task_id: NUL_NAME.to_owned(),
            ..new_execution("bad-task")
        },
        NewTaskExecution {
            queue: Some(NUL_NAME.to_owned()),
            ..new_execution("bad-queue")
        },
        NewTaskExecution {
            wake_key: Some(NUL_NAME.to_owned()),
            ..new_execution("bad-key")
        },
        NewTaskExecution {
            parent: Some(parent(NUL_NAME, "task")),
            root: Some(TaskExecutionRef {
                task_id: "task".to_owned(),
                execution_id: "payload".to_owned(),
            }),
            ..new_execution("bad-parent")
        },
        NewTaskExecution {
            parent: Some(parent("payload", NUL_NAME)),
            ..new_execution("bad-parent-task")
        },
        NewTaskExecution {
            root: Some(TaskExecutionRef {
                task_id: "task".to_owned(),
                execution_id: NUL_NAME.to_owned(),
            }),
            ..new_execution("bad-root")
        },
    ];
    for bad in bad_executions {
        let result = storage.enqueue_task_executions(vec![bad.clone()], T0).await;
        check!(
            is_invalid(&result),
            "{bad:?}: expected InvalidArgument, got {result:?}"
        );
    }
    for params in [
        claim(NUL_NAME, T0, 10),
        ClaimParams {
            claim_id: Some(NUL_NAME.to_owned()),
            ..claim("ex", T0, 10)
        },
    ] {
        let result = storage.claim_task_executions(&params).await;
        check!(
            is_invalid(&result),
            "{params:?}: expected InvalidArgument, got {result:?}"
        );
    }
    let bad_schedules = [
        schedule(NUL_NAME),
        TaskSchedule {
            task_id: NUL_NAME.to_owned(),
            ..schedule("bad-task")
        },
        TaskSchedule {
            spec: ScheduleSpec::Cron {
                expression: "0 3 * * *\u{0}".to_owned(),
                time_zone: "UTC".to_owned(),
            },
            ..schedule("bad-cron")
        },
        TaskSchedule {
            spec: ScheduleSpec::Cron {
                expression: "0 3 * * *".to_owned(),
                time_zone: "UTC\u{0}".to_owned(),
            },
            ..schedule("bad-zone")
        },
    ];
    for bad in bad_schedules {
        let result = storage.save_task_schedule(bad.clone()).await;
        check!(
            is_invalid(&result),
            "{bad:?}: expected InvalidArgument, got {result:?}"
        );
    }
    let wake = storage
        .wake_task_execution(&Wake {
            wake_key: NUL_NAME.to_owned(),
            outcome: WakeOutcome::Failed {
                error: ExecutionError::generic("no", false),
            },
            now: T0 + 3,
        })
        .await;
    check!(is_invalid(&wake), "wake by a NUL key: {wake:?}");
    let child_of_nul = storage
        .add_finished_child_task_executions(vec![FinishedChildTaskExecution {
            parent_execution_id: NUL_NAME.to_owned(),
            child_execution_id: "c".to_owned(),
            child_task_id: "task".to_owned(),
            index: 0,
            status: TaskExecutionStatus::Completed,
            output: None,
            error: None,
            created_at: T0,
        }])
        .await;
    check!(
        is_invalid(&child_of_nul),
        "a finished-child record under a NUL parent id: {child_of_nul:?}"
    );

    // Reads and guarded writes by a name nobody could store match nothing.
    check!(storage.get_task_execution(NUL_NAME).await?.is_none());
    check!(
        storage
            .get_finished_child_task_executions(NUL_NAME)
            .await?
            .is_empty()
    );
    let nothing = [
        TaskExecutionFilter {
            execution_ids: Some(vec![NUL_NAME.to_owned()]),
            ..Default::default()
        },
        TaskExecutionFilter {
            task_ids: Some(vec![NUL_NAME.to_owned()]),
            ..Default::default()
        },
        TaskExecutionFilter {
            queues: Some(vec![NUL_NAME.to_owned()]),
            ..Default::default()
        },
        TaskExecutionFilter {
            parent_execution_id: Some(NUL_NAME.to_owned()),
            ..Default::default()
        },
        TaskExecutionFilter {
            wake_key: Some(NUL_NAME.to_owned()),
            ..Default::default()
        },
    ];
    for filter in nothing {
        let listed = storage.get_task_executions(&filter).await?;
        check!(listed.is_empty(), "{filter:?} listed {listed:?}");
    }
    // A name list keeps its storable names.
    let some = storage
        .get_task_executions(&TaskExecutionFilter {
            execution_ids: Some(vec![NUL_NAME.to_owned(), "payload".to_owned()]),
            ..Default::default()
        })
        .await?;
    check_eq!(some.len(), 1);
    check_eq!(
        storage
            .update_task_executions(
                &TaskExecutionGuard::id(NUL_NAME),
                &TaskExecutionUpdate {
                    now: T0 + 4,
                    status: Some(TaskExecutionStatus::Failed),
                    ..Default::default()
                },
            )
            .await?,
        0
    );
    let claimed = storage
        .claim_task_executions(&ClaimParams {
            task_ids: Some(vec![NUL_NAME.to_owned()]),
            queues: Some(vec![NUL_NAME.to_owned()]),
            ..claim("ex", T0 + 5, 10)
        })
        .await?;
    check!(claimed.is_empty(), "claimed {claimed:?}");
    check!(
        storage
            .cancellation_requests(NUL_NAME, 10)
            .await?
            .is_empty()
    );
    check_eq!(
        storage
            .acknowledge_cancellation_requests(NUL_NAME, &[NUL_NAME.to_owned()], T0 + 6)
            .await?,
        0
    );
    check!(!storage.delete_task_schedule(NUL_NAME).await?);
    let retried = storage.retry_task_execution(NUL_NAME, T0 + 7).await;
    check!(
        matches!(retried, Err(Error::NotFound { .. })),
        "retry of a NUL id: {retried:?}"
    );
    // Nothing refused above was written.
    let all = storage
        .get_task_executions(&TaskExecutionFilter::default())
        .await?;
    check_eq!(all.len(), 2);
    check_eq!(storage.get_task_schedules().await?.len(), 1);
    Ok(())
}

/// Numbers at the ends of their types: every limit and count given as `u64::MAX` is taken as
/// "no limit" (or the storage's own cap) and times at `i64::MIN`/`i64::MAX` are compared as
/// the numbers they are; nothing panics and no raw database error comes back.
pub async fn numbers_at_the_ends_of_their_types_never_panic(storage: Storage) -> CaseResult {
    storage
        .enqueue_task_executions(vec![new_execution("a"), new_execution("b")], T0)
        .await?;
    let listed = storage
        .get_task_executions(&TaskExecutionFilter {
            limit: Some(u64::MAX),
            created_before: Some(i64::MAX),
            created_after: Some(i64::MIN),
            starts_after: Some(i64::MIN),
            ..Default::default()
        })
        .await?;
    check_eq!(listed.len(), 2);
    check!(
        storage
            .count_task_executions(TaskExecutionStatus::ALL, u64::MAX)
            .await?
            .iter()
            .map(|c| c.count)
            .sum::<u64>()
            == 2
    );
    for now in [i64::MIN, i64::MAX] {
        let ready = storage.ready_task_executions(now, u64::MAX).await?;
        check!(ready.len() <= 2, "{} ready groups at {now}", ready.len());
    }
    check!(
        storage
            .cancellation_requests("ex", u64::MAX)
            .await?
            .is_empty()
    );
    check_eq!(storage.expire_task_executions(T0, u64::MAX).await?, 0);
    check_eq!(storage.expire_task_executions(i64::MIN, u64::MAX).await?, 0);
    check_eq!(
        storage.close_finished_task_executions(T0, u64::MAX).await?,
        0
    );
    check!(
        storage
            .claim_parents_with_finished_children(&claim("ex", T0, u64::MAX))
            .await?
            .is_empty()
    );
    check!(
        storage
            .due_task_schedules(T0, Some(&["task".to_owned()]), u64::MAX)
            .await?
            .is_empty()
    );
    for cutoff in [i64::MIN, i64::MAX] {
        check_eq!(
            storage
                .prune_task_executions(TaskExecutionStatus::ALL, cutoff, u64::MAX)
                .await?,
            0
        );
    }
    // A claim with no limit at all takes every due execution, and one at the far end of time
    // has leases that cannot overflow.
    let claimed = storage
        .claim_task_executions(&claim("ex", T0, u64::MAX))
        .await?;
    check_eq!(claimed.len(), 2);
    storage
        .enqueue_task_executions(vec![new_execution("late")], i64::MAX - 10)
        .await?;
    let late = storage
        .claim_task_executions(&ClaimParams {
            lease_margin: Duration::MAX,
            ..claim("ex", i64::MAX, u64::MAX)
        })
        .await?;
    check_eq!(late.len(), 1);
    check!(late[0].expires_at.is_some());
    check!(storage.expire_task_executions(i64::MAX, u64::MAX).await? >= 2);
    Ok(())
}

fn job(id: &str, batch_size: u32) -> JobState {
    JobState::new(id, JobConfig::new(batch_size))
}

fn record(index: u64) -> ProcessedRecord {
    ProcessedRecord::pending(index, json!({ "i": index }))
}

/// The outcomes that mark every record of batch `batch_id` processed.
async fn processed_outcomes(
    ctx: &Ctx,
    job_id: &str,
    batch_id: &str,
) -> CaseResult<Vec<RecordOutcome>> {
    Ok(ctx
        .store
        .get_batch_records(job_id, batch_id)
        .await?
        .iter()
        .map(|r| {
            RecordOutcome::of(&ProcessedRecord {
                status: RecordStatus::Processed,
                ..r.clone()
            })
        })
        .collect())
}

/// Text from users with U+0000 in the batch store: a record's processing error reads back
/// exactly as given through every write that stores it; a job, batch, worker, claim or
/// finalizer id with it is refused with [`Error::InvalidArgument`]; and reads by such an id
/// find nothing.
pub async fn batch_text_with_nul_round_trips_or_is_refused(ctx: Ctx) -> CaseResult {
    let store = &ctx.store;
    let failed = |index: u64| ProcessedRecord {
        status: RecordStatus::Failed,
        processing_error: Some(format!("{index}: {NUL_TEXT}")),
        ..record(index)
    };
    store
        .save_batch_records("job-nul", "b1", &[failed(0), record(1)])
        .await?;
    store
        .save_processed_records("job-nul", "b1", &[failed(1)])
        .await?;
    store
        .save_record_outcomes(
            "job-nul",
            "b1",
            &[RecordOutcome::of(&ProcessedRecord {
                processing_error: Some(format!("2: {NUL_TEXT}")),
                ..failed(0)
            })],
        )
        .await?;
    let stored = store.get_batch_records("job-nul", "b1").await?;
    check_eq!(stored.len(), 2);
    check_eq!(
        stored[0].processing_error.as_deref(),
        Some(format!("2: {NUL_TEXT}").as_str())
    );
    check_eq!(
        stored[1].processing_error.as_deref(),
        Some(format!("1: {NUL_TEXT}").as_str())
    );

    // Through a claim: the distributed completion stores the outcomes' errors too.
    super::batch::prepared_job(&ctx, "job-claimed", 1).await?;
    let reservation = super::batch::claim(&ctx, "job-claimed", "w1").await?;
    let mut outcomes = processed_outcomes(&ctx, "job-claimed", &reservation.batch_id).await?;
    check!(!outcomes.is_empty(), "the prepared batch has no records");
    outcomes[0].status = RecordStatus::Failed;
    outcomes[0].processing_error = Some(NUL_TEXT.to_owned());
    let processed = u64::try_from(outcomes.len() - 1).unwrap_or(0);
    check!(
        store
            .complete_batch_with_outcomes(
                &reservation,
                BatchOutcome::completed(processed, 1),
                &outcomes
            )
            .await?
    );
    let stored = store
        .get_records("job-claimed", &RecordFilter::new())
        .await?;
    check_eq!(stored[0].processing_error.as_deref(), Some(NUL_TEXT));

    // Ids are refused before anything is written.
    let saved = store.save_job_state(&job(NUL_NAME, 10)).await;
    check!(is_invalid(&saved), "job id: {saved:?}");
    let records = store
        .save_batch_records("job-nul", NUL_NAME, &[record(5)])
        .await;
    check!(is_invalid(&records), "batch id: {records:?}");
    let records = store.save_batch_records(NUL_NAME, "b1", &[record(5)]).await;
    check!(is_invalid(&records), "job id of records: {records:?}");
    let claimed = store.claim_batch("job-claimed", NUL_NAME).await;
    check!(is_invalid(&claimed), "worker id: {claimed:?}");
    let claimed = store
        .claim_batch_with_id("job-claimed", "w2", NUL_NAME)
        .await;
    check!(is_invalid(&claimed), "claim id: {claimed:?}");
    let finalized = store
        .try_finalize_job_with_id("job-claimed", NUL_NAME)
        .await;
    check!(is_invalid(&finalized), "finalizer id: {finalized:?}");

    // Reads by such an id find nothing.
    check!(store.get_job_state(NUL_NAME).await?.is_none());
    check!(store.get_job_without_batches(NUL_NAME).await?.is_none());
    check!(
        store
            .get_records(NUL_NAME, &RecordFilter::new())
            .await?
            .is_empty()
    );
    check!(
        store
            .get_records("job-nul", &RecordFilter::new().batch(NUL_NAME))
            .await?
            .is_empty()
    );
    check!(
        store
            .get_batch_records("job-nul", NUL_NAME)
            .await?
            .is_empty()
    );
    check_eq!(store.get_progress(NUL_NAME).await?.total_records, 0);
    check_eq!(
        store.get_distributed_status(NUL_NAME).await?.total_batches,
        0
    );
    check_eq!(
        store
            .reclaim_stale_batches(NUL_NAME, Duration::from_secs(1))
            .await?,
        0
    );
    Ok(())
}

/// Numbers at the ends of their types in the batch store: limits of `u64::MAX`, an index of
/// `u64::MAX` to read after, a cutoff at either end of `i64`: typed answers, never a panic.
pub async fn batch_numbers_at_the_ends_of_their_types_never_panic(ctx: Ctx) -> CaseResult {
    let store = &ctx.store;
    store
        .save_batch_records("job-n", "b1", &[record(0), record(1)])
        .await?;
    check_eq!(
        store
            .get_records("job-n", &RecordFilter::new().limit(u64::MAX))
            .await?
            .len(),
        2
    );
    check!(
        store
            .get_records("job-n", &RecordFilter::new().after(u64::MAX))
            .await?
            .is_empty()
    );
    check_eq!(
        store
            .get_records(
                "job-n",
                &RecordFilter::new().after(u64::MAX - 1).limit(u64::MAX)
            )
            .await?
            .len(),
        0
    );
    check_eq!(store.prune_finished_jobs(i64::MAX, u64::MAX).await?, 0);
    check_eq!(store.prune_finished_jobs(i64::MIN, u64::MAX).await?, 0);
    let huge = store.reclaim_stale_batches("job-n", Duration::MAX).await?;
    check_eq!(huge, 0);
    Ok(())
}

/// An executor whose batch sizes and retention batch are `u64::MAX` (taken as "as many as
/// there are") runs a parent with children and a finalize task to the end, and its loops keep
/// running; an executor id that cannot be stored is refused when the first task is
/// registered, before any claim.
///
/// # Errors
///
/// The first expectation that does not hold, or an executor or storage error.
pub async fn executor_with_limits_at_the_end_of_u64_finishes_its_work(
    storage: Storage,
) -> CaseResult {
    use crate::task::executor::{
        Executor, ExecutorOptions, FinalizeInput, ParentOutcome, Retention, TaskDefinition,
        TaskError, WaitOptions,
    };

    let named = Executor::new(
        std::sync::Arc::clone(&storage),
        ExecutorOptions {
            executor_id: Some(NUL_NAME.to_owned()),
            ..super::executor::fast_options()
        },
    );
    let noop = TaskDefinition::new("noop", |_ctx, ()| async move { Ok::<_, TaskError>(()) });
    let registered = named.register(&noop);
    check!(
        is_invalid(&registered),
        "an executor id with U+0000: register gave {registered:?}"
    );

    let options = ExecutorOptions {
        claim_batch_size: u64::MAX,
        background_batch_size: u64::MAX,
        retention: Some(Retention {
            completed: Some(Duration::from_secs(3600)),
            batch_size: u64::MAX,
            interval: Duration::from_millis(50),
            ..Retention::default()
        }),
        ..super::executor::fast_options()
    };
    let executor = Executor::new(std::sync::Arc::clone(&storage), options);
    let child = TaskDefinition::new(
        "double",
        |_ctx, n: u32| async move { Ok::<_, TaskError>(n * 2) },
    );
    let sum = TaskDefinition::new("sum", |_ctx, input: FinalizeInput<()>| async move {
        Ok::<_, TaskError>(input.children.len())
    });
    executor.register(&child)?;
    let parent = TaskDefinition::parent("fan", move |_ctx, n: u32| {
        let child = child.clone();
        async move {
            Ok::<_, TaskError>((0..n).fold(ParentOutcome::new(()), |p, i| p.child(&child, &i)))
        }
    })
    .finalize(&sum);
    executor.register(&parent)?;
    executor.start();
    let wait = WaitOptions {
        poll_interval: Duration::from_millis(20),
        timeout: Some(Duration::from_secs(60)),
    };
    for round in 0..2 {
        let handle = executor.enqueue(&parent, &5).await?;
        let finished = handle.wait_with(&wait).await?;
        check!(
            finished.status() == TaskExecutionStatus::Completed,
            "round {round}: {:?}",
            finished.execution
        );
        check_eq!(finished.output, Some(5));
    }
    executor.shutdown().await;
    Ok(())
}

/// `n` four-byte characters: the widest a name at its limit can be in bytes (MySQL's `utf8mb4`
/// columns and index keys count them so).
fn wide(n: usize) -> String {
    "🚀".repeat(n)
}

/// Every name of the task port at its limit, counted in characters and written in four-byte
/// ones, is stored, found by and read back unchanged (execution and task ids, queue, wake key,
/// executor and claim ids, schedule id and a cron expression); one character more is refused
/// with [`Error::InvalidArgument`] before anything is written.
pub async fn names_at_their_limits_round_trip_one_more_is_refused(storage: Storage) -> CaseResult {
    use crate::dialect::column_len;
    use sea_orm_durable_migration::limit;
    let id_len = column_len(limit::TASK_ID_LEN);
    let queue_len = column_len(limit::QUEUE_LEN);
    let claim_len = column_len(limit::CLAIM_ID_LEN);
    let at_limit = |extra: usize| NewTaskExecution {
        execution_id: wide(id_len + extra),
        task_id: wide(id_len),
        queue: Some(wide(queue_len)),
        ..new_execution("unused")
    };
    let sleeper = NewTaskExecution {
        wake_key: Some(wide(id_len)),
        ..new_execution("sleeper")
    };
    storage
        .enqueue_task_executions(vec![at_limit(0), sleeper], T0)
        .await?;
    let claimed = storage
        .claim_task_executions(&ClaimParams {
            task_ids: Some(vec![wide(id_len)]),
            queues: Some(vec![wide(queue_len)]),
            claim_id: Some(wide(claim_len)),
            ..claim(&wide(id_len), T0, 10)
        })
        .await?;
    check_eq!(claimed.len(), 1);
    let stored = storage
        .get_task_execution(&wide(id_len))
        .await?
        .ok_or_else(|| CaseFailure::new("the execution with the longest id is not found"))?;
    check_eq!(stored.execution_id, wide(id_len));
    check_eq!(stored.task_id, wide(id_len));
    check_eq!(stored.queue, wide(queue_len));
    let sleeper = storage
        .get_task_execution("sleeper")
        .await?
        .ok_or_else(|| CaseFailure::new("the sleeper is not found"))?;
    check_eq!(sleeper.wake_key, Some(wide(id_len)));
    check_eq!(stored.executor_id, Some(wide(id_len)));
    check_eq!(stored.claim_id, Some(wide(claim_len)));

    let longest_schedule = TaskSchedule {
        task_id: wide(id_len),
        // A valid expression of exactly the limit: the minute 0 listed again and again.
        spec: ScheduleSpec::Cron {
            expression: format!(
                "0{} 3 * * *",
                ",0".repeat((crate::task::MAX_CRON_LEN - 9) / 2)
            ),
            time_zone: "UTC".to_owned(),
        },
        ..schedule(&wide(crate::task::MAX_SCHEDULE_ID_LEN))
    };
    if let ScheduleSpec::Cron { expression, .. } = &longest_schedule.spec {
        check_eq!(expression.chars().count(), crate::task::MAX_CRON_LEN);
    }
    storage.save_task_schedule(longest_schedule.clone()).await?;
    let schedules = storage.get_task_schedules().await?;
    check!(
        schedules
            .iter()
            .any(|s| s.same_definition(&longest_schedule)),
        "the schedule with the longest names did not read back: {schedules:?}"
    );

    // One character more: refused, and nothing written.
    let refused = [
        at_limit(1),
        NewTaskExecution {
            task_id: wide(id_len + 1),
            ..new_execution("long-task")
        },
        NewTaskExecution {
            queue: Some(wide(queue_len + 1)),
            ..new_execution("long-queue")
        },
        NewTaskExecution {
            wake_key: Some(wide(id_len + 1)),
            ..new_execution("long-key")
        },
    ];
    for e in refused {
        let result = storage.enqueue_task_executions(vec![e.clone()], T0).await;
        check!(is_invalid(&result), "{}: {result:?}", e.execution_id.len());
    }
    for params in [
        claim(&wide(id_len + 1), T0, 10),
        ClaimParams {
            claim_id: Some(wide(claim_len + 1)),
            ..claim("ex", T0, 10)
        },
    ] {
        let result = storage.claim_task_executions(&params).await;
        check!(is_invalid(&result), "claim: {result:?}");
    }
    for s in [
        schedule(&wide(crate::task::MAX_SCHEDULE_ID_LEN + 1)),
        TaskSchedule {
            spec: ScheduleSpec::Cron {
                expression: format!(
                    "0{} 3 * * *",
                    ",0".repeat((crate::task::MAX_CRON_LEN - 9) / 2 + 1)
                ),
                time_zone: "UTC".to_owned(),
            },
            ..schedule("long-cron")
        },
    ] {
        let result = storage.save_task_schedule(s).await;
        check!(is_invalid(&result), "schedule: {result:?}");
    }
    check_eq!(
        storage
            .get_task_executions(&TaskExecutionFilter::default())
            .await?
            .len(),
        2
    );
    check_eq!(storage.get_task_schedules().await?.len(), 1);
    Ok(())
}

/// Every id of the batch port at its limit, counted in characters and written in four-byte
/// ones (job, batch and worker ids, claim and finalizer ids), is stored, found by and read
/// back unchanged through a claim, a completion and the finalization; one character more is
/// refused with [`Error::InvalidArgument`].
pub async fn batch_names_at_their_limits_round_trip_one_more_is_refused(ctx: Ctx) -> CaseResult {
    use crate::batch::store::ClaimBatchResult;
    use crate::batch::{Batch, JobStatus};
    use crate::dialect::column_len;
    use sea_orm_durable_migration::limit;
    let store = &ctx.store;
    let id_len = column_len(limit::BATCH_ID_LEN);
    let claim_len = column_len(limit::CLAIM_ID_LEN);
    let (job_id, batch_id, worker_id) = (wide(id_len), "b".repeat(id_len), wide(id_len));
    let mut job = job(&job_id, 2);
    job.status = JobStatus::Processing;
    job.distributed = true;
    job.started_at = Some(T0);
    job.total_records = 2;
    job.batches = vec![Batch::new(batch_id.clone(), 0).with_records(0, 1)];
    store
        .save_batch_records(&job_id, &batch_id, &[record(0), record(1)])
        .await?;
    store.save_job_state(&job).await?;
    let reservation = match store
        .claim_batch_with_id(&job_id, &worker_id, &wide(claim_len))
        .await?
    {
        ClaimBatchResult::Claimed(r) => r,
        other => return Err(CaseFailure::new(format!("expected a claim, got {other:?}"))),
    };
    check_eq!(reservation.job_id, job_id);
    check_eq!(reservation.batch_id, batch_id);
    check_eq!(reservation.worker_id, worker_id);
    let outcomes = processed_outcomes(&ctx, &job_id, &batch_id).await?;
    check_eq!(outcomes.len(), 2);
    check!(
        store
            .complete_batch_with_outcomes(&reservation, BatchOutcome::completed(2, 0), &outcomes)
            .await?,
        "the completion by the longest ids did not hold"
    );
    check!(
        store
            .try_finalize_job_with_id(&job_id, &wide(claim_len))
            .await?,
        "the finalization by the longest finalizer id did not win"
    );
    let stored = store
        .get_job_state(&job_id)
        .await?
        .ok_or_else(|| CaseFailure::new("the job with the longest id is not found"))?;
    check_eq!(stored.id, job_id);
    check_eq!(stored.batches.len(), 1);
    check_eq!(stored.batches[0].id, batch_id);
    check_eq!(stored.batches[0].worker_id, Some(worker_id.clone()));

    // One character more: refused.
    let long_id = wide(id_len + 1);
    let saved = store.save_job_state(&self::job(&long_id, 2)).await;
    check!(is_invalid(&saved), "job id: {saved:?}");
    let records = store
        .save_batch_records(&job_id, &long_id, &[record(5)])
        .await;
    check!(is_invalid(&records), "batch id: {records:?}");
    let claimed = store.claim_batch(&job_id, &long_id).await;
    check!(is_invalid(&claimed), "worker id: {claimed:?}");
    let claimed = store
        .claim_batch_with_id(&job_id, "w", &wide(claim_len + 1))
        .await;
    check!(is_invalid(&claimed), "claim id: {claimed:?}");
    let finalized = store
        .try_finalize_job_with_id(&job_id, &wide(claim_len + 1))
        .await;
    check!(is_invalid(&finalized), "finalizer id: {finalized:?}");
    Ok(())
}

//! The batch state stores: the conformance suite on every implementation and backend, then
//! what only a real database can show (corrupt rows, the caller's transaction, many workers
//! on many connections).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use sea_orm::{ConnectionTrait, TransactionTrait};
use sea_orm_durable::batch::store::{
    BatchOutcome, ClaimBatchResult, DistributedStateStore, RecordFilter, StateStore,
};
use sea_orm_durable::batch::{InMemoryStateStore, ProcessedRecord, RecordStatus};
use sea_orm_durable::clock::ManualClock;
use sea_orm_durable::testkit::Setup;
use sea_orm_durable::testkit::batch::{
    RaceOptions, StoreUnderTest, distributed_job, pending_records, race_claim_complete_finalize,
};
use sea_orm_durable::{Error, SeaOrmStateStore};
use serde_json::json;

use crate::harness::{Backend, TestDb, per_backend, setup};

async fn memory_store(clock: ManualClock) -> anyhow::Result<Setup<StoreUnderTest>> {
    let store = InMemoryStateStore::with_clock(Arc::new(clock));
    Ok(Setup::Ready(StoreUnderTest::new(Arc::new(store))))
}

async fn sea_orm_store(
    backend: Backend,
    clock: ManualClock,
) -> anyhow::Result<Setup<StoreUnderTest>> {
    setup(backend, |t| -> Arc<dyn DistributedStateStore> {
        Arc::new(SeaOrmStateStore::with_clock(t.db.clone(), Arc::new(clock)))
    })
    .await
}

mod conformance {
    mod memory {
        sea_orm_durable::batch_store_conformance!(crate::batch::memory_store);
    }
    mod sqlite {
        sea_orm_durable::batch_store_conformance!(|clock| crate::batch::sea_orm_store(
            crate::harness::Backend::Sqlite,
            clock
        ));
    }
    mod postgres {
        sea_orm_durable::batch_store_conformance!(
            #[cfg_attr(durable_no_postgres, ignore = "DATABASE_URL_POSTGRES is not set")]
            factory: |clock| crate::batch::sea_orm_store(
            crate::harness::Backend::Postgres,
            clock
        ));
    }
    mod mysql {
        sea_orm_durable::batch_store_conformance!(
            #[cfg_attr(durable_no_mysql, ignore = "DATABASE_URL_MYSQL is not set")]
            factory: |clock| crate::batch::sea_orm_store(
            crate::harness::Backend::MySql,
            clock
        ));
    }
}

per_backend!(
    corrupt_record_row_is_named_and_other_rows_stay_readable,
    corrupt_batch_row_is_named_and_claims_go_on,
    corrupt_pending_batch_is_failed_and_the_job_finishes,
    corrupt_job_row_is_named_and_other_jobs_stay_readable,
    saves_join_the_callers_transaction,
    sixteen_workers_race_a_thousand_batches,
    a_version_at_the_end_of_bigint_wraps_instead_of_blocking_claims,
);

/// A batch whose version was left at the end of `BIGINT` (written behind the store's back) is
/// still claimed, released, reclaimed and completed: the version wraps to 1 instead of making
/// every claim of the job fail on an overflow, and the fence still holds.
async fn a_version_at_the_end_of_bigint_wraps_instead_of_blocking_claims(
    t: TestDb,
) -> anyhow::Result<()> {
    use sea_orm_durable::batch::store::{BatchOutcome, DistributedStateStore};
    let store = store(&t);
    sea_orm_durable::prepare(&store, "wrap", sea_orm_durable::JobConfig::new(2), 0..4).await?;
    t.db.execute_unprepared(
        "UPDATE batchactions_batches SET version = 9223372036854775807 WHERE job_id = 'wrap'",
    )
    .await?;
    let first = store.claim_batch("wrap", "w1").await?;
    let first = first.reservation().context("no batch claimed")?.clone();
    ensure!(first.version == 1, "version {}", first.version);
    ensure!(store.release_batch(&first).await?, "release refused");
    let again = store.claim_batch("wrap", "w2").await?;
    let again = again
        .reservation()
        .context("no batch claimed again")?
        .clone();
    ensure!(
        !store
            .complete_batch(&first, BatchOutcome::completed(2, 0))
            .await?,
        "the released claim still completed"
    );
    for reservation in [again] {
        ensure!(
            store
                .complete_batch(&reservation, BatchOutcome::completed(2, 0))
                .await?
        );
    }
    let second = store.claim_batch("wrap", "w1").await?;
    let second = second
        .reservation()
        .context("second batch not claimed")?
        .clone();
    ensure!(
        store
            .complete_batch(&second, BatchOutcome::completed(2, 0))
            .await?
    );
    Ok(())
}

fn store(t: &TestDb) -> SeaOrmStateStore {
    SeaOrmStateStore::new(t.db.clone())
}

/// Expects a corrupt-row error on `table`, `column`, with a key containing `key`.
fn expect_corrupt<T: std::fmt::Debug>(
    result: Result<T, Error>,
    table: &str,
    key: &str,
    column: &str,
) -> anyhow::Result<()> {
    match result {
        Err(Error::CorruptRow {
            table: t,
            key: k,
            column: c,
            reason,
        }) => {
            ensure!(t == table, "table {t}, expected {table}");
            ensure!(k.contains(key), "key {k}, expected it to name {key}");
            ensure!(c == column, "column {c}, expected {column}");
            ensure!(!reason.is_empty(), "no reason given");
            Ok(())
        }
        other => bail!("expected a corrupt {table}.{column} row, got {other:?}"),
    }
}

/// Damages one value the way this backend allows: SQLite stores any text in a JSON column,
/// PostgreSQL and MariaDB validate JSON, so there a status string is made unknown instead.
/// Returns the column that was damaged.
async fn damage(
    t: &TestDb,
    table: &str,
    json_column: &str,
    filter: &str,
) -> anyhow::Result<&'static str> {
    let (sql, column) = if t.backend == Backend::Sqlite {
        (
            format!("UPDATE {table} SET {json_column} = '{{not json' WHERE {filter}"),
            "json",
        )
    } else {
        (
            format!("UPDATE {table} SET status = 'EXPLODED' WHERE {filter}"),
            "status",
        )
    };
    let result = t.db.execute_unprepared(&sql).await?;
    ensure!(
        result.rows_affected() == 1,
        "damaged {} rows",
        result.rows_affected()
    );
    Ok(column)
}

async fn corrupt_record_row_is_named_and_other_rows_stay_readable(t: TestDb) -> anyhow::Result<()> {
    let store = store(&t);
    store
        .save_batch_records("job-1", "b1", &pending_records(0..10))
        .await?;
    store
        .save_batch_records("job-1", "b2", &pending_records(10..20))
        .await?;
    store
        .save_batch_records("job-2", "b1", &pending_records(0..10))
        .await?;
    let damaged = damage(
        &t,
        "batchactions_records",
        "raw",
        "job_id = 'job-1' AND record_index = 5",
    )
    .await?;
    let column = if damaged == "json" { "raw" } else { "status" };
    let key = "record_index=5";
    expect_corrupt(
        store.get_batch_records("job-1", "b1").await,
        "batchactions_records",
        key,
        column,
    )?;
    expect_corrupt(
        store.get_records("job-1", &RecordFilter::new()).await,
        "batchactions_records",
        key,
        column,
    )?;
    // Pages that do not contain the row read fine, so a reader can step over it.
    let before = store
        .get_records("job-1", &RecordFilter::new().limit(5))
        .await?;
    ensure!(before.len() == 5, "first page has {}", before.len());
    let after = store
        .get_records("job-1", &RecordFilter::new().after(5))
        .await?;
    ensure!(after.len() == 14, "rest has {}", after.len());
    ensure!(
        store.get_batch_records("job-1", "b2").await?.len() == 10,
        "other batch unreadable"
    );
    ensure!(
        store.get_batch_records("job-2", "b1").await?.len() == 10,
        "other job unreadable"
    );
    let progress = store.get_progress("job-1").await?;
    ensure!(
        progress.total_records == 20,
        "progress total {}",
        progress.total_records
    );
    // The damaged row is healed by saving the record again.
    store
        .save_processed_record(
            "job-1",
            "b1",
            &ProcessedRecord::pending(5, json!({ "n": 5 })),
        )
        .await?;
    ensure!(
        store.get_batch_records("job-1", "b1").await?.len() == 10,
        "not healed"
    );
    Ok(())
}

async fn corrupt_batch_row_is_named_and_claims_go_on(t: TestDb) -> anyhow::Result<()> {
    let store = store(&t);
    store
        .save_job_state(&distributed_job("job-1", 3, 2))
        .await?;
    t.db.execute_unprepared(
        "UPDATE batchactions_batches SET status = 'EXPLODED' WHERE id = 'job-1-b1'",
    )
    .await?;
    expect_corrupt(
        store.get_job_state("job-1").await,
        "batchactions_batches",
        "job-1-b1",
        "status",
    )?;
    // The damaged batch is never claimed, never counted as finished, and blocks
    // finalization; the other batches go on.
    let mut claimed = Vec::new();
    while let ClaimBatchResult::Claimed(r) = store.claim_batch("job-1", "w").await? {
        ensure!(
            store
                .complete_batch(&r, BatchOutcome::completed(2, 0))
                .await?,
            "refused"
        );
        claimed.push(r.batch_index);
    }
    ensure!(claimed == vec![0, 2], "claimed {claimed:?}");
    let status = store.get_distributed_status("job-1").await?;
    ensure!(
        status.total_batches == 3 && status.completed_batches == 2,
        "{status:?}"
    );
    ensure!(!status.is_complete, "an unknown status counted as finished");
    ensure!(
        !store.try_finalize_job("job-1").await?,
        "finalized past an unknown status"
    );
    t.db.execute_unprepared(
        "UPDATE batchactions_batches SET status = 'COMPLETED', processed_count = -1 WHERE id = 'job-1-b1'",
    )
    .await?;
    expect_corrupt(
        store.get_job_state("job-1").await,
        "batchactions_batches",
        "job-1-b1",
        "processed_count",
    )?;
    ensure!(store.try_finalize_job("job-1").await?, "finalize refused");
    Ok(())
}

/// A pending batch row that cannot be read (a negative record range here; on SQLite also
/// text in an integer column) does not block its job: the claim that meets it marks it
/// `FAILED`, the healthy batches are claimed and finished, and the job finishes `FAILED`.
async fn corrupt_pending_batch_is_failed_and_the_job_finishes(t: TestDb) -> anyhow::Result<()> {
    let store = store(&t);
    let mut damages = vec![
        "UPDATE batchactions_batches SET record_start_index = -1 WHERE id = 'job-1-b0'",
        "UPDATE batchactions_batches SET batch_index = -7 WHERE id = 'job-1-b2'",
    ];
    if t.backend == Backend::Sqlite {
        damages.push("UPDATE batchactions_batches SET version = 'x' WHERE id = 'job-1-b3'");
    }
    store
        .save_job_state(&distributed_job("job-1", 5, 2))
        .await?;
    for sql in &damages {
        t.db.execute_unprepared(sql).await?;
    }
    let mut claimed = Vec::new();
    loop {
        match store.claim_batch("job-1", "w").await? {
            ClaimBatchResult::Claimed(r) => {
                ensure!(
                    store
                        .complete_batch(&r, BatchOutcome::completed(2, 0))
                        .await?,
                    "refused"
                );
                claimed.push(r.batch_index);
            }
            ClaimBatchResult::NoPendingBatches => break,
            other => bail!("{other:?}"),
        }
    }
    let healthy = 5 - damages.len();
    ensure!(claimed.len() == healthy, "claimed {claimed:?}");
    let status = store.get_distributed_status("job-1").await?;
    ensure!(
        status.failed_batches == u64::try_from(damages.len())?
            && status.completed_batches == u64::try_from(healthy)?
            && status.is_complete,
        "{status:?}"
    );
    ensure!(store.try_finalize_job("job-1").await?, "finalize refused");
    let (job_status,): (String,) =
        sea_orm::FromQueryResult::find_by_statement(sea_orm::Statement::from_string(
            t.db_backend(),
            "SELECT status FROM batchactions_jobs WHERE id = 'job-1'",
        ))
        .one(&t.db)
        .await?
        .map(|row: JobStatusRow| (row.status,))
        .context("job gone")?;
    ensure!(job_status == "FAILED", "job {job_status}");
    Ok(())
}

#[derive(sea_orm::FromQueryResult)]
struct JobStatusRow {
    status: String,
}

async fn corrupt_job_row_is_named_and_other_jobs_stay_readable(t: TestDb) -> anyhow::Result<()> {
    let store = store(&t);
    store
        .save_job_state(&distributed_job("job-1", 2, 2))
        .await?;
    store
        .save_job_state(&distributed_job("job-2", 2, 2))
        .await?;
    let damaged = damage(&t, "batchactions_jobs", "config", "id = 'job-1'").await?;
    let column = if damaged == "json" {
        "config"
    } else {
        "status"
    };
    expect_corrupt(
        store.get_job_state("job-1").await,
        "batchactions_jobs",
        "job-1",
        column,
    )?;
    ensure!(
        store.get_job_state("job-2").await?.is_some(),
        "other job unreadable"
    );
    if damaged == "json" {
        // Progress does not need the configuration.
        ensure!(
            store.get_progress("job-1").await?.total_records == 4,
            "progress"
        );
    } else {
        expect_corrupt(
            store.claim_batch("job-1", "w").await,
            "batchactions_jobs",
            "job-1",
            "status",
        )?;
    }
    ensure!(
        store
            .claim_batch("job-2", "w")
            .await?
            .reservation()
            .is_some(),
        "job-2 unclaimable"
    );
    t.db.execute_unprepared("UPDATE batchactions_jobs SET total_records = -3 WHERE id = 'job-2'")
        .await?;
    expect_corrupt(
        store.get_job_state("job-2").await,
        "batchactions_jobs",
        "job-2",
        "total_records",
    )?;
    Ok(())
}

async fn saves_join_the_callers_transaction(t: TestDb) -> anyhow::Result<()> {
    let store = store(&t);
    let job = distributed_job("job-1", 2, 3);
    let txn = t.db.begin().await?;
    store
        .save_batch_records_in(&txn, "job-1", "job-1-b0", &pending_records(0..3))
        .await?;
    store.save_job_state_in(&txn, &job).await?;
    txn.rollback().await?;
    ensure!(
        store.get_job_state("job-1").await?.is_none(),
        "job outlived the rollback"
    );
    ensure!(
        store
            .get_batch_records("job-1", "job-1-b0")
            .await?
            .is_empty(),
        "records outlived it"
    );
    ensure!(
        store.claim_batch("job-1", "w").await? == ClaimBatchResult::JobNotFound,
        "claimable"
    );

    let txn = t.db.begin().await?;
    store
        .save_batch_records_in(&txn, "job-1", "job-1-b0", &pending_records(0..3))
        .await?;
    store.save_job_state_in(&txn, &job).await?;
    txn.commit().await?;
    let r = store
        .claim_batch("job-1", "w")
        .await?
        .reservation()
        .cloned()
        .context("no claim after commit")?;
    ensure!(
        store.get_batch_records("job-1", &r.batch_id).await?.len() == 3,
        "records"
    );
    Ok(())
}

/// The many-worker race on the real server: 16 workers on a pool of 16 over 1000 batches
/// (SQLite: 4 workers on a pool of 4, its writers being serialized anyway).
async fn sixteen_workers_race_a_thousand_batches(t: TestDb) -> anyhow::Result<()> {
    let workers = if t.backend == Backend::Sqlite { 4 } else { 16 };
    let pool = t.connect(u32::try_from(workers)?).await?;
    let store: Arc<dyn DistributedStateStore> = Arc::new(SeaOrmStateStore::new(pool));
    let options = RaceOptions {
        workers,
        batches: 1_000,
        records_per_batch: 2,
    };
    let started = Instant::now();
    let report = race_claim_complete_finalize(store, "race", options).await?;
    eprintln!(
        "race on {:?}: {} workers x {} batches in {:.2?} ({report:?})",
        t.backend,
        workers,
        options.batches,
        started.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_sixteen_workers_race_a_thousand_batches() -> anyhow::Result<()> {
    let store: Arc<dyn DistributedStateStore> = Arc::new(InMemoryStateStore::new());
    let started = Instant::now();
    let report = race_claim_complete_finalize(store, "race", RaceOptions::default()).await?;
    eprintln!(
        "race in memory: 16 workers x 1000 batches in {:.2?} ({report:?})",
        started.elapsed()
    );
    Ok(())
}

#[test]
fn record_status_strings_are_the_upstream_ones() -> anyhow::Result<()> {
    let all: Vec<&str> = RecordStatus::ALL.iter().map(|s| s.as_str()).collect();
    ensure!(
        all == ["valid", "invalid", "processed", "failed", "pending"],
        "{all:?}"
    );
    Ok(())
}

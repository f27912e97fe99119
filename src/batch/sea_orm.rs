//! [`SeaOrmStateStore`]: the batch ports on the application's own database.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sea_orm::sea_query::{Alias, Expr, ExprTrait, Func, OnConflict, Query};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, QueryTrait,
};
use sea_orm_durable_entity::{
    batchactions_batches as batches, batchactions_jobs as jobs, batchactions_records as records,
};

use super::check;
use super::mapper::{self, JobRow};
use super::model::{
    BatchOutcome, BatchReservation, BatchState, BatchStatus, ClaimBatchResult,
    DistributedJobStatus, JobProgress, JobState, JobStatus, ProcessedRecord,
    REQUEUE_WHILE_FINALIZING, RecordCounts, RecordFilter, RecordOutcome, RecordStatus,
    RequeuedRecords, requeue_refusal,
};
use super::store::{DistributedStateStore, StateStore};
use crate::clock::{self, Clock};
use crate::dialect::{self, Backoff, in_write_transaction, text};
use crate::error::{Error, Result};

/// A [`DistributedStateStore`] in the tables `batchactions_jobs`, `batchactions_batches` and
/// `batchactions_records`, on PostgreSQL, MySQL/MariaDB or SQLite.
///
/// Built from the application's [`DatabaseConnection`]; the tables come from this crate's
/// migrations. [`save_job_state_in`](Self::save_job_state_in) and
/// [`save_batch_records_in`](Self::save_batch_records_in) write inside the caller's
/// transaction, so a job can be prepared atomically with the application's own writes.
///
/// On SQLite, give the pool WAL mode and a busy timeout longer than the longest write
/// transaction: write transactions start `IMMEDIATE` and queue on the database lock.
///
/// A worker's loop:
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use sea_orm_durable::migration::{Migrator, MigratorTrait};
/// use sea_orm_durable::SeaOrmStateStore;
/// use sea_orm_durable::batch::store::{BatchOutcome, ClaimBatchResult, DistributedStateStore};
/// use std::time::Duration;
///
/// let db = sea_orm::Database::connect("sqlite://durable.db?mode=rwc").await?;
/// Migrator::up(&db, None).await?;
/// let store = SeaOrmStateStore::new(db);
/// store.reclaim_stale_batches("job-1", Duration::from_secs(900)).await?;
/// while let ClaimBatchResult::Claimed(claim) = store.claim_batch("job-1", "worker-1").await? {
///     let records = store.get_batch_records(&claim.job_id, &claim.batch_id).await?;
///     // ... process the records, saving outcomes with `save_processed_records` ...
///     let outcome = BatchOutcome::completed(u64::try_from(records.len())?, 0);
///     if !store.complete_batch(&claim, outcome).await? {
///         continue; // the claim was lost to a reclaim; another worker owns the batch now
///     }
/// }
/// store.try_finalize_job("job-1").await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct SeaOrmStateStore {
    db: DatabaseConnection,
    clock: Arc<dyn Clock>,
}

/// Longest a claim waits for pending batches locked by other claimers before giving up.
const CLAIM_WAIT_ROUNDS: u32 = 10_000;

impl SeaOrmStateStore {
    /// A store on `db`, reading the system clock.
    pub fn new(db: DatabaseConnection) -> Self {
        Self::with_clock(db, clock::system())
    }

    /// A store on `db`, reading `clock`.
    pub fn with_clock(db: DatabaseConnection, clock: Arc<dyn Clock>) -> Self {
        Self { db, clock }
    }

    /// The connection the store uses.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// [`StateStore::save_job_state`] on `conn`, typically the caller's transaction.
    ///
    /// # Errors
    ///
    /// As [`StateStore::save_job_state`]. After an error the transaction may be unusable
    /// (PostgreSQL aborts it); roll it back.
    #[tracing::instrument(skip_all, fields(job_id = %job.id), err)]
    pub async fn save_job_state_in<C: ConnectionTrait>(
        &self,
        conn: &C,
        job: &JobState,
    ) -> Result<()> {
        check::job(job)?;
        save_job(conn, job, self.clock.now_ms(), JobSave::Forward).await
    }

    /// [`DistributedStateStore::save_batch_records`] on `conn`, typically the caller's
    /// transaction.
    ///
    /// # Errors
    ///
    /// As [`DistributedStateStore::save_batch_records`].
    #[tracing::instrument(skip(self, conn, records), fields(records = records.len()), err)]
    pub async fn save_batch_records_in<C: ConnectionTrait>(
        &self,
        conn: &C,
        job_id: &str,
        batch_id: &str,
        records: &[ProcessedRecord],
    ) -> Result<()> {
        check::record_args(job_id, batch_id, records)?;
        let now = self.clock.now_ms();
        write_records(conn, job_id, batch_id, records, now, RecordWrite::IfAbsent).await
    }

    /// Checks `job` and saves it as `mode` says, in a write transaction.
    async fn write_job(&self, what: &'static str, job: &JobState, mode: JobSave) -> Result<()> {
        check::job(job)?;
        let now = self.clock.now_ms();
        in_write_transaction!(&self.db, what, |txn| save_job(&txn, job, now, mode))
    }

    /// Writes `records` as `mode` says: one statement on its own, several in one transaction
    /// so that a failure never leaves half a batch saved.
    async fn write_records(
        &self,
        what: &'static str,
        job_id: &str,
        batch_id: &str,
        records: &[ProcessedRecord],
        mode: RecordWrite,
    ) -> Result<()> {
        check::record_args(job_id, batch_id, records)?;
        let db = &self.db;
        let now = self.clock.now_ms();
        let inserts = &record_writes(
            db.get_database_backend(),
            job_id,
            batch_id,
            records,
            now,
            mode,
        )?;
        match inserts.as_slice() {
            [] => Ok(()),
            [insert] => {
                Backoff::STORE
                    .retry(what, || async move {
                        let _gate = dialect::enter_write(db).await;
                        db.execute(insert).await?;
                        Ok(())
                    })
                    .await
            }
            _ => in_write_transaction!(db, what, |txn| async {
                for insert in inserts {
                    txn.execute(insert).await?;
                }
                Ok::<_, Error>(())
            }),
        }
    }

    async fn claim_once(
        &self,
        job_id: &str,
        worker_id: &str,
        claim_id: &str,
    ) -> Result<ClaimBatchResult> {
        let backend = self.db.get_database_backend();
        for _ in 0..CLAIM_WAIT_ROUNDS {
            let _gate = dialect::enter_write(&self.db).await;
            let txn = dialect::begin_write(&self.db).await?;
            let status: Option<String> = jobs::Entity::find_by_id(job_id)
                .select_only()
                .column(jobs::Column::Status)
                .into_tuple()
                .one(&txn)
                .await?;
            let Some(status) = status else {
                txn.rollback().await?;
                return Ok(ClaimBatchResult::JobNotFound);
            };
            if mapper::job_status(job_id, &status)? != JobStatus::Processing {
                txn.rollback().await?;
                return Ok(ClaimBatchResult::JobNotProcessing);
            }
            // A claim under this id that took effect although its caller never heard of it
            // (a commit whose answer was lost): hand it out again.
            let held = txn
                .query_one(
                    &batches::Entity::find()
                        .filter(batches::Column::ClaimId.eq(claim_id))
                        .filter(batches::Column::JobId.eq(job_id))
                        .filter(batches::Column::Status.eq(BatchStatus::Processing.as_str()))
                        .into_query(),
                )
                .await?;
            if let Some(row) = held {
                let model = mapper::batch_model_from_row(&row)?;
                let reservation = mapper::held_reservation(&model, worker_id)?;
                txn.commit().await?;
                return Ok(ClaimBatchResult::Claimed(reservation));
            }
            // Only the id is selected: a row whose other columns cannot be read must still be
            // found, so that it is failed below instead of blocking every claim.
            let pending = batches::Entity::find()
                .select_only()
                .column(batches::Column::Id)
                .filter(batches::Column::JobId.eq(job_id))
                .filter(batches::Column::Status.eq(BatchStatus::Pending.as_str()))
                .order_by_asc(batches::Column::BatchIndex);
            // Skip rows other claimers hold, so claimers do not queue behind one row.
            let mut skip_locked = pending.clone();
            dialect::lock_skip_locked(backend, QueryTrait::query(&mut skip_locked));
            let candidate: Option<String> = skip_locked.into_tuple().one(&txn).await?;
            let Some(candidate) = candidate else {
                // SKIP LOCKED also hides pending rows that other transactions hold right now.
                // Only when a plain read sees none either is the job out of pending batches;
                // otherwise wait for those transactions to finish and look again.
                let locked_elsewhere = backend != DbBackend::Sqlite
                    && pending.into_tuple::<String>().one(&txn).await?.is_some();
                txn.commit().await?;
                if !locked_elsewhere {
                    return Ok(ClaimBatchResult::NoPendingBatches);
                }
                tokio::time::sleep(dialect::jitter(Duration::from_millis(2))).await;
                continue;
            };
            let now = self.clock.now_ms();
            let row = txn
                .query_one(&batches::Entity::find_by_id(candidate.as_str()).into_query())
                .await?;
            let read = row
                .as_ref()
                .map(mapper::batch_model_from_row)
                .transpose()
                .and_then(|model| {
                    let reservation = model
                        .as_ref()
                        .map(|m| mapper::reservation_from_model(m, worker_id, now))
                        .transpose()?;
                    Ok(model.zip(reservation))
                });
            let (candidate, reservation) = match read {
                Ok(Some(read)) => read,
                // Gone between the two reads (only possible without row locks): look again.
                Ok(None) => {
                    txn.rollback().await?;
                    continue;
                }
                Err(err @ Error::CorruptRow { .. }) => {
                    // Handing it out would fail every claim of the job from now on, and leaving
                    // it pending would keep the job from ever finishing: fail the batch (the job
                    // finishes FAILED) and go on with the next one.
                    tracing::error!(batch_id = %candidate, error = %err, "pending batch cannot be read; failing it");
                    batches::Entity::update_many()
                        .col_expr(
                            batches::Column::Status,
                            Expr::value(BatchStatus::Failed.as_str()),
                        )
                        .col_expr(
                            batches::Column::Version,
                            dialect::next_token_expr(batches::Column::Version),
                        )
                        .col_expr(batches::Column::CompletedAt, Expr::value(now))
                        .col_expr(batches::Column::UpdatedAt, Expr::value(now))
                        .filter(batches::Column::Id.eq(&candidate))
                        .filter(batches::Column::Status.eq(BatchStatus::Pending.as_str()))
                        .exec(&txn)
                        .await?;
                    txn.commit().await?;
                    continue;
                }
                Err(err) => return Err(err),
            };
            let claimed = batches::Entity::update_many()
                .col_expr(
                    batches::Column::Status,
                    Expr::value(BatchStatus::Processing.as_str()),
                )
                .col_expr(batches::Column::WorkerId, Expr::value(worker_id))
                .col_expr(batches::Column::ClaimId, Expr::value(claim_id))
                .col_expr(batches::Column::ClaimedAt, Expr::value(now))
                .col_expr(batches::Column::HeartbeatAt, Expr::value(now))
                .col_expr(batches::Column::UpdatedAt, Expr::value(now))
                .col_expr(
                    batches::Column::Version,
                    dialect::next_token_expr(batches::Column::Version),
                )
                .filter(batches::Column::Id.eq(&candidate.id))
                .filter(batches::Column::Version.eq(candidate.version))
                .filter(batches::Column::Status.eq(BatchStatus::Pending.as_str()))
                .exec(&txn)
                .await?;
            if claimed.rows_affected != 1 {
                // Someone changed the row between the read and the compare-and-swap (possible
                // only where the read took no lock): try the next pending batch.
                txn.rollback().await?;
                continue;
            }
            txn.commit().await?;
            return Ok(ClaimBatchResult::Claimed(reservation));
        }
        Err(Error::conflict(format!(
            "pending batches of job {job_id} stayed locked by other transactions"
        )))
    }
}

/// Whether a job save may move a finished job back to an unfinished status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobSave {
    /// [`StateStore::save_job_state`]: never backwards.
    Forward,
    /// [`StateStore::reset_job_state`]: whatever the stored status.
    Reset,
}

/// `INSERT INTO batchactions_jobs` of the row for `job`.
fn job_insert(
    backend: DbBackend,
    job: &JobState,
    now: i64,
) -> Result<sea_orm::sea_query::InsertStatement> {
    let mut insert = Query::insert();
    insert
        .into_table(jobs::Entity)
        .columns(mapper::JOB_COLUMNS)
        .values(mapper::job_values(backend, job, now)?)
        .map_err(dialect::statement_error)?;
    Ok(insert)
}

/// The stored status of job `job_id`, `None` when there is no such job. Inside a write
/// transaction the row stays locked until it ends (SQLite's write transaction holds the whole
/// database already).
async fn stored_job_status<C: ConnectionTrait>(conn: &C, job_id: &str) -> Result<Option<String>> {
    let mut select = jobs::Entity::find_by_id(job_id)
        .select_only()
        .column(jobs::Column::Status);
    dialect::lock_for_update(conn.get_database_backend(), QueryTrait::query(&mut select));
    Ok(select.into_tuple().one(conn).await?)
}

/// The finished statuses a prune may delete.
const FINISHED_JOB_STATUSES: [JobStatus; 3] =
    [JobStatus::Completed, JobStatus::Failed, JobStatus::Aborted];

/// Deletes up to `limit` rows of the oldest finished job completed before `finished_before`:
/// records, then batches, then the job row. `conn` must be a write transaction: the job row is
/// locked and its status checked again first, so a job reset meanwhile is left alone.
async fn prune_oldest_job<C: ConnectionTrait>(
    conn: &C,
    finished_before: i64,
    limit: u64,
) -> Result<u64> {
    let finished = FINISHED_JOB_STATUSES.map(JobStatus::as_str);
    let oldest: Option<String> = jobs::Entity::find()
        .select_only()
        .column(jobs::Column::Id)
        .filter(jobs::Column::Status.is_in(finished))
        .filter(jobs::Column::CompletedAt.lt(finished_before))
        .order_by_asc(jobs::Column::CompletedAt)
        .order_by_asc(jobs::Column::Id)
        .into_tuple()
        .one(conn)
        .await?;
    let Some(job_id) = oldest else {
        return Ok(0);
    };
    let still_finished = stored_job_status(conn, &job_id)
        .await?
        .and_then(|s| s.parse::<JobStatus>().ok())
        .is_some_and(|s| s.is_terminal());
    if !still_finished {
        return Ok(0);
    }
    let backend = conn.get_database_backend();
    let mut deleted = 0;
    // Records, then batches, each in bounded statements (MySQL: `DELETE … ORDER BY … LIMIT`,
    // which it has and PostgreSQL lacks; elsewhere a key subquery with the limit, which MySQL
    // refuses).
    for (table, key, order) in [
        ("batchactions_records", "record_index", "record_index"),
        ("batchactions_batches", "id", "batch_index"),
    ] {
        let budget = crate::dialect::sql_limit(limit.saturating_sub(deleted));
        if budget == 0 {
            return Ok(deleted);
        }
        let sql = match backend {
            DbBackend::MySql => {
                format!("DELETE FROM {table} WHERE job_id = ? ORDER BY {order} LIMIT {budget}")
            }
            DbBackend::Postgres => format!(
                "DELETE FROM {table} WHERE job_id = $1 AND {key} IN \
                 (SELECT {key} FROM {table} WHERE job_id = $1 ORDER BY {order} LIMIT {budget})"
            ),
            _ => format!(
                "DELETE FROM {table} WHERE job_id = ?1 AND {key} IN \
                 (SELECT {key} FROM {table} WHERE job_id = ?1 ORDER BY {order} LIMIT {budget})"
            ),
        };
        let result = conn
            .execute_raw(sea_orm::Statement::from_sql_and_values(
                backend,
                sql,
                [job_id.as_str().into()],
            ))
            .await?;
        deleted += result.rows_affected();
        if deleted >= limit {
            return Ok(deleted);
        }
    }
    let result = jobs::Entity::delete_many()
        .filter(jobs::Column::Id.eq(job_id.as_str()))
        .filter(jobs::Column::Status.is_in(finished))
        .exec(conn)
        .await?;
    Ok(deleted + result.rows_affected)
}

/// Upserts the job row and, for a distributed job, inserts the batch rows it lacks.
async fn save_job<C: ConnectionTrait>(
    conn: &C,
    job: &JobState,
    now: i64,
    mode: JobSave,
) -> Result<()> {
    if mode == JobSave::Forward && !job.status.is_terminal() {
        // A status this version does not know is not "finished": saving repairs it.
        let stored = stored_job_status(conn, &job.id)
            .await?
            .and_then(|s| s.parse::<JobStatus>().ok());
        if let Some(stored) = stored.filter(|s| s.is_terminal()) {
            return Err(Error::conflict(format!(
                "job {} is {stored}; saving it as {} would move it back (reset_job_state does that on purpose)",
                job.id, job.status
            )));
        }
    }
    let mut upsert = job_insert(conn.get_database_backend(), job, now)?;
    upsert.on_conflict(
        // Every column written but the key and the creation time.
        OnConflict::column(jobs::Column::Id)
            .update_columns(
                mapper::JOB_COLUMNS
                    .into_iter()
                    .filter(|c| !matches!(c, jobs::Column::Id | jobs::Column::CreatedAt)),
            )
            .to_owned(),
    );
    conn.execute(&upsert).await?;
    if job.distributed {
        insert_batches(conn, job, now).await?;
    }
    Ok(())
}

/// Inserts the job row for `job` unless job `job.id` exists; returns whether it did.
async fn create_job_in<C: ConnectionTrait>(conn: &C, job: &JobState, now: i64) -> Result<bool> {
    let insert = job_insert(conn.get_database_backend(), job, now)?;
    dialect::insert_one_if_absent(conn, insert, [jobs::Column::Id]).await
}

/// [`DistributedStateStore::start_job`] inside write transaction `conn`.
async fn start_job_in<C: ConnectionTrait>(conn: &C, job: &JobState, now: i64) -> Result<bool> {
    // The job row stays locked from here, so concurrent starters queue and the later ones
    // find it started.
    let Some(status) = stored_job_status(conn, &job.id).await? else {
        return Ok(false);
    };
    if status != JobStatus::Created.as_str() {
        return Ok(false);
    }
    insert_batches(conn, job, now).await?;
    let backend = conn.get_database_backend();
    let completed_at = job
        .completed_at
        .or_else(|| job.status.is_terminal().then_some(now));
    let started = jobs::Entity::update_many()
        .col_expr(jobs::Column::Status, Expr::value(job.status.as_str()))
        .col_expr(
            jobs::Column::Config,
            dialect::json_expr(backend, &serde_json::to_value(&job.config)?),
        )
        .col_expr(
            jobs::Column::TotalRecords,
            Expr::value(check::fits_i64("job.total_records", job.total_records)?),
        )
        .col_expr(
            jobs::Column::StartedAt,
            Expr::value(job.started_at.unwrap_or(now)),
        )
        .col_expr(jobs::Column::CompletedAt, Expr::value(completed_at))
        .col_expr(jobs::Column::Distributed, Expr::value(true))
        .col_expr(jobs::Column::UpdatedAt, Expr::value(now))
        .filter(jobs::Column::Id.eq(&job.id))
        .filter(jobs::Column::Status.eq(JobStatus::Created.as_str()))
        .exec(conn)
        .await?;
    Ok(started.rows_affected == 1)
}

/// Inserts the batch rows distributed job `job` lacks (matched by job and index); rows that
/// exist are left exactly as they are.
async fn insert_batches<C: ConnectionTrait>(conn: &C, job: &JobState, now: i64) -> Result<()> {
    if job.batches.is_empty() {
        return Ok(());
    }
    let backend = conn.get_database_backend();
    let rows = job
        .batches
        .iter()
        .map(|b| Ok((b.index, mapper::batch_to_model(&job.id, b, now)?)))
        .collect::<Result<Vec<_>>>()?;
    // Batch rows are small.
    let columns = dialect::column_count::<batches::Entity>();
    for chunk in dialect::chunks(backend, columns, &rows, |_| 256) {
        let mut insert =
            batches::Entity::insert_many(chunk.iter().map(|(_, model)| model.clone())).into_query();
        // Insert-if-absent by (job, index): a batch that already has a row keeps it as it is.
        // On MySQL it also swallows a clash of the batch id with another row, so that case is
        // checked below.
        insert.on_conflict(dialect::if_absent([
            batches::Column::JobId,
            batches::Column::BatchIndex,
        ]));
        conn.execute(&insert).await?;
        if backend == DbBackend::MySql {
            let indexes: Vec<i32> = chunk
                .iter()
                .filter_map(|(index, _)| i32::try_from(*index).ok())
                .collect();
            let present = batches::Entity::find()
                .filter(batches::Column::JobId.eq(&job.id))
                .filter(batches::Column::BatchIndex.is_in(indexes.iter().copied()))
                .count(conn)
                .await?;
            if present != u64::try_from(indexes.len()).unwrap_or(u64::MAX) {
                return Err(Error::conflict(format!(
                    "a batch id of job {} is already taken by another batch",
                    job.id
                )));
            }
        }
    }
    Ok(())
}

/// What a record write does to a record already stored at the same index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecordWrite {
    /// Leave it exactly as it is ([`DistributedStateStore::save_batch_records`]).
    IfAbsent,
    /// Replace it, unless that moves a finished record back to `pending` or `valid`
    /// ([`DistributedStateStore::save_processed_records`]).
    Forward,
    /// Replace it whatever it is ([`StateStore::reset_records`]).
    Replace,
}

/// Record statuses that are an outcome.
const FINISHED_RECORDS: [&str; 3] = ["processed", "failed", "invalid"];
/// Record statuses still waiting for an outcome.
const UNFINISHED_RECORDS: [&str; 2] = ["pending", "valid"];

/// Columns a record write replaces, `status` last: MySQL evaluates `ON DUPLICATE KEY UPDATE`
/// assignments in order, and the forward-only guard reads the stored status.
const REPLACED_RECORD_COLUMNS: [(records::Column, &str); 8] = [
    (records::Column::BatchId, "batch_id"),
    (records::Column::Raw, "raw"),
    (records::Column::Parsed, "parsed"),
    (records::Column::Errors, "errors"),
    (records::Column::ProcessingError, "processing_error"),
    (records::Column::RetryCount, "retry_count"),
    (records::Column::UpdatedAt, "updated_at"),
    (records::Column::Status, "status"),
];

/// The conflict clause of a record write of kind `mode` on `backend`.
fn record_conflict(backend: DbBackend, mode: RecordWrite) -> OnConflict {
    let key = [records::Column::JobId, records::Column::RecordIndex];
    let mut on_conflict = OnConflict::columns(key);
    match (mode, backend) {
        (RecordWrite::IfAbsent, _) => return dialect::if_absent(key),
        (RecordWrite::Replace, _) => {
            on_conflict.update_columns(REPLACED_RECORD_COLUMNS.map(|(column, _)| column));
        }
        // MySQL has no WHERE on `ON DUPLICATE KEY UPDATE`: each column keeps its stored value
        // when the write would move a finished record back.
        (RecordWrite::Forward, DbBackend::MySql) => {
            let quote = |list: &[&str]| {
                list.iter()
                    .map(|s| format!("'{s}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let backwards = format!(
                "`status` IN ({}) AND VALUES(`status`) IN ({})",
                quote(&FINISHED_RECORDS),
                quote(&UNFINISHED_RECORDS)
            );
            on_conflict.values(REPLACED_RECORD_COLUMNS.map(|(column, name)| {
                (
                    column,
                    Expr::cust(format!("IF({backwards}, `{name}`, VALUES(`{name}`))")),
                )
            }));
        }
        // PostgreSQL and SQLite: the update applies only where it does not move backwards.
        (RecordWrite::Forward, _) => {
            on_conflict
                .update_columns(REPLACED_RECORD_COLUMNS.map(|(column, _)| column))
                .action_and_where(
                    Expr::col((records::Entity, records::Column::Status))
                        .is_in(FINISHED_RECORDS)
                        .and(
                            Expr::col((Alias::new("excluded"), records::Column::Status))
                                .is_in(UNFINISHED_RECORDS),
                        )
                        .not(),
                );
        }
    }
    on_conflict.to_owned()
}

/// The statements that write `records` of `job_id` for `batch_id` as `mode` says: as few as
/// the backend's parameter and byte limits allow ([`dialect::chunks`]), each one
/// `INSERT … ON CONFLICT (job_id, record_index) …` (PostgreSQL, SQLite) or
/// `INSERT … ON DUPLICATE KEY UPDATE …` (MySQL), so writing again never fails.
fn record_writes(
    backend: DbBackend,
    job_id: &str,
    batch_id: &str,
    records: &[ProcessedRecord],
    now: i64,
    mode: RecordWrite,
) -> Result<Vec<sea_orm::sea_query::InsertStatement>> {
    // One statement cannot touch a row twice (PostgreSQL refuses), so the last outcome of an
    // index wins before anything is sent.
    let mut latest: BTreeMap<u64, &ProcessedRecord> = BTreeMap::new();
    for record in records {
        latest.insert(record.index, record);
    }
    let rows = latest
        .values()
        .map(|r| {
            let size = mapper::json_size(&r.raw)
                + mapper::json_size(&r.parsed)
                + r.processing_error.as_ref().map_or(0, String::len)
                + r.errors.len() * 128
                + job_id.len()
                + batch_id.len()
                + 64;
            Ok((
                size,
                mapper::record_values(backend, job_id, batch_id, r, now)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let on_conflict = record_conflict(backend, mode);
    let mut statements = Vec::new();
    for chunk in dialect::chunks(backend, mapper::RECORD_COLUMNS.len(), &rows, |(size, _)| {
        *size
    }) {
        let mut insert = Query::insert();
        insert
            .into_table(records::Entity)
            .columns(mapper::RECORD_COLUMNS);
        for (_, values) in chunk {
            insert
                .values(values.clone())
                .map_err(dialect::statement_error)?;
        }
        insert.on_conflict(on_conflict.clone());
        statements.push(insert);
    }
    Ok(statements)
}

/// Runs the record writes on `conn` (the caller's transaction, if any, makes them atomic).
async fn write_records<C: ConnectionTrait>(
    conn: &C,
    job_id: &str,
    batch_id: &str,
    records: &[ProcessedRecord],
    now: i64,
    mode: RecordWrite,
) -> Result<()> {
    let backend = conn.get_database_backend();
    for insert in record_writes(backend, job_id, batch_id, records, now, mode)? {
        conn.execute(&insert).await?;
    }
    Ok(())
}

/// The batches of distributed job `job_id`, in index order.
async fn load_batches<C: ConnectionTrait>(
    conn: &C,
    job_id: &str,
) -> Result<Vec<super::model::Batch>> {
    batches::Entity::find()
        .filter(batches::Column::JobId.eq(job_id))
        .order_by_asc(batches::Column::BatchIndex)
        .all(conn)
        .await?
        .iter()
        .map(mapper::batch_from_model)
        .collect()
}

/// `(status, count)` of the rows of job `job_id` in a table, grouped by status.
async fn count_by_status<C, E>(
    conn: &C,
    job_id: &str,
    job_column: E::Column,
    status: E::Column,
) -> Result<Vec<(String, u64)>>
where
    C: ConnectionTrait,
    E: EntityTrait,
{
    let rows: Vec<(String, i64)> = E::find()
        .select_only()
        .column(status)
        .column_as(Expr::from(Func::count(Expr::col(job_column))), "n")
        .filter(job_column.eq(job_id))
        .group_by(status)
        .into_tuple()
        .all(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(s, n)| (s, u64::try_from(n).unwrap_or(0)))
        .collect())
}

/// Batch counts of job `job_id` from its batch rows.
async fn distributed_status<C: ConnectionTrait>(
    conn: &C,
    job_id: &str,
) -> Result<DistributedJobStatus> {
    let mut status = DistributedJobStatus::empty(job_id);
    for (text, n) in count_by_status::<_, batches::Entity>(
        conn,
        job_id,
        batches::Column::JobId,
        batches::Column::Status,
    )
    .await?
    {
        status.count(text.parse().ok(), n);
    }
    Ok(status)
}

/// [`StateStore::update_batch_state`] inside write transaction `txn`.
async fn update_batch_state_in<C: ConnectionTrait>(
    txn: &C,
    job_id: &str,
    batch_id: &str,
    new: &BatchState,
    now: i64,
) -> Result<()> {
    let backend = txn.get_database_backend();
    // The job row's batch list is read, changed and written back: hold the row meanwhile.
    let mut select = jobs::Entity::find_by_id(job_id);
    dialect::lock_for_update(backend, QueryTrait::query(&mut select));
    let Some(row) = txn.query_one(&select.into_query()).await? else {
        return Ok(());
    };
    let job = JobRow::read(&row, false)?;
    let processed = check::fits_i64("state.processed_count", new.processed_count)?;
    let failed = check::fits_i64("state.failed_count", new.failed_count)?;
    if !job.job.distributed {
        let mut list = job.stored_batches()?;
        let mut changed = false;
        // Upstream restores can leave two entries with one id; both get the new state.
        for batch in list.iter_mut().filter(|b| b.id == batch_id) {
            batch.status = new.status;
            batch.processed_count = new.processed_count;
            batch.failed_count = new.failed_count;
            changed = true;
        }
        if changed {
            jobs::Entity::update_many()
                .col_expr(
                    jobs::Column::Batches,
                    dialect::json_expr(backend, &serde_json::to_value(&list)?),
                )
                .col_expr(jobs::Column::UpdatedAt, Expr::value(now))
                .filter(jobs::Column::Id.eq(job_id))
                .exec(txn)
                .await?;
        }
        return Ok(());
    }
    let mut select = batches::Entity::find()
        .filter(batches::Column::Id.eq(batch_id))
        .filter(batches::Column::JobId.eq(job_id));
    dialect::lock_for_update(backend, QueryTrait::query(&mut select));
    let Some(batch) = select.one(txn).await? else {
        return Ok(());
    };
    let mut update = batches::Entity::update_many()
        .col_expr(batches::Column::Status, Expr::value(new.status.as_str()))
        .col_expr(batches::Column::ProcessedCount, Expr::value(processed))
        .col_expr(batches::Column::FailedCount, Expr::value(failed))
        .col_expr(batches::Column::UpdatedAt, Expr::value(now));
    if batch.status != new.status.as_str() {
        // A status change from outside the claim protocol fences whoever held the batch, and
        // its claim id no longer names a claim.
        update = update.col_expr(
            batches::Column::Version,
            Expr::value(dialect::next_token(batch.version)),
        );
        update = match new.status {
            BatchStatus::Pending => without_owner(update),
            status => {
                let update = update.col_expr(
                    batches::Column::ClaimId,
                    Expr::value(Option::<String>::None),
                );
                match status {
                    BatchStatus::Processing => {
                        update.col_expr(batches::Column::HeartbeatAt, Expr::value(now))
                    }
                    BatchStatus::Completed | BatchStatus::Failed => {
                        update.col_expr(batches::Column::CompletedAt, Expr::value(now))
                    }
                    BatchStatus::Pending | BatchStatus::Paused => update,
                }
            }
        };
    }
    update
        .filter(batches::Column::Id.eq(batch_id))
        .exec(txn)
        .await?;
    Ok(())
}

/// The single conditional UPDATE that finalizes job `job_id`: it matches only while the job is
/// `PROCESSING`, has batches, and has none that is not `COMPLETED` or `FAILED` (unknown
/// statuses block it); it writes `FAILED` when a batch failed. However many callers race,
/// the row leaves `PROCESSING` once, so one of them sees a row affected.
async fn finalize<C: ConnectionTrait>(
    conn: &C,
    job_id: &str,
    finalizer_id: &str,
    now: i64,
) -> Result<bool> {
    let of_job = || {
        Query::select()
            .expr(Expr::val(1))
            .from(batches::Entity)
            .and_where(Expr::col((batches::Entity, batches::Column::JobId)).eq(job_id))
            .to_owned()
    };
    let any_batch = of_job();
    // The statuses are SQL literals, not parameters, so that the planners can use the partial
    // indexes `ix_batchactions_batches_unfinished` and `ix_batchactions_batches_failed`: each
    // question is one index probe, however many batches have finished.
    let literal = |status: BatchStatus| Expr::cust(format!("'{}'", status.as_str()));
    let unfinished = of_job()
        .and_where(
            Expr::col((batches::Entity, batches::Column::Status)).is_not_in([
                literal(BatchStatus::Completed),
                literal(BatchStatus::Failed),
            ]),
        )
        .to_owned();
    let failed = of_job()
        .and_where(
            Expr::col((batches::Entity, batches::Column::Status)).eq(literal(BatchStatus::Failed)),
        )
        .to_owned();
    let result = jobs::Entity::update_many()
        .col_expr(
            jobs::Column::Status,
            Expr::case(Expr::exists(failed), JobStatus::Failed.as_str())
                .finally(JobStatus::Completed.as_str())
                .into(),
        )
        .col_expr(jobs::Column::CompletedAt, Expr::value(now))
        .col_expr(jobs::Column::UpdatedAt, Expr::value(now))
        .col_expr(jobs::Column::FinalizedBy, Expr::value(finalizer_id))
        .filter(jobs::Column::Id.eq(job_id))
        .filter(jobs::Column::Status.eq(JobStatus::Processing.as_str()))
        .filter(Expr::exists(any_batch))
        .filter(Expr::not_exists(unfinished))
        .exec(conn)
        .await?;
    if result.rows_affected == 1 {
        return Ok(true);
    }
    // Not finalized now; but maybe by this finalizer before (its answer lost on the way).
    let stored: Option<(String, Option<String>)> = jobs::Entity::find_by_id(job_id)
        .select_only()
        .column(jobs::Column::Status)
        .column(jobs::Column::FinalizedBy)
        .into_tuple()
        .one(conn)
        .await?;
    Ok(stored.is_some_and(|(status, by)| {
        status
            .parse::<JobStatus>()
            .is_ok_and(JobStatus::is_terminal)
            && by.as_deref() == Some(finalizer_id)
    }))
}

/// [`DistributedStateStore::requeue_failed_records`] inside write transaction `conn`.
///
/// The job row is locked first, so the requeue and any other writer of the job row (a save, a
/// finalization) are ordered. A finished job cannot be finalized meanwhile (a finalization only
/// matches a `PROCESSING` row, and a reader that does not wait for the lock sees the finished
/// one). A `PROCESSING` job could be: a finalization whose statement read the batches before
/// this commit, and then waited for the job row, would still see them finished. So one of its
/// unfinished batches is locked too, and there must be one: a completion of that batch waits for
/// this commit, so no finalization can read the batches all finished before it.
///
/// `retried` says that an earlier attempt of the same call (the same `now`) may have committed
/// without its reply arriving. Finding nothing to requeue then, it answers what that attempt
/// did, read back from the rows it stamped with `now` (see [`requeued_at`]).
async fn requeue_in<C: ConnectionTrait>(
    conn: &C,
    job_id: &str,
    now: i64,
    retried: bool,
) -> Result<RequeuedRecords> {
    let backend = conn.get_database_backend();
    let mut select = jobs::Entity::find_by_id(job_id)
        .select_only()
        .column(jobs::Column::Status)
        .column(jobs::Column::Distributed);
    dialect::lock_for_update(backend, QueryTrait::query(&mut select));
    let (status, distributed): (String, bool) =
        select
            .into_tuple()
            .one(conn)
            .await?
            .ok_or_else(|| Error::NotFound {
                entity: "job",
                key: job_id.to_owned(),
            })?;
    let status: JobStatus = status
        .parse()
        .map_err(|e| Error::corrupt("batchactions_jobs", job_id, "status", e))?;
    if let Some(reason) = requeue_refusal(status, distributed) {
        return Err(Error::invalid_state("job", job_id, reason));
    }
    let failed = RecordStatus::Failed.as_str();
    let count_failed = || {
        records::Entity::find()
            .filter(records::Column::JobId.eq(job_id))
            .filter(records::Column::Status.eq(failed))
            .count(conn)
    };
    let mut done = RequeuedRecords {
        records: 0,
        batches: 0,
        left_failed: 0,
        job_status: status,
    };
    if count_failed().await? == 0 {
        if retried {
            requeued_at(conn, job_id, now, &mut done).await?;
        }
        return Ok(done);
    }
    let finished = [
        BatchStatus::Completed.as_str(),
        BatchStatus::Failed.as_str(),
    ];
    if status == JobStatus::Processing {
        let mut unfinished = batches::Entity::find()
            .select_only()
            .column(batches::Column::Id)
            .filter(batches::Column::JobId.eq(job_id))
            .filter(batches::Column::Status.is_not_in(finished))
            .limit(1);
        dialect::lock_for_update(backend, QueryTrait::query(&mut unfinished));
        let held: Option<String> = unfinished.into_tuple().one(conn).await?;
        if held.is_none() {
            return Err(Error::invalid_state(
                "job",
                job_id,
                REQUEUE_WHILE_FINALIZING,
            ));
        }
    }
    let batches_with_failed = Query::select()
        .column(records::Column::BatchId)
        .from(records::Entity)
        .and_where(Expr::col(records::Column::JobId).eq(job_id))
        .and_where(Expr::col(records::Column::Status).eq(failed))
        .to_owned();
    done.batches = back_to_pending(now)
        .col_expr(batches::Column::FailedCount, Expr::value(0_i64))
        .col_expr(
            batches::Column::CompletedAt,
            Expr::value(Option::<i64>::None),
        )
        .filter(batches::Column::JobId.eq(job_id))
        .filter(batches::Column::Status.is_in(finished))
        .filter(batches::Column::Id.in_subquery(batches_with_failed))
        .exec(conn)
        .await?
        .rows_affected;
    let pending_batches = Query::select()
        .column(batches::Column::Id)
        .from(batches::Entity)
        .and_where(Expr::col(batches::Column::JobId).eq(job_id))
        .and_where(Expr::col(batches::Column::Status).eq(BatchStatus::Pending.as_str()))
        .to_owned();
    done.records = records::Entity::update_many()
        .col_expr(
            records::Column::Status,
            Expr::value(RecordStatus::Pending.as_str()),
        )
        .col_expr(
            records::Column::ProcessingError,
            Expr::value(Option::<String>::None),
        )
        .col_expr(records::Column::UpdatedAt, Expr::value(now))
        .filter(records::Column::JobId.eq(job_id))
        .filter(records::Column::Status.eq(failed))
        .filter(records::Column::BatchId.in_subquery(pending_batches))
        .exec(conn)
        .await?
        .rows_affected;
    done.left_failed = count_failed().await?;
    if retried && done.records == 0 && done.batches == 0 {
        requeued_at(conn, job_id, now, &mut done).await?;
        return Ok(done);
    }
    if done.records > 0 && status.is_terminal() {
        jobs::Entity::update_many()
            .col_expr(
                jobs::Column::Status,
                Expr::value(JobStatus::Processing.as_str()),
            )
            .col_expr(jobs::Column::CompletedAt, Expr::value(Option::<i64>::None))
            .col_expr(
                jobs::Column::FinalizedBy,
                Expr::value(Option::<String>::None),
            )
            .col_expr(jobs::Column::UpdatedAt, Expr::value(now))
            .filter(jobs::Column::Id.eq(job_id))
            .exec(conn)
            .await?;
        done.job_status = JobStatus::Processing;
    }
    Ok(done)
}

/// Whether a reservation's ids can be stored at all: one that holds U+0000 was never handed out
/// by a claim, so every fenced write with it matches nothing.
fn storable_reservation(reservation: &BatchReservation) -> bool {
    [
        &reservation.job_id,
        &reservation.batch_id,
        &reservation.worker_id,
    ]
    .iter()
    .all(|id| text::storable(id))
}

/// Fills `done` with what a requeue at `now` of `job_id` did: the records it moved to `pending`
/// and the batches it moved to `PENDING`, which it stamped with `now` (and which nothing has
/// claimed since). The job's status is as read by the caller, which the requeue moved to
/// `PROCESSING` if it had finished.
async fn requeued_at<C: ConnectionTrait>(
    conn: &C,
    job_id: &str,
    now: i64,
    done: &mut RequeuedRecords,
) -> Result<()> {
    done.records = records::Entity::find()
        .filter(records::Column::JobId.eq(job_id))
        .filter(records::Column::Status.eq(RecordStatus::Pending.as_str()))
        .filter(records::Column::UpdatedAt.eq(now))
        .filter(records::Column::ProcessingError.is_null())
        .count(conn)
        .await?;
    done.batches = batches::Entity::find()
        .filter(batches::Column::JobId.eq(job_id))
        .filter(batches::Column::Status.eq(BatchStatus::Pending.as_str()))
        .filter(batches::Column::UpdatedAt.eq(now))
        .filter(batches::Column::CompletedAt.is_null())
        .count(conn)
        .await?;
    if done.records > 0 {
        tracing::info!(
            job_id,
            records = done.records,
            batches = done.batches,
            "requeue retried after an attempt that committed"
        );
    }
    Ok(())
}

#[async_trait]
impl StateStore for SeaOrmStateStore {
    #[tracing::instrument(skip_all, fields(job_id = %job.id), err)]
    async fn save_job_state(&self, job: &JobState) -> Result<()> {
        self.write_job("save_job_state", job, JobSave::Forward)
            .await
    }

    #[tracing::instrument(skip_all, fields(job_id = %job.id), err)]
    async fn reset_job_state(&self, job: &JobState) -> Result<()> {
        self.write_job("reset_job_state", job, JobSave::Reset).await
    }

    #[tracing::instrument(skip(self, records), fields(records = records.len()), err)]
    async fn reset_records(
        &self,
        job_id: &str,
        batch_id: &str,
        records: &[ProcessedRecord],
    ) -> Result<()> {
        self.write_records(
            "reset_records",
            job_id,
            batch_id,
            records,
            RecordWrite::Replace,
        )
        .await
    }

    #[tracing::instrument(skip(self), err)]
    async fn get_job_without_batches(&self, job_id: &str) -> Result<Option<JobState>> {
        if !text::storable(job_id) {
            return Ok(None);
        }
        let select = jobs::Entity::find_by_id(job_id).into_query();
        let Some(row) = self.db.query_one(&select).await? else {
            return Ok(None);
        };
        Ok(Some(JobRow::read(&row, true)?.job))
    }

    #[tracing::instrument(skip(self), err)]
    async fn get_job_state(&self, job_id: &str) -> Result<Option<JobState>> {
        if !text::storable(job_id) {
            return Ok(None);
        }
        let select = jobs::Entity::find_by_id(job_id).into_query();
        let Some(row) = self.db.query_one(&select).await? else {
            return Ok(None);
        };
        let row = JobRow::read(&row, true)?;
        let batches = if row.job.distributed {
            load_batches(&self.db, job_id).await?
        } else {
            row.stored_batches()?
        };
        Ok(Some(JobState { batches, ..row.job }))
    }

    #[tracing::instrument(skip(self), err)]
    async fn update_batch_state(
        &self,
        job_id: &str,
        batch_id: &str,
        state: &BatchState,
    ) -> Result<()> {
        // Ids no database can hold name no batch: a no-op, as for any missing job.
        if !text::storable(job_id) || !text::storable(batch_id) {
            return Ok(());
        }
        let db = &self.db;
        let now = self.clock.now_ms();
        in_write_transaction!(db, "update_batch_state", |txn| {
            update_batch_state_in(&txn, job_id, batch_id, state, now)
        })
    }

    #[tracing::instrument(skip(self, records), fields(records = records.len()), err)]
    async fn save_processed_records(
        &self,
        job_id: &str,
        batch_id: &str,
        records: &[ProcessedRecord],
    ) -> Result<()> {
        self.write_records(
            "save_processed_records",
            job_id,
            batch_id,
            records,
            RecordWrite::Forward,
        )
        .await
    }

    #[tracing::instrument(skip(self), err)]
    async fn get_records(
        &self,
        job_id: &str,
        filter: &RecordFilter,
    ) -> Result<Vec<ProcessedRecord>> {
        if !text::storable(job_id)
            || filter
                .batch_id
                .as_deref()
                .is_some_and(|b| !text::storable(b))
        {
            return Ok(Vec::new());
        }
        let mut select = records::Entity::find().filter(records::Column::JobId.eq(job_id));
        if !filter.statuses.is_empty() {
            select = select
                .filter(records::Column::Status.is_in(filter.statuses.iter().map(|s| s.as_str())));
        }
        if let Some(batch_id) = &filter.batch_id {
            select = select.filter(records::Column::BatchId.eq(batch_id));
        }
        if let Some(after) = filter.after_index {
            // Stored indexes are BIGINT: nothing lies beyond i64::MAX.
            let Ok(after) = i64::try_from(after) else {
                return Ok(Vec::new());
            };
            select = select.filter(records::Column::RecordIndex.gt(after));
        }
        select = select.order_by_asc(records::Column::RecordIndex);
        if let Some(limit) = filter.limit {
            select = select.limit(crate::dialect::sql_limit(limit));
        }
        self.db
            .query_all(&select.into_query())
            .await?
            .iter()
            .map(mapper::record_from_row)
            .collect()
    }

    #[tracing::instrument(skip(self), err)]
    async fn prune_finished_jobs(&self, finished_before: i64, limit: u64) -> Result<u64> {
        if limit == 0 {
            return Ok(0);
        }
        let db = &self.db;
        in_write_transaction!(db, "prune_finished_jobs", |txn| prune_oldest_job(
            &txn,
            finished_before,
            limit
        ))
    }

    #[tracing::instrument(skip(self), err)]
    async fn get_progress(&self, job_id: &str) -> Result<JobProgress> {
        let now = self.clock.now_ms();
        if !text::storable(job_id) {
            return Ok(JobProgress::compute(
                RecordCounts::default(),
                0,
                0,
                None,
                None,
                now,
            ));
        }
        let select = jobs::Entity::find_by_id(job_id).into_query();
        let job = match self.db.query_one(&select).await? {
            Some(row) => Some(JobRow::read(&row, false)?),
            None => None,
        };
        let mut counts = RecordCounts::default();
        let mut stored = 0;
        for (text, n) in count_by_status::<_, records::Entity>(
            &self.db,
            job_id,
            records::Column::JobId,
            records::Column::Status,
        )
        .await?
        {
            // A status this version does not know counts as neither processed nor failed.
            counts.count(text.parse().ok(), n);
            stored += n;
        }
        let Some(job) = job else {
            counts.total = stored;
            return Ok(JobProgress::compute(counts, 0, 0, None, None, now));
        };
        counts.total = job.job.total_records;
        let (completed, total) = if job.job.distributed {
            let status = distributed_status(&self.db, job_id).await?;
            (status.completed_batches, status.total_batches)
        } else {
            let list = job.stored_batches()?;
            let completed = list
                .iter()
                .filter(|b| b.status == BatchStatus::Completed)
                .count();
            (
                u64::try_from(completed).unwrap_or(u64::MAX),
                u64::try_from(list.len()).unwrap_or(u64::MAX),
            )
        };
        Ok(JobProgress::compute(
            counts,
            completed,
            total,
            job.job.started_at,
            job.job.completed_at,
            now,
        ))
    }
}

#[async_trait]
impl DistributedStateStore for SeaOrmStateStore {
    #[tracing::instrument(skip_all, fields(job_id = %job.id), err)]
    async fn create_job(&self, job: &JobState) -> Result<bool> {
        check::job(job)?;
        let db = &self.db;
        let now = self.clock.now_ms();
        Backoff::STORE
            .retry("create_job", || async {
                let _gate = dialect::enter_write(db).await;
                create_job_in(db, job, now).await
            })
            .await
    }

    #[tracing::instrument(skip_all, fields(job_id = %job.id), err)]
    async fn start_job(&self, job: &JobState) -> Result<bool> {
        check::job(job)?;
        if !job.distributed {
            return Err(Error::invalid(
                "job.distributed",
                "start_job starts distributed jobs",
            ));
        }
        let db = &self.db;
        let now = self.clock.now_ms();
        in_write_transaction!(db, "start_job", |txn| start_job_in(&txn, job, now))
    }

    #[tracing::instrument(skip(self), err)]
    async fn claim_batch_with_id(
        &self,
        job_id: &str,
        worker_id: &str,
        claim_id: &str,
    ) -> Result<ClaimBatchResult> {
        check::claim_args(job_id, worker_id, claim_id)?;
        // Every attempt uses the same claim id, so one whose commit took effect although it
        // failed is recovered by the next.
        Backoff::STORE
            .retry("claim_batch", || {
                self.claim_once(job_id, worker_id, claim_id)
            })
            .await
    }

    #[tracing::instrument(skip(self), err)]
    async fn release_batch(&self, reservation: &BatchReservation) -> Result<bool> {
        if !storable_reservation(reservation) {
            return Ok(false);
        }
        let db = &self.db;
        let now = self.clock.now_ms();
        Backoff::STORE
            .retry("release_batch", || async move {
                let _gate = dialect::enter_write(db).await;
                // Fenced like a completion: never a finished batch, never a claim taken since.
                let result = back_to_pending(now)
                    .filter(holds(reservation))
                    .exec(db)
                    .await?;
                Ok(result.rows_affected == 1)
            })
            .await
    }

    #[tracing::instrument(skip(self), err)]
    async fn reclaim_stale_batches(&self, job_id: &str, timeout: Duration) -> Result<u64> {
        let now = self.clock.now_ms();
        let cutoff = check::stale_cutoff(now, timeout);
        if !text::storable(job_id) {
            return Ok(0);
        }
        let db = &self.db;
        // One UPDATE: each stale row is re-checked under its row lock, so concurrent
        // reclaimers split the rows between them and their counts add up to the stale count.
        // It runs in a READ COMMITTED transaction so that MySQL takes no gap locks.
        in_write_transaction!(db, "reclaim_stale_batches", |txn| async {
            let reclaimed = back_to_pending(now)
                .filter(batches::Column::JobId.eq(job_id))
                .filter(batches::Column::Status.eq(BatchStatus::Processing.as_str()))
                // Staleness runs from the last heartbeat; a row made PROCESSING without one
                // (saved that way) from its last write.
                .filter(
                    Expr::col(batches::Column::HeartbeatAt)
                        .lt(cutoff)
                        .or(Expr::col(batches::Column::HeartbeatAt)
                            .is_null()
                            .and(Expr::col(batches::Column::UpdatedAt).lt(cutoff))),
                )
                .exec(&txn)
                .await?
                .rows_affected;
            Ok::<_, Error>(reclaimed)
        })
    }

    #[tracing::instrument(skip(self, records), fields(records = records.len()), err)]
    async fn save_batch_records(
        &self,
        job_id: &str,
        batch_id: &str,
        records: &[ProcessedRecord],
    ) -> Result<()> {
        self.write_records(
            "save_batch_records",
            job_id,
            batch_id,
            records,
            RecordWrite::IfAbsent,
        )
        .await
    }

    #[tracing::instrument(skip(self), err)]
    async fn get_distributed_status(&self, job_id: &str) -> Result<DistributedJobStatus> {
        if !text::storable(job_id) {
            return Ok(DistributedJobStatus::empty(job_id));
        }
        distributed_status(&self.db, job_id).await
    }

    #[tracing::instrument(skip(self), err)]
    async fn try_finalize_job_with_id(&self, job_id: &str, finalizer_id: &str) -> Result<bool> {
        check::claim_id("finalizer_id", finalizer_id)?;
        if !text::storable(job_id) {
            return Ok(false);
        }
        let db = &self.db;
        let now = self.clock.now_ms();
        in_write_transaction!(db, "try_finalize_job", |txn| finalize(
            &txn,
            job_id,
            finalizer_id,
            now
        ))
    }

    #[tracing::instrument(skip(self), err)]
    async fn requeue_failed_records(&self, job_id: &str) -> Result<RequeuedRecords> {
        if !text::storable(job_id) {
            return Err(Error::NotFound {
                entity: "job",
                key: job_id.to_owned(),
            });
        }
        let db = &self.db;
        let now = self.clock.now_ms();
        // Every attempt after the first may follow one that committed without its reply.
        let attempted = std::sync::atomic::AtomicBool::new(false);
        in_write_transaction!(db, "requeue_failed_records", |txn| requeue_in(
            &txn,
            job_id,
            now,
            attempted.swap(true, std::sync::atomic::Ordering::SeqCst)
        ))
    }

    #[tracing::instrument(skip(self), err)]
    async fn complete_batch(
        &self,
        reservation: &BatchReservation,
        outcome: BatchOutcome,
    ) -> Result<bool> {
        if !storable_reservation(reservation) {
            return Ok(false);
        }
        let db = &self.db;
        let completion = &completion(reservation, outcome, self.clock.now_ms())?;
        Backoff::STORE
            .retry("complete_batch", || async move {
                let _gate = dialect::enter_write(db).await;
                Ok(completion.clone().exec(db).await?.rows_affected == 1)
            })
            .await
    }

    #[tracing::instrument(skip(self, outcomes), fields(count = outcomes.len()), err)]
    async fn complete_batch_with_outcomes(
        &self,
        reservation: &BatchReservation,
        outcome: BatchOutcome,
        outcomes: &[RecordOutcome],
    ) -> Result<bool> {
        if !storable_reservation(reservation) {
            return Ok(false);
        }
        let now = self.clock.now_ms();
        let db = &self.db;
        let completion = &completion(reservation, outcome, now)?;
        let updates = &outcome_updates(
            db.get_database_backend(),
            &reservation.job_id,
            &reservation.batch_id,
            outcomes,
            now,
        )?;
        // The fenced completion first: it locks the batch row, and when the claim was lost
        // nothing else is written.
        in_write_transaction!(db, "complete_batch_with_outcomes", |txn| async {
            let completed = completion.clone().exec(&txn).await?.rows_affected == 1;
            if completed {
                for update in updates {
                    update.clone().exec(&txn).await?;
                }
            }
            Ok::<_, Error>(completed)
        })
    }

    #[tracing::instrument(skip(self), err)]
    async fn heartbeat_batch(&self, reservation: &BatchReservation) -> Result<bool> {
        if !storable_reservation(reservation) {
            return Ok(false);
        }
        let db = &self.db;
        let now = self.clock.now_ms();
        Backoff::STORE
            .retry("heartbeat_batch", || async move {
                let _gate = dialect::enter_write(db).await;
                let result = batches::Entity::update_many()
                    .col_expr(batches::Column::HeartbeatAt, Expr::value(now))
                    .col_expr(batches::Column::UpdatedAt, Expr::value(now))
                    .filter(holds(reservation))
                    .exec(db)
                    .await?;
                Ok(result.rows_affected == 1)
            })
            .await
    }

    #[tracing::instrument(skip(self, outcomes), fields(count = outcomes.len()), err)]
    async fn save_record_outcomes(
        &self,
        job_id: &str,
        batch_id: &str,
        outcomes: &[RecordOutcome],
    ) -> Result<u64> {
        check::id("job_id", job_id)?;
        check::id("batch_id", batch_id)?;
        let db = &self.db;
        let statements = outcome_updates(
            db.get_database_backend(),
            job_id,
            batch_id,
            outcomes,
            self.clock.now_ms(),
        )?;
        let statements = &statements;
        match statements.as_slice() {
            [] => Ok(0),
            [update] => {
                Backoff::STORE
                    .retry("save_record_outcomes", || async move {
                        let _gate = dialect::enter_write(db).await;
                        Ok(update.clone().exec(db).await?.rows_affected)
                    })
                    .await
            }
            // Several statements: all or none.
            _ => in_write_transaction!(db, "save_record_outcomes", |txn| async {
                let mut updated = 0;
                for update in statements {
                    updated += update.clone().exec(&txn).await?.rows_affected;
                }
                Ok::<_, Error>(updated)
            }),
        }
    }
}

/// The rows a reservation still holds: the batch, still `PROCESSING`, under the same worker
/// and the same version. A reclaim or release bumps the version, so an old claim never
/// matches again.
fn holds(reservation: &BatchReservation) -> sea_orm::Condition {
    sea_orm::Condition::all()
        .add(batches::Column::Id.eq(&reservation.batch_id))
        .add(batches::Column::JobId.eq(&reservation.job_id))
        .add(batches::Column::WorkerId.eq(&reservation.worker_id))
        .add(batches::Column::Version.eq(reservation.version))
        .add(batches::Column::Status.eq(BatchStatus::Processing.as_str()))
}

/// Puts batches back to `PENDING` without an owner, bumping `version` so that the former
/// owner's claim no longer holds (the caller adds which batches).
fn back_to_pending(now: i64) -> sea_orm::UpdateMany<batches::Entity> {
    without_owner(batches::Entity::update_many())
        .col_expr(
            batches::Column::Status,
            Expr::value(BatchStatus::Pending.as_str()),
        )
        .col_expr(batches::Column::UpdatedAt, Expr::value(now))
        .col_expr(
            batches::Column::Version,
            dialect::next_token_expr(batches::Column::Version),
        )
}

/// `update` clearing what ties a batch to a claim: its worker, claim id, claim time and
/// heartbeat.
fn without_owner(
    update: sea_orm::UpdateMany<batches::Entity>,
) -> sea_orm::UpdateMany<batches::Entity> {
    update
        .col_expr(
            batches::Column::WorkerId,
            Expr::value(Option::<String>::None),
        )
        .col_expr(
            batches::Column::ClaimId,
            Expr::value(Option::<String>::None),
        )
        .col_expr(batches::Column::ClaimedAt, Expr::value(Option::<i64>::None))
        .col_expr(
            batches::Column::HeartbeatAt,
            Expr::value(Option::<i64>::None),
        )
}

/// The fenced update that finishes a claimed batch with `outcome`.
fn completion(
    reservation: &BatchReservation,
    outcome: BatchOutcome,
    now: i64,
) -> Result<sea_orm::UpdateMany<batches::Entity>> {
    let processed = check::fits_i64("outcome.processed_count", outcome.processed_count)?;
    let failed = check::fits_i64("outcome.failed_count", outcome.failed_count)?;
    Ok(batches::Entity::update_many()
        .col_expr(
            batches::Column::Status,
            Expr::value(outcome.status().as_str()),
        )
        .col_expr(batches::Column::ProcessedCount, Expr::value(processed))
        .col_expr(batches::Column::FailedCount, Expr::value(failed))
        .col_expr(batches::Column::CompletedAt, Expr::value(now))
        .col_expr(batches::Column::UpdatedAt, Expr::value(now))
        .filter(holds(reservation)))
}

/// One `UPDATE … WHERE record_index IN (…)` per group of alike outcomes (and per
/// [`dialect::chunks`] of its indexes: a `BIGINT` bind is 8 bytes and a 4-byte length).
fn outcome_updates(
    backend: DbBackend,
    job_id: &str,
    batch_id: &str,
    outcomes: &[RecordOutcome],
    now: i64,
) -> Result<Vec<sea_orm::UpdateMany<records::Entity>>> {
    type Key = (&'static str, String, Option<String>, u32);
    let mut groups: BTreeMap<Key, Vec<i64>> = BTreeMap::new();
    for outcome in outcomes {
        let key = (
            outcome.status.as_str(),
            serde_json::to_string(&outcome.errors)?,
            outcome.processing_error.clone(),
            outcome.retry_count,
        );
        groups
            .entry(key)
            .or_default()
            .push(check::fits_i64("index", outcome.index)?);
    }
    let mut updates = Vec::new();
    for ((status, errors, processing_error, retry_count), indexes) in groups {
        let errors: serde_json::Value = serde_json::from_str(&errors)?;
        let retry_count = i32::try_from(retry_count)
            .map_err(|_| Error::invalid("retry_count", "more than i32::MAX"))?;
        for chunk in dialect::chunks(backend, 1, &indexes, |_| 12) {
            updates.push(
                records::Entity::update_many()
                    .col_expr(records::Column::Status, Expr::value(status))
                    .col_expr(
                        records::Column::Errors,
                        dialect::json_expr(backend, &errors),
                    )
                    .col_expr(
                        records::Column::ProcessingError,
                        Expr::value(crate::dialect::text::encode_opt(processing_error.clone())),
                    )
                    .col_expr(records::Column::RetryCount, Expr::value(retry_count))
                    .col_expr(records::Column::UpdatedAt, Expr::value(now))
                    .filter(records::Column::JobId.eq(job_id))
                    .filter(records::Column::BatchId.eq(batch_id))
                    .filter(records::Column::RecordIndex.is_in(chunk.iter().copied())),
            );
        }
    }
    Ok(updates)
}

//! [`SeaOrmTaskExecutionStorage`]: task executions kept in the application's database through
//! SeaORM, on PostgreSQL, MySQL/MariaDB and SQLite.
//!
//! Every operation is written once, as a private fn generic over [`ConnectionTrait`], and the
//! port method runs it on the pool or in a write transaction
//! ([`in_write_transaction!`](crate::dialect::in_write_transaction)), retried on transient
//! errors ([`Backoff::STORE`](crate::dialect::Backoff::STORE)). The backends differ only in how
//! rows are picked and updated atomically ([`pick_and_update`]) and in what an insert-if-absent
//! reports ([`record_finished_children_in`]).
//!
//! Status and flag constants in the hot filters are written as SQL literals, not bound
//! parameters: the partial indexes of the migration (`WHERE status = 'ready'`, ...) can only be
//! used when the planner sees the same constant in the query.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};

use async_trait::async_trait;
use sea_orm::sea_query::{
    Alias, Asterisk, CommonTableExpression, Condition, Expr, ExprTrait, Order, Query,
    ReturningClause, SelectStatement, SimpleExpr, UpdateStatement, Value, WithClause, WithQuery,
};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, IdenStatic, QueryResult};
use sea_orm_durable_entity::{
    finished_child_task_executions as fc, paused_task_queues as pq, task_executions as te,
    task_schedules as ts,
};

use super::mapper;
use super::model::{
    ClaimParams, ExecutionError, FinishedChildTaskExecution, MAX_RETRY_ATTEMPTS, MAX_TIMEOUT_MS,
    NewTaskExecution, PausedQueue, TaskExecution, TaskExecutionCount, TaskExecutionFilter,
    TaskExecutionGuard, TaskExecutionStatus, TaskExecutionUpdate, Wake, WakeResult, retried_at,
    retry_refusal,
};
use super::schedule::{ScheduleFire, TaskSchedule};
use super::storage::TaskExecutionStorage;
use crate::dialect::{self, Backoff, begin_write, in_write_transaction, text};
use crate::error::{Error, Result};

type Col = te::Column;
type ChildCol = fc::Column;

/// Splits a list of ids into the `IN (...)` lists of consecutive statements, each within the
/// backend's bind and byte limits ([`dialect::chunks`]).
fn id_chunks(backend: DbBackend, ids: &[String]) -> Vec<&[String]> {
    dialect::chunks(backend, 1, ids, |id| id.len() + 8)
}

/// Bytes a new execution adds to a multi-row insert: its payload and ids, plus the fixed-size
/// columns.
fn execution_bytes(m: &te::Model) -> usize {
    m.input.len()
        + m.execution_id.len()
        + m.task_id.len()
        + m.parent_execution_id.as_ref().map_or(0, String::len)
        + m.root_execution_id.as_ref().map_or(0, String::len)
        + 512
}

/// Bytes a finished-child record adds to a multi-row insert.
fn finished_child_bytes(m: &fc::Model) -> usize {
    m.output.as_ref().map_or(0, String::len)
        + m.error.as_ref().map_or(0, |e| e.to_string().len())
        + m.parent_execution_id.len()
        + m.child_execution_id.len()
        + m.child_task_id.len()
        + 128
}

/// Task executions in a SeaORM database.
///
/// Build it from the application's [`DatabaseConnection`] after running the migrations
/// ([`crate::migration`]). On SQLite give the pool a few connections, WAL and a busy timeout of
/// several seconds: every write transaction starts `IMMEDIATE` and waits for the write lock.
/// The storage's writes pass one in-process gate per database file first, so that they hold at
/// most one pooled connection while they wait and reads keep the rest (the README's SQLite
/// profile).
///
/// Rows that cannot be read (malformed JSON, an unknown status) are reported as
/// [`Error::CorruptRow`] by the reads. The background operations keep going around them: a
/// claimed execution that cannot be read is marked `failed` with an error saying why, and a
/// finished one that cannot be read is closed without propagating anything (both logged at
/// error level).
#[derive(Debug, Clone)]
pub struct SeaOrmTaskExecutionStorage {
    db: DatabaseConnection,
}

impl SeaOrmTaskExecutionStorage {
    /// A storage on `db`.
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// The connection this storage uses.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// [`enqueue_task_executions`](TaskExecutionStorage::enqueue_task_executions) on `conn`, for
    /// example the application's own `DatabaseTransaction`, so the executions are enqueued if and
    /// only if the application's transaction commits (transactional outbox).
    ///
    /// # Errors
    ///
    /// As [`TaskExecutionStorage::enqueue_task_executions`]. On PostgreSQL a conflict aborts the
    /// caller's transaction.
    #[tracing::instrument(skip(self, conn, executions), fields(count = executions.len()), err)]
    pub async fn enqueue_task_executions_in<C: ConnectionTrait>(
        &self,
        conn: &C,
        executions: Vec<NewTaskExecution>,
        now: i64,
    ) -> Result<()> {
        executions.iter().try_for_each(super::validate_new)?;
        enqueue_in(conn, executions, now).await
    }

    /// [`wake_task_execution`](TaskExecutionStorage::wake_task_execution) on `conn`, for example
    /// the application's own `DatabaseTransaction`: the execution is woken if and only if that
    /// transaction commits (say, together with the webhook's own writes).
    ///
    /// # Errors
    ///
    /// As [`TaskExecutionStorage::wake_task_execution`].
    #[tracing::instrument(skip(self, conn), fields(wake_key = %wake.wake_key), err)]
    pub async fn wake_task_execution_in<C: ConnectionTrait>(
        &self,
        conn: &C,
        wake: &Wake,
    ) -> Result<WakeResult> {
        wake_in(conn, wake).await
    }
}

// ---------------------------------------------------------------------------------------------
// Statement pieces

/// A status as an SQL literal (see the module docs for why not a parameter).
fn status_lit(status: TaskExecutionStatus) -> SimpleExpr {
    Expr::cust(format!("'{}'", status.as_str()))
}

/// A boolean as an SQL literal (`TRUE`/`FALSE` work on all three backends).
fn bool_lit(value: bool) -> SimpleExpr {
    Expr::cust(if value { "TRUE" } else { "FALSE" })
}

fn null_json() -> SimpleExpr {
    Expr::val(Value::Json(None))
}

/// An execution error for the `error` column ([`dialect::json_expr`]: any text round-trips).
fn error_val(backend: DbBackend, error: &ExecutionError) -> Result<SimpleExpr> {
    Ok(dialect::json_expr(backend, &mapper::error_json(error)?))
}

fn int_val(name: &'static str, value: u32) -> Result<SimpleExpr> {
    let value = i32::try_from(value).map_err(|_| Error::InvalidArgument {
        name,
        reason: format!("{value} does not fit the column (at most {})", i32::MAX),
    })?;
    Ok(Expr::val(value))
}

/// The assignments of `update`, with the fields that follow from the status (the rules on
/// [`TaskExecutionUpdate`], the same as the in-memory storage's `apply_update`).
///
/// No assignment reads a column another one writes: MySQL evaluates `SET` left to right with the
/// new values.
/// `finished_at` for an execution finishing at `now`: never before its `started_at`, which
/// another executor, on another clock or with an older `now` in hand, may have written.
fn finished_at(now: i64) -> SimpleExpr {
    Expr::case(Expr::col(Col::StartedAt).gt(now), Expr::col(Col::StartedAt))
        .finally(now)
        .into()
}

fn update_sets(backend: DbBackend, update: &TaskExecutionUpdate) -> Result<Vec<(Col, SimpleExpr)>> {
    let now = update.now;
    let mut sets = Vec::new();
    if let Some(status) = update.status {
        sets.push((Col::Status, Expr::val(status.as_str())));
        if status.is_finished() {
            sets.push((Col::IsFinished, Expr::val(true)));
            sets.push((Col::FinishedAt, finished_at(now)));
        }
        if status != TaskExecutionStatus::Running {
            sets.push((Col::ExpiresAt, Expr::val(Option::<i64>::None)));
            if status != TaskExecutionStatus::Cancelled {
                sets.push((Col::ExecutorId, Expr::val(Option::<String>::None)));
            }
        }
        if status == TaskExecutionStatus::Sleeping {
            // Back to sleep (only a caller forcing the status does this): the key is taken
            // again, as the in-memory storage reads it.
            sets.push((Col::SleepingKey, Expr::col(Col::WakeKey)));
        } else {
            // Frees the key for the next sleeper; `wake_key` keeps it for later wakes' answers.
            sets.push((Col::SleepingKey, Expr::val(Option::<String>::None)));
        }
    }
    if let Some(v) = &update.run_output {
        sets.push((Col::RunOutput, Expr::val(text::encode(v).into_owned())));
    }
    if let Some(v) = &update.output {
        sets.push((Col::Output, Expr::val(text::encode(v).into_owned())));
    }
    if update.clear_error {
        sets.push((Col::Error, null_json()));
    } else if let Some(e) = &update.error {
        sets.push((Col::Error, error_val(backend, e)?));
    }
    if let Some(v) = update.cancel_requested {
        sets.push((Col::CancelRequested, Expr::val(v)));
    }
    if let Some(v) = update.retry_attempts {
        sets.push((Col::RetryAttempts, int_val("retry_attempts", v)?));
    }
    if let Some(v) = update.start_at {
        sets.push((Col::StartAt, Expr::val(v)));
    }
    if let Some(v) = update.children_count {
        sets.push((Col::ChildrenCount, int_val("children_count", v)?));
    }
    if let Some(f) = &update.finalize {
        sets.push((Col::FinalizeTaskId, Expr::val(f.task_id.as_str())));
        sets.push((Col::FinalizeExecutionId, Expr::val(f.execution_id.as_str())));
    }
    if let Some(v) = update.expires_at
        && update
            .status
            .is_none_or(|s| s == TaskExecutionStatus::Running)
    {
        sets.push((Col::ExpiresAt, Expr::val(v)));
    }
    if let Some(v) = &update.progress {
        sets.push((Col::Progress, Expr::val(text::encode(v).into_owned())));
    }
    sets.push((Col::UpdatedAt, Expr::val(now)));
    Ok(sets)
}

/// Which rows an atomic pick-and-update takes: those matching `filter` (and of one of `tasks`,
/// when given), in `order`, at most `limit`, skipping rows other transactions hold.
struct Pick {
    filter: Condition,
    order: [Col; 2],
    limit: u64,
    /// Only rows of these tasks, each task's read through an index led by `task_id` (see
    /// [`Pick::candidates`]); `None`: rows of any task.
    tasks: Option<Vec<String>>,
}

/// Most tasks a pick reads one by one; a claim admitting more walks the index in the claim's
/// order instead. SQLite refuses compound selects of more than 500 parts, and one branch per
/// task costs binds and planning on every backend.
const MAX_TASK_BRANCHES: usize = 100;

impl Pick {
    /// The rows matching the filter, in order, at most `limit` (no columns selected yet).
    fn select(&self) -> SelectStatement {
        Query::select()
            .from(te::Entity)
            .cond_where(self.filter.clone())
            .order_by(self.order[0], Order::Asc)
            .order_by(self.order[1], Order::Asc)
            .limit(crate::dialect::sql_limit(self.limit))
            .to_owned()
    }

    /// The ids of the rows to pick, as one select of one column named `id`, locking them and
    /// skipping locked rows where the backend has row locks ([`dialect::lock_skip_locked`]).
    ///
    /// With `tasks`, the first `limit` rows of each task are read through the index led by
    /// `task_id` (`ix_durable_task_executions_ready_task`, `…_waiting_task`), then the first
    /// `limit` of them all in `order`: the claim reads at most `limit` index entries per task it
    /// serves, however many rows of other tasks sort before them. Filtering one index in the
    /// claim's order instead walks every earlier row of every other task.
    ///
    /// - PostgreSQL: `FROM (VALUES (task), …) JOIN LATERAL (SELECT … WHERE task_id = task ORDER
    ///   BY … LIMIT n FOR UPDATE SKIP LOCKED) ON TRUE ORDER BY … LIMIT n`. PostgreSQL refuses
    ///   `FOR UPDATE` in the branches of a `UNION`; a lateral subquery may lock.
    /// - MySQL/MariaDB and SQLite: `SELECT … FROM (SELECT … FROM (branch) UNION ALL SELECT … FROM
    ///   (branch) …) ORDER BY … LIMIT n`, each branch one task's select with its own order and
    ///   limit (and, on MySQL, `FOR UPDATE SKIP LOCKED`). Each branch is wrapped in a derived
    ///   table because SQLite allows no `ORDER BY` or `LIMIT` on a part of a compound select.
    ///
    /// Rows a branch locked but the outer limit left out stay locked until the statement (on
    /// PostgreSQL) or the claim's transaction (MySQL) ends, untouched: a concurrent claimer
    /// passes over them meanwhile, as over the rows being claimed.
    fn candidates(&self, backend: DbBackend, id: &str) -> SelectStatement {
        let tasks = match &self.tasks {
            Some(tasks) if !tasks.is_empty() && tasks.len() <= MAX_TASK_BRANCHES => tasks,
            _ => {
                let mut select = self
                    .select()
                    .expr_as(Expr::col(Col::ExecutionId), Alias::new(id))
                    .to_owned();
                if let Some(tasks) = &self.tasks {
                    select
                        .and_where(Expr::col(Col::TaskId).is_in(tasks.iter().map(String::as_str)));
                }
                dialect::lock_skip_locked(backend, &mut select);
                return select;
            }
        };
        let [key, tie] = self.order;
        let branch = |task: SimpleExpr| {
            let mut select = Query::select()
                .column(Col::ExecutionId)
                .column(key)
                .from(te::Entity)
                .cond_where(self.filter.clone())
                .and_where(Expr::col((te::Entity, Col::TaskId)).eq(task))
                .order_by(key, Order::Asc)
                .order_by(tie, Order::Asc)
                .limit(crate::dialect::sql_limit(self.limit))
                .to_owned();
            dialect::lock_skip_locked(backend, &mut select);
            select
        };
        let merged = Alias::new("merged");
        let mut select = Query::select();
        select.expr_as(
            Expr::col((merged.clone(), Col::ExecutionId)),
            Alias::new(id),
        );
        match backend {
            DbBackend::Postgres => {
                let served = Alias::new("served");
                select
                    .from_values(
                        tasks
                            .iter()
                            .map(|t| sea_orm::sea_query::ValueTuple::One(t.as_str().into())),
                        served.clone(),
                    )
                    .join_lateral(
                        sea_orm::sea_query::JoinType::InnerJoin,
                        branch(Expr::col((served, Alias::new("column1")))),
                        merged.clone(),
                        Expr::cust("TRUE"),
                    );
            }
            // MySQL/MariaDB and SQLite (`DbBackend` is non-exhaustive).
            _ => {
                let part = |i: usize, task: &String| {
                    Query::select()
                        .column(Col::ExecutionId)
                        .column(key)
                        .from_subquery(
                            branch(Expr::val(task.as_str())),
                            Alias::new(format!("task{i}")),
                        )
                        .to_owned()
                };
                let mut parts = tasks.iter().enumerate().map(|(i, task)| part(i, task));
                // `tasks` is not empty (checked above).
                if let Some(mut union) = parts.next() {
                    for other in parts {
                        union.union(sea_orm::sea_query::UnionType::All, other);
                    }
                    select.from_subquery(union, merged.clone());
                }
            }
        }
        select
            .order_by((merged.clone(), key), Order::Asc)
            .order_by((merged, tie), Order::Asc)
            .limit(crate::dialect::sql_limit(self.limit))
            .to_owned()
    }
}

/// The rows a [`pick_and_update`] took.
struct Picked {
    /// Their execution ids.
    ids: Vec<String>,
    /// The whole rows after the update, when asked for.
    rows: Vec<QueryResult>,
}

fn ids_of(rows: &[QueryResult]) -> Result<Vec<String>> {
    rows.iter()
        .map(|r| Ok(r.try_get::<String>("", "execution_id")?))
        .collect()
}

/// Atomically picks rows as described by `pick` and applies `sets` to them; returns their ids
/// and, with `want_rows`, the rows as they are after the update.
///
/// - PostgreSQL: one statement, `WITH picked AS MATERIALIZED (SELECT … FOR UPDATE SKIP LOCKED)
///   UPDATE … FROM picked … RETURNING`. The CTE is materialized so the limit applies once;
///   `IN (SELECT … LIMIT … FOR UPDATE SKIP LOCKED)` may update more rows than the limit there.
/// - MySQL/MariaDB: `SELECT … FOR UPDATE SKIP LOCKED`, then `UPDATE … WHERE execution_id IN`,
///   then (for the rows) a `SELECT` of the updated rows: MySQL has no `RETURNING`. `conn` must
///   be a READ COMMITTED transaction ([`begin_write`]), which holds the locks until commit.
/// - SQLite: one `UPDATE … WHERE execution_id IN (SELECT … LIMIT n) RETURNING`; `conn` should be
///   an `IMMEDIATE` transaction or the pool (one statement is atomic). SQLite has no row locks,
///   and needs none: a writer holds the whole database.
async fn pick_and_update<C: ConnectionTrait>(
    conn: &C,
    pick: &Pick,
    sets: Vec<(Col, SimpleExpr)>,
    want_rows: bool,
) -> Result<Picked> {
    // PostgreSQL returns the updated table's columns only (not the CTE's); SQLite refuses a
    // qualified `RETURNING t.*` and has no second table in the statement.
    let returning = match (conn.get_database_backend(), want_rows) {
        (DbBackend::Postgres, true) => Query::returning().column((te::Entity, Asterisk)),
        (DbBackend::Postgres, false) => Query::returning().column((te::Entity, Col::ExecutionId)),
        (_, true) => Query::returning().all(),
        (_, false) => Query::returning().column(Col::ExecutionId),
    };
    match conn.get_database_backend() {
        DbBackend::Postgres => {
            let stmt = postgres_pick_and_update(pick, sets, returning);
            let rows = conn.query_all(&stmt).await?;
            Ok(Picked {
                ids: ids_of(&rows)?,
                rows: if want_rows { rows } else { Vec::new() },
            })
        }
        DbBackend::MySql => {
            let select = pick.candidates(DbBackend::MySql, "execution_id");
            let ids = ids_of(&conn.query_all(&select).await?)?;
            if ids.is_empty() {
                return Ok(Picked {
                    ids,
                    rows: Vec::new(),
                });
            }
            let update = Query::update()
                .table(te::Entity)
                .values(sets)
                .and_where(Expr::col(Col::ExecutionId).is_in(ids.iter().map(String::as_str)))
                .to_owned();
            conn.execute(&update).await?;
            let rows = if want_rows {
                let select = Query::select()
                    .column(Asterisk)
                    .from(te::Entity)
                    .and_where(Expr::col(Col::ExecutionId).is_in(ids.iter().map(String::as_str)))
                    .to_owned();
                conn.query_all(&select).await?
            } else {
                Vec::new()
            };
            Ok(Picked { ids, rows })
        }
        // SQLite (`DbBackend` is non-exhaustive; the other backends are handled above).
        _ => {
            let update = Query::update()
                .table(te::Entity)
                .values(sets)
                .and_where(
                    Expr::col(Col::ExecutionId)
                        .in_subquery(pick.candidates(DbBackend::Sqlite, "execution_id")),
                )
                .returning(returning)
                .to_owned();
            let rows = conn.query_all(&update).await?;
            Ok(Picked {
                ids: ids_of(&rows)?,
                rows: if want_rows { rows } else { Vec::new() },
            })
        }
    }
}

/// The PostgreSQL form of [`pick_and_update`]: one statement.
fn postgres_pick_and_update(
    pick: &Pick,
    sets: Vec<(Col, SimpleExpr)>,
    returning: ReturningClause,
) -> WithQuery {
    let picked = Alias::new("picked");
    let select = pick.candidates(DbBackend::Postgres, "picked_id");
    let cte = CommonTableExpression::new()
        .query(select)
        .table_name(picked.clone())
        .materialized(true)
        .to_owned();
    let update = Query::update()
        .table(te::Entity)
        .values(sets)
        .from(picked.clone())
        .and_where(
            Expr::col((te::Entity, Col::ExecutionId)).equals((picked, Alias::new("picked_id"))),
        )
        .returning(returning)
        .to_owned();
    update.with(WithClause::new().cte(cte).to_owned())
}

/// Maps rows, setting aside those that cannot be read (with their key, for the caller to deal
/// with) so they never take the others down.
fn map_lenient(rows: &[QueryResult]) -> (Vec<TaskExecution>, Vec<(String, Error)>) {
    let mut good = Vec::with_capacity(rows.len());
    let mut bad = Vec::new();
    for row in rows {
        match mapper::execution_from_row(row) {
            Ok(e) => good.push(e),
            Err(err) => {
                let key = match &err {
                    Error::CorruptRow { key, .. } => key.clone(),
                    _ => String::new(),
                };
                bad.push((key, err));
            }
        }
    }
    (good, bad)
}

/// Orders executions as the claims promise: earliest `start_at` first.
fn sort_by_start(executions: &mut [TaskExecution]) {
    executions.sort_by(|a, b| (a.start_at, &a.execution_id).cmp(&(b.start_at, &b.execution_id)));
}

// ---------------------------------------------------------------------------------------------
// Operations, each written once for any connection

/// The rows of `executions` as inserted at `now`, checked, with the statements that insert them
/// (split by binds and bytes).
fn execution_models(executions: Vec<NewTaskExecution>, now: i64) -> Result<Vec<te::Model>> {
    executions
        .into_iter()
        .map(|e| mapper::execution_to_model(e.into_execution(now)))
        .collect()
}

/// How many statements [`enqueue_in`] sends for `executions` on `backend`.
fn enqueue_statements(backend: DbBackend, models: &[te::Model]) -> usize {
    dialect::chunks(
        backend,
        dialect::column_count::<te::Entity>(),
        models,
        execution_bytes,
    )
    .len()
}

pub(crate) async fn enqueue_in<C: ConnectionTrait>(
    conn: &C,
    executions: Vec<NewTaskExecution>,
    now: i64,
) -> Result<()> {
    insert_models(conn, &execution_models(executions, now)?).await
}

async fn insert_models<C: ConnectionTrait>(conn: &C, models: &[te::Model]) -> Result<()> {
    let backend = conn.get_database_backend();
    for chunk in dialect::chunks(
        backend,
        dialect::column_count::<te::Entity>(),
        models,
        execution_bytes,
    ) {
        let stmt = dialect::insert_models(backend, chunk)?;
        conn.execute(&stmt)
            .await
            .map_err(|e| match Error::from(e) {
                Error::Conflict { source, .. } => Error::Conflict {
                    message: "a task execution with one of these ids, or a sleeping one with one \
                              of these wake keys, already exists"
                        .to_owned(),
                    source,
                },
                other => other,
            })?;
    }
    Ok(())
}

/// Whether every row of `models` is in the table already as this enqueue wrote it (same task,
/// same parent, same enqueue time): the conflict of a retried enqueue whose first attempt
/// committed without its reply arriving.
async fn already_enqueued<C: ConnectionTrait>(conn: &C, models: &[te::Model]) -> Result<bool> {
    let ids: Vec<String> = models.iter().map(|m| m.execution_id.clone()).collect();
    let mut found = std::collections::HashMap::new();
    for chunk in id_chunks(conn.get_database_backend(), &ids) {
        let select = Query::select()
            .columns([
                Col::ExecutionId,
                Col::TaskId,
                Col::ParentExecutionId,
                Col::CreatedAt,
            ])
            .from(te::Entity)
            .and_where(Expr::col(Col::ExecutionId).is_in(chunk.iter().map(String::as_str)))
            .to_owned();
        for row in conn.query_all(&select).await? {
            let id: String = row.try_get("", "execution_id")?;
            let task: String = row.try_get("", "task_id")?;
            let parent: Option<String> = row.try_get("", "parent_execution_id")?;
            let created: i64 = row.try_get("", "created_at")?;
            found.insert(id, (task, parent, created));
        }
    }
    Ok(models.iter().all(|m| {
        found
            .get(&m.execution_id)
            .is_some_and(|(task, parent, created)| {
                *task == m.task_id && *parent == m.parent_execution_id && *created == m.created_at
            })
    }))
}

fn filter_select(filter: &TaskExecutionFilter, ids: Option<&[String]>) -> SelectStatement {
    let mut select = Query::select().column(Asterisk).from(te::Entity).to_owned();
    if let Some(ids) = ids {
        select.and_where(Expr::col(Col::ExecutionId).is_in(ids.iter().map(String::as_str)));
    }
    if let Some(statuses) = &filter.statuses {
        select.and_where(Expr::col(Col::Status).is_in(statuses.iter().map(|s| s.as_str())));
    }
    if let Some(parent) = &filter.parent_execution_id {
        select.and_where(Expr::col(Col::ParentExecutionId).eq(parent.as_str()));
    }
    if let Some(after) = filter.starts_after {
        select.and_where(Expr::col(Col::StartAt).gt(after));
    }
    if let Some(key) = &filter.wake_key {
        select.and_where(Expr::col(Col::WakeKey).eq(key.as_str()));
    }
    if let Some(tasks) = &filter.task_ids {
        select.and_where(Expr::col(Col::TaskId).is_in(tasks.iter().map(String::as_str)));
    }
    if let Some(queues) = &filter.queues {
        select.and_where(Expr::col(Col::Queue).is_in(queues.iter().map(String::as_str)));
    }
    if let Some(before) = filter.created_before {
        select.and_where(Expr::col(Col::CreatedAt).lt(before));
    }
    if let Some(after) = filter.created_after {
        select.and_where(Expr::col(Col::CreatedAt).gte(after));
    }
    if let Some(cursor) = &filter.after {
        // `(created_at, index_in_parent, execution_id) > cursor`, spelled out: row-value
        // comparisons are not read the same way by the three planners. A cursor index beyond
        // the column's `INT` compares as the column's largest value.
        let index = i32::try_from(cursor.index).unwrap_or(i32::MAX);
        let at = cursor.created_at;
        let id = cursor.execution_id.as_str();
        select.cond_where(
            Condition::any()
                .add(Expr::col(Col::CreatedAt).gt(at))
                .add(
                    Condition::all()
                        .add(Expr::col(Col::CreatedAt).eq(at))
                        .add(Expr::col(Col::IndexInParent).gt(index)),
                )
                .add(
                    Condition::all()
                        .add(Expr::col(Col::CreatedAt).eq(at))
                        .add(Expr::col(Col::IndexInParent).eq(index))
                        .add(Expr::col(Col::ExecutionId).gt(id)),
                ),
        );
    }
    select
        .order_by(Col::CreatedAt, Order::Asc)
        .order_by(Col::IndexInParent, Order::Asc)
        .order_by(Col::ExecutionId, Order::Asc);
    if let Some(limit) = filter.limit {
        select.limit(crate::dialect::sql_limit(limit));
    }
    select
}

async fn get_many_in<C: ConnectionTrait>(
    conn: &C,
    filter: &TaskExecutionFilter,
) -> Result<Vec<TaskExecution>> {
    if filter.matches_nothing() {
        return Ok(Vec::new());
    }
    let mut rows = Vec::new();
    let chunked = match &filter.execution_ids {
        Some(ids) => {
            let chunks = id_chunks(conn.get_database_backend(), ids);
            for chunk in &chunks {
                rows.extend(conn.query_all(&filter_select(filter, Some(chunk))).await?);
            }
            chunks.len() > 1
        }
        None => {
            rows = conn.query_all(&filter_select(filter, None)).await?;
            false
        }
    };
    let mut found = rows
        .iter()
        .map(mapper::execution_from_row)
        .collect::<Result<Vec<_>>>()?;
    if chunked {
        // Each statement was ordered and limited on its own: merge them.
        super::list_in_order(&mut found, filter.limit);
    }
    Ok(found)
}

/// The status condition of a guard on executions named by id: `status IN (…)` compared through
/// `COALESCE`, from which no partial index on the status can be proven to apply, so the rows are
/// found by primary key. Offered `status = 'running'`, the PostgreSQL planner also scans
/// `ix_durable_task_executions_running_claim`, which holds an entry of every execution that has
/// left `running` until vacuum and which its statistics do not show: a batch of results took
/// 0.7 ms per statement among 10 000 executions and 3 ms among 100 000.
fn status_guard(statuses: &[TaskExecutionStatus]) -> SimpleExpr {
    Expr::expr(sea_orm::sea_query::Func::coalesce([
        Expr::col(Col::Status),
        Expr::val(""),
    ]))
    .is_in(statuses.iter().map(|s| s.as_str()))
}

/// The guarded update of one chunk of ids ([`id_chunks`]).
fn guarded_update(
    ids: &[String],
    guard: &TaskExecutionGuard,
    sets: Vec<(Col, SimpleExpr)>,
) -> UpdateStatement {
    let mut stmt = Query::update()
        .table(te::Entity)
        .values(sets)
        .and_where(Expr::col(Col::ExecutionId).is_in(ids.iter().map(String::as_str)))
        .to_owned();
    if let Some(statuses) = &guard.statuses {
        stmt.and_where(status_guard(statuses));
    }
    if let Some(token) = guard.fencing_token {
        stmt.and_where(Expr::col(Col::FencingToken).eq(token));
    }
    stmt
}

/// Whether `guard` can match nothing, so no SQL needs to be sent.
fn matches_nothing(guard: &TaskExecutionGuard) -> bool {
    guard.execution_ids.is_empty() || guard.statuses.as_ref().is_some_and(Vec::is_empty)
}

async fn update_in<C: ConnectionTrait>(
    conn: &C,
    guard: &TaskExecutionGuard,
    update: &TaskExecutionUpdate,
) -> Result<u64> {
    if matches_nothing(guard) {
        return Ok(0);
    }
    let sets = update_sets(conn.get_database_backend(), update)?;
    let mut matched = 0;
    for chunk in id_chunks(conn.get_database_backend(), &guard.execution_ids) {
        let stmt = guarded_update(chunk, guard, sets.clone());
        matched += conn.execute(&stmt).await?.rows_affected();
    }
    Ok(matched)
}

/// Guarded updates of one execution each that [`update_batched_in`] can write with one
/// statement: each guard names one execution (named by no other update of the batch) and its
/// fencing token, and they share the status guard and the columns they set.
struct UpdateGroup<'a> {
    statuses: Option<&'a [TaskExecutionStatus]>,
    columns: Vec<&'static str>,
    /// Whether the updates finish their executions, which the statement then also closes.
    closes: bool,
    members: Vec<GroupMember<'a>>,
}

/// One update of an [`UpdateGroup`].
struct GroupMember<'a> {
    /// Its place in the batch.
    index: usize,
    execution_id: &'a str,
    fencing_token: i64,
    sets: Vec<(Col, SimpleExpr)>,
}

/// The column of an assignment as a grouping key; an `error` that clears and one that sets
/// stay apart, so one `CASE` never mixes a typed `NULL` with a JSON value.
fn column_key(col: Col, value: &SimpleExpr) -> &'static str {
    match col {
        Col::Error if *value == null_json() => "error = null",
        _ => col.as_str(),
    }
}

/// Whether an update under `guard` takes its executions from a status that is not finished to
/// one that is: the executions it matches are finished by it and not closed yet.
fn finishes(guard: &TaskExecutionGuard, update: &TaskExecutionUpdate) -> bool {
    update.status.is_some_and(TaskExecutionStatus::is_finished)
        && guard
            .statuses
            .as_ref()
            .is_some_and(|s| !s.is_empty() && s.iter().all(|s| !s.is_finished()))
}

/// Splits `updates` into the groups that [`update_batched_in`] writes one statement at a time,
/// and the indexes of the rest, in batch order, for one statement each.
fn group_updates(
    backend: DbBackend,
    updates: &[(TaskExecutionGuard, TaskExecutionUpdate)],
) -> Result<(Vec<UpdateGroup<'_>>, Vec<usize>)> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (guard, _) in updates {
        for id in &guard.execution_ids {
            *seen.entry(id.as_str()).or_default() += 1;
        }
    }
    let mut groups: Vec<UpdateGroup<'_>> = Vec::new();
    let mut single = Vec::new();
    for (index, (guard, update)) in updates.iter().enumerate() {
        if matches_nothing(guard) {
            single.push(index);
            continue;
        }
        let (execution_id, fencing_token) =
            match (guard.execution_ids.as_slice(), guard.fencing_token) {
                ([id], Some(token)) if seen.get(id.as_str()) == Some(&1) => (id.as_str(), token),
                _ => {
                    single.push(index);
                    continue;
                }
            };
        let mut sets = update_sets(backend, update)?;
        let closes = finishes(guard, update);
        if closes {
            sets.push((Col::IsClosed, Expr::val(true)));
            sets.push((Col::ClosedAt, Expr::val(update.now)));
        }
        let columns: Vec<&'static str> = sets.iter().map(|(c, v)| column_key(*c, v)).collect();
        let statuses = guard.statuses.as_deref();
        let member = GroupMember {
            index,
            execution_id,
            fencing_token,
            sets,
        };
        match groups
            .iter_mut()
            .find(|g| g.statuses == statuses && g.columns == columns && g.closes == closes)
        {
            Some(group) => group.members.push(member),
            None => groups.push(UpdateGroup {
                statuses,
                columns,
                closes,
                members: vec![member],
            }),
        }
    }
    Ok((groups, single))
}

/// `CASE WHEN execution_id = <id> THEN <value> …` over `members`, or the value itself when all
/// members share it.
fn per_execution(members: &[(&str, SimpleExpr)]) -> SimpleExpr {
    match members {
        [(_, first), rest @ ..] if rest.iter().all(|(_, v)| v == first) => first.clone(),
        _ => {
            let mut case = sea_orm::sea_query::CaseStatement::new();
            for (id, value) in members {
                case = case.case(Expr::col(Col::ExecutionId).eq(*id), value.clone());
            }
            case.into()
        }
    }
}

/// Writes a group of [`group_updates`] in statements of many executions each, and returns the
/// batch indexes of the updates that matched their guard. Values that differ between
/// executions are picked by `CASE execution_id`, and so is each execution's fencing token in
/// the guard.
///
/// Which rows matched: `RETURNING` on PostgreSQL and SQLite; on MySQL/MariaDB (no
/// `RETURNING`) the matching rows are first read with `FOR UPDATE`, which holds them unchanged
/// until the update.
///
/// A group whose updates finish their executions closes them in the same statement and adds
/// their rows to `closed`, whose outcomes the caller propagates as a close would
/// ([`propagate_outcomes_in`], once for all groups, so that the parents are locked in one
/// order): one row version and one statement fewer per execution than a close of its own, and
/// nothing left for the close loop. `conn` must be a write transaction.
async fn update_batched_in<C: ConnectionTrait>(
    conn: &C,
    group: &UpdateGroup<'_>,
    closed: &mut Vec<QueryResult>,
) -> Result<Vec<usize>> {
    let backend = conn.get_database_backend();
    // The id appears in the `IN` list, in the fencing token's `CASE` and, at most, in one
    // `CASE` per column.
    let size = |m: &GroupMember<'_>| {
        m.execution_id.len() * (2 + group.columns.len())
            + 64
            + m.sets.iter().map(|(_, v)| expr_bytes(v)).sum::<usize>()
    };
    let binds = 2 * group.columns.len() + 4;
    let mut matched = Vec::new();
    for chunk in dialect::chunks(backend, binds, &group.members, size) {
        let ids: Vec<&str> = chunk.iter().map(|m| m.execution_id).collect();
        let tokens: Vec<(&str, SimpleExpr)> = chunk
            .iter()
            .map(|m| (m.execution_id, Expr::val(m.fencing_token)))
            .collect();
        let mut condition = Condition::all()
            .add(Expr::col(Col::ExecutionId).is_in(ids.iter().copied()))
            .add(Expr::col(Col::FencingToken).eq(per_execution(&tokens)));
        if let Some(statuses) = group.statuses {
            condition = condition.add(status_guard(statuses));
        }
        let sets: Vec<(Col, SimpleExpr)> = (0..group.columns.len())
            .map(|c| {
                let values: Vec<(&str, SimpleExpr)> = chunk
                    .iter()
                    .map(|m| (m.execution_id, m.sets[c].1.clone()))
                    .collect();
                (chunk[0].sets[c].0, per_execution(&values))
            })
            .collect();
        let mut update = Query::update()
            .table(te::Entity)
            .values(sets)
            .cond_where(condition.clone())
            .to_owned();
        let (hit, rows) = if backend == DbBackend::MySql {
            let mut select = Query::select()
                .column(Col::ExecutionId)
                .from(te::Entity)
                .cond_where(condition)
                .order_by(Col::ExecutionId, Order::Asc)
                .to_owned();
            dialect::lock_for_update(backend, &mut select);
            let hit = ids_of(&conn.query_all(&select).await?)?;
            let mut rows = Vec::new();
            if !hit.is_empty() {
                conn.execute(&update).await?;
                if group.closes {
                    let select = Query::select()
                        .column(Asterisk)
                        .from(te::Entity)
                        .and_where(
                            Expr::col(Col::ExecutionId).is_in(hit.iter().map(String::as_str)),
                        )
                        .to_owned();
                    rows = conn.query_all(&select).await?;
                }
            }
            (hit, rows)
        } else if group.closes {
            update.returning(Query::returning().all());
            let rows = conn.query_all(&update).await?;
            (ids_of(&rows)?, rows)
        } else {
            update.returning(Query::returning().column(Col::ExecutionId));
            (ids_of(&conn.query_all(&update).await?)?, Vec::new())
        };
        closed.extend(rows);
        let hit: HashSet<String> = hit.into_iter().collect();
        matched.extend(
            chunk
                .iter()
                .filter(|m| hit.contains(m.execution_id))
                .map(|m| m.index),
        );
    }
    Ok(matched)
}

/// A generous estimate of the bytes `value` adds to a statement: its bound text, if any.
fn expr_bytes(value: &SimpleExpr) -> usize {
    match value {
        SimpleExpr::Value(Value::String(Some(s))) => s.len() + 16,
        SimpleExpr::Value(Value::Json(Some(j))) => j.to_string().len() + 16,
        SimpleExpr::FunctionCall(call) => {
            call.get_args().iter().map(expr_bytes).sum::<usize>() + 32
        }
        SimpleExpr::Binary(left, _, right) => expr_bytes(left) + expr_bytes(right),
        _ => 64,
    }
}

async fn update_and_enqueue_in<C: ConnectionTrait>(
    conn: &C,
    guard: &TaskExecutionGuard,
    update: &TaskExecutionUpdate,
    children: Vec<NewTaskExecution>,
) -> Result<bool> {
    if update_in(conn, guard, update).await? == 0 {
        return Ok(false);
    }
    enqueue_in(conn, children, update.now).await?;
    Ok(true)
}

/// Records finished children, once per (parent, child), and adds to each parent's counters
/// exactly the records this call inserted.
///
/// The counters grow by the rows inserted, not by a recount, so recording the last of N
/// children costs the same as recording the first:
///
/// - PostgreSQL and SQLite: `INSERT … ON CONFLICT DO NOTHING RETURNING` names the rows that
///   were new; a record that exists already (a retried close) is not returned. The unique key
///   of the records orders two transactions inserting the same record, so the parents need no
///   lock until their counters are updated ([`add_to_counters`], last, so that the parent rows,
///   which every close of their children needs, are held from there to commit only).
/// - MySQL/MariaDB: no `RETURNING`, and `ON DUPLICATE KEY` reports a conflict as a success, so
///   the parents are locked first, in execution-id order, and the records that exist already
///   are read under those locks ([`existing_children`]): nothing else can insert records of
///   these parents until commit, so the rest are all new.
///
/// `conn` must be a write transaction.
async fn record_finished_children_in<C: ConnectionTrait>(
    conn: &C,
    children: Vec<FinishedChildTaskExecution>,
) -> Result<()> {
    let mut seen = HashSet::new();
    let children: Vec<_> = children
        .into_iter()
        .filter(|c| seen.insert((c.parent_execution_id.clone(), c.child_execution_id.clone())))
        .collect();
    if children.is_empty() {
        return Ok(());
    }
    let backend = conn.get_database_backend();
    let children = if backend == DbBackend::MySql {
        let parents: Vec<String> = children
            .iter()
            .map(|c| c.parent_execution_id.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for chunk in id_chunks(backend, &parents) {
            let mut lock = Query::select()
                .column(Col::ExecutionId)
                .from(te::Entity)
                .and_where(Expr::col(Col::ExecutionId).is_in(chunk.iter().map(String::as_str)))
                .order_by(Col::ExecutionId, Order::Asc)
                .to_owned();
            dialect::lock_for_update(backend, &mut lock);
            conn.query_all(&lock).await?;
        }
        let existing = existing_children(conn, &children).await?;
        children
            .into_iter()
            .filter(|c| {
                !existing.contains(&(c.parent_execution_id.clone(), c.child_execution_id.clone()))
            })
            .collect()
    } else {
        children
    };
    let models = children
        .into_iter()
        .map(mapper::finished_child_to_model)
        .collect::<Result<Vec<_>>>()?;
    // Per parent: (records added, of which not completed).
    let mut added: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let mut count = |parent: String, status: &str| {
        let entry = added.entry(parent).or_default();
        entry.0 += 1;
        if status != TaskExecutionStatus::Completed.as_str() {
            entry.1 += 1;
        }
    };
    for chunk in dialect::chunks(
        backend,
        dialect::column_count::<fc::Entity>(),
        &models,
        finished_child_bytes,
    ) {
        let mut stmt = dialect::insert_models(backend, chunk)?;
        stmt.on_conflict(dialect::if_absent([
            ChildCol::ParentExecutionId,
            ChildCol::ChildExecutionId,
        ]));
        match backend {
            // The rows were checked absent above (MySQL reports no inserted rows), so
            // insert-if-absent only matters here for records of a parent that does not exist
            // (nothing to count).
            DbBackend::MySql => {
                conn.execute(&stmt).await?;
                for m in chunk {
                    count(m.parent_execution_id.clone(), &m.status);
                }
            }
            _ => {
                stmt.returning(
                    Query::returning().columns([ChildCol::ParentExecutionId, ChildCol::Status]),
                );
                for row in conn.query_all(&stmt).await? {
                    count(
                        row.try_get::<String>("", "parent_execution_id")?,
                        &row.try_get::<String>("", "status")?,
                    );
                }
            }
        }
    }
    let added: Vec<(String, (i64, i64))> = added.into_iter().collect();
    add_to_counters(conn, &added).await
}

/// Adds `(finished, failed)` to the children counters of each parent in `added` (sorted by
/// execution id), one statement per chunk of parents. Parents that gained the same counts share
/// one `CASE` branch; when all gained the same (often: one child each) the increment is a plain
/// constant.
///
/// On PostgreSQL the statement takes the parents' row locks itself, in execution-id order (a
/// materialized `SELECT … ORDER BY execution_id FOR UPDATE`), so that two closes sharing parents
/// queue instead of deadlocking, and hold them only from here to commit. MySQL/MariaDB callers
/// hold the locks already; SQLite's writer holds the whole database.
async fn add_to_counters<C: ConnectionTrait>(
    conn: &C,
    added: &[(String, (i64, i64))],
) -> Result<()> {
    let backend = conn.get_database_backend();
    // An id can appear in the `WHERE`, the lock and both `CASE`s.
    for chunk in dialect::chunks(backend, 4, added, |(id, _)| 4 * id.len() + 32) {
        let mut groups: BTreeMap<(i64, i64), Vec<&str>> = BTreeMap::new();
        for (id, increment) in chunk {
            groups.entry(*increment).or_default().push(id);
        }
        let increment = |pick: fn(&(i64, i64)) -> i64| -> SimpleExpr {
            let mut values = groups.keys().map(pick);
            let first = values.next().unwrap_or(0);
            if values.all(|v| v == first) {
                return Expr::val(first);
            }
            let mut case = sea_orm::sea_query::CaseStatement::new();
            for (key, ids) in &groups {
                case = case.case(
                    Expr::col(Col::ExecutionId).is_in(ids.iter().copied()),
                    Expr::val(pick(key)),
                );
            }
            case.finally(Expr::val(0i64)).into()
        };
        let mut update = Query::update();
        update.table(te::Entity).value(
            Col::FinishedChildrenCount,
            Expr::col(Col::FinishedChildrenCount).add(increment(|k| k.0)),
        );
        if groups.keys().any(|k| k.1 > 0) {
            update.value(
                Col::FailedChildrenCount,
                Expr::col(Col::FailedChildrenCount).add(increment(|k| k.1)),
            );
        }
        let ids = chunk.iter().map(|(id, _)| id.as_str());
        if backend == DbBackend::Postgres {
            let locked = Alias::new("locked");
            let mut lock = Query::select()
                .expr_as(Expr::col(Col::ExecutionId), Alias::new("locked_id"))
                .from(te::Entity)
                .and_where(Expr::col(Col::ExecutionId).is_in(ids))
                .order_by(Col::ExecutionId, Order::Asc)
                .to_owned();
            dialect::lock_for_update(backend, &mut lock);
            let cte = CommonTableExpression::new()
                .query(lock)
                .table_name(locked.clone())
                .materialized(true)
                .to_owned();
            update.from(locked.clone()).and_where(
                Expr::col((te::Entity, Col::ExecutionId)).equals((locked, Alias::new("locked_id"))),
            );
            conn.execute(&update.with(WithClause::new().cte(cte).to_owned()))
                .await?;
        } else {
            update.and_where(Expr::col(Col::ExecutionId).is_in(ids));
            conn.execute(&update).await?;
        }
    }
    Ok(())
}

/// Which of `children` are recorded already, as (parent, child) pairs; read with the parents
/// locked, so the answer holds until the transaction ends.
async fn existing_children<C: ConnectionTrait>(
    conn: &C,
    children: &[FinishedChildTaskExecution],
) -> Result<HashSet<(String, String)>> {
    let backend = conn.get_database_backend();
    let mut existing = HashSet::new();
    let size = |c: &FinishedChildTaskExecution| {
        c.parent_execution_id.len() + c.child_execution_id.len() + 16
    };
    for chunk in dialect::chunks(backend, 2, children, size) {
        let parents: BTreeSet<&str> = chunk
            .iter()
            .map(|c| c.parent_execution_id.as_str())
            .collect();
        // Both lists are served by the primary key; pairs that only cross-match are dropped
        // below.
        let select = Query::select()
            .columns([ChildCol::ParentExecutionId, ChildCol::ChildExecutionId])
            .from(fc::Entity)
            .and_where(Expr::col(ChildCol::ParentExecutionId).is_in(parents))
            .and_where(
                Expr::col(ChildCol::ChildExecutionId)
                    .is_in(chunk.iter().map(|c| c.child_execution_id.as_str())),
            )
            .to_owned();
        for row in conn.query_all(&select).await? {
            existing.insert((
                row.try_get::<String>("", "parent_execution_id")?,
                row.try_get::<String>("", "child_execution_id")?,
            ));
        }
    }
    Ok(existing)
}

/// The queues a claim admits, as a condition; its tasks are a [`Pick`]'s `tasks`.
fn admitted_queues(params: &ClaimParams) -> Condition {
    let mut condition = Condition::all();
    if let Some(queues) = &params.queues {
        condition = condition.add(Expr::col(Col::Queue).is_in(queues.iter().map(String::as_str)));
    }
    condition
}

/// Pauses `queue` unless it is paused already, and returns it as stored.
async fn pause_in<C: ConnectionTrait>(conn: &C, queue: &str, now: i64) -> Result<PausedQueue> {
    let insert = Query::insert()
        .into_table(pq::Entity)
        .columns([pq::Column::Queue, pq::Column::PausedAt])
        .values_panic([Expr::val(queue), Expr::val(now)])
        .to_owned();
    dialect::insert_one_if_absent(conn, insert, [pq::Column::Queue]).await?;
    let select = Query::select()
        .column(pq::Column::PausedAt)
        .from(pq::Entity)
        .and_where(Expr::col(pq::Column::Queue).eq(queue))
        .to_owned();
    let paused_at = match conn.query_one(&select).await? {
        Some(row) => row.try_get::<i64>("", "paused_at")?,
        // Only a resume between the two statements of this transaction's isolation level
        // could take it away; the pause was written either way.
        None => now,
    };
    Ok(PausedQueue {
        queue: queue.to_owned(),
        paused_at,
    })
}

/// `timeout_ms` within `1..=MAX_TIMEOUT_MS`, whatever the row holds: lease arithmetic on it can
/// then never overflow (a row out of range is failed as unreadable after the claim).
fn clamped_timeout() -> SimpleExpr {
    Expr::case(
        Expr::col(Col::TimeoutMs).gt(MAX_TIMEOUT_MS),
        Expr::val(MAX_TIMEOUT_MS),
    )
    .case(Expr::col(Col::TimeoutMs).lt(1), Expr::val(1_i64))
    .finally(Expr::col(Col::TimeoutMs))
    .into()
}

/// The executions `params.executor_id` took under `params.claim_id` and still holds in
/// `status`: what an earlier attempt of this claim took if its reply was lost.
async fn taken_back<C: ConnectionTrait>(
    conn: &C,
    params: &ClaimParams,
    status: TaskExecutionStatus,
) -> Result<Vec<QueryResult>> {
    let Some(claim_id) = &params.claim_id else {
        return Ok(Vec::new());
    };
    let select = Query::select()
        .column(Asterisk)
        .from(te::Entity)
        .and_where(Expr::col(Col::ExecutorId).eq(params.executor_id.as_str()))
        .and_where(Expr::col(Col::ClaimId).eq(claim_id.as_str()))
        .and_where(Expr::col(Col::Status).eq(status_lit(status)))
        .order_by(Col::ExecutionId, Order::Asc)
        .limit(crate::dialect::sql_limit(params.limit))
        .to_owned();
    let rows = conn.query_all(&select).await?;
    if !rows.is_empty() {
        tracing::info!(
            claim_id = %claim_id,
            count = rows.len(),
            "took back the executions of a claim whose reply was lost"
        );
    }
    Ok(rows)
}

/// Fails claimed executions whose rows cannot be read, so they neither run nor come back: each
/// still held by `executor_id` in `held` ends `failed` with an internal error saying why.
async fn fail_unreadable<C: ConnectionTrait>(
    conn: &C,
    bad: Vec<(String, Error)>,
    held: TaskExecutionStatus,
    executor_id: &str,
    now: i64,
) -> Result<()> {
    for (key, err) in bad {
        tracing::error!(execution_id = %key, error = %err, "claimed execution cannot be read; failing it");
        if key.is_empty() {
            // Not even its id could be read: nothing can address it.
            continue;
        }
        let update = TaskExecutionUpdate {
            now,
            status: Some(TaskExecutionStatus::Failed),
            error: Some(unreadable_error(&err)),
            ..Default::default()
        };
        let guard = TaskExecutionGuard::id(key).status(held);
        let mut stmt = guarded_update(
            &guard.execution_ids,
            &guard,
            update_sets(conn.get_database_backend(), &update)?,
        );
        stmt.and_where(Expr::col(Col::ExecutorId).eq(executor_id));
        conn.execute(&stmt).await?;
    }
    Ok(())
}

/// The error recorded on an execution whose stored row cannot be read.
fn unreadable_error(err: &Error) -> ExecutionError {
    ExecutionError {
        is_internal: true,
        ..ExecutionError::generic(format!("the stored execution cannot be read: {err}"), false)
    }
}

/// How many more rows a claim that already holds `held` may take.
fn remaining(limit: u64, held: usize) -> u64 {
    limit.saturating_sub(u64::try_from(held).unwrap_or(u64::MAX))
}

/// A claim of rows `held` in `status` by `params.executor_id`: first what an earlier attempt
/// of the same claim took (when resuming), then up to the rest of the limit of fresh rows
/// matching `filter`, in `order`, updated with `sets`. Rows that cannot be read are failed
/// ([`fail_unreadable`]) instead of returned.
async fn claim_rows<C: ConnectionTrait>(
    conn: &C,
    params: &ClaimParams,
    resume: bool,
    held: TaskExecutionStatus,
    filter: Condition,
    order: [Col; 2],
    sets: Vec<(Col, SimpleExpr)>,
) -> Result<Vec<TaskExecution>> {
    let mut rows = if resume {
        taken_back(conn, params, held).await?
    } else {
        Vec::new()
    };
    let limit = remaining(params.limit, rows.len());
    if limit > 0 {
        let pick = Pick {
            filter: filter.add(admitted_queues(params)),
            order,
            limit,
            tasks: params.task_ids.clone(),
        };
        rows.extend(pick_and_update(conn, &pick, sets, true).await?.rows);
    }
    let (claimed, bad) = map_lenient(&rows);
    fail_unreadable(conn, bad, held, &params.executor_id, params.now).await?;
    Ok(claimed)
}

/// `queue NOT IN (SELECT queue FROM durable_paused_task_queues)`, with the queue read from the
/// claim's index. Uncorrelated, so each backend reads the tiny table once per statement (a
/// hashed subplan on PostgreSQL, a materialized set on MariaDB and SQLite); a correlated
/// `NOT EXISTS` probed it once per candidate row, which cost MariaDB's claims 5–10 %. Both
/// columns are `NOT NULL`, so `NOT IN` has no NULL surprise.
fn in_no_paused_queue() -> SimpleExpr {
    Expr::col((te::Entity, Col::Queue)).not_in_subquery(
        Query::select()
            .column((pq::Entity, pq::Column::Queue))
            .from(pq::Entity)
            .to_owned(),
    )
}

async fn claim_in<C: ConnectionTrait>(
    conn: &C,
    params: &ClaimParams,
    resume: bool,
) -> Result<Vec<TaskExecution>> {
    let filter = Condition::all()
        .add(Expr::col(Col::Status).eq(status_lit(TaskExecutionStatus::Ready)))
        .add(Expr::col(Col::StartAt).lte(params.now))
        .add(in_no_paused_queue());
    let sets = vec![
        (Col::Status, status_lit(TaskExecutionStatus::Running)),
        (Col::ExecutorId, Expr::val(params.executor_id.as_str())),
        (Col::ClaimId, Expr::val(params.claim_id.as_deref())),
        (Col::StartedAt, Expr::val(params.now)),
        (Col::ExpiresAt, clamped_timeout().add(params.lease_base())),
        (
            Col::FencingToken,
            dialect::next_token_expr(Col::FencingToken),
        ),
        (Col::UpdatedAt, Expr::val(params.now)),
    ];
    let order = [Col::StartAt, Col::ExecutionId];
    let mut claimed = claim_rows(
        conn,
        params,
        resume,
        TaskExecutionStatus::Running,
        filter,
        order,
        sets,
    )
    .await?;
    sort_by_start(&mut claimed);
    Ok(claimed)
}

async fn expire_in<C: ConnectionTrait>(conn: &C, now: i64, limit: u64) -> Result<u64> {
    let backend = conn.get_database_backend();
    let pick = Pick {
        filter: Condition::all()
            .add(Expr::col(Col::Status).eq(status_lit(TaskExecutionStatus::Running)))
            .add(Expr::col(Col::ExpiresAt).lt(now)),
        order: [Col::ExpiresAt, Col::ExecutionId],
        limit,
        tasks: None,
    };
    // One statement for both outcomes of `super::expiry_update`: back to `ready` with the
    // attempt counted while retries are left, else `failed`. `retry_attempts` is assigned last
    // because MySQL evaluates the other assignments with the values already assigned.
    let retry = || Expr::col(Col::RetryAttempts).lt(Expr::col(Col::MaxRetryAttempts));
    let choose = |then: SimpleExpr, otherwise: SimpleExpr| -> SimpleExpr {
        Expr::case(retry(), then).finally(otherwise).into()
    };
    let sets = vec![
        (
            Col::Status,
            choose(
                status_lit(TaskExecutionStatus::Ready),
                status_lit(TaskExecutionStatus::Failed),
            ),
        ),
        (Col::IsFinished, choose(bool_lit(false), bool_lit(true))),
        (
            Col::FinishedAt,
            choose(Expr::col(Col::FinishedAt), Expr::val(now)),
        ),
        (Col::ExpiresAt, Expr::val(Option::<i64>::None)),
        (Col::ExecutorId, Expr::val(Option::<String>::None)),
        (
            Col::Error,
            choose(
                error_val(backend, &super::lease_expired_error(true))?,
                error_val(backend, &super::lease_expired_error(false))?,
            ),
        ),
        (
            Col::StartAt,
            choose(Expr::val(now), Expr::col(Col::StartAt)),
        ),
        (Col::UpdatedAt, Expr::val(now)),
        (
            Col::RetryAttempts,
            choose(
                Expr::col(Col::RetryAttempts).add(1),
                Expr::col(Col::RetryAttempts),
            ),
        ),
    ];
    let picked = pick_and_update(conn, &pick, sets, false).await?;
    // Sleeping executions past their timeout end `timed_out`; the status condition of the pick
    // makes this and a concurrent wake exclude each other.
    let sleepers = Pick {
        filter: Condition::all()
            .add(Expr::col(Col::Status).eq(status_lit(TaskExecutionStatus::Sleeping)))
            .add(Expr::col(Col::ExpiresAt).lt(now)),
        order: [Col::ExpiresAt, Col::ExecutionId],
        limit,
        tasks: None,
    };
    let timed_out = TaskExecutionUpdate {
        now,
        status: Some(TaskExecutionStatus::TimedOut),
        error: Some(super::sleep_timed_out_error()),
        ..Default::default()
    };
    let slept = pick_and_update(conn, &sleepers, update_sets(backend, &timed_out)?, false).await?;
    Ok(u64::try_from(picked.ids.len() + slept.ids.len()).unwrap_or(u64::MAX))
}

/// Saves a schedule (see [`TaskExecutionStorage::save_task_schedule`]); `conn` must be a write
/// transaction. The existing row is read under a row lock (PostgreSQL/MySQL; SQLite's
/// `IMMEDIATE` transaction already excludes other writers), so two savers never interleave.
async fn save_schedule_in<C: ConnectionTrait>(
    conn: &C,
    schedule: &TaskSchedule,
) -> Result<TaskSchedule> {
    use sea_orm::{ActiveModelTrait, EntityTrait, IntoActiveModel, QueryTrait};
    let mut find = ts::Entity::find_by_id(schedule.schedule_id.clone());
    dialect::lock_for_update(conn.get_database_backend(), QueryTrait::query(&mut find));
    let existing = match find.one(conn).await? {
        Some(m) => Some(mapper::schedule_from_model(m)?),
        None => None,
    };
    match existing {
        Some(existing) if existing.same_definition(schedule) => Ok(existing),
        Some(existing) => {
            let stored = TaskSchedule {
                created_at: existing.created_at,
                last_tick_at: existing.last_tick_at,
                ..schedule.clone()
            };
            let model = mapper::schedule_to_model(stored.clone());
            // Every column written, so the update does not depend on what the row held.
            model.into_active_model().reset_all().update(conn).await?;
            Ok(stored)
        }
        None => {
            let model = mapper::schedule_to_model(schedule.clone());
            ts::Entity::insert(model.into_active_model())
                .exec_without_returning(conn)
                .await?;
            Ok(schedule.clone())
        }
    }
}

/// Fires a schedule (see [`TaskExecutionStorage::fire_task_schedule`]); `conn` must be a write
/// transaction, so that the tick's executions exist if and only if the tick moved.
async fn fire_schedule_in<C: ConnectionTrait>(conn: &C, fire: &ScheduleFire) -> Result<bool> {
    let moved = Query::update()
        .table(ts::Entity)
        .value(
            ts::Column::NextTickAt,
            fire.new_next_tick_at.unwrap_or(mapper::ENDED_SCHEDULE_TICK),
        )
        .value(ts::Column::LastTickAt, fire.last_tick_at)
        .value(ts::Column::UpdatedAt, fire.now)
        .and_where(Expr::col(ts::Column::ScheduleId).eq(fire.schedule_id.as_str()))
        .and_where(Expr::col(ts::Column::NextTickAt).eq(fire.expected_next_tick_at))
        .to_owned();
    if conn.execute(&moved).await?.rows_affected() == 0 {
        return Ok(false);
    }
    enqueue_in(conn, fire.executions.clone(), fire.now).await?;
    Ok(true)
}

/// How many times a wake looks for the sleeper again after losing it to a concurrent change.
const WAKE_ATTEMPTS: usize = 3;

pub(crate) async fn wake_in<C: ConnectionTrait>(conn: &C, wake: &Wake) -> Result<WakeResult> {
    super::validate_wake_key(&wake.wake_key)?;
    let key = wake.wake_key.as_str();
    let update = super::wake_update(&wake.outcome, wake.now);
    let sets = update_sets(conn.get_database_backend(), &update)?;
    for _ in 0..WAKE_ATTEMPTS {
        let sleeper = Query::select()
            .column(Col::ExecutionId)
            .from(te::Entity)
            .and_where(Expr::col(Col::SleepingKey).eq(key))
            .to_owned();
        let Some(row) = conn.query_one(&sleeper).await? else {
            break;
        };
        let id: String = row.try_get("", "execution_id")?;
        // The one conditional update that decides between this wake, another wake, a
        // cancellation and the timeout: whichever changes the `sleeping` row first wins.
        let guard = TaskExecutionGuard::id(id.clone()).status(TaskExecutionStatus::Sleeping);
        let mut stmt = guarded_update(&guard.execution_ids, &guard, sets.clone());
        stmt.and_where(Expr::col(Col::SleepingKey).eq(key));
        if conn.execute(&stmt).await?.rows_affected() > 0 {
            let select = Query::select()
                .column(Asterisk)
                .from(te::Entity)
                .and_where(Expr::col(Col::ExecutionId).eq(id.as_str()))
                .to_owned();
            let row = conn
                .query_one(&select)
                .await?
                .ok_or_else(|| Error::NotFound {
                    entity: "task execution",
                    key: id,
                })?;
            return Ok(WakeResult::Woken(mapper::execution_from_row(&row)?));
        }
    }
    let latest = Query::select()
        .column(Asterisk)
        .from(te::Entity)
        .and_where(Expr::col(Col::WakeKey).eq(key))
        .order_by(Col::CreatedAt, Order::Desc)
        .order_by(Col::ExecutionId, Order::Desc)
        .limit(1)
        .to_owned();
    match conn.query_one(&latest).await? {
        Some(row) => {
            let latest = mapper::execution_from_row(&row)?;
            // An earlier attempt of this wake (the same outcome at the same time) committed
            // without its reply arriving: it was this wake that woke it.
            Ok(if super::woken_by(&latest, wake) {
                WakeResult::Woken(latest)
            } else {
                WakeResult::AlreadyFinished(latest)
            })
        }
        None => Err(super::unknown_wake_key(key)),
    }
}

async fn claim_parents_in<C: ConnectionTrait>(
    conn: &C,
    params: &ClaimParams,
    resume: bool,
) -> Result<Vec<TaskExecution>> {
    let filter = Condition::all()
        .add(Expr::col(Col::Status).eq(status_lit(TaskExecutionStatus::WaitingForChildren)))
        .add(
            Condition::any()
                .add(Expr::col(Col::FinishedChildrenCount).gte(Expr::col(Col::ChildrenCount)))
                .add(Expr::col(Col::FailedChildrenCount).gt(0)),
        )
        .add(
            Condition::any()
                .add(Expr::col(Col::ExpiresAt).is_null())
                .add(Expr::col(Col::ExpiresAt).lte(params.now)),
        );
    let sets = vec![
        (Col::ExecutorId, Expr::val(params.executor_id.as_str())),
        (Col::ClaimId, Expr::val(params.claim_id.as_deref())),
        (
            Col::FencingToken,
            dialect::next_token_expr(Col::FencingToken),
        ),
        (Col::ExpiresAt, Expr::val(params.lease_base())),
        (Col::UpdatedAt, Expr::val(params.now)),
    ];
    // A parent that cannot be read is failed by the claim; it would otherwise be claimed again
    // after every lease, forever.
    let mut claimed = claim_rows(
        conn,
        params,
        resume,
        TaskExecutionStatus::WaitingForChildren,
        filter,
        [Col::UpdatedAt, Col::ExecutionId],
        sets,
    )
    .await?;
    claimed.sort_by(|a, b| (a.updated_at, &a.execution_id).cmp(&(b.updated_at, &b.execution_id)));
    Ok(claimed)
}

/// An execution being closed, as far as closing needs to know it.
struct Closing {
    execution_id: String,
    task_id: String,
    parent: Option<super::model::ParentRef>,
}

/// What the close of one execution could not do, and so records as a failure for its parent.
async fn propagate_failure_in<C: ConnectionTrait>(
    conn: &C,
    closing: &Closing,
    error: ExecutionError,
    now: i64,
) -> Result<()> {
    match &closing.parent {
        Some(parent) if parent.is_finalize => {
            let guard = TaskExecutionGuard::id(parent.execution_id.clone())
                .status(TaskExecutionStatus::WaitingForFinalize);
            let update = TaskExecutionUpdate {
                now,
                status: Some(TaskExecutionStatus::FinalizeFailed),
                error: Some(ExecutionError::generic(
                    format!(
                        "finalize task with id {} failed: {}",
                        closing.task_id, error.message
                    ),
                    false,
                )),
                ..Default::default()
            };
            update_in(conn, &guard, &update).await?;
        }
        Some(parent) => {
            let record = FinishedChildTaskExecution {
                parent_execution_id: parent.execution_id.clone(),
                child_execution_id: closing.execution_id.clone(),
                child_task_id: closing.task_id.clone(),
                index: parent.index,
                status: TaskExecutionStatus::Failed,
                output: None,
                error: Some(error.clone()),
                created_at: now,
            };
            record_finished_children_in(conn, vec![record]).await?;
        }
        None => {}
    }
    cancel_children_in(conn, &[(closing.execution_id.as_str(), error)], now).await
}

/// Cancels the still-active children (and finalize) of each parent, with that parent's error.
async fn cancel_children_in<C: ConnectionTrait>(
    conn: &C,
    parents: &[(&str, ExecutionError)],
    now: i64,
) -> Result<()> {
    let backend = conn.get_database_backend();
    let cancel = TaskExecutionUpdate {
        now,
        status: Some(TaskExecutionStatus::Cancelled),
        cancel_requested: Some(true),
        ..Default::default()
    };
    let errors = parents
        .iter()
        .map(|(id, error)| Ok((*id, error_val(backend, error)?, error.message.len())))
        .collect::<Result<Vec<_>>>()?;
    // Each parent adds its id twice and its error once: bound by binds and bytes.
    for chunk in dialect::chunks(backend, 3, &errors, |(id, _, len)| 2 * id.len() + len + 64) {
        let mut sets = update_sets(backend, &cancel)?;
        let error = match chunk {
            [(_, only, _)] => only.clone(),
            [(first_id, first, _), rest @ ..] => {
                let mut case = Expr::case(
                    Expr::col(Col::ParentExecutionId).eq(*first_id),
                    first.clone(),
                );
                for (id, error, _) in rest {
                    case = case.case(Expr::col(Col::ParentExecutionId).eq(*id), error.clone());
                }
                case.into()
            }
            [] => continue,
        };
        sets.push((Col::Error, error));
        let stmt = Query::update()
            .table(te::Entity)
            .values(sets)
            .and_where(Expr::col(Col::ParentExecutionId).is_in(chunk.iter().map(|(id, ..)| *id)))
            .and_where(Expr::col(Col::IsFinished).eq(bool_lit(false)))
            .to_owned();
        conn.execute(&stmt).await?;
    }
    Ok(())
}

/// How an execution whose row cannot be read is linked to its parent, read column by column so
/// that one bad column does not hide the others.
async fn unreadable_closing<C: ConnectionTrait>(conn: &C, key: &str) -> Result<Closing> {
    let select = Query::select()
        .columns([
            Col::TaskId,
            Col::ParentTaskId,
            Col::ParentExecutionId,
            Col::IndexInParent,
            Col::IsFinalize,
        ])
        .from(te::Entity)
        .and_where(Expr::col(Col::ExecutionId).eq(key))
        .to_owned();
    let row = conn.query_one(&select).await?;
    let get_str = |column: &str| -> Option<String> {
        row.as_ref()
            .and_then(|r| r.try_get::<Option<String>>("", column).ok().flatten())
    };
    let parent = match (get_str("parent_task_id"), get_str("parent_execution_id")) {
        (task_id, Some(execution_id)) => Some(super::model::ParentRef {
            task_id: task_id.unwrap_or_default(),
            execution_id,
            index: row
                .as_ref()
                .and_then(|r| r.try_get::<i32>("", "index_in_parent").ok())
                .and_then(|i| u32::try_from(i).ok())
                .unwrap_or(0),
            is_finalize: row
                .as_ref()
                .and_then(|r| r.try_get::<bool>("", "is_finalize").ok())
                .unwrap_or(false),
        }),
        (_, None) => None,
    };
    Ok(Closing {
        execution_id: key.to_owned(),
        task_id: get_str("task_id").unwrap_or_default(),
        parent,
    })
}

/// The candidates of a close: finished executions not closed yet, oldest change first;
/// `only` narrows it to one execution.
///
/// The flags are literals, to be served by `ix_durable_task_executions_unclosed_claim` in
/// order; for one execution they go through `COALESCE` instead, so that it is found by primary
/// key and not through that index, which holds an entry of every execution closed since the
/// last vacuum (see [`status_guard`]).
fn close_pick(limit: u64, only: Option<&str>) -> Pick {
    let flag = |col: Col, value: bool| match only {
        Some(_) => Expr::expr(sea_orm::sea_query::Func::coalesce([
            Expr::col(col),
            bool_lit(!value),
        ]))
        .eq(bool_lit(value)),
        None => Expr::col(col).eq(bool_lit(value)),
    };
    let mut filter = Condition::all()
        .add(flag(Col::IsFinished, true))
        .add(flag(Col::IsClosed, false));
    if let Some(id) = only {
        filter = filter.add(Expr::col(Col::ExecutionId).eq(id));
    }
    Pick {
        filter,
        order: [Col::UpdatedAt, Col::ExecutionId],
        limit,
        tasks: None,
    }
}

fn close_sets(now: i64) -> Vec<(Col, SimpleExpr)> {
    vec![
        (Col::IsClosed, Expr::val(true)),
        (Col::ClosedAt, Expr::val(now)),
        (Col::UpdatedAt, Expr::val(now)),
    ]
}

async fn close_in<C: ConnectionTrait>(
    conn: &C,
    now: i64,
    limit: u64,
    only: Option<&str>,
) -> Result<u64> {
    let picked = pick_and_update(conn, &close_pick(limit, only), close_sets(now), true).await?;
    propagate_outcomes_in(conn, &picked.rows, now).await?;
    Ok(u64::try_from(picked.ids.len()).unwrap_or(u64::MAX))
}

/// Propagates the outcomes of executions just marked closed, given their rows as updated: the
/// second half of [`close_in`], also run by [`update_batched_in`] for the executions it
/// finishes and closes in one statement.
async fn propagate_outcomes_in<C: ConnectionTrait>(
    conn: &C,
    rows: &[QueryResult],
    now: i64,
) -> Result<()> {
    let (closed, bad) = map_lenient(rows);
    for (key, err) in bad {
        if key.is_empty() {
            tracing::error!(error = %err, "finished execution cannot be read, nor its id; closed without propagating its outcome");
            continue;
        }
        // Its parent still learns that it finished, as a failure that says why.
        tracing::error!(execution_id = %key, error = %err, "finished execution cannot be read; recording it as failed for its parent");
        let closing = unreadable_closing(conn, &key).await?;
        propagate_failure_in(conn, &closing, unreadable_error(&err), now).await?;
    }

    // The outcomes are applied kind by kind (records, finalize outcomes, cancellations) rather
    // than row by row. The order could only matter for a batch holding both a finalize execution
    // and the failed grandparent whose close cancels the finalize's parent; either order is a
    // valid serialization of the two closes.

    // Children record themselves with their parents (one batch for all of them).
    let records = closed
        .iter()
        .filter_map(|e| {
            let parent = e.parent.as_ref().filter(|p| !p.is_finalize)?;
            Some(super::finished_child_record(e, parent, now))
        })
        .collect();
    record_finished_children_in(conn, records).await?;

    // Finalize executions finish their parents; each outcome differs, so one guarded update per
    // finalize execution, in parent order.
    let mut finalizes: Vec<&TaskExecution> = closed
        .iter()
        .filter(|e| e.parent.as_ref().is_some_and(|p| p.is_finalize))
        .collect();
    finalizes.sort_by(|a, b| {
        a.parent
            .as_ref()
            .map(|p| &p.execution_id)
            .cmp(&b.parent.as_ref().map(|p| &p.execution_id))
    });
    for finalize in finalizes {
        if let Some(parent) = &finalize.parent {
            let guard = TaskExecutionGuard::id(parent.execution_id.clone())
                .status(TaskExecutionStatus::WaitingForFinalize);
            update_in(conn, &guard, &super::finalize_outcome_update(finalize, now)).await?;
        }
    }

    // Executions that did not complete cancel their still-active children and finalize; the
    // error names each child's own parent.
    let failed: Vec<(&str, ExecutionError)> = closed
        .iter()
        .filter(|e| e.status != TaskExecutionStatus::Completed)
        .map(|e| (e.execution_id.as_str(), super::parent_finished_error(e)))
        .collect();
    cancel_children_in(conn, &failed, now).await
}

/// Closes `execution_id` recording its outcome as a failure, because propagating it failed
/// with `cause`: a child is recorded as failed for its parent, a finalize execution fails its
/// parent, and its own active children are cancelled. Returns how many it closed (0 or 1).
async fn close_as_failure_in<C: ConnectionTrait>(
    conn: &C,
    execution_id: &str,
    cause: &Error,
    now: i64,
) -> Result<u64> {
    let picked = pick_and_update(
        conn,
        &close_pick(1, Some(execution_id)),
        close_sets(now),
        true,
    )
    .await?;
    if picked.ids.is_empty() {
        return Ok(0);
    }
    let (closed, _) = map_lenient(&picked.rows);
    let closing = match closed.into_iter().next() {
        Some(e) => Closing {
            execution_id: e.execution_id,
            task_id: e.task_id,
            parent: e.parent,
        },
        None => unreadable_closing(conn, execution_id).await?,
    };
    let error = ExecutionError {
        is_internal: true,
        ..ExecutionError::generic(
            format!("the outcome of execution {execution_id} could not be recorded: {cause}"),
            false,
        )
    };
    propagate_failure_in(conn, &closing, error, now).await?;
    Ok(1)
}

/// Deletes up to `limit` finished, closed executions in `statuses` finished before
/// `finished_before` (oldest first, served by `ix_durable_task_executions_closed`), and the
/// finished-child records of those that were parents.
async fn prune_in<C: ConnectionTrait>(
    conn: &C,
    statuses: &[TaskExecutionStatus],
    finished_before: i64,
    limit: u64,
) -> Result<u64> {
    let select = Query::select()
        .column(Col::ExecutionId)
        .from(te::Entity)
        .and_where(Expr::col(Col::IsClosed).eq(bool_lit(true)))
        .and_where(Expr::col(Col::FinishedAt).lt(finished_before))
        .and_where(Expr::col(Col::Status).is_in(statuses.iter().map(|s| s.as_str())))
        .order_by(Col::FinishedAt, Order::Asc)
        .order_by(Col::ExecutionId, Order::Asc)
        .limit(crate::dialect::sql_limit(limit))
        .to_owned();
    let ids = ids_of(&conn.query_all(&select).await?)?;
    let backend = conn.get_database_backend();
    let mut deleted = 0;
    for chunk in id_chunks(backend, &ids) {
        let records = Query::delete()
            .from_table(fc::Entity)
            .and_where(
                Expr::col(ChildCol::ParentExecutionId).is_in(chunk.iter().map(String::as_str)),
            )
            .to_owned();
        conn.execute(&records).await?;
        let executions = Query::delete()
            .from_table(te::Entity)
            .and_where(Expr::col(Col::ExecutionId).is_in(chunk.iter().map(String::as_str)))
            .and_where(Expr::col(Col::IsClosed).eq(bool_lit(true)))
            .to_owned();
        deleted += conn.execute(&executions).await?.rows_affected();
    }
    Ok(deleted)
}

/// The counts of [`TaskExecutionStorage::count_task_executions`]: one `GROUP BY queue` branch
/// per status, joined by `UNION ALL`, in one statement. Each branch compares the status with a
/// literal (see the module docs), so the planner can count a status from the partial index of
/// its hot path (`ix_task_executions_ready_claim` even holds the queue, so `ready` is counted
/// from the index alone); a single `status IN (...)` would match no partial index and scan.
fn count_select(statuses: &[TaskExecutionStatus], limit: u64) -> Option<SelectStatement> {
    let mut distinct: Vec<TaskExecutionStatus> = Vec::new();
    for status in statuses {
        if !distinct.contains(status) {
            distinct.push(*status);
        }
    }
    let branch = |status: TaskExecutionStatus| {
        Query::select()
            .column(Col::Queue)
            .expr_as(status_lit(status), Alias::new("status"))
            .expr_as(Expr::col(Col::ExecutionId).count(), Alias::new("n"))
            .from(te::Entity)
            .and_where(Expr::col(Col::Status).eq(status_lit(status)))
            .group_by_col(Col::Queue)
            .to_owned()
    };
    let mut branches = distinct.into_iter().map(branch);
    let mut select = branches.next()?;
    for other in branches {
        select.union(sea_orm::sea_query::UnionType::All, other);
    }
    select
        .order_by(Alias::new("queue"), Order::Asc)
        .order_by(Alias::new("status"), Order::Asc)
        .limit(crate::dialect::sql_limit(limit));
    Some(select)
}

async fn count_in<C: ConnectionTrait>(
    conn: &C,
    statuses: &[TaskExecutionStatus],
    limit: u64,
) -> Result<Vec<TaskExecutionCount>> {
    let Some(select) = count_select(statuses, limit).filter(|_| limit > 0) else {
        return Ok(Vec::new());
    };
    conn.query_all(&select)
        .await?
        .iter()
        .map(|row| {
            let queue: String = row.try_get("", "queue")?;
            let status: String = row.try_get("", "status")?;
            let count: i64 = row.try_get("", "n")?;
            Ok(TaskExecutionCount {
                status: status
                    .parse()
                    .map_err(|e| Error::corrupt("task_executions", &queue, "status", e))?,
                count: u64::try_from(count).unwrap_or(0),
                queue,
            })
        })
        .collect()
}

/// [`TaskExecutionStorage::ready_task_executions`]: one aggregate over the ready rows that are
/// due, grouped by task and queue (the leading columns of `ix_durable_task_executions_ready_task`).
async fn ready_in<C: ConnectionTrait>(
    conn: &C,
    now: i64,
    limit: u64,
) -> Result<Vec<crate::task::ReadyTaskExecutions>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let select = Query::select()
        .column(Col::TaskId)
        .column(Col::Queue)
        .expr_as(Expr::col(Col::ExecutionId).count(), Alias::new("n"))
        .expr_as(Expr::col(Col::StartAt).min(), Alias::new("oldest"))
        .from(te::Entity)
        .and_where(Expr::col(Col::Status).eq(status_lit(TaskExecutionStatus::Ready)))
        .and_where(Expr::col(Col::StartAt).lte(now))
        .group_by_col(Col::TaskId)
        .group_by_col(Col::Queue)
        .order_by(Alias::new("oldest"), Order::Asc)
        .order_by(Col::TaskId, Order::Asc)
        .order_by(Col::Queue, Order::Asc)
        .limit(crate::dialect::sql_limit(limit))
        .to_owned();
    conn.query_all(&select)
        .await?
        .iter()
        .map(|row| {
            let count: i64 = row.try_get("", "n")?;
            Ok(crate::task::ReadyTaskExecutions {
                task_id: row.try_get("", "task_id")?,
                queue: row.try_get("", "queue")?,
                count: u64::try_from(count).unwrap_or(0),
                oldest_start_at: row.try_get("", "oldest")?,
            })
        })
        .collect()
}

/// The one conditional update of [`TaskExecutionStorage::retry_task_execution`]: the
/// conditions of `model::retry_refusal` in SQL, and the changes of `model::apply_retry`.
fn retry_update(execution_id: &str, now: i64) -> UpdateStatement {
    let max = i64::from(MAX_RETRY_ATTEMPTS);
    Query::update()
        .table(te::Entity)
        .values([
            (Col::Status, status_lit(TaskExecutionStatus::Ready)),
            (Col::IsFinished, Expr::val(false)),
            (Col::FinishedAt, Expr::val(Option::<i64>::None)),
            (Col::IsClosed, Expr::val(false)),
            (Col::ClosedAt, Expr::val(Option::<i64>::None)),
            (Col::StartAt, Expr::val(now)),
            (
                Col::RetryAttempts,
                Expr::case(
                    Expr::col(Col::RetryAttempts).lt(max),
                    Expr::col(Col::RetryAttempts).add(1),
                )
                .finally(Expr::val(max))
                .into(),
            ),
            (Col::ExpiresAt, Expr::val(Option::<i64>::None)),
            (Col::ExecutorId, Expr::val(Option::<String>::None)),
            (Col::CancelRequested, Expr::val(false)),
            (Col::Output, Expr::val(Option::<String>::None)),
            (Col::RunOutput, Expr::val(Option::<String>::None)),
            (Col::UpdatedAt, Expr::val(now)),
        ])
        .and_where(Expr::col(Col::ExecutionId).eq(execution_id))
        .and_where(Expr::col(Col::Status).is_in([
            status_lit(TaskExecutionStatus::Failed),
            status_lit(TaskExecutionStatus::TimedOut),
        ]))
        .and_where(Expr::col(Col::ParentExecutionId).is_null())
        .and_where(Expr::col(Col::WakeKey).is_null())
        .and_where(Expr::col(Col::ChildrenCount).eq(0))
        .and_where(Expr::col(Col::FinalizeExecutionId).is_null())
        .to_owned()
}

/// [`TaskExecutionStorage::retry_task_execution`] in write transaction `conn`: the
/// conditional update, then the row read back under the update's lock (so it is returned as
/// the retry left it, before any executor claims it), or, when the update did not match, the
/// reason read from the row. `None` when the row reads retryable although the update did not
/// match (it changed in between).
async fn retry_in<C: ConnectionTrait>(
    conn: &C,
    execution_id: &str,
    now: i64,
) -> Result<Option<TaskExecution>> {
    let matched = conn
        .execute(&retry_update(execution_id, now))
        .await?
        .rows_affected();
    let select = Query::select()
        .column(Asterisk)
        .from(te::Entity)
        .and_where(Expr::col(Col::ExecutionId).eq(execution_id))
        .to_owned();
    let execution = conn
        .query_one(&select)
        .await?
        .as_ref()
        .map(mapper::execution_from_row)
        .transpose()?
        .ok_or_else(|| Error::NotFound {
            entity: "task execution",
            key: execution_id.to_owned(),
        })?;
    if matched > 0 || retried_at(&execution, now) {
        // Matched, or already as this retry leaves it: an earlier attempt with the same `now`
        // committed without its reply arriving.
        return Ok(Some(execution));
    }
    match retry_refusal(&execution) {
        Some(reason) => Err(Error::invalid_state("task execution", execution_id, reason)),
        None => Ok(None),
    }
}

/// Up to `limit` executions with a cancellation request addressed to `executor_id`.
async fn cancellation_requests_in<C: ConnectionTrait>(
    conn: &C,
    executor_id: &str,
    limit: u64,
) -> Result<Vec<String>> {
    let select = Query::select()
        .column(Col::ExecutionId)
        .from(te::Entity)
        .and_where(Expr::col(Col::ExecutorId).eq(executor_id))
        .and_where(Expr::col(Col::CancelRequested).eq(bool_lit(true)))
        .order_by(Col::UpdatedAt, Order::Asc)
        .order_by(Col::ExecutionId, Order::Asc)
        .limit(crate::dialect::sql_limit(limit))
        .to_owned();
    ids_of(&conn.query_all(&select).await?)
}

// ---------------------------------------------------------------------------------------------
// The port

/// Runs claim `$claim_in` (an operation generic over the connection, taking the params and
/// whether an earlier attempt may have committed) with `$params`: on PostgreSQL on the pool,
/// one statement (two when resuming), with no transaction round trips; elsewhere in a write
/// transaction. A retried attempt resumes the claim of the one before. A macro because the
/// operation runs on two connection types.
macro_rules! claim {
    ($self:ident, $what:literal, $claim_in:ident, $params:expr) => {{
        let params = $params;
        if params.admits_nothing() {
            return Ok(Vec::new());
        }
        let attempts = Attempts::new(params.resume);
        match $self.db.get_database_backend() {
            DbBackend::Postgres => {
                Backoff::STORE
                    .retry($what, || $claim_in(&$self.db, params, attempts.retried()))
                    .await
            }
            _ => in_write_transaction!(&$self.db, $what, |txn| $claim_in(
                &txn,
                params,
                attempts.retried()
            )),
        }
    }};
}

/// Tells the attempts of a retried operation apart: the first attempt of a call sees `first`,
/// every later one `true` (an earlier attempt may have committed without its reply arriving).
struct Attempts(AtomicBool);

impl Attempts {
    fn new(first: bool) -> Self {
        Self(AtomicBool::new(first))
    }

    /// Whether an earlier attempt may have committed; marks this attempt as made.
    fn retried(&self) -> bool {
        self.0.swap(true, AtomicOrdering::SeqCst)
    }
}

impl SeaOrmTaskExecutionStorage {
    /// Enqueues in one statement or one transaction. A conflict whose rows are exactly the
    /// ones this call inserts (same ids, tasks, parents and enqueue time) means an earlier
    /// attempt committed without its reply arriving, this call's own retry or the caller's
    /// repeat of it: success.
    async fn enqueue_idempotent(&self, models: Vec<te::Model>) -> Result<()> {
        let single = enqueue_statements(self.db.get_database_backend(), &models) <= 1;
        Backoff::STORE.retry("enqueue_task_executions", || async {
            let _gate = dialect::enter_write(&self.db).await;
            let inserted = if single {
                // One statement is atomic on its own.
                insert_models(&self.db, &models).await
            } else {
                let txn = begin_write(&self.db).await?;
                match insert_models(&txn, &models).await {
                    Ok(()) => txn.commit().await.map_err(Error::from),
                    Err(err) => {
                        // Rolled back before the rows are looked at, on another connection.
                        let _ = txn.rollback().await;
                        Err(err)
                    }
                }
            };
            match inserted {
                Err(Error::Conflict { message, source })
                    if already_enqueued(&self.db, &models).await? =>
                {
                    tracing::info!(%message, source = ?source, "enqueue repeated after an attempt that committed");
                    Ok(())
                }
                other => other,
            }
        })
        .await
    }

    /// Closes one execution at a time, so that one whose outcome cannot be written does not
    /// hold up the others: it is closed with its outcome recorded as a failure that says why.
    async fn close_one_by_one(&self, now: i64, limit: u64) -> Result<u64> {
        let candidates = close_pick(limit, None)
            .select()
            .column(Col::ExecutionId)
            .to_owned();
        let ids = ids_of(&self.db.query_all(&candidates).await?)?;
        let mut closed = 0;
        for id in &ids {
            match in_write_transaction!(&self.db, "close_finished_task_executions", |txn| close_in(
                &txn,
                now,
                1,
                Some(id.as_str())
            )) {
                Ok(n) => closed += n,
                Err(err) if !err.is_retryable() => {
                    tracing::error!(execution_id = %id, error = %err, "the outcome of a finished execution cannot be written; recording it as a failure");
                    closed +=
                        in_write_transaction!(&self.db, "close_finished_task_executions", |txn| {
                            close_as_failure_in(&txn, id, &err, now)
                        })?;
                }
                Err(err) => return Err(err),
            }
        }
        Ok(closed)
    }
}

#[async_trait]
impl TaskExecutionStorage for SeaOrmTaskExecutionStorage {
    async fn enqueue_task_executions_in_transaction(
        &self,
        txn: &sea_orm::DatabaseTransaction,
        executions: Vec<NewTaskExecution>,
        now: i64,
    ) -> Result<()> {
        self.enqueue_task_executions_in(txn, executions, now).await
    }

    #[tracing::instrument(skip(self, executions), fields(count = executions.len()), err)]
    async fn enqueue_task_executions(
        &self,
        executions: Vec<NewTaskExecution>,
        now: i64,
    ) -> Result<()> {
        executions.iter().try_for_each(super::validate_new)?;
        if executions.is_empty() {
            return Ok(());
        }
        self.enqueue_idempotent(execution_models(executions, now)?)
            .await
    }

    #[tracing::instrument(skip(self), err)]
    async fn get_task_execution(&self, execution_id: &str) -> Result<Option<TaskExecution>> {
        if !text::storable(execution_id) {
            return Ok(None);
        }
        let select = Query::select()
            .column(Asterisk)
            .from(te::Entity)
            .and_where(Expr::col(Col::ExecutionId).eq(execution_id))
            .to_owned();
        let row = Backoff::STORE
            .retry("get_task_execution", || async {
                Ok(self.db.query_one(&select).await?)
            })
            .await?;
        row.as_ref().map(mapper::execution_from_row).transpose()
    }

    #[tracing::instrument(skip(self), err)]
    async fn get_task_executions(
        &self,
        filter: &TaskExecutionFilter,
    ) -> Result<Vec<TaskExecution>> {
        let Some(filter) = super::storable_filter(filter) else {
            return Ok(Vec::new());
        };
        Backoff::STORE
            .retry("get_task_executions", || get_many_in(&self.db, &filter))
            .await
    }

    #[tracing::instrument(skip(self), err)]
    async fn count_task_executions(
        &self,
        statuses: &[TaskExecutionStatus],
        limit: u64,
    ) -> Result<Vec<TaskExecutionCount>> {
        Backoff::STORE
            .retry("count_task_executions", || {
                count_in(&self.db, statuses, limit)
            })
            .await
    }

    #[tracing::instrument(skip(self), err)]
    async fn ready_task_executions(
        &self,
        now: i64,
        limit: u64,
    ) -> Result<Vec<crate::task::ReadyTaskExecutions>> {
        Backoff::STORE
            .retry("ready_task_executions", || ready_in(&self.db, now, limit))
            .await
    }

    #[tracing::instrument(skip(self), err)]
    async fn retry_task_execution(&self, execution_id: &str, now: i64) -> Result<TaskExecution> {
        if !text::storable(execution_id) {
            return Err(Error::NotFound {
                entity: "task execution",
                key: execution_id.to_owned(),
            });
        }
        // A row that reads retryable after the update did not match was changed back between
        // the two (failed again after another retry): the retry is tried again, a few times.
        for _ in 0..3 {
            let retried = in_write_transaction!(&self.db, "retry_task_execution", |txn| {
                retry_in(&txn, execution_id, now)
            })?;
            if let Some(retried) = retried {
                return Ok(retried);
            }
        }
        Err(Error::invalid_state(
            "task execution",
            execution_id,
            "kept changing while being retried; try again",
        ))
    }

    #[tracing::instrument(skip(self), err)]
    async fn claim_task_executions(&self, params: &ClaimParams) -> Result<Vec<TaskExecution>> {
        super::validate_claim(params)?;
        let params = super::storable_claim(params);
        claim!(self, "claim_task_executions", claim_in, &*params)
    }

    #[tracing::instrument(skip(self), err)]
    async fn update_task_executions(
        &self,
        guard: &TaskExecutionGuard,
        update: &TaskExecutionUpdate,
    ) -> Result<u64> {
        let guard = &*super::storable_guard(guard);
        if matches_nothing(guard) {
            return Ok(0);
        }
        if id_chunks(self.db.get_database_backend(), &guard.execution_ids).len() <= 1 {
            Backoff::STORE
                .retry("update_task_executions", || async {
                    let _gate = dialect::enter_write(&self.db).await;
                    update_in(&self.db, guard, update).await
                })
                .await
        } else {
            in_write_transaction!(&self.db, "update_task_executions", |txn| update_in(
                &txn, guard, update
            ))
        }
    }

    #[tracing::instrument(skip(self, updates), fields(count = updates.len()), err)]
    async fn update_task_executions_many(
        &self,
        updates: &[(TaskExecutionGuard, TaskExecutionUpdate)],
    ) -> Result<Vec<u64>> {
        if updates.iter().all(|(guard, _)| matches_nothing(guard)) {
            return Ok(vec![0; updates.len()]);
        }
        // Ids no database can hold match nothing (rare: only a caller's own guards have them).
        let cleaned: Vec<(TaskExecutionGuard, TaskExecutionUpdate)>;
        let updates = if updates
            .iter()
            .any(|(guard, _)| matches!(super::storable_guard(guard), Cow::Owned(_)))
        {
            cleaned = updates
                .iter()
                .map(|(guard, update)| (super::storable_guard(guard).into_owned(), update.clone()))
                .collect();
            &cleaned[..]
        } else {
            updates
        };
        let backend = self.db.get_database_backend();
        let (groups, single) = group_updates(backend, updates)?;
        // One transaction: one commit (one log flush) for the whole batch, and one statement
        // for each group of alike updates (often the whole batch: runs that completed), which
        // also closes the executions it finishes.
        in_write_transaction!(&self.db, "update_task_executions_many", |txn| async {
            let mut matched = vec![0; updates.len()];
            let mut closed = Vec::new();
            for group in &groups {
                for i in update_batched_in(&txn, group, &mut closed).await? {
                    matched[i] = 1;
                }
            }
            let now = updates.iter().map(|(_, u)| u.now).max().unwrap_or_default();
            propagate_outcomes_in(&txn, &closed, now).await?;
            for &i in &single {
                let (guard, update) = &updates[i];
                matched[i] = update_in(&txn, guard, update).await?;
            }
            Ok::<_, Error>(matched)
        })
    }

    #[tracing::instrument(skip(self, update, children), fields(children = children.len()), err)]
    async fn update_task_execution_and_enqueue(
        &self,
        guard: &TaskExecutionGuard,
        update: &TaskExecutionUpdate,
        children: Vec<NewTaskExecution>,
    ) -> Result<bool> {
        children.iter().try_for_each(super::validate_new)?;
        let guard = &*super::storable_guard(guard);
        if matches_nothing(guard) {
            return Ok(false);
        }
        in_write_transaction!(&self.db, "update_task_execution_and_enqueue", |txn| {
            update_and_enqueue_in(&txn, guard, update, children.clone())
        })
    }

    #[tracing::instrument(skip(self, children), fields(count = children.len()), err)]
    async fn add_finished_child_task_executions(
        &self,
        children: Vec<FinishedChildTaskExecution>,
    ) -> Result<()> {
        children
            .iter()
            .try_for_each(super::validate_finished_child)?;
        if children.is_empty() {
            return Ok(());
        }
        in_write_transaction!(&self.db, "add_finished_child_task_executions", |txn| {
            record_finished_children_in(&txn, children.clone())
        })
    }

    #[tracing::instrument(skip(self), err)]
    async fn get_finished_child_task_executions(
        &self,
        parent_execution_id: &str,
    ) -> Result<Vec<FinishedChildTaskExecution>> {
        if !text::storable(parent_execution_id) {
            return Ok(Vec::new());
        }
        let select = Query::select()
            .column(Asterisk)
            .from(fc::Entity)
            .and_where(Expr::col(ChildCol::ParentExecutionId).eq(parent_execution_id))
            .order_by(ChildCol::ChildIndex, Order::Asc)
            .order_by(ChildCol::ChildExecutionId, Order::Asc)
            .to_owned();
        let rows = Backoff::STORE
            .retry("get_finished_child_task_executions", || async {
                Ok(self.db.query_all(&select).await?)
            })
            .await?;
        rows.iter().map(mapper::finished_child_from_row).collect()
    }

    #[tracing::instrument(skip(self), err)]
    async fn expire_task_executions(&self, now: i64, limit: u64) -> Result<u64> {
        if limit == 0 {
            return Ok(0);
        }
        in_write_transaction!(&self.db, "expire_task_executions", |txn| expire_in(
            &txn, now, limit
        ))
    }

    #[tracing::instrument(skip(self), err)]
    async fn claim_parents_with_finished_children(
        &self,
        params: &ClaimParams,
    ) -> Result<Vec<TaskExecution>> {
        super::validate_claim(params)?;
        let params = super::storable_claim(params);
        claim!(
            self,
            "claim_parents_with_finished_children",
            claim_parents_in,
            &*params
        )
    }

    #[tracing::instrument(skip(self), err)]
    async fn close_finished_task_executions(&self, now: i64, limit: u64) -> Result<u64> {
        if limit == 0 {
            return Ok(0);
        }
        match in_write_transaction!(&self.db, "close_finished_task_executions", |txn| close_in(
            &txn, now, limit, None
        )) {
            Err(err) if !err.is_retryable() => {
                tracing::warn!(error = %err, "closing a batch of executions failed; closing them one by one");
                self.close_one_by_one(now, limit).await
            }
            other => other,
        }
    }

    #[tracing::instrument(skip(self), err)]
    async fn cancellation_requests(&self, executor_id: &str, limit: u64) -> Result<Vec<String>> {
        if limit == 0 || !text::storable(executor_id) {
            return Ok(Vec::new());
        }
        Backoff::STORE
            .retry("cancellation_requests", || {
                cancellation_requests_in(&self.db, executor_id, limit)
            })
            .await
    }

    #[tracing::instrument(skip(self, schedule), fields(schedule_id = %schedule.schedule_id), err)]
    async fn save_task_schedule(&self, schedule: TaskSchedule) -> Result<TaskSchedule> {
        super::validate_schedule(&schedule)?;
        // Executors starting together insert the same schedule at once: the loser's conflict
        // is retried once, and then finds the winner's row.
        match in_write_transaction!(&self.db, "save_task_schedule", |txn| save_schedule_in(
            &txn, &schedule
        )) {
            Err(Error::Conflict { .. }) => {
                in_write_transaction!(&self.db, "save_task_schedule", |txn| save_schedule_in(
                    &txn, &schedule
                ))
            }
            other => other,
        }
    }

    #[tracing::instrument(skip(self), err)]
    async fn get_task_schedules(&self) -> Result<Vec<TaskSchedule>> {
        use sea_orm::{EntityTrait, QueryOrder};
        let rows = Backoff::STORE
            .retry("get_task_schedules", || async {
                Ok(ts::Entity::find()
                    .order_by_asc(ts::Column::ScheduleId)
                    .all(&self.db)
                    .await?)
            })
            .await?;
        rows.into_iter().map(mapper::schedule_from_model).collect()
    }

    #[tracing::instrument(skip(self), err)]
    async fn delete_task_schedule(&self, schedule_id: &str) -> Result<bool> {
        use sea_orm::EntityTrait;
        if !text::storable(schedule_id) {
            return Ok(false);
        }
        Backoff::STORE
            .retry("delete_task_schedule", || async {
                let _gate = dialect::enter_write(&self.db).await;
                Ok(ts::Entity::delete_by_id(schedule_id.to_owned())
                    .exec(&self.db)
                    .await?
                    .rows_affected
                    > 0)
            })
            .await
    }

    #[tracing::instrument(skip(self, task_ids), err)]
    async fn due_task_schedules(
        &self,
        now: i64,
        task_ids: Option<&[String]>,
        limit: u64,
    ) -> Result<Vec<TaskSchedule>> {
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
        let task_ids = task_ids.map(super::storable_ids);
        let task_ids = task_ids.as_deref();
        if limit == 0 || task_ids.is_some_and(<[String]>::is_empty) {
            return Ok(Vec::new());
        }
        let mut find = ts::Entity::find()
            .filter(ts::Column::NextTickAt.lte(now))
            .order_by_asc(ts::Column::NextTickAt)
            .order_by_asc(ts::Column::ScheduleId)
            .limit(crate::dialect::sql_limit(limit));
        if let Some(ids) = task_ids {
            find = find.filter(ts::Column::TaskId.is_in(ids.iter().map(String::as_str)));
        }
        let rows = Backoff::STORE
            .retry("due_task_schedules", || async {
                Ok(find.clone().all(&self.db).await?)
            })
            .await?;
        // A schedule that cannot be read must not keep the others from firing.
        Ok(rows
            .into_iter()
            .filter_map(|m| match mapper::schedule_from_model(m) {
                Ok(schedule) => Some(schedule),
                Err(err) => {
                    tracing::error!(error = %err, "a due schedule cannot be read; skipping it");
                    None
                }
            })
            .collect())
    }

    #[tracing::instrument(skip(self, fire), fields(schedule_id = %fire.schedule_id), err)]
    async fn fire_task_schedule(&self, fire: &ScheduleFire) -> Result<bool> {
        fire.executions.iter().try_for_each(super::validate_new)?;
        super::validate_schedule_id(&fire.schedule_id)?;
        // A retry after a lost commit finds the tick moved and answers false: the executions
        // of the first attempt are there, once.
        in_write_transaction!(&self.db, "fire_task_schedule", |txn| fire_schedule_in(
            &txn, fire
        ))
    }

    #[tracing::instrument(skip(self), fields(wake_key = %wake.wake_key), err)]
    async fn wake_task_execution(&self, wake: &Wake) -> Result<WakeResult> {
        // A retry after a lost reply finds the execution finished by the first attempt, as this
        // wake finishes it, and answers `Woken` with it: never a second change.
        Backoff::STORE
            .retry("wake_task_execution", || async {
                let _gate = dialect::enter_write(&self.db).await;
                wake_in(&self.db, wake).await
            })
            .await
    }

    #[tracing::instrument(skip(self), err)]
    async fn prune_task_executions(
        &self,
        statuses: &[TaskExecutionStatus],
        finished_before: i64,
        limit: u64,
    ) -> Result<u64> {
        if statuses.is_empty() || limit == 0 {
            return Ok(0);
        }
        // Deleting finished, closed rows is idempotent: a retry after a lost reply deletes the
        // next ones, or nothing.
        in_write_transaction!(&self.db, "prune_task_executions", |txn| prune_in(
            &txn,
            statuses,
            finished_before,
            limit
        ))
    }

    #[tracing::instrument(skip(self), err)]
    async fn pause_task_queue(&self, queue: &str, now: i64) -> Result<PausedQueue> {
        super::validate_queue(queue)?;
        // A retry after a lost commit finds the row and keeps its first `paused_at`.
        in_write_transaction!(&self.db, "pause_task_queue", |txn| pause_in(
            &txn, queue, now
        ))
    }

    #[tracing::instrument(skip(self), err)]
    async fn resume_task_queue(&self, queue: &str) -> Result<bool> {
        use sea_orm::EntityTrait;
        super::validate_queue(queue)?;
        Backoff::STORE
            .retry("resume_task_queue", || async {
                let _gate = dialect::enter_write(&self.db).await;
                Ok(pq::Entity::delete_by_id(queue.to_owned())
                    .exec(&self.db)
                    .await?
                    .rows_affected
                    > 0)
            })
            .await
    }

    #[tracing::instrument(skip(self), err)]
    async fn paused_task_queues(&self) -> Result<Vec<PausedQueue>> {
        use sea_orm::{EntityTrait, QueryOrder};
        let rows = Backoff::STORE
            .retry("paused_task_queues", || async {
                Ok(pq::Entity::find()
                    .order_by_asc(pq::Column::Queue)
                    .all(&self.db)
                    .await?)
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|m| PausedQueue {
                queue: m.queue,
                paused_at: m.paused_at,
            })
            .collect())
    }

    #[tracing::instrument(skip(self), err)]
    async fn database_time_ms(&self) -> Result<Option<i64>> {
        let backend = self.db.get_database_backend();
        let row = self
            .db
            .query_one_raw(sea_orm::Statement::from_string(
                backend,
                dialect::database_time_sql(backend),
            ))
            .await?;
        Ok(row.map(|r| r.try_get::<i64>("", "now_ms")).transpose()?)
    }

    #[tracing::instrument(skip(self, execution_ids), fields(count = execution_ids.len()), err)]
    async fn acknowledge_cancellation_requests(
        &self,
        executor_id: &str,
        execution_ids: &[String],
        now: i64,
    ) -> Result<u64> {
        let execution_ids = &*super::storable_ids(execution_ids);
        if execution_ids.is_empty() || !text::storable(executor_id) {
            return Ok(0);
        }
        // Clearing a flag is idempotent: a retry after a lost reply changes nothing more.
        Backoff::STORE
            .retry("acknowledge_cancellation_requests", || async {
                let _gate = dialect::enter_write(&self.db).await;
                let mut cleared = 0;
                for chunk in id_chunks(self.db.get_database_backend(), execution_ids) {
                    let stmt = Query::update()
                        .table(te::Entity)
                        .value(Col::CancelRequested, false)
                        .value(Col::UpdatedAt, now)
                        .and_where(
                            Expr::col(Col::ExecutionId).is_in(chunk.iter().map(String::as_str)),
                        )
                        .and_where(Expr::col(Col::ExecutorId).eq(executor_id))
                        .and_where(Expr::col(Col::CancelRequested).eq(bool_lit(true)))
                        .to_owned();
                    cleared += self.db.execute(&stmt).await?.rows_affected();
                }
                Ok(cleared)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::sea_query::PostgresQueryBuilder;

    use super::*;

    /// Guards find their rows by primary key; the status is compared in a form no partial
    /// index on the status matches (see [`status_guard`]; `tests/durable/schema.rs` checks
    /// the plan).
    #[test]
    fn guards_compare_the_status_through_coalesce() {
        let guard = TaskExecutionGuard::id("a")
            .status(TaskExecutionStatus::Running)
            .fencing_token(3);
        let sql = guarded_update(
            &guard.execution_ids,
            &guard,
            vec![(Col::UpdatedAt, Expr::val(1))],
        )
        .to_string(PostgresQueryBuilder);
        assert_eq!(
            sql,
            "UPDATE \"durable_task_executions\" SET \"updated_at\" = 1 WHERE \"execution_id\" IN ('a') \
             AND COALESCE(\"status\", '') IN ('running') AND \"fencing_token\" = 3"
        );
    }

    /// A close of one execution finds it by primary key (`tests/durable/schema.rs` checks the
    /// plan).
    #[test]
    fn the_close_of_one_execution_compares_its_flags_through_coalesce() {
        let sql = close_pick(1, Some("a"))
            .select()
            .column(Col::ExecutionId)
            .to_string(PostgresQueryBuilder);
        assert_eq!(
            sql,
            "SELECT \"execution_id\" FROM \"durable_task_executions\" \
             WHERE COALESCE(\"is_finished\", FALSE) = (TRUE) AND COALESCE(\"is_closed\", TRUE) = (FALSE) \
             AND \"execution_id\" = 'a' ORDER BY \"updated_at\" ASC, \"execution_id\" ASC LIMIT 1"
        );
    }

    #[test]
    fn postgres_claim_is_one_materialized_cte_with_skip_locked() {
        let pick = Pick {
            filter: Condition::all()
                .add(Expr::col(Col::Status).eq(status_lit(TaskExecutionStatus::Ready)))
                .add(Expr::col(Col::StartAt).lte(5)),
            order: [Col::StartAt, Col::ExecutionId],
            limit: 10,
            tasks: None,
        };
        let sets = vec![(Col::FencingToken, Expr::col(Col::FencingToken).add(1))];
        let sql = postgres_pick_and_update(
            &pick,
            sets,
            Query::returning().column((te::Entity, Asterisk)),
        )
        .to_string(PostgresQueryBuilder);
        assert_eq!(
            sql,
            "WITH \"picked\" AS  MATERIALIZED (SELECT \"execution_id\" AS \"picked_id\" \
             FROM \"durable_task_executions\" WHERE \"status\" = ('ready') AND \"start_at\" <= 5 \
             ORDER BY \"start_at\" ASC, \"execution_id\" ASC LIMIT 10 FOR UPDATE SKIP LOCKED) \
             UPDATE \"durable_task_executions\" SET \"fencing_token\" = \"fencing_token\" + 1 \
             FROM \"picked\" WHERE \"durable_task_executions\".\"execution_id\" = \"picked\".\"picked_id\" \
             RETURNING \"durable_task_executions\".*"
        );
    }

    /// A claim of some tasks reads each task through its own index range: one lateral
    /// subquery per task, each locking at most the limit (PostgreSQL refuses `FOR UPDATE` in
    /// the branches of a `UNION`), then the first rows of them all.
    #[test]
    fn postgres_claim_of_some_tasks_locks_per_task_through_a_lateral_subquery() {
        let pick = Pick {
            filter: Condition::all()
                .add(Expr::col(Col::Status).eq(status_lit(TaskExecutionStatus::Ready)))
                .add(Expr::col(Col::StartAt).lte(5)),
            order: [Col::StartAt, Col::ExecutionId],
            limit: 10,
            tasks: Some(vec!["a".into(), "b".into()]),
        };
        let sql = pick
            .candidates(DbBackend::Postgres, "picked_id")
            .to_string(PostgresQueryBuilder);
        assert_eq!(
            sql,
            "SELECT \"merged\".\"execution_id\" AS \"picked_id\" FROM (VALUES ('a'), ('b')) AS \"served\" \
             INNER JOIN LATERAL (SELECT \"execution_id\", \"start_at\" FROM \"durable_task_executions\" \
             WHERE \"status\" = ('ready') AND \"start_at\" <= 5 \
             AND \"durable_task_executions\".\"task_id\" = \"served\".\"column1\" \
             ORDER BY \"start_at\" ASC, \"execution_id\" ASC LIMIT 10 FOR UPDATE SKIP LOCKED) AS \"merged\" ON TRUE \
             ORDER BY \"merged\".\"start_at\" ASC, \"merged\".\"execution_id\" ASC LIMIT 10"
        );
    }
}

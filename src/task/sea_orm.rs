//! [`SeaOrmTaskExecutionStorage`]: task executions kept in the application's database through
//! SeaORM, on PostgreSQL, MySQL/MariaDB and SQLite.
//!
//! Every operation is written once, as a private fn generic over [`ConnectionTrait`], and the
//! port method runs it on the pool or in a write transaction
//! ([`dialect::write_transaction`](crate::dialect::write_transaction)), retried on transient
//! errors. The backends differ only in how rows are picked and updated atomically
//! ([`pick_and_update`]) and in the insert-if-absent clause.
//!
//! Status and flag constants in the hot filters are written as SQL literals, not bound
//! parameters: the partial indexes of the migration (`WHERE status = 'ready'`, ...) can only be
//! used when the planner sees the same constant in the query.

use std::collections::{BTreeSet, HashSet};

use async_trait::async_trait;
use sea_orm::sea_query::{
    Alias, Asterisk, CommonTableExpression, Condition, Expr, ExprTrait, LockBehavior, LockType,
    OnConflict, Order, Query, ReturningClause, SelectStatement, SimpleExpr, UpdateStatement, Value,
    WithClause, WithQuery,
};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, IntoActiveModel, Iterable,
    QueryResult, QueryTrait,
};
use sea_orm_durable_entity::{finished_child_task_executions as fc, task_executions as te};

use super::mapper;
use super::model::{
    ClaimParams, ExecutionError, FinishedChildTaskExecution, NewTaskExecution, TaskExecution,
    TaskExecutionFilter, TaskExecutionGuard, TaskExecutionStatus, TaskExecutionUpdate,
};
use super::storage::TaskExecutionStorage;
use crate::dialect::{begin_write, retry};
use crate::error::{Error, Result};

type Col = te::Column;
type ChildCol = fc::Column;

/// Bind parameters one statement may carry on `backend` (PostgreSQL and MySQL: 65 535; SQLite:
/// 32 766 since 3.32).
fn max_params(backend: DbBackend) -> usize {
    match backend {
        DbBackend::Sqlite => 32_766,
        _ => 65_535,
    }
}

/// Longest `IN (...)` list sent in one statement.
const MAX_IDS_PER_STATEMENT: usize = 10_000;

/// Task executions in a SeaORM database.
///
/// Build it from the application's [`DatabaseConnection`] after running the migrations
/// ([`crate::migration`]). On SQLite give the pool a few connections, WAL and a busy timeout of
/// several seconds: every write transaction starts `IMMEDIATE` and waits for the write lock.
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

fn json_val(value: serde_json::Value) -> SimpleExpr {
    Expr::val(Value::Json(Some(Box::new(value))))
}

fn null_json() -> SimpleExpr {
    Expr::val(Value::Json(None))
}

fn error_val(error: &ExecutionError) -> Result<SimpleExpr> {
    Ok(json_val(mapper::error_json(error)?))
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

fn update_sets(update: &TaskExecutionUpdate) -> Result<Vec<(Col, SimpleExpr)>> {
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
    }
    if let Some(v) = &update.run_output {
        sets.push((Col::RunOutput, Expr::val(v.as_str())));
    }
    if let Some(v) = &update.output {
        sets.push((Col::Output, Expr::val(v.as_str())));
    }
    if update.clear_error {
        sets.push((Col::Error, null_json()));
    } else if let Some(e) = &update.error {
        sets.push((Col::Error, error_val(e)?));
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
    sets.push((Col::UpdatedAt, Expr::val(now)));
    Ok(sets)
}

/// Which rows an atomic pick-and-update takes: those matching `filter`, in `order`, at most
/// `limit`, skipping rows other transactions hold.
struct Pick {
    filter: Condition,
    order: [Col; 2],
    limit: u64,
}

impl Pick {
    fn select(&self) -> SelectStatement {
        Query::select()
            .from(te::Entity)
            .cond_where(self.filter.clone())
            .order_by(self.order[0], Order::Asc)
            .order_by(self.order[1], Order::Asc)
            .limit(self.limit)
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
            let select = pick
                .select()
                .column(Col::ExecutionId)
                .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
                .to_owned();
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
                        .in_subquery(pick.select().column(Col::ExecutionId).to_owned()),
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
    let select = pick
        .select()
        .expr_as(Expr::col(Col::ExecutionId), Alias::new("picked_id"))
        .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
        .to_owned();
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

pub(crate) async fn enqueue_in<C: ConnectionTrait>(
    conn: &C,
    executions: Vec<NewTaskExecution>,
    now: i64,
) -> Result<()> {
    if executions.is_empty() {
        return Ok(());
    }
    let models = executions
        .into_iter()
        .map(|e| mapper::execution_to_model(e.into_execution(now)))
        .collect::<Result<Vec<_>>>()?;
    let per_statement = rows_per_statement(conn.get_database_backend(), te::Column::iter().count());
    for chunk in models.chunks(per_statement) {
        let stmt = te::Entity::insert_many(
            chunk
                .iter()
                .cloned()
                .map(IntoActiveModel::into_active_model),
        )
        .into_query();
        conn.execute(&stmt)
            .await
            .map_err(|e| match Error::from(e) {
                Error::Conflict { source, .. } => Error::Conflict {
                    message: "a task execution with one of these ids already exists".to_owned(),
                    source,
                },
                other => other,
            })?;
    }
    Ok(())
}

/// How many rows of `columns` columns fit one statement's bind parameters.
fn rows_per_statement(backend: DbBackend, columns: usize) -> usize {
    (max_params(backend) / columns.max(1)).max(1)
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
    select
        .order_by(Col::CreatedAt, Order::Asc)
        .order_by(Col::IndexInParent, Order::Asc)
        .order_by(Col::ExecutionId, Order::Asc);
    if let Some(limit) = filter.limit {
        select.limit(limit);
    }
    select
}

async fn get_many_in<C: ConnectionTrait>(
    conn: &C,
    filter: &TaskExecutionFilter,
) -> Result<Vec<TaskExecution>> {
    if filter.execution_ids.as_ref().is_some_and(Vec::is_empty)
        || filter.statuses.as_ref().is_some_and(Vec::is_empty)
        || filter.limit == Some(0)
    {
        return Ok(Vec::new());
    }
    let mut rows = Vec::new();
    match &filter.execution_ids {
        Some(ids) if ids.len() > MAX_IDS_PER_STATEMENT => {
            for chunk in ids.chunks(MAX_IDS_PER_STATEMENT) {
                rows.extend(conn.query_all(&filter_select(filter, Some(chunk))).await?);
            }
        }
        ids => {
            rows = conn
                .query_all(&filter_select(filter, ids.as_deref()))
                .await?
        }
    }
    let mut found = rows
        .iter()
        .map(mapper::execution_from_row)
        .collect::<Result<Vec<_>>>()?;
    if filter
        .execution_ids
        .as_ref()
        .is_some_and(|ids| ids.len() > MAX_IDS_PER_STATEMENT)
    {
        found.sort_by(|a, b| {
            let index = |e: &TaskExecution| e.parent.as_ref().map_or(0, |p| p.index);
            (a.created_at, index(a), &a.execution_id).cmp(&(
                b.created_at,
                index(b),
                &b.execution_id,
            ))
        });
        if let Some(limit) = filter.limit {
            found.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        }
    }
    Ok(found)
}

/// The guarded update of up to [`MAX_IDS_PER_STATEMENT`] executions.
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
        stmt.and_where(Expr::col(Col::Status).is_in(statuses.iter().map(|s| s.as_str())));
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
    let sets = update_sets(update)?;
    let mut matched = 0;
    for chunk in guard.execution_ids.chunks(MAX_IDS_PER_STATEMENT) {
        let stmt = guarded_update(chunk, guard, sets.clone());
        matched += conn.execute(&stmt).await?.rows_affected();
    }
    Ok(matched)
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

/// Records finished children, once per (parent, child), and recounts each parent.
///
/// The parents are locked first, in execution-id order (PostgreSQL/MySQL `SELECT … FOR
/// UPDATE`; SQLite's `IMMEDIATE` transaction already excludes every other writer). A
/// transaction recording children of the same parent therefore waits for this one to commit,
/// and its recount (READ COMMITTED: every statement sees what was committed before it) counts
/// this one's records too, so the counters always equal the records however many children
/// finish at once. `conn` must be a write transaction.
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
    let parents: Vec<String> = children
        .iter()
        .map(|c| c.parent_execution_id.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if backend != DbBackend::Sqlite {
        for chunk in parents.chunks(MAX_IDS_PER_STATEMENT) {
            let lock = Query::select()
                .column(Col::ExecutionId)
                .from(te::Entity)
                .and_where(Expr::col(Col::ExecutionId).is_in(chunk.iter().map(String::as_str)))
                .order_by(Col::ExecutionId, Order::Asc)
                .lock(LockType::Update)
                .to_owned();
            conn.query_all(&lock).await?;
        }
    }
    let models = children
        .into_iter()
        .map(mapper::finished_child_to_model)
        .collect::<Result<Vec<_>>>()?;
    let on_conflict = match backend {
        // sea-query renders `do_nothing()` as invalid SQL on MySQL; assigning the key column to
        // itself is MySQL's insert-if-absent.
        DbBackend::MySql => OnConflict::new()
            .update_column(ChildCol::ParentExecutionId)
            .to_owned(),
        _ => OnConflict::columns([ChildCol::ParentExecutionId, ChildCol::ChildExecutionId])
            .do_nothing()
            .to_owned(),
    };
    for chunk in models.chunks(rows_per_statement(backend, fc::Column::iter().count())) {
        let stmt = fc::Entity::insert_many(
            chunk
                .iter()
                .cloned()
                .map(IntoActiveModel::into_active_model),
        )
        .on_conflict(on_conflict.clone())
        .into_query();
        conn.execute(&stmt).await?;
    }
    for chunk in parents.chunks(MAX_IDS_PER_STATEMENT) {
        let recount = Query::update()
            .table(te::Entity)
            .value(
                Col::FinishedChildrenCount,
                Expr::cust(
                    "(SELECT COUNT(*) FROM finished_child_task_executions f \
                     WHERE f.parent_execution_id = task_executions.execution_id)",
                ),
            )
            .value(
                Col::FailedChildrenCount,
                Expr::cust(
                    "(SELECT COUNT(*) FROM finished_child_task_executions f \
                     WHERE f.parent_execution_id = task_executions.execution_id \
                     AND f.status <> 'completed')",
                ),
            )
            .and_where(Expr::col(Col::ExecutionId).is_in(chunk.iter().map(String::as_str)))
            .to_owned();
        conn.execute(&recount).await?;
    }
    Ok(())
}

async fn claim_in<C: ConnectionTrait>(
    conn: &C,
    params: &ClaimParams,
) -> Result<Vec<TaskExecution>> {
    let pick = Pick {
        filter: Condition::all()
            .add(Expr::col(Col::Status).eq(status_lit(TaskExecutionStatus::Ready)))
            .add(Expr::col(Col::StartAt).lte(params.now)),
        order: [Col::StartAt, Col::ExecutionId],
        limit: params.limit,
    };
    let sets = vec![
        (Col::Status, status_lit(TaskExecutionStatus::Running)),
        (Col::ExecutorId, Expr::val(params.executor_id.as_str())),
        (Col::StartedAt, Expr::val(params.now)),
        (
            Col::ExpiresAt,
            Expr::col(Col::TimeoutMs).add(params.now.saturating_add(params.lease_margin_ms)),
        ),
        (Col::FencingToken, Expr::col(Col::FencingToken).add(1)),
        (Col::UpdatedAt, Expr::val(params.now)),
    ];
    let picked = pick_and_update(conn, &pick, sets, true).await?;
    let (mut claimed, bad) = map_lenient(&picked.rows);
    for (key, err) in bad {
        tracing::error!(execution_id = %key, error = %err, "claimed execution cannot be read; failing it");
        let update = TaskExecutionUpdate {
            now: params.now,
            status: Some(TaskExecutionStatus::Failed),
            error: Some(ExecutionError {
                is_internal: true,
                ..ExecutionError::generic(
                    format!("the stored execution cannot be read: {err}"),
                    false,
                )
            }),
            ..Default::default()
        };
        let guard = TaskExecutionGuard::id(key).status(TaskExecutionStatus::Running);
        let mut stmt = guarded_update(&guard.execution_ids, &guard, update_sets(&update)?);
        stmt.and_where(Expr::col(Col::ExecutorId).eq(params.executor_id.as_str()));
        conn.execute(&stmt).await?;
    }
    sort_by_start(&mut claimed);
    Ok(claimed)
}

async fn expire_in<C: ConnectionTrait>(conn: &C, now: i64, limit: u64) -> Result<u64> {
    let pick = Pick {
        filter: Condition::all()
            .add(Expr::col(Col::Status).eq(status_lit(TaskExecutionStatus::Running)))
            .add(Expr::col(Col::ExpiresAt).lt(now)),
        order: [Col::ExpiresAt, Col::ExecutionId],
        limit,
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
                error_val(&super::lease_expired_error(true))?,
                error_val(&super::lease_expired_error(false))?,
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
    Ok(u64::try_from(picked.ids.len()).unwrap_or(u64::MAX))
}

async fn claim_parents_in<C: ConnectionTrait>(
    conn: &C,
    params: &ClaimParams,
) -> Result<Vec<TaskExecution>> {
    let pick = Pick {
        filter: Condition::all()
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
            ),
        order: [Col::UpdatedAt, Col::ExecutionId],
        limit: params.limit,
    };
    let sets = vec![
        (Col::ExecutorId, Expr::val(params.executor_id.as_str())),
        (Col::FencingToken, Expr::col(Col::FencingToken).add(1)),
        (
            Col::ExpiresAt,
            Expr::val(params.now.saturating_add(params.lease_margin_ms)),
        ),
        (Col::UpdatedAt, Expr::val(params.now)),
    ];
    let picked = pick_and_update(conn, &pick, sets, true).await?;
    let (mut claimed, bad) = map_lenient(&picked.rows);
    for (key, err) in bad {
        // Left claimed: its lease lapses and it is retried, so a repaired row is picked up.
        tracing::error!(execution_id = %key, error = %err, "claimed parent cannot be read; skipping it");
    }
    claimed.sort_by(|a, b| (a.updated_at, &a.execution_id).cmp(&(b.updated_at, &b.execution_id)));
    Ok(claimed)
}

async fn close_in<C: ConnectionTrait>(conn: &C, now: i64, limit: u64) -> Result<u64> {
    let pick = Pick {
        filter: Condition::all()
            .add(Expr::col(Col::IsFinished).eq(bool_lit(true)))
            .add(Expr::col(Col::IsClosed).eq(bool_lit(false))),
        order: [Col::UpdatedAt, Col::ExecutionId],
        limit,
    };
    let sets = vec![
        (Col::IsClosed, Expr::val(true)),
        (Col::ClosedAt, Expr::val(now)),
        (Col::UpdatedAt, Expr::val(now)),
    ];
    let picked = pick_and_update(conn, &pick, sets, true).await?;
    let (closed, bad) = map_lenient(&picked.rows);
    for (key, err) in bad {
        tracing::error!(execution_id = %key, error = %err, "finished execution cannot be read; closed without propagating its outcome");
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

    // Executions that did not complete cancel their still-active children and finalize, in one
    // statement; the error names each child's own parent.
    let failed: Vec<&TaskExecution> = closed
        .iter()
        .filter(|e| e.status != TaskExecutionStatus::Completed)
        .collect();
    for chunk in failed.chunks(MAX_IDS_PER_STATEMENT / 2) {
        let cancel = TaskExecutionUpdate {
            now,
            status: Some(TaskExecutionStatus::Cancelled),
            cancel_requested: Some(true),
            ..Default::default()
        };
        let mut sets = update_sets(&cancel)?;
        let error = match chunk {
            [only] => error_val(&super::parent_finished_error(only))?,
            [first, rest @ ..] => {
                let mut case = Expr::case(
                    Expr::col(Col::ParentExecutionId).eq(first.execution_id.as_str()),
                    error_val(&super::parent_finished_error(first))?,
                );
                for parent in rest {
                    case = case.case(
                        Expr::col(Col::ParentExecutionId).eq(parent.execution_id.as_str()),
                        error_val(&super::parent_finished_error(parent))?,
                    );
                }
                case.into()
            }
            [] => continue,
        };
        sets.push((Col::Error, error));
        let stmt = Query::update()
            .table(te::Entity)
            .values(sets)
            .and_where(
                Expr::col(Col::ParentExecutionId)
                    .is_in(chunk.iter().map(|e| e.execution_id.as_str())),
            )
            .and_where(Expr::col(Col::IsFinished).eq(bool_lit(false)))
            .to_owned();
        conn.execute(&stmt).await?;
    }
    Ok(u64::try_from(picked.ids.len()).unwrap_or(u64::MAX))
}

async fn take_cancellations_in<C: ConnectionTrait>(
    conn: &C,
    executor_id: &str,
    now: i64,
    limit: u64,
) -> Result<Vec<String>> {
    let pick = Pick {
        filter: Condition::all()
            .add(Expr::col(Col::ExecutorId).eq(executor_id))
            .add(Expr::col(Col::CancelRequested).eq(bool_lit(true))),
        order: [Col::UpdatedAt, Col::ExecutionId],
        limit,
    };
    let sets = vec![
        (Col::CancelRequested, Expr::val(false)),
        (Col::UpdatedAt, Expr::val(now)),
    ];
    Ok(pick_and_update(conn, &pick, sets, false).await?.ids)
}

// ---------------------------------------------------------------------------------------------
// The port

/// Runs `$body` (an expression using `$txn`) in a write transaction, retried on transient errors.
macro_rules! in_write_transaction {
    ($self:ident, $what:literal, |$txn:ident| $body:expr) => {
        retry($what, || async {
            let $txn = begin_write(&$self.db).await?;
            let out = $body.await?;
            $txn.commit().await?;
            Ok(out)
        })
        .await
    };
}

#[async_trait]
impl TaskExecutionStorage for SeaOrmTaskExecutionStorage {
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
        let per_statement =
            rows_per_statement(self.db.get_database_backend(), te::Column::iter().count());
        if executions.len() <= per_statement {
            // One statement is atomic on its own.
            retry("enqueue_task_executions", || {
                enqueue_in(&self.db, executions.clone(), now)
            })
            .await
        } else {
            in_write_transaction!(self, "enqueue_task_executions", |txn| enqueue_in(
                &txn,
                executions.clone(),
                now
            ))
        }
    }

    #[tracing::instrument(skip(self), err)]
    async fn get_task_execution(&self, execution_id: &str) -> Result<Option<TaskExecution>> {
        let select = Query::select()
            .column(Asterisk)
            .from(te::Entity)
            .and_where(Expr::col(Col::ExecutionId).eq(execution_id))
            .to_owned();
        let row = retry("get_task_execution", || async {
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
        retry("get_task_executions", || get_many_in(&self.db, filter)).await
    }

    #[tracing::instrument(skip(self), err)]
    async fn claim_task_executions(&self, params: &ClaimParams) -> Result<Vec<TaskExecution>> {
        if params.limit == 0 {
            return Ok(Vec::new());
        }
        match self.db.get_database_backend() {
            // One statement: no transaction round trips.
            DbBackend::Postgres => {
                retry("claim_task_executions", || claim_in(&self.db, params)).await
            }
            _ => in_write_transaction!(self, "claim_task_executions", |txn| claim_in(&txn, params)),
        }
    }

    #[tracing::instrument(skip(self), err)]
    async fn update_task_executions(
        &self,
        guard: &TaskExecutionGuard,
        update: &TaskExecutionUpdate,
    ) -> Result<u64> {
        if matches_nothing(guard) {
            return Ok(0);
        }
        if guard.execution_ids.len() <= MAX_IDS_PER_STATEMENT {
            retry("update_task_executions", || {
                update_in(&self.db, guard, update)
            })
            .await
        } else {
            in_write_transaction!(self, "update_task_executions", |txn| update_in(
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
        // One transaction: one commit (one log flush) for the whole batch.
        in_write_transaction!(self, "update_task_executions_many", |txn| async {
            let mut matched = Vec::with_capacity(updates.len());
            for (guard, update) in updates {
                matched.push(if matches_nothing(guard) {
                    0
                } else {
                    update_in(&txn, guard, update).await?
                });
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
        if matches_nothing(guard) {
            return Ok(false);
        }
        in_write_transaction!(self, "update_task_execution_and_enqueue", |txn| {
            update_and_enqueue_in(&txn, guard, update, children.clone())
        })
    }

    #[tracing::instrument(skip(self, children), fields(count = children.len()), err)]
    async fn add_finished_child_task_executions(
        &self,
        children: Vec<FinishedChildTaskExecution>,
    ) -> Result<()> {
        if children.is_empty() {
            return Ok(());
        }
        in_write_transaction!(self, "add_finished_child_task_executions", |txn| {
            record_finished_children_in(&txn, children.clone())
        })
    }

    #[tracing::instrument(skip(self), err)]
    async fn get_finished_child_task_executions(
        &self,
        parent_execution_id: &str,
    ) -> Result<Vec<FinishedChildTaskExecution>> {
        let select = Query::select()
            .column(Asterisk)
            .from(fc::Entity)
            .and_where(Expr::col(ChildCol::ParentExecutionId).eq(parent_execution_id))
            .order_by(ChildCol::ChildIndex, Order::Asc)
            .order_by(ChildCol::ChildExecutionId, Order::Asc)
            .to_owned();
        let rows = retry("get_finished_child_task_executions", || async {
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
        in_write_transaction!(self, "expire_task_executions", |txn| expire_in(
            &txn, now, limit
        ))
    }

    #[tracing::instrument(skip(self), err)]
    async fn claim_parents_with_finished_children(
        &self,
        params: &ClaimParams,
    ) -> Result<Vec<TaskExecution>> {
        if params.limit == 0 {
            return Ok(Vec::new());
        }
        match self.db.get_database_backend() {
            DbBackend::Postgres => {
                retry("claim_parents_with_finished_children", || {
                    claim_parents_in(&self.db, params)
                })
                .await
            }
            _ => in_write_transaction!(self, "claim_parents_with_finished_children", |txn| {
                claim_parents_in(&txn, params)
            }),
        }
    }

    #[tracing::instrument(skip(self), err)]
    async fn close_finished_task_executions(&self, now: i64, limit: u64) -> Result<u64> {
        if limit == 0 {
            return Ok(0);
        }
        in_write_transaction!(self, "close_finished_task_executions", |txn| close_in(
            &txn, now, limit
        ))
    }

    #[tracing::instrument(skip(self), err)]
    async fn take_cancellation_requests(
        &self,
        executor_id: &str,
        now: i64,
        limit: u64,
    ) -> Result<Vec<String>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        match self.db.get_database_backend() {
            DbBackend::Postgres => {
                retry("take_cancellation_requests", || {
                    take_cancellations_in(&self.db, executor_id, now, limit)
                })
                .await
            }
            _ => in_write_transaction!(self, "take_cancellation_requests", |txn| {
                take_cancellations_in(&txn, executor_id, now, limit)
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::sea_query::PostgresQueryBuilder;

    use super::*;

    #[test]
    fn postgres_claim_is_one_materialized_cte_with_skip_locked() {
        let pick = Pick {
            filter: Condition::all()
                .add(Expr::col(Col::Status).eq(status_lit(TaskExecutionStatus::Ready)))
                .add(Expr::col(Col::StartAt).lte(5)),
            order: [Col::StartAt, Col::ExecutionId],
            limit: 10,
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
             FROM \"task_executions\" WHERE \"status\" = ('ready') AND \"start_at\" <= 5 \
             ORDER BY \"start_at\" ASC, \"execution_id\" ASC LIMIT 10 FOR UPDATE SKIP LOCKED) \
             UPDATE \"task_executions\" SET \"fencing_token\" = \"fencing_token\" + 1 \
             FROM \"picked\" WHERE \"task_executions\".\"execution_id\" = \"picked\".\"picked_id\" \
             RETURNING \"task_executions\".*"
        );
    }
}

//! The migrations, the entities and the error classification on each backend.

use anyhow::{Context, ensure};
use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DbBackend, EntityTrait, IntoActiveModel, Statement,
    TransactionTrait,
};
use sea_orm_durable::Error;
use sea_orm_durable::migration::{Migrator, MigratorTrait};
use sea_orm_durable_entity::{batchactions_batches, batchactions_jobs, batchactions_records};
use sea_orm_migration::SchemaManager;
use serde_json::json;

use crate::harness::{Backend, TestDb, per_backend};

per_backend!(
    migrate_up_down_up_leaves_tables_and_indexes,
    migrations_are_idempotent,
    every_column_round_trips,
    duplicate_key_is_conflict,
    deadlock_or_busy_is_retryable,
    ids_compare_exactly_in_every_table,
    install_from_older_migrations_upgrades_in_place,
    hot_queries_read_an_index_in_their_order,
    guarded_updates_find_their_rows_by_primary_key,
    claims_of_some_tasks_read_only_their_tasks_index_entries,
    every_bounded_column_has_the_length_its_check_uses,
);

const TABLES: [&str; 7] = [
    "durable_paused_task_queues",
    "durable_task_schedules",
    "batchactions_jobs",
    "batchactions_batches",
    "batchactions_records",
    "durable_task_executions",
    "durable_finished_child_task_executions",
];
const INDEXES: [(&str, &str); 21] = [
    (
        "durable_task_executions",
        "ix_durable_task_executions_ready_task",
    ),
    (
        "durable_task_executions",
        "ix_durable_task_executions_waiting_task",
    ),
    (
        "durable_task_schedules",
        "ix_durable_task_schedules_next_tick",
    ),
    (
        "durable_task_executions",
        "ux_durable_task_executions_sleeping_key",
    ),
    (
        "durable_task_executions",
        "ix_durable_task_executions_wake_key",
    ),
    (
        "durable_task_executions",
        "ix_durable_task_executions_sleeping",
    ),
    (
        "durable_task_executions",
        "ix_durable_task_executions_ready_claim",
    ),
    (
        "durable_task_executions",
        "ix_durable_task_executions_closed",
    ),
    (
        "durable_task_executions",
        "ix_durable_task_executions_executor_claim",
    ),
    (
        "durable_task_executions",
        "ix_durable_task_executions_running_claim",
    ),
    (
        "durable_task_executions",
        "ix_durable_task_executions_waiting_claim",
    ),
    (
        "durable_task_executions",
        "ix_durable_task_executions_unclosed_claim",
    ),
    (
        "durable_task_executions",
        "ix_durable_task_executions_executor_cancel",
    ),
    (
        "durable_task_executions",
        "ix_durable_task_executions_parent",
    ),
    (
        "durable_finished_child_task_executions",
        "ix_durable_finished_child_task_executions_parent_index",
    ),
    (
        "batchactions_batches",
        "ux_batchactions_batches_job_id_batch_index",
    ),
    ("batchactions_batches", "ix_batchactions_batches_pending"),
    ("batchactions_batches", "ix_batchactions_batches_claim_id"),
    ("batchactions_batches", "ix_batchactions_batches_unfinished"),
    (
        "batchactions_records",
        "ix_batchactions_records_job_id_status",
    ),
    (
        "batchactions_records",
        "ix_batchactions_records_job_id_batch_id",
    ),
];

async fn assert_schema(t: &TestDb, present: bool) -> anyhow::Result<()> {
    let manager = SchemaManager::new(&t.db);
    for table in TABLES {
        ensure!(
            manager.has_table(table).await? == present,
            "table {table} present != {present}"
        );
    }
    if present {
        for (table, index) in INDEXES {
            ensure!(
                manager.has_index(table, index).await?,
                "index {index} missing"
            );
        }
    }
    Ok(())
}

async fn migrate_up_down_up_leaves_tables_and_indexes(t: TestDb) -> anyhow::Result<()> {
    assert_schema(&t, true).await?;
    ensure!(Migrator::get_pending_migrations(&t.db).await?.is_empty());
    Migrator::down(&t.db, None).await?;
    assert_schema(&t, false).await?;
    ensure!(Migrator::get_applied_migrations(&t.db).await?.is_empty());
    Migrator::up(&t.db, None).await?;
    assert_schema(&t, true).await?;
    // The bookkeeping table is ours, never SeaORM's default one.
    let manager = SchemaManager::new(&t.db);
    ensure!(
        manager
            .has_table(sea_orm_durable::migration::MIGRATION_TABLE)
            .await?
    );
    ensure!(!manager.has_table("seaql_migrations").await?);
    Ok(())
}

async fn migrations_are_idempotent(t: TestDb) -> anyhow::Result<()> {
    // An application that splices our migrations after ours already ran re-applies them.
    let manager = SchemaManager::new(&t.db);
    for migration in sea_orm_durable::migration::migrations() {
        migration.up(&manager).await.context("re-running up")?;
    }
    assert_schema(&t, true).await
}

fn big_json() -> serde_json::Value {
    // A little over 1 MiB of multi-byte text plus structure.
    let text = "Zoë 東京 🚀 ".repeat(1024 * 1024 / 16 + 1);
    json!({
        "text": text,
        "list": (0..2000).collect::<Vec<i64>>(),
        "big": 9_007_199_254_740_993_i64,
        "nested": {"city": "Zürich", "empty": null, "flag": true}
    })
}

async fn every_column_round_trips(t: TestDb) -> anyhow::Result<()> {
    let job = batchactions_jobs::Model {
        id: "job-ünïcødé-東京".to_owned(),
        status: "PROCESSING".to_owned(),
        config: big_json(),
        batches: json!([{"id": "b0", "index": 0, "status": "PENDING"}]),
        total_records: i64::MAX,
        started_at: Some(i64::MIN),
        completed_at: None,
        distributed: true,
        created_at: i64::MAX,
        updated_at: -1,
        finalized_by: Some("finalize-Ü".to_owned()),
    };
    let batch = batchactions_batches::Model {
        id: "batch-0".to_owned(),
        job_id: job.id.clone(),
        batch_index: i32::MAX,
        status: "PROCESSING".to_owned(),
        worker_id: Some("wörker-1".to_owned()),
        claimed_at: Some(i64::MAX),
        heartbeat_at: Some(i64::MIN),
        record_start_index: 0,
        record_end_index: i64::MAX,
        processed_count: 7,
        failed_count: 3,
        version: i64::MAX,
        created_at: 1_700_000_000_123,
        updated_at: 1_700_000_000_456,
        completed_at: None,
        claim_id: Some("claim-ÄÖ".to_owned()),
    };
    let record = batchactions_records::Model {
        job_id: job.id.clone(),
        record_index: i64::MAX,
        batch_id: batch.id.clone(),
        status: "failed".to_owned(),
        raw: big_json(),
        parsed: json!({"ключ": "значение", "n": -1}),
        errors: json!([{"field": "e", "message": "bad", "code": "REQUIRED", "extra": [1, 2]}]),
        processing_error: Some("ошибка ✗ ".repeat(1024 * 1024 / 16 + 1)),
        retry_count: i32::MAX,
        updated_at: i64::MIN,
    };
    let nulls = batchactions_batches::Model {
        id: "batch-1".to_owned(),
        batch_index: 1,
        worker_id: None,
        claimed_at: None,
        heartbeat_at: None,
        completed_at: Some(0),
        claim_id: None,
        ..batch.clone()
    };
    let sparse_record = batchactions_records::Model {
        record_index: 0,
        processing_error: None,
        raw: json!({}),
        parsed: json!(null),
        errors: json!([]),
        ..record.clone()
    };

    batchactions_jobs::Entity::insert(job.clone().into_active_model())
        .exec(&t.db)
        .await?;
    for b in [&batch, &nulls] {
        batchactions_batches::Entity::insert(b.clone().into_active_model())
            .exec(&t.db)
            .await?;
    }
    for r in [&record, &sparse_record] {
        batchactions_records::Entity::insert(r.clone().into_active_model())
            .exec(&t.db)
            .await?;
    }

    let got = batchactions_jobs::Entity::find_by_id(job.id.clone())
        .one(&t.db)
        .await?;
    ensure!(got.as_ref() == Some(&job), "job differs after round trip");
    for b in [&batch, &nulls] {
        let got = batchactions_batches::Entity::find_by_id(b.id.clone())
            .one(&t.db)
            .await?;
        ensure!(
            got.as_ref() == Some(b),
            "batch {} differs after round trip",
            b.id
        );
    }
    for r in [&record, &sparse_record] {
        let key = (r.job_id.clone(), r.record_index);
        let got = batchactions_records::Entity::find_by_id(key)
            .one(&t.db)
            .await?;
        ensure!(
            got.as_ref() == Some(r),
            "record {} differs after round trip",
            r.record_index
        );
    }

    // Updates through the active model round-trip as well.
    let mut active = job.clone().into_active_model();
    active.completed_at = sea_orm::Set(Some(i64::MAX));
    let updated = active.update(&t.db).await?;
    ensure!(updated.completed_at == Some(i64::MAX));
    Ok(())
}

async fn duplicate_key_is_conflict(t: TestDb) -> anyhow::Result<()> {
    let job = batchactions_jobs::Model {
        id: "dup".to_owned(),
        status: "CREATED".to_owned(),
        config: json!({"batchSize": 10}),
        batches: json!([]),
        total_records: 0,
        started_at: None,
        completed_at: None,
        distributed: false,
        created_at: 1,
        updated_at: 1,
        finalized_by: None,
    };
    batchactions_jobs::Entity::insert(job.clone().into_active_model())
        .exec(&t.db)
        .await?;
    let err = batchactions_jobs::Entity::insert(job.into_active_model())
        .exec(&t.db)
        .await
        .err()
        .context("second insert of the same id succeeded")?;
    let err = Error::from(err);
    ensure!(
        matches!(err, Error::Conflict { .. }),
        "expected conflict, got {err:?}"
    );
    ensure!(!err.is_retryable());

    // A raw statement hitting a unique secondary index classifies the same way.
    let insert = |index: i64| {
        Statement::from_string(
            t.db_backend(),
            format!(
                "INSERT INTO batchactions_batches (id, job_id, batch_index, status, created_at, \
                 updated_at) VALUES ('b{index}', 'dup', 0, 'PENDING', 1, 1)"
            ),
        )
    };
    t.db.execute_raw(insert(1)).await?;
    let err =
        t.db.execute_raw(insert(2))
            .await
            .err()
            .context("duplicate (job_id, batch_index)")?;
    let err = Error::from(err);
    ensure!(
        matches!(err, Error::Conflict { .. }),
        "expected conflict, got {err:?}"
    );
    Ok(())
}

async fn deadlock_or_busy_is_retryable(t: TestDb) -> anyhow::Result<()> {
    let err = match t.backend {
        Backend::Sqlite => sqlite_busy(&t).await?,
        Backend::Postgres | Backend::MySql => deadlock(&t).await?,
    };
    let err = Error::from(err);
    ensure!(
        err.is_retryable(),
        "expected a retryable error, got {err:?}"
    );
    ensure!(matches!(err, Error::Database(_)));
    Ok(())
}

/// Two transactions lock two rows in opposite orders; the server aborts one of them.
async fn deadlock(t: &TestDb) -> anyhow::Result<sea_orm::DbErr> {
    for id in ["a", "b"] {
        t.db.execute_unprepared(&format!(
            "INSERT INTO batchactions_batches (id, job_id, batch_index, status, created_at, \
             updated_at) VALUES ('{id}', 'j', {}, 'PENDING', 1, 1)",
            if id == "a" { 0 } else { 1 }
        ))
        .await?;
    }
    let bump = |id: &str| {
        format!("UPDATE batchactions_batches SET version = version + 1 WHERE id = '{id}'")
    };
    let first = t.db.begin().await?;
    let second = t.db.begin().await?;
    first.execute_unprepared(&bump("a")).await?;
    second.execute_unprepared(&bump("b")).await?;
    let (bump_a, bump_b) = (bump("a"), bump("b"));
    let (r1, r2) = tokio::join!(
        first.execute_unprepared(&bump_b),
        second.execute_unprepared(&bump_a)
    );
    let err = match (r1, r2) {
        (Err(e), Ok(_)) | (Ok(_), Err(e)) => e,
        (Err(e), Err(_)) => e,
        (Ok(_), Ok(_)) => anyhow::bail!("no deadlock was reported"),
    };
    first.rollback().await?;
    second.rollback().await?;
    Ok(err)
}

/// One connection holds the write lock; another, with no busy timeout, is refused at once.
async fn sqlite_busy(t: &TestDb) -> anyhow::Result<sea_orm::DbErr> {
    let mut opts = crate::harness::connect_options(Backend::Sqlite, &t.url, 1);
    opts.map_sqlx_sqlite_opts(|o| o.busy_timeout(std::time::Duration::ZERO));
    let impatient = sea_orm::Database::connect(opts).await?;
    let holder =
        t.db.begin_with_options(sea_orm::TransactionOptions {
            sqlite_transaction_mode: Some(sea_orm::SqliteTransactionMode::Immediate),
            ..Default::default()
        })
        .await?;
    holder
        .execute_unprepared("UPDATE batchactions_jobs SET status = status")
        .await?;
    let err = impatient
        .execute_raw(Statement::from_string(
            DbBackend::Sqlite,
            "INSERT INTO batchactions_jobs (id, status, config, batches, created_at, updated_at) \
             VALUES ('x', 'CREATED', '{}', '[]', 1, 1)",
        ))
        .await
        .err()
        .context("write succeeded while another connection held the lock")?;
    holder.rollback().await?;
    Ok(err)
}

/// Inserts a minimal task execution row with execution id and task id `id`.
async fn insert_execution(t: &TestDb, id: &str) -> anyhow::Result<()> {
    t.db.execute_raw(Statement::from_sql_and_values(
        t.db_backend(),
        match t.db_backend() {
            DbBackend::Postgres => {
                "INSERT INTO durable_task_executions (execution_id, task_id, retry_options, timeout_ms, \
                 status, input, start_at, created_at, updated_at) \
                 VALUES ($1, $2, '{}', 1000, 'ready', '', 1, 1, 1)"
            }
            _ => {
                "INSERT INTO durable_task_executions (execution_id, task_id, retry_options, timeout_ms, \
                 status, input, start_at, created_at, updated_at) \
                 VALUES (?, ?, '{}', 1000, 'ready', '', 1, 1, 1)"
            }
        },
        [id.into(), id.into()],
    ))
    .await
    .with_context(|| format!("inserting execution {id:?}"))?;
    Ok(())
}

/// How many rows of `table` have `column` equal to `value`.
async fn count_where(t: &TestDb, table: &str, column: &str, value: &str) -> anyhow::Result<i64> {
    let placeholder = if t.db_backend() == DbBackend::Postgres {
        "$1"
    } else {
        "?"
    };
    let row =
        t.db.query_one_raw(Statement::from_sql_and_values(
            t.db_backend(),
            format!("SELECT COUNT(*) AS n FROM {table} WHERE {column} = {placeholder}"),
            [value.into()],
        ))
        .await?
        .context("no count")?;
    Ok(row.try_get::<i64>("", "n")?)
}

/// Ids that differ only in case, a trailing space or an accent are different keys in every
/// table of the crate (MySQL/MariaDB compare them with a binary, no-pad collation).
async fn ids_compare_exactly_in_every_table(t: TestDb) -> anyhow::Result<()> {
    let pairs = [
        ("CaseJob", "casejob"),
        ("pad", "pad "),
        ("resume", "résumé"),
    ];
    let store = sea_orm_durable::SeaOrmStateStore::new(t.db.clone());
    for (a, b) in pairs {
        for id in [a, b] {
            insert_execution(&t, id).await?;
            ensure!(
                count_where(&t, "durable_task_executions", "execution_id", id).await? == 1,
                "execution {id:?} matches another row"
            );
            ensure!(
                count_where(&t, "durable_task_executions", "task_id", id).await? == 1,
                "task {id:?} matches another row"
            );
            t.db.execute_raw(Statement::from_sql_and_values(
                t.db_backend(),
                if t.db_backend() == DbBackend::Postgres {
                    "INSERT INTO durable_finished_child_task_executions (parent_execution_id, \
                     child_execution_id, child_task_id, child_index, status, created_at) \
                     VALUES ($1, $2, $3, 0, 'completed', 1)"
                } else {
                    "INSERT INTO durable_finished_child_task_executions (parent_execution_id, \
                     child_execution_id, child_task_id, child_index, status, created_at) \
                     VALUES (?, ?, ?, 0, 'completed', 1)"
                },
                [id.into(), id.into(), id.into()],
            ))
            .await
            .with_context(|| format!("finished child {id:?}"))?;
            let prepared =
                sea_orm_durable::prepare(&store, id, sea_orm_durable::JobConfig::new(2), [1, 2, 3])
                    .await?;
            ensure!(
                prepared.total_records == 3 && prepared.total_batches == 2,
                "{id:?}: {prepared:?}"
            );
            ensure!(
                count_where(&t, "batchactions_jobs", "id", id).await? == 1,
                "job {id:?} matches another row"
            );
            ensure!(
                count_where(&t, "batchactions_records", "job_id", id).await? == 3,
                "records of {id:?} mixed with another job's"
            );
        }
    }
    Ok(())
}

/// A database migrated with the migrations before the binary-id one, holding data, upgrades
/// in place: the data stays readable, keys and indexes stay, ids become exact; rolling the
/// upgrade back and applying it again works.
async fn install_from_older_migrations_upgrades_in_place(t: TestDb) -> anyhow::Result<()> {
    use sea_orm_durable::batch::store::{DistributedStateStore, StateStore};
    let store = sea_orm_durable::SeaOrmStateStore::new(t.db.clone());
    sea_orm_durable::prepare(
        &store,
        "Import",
        sea_orm_durable::JobConfig::new(2),
        [1, 2, 3],
    )
    .await?;
    insert_execution(&t, "Exec").await?;
    // Back to the schema of the first two migrations, with the data in it.
    let applied = Migrator::get_applied_migrations(&t.db).await?.len();
    let steps = u32::try_from(applied)? - 2;
    Migrator::down(&t.db, Some(steps)).await?;
    ensure!(Migrator::get_applied_migrations(&t.db).await?.len() == 2);
    if t.backend == Backend::MySql {
        ensure!(
            count_where(&t, "durable_task_executions", "execution_id", "exec").await? == 1,
            "the old schema compares ids exactly"
        );
    }
    let nullable_before = nullability(&t).await?;

    Migrator::up(&t.db, None).await?;
    ensure!(Migrator::get_pending_migrations(&t.db).await?.is_empty());
    assert_schema(&t, true).await?;
    ensure!(
        nullability(&t).await? == nullable_before,
        "NULL/NOT NULL changed"
    );
    let job = store.get_job_state("Import").await?.context("job lost")?;
    ensure!(job.total_records == 3 && job.batches.len() == 2, "{job:?}");
    ensure!(count_where(&t, "durable_task_executions", "execution_id", "Exec").await? == 1);
    ensure!(count_where(&t, "durable_task_executions", "execution_id", "exec").await? == 0);
    sea_orm_durable::prepare(&store, "import", sea_orm_durable::JobConfig::new(2), [1]).await?;
    ensure!(
        store
            .get_job_state("import")
            .await?
            .context("import")?
            .total_records
            == 1,
        "import mixed with Import"
    );
    ensure!(
        store
            .claim_batch("Import", "w")
            .await?
            .reservation()
            .is_some()
    );

    // The upgrade rolls back and applies again (ids that only differ in case were saved
    // meanwhile, so the rollback is tried on a copy of the schema without them).
    if t.backend == Backend::MySql {
        t.db.execute_unprepared("DELETE FROM batchactions_records WHERE job_id = 'import'")
            .await?;
        t.db.execute_unprepared("DELETE FROM batchactions_batches WHERE job_id = 'import'")
            .await?;
        t.db.execute_unprepared("DELETE FROM batchactions_jobs WHERE id = 'import'")
            .await?;
    }
    Migrator::down(&t.db, Some(steps)).await?;
    if t.backend == Backend::MySql {
        ensure!(
            count_where(&t, "durable_task_executions", "execution_id", "exec").await? == 1,
            "rollback kept the binary collation"
        );
    }
    Migrator::up(&t.db, None).await?;
    ensure!(count_where(&t, "durable_task_executions", "execution_id", "exec").await? == 0);
    assert_schema(&t, true).await
}

/// `(table, column, nullable, length)` of every column the older migrations created, on
/// MySQL; empty elsewhere (the collation upgrade changes nothing there).
async fn nullability(t: &TestDb) -> anyhow::Result<Vec<(String, String, String, Option<i64>)>> {
    if t.backend != Backend::MySql {
        return Ok(Vec::new());
    }
    let rows =
        t.db.query_all_raw(Statement::from_string(
            t.db_backend(),
            "SELECT TABLE_NAME AS t, COLUMN_NAME AS c, IS_NULLABLE AS n, \
             CAST(CHARACTER_MAXIMUM_LENGTH AS SIGNED) AS l FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = DATABASE() \
             AND TABLE_NAME NOT IN ('durable_task_schedules', 'durable_paused_task_queues') \
             AND COLUMN_NAME NOT IN ('claim_id', 'finalized_by', 'queue', 'wake_key', 'sleeping_key', 'progress') \
             ORDER BY TABLE_NAME, COLUMN_NAME",
        ))
        .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("", "t")?,
                r.try_get("", "c")?,
                r.try_get("", "n")?,
                r.try_get("", "l")?,
            ))
        })
        .collect()
}

/// The picks of the executor and the finalize check of a batch job, as the stores write them
/// (statuses as literals), and the index each must be served by without a sort.
const HOT_QUERIES: [(&str, &str); 10] = [
    (
        "SELECT execution_id FROM durable_task_executions WHERE status = 'ready' AND start_at <= 9999 \
         AND task_id IN ('child') ORDER BY start_at, execution_id LIMIT 100",
        "ix_durable_task_executions_ready_task",
    ),
    (
        "SELECT execution_id FROM durable_task_executions WHERE status = 'running' AND expires_at < 9999 \
         ORDER BY expires_at, execution_id LIMIT 100",
        "ix_durable_task_executions_running_claim",
    ),
    (
        "SELECT execution_id FROM durable_task_executions WHERE status = 'waiting_for_children_tasks' \
         AND (finished_children_count >= children_count OR failed_children_count > 0) \
         ORDER BY updated_at, execution_id LIMIT 100",
        "ix_durable_task_executions_waiting_claim",
    ),
    (
        "SELECT execution_id FROM durable_task_executions WHERE is_finished = TRUE AND is_closed = FALSE \
         ORDER BY updated_at, execution_id LIMIT 100",
        "ix_durable_task_executions_unclosed_claim",
    ),
    (
        "SELECT execution_id FROM durable_task_executions WHERE executor_id = 'e' \
         AND cancel_requested = TRUE ORDER BY updated_at, execution_id LIMIT 100",
        "ix_durable_task_executions_executor_cancel",
    ),
    (
        "SELECT execution_id FROM durable_task_executions WHERE sleeping_key = 'k'",
        "ux_durable_task_executions_sleeping_key",
    ),
    (
        "SELECT execution_id FROM durable_task_executions WHERE wake_key = 'k'",
        "ix_durable_task_executions_wake_key",
    ),
    (
        "SELECT execution_id FROM durable_task_executions WHERE parent_execution_id IN ('p2') \
         AND is_finished = FALSE",
        "ix_durable_task_executions_parent",
    ),
    (
        "SELECT 1 FROM batchactions_batches WHERE job_id = 'j' \
         AND status NOT IN ('COMPLETED', 'FAILED')",
        "ix_batchactions_batches_unfinished",
    ),
    (
        "SELECT 1 FROM batchactions_batches WHERE job_id = 'j' AND status = 'FAILED'",
        "ix_batchactions_batches_failed",
    ),
];

/// Thousands of executions that share every timestamp (children spawned together) and a job
/// with thousands of finished batches: each hot query is answered from its index in its own
/// order (PostgreSQL and SQLite plans; MySQL/MariaDB secondary indexes end with the primary
/// key, which is the tie-breaker, and its plans for small tables are not stable enough to
/// assert).
async fn hot_queries_read_an_index_in_their_order(t: TestDb) -> anyhow::Result<()> {
    let backend = t.db_backend();
    if backend == DbBackend::MySql {
        return Ok(());
    }
    let statuses = [
        "ready",
        "running",
        "completed",
        "waiting_for_children_tasks",
    ];
    for chunk in (0..8000).collect::<Vec<u32>>().chunks(500) {
        let rows = chunk
            .iter()
            .map(|i| {
                let status = statuses[usize::try_from(i % 4).unwrap_or(0)];
                let finished = if status == "completed" {
                    "TRUE"
                } else {
                    "FALSE"
                };
                format!(
                    "('c{i:06}', 'child', 'p1', '{{}}', 1000, '{status}', {finished}, 'null', \
                     1000, 1000, 1000, 5000)"
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        t.db.execute_unprepared(&format!(
            "INSERT INTO durable_task_executions (execution_id, task_id, parent_execution_id, \
             retry_options, timeout_ms, status, is_finished, input, start_at, created_at, \
             updated_at, expires_at) VALUES {rows}"
        ))
        .await?;
        let batches = chunk
            .iter()
            .map(|i| {
                let status = if *i < 7900 { "COMPLETED" } else { "PENDING" };
                format!("('j-b{i}', 'j', {i}, '{status}', 0, 0)")
            })
            .collect::<Vec<_>>()
            .join(", ");
        t.db.execute_unprepared(&format!(
            "INSERT INTO batchactions_batches (id, job_id, batch_index, status, created_at, \
             updated_at) VALUES {batches}"
        ))
        .await?;
    }
    t.db.execute_unprepared("ANALYZE").await?;
    for (query, index) in HOT_QUERIES {
        let (explain, column) = match backend {
            DbBackend::Postgres => (format!("EXPLAIN {query}"), "QUERY PLAN"),
            _ => (format!("EXPLAIN QUERY PLAN {query}"), "detail"),
        };
        let plan =
            t.db.query_all_raw(Statement::from_string(backend, explain))
                .await?
                .iter()
                .map(|row| row.try_get::<String>("", column))
                .collect::<Result<Vec<_>, _>>()?
                .join("\n");
        ensure!(
            plan.contains(index),
            "{query}\nnot served by {index}:\n{plan}"
        );
        ensure!(
            !plan.contains("Sort") && !plan.contains("TEMP B-TREE"),
            "{query}\nsorts:\n{plan}"
        );
    }
    // Indexes whose lookups only ever ask for some rows hold only those rows, so that the
    // updates of every other row do not write them.
    for name in [
        "ux_durable_task_executions_sleeping_key",
        "ix_durable_task_executions_wake_key",
        "ix_durable_task_executions_parent",
        "ix_durable_task_executions_executor_cancel",
    ] {
        let query = match backend {
            DbBackend::Postgres => {
                format!("SELECT indexdef AS def FROM pg_indexes WHERE indexname = '{name}'")
            }
            _ => format!(
                "SELECT sql AS def FROM sqlite_master WHERE type = 'index' AND name = '{name}'"
            ),
        };
        let def: String =
            t.db.query_one_raw(Statement::from_string(backend, query))
                .await?
                .with_context(|| format!("{name} is missing"))?
                .try_get("", "def")?;
        ensure!(def.contains("WHERE"), "{name} holds every row: {def}");
    }
    Ok(())
}

/// The plan of `sql` (`EXPLAIN` on PostgreSQL, `EXPLAIN QUERY PLAN` on SQLite), one line per
/// node.
async fn plan(t: &TestDb, sql: &str) -> anyhow::Result<String> {
    let backend = t.db_backend();
    let (explain, column) = match backend {
        DbBackend::Postgres => (format!("EXPLAIN {sql}"), "QUERY PLAN"),
        _ => (format!("EXPLAIN QUERY PLAN {sql}"), "detail"),
    };
    Ok(t.db
        .query_all_raw(Statement::from_string(backend, explain))
        .await?
        .iter()
        .map(|row| row.try_get::<String>("", column))
        .collect::<Result<Vec<_>, _>>()?
        .join("\n"))
}

/// A guarded update of executions named by id (the result writer's statement, in the form the
/// store renders it) reads them by primary key, not through the partial index of their status,
/// which still holds an entry of every execution that has left that status when the statistics
/// were taken before (20 000 executions claimed and finished since the last `ANALYZE`).
async fn guarded_updates_find_their_rows_by_primary_key(t: TestDb) -> anyhow::Result<()> {
    let backend = t.db_backend();
    if backend == DbBackend::MySql {
        return Ok(());
    }
    for chunk in (0..20_000).collect::<Vec<u32>>().chunks(500) {
        let rows = chunk
            .iter()
            .map(|i| format!("('g{i:06}', 'noop', '{{}}', 1000, 'ready', 'null', {i}, 1000, 1000)"))
            .collect::<Vec<_>>()
            .join(", ");
        t.db.execute_unprepared(&format!(
            "INSERT INTO durable_task_executions (execution_id, task_id, retry_options, \
             timeout_ms, status, input, start_at, created_at, updated_at) VALUES {rows}"
        ))
        .await?;
    }
    t.db.execute_unprepared("ANALYZE").await?;
    for (from, to) in [("ready", "running"), ("running", "completed")] {
        t.db.execute_unprepared(&format!(
            "UPDATE durable_task_executions SET status = '{to}', expires_at = 5000 \
             WHERE status = '{from}' AND start_at < 19900"
        ))
        .await?;
    }
    // Finished and closed since the statistics: entries the unclosed index still holds.
    for set in ["is_finished = TRUE", "is_closed = TRUE"] {
        t.db.execute_unprepared(&format!(
            "UPDATE durable_task_executions SET {set} WHERE status = 'completed'"
        ))
        .await?;
    }
    let ids = (19_900..19_917)
        .map(|i| format!("'g{i:06}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let update = format!(
        "UPDATE durable_task_executions SET updated_at = 1 WHERE execution_id IN ({ids}) \
         AND COALESCE(status, '') IN ('running') AND fencing_token = 1"
    );
    let guarded = plan(&t, &update).await?;
    ensure!(
        !guarded.contains("ix_durable_task_executions_running_claim"),
        "the guard reads the status index:\n{guarded}"
    );
    let by_key = match backend {
        DbBackend::Postgres => "durable_task_executions_pkey",
        _ => "sqlite_autoindex_durable_task_executions_1",
    };
    ensure!(
        guarded.contains(by_key),
        "not read by primary key:\n{guarded}"
    );
    // The close of one execution (the fallback after a batch close failed), as rendered.
    let pick = "SELECT execution_id FROM durable_task_executions \
                WHERE COALESCE(is_finished, FALSE) = (TRUE) AND COALESCE(is_closed, TRUE) = (FALSE) \
                AND execution_id = 'g000005' ORDER BY updated_at, execution_id LIMIT 1";
    let picked = plan(&t, pick).await?;
    ensure!(
        !picked.contains("ix_durable_task_executions_unclosed_claim"),
        "the close of one execution reads the unclosed index:\n{picked}"
    );
    ensure!(
        picked.contains(by_key),
        "not read by primary key:\n{picked}"
    );
    Ok(())
}

/// The claims of some tasks (executions and parents), in the form the store renders them on
/// each backend, and the index each per-task branch must read.
fn claims_of_some_tasks(backend: DbBackend) -> [(String, &'static str); 2] {
    let branch = |key: &str, status: &str, task: &str, lock: &str| {
        let due = if key == "start_at" {
            " AND start_at <= 99999"
        } else {
            ""
        };
        format!(
            "SELECT execution_id, {key} FROM durable_task_executions WHERE status = ('{status}'){due} \
             AND durable_task_executions.task_id = {task} ORDER BY {key}, execution_id LIMIT 10{lock}"
        )
    };
    let claim = |key: &str, status: &str| match backend {
        DbBackend::Postgres => format!(
            "SELECT merged.execution_id FROM (VALUES ('s1'), ('s2')) AS served \
             INNER JOIN LATERAL ({}) AS merged ON TRUE ORDER BY merged.{key}, merged.execution_id LIMIT 10",
            branch(key, status, "served.column1", " FOR UPDATE SKIP LOCKED")
        ),
        _ => {
            let lock = if backend == DbBackend::MySql {
                " FOR UPDATE SKIP LOCKED"
            } else {
                ""
            };
            let part = |i: usize, task: &str| {
                format!(
                    "SELECT execution_id, {key} FROM ({}) AS task{i}",
                    branch(key, status, task, lock)
                )
            };
            let union = if backend == DbBackend::MySql {
                format!("{} UNION ALL ({})", part(0, "'s1'"), part(1, "'s2'"))
            } else {
                format!("{} UNION ALL {}", part(0, "'s1'"), part(1, "'s2'"))
            };
            format!(
                "SELECT merged.execution_id FROM ({union}) AS merged \
                 ORDER BY merged.{key}, merged.execution_id LIMIT 10"
            )
        }
    };
    [
        (
            claim("start_at", "ready"),
            "ix_durable_task_executions_ready_task",
        ),
        (
            claim("updated_at", "waiting_for_children_tasks"),
            "ix_durable_task_executions_waiting_task",
        ),
    ]
}

/// With thousands of ready executions and waiting parents of a task no claimer serves, sorting
/// before every served one, a claim of some tasks reads each served task through the index led
/// by `task_id` (PostgreSQL and SQLite plans; on MariaDB the key each branch uses and the rows
/// it expects to examine), never the index in the claim's order that walks the backlog.
async fn claims_of_some_tasks_read_only_their_tasks_index_entries(t: TestDb) -> anyhow::Result<()> {
    let backend = t.db_backend();
    for chunk in (0..6000).collect::<Vec<u32>>().chunks(500) {
        let rows = chunk
            .iter()
            .map(|i| {
                let (id, task, status, at) = if *i < 5976 {
                    let status = if i % 2 == 0 {
                        "ready"
                    } else {
                        "waiting_for_children_tasks"
                    };
                    (format!("b{i:06}"), "backlog", status, 1000)
                } else {
                    let task = if i % 2 == 0 { "s1" } else { "s2" };
                    let status = if i % 4 < 2 {
                        "ready"
                    } else {
                        "waiting_for_children_tasks"
                    };
                    (format!("s{i:06}"), task, status, 2000)
                };
                format!("('{id}', '{task}', '{{}}', 1000, '{status}', 'null', {at}, 1000, {at})")
            })
            .collect::<Vec<_>>()
            .join(", ");
        t.db.execute_unprepared(&format!(
            "INSERT INTO durable_task_executions (execution_id, task_id, retry_options, \
             timeout_ms, status, input, start_at, created_at, updated_at) VALUES {rows}"
        ))
        .await?;
    }
    match backend {
        DbBackend::MySql => {
            t.db.execute_unprepared("ANALYZE TABLE durable_task_executions")
                .await?;
        }
        _ => {
            t.db.execute_unprepared("ANALYZE").await?;
        }
    }
    for (query, index) in claims_of_some_tasks(backend) {
        if backend == DbBackend::MySql {
            let rows =
                t.db.query_all_raw(Statement::from_string(backend, format!("EXPLAIN {query}")))
                    .await?;
            let mut branches = 0;
            for row in &rows {
                let table: Option<String> = row.try_get("", "table")?;
                if table.as_deref() != Some("durable_task_executions") {
                    continue;
                }
                branches += 1;
                let key: Option<String> = row.try_get("", "key")?;
                ensure!(
                    key.as_deref() == Some(index),
                    "{query}\na branch reads {key:?}, not {index}"
                );
                // MariaDB reports the estimate as text or as an unsigned number.
                let examined: Option<u64> = row
                    .try_get::<Option<u64>>("", "rows")
                    .ok()
                    .flatten()
                    .or_else(|| {
                        row.try_get::<Option<String>>("", "rows")
                            .ok()
                            .flatten()
                            .and_then(|n| n.parse().ok())
                    });
                ensure!(
                    examined.is_some_and(|n| n < 1000),
                    "{query}\na branch examines {examined:?} rows"
                );
            }
            ensure!(branches == 2, "{query}\n{branches} branches read the table");
        } else {
            let plan = plan(&t, &query).await?;
            ensure!(
                plan.contains(index),
                "{query}\nnot served by {index}:\n{plan}"
            );
            ensure!(
                !plan.contains("ready_claim") && !plan.contains("waiting_claim"),
                "{query}\nwalks the index in the claim's order:\n{plan}"
            );
        }
    }
    Ok(())
}

/// The longest `as_str` of a status type's values.
fn longest<T: Copy>(all: &[T], name: fn(T) -> &'static str) -> u32 {
    all.iter()
        .map(|v| u32::try_from(name(*v).chars().count()).unwrap_or(u32::MAX))
        .max()
        .unwrap_or(0)
}

/// Every bounded text column and what bounds what is written to it: a name's column has the
/// length its API check reads from `migration::limit` (so no value the check accepts is cut or
/// refused by the database), a status column holds its type's longest value. A bounded column
/// missing here fails the test: a new one must be given its limit and its check.
fn bounded_columns() -> Vec<(&'static str, &'static str, u32, bool)> {
    use sea_orm_durable::batch::{BatchStatus, JobStatus, RecordStatus};
    use sea_orm_durable::migration::limit::{
        BATCH_ID_LEN, CLAIM_ID_LEN, CRON_EXPRESSION_LEN, QUEUE_LEN, TASK_ID_LEN, TIME_ZONE_LEN,
    };
    use sea_orm_durable::task::{MissedTicks, TaskExecutionStatus};
    let task_status = longest(TaskExecutionStatus::ALL, TaskExecutionStatus::as_str);
    let mut columns = vec![
        // (table, column, length or longest value, whether the length must be exact)
        ("batchactions_batches", "claim_id", CLAIM_ID_LEN, true),
        ("batchactions_batches", "id", BATCH_ID_LEN, true),
        ("batchactions_batches", "job_id", BATCH_ID_LEN, true),
        ("batchactions_batches", "worker_id", BATCH_ID_LEN, true),
        ("batchactions_jobs", "finalized_by", CLAIM_ID_LEN, true),
        ("batchactions_jobs", "id", BATCH_ID_LEN, true),
        ("batchactions_records", "batch_id", BATCH_ID_LEN, true),
        ("batchactions_records", "job_id", BATCH_ID_LEN, true),
        ("durable_task_executions", "claim_id", CLAIM_ID_LEN, true),
        ("durable_task_executions", "queue", QUEUE_LEN, true),
        ("durable_paused_task_queues", "queue", QUEUE_LEN, true),
        (
            "durable_task_schedules",
            "cron_expression",
            CRON_EXPRESSION_LEN,
            true,
        ),
        ("durable_task_schedules", "time_zone", TIME_ZONE_LEN, true),
        (
            "batchactions_batches",
            "status",
            longest(BatchStatus::ALL, BatchStatus::as_str),
            false,
        ),
        (
            "batchactions_jobs",
            "status",
            longest(JobStatus::ALL, JobStatus::as_str),
            false,
        ),
        (
            "batchactions_records",
            "status",
            longest(RecordStatus::ALL, RecordStatus::as_str),
            false,
        ),
        (
            "durable_finished_child_task_executions",
            "status",
            task_status,
            false,
        ),
        ("durable_task_executions", "status", task_status, false),
        (
            "durable_task_schedules",
            "missed_ticks",
            longest(MissedTicks::ALL, MissedTicks::as_str),
            false,
        ),
    ];
    for (table, column) in [
        (
            "durable_finished_child_task_executions",
            "child_execution_id",
        ),
        ("durable_finished_child_task_executions", "child_task_id"),
        (
            "durable_finished_child_task_executions",
            "parent_execution_id",
        ),
        ("durable_task_executions", "execution_id"),
        ("durable_task_executions", "executor_id"),
        ("durable_task_executions", "finalize_execution_id"),
        ("durable_task_executions", "finalize_task_id"),
        ("durable_task_executions", "parent_execution_id"),
        ("durable_task_executions", "parent_task_id"),
        ("durable_task_executions", "root_execution_id"),
        ("durable_task_executions", "root_task_id"),
        ("durable_task_executions", "sleeping_key"),
        ("durable_task_executions", "task_id"),
        ("durable_task_executions", "wake_key"),
        ("durable_task_schedules", "schedule_id"),
        ("durable_task_schedules", "task_id"),
    ] {
        columns.push((table, column, TASK_ID_LEN, true));
    }
    columns
}

/// The `(table, column, length)` of every bounded text column of the crate's tables, as the
/// backend declares it (`VARCHAR(n)`, `CHAR(n)`; SQLite keeps the declared type).
async fn declared_lengths(t: &TestDb) -> anyhow::Result<Vec<(String, String, u32)>> {
    let tables = TABLES.map(|t| format!("'{t}'")).join(", ");
    let sql = match t.backend {
        Backend::Postgres => format!(
            "SELECT table_name AS t, column_name AS c, \
             CAST(character_maximum_length AS BIGINT) AS n FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name IN ({tables}) \
             AND character_maximum_length IS NOT NULL"
        ),
        Backend::MySql => format!(
            "SELECT TABLE_NAME AS t, COLUMN_NAME AS c, \
             CAST(CHARACTER_MAXIMUM_LENGTH AS SIGNED) AS n FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN ({tables}) \
             AND DATA_TYPE IN ('varchar', 'char')"
        ),
        Backend::Sqlite => {
            let mut found = Vec::new();
            for table in TABLES {
                let rows =
                    t.db.query_all_raw(Statement::from_string(
                        t.db_backend(),
                        format!("SELECT name, type FROM pragma_table_info('{table}')"),
                    ))
                    .await?;
                for row in rows {
                    let column: String = row.try_get("", "name")?;
                    let declared: String = row.try_get("", "type")?;
                    let declared = declared.to_ascii_lowercase();
                    if let Some(n) = declared
                        .strip_prefix("varchar(")
                        .or_else(|| declared.strip_prefix("char("))
                        .and_then(|rest| rest.strip_suffix(')'))
                    {
                        found.push((table.to_owned(), column, n.trim().parse()?));
                    }
                }
            }
            return Ok(found);
        }
    };
    let rows =
        t.db.query_all_raw(Statement::from_string(t.db_backend(), sql))
            .await?;
    rows.iter()
        .map(|r| {
            let n: i64 = r.try_get("", "n")?;
            Ok((r.try_get("", "t")?, r.try_get("", "c")?, u32::try_from(n)?))
        })
        .collect()
}

/// Every bounded text column of the schema is listed in [`bounded_columns`], with the length
/// its check allows (a status column: room for its longest value), on every backend.
async fn every_bounded_column_has_the_length_its_check_uses(t: TestDb) -> anyhow::Result<()> {
    let expected = bounded_columns();
    let declared = declared_lengths(&t).await?;
    let mut wrong = Vec::new();
    for (table, column, length) in &declared {
        match expected
            .iter()
            .find(|(t, c, _, _)| t == table && c == column)
        {
            None => wrong.push(format!(
                "{table}.{column} ({length}) has no limit and no check: list it"
            )),
            Some((_, _, limit, true)) if limit != length => wrong.push(format!(
                "{table}.{column} is {length} long, its check allows {limit}"
            )),
            Some((_, _, longest, false)) if longest > length => wrong.push(format!(
                "{table}.{column} is {length} long, its longest value {longest}"
            )),
            Some(_) => {}
        }
    }
    for (table, column, _, _) in &expected {
        if !declared.iter().any(|(t, c, _)| t == table && c == column) {
            wrong.push(format!("{table}.{column} is not a bounded column"));
        }
    }
    ensure!(wrong.is_empty(), "{:?}: {wrong:#?}", t.backend);
    Ok(())
}

//! Quick start: durable tasks and a distributed batch job in your own database.
//!
//! ```sh
//! cargo run --example quickstart                                   # embedded SQLite file
//! cargo run --example quickstart -- --database-url postgres://postgres:postgres@127.0.0.1/postgres
//! DATABASE_URL=mysql://user:pass@127.0.0.1/app cargo run --example quickstart
//! ```
//!
//! It creates the tables (`Migrator::up`), then
//!
//! 1. runs a durable parent task that fans out to child tasks (one of which fails once and is
//!    retried) and a finalize task that combines their outputs, on an [`Executor`];
//! 2. prepares a distributed batch job of a few thousand records and runs several workers on it,
//!    with a progress bar fed by the workers' progress events, then prints a summary.
//!
//! Everything lives in the database: stop it half way and the state is still there.
#![allow(
    clippy::print_stdout,
    reason = "an example talks to the person running it"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use sea_orm::{ConnectOptions, Database, DatabaseConnection};
use sea_orm_durable::batch::store::DistributedStateStore;
use sea_orm_durable::batch::{ProcessError, RecordContext, WorkerEvent, WorkerReport};
use sea_orm_durable::migration::{Migrator, MigratorTrait};
use sea_orm_durable::task::{RetryOptions, TaskExecutionStatus, WaitOptions};
use sea_orm_durable::{
    Executor, ExecutorOptions, FinalizeInput, JobConfig, ParentOutcome, SeaOrmStateStore,
    SeaOrmTaskExecutionStorage, TaskDefinition, TaskError, WorkerOptions, prepare, run_worker,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Durable tasks and a distributed batch job in your own database.
///
/// Without a URL (or DATABASE_URL) it uses an SQLite file in the temp directory.
#[derive(Parser)]
#[command(name = "quickstart")]
struct Args {
    /// The database to use (`postgres://…`, `mysql://…` or `sqlite://…`).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    database_url: Option<String>,
    /// Records in the batch job.
    #[arg(long, value_name = "N", default_value_t = 5_000)]
    records: u64,
    /// Workers processing the batch job at once.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 4,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    workers: usize,
}

/// Connects with a pool fit for several workers. SQLite gets WAL (readers never wait for the
/// writer) and a busy timeout (writers queue instead of failing with `SQLITE_BUSY`).
async fn connect(url: &str) -> anyhow::Result<DatabaseConnection> {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(8)
        .min_connections(1)
        .sqlx_logging(false);
    if url.starts_with("sqlite:") {
        options.map_sqlx_sqlite_opts(|o| {
            o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(10))
        });
    }
    Database::connect(options)
        .await
        .with_context(|| format!("connecting to {url}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // An empty DATABASE_URL means none.
    let url = match args.database_url.as_ref().filter(|u| !u.is_empty()) {
        Some(url) => url.clone(),
        None => {
            let path = std::env::temp_dir().join("sea-orm-durable-quickstart.db");
            format!("sqlite://{}?mode=rwc", path.display())
        }
    };
    println!("database  {url}");
    let db = connect(&url).await?;
    Migrator::up(&db, None).await?;
    println!("tables    created or already there\n");

    durable_tasks(&db).await?;
    batch_job(&db, &args).await?;
    db.close().await?;
    Ok(())
}

/// What the finalize task makes of the children's outputs.
#[derive(Debug, Serialize, Deserialize)]
struct Inventory {
    warehouses: usize,
    items: u64,
}

/// Part 1: a parent task with children and a finalize task, run by an executor.
async fn durable_tasks(db: &DatabaseConnection) -> anyhow::Result<()> {
    println!("1. durable tasks: a parent, 5 children, a finalize");

    // A child counts the items of one warehouse; warehouse 3 fails once (a flaky upstream) and
    // is retried by the executor.
    let count_items = TaskDefinition::new("count_items", |ctx, warehouse: u32| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if warehouse == 3 && ctx.attempt == 0 {
            return Err(TaskError::retryable("warehouse 3 did not answer"));
        }
        Ok(u64::from(warehouse) * 100 + 42)
    })
    .retry(RetryOptions {
        max_attempts: 2,
        base_delay: Duration::from_millis(50),
        delay_multiplier: 2.0,
        max_delay: None,
    });
    // The finalize task runs once every child completed, with their outputs in order.
    let total = TaskDefinition::new(
        "total_inventory",
        |_ctx, input: FinalizeInput<u32>| async move {
            let mut items = 0;
            for child in &input.children {
                items += child.output_as::<u64>()?;
            }
            Ok(Inventory {
                warehouses: input.children.len(),
                items,
            })
        },
    );
    let children = count_items.clone();
    let inventory = TaskDefinition::parent("inventory", move |_ctx, warehouses: u32| {
        let children = children.clone();
        async move {
            let mut outcome = ParentOutcome::new(warehouses);
            for warehouse in 1..=warehouses {
                outcome = outcome.child(&children, &warehouse);
            }
            Ok(outcome)
        }
    })
    .finalize(&total);

    let executor = Executor::new(
        Arc::new(SeaOrmTaskExecutionStorage::new(db.clone())),
        ExecutorOptions {
            poll_interval: Duration::from_millis(20),
            ..ExecutorOptions::default()
        },
    );
    executor.register(&inventory)?;
    executor.register(&count_items)?;
    executor.start();
    let started = Instant::now();
    let handle = executor.enqueue(&inventory, &5).await?;
    let wait = WaitOptions {
        poll_interval: Duration::from_millis(20),
        timeout: Some(Duration::from_secs(30)),
    };
    let finished = handle.wait_with(&wait).await;
    executor.shutdown().await;
    let finished = finished?;
    if finished.status() != TaskExecutionStatus::Completed {
        bail!(
            "the parent task ended {:?}: {:?}",
            finished.status(),
            finished.error()
        );
    }
    let output = finished.output.context("no output")?;
    println!(
        "   execution {} completed in {} ms: {} warehouses, {} items (warehouse 3 retried once)\n",
        handle.execution_id(),
        started.elapsed().as_millis(),
        output.warehouses,
        output.items
    );
    Ok(())
}

/// Part 2: a distributed batch job, several workers, a progress bar and a summary.
async fn batch_job(db: &DatabaseConnection, args: &Args) -> anyhow::Result<()> {
    let store: Arc<dyn DistributedStateStore> = Arc::new(SeaOrmStateStore::new(db.clone()));
    let job_id = format!(
        "quickstart-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );
    let config = JobConfig {
        max_retries: Some(2),
        retry_delay: Some(Duration::from_millis(5)),
        ..JobConfig::new(100)
    };
    let orders = (0..args.records).map(|i| {
        let amount_cents = if i % 1000 == 999 {
            0
        } else {
            100 + (i * 37) % 10_000
        };
        json!({ "order": i, "amount_cents": amount_cents })
    });
    let prepared = prepare(&*store, &job_id, config, orders).await?;
    println!(
        "2. batch job {}: {} records in {} batches of 100, {} workers",
        prepared.job_id, prepared.total_records, prepared.total_batches, args.workers
    );

    let bar = ProgressBar::new(prepared.total_records).with_style(
        ProgressStyle::with_template(
            "   {bar:30.cyan/blue} {pos:>6}/{len} records {rate:>9}  {msg}",
        )?
        .with_key(
            "rate",
            |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0}/s", state.per_sec());
            },
        )
        .progress_chars("=> "),
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    let progress = {
        let bar = bar.clone();
        tokio::spawn(async move {
            let mut failed = 0;
            while let Some(event) = rx.recv().await {
                match event {
                    WorkerEvent::BatchFinished {
                        processed,
                        failed: batch_failed,
                        ..
                    } => {
                        failed += batch_failed;
                        bar.inc(processed + batch_failed);
                        bar.set_message(format!("{failed} failed"));
                    }
                    WorkerEvent::ClaimLost { batch_index, .. } => {
                        bar.println(format!("   batch {batch_index} was taken over"));
                    }
                    WorkerEvent::JobFinalized { .. } => {}
                }
            }
        })
    };

    let options = WorkerOptions {
        poll_interval: Duration::from_millis(20),
        progress: Some(tx),
        ..WorkerOptions::default()
    };
    let started = Instant::now();
    let workers: Vec<_> = (0..args.workers)
        .map(|w| {
            let (store, job_id, options) = (Arc::clone(&store), job_id.clone(), options.clone());
            tokio::spawn(async move {
                run_worker(
                    store,
                    &job_id,
                    &format!("worker-{w}"),
                    process_order,
                    options,
                )
                .await
            })
        })
        .collect();
    drop(options); // the progress channel closes when the last worker is done
    let mut reports = Vec::with_capacity(workers.len());
    for worker in workers {
        reports.push(worker.await??);
    }
    let elapsed = started.elapsed();
    progress.await?;
    bar.finish();

    summary(&*store, &job_id, &reports, elapsed).await
}

/// The record processor: "charges" an order. Every 1000th order has no amount and fails for
/// good (after the job's 2 retries); every 250th fails its first attempt and succeeds when
/// retried.
async fn process_order(ctx: RecordContext, order: Value) -> Result<(), ProcessError> {
    if ctx.index.is_multiple_of(4) {
        // Some orders need a call to the payment service.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    if order["amount_cents"].as_u64() == Some(0) {
        return Err(format!("order {}: amount is 0", ctx.index).into());
    }
    if ctx.index % 250 == 7 && ctx.attempt == 0 {
        return Err("payment gateway timed out".into());
    }
    Ok(())
}

async fn summary(
    store: &dyn DistributedStateStore,
    job_id: &str,
    reports: &[WorkerReport],
    elapsed: Duration,
) -> anyhow::Result<()> {
    let job = store.get_job_state(job_id).await?.context("job gone")?;
    let progress = store.get_progress(job_id).await?;
    let done = progress.processed_records + progress.failed_records;
    let rate = u128::from(done) * 1000 / elapsed.as_millis().max(1);
    println!(
        "\n   job {} in {:.2} s ({rate} records/s)\n",
        job.status,
        elapsed.as_secs_f64()
    );
    println!(
        "   {:<10} {:>8} {:>10} {:>7} {:>10}",
        "worker", "batches", "processed", "failed", "finalized"
    );
    for (w, r) in reports.iter().enumerate() {
        println!(
            "   {:<10} {:>8} {:>10} {:>7} {:>10}",
            format!("worker-{w}"),
            r.batches,
            r.processed,
            r.failed,
            if r.finalized { "yes" } else { "" }
        );
    }
    let total = |f: fn(&WorkerReport) -> u64| reports.iter().map(f).sum::<u64>();
    println!(
        "   {:<10} {:>8} {:>10} {:>7}\n",
        "total",
        total(|r| r.batches),
        total(|r| r.processed),
        total(|r| r.failed)
    );
    println!(
        "   records  {} total, {} processed, {} failed, {} pending ({}%)",
        progress.total_records,
        progress.processed_records,
        progress.failed_records,
        progress.pending_records,
        progress.percentage
    );
    println!(
        "   batches  {}/{} completed",
        progress.completed_batches, progress.total_batches
    );
    let failed = store.get_failed_records(job_id).await?;
    if !failed.is_empty() {
        println!("   failed records:");
        for record in failed.iter().take(5) {
            println!(
                "     #{:<6} {}",
                record.index,
                record.processing_error.as_deref().unwrap_or("invalid")
            );
        }
        if failed.len() > 5 {
            println!("     ... and {} more", failed.len() - 5);
        }
    }
    Ok(())
}

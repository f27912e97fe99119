//! `sea-orm-durable`: inspects and repairs the durable task executions and batch jobs that
//! `sea-orm-durable` keeps in a database (PostgreSQL, MySQL/MariaDB or SQLite), by URL.
//!
//! ```text
//! sea-orm-durable -u postgres://user:pass@localhost/app executions list --status failed
//! sea-orm-durable -u sqlite://app.db executions retry ex_123 --json
//! ```
//!
//! Every command prints an aligned table (or `key: value` lines) for people, or with `--json`
//! one JSON document for scripts, and exits non-zero with a message on errors.

mod duration;
mod output;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use sea_orm::{ConnectOptions, Database, DatabaseConnection};
use sea_orm_durable::Error;
use sea_orm_durable::admin::{Admin, JobDetail};
use sea_orm_durable::clock::{Clock, SystemClock};
use sea_orm_durable::task::{
    ExecutionCursor, ScheduleSpec, TaskExecution, TaskExecutionFilter, TaskExecutionStatus,
};
use serde_json::{Value, json};

use crate::output::{Output, age, opt, opt_time, short, time};

/// Inspect and repair sea-orm-durable task executions and batch jobs.
///
/// Works on PostgreSQL, MySQL/MariaDB and SQLite databases whose tables were created by the
/// sea-orm-durable migrations. Prints tables for people; `--json` prints one JSON document
/// per command instead. Exits with 1 and a message on errors (2 on usage errors).
#[derive(Debug, Parser)]
#[command(name = "sea-orm-durable", version)]
struct Cli {
    /// Database URL, e.g. postgres://user:pass@host/db, mysql://…, sqlite://path/to/app.db.
    #[arg(
        long,
        short = 'u',
        env = "DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    database_url: Option<String>,
    /// Print one JSON document instead of a table (errors too, as `{"error": …}`).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List, show, cancel and retry durable task executions.
    #[command(subcommand)]
    Executions(ExecutionsCommand),
    /// Counts of task executions by queue and status, and the due ready executions by task
    /// and queue with how long the oldest has waited.
    ///
    /// A task whose oldest ready execution waits ever longer is served by no executor (a child
    /// task registered nowhere, or a queue no executor serves).
    Stats,
    /// List, pause and resume queues of task executions.
    #[command(subcommand)]
    Queues(QueuesCommand),
    /// Periodic schedules: task, cron expression and time zone or interval, missed-ticks
    /// policy, next and last tick.
    ///
    /// A schedule whose cron expression has no tick left (a bounded one such as
    /// `0 0 0 1 1 * 2027` after its last tick) shows `ended` as its next tick (`null` with
    /// `--json`); it enqueues nothing more.
    Schedules,
    /// Show and repair distributed batch jobs.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Delete finished executions and finished jobs older than the given ages.
    ///
    /// Executions: `completed`, `failed`, `timed_out`, `children_tasks_failed`,
    /// `finalize_task_failed` and `cancelled` ones that finished (and were closed) before the
    /// age, with the finished-child records of pruned parents. Jobs: `COMPLETED`, `FAILED` and
    /// `ABORTED` ones completed before the age, with their batches and records. Unfinished
    /// work is never touched; deletion runs in bounded batches.
    Prune(PruneArgs),
}

#[derive(Debug, Subcommand)]
enum ExecutionsCommand {
    /// List executions, oldest first, filtered by status, task, queue and age.
    List(ListArgs),
    /// Everything about one execution: status, attempts, times, error, parent, children counts,
    /// input and output.
    Show {
        /// The execution id.
        id: String,
    },
    /// Cancel an execution that has not finished.
    ///
    /// The same cancellation as `TaskHandle::cancel`: the execution becomes `cancelled`, an
    /// executor running it is told to stop (what the run returns afterwards is discarded), and
    /// its children are cancelled when it is closed. Fails for an execution that finished.
    Cancel {
        /// The execution id.
        id: String,
    },
    /// Run a failed or timed-out root execution again, as a new attempt.
    ///
    /// The execution goes back to `ready` with its retry count one higher; its error stays,
    /// so the new run sees it as its previous error and `show` shows it until the run ends.
    /// Only a root execution (no parent) whose own run failed, that spawned no children nor
    /// finalize task and is not a sleeping task's is retried: anything else is refused with the
    /// reason and what to do instead. One conditional update, safe against concurrent changes.
    Retry {
        /// The execution id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum QueuesCommand {
    /// Every queue with unfinished executions or a pause: its ready, running and unfinished
    /// counts, and since when it is paused.
    List,
    /// Pause a queue: from the next claim on, no executor claims its executions.
    ///
    /// Executions already running finish; new ones enqueued into the queue wait `ready`. The
    /// pause is stored in the database, so it holds across restarts and for executors started
    /// later, until `queues resume`. Pausing a paused queue keeps its first pause time; a
    /// queue with no executions yet can be paused.
    Pause {
        /// The queue's name.
        queue: String,
    },
    /// Resume a paused queue: its executions are claimed again from the next claim on.
    Resume {
        /// The queue's name.
        queue: String,
    },
}

#[derive(Debug, Args)]
struct ListArgs {
    /// Only executions in this status (repeat for several): ready, running, failed,
    /// timed_out, waiting_for_children_tasks, children_tasks_failed, waiting_for_finalize_task,
    /// finalize_task_failed, completed, cancelled, sleeping.
    #[arg(long, value_parser = parse_status)]
    status: Vec<TaskExecutionStatus>,
    /// Only executions of this task (repeat for several).
    #[arg(long)]
    task: Vec<String>,
    /// Only executions in this queue (repeat for several).
    #[arg(long)]
    queue: Vec<String>,
    /// Only executions enqueued more than this long ago (30s, 10m, 2h, 7d, 1h30m).
    #[arg(long, value_parser = duration::parse)]
    older_than: Option<Duration>,
    /// Only executions enqueued less than this long ago (30s, 10m, 2h, 7d, 1h30m).
    #[arg(long, value_parser = duration::parse)]
    newer_than: Option<Duration>,
    /// At most this many executions.
    #[arg(long, default_value_t = 100)]
    limit: u64,
    /// Only executions after this cursor: the `next` of the previous page (printed after a
    /// full page), so that pages neither skip nor repeat an execution.
    #[arg(long, value_parser = parse_cursor)]
    after: Option<ExecutionCursor>,
}

fn parse_cursor(text: &str) -> Result<ExecutionCursor, String> {
    ExecutionCursor::parse(text).map_err(|e| e.to_string())
}

#[derive(Debug, Subcommand)]
enum JobsCommand {
    /// A batch job's status, progress, batch counts and failed records.
    Show {
        /// The job id.
        job_id: String,
        /// Show at most this many failed records.
        #[arg(long, default_value_t = 50)]
        limit: u64,
    },
    /// Put the failed records of a distributed job back to pending, to be processed again.
    ///
    /// In one transaction: every `failed` record whose batch is finished (or pending) becomes
    /// `pending` with its processing error cleared (payloads and retry count kept); each
    /// finished batch holding one goes back to `PENDING` without an owner, so running workers
    /// (or the next `run_worker`) claim and process it again, skipping its processed records;
    /// a `COMPLETED` or `FAILED` job goes back to `PROCESSING` with its completion time and
    /// finalizer cleared, and is finalized again, exactly once, when its batches finish.
    /// Batches a worker holds right now are left alone (requeue again later). `invalid`
    /// records are not requeued (their data failed validation). Refused for an aborted or
    /// unstarted job, a job that is not distributed, and a running job every batch of which
    /// has finished (it is being finalized: requeue once it is `COMPLETED` or `FAILED`).
    RequeueFailed {
        /// The job id.
        job_id: String,
    },
}

#[derive(Debug, Args)]
#[group(required = true, multiple = true)]
struct PruneArgs {
    /// Delete finished executions that finished more than this long ago (e.g. 7d).
    #[arg(long, value_parser = duration::parse)]
    executions_older_than: Option<Duration>,
    /// Delete finished jobs completed more than this long ago (e.g. 30d).
    #[arg(long, value_parser = duration::parse)]
    jobs_older_than: Option<Duration>,
    /// Most rows deleted by one statement (one short transaction).
    #[arg(long, default_value_t = 1_000)]
    batch_size: u64,
}

fn parse_status(text: &str) -> Result<TaskExecutionStatus, String> {
    text.parse().map_err(|_| {
        let known: Vec<&str> = TaskExecutionStatus::ALL
            .iter()
            .map(|s| s.as_str())
            .collect();
        format!("unknown status `{text}`; one of {}", known.join(", "))
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut out = Output::stdout(cli.json);
    match run(cli, &mut out).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            if out.is_json() {
                let document =
                    json!({ "error": { "kind": kind(&err), "message": format!("{err:#}") } });
                // The message went to stderr already; a closed stdout changes nothing.
                let _ = out.json(&document);
            }
            ExitCode::FAILURE
        }
    }
}

/// A short, stable name of what went wrong, for scripts.
fn kind(err: &anyhow::Error) -> &'static str {
    match err.downcast_ref::<Error>() {
        Some(Error::NotFound { .. }) => "not_found",
        Some(Error::InvalidState { .. }) => "invalid_state",
        Some(Error::InvalidArgument { .. }) => "invalid_argument",
        Some(Error::Conflict { .. }) => "conflict",
        Some(Error::CorruptRow { .. }) => "corrupt_row",
        Some(Error::Database(_)) => "database",
        _ => "error",
    }
}

async fn run(cli: Cli, out: &mut Output) -> anyhow::Result<()> {
    let url = cli
        .database_url
        .context("no database URL: pass --database-url (-u) or set DATABASE_URL")?;
    let admin = Admin::from_connection(connect(&url).await?);
    let now = SystemClock.now_ms();
    match cli.command {
        Command::Executions(command) => match command {
            ExecutionsCommand::List(args) => list(&admin, &args, now, out).await,
            ExecutionsCommand::Show { id } => show(&admin, &id, out).await,
            ExecutionsCommand::Cancel { id } => cancel(&admin, &id, out).await,
            ExecutionsCommand::Retry { id } => retry(&admin, &id, out).await,
        },
        Command::Stats => stats(&admin, out).await,
        Command::Queues(command) => match command {
            QueuesCommand::List => queues(&admin, now, out).await,
            QueuesCommand::Pause { queue } => pause(&admin, &queue, out).await,
            QueuesCommand::Resume { queue } => resume(&admin, &queue, out).await,
        },
        Command::Schedules => schedules(&admin, out).await,
        Command::Jobs(command) => match command {
            JobsCommand::Show { job_id, limit } => show_job(&admin, &job_id, limit, out).await,
            JobsCommand::RequeueFailed { job_id } => requeue(&admin, &job_id, out).await,
        },
        Command::Prune(args) => prune(&admin, &args, out).await,
    }
}

async fn connect(url: &str) -> anyhow::Result<DatabaseConnection> {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(2)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(30))
        .sqlx_logging(false);
    // Executors may hold SQLite's write lock for a moment: wait for it rather than fail.
    options.map_sqlx_sqlite_opts(|o| o.busy_timeout(Duration::from_secs(10)));
    Database::connect(options)
        .await
        .with_context(|| format!("connecting to {}", redacted(url)))
}

/// `url` without its password, for messages.
fn redacted(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let host_start = rest.find('/').unwrap_or(rest.len());
    match rest[..host_start].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme_end], &rest[at..])
        }
        None => url.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// Executions

fn execution_json(e: &TaskExecution, full: bool) -> anyhow::Result<Value> {
    let mut value = json!({
        "executionId": e.execution_id,
        "taskId": e.task_id,
        "queue": e.queue,
        "status": e.status,
        "isFinished": e.is_finished,
        "retryAttempts": e.retry_attempts,
        "maxRetryAttempts": e.retry_options.max_attempts,
        "error": e.error,
        "parent": e.parent,
        "root": e.root,
        "createdAt": e.created_at,
        "startAt": e.start_at,
        "startedAt": e.started_at,
        "finishedAt": e.finished_at,
        "updatedAt": e.updated_at,
    });
    if full && let Some(map) = value.as_object_mut() {
        for (key, field) in [
            ("wakeKey", json!(e.wake_key)),
            ("executorId", json!(e.executor_id)),
            ("expiresAt", json!(e.expires_at)),
            ("cancelRequested", json!(e.cancel_requested)),
            ("childrenCount", json!(e.children_count)),
            ("finishedChildrenCount", json!(e.finished_children_count)),
            ("failedChildrenCount", json!(e.failed_children_count)),
            ("finalize", serde_json::to_value(&e.finalize)?),
            ("isClosed", json!(e.is_closed)),
            ("closedAt", json!(e.closed_at)),
            ("input", json!(e.input)),
            ("runOutput", json!(e.run_output)),
            ("output", json!(e.output)),
            ("progress", json!(e.progress)),
        ] {
            map.insert(key.to_owned(), field);
        }
    }
    Ok(value)
}

async fn list(admin: &Admin, args: &ListArgs, now: i64, out: &mut Output) -> anyhow::Result<()> {
    let some = |list: &Vec<String>| (!list.is_empty()).then(|| list.clone());
    let filter = TaskExecutionFilter {
        statuses: (!args.status.is_empty()).then(|| args.status.clone()),
        task_ids: some(&args.task),
        queues: some(&args.queue),
        created_before: args
            .older_than
            .map(|d| now.saturating_sub(duration::millis(d))),
        created_after: args
            .newer_than
            .map(|d| now.saturating_sub(duration::millis(d))),
        after: args.after.clone(),
        limit: Some(args.limit),
        ..Default::default()
    };
    let found = admin.executions(&filter).await?;
    // A full page may have a next one.
    let next = found
        .last()
        .filter(|_| u64::try_from(found.len()).ok() == Some(args.limit))
        .map(|e| ExecutionCursor::of(e).to_string());
    if out.is_json() {
        let executions = found
            .iter()
            .map(|e| execution_json(e, false))
            .collect::<anyhow::Result<Vec<_>>>()?;
        return out.json(&json!({ "executions": executions, "next": next }));
    }
    let rows: Vec<Vec<String>> = found
        .iter()
        .map(|e| {
            vec![
                e.execution_id.clone(),
                e.task_id.clone(),
                e.queue.clone(),
                e.status.to_string(),
                e.retry_attempts.to_string(),
                time(e.created_at),
                opt_time(e.finished_at),
                e.error
                    .as_ref()
                    .map_or_else(String::new, |err| short(&err.message, 60)),
            ]
        })
        .collect();
    out.table(
        &[
            "EXECUTION",
            "TASK",
            "QUEUE",
            "STATUS",
            "RETRIES",
            "CREATED",
            "FINISHED",
            "ERROR",
        ],
        &rows,
    )?;
    if found.is_empty() {
        out.line("(no executions match)")?;
    }
    if let Some(next) = next {
        out.line(format_args!("next page: --after {next}"))?;
    }
    Ok(())
}

fn print_execution(e: &TaskExecution, out: &mut Output) -> anyhow::Result<()> {
    let parent = e.parent.as_ref().map(|p| {
        format!(
            "{} ({}, {} {})",
            p.execution_id,
            p.task_id,
            if p.is_finalize { "finalize" } else { "child" },
            p.index
        )
    });
    let error = e.error.as_ref().map(|err| {
        format!(
            "{} [{:?}{}{}]",
            err.message,
            err.kind,
            if err.is_retryable { ", retryable" } else { "" },
            if err.is_internal { ", internal" } else { "" }
        )
    });
    out.fields(&[
        ("execution", e.execution_id.clone()),
        ("task", e.task_id.clone()),
        ("queue", e.queue.clone()),
        ("status", e.status.to_string()),
        (
            "retries",
            format!("{} of {}", e.retry_attempts, e.retry_options.max_attempts),
        ),
        ("error", opt(error)),
        ("parent", opt(parent)),
        ("root", opt(e.root.as_ref().map(|r| r.execution_id.clone()))),
        ("wake key", opt(e.wake_key.as_ref())),
        ("created", time(e.created_at)),
        ("start at", time(e.start_at)),
        ("started", opt_time(e.started_at)),
        ("finished", opt_time(e.finished_at)),
        ("closed", opt_time(e.closed_at)),
        ("updated", time(e.updated_at)),
        ("executor", opt(e.executor_id.as_ref())),
        ("lease until", opt_time(e.expires_at)),
        ("cancel requested", e.cancel_requested.to_string()),
        (
            "children",
            format!(
                "{} spawned, {} finished, {} failed",
                e.children_count, e.finished_children_count, e.failed_children_count
            ),
        ),
        (
            "finalize",
            opt(e.finalize.as_ref().map(|f| f.execution_id.clone())),
        ),
        ("input", short(&e.input, 200)),
        (
            "run output",
            opt(e.run_output.as_deref().map(|o| short(o, 200))),
        ),
        ("output", opt(e.output.as_deref().map(|o| short(o, 200)))),
        (
            "progress",
            opt(e.progress.as_deref().map(|p| short(p, 200))),
        ),
    ])
}

async fn show(admin: &Admin, id: &str, out: &mut Output) -> anyhow::Result<()> {
    let detail = admin.execution(id).await?;
    let e = &detail.execution;
    if out.is_json() {
        let mut doc = execution_json(e, true)?;
        if let Some(map) = doc.as_object_mut() {
            let children = detail
                .children
                .iter()
                .map(|c| execution_json(c, false))
                .collect::<anyhow::Result<Vec<_>>>()?;
            map.insert("children".to_owned(), json!(children));
            map.insert(
                "parentExecution".to_owned(),
                detail
                    .parent
                    .as_ref()
                    .map(|p| execution_json(p, false))
                    .transpose()?
                    .unwrap_or(Value::Null),
            );
        }
        return out.json(&doc);
    }
    print_execution(e, out)?;
    if detail.children.is_empty() {
        return Ok(());
    }
    out.line("")?;
    out.line(format_args!(
        "children (first {} of {}, with the finalize execution):",
        detail.children.len(),
        detail.children_count
    ))?;
    let rows: Vec<Vec<String>> = detail
        .children
        .iter()
        .map(|c| {
            vec![
                c.execution_id.clone(),
                c.task_id.clone(),
                c.status.to_string(),
                opt_time(c.finished_at),
            ]
        })
        .collect();
    out.table(&["EXECUTION", "TASK", "STATUS", "FINISHED"], &rows)
}

async fn cancel(admin: &Admin, id: &str, out: &mut Output) -> anyhow::Result<()> {
    let done = admin.cancel(id).await?;
    if out.is_json() {
        return out.json(
            &json!({ "cancelled": true, "execution": execution_json(&done.execution, false)? }),
        );
    }
    out.line(format_args!(
        "cancelled {id} (was {}){}",
        done.was,
        if done.was == TaskExecutionStatus::Running {
            "; its executor stops the run"
        } else {
            ""
        }
    ))
}

async fn retry(admin: &Admin, id: &str, out: &mut Output) -> anyhow::Result<()> {
    let e = admin.retry(id).await?;
    if out.is_json() {
        return out.json(&json!({ "retried": true, "execution": execution_json(&e, false)? }));
    }
    out.line(format_args!(
        "retried {id}: {} again, retry {} (previous error: {})",
        e.status,
        e.retry_attempts,
        opt(e.error.as_ref().map(|err| err.message.as_str())),
    ))
}

async fn stats(admin: &Admin, out: &mut Output) -> anyhow::Result<()> {
    let stats = admin.stats().await?;
    let (counts, ready, now) = (&stats.counts, &stats.ready, stats.now);
    let total = stats.total();
    let by_status = |status: TaskExecutionStatus| stats.count(status);
    if out.is_json() {
        let mut statuses = serde_json::Map::new();
        for &status in TaskExecutionStatus::ALL {
            statuses.insert(status.as_str().to_owned(), json!(by_status(status)));
        }
        let ready: Vec<Value> = ready
            .iter()
            .map(|r| {
                json!({
                    "taskId": r.task_id,
                    "queue": r.queue,
                    "count": r.count,
                    "oldestStartAt": r.oldest_start_at,
                    "oldestWaitedMs": now.saturating_sub(r.oldest_start_at).max(0),
                })
            })
            .collect();
        return out.json(&json!({
            "executions": counts,
            "byStatus": statuses,
            "total": total,
            "ready": ready,
            "paused": stats.paused,
        }));
    }
    // One row per queue, one column per status that occurs anywhere.
    let columns: Vec<TaskExecutionStatus> = TaskExecutionStatus::ALL
        .iter()
        .copied()
        .filter(|s| by_status(*s) > 0)
        .collect();
    let mut queues: Vec<&str> = counts.iter().map(|c| c.queue.as_str()).collect();
    queues.dedup();
    let cell = |queue: Option<&str>, status: TaskExecutionStatus| -> u64 {
        counts
            .iter()
            .filter(|c| c.status == status && queue.is_none_or(|q| q == c.queue))
            .map(|c| c.count)
            .sum()
    };
    let mut rows = Vec::new();
    for queue in queues.iter().map(|q| Some(*q)).chain([None]) {
        let mut row = vec![queue.unwrap_or("(all)").to_owned()];
        row.extend(columns.iter().map(|s| cell(queue, *s).to_string()));
        row.push(
            columns
                .iter()
                .map(|s| cell(queue, *s))
                .sum::<u64>()
                .to_string(),
        );
        rows.push(row);
    }
    let mut headers = vec!["QUEUE"];
    headers.extend(columns.iter().map(|s| s.as_str()));
    headers.push("TOTAL");
    out.table(&headers, &rows)?;
    if !stats.paused.is_empty() {
        let paused: Vec<String> = stats
            .paused
            .iter()
            .map(|p| format!("{} (since {})", p.queue, time(p.paused_at)))
            .collect();
        out.line("")?;
        out.line(format_args!("paused: {}", paused.join(", ")))?;
    }
    if ready.is_empty() {
        return Ok(());
    }
    // The longest waits first.
    let rows: Vec<Vec<String>> = ready
        .iter()
        .map(|r| {
            vec![
                r.task_id.clone(),
                r.queue.clone(),
                r.count.to_string(),
                time(r.oldest_start_at),
                age(now.saturating_sub(r.oldest_start_at)),
            ]
        })
        .collect();
    out.line("")?;
    out.table(&["TASK", "QUEUE", "READY", "OLDEST DUE", "WAITED"], &rows)
}

/// Lists the queues with unfinished executions or a pause, by name.
async fn queues(admin: &Admin, now: i64, out: &mut Output) -> anyhow::Result<()> {
    let queues = admin.queues().await?;
    if out.is_json() {
        let queues: Vec<Value> = queues
            .iter()
            .map(|q| {
                json!({
                    "queue": q.queue,
                    "paused": q.paused_at.is_some(),
                    "pausedAt": q.paused_at,
                    "ready": q.ready,
                    "running": q.running,
                    "unfinished": q.unfinished,
                })
            })
            .collect();
        return out.json(&json!({ "queues": queues }));
    }
    let rows: Vec<Vec<String>> = queues
        .iter()
        .map(|q| {
            vec![
                q.queue.clone(),
                q.ready.to_string(),
                q.running.to_string(),
                q.unfinished.to_string(),
                q.paused_at.map_or_else(
                    || "-".to_owned(),
                    |at| format!("since {} ({} ago)", time(at), age(now.saturating_sub(at))),
                ),
            ]
        })
        .collect();
    out.table(
        &["QUEUE", "READY", "RUNNING", "UNFINISHED", "PAUSED"],
        &rows,
    )
}

async fn pause(admin: &Admin, queue: &str, out: &mut Output) -> anyhow::Result<()> {
    let paused = admin.pause_queue(queue).await?;
    if out.is_json() {
        return out.json(&json!({ "paused": paused }));
    }
    out.line(format_args!(
        "paused {} (since {}): no executor claims from it until `queues resume {}`",
        paused.queue,
        time(paused.paused_at),
        paused.queue
    ))
}

async fn resume(admin: &Admin, queue: &str, out: &mut Output) -> anyhow::Result<()> {
    let was_paused = admin.resume_queue(queue).await?;
    if out.is_json() {
        return out.json(&json!({ "queue": queue, "wasPaused": was_paused }));
    }
    if was_paused {
        out.line(format_args!("resumed {queue}"))
    } else {
        out.line(format_args!("{queue} was not paused; nothing changed"))
    }
}

/// Lists the schedules, in id order.
async fn schedules(admin: &Admin, out: &mut Output) -> anyhow::Result<()> {
    let found = admin.schedules().await?;
    if out.is_json() {
        let schedules: Vec<Value> = found
            .iter()
            .map(|s| {
                let (cron, time_zone, interval_ms) = match &s.spec {
                    ScheduleSpec::Cron {
                        expression,
                        time_zone,
                    } => (Some(expression), Some(time_zone), None),
                    ScheduleSpec::Interval { every_ms } => (None, None, Some(*every_ms)),
                };
                json!({
                    "scheduleId": s.schedule_id,
                    "taskId": s.task_id,
                    "cron": cron,
                    "timeZone": time_zone,
                    "intervalMs": interval_ms,
                    "missedTicks": s.missed_ticks.as_str(),
                    "nextTickAt": s.next_tick_at,
                    "lastTickAt": s.last_tick_at,
                    "ended": s.next_tick_at.is_none(),
                    "createdAt": s.created_at,
                    "updatedAt": s.updated_at,
                })
            })
            .collect();
        return out.json(&json!({ "schedules": schedules }));
    }
    let rows: Vec<Vec<String>> = found
        .iter()
        .map(|s| {
            let when = match &s.spec {
                ScheduleSpec::Cron {
                    expression,
                    time_zone,
                } => format!("{expression} ({time_zone})"),
                ScheduleSpec::Interval { every_ms } => format!("every {every_ms} ms"),
            };
            vec![
                s.schedule_id.clone(),
                s.task_id.clone(),
                when,
                s.missed_ticks.to_string(),
                s.next_tick_at.map_or_else(|| "ended".to_owned(), time),
                opt_time(s.last_tick_at),
            ]
        })
        .collect();
    out.table(
        &["SCHEDULE", "TASK", "TICKS", "MISSED", "NEXT", "LAST"],
        &rows,
    )?;
    if found.is_empty() {
        out.line("(no schedules)")?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Jobs

async fn show_job(admin: &Admin, job_id: &str, limit: u64, out: &mut Output) -> anyhow::Result<()> {
    let JobDetail {
        job,
        progress,
        batches,
        failed_records: failed,
    } = admin.job(job_id, limit).await?;
    if out.is_json() {
        let records: Vec<Value> = failed
            .iter()
            .map(|r| {
                json!({
                    "index": r.index,
                    "status": r.status,
                    "processingError": r.processing_error,
                    "errors": r.errors,
                    "retryCount": r.retry_count,
                    "raw": r.raw,
                })
            })
            .collect();
        return out.json(&json!({
            "job": {
                "id": job.id,
                "status": job.status,
                "distributed": job.distributed,
                "totalRecords": job.total_records,
                "startedAt": job.started_at,
                "completedAt": job.completed_at,
            },
            "progress": {
                "totalRecords": progress.total_records,
                "processedRecords": progress.processed_records,
                "failedRecords": progress.failed_records,
                "pendingRecords": progress.pending_records,
                "percentage": progress.percentage,
                "completedBatches": progress.completed_batches,
                "totalBatches": progress.total_batches,
            },
            "batches": batches.as_ref().map(|b| json!({
                "total": b.total_batches,
                "completed": b.completed_batches,
                "failed": b.failed_batches,
                "processing": b.processing_batches,
                "pending": b.pending_batches,
                "isComplete": b.is_complete,
            })),
            "failedRecords": records,
        }));
    }
    let mut fields = vec![
        ("job", job.id.clone()),
        ("status", job.status.to_string()),
        ("distributed", job.distributed.to_string()),
        ("started", opt_time(job.started_at)),
        ("completed", opt_time(job.completed_at)),
        (
            "records",
            format!(
                "{} total, {} processed, {} failed, {} pending ({}%)",
                progress.total_records,
                progress.processed_records,
                progress.failed_records,
                progress.pending_records,
                progress.percentage
            ),
        ),
    ];
    if let Some(b) = &batches {
        fields.push((
            "batches",
            format!(
                "{} total, {} completed, {} failed, {} processing, {} pending",
                b.total_batches,
                b.completed_batches,
                b.failed_batches,
                b.processing_batches,
                b.pending_batches
            ),
        ));
    } else {
        fields.push((
            "batches",
            format!(
                "{} of {} completed",
                progress.completed_batches, progress.total_batches
            ),
        ));
    }
    out.fields(&fields)?;
    if failed.is_empty() {
        return Ok(());
    }
    out.line("")?;
    out.line(format_args!(
        "failed records (first {} of {}):",
        failed.len(),
        progress.failed_records
    ))?;
    let rows: Vec<Vec<String>> = failed
        .iter()
        .map(|r| {
            let reason = r.processing_error.clone().unwrap_or_else(|| {
                r.errors
                    .iter()
                    .map(|e| format!("{}: {}", e.field, e.message))
                    .collect::<Vec<_>>()
                    .join("; ")
            });
            vec![
                r.index.to_string(),
                r.status.to_string(),
                r.retry_count.to_string(),
                short(&reason, 80),
            ]
        })
        .collect();
    out.table(&["INDEX", "STATUS", "RETRIES", "ERROR"], &rows)
}

async fn requeue(admin: &Admin, job_id: &str, out: &mut Output) -> anyhow::Result<()> {
    let done = admin.requeue_failed_records(job_id).await?;
    if out.is_json() {
        return out.json(&json!({ "jobId": job_id, "requeued": done }));
    }
    out.line(format_args!(
        "requeued {} failed records of job {job_id} in {} batches; the job is {}",
        done.records, done.batches, done.job_status
    ))?;
    if done.left_failed > 0 {
        out.line(format_args!(
            "{} failed records were left: a worker holds their batch (or it is paused); requeue again once it finished",
            done.left_failed
        ))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Prune

async fn prune(admin: &Admin, args: &PruneArgs, out: &mut Output) -> anyhow::Result<()> {
    let mut executions = None;
    if let Some(age) = args.executions_older_than {
        executions = Some(admin.prune_executions(age, args.batch_size).await?);
    }
    let mut job_rows = None;
    if let Some(age) = args.jobs_older_than {
        job_rows = Some(admin.prune_jobs(age, args.batch_size).await?);
    }
    if out.is_json() {
        return out.json(&json!({
            "executionsDeleted": executions,
            "jobRowsDeleted": job_rows,
        }));
    }
    if let Some(n) = executions {
        out.line(format_args!("deleted {n} finished executions"))?;
    }
    if let Some(n) = job_rows {
        out.line(format_args!(
            "deleted {n} rows of finished jobs (records, batches and job rows)"
        ))?;
    }
    Ok(())
}

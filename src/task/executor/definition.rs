//! Task definitions: typed functions registered under an id, and what a run returns.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::task::model::{ExecutionError, RetryOptions};

/// A boxed future, as stored in type-erased task definitions.
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Options of a task, applied to every execution of it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskOptions {
    /// Maximum duration of one run; a run past it fails with a (retryable) timeout error. At
    /// most [`MAX_TIMEOUT`](crate::task::MAX_TIMEOUT).
    pub timeout: Duration,
    /// How failed runs are retried.
    pub retry: RetryOptions,
    /// Delay between enqueueing and the first run. At most
    /// [`MAX_SLEEP_BEFORE_RUN`](crate::task::MAX_SLEEP_BEFORE_RUN).
    pub sleep_before_run: Duration,
    /// The queue its executions wait in (default [`DEFAULT_QUEUE`](crate::task::DEFAULT_QUEUE)); an
    /// executor claims from the queues in [`ExecutorOptions::queues`](super::ExecutorOptions).
    pub queue: String,
}

impl TaskOptions {
    /// Checks the options against the documented limits.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) naming the first option out of
    /// range.
    pub fn validate(&self) -> crate::Result<()> {
        crate::task::validate_timeout_ms(crate::clock::millis(self.timeout))?;
        crate::task::validate_sleep_ms(crate::clock::millis(self.sleep_before_run))?;
        crate::task::validate_retry(&self.retry)?;
        crate::task::validate_queue(&self.queue)
    }
}

impl Default for TaskOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(300),
            retry: RetryOptions::default(),
            sleep_before_run: Duration::ZERO,
            queue: crate::task::DEFAULT_QUEUE.to_owned(),
        }
    }
}

/// What a run knows about itself, and its hold on the execution: a long run
/// [heartbeats](Self::heartbeat) and [reports progress](Self::report_progress) through it.
#[derive(Debug, Clone)]
pub struct TaskContext {
    /// The execution's id.
    pub execution_id: String,
    /// The task's id.
    pub task_id: String,
    /// The attempt number, from 0 (equal to the retries done so far).
    pub attempt: u32,
    /// The error of the previous attempt, when this run is a retry.
    pub prev_error: Option<ExecutionError>,
    /// Cancelled when the execution is cancelled or its run times out.
    pub cancellation: CancellationToken,
    /// The run's claim, for heartbeats; `None` in a context made by [`TaskContext::new`].
    lease: Option<Arc<super::lease::RunLease>>,
}

impl TaskContext {
    /// A context for calling a task's function outside an executor (in a unit test of the
    /// function, say): attempt 0, no previous error, never cancelled; its heartbeats and
    /// progress reports succeed without storing anything.
    pub fn new(execution_id: impl Into<String>, task_id: impl Into<String>) -> Self {
        Self {
            execution_id: execution_id.into(),
            task_id: task_id.into(),
            attempt: 0,
            prev_error: None,
            cancellation: CancellationToken::new(),
            lease: None,
        }
    }

    /// The context of a run holding `lease`.
    pub(crate) fn with_lease(mut self, lease: Arc<super::lease::RunLease>) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Tells the executors that this run is alive: the execution's stored lease is extended
    /// to a whole timeout (plus the executor's lease margin) from now, and so is the run's own
    /// deadline. A run that heartbeats more often than its task's timeout never times out and
    /// is never taken for a dead executor's, so a task that streams for an hour needs a
    /// timeout of minutes, not an hour. One conditional write, guarded by the claim's fencing
    /// token.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidState`](crate::Error::InvalidState) when this run no longer holds the
    /// execution (it was cancelled, or its lease lapsed and another executor claimed it):
    /// the run should stop, since nothing it returns will be kept. Database errors otherwise
    /// (the lease is then as it was; heartbeat again).
    pub async fn heartbeat(&self) -> crate::Result<()> {
        match &self.lease {
            Some(lease) => lease.extend(None).await,
            None => Ok(()),
        }
    }

    /// Stores `progress` (any small value, as JSON) on the execution, where
    /// [`TaskExecution::progress`](crate::task::TaskExecution::progress) and the command
    /// line's `executions show` read it; the last report stays after the run. A report is also
    /// a [heartbeat](Self::heartbeat).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for a value that does not
    /// serialize or whose JSON exceeds [`MAX_PROGRESS_BYTES`](crate::task::MAX_PROGRESS_BYTES)
    /// (nothing is written then); otherwise as [`heartbeat`](Self::heartbeat).
    pub async fn report_progress<T: Serialize + ?Sized>(&self, progress: &T) -> crate::Result<()> {
        let json = serde_json::to_string(progress).map_err(|e| crate::Error::InvalidArgument {
            name: "progress",
            reason: e.to_string(),
        })?;
        if json.len() > super::lease::MAX_PROGRESS_BYTES {
            return Err(crate::Error::InvalidArgument {
                name: "progress",
                reason: format!(
                    "{} bytes of JSON; at most {} are kept",
                    json.len(),
                    super::lease::MAX_PROGRESS_BYTES
                ),
            });
        }
        match &self.lease {
            Some(lease) => lease.extend(Some(json)).await,
            None => Ok(()),
        }
    }
}

/// The error a task returns from a run.
///
/// Any `std::error::Error` converts into a retryable `TaskError` with `?`; use
/// [`TaskError::fatal`] for an error that retrying cannot fix.
pub struct TaskError {
    message: String,
    retryable: bool,
    snooze: Option<Duration>,
}

impl TaskError {
    /// A retryable error.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
            snooze: None,
        }
    }

    /// An error that is never retried.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
            snooze: None,
        }
    }

    /// Not an error: "run me again in `delay`". The execution goes back to `ready`, due
    /// `delay` from now (at most [`MAX_SLEEP_BEFORE_RUN`](crate::task::MAX_SLEEP_BEFORE_RUN);
    /// a longer delay is shortened to it), without counting an attempt against its retries
    /// and without an error: its previous error, if any, stays as it was. For a task that
    /// polls something not ready yet (a payment to settle, a file to appear), as River's and
    /// Oban's snooze. A task that always snoozes runs for ever; count its
    /// [`attempt`](TaskContext::attempt)s yourself if that matters (they do not grow).
    pub fn snooze(delay: Duration) -> Self {
        Self {
            message: format!("snoozed for {} ms", delay.as_millis()),
            retryable: true,
            snooze: Some(delay),
        }
    }

    /// The delay of a [snooze](Self::snooze), when this is one.
    pub fn snoozed_for(&self) -> Option<Duration> {
        self.snooze
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the execution may be retried after this error.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

impl fmt::Debug for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskError")
            .field("message", &self.message)
            .field("retryable", &self.retryable)
            .field("snooze", &self.snooze)
            .finish()
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for TaskError {
    fn from(err: E) -> Self {
        Self::retryable(err.to_string())
    }
}

/// The output of one finished child, as handed to a finalize task or stored in a parent's
/// output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChildOutput {
    /// Position among the parent's children.
    pub index: u32,
    /// The child's task id.
    pub task_id: String,
    /// The child's execution id.
    pub execution_id: String,
    /// The child's output.
    pub output: Value,
}

impl ChildOutput {
    /// The output deserialized as `T`.
    ///
    /// # Errors
    ///
    /// When the output does not deserialize as `T`.
    pub fn output_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.output)
    }
}

/// The input of a finalize task: the parent's run output and its children's outputs in child
/// order. Also the output of a parent task without a finalize task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParentTaskOutput<R> {
    /// What the parent's run returned.
    pub output: R,
    /// The children's outputs, in the order the run returned the children.
    #[serde(rename = "childrenTaskExecutionsOutputs")]
    pub children: Vec<ChildOutput>,
}

/// The input a finalize task receives.
pub type FinalizeInput<R> = ParentTaskOutput<R>;

/// A child execution to spawn, with its input already serialized.
#[derive(Clone)]
pub struct ChildTask {
    pub(crate) spec: Arc<TaskSpec>,
    pub(crate) input: Result<String, String>,
}

impl ChildTask {
    /// A child running `task` with `input`.
    pub fn new<I: Serialize, O>(task: &TaskDefinition<I, O>, input: &I) -> Self {
        Self {
            spec: Arc::clone(&task.spec),
            input: serde_json::to_string(input).map_err(|e| e.to_string()),
        }
    }

    fn from_value(spec: &Arc<TaskSpec>, input: &Value) -> Self {
        Self {
            spec: Arc::clone(spec),
            input: serde_json::to_string(input).map_err(|e| e.to_string()),
        }
    }
}

impl fmt::Debug for ChildTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildTask")
            .field("task_id", &self.spec.id)
            .finish()
    }
}

/// What a parent task's run returns: its own output and the children to run.
#[derive(Debug)]
pub struct ParentOutcome<R> {
    output: R,
    children: Vec<ChildTask>,
}

impl<R> ParentOutcome<R> {
    /// A parent outcome with `output` and no children yet.
    pub fn new(output: R) -> Self {
        Self {
            output,
            children: Vec::new(),
        }
    }

    /// Adds a child running `task` with `input`.
    pub fn child<I: Serialize, O>(mut self, task: &TaskDefinition<I, O>, input: &I) -> Self {
        self.children.push(ChildTask::new(task, input));
        self
    }

    /// Adds prepared children.
    pub fn children(mut self, children: impl IntoIterator<Item = ChildTask>) -> Self {
        self.children.extend(children);
        self
    }
}

/// What a type-erased run produced.
pub(crate) struct RunOutcome {
    /// The serialized run output.
    pub(crate) output: String,
    /// Children to spawn (empty for a plain task).
    pub(crate) children: Vec<ChildTask>,
}

type Runner = dyn Fn(TaskContext, String) -> BoxFuture<Result<RunOutcome, TaskError>> + Send + Sync;

/// A task with its types erased, as the executor keeps it.
pub(crate) struct TaskSpec {
    pub(crate) id: String,
    pub(crate) options: TaskOptions,
    pub(crate) run: Arc<Runner>,
    /// Whether the run returns children (a parent task).
    pub(crate) is_parent: bool,
    /// Whether this is a sleeping task: its executions are enqueued `sleeping` under the key
    /// they get as input and are never run.
    pub(crate) sleeping: bool,
    /// The task run after the children complete, whose output becomes the parent's.
    pub(crate) finalize: Option<Arc<TaskSpec>>,
    /// Tasks this one spawns that registering it registers too.
    pub(crate) dependencies: Vec<Arc<TaskSpec>>,
}

impl fmt::Debug for TaskSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskSpec")
            .field("id", &self.id)
            .field("is_parent", &self.is_parent)
            .field("sleeping", &self.sleeping)
            .field("finalize", &self.finalize.as_ref().map(|f| &f.id))
            .finish()
    }
}

fn decode<I: DeserializeOwned>(input: &str) -> Result<I, TaskError> {
    serde_json::from_str(input).map_err(|e| TaskError::fatal(format!("invalid task input: {e}")))
}

fn encode<O: Serialize>(output: &O) -> Result<String, TaskError> {
    serde_json::to_string(output)
        .map_err(|e| TaskError::fatal(format!("unserializable output: {e}")))
}

/// A task: a typed async function registered with an executor under a unique id.
///
/// `I` is the input type; `O` is the type of the final output of an execution (for a parent
/// task, what its finalize task returns, or [`ParentTaskOutput`] without one).
pub struct TaskDefinition<I, O> {
    pub(crate) spec: Arc<TaskSpec>,
    _types: PhantomData<fn(I) -> O>,
}

impl<I, O> Clone for TaskDefinition<I, O> {
    fn clone(&self) -> Self {
        Self {
            spec: Arc::clone(&self.spec),
            _types: PhantomData,
        }
    }
}

impl<I, O> fmt::Debug for TaskDefinition<I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.spec.fmt(f)
    }
}

impl<I, O> TaskDefinition<I, O> {
    fn from_spec(spec: TaskSpec) -> Self {
        Self {
            spec: Arc::new(spec),
            _types: PhantomData,
        }
    }

    /// The task's id.
    pub fn id(&self) -> &str {
        &self.spec.id
    }

    /// The task's options.
    pub fn options(&self) -> &TaskOptions {
        &self.spec.options
    }

    fn map_options(self, f: impl FnOnce(&mut TaskOptions)) -> Self {
        let mut spec = TaskSpec {
            id: self.spec.id.clone(),
            options: self.spec.options.clone(),
            run: Arc::clone(&self.spec.run),
            is_parent: self.spec.is_parent,
            sleeping: self.spec.sleeping,
            finalize: self.spec.finalize.clone(),
            dependencies: self.spec.dependencies.clone(),
        };
        f(&mut spec.options);
        Self::from_spec(spec)
    }

    /// Sets the run timeout.
    pub fn timeout(self, timeout: Duration) -> Self {
        self.map_options(|o| o.timeout = timeout)
    }

    /// Sets how failed runs are retried.
    pub fn retry(self, retry: RetryOptions) -> Self {
        self.map_options(|o| o.retry = retry)
    }

    /// Sets the delay before the first run.
    pub fn sleep_before_run(self, delay: Duration) -> Self {
        self.map_options(|o| o.sleep_before_run = delay)
    }

    /// Sets the queue its executions wait in.
    pub fn queue(self, queue: impl Into<String>) -> Self {
        let queue = queue.into();
        self.map_options(|o| o.queue = queue)
    }
}

impl<I, O> TaskDefinition<I, O>
where
    I: Serialize + DeserializeOwned + Send + 'static,
    O: Serialize + DeserializeOwned + Send + 'static,
{
    /// A plain task: `run` returns the output.
    pub fn new<F, Fut>(id: impl Into<String>, run: F) -> Self
    where
        F: Fn(TaskContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, TaskError>> + Send + 'static,
    {
        let run = Arc::new(run);
        let runner: Arc<Runner> = Arc::new(move |ctx, input: String| {
            let run = Arc::clone(&run);
            Box::pin(async move {
                let input = decode::<I>(&input)?;
                let output = run(ctx, input).await?;
                Ok(RunOutcome {
                    output: encode(&output)?,
                    children: Vec::new(),
                })
            })
        });
        Self::from_spec(TaskSpec {
            id: id.into(),
            options: TaskOptions::default(),
            run: runner,
            is_parent: false,
            sleeping: false,
            finalize: None,
            dependencies: Vec::new(),
        })
    }
}

impl<O> TaskDefinition<String, O>
where
    O: Serialize + DeserializeOwned + Send + 'static,
{
    /// A sleeping task: an execution of it waits, durably and without holding an executor
    /// slot, until some process wakes it by the key it was enqueued with (its input), or its
    /// [`timeout`](Self::timeout) passes (it then ends `timed_out`, without retries).
    ///
    /// Enqueue it like any task, on its own or as a parent's child ("wait for the payment
    /// webhook"), with the key as input; the key is unique among sleeping executions (a second
    /// sleeper under the same key is a conflict). Wake it with
    /// [`Executor::wake`](super::Executor::wake) (its output becomes the execution's), from any
    /// process, or through the storage
    /// ([`TaskExecutionStorage::wake_task_execution`](crate::task::storage::TaskExecutionStorage::wake_task_execution),
    /// also inside the application's transaction).
    pub fn sleeping(id: impl Into<String>) -> Self {
        let runner: Arc<Runner> = Arc::new(|_ctx, _input: String| {
            Box::pin(async {
                Err(TaskError::fatal(
                    "a sleeping task is woken by its key, never run",
                ))
            })
        });
        Self::from_spec(TaskSpec {
            id: id.into(),
            options: TaskOptions::default(),
            run: runner,
            is_parent: false,
            sleeping: true,
            finalize: None,
            dependencies: Vec::new(),
        })
    }
}

impl<I> TaskDefinition<I, ()>
where
    I: Serialize + DeserializeOwned + Send + 'static,
{
    /// A parent task: `run` returns its output and children. Finish the definition with
    /// [`ParentDefinition::finalize`] or [`ParentDefinition::without_finalize`].
    pub fn parent<R, F, Fut>(id: impl Into<String>, run: F) -> ParentDefinition<I, R>
    where
        R: Serialize + DeserializeOwned + Send + 'static,
        F: Fn(TaskContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ParentOutcome<R>, TaskError>> + Send + 'static,
    {
        let run = Arc::new(run);
        let runner: Arc<Runner> = Arc::new(move |ctx, input: String| {
            let run = Arc::clone(&run);
            Box::pin(async move {
                let input = decode::<I>(&input)?;
                let outcome = run(ctx, input).await?;
                Ok(RunOutcome {
                    output: encode(&outcome.output)?,
                    children: outcome.children,
                })
            })
        });
        ParentDefinition {
            spec: TaskSpec {
                id: id.into(),
                options: TaskOptions::default(),
                run: runner,
                is_parent: true,
                sleeping: false,
                finalize: None,
                dependencies: Vec::new(),
            },
            _types: PhantomData,
        }
    }
}

/// A parent task under construction; see [`TaskDefinition::parent`].
pub struct ParentDefinition<I, R> {
    spec: TaskSpec,
    _types: PhantomData<fn(I) -> R>,
}

impl<I, R> fmt::Debug for ParentDefinition<I, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.spec.fmt(f)
    }
}

impl<I, R> ParentDefinition<I, R> {
    /// Runs `finalize` once every child completed; its output becomes the parent's output.
    /// Registering the parent registers the finalize task too.
    pub fn finalize<F>(
        mut self,
        finalize: &TaskDefinition<FinalizeInput<R>, F>,
    ) -> TaskDefinition<I, F> {
        self.spec.finalize = Some(Arc::clone(&finalize.spec));
        self.spec.dependencies.push(Arc::clone(&finalize.spec));
        TaskDefinition::from_spec(self.spec)
    }

    /// No finalize task: the parent's output is its run output with its children's outputs.
    pub fn without_finalize(self) -> TaskDefinition<I, ParentTaskOutput<R>> {
        TaskDefinition::from_spec(self.spec)
    }
}

/// A chain of tasks run one after another, each receiving the previous one's output.
///
/// Built with [`Sequence::new`] and [`Sequence::then`], finished with [`Sequence::build`]:
/// `Sequence::new("pipeline", &fetch).then(&parse).then(&store).build()`.
pub struct Sequence<I, O> {
    id: String,
    steps: Vec<Arc<TaskSpec>>,
    _types: PhantomData<fn(I) -> O>,
}

impl<I, O> fmt::Debug for Sequence<I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let steps: Vec<&str> = self.steps.iter().map(|s| s.id.as_str()).collect();
        f.debug_struct("Sequence")
            .field("id", &self.id)
            .field("steps", &steps)
            .finish()
    }
}

impl<I, O> Sequence<I, O>
where
    I: Serialize + DeserializeOwned + Send + 'static,
    O: Serialize + DeserializeOwned + Send + 'static,
{
    /// A sequence with id `id` starting with `first`.
    pub fn new(id: impl Into<String>, first: &TaskDefinition<I, O>) -> Self {
        Self {
            id: id.into(),
            steps: vec![Arc::clone(&first.spec)],
            _types: PhantomData,
        }
    }

    /// Appends `next`, which receives the output of the previous step.
    pub fn then<P>(mut self, next: &TaskDefinition<O, P>) -> Sequence<I, P> {
        self.steps.push(Arc::clone(&next.spec));
        Sequence {
            id: self.id,
            steps: self.steps,
            _types: PhantomData,
        }
    }

    /// The sequence as one task.
    ///
    /// It runs as a parent whose only child is the first step; its finalize task spawns the
    /// next step with the previous output, and so on; the last finalize returns the last
    /// step's output. Each link is its own durable execution (`<id>_finalize_<n>`).
    pub fn build(self) -> TaskDefinition<I, O> {
        let count = self.steps.len();
        let last: TaskDefinition<FinalizeInput<Value>, Value> = TaskDefinition::new(
            format!("{}_finalize_{count}", self.id),
            |_ctx, input: FinalizeInput<Value>| async move { only_child_output(input) },
        );
        let mut next = last.spec;
        for k in (1..count).rev() {
            let step = Arc::clone(&self.steps[k]);
            let link = TaskDefinition::<FinalizeInput<Value>, ()>::parent(
                format!("{}_finalize_{k}", self.id),
                move |_ctx, input: FinalizeInput<Value>| {
                    let step = Arc::clone(&step);
                    async move {
                        let previous = only_child_output(input)?;
                        Ok(ParentOutcome::new(Value::Null)
                            .children([ChildTask::from_value(&step, &previous)]))
                    }
                },
            );
            let mut spec = link.spec;
            spec.dependencies.push(Arc::clone(&self.steps[k]));
            spec.finalize = Some(Arc::clone(&next));
            spec.dependencies.push(next);
            next = Arc::new(spec);
        }
        let first = Arc::clone(&self.steps[0]);
        let head = TaskDefinition::<Value, ()>::parent(self.id, move |_ctx, input: Value| {
            let first = Arc::clone(&first);
            async move {
                Ok(ParentOutcome::new(Value::Null)
                    .children([ChildTask::from_value(&first, &input)]))
            }
        });
        let mut spec = head.spec;
        spec.dependencies.push(Arc::clone(&self.steps[0]));
        spec.finalize = Some(Arc::clone(&next));
        spec.dependencies.push(next);
        TaskDefinition::from_spec(spec)
    }
}

fn only_child_output(input: FinalizeInput<Value>) -> Result<Value, TaskError> {
    input
        .children
        .into_iter()
        .next()
        .map(|c| c.output)
        .ok_or_else(|| TaskError::fatal("sequence step produced no output"))
}

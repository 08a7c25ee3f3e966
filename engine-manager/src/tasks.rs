//! Every background task of the manager is owned, and none fails silently.
//!
//! - [`EssentialTasks`]: the long-lived tasks [`crate::run`] starts (control socket,
//!   HTTP, health sampler, lease keeper, command intake, publisher), each with a name.
//!   Each must run until the manager's cancel token fires: one that panics *or ends
//!   early* is a failure.
//! - [`Tasks`]: the tracker every other task is spawned on (one supervisor per
//!   strategy, the metrics recorder, the command-outcome writers). Those may end
//!   whenever their work is done; one that *panics* is a failure.
//!
//! [`watch`] waits for shutdown or the first failure. A failure is logged (which task,
//! the panic message) and takes the whole manager down, gracefully, with a non-zero
//! exit: systemd restarts it, and the new manager adopts the executors that are still
//! running. A panicking strategy supervisor takes the manager down too: its strategy
//! would otherwise be left unsupervised (commands queued forever, crashes never
//! restarted) while the manager reports itself healthy. A restart puts a fresh
//! supervisor on every strategy.

use futures_util::FutureExt;
use std::collections::HashMap;
use std::future::Future;
use std::panic::{AssertUnwindSafe, Location};
use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A task of the manager that failed.
#[derive(Debug, thiserror::Error)]
pub enum TaskFailure {
    #[error("the {task} task panicked: {message}")]
    Panicked { task: String, message: String },
    #[error("the {task} task ended before the manager was asked to stop")]
    EndedEarly { task: String },
    #[error("the {task} task was aborted")]
    Aborted { task: String },
}

impl TaskFailure {
    /// The name of the task that failed.
    pub fn task(&self) -> &str {
        match self {
            TaskFailure::Panicked { task, .. }
            | TaskFailure::EndedEarly { task }
            | TaskFailure::Aborted { task } => task,
        }
    }

    fn from_join_error(task: String, err: JoinError) -> TaskFailure {
        match err.try_into_panic() {
            Ok(panic) => TaskFailure::Panicked {
                task,
                message: engine_protocol::panic_message(panic.as_ref()),
            },
            Err(_) => TaskFailure::Aborted { task },
        }
    }
}

/// The long-lived tasks, by name; each must run until the cancel token fires.
#[derive(Default)]
pub struct EssentialTasks {
    set: JoinSet<()>,
    names: HashMap<tokio::task::Id, &'static str>,
}

impl EssentialTasks {
    pub fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let id = self.set.spawn(task).id();
        self.names.insert(id, name);
    }

    fn name(&mut self, id: tokio::task::Id) -> String {
        self.names.remove(&id).unwrap_or("unnamed").to_string()
    }

    /// The next task to end, and why that is a failure. Pending while every task
    /// runs (or there is none).
    pub async fn next_failure(&mut self) -> TaskFailure {
        match self.set.join_next_with_id().await {
            Some(Ok((id, ()))) => TaskFailure::EndedEarly {
                task: self.name(id),
            },
            Some(Err(err)) => {
                let task = self.name(err.id());
                TaskFailure::from_join_error(task, err)
            }
            None => std::future::pending().await,
        }
    }

    /// Wait for every task to end (once the cancel token fired); the first one that
    /// panicked on its way out, logged.
    pub async fn join_all(&mut self) -> Option<TaskFailure> {
        let mut first = None;
        while let Some(joined) = self.set.join_next_with_id().await {
            if let Err(err) = joined {
                let failure = TaskFailure::from_join_error(self.name(err.id()), err);
                tracing::error!(task = failure.task(), error = %failure, "a manager task failed while stopping");
                first.get_or_insert(failure);
            }
        }
        first
    }
}

/// The tracker for every task that is not an [`EssentialTasks`] one: cheap to clone,
/// waited for at shutdown, and a panic in any of its tasks is reported to [`watch`].
#[derive(Clone)]
pub struct Tasks {
    tracker: TaskTracker,
    failures: mpsc::UnboundedSender<TaskFailure>,
}

/// Where [`Tasks`] report their panics.
pub type Failures = mpsc::UnboundedReceiver<TaskFailure>;

impl Tasks {
    pub fn new() -> (Tasks, Failures) {
        let (failures, rx) = mpsc::unbounded_channel();
        let tasks = Tasks {
            tracker: TaskTracker::new(),
            failures,
        };
        (tasks, rx)
    }

    /// Spawn `task`, named after the place it is spawned from.
    #[track_caller]
    pub fn spawn<F>(&self, task: F) -> JoinHandle<()>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawn_named(format!("spawned at {}", Location::caller()), task)
    }

    /// Spawn `task` as `name` (how its panic is reported).
    pub fn spawn_named<F>(&self, name: impl Into<String>, task: F) -> JoinHandle<()>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let name = name.into();
        let failures = self.failures.clone();
        self.tracker.spawn(async move {
            // Unwind safety: a panic here takes the whole manager down, so no state
            // the task touched is used again in a broken form.
            if let Err(panic) = AssertUnwindSafe(task).catch_unwind().await {
                let _ = failures.send(TaskFailure::Panicked {
                    task: name,
                    message: engine_protocol::panic_message(panic.as_ref()),
                });
            }
        })
    }

    /// No task is spawned any more (see [`TaskTracker::close`]).
    pub fn close(&self) -> bool {
        self.tracker.close()
    }

    /// Until every task ended (once closed).
    pub async fn wait(&self) {
        self.tracker.wait().await
    }
}

/// Every task of a running manager: [`EssentialTasks`], [`Tasks`], and the tasks
/// stopped only after all others (the publisher, which sends what the others
/// published on their way out).
pub struct ManagerTasks {
    pub tracker: Tasks,
    failures: Failures,
    essentials: EssentialTasks,
    last: EssentialTasks,
    last_cancel: CancellationToken,
}

impl Default for ManagerTasks {
    fn default() -> Self {
        let (tracker, failures) = Tasks::new();
        ManagerTasks {
            tracker,
            failures,
            essentials: EssentialTasks::default(),
            last: EssentialTasks::default(),
            last_cancel: CancellationToken::new(),
        }
    }
}

impl ManagerTasks {
    /// An essential task, stopped by the manager's cancel token.
    pub fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.essentials.spawn(name, task);
    }

    /// An essential task stopped by [`ManagerTasks::last_cancel`], once every other
    /// task has ended.
    pub fn spawn_last<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.last.spawn(name, task);
    }

    /// The token that stops the tasks of [`ManagerTasks::spawn_last`].
    pub fn last_cancel(&self) -> CancellationToken {
        self.last_cancel.clone()
    }

    /// Until `shutdown` fires (`None`) or a task fails (`Some`, logged).
    pub async fn watch(&mut self, shutdown: &CancellationToken) -> Option<TaskFailure> {
        self.tracker.close();
        watch(shutdown, &mut self.essentials, &mut self.failures).await
    }

    /// Once the manager's cancel token fired: wait for every task, then stop and
    /// wait for the last ones. The first task that failed on its way out, if any.
    pub async fn stop(mut self) -> Option<TaskFailure> {
        let (essential, ()) = tokio::join!(self.essentials.join_all(), self.tracker.wait());
        self.last_cancel.cancel();
        let last = self.last.join_all().await;
        essential.or(last).or(self.failures.try_recv().ok())
    }
}

/// Sleep until `at`; never wake without one (a `select!` branch that is off).
pub async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Run blocking `work` (file or `/proc` I/O) on the blocking pool and wait for it;
/// a panic in it is resumed in the caller's task, so that it is reported as that
/// task's.
pub async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(err) => std::panic::resume_unwind(err.into_panic()),
    }
}

/// Until `shutdown` fires (`None`) or a task fails (`Some`, logged).
pub async fn watch(
    shutdown: &CancellationToken,
    essentials: &mut EssentialTasks,
    failures: &mut Failures,
) -> Option<TaskFailure> {
    let failure = tokio::select! {
        _ = shutdown.cancelled() => return None,
        failure = essentials.next_failure() => failure,
        Some(failure) = failures.recv() => failure,
    };
    tracing::error!(
        task = failure.task(),
        error = %failure,
        "a manager task failed; stopping the manager with a non-zero exit (systemd restarts it, and it adopts the running executors)"
    );
    Some(failure)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A bounded wait for `watch`, which must answer at once in these tests.
    async fn watched(
        shutdown: &CancellationToken,
        essentials: &mut EssentialTasks,
        failures: &mut Failures,
    ) -> Option<TaskFailure> {
        tokio::time::timeout(
            Duration::from_secs(10),
            watch(shutdown, essentials, failures),
        )
        .await
        .expect("watch answers")
    }

    fn idle(cancel: &CancellationToken) -> impl Future<Output = ()> + Send + 'static {
        let cancel = cancel.clone();
        async move { cancel.cancelled().await }
    }

    #[tokio::test]
    async fn a_panicking_essential_task_is_named() {
        let (cancel, shutdown) = (CancellationToken::new(), CancellationToken::new());
        let (_tasks, mut failures) = Tasks::new();
        let mut essentials = EssentialTasks::default();
        essentials.spawn("lease", idle(&cancel));
        essentials.spawn("health", async { panic!("sampler broke") });
        let failure = watched(&shutdown, &mut essentials, &mut failures)
            .await
            .expect("a failure");
        assert_eq!(failure.task(), "health");
        assert_eq!(
            failure.to_string(),
            "the health task panicked: sampler broke"
        );
        // The others still stop gracefully.
        cancel.cancel();
        assert!(essentials.join_all().await.is_none());
    }

    #[tokio::test]
    async fn an_essential_task_that_ends_early_is_a_failure() {
        let (cancel, shutdown) = (CancellationToken::new(), CancellationToken::new());
        let (_tasks, mut failures) = Tasks::new();
        let mut essentials = EssentialTasks::default();
        essentials.spawn("control socket", idle(&cancel));
        essentials.spawn("intake", async {});
        let failure = watched(&shutdown, &mut essentials, &mut failures).await;
        assert!(
            matches!(&failure, Some(TaskFailure::EndedEarly { task }) if task == "intake"),
            "{failure:?}"
        );
        cancel.cancel();
        assert!(essentials.join_all().await.is_none());
    }

    #[tokio::test]
    async fn a_panicking_tracked_task_is_named_after_its_spawn_site() {
        let shutdown = CancellationToken::new();
        let (tasks, mut failures) = Tasks::new();
        let mut essentials = EssentialTasks::default();
        // Tracked tasks may end whenever their work is done.
        tasks.spawn(async { 42 });
        tasks.spawn_named("supervisor of alpha", async {
            panic!("{} went wrong", "state");
        });
        let failure = watched(&shutdown, &mut essentials, &mut failures)
            .await
            .expect("a failure");
        assert_eq!(
            failure.to_string(),
            "the supervisor of alpha task panicked: state went wrong"
        );
        tasks.spawn(async { panic!("again") });
        let failure = watched(&shutdown, &mut essentials, &mut failures)
            .await
            .expect("a failure");
        assert!(failure.task().starts_with("spawned at "), "{failure}");
        assert!(failure.task().contains("tasks.rs"), "{failure}");
        tasks.close();
        tasks.wait().await;
    }

    #[tokio::test]
    async fn shutdown_is_not_a_failure() {
        let (cancel, shutdown) = (CancellationToken::new(), CancellationToken::new());
        let (_tasks, mut failures) = Tasks::new();
        let mut essentials = EssentialTasks::default();
        essentials.spawn("lease", idle(&cancel));
        shutdown.cancel();
        assert!(watched(&shutdown, &mut essentials, &mut failures)
            .await
            .is_none());
        cancel.cancel();
        assert!(essentials.join_all().await.is_none());
    }
}

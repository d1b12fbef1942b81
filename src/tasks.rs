//! Tracked tasks: every long-lived task of the node belongs to a
//! [`TaskTracker`], so shutdown can wait for it, and a task that panics is
//! logged with its name and counted in `timed_task_panics_total{task}`
//! instead of vanishing.

use std::future::Future;

use futures::FutureExt;
use tokio_util::task::TaskTracker;

/// Spawns `task` on `tracker` under `name`. A panic inside it is caught at
/// the task's edge, logged and counted; the panic does not reach the
/// runtime, and the rest of the node keeps running.
pub fn spawn<F>(tracker: &TaskTracker, name: &'static str, task: F)
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tracker.spawn(async move {
        if let Err(panic) = std::panic::AssertUnwindSafe(task).catch_unwind().await {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            metrics::counter!("timed_task_panics_total", "task" => name).increment(1);
            tracing::error!(task = name, panic = %message, "task panicked");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    #[test]
    fn a_panicking_task_is_counted_and_the_tracker_still_drains() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let tracker = TaskTracker::new();
                spawn(&tracker, "doomed", async { panic!("on purpose") });
                spawn(&tracker, "fine", async {});
                tracker.close();
                tracker.wait().await;
            });
        });
        let panics: Vec<_> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(key, ..)| key.key().name() == "timed_task_panics_total")
            .map(|(key, _, _, value)| {
                (
                    key.key()
                        .labels()
                        .map(|l| l.value().to_owned())
                        .collect::<Vec<_>>(),
                    value,
                )
            })
            .collect();
        assert_eq!(
            panics,
            vec![(vec!["doomed".to_owned()], DebugValue::Counter(1))]
        );
    }
}

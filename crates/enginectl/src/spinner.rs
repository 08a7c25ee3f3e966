//! A spinner on stderr while `enginectl` waits (only when stderr is a terminal, so
//! scripts and logs get clean output).

use std::io::{IsTerminal, Write};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

/// A running spinner; [`Spinner::finish`] erases it.
pub struct Spinner {
    message: Option<watch::Sender<String>>,
    task: Option<JoinHandle<()>>,
}

impl Spinner {
    /// Start spinning with `message` (a no-op when stderr is not a terminal).
    pub fn start(message: impl Into<String>) -> Spinner {
        if !std::io::stderr().is_terminal() {
            return Spinner {
                message: None,
                task: None,
            };
        }
        let (tx, mut rx) = watch::channel(message.into());
        let task = tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            for frame in FRAMES.iter().cycle() {
                tokio::select! {
                    _ = tick.tick() => {}
                    changed = rx.changed() => if changed.is_err() { break },
                }
                let text = rx.borrow().clone();
                let secs = started.elapsed().as_secs();
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r{frame} {text} ({secs}s)\x1b[K");
                let _ = err.flush();
            }
        });
        Spinner {
            message: Some(tx),
            task: Some(task),
        }
    }

    /// Change the text next to the spinner.
    pub fn set_message(&self, message: impl Into<String>) {
        if let Some(tx) = &self.message {
            let _ = tx.send(message.into());
        }
    }

    /// Stop and erase the spinner.
    pub async fn finish(mut self) {
        self.message = None; // closes the channel: the task ends
        if let Some(task) = self.task.take() {
            let _ = task.await;
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = write!(std::io::stderr(), "\r\x1b[K");
        }
    }
}

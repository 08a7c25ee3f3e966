//! The manager's end of the control link: a Unix socket every executor connects to.
//!
//! The server reads the first frame (`hello`), checks with SO_PEERCRED that the peer
//! really is the pid it claims, and hands the connection to the strategy's supervisor,
//! which checks that pid against the executor it supervises.

use engine_protocol::control::{ExecutorMessage, ManagerMessage, MAX_FRAME_BYTES};
use engine_protocol::Status;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::codec::{FramedRead, LinesCodec};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Why a frame could not be sent: the link is gone either way.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("control link write timed out")]
    WriteTimedOut,
    #[error("control link write failed")]
    Write(#[source] std::io::Error),
}

/// The read buffer a link starts with (it grows for a larger frame, up to
/// `MAX_FRAME_BYTES`): frames are a few hundred bytes, and the codec's default of
/// 8 KiB per link would be most of a supervised strategy's memory in the manager.
const READ_BUFFER: usize = 1024;

/// A connected executor.
pub struct ControlLink {
    pub peer_pid: u32,
    /// The status the executor reported in its hello.
    pub hello_status: Status,
    reader: FramedRead<OwnedReadHalf, LinesCodec>,
    /// Frames are written whole (`write_all`), without a codec's 8 KiB write buffer
    /// per link: the manager keeps one link per strategy.
    writer: OwnedWriteHalf,
}

impl ControlLink {
    /// Send one frame; an error means the link is gone.
    pub async fn send(&mut self, msg: &ManagerMessage) -> Result<(), LinkError> {
        let mut line = serde_json::to_vec(msg).expect("control frames serialize");
        line.push(b'\n');
        tokio::time::timeout(Duration::from_secs(2), self.writer.write_all(&line))
            .await
            .map_err(|_| LinkError::WriteTimedOut)?
            .map_err(LinkError::Write)
    }

    /// The next frame; `None` when the executor closed the link. Frames that do not
    /// parse are logged and skipped (cancel-safe).
    pub async fn next(&mut self) -> Option<ExecutorMessage> {
        loop {
            match self.reader.next().await? {
                Ok(line) => match serde_json::from_str::<ExecutorMessage>(&line) {
                    Ok(msg) => return Some(msg),
                    Err(err) => {
                        tracing::warn!(peer_pid = self.peer_pid, error = %err, "dropped a malformed control frame")
                    }
                },
                Err(err) => {
                    tracing::warn!(peer_pid = self.peer_pid, error = %err, "control link broken");
                    return None;
                }
            }
        }
    }
}

/// Where connections for each strategy go.
/// Boxed: a channel allocates a block of 32 slots when it is made, and a boxed link
/// keeps that block small (one route per strategy).
pub type LinkRoutes = Arc<Mutex<HashMap<Uuid, mpsc::Sender<Box<ControlLink>>>>>;

/// Accepts executor connections on `path` until `cancel`.
pub struct ControlServer {
    listener: UnixListener,
    routes: LinkRoutes,
}

impl ControlServer {
    pub fn bind(path: &Path, routes: LinkRoutes) -> std::io::Result<ControlServer> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // A socket file left by a previous manager: we hold the database lease (a
        // cluster node: and found nobody answering on it), so nobody listens on it.
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        Ok(ControlServer { listener, routes })
    }

    /// Accept until `cancel`. Each connection's handshake is a task of its own,
    /// owned here: a handshake that panics takes this task down with the panic (and
    /// so the manager, see `crate::tasks`); those still running at shutdown are
    /// dropped (their executors reconnect to the next manager).
    pub async fn run(self, cancel: CancellationToken) {
        let mut handshakes = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                _ = cancel.cancelled() => break,
                Some(done) = handshakes.join_next() => {
                    if let Err(err) = done {
                        if err.is_panic() {
                            std::panic::resume_unwind(err.into_panic());
                        }
                    }
                    continue;
                }
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, _)) => {
                    handshakes.spawn(handshake(stream, self.routes.clone()));
                }
                Err(err) => {
                    tracing::warn!(error = %err, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

async fn handshake(stream: UnixStream, routes: LinkRoutes) {
    let peer_pid = match stream.peer_cred().ok().and_then(|c| c.pid()) {
        Some(pid) if pid > 0 => pid as u32,
        _ => {
            tracing::warn!("control connection without peer credentials dropped");
            return;
        }
    };
    let (read, write) = stream.into_split();
    let codec = LinesCodec::new_with_max_length(MAX_FRAME_BYTES);
    let mut reader = FramedRead::with_capacity(read, codec, READ_BUFFER);
    let writer = write;
    let first = tokio::time::timeout(Duration::from_secs(5), reader.next()).await;
    let hello = match first {
        Ok(Some(Ok(line))) => serde_json::from_str::<ExecutorMessage>(&line),
        _ => {
            tracing::warn!(peer_pid, "control connection closed before its hello");
            return;
        }
    };
    let (strategy_id, status) = match hello {
        Ok(ExecutorMessage::Hello {
            strategy_id,
            pid,
            status,
        }) if pid == peer_pid => (strategy_id, status),
        Ok(ExecutorMessage::Hello { pid, .. }) => {
            tracing::warn!(
                peer_pid,
                claimed_pid = pid,
                "control hello claims another pid; dropped"
            );
            return;
        }
        _ => {
            tracing::warn!(
                peer_pid,
                "control connection did not start with a hello; dropped"
            );
            return;
        }
    };
    let route = routes
        .lock()
        .expect("routes lock")
        .get(&strategy_id)
        .cloned();
    let Some(route) = route else {
        tracing::warn!(peer_pid, %strategy_id, "control hello for a strategy this manager does not supervise; dropped");
        return;
    };
    let link = ControlLink {
        peer_pid,
        hello_status: status,
        reader,
        writer,
    };
    let _ = route.send(Box::new(link)).await;
}

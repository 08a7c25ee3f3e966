//! The executor's end of the private control link: a Unix socket to the manager,
//! reconnected forever, carrying `hello`, state changes, acks and `halted` out and
//! commands in: the one way an executor is commanded (the Redis command channels are
//! announcements it does not subscribe to). Frames are JSON objects, one per line, framed by `LinesCodec` as on
//! the manager's side (`engine-manager/src/link.rs`).

use super::commands::InboundCommand;
use super::lease::Lease;
use engine_protocol::backoff::Backoff;
use engine_protocol::control::{ExecutorMessage, ManagerMessage, OrderReport, MAX_FRAME_BYTES};
use engine_protocol::Status;
use futures_util::{SinkExt, StreamExt};
use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::bytes::BytesMut;
use tokio_util::codec::{Decoder, FramedRead, FramedWrite, LinesCodec, LinesCodecError};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Capacity of the outgoing frame channel.
const LINK_CHANNEL_CAPACITY: usize = 256;
/// How many acks the link keeps while disconnected, to send after reconnecting.
const LINK_PENDING_ACKS: usize = 256;
/// How many paper orders the link keeps while disconnected (the oldest go first).
const LINK_PENDING_ORDERS: usize = 50_000;
/// First and largest delay between connection attempts.
const LINK_RETRY_MIN: Duration = Duration::from_millis(50);
const LINK_RETRY_MAX: Duration = Duration::from_secs(1);
/// A write that takes longer than this means the manager is stuck.
const LINK_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// The loop's side of the control link.
pub(super) struct LinkHandle {
    /// The current status, for the hello of the next connection.
    pub(super) status: watch::Sender<Status>,
    pub(super) frames: mpsc::Sender<LinkOutbound>,
}

/// What the loop hands to the control-link task.
#[derive(Debug)]
pub(super) enum LinkOutbound {
    Frame(ExecutorMessage),
    /// Answered once every frame before it was written (or at once when disconnected).
    Flush(oneshot::Sender<()>),
}

/// The control-link task: connects to the manager's socket, says hello with the
/// current status, then writes state changes and acks and reads commands. Reconnects
/// forever (50 ms first, doubling to 1 s).
pub(super) struct ControlLink {
    path: PathBuf,
    strategy_id: Uuid,
    status: watch::Receiver<Status>,
    outbound: mpsc::Receiver<LinkOutbound>,
    commands: mpsc::Sender<InboundCommand>,
    /// Interval executions asked for, by id, for the loop.
    executions: mpsc::Sender<Uuid>,
    /// In a cluster: the lease the manager's renewals extend.
    lease: Option<Arc<Lease>>,
    /// Acks, `halted` and the latest broker state waiting for a connection (state
    /// frames are not kept: the hello carries the current status).
    pending: VecDeque<ExecutorMessage>,
    /// Orders frames waiting for a connection, oldest first (at most
    /// [`LINK_PENDING_ORDERS`] orders in all; sent after `pending`).
    pending_orders: HeldOrders,
    /// Flushes waiting for `pending` to go out on the next connection.
    flush_waiters: Vec<oneshot::Sender<()>>,
    cancel: CancellationToken,
}

/// Why a connection ended.
enum Served {
    Cancelled,
    Disconnected(String),
}

type FrameWriter = FramedWrite<OwnedWriteHalf, LinesCodec>;

impl ControlLink {
    /// The task for the socket at `path`, and the loop's handle on it.
    pub(super) fn new(
        path: PathBuf,
        strategy_id: Uuid,
        commands: mpsc::Sender<InboundCommand>,
        executions: mpsc::Sender<Uuid>,
        lease: Option<Arc<Lease>>,
        cancel: CancellationToken,
    ) -> (ControlLink, LinkHandle) {
        let (status_tx, status_rx) = watch::channel(Status::Starting);
        let (frame_tx, frame_rx) = mpsc::channel(LINK_CHANNEL_CAPACITY);
        let task = ControlLink {
            path,
            strategy_id,
            status: status_rx,
            outbound: frame_rx,
            commands,
            executions,
            lease,
            pending: VecDeque::new(),
            pending_orders: HeldOrders::default(),
            flush_waiters: Vec::new(),
            cancel,
        };
        let handle = LinkHandle {
            status: status_tx,
            frames: frame_tx,
        };
        (task, handle)
    }

    pub(super) async fn run(mut self) {
        let mut backoff = Backoff::new(LINK_RETRY_MIN, LINK_RETRY_MAX);
        let mut failure_logged = false;
        loop {
            let connected = tokio::select! {
                _ = self.cancel.cancelled() => return,
                result = UnixStream::connect(&self.path) => result,
            };
            match connected {
                Ok(stream) => {
                    tracing::info!(socket = %self.path.display(), "control link connected");
                    failure_logged = false;
                    backoff.reset();
                    match self.serve(stream).await {
                        Served::Cancelled => return,
                        Served::Disconnected(why) => {
                            tracing::info!("control link lost ({why}); reconnecting");
                        }
                    }
                }
                Err(err) => {
                    self.release_flush_waiters();
                    if !failure_logged {
                        tracing::info!(
                            socket = %self.path.display(),
                            "control link not connected ({err}); retrying every {}ms up to {}s",
                            LINK_RETRY_MIN.as_millis(),
                            LINK_RETRY_MAX.as_secs()
                        );
                        failure_logged = true;
                    }
                }
            }
            if !self.wait_disconnected(backoff.next_delay()).await {
                return;
            }
        }
    }

    /// Wait `delay` while keeping up with the loop's frames; false when cancelled.
    /// A flush with frames pending (the process is about to exit) cuts the wait short.
    async fn wait_disconnected(&mut self, delay: Duration) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return false,
                _ = &mut sleep => return true,
                outbound = self.outbound.recv() => match outbound {
                    Some(outbound) => {
                        self.hold(outbound);
                        if !self.flush_waiters.is_empty() {
                            return true;
                        }
                    }
                    None => return false,
                },
            }
        }
    }

    fn release_flush_waiters(&mut self) {
        for done in self.flush_waiters.drain(..) {
            let _ = done.send(());
        }
    }

    /// Keep what must survive a disconnection. A flush is answered at once when nothing
    /// is pending, else after the next connection attempt.
    fn hold(&mut self, outbound: LinkOutbound) {
        match outbound {
            LinkOutbound::Frame(ExecutorMessage::State { .. } | ExecutorMessage::Hello { .. }) => {}
            LinkOutbound::Frame(ExecutorMessage::Orders { orders }) => {
                self.pending_orders.push_back(orders)
            }
            LinkOutbound::Frame(message) => {
                // Only the latest broker state matters (an older one's `discarded`
                // note travels on with it).
                let message = match message {
                    ExecutorMessage::BrokerState { state, discarded } => {
                        let older = self.take_pending_broker_state();
                        ExecutorMessage::BrokerState {
                            state,
                            discarded: discarded.or(older),
                        }
                    }
                    other => other,
                };
                if self.pending.len() >= LINK_PENDING_ACKS {
                    self.pending.pop_front();
                }
                self.pending.push_back(message);
            }
            LinkOutbound::Flush(done) => {
                if self.pending.is_empty() && self.pending_orders.is_empty() {
                    let _ = done.send(());
                } else {
                    self.flush_waiters.push(done);
                }
            }
        }
    }

    /// Remove a held broker state (superseded by a newer one); its `discarded` note.
    fn take_pending_broker_state(&mut self) -> Option<String> {
        let at = self
            .pending
            .iter()
            .position(|m| matches!(m, ExecutorMessage::BrokerState { .. }))?;
        match self.pending.remove(at) {
            Some(ExecutorMessage::BrokerState { discarded, .. }) => discarded,
            _ => None,
        }
    }

    async fn serve(&mut self, stream: UnixStream) -> Served {
        let (read_half, write_half) = stream.into_split();
        let mut reader = control_frames(read_half);
        let mut writer = FramedWrite::new(write_half, LinesCodec::new());
        if let Err(served) = self.greet(&mut writer).await {
            return served;
        }
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return Served::Cancelled,
                frame = reader.next() => match frame {
                    Some(Ok(frame)) => {
                        let sent = match frame.into_message() {
                            None => continue,
                            Some(ManagerMessage::Command(command)) => {
                                let inbound = InboundCommand { command };
                                self.commands.send(inbound).await.is_ok()
                            }
                            Some(ManagerMessage::Execute { execution_id }) => {
                                self.executions.send(execution_id).await.is_ok()
                            }
                            Some(ManagerMessage::Lease(grant)) => {
                                if let Some(lease) = &self.lease {
                                    lease.renew(grant);
                                }
                                true
                            }
                        };
                        if !sent {
                            return Served::Cancelled;
                        }
                    }
                    None => return Served::Disconnected("closed by the manager".to_string()),
                    Some(Err(err)) => return Served::Disconnected(format!("read failed: {err}")),
                },
                outbound = self.outbound.recv() => match outbound {
                    None => return Served::Cancelled,
                    Some(LinkOutbound::Flush(done)) => {
                        let _ = done.send(());
                    }
                    Some(LinkOutbound::Frame(message)) => {
                        if let Err(err) = write_frame(&mut writer, &message).await {
                            match message {
                                ExecutorMessage::State { .. } => {}
                                ExecutorMessage::Orders { orders } => {
                                    self.pending_orders.push_front(orders)
                                }
                                message => self.pending.push_back(message),
                            }
                            return Served::Disconnected(format!("write failed: {err}"));
                        }
                    }
                },
            }
        }
    }

    /// A new connection: `hello` and the current state, then what is pending.
    async fn greet(&mut self, writer: &mut FrameWriter) -> Result<(), Served> {
        // Everything queued so far is older than the status read below.
        while let Ok(outbound) = self.outbound.try_recv() {
            self.hold(outbound);
        }
        let status = *self.status.borrow();
        let greeting = [
            ExecutorMessage::Hello {
                strategy_id: self.strategy_id,
                pid: std::process::id(),
                status,
            },
            ExecutorMessage::State {
                status,
                reason: None,
                command_id: None,
            },
        ];
        for message in &greeting {
            if let Err(err) = write_frame(writer, message).await {
                return Err(Served::Disconnected(format!("writing hello failed: {err}")));
            }
        }
        while let Some(message) = self.pending.pop_front() {
            if let Err(err) = write_frame(writer, &message).await {
                self.pending.push_front(message);
                return Err(Served::Disconnected(format!("write failed: {err}")));
            }
        }
        while let Some(orders) = self.pending_orders.pop_front() {
            let message = ExecutorMessage::Orders { orders };
            if let Err(err) = write_frame(writer, &message).await {
                if let ExecutorMessage::Orders { orders } = message {
                    self.pending_orders.push_front(orders);
                }
                return Err(Served::Disconnected(format!("write failed: {err}")));
            }
        }
        self.release_flush_waiters();
        Ok(())
    }
}

/// Orders frames kept through a lost link: at most [`LINK_PENDING_ORDERS`] orders,
/// the oldest frames dropped first (and counted in the log).
#[derive(Debug, Default)]
struct HeldOrders {
    frames: VecDeque<Vec<OrderReport>>,
    orders: usize,
    dropped: u64,
}

impl HeldOrders {
    fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    fn push_back(&mut self, orders: Vec<OrderReport>) {
        self.orders += orders.len();
        self.frames.push_back(orders);
        self.trim();
    }

    /// A frame that could not be written goes back to the front.
    fn push_front(&mut self, orders: Vec<OrderReport>) {
        self.orders += orders.len();
        self.frames.push_front(orders);
        self.trim();
    }

    fn pop_front(&mut self) -> Option<Vec<OrderReport>> {
        let orders = self.frames.pop_front()?;
        self.orders -= orders.len();
        Some(orders)
    }

    fn trim(&mut self) {
        while self.orders > LINK_PENDING_ORDERS && self.frames.len() > 1 {
            let dropped = self.pop_front().map_or(0, |o| o.len() as u64);
            self.dropped += dropped;
            tracing::warn!(
                dropped = self.dropped,
                kept = self.orders,
                "the control link has been down too long; the oldest unsent orders were dropped"
            );
        }
    }
}

async fn write_frame(writer: &mut FrameWriter, message: &ExecutorMessage) -> io::Result<()> {
    let line = serde_json::to_string(message).expect("control frames always serialize");
    match tokio::time::timeout(LINK_WRITE_TIMEOUT, writer.send(line)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(LinesCodecError::Io(err))) => Err(err),
        Ok(Err(err)) => Err(io::Error::other(err)),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the manager did not read for 2s",
        )),
    }
}

/// The frames coming from the manager.
fn control_frames(read_half: OwnedReadHalf) -> FramedRead<OwnedReadHalf, ControlFrames> {
    FramedRead::new(
        read_half,
        ControlFrames(LinesCodec::new_with_max_length(MAX_FRAME_BYTES)),
    )
}

/// One line from the manager.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    Line(String),
    /// A line longer than the limit, skipped.
    TooLong,
    /// A line that is not UTF-8, skipped.
    NotUtf8,
}

impl Frame {
    /// The message a frame carries; anything else is logged and skipped (an empty
    /// line silently).
    fn into_message(self) -> Option<ManagerMessage> {
        let line = match self {
            Frame::Line(line) => line,
            Frame::TooLong => {
                tracing::warn!("control link frame longer than {MAX_FRAME_BYTES} bytes dropped");
                return None;
            }
            Frame::NotUtf8 => {
                tracing::warn!("invalid control link frame dropped: not UTF-8");
                return None;
            }
        };
        if line.trim().is_empty() {
            return None;
        }
        match serde_json::from_str::<ManagerMessage>(&line) {
            Ok(message) => Some(message),
            Err(err) => {
                tracing::warn!("invalid control link frame dropped: {err}");
                None
            }
        }
    }
}

/// `LinesCodec`, with a line that is too long or not UTF-8 handed on as a frame to
/// skip (a codec error would end the stream), and a partial last line dropped.
struct ControlFrames(LinesCodec);

impl Decoder for ControlFrames {
    type Item = Frame;
    type Error = io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> io::Result<Option<Frame>> {
        match self.0.decode(buf) {
            Ok(line) => Ok(line.map(Frame::Line)),
            Err(LinesCodecError::MaxLineLengthExceeded) => Ok(Some(Frame::TooLong)),
            Err(LinesCodecError::Io(err)) if err.kind() == io::ErrorKind::InvalidData => {
                Ok(Some(Frame::NotUtf8))
            }
            Err(LinesCodecError::Io(err)) => Err(err),
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> io::Result<Option<Frame>> {
        let frame = self.decode(buf)?;
        if frame.is_none() {
            buf.clear();
        }
        Ok(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine_protocol::ExecutorCommand;
    use tokio::io::AsyncWriteExt;

    const INPUT: &[u8] = b"{\"a\":1}\n0123456789abc\n\n\xffx\nxy\npartial";

    fn expected() -> Vec<Frame> {
        vec![
            Frame::Line("{\"a\":1}".into()),
            Frame::TooLong,
            Frame::Line(String::new()),
            Frame::NotUtf8,
            Frame::Line("xy".into()),
        ]
    }

    async fn frames<R: tokio::io::AsyncRead + Unpin>(input: R) -> Vec<Frame> {
        let reader = FramedRead::new(input, ControlFrames(LinesCodec::new_with_max_length(8)));
        reader.map(Result::unwrap).collect().await
    }

    #[tokio::test]
    async fn frames_split_lines_and_skip_long_or_broken_ones() {
        assert_eq!(frames(INPUT).await, expected());
    }

    #[tokio::test]
    async fn frames_survive_any_chunking() {
        // At most 3 bytes per read: lines and the long one arrive in pieces.
        let (mut tx, rx) = tokio::io::duplex(3);
        let writer = tokio::spawn(async move {
            tx.write_all(INPUT).await.unwrap();
        });
        assert_eq!(frames(rx).await, expected());
        writer.await.unwrap();
    }

    #[test]
    fn only_commands_and_executions_are_taken() {
        assert_eq!(Frame::Line("  ".into()).into_message(), None);
        assert_eq!(
            Frame::Line("{\"type\":\"nope\"}".into()).into_message(),
            None
        );
        assert_eq!(Frame::TooLong.into_message(), None);
        let execution_id = Uuid::new_v4();
        let line = format!("{{\"type\":\"execute\",\"execution_id\":\"{execution_id}\"}}");
        assert_eq!(
            Frame::Line(line).into_message(),
            Some(ManagerMessage::Execute { execution_id })
        );
        let command = ExecutorCommand {
            strategy_id: None,
            name: "test".into(),
            timestamp: chrono::Utc::now(),
            command: engine_protocol::ExecutorCommandKind::Pause,
            command_id: Uuid::new_v4(),
            config: None,
            mode: None,
            reason: None,
            source: None,
        };
        let line = serde_json::to_string(&ManagerMessage::Command(command.clone())).unwrap();
        assert_eq!(
            Frame::Line(line).into_message(),
            Some(ManagerMessage::Command(command))
        );
    }

    fn orders(n: usize) -> Vec<OrderReport> {
        (0..n)
            .map(|i| OrderReport {
                client_order_id: format!("e0-00000000-s-{i}"),
                lease_epoch: 0,
                token: "BTC".into(),
                side: engine_protocol::control::OrderSide::Buy,
                quantity: 1.0,
                price: 1.0,
                fee: 0.0,
                at: chrono::Utc::now(),
            })
            .collect()
    }

    #[test]
    fn held_orders_are_bounded_and_keep_the_newest() {
        let mut held = HeldOrders::default();
        assert!(held.is_empty());
        let frame = LINK_PENDING_ORDERS / 4;
        for _ in 0..5 {
            held.push_back(orders(frame));
        }
        assert_eq!(held.orders, 4 * frame, "the oldest frame went");
        assert_eq!(held.dropped, frame as u64);
        let first = held.pop_front().unwrap();
        held.push_front(first);
        assert_eq!(held.frames.len(), 4);
        while held.pop_front().is_some() {}
        assert_eq!(held.orders, 0);
        assert!(held.is_empty());
    }
}

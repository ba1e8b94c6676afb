//! The network thread: one OS thread running a single-threaded tokio
//! runtime that owns every peer socket.
//!
//! Each node dials every other member and sends only on the connection it
//! dialed; it receives only on connections other members dialed to it. So a
//! pair of nodes shares two connections, one per direction, and neither
//! side ever has to decide which of two simultaneous dials wins.
//!
//! - Outbound, per peer: a bounded queue filled by [`TransportHandle::send`]
//!   from any thread, and a task that connects (capped exponential backoff
//!   with jitter), sends the handshake, then drains the queue, coalescing
//!   every queued message into one buffer and one `write` call.
//! - Inbound: an accept loop, and per connection a task that checks the
//!   handshake, decodes frames and forwards messages to the `inbound`
//!   channel. When that channel is full the task stops reading, so TCP
//!   pushes back on the sender instead of memory growing here.
//!
//! A member has at most one inbound connection: when it connects again (it
//! restarted, or its end of the old connection died), the old one is closed.
//! Inbound connections are capped at `2 * members + 16` (members use one
//! each; the rest is room for handshakes in progress), and a handshake must
//! arrive within two seconds.
//!
//! Anything wrong on an inbound connection (bad handshake, oversized frame,
//! bad checksum, undecodable message, a message not from the handshake's
//! node or not for this node) closes that connection with a warning naming
//! the peer address; other connections are unaffected.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::TrySendError;
use spaxos_core::{Message, NodeId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tracing::{debug, info, warn};

use super::frame::{encode_frame, encode_message_frame, FrameDecoder, FrameError};
use super::handshake::{Handshake, HandshakeError, HANDSHAKE_BYTES_MAX};
use super::wire::{decode_message_bytes, WireError};
use crate::config::{Config, ConfigErrors};

/// A dialed peer must complete TCP connect within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// An accepted connection must deliver its handshake within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// A write to a peer that takes longer means the peer is stuck: reconnect.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Queued messages are coalesced into one write up to about this size.
const WRITE_BATCH_BYTES: usize = 1 << 20;
/// How long a reader waits before retrying a full `inbound` channel.
const INBOUND_FULL_RETRY: Duration = Duration::from_millis(1);

/// Why the transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("invalid config:\n{0}")]
    Config(#[from] ConfigErrors),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the network thread: {0}")]
    Thread(#[source] io::Error),
}

/// Counters of one transport since it started (see [`TransportHandle::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Message frames written to peers.
    pub frames_sent: u64,
    /// Bytes written to peers (frame headers included, handshakes excluded).
    pub bytes_sent: u64,
    /// Write calls that carried those frames (coalescing makes this smaller).
    pub write_batches: u64,
    /// Message frames received and forwarded to `inbound`.
    pub frames_received: u64,
    /// Bytes of those frames, headers included.
    pub bytes_received: u64,
    /// Messages not sent: peer disconnected, its queue full, unknown
    /// destination, or too large for a frame.
    pub messages_dropped: u64,
    /// Outbound connections established (handshake sent).
    pub connections_established: u64,
    /// Inbound connections that passed the handshake.
    pub connections_accepted: u64,
    /// Inbound connections refused: bad handshake, handshake timeout, or too
    /// many connections.
    pub connections_rejected: u64,
    /// Inbound connections closed after the handshake for a bad frame or
    /// message.
    pub protocol_errors: u64,
}

#[derive(Default)]
struct Counters {
    frames_sent: AtomicU64,
    bytes_sent: AtomicU64,
    write_batches: AtomicU64,
    frames_received: AtomicU64,
    bytes_received: AtomicU64,
    messages_dropped: AtomicU64,
    connections_established: AtomicU64,
    connections_accepted: AtomicU64,
    connections_rejected: AtomicU64,
    protocol_errors: AtomicU64,
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> TransportStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TransportStats {
            frames_sent: get(&self.frames_sent),
            bytes_sent: get(&self.bytes_sent),
            write_batches: get(&self.write_batches),
            frames_received: get(&self.frames_received),
            bytes_received: get(&self.bytes_received),
            messages_dropped: get(&self.messages_dropped),
            connections_established: get(&self.connections_established),
            connections_accepted: get(&self.connections_accepted),
            connections_rejected: get(&self.connections_rejected),
            protocol_errors: get(&self.protocol_errors),
        }
    }
}

/// The sending side of one peer, shared by the handle and the peer's task.
struct PeerLink {
    queue: mpsc::Sender<Message>,
    connected: AtomicBool,
}

/// What every task of the network thread needs to know.
struct Shared {
    self_id: NodeId,
    cluster_id: u64,
    members: Vec<NodeId>,
    frame_bytes_max: usize,
    backoff_min: Duration,
    backoff_max: Duration,
    inbound: crossbeam_channel::Sender<Message>,
    /// Called after each message queued on `inbound`.
    on_inbound: Box<dyn Fn() + Send + Sync>,
    /// Per member, the number of inbound connections it has opened. Only
    /// the newest one is served: a peer that reconnects (it restarted, or
    /// its side of the old connection died) replaces its old connection, so
    /// a half-open one never lingers.
    inbound_generations: HashMap<NodeId, watch::Sender<u64>>,
    counters: Counters,
}

/// Starts the TCP transport of a node.
pub struct Transport;

impl Transport {
    /// Validates `config`, binds this node's own `ip:port` from `groups`, and
    /// spawns the network thread, which accepts peers and dials every other
    /// member. Messages received from peers go to `inbound`.
    ///
    /// ```no_run
    /// use spaxos::{Config, Transport};
    ///
    /// let config = Config::from_file("node1.json")?;
    /// let (tx, rx) = crossbeam_channel::bounded(65536);
    /// let transport = Transport::start(&config, tx)?;
    /// // transport.send(message) from any thread; rx.recv() gets peers' messages.
    /// transport.shutdown();
    /// # drop(rx);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn start(
        config: &Config,
        inbound: crossbeam_channel::Sender<Message>,
    ) -> Result<TransportHandle, TransportError> {
        Transport::start_notifying(config, inbound, Box::new(|| {}))
    }

    /// [`Transport::start`], calling `on_inbound` after each message is
    /// queued on `inbound`: for a receiver that sleeps on its own wake-up
    /// (the runtime's state machine) rather than on the channel.
    pub fn start_notifying(
        config: &Config,
        inbound: crossbeam_channel::Sender<Message>,
        on_inbound: Box<dyn Fn() + Send + Sync>,
    ) -> Result<TransportHandle, TransportError> {
        config.validate()?;
        // validate() guarantees selfid is a member with a parsable address.
        let addr = config
            .addr_of(config.selfid)
            .expect("validated config has this node's address");
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|source| TransportError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| TransportError::Bind { addr, source })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| TransportError::Bind { addr, source })?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(TransportError::Thread)?;

        let shared = Arc::new(Shared {
            self_id: config.selfid,
            cluster_id: config.cluster_id,
            members: config.member_ids(),
            frame_bytes_max: config.frame_bytes_max,
            backoff_min: Duration::from_millis(config.reconnect_backoff_min_ms),
            backoff_max: Duration::from_millis(config.reconnect_backoff_max_ms),
            inbound,
            on_inbound,
            inbound_generations: config
                .member_ids()
                .into_iter()
                .map(|id| (id, watch::channel(0).0))
                .collect(),
            counters: Counters::default(),
        });
        let mut peers = HashMap::new();
        let mut dialers = Vec::new();
        for member in &config.groups {
            if member.id == config.selfid {
                continue;
            }
            let peer_addr = member
                .addr()
                .expect("validated config has parsable addresses");
            let (queue, rx) = mpsc::channel(config.peer_queue_max);
            let link = Arc::new(PeerLink {
                queue,
                connected: AtomicBool::new(false),
            });
            peers.insert(member.id, Arc::clone(&link));
            dialers.push((member.id, peer_addr, rx, link));
        }

        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread_shared = Arc::clone(&shared);
        let inbound_max = 2 * config.groups.len() + 16;
        let thread = std::thread::Builder::new()
            .name(format!("spaxos-net-{}", config.selfid))
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => {
                            tokio::spawn(accept_loop(
                                listener,
                                Arc::clone(&thread_shared),
                                Arc::new(Semaphore::new(inbound_max)),
                            ));
                        }
                        Err(error) => warn!(%error, "cannot register the peer listener"),
                    }
                    for (peer, peer_addr, rx, link) in dialers {
                        tokio::spawn(dial_loop(
                            peer,
                            peer_addr,
                            rx,
                            link,
                            Arc::clone(&thread_shared),
                        ));
                    }
                    // Runs until shutdown() or the handle is dropped.
                    let _ = stop_rx.await;
                });
                // Dropping the runtime drops every task and closes its sockets.
                drop(runtime);
            })
            .map_err(TransportError::Thread)?;
        info!(node = config.selfid, %local_addr, "transport listening");
        Ok(TransportHandle {
            self_id: config.selfid,
            local_addr,
            peers,
            shared,
            stop: Mutex::new(Some(stop_tx)),
            thread: Mutex::new(Some(thread)),
        })
    }
}

/// The running transport. Cheap to use from any thread; dropping it shuts
/// the transport down.
pub struct TransportHandle {
    self_id: NodeId,
    local_addr: SocketAddr,
    peers: HashMap<NodeId, Arc<PeerLink>>,
    shared: Arc<Shared>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl TransportHandle {
    /// Queues `msg` for `msg.to` without blocking. Returns `false`, and
    /// counts a drop, when the message cannot be queued: the peer is not
    /// connected, its queue is full, it is not a member, or it is this node
    /// (messages to self are the runtime's to loop back). Paxos tolerates
    /// the loss; the core retries.
    pub fn send(&self, msg: Message) -> bool {
        let queued = match self.peers.get(&msg.to) {
            Some(link) if link.connected.load(Ordering::Relaxed) => {
                link.queue.try_send(msg).is_ok()
            }
            _ => false,
        };
        if !queued {
            bump(&self.shared.counters.messages_dropped, 1);
        }
        queued
    }

    /// [`TransportHandle::send`] for each message; returns how many were queued.
    pub fn send_batch(&self, msgs: Vec<Message>) -> usize {
        msgs.into_iter()
            .map(|m| self.send(m))
            .filter(|&queued| queued)
            .count()
    }

    /// Peers this node currently has an outbound connection to, sorted.
    pub fn connected_peers(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(_, link)| link.connected.load(Ordering::Relaxed))
            .map(|(&id, _)| id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Counters since start.
    pub fn stats(&self) -> TransportStats {
        self.shared.counters.snapshot()
    }

    /// The address the peer listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.self_id
    }

    /// Closes every socket and joins the network thread. Queued messages
    /// not yet written are dropped. Idempotent.
    pub fn shutdown(&self) {
        if let Some(stop) = lock(&self.stop).take() {
            let _ = stop.send(());
        }
        if let Some(thread) = lock(&self.thread).take() {
            if thread.join().is_err() {
                warn!(node = self.self_id, "network thread panicked");
            }
        }
    }
}

impl Drop for TransportHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for TransportHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportHandle")
            .field("node", &self.self_id)
            .field("local_addr", &self.local_addr)
            .field("connected_peers", &self.connected_peers())
            .finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---- outbound -----------------------------------------------------------

/// Dials `peer` forever, sending its queue over each connection.
async fn dial_loop(
    peer: NodeId,
    addr: SocketAddr,
    mut queue: mpsc::Receiver<Message>,
    link: Arc<PeerLink>,
    shared: Arc<Shared>,
) {
    let hello = {
        let mut frame = Vec::new();
        encode_frame(
            &Handshake::new(shared.cluster_id, shared.self_id).encode(),
            &mut frame,
        );
        frame
    };
    let mut backoff = shared.backoff_min;
    let mut failures: u64 = 0;
    loop {
        match connect(addr, &hello).await {
            Ok(stream) => {
                let started = Instant::now();
                failures = 0;
                link.connected.store(true, Ordering::Relaxed);
                bump(&shared.counters.connections_established, 1);
                info!(peer, %addr, "connected to peer");
                let result = pump(stream, &mut queue, &shared).await;
                link.connected.store(false, Ordering::Relaxed);
                let mut dropped = 0;
                while queue.try_recv().is_ok() {
                    dropped += 1;
                }
                bump(&shared.counters.messages_dropped, dropped);
                match result {
                    Ok(()) => return, // the handle is gone
                    Err(error) => info!(peer, %addr, %error, dropped, "disconnected from peer"),
                }
                // A connection that lasted resets the backoff; one the peer
                // refuses at once (say, a handshake mismatch) does not.
                if started.elapsed() >= shared.backoff_max {
                    backoff = shared.backoff_min;
                }
            }
            Err(error) => {
                failures += 1;
                if failures == 1 {
                    info!(peer, %addr, %error, "cannot connect to peer; retrying");
                } else {
                    debug!(peer, %addr, %error, failures, "cannot connect to peer");
                }
            }
        }
        let jitter_ms = rand::random_range(0..=backoff.as_millis() as u64 / 4);
        tokio::time::sleep(backoff + Duration::from_millis(jitter_ms)).await;
        backoff = (backoff * 2).min(shared.backoff_max);
    }
}

async fn connect(addr: SocketAddr, hello: &[u8]) -> io::Result<TcpStream> {
    let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    stream.write_all(hello).await?;
    Ok(stream)
}

/// Sends queued messages until the connection fails (`Err`) or the queue's
/// sender is gone (`Ok`).
async fn pump(
    stream: TcpStream,
    queue: &mut mpsc::Receiver<Message>,
    shared: &Shared,
) -> io::Result<()> {
    let (mut reader, mut writer) = stream.into_split();
    let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
    let mut probe = [0u8; 64];
    loop {
        let first = tokio::select! {
            msg = queue.recv() => match msg {
                Some(msg) => msg,
                None => return Ok(()),
            },
            // The acceptor never writes: a read completes only when it
            // closes the connection (or misbehaves).
            read = reader.read(&mut probe) => {
                return Err(match read {
                    Ok(0) => io::Error::new(io::ErrorKind::ConnectionAborted, "closed by peer"),
                    Ok(_) => io::Error::new(io::ErrorKind::InvalidData, "unexpected data from peer"),
                    Err(error) => error,
                });
            }
        };
        buf.clear();
        let mut frames = 0u64;
        let mut next = Some(first);
        while let Some(msg) = next {
            match encode_message_frame(&msg, shared.frame_bytes_max, &mut buf) {
                Ok(()) => frames += 1,
                Err(error) => {
                    bump(&shared.counters.messages_dropped, 1);
                    warn!(to = msg.to, kind = msg.body.kind(), %error, "message too large to send; dropped");
                }
            }
            next = if buf.len() < WRITE_BATCH_BYTES {
                queue.try_recv().ok()
            } else {
                None
            };
        }
        if frames == 0 {
            continue;
        }
        tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(&buf))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write timed out"))??;
        bump(&shared.counters.frames_sent, frames);
        bump(&shared.counters.bytes_sent, buf.len() as u64);
        bump(&shared.counters.write_batches, 1);
        if buf.capacity() > 4 * WRITE_BATCH_BYTES {
            buf = Vec::with_capacity(64 << 10);
        }
    }
}

// ---- inbound ------------------------------------------------------------

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, slots: Arc<Semaphore>) {
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait, do not spin.
                warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            bump(&shared.counters.connections_rejected, 1);
            warn!(%addr, "too many inbound peer connections; closing");
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let _slot = slot;
            serve_inbound(stream, addr, &shared).await;
        });
    }
}

/// Why an inbound connection was closed.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("no handshake within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("handshake rejected: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("undecodable message: {0}")]
    Wire(#[from] WireError),
    #[error("message from node {got} on the connection of node {expected}")]
    WrongSender { expected: NodeId, got: NodeId },
    #[error("message for node {0}, this is node {1}")]
    WrongRecipient(NodeId, NodeId),
    #[error("connection closed in the middle of a frame ({0} bytes buffered)")]
    Truncated(usize),
    #[error("replaced by a newer connection from the same node")]
    Superseded,
    #[error("this node is shutting down")]
    InboundClosed,
}

async fn serve_inbound(mut stream: TcpStream, addr: SocketAddr, shared: &Shared) {
    let _ = stream.set_nodelay(true);
    let mut decoder = FrameDecoder::new(HANDSHAKE_BYTES_MAX);
    let peer = match handshake(&mut stream, &mut decoder, shared).await {
        Ok(peer) => peer,
        Err(error) => {
            bump(&shared.counters.connections_rejected, 1);
            warn!(%addr, %error, "refused peer connection");
            return;
        }
    };
    bump(&shared.counters.connections_accepted, 1);
    info!(peer, %addr, "peer connected");
    decoder.set_frame_bytes_max(shared.frame_bytes_max);
    let Some(generations) = shared.inbound_generations.get(&peer) else {
        return; // the handshake admits members only
    };
    generations.send_modify(|generation| *generation += 1);
    let newer = generations.subscribe();
    match receive(&mut stream, &mut decoder, peer, newer, shared).await {
        Ok(()) => info!(peer, %addr, "peer disconnected"),
        Err(SessionError::InboundClosed) => {}
        Err(SessionError::Superseded) => {
            info!(peer, %addr, "peer reconnected; closing its older connection")
        }
        Err(error) => {
            bump(&shared.counters.protocol_errors, 1);
            warn!(peer, %addr, %error, "closing peer connection");
        }
    }
}

async fn handshake(
    stream: &mut TcpStream,
    decoder: &mut FrameDecoder,
    shared: &Shared,
) -> Result<NodeId, SessionError> {
    let read = async {
        loop {
            if let Some(payload) = decoder.next_frame()? {
                return Ok(payload);
            }
            if stream.read_buf(decoder.buffer_mut()).await? == 0 {
                return Err(SessionError::Truncated(decoder.buffered_len()));
            }
        }
    };
    let payload = tokio::time::timeout(HANDSHAKE_TIMEOUT, read)
        .await
        .map_err(|_| SessionError::HandshakeTimeout(HANDSHAKE_TIMEOUT))??;
    Ok(Handshake::check(
        &payload,
        shared.cluster_id,
        shared.self_id,
        &shared.members,
    )?)
}

/// Forwards messages from `peer` until it disconnects cleanly (`Ok`) or
/// misbehaves.
async fn receive(
    stream: &mut TcpStream,
    decoder: &mut FrameDecoder,
    peer: NodeId,
    mut newer: watch::Receiver<u64>,
    shared: &Shared,
) -> Result<(), SessionError> {
    loop {
        while let Some(payload) = decoder.next_frame()? {
            let frame_len = payload.len() + super::frame::FRAME_HEADER_BYTES;
            let msg = decode_message_bytes(payload)?;
            if msg.from != peer {
                return Err(SessionError::WrongSender {
                    expected: peer,
                    got: msg.from,
                });
            }
            if msg.to != shared.self_id {
                return Err(SessionError::WrongRecipient(msg.to, shared.self_id));
            }
            deliver(msg, shared).await?;
            bump(&shared.counters.frames_received, 1);
            bump(&shared.counters.bytes_received, frame_len as u64);
        }
        let read = tokio::select! {
            read = stream.read_buf(decoder.buffer_mut()) => read?,
            _ = newer.changed() => return Err(SessionError::Superseded),
        };
        if read == 0 {
            return match decoder.buffered_len() {
                0 => Ok(()),
                partial => Err(SessionError::Truncated(partial)),
            };
        }
    }
}

/// Hands `msg` to the state machine, waiting (without blocking the thread)
/// while its queue is full.
async fn deliver(mut msg: Message, shared: &Shared) -> Result<(), SessionError> {
    loop {
        match shared.inbound.try_send(msg) {
            Ok(()) => {
                (shared.on_inbound)();
                return Ok(());
            }
            Err(TrySendError::Full(back)) => {
                msg = back;
                tokio::time::sleep(INBOUND_FULL_RETRY).await;
            }
            Err(TrySendError::Disconnected(_)) => return Err(SessionError::InboundClosed),
        }
    }
}

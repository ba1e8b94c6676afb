//! The runtime: the seed's three threads around the protocol core, and
//! [`Spaxos`], the handle applications hold.
//!
//! - the state-machine thread (`state_machine.rs`) owns the
//!   [`spaxos_core::Node`] and never blocks on I/O;
//! - the storage thread (`storage_thread.rs`) owns the [`Storage`] and
//!   group-commits the core's hard state before releasing the messages that
//!   depend on it;
//! - the network thread is the [`crate::Transport`].
//!
//! docs/ARCHITECTURE.md ("Threads and queues") draws the queues between them.

#![warn(missing_docs)]

mod error;
mod ordered;
mod queues;
mod slot;
mod state_machine;
mod status;
mod storage_thread;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{bounded, Receiver, SendTimeoutError, Sender, TrySendError};
use spaxos_core::{ChosenItem, Index, Node, NodeId, Outcome, ReqId, Value};
use spaxos_storage::{DiskStorage, Storage};
use tracing::{info, info_span, warn};

pub use error::{Error, ProposalError, ProposeError, StartError, StreamError};
pub use ordered::OrderedStream;
pub use status::{Metrics, Status};
pub use storage_thread::ReopenStorage;

use crate::config::Config;
use crate::transport::{Transport, TransportHandle};
use queues::{
    Command, CommandSender, Doorbell, EventSender, StorageInput, Wakeup, COMMAND_QUEUE_MAX,
    NETWORK_QUEUE_MAX, STORAGE_EVENT_QUEUE_MAX, STORAGE_QUEUE_MAX, SUBSCRIBER_QUEUE_MAX,
};
use slot::{slot, Bells, Received, SlotReceiver};
use state_machine::{StateMachine, StateMachineParts};
use status::Shared;
use storage_thread::StorageThread;

/// A running spaxos node: cheap to clone, usable from any thread.
///
/// The node stops when [`Spaxos::shutdown`] is called or the last clone is
/// dropped. See the crate docs for a tour.
#[derive(Clone)]
pub struct Spaxos {
    inner: Arc<Inner>,
}

// Handles are shared across threads.
const _: () = {
    const fn send_and_sync<T: Send + Sync>() {}
    send_and_sync::<Spaxos>();
    const fn send<T: Send>() {}
    send::<ProposalHandle>();
    send::<OrderedStream>();
};

struct Inner {
    id: NodeId,
    value_bytes_max: usize,
    /// Payload bytes per ordered-stream read.
    read_bytes_max: usize,
    tick: Duration,
    commands: CommandSender,
    storage: Sender<StorageInput>,
    stop: Sender<()>,
    /// Wakes the SMT after the stop signal is queued.
    wakeup: Arc<Wakeup>,
    shared: Arc<Shared>,
    /// Where proposers wait for their outcomes.
    bells: Arc<Bells>,
    transport: Arc<TransportHandle>,
    /// State-machine thread, then storage thread: joined in that order.
    threads: Mutex<Vec<JoinHandle<()>>>,
    stopping: AtomicBool,
}

impl Spaxos {
    /// Starts a node: validates `config`, opens (creating it if needed) the
    /// on-disk log in `config.path`, recovers, starts the transport and the
    /// threads.
    ///
    /// ```
    /// # let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().display();
    /// let config = spaxos::Config::from_json(&format!(r#"{{
    ///     "selfid": 1,
    ///     "groups": [ {{"id": 1, "ip": "127.0.0.1", "port": {port}}} ],
    ///     "path": "{path}",
    ///     "stimeout": {{"heartbeat": 20, "instimeoutbase": 60, "instimeoutrange": 20}},
    ///     "tick_ms": 5 }}"#))?;
    /// let node = spaxos::Spaxos::start(config)?;
    /// assert_eq!(node.status().id, 1);
    /// node.shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn start(config: Config) -> Result<Spaxos, StartError> {
        config.validate()?;
        let path = config.path.clone();
        std::fs::create_dir_all(&path).map_err(|source| StartError::CreateDir {
            path: path.clone(),
            source,
        })?;
        let storage = open_disk(&path)?;
        let reopen: ReopenStorage = Box::new(move || open_disk(&path));
        Spaxos::launch(config, storage, Some(reopen))
    }

    /// Starts a node on a given storage (a [`spaxos_storage::MemStorage`] in
    /// tests, or any other [`Storage`]); `config.path` is not used.
    ///
    /// After a failed write the node recovers from this same storage, which
    /// must then still serve reads of what is durable.
    pub fn start_with_storage(
        config: Config,
        storage: Box<dyn Storage>,
    ) -> Result<Spaxos, StartError> {
        config.validate()?;
        Spaxos::launch(config, storage, None)
    }

    /// Like [`Spaxos::start_with_storage`], with a way to reopen storage
    /// after a failed write (a store that refuses writes after a failure,
    /// like [`DiskStorage`], needs a fresh handle).
    pub fn start_with_reopen(
        config: Config,
        storage: Box<dyn Storage>,
        reopen: ReopenStorage,
    ) -> Result<Spaxos, StartError> {
        config.validate()?;
        Spaxos::launch(config, storage, Some(reopen))
    }

    fn launch(
        config: Config,
        storage: Box<dyn Storage>,
        reopen: Option<ReopenStorage>,
    ) -> Result<Spaxos, StartError> {
        let id = config.selfid;
        let core_config = config.core_config();
        let recovered = storage.recover(core_config.dedup_history())?;
        info!(
            node = id,
            chosen_through = recovered.chosen_through,
            instances = recovered.instances.len(),
            max_round = recovered.node.max_round,
            promised = %recovered.node.promised,
            "recovered durable state"
        );
        let node = Node::restore(core_config.clone(), recovered)?;

        let wakeup = Wakeup::new();
        let (network_tx, network_rx) = bounded(NETWORK_QUEUE_MAX);
        let transport = {
            let wakeup = Arc::clone(&wakeup);
            Arc::new(Transport::start_notifying(
                &config,
                network_tx,
                Box::new(move || wakeup.notify()),
            )?)
        };
        let (commands_tx, commands_rx) = bounded(COMMAND_QUEUE_MAX);
        let (storage_tx, storage_rx) = bounded(STORAGE_QUEUE_MAX);
        let (events_tx, events_rx) = bounded(STORAGE_EVENT_QUEUE_MAX);
        let (stop_tx, stop_rx) = bounded(1);
        let shared = Arc::new(Shared::default());
        let bells = Bells::new();
        let doorbell = Arc::new(Doorbell::new(Arc::clone(&wakeup)));

        let storage_thread = StorageThread {
            storage: Some(storage),
            reopen,
            inputs: storage_rx,
            events: EventSender::new(events_tx, Arc::clone(&wakeup)),
            transport: Arc::clone(&transport),
            shared: Arc::clone(&shared),
            self_id: id,
            dedup_history: core_config.dedup_history(),
            batch_bytes_max: core_config.batch_bytes_max,
            generation: 0,
            failed_writes_in_a_row: 0,
        };
        let state_machine = StateMachine::new(StateMachineParts {
            node,
            send_accepts_before_persist: config.send_accepts_before_persist,
            propose_gather: Duration::from_micros(config.propose_gather_us),
            core_config: core_config.clone(),
            transport: Arc::clone(&transport),
            shared: Arc::clone(&shared),
            bells: Arc::clone(&bells),
            doorbell: Arc::clone(&doorbell),
            commands: commands_rx,
            network: network_rx,
            storage_events: events_rx,
            stop: stop_rx,
            tick: config.tick(),
            wakeup: Arc::clone(&wakeup),
            storage: storage_tx.clone(),
        });

        let mut threads = Vec::new();
        let guard_shared = Arc::clone(&shared);
        let spawned = spawn(format!("spaxos-smt-{id}"), move || {
            let _guard = PanicGuard(guard_shared, "state machine");
            let _span = info_span!("smt", node = id).entered();
            state_machine.run();
        });
        match spawned {
            Ok(handle) => threads.push(handle),
            Err(e) => {
                transport.shutdown();
                return Err(e);
            }
        }
        let guard_shared = Arc::clone(&shared);
        let spawned = spawn(format!("spaxos-st-{id}"), move || {
            let _guard = PanicGuard(guard_shared, "storage");
            let _span = info_span!("st", node = id).entered();
            storage_thread.run();
        });
        let inner = Inner {
            id,
            value_bytes_max: core_config.value_bytes_max,
            read_bytes_max: core_config.batch_bytes_max,
            tick: config.tick(),
            commands: CommandSender::new(commands_tx, Arc::clone(&doorbell)),
            storage: storage_tx,
            stop: stop_tx,
            wakeup,
            shared,
            bells,
            transport,
            threads: Mutex::new(threads),
            stopping: AtomicBool::new(false),
        };
        match spawned {
            Ok(handle) => inner.lock_threads().push(handle),
            // Dropping `inner` stops the state machine and the transport.
            Err(e) => return Err(e),
        }
        info!(node = id, local_addr = %inner.transport.local_addr(), "node started");
        Ok(Spaxos {
            inner: Arc::new(inner),
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The address the peer listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.transport.local_addr()
    }

    /// Proposes `value` under `reqid` (non-zero, unique per request). Blocks
    /// while the node's input queue is full (the disk or the network is
    /// behind); the returned handle resolves to the outcome.
    ///
    /// A reqid already chosen within the dedup window resolves to its
    /// existing index; proposing again a reqid that is still pending here
    /// resolves to [`ProposalError::Rejected`].
    ///
    /// ```no_run
    /// # fn demo(node: &spaxos::Spaxos) -> Result<(), Box<dyn std::error::Error>> {
    /// let handle = node.propose(42, "set x = 1")?;
    /// match handle.wait()? {
    ///     spaxos::Outcome::Chosen { index } => println!("in the log at {index}"),
    ///     spaxos::Outcome::Lost { index } => println!("another value won {index}"),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn propose(
        &self,
        reqid: ReqId,
        value: impl Into<Bytes>,
    ) -> Result<ProposalHandle, ProposeError> {
        self.submit(one(reqid, value), Submit::Block)
    }

    /// Like [`Spaxos::propose`], but returns [`ProposeError::Busy`] instead of
    /// blocking when the input queue is full.
    pub fn try_propose(
        &self,
        reqid: ReqId,
        value: impl Into<Bytes>,
    ) -> Result<ProposalHandle, ProposeError> {
        self.submit(one(reqid, value), Submit::Try)
    }

    /// Like [`Spaxos::propose`], but returns [`ProposeError::Busy`] if the
    /// input queue stays full for `timeout`.
    pub fn propose_timeout(
        &self,
        reqid: ReqId,
        value: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<ProposalHandle, ProposeError> {
        self.submit(one(reqid, value), Submit::Timeout(timeout))
    }

    /// Proposes several values under one reqid, to be chosen together at one
    /// index (the seed's multi-value proposal). Blocks like [`Spaxos::propose`].
    pub fn propose_many(
        &self,
        reqid: ReqId,
        values: Vec<Bytes>,
    ) -> Result<ProposalHandle, ProposeError> {
        let value = Value::Many {
            reqid,
            values: values.into(),
        };
        self.submit(value, Submit::Block)
    }

    fn submit(&self, value: Value, mode: Submit) -> Result<ProposalHandle, ProposeError> {
        let reqid = value.reqid().unwrap_or(0);
        if reqid == 0 {
            return Err(ProposeError::ZeroReqId);
        }
        let size = value.payload_len();
        if size > self.inner.value_bytes_max {
            return Err(ProposeError::TooLarge {
                size,
                max: self.inner.value_bytes_max,
            });
        }
        if self.inner.stopping.load(Ordering::Acquire) || self.inner.shared.is_failed() {
            return Err(self.propose_stopped());
        }
        let (reply, receiver) = slot(&self.inner.bells);
        let command = Command::Propose { value, reply };
        let sent = match mode {
            Submit::Block => self.inner.commands.send(command).map_err(|_| None),
            Submit::Try => self.inner.commands.try_send(command).map_err(|e| match e {
                TrySendError::Full(_) => Some(ProposeError::Busy),
                TrySendError::Disconnected(_) => None,
            }),
            Submit::Timeout(timeout) => {
                self.inner
                    .commands
                    .send_timeout(command, timeout)
                    .map_err(|e| match e {
                        SendTimeoutError::Timeout(_) => Some(ProposeError::Busy),
                        SendTimeoutError::Disconnected(_) => None,
                    })
            }
        };
        match sent {
            Ok(()) => Ok(ProposalHandle { reqid, receiver }),
            Err(Some(busy)) => Err(busy),
            Err(None) => Err(self.propose_stopped()),
        }
    }

    fn propose_stopped(&self) -> ProposeError {
        ProposeError::Stopped {
            reason: self.inner.shared.stop_reason(),
        }
    }

    fn stopped(&self) -> Error {
        Error::Stopped {
            reason: self.inner.shared.stop_reason(),
        }
    }

    /// Every item chosen from now on, in any order (the seed's chosen
    /// queue); in practice they arrive in index order.
    ///
    /// A subscriber that falls more than 16384 items behind is disconnected
    /// (the receiver reports disconnection after the buffered items) rather
    /// than stall the node; use [`Spaxos::ordered_from`] to never miss one.
    /// After the node stops, the receiver is disconnected.
    pub fn subscribe(&self) -> Receiver<ChosenItem> {
        let (items, receiver) = bounded(SUBSCRIBER_QUEUE_MAX);
        if !self.inner.stopping.load(Ordering::Acquire) {
            // If the node has stopped, `items` is dropped and the receiver
            // reports disconnection: the same as a node stopping later.
            let _ = self.inner.commands.send(Command::Subscribe { items });
        }
        receiver
    }

    /// Chosen items strictly in index order starting at `index` (1 is the
    /// start of the log): old ones from storage, then new ones as they are
    /// chosen. See [`OrderedStream`].
    ///
    /// ```no_run
    /// # fn demo(node: &spaxos::Spaxos, applied: u64) {
    /// for item in node.ordered_from(applied + 1) {
    ///     let item = item.expect("log compacted past what we applied");
    ///     // apply item.value to the database, then persist item.index
    /// }
    /// # }
    /// ```
    pub fn ordered_from(&self, index: Index) -> OrderedStream {
        OrderedStream::new(
            index,
            self.inner.commands.clone(),
            self.inner.storage.clone(),
            Arc::clone(&self.inner.shared),
            self.inner.tick.max(Duration::from_millis(1)),
            self.inner.read_bytes_max,
        )
    }

    /// The chosen value at `index` on this node's storage: `Ok(None)` if it
    /// is not (yet) known here as chosen, [`Error::Compacted`] if a
    /// checkpoint dropped it. (After a crash, an entry this node learned
    /// just before may read as not chosen until a peer teaches it again:
    /// the mark that it is chosen is not always durable yet, see
    /// `Storage::write_deferred`.)
    pub fn get(&self, index: Index) -> Result<Option<Value>, Error> {
        let (reply, result) = bounded(1);
        self.inner
            .storage
            .send(StorageInput::Get { index, reply })
            .map_err(|_| self.stopped())?;
        result.recv().map_err(|_| self.stopped())?
    }

    /// A snapshot of this node. Never waits behind queued work.
    pub fn status(&self) -> Status {
        let core = self.inner.shared.core_status();
        let failure = self.inner.shared.failure();
        let peers_connected = if failure.is_none() && !self.inner.stopping.load(Ordering::Acquire) {
            self.inner.transport.connected_peers()
        } else {
            Vec::new()
        };
        match core {
            Some(core) => Status {
                id: core.id,
                role: core.role,
                leader: core.leader,
                chosen_through: core.chosen_through,
                max_index: core.max_index,
                peers_connected,
                pending: core.pending,
                failure,
            },
            None => Status {
                id: self.inner.id,
                role: spaxos_core::Role::Follower,
                leader: None,
                chosen_through: 0,
                max_index: 0,
                peers_connected,
                pending: 0,
                failure,
            },
        }
    }

    /// Counters of this node since it started (never waits).
    ///
    /// ```no_run
    /// # fn show(node: &spaxos::Spaxos) {
    /// let m = node.metrics();
    /// println!("{} writes for {} records", m.storage_writes, m.records_written);
    /// # }
    /// ```
    pub fn metrics(&self) -> Metrics {
        self.inner
            .shared
            .counters
            .snapshot(self.inner.transport.stats())
    }

    /// The application has checkpointed its state through `index`: storage
    /// may drop chosen values at or below `index - 2 * dedup_window` (the
    /// indices above are kept: duplicate detection reads their reqids after
    /// a restart). Returns the index storage was compacted through.
    pub fn checkpoint(&self, index: Index) -> Result<Index, Error> {
        let (reply, result) = bounded(1);
        self.inner
            .commands
            .send(Command::Checkpoint { index, reply })
            .map_err(|_| self.stopped())?;
        result.recv().map_err(|_| self.stopped())?
    }

    /// Stops the node gracefully: refuses new proposals, writes what is
    /// queued for storage, fails proposals still pending with
    /// [`ProposalError::Stopped`], stops the transport and joins every
    /// thread. Idempotent; also runs when the last clone is dropped.
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }
}

impl std::fmt::Debug for Spaxos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spaxos")
            .field("id", &self.inner.id)
            .field("local_addr", &self.inner.transport.local_addr())
            .finish()
    }
}

enum Submit {
    Block,
    Try,
    Timeout(Duration),
}

impl Inner {
    fn lock_threads(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.threads.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        // Holding the lock makes a concurrent shutdown wait for this one.
        let mut threads = self.lock_threads();
        if threads.is_empty() {
            return;
        }
        let _ = self.stop.try_send(());
        self.wakeup.notify();
        let mut threads = std::mem::take(&mut *threads).into_iter();
        if let Some(state_machine) = threads.next() {
            if state_machine.join().is_err() {
                warn!(node = self.id, "state machine thread panicked");
            }
        }
        // The state machine asked the storage thread to finish; ask again in
        // case it died before it could.
        let _ = self.storage.send(StorageInput::Shutdown);
        for thread in threads {
            if thread.join().is_err() {
                warn!(node = self.id, "storage thread panicked");
            }
        }
        self.transport.shutdown();
        info!(node = self.id, "node stopped");
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A single-value proposal.
fn one(reqid: ReqId, value: impl Into<Bytes>) -> Value {
    Value::One {
        reqid,
        value: value.into(),
    }
}

fn open_disk(path: &Path) -> Result<Box<dyn Storage>, spaxos_storage::StorageError> {
    DiskStorage::open(path).map(|store| Box::new(store) as Box<dyn Storage>)
}

fn spawn(name: String, body: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, StartError> {
    std::thread::Builder::new()
        .name(name)
        .spawn(body)
        .map_err(StartError::Thread)
}

/// Marks the node failed if a runtime thread unwinds (a core invariant
/// assertion, say), so `status()` and every API call say why.
struct PanicGuard(Arc<Shared>, &'static str);

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.fail(format!("the {} thread panicked", self.1));
        }
    }
}

/// The outcome of one proposal, to wait for ([`ProposalHandle::wait`],
/// [`ProposalHandle::wait_timeout`]) from any thread, or to `.await` in any
/// async runtime.
///
/// ```no_run
/// # async fn demo(node: spaxos::Spaxos) -> Result<(), Box<dyn std::error::Error>> {
/// let outcome = node.propose(7, "hello")?.await?;
/// # Ok(()) }
/// ```
pub struct ProposalHandle {
    reqid: ReqId,
    receiver: SlotReceiver<Result<Outcome, ProposalError>>,
}

impl ProposalHandle {
    /// The proposal's reqid.
    pub fn reqid(&self) -> ReqId {
        self.reqid
    }

    /// Blocks until the outcome is known. Safe to call from any thread,
    /// including a tokio worker (though `.await` is kinder to it).
    pub fn wait(self) -> Result<Outcome, ProposalError> {
        received(self.receiver.wait_deadline(None))
    }

    /// Blocks at most `timeout`; [`ProposalError::Timeout`] leaves the handle
    /// usable for another wait.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Outcome, ProposalError> {
        received(self.receiver.wait_timeout(timeout))
    }
}

fn received(result: Received<Result<Outcome, ProposalError>>) -> Result<Outcome, ProposalError> {
    match result {
        Received::Value(outcome) => outcome,
        Received::Closed => Err(ProposalError::Stopped {
            reason: "the node stopped before the outcome was known".to_string(),
        }),
        Received::TimedOut => Err(ProposalError::Timeout),
    }
}

impl Future for ProposalHandle {
    type Output = Result<Outcome, ProposalError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.receiver)
            .poll(cx)
            .map(|value| match value {
                Some(outcome) => outcome,
                None => Err(ProposalError::Stopped {
                    reason: "the node stopped before the outcome was known".to_string(),
                }),
            })
    }
}

impl std::fmt::Debug for ProposalHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProposalHandle")
            .field("reqid", &self.reqid)
            .finish()
    }
}

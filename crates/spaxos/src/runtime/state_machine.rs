//! The state-machine thread (SMT, seed §"SMT"): owns the protocol core and
//! never blocks on I/O.
//!
//! One round: block for one input (a storage event, a peer message, an API
//! command, a tick or the stop signal), take whatever else is already queued
//! (at most [`ROUND_INPUTS_MAX`]; consecutive proposals reach the core as one
//! `propose_batch` at the end of the round), then drain the core's `Ready`
//! into one job for the storage thread. Proposals may be held over a few
//! rounds while proposers just answered are expected back ([`Gather`]).
//! The only place it waits is handing that job over when the storage queue
//! is full: that is the backpressure that reaches proposers when the disk
//! is slow.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender, TryRecvError, TrySendError};
use spaxos_core::{
    ChosenItem, CoreConfig, Index, Message, Node, NodeId, Outcome, ReqId, Role, Value,
};
use tracing::{debug, error, info, warn};

use super::error::{Error, ProposalError};
use super::queues::{
    Command, Doorbell, Job, ProposalReply, StorageEvent, StorageInput, Wakeup, COMMAND_QUEUE_MAX,
    ROUND_INPUTS_MAX,
};
use super::slot::{Bells, Rings};
use super::status::{Counters, Shared};
use crate::transport::TransportHandle;

/// An ordered subscriber gets exactly the items `next, next + 1, ...`; one it
/// cannot take at once is disconnected, and its stream fills the gap from
/// storage before it subscribes again.
struct OrderedSubscriber {
    items: Sender<ChosenItem>,
    next: Index,
}

/// Holds new proposals for a moment while proposers that were just
/// answered are expected back (`Config::propose_gather_us`).
///
/// A closed-loop proposer proposes again as soon as it is answered, and one
/// round answers many proposers at once. Their next proposals arrive one
/// by one as each proposer thread gets a core; proposing each as it comes
/// makes many small rounds (a small accept, a small group commit and a
/// round of thread wake-ups each). Holding them until the answered
/// proposers are back, or `window` has passed, sends them as one round.
/// A proposal waits at most `window`, and only while some proposer
/// answered within the last `window` has not proposed again.
struct Gather {
    /// Longest hold; zero turns gathering off.
    window: Duration,
    /// Proposers answered whose next proposal has not arrived yet.
    awaited: usize,
    /// When proposers were last answered.
    answered_at: Option<Instant>,
    /// When the current hold ends at the latest.
    until: Option<Instant>,
}

impl Gather {
    fn new(window: Duration) -> Gather {
        Gather {
            window,
            awaited: 0,
            answered_at: None,
            until: None,
        }
    }

    /// `count` proposers were answered (one round's outcomes).
    fn answered(&mut self, count: usize) {
        if !self.window.is_zero() && count > 0 {
            self.awaited = self.awaited.saturating_add(count);
            self.answered_at = Some(Instant::now());
        }
    }

    fn proposal_arrived(&mut self) {
        self.awaited = self.awaited.saturating_sub(1);
    }

    /// Whether the `held` proposals taken so far wait for more.
    fn hold(&mut self, held: usize) -> bool {
        if held == 0 || self.awaited == 0 {
            self.until = None;
            return false;
        }
        let now = Instant::now();
        let answered_long_ago = self
            .answered_at
            .is_none_or(|at| now.saturating_duration_since(at) >= self.window);
        if self.until.is_none() && answered_long_ago {
            // Proposers answered a window ago or more are not about to come
            // back: a proposal that arrives now has no one to wait for.
            self.awaited = 0;
            return false;
        }
        let until = *self.until.get_or_insert(now + self.window);
        if now < until {
            return true;
        }
        // The proposers still awaited are not coming back soon; stop
        // waiting for them.
        self.awaited = 0;
        self.until = None;
        false
    }
}

/// Everything the SMT owns.
pub(crate) struct StateMachine {
    pub node: Node,
    pub core_config: CoreConfig,
    /// Incarnation of `node`: bumped by each rebuild after a write error.
    pub generation: u64,
    pub send_accepts_before_persist: bool,
    pub transport: Arc<TransportHandle>,
    pub shared: Arc<Shared>,
    /// Where this node's proposers wait (`slot.rs`).
    bells: Arc<Bells>,
    /// Rung by proposers once those a hold awaits are queued.
    doorbell: Arc<Doorbell>,
    pub commands: Receiver<Command>,
    pub network: Receiver<Message>,
    pub storage_events: Receiver<StorageEvent>,
    pub stop: Receiver<()>,
    /// How often the core ticks, and when next.
    tick: Duration,
    next_tick: Cell<Instant>,
    /// Where the SMT sleeps between rounds; producers notify it.
    wakeup: Arc<Wakeup>,
    pub storage: Sender<StorageInput>,
    pub proposals: HashMap<ReqId, ProposalReply>,
    /// Proposals taken this round (or held over from earlier ones), handed
    /// to the core together (see `propose_batched`).
    batched: Vec<(Value, ProposalReply)>,
    gather: Gather,
    subscribers: Vec<Sender<ChosenItem>>,
    ordered: Vec<OrderedSubscriber>,
    /// Highest index handed to subscribers. A rebuilt core delivers again
    /// from what storage holds; those repeats are skipped.
    delivered_through: Index,
    /// Storage events taken while waiting to hand over a job.
    stashed_events: VecDeque<StorageEvent>,
    last_leader: (Role, Option<NodeId>),
}

enum Input {
    Event(StorageEvent),
    Message(Message),
    Command(Command),
    Tick,
    Stop,
}

/// Whether the loop goes on.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

pub(crate) struct StateMachineParts {
    pub node: Node,
    pub core_config: CoreConfig,
    pub send_accepts_before_persist: bool,
    /// Longest hold of new proposals (see [`Gather`]); zero = off.
    pub propose_gather: Duration,
    pub transport: Arc<TransportHandle>,
    pub shared: Arc<Shared>,
    pub bells: Arc<Bells>,
    pub doorbell: Arc<Doorbell>,
    pub commands: Receiver<Command>,
    pub network: Receiver<Message>,
    pub storage_events: Receiver<StorageEvent>,
    pub stop: Receiver<()>,
    pub tick: Duration,
    pub wakeup: Arc<Wakeup>,
    pub storage: Sender<StorageInput>,
}

impl StateMachine {
    pub fn new(parts: StateMachineParts) -> StateMachine {
        let status = parts.node.status();
        parts.shared.publish(status.clone());
        StateMachine {
            delivered_through: parts.node.chosen_through(),
            last_leader: (status.role, status.leader),
            node: parts.node,
            core_config: parts.core_config,
            generation: 0,
            send_accepts_before_persist: parts.send_accepts_before_persist,
            transport: parts.transport,
            shared: parts.shared,
            bells: parts.bells,
            doorbell: parts.doorbell,
            commands: parts.commands,
            network: parts.network,
            storage_events: parts.storage_events,
            stop: parts.stop,
            tick: parts.tick,
            next_tick: Cell::new(Instant::now() + parts.tick),
            wakeup: parts.wakeup,
            storage: parts.storage,
            proposals: HashMap::new(),
            batched: Vec::new(),
            gather: Gather::new(parts.propose_gather),
            subscribers: Vec::new(),
            ordered: Vec::new(),
            stashed_events: VecDeque::new(),
        }
    }

    pub fn run(mut self) {
        loop {
            let mut flow = Flow::Continue;
            let mut taken = 0;
            while let Some(event) = self.stashed_events.pop_front() {
                taken += 1;
                if self.handle(Input::Event(event)) == Flow::Stop {
                    flow = Flow::Stop;
                    break;
                }
            }
            if flow == Flow::Continue && taken == 0 {
                // None: the hold of the proposals taken so far is over.
                if let Some(input) = self.wait_input(self.gather.until) {
                    flow = self.handle(input);
                    taken = 1;
                }
            }
            while flow == Flow::Continue && taken < ROUND_INPUTS_MAX {
                let Some(input) = self.try_input() else {
                    break;
                };
                flow = self.handle(input);
                taken += 1;
            }
            if flow == Flow::Stop || !self.gather.hold(self.batched.len()) {
                self.propose_batched();
            } else {
                Counters::add(&self.shared.counters.held_rounds, 1);
            }
            Counters::add(&self.shared.counters.rounds, 1);
            if self.flush_ready() == Flow::Stop {
                flow = Flow::Stop;
            }
            self.publish_status();
            if flow == Flow::Stop {
                break;
            }
        }
        self.finish();
    }

    /// Waits for the next input (the first in `try_input`'s priority
    /// order), or until `deadline` (then whatever is queued, or None; also
    /// None when a doorbell rung early finds nothing queued yet). Sleeps on
    /// the [`Wakeup`], at most until the next tick.
    ///
    /// While proposals are held (`deadline` set) it does not wake for each
    /// command but once the awaited proposers' commands are all queued
    /// ([`Doorbell`]); other inputs wake it as usual. A command other than
    /// a proposal (a subscription, a checkpoint) may then wait for the end
    /// of the hold, at most `propose_gather_us`.
    fn wait_input(&self, deadline: Option<Instant>) -> Option<Input> {
        let expecting = deadline.is_some();
        // Never more than the queue holds, or no one could ring.
        let count = self.gather.awaited.clamp(1, COMMAND_QUEUE_MAX / 2);
        let enough_queued = expecting && self.doorbell.expect(count, &self.commands);
        let input = loop {
            // Commands wait while the hold expects more of them.
            let held = expecting && !enough_queued && !self.doorbell.is_rung();
            if let Some(input) = self.try_input_unless_held(held) {
                break Some(input);
            }
            if expecting && !held {
                break None;
            }
            let now = Instant::now();
            if deadline.is_some_and(|deadline| now >= deadline) {
                // The hold is over: whatever is queued, or None.
                break self.try_input();
            }
            let next_tick = self.next_tick.get();
            let wake_by = deadline.map_or(next_tick, |deadline| deadline.min(next_tick));
            self.wakeup.sleep_until(wake_by, || self.input_queued(held));
        };
        if expecting {
            self.doorbell.clear();
        }
        input
    }

    /// Whether an input is queued or a tick is due. While `held`, commands
    /// do not count; a ring of the doorbell stands for them.
    fn input_queued(&self, held: bool) -> bool {
        !self.storage_events.is_empty()
            || !self.stop.is_empty()
            || !self.network.is_empty()
            || if held {
                self.doorbell.is_rung()
            } else {
                !self.commands.is_empty()
            }
            || Instant::now() >= self.next_tick.get()
    }

    /// [`StateMachine::try_input`], leaving commands queued while `held`.
    fn try_input_unless_held(&self, held: bool) -> Option<Input> {
        if !held {
            return self.try_input();
        }
        self.try_event_stop_or_message().or_else(|| self.try_tick())
    }

    /// The next queued input, if any. Storage events come first: they
    /// carry this node's own votes, which unblock everything else; then
    /// the stop signal, peer messages, commands, ticks.
    fn try_input(&self) -> Option<Input> {
        if let Some(input) = self.try_event_stop_or_message() {
            return Some(input);
        }
        match self.commands.try_recv() {
            Ok(command) => return Some(Input::Command(command)),
            // Every handle is gone (it sends the stop signal too).
            Err(TryRecvError::Disconnected) => return Some(Input::Stop),
            Err(TryRecvError::Empty) => {}
        }
        self.try_tick()
    }

    fn try_event_stop_or_message(&self) -> Option<Input> {
        match self.storage_events.try_recv() {
            Ok(event) => return Some(Input::Event(event)),
            Err(TryRecvError::Disconnected) => {
                return Some(Input::Event(StorageEvent::Failed {
                    reason: "the storage thread exited".to_string(),
                }))
            }
            Err(TryRecvError::Empty) => {}
        }
        match self.stop.try_recv() {
            Ok(()) | Err(TryRecvError::Disconnected) => return Some(Input::Stop),
            Err(TryRecvError::Empty) => {}
        }
        match self.network.try_recv() {
            Ok(msg) => Some(Input::Message(msg)),
            // The transport owns the only other sender; it is gone only at
            // shutdown.
            Err(TryRecvError::Disconnected) => Some(Input::Stop),
            Err(TryRecvError::Empty) => None,
        }
    }

    /// A tick, once one is due; the next is due a tick later (ticks missed
    /// while the SMT was busy are not made up).
    fn try_tick(&self) -> Option<Input> {
        let now = Instant::now();
        if now < self.next_tick.get() {
            return None;
        }
        self.next_tick.set(now + self.tick);
        Some(Input::Tick)
    }

    /// Handles one input. Proposals wait in `batched` for the end of the
    /// round (or longer, see [`Gather`]): inputs taken after them in the
    /// same round reach the core first, as if they had arrived first.
    fn handle(&mut self, input: Input) -> Flow {
        match input {
            Input::Event(event) => return self.on_storage_event(event),
            Input::Message(msg) => self.node.step(msg),
            Input::Command(command) => self.on_command(command),
            Input::Tick => self.node.tick(),
            Input::Stop => return Flow::Stop,
        }
        Flow::Continue
    }

    /// Hands the proposals taken so far to the core as one batch
    /// (`Node::propose_batch`: the same as one by one, with the duplicate
    /// window's cache misses overlapped).
    fn propose_batched(&mut self) {
        if self.batched.is_empty() {
            return;
        }
        Counters::add(&self.shared.counters.proposals, self.batched.len() as u64);
        self.bells.next_round();
        let (values, replies): (Vec<Value>, Vec<(ReqId, ProposalReply)>) = self
            .batched
            .drain(..)
            .map(|(value, reply)| {
                let reqid = value.reqid().unwrap_or(0);
                (value, (reqid, reply))
            })
            .unzip();
        let results = self.node.propose_batch(values);
        for (result, (reqid, reply)) in results.into_iter().zip(replies) {
            match result {
                // The core refuses a reqid already pending, so the slot is
                // free.
                Ok(()) => {
                    self.proposals.insert(reqid, reply);
                }
                Err(refused) => reply.send(Err(ProposalError::Rejected(refused))),
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            // Proposed with the rest of the round's (`propose_batched`).
            Command::Propose { value, reply } => {
                self.gather.proposal_arrived();
                self.batched.push((value, reply));
            }
            Command::Subscribe { items } => self.subscribers.push(items),
            Command::SubscribeOrdered {
                from,
                items,
                live_from,
            } => {
                let next = from.max(self.delivered_through + 1);
                // The stream reads everything below `next` from storage.
                // Every chosen record up to `delivered_through` is in a job
                // already queued to the ST, and the stream's reads queue
                // behind it.
                if live_from.send(next).is_ok() {
                    self.ordered.push(OrderedSubscriber { items, next });
                }
            }
            Command::Checkpoint { index, reply } => {
                // Keep the dedup history: recovery reads the reqids of its
                // indices from storage to suppress duplicates after a restart.
                let through = index
                    .min(self.node.chosen_through())
                    .saturating_sub(self.core_config.dedup_history());
                let input = StorageInput::Compact {
                    through,
                    reply: reply.clone(),
                };
                if !self.send_to_storage(input) {
                    let _ = reply.send(Err(Error::Stopped {
                        reason: self.shared.stop_reason(),
                    }));
                }
            }
        }
    }

    fn on_storage_event(&mut self, event: StorageEvent) -> Flow {
        match event {
            StorageEvent::Released {
                generation,
                messages,
            } => {
                // Messages of an older incarnation belong to a core that no
                // longer exists.
                if generation == self.generation {
                    for msg in messages {
                        self.node.step(msg);
                    }
                }
                Flow::Continue
            }
            StorageEvent::Rebuilt {
                generation,
                recovered,
                cause,
            } => {
                let summary = (
                    recovered.chosen_through,
                    recovered.instances.len(),
                    recovered.node.max_round,
                );
                // A fresh random stream for the new incarnation, so its
                // election jitter does not replay the first one's.
                let mut core_config = self.core_config.clone();
                core_config.rng_seed ^= generation.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                match Node::restore(core_config, *recovered) {
                    Ok(node) => {
                        self.node = node;
                        self.generation = generation;
                        warn!(
                            generation,
                            chosen_through = summary.0,
                            instances = summary.1,
                            max_round = summary.2,
                            %cause,
                            "core rebuilt from storage after a write error"
                        );
                        self.fail_proposals(|| ProposalError::Aborted {
                            reason: cause.clone(),
                        });
                        Flow::Continue
                    }
                    Err(refused) => {
                        self.stop_with(format!("cannot rebuild the core: {refused}"));
                        Flow::Stop
                    }
                }
            }
            StorageEvent::Failed { reason } => {
                self.stop_with(reason);
                Flow::Stop
            }
        }
    }

    fn stop_with(&mut self, reason: String) {
        error!(%reason, "node stopped");
        self.shared.fail(reason);
    }

    /// Takes the core's output and routes it (see `spaxos_core::Ready`).
    fn flush_ready(&mut self) -> Flow {
        if !self.node.has_ready() {
            return Flow::Continue;
        }
        let ready = self.node.ready();
        let (messages_now, messages_after_write) = if self.send_accepts_before_persist {
            (ready.messages_now, Vec::new())
        } else {
            (Vec::new(), ready.messages_now)
        };
        let job = Job {
            generation: self.generation,
            records: ready.records,
            messages: ready.messages,
            messages_after_write,
            reads: ready.reads,
        };
        // The job goes first: a caller told "chosen at i" that then asks
        // get(i) finds the value, since its request queues behind this job.
        // It also goes before `messages_now`: waking the NT lets it run at
        // once on this core, and with it the peer threads its socket writes
        // wake, before this thread hands over the job. Sent first, the
        // accepts left the leader's own write 120-200 us behind them, the
        // round's last vote to become durable.
        let mut flow = Flow::Continue;
        if !job.is_empty() && !self.send_to_storage(StorageInput::Job(job)) {
            self.stop_with("the storage thread exited".to_string());
            flow = Flow::Stop;
        }
        // These promise nothing about local durable state; the leader's own
        // vote is in `ready.messages` and still waits for the write.
        self.transport.send_batch(messages_now);
        for item in ready.chosen {
            self.deliver(item);
        }
        let mut answered = 0;
        let mut rings = Rings::default();
        for (reqid, outcome) in ready.outcomes {
            answered += usize::from(self.resolve(reqid, outcome, &mut rings));
        }
        rings.ring();
        self.gather.answered(answered);
        flow
    }

    /// Hands `input` to the ST, waiting while its queue is full. Storage
    /// events that arrive meanwhile are stashed for the next round, so the
    /// ST never waits on us while we wait on it. False if the ST is gone.
    fn send_to_storage(&mut self, mut input: StorageInput) -> bool {
        loop {
            match self.storage.try_send(input) {
                Ok(()) => return true,
                Err(TrySendError::Disconnected(_)) => return false,
                Err(TrySendError::Full(back)) => input = back,
            }
            let mut select = Select::new();
            select.send(&self.storage);
            select.recv(&self.storage_events);
            select.ready();
            while let Ok(event) = self.storage_events.try_recv() {
                self.stashed_events.push_back(event);
            }
        }
    }

    fn deliver(&mut self, item: ChosenItem) {
        if item.index <= self.delivered_through {
            return;
        }
        if item.index != self.delivered_through + 1 {
            // The core delivers a contiguous prefix; ordered subscribers
            // recover from storage if this ever happens.
            warn!(
                index = item.index,
                delivered_through = self.delivered_through,
                "chosen items skipped an index"
            );
        }
        self.delivered_through = item.index;
        debug!(
            index = item.index,
            reqid = item.value.reqid().unwrap_or(0),
            values = item.value.values().len(),
            "chosen"
        );
        self.subscribers
            .retain(|items| match items.try_send(item.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    warn!(
                        index = item.index,
                        "a chosen-item subscriber fell too far behind; disconnected"
                    );
                    false
                }
                Err(TrySendError::Disconnected(_)) => false,
            });
        self.ordered.retain_mut(|subscriber| {
            if item.index < subscriber.next {
                return true;
            }
            if item.index > subscriber.next {
                return false;
            }
            match subscriber.items.try_send(item.clone()) {
                Ok(()) => {
                    subscriber.next += 1;
                    true
                }
                Err(TrySendError::Full(_)) => {
                    debug!(
                        index = item.index,
                        "an ordered stream fell behind; it continues from storage"
                    );
                    false
                }
                Err(TrySendError::Disconnected(_)) => false,
            }
        });
    }

    /// Answers the proposer of `reqid`, if it is waiting on this node; it
    /// wakes when `rings` is rung.
    fn resolve(&mut self, reqid: ReqId, outcome: Outcome, rings: &mut Rings) -> bool {
        let Some(reply) = self.proposals.remove(&reqid) else {
            return false;
        };
        reply.send_batched(Ok(outcome), rings);
        true
    }

    fn fail_proposals(&mut self, error: impl Fn() -> ProposalError) {
        for (_, reply) in self.proposals.drain() {
            reply.send(Err(error()));
        }
    }

    fn publish_status(&mut self) {
        let mut status = self.node.status();
        // A core rebuilt after a write error starts from what storage holds,
        // which may be behind what was already delivered; the application
        // saw those items, so the status does not go back.
        status.chosen_through = status.chosen_through.max(self.delivered_through);
        status.max_index = status.max_index.max(status.chosen_through);
        let leader = (status.role, status.leader);
        if leader != self.last_leader {
            info!(
                role = ?status.role,
                leader = ?status.leader,
                ballot = %status.leader_ballot,
                chosen_through = status.chosen_through,
                "leadership changed"
            );
            self.last_leader = leader;
        }
        self.shared.publish(status);
    }

    /// Stops: what the last round produced is already queued to the ST;
    /// ask it to write that and exit, and tell every waiting proposer.
    fn finish(mut self) {
        let reason = self.shared.stop_reason();
        self.fail_proposals(|| ProposalError::Stopped {
            reason: reason.clone(),
        });
        // Requests still queued: answer them rather than leave callers
        // waiting on replies that would never come.
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Propose { reply, .. } => reply.send(Err(ProposalError::Stopped {
                    reason: reason.clone(),
                })),
                Command::Checkpoint { reply, .. } => {
                    let _ = reply.send(Err(Error::Stopped {
                        reason: reason.clone(),
                    }));
                }
                Command::Subscribe { .. } | Command::SubscribeOrdered { .. } => {}
            }
        }
        let _ = self.send_to_storage(StorageInput::Shutdown);
        info!(
            chosen_through = self.node.chosen_through(),
            "state machine stopped"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_held_without_answered_proposers() {
        let mut gather = Gather::new(Duration::from_secs(60));
        assert!(!gather.hold(5));
        gather.answered(0);
        assert!(!gather.hold(5));
        gather.answered(1);
        gather.proposal_arrived();
        assert!(!gather.hold(5), "the answered proposer is back");
    }

    #[test]
    fn proposals_wait_for_the_answered_proposers() {
        let mut gather = Gather::new(Duration::from_secs(60));
        gather.answered(2);
        gather.proposal_arrived();
        assert!(gather.hold(1), "one answered proposer is still away");
        assert!(!gather.hold(0), "nothing to hold");
        gather.proposal_arrived();
        assert!(!gather.hold(2), "both are back");
        assert_eq!(gather.until, None);
    }

    #[test]
    fn a_hold_ends_at_its_window_and_forgets_the_absent() {
        let mut gather = Gather::new(Duration::from_millis(2));
        gather.answered(1);
        assert!(gather.hold(1));
        let until = gather.until.expect("a hold has an end");
        // Holding again does not move the end.
        assert!(gather.hold(2));
        assert_eq!(gather.until, Some(until));
        std::thread::sleep(Duration::from_millis(3));
        assert!(!gather.hold(2), "the window is over");
        assert_eq!(gather.awaited, 0);
        assert!(!gather.hold(3), "the absent proposer is no longer awaited");
    }

    #[test]
    fn a_zero_window_never_holds() {
        let mut gather = Gather::new(Duration::ZERO);
        gather.answered(1);
        assert!(!gather.hold(1));
    }

    #[test]
    fn proposers_answered_a_window_ago_are_not_awaited() {
        let mut gather = Gather::new(Duration::from_millis(2));
        gather.answered(3);
        std::thread::sleep(Duration::from_millis(3));
        assert!(!gather.hold(1), "nobody answered recently");
        assert_eq!(gather.awaited, 0);
        gather.answered(1);
        assert!(gather.hold(1), "a fresh answer is awaited again");
    }
}

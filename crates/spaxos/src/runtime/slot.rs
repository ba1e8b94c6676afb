//! A one-shot reply slot that can be waited on from any thread (blocking,
//! with or without a timeout) and awaited from any async runtime.
//!
//! `tokio::sync::oneshot` panics when `blocking_recv` runs inside a tokio
//! runtime and has no blocking wait with a timeout; a mutex, a futex and a
//! waker give all three without that trap.
//!
//! Blocked receivers sleep on one of a few shared [`Bells`] lanes (a futex
//! word each) rather than a condvar per slot. One round of the state machine
//! answers many proposers at once; ringing their lane wakes them all with
//! one system call, where a condvar each cost one call per proposer, each
//! liable to let the woken thread preempt the state machine before it wakes
//! the next. Proposers that submit between the same two rounds share a lane
//! ([`Bells::next_round`]), so a lane's sleepers are mostly answered
//! together; one woken for another's answer sleeps again.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Lanes per [`Bells`]: enough that proposers of the last several rounds
/// sleep apart, few enough to ring as a bit set.
const LANES: usize = 16;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The locks guard plain data with no invariant a panic could break.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where blocked receivers of one node's slots sleep.
pub(crate) struct Bells {
    lanes: [Lane; LANES],
    /// Rounds that took proposals so far: a new slot's lane.
    round: AtomicUsize,
}

#[derive(Default)]
struct Lane {
    /// Bumped by every ring; receivers sleep while it holds what they saw
    /// before they last found their slot empty.
    rung: AtomicU32,
    /// Receivers about to sleep or asleep; zero lets a ring skip the
    /// system call.
    sleepers: AtomicU32,
}

impl Bells {
    pub(crate) fn new() -> Arc<Bells> {
        Arc::new(Bells {
            lanes: Default::default(),
            round: AtomicUsize::new(0),
        })
    }

    /// The state machine took the proposals submitted so far into a round:
    /// later ones sleep on the next lane.
    pub(crate) fn next_round(&self) {
        self.round.fetch_add(1, Ordering::Relaxed);
    }

    fn ring(&self, lane: usize) {
        let lane = &self.lanes[lane];
        // SeqCst on both sides: either this load sees a receiver's
        // `sleepers` increment, or that receiver's futex wait sees the new
        // `rung` and does not sleep.
        lane.rung.fetch_add(1, Ordering::SeqCst);
        if lane.sleepers.load(Ordering::SeqCst) > 0 {
            futex::wake_all(&lane.rung);
        }
    }
}

/// The two futex operations the lanes and the SMT's [`Wakeup`] need
/// (Linux; the project's storage is Linux-only too).
///
/// [`Wakeup`]: super::queues::Wakeup
pub(super) mod futex {
    use std::sync::atomic::AtomicU32;
    use std::time::Duration;

    /// Sleeps while `word` holds `expected`, at most `timeout`. Returns at
    /// once if it does not; may return early (a ring, a signal, spuriously).
    pub(in crate::runtime) fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
        let timespec = timeout.map(|timeout| libc::timespec {
            tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: libc::c_long::from(timeout.subsec_nanos()),
        });
        let timespec_ptr = timespec
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: `word` is a live, aligned u32 for the whole call, and
        // `timespec_ptr` is null or points at a timespec on this stack.
        // FUTEX_WAIT reads the word and sleeps; it writes no user memory.
        // Every outcome (woken, EAGAIN, EINTR, ETIMEDOUT) is a return the
        // caller's loop handles by checking its slot again.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                expected,
                timespec_ptr,
            );
        }
    }

    /// Wakes every thread asleep on `word`.
    pub(in crate::runtime) fn wake_all(word: &AtomicU32) {
        // SAFETY: `word` is a live, aligned u32; FUTEX_WAKE only looks the
        // address up among sleepers and touches no user memory.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                i32::MAX,
            );
        }
    }
}

/// Lanes to ring once a batch of slots is filled
/// ([`SlotSender::send_batched`]).
#[derive(Default)]
pub(crate) struct Rings {
    bells: Option<Arc<Bells>>,
    lanes: u32,
}

const _: () = assert!(LANES <= u32::BITS as usize);

impl Rings {
    /// Wakes the receivers of every slot filled into this batch (as does
    /// dropping it: a filled slot is never left unrung).
    pub(crate) fn ring(self) {}
}

impl Drop for Rings {
    fn drop(&mut self) {
        let Some(bells) = self.bells.take() else {
            return;
        };
        let mut lanes = std::mem::take(&mut self.lanes);
        while lanes != 0 {
            let lane = lanes.trailing_zeros() as usize;
            lanes &= lanes - 1;
            bells.ring(lane);
        }
    }
}

struct State<T> {
    value: Option<T>,
    /// The sender was dropped (after sending or without sending).
    closed: bool,
    waker: Option<Waker>,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    bells: Arc<Bells>,
    lane: usize,
}

/// Creates a connected sender and receiver whose receiver sleeps on
/// `bells`.
pub(crate) fn slot<T>(bells: &Arc<Bells>) -> (SlotSender<T>, SlotReceiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            value: None,
            closed: false,
            waker: None,
        }),
        bells: Arc::clone(bells),
        lane: bells.round.load(Ordering::Relaxed) % LANES,
    });
    (
        SlotSender {
            shared: Arc::clone(&shared),
            closed: false,
        },
        SlotReceiver { shared },
    )
}

/// Fills the slot once. Dropping it unfilled closes the slot: the receiver
/// then sees `None`.
pub(crate) struct SlotSender<T> {
    shared: Arc<Shared<T>>,
    /// Filled and closed already (`send_batched`): nothing left for drop.
    closed: bool,
}

impl<T> SlotSender<T> {
    /// Fills the slot and wakes its receiver.
    pub(crate) fn send(self, value: T) {
        let mut rings = Rings::default();
        self.send_batched(value, &mut rings);
        rings.ring();
    }

    /// Fills the slot; a blocked receiver wakes when `rings` is rung (an
    /// async one at once).
    pub(crate) fn send_batched(mut self, value: T, rings: &mut Rings) {
        self.close(Some(value));
        let shared = &self.shared;
        match &rings.bells {
            None => rings.bells = Some(Arc::clone(&shared.bells)),
            // Not the batch's node: ring now rather than the wrong lanes.
            Some(bells) if !Arc::ptr_eq(bells, &shared.bells) => {
                shared.bells.ring(shared.lane);
                return;
            }
            Some(_) => {}
        }
        rings.lanes |= 1 << shared.lane;
    }

    fn close(&mut self, value: Option<T>) {
        self.closed = true;
        let waker = {
            let mut state = lock(&self.shared.state);
            if value.is_some() {
                state.value = value;
            }
            state.closed = true;
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T> Drop for SlotSender<T> {
    fn drop(&mut self) {
        if !self.closed {
            self.close(None);
            self.shared.bells.ring(self.shared.lane);
        }
    }
}

/// What a wait on the slot found.
pub(crate) enum Received<T> {
    Value(T),
    /// The sender is gone without a value.
    Closed,
    /// The deadline passed first.
    TimedOut,
}

pub(crate) struct SlotReceiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> SlotReceiver<T> {
    fn take(&self) -> Option<Received<T>> {
        let mut state = lock(&self.shared.state);
        if let Some(value) = state.value.take() {
            return Some(Received::Value(value));
        }
        state.closed.then_some(Received::Closed)
    }

    /// Blocks until the slot is filled or closed, or `deadline` passes.
    pub(crate) fn wait_deadline(&self, deadline: Option<Instant>) -> Received<T> {
        let lane = &self.shared.bells.lanes[self.shared.lane];
        loop {
            // Read before the check: a ring after the check changes it, so
            // the wait below cannot sleep through that ring.
            let seen = lane.rung.load(Ordering::SeqCst);
            if let Some(received) = self.take() {
                return received;
            }
            let timeout = match deadline {
                None => None,
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Received::TimedOut,
                },
            };
            lane.sleepers.fetch_add(1, Ordering::SeqCst);
            futex::wait(&lane.rung, seen, timeout);
            lane.sleepers.fetch_sub(1, Ordering::SeqCst);
        }
    }

    pub(crate) fn wait_timeout(&self, timeout: Duration) -> Received<T> {
        self.wait_deadline(Instant::now().checked_add(timeout))
    }
}

impl<T> Future for SlotReceiver<T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut state = lock(&self.shared.state);
        if let Some(value) = state.value.take() {
            return Poll::Ready(Some(value));
        }
        if state.closed {
            return Poll::Ready(None);
        }
        state.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_crosses_threads() {
        let (tx, rx) = slot(&Bells::new());
        std::thread::spawn(move || tx.send(7u32));
        assert!(matches!(rx.wait_deadline(None), Received::Value(7)));
    }

    #[test]
    fn dropped_sender_closes() {
        let (tx, rx) = slot::<u32>(&Bells::new());
        drop(tx);
        assert!(matches!(rx.wait_deadline(None), Received::Closed));
    }

    #[test]
    fn timeout_then_value() {
        let (tx, rx) = slot(&Bells::new());
        assert!(matches!(
            rx.wait_timeout(Duration::from_millis(5)),
            Received::TimedOut
        ));
        tx.send(1u8);
        assert!(matches!(
            rx.wait_timeout(Duration::ZERO),
            Received::Value(1)
        ));
    }

    #[test]
    fn awaitable_in_tokio() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = slot(&Bells::new());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            tx.send("done")
        });
        assert_eq!(runtime.block_on(rx), Some("done"));
    }

    /// A receiver waiting in its own thread.
    struct Waiter<T>(std::sync::mpsc::Receiver<Received<T>>);

    /// Waits on `rx` in a thread.
    fn waiter<T: Send + 'static>(rx: SlotReceiver<T>, deadline: Option<Instant>) -> Waiter<T> {
        let (done, result) = std::sync::mpsc::channel();
        std::thread::spawn(move || done.send(rx.wait_deadline(deadline)));
        Waiter(result)
    }

    impl<T> Waiter<T> {
        /// What the wait returned; a wake-up lost for good fails the test
        /// instead of hanging it.
        fn join(self) -> Received<T> {
            self.0
                .recv_timeout(Duration::from_secs(10))
                .expect("the receiver was never woken")
        }

        /// Whether the wait has not returned yet (a result taken here is
        /// lost: ask only when none is expected).
        fn still_waiting(&self) -> bool {
            matches!(self.0.try_recv(), Err(std::sync::mpsc::TryRecvError::Empty))
        }
    }

    /// Until `count` receivers are asleep on `lane` (or about to be).
    fn until_asleep(bells: &Bells, lane: usize, count: u32) {
        while bells.lanes[lane].sleepers.load(Ordering::SeqCst) < count {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn one_ring_wakes_every_receiver_of_a_batch() {
        let bells = Bells::new();
        let (senders, waiters): (Vec<_>, Vec<_>) = (0..8u32)
            .map(|i| {
                let (tx, rx) = slot(&bells);
                ((i, tx), waiter(rx, None))
            })
            .unzip();
        // Slots made between the same two rounds share a lane.
        until_asleep(&bells, 0, 8);
        let mut rings = Rings::default();
        for (i, tx) in senders {
            tx.send_batched(i, &mut rings);
        }
        assert_eq!(rings.lanes, 1, "one lane to ring");
        rings.ring();
        for (i, waiter) in waiters.into_iter().enumerate() {
            assert!(matches!(waiter.join(), Received::Value(v) if v as usize == i));
        }
    }

    #[test]
    fn a_receiver_woken_for_another_slot_sleeps_again() {
        let bells = Bells::new();
        let (first_tx, first_rx) = slot(&bells);
        let (second_tx, second_rx) = slot::<u32>(&bells);
        let first = waiter(first_rx, None);
        let second = waiter(second_rx, None);
        until_asleep(&bells, 0, 2);
        first_tx.send(1u32);
        assert!(matches!(first.join(), Received::Value(1)));
        // That ring woke the second receiver too (one futex wake for the
        // lane); whether or not it has run yet, it must not return without
        // its own value.
        until_asleep(&bells, 0, 1);
        assert!(second.still_waiting());
        second_tx.send(2);
        assert!(matches!(second.join(), Received::Value(2)));
    }

    #[test]
    fn later_rounds_sleep_on_other_lanes() {
        let bells = Bells::new();
        let (_tx, rx) = slot::<u8>(&bells);
        bells.next_round();
        let (next_tx, next_rx) = slot::<u8>(&bells);
        assert_eq!((rx.shared.lane, next_rx.shared.lane), (0, 1));
        let next = waiter(next_rx, None);
        until_asleep(&bells, 1, 1);
        next_tx.send(3);
        assert!(matches!(next.join(), Received::Value(3)));
        for _ in 0..LANES {
            bells.next_round();
        }
        let (_tx, wrapped) = slot::<u8>(&bells);
        assert_eq!(wrapped.shared.lane, 1, "lanes are reused in turn");
    }

    #[test]
    fn timed_wait_ends_on_time_despite_rings_for_others() {
        let bells = Bells::new();
        let (tx, rx) = slot::<u32>(&bells);
        let started = Instant::now();
        let timed = waiter(rx, Some(started + Duration::from_millis(50)));
        until_asleep(&bells, 0, 1);
        let other = slot::<u32>(&bells).0;
        other.send(9);
        assert!(matches!(timed.join(), Received::TimedOut));
        assert!(started.elapsed() >= Duration::from_millis(50));
        drop(tx);
    }

    #[test]
    fn dropping_an_unfilled_sender_wakes_its_receiver() {
        let bells = Bells::new();
        let (tx, rx) = slot::<u32>(&bells);
        let blocked = waiter(rx, None);
        until_asleep(&bells, 0, 1);
        drop(tx);
        assert!(matches!(blocked.join(), Received::Closed));
    }

    #[test]
    fn a_batch_across_nodes_wakes_both() {
        let (one, other) = (Bells::new(), Bells::new());
        let (one_tx, one_rx) = slot(&one);
        let (other_tx, other_rx) = slot(&other);
        let waiters = [waiter(one_rx, None), waiter(other_rx, None)];
        until_asleep(&one, 0, 1);
        until_asleep(&other, 0, 1);
        let mut rings = Rings::default();
        one_tx.send_batched(1u32, &mut rings);
        other_tx.send_batched(2, &mut rings);
        rings.ring();
        let [one, other] = waiters.map(Waiter::join);
        assert!(matches!(
            (one, other),
            (Received::Value(1), Received::Value(2))
        ));
    }

    #[test]
    fn dropped_rings_still_wake() {
        let bells = Bells::new();
        let (tx, rx) = slot(&bells);
        let blocked = waiter(rx, None);
        until_asleep(&bells, 0, 1);
        let mut rings = Rings::default();
        tx.send_batched(5u32, &mut rings);
        drop(rings);
        assert!(matches!(blocked.join(), Received::Value(5)));
    }
}

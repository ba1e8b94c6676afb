//! A one-shot reply slot that can be waited on from any thread (blocking,
//! with or without a timeout) and awaited from any async runtime.
//!
//! `tokio::sync::oneshot` panics when `blocking_recv` runs inside a tokio
//! runtime and has no blocking wait with a timeout; a mutex, a condvar and a
//! waker give all three without that trap.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

struct State<T> {
    value: Option<T>,
    /// The sender was dropped (after sending or without sending).
    closed: bool,
    waker: Option<Waker>,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    filled: Condvar,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // The lock guards plain data with no invariant a panic could break.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Creates a connected sender and receiver.
pub(crate) fn slot<T>() -> (SlotSender<T>, SlotReceiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            value: None,
            closed: false,
            waker: None,
        }),
        filled: Condvar::new(),
    });
    (
        SlotSender {
            shared: Arc::clone(&shared),
        },
        SlotReceiver { shared },
    )
}

/// Fills the slot once. Dropping it unfilled closes the slot: the receiver
/// then sees `None`.
pub(crate) struct SlotSender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> SlotSender<T> {
    pub(crate) fn send(self, value: T) {
        self.shared.lock().value = Some(value);
        // Drop wakes the receiver.
    }
}

impl<T> Drop for SlotSender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.shared.lock();
            state.closed = true;
            state.waker.take()
        };
        self.shared.filled.notify_all();
        if let Some(waker) = waker {
            waker.wake();
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
    /// Blocks until the slot is filled or closed, or `deadline` passes.
    pub(crate) fn wait_deadline(&self, deadline: Option<Instant>) -> Received<T> {
        let mut state = self.shared.lock();
        loop {
            if let Some(value) = state.value.take() {
                return Received::Value(value);
            }
            if state.closed {
                return Received::Closed;
            }
            match deadline {
                None => {
                    state = self
                        .shared
                        .filled
                        .wait(state)
                        .unwrap_or_else(|e| e.into_inner())
                }
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Received::TimedOut;
                    }
                    state = self
                        .shared
                        .filled
                        .wait_timeout(state, deadline - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }

    pub(crate) fn wait_timeout(&self, timeout: Duration) -> Received<T> {
        self.wait_deadline(Instant::now().checked_add(timeout))
    }
}

impl<T> Future for SlotReceiver<T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut state = self.shared.lock();
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
        let (tx, rx) = slot();
        std::thread::spawn(move || tx.send(7u32));
        assert!(matches!(rx.wait_deadline(None), Received::Value(7)));
    }

    #[test]
    fn dropped_sender_closes() {
        let (tx, rx) = slot::<u32>();
        drop(tx);
        assert!(matches!(rx.wait_deadline(None), Received::Closed));
    }

    #[test]
    fn timeout_then_value() {
        let (tx, rx) = slot();
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
        let (tx, rx) = slot();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            tx.send("done")
        });
        assert_eq!(runtime.block_on(rx), Some("done"));
    }
}

//! Each subscriber's bounded queue of events, from its thread's task to its stream.
//!
//! It holds nothing nearly all the time, and there is one per stream. A tokio channel allocates a
//! block of 32 slots up front and pads its state to cache lines (about 1.8 KB for a buffer of
//! events); this one is a lock, a waker and a `VecDeque` that allocates only once something is
//! queued, about 100 bytes.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;

use futures::task::AtomicWaker;

/// Creates a queue that holds at most `capacity` items.
pub(crate) fn queue<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            senders: 1,
            receiver: true,
        }),
        capacity: capacity.max(1),
        waker: AtomicWaker::new(),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

struct Shared<T> {
    state: Mutex<State<T>>,
    capacity: usize,
    waker: AtomicWaker,
}

struct State<T> {
    items: VecDeque<T>,
    /// Live senders; none left and nothing queued ends the receiver.
    senders: usize,
    /// Whether the receiver is still there.
    receiver: bool,
}

impl<T> Shared<T> {
    fn state(&self) -> MutexGuard<'_, State<T>> {
        // Every critical section is a single push, pop or flag change: never half done.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why an item was not queued; it comes back with the error.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TrySendError<T> {
    /// The queue holds `capacity` items.
    Full(T),
    /// The receiver is gone.
    Closed(T),
}

/// The sending end; clones send into the same queue.
pub(crate) struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Sender<T> {
    /// Queues `item` without waiting.
    pub(crate) fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        {
            let mut state = self.shared.state();
            if !state.receiver {
                return Err(TrySendError::Closed(item));
            }
            if state.items.len() >= self.shared.capacity {
                return Err(TrySendError::Full(item));
            }
            state.items.push_back(item);
        }
        self.shared.waker.wake();
        Ok(())
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.state().senders += 1;
        Sender {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let last = {
            let mut state = self.shared.state();
            state.senders -= 1;
            state.senders == 0
        };
        if last {
            self.shared.waker.wake();
        }
    }
}

/// The receiving end.
pub(crate) struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Receiver<T> {
    /// The next item; None once every sender is gone and the queue is empty.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        // Like tokio's own channels, take part in cooperative scheduling: a task that always
        // finds something queued still yields now and then.
        tokio::task::consume_budget().await;
        poll_fn(|cx| {
            if let Some(item) = self.take() {
                return Poll::Ready(item);
            }
            self.shared.waker.register(cx.waker());
            // Whatever was sent before the waker was in place is seen now.
            match self.take() {
                Some(item) => Poll::Ready(item),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// Some(next item), Some(None) at the end, None when there is nothing yet.
    fn take(&self) -> Option<Option<T>> {
        let mut state = self.shared.state();
        match state.items.pop_front() {
            Some(item) => {
                if state.items.is_empty() && state.items.capacity() > 16 {
                    // After a burst, give the memory back: the queue is usually empty.
                    state.items = VecDeque::new();
                }
                Some(Some(item))
            }
            None if state.senders == 0 => Some(None),
            None => None,
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let items = {
            let mut state = self.shared.state();
            state.receiver = false;
            std::mem::take(&mut state.items)
        };
        // Dropped outside the lock: an item may own another queue's sender.
        drop(items);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn items_arrive_in_order_and_the_end_follows_the_last_sender() {
        let (tx, mut rx) = queue(8);
        let tx2 = tx.clone();
        tx.try_send(1).unwrap();
        tx2.try_send(2).unwrap();
        drop(tx);
        assert_eq!(rx.recv().await, Some(1));
        tx2.try_send(3).unwrap();
        drop(tx2);
        assert_eq!(rx.recv().await, Some(2));
        assert_eq!(
            rx.recv().await,
            Some(3),
            "queued items outlive their sender"
        );
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_full_queue_refuses_and_a_dropped_receiver_closes_it() {
        let (tx, rx) = queue(2);
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        assert_eq!(tx.try_send(3), Err(TrySendError::Full(3)));
        drop(rx);
        assert_eq!(tx.try_send(4), Err(TrySendError::Closed(4)));
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_for_an_item_from_another_task() {
        let (tx, mut rx) = queue(1);
        let waiting = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        tx.try_send("hello").unwrap();
        assert_eq!(waiting.await.unwrap(), Some("hello"));
    }
}

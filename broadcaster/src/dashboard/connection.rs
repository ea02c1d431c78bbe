//! One dashboard stream: the threads it follows, each through its own delivery [`Feed`] (so each
//! thread is delivered exactly once, in seq order, as on a widget stream), merged into one
//! sequence of frames, and changed while it runs by the commands of
//! `POST /api/dashboard/stream/{id}`.
//!
//! Besides the feeds it watches: its token's expiry (then `expired`, and the end), the
//! membership of its threads every `ttl` (a thread that left the token's projects is `revoked`),
//! and, when it follows whole projects, the threads of every admitted notification (a thread new
//! to one of its projects is followed from its first change).

use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use futures::stream::{self, AbortHandle, Abortable, BoxStream, SelectAll, StreamExt};
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{broadcast, mpsc};
use tokio::time::{Instant, Interval, Sleep};

use super::membership::Membership;
use super::scope::Scope;
use super::wire;
use super::Registration;
use crate::delivery::{backoff, Delivery, Start, Step};
use crate::metrics::Metrics;
use crate::sse::Event;
use crate::store::Store;
use crate::stream::Slot;

/// Where a followed thread starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum From {
    /// After this seq: the client has everything up to it (0: the whole thread).
    After(i64),
    /// From now: the thread's current seq, which `joined` reports.
    Now,
}

/// A change of what a stream follows, from `POST /api/dashboard/stream/{id}`; membership is
/// checked before it is sent.
pub struct Change {
    pub follow: Vec<(Arc<str>, From)>,
    pub unfollow: Vec<Arc<str>>,
    /// Projects to follow whole (new threads included).
    pub projects: Vec<String>,
    /// Where the stream learns of threads new to its projects; subscribed before the projects'
    /// threads were listed, so that none falls in between.
    pub admitted: Option<broadcast::Receiver<Arc<str>>>,
    /// The expiry of the token that asked: the stream lives until then if that is later.
    pub deadline: Instant,
}

/// What a thread's feed yields for a dashboard stream.
enum ThreadStep {
    /// Followed: every change after this seq follows.
    Joined(i64),
    Event(Event),
}

/// A thread's step, tagged with the thread and the generation of its following; None when its
/// feed ended.
type Tagged = (Arc<str>, u64, Option<ThreadStep>);

struct Followed {
    generation: u64,
    abort: AbortHandle,
    /// The last seq written for the thread (or, before any, where it started); None until a
    /// `Now` start has read it.
    cursor: Option<i64>,
    from: From,
    /// Feeds that ended in a row without an event (a failed read, a full queue); the next waits
    /// longer.
    restarts: u32,
}

/// Everything one stream needs, and its state.
pub struct Connection {
    delivery: Delivery,
    store: Arc<dyn Store>,
    membership: Option<Arc<Membership>>,
    scope: Scope,
    commands: mpsc::Receiver<Change>,
    metrics: Metrics,
    max_threads: usize,
    max_backoff: Duration,
    deadline: Pin<Box<Sleep>>,
    recheck: Option<Interval>,
    /// The stream's place in the registry and among the open streams, given up when it ends.
    _registration: Registration,
    _slot: Slot,
    /// How many threads the stream follows, for requests to see without waiting for it.
    followed: Arc<AtomicUsize>,
    feeds: SelectAll<Abortable<BoxStream<'static, Tagged>>>,
    following: HashMap<Arc<str>, Followed>,
    /// Where each thread got to on this stream, kept after it is unfollowed: a thread followed
    /// again (new to a project, or a feed restarted) resumes after it.
    written: HashMap<Arc<str>, i64>,
    projects: HashSet<String>,
    admitted: Option<broadcast::Receiver<Arc<str>>>,
    pending: VecDeque<Bytes>,
    generations: u64,
    ended: bool,
}

/// What woke the stream.
enum Wake {
    Expired,
    Command(Option<Change>),
    Step(Tagged),
    Recheck,
    Admitted(Result<Arc<str>, broadcast::error::RecvError>),
}

impl Connection {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        delivery: Delivery,
        store: Arc<dyn Store>,
        membership: Option<Arc<Membership>>,
        scope: Scope,
        commands: mpsc::Receiver<Change>,
        metrics: Metrics,
        max_threads: usize,
        max_backoff: Duration,
        deadline: Instant,
        registration: Registration,
        slot: Slot,
        followed: Arc<AtomicUsize>,
    ) -> Self {
        metrics.dashboard.streams.inc();
        let recheck = match (&scope, &membership) {
            (Scope::Projects(_), Some(m)) => {
                let mut every = tokio::time::interval(m.ttl());
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                Some(every)
            }
            _ => None,
        };
        Connection {
            delivery,
            store,
            membership,
            scope,
            commands,
            metrics,
            max_threads,
            max_backoff,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            recheck,
            _registration: registration,
            _slot: slot,
            followed,
            feeds: SelectAll::new(),
            following: HashMap::new(),
            written: HashMap::new(),
            projects: HashSet::new(),
            admitted: None,
            pending: VecDeque::new(),
            generations: 0,
            ended: false,
        }
    }

    /// The next frame to write; None ends the stream.
    pub async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            if let Some(frame) = self.pending.pop_front() {
                return Some(frame);
            }
            if self.ended {
                return None;
            }
            // Biased, events last: a thread that left the token's projects must be dropped on
            // time however busy the other threads are (and the expiry, the changes and the
            // admitted threads, each drained in one go, are few against the events).
            let wake = tokio::select! {
                biased;
                _ = self.deadline.as_mut() => Wake::Expired,
                _ = tick(&mut self.recheck) => Wake::Recheck,
                command = self.commands.recv() => Wake::Command(command),
                admitted = recv(&mut self.admitted) => Wake::Admitted(admitted),
                Some(step) = self.feeds.next(), if !self.feeds.is_empty() => Wake::Step(step),
            };
            match wake {
                Wake::Expired => {
                    self.pending.push_back(wire::expired());
                    self.ended = true;
                }
                Wake::Command(Some(change)) => self.apply(change),
                // The registration holds the sender for as long as the stream lives.
                Wake::Command(None) => self.ended = true,
                Wake::Step((thread, generation, step)) => self.on_step(thread, generation, step),
                Wake::Recheck => {
                    Box::pin(self.recheck()).await;
                    // The next re-check is a whole period after this one ended: one that took
                    // longer than the period (a slow database) must not leave the next tick
                    // ready at once, or re-checks, polled first, would starve the events.
                    if let Some(every) = &mut self.recheck {
                        every.reset();
                    }
                }
                Wake::Admitted(admitted) => Box::pin(self.on_admitted(admitted)).await,
            }
        }
    }

    fn apply(&mut self, change: Change) {
        if change.deadline > self.deadline.deadline() {
            self.deadline.as_mut().reset(change.deadline);
        }
        for thread in &change.unfollow {
            self.unfollow(thread);
        }
        for (thread, from) in change.follow {
            if self.following.contains_key(&thread) {
                continue;
            }
            if self.following.len() >= self.max_threads {
                // The request checked the room it saw; a concurrent one took it.
                let why = format!("the stream already follows {} threads", self.max_threads);
                self.pending.push_back(wire::refused(&thread, &why));
                continue;
            }
            self.follow(thread, from, Duration::ZERO);
        }
        if !change.projects.is_empty() {
            self.projects.extend(change.projects);
            if self.admitted.is_none() {
                self.admitted = change.admitted;
            }
        }
        self.followed.store(self.following.len(), Ordering::Relaxed);
    }

    /// Starts following `thread` from `from`, after `delay`.
    fn follow(&mut self, thread: Arc<str>, from: From, delay: Duration) {
        self.generations += 1;
        let generation = self.generations;
        let (feed, abort) = stream::abortable(thread_feed(
            self.delivery.clone(),
            self.store.clone(),
            thread.clone(),
            generation,
            from,
            delay,
        ));
        self.feeds.push(feed);
        let restarts = self.following.get(&thread).map_or(0, |f| f.restarts);
        let previous = self.following.insert(
            thread,
            Followed {
                generation,
                abort,
                cursor: match from {
                    From::After(n) => Some(n),
                    From::Now => None,
                },
                from,
                restarts,
            },
        );
        match previous {
            Some(previous) => previous.abort.abort(),
            None => {
                self.metrics.dashboard.threads.inc();
            }
        }
    }

    fn unfollow(&mut self, thread: &Arc<str>) {
        if let Some(followed) = self.following.remove(thread) {
            followed.abort.abort();
            self.metrics.dashboard.threads.dec();
            self.followed.store(self.following.len(), Ordering::Relaxed);
        }
    }

    fn on_step(&mut self, thread: Arc<str>, generation: u64, step: Option<ThreadStep>) {
        let Some(followed) = self
            .following
            .get_mut(&thread)
            .filter(|f| f.generation == generation)
        else {
            // A feed replaced or unfollowed since it yielded this.
            return;
        };
        match step {
            Some(ThreadStep::Joined(at)) => {
                followed.cursor = Some(at);
                self.pending.push_back(wire::joined(&thread, at));
            }
            Some(ThreadStep::Event(event)) => {
                followed.restarts = 0;
                followed.cursor = Some(event.seq);
                self.written.insert(thread.clone(), event.seq);
                self.metrics.events_delivered.inc();
                self.pending.push_back(wire::change(&thread, &event));
            }
            None => {
                // The feed ended: its subscriber fell too far behind (this stream writes slower
                // than the thread changes), or a read failed. Follow again after what was
                // written, which the client has (or will have, once the socket drains): the
                // table fills in the rest, exactly once.
                let from = followed.cursor.map_or(followed.from, From::After);
                let restarts = followed.restarts;
                followed.restarts += 1;
                let delay = backoff(self.max_backoff)
                    .nth(restarts as usize)
                    .unwrap_or(self.max_backoff);
                tracing::debug!(%thread, ?from, ?delay, "a dashboard feed ended; following again");
                self.follow(thread, from, delay);
            }
        }
    }

    /// Drops the threads that the token no longer covers.
    async fn recheck(&mut self) {
        let Some(membership) = self.membership.clone() else {
            return;
        };
        let threads: Vec<Arc<str>> = self.following.keys().cloned().collect();
        if threads.is_empty() {
            return;
        }
        match membership.refused(&self.scope, &threads).await {
            Ok(refused) => {
                for (thread, why) in refused {
                    tracing::info!(%thread, "a followed thread left the token's projects");
                    self.unfollow(&thread);
                    self.metrics.dashboard.revoked.inc();
                    self.pending.push_back(wire::revoked(&thread, why.as_str()));
                }
            }
            // Not knowing is not covering: the stream ends, and its client follows again,
            // checked afresh.
            Err(error) => {
                tracing::warn!(error = %crate::error::chain(&error), "cannot check a dashboard stream's threads; ending it");
                self.ended = true;
            }
        }
    }

    /// Follows the threads of admitted notifications that belong to the stream's projects.
    async fn on_admitted(&mut self, first: Result<Arc<str>, broadcast::error::RecvError>) {
        let Some(membership) = self.membership.clone() else {
            return;
        };
        let mut candidates = HashSet::new();
        let mut lagged = false;
        let mut next = Some(first);
        while let Some(received) = next.take() {
            match received {
                Ok(thread) if !self.following.contains_key(&thread) => {
                    candidates.insert(thread);
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => lagged = true,
                Err(broadcast::error::RecvError::Closed) => {
                    self.admitted = None;
                    break;
                }
            }
            if candidates.len() < 1000 {
                next = self.admitted.as_mut().and_then(|rx| match rx.try_recv() {
                    Ok(thread) => Some(Ok(thread)),
                    Err(broadcast::error::TryRecvError::Lagged(n)) => {
                        Some(Err(broadcast::error::RecvError::Lagged(n)))
                    }
                    Err(_) => None,
                });
            }
        }
        let projects: Vec<String> = self.projects.iter().cloned().collect();
        let found: Vec<Arc<str>> = if lagged {
            // Some notifications went by unseen: list the projects' threads instead.
            match membership.source().threads_of(&projects).await {
                Ok(rows) => {
                    membership.remember(&rows);
                    rows.into_iter()
                        .map(|(thread, _)| Arc::from(thread))
                        .filter(|t| !self.following.contains_key(t))
                        .collect()
                }
                Err(error) => {
                    tracing::warn!(error = %crate::error::chain(&error), "cannot list a dashboard's projects; ending the stream");
                    self.ended = true;
                    return;
                }
            }
        } else {
            let candidates: Vec<Arc<str>> = candidates.into_iter().collect();
            match membership.projects_of(&candidates).await {
                Ok(of) => candidates
                    .into_iter()
                    .filter(|t| {
                        of.get(t)
                            .and_then(|p| p.as_deref())
                            .is_some_and(|p| self.projects.contains(p) && self.scope.has_project(p))
                    })
                    .collect(),
                Err(error) => {
                    tracing::warn!(error = %crate::error::chain(&error), "cannot check threads new to a dashboard; ending the stream");
                    self.ended = true;
                    return;
                }
            }
        };
        for thread in found {
            if self.following.len() >= self.max_threads {
                break;
            }
            // New to the project since the stream listed it: every change of it is news to
            // the client, unless this stream followed it before.
            let from = From::After(self.written.get(&thread).copied().unwrap_or(0));
            self.follow(thread, from, Duration::ZERO);
        }
        self.followed.store(self.following.len(), Ordering::Relaxed);
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.metrics.dashboard.streams.dec();
        self.metrics
            .dashboard
            .threads
            .dec_by(self.following.len() as i64);
    }
}

async fn tick(every: &mut Option<Interval>) {
    match every {
        Some(every) => {
            every.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn recv(
    rx: &mut Option<broadcast::Receiver<Arc<str>>>,
) -> Result<Arc<str>, broadcast::error::RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// One thread's steps for a dashboard stream: its delivery feed, from `from`, after `delay`; the
/// `Joined` step carries the seq after which every change follows. Ends with a `None` step when
/// the feed ends (or the current seq cannot be read), so that the stream can follow again.
fn thread_feed(
    delivery: Delivery,
    store: Arc<dyn Store>,
    thread: Arc<str>,
    generation: u64,
    from: From,
    delay: Duration,
) -> BoxStream<'static, Tagged> {
    let tag = thread.clone();
    let start = async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let after = match from {
            From::After(n) => n,
            // A start from the current seq rather than a live-only feed: the client learns
            // the seq, and resumes from it exactly if it reconnects before the thread changes.
            From::Now => store.current_seq(&thread).await.ok()?,
        };
        Some((delivery.feed(&thread, Start::After(after)), after))
    };
    let steps = stream::once(Box::pin(start)).flat_map(|started| match started {
        Some((feed, after)) => stream::unfold(feed, move |mut feed| async move {
            let step = match feed.next().await? {
                // Joined: every change after where the feed started follows.
                Step::Joined => ThreadStep::Joined(after),
                Step::Event(event) => ThreadStep::Event(event),
            };
            Some((Some(step), feed))
        })
        .chain(stream::once(async { None }))
        .boxed(),
        None => stream::once(async { None }).boxed(),
    });
    steps
        .map(move |step| (tag.clone(), generation, step))
        .boxed()
}

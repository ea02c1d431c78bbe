//! Which threads a project-scoped token may follow: each thread's project read in batches
//! through [`Projects`] and cached.
//!
//! The cache is safe to share between tokens and connections because it holds facts about
//! threads (thread → project, or "none"), never decisions about tokens: every check compares the
//! cached project with the asking token's own projects. An entry is trusted for `ttl` only, so a
//! thread moved to another project is refused, and dropped from streams that follow it, within
//! `ttl` (plus one read); a thread not found is cached as such for `ttl` too, so that a client
//! cannot turn unknown ids into a query each. The cache holds at most [`MAX_CACHED`] entries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::projects::{Memberships, Projects};
use super::scope::Scope;
use crate::store::StoreError;

/// The most threads whose project is remembered at once (about 150 bytes each).
pub const MAX_CACHED: usize = 200_000;
/// Threads per query.
const BATCH: usize = 1000;

/// Why a thread may not be followed with a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The token is for one thread, and this is another.
    OtherThread,
    /// The thread belongs to none of the token's projects (or to no project, or does not exist).
    OutsideProjects,
}

impl Refusal {
    /// What the client is told.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::OtherThread => "the token is for another thread",
            Refusal::OutsideProjects => "the thread is not in the token's projects",
        }
    }
}

struct Entry {
    project: Option<Arc<str>>,
    until: Instant,
}

/// Thread → project, read in batches and trusted for a while.
pub struct Membership {
    projects: Arc<dyn Projects>,
    ttl: Duration,
    cache: Mutex<HashMap<Arc<str>, Entry>>,
}

impl Membership {
    pub fn new(projects: Arc<dyn Projects>, ttl: Duration) -> Self {
        Membership {
            projects,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// How long an answer is trusted; streams check their threads again this often.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The boundary itself, for listing a project's threads.
    pub fn source(&self) -> &dyn Projects {
        &*self.projects
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Entry>> {
        // Every critical section is a look-up or an insert: never half done.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers memberships read elsewhere (a project's threads, listed).
    pub fn remember(&self, rows: &Memberships) {
        let until = Instant::now() + self.ttl;
        let mut cache = self.cache();
        make_room(&mut cache, rows.len());
        for (thread, project) in rows {
            cache.insert(
                Arc::from(thread.as_str()),
                Entry {
                    project: Some(Arc::from(project.as_str())),
                    until,
                },
            );
        }
    }

    /// The project of each thread (None: no project, or no such thread): from the cache where
    /// fresh, the rest in one query per [`BATCH`].
    pub async fn projects_of(
        &self,
        threads: &[Arc<str>],
    ) -> Result<HashMap<Arc<str>, Option<Arc<str>>>, StoreError> {
        let now = Instant::now();
        let mut known = HashMap::with_capacity(threads.len());
        let mut missing = Vec::new();
        {
            let cache = self.cache();
            for thread in threads {
                match cache.get(thread) {
                    Some(entry) if entry.until > now => {
                        known.insert(thread.clone(), entry.project.clone());
                    }
                    _ => missing.push(thread.clone()),
                }
            }
        }
        missing.sort_unstable();
        missing.dedup();
        for batch in missing.chunks(BATCH) {
            let rows = self.projects.projects_of(batch).await?;
            let found: HashMap<&str, &str> =
                rows.iter().map(|(t, p)| (t.as_str(), p.as_str())).collect();
            let until = Instant::now() + self.ttl;
            let mut cache = self.cache();
            make_room(&mut cache, batch.len());
            for thread in batch {
                let project = found.get(&**thread).map(|p| Arc::from(*p));
                cache.insert(
                    thread.clone(),
                    Entry {
                        project: project.clone(),
                        until,
                    },
                );
                known.insert(thread.clone(), project);
            }
        }
        Ok(known)
    }

    /// The threads of `threads` that `scope` does not cover, with why.
    pub async fn refused(
        &self,
        scope: &Scope,
        threads: &[Arc<str>],
    ) -> Result<Vec<(Arc<str>, Refusal)>, StoreError> {
        match scope {
            Scope::Thread(own) => Ok(other_threads(own, threads)),
            Scope::Projects(_) => {
                let projects = self.projects_of(threads).await?;
                Ok(threads
                    .iter()
                    .filter(|t| {
                        !projects
                            .get(*t)
                            .and_then(|p| p.as_deref())
                            .is_some_and(|p| scope.has_project(p))
                    })
                    .map(|t| (t.clone(), Refusal::OutsideProjects))
                    .collect())
            }
        }
    }
}

/// The threads of `threads` that are not `own`: what a one-thread token refuses (no query).
pub fn other_threads(own: &Arc<str>, threads: &[Arc<str>]) -> Vec<(Arc<str>, Refusal)> {
    threads
        .iter()
        .filter(|t| *t != own)
        .map(|t| (t.clone(), Refusal::OtherThread))
        .collect()
}

/// Keeps the cache within [`MAX_CACHED`] before `adding` more: drops expired entries first, and
/// if that is not enough, everything (a re-read costs one query per batch; unbounded memory
/// would cost the process).
fn make_room(cache: &mut HashMap<Arc<str>, Entry>, adding: usize) {
    if cache.len() + adding <= MAX_CACHED {
        return;
    }
    let now = Instant::now();
    cache.retain(|_, e| e.until > now);
    if cache.len() + adding > MAX_CACHED {
        cache.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dashboard::projects::MemProjects;
    use std::collections::BTreeSet;

    fn scope(projects: &[&str]) -> Scope {
        Scope::Projects(Arc::new(
            projects
                .iter()
                .map(|p| p.to_string())
                .collect::<BTreeSet<_>>(),
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn threads_are_checked_in_one_batch_cached_for_the_ttl_then_read_again() {
        let projects = Arc::new(MemProjects::default());
        projects.set("t1", "p");
        projects.set("t2", "q");
        let membership = Membership::new(projects.clone(), Duration::from_secs(5));
        let threads: Vec<Arc<str>> = ["t1", "t2", "t3"].map(Arc::from).to_vec();

        let refused = membership.refused(&scope(&["p"]), &threads).await.unwrap();
        assert_eq!(
            refused,
            [
                (Arc::from("t2"), Refusal::OutsideProjects),
                (Arc::from("t3"), Refusal::OutsideProjects)
            ]
        );
        assert_eq!(projects.queries(), 1, "one query for the three");
        membership.refused(&scope(&["q"]), &threads).await.unwrap();
        assert_eq!(
            projects.queries(),
            1,
            "another token's check reads the cache"
        );

        projects.set("t1", "q");
        let refused = membership.refused(&scope(&["p"]), &threads[..1]).await;
        assert!(
            refused.unwrap().is_empty(),
            "within the ttl the cached project stands"
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        let refused = membership.refused(&scope(&["p"]), &threads[..1]).await;
        assert_eq!(
            refused.unwrap(),
            [(Arc::from("t1"), Refusal::OutsideProjects)],
            "after the ttl the move is seen"
        );
    }

    #[tokio::test]
    async fn a_thread_token_covers_its_own_thread_only_without_a_query() {
        let projects = Arc::new(MemProjects::default());
        let membership = Membership::new(projects.clone(), Duration::from_secs(5));
        let own: Arc<str> = Arc::from("t1");
        let refused = membership
            .refused(&Scope::Thread(own.clone()), &[own.clone(), Arc::from("t2")])
            .await
            .unwrap();
        assert_eq!(refused, [(Arc::from("t2"), Refusal::OtherThread)]);
        assert_eq!(projects.queries(), 0);
    }
}

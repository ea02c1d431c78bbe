//! Caps on open streams per token subject and per thread, so that one token, or one thread, cannot
//! take every stream the broadcaster allows (`max_connections`). A refusal is a 429.
//!
//! A token's subject is its `sub` claim when it has one (the user the application's backend
//! minted it for), and otherwise its thread and role: every end-user token of one thread is one
//! subject, so fresh tokens from the same backend buy no more streams (as with the reply rate).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use uuid::Uuid;

use crate::auth::{Claims, Role};
use crate::error::ApiError;

/// Who holds a stream, for the per-subject cap.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Subject {
    /// The token's `sub` claim.
    Named(Box<str>),
    /// A token without `sub`: its thread and role.
    Thread(Uuid, Role),
    /// A dashboard token: what it covers (its projects, or its thread).
    Scope(Box<str>),
}

/// The caps and the streams open under them.
pub struct StreamCaps {
    per_subject: usize,
    per_thread: usize,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    subjects: HashMap<Subject, usize>,
    threads: HashMap<Uuid, usize>,
}

impl StreamCaps {
    /// At most `per_subject` streams per token subject and `per_thread` per thread.
    pub fn new(per_subject: usize, per_thread: usize) -> Self {
        StreamCaps {
            per_subject: per_subject.max(1),
            per_thread: per_thread.max(1),
            open: Mutex::new(Open::default()),
        }
    }

    fn open(&self) -> MutexGuard<'_, Open> {
        // Every change under the lock is a counter update: never half done.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a place for a stream of `claims`' thread, or says which cap refuses it (429).
    pub fn hold(self: &Arc<Self>, claims: &Claims) -> Result<Held, ApiError> {
        let subject = match &claims.sub {
            Some(sub) => Subject::Named(sub.as_str().into()),
            None => Subject::Thread(claims.feedback_id, claims.role),
        };
        let thread = claims.feedback_id;
        let mut open = self.open();
        let by_subject = open.subjects.get(&subject).copied().unwrap_or(0);
        if by_subject >= self.per_subject {
            return Err(refused(format!(
                "this token's subject has {by_subject} streams open, the most allowed; close one first"
            )));
        }
        let by_thread = open.threads.get(&thread).copied().unwrap_or(0);
        if by_thread >= self.per_thread {
            return Err(refused(format!(
                "this thread has {by_thread} streams open, the most allowed; try again later"
            )));
        }
        *open.subjects.entry(subject.clone()).or_default() += 1;
        *open.threads.entry(thread).or_default() += 1;
        Ok(Held {
            caps: self.clone(),
            subject,
            thread: Some(thread),
        })
    }

    /// Takes a place for a dashboard stream, whose subject is what its token covers (`scope`, in
    /// a canonical form). It follows many threads, so it counts against no thread's cap (its
    /// own `max_threads` bounds those).
    pub fn hold_scope(self: &Arc<Self>, scope: &str) -> Result<Held, ApiError> {
        let subject = Subject::Scope(scope.into());
        let mut open = self.open();
        let by_subject = open.subjects.get(&subject).copied().unwrap_or(0);
        if by_subject >= self.per_subject {
            return Err(refused(format!(
                "this token's scope has {by_subject} streams open, the most allowed; close one first"
            )));
        }
        *open.subjects.entry(subject.clone()).or_default() += 1;
        Ok(Held {
            caps: self.clone(),
            subject,
            thread: None,
        })
    }
}

fn refused(message: String) -> ApiError {
    ApiError::TooManyRequests {
        message,
        retry_after_secs: 5,
    }
}

/// A stream's place under the caps, given back when it is dropped.
pub struct Held {
    caps: Arc<StreamCaps>,
    subject: Subject,
    thread: Option<Uuid>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut open = self.caps.open();
        // Entries go when their count does, so the maps hold only subjects and threads with open
        // streams.
        if let Some(n) = open.subjects.get_mut(&self.subject) {
            *n -= 1;
            if *n == 0 {
                open.subjects.remove(&self.subject);
            }
        }
        if let Some(thread) = self.thread {
            if let Some(n) = open.threads.get_mut(&thread) {
                *n -= 1;
                if *n == 0 {
                    open.threads.remove(&thread);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(thread: Uuid, sub: Option<&str>, role: Role) -> Claims {
        Claims {
            feedback_id: thread,
            exp: u64::MAX / 2,
            role,
            sub: sub.map(str::to_owned),
            ..Claims::default()
        }
    }

    #[test]
    fn each_cap_holds_and_a_closed_stream_gives_its_place_back() {
        let caps = Arc::new(StreamCaps::new(2, 3));
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let first = caps.hold(&claims(a, None, Role::EndUser)).unwrap();
        let _second = caps.hold(&claims(a, None, Role::EndUser)).unwrap();
        assert!(
            caps.hold(&claims(a, None, Role::EndUser)).is_err(),
            "a third stream of one subject"
        );
        let _agency = caps.hold(&claims(a, None, Role::Agency)).unwrap();
        assert!(
            caps.hold(&claims(a, Some("ada"), Role::Agency)).is_err(),
            "a fourth stream of one thread, whoever asks"
        );
        assert!(
            caps.hold(&claims(b, None, Role::EndUser)).is_ok(),
            "another thread"
        );
        drop(first);
        assert!(
            caps.hold(&claims(a, None, Role::EndUser)).is_ok(),
            "its place came back"
        );
        assert!(caps.open().subjects.len() <= 3);
    }

    #[test]
    fn a_sub_claim_is_a_subject_of_its_own_across_threads() {
        let caps = Arc::new(StreamCaps::new(1, 10));
        let _one = caps
            .hold(&claims(Uuid::from_u128(1), Some("u1"), Role::EndUser))
            .unwrap();
        assert!(caps
            .hold(&claims(Uuid::from_u128(2), Some("u1"), Role::EndUser))
            .is_err());
        assert!(caps
            .hold(&claims(Uuid::from_u128(2), Some("u2"), Role::EndUser))
            .is_ok());
    }

    #[test]
    fn a_dashboard_scope_is_a_subject_of_its_own_and_takes_no_threads_place() {
        let caps = Arc::new(StreamCaps::new(2, 1));
        let thread = Uuid::from_u128(7);
        let widget = caps.hold(&claims(thread, None, Role::EndUser)).unwrap();
        let dashboards: Vec<Held> = (0..2)
            .map(|_| caps.hold_scope("projects:p1").expect("under the cap"))
            .collect();
        let refused = caps
            .hold_scope("projects:p1")
            .err()
            .expect("a third is over the cap");
        assert!(matches!(refused, ApiError::TooManyRequests { .. }));
        assert!(
            caps.hold_scope("projects:p2").is_ok(),
            "another scope is another subject"
        );
        drop((widget, dashboards));
        let open = caps.open();
        assert!(open.subjects.is_empty() && open.threads.is_empty());
    }

    #[test]
    fn the_maps_forget_closed_streams() {
        let caps = Arc::new(StreamCaps::new(5, 5));
        let held: Vec<Held> = (0..100)
            .map(|i| {
                caps.hold(&claims(Uuid::from_u128(i), None, Role::EndUser))
                    .unwrap()
            })
            .collect();
        drop(held);
        let open = caps.open();
        assert!(open.subjects.is_empty() && open.threads.is_empty());
    }
}

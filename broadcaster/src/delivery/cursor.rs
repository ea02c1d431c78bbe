//! Seq bookkeeping, written once: [`Cursor`], how far a reader of one thread got, and [`Pages`],
//! the paging of `Store::changes` after a point. The thread task (repairs) and each stream's
//! hand-over (catch-up) both use them.

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::store::{Change, PageSize, Store, StoreError};

/// The last seq passed on: everything at or below it has been, nothing above it yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Cursor {
    last: i64,
}

impl Cursor {
    /// A cursor that has passed on everything up to `last`.
    pub fn at(last: i64) -> Self {
        Cursor { last }
    }

    pub fn last(self) -> i64 {
        self.last
    }

    /// Takes `seq` if it is past the cursor (true); false for one already passed on.
    pub fn advance(&mut self, seq: i64) -> bool {
        if seq <= self.last {
            return false;
        }
        self.last = seq;
        true
    }

    /// Counts everything up to `seq` as passed on (for seqs the table no longer lists).
    pub fn skip_to(&mut self, seq: i64) {
        self.last = self.last.max(seq);
    }
}

/// The changes of one thread with `after < seq <= until`, read page by page in seq order, each
/// page bounded in rows and in bytes ([`PageSize`]).
pub(crate) struct Pages {
    thread: Arc<str>,
    after: i64,
    until: Option<i64>,
    size: PageSize,
    done: bool,
}

impl Pages {
    /// Pages of `thread`'s changes after `after`, up to `until` (None: all).
    pub fn new(thread: Arc<str>, after: i64, until: Option<i64>, size: PageSize) -> Self {
        Pages {
            done: until.is_some_and(|until| until <= after),
            thread,
            after,
            until,
            size: PageSize {
                rows: size.rows.max(1),
                ..size
            },
        }
    }

    /// Whether every page has been read.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Reads the next page; call [`Pages::advance`] with it once it is passed on. Reading twice
    /// without advancing reads the same page (so a failed read may simply be repeated).
    pub fn read<'a>(
        &'a self,
        store: &'a dyn Store,
    ) -> BoxFuture<'a, Result<Vec<Change>, StoreError>> {
        store.changes_page(&self.thread, self.after, self.until, self.size)
    }

    /// Moves past `page`: a page that is not full (in rows or in bytes) was the last.
    pub fn advance(&mut self, page: &[Change]) {
        match page.last() {
            Some(last) if self.size.is_full(page) && last.seq > self.after => self.after = last.seq,
            _ => self.done = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_passes_each_seq_on_once_and_in_order() {
        let mut cursor = Cursor::at(2);
        assert!(!cursor.advance(2), "already passed on");
        assert!(cursor.advance(5));
        assert!(
            !cursor.advance(4),
            "an older seq after a newer one is a duplicate"
        );
        cursor.skip_to(3);
        assert_eq!(cursor.last(), 5, "skipping back does nothing");
        cursor.skip_to(7);
        assert_eq!(cursor.last(), 7);
    }
}

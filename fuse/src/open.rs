//! Open and passthrough accounting: how many opens of a file the kernel reads by passthrough
//! and how many through this process (the kernel keeps an inode in one mode while it is
//! open), and when the cache file is closed.

use std::sync::MutexGuard;

use crate::file::{stamp, FileState, Inner};
use crate::Backend;

/// Files smaller than this are always read through this process.
pub(crate) const PASSTHROUGH_MIN: u64 = 1 << 20;

impl FileState {
    /// Whether a new open may be handed to the kernel by passthrough and a backing file set
    /// up: none is set up yet, no open reads through this process (the kernel keeps an inode
    /// in one io mode while it is open), the file is large enough (small files read faster
    /// through here than through a backing file's setup), complete, and every chunk checked
    /// by this mount (reads then no longer pass through here).
    pub(crate) fn ready_to_pass_through<B: Backend>(
        &self,
        backend: &B,
        inner: &mut MutexGuard<'_, Inner>,
    ) -> bool {
        if inner.backing.is_some() || inner.cached_opens > 0 || self.size < PASSTHROUGH_MIN {
            return false;
        }
        // Known complete and open (from the listing or an earlier open): no need to ask.
        let known = if inner.complete && (inner.file.is_some() || inner.reopen()) {
            Ok(())
        } else {
            backend
                .chunks(&self.uri, &self.key, 0, 0, false)
                .and_then(|(info, _)| inner.absorb(info))
        };
        known.is_ok() && inner.complete && self.check_all(backend, inner)
    }
}

impl Inner {
    /// Counts an open (`passthrough`: one the kernel reads by passthrough).
    pub(crate) fn opened(&mut self, passthrough: bool) {
        match passthrough {
            true => self.passthrough_opens += 1,
            false => self.cached_opens += 1,
        }
    }

    /// Counts a closed open of `st` (`passthrough`: one the kernel read by passthrough).
    pub(crate) fn closed(&mut self, passthrough: bool) {
        if passthrough {
            self.passthrough_opens = self.passthrough_opens.saturating_sub(1);
            if self.passthrough_opens == 0 {
                // The kernel drops the inode's backing with its last passthrough file.
                self.backing = None;
            }
        } else {
            self.cached_opens = self.cached_opens.saturating_sub(1);
        }
        if self.passthrough_opens == 0 && self.cached_opens == 0 {
            self.close_file();
        }
    }

    /// Closes the cache file, keeping what `fstat` says of it so that a later read opens it
    /// again as it is (its checked chunks staying checked) if it is still that file.
    pub(crate) fn close_file(&mut self) {
        if let Some((p, f)) = self.file.take() {
            self.closed = stamp(&f).ok().map(|s| (p, s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file::lock;
    use crate::test_backend::{Call, TestBackend};

    const CS: u64 = 1 << 20;

    fn file(chunks: u64, complete: bool) -> (TestBackend, FileState) {
        let data: Vec<u8> = (0..chunks * CS).map(|i| (i % 253) as u8).collect();
        let b = TestBackend::new(data, CS, complete);
        let st = FileState::new("u".into(), "k".into(), chunks * CS, Some(b.info()));
        (b, st)
    }

    #[test]
    fn passthrough_only_for_a_large_complete_file_checked_whole_with_no_open_through_here() {
        let (b, st) = file(3, true);
        let mut inner = lock(&st.inner);
        inner.opened(false);
        assert!(
            !st.ready_to_pass_through(&b, &mut inner),
            "an open reads through this process"
        );
        inner.closed(false);
        assert!(
            inner.file.is_none(),
            "the cache file closes with the last open"
        );
        assert!(st.ready_to_pass_through(&b, &mut inner));
        assert!(
            inner.checked.iter().all(|c| *c),
            "every chunk checked first"
        );
        assert!(
            inner.file.is_some(),
            "opened again as it was (no daemon call)"
        );
        assert_eq!(b.calls(), vec![]);
        drop(inner);

        // Not complete: the daemon is asked, and says it is not.
        let (b, st) = file(3, false);
        assert!(!st.ready_to_pass_through(&b, &mut lock(&st.inner)));
        // Too small to be worth it.
        let small = TestBackend::new(vec![7; 4096], CS, true);
        let st = FileState::new("u".into(), "k".into(), 4096, Some(small.info()));
        assert!(!st.ready_to_pass_through(&small, &mut lock(&st.inner)));
        // A chunk that stays corrupt: never handed to the kernel.
        let (mut b, st) = file(3, true);
        b.mends = false;
        b.corrupt(1);
        assert!(!st.ready_to_pass_through(&b, &mut lock(&st.inner)));
        assert!(b.calls().contains(&Call::Chunks {
            first: 1,
            count: 1,
            recheck: true
        }));
    }

    #[test]
    fn the_cache_file_closes_with_the_last_open_of_either_kind() {
        let (_b, st) = file(2, true);
        let mut inner = lock(&st.inner);
        inner.opened(true);
        inner.opened(false);
        inner.closed(true);
        assert!(inner.file.is_some(), "an open is left");
        inner.closed(false);
        assert!(inner.file.is_none() && inner.closed.is_some());
        assert!(inner.reopen(), "the same file, unchanged: opened again");
    }
}

//! What a lower layer remembers of its directories: an O_PATH fd for each
//! directory probed lately and, once read, the names it holds.
//!
//! A lookup asks every layer from the top until one holds the name: for each
//! layer above that one, an `fstatat` of the name and one of its `.wh.`
//! whiteout, both failing. A lower layer never changes while mounted, so one
//! `getdents` pass over a directory answers those misses for as long as the
//! directory stays cached. The names come from a readdir (which lists every
//! layer anyway) or, for a directory probed more than once, from a listing
//! made for the purpose, but only if the directory is small: listing a
//! million entries to answer two lookups would cost more than it saves.

use std::cmp::Ordering;
use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use lru::LruCache;
use parking_lot::Mutex;

use super::{Listing, RelPath};

/// Directories whose fds a lower layer keeps open.
const DIRS_PER_LAYER: usize = 128;
/// Names a lower layer keeps in memory, over all its cached directories
/// (about 20 bytes each).
const NAMES_PER_LAYER: usize = 128 * 1024;
/// The largest listing kept for one directory.
const NAMES_PER_DIR: usize = 32 * 1024;
/// A directory is listed for its probes only if its size (`st_size`, about
/// 16-32 bytes an entry on ext4 and xfs) is at most this.
pub(super) const LIST_FOR_PROBES_MAX_SIZE: i64 = 128 * 1024;
/// ...and only from its second probe on: one lookup is cheaper unlisted.
const LIST_FOR_PROBES_AFTER: u32 = 1;

const ENTRY: u8 = 1;
const WHITEOUT: u8 = 2;

/// The names of one directory of a lower layer: which exist and which are
/// whiteouts (of either format). Kept compact: the names sorted, one after
/// another, each followed by its flag byte.
#[derive(Debug)]
pub(super) struct DirNames {
    bytes: Box<[u8]>,
    starts: Box<[u32]>,
    pub opaque_marker: bool,
}

impl DirNames {
    /// The names of `listing`; `None` when there are too many to keep.
    pub fn of(listing: &Listing) -> Option<DirNames> {
        let count = listing.entries.len() + listing.whiteouts.len();
        if count > NAMES_PER_DIR {
            return None;
        }
        let mut all: Vec<(&[u8], u8)> = Vec::with_capacity(count);
        all.extend(listing.entries.iter().map(|e| (e.name.as_bytes(), ENTRY)));
        all.extend(listing.whiteouts.iter().map(|w| (w.as_bytes(), WHITEOUT)));
        all.sort_unstable();
        let mut bytes = Vec::with_capacity(all.iter().map(|(n, _)| n.len() + 1).sum());
        let mut starts: Vec<u32> = Vec::with_capacity(all.len());
        let mut last: Option<&[u8]> = None;
        for (name, flag) in all {
            if last == Some(name) {
                // A name and its `.wh.` whiteout: sorted, so the flags are adjacent.
                *bytes.last_mut().expect("a name came before") |= flag;
                continue;
            }
            starts.push(u32::try_from(bytes.len()).ok()?);
            bytes.extend_from_slice(name);
            bytes.push(flag);
            last = Some(name);
        }
        Some(DirNames {
            bytes: bytes.into(),
            starts: starts.into(),
            opaque_marker: listing.opaque_marker,
        })
    }

    pub fn len(&self) -> usize {
        self.starts.len()
    }

    /// Name `i` (in sorted order) and its flags.
    fn at(&self, i: usize) -> (&[u8], u8) {
        let start = self.starts[i] as usize;
        let end = self
            .starts
            .get(i + 1)
            .map_or(self.bytes.len(), |&s| s as usize);
        (&self.bytes[start..end - 1], self.bytes[end - 1])
    }

    fn flags(&self, name: &[u8]) -> u8 {
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let mid = low + (high - low) / 2;
            let (here, flags) = self.at(mid);
            match here.cmp(name) {
                Ordering::Less => low = mid + 1,
                Ordering::Greater => high = mid,
                Ordering::Equal => return flags,
            }
        }
        0
    }

    /// The directory holds `name` (not as a whiteout).
    pub fn has_entry(&self, name: &[u8]) -> bool {
        self.flags(name) & ENTRY != 0
    }

    /// The directory deletes `name` from the layers below: a 0/0 character
    /// device, or a `.wh.` file beside (or instead of) the name.
    pub fn has_whiteout(&self, name: &[u8]) -> bool {
        self.flags(name) & WHITEOUT != 0
    }
}

/// One cached directory of a lower layer.
#[derive(Debug)]
pub(super) struct CachedDir {
    /// O_PATH.
    pub fd: OwnedFd,
    probes: AtomicU32,
    /// Set once: the names, or `None` for a directory too big to keep.
    names: OnceLock<Option<DirNames>>,
}

impl CachedDir {
    pub fn new(fd: OwnedFd) -> CachedDir {
        CachedDir {
            fd,
            probes: AtomicU32::new(0),
            names: OnceLock::new(),
        }
    }

    /// The names, if known.
    pub fn names(&self) -> Option<&DirNames> {
        self.names.get().and_then(Option::as_ref)
    }

    /// Whether it was decided what the names are (they may be too many to keep).
    pub fn listed(&self) -> bool {
        self.names.get().is_some()
    }

    /// Counts a probe; true when it is time to list the directory for
    /// its names (asked once at most).
    pub fn wants_listing(&self) -> bool {
        !self.listed() && self.probes.fetch_add(1, Relaxed) == LIST_FOR_PROBES_AFTER
    }
}

/// The cache of one lower layer's directories: at most [`DIRS_PER_LAYER`]
/// of them and [`NAMES_PER_LAYER`] names, least recently used first out.
#[derive(Debug)]
pub(super) struct DirCache {
    lru: Mutex<LruCache<RelPath, Arc<CachedDir>>>,
    /// Names held by the directories in `lru` (changed under its lock).
    names_held: AtomicUsize,
}

impl DirCache {
    pub fn new() -> DirCache {
        DirCache {
            lru: Mutex::new(LruCache::new(
                NonZeroUsize::new(DIRS_PER_LAYER).expect("non-zero"),
            )),
            names_held: AtomicUsize::new(0),
        }
    }

    pub fn get(&self, dir: &RelPath) -> Option<Arc<CachedDir>> {
        self.lru.lock().get(dir).cloned()
    }

    /// Caches `fd` as directory `dir`; returns the entry (an earlier one
    /// if another thread was first).
    pub fn insert(&self, dir: &RelPath, fd: OwnedFd) -> Arc<CachedDir> {
        let mut lru = self.lru.lock();
        if let Some(known) = lru.get(dir) {
            return known.clone();
        }
        let entry = Arc::new(CachedDir::new(fd));
        if let Some((_, evicted)) = lru.push(dir.clone(), entry.clone()) {
            self.release(&evicted);
        }
        entry
    }

    /// Records the names of `entry` (directory `dir`), evicting other
    /// directories if the layer now holds too many names.
    pub fn set_names(&self, dir: &RelPath, entry: &Arc<CachedDir>, names: Option<DirNames>) {
        let mut lru = self.lru.lock();
        let count = names.as_ref().map_or(0, DirNames::len);
        if entry.names.set(names).is_err() {
            return; // another thread listed it first
        }
        // Counted only while cached: an evicted entry was released already.
        if !lru.peek(dir).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            return;
        }
        self.names_held.fetch_add(count, Relaxed);
        while self.names_held.load(Relaxed) > NAMES_PER_LAYER && lru.len() > 1 {
            match lru.pop_lru() {
                Some((_, evicted)) => self.release(&evicted),
                None => break,
            }
        }
    }

    /// Accounts for `evicted` leaving the cache (under the lock).
    fn release(&self, evicted: &CachedDir) {
        if let Some(names) = evicted.names() {
            self.names_held.fetch_sub(names.len(), Relaxed);
        }
    }

    pub fn clear(&self) {
        let mut lru = self.lru.lock();
        lru.clear();
        self.names_held.store(0, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use fuser::FileType;

    use super::*;
    use crate::layer::RawEntry;

    fn listing(entries: &[&str], whiteouts: &[&str]) -> Listing {
        Listing {
            entries: entries
                .iter()
                .map(|n| RawEntry {
                    name: OsString::from(n),
                    ino: 1,
                    kind: FileType::RegularFile,
                })
                .collect(),
            whiteouts: whiteouts.iter().map(OsString::from).collect(),
            opaque_marker: false,
        }
    }

    #[test]
    fn names_and_whiteouts() {
        let names = DirNames::of(&listing(&["b", "a", "ab", "z"], &["gone", "b"])).unwrap();
        assert_eq!(names.len(), 5);
        for n in ["a", "ab", "b", "z"] {
            assert!(names.has_entry(n.as_bytes()), "{n}");
        }
        for n in ["", "aa", "abc", "c", "gone", "zz"] {
            assert!(!names.has_entry(n.as_bytes()), "{n}");
        }
        assert!(names.has_whiteout(b"gone"));
        assert!(names.has_whiteout(b"b")); // a name and its `.wh.` both
        assert!(!names.has_whiteout(b"a"));
        assert!(!names.has_whiteout(b"go"));
        let empty = DirNames::of(&listing(&[], &[])).unwrap();
        assert!(!empty.has_entry(b"a") && !empty.has_whiteout(b""));
    }

    #[test]
    fn too_many_names_are_not_kept() {
        let many: Vec<String> = (0..=NAMES_PER_DIR).map(|i| format!("n{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(DirNames::of(&listing(&refs, &[])).is_none());
        assert!(DirNames::of(&listing(&refs[1..], &[])).is_some());
    }

    #[test]
    fn the_cache_keeps_to_its_name_budget() {
        let cache = DirCache::new();
        let big: Vec<String> = (0..NAMES_PER_DIR).map(|i| format!("n{i}")).collect();
        let refs: Vec<&str> = big.iter().map(String::as_str).collect();
        let fd = || OwnedFd::from(std::fs::File::open("/").unwrap());
        let dirs: Vec<RelPath> = (0..6)
            .map(|i| RelPath::from_components(format!("d{i}").as_bytes()).unwrap())
            .collect();
        for d in &dirs {
            let entry = cache.insert(d, fd());
            cache.set_names(d, &entry, DirNames::of(&listing(&refs, &[])));
            assert!(cache.names_held.load(Relaxed) <= NAMES_PER_LAYER);
        }
        // The oldest went to make room; the newest are there, names and all.
        assert!(cache.get(&dirs[0]).is_none());
        assert!(
            cache
                .get(&dirs[5])
                .unwrap()
                .names()
                .unwrap()
                .has_entry(b"n7")
        );
        cache.clear();
        assert_eq!(cache.names_held.load(Relaxed), 0);
    }
}

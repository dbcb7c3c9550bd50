//! The dentry cache: (parent inode, name) → node or "no such name".
//!
//! It is the hot path of every lookup, so it is split into shards, each an LRU
//! behind its own short-held mutex: concurrent lookups of different names
//! rarely meet on a lock, and the total size stays bounded. A hit costs no
//! syscall on the layers. The cache outlives the kernel's references (a node
//! forgotten by the kernel can be found here again without touching disk).

use std::ffi::{OsStr, OsString};
use std::hash::{BuildHasher, Hash, Hasher};
use std::num::NonZeroUsize;
use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;

use crate::inode::Node;

/// What the cache knows about a name.
#[derive(Clone, Debug)]
pub enum Dentry {
    Positive(Arc<Node>),
    /// The name does not exist (absent or whited out in every layer).
    Negative,
}

type Key = (u64, OsString);

#[derive(Debug)]
pub struct DentryCache {
    shards: Box<[Mutex<LruCache<Key, Dentry>>]>,
    hasher: std::collections::hash_map::RandomState,
}

const SHARDS: usize = 64;

impl DentryCache {
    /// A cache holding at most about `capacity` entries.
    pub fn new(capacity: usize) -> DentryCache {
        let per_shard = NonZeroUsize::new(capacity.div_ceil(SHARDS).max(16)).expect("non-zero");
        DentryCache {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(LruCache::new(per_shard)))
                .collect(),
            hasher: Default::default(),
        }
    }

    fn shard(&self, parent: u64, name: &OsStr) -> &Mutex<LruCache<Key, Dentry>> {
        let mut h = self.hasher.build_hasher();
        parent.hash(&mut h);
        name.hash(&mut h);
        &self.shards[h.finish() as usize % SHARDS]
    }

    pub fn get(&self, parent: u64, name: &OsStr) -> Option<Dentry> {
        // Borrowed-key lookup needs the owned key type; names are short.
        let key = (parent, name.to_os_string());
        self.shard(parent, name).lock().get(&key).cloned()
    }

    pub fn insert(&self, parent: u64, name: &OsStr, dentry: Dentry) {
        self.shard(parent, name)
            .lock()
            .put((parent, name.to_os_string()), dentry);
    }

    /// Forgets one name (the namespace changed under it).
    pub fn invalidate(&self, parent: u64, name: &OsStr) {
        self.shard(parent, name)
            .lock()
            .pop(&(parent, name.to_os_string()));
    }

    /// Drops everything (an explicit refresh after layers changed underneath).
    /// Empties the cache, returning the (parent, name) of every entry.
    pub fn drain_names(&self) -> Vec<(u64, OsString)> {
        let mut names = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            names.extend(shard.iter().map(|(key, _)| key.clone()));
            shard.clear();
        }
        names
    }

    pub fn clear(&self) {
        for shard in self.shards.iter() {
            shard.lock().clear();
        }
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_invalidatable() {
        let cache = DentryCache::new(64 * 16);
        for i in 0..100_000u64 {
            cache.insert(i, OsStr::new("x"), Dentry::Negative);
        }
        assert!(cache.len() <= 64 * 16, "LRU bound holds: {}", cache.len());
        cache.insert(1, OsStr::new("name"), Dentry::Negative);
        assert!(matches!(
            cache.get(1, OsStr::new("name")),
            Some(Dentry::Negative)
        ));
        assert!(cache.get(2, OsStr::new("name")).is_none());
        cache.invalidate(1, OsStr::new("name"));
        assert!(cache.get(1, OsStr::new("name")).is_none());
    }
}

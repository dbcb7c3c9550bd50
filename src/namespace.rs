//! Orders path resolution against directory renames.
//!
//! Every node knows its object by path in the layers (`NodeState`), and a
//! directory rename changes the path of everything below it: the rename
//! itself, then `move_descendants` rewriting the nodes, then the dentry
//! cache dropped. The kernel locks only the two parent directories for a
//! rename, not the directory that moves nor anything under it, so without
//! this lock a lookup inside a moving directory could read the old path
//! after the upper had changed, resolve a name to the lower object the
//! upper one hid (or to nothing), and cache that after the rename had
//! dropped the cache: a node with a stale path, which a later chmod would
//! apply to the wrong object, and which the kernel, seeing one directory
//! under two parents, answers with ESTALE.
//!
//! So each request that resolves paths holds this lock shared for its
//! whole run, and a rename that moves a directory holds it exclusively:
//! every request sees the namespace before or after it, never halfway.
//! Requests on open files (read, write, fsync) take no part; nor does the
//! kernel's invalidation after a refresh (it takes directory locks that
//! handlers hold).

use std::sync::Arc;

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

#[derive(Debug, Clone, Default)]
pub struct Namespace(Arc<RwLock<()>>);

impl Namespace {
    /// Held by a request that resolves paths. Never taken twice by one
    /// thread: a waiting rename blocks new readers (the lock is fair).
    pub fn resolving(&self) -> RwLockReadGuard<'_, ()> {
        self.0.read()
    }

    /// Held while directories move and node paths are rewritten.
    pub fn moving(&self) -> RwLockWriteGuard<'_, ()> {
        self.0.write()
    }
}

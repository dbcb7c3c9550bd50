//! Layers changed under a live mount. strata, like kernel overlayfs,
//! assumes they do not: it caches lookups (and lets the kernel cache them
//! for `timeout=`), directory fds of the lower layers, and every node's
//! place in the layers. After a change, a `SIGUSR1` to the daemon drops all
//! of that, so the next access sees the layers as they are now.
//!
//! What a refresh cannot reach: files and directories already open keep
//! the object they opened (as with any filesystem), and a process whose
//! working directory is in a changed directory sees that directory's new
//! contents only once it is looked up again by name.

use std::ffi::OsStr;
use std::sync::{Arc, OnceLock};

use fuser::{INodeNo, Notifier};

use crate::dcache::DentryCache;
use crate::fs::Strata;
use crate::inode::{InodeTable, Node};
use crate::lookup::LayerStack;
use crate::namespace::Namespace;

/// What a refresh needs of the filesystem, shared with the signal thread.
pub struct Refresher {
    stack: Arc<LayerStack>,
    nodes: Arc<InodeTable>,
    dcache: Arc<DentryCache>,
    notifier: Arc<OnceLock<Notifier>>,
    namespace: Namespace,
}

impl Strata {
    pub fn refresher(&self) -> Refresher {
        Refresher {
            stack: self.stack.clone(),
            nodes: self.nodes.clone(),
            dcache: self.dcache.clone(),
            notifier: self.notifier.clone(),
            namespace: self.namespace.clone(),
        }
    }
}

impl Refresher {
    /// Re-reads a node's attributes where its object is still the one it
    /// was (the root, a directory that got new entries). A replaced object
    /// gets a new node at its next lookup.
    fn restat(&self, node: &Node) {
        if node.orphan().is_some() {
            return;
        }
        let top = node.state().top().clone();
        if let Ok(stat) = self.stack.get(top.layer).stat(&top.path) {
            node.update(|s| {
                if (s.stat.dev, s.stat.ino) == (stat.dev, stat.ino) && !s.is_metacopy() {
                    s.stat = stat;
                }
            });
        }
    }

    /// Drops every cache of the layers' contents, strata's and the
    /// kernel's. Runs on the signal thread: the kernel takes directory
    /// locks for each invalidation, which a request handler may hold.
    pub fn refresh(&self) {
        // strata's own caches first, so no lookup the kernel makes after
        // its invalidation is answered from them; no request resolves a
        // path meanwhile, so none caches what it found before the drop.
        // (The kernel's part comes after the lock.)
        let (mut names, nodes) = {
            let _moving = self.namespace.moving();
            let mut names = self.dcache.drain_names();
            for layer in self.stack.all() {
                layer.forget_cached();
            }
            let nodes = self.nodes.all();
            for node in &nodes {
                self.restat(node);
                names.extend(node.known_names());
            }
            (names, nodes)
        };
        let Some(notifier) = self.notifier.get() else {
            return;
        };
        names.sort();
        names.dedup();
        for (parent, name) in &names {
            // ENOENT: the kernel had no such entry.
            let _ = notifier.inval_entry(INodeNo(*parent), OsStr::new(name));
        }
        for node in &nodes {
            let _ = notifier.inval_inode(INodeNo(node.ino), 0, 0);
        }
        log::info!(
            "refreshed: {} cached names and {} nodes dropped",
            names.len(),
            nodes.len()
        );
    }
}

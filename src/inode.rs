//! The node table: one [`Node`] per inode the kernel knows about, with the
//! FUSE lookup count that `forget` pays back, and the inode numbering scheme.
//!
//! Inode numbers are derived from the real inode of the object in the layer
//! that supplies it, so they are stable across remounts, equal for hard links
//! of one lower file, and equal to the `d_ino` that readdir reports (which
//! comes from the same layer). The FUSE node id *is* the inode number: that
//! is what `stat` shows.

use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use dashmap::DashMap;
use fuser::{BackingId, FileAttr, FileType, INodeNo};
use parking_lot::{Mutex, RwLock, RwLockReadGuard};

use crate::layer::{RelPath, Stat, system_time};

/// Index of a layer in the stack: the upper (when there is one) is 0, then the
/// lowers from top to bottom.
pub type LayerId = usize;

/// Where a node's content lives in one layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub layer: LayerId,
    /// The path inside that layer (differs from the merged path only for
    /// renamed directories followed through a redirect).
    pub path: RelPath,
}

/// The part of a node that namespace operations may change.
#[derive(Clone, Debug)]
pub struct NodeState {
    /// Path in the merged tree.
    pub path: RelPath,
    /// Top first. A non-directory has exactly one; a directory has every layer
    /// that is merged into it, down to the first opaque one.
    pub origins: Vec<Origin>,
    /// `lstat` of `origins[0]`.
    pub stat: Stat,
    /// Added to `stat.nlink` for the link count shown (hard links kept
    /// through the index; see `index`).
    pub nlink_bias: i64,
    /// The name `path` was deleted while other links remain: the node is
    /// served from its index entry, and writes go straight to it.
    pub detached: bool,
}

impl NodeState {
    pub fn top(&self) -> &Origin {
        &self.origins[0]
    }

    /// A metadata-only file (kernel `metacopy`): `top` holds its metadata,
    /// the second origin its data.
    pub fn is_metacopy(&self) -> bool {
        self.origins.len() > 1 && self.stat.kind() == FileType::RegularFile
    }

    /// Where a regular file's data is read from.
    pub fn data(&self) -> &Origin {
        self.origins.last().expect("a node has an origin")
    }
}

#[derive(Debug)]
pub struct Node {
    pub ino: u64,
    /// Told to the kernel with `ino`: a new object under a reused number
    /// gets the next one, so the kernel never takes it for the old inode.
    pub generation: u64,
    pub kind: FileType,
    /// The directory this node was found in (for a directory's `..`).
    parent: AtomicU64,
    lookups: AtomicU64,
    state: RwLock<NodeState>,
    /// Held while the node is copied up, so two requests never copy it twice.
    pub copy_up_lock: Mutex<()>,
    /// The (directory, name) pairs a hard-linked node was found under, so
    /// it can move to another one when the name in its path is deleted.
    names: Mutex<Vec<(u64, OsString)>>,
    /// What its open handles need.
    held: Mutex<Held>,
    /// Written through FUSE passthrough (see `mark_written_directly`).
    written_directly: AtomicBool,
    /// Deleted for good: its inode number may now name another object.
    gone: AtomicBool,
}

/// What a node keeps for its open handles, dropped with the last one.
#[derive(Debug, Default)]
struct Held {
    /// Open file handles, and how many of them go through the daemon
    /// (not FUSE passthrough): the kernel refuses to mix the two kinds on
    /// one inode, so a passthrough open needs every other handle to be one.
    open: usize,
    plain: usize,
    /// The upper copy (read-only), made while handles still read the lower
    /// file: they switch to it on their next read.
    upper_copy: Option<Arc<OwnedFd>>,
    /// The object itself (O_PATH) after its last name was deleted: fchmod,
    /// fsetxattr and the like on an open fd reach it through this alone.
    orphan: Option<Arc<OwnedFd>>,
    /// The passthrough backing file registered for this inode: one for
    /// all its passthrough handles, as the kernel wants.
    backing: Option<Arc<BackingId>>,
}

/// How an open handle is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// Reads and writes come to the daemon.
    Plain,
    /// The kernel reads and writes the backing file itself.
    Passthrough,
}

impl Node {
    pub fn new(ino: u64, parent: u64, state: NodeState) -> Node {
        Node {
            ino,
            generation: 0,
            kind: state.stat.kind(),
            parent: AtomicU64::new(parent),
            lookups: AtomicU64::new(0),
            state: RwLock::new(state),
            copy_up_lock: Mutex::new(()),
            names: Mutex::new(Vec::new()),
            held: Mutex::new(Held::default()),
            written_directly: AtomicBool::new(false),
            gone: AtomicBool::new(false),
        }
    }

    /// The object is deleted for good (an upper directory removed, the last
    /// link of an upper file gone): the filesystem may give its inode number
    /// to a new object, which must get a node of its own.
    pub fn mark_gone(&self) {
        self.gone.store(true, Ordering::Release);
    }

    pub fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }

    /// A file handle of this node was opened (as `Plain` until
    /// [`Node::serve_through`] says otherwise). Counted before the open
    /// reads the node's state, so a concurrent copy-up either is seen by
    /// the open or sees the handle.
    pub fn opened(&self) {
        let mut held = self.held.lock();
        held.open += 1;
        held.plain += 1;
    }

    /// A file handle was released; the last one drops what was held.
    pub fn closed(&self, served: Served) {
        let mut held = self.held.lock();
        if served == Served::Plain {
            held.plain -= 1;
        }
        held.open -= 1;
        if held.open == 0 {
            *held = Held::default();
        }
    }

    pub fn is_open(&self) -> bool {
        self.held.lock().open > 0
    }

    /// Makes one plain handle (the caller's, just opened) a passthrough
    /// one. An inode with passthrough handles open has a backing file, and
    /// every new handle must use it too (the kernel fails an open that
    /// mixes the two kinds): that is reused whatever `eligible` says.
    /// Else, if `eligible` and no other plain handle is open, a backing file
    /// is registered by `register`. `None`: the handle stays plain.
    pub fn serve_through(
        &self,
        eligible: bool,
        register: impl FnOnce() -> Option<BackingId>,
    ) -> Option<Arc<BackingId>> {
        let mut held = self.held.lock();
        let backing = match &held.backing {
            Some(b) => b.clone(),
            None if !eligible || held.plain > 1 => return None,
            None => {
                let b = Arc::new(register()?);
                held.backing = Some(b.clone());
                b
            }
        };
        held.plain -= 1;
        Some(backing)
    }

    /// The kernel writes this node's file without telling us (passthrough):
    /// its attributes are read afresh from then on.
    pub fn mark_written_directly(&self) {
        self.written_directly.store(true, Ordering::Relaxed);
    }

    pub fn written_directly(&self) -> bool {
        self.written_directly.load(Ordering::Relaxed)
    }

    /// (Kept only while a handle is open: the last one drops it.)
    pub fn hold_upper_copy(&self, fd: OwnedFd) {
        let mut held = self.held.lock();
        if held.open > 0 {
            held.upper_copy = Some(Arc::new(fd));
        }
    }

    pub fn upper_copy(&self) -> Option<Arc<OwnedFd>> {
        self.held.lock().upper_copy.clone()
    }

    pub fn hold_orphan(&self, fd: OwnedFd) {
        let mut held = self.held.lock();
        if held.open > 0 {
            held.orphan = Some(Arc::new(fd));
        }
    }

    /// The object of a node whose last name is gone while it is open.
    pub fn orphan(&self) -> Option<Arc<OwnedFd>> {
        self.held.lock().orphan.clone()
    }

    pub fn parent(&self) -> u64 {
        self.parent.load(Ordering::Relaxed)
    }

    pub fn state(&self) -> RwLockReadGuard<'_, NodeState> {
        self.state.read()
    }

    /// Remembers that this node has the name `name` in directory `parent`
    /// (kept only for nodes with several links).
    pub fn add_name(&self, parent: u64, name: &OsStr) {
        if self.kind == FileType::Directory || self.state.read().stat.nlink < 2 {
            return;
        }
        let mut names = self.names.lock();
        if !names.iter().any(|(p, n)| *p == parent && n == name) {
            names.push((parent, name.to_os_string()));
        }
    }

    /// Forgets a name that no longer is this node's.
    pub fn remove_name(&self, parent: u64, name: &OsStr) {
        self.names
            .lock()
            .retain(|(p, n)| !(*p == parent && n == name));
    }

    /// The names the kernel may know the node by: the last component of its
    /// path under its parent, and its other links.
    pub fn known_names(&self) -> Vec<(u64, OsString)> {
        let mut names = self.names.lock().clone();
        if let Some((_, last)) = self.state().path.split_last() {
            names.push((self.parent(), last.to_os_string()));
        }
        names
    }

    /// One known name of the node, if any.
    pub fn first_name(&self) -> Option<(u64, OsString)> {
        self.names.lock().first().cloned()
    }

    pub fn set_parent(&self, parent: u64) {
        self.parent.store(parent, Ordering::Relaxed);
    }

    /// Changes the node's state in place (every holder of the node sees it).
    pub fn update(&self, change: impl FnOnce(&mut NodeState)) {
        change(&mut self.state.write());
    }

    /// The attributes the kernel sees.
    pub fn attr(&self) -> FileAttr {
        let state = self.state.read();
        let st = &state.stat;
        // Like kernel overlayfs: a merged directory cannot know its link
        // count cheaply, so it reports 1 ("unknown", which find(1) accepts).
        let nlink = if self.kind == FileType::Directory && state.origins.len() > 1 {
            1
        } else {
            (st.nlink as i64 + state.nlink_bias).clamp(0, u32::MAX as i64) as u32
        };
        FileAttr {
            ino: INodeNo(self.ino),
            size: st.size,
            blocks: st.blocks,
            atime: system_time(st.atime),
            mtime: system_time(st.mtime),
            ctime: system_time(st.ctime),
            crtime: SystemTime::UNIX_EPOCH,
            kind: self.kind,
            perm: st.perm(),
            nlink,
            uid: st.uid,
            gid: st.gid,
            rdev: st.rdev as u32,
            blksize: st.blksize,
            flags: 0,
        }
    }
}

/// Nodes the kernel holds references to, keyed by inode number. Sharded, so
/// concurrent requests on different inodes never contend on one lock.
#[derive(Debug, Default)]
pub struct InodeTable {
    nodes: DashMap<u64, Arc<Node>>,
}

impl InodeTable {
    pub fn get(&self, ino: u64) -> Option<Arc<Node>> {
        self.nodes.get(&ino).map(|n| n.clone())
    }

    /// Every node the kernel holds.
    pub fn all(&self) -> Vec<Arc<Node>> {
        self.nodes
            .iter()
            .map(|entry| entry.value().clone())
            .collect()
    }

    /// Inserts a node the kernel may reference without a lookup (the root).
    pub fn pin(&self, node: Arc<Node>) {
        node.lookups.store(1, Ordering::Relaxed);
        self.nodes.insert(node.ino, node);
    }

    /// Counts one kernel lookup of `candidate`'s inode. When the table already
    /// holds a node for that inode (a hard link reached by another name, or a
    /// racing lookup), that node wins and is returned.
    pub fn remember(&self, candidate: Arc<Node>) -> Arc<Node> {
        // The increment happens under the shard lock, so it cannot race
        // with `forget` removing the entry.
        let entry = self.nodes.entry(candidate.ino).or_insert(candidate);
        entry.lookups.fetch_add(1, Ordering::Relaxed);
        entry.clone()
    }

    /// The node for an object just resolved as `state` with inode number
    /// `ino`: the table's, unless that one is of an object deleted for good
    /// (the upper filesystem reused its number) or of another type. The
    /// kernel still holds that one under `ino` (the FUSE node id is the
    /// inode number), so the new object gets a number of its own from
    /// `renumber`: reusing `ino` would show the kernel one node id turning
    /// into another object, which it answers with EIO, and would mix the
    /// two objects' lookup counts.
    pub fn live_or_new(
        &self,
        ino: u64,
        parent: u64,
        state: &NodeState,
        renumber: impl FnOnce() -> u64,
    ) -> Arc<Node> {
        let Some(old) = self.get(ino) else {
            return Arc::new(Node::new(ino, parent, state.clone()));
        };
        if !old.gone.load(Ordering::Acquire) && old.kind == state.stat.kind() {
            return old;
        }
        let ino = renumber();
        self.get(ino)
            .unwrap_or_else(|| Arc::new(Node::new(ino, parent, state.clone())))
    }

    /// Pays back `count` lookups; drops the node when none are left.
    pub fn forget(&self, ino: u64, count: u64) {
        self.nodes.remove_if(&ino, |_, node| {
            let before = node.lookups.load(Ordering::Relaxed);
            let after = before.saturating_sub(count);
            node.lookups.store(after, Ordering::Relaxed);
            after == 0
        });
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Calls `f` on every node (takes each shard's lock in turn).
    pub fn for_each(&self, mut f: impl FnMut(&Arc<Node>)) {
        for entry in self.nodes.iter() {
            f(entry.value());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// Turns (device, real inode) into the inode number strata shows.
///
/// With every layer on one filesystem the real inode number is already unique
/// and is used as is (like kernel overlayfs). With several filesystems, the
/// top bits carry the index of the filesystem (like overlayfs' `xino`); an
/// inode too large for the remaining bits gets a hashed number with the top
/// bit set.
#[derive(Debug)]
pub struct InoMap {
    /// Upper objects copied up from a lower one keep the lower's number:
    /// (upper device, upper inode) → number shown.
    aliases: DashMap<(u64, u64), u64>,
    devs: RwLock<Vec<u64>>,
    /// Serialises registration of devices met after the mount started.
    grow: Mutex<()>,
    /// Numbers handed out by [`InoMap::renumber`].
    renumbered: AtomicU64,
}

/// The range of [`InoMap::renumber`]'s numbers.
const RENUMBERED: u64 = 0b11 << 62;

/// FUSE reserves node id 1 for the root.
pub const ROOT_INO: u64 = 1;

impl InoMap {
    /// `layer_devs` in layer order, so that numbering is stable across mounts.
    pub fn new(layer_devs: impl IntoIterator<Item = u64>) -> InoMap {
        let mut devs: Vec<u64> = Vec::new();
        for d in layer_devs {
            if !devs.contains(&d) {
                devs.push(d);
            }
        }
        InoMap {
            aliases: DashMap::new(),
            devs: RwLock::new(devs),
            grow: Mutex::new(()),
            renumbered: AtomicU64::new(1),
        }
    }

    /// Makes the object (dev, real) show as `ino` from now on.
    pub fn alias(&self, dev: u64, real: u64, ino: u64) {
        self.aliases.insert((dev, real), ino);
    }

    /// Gives the object (dev, real) a number of its own, from a range no
    /// layer's numbers or hashed numbers reach (top two bits set), while
    /// its real number is still the kernel's name for an older object.
    pub fn renumber(&self, dev: u64, real: u64) -> u64 {
        let ino = RENUMBERED | self.renumbered.fetch_add(1, Ordering::Relaxed);
        self.alias(dev, real, ino);
        ino
    }

    /// Forgets an alias: the object is gone and its inode number may be
    /// given to a new one.
    pub fn unalias(&self, dev: u64, real: u64) {
        self.aliases.remove(&(dev, real));
    }

    fn dev_index(&self, dev: u64) -> (usize, usize) {
        {
            let devs = self.devs.read();
            if let Some(i) = devs.iter().position(|&d| d == dev) {
                return (i, devs.len());
            }
        }
        let _g = self.grow.lock();
        let mut devs = self.devs.write();
        if let Some(i) = devs.iter().position(|&d| d == dev) {
            return (i, devs.len());
        }
        devs.push(dev);
        (devs.len() - 1, devs.len())
    }

    /// The inode number for the object with real inode `real` on device `dev`.
    pub fn ino(&self, dev: u64, real: u64) -> u64 {
        if !self.aliases.is_empty()
            && let Some(ino) = self.aliases.get(&(dev, real))
        {
            return *ino;
        }
        let (index, count) = self.dev_index(dev);
        let ino = if count == 1 {
            real
        } else {
            // Leave the top bit for hashed numbers.
            let bits = usize::BITS - (count - 1).leading_zeros();
            let shift = 63 - bits;
            if real >> shift == 0 {
                real | ((index as u64) << shift)
            } else {
                hashed_ino(dev, real)
            }
        };
        if ino == ROOT_INO || ino == 0 {
            hashed_ino(dev, real)
        } else {
            ino
        }
    }
}

fn hashed_ino(dev: u64, ino: u64) -> u64 {
    // FNV-1a over both numbers: stable across runs, unlike std's RandomState.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in dev.to_le_bytes().into_iter().chain(ino.to_le_bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Bit 62 clear: the top two bits set are renumbered objects'.
    (h & !(1 << 62)) | (1 << 63)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renumbered_objects_get_numbers_nothing_else_has() {
        let map = InoMap::new([7, 8]);
        let a = map.renumber(7, 42);
        let b = map.renumber(8, 42);
        assert_ne!(a, b);
        assert_eq!(a & RENUMBERED, RENUMBERED);
        assert_eq!(map.ino(7, 42), a, "the object keeps its new number");
        for real in [1u64, 1 << 40, u64::MAX, 0xdead_beef_cafe] {
            assert_ne!(hashed_ino(7, real) & RENUMBERED, RENUMBERED);
        }
        map.unalias(7, 42);
        assert_ne!(map.ino(7, 42), a);
    }

    fn stat(dev: u64, ino: u64) -> Stat {
        Stat {
            dev,
            ino,
            mode: libc::S_IFREG | 0o644,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            size: 0,
            blocks: 0,
            blksize: 4096,
            atime: (0, 0),
            mtime: (0, 0),
            ctime: (0, 0),
        }
    }

    #[test]
    fn one_filesystem_keeps_real_numbers() {
        let map = InoMap::new([7, 7, 7]);
        assert_eq!(map.ino(7, 1234), 1234);
        assert_ne!(map.ino(7, 1), ROOT_INO);
    }

    #[test]
    fn several_filesystems_get_distinct_numbers() {
        let map = InoMap::new([7, 8]);
        let a = map.ino(7, 1234);
        let b = map.ino(8, 1234);
        assert_ne!(a, b);
        assert_eq!(a, map.ino(7, 1234), "stable");
        let huge = map.ino(8, u64::MAX >> 1);
        assert_ne!(huge, map.ino(7, u64::MAX >> 1));
    }

    #[test]
    fn lookups_and_forgets_balance() {
        let table = InodeTable::default();
        let st = stat(1, 42);
        let state = NodeState {
            path: RelPath::root(),
            origins: vec![Origin {
                layer: 0,
                path: RelPath::root(),
            }],
            stat: st,
            nlink_bias: 0,
            detached: false,
        };
        let a = Arc::new(Node::new(42, 1, state.clone()));
        let b = Arc::new(Node::new(42, 1, state));
        let first = table.remember(a.clone());
        let second = table.remember(b);
        assert!(
            Arc::ptr_eq(&first, &a) && Arc::ptr_eq(&second, &a),
            "one node per inode"
        );
        table.forget(42, 1);
        assert!(table.get(42).is_some());
        table.forget(42, 1);
        assert!(table.get(42).is_none());
    }
}

//! Open file and directory handles.
//!
//! The FUSE file handle is a key into a sharded map; the value holds what the
//! open needs afterwards: the layer fd of a file (or, for a file of a tar
//! layer, its bytes in the mapped archive), or the snapshot listing of a
//! directory.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use dashmap::DashMap;
use fuser::{BackingId, Errno, FileType, INodeNo, TimeOrNow};
use parking_lot::{Mutex, RwLock};

use crate::copy_up::UPPER;
use crate::fs::{Strata, errno};
use crate::inode::{Node, NodeState, Served};
use crate::layer::{FileData, MappedFile, Stat};
use crate::readdir::MergedEntry;
use crate::sys;

#[derive(Debug)]
pub struct OpenFile {
    fd: RwLock<Data>,
    /// Opened for writing.
    writable: bool,
    /// Whether `fd` is the upper copy; a read-only open of a lower file is
    /// switched to the upper copy once another open copies it up.
    on_upper: AtomicBool,
    node: Handle,
}

/// Counts as an open handle of its node for as long as it lives.
#[derive(Debug)]
pub struct Handle {
    node: Arc<Node>,
    passthrough: AtomicBool,
}

impl Handle {
    pub fn new(node: &Arc<Node>) -> Handle {
        node.opened();
        Handle {
            node: node.clone(),
            passthrough: AtomicBool::new(false),
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.node
            .closed(if self.passthrough.load(Ordering::Acquire) {
                Served::Passthrough
            } else {
                Served::Plain
            });
    }
}

/// What an open file reads through.
#[derive(Debug, Clone)]
pub enum Data {
    Fd(Arc<OwnedFd>),
    /// A tar layer's file, read-only: served from the mapping by the
    /// daemon (FUSE passthrough needs an fd).
    Mapped(MappedFile),
}

/// Bytes read: copied from an fd, or a range of a mapping.
pub enum ReadBytes {
    Owned(Vec<u8>),
    Mapped(MappedFile),
}

impl std::ops::Deref for ReadBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            ReadBytes::Owned(v) => v,
            ReadBytes::Mapped(m) => m,
        }
    }
}

impl OpenFile {
    pub fn new(fd: OwnedFd, on_upper: bool, writable: bool, node: Handle) -> OpenFile {
        OpenFile::of_data(FileData::Fd(fd), on_upper, writable, node)
    }

    fn of_data(data: FileData, on_upper: bool, writable: bool, node: Handle) -> OpenFile {
        OpenFile {
            fd: RwLock::new(match data {
                FileData::Fd(fd) => Data::Fd(Arc::new(fd)),
                FileData::Mapped(m) => Data::Mapped(m),
            }),
            writable,
            on_upper: AtomicBool::new(on_upper),
            node,
        }
    }

    /// The file's fd; EBADF for a file read from a mapping (it is open
    /// read-only, so nothing writes through it).
    pub fn fd(&self) -> io::Result<Arc<OwnedFd>> {
        match &*self.fd.read() {
            Data::Fd(fd) => Ok(fd.clone()),
            Data::Mapped(_) => Err(io::Error::from_raw_os_error(libc::EBADF)),
        }
    }

    /// Reads up to `size` bytes at `offset`, short only at end of file.
    pub fn read(&self, offset: u64, size: usize) -> std::io::Result<ReadBytes> {
        let fd = match &*self.fd.read() {
            Data::Fd(fd) => fd.clone(),
            Data::Mapped(m) => return Ok(ReadBytes::Mapped(m.slice(offset, size as u64))),
        };
        let mut buf = vec![0u8; size];
        let mut filled = 0;
        while filled < size {
            let n = sys::pread(fd.as_fd(), &mut buf[filled..], offset + filled as u64)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        buf.truncate(filled);
        Ok(ReadBytes::Owned(buf))
    }
}

/// Open flags passed on to the layer file; creation flags were handled.
/// Not [`NOT_PASSED`] (a passthrough handle has them all: the kernel opens
/// its backing file with the handle's own flags).
const PASSED_FLAGS: i32 =
    libc::O_ACCMODE | libc::O_NONBLOCK | libc::O_SYNC | libc::O_DSYNC | libc::O_NOATIME;

/// Open flags the daemon's fd of a file must not have, also for a create:
/// O_APPEND, because the kernel picks the offset of an appending write
/// itself (its size of the file) and writes mmap'ed pages back through any
/// writable handle of the inode, which would land at the end of the file
/// instead of at their offset; O_DIRECT, because the daemon's buffers are
/// not aligned (EINVAL).
pub(crate) const NOT_PASSED: i32 = libc::O_APPEND | libc::O_DIRECT;

/// Whether `st` (what a node's path holds now) is still the node's object:
/// the same inode, and of the node's own type (its state may have been
/// re-read from a whiteout that took the name).
fn is_node_object(node: &Node, state: &NodeState, st: &Stat) -> bool {
    (st.dev, st.ino) == (state.stat.dev, state.stat.ino) && st.kind() == node.kind
}

pub(crate) fn wants_write(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

fn time_of(t: Option<TimeOrNow>) -> Option<Option<(i64, u32)>> {
    t.map(|t| match t {
        TimeOrNow::Now => None,
        TimeOrNow::SpecificTime(st) => Some(timespec_of(st)),
    })
}

/// The timespec the caller gave, from the `SystemTime` fuser 0.18 made of
/// it. For a time before the epoch, fuser computes `EPOCH - (-sec, nsec)`
/// rather than `EPOCH - (-sec) + nsec` (so -0.5 s, the timespec (-1,
/// 500000000), arrives as -1.5 s): undone here, which the pinned fuser
/// version keeps true.
fn timespec_of(st: std::time::SystemTime) -> (i64, u32) {
    match st.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            ((d.as_secs() as i64).wrapping_neg(), d.subsec_nanos())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::timespec_of;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn times_as_fuser_0_18_decodes_them() {
        // fuser's decoding of the timespec (sec, nsec), sec < 0.
        let fuser = |sec: i64, nsec: u32| UNIX_EPOCH - Duration::new(sec.unsigned_abs(), nsec);
        assert_eq!(timespec_of(fuser(-1, 500_000_000)), (-1, 500_000_000));
        assert_eq!(timespec_of(fuser(-100, 0)), (-100, 0));
        assert_eq!(timespec_of(UNIX_EPOCH + Duration::new(5, 7)), (5, 7));
        assert_eq!(timespec_of(UNIX_EPOCH), (0, 0));
    }
}

/// The changes a `setattr` asks for.
#[derive(Debug, Default)]
pub struct AttrChange {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeOrNow>,
    pub mtime: Option<TimeOrNow>,
    pub fh: Option<u64>,
}

impl Strata {
    /// Opens a file: the top layer's copy for reading, the upper copy (after
    /// copy-up) for writing or truncating.
    pub(crate) fn open_file(&self, node: &Arc<Node>, flags: i32) -> Result<OpenFile, Errno> {
        if node.kind == FileType::Directory && wants_write(flags) {
            return Err(Errno::EISDIR);
        }
        let handle = Handle::new(node);
        if wants_write(flags) {
            self.copy_up(node).map_err(errno)?;
        }
        if let Some(orphan) = node.orphan() {
            // Its last name is gone: the object itself (as the kernel does).
            let fd = sys::reopen(orphan.as_fd(), flags & PASSED_FLAGS).map_err(errno)?;
            return Ok(OpenFile::new(fd, true, wants_write(flags), handle));
        }
        let state = node.state().clone();
        // A metadata-only file (opened to read) reads its data from below.
        let top = if state.is_metacopy() {
            state.data()
        } else {
            state.top()
        };
        let layer = self.stack.get(top.layer);
        let opened = layer.open_data(&top.path, (flags & PASSED_FLAGS) | (flags & libc::O_TRUNC));
        if !state.is_metacopy() {
            // The path is the node's only as long as no other request
            // deletes, renames or replaces the name. (The type too: a
            // whiteout put there may have been stat'ed into the node.)
            let now = match &opened {
                Ok(FileData::Fd(fd)) => sys::fstat(fd.as_fd()).map(Stat::from),
                _ => layer.stat(&top.path),
            };
            if !now.is_ok_and(|st| is_node_object(node, &state, &st)) {
                return Err(Errno::ENOENT);
            }
        }
        let data = opened.map_err(errno)?;
        if flags & libc::O_TRUNC != 0 {
            self.refresh(node);
        }
        Ok(OpenFile::of_data(
            data,
            top.layer == UPPER && self.upper.is_some(),
            wants_write(flags),
            handle,
        ))
    }

    /// The backing file to hand `file` to the kernel with (FUSE
    /// passthrough), registered through `register` on the inode's first
    /// such open; `None` to serve it here. Passthrough serves a file of a
    /// read-only mount or an upper file; a lower file of a writable mount
    /// stays here, so that a reader moves to the copy when another open
    /// copies it up (the kernel would keep reading the lower file).
    pub(crate) fn passthrough_backing(
        &self,
        file: &OpenFile,
        register: impl FnOnce(&OwnedFd) -> io::Result<BackingId>,
    ) -> Option<Arc<BackingId>> {
        let node = &file.node.node;
        if node.kind != FileType::RegularFile {
            return None;
        }
        let eligible = self.passthrough_on.load(Ordering::Relaxed)
            && (self.upper.is_none() || file.on_upper.load(Ordering::Acquire));
        let Ok(fd) = file.fd() else {
            log::debug!(
                "no passthrough for inode {}: a tar layer's file, read from the mapping",
                node.ino
            );
            return None;
        };
        let backing = node.serve_through(eligible, || match register(&fd) {
            Ok(id) => Some(id),
            // No privilege for it (rootless): never again.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                if self.passthrough_on.swap(false, Ordering::Relaxed) {
                    log::warn!(
                        "FUSE passthrough refused ({e}): reads and writes go through the daemon"
                    );
                }
                None
            }
            // This file only (a layer stacked too deep, say).
            Err(e) => {
                log::debug!("no passthrough for inode {}: {e}", node.ino);
                None
            }
        })?;
        file.node.passthrough.store(true, Ordering::Release);
        if file.writable {
            node.mark_written_directly();
        }
        Some(backing)
    }

    /// What to read through: switched to the upper copy if the file was
    /// copied up after this open (the copy-up opened it while its path was
    /// certain to be the copy's).
    pub(crate) fn read_data(&self, file: &OpenFile) -> Data {
        if !file.on_upper.load(Ordering::Acquire)
            && let Some(copy) = file.node.node.upper_copy()
        {
            *file.fd.write() = Data::Fd(copy);
            file.on_upper.store(true, Ordering::Release);
        }
        file.fd.read().clone()
    }

    /// fsync of an open file (nothing to do for one read from a mapping).
    pub(crate) fn sync_file(&self, file: &OpenFile, data_only: bool) -> io::Result<()> {
        match self.read_data(file) {
            Data::Fd(fd) => sys::fsync(fd.as_fd(), data_only),
            Data::Mapped(_) => Ok(()),
        }
    }

    /// lseek of an open file; a file read from a mapping has no holes.
    pub(crate) fn seek_file(
        &self,
        file: &OpenFile,
        offset: u64,
        whence: i32,
    ) -> io::Result<Option<u64>> {
        match self.read_data(file) {
            Data::Fd(fd) => sys::lseek(fd.as_fd(), offset, whence),
            Data::Mapped(m) => match whence {
                _ if offset >= m.len() as u64 => Ok(None),
                libc::SEEK_DATA => Ok(Some(offset)),
                libc::SEEK_HOLE => Ok(Some(m.len() as u64)),
                _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
            },
        }
    }

    /// copy_file_range from an open file to another: written out from the
    /// mapping for a file read from one.
    pub(crate) fn copy_file(
        &self,
        input: &OpenFile,
        offset_in: u64,
        output: &OpenFile,
        offset_out: u64,
        len: usize,
    ) -> io::Result<usize> {
        let dst = output.fd()?;
        match self.read_data(input) {
            Data::Fd(src) => {
                sys::copy_file_range(src.as_fd(), offset_in, dst.as_fd(), offset_out, len)
            }
            Data::Mapped(m) => {
                let bytes = m.slice(offset_in, len as u64);
                sys::pwrite_all(dst.as_fd(), &bytes, offset_out)?;
                Ok(bytes.len())
            }
        }
    }

    /// fsyncdir: the upper copy of a directory (nothing else ever changes).
    pub(crate) fn sync_dir(&self, dir: &Node, data_only: bool) -> Result<(), Errno> {
        let top = dir.state().top().clone();
        if top.layer != UPPER || self.upper.is_none() {
            return Ok(());
        }
        let fd = self
            .stack
            .get(UPPER)
            .open(&top.path, libc::O_RDONLY | libc::O_DIRECTORY)
            .map_err(errno)?;
        sys::fsync(fd.as_fd(), data_only).map_err(errno)
    }

    /// An fd of the node's object for metadata changes: the held one of an
    /// open file whose last name is gone, else its top layer's by path.
    pub(crate) fn object_fd(&self, node: &Node) -> io::Result<Arc<OwnedFd>> {
        if let Some(fd) = node.orphan() {
            return Ok(fd);
        }
        let state = node.state().clone();
        let top = state.top();
        let layer = self.writable_layer(top.layer)?;
        let fd = layer.open_path(&top.path)?;
        // Another request deleted or replaced the name meanwhile: not the
        // whiteout or the new object there now.
        if !is_node_object(node, &state, &Stat::from(sys::fstat(fd.as_fd())?)) {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        Ok(Arc::new(fd))
    }

    /// Writes through an open file and refreshes the node's attributes.
    pub(crate) fn write_file(
        &self,
        ino: INodeNo,
        file: &OpenFile,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Errno> {
        let fd = file.fd().map_err(errno)?;
        sys::pwrite_all(fd.as_fd(), data, offset).map_err(errno)?;
        self.refresh_from_fd(ino, fd.as_fd());
        Ok(())
    }

    pub(crate) fn refresh_from_fd(&self, ino: INodeNo, fd: std::os::fd::BorrowedFd<'_>) {
        if let (Ok(node), Ok(st)) = (self.node(ino), sys::fstat(fd)) {
            node.update(|s| s.stat = st.into());
        }
    }

    /// chmod, chown, truncate and utimens, after copying the node up.
    pub(crate) fn set_attr(&self, node: &Node, change: AttrChange) -> Result<(), Errno> {
        if change.size.is_some() {
            self.copy_up(node).map_err(errno)?;
        } else {
            self.copy_up_metadata(node).map_err(errno)?;
        }
        let fd = self.object_fd(node).map_err(errno)?;
        if let Some(size) = change.size {
            if node.kind == FileType::Directory {
                return Err(Errno::EISDIR);
            }
            let writable = match change.fh.and_then(|fh| self.files.get(fh)) {
                Some(file) if file.on_upper.load(Ordering::Acquire) => file.fd().map_err(errno)?,
                _ => Arc::new(sys::reopen(fd.as_fd(), libc::O_WRONLY).map_err(errno)?),
            };
            sys::ftruncate(writable.as_fd(), size).map_err(errno)?;
        }
        let recorded = (change.uid.is_some() || change.gid.is_some() || change.mode.is_some())
            && self
                .set_record(node, fd.as_fd(), change.uid, change.gid, change.mode)
                .map_err(errno)?;
        if recorded {
            // Owner and mode live in the record; the inode stays the daemon's.
        } else if change.uid.is_some() || change.gid.is_some() {
            sys::fchownat(
                fd.as_fd(),
                c"",
                change.uid.unwrap_or(u32::MAX),
                change.gid.unwrap_or(u32::MAX),
                libc::AT_EMPTY_PATH,
            )
            .map_err(errno)?;
        }
        if let Some(mode) = change.mode.filter(|_| !recorded) {
            sys::fchmod_any(fd.as_fd(), mode & 0o7777).map_err(errno)?;
        }
        if change.atime.is_some() || change.mtime.is_some() {
            sys::futimens_any(fd.as_fd(), time_of(change.atime), time_of(change.mtime))
                .map_err(errno)?;
        }
        self.refresh(node);
        Ok(())
    }
}

#[derive(Debug)]
pub struct OpenDir {
    /// The directory (its inode number is `.`'s).
    pub node: Arc<Node>,
    /// Its parent's inode number when opened, for `..`.
    pub parent_ino: u64,
    /// Listed at the first read and again at a rewind, not at opendir (as
    /// the kernel does): where the kernel keeps the listing
    /// (FOPEN_CACHE_DIR), no read may come.
    pub entries: Mutex<Option<Arc<[MergedEntry]>>>,
}

/// Handles of one kind, numbered from 1.
#[derive(Debug)]
pub struct HandleTable<T> {
    next: AtomicU64,
    open: DashMap<u64, Arc<T>>,
}

impl<T> Default for HandleTable<T> {
    fn default() -> Self {
        HandleTable {
            next: AtomicU64::new(1),
            open: DashMap::new(),
        }
    }
}

impl<T> HandleTable<T> {
    pub fn insert(&self, value: T) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.open.insert(fh, Arc::new(value));
        fh
    }

    pub fn get(&self, fh: u64) -> Option<Arc<T>> {
        self.open.get(&fh).map(|v| v.clone())
    }

    pub fn remove(&self, fh: u64) -> Option<Arc<T>> {
        self.open.remove(&fh).map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

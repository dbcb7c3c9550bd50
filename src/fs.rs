//! The `fuser::Filesystem` implementation: decodes requests, calls the module
//! that owns each concern, and encodes the replies. No policy lives here.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use log::{debug, info};

use crate::dcache::{Dentry, DentryCache};
use crate::file::{HandleTable, OpenDir, OpenFile};
use crate::inode::{InoMap, InodeTable, Node, ROOT_INO};
use crate::layer::{DirLayer, Layer, NAME_MAX, is_whiteout_name};
use crate::lookup::LayerStack;
use crate::readdir::merged_listing;
use crate::xattr;

/// What the filesystem needs to know, already validated.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Top first.
    pub lowerdirs: Vec<PathBuf>,
    pub upperdir: Option<PathBuf>,
    /// How long the kernel may cache entries and attributes.
    pub timeout: Duration,
    /// Bound of the dentry cache, in entries.
    pub dcache_entries: usize,
    /// Report `st_nlink` 1 for every directory (fuse-overlayfs `static_nlink`).
    pub static_nlink: bool,
    /// Refuse every xattr request with ENOTSUP (fuse-overlayfs `noxattrs=1`).
    pub noxattrs: bool,
}

/// Default cache lifetime: layers only change through us, so the kernel's
/// caches can live as long as it likes (fuse-overlayfs uses 1,000,000 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(86_400);

#[derive(Debug)]
pub struct Strata {
    stack: LayerStack,
    inos: InoMap,
    nodes: InodeTable,
    dcache: DentryCache,
    files: HandleTable<OpenFile>,
    dirs: HandleTable<OpenDir>,
    ttl: Duration,
    static_nlink: bool,
    noxattrs: bool,
}

fn errno(e: io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn layer_error(path: &std::path::Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("layer '{}': {e}", path.display()))
}

impl Strata {
    /// Opens every layer directory. After this returns, the paths are never
    /// used again: the caller may unmount or remove them.
    pub fn new(config: &FsConfig) -> io::Result<Strata> {
        let open = |p: &PathBuf| -> io::Result<Arc<dyn Layer>> {
            Ok(Arc::new(DirLayer::open(p).map_err(|e| layer_error(p, e))?))
        };
        let upper = config.upperdir.as_ref().map(open).transpose()?;
        let lowers = config
            .lowerdirs
            .iter()
            .map(open)
            .collect::<io::Result<Vec<_>>>()?;
        let stack = LayerStack::new(upper, lowers);
        let inos = InoMap::new(stack.iter().map(|l| l.root_dev()));
        let nodes = InodeTable::default();
        let root = stack.root_state()?;
        nodes.pin(Arc::new(Node::new(ROOT_INO, ROOT_INO, root)));
        Ok(Strata {
            stack,
            inos,
            nodes,
            dcache: DentryCache::new(config.dcache_entries),
            files: HandleTable::default(),
            dirs: HandleTable::default(),
            ttl: config.timeout,
            static_nlink: config.static_nlink,
            noxattrs: config.noxattrs,
        })
    }

    fn attr(&self, node: &Node) -> FileAttr {
        let mut attr = node.attr();
        if self.static_nlink && node.kind == FileType::Directory {
            attr.nlink = 1;
        }
        attr
    }

    fn node(&self, ino: INodeNo) -> Result<Arc<Node>, Errno> {
        self.nodes.get(ino.0).ok_or(Errno::ESTALE)
    }

    /// Resolves `name` in `parent`: from the dentry cache when possible, else
    /// top-down through the layers (and then cached, hit or miss).
    fn lookup_node(&self, parent: INodeNo, name: &OsStr) -> Result<Option<Arc<Node>>, Errno> {
        if name.len() > NAME_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        if is_whiteout_name(name.as_bytes()) {
            return Ok(None);
        }
        match self.dcache.get(parent.0, name) {
            Some(Dentry::Positive(node)) => return Ok(Some(node)),
            Some(Dentry::Negative) => return Ok(None),
            None => {}
        }
        let dir = self.node(parent)?;
        if dir.kind != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        let dir_state = dir.state().clone();
        let found = self.stack.lookup(&dir_state, name).map_err(errno)?;
        let node = found.map(|state| {
            let top = &state.stat;
            let ino = self.inos.ino(top.dev, top.ino);
            // A hard link reached by another name: share the known node.
            self.nodes
                .get(ino)
                .unwrap_or_else(|| Arc::new(Node::new(ino, parent.0, state)))
        });
        let dentry = match &node {
            Some(n) => Dentry::Positive(n.clone()),
            None => Dentry::Negative,
        };
        self.dcache.insert(parent.0, name, dentry);
        Ok(node)
    }

    fn open_dir(&self, node: &Node) -> io::Result<OpenDir> {
        let state = node.state().clone();
        let entries = merged_listing(&self.stack, &self.inos, &state)?;
        Ok(OpenDir {
            ino: node.ino,
            parent_ino: node.parent(),
            entries: entries.into(),
        })
    }

    fn reply_xattr(reply: ReplyXattr, value: &[u8], size: u32) {
        if size == 0 {
            reply.size(value.len() as u32);
        } else if value.len() > size as usize {
            reply.error(Errno::ERANGE);
        } else {
            reply.data(value);
        }
    }
}

/// An entry reply with inode 0: the kernel caches the miss for `ttl`.
fn negative_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: std::time::UNIX_EPOCH,
        mtime: std::time::UNIX_EPOCH,
        ctime: std::time::UNIX_EPOCH,
        crtime: std::time::UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

impl fuser::Filesystem for Strata {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let wanted = InitFlags::FUSE_CACHE_SYMLINKS | InitFlags::FUSE_PARALLEL_DIROPS;
        if let Err(unsupported) = config.add_capabilities(wanted) {
            debug!("kernel lacks capabilities {unsupported:?}");
        }
        info!(
            "strata serving {} layer(s){}",
            self.stack.len(),
            if self.stack.has_upper() {
                " with an upper layer"
            } else {
                ""
            }
        );
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.lookup_node(parent, name) {
            Ok(Some(node)) => {
                let node = self.nodes.remember(node);
                reply.entry(&self.ttl, &self.attr(&node), Generation(0));
            }
            Ok(None) => reply.entry(&self.ttl, &negative_attr(), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        if ino.0 != ROOT_INO {
            self.nodes.forget(ino.0, nlookup);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino) {
            Ok(node) => reply.attr(&self.ttl, &self.attr(&node)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let result = self.node(ino).and_then(|node| {
            let state = node.state();
            let top = state.top();
            self.stack.get(top.layer).readlink(&top.path).map_err(errno)
        });
        match result {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0 {
            // The write path (copy-up) is not there yet: the mount is read-only.
            return reply.error(Errno::EROFS);
        }
        let result = self.node(ino).and_then(|node| {
            let state = node.state();
            let top = state.top();
            self.stack
                .get(top.layer)
                .open(&top.path, libc::O_RDONLY)
                .map_err(errno)
        });
        match result {
            Ok(fd) => {
                let fh = self.files.insert(OpenFile::new(fd));
                // Layers change only through us, so cached pages stay valid.
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(file) = self.files.get(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        match file.read(offset, size as usize) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.files.remove(fh.0);
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let result = self.node(ino).and_then(|node| {
            if node.kind != FileType::Directory {
                return Err(Errno::ENOTDIR);
            }
            self.open_dir(&node).map_err(errno)
        });
        match result {
            Ok(dir) => {
                let fh = self.dirs.insert(dir);
                reply.opened(
                    FileHandle(fh),
                    FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
                );
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(dir) = self.dirs.get(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        // Offsets: 0 = start, 1 = after ".", 2 = after "..", n = after entry n-3.
        let dots = [
            (dir.ino, FileType::Directory, OsStr::new(".")),
            (dir.parent_ino, FileType::Directory, OsStr::new("..")),
        ];
        let all = dots.into_iter().chain(
            dir.entries
                .iter()
                .map(|e| (e.ino, e.kind, e.name.as_os_str())),
        );
        for (i, (ino, kind, name)) in all.enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs.remove(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // The upper's filesystem when there is one, else the top lower's:
        // that is where new data would go.
        match self.stack.get(0).statfs() {
            Ok(st) => reply.statfs(
                st.f_blocks,
                st.f_bfree,
                st.f_bavail,
                st.f_files,
                st.f_ffree,
                st.f_bsize as u32,
                st.f_namemax as u32,
                st.f_frsize as u32,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if self.noxattrs {
            return reply.error(Errno::ENOTSUP);
        }
        if xattr::is_internal(name.as_bytes()) {
            return reply.error(Errno::from_i32(xattr::INTERNAL_READ_ERRNO));
        }
        let Ok(cname) = CString::new(name.as_bytes()) else {
            return reply.error(Errno::EINVAL);
        };
        let result = self.node(ino).and_then(|node| {
            let state = node.state();
            let top = state.top();
            self.stack
                .get(top.layer)
                .get_xattr(&top.path, &cname)
                .map_err(errno)
        });
        match result {
            Ok(value) => Self::reply_xattr(reply, &value, size),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        if self.noxattrs {
            return reply.error(Errno::ENOTSUP);
        }
        let result = self.node(ino).and_then(|node| {
            let state = node.state();
            let top = state.top();
            xattr::none_if_unsupported(self.stack.get(top.layer).list_xattr(&top.path))
                .map_err(errno)
        });
        match result {
            Ok(raw) => Self::reply_xattr(reply, &xattr::visible_names(&raw), size),
            Err(e) => reply.error(e),
        }
    }
}

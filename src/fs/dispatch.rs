//! The `fuser::Filesystem` implementation: decodes each request, calls the
//! module that owns its concern, and encodes the reply. No policy lives here.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use fuser::{
    BsdFileFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use log::{debug, info};

use super::{Strata, errno};
use crate::dir::{Creator, NewObject};
use crate::file::{AttrChange, Handle, OpenDir, OpenFile};
use crate::inode::{Node, ROOT_INO};
use crate::readdir::MergedEntry;
use crate::sys;
use crate::xattr;

impl Strata {
    /// Open directory `fh` and its entries for a read from `offset`.
    fn listing_at(
        &self,
        fh: FileHandle,
        offset: u64,
    ) -> Result<(Arc<OpenDir>, Arc<[MergedEntry]>), Errno> {
        let dir = self.dirs.get(fh.0).ok_or(Errno::EBADF)?;
        let entries = self.dir_entries(&dir, offset).map_err(errno)?;
        Ok((dir, entries))
    }

    /// Runs a request that resolves paths in the layers (see
    /// [`crate::namespace`]): it sees directory renames whole.
    fn on_paths(&self, handler: impl FnOnce()) {
        let _resolving = self.namespace.resolving();
        contained(handler);
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
        // Every directory read is a readdirplus, not only the first of a
        // directory (READDIRPLUS_AUTO): with AUTO, a `find` or `ls -l` of a
        // directory larger than one getdents buffer (about 200 entries)
        // pays a LOOKUP round trip for every entry past the first batch.
        let wanted = InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_DO_READDIRPLUS;
        if let Err(unsupported) = config.add_capabilities(wanted) {
            debug!("kernel lacks capabilities {unsupported:?}");
        }
        // The umask comes apart from the mode, for strata to apply only
        // where no default ACL replaces it (see acl.rs).
        let _ = config.add_capabilities(InitFlags::FUSE_DONT_MASK);
        let acl = self.acl_wanted && config.add_capabilities(InitFlags::FUSE_POSIX_ACL).is_ok();
        self.acl_on.store(acl, Ordering::Relaxed);
        info!("POSIX ACLs: {}", if acl { "on" } else { "off" });
        // Passthrough (kernel >= 6.9, CAP_SYS_ADMIN): the kernel reads and
        // writes upper files, and the files of a read-only mount, itself.
        // Layers on a plain filesystem: one level of stacking.
        let passthrough = self.passthrough_wanted
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok();
        self.passthrough_on.store(passthrough, Ordering::Relaxed);
        info!(
            "file data: {}",
            if passthrough {
                "FUSE passthrough"
            } else {
                "through the daemon (no FUSE passthrough)"
            }
        );
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
        self.on_paths(|| match self.lookup_node(parent, name) {
            Ok(Some(node)) => {
                let node = self.nodes.remember(node);
                reply.entry(&self.ttl, &self.attr(&node), Generation(node.generation));
            }
            Ok(None) => reply.entry(&self.ttl, &negative_attr(), Generation(0)),
            Err(e) => reply.error(e),
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        contained(|| {
            if ino.0 != ROOT_INO {
                self.nodes.forget(ino.0, nlookup);
            }
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.on_paths(|| match self.node(ino) {
            Ok(node) => reply.attr(&self.ttl, &self.attr(&node)),
            Err(e) => reply.error(e),
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.on_paths(|| {
            let result = self.node(ino).and_then(|node| {
                let state = node.state();
                let top = state.top();
                self.stack.get(top.layer).readlink(&top.path).map_err(errno)
            });
            match result {
                Ok(target) => reply.data(&target),
                Err(e) => reply.error(e),
            }
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.on_paths(|| {
            let opened = self
                .node(ino)
                .and_then(|node| Ok((self.open_file(&node, flags.0)?, node)));
            match opened {
                Ok((file, node)) => {
                    let backing = self.passthrough_backing(&file, |fd| reply.open_backing(fd));
                    let fh = FileHandle(self.files.insert(file));
                    match backing {
                        // The kernel allows no cache flag with passthrough.
                        Some(b) => reply.opened_passthrough(fh, FopenFlags::FOPEN_NOFLUSH, &b),
                        None => reply.opened(fh, cache_flags(&node)),
                    }
                }
                Err(e) => reply.error(e),
            }
        });
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
        contained(|| {
            let Some(file) = self.files.get(fh.0) else {
                return reply.error(Errno::EBADF);
            };
            self.read_data(&file);
            match file.read(offset, size as usize) {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno(e)),
            }
        });
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
        contained(|| {
            self.files.remove(fh.0);
            reply.ok();
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        contained(|| {
            reply.ok();
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.on_paths(|| {
            let result = self.node(ino).and_then(|node| {
                if node.kind != FileType::Directory {
                    return Err(Errno::ENOTDIR);
                }
                Ok(OpenDir {
                    parent_ino: node.parent(),
                    node,
                    entries: parking_lot::Mutex::new(None),
                })
            });
            match result {
                Ok(dir) => {
                    let fh = self.dirs.insert(dir);
                    // The kernel's cached listing is shared by every open of
                    // the directory, while each open here has a snapshot of
                    // its own: with changes in between, a reader could go
                    // on from one snapshot's offset in another's and see a
                    // name twice. Only a read-only mount never changes.
                    let flags = match self.upper {
                        None => FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
                        Some(_) => FopenFlags::empty(),
                    };
                    reply.opened(FileHandle(fh), flags);
                }
                Err(e) => reply.error(e),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.on_paths(|| {
            let (dir, entries) = match self.listing_at(fh, offset) {
                Ok(listed) => listed,
                Err(e) => return reply.error(e),
            };
            // Offsets: 0 = start, 1 = after ".", 2 = after "..", n = after entry n-3.
            let dots = [
                (dir.node.ino, FileType::Directory, OsStr::new(".")),
                (dir.parent_ino, FileType::Directory, OsStr::new("..")),
            ];
            let all = dots
                .into_iter()
                .chain(entries.iter().map(|e| (e.ino, e.kind, e.name.as_os_str())));
            for (i, (ino, kind, name)) in all.enumerate().skip(offset as usize) {
                if reply.add(INodeNo(ino), i as u64 + 1, kind, name) {
                    break;
                }
            }
            reply.ok();
        });
    }

    /// Readdir with each entry's attributes: a walk (`find`, `ls -l`,
    /// `du`) needs no LOOKUP round trip per entry. Every entry but the dots
    /// counts as a lookup, which the kernel pays back with forget.
    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.on_paths(|| {
            let (dir, entries) = match self.listing_at(fh, offset) {
                Ok(listed) => listed,
                Err(e) => return reply.error(e),
            };
            let dot_attr = |ino: u64| self.node(INodeNo(ino)).map(|n| self.attr(&n)).ok();
            for i in offset as usize..entries.len() + 2 {
                let next = i as u64 + 1;
                let full = match i {
                    0 | 1 => {
                        let (ino, name) = if i == 0 {
                            (dir.node.ino, ".")
                        } else {
                            (dir.parent_ino, "..")
                        };
                        let Some(attr) = dot_attr(ino) else { continue };
                        reply.add(INodeNo(ino), next, name, &self.ttl, &attr, Generation(0))
                    }
                    _ => {
                        let entry = &entries[i - 2];
                        match self.lookup_node(INodeNo(dir.node.ino), &entry.name) {
                            Ok(Some(node)) => {
                                let attr = self.attr(&node);
                                let full = reply.add(
                                    INodeNo(node.ino),
                                    next,
                                    &entry.name,
                                    &self.ttl,
                                    &attr,
                                    Generation(node.generation),
                                );
                                if !full {
                                    self.nodes.remember(node); // the kernel links it
                                }
                                full
                            }
                            // Gone since opendir: no entry (inode 0 is skipped).
                            _ => false,
                        }
                    }
                };
                if full {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        contained(|| {
            self.dirs.remove(fh.0);
            reply.ok();
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        contained(|| {
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
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.on_paths(|| {
            if self.noxattrs {
                return reply.error(Errno::ENOTSUP);
            }
            if name == crate::tools::inspect::XATTR {
                // Virtual and read-only: where the node comes from.
                return match self
                    .node(ino)
                    .and_then(|n| self.layer_xattr(&n).map_err(errno))
                {
                    Ok(value) => Self::reply_xattr(reply, &value, size),
                    Err(e) => reply.error(e),
                };
            }
            if xattr::is_internal(name.as_bytes()) {
                return reply.error(Errno::from_i32(xattr::INTERNAL_READ_ERRNO));
            }
            let Ok(cname) = CString::new(name.as_bytes()) else {
                return reply.error(Errno::EINVAL);
            };
            let result = self
                .node(ino)
                .and_then(|node| self.get_xattr(&node, &cname).map_err(errno));
            match result {
                Ok(value) => Self::reply_xattr(reply, &value, size),
                Err(e) => reply.error(e),
            }
        });
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.on_paths(|| {
            if self.noxattrs {
                return reply.error(Errno::ENOTSUP);
            }
            let result = self.node(ino).and_then(|node| {
                let raw = self.list_xattr(&node).map_err(errno)?;
                let names = self.visible_xattr_names(&node, &raw);
                // trusted.* only to the privileged, as the kernel lists them.
                Ok(match xattr::caller_lists_trusted(req.uid(), req.pid()) {
                    true => names,
                    false => xattr::without_trusted(&names),
                })
            });
            match result {
                Ok(names) => Self::reply_xattr(reply, &names, size),
                Err(e) => reply.error(e),
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.on_paths(|| {
            let change = AttrChange {
                mode,
                uid: uid.map(|u| self.idmap.stored_uid(u)),
                gid: gid.map(|g| self.idmap.stored_gid(g)),
                size,
                atime,
                mtime,
                fh: fh.map(|f| f.0),
            };
            let result = self
                .node(ino)
                .and_then(|node| self.set_attr(&node, change).map(|()| node));
            match result {
                Ok(node) => reply.attr(&self.ttl, &self.attr(&node)),
                Err(e) => reply.error(e),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.on_paths(|| {
            let object = NewObject::Special {
                mode,
                rdev: rdev as u64,
            };
            self.reply_created(
                reply,
                self.create_object(parent, name, object, self.creator(req, umask)),
            );
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.on_paths(|| {
            let object = NewObject::Dir { mode };
            self.reply_created(
                reply,
                self.create_object(parent, name, object, self.creator(req, umask)),
            );
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.on_paths(|| {
            let object = NewObject::Symlink {
                target: target.as_os_str(),
            };
            self.reply_created(
                reply,
                self.create_object(parent, link_name, object, self.creator(req, 0)),
            );
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.on_paths(|| {
            let result = self.link_object(ino, newparent, newname).map(|n| (n, None));
            self.reply_created(reply, result);
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        self.on_paths(|| {
            let object = NewObject::File {
                mode,
                flags: flags & !crate::file::NOT_PASSED,
            };
            match self.create_object(parent, name, object, self.creator(req, umask)) {
                Ok((node, Some(fd))) => {
                    let node = self.nodes.remember(node);
                    // Fresh attributes (before passthrough marks it written).
                    let (ttl, attr) = (&self.ttl, self.attr(&node));
                    let writable = crate::file::wants_write(flags);
                    let file = OpenFile::new(fd, true, writable, Handle::new(&node));
                    let backing = self.passthrough_backing(&file, |fd| reply.open_backing(fd));
                    let fh = FileHandle(self.files.insert(file));
                    let (none, keep) = (FopenFlags::FOPEN_NOFLUSH, cache_flags(&node));
                    match backing {
                        Some(b) => reply.created_passthrough(
                            ttl,
                            &attr,
                            Generation(node.generation),
                            fh,
                            none,
                            &b,
                        ),
                        None => reply.created(ttl, &attr, Generation(node.generation), fh, keep),
                    }
                }
                Ok((_, None)) => reply.error(Errno::EIO),
                Err(e) => reply.error(e),
            }
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.on_paths(|| {
            reply_empty(reply, self.remove_object(parent, name, false));
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.on_paths(|| {
            reply_empty(reply, self.remove_object(parent, name, true));
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        contained(|| {
            reply_empty(
                reply,
                self.rename_object(parent, name, newparent, newname, flags.bits()),
            );
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        contained(|| {
            let Some(file) = self.files.get(fh.0) else {
                return reply.error(Errno::EBADF);
            };
            match self.write_file(ino, &file, offset, data) {
                Ok(()) => reply.written(data.len() as u32),
                Err(e) => reply.error(e),
            }
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        contained(|| {
            let Some(file) = self.files.get(fh.0) else {
                return reply.error(Errno::EBADF);
            };
            if !self.fsync {
                return reply.ok();
            }
            reply_empty(reply, self.sync_file(&file, datasync).map_err(errno));
        });
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.on_paths(|| {
            if !self.fsync {
                return reply.ok();
            }
            reply_empty(
                reply,
                self.node(ino).and_then(|dir| self.sync_dir(&dir, datasync)),
            );
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        contained(|| {
            let Some(file) = self.files.get(fh.0) else {
                return reply.error(Errno::EBADF);
            };
            let fd = match file.fd() {
                Ok(fd) => fd,
                Err(e) => return reply.error(errno(e)),
            };
            let result = sys::fallocate(fd.as_fd(), mode, offset, length).map_err(errno);
            self.refresh_from_fd(ino, fd.as_fd());
            reply_empty(reply, result);
        });
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        contained(|| {
            let Some(file) = self.files.get(fh.0) else {
                return reply.error(Errno::EBADF);
            };
            let result = self.seek_file(&file, offset as u64, whence);
            match result {
                Ok(Some(pos)) => reply.offset(pos as i64),
                Ok(None) => reply.error(Errno::ENXIO),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        contained(|| {
            let (Some(input), Some(output)) = (self.files.get(fh_in.0), self.files.get(fh_out.0))
            else {
                return reply.error(Errno::EBADF);
            };
            let result = (|| {
                let len = len.min(u32::MAX as u64) as usize;
                let n = self.copy_file(&input, offset_in, &output, offset_out, len)?;
                self.refresh_from_fd(ino_out, output.fd()?.as_fd());
                Ok::<_, io::Error>(n)
            })();
            match result {
                Ok(n) => reply.written(n as u32),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.on_paths(|| {
            if self.noxattrs {
                return reply.error(Errno::ENOTSUP);
            }
            let result = self
                .node(ino)
                .and_then(|node| self.set_xattr(&node, name, Some((value, flags))));
            reply_empty(reply, result);
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.on_paths(|| {
            if self.noxattrs {
                return reply.error(Errno::ENOTSUP);
            }
            let result = self
                .node(ino)
                .and_then(|node| self.set_xattr(&node, name, None));
            reply_empty(reply, result);
        });
    }
}

/// Runs one request's handler; a panic in it (a bug) fails that request
/// alone: its reply, dropped unanswered, tells the kernel EIO, and the
/// worker thread lives on to serve the next request (uncaught, it would
/// end the session and with it the mount).
fn contained(handler: impl FnOnce()) {
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(handler)) {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        log::error!("a request failed with a bug (answered EIO): {what}");
    }
}

/// Every change goes through this mount, so cached pages stay valid across
/// opens, unless the kernel wrote the file through passthrough, beside
/// the page cache of this inode. No FLUSH on close: writes are in the
/// layer already, and locks are the kernel's.
fn cache_flags(node: &Node) -> FopenFlags {
    if node.written_directly() {
        FopenFlags::FOPEN_NOFLUSH
    } else {
        FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH
    }
}

fn reply_empty(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Strata {
    /// The owner of what `req` creates, in the layers' numbering.
    fn creator(&self, req: &Request, umask: u32) -> Creator {
        Creator {
            uid: self.idmap.stored_uid(req.uid()),
            gid: self.idmap.stored_gid(req.gid()),
            umask,
        }
    }

    fn reply_created(
        &self,
        reply: ReplyEntry,
        result: Result<(Arc<Node>, Option<OwnedFd>), Errno>,
    ) {
        match result {
            Ok((node, _)) => {
                let node = self.nodes.remember(node);
                reply.entry(&self.ttl, &self.attr(&node), Generation(node.generation));
            }
            Err(e) => reply.error(e),
        }
    }
}

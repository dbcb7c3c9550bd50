//! Namespace changes in the merged tree (the kernel's overlayfs `dir.c`):
//! create, mkdir, mknod, symlink, link, unlink, rmdir, rename, and the
//! whiteouts and opaque directories they leave in the upper layer.
//!
//! Every new object is built in the workdir under a temporary name and then
//! moved into place in one rename, so that a whiteout it replaces never
//! disappears before the new object is there.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use fuser::{Errno, FileType, INodeNo};

use crate::acl;
use crate::copy_up::{UPPER, Upper, keeping_times, open_path_in, remove_tree};
use crate::dcache::Dentry;
use crate::fs::{Strata, errno};
use crate::inode::{Node, NodeState, Origin};
use crate::layer::{
    NAME_MAX, OPAQUE_MARKER, RelPath, Stat, WHITEOUT_PREFIX, is_absent, is_whiteout_name,
    whiteout_name_for,
};
use crate::readdir::merged_listing;
use crate::stat_override::Override;
use crate::sys;

/// What to create.
#[derive(Debug)]
pub enum NewObject<'a> {
    /// A regular file, opened with `flags` (the fd is returned).
    File {
        mode: u32,
        flags: i32,
    },
    Dir {
        mode: u32,
    },
    /// A special file (fifo, socket, device), or a regular file via mknod.
    Special {
        mode: u32,
        rdev: u64,
    },
    Symlink {
        target: &'a OsStr,
    },
}

impl NewObject<'_> {
    /// The permission bits asked for (symlinks: 0777).
    fn perm(&self) -> u32 {
        match *self {
            NewObject::File { mode, .. }
            | NewObject::Dir { mode }
            | NewObject::Special { mode, .. } => mode & 0o7777,
            NewObject::Symlink { .. } => 0o777,
        }
    }

    /// The object with `umask` applied to its mode.
    fn masked(self, umask: u32) -> Self {
        let masked = |mode: u32| mode & !(umask & 0o777);
        match self {
            NewObject::File { mode, flags } => NewObject::File {
                mode: masked(mode),
                flags,
            },
            NewObject::Dir { mode } => NewObject::Dir { mode: masked(mode) },
            NewObject::Special { mode, rdev } => NewObject::Special {
                mode: masked(mode),
                rdev,
            },
            symlink @ NewObject::Symlink { .. } => symlink,
        }
    }

    /// The same object as the daemon keeps it when a record holds its
    /// mode: no set-id bits, and always usable by its owner, the daemon.
    fn for_daemon(self) -> Self {
        let owner = |mode: u32, bits: u32| (mode & !0o7777) | (mode & 0o777) | bits;
        match self {
            NewObject::File { mode, flags } => NewObject::File {
                mode: owner(mode, 0o600),
                flags,
            },
            NewObject::Dir { mode } => NewObject::Dir {
                mode: owner(mode, 0o700),
            },
            NewObject::Special { mode, rdev } => NewObject::Special {
                mode: owner(mode, 0o600),
                rdev,
            },
            symlink @ NewObject::Symlink { .. } => symlink,
        }
    }
}

/// Who creates it: the owner of new objects.
#[derive(Debug, Clone, Copy)]
pub struct Creator {
    pub uid: u32,
    pub gid: u32,
    /// The caller's umask (the kernel leaves it to us: FUSE_DONT_MASK).
    pub umask: u32,
}

/// What the upper directory holds under a name.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum UpperEntry {
    Absent,
    /// A 0/0 character device.
    Whiteout,
    /// A `.wh.NAME` file (the rootless fallback format).
    OciWhiteout,
    Present {
        is_dir: bool,
    },
}

pub(crate) fn cstr(name: &OsStr) -> CString {
    CString::new(name.as_bytes()).expect("names never contain NUL")
}

pub(crate) fn upper_entry(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<UpperEntry> {
    match sys::fstatat(dir, &cstr(name), libc::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0 => {
            Ok(UpperEntry::Whiteout)
        }
        Ok(st) => Ok(UpperEntry::Present {
            is_dir: st.st_mode & libc::S_IFMT == libc::S_IFDIR,
        }),
        Err(e) if is_absent(&e) => {
            if name.len() + WHITEOUT_PREFIX.len() <= NAME_MAX
                && sys::fstatat(
                    dir,
                    &whiteout_name_for(name.as_bytes()),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
                .is_ok()
            {
                Ok(UpperEntry::OciWhiteout)
            } else {
                Ok(UpperEntry::Absent)
            }
        }
        Err(e) => Err(e),
    }
}

/// Whether a failed setxattr means "not allowed here" (trusted.* without
/// CAP_SYS_ADMIN in the initial namespace, user.* where the filesystem or
/// the file refuses them), so the next encoding down is to be tried.
pub(crate) fn xattr_refused(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM | libc::ENOTSUP))
}

/// Marks directory `dir` opaque: `trusted.overlay.opaque=y` like the kernel;
/// where trusted xattrs are refused (rootless), `user.overlay.opaque=y`, as
/// the kernel writes with `userxattr`; where user xattrs are refused too, a
/// `.wh..wh..opq` entry.
pub(crate) fn make_opaque(dir: BorrowedFd<'_>) -> io::Result<()> {
    for name in [c"trusted.overlay.opaque", c"user.overlay.opaque"] {
        match sys::fsetxattr_any(dir, name, b"y", 0) {
            Err(e) if xattr_refused(&e) => {}
            other => return other,
        }
    }
    sys::openat2(
        dir,
        &CString::new(OPAQUE_MARKER).expect("no NUL"),
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
        0,
        sys::RESOLVE_IN_LAYER,
    )
    .map(drop)
}

/// A `.wh.NAME` whiteout for `name` in `dir` (the OCI format, where 0/0
/// devices cannot be made).
pub(crate) fn oci_whiteout(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    sys::openat2(
        dir,
        &whiteout_name_for(name.to_bytes()),
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
        0,
        sys::RESOLVE_IN_LAYER,
    )
    .map(drop)
}

/// Rootless (no 0/0 devices): takes upper `name` in `dir`, which hides a
/// lower one, out of the way with `remove` (unlink, or a rename away) and
/// leaves a `.wh.NAME` whiteout. The whiteout goes first: next to `name`
/// it means "recreated here", which shows what was there, so a failure
/// or a crash between the two steps leaves the merged view as it was (on
/// failure the whiteout is taken back), never with the lower object
/// showing through.
pub(crate) fn oci_whiteout_first(
    dir: BorrowedFd<'_>,
    name: &CStr,
    remove: impl FnOnce() -> io::Result<()>,
) -> io::Result<()> {
    let made = match oci_whiteout(dir, name) {
        Ok(()) => true,
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => false, // one is there
        Err(e) => return Err(e),
    };
    remove().inspect_err(|_| {
        if made {
            let _ = sys::unlinkat(dir, &whiteout_name_for(name.to_bytes()), 0);
        }
    })
}

/// chmod of `name` in `dir` (never following a symlink).
fn set_mode(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    sys::fchmod_any(open_path_in(dir, name)?.as_fd(), mode & 0o7777)
}

fn open_dir_in(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    sys::openat2(
        dir,
        name,
        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
        sys::RESOLVE_IN_LAYER,
    )
}

/// Moves the finished `tmp` from the workdir to `name` in `dir`, replacing
/// whatever whiteout stood there in the same step.
fn move_into_place(
    upper: &Upper,
    tmp: &CStr,
    dir: BorrowedFd<'_>,
    name: &OsStr,
    existing: UpperEntry,
    is_dir: bool,
) -> io::Result<()> {
    let cname = cstr(name);
    match existing {
        UpperEntry::Whiteout if is_dir => {
            // rename(2) cannot put a directory over a device: swap the two,
            // then drop the whiteout, now in the workdir.
            sys::renameat2(upper.work(), tmp, dir, &cname, libc::RENAME_EXCHANGE)?;
            sys::unlinkat(upper.work(), tmp, 0)
        }
        UpperEntry::Whiteout => sys::renameat2(upper.work(), tmp, dir, &cname, 0),
        UpperEntry::OciWhiteout => {
            sys::renameat2(upper.work(), tmp, dir, &cname, libc::RENAME_NOREPLACE)?;
            sys::unlinkat(dir, &whiteout_name_for(name.as_bytes()), 0)
        }
        UpperEntry::Absent | UpperEntry::Present { .. } => {
            sys::renameat2(upper.work(), tmp, dir, &cname, libc::RENAME_NOREPLACE)
        }
    }
}

/// Removes a temporary object (a tree, for a directory) from the workdir.
fn remove_tmp(upper: &Upper, tmp: &CStr) -> io::Result<()> {
    remove_tree(
        upper.work_layer(),
        &RelPath::root(),
        OsStr::from_bytes(tmp.to_bytes()),
    )
}

pub(crate) fn check_name(name: &OsStr) -> Result<(), Errno> {
    if name.len() > NAME_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    if is_whiteout_name(name.as_bytes()) {
        // Such a name would read back as a whiteout.
        return Err(Errno::EINVAL);
    }
    Ok(())
}

impl Strata {
    /// The node of directory `ino`, checked to be a live directory.
    pub(crate) fn dir_node(&self, ino: INodeNo) -> Result<Arc<Node>, Errno> {
        let dir = self.node(ino)?;
        if dir.kind != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        Ok(dir)
    }

    /// Whether a lower layer holds `name` under `parent` (so deleting or
    /// moving it away needs a whiteout).
    pub(crate) fn lower_has(&self, parent: &NodeState, name: &OsStr) -> io::Result<bool> {
        let lowers = NodeState {
            origins: parent
                .origins
                .iter()
                .filter(|o| o.layer != UPPER)
                .cloned()
                .collect(),
            ..parent.clone()
        };
        if lowers.origins.is_empty() {
            return Ok(false);
        }
        Ok(self.stack.lookup(&lowers, name)?.is_some())
    }

    /// One name of `node` is gone: a directory is deleted, a file has one
    /// link fewer. `from_upper`: the name was an upper link (else a lower
    /// name was whited out, and the upper inode keeps its links).
    pub(crate) fn name_removed(&self, node: &Node, from_upper: bool, dir: &Node, name: &OsStr) {
        if node.kind == FileType::Directory {
            node.update(|s| s.stat.nlink = 0);
            node.mark_gone();
            return;
        }
        // An upper link going away lowers the real link count; a whited-out
        // lower name lowers the index bias, or else just what we show.
        if from_upper {
            node.update(|s| s.stat.nlink = s.stat.nlink.saturating_sub(1));
        }
        let indexed = self.index_name_removed(node, !from_upper);
        if !indexed && !from_upper {
            node.update(|s| s.stat.nlink = s.stat.nlink.saturating_sub(1));
        }
        let state = node.state().clone();
        if from_upper && !indexed && state.stat.nlink == 0 && state.top().layer == UPPER {
            // Its inode number is free for the upper filesystem to reuse.
            self.inos.unalias(state.stat.dev, state.stat.ino);
            node.mark_gone();
        }
        node.remove_name(dir.ino, name);
        if state.path == dir.state().path.join(name) && !state.detached {
            // The node's own name is gone: follow another of its names that
            // still is this inode, else serve it from its index entry.
            if !self.follow_other_name(node) {
                self.detach_to_index(node);
            }
        }
    }

    /// Points `node` at another known name of it; false if none is left.
    fn follow_other_name(&self, node: &Node) -> bool {
        while let Some((parent, name)) = node.first_name() {
            let resolved = self
                .nodes
                .get(parent)
                .and_then(|p| Some((self.stack.lookup(&self.dir_state(&p), &name).ok()??, p)));
            if let Some((mut state, p)) = resolved
                && self.inos.ino(state.stat.dev, state.stat.ino) == node.ino
            {
                self.apply_index(node.ino, &mut state);
                node.update(|s| *s = state);
                node.set_parent(p.ino);
                return true;
            }
            node.remove_name(parent, &name); // no longer one of its names
        }
        false
    }

    /// Makes sure `name` in `dir` (one of `node`'s names) is in the upper.
    /// For most nodes that is copying the node up; a hard-linked node shared
    /// by several names may have been copied up through another name.
    pub(crate) fn ensure_name_in_upper(
        &self,
        node: &Node,
        dir: &Node,
        name: &OsStr,
    ) -> io::Result<()> {
        let upper = self.upper_or_erofs()?;
        let dir_path = dir.state().path.clone();
        let state = node.state().clone();
        if state.path == dir_path.join(name) {
            return self.copy_up(node);
        }
        let pfd = upper.dir_fd(&dir_path)?;
        if matches!(upper_entry(pfd.as_fd(), name)?, UpperEntry::Present { .. }) {
            return Ok(());
        }
        if self.uses_index(node, &state) {
            return self.copy_up_indexed(node, &state, &dir_path, name);
        }
        // Not indexable (a hard-linked symlink or special file): copy this
        // name's own lower object.
        let own = self
            .stack
            .lookup(&self.dir_state(dir), name)?
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        let tmp = upper.tmp_name();
        self.copy_non_dir(&own, &tmp)?;
        keeping_times(pfd.as_fd(), || {
            sys::renameat2(
                upper.work(),
                &tmp,
                pfd.as_fd(),
                &cstr(name),
                libc::RENAME_NOREPLACE,
            )
        })
        .inspect_err(|_| {
            let _ = sys::unlinkat(upper.work(), &tmp, 0);
        })
    }

    /// Re-reads a node's attributes from its top layer after a change.
    pub(crate) fn refresh(&self, node: &Node) {
        let stat = match node.orphan() {
            Some(fd) => sys::fstat(fd.as_fd()).map(Stat::from),
            None => {
                let top = node.state().top().clone();
                self.stack.get(top.layer).stat(&top.path)
            }
        };
        if let Ok(mut stat) = stat {
            node.update(|s| {
                if s.is_metacopy() {
                    stat.blocks = s.stat.blocks; // the data's
                }
                s.stat = stat;
            });
        }
    }

    /// Before `dir_path/name` (an upper name of `node`) goes: an fd of the
    /// object, if open handles may need it once no name is left.
    pub(crate) fn pin_if_open(
        &self,
        node: &Node,
        dir_path: &RelPath,
        name: &OsStr,
    ) -> Option<OwnedFd> {
        if node.kind == FileType::Directory || !node.is_open() {
            return None;
        }
        self.upper
            .as_ref()?
            .layer
            .open_path(&dir_path.join(name))
            .ok()
    }

    /// After `node` lost a name: if it was the last, the pinned fd is the
    /// only way left to the object its open handles change.
    pub(crate) fn orphan_if_nameless(&self, node: &Node, pinned: Option<OwnedFd>) {
        let Some(fd) = pinned else { return };
        let state = node.state().clone();
        if state.top().layer == UPPER && state.stat.nlink == 0 && !state.detached {
            node.hold_orphan(fd);
        }
    }

    /// Resolves `name` in `parent` afresh and caches the result.
    pub(crate) fn resolve_fresh(
        &self,
        parent: &Node,
        name: &OsStr,
    ) -> io::Result<Option<Arc<Node>>> {
        let state = self.stack.lookup(&self.dir_state(parent), name)?;
        let node = state.map(|mut state| {
            let ino = self.inos.ino(state.stat.dev, state.stat.ino);
            self.apply_index(ino, &mut state);
            self.install(parent, name, ino, state)
        });
        if node.is_none() {
            self.dcache.insert(parent.ino, name, Dentry::Negative);
        }
        Ok(node)
    }

    /// Makes `state` the node of `name` in `parent` and caches it.
    fn install(&self, parent: &Node, name: &OsStr, ino: u64, state: NodeState) -> Arc<Node> {
        let (dev, real) = (state.stat.dev, state.stat.ino);
        let node = self
            .nodes
            .live_or_new(ino, parent.ino, &state, || self.inos.renumber(dev, real));
        node.update(|s| *s = state);
        node.set_parent(parent.ino);
        node.add_name(parent.ino, name);
        self.dcache
            .insert(parent.ino, name, Dentry::Positive(node.clone()));
        node
    }

    /// Creates `name` in `parent`. Returns the new node and, for a file, its
    /// open fd.
    pub(crate) fn create_object(
        &self,
        parent: INodeNo,
        name: &OsStr,
        object: NewObject<'_>,
        creator: Creator,
    ) -> Result<(Arc<Node>, Option<OwnedFd>), Errno> {
        check_name(name)?;
        let upper = self.upper_or_erofs().map_err(errno)?;
        let dir = self.dir_node(parent)?;
        if self.lookup_node(parent, name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        self.copy_up(&dir).map_err(errno)?;
        let dir_state = dir.state().clone();
        let parent_has_lower = self
            .dir_state(&dir)
            .origins
            .iter()
            .any(|o| o.layer != UPPER);
        let pfd = upper.dir_fd(&dir_state.path).map_err(errno)?;
        let existing = upper_entry(pfd.as_fd(), name).map_err(errno)?;
        // A default ACL replaces the umask, and is inherited.
        let inherited = match self.acl_on() {
            true => acl::default_of(pfd.as_fd()).map_err(errno)?,
            false => None,
        };
        let object = match inherited {
            Some(_) => object,
            None => object.masked(creator.umask),
        };

        // Like the kernel: a set-group-id directory passes on its group, and
        // to subdirectories the bit itself.
        let parent_sgid = dir_state.stat.mode & libc::S_ISGID != 0;
        let gid = if parent_sgid {
            dir_state.stat.gid
        } else {
            creator.gid
        };
        // Where the upper keeps owner-and-mode records, the object is the
        // daemon's and the record holds what the caller gets (the same
        // rules, applied to the parent's record).
        let file_or_dir = match object {
            NewObject::File { .. } | NewObject::Dir { .. } => true,
            NewObject::Special { mode, .. } => mode & libc::S_IFMT == libc::S_IFREG,
            NewObject::Symlink { .. } => false,
        };
        let record = self.record_for_new(file_or_dir, {
            let parent = self.record_of(&dir);
            let sgid = parent.map_or(parent_sgid, |r| r.perm & libc::S_ISGID != 0);
            let is_dir = matches!(object, NewObject::Dir { .. });
            Override {
                uid: creator.uid,
                gid: match parent {
                    Some(r) if sgid => r.gid,
                    _ => gid,
                },
                perm: object.perm() | if sgid && is_dir { libc::S_ISGID } else { 0 },
                stand_in: None,
            }
        });
        let (object, creator, gid) = match record {
            Some(_) => {
                let daemon = Creator {
                    uid: sys::geteuid(),
                    gid: sys::getegid(),
                    umask: creator.umask,
                };
                (object.for_daemon(), daemon, daemon.gid)
            }
            None => (object, creator, gid),
        };
        let cname = cstr(name);
        if existing == UpperEntry::Absent {
            match self.create_in_place(pfd.as_fd(), name, &object, creator, gid, parent_has_lower) {
                Ok(fd) => {
                    if let Some(record) = record
                        && let Err(e) = self.write_new_record(pfd.as_fd(), &cname, record)
                    {
                        let flag = if matches!(object, NewObject::Dir { .. }) {
                            libc::AT_REMOVEDIR
                        } else {
                            0
                        };
                        let _ = sys::unlinkat(pfd.as_fd(), &cname, flag);
                        return Err(errno(e));
                    }
                    return self.created(&dir, &dir_state, pfd.as_fd(), name, fd);
                }
                // Refused as the caller (the upper differs from what the
                // kernel checked): build it as the daemon below.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)) => {}
                Err(e) => return Err(errno(e)),
            }
        }
        let tmp = upper.tmp_name();
        let work = upper.work();
        let built = (|| -> io::Result<(Option<OwnedFd>, bool)> {
            let (fd, mode, is_dir) = match object {
                NewObject::File { mode, flags } => {
                    let fd = sys::openat2(
                        work,
                        &tmp,
                        (flags & !(libc::O_TRUNC | libc::O_CREAT | libc::O_EXCL))
                            | libc::O_CREAT
                            | libc::O_EXCL,
                        mode & 0o7777,
                        sys::RESOLVE_IN_LAYER,
                    )?;
                    (Some(fd), Some(mode), false)
                }
                NewObject::Dir { mode } => {
                    let mode = if parent_sgid {
                        mode | libc::S_ISGID
                    } else {
                        mode
                    };
                    sys::mkdirat(work, &tmp, mode & 0o7777)?;
                    (None, Some(mode), true)
                }
                NewObject::Special { mode, rdev } => {
                    if mode & libc::S_IFMT == libc::S_IFCHR && rdev == 0 {
                        // It would read back as a whiteout (the kernel refuses too).
                        return Err(io::Error::from_raw_os_error(libc::EPERM));
                    }
                    sys::mknodat(work, &tmp, mode, rdev)?;
                    (None, Some(mode), false)
                }
                NewObject::Symlink { target } => {
                    sys::symlinkat(&cstr(target), work, &tmp)?;
                    (None, None, false)
                }
            };
            sys::fchownat(work, &tmp, creator.uid, gid, 0)?;
            if let Some(record) = record {
                self.write_new_record(work, &tmp, record)?;
            }
            if let Some(mode) = mode
                && mode & (libc::S_ISUID | libc::S_ISGID) != 0
            {
                // chown cleared the set-id bits; the caller asked for them.
                set_mode(work, &tmp, mode)?;
            }
            if let (Some(default), Some(mode)) = (&inherited, mode) {
                // Made away from its parent: what the upper filesystem
                // would have given it there.
                let fd = open_path_in(work, &tmp)?;
                acl::apply_inherited(fd.as_fd(), default, mode, is_dir)?;
            }
            // Like the kernel: a directory made where a lower one was
            // deleted, or anywhere lower layers are merged in, is opaque, so
            // no lower directory can ever show through it.
            if is_dir
                && (parent_has_lower
                    || matches!(existing, UpperEntry::Whiteout | UpperEntry::OciWhiteout))
            {
                make_opaque(open_dir_in(work, &tmp)?.as_fd())?;
            }
            Ok((fd, is_dir))
        })();
        let (fd, is_dir) = match built {
            Ok(v) => v,
            Err(e) => {
                let _ = remove_tmp(upper, &tmp);
                return Err(errno(e));
            }
        };
        if let Err(e) = move_into_place(upper, &tmp, pfd.as_fd(), name, existing, is_dir) {
            let _ = remove_tmp(upper, &tmp);
            return Err(errno(e));
        }
        self.created(&dir, &dir_state, pfd.as_fd(), name, fd)
    }

    /// Creates `name` straight in upper directory `dir` where no whiteout
    /// is to be replaced, as kernel overlayfs does: as the caller (fsuid and
    /// fsgid), so it is the caller's from its first moment and the
    /// filesystem applies the set-group-id directory rules itself; no
    /// workdir, no rename.
    fn create_in_place(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        object: &NewObject<'_>,
        creator: Creator,
        gid: u32,
        parent_has_lower: bool,
    ) -> io::Result<Option<OwnedFd>> {
        let cname = cstr(name);
        // Root creating as root needs no switch (the common case). Nor do
        // mapped ids: the kernel checked the caller against the ids it was
        // shown, which the upper does not hold, so root creates and chowns.
        let as_caller = (creator.uid, creator.gid) != (0, 0) && !self.idmap.translates_stored_ids();
        let ids =
            (as_caller || !self.is_root).then(|| sys::FsIds::switch(creator.uid, creator.gid));
        let (fd, mode) = match *object {
            NewObject::File { mode, flags } => {
                let flags = (flags & !(libc::O_TRUNC | libc::O_CREAT | libc::O_EXCL))
                    | libc::O_CREAT
                    | libc::O_EXCL;
                let fd = sys::openat2(dir, &cname, flags, mode & 0o7777, sys::RESOLVE_IN_LAYER)?;
                (Some(fd), mode)
            }
            NewObject::Dir { mode } => {
                sys::mkdirat(dir, &cname, mode & 0o7777)?;
                (None, mode)
            }
            NewObject::Special { mode, rdev } => {
                if mode & libc::S_IFMT == libc::S_IFCHR && rdev == 0 {
                    return Err(io::Error::from_raw_os_error(libc::EPERM));
                }
                sys::mknodat(dir, &cname, mode, rdev)?;
                (None, mode)
            }
            NewObject::Symlink { target } => {
                sys::symlinkat(&cstr(target), dir, &cname)?;
                (None, libc::S_IFLNK | 0o777)
            }
        };
        drop(ids);
        let finish = || -> io::Result<()> {
            let st = sys::fstatat(dir, &cname, libc::AT_SYMLINK_NOFOLLOW)?;
            if (st.st_uid, st.st_gid) != (creator.uid, gid) {
                // The ids did not switch (an unprivileged daemon): chown.
                sys::fchownat(dir, &cname, creator.uid, gid, libc::AT_SYMLINK_NOFOLLOW)?;
            }
            let st = sys::fstatat(dir, &cname, libc::AT_SYMLINK_NOFOLLOW)?;
            let setid = libc::S_ISUID | libc::S_ISGID;
            let is_dir =
                mode & libc::S_IFMT == libc::S_IFDIR || matches!(object, NewObject::Dir { .. });
            let want = if is_dir && st.st_mode & libc::S_ISGID != 0 {
                mode | libc::S_ISGID // inherited from the directory
            } else {
                mode
            };
            if !matches!(object, NewObject::Symlink { .. })
                && (st.st_mode ^ want) & setid != 0
                && want & setid != 0
            {
                // The caller asked for set-id bits the filesystem (judging
                // by the daemon's groups, or after a chown) cleared.
                set_mode(dir, &cname, want)?;
            }
            if is_dir && parent_has_lower {
                // Like the kernel: no lower directory can ever show through.
                make_opaque(open_dir_in(dir, &cname)?.as_fd())?;
            }
            Ok(())
        };
        if let Err(e) = finish() {
            let flag = if matches!(object, NewObject::Dir { .. }) {
                libc::AT_REMOVEDIR
            } else {
                0
            };
            let _ = sys::unlinkat(dir, &cname, flag);
            return Err(e);
        }
        Ok(fd)
    }

    /// After a create: the new object's node. It is a new upper object
    /// (a directory made opaque where lower layers are merged), so its state
    /// needs no lookup through the layers; `upper_dir` is its directory.
    fn created(
        &self,
        dir: &Arc<Node>,
        dir_state: &NodeState,
        upper_dir: BorrowedFd<'_>,
        name: &OsStr,
        fd: Option<OwnedFd>,
    ) -> Result<(Arc<Node>, Option<OwnedFd>), Errno> {
        let dir_stat = sys::fstat(upper_dir).map_err(errno)?;
        dir.update(|s| s.stat = dir_stat.into());
        let stat: Stat = sys::fstatat(upper_dir, &cstr(name), libc::AT_SYMLINK_NOFOLLOW)
            .map_err(errno)?
            .into();
        // A brand-new inode: a number the upper filesystem reused must not
        // keep an alias of the object that had it before.
        self.inos.unalias(stat.dev, stat.ino);
        let path = dir_state.path.join(name);
        let state = NodeState {
            origins: vec![Origin {
                layer: UPPER,
                path: path.clone(),
            }],
            path,
            stat,
            nlink_bias: 0,
            detached: false,
        };
        let ino = self.inos.ino(stat.dev, stat.ino);
        let node = self.install(dir, name, ino, state);
        Ok((node, fd))
    }

    /// Hard-links `ino` as `name` in `parent`.
    pub(crate) fn link_object(
        &self,
        ino: INodeNo,
        parent: INodeNo,
        name: &OsStr,
    ) -> Result<Arc<Node>, Errno> {
        check_name(name)?;
        let upper = self.upper_or_erofs().map_err(errno)?;
        let node = self.node(ino)?;
        if node.kind == FileType::Directory {
            return Err(Errno::EPERM);
        }
        let dir = self.dir_node(parent)?;
        if self.lookup_node(parent, name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        self.copy_up(&node).map_err(errno)?;
        self.copy_up(&dir).map_err(errno)?;
        self.index_upper_file(&node).map_err(errno)?;
        let state = node.state().clone();
        // A detached node's own name is gone: link from its index entry.
        let src_path = state.top().path.clone();
        let (src_dir, src_name) = src_path.split_last().ok_or(Errno::EINVAL)?;
        let src_fd = self
            .writable_layer(state.top().layer)
            .and_then(|l| l.dir_fd(&src_dir))
            .map_err(errno)?;
        let pfd = upper.dir_fd(&dir.state().path).map_err(errno)?;
        let existing = upper_entry(pfd.as_fd(), name).map_err(errno)?;
        let tmp = upper.tmp_name();
        sys::linkat(src_fd.as_fd(), &cstr(src_name), upper.work(), &tmp).map_err(errno)?;
        if let Err(e) = move_into_place(upper, &tmp, pfd.as_fd(), name, existing, false) {
            let _ = sys::unlinkat(upper.work(), &tmp, 0);
            return Err(errno(e));
        }
        self.refresh(&node);
        self.refresh(&dir);
        self.dcache
            .insert(dir.ino, name, Dentry::Positive(node.clone()));
        // Both names are known from now on (the node had one link before).
        if let Some((_, own)) = node.state().path.split_last() {
            node.add_name(node.parent(), own);
        }
        node.add_name(dir.ino, name);
        Ok(node)
    }

    /// Removes `name` from `parent`: `unlink` or, with `is_dir`, `rmdir`.
    pub(crate) fn remove_object(
        &self,
        parent: INodeNo,
        name: &OsStr,
        is_dir: bool,
    ) -> Result<(), Errno> {
        let upper = self.upper_or_erofs().map_err(errno)?;
        let dir = self.dir_node(parent)?;
        let node = self.lookup_node(parent, name)?.ok_or(Errno::ENOENT)?;
        match (is_dir, node.kind == FileType::Directory) {
            (true, false) => return Err(Errno::ENOTDIR),
            (false, true) => return Err(Errno::EISDIR),
            _ => {}
        }
        if is_dir
            && !merged_listing(&self.stack, &self.inos, &self.dir_state(&node))
                .map_err(errno)?
                .is_empty()
        {
            return Err(Errno::ENOTEMPTY);
        }
        let needs_whiteout = self.lower_has(&self.dir_state(&dir), name).map_err(errno)?;
        self.copy_up(&dir).map_err(errno)?;
        let dir_path = dir.state().path.clone();
        let pfd = upper.dir_fd(&dir_path).map_err(errno)?;
        let cname = cstr(name);
        let in_upper = matches!(
            upper_entry(pfd.as_fd(), name).map_err(errno)?,
            UpperEntry::Present { .. }
        );
        if !in_upper && !is_dir {
            self.index_lower_hardlink(&node).map_err(errno)?;
        }
        let pinned = in_upper
            .then(|| self.pin_if_open(&node, &dir_path, name))
            .flatten();
        let result = if in_upper && is_dir {
            // Move the directory (holding only whiteouts) out of the way in
            // one step, leaving a whiteout if lower layers hold the name.
            let tmp = upper.tmp_name();
            let swap = || {
                sys::renameat2(
                    upper.work(),
                    &tmp,
                    pfd.as_fd(),
                    &cname,
                    libc::RENAME_EXCHANGE,
                )
            };
            let move_out = || {
                sys::renameat2(
                    pfd.as_fd(),
                    &cname,
                    upper.work(),
                    &tmp,
                    libc::RENAME_NOREPLACE,
                )
            };
            let moved = match needs_whiteout.then(|| upper.device_whiteout(upper.work(), &tmp)) {
                None => move_out(),
                Some(Ok(())) => swap(),
                // Rootless (no 0/0 devices): a `.wh.` file, then out.
                Some(Err(e)) if e.raw_os_error() == Some(libc::EPERM) => {
                    oci_whiteout_first(pfd.as_fd(), &cname, move_out)
                }
                Some(Err(e)) => Err(e),
            };
            moved.map(|()| {
                // The name is already gone from the merged view; what is left
                // in the workdir is removed now, or at the next mount.
                if let Err(e) = remove_tmp(upper, &tmp) {
                    log::warn!("could not clear {tmp:?} from the workdir: {e}");
                }
            })
        } else if in_upper && needs_whiteout {
            let tmp = upper.tmp_name();
            match upper.device_whiteout(upper.work(), &tmp) {
                Ok(()) => sys::renameat2(upper.work(), &tmp, pfd.as_fd(), &cname, 0),
                // Rootless (no 0/0 devices): a `.wh.` file, then unlink.
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    oci_whiteout_first(pfd.as_fd(), &cname, || {
                        sys::unlinkat(pfd.as_fd(), &cname, 0)
                    })
                }
                Err(e) => Err(e),
            }
        } else if in_upper {
            sys::unlinkat(pfd.as_fd(), &cname, 0)
        } else {
            upper.make_whiteout(pfd.as_fd(), &cname)
        };
        result.map_err(errno)?;
        self.name_removed(&node, in_upper, &dir, name);
        self.orphan_if_nameless(&node, pinned);
        if !is_dir && node.state().top().layer == UPPER && node.state().stat.nlink > 0 {
            // Other names of the same upper inode remain.
            self.refresh(&node);
        }
        self.refresh(&dir);
        self.dcache.insert(dir.ino, name, Dentry::Negative);
        Ok(())
    }
}

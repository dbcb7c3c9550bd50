//! Renames (the kernel's `ovl_rename`): files and directories, with
//! RENAME_NOREPLACE and RENAME_EXCHANGE, whiteouts left where lower names
//! moved away, and redirects for directories whose lower content stays
//! where it is.

use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use fuser::{Errno, FileType, INodeNo};

use crate::copy_up::{UPPER, Upper, copy_metadata, open_dir_in, remove_tree};
use crate::dir::{
    UpperEntry, check_name, cstr, make_opaque, oci_whiteout_first, upper_entry, xattr_refused,
};
use crate::fs::{Strata, errno};
use crate::inode::Node;
use crate::layer::{Layer, REDIRECT_XATTRS, RelPath, whiteout_name_for};
use crate::readdir::merged_listing;
use crate::sys;

/// Until disarmed, tells the kernel on drop that `dirs` may have changed
/// in a request that failed (see `Strata::changed_by_failed_request`).
struct ChangedIfFailed<'a> {
    fs: &'a Strata,
    dirs: [&'a Node; 2],
    armed: bool,
}

impl Drop for ChangedIfFailed<'_> {
    fn drop(&mut self) {
        if self.armed {
            for dir in self.dirs {
                self.fs.changed_by_failed_request(dir);
            }
        }
    }
}

/// Before a directory replaces `name` in upper directory `parent`, an empty
/// merged directory (its upper copy holds only whiteouts, which rename(2)
/// will not replace): puts an empty opaque directory with the same owner,
/// mode, xattrs and times in its place, in one exchange with a copy built
/// in the workdir, as the kernel's `ovl_clear_empty` does, so that one
/// rename then replaces it. The merged view is the same before and after
/// (an empty directory), and the upper never holds an opaque directory
/// with whiteouts in it, which kernel overlayfs would list as entries it
/// cannot stat. The old copy is removed from the workdir (or at the next
/// mount). False, with nothing changed, where neither opaque xattr can be
/// stored (a `.wh..wh..opq` marker would keep the directory non-empty).
fn clear_merged_dir(upper: &Upper, parent: &RelPath, name: &OsStr) -> io::Result<bool> {
    let path = parent.join(name);
    let stat = upper.layer.stat(&path)?;
    let tmp = upper.tmp_name();
    sys::mkdirat(upper.work(), &tmp, 0o700)?;
    let swapped = (|| -> io::Result<bool> {
        let fd = open_dir_in(upper.work(), &tmp)?;
        let mut opaque = false;
        for x in [c"trusted.overlay.opaque", c"user.overlay.opaque"] {
            match sys::fsetxattr_any(fd.as_fd(), x, b"y", 0) {
                Err(e) if xattr_refused(&e) => {}
                Err(e) => return Err(e),
                Ok(()) => {
                    opaque = true;
                    break;
                }
            }
        }
        if !opaque {
            return Ok(false);
        }
        copy_metadata(&*upper.layer, &path, &stat, fd.as_fd())?;
        let pfd = upper.dir_fd(parent)?;
        sys::renameat2(
            upper.work(),
            &tmp,
            pfd.as_fd(),
            &cstr(name),
            libc::RENAME_EXCHANGE,
        )?;
        Ok(true)
    })();
    // The old copy after the exchange, else the unused new one.
    if let Err(e) = remove_tree(
        upper.work_layer(),
        &RelPath::root(),
        OsStr::from_bytes(tmp.to_bytes()),
    ) {
        log::warn!("could not clear {tmp:?} from the workdir: {e}");
    }
    swapped
}

impl Strata {
    /// Before a directory with lower content moves, records where its lower
    /// content lives (an absolute redirect, as kernel overlayfs does with
    /// `redirect_dir=on`), so lookups below keep finding it. Returns whether
    /// a redirect was needed.
    /// Like the kernel, a move within one directory records just the old
    /// name, any other move the absolute lower path, which may be at most
    /// `REDIRECT_MAX` bytes long (else EXDEV, and `mv` copies instead);
    /// with `redirect_dir=off|follow|nofollow`, always EXDEV.
    fn set_redirect(&self, dir: &Node, same_parent: bool) -> io::Result<bool> {
        const REDIRECT_MAX: usize = 256;
        let state = dir.state().clone();
        let Some(lower) = state.origins.iter().find(|o| o.layer != UPPER) else {
            return Ok(false); // only in the upper: nothing to follow
        };
        let name = state.path.split_last().map(|(_, n)| n.as_bytes().to_vec());
        let lower_name = lower.path.split_last().map(|(_, n)| n.as_bytes().to_vec());
        let value = if same_parent && name == lower_name {
            lower_name.unwrap_or_default()
        } else {
            [b"/", lower.path.as_bytes()].concat()
        };
        if value.len() >= REDIRECT_MAX || !self.create_redirects {
            return Err(io::Error::from_raw_os_error(libc::EXDEV));
        }
        let upper = self.upper_or_erofs()?;
        let fd = upper.layer.dir_fd(&state.path)?;
        // trusted.* like the kernel, user.* where that is refused (rootless);
        // where both are, EXDEV, as the kernel answers when it cannot store
        // a redirect (and `mv` copies instead).
        for name in REDIRECT_XATTRS {
            match sys::fsetxattr_any(fd.as_fd(), name, &value, 0) {
                Err(e) if xattr_refused(&e) => {}
                other => return other.map(|()| true),
            }
        }
        Err(io::Error::from_raw_os_error(libc::EXDEV))
    }

    /// `rename` and `renameat2` with RENAME_NOREPLACE or RENAME_EXCHANGE,
    /// holding the namespace lock (see [`crate::namespace`]) exclusively
    /// when a directory moves: every path below it changes.
    pub(crate) fn rename_object(
        &self,
        parent: INodeNo,
        name: &OsStr,
        new_parent: INodeNo,
        new_name: &OsStr,
        flags: u32,
    ) -> Result<(), Errno> {
        // The kernel holds both parents locked for the whole request, so
        // what the names hold cannot change between this look and the
        // rename.
        let moves_directory = {
            let _resolving = self.namespace.resolving();
            let is_dir = |dir, name| {
                let found = self.lookup_node(dir, name);
                matches!(found, Ok(Some(n)) if n.kind == FileType::Directory)
            };
            is_dir(parent, name)
                || (flags & libc::RENAME_EXCHANGE != 0 && is_dir(new_parent, new_name))
        };
        if moves_directory {
            let _moving = self.namespace.moving();
            self.rename_holding_lock(parent, name, new_parent, new_name, flags)
        } else {
            let _resolving = self.namespace.resolving();
            self.rename_holding_lock(parent, name, new_parent, new_name, flags)
        }
    }

    fn rename_holding_lock(
        &self,
        parent: INodeNo,
        name: &OsStr,
        new_parent: INodeNo,
        new_name: &OsStr,
        flags: u32,
    ) -> Result<(), Errno> {
        check_name(new_name)?;
        let upper = self.upper_or_erofs().map_err(errno)?;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let dir = self.dir_node(parent)?;
        let new_dir = self.dir_node(new_parent)?;
        let src = self.lookup_node(parent, name)?.ok_or(Errno::ENOENT)?;
        let dst = self.lookup_node(new_parent, new_name)?;
        if let Some(dst) = &dst {
            if Arc::ptr_eq(dst, &src) {
                return Ok(()); // same inode (hard links or same name): nothing to do
            }
            if flags & libc::RENAME_NOREPLACE != 0 {
                return Err(Errno::EEXIST);
            }
        } else if exchange {
            return Err(Errno::ENOENT);
        }
        let src_is_dir = src.kind == FileType::Directory;
        let dst_is_dir = dst.as_ref().is_some_and(|d| d.kind == FileType::Directory);
        // Without redirects a directory with lower content cannot move:
        // refused before anything is copied up, as in the kernel.
        let lower_dir = |d: &Node| {
            d.kind == FileType::Directory && d.state().origins.iter().any(|o| o.layer != UPPER)
        };
        if !self.create_redirects
            && (lower_dir(&src) || (exchange && dst.as_deref().is_some_and(lower_dir)))
        {
            return Err(Errno::EXDEV);
        }
        let dst_merged_dir = dst_is_dir
            && dst
                .as_ref()
                .is_some_and(|d| self.dir_state(d).origins.iter().any(|o| o.layer != UPPER));
        if !exchange && let Some(dst) = &dst {
            match (src_is_dir, dst_is_dir) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                // A target with lower content may look empty while its upper
                // holds whiteouts: decide from the merged view. (A pure upper
                // target is left to rename(2), as the kernel does.)
                (true, true)
                    if dst_merged_dir
                        && !merged_listing(&self.stack, &self.inos, &self.dir_state(dst))
                            .map_err(errno)?
                            .is_empty() =>
                {
                    return Err(Errno::ENOTEMPTY);
                }
                _ => {}
            }
        }
        let src_lower = self.lower_has(&self.dir_state(&dir), name).map_err(errno)?;
        let src_needs_whiteout = !exchange && src_lower;
        let dst_lower = self
            .lower_has(&self.dir_state(&new_dir), new_name)
            .map_err(errno)?;
        let merged = |d: &Node| self.dir_state(d).origins.iter().any(|o| o.layer != UPPER);
        let (old_parent_merged, new_parent_merged) = (merged(&dir), merged(&new_dir));
        // From here a failure may leave the directories changed (copy-ups,
        // marks): the kernel, which keeps what it cached after a failed
        // request, is told to ask again.
        let mut failed = ChangedIfFailed {
            fs: self,
            dirs: [&dir, &new_dir],
            armed: true,
        };
        self.copy_up(&dir).map_err(errno)?;
        self.copy_up(&new_dir).map_err(errno)?;
        self.ensure_name_in_upper(&src, &dir, name).map_err(errno)?;
        if let Some(dst) = dst.as_ref().filter(|_| exchange) {
            self.ensure_name_in_upper(dst, &new_dir, new_name)
                .map_err(errno)?;
        }
        let same_parent = dir.ino == new_dir.ino;
        let src_redirected = src_is_dir && self.set_redirect(&src, same_parent).map_err(errno)?;
        let dst_redirected = match dst.as_ref().filter(|_| exchange && dst_is_dir) {
            Some(dst) => self.set_redirect(dst, same_parent).map_err(errno)?,
            None => false,
        };
        // Like the kernel: a directory with no lower content that moves into
        // a merged directory, or onto a name lower layers hold, is made
        // opaque, so no lower directory can ever merge into it there.
        if src_is_dir && !src_redirected && (dst_lower || new_parent_merged) {
            let fd = upper.layer.dir_fd(&src.state().path).map_err(errno)?;
            make_opaque(fd.as_fd()).map_err(errno)?;
        }
        if let Some(dst) = dst.as_ref().filter(|_| exchange && dst_is_dir)
            && !dst_redirected
            && (src_lower || old_parent_merged)
        {
            let fd = upper.layer.dir_fd(&dst.state().path).map_err(errno)?;
            make_opaque(fd.as_fd()).map_err(errno)?;
        }
        // The name being moved (a hard-linked node may have another path).
        let src_path = dir.state().path.join(name);
        let pfd = upper.dir_fd(&dir.state().path).map_err(errno)?;
        let npfd = upper.dir_fd(&new_dir.state().path).map_err(errno)?;
        let (cname, cnew) = (cstr(name), cstr(new_name));
        let dst_in_upper = matches!(
            upper_entry(npfd.as_fd(), new_name).map_err(errno)?,
            UpperEntry::Present { .. }
        );
        let dst_pinned = dst
            .as_ref()
            .filter(|_| dst_in_upper && !exchange)
            .and_then(|d| self.pin_if_open(d, &new_dir.state().path, new_name));
        // The two names swapped in one step.
        let exchange_names = || {
            sys::renameat2(
                pfd.as_fd(),
                &cname,
                npfd.as_fd(),
                &cnew,
                libc::RENAME_EXCHANGE,
            )
        };
        let result = (|| -> io::Result<()> {
            if exchange {
                return exchange_names();
            }
            let target = upper_entry(npfd.as_fd(), new_name)?;
            // An empty merged directory as the target: its upper copy holds
            // whiteouts, which rename(2) will not replace. Swapping it to
            // the source name and clearing it there (as before) showed the
            // old copy at the source name, with the lower directory there
            // merged through it, until the whiteout came last; a crash in
            // between (SIGKILL, tests/crash_safety.rs) kept a duplicate and
            // resurrected lower entries. Like the kernel, the target is
            // first replaced by an empty opaque directory, so that one
            // rename (with RENAME_WHITEOUT if needed) below does the move.
            let cleared = src_is_dir
                && target == (UpperEntry::Present { is_dir: true })
                && dst_merged_dir
                && clear_merged_dir(upper, &new_dir.state().path, new_name)?;
            match target {
                // Over a whiteout: swap, and the whiteout is at the source
                // name in the same step. That is the one the source needs
                // if it has lower content (the kernel's "switch whiteouts");
                // otherwise it hides nothing and goes. (Removing it and then
                // making a new one let the lower source show through in
                // between, which a crash could keep.)
                UpperEntry::Whiteout if src_is_dir => {
                    exchange_names()?;
                    if src_needs_whiteout {
                        return Ok(());
                    }
                    remove_tree(&upper.layer, &dir.state().path, name)?;
                }
                // No opaque xattr could be stored (clear_merged_dir): swap,
                // then clear what now stands at the source name, in steps.
                UpperEntry::Present { is_dir: true }
                    if src_is_dir && dst_merged_dir && !cleared =>
                {
                    exchange_names()?;
                    remove_tree(&upper.layer, &dir.state().path, name)?;
                }
                UpperEntry::OciWhiteout => {
                    sys::renameat2(
                        pfd.as_fd(),
                        &cname,
                        npfd.as_fd(),
                        &cnew,
                        libc::RENAME_NOREPLACE,
                    )?;
                    sys::unlinkat(npfd.as_fd(), &whiteout_name_for(new_name.as_bytes()), 0)?;
                }
                _ if src_needs_whiteout => {
                    // Move and leave the whiteout in one step, like the kernel.
                    match sys::renameat2(
                        pfd.as_fd(),
                        &cname,
                        npfd.as_fd(),
                        &cnew,
                        libc::RENAME_WHITEOUT,
                    ) {
                        Ok(()) => return Ok(()),
                        // Rootless (no 0/0 devices): for a non-directory, a
                        // `.wh.` file first, so no step shows the lower one.
                        Err(e) if e.raw_os_error() == Some(libc::EPERM) && !src_is_dir => {
                            return oci_whiteout_first(pfd.as_fd(), &cname, || {
                                sys::renameat2(pfd.as_fd(), &cname, npfd.as_fd(), &cnew, 0)
                            });
                        }
                        // A filesystem without it, or a directory (whose
                        // lower content a `.wh.` next to it would hide in
                        // between): two steps, the whiteout second.
                        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EINVAL)) => {
                            sys::renameat2(pfd.as_fd(), &cname, npfd.as_fd(), &cnew, 0)?
                        }
                        Err(e) => return Err(e),
                    }
                }
                _ => sys::renameat2(pfd.as_fd(), &cname, npfd.as_fd(), &cnew, 0)?,
            }
            if src_needs_whiteout {
                upper.make_whiteout(pfd.as_fd(), &cname)?;
            }
            Ok(())
        })();
        result.map_err(errno)?;
        failed.armed = false;
        if let Some(dst) = dst.as_ref().filter(|_| !exchange) {
            self.name_removed(dst, dst_in_upper, &new_dir, new_name);
            self.orphan_if_nameless(dst, dst_pinned);
        }
        let dst_path = new_dir.state().path.join(new_name);
        let mut moves = Vec::new();
        if src_is_dir {
            moves.push((src_path.clone(), dst_path.clone()));
        }
        if exchange && dst_is_dir {
            moves.push((dst_path, src_path));
        }
        if !moves.is_empty() {
            self.move_descendants(&moves);
        }
        if !src_is_dir {
            src.remove_name(dir.ino, name);
            src.add_name(new_dir.ino, new_name);
        }
        if let Some(dst) = dst
            .as_ref()
            .filter(|d| exchange && d.kind != FileType::Directory)
        {
            dst.remove_name(new_dir.ino, new_name);
            dst.add_name(dir.ino, name);
        }
        self.dcache.invalidate(dir.ino, name);
        self.dcache.invalidate(new_dir.ino, new_name);
        self.resolve_fresh(&new_dir, new_name).map_err(errno)?;
        if exchange {
            self.resolve_fresh(&dir, name).map_err(errno)?;
        }
        self.refresh(&dir);
        self.refresh(&new_dir);
        Ok(())
    }

    /// After directories moved (`from` → `to`, several at once for an
    /// exchange), points every known node below them at its new path. Lower
    /// layers still hold their content at the old paths, so only the merged
    /// path and upper origins change. Forgotten nodes may linger in the
    /// dentry cache with old paths, so the cache is dropped (directory
    /// renames are rare).
    fn move_descendants(&self, moves: &[(RelPath, RelPath)]) {
        let prefixes: Vec<(Vec<u8>, &RelPath)> = moves
            .iter()
            .map(|(from, to)| ([from.as_bytes(), b"/"].concat(), to))
            .collect();
        let rebase = |p: &RelPath| -> Option<RelPath> {
            prefixes.iter().find_map(|(prefix, to)| {
                let rest = p.as_bytes().strip_prefix(prefix.as_slice())?;
                Some(to.join(OsStr::from_bytes(rest)))
            })
        };
        self.nodes.for_each(|node| {
            let new_path = rebase(&node.state().path);
            if let Some(new_path) = new_path {
                node.update(|s| {
                    s.path = new_path;
                    for o in s.origins.iter_mut().filter(|o| o.layer == UPPER) {
                        if let Some(p) = rebase(&o.path) {
                            o.path = p;
                        }
                    }
                });
            }
        });
        self.dcache.clear();
    }
}

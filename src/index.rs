//! Hard links that survive copy-up (what kernel overlayfs does with
//! `index=on`).
//!
//! A lower file with several names is copied up once, into
//! `WORKDIR/strata-index/INO` (INO being the inode number strata shows for
//! it); each of its names that is copied up afterwards becomes a hard link
//! to that copy. A lower name not copied up yet resolves to the index entry
//! too, so every name shows the same content and inode number, during the
//! mount and after a remount.
//!
//! `st_nlink` counts the visible names: the index inode's real link count
//! plus a bias kept in the internal xattr `user.strata.nlink` on it (the
//! kernel keeps the same kind of number in `trusted.overlay.nlink`).

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use fuser::FileType;

use crate::copy_up::{UPPER, keeping_times, open_path_in};
use crate::dir::xattr_refused;
use crate::fs::Strata;
use crate::inode::{InoMap, LayerId, Node, NodeState, Origin};
use crate::layer::{DirLayer, Layer, RelPath, is_absent};
use crate::readdir::merged_listing;
use crate::sys;

const INDEX_DIR: &CStr = c"strata-index";
const NLINK_XATTR: &CStr = c"user.strata.nlink";

/// The index directory, a layer outside the merged tree.
#[derive(Debug)]
pub struct Index {
    pub layer: Arc<DirLayer>,
    /// Its id in the layer stack.
    pub id: LayerId,
}

impl Index {
    /// Opens (creating it if needed) the index directory inside the workdir.
    pub fn open(work: &DirLayer) -> io::Result<DirLayer> {
        match sys::mkdirat(work.root_fd(), INDEX_DIR, 0o700) {
            Err(e) if e.raw_os_error() != Some(libc::EEXIST) => return Err(e),
            _ => {}
        }
        DirLayer::from_fd(sys::openat2(
            work.root_fd(),
            INDEX_DIR,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
            sys::RESOLVE_IN_LAYER,
        )?)
    }

    /// The entry name of the inode shown as `ino`.
    pub fn key(ino: u64) -> RelPath {
        RelPath::root().join(OsStr::new(&format!("{ino:016x}")))
    }

    /// Teaches `inos` that every upper link of an index entry shows the
    /// entry's inode number.
    pub fn register_all(&self, inos: &InoMap) -> io::Result<()> {
        for name in self.layer.raw_names(&RelPath::root())? {
            let Some(ino) = std::str::from_utf8(name.as_bytes())
                .ok()
                .and_then(|n| u64::from_str_radix(n, 16).ok())
            else {
                continue;
            };
            let st = self.layer.stat(&RelPath::root().join(&name))?;
            inos.alias(st.dev, st.ino, ino);
        }
        Ok(())
    }

    fn bias(&self, key: &RelPath) -> i64 {
        self.layer
            .get_xattr(key, NLINK_XATTR)
            .ok()
            .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok())
            .unwrap_or(0)
    }

    fn set_bias(&self, key: &RelPath, bias: i64) -> io::Result<()> {
        set_bias_of(self.layer.open_path(key)?.as_fd(), bias)
    }
}

/// Records the link-count bias on an entry's object; an entry in the
/// making gets it before it is placed, so no crash leaves one without.
fn set_bias_of(fd: BorrowedFd<'_>, bias: i64) -> io::Result<()> {
    sys::fsetxattr_any(fd, NLINK_XATTR, bias.to_string().as_bytes(), 0)
}

/// Builds an index entry in the workdir as `tmp`: a copy of the lower file
/// with its bias set.
fn build_entry(fs: &Strata, state: &NodeState, tmp: &CStr, bias: i64) -> io::Result<()> {
    fs.copy_non_dir(state, tmp)?;
    let upper = fs.upper_or_erofs()?;
    set_bias_of(open_path_in(upper.work(), tmp)?.as_fd(), bias)
}

impl Strata {
    /// Points a freshly resolved non-directory at its index entry when its
    /// inode has one: a lower name is served from the entry, an upper link
    /// of it gets the entry's link-count bias.
    pub(crate) fn apply_index(&self, ino: u64, state: &mut NodeState) {
        let Some(index) = &self.index else { return };
        if state.stat.is_dir() || state.stat.nlink < 2 {
            return;
        }
        let key = Index::key(ino);
        let Ok(entry) = index.layer.stat(&key) else {
            return;
        };
        if state.top().layer == UPPER {
            if (entry.dev, entry.ino) != (state.stat.dev, state.stat.ino) {
                return; // an unrelated upper file
            }
        } else {
            state.origins = vec![Origin {
                layer: index.id,
                path: key.clone(),
            }];
            state.stat = entry;
        }
        state.nlink_bias = index.bias(&key);
    }

    /// Whether copying `node` up goes through the index.
    pub(crate) fn uses_index(&self, node: &Node, state: &NodeState) -> bool {
        match &self.index {
            // Regular files only: the link count lives in a user.* xattr,
            // which symlinks and special files cannot carry.
            Some(index) => {
                node.kind == FileType::RegularFile
                    && (state.top().layer == index.id || state.stat.nlink > 1)
            }
            None => false,
        }
    }

    /// Copies a lower hard link up through the index: the first name copies
    /// the data into the index, every name becomes a link to it in the upper.
    pub(crate) fn copy_up_indexed(
        &self,
        node: &Node,
        state: &NodeState,
        parent: &RelPath,
        name: &OsStr,
    ) -> io::Result<()> {
        let index = self.index.as_ref().expect("uses_index checked");
        let upper = self.upper_or_erofs()?;
        let key = Index::key(node.ino);
        let key_c = CString::new(key.as_bytes()).expect("hex");
        let bias = match index.layer.stat(&key) {
            Ok(_) => index.bias(&key) - 1, // one more name moves into the upper
            Err(e) if is_absent(&e) => {
                // Placed alone, the entry is 1 link of nlink; then it and
                // this name are 2. (A crash between the bias below and the
                // link shows one link too few after a remount.)
                let alone = state.stat.nlink as i64 - 1;
                self.place_new(index.layer.root_fd(), &key_c, false, |tmp| {
                    build_entry(self, state, tmp, alone)
                })?;
                alone - 1
            }
            Err(e) => return Err(e),
        };
        index.set_bias(&key, bias)?;
        let pfd = upper.dir_fd(parent)?;
        let cname = CString::new(name.as_bytes()).expect("no NUL");
        keeping_times(pfd.as_fd(), || {
            sys::linkat(index.layer.root_fd(), &key_c, pfd.as_fd(), &cname)
        })?;
        let entry = index.layer.stat(&key)?;
        self.inos.alias(entry.dev, entry.ino, node.ino);
        node.update(|s| s.nlink_bias = bias);
        // The copy-up itself is done: a failed walk (an unreadable
        // directory, say) leaves those names as they are, shown from the
        // index as before.
        if let Err(e) = self.link_remaining_names(node, &key_c, bias) {
            log::warn!("other names of inode {} stay lower: {e}", node.ino);
        }
        Ok(())
    }

    /// Links every name of an indexed inode that the merged tree still
    /// serves from a lower layer into the upper too. The upper then holds
    /// the whole change on its own: read later as a lower layer (container
    /// storage does that at commit and at every build step), it shows each
    /// of those names with the new content, as this mount does, where a
    /// lower name left alone would show the old one. The kernel, with
    /// `index=on`, leaves them out.
    ///
    /// `bias` says how many names are missing: the shown link count is the
    /// entry's real count (itself plus the upper names) plus the bias, so
    /// `bias + 1` names are still outside the upper. They are found by
    /// walking the merged tree, which is the only place that knows them
    /// (redirects and whiteouts included); the walk stops at the last one.
    fn link_remaining_names(&self, node: &Node, key: &CStr, mut bias: i64) -> io::Result<()> {
        if bias < 0 {
            return Ok(());
        }
        let index = self.index.as_ref().expect("uses_index checked");
        let upper = self.upper_or_erofs()?;
        let mut dirs = vec![self.stack.root_state()?];
        while let Some(dir) = dirs.pop() {
            for entry in merged_listing(&self.stack, &self.inos, &dir)? {
                let wanted = entry.ino == node.ino && entry.kind == FileType::RegularFile;
                if entry.kind != FileType::Directory && !wanted {
                    continue;
                }
                let Some(state) = self.stack.lookup(&dir, &entry.name)? else {
                    continue;
                };
                if state.stat.is_dir() {
                    dirs.push(state);
                    continue;
                }
                if !wanted || state.top().layer == UPPER {
                    continue;
                }
                self.copy_up_dir_path(&dir.path)?;
                let pfd = upper.dir_fd(&dir.path)?;
                let name = CString::new(entry.name.as_bytes()).expect("no NUL");
                keeping_times(pfd.as_fd(), || {
                    sys::linkat(index.layer.root_fd(), key, pfd.as_fd(), &name)
                })?;
                bias -= 1;
                index.set_bias(&Index::key(node.ino), bias)?;
                node.update(|s| s.nlink_bias = bias);
                if bias < 0 {
                    break;
                }
            }
        }
        self.refresh(node); // the real link count grew
        Ok(())
    }

    /// Before a lower name of a hard-linked file is whited out, gives the
    /// inode an index entry (a copy, as the kernel does with `index=on`),
    /// so the other names keep a correct link count from then on.
    pub(crate) fn index_lower_hardlink(&self, node: &Node) -> io::Result<()> {
        let Some(index) = &self.index else {
            return Ok(());
        };
        let state = node.state().clone();
        let key = Index::key(node.ino);
        if node.kind != FileType::RegularFile
            || state.stat.nlink < 2
            || state.top().layer == UPPER
            || state.top().layer == index.id
            || index.layer.stat(&key).is_ok()
        {
            return Ok(());
        }
        let key_c = CString::new(key.as_bytes()).expect("hex");
        // Only the entry links the inode: it shows the lower count of names.
        let bias = state.stat.nlink as i64 - 1;
        self.place_new(index.layer.root_fd(), &key_c, false, |tmp| {
            build_entry(self, &state, tmp, bias)
        })?;
        let entry = index.layer.stat(&key)?;
        self.inos.alias(entry.dev, entry.ino, node.ino);
        node.update(|s| {
            s.origins = vec![Origin {
                layer: index.id,
                path: key.clone(),
            }];
            s.stat = entry;
            s.nlink_bias = bias;
        });
        Ok(())
    }

    /// A name of an indexed inode is gone; `lower_only`: it was a lower name
    /// (whited out), so the upper inode keeps its links and the bias drops.
    /// Returns whether the inode has an index entry.
    pub(crate) fn index_name_removed(&self, node: &Node, lower_only: bool) -> bool {
        let Some(index) = &self.index else {
            return false;
        };
        let key = Index::key(node.ino);
        if index.layer.stat(&key).is_err() {
            return false;
        }
        if lower_only {
            let bias = node.state().nlink_bias - 1;
            if let Err(e) = index.set_bias(&key, bias) {
                log::warn!("cannot update the link count of {key:?}: {e}");
            }
            node.update(|s| s.nlink_bias = bias);
        }
        true
    }

    /// The name in a node's path is gone and no other name of it is known:
    /// serve it from its index entry. Returns false without one.
    pub(crate) fn detach_to_index(&self, node: &Node) -> bool {
        let Some(index) = &self.index else {
            return false;
        };
        let key = Index::key(node.ino);
        let Ok(entry) = index.layer.stat(&key) else {
            return false;
        };
        node.update(|s| {
            s.origins = vec![Origin {
                layer: index.id,
                path: key,
            }];
            s.stat = entry;
            s.detached = true;
        });
        true
    }

    /// Before an upper file gets a second name, gives it an index entry
    /// (not counted as a name), so that any of its names can go first.
    pub(crate) fn index_upper_file(&self, node: &Node) -> io::Result<()> {
        let Some(index) = &self.index else {
            return Ok(());
        };
        let key = Index::key(node.ino);
        if node.kind != FileType::RegularFile || index.layer.stat(&key).is_ok() {
            return Ok(());
        }
        let upper = self.upper_or_erofs()?;
        let path = node.state().top().path.clone();
        let (dir, name) = path
            .split_last()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let dfd = upper.dir_fd(&dir)?;
        let key_c = CString::new(key.as_bytes()).expect("hex");
        let name_c = CString::new(name.as_bytes()).expect("no NUL");
        sys::linkat(dfd.as_fd(), &name_c, index.layer.root_fd(), &key_c)?;
        if let Err(e) = index.set_bias(&key, -1) {
            // Without its bias the entry would count as a name: take it
            // back. Where no xattr can be stored at all, the link is made
            // without an entry (a plain upper hard link).
            sys::unlinkat(index.layer.root_fd(), &key_c, 0)?;
            return if xattr_refused(&e) { Ok(()) } else { Err(e) };
        }
        node.update(|s| s.nlink_bias = -1);
        Ok(())
    }

    /// The layer to change a node's object in: the upper, or the index for
    /// a detached hard link.
    pub(crate) fn writable_layer(&self, layer: LayerId) -> io::Result<&DirLayer> {
        if layer == UPPER
            && let Some(upper) = &self.upper
        {
            return Ok(&upper.layer);
        }
        match &self.index {
            Some(index) if index.id == layer => Ok(&index.layer),
            _ => Err(io::Error::from_raw_os_error(libc::EROFS)),
        }
    }
}

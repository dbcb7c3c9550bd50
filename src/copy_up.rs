//! Copy-up: bringing a lower object into the upper layer before it changes.
//!
//! Every copy is built in the workdir under a temporary name and renamed
//! into the upper in one step, so the upper holds either nothing or the
//! complete object, never a partial one. Parents are copied first, with
//! their mode, owner, times and xattrs. Data keeps its holes (SEEK_DATA /
//! SEEK_HOLE + copy_file_range, which also reflinks where the filesystem
//! can).

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fuser::FileType;
use log::warn;

use crate::dir::{oci_whiteout, xattr_refused};
use crate::fs::Strata;
use crate::inode::{LayerId, Node, NodeState, Origin};
use crate::layer::{DirLayer, FileData, Layer, METACOPY_XATTRS, RelPath, Stat, is_absent};
use crate::sys;
use crate::xattr;

/// The upper layer is always layer 0 of the stack.
pub const UPPER: LayerId = 0;

/// Names of temporary objects in the workdir; leftovers are removed at mount.
const TMP_PREFIX: &str = "#strata-tmp.";

/// A 0/0 character device in the workdir that every whiteout is a hard
/// link of, as kernel overlayfs shares one: a link costs no inode, which a
/// filesystem allocates slowly when it has freed many lately.
const SHARED_WHITEOUT: &CStr = c"strata-whiteout";

/// The writable side of the stack: the upper layer and its workdir.
#[derive(Debug)]
pub struct Upper {
    pub layer: Arc<DirLayer>,
    /// The workdir, with the same relative-access rules as a layer.
    work_layer: DirLayer,
    next_tmp: AtomicU64,
    /// Locks on the upper and work directories, held for the daemon's life.
    _in_use: [OwnedFd; 2],
}

impl Upper {
    /// Opens the workdir and removes what an earlier run left in it. Like
    /// the kernel, refuses (EBUSY) an upper or workdir another mount uses:
    /// two writers would break each other's copy-ups and whiteouts.
    pub fn open(layer: Arc<DirLayer>, workdir: &Path) -> io::Result<Upper> {
        let c = CString::new(workdir.as_os_str().as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let work_layer = DirLayer::from_fd(sys::open_dir_path(&c)?)?;
        let lock = |dir: BorrowedFd<'_>, what: &str, path: &Path| -> io::Result<OwnedFd> {
            let fd = sys::reopen(dir, libc::O_RDONLY | libc::O_DIRECTORY)?;
            match sys::try_lock_exclusive(fd.as_fd()) {
                Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Err(io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    format!(
                        "{what} '{}' is in use by another mount (EBUSY)",
                        path.display()
                    ),
                )),
                other => other.map(|()| fd),
            }
        };
        let in_use = [
            lock(layer.root_fd(), "upperdir", layer.source())?,
            lock(work_layer.root_fd(), "workdir", workdir)?,
        ];
        let upper = Upper {
            layer,
            work_layer,
            next_tmp: AtomicU64::new(0),
            _in_use: in_use,
        };
        upper.clean_workdir()?;
        if let Err(e) = upper.renew_shared_whiteout() {
            log::info!("no shared whiteout ({e}): each whiteout gets its own inode");
        }
        Ok(upper)
    }

    /// Makes a whiteout `name` in `dir`: a link of the shared whiteout, else
    /// a 0/0 character device of its own, else (where mknod is refused,
    /// rootless) a `.wh.NAME` file, as fuse-overlayfs does.
    pub fn make_whiteout(&self, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
        match self.device_whiteout(dir, name) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => oci_whiteout(dir, name),
            other => other,
        }
    }

    /// A whiteout `name` in `dir` in the kernel's format only (a 0/0
    /// device, linked or made): what a rename can put over a name in one
    /// step. EPERM where mknod is refused.
    pub fn device_whiteout(&self, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
        for _ in 0..2 {
            match sys::linkat(self.work(), SHARED_WHITEOUT, dir, name) {
                Ok(()) => return Ok(()),
                // Full (EMLINK) or gone: a new one, once.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMLINK | libc::ENOENT)) => {
                    if self.renew_shared_whiteout().is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        sys::mknodat(dir, name, libc::S_IFCHR, 0)
    }

    /// Puts a fresh shared whiteout in place (at mount, or when the old one
    /// has as many links as the filesystem allows).
    fn renew_shared_whiteout(&self) -> io::Result<()> {
        if let Ok(st) = sys::fstatat(self.work(), SHARED_WHITEOUT, libc::AT_SYMLINK_NOFOLLOW)
            && st.st_mode & libc::S_IFMT == libc::S_IFCHR
            && st.st_rdev == 0
            && st.st_nlink < 1000
        {
            return Ok(()); // a fresh one (another thread's, or from last time)
        }
        let tmp = self.tmp_name();
        sys::mknodat(self.work(), &tmp, libc::S_IFCHR, 0)?;
        sys::renameat2(self.work(), &tmp, self.work(), SHARED_WHITEOUT, 0).inspect_err(|_| {
            let _ = sys::unlinkat(self.work(), &tmp, 0);
        })
    }

    pub fn work(&self) -> BorrowedFd<'_> {
        self.work_layer.root_fd()
    }

    /// The workdir as a layer, for removing trees in it.
    pub fn work_layer(&self) -> &DirLayer {
        &self.work_layer
    }

    /// A fresh name for a temporary object in the workdir.
    pub fn tmp_name(&self) -> CString {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        CString::new(format!("{TMP_PREFIX}{}.{n}", std::process::id())).expect("no NUL")
    }

    /// A new, empty regular file `tmp` in the workdir, open for writing.
    pub fn create_tmp_file(&self, tmp: &CStr) -> io::Result<OwnedFd> {
        sys::openat2(
            self.work(),
            tmp,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
            0o600,
            sys::RESOLVE_IN_LAYER,
        )
    }

    /// An O_PATH fd of directory `path` in the upper.
    pub fn dir_fd(&self, path: &RelPath) -> io::Result<OwnedFd> {
        self.layer.dir_fd(path)
    }

    fn clean_workdir(&self) -> io::Result<()> {
        let work = &self.work_layer;
        let root = RelPath::root();
        for name in work.raw_names(&root)? {
            if name.as_bytes().starts_with(TMP_PREFIX.as_bytes()) {
                warn!("removing leftover {name:?} from the workdir");
                remove_tree(work, &root, &name)?;
            }
        }
        Ok(())
    }
}

/// Removes `name` in `dir` of `layer`, recursively for a directory.
pub fn remove_tree(layer: &DirLayer, dir: &RelPath, name: &OsStr) -> io::Result<()> {
    let dirfd = layer.dir_fd(dir)?;
    let cname = CString::new(name.as_bytes()).expect("no NUL");
    let st = sys::fstatat(dirfd.as_fd(), &cname, libc::AT_SYMLINK_NOFOLLOW)?;
    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        let path = dir.join(name);
        for child in layer.raw_names(&path)? {
            remove_tree(layer, &path, &child)?;
        }
        sys::unlinkat(dirfd.as_fd(), &cname, libc::AT_REMOVEDIR)
    } else {
        sys::unlinkat(dirfd.as_fd(), &cname, 0)
    }
}

fn name_cstr(name: &OsStr) -> CString {
    CString::new(name.as_bytes()).expect("names never contain NUL")
}

impl Strata {
    /// Makes sure directory `path` of the merged tree exists in the upper,
    /// copying each missing ancestor from the lower layer that supplies it.
    pub(crate) fn copy_up_dir_path(&self, path: &RelPath) -> io::Result<()> {
        let upper = self.upper_or_erofs()?;
        let Some((parent, name)) = path.split_last() else {
            return Ok(()); // the upper's root always exists
        };
        match upper.layer.stat(path) {
            Ok(st) if st.is_dir() => return Ok(()),
            Ok(_) => return Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
            Err(e) if is_absent(&e) => {}
            Err(e) => return Err(e),
        }
        self.copy_up_dir_path(&parent)?;
        let state = self
            .resolve_path(path)?
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        let src = state
            .origins
            .iter()
            .find(|o| o.layer != UPPER)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        let stat = self.stack.get(src.layer).stat(&src.path)?;
        self.copy_dir_into_upper(src, &stat, &parent, name)
    }

    /// Resolves a merged path from the root, following redirects.
    fn resolve_path(&self, path: &RelPath) -> io::Result<Option<NodeState>> {
        let mut state = self.stack.root_state()?;
        if path.is_root() {
            return Ok(Some(state));
        }
        for component in path.as_bytes().split(|&b| b == b'/') {
            match self.stack.lookup(&state, OsStr::from_bytes(component))? {
                Some(next) => state = next,
                None => return Ok(None),
            }
        }
        Ok(Some(state))
    }

    /// Creates directory `name` in upper directory `parent` as a copy of
    /// `src` (attributes only: its entries stay in the lower layers).
    fn copy_dir_into_upper(
        &self,
        src: &Origin,
        stat: &Stat,
        parent: &RelPath,
        name: &OsStr,
    ) -> io::Result<()> {
        let upper = self.upper_or_erofs()?;
        let tmp = upper.tmp_name();
        sys::mkdirat(upper.work(), &tmp, 0o700)?;
        let result = (|| -> io::Result<()> {
            let fd = open_dir_in(upper.work(), &tmp)?;
            copy_metadata(self.stack.get(src.layer), &src.path, stat, fd.as_fd())?;
            let pfd = upper.dir_fd(parent)?;
            keeping_times(pfd.as_fd(), || {
                sys::renameat2(
                    upper.work(),
                    &tmp,
                    pfd.as_fd(),
                    &name_cstr(name),
                    libc::RENAME_NOREPLACE,
                )
            })?;
            // Readdir of the parent now reports the upper copy's inode:
            // keep showing the number the directory had.
            let copy = sys::fstat(fd.as_fd())?;
            self.inos
                .alias(copy.st_dev, copy.st_ino, self.inos.ino(stat.dev, stat.ino));
            Ok(())
        })();
        if result.is_err() {
            let _ = sys::unlinkat(upper.work(), &tmp, libc::AT_REMOVEDIR);
        }
        match result {
            // Another request copied the same directory up first.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            other => other,
        }
    }

    /// Copies `node` into the upper (a no-op when it is already there) and
    /// points the node at its upper copy. Its inode number does not change.
    pub(crate) fn copy_up(&self, node: &Node) -> io::Result<()> {
        let _serialised = node.copy_up_lock.lock();
        let state = node.state().clone();
        if state.top().layer == UPPER && state.is_metacopy() {
            return self.copy_up_data(node, &state);
        }
        if state.top().layer == UPPER || state.detached {
            return Ok(());
        }
        let upper = self.upper_or_erofs()?;
        let (parent, name) = state
            .path
            .split_last()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        self.copy_up_dir_path(&parent)?;
        if node.kind == FileType::Directory {
            match upper.layer.stat(&state.path) {
                Ok(st) if st.is_dir() => {} // copied up as someone's ancestor
                Ok(_) => return Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
                Err(e) if is_absent(&e) => {
                    self.copy_dir_into_upper(state.top(), &state.stat, &parent, name)?
                }
                Err(e) => return Err(e),
            }
        } else if self.uses_index(node, &state) {
            self.copy_up_indexed(node, &state, &parent, name)?;
        } else {
            let pfd = upper.dir_fd(&parent)?;
            self.place_new(pfd.as_fd(), &name_cstr(name), true, |tmp| {
                self.copy_non_dir(&state, tmp)
            })?;
        }
        let upper_stat = upper.layer.stat(&state.path)?;
        self.inos.alias(upper_stat.dev, upper_stat.ino, node.ino);
        node.update(|s| {
            let origin = Origin {
                layer: UPPER,
                path: s.path.clone(),
            };
            if node.kind == FileType::Directory {
                s.origins.insert(0, origin);
            } else {
                s.origins = vec![origin];
            }
            s.stat = upper_stat;
        });
        // After the state says upper: an open counted later opens the copy,
        // one counted earlier is seen here and moves to it.
        if node.kind == FileType::RegularFile && node.is_open() {
            match upper.layer.open(&state.path, libc::O_RDONLY) {
                Ok(fd) => node.hold_upper_copy(fd),
                Err(e) => log::warn!("open handles keep reading the lower copy of {state:?}: {e}"),
            }
        }
        Ok(())
    }

    /// Copies `node` up for a change of metadata only (chmod, chown,
    /// utimens, xattrs): with `metacopy=on`, a regular lower file of one
    /// name gets an upper file without its data (the kernel's metacopy
    /// format: same size, no blocks, `trusted.overlay.metacopy`), which is
    /// as quick for 1 GiB as for nothing; the data follows on the first
    /// write. Anything else is copied up whole.
    pub(crate) fn copy_up_metadata(&self, node: &Node) -> io::Result<()> {
        let state = node.state().clone();
        if state.top().layer == UPPER {
            return Ok(()); // its metadata is up already (its data maybe not)
        }
        if !self.metacopy
            || node.kind != FileType::RegularFile
            || state.detached
            || state.stat.nlink > 1
            || self.uses_index(node, &state)
        {
            return self.copy_up(node);
        }
        let serialised = node.copy_up_lock.lock();
        let state = node.state().clone();
        if state.top().layer == UPPER {
            return Ok(()); // another request copied it up meanwhile
        }
        let upper = self.upper_or_erofs()?;
        let (parent, name) = state
            .path
            .split_last()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        self.copy_up_dir_path(&parent)?;
        let src = state.top().clone();
        let data = state.data().clone();
        let layer = self.stack.get(src.layer);
        let pfd = upper.dir_fd(&parent)?;
        let mut unmarkable = false;
        let placed = self.place_new(pfd.as_fd(), &name_cstr(name), true, |tmp| {
            let out = upper.create_tmp_file(tmp)?;
            sys::ftruncate(out.as_fd(), state.stat.size)?;
            copy_metadata(layer, &src.path, &state.stat, out.as_fd())?;
            set_metacopy(out.as_fd()).inspect_err(|e| unmarkable = xattr_refused(e))
        });
        if unmarkable {
            // Neither metacopy xattr can be stored here: a whole copy
            // instead (the workdir kept nothing of the attempt).
            drop(serialised);
            return self.copy_up(node);
        }
        placed?;
        let mut upper_stat = upper.layer.stat(&state.path)?;
        self.inos.alias(upper_stat.dev, upper_stat.ino, node.ino);
        upper_stat.blocks = state.stat.blocks; // the data's, as the kernel shows
        node.update(|s| {
            s.origins = vec![
                Origin {
                    layer: UPPER,
                    path: s.path.clone(),
                },
                data,
            ];
            s.stat = upper_stat;
        });
        Ok(())
    }

    /// The data of a metadata-only upper file, copied in from the file
    /// below, in place. Until the metacopy mark goes (last), the data is
    /// still read from below: a crash part way loses nothing. The file's
    /// times are kept (filling it in is no change to it).
    fn copy_up_data(&self, node: &Node, state: &NodeState) -> io::Result<()> {
        let upper = self.upper_or_erofs()?;
        let data = state.data();
        let input = self
            .stack
            .get(data.layer)
            .open_data(&data.path, libc::O_RDONLY)?;
        let output = upper.layer.open(&state.top().path, libc::O_WRONLY)?;
        let before: Stat = sys::fstat(output.as_fd())?.into();
        // Writing data drops file capabilities (and, but for root, set-id
        // bits): what the metadata copy-up set is put back after.
        let caps = sys::fgetxattr(output.as_fd(), c"security.capability").ok();
        copy_file_data(&input, output.as_fd(), before.size)?;
        if let Some(caps) = caps {
            sys::fsetxattr_any(output.as_fd(), c"security.capability", &caps, 0)?;
        }
        if sys::fstat(output.as_fd())?.st_mode != before.mode {
            sys::fchmod_any(output.as_fd(), before.mode & 0o7777)?;
        }
        if self.fsync {
            sys::fsync(output.as_fd(), false)?;
        }
        let marks = upper.layer.file_marks(&state.top().path)?;
        for x in METACOPY_XATTRS {
            // Only one of them is there; the other may not be ours to
            // remove (trusted.* rootless) or not exist at all.
            match sys::fremovexattr_any(output.as_fd(), x) {
                Err(e)
                    if marks.metacopy
                        && !matches!(
                            e.raw_os_error(),
                            Some(libc::ENODATA | libc::EPERM | libc::ENOTSUP)
                        ) =>
                {
                    return Err(e);
                }
                _ => {}
            }
        }
        sys::futimens_any(
            output.as_fd(),
            Some(Some(before.atime)),
            Some(Some(before.mtime)),
        )?;
        let stat: Stat = sys::fstat(output.as_fd())?.into();
        node.update(|s| {
            s.origins.truncate(1);
            s.stat = stat;
        });
        if node.is_open() {
            // Handles still reading the lower data move to the copy.
            node.hold_upper_copy(upper.layer.open(&state.top().path, libc::O_RDONLY)?);
        }
        Ok(())
    }

    /// Builds a new object as a temporary name in the workdir (`build`) and
    /// moves it to `name` in `dir`, never over an existing name, keeping
    /// `dir`'s times if asked (a copy-up is no change in the merged view).
    /// On any failure the workdir keeps nothing.
    pub(crate) fn place_new(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        keep_dir_times: bool,
        build: impl FnOnce(&CStr) -> io::Result<()>,
    ) -> io::Result<()> {
        let upper = self.upper_or_erofs()?;
        let tmp = upper.tmp_name();
        let result = build(&tmp).and_then(|()| {
            let rename = || sys::renameat2(upper.work(), &tmp, dir, name, libc::RENAME_NOREPLACE);
            if keep_dir_times {
                keeping_times(dir, rename)
            } else {
                rename()
            }
        });
        if result.is_err() {
            let _ = sys::unlinkat(upper.work(), &tmp, 0);
        }
        result
    }

    /// Builds a copy of a lower non-directory as `tmp` in the workdir.
    /// (`state`'s metadata from its top origin; its data, for a lower
    /// metadata-only file, from the file below.)
    pub(crate) fn copy_non_dir(&self, state: &NodeState, tmp: &CStr) -> io::Result<()> {
        let upper = self.upper_or_erofs()?;
        let (src, stat) = (state.top(), &state.stat);
        let layer = self.stack.get(src.layer);
        match stat.kind() {
            FileType::RegularFile => {
                let data = state.data();
                let input = self
                    .stack
                    .get(data.layer)
                    .open_data(&data.path, libc::O_RDONLY)?;
                let output = upper.create_tmp_file(tmp)?;
                copy_file_data(&input, output.as_fd(), stat.size)?;
                copy_metadata(layer, &src.path, stat, output.as_fd())?;
                // Durable before the rename makes it visible: after a crash
                // the upper holds the whole copy or none (as the kernel).
                // An empty file has no data to lose.
                if self.fsync && stat.size > 0 {
                    sys::fsync(output.as_fd(), false)?;
                }
                Ok(())
            }
            FileType::Symlink => {
                let target = CString::new(layer.readlink(&src.path)?)
                    .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
                sys::symlinkat(&target, upper.work(), tmp)?;
                let fd = open_path_in(upper.work(), tmp)?;
                copy_metadata(layer, &src.path, stat, fd.as_fd())
            }
            _ => {
                sys::mknodat(upper.work(), tmp, stat.mode & libc::S_IFMT, stat.rdev)?;
                let fd = open_path_in(upper.work(), tmp)?;
                copy_metadata(layer, &src.path, stat, fd.as_fd())
            }
        }
    }
}

/// Marks a file metadata-only: `trusted.overlay.metacopy` like the kernel,
/// or `user.overlay.metacopy` where trusted xattrs are refused (rootless).
/// Fails as the user.* attempt did where both are refused.
fn set_metacopy(fd: BorrowedFd<'_>) -> io::Result<()> {
    match sys::fsetxattr_any(fd, METACOPY_XATTRS[0], b"", 0) {
        Err(e) if xattr_refused(&e) => sys::fsetxattr_any(fd, METACOPY_XATTRS[1], b"", 0),
        other => other,
    }
}

/// Runs `change` in directory `dir` and then restores the directory's
/// atime and mtime: a copy-up is no change in the merged view, so its
/// parent keeps its times (as in kernel overlayfs).
pub(crate) fn keeping_times(
    dir: BorrowedFd<'_>,
    change: impl FnOnce() -> io::Result<()>,
) -> io::Result<()> {
    let before: Stat = sys::fstat(dir)?.into();
    change()?;
    sys::futimens_any(dir, Some(Some(before.atime)), Some(Some(before.mtime)))
}

/// An O_PATH fd of directory `name` in `dir`, never following a symlink.
pub(crate) fn open_dir_in(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    sys::openat2(
        dir,
        name,
        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
        sys::RESOLVE_IN_LAYER,
    )
}

/// An O_PATH fd of `name` in `dir`, never following a symlink.
pub(crate) fn open_path_in(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    sys::openat2(
        dir,
        name,
        libc::O_PATH | libc::O_NOFOLLOW,
        0,
        sys::RESOLVE_IN_LAYER,
    )
}

/// Copies `size` bytes of a layer file's data: from an fd keeping its
/// holes, from a mapping (a tar layer's file) by writing it out.
fn copy_file_data(input: &FileData, output: BorrowedFd<'_>, size: u64) -> io::Result<()> {
    match input {
        FileData::Fd(fd) => copy_data(fd.as_fd(), output, size),
        FileData::Mapped(bytes) => {
            let bytes = bytes.slice(0, size);
            for (i, chunk) in bytes.chunks(1 << 20).enumerate() {
                sys::pwrite_all(output, chunk, (i as u64) << 20)?;
            }
            sys::ftruncate(output, size)
        }
    }
}

/// Copies `size` bytes, skipping holes so sparse files stay sparse.
fn copy_data(input: BorrowedFd<'_>, output: BorrowedFd<'_>, size: u64) -> io::Result<()> {
    let mut offset = 0;
    while offset < size {
        let Some(data) = sys::lseek(input, offset, libc::SEEK_DATA)? else {
            break; // only a hole is left
        };
        let end = sys::lseek(input, data, libc::SEEK_HOLE)?
            .unwrap_or(size)
            .min(size);
        copy_range(input, output, data, end)?;
        offset = end;
    }
    // Sets the size, which also keeps a trailing hole.
    sys::ftruncate(output, size)
}

fn copy_range(
    input: BorrowedFd<'_>,
    output: BorrowedFd<'_>,
    start: u64,
    end: u64,
) -> io::Result<()> {
    let mut pos = start;
    while pos < end {
        let want = (end - pos).min(1 << 30) as usize;
        match sys::copy_file_range(input, pos, output, pos, want) {
            Ok(0) => break,
            Ok(n) => pos += n as u64,
            // Filesystems that cannot copy between each other: plain copy.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EXDEV | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
                ) =>
            {
                let mut buf = vec![0u8; 1 << 20];
                while pos < end {
                    let n =
                        sys::pread(input, &mut buf[..((end - pos) as usize).min(1 << 20)], pos)?;
                    if n == 0 {
                        break;
                    }
                    sys::pwrite_all(output, &buf[..n], pos)?;
                    pos += n as u64;
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Gives the copy at `dst` the owner, xattrs (minus internal ones), mode and
/// times of `src_path` in `layer`. The owner comes first: chown clears
/// set-id bits and file capabilities (`security.capability`).
pub(crate) fn copy_metadata(
    layer: &dyn Layer,
    src_path: &RelPath,
    stat: &Stat,
    dst: BorrowedFd<'_>,
) -> io::Result<()> {
    sys::fchownat(dst, c"", stat.uid, stat.gid, libc::AT_EMPTY_PATH)?;
    let names = xattr::none_if_unsupported(layer.list_xattr(src_path))?;
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if !xattr::is_copied_up(name) {
            continue;
        }
        let cname = CString::new(name).expect("split on NUL");
        let value = match layer.get_xattr(src_path, &cname) {
            Ok(v) => v,
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => continue,
            Err(e) => return Err(e),
        };
        sys::fsetxattr_any(dst, &cname, &value, 0)?;
    }
    if stat.kind() != FileType::Symlink {
        sys::fchmod_any(dst, stat.mode & 0o7777)?;
    }
    sys::futimens_any(dst, Some(Some(stat.atime)), Some(Some(stat.mtime)))
}

//! One layer of the stack, and the on-disk formats of whiteouts and opaque
//! directories.
//!
//! A layer answers questions about paths *relative to its own root*: "what is
//! `name` in `dir`?", "list `dir`", "open `path`". Lookup and readdir only talk
//! to the [`Layer`] trait, so a directory ([`DirLayer`]) and an indexed tar
//! archive ([`TarLayer`](crate::tar::TarLayer)) back layers without them
//! noticing. File data is the one place the two differ: [`FileData`].
//!
//! Formats understood by every layer:
//! - whiteout: a character device 0/0 (kernel overlayfs), or a `.wh.NAME`
//!   file (OCI/AUFS);
//! - opaque directory: xattr `trusted.overlay.opaque`, `user.overlay.opaque`
//!   or `user.fuseoverlayfs.opaque` set to `y`, or a `.wh..wh..opq` entry.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fmt;
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lru::LruCache;
use parking_lot::Mutex;

use fuser::FileType;

use crate::sys;

/// Longest name a layer's filesystem accepts.
pub const NAME_MAX: usize = 255;

/// Prefix of OCI/AUFS whiteout names; such names are never visible.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// The OCI/AUFS marker that makes its directory opaque.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// Xattrs whose value `y` marks a directory opaque, in every namespace we read.
pub const OPAQUE_XATTRS: [&CStr; 3] = [
    c"trusted.overlay.opaque",
    c"user.overlay.opaque",
    c"user.fuseoverlayfs.opaque",
];

/// Xattrs holding a renamed directory's origin (kernel `redirect_dir`):
/// an absolute path from the layer root, or a name in the same parent.
pub const REDIRECT_XATTRS: [&CStr; 2] = [c"trusted.overlay.redirect", c"user.overlay.redirect"];

/// Xattrs that make a regular file metadata-only (kernel `metacopy`): its
/// data is the file's of the same name (or its redirect) in a layer below.
pub const METACOPY_XATTRS: [&CStr; 2] = [c"trusted.overlay.metacopy", c"user.overlay.metacopy"];

/// What a regular file in one layer says about the layers below it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileMarks {
    /// Metadata only: the data lives below.
    pub metacopy: bool,
    /// Where below (an absolute path), when not at the same path.
    pub redirect: Option<Vec<u8>>,
}

/// What a directory in one layer says about the layers below it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirMarks {
    /// Hides the same directory in every layer below.
    pub opaque: bool,
    /// Lower layers hold this directory's content at this path instead.
    pub redirect: Option<Vec<u8>>,
}

/// True for names that belong to the whiteout format and are never shown.
pub fn is_whiteout_name(name: &[u8]) -> bool {
    name.starts_with(WHITEOUT_PREFIX)
}

/// The `.wh.NAME` whiteout for `name`.
pub fn whiteout_name_for(name: &[u8]) -> CString {
    let mut v = Vec::with_capacity(name.len() + WHITEOUT_PREFIX.len());
    v.extend_from_slice(WHITEOUT_PREFIX);
    v.extend_from_slice(name);
    CString::new(v).expect("names never contain NUL")
}

/// What a layer holds under `name`, given the object its directory has
/// there (`found`) and, asked only when it matters, whether the directory
/// also has the name's `.wh.` file (`has`): the one rule every kind of
/// layer follows.
pub fn probe_of(
    name: &[u8],
    found: Option<Stat>,
    has: impl FnOnce(&CStr) -> io::Result<bool>,
) -> io::Result<Probe> {
    if let Some(stat) = &found
        && stat.is_whiteout()
    {
        return Ok(Probe::Whiteout);
    }
    // A `.wh.` name longer than NAME_MAX cannot exist: don't ask.
    let oci_whiteout =
        name.len() + WHITEOUT_PREFIX.len() <= NAME_MAX && has(&whiteout_name_for(name))?;
    Ok(match found {
        Some(stat) => Probe::Found {
            stat,
            hides_lower: oci_whiteout,
        },
        None if oci_whiteout => Probe::Whiteout,
        None => Probe::Absent,
    })
}

/// What a name stored in a layer directory stands for (the OCI/AUFS
/// format; every kind of layer sorts its names with this).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRole<'a> {
    /// `.wh..wh..opq`: the directory is opaque.
    OpaqueMarker,
    /// `.wh.NAME`: NAME is deleted in the layers below.
    Whiteout(&'a [u8]),
    /// Another `.wh..wh.*` name: AUFS bookkeeping, never shown.
    Hidden,
    /// An ordinary name.
    Entry,
}

pub fn name_role(name: &[u8]) -> NameRole<'_> {
    if name == OPAQUE_MARKER {
        return NameRole::OpaqueMarker;
    }
    match name.strip_prefix(WHITEOUT_PREFIX) {
        Some(target) if target.starts_with(WHITEOUT_PREFIX) => NameRole::Hidden,
        Some(target) => NameRole::Whiteout(target),
        None => NameRole::Entry,
    }
}

/// A path relative to a layer's root: `.` for the root itself, else
/// `a/b/c` with no leading or trailing slash. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RelPath(Arc<CStr>);

impl RelPath {
    pub fn root() -> RelPath {
        RelPath(Arc::from(c"."))
    }

    /// A path from `a/b/c` bytes; `None` unless every component is a real
    /// name (no empty, `.` or `..` components, no NUL).
    pub fn from_components(bytes: &[u8]) -> Option<RelPath> {
        let bytes = bytes.strip_suffix(b"/").unwrap_or(bytes);
        if bytes.is_empty()
            || bytes
                .split(|&b| b == b'/')
                .any(|c| c.is_empty() || c == b"." || c == b".." || c.len() > NAME_MAX)
        {
            return None;
        }
        CString::new(bytes)
            .ok()
            .map(|c| RelPath(Arc::from(c.as_c_str())))
    }

    pub fn is_root(&self) -> bool {
        self.0.to_bytes() == b"."
    }

    /// The path of `name` inside this directory.
    pub fn join(&self, name: &OsStr) -> RelPath {
        let name = name.as_bytes();
        let mut v = Vec::new();
        if !self.is_root() {
            v.extend_from_slice(self.0.to_bytes());
            v.push(b'/');
        }
        v.extend_from_slice(name);
        RelPath(Arc::from(
            CString::new(v).expect("names never contain NUL").as_c_str(),
        ))
    }

    pub fn as_cstr(&self) -> &CStr {
        &self.0
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.to_bytes()
    }

    /// The parent directory and the last component; `None` for the root.
    pub fn split_last(&self) -> Option<(RelPath, &OsStr)> {
        if self.is_root() {
            return None;
        }
        let bytes = self.as_bytes();
        Some(match bytes.iter().rposition(|&b| b == b'/') {
            Some(i) => (
                RelPath(Arc::from(
                    CString::new(&bytes[..i]).expect("no NUL").as_c_str(),
                )),
                OsStr::from_bytes(&bytes[i + 1..]),
            ),
            None => (RelPath::root(), OsStr::from_bytes(bytes)),
        })
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", OsStr::from_bytes(self.as_bytes()))
    }
}

/// The attributes of one object in one layer (what `lstat` returned there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub dev: u64,
    pub ino: u64,
    pub mode: u32,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub size: u64,
    pub blocks: u64,
    pub blksize: u32,
    pub atime: (i64, u32),
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
}

impl From<libc::stat> for Stat {
    fn from(st: libc::stat) -> Stat {
        Stat {
            dev: st.st_dev,
            ino: st.st_ino,
            mode: st.st_mode,
            nlink: st.st_nlink,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev,
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            blksize: st.st_blksize as u32,
            atime: (st.st_atime, st.st_atime_nsec as u32),
            mtime: (st.st_mtime, st.st_mtime_nsec as u32),
            ctime: (st.st_ctime, st.st_ctime_nsec as u32),
        }
    }
}

impl Stat {
    pub fn kind(&self) -> FileType {
        file_type_of_mode(self.mode)
    }

    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }

    /// A kernel-format whiteout: a character device with device number 0/0.
    pub fn is_whiteout(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFCHR && self.rdev == 0
    }

    pub fn perm(&self) -> u16 {
        (self.mode & 0o7777) as u16
    }
}

pub fn file_type_of_mode(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

/// Seconds and nanoseconds since the epoch as a `SystemTime`.
pub fn system_time((sec, nsec): (i64, u32)) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec as u64)
    }
}

/// What one layer holds under one name.
#[derive(Debug, Clone, Copy)]
pub enum Probe {
    /// Nothing here: keep looking in the layers below.
    Absent,
    /// Deleted here: the name does not exist in this layer or below.
    Whiteout,
    /// An object. `hides_lower` is set when the same layer also holds a
    /// `.wh.NAME` whiteout (OCI: "deleted below, recreated here"), which makes
    /// a directory opaque.
    Found { stat: Stat, hides_lower: bool },
}

/// One visible entry of a directory in one layer.
#[derive(Debug, Clone)]
pub struct RawEntry {
    pub name: OsString,
    pub ino: u64,
    pub kind: FileType,
}

/// A directory as one layer sees it.
#[derive(Debug, Default)]
pub struct Listing {
    pub entries: Vec<RawEntry>,
    /// Names deleted in this layer; they hide the layers below only.
    pub whiteouts: Vec<OsString>,
    /// The listing contained the OCI opaque marker.
    pub opaque_marker: bool,
}

/// The bytes of a regular file held in a read-only mapping: a file of a
/// tar layer, a range of the mapped archive. Cheap to clone.
#[derive(Clone)]
pub struct MappedFile {
    map: Arc<memmap2::Mmap>,
    start: usize,
    len: usize,
}

impl MappedFile {
    /// `len` bytes of `map` from `start`; EIO where they are not all in it.
    pub fn new(map: Arc<memmap2::Mmap>, start: u64, len: u64) -> io::Result<MappedFile> {
        let fits = start
            .checked_add(len)
            .is_some_and(|end| end <= map.len() as u64);
        if !fits {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(MappedFile {
            map,
            start: start as usize,
            len: len as usize,
        })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map[self.start..self.start + self.len]
    }

    /// Up to `len` bytes from `offset` of this file (fewer at its end).
    pub fn slice(&self, offset: u64, len: u64) -> MappedFile {
        let offset = offset.min(self.len as u64) as usize;
        let len = len.min((self.len - offset) as u64) as usize;
        MappedFile {
            map: self.map.clone(),
            start: self.start + offset,
            len,
        }
    }
}

impl std::ops::Deref for MappedFile {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.bytes()
    }
}

impl fmt::Debug for MappedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MappedFile({}+{})", self.start, self.len)
    }
}

/// Where the data of a regular file opened in a layer is read from.
#[derive(Debug)]
pub enum FileData {
    /// An fd of the layer's file (a directory layer).
    Fd(OwnedFd),
    /// Its bytes in memory (a tar layer, which has no fd to give).
    Mapped(MappedFile),
}

/// A layer of the stack. All paths are relative to the layer's root, and no
/// implementation may resolve them outside it.
pub trait Layer: Send + Sync + fmt::Debug {
    /// Where the layer comes from, for messages and tools.
    fn source(&self) -> &Path;
    /// `st_dev` of the layer's root.
    fn root_dev(&self) -> u64;
    /// What the layer holds under `name` in directory `dir`.
    fn probe(&self, dir: &RelPath, name: &OsStr) -> io::Result<Probe>;
    /// Whether directory `dir` of this layer is opaque (hides the layers
    /// below) and where it was renamed from.
    fn dir_marks(&self, dir: &RelPath) -> io::Result<DirMarks>;
    /// Whether regular file `path` is metadata-only, and where its data is.
    fn file_marks(&self, path: &RelPath) -> io::Result<FileMarks>;
    /// The entries and whiteouts of directory `dir`.
    fn list(&self, dir: &RelPath) -> io::Result<Listing>;
    /// `lstat` of `path`.
    fn stat(&self, path: &RelPath) -> io::Result<Stat>;
    /// The target of symlink `path`.
    fn readlink(&self, path: &RelPath) -> io::Result<Vec<u8>>;
    /// Opens `path` (never following a symlink) with `flags`.
    fn open(&self, path: &RelPath, flags: i32) -> io::Result<OwnedFd>;
    /// Opens regular file `path` to read its data: an fd (from `open`), or
    /// the bytes themselves for a layer that has no fds (a tar layer).
    fn open_data(&self, path: &RelPath, flags: i32) -> io::Result<FileData> {
        self.open(path, flags).map(FileData::Fd)
    }
    /// One extended attribute of `path`.
    fn get_xattr(&self, path: &RelPath, name: &CStr) -> io::Result<Vec<u8>>;
    /// The NUL-separated extended attribute names of `path`.
    fn list_xattr(&self, path: &RelPath) -> io::Result<Vec<u8>>;
    /// Filesystem statistics of the layer's filesystem.
    fn statfs(&self) -> io::Result<libc::statvfs>;
    /// Drops what the layer caches of its own contents (the layer changed
    /// under the mount).
    fn forget_cached(&self) {}
}

/// A layer backed by a directory, held open as an fd from before the mount.
#[derive(Debug)]
pub struct DirLayer {
    source: PathBuf,
    root: OwnedFd,
    root_dev: u64,
    /// For a lower layer (it never changes under a mount): the O_PATH fds
    /// of the directories probed lately, so a lookup costs one `fstatat`
    /// per layer instead of an `openat2` and an `fstatat`.
    dirs: Option<Mutex<LruCache<RelPath, Arc<OwnedFd>>>>,
}

/// Directories whose fds a lower layer keeps open.
const DIR_FDS_PER_LAYER: usize = 128;

impl DirLayer {
    /// Opens `path` as a layer. The path is resolved by the kernel exactly as
    /// given (symlinks and `..` included); afterwards only the fd is used.
    pub fn open(path: &Path) -> io::Result<DirLayer> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let root = sys::open_dir_path(&c)?;
        let root_dev = sys::fstat(root.as_fd())?.st_dev;
        Ok(DirLayer {
            source: path.to_path_buf(),
            root,
            root_dev,
            dirs: None,
        })
    }

    /// Keeps the fds of directories it probes (only for a layer that does
    /// not change while mounted: a lower one).
    pub fn read_only(mut self) -> DirLayer {
        let capacity = NonZeroUsize::new(DIR_FDS_PER_LAYER).expect("non-zero");
        self.dirs = Some(Mutex::new(LruCache::new(capacity)));
        self
    }

    /// An O_PATH fd of directory `dir`, from the cache when there is one.
    fn probe_dir(&self, dir: &RelPath) -> io::Result<Arc<OwnedFd>> {
        let Some(cache) = &self.dirs else {
            return Ok(Arc::new(self.open_dir(dir, libc::O_PATH)?));
        };
        if let Some(fd) = cache.lock().get(dir) {
            return Ok(fd.clone());
        }
        let fd = Arc::new(self.open_dir(dir, libc::O_PATH)?);
        cache.lock().put(dir.clone(), fd.clone());
        Ok(fd)
    }

    /// A layer over an already open directory fd.
    pub fn from_fd(root: OwnedFd) -> io::Result<DirLayer> {
        let root_dev = sys::fstat(root.as_fd())?.st_dev;
        Ok(DirLayer {
            source: PathBuf::new(),
            root,
            root_dev,
            dirs: None,
        })
    }

    pub fn root_fd(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// An O_PATH fd of directory `dir`, for the `*at` calls that change it.
    pub fn dir_fd(&self, dir: &RelPath) -> io::Result<OwnedFd> {
        self.open_dir(dir, libc::O_PATH)
    }

    /// An O_PATH fd for `path` (the symlink itself for a symlink).
    pub fn open_path(&self, path: &RelPath) -> io::Result<OwnedFd> {
        open_beneath(
            self.root.as_fd(),
            path.as_cstr(),
            libc::O_PATH | libc::O_NOFOLLOW,
        )
    }

    fn open_dir(&self, dir: &RelPath, flags: i32) -> io::Result<OwnedFd> {
        open_beneath(
            self.root.as_fd(),
            dir.as_cstr(),
            flags | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        )
    }
}

/// `openat2` of `path` beneath `dir` with [`sys::RESOLVE_IN_LAYER`]: one
/// call where the path fits in PATH_MAX, else in pieces that do, each
/// resolved beneath the directory the one before reached (never through a
/// symlink, never above it), so a layer serves paths as deep as kernel
/// overlayfs does instead of failing them with ENAMETOOLONG.
fn open_beneath(dir: BorrowedFd<'_>, path: &CStr, flags: i32) -> io::Result<OwnedFd> {
    let bytes = path.to_bytes();
    let max = libc::PATH_MAX as usize - 1;
    if bytes.len() <= max {
        return sys::openat2(dir, path, flags, 0, sys::RESOLVE_IN_LAYER);
    }
    let cut = bytes[..max]
        .iter()
        .rposition(|&b| b == b'/')
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENAMETOOLONG))?;
    let head = CString::new(&bytes[..cut]).expect("no NUL in a CStr");
    let tail = CString::new(&bytes[cut + 1..]).expect("no NUL in a CStr");
    let parent = sys::openat2(
        dir,
        &head,
        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
        sys::RESOLVE_IN_LAYER,
    )?;
    open_beneath(parent.as_fd(), &tail, flags)
}

/// `lstat` of `name` in an open directory; `None` when it does not exist.
fn stat_in(dir: &OwnedFd, name: &CStr) -> io::Result<Option<Stat>> {
    match sys::fstatat(dir.as_fd(), name, libc::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st.into())),
        Err(e) if is_absent(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Errors that mean "not in this layer" rather than "this layer is broken".
pub fn is_absent(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
}

fn cstring(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

impl Layer for DirLayer {
    fn source(&self) -> &Path {
        &self.source
    }

    fn root_dev(&self) -> u64 {
        self.root_dev
    }

    fn probe(&self, dir: &RelPath, name: &OsStr) -> io::Result<Probe> {
        let dirfd = match self.probe_dir(dir) {
            Ok(fd) => fd,
            // ELOOP: a symlink stands where the directory would be, so this
            // layer has no such directory.
            Err(e) if is_absent(&e) || e.raw_os_error() == Some(libc::ELOOP) => {
                return Ok(Probe::Absent);
            }
            Err(e) => return Err(e),
        };
        let found = stat_in(&dirfd, &cstring(name)?)?;
        probe_of(name.as_bytes(), found, |wh| {
            Ok(stat_in(&dirfd, wh)?.is_some())
        })
    }

    fn file_marks(&self, path: &RelPath) -> io::Result<FileMarks> {
        let (dir, name) = path
            .split_last()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        // From the (cached) directory fd: no open of the file itself
        // unless it is metadata-only.
        let names = match sys::llistxattr_in(self.probe_dir(&dir)?.as_fd(), &cstring(name)?) {
            Ok(names) => names,
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(FileMarks::default()),
            Err(e) => return Err(e),
        };
        let has = |x: &CStr| names.split(|&b| b == 0).any(|n| n == x.to_bytes());
        let mut marks = FileMarks {
            metacopy: METACOPY_XATTRS.into_iter().any(has),
            redirect: None,
        };
        if marks.metacopy
            && let Some(x) = REDIRECT_XATTRS.into_iter().find(|x| has(x))
        {
            let fd = self.open_path(path)?;
            marks.redirect = Some(sys::fgetxattr(fd.as_fd(), x)?).filter(|v| !v.is_empty());
        }
        Ok(marks)
    }

    fn dir_marks(&self, dir: &RelPath) -> io::Result<DirMarks> {
        let fd = self.probe_dir(dir)?;
        let mut marks = DirMarks {
            opaque: stat_in(&fd, &cstring(OsStr::from_bytes(OPAQUE_MARKER))?)?.is_some(),
            redirect: None,
        };
        let names = match sys::flistxattr(fd.as_fd()) {
            Ok(names) => names,
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(marks),
            Err(e) => return Err(e),
        };
        let has = |x: &CStr| names.split(|&b| b == 0).any(|n| n == x.to_bytes());
        let read = |x: &CStr| match sys::fgetxattr(fd.as_fd(), x) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(None),
            Err(e) => Err(e),
        };
        for xattr in OPAQUE_XATTRS {
            if !marks.opaque && has(xattr) && read(xattr)?.is_some_and(|v| v == b"y") {
                marks.opaque = true;
            }
        }
        for xattr in REDIRECT_XATTRS {
            if marks.redirect.is_none() && has(xattr) {
                marks.redirect = read(xattr)?.filter(|v| !v.is_empty());
            }
        }
        Ok(marks)
    }

    fn list(&self, dir: &RelPath) -> io::Result<Listing> {
        let fd = self.open_dir(dir, libc::O_RDONLY)?;
        let mut listing = Listing::default();
        for_each_dirent(&fd, |raw| self.classify(&fd, raw, &mut listing))?;
        Ok(listing)
    }

    fn stat(&self, path: &RelPath) -> io::Result<Stat> {
        Ok(sys::fstat(self.open_path(path)?.as_fd())?.into())
    }

    fn readlink(&self, path: &RelPath) -> io::Result<Vec<u8>> {
        sys::readlinkat(self.open_path(path)?.as_fd(), c"")
    }

    fn open(&self, path: &RelPath, flags: i32) -> io::Result<OwnedFd> {
        open_beneath(self.root.as_fd(), path.as_cstr(), flags | libc::O_NOFOLLOW)
    }

    fn get_xattr(&self, path: &RelPath, name: &CStr) -> io::Result<Vec<u8>> {
        sys::fgetxattr(self.open_path(path)?.as_fd(), name)
    }

    fn list_xattr(&self, path: &RelPath) -> io::Result<Vec<u8>> {
        sys::flistxattr(self.open_path(path)?.as_fd())
    }

    fn statfs(&self) -> io::Result<libc::statvfs> {
        sys::fstatvfs(self.root.as_fd())
    }

    fn forget_cached(&self) {
        if let Some(dirs) = &self.dirs {
            dirs.lock().clear();
        }
    }
}

/// Calls `f` on every record of directory `fd`, `.` and `..` included.
fn for_each_dirent(
    fd: &OwnedFd,
    mut f: impl FnMut(RawDirent<'_>) -> io::Result<()>,
) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let filled = sys::getdents64(fd.as_fd(), &mut buf)?;
        if filled == 0 {
            return Ok(());
        }
        for raw in Dirents::new(&buf[..filled]) {
            f(raw)?;
        }
    }
}

impl DirLayer {
    /// Every name in directory `dir`, whiteouts and markers included, as
    /// stored (for removing a tree, not for showing it).
    pub fn raw_names(&self, dir: &RelPath) -> io::Result<Vec<OsString>> {
        let fd = self.open_dir(dir, libc::O_RDONLY)?;
        let mut names = Vec::new();
        for_each_dirent(&fd, |raw| {
            if raw.name != b"." && raw.name != b".." {
                names.push(OsString::from_vec(raw.name.to_vec()));
            }
            Ok(())
        })?;
        Ok(names)
    }

    /// Sorts one raw directory entry into entries, whiteouts or the opaque marker.
    fn classify(&self, dir: &OwnedFd, raw: RawDirent<'_>, out: &mut Listing) -> io::Result<()> {
        let name = raw.name;
        if name == b"." || name == b".." {
            return Ok(());
        }
        match name_role(name) {
            NameRole::OpaqueMarker => {
                out.opaque_marker = true;
                return Ok(());
            }
            NameRole::Whiteout(target) => {
                out.whiteouts.push(OsString::from_vec(target.to_vec()));
                return Ok(());
            }
            NameRole::Hidden => return Ok(()),
            NameRole::Entry => {}
        }
        let kind = match raw.d_type {
            libc::DT_DIR => FileType::Directory,
            libc::DT_REG => FileType::RegularFile,
            libc::DT_LNK => FileType::Symlink,
            libc::DT_FIFO => FileType::NamedPipe,
            libc::DT_SOCK => FileType::Socket,
            libc::DT_BLK => FileType::BlockDevice,
            // Character devices may be whiteouts, and DT_UNKNOWN tells us
            // nothing: both need a stat.
            _ => match stat_in(dir, &cstring(OsStr::from_bytes(name))?)? {
                Some(st) if st.is_whiteout() => {
                    out.whiteouts.push(OsString::from_vec(name.to_vec()));
                    return Ok(());
                }
                Some(st) => st.kind(),
                None => return Ok(()), // removed while we listed
            },
        };
        out.entries.push(RawEntry {
            name: OsString::from_vec(name.to_vec()),
            ino: raw.ino,
            kind,
        });
        Ok(())
    }
}

/// One record of a `getdents64` buffer.
struct RawDirent<'a> {
    ino: u64,
    d_type: u8,
    name: &'a [u8],
}

/// Iterates the `linux_dirent64` records of a `getdents64` buffer.
struct Dirents<'a> {
    buf: &'a [u8],
}

impl<'a> Dirents<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Dirents { buf }
    }
}

impl<'a> Iterator for Dirents<'a> {
    type Item = RawDirent<'a>;

    fn next(&mut self) -> Option<RawDirent<'a>> {
        // struct linux_dirent64 { u64 d_ino; s64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
        const NAME_OFFSET: usize = 19;
        if self.buf.len() < NAME_OFFSET {
            return None;
        }
        let ino = u64::from_ne_bytes(self.buf[0..8].try_into().ok()?);
        let reclen = u16::from_ne_bytes(self.buf[16..18].try_into().ok()?) as usize;
        if reclen < NAME_OFFSET || reclen > self.buf.len() {
            return None;
        }
        let d_type = self.buf[18];
        let name_field = &self.buf[NAME_OFFSET..reclen];
        let name_len = name_field
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(name_field.len());
        let name = &name_field[..name_len];
        self.buf = &self.buf[reclen..];
        Some(RawDirent { ino, d_type, name })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relpath_join_and_split() {
        let root = RelPath::root();
        let a = root.join(OsStr::new("a"));
        assert_eq!(a.as_bytes(), b"a");
        let ab = a.join(OsStr::new("b c"));
        assert_eq!(ab.as_bytes(), b"a/b c");
        let (parent, name) = ab.split_last().unwrap();
        assert_eq!(parent, a);
        assert_eq!(name, "b c");
        let (parent, name) = a.split_last().unwrap();
        assert!(parent.is_root());
        assert_eq!(name, "a");
        assert!(root.split_last().is_none());
    }

    #[test]
    fn whiteout_names() {
        assert!(is_whiteout_name(b".wh.foo"));
        assert!(is_whiteout_name(OPAQUE_MARKER));
        assert!(!is_whiteout_name(b".whfoo"));
        assert!(!is_whiteout_name(b"foo.wh."));
        assert_eq!(whiteout_name_for(b"x").as_bytes(), b".wh.x");
    }

    fn layer_in(dir: &Path) -> DirLayer {
        DirLayer::open(dir).unwrap()
    }

    fn scratch(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("strata-layer-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn oci_whiteouts_and_opaque_marker() {
        let d = scratch("oci");
        std::fs::create_dir(d.join("dir")).unwrap();
        std::fs::write(d.join("dir/.wh..wh..opq"), b"").unwrap();
        std::fs::write(d.join(".wh.gone"), b"").unwrap();
        std::fs::write(d.join(".wh.again"), b"").unwrap();
        std::fs::write(d.join("again"), b"new").unwrap();
        std::fs::write(d.join("plain"), b"x").unwrap();
        let layer = layer_in(&d);
        let root = RelPath::root();
        assert!(matches!(
            layer.probe(&root, OsStr::new("gone")).unwrap(),
            Probe::Whiteout
        ));
        assert!(matches!(
            layer.probe(&root, OsStr::new("missing")).unwrap(),
            Probe::Absent
        ));
        assert!(matches!(
            layer.probe(&root, OsStr::new("again")).unwrap(),
            Probe::Found {
                hides_lower: true,
                ..
            }
        ));
        assert!(matches!(
            layer.probe(&root, OsStr::new("plain")).unwrap(),
            Probe::Found {
                hides_lower: false,
                ..
            }
        ));
        assert!(
            layer
                .dir_marks(&root.join(OsStr::new("dir")))
                .unwrap()
                .opaque
        );
        assert!(!layer.dir_marks(&root).unwrap().opaque);
        let listing = layer.list(&root).unwrap();
        let mut names: Vec<_> = listing.entries.iter().map(|e| e.name.clone()).collect();
        names.sort();
        assert_eq!(names, ["again", "dir", "plain"]);
        let mut wh = listing.whiteouts.clone();
        wh.sort();
        assert_eq!(wh, ["again", "gone"]);
        let inner = layer.list(&root.join(OsStr::new("dir"))).unwrap();
        assert!(inner.opaque_marker && inner.entries.is_empty());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn symlinks_are_never_followed() {
        let d = scratch("symlink");
        std::fs::create_dir(d.join("layer")).unwrap();
        std::os::unix::fs::symlink("/etc", d.join("layer/escape")).unwrap();
        std::os::unix::fs::symlink("../..", d.join("layer/up")).unwrap();
        let layer = layer_in(&d.join("layer"));
        let root = RelPath::root();
        let esc = root.join(OsStr::new("escape"));
        assert_eq!(layer.stat(&esc).unwrap().kind(), FileType::Symlink);
        assert_eq!(layer.readlink(&esc).unwrap(), b"/etc");
        // Walking through the symlink as if it were a directory must fail.
        let through = esc.join(OsStr::new("passwd"));
        assert!(layer.stat(&through).is_err());
        assert!(layer.open(&through, libc::O_RDONLY).is_err());
        assert!(matches!(
            layer.probe(&esc, OsStr::new("passwd")).unwrap(),
            Probe::Absent
        ));
        assert!(
            layer
                .open(&root.join(OsStr::new("up")), libc::O_RDONLY)
                .is_err()
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}

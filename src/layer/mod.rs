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
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::FileType;

mod dir;
mod names;

pub use dir::DirLayer;

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

/// Errors that mean "not in this layer" rather than "this layer is broken".
pub fn is_absent(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
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
}

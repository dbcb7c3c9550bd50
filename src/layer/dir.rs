//! A layer backed by a directory: every path is resolved beneath the
//! layer's root fd, never through a symlink.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::FileType;

use super::names::{CachedDir, DirCache, DirNames, LIST_FOR_PROBES_MAX_SIZE};
use super::{
    DirMarks, FileMarks, Layer, Listing, METACOPY_XATTRS, NameRole, OPAQUE_MARKER, OPAQUE_XATTRS,
    Probe, REDIRECT_XATTRS, RawEntry, RelPath, Stat, is_absent, name_role, probe_of,
};
use crate::sys;

/// A layer backed by a directory, held open as an fd from before the mount.
#[derive(Debug)]
pub struct DirLayer {
    source: PathBuf,
    root: OwnedFd,
    root_dev: u64,
    /// For a lower layer (it never changes under a mount): the directories
    /// probed lately, their O_PATH fds and names (see [`super::names`]).
    dirs: Option<DirCache>,
}

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
        self.dirs = Some(DirCache::new());
        self
    }

    /// Directory `dir` (an O_PATH fd), from the cache when there is one.
    fn probe_dir(&self, dir: &RelPath) -> io::Result<Arc<CachedDir>> {
        let Some(cache) = &self.dirs else {
            return Ok(Arc::new(CachedDir::new(self.open_dir(dir, libc::O_PATH)?)));
        };
        match cache.get(dir) {
            Some(known) => Ok(known),
            None => Ok(cache.insert(dir, self.open_dir(dir, libc::O_PATH)?)),
        }
    }

    /// The names of cached directory `entry` (`dir`) if known, listing it
    /// now if it is time to (see [`super::names`]).
    fn names_for_probe<'a>(
        &self,
        dir: &RelPath,
        entry: &'a Arc<CachedDir>,
    ) -> io::Result<Option<&'a DirNames>> {
        let Some(cache) = &self.dirs else {
            return Ok(None);
        };
        if entry.wants_listing() {
            let small = sys::fstat(entry.fd.as_fd())?.st_size <= LIST_FOR_PROBES_MAX_SIZE;
            let names = match small {
                true => DirNames::of(&self.list_dir(&entry.fd)?),
                false => None,
            };
            cache.set_names(dir, entry, names);
        }
        Ok(entry.names())
    }

    /// The listing of the directory open as O_PATH `fd`.
    fn list_dir(&self, fd: &OwnedFd) -> io::Result<Listing> {
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
        let fd = sys::openat2(fd.as_fd(), c".", flags, 0, sys::RESOLVE_IN_LAYER)?;
        let mut listing = Listing::default();
        for_each_dirent(&fd, |raw| self.classify(&fd, raw, &mut listing))?;
        Ok(listing)
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
        let entry = match self.probe_dir(dir) {
            Ok(entry) => entry,
            // ELOOP: a symlink stands where the directory would be, so this
            // layer has no such directory.
            Err(e) if is_absent(&e) || e.raw_os_error() == Some(libc::ELOOP) => {
                return Ok(Probe::Absent);
            }
            Err(e) => return Err(e),
        };
        let dirfd = &entry.fd;
        let bytes = name.as_bytes();
        if let Some(names) = self.names_for_probe(dir, &entry)? {
            // Stat only what is there; whiteouts are known.
            let found = match names.has_entry(bytes) {
                true => stat_in(dirfd, &cstring(name)?)?,
                false => None,
            };
            return probe_of(bytes, found, |_| Ok(names.has_whiteout(bytes)));
        }
        let found = stat_in(dirfd, &cstring(name)?)?;
        probe_of(bytes, found, |wh| Ok(stat_in(dirfd, wh)?.is_some()))
    }

    fn file_marks(&self, path: &RelPath) -> io::Result<FileMarks> {
        let (dir, name) = path
            .split_last()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        // From the (cached) directory fd: no open of the file itself
        // unless it is metadata-only.
        let names = match sys::llistxattr_in(self.probe_dir(&dir)?.fd.as_fd(), &cstring(name)?) {
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
        let entry = self.probe_dir(dir)?;
        let fd = &entry.fd;
        let opaque_marker = match entry.names() {
            Some(names) => names.opaque_marker,
            None => stat_in(fd, &cstring(OsStr::from_bytes(OPAQUE_MARKER))?)?.is_some(),
        };
        let mut marks = DirMarks {
            opaque: opaque_marker,
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
        let Some(cache) = &self.dirs else {
            let fd = self.open_dir(dir, libc::O_RDONLY)?;
            let mut listing = Listing::default();
            for_each_dirent(&fd, |raw| self.classify(&fd, raw, &mut listing))?;
            return Ok(listing);
        };
        // A lower directory: what a readdir lists, later lookups need.
        let entry = self.probe_dir(dir)?;
        let listing = self.list_dir(&entry.fd)?;
        if !entry.listed() {
            cache.set_names(dir, &entry, DirNames::of(&listing));
        }
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
            dirs.clear();
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
    use crate::layer::*;

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

//! A layer backed by a tar archive in memory: [`TarLayer`].
//!
//! It shows the tree the archive holds exactly as a [`DirLayer`] shows the
//! same archive extracted into a directory: whiteouts in either format
//! (`.wh.NAME` entries, 0/0 character devices), opaque directories
//! (`.wh..wh..opq`, `trusted.overlay.opaque` and the other xattrs),
//! redirects and metacopy marks, all through the [`Layer`] trait, so lookup
//! and readdir never know which kind of layer they read. The differences a
//! directory on disk would show come from the filesystem, not the archive:
//! here a directory's size is 4096 (ext4's for a small one), atime and
//! ctime are the mtime, `st_dev` is made up for the layer and `st_ino` is
//! the entry's inode number in the archive (shared by hard links).
//!
//! [`DirLayer`]: crate::layer::DirLayer

use std::ffi::{CStr, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::layer::{
    DirMarks, FileData, FileMarks, Layer, Listing, METACOPY_XATTRS, MappedFile, NameRole,
    OPAQUE_MARKER, OPAQUE_XATTRS, Probe, REDIRECT_XATTRS, RawEntry, RelPath, Stat,
    file_type_of_mode, is_absent, name_role, probe_of,
};
use crate::sys;
use crate::tar::index::{Index, Inode, NodeId};

/// The size a directory shows (what ext4 gives a small one).
const DIR_SIZE: u64 = 4096;

/// Inode numbers are the archive's inode index plus this (the root gets
/// 2, as on ext4; 0 and 1 are never used).
const FIRST_INO: u64 = 2;

/// A layer over one tar archive: the index of its headers and the mapped
/// archive, from which file data is served.
pub struct TarLayer {
    source: PathBuf,
    dev: u64,
    archive: MappedFile,
    index: Index,
    /// The file the archive is mapped from (for statfs).
    file: Arc<File>,
}

impl std::fmt::Debug for TarLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TarLayer")
            .field("source", &self.source)
            .field("dev", &self.dev)
            .field("entries", &self.index.len())
            .finish()
    }
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

impl TarLayer {
    /// Indexes the tar archive `archive`, a range of a mapping of `file`.
    /// `dev` is the `st_dev` its objects show: made up, stable for the
    /// archive, and no real filesystem's.
    pub fn new(
        source: PathBuf,
        dev: u64,
        archive: MappedFile,
        file: Arc<File>,
    ) -> io::Result<TarLayer> {
        let index = Index::build(&archive)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", source.display())))?;
        Ok(TarLayer {
            source,
            dev,
            archive,
            index,
            file,
        })
    }

    /// The names in the archive's tree (the root included).
    pub fn entries(&self) -> usize {
        self.index.len()
    }

    fn resolve(&self, path: &RelPath) -> io::Result<NodeId> {
        if path.is_root() {
            return Ok(crate::tar::index::ROOT);
        }
        self.index.lookup(path.as_bytes())
    }

    /// The directory at `dir`; ENOTDIR for anything else.
    fn resolve_dir(&self, dir: &RelPath) -> io::Result<NodeId> {
        let node = self.resolve(dir)?;
        if !self.index.inode(node).1.is_dir() {
            return Err(errno(libc::ENOTDIR));
        }
        Ok(node)
    }

    fn stat_of(&self, node: NodeId) -> Stat {
        let (number, inode) = self.index.inode(node);
        let size = match inode.kind() {
            libc::S_IFREG => inode.size,
            libc::S_IFDIR => DIR_SIZE,
            libc::S_IFLNK => self.index.target(inode).len() as u64,
            _ => 0,
        };
        let blocks = match inode.kind() {
            libc::S_IFREG | libc::S_IFDIR => size.div_ceil(4096) * 8,
            _ => 0,
        };
        Stat {
            dev: self.dev,
            ino: number as u64 + FIRST_INO,
            mode: inode.mode,
            nlink: inode.nlink as u64,
            uid: inode.uid,
            gid: inode.gid,
            rdev: inode.rdev,
            size,
            blocks,
            blksize: 4096,
            atime: inode.mtime,
            mtime: inode.mtime,
            ctime: inode.mtime,
        }
    }

    fn xattr(&self, inode: &Inode, name: &[u8]) -> Option<&[u8]> {
        self.index
            .xattrs(inode)
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }
}

impl Layer for TarLayer {
    fn source(&self) -> &Path {
        &self.source
    }

    fn root_dev(&self) -> u64 {
        self.dev
    }

    fn probe(&self, dir: &RelPath, name: &OsStr) -> io::Result<Probe> {
        let dir = match self.resolve_dir(dir) {
            Ok(node) => node,
            // As a directory layer: no such directory here (a symlink, a
            // file or nothing stands where it would be).
            Err(e) if is_absent(&e) || e.raw_os_error() == Some(libc::ELOOP) => {
                return Ok(Probe::Absent);
            }
            Err(e) => return Err(e),
        };
        let name = name.as_bytes();
        let found = self.index.child(dir, name).map(|n| self.stat_of(n));
        probe_of(name, found, |wh| {
            Ok(self.index.child(dir, wh.to_bytes()).is_some())
        })
    }

    fn dir_marks(&self, dir: &RelPath) -> io::Result<DirMarks> {
        let node = self.resolve_dir(dir)?;
        let (_, inode) = self.index.inode(node);
        let opaque = self.index.child(node, OPAQUE_MARKER).is_some()
            || OPAQUE_XATTRS
                .iter()
                .any(|x| self.xattr(inode, x.to_bytes()) == Some(b"y"));
        let redirect = REDIRECT_XATTRS
            .iter()
            .find_map(|x| self.xattr(inode, x.to_bytes()))
            .filter(|v| !v.is_empty())
            .map(<[u8]>::to_vec);
        Ok(DirMarks { opaque, redirect })
    }

    fn file_marks(&self, path: &RelPath) -> io::Result<FileMarks> {
        if path.is_root() {
            return Err(errno(libc::EINVAL));
        }
        let (_, inode) = self.index.inode(self.resolve(path)?);
        let metacopy = METACOPY_XATTRS
            .iter()
            .any(|x| self.xattr(inode, x.to_bytes()).is_some());
        let redirect = if metacopy {
            REDIRECT_XATTRS
                .iter()
                .find_map(|x| self.xattr(inode, x.to_bytes()))
                .filter(|v| !v.is_empty())
                .map(<[u8]>::to_vec)
        } else {
            None
        };
        Ok(FileMarks { metacopy, redirect })
    }

    fn list(&self, dir: &RelPath) -> io::Result<Listing> {
        let node = self.resolve_dir(dir)?;
        let mut listing = Listing::default();
        for child in self.index.children(node) {
            let name = self.index.name(child);
            match name_role(name) {
                NameRole::OpaqueMarker => listing.opaque_marker = true,
                NameRole::Whiteout(target) => {
                    listing.whiteouts.push(OsString::from_vec(target.to_vec()))
                }
                NameRole::Hidden => {}
                NameRole::Entry => {
                    let stat = self.stat_of(child);
                    if stat.is_whiteout() {
                        listing.whiteouts.push(OsString::from_vec(name.to_vec()));
                    } else {
                        listing.entries.push(RawEntry {
                            name: OsString::from_vec(name.to_vec()),
                            ino: stat.ino,
                            kind: file_type_of_mode(stat.mode),
                        });
                    }
                }
            }
        }
        Ok(listing)
    }

    fn stat(&self, path: &RelPath) -> io::Result<Stat> {
        Ok(self.stat_of(self.resolve(path)?))
    }

    fn readlink(&self, path: &RelPath) -> io::Result<Vec<u8>> {
        let (_, inode) = self.index.inode(self.resolve(path)?);
        if inode.kind() != libc::S_IFLNK {
            return Err(errno(libc::EINVAL));
        }
        Ok(self.index.target(inode).to_vec())
    }

    /// A tar layer has no fds: file data comes from [`Layer::open_data`].
    fn open(&self, _path: &RelPath, _flags: i32) -> io::Result<OwnedFd> {
        Err(errno(libc::EOPNOTSUPP))
    }

    fn open_data(&self, path: &RelPath, flags: i32) -> io::Result<FileData> {
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            return Err(errno(libc::EROFS));
        }
        let (_, inode) = self.index.inode(self.resolve(path)?);
        match inode.kind() {
            libc::S_IFREG => Ok(FileData::Mapped(self.archive.slice(inode.data, inode.size))),
            libc::S_IFDIR => Err(errno(libc::EISDIR)),
            libc::S_IFLNK => Err(errno(libc::ELOOP)),
            _ => Err(errno(libc::EOPNOTSUPP)),
        }
    }

    fn get_xattr(&self, path: &RelPath, name: &CStr) -> io::Result<Vec<u8>> {
        let (_, inode) = self.index.inode(self.resolve(path)?);
        self.xattr(inode, name.to_bytes())
            .map(<[u8]>::to_vec)
            .ok_or_else(|| errno(libc::ENODATA))
    }

    fn list_xattr(&self, path: &RelPath) -> io::Result<Vec<u8>> {
        let (_, inode) = self.index.inode(self.resolve(path)?);
        let mut names = Vec::new();
        for (name, _) in self.index.xattrs(inode) {
            names.extend_from_slice(name);
            names.push(0);
        }
        Ok(names)
    }

    fn statfs(&self) -> io::Result<libc::statvfs> {
        sys::fstatvfs(self.file.as_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::DirLayer;
    use fuser::FileType;
    use std::io::Write;
    use std::process::Command;

    fn root() -> RelPath {
        RelPath::root()
    }

    fn path(p: &str) -> RelPath {
        RelPath::from_components(p.as_bytes()).unwrap()
    }

    /// The same tree as a directory and as a tar layer (made by GNU tar).
    struct Twin {
        dir: PathBuf,
        tar: TarLayer,
        plain: DirLayer,
    }

    impl Drop for Twin {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn twin(tag: &str) -> Option<Twin> {
        let d = std::env::temp_dir().join(format!("strata-tarlayer-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let tree = d.join("tree");
        std::fs::create_dir_all(tree.join("dir/sub")).unwrap();
        std::fs::create_dir_all(tree.join("opq")).unwrap();
        std::fs::write(tree.join("opq/.wh..wh..opq"), b"").unwrap();
        std::fs::write(tree.join(".wh.gone"), b"").unwrap();
        std::fs::write(tree.join(".wh.again"), b"").unwrap();
        std::fs::create_dir(tree.join("again")).unwrap();
        std::fs::write(tree.join("dir/file"), b"content").unwrap();
        std::fs::hard_link(tree.join("dir/file"), tree.join("link")).unwrap();
        std::os::unix::fs::symlink("../etc", tree.join("dir/sym")).unwrap();
        let tar_path = d.join("layer.tar");
        let ok = Command::new("tar")
            .args(["--format=pax", "--numeric-owner", "-cf"])
            .arg(&tar_path)
            .arg("-C")
            .arg(&tree)
            .arg(".")
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("GNU tar not available: skipped");
            return None;
        }
        let file = Arc::new(File::open(&tar_path).unwrap());
        let map = Arc::new(sys::map_read_only(&file).unwrap());
        let len = map.len() as u64;
        let tar = TarLayer::new(tar_path, 7, MappedFile::new(map, 0, len).unwrap(), file).unwrap();
        let plain = DirLayer::open(&tree).unwrap();
        Some(Twin { dir: d, tar, plain })
    }

    fn probe_summary(layer: &dyn Layer, dir: &RelPath, name: &str) -> String {
        match layer.probe(dir, OsStr::new(name)).unwrap() {
            Probe::Absent => "absent".into(),
            Probe::Whiteout => "whiteout".into(),
            Probe::Found { stat, hides_lower } => {
                format!("{:?} {:o} hides={hides_lower}", stat.kind(), stat.mode)
            }
        }
    }

    fn listing_summary(layer: &dyn Layer, dir: &RelPath) -> String {
        let l = layer.list(dir).unwrap();
        let mut entries: Vec<_> = l
            .entries
            .iter()
            .map(|e| format!("{:?}:{:?}", e.name, e.kind))
            .collect();
        entries.sort();
        let mut wh = l.whiteouts.clone();
        wh.sort();
        format!("{entries:?} wh={wh:?} opq={}", l.opaque_marker)
    }

    #[test]
    fn presents_the_tree_as_a_directory_layer_does() {
        let Some(t) = twin("same") else { return };
        let (tar, plain): (&dyn Layer, &dyn Layer) = (&t.tar, &t.plain);
        for (dir, name) in [
            ("", "gone"),
            ("", "again"),
            ("", "dir"),
            ("", "missing"),
            ("", "link"),
            ("dir", "file"),
            ("dir", "sym"),
            ("dir/sym", "x"),
            ("link", "x"),
            ("opq", "anything"),
        ] {
            let d = if dir.is_empty() { root() } else { path(dir) };
            assert_eq!(
                probe_summary(tar, &d, name),
                probe_summary(plain, &d, name),
                "{dir}/{name}"
            );
        }
        for dir in ["", "dir", "opq", "again"] {
            let d = if dir.is_empty() { root() } else { path(dir) };
            assert_eq!(
                listing_summary(tar, &d),
                listing_summary(plain, &d),
                "{dir}"
            );
            assert_eq!(
                tar.dir_marks(&d).unwrap(),
                plain.dir_marks(&d).unwrap(),
                "{dir}"
            );
        }
        assert_eq!(tar.readlink(&path("dir/sym")).unwrap(), b"../etc");
        let f = tar.stat(&path("dir/file")).unwrap();
        let l = tar.stat(&path("link")).unwrap();
        assert_eq!((f.ino, f.nlink, f.size), (l.ino, 2, 7));
        assert_eq!(f.kind(), FileType::RegularFile);
        let p = plain.stat(&path("dir/file")).unwrap();
        assert_eq!(
            (f.mode, f.uid, f.gid, f.mtime.0),
            (p.mode, p.uid, p.gid, p.mtime.0)
        );
        match tar.open_data(&path("link"), libc::O_RDONLY).unwrap() {
            FileData::Mapped(m) => assert_eq!(&*m, b"content"),
            FileData::Fd(_) => panic!("a tar layer has no fds"),
        }
        assert!(tar.open_data(&path("link"), libc::O_WRONLY).is_err());
        assert_eq!(
            tar.stat(&path("dir/sym/x")).unwrap_err().raw_os_error(),
            Some(libc::ELOOP)
        );
        assert!(tar.statfs().is_ok());
    }

    #[test]
    fn xattrs_are_read_from_pax_records() {
        let d = std::env::temp_dir().join(format!("strata-tarlayer-x-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let mut t = crate::tar::index::tests_support::pax_file(
            "f",
            &[
                ("SCHILY.xattr.user.a", b"1"),
                ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            ],
        );
        let p = d.join("x.tar");
        std::fs::File::create(&p).unwrap().write_all(&t).unwrap();
        t.clear();
        let file = Arc::new(File::open(&p).unwrap());
        let map = Arc::new(sys::map_read_only(&file).unwrap());
        let len = map.len() as u64;
        let layer = TarLayer::new(p, 9, MappedFile::new(map, 0, len).unwrap(), file).unwrap();
        let f = path("f");
        assert_eq!(layer.get_xattr(&f, c"user.a").unwrap(), b"1");
        assert_eq!(
            layer.get_xattr(&f, c"user.b").unwrap_err().raw_os_error(),
            Some(libc::ENODATA)
        );
        assert_eq!(
            layer.list_xattr(&f).unwrap(),
            b"user.a\0trusted.overlay.opaque\0"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}

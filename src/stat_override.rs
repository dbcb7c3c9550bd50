//! Owner and mode kept in an xattr instead of the inode: fuse-overlayfs's
//! `xattr_permissions=1|2`, and the `user.containers.override_stat` records
//! containers-storage writes (its `force_mask`, rootless unpacking).
//!
//! The value is `UID:GID:MODE[:TYPE]`: decimal ids in the layers' numbering
//! (id mapping applies on top, as to real owners), the mode in octal
//! (permission bits, or the whole `st_mode` as fuse-overlayfs 1.10 writes
//! it), and optionally what the object stands in for: `dir`, `file`,
//! `symlink`, `pipe`, `socket`, `block-MAJOR-MINOR` or `char-MAJOR-MINOR`
//! (a regular file standing in for a device node that could not be made).
//!
//! Which xattr a layer uses is read off its root directory (fuse-overlayfs
//! marks every layer root it writes this way); `xattr_permissions=` gives
//! the format for layers that carry no mark:
//!
//! | format | xattr | who can write it |
//! |---|---|---|
//! | privileged (`=1`) | `security.fuseoverlayfs.override_stat` | root; also on symlinks |
//! | containers (`=2`) | `user.containers.override_stat` (reads fuse-overlayfs 1.x's `user.fuseoverlayfs.override_stat` too) | anyone, not on symlinks |
//!
//! In the containers format `security.*` xattrs are virtual as well: an
//! unprivileged daemon cannot set them, so they are kept as
//! `user.containers.override_security.*` and shown under their own names.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use fuser::{FileAttr, FileType};

use crate::copy_up::{UPPER, open_path_in};
use crate::fs::Strata;
use crate::inode::{LayerId, Node, NodeState};
use crate::layer::{Layer, RelPath};
use crate::lookup::LayerStack;
use crate::readdir::MergedEntry;
use crate::sys;
use crate::xattr;

/// Where a layer keeps its owner-and-mode records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Privileged,
    Containers,
}

const PRIVILEGED: &CStr = c"security.fuseoverlayfs.override_stat";
const CONTAINERS: &CStr = c"user.containers.override_stat";
/// What fuse-overlayfs 1.x writes with `xattr_permissions=2`.
const LEGACY_USER: &CStr = c"user.fuseoverlayfs.override_stat";

/// How `security.*` names are kept in the containers format.
pub const ENCODED_PREFIX: &[u8] = b"user.containers.override_";

impl Format {
    /// The format `xattr_permissions=N` asks for.
    pub fn from_option(n: u8) -> Option<Format> {
        match n {
            1 => Some(Format::Privileged),
            2 => Some(Format::Containers),
            _ => None,
        }
    }

    /// The names a record may be found under, preferred first.
    pub fn names(self) -> &'static [&'static CStr] {
        match self {
            Format::Privileged => &[PRIVILEGED],
            Format::Containers => &[CONTAINERS, LEGACY_USER],
        }
    }

    /// The name new records are written under.
    pub fn name(self) -> &'static CStr {
        self.names()[0]
    }

    /// The format a layer's root is marked with, if any.
    pub fn of_layer(layer: &dyn Layer) -> Option<Format> {
        let root = RelPath::root();
        [Format::Privileged, Format::Containers]
            .into_iter()
            .find(|f| f.names().iter().any(|n| layer.get_xattr(&root, n).is_ok()))
    }

    /// Whether `security.*` names are kept encoded (see the module docs).
    pub fn encodes_security(self) -> bool {
        self == Format::Containers
    }
}

/// Whether `name` is one of the record xattrs (of any format).
pub fn is_record(name: &[u8]) -> bool {
    [PRIVILEGED, CONTAINERS, LEGACY_USER]
        .iter()
        .any(|n| n.to_bytes() == name)
}

/// What an object stands in for, when the record says so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StandIn {
    pub kind: FileType,
    pub rdev: u64,
}

/// One record: the owner and mode the object is shown with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Override {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits, set-id and sticky bits included (`mode & 0o7777`).
    pub perm: u32,
    pub stand_in: Option<StandIn>,
}

impl Override {
    /// Parses `UID:GID:MODE[:TYPE]`; `None` for anything else (a malformed
    /// record is ignored, the object shows its real owner and mode).
    pub fn parse(value: &[u8]) -> Option<Override> {
        let text = std::str::from_utf8(value).ok()?;
        let text = text.trim_end_matches('\0');
        let mut fields = text.splitn(4, ':');
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        let mode = u32::from_str_radix(fields.next()?, 8).ok()?;
        let stand_in = match fields.next() {
            None => kind_of_mode(mode).map(|kind| StandIn { kind, rdev: 0 }),
            Some(t) => Some(parse_type(t)?),
        };
        Some(Override {
            uid,
            gid,
            perm: mode & 0o7777,
            stand_in,
        })
    }

    /// The record as it is stored: `UID:GID:0MODE`, plus the type for
    /// anything but files and directories (the form containers-storage
    /// writes; fuse-overlayfs reads the first three fields).
    pub fn encode(&self) -> Vec<u8> {
        let mut s = format!("{}:{}:0{:o}", self.uid, self.gid, self.perm);
        if let Some(stand_in) = self.stand_in {
            match stand_in.kind {
                FileType::RegularFile | FileType::Directory => {}
                FileType::Symlink => s += ":symlink",
                FileType::NamedPipe => s += ":pipe",
                FileType::Socket => s += ":socket",
                FileType::BlockDevice => s += &format!(":block-{}", dev_text(stand_in.rdev)),
                FileType::CharDevice => s += &format!(":char-{}", dev_text(stand_in.rdev)),
            }
        }
        s.into_bytes()
    }

    /// Shows the record in `attr`. A type is taken only by a regular file
    /// (the stand-in containers-storage makes for what it could not
    /// create); a real object keeps its own type.
    pub fn apply(&self, attr: &mut FileAttr) {
        attr.uid = self.uid;
        attr.gid = self.gid;
        attr.perm = self.perm as u16;
        if let Some(stand_in) = self.stand_in
            && attr.kind == FileType::RegularFile
            && stand_in.kind != FileType::RegularFile
            && stand_in.kind != FileType::Directory
        {
            attr.kind = stand_in.kind;
            attr.rdev = stand_in.rdev as u32;
            if matches!(stand_in.kind, FileType::CharDevice | FileType::BlockDevice) {
                attr.size = 0;
            }
        }
    }
}

/// Reads the record of `path` in `layer`, trying the format's names in
/// order. `Ok(None)`: there is none (or it is malformed).
pub fn read(layer: &dyn Layer, path: &RelPath, format: Format) -> io::Result<Option<Override>> {
    for name in format.names() {
        match layer.get_xattr(path, name) {
            Ok(v) => return Ok(Override::parse(&v)),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENODATA | libc::ENOTSUP)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// `security.NAME` → `user.containers.override_security.NAME`.
pub fn encoded_name(name: &[u8]) -> Option<CString> {
    let mut v = ENCODED_PREFIX.to_vec();
    v.extend_from_slice(name);
    (v.len() <= 255).then(|| CString::new(v).ok()).flatten()
}

/// The user-visible name of an encoded one, if `raw` is one.
pub fn decoded_name(raw: &[u8]) -> Option<&[u8]> {
    raw.strip_prefix(ENCODED_PREFIX)
        .filter(|inner| inner.starts_with(b"security."))
}

/// Per merged layer (upper first): where it keeps records. A layer's own
/// mark wins; `option` covers the layers without one. An upper with
/// neither takes the format of the first marked lower layer, so that what
/// is copied up from it keeps the owner and mode it showed.
pub(crate) fn layer_formats(
    stack: &LayerStack,
    has_upper: bool,
    option: Option<Format>,
) -> Vec<Option<Format>> {
    let mut formats: Vec<_> = (0..stack.len())
        .map(|id| Format::of_layer(stack.get(id)).or(option))
        .collect();
    if has_upper && formats[UPPER].is_none() {
        formats[UPPER] = formats.iter().flatten().next().copied();
    }
    formats
}

impl Strata {
    /// The format the layer `id` keeps records in.
    fn record_format(&self, id: LayerId) -> Option<Format> {
        self.records.get(id).copied().flatten()
    }

    /// Marks the upper's root with the records' format, as fuse-overlayfs
    /// does, so that a later mount (or another tool) reads the upper the
    /// same way whatever its options.
    pub(crate) fn mark_upper(&self) {
        let (Some(upper), Some(format)) = (&self.upper, self.record_format(UPPER)) else {
            return;
        };
        if Format::of_layer(upper.layer.as_ref()).is_some() {
            return;
        }
        let root = RelPath::root();
        let marked = upper.layer.open_path(&root).and_then(|fd| {
            let st = sys::fstat(fd.as_fd())?;
            let record = Override {
                uid: st.st_uid,
                gid: st.st_gid,
                perm: st.st_mode & 0o7777,
                stand_in: None,
            };
            sys::fsetxattr_any(fd.as_fd(), format.name(), &record.encode(), 0)
        });
        if let Err(e) = marked {
            log::warn!("could not mark the upper layer's root with {format:?} records: {e}");
        }
    }

    /// The record `node` is shown with: its top layer keeps records and
    /// the object has one.
    pub(crate) fn record_of(&self, node: &Node) -> Option<Override> {
        let layer = node.state().top().layer;
        let format = self.record_format(layer)?;
        if let Some(fd) = node.orphan() {
            return format
                .names()
                .iter()
                .find_map(|n| sys::fgetxattr(fd.as_fd(), n).ok())
                .and_then(|v| Override::parse(&v));
        }
        let path = node.state().top().path.clone();
        read(self.stack.get(layer), &path, format).ok().flatten()
    }

    /// chown/chmod of the (copied-up) `node`, kept in its record instead of
    /// the inode when the upper keeps records or the object already has
    /// one. `Ok(false)`: the inode is to be changed.
    pub(crate) fn set_record(
        &self,
        node: &Node,
        fd: BorrowedFd<'_>,
        uid: Option<u32>,
        gid: Option<u32>,
        mode: Option<u32>,
    ) -> io::Result<bool> {
        let found = |f: Format| {
            f.names()
                .iter()
                .find_map(|n| sys::fgetxattr(fd, n).ok())
                .and_then(|v| Override::parse(&v))
                .map(|r| (f, r))
        };
        let existing = found(Format::Privileged).or_else(|| found(Format::Containers));
        let Some(format) = existing.map(|(f, _)| f).or(self.record_format(UPPER)) else {
            return Ok(false);
        };
        let st = node.state().stat;
        let mut record = existing.map(|(_, r)| r).unwrap_or(Override {
            uid: st.uid,
            gid: st.gid,
            perm: st.mode & 0o7777,
            stand_in: None,
        });
        record.uid = uid.unwrap_or(record.uid);
        record.gid = gid.unwrap_or(record.gid);
        if (uid.is_some() || gid.is_some()) && st.kind() != FileType::Directory {
            // What a chown of the inode would do: set-user-id goes, and
            // set-group-id where it means "group execute" (not locking).
            record.perm &= !libc::S_ISUID;
            if record.perm & libc::S_IXGRP != 0 {
                record.perm &= !libc::S_ISGID;
            }
        }
        record.perm = mode.map_or(record.perm, |m| m & 0o7777);
        match sys::fsetxattr_any(fd, format.name(), &record.encode(), 0) {
            // user.* xattrs exist on files and directories only: the owner
            // of anything else is its inode's.
            Err(e)
                if e.raw_os_error() == Some(libc::EPERM)
                    && !matches!(st.kind(), FileType::RegularFile | FileType::Directory) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
            Ok(()) => Ok(true),
        }
    }

    /// Where the upper keeps records: how to create an object whose owner
    /// and mode are `intended` (the real object is the daemon's, and stays
    /// usable by it), and the record to write once it exists.
    /// In the containers format only files and directories can carry a
    /// record (the kernel refuses `user.*` xattrs on anything else): other
    /// objects are made as without records.
    pub(crate) fn record_for_new(
        &self,
        file_or_dir: bool,
        intended: Override,
    ) -> Option<(Format, Override)> {
        self.record_format(UPPER)
            .filter(|f| file_or_dir || *f != Format::Containers)
            .map(|f| (f, intended))
    }

    /// Writes the record of the new object `name` in upper directory `dir`.
    pub(crate) fn write_new_record(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        (format, record): (Format, Override),
    ) -> io::Result<()> {
        let fd = open_path_in(dir, name)?;
        sys::fsetxattr_any(fd.as_fd(), format.name(), &record.encode(), 0)
    }

    /// Gives the regular files of a listing that stand in for other objects
    /// (a record with a type) the type stat shows for them.
    pub(crate) fn show_stand_ins(&self, dir: &NodeState, entries: &mut [MergedEntry]) {
        for entry in entries
            .iter_mut()
            .filter(|e| e.kind == FileType::RegularFile)
        {
            let origin = &dir.origins[entry.origin];
            let Some(format) = self.record_format(origin.layer) else {
                continue;
            };
            let path = origin.path.join(&entry.name);
            if let Ok(Some(Override {
                stand_in: Some(s), ..
            })) = read(self.stack.get(origin.layer), &path, format)
                && s.kind != FileType::Directory
            {
                entry.kind = s.kind;
            }
        }
    }

    /// The name an xattr of `layer` is kept under: `security.*` names are
    /// encoded in the containers format.
    pub(crate) fn stored_xattr_name(&self, layer: LayerId, name: &CStr) -> Option<CString> {
        let format = self.record_format(layer)?;
        (format.encodes_security() && name.to_bytes().starts_with(b"security."))
            .then(|| encoded_name(name.to_bytes()))
            .flatten()
    }

    /// The names users see in a raw `listxattr` of `node`'s top layer.
    pub(crate) fn visible_xattr_names(&self, node: &Node, raw: &[u8]) -> Vec<u8> {
        let layer = node.state().top().layer;
        if !self
            .record_format(layer)
            .is_some_and(|f| f.encodes_security())
        {
            return xattr::visible_names(raw);
        }
        let mut out = Vec::with_capacity(raw.len());
        for name in raw.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            let shown = match decoded_name(name) {
                Some(inner) => Some(inner),
                None if name.starts_with(b"security.") => None,
                None => (!xattr::is_internal(name)).then_some(name),
            };
            if let Some(shown) = shown {
                out.extend_from_slice(shown);
                out.push(0);
            }
        }
        out
    }
}

fn kind_of_mode(mode: u32) -> Option<FileType> {
    Some(match mode & libc::S_IFMT {
        libc::S_IFREG => FileType::RegularFile,
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFCHR => FileType::CharDevice,
        _ => return None,
    })
}

fn parse_type(t: &str) -> Option<StandIn> {
    let plain = |kind| Some(StandIn { kind, rdev: 0 });
    match t {
        "dir" => plain(FileType::Directory),
        "file" => plain(FileType::RegularFile),
        "symlink" => plain(FileType::Symlink),
        "pipe" => plain(FileType::NamedPipe),
        "socket" => plain(FileType::Socket),
        _ => {
            let (kind, dev) = if let Some(d) = t.strip_prefix("block-") {
                (FileType::BlockDevice, d)
            } else {
                (FileType::CharDevice, t.strip_prefix("char-")?)
            };
            let (major, minor) = dev.split_once('-')?;
            Some(StandIn {
                kind,
                rdev: libc::makedev(major.parse().ok()?, minor.parse().ok()?),
            })
        }
    }
}

fn dev_text(rdev: u64) -> String {
    format!("{}-{}", libc::major(rdev), libc::minor(rdev))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forms_in_use_parse() {
        // containers-storage, fuse-overlayfs 2.x, fuse-overlayfs 1.10.
        let o = Override::parse(b"0:0:0755").unwrap();
        assert_eq!((o.uid, o.gid, o.perm, o.stand_in), (0, 0, 0o755, None));
        let o = Override::parse(b"1000:100:4751").unwrap();
        assert_eq!((o.uid, o.gid, o.perm), (1000, 100, 0o4751));
        let o = Override::parse(b"11:12:40755").unwrap();
        assert_eq!(o.perm, 0o755);
        assert_eq!(o.stand_in.unwrap().kind, FileType::Directory);
        let o = Override::parse(b"0:0:0100644").unwrap();
        assert_eq!(o.stand_in.unwrap().kind, FileType::RegularFile);
        let o = Override::parse(b"0:5:0620:char-4-64").unwrap();
        assert_eq!(
            o.stand_in,
            Some(StandIn {
                kind: FileType::CharDevice,
                rdev: libc::makedev(4, 64)
            })
        );
        assert_eq!(
            Override::parse(b"1:2:0660:block-8-1")
                .unwrap()
                .stand_in
                .unwrap()
                .kind,
            FileType::BlockDevice
        );
        assert_eq!(
            Override::parse(b"1:2:0644:pipe")
                .unwrap()
                .stand_in
                .unwrap()
                .kind,
            FileType::NamedPipe
        );
    }

    #[test]
    fn malformed_records_are_none() {
        for bad in [
            &b""[..],
            b"0:0",
            b"a:0:0755",
            b"0:0:0799",
            b"0:0:0755:tape",
            b"0:0:0755:char-1",
            b"-1:0:0755",
            b"\xff:0:0",
        ] {
            assert_eq!(Override::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn encode_round_trips() {
        for text in [
            &b"0:0:0755"[..],
            b"1000:1000:04755",
            b"5:6:0620:char-4-64",
            b"5:6:0660:block-8-1",
            b"1:1:0777:symlink",
            b"1:1:0644:socket",
        ] {
            let o = Override::parse(text).unwrap();
            assert_eq!(o.encode(), text, "{}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn security_names_encode_and_decode() {
        let e = encoded_name(b"security.capability").unwrap();
        assert_eq!(
            e.to_bytes(),
            b"user.containers.override_security.capability"
        );
        assert_eq!(
            decoded_name(e.to_bytes()),
            Some(&b"security.capability"[..])
        );
        assert_eq!(decoded_name(b"user.containers.override_stat"), None);
        assert_eq!(decoded_name(b"user.other"), None);
        assert!(encoded_name(&[b'a'; 240]).is_none());
    }
}

//! What `inspect` says about one entry of the merged tree: [`Entry`], the
//! layers it involves ([`Place`]), the names deleted in a directory
//! ([`Deleted`]) and the attributes shown for it ([`Shown`]).
//!
//! Paths here are merged or layer paths as bytes, `/`-rooted (`/` is the
//! root): the form both outputs print and the JSON carries back.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::time::{SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType};

use crate::inode::NodeState;
use crate::layer::{RelPath, Stat};

/// What an entry is, as `type` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Char,
    Block,
    Fifo,
    Socket,
    /// The name is deleted: there is no object, only the whiteout.
    Whiteout,
}

impl Kind {
    /// Each kind with its `type` name and its `ls` type character.
    const ALL: [(Kind, &'static str, char); 8] = [
        (Kind::File, "file", '-'),
        (Kind::Dir, "dir", 'd'),
        (Kind::Symlink, "symlink", 'l'),
        (Kind::Char, "char", 'c'),
        (Kind::Block, "block", 'b'),
        (Kind::Fifo, "fifo", 'p'),
        (Kind::Socket, "socket", 's'),
        (Kind::Whiteout, "whiteout", 'w'),
    ];

    pub fn of(file_type: FileType) -> Kind {
        match file_type {
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            FileType::CharDevice => Kind::Char,
            FileType::BlockDevice => Kind::Block,
            FileType::NamedPipe => Kind::Fifo,
            FileType::Socket => Kind::Socket,
            FileType::RegularFile => Kind::File,
        }
    }

    fn row(self) -> &'static (Kind, &'static str, char) {
        Kind::ALL
            .iter()
            .find(|k| k.0 == self)
            .expect("every kind has a row")
    }

    pub fn name(self) -> &'static str {
        self.row().1
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.iter().find(|k| k.1 == name).map(|k| k.0)
    }

    pub fn type_char(self) -> char {
        self.row().2
    }
}

/// The attributes shown on the `ls` line (what a mount shows).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shown {
    /// Permission bits with set-id and sticky bits (mode & 0o7777).
    pub perm: u32,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// (major, minor) of a device.
    pub rdev: Option<(u32, u32)>,
    /// (seconds, nanoseconds) since the epoch.
    pub mtime: (i64, u32),
}

impl Shown {
    /// What a mount shows for `state` (merged directories: link count 1).
    pub fn of_state(state: &NodeState) -> Shown {
        let st = &state.stat;
        let nlink = if st.is_dir() && state.origins.len() > 1 {
            1
        } else {
            (st.nlink as i64 + state.nlink_bias).max(0) as u64
        };
        Shown {
            perm: st.mode & 0o7777,
            nlink,
            uid: st.uid,
            gid: st.gid,
            size: st.size,
            rdev: device(st),
            mtime: st.mtime,
        }
    }

    /// What the daemon tells the kernel (id mapping and owner records
    /// applied), with the device number and mtime of the layer object.
    pub fn of_attr(attr: &FileAttr, st: &Stat) -> Shown {
        Shown {
            perm: attr.perm as u32,
            nlink: attr.nlink as u64,
            uid: attr.uid,
            gid: attr.gid,
            size: attr.size,
            rdev: device(st),
            mtime: epoch_time(attr.mtime),
        }
    }

    /// What a mount showed `stat(2)`.
    pub fn of_metadata(md: &fs::Metadata) -> Shown {
        let t = md.file_type();
        Shown {
            perm: md.mode() & 0o7777,
            nlink: md.nlink(),
            uid: md.uid(),
            gid: md.gid(),
            size: md.size(),
            rdev: (t.is_char_device() || t.is_block_device())
                .then(|| (libc::major(md.rdev()), libc::minor(md.rdev()))),
            mtime: (md.mtime(), md.mtime_nsec() as u32),
        }
    }
}

fn device(st: &Stat) -> Option<(u32, u32)> {
    matches!(st.kind(), FileType::CharDevice | FileType::BlockDevice)
        .then(|| (libc::major(st.rdev), libc::minor(st.rdev)))
}

/// Seconds and nanoseconds since the epoch (the inverse of
/// [`crate::layer::system_time`]; nanoseconds count forward, also before
/// the epoch).
fn epoch_time(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            match d.subsec_nanos() {
                0 => (-(d.as_secs() as i64), 0),
                n => (-(d.as_secs() as i64) - 1, 1_000_000_000 - n),
            }
        }
    }
}

/// A place in one layer: its label (see the module docs), its directory,
/// and a `/`-rooted path from the layer's root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    pub layer: String,
    pub dir: Vec<u8>,
    pub path: Vec<u8>,
}

/// A name deleted in a directory: the layer of the whiteout, and the
/// layers it hides the name of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deleted {
    pub name: Vec<u8>,
    pub layer: String,
    pub shadows: Vec<String>,
}

/// Everything `inspect` says about one entry of the merged tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The merged path.
    pub path: Vec<u8>,
    pub kind: Kind,
    /// None for a whiteout.
    pub stat: Option<Shown>,
    pub target: Option<Vec<u8>>,
    /// The supplying layer (for a whiteout: the layer holding it).
    pub layer: Place,
    /// A directory's layers, top first.
    pub merged: Vec<Place>,
    /// Layers below holding the name, hidden by this entry.
    pub shadows: Vec<Place>,
    pub opaque: bool,
    pub copied_up: bool,
    /// The layer holding the redirect, and its value.
    pub redirect: Option<(Place, Vec<u8>)>,
    /// Where a metadata-only file's data is.
    pub metacopy: Option<Place>,
    /// Names deleted in this directory.
    pub deleted: Vec<Deleted>,
    /// `deleted` stops short (the xattr's size limit).
    pub deleted_truncated: bool,
}

impl Entry {
    /// The `markers` of the JSON, in their documented order.
    pub fn markers(&self) -> Vec<&'static str> {
        [
            (self.kind == Kind::Whiteout, "whiteout"),
            (self.opaque, "opaque"),
            (self.copied_up, "copied-up"),
            (self.redirect.is_some(), "redirected"),
            (self.metacopy.is_some(), "metacopy"),
        ]
        .into_iter()
        .filter_map(|(set, marker)| set.then_some(marker))
        .collect()
    }

    /// The whiteout entry of `deleted`, a name deleted in this directory:
    /// its places are the name inside this directory's merged layers.
    pub fn deleted_entry(&self, deleted: &Deleted) -> Entry {
        let inside = |label: &str| -> Place {
            match self.merged.iter().find(|p| p.layer == label) {
                Some(p) => Place {
                    layer: p.layer.clone(),
                    dir: p.dir.clone(),
                    path: child_path(&p.path, &deleted.name),
                },
                None => Place {
                    layer: label.to_owned(),
                    dir: Vec::new(),
                    path: child_path(&self.path, &deleted.name),
                },
            }
        };
        Entry::whiteout(
            child_path(&self.path, &deleted.name),
            inside(&deleted.layer),
            deleted.shadows.iter().map(|l| inside(l)).collect(),
        )
    }

    /// The entry of a deleted name: no object, only the whiteout in
    /// `layer`, hiding `shadows`.
    pub fn whiteout(path: Vec<u8>, layer: Place, shadows: Vec<Place>) -> Entry {
        Entry {
            path,
            kind: Kind::Whiteout,
            stat: None,
            target: None,
            layer,
            merged: Vec::new(),
            shadows,
            opaque: false,
            copied_up: false,
            redirect: None,
            metacopy: None,
            deleted: Vec::new(),
            deleted_truncated: false,
        }
    }
}

/// `path` in the `/`-rooted form of entries and places.
pub fn rooted(path: &RelPath) -> Vec<u8> {
    match path.is_root() {
        true => b"/".to_vec(),
        false => [b"/", path.as_bytes()].concat(),
    }
}

/// `name` inside the `/`-rooted directory path `dir`.
pub fn child_path(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut path = dir.to_vec();
    if !path.ends_with(b"/") {
        path.push(b'/');
    }
    path.extend_from_slice(name);
    path
}

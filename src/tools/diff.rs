//! `strata diff`: an upper directory written as an OCI image layer.
//!
//! ```text
//! strata diff --layers TOP:...:BOTTOM --upper DIR [-o FILE|-]
//!             [--uidmapping=L:M:N[:...]] [--gidmapping=L:M:N[:...]]
//!             [--xattr-permissions=0|1|2]
//! ```
//!
//! The tar stream (stdout by default, never a terminal) holds what the
//! upper changes, in the form OCI tools apply: unpacked in order over the
//! lower layers (whiteouts handled as the image spec says), it gives the
//! tree a mount of the same layers shows.
//!
//! - Regular files, directories, symlinks, device nodes and fifos keep
//!   mode, owner, mtime (PAX for sub-second, negative and large values)
//!   and their extended attributes (`SCHILY.xattr.NAME`), but never the
//!   internal ones ([`crate::xattr::is_internal`]). Sockets cannot be
//!   stored in tar: they are left out with a warning, as GNU tar does.
//! - Owner and mode are the ones a mount shows: from an owner-and-mode
//!   record where the layer keeps them ([`crate::stat_override`];
//!   `--xattr-permissions` for layers whose root carries no mark, as the
//!   mount option), a regular file standing in for a device or fifo is
//!   written as one, and `--uidmapping=`/`--gidmapping=` (the mount
//!   options' syntax) turn the stored ids into the ones shown. Without
//!   them the ids are the layers' own, which is what an image layer over
//!   lower layers stored the same way needs.
//! - A whiteout (a 0/0 character device or a `.wh.NAME` file) becomes an
//!   empty `.wh.NAME` file; an opaque directory (any of the encodings, or
//!   a `.wh.NAME` next to the directory) gets a `.wh..wh..opq` entry.
//!   Within a directory the whiteouts come first, then the other names,
//!   each level sorted by name, so the stream is reproducible.
//! - A redirected directory (renamed from a lower one, kernel
//!   `redirect_dir`) has no OCI form: it is written as an opaque directory
//!   holding its whole merged content, resolved through the layer stack as
//!   a mount resolves it (redirects inside it included). Its old name
//!   already has a whiteout in the upper.
//! - A metadata-only file (kernel `metacopy`) is written with its data
//!   from the layer below that holds it.
//! - Names of one inode within the upper (and within expanded
//!   directories) are one file and tar hard links to it. The links a
//!   workdir's index keeps are not names. A lower file reached through an
//!   expanded directory whose inode has another name a lower layer still
//!   shows where it is becomes a hard link to that name.

use std::collections::{BTreeSet, HashMap};
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;

use fuser::FileType;

use super::tar_write::{Entry, Kind, TarWriter};
use crate::copy_up::UPPER;
use crate::idmap::IdMap;
use crate::inode::{InoMap, NodeState};
use crate::layer::{DirLayer, Layer, OPAQUE_MARKER, RelPath, WHITEOUT_PREFIX};
use crate::lookup::LayerStack;
use crate::options::{self, IdMapping};
use crate::readdir::merged_listing;
use crate::stat_override::{self, Format, Override};
use crate::sys;
use crate::xattr;

/// `strata diff --help`.
pub const USAGE: &str = "\
usage: strata diff --layers TOP:...:BOTTOM --upper DIR [-o FILE|-] [OPTIONS]

Writes the upper directory DIR of a mount of the layers TOP..BOTTOM as an
OCI image layer (an uncompressed tar) to FILE, or to stdout (never to a
terminal). Unpacked over the layers by an OCI tool, it gives the merged tree.

  --layers TOP:...:BOTTOM  the lower layers, as in lowerdir= (\\: is a colon)
  --upper DIR              the upper directory (not in use by a mount)
  -o, --output FILE|-      where the tar goes (default: stdout)
  --uidmapping=L:M:N[:...] write uid L+i as M+i, as the mount option shows it
  --gidmapping=L:M:N[:...] the same for group ids
  --xattr-permissions=0|1|2
                           owner-and-mode records of layers without a mark,
                           as the mount option (1: security.*, 2: user.*)
  -h, --help               this text
";

/// The command line of `strata diff`.
#[derive(Debug, Clone, PartialEq)]
pub struct Args {
    pub layers: Vec<PathBuf>,
    pub upper: PathBuf,
    /// `None`: stdout.
    pub output: Option<PathBuf>,
    pub uid_mappings: Vec<IdMapping>,
    pub gid_mappings: Vec<IdMapping>,
    pub xattr_permissions: Option<Format>,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    Help,
    Run(Args),
}

/// Runs `strata diff ARGS`; the error is one line.
pub fn run(args: Vec<OsString>) -> Result<(), String> {
    match parse_args(args)? {
        Parsed::Help => {
            print!("{USAGE}");
            Ok(())
        }
        Parsed::Run(args) => diff(&args),
    }
}

/// Parses the arguments after `diff`.
pub fn parse_args(args: Vec<OsString>) -> Result<Parsed, String> {
    let mut layers = None;
    let mut upper = None;
    let mut output = None;
    let mut uid_mappings = Vec::new();
    let mut gid_mappings = Vec::new();
    let mut xattr_permissions = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let bytes = arg.as_bytes();
        if bytes == b"-h" || bytes == b"--help" {
            return Ok(Parsed::Help);
        }
        // `--name=value`, `--name value`, `-o value` and `-ovalue`.
        let (name, inline) = match bytes.iter().position(|&b| b == b'=') {
            Some(i) if bytes.starts_with(b"--") => (&bytes[..i], Some(bytes[i + 1..].to_vec())),
            _ if bytes.starts_with(b"-o") && bytes.len() > 2 => {
                (&b"-o"[..], Some(bytes[2..].to_vec()))
            }
            _ => (bytes, None),
        };
        let known = [
            &b"--layers"[..],
            b"--upper",
            b"-o",
            b"--output",
            b"--uidmapping",
            b"--gidmapping",
            b"--xattr-permissions",
        ];
        if !known.contains(&name) {
            return Err(format!(
                "unknown argument '{}' (see strata diff --help)",
                arg.to_string_lossy()
            ));
        }
        let shown = String::from_utf8_lossy(name).into_owned();
        let value = match inline {
            Some(v) => v,
            None => args
                .next()
                .ok_or_else(|| format!("{shown} needs a value"))?
                .into_vec(),
        };
        let value = value.as_slice();
        match name {
            b"--layers" => {
                layers = Some(options::parse_layer_list(value).map_err(|e| e.to_string())?)
            }
            b"--upper" => upper = Some(PathBuf::from(OsStr::from_bytes(value))),
            b"-o" | b"--output" => {
                output = match value {
                    b"" => return Err(format!("{shown} needs a file name (or -)")),
                    b"-" => None,
                    path => Some(PathBuf::from(OsStr::from_bytes(path))),
                }
            }
            b"--uidmapping" => {
                uid_mappings = options::parse_id_mapping_value("uidmapping", value)
                    .map_err(|e| e.to_string())?
            }
            b"--gidmapping" => {
                gid_mappings = options::parse_id_mapping_value("gidmapping", value)
                    .map_err(|e| e.to_string())?
            }
            _ => {
                let n = options::parse_xattr_permissions_value(value).map_err(|e| e.to_string())?;
                xattr_permissions = Format::from_option(n);
            }
        }
    }
    let layers = layers.ok_or("--layers TOP:...:BOTTOM is required (see strata diff --help)")?;
    let upper = upper.ok_or("--upper DIR is required (see strata diff --help)")?;
    if upper.as_os_str().is_empty() {
        return Err("--upper needs a directory".into());
    }
    Ok(Parsed::Run(Args {
        layers,
        upper,
        output,
        uid_mappings,
        gid_mappings,
        xattr_permissions,
    }))
}

/// Opens the layers, then writes the tar to the output.
fn diff(args: &Args) -> Result<(), String> {
    let upper = DirLayer::open(&args.upper)
        .map_err(|e| format!("upper directory {}: {e}", args.upper.display()))?
        .read_only();
    let upper = Arc::new(upper);
    let mut lowers: Vec<Arc<dyn Layer>> = Vec::new();
    for path in &args.layers {
        let layer = DirLayer::open(path)
            .map_err(|e| format!("layer {}: {e}", path.display()))?
            .read_only();
        lowers.push(Arc::new(layer));
    }
    let stack = LayerStack::new(Some(upper.clone() as Arc<dyn Layer>), lowers);
    let formats = stat_override::layer_formats(&stack, true, args.xattr_permissions);
    let idmap = IdMap::new(&args.uid_mappings, &args.gid_mappings, false, None, None);
    let faults = Faults::from_env();
    const TERMINAL: &str =
        "refusing to write a tar archive to a terminal: redirect stdout or give -o FILE";
    match &args.output {
        None => {
            let stdout = io::stdout();
            if stdout.is_terminal() {
                return Err(TERMINAL.into());
            }
            let sink = io::BufWriter::with_capacity(1 << 20, stdout.lock());
            Diff::new(&stack, &upper, formats, idmap, sink, None, faults).write()
        }
        Some(path) => {
            let shown = |e: io::Error| format!("{}: {e}", path.display());
            let file = File::create(path).map_err(shown)?;
            if file.is_terminal() {
                return Err(TERMINAL.into());
            }
            // Only a regular file is the tar's alone: it may be inside the
            // upper (and is then left out), and goes again on a failure.
            let meta = file.metadata().map_err(shown)?;
            let regular = meta.is_file();
            let skip = regular.then(|| (meta.dev(), meta.ino()));
            let sink = io::BufWriter::with_capacity(1 << 20, file);
            let result = Diff::new(&stack, &upper, formats, idmap, sink, skip, faults).write();
            if result.is_err() && regular {
                let _ = std::fs::remove_file(path);
            }
            result
        }
    }
}

/// Debug builds only: a feature switched off on demand
/// (`STRATA_DIFF_FAULTS=no-redirects,no-metacopy,no-hardlinks,no-records`),
/// for the tests that show the round trip notices each one missing.
#[derive(Debug, Default, Clone, Copy)]
struct Faults {
    no_redirects: bool,
    no_metacopy: bool,
    no_hardlinks: bool,
    no_records: bool,
}

impl Faults {
    #[cfg(debug_assertions)]
    fn from_env() -> Faults {
        let v = std::env::var("STRATA_DIFF_FAULTS").unwrap_or_default();
        let has = |name: &str| v.split(',').any(|f| f == name);
        Faults {
            no_redirects: has("no-redirects"),
            no_metacopy: has("no-metacopy"),
            no_hardlinks: has("no-hardlinks"),
            no_records: has("no-records"),
        }
    }

    #[cfg(not(debug_assertions))]
    fn from_env() -> Faults {
        Faults::default()
    }
}

/// The walk and what it has written so far.
struct Diff<'a, W: Write> {
    stack: &'a LayerStack,
    upper: &'a DirLayer,
    inos: InoMap,
    /// Per merged layer: where it keeps owner-and-mode records.
    formats: Vec<Option<Format>>,
    idmap: IdMap,
    tar: TarWriter<W>,
    /// (dev, ino) of a multiply linked object → the member name it was
    /// written under first.
    links: HashMap<(u64, u64), Vec<u8>>,
    /// (dev, ino) of multiply linked lower objects → a merged name that
    /// unpacking the lower layers already gives them (computed on demand).
    lower_names: Option<HashMap<(u64, u64), RelPath>>,
    /// The output file, when it is inside the upper.
    skip: Option<(u64, u64)>,
    faults: Faults,
}

type Fallible<T> = Result<T, String>;

/// "`path`: error", for messages.
fn at(path: &RelPath) -> impl Fn(io::Error) -> String + '_ {
    move |e| format!("{}: {e}", String::from_utf8_lossy(path.as_bytes()))
}

/// The member name of `path`: `./` for the root, a trailing `/` for
/// directories.
fn member_name(path: &RelPath, dir: bool) -> Vec<u8> {
    if path.is_root() {
        return b"./".to_vec();
    }
    let mut v = path.as_bytes().to_vec();
    if dir {
        v.push(b'/');
    }
    v
}

fn member_in(dir: &RelPath, name: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    if !dir.is_root() {
        v.extend_from_slice(dir.as_bytes());
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}

fn dev_numbers(rdev: u64) -> (u32, u32) {
    (libc::major(rdev), libc::minor(rdev))
}

/// How an object is shown: owner, mode and what it is.
struct Shown {
    uid: u32,
    gid: u32,
    perm: u32,
    kind: FileType,
    rdev: u64,
}

impl<'a, W: Write> Diff<'a, W> {
    fn new(
        stack: &'a LayerStack,
        upper: &'a DirLayer,
        formats: Vec<Option<Format>>,
        idmap: IdMap,
        sink: W,
        skip: Option<(u64, u64)>,
        faults: Faults,
    ) -> Diff<'a, W> {
        Diff {
            stack,
            upper,
            inos: InoMap::new(stack.iter().map(|l| l.root_dev())),
            formats,
            idmap,
            tar: TarWriter::new(sink),
            links: HashMap::new(),
            lower_names: None,
            skip,
            faults,
        }
    }

    fn write(mut self) -> Fallible<()> {
        let root = self.stack.root_state().map_err(at(&RelPath::root()))?;
        // The merged root is never opaque (markers on layer roots are not
        // honoured), whatever the upper root carries.
        self.dir_entry(&root, false)?;
        self.upper_dir(&root)?;
        self.tar
            .finish()
            .map_err(|e| format!("writing the layer: {e}"))?;
        Ok(())
    }

    fn append(&mut self, entry: &Entry, data: Option<&mut dyn io::Read>) -> Fallible<()> {
        self.tar
            .append(entry, data)
            .map_err(|e| format!("{}: {e}", String::from_utf8_lossy(&entry.path)))
    }

    /// The content of upper directory `dir` (its own entry is written):
    /// whiteouts first, then every other name.
    fn upper_dir(&mut self, dir: &NodeState) -> Fallible<()> {
        let mut names = self.upper.raw_names(&dir.path).map_err(at(&dir.path))?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let mut whiteouts: BTreeSet<Vec<u8>> = BTreeSet::new();
        let mut children = Vec::new();
        for name in names {
            let bytes = name.as_bytes();
            if bytes == OPAQUE_MARKER {
                continue; // dir_marks reports it
            }
            if let Some(target) = bytes.strip_prefix(WHITEOUT_PREFIX) {
                // `.wh..wh.*` is AUFS bookkeeping, not a whiteout.
                if !target.is_empty() && !target.starts_with(WHITEOUT_PREFIX) {
                    whiteouts.insert(target.to_vec());
                }
                continue;
            }
            let path = dir.path.join(&name);
            let stat = self.upper.stat(&path).map_err(at(&path))?;
            if stat.is_whiteout() {
                whiteouts.insert(bytes.to_vec());
                continue;
            }
            if Some((stat.dev, stat.ino)) == self.skip {
                continue; // the tar being written
            }
            children.push(name);
        }
        for target in &whiteouts {
            let mut wh = WHITEOUT_PREFIX.to_vec();
            wh.extend_from_slice(target);
            let entry = Entry::new(
                member_in(&dir.path, &wh),
                Kind::File { size: 0 },
                0o644,
                (0, 0),
                dir.stat.mtime,
            );
            self.append(&entry, Some(&mut io::empty()))?;
        }
        for name in children {
            let path = dir.path.join(&name);
            let Some(child) = self.stack.lookup(dir, &name).map_err(at(&path))? else {
                eprintln!(
                    "strata diff: warning: {}: not in the merged tree, left out",
                    String::from_utf8_lossy(path.as_bytes())
                );
                continue;
            };
            if !child.stat.is_dir() {
                self.non_dir(&child)?;
                continue;
            }
            let marks = self.upper.dir_marks(&child.path).map_err(at(&path))?;
            if marks.redirect.is_some() && !self.faults.no_redirects {
                self.merged_dir(&child, true)?;
                continue;
            }
            let opaque = marks.opaque || whiteouts.contains(name.as_bytes());
            self.dir_entry(&child, opaque)?;
            self.upper_dir(&child)?;
        }
        Ok(())
    }

    /// A directory written whole, from the merged view (a redirected
    /// directory, and everything inside it).
    fn merged_dir(&mut self, dir: &NodeState, opaque: bool) -> Fallible<()> {
        self.dir_entry(dir, opaque)?;
        let mut entries = merged_listing(self.stack, &self.inos, dir).map_err(at(&dir.path))?;
        entries.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        for e in entries {
            let path = dir.path.join(&e.name);
            let Some(child) = self.stack.lookup(dir, &e.name).map_err(at(&path))? else {
                continue;
            };
            if self.top_is_skipped(&child) {
                continue;
            }
            if child.stat.is_dir() {
                self.merged_dir(&child, false)?;
            } else {
                self.non_dir(&child)?;
            }
        }
        Ok(())
    }

    fn top_is_skipped(&self, state: &NodeState) -> bool {
        state.top().layer == UPPER && Some((state.stat.dev, state.stat.ino)) == self.skip
    }

    /// The owner and mode shown for `state` (its top layer's record, if
    /// any, then the id mapping), and the type it is shown as.
    fn shown(&self, state: &NodeState) -> Shown {
        let top = state.top();
        let st = &state.stat;
        let record = match self.formats.get(top.layer).copied().flatten() {
            Some(format) if !self.faults.no_records => {
                stat_override::read(self.stack.get(top.layer), &top.path, format)
                    .ok()
                    .flatten()
            }
            _ => None,
        };
        let (mut uid, mut gid, mut perm) = (st.uid, st.gid, st.mode & 0o7777);
        let (mut kind, mut rdev) = (st.kind(), st.rdev);
        if let Some(Override {
            uid: u,
            gid: g,
            perm: p,
            stand_in,
        }) = record
        {
            (uid, gid, perm) = (u, g, p);
            if let Some(s) = stand_in
                && kind == FileType::RegularFile
                && !matches!(s.kind, FileType::RegularFile | FileType::Directory)
            {
                kind = s.kind;
                rdev = s.rdev;
            }
        }
        let (uid, gid) = self.idmap.shown(uid, gid);
        Shown {
            uid,
            gid,
            perm,
            kind,
            rdev,
        }
    }

    /// The visible extended attributes of `state`'s top object, sorted by
    /// name, with the names a mount shows (`security.*` decoded where the
    /// layer's records keep them encoded).
    fn xattrs(&self, state: &NodeState) -> Fallible<Vec<(Vec<u8>, Vec<u8>)>> {
        let top = state.top();
        let layer = self.stack.get(top.layer);
        let encoded = self
            .formats
            .get(top.layer)
            .copied()
            .flatten()
            .is_some_and(Format::encodes_security);
        let raw = xattr::none_if_unsupported(layer.list_xattr(&top.path)).map_err(at(&top.path))?;
        let mut out = Vec::new();
        for name in raw.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            let shown = match stat_override::decoded_name(name) {
                Some(inner) if encoded => inner,
                _ if encoded && name.starts_with(b"security.") => continue,
                _ if xattr::is_internal(name) => continue,
                _ => name,
            };
            let cname = CString::new(name).expect("xattr names have no NUL");
            match layer.get_xattr(&top.path, &cname) {
                Ok(value) => out.push((shown.to_vec(), value)),
                // Removed since it was listed.
                Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
                Err(e) => return Err(at(&top.path)(e)),
            }
        }
        out.sort();
        out.dedup_by(|a, b| a.0 == b.0);
        Ok(out)
    }

    fn dir_entry(&mut self, dir: &NodeState, opaque: bool) -> Fallible<()> {
        let shown = self.shown(dir);
        let mut entry = Entry::new(
            member_name(&dir.path, true),
            Kind::Dir,
            shown.perm,
            (shown.uid, shown.gid),
            dir.stat.mtime,
        );
        entry.xattrs = self.xattrs(dir)?;
        self.append(&entry, None)?;
        if opaque && !dir.path.is_root() {
            let marker = Entry::new(
                member_in(&dir.path, OPAQUE_MARKER),
                Kind::File { size: 0 },
                0o644,
                (0, 0),
                dir.stat.mtime,
            );
            self.append(&marker, Some(&mut io::empty()))?;
        }
        Ok(())
    }

    /// Anything but a directory.
    fn non_dir(&mut self, state: &NodeState) -> Fallible<()> {
        let st = state.stat;
        let name = member_name(&state.path, false);
        let shown = self.shown(state);
        let xattrs = self.xattrs(state)?;
        let mut entry = Entry::new(
            name.clone(),
            Kind::Fifo, // set below
            shown.perm,
            (shown.uid, shown.gid),
            st.mtime,
        );
        entry.xattrs = xattrs;
        let key = (st.dev, st.ino);
        let linked = st.nlink > 1 && !self.faults.no_hardlinks;
        if linked {
            let target = match self.links.get(&key) {
                Some(first) => Some(first.clone()),
                None if state.top().layer != UPPER => self
                    .lower_name(key)?
                    .filter(|p| *p != state.path)
                    .map(|p| member_name(&p, false)),
                None => None,
            };
            if let Some(target) = target {
                // The same attributes as the name it links to (they are
                // one inode), for unpackers that apply them again.
                self.links.entry(key).or_insert_with(|| target.clone());
                entry.kind = Kind::HardLink { target };
                return self.append(&entry, None);
            }
        }
        let top = state.top();
        let layer = self.stack.get(top.layer);
        entry.kind = match shown.kind {
            FileType::RegularFile => Kind::File { size: st.size },
            FileType::Symlink if st.kind() == FileType::Symlink => Kind::Symlink {
                target: layer.readlink(&top.path).map_err(at(&top.path))?,
            },
            // A regular file standing in for a symlink holds its target.
            FileType::Symlink => Kind::Symlink {
                target: self.read_small(state, &top.path)?,
            },
            FileType::CharDevice => {
                let (major, minor) = dev_numbers(shown.rdev);
                Kind::CharDev { major, minor }
            }
            FileType::BlockDevice => {
                let (major, minor) = dev_numbers(shown.rdev);
                Kind::BlockDev { major, minor }
            }
            FileType::NamedPipe => Kind::Fifo,
            FileType::Socket => {
                eprintln!(
                    "strata diff: warning: {}: a socket, left out (tar cannot hold one)",
                    String::from_utf8_lossy(state.path.as_bytes())
                );
                return Ok(());
            }
            FileType::Directory => unreachable!("non_dir got a directory"),
        };
        if let Kind::File { .. } = entry.kind {
            let mut file = self.data_of(state)?;
            self.append(&entry, Some(&mut file))?;
        } else {
            self.append(&entry, None)?;
        }
        if linked {
            self.links.insert(key, name);
        }
        Ok(())
    }

    /// The file a regular file's bytes are read from: itself, or for a
    /// metadata-only one the file below that holds its data.
    fn data_of(&self, state: &NodeState) -> Fallible<File> {
        let data = if self.faults.no_metacopy {
            state.top()
        } else {
            state.data()
        };
        let fd = self
            .stack
            .get(data.layer)
            .open(&data.path, libc::O_RDONLY | libc::O_CLOEXEC)
            .map_err(at(&data.path))?;
        Ok(File::from(fd))
    }

    /// The content of a small regular file (a symlink's stand-in).
    fn read_small(&self, state: &NodeState, path: &RelPath) -> Fallible<Vec<u8>> {
        let file = self.data_of(state)?;
        let mut buf = vec![0u8; libc::PATH_MAX as usize];
        let n = sys::pread(file.as_fd(), &mut buf, 0).map_err(at(path))?;
        buf.truncate(n);
        Ok(buf)
    }

    /// A name that unpacking the lower layers already gives the lower
    /// object `key`, and the merged view still shows as it: found by one
    /// walk of the merged tree, the first time it is needed.
    fn lower_name(&mut self, key: (u64, u64)) -> Fallible<Option<RelPath>> {
        if self.lower_names.is_none() {
            self.lower_names = Some(self.scan_lower_links()?);
        }
        Ok(self.lower_names.as_ref().and_then(|m| m.get(&key)).cloned())
    }

    fn scan_lower_links(&self) -> Fallible<HashMap<(u64, u64), RelPath>> {
        let mut found: HashMap<(u64, u64), RelPath> = HashMap::new();
        let mut dirs = vec![self.stack.root_state().map_err(at(&RelPath::root()))?];
        while let Some(dir) = dirs.pop() {
            // Below a redirect the layers keep it under another path: an
            // unpacker has it nowhere near this name.
            if dir.origins.iter().any(|o| o.path != dir.path) {
                continue;
            }
            for e in merged_listing(self.stack, &self.inos, &dir).map_err(at(&dir.path))? {
                let path = dir.path.join(&e.name);
                let Some(state) = self.stack.lookup(&dir, &e.name).map_err(at(&path))? else {
                    continue;
                };
                if state.stat.is_dir() {
                    dirs.push(state);
                    continue;
                }
                let top = state.top();
                if top.layer == UPPER
                    || state.stat.nlink < 2
                    || state.origins.len() != 1
                    || top.path != state.path
                {
                    continue;
                }
                found
                    .entry((state.stat.dev, state.stat.ino))
                    .and_modify(|p| {
                        if state.path.as_bytes() < p.as_bytes() {
                            *p = state.path.clone();
                        }
                    })
                    .or_insert(state.path.clone());
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn command_lines() {
        let Parsed::Run(a) = parse_args(args(&[
            "--layers",
            "/a:/b\\:c",
            "--upper=/u",
            "-o",
            "-",
            "--uidmapping=0:1000:1",
            "--gidmapping",
            "0:2000:5:5:3000:1",
            "--xattr-permissions=2",
        ]))
        .unwrap() else {
            panic!("not a run")
        };
        assert_eq!(a.layers, [PathBuf::from("/a"), PathBuf::from("/b:c")]);
        assert_eq!(a.upper, PathBuf::from("/u"));
        assert_eq!(a.output, None);
        assert_eq!(a.uid_mappings.len(), 1);
        assert_eq!(a.gid_mappings.len(), 2);
        assert_eq!(a.xattr_permissions, Some(Format::Containers));
        let Parsed::Run(a) =
            parse_args(args(&["--layers=/l", "--upper", "/u", "-o/t.tar"])).unwrap()
        else {
            panic!("not a run")
        };
        assert_eq!(a.output, Some(PathBuf::from("/t.tar")));
        assert_eq!(parse_args(args(&["-h"])).unwrap(), Parsed::Help);
    }

    #[test]
    fn bad_command_lines_are_one_line_errors() {
        for bad in [
            &["--upper", "/u"][..],
            &["--layers", "/l"],
            &["--layers", "/l", "--upper"],
            &["--layers", "/l", "--upper", "/u", "--frobnicate"],
            &["--layers", "a::b", "--upper", "/u"],
            &["--layers", "/l", "--upper", "/u", "--uidmapping=0:1"],
            &["--layers", "/l", "--upper", "/u", "--xattr-permissions=3"],
            &["--layers", "/l", "--upper", "/u", "-o", ""],
        ] {
            let e = parse_args(args(bad)).unwrap_err();
            assert!(!e.contains('\n') && !e.is_empty(), "{bad:?}: {e}");
        }
    }

    #[test]
    fn member_names() {
        let root = RelPath::root();
        assert_eq!(member_name(&root, true), b"./");
        let a = root.join(OsStr::new("a"));
        assert_eq!(member_name(&a, true), b"a/");
        assert_eq!(member_name(&a.join(OsStr::new("b")), false), b"a/b");
        assert_eq!(member_in(&root, b".wh.x"), b".wh.x");
        assert_eq!(member_in(&a, b".wh.x"), b"a/.wh.x");
    }
}

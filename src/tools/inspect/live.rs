//! Entries of a live strata mount ([`Live::entry`]): the mount's own
//! answer, the virtual xattr, where the kernel lets it through; the layers
//! behind the mount where it does not (symlinks and special files) or
//! where the answer is about another name (hard links).

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::entry::{Entry, Shown, child_path};
use super::explain::{explain, resolve};
use super::json::from_json;
use super::{XATTR, merged_path, open_stack};
use crate::lookup::LayerStack;
use crate::sys;

/// What the live mode knows of the mounts it met: the layers of each
/// mount root, opened for the entries the kernel keeps the xattr from.
#[derive(Default)]
pub struct Live {
    stacks: HashMap<PathBuf, Arc<LayerStack>>,
    /// Directory entries read lately, by the path they were read at (a
    /// walk asks each directory once for all its names).
    dirs: HashMap<PathBuf, Arc<Entry>>,
}

impl Live {
    /// The entry at `path`, through the mount.
    pub fn entry(&mut self, path: &Path) -> Result<Entry, String> {
        let md = match fs::symlink_metadata(path) {
            Ok(md) => md,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return self.deleted(path),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        if md.is_dir() {
            let entry = read_xattr(path)?;
            self.remember(path, Arc::new(entry.clone()));
            return Ok(entry);
        }
        if md.is_file() {
            let entry = read_xattr(path)?;
            // One node serves every name of a hard-linked file: its value
            // describes the name the mount found first. Another name's
            // facts come from the layers.
            if md.nlink() > 1 && !self.is_named(path, &entry)? {
                return self.read_layers(path, &md, "a file with several names");
            }
            return Ok(entry);
        }
        let what = match md.file_type() {
            t if t.is_symlink() => "a symlink",
            t if t.is_fifo() => "a fifo",
            t if t.is_socket() => "a socket",
            _ => "a device",
        };
        let what = format!("{what}, whose xattrs the kernel does not ask strata for");
        self.read_layers(path, &md, &what)
    }

    /// Whether `entry` (read at `path`) is about `path`'s own name.
    fn is_named(&mut self, path: &Path, entry: &Entry) -> Result<bool, String> {
        let dir = self.dir(&parent_of(path))?;
        let name = path.file_name().map(OsStrExt::as_bytes).unwrap_or_default();
        Ok(entry.path == child_path(&dir.path, name))
    }

    fn remember(&mut self, path: &Path, entry: Arc<Entry>) {
        if self.dirs.len() >= 1024 {
            self.dirs.clear(); // a bound, not an eviction policy
        }
        self.dirs.insert(path.to_path_buf(), entry);
    }

    /// The entry of directory `path` (read once).
    fn dir(&mut self, path: &Path) -> Result<Arc<Entry>, String> {
        if let Some(e) = self.dirs.get(path) {
            return Ok(e.clone());
        }
        let entry = Arc::new(read_xattr(path)?);
        self.remember(path, entry.clone());
        Ok(entry)
    }

    /// A name not in the mount: its whiteout, if its directory knows one.
    fn deleted(&mut self, path: &Path) -> Result<Entry, String> {
        let missing = || format!("{}: no such file or directory", path.display());
        let name = path.file_name().ok_or_else(missing)?;
        let dir = self.dir(&parent_of(path)).map_err(|_| missing())?;
        dir.deleted
            .iter()
            .find(|d| d.name == name.as_bytes())
            .map(|d| dir.deleted_entry(d))
            .ok_or_else(missing)
    }

    /// The entry at `path` read from the layers of its mount (found from
    /// the xattrs of its directory and of the mount root), for `what`:
    /// the symlinks and special files the kernel answers `user.*` reads of
    /// itself (ENODATA), and the other names of a hard-linked file.
    /// Its attributes are the mount's (`md`).
    fn read_layers(&mut self, path: &Path, md: &fs::Metadata, what: &str) -> Result<Entry, String> {
        let fail = |why: String| format!("{}: {what}, and {why}", path.display());
        let name = path
            .file_name()
            .ok_or_else(|| fail("it has no name".into()))?;
        let parent = parent_of(path);
        let dir = self
            .dir(&parent)
            .map_err(|e| fail(format!("its directory: {e}")))?;
        let canonical = fs::canonicalize(&parent).map_err(|e| fail(format!("{e}")))?;
        let depth = dir
            .path
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty())
            .count();
        let root = canonical
            .ancestors()
            .nth(depth)
            .ok_or_else(|| fail("its mount root is not above it".into()))?
            .to_path_buf();
        let stack = match self.stacks.get(&root) {
            Some(s) => s.clone(),
            None => {
                let s = Arc::new(root_stack(&root).map_err(fail)?);
                self.stacks.insert(root.clone(), s.clone());
                s
            }
        };
        let merged = child_path(&dir.path, name.as_bytes());
        let rel = merged_path(OsStr::from_bytes(&merged)).map_err(fail)?;
        let resolved = resolve(&stack, &rel).map_err(|e| fail(e.message(&rel)))?;
        let Some(state) = resolved.state else {
            return Err(fail("its layers no longer hold it".into()));
        };
        let shown = Shown::of_metadata(md);
        explain(&stack, &rel, resolved.parent.as_ref(), &state, Some(shown))
            .map_err(|e| fail(e.to_string()))
    }
}

/// Reads the virtual xattr of `path` (never following a symlink).
fn read_xattr(path: &Path) -> Result<Entry, String> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let name = CString::new(XATTR).expect("no NUL");
    let value = match sys::fgetxattr(file.as_fd(), &name) {
        Ok(v) => v,
        Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {
            return Err(format!(
                "{}: not in a strata mount (it has no {XATTR}; give --layers to read layer directories)",
                path.display()
            ));
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => {
            return Err(format!(
                "{}: its filesystem has no xattrs (not strata, or a strata mount with noxattrs=1); give --layers to read layer directories",
                path.display()
            ));
        }
        Err(e) => return Err(format!("{}: reading {XATTR}: {e}", path.display())),
    };
    from_json(&value).map_err(|e| format!("{}: malformed {XATTR}: {e}", path.display()))
}

/// The directory `path` is in, as a path that can be opened.
fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The layers of the strata mount at `root`, from its root's xattr (its
/// `merged` list is every layer), opened read-only.
fn root_stack(root: &Path) -> Result<LayerStack, String> {
    let entry = read_xattr(root)?;
    if entry.path != b"/" {
        return Err(format!("{} is not a mount root", root.display()));
    }
    let mut upper = None;
    let mut lowers = Vec::new();
    for p in &entry.merged {
        let dir = PathBuf::from(OsStr::from_bytes(&p.dir));
        if !dir.is_absolute() {
            return Err(format!(
                "the mount's layer '{}' is not an absolute path",
                dir.display()
            ));
        }
        match p.layer.as_str() {
            "upper" => upper = Some(dir),
            _ => lowers.push(dir),
        }
    }
    open_stack(&lowers, upper.as_deref())
}

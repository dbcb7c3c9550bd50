//! Merged directory listings.
//!
//! A listing is computed at a handle's first read, and again at a rewind,
//! from every layer merged into the directory (one `getdents` pass per
//! layer, no per-entry `open`), and kept in the directory handle. Offsets are
//! indices into that snapshot, so a reader paging through a large directory
//! never sees an entry vanish or repeat.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io;
use std::sync::Arc;

use fuser::FileType;

use crate::file::OpenDir;
use crate::fs::Strata;
use crate::inode::{InoMap, NodeState};
use crate::layer::is_absent;
use crate::lookup::LayerStack;

/// One entry of a merged listing.
#[derive(Debug, Clone)]
pub struct MergedEntry {
    pub name: OsString,
    /// The inode number `stat` shows for this entry.
    pub ino: u64,
    pub kind: FileType,
    /// Which of the directory's origins it comes from.
    pub origin: usize,
}

/// Union of the directory's layers, upper entries winning, whiteouts and
/// opaque layers honoured. `.` and `..` are not included.
pub fn merged_listing(
    stack: &LayerStack,
    inos: &InoMap,
    dir: &NodeState,
) -> io::Result<Vec<MergedEntry>> {
    let mut taken: HashSet<OsString> = HashSet::new();
    let mut out = Vec::new();
    for (index, origin) in dir.origins.iter().enumerate() {
        let layer = stack.get(origin.layer);
        let listing = match layer.list(&origin.path) {
            Ok(listing) => listing,
            // Not (yet) in this layer: the upper copy of a lower directory.
            Err(e) if is_absent(&e) => continue,
            Err(e) => return Err(e),
        };
        let dev = layer.root_dev();
        for entry in listing.entries {
            if taken.contains(&entry.name) {
                continue;
            }
            taken.insert(entry.name.clone());
            if !stack.follow_redirects
                && entry.kind == FileType::Directory
                && layer
                    .dir_marks(&origin.path.join(&entry.name))?
                    .redirect
                    .is_some()
            {
                continue; // its lookup is refused (redirect_dir=nofollow)
            }
            out.push(MergedEntry {
                ino: inos.ino(dev, entry.ino),
                name: entry.name,
                kind: entry.kind,
                origin: index,
            });
        }
        // A layer's whiteouts hide the layers below it, not its own entries.
        taken.extend(listing.whiteouts);
    }
    Ok(out)
}

impl Strata {
    /// The entries of open directory `dir` for a read from `offset`:
    /// listed at the first read and at a rewind (offset 0), so that, as in
    /// kernel overlayfs, a reader that starts over sees the directory as
    /// it is now, and one that goes on never sees an entry twice.
    pub(crate) fn dir_entries(&self, dir: &OpenDir, offset: u64) -> io::Result<Arc<[MergedEntry]>> {
        let mut listed = dir.entries.lock();
        if let Some(entries) = listed.as_ref().filter(|_| offset != 0) {
            return Ok(entries.clone());
        }
        if dir.node.is_gone() {
            return Err(io::Error::from_raw_os_error(libc::ENOENT)); // as getdents says
        }
        let state = self.dir_state(&dir.node);
        let mut entries = merged_listing(&self.stack, &self.inos, &state)?;
        self.show_stand_ins(&state, &mut entries);
        let entries: Arc<[MergedEntry]> = entries.into();
        *listed = Some(entries.clone());
        Ok(entries)
    }
}

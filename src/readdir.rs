//! Merged directory listings.
//!
//! A listing is computed once per `opendir` from every layer merged into the
//! directory (one `getdents` pass per layer, no per-entry `open`), and kept in
//! the directory handle. Offsets are indices into that snapshot, so a reader
//! paging through a large directory never sees an entry vanish or repeat.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io;

use fuser::FileType;

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

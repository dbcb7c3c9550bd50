//! The facts of one merged path, from the layer stack: [`resolve`] finds
//! it as a mount's lookup does, [`explain`] and [`explain_missing`] say
//! where it comes from, and [`Strata::layer_xattr`] answers the virtual
//! xattr with them on a live mount.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use fuser::FileType;

use super::entry::{Deleted, Entry, Kind, Place, Shown, rooted};
use super::json::to_json;
use super::text::printable;
use crate::fs::Strata;
use crate::inode::{LayerId, Node, NodeState, Origin};
use crate::layer::{Probe, RelPath, is_absent, is_whiteout_name};
use crate::lookup::LayerStack;

/// Where the daemon stops adding `deleted` names to a directory's value:
/// the kernel refuses xattr values over 64 KiB.
pub const XATTR_LIMIT: usize = 60 * 1024;

impl Strata {
    /// The value of the virtual xattr [`super::XATTR`] of `node`: its
    /// entry's JSON object, computed from the node's state (a directory's
    /// origins read afresh from the layers), what the mount shows of it,
    /// and the layers' marks.
    pub(crate) fn layer_xattr(&self, node: &Node) -> io::Result<Vec<u8>> {
        let own = node.state().clone();
        let fresh = resolve(&self.stack, &own.path).ok();
        let parent = fresh.as_ref().and_then(|r| r.parent.clone());
        let state = match fresh.and_then(|r| r.state) {
            // A directory node may predate the upper copy of its path.
            Some(s) if node.kind == FileType::Directory && s.stat.is_dir() => s,
            _ => own,
        };
        let shown = Shown::of_attr(&self.attr(node), &state.stat);
        let entry = explain(
            &self.stack,
            &state.path,
            parent.as_ref(),
            &state,
            Some(shown),
        )?;
        Ok(to_json(&entry, Some(XATTR_LIMIT)).into_bytes())
    }
}

/// A merged path resolved from the root, as a mount resolves it.
pub struct Resolved {
    /// The directory it is in (None for the root).
    pub parent: Option<NodeState>,
    /// None: the last component is not in the merged view.
    pub state: Option<NodeState>,
}

/// Why a path could not be resolved up to its last component.
pub enum Unresolved {
    Io(RelPath, io::Error),
    /// A directory on the way is not in the merged view (with its whiteout
    /// if one deletes it).
    Missing(RelPath, Option<Box<Entry>>),
    NotDir(RelPath),
}

impl Unresolved {
    /// The one-line error for resolving `path`.
    pub fn message(&self, path: &RelPath) -> String {
        let shown = |p: &RelPath| printable(&rooted(p));
        let full = shown(path);
        match self {
            Unresolved::Io(at, e) if at == path => format!("{full}: {e}"),
            Unresolved::Io(at, e) => format!("{full}: {}: {e}", shown(at)),
            Unresolved::NotDir(at) => format!("{full}: {} is not a directory", shown(at)),
            Unresolved::Missing(at, whiteout) => {
                let mut s = format!("{full}: no such file or directory in the merged tree");
                if let Some(w) = whiteout {
                    s += &format!(
                        " ({} is deleted by a whiteout in layer {} {})",
                        shown(at),
                        w.layer.layer,
                        printable(&w.layer.dir)
                    );
                }
                s
            }
        }
    }
}

/// Resolves merged `path` from the root, component by component, with the
/// lookup a mount uses (`.wh.*` names are never found).
pub fn resolve(stack: &LayerStack, path: &RelPath) -> Result<Resolved, Unresolved> {
    let mut state = stack
        .root_state()
        .map_err(|e| Unresolved::Io(RelPath::root(), e))?;
    if path.is_root() {
        return Ok(Resolved {
            parent: None,
            state: Some(state),
        });
    }
    let components: Vec<&[u8]> = path.as_bytes().split(|&b| b == b'/').collect();
    let mut at = RelPath::root();
    for (i, component) in components.iter().enumerate() {
        let name = OsStr::from_bytes(component);
        let here = at.join(name);
        let found = match is_whiteout_name(component) {
            true => None,
            false => stack
                .lookup(&state, name)
                .map_err(|e| Unresolved::Io(here.clone(), e))?,
        };
        if i + 1 == components.len() {
            return Ok(Resolved {
                parent: Some(state),
                state: found,
            });
        }
        match found {
            Some(next) if next.stat.is_dir() => state = next,
            Some(_) => return Err(Unresolved::NotDir(here)),
            None => {
                let whiteout = explain_missing(stack, &here, Some(&state))
                    .ok()
                    .flatten()
                    .map(Box::new);
                return Err(Unresolved::Missing(here, whiteout));
            }
        }
        at = here;
    }
    unreachable!("a non-root path has a last component")
}

/// The entry for merged `path`, which resolved to nothing in directory
/// `parent`: its whiteout, or None (it exists nowhere).
pub fn explain_missing(
    stack: &LayerStack,
    path: &RelPath,
    parent: Option<&NodeState>,
) -> io::Result<Option<Entry>> {
    Ok(whiteout_of(stack, path, &probes_of(stack, path, parent)?))
}

/// The entry for merged `path`, which resolved to `state` in directory
/// `parent` (None for the root). `shown`: the attributes to show, else the
/// ones a mount shows for `state`.
pub fn explain(
    stack: &LayerStack,
    path: &RelPath,
    parent: Option<&NodeState>,
    state: &NodeState,
    shown: Option<Shown>,
) -> io::Result<Entry> {
    let probes = probes_of(stack, path, parent)?;
    let top = state.top();
    let is_dir = state.stat.is_dir();
    let below = probes
        .iter()
        .position(|(o, _)| o == top)
        .map_or(0, |i| i + 1);
    let mut shadows = Vec::new();
    for (o, p) in &probes[below..] {
        match p {
            Probe::Absent => {}
            Probe::Whiteout => break,
            Probe::Found { stat, .. } => {
                // A hard link of the object itself (the index's) is no shadow.
                let itself = (stat.dev, stat.ino) == (state.stat.dev, state.stat.ino);
                if !itself && !state.origins.contains(o) {
                    shadows.push(place(stack, o));
                }
            }
        }
    }
    let opaque = is_dir && !path.is_root() && is_opaque(stack, state, &probes)?;
    let mut redirect = None;
    if is_dir && !path.is_root() && stack.follow_redirects {
        // As the lookup does: the first origin that is not opaque and has
        // layers below is where a redirect is read.
        for o in &state.origins {
            if o.layer + 1 >= stack.len() {
                break;
            }
            let marks = stack.get(o.layer).dir_marks(&o.path)?;
            if marks.opaque {
                break;
            }
            if let Some(from) = marks.redirect {
                redirect = Some((place(stack, o), from));
                break;
            }
        }
    }
    let metacopy = state.is_metacopy().then(|| place(stack, state.data()));
    if metacopy.is_some()
        && top.layer < stack.len()
        && let Some(from) = stack.get(top.layer).file_marks(&top.path)?.redirect
    {
        redirect = Some((place(stack, top), from));
    }
    let copied_up = stack.has_upper()
        && top.layer == 0
        && !path.is_root()
        && !opaque
        && (state.origins.iter().any(|o| o.layer != 0) || !shadows.is_empty());
    let target = match state.stat.kind() {
        FileType::Symlink => stack.get(top.layer).readlink(&top.path).ok(),
        _ => None,
    };
    let deleted = match is_dir {
        true => deleted_in(stack, state)?,
        false => Vec::new(),
    };
    Ok(Entry {
        path: rooted(path),
        kind: Kind::of(state.stat.kind()),
        stat: Some(shown.unwrap_or_else(|| Shown::of_state(state))),
        target,
        layer: place(stack, top),
        merged: match is_dir {
            true => state.origins.iter().map(|o| place(stack, o)).collect(),
            false => Vec::new(),
        },
        shadows,
        opaque,
        copied_up,
        redirect,
        metacopy,
        deleted,
        deleted_truncated: false,
    })
}

/// The label of layer `id` of `stack` (see the module docs).
fn label(stack: &LayerStack, id: LayerId) -> String {
    if id >= stack.len() {
        "index".into()
    } else if stack.has_upper() {
        match id {
            0 => "upper".into(),
            _ => id.to_string(),
        }
    } else {
        (id + 1).to_string()
    }
}

fn place(stack: &LayerStack, o: &Origin) -> Place {
    Place {
        layer: label(stack, o.layer),
        dir: stack.get(o.layer).source().as_os_str().as_bytes().to_vec(),
        path: rooted(&o.path),
    }
}

/// What each layer of directory `parent` holds under `name`, top first.
fn probe_all(
    stack: &LayerStack,
    parent: &NodeState,
    name: &OsStr,
) -> io::Result<Vec<(Origin, Probe)>> {
    parent
        .origins
        .iter()
        .map(|o| {
            let probe = stack.get(o.layer).probe(&o.path, name)?;
            let here = Origin {
                layer: o.layer,
                path: o.path.join(name),
            };
            Ok((here, probe))
        })
        .collect()
}

/// [`probe_all`] for merged `path` in `parent`; nothing for the root and
/// for whiteout names (never in the merged view).
fn probes_of(
    stack: &LayerStack,
    path: &RelPath,
    parent: Option<&NodeState>,
) -> io::Result<Vec<(Origin, Probe)>> {
    match (parent, path.split_last()) {
        (Some(p), Some((_, name))) if !is_whiteout_name(name.as_bytes()) => {
            probe_all(stack, p, name)
        }
        _ => Ok(Vec::new()),
    }
}

/// The whiteout entry of a name that is not in the merged view, from its
/// probes; None where no whiteout deletes it (it exists nowhere).
fn whiteout_of(stack: &LayerStack, path: &RelPath, probes: &[(Origin, Probe)]) -> Option<Entry> {
    let k = probes
        .iter()
        .position(|(_, p)| !matches!(p, Probe::Absent))?;
    if !matches!(probes[k].1, Probe::Whiteout) {
        return None;
    }
    let shadows = probes[k + 1..]
        .iter()
        .take_while(|(_, p)| !matches!(p, Probe::Whiteout))
        .filter(|(_, p)| matches!(p, Probe::Found { .. }))
        .map(|(o, _)| place(stack, o))
        .collect();
    Some(Entry::whiteout(
        rooted(path),
        place(stack, &probes[k].0),
        shadows,
    ))
}

/// Whether the lowest layer merged into directory `state` hides the ones
/// below it (the lookup stopped there for that reason).
fn is_opaque(
    stack: &LayerStack,
    state: &NodeState,
    probes: &[(Origin, Probe)],
) -> io::Result<bool> {
    let last = state.origins.last().expect("a node has an origin");
    let hides_lower = match probes.iter().find(|(o, _)| o == last) {
        Some((_, probe)) => matches!(
            probe,
            Probe::Found {
                hides_lower: true,
                ..
            }
        ),
        // Reached through a redirect: ask its own layer.
        None => match last.path.split_last() {
            Some((dir, name)) => matches!(
                stack.get(last.layer).probe(&dir, name)?,
                Probe::Found {
                    hides_lower: true,
                    ..
                }
            ),
            None => false,
        },
    };
    Ok(hides_lower || stack.get(last.layer).dir_marks(&last.path)?.opaque)
}

/// The names whiteouts delete in directory `dir`, sorted by bytes.
fn deleted_in(stack: &LayerStack, dir: &NodeState) -> io::Result<Vec<Deleted>> {
    let mut taken: HashSet<OsString> = HashSet::new();
    let mut names: Vec<OsString> = Vec::new();
    for o in &dir.origins {
        let listing = match stack.get(o.layer).list(&o.path) {
            Ok(listing) => listing,
            Err(e) if is_absent(&e) => continue,
            Err(e) => return Err(e),
        };
        for entry in listing.entries {
            taken.insert(entry.name);
        }
        // As in a merged listing: a layer's whiteouts hide the layers below.
        for name in listing.whiteouts {
            if taken.insert(name.clone()) {
                names.push(name);
            }
        }
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let mut out = Vec::new();
    for name in names {
        let path = dir.path.join(&name);
        if let Some(w) = whiteout_of(stack, &path, &probe_all(stack, dir, &name)?) {
            out.push(Deleted {
                name: name.into_vec(),
                layer: w.layer.layer,
                shadows: w.shadows.into_iter().map(|p| p.layer).collect(),
            });
        }
    }
    Ok(out)
}

//! Top-down resolution of a name across the layer stack (the kernel's
//! `ovl_lookup`).
//!
//! Rules, matching kernel overlayfs:
//! - the first layer that holds the name decides its type;
//! - a whiteout ends the search: the name does not exist;
//! - a non-directory ends the search, and so does a non-directory found
//!   *below* a directory (it is ignored);
//! - directories found further down are merged into the one above, until an
//!   opaque directory (or an OCI "whiteout + recreate" in one layer).

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use fuser::{Errno, FileType, INodeNo};

use crate::copy_up::UPPER;
use crate::dcache::Dentry;
use crate::fs::{Strata, errno};
use crate::inode::{LayerId, Node, NodeState, Origin};
use crate::layer::{Layer, NAME_MAX, Probe, RelPath, Stat, is_whiteout_name};

/// The layers of one mount: the upper first (if any), then the lowers top to
/// bottom. Indices into it are [`LayerId`]s.
#[derive(Debug)]
pub struct LayerStack {
    layers: Vec<Arc<dyn Layer>>,
    /// Layers `0..merged` form the tree; any after them (the hard-link
    /// index) are reached only through a node's origin.
    merged: usize,
    has_upper: bool,
    /// Follow the layers' redirects (not with `redirect_dir=nofollow`).
    pub follow_redirects: bool,
}

impl LayerStack {
    pub fn new(upper: Option<Arc<dyn Layer>>, lowers: Vec<Arc<dyn Layer>>) -> LayerStack {
        let has_upper = upper.is_some();
        let layers: Vec<_> = upper.into_iter().chain(lowers).collect();
        LayerStack {
            merged: layers.len(),
            layers,
            has_upper,
            follow_redirects: true,
        }
    }

    /// Adds a layer outside the merged tree; returns its id.
    pub fn add_hidden(&mut self, layer: Arc<dyn Layer>) -> LayerId {
        self.layers.push(layer);
        self.layers.len() - 1
    }

    pub fn get(&self, id: LayerId) -> &dyn Layer {
        self.layers[id].as_ref()
    }

    /// The number of layers merged into the tree.
    pub fn len(&self) -> usize {
        self.merged
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    pub fn has_upper(&self) -> bool {
        self.has_upper
    }

    /// Every layer, hidden ones (the index) included.
    pub fn all(&self) -> impl Iterator<Item = &dyn Layer> {
        self.layers.iter().map(|l| l.as_ref())
    }

    /// The merged layers, top first.
    pub fn iter(&self) -> impl Iterator<Item = &dyn Layer> {
        self.layers[..self.merged].iter().map(|l| l.as_ref())
    }

    /// The root directory: every layer's root is merged into it. Like the
    /// kernel, opaque markers on layer roots are not honoured.
    pub fn root_state(&self) -> io::Result<NodeState> {
        let root = RelPath::root();
        let stat = self.layers[0].stat(&root)?;
        Ok(NodeState {
            path: root.clone(),
            origins: (0..self.merged)
                .map(|layer| Origin {
                    layer,
                    path: root.clone(),
                })
                .collect(),
            stat,
            nlink_bias: 0,
            detached: false,
        })
    }

    /// Resolves `name` inside the directory described by `parent`. `Ok(None)`
    /// means the name does not exist in the merged view.
    pub fn lookup(&self, parent: &NodeState, name: &OsStr) -> io::Result<Option<NodeState>> {
        // One allocation of the path, shared by the node and every origin
        // that has it (all of them, unless a redirect moved one).
        let path = parent.path.join(name);
        // Where to look, layer by layer: `name` in each of the parent's
        // origins, until a redirect says where the layers below keep it.
        let mut candidates: Vec<Origin> = parent
            .origins
            .iter()
            .map(|o| Origin {
                layer: o.layer,
                path: match o.path == parent.path {
                    true => path.clone(),
                    false => o.path.join(name),
                },
            })
            .collect();
        let mut found: Option<NodeState> = None;
        let mut next = 0;
        while let Some(here) = candidates.get(next).cloned() {
            next += 1;
            let layer = self.get(here.layer);
            let Some((dir, leaf)) = here.path.split_last() else {
                continue;
            };
            let (stat, hides_lower) = match layer.probe(&dir, leaf)? {
                Probe::Absent => continue,
                Probe::Whiteout => break,
                Probe::Found { stat, hides_lower } => (stat, hides_lower),
            };
            if !stat.is_dir() {
                // A non-directory ends the search; below a directory it is ignored.
                if found.is_none() {
                    let mut state = NodeState {
                        path: path.clone(),
                        origins: vec![here.clone()],
                        stat,
                        nlink_bias: 0,
                        detached: false,
                    };
                    if let Some(data) =
                        self.metacopy_data(parent, &here, &stat, &candidates[next..])?
                    {
                        state.stat.blocks = data.1.blocks;
                        state.origins.push(data.0);
                    }
                    found = Some(state);
                }
                break;
            }
            let marks = layer.dir_marks(&here.path)?;
            let dir_state = found.get_or_insert_with(|| NodeState {
                path: path.clone(),
                origins: Vec::new(),
                stat,
                nlink_bias: 0,
                detached: false,
            });
            dir_state.origins.push(here.clone());
            if hides_lower || marks.opaque {
                break;
            }
            if let Some(redirect) = marks.redirect {
                if !self.follow_redirects {
                    // redirect_dir=nofollow: like the kernel, refuse the name.
                    return Err(io::Error::from_raw_os_error(libc::EPERM));
                }
                candidates.truncate(next);
                candidates.extend(self.redirected(parent, here.layer, &redirect)?);
            }
        }
        Ok(found)
    }

    /// For a metadata-only regular file (kernel `metacopy`) found at
    /// `here`: the file below holding its data, at the same path (one of
    /// `below`) or where its redirect says. Only a file with bytes and a
    /// layer below it can be one; its xattrs say (the kernel reads them for
    /// every file too). A metacopy file with no data below is EIO, as in
    /// the kernel.
    fn metacopy_data(
        &self,
        parent: &NodeState,
        here: &Origin,
        stat: &Stat,
        below: &[Origin],
    ) -> io::Result<Option<(Origin, Stat)>> {
        if stat.kind() != FileType::RegularFile || stat.size == 0 || here.layer + 1 >= self.merged {
            return Ok(None);
        }
        let marks = self.get(here.layer).file_marks(&here.path)?;
        if !marks.metacopy {
            return Ok(None);
        }
        let candidates = match &marks.redirect {
            Some(_) if !self.follow_redirects => {
                return Err(io::Error::from_raw_os_error(libc::EPERM)); // as for directories
            }
            Some(redirect) => self.redirected(parent, here.layer, redirect)?,
            None => below.to_vec(),
        };
        for there in candidates {
            let Some((dir, leaf)) = there.path.split_last() else {
                continue;
            };
            match self.get(there.layer).probe(&dir, leaf)? {
                Probe::Absent => continue,
                Probe::Found { stat, .. } if stat.kind() == FileType::RegularFile => {
                    return Ok(Some((there, stat)));
                }
                _ => break,
            }
        }
        Err(io::Error::from_raw_os_error(libc::EIO))
    }

    /// The places below `layer` that a redirect points to: an absolute path
    /// in every lower layer, or a sibling name in the parent's lower origins.
    /// A malformed redirect fails the lookup with the kernel's errno: EINVAL
    /// for an empty component (or a `/` in a relative one), EACCES for `.`
    /// or `..` (its `lookup_one_len` refuses them), ENAMETOOLONG for a long
    /// name; in the lowest layer it is never read, as in the kernel.
    fn redirected(
        &self,
        parent: &NodeState,
        layer: LayerId,
        redirect: &[u8],
    ) -> io::Result<Vec<Origin>> {
        if layer + 1 >= self.merged {
            return Ok(Vec::new());
        }
        let (absolute, rest) = match redirect.strip_prefix(b"/") {
            Some(rest) => (true, rest),
            None => (false, redirect),
        };
        for part in rest.split(|&b| b == b'/') {
            let errno = match part {
                _ if !absolute && part.len() != rest.len() => libc::EINVAL,
                b"" => libc::EINVAL,
                b"." | b".." => libc::EACCES,
                _ if part.len() > NAME_MAX => libc::ENAMETOOLONG,
                _ => continue,
            };
            return Err(io::Error::from_raw_os_error(errno));
        }
        Ok(self.redirected_valid(parent, layer, redirect))
    }

    fn redirected_valid(&self, parent: &NodeState, layer: LayerId, redirect: &[u8]) -> Vec<Origin> {
        if let Some(absolute) = redirect.strip_prefix(b"/") {
            let Some(path) = RelPath::from_components(absolute) else {
                return Vec::new();
            };
            (layer + 1..self.merged)
                .map(|l| Origin {
                    layer: l,
                    path: path.clone(),
                })
                .collect()
        } else {
            if redirect.contains(&b'/') || RelPath::from_components(redirect).is_none() {
                return Vec::new();
            }
            parent
                .origins
                .iter()
                .filter(|o| o.layer > layer)
                .map(|o| Origin {
                    layer: o.layer,
                    path: o.path.join(OsStr::from_bytes(redirect)),
                })
                .collect()
        }
    }
}

impl Strata {
    /// A directory's state with the upper directory at its path as the top
    /// origin. A directory node made before an ancestor was copied up does
    /// not list the upper yet; the upper copy of a directory is never opaque
    /// unless strata made it so, and then it made a fresh node.
    pub(crate) fn dir_state(&self, dir: &Node) -> NodeState {
        let mut state = dir.state().clone();
        if self.upper.is_some() && state.top().layer != UPPER {
            state.origins.insert(
                0,
                Origin {
                    layer: UPPER,
                    path: state.path.clone(),
                },
            );
        }
        state
    }

    /// Resolves `name` in `parent`: from the dentry cache when possible, else
    /// top-down through the layers (and then cached, hit or miss).
    pub(crate) fn lookup_node(
        &self,
        parent: INodeNo,
        name: &OsStr,
    ) -> Result<Option<Arc<Node>>, Errno> {
        if name.len() > NAME_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        if is_whiteout_name(name.as_bytes()) {
            return Ok(None);
        }
        // Debug builds only: a bug on demand, for the test that a panic
        // fails one request and nothing more.
        #[cfg(debug_assertions)]
        if name == "strata-test-panic" && std::env::var_os("STRATA_FAULTS").is_some() {
            panic!("fault injected by STRATA_FAULTS");
        }
        match self.dcache.get(parent.0, name) {
            // The table's node is the live one for its inode; the cache may
            // hold an older object for it, left from before a forget.
            Some(Dentry::Positive(node)) => {
                return Ok(Some(self.nodes.get(node.ino).unwrap_or(node)));
            }
            Some(Dentry::Negative) => return Ok(None),
            None => {}
        }
        let dir = self.node(parent)?;
        if dir.kind != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        let dir_state = self.dir_state(&dir);
        let found = self.stack.lookup(&dir_state, name).map_err(errno)?;
        let node = found.map(|mut state| {
            let (dev, real) = (state.stat.dev, state.stat.ino);
            let ino = self.inos.ino(dev, real);
            self.apply_index(ino, &mut state);
            // A hard link reached by another name: share the known node.
            self.nodes
                .live_or_new(ino, parent.0, &state, || self.inos.renumber(dev, real))
        });
        let dentry = match &node {
            Some(n) => Dentry::Positive(n.clone()),
            None => Dentry::Negative,
        };
        self.dcache.insert(parent.0, name, dentry);
        if let Some(n) = &node {
            n.add_name(parent.0, name);
        }
        Ok(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inode::InoMap;
    use crate::layer::DirLayer;
    use crate::readdir::merged_listing;
    use std::fs;
    use std::path::{Path, PathBuf};

    /// Layers `top`, `mid`, `bottom` under a fresh scratch directory.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let d = std::env::temp_dir()
                .join(format!("strata-lookup-test-{}-{tag}", std::process::id()));
            let _ = fs::remove_dir_all(&d);
            for l in ["top", "mid", "bottom"] {
                fs::create_dir_all(d.join(l)).unwrap();
            }
            Scratch(d)
        }
        fn file(&self, layer: &str, path: &str) {
            let p = self.0.join(layer).join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, layer).unwrap();
        }
        fn dir(&self, layer: &str, path: &str) {
            fs::create_dir_all(self.0.join(layer).join(path)).unwrap();
        }
        fn stack(&self) -> LayerStack {
            let open =
                |l: &str| -> Arc<dyn Layer> { Arc::new(DirLayer::open(&self.0.join(l)).unwrap()) };
            LayerStack::new(None, vec![open("top"), open("mid"), open("bottom")])
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn resolve(stack: &LayerStack, path: &str) -> Option<NodeState> {
        let mut state = stack.root_state().unwrap();
        for part in Path::new(path).iter() {
            state = stack.lookup(&state, part).unwrap()?;
        }
        Some(state)
    }

    fn layers_of(state: &NodeState) -> Vec<LayerId> {
        state.origins.iter().map(|o| o.layer).collect()
    }

    fn names(stack: &LayerStack, path: &str) -> Vec<String> {
        let state = resolve(stack, path).unwrap();
        let inos = InoMap::new(stack.iter().map(|l| l.root_dev()));
        let mut v: Vec<String> = merged_listing(stack, &inos, &state)
            .unwrap()
            .into_iter()
            .map(|e| e.name.into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn first_layer_decides_the_type() {
        let s = Scratch::new("types");
        s.file("top", "x"); // file over a directory
        s.file("bottom", "x/inner");
        s.dir("top", "y"); // directory over a file
        s.file("bottom", "y");
        let stack = s.stack();
        let x = resolve(&stack, "x").unwrap();
        assert!(!x.stat.is_dir());
        assert!(resolve(&stack, "x/inner").is_none());
        let y = resolve(&stack, "y").unwrap();
        assert!(y.stat.is_dir());
        assert_eq!(layers_of(&y), vec![0], "the lower file is ignored");
    }

    #[test]
    fn directories_merge_until_an_opaque_one() {
        let s = Scratch::new("merge");
        s.file("top", "d/a");
        s.file("mid", "d/b");
        s.file("bottom", "d/c");
        s.file("top", "o/a");
        s.file("mid", "o/.wh..wh..opq");
        s.file("mid", "o/b");
        s.file("bottom", "o/c");
        let stack = s.stack();
        assert_eq!(layers_of(&resolve(&stack, "d").unwrap()), vec![0, 1, 2]);
        assert_eq!(names(&stack, "d"), ["a", "b", "c"]);
        assert_eq!(layers_of(&resolve(&stack, "o").unwrap()), vec![0, 1]);
        assert_eq!(names(&stack, "o"), ["a", "b"]);
        assert!(resolve(&stack, "o/c").is_none());
    }

    #[test]
    fn oci_whiteouts_hide_lower_layers_only() {
        let s = Scratch::new("whiteouts");
        s.file("bottom", "d/gone");
        s.file("bottom", "d/kept");
        s.file("mid", "d/.wh.gone");
        s.file("bottom", "again/old");
        s.file("mid", ".wh.again");
        s.file("mid", "again/new");
        let stack = s.stack();
        assert!(resolve(&stack, "d/gone").is_none());
        assert_eq!(names(&stack, "d"), ["kept"]);
        // Deleted below and recreated in the same layer: only the new content.
        assert_eq!(layers_of(&resolve(&stack, "again").unwrap()), vec![1]);
        assert_eq!(names(&stack, "again"), ["new"]);
        assert!(resolve(&stack, "again/old").is_none());
        assert_eq!(names(&stack, ""), ["again", "d"]);
    }
}

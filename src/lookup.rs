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
use std::sync::Arc;

use crate::inode::{LayerId, NodeState, Origin};
use crate::layer::{Layer, Probe, RelPath};

/// The layers of one mount: the upper first (if any), then the lowers top to
/// bottom. Indices into it are [`LayerId`]s.
#[derive(Debug)]
pub struct LayerStack {
    layers: Vec<Arc<dyn Layer>>,
    has_upper: bool,
}

impl LayerStack {
    pub fn new(upper: Option<Arc<dyn Layer>>, lowers: Vec<Arc<dyn Layer>>) -> LayerStack {
        let has_upper = upper.is_some();
        let layers = upper.into_iter().chain(lowers).collect();
        LayerStack { layers, has_upper }
    }

    pub fn get(&self, id: LayerId) -> &dyn Layer {
        self.layers[id].as_ref()
    }

    pub fn len(&self) -> usize {
        self.layers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    pub fn has_upper(&self) -> bool {
        self.has_upper
    }

    pub fn iter(&self) -> impl Iterator<Item = &dyn Layer> {
        self.layers.iter().map(|l| l.as_ref())
    }

    /// The root directory: every layer's root is merged into it. Like the
    /// kernel, opaque markers on layer roots are not honoured.
    pub fn root_state(&self) -> io::Result<NodeState> {
        let root = RelPath::root();
        let stat = self.layers[0].stat(&root)?;
        Ok(NodeState {
            path: root.clone(),
            origins: (0..self.layers.len())
                .map(|layer| Origin {
                    layer,
                    path: root.clone(),
                })
                .collect(),
            stat,
        })
    }

    /// Resolves `name` inside the directory described by `parent`. `Ok(None)`
    /// means the name does not exist in the merged view.
    pub fn lookup(&self, parent: &NodeState, name: &OsStr) -> io::Result<Option<NodeState>> {
        let path = parent.path.join(name);
        let mut found: Option<NodeState> = None;
        for origin in &parent.origins {
            let layer = self.get(origin.layer);
            let (stat, hides_lower) = match layer.probe(&origin.path, name)? {
                Probe::Absent => continue,
                Probe::Whiteout => break,
                Probe::Found { stat, hides_lower } => (stat, hides_lower),
            };
            let here = Origin {
                layer: origin.layer,
                path: origin.path.join(name),
            };
            match &mut found {
                None => {
                    let is_dir = stat.is_dir();
                    let stop = !is_dir || hides_lower || layer.is_opaque_dir(&here.path)?;
                    found = Some(NodeState {
                        path: path.clone(),
                        origins: vec![here],
                        stat,
                    });
                    if stop {
                        break;
                    }
                }
                Some(dir) => {
                    if !stat.is_dir() {
                        break;
                    }
                    let stop = hides_lower || layer.is_opaque_dir(&here.path)?;
                    dir.origins.push(here);
                    if stop {
                        break;
                    }
                }
            }
        }
        Ok(found)
    }
}

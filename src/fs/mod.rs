//! The filesystem's state ([`Strata`]: the layer stack, the node and handle
//! tables, the caches) and its construction; `dispatch.rs` implements
//! `fuser::Filesystem` on it.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use fuser::{Errno, FileAttr, FileType, INodeNo, Notifier};

use crate::copy_up::Upper;
use crate::dcache::DentryCache;
use crate::file::{HandleTable, OpenDir, OpenFile};
use crate::idmap::IdMap;
use crate::index::Index;
use crate::inode::{InoMap, InodeTable, Node, ROOT_INO};
use crate::layer::{DirLayer, Layer};
use crate::lookup::LayerStack;
use crate::namespace::Namespace;
use crate::stat_override::{self, Format};
use crate::sys;

mod dispatch;

/// What the filesystem needs to know, already validated.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Top first.
    pub lowerdirs: Vec<PathBuf>,
    /// Lower layers already open (an image's tar layers), top first,
    /// below `lowerdirs`.
    pub lower_layers: Vec<Arc<dyn Layer>>,
    pub upperdir: Option<PathBuf>,
    /// Given exactly when `upperdir` is.
    pub workdir: Option<PathBuf>,
    /// How long the kernel may cache entries and attributes.
    pub timeout: Duration,
    /// Bound of the dentry cache, in entries.
    pub dcache_entries: usize,
    /// Report `st_nlink` 1 for every directory (fuse-overlayfs `static_nlink`).
    pub static_nlink: bool,
    /// Refuse every xattr request with ENOTSUP (fuse-overlayfs `noxattrs=1`).
    pub noxattrs: bool,
    /// Pass fsync on to the upper layer (off with `fsync=0` or `volatile`).
    pub fsync: bool,
    /// Rename directories with lower content by writing a redirect (else
    /// EXDEV), and follow the redirects found in the layers.
    pub create_redirects: bool,
    pub follow_redirects: bool,
    /// Use FUSE passthrough where the kernel offers it.
    pub passthrough: bool,
    /// Metadata-only copy-up (`metacopy=on`).
    pub metacopy: bool,
    /// How stored ids are shown (`uidmapping=`, `squash_to_root`, ...).
    pub idmap: IdMap,
    /// Owner and mode records for layers that carry no mark of their own
    /// (`xattr_permissions=`).
    pub xattr_permissions: Option<Format>,
    /// POSIX ACLs enforced and inherited (off with `noacl`).
    pub acl: bool,
}

/// Default cache lifetime: layers only change through us, so the kernel's
/// caches can live as long as it likes (fuse-overlayfs uses 1,000,000 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(86_400);

#[derive(Debug)]
pub struct Strata {
    pub(crate) stack: Arc<LayerStack>,
    pub(crate) upper: Option<Upper>,
    /// Hard links kept through copy-up (with an upper only).
    pub(crate) index: Option<Index>,
    pub(crate) inos: InoMap,
    pub(crate) nodes: Arc<InodeTable>,
    pub(crate) dcache: Arc<DentryCache>,
    pub(crate) files: HandleTable<OpenFile>,
    pub(crate) dirs: HandleTable<OpenDir>,
    pub(crate) ttl: Duration,
    static_nlink: bool,
    noxattrs: bool,
    pub(crate) fsync: bool,
    pub(crate) create_redirects: bool,
    pub(crate) metacopy: bool,
    pub(crate) idmap: IdMap,
    /// Per layer: where owner-and-mode records are kept, if anywhere.
    pub(crate) records: Vec<Option<Format>>,
    /// The daemon runs as root (in its namespace).
    pub(crate) is_root: bool,
    /// Ask for FUSE passthrough (`passthrough=0` turns it off).
    passthrough_wanted: bool,
    /// FUSE passthrough negotiated and not refused so far.
    pub(crate) passthrough_on: AtomicBool,
    acl_wanted: bool,
    acl_on: AtomicBool,
    /// Tells the kernel about changes it cannot see coming (set once the
    /// session exists; see `daemon`).
    pub(crate) notifier: Arc<OnceLock<Notifier>>,
    /// Shared by requests that resolve paths, exclusive to directory
    /// renames.
    pub(crate) namespace: Namespace,
}

pub(crate) fn errno(e: io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn layer_error(path: &std::path::Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("layer '{}': {e}", path.display()))
}

impl Strata {
    /// Opens every layer directory. After this returns, the paths are never
    /// used again: the caller may unmount or remove them.
    pub fn new(config: &FsConfig) -> io::Result<Strata> {
        let open = |p: &PathBuf| -> io::Result<Arc<DirLayer>> {
            Ok(Arc::new(DirLayer::open(p).map_err(|e| layer_error(p, e))?))
        };
        let upper = match (&config.upperdir, &config.workdir) {
            (Some(u), Some(w)) => Some(Upper::open(open(u)?, w).map_err(|e| match e.kind() {
                io::ErrorKind::ResourceBusy => e, // names the directory itself
                _ => layer_error(w, e),
            })?),
            _ => None,
        };
        let lowers = config
            .lowerdirs
            .iter()
            .map(|p| {
                let layer = DirLayer::open(p).map_err(|e| layer_error(p, e))?;
                Ok(Arc::new(layer.read_only()) as Arc<dyn Layer>)
            })
            .chain(config.lower_layers.iter().cloned().map(Ok))
            .collect::<io::Result<Vec<_>>>()?;
        let mut stack = LayerStack::new(
            upper.as_ref().map(|u| u.layer.clone() as Arc<dyn Layer>),
            lowers,
        );
        stack.follow_redirects = config.follow_redirects;
        let inos = InoMap::new(stack.iter().map(|l| l.root_dev()));
        let index = match &upper {
            Some(u) => {
                let layer = Arc::new(Index::open(u.work_layer())?);
                let id = stack.add_hidden(layer.clone());
                let index = Index { layer, id };
                index.register_all(&inos)?;
                Some(index)
            }
            None => None,
        };
        let records =
            stat_override::layer_formats(&stack, upper.is_some(), config.xattr_permissions);
        let nodes = Arc::new(InodeTable::default());
        let root = stack.root_state()?;
        nodes.pin(Arc::new(Node::new(ROOT_INO, ROOT_INO, root)));
        let fs = Strata {
            stack: Arc::new(stack),
            upper,
            index,
            inos,
            nodes,
            dcache: Arc::new(DentryCache::new(config.dcache_entries)),
            files: HandleTable::default(),
            dirs: HandleTable::default(),
            ttl: config.timeout,
            static_nlink: config.static_nlink,
            noxattrs: config.noxattrs,
            fsync: config.fsync,
            create_redirects: config.create_redirects,
            metacopy: config.metacopy,
            idmap: config.idmap.clone(),
            records,
            is_root: sys::geteuid() == 0,
            passthrough_wanted: config.passthrough,
            passthrough_on: AtomicBool::new(false),
            acl_wanted: config.acl,
            acl_on: AtomicBool::new(false),
            notifier: Arc::default(),
            namespace: Namespace::default(),
        };
        fs.mark_upper();
        Ok(fs)
    }

    /// A failed request changed `node` on the way (a copy-up, say): the
    /// kernel, which only drops its cached attributes after a success, is
    /// told to ask again. Attributes only (offset -1): no page or entry is
    /// touched, so this cannot wait on locks the request holds.
    pub(crate) fn changed_by_failed_request(&self, node: &Node) {
        self.refresh(node);
        if let Some(notifier) = self.notifier.get()
            && let Err(e) = notifier.inval_inode(INodeNo(node.ino), -1, 0)
        {
            log::debug!("could not invalidate inode {}: {e}", node.ino);
        }
    }

    pub(crate) fn attr(&self, node: &Node) -> FileAttr {
        if node.written_directly() {
            self.refresh(node); // the kernel wrote it through passthrough
        }
        let mut attr = node.attr();
        if let Some(record) = self.record_of(node) {
            record.apply(&mut attr);
        }
        (attr.uid, attr.gid) = self.idmap.shown(attr.uid, attr.gid);
        if self.static_nlink && node.kind == FileType::Directory {
            attr.nlink = 1;
        }
        attr
    }

    /// Whether the kernel enforces ACLs, and new objects inherit them.
    pub(crate) fn acl_on(&self) -> bool {
        self.acl_on.load(Ordering::Relaxed)
    }

    pub(crate) fn node(&self, ino: INodeNo) -> Result<Arc<Node>, Errno> {
        self.nodes.get(ino.0).ok_or(Errno::ESTALE)
    }

    /// The upper layer, or EROFS for a mount without one.
    pub(crate) fn upper_or_erofs(&self) -> io::Result<&Upper> {
        self.upper
            .as_ref()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EROFS))
    }
}

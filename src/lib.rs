//! strata: a userspace union filesystem for container image layers.
//!
//! The modules follow the split of the kernel's fs/overlayfs:
//!
//! | module | concern |
//! |---|---|
//! | [`options`] | argv and mount options → a validated configuration |
//! | [`idmap`] | uid/gid mapping and squashing between the layers and the mount |
//! | [`layer`] | one layer: its directory fd, relative syscalls, whiteout/opaque formats |
//! | [`lookup`] | the layer stack and top-down name resolution |
//! | [`copy_up`] | the upper layer and workdir; atomic copy-up of lower objects |
//! | [`index`] | hard links that survive copy-up (kernel `index=on`) |
//! | [`inode`] | the node table, lookup counts, inode numbers |
//! | [`dcache`] | the sharded, bounded dentry cache (positive and negative) |
//! | [`namespace`] | path resolution ordered against directory renames |
//! | [`dir`] | namespace changes: create, link, unlink, rmdir; whiteouts, opaque dirs |
//! | [`rename`] | rename and renameat2; redirects for moved directories |
//! | [`readdir`] | merged directory listings |
//! | [`refresh`] | dropping every cache when layers changed under the mount (SIGUSR1) |
//! | [`file`] | open file and directory handles |
//! | [`xattr`] | visible vs internal extended attributes |
//! | [`acl`] | POSIX ACLs: umask and default-ACL inheritance on create |
//! | [`stat_override`] | owner and mode kept in xattrs (`xattr_permissions=`) |
//! | [`fs`] | the `fuser::Filesystem` dispatcher |
//! | [`daemon`] | mounting, detaching from the caller, clean shutdown |
//! | [`sys`] | the only `unsafe`: thin syscall wrappers |
//! | [`tar`] | tar archives as layers: the index, [`tar::TarLayer`] |
//! | [`tools`] | `strata inspect`, `diff`, `mount-image`: the layer tools |

pub mod acl;
pub mod copy_up;
pub mod daemon;
pub mod dcache;
pub mod dir;
pub mod file;
pub mod fs;
pub mod idmap;
pub mod index;
pub mod inode;
pub mod layer;
pub mod lookup;
pub mod namespace;
pub mod options;
pub mod readdir;
pub mod refresh;
pub mod rename;
pub mod stat_override;
pub mod sys;
pub mod tar;
pub mod tools;
pub mod xattr;

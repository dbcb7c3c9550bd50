//! Extended attributes as users see them: the layers' own xattrs minus the
//! internal ones that union filesystems keep for themselves.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;

use fuser::Errno;

use crate::copy_up::UPPER;
use crate::fs::{Strata, errno};
use crate::inode::Node;
use crate::stat_override;
use crate::sys;

/// Namespaces of internal xattrs: kernel overlayfs (`trusted.` and
/// `userxattr` forms), fuse-overlayfs, containers-storage and strata itself.
/// They are never listed, read or written through the mount.
const INTERNAL_PREFIXES: [&[u8]; 6] = [
    b"trusted.overlay.",
    b"user.overlay.",
    b"user.fuseoverlayfs.",
    b"security.fuseoverlayfs.",
    b"user.containers.",
    b"user.strata.",
];

pub fn is_internal(name: &[u8]) -> bool {
    INTERNAL_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Whether copy-up carries `name` over: everything but what belongs to
/// one overlay mount's own bookkeeping. Owner-and-mode records and
/// containers-storage's xattrs describe the object, so they go along (as
/// the kernel, which only knows its own, copies them too).
pub fn is_copied_up(name: &[u8]) -> bool {
    !is_internal(name) || name.starts_with(b"user.containers.") || stat_override::is_record(name)
}

/// The errno for reading an internal xattr. Kernel overlayfs answers ENODATA
/// for its own `trusted.overlay.*` names; we answer the same for every
/// internal name, as if it did not exist.
pub const INTERNAL_READ_ERRNO: i32 = libc::ENODATA;

/// Removes internal names from a NUL-separated `listxattr` buffer.
pub fn visible_names(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    for name in raw.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if !is_internal(name) {
            out.extend_from_slice(name);
            out.push(0);
        }
    }
    out
}

/// Whether a caller is shown `trusted.*` names by listxattr. Local
/// filesystems and kernel overlayfs list them only to a caller with
/// CAP_SYS_ADMIN (`ext4_xattr_trusted_list`, `ovl_can_list`), and the
/// kernel's FUSE module passes the daemon's list on as it is, so without
/// this every user would see them (the VFS refuses them the values).
/// `uid` 0 (of the mount's user namespace: a user namespace's root mapped
/// to another uid is not it) with CAP_SYS_ADMIN in its effective set
/// (`/proc/PID/status`); where that cannot be read (the caller is gone, or
/// outside the mount's pid namespace: pid 0), uid 0 alone decides.
pub fn caller_lists_trusted(uid: u32, pid: u32) -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    if uid != 0 {
        return false;
    }
    let status = match pid {
        0 => None,
        _ => std::fs::read_to_string(format!("/proc/{pid}/status")).ok(),
    };
    status
        .as_deref()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("CapEff:")))
        .and_then(|caps| u64::from_str_radix(caps.trim(), 16).ok())
        .is_none_or(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

/// A NUL-separated `listxattr` buffer without its `trusted.*` names.
pub fn without_trusted(names: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(names.len());
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if !name.starts_with(b"trusted.") {
            out.extend_from_slice(name);
            out.push(0);
        }
    }
    out
}

/// Treats "this filesystem has no xattrs" as an empty list.
pub fn none_if_unsupported(r: io::Result<Vec<u8>>) -> io::Result<Vec<u8>> {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => Ok(Vec::new()),
        other => other,
    }
}

impl Strata {
    /// The value of a (visible) xattr of `node`.
    pub(crate) fn get_xattr(&self, node: &Node, name: &CStr) -> io::Result<Vec<u8>> {
        if let Some(fd) = node.orphan() {
            return sys::fgetxattr(fd.as_fd(), name);
        }
        let top = node.state().top().clone();
        let stored = self.stored_xattr_name(top.layer, name);
        self.stack
            .get(top.layer)
            .get_xattr(&top.path, stored.as_deref().unwrap_or(name))
    }

    /// The raw NUL-separated names of `node`'s xattrs, internal ones included.
    pub(crate) fn list_xattr(&self, node: &Node) -> io::Result<Vec<u8>> {
        let raw = match node.orphan() {
            Some(fd) => sys::flistxattr(fd.as_fd()),
            None => {
                let top = node.state().top().clone();
                self.stack.get(top.layer).list_xattr(&top.path)
            }
        };
        none_if_unsupported(raw)
    }

    /// Sets (`Some((value, flags))`) or removes (`None`) an xattr, after
    /// copying the node up. Internal names cannot be changed through the
    /// mount (EPERM, as the kernel answers for its own).
    pub(crate) fn set_xattr(
        &self,
        node: &Node,
        name: &OsStr,
        value: Option<(&[u8], i32)>,
    ) -> Result<(), Errno> {
        if is_internal(name.as_bytes()) {
            return Err(Errno::EPERM);
        }
        let cname = CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)?;
        if value.is_none() {
            // Like the kernel: removing what is not there copies nothing up.
            self.get_xattr(node, &cname).map_err(errno)?;
        }
        self.copy_up_metadata(node).map_err(errno)?;
        let fd = self.object_fd(node).map_err(errno)?;
        let cname = self.stored_xattr_name(UPPER, &cname).unwrap_or(cname);
        match value {
            Some((value, flags)) => sys::fsetxattr_any(fd.as_fd(), &cname, value, flags),
            None => sys::fremovexattr_any(fd.as_fd(), &cname),
        }
        .map_err(errno)?;
        self.refresh(node);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_names_are_hidden() {
        let raw = b"user.a\0trusted.overlay.opaque\0security.selinux\0user.overlay.redirect\0user.fuseoverlayfs.x\0user.containers.override_stat\0user.strata.layer\0user.b\0";
        assert_eq!(visible_names(raw), b"user.a\0security.selinux\0user.b\0");
        assert!(is_internal(b"trusted.overlay.metacopy"));
        assert!(!is_internal(b"trusted.overlayx"));
        assert!(!is_internal(b"user.overlayfoo"));
    }

    #[test]
    fn trusted_names_only_for_privileged_callers() {
        let raw = b"user.a\0trusted.b\0security.c\0trustedx\0";
        assert_eq!(without_trusted(raw), b"user.a\0security.c\0trustedx\0");
        assert!(!caller_lists_trusted(1000, std::process::id()));
        assert!(caller_lists_trusted(0, 0));
    }
}

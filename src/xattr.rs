//! Extended attributes as users see them: the layers' own xattrs minus the
//! internal ones that union filesystems keep for themselves.

use std::io;

/// Namespaces of internal xattrs: kernel overlayfs (`trusted.` and
/// `userxattr` forms), fuse-overlayfs, containers-storage and strata itself.
/// They are never listed, read or written through the mount.
const INTERNAL_PREFIXES: [&[u8]; 5] = [
    b"trusted.overlay.",
    b"user.overlay.",
    b"user.fuseoverlayfs.",
    b"user.containers.",
    b"user.strata.",
];

pub fn is_internal(name: &[u8]) -> bool {
    INTERNAL_PREFIXES.iter().any(|p| name.starts_with(p))
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

/// Treats "this filesystem has no xattrs" as an empty list.
pub fn none_if_unsupported(r: io::Result<Vec<u8>>) -> io::Result<Vec<u8>> {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => Ok(Vec::new()),
        other => other,
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
}

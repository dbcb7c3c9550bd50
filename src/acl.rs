//! POSIX ACLs (on unless `noacl`). The kernel enforces them (FUSE_POSIX_ACL)
//! from the `system.posix_acl_*` xattrs the layers hold; what is left to
//! strata is what a filesystem does when it creates an object:
//!
//! * the caller's umask (the kernel sends it apart, FUSE_DONT_MASK) applies
//!   only where the parent directory has no default ACL;
//! * where it has one, the new object inherits it. An object made in place
//!   gets that from the upper filesystem itself; one made in the workdir
//!   (to replace a whiteout) is given it here, with the same rules as the
//!   kernel's `posix_acl_create`.

use std::ffi::CStr;
use std::io;
use std::os::fd::BorrowedFd;

use crate::sys;

pub const ACCESS: &CStr = c"system.posix_acl_access";
pub const DEFAULT: &CStr = c"system.posix_acl_default";

const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const GROUP_OBJ: u16 = 0x04;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

/// A directory's default ACL in its xattr form, if it has one.
pub fn default_of(dir: BorrowedFd<'_>) -> io::Result<Option<Vec<u8>>> {
    match sys::fgetxattr(dir, DEFAULT) {
        Ok(v) if v.len() > 4 => Ok(Some(v)),
        Ok(_) => Ok(None),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENODATA | libc::ENOTSUP)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// What an object created with `mode` under a directory whose default ACL
/// is `default` gets: its mode, and an access ACL where the mode alone
/// cannot say it (`posix_acl_create`). `None` for a malformed ACL.
pub fn inherit(default: &[u8], mode: u32) -> Option<(u32, Option<Vec<u8>>)> {
    let mut acl = default.to_vec();
    if acl.len() < 4 || !(acl.len() - 4).is_multiple_of(8) {
        return None;
    }
    if u32::from_le_bytes(acl[..4].try_into().ok()?) != VERSION {
        return None;
    }
    let mut mode = mode;
    let (mut group_obj, mut mask, mut extended) = (None, None, false);
    for at in (4..acl.len()).step_by(8) {
        let tag = u16::from_le_bytes([acl[at], acl[at + 1]]);
        let perm = u16::from_le_bytes([acl[at + 2], acl[at + 3]]) as u32;
        let kept = match tag {
            USER_OBJ => {
                let p = perm & (mode >> 6);
                mode &= (p << 6) | !0o700;
                Some(p)
            }
            OTHER => {
                let p = perm & mode;
                mode &= p | !0o007;
                Some(p)
            }
            GROUP_OBJ => {
                group_obj = Some(at);
                None
            }
            MASK => {
                mask = Some(at);
                extended = true;
                None
            }
            _ => {
                extended = true;
                None
            }
        };
        if let Some(p) = kept {
            acl[at + 2..at + 4].copy_from_slice(&(p as u16).to_le_bytes());
        }
    }
    // The group class: the mask where there is one, else the owning group.
    let at = mask.or(group_obj)?;
    let perm = u16::from_le_bytes([acl[at + 2], acl[at + 3]]) as u32 & (mode >> 3);
    mode &= (perm << 3) | !0o070;
    acl[at + 2..at + 4].copy_from_slice(&(perm as u16).to_le_bytes());
    Some((mode, extended.then_some(acl)))
}

/// Gives the new object `fd` (made away from its parent) what it would
/// have inherited from `default`; returns its mode.
pub fn apply_inherited(
    fd: BorrowedFd<'_>,
    default: &[u8],
    mode: u32,
    is_dir: bool,
) -> io::Result<u32> {
    let (mode, access) =
        inherit(default, mode).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    sys::fchmod_any(fd, mode & 0o7777)?;
    if let Some(access) = access {
        sys::fsetxattr_any(fd, ACCESS, &access, 0)?;
    }
    if is_dir {
        sys::fsetxattr_any(fd, DEFAULT, default, 0)?;
    }
    Ok(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = VERSION.to_le_bytes().to_vec();
        for &(tag, perm, id) in entries {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    }

    const NO_ID: u32 = u32::MAX;

    #[test]
    fn a_minimal_default_acl_acts_as_a_umask() {
        // default: u::rwx g::r-x o::--- (as `setfacl -d -m o::-`)
        let d = acl(&[
            (USER_OBJ, 7, NO_ID),
            (GROUP_OBJ, 5, NO_ID),
            (OTHER, 0, NO_ID),
        ]);
        assert_eq!(inherit(&d, 0o666), Some((0o640, None)));
        assert_eq!(inherit(&d, 0o777), Some((0o750, None)));
    }

    #[test]
    fn named_entries_give_an_access_acl_with_the_mask_cut_by_the_mode() {
        // default: u::rwx u:1000:rw- g::r-x m::rwx o::r-x
        let d = acl(&[
            (USER_OBJ, 7, NO_ID),
            (0x02, 6, 1000),
            (GROUP_OBJ, 5, NO_ID),
            (MASK, 7, NO_ID),
            (OTHER, 5, NO_ID),
        ]);
        let (mode, access) = inherit(&d, 0o666).unwrap();
        assert_eq!(mode, 0o664);
        let expected = acl(&[
            (USER_OBJ, 6, NO_ID),
            (0x02, 6, 1000),
            (GROUP_OBJ, 5, NO_ID),
            (MASK, 6, NO_ID),
            (OTHER, 4, NO_ID),
        ]);
        assert_eq!(access, Some(expected));
    }

    #[test]
    fn malformed_acls_are_refused() {
        assert_eq!(inherit(b"", 0o666), None);
        assert_eq!(inherit(&[1, 0, 0, 0], 0o666), None);
        assert_eq!(inherit(&acl(&[(USER_OBJ, 7, NO_ID)])[..10], 0o666), None);
        // No group class entry at all.
        assert_eq!(
            inherit(&acl(&[(USER_OBJ, 7, NO_ID), (OTHER, 0, NO_ID)]), 0o666),
            None
        );
    }
}

//! Checking a parsed [`Config`] against the real filesystem.

use std::fs;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::*;
use crate::sys;

// ---------------------------------------------------------------------------
// Validation against the filesystem
// ---------------------------------------------------------------------------

/// Checks a parsed [`Config`] against the filesystem before mounting.
///
/// In this order: every lowerdir, the upperdir, the workdir and the
/// mountpoint exist and are directories (symlinks are followed); upperdir
/// and workdir are on the same filesystem; and no two directories are
/// nested where that would make the mount see itself or corrupt a layer:
///
/// * upperdir and workdir: neither inside the other, nor the same;
/// * upperdir, workdir and the mountpoint: not inside a lowerdir, and not
///   containing one;
/// * the mountpoint: not inside upperdir or workdir, and not containing them.
///
/// A `/dev/fd/N` mountpoint ([`Config::fuse_fd`]) must instead be an open
/// `/dev/fuse` fd; where it is mounted is the caller's business.
///
/// "Inside" is decided on the real directories, not on spelling: each path
/// is canonicalised (following symlinks, as the kernel does) and compared by
/// the (device, inode) pair of it and of each of its ancestors, which also
/// catches a directory reached through a bind mount.
///
/// # Errors
///
/// The first rule broken, as an [`OptionsError`] naming the directories
/// as they were given, e.g. `upperdir '/l/u' is inside lowerdir '/l'`.
/// Drops `context=` where SELinux is not enabled: the kernel would refuse
/// the whole mount (EINVAL) over a label nothing could use. Callers such as
/// podman pass one whenever their own configuration labels containers.
pub fn drop_context_without_selinux(config: &mut Config) {
    if config.context.is_some() && !Path::new("/sys/fs/selinux/enforce").exists() {
        config.context = None;
        config
            .warnings
            .push("context= ignored: SELinux is not enabled on this system".into());
    }
}

pub fn validate(config: &Config) -> Result<(), OptionsError> {
    for lower in &config.lowerdirs {
        require_directory(Role::Lowerdir, lower)?;
    }
    let upper = config
        .upperdir
        .as_deref()
        .map(|path| require_directory(Role::Upperdir, path))
        .transpose()?;
    let work = config
        .workdir
        .as_deref()
        .map(|path| require_directory(Role::Workdir, path))
        .transpose()?;
    match config.fuse_fd {
        Some(fd) => require_fuse_fd(&config.mountpoint, fd)?,
        None => {
            require_directory(Role::Mountpoint, &config.mountpoint)?;
        }
    }

    if let (Some(upper), Some(work)) = (&upper, &work)
        && upper.dev() != work.dev()
    {
        return Err(OptionsError::DifferentFilesystems {
            upperdir: config.upperdir.clone().unwrap_or_default(),
            workdir: config.workdir.clone().unwrap_or_default(),
        });
    }
    check_nesting(config)
}

/// `path` must be a directory (after following symlinks); returns its
/// metadata.
pub(super) fn require_directory(role: Role, path: &Path) -> Result<fs::Metadata, OptionsError> {
    let metadata = fs::metadata(path).map_err(|error| io_error(role, path, &error))?;
    if metadata.is_dir() {
        Ok(metadata)
    } else {
        Err(OptionsError::NotADirectory {
            role,
            path: path.to_path_buf(),
        })
    }
}

/// The device numbers of `/dev/fuse`.
const FUSE_DEV: (u32, u32) = (10, 229);

/// `fd` (named by `path`, `/dev/fd/N`) must be an open `/dev/fuse` fd.
pub(super) fn require_fuse_fd(path: &Path, fd: RawFd) -> Result<(), OptionsError> {
    let bad = |reason: String| OptionsError::BadFuseFd {
        path: path.to_path_buf(),
        reason,
    };
    let st = match sys::fstat_fd(fd) {
        Ok(st) => st,
        Err(e) if e.raw_os_error() == Some(libc::EBADF) => {
            return Err(bad("not an open file descriptor".into()));
        }
        Err(e) => return Err(bad(strip_os_error(&e))),
    };
    let kind = st.st_mode & libc::S_IFMT;
    let dev = (libc::major(st.st_rdev), libc::minor(st.st_rdev));
    if kind == libc::S_IFCHR && dev == FUSE_DEV {
        return Ok(());
    }
    let what = match kind {
        libc::S_IFIFO => "a pipe".to_string(),
        libc::S_IFSOCK => "a socket".to_string(),
        libc::S_IFREG => "a regular file".to_string(),
        libc::S_IFDIR => "a directory".to_string(),
        libc::S_IFLNK => "a symbolic link".to_string(),
        libc::S_IFBLK => format!("the block device {}:{}", dev.0, dev.1),
        libc::S_IFCHR => format!("the character device {}:{}", dev.0, dev.1),
        _ => "not a device".to_string(),
    };
    Err(bad(format!(
        "not a /dev/fuse file descriptor (it is {what})"
    )))
}

/// The system's text for `error` without Rust's ` (os error N)` suffix.
fn strip_os_error(error: &io::Error) -> String {
    let text = error.to_string();
    match text.rfind(" (os error ") {
        Some(index) if text.ends_with(')') => text.get(..index).unwrap_or(&text).to_owned(),
        _ => text,
    }
}

/// Wraps an I/O error with the directory it concerns. The message is the
/// system's text without Rust's ` (os error N)` suffix, so it reads like
/// `lowerdir '/x': No such file or directory`.
pub(super) fn io_error(role: Role, path: &Path, error: &io::Error) -> OptionsError {
    OptionsError::Io {
        role,
        path: path.to_path_buf(),
        message: strip_os_error(error),
    }
}

/// A directory's identity: its device and inode numbers.
pub(super) type DirId = (u64, u64);

/// A directory named in the config, with the identities of itself and all
/// its ancestors up to `/` (itself first).
pub(super) struct Located<'a> {
    role: Role,
    path: &'a Path,
    ancestry: Vec<DirId>,
}

impl Located<'_> {
    fn id(&self) -> Option<DirId> {
        self.ancestry.first().copied()
    }

    /// Whether `other` is this directory or one of its ancestors.
    fn is_within(&self, other: &Located<'_>) -> bool {
        other.id().is_some_and(|id| self.ancestry.contains(&id))
    }
}

pub(super) fn locate(role: Role, path: &Path) -> Result<Located<'_>, OptionsError> {
    let canonical = fs::canonicalize(path).map_err(|error| io_error(role, path, &error))?;
    let ancestry = canonical
        .ancestors()
        .map(|ancestor| {
            fs::metadata(ancestor)
                .map(|metadata| (metadata.dev(), metadata.ino()))
                .map_err(|error| io_error(role, path, &error))
        })
        .collect::<Result<_, _>>()?;
    Ok(Located {
        role,
        path,
        ancestry,
    })
}

/// Fails if `a` and `b` are the same directory or one lies inside the other.
pub(super) fn keep_apart(a: &Located<'_>, b: &Located<'_>) -> Result<(), OptionsError> {
    let nested = |inner: &Located<'_>, outer: &Located<'_>| OptionsError::Nested {
        inner_role: inner.role,
        inner: inner.path.to_path_buf(),
        outer_role: outer.role,
        outer: outer.path.to_path_buf(),
    };
    if a.id() == b.id() {
        Err(OptionsError::SameDirectory {
            first_role: a.role,
            first: a.path.to_path_buf(),
            second_role: b.role,
            second: b.path.to_path_buf(),
        })
    } else if a.is_within(b) {
        Err(nested(a, b))
    } else if b.is_within(a) {
        Err(nested(b, a))
    } else {
        Ok(())
    }
}

/// The nesting rules of [`validate`].
pub(super) fn check_nesting(config: &Config) -> Result<(), OptionsError> {
    let upper = config
        .upperdir
        .as_deref()
        .map(|path| locate(Role::Upperdir, path))
        .transpose()?;
    let work = config
        .workdir
        .as_deref()
        .map(|path| locate(Role::Workdir, path))
        .transpose()?;
    // A /dev/fd/N mountpoint has no directory of ours to compare.
    let mountpoint = match config.fuse_fd {
        Some(_) => None,
        None => Some(locate(Role::Mountpoint, &config.mountpoint)?),
    };

    if let (Some(upper), Some(work)) = (&upper, &work) {
        keep_apart(work, upper)?;
    }
    for lower in &config.lowerdirs {
        let lower = locate(Role::Lowerdir, lower)?;
        for dir in [upper.as_ref(), work.as_ref(), mountpoint.as_ref()]
            .into_iter()
            .flatten()
        {
            keep_apart(dir, &lower)?;
        }
    }
    if let Some(mountpoint) = &mountpoint {
        for dir in [upper.as_ref(), work.as_ref()].into_iter().flatten() {
            keep_apart(mountpoint, dir)?;
        }
    }
    Ok(())
}

//! A small operation language for write-path tests: each [`Op`] is one
//! syscall (or a short, fixed sequence of them) on a path relative to a
//! mount root, and [`apply`] returns an [`Outcome`] that carries the data
//! that matters (content hash of a read, attributes of a stat, names of a
//! readdir, an xattr value) or the errno, so that two mounts running the
//! same script can be compared step by step.
//!
//! Paths are resolved inside the mount only (openat2 RESOLVE_IN_ROOT and
//! `*at` calls on the parent): a write or chmod through the fixture's
//! `links/absolute -> /etc/passwd` reaches the mount's etc/passwd, never
//! the host's.

use std::ffi::CString;
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{Kind, content_hash, dev_major_minor, is_internal_xattr, lgetxattr, llistxattr};

/// Paths (relative to the mount root), xattr names, symlink targets.
pub type P = &'static str;

/// One step of a script. Paths are relative to the mount root; symlinks
/// are never followed except where the syscall itself does (open, chmod,
/// truncate, opendir, like the shell tools), and then only inside the
/// mount: `/` and `..` stop at its root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    // ------------------------------------------------------------ looking
    /// open(O_RDONLY) + read to the end: length and hash of the content.
    Read(P),
    /// lstat: type, mode, owner, size, nlink (not of dirs), mtime (times
    /// after the script started read as "recent"), rdev, symlink target.
    Stat(P),
    /// Sorted names ("." and ".." left out).
    ReadDir(P),
    /// lgetxattr: the value.
    GetXattr(P, P),
    /// llistxattr: sorted names, overlay-internal and security.* left out.
    ListXattr(P),
    /// lstat both: are they one inode (st_dev and st_ino equal)?
    SameInode(P, P),
    // ------------------------------------------------------------ data
    /// open(O_WRONLY) (no O_CREAT, no O_TRUNC) + write at offset 0.
    Write(P, &'static [u8]),
    /// open(O_WRONLY | O_APPEND) + write.
    Append(P, &'static [u8]),
    /// open(O_WRONLY) + pwrite at an offset (sparse past the end).
    WriteAt(P, u64, &'static [u8]),
    /// truncate(2) by path.
    Truncate(P, u64),
    /// open(O_WRONLY | O_TRUNC) + write (the shell's `>` on an existing file).
    OpenTrunc(P, &'static [u8]),
    /// open(O_RDWR) and close without writing (a copy-up trigger for the
    /// kernel, nothing for a lazy implementation: must look the same).
    OpenRw(P),
    // ------------------------------------------------------------ metadata
    Chmod(P, u32),
    /// lchown (symlinks themselves are changed).
    Chown(P, u32, u32),
    /// utimensat(AT_SYMLINK_NOFOLLOW): atime and mtime both set to (sec, nsec).
    Utimens(P, i64, i64),
    /// lsetxattr(name, value, flags 0).
    SetXattr(P, P, &'static [u8]),
    RemoveXattr(P, P),
    // ------------------------------------------------------------ names
    Mkdir(P, u32),
    Rmdir(P),
    Unlink(P),
    /// open(O_CREAT | O_WRONLY | O_TRUNC, mode) + write (the shell's `>`).
    Create(P, u32, &'static [u8]),
    /// open(O_CREAT | O_EXCL | O_WRONLY, mode).
    CreateExcl(P, u32),
    /// symlink(target, path).
    Symlink(P, P),
    /// mknod(S_IFIFO | mode).
    Mkfifo(P, u32),
    /// mknod(S_IFCHR | mode, major:minor).
    MknodChr(P, u32, u32, u32),
    /// link(old, new).
    Link(P, P),
    /// rename(old, new).
    Rename(P, P),
    /// renameat2(old, new, RENAME_NOREPLACE).
    RenameNoReplace(P, P),
    /// renameat2(a, b, RENAME_EXCHANGE).
    RenameExchange(P, P),
    /// Recursive delete through the mount (children in sorted order, depth
    /// first, no symlink followed); the first failure ends it.
    RmRf(P),
}

impl Op {
    /// Ops that change nothing (used to skip them where only writes matter).
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            Op::Read(_)
                | Op::Stat(_)
                | Op::ReadDir(_)
                | Op::GetXattr(..)
                | Op::ListXattr(_)
                | Op::SameInode(..)
        )
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = |v: &[u8]| format!("b\"{}\"", short_bytes(v, 24));
        match *self {
            Op::Read(p) => write!(f, "Read({})", sp(p)),
            Op::Stat(p) => write!(f, "Stat({})", sp(p)),
            Op::ReadDir(p) => write!(f, "ReadDir({})", sp(p)),
            Op::GetXattr(p, n) => write!(f, "GetXattr({}, {n:?})", sp(p)),
            Op::ListXattr(p) => write!(f, "ListXattr({})", sp(p)),
            Op::SameInode(a, b) => write!(f, "SameInode({}, {})", sp(a), sp(b)),
            Op::Write(p, d) => write!(f, "Write({}, {})", sp(p), b(d)),
            Op::Append(p, d) => write!(f, "Append({}, {})", sp(p), b(d)),
            Op::WriteAt(p, o, d) => write!(f, "WriteAt({}, {o}, {})", sp(p), b(d)),
            Op::Truncate(p, l) => write!(f, "Truncate({}, {l})", sp(p)),
            Op::OpenTrunc(p, d) => write!(f, "OpenTrunc({}, {})", sp(p), b(d)),
            Op::OpenRw(p) => write!(f, "OpenRw({})", sp(p)),
            Op::Chmod(p, m) => write!(f, "Chmod({}, {m:#o})", sp(p)),
            Op::Chown(p, u, g) => write!(f, "Chown({}, {u}, {g})", sp(p)),
            Op::Utimens(p, s, n) => write!(f, "Utimens({}, {s}, {n})", sp(p)),
            Op::SetXattr(p, n, v) => write!(f, "SetXattr({}, {n:?}, {})", sp(p), b(v)),
            Op::RemoveXattr(p, n) => write!(f, "RemoveXattr({}, {n:?})", sp(p)),
            Op::Mkdir(p, m) => write!(f, "Mkdir({}, {m:#o})", sp(p)),
            Op::Rmdir(p) => write!(f, "Rmdir({})", sp(p)),
            Op::Unlink(p) => write!(f, "Unlink({})", sp(p)),
            Op::Create(p, m, d) => write!(f, "Create({}, {m:#o}, {})", sp(p), b(d)),
            Op::CreateExcl(p, m) => write!(f, "CreateExcl({}, {m:#o})", sp(p)),
            Op::Symlink(t, p) => write!(f, "Symlink({t:?}, {})", sp(p)),
            Op::Mkfifo(p, m) => write!(f, "Mkfifo({}, {m:#o})", sp(p)),
            Op::MknodChr(p, m, ma, mi) => write!(f, "MknodChr({}, {m:#o}, {ma}:{mi})", sp(p)),
            Op::Link(a, b) => write!(f, "Link({}, {})", sp(a), sp(b)),
            Op::Rename(a, b) => write!(f, "Rename({}, {})", sp(a), sp(b)),
            Op::RenameNoReplace(a, b) => write!(f, "RenameNoReplace({}, {})", sp(a), sp(b)),
            Op::RenameExchange(a, b) => write!(f, "RenameExchange({}, {})", sp(a), sp(b)),
            Op::RmRf(p) => write!(f, "RmRf({})", sp(p)),
        }
    }
}

/// A path for reports: quoted, very long components shortened.
fn sp(p: &str) -> String {
    let parts: Vec<String> = p
        .split('/')
        .map(|c| {
            if c.chars().count() > 40 {
                format!("{}…[{}B]", c.chars().take(8).collect::<String>(), c.len())
            } else {
                c.to_owned()
            }
        })
        .collect();
    format!("{:?}", parts.join("/"))
}

fn short_bytes(v: &[u8], max: usize) -> String {
    let s: String = v
        .iter()
        .take(max)
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect();
    if v.len() > max {
        format!("{s}…[{}B]", v.len())
    } else {
        s
    }
}

/// An mtime as the per-step results and the walks compare it: times since
/// the script started are all "recent" (two mounts never write at the same
/// nanosecond), older ones (the fixture's, preserved by copy-up, or set by
/// utimens) are compared exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mtime {
    At(i64, i64),
    Recent,
}

impl Mtime {
    pub fn of(sec: i64, nsec: i64, since: SystemTime) -> Mtime {
        let t = if sec >= 0 {
            SystemTime::UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
        } else {
            SystemTime::UNIX_EPOCH
        };
        if t >= since {
            Mtime::Recent
        } else {
            Mtime::At(sec, nsec)
        }
    }
}

impl fmt::Display for Mtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mtime::At(s, n) => write!(f, "{s}.{n:09}"),
            Mtime::Recent => write!(f, "recent"),
        }
    }
}

/// What lstat shows, as far as two different overlay mounts must agree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatInfo {
    pub kind: Kind,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    /// Left out for directories (their size is the upper file system's
    /// business, and strata lists merged dirs of any size).
    pub size: Option<u64>,
    /// Left out for directories (the kernel reports 1 for merged dirs).
    pub nlink: Option<u64>,
    pub mtime: Mtime,
    pub rdev: Option<(u32, u32)>,
    pub symlink: Option<String>,
}

impl fmt::Display for StatInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} {:04o} {}:{}",
            self.kind, self.perm, self.uid, self.gid
        )?;
        if let Some(s) = self.size {
            write!(f, " size {s}")?;
        }
        if let Some(n) = self.nlink {
            write!(f, " nlink {n}")?;
        }
        write!(f, " mtime {}", self.mtime)?;
        if let Some((a, b)) = self.rdev {
            write!(f, " rdev {a}:{b}")?;
        }
        if let Some(t) = &self.symlink {
            write!(f, " -> {t:?}")?;
        }
        Ok(())
    }
}

/// The result of one step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Read: length, FNV-1a hash and the first bytes (for reports).
    Data {
        len: u64,
        hash: u64,
        head: String,
    },
    Stat(StatInfo),
    Names(Vec<String>),
    /// GetXattr (escaped).
    Value(String),
    /// SameInode.
    Same(bool),
    Err(i32),
}

impl Outcome {
    pub fn errno(&self) -> Option<i32> {
        match self {
            Outcome::Err(e) => Some(*e),
            _ => None,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok => write!(f, "Ok"),
            Outcome::Data { len, hash, head } => {
                write!(f, "Data({len} bytes, fnv:{hash:016x}, \"{head}\")")
            }
            Outcome::Stat(s) => write!(f, "Stat({s})"),
            Outcome::Names(n) => {
                if n.len() > 12 {
                    write!(f, "Names({:?} … {} in all)", &n[..12], n.len())
                } else {
                    write!(f, "Names({n:?})")
                }
            }
            Outcome::Value(v) => write!(f, "Value(\"{v}\")"),
            Outcome::Same(b) => write!(f, "Same({b})"),
            Outcome::Err(e) => write!(f, "Err({})", errno_name(*e)),
        }
    }
}

/// "ENOENT(2)" for the errnos file systems return, "errno N" otherwise.
pub fn errno_name(e: i32) -> String {
    let n = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ETXTBSY => "ETXTBSY",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENOTCONN => "ENOTCONN",
        libc::ESTALE => "ESTALE",
        libc::EOVERFLOW => "EOVERFLOW",
        _ => return format!("errno {e}"),
    };
    format!("{n}({e})")
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("NUL in path")
}

fn cname(s: &str) -> CString {
    CString::new(s).expect("NUL in name")
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn to_outcome(r: io::Result<Outcome>) -> Outcome {
    r.unwrap_or_else(|e| Outcome::Err(e.raw_os_error().unwrap_or(-1)))
}

// ---------------------------------------------------- confined resolution
//
// Every path is resolved *inside* the mount: the fixture has symlinks such
// as `links/absolute -> /etc/passwd` and `links/escaping -> ../../../..`,
// and a chmod or a write through them must never reach the host's files.
// Final components that an op does not follow are handled relative to
// their parent directory (`*at` syscalls, or `/proc/self/fd/N/NAME` for the
// l*xattr calls); the parent, and the final component of the ops that do
// follow symlinks (open, truncate, chmod, opendir), are resolved with
// openat2(RESOLVE_IN_ROOT), so that `/` and `..` stop at the mount root,
// as in a container. Both sides of a comparison resolve the same way.

/// struct open_how of openat2(2) (libc's is non_exhaustive).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

const RESOLVE_IN_ROOT: u64 = 0x10;

/// openat2(root, rel, flags, RESOLVE_IN_ROOT); "" is the root itself.
fn open_in_root(root: &OwnedFd, rel: &str, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let rel = if rel.is_empty() { "." } else { rel };
    let c = cname(rel);
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: if flags & libc::O_CREAT != 0 {
            mode as u64
        } else {
            0
        },
        resolve: RESOLVE_IN_ROOT,
    };
    loop {
        // SAFETY: valid fd, NUL-terminated path and an open_how of the size
        // passed; the kernel only reads them.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_raw_fd(),
                c.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if fd >= 0 {
            // SAFETY: openat2 returned a new descriptor that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
        }
        let err = io::Error::last_os_error();
        // A `..` walk under RESOLVE_IN_ROOT fails with EAGAIN whenever any
        // rename on the system (another test, in parallel) raced it.
        if err.raw_os_error() != Some(libc::EAGAIN) {
            return Err(err);
        }
    }
}

/// The magic link of an open descriptor.
fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// A final component and its parent directory, resolved in the root.
struct At {
    dir: OwnedFd,
    name: CString,
}

impl At {
    fn new(root: &OwnedFd, rel: &str) -> io::Result<At> {
        let (parent, name) = match rel.rsplit_once('/') {
            Some((p, n)) => (p, n),
            None if rel.is_empty() => ("", "."),
            None => ("", rel),
        };
        Ok(At {
            dir: open_in_root(root, parent, libc::O_PATH | libc::O_DIRECTORY, 0)?,
            name: cname(name),
        })
    }

    fn fd(&self) -> RawFd {
        self.dir.as_raw_fd()
    }

    /// `/proc/self/fd/N/NAME`: for path-only calls that do not follow the
    /// final component (lstat, readlink, l*xattr, lchown).
    fn path(&self) -> PathBuf {
        fd_path(&self.dir).join(std::ffi::OsStr::from_bytes(self.name.as_bytes()))
    }
}

/// Runs one op on the mount at `root`. `since` is when the script started
/// (what counts as a "recent" mtime).
pub fn apply(root: &Path, op: &Op, since: SystemTime) -> Outcome {
    let rootfd = match fs::File::open(root) {
        Ok(f) => OwnedFd::from(f),
        Err(e) => return Outcome::Err(e.raw_os_error().unwrap_or(-1)),
    };
    to_outcome(apply_at(&rootfd, op, since))
}

fn apply_at(root: &OwnedFd, op: &Op, since: SystemTime) -> io::Result<Outcome> {
    let at = |p: &str| At::new(root, p);
    let ok = |r: libc::c_int| check(r).map(|_| Outcome::Ok);
    let follow = |p: &str| open_in_root(root, p, libc::O_PATH, 0);
    match *op {
        Op::Read(p) => {
            // O_NONBLOCK: a fifo must not block the test (read then
            // returns EOF).
            let mut f =
                fs::File::from(open_in_root(root, p, libc::O_RDONLY | libc::O_NONBLOCK, 0)?);
            let mut v = Vec::new();
            f.read_to_end(&mut v)?;
            Ok(Outcome::Data {
                len: v.len() as u64,
                hash: content_hash(&v),
                head: short_bytes(&v, 24),
            })
        }
        Op::Stat(p) => stat(&at(p)?.path(), since).map(Outcome::Stat),
        Op::ReadDir(p) => {
            let d = open_in_root(root, p, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
            let mut names = Vec::new();
            for e in fs::read_dir(fd_path(&d))? {
                names.push(e?.file_name().to_string_lossy().into_owned());
            }
            names.sort();
            Ok(Outcome::Names(names))
        }
        Op::GetXattr(p, n) => lgetxattr(&at(p)?.path(), n).map(|v| {
            Outcome::Value(
                v.iter()
                    .flat_map(|b| std::ascii::escape_default(*b))
                    .map(char::from)
                    .collect(),
            )
        }),
        Op::ListXattr(p) => llistxattr(&at(p)?.path()).map(|names| {
            let mut v: Vec<String> = names
                .into_iter()
                .filter(|n| !is_internal_xattr(n) && !n.starts_with("security."))
                .collect();
            v.sort();
            Outcome::Names(v)
        }),
        Op::SameInode(a, b) => {
            let ma = fs::symlink_metadata(at(a)?.path())?;
            let mb = fs::symlink_metadata(at(b)?.path())?;
            Ok(Outcome::Same((ma.dev(), ma.ino()) == (mb.dev(), mb.ino())))
        }
        Op::Write(p, d) => open_write(root, p, libc::O_WRONLY, Some((0, d))),
        Op::Append(p, d) => open_write(root, p, libc::O_WRONLY | libc::O_APPEND, Some((0, d))),
        Op::WriteAt(p, off, d) => open_write(root, p, libc::O_WRONLY, Some((off, d))),
        Op::OpenTrunc(p, d) => open_write(root, p, libc::O_WRONLY | libc::O_TRUNC, Some((0, d))),
        Op::OpenRw(p) => open_write(root, p, libc::O_RDWR, None),
        Op::Truncate(p, len) => {
            // truncate(2) through the magic link: a path-based setattr,
            // like truncate(1), not an ftruncate on an open file.
            let f = follow(p)?;
            // SAFETY: valid NUL-terminated path.
            ok(unsafe { libc::truncate(cstr(&fd_path(&f)).as_ptr(), len as libc::off_t) })
        }
        Op::Chmod(p, mode) => {
            let f = follow(p)?;
            // SAFETY: valid NUL-terminated path.
            ok(unsafe { libc::chmod(cstr(&fd_path(&f)).as_ptr(), mode) })
        }
        Op::Chown(p, uid, gid) => {
            let a = at(p)?;
            // SAFETY: valid fd and name.
            ok(unsafe {
                libc::fchownat(a.fd(), a.name.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW)
            })
        }
        Op::Utimens(p, sec, nsec) => {
            let a = at(p)?;
            let ts = [libc::timespec {
                tv_sec: sec as libc::time_t,
                tv_nsec: nsec as _,
            }; 2];
            // SAFETY: valid fd and name, a two-element timespec array.
            ok(unsafe {
                libc::utimensat(
                    a.fd(),
                    a.name.as_ptr(),
                    ts.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            })
        }
        Op::SetXattr(p, n, v) => {
            let a = at(p)?;
            // SAFETY: valid strings; `v` is readable for v.len() bytes.
            ok(unsafe {
                libc::lsetxattr(
                    cstr(&a.path()).as_ptr(),
                    cname(n).as_ptr(),
                    v.as_ptr().cast(),
                    v.len(),
                    0,
                )
            })
        }
        Op::RemoveXattr(p, n) => {
            let a = at(p)?;
            // SAFETY: valid strings.
            ok(unsafe { libc::lremovexattr(cstr(&a.path()).as_ptr(), cname(n).as_ptr()) })
        }
        Op::Mkdir(p, mode) => {
            let a = at(p)?;
            // SAFETY: valid fd and name.
            ok(unsafe { libc::mkdirat(a.fd(), a.name.as_ptr(), mode) })
        }
        Op::Rmdir(p) => {
            let a = at(p)?;
            // SAFETY: valid fd and name.
            ok(unsafe { libc::unlinkat(a.fd(), a.name.as_ptr(), libc::AT_REMOVEDIR) })
        }
        Op::Unlink(p) => {
            let a = at(p)?;
            // SAFETY: valid fd and name.
            ok(unsafe { libc::unlinkat(a.fd(), a.name.as_ptr(), 0) })
        }
        Op::Create(p, mode, d) => create(root, p, libc::O_TRUNC, mode, d),
        Op::CreateExcl(p, mode) => create(root, p, libc::O_EXCL, mode, b""),
        Op::Symlink(t, p) => {
            let a = at(p)?;
            // SAFETY: valid strings and fd.
            ok(unsafe { libc::symlinkat(cname(t).as_ptr(), a.fd(), a.name.as_ptr()) })
        }
        Op::Mkfifo(p, mode) => {
            let a = at(p)?;
            // SAFETY: valid fd and name.
            ok(unsafe { libc::mknodat(a.fd(), a.name.as_ptr(), libc::S_IFIFO | mode, 0) })
        }
        Op::MknodChr(p, mode, ma, mi) => {
            let a = at(p)?;
            // SAFETY: valid fd and name.
            ok(unsafe {
                libc::mknodat(
                    a.fd(),
                    a.name.as_ptr(),
                    libc::S_IFCHR | mode,
                    libc::makedev(ma, mi),
                )
            })
        }
        Op::Link(a, b) => {
            let (a, b) = (at(a)?, at(b)?);
            // SAFETY: valid fds and names.
            ok(unsafe { libc::linkat(a.fd(), a.name.as_ptr(), b.fd(), b.name.as_ptr(), 0) })
        }
        Op::Rename(a, b) => rename2(&at(a)?, &at(b)?, 0),
        Op::RenameNoReplace(a, b) => rename2(&at(a)?, &at(b)?, libc::RENAME_NOREPLACE),
        Op::RenameExchange(a, b) => rename2(&at(a)?, &at(b)?, libc::RENAME_EXCHANGE),
        Op::RmRf(p) => rm_rf(root, p).map(|_| Outcome::Ok),
    }
}

/// lstat: what two overlay mounts must agree on.
pub fn stat(path: &Path, since: SystemTime) -> io::Result<StatInfo> {
    let md = fs::symlink_metadata(path)?;
    let kind = Kind::of(md.file_type());
    let is_dir = kind == Kind::Dir;
    Ok(StatInfo {
        kind,
        perm: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        size: (!is_dir).then_some(md.size()),
        nlink: (!is_dir).then_some(md.nlink()),
        mtime: Mtime::of(md.mtime(), md.mtime_nsec(), since),
        rdev: matches!(kind, Kind::CharDev | Kind::BlockDev).then(|| dev_major_minor(md.rdev())),
        symlink: if kind == Kind::Symlink {
            Some(fs::read_link(path)?.to_string_lossy().into_owned())
        } else {
            None
        },
    })
}

fn open_write(
    root: &OwnedFd,
    p: &str,
    flags: i32,
    data: Option<(u64, &[u8])>,
) -> io::Result<Outcome> {
    // O_NONBLOCK: opening a fifo without a reader fails (ENXIO) instead of
    // blocking the test; no effect on regular files.
    let f = fs::File::from(open_in_root(root, p, flags | libc::O_NONBLOCK, 0)?);
    if let Some((off, d)) = data {
        if flags & libc::O_APPEND != 0 || off == 0 {
            (&f).write_all(d)?;
        } else {
            use std::os::unix::fs::FileExt;
            f.write_all_at(d, off)?;
        }
    }
    // close(2) errors (a FUSE flush) count too.
    close_checked(f)?;
    Ok(Outcome::Ok)
}

fn create(root: &OwnedFd, p: &str, extra: i32, mode: u32, data: &[u8]) -> io::Result<Outcome> {
    // O_NONBLOCK: O_CREAT without O_EXCL on an existing fifo opens it, which
    // must fail (ENXIO) rather than wait for a reader.
    let flags = libc::O_CREAT | libc::O_WRONLY | libc::O_NONBLOCK | extra;
    let mut f = fs::File::from(open_in_root(root, p, flags, mode)?);
    if !data.is_empty() {
        f.write_all(data)?;
    }
    close_checked(f)?;
    Ok(Outcome::Ok)
}

fn close_checked(f: fs::File) -> io::Result<()> {
    use std::os::fd::IntoRawFd;
    let fd = f.into_raw_fd();
    // SAFETY: `fd` was just released by its owner and is closed exactly once.
    check(unsafe { libc::close(fd) })
}

fn rename2(a: &At, b: &At, flags: libc::c_uint) -> io::Result<Outcome> {
    // SAFETY: valid fds and NUL-terminated names.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            a.fd(),
            a.name.as_ptr(),
            b.fd(),
            b.name.as_ptr(),
            flags,
        )
    };
    check(r as libc::c_int).map(|_| Outcome::Ok)
}

/// Depth-first delete in sorted order, confined to the mount like every
/// op; the first failure is returned.
fn rm_rf(root: &OwnedFd, rel: &str) -> io::Result<()> {
    let a = At::new(root, rel)?;
    let md = fs::symlink_metadata(a.path())?;
    if md.is_dir() {
        let d = open_in_root(
            root,
            rel,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )?;
        let mut names: Vec<String> = fs::read_dir(fd_path(&d))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<io::Result<_>>()?;
        names.sort();
        for n in names {
            rm_rf(
                root,
                &if rel.is_empty() {
                    n
                } else {
                    format!("{rel}/{n}")
                },
            )?;
        }
        // SAFETY: valid fd and name.
        check(unsafe { libc::unlinkat(a.fd(), a.name.as_ptr(), libc::AT_REMOVEDIR) })
    } else {
        // SAFETY: valid fd and name.
        check(unsafe { libc::unlinkat(a.fd(), a.name.as_ptr(), 0) })
    }
}

//! Thin, safe wrappers over the raw syscalls strata needs.
//!
//! This is the only module allowed to use `unsafe`. Every wrapper takes
//! borrowed fds and C strings, checks the return value and turns it into an
//! `io::Result`; nothing here decides policy.

use std::ffi::{CStr, CString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Resolution flags used for every path we open inside a layer: the walk may
/// never leave the layer's directory and never cross a symlink, so a symlink
/// stored in a layer can never make the daemon touch a file outside it.
pub const RESOLVE_IN_LAYER: u64 =
    libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS | libc::RESOLVE_NO_SYMLINKS;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn check_size(ret: isize) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// `struct open_how` of openat2(2) (libc's is non-exhaustive).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `openat2(2)` relative to `dir`.
pub fn openat2(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: i32,
    mode: u32,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: mode as u64,
        resolve,
    };
    loop {
        // SAFETY: `path` is NUL-terminated and `how` is a valid open_how of the size passed.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if ret >= 0 {
            // SAFETY: the kernel just returned this fd to us; nobody else owns it.
            return Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) });
        }
        let err = io::Error::last_os_error();
        // openat2 returns EAGAIN when a concurrent rename raced the walk.
        if err.raw_os_error() != Some(libc::EAGAIN) {
            return Err(err);
        }
    }
}

/// `openat(2)` of a path given by the user (before mounting); follows symlinks.
pub fn open_dir_path(path: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: `path` is NUL-terminated; the returned fd is checked before use.
    let fd = check(unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fstatat(2)`; pass `AT_SYMLINK_NOFOLLOW` (and `AT_EMPTY_PATH` for the fd itself).
pub fn fstatat(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `name` is NUL-terminated and `st` is a valid out-pointer for a stat.
    check(unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), st.as_mut_ptr(), flags) })?;
    // SAFETY: fstatat succeeded, so it filled the whole struct.
    Ok(unsafe { st.assume_init() })
}

/// `fstat(2)` of an open fd (O_PATH fds included).
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    fstatat(fd, c"", libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW)
}

/// `fstat(2)` of an fd given by number, e.g. one named on the command line
/// (`/dev/fd/N`): a number that is not open gives EBADF.
pub fn fstat_fd(fd: RawFd) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is a valid out-pointer for a stat; fstat only reads the fd number.
    check(unsafe { libc::fstat(fd, st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded, so it filled the whole struct.
    Ok(unsafe { st.assume_init() })
}

/// Takes over the inherited fd `fd` (once; nothing else may use it after):
/// returns a copy above stderr that is closed on exec, and closes `fd`
/// itself unless it is 0, 1 or 2, which detaching replaces anyway.
pub fn adopt_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC only duplicates the fd; a bad number gives EBADF.
    let copy = check(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) })?;
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    let copy = unsafe { OwnedFd::from_raw_fd(copy) };
    if fd > 2 {
        // SAFETY: the caller hands `fd` over and never uses its number again.
        unsafe { libc::close(fd) };
    }
    Ok(copy)
}

/// `fstatvfs(3)` of an open fd.
pub fn fstatvfs(fd: BorrowedFd<'_>) -> io::Result<libc::statvfs> {
    let mut st = MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `st` is a valid out-pointer for a statvfs.
    check(unsafe { libc::fstatvfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstatvfs succeeded, so it filled the whole struct.
    Ok(unsafe { st.assume_init() })
}

/// One `getdents64(2)` call into `buf`; returns the number of bytes filled (0 at the end).
pub fn getdents64(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            fd.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    check_size(ret as isize)
}

/// `readlinkat(2)` of `name` in `dir` (an empty name reads an O_PATH symlink fd).
pub fn readlinkat(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: `name` is NUL-terminated and `buf` is valid for `buf.len()` bytes.
    let len = check_size(unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })?;
    buf.truncate(len);
    Ok(buf)
}

/// The `/proc/self/fd/N` name of an fd: the xattr syscalls have no `*at` form
/// before Linux 6.13, and an O_PATH fd (the only kind we may hold for a symlink
/// or a device node) works only through this name.
fn proc_fd_path(fd: BorrowedFd<'_>) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL in a number")
}

/// Reads a variable-sized value: asks for the size first, retries on ERANGE.
fn read_sized(mut call: impl FnMut(&mut [u8]) -> isize) -> io::Result<Vec<u8>> {
    loop {
        let size = check_size(call(&mut []))?;
        let mut buf = vec![0u8; size];
        match check_size(call(&mut buf)) {
            Ok(len) => {
                buf.truncate(len);
                return Ok(buf);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// `getxattr(2)` of the inode behind `fd` (any fd, O_PATH included).
pub fn fgetxattr(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    let path = proc_fd_path(fd);
    read_sized(|buf| {
        // SAFETY: both strings are NUL-terminated; `buf` is valid for `buf.len()` bytes.
        unsafe {
            libc::getxattr(
                path.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        }
    })
}

/// `listxattr(2)` of the inode behind `fd`: the raw NUL-separated name list.
/// The xattr names of `name` (one component, never `..`) in directory
/// `dir`, not following a symlink: one call where they fit in 4 KiB.
pub fn llistxattr_in(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    if name.to_bytes().contains(&b'/') || name.to_bytes() == b".." {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut path = proc_fd_path(dir).into_bytes();
    path.push(b'/');
    path.extend_from_slice(name.to_bytes());
    let path = CString::new(path).expect("no NUL");
    let mut buf = vec![0u8; 4096];
    // SAFETY: `path` is NUL-terminated; `buf` is valid for `buf.len()` bytes.
    let ret = unsafe { libc::llistxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    match check_size(ret) {
        Ok(len) => {
            buf.truncate(len);
            Ok(buf)
        }
        Err(e) if e.raw_os_error() == Some(libc::ERANGE) => read_sized(|buf| {
            // SAFETY: as above.
            unsafe { libc::llistxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) }
        }),
        Err(e) => Err(e),
    }
}

pub fn flistxattr(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let path = proc_fd_path(fd);
    read_sized(|buf| {
        // SAFETY: `path` is NUL-terminated; `buf` is valid for `buf.len()` bytes.
        unsafe { libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) }
    })
}

/// `pread(2)` into `buf`; returns the bytes read (short at end of file).
pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
        let ret = unsafe {
            libc::pread(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                offset as libc::off_t,
            )
        };
        match check_size(ret) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

pub fn geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

pub fn getegid() -> u32 {
    // SAFETY: getegid has no preconditions and cannot fail.
    unsafe { libc::getegid() }
}

/// Raises the soft open-file limit to the hard limit: the daemon holds one fd
/// per open file and per layer.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = MaybeUninit::<libc::rlimit>::uninit();
    // SAFETY: `lim` is a valid out-pointer for an rlimit.
    check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, lim.as_mut_ptr()) })?;
    // SAFETY: getrlimit succeeded, so it filled the struct.
    let mut lim = unsafe { lim.assume_init() };
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: `lim` is a valid rlimit.
    check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) })?;
    Ok(lim.rlim_cur)
}

/// What `fork` returned in this process.
pub enum Forked {
    Parent,
    Child,
}

/// `fork(2)`. Call only while the process has a single thread.
pub fn fork() -> io::Result<Forked> {
    // SAFETY: the caller guarantees no other thread exists, so the child
    // inherits no lock held by a thread that does not exist in it.
    match check(unsafe { libc::fork() })? {
        0 => Ok(Forked::Child),
        _ => Ok(Forked::Parent),
    }
}

/// Ends the process at once without running destructors or atexit handlers
/// (the parent of a daemonised mount must not unmount what the child serves).
pub fn exit_immediately(code: i32) -> ! {
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(code) }
}

/// The fds above stderr that the process was started with (call first
/// thing, before opening any). The listing's own fd is closed again by the
/// time the list is checked, so it drops out.
pub fn inherited_fds() -> Vec<RawFd> {
    let listed: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|&fd| fd > 2)
            .collect(),
        Err(_) => Vec::new(),
    };
    listed
        .into_iter()
        // SAFETY: F_GETFD only asks whether the fd is open.
        .filter(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0)
        .collect()
}

/// Detaches the daemon: new session, working directory `/` (so it pins no
/// directory the caller may want to unmount), stdin/stdout/stderr on
/// /dev/null and every other fd it inherited closed (so a caller that reads
/// a pipe it gave us until EOF is not kept waiting).
pub fn detach_from_caller(inherited: &[RawFd]) -> io::Result<()> {
    for &fd in inherited {
        // SAFETY: `fd` was inherited, and nothing of ours ever used its number.
        unsafe { libc::close(fd) };
    }
    // SAFETY: setsid has no preconditions; failure (already a leader) is harmless.
    unsafe { libc::setsid() };
    std::env::set_current_dir("/")?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for target in 0..=2 {
        // SAFETY: both fds are open; dup2 atomically replaces `target`.
        check(unsafe { libc::dup2(null.as_raw_fd(), target) })?;
    }
    Ok(())
}

/// `umount2(path, MNT_DETACH)`: the mount leaves the namespace now and
/// goes away once its last user is done.
pub fn umount_lazy(path: &CStr) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated.
    check(unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) }).map(drop)
}

/// Moves the calling process, which must have a single thread, into a
/// private copy of its mount namespace (no propagation back); returns the
/// (device, inode) of the namespace it left. (Not an fd: that would keep
/// the namespace alive.)
pub fn leave_mount_namespace() -> io::Result<(u64, u64)> {
    let home = std::fs::metadata("/proc/self/ns/mnt")?;
    // SAFETY: unshare takes flags only; a single-threaded caller (checked by
    // the kernel too) may change its own namespace.
    check(unsafe { libc::unshare(libc::CLONE_NEWNS) })?;
    // SAFETY: null source/type/data are allowed for a propagation change;
    // the target is a NUL-terminated literal.
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    })?;
    use std::os::unix::fs::MetadataExt;
    Ok((home.dev(), home.ino()))
}

/// `umount2(path, flags)` in the mount namespace `ns`, from a forked child
/// (a thread of a multithreaded process cannot join a mount namespace).
pub fn umount_in_namespace(ns: BorrowedFd<'_>, path: &CStr, flags: i32) -> io::Result<()> {
    // SAFETY: the child only makes raw syscalls (setns, umount2, _exit),
    // which are async-signal-safe, so no lock of another thread matters.
    let pid = check(unsafe { libc::fork() })?;
    if pid == 0 {
        // SAFETY: `ns` is an open namespace fd; `path` is NUL-terminated.
        let code = unsafe {
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) != 0
                || libc::umount2(path.as_ptr(), flags) != 0
            {
                *libc::__errno_location()
            } else {
                0
            }
        };
        // SAFETY: _exit has no preconditions.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer; `pid` is our child.
    check(unsafe { libc::waitpid(pid, &mut status, 0) })?;
    match libc::WEXITSTATUS(status) {
        0 if libc::WIFEXITED(status) => Ok(()),
        errno if libc::WIFEXITED(status) => Err(io::Error::from_raw_os_error(errno)),
        _ => Err(io::Error::other("the unmount helper was killed")),
    }
}

fn daemon_signals() -> libc::sigset_t {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set it is given; sigaddset takes valid signals.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1] {
            libc::sigaddset(set.as_mut_ptr(), sig);
        }
        set.assume_init()
    }
}

/// Blocks SIGTERM, SIGINT, SIGHUP and SIGUSR1 in this thread and in every
/// thread it starts afterwards, so that only [`wait_for_signal`] gets them.
pub fn block_daemon_signals() -> io::Result<()> {
    let set = daemon_signals();
    // SAFETY: `set` is an initialised sigset_t.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    Ok(())
}

/// Waits until SIGTERM, SIGINT, SIGHUP or SIGUSR1 arrives; returns it.
pub fn wait_for_signal() -> i32 {
    let set = daemon_signals();
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is initialised and `sig` is a valid out-pointer.
    unsafe { libc::sigwait(&set, &mut sig) };
    sig
}

// ---------------------------------------------------------------------------
// Namespace and metadata changes (the upper layer and the workdir only).
// ---------------------------------------------------------------------------

pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

pub fn mknodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32, rdev: u64) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, rdev) }).map(drop)
}

pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

/// `linkat(2)` without following a symlink at the source.
pub fn linkat(
    old_dir: BorrowedFd<'_>,
    old_name: &CStr,
    new_dir: BorrowedFd<'_>,
    new_name: &CStr,
) -> io::Result<()> {
    // SAFETY: both names are NUL-terminated.
    check(unsafe {
        libc::linkat(
            old_dir.as_raw_fd(),
            old_name.as_ptr(),
            new_dir.as_raw_fd(),
            new_name.as_ptr(),
            0,
        )
    })
    .map(drop)
}

/// `unlinkat(2)`; `AT_REMOVEDIR` in `flags` removes a directory.
pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

/// `renameat2(2)` with `RENAME_*` flags.
pub fn renameat2(
    old_dir: BorrowedFd<'_>,
    old_name: &CStr,
    new_dir: BorrowedFd<'_>,
    new_name: &CStr,
    flags: u32,
) -> io::Result<()> {
    // SAFETY: both names are NUL-terminated.
    check(unsafe {
        libc::renameat2(
            old_dir.as_raw_fd(),
            old_name.as_ptr(),
            new_dir.as_raw_fd(),
            new_name.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

/// `fchownat(2)` of `name` in `dir` (an empty name with `AT_EMPTY_PATH`
/// changes the fd itself), never following a symlink.
pub fn fchownat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    uid: u32,
    gid: u32,
    flags: i32,
) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated.
    check(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            name.as_ptr(),
            uid,
            gid,
            flags | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// `chmod` of the inode behind `fd` (O_PATH fds included, via /proc).
pub fn fchmod_any(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    let path = proc_fd_path(fd);
    // SAFETY: `path` is NUL-terminated.
    check(unsafe { libc::chmod(path.as_ptr(), mode) }).map(drop)
}

/// `utimensat(2)` of the inode behind `fd` (O_PATH fds included); `None`
/// leaves a time unchanged, `Some(None)` sets it to now.
pub fn futimens_any(
    fd: BorrowedFd<'_>,
    atime: Option<Option<(i64, u32)>>,
    mtime: Option<Option<(i64, u32)>>,
) -> io::Result<()> {
    let spec = |t: Option<Option<(i64, u32)>>| match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(None) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(Some((sec, nsec))) => libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec as i64,
        },
    };
    let times = [spec(atime), spec(mtime)];
    // SAFETY: the empty name is NUL-terminated and `times` holds two timespecs.
    check(unsafe {
        libc::utimensat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            times.as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// `setxattr(2)` on the inode behind `fd` (O_PATH fds included).
pub fn fsetxattr_any(fd: BorrowedFd<'_>, name: &CStr, value: &[u8], flags: i32) -> io::Result<()> {
    let path = proc_fd_path(fd);
    // SAFETY: both strings are NUL-terminated; `value` is valid for its length.
    check(unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
    .map(drop)
}

/// `removexattr(2)` on the inode behind `fd` (O_PATH fds included).
pub fn fremovexattr_any(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let path = proc_fd_path(fd);
    // SAFETY: both strings are NUL-terminated.
    check(unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) }).map(drop)
}

/// `pwrite(2)` of all of `data` at `offset` (retried on short writes).
pub fn pwrite_all(fd: BorrowedFd<'_>, mut data: &[u8], mut offset: u64) -> io::Result<()> {
    while !data.is_empty() {
        // SAFETY: `data` is valid for reads of `data.len()` bytes.
        let ret = unsafe {
            libc::pwrite(
                fd.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                offset as libc::off_t,
            )
        };
        match check_size(ret) {
            Ok(n) => {
                data = &data[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub fn ftruncate(fd: BorrowedFd<'_>, size: u64) -> io::Result<()> {
    // SAFETY: no pointers are involved.
    check(unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) }).map(drop)
}

pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: no pointers are involved.
    check(unsafe {
        libc::fallocate(
            fd.as_raw_fd(),
            mode,
            offset as libc::off_t,
            len as libc::off_t,
        )
    })
    .map(drop)
}

/// Opens the object behind `fd` (an O_PATH fd included) anew with `flags`,
/// through its `/proc/self/fd` name: the way to a file that has no name left.
/// `flock(fd, LOCK_EX | LOCK_NB)`: EWOULDBLOCK while another holds it.
pub fn try_lock_exclusive(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: flock takes an fd and flags only.
    check(unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }).map(drop)
}

pub fn reopen(fd: BorrowedFd<'_>, flags: i32) -> io::Result<OwnedFd> {
    let path = proc_fd_path(fd);
    // SAFETY: `path` is NUL-terminated; the returned fd is checked before use.
    let ret = check(unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) })?;
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(ret) })
}

pub fn fsync(fd: BorrowedFd<'_>, data_only: bool) -> io::Result<()> {
    // SAFETY: no pointers are involved.
    check(unsafe {
        if data_only {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    })
    .map(drop)
}

/// `lseek(2)`; `Ok(None)` for ENXIO (no data or hole past `offset`).
pub fn lseek(fd: BorrowedFd<'_>, offset: u64, whence: i32) -> io::Result<Option<u64>> {
    // SAFETY: no pointers are involved.
    let ret = unsafe { libc::lseek(fd.as_raw_fd(), offset as libc::off_t, whence) };
    if ret < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(ret as u64))
}

/// One `copy_file_range(2)` call between explicit offsets.
pub fn copy_file_range(
    src: BorrowedFd<'_>,
    src_off: u64,
    dst: BorrowedFd<'_>,
    dst_off: u64,
    len: usize,
) -> io::Result<usize> {
    let mut s = src_off as libc::loff_t;
    let mut d = dst_off as libc::loff_t;
    // SAFETY: the offsets are valid out-pointers for the duration of the call.
    check_size(unsafe {
        libc::copy_file_range(src.as_raw_fd(), &mut s, dst.as_raw_fd(), &mut d, len, 0)
    } as isize)
}

/// This thread creates files as `uid:gid` (the kernel's fsuid/fsgid, per
/// thread) until the guard is dropped. Leaving root drops the thread's
/// filesystem capabilities for as long; without the privilege to switch,
/// nothing changes (the caller checks the owner it got).
pub struct FsIds {
    uid: u32,
    gid: u32,
}

impl FsIds {
    pub fn switch(uid: u32, gid: u32) -> FsIds {
        // SAFETY: setfsgid/setfsuid take plain ids and only change this thread's credentials.
        let (old_gid, old_uid) = unsafe { (libc::setfsgid(gid), libc::setfsuid(uid)) };
        FsIds {
            uid: old_uid as u32,
            gid: old_gid as u32,
        }
    }
}

impl Drop for FsIds {
    fn drop(&mut self) {
        // SAFETY: as above; restores the ids this thread had.
        unsafe {
            libc::setfsuid(self.uid);
            libc::setfsgid(self.gid);
        }
    }
}

/// The umask of the daemon is 0 so that modes asked for are the modes set.
pub fn clear_umask() {
    // SAFETY: umask has no preconditions and cannot fail.
    unsafe { libc::umask(0) };
}

/// Maps `file` (opened read-only) whole, read-only: the layer tars of
/// `strata mount-image`.
pub fn map_read_only(file: &std::fs::File) -> io::Result<memmap2::Mmap> {
    // SAFETY: a private read-only mapping of a file strata opened read-only
    // and never writes; like every layer, it must not change under a mount
    // (see README: "Lower layers must not change under a mount").
    unsafe { memmap2::Mmap::map(file) }
}

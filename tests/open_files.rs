//! Differential tests of what open file descriptors see while the names
//! they were opened by are copied up, deleted, replaced and recreated; of
//! the calls that work on an open file (O_APPEND, fallocate,
//! copy_file_range, SEEK_DATA/SEEK_HOLE, OFD and flock locks); of sparse
//! and capability-carrying copy-ups; and of an unprivileged user's view
//! (umask, set-group-id directories, EACCES/EPERM).
//!
//! Each scenario runs, with the same fds held in the same order, on kernel
//! overlayfs (`redirect_dir=on,index=on`, over the kernel twin of the
//! fixture) and on strata over both fixture forms, each with a fresh upper.
//! Every syscall's outcome is recorded as a line (the data read, the mode
//! and link count `fstat` shows, the errno); the lines must be equal, and so
//! must the merged trees afterwards, before and after a remount, and the
//! upper directories.
//!
//! Needs root, /dev/fuse, kernel overlayfs, fusermount3 and setfattr.

mod common;

use std::ffi::CString;
use std::fs::{self, File, FileTimes, OpenOptions, Permissions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::*;

/// What one scenario did, a line per call.
#[derive(Default)]
struct Log(Vec<String>);

impl Log {
    fn put<T: std::fmt::Debug>(&mut self, what: &str, r: io::Result<T>) {
        self.0.push(match r {
            Ok(v) => format!("{what}: {v:?}"),
            Err(e) => format!("{what}: errno {}", e.raw_os_error().unwrap_or(-1)),
        });
    }

    /// The content of an open file, read from its start.
    fn read_all(&mut self, what: &str, f: &mut File) {
        let r = f.seek(SeekFrom::Start(0)).and_then(|_| {
            let mut s = String::new();
            f.read_to_string(&mut s).map(|_| s)
        });
        self.put(what, r);
    }

    /// mode, link count and size of an open file.
    fn fstat(&mut self, what: &str, f: &File) {
        let r = f
            .metadata()
            .map(|m| format!("mode {:o} nlink {} size {}", m.mode(), m.nlink(), m.size()));
        self.put(what, r);
    }

    /// mode and size only (see `unlinked_lower_file_has_no_links`).
    fn fstat_no_nlink(&mut self, what: &str, f: &File) {
        let r = f
            .metadata()
            .map(|m| format!("mode {:o} size {}", m.mode(), m.size()));
        self.put(what, r);
    }

    fn stat(&mut self, what: &str, p: &Path) {
        let r = fs::symlink_metadata(p)
            .map(|m| format!("mode {:o} nlink {} size {}", m.mode(), m.nlink(), m.size()));
        self.put(what, r);
    }
}

fn fsetxattr(f: &File, name: &str, value: &[u8]) -> io::Result<()> {
    let n = CString::new(name).unwrap();
    // SAFETY: valid fd, NUL-terminated name, value valid for its length.
    let r = unsafe {
        libc::fsetxattr(
            f.as_raw_fd(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn fgetxattr(f: &File, name: &str) -> io::Result<String> {
    let n = CString::new(name).unwrap();
    let mut buf = [0u8; 256];
    // SAFETY: valid fd, NUL-terminated name, buf valid for its length.
    let r = unsafe {
        libc::fgetxattr(
            f.as_raw_fd(),
            n.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(String::from_utf8_lossy(&buf[..r as usize]).into_owned())
}

fn write_file(p: &Path, data: &[u8]) -> io::Result<()> {
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .create(true)
        .mode(0o644)
        .open(p)?
        .write_all(data)
}

fn ro(p: &Path) -> File {
    File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
}

fn rw(p: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
}

const FIXED_TIME: Duration = Duration::from_secs(1_600_000_000);

type Scenario = fn(&Path, &mut Log);

/// Runs `scenario` on the kernel and on strata over both fixture forms and
/// returns every difference.
fn differences(test: &str, scenario: Scenario) -> Vec<String> {
    let fx = prepare_fixture();
    let since = SystemTime::now() - Duration::from_secs(2);
    let kernel_options = ["redirect_dir=on", "index=on"];
    let run = |form: Form, kernel: bool, options: &[&str]| {
        let uw = UpperWork::new();
        let mut spec = MountSpec::fixture(fx.path(), form).with_upper(&uw);
        for o in options {
            spec = spec.with_option(o);
        }
        let mut log = Log::default();
        let walk_of = |root: &Path| {
            let mut w = walk(root);
            mask_recent_mtimes(&mut w, since);
            w
        };
        let (before, after) = if kernel {
            let m = KernelOverlay::mount(&spec);
            scenario(m.path(), &mut log);
            let before = walk_of(m.path());
            m.unmount().unwrap();
            let m = KernelOverlay::mount(&spec);
            let after = walk_of(m.path());
            m.unmount().unwrap();
            (before, after)
        } else {
            let m = StrataMount::mount(&spec);
            scenario(m.path(), &mut log);
            let before = walk_of(m.path());
            m.unmount().unwrap();
            let m = StrataMount::mount(&spec);
            let after = walk_of(m.path());
            m.unmount().unwrap();
            (before, after)
        };
        (log.0, before, after, upper_walk(&uw.upper), uw)
    };
    let (want_log, want, want_after, want_upper, _kuw) = run(Form::Kernel, true, &kernel_options);
    if std::env::var_os("OPEN_FILES_TRACE").is_some() {
        eprintln!("[{test}] kernel: {want_log:#?}");
    }
    assert!(
        !want_log.is_empty(),
        "{test}: the scenario recorded nothing"
    );
    let mut problems = Vec::new();
    // Upper files go through FUSE passthrough by default; once more with
    // every byte through the daemon.
    for (form, options) in [
        (Form::Kernel, &[][..]),
        (Form::Oci, &[][..]),
        (Form::Kernel, &["passthrough=0"][..]),
    ] {
        let name = format!("strata({}{})", form.dir_name(), options.join(","));
        let (log, got, got_after, got_upper, _uw) = run(form, false, options);
        for (i, (w, g)) in want_log.iter().zip(&log).enumerate() {
            if w != g {
                problems.push(format!("{name}: call #{i}: kernel {w:?}, strata {g:?}"));
            }
        }
        if want_log.len() != log.len() {
            problems.push(format!(
                "{name}: {} calls, kernel {}",
                log.len(),
                want_log.len()
            ));
        }
        for p in equivalence_problems("kernel", &want, &name, &got) {
            problems.push(format!("{name}: merged view: {p}"));
        }
        for p in equivalence_problems("kernel", &want_after, &name, &got_after) {
            problems.push(format!("{name}: after remount: {p}"));
        }
        for p in upper_diff("kernel", &want_upper, &name, &got_upper, since, &|_| true) {
            problems.push(format!("{name}: {p}"));
        }
    }
    problems
}

fn check(test: &str, scenario: Scenario) {
    assert_no_problems(test, &differences(test, scenario));
}

/// A reader that opened a lower file before another fd wrote it (copy-up)
/// reads the new content, also after the name is deleted and a different
/// file is created under it.
#[test]
fn reader_opened_before_copy_up() {
    check("reader_opened_before_copy_up", |root, log| {
        let p = root.join("etc/passwd");
        let mut reader = ro(&p);
        log.put("write", write_file(&p, b"COPIED\n"));
        log.read_all("read old fd", &mut reader);
        log.put("unlink", fs::remove_file(&p));
        log.read_all("read old fd after unlink", &mut reader);
        log.fstat("fstat old fd after unlink", &reader);
        log.put("recreate", write_file(&p, b"OTHER\n"));
        log.read_all("read old fd after recreate", &mut reader);
        let mut fresh = ro(&p);
        log.read_all("read new name", &mut fresh);
    });
}

/// The same without a read in between: the first read through the old fd
/// comes after its name was deleted and recreated.
#[test]
fn reader_first_reads_after_recreate() {
    check("reader_first_reads_after_recreate", |root, log| {
        let p = root.join("etc/passwd");
        let mut reader = ro(&p);
        log.put("write", write_file(&p, b"COPIED\n"));
        log.put("unlink", fs::remove_file(&p));
        log.put("recreate", write_file(&p, b"OTHER\n"));
        log.read_all("read old fd", &mut reader);
        log.fstat("fstat old fd", &reader);
    });
}

/// Metadata calls through the fd of a file whose last name is gone act on
/// that file, never on what later takes its name.
#[test]
fn metadata_of_unlinked_open_file() {
    check("metadata_of_unlinked_open_file", |root, log| {
        let p = root.join("etc/group");
        let f = rw(&p);
        log.put("unlink", fs::remove_file(&p));
        log.fstat("fstat after unlink", &f);
        log.put("fchmod", f.set_permissions(Permissions::from_mode(0o611)));
        log.fstat("fstat after fchmod", &f);
        log.put("fsetxattr", fsetxattr(&f, "user.k", b"v"));
        log.put("fgetxattr", fgetxattr(&f, "user.k"));
        log.put("ftruncate", f.set_len(3));
        log.fstat("fstat after ftruncate", &f);
        let times = FileTimes::new().set_modified(SystemTime::UNIX_EPOCH + FIXED_TIME);
        log.put("futimens", f.set_times(times));
        log.put(
            "fstat mtime",
            f.metadata().map(|m| (m.mtime(), m.mtime_nsec())),
        );
        log.put("recreate", write_file(&p, b"new\n"));
        log.put(
            "fchmod old fd",
            f.set_permissions(Permissions::from_mode(0o600)),
        );
        log.stat("stat new name", &p);
        log.fstat("fstat old fd", &f);
        log.put("fgetxattr old fd", fgetxattr(&f, "user.k"));
    });
}

/// The same when the open file's name is taken by a rename over it.
#[test]
fn metadata_of_open_file_renamed_over() {
    check("metadata_of_open_file_renamed_over", |root, log| {
        let target = root.join("etc/hostname");
        let f = rw(&target);
        log.put("rename over", fs::rename(root.join("etc/passwd"), &target));
        log.fstat("fstat after rename", &f);
        log.put("fchmod", f.set_permissions(Permissions::from_mode(0o600)));
        log.fstat("fstat after fchmod", &f);
        log.put("fsetxattr", fsetxattr(&f, "user.k", b"v"));
        log.stat("stat the name", &target);
        let mut named = ro(&target);
        log.read_all("read the name", &mut named);
    });
}

/// A file created through the mount, held open, deleted, recreated.
#[test]
fn created_file_held_across_recreate() {
    check("created_file_held_across_recreate", |root, log| {
        let p = root.join("usr/share/app/new.txt");
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(&p)
            .unwrap();
        log.put("write", f.write_all(b"first\n"));
        log.put("unlink", fs::remove_file(&p));
        log.put("recreate", write_file(&p, b"second\n"));
        log.put(
            "fchmod old fd",
            f.set_permissions(Permissions::from_mode(0o600)),
        );
        log.put("fsetxattr old fd", fsetxattr(&f, "user.k", b"old"));
        log.put("append old fd", f.write_all(b"more\n"));
        log.read_all("read old fd", &mut f);
        log.fstat("fstat old fd", &f);
        log.stat("stat new name", &p);
        let mut named = ro(&p);
        log.read_all("read new name", &mut named);
    });
}

/// A lower file opened read-only, then deleted (a whiteout: nothing was
/// copied up) and recreated: the old fd still reads the lower file, and a
/// metadata change through it fails as in the kernel (EEXIST: the copy-up
/// finds the new name in its place) and changes nothing.
#[test]
fn lower_file_held_after_delete() {
    check("lower_file_held_after_delete", |root, log| {
        let p = root.join("etc/os-release");
        let mut f = ro(&p);
        log.put("unlink", fs::remove_file(&p));
        log.read_all("read old fd", &mut f);
        log.fstat_no_nlink("fstat old fd", &f);
        log.put("recreate", write_file(&p, b"new\n"));
        log.read_all("read old fd after recreate", &mut f);
        log.put(
            "fchmod old fd",
            f.set_permissions(Permissions::from_mode(0o600)),
        );
        log.fstat_no_nlink("fstat old fd after fchmod", &f);
        log.stat("stat new name", &p);
    });
}

/// The one deliberate difference: an open lower file whose only name was
/// deleted reports `st_nlink` 0, as POSIX says and as an upper file does
/// in both; kernel overlayfs keeps showing the lower inode's count (1).
#[test]
fn unlinked_lower_file_has_no_links() {
    let fx = prepare_fixture();
    let uw = UpperWork::new();
    let m = StrataMount::mount(&MountSpec::fixture(fx.path(), Form::Kernel).with_upper(&uw));
    let p = m.path().join("etc/os-release");
    let f = ro(&p);
    fs::remove_file(&p).unwrap();
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    drop(f);
    m.unmount().unwrap();
}

/// File capabilities survive a copy-up (chown clears `security.capability`,
/// so the owner is set before the xattrs) and are dropped by a write, as in
/// the kernel.
#[test]
fn copy_up_keeps_file_capabilities() {
    // cap_net_raw+ep, VFS_CAP_REVISION_2 little-endian.
    const CAP: [u8; 20] = [
        0x01, 0, 0, 0x02, 0x00, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let layers = tempdir();
    let lower = layers.path().join("lower");
    fs::create_dir(&lower).unwrap();
    for name in ["written", "touched"] {
        let p = lower.join(name);
        fs::write(&p, b"#!/bin/true\n").unwrap();
        std::os::unix::fs::chown(&p, Some(1000), Some(1000)).unwrap();
        let (c, n) = (
            CString::new(p.as_os_str().as_encoded_bytes()).unwrap(),
            CString::new("security.capability").unwrap(),
        );
        // SAFETY: NUL-terminated path and name; CAP is valid for its length.
        let r =
            unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), CAP.as_ptr().cast(), CAP.len(), 0) };
        assert_eq!(r, 0, "setxattr: {}", io::Error::last_os_error());
    }
    let capability = |p: &Path| lgetxattr(p, "security.capability").map_err(|e| e.raw_os_error());
    let run = |kernel: bool| -> Vec<String> {
        let uw = UpperWork::new();
        let spec = MountSpec::new(vec![lower.clone()]).with_upper(&uw);
        let mut out = Vec::new();
        let mut act = |root: &Path| {
            let written = root.join("written");
            let mut f = OpenOptions::new().append(true).open(&written).unwrap();
            f.write_all(b"# more\n").unwrap();
            drop(f);
            let times = FileTimes::new().set_modified(SystemTime::UNIX_EPOCH + FIXED_TIME);
            File::open(root.join("touched"))
                .unwrap()
                .set_times(times)
                .unwrap();
            for name in ["written", "touched"] {
                out.push(format!("merged {name}: {:?}", capability(&root.join(name))));
                out.push(format!(
                    "upper {name}: {:?}",
                    capability(&uw.upper.join(name))
                ));
            }
        };
        if kernel {
            let m = KernelOverlay::mount(&spec);
            act(m.path());
            m.unmount().unwrap();
        } else {
            let m = StrataMount::mount(&spec);
            act(m.path());
            m.unmount().unwrap();
        }
        out
    };
    let want = run(true);
    // A write drops the capability (file_remove_privs), a copy-up does not.
    assert!(
        want.iter()
            .filter(|l| l.contains("touched"))
            .all(|l| l.contains(&format!("{:?}", CAP.to_vec()))),
        "the kernel lost a capability: {want:#?}"
    );
    assert_eq!(run(false), want);
}

fn fallocate(f: &File, mode: i32, offset: i64, len: i64) -> io::Result<()> {
    // SAFETY: valid fd; no pointers.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), mode, offset, len) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn seek(f: &File, offset: i64, whence: i32) -> io::Result<i64> {
    // SAFETY: valid fd; no pointers.
    let r = unsafe { libc::lseek(f.as_raw_fd(), offset, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// An OFD (open file description) byte-range lock: POSIX-style locks that
/// conflict between two opens within one process.
fn ofd_lock(f: &File, cmd: i32, kind: i32) -> io::Result<i32> {
    // SAFETY: an all-zero flock is a valid value of this plain C struct.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_len = 0;
    // SAFETY: valid fd; `fl` is a valid flock for F_OFD_* commands.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), cmd, &mut fl) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(fl.l_type as i32)
    }
}

fn flock(f: &File, how: i32) -> io::Result<()> {
    // SAFETY: valid fd; no pointers.
    let r = unsafe { libc::flock(f.as_raw_fd(), how) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// O_APPEND through two fds, fallocate (allocate, punch, extend),
/// copy_file_range from a lower file, OFD and flock locks, as the kernel.
#[test]
fn file_operations() {
    check("file_operations", |root, log| {
        let p = root.join("etc/hostname");
        let open_append = || OpenOptions::new().append(true).open(&p);
        let (mut a, mut b) = (open_append().unwrap(), open_append().unwrap());
        log.put("append a", a.write_all(b"from a\n"));
        log.put("append b", b.write_all(b"from b\n"));
        log.put("append a again", a.write_all(b"a again\n"));
        log.read_all("read", &mut ro(&p));

        let p = root.join("etc/passwd");
        let mut f = rw(&p);
        log.put(
            "fallocate keep size",
            fallocate(&f, libc::FALLOC_FL_KEEP_SIZE, 0, 1 << 20),
        );
        log.fstat("fstat", &f);
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        log.put("fallocate punch", fallocate(&f, punch, 0, 8));
        log.put("fallocate extend", fallocate(&f, 0, 0, 8192));
        log.fstat("fstat", &f);
        log.read_all("read", &mut f);

        let src = ro(&root.join("usr/bin/busybox"));
        let mut dst = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(root.join("usr/bin/copy"))
            .unwrap();
        let (mut off_in, mut off_out) = (4i64, 0i64);
        // SAFETY: valid fds and offset pointers.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                &mut off_out,
                20,
                0,
            )
        };
        log.put("copy_file_range", Ok(n));
        log.read_all("read copy", &mut dst);

        let lock_path = root.join("etc/group");
        let (l1, l2) = (rw(&lock_path), rw(&lock_path));
        log.put(
            "ofd lock 1",
            ofd_lock(&l1, libc::F_OFD_SETLK, libc::F_WRLCK),
        );
        log.put(
            "ofd lock 2",
            ofd_lock(&l2, libc::F_OFD_SETLK, libc::F_WRLCK),
        );
        log.put(
            "ofd getlk 2",
            ofd_lock(&l2, libc::F_OFD_GETLK, libc::F_WRLCK),
        );
        log.put(
            "ofd unlock 1",
            ofd_lock(&l1, libc::F_OFD_SETLK, libc::F_UNLCK),
        );
        log.put(
            "ofd lock 2 again",
            ofd_lock(&l2, libc::F_OFD_SETLK, libc::F_WRLCK),
        );
        let (k1, k2) = (ro(&lock_path), ro(&lock_path));
        log.put("flock 1", flock(&k1, libc::LOCK_EX | libc::LOCK_NB));
        log.put("flock 2", flock(&k2, libc::LOCK_EX | libc::LOCK_NB));
        log.put("flock 2 shared", flock(&k2, libc::LOCK_SH | libc::LOCK_NB));
        log.put("unlock 1", flock(&k1, libc::LOCK_UN));
        log.put("flock 2 again", flock(&k2, libc::LOCK_EX | libc::LOCK_NB));
    });
}

/// A sparse lower file (64 MiB, 8 KiB of data) stays sparse when copied
/// up: SEEK_DATA/SEEK_HOLE find the data through the mount, and neither
/// upper copy holds more than 4 MiB of blocks.
#[test]
fn sparse_copy_up() {
    const SIZE: u64 = 64 << 20;
    let layers = tempdir();
    let lower = layers.path().join("lower");
    fs::create_dir(&lower).unwrap();
    {
        let mut f = File::create(lower.join("sparse")).unwrap();
        f.write_all(b"head").unwrap();
        f.seek(SeekFrom::Start(SIZE - 4096)).unwrap();
        f.write_all(b"tail").unwrap();
        f.set_len(SIZE).unwrap();
    }
    let run = |kernel: bool| -> Vec<String> {
        let uw = UpperWork::new();
        let spec = MountSpec::new(vec![lower.clone()]).with_upper(&uw);
        let mut log = Log::default();
        let mut act = |root: &Path| {
            let p = root.join("sparse");
            let mut f = rw(&p);
            log.put("write", f.write_all(b"HEAD"));
            log.put("data from 0", seek(&f, 0, libc::SEEK_DATA));
            // The kernel copies in 1 MiB chunks (a hole starts at 1 MiB in
            // its copy, at 4 KiB in strata's): only "early" is compared.
            log.put(
                "hole early",
                seek(&f, 0, libc::SEEK_HOLE).map(|o| o <= 1 << 20),
            );
            log.put("data from 1M", seek(&f, 1 << 20, libc::SEEK_DATA));
            log.put("hole at end", seek(&f, SIZE as i64 - 1, libc::SEEK_HOLE));
            let mut tail = [0u8; 4];
            f.seek(SeekFrom::Start(SIZE - 4096)).unwrap();
            log.put("read tail", f.read_exact(&mut tail).map(|()| tail));
            let small = |m: fs::Metadata| m.blocks() * 512 < (4 << 20);
            log.put(
                "upper copy is sparse",
                fs::metadata(uw.upper.join("sparse")).map(small),
            );
            log.put("merged file is sparse", fs::metadata(&p).map(small));
        };
        if kernel {
            let m = KernelOverlay::mount(&spec);
            act(m.path());
            m.unmount().unwrap();
        } else {
            let m = StrataMount::mount(&spec);
            act(m.path());
            m.unmount().unwrap();
        }
        log.0
    };
    let want = run(true);
    assert!(
        want.iter().any(|l| l == "upper copy is sparse: true"),
        "{want:#?}"
    );
    assert_eq!(run(false), want);
}

/// An unprivileged user (uid 1000, `setpriv`) working in the mount: the
/// umask, set-group-id directories, ownership of new files, set-user-id
/// cleared by a write, and every EACCES/EPERM it meets (chown, chmod of
/// another's file, writing a read-only file, deleting in a sticky
/// directory) as in the kernel.
#[test]
fn unprivileged_user() {
    check("unprivileged_user", |root, log| {
        // Set up as root: a set-group-id directory, a user-owned dir.
        let sg = root.join("home/sgid");
        fs::create_dir(&sg).unwrap();
        std::os::unix::fs::chown(&sg, Some(0), Some(42)).unwrap();
        fs::set_permissions(&sg, Permissions::from_mode(0o2777)).unwrap();
        let script = r#"
            umask 027
            r() { out=$("$@" 2>&1); echo "$* => $? ${out##*: }"; }
            r mkdir home/sgid/d
            r touch home/sgid/f
            r mkdir home/user/mine
            r touch home/user/mine/f
            r chmod 4755 home/user/mine/f
            r sh -c 'echo y >> home/user/mine/f'
            r stat -c '%a %u %g' home/user/mine/f home/sgid/d home/sgid/f
            r chown 0 home/user/mine/f
            r chmod 600 etc/passwd
            r sh -c 'echo x >> etc/passwd'
            r sh -c 'echo x >> home/user/.profile'
            r rm tmp/.keep-root
            r touch tmp/mine
            r rm tmp/mine
            r mkdir etc/new
            r ln -s target home/user/mine/link
            r mkfifo home/user/mine/fifo
            r mv home/user/mine home/user/moved
            r cat etc/shadow
        "#;
        // A root-owned file in the sticky /tmp, for `rm` to fail on.
        write_file(&root.join("tmp/.keep-root"), b"root\n").unwrap();
        let out = std::process::Command::new("setpriv")
            .args([
                "--reuid=1000",
                "--regid=1000",
                "--clear-groups",
                "sh",
                "-c",
                script,
            ])
            .current_dir(root)
            .output()
            .expect("setpriv");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            log.0.push(line.to_owned());
        }
        log.put("status", Ok(out.status.code()));
    });
}

/// Through `/proc/self/fd`, an fd whose name was deleted and taken by a
/// new file reopens its own file, not the new one.
#[test]
fn reopen_through_proc_after_delete() {
    check("reopen_through_proc_after_delete", |root, log| {
        let p = root.join("etc/group");
        let f = rw(&p);
        log.put("write", (&f).write_all(b"mine\n"));
        log.put("unlink", fs::remove_file(&p));
        log.put("recreate", write_file(&p, b"theirs\n"));
        let via = format!("/proc/self/fd/{}", f.as_raw_fd());
        let mut again = File::open(&via).unwrap();
        log.read_all("read reopened", &mut again);
        log.stat("stat new name", &p);
    });
}

/// A directory deleted and made again while an fd still holds the old
/// one (the upper filesystem may give the new one the same inode number):
/// the new one works in full.
#[test]
fn directory_recreated_while_open() {
    check("directory_recreated_while_open", |root, log| {
        for round in 0..20 {
            let d = root.join(format!("tmp/d{round}"));
            log.put("mkdir", fs::create_dir(&d));
            let held = File::open(&d).unwrap();
            log.put("rmdir", fs::remove_dir(&d));
            log.put("mkdir again", fs::create_dir(&d));
            log.put("create inside", write_file(&d.join("x"), b"x\n"));
            log.stat("stat inside", &d.join("x"));
            drop(held);
        }
    });
}

//! Differential tests of what open file descriptors see while the names
//! they were opened by are copied up, deleted, replaced and recreated.
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
    let run = |form: Form, kernel: bool| {
        let uw = UpperWork::new();
        let mut spec = MountSpec::fixture(fx.path(), form).with_upper(&uw);
        if kernel {
            for o in kernel_options {
                spec = spec.with_option(o);
            }
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
    let (want_log, want, want_after, want_upper, _kuw) = run(Form::Kernel, true);
    if std::env::var_os("OPEN_FILES_TRACE").is_some() {
        eprintln!("[{test}] kernel: {want_log:#?}");
    }
    assert!(
        !want_log.is_empty(),
        "{test}: the scenario recorded nothing"
    );
    let mut problems = Vec::new();
    for form in [Form::Kernel, Form::Oci] {
        let name = format!("strata({})", form.dir_name());
        let (log, got, got_after, got_upper, _uw) = run(form, false);
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

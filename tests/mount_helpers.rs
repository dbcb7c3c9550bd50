//! strata started by mount(8): `mount -t fuse.strata`, an fstab line, and
//! `-o drop_privileges`, where mount.fuse3 mounts itself and hands strata
//! the /dev/fuse fd as the mountpoint `/dev/fd/N`. Also: a bad `/dev/fd/N`.
//!
//! mount(8) removes PATH from the environment before it runs mount.fuse3,
//! whose `/bin/sh -c` then searches sh's default path, /usr/local/sbin
//! first. So each mount test runs on a thread with a mount namespace of its
//! own, in which a temporary directory holding a `strata` symlink to the
//! binary under test is bind-mounted over /usr/local/sbin: nothing outside
//! that thread (and the processes it starts) sees it, and no system file
//! changes. The fstab test uses `mount --fstab FILE` with a temporary file.
//!
//! Needs root, /dev/fuse, mount(8) from util-linux, mount.fuse3 and fusermount3.

mod common;

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    CmdOutput, Form, MOUNT_TIMEOUT, UNMOUNT_TIMEOUT, UpperWork, assert_no_problems,
    expected_tree_problems, layer_dirs, prepare_fixture, run_with_timeout, strata_bin, tempdir,
    walk,
};

// ============================================================ the namespace

/// Runs `body` on a new thread in a mount namespace of its own where
/// /usr/local/sbin holds only `strata` (the binary under test).
fn with_strata_installed<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> T {
    let thread = thread::spawn(move || {
        // SAFETY: unshare(2) gives this thread (and what it starts) its own
        // mount namespace and fs info; no memory is involved.
        let ret = unsafe { libc::unshare(libc::CLONE_NEWNS) };
        assert_eq!(ret, 0, "unshare: {}", io::Error::last_os_error());
        // Whatever the propagation of /, mounts made here stay here.
        run_ok(Command::new("mount").args(["--make-rprivate", "/"]));
        let bin = tempdir();
        std::os::unix::fs::symlink(strata_bin(), bin.path().join("strata")).unwrap();
        run_ok(
            Command::new("mount")
                .arg("--bind")
                .arg(bin.path())
                .arg("/usr/local/sbin"),
        );
        let result = body();
        run_ok(Command::new("umount").arg("/usr/local/sbin"));
        result
    });
    thread
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

fn run_ok(cmd: &mut Command) -> CmdOutput {
    let o = run_with_timeout(cmd, MOUNT_TIMEOUT);
    assert!(o.success(), "{o}");
    o
}

// ============================================================ observing

/// This thread's mountinfo line for `mnt` (the namespace is per thread, so
/// /proc/self, the main thread's, would not show it).
fn mount_line(mnt: &Path) -> Option<String> {
    let text = fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
    let want = mnt.to_str().unwrap();
    text.lines()
        .rfind(|line| line.split(' ').nth(4) == Some(want))
        .map(str::to_owned)
}

/// Live processes (not zombies) with an argument containing `needle`.
fn pids_with(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && alive(pid))
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                c.split(|&b| b == 0)
                    .any(|arg| String::from_utf8_lossy(arg).contains(needle))
            })
        })
        .collect()
}

fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
    })
}

fn status_field(pid: u32, field: &str) -> Option<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
}

fn cmdline(pid: u32) -> Vec<OsString> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| OsString::from(std::ffi::OsStr::from_bytes(a)))
        .collect()
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// The one daemon serving a mount, found by a string in its arguments.
fn the_daemon(needle: &str) -> u32 {
    let pids = pids_with(needle);
    assert_eq!(pids.len(), 1, "daemons for {needle}: {pids:?}");
    pids[0]
}

// ============================================================ a mount

/// A mountpoint and the daemon behind it: on drop (also while panicking)
/// the mount is detached and any daemon left is killed.
struct Mounted {
    mnt: PathBuf,
    /// Unique to this mount's arguments (a temporary directory's path).
    needle: String,
}

impl Mounted {
    /// Unmounts with `command` and checks that the daemon exits.
    fn unmount_with(&self, command: &[&str], daemon: u32) {
        let o = run_with_timeout(
            Command::new(command[0]).args(&command[1..]).arg(&self.mnt),
            UNMOUNT_TIMEOUT,
        );
        assert!(o.success(), "{o}");
        assert!(
            mount_line(&self.mnt).is_none(),
            "{command:?} left the mount"
        );
        wait_until(
            &format!("the daemon exits after {command:?}"),
            UNMOUNT_TIMEOUT,
            || !alive(daemon),
        );
        let left = pids_with(&self.needle);
        assert!(left.is_empty(), "strata processes left: {left:?}");
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if mount_line(&self.mnt).is_some() {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        for pid in pids_with(&self.needle) {
            // SAFETY: kill(2) of a daemon this test started for its own mount.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// `lowerdir=...,upperdir=...,workdir=...` for the fixture (all three
/// layers in `form`) over `uw`.
fn fixture_options(prepared: &Path, form: Form, uw: &UpperWork) -> String {
    let lowers: Vec<String> = layer_dirs(prepared, form)
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        uw.upper.display(),
        uw.work.display()
    )
}

/// The merged fixture is what it should be, and writes land in the upper.
fn check_fixture_mount(mnt: &Path, uw: &UpperWork) {
    assert_no_problems("merged view", &expected_tree_problems(&walk(mnt)));
    fs::write(mnt.join("new.txt"), b"new\n").unwrap();
    fs::write(mnt.join("etc/hostname"), b"changed\n").unwrap();
    assert_eq!(fs::read(uw.upper.join("new.txt")).unwrap(), b"new\n");
    assert_eq!(
        fs::read(uw.upper.join("etc/hostname")).unwrap(),
        b"changed\n"
    );
    assert_eq!(fs::read(mnt.join("etc/hostname")).unwrap(), b"changed\n");
}

// ============================================================ tests

/// `mount -t fuse.strata strata MNT -o ...`: mount.fuse3 runs
/// `strata strata MNT -o rw,noatime,...,dev,suid`, which mounts and
/// returns once the mount is live; `umount` ends the daemon.
#[test]
fn mount_t_fuse_strata() {
    with_strata_installed(|| {
        let prepared = prepare_fixture();
        let uw = UpperWork::new();
        let dir = tempdir();
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        let mounted = Mounted {
            mnt: mnt.clone(),
            needle: mnt.display().to_string(),
        };
        let options = fixture_options(prepared.path(), Form::Kernel, &uw) + ",noatime,nofail";
        let o = run_with_timeout(
            Command::new("mount")
                .args(["-t", "fuse.strata", "strata"])
                .arg(&mnt)
                .arg("-o")
                .arg(&options),
            MOUNT_TIMEOUT,
        );
        assert!(o.success(), "{o}");
        assert!(o.stderr.is_empty(), "warnings: {o}");
        let line = mount_line(&mnt).expect("mount returned before the mount was live");
        assert!(line.contains(" - fuse"), "not a FUSE mount: {line}");
        assert!(line.contains("noatime"), "noatime did not arrive: {line}");
        let daemon = the_daemon(&mounted.needle);
        check_fixture_mount(&mnt, &uw);
        mounted.unmount_with(&["umount"], daemon);
    });
}

/// An fstab line, fstab-only options included, mounted by its mountpoint
/// from a temporary fstab (`mount --fstab FILE MNT`).
#[test]
fn fstab_line() {
    with_strata_installed(|| {
        let prepared = prepare_fixture();
        let uw = UpperWork::new();
        let dir = tempdir();
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        let mounted = Mounted {
            mnt: mnt.clone(),
            needle: mnt.display().to_string(),
        };
        let fstab = dir.path().join("fstab");
        fs::write(
            &fstab,
            format!(
                "# strata test\nstrata {} fuse.strata {},defaults,nofail,_netdev,noauto,\
                 x-systemd.automount,x-systemd.requires=network-online.target,X-mount.mkdir 0 0\n",
                mnt.display(),
                fixture_options(prepared.path(), Form::Oci, &uw)
            ),
        )
        .unwrap();
        let o = run_with_timeout(
            Command::new("mount").arg("--fstab").arg(&fstab).arg(&mnt),
            MOUNT_TIMEOUT,
        );
        assert!(o.success(), "{o}");
        assert!(o.stderr.is_empty(), "warnings: {o}");
        assert!(mount_line(&mnt).is_some(), "nothing mounted");
        let daemon = the_daemon(&mounted.needle);
        check_fixture_mount(&mnt, &uw);
        mounted.unmount_with(&["umount"], daemon);
    });
}

/// Two small layers of root-owned files (the daemon runs without any
/// capability, so it can read no more than that, and no trusted.* xattr):
/// `lower` has `d/f`, `gone`, `opq/old`; `top` whites out `gone`, makes
/// `opq` opaque and adds `t`.
struct SmallLayers {
    dir: tempfile::TempDir,
}

impl SmallLayers {
    fn new() -> SmallLayers {
        let dir = tempdir();
        let p = |rel: &str| dir.path().join(rel);
        for d in ["lower/d", "lower/opq", "top/opq", "upper", "work", "mnt"] {
            fs::create_dir_all(p(d)).unwrap();
        }
        fs::write(p("lower/d/f"), b"from lower\n").unwrap();
        fs::write(p("lower/gone"), b"hidden\n").unwrap();
        fs::write(p("lower/opq/old"), b"hidden\n").unwrap();
        fs::write(p("top/.wh.gone"), b"").unwrap();
        fs::write(p("top/opq/.wh..wh..opq"), b"").unwrap();
        fs::write(p("top/opq/new"), b"top\n").unwrap();
        fs::write(p("top/t"), b"top\n").unwrap();
        SmallLayers { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn options(&self) -> String {
        format!(
            "lowerdir={}:{},upperdir={},workdir={}",
            self.path("top").display(),
            self.path("lower").display(),
            self.path("upper").display(),
            self.path("work").display()
        )
    }

    /// `mount -t fuse.strata strata MNT -o drop_privileges,...`; returns
    /// the mount and its daemon, checked to serve `/dev/fd/N` without
    /// capabilities.
    fn mount_dropping_privileges(&self) -> (Mounted, u32) {
        let mnt = self.path("mnt");
        let mounted = Mounted {
            mnt: mnt.clone(),
            needle: self.dir.path().display().to_string(),
        };
        let o = run_with_timeout(
            Command::new("mount")
                .args(["-t", "fuse.strata", "strata"])
                .arg(&mnt)
                .arg("-o")
                .arg(format!("drop_privileges,{},noatime", self.options())),
            MOUNT_TIMEOUT,
        );
        assert!(o.success(), "{o}");
        assert!(o.stderr.is_empty(), "warnings: {o}");
        let line = mount_line(&mnt).expect("nothing mounted");
        assert!(line.contains(" - fuse.strata "), "{line}");
        let daemon = the_daemon(&mounted.needle);
        let args = cmdline(daemon);
        assert!(
            args.iter().any(|a| a.as_bytes().starts_with(b"/dev/fd/")),
            "the daemon was not given /dev/fd/N: {args:?}"
        );
        assert_eq!(
            status_field(daemon, "CapEff").as_deref(),
            Some("0000000000000000"),
            "mount.fuse3 did not drop the daemon's capabilities"
        );
        (mounted, daemon)
    }
}

/// `-o drop_privileges`: mount.fuse3 opens /dev/fuse, mounts, drops every
/// capability and runs `strata strata /dev/fd/N -o ...`. strata serves the
/// fd (the merged view, writes to the upper, copy-up, whiteouts) and exits
/// once the mount goes away, by `umount` or by `fusermount3 -u`.
#[test]
fn drop_privileges_serves_dev_fd() {
    with_strata_installed(|| {
        for unmount in [&["umount"][..], &["fusermount3", "-u"][..]] {
            let layers = SmallLayers::new();
            let (mounted, daemon) = layers.mount_dropping_privileges();
            let mnt = &mounted.mnt;
            let mut names: Vec<String> = fs::read_dir(mnt)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            assert_eq!(names, ["d", "opq", "t"]);
            assert_eq!(fs::read(mnt.join("d/f")).unwrap(), b"from lower\n");
            let opq: Vec<_> = fs::read_dir(mnt.join("opq"))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(opq, ["new"]);

            fs::write(mnt.join("n"), b"new\n").unwrap();
            fs::write(mnt.join("d/f"), b"changed\n").unwrap();
            fs::remove_file(mnt.join("t")).unwrap();
            assert_eq!(fs::read(layers.path("upper/n")).unwrap(), b"new\n");
            assert_eq!(fs::read(layers.path("upper/d/f")).unwrap(), b"changed\n");
            assert_eq!(fs::read(layers.path("lower/d/f")).unwrap(), b"from lower\n");
            let whiteout = fs::symlink_metadata(layers.path("upper/t")).unwrap();
            assert!(
                whiteout.file_type().is_char_device() && whiteout.rdev() == 0,
                "no whiteout for t in the upper"
            );
            assert!(!mnt.join("t").exists());

            mounted.unmount_with(unmount, daemon);
        }
    });
}

/// strata did not make a `/dev/fd/N` mount and cannot unmount it: SIGTERM
/// ends the daemon, the mount then fails with ENOTCONN until it is
/// unmounted.
#[test]
fn sigterm_ends_a_dev_fd_daemon() {
    with_strata_installed(|| {
        let layers = SmallLayers::new();
        let (mounted, daemon) = layers.mount_dropping_privileges();
        // SAFETY: kill(2) of the daemon this test started.
        assert_eq!(unsafe { libc::kill(daemon as i32, libc::SIGTERM) }, 0);
        wait_until("SIGTERM ends the daemon", UNMOUNT_TIMEOUT, || {
            !alive(daemon)
        });
        // The main thread shows as a zombie while the others may still
        // hold /dev/fuse: a request made in between is aborted
        // (ECONNABORTED) when the last one exits; after that, ENOTCONN.
        let errno = || {
            fs::read_dir(&mounted.mnt)
                .err()
                .and_then(|e| e.raw_os_error())
        };
        wait_until("the mount fails with ENOTCONN", UNMOUNT_TIMEOUT, || {
            let e = errno();
            assert!(
                matches!(e, Some(libc::ENOTCONN | libc::ECONNABORTED)),
                "reading the mount of a dead daemon: {e:?}"
            );
            e == Some(libc::ENOTCONN)
        });
        let o = run_with_timeout(Command::new("umount").arg(&mounted.mnt), UNMOUNT_TIMEOUT);
        assert!(o.success(), "{o}");
        assert!(mount_line(&mounted.mnt).is_none());
    });
}

/// A `/dev/fd/N` that is not a mounted /dev/fuse fd: one line on stderr,
/// exit status 1, nothing left running.
#[test]
fn bad_dev_fd_is_one_line() {
    let lower = tempdir();
    let needle = lower.path().display().to_string();
    let lowerdir = format!("lowerdir={needle}");
    let fuse = || {
        fs::File::options()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .unwrap()
    };
    let huge = format!("/dev/fd/{}", i32::MAX);
    let cases: Vec<(&str, Stdio, String)> = vec![
        (
            "/dev/fd/0",
            Stdio::piped(),
            "strata: mountpoint '/dev/fd/0': not a /dev/fuse file descriptor (it is a pipe)".into(),
        ),
        (
            &huge,
            Stdio::null(),
            format!("strata: mountpoint '{huge}': not an open file descriptor"),
        ),
        (
            "/dev/fd/99999999999",
            Stdio::null(),
            "strata: mountpoint '/dev/fd/99999999999': not a valid file descriptor number".into(),
        ),
        (
            "/dev/fd/0",
            Stdio::null(),
            "strata: mountpoint '/dev/fd/0': not a /dev/fuse file descriptor \
             (it is the character device 1:3)"
                .into(),
        ),
        (
            "/dev/fd/0",
            Stdio::from(fuse()),
            "strata: cannot serve '/dev/fd/0': the /dev/fuse fd is not mounted".into(),
        ),
    ];
    for (mountpoint, stdin, want) in cases {
        let out = tempfile::tempfile().unwrap();
        let err = tempfile::tempfile().unwrap();
        let mut child = Command::new(strata_bin())
            .args(["-o", &lowerdir, mountpoint])
            .env_remove("RUST_LOG")
            .stdin(stdin)
            .stdout(out.try_clone().unwrap())
            .stderr(err.try_clone().unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("strata {mountpoint} did not exit");
            }
            thread::sleep(Duration::from_millis(10));
        };
        drop(child.stdin.take());
        let (stdout, stderr) = (read_all(out), read_all(err));
        assert_eq!(status.code(), Some(1), "{mountpoint}: {status} {stderr}");
        assert_eq!(stderr.lines().collect::<Vec<_>>(), [want.as_str()]);
        assert_eq!(stdout, "");
        let left = pids_with(&needle);
        assert!(left.is_empty(), "strata processes left: {left:?}");
    }
}

fn read_all(mut file: fs::File) -> String {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).unwrap();
    file.read_to_string(&mut text).unwrap();
    text
}

//! The daemon's life as a caller sees it: `strata` returns once the mount
//! is live, keeps none of the caller's pipes, exits when the mount goes
//! away however it goes, and unmounts on SIGTERM, SIGINT and SIGHUP (a busy
//! mount is detached and the daemon exits when its last user lets go).
//!
//! Needs root and /dev/fuse (fusermount3 for one case).

use std::fs;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

const TIMEOUT: Duration = Duration::from_secs(20);

/// A lower layer with a directory, and a mountpoint, in a fresh tempdir.
struct Tree {
    dir: TempDir,
}

impl Tree {
    fn new() -> Tree {
        let dir = tempfile::Builder::new()
            .prefix("strata-lifecycle.")
            .tempdir()
            .unwrap();
        fs::create_dir_all(dir.path().join("lower/d")).unwrap();
        fs::write(dir.path().join("lower/d/f"), b"f\n").unwrap();
        fs::create_dir(dir.path().join("mnt")).unwrap();
        Tree { dir }
    }

    fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    fn mounted(&self) -> bool {
        let mnt = self.mnt();
        fs::read_to_string("/proc/mounts")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(1) == Some(mnt.to_str().unwrap()))
    }

    /// The daemon serving this tree's mount (found by its command line).
    fn daemon(&self) -> Option<u32> {
        let needle = format!("lowerdir={}", self.dir.path().join("lower").display());
        fs::read_dir("/proc").unwrap().find_map(|e| {
            let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(&needle).then_some(pid)
        })
    }

    /// Mounts it read-only with strata; returns the daemon's pid.
    fn mount(&self) -> u32 {
        let status = Command::new(env!("CARGO_BIN_EXE_strata"))
            .arg("-o")
            .arg(format!(
                "lowerdir={}",
                self.dir.path().join("lower").display()
            ))
            .arg(self.mnt())
            .stdin(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "strata failed: {status}");
        assert!(self.mounted(), "strata returned before the mount was live");
        self.daemon().expect("no daemon")
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        if self.mounted() {
            let _ = Command::new("umount").arg("-l").arg(self.mnt()).status();
        }
        if let Some(pid) = self.daemon() {
            // SAFETY: plain kill(2) of the daemon this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

fn alive(pid: u32) -> bool {
    // A zombie has exited; only its parent (init, for a daemon) reaps it.
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn kill(pid: u32, sig: i32) {
    // SAFETY: plain kill(2) of the daemon this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

/// Reads `source` to EOF on a thread; the channel gets the bytes then.
fn to_eof(mut source: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut v = Vec::new();
        let _ = source.read_to_end(&mut v);
        let _ = tx.send(v);
    });
    rx
}

/// Like podman: stdout and stderr on pipes read to EOF, plus a pipe fd the
/// caller leaked into the child. strata exits 0 with the mount live, and
/// every pipe reaches EOF while the daemon keeps serving.
#[test]
fn returns_when_live_and_keeps_no_caller_pipe() {
    let tree = Tree::new();
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two fds; no O_CLOEXEC, so the child inherits the write end.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: pipe(2) just returned these two fds, owned by nobody else.
    let (leak_read, leak_write) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("-o")
        .arg(format!(
            "lowerdir={}",
            tree.dir.path().join("lower").display()
        ))
        .arg(tree.mnt())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(leak_write);
    let outs = [
        to_eof(child.stdout.take().unwrap()),
        to_eof(child.stderr.take().unwrap()),
        to_eof(fs::File::from(leak_read)),
    ];
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(tree.mounted());
    for (name, rx) in ["stdout", "stderr", "leaked pipe"].iter().zip(outs) {
        let got = rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("the daemon keeps the caller's {name} open"));
        assert!(
            got.is_empty(),
            "{name}: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    let daemon = tree.daemon().expect("no daemon");
    assert_eq!(fs::read_to_string(tree.mnt().join("d/f")).unwrap(), "f\n");
    assert_eq!(
        fs::read_link(format!("/proc/{daemon}/cwd")).unwrap(),
        Path::new("/")
    );
}

/// The daemon exits however the mount goes away.
#[test]
fn exits_when_unmounted() {
    for command in [
        &["fusermount3", "-u"][..],
        &["umount"][..],
        &["umount", "-l"][..],
    ] {
        let tree = Tree::new();
        let pid = tree.mount();
        let status = Command::new(command[0])
            .args(&command[1..])
            .arg(tree.mnt())
            .status()
            .unwrap();
        assert!(status.success(), "{command:?}: {status}");
        wait_until(&format!("the daemon exits after {command:?}"), || {
            !alive(pid)
        });
        assert!(!tree.mounted());
    }
}

/// A mount made in a mount namespace that then ends without unmounting (a
/// container's, say) ends its daemon: the daemon does not keep that
/// namespace, or the mount, alive by living in it.
#[test]
fn exits_when_its_mount_namespace_goes_away() {
    let tree = Tree::new();
    let script = format!(
        "{} -o lowerdir={} {} && cat {}/d/f",
        env!("CARGO_BIN_EXE_strata"),
        tree.dir.path().join("lower").display(),
        tree.mnt().display(),
        tree.mnt().display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        out.stdout, b"f\n",
        "the mount did not serve in its namespace"
    );
    wait_until("the daemon exits with its namespace", || {
        tree.daemon().is_none_or(|p| !alive(p))
    });
}

/// A daemon holds no copy of other mounts: one made before it is unmounted
/// as usual while it serves on, and that mount's daemon exits.
#[test]
fn holds_no_copy_of_other_mounts() {
    let (first, second) = (Tree::new(), Tree::new());
    let first_pid = first.mount();
    let second_pid = second.mount();
    let status = Command::new("umount").arg(first.mnt()).status().unwrap();
    assert!(status.success());
    wait_until("the first daemon exits while the second serves", || {
        !alive(first_pid)
    });
    assert!(alive(second_pid));
    assert_eq!(fs::read(second.mnt().join("d/f")).unwrap(), b"f\n");
}

/// Like kernel overlayfs with `index=on`: an upperdir or workdir that a
/// live mount uses is refused (EBUSY) to a second one, with one line on
/// stderr, and is free again once the first daemon is gone, however it went.
#[test]
fn a_second_writer_on_the_same_upper_is_refused() {
    let tree = Tree::new();
    let dir = tree.dir.path();
    for d in ["u", "w", "u2", "w2", "m2", "k1", "k2"] {
        fs::create_dir(dir.join(d)).unwrap();
    }
    let lower = dir.join("lower");
    let opts = |u: &str, w: &str| {
        format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            dir.join(u).display(),
            dir.join(w).display()
        )
    };
    let strata = |options: &str, mnt: &Path| {
        Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(["-o", options])
            .arg(mnt)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    // The reference: the kernel refuses the second mount.
    let kernel = |mnt: &str, w: &str| {
        Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(opts("u", w) + ",index=on")
            .arg(dir.join(mnt))
            .output()
            .unwrap()
    };
    assert!(kernel("k1", "w").status.success());
    let second = kernel("k2", "w2");
    let _ = Command::new("umount").arg(dir.join("k2")).status();
    assert!(
        Command::new("umount")
            .arg(dir.join("k1"))
            .status()
            .unwrap()
            .success()
    );
    assert!(!second.status.success(), "the kernel took a second writer");

    let first = strata(&opts("u", "w"), &tree.mnt());
    assert!(first.status.success(), "{first:?}");
    let pid = tree.daemon().expect("no daemon");
    let m2 = dir.join("m2");
    for ((u, w), busy) in [(("u", "w2"), "upperdir 'U'"), (("u2", "w"), "workdir 'W'")] {
        let busy = busy
            .replace('U', &dir.join(u).display().to_string())
            .replace('W', &dir.join(w).display().to_string());
        let out = strata(&opts(u, w), &m2);
        assert!(!out.status.success(), "a second writer on {u}/{w} mounted");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim(),
            format!("strata: {busy} is in use by another mount (EBUSY)")
        );
        let mounts = fs::read_to_string("/proc/mounts").unwrap();
        assert!(
            !mounts.contains(m2.to_str().unwrap()),
            "something got mounted"
        );
    }
    assert_eq!(fs::read(tree.mnt().join("d/f")).unwrap(), b"f\n");
    // Killed, not unmounted: the kernel drops the lock with the process.
    kill(pid, libc::SIGKILL);
    wait_until("the killed daemon is gone", || !alive(pid));
    let _ = Command::new("umount").arg("-l").arg(tree.mnt()).status();
    let again = strata(&opts("u", "w"), &m2);
    assert!(again.status.success(), "{again:?}");
    let _ = Command::new("umount").arg(&m2).status();
}

/// SIGTERM, SIGINT and SIGHUP unmount and end the daemon.
#[test]
fn signals_unmount() {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        let tree = Tree::new();
        let pid = tree.mount();
        kill(pid, sig);
        wait_until(&format!("signal {sig} ends the daemon"), || !alive(pid));
        assert!(!tree.mounted(), "signal {sig} left the mount");
    }
}

/// SIGTERM on a mount a process still uses (its working directory):
/// detached at once (like `umount -l`), served until that process is done,
/// then the daemon exits. A second signal ends it at once.
#[test]
fn sigterm_on_a_busy_mount() {
    let tree = Tree::new();
    let pid = tree.mount();
    let mut user = Command::new("sleep")
        .arg("2")
        .current_dir(tree.mnt().join("d"))
        .spawn()
        .unwrap();
    kill(pid, libc::SIGTERM);
    wait_until("the busy mount is detached", || !tree.mounted());
    assert!(alive(pid), "the daemon left while the mount was in use");
    user.wait().unwrap();
    wait_until("the daemon exits after its last user", || !alive(pid));

    let tree = Tree::new();
    let pid = tree.mount();
    let mut user = Command::new("sleep")
        .arg("30")
        .current_dir(tree.mnt().join("d"))
        .spawn()
        .unwrap();
    kill(pid, libc::SIGTERM);
    wait_until("the busy mount is detached", || !tree.mounted());
    kill(pid, libc::SIGTERM);
    wait_until("a second signal ends the daemon", || !alive(pid));
    let _ = user.kill();
    let _ = user.wait();
}

/// Layers are opened before strata returns and used only through those
/// fds: a lowerdir given through a symlink and `..` (as containers-storage
/// passes `l/ID/../diff`) keeps serving after the caller removes the
/// symlink and renames the directory behind it.
#[test]
fn layers_are_held_by_fd() {
    let tree = Tree::new();
    let base = tree.dir.path();
    fs::create_dir(base.join("l")).unwrap();
    std::os::unix::fs::symlink(base.join("lower/d"), base.join("l/ID")).unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("-o")
        .arg(format!("lowerdir={}/l/ID/..", base.display()))
        .arg(tree.mnt())
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    // `l/ID/..` is `lower` (the symlink's target's parent), not `l`.
    assert_eq!(fs::read_to_string(tree.mnt().join("d/f")).unwrap(), "f\n");
    fs::remove_file(base.join("l/ID")).unwrap();
    fs::rename(base.join("lower"), base.join("moved")).unwrap();
    assert_eq!(fs::read_to_string(tree.mnt().join("d/f")).unwrap(), "f\n");
    let _ = Command::new("fusermount3")
        .arg("-u")
        .arg(tree.mnt())
        .status();
    fs::rename(base.join("moved"), base.join("lower")).unwrap();
}

/// A bug (a panic in a request handler; debug builds inject one on
/// demand) fails that request with EIO, and the daemon serves on.
#[test]
#[cfg(debug_assertions)]
fn a_panic_fails_one_request() {
    let tree = Tree::new();
    let status = Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("-o")
        .arg(format!(
            "lowerdir={}",
            tree.dir.path().join("lower").display()
        ))
        .arg(tree.mnt())
        .env("STRATA_FAULTS", "1")
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let pid = tree.daemon().expect("no daemon");
    for _ in 0..3 {
        let err = fs::metadata(tree.mnt().join("strata-test-panic")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    }
    assert!(alive(pid));
    assert_eq!(fs::read_to_string(tree.mnt().join("d/f")).unwrap(), "f\n");
}

/// A relative mountpoint and lowerdir (the daemon works from / after it
/// detaches): the mount is live, and SIGTERM on it while busy detaches it.
#[test]
fn relative_paths() {
    let tree = Tree::new();
    let status = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["-o", "lowerdir=lower", "mnt"])
        .current_dir(tree.dir.path())
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(tree.mounted());
    assert_eq!(fs::read_to_string(tree.mnt().join("d/f")).unwrap(), "f\n");
    let pid = fs::read_dir("/proc")
        .unwrap()
        .find_map(|e| {
            let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let cwd = fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            (cwd == Path::new("/") && cmdline.ends_with(b"lowerdir=lower\0mnt\0")).then_some(pid)
        })
        .expect("no daemon");
    let mut user = Command::new("sleep")
        .arg("1")
        .current_dir(tree.mnt().join("d"))
        .spawn()
        .unwrap();
    kill(pid, libc::SIGTERM);
    wait_until("the busy mount is detached", || !tree.mounted());
    user.wait().unwrap();
    wait_until("the daemon exits", || !alive(pid));
}

/// Extreme timestamps (utimensat with i64::MIN seconds and a fraction)
/// neither hang the caller nor stop the daemon.
#[test]
fn extreme_timestamps() {
    let tree = Tree::new();
    let upper = tree.dir.path().join("upper");
    let work = tree.dir.path().join("work");
    fs::create_dir(&upper).unwrap();
    fs::create_dir(&work).unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("-o")
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            tree.dir.path().join("lower").display(),
            upper.display(),
            work.display()
        ))
        .arg(tree.mnt())
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let pid = tree.daemon().expect("no daemon");
    let path = std::ffi::CString::new(tree.mnt().join("d/f").into_os_string().into_encoded_bytes())
        .unwrap();
    for (sec, nsec) in [
        (i64::MIN, 1),
        (i64::MIN, 0),
        (i64::MAX, 999_999_999),
        (-1, 500_000_000),
    ] {
        let times = [libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        }; 2];
        // SAFETY: a NUL-terminated path and two valid timespecs.
        unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), 0) };
        assert!(alive(pid), "the daemon died on ({sec}, {nsec})");
    }
    // The last one is -0.5 s, kept exactly.
    let m = fs::metadata(tree.mnt().join("d/f")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((m.mtime(), m.mtime_nsec()), (-1, 500_000_000));
    assert_eq!(fs::read_to_string(tree.mnt().join("d/f")).unwrap(), "f\n");
}

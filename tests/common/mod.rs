//! Shared helpers for strata's differential integration tests.
//!
//! * fixture: [`prepare_fixture`] runs `scripts/prepare-layers.sh` on
//!   `layers-fixture/` and yields the OCI form and its kernel-format twin;
//! * mounts: [`StrataMount`] (the FUSE daemon under test) and
//!   [`KernelOverlay`] (the reference), both unmounting on drop, with time
//!   limits on every wait;
//! * [`walk`]: a full `lstat` walk (never following symlinks) of a mounted
//!   tree into a `BTreeMap<PathBuf, Record>`;
//! * comparisons returning one readable line per problem, path by path, and
//!   `assert_*` wrappers that panic with that report.
//!
//! Needs root, /dev/fuse, kernel overlayfs, fusermount3 and setfattr.
#![allow(dead_code)] // every test binary uses a different subset

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CString, OsStr, OsString};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use tempfile::TempDir;

pub mod ops;
pub mod rootless;
pub mod shell;
pub mod upper;
#[allow(unused_imports)] // not every test binary uses them
pub use ops::*;
#[allow(unused_imports)]
pub use upper::*;

// ===================================================================== limits

/// How long a mount command (strata daemonizing, `mount -t overlay`) may take.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `fusermount3 -u` / `umount` may take, and then again how long the
/// daemon may take to exit after its file system was unmounted.
pub const UNMOUNT_TIMEOUT: Duration = Duration::from_secs(10);

/// Life time of one strata mount before the watchdog kills the daemon, which
/// makes every pending and later request on the mount fail (ENOTCONN) instead
/// of hanging the test. `STRATA_TEST_TIMEOUT_SECS` overrides the default.
pub fn mount_lifetime_limit() -> Duration {
    let secs = std::env::var("STRATA_TEST_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    Duration::from_secs(secs)
}

// ==================================================================== fixture

/// Lower layers of the fixture, top first (the lowerdir order).
pub const LAYERS: [&str; 3] = ["app", "update", "base"];

/// Which twin produced by prepare-layers.sh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// `.wh.NAME` and `.wh..wh..opq` files, as in OCI image layers.
    Oci,
    /// 0/0 character devices and `trusted.overlay.opaque=y`, as the kernel
    /// overlayfs writes them.
    Kernel,
}

impl Form {
    pub const ALL: [Form; 2] = [Form::Oci, Form::Kernel];

    pub fn dir_name(self) -> &'static str {
        match self {
            Form::Oci => "oci",
            Form::Kernel => "kernel",
        }
    }
}

pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh, uniquely named directory under $TMPDIR (removed on drop).
pub fn tempdir() -> TempDir {
    tempfile::Builder::new()
        .prefix("strata-test-")
        .tempdir()
        .expect("create a temporary directory")
}

/// Runs `scripts/prepare-layers.sh layers-fixture/ OUT` into a new temporary
/// directory OUT holding `oci/{app,update,base}` and `kernel/{app,update,base}`.
pub fn prepare_fixture() -> TempDir {
    let out = tempdir();
    let script = crate_dir().join("scripts/prepare-layers.sh");
    let fixture = crate_dir().join("layers-fixture");
    let o = run_with_timeout(
        Command::new("bash")
            .arg(&script)
            .arg(&fixture)
            .arg(out.path()),
        Duration::from_secs(120),
    );
    assert!(o.success(), "{} failed: {o}", script.display());
    assert!(
        o.stdout.is_empty() && o.stderr.is_empty(),
        "prepare-layers.sh must print nothing on success: {o}"
    );
    out
}

/// The three layer directories of a prepared fixture, top first.
pub fn layer_dirs(prepared: &Path, form: Form) -> Vec<PathBuf> {
    LAYERS
        .iter()
        .map(|l| prepared.join(form.dir_name()).join(l))
        .collect()
}

/// An empty upper dir and its work dir, on the same file system. The upper
/// dir (the merged root when mounted) gets fixed attributes, so that two
/// `UpperWork`s made at different times look the same through a mount.
pub struct UpperWork {
    _dir: TempDir,
    pub upper: PathBuf,
    pub work: PathBuf,
}

impl UpperWork {
    pub fn new() -> UpperWork {
        let dir = tempdir();
        let upper = dir.path().join("upper");
        let work = dir.path().join("work");
        fs::create_dir(&upper).unwrap();
        fs::create_dir(&work).unwrap();
        fs::set_permissions(&upper, fs::Permissions::from_mode(0o755)).unwrap();
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        File::open(&upper).unwrap().set_modified(t).unwrap();
        UpperWork {
            _dir: dir,
            upper,
            work,
        }
    }
}

/// What to mount: lowerdirs (top first), optionally upper/work, and extra
/// `-o` options (e.g. `redirect_dir=on` for a kernel reference).
#[derive(Clone, Debug, Default)]
pub struct MountSpec {
    pub lowers: Vec<PathBuf>,
    pub upper: Option<(PathBuf, PathBuf)>,
    /// Appended to the options as they are, after the layer options.
    pub extra_options: Vec<String>,
}

impl MountSpec {
    pub fn new(lowers: Vec<PathBuf>) -> MountSpec {
        MountSpec {
            lowers,
            upper: None,
            extra_options: Vec::new(),
        }
    }

    /// Adds one `-o` option (`name` or `name=value`).
    pub fn with_option(mut self, option: &str) -> MountSpec {
        assert!(!option.contains(','), "one option at a time: {option}");
        self.extra_options.push(option.to_owned());
        self
    }

    /// All three fixture layers of `prepared` in the given form, read-only.
    pub fn fixture(prepared: &Path, form: Form) -> MountSpec {
        MountSpec::new(layer_dirs(prepared, form))
    }

    pub fn with_upper(mut self, uw: &UpperWork) -> MountSpec {
        self.upper = Some((uw.upper.clone(), uw.work.clone()));
        self
    }

    /// `lowerdir=A:B:C[,upperdir=U,workdir=W][,EXTRA...]`, the same for
    /// both kinds of mounts.
    pub fn options(&self) -> String {
        let s = |p: &Path| {
            let s = p.to_str().expect("non-UTF-8 layer path");
            assert!(
                !s.contains([',', ':', '\\']),
                "unescaped option character in {s}"
            );
            s.to_owned()
        };
        assert!(!self.lowers.is_empty(), "no lowerdir");
        let mut o = format!(
            "lowerdir={}",
            self.lowers
                .iter()
                .map(|p| s(p))
                .collect::<Vec<_>>()
                .join(":")
        );
        if let Some((u, w)) = &self.upper {
            o += &format!(",upperdir={},workdir={}", s(u), s(w));
        }
        for x in &self.extra_options {
            o += ",";
            o += x;
        }
        o
    }
}

// ========================================================= running programs

/// Exit status (None: killed after the time limit) and captured output.
pub struct CmdOutput {
    pub command: String,
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

impl fmt::Display for CmdOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(s) => write!(f, "`{}`: {s}", self.command)?,
            None => write!(f, "`{}`: killed after its time limit", self.command)?,
        }
        for (name, text) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            if !text.trim().is_empty() {
                write!(f, "\n  {name}: {}", text.trim_end().replace('\n', "\n  | "))?;
            }
        }
        Ok(())
    }
}

fn describe(cmd: &Command) -> String {
    let mut v = vec![cmd.get_program().to_string_lossy().into_owned()];
    v.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    v.join(" ")
}

/// Waits for `child` at most `timeout`; kills (and reaps) it past that.
fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    // Short polls first: most commands (mount, umount) take a few ms, and
    // the crash tests run thousands of them.
    let mut poll = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => {
                thread::sleep(poll);
                poll = (poll * 2).min(Duration::from_millis(10));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

fn read_to_string_lossy(mut f: &File) -> String {
    let mut v = Vec::new();
    let _ = f.seek(SeekFrom::Start(0));
    let _ = f.read_to_end(&mut v);
    String::from_utf8_lossy(&v).into_owned()
}

/// Runs a command with a time limit. Output goes to files, not pipes: a
/// program that daemonizes leaves a child holding its stdout/stderr, and
/// reading a pipe to its end would wait for that child.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> CmdOutput {
    let out = tempfile::tempfile().unwrap();
    let err = tempfile::tempfile().unwrap();
    run_with_files(cmd, timeout, out, err)
}

fn run_with_files(cmd: &mut Command, timeout: Duration, out: File, err: File) -> CmdOutput {
    let command = describe(cmd);
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(err.try_clone().unwrap());
    let status = match cmd.spawn() {
        Ok(mut child) => wait_timeout(&mut child, timeout),
        Err(e) => {
            return CmdOutput {
                command,
                status: None,
                stdout: String::new(),
                stderr: format!("spawn failed: {e}"),
            };
        }
    };
    CmdOutput {
        command,
        status,
        stdout: read_to_string_lossy(&out),
        stderr: read_to_string_lossy(&err),
    }
}

// ==================================================================== mounts

/// The strata binary: `$STRATA_BIN` if set (e.g. /usr/bin/fuse-overlayfs, to
/// run the same tests against the C implementation), else the crate's own
/// `strata` bin target.
pub fn strata_bin() -> PathBuf {
    match std::env::var_os("STRATA_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_strata")),
    }
}

/// One line of /proc/self/mountinfo.
#[derive(Clone, Debug)]
pub struct MountInfo {
    pub mount_point: PathBuf,
    pub major: u32,
    pub minor: u32,
    pub fstype: String,
}

fn unescape_mountinfo(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

/// The (last, i.e. visible) mount whose mount point is exactly `path`.
pub fn mount_info(path: &Path) -> Option<MountInfo> {
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut found = None;
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        if f.len() < 5 || sep + 1 >= f.len() {
            continue;
        }
        let mp = unescape_mountinfo(f[4]);
        if mp != path {
            continue;
        }
        let (ma, mi) = f[2].split_once(':').unwrap_or(("0", "0"));
        found = Some(MountInfo {
            mount_point: mp,
            major: ma.parse().unwrap_or(0),
            minor: mi.parse().unwrap_or(0),
            fstype: f[sep + 1].to_owned(),
        });
    }
    found
}

pub fn is_mounted(path: &Path) -> bool {
    mount_info(path).is_some()
}

/// Processes (other than this one) having `arg` as one of their arguments.
pub fn pids_with_arg(arg: &OsStr) -> Vec<u32> {
    let me = std::process::id();
    let mut pids = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return pids;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Ok(cmdline) = fs::read(e.path().join("cmdline"))
            && cmdline.split(|b| *b == 0).any(|a| a == arg.as_bytes())
        {
            pids.push(pid);
        }
    }
    pids
}

/// Gone, or a zombie nobody reaped yet (daemons are re-parented to pid 1).
fn pid_exited(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

pub fn wait_pids_exit(pids: &[u32], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if pids.iter().all(|p| pid_exited(*p)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn kill_pids(pids: &[u32]) {
    for &pid in pids {
        if !pid_exited(pid) {
            // SAFETY: kill(2) has no memory-safety preconditions; the pid is
            // a daemon this harness started for its own mount point.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

fn wait_mounted(path: &Path, want: bool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if is_mounted(path) == want {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Unmounts `mnt` with each command in turn until it is no longer a mount
/// point. Ok(()) if nothing is mounted there at the end.
fn unmount_with(mnt: &Path, commands: &[&[&str]]) -> Result<(), String> {
    let mut log = Vec::new();
    for argv in commands {
        if !is_mounted(mnt) {
            break;
        }
        let o = run_with_timeout(
            Command::new(argv[0]).args(&argv[1..]).arg(mnt),
            UNMOUNT_TIMEOUT,
        );
        if !o.success() {
            log.push(o.to_string());
        }
    }
    if is_mounted(mnt) {
        Err(format!(
            "{} is still mounted: {}",
            mnt.display(),
            log.join("; ")
        ))
    } else {
        Ok(())
    }
}

/// Why a mount attempt failed.
#[derive(Debug)]
pub struct MountError {
    pub command: String,
    /// None if the command was killed after MOUNT_TIMEOUT.
    pub status: Option<ExitStatus>,
    pub stderr: String,
    pub problem: String,
}

impl fmt::Display for MountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}\n  command: {}\n  status: {:?}\n  stderr: {}",
            self.problem,
            self.command,
            self.status,
            self.stderr.trim_end()
        )
    }
}

/// Kills the daemon when a mount outlives its limit, so that a hung FUSE
/// request turns into an error (ENOTCONN) instead of a hung test.
struct Watchdog {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    fn start(mnt: PathBuf, pids: Vec<u32>, conn: Option<u32>, limit: Duration) -> Watchdog {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let stop2 = stop.clone();
        let thread = thread::spawn(move || {
            let (lock, cv) = &*stop2;
            let deadline = Instant::now() + limit;
            let mut stopped = lock.lock().unwrap();
            while !*stopped {
                let now = Instant::now();
                if now >= deadline {
                    eprintln!(
                        "watchdog: strata mount {} still in use after {limit:?}: killing daemon {pids:?}",
                        mnt.display()
                    );
                    kill_pids(&pids);
                    // Without a known pid, abort the connection via fusectl
                    // (only if fusectl happens to be mounted).
                    if let Some(c) = conn {
                        let _ = fs::write(format!("/sys/fs/fuse/connections/{c}/abort"), "1");
                    }
                    return;
                }
                stopped = cv.wait_timeout(stopped, deadline - now).unwrap().0;
            }
        });
        Watchdog {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        *self.stop.0.lock().unwrap() = true;
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A live strata (FUSE) mount; unmounts on drop (also while panicking) and
/// waits, bounded, for the daemon to exit.
///
/// Layout of its private temporary directory: `mnt/` (the mount point),
/// `stdout.log` and `stderr.log` (the program's and the daemon's output).
pub struct StrataMount {
    dir: Option<TempDir>,
    mnt: PathBuf,
    pids: Vec<u32>,
    watchdog: Option<Watchdog>,
    done: bool,
}

impl StrataMount {
    /// Mounts or panics with the reason.
    pub fn mount(spec: &MountSpec) -> StrataMount {
        StrataMount::try_mount(spec).unwrap_or_else(|e| panic!("strata mount failed: {e}"))
    }

    /// Runs `strata -o OPTIONS MOUNTPOINT`, which must exit 0 only once the
    /// mount is live (it daemonizes), or exit non-zero with an error on stderr.
    pub fn try_mount(spec: &MountSpec) -> Result<StrataMount, MountError> {
        StrataMount::try_mount_with(&strata_bin(), spec)
    }

    /// The same with another program that takes strata's command line
    /// (fuse-overlayfs, as a reference where the kernel has no equivalent).
    pub fn try_mount_with(program: &Path, spec: &MountSpec) -> Result<StrataMount, MountError> {
        let dir = tempdir();
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        let log = |name: &str| {
            let p = dir.path().join(name);
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(p)
                .unwrap()
        };
        let (out, err) = (log("stdout.log"), log("stderr.log"));
        let mut cmd = Command::new(program);
        cmd.arg("-o").arg(spec.options()).arg(&mnt);
        let o = run_with_files(&mut cmd, MOUNT_TIMEOUT, out, err);
        let problem = match o.status {
            None => Some(format!("did not exit within {MOUNT_TIMEOUT:?}")),
            Some(s) if !s.success() => Some("exited with an error".to_string()),
            Some(_) => match mount_info(&mnt) {
                None => Some(if wait_mounted(&mnt, true, Duration::from_secs(2)) {
                    "exited 0 before the mount was live (it appeared later)".to_string()
                } else {
                    "exited 0 but nothing got mounted".to_string()
                }),
                Some(info) if !info.fstype.starts_with("fuse") => {
                    Some(format!("mounted a {} file system, not FUSE", info.fstype))
                }
                Some(_) => None,
            },
        };
        if let Some(problem) = problem {
            // Leave nothing behind: a daemon that outlived its parent, a mount.
            let pids = pids_with_arg(mnt.as_os_str());
            let _ = unmount_with(&mnt, &[&["fusermount3", "-u"], &["umount", "-l"]]);
            kill_pids(&pids);
            wait_pids_exit(&pids, UNMOUNT_TIMEOUT);
            if is_mounted(&mnt) {
                let _ = dir.keep(); // never delete through a mount
            }
            return Err(MountError {
                command: o.command,
                status: o.status,
                stderr: o.stderr,
                problem,
            });
        }
        let info = mount_info(&mnt).expect("checked above");
        let pids = pids_with_arg(mnt.as_os_str());
        let conn = (info.major == 0).then_some(info.minor);
        let watchdog = Watchdog::start(mnt.clone(), pids.clone(), conn, mount_lifetime_limit());
        Ok(StrataMount {
            dir: Some(dir),
            mnt,
            pids,
            watchdog: Some(watchdog),
            done: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// The daemon process(es) serving this mount (found by mount point).
    pub fn daemon_pids(&self) -> &[u32] {
        &self.pids
    }

    /// What the program and its daemon wrote to stderr so far.
    pub fn stderr_log(&self) -> String {
        let p = self.dir.as_ref().unwrap().path().join("stderr.log");
        String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned()
    }

    /// Unmounts and checks that the daemon exits within UNMOUNT_TIMEOUT.
    pub fn unmount(mut self) -> Result<(), String> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), String> {
        if std::mem::replace(&mut self.done, true) {
            return Ok(());
        }
        self.watchdog.take(); // stop it
        let mut problems = Vec::new();
        if let Err(e) = unmount_with(&self.mnt, &[&["fusermount3", "-u"], &["umount", "-l"]]) {
            problems.push(e);
        }
        if !wait_pids_exit(&self.pids, UNMOUNT_TIMEOUT) {
            problems.push(format!(
                "daemon {:?} still running {UNMOUNT_TIMEOUT:?} after unmount: killed",
                self.pids
            ));
            kill_pids(&self.pids);
            wait_pids_exit(&self.pids, Duration::from_secs(2));
            let _ = unmount_with(&self.mnt, &[&["umount", "-l"]]);
        }
        if is_mounted(&self.mnt) {
            // Leak the directory rather than delete files through a mount.
            if let Some(d) = self.dir.take() {
                let _ = d.keep();
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

impl Drop for StrataMount {
    fn drop(&mut self) {
        if thread::panicking() && !self.done {
            let log = self.stderr_log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            if !tail.is_empty() {
                eprintln!(
                    "--- strata stderr (last {} lines) for {}:",
                    tail.len(),
                    self.mnt.display()
                );
                for l in tail.iter().rev() {
                    eprintln!("  {l}");
                }
            }
        }
        if let Err(e) = self.shutdown() {
            eprintln!("StrataMount drop: {e}");
        }
    }
}

/// A kernel overlayfs mount (the reference); `umount` on drop.
pub struct KernelOverlay {
    dir: Option<TempDir>,
    mnt: PathBuf,
    done: bool,
}

impl KernelOverlay {
    pub fn mount(spec: &MountSpec) -> KernelOverlay {
        KernelOverlay::try_mount(spec)
            .unwrap_or_else(|e| panic!("kernel overlay mount failed: {e}"))
    }

    pub fn try_mount(spec: &MountSpec) -> Result<KernelOverlay, MountError> {
        let dir = tempdir();
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        let o = run_with_timeout(
            Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o"])
                .arg(spec.options())
                .arg(&mnt),
            MOUNT_TIMEOUT,
        );
        if !o.success() || !is_mounted(&mnt) {
            let _ = unmount_with(&mnt, &[&["umount"], &["umount", "-l"]]);
            let dmesg = run_with_timeout(&mut Command::new("dmesg"), Duration::from_secs(5)).stdout;
            let hint: Vec<&str> = dmesg.lines().rev().take(3).collect();
            if is_mounted(&mnt) {
                let _ = dir.keep();
            }
            return Err(MountError {
                command: o.command.clone(),
                status: o.status,
                stderr: format!("{}\n  dmesg: {}", o.stderr.trim_end(), hint.join(" | ")),
                problem: "mount -t overlay failed".into(),
            });
        }
        Ok(KernelOverlay {
            dir: Some(dir),
            mnt,
            done: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.mnt
    }

    pub fn unmount(mut self) -> Result<(), String> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), String> {
        if std::mem::replace(&mut self.done, true) {
            return Ok(());
        }
        let r = unmount_with(&self.mnt, &[&["umount"], &["umount", "-l"]]);
        if is_mounted(&self.mnt)
            && let Some(d) = self.dir.take()
        {
            let _ = d.keep();
        }
        r
    }
}

impl Drop for KernelOverlay {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!("KernelOverlay drop: {e}");
        }
    }
}

// ============================================================ raw syscalls

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("NUL in path")
}

/// One entry as getdents64(2) returned it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawDirent {
    pub name: OsString,
    pub ino: u64,
    /// Cookie to lseek(2) to in order to continue after this entry.
    pub off: i64,
    pub d_type: u8,
}

/// A directory stream read with raw getdents64, so that the test controls
/// the buffer size (i.e. the paging) and sees d_ino, d_off and d_type as the
/// file system returned them.
pub struct RawDir {
    file: File,
}

impl RawDir {
    pub fn open(path: &Path) -> io::Result<RawDir> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)?;
        Ok(RawDir { file })
    }

    /// One getdents64 call with a `buf_size`-byte buffer (>= 512); empty at
    /// the end of the directory.
    pub fn read_batch(&mut self, buf_size: usize) -> io::Result<Vec<RawDirent>> {
        let mut buf = vec![0u8; buf_size.max(512)];
        // SAFETY: the fd is an open directory owned by self.file and `buf`
        // is writable for buf.len() bytes for the whole call; the kernel
        // writes at most that many bytes and returns how many it wrote.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                self.file.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        // Parse struct linux_dirent64 { u64 d_ino; s64 d_off; u16 d_reclen;
        // u8 d_type; char d_name[]; } records with safe slice accesses.
        let buf = &buf[..n as usize];
        let mut out = Vec::new();
        let mut pos = 0;
        while pos + 19 <= buf.len() {
            let ino = u64::from_ne_bytes(buf[pos..pos + 8].try_into().unwrap());
            let off = i64::from_ne_bytes(buf[pos + 8..pos + 16].try_into().unwrap());
            let reclen = u16::from_ne_bytes(buf[pos + 16..pos + 18].try_into().unwrap()) as usize;
            let d_type = buf[pos + 18];
            if reclen < 20 || pos + reclen > buf.len() {
                return Err(io::Error::other(format!(
                    "malformed dirent (reclen {reclen})"
                )));
            }
            let raw = &buf[pos + 19..pos + reclen];
            let name = &raw[..raw.iter().position(|b| *b == 0).unwrap_or(raw.len())];
            out.push(RawDirent {
                name: OsStr::from_bytes(name).to_owned(),
                ino,
                off,
                d_type,
            });
            pos += reclen;
        }
        Ok(out)
    }

    /// Reads everything from the current position to the end.
    pub fn read_rest(&mut self, buf_size: usize) -> io::Result<Vec<RawDirent>> {
        let mut all = Vec::new();
        loop {
            let batch = self.read_batch(buf_size)?;
            if batch.is_empty() {
                return Ok(all);
            }
            all.extend(batch);
        }
    }

    /// lseek(2) to a d_off cookie (or 0 to rewind).
    pub fn seek(&mut self, off: i64) -> io::Result<()> {
        self.file.seek(SeekFrom::Start(off as u64)).map(|_| ())
    }
}

/// All entries of a directory, "." and ".." included, in readdir order.
pub fn read_dir_raw(path: &Path) -> io::Result<Vec<RawDirent>> {
    RawDir::open(path)?.read_rest(32 * 1024)
}

/// llistxattr(2): all attribute names of `path` itself (symlinks not followed).
pub fn llistxattr(path: &Path) -> io::Result<Vec<String>> {
    let c = cpath(path);
    loop {
        // SAFETY: `c` is a valid NUL-terminated path; a NULL buffer of size 0
        // only asks for the needed size.
        let size = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; size as usize + 1];
        // SAFETY: `buf` is writable for buf.len() bytes during the call.
        let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ERANGE) {
                continue; // the list grew in between
            }
            return Err(e);
        }
        buf.truncate(n as usize);
        return Ok(buf
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect());
    }
}

/// `lsetxattr(2)`: sets `name` on `path` itself (never following a symlink).
pub fn lsetxattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let p = CString::new(path.as_os_str().as_bytes()).expect("NUL in path");
    let n = CString::new(name).expect("NUL in name");
    // SAFETY: NUL-terminated strings; `value` is readable for its length.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
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

/// lgetxattr(2): the value of one attribute of `path` itself.
pub fn lgetxattr(path: &Path, name: &str) -> io::Result<Vec<u8>> {
    let c = cpath(path);
    let n = CString::new(name).unwrap();
    loop {
        // SAFETY: valid NUL-terminated strings; NULL/0 asks for the size.
        let size = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; size as usize + 1];
        // SAFETY: `buf` is writable for buf.len() bytes during the call.
        let got =
            unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ERANGE) {
                continue;
            }
            return Err(e);
        }
        buf.truncate(got as usize);
        return Ok(buf);
    }
}

/// statvfs(3) of the file system holding `path`.
pub fn statvfs(path: &Path) -> io::Result<libc::statvfs> {
    let c = cpath(path);
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid path and `st` points to writable memory of the
    // right type; it is read only after the call reported success.
    if unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled the whole struct.
    Ok(unsafe { st.assume_init() })
}

/// mknod(2) of a character device (used to write kernel-style whiteouts).
pub fn mknod_chr(path: &Path, major: u32, minor: u32) -> io::Result<()> {
    let c = cpath(path);
    // SAFETY: `c` is a valid NUL-terminated path; mknod has no other
    // memory-safety preconditions.
    let r = unsafe {
        libc::mknod(
            c.as_ptr(),
            libc::S_IFCHR | 0o644,
            libc::makedev(major, minor),
        )
    };
    if r != 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The errno of a failed call, None on success.
pub fn errno<T>(r: &io::Result<T>) -> Option<i32> {
    r.as_ref().err().map(|e| e.raw_os_error().unwrap_or(-1))
}

// ====================================================================== walk

/// File type as lstat reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
    #[default]
    Unknown,
}

impl Kind {
    pub fn of(ft: fs::FileType) -> Kind {
        if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            Kind::File
        } else if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_fifo() {
            Kind::Fifo
        } else if ft.is_socket() {
            Kind::Socket
        } else if ft.is_char_device() {
            Kind::CharDev
        } else if ft.is_block_device() {
            Kind::BlockDev
        } else {
            Kind::Unknown
        }
    }

    /// The readdir d_type matching this type.
    pub fn d_type(self) -> u8 {
        match self {
            Kind::Dir => libc::DT_DIR,
            Kind::File => libc::DT_REG,
            Kind::Symlink => libc::DT_LNK,
            Kind::Fifo => libc::DT_FIFO,
            Kind::Socket => libc::DT_SOCK,
            Kind::CharDev => libc::DT_CHR,
            Kind::BlockDev => libc::DT_BLK,
            Kind::Unknown => libc::DT_UNKNOWN,
        }
    }
}

/// Everything the walk learns about one path.
#[derive(Clone, Debug, Default)]
pub struct Record {
    // --- the view: compared between mounts by `view_diff` ---
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky (mode & 0o7777).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// st_nlink of non-directories. Directories are left out: kernel
    /// overlayfs reports 1 for merged directories (and the real count for
    /// the others), which is not something to copy.
    pub nlink: Option<u64>,
    /// (seconds, nanoseconds).
    pub mtime: (i64, i64),
    /// FNV-1a 64 of the content of regular files, read with read(2).
    pub content: Option<u64>,
    pub symlink: Option<OsString>,
    /// (major, minor) of device nodes.
    pub rdev: Option<(u32, u32)>,
    /// Sorted `user.*` attributes (name, escaped value), internal overlay
    /// names excluded (see `is_internal_xattr`).
    pub xattrs: Vec<(String, String)>,
    /// Sorted names from readdir, "." and ".." excluded.
    pub entries: Option<Vec<OsString>>,
    /// Calls that failed while looking at this path.
    pub errors: Vec<String>,
    // --- inode facts: checked by rules, never compared raw across
    //     different kinds of mounts ---
    pub ino: u64,
    pub dev: u64,
    /// d_ino / d_type the parent's readdir reported (None for the root).
    pub d_ino: Option<u64>,
    pub d_type: Option<u8>,
    /// Directories: how often readdir returned "." and "..".
    pub dots: (usize, usize),
}

impl Record {
    /// One-line description for reports (no inode facts).
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{:?} {:04o} {}:{} size {} nlink {:?}",
            self.kind, self.perm, self.uid, self.gid, self.size, self.nlink
        );
        if let Some(t) = &self.symlink {
            s += &format!(" -> {t:?}");
        }
        if let Some(r) = self.rdev {
            s += &format!(" rdev {}:{}", r.0, r.1);
        }
        if !self.xattrs.is_empty() {
            s += &format!(" xattrs {:?}", self.xattrs);
        }
        if !self.errors.is_empty() {
            s += &format!(" errors {:?}", self.errors);
        }
        s
    }
}

pub type Walk = BTreeMap<PathBuf, Record>;

/// `Record::mtime` of entries changed during a test (see
/// [`mask_recent_mtimes`]); reported as "recent".
pub const RECENT_MTIME: (i64, i64) = (i64::MAX, 0);

/// Replaces every mtime at or after `since` by [`RECENT_MTIME`]: two mounts
/// that ran the same writes a few milliseconds apart then compare equal,
/// while an mtime that should have been preserved (copy-up) or set
/// (utimens) still shows up as a difference.
pub fn mask_recent_mtimes(w: &mut Walk, since: SystemTime) {
    for r in w.values_mut() {
        if ops::Mtime::of(r.mtime.0, r.mtime.1, since) == ops::Mtime::Recent {
            r.mtime = RECENT_MTIME;
        }
    }
}

/// Attribute names that belong to overlay implementations, never to the
/// user: strata must hide them. (Kernel overlayfs in its default mode hides
/// only `trusted.overlay.*`; `user.overlay.*` is private to it only with
/// `-o userxattr`.)
pub fn is_internal_xattr(name: &str) -> bool {
    [
        "trusted.overlay.",
        "user.overlay.",
        "user.fuseoverlayfs.",
        "user.containers.",
        "user.strata.",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

struct Fnv(u64);
impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// FNV-1a 64 of a byte string (the `content` of a Record).
pub fn content_hash(bytes: &[u8]) -> u64 {
    let mut h = Fnv::new();
    h.update(bytes);
    h.0
}

fn hash_file(path: &Path) -> io::Result<u64> {
    let mut f = File::open(path)?;
    let mut h = Fnv::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok(h.0),
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn escape_bytes(v: &[u8]) -> String {
    v.iter()
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect()
}

pub fn dev_major_minor(dev: u64) -> (u32, u32) {
    (
        (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)) as u32,
        (((dev >> 12) & 0xffff_ff00) | (dev & 0xff)) as u32,
    )
}

pub fn record_for(path: &Path) -> Record {
    let mut r = Record::default();
    let md = match fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) => {
            r.errors.push(format!("lstat: {e}"));
            return r;
        }
    };
    r.kind = Kind::of(md.file_type());
    r.perm = md.mode() & 0o7777;
    r.uid = md.uid();
    r.gid = md.gid();
    r.size = md.size();
    r.nlink = (r.kind != Kind::Dir).then_some(md.nlink());
    r.mtime = (md.mtime(), md.mtime_nsec());
    r.ino = md.ino();
    r.dev = md.dev();
    match r.kind {
        Kind::File => match hash_file(path) {
            Ok(h) => r.content = Some(h),
            Err(e) => r.errors.push(format!("read: {e}")),
        },
        Kind::Symlink => match fs::read_link(path) {
            Ok(t) => r.symlink = Some(t.into_os_string()),
            Err(e) => r.errors.push(format!("readlink: {e}")),
        },
        Kind::CharDev | Kind::BlockDev => r.rdev = Some(dev_major_minor(md.rdev())),
        _ => {}
    }
    match llistxattr(path) {
        Ok(names) => {
            let mut names: Vec<String> = names
                .into_iter()
                .filter(|n| n.starts_with("user.") && !is_internal_xattr(n))
                .collect();
            names.sort();
            for n in names {
                match lgetxattr(path, &n) {
                    Ok(v) => r.xattrs.push((n, escape_bytes(&v))),
                    Err(e) => r.errors.push(format!("lgetxattr {n}: {e}")),
                }
            }
        }
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
        Err(e) => r.errors.push(format!("llistxattr: {e}")),
    }
    r
}

/// Walks the tree under `root` with lstat (symlinks are never followed),
/// keyed by path relative to `root` (the root itself is the empty path).
pub fn walk(root: &Path) -> Walk {
    let mut out = Walk::new();
    let mut stack: Vec<(PathBuf, Option<RawDirent>)> = vec![(PathBuf::new(), None)];
    while let Some((rel, dent)) = stack.pop() {
        let full = if rel.as_os_str().is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let mut r = record_for(&full);
        if let Some(d) = &dent {
            r.d_ino = Some(d.ino);
            r.d_type = Some(d.d_type);
        }
        if r.kind == Kind::Dir {
            match read_dir_raw(&full) {
                Ok(list) => {
                    let mut names = Vec::new();
                    for e in list {
                        match e.name.as_bytes() {
                            b"." => r.dots.0 += 1,
                            b".." => r.dots.1 += 1,
                            _ => {
                                names.push(e.name.clone());
                                stack.push((rel.join(&e.name), Some(e)));
                            }
                        }
                    }
                    names.sort();
                    r.entries = Some(names);
                }
                Err(e) => r.errors.push(format!("readdir: {e}")),
            }
        }
        out.insert(rel, r);
    }
    out
}

// =============================================================== comparisons

/// "/relative/path", with very long components shortened for reports.
pub fn show(rel: &Path) -> String {
    let mut s = String::new();
    for c in rel.components() {
        let c = c.as_os_str().to_string_lossy();
        s.push('/');
        if c.chars().count() > 40 {
            s += &format!("{}…[{}B]", c.chars().take(8).collect::<String>(), c.len());
        } else {
            s += &c;
        }
    }
    if s.is_empty() { "/".into() } else { s }
}

fn view_fields(r: &Record) -> Vec<(&'static str, String)> {
    vec![
        ("type", format!("{:?}", r.kind)),
        ("mode", format!("{:04o}", r.perm)),
        ("uid", r.uid.to_string()),
        ("gid", r.gid.to_string()),
        ("size", r.size.to_string()),
        ("nlink", format!("{:?}", r.nlink)),
        (
            "mtime",
            if r.mtime == RECENT_MTIME {
                "recent".into()
            } else {
                format!("{}.{:09}", r.mtime.0, r.mtime.1)
            },
        ),
        (
            "content",
            r.content.map_or("-".into(), |h| format!("fnv:{h:016x}")),
        ),
        ("symlink", format!("{:?}", r.symlink)),
        ("rdev", format!("{:?}", r.rdev)),
        ("xattrs", format!("{:?}", r.xattrs)),
        ("errors", format!("{:?}", r.errors)),
    ]
}

/// Path-by-path differences of everything but the inode facts.
pub fn view_diff(a_name: &str, a: &Walk, b_name: &str, b: &Walk) -> Vec<String> {
    let mut out = Vec::new();
    for p in a.keys().filter(|p| !b.contains_key(*p)) {
        out.push(format!("{}: only on {a_name} ({:?})", show(p), a[p].kind));
    }
    for p in b.keys().filter(|p| !a.contains_key(*p)) {
        out.push(format!("{}: only on {b_name} ({:?})", show(p), b[p].kind));
    }
    for (p, ra) in a {
        let Some(rb) = b.get(p) else { continue };
        let lstat_err = |r: &Record| r.errors.iter().find(|e| e.starts_with("lstat")).cloned();
        if lstat_err(ra).is_some() || lstat_err(rb).is_some() {
            // Listed by readdir but not stat-able: one line, not every field.
            if lstat_err(ra) != lstat_err(rb) {
                out.push(format!(
                    "{}: listed but lstat gives {a_name}={:?} {b_name}={:?}",
                    show(p),
                    lstat_err(ra),
                    lstat_err(rb)
                ));
            }
            continue;
        }
        for ((name, va), (_, vb)) in view_fields(ra).into_iter().zip(view_fields(rb)) {
            if va != vb {
                out.push(format!("{}: {name}: {a_name}={va} {b_name}={vb}", show(p)));
            }
        }
        if ra.entries != rb.entries {
            let set = |r: &Record| {
                r.entries
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .collect::<BTreeSet<_>>()
            };
            let (sa, sb) = (set(ra), set(rb));
            let only = |x: &BTreeSet<OsString>, y: &BTreeSet<OsString>| {
                x.difference(y)
                    .map(|n| n.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
            };
            out.push(format!(
                "{}: readdir: only on {a_name}: {:?}, only on {b_name}: {:?}{}",
                show(p),
                only(&sa, &sb),
                only(&sb, &sa),
                if sa == sb {
                    " (same names, different multiplicity)"
                } else {
                    ""
                }
            ));
        }
    }
    out
}

/// Groups of paths sharing one st_ino (only groups of two or more).
pub fn inode_classes(w: &Walk) -> BTreeSet<Vec<PathBuf>> {
    let mut by_ino: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
    for (p, r) in w
        .iter()
        .filter(|(_, r)| r.errors.iter().all(|e| !e.starts_with("lstat")))
    {
        by_ino.entry(r.ino).or_default().push(p.clone());
    }
    by_ino.into_values().filter(|v| v.len() > 1).collect()
}

/// Compares which paths share an inode (raw numbers are not compared).
pub fn inode_class_diff(a_name: &str, a: &Walk, b_name: &str, b: &Walk) -> Vec<String> {
    let fmt = |c: &Vec<PathBuf>| c.iter().map(|p| show(p)).collect::<Vec<_>>().join(" = ");
    let (ca, cb) = (inode_classes(a), inode_classes(b));
    let mut out = Vec::new();
    for c in ca.difference(&cb) {
        out.push(format!("same inode on {a_name} only: {}", fmt(c)));
    }
    for c in cb.difference(&ca) {
        out.push(format!("same inode on {b_name} only: {}", fmt(c)));
    }
    out
}

/// Rules every mount must satisfy on its own:
/// * d_ino from readdir == st_ino from lstat, d_type matches the type;
/// * st_ino unique, except for hard links (non-directories, nlink big
///   enough, same type/size/content);
/// * every entry has the root's st_dev;
/// * readdir returns "." and ".." once each and no name twice.
pub fn inode_rule_violations(w: &Walk) -> Vec<String> {
    let mut out = Vec::new();
    let Some(root) = w.get(Path::new("")) else {
        return vec!["no root in walk".into()];
    };
    for (p, r) in w {
        if r.errors.iter().any(|e| e.starts_with("lstat")) {
            continue;
        }
        if r.dev != root.dev {
            out.push(format!(
                "{}: st_dev {:#x} differs from the root's {:#x}",
                show(p),
                r.dev,
                root.dev
            ));
        }
        if let Some(d) = r.d_ino
            && d != r.ino
        {
            out.push(format!(
                "{}: readdir d_ino {d} != lstat st_ino {}",
                show(p),
                r.ino
            ));
        }
        if let Some(t) = r.d_type
            && t != libc::DT_UNKNOWN
            && t != r.kind.d_type()
        {
            out.push(format!(
                "{}: readdir d_type {t} but lstat says {:?}",
                show(p),
                r.kind
            ));
        }
        if let Some(names) = &r.entries {
            if r.dots != (1, 1) {
                out.push(format!(
                    "{}: readdir returned \".\" {} and \"..\" {} times",
                    show(p),
                    r.dots.0,
                    r.dots.1
                ));
            }
            let mut seen = BTreeSet::new();
            for n in names {
                if !seen.insert(n) {
                    out.push(format!(
                        "{}: readdir returned {:?} more than once",
                        show(p),
                        n
                    ));
                }
            }
        }
    }
    for class in inode_classes(w) {
        let recs: Vec<&Record> = class.iter().map(|p| &w[p]).collect();
        let r0 = recs[0];
        let links_ok = recs.iter().all(|r| {
            r.kind != Kind::Dir
                && r.kind == r0.kind
                && r.size == r0.size
                && r.content == r0.content
                && r.nlink.unwrap_or(0) >= class.len() as u64
        });
        if !links_ok {
            out.push(format!(
                "st_ino {} shared by paths that are not hard links of one file: {}",
                r0.ino,
                class
                    .iter()
                    .map(|p| format!("{} ({:?}, nlink {:?})", show(p), w[p].kind, w[p].nlink))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    out
}

/// Raw st_ino and d_ino per path (two mounts of the same fs type, e.g. a
/// strata mount and a remount of it).
pub fn raw_inode_diff(a_name: &str, a: &Walk, b_name: &str, b: &Walk) -> Vec<String> {
    let mut out = Vec::new();
    for (p, ra) in a {
        let Some(rb) = b.get(p) else {
            out.push(format!("{}: only on {a_name}", show(p)));
            continue;
        };
        if ra.ino != rb.ino {
            out.push(format!(
                "{}: st_ino {a_name}={} {b_name}={}",
                show(p),
                ra.ino,
                rb.ino
            ));
        }
        if ra.d_ino != rb.d_ino {
            out.push(format!(
                "{}: d_ino {a_name}={:?} {b_name}={:?}",
                show(p),
                ra.d_ino,
                rb.d_ino
            ));
        }
    }
    for p in b.keys().filter(|p| !a.contains_key(*p)) {
        out.push(format!("{}: only on {b_name}", show(p)));
    }
    out
}

/// Panics with one line per problem (at most 200 shown).
pub fn assert_no_problems(what: &str, problems: &[String]) {
    if problems.is_empty() {
        return;
    }
    let mut msg = format!("{what}: {} problem(s)\n", problems.len());
    for p in problems.iter().take(200) {
        msg += &format!("  {p}\n");
    }
    if problems.len() > 200 {
        msg += &format!("  ... and {} more\n", problems.len() - 200);
    }
    panic!("{msg}");
}

/// All problems of `got` against the reference `want`: view differences,
/// inode class differences, and the inode rules on both.
pub fn equivalence_problems(
    want_name: &str,
    want: &Walk,
    got_name: &str,
    got: &Walk,
) -> Vec<String> {
    let mut p = view_diff(want_name, want, got_name, got);
    p.extend(inode_class_diff(want_name, want, got_name, got));
    p.extend(
        inode_rule_violations(want)
            .into_iter()
            .map(|v| format!("[{want_name}] {v}")),
    );
    p.extend(
        inode_rule_violations(got)
            .into_iter()
            .map(|v| format!("[{got_name}] {v}")),
    );
    p
}

pub fn assert_equivalent(want_name: &str, want: &Walk, got_name: &str, got: &Walk) {
    assert_no_problems(
        &format!("{got_name} differs from {want_name}"),
        &equivalence_problems(want_name, want, got_name, got),
    );
}

// ====================================================== expected fixture tree

/// Spot checks of the merged fixture (app:update:base) independent of any
/// reference mount: whiteouts, opaque dirs, replacements, modes, owners,
/// hard links, special files, contents.
pub fn expected_tree_problems(w: &Walk) -> Vec<String> {
    let mut out = Vec::new();
    let get = |p: &str| w.get(Path::new(p));
    for (p, r) in w {
        if p.file_name()
            .is_some_and(|n| n.as_bytes().starts_with(b".wh."))
        {
            out.push(format!("{}: whiteout name visible", show(p)));
        }
        if r.kind == Kind::CharDev && r.rdev == Some((0, 0)) {
            out.push(format!("{}: 0/0 whiteout device visible", show(p)));
        }
    }
    for p in [
        "var/log/old.log",
        "opt/gone",
        "usr/bin/[",
        "never-existed",
        "merged/a.txt",
        "etc/ssl/certs",
        "opaque-me/lower1.txt",
        "opaque-me/lower2.txt",
        "to-file/inner.txt",
        "srv/www/old.html",
    ] {
        if get(p).is_some() {
            out.push(format!("{}: should be hidden", show(Path::new(p))));
        }
    }
    let entries = |p: &str, want: &[&str]| -> Option<String> {
        let got: Vec<String> = get(p)?
            .entries
            .as_ref()?
            .iter()
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        (got != want).then(|| format!("{}: entries {got:?}, want {want:?}", show(Path::new(p))))
    };
    let deep_leaf = {
        let mut p = String::from("deep");
        for i in 1..=16 {
            p += &format!("/{i:02}-{}", "d".repeat(237));
        }
        p
    };
    for (p, want) in [
        ("var/log", &[][..]),
        ("opt", &[]),
        ("etc/ssl", &["new.pem"]),
        ("opaque-me", &["new.txt"]),
        ("merged", &["b.txt", "c.txt"]),
        ("srv/www", &["index.html"]),
        ("to-dir", &["inside.txt"]),
        ("usr/bin", &["app", "busybox", "ls", "sh", "test"]),
        (
            "usr/share/app/links",
            &["absolute", "dangling", "escaping", "relative", "self-loop"],
        ),
        ("mnt", &[]),
        ("tmp", &[]),
        (deep_leaf.as_str(), &["leaf.txt", "top.txt"]),
    ] {
        match get(p) {
            None => out.push(format!("{}: missing", show(Path::new(p)))),
            Some(_) => out.extend(entries(p, want)),
        }
    }
    let mut expect = |p: &str, what: &str, ok: &dyn Fn(&Record) -> bool| match get(p) {
        None => out.push(format!("{}: missing (want {what})", show(Path::new(p)))),
        Some(r) if !ok(r) => out.push(format!(
            "{}: want {what}, got {}",
            show(Path::new(p)),
            r.summary()
        )),
        _ => {}
    };
    let text = |s: &'static str| {
        move |r: &Record| r.kind == Kind::File && r.content == Some(content_hash(s.as_bytes()))
    };
    expect("etc/hostname", "update's content, mode 0600", &|r| {
        text("update-host\n")(r) && r.perm == 0o600
    });
    expect("merged/b.txt", "app's content", &text("b from app\n"));
    expect("merged/c.txt", "update's content", &text("c from update\n"));
    expect("to-file", "a regular file", &|r| r.kind == Kind::File);
    expect("to-dir", "a directory", &|r| r.kind == Kind::Dir);
    expect("usr/bin/busybox", "mode 4755", &|r| {
        r.kind == Kind::File && r.perm == 0o4755
    });
    expect("usr/bin/test", "nlink 2 (its twin [ is whited out)", &|r| {
        r.nlink == Some(2)
    });
    expect("usr/bin/sh", "-> busybox", &|r| {
        r.symlink.as_deref() == Some(OsStr::new("busybox"))
    });
    expect("tmp", "mode 1777", &|r| {
        r.kind == Kind::Dir && r.perm == 0o1777
    });
    expect("home/user", "0700 1000:1000", &|r| {
        r.perm == 0o700 && (r.uid, r.gid) == (1000, 1000)
    });
    expect("home/user/.profile", "0600 1000:1000", &|r| {
        r.perm == 0o600 && (r.uid, r.gid) == (1000, 1000)
    });
    expect("etc/shadow", "0640 0:42", &|r| {
        r.perm == 0o640 && (r.uid, r.gid) == (0, 42)
    });
    expect("dev/null", "char device 1:3", &|r| {
        r.kind == Kind::CharDev && r.rdev == Some((1, 3))
    });
    expect("run/app.fifo", "fifo 0620", &|r| {
        r.kind == Kind::Fifo && r.perm == 0o620
    });
    expect("usr/share/app/big.bin", "307213 bytes", &|r| {
        r.size == 307_213
    });
    expect("usr/share/app/empty.txt", "empty file", &|r| {
        r.kind == Kind::File && r.size == 0
    });
    expect("usr/share/app/data1", "nlink 3, 1000:1000", &|r| {
        r.nlink == Some(3) && r.uid == 1000
    });
    expect(
        "usr/share/app/links/escaping",
        "-> ../../../../../../etc/shadow",
        &|r| r.symlink.as_deref() == Some(OsStr::new("../../../../../../etc/shadow")),
    );
    expect("usr/share/app/links/self-loop", "-> self-loop", &|r| {
        r.symlink.as_deref() == Some(OsStr::new("self-loop"))
    });
    expect("usr/bin/app", "xattr user.fixture.test", &|r| {
        r.xattrs
            == [(
                "user.fixture.test".to_string(),
                "hello-from-app".to_string(),
            )]
    });
    expect("usr/share/app", "xattr user.fixture.dir", &|r| {
        r.xattrs == [("user.fixture.dir".to_string(), "on-a-directory".to_string())]
    });
    expect("etc/passwd", "only the non-internal xattr", &|r| {
        r.xattrs == [("user.fixture.keep".to_string(), "visible".to_string())]
    });
    let long = format!("names/{}.txt", "L".repeat(251));
    expect(&long, "a file with a 255-byte name", &|r| {
        r.kind == Kind::File
    });
    expect("names/ünïcødé-名前-✓.txt", "a file", &|r| {
        r.kind == Kind::File
    });
    expect("names/with  two spaces.txt", "a file", &|r| {
        r.kind == Kind::File
    });
    let (d1, d2, d3) = (
        get("usr/share/app/data1"),
        get("usr/share/app/data2"),
        get("usr/share/other/data3"),
    );
    if let (Some(a), Some(b), Some(c)) = (d1, d2, d3)
        && !(a.ino == b.ino && b.ino == c.ino)
    {
        out.push("data1/data2/data3: not one inode".into());
    }
    out
}

/// xorshift64*: a small, seeded PRNG for random scripts (no crate needed;
/// tests print the seed on failure).
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len())]
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let x = self.next().to_le_bytes();
            chunk.copy_from_slice(&x[..chunk.len()]);
        }
    }
}

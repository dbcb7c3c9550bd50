//! End-to-end checks of strata's command line.
//!
//! Each test runs the real `strata` binary with `std::process::Command`,
//! bounded by [`TIMEOUT`], and checks what a caller such as podman sees:
//! the exit status, what is printed, and that a refused mount left nothing
//! in `/proc/mounts`.
//!
//! Bad input must make strata exit non-zero with exactly one line on
//! stderr, `strata: <what is wrong>`, before anything is mounted. A few
//! tests mount a tmpfs or use `/dev/shm` to get a second filesystem, so the
//! suite expects to run as root (as strata itself usually does).

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long one run of strata may take before the test fails.
const TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Running strata
// ---------------------------------------------------------------------------

/// What one run of strata did.
struct Outcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn stderr_lines(&self) -> Vec<&str> {
        self.stderr.lines().collect()
    }
}

/// Reads all of `source` on its own thread; the text arrives on the
/// returned channel at end of file. A thread, so that a full stderr pipe
/// cannot block strata, and a channel, so that a pipe some stray child keeps
/// open cannot block the test past its deadline.
fn collect(mut source: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = source.read_to_end(&mut bytes);
        let _ = sender.send(String::from_utf8_lossy(&bytes).into_owned());
    });
    receiver
}

/// Runs strata with `args`, waiting at most [`TIMEOUT`].
fn run<S: AsRef<OsStr>>(args: &[S]) -> Outcome {
    let shown: Vec<String> = args
        .iter()
        .map(|arg| arg.as_ref().to_string_lossy().into_owned())
        .collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start strata");
    let stdout = collect(child.stdout.take().expect("stdout is piped"));
    let stderr = collect(child.stderr.take().expect("stderr is piped"));

    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for strata") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("strata {shown:?} did not exit within {TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let text = |receiver: mpsc::Receiver<String>, name: &str| {
        let left = deadline.saturating_duration_since(Instant::now());
        receiver
            .recv_timeout(left.max(Duration::from_secs(1)))
            .unwrap_or_else(|_| panic!("strata {shown:?} exited but its {name} stayed open"))
    };
    Outcome {
        status,
        stdout: text(stdout, "stdout"),
        stderr: text(stderr, "stderr"),
    }
}

// ---------------------------------------------------------------------------
// Mount table
// ---------------------------------------------------------------------------

/// Undoes the octal escapes `/proc/mounts` uses for blanks and backslashes
/// (`\040` is a space).
fn unescape_mount_path(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let octal = bytes.get(index + 1..index + 4).and_then(|digits| {
            let text = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (bytes[index], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                index += 4;
            }
            (byte, _) => {
                out.push(byte);
                index += 1;
            }
        }
    }
    PathBuf::from(OsString::from(String::from_utf8_lossy(&out).into_owned()))
}

/// Every mountpoint in `/proc/mounts` at or below `root`.
fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let table = fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
    table
        .lines()
        .filter_map(|line| line.split(' ').nth(1))
        .map(unescape_mount_path)
        .filter(|mountpoint| mountpoint.starts_with(root))
        .collect()
}

// ---------------------------------------------------------------------------
// Directories
// ---------------------------------------------------------------------------

/// A scratch tree for one test. On drop, anything still mounted inside it
/// (which would be a bug in strata) is unmounted before the tree is removed.
struct Tree {
    root: TempDir,
}

impl Tree {
    fn new() -> Self {
        let root = tempfile::tempdir().expect("create a temporary directory");
        // Canonical, so it matches what /proc/mounts shows.
        let canonical = fs::canonicalize(root.path()).expect("canonicalize temp dir");
        assert_eq!(canonical, root.path(), "the temp dir should be canonical");
        Self { root }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    fn dir(&self, name: &str) -> PathBuf {
        let path = self.path(name);
        fs::create_dir_all(&path).expect("create a test directory");
        path
    }

    fn file(&self, name: &str) -> PathBuf {
        let path = self.path(name);
        fs::write(&path, b"").expect("create a test file");
        path
    }

    /// Fails the test if strata left a mount anywhere in the tree.
    fn assert_nothing_mounted(&self) {
        let mounts = mounts_under(self.root.path());
        assert!(mounts.is_empty(), "strata mounted {mounts:?}");
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        for mountpoint in mounts_under(self.root.path()).iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(mountpoint).status();
        }
    }
}

/// A tmpfs mounted on a fresh temporary directory, unmounted on drop.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    fn mount() -> Self {
        let dir = tempfile::tempdir().expect("create a mountpoint");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "strata-cli-test"])
            .arg(dir.path())
            .status()
            .expect("run mount(8)");
        assert!(
            status.success(),
            "mounting a tmpfs failed (this test needs root)"
        );
        Self { dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// A directory on another filesystem than `near`: in /dev/shm when that is
/// one, else on a tmpfs mounted for the test.
enum Elsewhere {
    Shm(TempDir),
    Mounted(Tmpfs),
}

impl Elsewhere {
    fn find(near: &Path) -> Self {
        let near_dev = fs::metadata(near).expect("stat").dev();
        if let Ok(shm) = tempfile::tempdir_in("/dev/shm")
            && fs::metadata(shm.path()).is_ok_and(|meta| meta.dev() != near_dev)
        {
            return Self::Shm(shm);
        }
        Self::Mounted(Tmpfs::mount())
    }

    fn path(&self) -> &Path {
        match self {
            Self::Shm(dir) => dir.path(),
            Self::Mounted(tmpfs) => tmpfs.dir.path(),
        }
    }
}

// ---------------------------------------------------------------------------
// Assertions
// ---------------------------------------------------------------------------

/// `-o lowerdir=...,upperdir=...,workdir=...` for the given directories.
fn layers(lower: &Path, upper_work: Option<(&Path, &Path)>) -> String {
    let mut options = format!("lowerdir={}", lower.display());
    if let Some((upper, work)) = upper_work {
        options.push_str(&format!(
            ",upperdir={},workdir={}",
            upper.display(),
            work.display()
        ));
    }
    options
}

/// strata refused `args`: non-zero exit, exactly the one stderr line
/// `strata: {message}`, and nothing mounted in `tree`.
fn assert_refused<S: AsRef<OsStr>>(tree: &Tree, args: &[S], message: &str) {
    let outcome = run(args);
    assert!(
        !outcome.status.success(),
        "strata should fail; stdout: {:?}, stderr: {:?}",
        outcome.stdout,
        outcome.stderr
    );
    assert_eq!(
        outcome.stderr_lines(),
        vec![format!("strata: {message}")],
        "stderr must be exactly one line"
    );
    tree.assert_nothing_mounted();
}

fn args(list: &[&str]) -> Vec<OsString> {
    list.iter().map(OsString::from).collect()
}

fn path_arg(path: &Path) -> OsString {
    path.as_os_str().to_owned()
}

// ---------------------------------------------------------------------------
// Version and help
// ---------------------------------------------------------------------------

#[test]
fn version_prints_one_line() {
    for flag in ["--version", "-V"] {
        let outcome = run(&[flag]);
        assert!(outcome.status.success(), "{flag}: {:?}", outcome.status);
        let lines: Vec<&str> = outcome.stdout.lines().collect();
        assert_eq!(lines.len(), 1, "{flag} printed {:?}", outcome.stdout);
        assert!(
            lines[0].starts_with("strata "),
            "{flag} printed {:?}",
            lines[0]
        );
    }
}

#[test]
fn help_mentions_lowerdir() {
    for flag in ["--help", "-h"] {
        let outcome = run(&[flag]);
        assert!(outcome.status.success(), "{flag}: {:?}", outcome.status);
        assert!(
            outcome.stdout.contains("lowerdir"),
            "{flag} printed {:?}",
            outcome.stdout
        );
    }
}

// ---------------------------------------------------------------------------
// Bad command lines
// ---------------------------------------------------------------------------

#[test]
fn missing_lowerdir_option() {
    let tree = Tree::new();
    let m = tree.dir("m");
    assert_refused(&tree, &[path_arg(&m)], "lowerdir is required");
    let options = format!(
        "upperdir={},workdir={}",
        tree.dir("u").display(),
        tree.dir("w").display()
    );
    assert_refused(
        &tree,
        &[OsString::from("-o"), options.into(), path_arg(&m)],
        "lowerdir is required",
    );
}

#[test]
fn missing_mountpoint_argument() {
    let tree = Tree::new();
    let l = tree.dir("l");
    assert_refused(
        &tree,
        &args(&["-o", &layers(&l, None)]),
        "missing mountpoint",
    );
}

#[test]
fn unknown_flag() {
    let tree = Tree::new();
    let (l, m) = (tree.dir("l"), tree.dir("m"));
    let mut list = args(&["--bogus", "-o", &layers(&l, None)]);
    list.push(path_arg(&m));
    assert_refused(&tree, &list, "unknown flag '--bogus'");
}

#[test]
fn bad_uidmapping() {
    let tree = Tree::new();
    let (l, m) = (tree.dir("l"), tree.dir("m"));
    let options = format!("{},uidmapping=:0:100000", layers(&l, None));
    let mut list = args(&["-o", &options]);
    list.push(path_arg(&m));
    assert_refused(
        &tree,
        &list,
        "invalid uidmapping ':0:100000': expected container:host:count triples",
    );
}

#[test]
fn bad_xattr_permissions() {
    let tree = Tree::new();
    let (l, m) = (tree.dir("l"), tree.dir("m"));
    let options = format!("{},xattr_permissions=7", layers(&l, None));
    let mut list = args(&["-o", &options]);
    list.push(path_arg(&m));
    assert_refused(
        &tree,
        &list,
        "bad value for xattr_permissions: '7' (expected 0, 1 or 2)",
    );
}

#[test]
fn upperdir_without_workdir() {
    let tree = Tree::new();
    let (l, u, m) = (tree.dir("l"), tree.dir("u"), tree.dir("m"));
    let options = format!("{},upperdir={}", layers(&l, None), u.display());
    let mut list = args(&["-o", &options]);
    list.push(path_arg(&m));
    assert_refused(&tree, &list, "upperdir given without workdir");
}

// ---------------------------------------------------------------------------
// Bad directories
// ---------------------------------------------------------------------------

#[test]
fn missing_lowerdir_directory() {
    let tree = Tree::new();
    let (missing, m) = (tree.path("missing"), tree.dir("m"));
    let mut list = args(&["-o", &layers(&missing, None)]);
    list.push(path_arg(&m));
    let message = format!(
        "lowerdir '{}': No such file or directory",
        missing.display()
    );
    assert_refused(&tree, &list, &message);
}

#[test]
fn lowerdir_that_is_a_file() {
    let tree = Tree::new();
    let (file, m) = (tree.file("f"), tree.dir("m"));
    let mut list = args(&["-o", &layers(&file, None)]);
    list.push(path_arg(&m));
    assert_refused(
        &tree,
        &list,
        &format!("lowerdir '{}' is not a directory", file.display()),
    );
}

#[test]
fn missing_mountpoint_directory() {
    let tree = Tree::new();
    let (l, missing) = (tree.dir("l"), tree.path("missing"));
    let mut list = args(&["-o", &layers(&l, None)]);
    list.push(path_arg(&missing));
    let message = format!(
        "mountpoint '{}': No such file or directory",
        missing.display()
    );
    assert_refused(&tree, &list, &message);
}

#[test]
fn workdir_on_another_filesystem() {
    let tree = Tree::new();
    let (l, u, m) = (tree.dir("l"), tree.dir("u"), tree.dir("m"));
    let elsewhere = Elsewhere::find(&u);
    let w = elsewhere.path().join("w");
    fs::create_dir(&w).expect("create workdir");
    let mut list = args(&["-o", &layers(&l, Some((&u, &w)))]);
    list.push(path_arg(&m));
    let message = format!(
        "workdir '{}' and upperdir '{}' are on different filesystems",
        w.display(),
        u.display()
    );
    assert_refused(&tree, &list, &message);
}

#[test]
fn upperdir_inside_a_lowerdir() {
    let tree = Tree::new();
    let (l, u, w, m) = (tree.dir("l"), tree.dir("l/u"), tree.dir("w"), tree.dir("m"));
    let mut list = args(&["-o", &layers(&l, Some((&u, &w)))]);
    list.push(path_arg(&m));
    let message = format!(
        "upperdir '{}' is inside lowerdir '{}'",
        u.display(),
        l.display()
    );
    assert_refused(&tree, &list, &message);
}

#[test]
fn mountpoint_inside_a_lowerdir() {
    let tree = Tree::new();
    let (l, m) = (tree.dir("l"), tree.dir("l/m"));
    let mut list = args(&["-o", &layers(&l, None)]);
    list.push(path_arg(&m));
    let message = format!(
        "mountpoint '{}' is inside lowerdir '{}'",
        m.display(),
        l.display()
    );
    assert_refused(&tree, &list, &message);
}

#[test]
fn mount_fuse3_argument_order_is_checked_too() {
    // mount.fuse3 runs `strata SOURCE MOUNTPOINT -o OPTS`.
    let tree = Tree::new();
    let (l, m) = (tree.dir("l"), tree.dir("l/m"));
    let list = vec![
        OsString::from("strata"),
        path_arg(&m),
        OsString::from("-o"),
        OsString::from(layers(&l, None)),
    ];
    let message = format!(
        "mountpoint '{}' is inside lowerdir '{}'",
        m.display(),
        l.display()
    );
    assert_refused(&tree, &list, &message);
}

// ---------------------------------------------------------------------------
// Warnings
// ---------------------------------------------------------------------------

/// An unknown `-o` option is only a warning. A run that is otherwise valid
/// would mount, so this uses a run that fails later (missing lowerdir) and
/// checks that both the warning and the error are printed, one line each.
/// This relies on strata printing the parser's warnings before it checks
/// the directories.
#[test]
fn unknown_option_is_a_warning() {
    let tree = Tree::new();
    let (missing, m) = (tree.path("missing"), tree.dir("m"));
    let options = format!("{},bogus_option=1", layers(&missing, None));
    let mut list = args(&["-o", &options]);
    list.push(path_arg(&m));
    let outcome = run(&list);
    assert!(!outcome.status.success(), "stderr: {:?}", outcome.stderr);
    let mut lines = outcome.stderr_lines();
    lines.sort_unstable();
    let error = format!(
        "strata: lowerdir '{}': No such file or directory",
        missing.display()
    );
    let mut expected = vec![
        error.as_str(),
        "strata: warning: unknown option 'bogus_option=1' ignored",
    ];
    expected.sort_unstable();
    assert_eq!(lines, expected);
    tree.assert_nothing_mounted();
}

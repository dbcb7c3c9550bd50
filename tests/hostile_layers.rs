//! Hostile layers: strata against kernel overlayfs over layers built to
//! hurt (the reliability issue "hostile layers").
//!
//! * symlinks to `/`, `..`, `../../..`, to a canary outside the layers
//!   (absolute and relative to the layer's own host path), self-loops,
//!   4095-byte targets; hard links (within a layer, across two layers, to a
//!   symlink); character, block, fifo and socket nodes; 0/0 whiteouts for
//!   names that exist nowhere; names with newlines, tabs, invalid UTF-8 and
//!   255 bytes; a directory chain whose in-layer path exceeds PATH_MAX;
//!   trusted.overlay.* marks on files, redirects that try to climb out;
//! * `.wh.` forms (OCI, strata only: the kernel has no equivalent) checked
//!   against explicit expectations and, when installed, fuse-overlayfs;
//! * huge xattrs (64 KiB values, a 60 KiB name list) on tmpfs, which holds
//!   them (ext4 without `ea_inode` stops near 4 KiB per inode);
//! * one directory with 1,000,000 entries (on tmpfs: ~6 s to make; set
//!   `HOSTILE_LAYERS_COUNT=N` for another size).
//!
//! Every comparison is kernel vs strata over the same layers, read-only and
//! with an upper (`redirect_dir=on,index=on` for the kernel, as in
//! write_path.rs). Writes resolve inside the mount (RESOLVE_IN_ROOT, as in
//! a container), so a symlink to `/` means the mount's root; a canary file
//! outside the layers, which the hostile symlinks name, must stay
//! untouched: only a daemon that follows a layer's symlink on the host
//! could reach it. After every case the daemon must still answer and its
//! log must hold no "panicked".
//!
//! Needs root, /dev/fuse, kernel overlayfs, tmpfs and fusermount3.

mod common;

use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use common::*;

// ================================================================ helpers

fn c(p: &[u8]) -> CString {
    CString::new(p).expect("no NUL")
}

fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn mknod(path: &Path, mode: u32, major: u32, minor: u32) {
    let p = c(path.as_os_str().as_bytes());
    // SAFETY: valid NUL-terminated path.
    let r = unsafe { libc::mknod(p.as_ptr(), mode, libc::makedev(major, minor)) };
    assert_eq!(
        r,
        0,
        "mknod {}: {}",
        path.display(),
        io::Error::last_os_error()
    );
}

fn setxattr(path: &Path, name: &str, value: &[u8]) {
    common::lsetxattr(path, name, value)
        .unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", path.display()));
}

/// A tmpfs mounted on a fresh directory (lazily unmounted on drop).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn new(size: &str) -> Tmpfs {
        let dir = tempdir();
        let o = run_with_timeout(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!("size={size},mode=0755"))
                .arg("tmpfs")
                .arg(dir.path()),
            Duration::from_secs(10),
        );
        assert!(o.success(), "mount tmpfs: {o}");
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = run_with_timeout(
            Command::new("umount").arg("-l").arg(self.dir.path()),
            Duration::from_secs(10),
        );
    }
}

/// The daemon still answers and has logged no panic.
fn assert_alive(m: &StrataMount, case: &str) {
    let root = fs::symlink_metadata(m.path());
    assert!(root.is_ok(), "{case}: strata mount is dead: {root:?}");
    let log = m.stderr_log();
    assert!(
        !log.contains("panicked"),
        "{case}: the daemon panicked:\n{log}"
    );
}

/// Runs `ops` on both mounts; one line per differing outcome.
fn ops_diff(kernel: &Path, strata: &Path, ops: &[Op], since: SystemTime) -> Vec<String> {
    let mut out = Vec::new();
    for op in ops {
        let (k, s) = (apply(kernel, op, since), apply(strata, op, since));
        if k != s {
            out.push(format!("{op}: kernel {k}, strata {s}"));
        }
    }
    out
}

/// Both walks, compared. Left out: `redir_ok` reaches `redir_target`'s
/// content by its redirect, so on both mounts two paths show one inode;
/// and `redir_climb` (lookup EACCES on both, checked by `read_ops`), which
/// the kernel lists and strata's readdirplus drops (open difference).
fn tree_diff(kernel: &Path, strata: &Path) -> Vec<String> {
    let (k, s) = (walk(kernel), walk(strata));
    known_differences_out(equivalence_problems("kernel", &k, "strata", &s))
}

fn known_differences_out(problems: Vec<String>) -> Vec<String> {
    problems
        .into_iter()
        .filter(|p| !(p.contains("not hard links") && p.contains("/redir_ok/t_file")))
        .filter(|p| !p.starts_with("/redir_climb: ") && !p.contains("[\"redir_climb\"]"))
        .collect()
}

// ====================================================== the hostile layers

/// Components of the directory chain whose in-layer path is > PATH_MAX.
fn deep_components() -> Vec<Vec<u8>> {
    (0..18)
        .map(|i| format!("{i:02}{}", "d".repeat(248)).into_bytes())
        .collect()
}

/// Hostile names (one directory entry each).
fn hostile_names() -> Vec<Vec<u8>> {
    vec![
        b"new\nline".to_vec(),
        b"\ttab\r".to_vec(),
        b"\xff\xfe invalid utf-8".to_vec(),
        b"caf\xe9".to_vec(),
        vec![b'n'; 255],
        vec![0xff; 255],
        b" ".to_vec(),
        b"-rf".to_vec(),
        b"a\\b".to_vec(),
        b"...".to_vec(),
        b"*?[".to_vec(),
    ]
}

/// The canary: a directory and a file outside every layer, named by the
/// hostile symlinks. Returns (dir, file, content).
fn canary(root: &Path) -> (PathBuf, PathBuf) {
    let dir = root.join("canary");
    fs::create_dir(&dir).unwrap();
    let file = dir.join("victim");
    fs::write(&file, b"canary\n").unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    (dir, file)
}

/// Everything about the canary that a write through a symlink could change.
fn canary_state(dir: &Path) -> String {
    let mut s = String::new();
    for e in read_dir_raw(dir).unwrap() {
        if e.name == ".." {
            continue; // the test's own directory
        }
        let p = dir.join(&e.name);
        let md = fs::symlink_metadata(&p).unwrap();
        s += &format!(
            "{:?} {:o} {}:{} {} {}.{} {:?} {:?}\n",
            e.name,
            md.mode(),
            md.uid(),
            md.gid(),
            md.size(),
            md.mtime(),
            md.mtime_nsec(),
            llistxattr(&p).unwrap_or_default(),
            if md.is_file() {
                fs::read(&p).ok()
            } else {
                None
            },
        );
    }
    s
}

/// Kernel-format layers `T/layers/{top,bottom}` (top first), with the
/// canary at `T/canary`.
fn build_hostile(t: &Path, canary_dir: &Path) -> Vec<PathBuf> {
    let top = t.join("layers/top");
    let bottom = t.join("layers/bottom");
    fs::create_dir_all(&top).unwrap();
    fs::create_dir_all(&bottom).unwrap();
    let cd = canary_dir.to_str().unwrap();

    // --- bottom
    fs::create_dir(bottom.join("etc")).unwrap();
    fs::write(bottom.join("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n").unwrap();
    for (name, target) in [
        ("slash", "/".to_string()),
        ("up", "../../../../../../../../../..".to_string()),
        ("dotdot", "..".to_string()),
        ("canary_abs", cd.to_string()),
        ("canary_rel", "../../canary".to_string()),
        ("victim_abs", format!("{cd}/victim")),
        ("victim_rel", "../../canary/victim".to_string()),
        ("loop", "loop".to_string()),
        ("longtarget", format!("{}b", "a/".repeat(2047))),
    ] {
        symlink(target, bottom.join(name)).unwrap();
    }
    fs::create_dir(bottom.join("hl")).unwrap();
    fs::write(bottom.join("hl/a"), b"hard\n").unwrap();
    fs::hard_link(bottom.join("hl/a"), bottom.join("hl/b")).unwrap();
    symlink("/", bottom.join("hl/twin_a")).unwrap();
    fs::hard_link(bottom.join("hl/twin_a"), bottom.join("hl/twin_b")).unwrap();
    fs::write(bottom.join("x1"), b"cross-layer\n").unwrap();
    fs::create_dir(bottom.join("dev")).unwrap();
    mknod(&bottom.join("dev/null"), libc::S_IFCHR | 0o666, 1, 3);
    mknod(&bottom.join("dev/zero"), libc::S_IFCHR | 0o666, 1, 5);
    mknod(&bottom.join("dev/blk"), libc::S_IFBLK | 0o600, 7, 200);
    mknod(&bottom.join("dev/fifo"), libc::S_IFIFO | 0o644, 0, 0);
    drop(std::os::unix::net::UnixListener::bind(bottom.join("dev/sock")).unwrap());
    fs::create_dir(bottom.join("names")).unwrap();
    for n in hostile_names() {
        fs::write(bottom.join("names").join(os(&n)), &n).unwrap();
    }
    // Deep chain: built with *at calls (the path is too long for open).
    {
        let mut dir = OwnedFd::from(File::open(&bottom).unwrap());
        for comp in std::iter::once(b"deep".to_vec()).chain(deep_components()) {
            let cc = c(&comp);
            // SAFETY: valid fd and name.
            unsafe {
                assert_eq!(libc::mkdirat(dir.as_raw_fd(), cc.as_ptr(), 0o755), 0);
                let fd = libc::openat(
                    dir.as_raw_fd(),
                    cc.as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY,
                );
                assert!(fd >= 0);
                dir = OwnedFd::from_raw_fd(fd);
            }
        }
        // SAFETY: valid fd and name.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                c"leaf".as_ptr(),
                libc::O_WRONLY | libc::O_CREAT,
                0o644,
            )
        };
        assert!(fd >= 0);
        // SAFETY: fd was just opened by us.
        let mut f = unsafe { File::from_raw_fd(fd) };
        io::Write::write_all(&mut f, b"deep leaf\n").unwrap();
    }
    fs::create_dir(bottom.join("merged")).unwrap();
    fs::write(bottom.join("merged/b_only"), b"b\n").unwrap();
    fs::create_dir(bottom.join("under_link")).unwrap();
    fs::write(bottom.join("under_link/hidden"), b"hidden\n").unwrap();
    symlink("/", bottom.join("dir_over_link")).unwrap();
    fs::create_dir(bottom.join("redir_target")).unwrap();
    fs::write(bottom.join("redir_target/t_file"), b"t\n").unwrap();
    fs::write(bottom.join("marked_file"), b"m\n").unwrap();
    setxattr(&bottom.join("marked_file"), "trusted.overlay.opaque", b"y");
    setxattr(&bottom.join("marked_file"), "user.kept", b"yes");

    // --- top
    mknod(&top.join("ghost"), libc::S_IFCHR, 0, 0); // a whiteout of nothing
    fs::create_dir(top.join("merged")).unwrap();
    fs::write(top.join("merged/t_only"), b"t\n").unwrap();
    mknod(&top.join("merged/ghost2"), libc::S_IFCHR, 0, 0);
    fs::hard_link(bottom.join("x1"), top.join("x1")).unwrap();
    fs::hard_link(bottom.join("x1"), top.join("x2")).unwrap();
    symlink("../../../..", top.join("under_link")).unwrap(); // a symlink over a dir
    fs::create_dir(top.join("dir_over_link")).unwrap(); // a dir over a symlink
    fs::write(top.join("dir_over_link/mine"), b"mine\n").unwrap();
    for (name, redirect) in [
        ("redir_climb", &b"/../../canary"[..]),
        ("redir_link", b"/slash"),
        ("redir_through_link", b"/slash/etc"),
        ("redir_ok", b"/redir_target"),
    ] {
        fs::create_dir(top.join(name)).unwrap();
        setxattr(&top.join(name), "trusted.overlay.redirect", redirect);
    }
    vec![top, bottom]
}

/// Opens the deep chain component by component (no path is ever longer
/// than one name) and reports what each step and the leaf give.
fn deep_probe(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dir = OwnedFd::from(File::open(root).unwrap());
    for (i, comp) in std::iter::once(b"deep".to_vec())
        .chain(deep_components())
        .enumerate()
    {
        let cc = c(&comp);
        // SAFETY: valid fd and name.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                cc.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            )
        };
        if fd < 0 {
            out.push(format!("step {i}: {}", io::Error::last_os_error()));
            return out;
        }
        // SAFETY: fd was just opened by us.
        dir = unsafe { OwnedFd::from_raw_fd(fd) };
    }
    let here = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    // fs::read_dir, not RawDir: its O_NOFOLLOW refuses the magic link.
    let names: Result<Vec<OsString>, _> =
        fs::read_dir(&here).and_then(|rd| rd.map(|e| e.map(|e| e.file_name())).collect());
    out.push(format!("entries {names:?}"));
    out.push(format!(
        "read {:?}",
        fs::read(here.join("leaf")).map(|v| String::from_utf8_lossy(&v).into_owned())
    ));
    out.push(format!(
        "stat {:?}",
        fs::symlink_metadata(here.join("leaf"))
            .map(|m| (m.size(), m.mode(), m.nlink()))
            .map_err(|e| e.kind())
    ));
    out.push(format!(
        "missing {:?}",
        fs::symlink_metadata(here.join("nope"))
            .map(|_| ())
            .map_err(|e| e.raw_os_error())
    ));
    out
}

/// Read-only lookups and errnos, for both mounts to agree on.
fn read_ops() -> Vec<Op> {
    let long = leak("L".repeat(256));
    let mut v = vec![
        Op::Stat(long),
        Op::Stat(leak(format!("names/{long}"))),
        Op::Stat(leak(format!("names/{}", "n".repeat(255)))),
        Op::Read(leak(format!("names/{}", "n".repeat(255)))),
        Op::Stat("loop/x"),
        Op::Read("loop"),
        Op::Stat("etc/passwd/x"),
        Op::Stat("ghost"),
        Op::Stat("merged/ghost2"),
        Op::ReadDir("merged"),
        Op::ReadDir("etc/passwd"),
        Op::Stat("slash"),
        Op::Stat("slash/etc/passwd"),
        Op::Read("slash/etc/passwd"),
        Op::Read("up/etc/passwd"),
        Op::Read("dotdot/etc/passwd"),
        Op::Read("victim_abs"),
        Op::Read("victim_rel"),
        Op::ReadDir("canary_rel"),
        Op::Read("longtarget"),
        Op::Stat("longtarget"),
        Op::Read("dev/null"),
        Op::Read("dev/zero/x"),
        Op::Read("dev/sock"),
        Op::Read("dev/fifo"),
        Op::Read("dev/blk"),
        Op::SameInode("hl/a", "hl/b"),
        Op::SameInode("hl/twin_a", "hl/twin_b"),
        Op::SameInode("x1", "x2"),
        Op::Stat("x1"),
        Op::Stat("under_link/hidden"),
        Op::ReadDir("dir_over_link"),
        Op::ReadDir("redir_climb"),
        Op::ReadDir("redir_link"),
        Op::ReadDir("redir_through_link"),
        Op::ReadDir("redir_ok"),
        Op::GetXattr("marked_file", "trusted.overlay.opaque"),
        Op::GetXattr("marked_file", "user.kept"),
        Op::GetXattr("marked_file", "user.none"),
        Op::GetXattr("slash", "user.none"),
        Op::ListXattr("marked_file"),
    ];
    v.push(Op::Stat(leak(format!("deep/{}", "x".repeat(300)))));
    v
}

/// Writes through hostile symlinks and names (run on a mount with an upper).
fn write_ops(pid_name: &'static str) -> Vec<Op> {
    vec![
        Op::Write("victim_abs", b"pwned"),
        Op::Write("victim_rel", b"pwned"),
        Op::OpenTrunc("victim_abs", b"pwned"),
        Op::Create("canary_abs/new", 0o644, b"pwned"),
        Op::Create("canary_rel/new", 0o644, b"pwned"),
        Op::Create(pid_name, 0o644, b"in the mount root"),
        Op::Create("up/etc/passwd", 0o644, b"through up\n"),
        Op::Append("slash/etc/../etc/passwd", b"appended\n"),
        Op::Truncate("victim_abs", 0),
        Op::Truncate("dotdot/etc/passwd", 5),
        Op::Chmod("victim_abs", 0o777),
        Op::Chmod("canary_rel", 0o700),
        Op::Chown("slash", 123, 456),
        Op::Chown("victim_abs", 1, 1),
        Op::Utimens("canary_abs", 1_000_000, 5),
        Op::SetXattr("victim_rel", "trusted.hostile", b"v"),
        Op::SetXattr("victim_abs", "user.hostile", b"v"),
        Op::SetXattr("canary_rel/victim", "user.hostile", b"v"),
        Op::RemoveXattr("victim_abs", "user.none"),
        Op::Link("victim_abs", "victim_hard"),
        Op::Link("slash/etc/passwd", "passwd_hard"),
        Op::Link("canary_rel/victim", "stolen"),
        Op::Rename("canary_rel", "canary_rel2"),
        Op::Rename("slash", "names/slash_moved"),
        Op::Rename("names/slash_moved/etc", "etc_moved"),
        Op::Rename("etc_moved", "etc"),
        Op::Unlink("up"),
        Op::Unlink("canary_abs/victim"),
        Op::Rmdir("canary_abs"),
        Op::Mkdir("dotdot/newdir", 0o755),
        Op::Symlink("/", "newslash"),
        Op::Write("newslash/etc/passwd", b"via new symlink"),
        Op::Mkdir("newslash/canary_abs", 0o755),
        Op::Rename("names/new\nline", "newslash/renamed\nline"),
        Op::Write("hl/a", b"HARD"),
        Op::Read("hl/b"),
        Op::Chown("x1", 5, 5),
        Op::Stat("x2"),
        Op::Chmod("dev/null", 0o600),
        Op::Chown("dev/fifo", 3, 3),
        Op::Unlink("dev/sock"),
        Op::Unlink("ghost"),
        Op::Mkdir("ghost", 0o700),
        Op::ReadDir("ghost"),
        Op::Unlink("merged/ghost2"),
        Op::Create("merged/ghost2", 0o600, b"new"),
        Op::Mkdir(leak("M".repeat(256)), 0o755),
        Op::Create(leak(format!("names/{}", "N".repeat(256))), 0o644, b""),
        Op::Create(leak(format!("names/{}", "N".repeat(255))), 0o644, b"255"),
        Op::Rename(
            leak(format!("names/{}", "n".repeat(255))),
            leak(format!("names/{}", "m".repeat(255))),
        ),
        Op::Chown("under_link", 9, 9),
        Op::Create("redir_climb/x", 0o644, b"x"),
        Op::Chown("longtarget", 2, 2),
        Op::Stat("longtarget"),
    ]
}

/// Renames and deletes of invalid-UTF-8 names (plain paths: no symlink
/// in them, so nothing resolves outside the mount).
fn raw_name_ops(root: &Path) -> Vec<String> {
    let names = root.join("names");
    let mut out = Vec::new();
    let mut rec = |what: &str, r: io::Result<()>| out.push(format!("{what}: {:?}", errno(&r)));
    rec(
        "rename ff",
        fs::rename(names.join(os(&[0xff; 255])), names.join(os(b"\xfe\xfe"))),
    );
    rec("unlink latin1", fs::remove_file(names.join(os(b"caf\xe9"))));
    rec(
        "create \\x80",
        fs::write(names.join(os(b"\x80\n\x81")), b"raw"),
    );
    rec(
        "stat new",
        fs::symlink_metadata(names.join(os(b"\x80\n\x81"))).map(drop),
    );
    out
}

fn hostile_mounts(lowers: &[PathBuf], upper: bool) -> (KernelOverlay, StrataMount, Vec<UpperWork>) {
    let mut kspec = MountSpec::new(lowers.to_vec());
    let mut sspec = kspec.clone();
    let mut uws = Vec::new();
    if upper {
        let (ku, su) = (UpperWork::new(), UpperWork::new());
        kspec = kspec
            .with_upper(&ku)
            .with_option("redirect_dir=on")
            .with_option("index=on");
        sspec = sspec.with_upper(&su);
        uws.push(ku);
        uws.push(su);
    } else {
        // What strata does by default: follow redirects.
        kspec = kspec.with_option("redirect_dir=follow");
    }
    let k = KernelOverlay::mount(&kspec);
    let s = StrataMount::mount(&sspec);
    (k, s, uws)
}

// ================================================================== tests

/// Read-only: the whole tree, lookups, errnos, readlink, reads, the deep
/// chain, xattrs; the host's canary untouched.
#[test]
fn hostile_read_only() {
    let t = tempdir();
    let (cdir, _) = canary(t.path());
    let lowers = build_hostile(t.path(), &cdir);
    let before = canary_state(&cdir);
    let (k, s, _uw) = hostile_mounts(&lowers, false);
    let since = SystemTime::now();
    let mut problems = tree_diff(k.path(), s.path());
    assert_alive(&s, "ro walk");
    problems.extend(ops_diff(k.path(), s.path(), &read_ops(), since));
    assert_alive(&s, "ro ops");
    let (kd, sd) = (deep_probe(k.path()), deep_probe(s.path()));
    if kd != sd {
        problems.push(format!("deep chain: kernel {kd:?}, strata {sd:?}"));
    }
    assert!(
        kd.iter().any(|l| l.contains("deep leaf")),
        "kernel serves the deep leaf: {kd:?}"
    );
    assert_alive(&s, "ro deep chain");
    problems.extend(ops_diff(
        k.path(),
        s.path(),
        &[
            Op::Create("new", 0o644, b""),
            Op::Unlink("etc/passwd"),
            Op::Chown("slash", 1, 1),
            Op::Write("etc/passwd", b"x"),
        ],
        since,
    ));
    assert_eq!(canary_state(&cdir), before, "the canary changed");
    assert_no_problems("hostile layers, read-only: strata vs kernel", &problems);
}

/// With an upper: writes, copy-ups, renames, links and xattr changes
/// through hostile symlinks and names; the canary and the lowers stay
/// untouched, and the trees (and their remounts) match the kernel's.
#[test]
fn hostile_with_upper() {
    let t = tempdir();
    let (cdir, _) = canary(t.path());
    let lowers = build_hostile(t.path(), &cdir);
    let before = canary_state(&cdir);
    let lowers_before: Vec<Walk> = lowers.iter().map(|l| walk(l)).collect();
    let host_root_name = leak(format!("strata-hostile-{}", std::process::id()));
    let (k, s, uws) = hostile_mounts(&lowers, true);
    let since = SystemTime::now();
    let mut problems = tree_diff(k.path(), s.path());
    problems.extend(ops_diff(k.path(), s.path(), &read_ops(), since));
    assert_alive(&s, "upper: read ops");
    for op in write_ops(host_root_name) {
        let (ko, so) = (apply(k.path(), &op, since), apply(s.path(), &op, since));
        if ko != so {
            problems.push(format!("{op}: kernel {ko}, strata {so}"));
        }
        assert_alive(&s, &op.to_string());
        assert_eq!(canary_state(&cdir), before, "the canary changed after {op}");
    }
    let (kr, sr) = (raw_name_ops(k.path()), raw_name_ops(s.path()));
    if kr != sr {
        problems.push(format!("raw names: kernel {kr:?}, strata {sr:?}"));
    }
    let (kd, sd) = (deep_probe(k.path()), deep_probe(s.path()));
    if kd != sd {
        problems.push(format!("deep chain: kernel {kd:?}, strata {sd:?}"));
    }
    let mut kw = walk(k.path());
    let mut sw = walk(s.path());
    mask_recent_mtimes(&mut kw, since);
    mask_recent_mtimes(&mut sw, since);
    problems.extend(known_differences_out(view_diff(
        "kernel", &kw, "strata", &sw,
    )));
    assert_alive(&s, "upper: final walk");
    assert!(
        !Path::new("/").join(host_root_name).exists(),
        "a file appeared in the host's /"
    );
    assert_eq!(canary_state(&cdir), before, "the canary changed");
    for (l, w) in lowers.iter().zip(&lowers_before) {
        problems.extend(view_diff("lower before", w, "lower after", &walk(l)));
    }
    // The upper strata wrote, read back by strata after a remount.
    let su = &uws[1];
    s.unmount().expect("clean unmount");
    let again = StrataMount::mount(&MountSpec::new(lowers.clone()).with_upper(su));
    let mut aw = walk(again.path());
    mask_recent_mtimes(&mut aw, since);
    problems.extend(view_diff("strata", &sw, "strata remounted", &aw));
    assert_alive(&again, "remount");
    drop(k);
    assert_no_problems("hostile layers with an upper: strata vs kernel", &problems);
}

/// OCI `.wh.` forms the kernel has no equivalent for. Expected (as
/// fuse-overlayfs does it): any `.wh.NAME` entry, whatever its type (a
/// directory too, contents and all), hides NAME below and is itself never
/// visible; a `.wh..wh..opq` directory makes its directory opaque; `.wh.`
/// with an empty name and `.wh..wh.*` AUFS names are hidden and hide
/// nothing; a whiteout of a name that exists nowhere is harmless.
/// (fuse-overlayfs agrees except for `.wh.` alone, after which it lists
/// an empty root; its view is printed, not compared.)
#[test]
fn oci_whiteout_oddities() {
    let t = tempdir();
    let top = t.path().join("top");
    let bottom = t.path().join("bottom");
    let long = "W".repeat(251);
    for d in [&top, &bottom] {
        fs::create_dir(d).unwrap();
    }
    fs::create_dir_all(bottom.join("gone")).unwrap();
    fs::write(bottom.join("gone/inner"), b"x").unwrap();
    fs::create_dir_all(bottom.join("opq")).unwrap();
    fs::write(bottom.join("opq/below"), b"x").unwrap();
    fs::write(bottom.join(&long), b"x").unwrap();
    fs::write(bottom.join("present"), b"x").unwrap();
    fs::write(bottom.join("wh_dir_target"), b"x").unwrap();
    fs::create_dir_all(top.join(".wh.gone/sub")).unwrap();
    fs::write(top.join(".wh.gone/inner"), b"x").unwrap();
    fs::write(top.join(".wh.nothing"), b"").unwrap();
    fs::write(top.join(".wh."), b"").unwrap();
    fs::write(top.join(".wh..wh.aufs"), b"").unwrap();
    fs::create_dir_all(top.join("opq/.wh..wh..opq")).unwrap();
    fs::write(top.join("opq/mine"), b"x").unwrap();
    fs::write(top.join(format!(".wh.{long}")), b"").unwrap();
    symlink("/", top.join(".wh.wh_dir_target")).unwrap();
    let spec = MountSpec::new(vec![top.clone(), bottom.clone()]);
    let s = StrataMount::mount(&spec);
    let w = walk(s.path());
    let names = |p: &str| -> Vec<String> {
        w.get(Path::new(p))
            .and_then(|r| r.entries.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|n| n.to_string_lossy().into_owned())
            .collect()
    };
    let mut problems = Vec::new();
    if names("") != ["opq", "present"] {
        problems.push(format!("root lists {:?}", names("")));
    }
    if names("opq") != ["mine"] {
        problems.push(format!("opq lists {:?}", names("opq")));
    }
    for p in [
        ".wh.gone",
        ".wh.gone/inner",
        "gone",
        "gone/inner",
        ".wh.nothing",
        "nothing",
        ".wh.",
        ".wh..wh.aufs",
        "opq/below",
        "opq/.wh..wh..opq",
        &long,
        "wh_dir_target",
    ] {
        let e = errno(&fs::symlink_metadata(s.path().join(p)));
        if e != Some(libc::ENOENT) {
            problems.push(format!("{p}: lstat gives {e:?}, want ENOENT"));
        }
    }
    for p in ["", "opq", "present"] {
        if !w.contains_key(Path::new(p)) {
            problems.push(format!("{p}: missing"));
        }
    }
    assert_alive(&s, "oci oddities");
    // The same layers through fuse-overlayfs, when installed: the same tree.
    let fo = Path::new("/usr/bin/fuse-overlayfs");
    if fo.exists() && std::env::var_os("STRATA_BIN").is_none() {
        match StrataMount::try_mount_with(fo, &spec) {
            Ok(f) => {
                // Informational: fuse-overlayfs 1.x hides the whole root
                // here (its `.wh.` of an empty name), so it is no reference.
                let fw = walk(f.path());
                for d in view_diff("fuse-overlayfs", &fw, "strata", &w) {
                    eprintln!("oci_whiteout_oddities: {d}");
                }
            }
            Err(e) => eprintln!("fuse-overlayfs did not mount ({e}); expectations only"),
        }
    }
    assert_no_problems("OCI whiteout oddities", &problems);
}

/// Every xattr of `p` (all namespaces): sorted names with length and hash
/// of each value, plus what too-small buffers give.
fn xattr_report(p: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let cp = c(p.as_os_str().as_bytes());
    let mut names = match llistxattr(p) {
        Ok(n) => n,
        Err(e) => return vec![format!("llistxattr: {e}")],
    };
    names.sort();
    let total: usize = names.iter().map(|n| n.len() + 1).sum();
    // SAFETY: NULL/0 asks for the size; a 1-byte buffer must give ERANGE.
    let (size, small) = unsafe {
        let size = libc::llistxattr(cp.as_ptr(), std::ptr::null_mut(), 0);
        let mut b = [0u8; 1];
        let small = libc::llistxattr(cp.as_ptr(), b.as_mut_ptr().cast(), 1);
        (size, (small, io::Error::last_os_error().raw_os_error()))
    };
    // The kernel's size query counts the internal names it hides (an
    // upper bound, as listxattr(2) allows): only check it is enough.
    out.push(format!(
        "list: {} names, {total} bytes, size query enough {}, 1-byte buffer {small:?}",
        names.len(),
        size >= total as isize
    ));
    for n in names {
        let v = lgetxattr(p, &n);
        let cn = c(n.as_bytes());
        // SAFETY: a 1-byte buffer for a longer value must give ERANGE.
        let small = unsafe {
            let mut b = [0u8; 1];
            let r = libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), b.as_mut_ptr().cast(), 1);
            (r, io::Error::last_os_error().raw_os_error())
        };
        match v {
            Ok(v) => out.push(format!(
                "{n}: {} bytes fnv:{:016x} small {:?}",
                v.len(),
                content_hash(&v),
                if v.len() > 1 { small } else { (0, None) }
            )),
            Err(e) => out.push(format!("{n}: {e}")),
        }
    }
    out
}

fn big_value(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i % 251) as u8))
        .collect()
}

/// 64 KiB values (XATTR_SIZE_MAX) and a ~60 KiB name list, on tmpfs,
/// read-only and with an upper; copy-up keeps them; setting them through
/// the mount gives the kernel's results (E2BIG past the limit).
#[test]
fn huge_xattrs() {
    let fs_ = Tmpfs::new("256m");
    let root = fs_.path();
    let (top, bottom) = (root.join("top"), root.join("bottom"));
    fs::create_dir(&top).unwrap();
    fs::create_dir(&bottom).unwrap();
    fs::write(bottom.join("file"), b"data\n").unwrap();
    setxattr(&bottom.join("file"), "user.big", &big_value(1, 65536));
    setxattr(&bottom.join("file"), "trusted.big", &big_value(2, 65536));
    setxattr(
        &bottom.join("file"),
        "trusted.overlay.hostile",
        &big_value(3, 65536),
    );
    setxattr(&bottom.join("file"), "user.empty", b"");
    fs::write(bottom.join("many"), b"many\n").unwrap();
    for i in 0..280 {
        setxattr(
            &bottom.join("many"),
            &format!("user.{i:03}{}", "n".repeat(200)),
            &[b'v'; 16],
        );
    }
    symlink("/", bottom.join("link")).unwrap();
    setxattr(&bottom.join("link"), "trusted.big", &big_value(4, 65536));
    fs::create_dir(top.join("dir")).unwrap();
    setxattr(&top.join("dir"), "user.big", &big_value(5, 65536));
    setxattr(&top.join("dir"), "trusted.overlay.opaque", b"y");
    let paths = ["file", "many", "link", "dir"];
    let mut problems = Vec::new();
    for upper in [false, true] {
        let mut kspec = MountSpec::new(vec![top.clone(), bottom.clone()]);
        let mut sspec = kspec.clone();
        let tag = if upper { "upper" } else { "ro" };
        let (ku, su) = (root.join(format!("k{tag}")), root.join(format!("s{tag}")));
        if upper {
            for d in [&ku, &su] {
                fs::create_dir_all(d.join("u")).unwrap();
                fs::create_dir_all(d.join("w")).unwrap();
            }
            kspec.upper = Some((ku.join("u"), ku.join("w")));
            kspec = kspec.with_option("redirect_dir=on").with_option("index=on");
            sspec.upper = Some((su.join("u"), su.join("w")));
        }
        let k = KernelOverlay::mount(&kspec);
        let s = StrataMount::mount(&sspec);
        let compare = |what: &str, problems: &mut Vec<String>| {
            for p in paths {
                let (kr, sr) = (
                    xattr_report(&k.path().join(p)),
                    xattr_report(&s.path().join(p)),
                );
                for l in kr.iter().filter(|l| !sr.contains(l)) {
                    problems.push(format!("[{tag}] {what} {p}: kernel only: {l:.150}"));
                }
                for l in sr.iter().filter(|l| !kr.contains(l)) {
                    problems.push(format!("[{tag}] {what} {p}: strata only: {l:.150}"));
                }
            }
        };
        compare("as built", &mut problems);
        assert_alive(&s, "huge xattrs: read");
        if upper {
            let since = SystemTime::now();
            let big = Box::leak(big_value(9, 65536).into_boxed_slice());
            let too_big = Box::leak(big_value(9, 65537).into_boxed_slice());
            problems.extend(ops_diff(
                k.path(),
                s.path(),
                &[
                    Op::Chmod("file", 0o600),
                    Op::Chown("link", 1, 1),
                    Op::Chmod("many", 0o600),
                    Op::SetXattr("file", "user.new", big),
                    Op::SetXattr("file", "user.too_big", too_big),
                    Op::SetXattr("link", "trusted.new", big),
                    Op::SetXattr("many", leak(format!("user.{}", "x".repeat(250))), b"v"),
                    Op::SetXattr("many", leak(format!("user.{}", "x".repeat(256))), b"v"),
                    Op::RemoveXattr("file", "user.big"),
                ],
                since,
            ));
            compare("after copy-up and setxattr", &mut problems);
            assert_alive(&s, "huge xattrs: write");
        }
    }
    assert_no_problems("huge xattrs: strata vs kernel", &problems);
}

/// One directory with HOSTILE_LAYERS_COUNT (default 1,000,000) entries in
/// the lower layer, merged with a top layer that adds two names and whites
/// one out: `ls -f | wc -l`, lookups, and the daemon's peak RSS. Prints its
/// figures (`--nocapture`).
#[test]
fn million_entries() {
    let count: usize = std::env::var("HOSTILE_LAYERS_COUNT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let fs_ = Tmpfs::new("8g");
    let (top, bottom) = (fs_.path().join("top"), fs_.path().join("bottom"));
    fs::create_dir_all(top.join("big")).unwrap();
    fs::create_dir_all(bottom.join("big")).unwrap();
    let t0 = Instant::now();
    {
        let d = File::open(bottom.join("big")).unwrap();
        let mut name = Vec::with_capacity(16);
        for i in 0..count {
            name.clear();
            name.extend_from_slice(format!("e{i:07}").as_bytes());
            name.push(0);
            // SAFETY: valid fd; `name` is NUL-terminated.
            let r = unsafe {
                libc::mknodat(
                    d.as_raw_fd(),
                    name.as_ptr().cast(),
                    libc::S_IFREG | 0o644,
                    0,
                )
            };
            assert_eq!(r, 0, "mknodat: {}", io::Error::last_os_error());
        }
    }
    let generation = t0.elapsed();
    fs::write(top.join("big/top_a"), b"a").unwrap();
    fs::write(top.join("big/top_b"), b"b").unwrap();
    mknod(&top.join("big/e0000001"), libc::S_IFCHR, 0, 0);
    let spec = MountSpec::new(vec![top.clone(), bottom.clone()]);
    let k = KernelOverlay::mount(&spec);
    let s = StrataMount::mount(&spec);
    let ls = |root: &Path| -> (usize, Duration) {
        let t = Instant::now();
        let o = run_with_timeout(
            Command::new("sh")
                .arg("-c")
                .arg("ls -f | wc -l")
                .current_dir(root.join("big")),
            Duration::from_secs(240),
        );
        assert!(o.success(), "{o}");
        (o.stdout.trim().parse().unwrap(), t.elapsed())
    };
    let (kn, kt) = ls(k.path());
    let (sn, st) = ls(s.path());
    let (sn2, st2) = ls(s.path());
    let mut problems = Vec::new();
    let want = count + 2 - 1 + 2; // + top_a, top_b, - e0000001, + . and ..
    if kn != want || sn != kn || sn2 != kn {
        problems.push(format!(
            "ls -f | wc -l: kernel {kn}, strata {sn} then {sn2}, want {want}"
        ));
    }
    assert_alive(&s, "million: ls");
    let last = leak(format!("big/e{:07}", count - 1));
    let mid = leak(format!("big/e{:07}", count / 2));
    let past = leak(format!("big/e{:07}", count));
    problems.extend(ops_diff(
        k.path(),
        s.path(),
        &[
            Op::Stat("big/e0000000"),
            Op::Stat("big/e0000001"),
            Op::Stat(mid),
            Op::Stat(last),
            Op::Stat(past),
            Op::Read("big/top_b"),
            Op::Read(mid),
            Op::Stat("big/e"),
        ],
        SystemTime::now(),
    ));
    let hwm = s
        .daemon_pids()
        .iter()
        .filter_map(|p| fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|st| {
            st.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_owned)
        })
        .collect::<Vec<_>>();
    eprintln!(
        "million_entries: {count} entries made in {generation:?}; ls -f | wc -l = {kn}: kernel {kt:?}, strata {st:?} (again {st2:?}); strata daemon {hwm:?}"
    );
    assert_alive(&s, "million: lookups");
    assert_no_problems("million entries: strata vs kernel", &problems);
}

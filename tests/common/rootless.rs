//! Running part of a test without the privileges a root daemon has: as
//! root of a new user namespace (where trusted.* xattrs are refused and ids
//! outside the map show as 65534), or as an unprivileged user mounting
//! through the setuid fusermount3; optionally under a seccomp filter that
//! refuses what an older kernel or a poorer filesystem refuses.
//!
//! The part runs in a child process: this same test binary, run again with
//! `--exact NAME` and [`CHILD_ENV`] set to a directory the parent prepared,
//! so a test function is written as
//!
//! ```ignore
//! #[test]
//! fn t() {
//!     if let Some(dir) = child_dir() { return child_part(&dir); }
//!     // ... prepare `dir`, then:
//!     let o = run_child("t", Context::UserNs, Refuse::Nothing, dir);
//!     assert!(o.success(), "{o}");
//! }
//! ```
//!
//! and the child's panics come back as its output.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use super::{CmdOutput, RECENT_MTIME, Walk, mknod_chr, run_with_timeout};

/// Set (to the parent's directory) in the child process of a test.
pub const CHILD_ENV: &str = "STRATA_ROOTLESS_CHILD";

/// How long a child part may take.
pub const CHILD_TIMEOUT: Duration = Duration::from_secs(120);

/// Where the child part runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Context {
    /// Root of a new user namespace with its own mount namespace
    /// (`unshare -Urm`: uid and gid 0 inside are 0 outside, but without
    /// capabilities in the initial namespace). trusted.* xattrs are
    /// refused (EPERM), files of ids outside the map show as 65534, and
    /// kernel overlayfs can be mounted there with `userxattr`.
    UserNs,
    /// An unprivileged user (`setpriv --reuid --regid --clear-groups`),
    /// in a private mount namespace whose /dev/fuse is a bind mount of a
    /// world-accessible node (the host's may be 0600): strata mounts
    /// through fusermount3, as it would on a desktop.
    User { uid: u32, gid: u32 },
}

/// What a seccomp filter on the child refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refuse {
    Nothing,
    /// mknod of character devices and `RENAME_WHITEOUT` fail with EPERM:
    /// no 0/0 whiteouts, as without CAP_MKNOD before Linux 5.8.
    WhiteoutDevices,
    /// Every setxattr fails with EOPNOTSUPP, as on a filesystem without
    /// extended attributes (neither trusted.* nor user.* can be stored).
    Xattrs,
}

/// The directory the parent handed over, when this process is the child
/// part of a test.
pub fn child_dir() -> Option<PathBuf> {
    std::env::var_os(CHILD_ENV).map(PathBuf::from)
}

/// The commands `Context::User` runs as root in its new mount namespace
/// before becoming the user (`$1` directory, holding the `fuse` node to
/// bind, `$2` uid, `$3` gid, then the command).
const BECOME_USER: &str = r#"set -e
dir=$1 uid=$2 gid=$3
shift 3
mount --bind "$dir/fuse" /dev/fuse
rm "$dir/fuse"
exec setpriv --reuid="$uid" --regid="$gid" --clear-groups -- "$@""#;

/// Makes at `path` a /dev/fuse node (char 10:229) everyone may open, for a
/// private mount namespace to bind over the host's (which may be 0600).
pub fn world_fuse_node(path: &Path) {
    mknod_chr(path, 10, 229).expect("mknod a /dev/fuse node");
    fs::set_permissions(path, fs::Permissions::from_mode(0o666)).unwrap();
}

/// Runs test `name` of this binary again in `context` (its child part),
/// with `dir` handed over, and returns what it did. `dir` must be
/// reachable and, for a user, writable by that user.
pub fn run_child(name: &str, context: Context, refuse: Refuse, dir: &Path) -> CmdOutput {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut cmd = Command::new("unshare");
    match context {
        Context::UserNs => {
            cmd.args(["--user", "--map-root-user", "--mount", "--"]);
        }
        Context::User { uid, gid } => {
            // Made here: a `Refuse::WhiteoutDevices` child could not.
            world_fuse_node(&dir.join("fuse"));
            cmd.args(["--mount", "--propagation", "private", "--"])
                .args(["sh", "-c", BECOME_USER, "sh"])
                .arg(dir)
                .arg(uid.to_string())
                .arg(gid.to_string());
        }
    }
    cmd.arg(exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir);
    if let Some(filter) = seccomp_filter(refuse) {
        // SAFETY: the closure only makes one system call on memory it
        // owns (no allocation, no locks): fine between fork and exec.
        unsafe {
            cmd.pre_exec(move || install_filter(&filter));
        }
    }
    run_with_timeout(&mut cmd, CHILD_TIMEOUT)
}

/// Panics with the child's output unless it succeeded; with
/// `ROOTLESS_TRACE=1` (and `--nocapture`) prints it anyway.
pub fn assert_child_ok(what: &str, o: &CmdOutput) {
    if trace() {
        eprintln!("{what}: {o}");
    }
    assert!(o.success(), "{what}: the child part failed: {o}");
}

/// Whether `ROOTLESS_TRACE` asks for the uppers and the child's output.
pub fn trace() -> bool {
    std::env::var("ROOTLESS_TRACE").is_ok_and(|v| !v.is_empty() && v != "0")
}

// ===================================================================== seccomp

/// One classic BPF instruction (struct sock_filter).
#[repr(C)]
#[derive(Clone, Copy)]
struct SockFilter {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

/// struct sock_fprog.
#[repr(C)]
struct SockFprog {
    len: u16,
    filter: *const SockFilter,
}

const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const BPF_ALU_AND_K: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const BPF_JMP_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_RET_K: u16 = 0x06;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_SET_MODE_FILTER: u32 = 1;
/// renameat2's flag (libc's type differs between targets).
const RENAME_WHITEOUT: u32 = 1 << 2;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: Option<u32> = Some(0xc000_003e);
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: Option<u32> = Some(0xc000_00b7);
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const AUDIT_ARCH: Option<u32> = None;

/// Whether [`Refuse`] filters can be built for this architecture.
pub fn can_refuse() -> bool {
    AUDIT_ARCH.is_some()
}

/// A syscall refused with `errno` when `(arg & mask) == value` (a mask of
/// 0 refuses every call).
struct Rule {
    nr: libc::c_long,
    arg: u32,
    mask: u32,
    value: u32,
    errno: i32,
}

fn seccomp_filter(refuse: Refuse) -> Option<Vec<SockFilter>> {
    let rules: Vec<Rule> = match refuse {
        Refuse::Nothing => return None,
        Refuse::WhiteoutDevices => {
            let chr = |nr, arg| Rule {
                nr,
                arg,
                mask: libc::S_IFMT,
                value: libc::S_IFCHR,
                errno: libc::EPERM,
            };
            let mut v = vec![
                chr(libc::SYS_mknodat, 2),
                Rule {
                    nr: libc::SYS_renameat2,
                    arg: 4,
                    mask: RENAME_WHITEOUT,
                    value: RENAME_WHITEOUT,
                    errno: libc::EPERM,
                },
            ];
            #[cfg(target_arch = "x86_64")]
            v.push(chr(libc::SYS_mknod, 1));
            v
        }
        Refuse::Xattrs => [libc::SYS_setxattr, libc::SYS_lsetxattr, libc::SYS_fsetxattr]
            .into_iter()
            .map(|nr| Rule {
                nr,
                arg: 0,
                mask: 0,
                value: 0,
                errno: libc::EOPNOTSUPP,
            })
            .collect(),
    };
    let arch = AUDIT_ARCH.expect("check can_refuse() first");
    let stmt = |code, k| SockFilter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k, jt, jf| SockFilter {
        code: BPF_JMP_JEQ_K,
        jt,
        jf,
        k,
    };
    // struct seccomp_data: nr at 0, arch at 4, args[i] at 16 + 8 i (the
    // low half first, on these little-endian architectures).
    let mut p = vec![
        stmt(BPF_LD_W_ABS, 4),
        jeq(arch, 1, 0),
        stmt(BPF_RET_K, SECCOMP_RET_ALLOW),
    ];
    for r in rules {
        p.push(stmt(BPF_LD_W_ABS, 0));
        p.push(jeq(r.nr as u32, 0, 4)); // else past this rule
        p.push(stmt(BPF_LD_W_ABS, 16 + 8 * r.arg));
        p.push(stmt(BPF_ALU_AND_K, r.mask));
        p.push(jeq(r.value, 0, 1));
        p.push(stmt(BPF_RET_K, SECCOMP_RET_ERRNO | r.errno as u32));
    }
    p.push(stmt(BPF_RET_K, SECCOMP_RET_ALLOW));
    Some(p)
}

/// Installs `filter` on the calling thread (inherited across fork and
/// exec). Needs CAP_SYS_ADMIN, which the test (root) has: no
/// no_new_privs, so the setuid fusermount3 still works under it.
fn install_filter(filter: &[SockFilter]) -> io::Result<()> {
    let prog = SockFprog {
        len: filter.len() as u16,
        filter: filter.as_ptr(),
    };
    // SAFETY: `prog` points at `filter.len()` valid instructions, which the
    // kernel copies before the call returns.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            0,
            &prog as *const SockFprog,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

// ==================================================================== helpers

/// An empty upper dir and workdir at `dir/NAME/{upper,work}`, the upper
/// with the attributes `UpperWork` gives its own (so merged roots of two
/// of them compare equal).
pub fn upper_work_in(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let upper = dir.join(name).join("upper");
    let work = dir.join(name).join("work");
    fs::create_dir_all(&upper).unwrap();
    fs::create_dir_all(&work).unwrap();
    fs::set_permissions(&upper, fs::Permissions::from_mode(0o755)).unwrap();
    let t = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
    File::open(&upper).unwrap().set_modified(t).unwrap();
    (upper, work)
}

/// A walk as text lines, one per path with everything `view_diff`
/// compares (mtimes masked as the walk has them) but st_nlink, for handing
/// a view from one process to another. (A round trip cannot show the
/// writer's link counts: links in its workdir count too.)
pub fn walk_lines(w: &Walk) -> Vec<String> {
    w.iter()
        .map(|(p, r)| {
            let mtime = if r.mtime == RECENT_MTIME {
                "recent".to_owned()
            } else {
                format!("{}.{:09}", r.mtime.0, r.mtime.1)
            };
            let r = super::Record {
                nlink: None,
                ..r.clone()
            };
            format!(
                "{} | {} | mtime {mtime} | content {:?} | entries {:?}",
                super::show(p),
                r.summary(),
                r.content,
                r.entries
            )
        })
        .collect()
}

/// Writes [`walk_lines`] of `w` to `path`.
pub fn save_walk(path: &Path, w: &Walk) {
    fs::write(path, walk_lines(w).join("\n") + "\n").unwrap();
}

/// The lines [`save_walk`] wrote.
pub fn load_walk_lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Lines only in `a` or only in `b`, labelled.
pub fn line_diff(a_name: &str, a: &[String], b_name: &str, b: &[String]) -> Vec<String> {
    let mut out: Vec<String> = a
        .iter()
        .filter(|l| !b.contains(l))
        .map(|l| format!("only on {a_name}: {l}"))
        .collect();
    out.extend(
        b.iter()
            .filter(|l| !a.contains(l))
            .map(|l| format!("only on {b_name}: {l}")),
    );
    out
}

/// `chown -R uid:gid path` (symlinks themselves).
pub fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
    if fs::symlink_metadata(path).unwrap().is_dir() {
        for e in fs::read_dir(path).unwrap() {
            chown_tree(&e.unwrap().path(), uid, gid);
        }
    }
}

/// The names of the trusted.* xattrs anywhere under `root` (read as root
/// of the initial namespace, the only one that sees them).
pub fn trusted_xattrs(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        for n in super::llistxattr(&p).unwrap_or_default() {
            if n.starts_with("trusted.") {
                let rel = p.strip_prefix(root).unwrap();
                out.push(format!("{}: {n}", super::show(rel)));
            }
        }
        if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out
}

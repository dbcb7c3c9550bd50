//! A differential permission matrix: the same operations, run as root, as
//! a root without capabilities and as two unprivileged users, on kernel
//! overlayfs (the oracle, mounted `redirect_dir=on,index=on`) and on strata
//! (`default_permissions,allow_other`; once with FUSE passthrough where the
//! kernel offers it, once with `passthrough=0`), each over its own copy of
//! the same lower layer and its own empty upper. The three mounts run at
//! once.
//!
//! The lower layer is built as root: files and directories of several
//! owners and modes (set-user-id and set-group-id files, set-group-id,
//! sticky, read-only, unsearchable and other users' directories, files
//! with internal and ordinary xattrs). Before the matrix, root makes the
//! same kinds of objects through the mount, so they live in the upper (no
//! copy-up). The tree is there once per user (`r/` root, `n/` root without
//! CAP_SYS_ADMIN, CAP_FSETID and CAP_CHOWN as in a container, `a/` uid
//! 1000, `b/` uid 1001): every operation runs once per user, on that
//! user's copy, as that user (`setpriv`, umask 022, no supplementary
//! groups), through `tests/common/shell.rs`'s `run_script` with a one-line
//! perl program per syscall, so that the result is the syscall's own: `ok`
//! (with what was read) or the errno's text.
//!
//! Compared per operation and user: the result (success, EACCES, EPERM,
//! ENODATA... exactly as the kernel gives it) and, after it, the `lstat`
//! of every path it names (type, mode with its set-id and sticky bits,
//! owner, group, size, mtime). At the end: the merged tree, and the upper
//! directory each mount left (types, modes, owners, ordinary xattrs;
//! `tests/common/upper.rs`). A mismatch fails the test with one line per
//! difference: operation, path, user, the kernel's result and strata's
//! (`PERMISSIONS_TRACE=1` prints every cell).
//!
//! Where strata differs from the kernel, the test asserts what strata does
//! instead of skipping, and says why:
//!
//! * internal xattrs (README, "What a reader sees" and "Known
//!   differences"): `trusted.overlay.*`, `user.overlay.*`,
//!   `user.fuseoverlayfs.*`, `user.containers.*` and `user.strata.*` are
//!   never listed and read as ENODATA, and setting or removing one is EPERM
//!   and leaves the upper as it was. The kernel defines `trusted.overlay.*`
//!   through an overlay mount itself (it escapes the name: reads and lists
//!   of what it did not store escaped match strata's), so those reads are
//!   compared exactly; it treats the `user.*` ones as ordinary xattrs
//!   (without `userxattr`) and stores a `trusted.overlay.*` set escaped, so
//!   there the kernel's result is only checked to be what it is (the test
//!   really reaches the difference). Permission checks the VFS makes before
//!   any filesystem is asked (EACCES for a `user.*` xattr of a file one may
//!   not write, EPERM for `trusted.*` without CAP_SYS_ADMIN, EPERM for a
//!   `user.*` xattr of another's sticky directory) are compared exactly;
//! * a set-group-id bit without group execute, kept by the kernel's FUSE
//!   module where the kernel drops it (see [`fuse_keeps_sgid`]).
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, File};
use std::os::unix::fs::{PermissionsExt, lchown};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use common::shell::{listing, run_script};
use common::*;

const A: u32 = 1000;
const B: u32 = 1001;

/// Who runs the matrix, and in which copy of the tree.
#[derive(Clone, Copy, Debug)]
struct User {
    name: &'static str,
    uid: u32,
    gid: u32,
    copy: &'static str,
    /// A program the operation runs under (capabilities dropped).
    wrap: &'static str,
}

const USERS: [User; 4] = [
    User {
        name: "root",
        uid: 0,
        gid: 0,
        copy: "r",
        wrap: "",
    },
    User {
        name: "uid1000",
        uid: A,
        gid: A,
        copy: "a",
        wrap: "",
    },
    User {
        name: "uid1001",
        uid: B,
        gid: B,
        copy: "b",
        wrap: "",
    },
    // A container's root: uid 0 without CAP_SYS_ADMIN (no trusted.*
    // xattrs), CAP_FSETID (set-id bits go on a write) or CAP_CHOWN.
    User {
        name: "root-capless",
        uid: 0,
        gid: 0,
        copy: "n",
        wrap: "setpriv --bounding-set=-sys_admin,-fsetid,-chown ",
    },
];

impl User {
    /// CAP_FSETID: writes and truncates keep set-id bits.
    fn has_fsetid(&self) -> bool {
        self.uid == 0 && !self.wrap.contains("-fsetid")
    }
}

// ================================================================= the tree

/// One object of a copy of the tree.
struct Obj {
    path: &'static str,
    /// None: a directory; else a file with this content.
    content: Option<&'static str>,
    mode: u32,
    uid: u32,
    gid: u32,
    xattrs: &'static [(&'static str, &'static str)],
}

const fn d(path: &'static str, mode: u32, uid: u32, gid: u32) -> Obj {
    Obj {
        path,
        content: None,
        mode,
        uid,
        gid,
        xattrs: &[],
    }
}

const fn f(path: &'static str, mode: u32, uid: u32, gid: u32) -> Obj {
    Obj {
        path,
        content: Some("data\n"),
        mode,
        uid,
        gid,
        xattrs: &[],
    }
}

/// Every internal namespace, next to ordinary `user.*` and `trusted.*`.
const MIXED_XATTRS: &[(&str, &str)] = &[
    ("user.plain", "1"),
    ("trusted.plain", "t"),
    ("trusted.overlay.foo", "x"),
    ("user.overlay.foo", "u"),
    ("user.fuseoverlayfs.foo", "f"),
    ("user.containers.foo", "c"),
    ("user.strata.foo", "s"),
];

const fn fx(path: &'static str, mode: u32, uid: u32, gid: u32) -> Obj {
    Obj {
        path,
        content: Some("data\n"),
        mode,
        uid,
        gid,
        xattrs: MIXED_XATTRS,
    }
}

/// The lower layer's part of each copy (parents before children).
const LOWER: &[Obj] = &[
    d("", 0o755, 0, 0),
    // Set-id bits and writes: owner 1000, group 1001 (so 1001 may write
    // through the group), group-executable unless said otherwise.
    f("sw", 0o6775, A, B),
    f("st", 0o6775, A, B),
    f("so", 0o6775, A, B),
    f("sg", 0o2664, A, B), // set-group-id without group execute
    f("sgt", 0o2664, A, B),
    f("swo", 0o4777, A, A),
    f("sro", 0o6755, A, A),
    // chown and chgrp.
    f("cu", 0o6755, A, A),
    f("cg", 0o6755, A, 0),
    f("cgl", 0o2644, A, 0),
    f("cn", 0o4755, A, A),
    d("cd", 0o2755, A, A),
    // chmod, utimes.
    f("cm", 0o755, A, 0),
    f("cm2", 0o755, A, A),
    d("dm", 0o755, A, 0),
    f("rw", 0o666, 0, 0),
    f("rw_c", 0o666, 0, 0),
    f("rw_t", 0o666, 0, 0),
    f("rw_n", 0o666, 0, 0),
    f("af", 0o644, A, A),
    f("af_t", 0o644, A, A),
    // A set-group-id directory, with one inside.
    d("sgd", 0o2777, A, B),
    d("sgd/low", 0o2777, A, B),
    // Sticky directories: root's, and 1000's.
    d("tmp", 0o1777, 0, 0),
    f("tmp/a", 0o644, A, A),
    f("tmp/b", 0o644, B, B),
    f("tmp/r", 0o666, 0, 0),
    f("tmp/a2", 0o644, A, A),
    f("tmp/b2", 0o644, B, B),
    f("tmp/a3", 0o644, A, A),
    d("tmp/bd", 0o755, B, B),
    d("tmpo", 0o1777, A, A),
    f("tmpo/b", 0o644, B, B),
    f("tmpo/r", 0o644, 0, 0),
    f("tmpo/r2", 0o644, 0, 0),
    // Read-only and unsearchable.
    f("ro", 0o444, A, A),
    d("rod", 0o555, A, A),
    f("rod/x", 0o644, A, A),
    f("rod/w", 0o666, A, A),
    d("rod/e", 0o755, A, A),
    d("nox", 0o666, A, A),
    f("nox/x", 0o644, A, A),
    d("priv", 0o700, A, A),
    d("priv/sub", 0o755, 0, 0),
    f("priv/sub/f", 0o644, 0, 0),
    d("nor", 0o311, A, A),
    f("nor/f", 0o644, A, A),
    d("bdir", 0o755, B, B),
    f("bdir/f", 0o644, B, B),
    f("lk", 0o644, A, A),
    // Xattrs.
    fx("xf", 0o644, A, A),
    fx("xs", 0o644, A, A),
    f("xc", 0o644, A, A),
    Obj {
        path: "xd",
        content: None,
        mode: 0o755,
        uid: A,
        gid: A,
        xattrs: &[("trusted.overlay.opaque", "y"), ("user.plain", "1")],
    },
];

/// What root makes through the mount before the matrix: the same kinds of
/// objects, in the upper.
const UPPER: &[Obj] = &[
    d("up", 0o755, 0, 0),
    f("up/sw", 0o6775, A, B),
    f("up/st", 0o6775, A, B),
    f("up/so", 0o6775, A, B),
    f("up/sg", 0o2664, A, B),
    f("up/cu", 0o6755, A, A),
    f("up/cg", 0o6755, A, 0),
    f("up/cm", 0o755, A, 0),
    f("up/ro", 0o444, A, A),
    d("up/sgd", 0o2777, A, B),
    d("utmp", 0o1777, 0, 0),
    f("utmp/a", 0o644, A, A),
    f("utmp/b", 0o644, B, B),
    f("utmp/r", 0o666, 0, 0),
    f("utmp/a2", 0o644, A, A),
    f("utmp/b2", 0o644, B, B),
    f("utmp/a3", 0o644, A, A),
    d("urod", 0o555, A, A),
    f("urod/x", 0o644, A, A),
    Obj {
        path: "up/x",
        content: Some("data\n"),
        mode: 0o644,
        uid: A,
        gid: A,
        xattrs: &[("user.plain", "1")],
    },
];

/// The lower files' mtime (compared: copy-up keeps it).
const LOWER_MTIME: u64 = 1_600_000_000;

/// Makes `objs` under `root/COPY/` for every user's copy, as root.
fn make_objects(root: &Path, objs: &[Obj], set_mtime: bool) {
    for u in USERS {
        for o in objs {
            let p = root.join(u.copy).join(o.path);
            let what = |e: std::io::Error| format!("{}: {e}", p.display());
            match o.content {
                None => fs::create_dir(&p).map_err(what).unwrap(),
                Some(c) => fs::write(&p, c).map_err(what).unwrap(),
            }
            for (n, v) in o.xattrs {
                lsetxattr(&p, n, v.as_bytes()).map_err(what).unwrap();
            }
            // chown first: it clears the set-id bits the mode then sets.
            lchown(&p, Some(o.uid), Some(o.gid)).map_err(what).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(o.mode))
                .map_err(what)
                .unwrap();
        }
        if set_mtime {
            for o in objs.iter().rev() {
                let t = SystemTime::UNIX_EPOCH + Duration::from_secs(LOWER_MTIME);
                let p = root.join(u.copy).join(o.path);
                File::open(&p).unwrap().set_modified(t).unwrap();
            }
        }
    }
}

fn make_lower(base: &Path) -> PathBuf {
    let lower = base.join("lower");
    fs::create_dir_all(&lower).unwrap();
    fs::set_permissions(&lower, fs::Permissions::from_mode(0o755)).unwrap();
    make_objects(&lower, LOWER, true);
    lower
}

// =========================================================== the operations

type P = &'static str;

/// One syscall, on a path relative to the user's copy.
#[derive(Clone, Copy, Debug)]
enum Act {
    /// open(O_WRONLY|O_APPEND), write "x", close.
    Append(P),
    /// open(O_WRONLY), close.
    OpenW(P),
    /// open(O_WRONLY|O_TRUNC), close.
    OpenTrunc(P),
    /// truncate(2) by path.
    Truncate(P, u64),
    Chmod(P, u32),
    /// chown(2); -1 leaves that id.
    Chown(P, i64, i64),
    /// utimes(2) with both times set to the given second, or NULL (now).
    Utime(P, Option<i64>),
    /// open(O_WRONLY|O_CREAT|O_EXCL, mode).
    Create(P, u32),
    Mkdir(P, u32),
    Unlink(P),
    Rmdir(P),
    Rename(P, P),
    Link(P, P),
    /// open(O_RDONLY) and read.
    Read(P),
    ReadDir(P),
    /// lstat as the user (search permission on the way).
    Lstat(P),
    /// lgetxattr.
    GetX(P, P),
    /// lsetxattr(name, value, 0).
    SetX(P, P, P),
    /// lremovexattr.
    RmX(P, P),
    /// llistxattr.
    ListX(P),
}

use Act::*;

/// The matrix's rows: each runs once per user.
const OPS: &[Act] = &[
    // -------------------------------------- set-id bits cleared by writes
    Append("sw"),
    Truncate("st", 2),
    OpenTrunc("so"),
    Append("sg"),
    Truncate("sgt", 0),
    Append("swo"),
    OpenW("sro"),
    Append("up/sw"),
    Truncate("up/st", 2),
    OpenTrunc("up/so"),
    Append("up/sg"),
    // ------------------------------------------------------ chown, chgrp
    Chown("cu", B as i64, -1),
    Chown("cg", -1, A as i64),
    Chown("cgl", -1, A as i64),
    Chown("cn", A as i64, A as i64),
    Chown("cd", -1, B as i64),
    Chown("rw_c", A as i64, A as i64),
    Chown("up/cu", B as i64, -1),
    Chown("up/cg", -1, A as i64),
    // ---------------------------------------------------- chmod, utimes
    Chmod("cm", 0o2755),
    Chmod("cm2", 0o2755),
    Chmod("dm", 0o2755),
    Chmod("up/cm", 0o2755),
    Chmod("rw", 0o600),
    Utime("rw_t", Some(1_000_000_000)),
    Utime("rw_n", None),
    Utime("af", None),
    Utime("af_t", Some(1_000_000_000)),
    // ------------------------------------------- set-group-id directories
    Mkdir("sgd/sub", 0o777),
    Create("sgd/sub/f", 0o666),
    Mkdir("sgd/sub/deeper", 0o777),
    Create("sgd/f", 0o666),
    Create("sgd/g", 0o2775),
    Mkdir("sgd/low/sub", 0o777),
    Mkdir("up/sgd/sub", 0o777),
    Create("up/sgd/f", 0o666),
    Create("up/sgd/g", 0o2775),
    // ------------------------------------------------- sticky directories
    Unlink("tmp/a"),
    Unlink("tmp/b"),
    Rename("tmp/r", "tmp/r_moved"),
    Rename("tmp/a2", "tmp/b2"),
    Rename("tmp/a3", "tmp/a3_moved"),
    Rmdir("tmp/bd"),
    Unlink("tmpo/b"),
    Unlink("tmpo/r"),
    Rename("tmpo/r2", "tmpo/r2_moved"),
    Create("tmp/new", 0o644),
    Unlink("tmp/new"),
    Unlink("utmp/a"),
    Unlink("utmp/b"),
    Rename("utmp/r", "utmp/r_moved"),
    Rename("utmp/a2", "utmp/b2"),
    Rename("utmp/a3", "utmp/a3_moved"),
    // -------------------------------------- read-only, search permission
    OpenW("ro"),
    OpenW("up/ro"),
    Create("rod/new", 0o644),
    Unlink("rod/x"),
    Rmdir("rod/e"),
    Rename("rod/x", "rod/y"),
    Mkdir("rod/d", 0o755),
    Append("rod/w"),
    Create("urod/new", 0o644),
    Unlink("urod/x"),
    Unlink("nox/x"),
    ReadDir("nox"),
    Lstat("nox/x"),
    Read("priv/sub/f"),
    Lstat("priv/sub/f"),
    Append("priv/sub/f"),
    ReadDir("nor"),
    Read("nor/f"),
    Create("bdir/new", 0o644),
    Append("bdir/f"),
    Link("lk", "tmp/lk_link"),
    // user.* xattrs of a sticky directory: its owner's (and root's) alone.
    SetX("tmp", "user.mine", "v"),
    SetX("tmpo", "user.mine", "v"),
    // ------------------------------------------------------------ xattrs
    ListX("xf"),
    GetX("xf", "user.plain"),
    GetX("xf", "trusted.plain"),
    GetX("xf", "trusted.overlay.foo"),
    GetX("xf", "user.overlay.foo"),
    GetX("xf", "user.fuseoverlayfs.foo"),
    GetX("xf", "user.containers.foo"),
    GetX("xf", "user.strata.foo"),
    ListX("xd"),
    GetX("xd", "trusted.overlay.opaque"),
    ListX("up"),
    GetX("up", "trusted.overlay.opaque"),
    GetX("up", "user.overlay.opaque"),
    ListX("up/x"),
    SetX("xs", "trusted.overlay.foo", "v"),
    SetX("xs", "trusted.overlay.opaque", "y"),
    SetX("xs", "user.overlay.foo", "v"),
    SetX("xs", "user.fuseoverlayfs.foo", "v"),
    SetX("xs", "user.containers.foo", "v"),
    SetX("xs", "user.strata.foo", "v"),
    RmX("xs", "trusted.overlay.foo"),
    RmX("xs", "user.overlay.foo"),
    RmX("xs", "user.containers.foo"),
    SetX("up/x", "trusted.overlay.redirect", "/elsewhere"),
    SetX("up/x", "user.overlay.origin", "v"),
    RmX("up", "trusted.overlay.opaque"),
    RmX("up", "user.overlay.opaque"),
    SetX("up", "user.fuseoverlayfs.opaque", "y"),
    ListX("xs"),
    ListX("up/x"),
    SetX("xc", "user.mine", "v"),
    GetX("xc", "user.mine"),
    SetX("xc", "trusted.mine", "v"),
    ListX("xc"),
];

impl Act {
    /// The shell line running the perl program as `u` (paths inside its
    /// copy).
    fn command(&self, u: &User) -> String {
        let p = |s: &str| format!("{}/{s}", u.copy);
        let nr_get = libc::SYS_lgetxattr;
        let nr_set = libc::SYS_lsetxattr;
        let nr_rm = libc::SYS_lremovexattr;
        let nr_list = libc::SYS_llistxattr;
        let (code, args): (String, Vec<String>) = match *self {
            Append(a) => (
                "r(sysopen(F,$ARGV[0],O_WRONLY|O_APPEND) && syswrite(F,\"x\") && close(F))".into(),
                vec![p(a)],
            ),
            OpenW(a) => (
                "r(sysopen(F,$ARGV[0],O_WRONLY) && close(F))".into(),
                vec![p(a)],
            ),
            OpenTrunc(a) => (
                "r(sysopen(F,$ARGV[0],O_WRONLY|O_TRUNC) && close(F))".into(),
                vec![p(a)],
            ),
            Truncate(a, n) => ("r(truncate($ARGV[0],$ARGV[1]))".into(), vec![p(a), n.to_string()]),
            Chmod(a, m) => ("r(chmod(oct($ARGV[1]),$ARGV[0]))".into(), vec![p(a), format!("{m:o}")]),
            Chown(a, u, g) => (
                "r(chown($ARGV[1],$ARGV[2],$ARGV[0]))".into(),
                vec![p(a), u.to_string(), g.to_string()],
            ),
            Utime(a, Some(t)) => ("r(utime($ARGV[1],$ARGV[1],$ARGV[0]))".into(), vec![p(a), t.to_string()]),
            Utime(a, None) => ("r(utime(undef,undef,$ARGV[0]))".into(), vec![p(a)]),
            Create(a, m) => (
                "r(sysopen(F,$ARGV[0],O_WRONLY|O_CREAT|O_EXCL,oct($ARGV[1])) && close(F))".into(),
                vec![p(a), format!("{m:o}")],
            ),
            Mkdir(a, m) => ("r(mkdir($ARGV[0],oct($ARGV[1])))".into(), vec![p(a), format!("{m:o}")]),
            Unlink(a) => ("r(unlink($ARGV[0]))".into(), vec![p(a)]),
            Rmdir(a) => ("r(rmdir($ARGV[0]))".into(), vec![p(a)]),
            Rename(a, b) => ("r(rename($ARGV[0],$ARGV[1]))".into(), vec![p(a), p(b)]),
            Link(a, b) => ("r(link($ARGV[0],$ARGV[1]))".into(), vec![p(a), p(b)]),
            Read(a) => (
                "if(sysopen(F,$ARGV[0],O_RDONLY)){my $b;sysread(F,$b,4096);chomp $b;print \"ok $b\\n\"}else{print \"err $!\\n\"}".into(),
                vec![p(a)],
            ),
            ReadDir(a) => (
                "if(opendir(D,$ARGV[0])){print \"ok \",join(\" \",sort grep{!/^\\.\\.?$/} readdir(D)),\"\\n\"}else{print \"err $!\\n\"}".into(),
                vec![p(a)],
            ),
            Lstat(a) => (
                "if(my @s=lstat($ARGV[0])){printf(\"ok %o %d:%d\\n\",$s[2],$s[4],$s[5])}else{print \"err $!\\n\"}".into(),
                vec![p(a)],
            ),
            // Perl's syscall passes strings as pointers and numbers (the
            // literals, length()) as integers.
            GetX(a, n) => (
                format!(
                    "my $b=\"\\0\" x 65536;my $n=syscall({nr_get},$ARGV[0],$ARGV[1],$b,65536);if($n<0){{print \"err $!\\n\"}}else{{print \"ok \",substr($b,0,$n),\"\\n\"}}"
                ),
                vec![p(a), n.into()],
            ),
            SetX(a, n, v) => (
                format!("r(syscall({nr_set},$ARGV[0],$ARGV[1],$ARGV[2],length($ARGV[2]),0)==0)"),
                vec![p(a), n.into(), v.into()],
            ),
            RmX(a, n) => (
                format!("r(syscall({nr_rm},$ARGV[0],$ARGV[1])==0)"),
                vec![p(a), n.into()],
            ),
            ListX(a) => (
                format!(
                    "my $b=\"\\0\" x 65536;my $n=syscall({nr_list},$ARGV[0],$b,65536);if($n<0){{print \"err $!\\n\"}}else{{print \"ok \",join(\" \",sort grep{{length}} split(/\\0/,substr($b,0,$n))),\"\\n\"}}"
                ),
                vec![p(a)],
            ),
        };
        assert!(!code.contains('\'') && !code.contains(" => "), "{code}");
        let line = format!(
            "umask 022; {}perl -MFcntl -e 'sub r{{print(($_[0]?\"ok\":\"err $!\"),\"\\n\")}} {code}' {}",
            u.wrap,
            args.join(" ")
        );
        match u.uid {
            0 => line,
            _ => format!("as {}:{} {line}", u.uid, u.gid),
        }
    }

    /// The paths whose lstat is compared after the operation.
    fn paths(&self) -> Vec<P> {
        match *self {
            Rename(a, b) | Link(a, b) => vec![a, b],
            Append(a)
            | OpenW(a)
            | OpenTrunc(a)
            | Truncate(a, _)
            | Chmod(a, _)
            | Chown(a, ..)
            | Utime(a, _)
            | Create(a, _)
            | Mkdir(a, _)
            | Unlink(a)
            | Rmdir(a)
            | Read(a)
            | ReadDir(a)
            | Lstat(a)
            | GetX(a, _)
            | SetX(a, ..)
            | RmX(a, _)
            | ListX(a) => vec![a],
        }
    }

    /// The internal xattr name the operation gets, sets or removes.
    fn internal_name(&self) -> Option<P> {
        match *self {
            GetX(_, n) | SetX(_, n, _) | RmX(_, n) if is_internal_xattr(n) => Some(n),
            _ => None,
        }
    }
}

impl fmt::Display for Act {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Append(a) => write!(f, "append {a}"),
            OpenW(a) => write!(f, "open(O_WRONLY) {a}"),
            OpenTrunc(a) => write!(f, "open(O_WRONLY|O_TRUNC) {a}"),
            Truncate(a, n) => write!(f, "truncate {a} {n}"),
            Chmod(a, m) => write!(f, "chmod {m:04o} {a}"),
            Chown(a, u, g) => write!(f, "chown {u}:{g} {a}"),
            Utime(a, Some(t)) => write!(f, "utimes {a} {t}"),
            Utime(a, None) => write!(f, "utimes {a} NULL"),
            Create(a, m) => write!(f, "create {m:04o} {a}"),
            Mkdir(a, m) => write!(f, "mkdir {m:04o} {a}"),
            Unlink(a) => write!(f, "unlink {a}"),
            Rmdir(a) => write!(f, "rmdir {a}"),
            Rename(a, b) => write!(f, "rename {a} {b}"),
            Link(a, b) => write!(f, "link {a} {b}"),
            Read(a) => write!(f, "read {a}"),
            ReadDir(a) => write!(f, "readdir {a}"),
            Lstat(a) => write!(f, "lstat {a}"),
            GetX(a, n) => write!(f, "getxattr {a} {n}"),
            SetX(a, n, v) => write!(f, "setxattr {a} {n}={v}"),
            RmX(a, n) => write!(f, "removexattr {a} {n}"),
            ListX(a) => write!(f, "listxattr {a}"),
        }
    }
}

// ================================================================ running

/// What one operation did as one user on one mount.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Cell {
    /// The program's exit status and output: `Some(0) ok`, `Some(0) err
    /// Permission denied`.
    result: String,
    /// `lstat` (as root, through the mount) of each path after the
    /// operation: the path in the mount, and the attributes or the errno.
    stats: Vec<(String, Result<StatInfo, i32>)>,
    /// The object in the upper directory, before and after (for the
    /// internal xattr operations, which must leave it alone).
    upper_before: String,
    upper_after: String,
}

/// The object at `rel` in an upper directory: absent, or its mode, owner
/// and every xattr, internal ones included.
fn upper_object(upper: &Path, rel: &str) -> String {
    let p = upper.join(rel);
    match fs::symlink_metadata(&p) {
        Err(e) => format!("({e})"),
        Ok(md) => {
            use std::os::unix::fs::MetadataExt;
            let mut names = llistxattr(&p).unwrap_or_default();
            names.sort();
            let xattrs: Vec<String> = names
                .iter()
                .map(|n| {
                    let v = lgetxattr(&p, n).unwrap_or_default();
                    format!("{n}={}", String::from_utf8_lossy(&v))
                })
                .collect();
            format!("{:o} {}:{} {xattrs:?}", md.mode(), md.uid(), md.gid())
        }
    }
}

fn stat_of(mnt: &Path, rel: &str, since: SystemTime) -> (String, Result<StatInfo, i32>) {
    let st = common::stat(&mnt.join(rel), since).map_err(|e| e.raw_os_error().unwrap_or(-1));
    (rel.to_owned(), st)
}

fn show_stat((rel, st): &(String, Result<StatInfo, i32>)) -> String {
    match st {
        Ok(s) => format!("{rel}: {s}"),
        Err(e) => format!("{rel}: {}", errno_name(*e)),
    }
}

/// Everything one mount gave.
struct Run {
    setup: Vec<(String, Result<StatInfo, i32>)>,
    /// `cells[op][user]`.
    cells: Vec<Vec<Cell>>,
    merged: BTreeMap<String, String>,
    upper: UpperWalk,
    since: SystemTime,
}

fn run_matrix(mnt: &Path, upper: &Path) -> Run {
    // Files get their times from the coarse clock, which may be a tick
    // behind: what was made after this counts as recent.
    let since = SystemTime::now() - Duration::from_secs(1);
    // The upper objects, made by root through the mount (so no copy-up);
    // how they came out is compared too.
    make_objects(mnt, UPPER, false);
    let mut setup = Vec::new();
    for u in USERS {
        for o in UPPER {
            setup.push(stat_of(mnt, &format!("{}/{}", u.copy, o.path), since));
        }
    }
    let mut cells = Vec::new();
    for op in OPS {
        let mut row = Vec::new();
        for u in USERS {
            let line = op.command(&u);
            let target = format!("{}/{}", u.copy, op.paths()[0]);
            let upper_before = upper_object(upper, &target);
            let out = run_script(mnt, &[line.as_str()]);
            let result = out[0]
                .split_once(" => ")
                .map_or(out[0].as_str(), |(_, r)| r)
                .trim_end()
                .to_owned();
            let stats = op
                .paths()
                .iter()
                .map(|p| stat_of(mnt, &format!("{}/{p}", u.copy), since))
                .collect();
            row.push(Cell {
                result,
                stats,
                upper_before,
                upper_after: upper_object(upper, &target),
            });
        }
        cells.push(row);
    }
    Run {
        setup,
        cells,
        merged: listing(mnt),
        upper: upper_walk(upper),
        since,
    }
}

fn kernel_run(lower: &Path) -> Run {
    let uw = UpperWork::new();
    let spec = MountSpec::new(vec![lower.to_owned()])
        .with_upper(&uw)
        .with_option("redirect_dir=on")
        .with_option("index=on");
    let m = KernelOverlay::mount(&spec);
    let r = run_matrix(m.path(), &uw.upper);
    m.unmount().unwrap();
    r
}

fn strata_run(lower: &Path, extra: Option<&str>) -> Run {
    let uw = UpperWork::new();
    let mut spec = MountSpec::new(vec![lower.to_owned()])
        .with_upper(&uw)
        .with_option("default_permissions")
        .with_option("allow_other");
    if let Some(o) = extra {
        spec = spec.with_option(o);
    }
    let m = StrataMount::mount(&spec);
    let r = run_matrix(m.path(), &uw.upper);
    let log = m.stderr_log();
    m.unmount().unwrap();
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
    r
}

// ============================================================= comparing

fn errno_of(result: &str) -> Option<&str> {
    result.split_once(" err ").map(|(_, e)| e.trim())
}

const EPERM_TEXT: &str = "Operation not permitted";
const EACCES_TEXT: &str = "Permission denied";
const ENODATA_TEXT: &str = "No data available";

/// A result of the VFS's own permission check (made before any filesystem
/// is asked, so the same on both).
fn is_vfs_refusal(result: &str) -> bool {
    matches!(errno_of(result), Some(EPERM_TEXT | EACCES_TEXT))
}

/// The names of a listxattr result, if it succeeded.
fn listed(result: &str) -> Option<Vec<&str>> {
    let rest = result.strip_prefix("Some(0) ok")?;
    Some(rest.split_whitespace().collect())
}

/// Every difference between the kernel's run and strata's, one line each.
/// `documented` collects the upper paths where strata legitimately keeps
/// nothing the kernel copied up (a refused internal xattr).
fn compare(kernel: &Run, strata: &Run, name: &str) -> (Vec<String>, Excused) {
    let mut problems = Vec::new();
    let mut documented = BTreeSet::new();
    let mut sgid_kept = BTreeSet::new();
    for (k, s) in kernel.setup.iter().zip(&strata.setup) {
        if k != s {
            problems.push(format!(
                "setup as root: kernel {} | {name} {}",
                show_stat(k),
                show_stat(s)
            ));
        }
    }
    for (i, op) in OPS.iter().enumerate() {
        for (j, u) in USERS.iter().enumerate() {
            let (k, s) = (&kernel.cells[i][j], &strata.cells[i][j]);
            let at = format!("{op} (in {}/) as {} ({}:{})", u.copy, u.name, u.uid, u.gid);
            let mut bad = |what: String| problems.push(format!("{at}: {what}"));
            let exact = || {
                if k.result != s.result {
                    Some(format!(
                        "result: kernel `{}` | {name} `{}`",
                        k.result, s.result
                    ))
                } else {
                    None
                }
            };
            let result_problem = match (op, op.internal_name()) {
                (ListX(_), _) => match (listed(&k.result), listed(&s.result)) {
                    (Some(kl), Some(sl)) => {
                        // Strata lists no internal name; the kernel lists
                        // the user.* ones (ordinary to it): compare the rest.
                        let leaked: Vec<&&str> =
                            sl.iter().filter(|n| is_internal_xattr(n)).collect();
                        let kv: Vec<&&str> = kl.iter().filter(|n| !is_internal_xattr(n)).collect();
                        let sv: Vec<&&str> = sl.iter().filter(|n| !is_internal_xattr(n)).collect();
                        if !leaked.is_empty() {
                            Some(format!("{name} lists internal xattrs {leaked:?}"))
                        } else if kv != sv {
                            Some(format!(
                                "listed (internal names left out): kernel {kv:?} | {name} {sv:?}"
                            ))
                        } else {
                            None
                        }
                    }
                    _ => exact(),
                },
                (_, None) => exact(),
                // The kernel's own namespace, read: it answers from the
                // escaped names, of which there are none here.
                (GetX(..), Some(n)) if n.starts_with("trusted.overlay.") => exact(),
                // Refused by the VFS before either filesystem is asked.
                (_, Some(_)) if is_vfs_refusal(&k.result) => exact(),
                (GetX(..), Some(_)) => (errno_of(&s.result) != Some(ENODATA_TEXT)).then(|| {
                    format!(
                        "internal xattr read: strata documents ENODATA, got `{}` (kernel `{}`)",
                        s.result, k.result
                    )
                }),
                (SetX(..) | RmX(..), Some(_)) => {
                    // Documented: EPERM, and the upper keeps what it had
                    // (the kernel stores a trusted.overlay.* name escaped
                    // and a user.* one as it is, copying up first).
                    let target = PathBuf::from(format!("{}/{}", u.copy, op.paths()[0]));
                    if !kernel.upper.contains_key(&target) || k.upper_before == k.upper_after {
                        // nothing to excuse
                    } else {
                        documented.insert(target);
                    }
                    if errno_of(&s.result) != Some(EPERM_TEXT) {
                        Some(format!(
                            "internal xattr change: strata documents EPERM, got `{}` (kernel `{}`)",
                            s.result, k.result
                        ))
                    } else if s.upper_before != s.upper_after {
                        Some(format!(
                            "refused internal xattr change altered {name}'s upper: before {} after {}",
                            s.upper_before, s.upper_after
                        ))
                    } else {
                        None
                    }
                }
                _ => exact(),
            };
            if let Some(p) = result_problem {
                bad(p);
            }
            for (ks, ss) in k.stats.iter().zip(&s.stats) {
                if ks == ss {
                    continue;
                }
                if fuse_keeps_sgid(op, u, &ks.1, &ss.1) {
                    sgid_kept.insert(PathBuf::from(&ks.0));
                    continue;
                }
                bad(format!(
                    "after it, lstat: kernel {} | {name} {}",
                    show_stat(ks),
                    show_stat(ss)
                ));
            }
        }
    }
    for (p, kv) in &kernel.merged {
        let kept = sgid_kept.contains(Path::new(p.trim_start_matches('/')));
        match strata.merged.get(p) {
            Some(sv) if sv == kv => {}
            Some(sv) if kept && without_sgid(sv) == *kv => {}
            Some(sv) => problems.push(format!("merged {p}: kernel {kv} | {name} {sv}")),
            None => problems.push(format!("merged {p}: kernel {kv} | {name}: missing")),
        }
    }
    for (p, sv) in &strata.merged {
        if !kernel.merged.contains_key(p) {
            problems.push(format!("merged {p}: kernel: missing | {name} {sv}"));
        }
    }
    (
        problems,
        Excused {
            documented,
            sgid_kept,
        },
    )
}

/// Where strata may differ from the kernel, as documented.
struct Excused {
    /// Upper paths strata legitimately does not copy up: a refused
    /// internal xattr.
    documented: BTreeSet<PathBuf>,
    /// Paths whose set-group-id bit (without group execute) strata keeps
    /// where the kernel drops it (see `fuse_keeps_sgid`).
    sgid_kept: BTreeSet<PathBuf>,
}

/// A known difference that is the kernel's FUSE module's, not strata's:
/// the VFS drops the set-group-id bit of a file without group execute (the
/// old mandatory-locking mark) when a caller neither in the file's group
/// nor with CAP_FSETID writes, truncates or chowns it
/// (`setattr_should_drop_sgid`), and kernel overlayfs passes that on to
/// the upper. FUSE's `fuse_setattr` recomputes what to kill without
/// looking at the caller (set-user-id always, set-group-id only with group
/// execute) and so sends the daemon nothing in this case; with FUSE
/// passthrough the write does not even reach the daemon, which could
/// otherwise judge it itself. Every FUSE filesystem without
/// `FUSE_HANDLE_KILLPRIV_V2` (which passthrough cannot honour) keeps the
/// bit there, strata too: accepted exactly in that case, nowhere else.
fn fuse_keeps_sgid(
    op: &Act,
    u: &User,
    kernel: &Result<StatInfo, i32>,
    strata: &Result<StatInfo, i32>,
) -> bool {
    let (Ok(k), Ok(s)) = (kernel, strata) else {
        return false;
    };
    let mut with_bit = k.clone();
    with_bit.perm |= libc::S_ISGID;
    !u.has_fsetid()
        && matches!(op, Append(_) | Truncate(..) | OpenTrunc(_) | Chown(..))
        && k.kind == Kind::File
        && k.perm & (libc::S_ISGID | libc::S_IXGRP) == 0
        && *s == with_bit
}

/// A `listing` line with the set-group-id bit of its mode cleared.
fn without_sgid(line: &str) -> String {
    let (mode, rest) = line.split_once(' ').unwrap();
    let mode = u32::from_str_radix(mode, 8).unwrap() & !libc::S_ISGID;
    format!("{mode:o} {rest}")
}

fn upper_problems(
    kernel: &Run,
    strata: &Run,
    name: &str,
    lower: &Path,
    excused: &Excused,
) -> Vec<String> {
    let mut k = kernel.upper.clone();
    let mut s = strata.upper.clone();
    for p in &excused.sgid_kept {
        if let Some(e) = s.get_mut(p) {
            e.perm &= !libc::S_ISGID;
        }
    }
    for p in &excused.documented {
        // Copied up by the kernel for an xattr strata refuses (checked
        // above to have left strata's upper alone).
        if !strata.upper.contains_key(p) {
            k.remove(p);
        }
    }
    upper_diff("kernel", &k, name, &s, kernel.since, &|p: &Path| {
        lower.join(p).is_dir()
    })
}

/// The kernel's own results where they are known: the matrix really ran
/// as the users (not all as root), and reached each rule it is about.
fn kernel_sanity(kernel: &Run) -> Vec<String> {
    let cell = |op: &str, user: &str| -> &Cell {
        let i = OPS
            .iter()
            .position(|o| o.to_string() == op)
            .unwrap_or_else(|| panic!("no op {op}"));
        let j = USERS.iter().position(|u| u.name == user).unwrap();
        &kernel.cells[i][j]
    };
    let want = [
        ("append sw", "root", "ok", "6775"),
        ("append sw", "uid1000", "ok", "0775"),
        ("append sw", "uid1001", "ok", "0775"),
        ("append sg", "uid1001", "ok", "2664"),
        ("append sg", "uid1000", "ok", "0664"),
        ("truncate sgt 0", "uid1000", "ok", "0664"),
        ("truncate st 2", "uid1001", "ok", "0775"),
        ("append up/sw", "uid1001", "ok", "0775"),
        ("chown 1001:-1 cu", "root", "ok", "0755 1001:1000"),
        ("chown 1001:-1 cu", "uid1000", EPERM_TEXT, "6755"),
        ("chown -1:1000 cg", "uid1000", "ok", "0755 1000:1000"),
        ("chmod 2755 cm", "uid1000", "ok", "0755"),
        ("chmod 2755 cm2", "uid1000", "ok", "2755"),
        ("chmod 0600 rw", "uid1000", EPERM_TEXT, "0666"),
        ("utimes rw_n NULL", "uid1001", "ok", "mtime recent"),
        ("utimes rw_t 1000000000", "uid1001", EPERM_TEXT, "0666"),
        ("utimes af NULL", "uid1001", EACCES_TEXT, "0644"),
        ("mkdir 0777 sgd/sub", "uid1000", "ok", "2755 1000:1001"),
        ("create 0666 sgd/sub/f", "uid1000", "ok", "0644 1000:1001"),
        ("create 2775 sgd/g", "uid1000", "ok", "0755 1000:1001"),
        ("create 2775 sgd/g", "uid1001", "ok", "2755 1001:1001"),
        ("unlink tmp/b", "uid1000", EPERM_TEXT, "0644 1001:1001"),
        ("unlink tmp/a", "uid1000", "ok", "ENOENT"),
        ("unlink tmpo/b", "uid1000", "ok", "ENOENT"),
        ("rename tmp/a3 tmp/a3_moved", "uid1000", "ok", "ENOENT"),
        (
            "rename tmp/a3 tmp/a3_moved",
            "uid1001",
            EPERM_TEXT,
            "ENOENT",
        ),
        ("rename tmpo/r2 tmpo/r2_moved", "uid1000", "ok", "ENOENT"),
        (
            "rename tmpo/r2 tmpo/r2_moved",
            "uid1001",
            EPERM_TEXT,
            "ENOENT",
        ),
        ("unlink utmp/a", "uid1001", EPERM_TEXT, "0644 1000:1000"),
        ("open(O_WRONLY) ro", "uid1000", EACCES_TEXT, "0444"),
        ("open(O_WRONLY) ro", "root", "ok", "0444"),
        ("create 0644 rod/new", "uid1000", EACCES_TEXT, "ENOENT"),
        ("unlink nox/x", "uid1000", EACCES_TEXT, "0644"),
        ("read priv/sub/f", "uid1001", EACCES_TEXT, "0644"),
        ("read priv/sub/f", "uid1000", "ok data", "0644"),
        ("create 0644 bdir/new", "uid1000", EACCES_TEXT, "ENOENT"),
        ("link lk tmp/lk_link", "uid1001", EPERM_TEXT, "ENOENT"),
        ("getxattr xf user.overlay.foo", "uid1001", "ok u", ""),
        ("setxattr xs user.overlay.foo=v", "uid1001", EACCES_TEXT, ""),
        (
            "setxattr xs trusted.overlay.foo=v",
            "uid1000",
            EPERM_TEXT,
            "",
        ),
        ("setxattr xs trusted.overlay.foo=v", "root", "ok", ""),
        (
            "setxattr xs trusted.overlay.foo=v",
            "root-capless",
            EPERM_TEXT,
            "",
        ),
        ("append sw", "root-capless", "ok", "0775"),
        ("chown 1001:-1 cu", "root-capless", EPERM_TEXT, "6755"),
        ("unlink tmp/b", "root-capless", "ok", "ENOENT"),
        (
            "listxattr xf",
            "root",
            "trusted.plain user.containers.foo",
            "",
        ),
        (
            "listxattr xf",
            "root-capless",
            "ok user.containers.foo user.fuseoverlayfs.foo user.overlay.foo user.plain user.strata.foo",
            "",
        ),
    ];
    let mut out = Vec::new();
    let specified = USERS.iter().flat_map(|u| UPPER.iter().map(move |o| (u, o)));
    for ((u, o), (rel, st)) in specified.zip(&kernel.setup) {
        match st {
            Ok(s) if (s.perm, s.uid, s.gid) == (o.mode, o.uid, o.gid) => {}
            _ => out.push(format!(
                "kernel setup {rel}: want {:04o} {}:{} in {}/, got {}",
                o.mode,
                o.uid,
                o.gid,
                u.copy,
                show_stat(&(rel.clone(), st.clone()))
            )),
        }
    }
    for (op, user, result, stat) in want {
        let c = cell(op, user);
        let stats: Vec<String> = c.stats.iter().map(show_stat).collect();
        let stats = stats.join(" ");
        if !c.result.contains(result) || !stats.contains(stat) {
            out.push(format!(
                "kernel {op} as {user}: want `{result}` and `{stat}`, got `{}` {stats}",
                c.result
            ));
        }
    }
    out
}

#[test]
fn permission_matrix_like_the_kernel() {
    let started = Instant::now();
    let base = common::tempdir();
    let klower = make_lower(&base.path().join("k"));
    let slower = make_lower(&base.path().join("s"));
    // The three mounts run at once (each its own tree and users' copies).
    let (kernel, stratas) = std::thread::scope(|s| {
        let k = s.spawn(|| kernel_run(&klower));
        let runs: Vec<_> = [
            ("strata", None),
            ("strata passthrough=0", Some("passthrough=0")),
        ]
        .into_iter()
        .map(|(name, extra)| {
            let slower = &slower;
            (name, s.spawn(move || strata_run(slower, extra)))
        })
        .collect();
        let k = k.join().unwrap();
        let runs: Vec<_> = runs
            .into_iter()
            .map(|(n, h)| (n, h.join().unwrap()))
            .collect();
        (k, runs)
    });
    let sanity = kernel_sanity(&kernel);
    assert!(
        sanity.is_empty(),
        "the kernel's matrix is not what the test is about:\n{}",
        sanity.join("\n")
    );
    if std::env::var_os("PERMISSIONS_TRACE").is_some() {
        for (i, op) in OPS.iter().enumerate() {
            for (j, u) in USERS.iter().enumerate() {
                eprintln!("{op} as {}:", u.name);
                let runs = std::iter::once(("kernel", &kernel))
                    .chain(stratas.iter().map(|(n, r)| (*n, r)));
                for (name, run) in runs {
                    let c = &run.cells[i][j];
                    let stats: Vec<String> = c.stats.iter().map(show_stat).collect();
                    eprintln!("  {name:22} {} | {}", c.result, stats.join(" | "));
                }
            }
        }
    }
    let mut problems = Vec::new();
    for (name, strata) in &stratas {
        let (mut p, excused) = compare(&kernel, strata, name);
        p.extend(upper_problems(&kernel, strata, name, &klower, &excused));
        problems.extend(p);
    }
    eprintln!(
        "permission matrix: {} operations x {} users ({} cells) on kernel overlayfs and twice on strata; \
         {} merged paths and {} upper entries compared per strata mount; {:.1?}",
        OPS.len(),
        USERS.len(),
        OPS.len() * USERS.len(),
        kernel.merged.len(),
        kernel.upper.len(),
        started.elapsed()
    );
    assert!(
        problems.is_empty(),
        "{} differences from kernel overlayfs:\n{}",
        problems.len(),
        problems.join("\n")
    );
    // The lower layer is untouched.
    let fresh = common::tempdir();
    let pristine = make_lower(fresh.path());
    assert_eq!(
        listing(&slower),
        listing(&pristine),
        "strata changed its lower layer"
    );
}

//! Rootless strata: the formats it falls back to where a root daemon's
//! cannot be written, checked against kernel overlayfs doing the same
//! thing in the same place.
//!
//! * **In a user namespace** (`unshare -Urm`, what rootless podman runs
//!   fuse-overlayfs in): trusted.* xattrs are refused, so opaque
//!   directories get `user.overlay.opaque=y`, redirects
//!   `user.overlay.redirect`, metadata-only files `user.overlay.metacopy`.
//!   The reference is kernel overlayfs mounted in the same namespace with
//!   `userxattr` (kernel ≥ 5.11), which writes and reads that format. Every
//!   test runs one script on both over the same layers, step by step, and
//!   compares the outcomes, the merged views, the upper directories
//!   (normalised, tests/common/upper.rs, plus the exact encodings strata
//!   chose) and, for the round trip, strata's upper read as a lower layer
//!   by the kernel (or, where the kernel cannot read the format, by
//!   strata).
//! * **As an unprivileged user** (uid 1000, `setpriv`), mounting through
//!   the setuid fusermount3: a basic script with its expected outcomes,
//!   the upper's encodings, and the round trip.
//! * Both again under a seccomp filter that refuses 0/0 character devices
//!   (as Linux before 5.8 did without CAP_MKNOD): whiteouts become
//!   `.wh.NAME` files; and in the namespace under one that refuses every
//!   setxattr (a filesystem without xattrs): `.wh..wh..opq` markers,
//!   EXDEV for directory renames, whole copies instead of metadata-only.
//!
//! Each test has a part that runs in the namespace or as the user: the
//! test binary runs itself again there (tests/common/rootless.rs).
//! Needs root, /dev/fuse, fusermount3, unshare, setpriv, mv, kernel
//! overlayfs with user namespace mounts (uid 1000 needs no passwd entry).

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::rootless::*;
use common::*;
use tempfile::TempDir;

// ===================================================================== layers

/// The unprivileged user of the `as_user` tests.
const USER: (u32, u32) = (1000, 1000);
/// An id no user namespace here maps: shows as 65534 inside.
const UNMAPPED: u32 = 1234;

fn put_dir(root: &Path, rel: &str, mode: u32) {
    let p = root.join(rel);
    fs::create_dir_all(&p).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

fn put_file(root: &Path, rel: &str, content: &[u8], mode: u32) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, content).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(root: &Path, rel: &str, (uid, gid): (u32, u32)) {
    std::os::unix::fs::lchown(root.join(rel), Some(uid), Some(gid)).unwrap();
}

/// Two lower layers in `dir` (top first), in the format of kernel
/// overlayfs with `userxattr`: a 0/0 whiteout, a `user.overlay.opaque`
/// directory. With `user`, everything belongs to that user but for
/// `rootfile` and `rootdir` (root's, as system files in an image are);
/// else to root but for `owned` and `usr`, of an id no namespace maps.
fn build_layers(dir: &Path, user: Option<(u32, u32)>) -> Vec<PathBuf> {
    let top = dir.join("layers/top");
    let base = dir.join("layers/base");
    put_file(&base, "etc/conf", b"base conf\n", 0o644);
    put_file(&base, "dir/a", b"a", 0o644);
    put_file(&base, "dir/sub/c", b"c", 0o600);
    put_dir(&base, "emptydir", 0o755);
    put_dir(&base, "emptydir2", 0o750);
    for n in ["x", "y", "z"] {
        put_file(&base, &format!("keep/{n}"), n.as_bytes(), 0o644);
    }
    put_file(&base, "data/small", b"small", 0o644);
    let big: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 251) as u8).collect();
    put_file(&base, "data/big", &big, 0o640);
    put_file(&base, "mvf", b"moved file", 0o644);
    put_file(&base, "xattr_file", b"with xattr", 0o644);
    xattr_set(&base.join("xattr_file"), "user.test", b"1");
    std::os::unix::fs::symlink("etc/conf", base.join("link")).unwrap();
    put_file(&base, "opq/hidden", b"hidden", 0o644);
    put_file(&base, "ren/inner/y", b"y", 0o644);
    put_file(&base, "ren/z", b"z", 0o644);
    put_file(&base, "ren3/q/z", b"q", 0o644);
    put_file(&base, "gone", b"gone", 0o644);
    put_file(&base, "usr/local/f", b"f", 0o644);
    put_file(&base, "owned", b"owned", 0o644);
    put_file(&base, "rootfile", b"root's", 0o666);
    put_file(&base, "rootdir/sub/f", b"f", 0o644);

    put_file(&top, "etc/conf", b"top conf\n", 0o644);
    put_file(&top, "dir/top", b"t", 0o644);
    put_file(&top, "opq/top", b"top", 0o644);
    xattr_set(&top.join("opq"), "user.overlay.opaque", b"y");
    mknod_chr(&top.join("gone"), 0, 0).unwrap();

    match user {
        Some(ids) => {
            chown_tree(dir, ids.0, ids.1);
            for rel in ["rootfile", "rootdir"] {
                chown(&base, rel, (0, 0)); // rootdir/sub stays the user's
            }
        }
        None => {
            for rel in ["owned", "usr"] {
                chown(&base, rel, (UNMAPPED, UNMAPPED));
            }
        }
    }
    vec![top, base]
}

fn layer_paths(dir: &Path) -> Vec<PathBuf> {
    vec![dir.join("layers/top"), dir.join("layers/base")]
}

fn xattr_set(path: &Path, name: &str, value: &[u8]) {
    common::lsetxattr(path, name, value)
        .unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", path.display()));
}

/// A directory for one test: layers, then (in the child) the uppers. The
/// time written to `since` is what counts as "recent" in every walk.
fn prepare(user: Option<(u32, u32)>) -> TempDir {
    let dir = tempdir();
    build_layers(dir.path(), user);
    std::thread::sleep(Duration::from_millis(20));
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap();
    fs::write(dir.path().join("since"), since.as_nanos().to_string()).unwrap();
    if let Some(ids) = user {
        chown(dir.path(), "since", ids);
    }
    dir
}

fn since(dir: &Path) -> SystemTime {
    let nanos: u64 = fs::read_to_string(dir.join("since"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos)
}

fn walk_masked(root: &Path, since: SystemTime) -> Walk {
    let mut w = walk(root);
    mask_recent_mtimes(&mut w, since);
    w
}

// ==================================================================== scripts

/// What every test does: an opaque mkdir over a deleted lower directory,
/// whiteouts (of lower names, and of upper copies hiding lower names),
/// copy-ups (data, mode, size, xattrs, times), renames leaving whiteouts,
/// a rename over a whiteout, new objects, a lower tree removed.
const SCRIPT: &[Op] = &[
    Op::RmRf("dir"),
    Op::Mkdir("dir", 0o755),
    Op::Create("dir/new", 0o644, b"new"),
    Op::ReadDir("dir"),
    Op::Unlink("keep/x"),
    Op::Rmdir("emptydir"),
    Op::Mkdir("emptydir", 0o700),
    Op::ReadDir("emptydir"),
    Op::Append("data/small", b" more"),
    Op::Chmod("data/big", 0o600),
    Op::Truncate("etc/conf", 3),
    Op::Utimens("keep/y", 1_600_000_000, 5),
    Op::Append("keep/z", b"!"),
    Op::Unlink("keep/z"),
    Op::Create("emptydir2/tmp", 0o644, b""),
    Op::Unlink("emptydir2/tmp"),
    Op::Rmdir("emptydir2"),
    Op::Rename("mvf", "dir/mvf2"),
    Op::Rename("data/small", "data/small2"),
    Op::Create("newfile", 0o644, b"fresh"),
    Op::Rename("newfile", "keep/x"),
    Op::Symlink("keep/x", "newlink"),
    Op::Mkdir("newdir", 0o755),
    Op::Create("newdir/f", 0o600, b"f"),
    Op::Link("newdir/f", "newdir/f2"),
    Op::RmRf("ren"),
    Op::ReadDir("opq"),
    Op::Read("opq/top"),
    Op::Stat("opq/hidden"),
    Op::Stat("gone"),
    Op::Read("keep/x"),
    Op::Stat("data/small"),
    Op::ReadDir(""),
];

/// Root of a namespace only: xattrs, a file of an unmapped owner.
const USERNS_EXTRA: &[Op] = &[
    Op::SetXattr("xattr_file", "user.new", b"v"),
    Op::ListXattr("xattr_file"),
    Op::Stat("owned"),
    Op::Read("owned"),
];

/// Runs `script` on both mounts in lockstep; returns the differences.
fn lockstep(kernel: &Path, strata: &Path, script: &[Op], since: SystemTime) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, op) in script.iter().enumerate() {
        let want = apply(kernel, op, since);
        let got = apply(strata, op, since);
        if want != got {
            problems.push(format!("step #{i} {op}: kernel={want} strata={got}"));
        }
    }
    problems
}

/// `mv FROM TO` in `root` (it copies where rename(2) says EXDEV).
fn mv(root: &Path, from: &str, to: &str) -> String {
    let o = run_with_timeout(
        Command::new("mv").arg(from).arg(to).current_dir(root),
        Duration::from_secs(20),
    );
    format!("{:?} {}", o.status.and_then(|s| s.code()), o.stderr.trim())
}

// ============================================================ userns: parts

/// How a namespace test mounts and what it expects of strata's upper.
#[derive(Clone, Copy)]
struct NsCase {
    refuse: Refuse,
    strata_options: &'static [&'static str],
    /// Directory renames by `mv` (EXDEV on the kernel's side, which then
    /// copies), and metadata-only copy-ups on strata's.
    renames: bool,
}

fn spec(dir: &Path, side: &str, options: &[&str]) -> MountSpec {
    let (upper, work) = upper_work_in(dir, side);
    let mut spec = MountSpec::new(layer_paths(dir));
    spec.upper = Some((upper, work));
    for o in options {
        spec = spec.with_option(o);
    }
    spec
}

/// The encodings strata's upper must use: opaque directories marked one
/// way, whiteouts one way, nothing of the root daemon's format.
fn encoding_problems(upper: &UpperWalk, opaque_form: &str, whiteout_form: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (p, e) in upper {
        let forms: Vec<&str> = e.forms.iter().map(String::as_str).collect();
        if e.kind == UpperKind::Whiteout && forms != [whiteout_form] {
            out.push(format!(
                "{}: whiteout as {forms:?}, not {whiteout_form}",
                show(p)
            ));
        }
        if e.opaque && !forms.contains(&opaque_form) {
            out.push(format!(
                "{}: opaque as {forms:?}, not {opaque_form}",
                show(p)
            ));
        }
        for f in &forms {
            let known = [opaque_form, whiteout_form];
            if !known.contains(f) && !f.starts_with("user.overlay.redirect=") {
                out.push(format!("{}: unexpected encoding {f}", show(p)));
            }
        }
    }
    out
}

/// The child part of the namespace tests: the script on kernel overlayfs
/// (`userxattr`) and on strata, compared step by step, then the merged
/// views, the uppers, strata after a remount, and the round trip.
fn userns_child(dir: &Path, case: NsCase) {
    let since = since(dir);
    let kspec = spec(dir, "kernel", &["userxattr"]);
    let sspec = spec(dir, "strata", case.strata_options);
    let (k_upper, s_upper) = (
        kspec.upper.clone().unwrap().0,
        sspec.upper.clone().unwrap().0,
    );
    let lower_dirs: Vec<PathBuf> = {
        let k = KernelOverlay::mount(&MountSpec::new(layer_paths(dir)).with_option("userxattr"));
        let w = walk(k.path());
        w.iter()
            .filter(|(_, r)| r.kind == Kind::Dir)
            .map(|(p, _)| p.clone())
            .collect()
    };
    let kernel = KernelOverlay::mount(&kspec);
    let strata = StrataMount::mount(&sspec);
    let (k, s) = (kernel.path(), strata.path());
    let mut problems = Vec::new();

    // 1. step by step
    problems.extend(lockstep(k, s, SCRIPT, since));
    problems.extend(lockstep(k, s, USERNS_EXTRA, since));
    if case.renames {
        // The kernel with userxattr never writes redirects (EXDEV: mv
        // copies); strata writes user.overlay.redirect unless xattrs are
        // refused too. Either way the trees must end up the same.
        for (from, to) in [("ren3", "ren4"), ("opq", "dir/opq")] {
            let (want, got) = (mv(k, from, to), mv(s, from, to));
            if want != got {
                problems.push(format!("mv {from} {to}: kernel={want} strata={got}"));
            }
        }
        // A metadata-only copy-up on strata's side (metacopy=on), a whole
        // one on the kernel's; then the data follows on a write.
        // (data/big had a chmod, keep/y a utimens: metadata-only copies
        // on strata's side, with metacopy=on; keep/y gets its data now.)
        problems.extend(lockstep(
            k,
            s,
            &[
                Op::Append("keep/y", b"+"),
                Op::Read("keep/y"),
                Op::Read("data/big"),
                Op::Stat("data/big"),
            ],
            since,
        ));
    }
    // A copy-up needing a chown to an id outside the namespace's map (the
    // parent `usr`) fails on both (strata: EINVAL, as fuse-overlayfs;
    // kernel: EOVERFLOW) and leaves both uppers as they were.
    for (name, root, upper) in [("kernel", k, &k_upper), ("strata", s, &s_upper)] {
        let got = apply(root, &Op::Create("usr/local/new", 0o644, b""), since);
        if got.errno().is_none() {
            problems.push(format!(
                "{name}: copy-up of an unmapped owner's directory: {got}"
            ));
        }
        if upper.join("usr").exists() {
            problems.push(format!(
                "{name}: usr copied up, though its owner cannot be set"
            ));
        }
    }

    // 2. the merged views
    let want = walk_masked(k, since);
    let written = walk_masked(s, since);
    problems.extend(equivalence_problems("kernel", &want, "strata", &written));

    // 3. the uppers: normalised, then strata's encodings exactly
    let (ku, su) = (upper_walk(&k_upper), upper_walk(&s_upper));
    if trace() {
        for (name, u) in [("kernel", &ku), ("strata", &su)] {
            eprintln!("{name}'s upper:");
            for l in upper_listing(u) {
                eprintln!("    {l}");
            }
        }
    }
    // (With redirects and metadata-only files strata's upper holds less
    // than the kernel's copies: only its encodings are checked then.)
    if !case.renames || case.refuse == Refuse::Xattrs {
        let opaque_matters = |p: &Path| lower_dirs.iter().any(|d| d == p);
        problems.extend(upper_diff(
            "kernel",
            &ku,
            "strata",
            &su,
            since,
            &opaque_matters,
        ));
    }
    let (opaque_form, whiteout_form) = match case.refuse {
        Refuse::Nothing => ("user.overlay.opaque", "0/0 chardev"),
        Refuse::WhiteoutDevices => ("user.overlay.opaque", ".wh. file"),
        Refuse::Xattrs => (".wh..wh..opq", "0/0 chardev"),
    };
    problems.extend(
        encoding_problems(&su, opaque_form, whiteout_form)
            .into_iter()
            .map(|p| format!("strata's upper: {p}")),
    );
    for p in ["dir", "emptydir"] {
        if !su.get(Path::new(p)).is_some_and(|e| e.opaque) {
            problems.push(format!("strata's upper: /{p} is not opaque"));
        }
    }
    if case.renames {
        problems.extend(rename_encoding_problems(&s_upper, case.refuse));
    }

    // 4. strata again on its own upper
    drop(kernel);
    strata.unmount().unwrap();
    let again = StrataMount::mount(&sspec);
    problems.extend(
        equivalence_problems(
            "strata",
            &written,
            "strata after a remount",
            &walk_masked(again.path(), since),
        )
        .into_iter()
        .map(|p| format!("after a remount: {p}")),
    );
    again.unmount().unwrap();

    // 5. the round trip: strata's upper as the top lower layer, read by
    // the kernel where it can read the format (0/0 whiteouts and
    // user.overlay.opaque, no redirects or metacopy marks), else by strata.
    let mut lowers = vec![s_upper.clone()];
    lowers.extend(layer_paths(dir));
    let ro = MountSpec::new(lowers);
    let (reader, read) = if case.refuse == Refuse::Nothing && !case.renames {
        let m = KernelOverlay::mount(&ro.clone().with_option("userxattr"));
        ("kernel", walk_masked(m.path(), since))
    } else {
        let m = StrataMount::mount(&ro);
        ("strata", walk_masked(m.path(), since))
    };
    problems.extend(
        equivalence_problems("the writer", &written, reader, &read)
            .into_iter()
            .filter(|p| !p.contains(": nlink: "))
            .map(|p| format!("round trip through {reader}: {p}")),
    );
    let left: Vec<_> = fs::read_dir(dir.join("strata/work"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("#strata-tmp"))
        .collect();
    if !left.is_empty() {
        problems.push(format!("strata's workdir keeps {left:?}"));
    }
    assert_no_problems(
        "strata in a user namespace vs kernel overlayfs (userxattr)",
        &problems,
    );
}

/// Where directories were moved with `mv`: strata moved them with a
/// user.overlay.redirect (or, without xattrs, copied them as the kernel
/// did); chmod of a lower file (data/big) left a metadata-only copy
/// (user.overlay.metacopy, no blocks) unless xattrs are refused; a write
/// after a utimens (keep/y) brought the data and took the mark away.
fn rename_encoding_problems(upper: &Path, refuse: Refuse) -> Vec<String> {
    let mut out = Vec::new();
    let xattr = |rel: &str, name: &str| lgetxattr(&upper.join(rel), name).ok();
    let marks = refuse != Refuse::Xattrs;
    for (rel, want) in [("ren4", "ren3"), ("dir/opq", "/opq")] {
        let got = xattr(rel, "user.overlay.redirect");
        let want = marks.then(|| want.as_bytes().to_vec());
        if got != want {
            out.push(format!(
                "{rel}: user.overlay.redirect {got:?}, want {want:?}"
            ));
        }
        // Moved, not copied: the content stays below.
        let copied = fs::read_dir(upper.join(rel)).map_or(0, |d| d.count());
        if marks && copied != 0 {
            out.push(format!("{rel}: {copied} entries copied into the upper"));
        }
    }
    let big = fs::symlink_metadata(upper.join("data/big")).unwrap();
    let meta = xattr("data/big", "user.overlay.metacopy");
    if marks != meta.is_some() || (marks && big.blocks() != 0) {
        out.push(format!(
            "data/big: user.overlay.metacopy {meta:?}, {} blocks",
            big.blocks()
        ));
    }
    if xattr("keep/y", "user.overlay.metacopy").is_some() {
        out.push("keep/y: still metadata-only after a write".into());
    }
    for n in ["trusted.overlay.redirect", "trusted.overlay.metacopy"] {
        if xattr("ren4", n).is_some() || xattr("data/big", n).is_some() {
            out.push(format!("{n} written in a user namespace"));
        }
    }
    out
}

/// The parent of a namespace test: layers, the child part, then what only
/// root of the initial namespace can see (no trusted.* xattrs anywhere).
fn userns_test(name: &str, case: NsCase) {
    if case.refuse != Refuse::Nothing && !can_refuse() {
        eprintln!("{name}: skipped: no seccomp filter for this architecture");
        return;
    }
    let dir = prepare(None);
    let o = run_child(name, Context::UserNs, case.refuse, dir.path());
    assert_child_ok(name, &o);
    let trusted = trusted_xattrs(&dir.path().join("strata/upper"));
    assert!(
        trusted.is_empty(),
        "trusted xattrs in strata's upper: {trusted:?}"
    );
}

// ============================================================= userns: tests

const NS_PLAIN: NsCase = NsCase {
    refuse: Refuse::Nothing,
    strata_options: &[],
    renames: false,
};

/// The script as root of a user namespace: user.overlay.opaque, 0/0
/// whiteouts, the kernel's view and upper; the kernel reads strata's upper.
#[test]
fn userns_write_script() {
    if let Some(dir) = child_dir() {
        return userns_child(&dir, NS_PLAIN);
    }
    userns_test("userns_write_script", NS_PLAIN);
}

const NS_NO_DEVICES: NsCase = NsCase {
    refuse: Refuse::WhiteoutDevices,
    ..NS_PLAIN
};

/// The same where 0/0 devices cannot be made: `.wh.NAME` whiteouts.
#[test]
fn userns_write_script_without_whiteout_devices() {
    if let Some(dir) = child_dir() {
        return userns_child(&dir, NS_NO_DEVICES);
    }
    userns_test(
        "userns_write_script_without_whiteout_devices",
        NS_NO_DEVICES,
    );
}

const NS_RENAMES: NsCase = NsCase {
    refuse: Refuse::Nothing,
    strata_options: &["metacopy=on"],
    renames: true,
};

/// Directory renames (user.overlay.redirect) and metadata-only copy-ups
/// (user.overlay.metacopy): the kernel with userxattr does neither, so
/// only the views are compared, and strata reads its own upper back.
#[test]
fn userns_directory_renames_and_metacopy() {
    if let Some(dir) = child_dir() {
        return userns_child(&dir, NS_RENAMES);
    }
    userns_test("userns_directory_renames_and_metacopy", NS_RENAMES);
}

const NS_NO_XATTRS: NsCase = NsCase {
    refuse: Refuse::Xattrs,
    strata_options: &["metacopy=on"],
    renames: true,
};

/// Where no xattr can be stored: `.wh..wh..opq` markers, EXDEV for
/// directory renames (mv copies, as on the kernel's side), whole copies
/// where metacopy=on would leave metadata-only ones.
#[test]
fn userns_write_script_without_xattrs() {
    if let Some(dir) = child_dir() {
        return userns_child(&dir, NS_NO_XATTRS);
    }
    userns_test("userns_write_script_without_xattrs", NS_NO_XATTRS);
}

// ==================================================== unprivileged: the parts

/// What the user's script must return, step by step (the rest: Ok).
fn user_expected(op: &Op) -> Option<i32> {
    match op {
        Op::Stat("opq/hidden") | Op::Stat("gone") | Op::Stat("data/small") => Some(libc::ENOENT),
        _ => None,
    }
}

/// The child part as the user: the script with its expected outcomes,
/// copy-ups that need a chown the user may not make (refused, nothing
/// left behind), spot checks of the view; the view goes to `view.txt`.
fn user_child(dir: &Path) {
    let since = since(dir);
    let sspec = spec(dir, "strata", &[]);
    let upper = sspec.upper.clone().unwrap().0;
    let strata = StrataMount::mount(&sspec);
    let s = strata.path();
    let mut problems = Vec::new();
    for (i, op) in SCRIPT.iter().enumerate() {
        let got = apply(s, op, since);
        match (got.errno(), user_expected(op)) {
            (None, None) => {}
            (Some(e), Some(w)) if e == w => {}
            _ => problems.push(format!(
                "step #{i} {op}: {got}, want {:?}",
                user_expected(op)
            )),
        }
    }
    // Copy-ups of root's objects: the owner cannot be kept, so they fail
    // (EPERM, as with fuse-overlayfs) and the upper stays as it was.
    for op in [
        Op::Append("rootfile", b"x"),
        Op::Create("rootdir/sub/new", 0o644, b""),
    ] {
        let got = apply(s, &op, since);
        if got.errno() != Some(libc::EPERM) {
            problems.push(format!("{op}: {got}, want EPERM"));
        }
    }
    for rel in ["rootfile", "rootdir"] {
        if fs::symlink_metadata(upper.join(rel)).is_ok() {
            problems.push(format!("{rel} copied up without its owner"));
        }
    }
    let w = walk_masked(s, since);
    let names = |p: &str| w.get(Path::new(p)).and_then(|r| r.entries.clone());
    let want: [(&str, &[&str]); 4] = [
        ("dir", &["mvf2", "new"]),
        ("keep", &["x", "y"]),
        ("opq", &["top"]),
        ("emptydir", &[]),
    ];
    for (p, want) in want {
        let got = names(p).unwrap_or_default();
        if got
            != want
                .iter()
                .map(Into::into)
                .collect::<Vec<std::ffi::OsString>>()
        {
            problems.push(format!("/{p} lists {got:?}, want {want:?}"));
        }
    }
    for p in ["gone", "ren", "emptydir2", "keep/z", "mvf", "data/small"] {
        if w.contains_key(Path::new(p)) {
            problems.push(format!("/{p} is visible"));
        }
    }
    problems.extend(inode_rule_violations(&w));
    save_walk(&dir.join("view.txt"), &w);
    strata.unmount().unwrap();
    assert_no_problems("strata as an unprivileged user", &problems);
}

/// The parent of a user test: the child part, then the upper's encodings
/// (everything the user's, no trusted.*), and the round trip: strata's
/// upper as the top lower layer (read by kernel overlayfs with userxattr
/// where it can read the whiteouts, else by strata) shows the user's view.
fn user_test(name: &str, refuse: Refuse) {
    if refuse != Refuse::Nothing && !can_refuse() {
        eprintln!("{name}: skipped: no seccomp filter for this architecture");
        return;
    }
    let dir = prepare(Some(USER));
    let o = run_child(
        name,
        Context::User {
            uid: USER.0,
            gid: USER.1,
        },
        refuse,
        dir.path(),
    );
    assert_child_ok(name, &o);
    let upper = dir.path().join("strata/upper");
    let mut problems = Vec::new();
    let whiteout_form = match refuse {
        Refuse::WhiteoutDevices => ".wh. file",
        _ => "0/0 chardev",
    };
    let u = upper_walk(&upper);
    if trace() {
        eprintln!("{name}: strata's upper:");
        for l in upper_listing(&u) {
            eprintln!("    {l}");
        }
    }
    problems.extend(encoding_problems(&u, "user.overlay.opaque", whiteout_form));
    for (p, e) in &u {
        if (e.uid, e.gid) != USER && e.kind != UpperKind::Whiteout {
            problems.push(format!("{}: owned by {}:{}", show(p), e.uid, e.gid));
        }
    }
    problems.extend(
        trusted_xattrs(&upper)
            .into_iter()
            .map(|p| format!("trusted xattr {p}")),
    );
    let mut lowers = vec![upper.clone()];
    lowers.extend(layer_paths(dir.path()));
    let ro = MountSpec::new(lowers);
    let since = since(dir.path());
    let (reader, read) = if refuse == Refuse::Nothing {
        let m = KernelOverlay::mount(&ro.with_option("userxattr"));
        ("kernel", walk_masked(m.path(), since))
    } else {
        let m = StrataMount::mount(&ro);
        ("strata", walk_masked(m.path(), since))
    };
    let want = load_walk_lines(&dir.path().join("view.txt"));
    problems.extend(line_diff(
        "the user's view",
        &want,
        reader,
        &walk_lines(&read),
    ));
    assert_no_problems(&format!("{name}: strata as uid {}", USER.0), &problems);
}

// ======================================================= unprivileged: tests

/// The script as uid 1000 through fusermount3. This kernel (≥ 5.8) lets
/// anyone make 0/0 whiteouts, so strata does, as the kernel would.
#[test]
fn as_user_write_script() {
    if let Some(dir) = child_dir() {
        return user_child(&dir);
    }
    user_test("as_user_write_script", Refuse::Nothing);
}

/// The same where 0/0 devices are refused: `.wh.NAME` files hide the
/// lower names.
#[test]
fn as_user_write_script_without_whiteout_devices() {
    if let Some(dir) = child_dir() {
        return user_child(&dir);
    }
    user_test(
        "as_user_write_script_without_whiteout_devices",
        Refuse::WhiteoutDevices,
    );
}

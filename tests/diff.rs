//! `strata diff` round trips: lower layers built here, a writable strata
//! mount changed through its mount point, the merged tree recorded
//! (`common::walk`: type, mode, owner, size, link count, mtime, content
//! hash, symlink target, device numbers, the sorted names of every
//! directory, plus every xattr that is not internal, and which paths share
//! an inode), the mount taken down, `strata diff` run on the upper, and the
//! layer applied by an independent tool: umoci, over an OCI image layout
//! whose layers are the lower directories tarred by GNU tar, unpacked with
//! `umoci raw unpack`. The unpacked root file system must be the recorded
//! tree exactly.
//!
//! Scenarios:
//! - `round_trip_of_every_kind_of_change`: new files, directories,
//!   symlinks, a fifo, device nodes, long names and link targets (PAX),
//!   times before 1970, after 2242 (checked by extracting with GNU tar:
//!   umoci 0.4.7 unpacks times after 2038 as -2^31) and with nanoseconds,
//!   ids past ustar's
//!   octal fields, set-id bits, xattrs (user, trusted, binary values,
//!   removed ones); copy-up of lower files and directories; deleting lower
//!   files and directories; `rm -rf d; mkdir d` (opaque); a file over a
//!   lower directory and the reverse; directory renames (redirects) within
//!   a directory, into a new directory, and nested inside a renamed one,
//!   with changes inside; hard links: of a new file, of a lower file, a
//!   lower file with two names written (index), and a lower hard link
//!   reached through a renamed directory. Also: the output is the same
//!   byte for byte on every run and on stdout, GNU tar reads it without a
//!   complaint, and with redirect expansion or hard links switched off
//!   (debug builds' `STRATA_DIFF_FAULTS`) the round trip fails where it
//!   must.
//! - `round_trip_of_a_hand_made_upper`: an upper written without a mount
//!   in every encoding strata reads (0/0 devices and `.wh.` files, opaque
//!   xattrs in both namespaces and `.wh..wh..opq`, `.wh.NAME` next to
//!   NAME, a rootless `user.overlay.redirect`, a metadata-only file), the
//!   merged view read from a read-only mount with it as the top layer.
//! - `round_trip_of_metadata_only_copy_up`: `-o metacopy=on`; chmod, chown,
//!   utimens and setxattr of lower files leave metadata-only uppers (the
//!   test checks they are), then their directory renamed; the
//!   layer must carry their data (and fails without it).
//! - `round_trip_with_records_and_id_mapping`: `xattr_permissions=2` and
//!   `uidmapping=`/`gidmapping=`: owners and modes kept in
//!   `user.containers.override_stat` records, `security.capability` kept
//!   encoded; the tar must have the owners and modes the mount showed (and
//!   fails without the mapping options or without the records). Then
//!   regular files standing in for a device and a fifo in an unmarked
//!   upper, found only with `--xattr-permissions=2`.
//! - `bad_input_is_a_one_line_error`: missing or non-directory upper,
//!   missing layer, missing options, bad mapping, output into a
//!   directory, a terminal as stdout.
//!
//! Needs root, /dev/fuse, fusermount3, setfattr, GNU tar, umoci (`.ci/run`
//! installs it) and `script` (util-linux).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use tempfile::TempDir;

const TIMEOUT: Duration = Duration::from_secs(60);

// ================================================================= helpers

/// Runs a bash script (`set -e`) in `dir`; panics with its output if it fails.
fn bash(dir: &Path, script: &str) {
    let o = run_with_timeout(
        Command::new("bash")
            .arg("-c")
            .arg(format!("set -euo pipefail\n{script}"))
            .current_dir(dir)
            .env("LC_ALL", "C"),
        TIMEOUT,
    );
    assert!(o.success(), "script in {} failed: {o}", dir.display());
}

fn run(cmd: &mut Command) -> CmdOutput {
    run_with_timeout(cmd, TIMEOUT)
}

fn run_ok(cmd: &mut Command) -> CmdOutput {
    let o = run(cmd);
    assert!(o.success(), "{o}");
    o
}

/// Lower layers (top first) made by a script each, and their tars made by
/// GNU tar (bottom first, the order of an image's layers).
struct Lowers {
    dir: TempDir,
    layers: Vec<PathBuf>,
    tars: Vec<PathBuf>,
}

impl Lowers {
    /// `scripts` bottom first; each runs in its own empty layer directory.
    fn build(scripts: &[&str]) -> Lowers {
        let dir = tempdir();
        let mut layers = Vec::new();
        let mut tars = Vec::new();
        for (i, script) in scripts.iter().enumerate() {
            let layer = dir.path().join(format!("layer{i}"));
            fs::create_dir(&layer).unwrap();
            bash(&layer, script);
            let tar = dir.path().join(format!("layer{i}.tar"));
            run_ok(
                Command::new("tar")
                    .args([
                        "--format=posix",
                        "--xattrs",
                        "--xattrs-include=*",
                        "--numeric-owner",
                        "--sort=name",
                        "-C",
                    ])
                    .arg(&layer)
                    .arg("-cf")
                    .arg(&tar)
                    .arg("."),
            );
            layers.push(layer);
            tars.push(tar);
        }
        layers.reverse();
        Lowers { dir, layers, tars }
    }

    fn layers_arg(&self) -> String {
        self.layers
            .iter()
            .map(|p| p.to_str().unwrap().to_owned())
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// An OCI image layout holding the lower layers, tagged `base`.
struct Image {
    dir: TempDir,
    layout: PathBuf,
    tags: usize,
}

impl Image {
    fn new(lowers: &Lowers) -> Image {
        let dir = tempdir();
        let layout = dir.path().join("image");
        run_ok(
            Command::new("umoci")
                .arg("init")
                .arg("--layout")
                .arg(&layout),
        );
        let base = format!("{}:base", layout.display());
        run_ok(Command::new("umoci").args(["new", "--image", &base]));
        for tar in &lowers.tars {
            run_ok(
                Command::new("umoci")
                    .args(["raw", "add-layer", "--no-history", "--image", &base])
                    .arg(tar),
            );
        }
        Image {
            dir,
            layout,
            tags: 0,
        }
    }

    /// Adds `layer` over the lowers as a new tag and unpacks that image.
    fn apply(&mut self, layer: &Path) -> PathBuf {
        self.tags += 1;
        let tag = format!("t{}", self.tags);
        let base = format!("{}:base", self.layout.display());
        run_ok(
            Command::new("umoci")
                .args(["raw", "add-layer", "--no-history", "--image", &base])
                .args(["--tag", &tag])
                .arg(layer),
        );
        let rootfs = self.dir.path().join(format!("rootfs-{tag}"));
        run_ok(
            Command::new("umoci")
                .args(["raw", "unpack", "--image"])
                .arg(format!("{}:{tag}", self.layout.display()))
                .arg(&rootfs),
        );
        rootfs
    }
}

/// Every xattr name of `path` that is not internal, with its value.
fn all_xattrs(path: &Path) -> Vec<(String, String)> {
    let mut names = match llistxattr(path) {
        Ok(names) => names,
        Err(e) => return vec![("llistxattr".into(), e.to_string())],
    };
    names.retain(|n| !is_internal_xattr(n));
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let v = lgetxattr(path, &n)
                .map(|v| v.iter().map(|b| format!("{b:02x}")).collect::<String>())
                .unwrap_or_else(|e| format!("error {e}"));
            (n, v)
        })
        .collect()
}

/// The tree under `root` as the comparison sees it: `walk`, with every
/// xattr (not only `user.*`), and without what says nothing about the
/// tree: the size of directories (the file system's business).
fn view(root: &Path) -> Walk {
    let mut w = walk(root);
    for (rel, r) in w.iter_mut() {
        r.xattrs = all_xattrs(&root.join(rel));
        if r.kind == Kind::Dir {
            r.size = 0;
        }
    }
    w
}

/// Differences between the merged tree and the unpacked one.
fn problems(merged: &Walk, unpacked: &Walk) -> Vec<String> {
    let mut out = view_diff("mount", merged, "umoci", unpacked);
    out.extend(inode_class_diff("mount", merged, "umoci", unpacked));
    out
}

/// `strata diff ... -o OUT`, with `env` set.
fn strata_diff(
    lowers: &Lowers,
    upper: &Path,
    extra: &[&str],
    out: &Path,
    env: &[(&str, &str)],
) -> CmdOutput {
    let mut cmd = Command::new(strata_bin());
    cmd.args(["diff", "--layers", &lowers.layers_arg(), "--upper"])
        .arg(upper)
        .args(extra)
        .arg("-o")
        .arg(out);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = run(&mut cmd);
    assert!(o.success(), "{o}");
    assert!(o.stderr.is_empty(), "strata diff warned: {o}");
    o
}

/// Mounts `spec` with `options`, runs `changes` (bash in the mount point),
/// and records the merged view.
fn mounted_view(mut spec: MountSpec, options: &[&str], changes: Option<&str>) -> Walk {
    for o in options {
        spec = spec.with_option(o);
    }
    let mnt = StrataMount::mount(&spec);
    if let Some(changes) = changes {
        bash(mnt.path(), changes);
    }
    let merged = view(mnt.path());
    mnt.unmount().unwrap();
    merged
}

/// One scenario: lowers, a mount with `options`, changes made by
/// `changes` (bash in the mount point), then the merged view recorded.
struct Scenario {
    lowers: Lowers,
    upper: UpperWork,
    merged: Walk,
    image: Image,
}

impl Scenario {
    fn run(lowers: &[&str], options: &[&str], changes: &str) -> Scenario {
        let lowers = Lowers::build(lowers);
        let upper = UpperWork::new();
        let spec = MountSpec::new(lowers.layers.clone()).with_upper(&upper);
        let merged = mounted_view(spec, options, Some(changes));
        Scenario::new(lowers, upper, merged)
    }

    /// An upper made by `script` without a mount (any encoding of
    /// whiteouts, opaque directories and redirects), over `lowers`; the
    /// merged view is a read-only mount with the upper as its top layer.
    fn hand_made(lowers: &[&str], options: &[&str], script: &str) -> Scenario {
        let lowers = Lowers::build(lowers);
        let upper = UpperWork::new();
        bash(&upper.upper, script);
        let mut layers = vec![upper.upper.clone()];
        layers.extend(lowers.layers.iter().cloned());
        let merged = mounted_view(MountSpec::new(layers), options, None);
        Scenario::new(lowers, upper, merged)
    }

    fn new(lowers: Lowers, upper: UpperWork, merged: Walk) -> Scenario {
        let image = Image::new(&lowers);
        Scenario {
            lowers,
            upper,
            merged,
            image,
        }
    }

    /// The diff (with `extra` options and `env`) applied by umoci; the
    /// problems found.
    fn round_trip(&mut self, tag: &str, extra: &[&str], env: &[(&str, &str)]) -> Vec<String> {
        let tar = self.lowers.dir.path().join(format!("diff-{tag}.tar"));
        strata_diff(&self.lowers, &self.upper.upper, extra, &tar, env);
        let rootfs = self.image.apply(&tar);
        let mut unpacked = view(&rootfs);
        // umoci 0.4.7 unpacks times after 2038 as -2^31 (GNU tar does not):
        // that one is checked with GNU tar instead (`far_future_time`).
        let future = Path::new(FUTURE);
        if let (Some(want), Some(got)) = (self.merged.get(future), unpacked.get_mut(future))
            && got.mtime == (i32::MIN as i64, 0)
        {
            got.mtime = want.mtime;
        }
        problems(&self.merged, &unpacked)
    }

    fn entries(&self) -> usize {
        self.merged.len()
    }
}

const FUTURE: &str = "new/future";

/// The mtime GNU tar gives `member` of `tar` when it extracts it.
fn far_future_time(tar: &Path, member: &str) -> i64 {
    use std::os::unix::fs::MetadataExt;
    let dir = tempdir();
    run_ok(
        Command::new("tar")
            .arg("-C")
            .arg(dir.path())
            .arg("-xf")
            .arg(tar)
            .arg(member),
    );
    fs::symlink_metadata(dir.path().join(member))
        .unwrap()
        .mtime()
}

/// Names in a tar, as GNU tar lists them (checks it reads cleanly too).
fn tar_names(tar: &Path) -> Vec<String> {
    let o = run_ok(Command::new("tar").arg("-tf").arg(tar));
    assert!(o.stderr.is_empty(), "GNU tar complained: {o}");
    o.stdout.lines().map(str::to_owned).collect()
}

fn assert_fails_at(what: &str, problems: &[String], paths: &[&str]) {
    assert!(
        !problems.is_empty(),
        "{what}: the round trip did not notice"
    );
    for p in paths {
        assert!(
            problems.iter().any(|l| l.contains(p)),
            "{what}: no problem reported at {p}: {problems:#?}"
        );
    }
}

// =============================================================== scenarios

const BASE: &str = r#"
mkdir -p etc bin data/sub hard tree/sub/deeper outside doomed/g reborn owned xattr moveme/inner swap/dir opaque-lower
echo 'base config' > etc/config
echo 'root:x:0:0' > etc/passwd
printf '#!/bin/sh\necho tool\n' > bin/tool; chmod 0755 bin/tool
echo other > bin/other
head -c 300000 /dev/urandom > data/big.bin
echo keep > data/keep.txt
echo old > data/old.txt
echo in-sub > data/sub/file
echo shared > hard/a; ln hard/a hard/b
echo x > tree/x.txt; echo y > tree/sub/y.txt; echo z > tree/sub/deeper/z.txt
ln -s x.txt tree/sym
echo linked > tree/hl1; ln tree/hl1 outside/hl2
echo f > doomed/f; echo h > doomed/g/h
echo old1 > reborn/old1; echo old2 > reborn/old2
echo owned > owned/file; chown 1000:1000 owned/file
echo xa > xattr/file
setfattr -n user.keep -v 1 xattr/file
setfattr -n user.drop -v 2 xattr/file
setfattr -n trusted.lower -v 3 xattr/file
echo inner > moveme/inner/file
echo d > swap/dir/file; echo f > swap/file
echo hidden > opaque-lower/hidden
touch -d @1500000000.5 etc/config data/keep.txt tree/x.txt
"#;

const MID: &str = r#"
mkdir -p etc data tree opaque-lower
echo 'mid config' > etc/config
: > data/.wh.old.txt
echo mid > tree/mid.txt
: > opaque-lower/.wh..wh..opq
echo visible > opaque-lower/visible
"#;

const TOP: &str = r#"
mkdir -p tree/sub
echo top > top.txt
echo top > tree/sub/top.txt
"#;

const LONG_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

fn changes() -> String {
    let long_name = "n".repeat(150);
    let long_target = format!("/{}", "t".repeat(149));
    format!(
        r#"
# new things
mkdir new; chmod 0750 new; chown 123:456 new
echo 'new file' > new/file.txt
: > new/empty
truncate -s 3M new/sparse; printf 'mid' | dd of=new/sparse bs=1 seek=1500000 conv=notrunc status=none
ln new/file.txt new/file-link.txt
ln -s ../etc/config new/sym
ln -s {long_target} new/long-sym
mkfifo new/fifo
echo future > new/future
mknod new/null c 1 3
mknod new/loop b 7 0
echo long > {long_name}
mkdir -p new/{LONG_A}/{LONG_A}
echo deep > new/{LONG_A}/{LONG_A}/file
ln new/{LONG_A}/{LONG_A}/file new/deep-link
echo utf8 > 'new/ünïcödé'
echo bytes > $'new/raw\xff\xfe'
echo long-bytes > $'new/{long_name}\xff'
setfattr -n user.new -v value new/file.txt
setfattr -n user.bin -v 0x00ff0102 new/empty
setfattr -n user.root -v r .
chmod 0751 .
# copy-up of lower files and directories
echo appended >> etc/config
chmod 4755 bin/tool
chown 1234:5678 data/keep.txt
chown 3000000:3000001 owned/file
setfattr -x user.drop xattr/file
setfattr -n user.keep -v changed xattr/file
setfattr -n trusted.added -v t xattr/file
chmod 0700 etc
# deletions
rm etc/passwd
rm -rf doomed
rm -rf reborn; mkdir reborn; echo new1 > reborn/new1
rm -rf swap/dir; echo now-a-file > swap/dir
rm swap/file; mkdir swap/file; echo inside > swap/file/inside
# renames (redirects)
mv tree renamed
echo changed >> renamed/x.txt
echo added > renamed/added
mv renamed/sub renamed/sub2
echo deeper-change >> renamed/sub2/deeper/z.txt
mv data/sub data/sub-renamed
mv moveme/inner new/inner2
# hard links
ln bin/other bin/other.link
echo written >> hard/a
# times last
touch -d @1234567890.123456789 new/file.txt
touch -h -d @1234567891.5 new/sym
touch -d @-1000000.25 new/empty
touch -d @10000000000 new/future
"#
    )
}

#[test]
fn round_trip_of_every_kind_of_change() {
    let start = Instant::now();
    let mut s = Scenario::run(&[BASE, MID, TOP], &[], &changes());
    let problems = s.round_trip("full", &[], &[]);
    assert_no_problems("strata diff applied by umoci", &problems);

    // The scenario reached what it is about.
    let m = &s.merged;
    let at = |p: &str| {
        m.get(Path::new(p))
            .unwrap_or_else(|| panic!("{p} not in the merged tree"))
    };
    assert!(!m.contains_key(Path::new("tree")) && !m.contains_key(Path::new("doomed")));
    assert_eq!(at("renamed/sub2/deeper/z.txt").size, 16);
    assert_eq!(
        at("renamed/hl1").nlink,
        Some(2),
        "lower link through a redirect"
    );
    assert_eq!(at("hard/b").nlink, Some(2));
    assert_eq!(at("new/file.txt").mtime, (1234567890, 123456789));
    assert_eq!(at("new/empty").mtime, (-1000001, 750_000_000));
    assert_eq!(at("owned/file").uid, 3000000);
    assert!(!m.contains_key(Path::new("reborn/old1")));
    let upper = &s.upper.upper;
    let redirect = |p: &str| lgetxattr(&upper.join(p), "trusted.overlay.redirect").is_ok();
    for dir in ["renamed", "renamed/sub2", "data/sub-renamed", "new/inner2"] {
        assert!(redirect(dir), "{dir} has no redirect in the upper");
    }

    // The same bytes on every run, on stdout too; GNU tar reads it.
    let tar = s.lowers.dir.path().join("diff-full.tar");
    let again = s.lowers.dir.path().join("again.tar");
    strata_diff(&s.lowers, upper, &[], &again, &[]);
    let bytes = fs::read(&tar).unwrap();
    assert_eq!(bytes, fs::read(&again).unwrap(), "not reproducible");
    let stdout = Command::new(strata_bin())
        .args(["diff", "--layers", &s.lowers.layers_arg(), "--upper"])
        .arg(upper)
        .output()
        .unwrap();
    assert!(stdout.status.success());
    assert_eq!(stdout.stdout, bytes, "stdout differs from -o");
    let names = tar_names(&tar);
    for want in [
        "./",
        ".wh.tree",
        "renamed/",
        "renamed/.wh..wh..opq",
        "renamed/sub2/deeper/z.txt",
        "reborn/.wh..wh..opq",
        "etc/.wh.passwd",
        "data/.wh.sub",
        "swap/file/.wh..wh..opq",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:#?}");
    }
    let members = names.len();
    assert_eq!(far_future_time(&tar, FUTURE), 10_000_000_000);

    // Each feature switched off is noticed.
    let no_redirects = s.round_trip(
        "no-redirects",
        &[],
        &[("STRATA_DIFF_FAULTS", "no-redirects")],
    );
    assert_fails_at(
        "without redirect expansion",
        &no_redirects,
        &[
            "/renamed/mid.txt",
            "/renamed/sub2/y.txt",
            "/data/sub-renamed/file",
            "/new/inner2/file",
        ],
    );
    let no_links = s.round_trip(
        "no-hardlinks",
        &[],
        &[("STRATA_DIFF_FAULTS", "no-hardlinks")],
    );
    assert_fails_at(
        "without hard links",
        &no_links,
        &["/new/file-link.txt", "/hard/b", "/renamed/hl1"],
    );
    eprintln!(
        "round trip: {} merged entries, {members} tar members, {} bytes, 3 unpacks in {:?}",
        s.entries(),
        bytes.len(),
        start.elapsed()
    );
}

#[test]
fn round_trip_of_a_hand_made_upper() {
    // Every encoding strata reads: 0/0 devices and `.wh.` files, opaque
    // xattrs (trusted and user) and markers, `.wh.NAME` next to NAME, a
    // rootless redirect, a metadata-only file, a hard link.
    let upper = r#"
mkdir etc bin reborn doomed swap tree moved data hl
: > etc/.wh.passwd
echo 'upper config' > etc/config
mknod bin/tool c 0 0
setfattr -n user.overlay.opaque -v y reborn; echo new > reborn/new
: > doomed/.wh..wh..opq; echo kept > doomed/kept
: > .wh.swap; echo inside > swap/inside
mknod tree/sub c 0 0
setfattr -n user.overlay.redirect -v /tree/sub moved; echo added > moved/added
setfattr -n trusted.overlay.opaque -v y hl
echo one > hl/a; ln hl/a hl/b
truncate -s 300000 data/big.bin; chmod 0600 data/big.bin
setfattr -n trusted.overlay.metacopy data/big.bin
"#;
    let start = Instant::now();
    let mut s = Scenario::hand_made(&[BASE, MID, TOP], &[], upper);
    let problems = s.round_trip("hand-made", &[], &[]);
    assert_no_problems("hand-made upper", &problems);
    let m = &s.merged;
    for gone in [
        "etc/passwd",
        "bin/tool",
        "reborn/old1",
        "doomed/f",
        "swap/file",
        "tree/sub",
    ] {
        assert!(!m.contains_key(Path::new(gone)), "{gone} is visible");
    }
    for here in [
        "moved/y.txt",
        "moved/deeper/z.txt",
        "moved/top.txt",
        "moved/added",
    ] {
        assert!(m.contains_key(Path::new(here)), "{here} is not visible");
    }
    let no_redirects = s.round_trip(
        "hand-no-redirects",
        &[],
        &[("STRATA_DIFF_FAULTS", "no-redirects")],
    );
    assert_fails_at(
        "without redirect expansion",
        &no_redirects,
        &["/moved/y.txt"],
    );
    let no_data = s.round_trip(
        "hand-no-metacopy",
        &[],
        &[("STRATA_DIFF_FAULTS", "no-metacopy")],
    );
    assert_fails_at(
        "without metacopy data",
        &no_data,
        &["/data/big.bin: content"],
    );
    eprintln!(
        "hand-made: {} merged entries, 3 unpacks in {:?}",
        s.entries(),
        start.elapsed()
    );
}

#[test]
fn round_trip_of_metadata_only_copy_up() {
    let base = r#"
mkdir meta
for f in chmod chown touch xattr moved; do head -c 200000 /dev/urandom > meta/$f.bin; done
"#;
    let changes = r#"
chmod 0600 meta/chmod.bin
chown 42:43 meta/chown.bin
touch -c -d @1400000000.25 meta/touch.bin
setfattr -n user.m -v 1 meta/xattr.bin
chmod 0640 meta/moved.bin
mv meta metadir
"#;
    let start = Instant::now();
    let mut s = Scenario::run(&[base], &["metacopy=on"], changes);
    // The upper files are metadata only: a size, no blocks, the mark.
    for f in ["chmod", "chown", "touch", "xattr", "moved"] {
        let p = s.upper.upper.join(format!("metadir/{f}.bin"));
        let md = fs::symlink_metadata(&p).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            (md.size(), md.blocks()),
            (200000, 0),
            "{f}: not metadata-only"
        );
        assert!(
            lgetxattr(&p, "trusted.overlay.metacopy").is_ok(),
            "{f}: no mark"
        );
    }
    let problems = s.round_trip("metacopy", &[], &[]);
    assert_no_problems("metacopy round trip", &problems);
    let without = s.round_trip("no-metacopy", &[], &[("STRATA_DIFF_FAULTS", "no-metacopy")]);
    assert_fails_at(
        "without the data of metadata-only files",
        &without,
        &["/metadir/chmod.bin: content", "/metadir/moved.bin: content"],
    );
    eprintln!(
        "metacopy: {} merged entries, 2 unpacks in {:?}",
        s.entries(),
        start.elapsed()
    );
}

#[test]
fn round_trip_with_records_and_id_mapping() {
    // Stored ids 0..999 are shown as themselves, 1000..1999 as 101000...
    let map = "0:0:1000:1000:101000:1000";
    let base = r#"
mkdir -p data dir
echo keep > data/keep.txt
echo mode > data/mode.txt
echo cap > data/cap
chown 7:8 data/mode.txt
"#;
    // v2 file capability: effective, CAP_NET_BIND_SERVICE permitted.
    let changes = r#"
chown 101005:101006 data/keep.txt
chmod 0640 data/mode.txt
echo new > data/new.txt; chown 101010:5 data/new.txt; chmod 0604 data/new.txt
mkdir newdir; chown 101001:101002 newdir; chmod 0710 newdir
setfattr -n security.capability -v 0x0100000200040000000000000000000000000000 data/cap
"#;
    let options = [
        "xattr_permissions=2".to_owned(),
        format!("uidmapping={map}"),
        format!("gidmapping={map}"),
    ];
    let options: Vec<&str> = options.iter().map(String::as_str).collect();
    let start = Instant::now();
    let mut s = Scenario::run(&[base], &options, changes);
    let keep = &s.merged[Path::new("data/keep.txt")];
    assert_eq!((keep.uid, keep.gid), (101005, 101006));
    // The owners are in records: the upper's inodes are still root's.
    let up = s.upper.upper.join("data/keep.txt");
    assert_eq!(
        lgetxattr(&up, "user.containers.override_stat").unwrap(),
        b"1005:1006:0644"
    );
    assert!(lgetxattr(&s.upper.upper.join("data/cap"), "security.capability").is_err());
    let cap = &s.merged[Path::new("data/cap")];
    assert!(cap.xattrs.iter().any(|(n, _)| n == "security.capability"));

    let uid = format!("--uidmapping={map}");
    let gid = format!("--gidmapping={map}");
    let with = [uid.as_str(), gid.as_str(), "--xattr-permissions=2"];
    let problems = s.round_trip("mapped", &with, &[]);
    assert_no_problems("records and id mapping", &problems);
    // The upper's root is marked: the records are found without the option.
    let problems = s.round_trip("marked", &with[..2], &[]);
    assert_no_problems("records found by the upper's mark", &problems);
    let unmapped = s.round_trip("unmapped", &[], &[]);
    assert_fails_at(
        "without the id mapping",
        &unmapped,
        &["/data/keep.txt: uid", "/newdir: gid"],
    );
    let no_records = s.round_trip("no-records", &with, &[("STRATA_DIFF_FAULTS", "no-records")]);
    assert_fails_at(
        "without the records",
        &no_records,
        &[
            "/data/keep.txt: uid",
            "/data/mode.txt: mode",
            "/newdir: mode",
        ],
    );

    // Regular files standing in for a device and a fifo (containers-storage
    // makes them where it cannot make the real thing), in an upper whose
    // root carries no mark: only `--xattr-permissions=2` finds them.
    let standins = r#"
mkdir data
: > data/chr; setfattr -n user.containers.override_stat -v 0:5:0620:char-4-64 data/chr
: > data/fifo; setfattr -n user.containers.override_stat -v 1:2:0640:pipe data/fifo
echo x > data/owned; setfattr -n user.containers.override_stat -v 1005:7:0600 data/owned
"#;
    let mut h = Scenario::hand_made(&[base], &["xattr_permissions=2"], standins);
    assert_eq!(h.merged[Path::new("data/chr")].kind, Kind::CharDev);
    assert_eq!(h.merged[Path::new("data/fifo")].kind, Kind::Fifo);
    let problems = h.round_trip("standins", &["--xattr-permissions=2"], &[]);
    assert_no_problems("stand-ins", &problems);
    let unmarked = h.round_trip("standins-unmarked", &[], &[]);
    assert_fails_at(
        "without --xattr-permissions",
        &unmarked,
        &["/data/chr: type", "/data/fifo: type", "/data/owned: uid"],
    );
    eprintln!(
        "records: {} + {} merged entries, 6 unpacks in {:?}",
        s.entries(),
        h.entries(),
        start.elapsed()
    );
}

#[test]
fn bad_input_is_a_one_line_error() {
    let dir = tempdir();
    let d = dir.path();
    fs::create_dir(d.join("lower")).unwrap();
    fs::create_dir(d.join("upper")).unwrap();
    fs::write(d.join("file"), b"x").unwrap();
    let s = |p: &str| d.join(p).to_str().unwrap().to_owned();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--layers".into(),
                s("lower"),
                "--upper".into(),
                s("missing"),
            ],
            "No such file or directory",
        ),
        (
            vec!["--layers".into(), s("lower"), "--upper".into(), s("file")],
            "Not a directory",
        ),
        (
            vec![
                "--layers".into(),
                s("missing"),
                "--upper".into(),
                s("upper"),
            ],
            "No such file or directory",
        ),
        (vec!["--layers".into(), s("lower")], "--upper"),
        (vec!["--upper".into(), s("upper")], "--layers"),
        (
            vec![
                "--layers".into(),
                s("lower"),
                "--upper".into(),
                s("upper"),
                "--uidmapping=0:1".into(),
            ],
            "uidmapping",
        ),
        (
            vec![
                "--layers".into(),
                s("lower"),
                "--upper".into(),
                s("upper"),
                "-o".into(),
                s("lower"),
            ],
            "Is a directory",
        ),
        (vec!["--bogus".into()], "--bogus"),
    ];
    for (args, want) in &cases {
        let o = run(Command::new(strata_bin()).arg("diff").args(args));
        assert!(!o.success() && o.status.is_some(), "{o}");
        let err = o.stderr.trim_end();
        assert!(
            err.starts_with("strata diff: ") && !err.contains('\n') && err.contains(want),
            "{args:?}: want one line mentioning {want:?}: {o}"
        );
        assert!(o.stdout.is_empty(), "{o}");
    }
    // Nothing written to a terminal.
    let cmd = format!(
        "{} diff --layers {} --upper {}",
        strata_bin().display(),
        s("lower"),
        s("upper")
    );
    let o = run(Command::new("script").args(["-qec", &cmd, "/dev/null"]));
    assert!(!o.success(), "{o}");
    assert!(
        o.stdout
            .contains("refusing to write a tar archive to a terminal"),
        "{o}"
    );
    assert!(!o.stdout.contains("ustar"), "{o}");
}

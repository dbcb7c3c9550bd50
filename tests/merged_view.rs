//! Differential tests of strata's merged view against kernel overlayfs.
//!
//! The reference is always kernel overlayfs over the kernel-format twin of
//! the fixture (char-device whiteouts, trusted.overlay.opaque); strata is
//! mounted over either twin. Needs root, /dev/fuse and overlayfs.
//! `STRATA_BIN=/path/to/binary` runs the same tests against another program
//! with the same command line (e.g. fuse-overlayfs).
//!
//! Things kernel and strata may legitimately report differently, and which
//! are therefore never compared raw: st_dev (an anonymous device for each
//! mount), st_ino / d_ino numbers (only which paths share an inode is
//! compared, plus d_ino == st_ino on each mount), st_nlink of directories
//! (the kernel says 1 for merged directories), atime/ctime.

mod common;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use common::*;

fn label(form: Form) -> String {
    format!("strata({})", form.dir_name())
}

fn compare_with_kernel(kernel: &Walk, form: Form, got: &Walk) -> Vec<String> {
    let mut problems = equivalence_problems("kernel", kernel, &label(form), got);
    problems.extend(
        expected_tree_problems(got)
            .into_iter()
            .map(|p| format!("[{}] {p}", label(form))),
    );
    problems
}

fn kernel_reference(prepared: &Path) -> (KernelOverlay, Walk) {
    let k = KernelOverlay::mount(&MountSpec::fixture(prepared, Form::Kernel));
    let w = walk(k.path());
    assert_no_problems(
        "kernel overlay: fixture tree not as expected",
        &expected_tree_problems(&w),
    );
    assert_no_problems("kernel overlay: inode rules", &inode_rule_violations(&w));
    (k, w)
}

// ------------------------------------------------------------- sanity checks

/// The reference against itself: two kernel mounts of the kernel twin agree
/// on everything, raw inode numbers included (all layers are on one file
/// system, so overlayfs passes the real st_ino through). Also validates the
/// fixture, the prepare script and the walk/compare code.
#[test]
fn kernel_vs_kernel_sanity() {
    let fx = prepare_fixture();
    let (_a, wa) = kernel_reference(fx.path());
    let (_b, wb) = kernel_reference(fx.path());
    assert_equivalent("kernel#1", &wa, "kernel#2", &wb);
    assert_no_problems(
        "kernel#1 vs kernel#2 raw inodes",
        &raw_inode_diff("kernel#1", &wa, "kernel#2", &wb),
    );
    // A fixture walk that reaches into every corner of the tree.
    assert!(wa.len() > 80, "walk found only {} entries", wa.len());
}

/// The comparison is not vacuous: dropping the top layer must show up.
#[test]
fn harness_detects_differences() {
    let fx = prepare_fixture();
    let (_full, want) = kernel_reference(fx.path());
    let lowers = layer_dirs(fx.path(), Form::Kernel);
    let partial = KernelOverlay::mount(&MountSpec::new(lowers[1..].to_vec()));
    let got = walk(partial.path());
    let problems = equivalence_problems("app:update:base", &want, "update:base", &got);
    for needle in [
        "/usr/bin/app: only on app:update:base",
        "/merged/b.txt: content",
        "/merged/b.txt: mtime",
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(needle)),
            "no {needle:?} in {problems:#?}"
        );
    }
    assert!(!expected_tree_problems(&got).is_empty());
}

// ------------------------------------------------- 1-3: whole-tree equality

/// Case 1: Read-only: lowerdirs only, strata over the kernel twin.
/// (The kernel refuses a single lowerdir without an upperdir: "at least 2
/// lowerdir are needed while upperdir nonexistent"; see `single_lowerdir`.)
#[test]
fn ro_kernel_form() {
    ro_case(Form::Kernel);
}

/// Case 2: Read-only, strata over the OCI form (.wh. files) against the kernel
/// over the kernel twin.
#[test]
fn ro_oci_form() {
    ro_case(Form::Oci);
}

fn ro_case(form: Form) {
    let fx = prepare_fixture();
    let (_kernel, want) = kernel_reference(fx.path());
    let strata = StrataMount::mount(&MountSpec::fixture(fx.path(), form));
    let got = walk(strata.path());
    assert_no_problems(
        &format!("{} vs kernel", label(form)),
        &compare_with_kernel(&want, form, &got),
    );
}

/// Case 3: With an empty upperdir + workdir (same file system) on both sides.
/// The two upper dirs get identical attributes (they are the merged root).
#[test]
fn with_empty_upper_kernel_form() {
    upper_case(Form::Kernel);
}

#[test]
fn with_empty_upper_oci_form() {
    upper_case(Form::Oci);
}

fn upper_case(form: Form) {
    let fx = prepare_fixture();
    let (ku, su) = (UpperWork::new(), UpperWork::new());
    let kernel = KernelOverlay::mount(&MountSpec::fixture(fx.path(), Form::Kernel).with_upper(&ku));
    let strata = StrataMount::mount(&MountSpec::fixture(fx.path(), form).with_upper(&su));
    let want = walk(kernel.path());
    assert_no_problems("kernel+upper: fixture tree", &expected_tree_problems(&want));
    let got = walk(strata.path());
    let mut problems = compare_with_kernel(&want, form, &got);
    // Looking (lstat, readdir, read, getxattr) must not copy anything up.
    for (who, uw) in [("kernel", &ku), (label(form).as_str(), &su)] {
        let left: Vec<_> = fs::read_dir(&uw.upper)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        if !left.is_empty() {
            problems.push(format!(
                "{who}: read-only walk wrote into the upper dir: {left:?}"
            ));
        }
    }
    assert_no_problems(
        &format!("{} with upper vs kernel with upper", label(form)),
        &problems,
    );
}

/// One lowerdir and nothing else. The kernel refuses that, so its reference
/// stacks an empty directory below base (the root's attributes still come
/// from base, the topmost layer).
#[test]
fn single_lowerdir() {
    let fx = prepare_fixture();
    let empty = tempdir();
    let base = |form| layer_dirs(fx.path(), form)[2].clone();
    let kernel = KernelOverlay::mount(&MountSpec::new(vec![
        base(Form::Kernel),
        empty.path().to_path_buf(),
    ]));
    let want = walk(kernel.path());
    assert!(
        want.contains_key(Path::new("usr/bin/[")),
        "base alone still has usr/bin/["
    );
    let strata = StrataMount::mount(&MountSpec::new(vec![base(Form::Oci)]));
    let got = walk(strata.path());
    assert_equivalent("kernel(base:empty)", &want, "strata(base)", &got);
}

// ---------------------------------------------------- 4: stable inode numbers

/// Case 4: Remounting the same layers gives every path the same raw st_ino (and
/// d_ino): strata's inode numbers are stable across mounts.
#[test]
fn remount_keeps_inode_numbers() {
    let fx = prepare_fixture();
    let mut problems = Vec::new();
    for form in Form::ALL {
        let spec = MountSpec::fixture(fx.path(), form);
        let tag = label(form);
        let first = {
            let m = StrataMount::mount(&spec);
            let w = walk(m.path());
            if let Err(e) = m.unmount() {
                problems.push(format!("{tag}: unclean unmount: {e}"));
            }
            w
        };
        let m = StrataMount::mount(&spec);
        let second = walk(m.path());
        let mut found = view_diff("mount#1", &first, "mount#2", &second);
        found.extend(raw_inode_diff("mount#1", &first, "mount#2", &second));
        problems.extend(found.into_iter().map(|p| format!("{tag}: {p}")));
    }
    assert_no_problems("remount: view or inode numbers changed", &problems);
}

/// A hard link looked up first on a fresh mount already has the full
/// st_nlink (the reference reports the lower file's st_nlink, whether or not
/// the other links were looked up, or are even visible).
#[test]
fn nlink_of_hard_links_on_first_lookup() {
    let fx = prepare_fixture();
    let kernel = KernelOverlay::mount(&MountSpec::fixture(fx.path(), Form::Kernel));
    let mut problems = Vec::new();
    for form in Form::ALL {
        let strata = StrataMount::mount(&MountSpec::fixture(fx.path(), form));
        for (who, root) in [
            ("kernel", kernel.path()),
            (label(form).as_str(), strata.path()),
        ] {
            for (rel, want) in [("usr/share/other/data3", 3), ("usr/bin/test", 2)] {
                match fs::symlink_metadata(root.join(rel)) {
                    Ok(md) if md.nlink() == want => {}
                    Ok(md) => problems.push(format!(
                        "{who}: /{rel}: nlink {} on first lookup, want {want}",
                        md.nlink()
                    )),
                    Err(e) => problems.push(format!("{who}: /{rel}: {e}")),
                }
            }
        }
    }
    assert_no_problems("nlink on first lookup", &problems);
}

// ------------------------------------------ 5: read, readlink and xattrs

fn read_in_chunks(path: &Path, chunk: usize) -> std::io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; chunk];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

/// Case 5: File contents through plain read(2) (odd chunk sizes, pread at odd
/// offsets), readlink, getxattr of user.* attributes, and internal overlay
/// attributes set on lower files never showing through strata.
#[test]
fn file_contents_symlinks_and_xattrs() {
    let fx = prepare_fixture();
    // The lower files really carry the internal attributes (else this test
    // would prove nothing).
    for form in Form::ALL {
        let passwd = fx.path().join(form.dir_name()).join("base/etc/passwd");
        for name in [
            "user.overlay.foo",
            "user.fuseoverlayfs.bar",
            "trusted.overlay.foo",
        ] {
            assert_eq!(
                lgetxattr(&passwd, name).unwrap(),
                b"internal",
                "{name} on {}",
                passwd.display()
            );
        }
    }
    let opaque = fx.path().join("kernel/update/opaque-me");
    assert_eq!(lgetxattr(&opaque, "trusted.overlay.opaque").unwrap(), b"y");

    let (kernel, want) = kernel_reference(fx.path());
    // The reference hides trusted.overlay.* too (it shows user.overlay.* in
    // its default mode, which strata must not: see is_internal_xattr).
    assert_eq!(
        errno(&lgetxattr(
            &kernel.path().join("etc/passwd"),
            "trusted.overlay.foo"
        )),
        Some(libc::ENODATA)
    );
    assert_eq!(
        errno(&lgetxattr(
            &kernel.path().join("opaque-me"),
            "trusted.overlay.opaque"
        )),
        Some(libc::ENODATA)
    );

    let mut problems = Vec::new();
    for form in Form::ALL {
        let strata = StrataMount::mount(&MountSpec::fixture(fx.path(), form));
        let (k, s) = (kernel.path(), strata.path());
        let first = problems.len();
        let mut files = 0;
        for (rel, r) in &want {
            let (kp, sp) = (k.join(rel), s.join(rel));
            match r.kind {
                Kind::File => {
                    files += 1;
                    let expected = fs::read(&kp).unwrap();
                    for chunk in [1usize << 20, 4093, 1] {
                        if chunk == 1 && expected.len() > 4096 {
                            continue; // byte-by-byte only for the small ones
                        }
                        match read_in_chunks(&sp, chunk) {
                            Ok(got) if got == expected => {}
                            Ok(got) => problems.push(format!(
                                "{}: read({chunk}) got {} bytes, want {}, first difference at {}",
                                show(rel),
                                got.len(),
                                expected.len(),
                                first_difference(&got, &expected)
                            )),
                            Err(e) => problems.push(format!("{}: read({chunk}): {e}", show(rel))),
                        }
                    }
                    if expected.len() > 65536 {
                        let f = File::open(&sp).unwrap();
                        let len = expected.len() as u64;
                        for off in [0, 1, 4095, 4096, 65535, 131_079, len - 1, len, len + 100] {
                            let mut buf = vec![0u8; 5000];
                            match f.read_at(&mut buf, off) {
                                Ok(n) => {
                                    let lo = (off as usize).min(expected.len());
                                    let hi = (lo + 5000).min(expected.len());
                                    if buf[..n] != expected[lo..hi] {
                                        problems.push(format!(
                                            "{}: pread(5000, {off}) returned wrong bytes ({n})",
                                            show(rel)
                                        ));
                                    }
                                }
                                Err(e) => {
                                    problems.push(format!("{}: pread at {off}: {e}", show(rel)))
                                }
                            }
                        }
                    }
                }
                Kind::Symlink => {
                    let (want_t, got_t) = (fs::read_link(&kp).unwrap(), fs::read_link(&sp));
                    if got_t.as_ref().ok() != Some(&want_t) {
                        problems.push(format!(
                            "{}: readlink {got_t:?}, want {want_t:?}",
                            show(rel)
                        ));
                    }
                }
                _ => {}
            }
            match llistxattr(&sp) {
                Ok(names) => {
                    for n in names.iter().filter(|n| is_internal_xattr(n)) {
                        problems.push(format!("{}: listxattr shows internal {n}", show(rel)));
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
                Err(e) => problems.push(format!("{}: listxattr: {e}", show(rel))),
            }
        }
        assert!(files > 20, "only {files} files read");
        for (rel, name, value) in [
            ("usr/bin/app", "user.fixture.test", &b"hello-from-app"[..]),
            ("usr/share/app", "user.fixture.dir", b"on-a-directory"),
            ("etc/os-release", "user.fixture.layer", b"base"),
            ("etc/passwd", "user.fixture.keep", b"visible"),
        ] {
            match lgetxattr(&s.join(rel), name) {
                Ok(v) if v == value => {}
                other => problems.push(format!(
                    "/{rel}: getxattr {name} = {:?}, want {:?}",
                    other.map(|v| String::from_utf8_lossy(&v).into_owned()),
                    String::from_utf8_lossy(value)
                )),
            }
        }
        for (rel, name) in [
            ("etc/passwd", "user.overlay.foo"),
            ("etc/passwd", "user.fuseoverlayfs.bar"),
            ("etc/passwd", "user.containers.baz"),
            ("etc/passwd", "user.strata.qux"),
            ("etc/passwd", "trusted.overlay.foo"),
            ("etc/ssl", "trusted.overlay.opaque"),
            ("opaque-me", "trusted.overlay.opaque"),
            ("usr/bin/app", "user.fixture.no-such-attribute"),
        ] {
            let r = lgetxattr(&s.join(rel), name);
            if errno(&r) != Some(libc::ENODATA) {
                let r = r.map(|v| String::from_utf8_lossy(&v).into_owned());
                problems.push(format!("/{rel}: getxattr {name} = {r:?}, want ENODATA"));
            }
        }
        for p in &mut problems[first..] {
            *p = format!("{}: {p}", label(form));
        }
    }
    assert_no_problems("contents/symlinks/xattrs", &problems);
}

// ------------------------------------------------ 6: a large merged directory

const BIG: &str = "big";

/// Two layers [top, bottom] with `big/` holding 3000 files each, 1500 of
/// them in both, plus 300 whiteouts in top for names only in bottom, and a
/// subdirectory in both. Returns the layers and the expected listing.
fn make_big_dir_layers(root: &Path, form: Form) -> (Vec<PathBuf>, BTreeSet<OsString>) {
    let (top, bottom) = (root.join("top"), root.join("bottom"));
    let name = |i: usize| format!("entry-{i:05}");
    fs::create_dir_all(bottom.join(BIG).join("sub")).unwrap();
    fs::create_dir_all(top.join(BIG).join("sub")).unwrap();
    for i in 0..3000 {
        fs::write(bottom.join(BIG).join(name(i)), b"bottom").unwrap();
    }
    for i in 1500..4500 {
        fs::write(top.join(BIG).join(name(i)), b"top").unwrap();
    }
    for i in 0..300 {
        match form {
            Form::Oci => fs::write(top.join(BIG).join(format!(".wh.{}", name(i))), b"").unwrap(),
            Form::Kernel => mknod_chr(&top.join(BIG).join(name(i)), 0, 0).unwrap(),
        }
    }
    let mut expected: BTreeSet<OsString> = (300..4500).map(|i| name(i).into()).collect();
    expected.insert("sub".into());
    (vec![top, bottom], expected)
}

fn names(list: &[RawDirent]) -> Vec<OsString> {
    list.iter()
        .filter(|e| e.name != "." && e.name != "..")
        .map(|e| e.name.clone())
        .collect()
}

fn listing_problems(who: &str, list: &[OsString], expected: &BTreeSet<OsString>) -> Vec<String> {
    let mut out = Vec::new();
    let set: BTreeSet<&OsString> = list.iter().collect();
    if set.len() != list.len() {
        out.push(format!(
            "{who}: {} duplicate entries",
            list.len() - set.len()
        ));
    }
    let missing: Vec<_> = expected
        .iter()
        .filter(|n| !set.contains(n))
        .take(10)
        .collect();
    let extra: Vec<_> = set
        .iter()
        .filter(|n| !expected.contains(**n))
        .take(10)
        .collect();
    if !missing.is_empty() || !extra.is_empty() {
        out.push(format!(
            "{who}: {} entries; missing (first 10) {missing:?}; unexpected {extra:?}",
            list.len()
        ));
    }
    out
}

/// Full listing, small-buffer paging with lookups in between, "read part,
/// then the rest", and seekdir back to a telldir cookie.
fn check_big_dir(who: &str, dir: &Path, expected: &BTreeSet<OsString>) -> Vec<String> {
    let mut out = Vec::new();
    let full = names(&read_dir_raw(dir).unwrap());
    out.extend(listing_problems(
        &format!("{who} full listing"),
        &full,
        expected,
    ));

    // ~30 entries per getdents64 call, an lstat of one entry after each.
    let mut rd = RawDir::open(dir).unwrap();
    let mut paged = Vec::new();
    let mut calls = 0;
    loop {
        let batch = rd.read_batch(1024).unwrap();
        if batch.is_empty() {
            break;
        }
        calls += 1;
        if let Some(e) = batch.iter().find(|e| e.name != "." && e.name != "..")
            && let Err(err) = fs::symlink_metadata(dir.join(&e.name))
        {
            out.push(format!(
                "{who}: lstat of listed {:?} while paging: {err}",
                e.name
            ));
        }
        paged.extend(names(&batch));
    }
    if calls < 50 {
        out.push(format!(
            "{who}: only {calls} getdents64 calls: paging not exercised"
        ));
    }
    out.extend(listing_problems(
        &format!("{who} paged listing"),
        &paged,
        expected,
    ));

    // Read part with one buffer size, then the rest with another.
    let mut rd = RawDir::open(dir).unwrap();
    let mut part = Vec::new();
    while part.len() < 2100 {
        let b = rd.read_batch(4096).unwrap();
        assert!(!b.is_empty(), "{who}: directory ended early");
        part.extend(b);
    }
    let rest = rd.read_rest(64 * 1024).unwrap();
    let mut both = names(&part);
    both.extend(names(&rest));
    out.extend(listing_problems(
        &format!("{who} part+rest"),
        &both,
        expected,
    ));

    // telldir/seekdir on the same stream: continuing after entry 1000 from
    // its d_off cookie yields what followed it the first time.
    let cookie = part[1000].off;
    let mut first_time = names(&part[1001..]);
    first_time.extend(names(&rest));
    rd.seek(cookie).unwrap();
    let again = names(&rd.read_rest(8192).unwrap());
    if again != first_time {
        out.push(format!(
            "{who}: after seekdir to entry 1000's cookie got {} entries (first {:?}), want {} (first {:?})",
            again.len(),
            again.first(),
            first_time.len(),
            first_time.first()
        ));
    }
    out
}

/// Case 6: A directory of a few thousand entries merged from two layers.
#[test]
fn large_merged_directory() {
    let tmp = tempdir();
    let (k_layers, expected) = make_big_dir_layers(&tmp.path().join("kernel"), Form::Kernel);
    let (o_layers, expected_o) = make_big_dir_layers(&tmp.path().join("oci"), Form::Oci);
    assert_eq!(expected, expected_o);
    let kernel = KernelOverlay::mount(&MountSpec::new(k_layers.clone()));
    assert_no_problems(
        "kernel (reference) big dir",
        &check_big_dir("kernel", &kernel.path().join(BIG), &expected),
    );
    let kernel_names: BTreeSet<OsString> = names(&read_dir_raw(&kernel.path().join(BIG)).unwrap())
        .into_iter()
        .collect();
    let mut problems = Vec::new();
    for (form, layers) in [(Form::Kernel, k_layers), (Form::Oci, o_layers)] {
        let strata = StrataMount::mount(&MountSpec::new(layers));
        let dir = strata.path().join(BIG);
        problems.extend(check_big_dir(&label(form), &dir, &expected));
        let got: BTreeSet<OsString> = names(&read_dir_raw(&dir).unwrap()).into_iter().collect();
        if got != kernel_names {
            problems.push(format!(
                "{}: listing differs from the kernel's",
                label(form)
            ));
        }
    }
    assert_no_problems("large merged directory", &problems);
}

// ----------------------------------- 7: whiteout names, long names, deep path

fn deep_leaf_dir() -> PathBuf {
    let mut p = PathBuf::from("deep");
    for i in 1..=16 {
        p.push(format!("{i:02}-{}", "d".repeat(237)));
    }
    p
}

/// Case 7: Lookups: `.wh.` names and whited-out names are ENOENT, a 256-byte
/// name is ENAMETOOLONG (FUSE itself only refuses names over 1024 bytes, so
/// this is up to strata), the ~3,900-byte deep path resolves.
#[test]
fn whiteout_names_long_names_and_deep_paths() {
    let fx = prepare_fixture();
    let (kernel, _) = kernel_reference(fx.path());
    let strata: Vec<(String, StrataMount)> = Form::ALL
        .iter()
        .map(|f| {
            (
                label(*f),
                StrataMount::mount(&MountSpec::fixture(fx.path(), *f)),
            )
        })
        .collect();
    let mut roots = vec![("kernel".to_string(), kernel.path().to_path_buf())];
    roots.extend(
        strata
            .iter()
            .map(|(l, m)| (l.clone(), m.path().to_path_buf())),
    );

    let deep = deep_leaf_dir();
    let deep_len = deep.as_os_str().len() + "/leaf.txt".len();
    assert!(
        (3800..4000).contains(&deep_len),
        "deep path is {deep_len} bytes"
    );
    let long255 = format!("names/{}.txt", "L".repeat(251));
    let missing255 = format!("names/{}", "M".repeat(255));
    let too_long = "N".repeat(256);

    let mut problems = Vec::new();
    for (who, root) in &roots {
        let mut expect = |rel: &str, want: Result<(), i32>| {
            let got = fs::symlink_metadata(root.join(rel)).map(|_| ());
            let got = got.map_err(|e| e.raw_os_error().unwrap_or(-1));
            if got != want {
                let shown = show(Path::new(rel));
                problems.push(format!("{who}: lstat {shown}: got {got:?}, want {want:?}"));
            }
        };
        for rel in [
            ".wh.never-existed",
            "var/log/.wh.old.log",
            "opt/.wh.gone",
            "usr/bin/.wh.[",
            "opaque-me/.wh..wh..opq",
            "merged/.wh.a.txt",
            "etc/.wh.ssl",
            "srv/.wh.www",
            // whited-out names
            "never-existed",
            "var/log/old.log",
            "opt/gone",
            "opt/gone/file1",
            "usr/bin/[",
            "merged/a.txt",
            "etc/ssl/certs/ca.pem",
            "opaque-me/lower1.txt",
            "srv/www/old.html",
            &missing255,
        ] {
            expect(rel, Err(libc::ENOENT));
        }
        expect("to-file/inner.txt", Err(libc::ENOTDIR));
        expect(&too_long, Err(libc::ENAMETOOLONG));
        expect(&format!("usr/bin/{too_long}"), Err(libc::ENAMETOOLONG));
        expect(&format!(".wh.{too_long}"), Err(libc::ENAMETOOLONG));
        expect(&long255, Ok(()));
        expect(deep.to_str().unwrap(), Ok(()));
        for (leaf, text) in [
            ("leaf.txt", "bottom of the deep chain in base\n"),
            ("top.txt", "bottom of the deep chain in app\n"),
        ] {
            match fs::read(root.join(&deep).join(leaf)) {
                Ok(v) if v == text.as_bytes() => {}
                other => problems.push(format!("{who}: deep {leaf}: {other:?}")),
            }
        }
        match read_dir_raw(&root.join(&deep)) {
            Ok(list) => {
                let n: BTreeSet<_> = names(&list).into_iter().collect();
                let want: BTreeSet<OsString> = ["leaf.txt".into(), "top.txt".into()].into();
                if n != want {
                    problems.push(format!("{who}: deep dir lists {n:?}"));
                }
            }
            Err(e) => problems.push(format!("{who}: readdir deep dir: {e}")),
        }
    }
    assert_no_problems("lookups", &problems);
    assert_eq!(too_long.len(), 256);
}

// ----------------------------------------------------------------- 8: statfs

/// Case 8: statvfs on the mount: sane block size and counts, NAME_MAX 255.
/// (Values are not compared with the kernel's: each reports its own backing
/// choice of file system.)
#[test]
fn statfs_is_sane() {
    let fx = prepare_fixture();
    let (kernel, _) = kernel_reference(fx.path());
    let strata: Vec<(String, StrataMount)> = Form::ALL
        .iter()
        .map(|f| {
            (
                label(*f),
                StrataMount::mount(&MountSpec::fixture(fx.path(), *f)),
            )
        })
        .collect();
    let mut roots = vec![("kernel".to_string(), kernel.path().to_path_buf())];
    roots.extend(
        strata
            .iter()
            .map(|(l, m)| (l.clone(), m.path().to_path_buf())),
    );
    let mut problems = Vec::new();
    for (who, root) in &roots {
        for rel in ["", "usr/bin", "etc/passwd"] {
            let st = match statvfs(&root.join(rel)) {
                Ok(st) => st,
                Err(e) => {
                    problems.push(format!("{who}: statvfs /{rel}: {e}"));
                    continue;
                }
            };
            let checks = [
                ("f_bsize > 0", st.f_bsize > 0),
                ("f_frsize > 0", st.f_frsize > 0),
                ("f_namemax == 255", st.f_namemax == 255),
                ("f_blocks > 0", st.f_blocks > 0),
                ("f_bfree <= f_blocks", st.f_bfree <= st.f_blocks),
                ("f_bavail <= f_bfree", st.f_bavail <= st.f_bfree),
                ("f_ffree <= f_files", st.f_ffree <= st.f_files),
            ];
            for (what, ok) in checks {
                if !ok {
                    problems.push(format!(
                        "{who}: statvfs /{rel}: not {what} (bsize {} frsize {} namemax {} blocks {} bfree {} bavail {} files {} ffree {})",
                        st.f_bsize, st.f_frsize, st.f_namemax, st.f_blocks, st.f_bfree, st.f_bavail, st.f_files, st.f_ffree
                    ));
                }
            }
        }
    }
    assert_no_problems("statvfs", &problems);
}

// ------------------------------------------------------------ mount errors

/// A bad lowerdir: non-zero exit, one line on stderr, nothing mounted.
#[test]
fn mount_error_is_reported() {
    let tmp = tempdir();
    let exists = tmp.path().join("exists");
    fs::create_dir(&exists).unwrap();
    let missing = tmp.path().join("does-not-exist");
    let err = match StrataMount::try_mount(&MountSpec::new(vec![missing, exists])) {
        Ok(_) => panic!("mounting a missing lowerdir succeeded"),
        Err(e) => e,
    };
    assert!(err.status.is_some(), "{err}");
    assert_eq!(err.problem, "exited with an error", "{err}");
    let lines: Vec<&str> = err
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "want exactly one line on stderr, got {lines:#?}"
    );
    assert!(lines[0].len() > 5, "{lines:?}");
}

/// Every name a layer holds (whiteouts as the names they delete, so
/// deleted names are asked for too), plus one no layer holds in each
/// directory, relative to the layer roots.
fn names_in_layers(layers: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut names = BTreeSet::new();
    let mut dirs: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(rel) = dirs.pop() {
        names.insert(rel.join("no-such-name"));
        for layer in layers {
            let Ok(list) = fs::read_dir(layer.join(&rel)) else {
                continue;
            };
            for entry in list.map(Result::unwrap) {
                let name = entry.file_name();
                let shown = match name.to_str().and_then(|n| n.strip_prefix(".wh.")) {
                    Some(".wh..opq") => continue,
                    Some(target) => OsString::from(target),
                    None => name,
                };
                let path = rel.join(&shown);
                if entry.file_type().unwrap().is_dir() && !dirs.contains(&path) {
                    dirs.push(path.clone());
                }
                names.insert(path);
            }
        }
    }
    names
}

/// Lookups that no readdir came before: the first one in a directory
/// probes each layer, later ones use the names the layer directory was
/// listed for (see src/layer/names.rs). Each name's lstat (or errno), in an
/// order that visits directories again and again, against the kernel's.
#[test]
fn lookups_without_readdir() {
    let fx = prepare_fixture();
    for form in [Form::Kernel, Form::Oci] {
        let mut names: Vec<PathBuf> = names_in_layers(&layer_dirs(fx.path(), form))
            .into_iter()
            .collect();
        assert!(names.len() > 50, "the fixture has {} names", names.len());
        // Deterministic, and not directory by directory.
        let mut rng = XorShift::new(7);
        for i in (1..names.len()).rev() {
            names.swap(i, rng.below(i + 1));
        }
        let kernel = KernelOverlay::mount(&MountSpec::fixture(fx.path(), Form::Kernel));
        let strata = StrataMount::mount(&MountSpec::fixture(fx.path(), form));
        let mut problems = Vec::new();
        let mut found = 0;
        for name in &names {
            let (k, s) = (kernel.path().join(name), strata.path().join(name));
            let (want, got) = (fs::symlink_metadata(&k), fs::symlink_metadata(&s));
            match (&want, &got) {
                (Ok(_), Ok(_)) => {
                    found += 1;
                    let (want, got) = (record_for(&k).summary(), record_for(&s).summary());
                    if want != got {
                        problems.push(format!("{}: kernel {want}, strata {got}", name.display()));
                    }
                }
                _ if errno(&want) == errno(&got) => {}
                _ => problems.push(format!(
                    "{}: kernel {:?}, strata {:?}",
                    name.display(),
                    want.map(|m| m.mode()),
                    got.map(|m| m.mode())
                )),
            }
        }
        assert!(
            found * 3 > names.len(),
            "{found} of {} names found",
            names.len()
        );
        assert_no_problems(
            &format!("lookups without readdir, {}", label(form)),
            &problems,
        );
    }
}

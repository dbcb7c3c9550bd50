//! `uidmapping=`/`gidmapping=` and `squash_to_*`, compared with
//! fuse-overlayfs (the kernel has no such options; fuse-overlayfs defines
//! them, and containers-storage relies on its behaviour).
//!
//! Each case builds one set of layers, runs the same script (as root and as
//! mapped users) on a strata mount and on a fuse-overlayfs mount of copies
//! of it, and compares what each command printed and returned, the owner
//! and mode of every merged path, and the upper directory left behind.
//! `.ci/run` installs fuse-overlayfs; without it these tests fail.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{PermissionsExt, lchown};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::shell::{listing, run_script};
use common::*;

const FUSE_OVERLAYFS: &str = "/usr/bin/fuse-overlayfs";

/// The upper directory, without the opaque-directory markers
/// fuse-overlayfs adds beside its xattr (strata, like the kernel, marks
/// with the xattr only; the write-path tests cover that format).
fn upper_listing(upper: &Path) -> BTreeMap<String, String> {
    let mut l = listing(upper);
    l.retain(|path, _| !path.ends_with("/.wh..opq") && !path.ends_with("/.wh..wh..opq"));
    l
}

/// Files owned by the ids a container image holds, and some it cannot map.
fn make_layers(base: &Path) -> Vec<PathBuf> {
    let lower = base.join("lower");
    fs::create_dir_all(&lower).unwrap();
    let file = |name: &str, uid: u32, gid: u32, mode: u32| {
        let p = lower.join(name);
        fs::write(&p, name.as_bytes()).unwrap();
        lchown(&p, Some(uid), Some(gid)).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    };
    let dir = |name: &str, uid: u32, gid: u32, mode: u32| {
        let p = lower.join(name);
        fs::create_dir(&p).unwrap();
        lchown(&p, Some(uid), Some(gid)).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    };
    file("root_file", 0, 0, 0o644);
    file("user1_file", 1, 1, 0o640);
    file("user1000_file", 1000, 1000, 0o600);
    file("last_mapped", 65535, 65535, 0o644);
    file("unmapped", 70000, 70001, 0o644);
    dir("root_dir", 0, 0, 0o755);
    dir("user1_dir", 1, 2, 0o775);
    dir("open_dir", 0, 0, 0o777);
    file("root_dir/inner", 0, 0, 0o644);
    std::os::unix::fs::symlink("root_file", lower.join("link")).unwrap();
    lchown(lower.join("link"), Some(1), Some(1)).unwrap();
    vec![lower]
}

/// Copies a tree with owners and modes (`cp -a`).
fn copy_tree(from: &Path, to: &Path) {
    let o = run_with_timeout(
        Command::new("cp").arg("-a").arg(from).arg(to),
        Duration::from_secs(30),
    );
    assert!(o.success(), "{o}");
}

struct Outcome {
    script: Vec<String>,
    merged: BTreeMap<String, String>,
    upper: BTreeMap<String, String>,
}

/// Mounts `program` over a fresh copy of the layers with `options`, runs
/// the script, and lists the result.
fn run_on(program: &Path, base: &Path, options: &[&str], script: &[&str]) -> Outcome {
    let own = common::tempdir();
    copy_tree(&base.join("lower"), own.path());
    let uw = UpperWork::new();
    let mut spec = MountSpec::new(vec![own.path().join("lower")]).with_upper(&uw);
    for o in options {
        spec = spec.with_option(o);
    }
    // fuse-overlayfs adds neither by itself; strata's defaults as root.
    spec = spec
        .with_option("allow_other")
        .with_option("default_permissions");
    let mount = StrataMount::try_mount_with(program, &spec)
        .unwrap_or_else(|e| panic!("{} did not mount: {e}", program.display()));
    let script = run_script(mount.path(), script);
    let merged = listing(mount.path());
    mount.unmount().unwrap();
    Outcome {
        script,
        merged,
        upper: upper_listing(&uw.upper),
    }
}

fn compare(options: &[&str], script: &[&str]) -> Outcome {
    let reference = Path::new(FUSE_OVERLAYFS);
    assert!(
        reference.exists(),
        "{FUSE_OVERLAYFS} is the reference for id mapping: apt-get install fuse-overlayfs"
    );
    let base = common::tempdir();
    make_layers(base.path());
    let strata = run_on(&strata_bin(), base.path(), options, script);
    let theirs = run_on(reference, base.path(), options, script);
    let mut problems = Vec::new();
    for (a, b) in strata.script.iter().zip(&theirs.script) {
        if a != b {
            problems.push(format!(
                "command:\n  strata:         {a}\n  fuse-overlayfs: {b}"
            ));
        }
    }
    for (what, a, b) in [
        ("merged", &strata.merged, &theirs.merged),
        ("upper", &strata.upper, &theirs.upper),
    ] {
        for key in a
            .keys()
            .chain(b.keys())
            .collect::<std::collections::BTreeSet<_>>()
        {
            if a.get(key) != b.get(key) {
                problems.push(format!(
                    "{what} {key}:\n  strata:         {:?}\n  fuse-overlayfs: {:?}",
                    a.get(key),
                    b.get(key)
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "options {options:?}: {} differences\n{}",
        problems.len(),
        problems.join("\n")
    );
    strata
}

/// A script that creates, chowns and copies up, as root and as mapped
/// users, including requests the kernel must refuse (the shown owner
/// decides, with default_permissions).
const MAPPED_SCRIPT: &[&str] = &[
    "stat -c '%n %u:%g' root_file user1_file user1000_file last_mapped unmapped root_dir user1_dir link",
    "touch new_by_root && mkdir dir_by_root && ln -s x link_by_root && mkfifo fifo_by_root",
    "chown 100007:100008 user1_file",
    "chown 70000:70000 root_file",
    "chgrp 100003 user1_dir",
    "chown -h 100009:100010 link",
    "chown 5:5 last_mapped",
    "as 100000:100000 touch root_dir/by_container_root && mkdir root_dir/dir_by_container_root",
    "as 100000:100000 echo more >> root_dir/inner",
    "as 100001:100001 touch user1_dir/by_user1",
    "as 100001:100001 touch root_dir/refused",
    "as 100001:100001 echo x > user1000_file",
    "as 1000:1000 touch open_dir/by_unmapped_user",
    "as 100000:100000 chown 100001:100001 new_by_root",
    "stat -c '%n %u:%g %a' new_by_root dir_by_root link_by_root fifo_by_root root_dir/by_container_root user1_dir/by_user1 open_dir/by_unmapped_user",
];

#[test]
fn uid_and_gid_ranges() {
    let done = compare(
        &["uidmapping=0:100000:65536", "gidmapping=0:100000:65536"],
        MAPPED_SCRIPT,
    );
    // Spot checks that the comparison saw mapping at work, not two
    // implementations that both ignore it.
    assert_eq!(
        done.merged["/unmapped"].split(' ').nth(1),
        Some("65534:65534")
    );
    assert_eq!(
        done.upper["/root_file"].split(' ').nth(1),
        Some("65534:65534")
    );
    assert_eq!(
        done.merged["/root_dir"].split(' ').nth(1),
        Some("100000:100000")
    );
    assert_eq!(done.upper["/user1_file"].split(' ').nth(1), Some("7:8"));
    assert_eq!(
        done.upper["/root_dir/by_container_root"].split(' ').nth(1),
        Some("0:0")
    );
}

#[test]
fn a_user_namespace_map_on_one_line() {
    // /proc/self/uid_map "0 1000 1" and "1 110000 65536", joined as
    // containers-storage joins them, with its stray leading colon.
    let done = compare(
        &[
            "uidmapping=:0:1000:1:1:110000:65536",
            "gidmapping=0:1000:1:1:110000:65536",
        ],
        &[
            "stat -c '%n %u:%g' root_file user1_file user1000_file root_dir user1_dir",
            "touch new && chown 1000:110001 new",
            "chown 110004:1000 user1_file",
            "as 1000:1000 touch root_dir/by_container_root",
            "as 110000:110000 touch user1_dir/by_user1",
            "stat -c '%n %u:%g' new user1_file root_dir/by_container_root user1_dir/by_user1",
        ],
    );
    assert_eq!(done.upper["/new"].split(' ').nth(1), Some("0:2"));
    assert_eq!(
        done.merged["/user1_file"].split(' ').nth(1),
        Some("110004:1000")
    );
}

#[test]
fn only_uids_mapped() {
    let done = compare(
        &["uidmapping=0:100000:65536"],
        &[
            "stat -c '%n %u:%g' root_file user1_file unmapped",
            "touch new && chown 100002:7 new",
        ],
    );
    assert_eq!(done.upper["/new"].split(' ').nth(1), Some("2:7"));
}

const SQUASH_SCRIPT: &[&str] = &[
    "stat -c '%n %u:%g' root_file user1_file unmapped root_dir link",
    "chown 3:4 user1_file",
    "touch new && mkdir newdir",
    "stat -c '%n %u:%g' user1_file new newdir",
];

#[test]
fn squash_to_root() {
    let done = compare(&["squash_to_root"], SQUASH_SCRIPT);
    assert_eq!(done.merged["/unmapped"].split(' ').nth(1), Some("0:0"));
    assert_eq!(done.upper["/user1_file"].split(' ').nth(1), Some("3:4"));
}

#[test]
fn squash_to_uid_and_gid() {
    compare(&["squash_to_uid=7", "squash_to_gid=9"], SQUASH_SCRIPT);
    compare(&["squash_to_root", "squash_to_uid=7"], SQUASH_SCRIPT);
    let done = compare(&["squash_to_gid=9"], SQUASH_SCRIPT);
    assert_eq!(done.merged["/user1_file"].split(' ').nth(1), Some("3:9"));
}

#[test]
fn squash_over_a_mapping() {
    compare(
        &[
            "uidmapping=0:100000:65536",
            "gidmapping=0:100000:65536",
            "squash_to_uid=100000",
        ],
        &[
            "stat -c '%n %u:%g' root_file user1_file unmapped",
            "chown 100003:100004 user1_file",
            "touch new",
            "stat -c '%n %u:%g' user1_file new",
        ],
    );
}

//! `xattr_permissions=1|2`: owners and modes kept in records
//! (`security.fuseoverlayfs.override_stat`, `user.containers.override_stat`)
//! instead of the inodes.
//!
//! The reference is kernel overlayfs without any such option: through the
//! mount, a strata with records must look and refuse exactly like it (the
//! same script as root and as other users: every command's output and
//! status, every merged owner and mode), while in the upper each object the
//! kernel gave an owner and mode holds the same ones in its record, and the
//! objects strata created stay the daemon's. Then the upper, mounted again
//! without the option, is read the same way (its root is marked), and
//! records in every form in use are read from a lower layer.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown};
use std::path::{Path, PathBuf};

use common::shell::{listing, run_script};
use common::*;

const PRIVILEGED: &str = "security.fuseoverlayfs.override_stat";
const CONTAINERS: &str = "user.containers.override_stat";

fn make_lower(base: &Path) -> PathBuf {
    let lower = base.join("lower");
    let file = |name: &str, uid: u32, gid: u32, mode: u32| {
        let p = lower.join(name);
        fs::write(&p, name.as_bytes()).unwrap();
        lchown(&p, Some(uid), Some(gid)).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    };
    fs::create_dir(&lower).unwrap();
    fs::set_permissions(&lower, fs::Permissions::from_mode(0o755)).unwrap();
    for (d, mode) in [("open", 0o777), ("ld", 0o755)] {
        fs::create_dir(lower.join(d)).unwrap();
        fs::set_permissions(lower.join(d), fs::Permissions::from_mode(mode)).unwrap();
    }
    lchown(lower.join("ld"), Some(1), Some(1)).unwrap();
    file("lowerfile", 5, 6, 0o644);
    file("lowerexec", 0, 0, 0o755);
    file("ld/inner", 1, 1, 0o640);
    lower
}

/// Creates, chmods and chowns as root and as other users, with the
/// kernel's rules in play: set-group-id directories, umask, set-id bits
/// cleared by chown and by a write, refusals by owner and by mode.
const SCRIPT: &[&str] = &[
    "mkdir sgid && chgrp 100 sgid && chmod 2775 sgid",
    "as 1000:100 mkdir sgid/sub",
    "as 1000:100 touch sgid/f",
    "as 1000:1000 touch open/mine && chmod 4750 open/mine",
    "as 1000:1000 umask 027 && mkdir open/u027 && echo x > open/u027f",
    "chown 1000:1000 lowerfile",
    "chmod 4757 lowerexec",
    "as 1001:1001 echo more >> lowerexec",
    "chown 5:5 open/mine",
    "as 1001:1001 chmod 777 open/u027f",
    "as 1000:1000 chown 1001 open/u027f",
    "as 1000:1000 chmod 2700 open/u027f",
    "mkfifo open/fifo && mknod open/null c 1 3 && chown 7:7 open/null",
    "as 1000:1000 ln -s mine open/link",
    "mkdir ro && chmod 555 ro && touch ro/x",
    "as 1000:1000 touch ro/y",
    "chmod 700 ld && chown 1:2 ld/inner",
    "as 1:1 cat ld/inner",
    "as 2:2 cat ld/inner",
    "setfattr -n security.test -v v lowerfile && getfattr -n security.test --only-values lowerfile",
    "getfattr -d -m - --absolute-names lowerfile ld/inner",
    "stat -c '%n %u:%g %a %F' sgid sgid/sub sgid/f open/mine open/u027 open/u027f lowerfile lowerexec open/fifo open/null open/link ro ro/x ld ld/inner",
];

/// `path → uid:gid mode` of an upper: the record where there is one (in
/// either format), else the inode's.
fn effective_owners(upper: &Path) -> BTreeMap<String, (String, bool)> {
    let mut out = BTreeMap::new();
    for path in listing(upper).keys() {
        let full = upper.join(path.trim_start_matches('/'));
        let md = fs::symlink_metadata(&full).unwrap();
        let record = [PRIVILEGED, CONTAINERS]
            .iter()
            .find_map(|n| lgetxattr(&full, n).ok());
        let value = match &record {
            Some(r) => {
                let text = String::from_utf8(r.clone()).unwrap();
                let f: Vec<&str> = text.split(':').collect();
                let mode = u32::from_str_radix(f[2], 8).unwrap() & 0o7777;
                format!("{}:{} {:o}", f[0], f[1], mode)
            }
            None => format!("{}:{} {:o}", md.uid(), md.gid(), md.mode() & 0o7777),
        };
        out.insert(path.clone(), (value, record.is_some()));
    }
    out
}

struct Run {
    script: Vec<String>,
    merged: BTreeMap<String, String>,
    upper: PathBuf,
    _uw: UpperWork,
}

fn run(lower: &Path, kernel: bool, option: Option<&str>) -> Run {
    let uw = UpperWork::new();
    let mut spec = MountSpec::new(vec![lower.to_path_buf()]).with_upper(&uw);
    if let Some(o) = option {
        spec = spec.with_option(o);
    }
    let (script, merged) = if kernel {
        let m = KernelOverlay::mount(&spec);
        let r = (run_script(m.path(), SCRIPT), listing(m.path()));
        m.unmount().unwrap();
        r
    } else {
        let m = StrataMount::mount(&spec);
        let r = (run_script(m.path(), SCRIPT), listing(m.path()));
        m.unmount().unwrap();
        r
    };
    Run {
        script,
        merged,
        upper: uw.upper.clone(),
        _uw: uw,
    }
}

fn differences(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<String> {
    let keys: std::collections::BTreeSet<_> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{k}:\n  kernel: {:?}\n  strata: {:?}", a.get(k), b.get(k)))
        .collect()
}

fn like_the_kernel(option: &str, record_name: &str) {
    let base = common::tempdir();
    let lower = make_lower(base.path());
    let kernel = run(&lower, true, None);
    let strata = run(&lower, false, Some(option));

    let mut problems = Vec::new();
    for (k, s) in kernel.script.iter().zip(&strata.script) {
        if k != s {
            problems.push(format!("command:\n  kernel: {k}\n  strata: {s}"));
        }
    }
    problems.extend(differences(&kernel.merged, &strata.merged));

    // The upper: the kernel's inode owners are strata's recorded ones.
    let theirs = effective_owners(&kernel.upper);
    let ours = effective_owners(&strata.upper);
    for (path, (value, _)) in &theirs {
        match ours.get(path) {
            Some((v, _)) if v == value => {}
            other => problems.push(format!(
                "upper {path}: kernel inode {value}, strata {other:?}"
            )),
        }
    }
    // What strata made is the daemon's; what it shows is in the record.
    for made in ["sgid/sub", "sgid/f", "open/mine", "open/u027", "open/u027f"] {
        let md = fs::symlink_metadata(strata.upper.join(made)).unwrap();
        if (md.uid(), md.gid()) != (0, 0) || !ours[&format!("/{made}")].1 {
            problems.push(format!(
                "upper /{made}: inode {}:{}, record present: {}",
                md.uid(),
                md.gid(),
                ours[&format!("/{made}")].1
            ));
        }
    }
    assert!(
        lgetxattr(&strata.upper, record_name).is_ok(),
        "the upper's root is not marked with {record_name}"
    );
    assert!(
        problems.is_empty(),
        "{option}: {} differences from kernel overlayfs\n{}",
        problems.len(),
        problems.join("\n")
    );

    // Mounted again, read-only, without the option: the mark says how.
    let again = StrataMount::mount(&MountSpec::new(vec![strata.upper.clone(), lower.clone()]));
    let reread = listing(again.path());
    again.unmount().unwrap();
    let d = differences(&kernel.merged, &reread);
    assert!(
        d.is_empty(),
        "{option}: the upper read back without the option differs\n{}",
        d.join("\n")
    );
}

#[test]
fn privileged_records_look_like_the_kernel() {
    like_the_kernel("xattr_permissions=1", PRIVILEGED);
}

#[test]
fn containers_records_look_like_the_kernel() {
    like_the_kernel("xattr_permissions=2", CONTAINERS);
}

#[test]
fn security_xattrs_are_encoded_in_the_containers_format() {
    let base = common::tempdir();
    let lower = make_lower(base.path());
    let uw = UpperWork::new();
    let spec = MountSpec::new(vec![lower])
        .with_upper(&uw)
        .with_option("xattr_permissions=2");
    let m = StrataMount::mount(&spec);
    let set = run_script(
        m.path(),
        &[
            "setfattr -n security.capability -v 0sAQAAAgAgAAAAAAAAAAAAAAAAAAA= lowerfile",
            "getfattr -d -m - -e base64 lowerfile",
        ],
    );
    // On disk: under the encoded name, nothing under security.* (which an
    // unprivileged daemon could not set).
    let on_disk = llistxattr(&uw.upper.join("lowerfile")).unwrap();
    let rest = run_script(
        m.path(),
        &[
            "setfattr -n user.containers.override_stat -v 0:0:0777 lowerfile",
            "getfattr -n user.containers.override_stat lowerfile",
            "setfattr -x security.capability lowerfile && getfattr -d -m - lowerfile",
        ],
    );
    m.unmount().unwrap();
    assert!(set[0].contains("=> Some(0)"), "{}", set[0]);
    assert!(
        set[1].contains("security.capability=0sAQAAAgAgAAAAAAAAAAAAAAAAAAA="),
        "{}",
        set[1]
    );
    assert!(
        on_disk.contains(&"user.containers.override_security.capability".to_string())
            && on_disk.iter().all(|n| !n.starts_with("security.")),
        "{on_disk:?}"
    );
    assert!(rest[0].contains("Operation not permitted"), "{}", rest[0]);
    assert!(rest[1].contains("No such attribute"), "{}", rest[1]);
    let listed = rest[2].split("=>").nth(1).unwrap();
    assert!(!listed.contains("security."), "{}", rest[2]);
    let after = llistxattr(&uw.upper.join("lowerfile")).unwrap();
    assert!(!after.iter().any(|n| n.contains("security.")), "{after:?}");
}

#[test]
fn records_in_every_form_are_read_from_lower_layers() {
    let base = common::tempdir();
    let lower = base.path().join("lower");
    fs::create_dir(&lower).unwrap();
    let set = |name: &str, key: &str, value: &str| {
        let o = run_with_timeout(
            std::process::Command::new("setfattr")
                .args(["-h", "-n", key, "-v", value])
                .arg(lower.join(name)),
            std::time::Duration::from_secs(10),
        );
        assert!(o.success(), "{o}");
    };
    for f in ["a", "b", "c", "dev", "bad", "none"] {
        fs::write(lower.join(f), f).unwrap();
    }
    fs::create_dir(lower.join("d")).unwrap();
    // fuse-overlayfs 1.x marks a layer with its legacy user name.
    set("", "user.fuseoverlayfs.override_stat", "0:0:0755");
    set("a", "user.fuseoverlayfs.override_stat", "1000:1000:0640");
    set("b", "user.fuseoverlayfs.override_stat", "7:8:100600");
    set("c", CONTAINERS, "3:3:0700");
    set("d", "user.fuseoverlayfs.override_stat", "9:9:42775");
    set("dev", CONTAINERS, "0:5:0620:char-4-64");
    set("bad", CONTAINERS, "x:y:z");
    let m = StrataMount::mount(&MountSpec::new(vec![lower.clone()]));
    let got = run_script(
        m.path(),
        &["stat -c '%n %u:%g %a %F %t:%T' a b c d dev bad none"],
    );
    // readdir agrees with stat on what a stand-in is.
    let listed = read_dir_raw(m.path()).unwrap();
    let d_type = |name: &str| listed.iter().find(|e| e.name == name).map(|e| e.d_type);
    assert_eq!(d_type("dev"), Some(libc::DT_CHR), "{listed:?}");
    assert_eq!(d_type("b"), Some(libc::DT_REG), "{listed:?}");
    m.unmount().unwrap();
    let stat = |name: &str| fs::metadata(lower.join(name)).unwrap();
    let expected = format!(
        "a 1000:1000 640 regular file 0:0\nb 7:8 600 regular file 0:0\nc 3:3 700 regular file 0:0\n\
         d 9:9 2775 directory 0:0\ndev 0:5 620 character special file 4:40\n\
         bad {}:{} {:o} regular file 0:0\nnone {}:{} {:o} regular file 0:0",
        stat("bad").uid(),
        stat("bad").gid(),
        stat("bad").mode() & 0o7777,
        stat("none").uid(),
        stat("none").gid(),
        stat("none").mode() & 0o7777,
    );
    assert!(
        got[0].contains(&expected),
        "got:\n{}\nexpected:\n{expected}",
        got[0]
    );
    // Copied up, a file keeps its record and what it shows; new files get
    // records too, and the upper is marked like its lowers.
    let uw = UpperWork::new();
    let m = StrataMount::mount(&MountSpec::new(vec![lower.clone()]).with_upper(&uw));
    let got = run_script(
        m.path(),
        &[
            "echo more >> c && echo more >> a && chmod 604 a",
            "as 9:9 touch d/new",
            "stat -c '%n %u:%g %a' a c d/new",
        ],
    );
    m.unmount().unwrap();
    assert!(
        got[2].contains("a 1000:1000 604\nc 3:3 700\nd/new 9:9 644"),
        "{got:?}"
    );
    assert!(lgetxattr(&uw.upper.join("c"), CONTAINERS).is_ok());
    assert!(lgetxattr(&uw.upper, CONTAINERS).is_ok());

    // Without a mark, records mean nothing unless the option says so.
    let plain = common::tempdir();
    let unmarked = plain.path().join("lower");
    fs::create_dir(&unmarked).unwrap();
    fs::write(unmarked.join("c"), "c").unwrap();
    let o = run_with_timeout(
        std::process::Command::new("setfattr")
            .args(["-n", CONTAINERS, "-v", "3:3:0700"])
            .arg(unmarked.join("c")),
        std::time::Duration::from_secs(10),
    );
    assert!(o.success(), "{o}");
    for (option, shown) in [(None, "0:0 644"), (Some("xattr_permissions=2"), "3:3 700")] {
        let mut spec = MountSpec::new(vec![unmarked.clone()]);
        if let Some(o) = option {
            spec = spec.with_option(o);
        }
        let m = StrataMount::mount(&spec);
        let got = run_script(m.path(), &["stat -c '%u:%g %a' c"]);
        m.unmount().unwrap();
        assert!(got[0].contains(shown), "{option:?}: {}", got[0]);
    }
}

/// Uppers fuse-overlayfs 1.10 wrote (its privileged and its 1.x user
/// record names) read back by strata as fuse-overlayfs showed them.
#[test]
fn reads_the_records_fuse_overlayfs_wrote() {
    let reference = Path::new("/usr/bin/fuse-overlayfs");
    assert!(
        reference.exists(),
        "fuse-overlayfs is the reference here: apt-get install fuse-overlayfs"
    );
    for option in ["xattr_permissions=1", "xattr_permissions=2"] {
        let base = common::tempdir();
        let lower = base.path().join("lower");
        fs::create_dir(&lower).unwrap();
        fs::create_dir(lower.join("open")).unwrap();
        fs::set_permissions(lower.join("open"), fs::Permissions::from_mode(0o777)).unwrap();
        let uw = UpperWork::new();
        let spec = MountSpec::new(vec![lower.clone()])
            .with_upper(&uw)
            .with_option(option)
            .with_option("allow_other")
            .with_option("default_permissions");
        let theirs = StrataMount::try_mount_with(reference, &spec).unwrap();
        run_script(
            theirs.path(),
            &[
                "chown 1000:1000 open",
                "as 1000:1000 mkdir open/d && touch open/f && chmod 4750 open/f",
                "chown 5:6 open/d",
            ],
        );
        let shown = listing(theirs.path());
        theirs.unmount().unwrap();
        let ours = StrataMount::mount(&spec);
        let reread = listing(ours.path());
        ours.unmount().unwrap();
        let d = differences(&shown, &reread);
        assert!(d.is_empty(), "{option}:\n{}", d.join("\n"));
        assert_eq!(shown["/open/d"].split(' ').nth(1), Some("5:6"), "{option}");
    }
}

/// A stand-in is listed with the type stat shows, also where the kernel
/// pages through a large directory with plain READDIR (it switches from
/// readdirplus after the first batch when nothing is looked up).
#[test]
fn stand_ins_are_listed_as_what_they_stand_in_for() {
    let base = common::tempdir();
    let lower = base.path().join("lower");
    fs::create_dir(&lower).unwrap();
    let set = |path: &Path, value: &str| {
        let o = run_with_timeout(
            std::process::Command::new("setfattr")
                .args(["-n", CONTAINERS, "-v", value])
                .arg(path),
            std::time::Duration::from_secs(10),
        );
        assert!(o.success(), "{o}");
    };
    set(&lower, "0:0:0755");
    for i in 0..300 {
        let p = lower.join(format!("node-{i:03}"));
        fs::write(&p, "").unwrap();
        set(&p, "0:0:0666:char-1-3");
    }
    let m = StrataMount::mount(&MountSpec::new(vec![lower]));
    let mut dir = RawDir::open(m.path()).unwrap();
    let listed = dir.read_rest(512).unwrap();
    drop(dir);
    m.unmount().unwrap();
    let nodes: Vec<_> = listed
        .iter()
        .filter(|e| e.name != "." && e.name != "..")
        .collect();
    assert_eq!(nodes.len(), 300);
    let wrong: Vec<_> = nodes.iter().filter(|e| e.d_type != libc::DT_CHR).collect();
    assert!(
        wrong.is_empty(),
        "{} of 300 not DT_CHR: {wrong:?}",
        wrong.len()
    );
}

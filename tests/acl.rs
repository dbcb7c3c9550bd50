//! POSIX ACLs, against kernel overlayfs: enforced for every user, kept
//! through copy-up, inherited from default ACLs (which replace the umask)
//! whether the object is made in place or over a whiteout, and changed by
//! chmod. With `noacl`, against fuse-overlayfs's `noacl`: stored, not
//! enforced.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::shell::{listing, run_script};
use common::*;

fn setfacl(args: &[&str], path: &Path) {
    let o = run_with_timeout(
        Command::new("setfacl").args(args).arg(path),
        Duration::from_secs(10),
    );
    assert!(o.success(), "{o}");
}

/// A layer with ACLs already in it, and names to delete and make again.
fn make_lower(base: &Path) -> std::path::PathBuf {
    let lower = base.join("lower");
    for d in ["", "d", "d2", "d2/olddir", "dd"] {
        fs::create_dir(lower.join(d)).unwrap();
    }
    for f in ["f", "d2/old", "dd/gone", "dd/kept"] {
        fs::write(lower.join(f), f).unwrap();
    }
    setfacl(&["-d", "-m", "u:1000:rwx,g::r-x,o::-"], &lower.join("dd"));
    setfacl(&["-m", "u:1001:r--"], &lower.join("dd/kept"));
    lower
}

const PATHS: &str = "d d2 d2/f d2/sub d2/fifo d2/old d2/olddir dd dd/new dd/gone dd/kept f";

fn script() -> Vec<String> {
    [
        "setfacl -m u:1000:rwx d",
        "as 1000:1000 touch d/x",
        "setfacl -m u:1001:--- f",
        "as 1001:1001 cat f",
        "as 1002:1002 cat f",
        "as 1001:1001 cat dd/kept",
        "setfacl -d -m u:1000:rw d2",
        "umask 077 && touch d2/f && mkdir d2/sub && mkfifo d2/fifo",
        "rm d2/old && umask 077 && touch d2/old",
        "rm -r d2/olddir && umask 027 && mkdir d2/olddir",
        "umask 077 && touch dd/new",
        "rm dd/gone && umask 022 && echo again > dd/gone",
        "chmod 640 d2/f",
        "setfacl -b d",
        "as 1000:1000 touch d/y",
        &format!("getfacl -p {PATHS}"),
        &format!("stat -c '%n %a' {PATHS}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `getfacl` of the same paths in an upper directory.
fn upper_acls(upper: &Path) -> String {
    let o = run_with_timeout(
        Command::new("sh")
            .args(["-c", &format!("getfacl -p {PATHS} 2>&1")])
            .current_dir(upper),
        Duration::from_secs(10),
    );
    o.stdout
}

#[test]
fn acls_like_the_kernel() {
    let base = common::tempdir();
    let lower = make_lower(base.path());
    let lines = script();
    let lines: Vec<&str> = lines.iter().map(|s| s.as_str()).collect();
    let run = |kernel: bool| {
        let uw = UpperWork::new();
        let spec = MountSpec::new(vec![lower.clone()]).with_upper(&uw);
        let (out, merged) = if kernel {
            let m = KernelOverlay::mount(&spec);
            let r = (run_script(m.path(), &lines), listing(m.path()));
            m.unmount().unwrap();
            r
        } else {
            let m = StrataMount::mount(&spec);
            let r = (run_script(m.path(), &lines), listing(m.path()));
            m.unmount().unwrap();
            r
        };
        (out, merged, upper_acls(&uw.upper))
    };
    let kernel = run(true);
    let strata = run(false);
    let mut problems = Vec::new();
    for (k, s) in kernel.0.iter().zip(&strata.0) {
        if k != s {
            problems.push(format!("command:\n  kernel: {k}\n  strata: {s}"));
        }
    }
    if kernel.1 != strata.1 {
        problems.push(format!(
            "merged:\n  kernel: {:?}\n  strata: {:?}",
            kernel.1, strata.1
        ));
    }
    if kernel.2 != strata.2 {
        problems.push(format!(
            "upper ACLs:\n  kernel:\n{}\n  strata:\n{}",
            kernel.2, strata.2
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The script did reach ACL behaviour (not two mounts that ignore it).
    assert!(kernel.0[1].contains("=> Some(0)"), "{}", kernel.0[1]);
    assert!(kernel.0[3].contains("Permission denied"), "{}", kernel.0[3]);
    assert!(
        kernel.0[15].contains("d2/old\n# owner: root\n# group: root\nuser::rw-\nuser:"),
        "{}",
        kernel.0[15]
    );
}

#[test]
fn noacl_stores_acls_without_enforcing_them_as_fuse_overlayfs() {
    let reference = Path::new("/usr/bin/fuse-overlayfs");
    assert!(
        reference.exists(),
        "fuse-overlayfs is the reference for noacl: apt-get install fuse-overlayfs"
    );
    let base = common::tempdir();
    let lower = make_lower(base.path());
    let lines = [
        "setfacl -m u:1000:rwx d && getfacl -p d",
        "as 1000:1000 touch d/x",
        "as 1001:1001 cat dd/kept",
        "umask 077 && touch dd/new && stat -c '%a' dd/new",
    ];
    let run = |program: &Path| {
        let uw = UpperWork::new();
        let spec = MountSpec::new(vec![lower.clone()])
            .with_upper(&uw)
            .with_option("noacl")
            .with_option("allow_other")
            .with_option("default_permissions");
        let m = StrataMount::try_mount_with(program, &spec).unwrap();
        let out = run_script(m.path(), &lines);
        m.unmount().unwrap();
        out
    };
    let theirs = run(reference);
    let ours = run(&strata_bin());
    assert_eq!(ours, theirs);
    assert!(ours[1].contains("Permission denied"), "{}", ours[1]);
}

//! The command lines containers-storage (podman, buildah, CRI-O) gives its
//! `mount_program`, each run the way it runs them: from the storage
//! directory, with relative `l/ID` symlinks as layers, and stdin and stdout
//! on /dev/null. Each must mount with no complaint on stderr, show the
//! layers top-down, take writes where there is an upper, and end its
//! daemon at `fusermount3 -u`.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

use common::*;

/// `overlay/` as containers-storage lays it out: layer directories with a
/// `diff`, short `l/ID` symlinks to them, and one container layer `c` with
/// `diff`, `work`, `merged` and `empty`.
fn make_storage(root: &Path) {
    let o = root.join("overlay");
    for (id, short, file) in [("base", "BASE", "from-base"), ("mid", "MID", "from-mid")] {
        fs::create_dir_all(o.join(id).join("diff")).unwrap();
        fs::write(o.join(id).join("diff/shared"), id).unwrap();
        fs::write(o.join(id).join("diff").join(file), file).unwrap();
        fs::create_dir_all(o.join("l")).unwrap();
        symlink(format!("../{id}/diff"), o.join("l").join(short)).unwrap();
    }
    // A layer reached as `l/ID/../diff1`.
    fs::create_dir_all(o.join("mid/diff1")).unwrap();
    fs::write(o.join("mid/diff1/from-diff1"), "diff1").unwrap();
    // mid deletes base's `gone` (an OCI whiteout, as layers are unpacked).
    fs::write(o.join("base/diff/gone"), "gone").unwrap();
    fs::write(o.join("mid/diff/.wh.gone"), "").unwrap();
    fs::write(o.join("mid/diff1/.wh.gone"), "").unwrap();
    for d in ["c/diff", "c/work", "c/merged", "c/empty"] {
        fs::create_dir_all(o.join(d)).unwrap();
    }
    fs::write(o.join("c/diff/from-container"), "c").unwrap();
}

/// Mounts with `options` from `overlay/`, checks the tree, writes if
/// `writable`, unmounts and waits for the daemon. stderr must be `stderr`.
fn mount_shape(options: &str, writable: bool, expected: &[(&str, &str)]) {
    mount_shape_saying(options, writable, expected, "")
}

fn mount_shape_saying(options: &str, writable: bool, expected: &[(&str, &str)], stderr: &str) {
    let dir = common::tempdir();
    make_storage(dir.path());
    let o = dir.path().join("overlay");
    let merged = o.join("c/merged");
    let out = run_with_timeout(
        Command::new(strata_bin())
            .current_dir(&o)
            .args(["-o", options])
            .arg(&merged),
        MOUNT_TIMEOUT,
    );
    assert!(out.success(), "{options}: {out}");
    assert!(is_mounted(&merged), "{options}: exited 0, nothing mounted");
    let pids = pids_with_arg(merged.as_os_str());
    let check = || -> Result<(), String> {
        if out.stderr.trim() != stderr {
            return Err(format!("stderr: {}", out.stderr));
        }
        for (name, content) in expected {
            let got = fs::read_to_string(merged.join(name));
            if got.as_deref().ok() != Some(*content) {
                return Err(format!("{name}: {got:?}, expected {content:?}"));
            }
        }
        if merged.join("gone").exists() {
            return Err("a whited-out file shows".into());
        }
        if writable {
            fs::write(merged.join("shared"), "changed").map_err(|e| e.to_string())?;
            fs::remove_file(merged.join("from-base")).map_err(|e| e.to_string())?;
            if fs::read_to_string(o.join("c/diff/shared")).ok().as_deref() != Some("changed") {
                return Err("the write is not in the upper".into());
            }
        } else if fs::write(merged.join("new"), "x").is_ok() {
            return Err("a read-only mount took a write".into());
        }
        Ok(())
    };
    let result = check();
    let unmounted = run_with_timeout(
        Command::new("fusermount3").arg("-u").arg(&merged),
        UNMOUNT_TIMEOUT,
    );
    assert!(unmounted.success(), "{options}: {unmounted}");
    assert!(
        wait_pids_exit(&pids, UNMOUNT_TIMEOUT),
        "{options}: the daemon outlived its mount"
    );
    if let Err(e) = result {
        panic!("{options}: {e}");
    }
    if writable {
        // What the unmount left: the whiteout and the data, on disk.
        assert!(
            o.join("c/diff/from-base").exists(),
            "{options}: no whiteout"
        );
    }
}

const RW: &str = "lowerdir=l/MID:l/BASE,upperdir=c/diff,workdir=c/work";

fn rw_expected() -> Vec<(&'static str, &'static str)> {
    vec![
        ("shared", "mid"),
        ("from-base", "from-base"),
        ("from-mid", "from-mid"),
        ("from-container", "c"),
    ]
}

#[test]
fn rootful_with_an_empty_item_and_volatile() {
    mount_shape(&format!("{RW},,volatile"), true, &rw_expected());
}

#[test]
fn ending_in_a_comma() {
    mount_shape(&format!("{RW},"), true, &rw_expected());
}

#[test]
fn read_only_with_the_container_diff_on_top() {
    mount_shape(
        "lowerdir=c/diff:l/MID:l/BASE",
        false,
        &[
            ("from-container", "c"),
            ("shared", "mid"),
            ("from-base", "from-base"),
        ],
    );
}

#[test]
fn a_diff_over_an_empty_layer() {
    mount_shape("lowerdir=c/diff:c/empty", false, &[("from-container", "c")]);
}

#[test]
fn a_layer_named_through_its_symlink_and_dotdot() {
    mount_shape(
        "lowerdir=l/MID/../diff1:l/BASE,upperdir=c/diff,workdir=c/work",
        true,
        &[
            ("from-diff1", "diff1"),
            ("shared", "base"),
            ("from-container", "c"),
        ],
    );
}

#[test]
fn id_mappings_with_a_stray_colon_and_several_ranges() {
    mount_shape(
        &format!("{RW},uidmapping=:0:100000:1:1:200000:65535,gidmapping=:0:100000:65536"),
        true,
        &rw_expected(),
    );
}

#[test]
fn squash_xattr_permissions_fsync_and_a_quoted_context() {
    // Without SELinux, context= is dropped with a warning (one line).
    let selinux = Path::new("/sys/fs/selinux/enforce").exists();
    let options = format!("{RW},squash_to_uid=1000,squash_to_gid=1000,xattr_permissions=2,fsync=0");
    mount_shape(&options, true, &rw_expected());
    let with_context = format!("{RW},context=\"system_u:object_r:container_file_t:s0:c1,c2\"");
    let warning = match selinux {
        true => "",
        false => "strata: warning: context= ignored: SELinux is not enabled on this system",
    };
    mount_shape_saying(&with_context, true, &rw_expected(), warning);
}

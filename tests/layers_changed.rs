//! Layers changed under a live mount. Like kernel overlayfs, strata does
//! not promise what such a mount shows until told (its caches, and the
//! kernel's, hold the old layers), but it must never crash or hang over
//! it, and after `SIGUSR1` it must show exactly what a fresh mount of the
//! changed layers shows.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use common::*;

fn make_layers(base: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (top, bottom) = (base.join("top"), base.join("bottom"));
    for d in ["bottom/d/sub", "bottom/gone_dir/x", "bottom/stays", "top/d"] {
        fs::create_dir_all(base.join(d)).unwrap();
    }
    for (f, text) in [
        ("bottom/f", "old f"),
        ("bottom/d/a", "a"),
        ("bottom/d/sub/b", "b"),
        ("bottom/gone_file", "gone"),
        ("bottom/stays/s", "s"),
        ("top/d/t", "t"),
        ("top/replaced", "old replaced"),
    ] {
        fs::write(base.join(f), text).unwrap();
    }
    (top, bottom)
}

/// Every kind of change a layer can get, in both layers.
fn change_layers(top: &Path, bottom: &Path) {
    fs::write(bottom.join("new_file"), "new").unwrap();
    fs::write(top.join("f.tmp"), "new f, in the top layer").unwrap();
    fs::rename(top.join("f.tmp"), top.join("f")).unwrap();
    fs::write(top.join("replaced.tmp"), "replaced").unwrap();
    fs::rename(top.join("replaced.tmp"), top.join("replaced")).unwrap();
    fs::remove_file(bottom.join("gone_file")).unwrap();
    fs::remove_dir_all(bottom.join("gone_dir")).unwrap();
    fs::create_dir_all(bottom.join("new_dir/deep")).unwrap();
    fs::write(bottom.join("new_dir/deep/n"), "n").unwrap();
    // A whiteout and an opaque directory appear in the top layer.
    mknod_chr(&top.join("stays"), 0, 0).unwrap();
    let o = run_with_timeout(
        std::process::Command::new("setfattr")
            .args(["-n", "trusted.overlay.opaque", "-v", "y"])
            .arg(top.join("d")),
        Duration::from_secs(10),
    );
    assert!(o.success(), "{o}");
    symlink("new_file", top.join("link")).unwrap();
    fs::remove_file(bottom.join("d/sub/b")).unwrap();
}

fn check(writable: bool) {
    let base = common::tempdir();
    let (top, bottom) = make_layers(base.path());
    let uw = UpperWork::new();
    let mut spec = MountSpec::new(vec![top.clone(), bottom.clone()]);
    if writable {
        spec = spec.with_upper(&uw);
    }
    let live = StrataMount::mount(&spec);
    let before = walk(live.path());
    assert!(before.contains_key(Path::new("gone_file")));

    // Readers all through the changes: whatever they see, nothing breaks.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (root, stop) = (live.path().to_path_buf(), stop.clone());
        thread::spawn(move || {
            let mut walks = 0u32;
            while !stop.load(Ordering::Relaxed) {
                for entry in walkdir_names(&root) {
                    let _ = fs::read(&entry);
                }
                walks += 1;
            }
            walks
        })
    };
    change_layers(&top, &bottom);
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let walks = reader.join().unwrap();
    assert!(walks > 0);
    assert!(
        !live.stderr_log().contains("panicked"),
        "{}",
        live.stderr_log()
    );

    for &pid in live.daemon_pids() {
        // SAFETY: kill(2) of the daemon this test started.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGUSR1) }, 0);
    }
    let fresh_uw = UpperWork::new();
    let mut fresh_spec = MountSpec::new(vec![top.clone(), bottom.clone()]);
    if writable {
        fresh_spec = fresh_spec.with_upper(&fresh_uw);
    }
    let fresh = StrataMount::mount(&fresh_spec);
    let expected = walk(fresh.path());
    fresh.unmount().unwrap();
    assert!(expected.contains_key(Path::new("new_dir/deep/n")));
    assert!(!expected.contains_key(Path::new("stays")));
    // The signal is handled apart from requests: give it a moment.
    let mut problems = Vec::new();
    for _ in 0..50 {
        thread::sleep(Duration::from_millis(100));
        let refreshed = walk(live.path());
        problems = view_diff("refreshed", &refreshed, "fresh mount", &expected);
        if problems.is_empty() {
            break;
        }
    }
    assert!(
        problems.is_empty(),
        "after SIGUSR1 (writable: {writable}):\n{}",
        problems.join("\n")
    );
    // And it still serves writes as before.
    if writable {
        fs::write(live.path().join("new_file"), "written").unwrap();
        assert_eq!(
            fs::read_to_string(uw.upper.join("new_file")).unwrap(),
            "written"
        );
    }
    live.unmount().unwrap();
}

/// Every path under `root` (not following symlinks), for the readers.
fn walkdir_names(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

#[test]
fn read_only_mount_after_sigusr1() {
    check(false);
}

#[test]
fn writable_mount_after_sigusr1() {
    check(true);
}

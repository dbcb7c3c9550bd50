//! Crash safety: the daemon is killed (SIGKILL) in the middle of writes,
//! and what the dead daemon left behind must be a state a clean run could
//! have stopped in. Needs root, /dev/fuse, kernel overlayfs and
//! fusermount3.
//!
//! # `killed_during_copy_up`
//!
//! The daemon is killed at moments spread over the copy-up of a 128 MiB
//! lower file: the upper then holds the whole copy or none, never a partial
//! file, the lower is untouched, and the next mount removes what the dead
//! daemon left in the workdir and shows the file whole.
//!
//! # `killed_during_renames`, `killed_during_whiteouts`
//!
//! SIGKILL loops over random scripts (one kind per test) on two lower
//! layers: merged, opaque (`trusted.overlay.opaque`), whited-out (a 0/0
//! device) and lower-only directories, a 64-entry directory, files of up
//! to 512 KiB, a symlink, a fifo, other owners, modes and `user.*` xattrs
//! (`build_lowers`).
//!
//! * Renames: a fixed setup (upper files, a copy-up, two whiteouts, an
//!   upper directory, the 64-entry `c/` emptied into an upper copy of 64
//!   whiteouts, the lower directory `n/` deleted), then random ops: files
//!   over existing upper and lower files, lower files (copied up first)
//!   and directories (lower-only, merged, redirected, opaque; a redirect
//!   is written) to new names and over whiteouts (names of deleted lower
//!   objects), directories over empty directories (mostly emptied merged
//!   ones, as `c/`), `RENAME_EXCHANGE` of any two entries; each rename
//!   away from a lower name leaves a whiteout. Mixed in: some unlink,
//!   rmdir, emptying of small directories, mkdir, symlink, mkfifo and
//!   create (often over whiteouts), chmod and open-for-write (a copy-up).
//! * Whiteouts: the same setup without the `c/` and `n/` deletions, then
//!   unlink and rmdir storms (whole trees deleted entry by entry, depth
//!   first, lower `c/` included), single unlinks of lower-only, copied-up
//!   and upper files, rmdir of emptied merged directories (an upper copy
//!   full of whiteouts, swapped for a whiteout) and of opaque ones, mkdir
//!   over deleted names (opaque directories, some with a file in them),
//!   files, symlinks and fifos over deleted names, chmod and open-for-write
//!   of lower files (copy-ups, whose later unlink replaces an upper file by
//!   a whiteout), and renames onto deleted names.
//!
//! Each iteration:
//!
//! 1. The script is generated against kernel overlayfs
//!    (`redirect_dir=on,index=on`, what strata implements; `volatile`
//!    only because its upper is thrown away) on a fresh upper over the same
//!    lowers: the setup, then 30 (renames) or 60 (whiteouts) workload ops,
//!    each a single syscall. A random candidate op is kept only if the
//!    kernel carries it out without an error. Each op gets a class from the
//!    state before it ("rename merged dir over an emptied merged dir",
//!    "delete upper file hiding a lower one", ...).
//! 2. strata (default options) mounts the lowers with a fresh upper and
//!    workdir and runs the setup, then the workload on a thread, and the
//!    daemon is killed (SIGKILL) at a random moment, aimed in turn
//!    (iteration i: group i mod 5) at each group of classes (renames:
//!    file renames, directory renames, directories over directories,
//!    exchanges, the rest; whiteouts: unlinks of lower-only files, of upper
//!    files, rmdirs, creates over whiteouts, the rest): the main thread
//!    waits for a random op of that group to start and kills a random delay
//!    later, uniform between 0 and 1.3 times the mean time strata took for
//!    ops of that class so far (1 ms before one completed). One iteration in
//!    eight is not aimed: the delay is uniform over the whole workload's
//!    expected time, from the start of its first op.
//! 3. The op in flight is the first that failed; every op before it must
//!    have succeeded and it must have failed with ECONNABORTED or ENOTCONN
//!    (the connection died). Any other error fails the test.
//! 4. The dead mount is unmounted (`fusermount3 -u`, else `umount -l`).
//!    Both lower layers must be byte-for-byte unchanged: every entry's
//!    type, mode, owner, size, mtime, ctime, inode number, link count,
//!    device number, symlink target, content and every xattr (`trusted.*`
//!    included), and no entry added or removed.
//! 5. strata mounts again on the same upper and workdir. The workdir must
//!    then hold no `#strata-tmp.*` leftover, and nothing at all but the
//!    shared whiteout and an empty `strata-index` (no lower file here has a
//!    second name).
//! 6. Its merged view (a full lstat walk: type, mode, owner, size, link
//!    count, content, symlink target, device number, `user.*` xattrs, the
//!    names readdir gives) must equal the view of kernel overlayfs replaying
//!    the script on a fresh upper up to just before the op in flight, or to
//!    just after it (to the end if none was). So each name the op touched
//!    is in its old state or its new one: a renamed object is at its old
//!    name XOR its new one, with its content; never at neither, never at
//!    both (a duplicate), never partly written, never a lower object
//!    showing through where it was whited out; and nothing else changed.
//!    File mtimes compare exactly (copy-up and rename keep them), except
//!    those set while the script ran, which compare as "recent". Not
//!    compared with the replay, which wrote another upper: inode numbers,
//!    and directories' mtimes and sizes (a copy-up restores its parent's
//!    times in a second step, in the kernel too, and a directory's size
//!    follows the whiteouts its upper copy holds).
//! 7. The differential check: kernel overlayfs mounts the post-crash upper
//!    as the top lower layer over the same lowers (read-only,
//!    `redirect_dir=on`). Its view must equal strata's exactly (directory
//!    mtimes and sizes included), and so must which paths share an inode;
//!    strata's view must keep the inode rules too (d_ino == st_ino, unique
//!    numbers, one st_dev, no name twice in readdir): the kernel reads
//!    strata's upper the way strata does. (Where the kernel's own view
//!    breaks an inode rule, that is printed, not failed, as in
//!    write_path.rs.)
//!
//! At the end the figures are printed (`--nocapture`): iterations, kills
//! with an op in flight (of them: the daemon had done it or not), between
//! two ops or after the last, kills that left temporary files in the
//! workdir, and all of that per class and group. The test fails if, over
//! 10 iterations or more, fewer than half of the kills had an op in
//! flight, or, over 20 or more, a group had none. A failure prints the
//! script with the op in flight, what each of its names was before, after
//! and in strata's view, both reference views' differences from strata's,
//! and the upper directory.
//!
//! Not covered here: hard-linked lower files (the index), the rootless
//! formats (`.wh.` files, `user.overlay.*`), `metacopy=on`, and upper
//! filesystems without RENAME_WHITEOUT.
//!
//! Environment:
//!
//! * `CRASH_ITERS=N`: iterations of each loop (default 60 renames and 40
//!   whiteout scripts: the whole file takes about 20 s on an idle 2-core
//!   machine, 36 s next to other builds); the long mode is e.g.
//!   `CRASH_ITERS=300` (under 3 minutes);
//! * `CRASH_SEED=N` (decimal or 0x hex): the seed, printed at the start of
//!   each loop (else taken from the clock); iteration i uses
//!   seed + i × 0x9e3779b97f4a7c15;
//! * `CRASH_REPEAT=I`: every iteration takes `CRASH_SEED` itself as its
//!   seed (so the same script) and aims as iteration I does (so at the
//!   same op): that op is killed again and again, the exact moment
//!   depending on timing. A failure prints the `CRASH_SEED` and
//!   `CRASH_REPEAT` that replay it;
//! * `CRASH_TRACE=1`: one line per iteration (the op killed, its class,
//!   the state found, leftovers).

mod common;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use common::*;

const SIZE: usize = 128 << 20;

/// Whether the first `len` bytes of `a` and `b` are equal.
fn same_prefix(a: &Path, b: &Path, len: usize) -> bool {
    let (mut a, mut b) = (File::open(a).unwrap(), File::open(b).unwrap());
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut left = len;
    while left > 0 {
        let n = left.min(x.len());
        a.read_exact(&mut x[..n]).unwrap();
        b.read_exact(&mut y[..n]).unwrap();
        if x[..n] != y[..n] {
            return false;
        }
        left -= n;
    }
    true
}

fn workdir_leftovers(work: &Path) -> Vec<String> {
    fs::read_dir(work)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("#strata-tmp."))
        .collect()
}

#[test]
fn killed_during_copy_up() {
    let layers = tempdir();
    let lower = layers.path().join("lower");
    fs::create_dir(&lower).unwrap();
    {
        // Data everywhere (no holes to skip), different in every MiB.
        let mut f = File::create(lower.join("big")).unwrap();
        let mut chunk = vec![0u8; 1 << 20];
        for i in 0..SIZE >> 20 {
            chunk
                .iter_mut()
                .enumerate()
                .for_each(|(j, b)| *b = (i * 7 + j) as u8);
            f.write_all(&chunk).unwrap();
        }
    }
    // What the lower file must still be at the end.
    let pristine = layers.path().join("pristine");
    fs::copy(lower.join("big"), &pristine).unwrap();
    // How long one copy-up takes here, so that the kills land at fixed
    // fractions of it whatever the machine's speed.
    let time_one = || {
        let uw = UpperWork::new();
        let m = StrataMount::mount(&MountSpec::new(vec![lower.clone()]).with_upper(&uw));
        let started = std::time::Instant::now();
        OpenOptions::new()
            .append(true)
            .open(m.path().join("big"))
            .unwrap();
        let took = started.elapsed();
        m.unmount().unwrap();
        took
    };
    // The second: the lower file is in the page cache then, as below.
    let copy_up = time_one().min(time_one());
    let mut delays: Vec<u64> = [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.5, 3.0]
        .iter()
        .map(|f| (copy_up.as_secs_f64() * 1000.0 * f) as u64)
        .collect();
    let mut outcomes = Vec::new();
    let mut round = 0;
    while let Some(delay_ms) = delays.get(round).copied() {
        round += 1;
        let uw = UpperWork::new();
        let spec = MountSpec::new(vec![lower.clone()]).with_upper(&uw);
        let m = StrataMount::mount(&spec);
        let target = m.path().join("big");
        let writer = thread::spawn(move || {
            // The first write-open copies the file up; then one more line.
            OpenOptions::new()
                .append(true)
                .open(&target)
                .and_then(|mut f| f.write_all(b"tail"))
        });
        thread::sleep(Duration::from_millis(delay_ms));
        for &pid in m.daemon_pids() {
            // SAFETY: plain kill(2) of the daemon this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let wrote = writer.join().unwrap().is_ok();
        drop(m); // cleans up the dead mount

        let upper_copy = uw.upper.join("big");
        let state = match fs::metadata(&upper_copy) {
            Err(_) => "none".to_string(),
            Ok(meta) => {
                let len = meta.len() as usize;
                assert!(
                    len == SIZE || len == SIZE + 4,
                    "killed after {delay_ms} ms: a partial copy of {len} bytes in the upper"
                );
                assert!(
                    same_prefix(&upper_copy, &pristine, SIZE),
                    "killed after {delay_ms} ms: the upper copy's content differs"
                );
                format!("whole ({len} bytes)")
            }
        };
        let leftovers = !workdir_leftovers(&uw.work).is_empty();
        outcomes.push(format!(
            "{delay_ms} ms: {state}, workdir leftovers {leftovers}, write {wrote}"
        ));
        assert!(
            fs::metadata(lower.join("big")).unwrap().len() as usize == SIZE
                && same_prefix(&lower.join("big"), &pristine, SIZE),
            "the lower file changed"
        );

        let m = StrataMount::mount(&spec);
        assert_eq!(
            workdir_leftovers(&uw.work),
            Vec::<String>::new(),
            "the next mount left the dead daemon's files in the workdir"
        );
        let merged = m.path().join("big");
        let len = fs::metadata(&merged).unwrap().len() as usize;
        assert!(len == SIZE || len == SIZE + 4, "merged size {len}");
        assert!(same_prefix(&merged, &pristine, SIZE));
        m.unmount().unwrap();
        let mid = outcomes.iter().any(|o| o.contains("leftovers true"));
        let whole = outcomes.iter().any(|o| o.contains("whole"));
        if round == delays.len() && round < 16 {
            let ms = copy_up.as_secs_f64() * 1000.0;
            if !mid {
                delays.push((ms * 0.4) as u64 + round as u64);
            } else if !whole {
                delays.push((ms * 2.0 * round as f64) as u64);
            }
        }
    }
    eprintln!("one copy-up took {copy_up:?}");
    // Kills landed in the middle of a copy (it left a temporary file) and
    // after it, at least once each (a few more rounds in the middle if
    // timing noise kept them from it); else the delays no longer span a
    // copy-up on this machine.
    eprintln!("{outcomes:#?}");
    assert!(
        outcomes.iter().any(|o| o.contains("leftovers true")),
        "{outcomes:#?}"
    );
    assert!(
        outcomes.iter().any(|o| o.contains("whole")),
        "{outcomes:#?}"
    );
}

// ======================================================== SIGKILL loops

/// The reference: kernel overlayfs with the semantics strata implements.
/// `volatile` only skips syncing the upper filesystem (at every unmount,
/// a journal commit): these uppers are thrown away.
const KERNEL_OPTIONS: [&str; 3] = ["redirect_dir=on", "index=on", "volatile"];

/// The two kinds of scripts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mix {
    Renames,
    Whiteouts,
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

/// utimensat(AT_SYMLINK_NOFOLLOW): atime and mtime of `path` itself.
fn set_times(path: &Path, sec: i64) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let ts = [libc::timespec {
        tv_sec: sec as libc::time_t,
        tv_nsec: 123_456_789,
    }; 2];
    // SAFETY: a valid NUL-terminated path and a two-element timespec array.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0, "utimensat {}", path.display());
}

/// Two lower layers, shared by every iteration of a loop (they must never
/// change).
struct Lowers {
    _dir: tempfile::TempDir,
    /// Top first (the lowerdir order).
    dirs: Vec<PathBuf>,
}

/// The layers:
///
/// * base: `a/` (f1..f6, `sub/{g1,g2,deep/h1}`, a `user.*` xattr), `b/`
///   (0750, owned by 1000, f1..f4 and a 512 KiB `big`), `c/` (64 files),
///   `d/e/f/` (a chain with a file at every level), `m/`, `o/`, files
///   `gone`, `top1..3`, `big1` and `big2` (512 KiB each), a symlink `s` and a
///   fifo `p`;
/// * top: `a/f2` and `top2` replaced, `m/` merged (x2 replaced, x3 added),
///   `o/` opaque (its base entries hidden), `gone` whited out (0/0 char
///   device), and `n/` and `q/` only here.
///
/// Every entry's times are set to 2020: the scripts' own times read as
/// "recent", copied ones compare exactly.
fn build_lowers() -> Lowers {
    let dir = tempdir();
    let top = dir.path().join("l1");
    let base = dir.path().join("l0");
    let mut rng = XorShift::new(0x5eed_1a7e_0001);
    let mkdir = |root: &Path, rel: &str, mode: u32| {
        let p = root.join(rel);
        fs::create_dir_all(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    };
    let file = |root: &Path, rel: &str, content: &[u8], mode: u32| {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, content).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    };
    let text = |layer: &str, rel: &str| format!("{rel} from {layer}\n").into_bytes();
    let mut big = |n: usize| {
        let mut v = vec![0u8; n];
        rng.fill(&mut v);
        v
    };

    for (d, mode) in [
        ("a/sub/deep", 0o755),
        ("a/sub", 0o755),
        ("a", 0o755),
        ("b", 0o750),
        ("c", 0o755),
        ("d/e/f", 0o700),
        ("d/e", 0o755),
        ("d", 0o755),
        ("m", 0o755),
        ("o", 0o755),
    ] {
        mkdir(&base, d, mode);
    }
    for i in 1..=6 {
        let rel = format!("a/f{i}");
        file(&base, &rel, &text("base", &rel), 0o644);
    }
    for rel in ["a/sub/g1", "a/sub/g2", "a/sub/deep/h1", "d/k4", "d/e/k3"] {
        file(&base, rel, &text("base", rel), 0o644);
    }
    for rel in ["d/e/f/k1", "d/e/f/k2"] {
        file(&base, rel, &text("base", rel), 0o600);
    }
    for i in 1..=4 {
        let rel = format!("b/f{i}");
        file(&base, &rel, &text("base", &rel), 0o640);
    }
    file(&base, "b/big", &big(512 << 10), 0o644);
    for i in 0..64 {
        let rel = format!("c/e{i:03}");
        file(&base, &rel, &text("base", &rel), 0o644);
    }
    for rel in ["m/x1", "m/x2", "o/o1", "o/o2", "gone", "top2", "top3"] {
        file(&base, rel, &text("base", rel), 0o644);
    }
    file(&base, "top1", &text("base", "top1"), 0o640);
    file(&base, "big1", &big(512 << 10), 0o644);
    file(&base, "big2", &big(512 << 10), 0o600);
    std::os::unix::fs::symlink("a/f1", base.join("s")).unwrap();
    let fifo = CString::new(base.join("p").as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o620) }, 0);
    for p in ["b", "b/f1", "b/big"] {
        std::os::unix::fs::lchown(base.join(p), Some(1000), Some(1000)).unwrap();
    }
    lsetxattr(&base.join("a"), "user.tag", b"base a").unwrap();
    lsetxattr(&base.join("a/f1"), "user.tag", b"base a/f1").unwrap();
    lsetxattr(&base.join("big1"), "user.tag", b"big one").unwrap();
    lsetxattr(&base.join("d/e"), "user.tag", b"base d/e").unwrap();

    for (d, mode) in [
        ("a", 0o755),
        ("m", 0o775),
        ("o", 0o755),
        ("n/sub", 0o755),
        ("n", 0o755),
        ("q", 0o755),
    ] {
        mkdir(&top, d, mode);
    }
    for rel in ["a/f2", "m/x2", "m/x3", "o/o3", "n/n1", "n/n2", "n/sub/n3"] {
        file(&top, rel, &text("top", rel), 0o644);
    }
    file(&top, "top2", &text("top", "top2"), 0o600);
    file(&top, "q/q1", &big(64 << 10), 0o644);
    lsetxattr(&top.join("o"), "trusted.overlay.opaque", b"y").unwrap();
    mknod_chr(&top.join("gone"), 0, 0).unwrap();
    lsetxattr(&top.join("m"), "user.tag", b"top m").unwrap();

    for layer in [&top, &base] {
        for p in layer_snapshot(layer).keys() {
            set_times(&layer.join(p), 1_600_000_000);
        }
    }
    Lowers {
        _dir: dir,
        dirs: vec![top, base],
    }
}

/// Everything about every entry of a layer directory (root included):
/// type and mode, owner, size, mtime, ctime, inode, link count, device
/// number, symlink target, content and every xattr with its value.
fn layer_snapshot(root: &Path) -> BTreeMap<PathBuf, (String, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let full = root.join(&rel);
        let md = fs::symlink_metadata(&full).unwrap();
        let ft = md.file_type();
        let content = if ft.is_file() {
            fs::read(&full).unwrap()
        } else {
            Vec::new()
        };
        let target = fs::read_link(&full).ok();
        let mut xattrs: Vec<(String, Vec<u8>)> = llistxattr(&full)
            .unwrap()
            .into_iter()
            .map(|n| {
                let v = lgetxattr(&full, &n).unwrap();
                (n, v)
            })
            .collect();
        xattrs.sort();
        let meta = format!(
            "mode {:o} {}:{} size {} mtime {}.{} ctime {}.{} ino {} nlink {} rdev {} \
                 target {target:?} xattrs {xattrs:?}",
            md.mode(),
            md.uid(),
            md.gid(),
            md.size(),
            md.mtime(),
            md.mtime_nsec(),
            md.ctime(),
            md.ctime_nsec(),
            md.ino(),
            md.nlink(),
            md.rdev(),
        );
        out.insert(rel.clone(), (meta, content));
        if ft.is_dir() {
            for e in fs::read_dir(&full).unwrap() {
                stack.push(rel.join(e.unwrap().file_name()));
            }
        }
    }
    out
}

/// Every visible path of a mounted tree ("" left out) and its type.
fn names(root: &Path) -> BTreeMap<String, Kind> {
    let mut out = BTreeMap::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let p = join(&rel, &e.file_name().into_string().unwrap());
            let kind = Kind::of(e.file_type().unwrap());
            if kind == Kind::Dir {
                stack.push(p.clone());
            }
            out.insert(p, kind);
        }
    }
    out
}

/// A script: the setup (run before any kill) and the workload.
struct Script {
    setup: Vec<Op>,
    work: Vec<Op>,
    /// What each workload op is, judged before it ran ("rename lower-only
    /// dir over a whiteout", ...): kills are aimed by class, and counted.
    class: Vec<String>,
}

fn setup_ops(mix: Mix) -> Vec<Op> {
    let mut v = vec![
        Op::Create("u1", 0o644, b"upper file u1\n"),
        Op::Create("a/u2", 0o600, b"upper file a/u2\n"),
        Op::Create("m/u3", 0o644, b"upper file m/u3\n"),
        Op::Chmod("a/f3", 0o600), // copied up
        Op::OpenRw("b/f2"),       // copied up, nothing else
        Op::Unlink("a/f5"),       // a whiteout
        Op::Unlink("top3"),
        Op::Mkdir("newdir", 0o755), // an upper-only directory
        Op::CreateExcl("newdir/k", 0o644),
    ];
    if mix == Mix::Renames {
        // c/ becomes an empty merged directory: an upper copy holding 64
        // whiteouts over a lower directory of 64 files.
        for i in 0..64 {
            v.push(Op::Unlink(leak(format!("c/e{i:03}"))));
        }
        // n/ (a lower directory) becomes a whiteout.
        for p in ["n/n1", "n/n2", "n/sub/n3"] {
            v.push(Op::Unlink(p));
        }
        v.push(Op::Rmdir("n/sub"));
        v.push(Op::Rmdir("n"));
    }
    v
}

fn kernel_spec(lowers: &Lowers, uw: &UpperWork) -> MountSpec {
    let mut spec = MountSpec::new(lowers.dirs.clone()).with_upper(uw);
    for o in KERNEL_OPTIONS {
        spec = spec.with_option(o);
    }
    spec
}

/// Builds a workload against a kernel overlay mount, one candidate op at a
/// time; only the ones the kernel carries out are kept.
struct Gen<'a> {
    rng: &'a mut XorShift,
    mnt: &'a Path,
    upper: &'a Path,
    lowers: &'a [PathBuf],
    since: SystemTime,
    tree: BTreeMap<String, Kind>,
    /// Names deleted or moved away (their whiteouts are where new objects
    /// and renames can go).
    deleted: Vec<String>,
    counter: usize,
    work: Vec<Op>,
    class: Vec<String>,
}

impl Gen<'_> {
    /// What `p` is now, as far as the upper layer is concerned: "lower-only
    /// file", "upper file over a lower one", "merged dir", "redirected dir"...
    fn what(&self, p: &str) -> String {
        let up = self.upper.join(p);
        let in_lower = self
            .lowers
            .iter()
            .any(|l| fs::symlink_metadata(l.join(p)).is_ok());
        let kind = match self.tree.get(p) {
            Some(Kind::Dir) => "dir",
            Some(_) => "file",
            None => return "nothing".into(),
        };
        let origin = match fs::symlink_metadata(&up) {
            Err(_) => "lower-only",
            Ok(md) if md.is_dir() => {
                if lgetxattr(&up, "trusted.overlay.opaque").is_ok_and(|v| v == b"y") {
                    "opaque"
                } else if lgetxattr(&up, "trusted.overlay.redirect").is_ok() {
                    "redirected"
                } else if in_lower {
                    "merged"
                } else {
                    "upper"
                }
            }
            Ok(_) if in_lower => return format!("upper {kind} hiding a lower one"),
            Ok(_) => "upper",
        };
        format!("{origin} {kind}")
    }

    /// Where a new object or a moved one goes.
    fn target(&self, p: &str) -> String {
        let up = self.upper.join(p);
        match (self.tree.get(p), fs::symlink_metadata(&up)) {
            (None, Ok(md)) if md.file_type().is_char_device() && md.rdev() == 0 => {
                "over a whiteout".into()
            }
            (None, _) => "to a new name".into(),
            (Some(Kind::Dir), Ok(md)) if md.is_dir() => {
                if fs::read_dir(&up).unwrap().next().is_some() {
                    "over an emptied merged dir".into()
                } else {
                    "over an empty upper dir".into()
                }
            }
            (Some(_), _) => {
                let what = self.what(p);
                let article = if what.starts_with(['a', 'e', 'i', 'o', 'u']) {
                    "an"
                } else {
                    "a"
                };
                format!("over {article} {what}")
            }
        }
    }

    /// The class of `op` in the current state (see `Script::class`).
    fn classify(&self, op: &Op) -> String {
        let what = |p: &str| self.what(p);
        match *op {
            Op::Rename(a, b) => format!("rename {} {}", what(a), self.target(b)),
            Op::RenameExchange(a, b) => {
                let (x, y) = (what(a), what(b));
                let (x, y) = if x <= y { (x, y) } else { (y, x) };
                format!("exchange {x} with {y}")
            }
            Op::Unlink(p) | Op::Rmdir(p) => format!("delete {}", what(p)),
            Op::Chmod(p, _) => format!("chmod {}", what(p)),
            Op::OpenRw(_) => "open for writing (copy-up)".into(),
            Op::Mkdir(p, _) => format!("mkdir {}", self.target(p)),
            Op::Symlink(_, p) | Op::Mkfifo(p, _) | Op::CreateExcl(p, _) => {
                format!("create {}", self.target(p))
            }
            _ => op.to_string(),
        }
    }

    fn try_op(&mut self, op: Op) -> bool {
        let class = self.classify(&op);
        let outcome = apply(self.mnt, &op, self.since);
        if outcome != Outcome::Ok {
            return false;
        }
        match op {
            Op::Unlink(p) | Op::Rmdir(p) | Op::Rename(p, _) => self.deleted.push(p.to_owned()),
            _ => {}
        }
        self.work.push(op);
        self.class.push(class);
        self.tree = names(self.mnt);
        true
    }

    fn paths(&self, want: impl Fn(Kind) -> bool) -> Vec<String> {
        self.tree
            .iter()
            .filter(|(_, k)| want(**k))
            .map(|(p, _)| p.clone())
            .collect()
    }

    fn files(&self) -> Vec<String> {
        self.paths(|k| k != Kind::Dir)
    }

    fn dirs(&self) -> Vec<String> {
        self.paths(|k| k == Kind::Dir)
    }

    /// Not in the upper at all: a copy-up is the first step of changing it.
    fn lower_only(&self, p: &str) -> bool {
        fs::symlink_metadata(self.upper.join(p)).is_err()
    }

    fn pick(&mut self, v: &[String]) -> Option<String> {
        (!v.is_empty()).then(|| v[self.rng.below(v.len())].clone())
    }

    /// A file, a lower-only one with probability `lower` (if any).
    fn pick_file(&mut self, lower: f64) -> Option<String> {
        let files = self.files();
        let lower_files: Vec<String> = files
            .iter()
            .filter(|p| self.lower_only(p))
            .cloned()
            .collect();
        if !lower_files.is_empty() && (self.rng.below(1000) as f64) < lower * 1000.0 {
            return self.pick(&lower_files);
        }
        self.pick(&files)
    }

    /// A name to create or move to: a deleted name (over its whiteout)
    /// half of the time, else a new name in a random directory.
    fn dest(&mut self) -> String {
        let free: Vec<String> = self
            .deleted
            .iter()
            .filter(|p| {
                !self.tree.contains_key(*p)
                    && p.rsplit_once('/')
                        .is_none_or(|(d, _)| self.tree.get(d) == Some(&Kind::Dir))
            })
            .cloned()
            .collect();
        if !free.is_empty() && self.rng.below(2) == 0 {
            return self.pick(&free).unwrap();
        }
        let mut dirs = self.dirs();
        dirs.push(String::new());
        let dir = self.pick(&dirs).unwrap();
        self.counter += 1;
        join(&dir, &format!("new{}", self.counter))
    }

    fn new_object(&mut self, at: String) -> bool {
        let at = leak(at);
        self.counter += 1;
        let op = match self.rng.below(4) {
            0 => Op::Mkdir(at, 0o755),
            1 => Op::Symlink(leak(format!("target-{}", self.counter)), at),
            2 => Op::Mkfifo(at, 0o640),
            _ => Op::CreateExcl(at, 0o644),
        };
        self.try_op(op)
    }

    fn step(&mut self, mix: Mix, len: usize) {
        let r = self.rng.below(100);
        let related = |a: &str, b: &str| {
            a == b || b.starts_with(&format!("{a}/")) || a.starts_with(&format!("{b}/"))
        };
        match mix {
            Mix::Renames => match r {
                // A file over an existing (lower or upper) file.
                0..20 => {
                    let (Some(a), Some(b)) = (self.pick_file(0.5), self.pick_file(0.3)) else {
                        return;
                    };
                    if a != b {
                        self.try_op(Op::Rename(leak(a), leak(b)));
                    }
                }
                // A file to a new or deleted name.
                20..35 => {
                    let Some(a) = self.pick_file(0.6) else { return };
                    let b = self.dest();
                    self.try_op(Op::Rename(leak(a), leak(b)));
                }
                // A directory to a new or deleted name.
                35..50 => {
                    let dirs = self.dirs();
                    let Some(a) = self.pick(&dirs) else { return };
                    let b = self.dest();
                    if !related(&a, &b) {
                        self.try_op(Op::Rename(leak(a), leak(b)));
                    }
                }
                // A directory over an empty one, preferably an emptied
                // merged one (c/ after the setup): its upper copy holds
                // whiteouts.
                50..62 => {
                    let dirs = self.dirs();
                    let empty: Vec<String> = dirs
                        .iter()
                        .filter(|d| !self.tree.keys().any(|p| p.starts_with(&format!("{d}/"))))
                        .cloned()
                        .collect();
                    let emptied: Vec<String> = empty
                        .iter()
                        .filter(|d| {
                            fs::read_dir(self.upper.join(d))
                                .is_ok_and(|mut entries| entries.next().is_some())
                        })
                        .cloned()
                        .collect();
                    let b = if !emptied.is_empty() && self.rng.below(10) < 7 {
                        self.pick(&emptied)
                    } else {
                        self.pick(&empty)
                    };
                    let (Some(a), Some(b)) = (self.pick(&dirs), b) else {
                        return;
                    };
                    if !related(&a, &b) {
                        self.try_op(Op::Rename(leak(a), leak(b)));
                    }
                }
                // Any two entries swapped.
                62..74 => {
                    let all: Vec<String> = self.tree.keys().cloned().collect();
                    let (Some(a), Some(b)) = (self.pick(&all), self.pick(&all)) else {
                        return;
                    };
                    if !related(&a, &b) {
                        self.try_op(Op::RenameExchange(leak(a), leak(b)));
                    }
                }
                74..78 => self.delete_one(),
                // Empties a small directory: another emptied merged one, if
                // it had lower entries.
                78..82 => {
                    let dirs = self.dirs();
                    let Some(d) = self.pick(&dirs) else { return };
                    let files: Vec<String> = self
                        .tree
                        .iter()
                        .filter(|(p, k)| {
                            **k != Kind::Dir
                                && p.strip_prefix(&format!("{d}/"))
                                    .is_some_and(|rest| !rest.contains('/'))
                        })
                        .map(|(p, _)| p.clone())
                        .collect();
                    if files.len() <= 6 && self.tree.len() > 1 {
                        for f in files {
                            self.try_op(Op::Unlink(leak(f)));
                        }
                    }
                }
                82..90 => {
                    let at = self.dest();
                    self.new_object(at);
                }
                90..95 => {
                    if let Some(a) = self.pick_file(1.0) {
                        self.try_op(Op::OpenRw(leak(a)));
                    }
                }
                _ => self.chmod_one(),
            },
            Mix::Whiteouts => match r {
                0..30 => {
                    if let Some(a) = self.pick_file(0.6) {
                        self.try_op(Op::Unlink(leak(a)));
                    }
                }
                // A storm: a whole tree deleted, depth first.
                30..45 => {
                    let dirs = self.dirs();
                    let Some(d) = self.pick(&dirs) else { return };
                    let mut under: Vec<(String, Kind)> = self
                        .tree
                        .iter()
                        .filter(|(p, _)| p.starts_with(&format!("{d}/")))
                        .map(|(p, k)| (p.clone(), *k))
                        .collect();
                    // Deepest first; files before their directories.
                    under.sort_by_key(|(p, _)| std::cmp::Reverse(p.matches('/').count()));
                    under.push((d, Kind::Dir));
                    for (p, k) in under {
                        if self.work.len() >= len {
                            break;
                        }
                        let p = leak(p);
                        self.try_op(if k == Kind::Dir {
                            Op::Rmdir(p)
                        } else {
                            Op::Unlink(p)
                        });
                    }
                }
                45..57 => self.rmdir_empty(),
                // A directory over a deleted name (opaque), maybe with a
                // file in it.
                57..67 => {
                    let at = self.dest();
                    if self.try_op(Op::Mkdir(leak(at.clone()), 0o755)) && self.rng.below(2) == 0 {
                        self.try_op(Op::CreateExcl(leak(join(&at, "inside")), 0o644));
                    }
                }
                67..77 => {
                    let at = self.dest();
                    self.new_object(at);
                }
                77..88 => self.chmod_one(),
                88..94 => {
                    if let Some(a) = self.pick_file(1.0) {
                        self.try_op(Op::OpenRw(leak(a)));
                    }
                }
                _ => {
                    let Some(a) = self.pick_file(0.5) else { return };
                    let b = self.dest();
                    self.try_op(Op::Rename(leak(a), leak(b)));
                }
            },
        }
    }

    fn delete_one(&mut self) {
        if self.rng.below(2) == 0 {
            if let Some(a) = self.pick_file(0.5) {
                self.try_op(Op::Unlink(leak(a)));
            }
        } else {
            self.rmdir_empty();
        }
    }

    fn rmdir_empty(&mut self) {
        let dirs = self.dirs();
        let empty: Vec<String> = dirs
            .into_iter()
            .filter(|d| !self.tree.keys().any(|p| p.starts_with(&format!("{d}/"))))
            .collect();
        if let Some(d) = self.pick(&empty) {
            self.try_op(Op::Rmdir(leak(d)));
        }
    }

    fn chmod_one(&mut self) {
        let all: Vec<String> = self.tree.keys().cloned().collect();
        let target = if self.rng.below(2) == 0 {
            self.pick_file(1.0)
        } else {
            self.pick(&all)
        };
        let mode = self.rng.pick(&[0o600, 0o640, 0o700, 0o751, 0o644]);
        if let Some(a) = target {
            self.try_op(Op::Chmod(leak(a), mode));
        }
    }
}

/// A random script of `len` workload ops, built against kernel overlayfs.
fn generate(mix: Mix, lowers: &Lowers, rng: &mut XorShift, len: usize) -> Script {
    let uw = UpperWork::new();
    let k = KernelOverlay::mount(&kernel_spec(lowers, &uw));
    let since = SystemTime::now() - Duration::from_secs(2);
    let setup = setup_ops(mix);
    for op in &setup {
        let o = apply(k.path(), op, since);
        assert_eq!(o, Outcome::Ok, "setup step {op} on kernel overlayfs");
    }
    let tree = names(k.path());
    let mut g = Gen {
        rng,
        mnt: k.path(),
        upper: &uw.upper,
        lowers: &lowers.dirs,
        since,
        tree,
        deleted: Vec::new(),
        counter: 0,
        work: Vec::new(),
        class: Vec::new(),
    };
    let mut attempts = 0;
    while g.work.len() < len && attempts < len * 30 {
        attempts += 1;
        g.step(mix, len);
    }
    assert!(
        g.work.len() >= len / 2,
        "only {} of {len} ops generated",
        g.work.len()
    );
    let (work, class) = (g.work, g.class);
    k.unmount().unwrap();
    Script { setup, work, class }
}

/// What is compared with a replay on the kernel (another upper): mtimes
/// set while the script ran read "recent"; directories' mtimes and sizes
/// are left out (see the module doc).
fn reference_view(mut w: Walk, since: SystemTime) -> Walk {
    mask_recent_mtimes(&mut w, since);
    for r in w.values_mut().filter(|r| r.kind == Kind::Dir) {
        r.mtime = (0, 0);
        r.size = 0;
    }
    w
}

/// The kernel's views after the setup and `done` workload ops, and after
/// one more (if there is one), replayed on a fresh upper.
fn replay(lowers: &Lowers, script: &Script, done: usize) -> (Walk, Option<Walk>) {
    let uw = UpperWork::new();
    let k = KernelOverlay::mount(&kernel_spec(lowers, &uw));
    let since = SystemTime::now() - Duration::from_secs(2);
    for op in script.setup.iter().chain(&script.work[..done]) {
        assert_eq!(apply(k.path(), op, since), Outcome::Ok, "replay of {op}");
    }
    let before = reference_view(walk(k.path()), since);
    let after = script.work.get(done).map(|op| {
        assert_eq!(apply(k.path(), op, since), Outcome::Ok, "replay of {op}");
        reference_view(walk(k.path()), since)
    });
    k.unmount().unwrap();
    (before, after)
}

/// The paths an op names.
fn op_paths(op: &Op) -> Vec<&'static str> {
    match *op {
        Op::Rename(a, b) | Op::RenameExchange(a, b) | Op::RenameNoReplace(a, b) => vec![a, b],
        Op::Unlink(p)
        | Op::Rmdir(p)
        | Op::Mkdir(p, _)
        | Op::Mkfifo(p, _)
        | Op::CreateExcl(p, _)
        | Op::Chmod(p, _)
        | Op::OpenRw(p)
        | Op::Symlink(_, p) => vec![p],
        _ => Vec::new(),
    }
}

/// One line per path of the op: before / after / what strata shows, and
/// the name of the problem where it is one of the classic ones.
fn explain(op: &Op, before: &Walk, after: Option<&Walk>, got: &Walk) -> Vec<String> {
    let show_rec = |w: Option<&Walk>, p: &str| match w.and_then(|w| w.get(Path::new(p))) {
        None => "absent".to_string(),
        Some(r) => format!("{} content {:?}", r.summary(), r.content),
    };
    let mut out: Vec<String> = op_paths(op)
        .iter()
        .map(|p| {
            format!(
                "{p}: before {} | after {} | strata {}",
                show_rec(Some(before), p),
                show_rec(after, p),
                show_rec(Some(got), p)
            )
        })
        .collect();
    if let (Op::Rename(a, b), Some(after)) = (op, after) {
        let has = |w: &Walk, p: &str| w.contains_key(Path::new(p));
        if !has(got, a) && !has(got, b) {
            out.push("the renamed object is at neither name".into());
        } else if has(got, a) && has(got, b) && !has(after, a) && has(before, b) == has(after, b) {
            out.push("the renamed object is at both names (a duplicate)".into());
        }
    }
    for (p, r) in got {
        let (b, a) = (before.get(p), after.and_then(|w| w.get(p)));
        let file = |x: Option<&Record>| x.is_some_and(|x| x.kind == Kind::File);
        if b.is_none() && a.is_none() {
            out.push(format!(
                "{}: shown by strata, in neither reference state ({}): a lower object \
                 resurrected, or a leftover",
                show(p),
                r.summary()
            ));
        } else if r.kind == Kind::File
            && (file(b) || file(a))
            && b.is_none_or(|b| b.content != r.content)
            && a.is_none_or(|a| a.content != r.content)
        {
            out.push(format!(
                "{}: content ({} bytes) is neither the old nor the new one: partly written?",
                show(p),
                r.size
            ));
        }
    }
    out
}

/// The groups kills are aimed at, in turn (iteration i at group i mod
/// their number), so each gets its share whatever the script's mix.
fn focus_groups(mix: Mix) -> &'static [&'static str] {
    match mix {
        Mix::Renames => &[
            "rename a file",
            "rename a dir",
            "rename a dir over a dir",
            "exchange",
            "other",
        ],
        Mix::Whiteouts => &[
            "delete a lower-only file",
            "delete an upper file",
            "delete a dir",
            "create over a whiteout",
            "other",
        ],
    }
}

fn focus_of(mix: Mix, class: &str) -> &'static str {
    let dir_over_dir = class.contains(" dir over ") && class.ends_with(" dir");
    match mix {
        Mix::Renames if class.starts_with("rename ") && dir_over_dir => "rename a dir over a dir",
        Mix::Renames if class.starts_with("rename ") && class.contains(" file ") => "rename a file",
        Mix::Renames if class.starts_with("rename ") => "rename a dir",
        Mix::Renames if class.starts_with("exchange ") => "exchange",
        Mix::Whiteouts if class == "delete lower-only file" => "delete a lower-only file",
        Mix::Whiteouts if class.starts_with("delete ") && class.ends_with(" file") => {
            "delete an upper file"
        }
        Mix::Whiteouts if class.starts_with("delete ") => "delete a dir",
        Mix::Whiteouts if class.contains(" over a whiteout") && !class.starts_with("rename") => {
            "create over a whiteout"
        }
        _ => "other",
    }
}

/// Figures of one loop.
#[derive(Default)]
struct Figures {
    iterations: usize,
    ops: usize,
    /// The kill came while the op in flight had started (as the caller saw
    /// it), between two ops, or after the last.
    in_flight: usize,
    between: usize,
    after_end: usize,
    /// Of the in-flight kills: the daemon had finished the op (the new
    /// state), or not (the old).
    in_flight_done: usize,
    in_flight_undone: usize,
    /// `#strata-tmp.*` in the workdir after the kill (the daemon died in a
    /// multi-step operation).
    leftovers: usize,
    /// Per class of the op in flight: kills, of them after the daemon had
    /// done it, and with temporary files left in the workdir.
    by_class: BTreeMap<String, [usize; 3]>,
}

/// The SIGKILL loop (see the module doc).
fn crash_loop(test: &str, mix: Mix, default_iters: usize, len: usize) {
    let started = Instant::now();
    let iters = env_u64("CRASH_ITERS").map_or(default_iters, |n| n as usize);
    let seed = env_u64("CRASH_SEED").unwrap_or_else(|| {
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap();
        t.as_nanos() as u64 ^ (std::process::id() as u64) << 32
    });
    eprintln!("[{test}] seed {seed:#x} (CRASH_SEED), {iters} iterations (CRASH_ITERS)");
    let trace = std::env::var_os("CRASH_TRACE").is_some();
    let repeat = env_u64("CRASH_REPEAT").map(|i| i as usize);
    let lowers = build_lowers();
    let pristine: Vec<_> = lowers.dirs.iter().map(|d| layer_snapshot(d)).collect();
    let mut fig = Figures::default();
    // How long ops of each class took on strata so far (sum, count).
    let mut took: BTreeMap<String, (f64, usize)> = BTreeMap::new();

    for iteration in 0..iters {
        let iter_seed = if repeat.is_some() {
            seed
        } else {
            seed.wrapping_add((iteration as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
        };
        let mut rng = XorShift::new(iter_seed);
        let script = generate(mix, &lowers, &mut rng, len);
        let n = script.work.len();
        // Aimed (see the module doc): this iteration's group of classes in
        // turn, so the rare multi-step ops get their share, then one op of
        // it at random (any op if the script has none of the group); else
        // (free, one in eight) a moment of the whole workload.
        let free = rng.below(8) == 0;
        let groups = focus_groups(mix);
        let focus = groups[repeat.unwrap_or(iteration) % groups.len()];
        let mut of_focus: Vec<usize> = (0..n)
            .filter(|i| focus_of(mix, &script.class[*i]) == focus)
            .collect();
        if of_focus.is_empty() {
            of_focus = (0..n).collect();
        }
        let target = if free {
            0
        } else {
            of_focus[rng.below(of_focus.len())]
        };
        let fraction = (rng.below(1_000_001) as f64) / 1_000_000.0;
        let expect = |i: usize| {
            took.get(&script.class[i])
                .map_or(1e-3, |(sum, count)| sum / *count as f64)
        };
        let delay = Duration::from_secs_f64(if free {
            fraction * (0..n).map(expect).sum::<f64>()
        } else {
            fraction * 1.3 * expect(target)
        });

        // The run on strata, killed.
        let uw = UpperWork::new();
        let spec = MountSpec::new(lowers.dirs.clone()).with_upper(&uw);
        let since = SystemTime::now() - Duration::from_secs(2);
        let m = StrataMount::mount(&spec);
        for op in &script.setup {
            assert_eq!(apply(m.path(), op, since), Outcome::Ok, "setup step {op}");
        }
        let progress = Arc::new((Mutex::new(0usize), Condvar::new()));
        let worker = {
            let (root, work, progress) = (
                m.path().to_path_buf(),
                script.work.clone(),
                progress.clone(),
            );
            thread::spawn(move || {
                let mut record = Vec::new();
                for (i, op) in work.iter().enumerate() {
                    *progress.0.lock().unwrap() = i + 1;
                    progress.1.notify_all();
                    let start = Instant::now();
                    let outcome = apply(&root, op, since);
                    record.push((start, start.elapsed(), outcome.clone()));
                    if outcome != Outcome::Ok {
                        break;
                    }
                }
                *progress.0.lock().unwrap() = usize::MAX;
                progress.1.notify_all();
                record
            })
        };
        {
            let (lock, cv) = &*progress;
            let mut started_ops = lock.lock().unwrap();
            while *started_ops <= target {
                started_ops = cv.wait(started_ops).unwrap();
            }
        }
        thread::sleep(delay);
        let kill_at = Instant::now();
        for &pid in m.daemon_pids() {
            // SAFETY: plain kill(2) of the daemon this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let record = worker.join().unwrap();
        m.unmount().expect("unmounting the dead mount");

        let failed = record.iter().position(|r| r.2 != Outcome::Ok);
        let done = failed.unwrap_or(record.len());
        let context = |what: &str| {
            let mut s = format!(
                "[{test}] iteration {iteration} (CRASH_SEED={iter_seed:#x} CRASH_REPEAT={} \
                 kills this script's op again and again), killed {delay:?} after op #{target} started{}: {what}\n\
                 script ({} setup ops, then):\n",
                repeat.unwrap_or(iteration),
                if free {
                    " (not aimed: from the first op)"
                } else {
                    ""
                },
                script.setup.len()
            );
            for (i, op) in script.work.iter().enumerate() {
                let mark = if i == done { "  <== in flight" } else { "" };
                s += &format!("  #{i:02} {op}{mark}\n");
            }
            s += "upper after the kill:\n";
            for l in upper_listing(&upper_walk(&uw.upper)) {
                s += &format!("  {l}\n");
            }
            s
        };
        if let Some(i) = failed {
            let e = record[i].2.errno();
            assert!(
                matches!(e, Some(libc::ECONNABORTED | libc::ENOTCONN)),
                "{}",
                context(&format!(
                    "op #{i} failed with {} (not the dead connection's error)",
                    record[i].2
                ))
            );
        }
        for (i, (_, t, _)) in record.iter().enumerate().take(done) {
            let e = took.entry(script.class[i].clone()).or_default();
            e.0 += t.as_secs_f64();
            e.1 += 1;
        }
        let in_flight = failed.is_some_and(|i| record[i].0 <= kill_at);

        // 4. The lowers.
        for (dir, before) in lowers.dirs.iter().zip(&pristine) {
            let now = layer_snapshot(dir);
            if &now != before {
                let diff: Vec<String> = before
                    .iter()
                    .filter(|(p, v)| now.get(*p) != Some(*v))
                    .map(|(p, v)| {
                        let now = now.get(p).map(|n| &n.0);
                        format!("{}: was {} now {now:?} (or the content)", p.display(), v.0)
                    })
                    .chain(
                        now.keys()
                            .filter(|p| !before.contains_key(*p))
                            .map(|p| format!("{}: new", p.display())),
                    )
                    .collect();
                panic!(
                    "{}",
                    context(&format!("lower layer {} changed: {diff:#?}", dir.display()))
                );
            }
        }
        // 5. The workdir after a remount.
        let leftovers = workdir_leftovers(&uw.work).len();
        let m = StrataMount::mount(&spec);
        let left = workdir_leftovers(&uw.work);
        assert!(
            left.is_empty(),
            "{}",
            context(&format!("the remount left {left:?} in the workdir"))
        );
        // Nothing else either: the shared whiteout and the index, empty
        // (no lower file here has a second name).
        let mut work: Vec<String> = fs::read_dir(&uw.work)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        work.sort();
        let index = fs::read_dir(uw.work.join("strata-index")).map(|d| d.count());
        assert!(
            work.iter()
                .all(|n| n == "strata-index" || n == "strata-whiteout")
                && index.as_ref().is_ok_and(|n| *n == 0),
            "{}",
            context(&format!(
                "the workdir holds {work:?} after the remount (strata-index: {index:?} entries)"
            ))
        );
        let got_raw = walk(m.path());
        m.unmount().unwrap();

        // 6. A state the kernel goes through.
        let got = reference_view(got_raw.clone(), since);
        let (before, after) = replay(&lowers, &script, done);
        let vs_before = view_diff("kernel before the op", &before, "strata", &got);
        let vs_after = after
            .as_ref()
            .map(|a| view_diff("kernel after the op", a, "strata", &got));
        let state = if vs_before.is_empty() {
            "old"
        } else if vs_after.as_ref().is_some_and(|d| d.is_empty()) {
            "new"
        } else {
            let mut what = String::from(
                "the merged view after the remount is neither the state before the op in flight nor the one after it\n",
            );
            if let Some(op) = script.work.get(done) {
                for l in explain(op, &before, after.as_ref(), &got) {
                    what += &format!("  * {l}\n");
                }
            }
            what += "differences from the state before:\n";
            for l in vs_before.iter().take(40) {
                what += &format!("    {l}\n");
            }
            if let Some(d) = &vs_after {
                what += "differences from the state after:\n";
                for l in d.iter().take(40) {
                    what += &format!("    {l}\n");
                }
            }
            panic!("{}", context(&what));
        };

        // 7. The kernel reading the same upper.
        let mut stack = vec![uw.upper.clone()];
        stack.extend(lowers.dirs.iter().cloned());
        let k = KernelOverlay::mount(&MountSpec::new(stack).with_option("redirect_dir=on"));
        let by_kernel = walk(k.path());
        k.unmount().unwrap();
        let problems: Vec<String> = equivalence_problems("kernel", &by_kernel, "strata", &got_raw)
            .into_iter()
            .filter(|p| {
                let quirk = p.starts_with("[kernel] ");
                if quirk {
                    eprintln!("[{test}] note: kernel overlayfs itself: {p}");
                }
                !quirk
            })
            .collect();
        if !problems.is_empty() {
            panic!(
                "{}",
                context(&format!(
                    "kernel overlayfs reads the upper differently from strata: {problems:#?}"
                ))
            );
        }

        if trace {
            let what = match failed {
                None => "after the last op".to_string(),
                Some(i) => format!(
                    "{} #{i} {} ({}), state {state}",
                    if in_flight { "in flight:" } else { "before" },
                    script.work[i],
                    script.class[i]
                ),
            };
            eprintln!(
                "[{test}] #{iteration}: target #{target}{} +{delay:?}: {what}, leftovers {leftovers}",
                if free { " (free)" } else { "" }
            );
        }
        fig.iterations += 1;
        fig.ops += n;
        if leftovers > 0 {
            fig.leftovers += 1;
        }
        match failed {
            None => fig.after_end += 1,
            Some(_) if !in_flight => fig.between += 1,
            Some(i) => {
                fig.in_flight += 1;
                let c = fig.by_class.entry(script.class[i].clone()).or_default();
                c[0] += 1;
                if state == "new" {
                    fig.in_flight_done += 1;
                    c[1] += 1;
                } else {
                    fig.in_flight_undone += 1;
                }
                if leftovers > 0 {
                    c[2] += 1;
                }
            }
        }
    }
    eprintln!(
        "[{test}] {} iterations ({} workload ops), {} kills in {:.1} s: {} with an op in flight \
         ({} of them after the daemon had done it, {} before), {} between two ops, {} after the \
         last op; {} left temporary files in the workdir (removed by the remount)",
        fig.iterations,
        fig.ops,
        fig.iterations,
        started.elapsed().as_secs_f64(),
        fig.in_flight,
        fig.in_flight_done,
        fig.in_flight_undone,
        fig.between,
        fig.after_end,
        fig.leftovers,
    );
    eprintln!(
        "[{test}] the op in flight when killed, by class: kills / of them after the daemon \
         had done it / of them with temporary files left in the workdir"
    );
    let mut by_focus: BTreeMap<&str, usize> = BTreeMap::new();
    for (class, [k, d, l]) in &fig.by_class {
        eprintln!("    {class}: {k} / {d} / {l}");
        *by_focus.entry(focus_of(mix, class)).or_default() += k;
    }
    eprintln!("[{test}] by group: {by_focus:?}");
    // The kills must land in the ops, and in each group of them, or the
    // loop tests less than it says. (Over a few iterations, or all aimed
    // at one op, that need not hold.)
    if iters >= 10 {
        assert!(
            fig.in_flight * 2 >= fig.iterations,
            "fewer than half the kills landed during an op: the delays miss the ops"
        );
    }
    if iters >= 20 && repeat.is_none() {
        for group in focus_groups(mix) {
            assert!(
                by_focus.get(group).is_some_and(|k| *k > 0),
                "no kill landed in an op of group {group:?}: {by_focus:?}"
            );
        }
    }
}

#[test]
fn killed_during_renames() {
    crash_loop("killed_during_renames", Mix::Renames, 60, 30);
}

#[test]
fn killed_during_whiteouts() {
    crash_loop("killed_during_whiteouts", Mix::Whiteouts, 40, 60);
}

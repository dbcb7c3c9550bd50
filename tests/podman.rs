//! End to end with the real podman: strata as containers-storage's overlay
//! `mount_program`, against podman's native kernel overlay driver.
//!
//! The same scenario runs on two private storages (each with its own
//! storage.conf, graphroot and runroot): one with
//! `[storage.options.overlay] mount_program = "<strata>"`, one without it,
//! where podman mounts the kernel's overlayfs itself, with
//! `mountopt = "redirect_dir=on,index=on"`: the kernel semantics strata
//! implements (directory renames with redirects, hard links kept across
//! copy-up), and the option that makes containers-storage make layers and
//! `podman diff` with its naive diff (walking the mounted layer against its
//! mounted parent), as it always does with a mount_program. (With the
//! kernel's defaults it tars the upper directory instead, and directory
//! mtimes in images then differ by the diff algorithm alone.) Both start
//! from one base image made here from Debian's static busybox
//! (`podman import`, no registry, no network), then:
//!
//! 1. `podman run` a script that copies up (appends to lower files, chmod),
//!    deletes files and directories, recreates a deleted file, renames a
//!    file and a lower directory, makes an opaque directory
//!    (`rm -rf d && mkdir d`), and prints a listing of the container's root
//!    file system (type, mode, owner, size, links, md5 or symlink target);
//! 2. `podman diff` of that container, `podman commit` of it;
//! 3. `podman build` of a multi-step Containerfile (files and directories
//!    added, changed, deleted, recreated with other content, renamed,
//!    replaced by the other type; opaque directories; COPY; a hard link; a
//!    fifo), then `podman run` of the result printing the same listing;
//! 4. `podman image mount` of the committed and of the built image, each
//!    walked in full (`common::walk`: types, modes, owners, sizes, mtimes
//!    of everything older than the test, contents, symlinks, xattrs, which
//!    paths share an inode).
//!
//! Every output and walk must be the same on both storages. On the strata
//! storage the container's root file system and the image mounts must be
//! FUSE mounts served by a live strata daemon (so the test cannot pass on the
//! kernel driver by accident), and after every podman command that ends a
//! container or unmounts an image no strata daemon may be left for that
//! storage.
//!
//! Isolation: podman runs in a private mount namespace (a holder process
//! made by `unshare --mount`; each podman command joins it with `nsenter`),
//! where `/var/lib` and `/run` are kernel overlays whose upper directories
//! are in the test's temporary directory: podman's blob-info cache
//! (`/var/lib/containers/cache`, which nothing can redirect for root),
//! runc's state in `/run/runc` and `/run/containers` never reach the real
//! ones, and no mount made by podman or strata is visible outside. The test
//! reads the namespace's mounts through `/proc/HOLDER/mountinfo` and
//! `/proc/HOLDER/root/...`.
//!
//! Rootless (`rootless_podman_on_strata_matches_rootless_kernel_overlay`):
//! the same scenario with podman run by uid 1000 (its passwd entry if the
//! host has none, a subordinate id range and a /dev/fuse it may open are
//! bind-mounted over the host's in the private namespace only), against
//! rootless podman's native driver: the kernel's overlayfs mounted by
//! podman in its user namespace with `userxattr` (which refuses
//! `redirect_dir=on` and `index=on`; the naive diff is chosen through
//! podman's cached feature check). podman runs strata there, as uid 0 of
//! that namespace, mounting FUSE itself. The listings, `podman diff` and
//! the walks must be equal but for one hard link the kernel breaks at
//! copy-up without `index=on` (KEPT_LINK), which strata must keep. Every
//! strata daemon serving an image mount must run as the user in podman's
//! user namespace, and the mounts are looked for in the mount namespace of
//! podman's pause process; a strata mount there is readable only from that
//! user namespace, so the walks run in this test binary again under
//! `podman unshare` (as does `podman image mount`, which rootless podman
//! refuses outside it). Needs `newuidmap`/`newgidmap` (uidmap) too.
//!
//! Fails when podman is not installed (`.ci/run` installs it). Needs root,
//! /dev/fuse, kernel overlayfs, busybox-static (`/bin/busybox`),
//! util-linux's `unshare`/`nsenter`, GNU tar and an OCI runtime: runc when it
//! is installed (crun refuses hybrid cgroup v1/v2 hosts), else podman's
//! default.

mod common;

use common::*;

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

/// Every file of the base image has this mtime (tar --mtime), so mtimes the
/// scenario must keep (copy-up, directories left alone) are compared, and
/// everything the scenario wrote is newer than the test's start.
const BASE_MTIME: i64 = 1_700_000_000;
const BASE_IMAGE: &str = "localhost/strata-test/base:latest";
const EDITED_IMAGE: &str = "localhost/strata-test/edited:latest";
const BUILT_IMAGE: &str = "localhost/strata-test/built:latest";
const EDIT_CONTAINER: &str = "strata-test-edit";
/// One podman command (a build is several containers).
const PODMAN_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a strata daemon may outlive the podman command that unmounted
/// its file system.
const DAEMON_EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Prints one line per path of the container's root file system; paths that
/// podman mounts over (/proc, /dev, /etc/hosts, ...) are left out.
const SNAPSHOT: &str = r#"#!/bin/sh
mounts=$(awk '$2 != "/" { print $2 }' /proc/mounts)
find / -xdev | sort | while IFS= read -r p; do
  skip=
  for m in $mounts; do [ "$p" = "$m" ] && skip=1; done
  [ -n "$skip" ] && continue
  t=$(stat -c %F "$p")
  case "$t" in
    directory) echo "$p|dir|$(stat -c '%a|%u:%g|%s' "$p")" ;;
    "symbolic link") echo "$p|symlink|$(stat -c '%u:%g' "$p")|$(readlink "$p")" ;;
    "regular file"|"regular empty file")
      sum=$(md5sum < "$p")
      echo "$p|file|$(stat -c '%a|%u:%g|%s|%h' "$p")|${sum%% *}" ;;
    *) echo "$p|$t|$(stat -c '%a|%u:%g|%s|%h' "$p")" ;;
  esac
done
"#;

/// The `podman run` of step 1, on the base image. The first line describes
/// the container's root file system (type, source, options), the rest is
/// SNAPSHOT's.
const EDIT_SCRIPT: &str = r#"set -e
awk '$2 == "/" { print "ROOTFS " $3 " " $1 " " $4 }' /proc/mounts
echo appended >> /etc/motd
echo more >> /srv/keep/a.txt
chmod 600 /srv/keep/b.txt
dd if=/dev/zero bs=1024 count=8 2>/dev/null | tr '\0' 'y' >> /srv/big.bin
rm /srv/delete-me.txt
rm -rf /srv/gone
rm /srv/recreate.txt
echo recreated > /srv/recreate.txt
mv /srv/rename-me.txt /srv/renamed.txt
mv /srv/olddir /srv/newdir
echo changed-after-rename >> /srv/newdir/inner/n.txt
rm -rf /srv/opaque
mkdir /srv/opaque
echo fresh > /srv/opaque/new.txt
mkdir -p /srv/new/deep
echo n > /srv/new/deep/f
ln -s ../keep/a.txt /srv/new/link
rm /var/log/old.log
/usr/local/bin/snapshot
"#;

/// Step 3. /data/gone is deleted in one step and made again, with other
/// content, in a later one; /data/opaque and /srv/opaque are opaque
/// directories; /data/to-file and /data/to-dir change type; files and a
/// directory (one of the build's, one of the base image's) are renamed, then
/// changed in a later step.
const CONTAINERFILE: &str = r#"FROM localhost/strata-test/base:latest
RUN mkdir -p /data/keep /data/gone/sub /data/opaque/sub /data/movedir/inner /data/to-file && \
    echo one > /data/keep/a.txt && echo orig > /data/keep/orig.txt && \
    ln /data/keep/orig.txt /data/keep/hard.txt && echo two > /data/gone/sub/b.txt && \
    echo lower > /data/opaque/old.txt && echo deep > /data/opaque/sub/deep.txt && \
    echo m > /data/movedir/inner/m.txt && echo r > /data/rename-me.txt && \
    echo del > /data/delete-me.txt && echo x > /data/to-file/x && echo f > /data/to-dir && \
    mkfifo /data/fifo && echo base-edit >> /srv/keep/a.txt && : > /data/empty
RUN echo appended >> /data/keep/a.txt && rm -rf /data/gone && rm /data/delete-me.txt && \
    mv /data/rename-me.txt /data/renamed.txt && mv /data/movedir /data/moved && \
    rm -rf /data/opaque && mkdir /data/opaque && echo fresh > /data/opaque/new.txt && \
    rm -rf /data/to-file && echo now-a-file > /data/to-file && \
    rm /data/to-dir && mkdir /data/to-dir && echo in > /data/to-dir/in && \
    mv /srv/olddir /srv/moved-base && rm -rf /srv/opaque && mkdir /srv/opaque && \
    touch /srv/opaque/empty && rm /srv/recreate.txt
COPY copied.txt /data/copied.txt
RUN mkdir /data/gone && echo again > /data/gone/c.txt && echo back > /data/delete-me.txt && \
    echo m2 >> /data/moved/inner/m.txt && chmod 600 /data/keep/a.txt && \
    ln -s keep/a.txt /data/link && mv /data/renamed.txt /data/renamed-twice.txt && \
    echo more >> /srv/moved-base/inner/n.txt && echo recreated > /srv/recreate.txt && \
    dd if=/dev/zero bs=1024 count=64 2>/dev/null | tr '\0' 'z' >> /srv/big.bin && \
    echo copied-then-changed >> /data/copied.txt
RUN rm -rf /data/moved && mkdir -p /data/moved/other && echo different > /data/moved/other/file && \
    rm -rf /data/opaque/new.txt && echo newer > /data/opaque/newer.txt
"#;

// ================================================================ helpers

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// /bin/busybox, which must be statically linked (busybox-static): the
/// image has no libc.
fn static_busybox() -> PathBuf {
    let p = PathBuf::from("/bin/busybox");
    let elf = fs::read(&p).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: the podman test needs Debian's busybox-static \
             (apt-get install busybox-static)",
            p.display()
        )
    });
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    assert!(
        elf.len() > 64 && elf.starts_with(b"\x7fELF\x02\x01"),
        "{}: not a 64-bit little-endian ELF file",
        p.display()
    );
    let phoff = u64::from_le_bytes(elf[32..40].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    let dynamic = (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        elf.get(o..o + 4) == Some(&3u32.to_le_bytes()[..]) // PT_INTERP
    });
    assert!(
        !dynamic,
        "{} is dynamically linked: the podman test needs busybox-static \
         (apt-get install busybox-static)",
        p.display()
    );
    p
}

fn run_ok(cmd: &mut Command, what: &str) -> CmdOutput {
    let o = run_with_timeout(cmd, PODMAN_TIMEOUT);
    assert!(o.success(), "{what} failed: {o}");
    o
}

fn write(path: &Path, content: &str) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// The base image's tree: busybox with a symlink per applet, the listing
/// script, and the files and directories the scenario changes.
fn make_base_tar(dir: &Path, busybox: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in [
        "bin",
        "etc",
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "root",
        "usr/local/bin",
        "var/log",
    ] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    set_mode(&root.join("tmp"), 0o1777);
    set_mode(&root.join("root"), 0o700);
    fs::copy(busybox, root.join("bin/busybox")).unwrap();
    set_mode(&root.join("bin/busybox"), 0o755);
    let list = run_ok(Command::new(busybox).arg("--list"), "busybox --list");
    for applet in list
        .stdout
        .lines()
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    let snapshot = root.join("usr/local/bin/snapshot");
    write(&snapshot, SNAPSHOT);
    set_mode(&snapshot, 0o755);
    write(&root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n");
    write(&root.join("etc/group"), "root:x:0:\n");
    write(&root.join("etc/motd"), "welcome\n");
    write(&root.join("var/log/old.log"), "old\n");
    let srv = root.join("srv");
    for (p, c) in [
        ("keep/a.txt", "a\n"),
        ("keep/b.txt", "b\n"),
        ("gone/1.txt", "1\n"),
        ("gone/sub/2.txt", "2\n"),
        ("opaque/x.txt", "x\n"),
        ("opaque/sub/y.txt", "y\n"),
        ("olddir/m.txt", "m\n"),
        ("olddir/inner/n.txt", "n\n"),
        ("rename-me.txt", "rename me\n"),
        ("delete-me.txt", "delete me\n"),
        ("recreate.txt", "first\n"),
    ] {
        write(&srv.join(p), c);
    }
    let big: String = (0..300_000u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    write(&srv.join("big.bin"), &big);
    // Two names of one file, one of them written to by the edit script.
    fs::hard_link(srv.join("keep/a.txt"), srv.join("keep/a-hard.txt")).unwrap();
    write(&srv.join("links/one"), "linked\n");
    fs::hard_link(srv.join("links/one"), srv.join("links/two")).unwrap();
    symlink("keep/b.txt", srv.join("link-to-b")).unwrap();
    set_mode(&srv.join("olddir/inner"), 0o750);

    let tar = dir.join("base.tar");
    run_ok(
        Command::new("tar")
            .args(["--numeric-owner", "--owner=0", "--group=0", "--sort=name"])
            .arg(format!("--mtime=@{BASE_MTIME}"))
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
        "tar of the base image",
    );
    tar
}

/// (pid, argv) of every live (not zombie) process whose argv contains
/// `needle`, the test's own process excluded.
fn processes_with_arg(needle: &str) -> Vec<(u32, Vec<String>)> {
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let (Ok(stat), Ok(cmdline)) = (
            fs::read_to_string(e.path().join("stat")),
            fs::read(e.path().join("cmdline")),
        ) else {
            continue;
        };
        // The state is the first field after the parenthesised name.
        let state = stat.rsplit_once(')').map(|(_, r)| r.trim_start());
        if state.is_none_or(|s| s.starts_with('Z')) {
            continue;
        }
        let argv: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if argv.iter().any(|a| a.contains(needle)) {
            out.push((pid, argv));
        }
    }
    out
}

fn kill_pid(pid: u32) {
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

/// Lines of `a` missing from `b` and the reverse, as a short report.
fn text_diff(a_name: &str, a: &str, b_name: &str, b: &str) -> Vec<String> {
    let (la, lb): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let mut out = Vec::new();
    for l in la.iter().filter(|l| !lb.contains(l)) {
        out.push(format!("only on {a_name}: {l}"));
    }
    for l in lb.iter().filter(|l| !la.contains(l)) {
        out.push(format!("only on {b_name}: {l}"));
    }
    if out.is_empty() && la != lb {
        out.push(format!(
            "same lines in another order or multiplicity:\n--- {a_name}\n{a}\n--- {b_name}\n{b}"
        ));
    }
    out
}

// ====================================================== the mount namespace

/// A process in a private mount namespace, with /var/lib and /run overlaid
/// by directories of the test, for podman to run in.
struct Namespace {
    holder: Child,
}

impl Namespace {
    fn new(dir: &Path) -> Namespace {
        // cat exits when the test lets go of its stdin (also if the test dies).
        let holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn `unshare --mount` (util-linux)");
        let ns = Namespace { holder };
        let own = fs::read_link("/proc/self/ns/mnt").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while fs::read_link(format!("/proc/{}/ns/mnt", ns.pid())).ok() == Some(own.clone()) {
            assert!(
                Instant::now() < deadline,
                "unshare --mount did not make a mount namespace"
            );
            thread::sleep(Duration::from_millis(10));
        }
        for (target, name) in [("/run", "run"), ("/var/lib", "var-lib")] {
            let (upper, work) = (dir.join(name).join("upper"), dir.join(name).join("work"));
            fs::create_dir_all(&upper).unwrap();
            fs::create_dir_all(&work).unwrap();
            run_ok(
                ns.command("mount")
                    .args(["-n", "-t", "overlay", "overlay", "-o"])
                    .arg(format!(
                        "lowerdir={target},upperdir={},workdir={}",
                        upper.display(),
                        work.display()
                    ))
                    .arg(target),
                &format!("overlay over {target} in the private mount namespace"),
            );
        }
        ns
    }

    fn pid(&self) -> u32 {
        self.holder.id()
    }

    /// `program` run inside the namespace.
    fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--target={}", self.pid()))
            .arg("--mount")
            .arg("--")
            .arg(program);
        c
    }

    /// A path of the namespace, as seen from the test.
    fn outside(&self, path: &Path) -> PathBuf {
        Path::new(&format!("/proc/{}/root", self.pid())).join(path.strip_prefix("/").unwrap())
    }

    /// (mount point, fstype, source) of every mount of the namespace.
    fn mounts(&self) -> Vec<(PathBuf, String, String)> {
        mountinfo(self.pid()).expect("read the namespace's mountinfo")
    }

    /// What rootless podman needs as `user` that the host may not give:
    /// a passwd entry, subordinate id ranges (`/etc/subuid`, `/etc/subgid`)
    /// and a /dev/fuse it may open. Temporary copies with the extra lines
    /// and a 0666 node made in `dir` are bind-mounted over the host's, in
    /// this namespace only. Returns the user's name.
    fn rootless(&self, dir: &Path, user: User) -> String {
        fs::create_dir_all(dir).unwrap();
        let passwd = fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
        let name = passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() > 2 && f[2] == user.uid.to_string())
            .map(|f| f[0].to_owned());
        let mut files = Vec::new();
        let name = name.unwrap_or_else(|| {
            let name = "strata-podman".to_owned();
            let line = format!("{name}:x:{}:{}::/nonexistent:/bin/sh\n", user.uid, user.gid);
            files.push(("/etc/passwd", passwd.clone() + &line));
            name
        });
        for target in ["/etc/subuid", "/etc/subgid"] {
            // Missing on a host where no user was ever added: nothing to
            // bind over (Debian's passwd package makes them).
            let host = fs::read_to_string(target).unwrap_or_else(|e| {
                panic!("{target}: {e}: rootless podman needs it (Debian's passwd package)")
            });
            let host = if host.is_empty() || host.ends_with('\n') {
                host
            } else {
                host + "\n"
            };
            files.push((
                target,
                format!("{host}{name}:{SUBID_START}:{SUBID_COUNT}\n"),
            ));
        }
        for (target, content) in files {
            let copy = dir.join(Path::new(target).file_name().unwrap());
            write(&copy, &content);
            set_mode(&copy, 0o644);
            self.bind(&copy, Path::new(target));
        }
        let node = dir.join("fuse");
        common::rootless::world_fuse_node(&node);
        self.bind(&node, Path::new("/dev/fuse"));
        name
    }

    fn bind(&self, from: &Path, to: &Path) {
        run_ok(
            self.command("mount")
                .arg("-n")
                .arg("--bind")
                .arg(from)
                .arg(to),
            &format!(
                "bind {} over {} in the private mount namespace",
                from.display(),
                to.display()
            ),
        );
    }

    /// The mounts at or below `dir`, deepest first.
    fn mounts_under(&self, dir: &Path) -> Vec<(PathBuf, String, String)> {
        let mut v: Vec<_> = self
            .mounts()
            .into_iter()
            .filter(|(p, _, _)| p.starts_with(dir))
            .collect();
        v.reverse();
        v
    }

    fn stop(&mut self) {
        drop(self.holder.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.holder.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        self.stop();
    }
}

/// (mount point, fstype, source) of every mount of the mount namespace of
/// process `pid`.
fn mountinfo(pid: u32) -> Option<Vec<(PathBuf, String, String)>> {
    let text = fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
    Some(
        text.lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split(' ').collect();
                let sep = f.iter().position(|x| *x == "-")?;
                Some((
                    PathBuf::from(f.get(4)?.replace("\\040", " ")),
                    f.get(sep + 1)?.to_string(),
                    f.get(sep + 2)?.to_string(),
                ))
            })
            .collect(),
    )
}

// ================================================================ storages

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Driver {
    /// overlay with `mount_program = strata`
    Strata,
    /// overlay without a mount_program: podman mounts the kernel's
    /// overlayfs (with `redirect_dir=on,index=on`)
    Kernel,
}

/// The unprivileged user of the rootless test.
#[derive(Clone, Copy, Debug)]
struct User {
    uid: u32,
    gid: u32,
}

const ROOTLESS_USER: User = User {
    uid: 1000,
    gid: 1000,
};
/// The user's subordinate uid and gid range (in the test's namespace only).
const SUBID_START: u32 = 200_000;
const SUBID_COUNT: u32 = 65_536;

/// The name of a storage in messages (and a rootful one's directory).
fn storage_name(driver: Driver, rootless: bool) -> &'static str {
    match (driver, rootless) {
        (Driver::Strata, false) => "strata",
        (Driver::Kernel, false) => "kernel",
        (Driver::Strata, true) => "rootless-strata",
        (Driver::Kernel, true) => "rootless-kernel",
    }
}

/// One private podman setup: configuration files, graphroot, runroot and
/// temporary directories under `dir`.
struct Storage<'a> {
    ns: &'a Namespace,
    driver: Driver,
    /// Rootless: podman runs as this user (in its own user namespace,
    /// whose mounts live in its pause process's mount namespace).
    user: Option<User>,
    podman: PathBuf,
    strata: PathBuf,
    dir: PathBuf,
    graphroot: PathBuf,
    reset_done: bool,
}

/// A lower limit than the caller's own hard limit is always allowed; podman's
/// defaults (1048576) are not, without CAP_SYS_RESOURCE.
fn ulimit(resource: libc::__rlimit_resource_t, want: u64) -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    if unsafe { libc::getrlimit(resource, &mut r) } != 0 {
        return want;
    }
    want.min(r.rlim_max)
}

impl<'a> Storage<'a> {
    fn new(
        ns: &'a Namespace,
        root: &Path,
        driver: Driver,
        podman: &Path,
        user: Option<User>,
    ) -> Storage<'a> {
        // Rootless podman ignores storage.conf's runroot and uses
        // $XDG_RUNTIME_DIR/containers (XDG_RUNTIME_DIR is dir/run). It
        // gives that to the cleanup command conmon runs when a container
        // exits as `--runroot`, which rootless podman refuses if longer
        // than 50 characters (the container is then never unmounted, and
        // `podman run` waits 20 s for the cleanup): short directory names.
        let (dir, runroot) = match user {
            None => {
                let dir = root.join(storage_name(driver, false));
                (dir.clone(), dir.join("run"))
            }
            Some(_) => {
                let dir = root.join(match driver {
                    Driver::Kernel => "rk",
                    Driver::Strata => "rs",
                });
                (dir.clone(), dir.join("run/containers"))
            }
        };
        assert!(
            user.is_none() || runroot.as_os_str().len() <= 50,
            "rootless podman's runroot {} is longer than podman allows (50 bytes): \
             set TMPDIR to a shorter directory",
            runroot.display()
        );
        let graphroot = dir.join("graph");
        let tmp = dir.join("tmp");
        for d in [
            &graphroot,
            &runroot,
            &tmp,
            &dir.join("networks"),
            &dir.join("home"),
        ] {
            fs::create_dir_all(d).unwrap();
        }
        let strata = fs::canonicalize(strata_bin()).expect("the strata binary");
        // Rootless podman ignores graphroot too (for a storage.conf that is
        // not the user's own), but not rootless_storage_path.
        let mut storage_conf = format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{g}\"\nrunroot = \"{}\"\n\
             rootless_storage_path = \"{g}\"\n[storage.options.overlay]\n",
            runroot.display(),
            g = graphroot.display(),
        );
        match (driver, user) {
            (Driver::Strata, _) => {
                writeln!(storage_conf, "mount_program = \"{}\"", strata.display()).unwrap()
            }
            // See the top of the file. `podman info` must then say
            // "Native Overlay Diff: false" on both (checked by scenario).
            (Driver::Kernel, None) => storage_conf += "mountopt = \"redirect_dir=on,index=on\"\n",
            // In a user namespace podman adds `userxattr`, with which the
            // kernel refuses `redirect_dir=on` and `index=on`, and tests
            // native diff as usable. Its cached answer is given instead, so
            // that this storage, too, makes layers with the naive diff.
            (Driver::Kernel, Some(_)) => {
                let cache = runroot.join("overlay");
                fs::create_dir_all(&cache).unwrap();
                write(
                    &cache.join("native-diff()-false"),
                    "naive diff, as with a mount_program (set by the test)",
                );
            }
        }
        write(&dir.join("storage.conf"), &storage_conf);
        let nofile = ulimit(libc::RLIMIT_NOFILE, 4096);
        let nproc = ulimit(libc::RLIMIT_NPROC, 4096);
        let mut conf = format!(
            "[containers]\nnetns = \"none\"\n\
             default_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc={nproc}:{nproc}\"]\n\
             [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
             events_logfile_path = \"{d}/events.log\"\ntmp_dir = \"{d}/libpod-tmp\"\n\
             image_copy_tmp_dir = \"{d}/tmp\"\nstatic_dir = \"{g}/libpod\"\n\
             volume_path = \"{g}/volumes\"\n",
            d = dir.display(),
            g = graphroot.display()
        );
        if find_in_path("runc").is_some() {
            conf += "runtime = \"runc\"\n";
        }
        writeln!(
            conf,
            "[network]\nnetwork_config_dir = \"{}/networks\"",
            dir.display()
        )
        .unwrap();
        write(&dir.join("containers.conf"), &conf);
        write(
            &dir.join("registries.conf"),
            "unqualified-search-registries = []\nshort-name-mode = \"disabled\"\n",
        );
        if let Some(u) = user {
            // XDG_RUNTIME_DIR must be the user's own and private.
            set_mode(&dir.join("run"), 0o700);
            common::rootless::chown_tree(&dir, u.uid, u.gid);
        }
        Storage {
            ns,
            driver,
            user,
            podman: podman.to_path_buf(),
            strata,
            dir,
            graphroot,
            reset_done: false,
        }
    }

    fn name(&self) -> &'static str {
        storage_name(self.driver, self.user.is_some())
    }

    fn podman(&self, args: &[&str]) -> Command {
        // No --root/--runroot: podman then drops storage.conf's driver
        // options, mount_program included (storage.conf names both roots).
        let mut c = match self.user {
            None => self.ns.command(&self.podman),
            Some(u) => {
                let mut c = self.ns.command("setpriv");
                c.arg(format!("--reuid={}", u.uid))
                    .arg(format!("--regid={}", u.gid))
                    .args(["--clear-groups", "--"])
                    .arg(&self.podman)
                    .env("XDG_RUNTIME_DIR", self.dir.join("run"));
                c
            }
        };
        c.args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            .env(
                "CONTAINERS_REGISTRIES_CONF",
                self.dir.join("registries.conf"),
            )
            .env("TMPDIR", self.dir.join("tmp"))
            // podman makes ~/.config/containers/podman even as root.
            .env("HOME", self.dir.join("home"))
            .env("XDG_CONFIG_HOME", self.dir.join("home/.config"))
            .env("XDG_DATA_HOME", self.dir.join("home/.local/share"))
            .env("XDG_CACHE_HOME", self.dir.join("home/.cache"))
            .env_remove("CONTAINER_HOST")
            .env_remove("CONTAINER_CONNECTION");
        c
    }

    /// Runs podman; any failure fails the test.
    fn run(&self, args: &[&str]) -> String {
        run_ok(
            &mut self.podman(args),
            &format!("[{}] podman {}", self.name(), args.join(" ")),
        )
        .stdout
    }

    /// Live strata daemons serving this storage.
    fn daemons(&self) -> Vec<(u32, Vec<String>)> {
        let strata = self.strata.to_string_lossy();
        processes_with_arg(&self.graphroot.to_string_lossy())
            .into_iter()
            .filter(|(_, argv)| argv.first().is_some_and(|a0| *a0 == strata))
            .collect()
    }

    /// No strata daemon may be left once `after` has returned (the daemon
    /// exits when its mount goes; a few moments are allowed for that).
    fn assert_no_daemons(&self, after: &str) {
        let deadline = Instant::now() + DAEMON_EXIT_TIMEOUT;
        loop {
            let left = self.daemons();
            if left.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "[{}] strata daemon(s) still running {}s after {after}:\n{}",
                    self.name(),
                    DAEMON_EXIT_TIMEOUT.as_secs(),
                    left.iter()
                        .map(|(pid, argv)| format!("  {pid}: {}", argv.join(" ")))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Checks that the container's root file system (the ROOTFS line the
    /// edit script prints) is the driver's.
    fn check_rootfs_line(&self, line: &str) {
        let f: Vec<&str> = line.split(' ').collect();
        let (fstype, opts) = (
            f.get(1).copied().unwrap_or(""),
            f.get(3).copied().unwrap_or(""),
        );
        let has = |o: &str| opts.split(',').any(|x| x == o);
        let ok = match (self.driver, self.user) {
            (Driver::Strata, _) => fstype == "fuse" || fstype.starts_with("fuse."),
            (Driver::Kernel, None) => {
                fstype == "overlay" && has("redirect_dir=on") && has("index=on")
            }
            (Driver::Kernel, Some(_)) => fstype == "overlay" && has("userxattr"),
        };
        assert!(
            ok,
            "[{}] the container's root file system is not the driver's: {line:?}",
            self.name()
        );
    }

    /// `podman image mount`, a check that the mount is the driver's (and on
    /// strata, that a strata daemon serves it), a full walk of the image,
    /// `podman image umount`.
    fn walk_image(&self, image: &str, since: SystemTime) -> Walk {
        let out = self.run_in_userns(&["image", "mount", image]);
        let mnt = PathBuf::from(out.trim());
        assert!(
            mnt.starts_with(&self.graphroot),
            "[{}] podman image mount printed {out:?}",
            self.name()
        );
        let mount = self
            .mounts()
            .into_iter()
            .rfind(|(p, _, _)| *p == mnt)
            .unwrap_or_else(|| panic!("[{}] {} is not mounted", self.name(), mnt.display()));
        match self.driver {
            Driver::Strata => {
                assert!(
                    mount.1 == "fuse" || mount.1.starts_with("fuse."),
                    "[{}] image mount {} is {mount:?}, not FUSE",
                    self.name(),
                    mnt.display()
                );
                let mnt_s = mnt.to_string_lossy();
                let serving: Vec<u32> = self
                    .daemons()
                    .into_iter()
                    .filter(|(_, argv)| argv.iter().any(|a| *a == mnt_s))
                    .map(|(pid, _)| pid)
                    .collect();
                assert!(
                    !serving.is_empty(),
                    "[{}] no strata daemon serves {}: {:?}",
                    self.name(),
                    mnt.display(),
                    self.daemons()
                );
                if let Some(u) = self.user {
                    for pid in serving {
                        self.check_rootless_daemon(pid, u);
                    }
                }
            }
            Driver::Kernel => assert_eq!(
                mount.1,
                "overlay",
                "[{}] image mount {} is {mount:?}",
                self.name(),
                mnt.display()
            ),
        }
        let mut w = match self.user {
            None => walk(&self.ns.outside(&mnt)),
            Some(_) => self.walk_in_userns(&mnt),
        };
        mask_recent_mtimes(&mut w, since);
        self.run_in_userns(&["image", "umount", image]);
        self.assert_no_daemons(&format!("podman image umount {image}"));
        w
    }

    /// Runs podman in the user's namespace when rootless (`podman unshare
    /// podman ...`: rootless `podman image mount` refuses to run outside
    /// it), else as `run` does.
    fn run_in_userns(&self, args: &[&str]) -> String {
        if self.user.is_none() {
            return self.run(args);
        }
        let podman = self.podman.to_string_lossy();
        let mut v = vec!["unshare", &*podman];
        v.extend_from_slice(args);
        self.run(&v)
    }

    /// Rootless: the pid of podman's pause process, which holds the user
    /// and mount namespaces every podman command of this storage joins.
    fn pause_pid(&self) -> Option<u32> {
        [
            self.dir.join("libpod-tmp/pause.pid"),
            self.dir.join("run/libpod/tmp/pause.pid"),
        ]
        .iter()
        .filter_map(|p| fs::read_to_string(p).ok()?.trim().parse::<u32>().ok())
        .find(|pid| Path::new(&format!("/proc/{pid}")).exists())
    }

    /// The mounts podman's mounts are made in: the private namespace's,
    /// or rootless, the pause process's.
    fn mounts(&self) -> Vec<(PathBuf, String, String)> {
        if self.user.is_none() {
            return self.ns.mounts();
        }
        let pid = self
            .pause_pid()
            .unwrap_or_else(|| panic!("[{}] no podman pause process", self.name()));
        mountinfo(pid).unwrap_or_else(|| panic!("[{}] mountinfo of pause {pid}", self.name()))
    }

    /// A strata daemon of rootless podman runs as the user, in the user
    /// namespace of podman's pause process (so as root there).
    fn check_rootless_daemon(&self, pid: u32, u: User) {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let ids = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        let (uids, gids) = (ids("Uid:"), ids("Gid:"));
        assert!(
            uids.iter().all(|x| *x == u.uid.to_string())
                && gids.iter().all(|x| *x == u.gid.to_string())
                && !uids.is_empty(),
            "[{}] strata daemon {pid} is not the user's: Uid {uids:?} Gid {gids:?}",
            self.name()
        );
        let userns = |p: &str| fs::read_link(format!("/proc/{p}/ns/user")).ok();
        let pause = self.pause_pid().map(|p| p.to_string());
        assert!(
            userns(&pid.to_string()) != userns("self")
                && pause.is_some()
                && userns(&pid.to_string()) == userns(pause.as_deref().unwrap()),
            "[{}] strata daemon {pid} is not in podman's user namespace: {:?}, pause {pause:?} {:?}, the test's {:?}",
            self.name(),
            userns(&pid.to_string()),
            pause.as_deref().and_then(userns),
            userns("self")
        );
        // Root there: inside the namespace, its uid is 0 (uid_map line
        // "0 <uid> 1").
        let map = fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap_or_default();
        assert!(
            map.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() == 3 && f[0] == "0" && f[1] == u.uid.to_string()
            }),
            "[{}] strata daemon {pid}: uid_map {map:?} does not map 0 to {}",
            self.name(),
            u.uid
        );
    }

    /// Rootless: a strata mount of the user's namespace can be read only
    /// from that namespace (FUSE's allow_other covers the namespace and its
    /// children, not the initial one), so this same test binary walks `mnt`
    /// under `podman unshare` and hands the walk back as text. (Kernel
    /// mounts are walked the same way, for the same view of owners.)
    fn walk_in_userns(&self, mnt: &Path) -> Walk {
        let out = self.dir.join("walk.txt");
        let exe = std::env::current_exe().expect("the test binary's path");
        let exe = exe.to_string_lossy();
        let mut cmd = self.podman(&[
            "unshare",
            &exe,
            "--exact",
            ROOTLESS_TEST,
            "--nocapture",
            "--test-threads=1",
        ]);
        cmd.env(WALK_CHILD_ENV, mnt).env(WALK_OUT_ENV, &out);
        run_ok(
            &mut cmd,
            &format!("[{}] walk of {}", self.name(), mnt.display()),
        );
        let text = fs::read_to_string(&out)
            .unwrap_or_else(|e| panic!("[{}] {}: {e}", self.name(), out.display()));
        fs::remove_file(&out).unwrap();
        walk_from_text(&text)
    }

    /// `podman system reset`, then nothing of this storage may be left:
    /// no mount under its directory, no strata daemon, no other process
    /// (conmon, podman) naming its directory. Whatever is left is removed
    /// and reported.
    fn reset(&mut self) -> Vec<String> {
        self.reset_done = true;
        let mut problems = Vec::new();
        let o = run_with_timeout(
            &mut self.podman(&["system", "reset", "--force"]),
            PODMAN_TIMEOUT,
        );
        if !o.success() {
            problems.push(format!("[{}] podman system reset failed: {o}", self.name()));
        }
        for (mp, fstype, _) in self.ns.mounts_under(&self.dir) {
            problems.push(format!(
                "[{}] left mounted after podman system reset: {} ({fstype})",
                self.name(),
                mp.display()
            ));
            let _ = run_with_timeout(
                self.ns.command("umount").arg("-l").arg(&mp),
                Duration::from_secs(10),
            );
        }
        // Rootless: podman's pause process stays (by design); its mount
        // namespace must hold nothing of this storage. Ending it ends the
        // user namespace.
        if let Some(pid) = self.pause_pid().filter(|_| self.user.is_some()) {
            for (mp, fstype, _) in mountinfo(pid).unwrap_or_default() {
                if mp.starts_with(&self.dir) {
                    problems.push(format!(
                        "[{}] left mounted in podman's namespace after podman system reset: {} ({fstype})",
                        self.name(),
                        mp.display()
                    ));
                }
            }
            kill_pid(pid);
        }
        let deadline = Instant::now() + DAEMON_EXIT_TIMEOUT;
        let mut left = processes_with_arg(&self.dir.to_string_lossy());
        while !left.is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
            left = processes_with_arg(&self.dir.to_string_lossy());
        }
        for (pid, argv) in left {
            problems.push(format!(
                "[{}] process left after podman system reset (killed): {pid}: {}",
                self.name(),
                argv.join(" ")
            ));
            kill_pid(pid);
        }
        problems
    }
}

impl Drop for Storage<'_> {
    fn drop(&mut self) {
        if !self.reset_done {
            for p in self.reset() {
                eprintln!("cleanup: {p}");
            }
        }
    }
}

// ================================================================ scenario

struct Outcome {
    /// The edit script's listing (its ROOTFS line removed).
    edit_listing: String,
    /// `podman diff` of the edited container, sorted.
    diff: String,
    /// SNAPSHOT in a container of the built image.
    built_listing: String,
    /// Walks of `podman image mount` of the committed and the built image.
    edited_walk: Walk,
    built_walk: Walk,
}

fn scenario(s: &Storage, base_tar: &Path, ctx: &Path, since: SystemTime) -> Outcome {
    let t = Instant::now();
    // Both storages must make layers with the same algorithm (see
    // Storage::new).
    let native = s.run(&[
        "info",
        "--format",
        "{{index .Store.GraphStatus \"Native Overlay Diff\"}}",
    ]);
    assert_eq!(
        native.trim(),
        "false",
        "[{}] podman info: Native Overlay Diff",
        s.name()
    );
    s.run(&["import", "--quiet", &base_tar.to_string_lossy(), BASE_IMAGE]);
    s.assert_no_daemons("podman import");

    let out = s.run(&[
        "run",
        "--name",
        EDIT_CONTAINER,
        "--pull=never",
        "--network=none",
        BASE_IMAGE,
        "sh",
        "-c",
        EDIT_SCRIPT,
    ]);
    s.assert_no_daemons("podman run (container exited)");
    let (rootfs, edit_listing) = out.split_once('\n').unwrap_or((&out, ""));
    assert!(
        rootfs.starts_with("ROOTFS "),
        "[{}] unexpected output of the edit script: {out}",
        s.name()
    );
    s.check_rootfs_line(rootfs);

    let mut diff: Vec<String> = s
        .run(&["diff", EDIT_CONTAINER])
        .lines()
        .map(str::to_owned)
        .collect();
    diff.sort();
    s.assert_no_daemons("podman diff");
    s.run(&["commit", "--quiet", EDIT_CONTAINER, EDITED_IMAGE]);
    s.assert_no_daemons("podman commit");
    s.run(&["rm", EDIT_CONTAINER]);
    s.assert_no_daemons("podman rm");

    s.run(&[
        "build",
        "--network=none",
        "--pull=never",
        "--layers",
        "-t",
        BUILT_IMAGE,
        "-f",
        &ctx.join("Containerfile").to_string_lossy(),
        &ctx.to_string_lossy(),
    ]);
    s.assert_no_daemons("podman build");
    let built_listing = s.run(&[
        "run",
        "--rm",
        "--pull=never",
        "--network=none",
        BUILT_IMAGE,
        "/usr/local/bin/snapshot",
    ]);
    s.assert_no_daemons("podman run --rm");

    let edited_walk = s.walk_image(EDITED_IMAGE, since);
    let built_walk = s.walk_image(BUILT_IMAGE, since);
    println!("[{}] scenario took {:.1?}", s.name(), t.elapsed());
    Outcome {
        edit_listing: edit_listing.to_owned(),
        diff: diff.join("\n"),
        built_listing,
        edited_walk,
        built_walk,
    }
}

/// Spot checks of the strata outcome on its own (the comparison with the
/// kernel's finds the rest): the scenario did what it says.
fn expected_problems(o: &Outcome) -> Vec<String> {
    let mut out = Vec::new();
    let has = |listing: &str, prefix: &str| listing.lines().any(|l| l.starts_with(prefix));
    for (listing, name, present, absent) in [
        (
            &o.edit_listing,
            "edit run",
            &[
                "/srv/newdir/inner/n.txt|file|",
                "/srv/renamed.txt|file|",
                "/srv/opaque/new.txt|file|",
                "/srv/recreate.txt|file|",
                "/srv/new/link|symlink|0:0|../keep/a.txt",
                "/srv/keep/b.txt|file|600|",
            ][..],
            &[
                "/srv/olddir",
                "/srv/gone",
                "/srv/delete-me.txt",
                "/srv/rename-me.txt",
                "/srv/opaque/x.txt",
                "/srv/opaque/sub",
                "/var/log/old.log",
            ][..],
        ),
        (
            &o.built_listing,
            "built image",
            &[
                "/data/gone/c.txt|file|",
                "/data/moved/other/file|file|",
                "/data/opaque/newer.txt|file|",
                "/data/to-file|file|",
                "/data/to-dir/in|file|",
                "/data/renamed-twice.txt|file|",
                "/data/copied.txt|file|",
                "/data/fifo|fifo|",
                "/data/keep/hard.txt|file|644|0:0|5|2|",
                "/data/keep/a.txt|file|600|",
                "/srv/moved-base/inner|dir|750|",
                "/srv/moved-base/inner/n.txt|file|",
                "/srv/opaque/empty|file|",
                "/srv/recreate.txt|file|",
            ][..],
            &[
                "/data/gone/sub",
                "/data/moved/inner",
                "/data/movedir",
                "/data/opaque/old.txt",
                "/data/opaque/sub",
                "/data/opaque/new.txt",
                "/data/to-file/x",
                "/data/rename-me.txt",
                "/data/renamed.txt|",
                "/srv/olddir",
                "/srv/opaque/x.txt",
            ][..],
        ),
    ] {
        for p in present {
            if !has(listing, p) {
                out.push(format!("{name}: no line starting with {p:?}"));
            }
        }
        for p in absent {
            if has(listing, p) {
                out.push(format!("{name}: {p:?} should be gone"));
            }
        }
    }
    out
}

/// What both tests start from: the base image's tar, the build context,
/// and the time before anything was written.
struct Setup {
    tmp: tempfile::TempDir,
    base_tar: PathBuf,
    ctx: PathBuf,
    since: SystemTime,
}

fn setup() -> Setup {
    let tmp = tempdir();
    let root = tmp.path();
    let busybox = static_busybox();
    let base_tar = make_base_tar(root, &busybox);
    let ctx = root.join("ctx");
    write(&ctx.join("Containerfile"), CONTAINERFILE);
    write(&ctx.join("copied.txt"), "copied from the build context\n");
    // Whole seconds: image layers are tar files, whose mtimes are.
    let since = SystemTime::UNIX_EPOCH
        + Duration::from_secs(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        );
    Setup {
        tmp,
        base_tar,
        ctx,
        since,
    }
}

fn find_podman() -> PathBuf {
    // .ci/run installs it; a missing podman is a failure, not a skip.
    find_in_path("podman")
        .expect("podman is not installed: apt-get install podman runc busybox-static")
}

/// Runs the scenario on a kernel and a strata storage (as `user` when
/// given), then compares the outcomes.
fn kernel_then_strata(user: Option<User>) {
    let podman = find_podman();
    let started = Instant::now();
    let setup = setup();
    let root = setup.tmp.path();
    let mut ns = Namespace::new(&root.join("ns"));
    if let Some(u) = user {
        // The user must reach its storage, the base tar and the context.
        set_mode(root, 0o755);
        let name = ns.rootless(&root.join("etc"), u);
        println!("rootless podman as {name} (uid {}, gid {})", u.uid, u.gid);
    }
    let mut problems = Vec::new();
    let mut outcomes = Vec::new();
    for driver in [Driver::Kernel, Driver::Strata] {
        let mut s = Storage::new(&ns, root, driver, &podman, user);
        outcomes.push(scenario(&s, &setup.base_tar, &setup.ctx, setup.since));
        problems.extend(s.reset());
    }
    ns.stop();
    assert_no_problems("cleanup", &problems);

    let mut problems = Vec::new();
    if user.is_some() {
        // The kernel in a user namespace cannot keep hard links through
        // copy-up (see KEPT_LINK); strata does, as the kernel does with
        // index=on. Checked on strata's outcome alone, then left out of the
        // comparison.
        problems.extend(kept_link_problems(&outcomes[1]));
        for o in &mut outcomes {
            leave_out(o, KEPT_LINK);
        }
    }
    let (k, s) = (&outcomes[0], &outcomes[1]);
    let (kn, sn) = (
        storage_name(Driver::Kernel, user.is_some()),
        storage_name(Driver::Strata, user.is_some()),
    );
    for (what, a, b) in [
        ("edit run listing", &k.edit_listing, &s.edit_listing),
        ("podman diff", &k.diff, &s.diff),
        ("built image listing", &k.built_listing, &s.built_listing),
    ] {
        problems.extend(
            text_diff(kn, a, sn, b)
                .into_iter()
                .map(|p| format!("{what}: {p}")),
        );
    }
    for (what, a, b) in [
        ("committed image", &k.edited_walk, &s.edited_walk),
        ("built image", &k.built_walk, &s.built_walk),
    ] {
        let mut p = view_diff(kn, a, sn, b);
        p.extend(inode_class_diff(kn, a, sn, b));
        p.extend(inode_rule_violations(b));
        problems.extend(p.into_iter().map(|p| format!("{what}: {p}")));
    }
    problems.extend(expected_problems(s));
    assert_no_problems(&format!("podman on {sn} against podman on {kn}"), &problems);
    println!(
        "podman test ({sn}): {} listing lines, {} + {} walked paths, equal on both storages, in {:.1?}",
        s.edit_listing.lines().count() + s.built_listing.lines().count(),
        s.edited_walk.len(),
        s.built_walk.len(),
        started.elapsed()
    );
}

/// The base image's two names of one file, which both the edit script and
/// the build append to through the first name. With `userxattr` the kernel
/// refuses `index=on`, so rootless podman's native driver copies up that
/// name alone: the other keeps the old content and the link is broken.
/// strata keeps the link, as the kernel does with `index=on` (the rootful
/// test's reference).
const KEPT_LINK: [&str; 2] = ["/srv/keep/a.txt", "/srv/keep/a-hard.txt"];

/// Both names of KEPT_LINK are one file in strata's outcome: the same
/// listing line (but for the name) with two links, one inode in the walks.
fn kept_link_problems(o: &Outcome) -> Vec<String> {
    let mut out = Vec::new();
    for (what, listing) in [
        ("edit run listing", &o.edit_listing),
        ("built image listing", &o.built_listing),
    ] {
        let rest: Vec<Option<&str>> = KEPT_LINK
            .iter()
            .map(|p| {
                listing
                    .lines()
                    .find_map(|l| l.strip_prefix(p)?.strip_prefix('|'))
            })
            .collect();
        let ok = rest[0].is_some()
            && rest[0] == rest[1]
            && rest[0].is_some_and(|r| r.split('|').nth(4) == Some("2"));
        if !ok {
            out.push(format!(
                "{what}: {} and {} are not one file with two links: {rest:?}",
                KEPT_LINK[0], KEPT_LINK[1]
            ));
        }
    }
    let pair: Vec<PathBuf> = KEPT_LINK
        .iter()
        .map(|p| PathBuf::from(p.trim_start_matches('/')))
        .collect();
    for (what, w) in [
        ("committed image", &o.edited_walk),
        ("built image", &o.built_walk),
    ] {
        if !inode_classes(w)
            .iter()
            .any(|c| pair.iter().all(|p| c.contains(p)))
        {
            out.push(format!(
                "{what}: {} and {} do not share an inode",
                KEPT_LINK[0], KEPT_LINK[1]
            ));
        }
    }
    out
}

/// `o` without the paths `paths` (listing and diff lines, walk entries).
fn leave_out(o: &mut Outcome, paths: [&str; 2]) {
    let keep = |text: &str, line_path: fn(&str) -> &str| {
        text.lines()
            .filter(|l| !paths.contains(&line_path(l)))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    };
    fn listing_path(l: &str) -> &str {
        l.split('|').next().unwrap_or("")
    }
    fn diff_path(l: &str) -> &str {
        l.split_once(' ').map_or("", |(_, p)| p)
    }
    o.edit_listing = keep(&o.edit_listing, listing_path);
    o.built_listing = keep(&o.built_listing, listing_path);
    o.diff = keep(&o.diff, diff_path);
    for w in [&mut o.edited_walk, &mut o.built_walk] {
        for p in paths {
            w.remove(Path::new(p.trim_start_matches('/')));
        }
    }
}

#[test]
fn podman_build_and_run_on_strata_match_kernel_overlay() {
    kernel_then_strata(None);
}

// ================================================================ rootless

/// The rootless test's name (its walks run in this binary again).
const ROOTLESS_TEST: &str = "rootless_podman_on_strata_matches_rootless_kernel_overlay";
/// Set, in that child, to the directory to walk ...
const WALK_CHILD_ENV: &str = "STRATA_PODMAN_WALK";
/// ... and to the file for the walk (`walk_to_text`).
const WALK_OUT_ENV: &str = "STRATA_PODMAN_WALK_OUT";

/// Rootless podman (as uid 1000, with a subordinate id range) with strata
/// as its mount_program: podman runs strata in its own user namespace, as
/// uid 0 there, which mounts FUSE itself (no fusermount3). The same
/// scenario on rootless podman's native driver (kernel overlayfs in that
/// user namespace, `userxattr`) is the reference.
#[test]
fn rootless_podman_on_strata_matches_rootless_kernel_overlay() {
    if let Some(mnt) = std::env::var_os(WALK_CHILD_ENV) {
        let out = std::env::var_os(WALK_OUT_ENV).expect("the walk's output file");
        fs::write(out, walk_to_text(&walk(Path::new(&mnt)))).unwrap();
        return;
    }
    kernel_then_strata(Some(ROOTLESS_USER));
}

/// `walk` as text, one line per path, every field of every record
/// (`walk_from_text` reads it back).
fn walk_to_text(w: &Walk) -> String {
    use std::os::unix::ffi::OsStrExt;
    let hex = |b: &[u8]| {
        b.iter()
            .fold(String::from("x"), |s, c| s + &format!("{c:02x}"))
    };
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let list = |v: Vec<String>| v.join(",");
    let mut out = String::new();
    for (p, r) in w {
        let fields = [
            hex(p.as_os_str().as_bytes()),
            format!("{:?}", r.kind),
            r.perm.to_string(),
            r.uid.to_string(),
            r.gid.to_string(),
            r.size.to_string(),
            opt(r.nlink.map(|n| n.to_string())),
            format!("{}:{}", r.mtime.0, r.mtime.1),
            opt(r.content.map(|n| n.to_string())),
            opt(r.symlink.as_ref().map(|t| hex(t.as_bytes()))),
            opt(r.rdev.map(|(a, b)| format!("{a}:{b}"))),
            list(
                r.xattrs
                    .iter()
                    .map(|(n, v)| format!("{}={}", hex(n.as_bytes()), hex(v.as_bytes())))
                    .collect(),
            ),
            opt(r
                .entries
                .as_ref()
                .map(|e| list(e.iter().map(|n| hex(n.as_bytes())).collect()))),
            list(r.errors.iter().map(|e| hex(e.as_bytes())).collect()),
            r.ino.to_string(),
            r.dev.to_string(),
            opt(r.d_ino.map(|n| n.to_string())),
            opt(r.d_type.map(|n| n.to_string())),
            format!("{}:{}", r.dots.0, r.dots.1),
        ];
        out += &fields.join("\t");
        out.push('\n');
    }
    out
}

fn walk_from_text(input: &str) -> Walk {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;
    fn unhex(s: &str) -> Vec<u8> {
        let s = s.strip_prefix('x').expect("hex field");
        (0..s.len() / 2)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }
    fn text(s: &str) -> String {
        String::from_utf8(unhex(s)).unwrap()
    }
    fn opt<T>(s: &str, f: impl FnOnce(&str) -> T) -> Option<T> {
        (s != "-").then(|| f(s))
    }
    fn list(s: &str) -> Vec<&str> {
        if s.is_empty() {
            Vec::new()
        } else {
            s.split(',').collect()
        }
    }
    fn pair<T: std::str::FromStr, U: std::str::FromStr>(s: &str) -> (T, U) {
        let (a, b) = s.split_once(':').unwrap();
        (a.parse().ok().unwrap(), b.parse().ok().unwrap())
    }
    let kinds = [
        Kind::Dir,
        Kind::File,
        Kind::Symlink,
        Kind::Fifo,
        Kind::Socket,
        Kind::CharDev,
        Kind::BlockDev,
        Kind::Unknown,
    ];
    let mut w = Walk::new();
    for line in input.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), 19, "bad walk line {line:?}");
        let r = Record {
            kind: *kinds.iter().find(|k| format!("{k:?}") == f[1]).unwrap(),
            perm: f[2].parse().unwrap(),
            uid: f[3].parse().unwrap(),
            gid: f[4].parse().unwrap(),
            size: f[5].parse().unwrap(),
            nlink: opt(f[6], |s| s.parse().unwrap()),
            mtime: pair(f[7]),
            content: opt(f[8], |s| s.parse().unwrap()),
            symlink: opt(f[9], |s| OsString::from_vec(unhex(s))),
            rdev: opt(f[10], pair),
            xattrs: list(f[11])
                .into_iter()
                .map(|x| {
                    let (n, v) = x.split_once('=').unwrap();
                    (text(n), text(v))
                })
                .collect(),
            entries: opt(f[12], |s| {
                list(s)
                    .into_iter()
                    .map(|n| OsString::from_vec(unhex(n)))
                    .collect()
            }),
            errors: list(f[13]).into_iter().map(text).collect(),
            ino: f[14].parse().unwrap(),
            dev: f[15].parse().unwrap(),
            d_ino: opt(f[16], |s| s.parse().unwrap()),
            d_type: opt(f[17], |s| s.parse().unwrap()),
            dots: pair(f[18]),
        };
        w.insert(PathBuf::from(OsString::from_vec(unhex(f[0]))), r);
    }
    w
}

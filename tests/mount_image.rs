//! `strata mount-image` against the unpacked equivalent.
//!
//! Images are built here: the fixture's three layers (OCI form) and an
//! extra layer made for this test (a whiteout and an opaque directory,
//! hard links, symlinks, xattrs, device nodes, a fifo, long names, files
//! over 1 MiB with and without holes, odd modes, owners and times), packed
//! with GNU tar (`--format=pax --numeric-owner --xattrs`) and assembled
//! into an OCI image layout (one layer gzip-compressed, the others not) and
//! into a `docker save` tarball (its extra layer packed from the kernel
//! form: 0/0 whiteouts and opaque xattrs in the tar). The reference is
//! kernel overlayfs over the same layers unpacked (kernel form): the merged
//! views must be identical (types, modes, owners, sizes, mtimes, contents,
//! symlink targets, xattrs, hard-link groups, readdir against lstat).
//!
//! Also: a writable mount-image against kernel overlayfs running the same
//! script (copy-up from the mapped tar, the upper checked), the gzip cache
//! reused by a second mount, and bad images refused with one line.
//!
//! The measurements (`#[ignore]`d: a ~100k-file image and a 256 MiB file):
//!
//! ```sh
//! cargo test --release --test mount_image -- --ignored --nocapture measure
//! ```
//!
//! Needs root, /dev/fuse, kernel overlayfs, GNU tar, gzip, sha256sum,
//! setfattr.

mod common;

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use tempfile::TempDir;

// ================================================================ helpers

fn sh(cmd: &mut Command) -> String {
    let o = run_with_timeout(cmd, Duration::from_secs(300));
    assert!(o.success(), "{o}");
    o.stdout
}

fn sh_line(line: &str) -> String {
    sh(Command::new("sh").args(["-c", line]))
}

fn sha256_file(path: &Path) -> String {
    let out = sh(Command::new("sha256sum").arg(path));
    out.split_whitespace().next().unwrap().to_owned()
}

fn touch_at(path: &Path, when: &str) {
    sh(Command::new("touch").args(["-h", "-d", when]).arg(path));
}

fn write_pattern(path: &Path, len: usize, seed: u64) {
    let mut rng = XorShift::new(seed);
    let mut buf = vec![0u8; len];
    rng.fill(&mut buf);
    fs::write(path, buf).unwrap();
}

/// Every path under `root` (itself included), parents first.
fn all_paths(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let p = out[i].clone();
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            let mut kids: Vec<_> = fs::read_dir(&p)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            kids.sort();
            out.extend(kids);
        }
        i += 1;
    }
    out
}

/// The extra layer, in kernel overlayfs form (0/0 whiteout, opaque xattr).
/// It goes on top of the fixture's `app:update:base`.
fn make_extra_layer(root: &Path) {
    let p = |rel: &str| root.join(rel);
    for d in [
        "etc",
        "var",
        "big",
        "links/sub",
        "dev",
        "run",
        "modes/sticky",
        "times",
        "xattr/d",
    ] {
        fs::create_dir_all(p(d)).unwrap();
    }
    // A whiteout of base's etc/group; var/ opaque over base and update.
    mknod_chr(&p("etc/group"), 0, 0).unwrap();
    fs::write(p("etc/extra.conf"), "extra=1\n").unwrap();
    lsetxattr(&p("var"), "trusted.overlay.opaque", b"y").unwrap();
    fs::write(p("var/new.txt"), "only this\n").unwrap();
    // Over 1 MiB: random, and with holes (one at the end).
    write_pattern(&p("big/random.bin"), 1_572_864 + 123, 7);
    {
        let mut f = File::create(p("big/holey.bin")).unwrap();
        let mut chunk = vec![0u8; 1 << 20];
        XorShift::new(8).fill(&mut chunk);
        f.write_all(&chunk).unwrap();
        f.set_len(3 << 20).unwrap();
        use std::io::Seek;
        f.seek(std::io::SeekFrom::Start(3 << 20)).unwrap();
        f.write_all(&chunk[..512 * 1024]).unwrap();
        f.set_len((4 << 20) + (512 << 10)).unwrap();
    }
    // Hard links (three names, two directories) and symlinks.
    fs::write(p("links/a"), "linked content\n").unwrap();
    fs::hard_link(p("links/a"), p("links/b")).unwrap();
    fs::hard_link(p("links/a"), p("links/sub/c")).unwrap();
    std::os::unix::fs::symlink("a", p("links/s")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", p("links/abs")).unwrap();
    std::os::unix::fs::symlink("../../../../../etc/shadow", p("links/up")).unwrap();
    // Device nodes and a fifo.
    sh(Command::new("mknod")
        .arg(p("dev/blk"))
        .args(["b", "8", "1"]));
    mknod_chr(&p("dev/tty0"), 4, 0).unwrap();
    sh(Command::new("mkfifo").arg(p("run/extra.fifo")));
    // Modes, owners (one beyond ustar's 7 octal digits).
    for (name, mode) in [("modes/suid", 0o4755), ("modes/sgid", 0o2711)] {
        fs::write(p(name), name).unwrap();
        fs::set_permissions(p(name), fs::Permissions::from_mode(mode)).unwrap();
    }
    fs::set_permissions(p("modes/sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::write(p("modes/owned"), "owned").unwrap();
    std::os::unix::fs::lchown(p("modes/owned"), Some(1234), Some(5678)).unwrap();
    fs::write(p("modes/bigid"), "big ids").unwrap();
    std::os::unix::fs::lchown(p("modes/bigid"), Some(3_000_000), Some(3_000_001)).unwrap();
    fs::write(p("modes/empty"), "").unwrap();
    // Xattrs: text, binary, empty; on a directory.
    fs::write(p("xattr/f"), "x").unwrap();
    lsetxattr(&p("xattr/f"), "user.extra", b"1").unwrap();
    lsetxattr(&p("xattr/f"), "user.bin", &[0, 0xff, 1, b'\n']).unwrap();
    lsetxattr(&p("xattr/f"), "user.empty", b"").unwrap();
    lsetxattr(&p("xattr/d"), "user.dir", b"yes").unwrap();
    // Long names: a 255-byte component, a path far past ustar's 256.
    let long = root
        .join("long")
        .join("x".repeat(255))
        .join("y".repeat(200));
    fs::create_dir_all(&long).unwrap();
    fs::write(long.join("z".repeat(250)), "deep and long").unwrap();
    // Times: every object a fixed one, then the odd ones.
    for path in all_paths(root).into_iter().rev() {
        touch_at(&path, "@1650000000");
    }
    fs::write(p("times/ns"), "ns").unwrap();
    touch_at(&p("times/ns"), "2023-05-06 07:08:09.123456789");
    fs::write(p("times/neg"), "neg").unwrap();
    touch_at(&p("times/neg"), "@-100");
    touch_at(&p("times"), "@1650000000");
}

/// A copy of kernel-form layer `kernel` in OCI form: 0/0 whiteouts become
/// `.wh.NAME` files, opaque xattrs `.wh..wh..opq`; times unchanged.
fn to_oci_form(kernel: &Path, oci: &Path) {
    sh(Command::new("cp").arg("-a").arg(kernel).arg(oci));
    for path in all_paths(oci) {
        let md = fs::symlink_metadata(&path).unwrap();
        let name = path.file_name().unwrap().as_bytes().to_vec();
        if md.file_type().is_char_device_whiteout(md.rdev()) {
            fs::remove_file(&path).unwrap();
            let mut wh = b".wh.".to_vec();
            wh.extend_from_slice(&name);
            fs::write(path.parent().unwrap().join(OsStr::from_bytes(&wh)), "").unwrap();
        } else if md.is_dir()
            && lgetxattr(&path, "trusted.overlay.opaque").ok() == Some(b"y".to_vec())
        {
            sh(Command::new("setfattr")
                .args(["-x", "trusted.overlay.opaque"])
                .arg(&path));
            fs::write(path.join(".wh..wh..opq"), "").unwrap();
        }
    }
    for path in all_paths(kernel).into_iter().rev() {
        let rel = path.strip_prefix(kernel).unwrap();
        let twin = oci.join(rel);
        if fs::symlink_metadata(&path).unwrap().is_dir() {
            sh(Command::new("touch")
                .arg("-h")
                .arg("-r")
                .arg(&path)
                .arg(&twin));
        }
    }
}

trait WhiteoutType {
    fn is_char_device_whiteout(&self, rdev: u64) -> bool;
}

impl WhiteoutType for fs::FileType {
    fn is_char_device_whiteout(&self, rdev: u64) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.is_char_device() && rdev == 0
    }
}

/// Packs layer directory `dir` as OCI layers are packed.
fn tar_layer(dir: &Path, out: &Path) {
    sh(Command::new("tar")
        .args(["--format=pax", "--numeric-owner", "--xattrs", "-cf"])
        .arg(out)
        .arg("-C")
        .arg(dir)
        .arg("."));
}

fn gzip(path: &Path) -> PathBuf {
    let out = PathBuf::from(format!("{}.gz", path.display()));
    sh_line(&format!(
        "gzip -n -c '{}' > '{}'",
        path.display(),
        out.display()
    ));
    out
}

/// Writes `src` into the layout's blobs: its digest and size.
fn blob(layout: &Path, src: &Path) -> (String, u64) {
    let hex = sha256_file(src);
    let dir = layout.join("blobs/sha256");
    fs::create_dir_all(&dir).unwrap();
    fs::copy(src, dir.join(&hex)).unwrap();
    (format!("sha256:{hex}"), fs::metadata(src).unwrap().len())
}

fn blob_bytes(layout: &Path, bytes: &[u8]) -> (String, u64) {
    let tmp = layout.join("tmp-blob");
    fs::write(&tmp, bytes).unwrap();
    let r = blob(layout, &tmp);
    fs::remove_file(tmp).unwrap();
    r
}

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// One image of a layout: its layers (tar, gzip it?), bottom first, and
/// its manifest descriptor for index.json.
fn oci_image(layout: &Path, layers: &[(&Path, bool)], tag: &str) -> String {
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for (tar, gz) in layers {
        diff_ids.push(format!("\"sha256:{}\"", sha256_file(tar)));
        let (path, media) = if *gz {
            (gzip(tar), "application/vnd.oci.image.layer.v1.tar+gzip")
        } else {
            (tar.to_path_buf(), "application/vnd.oci.image.layer.v1.tar")
        };
        let (digest, size) = blob(layout, &path);
        descs.push(format!(
            r#"{{"mediaType":"{media}","digest":"{digest}","size":{size}}}"#
        ));
    }
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        diff_ids.join(",")
    );
    let (cdigest, csize) = blob_bytes(layout, config.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cdigest}","size":{csize}}},"layers":[{}]}}"#,
        descs.join(",")
    );
    let (mdigest, msize) = blob_bytes(layout, manifest.as_bytes());
    format!(
        r#"{{"mediaType":"{MANIFEST}","digest":"{mdigest}","size":{msize},"annotations":{{"org.opencontainers.image.ref.name":"{tag}"}},"platform":{{"architecture":"amd64","os":"linux"}}}}"#
    )
}

fn write_layout(layout: &Path, manifests: &[String]) {
    fs::create_dir_all(layout).unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    fs::write(
        layout.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{}]}}"#,
            manifests.join(",")
        ),
    )
    .unwrap();
}

/// The image's layers in both forms and as tars.
struct Built {
    dir: TempDir,
    _fixture: TempDir,
    /// Kernel form, top first: the reference's lowerdirs.
    kernel: Vec<PathBuf>,
    /// Tars of the OCI form, bottom first: base, update, app, extra.
    tars: Vec<PathBuf>,
    /// The extra layer packed from its kernel form.
    extra_kernel_tar: PathBuf,
}

fn build() -> Built {
    let fixture = prepare_fixture();
    let dir = tempdir();
    let extra_k = dir.path().join("extra-kernel");
    let extra_o = dir.path().join("extra-oci");
    fs::create_dir(&extra_k).unwrap();
    make_extra_layer(&extra_k);
    to_oci_form(&extra_k, &extra_o);
    let mut tars = Vec::new();
    for l in LAYERS.iter().rev() {
        let out = dir.path().join(format!("{l}.tar"));
        tar_layer(&fixture.path().join("oci").join(l), &out);
        tars.push(out);
    }
    let out = dir.path().join("extra.tar");
    tar_layer(&extra_o, &out);
    tars.push(out);
    let extra_kernel_tar = dir.path().join("extra-kernel.tar");
    tar_layer(&extra_k, &extra_kernel_tar);
    let mut kernel = vec![extra_k];
    kernel.extend(layer_dirs(fixture.path(), Form::Kernel));
    Built {
        dir,
        _fixture: fixture,
        kernel,
        tars,
        extra_kernel_tar,
    }
}

impl Built {
    /// An OCI layout with the image (tag `v1`; base and extra gzipped) and
    /// a second one (tag `small`: base alone).
    fn oci_layout(&self) -> PathBuf {
        let layout = self.dir.path().join("oci");
        let t = &self.tars;
        let main = oci_image(
            &layout,
            &[(&t[0], true), (&t[1], false), (&t[2], false), (&t[3], true)],
            "v1",
        );
        let small = oci_image(&layout, &[(&t[0], false)], "small");
        write_layout(&layout, &[main, small]);
        layout
    }

    /// A docker-save tarball: `test:v1` with the four layers (app
    /// gzipped, extra from the kernel form), and `other:1` whose one layer
    /// is a symlink to base's (as docker writes a layer it has twice).
    fn docker_save(&self) -> PathBuf {
        let stage = self.dir.path().join("docker-stage");
        fs::create_dir_all(&stage).unwrap();
        let mut paths = Vec::new();
        let sources = [
            self.tars[0].clone(),
            self.tars[1].clone(),
            gzip(&self.tars[2]),
            self.extra_kernel_tar.clone(),
        ];
        for src in &sources {
            let hex = sha256_file(src);
            fs::create_dir_all(stage.join(&hex)).unwrap();
            fs::copy(src, stage.join(&hex).join("layer.tar")).unwrap();
            paths.push(format!("{hex}/layer.tar"));
        }
        fs::create_dir_all(stage.join("dup")).unwrap();
        std::os::unix::fs::symlink(format!("../{}", paths[0]), stage.join("dup/layer.tar"))
            .unwrap();
        fs::write(stage.join("cfg.json"), r#"{"os":"linux"}"#).unwrap();
        let quoted: Vec<String> = paths.iter().map(|p| format!("\"{p}\"")).collect();
        fs::write(
            stage.join("manifest.json"),
            format!(
                r#"[{{"Config":"cfg.json","RepoTags":["test:v1"],"Layers":[{}]}},{{"Config":"cfg.json","RepoTags":["other:1"],"Layers":["dup/layer.tar"]}}]"#,
                quoted.join(",")
            ),
        )
        .unwrap();
        let out = self.dir.path().join("docker.tar");
        let mut names: Vec<OsString> = fs::read_dir(&stage)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        sh(Command::new("tar")
            .args(["--format=pax", "-cf"])
            .arg(&out)
            .arg("-C")
            .arg(&stage)
            .args(&names));
        out
    }
}

/// A live `strata mount-image` mount; unmounted on drop.
struct ImageMount {
    dir: Option<TempDir>,
    mnt: PathBuf,
    pids: Vec<u32>,
}

fn mount_image_cmd(image: &OsStr, mnt: &Path, opts: &[&str]) -> Command {
    let mut cmd = Command::new(strata_bin());
    cmd.arg("mount-image");
    for o in opts {
        cmd.args(["-o", o]);
    }
    cmd.arg(image).arg(mnt);
    cmd
}

impl ImageMount {
    fn try_mount(image: &OsStr, opts: &[&str]) -> Result<ImageMount, CmdOutput> {
        let dir = tempdir();
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        let o = run_with_timeout(&mut mount_image_cmd(image, &mnt, opts), MOUNT_TIMEOUT);
        if !o.success() {
            assert!(!is_mounted(&mnt), "failed but mounted: {o}");
            return Err(o);
        }
        let info = mount_info(&mnt).unwrap_or_else(|| panic!("exited 0, nothing mounted: {o}"));
        assert!(info.fstype.starts_with("fuse"), "{}", info.fstype);
        let pids = pids_with_arg(mnt.as_os_str());
        assert!(!pids.is_empty(), "no daemon serves {}", mnt.display());
        Ok(ImageMount {
            dir: Some(dir),
            mnt,
            pids,
        })
    }

    fn mount(image: &OsStr, opts: &[&str]) -> ImageMount {
        ImageMount::try_mount(image, opts).unwrap_or_else(|o| panic!("mount-image failed: {o}"))
    }

    fn path(&self) -> &Path {
        &self.mnt
    }

    fn unmount(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if self.dir.is_none() {
            return;
        }
        for argv in [&["fusermount3", "-u"][..], &["umount", "-l"][..]] {
            if is_mounted(&self.mnt) {
                let _ = run_with_timeout(
                    Command::new(argv[0]).args(&argv[1..]).arg(&self.mnt),
                    UNMOUNT_TIMEOUT,
                );
            }
        }
        let exited = wait_pids_exit(&self.pids, UNMOUNT_TIMEOUT);
        if !exited {
            for pid in &self.pids {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
        let dir = self.dir.take().unwrap();
        if is_mounted(&self.mnt) {
            let _ = dir.keep();
        }
        assert!(exited || thread::panicking(), "daemon outlived its mount");
    }
}

impl Drop for ImageMount {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn kernel_reference(lowers: &[PathBuf]) -> (KernelOverlay, Walk) {
    let k = KernelOverlay::mount(&MountSpec::new(lowers.to_vec()));
    let w = walk(k.path());
    (k, w)
}

/// The image's path with `:TAG`.
fn tagged(image: &Path, tag: &str) -> OsString {
    let mut s = image.as_os_str().to_owned();
    s.push(":");
    s.push(tag);
    s
}

// ================================================================== tests

#[test]
fn oci_layout_equals_the_unpacked_layers() {
    let b = build();
    let layout = b.oci_layout();
    let cache = b.dir.path().join("cache");
    let cache_opt = format!("cache={}", cache.display());
    let (_k, want) = kernel_reference(&b.kernel);
    let m = ImageMount::mount(&tagged(&layout, "v1"), &[&cache_opt]);
    let got = walk(m.path());
    assert_equivalent("kernel overlayfs", &want, "strata mount-image", &got);
    eprintln!("{} paths equal to kernel overlayfs's", got.len());
    // What the walk compared is really there (a few spot checks).
    let r = |p: &str| &got[Path::new(p)];
    assert!(!got.contains_key(Path::new("etc/group")), "whited out");
    assert_eq!(r("var").entries.as_ref().unwrap(), &["new.txt"], "opaque");
    assert_eq!(r("links/b").nlink, Some(3));
    assert_eq!(r("modes/bigid").uid, 3_000_000);
    assert_eq!(r("times/ns").mtime, (1_683_356_889, 123_456_789));
    assert_eq!(r("times/neg").mtime, (-100, 0));
    assert_eq!(r("big/holey.bin").size, (4 << 20) + (512 << 10));
    assert_eq!(r("dev/blk").rdev, Some((8, 1)));
    assert!(r("xattr/f").xattrs.iter().any(|(n, _)| n == "user.empty"));
    m.unmount();
    // The other image of the layout: base alone.
    let m = ImageMount::mount(&tagged(&layout, "small"), &[&cache_opt]);
    assert_eq!(
        fs::read(m.path().join("etc/group")).unwrap(),
        fs::read(b.kernel[3].join("etc/group")).unwrap()
    );
    assert!(!m.path().join("usr/bin/app").exists());
}

#[test]
fn docker_save_tarball_equals_the_unpacked_layers() {
    let b = build();
    let tarball = b.docker_save();
    let cache = b.dir.path().join("cache");
    let cache_opt = format!("cache={}", cache.display());
    let (_k, want) = kernel_reference(&b.kernel);
    let m = ImageMount::mount(&tagged(&tarball, "test:v1"), &[&cache_opt]);
    let got = walk(m.path());
    assert_equivalent(
        "kernel overlayfs",
        &want,
        "strata mount-image (docker save)",
        &got,
    );
    m.unmount();
    // Only app's layer was gzipped: one file in the cache.
    assert_eq!(fs::read_dir(&cache).unwrap().count(), 1);
    let m = ImageMount::mount(&tagged(&tarball, "other:1"), &[&cache_opt]);
    let mut names: Vec<_> = fs::read_dir(m.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut base: Vec<_> = fs::read_dir(&b.kernel[3])
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    base.sort();
    assert_eq!(names, base, "the symlinked layer is base's");
}

/// The same script on a writable mount-image and on kernel overlayfs
/// (`redirect_dir=on,index=on`): outputs, merged trees and uppers equal.
#[test]
fn writable_mount_copies_up_from_the_tar() {
    let b = build();
    let layout = b.oci_layout();
    let cache_opt = format!("cache={}", b.dir.path().join("cache").display());
    let script = [
        "echo appended >> etc/passwd",
        "cat etc/passwd | tail -n 2",
        "dd if=/dev/zero of=big/holey.bin bs=4096 seek=300 count=2 conv=notrunc status=none",
        "sha256sum big/holey.bin big/random.bin",
        "echo through-a-link > links/b",
        "cat links/a links/sub/c",
        "stat -c '%h %i' links/a links/b | uniq -c | wc -l",
        "chmod 0600 modes/suid",
        "chown 42:43 usr/share/app/data1",
        "setfattr -n user.new -v 1 xattr/f",
        "rm etc/hostname",
        "rm -r var",
        "mkdir var && echo fresh > var/again",
        "mv usr/share/app usr/share/moved",
        "ls usr/share/moved",
        "ln links/a links/d",
        "touch -d @1 times/ns",
        "cat times/ns big/random.bin | sha256sum",
        // copy_file_range and SEEK_DATA/SEEK_HOLE from a file in the tar.
        "cp big/random.bin big/copy.bin && cmp big/random.bin big/copy.bin",
        "python3 -c \"import os; f = os.open('big/random.bin', os.O_RDONLY); \
         print(os.lseek(f, 0, os.SEEK_DATA), os.lseek(f, 4096, os.SEEK_HOLE))\"",
    ];
    let since = SystemTime::now();
    let ku = UpperWork::new();
    let k = KernelOverlay::mount(
        &MountSpec::new(b.kernel.clone())
            .with_upper(&ku)
            .with_option("redirect_dir=on")
            .with_option("index=on"),
    );
    let k_out = shell::run_script(k.path(), &script);
    let mut k_view = walk(k.path());
    mask_recent_mtimes(&mut k_view, since);
    k.unmount().unwrap();
    let su = UpperWork::new();
    let upper_opts = format!(
        "upperdir={},workdir={}",
        su.upper.display(),
        su.work.display()
    );
    let m = ImageMount::mount(&tagged(&layout, "v1"), &[&cache_opt, &upper_opts]);
    let s_out = shell::run_script(m.path(), &script);
    let mut s_view = walk(m.path());
    mask_recent_mtimes(&mut s_view, since);
    m.unmount();
    assert_eq!(k_out, s_out, "script outputs");
    assert!(
        s_out.iter().all(|l| l.contains("=> Some(0)")),
        "every command succeeds: {s_out:#?}"
    );
    assert_equivalent("kernel overlayfs", &k_view, "strata mount-image", &s_view);
    // The upper: the copied-up files whole, as the kernel's upper has them.
    let (_kr, lower_view) = kernel_reference(&b.kernel);
    let lower_dirs = |p: &Path| lower_view.get(p).is_some_and(|r| r.kind == Kind::Dir);
    let problems = upper_diff(
        "kernel upper",
        &upper_walk(&ku.upper),
        "strata upper",
        &upper_walk(&su.upper),
        since,
        &lower_dirs,
    );
    assert_no_problems("uppers differ", &problems);
    // Copied up from the mapped tar, then written: the whole file.
    assert_eq!(
        fs::metadata(su.upper.join("big/holey.bin")).unwrap().len(),
        (4 << 20) + (512 << 10)
    );
    assert!(
        !su.upper.join("big/random.bin").exists(),
        "only read: not copied up"
    );
    // A remount of the upper over the same image shows the same tree.
    let m = ImageMount::mount(&tagged(&layout, "v1"), &[&cache_opt, &upper_opts]);
    let mut again = walk(m.path());
    mask_recent_mtimes(&mut again, since);
    assert_no_problems(
        "remount differs",
        &view_diff("first mount", &s_view, "remount", &again),
    );
    // A read-only fd of a file in the tar moves to the copy when another
    // open copies the file up (strata's rule; the kernel keeps the lower).
    let path = m.path().join("etc/os-release");
    let held = File::open(&path).unwrap();
    let before = fs::read(&path).unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"MORE=1\n")
        .unwrap();
    let mut now = Vec::new();
    (&held).read_to_end(&mut now).unwrap();
    assert_eq!(now, [before, b"MORE=1\n".to_vec()].concat());
}

#[test]
fn gzip_layers_are_decompressed_once() {
    let b = build();
    let layout = b.oci_layout();
    let cache = b.dir.path().join("cache");
    let cache_opt = format!("cache={}", cache.display());
    let files = || -> Vec<(PathBuf, u64, i64, i64)> {
        let mut v: Vec<_> = fs::read_dir(&cache)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                let md = fs::metadata(&p).unwrap();
                (p, md.ino(), md.mtime(), md.mtime_nsec())
            })
            .collect();
        v.sort();
        v
    };
    let started = Instant::now();
    let m = ImageMount::mount(&tagged(&layout, "v1"), &[&cache_opt]);
    let first_time = started.elapsed();
    let first = files();
    // base and extra are gzipped: their uncompressed tars, named by digest.
    assert_eq!(first.len(), 2, "{first:?}");
    for tar in [&b.tars[0], &b.tars[3]] {
        let gz_digest = sha256_file(&gzip(tar));
        let cached = cache.join(format!("sha256-{gz_digest}.tar"));
        assert_eq!(
            sha256_file(&cached),
            sha256_file(tar),
            "{}",
            cached.display()
        );
        assert_eq!(fs::metadata(&cached).unwrap().mode() & 0o777, 0o600);
    }
    assert_eq!(fs::metadata(&cache).unwrap().mode() & 0o777, 0o700);
    m.unmount();
    thread::sleep(Duration::from_millis(20));
    let started = Instant::now();
    let m = ImageMount::mount(&tagged(&layout, "v1"), &[&cache_opt]);
    let second_time = started.elapsed();
    assert_eq!(
        files(),
        first,
        "reused: same inodes and mtimes, nothing else"
    );
    assert!(m.path().join("var/new.txt").exists());
    m.unmount();
    eprintln!("mount with decompression {first_time:?}, from the cache {second_time:?}");
    // A cached copy that is no tar any more (cut short) is made again; a
    // temporary left by a killed decompression goes.
    let victim = first[0].0.clone();
    let name = victim.file_name().unwrap().to_str().unwrap().to_owned();
    let leftover = cache.join(format!(".{name}.tmp.4194305"));
    fs::write(&leftover, "partial").unwrap();
    let len = fs::metadata(&victim).unwrap().len();
    File::options()
        .write(true)
        .open(&victim)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let m = ImageMount::mount(&tagged(&layout, "v1"), &[&cache_opt]);
    let third = files();
    assert_eq!(third.len(), 2, "{third:?}");
    assert_ne!(third[0], first[0], "made again (a new file)");
    assert_eq!(fs::metadata(&victim).unwrap().len(), len);
    assert!(m.path().join("var/new.txt").exists());
    m.unmount();
    // Without cache=: $XDG_CACHE_HOME/strata.
    let xdg = b.dir.path().join("xdg");
    let mnt = b.dir.path().join("mnt-xdg");
    fs::create_dir(&mnt).unwrap();
    let mut cmd = mount_image_cmd(&tagged(&layout, "v1"), &mnt, &[]);
    cmd.env("XDG_CACHE_HOME", &xdg);
    let o = run_with_timeout(&mut cmd, MOUNT_TIMEOUT);
    assert!(o.success(), "{o}");
    let pids = pids_with_arg(mnt.as_os_str());
    sh(Command::new("fusermount3").arg("-u").arg(&mnt));
    assert!(wait_pids_exit(&pids, UNMOUNT_TIMEOUT));
    assert_eq!(fs::read_dir(xdg.join("strata")).unwrap().count(), 2);
}

/// Bad images: one line on stderr, a non-zero exit, nothing mounted, no
/// daemon, and nothing left in the cache.
#[test]
fn bad_images_are_refused_with_one_line() {
    let b = build();
    let base_tar = &b.tars[0];
    let d = b.dir.path();
    let cache = d.join("cache-bad");
    let cache_opt = format!("cache={}", cache.display());
    let layout_with = |name: &str, layer: &Path, media: &str, gz: bool| -> PathBuf {
        let layout = d.join(name);
        let path = if gz { gzip(layer) } else { layer.to_path_buf() };
        let (digest, size) = blob(&layout, &path);
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","layers":[{{"mediaType":"{media}","digest":"{digest}","size":{size}}}]}}"#
        );
        let (mdigest, msize) = blob_bytes(&layout, manifest.as_bytes());
        write_layout(
            &layout,
            &[format!(
                r#"{{"mediaType":"{MANIFEST}","digest":"{mdigest}","size":{msize}}}"#
            )],
        );
        layout
    };
    const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    const GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    let mut cases: Vec<(OsString, &str)> = Vec::new();
    cases.push((d.join("missing").into(), "No such file"));
    let empty = d.join("empty-dir");
    fs::create_dir(&empty).unwrap();
    cases.push((empty.into(), "not an OCI image layout"));
    let random = d.join("random.bin");
    write_pattern(&random, 10_000, 3);
    cases.push((random.into(), "not a tar archive"));
    let empty_file = d.join("empty-file");
    fs::write(&empty_file, "").unwrap();
    cases.push((empty_file.into(), "empty file"));
    let no_manifest = d.join("no-manifest.tar");
    sh(Command::new("tar")
        .arg("-cf")
        .arg(&no_manifest)
        .arg("-C")
        .arg(d)
        .arg("base.tar"));
    cases.push((no_manifest.into(), "manifest.json"));
    let zstd = layout_with(
        "zstd",
        base_tar,
        "application/vnd.oci.image.layer.v1.tar+zstd",
        false,
    );
    cases.push((zstd.into(), "zstd"));
    let unknown = layout_with("unknown", base_tar, "application/x-something", false);
    cases.push((unknown.into(), "unknown layer media type"));
    // A digest that is no digest, and one with no blob.
    let bad_ref = d.join("bad-ref");
    write_layout(
        &bad_ref,
        &[format!(
            r#"{{"mediaType":"{MANIFEST}","digest":"sha256:../../etc","size":1}}"#
        )],
    );
    cases.push((bad_ref.into(), "bad digest reference"));
    let no_blob = d.join("no-blob");
    write_layout(
        &no_blob,
        &[format!(
            r#"{{"mediaType":"{MANIFEST}","digest":"sha256:{}","size":1}}"#,
            "0".repeat(64)
        )],
    );
    cases.push((no_blob.into(), "missing"));
    let bad_json = d.join("bad-json");
    write_layout(&bad_json, &[]);
    fs::write(bad_json.join("index.json"), "{\"manifests\": [").unwrap();
    cases.push((bad_json.into(), "not valid JSON"));
    // A manifest blob whose content is not its digest.
    let tampered = layout_with("tampered", base_tar, TAR, false);
    let index = fs::read_to_string(tampered.join("index.json")).unwrap();
    let mhex = index.split("sha256:").nth(1).unwrap()[..64].to_owned();
    let mpath = tampered.join("blobs/sha256").join(&mhex);
    let text = fs::read_to_string(&mpath)
        .unwrap()
        .replace("schemaVersion", "schemaVersioN");
    fs::write(&mpath, text).unwrap();
    cases.push((tampered.into(), "does not match its digest"));
    // Broken layers: truncated, with `..`, a corrupt gzip.
    let truncated = d.join("truncated.tar");
    let bytes = fs::read(base_tar).unwrap();
    fs::write(&truncated, &bytes[..bytes.len() / 2 + 100]).unwrap();
    cases.push((
        layout_with("trunc", &truncated, TAR, false).into(),
        "truncated",
    ));
    let evil_dir = d.join("evil");
    fs::create_dir_all(evil_dir.join("a")).unwrap();
    fs::write(evil_dir.join("x"), "x").unwrap();
    let evil = d.join("evil.tar");
    sh(Command::new("tar")
        .args(["--format=pax", "-cf"])
        .arg(&evil)
        .arg("-C")
        .arg(evil_dir.join("a"))
        .args(["--absolute-names", "../x"]));
    cases.push((layout_with("dotdot", &evil, TAR, false).into(), "'..'"));
    // A gzip blob that matches its digest but does not inflate, and one
    // that does not match its digest.
    let mut gz = fs::read(gzip(base_tar)).unwrap();
    let mid = gz.len() / 2;
    gz[mid] ^= 0x55;
    let corrupt = d.join("corrupt.tar.gz");
    fs::write(&corrupt, &gz).unwrap();
    cases.push((
        layout_with("corrupt-gz", &corrupt, GZ, false).into(),
        "cannot decompress",
    ));
    let tampered_gz = layout_with("tampered-gz", base_tar, GZ, true);
    let index = fs::read_to_string(tampered_gz.join("index.json")).unwrap();
    let mhex = index.split("sha256:").nth(1).unwrap()[..64].to_owned();
    let manifest = fs::read_to_string(tampered_gz.join("blobs/sha256").join(mhex)).unwrap();
    let lhex = manifest.split("sha256:").nth(1).unwrap()[..64].to_owned();
    fs::write(tampered_gz.join("blobs/sha256").join(&lhex), &gz).unwrap();
    cases.push((tampered_gz.into(), "does not match its digest"));
    let layout = b.oci_layout();
    cases.push((
        tagged(&layout, "nope"),
        "no image tagged 'nope' (tags: small, v1)",
    ));
    cases.push((
        layout.clone().into(),
        "2 images in it; name one with IMAGE:TAG",
    ));

    let mnt = d.join("mnt-bad");
    fs::create_dir(&mnt).unwrap();
    for (image, want) in &cases {
        let o = run_with_timeout(
            &mut mount_image_cmd(image, &mnt, &[&cache_opt]),
            MOUNT_TIMEOUT,
        );
        let lines: Vec<&str> = o.stderr.lines().collect();
        assert!(
            !o.success()
                && lines.len() == 1
                && lines[0].starts_with("strata mount-image: ")
                && lines[0].contains(want),
            "{image:?}: want one line with {want:?}: {o}"
        );
        assert!(!is_mounted(&mnt), "{image:?}: mounted");
        assert!(
            pids_with_arg(mnt.as_os_str()).is_empty(),
            "{image:?}: a daemon"
        );
        let leftovers: Vec<_> = fs::read_dir(&cache)
            .map(|r| r.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(leftovers.is_empty(), "{image:?}: cache holds {leftovers:?}");
    }
    // Command-line mistakes.
    for (args, want) in [
        (&["mount-image"][..], "expected IMAGE and MOUNTPOINT"),
        (
            &["mount-image", "-o", "lowerdir=/", "x", "/mnt"][..],
            "lowerdir",
        ),
        (
            &["mount-image", "-o", "upperdir=/tmp", "x", "/mnt"][..],
            "workdir",
        ),
    ] {
        let o = run_with_timeout(Command::new(strata_bin()).args(args), MOUNT_TIMEOUT);
        assert!(
            !o.success() && o.stderr.lines().count() == 1 && o.stderr.contains(want),
            "{o}"
        );
    }
}

// ============================================================ measurements

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn rss_line(pid: u32) -> String {
    format!(
        "RSS {:.1} MiB (anon {:.1}, file {:.1})",
        proc_status_kib(pid, "VmRSS:") as f64 / 1024.0,
        proc_status_kib(pid, "RssAnon:") as f64 / 1024.0,
        proc_status_kib(pid, "RssFile:") as f64 / 1024.0
    )
}

fn drop_caches() {
    sh_line("sync; echo 3 > /proc/sys/vm/drop_caches");
}

/// Reads `path` whole; MiB/s.
fn read_speed(path: &Path) -> f64 {
    let mut f = File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let started = Instant::now();
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    total as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64()
}

/// Mount time and memory for a ~100k-file image, and read throughput from
/// a tar layer against the same layer unpacked (both through strata).
#[test]
#[ignore = "measurement: several minutes, prints figures"]
fn measure() {
    let files: usize = std::env::var("MEASURE_FILES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let big_mib: usize = std::env::var("MEASURE_BIG_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    let work = tempfile::Builder::new()
        .prefix("strata-measure-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let w = work.path();
    // Four layers of small files (100 per directory), the last also
    // rewriting a tenth of the first layer's.
    let layers = 4;
    let started = Instant::now();
    let mut tars = Vec::new();
    for l in 0..layers {
        let root = w.join(format!("layer{l}"));
        for i in 0..files / layers {
            let d = root.join(format!("d{:03}/e{:02}", i / 1000, (i / 100) % 10));
            if i % 100 == 0 {
                fs::create_dir_all(&d).unwrap();
            }
            write_pattern(
                &d.join(format!("l{l}-f{:02}", i % 100)),
                200 + (i * 37) % 3000,
                i as u64,
            );
        }
        let tar = w.join(format!("layer{l}.tar"));
        tar_layer(&root, &tar);
        tars.push(tar);
    }
    let big_root = w.join("big");
    fs::create_dir(&big_root).unwrap();
    write_pattern(&big_root.join("big.bin"), big_mib << 20, 99);
    let big_tar = w.join("big.tar");
    tar_layer(&big_root, &big_tar);
    eprintln!(
        "generated {files} files in {layers} layers in {:.1?}",
        started.elapsed()
    );
    let layout = w.join("oci");
    let plain = oci_image(
        &layout,
        &tars
            .iter()
            .map(|t| (t.as_path(), false))
            .collect::<Vec<_>>(),
        "plain",
    );
    let gz = oci_image(
        &layout,
        &tars.iter().map(|t| (t.as_path(), true)).collect::<Vec<_>>(),
        "gz",
    );
    let big = oci_image(&layout, &[(big_tar.as_path(), false)], "big");
    write_layout(&layout, &[plain, gz, big]);
    let tar_bytes: u64 = tars.iter().map(|t| fs::metadata(t).unwrap().len()).sum();
    let cache = w.join("cache");
    let cache_opt = format!("cache={}", cache.display());

    let mut report = Vec::new();
    report.push(format!(
        "image: {files} files in {layers} layers, {:.0} MiB of tars",
        tar_bytes as f64 / (1 << 20) as f64
    ));
    for (tag, what) in [
        ("plain", "uncompressed, cold page cache"),
        ("plain", "uncompressed, warm page cache"),
        ("gz", "gzip, first mount (decompresses)"),
        ("gz", "gzip, from the cache (warm)"),
    ] {
        if what.contains("cold") {
            drop_caches();
        }
        let started = Instant::now();
        let m = ImageMount::mount(&tagged(&layout, tag), &[&cache_opt]);
        let mount_time = started.elapsed();
        let pid = m.pids[0];
        let after_mount = rss_line(pid);
        let started = Instant::now();
        let walked = walk_count(m.path());
        let walk_time = started.elapsed();
        report.push(format!(
            "{what}: mount {:.0} ms; after mount {after_mount}; find+lstat of {walked} \
             paths {:.1} s; after it {}",
            mount_time.as_secs_f64() * 1e3,
            walk_time.as_secs_f64(),
            rss_line(pid)
        ));
        m.unmount();
    }
    // For scale: strata over the same layers unpacked (the daemon's node
    // table and caches grow the same way with a walk), and kernel
    // overlayfs.
    let unpacked: Vec<PathBuf> = (0..layers)
        .rev()
        .map(|l| w.join(format!("layer{l}")))
        .collect();
    for cold in [true, false] {
        if cold {
            drop_caches();
        }
        let started = Instant::now();
        let d = StrataMount::mount(&MountSpec::new(unpacked.clone()));
        let mount_time = started.elapsed();
        let pid = d.daemon_pids()[0];
        let after_mount = rss_line(pid);
        let started = Instant::now();
        let walked = walk_count(d.path());
        report.push(format!(
            "strata over the unpacked layers ({}): mount {:.0} ms; after mount {after_mount}; \
             find+lstat of {walked} paths {:.1} s; after it {}",
            if cold { "cold" } else { "warm" },
            mount_time.as_secs_f64() * 1e3,
            started.elapsed().as_secs_f64(),
            rss_line(pid)
        ));
    }
    drop_caches();
    let k = KernelOverlay::mount(&MountSpec::new(unpacked.clone()));
    let started = Instant::now();
    let walked = walk_count(k.path());
    report.push(format!(
        "kernel overlayfs over the unpacked layers: find+lstat of {walked} paths {:.1} s (cold)",
        started.elapsed().as_secs_f64()
    ));
    drop(k);
    // Sequential read of the big file: the tar layer vs the same layer
    // unpacked (strata, read-only, passthrough and not).
    let big_file = Path::new("big.bin");
    let started = Instant::now();
    let m = ImageMount::mount(&tagged(&layout, "big"), &[&cache_opt]);
    report.push(format!(
        "mount of a one-file image (the fixed cost): {:.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    ));
    let empty = w.join("empty");
    fs::create_dir(&empty).unwrap();
    let dir_mount = |extra: Option<&str>| {
        let mut spec = MountSpec::new(vec![big_root.clone(), empty.clone()]);
        if let Some(x) = extra {
            spec = spec.with_option(x);
        }
        StrataMount::mount(&spec)
    };
    let d_pt = dir_mount(None);
    let d_plain = dir_mount(Some("passthrough=0"));
    let mut speeds = Vec::new();
    for cold in [true, false] {
        for (name, root) in [
            ("tar layer (from the mapping)", m.path()),
            ("directory, passthrough", d_pt.path()),
            ("directory, passthrough=0", d_plain.path()),
        ] {
            let mut v = Vec::new();
            for _ in 0..3 {
                if cold {
                    drop_caches();
                } else {
                    read_speed(&root.join(big_file));
                }
                v.push(read_speed(&root.join(big_file)));
            }
            v.sort_by(|a, b| a.total_cmp(b));
            speeds.push((cold, name, v[1]));
        }
    }
    for (cold, name, speed) in &speeds {
        let base = speeds
            .iter()
            .find(|(c, n, _)| c == cold && *n == "directory, passthrough")
            .unwrap()
            .2;
        report.push(format!(
            "read {big_mib} MiB {} {name}: {speed:.0} MiB/s ({:.2}x directory+passthrough)",
            if *cold { "cold" } else { "warm" },
            speed / base
        ));
    }
    drop(m);
    println!("\n== mount-image measurements ==");
    for line in report {
        println!("{line}");
    }
}

fn walk_count(root: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = fs::symlink_metadata(&p).unwrap();
        n += 1;
        if md.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    n
}

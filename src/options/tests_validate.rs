//! Unit tests of validation against the filesystem.

use super::validate::*;
use super::*;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use std::os::unix::fs::symlink;
use std::process::Command as Process;
use tempfile::TempDir;

// -- helpers ------------------------------------------------------------

fn mount_with(args: &[&str], is_root: bool) -> Config {
    match parse_args(args.iter().copied(), is_root) {
        Ok(Command::Mount(config)) => *config,
        other => panic!("expected a mount for {args:?}, got {other:?}"),
    }
}

fn mount(args: &[&str]) -> Config {
    mount_with(args, false)
}

// -- validation: helpers --------------------------------------------------

/// A scratch directory tree for one validation test.
struct Tree {
    root: TempDir,
}

impl Tree {
    fn new() -> Self {
        Self {
            root: tempfile::tempdir().expect("create a temporary directory"),
        }
    }

    /// Creates directory `name` (and its parents) under the root.
    fn dir(&self, name: &str) -> PathBuf {
        let path = self.root.path().join(name);
        fs::create_dir_all(&path).expect("create a test directory");
        path
    }

    /// Creates an empty regular file `name` under the root.
    fn file(&self, name: &str) -> PathBuf {
        let path = self.root.path().join(name);
        fs::write(&path, b"").expect("create a test file");
        path
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }
}

/// A config with just these directories and every other field at its default.
fn config(
    lowers: &[&Path],
    upper: Option<&Path>,
    work: Option<&Path>,
    mountpoint: &Path,
) -> Config {
    Config {
        lowerdirs: lowers.iter().map(|path| path.to_path_buf()).collect(),
        upperdir: upper.map(Path::to_path_buf),
        workdir: work.map(Path::to_path_buf),
        mountpoint: mountpoint.to_path_buf(),
        ..Config::default()
    }
}

/// The message of the error `validate` must return for `config`.
fn validate_message(config: &Config) -> String {
    match validate(config) {
        Err(error) => error.to_string(),
        Ok(()) => panic!("expected validation to fail for {config:?}"),
    }
}

/// A tmpfs mounted on a fresh temporary directory, unmounted on drop.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    fn mount() -> Self {
        let dir = tempfile::tempdir().expect("create a mountpoint");
        let status = Process::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "strata-test"])
            .arg(dir.path())
            .status()
            .expect("run mount(8)");
        assert!(
            status.success(),
            "mounting a tmpfs failed (these tests need root)"
        );
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Process::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// A bind mount of `source` on `target`, unmounted on drop.
struct Bind {
    target: PathBuf,
}

impl Bind {
    fn mount(source: &Path, target: &Path) -> Self {
        let status = Process::new("mount")
            .arg("--bind")
            .arg(source)
            .arg(target)
            .status()
            .expect("run mount(8)");
        assert!(
            status.success(),
            "bind mount failed (these tests need root)"
        );
        Self {
            target: target.to_path_buf(),
        }
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = Process::new("umount").arg("-l").arg(&self.target).status();
    }
}

/// A directory on a different filesystem from `near`: /dev/shm when it
/// is one, otherwise a tmpfs mounted for the test.
enum Elsewhere {
    Shm(TempDir),
    Mounted(Tmpfs),
}

impl Elsewhere {
    fn find(near: &Path) -> Self {
        let near_dev = fs::metadata(near).expect("stat").dev();
        if let Ok(shm) = tempfile::tempdir_in("/dev/shm")
            && fs::metadata(shm.path()).is_ok_and(|meta| meta.dev() != near_dev)
        {
            return Self::Shm(shm);
        }
        Self::Mounted(Tmpfs::mount())
    }

    fn path(&self) -> &Path {
        match self {
            Self::Shm(dir) => dir.path(),
            Self::Mounted(tmpfs) => tmpfs.path(),
        }
    }
}

// -- validation: existence ----------------------------------------------

#[test]
fn valid_layouts_pass() {
    let tree = Tree::new();
    let (l1, l2, u, w, m) = (
        tree.dir("l1"),
        tree.dir("l2"),
        tree.dir("u"),
        tree.dir("w"),
        tree.dir("m"),
    );
    assert_eq!(
        validate(&config(&[&l1, &l2], Some(&u), Some(&w), &m)),
        Ok(())
    );
    assert_eq!(validate(&config(&[&l1], None, None, &m)), Ok(()));
    // The same lowerdir twice, and a lowerdir inside another, are fine.
    let nested = tree.dir("l1/inner");
    assert_eq!(
        validate(&config(&[&l1, &nested, &l1], None, None, &m)),
        Ok(())
    );
}

#[test]
fn parsed_config_validates() {
    let tree = Tree::new();
    let (l, u, w, m) = (tree.dir("l"), tree.dir("u"), tree.dir("w"), tree.dir("m"));
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        l.display(),
        u.display(),
        w.display()
    );
    let config = mount(&["-o", &options, m.to_str().expect("utf-8 temp path")]);
    assert_eq!(validate(&config), Ok(()));
}

#[test]
fn dotdot_paths_are_resolved_by_the_filesystem() {
    let tree = Tree::new();
    let (l, m) = (tree.dir("s/l/diff1"), tree.dir("m"));
    tree.dir("s/l/ID");
    let lower = tree.path("s/l/ID/../diff1");
    assert_eq!(validate(&config(&[&lower], None, None, &m)), Ok(()));
    assert!(l.is_dir());
}

#[test]
fn missing_lowerdir_directory() {
    let tree = Tree::new();
    let (good, m) = (tree.dir("l"), tree.dir("m"));
    let missing = tree.path("nope");
    assert_eq!(
        validate_message(&config(&[&good, &missing], None, None, &m)),
        format!(
            "lowerdir '{}': No such file or directory",
            missing.display()
        )
    );
}

#[test]
fn lowerdir_that_is_a_file() {
    let tree = Tree::new();
    let (file, m) = (tree.file("f"), tree.dir("m"));
    assert_eq!(
        validate_message(&config(&[&file], None, None, &m)),
        format!("lowerdir '{}' is not a directory", file.display())
    );
}

#[test]
fn lowerdir_below_a_file() {
    let tree = Tree::new();
    let m = tree.dir("m");
    tree.file("f");
    let below = tree.path("f/sub");
    assert_eq!(
        validate_message(&config(&[&below], None, None, &m)),
        format!("lowerdir '{}': Not a directory", below.display())
    );
}

#[test]
fn upper_and_work_must_be_directories() {
    let tree = Tree::new();
    let (l, u, w, m, f) = (
        tree.dir("l"),
        tree.dir("u"),
        tree.dir("w"),
        tree.dir("m"),
        tree.file("f"),
    );
    let missing = tree.path("missing");
    assert_eq!(
        validate_message(&config(&[&l], Some(&f), Some(&w), &m)),
        format!("upperdir '{}' is not a directory", f.display())
    );
    assert_eq!(
        validate_message(&config(&[&l], Some(&missing), Some(&w), &m)),
        format!(
            "upperdir '{}': No such file or directory",
            missing.display()
        )
    );
    assert_eq!(
        validate_message(&config(&[&l], Some(&u), Some(&f), &m)),
        format!("workdir '{}' is not a directory", f.display())
    );
    assert_eq!(
        validate_message(&config(&[&l], Some(&u), Some(&missing), &m)),
        format!("workdir '{}': No such file or directory", missing.display())
    );
}

#[test]
fn mountpoint_must_be_a_directory() {
    let tree = Tree::new();
    let (l, f) = (tree.dir("l"), tree.file("f"));
    let missing = tree.path("missing");
    assert_eq!(
        validate_message(&config(&[&l], None, None, &missing)),
        format!(
            "mountpoint '{}': No such file or directory",
            missing.display()
        )
    );
    assert_eq!(
        validate_message(&config(&[&l], None, None, &f)),
        format!("mountpoint '{}' is not a directory", f.display())
    );
}

#[test]
fn symlinks_to_directories_are_followed() {
    let tree = Tree::new();
    let (l, m) = (tree.dir("l"), tree.dir("m"));
    let link = tree.path("link");
    symlink(&l, &link).expect("create symlink");
    assert_eq!(validate(&config(&[&link], None, None, &m)), Ok(()));
    let dangling = tree.path("dangling");
    symlink(tree.path("nowhere"), &dangling).expect("create symlink");
    assert_eq!(
        validate_message(&config(&[&dangling], None, None, &m)),
        format!(
            "lowerdir '{}': No such file or directory",
            dangling.display()
        )
    );
}

// -- validation: filesystems --------------------------------------------

#[test]
fn workdir_on_another_filesystem() {
    let tree = Tree::new();
    let (l, u, m) = (tree.dir("l"), tree.dir("u"), tree.dir("m"));
    let elsewhere = Elsewhere::find(&u);
    let w = elsewhere.path().join("w");
    fs::create_dir(&w).expect("create workdir");
    assert_eq!(
        validate_message(&config(&[&l], Some(&u), Some(&w), &m)),
        format!(
            "workdir '{}' and upperdir '{}' are on different filesystems",
            w.display(),
            u.display()
        )
    );
}

#[test]
fn upperdir_on_a_mounted_tmpfs() {
    let tmpfs = Tmpfs::mount();
    let tree = Tree::new();
    let (l, w, m) = (tree.dir("l"), tree.dir("w"), tree.dir("m"));
    let u = tmpfs.path().join("u");
    fs::create_dir(&u).expect("create upperdir");
    assert_eq!(
        validate_message(&config(&[&l], Some(&u), Some(&w), &m)),
        format!(
            "workdir '{}' and upperdir '{}' are on different filesystems",
            w.display(),
            u.display()
        )
    );
    // Both on the tmpfs is fine.
    let w2 = tmpfs.path().join("w");
    fs::create_dir(&w2).expect("create workdir");
    assert_eq!(validate(&config(&[&l], Some(&u), Some(&w2), &m)), Ok(()));
}

// -- validation: nesting ------------------------------------------------

#[test]
fn upperdir_inside_lowerdir() {
    let tree = Tree::new();
    let (l, u, w, m) = (tree.dir("l"), tree.dir("l/u"), tree.dir("w"), tree.dir("m"));
    assert_eq!(
        validate_message(&config(&[&l], Some(&u), Some(&w), &m)),
        format!(
            "upperdir '{}' is inside lowerdir '{}'",
            u.display(),
            l.display()
        )
    );
}

#[test]
fn lowerdir_inside_upperdir() {
    let tree = Tree::new();
    let (u, l, w, m) = (
        tree.dir("u"),
        tree.dir("u/deep/l"),
        tree.dir("w"),
        tree.dir("m"),
    );
    let other = tree.dir("other");
    assert_eq!(
        validate_message(&config(&[&other, &l], Some(&u), Some(&w), &m)),
        format!(
            "lowerdir '{}' is inside upperdir '{}'",
            l.display(),
            u.display()
        )
    );
}

#[test]
fn workdir_inside_lowerdir() {
    let tree = Tree::new();
    let (l, u, w, m) = (tree.dir("l"), tree.dir("u"), tree.dir("l/w"), tree.dir("m"));
    assert_eq!(
        validate_message(&config(&[&l], Some(&u), Some(&w), &m)),
        format!(
            "workdir '{}' is inside lowerdir '{}'",
            w.display(),
            l.display()
        )
    );
}

#[test]
fn mountpoint_inside_lowerdir() {
    let tree = Tree::new();
    let (l, m) = (tree.dir("l"), tree.dir("l/a/m"));
    assert_eq!(
        validate_message(&config(&[&l], None, None, &m)),
        format!(
            "mountpoint '{}' is inside lowerdir '{}'",
            m.display(),
            l.display()
        )
    );
}

#[test]
fn lowerdir_inside_mountpoint() {
    let tree = Tree::new();
    let (m, l) = (tree.dir("m"), tree.dir("m/l"));
    assert_eq!(
        validate_message(&config(&[&l], None, None, &m)),
        format!(
            "lowerdir '{}' is inside mountpoint '{}'",
            l.display(),
            m.display()
        )
    );
}

#[test]
fn mountpoint_is_a_lowerdir() {
    let tree = Tree::new();
    let l = tree.dir("l");
    assert_eq!(
        validate_message(&config(&[&l], None, None, &l)),
        format!(
            "mountpoint '{}' and lowerdir '{}' are the same directory",
            l.display(),
            l.display()
        )
    );
}

#[test]
fn mountpoint_inside_upperdir_or_workdir() {
    let tree = Tree::new();
    let (l, u, w) = (tree.dir("l"), tree.dir("u"), tree.dir("w"));
    let (mu, mw) = (tree.dir("u/m"), tree.dir("w/m"));
    assert_eq!(
        validate_message(&config(&[&l], Some(&u), Some(&w), &mu)),
        format!(
            "mountpoint '{}' is inside upperdir '{}'",
            mu.display(),
            u.display()
        )
    );
    assert_eq!(
        validate_message(&config(&[&l], Some(&u), Some(&w), &mw)),
        format!(
            "mountpoint '{}' is inside workdir '{}'",
            mw.display(),
            w.display()
        )
    );
}

#[test]
fn upperdir_inside_mountpoint() {
    let tree = Tree::new();
    let (l, m, u, w) = (
        tree.dir("l"),
        tree.dir("m"),
        tree.dir("m/u"),
        tree.dir("m/w"),
    );
    assert_eq!(
        validate_message(&config(&[&l], Some(&u), Some(&w), &m)),
        format!(
            "upperdir '{}' is inside mountpoint '{}'",
            u.display(),
            m.display()
        )
    );
}

#[test]
fn workdir_and_upperdir_apart() {
    let tree = Tree::new();
    let (l, m, u) = (tree.dir("l"), tree.dir("m"), tree.dir("u"));
    let w_in_u = tree.dir("u/w");
    assert_eq!(
        validate_message(&config(&[&l], Some(&u), Some(&w_in_u), &m)),
        format!(
            "workdir '{}' is inside upperdir '{}'",
            w_in_u.display(),
            u.display()
        )
    );
    let (w, u_in_w) = (tree.dir("w"), tree.dir("w/u"));
    assert_eq!(
        validate_message(&config(&[&l], Some(&u_in_w), Some(&w), &m)),
        format!(
            "upperdir '{}' is inside workdir '{}'",
            u_in_w.display(),
            w.display()
        )
    );
    assert_eq!(
        validate_message(&config(&[&l], Some(&u), Some(&u), &m)),
        format!(
            "workdir '{}' and upperdir '{}' are the same directory",
            u.display(),
            u.display()
        )
    );
}

#[test]
fn nesting_through_a_symlink_is_caught() {
    let tree = Tree::new();
    let (l, w, m) = (tree.dir("l"), tree.dir("w"), tree.dir("m"));
    tree.dir("l/u");
    let link = tree.path("link");
    symlink(&l, &link).expect("create symlink");
    let u = link.join("u");
    assert_eq!(
        validate_message(&config(&[&l], Some(&u), Some(&w), &m)),
        format!(
            "upperdir '{}' is inside lowerdir '{}'",
            u.display(),
            l.display()
        )
    );
}

#[test]
fn nesting_through_dotdot_is_caught() {
    let tree = Tree::new();
    let (l, w, m) = (tree.dir("l"), tree.dir("w"), tree.dir("m"));
    tree.dir("l/u");
    let u = tree.path("w/../l/u");
    assert_eq!(
        validate_message(&config(&[&l], Some(&u), Some(&w), &m)),
        format!(
            "upperdir '{}' is inside lowerdir '{}'",
            u.display(),
            l.display()
        )
    );
}

#[test]
fn nesting_through_a_bind_mount_is_caught() {
    let tree = Tree::new();
    let (l, w, alias) = (tree.dir("l"), tree.dir("w"), tree.dir("alias"));
    tree.dir("l/u");
    let m = tree.dir("m");
    let _bind = Bind::mount(&l, &alias);
    let u = alias.join("u");
    assert_eq!(
        validate_message(&config(&[&l], Some(&u), Some(&w), &m)),
        format!(
            "upperdir '{}' is inside lowerdir '{}'",
            u.display(),
            l.display()
        )
    );
}

#[test]
fn similar_names_are_not_nested() {
    let tree = Tree::new();
    let (l, u, w, m) = (
        tree.dir("l"),
        tree.dir("l2"),
        tree.dir("l-w"),
        tree.dir("lm"),
    );
    assert_eq!(validate(&config(&[&l], Some(&u), Some(&w), &m)), Ok(()));
}

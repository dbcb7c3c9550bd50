//! Unit tests: what `mount(8)` and `mount.fuse3` hand strata, and the
//! `/dev/fd/N` mountpoint (`mount.fuse3 -o drop_privileges`).

use super::parse::*;
use super::test_support::*;
use super::validate::require_fuse_fd;
use super::*;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use fuser::SessionACL;

// -- mount -t fuse.strata / fstab ------------------------------------------

/// `mount -t fuse.strata strata /mnt -o noatime,...` runs
/// `strata strata /mnt -o rw,noatime,...,dev,suid` (seen with strace).
#[test]
fn what_mount_fuse3_passes_is_accepted_silently() {
    let config = mount_with(
        &[
            "strata",
            "/mnt",
            "-o",
            "rw,noatime,nodev,lowerdir=/l,upperdir=/u,workdir=/w,exec,relatime,lazytime,sync,dirsync,dev,suid",
        ],
        true,
    );
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    assert_eq!(config.mountpoint, Path::new("/mnt"));
    assert_eq!(config.fuse_fd, None);
    for option in [
        FuseOption::ReadWrite,
        FuseOption::RelAtime,
        FuseOption::Dev,
        FuseOption::Suid,
        FuseOption::Exec,
        FuseOption::LazyTime,
        FuseOption::Sync,
        FuseOption::DirSync,
        FuseOption::AllowOther,
        FuseOption::DefaultPermissions,
    ] {
        assert!(config.fuse_options.contains(&option), "{option} missing");
    }
}

/// fstab-only options: mount(8) strips most of them, strata ignores any
/// that still reach it.
#[test]
fn fstab_only_options_are_ignored_silently() {
    let config = with_options(
        "defaults,nofail,_netdev,noauto,auto,owner,group,user,users,nouser,\
         x-systemd.automount,x-systemd.requires=a.service,X-mount.mkdir,comment=x,lowerdir=/l",
    );
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    assert_eq!(config.fuse_options, vec![FuseOption::ReadOnly]);
}

#[test]
fn symfollow_is_a_known_but_unsupported_flag() {
    assert_eq!(
        with_options("lowerdir=/l,nosymfollow").warnings,
        vec!["mount option 'nosymfollow' is not supported and was ignored"]
    );
}

// -- /dev/fd/N -------------------------------------------------------------

#[test]
fn dev_fd_paths() {
    for (path, fd) in [
        ("/dev/fd/3", Some(3)),
        ("/dev/fd/0", Some(0)),
        ("/dev/fd/007", Some(7)),
        ("/dev/fd/2147483647", Some(i32::MAX)),
        ("/dev/fd/", None),
        ("/dev/fd/3a", None),
        ("/dev/fd/-1", None),
        ("/dev/fd/+3", None),
        ("/dev/fd/3/", None),
        ("/dev/fdx/3", None),
        ("dev/fd/3", None),
        ("/proc/self/fd/3", None),
        ("/mnt", None),
    ] {
        assert_eq!(dev_fd(path.as_bytes()), Ok(fd), "{path}");
    }
    for path in ["/dev/fd/2147483648", "/dev/fd/99999999999999999999"] {
        assert_eq!(
            error(&["-o", "lowerdir=/l", path]),
            format!("mountpoint '{path}': not a valid file descriptor number")
        );
    }
}

/// `mount.fuse3 -o drop_privileges` runs `strata strata /dev/fd/N -o OPTS`.
#[test]
fn dev_fd_mountpoint_sets_fuse_fd() {
    let config = mount_with(
        &[
            "strata",
            "/dev/fd/3",
            "-o",
            "rw,lowerdir=/l,upperdir=/u,workdir=/w,dev,suid",
        ],
        true,
    );
    assert_eq!(config.fuse_fd, Some(3));
    assert_eq!(config.mountpoint, Path::new("/dev/fd/3"));
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    // The caller's options, without strata's root defaults.
    assert_eq!(
        config.fuse_options,
        vec![FuseOption::ReadWrite, FuseOption::Dev, FuseOption::Suid]
    );
    assert_eq!(config.session_acl(), SessionACL::Owner);
    assert!(!config.read_only);
}

#[test]
fn dev_fd_mount_keeps_explicit_access_options() {
    let config = mount_with(
        &[
            "-o",
            "lowerdir=/l,allow_other,default_permissions",
            "/dev/fd/4",
        ],
        true,
    );
    assert_eq!(config.session_acl(), SessionACL::All);
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    let config = mount_with(&["-o", "lowerdir=/l,allow_root", "/dev/fd/4"], false);
    assert_eq!(config.session_acl(), SessionACL::RootAndOwner);
}

/// strata relies on the kernel's `default_permissions` to check modes.
#[test]
fn dev_fd_mount_with_allow_other_alone_is_warned_about() {
    let config = mount_with(&["-o", "lowerdir=/l,allow_other", "/dev/fd/4"], true);
    assert_eq!(
        config.warnings,
        vec![
            "the caller mounted with allow_other but without default_permissions: \
             file modes are not checked"
        ]
    );
    // strata mounting itself adds default_permissions as root.
    assert!(
        mount_with(&["-o", "lowerdir=/l,allow_other", "/mnt"], true)
            .warnings
            .is_empty()
    );
}

/// The caller applied the kernel mount flags strata could not.
#[test]
fn dev_fd_mount_takes_every_mount_flag_silently() {
    let config = with_fd_options("lowerdir=/l,nodiratime,strictatime,nosymfollow,mand");
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    // Unknown options still get their warning.
    assert_eq!(
        with_fd_options("lowerdir=/l,bogus").warnings,
        vec!["unknown option 'bogus' ignored"]
    );
}

#[test]
fn dev_fd_mount_still_needs_lowerdir() {
    assert_eq!(error(&["/dev/fd/3"]), "lowerdir is required");
}

fn with_fd_options(options: &str) -> Config {
    mount(&["-o", options, "/dev/fd/3"])
}

// -- validating the fd -----------------------------------------------------

fn fd_error(fd: i32) -> String {
    let path = PathBuf::from(format!("/dev/fd/{fd}"));
    match require_fuse_fd(&path, fd) {
        Err(e) => e.to_string(),
        Ok(()) => panic!("fd {fd} accepted"),
    }
}

#[test]
fn a_closed_fd_is_refused() {
    assert_eq!(
        fd_error(i32::MAX),
        format!(
            "mountpoint '/dev/fd/{}': not an open file descriptor",
            i32::MAX
        )
    );
}

#[test]
fn an_fd_that_is_not_dev_fuse_is_refused() {
    let (reader, _writer) = std::io::pipe().expect("pipe");
    let fd = reader.as_raw_fd();
    assert_eq!(
        fd_error(fd),
        format!("mountpoint '/dev/fd/{fd}': not a /dev/fuse file descriptor (it is a pipe)")
    );
    let null = File::open("/dev/null").unwrap();
    let fd = null.as_raw_fd();
    assert_eq!(
        fd_error(fd),
        format!(
            "mountpoint '/dev/fd/{fd}': not a /dev/fuse file descriptor \
             (it is the character device 1:3)"
        )
    );
    let dir = File::open("/").unwrap();
    assert!(fd_error(dir.as_raw_fd()).ends_with("(it is a directory)"));
    let file = tempfile::tempfile().unwrap();
    assert!(fd_error(file.as_raw_fd()).ends_with("(it is a regular file)"));
}

#[test]
fn a_dev_fuse_fd_is_accepted_without_a_mountpoint_directory() {
    let Ok(fuse) = File::options().read(true).write(true).open("/dev/fuse") else {
        eprintln!("skipped: /dev/fuse cannot be opened here");
        return;
    };
    let fd = fuse.as_raw_fd();
    let path = PathBuf::from(format!("/dev/fd/{fd}"));
    assert_eq!(require_fuse_fd(&path, fd), Ok(()));
    // The whole validation: no directory checks for the mountpoint.
    let lower = tempfile::tempdir().unwrap();
    let config = Config {
        lowerdirs: vec![lower.path().to_path_buf()],
        mountpoint: path,
        fuse_fd: Some(fd),
        ..Config::default()
    };
    assert_eq!(validate(&config), Ok(()));
}

#[test]
fn bad_fuse_fd_message_is_one_line() {
    let error = OptionsError::BadFuseFd {
        path: PathBuf::from("/dev/fd/9"),
        reason: "not an open file descriptor".into(),
    };
    assert_eq!(
        error.to_string(),
        "mountpoint '/dev/fd/9': not an open file descriptor"
    );
}

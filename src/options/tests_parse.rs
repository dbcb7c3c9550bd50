//! Unit tests: fuse-overlayfs options, mount options, unknown options, errors, robustness.

use super::parse::*;
use super::test_support::*;
use super::*;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::time::Duration;

use fuser::{MountOption, SessionACL};

// -- fuse-overlayfs options ---------------------------------------------

#[test]
fn defaults() {
    let config = with_options("lowerdir=/l");
    let expected = Config {
        lowerdirs: paths(&["/l"]),
        mountpoint: PathBuf::from("/mnt"),
        read_only: true,
        fuse_options: vec![FuseOption::ReadOnly],
        ..Config::default()
    };
    assert_eq!(config, expected);
    assert!(config.fsync && config.writeback);
    assert!(!config.fast_ino && !config.noxattrs && !config.volatile);
    assert_eq!(config.xattr_permissions, 0);
    assert_eq!(config.timeout, None);
}

#[test]
fn switches() {
    let config = with_options("lowerdir=/l,squash_to_root,static_nlink,noacl,ino32_t,volatile");
    assert!(config.squash_to_root && config.static_nlink && config.noacl && config.ino32);
    assert!(config.volatile);
}

#[test]
fn switches_take_no_value() {
    for option in [
        "squash_to_root",
        "static_nlink",
        "noacl",
        "volatile",
        "ino32_t",
        "debug",
        "nodev",
        "allow_other",
        "ro",
    ] {
        assert_eq!(
            options_error(&format!("lowerdir=/l,{option}=1")),
            format!("option '{option}' takes no value (got '1')")
        );
    }
    assert_eq!(
        options_error("lowerdir=/l,noacl="),
        "option 'noacl' takes no value (got '')"
    );
}

#[test]
fn squash_to_ids() {
    let config = with_options("lowerdir=/l,squash_to_uid=1000,squash_to_gid=0");
    assert_eq!(
        (config.squash_to_uid, config.squash_to_gid),
        (Some(1000), Some(0))
    );
    assert_eq!(
        options_error("lowerdir=/l,squash_to_uid=abc"),
        "bad value for squash_to_uid: 'abc' (expected a user id)"
    );
    assert_eq!(
        options_error("lowerdir=/l,squash_to_gid=-1"),
        "bad value for squash_to_gid: '-1' (expected a group id)"
    );
    assert_eq!(
        options_error("lowerdir=/l,squash_to_uid"),
        "option 'squash_to_uid' requires a value"
    );
}

#[test]
fn xattr_permissions_values() {
    for (value, expected) in [("0", 0), ("1", 1), ("2", 2)] {
        let config = with_options(&format!("lowerdir=/l,xattr_permissions={value}"));
        assert_eq!(config.xattr_permissions, expected);
    }
    assert_eq!(
        options_error("lowerdir=/l,xattr_permissions=7"),
        "bad value for xattr_permissions: '7' (expected 0, 1 or 2)"
    );
    for value in ["x", "01", " 1", "-1"] {
        assert!(
            options_error(&format!("lowerdir=/l,xattr_permissions={value}"))
                .starts_with("bad value for xattr_permissions")
        );
    }
}

#[test]
fn zero_one_switches() {
    let config = with_options("lowerdir=/l,fsync=0,threaded=1,writeback=0,fast_ino=1,noxattrs=1");
    assert!(!config.fsync && !config.writeback);
    assert!(config.fast_ino && config.noxattrs);
    assert_eq!(config.threaded, Some(true));
    assert_eq!(with_options("lowerdir=/l,threaded=0").threaded, Some(false));
    for option in ["fsync", "threaded", "writeback", "fast_ino", "noxattrs"] {
        // Any integer, as fuse-overlayfs's %d: non-zero is on.
        assert_eq!(
            options_error(&format!("lowerdir=/l,{option}=on")),
            format!("bad value for {option}: 'on' (expected a number: 0 or 1)")
        );
        assert_eq!(
            options_error(&format!("lowerdir=/l,{option}")),
            format!("option '{option}' requires a value")
        );
    }
    assert!(options_error("lowerdir=/l,fsync=yes").contains("expected a number"));
    assert!(with_options("lowerdir=/l,noxattrs=2").noxattrs);
    assert!(!with_options("lowerdir=/l,fsync=-0").fsync);
    assert_eq!(with_options("lowerdir=/l,threaded=-1").threaded, Some(true));
}

#[test]
fn volatile_implies_no_fsync_in_any_order() {
    assert!(!with_options("lowerdir=/l,volatile").fsync);
    assert!(!with_options("lowerdir=/l,fsync=1,volatile").fsync);
    assert!(!with_options("lowerdir=/l,volatile,fsync=1").fsync);
}

#[test]
fn timeouts() {
    let timeout = |value: &str| with_options(&format!("lowerdir=/l,timeout={value}")).timeout;
    assert_eq!(timeout("1000000"), Some(Duration::from_secs(1_000_000)));
    assert_eq!(timeout("1.5"), Some(Duration::from_millis(1500)));
    assert_eq!(timeout("0"), Some(Duration::ZERO));
    assert_eq!(timeout(".25"), Some(Duration::from_millis(250)));
    assert_eq!(timeout("1e3"), Some(Duration::from_secs(1000)));
    for value in ["abc", "-1", "nan", "inf", "1e400", " 1", "1s", ""] {
        let message = options_error(&format!("lowerdir=/l,timeout={value}"));
        let expected = if value.is_empty() {
            "option 'timeout' requires a value".to_owned()
        } else {
            format!("bad value for timeout: '{value}' (expected a number of seconds)")
        };
        assert_eq!(message, expected);
    }
    assert_eq!(
        options_error("lowerdir=/l,timeout=-1"),
        "bad value for timeout: '-1' (expected a number of seconds)"
    );
}

#[test]
fn redirect_dir_and_xino() {
    for value in ["on", "off", "follow", "nofollow"] {
        let config = with_options(&format!("lowerdir=/l,redirect_dir={value}"));
        assert_eq!(config.redirect_dir.as_deref(), Some(value));
    }
    for value in ["on", "off", "auto"] {
        let config = with_options(&format!("lowerdir=/l,xino={value}"));
        assert_eq!(config.xino.as_deref(), Some(value));
    }
    assert_eq!(
        options_error("lowerdir=/l,redirect_dir=bogus"),
        "bad value for redirect_dir: 'bogus' (expected on, off, follow or nofollow)"
    );
    assert_eq!(
        options_error("lowerdir=/l,xino=ON"),
        "bad value for xino: 'ON' (expected on, off or auto)"
    );
}

#[test]
fn plugins_and_context_are_kept() {
    let config = with_options("lowerdir=/l,plugins=/a.so:/b.so,context=system_u:object_r:x:s0");
    assert_eq!(config.plugins.as_deref(), Some("/a.so:/b.so"));
    assert_eq!(config.context.as_deref(), Some("system_u:object_r:x:s0"));
    assert_eq!(
        options_error("lowerdir=/l,context="),
        "option 'context' requires a value"
    );
    assert_eq!(
        options_error("lowerdir=/l,plugins"),
        "option 'plugins' requires a value"
    );
}

// -- mount options ------------------------------------------------------

#[test]
fn root_defaults() {
    let config = mount_with(&["-o", "lowerdir=/l,upperdir=/u,workdir=/w", "/m"], true);
    assert_eq!(
        config.fuse_options,
        vec![
            FuseOption::DefaultPermissions,
            FuseOption::AllowOther,
            FuseOption::Suid,
            FuseOption::Dev
        ]
    );
    assert_eq!(config.session_acl(), SessionACL::All);
    assert_eq!(
        config.fuse_mount_options(),
        vec![
            MountOption::DefaultPermissions,
            MountOption::Suid,
            MountOption::Dev
        ]
    );
}

#[test]
fn no_defaults_for_other_users() {
    let config = mount_with(&["-o", "lowerdir=/l,upperdir=/u,workdir=/w", "/m"], false);
    assert!(config.fuse_options.is_empty());
    assert_eq!(config.session_acl(), SessionACL::Owner);
}

#[test]
fn nosuid_overrides_the_suid_default() {
    let config = mount_with(&["-o", "lowerdir=/l,nosuid", "/m"], true);
    assert!(config.fuse_options.contains(&FuseOption::NoSuid));
    assert!(!config.fuse_options.contains(&FuseOption::Suid));
    assert!(config.fuse_mount_options().contains(&MountOption::NoSuid));
}

#[test]
fn allow_root_overrides_the_allow_other_default() {
    let config = mount_with(&["-o", "lowerdir=/l,allow_root", "/m"], true);
    assert_eq!(config.session_acl(), SessionACL::RootAndOwner);
    assert!(!config.fuse_options.contains(&FuseOption::AllowOther));
}

#[test]
fn allow_other_and_allow_root_conflict() {
    for root in [false, true] {
        let result = parse_args(["-o", "lowerdir=/l,allow_other,allow_root", "/m"], root);
        assert_eq!(
            result.unwrap_err().to_string(),
            "options 'allow_other' and 'allow_root' are mutually exclusive"
        );
    }
    let config = with_options("lowerdir=/l,allow_other,allow_other");
    assert_eq!(config.session_acl(), SessionACL::All);
}

#[test]
fn later_option_replaces_its_opposite() {
    let config = with_options(
        "lowerdir=/l,upperdir=/u,workdir=/w,dev,nodev,exec,noexec,noexec,sync,async,atime,noatime,relatime,nolazytime,lazytime",
    );
    assert_eq!(
        config.fuse_options,
        vec![
            FuseOption::NoDev,
            FuseOption::NoExec,
            FuseOption::Async,
            FuseOption::RelAtime,
            FuseOption::LazyTime,
        ]
    );
}

#[test]
fn ro_and_rw() {
    let config = with_options("lowerdir=/l,upperdir=/u,workdir=/w,ro");
    assert!(config.read_only);
    assert_eq!(config.fuse_mount_options(), vec![MountOption::RO]);
    let config = with_options("lowerdir=/l,upperdir=/u,workdir=/w,ro,rw");
    assert!(!config.read_only);
    assert_eq!(config.fuse_mount_options(), vec![MountOption::RW]);
    let config = with_options("lowerdir=/l,rw");
    assert!(
        config.read_only,
        "no upperdir means read-only whatever was asked"
    );
    assert_eq!(config.fuse_options, vec![FuseOption::ReadOnly]);
}

#[test]
fn named_mount_options() {
    let config = with_options(
        "lowerdir=/l,fsname=overlay,subtype=strata,max_read=131072,fsname=other,dirsync,default_permissions,auto_unmount",
    );
    assert_eq!(
        config.fuse_options,
        vec![
            FuseOption::Subtype("strata".into()),
            FuseOption::MaxRead(131_072),
            FuseOption::FsName("other".into()),
            FuseOption::DirSync,
            FuseOption::DefaultPermissions,
            FuseOption::AutoUnmount,
            FuseOption::ReadOnly,
        ]
    );
    assert_eq!(
        config.fuse_mount_options(),
        vec![
            MountOption::Subtype("strata".into()),
            MountOption::CUSTOM("max_read=131072".into()),
            MountOption::FSName("other".into()),
            MountOption::DirSync,
            MountOption::DefaultPermissions,
            MountOption::AutoUnmount,
            MountOption::RO,
        ]
    );
    assert_eq!(
        options_error("lowerdir=/l,max_read=lots"),
        "bad value for max_read: 'lots' (expected a number of bytes)"
    );
    assert_eq!(
        options_error("lowerdir=/l,fsname="),
        "option 'fsname' requires a value"
    );
}

#[test]
fn every_fuse_option_maps_to_fuser() {
    let config =
        with_options("lowerdir=/l,upperdir=/u,workdir=/w,suid,dev,exec,atime,sync,nolazytime,rw");
    assert_eq!(
        config.fuse_mount_options(),
        vec![
            MountOption::Suid,
            MountOption::Dev,
            MountOption::Exec,
            MountOption::Atime,
            MountOption::Sync,
            MountOption::CUSTOM("nolazytime".into()),
            MountOption::RW,
        ]
    );
    let config = with_options("lowerdir=/l,relatime,noatime");
    assert!(config.fuse_mount_options().contains(&MountOption::NoAtime));
    let config = with_options("lowerdir=/l,noatime,relatime");
    assert!(config.fuse_mount_options().contains(&MountOption::Atime));
}

#[test]
fn context_reaches_the_kernel_mount() {
    let config =
        with_options("lowerdir=/l,context=\"system_u:object_r:container_file_t:s0:c1,c2\"");
    assert_eq!(
        config.fuse_mount_options().last(),
        Some(&MountOption::CUSTOM(
            "context=\"system_u:object_r:container_file_t:s0:c1,c2\"".into()
        ))
    );
    let config = with_options("lowerdir=/l,context=system_u:object_r:x:s0");
    assert_eq!(
        config.fuse_mount_options().last(),
        Some(&MountOption::CUSTOM(
            "context=system_u:object_r:x:s0".into()
        ))
    );
}

#[test]
fn fuse_option_display_round_trips() {
    let mut all: Vec<FuseOption> = FLAG_OPTIONS
        .iter()
        .map(|(_, option)| option.clone())
        .collect();
    all.extend([
        FuseOption::FsName("n".into()),
        FuseOption::Subtype("s".into()),
        FuseOption::MaxRead(4096),
    ]);
    for option in all {
        let text = option.to_string();
        let config = with_options(&format!("lowerdir=/l,upperdir=/u,workdir=/w,{text}"));
        assert_eq!(config.fuse_options, vec![option], "{text}");
    }
}

// -- unknown and ignored options ----------------------------------------

#[test]
fn metacopy_on_and_off() {
    assert!(!with_options("lowerdir=/l").metacopy);
    assert!(with_options("lowerdir=/l,metacopy=on").metacopy);
    assert!(!with_options("lowerdir=/l,metacopy=on,metacopy=off").metacopy);
    assert!(options_error("lowerdir=/l,metacopy=1").contains("expected on or off"));
}

#[test]
fn unknown_options_become_warnings() {
    let config = with_options("lowerdir=/l,foo,bar=1,metacopy2=on,Noacl");
    assert_eq!(
        config.warnings,
        vec![
            "unknown option 'foo' ignored",
            "unknown option 'bar=1' ignored",
            "unknown option 'metacopy2=on' ignored",
            "unknown option 'Noacl' ignored",
        ]
    );
    assert!(!config.noacl, "option names are case-sensitive");
}

#[test]
fn unsupported_mount_flags_get_their_own_warning() {
    let config = with_options("lowerdir=/l,nodiratime,strictatime");
    assert_eq!(
        config.warnings,
        vec![
            "mount option 'nodiratime' is not supported and was ignored",
            "mount option 'strictatime' is not supported and was ignored",
        ]
    );
    assert_eq!(config.fuse_options, vec![FuseOption::ReadOnly]);
}

#[test]
fn mount_helper_options_are_dropped_silently() {
    let config = with_options(
        "defaults,lowerdir=/l,auto,noauto,nofail,_netdev,user,nouser,users,x-systemd.automount,x-foo=bar,comment=hi",
    );
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    assert_eq!(config.fuse_options, vec![FuseOption::ReadOnly]);
}

#[test]
fn warnings_survive_other_options() {
    let config = mount(&["-o", "bogus1", "overlay", "/m", "-o", "lowerdir=/l,bogus2"]);
    assert_eq!(
        config.warnings,
        vec![
            "unknown option 'bogus1' ignored",
            "unknown option 'bogus2' ignored",
        ]
    );
}

// -- errors and help ----------------------------------------------------

#[test]
fn every_error_is_one_line() {
    let errors = [
        OptionsError::UnknownFlag("--x".into()),
        OptionsError::MissingFlagArgument("-o".into()),
        OptionsError::MissingMountpoint,
        OptionsError::EmptyMountpoint,
        OptionsError::MissingLowerdir,
        OptionsError::UpperdirWithoutWorkdir,
        OptionsError::WorkdirWithoutUpperdir,
        OptionsError::UnterminatedQuote {
            options: "\"".into(),
        },
        OptionsError::MissingValue { option: "x".into() },
        OptionsError::UnexpectedValue {
            option: "x".into(),
            value: "1".into(),
        },
        OptionsError::BadValue {
            option: "x".into(),
            value: "1".into(),
            expected: "2",
        },
        OptionsError::InvalidPath {
            option: "lowerdir",
            value: ":".into(),
            reason: "empty path",
        },
        OptionsError::InvalidIdMapping {
            option: "uidmapping",
            value: "0".into(),
            reason: "r".into(),
        },
        OptionsError::ConflictingOptions {
            first: "a",
            second: "b",
        },
        OptionsError::Io {
            role: Role::Lowerdir,
            path: "/x".into(),
            message: "m".into(),
        },
        OptionsError::NotADirectory {
            role: Role::Upperdir,
            path: "/x".into(),
        },
        OptionsError::DifferentFilesystems {
            upperdir: "/u".into(),
            workdir: "/w".into(),
        },
        OptionsError::SameDirectory {
            first_role: Role::Workdir,
            first: "/a".into(),
            second_role: Role::Upperdir,
            second: "/a".into(),
        },
        OptionsError::Nested {
            inner_role: Role::Mountpoint,
            inner: "/l/m".into(),
            outer_role: Role::Lowerdir,
            outer: "/l".into(),
        },
    ];
    for error in errors {
        let text = error.to_string();
        assert!(!text.is_empty() && !text.contains('\n'), "{text:?}");
        assert!(!text.ends_with(char::is_whitespace), "{text:?}");
    }
}

#[test]
fn usage_mentions_every_option() {
    let text = usage();
    assert!(text.starts_with("usage: strata "));
    let mut names: Vec<&str> = FLAG_OPTIONS.iter().map(|(name, _)| *name).collect();
    names.extend([
        "lowerdir=",
        "upperdir=",
        "workdir=",
        "uidmapping=",
        "gidmapping=",
        "squash_to_root",
        "squash_to_uid=",
        "squash_to_gid=",
        "xattr_permissions=",
        "static_nlink",
        "noacl",
        "fsync=",
        "volatile",
        "timeout=",
        "threaded=",
        "writeback=",
        "fast_ino=",
        "noxattrs=",
        "passthrough=",
        "metacopy=",
        "redirect_dir=",
        "xino=",
        "ino32_t",
        "plugins=",
        "context=",
        "debug",
        "fsname=",
        "subtype=",
        "max_read=",
        "--version",
        "--help",
        "-f",
        "-d",
        "-s",
        "-o",
    ]);
    for name in names {
        assert!(text.contains(name), "usage does not mention {name}");
    }
    assert!(
        text.lines().all(|line| line.len() <= 80),
        "usage lines fit 80 columns"
    );
}

// -- robustness ---------------------------------------------------------

/// A tiny deterministic pseudo-random generator (xorshift64*), so the
/// robustness test needs no extra crate and always checks the same inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap_or(0)
    }
}

/// No opposite options ever both reach `fuser` (it would refuse to
/// mount) and no slot holds two options.
fn assert_consistent(config: &Config) {
    let mount_options = config.fuse_mount_options();
    let pairs = [
        (MountOption::Suid, MountOption::NoSuid),
        (MountOption::Dev, MountOption::NoDev),
        (MountOption::Exec, MountOption::NoExec),
        (MountOption::Atime, MountOption::NoAtime),
        (MountOption::RO, MountOption::RW),
        (MountOption::Sync, MountOption::Async),
    ];
    for (a, b) in pairs {
        assert!(
            !(mount_options.contains(&a) && mount_options.contains(&b)),
            "{mount_options:?}"
        );
    }
    for (index, option) in config.fuse_options.iter().enumerate() {
        let later = config.fuse_options.iter().skip(index + 1);
        assert!(
            later.clone().all(|other| other.slot() != option.slot()),
            "{:?}",
            config.fuse_options
        );
    }
    assert_eq!(
        config.read_only,
        config.fuse_options.contains(&FuseOption::ReadOnly)
    );
    assert!(!config.lowerdirs.is_empty());
    assert_eq!(config.upperdir.is_some(), config.workdir.is_some());
    assert!(!(config.volatile && config.fsync));
    let _ = config.session_acl();
}

#[test]
fn arbitrary_input_never_panics() {
    let tokens: &[&[u8]] = &[
        b"-o",
        b"-f",
        b"-d",
        b"-s",
        b"--",
        b"-",
        b"-h",
        b"-x",
        b"",
        b",",
        b":",
        b"=",
        b"\"",
        b"\\",
        b"\xff",
        b"/m",
        b"lowerdir=",
        b"upperdir=",
        b"workdir=",
        b"/a",
        b"uidmapping=",
        b"gidmapping=",
        b"0",
        b"1",
        b"65536",
        b"4294967295",
        b"timeout=",
        b"1e9",
        b"-1",
        b"xattr_permissions=",
        b"context=",
        b"allow_other",
        b"allow_root",
        b"suid",
        b"nosuid",
        b"ro",
        b"rw",
        b"volatile",
        b"fsync=",
        b"max_read=",
        b"fsname=",
        b"nodiratime",
        b"redirect_dir=",
        b"xino=",
        b"on",
        b"squash_to_uid=",
        b"-oallow_root,",
    ];
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut mounts = 0;
    for _ in 0..30_000 {
        let mut args: Vec<OsString> = (0..rng.below(7))
            .map(|_| {
                let bytes: Vec<u8> = (0..=rng.below(4))
                    .flat_map(|_| tokens[rng.below(tokens.len())].iter().copied())
                    .collect();
                OsString::from_vec(bytes)
            })
            .collect();
        // Half of the inputs start from a valid mount, to reach deeper.
        if rng.below(2) == 0 {
            args.insert(0, OsString::from("-olowerdir=/l"));
            args.push(OsString::from("/m"));
        }
        for is_root in [false, true] {
            match parse_args(args.clone(), is_root) {
                Ok(Command::Mount(config)) => {
                    mounts += 1;
                    assert_consistent(&config);
                }
                Ok(_) => {}
                Err(error) => assert!(!error.to_string().contains('\n')),
            }
        }
    }
    assert!(
        mounts > 100,
        "the generator should reach valid mounts ({mounts})"
    );
}

//! Unit tests: flags, positionals, option lists, layer paths, ID mappings.

use super::parse::*;
use super::test_support::*;
use super::*;
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

// -- flags and positionals -----------------------------------------------

#[test]
fn minimal_read_only_mount() {
    let config = mount(&["-o", "lowerdir=/l", "/mnt"]);
    assert_eq!(config.lowerdirs, paths(&["/l"]));
    assert_eq!(config.mountpoint, PathBuf::from("/mnt"));
    assert_eq!(config.upperdir, None);
    assert_eq!(config.workdir, None);
    assert!(config.read_only);
    assert_eq!(config.fuse_options, vec![FuseOption::ReadOnly]);
    assert!(config.warnings.is_empty());
    assert!(!config.foreground && !config.debug);
}

#[test]
fn full_read_write_mount() {
    let config = mount(&["-o", "lowerdir=/a:/b,upperdir=/u,workdir=/w", "/mnt"]);
    assert_eq!(config.lowerdirs, paths(&["/a", "/b"]));
    assert_eq!(config.upperdir, Some(PathBuf::from("/u")));
    assert_eq!(config.workdir, Some(PathBuf::from("/w")));
    assert!(!config.read_only);
    assert!(config.fuse_options.is_empty());
}

#[test]
fn version_and_help() {
    for flag in ["--version", "-V"] {
        assert_eq!(parse(&[flag]), Ok(Command::Version));
    }
    for flag in ["--help", "-h"] {
        assert_eq!(parse(&[flag]), Ok(Command::Help));
    }
    assert_eq!(
        parse(&["-o", "lowerdir=/l", "/mnt", "-h"]),
        Ok(Command::Help)
    );
    assert_eq!(parse(&["-V", "--bogus"]), Ok(Command::Version));
}

#[test]
fn flags_are_read_left_to_right() {
    assert_eq!(error(&["--bogus", "--help"]), "unknown flag '--bogus'");
    assert_eq!(
        parse(&["--", "--help"]).map(|_| ()),
        Err(OptionsError::MissingLowerdir)
    );
}

#[test]
fn unknown_flags_are_errors() {
    for flag in ["--bogus", "-x", "-fd", "--o", "-O", "--options=lowerdir=/l"] {
        assert_eq!(
            error(&[flag, "-o", "lowerdir=/l", "/mnt"]),
            format!("unknown flag '{flag}'")
        );
    }
}

#[test]
fn foreground_and_debug_flags() {
    let config = mount(&["-f", "-o", "lowerdir=/l", "/mnt"]);
    assert!(config.foreground && !config.debug);
    for flag in ["-d", "--debug"] {
        let config = mount(&[flag, "-o", "lowerdir=/l", "/mnt"]);
        assert!(config.foreground && config.debug, "{flag}");
    }
    let config = with_options("lowerdir=/l,debug");
    assert!(config.foreground && config.debug);
}

#[test]
fn single_thread_flag() {
    assert_eq!(with_options("lowerdir=/l").threaded, None);
    assert_eq!(
        mount(&["-s", "-o", "lowerdir=/l", "/m"]).threaded,
        Some(false)
    );
    let config = mount(&["-s", "-o", "lowerdir=/l,threaded=1", "/m"]);
    assert_eq!(config.threaded, Some(true), "an explicit option beats -s");
}

#[test]
fn glued_repeated_and_trailing_option_lists() {
    let config = mount(&["-olowerdir=/l", "-o", "upperdir=/u", "/mnt", "-oworkdir=/w"]);
    assert_eq!(config.lowerdirs, paths(&["/l"]));
    assert_eq!(config.upperdir, Some(PathBuf::from("/u")));
    assert_eq!(config.workdir, Some(PathBuf::from("/w")));
}

#[test]
fn mount_fuse3_argument_order() {
    let config = mount(&["overlay", "/mnt", "-o", "lowerdir=/l,nodev"]);
    assert_eq!(config.mountpoint, PathBuf::from("/mnt"));
    assert!(config.fuse_options.contains(&FuseOption::NoDev));
}

#[test]
fn last_positional_is_the_mountpoint() {
    let config = mount(&["strata", "extra", "/real", "-o", "lowerdir=/l"]);
    assert_eq!(config.mountpoint, PathBuf::from("/real"));
}

#[test]
fn double_dash_ends_flags() {
    let config = mount(&["-o", "lowerdir=/l", "--", "-o", "-weird"]);
    assert_eq!(config.mountpoint, PathBuf::from("-weird"));
    assert_eq!(config.lowerdirs, paths(&["/l"]));
}

#[test]
fn single_dash_is_a_positional() {
    assert_eq!(
        mount(&["-o", "lowerdir=/l", "-"]).mountpoint,
        PathBuf::from("-")
    );
}

#[test]
fn dash_o_needs_an_argument() {
    assert_eq!(error(&["/mnt", "-o"]), "flag '-o' requires an argument");
}

#[test]
fn dash_o_takes_the_next_argument_whatever_it_is() {
    let config = mount(&["-o", "-f", "-o", "lowerdir=/l", "/mnt"]);
    assert!(!config.foreground);
    assert_eq!(config.warnings, vec!["unknown option '-f' ignored"]);
}

#[test]
fn missing_or_empty_mountpoint() {
    assert_eq!(error(&["-o", "lowerdir=/l"]), "missing mountpoint");
    assert_eq!(error(&[]), "missing mountpoint");
    assert_eq!(
        error(&["-o", "lowerdir=/l", ""]),
        "mountpoint must not be empty"
    );
}

#[test]
fn missing_lowerdir() {
    assert_eq!(error(&["/mnt"]), "lowerdir is required");
    assert_eq!(
        error(&["-o", "upperdir=/u,workdir=/w", "/mnt"]),
        "lowerdir is required"
    );
}

#[test]
fn upper_and_work_come_together() {
    assert_eq!(
        options_error("lowerdir=/l,upperdir=/u"),
        "upperdir given without workdir"
    );
    assert_eq!(
        options_error("lowerdir=/l,workdir=/w"),
        "workdir given without upperdir"
    );
}

#[test]
fn option_errors_come_before_structural_ones() {
    assert_eq!(
        error(&["-o", "xattr_permissions=9"]),
        "bad value for xattr_permissions: '9' (expected 0, 1 or 2)"
    );
}

#[test]
fn non_utf8_arguments() {
    let mut option = b"lowerdir=/a\xff:/b\xfe".to_vec();
    option.extend_from_slice(b",upperdir=/u\xfd,workdir=/w");
    let args = vec![
        OsString::from("-o"),
        OsString::from_vec(option),
        OsString::from_vec(b"/mnt\xfc".to_vec()),
    ];
    let Ok(Command::Mount(config)) = parse_args(args, false) else {
        panic!("expected a mount");
    };
    let bytes = |path: &Path| path.as_os_str().as_bytes().to_vec();
    assert_eq!(bytes(&config.lowerdirs[0]), b"/a\xff");
    assert_eq!(bytes(&config.lowerdirs[1]), b"/b\xfe");
    assert_eq!(
        config.upperdir.as_deref().map(bytes),
        Some(b"/u\xfd".to_vec())
    );
    assert_eq!(bytes(&config.mountpoint), b"/mnt\xfc");
}

#[test]
fn non_utf8_in_a_text_value_is_an_error() {
    let args = vec![
        OsString::from("-o"),
        OsString::from_vec(b"lowerdir=/l,fsname=\xff".to_vec()),
        OsString::from("/mnt"),
    ];
    let message = parse_args(args, false).unwrap_err().to_string();
    assert_eq!(
        message,
        "bad value for fsname: '\u{fffd}' (expected valid UTF-8 text)"
    );
}

#[test]
fn non_utf8_unknown_option_is_a_warning() {
    let args = vec![
        OsString::from("-o"),
        OsString::from_vec(b"lowerdir=/l,b\xffd=1".to_vec()),
        OsString::from("/mnt"),
    ];
    let Ok(Command::Mount(config)) = parse_args(args, false) else {
        panic!("expected a mount");
    };
    assert_eq!(
        config.warnings,
        vec!["unknown option 'b\u{fffd}d=1' ignored"]
    );
}

// -- splitting option lists -----------------------------------------------

#[test]
fn empty_items_are_skipped() {
    let config = with_options(",,lowerdir=/l,,noacl,,,");
    assert_eq!(config.lowerdirs, paths(&["/l"]));
    assert!(config.noacl);
    assert!(config.warnings.is_empty());
    assert!(
        mount(&["-o", "", "-o", ",", "-o", "lowerdir=/l", "/m"])
            .warnings
            .is_empty()
    );
}

#[test]
fn quoted_value_keeps_its_commas() {
    let config =
        with_options("lowerdir=/l,context=\"system_u:object_r:container_file_t:s0:c1,c2\",nodev");
    assert_eq!(
        config.context.as_deref(),
        Some("system_u:object_r:container_file_t:s0:c1,c2")
    );
    assert!(config.fuse_options.contains(&FuseOption::NoDev));
    assert!(config.warnings.is_empty());
}

#[test]
fn quotes_are_stripped_from_any_value() {
    let config = with_options("lowerdir=\"/a,b:/c\",fsname=\"x\"");
    assert_eq!(config.lowerdirs, paths(&["/a,b", "/c"]));
    assert!(
        config
            .fuse_options
            .contains(&FuseOption::FsName("x".into()))
    );
}

#[test]
fn quotes_inside_a_value_are_kept() {
    let config = with_options("lowerdir=/l,context=a\"b,c\"d");
    assert_eq!(config.context.as_deref(), Some("a\"b,c\"d"));
}

#[test]
fn unterminated_quote_is_an_error() {
    assert_eq!(
        options_error("lowerdir=/l,context=\"a,b"),
        "unterminated double quote in options 'lowerdir=/l,context=\"a,b'"
    );
}

#[test]
fn backslash_protects_a_comma() {
    let config = with_options("lowerdir=/a\\,b:/c");
    assert_eq!(config.lowerdirs, paths(&["/a,b", "/c"]));
    let config = with_options("lowerdir=/l,context=\"x\\\"y,z\"");
    assert_eq!(config.context.as_deref(), Some("x\\\"y,z"));
}

#[test]
fn split_option_list_directly() {
    assert_eq!(
        split_option_list(b"a,b=1,,c\\,d,\"e,f\","),
        Ok(vec![&b"a"[..], b"b=1", b"c\\,d", b"\"e,f\""])
    );
    assert_eq!(split_option_list(b""), Ok(vec![]));
    assert!(split_option_list(b"\"").is_err());
}

// -- layer paths --------------------------------------------------------

#[test]
fn lowerdirs_are_top_first_and_kept_verbatim() {
    let config = with_options("lowerdir=/s/l/ID/../diff1:relative/dir:/b//c/:.");
    assert_eq!(
        config.lowerdirs,
        paths(&["/s/l/ID/../diff1", "relative/dir", "/b//c/", "."])
    );
}

#[test]
fn lowerdir_escapes() {
    let config = with_options("lowerdir=/a\\:b:/c\\\\d:/e\\f");
    assert_eq!(config.lowerdirs, paths(&["/a:b", "/c\\d", "/ef"]));
}

#[test]
fn empty_lowerdir_components_are_errors() {
    for value in ["/a::/b", ":/a", "/a:", ":", "::"] {
        assert_eq!(
            options_error(&format!("lowerdir={value}")),
            format!("invalid lowerdir '{value}': empty path")
        );
    }
    assert_eq!(
        options_error("lowerdir="),
        "option 'lowerdir' requires a value"
    );
    assert_eq!(
        options_error("lowerdir"),
        "option 'lowerdir' requires a value"
    );
}

#[test]
fn lowerdir_trailing_backslash_is_an_error() {
    assert_eq!(
        options_error("lowerdir=/a:/b\\"),
        "invalid lowerdir '/a:/b\\': trailing backslash"
    );
}

#[test]
fn last_lowerdir_wins() {
    let config = mount(&["-o", "lowerdir=/x:/y", "-o", "lowerdir=/z", "/m"]);
    assert_eq!(config.lowerdirs, paths(&["/z"]));
    assert_eq!(
        with_options("lowerdir=/a,lowerdir=/b").lowerdirs,
        paths(&["/b"])
    );
}

#[test]
fn upper_and_work_paths() {
    let config = with_options("lowerdir=/l,upperdir=/u\\:1\\\\x,workdir=/w:2");
    assert_eq!(config.upperdir, Some(PathBuf::from("/u:1\\x")));
    assert_eq!(config.workdir, Some(PathBuf::from("/w:2")));
    // The backslash protects the comma, so all of it is the upperdir.
    assert_eq!(
        options_error("lowerdir=/l,upperdir=/u\\,workdir=/w"),
        "upperdir given without workdir"
    );
    let config = with_options("lowerdir=/l,upperdir=/u\\,v,workdir=/w");
    assert_eq!(config.upperdir, Some(PathBuf::from("/u,v")));
    assert_eq!(
        options_error("lowerdir=/l,upperdir=/u,workdir=/w\\"),
        "invalid workdir '/w\\': trailing backslash"
    );
    assert_eq!(
        options_error("lowerdir=/l,upperdir=,workdir=/w"),
        "option 'upperdir' requires a value"
    );
}

#[test]
fn later_upperdir_wins() {
    let config = with_options("lowerdir=/l,upperdir=/u1,workdir=/w,upperdir=/u2");
    assert_eq!(config.upperdir, Some(PathBuf::from("/u2")));
}

// -- ID mappings --------------------------------------------------------

fn map(container: u32, host: u32, count: u32) -> IdMapping {
    IdMapping {
        container,
        host,
        count,
    }
}

#[test]
fn id_mappings() {
    let config = with_options("lowerdir=/l,uidmapping=0:100000:65536,gidmapping=:0:200000:1");
    assert_eq!(config.uid_mappings, vec![map(0, 100_000, 65536)]);
    assert_eq!(config.gid_mappings, vec![map(0, 200_000, 1)]);
}

#[test]
fn several_triples() {
    let config = with_options("lowerdir=/l,uidmapping=0:100000:1:1:200000:5");
    assert_eq!(
        config.uid_mappings,
        vec![map(0, 100_000, 1), map(1, 200_000, 5)]
    );
}

#[test]
fn stray_colons_at_the_ends() {
    let config = with_options("lowerdir=/l,uidmapping=:0:1000:1:1:110000:65536:");
    assert_eq!(
        config.uid_mappings,
        vec![map(0, 1000, 1), map(1, 110_000, 65536)]
    );
}

#[test]
fn empty_mapping_means_none() {
    assert!(
        with_options("lowerdir=/l,uidmapping=")
            .uid_mappings
            .is_empty()
    );
    assert!(
        with_options("lowerdir=/l,gidmapping")
            .gid_mappings
            .is_empty()
    );
    assert!(
        with_options("lowerdir=/l,gidmapping=:")
            .gid_mappings
            .is_empty()
    );
}

#[test]
fn incomplete_triples_are_errors() {
    for value in [
        ":0:100000",
        "0:1",
        "0:100000:1:1",
        "0::1",
        "0:1:1::2:3:4",
        "::",
    ] {
        assert_eq!(
            options_error(&format!("lowerdir=/l,uidmapping={value}")),
            format!("invalid uidmapping '{value}': expected container:host:count triples")
        );
    }
}

#[test]
fn mapping_fields_must_be_numbers() {
    assert_eq!(
        options_error("lowerdir=/l,gidmapping=a:b:c"),
        "invalid gidmapping 'a:b:c': 'a' is not a valid id or count"
    );
    for value in ["0:-1:1", "0:+1:1", "0: 1:1", "0:4294967296:1", "0:1:0x10"] {
        let message = options_error(&format!("lowerdir=/l,uidmapping={value}"));
        assert!(message.contains("is not a valid id or count"), "{message}");
    }
}

#[test]
fn mapping_count_must_not_be_zero() {
    assert_eq!(
        options_error("lowerdir=/l,uidmapping=0:100000:0"),
        "invalid uidmapping '0:100000:0': count must be at least 1"
    );
}

#[test]
fn mapping_ranges_must_fit_in_32_bits() {
    let config = with_options("lowerdir=/l,uidmapping=4294967295:0:1");
    assert_eq!(config.uid_mappings, vec![map(u32::MAX, 0, 1)]);
    assert_eq!(
        options_error("lowerdir=/l,uidmapping=0:4294967295:2"),
        "invalid uidmapping '0:4294967295:2': range 0:4294967295:2 runs past the largest id"
    );
}

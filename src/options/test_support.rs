//! Helpers shared by the option tests.

use super::parse::*;
use super::*;
use std::path::PathBuf;

// -- helpers ------------------------------------------------------------

pub(super) fn parse(args: &[&str]) -> Result<Command, OptionsError> {
    parse_args(args.iter().copied(), false)
}

pub(super) fn mount_with(args: &[&str], is_root: bool) -> Config {
    match parse_args(args.iter().copied(), is_root) {
        Ok(Command::Mount(config)) => *config,
        other => panic!("expected a mount for {args:?}, got {other:?}"),
    }
}

pub(super) fn mount(args: &[&str]) -> Config {
    mount_with(args, false)
}

/// Parses `-o OPTIONS /mnt` as a non-root user.
pub(super) fn with_options(options: &str) -> Config {
    mount(&["-o", options, "/mnt"])
}

pub(super) fn error(args: &[&str]) -> String {
    match parse(args) {
        Err(error) => error.to_string(),
        other => panic!("expected an error for {args:?}, got {other:?}"),
    }
}

pub(super) fn options_error(options: &str) -> String {
    error(&["-o", options, "/mnt"])
}

pub(super) fn paths(list: &[&str]) -> Vec<PathBuf> {
    list.iter().map(PathBuf::from).collect()
}

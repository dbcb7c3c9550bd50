//! The layer tools: `strata inspect`, `strata diff` and `strata mount-image`.
//!
//! A first argument naming one of them selects it; anything else is a mount
//! command line (fuse-overlayfs's shapes never start with these words).

use std::ffi::OsString;
use std::process::ExitCode;

pub mod inspect;

pub mod diff;
pub mod mount_image;
pub mod tar_write;

/// The tools, by the name that selects them.
pub const NAMES: [&str; 3] = ["inspect", "diff", "mount-image"];

/// Runs tool `name` (one of [`NAMES`]) with the arguments after it.
pub fn run(name: &str, args: Vec<OsString>) -> ExitCode {
    let result: Result<(), String> = match name {
        "inspect" => return inspect::main(args),
        "diff" => diff::run(args),
        "mount-image" => mount_image::run(args),
        _ => Err(format!("no such tool (the tools: {})", NAMES.join(", "))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata {name}: {e}");
            ExitCode::FAILURE
        }
    }
}

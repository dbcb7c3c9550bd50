//! `strata`: parse the command line, mount, serve.

use std::process::ExitCode;

use strata::options::{self, Command};
use strata::{daemon, sys, tools};

fn main() -> ExitCode {
    let inherited = sys::inherited_fds();
    let mut args: Vec<_> = std::env::args_os().skip(1).collect();
    if let Some(tool) = args.first().and_then(|a| a.to_str())
        && tools::NAMES.contains(&tool)
    {
        let tool = tool.to_owned();
        return tools::run(&tool, args.split_off(1));
    }
    let config = match options::parse_args(args, sys::geteuid() == 0) {
        Ok(Command::Version) => {
            println!("strata {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Ok(Command::Help) => {
            print!("{}", options::usage());
            return ExitCode::SUCCESS;
        }
        Ok(Command::Mount(config)) => config,
        Err(e) => return fail(&e),
    };
    let mut config = config;
    options::drop_context_without_selinux(&mut config);
    let level = if config.debug { "debug" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    for warning in &config.warnings {
        eprintln!("strata: warning: {warning}");
    }
    if let Err(e) = options::validate(&config) {
        return fail(&e);
    }
    match daemon::mount_and_serve(&config, &inherited) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("strata: {e}");
    ExitCode::FAILURE
}

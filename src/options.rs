//! TEMPORARY stub, replaced by the real parser.
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;
pub enum Command {
    Mount(Box<Config>),
    Version,
    Help,
}
#[derive(Debug, Default)]
pub struct Config {
    pub lowerdirs: Vec<PathBuf>,
    pub upperdir: Option<PathBuf>,
    pub workdir: Option<PathBuf>,
    pub mountpoint: PathBuf,
    pub foreground: bool,
    pub debug: bool,
    pub threaded: Option<bool>,
    pub timeout: Option<Duration>,
    pub warnings: Vec<String>,
}
#[derive(Debug)]
pub struct OptionsError(String);
impl std::fmt::Display for OptionsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl Config {
    pub fn fuse_mount_options(&self) -> Vec<fuser::MountOption> {
        vec![fuser::MountOption::DefaultPermissions]
    }
    pub fn session_acl(&self) -> fuser::SessionACL {
        fuser::SessionACL::All
    }
}
pub fn usage() -> &'static str {
    "usage\n"
}
pub fn validate(_c: &Config) -> Result<(), OptionsError> {
    Ok(())
}
pub fn parse_args<I, S>(args: I, _is_root: bool) -> Result<Command, OptionsError>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let mut c = Config::default();
    let mut it = args.into_iter().map(Into::into);
    while let Some(a) = it.next() {
        let s = a.to_string_lossy().to_string();
        if s == "-f" {
            c.foreground = true;
            continue;
        }
        if s == "-d" {
            c.debug = true;
            c.foreground = true;
            continue;
        }
        if s == "--version" {
            return Ok(Command::Version);
        }
        if s == "-o" {
            let o = it.next().unwrap().to_string_lossy().to_string();
            for kv in o.split(',') {
                if let Some(v) = kv.strip_prefix("lowerdir=") {
                    c.lowerdirs = v.split(':').map(PathBuf::from).collect()
                }
                if let Some(v) = kv.strip_prefix("upperdir=") {
                    c.upperdir = Some(v.into())
                }
                if let Some(v) = kv.strip_prefix("workdir=") {
                    c.workdir = Some(v.into())
                }
            }
            continue;
        }
        c.mountpoint = s.into();
    }
    if c.lowerdirs.is_empty() {
        return Err(OptionsError("lowerdir is required".into()));
    }
    Ok(Command::Mount(Box::new(c)))
}

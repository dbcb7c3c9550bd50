//! Turning strata's command line into a validated [`Config`].
//!
//! strata is started exactly like `fuse-overlayfs`, by podman, buildah,
//! containerd or `mount.fuse3`:
//!
//! ```text
//! strata [-f] [-d|--debug] [-s] [-o OPTS]... [SOURCE] MOUNTPOINT [-o OPTS]...
//! strata --version | -V
//! strata --help | -h
//! ```
//!
//! The work is split in two steps that are kept apart on purpose:
//!
//! 1. [`parse_args`] is *pure*. It only looks at the strings it is handed
//!    (and at `is_root`, which the caller passes in instead of the parser
//!    asking the system), so it is deterministic and easy to test. It
//!    returns a [`Command`]; for a mount that is a [`Config`].
//! 2. [`validate`] checks a [`Config`] against the real filesystem: the
//!    layers exist and are directories, upper and work share a filesystem,
//!    and no two of the directories are nested inside each other.
//!
//! # How an option string is read
//!
//! Each `-o` argument is a comma-separated list such as
//! `lowerdir=/a:/b,upperdir=/u,workdir=/w,nodev`. Three rules decide where
//! an item ends:
//!
//! * a comma separates items, and empty items (`a,,b`, a trailing `,`) are
//!   skipped;
//! * a comma inside double quotes does not separate: in
//!   `context="system_u:object_r:container_file_t:s0:c1,c2"` the whole
//!   thing is one item, and the surrounding quotes are removed from the
//!   value;
//! * a backslash protects the byte after it, so `\,` is not a separator
//!   either. The backslash itself stays in the item; the three path options
//!   (`lowerdir`, `upperdir`, `workdir`) then remove one level of
//!   backslashes, which is how `\:` and `\,` put a literal colon or comma in
//!   a path and `\\` a literal backslash. This is the convention of the
//!   kernel's overlay filesystem (and of libfuse).
//!
//! Each item is `key` or `key=value`, split at the first `=`. Options are
//! applied from left to right, so when an option is repeated the last one
//! wins. Unknown options are not an error: each one adds a line to
//! [`Config::warnings`], because container engines pass options written for
//! the kernel's overlayfs and must not break when strata has no use for one.
//!
//! Paths are kept byte for byte as given: no normalisation, no resolution of
//! `..` or symlinks. `/s/l/ID/../diff1` stays exactly that; the kernel
//! resolves it (following symlinks) when the directory is opened.
//!
//! # A `/dev/fd/N` mountpoint
//!
//! As in libfuse, a mountpoint spelt `/dev/fd/N` (N decimal digits) names
//! an open `/dev/fuse` fd that the caller has mounted already:
//! `mount.fuse3 -o drop_privileges` mounts, then runs strata without any
//! capability. [`Config::fuse_fd`] is then set, the options are the ones the
//! caller mounted with (strata adds no root defaults), and kernel mount flags
//! strata could not have applied itself (`nodiratime`, ...) are not warned
//! about: the caller applied them.

use std::fmt;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::Duration;

use fuser::{MountOption, SessionACL};

mod parse;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests_argv;
#[cfg(test)]
mod tests_mount_helpers;
#[cfg(test)]
mod tests_parse;
#[cfg(test)]
mod tests_validate;
mod validate;

pub use parse::{parse_args, split_option_list};
pub use validate::{drop_context_without_selinux, validate};

/// `lowerdir=`'s value read as a mount reads it (for the layer tools'
/// command lines): paths top first, `\:` a literal colon.
pub fn parse_layer_list(value: &[u8]) -> Result<Vec<PathBuf>, OptionsError> {
    parse::parse_lowerdirs(value)
}

/// A `uidmapping=` / `gidmapping=` value (`option` names it in errors),
/// read as a mount reads it.
pub fn parse_id_mapping_value(
    option: &'static str,
    value: &[u8],
) -> Result<Vec<IdMapping>, OptionsError> {
    parse::parse_id_mappings(option, Some(value))
}

/// An `xattr_permissions=` value (0, 1 or 2), read as a mount reads it.
pub fn parse_xattr_permissions_value(value: &[u8]) -> Result<u8, OptionsError> {
    parse::parse_xattr_permissions(Some(value))
}

// ---------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------

/// What the command line asks strata to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Mount a union filesystem described by the [`Config`].
    Mount(Box<Config>),
    /// Print the version (`--version` or `-V`) and exit successfully.
    Version,
    /// Print [`usage`] (`--help` or `-h`) and exit successfully.
    Help,
}

/// One range of an ID mapping, as given in `uidmapping=` / `gidmapping=`.
///
/// IDs `container .. container + count` as stored on the layers (the
/// container's own numbering) are shown through the mount as IDs
/// `host .. host + count`, as in fuse-overlayfs. This is the same shape as
/// a line of `/proc/self/uid_map`, so a user namespace's whole map can be
/// given on one line: `uidmapping=0:1000:1:1:110000:65536`.
/// See [`crate::idmap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdMapping {
    /// First ID of the range as stored in the layers.
    pub container: u32,
    /// First ID of the range as shown through the mount.
    pub host: u32,
    /// Number of consecutive IDs in the range; never 0.
    pub count: u32,
}

/// A FUSE or generic mount option that is handed to the kernel mount.
///
/// Options that do the same job replace each other, the later one winning:
/// the list in [`Config::fuse_options`] never holds both `suid` and
/// `nosuid`, nor two `fsname=`. [`Config::fuse_mount_options`] and
/// [`Config::session_acl`] turn the list into what `fuser` wants, and
/// `Display` prints the option as it was spelt on the command line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FuseOption {
    /// `allow_other`: users other than the mounting one may use the mount.
    AllowOther,
    /// `allow_root`: the mounting user and root may use the mount.
    AllowRoot,
    /// `default_permissions`: the kernel checks file modes before asking us.
    DefaultPermissions,
    /// `auto_unmount`: unmount automatically when strata exits.
    AutoUnmount,
    /// `suid`: honour set-user-ID and set-group-ID bits.
    Suid,
    /// `nosuid`: ignore set-user-ID and set-group-ID bits.
    NoSuid,
    /// `dev`: allow device special files to be used as devices.
    Dev,
    /// `nodev`: device special files cannot be opened as devices.
    NoDev,
    /// `exec`: allow running programs from the mount.
    Exec,
    /// `noexec`: forbid running programs from the mount.
    NoExec,
    /// `atime`: update access times (the kernel's default, relatime, applies).
    Atime,
    /// `noatime`: never update access times.
    NoAtime,
    /// `relatime`: update access times relative to mtime/ctime (kernel default).
    RelAtime,
    /// `lazytime`: keep timestamp updates in memory only.
    LazyTime,
    /// `nolazytime`: write timestamp updates out normally.
    NoLazyTime,
    /// `ro`: read-only mount. Always present when there is no upperdir.
    ReadOnly,
    /// `rw`: read-write mount.
    ReadWrite,
    /// `sync`: all I/O is synchronous.
    Sync,
    /// `async`: I/O is asynchronous (the default).
    Async,
    /// `dirsync`: directory changes are synchronous.
    DirSync,
    /// `fsname=NAME`: the "device" column shown in `/proc/mounts`.
    FsName(String),
    /// `subtype=NAME`: the filesystem type is shown as `fuse.NAME`.
    Subtype(String),
    /// `max_read=BYTES`: the largest read request the kernel sends.
    MaxRead(u32),
}

/// A fully parsed mount request.
///
/// Built by [`parse_args`], checked against the filesystem by [`validate`].
/// [`Config::default`] gives the defaults a mount starts from (it has no
/// layers and an empty mountpoint, so it is not itself mountable).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The read-only layers, **top first**: `lowerdir=TOP:...:BOTTOM`.
    /// Never empty after parsing. When `lowerdir=` is given more than once,
    /// the last one wins (the earlier lists are dropped, not merged).
    pub lowerdirs: Vec<PathBuf>,
    /// The writable layer (`upperdir=`). `None` makes the mount read-only.
    pub upperdir: Option<PathBuf>,
    /// Scratch directory on the same filesystem as `upperdir` (`workdir=`),
    /// used to prepare files before they are moved into place atomically.
    /// Present exactly when `upperdir` is.
    pub workdir: Option<PathBuf>,
    /// Where to mount: the last positional argument, kept as given.
    pub mountpoint: PathBuf,
    /// The mountpoint was `/dev/fd/N`: fd N is a `/dev/fuse` device the
    /// caller has mounted already (`mount.fuse3 -o drop_privileges` does
    /// this). strata serves it and mounts nothing; [`Config::fuse_options`]
    /// then holds only the options given, which are the ones the caller
    /// mounted with (no root defaults).
    pub fuse_fd: Option<RawFd>,
    /// Stay in the foreground (`-f`; implied by `-d`, `--debug`, `-o debug`).
    pub foreground: bool,
    /// Log every request (`-d`, `--debug`, `-o debug`).
    pub debug: bool,
    /// The mount is read-only: there is no upperdir, or `ro` was given.
    /// Mirrors whether [`Config::fuse_options`] holds [`FuseOption::ReadOnly`].
    pub read_only: bool,
    /// `uidmapping=`: how user IDs in the layers are presented (see [`IdMapping`]).
    pub uid_mappings: Vec<IdMapping>,
    /// `gidmapping=`: how group IDs in the layers are presented.
    pub gid_mappings: Vec<IdMapping>,
    /// `squash_to_root`: every file appears owned by 0:0.
    /// `squash_to_uid`/`squash_to_gid` take precedence over it.
    pub squash_to_root: bool,
    /// `squash_to_uid=N`: every file appears owned by user N.
    pub squash_to_uid: Option<u32>,
    /// `squash_to_gid=N`: every file appears owned by group N.
    pub squash_to_gid: Option<u32>,
    /// `xattr_permissions=0|1|2`: keep the owner and mode that files appear
    /// to have in an "override" extended attribute instead of in the real
    /// inode, so storage can be shared between users. 0: off, the real
    /// owner and mode are used; 1: in the privileged
    /// `security.fuseoverlayfs.override_stat` xattr (root only, also works
    /// on symlinks); 2: in an unprivileged `user.*` override xattr
    /// (`user.containers.override_stat`), usable rootless.
    pub xattr_permissions: u8,
    /// `static_nlink`: report a link count of 1 for every directory instead of
    /// counting subdirectories (cheaper on slow lower filesystems).
    pub static_nlink: bool,
    /// `noacl`: do not support POSIX ACLs.
    pub noacl: bool,
    /// `fsync=0|1`: whether `fsync` and friends reach the upper layer.
    /// Default on; always off when `volatile` is given.
    pub fsync: bool,
    /// `volatile`: skip every `fsync` (implies `fsync=0`, whatever order the
    /// two were given in). Faster; data may be lost on a crash.
    pub volatile: bool,
    /// `timeout=SECONDS`: how long the kernel may cache entries and
    /// attributes. `None`: strata's default.
    pub timeout: Option<Duration>,
    /// `threaded=0|1` (`-s` means `threaded=0`): serve requests on several
    /// threads. `None`: strata's default.
    pub threaded: Option<bool>,
    /// `writeback=0|1`: let the kernel cache writes and send them in batches.
    /// Default on.
    pub writeback: bool,
    /// `fast_ino=0|1`: use the layers' inode numbers directly, skipping the
    /// work that keeps them unique and stable across layers (faster, less
    /// exact). Default off.
    pub fast_ino: bool,
    /// `noxattrs=0|1`: disable extended attributes altogether. Default off.
    pub noxattrs: bool,
    /// `passthrough=0|1` (strata's own): let the kernel read and write
    /// files itself where it can (FUSE passthrough). Default on.
    pub passthrough: bool,
    /// `redirect_dir=on|off|follow|nofollow`: how renamed directories are
    /// recorded, as in kernel overlayfs (see [`Config::redirects`]).
    pub redirect_dir: Option<String>,
    /// `xino=on|off|auto`: how inode numbers from several filesystems are
    /// kept unique, as in kernel overlayfs. Accepted and recorded.
    pub xino: Option<String>,
    /// `metacopy=on|off`: chmod, chown, utimens and xattr changes of a lower
    /// file copy up its metadata only, as kernel overlayfs with
    /// `metacopy=on`. Default off: fuse-overlayfs, and the kernel without
    /// the option, cannot read such an upper.
    pub metacopy: bool,
    /// `ino32_t`: keep inode numbers within 32 bits (for old 32-bit programs).
    pub ino32: bool,
    /// `plugins=PATH[:PATH...]`: layer-store plugins to load, kept verbatim.
    pub plugins: Option<String>,
    /// `context=LABEL`: the `SELinux` label every file in the mount gets,
    /// without surrounding quotes. Passed on to the kernel mount.
    pub context: Option<String>,
    /// Options for the kernel mount, free of conflicts, defaults included.
    pub fuse_options: Vec<FuseOption>,
    /// One human-readable line per option that was ignored, in order; the
    /// caller prints each as `strata: warning: {line}`.
    pub warnings: Vec<String>,
}

/// Which of strata's directories a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// One of the `lowerdir=` layers.
    Lowerdir,
    /// The `upperdir=` layer.
    Upperdir,
    /// The `workdir=` directory.
    Workdir,
    /// The mountpoint.
    Mountpoint,
}

/// Everything that can be wrong with a command line or with the directories
/// it names. `Display` gives one readable line with no trailing newline; the
/// caller prefixes it with `strata: `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionsError {
    /// A dash argument strata does not know, such as `--bogus`.
    UnknownFlag(String),
    /// A flag that takes an argument (`-o`) came last.
    MissingFlagArgument(String),
    /// No positional argument, so no mountpoint.
    MissingMountpoint,
    /// The mountpoint argument is the empty string.
    EmptyMountpoint,
    /// No `lowerdir=` was given.
    MissingLowerdir,
    /// `upperdir=` without `workdir=`.
    UpperdirWithoutWorkdir,
    /// `workdir=` without `upperdir=`.
    WorkdirWithoutUpperdir,
    /// `-o` text with an opening double quote and no closing one.
    UnterminatedQuote {
        /// The whole `-o` argument.
        options: String,
    },
    /// An option that needs `=value` came without one, or with an empty one.
    MissingValue {
        /// The option's name.
        option: String,
    },
    /// An option that is a plain switch came with `=value`.
    UnexpectedValue {
        /// The option's name.
        option: String,
        /// What followed the `=`.
        value: String,
    },
    /// An option's value is not one it accepts.
    BadValue {
        /// The option's name.
        option: String,
        /// The value as given.
        value: String,
        /// What would have been accepted.
        expected: &'static str,
    },
    /// A path option's value cannot be read as path(s).
    InvalidPath {
        /// `lowerdir`, `upperdir` or `workdir`.
        option: &'static str,
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A `uidmapping=` / `gidmapping=` value cannot be read.
    InvalidIdMapping {
        /// `uidmapping` or `gidmapping`.
        option: &'static str,
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Two options that cannot both be given.
    ConflictingOptions {
        /// The option given first.
        first: &'static str,
        /// The option given later.
        second: &'static str,
    },
    /// A directory could not be examined (it is missing, unreadable, ...).
    Io {
        /// Which directory.
        role: Role,
        /// The path as given.
        path: PathBuf,
        /// The system's description of the failure, e.g.
        /// `No such file or directory`.
        message: String,
    },
    /// A directory argument names something that is not a directory.
    NotADirectory {
        /// Which directory.
        role: Role,
        /// The path as given.
        path: PathBuf,
    },
    /// Upper and work directories must share a filesystem so that files can
    /// be renamed from one to the other.
    DifferentFilesystems {
        /// The upperdir as given.
        upperdir: PathBuf,
        /// The workdir as given.
        workdir: PathBuf,
    },
    /// Two of the directories are one and the same.
    SameDirectory {
        /// The first directory's role.
        first_role: Role,
        /// The first directory as given.
        first: PathBuf,
        /// The second directory's role.
        second_role: Role,
        /// The second directory as given.
        second: PathBuf,
    },
    /// A `/dev/fd/N` mountpoint that is not an open `/dev/fuse` fd.
    BadFuseFd {
        /// The mountpoint as given.
        path: PathBuf,
        /// What is wrong with it, e.g. `not an open file descriptor`.
        reason: String,
    },
    /// One directory lies inside another where that is not allowed.
    Nested {
        /// The role of the directory that is inside.
        inner_role: Role,
        /// The directory that is inside, as given.
        inner: PathBuf,
        /// The role of the directory that contains it.
        outer_role: Role,
        /// The directory that contains it, as given.
        outer: PathBuf,
    },
}

// ---------------------------------------------------------------------------
// Display
// ---------------------------------------------------------------------------

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Lowerdir => "lowerdir",
            Role::Upperdir => "upperdir",
            Role::Workdir => "workdir",
            Role::Mountpoint => "mountpoint",
        })
    }
}

impl fmt::Display for OptionsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownFlag(flag) => write!(f, "unknown flag '{flag}'"),
            Self::MissingFlagArgument(flag) => write!(f, "flag '{flag}' requires an argument"),
            Self::MissingMountpoint => f.write_str("missing mountpoint"),
            Self::EmptyMountpoint => f.write_str("mountpoint must not be empty"),
            Self::MissingLowerdir => f.write_str("lowerdir is required"),
            Self::UpperdirWithoutWorkdir => f.write_str("upperdir given without workdir"),
            Self::WorkdirWithoutUpperdir => f.write_str("workdir given without upperdir"),
            Self::UnterminatedQuote { options } => {
                write!(f, "unterminated double quote in options '{options}'")
            }
            Self::MissingValue { option } => write!(f, "option '{option}' requires a value"),
            Self::UnexpectedValue { option, value } => {
                write!(f, "option '{option}' takes no value (got '{value}')")
            }
            Self::BadValue {
                option,
                value,
                expected,
            } => write!(f, "bad value for {option}: '{value}' (expected {expected})"),
            Self::InvalidPath {
                option,
                value,
                reason,
            } => write!(f, "invalid {option} '{value}': {reason}"),
            Self::InvalidIdMapping {
                option,
                value,
                reason,
            } => write!(f, "invalid {option} '{value}': {reason}"),
            Self::ConflictingOptions { first, second } => {
                write!(f, "options '{first}' and '{second}' are mutually exclusive")
            }
            Self::Io {
                role,
                path,
                message,
            } => write!(f, "{role} '{}': {message}", path.display()),
            Self::NotADirectory { role, path } => {
                write!(f, "{role} '{}' is not a directory", path.display())
            }
            Self::DifferentFilesystems { upperdir, workdir } => write!(
                f,
                "workdir '{}' and upperdir '{}' are on different filesystems",
                workdir.display(),
                upperdir.display()
            ),
            Self::SameDirectory {
                first_role,
                first,
                second_role,
                second,
            } => write!(
                f,
                "{first_role} '{}' and {second_role} '{}' are the same directory",
                first.display(),
                second.display()
            ),
            Self::BadFuseFd { path, reason } => {
                write!(f, "mountpoint '{}': {reason}", path.display())
            }
            Self::Nested {
                inner_role,
                inner,
                outer_role,
                outer,
            } => write!(
                f,
                "{inner_role} '{}' is inside {outer_role} '{}'",
                inner.display(),
                outer.display()
            ),
        }
    }
}

impl std::error::Error for OptionsError {}

impl fmt::Display for FuseOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FsName(name) => write!(f, "fsname={name}"),
            Self::Subtype(name) => write!(f, "subtype={name}"),
            Self::MaxRead(bytes) => write!(f, "max_read={bytes}"),
            flag => f.write_str(flag.flag_name().unwrap_or_default()),
        }
    }
}

// ---------------------------------------------------------------------------
// FuseOption
// ---------------------------------------------------------------------------

/// Options that do the same job share a slot; a later option in a slot
/// replaces the earlier one (`suid` then `nosuid` leaves `nosuid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Access,
    DefaultPermissions,
    AutoUnmount,
    Suid,
    Dev,
    Exec,
    Atime,
    LazyTime,
    ReadWrite,
    SyncMode,
    DirSync,
    FsName,
    Subtype,
    MaxRead,
}

/// The parameterless options, with their spelling. The single table keeps
/// parsing ([`FuseOption::from_flag`]) and printing (`Display`) in step.
const FLAG_OPTIONS: &[(&str, FuseOption)] = &[
    ("allow_other", FuseOption::AllowOther),
    ("allow_root", FuseOption::AllowRoot),
    ("default_permissions", FuseOption::DefaultPermissions),
    ("auto_unmount", FuseOption::AutoUnmount),
    ("suid", FuseOption::Suid),
    ("nosuid", FuseOption::NoSuid),
    ("dev", FuseOption::Dev),
    ("nodev", FuseOption::NoDev),
    ("exec", FuseOption::Exec),
    ("noexec", FuseOption::NoExec),
    ("atime", FuseOption::Atime),
    ("noatime", FuseOption::NoAtime),
    ("relatime", FuseOption::RelAtime),
    ("lazytime", FuseOption::LazyTime),
    ("nolazytime", FuseOption::NoLazyTime),
    ("ro", FuseOption::ReadOnly),
    ("rw", FuseOption::ReadWrite),
    ("sync", FuseOption::Sync),
    ("async", FuseOption::Async),
    ("dirsync", FuseOption::DirSync),
];

impl FuseOption {
    /// The parameterless option spelt `name`, if there is one.
    #[must_use]
    pub fn from_flag(name: &str) -> Option<Self> {
        FLAG_OPTIONS
            .iter()
            .find(|(spelling, _)| *spelling == name)
            .map(|(_, option)| option.clone())
    }

    /// The spelling of a parameterless option; `None` for `key=value` ones.
    fn flag_name(&self) -> Option<&'static str> {
        FLAG_OPTIONS
            .iter()
            .find(|(_, option)| option == self)
            .map(|(spelling, _)| *spelling)
    }

    fn slot(&self) -> Slot {
        match self {
            Self::AllowOther | Self::AllowRoot => Slot::Access,
            Self::DefaultPermissions => Slot::DefaultPermissions,
            Self::AutoUnmount => Slot::AutoUnmount,
            Self::Suid | Self::NoSuid => Slot::Suid,
            Self::Dev | Self::NoDev => Slot::Dev,
            Self::Exec | Self::NoExec => Slot::Exec,
            Self::Atime | Self::NoAtime | Self::RelAtime => Slot::Atime,
            Self::LazyTime | Self::NoLazyTime => Slot::LazyTime,
            Self::ReadOnly | Self::ReadWrite => Slot::ReadWrite,
            Self::Sync | Self::Async => Slot::SyncMode,
            Self::DirSync => Slot::DirSync,
            Self::FsName(_) => Slot::FsName,
            Self::Subtype(_) => Slot::Subtype,
            Self::MaxRead(_) => Slot::MaxRead,
        }
    }

    /// The `fuser` mount option for this option.
    ///
    /// `None` for `allow_other` / `allow_root`, which `fuser` takes as a
    /// [`SessionACL`] instead (see [`Config::session_acl`]). `relatime`
    /// becomes `Atime`: `fuser` has no relatime, and a mount that is neither
    /// `noatime` nor `strictatime` gets relatime from the kernel anyway.
    /// Options `fuser` has no variant for travel as `CUSTOM` text.
    #[must_use]
    pub fn to_mount_option(&self) -> Option<MountOption> {
        Some(match self {
            Self::AllowOther | Self::AllowRoot => return None,
            Self::DefaultPermissions => MountOption::DefaultPermissions,
            Self::AutoUnmount => MountOption::AutoUnmount,
            Self::Suid => MountOption::Suid,
            Self::NoSuid => MountOption::NoSuid,
            Self::Dev => MountOption::Dev,
            Self::NoDev => MountOption::NoDev,
            Self::Exec => MountOption::Exec,
            Self::NoExec => MountOption::NoExec,
            Self::Atime | Self::RelAtime => MountOption::Atime,
            Self::NoAtime => MountOption::NoAtime,
            Self::ReadOnly => MountOption::RO,
            Self::ReadWrite => MountOption::RW,
            Self::Sync => MountOption::Sync,
            Self::Async => MountOption::Async,
            Self::DirSync => MountOption::DirSync,
            Self::FsName(name) => MountOption::FSName(name.clone()),
            Self::Subtype(name) => MountOption::Subtype(name.clone()),
            Self::LazyTime | Self::NoLazyTime | Self::MaxRead(_) => {
                MountOption::CUSTOM(self.to_string())
            }
        })
    }
}

/// Adds `option` to `list`, first removing any option that does the same
/// job, so the list never contradicts itself.
fn set_fuse_option(list: &mut Vec<FuseOption>, option: FuseOption) {
    let slot = option.slot();
    list.retain(|existing| existing.slot() != slot);
    list.push(option);
}

// ---------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------

impl Default for Config {
    /// The starting point of every parse: strata's documented defaults.
    fn default() -> Self {
        Self {
            lowerdirs: Vec::new(),
            upperdir: None,
            workdir: None,
            mountpoint: PathBuf::new(),
            fuse_fd: None,
            foreground: false,
            debug: false,
            read_only: false,
            uid_mappings: Vec::new(),
            gid_mappings: Vec::new(),
            squash_to_root: false,
            squash_to_uid: None,
            squash_to_gid: None,
            xattr_permissions: 0,
            static_nlink: false,
            noacl: false,
            fsync: true,
            volatile: false,
            timeout: None,
            threaded: None,
            writeback: true,
            fast_ino: false,
            noxattrs: false,
            passthrough: true,
            redirect_dir: None,
            xino: None,
            metacopy: false,
            ino32: false,
            plugins: None,
            context: None,
            fuse_options: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

impl Config {
    /// The mount options to give `fuser` (`fuser::Config::mount_options`).
    ///
    /// The list is free of the contradictions `fuser` refuses (`suid` with
    /// `nosuid`, ...). It leaves out `allow_other` / `allow_root`, which go
    /// in [`Config::session_acl`], and adds `context=` when one was given,
    /// quoted if it contains a comma, so the kernel's `SELinux` code labels the
    /// mount. Note that `fuser` mounts `nodev,nosuid` unless `Dev` / `Suid`
    /// are in the list; as root the defaults include `Suid`.
    #[must_use]
    pub fn fuse_mount_options(&self) -> Vec<MountOption> {
        let mut options: Vec<MountOption> = self
            .fuse_options
            .iter()
            .filter_map(FuseOption::to_mount_option)
            .collect();
        if let Some(context) = &self.context {
            options.push(MountOption::CUSTOM(context_mount_option(context)));
        }
        options
    }

    /// Whether renaming a directory with lower content writes a redirect,
    /// and whether redirects in the layers are followed: (create, follow).
    /// Like the kernel with `redirect_always_follow` (Debian's default),
    /// `off` still follows; strata's default is `on`.
    #[must_use]
    pub fn redirects(&self) -> (bool, bool) {
        match self.redirect_dir.as_deref() {
            None | Some("on") => (true, true),
            Some("nofollow") => (false, false),
            Some(_) => (false, true), // off, follow
        }
    }

    /// Who may use the mount (`fuser::Config::acl`): everyone with
    /// `allow_other`, the owner and root with `allow_root`, else the owner.
    #[must_use]
    pub fn session_acl(&self) -> SessionACL {
        if self.fuse_options.contains(&FuseOption::AllowOther) {
            SessionACL::All
        } else if self.fuse_options.contains(&FuseOption::AllowRoot) {
            SessionACL::RootAndOwner
        } else {
            SessionACL::Owner
        }
    }
}

/// `context=LABEL` for the kernel; quoted when the label holds a comma
/// (MCS categories such as `s0:c1,c2`), which the kernel's `SELinux` option
/// parser understands.
fn context_mount_option(context: &str) -> String {
    if context.contains(',') {
        format!("context=\"{context}\"")
    } else {
        format!("context={context}")
    }
}

// ---------------------------------------------------------------------------
// Help text
// ---------------------------------------------------------------------------

/// The `--help` text: synopsis and a one-line description of every option.
#[must_use]
pub fn usage() -> &'static str {
    "\
usage: strata [-f] [-d|--debug] [-s] [-o OPTS]... [SOURCE] MOUNTPOINT
              [-o OPTS]...
       strata --version | -V
       strata --help | -h

Mount a union of directories at MOUNTPOINT (a userspace overlay filesystem,
a drop-in for fuse-overlayfs). SOURCE, if given, is ignored. MOUNTPOINT may
be /dev/fd/N, a /dev/fuse fd the caller has mounted (mount.fuse3 -o
drop_privileges): strata then serves it, and the mount options are the
caller's.

flags:
    -f                     stay in the foreground
    -d, --debug            log every request (implies -f)
    -s                     serve requests on a single thread (threaded=0)
    -o OPTS                comma-separated options, may be repeated
    -V, --version          print the version and exit
    -h, --help             print this help and exit
    --                     end of flags: the rest are positional arguments

layer options:
    lowerdir=TOP:...:BOTTOM  read-only layers, top first (required; \\: is a
                           literal colon, \\\\ a backslash)
    upperdir=DIR           writable layer (without it the mount is read-only)
    workdir=DIR            scratch directory on upperdir's filesystem
                           (required with upperdir)

fuse-overlayfs options:
    uidmapping=L:M:N[:L:M:N...]  show uid L+i of the layers as uid M+i, i < N
    gidmapping=L:M:N[:L:M:N...]  the same for group ids
    squash_to_root         every file appears owned by root
    squash_to_uid=UID      every file appears owned by UID
    squash_to_gid=GID      every file appears owned by group GID
    xattr_permissions=0|1|2  keep owner and mode in an xattr: 0 no,
                           1 in security.*, 2 in user.*
    static_nlink           report 1 link for every directory
    noacl                  disable POSIX ACLs
    fsync=0|1              pass fsync to the upper layer (default 1)
    volatile               never fsync (implies fsync=0)
    timeout=SECONDS        how long the kernel caches entries and attributes
    threaded=0|1           serve requests on several threads
    writeback=0|1          let the kernel cache writes (default 1)
    fast_ino=0|1           take inode numbers straight from the layers
    noxattrs=0|1           disable extended attributes
    passthrough=0|1        FUSE passthrough of file data (default 1)
    redirect_dir=on|off|follow|nofollow  directory renames: redirects
                           (on, the default), or EXDEV and follow the layers'
                           redirects (off, follow) or not (nofollow)
    xino=on|off|auto       how inode numbers are kept unique across layers
    metacopy=on|off        metadata-only copy-up on chmod, chown (default off)
    ino32_t                keep inode numbers within 32 bits
    plugins=PATH[:PATH...] layer-store plugins to load
    context=LABEL          SELinux label of every file in the mount
    debug                  same as -d

mount options (passed to the kernel):
    allow_other            let every user use the mount
    allow_root             let the owner and root use the mount
    default_permissions    let the kernel check file modes
    auto_unmount           unmount when strata exits
    suid, nosuid           honour / ignore set-user-id and set-group-id bits
    dev, nodev             allow / forbid device files
    exec, noexec           allow / forbid running programs
    atime, noatime, relatime  how access times are updated
    lazytime, nolazytime   keep timestamp updates in memory / write them out
    ro, rw                 read-only / read-write
    sync, async, dirsync   synchronous I/O / asynchronous I/O / synchronous
                           directory changes
    fsname=NAME            name shown as the source in /proc/mounts
    subtype=NAME           shown as the type fuse.NAME in /proc/mounts
    max_read=BYTES         largest read request

As root the defaults are default_permissions,allow_other,suid,dev (nosuid,
nodev and allow_root override them). Unknown options are ignored with a warning.
"
}

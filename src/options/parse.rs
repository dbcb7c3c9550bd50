//! Reading argv and `-o` option lists into a [`Config`].

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::time::Duration;

use super::*;

// ---------------------------------------------------------------------------
// Parsing: argv
// ---------------------------------------------------------------------------

/// Reads strata's arguments (without `argv[0]`) into a [`Command`].
///
/// Pure: nothing outside `args` and `is_root` is consulted, and no input
/// makes it panic. `--help` / `--version` win as soon as they are met,
/// left to right. As root the mount options start from
/// `default_permissions,allow_other,suid,dev`.
///
/// For example `["-o", "lowerdir=/l2:/l1", "overlay", "/mnt"]` gives a
/// read-only [`Command::Mount`] of `/l2` over `/l1` at `/mnt`.
///
/// # Errors
///
/// An [`OptionsError`] for anything that cannot describe a mount: an
/// unknown flag, no mountpoint, no `lowerdir=`, `upperdir=` without
/// `workdir=` (or the reverse), or a value an option does not accept.
/// Unknown `-o` options are not errors; they land in [`Config::warnings`].
pub fn parse_args<I, S>(args: I, is_root: bool) -> Result<Command, OptionsError>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let raw = match scan_args(args.into_iter().map(Into::into))? {
        Scan::Help => return Ok(Command::Help),
        Scan::Version => return Ok(Command::Version),
        Scan::Mount(raw) => raw,
    };
    build_config(&raw, is_root).map(|config| Command::Mount(Box::new(config)))
}

/// The argv, sorted into its parts but not yet interpreted.
#[derive(Debug, Default)]
pub(super) struct RawArgs {
    /// Each `-o` argument, in order.
    option_lists: Vec<OsString>,
    /// Non-flag arguments, in order; the last one is the mountpoint.
    positionals: Vec<OsString>,
    foreground: bool,
    debug: bool,
    single_threaded: bool,
}

pub(super) enum Scan {
    Mount(RawArgs),
    Help,
    Version,
}

/// Sorts argv into flags, `-o` lists and positionals.
pub(super) fn scan_args(mut args: impl Iterator<Item = OsString>) -> Result<Scan, OptionsError> {
    let mut raw = RawArgs::default();
    while let Some(arg) = args.next() {
        match arg.as_bytes() {
            b"--" => {
                raw.positionals.extend(args);
                break;
            }
            b"-h" | b"--help" => return Ok(Scan::Help),
            b"-V" | b"--version" => return Ok(Scan::Version),
            b"-f" => raw.foreground = true,
            b"-d" | b"--debug" => raw.debug = true,
            b"-s" => raw.single_threaded = true,
            b"-o" => {
                let list = args
                    .next()
                    .ok_or_else(|| OptionsError::MissingFlagArgument("-o".into()))?;
                raw.option_lists.push(list);
            }
            [b'-', b'o', glued @ ..] => raw.option_lists.push(OsString::from_vec(glued.to_vec())),
            [b'-', _, ..] => return Err(OptionsError::UnknownFlag(lossy(arg.as_bytes()))),
            _ => raw.positionals.push(arg),
        }
    }
    Ok(Scan::Mount(raw))
}

/// Interprets the sorted argv: applies the options over the defaults, then
/// checks that the result describes a mount.
pub(super) fn build_config(raw: &RawArgs, is_root: bool) -> Result<Config, OptionsError> {
    let mut config = Config::default();
    // Known before the options are read: a caller that mounted already
    // chose the kernel mount's options, so strata's defaults do not apply.
    if let Some(last) = raw.positionals.last() {
        config.fuse_fd = dev_fd(last.as_bytes())?;
    }
    if is_root && config.fuse_fd.is_none() {
        for option in [
            FuseOption::DefaultPermissions,
            FuseOption::AllowOther,
            FuseOption::Suid,
            // Like a kernel overlay mount: device nodes in the layers work.
            FuseOption::Dev,
        ] {
            set_fuse_option(&mut config.fuse_options, option);
        }
    }
    if raw.foreground {
        config.foreground = true;
    }
    if raw.debug {
        config.debug = true;
        config.foreground = true;
    }
    if raw.single_threaded {
        config.threaded = Some(false);
    }

    let mut access: Option<&'static str> = None;
    for list in &raw.option_lists {
        for item in split_option_list(list.as_bytes())? {
            apply_option(&mut config, &mut access, item)?;
        }
    }

    config.mountpoint = mountpoint(&raw.positionals)?;
    finish(config)
}

/// The mountpoint: the last positional argument (earlier ones, such as the
/// SOURCE that `mount.fuse3` passes, are ignored).
pub(super) fn mountpoint(positionals: &[OsString]) -> Result<PathBuf, OptionsError> {
    let last = positionals.last().ok_or(OptionsError::MissingMountpoint)?;
    if last.is_empty() {
        return Err(OptionsError::EmptyMountpoint);
    }
    Ok(PathBuf::from(last))
}

/// `/dev/fd/N` (N decimal digits, as libfuse reads it) names the fd N;
/// any other path is `None`.
pub(super) fn dev_fd(path: &[u8]) -> Result<Option<RawFd>, OptionsError> {
    match path.strip_prefix(b"/dev/fd/") {
        Some(digits) if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) => {
            let number = decimal_u32(digits).and_then(|n| RawFd::try_from(n).ok());
            number.map(Some).ok_or_else(|| OptionsError::BadFuseFd {
                path: path_from_bytes(path.to_vec()),
                reason: "not a valid file descriptor number".into(),
            })
        }
        _ => Ok(None),
    }
}

/// The checks and derived fields that need all options to be known.
pub(super) fn finish(mut config: Config) -> Result<Config, OptionsError> {
    if config.lowerdirs.is_empty() {
        return Err(OptionsError::MissingLowerdir);
    }
    match (&config.upperdir, &config.workdir) {
        (Some(_), None) => return Err(OptionsError::UpperdirWithoutWorkdir),
        (None, Some(_)) => return Err(OptionsError::WorkdirWithoutUpperdir),
        _ => {}
    }
    if config.upperdir.is_none() {
        set_fuse_option(&mut config.fuse_options, FuseOption::ReadOnly);
    }
    config.read_only = config.fuse_options.contains(&FuseOption::ReadOnly);
    if config.fuse_fd.is_some()
        && config.fuse_options.contains(&FuseOption::AllowOther)
        && !config
            .fuse_options
            .contains(&FuseOption::DefaultPermissions)
    {
        // strata relies on the kernel to check file modes.
        config.warnings.push(
            "the caller mounted with allow_other but without default_permissions: \
             file modes are not checked"
                .into(),
        );
    }
    if config.volatile {
        config.fsync = false;
    }
    Ok(config)
}

// ---------------------------------------------------------------------------
// Parsing: one -o list
// ---------------------------------------------------------------------------

/// Splits one `-o` argument into its items (see the module documentation):
/// commas separate, except inside double quotes or right after a backslash;
/// empty items are dropped.
pub fn split_option_list(list: &[u8]) -> Result<Vec<&[u8]>, OptionsError> {
    let mut items = Vec::new();
    let mut rest = list;
    loop {
        let end = item_end(rest).ok_or_else(|| OptionsError::UnterminatedQuote {
            options: lossy(list),
        })?;
        let (item, after) = rest.split_at(end);
        if !item.is_empty() {
            items.push(item);
        }
        match after.split_first() {
            Some((_comma, tail)) => rest = tail,
            None => return Ok(items),
        }
    }
}

/// Where the first item of `text` ends: the index of the first separating
/// comma, or `text.len()`. `None` if a double quote is left open.
pub(super) fn item_end(text: &[u8]) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (index, &byte) in text.iter().enumerate() {
        match byte {
            _ if escaped => escaped = false,
            b'\\' => escaped = true,
            b'"' => in_quotes = !in_quotes,
            b',' if !in_quotes => return Some(index),
            _ => {}
        }
    }
    (!in_quotes).then_some(text.len())
}

/// Splits `key=value` at the first `=`; the value loses surrounding quotes.
pub(super) fn split_key_value(item: &[u8]) -> (&[u8], Option<&[u8]>) {
    match item.iter().position(|&byte| byte == b'=') {
        Some(eq) => {
            let (key, value) = item.split_at(eq);
            let value = value.get(1..).unwrap_or_default();
            (key, Some(strip_quotes(value)))
        }
        None => (item, None),
    }
}

/// `"text"` becomes `text`; anything else is returned unchanged.
pub(super) fn strip_quotes(value: &[u8]) -> &[u8] {
    value
        .strip_prefix(b"\"")
        .and_then(|inner| inner.strip_suffix(b"\""))
        .unwrap_or(value)
}

/// mount(8) and fstab options that are addressed to the mount command, not
/// to the filesystem (`mount` may pass them on to a helper); dropped
/// silently.
pub(super) fn is_mount_helper_option(key: &str) -> bool {
    matches!(
        key,
        "defaults"
            | "auto"
            | "noauto"
            | "nofail"
            | "_netdev"
            | "user"
            | "nouser"
            | "users"
            | "owner"
            | "group"
            | "comment"
    ) || key.starts_with("x-")
        || key.starts_with("X-")
}

/// Kernel mount flags that strata's mount path cannot express; ignored with
/// a warning of their own, since they are known but not honoured.
pub(super) fn is_unsupported_mount_flag(key: &str) -> bool {
    matches!(
        key,
        "strictatime"
            | "nostrictatime"
            | "norelatime"
            | "diratime"
            | "nodiratime"
            | "mand"
            | "nomand"
            | "symfollow"
            | "nosymfollow"
    )
}

/// Applies one option item to `config`.
///
/// `access` remembers an explicit `allow_other` / `allow_root`, which are
/// mutually exclusive (an implicit root default gives way silently).
pub(super) fn apply_option(
    config: &mut Config,
    access: &mut Option<&'static str>,
    item: &[u8],
) -> Result<(), OptionsError> {
    let (key_bytes, value) = split_key_value(item);
    let Ok(key) = std::str::from_utf8(key_bytes) else {
        config.warnings.push(unknown_option_warning(item));
        return Ok(());
    };
    match key {
        "lowerdir" => config.lowerdirs = parse_lowerdirs(required(key, value)?)?,
        "upperdir" => config.upperdir = Some(parse_path("upperdir", required(key, value)?)?),
        "workdir" => config.workdir = Some(parse_path("workdir", required(key, value)?)?),
        "uidmapping" => config.uid_mappings = parse_id_mappings("uidmapping", value)?,
        "gidmapping" => config.gid_mappings = parse_id_mappings("gidmapping", value)?,
        "squash_to_root" => config.squash_to_root = switch_on(key, value)?,
        "squash_to_uid" => config.squash_to_uid = Some(parse_number(key, value, "a user id")?),
        "squash_to_gid" => config.squash_to_gid = Some(parse_number(key, value, "a group id")?),
        "xattr_permissions" => config.xattr_permissions = parse_xattr_permissions(value)?,
        "static_nlink" => config.static_nlink = switch_on(key, value)?,
        "noacl" => config.noacl = switch_on(key, value)?,
        "fsync" => config.fsync = parse_switch(key, value)?,
        "volatile" => config.volatile = switch_on(key, value)?,
        "timeout" => config.timeout = Some(parse_timeout(value)?),
        "threaded" => config.threaded = Some(parse_switch(key, value)?),
        "writeback" => config.writeback = parse_switch(key, value)?,
        "fast_ino" => config.fast_ino = parse_switch(key, value)?,
        "noxattrs" => config.noxattrs = parse_switch(key, value)?,
        "passthrough" => config.passthrough = parse_switch(key, value)?,
        "redirect_dir" => config.redirect_dir = Some(parse_redirect_dir(value)?),
        "xino" => config.xino = Some(parse_xino(value)?),
        "metacopy" => {
            config.metacopy = parse_choice("metacopy", value, &["on", "off"], "on or off")? == "on"
        }
        "ino32_t" => config.ino32 = switch_on(key, value)?,
        "plugins" => config.plugins = Some(parse_text(key, value)?),
        "context" => config.context = Some(parse_text(key, value)?),
        "debug" => {
            config.debug = switch_on(key, value)?;
            config.foreground = true;
        }
        "fsname" => set_fuse_option(
            &mut config.fuse_options,
            FuseOption::FsName(parse_text(key, value)?),
        ),
        "subtype" => set_fuse_option(
            &mut config.fuse_options,
            FuseOption::Subtype(parse_text(key, value)?),
        ),
        "max_read" => {
            let bytes = parse_number(key, value, "a number of bytes")?;
            set_fuse_option(&mut config.fuse_options, FuseOption::MaxRead(bytes));
        }
        "allow_other" | "allow_root" => {
            switch_on(key, value)?;
            apply_access(config, access, key)?;
        }
        _ if is_mount_helper_option(key) => {}
        // On a /dev/fd/N mount the caller has applied them.
        _ if is_unsupported_mount_flag(key) && config.fuse_fd.is_some() => {}
        _ if is_unsupported_mount_flag(key) => config.warnings.push(format!(
            "mount option '{}' is not supported and was ignored",
            lossy(item)
        )),
        _ => match FuseOption::from_flag(key) {
            Some(option) => {
                switch_on(key, value)?;
                set_fuse_option(&mut config.fuse_options, option);
            }
            None => config.warnings.push(unknown_option_warning(item)),
        },
    }
    Ok(())
}

/// Records `allow_other` or `allow_root`, refusing the two together.
pub(super) fn apply_access(
    config: &mut Config,
    access: &mut Option<&'static str>,
    key: &str,
) -> Result<(), OptionsError> {
    let (name, option) = if key == "allow_root" {
        ("allow_root", FuseOption::AllowRoot)
    } else {
        ("allow_other", FuseOption::AllowOther)
    };
    if let Some(first) = *access
        && first != name
    {
        return Err(OptionsError::ConflictingOptions {
            first,
            second: name,
        });
    }
    *access = Some(name);
    set_fuse_option(&mut config.fuse_options, option);
    Ok(())
}

pub(super) fn unknown_option_warning(item: &[u8]) -> String {
    format!("unknown option '{}' ignored", lossy(item))
}

// ---------------------------------------------------------------------------
// Parsing: values
// ---------------------------------------------------------------------------

/// The value of an option that needs one; absent or empty is an error.
pub(super) fn required<'a>(key: &str, value: Option<&'a [u8]>) -> Result<&'a [u8], OptionsError> {
    match value {
        Some(value) if !value.is_empty() => Ok(value),
        _ => Err(OptionsError::MissingValue { option: key.into() }),
    }
}

/// A plain switch such as `noacl`: giving it turns it on; `=value` is an error.
pub(super) fn switch_on(key: &str, value: Option<&[u8]>) -> Result<bool, OptionsError> {
    match value {
        None => Ok(true),
        Some(value) => Err(OptionsError::UnexpectedValue {
            option: key.into(),
            value: lossy(value),
        }),
    }
}

/// A value that must be UTF-8 text, e.g. `context=` or `fsname=`.
pub(super) fn parse_text(key: &str, value: Option<&[u8]>) -> Result<String, OptionsError> {
    let value = required(key, value)?;
    match std::str::from_utf8(value) {
        Ok(text) => Ok(text.to_owned()),
        Err(_) => Err(bad_value(key, value, "valid UTF-8 text")),
    }
}

/// One of a fixed set of words, e.g. `xino=auto`.
pub(super) fn parse_choice(
    key: &str,
    value: Option<&[u8]>,
    choices: &[&str],
    expected: &'static str,
) -> Result<String, OptionsError> {
    let value = required(key, value)?;
    choices
        .iter()
        .find(|choice| choice.as_bytes() == value)
        .map(|choice| (*choice).to_owned())
        .ok_or_else(|| bad_value(key, value, expected))
}

/// A switch given as a number, as fuse-overlayfs reads it (`%d`): 0 is
/// off, any other integer on.
pub(super) fn parse_switch(key: &str, value: Option<&[u8]>) -> Result<bool, OptionsError> {
    let raw = required(key, value)?;
    std::str::from_utf8(raw)
        .ok()
        .and_then(|v| v.parse::<i64>().ok())
        .map(|n| n != 0)
        .ok_or_else(|| bad_value(key, raw, "a number: 0 or 1"))
}

/// `redirect_dir=on|off|follow|nofollow`, as in kernel overlayfs.
pub(super) fn parse_redirect_dir(value: Option<&[u8]>) -> Result<String, OptionsError> {
    let choices = &["on", "off", "follow", "nofollow"];
    parse_choice(
        "redirect_dir",
        value,
        choices,
        "on, off, follow or nofollow",
    )
}

/// `xino=on|off|auto`, as in kernel overlayfs.
pub(super) fn parse_xino(value: Option<&[u8]>) -> Result<String, OptionsError> {
    parse_choice("xino", value, &["on", "off", "auto"], "on, off or auto")
}

/// `xattr_permissions=0|1|2`.
pub(super) fn parse_xattr_permissions(value: Option<&[u8]>) -> Result<u8, OptionsError> {
    let key = "xattr_permissions";
    match required(key, value)? {
        b"0" => Ok(0),
        b"1" => Ok(1),
        b"2" => Ok(2),
        other => Err(bad_value(key, other, "0, 1 or 2")),
    }
}

/// A decimal `u32` written with digits only (no sign, no spaces).
pub(super) fn parse_number(
    key: &str,
    value: Option<&[u8]>,
    expected: &'static str,
) -> Result<u32, OptionsError> {
    let value = required(key, value)?;
    decimal_u32(value).ok_or_else(|| bad_value(key, value, expected))
}

pub(super) fn decimal_u32(text: &[u8]) -> Option<u32> {
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// `timeout=SECONDS`: a non-negative, finite number of seconds, fractions
/// allowed (`timeout=0.5`, `timeout=1000000`).
pub(super) fn parse_timeout(value: Option<&[u8]>) -> Result<Duration, OptionsError> {
    let key = "timeout";
    let value = required(key, value)?;
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.parse::<f64>().ok())
        .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
        .ok_or_else(|| bad_value(key, value, "a number of seconds"))
}

pub(super) fn bad_value(key: &str, value: &[u8], expected: &'static str) -> OptionsError {
    OptionsError::BadValue {
        option: key.into(),
        value: lossy(value),
        expected,
    }
}

// ---------------------------------------------------------------------------
// Parsing: paths
// ---------------------------------------------------------------------------

/// `lowerdir=TOP:...:BOTTOM` into paths, top first.
///
/// An unescaped `:` separates paths; a backslash makes the next byte
/// literal (`\:` a colon, `\\` a backslash). Empty paths are an error:
/// `a::b`, `:a` and `a:` all most likely mean a variable expanded to nothing.
pub(super) fn parse_lowerdirs(value: &[u8]) -> Result<Vec<PathBuf>, OptionsError> {
    let invalid = |reason| OptionsError::InvalidPath {
        option: "lowerdir",
        value: lossy(value),
        reason,
    };
    let components = unescape_split(value, Some(b':')).map_err(invalid)?;
    if components.iter().any(Vec::is_empty) {
        return Err(invalid("empty path"));
    }
    Ok(components.into_iter().map(path_from_bytes).collect())
}

/// `upperdir=` / `workdir=`: one path, with backslash escapes removed as in
/// `lowerdir` (a colon needs no escape here, but `\:` still works).
pub(super) fn parse_path(option: &'static str, value: &[u8]) -> Result<PathBuf, OptionsError> {
    let invalid = |reason| OptionsError::InvalidPath {
        option,
        value: lossy(value),
        reason,
    };
    let mut components = unescape_split(value, None).map_err(invalid)?;
    Ok(path_from_bytes(components.pop().unwrap_or_default()))
}

/// Removes one level of backslash escapes from `value` and, when a
/// `separator` is given, splits at every separator that was not escaped.
/// Always returns at least one (possibly empty) component. The error is the
/// reason: a backslash at the very end escapes nothing.
pub(super) fn unescape_split(
    value: &[u8],
    separator: Option<u8>,
) -> Result<Vec<Vec<u8>>, &'static str> {
    let mut components = Vec::new();
    let mut current = Vec::with_capacity(value.len());
    let mut bytes = value.iter().copied();
    while let Some(byte) = bytes.next() {
        if byte == b'\\' {
            current.push(bytes.next().ok_or("trailing backslash")?);
        } else if Some(byte) == separator {
            components.push(std::mem::take(&mut current));
        } else {
            current.push(byte);
        }
    }
    components.push(current);
    Ok(components)
}

pub(super) fn path_from_bytes(bytes: Vec<u8>) -> PathBuf {
    PathBuf::from(OsString::from_vec(bytes))
}

// ---------------------------------------------------------------------------
// Parsing: ID mappings
// ---------------------------------------------------------------------------

/// `uidmapping=` / `gidmapping=`: `container:host:count` triples, all joined
/// by colons (`0:100000:1:1:200000:5` is two ranges).
///
/// One stray colon at either end is tolerated (`:0:100000:65536`), as
/// fuse-overlayfs does; an empty value (or a lone colon) means no mapping.
/// Every field must be a decimal number, every count at least 1, and no
/// range may run past the largest 32-bit ID.
pub(super) fn parse_id_mappings(
    option: &'static str,
    value: Option<&[u8]>,
) -> Result<Vec<IdMapping>, OptionsError> {
    let value = value.unwrap_or_default();
    let invalid = |reason: String| OptionsError::InvalidIdMapping {
        option,
        value: lossy(value),
        reason,
    };
    if value.is_empty() || value == b":" {
        return Ok(Vec::new());
    }
    let trimmed = value.strip_prefix(b":").unwrap_or(value);
    let trimmed = trimmed.strip_suffix(b":").unwrap_or(trimmed);
    let fields: Vec<&[u8]> = trimmed.split(|&byte| byte == b':').collect();
    if !fields.len().is_multiple_of(3) || fields.iter().any(|field| field.is_empty()) {
        return Err(invalid("expected container:host:count triples".into()));
    }
    fields
        .chunks_exact(3)
        .map(|triple| parse_id_triple(triple).map_err(&invalid))
        .collect()
}

/// One `[container, host, count]` triple; the error is the reason.
pub(super) fn parse_id_triple(triple: &[&[u8]]) -> Result<IdMapping, String> {
    let number = |field: &[u8]| {
        decimal_u32(field).ok_or_else(|| format!("'{}' is not a valid id or count", lossy(field)))
    };
    let [container, host, count] = triple else {
        return Err("expected container:host:count triples".into());
    };
    let mapping = IdMapping {
        container: number(container)?,
        host: number(host)?,
        count: number(count)?,
    };
    if mapping.count == 0 {
        return Err("count must be at least 1".into());
    }
    let limit = u64::from(u32::MAX) + 1;
    let count = u64::from(mapping.count);
    if u64::from(mapping.container) + count > limit || u64::from(mapping.host) + count > limit {
        return Err(format!(
            "range {}:{}:{} runs past the largest id",
            mapping.container, mapping.host, mapping.count
        ));
    }
    Ok(mapping)
}

pub(super) fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

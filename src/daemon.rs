//! Mounting and the daemon's life: mount, hand control back to the caller
//! once the mount is live, serve until the mount goes away, and unmount
//! cleanly on SIGTERM, SIGINT or SIGHUP; SIGUSR1 drops every cache (see
//! [`crate::refresh`]).

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::Arc;
use std::thread;

use fuser::MountOption;
use log::info;

use crate::fs::{DEFAULT_TIMEOUT, FsConfig, Strata};
use crate::idmap::IdMap;
use crate::layer::Layer;
use crate::options::Config;
use crate::refresh::Refresher;
use crate::stat_override::Format;
use crate::sys;

/// Entries the dentry cache keeps at most (about 120 bytes each). The
/// kernel's own dentry cache answers repeated lookups; this one saves the
/// layer probes when the kernel asks again, and strata's own lookups.
const DCACHE_ENTRIES: usize = 64 * 1024;

/// Worker threads reading /dev/fuse (each with its own cloned fd).
fn worker_threads(config: &Config) -> usize {
    if config.threaded == Some(false) {
        return 1;
    }
    thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8))
}

fn fuser_config(config: &Config) -> fuser::Config {
    let mut fc = fuser::Config::default();
    fc.mount_options = config.fuse_mount_options();
    fc.mount_options.push(MountOption::FSName("strata".into()));
    fc.mount_options.push(MountOption::Subtype("strata".into()));
    fc.acl = config.session_acl();
    fc.n_threads = Some(worker_threads(config));
    fc.clone_fd = true;
    fc
}

/// `umount -l`: directly as root, else through `fusermount3 -u -z`.
fn unmount_lazily(mountpoint: &CStr) -> io::Result<()> {
    match sys::umount_lazy(mountpoint) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            let status = std::process::Command::new("fusermount3")
                .args(["-u", "-z", "--"])
                .arg(OsStr::from_bytes(mountpoint.to_bytes()))
                .status()?;
            if status.success() {
                Ok(())
            } else {
                Err(io::Error::other(format!("fusermount3 -u -z: {status}")))
            }
        }
        other => other,
    }
}

/// Mounts the filesystem described by `config` and serves it (or, for a
/// `/dev/fd/N` mountpoint, serves the mount the caller made). Without
/// `foreground`, returns in the caller's process as soon as the mount is live
/// (exit status 0) while a detached child serves it.
pub fn mount_and_serve(config: &Config, inherited: &[RawFd]) -> io::Result<()> {
    mount_layers_and_serve(config, Vec::new(), inherited)
}

/// [`mount_and_serve`] with `lower_layers` (open already, top first) below
/// the config's lowerdirs: `strata mount-image`'s tar layers.
pub fn mount_layers_and_serve(
    config: &Config,
    lower_layers: Vec<Arc<dyn Layer>>,
    inherited: &[RawFd],
) -> io::Result<()> {
    if let Err(e) = sys::raise_nofile_limit() {
        info!("could not raise the open-file limit: {e}");
    }
    let fs = Strata::new(&FsConfig {
        lowerdirs: config.lowerdirs.clone(),
        lower_layers,
        upperdir: config.upperdir.clone(),
        workdir: config.workdir.clone(),
        timeout: config.timeout.unwrap_or(DEFAULT_TIMEOUT),
        dcache_entries: DCACHE_ENTRIES,
        static_nlink: config.static_nlink,
        noxattrs: config.noxattrs,
        fsync: config.fsync && !config.volatile,
        create_redirects: config.redirects().0,
        follow_redirects: config.redirects().1,
        passthrough: config.passthrough,
        metacopy: config.metacopy,
        idmap: IdMap::new(
            &config.uid_mappings,
            &config.gid_mappings,
            config.squash_to_root,
            config.squash_to_uid,
            config.squash_to_gid,
        ),
        xattr_permissions: Format::from_option(config.xattr_permissions),
        acl: !config.noacl,
    })?;
    let notifier = fs.notifier.clone();
    let refresher = fs.refresher();
    // How a termination signal ends the daemon; taken before it moves to /.
    let on_signal = match config.fuse_fd {
        Some(_) => OnSignal::Exit,
        None => {
            let mountpoint = config.mountpoint.canonicalize().map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("mountpoint '{}': {e}", config.mountpoint.display()),
                )
            })?;
            let mountpoint = CString::new(mountpoint.as_os_str().as_bytes())
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            OnSignal::Unmount(mountpoint)
        }
    };
    // Modes asked for by the kernel are already masked by the caller's umask.
    sys::clear_umask();
    // Before any thread exists, so every thread inherits the mask and only
    // the signal thread below receives these signals.
    sys::block_daemon_signals()?;
    let mut session = match config.fuse_fd {
        Some(fd) => serve_fd(fs, config, fd)?,
        None => {
            fuser::Session::new(fs, &config.mountpoint, &fuser_config(config)).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot mount on '{}': {e}", config.mountpoint.display()),
                )
            })?
        }
    };
    let _ = notifier.set(session.notifier());
    // The kernel's INIT has been answered: the mount is live.
    if !config.foreground {
        // The /dev/fd/N number was adopted (closed) already.
        let inherited: Vec<RawFd> = inherited
            .iter()
            .copied()
            .filter(|&fd| Some(fd) != config.fuse_fd)
            .collect();
        match sys::fork()? {
            sys::Forked::Parent => sys::exit_immediately(0),
            sys::Forked::Child => sys::detach_from_caller(&inherited)?,
        }
    }
    // Still a single thread: the moment to leave the caller's namespace.
    let home = match on_signal {
        OnSignal::Unmount(_) => leave_mount_namespace(),
        OnSignal::Exit => None,
    };
    let unmounter = session.unmount_callable();
    thread::Builder::new()
        .name("strata-signals".into())
        .spawn(move || handle_signals(on_signal, unmounter, home, refresher))?;
    session.run()?;
    info!("unmounted; exiting");
    Ok(())
}

/// What the first termination signal does.
enum OnSignal {
    /// Unmount the mount strata made at this (absolute) path.
    Unmount(CString),
    /// Exit: strata did not mount a `/dev/fd/N` mount, and may lack the
    /// privilege to unmount it. Leaving ends the FUSE connection; the mount
    /// answers ENOTCONN until its owner unmounts it (as with libfuse).
    Exit,
}

/// The daemon keeps no mount alive by being somewhere: it moves to a
/// private copy of the caller's mount namespace and detaches every mount of
/// that copy but `/`, `/proc` and `/dev` (it works through fds taken
/// before). So
/// its mount ends, and the daemon with it, when the caller's namespace ends
/// without an unmount (a container that exits), and no other filesystem
/// stays mounted in the daemon's copy after its owner unmounted it (another
/// FUSE daemon would wait for that copy). Returns which namespace was the
/// caller's, to unmount there on a signal. Needs CAP_SYS_ADMIN: a daemon
/// without it (mounting through fusermount3) stays where it is.
fn leave_mount_namespace() -> Option<(u64, u64)> {
    let home = match sys::leave_mount_namespace() {
        Ok(fd) => fd,
        Err(e) => {
            info!("staying in the caller's mount namespace: {e}");
            return None;
        }
    };
    let mut points = mount_points().unwrap_or_default();
    // Parents first: detaching one takes its children along.
    points.sort_by_key(|p| p.as_bytes().len());
    for point in points {
        let bytes = point.as_bytes();
        // Kept: /proc for fd paths, /dev for the workers' clones of /dev/fuse.
        if [&b"/"[..], b"/proc", b"/dev"].contains(&bytes) || bytes.starts_with(b"/proc/") {
            continue;
        }
        if let Ok(c) = CString::new(bytes) {
            let _ = sys::umount_lazy(&c); // gone already with its parent
        }
    }
    Some(home)
}

/// An fd of the mount namespace `(dev, ino)`, through a process that is
/// still in it. None: nobody is, and the mount went with it.
fn namespace_fd((dev, ino): (u64, u64)) -> Option<std::fs::File> {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let ns = entry.path().join("ns/mnt");
            let md = std::fs::metadata(&ns).ok()?;
            ((md.dev(), md.ino()) == (dev, ino))
                .then(|| std::fs::File::open(&ns).ok())
                .flatten()
        })
}

/// The mount points of this mount namespace (`/proc/self/mountinfo`'s fifth
/// field, its octal escapes undone).
fn mount_points() -> io::Result<Vec<std::ffi::OsString>> {
    let text = std::fs::read("/proc/self/mountinfo")?;
    Ok(text
        .split(|&b| b == b'\n')
        .filter_map(|line| line.split(|&b| b == b' ').nth(4))
        .map(|field| {
            let mut out = Vec::with_capacity(field.len());
            let mut i = 0;
            while i < field.len() {
                let octal = field.get(i + 1..i + 4).and_then(|d| {
                    std::str::from_utf8(d)
                        .ok()
                        .and_then(|d| u8::from_str_radix(d, 8).ok())
                });
                match (field[i], octal) {
                    (b'\\', Some(byte)) => {
                        out.push(byte);
                        i += 4;
                    }
                    (byte, _) => {
                        out.push(byte);
                        i += 1;
                    }
                }
            }
            std::ffi::OsString::from_vec(out)
        })
        .collect())
}

/// A termination signal; SIGUSR1s meanwhile refresh the caches.
fn wait_for_termination(refresher: &Refresher) -> i32 {
    loop {
        match sys::wait_for_signal() {
            libc::SIGUSR1 => {
                info!("SIGUSR1: dropping every cache of the layers");
                refresher.refresh();
            }
            sig => return sig,
        }
    }
}

/// The signal thread: waits for SIGTERM, SIGINT or SIGHUP and ends the mount
/// (in the caller's namespace `home`, when the daemon left it).
fn handle_signals(
    on_signal: OnSignal,
    mut unmounter: fuser::SessionUnmounter,
    home: Option<(u64, u64)>,
    refresher: Refresher,
) {
    let sig = wait_for_termination(&refresher);
    let OnSignal::Unmount(mountpoint) = on_signal else {
        info!("signal {sig}: exiting (the caller owns the mount)");
        sys::exit_immediately(0);
    };
    info!("signal {sig}: unmounting");
    if let Some(home) = home.and_then(namespace_fd) {
        use std::os::fd::AsFd;
        if let Err(e) = sys::umount_in_namespace(home.as_fd(), &mountpoint, 0) {
            info!("unmount on signal {sig}: {e}; detaching it");
            if let Err(e) = sys::umount_in_namespace(home.as_fd(), &mountpoint, libc::MNT_DETACH) {
                log::warn!("could not detach the mount on signal {sig}: {e}");
            }
        }
    } else if let Err(e) = unmounter.unmount() {
        // Busy: detach it as libfuse does; it goes away, and the
        // session ends, once the last process using it lets go.
        info!("unmount on signal {sig}: {e}; detaching it");
        if let Err(e) = unmount_lazily(&mountpoint) {
            log::warn!("could not detach the mount on signal {sig}: {e}");
        }
    }
    let sig = wait_for_termination(&refresher);
    info!("signal {sig} again: exiting now");
    sys::exit_immediately(0);
}

/// A session on the already-mounted `/dev/fuse` fd `fd` (a `/dev/fd/N`
/// mountpoint, validated before): answers the kernel's INIT on it.
fn serve_fd(fs: Strata, config: &Config, fd: RawFd) -> io::Result<fuser::Session<Strata>> {
    let what = config.mountpoint.display();
    let fd = sys::adopt_inherited_fd(fd)
        .map_err(|e| io::Error::new(e.kind(), format!("mountpoint '{what}': {e}")))?;
    fuser::Session::from_fd(fs, fd, config.session_acl(), fuser_config(config)).map_err(|e| {
        let reason = match e.raw_os_error() {
            // The kernel refuses to read a /dev/fuse fd no mount uses.
            Some(libc::EPERM) => "the /dev/fuse fd is not mounted".to_string(),
            _ if e.kind() == io::ErrorKind::NotConnected => {
                "the mount went away before strata could serve it".to_string()
            }
            _ => e.to_string(),
        };
        io::Error::new(e.kind(), format!("cannot serve '{what}': {reason}"))
    })
}

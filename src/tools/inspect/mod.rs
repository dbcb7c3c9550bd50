//! `strata inspect`: where every entry of a merged tree comes from.
//!
//! ```text
//! strata inspect --layers TOP:...:BOTTOM [--upper DIR] [-R] [--json] [PATH...]
//! strata inspect [-R] [--json] PATH...          (PATHs inside a live strata mount)
//! ```
//!
//! With `--layers`, the layer directories are opened read-only (nothing is
//! mounted or written, no symlink is followed out of a layer) and each PATH
//! (a path of the merged tree: `etc/hostname`, `/etc/hostname`; `/` by
//! default) is resolved top-down exactly as a mount resolves it, with
//! [`LayerStack::lookup`]: whiteouts in both formats, opaque directories,
//! redirects, metadata-only files. Without `--layers`, each PATH is a path
//! inside a live strata mount and the facts come from the mount itself: the
//! daemon answers `getxattr(PATH, "user.strata.layer")` (`Strata::layer_xattr`)
//! with the entry's JSON object below. That xattr is virtual and read-only:
//! it is never listed, setting or removing it is EPERM, and `noxattrs=1`
//! turns it off with every other xattr. Two kinds of entries need more:
//! the kernel answers `user.*` reads of symlinks and special files itself
//! (ENODATA) without asking the filesystem, and one node serves every name
//! of a hard-linked file (its value describes the name the mount found
//! first). For those the tool reads the layer list from the mount root's
//! xattr and resolves the path in the layers directly (they must be at
//! absolute paths), with the attributes the mount shows.
//!
//! # Layer numbers
//!
//! `upper` is the upper layer (`--upper`, or the mount's `upperdir`); the
//! lower layers are `1` to `N`, top first, in `--layers` / `lowerdir=`
//! order, whether or not there is an upper. `index` is a writable mount's
//! hard-link index (in its workdir).
//!
//! # Text output
//!
//! Two lines per entry: an `ls -ln`-like line (mode, link count, numeric
//! owner and group as stored in the layer, size or `major, minor`, mtime in
//! UTC with nanoseconds, path, `-> target`), then the facts, `; `-separated:
//!
//! ```text
//! $ strata inspect --layers /l/app:/l/update:/l/base /etc/hostname /etc/ssl /var/log/old.log /usr/bin/sh
//! -rw-------   1 0     0             12 2021-01-01 04:00:28.677095031 /etc/hostname
//!     layer 2 /l/update; shadows 3
//! drwxr-xr-x   2 0     0           4096 2021-01-01 05:00:35.596118788 /etc/ssl
//!     layer 2 /l/update; shadows 3; opaque
//! w---------   - -     -              - -                             /var/log/old.log
//!     whiteout in 2 /l/update; hides 3
//! lrwxrwxrwx   1 0     0              7 2020-01-03 10:06:46.304377909 /usr/bin/sh -> busybox
//!     layer 3 /l/base
//! ```
//!
//! - `layer L DIR`: the layer that supplies the entry, and its directory;
//!   `(as P)` when its path in that layer differs (under a redirect);
//! - `merged L L...`: a directory's layers, top first (`L:P` where the path
//!   in layer L is P, not the entry's), shown when there is more than one;
//! - `shadows L...`: layers below that hold the name too and are hidden by
//!   this entry (down to the first whiteout below);
//! - `opaque`: the directory hides the layers below (an opaque xattr, a
//!   `.wh..wh..opq` entry, or a `.wh.NAME` beside NAME);
//! - `copied-up`: in the upper and below it too, merged or shadowed (an
//!   object deleted and created again looks the same; an opaque directory
//!   is not copied up, it replaces);
//! - `redirected from R (in L)`: a renamed directory, whose lower content is
//!   at R (the redirect xattr of layer L);
//! - `metacopy, data in L`: metadata-only file, its data in layer L;
//! - `deleted N1, N2`: for a directory (without `-R`), names whiteouts
//!   delete in it;
//! - a whiteout line (type `w`, no attributes): the name is deleted by a
//!   whiteout in layer L (either format), which hides the layers listed.
//!
//! An explicit PATH that a whiteout deletes prints its whiteout line; one
//! that exists nowhere is an error. `-R` walks the merged tree below each
//! PATH, names sorted by bytes, printing deleted names as whiteout lines.
//! Text output escapes `\`, control characters and bytes that are not
//! UTF-8 as `\\`, `\n`, `\xNN`.
//!
//! # JSON (`--json`)
//!
//! One object per line (JSON Lines), the same the xattr holds:
//!
//! ```text
//! {"path":"/etc/hostname","type":"file","mode":"-rw-------","perm":"0600",
//!  "nlink":1,"uid":0,"gid":0,"size":12,"mtime":1609473628,"mtime_nsec":677095031,
//!  "layer":"2","layer_dir":"/l/update","layer_path":"/etc/hostname","markers":[],
//!  "shadows":[{"layer":"3","dir":"/l/base","path":"/etc/hostname"}]}
//! ```
//!
//! (wrapped here; one line in the output). After `chmod`, `mv merged
//! moved` and `rm etc/group` on a writable mount (`getfattr -n
//! user.strata.layer --only-values M/moved` prints the same object):
//!
//! ```text
//! {"path":"/moved","type":"dir",...,"layer":"upper","layer_dir":"/c/diff",
//!  "layer_path":"/moved","markers":["copied-up","redirected"],
//!  "merged":[{"layer":"upper","dir":"/c/diff","path":"/moved"},
//!            {"layer":"1","dir":"/l/app","path":"/merged"},...],
//!  "shadows":[],"redirect":{"layer":"upper","dir":"/c/diff","path":"/moved","from":"merged"},
//!  "deleted":[{"name":"a.txt","layer":"2","shadows":["3"]}]}
//! ```
//!
//! - `type`: `file`, `dir`, `symlink`, `char`, `block`, `fifo`, `socket` or
//!   `whiteout` (a whiteout has no `mode` ... `mtime_nsec`);
//! - `rdev` (`[major, minor]`) for devices, `target` for symlinks;
//! - `markers`: any of `whiteout`, `opaque`, `copied-up`, `redirected`,
//!   `metacopy`;
//! - `shadows`: places `{"layer","dir","path"}` (for a whiteout: what it
//!   hides); directories also have `merged` (places, top first) and
//!   `deleted` (`[{"name","layer","shadows":[labels]}]`, with
//!   `"deleted_truncated":true` where the xattr's 64 KiB would not hold
//!   them all); `redirect` (`{"layer","dir","path","from"}`) and `metacopy`
//!   (the data's place) with those markers.
//!
//! Names and paths are bytes: every such string field is the bytes read as
//! UTF-8 with invalid sequences replaced by U+FFFD, and when that is lossy a
//! sibling field with `_bytes` appended (`path_bytes`, `name_bytes`,
//! `target_bytes`, `dir_bytes`, `layer_dir_bytes`, ...) holds the exact
//! bytes in lower-case hex. In live mode the text output shows PATH as
//! given; `path` in the JSON is always the merged path.

/// The facts of an entry, as both outputs and the xattr hold them.
mod entry;
/// The facts from the layer stack (and the daemon's xattr value).
mod explain;
/// `--json` and the xattr value.
mod json;
/// Reading entries through a live mount.
mod live;
/// The two text lines of an entry.
mod text;

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use entry::{Entry, Kind, rooted};
use explain::{explain, explain_missing, resolve};
use live::Live;
use text::printable;

use crate::inode::{InoMap, NodeState};
use crate::layer::{DirLayer, Layer, RelPath};
use crate::lookup::LayerStack;
use crate::options;
use crate::readdir::merged_listing;

/// The virtual, read-only xattr a strata mount answers on every entry.
pub const XATTR: &str = "user.strata.layer";

/// `strata inspect --help`.
pub const HELP: &str = "\
usage: strata inspect --layers TOP:...:BOTTOM [--upper DIR] [-R] [--json] [PATH...]
       strata inspect [-R] [--json] PATH...

Show where each entry of a merged tree comes from: an ls -ln-like line,
then the layer that supplies it (number and directory), the layers it
shadows, and the markers whiteout, opaque, copied-up, redirected and
metacopy.

With --layers, the layer directories are read directly (read-only, nothing
mounted) and PATH is a path of the merged tree (default /). Without it, each
PATH is inside a live strata mount, which answers the same facts as the
virtual xattr user.strata.layer (getfattr -n user.strata.layer FILE).

Layers: 'upper' is the upper layer, 1..N the lower layers top first (the
order of --layers and lowerdir=), 'index' a mount's hard-link index.

options:
    --layers TOP:...:BOTTOM  lower layer directories, top first (\\: is a
                             literal colon, \\\\ a backslash)
    --upper DIR              the upper layer (with --layers)
    -R, --recursive          walk the tree below each PATH, deleted names
                             included (as whiteout lines)
    --json                   one JSON object per entry and line
    -h, --help               print this help and exit
";

/// Runs `strata inspect ARGS...`.
pub fn main(args: Vec<OsString>) -> ExitCode {
    let args = match parse_args(args) {
        Ok(Parsed::Help) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Run(args)) => args,
        Err(e) => {
            eprintln!("strata inspect: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stdout = io::stdout();
    let mut out = Out {
        w: io::BufWriter::new(stdout.lock()),
        json: args.json,
        recursive: args.recursive,
        errors: 0,
    };
    let result = match &args.layers {
        Some(lowers) => match open_stack(lowers, args.upper.as_deref()) {
            Ok(stack) => offline(&stack, &args, &mut out),
            Err(e) => {
                eprintln!("strata inspect: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => live(&args, &mut out),
    };
    let result = result.and_then(|()| out.w.flush());
    match result {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata inspect: writing the output: {e}");
            ExitCode::FAILURE
        }
        Ok(()) if out.errors > 0 => ExitCode::FAILURE,
        Ok(()) => ExitCode::SUCCESS,
    }
}

// ==================================================================== CLI

struct Args {
    layers: Option<Vec<PathBuf>>,
    upper: Option<PathBuf>,
    recursive: bool,
    json: bool,
    paths: Vec<OsString>,
}

enum Parsed {
    Help,
    Run(Args),
}

fn parse_args(args: Vec<OsString>) -> Result<Parsed, String> {
    let mut out = Args {
        layers: None,
        upper: None,
        recursive: false,
        json: false,
        paths: Vec::new(),
    };
    let mut it = args.into_iter();
    let value_of =
        |flag: &str, inline: Option<&[u8]>, it: &mut std::vec::IntoIter<OsString>| match inline {
            Some(v) => Ok(v.to_vec()),
            None => it
                .next()
                .map(OsString::into_vec)
                .ok_or_else(|| format!("{flag} needs a value")),
        };
    while let Some(arg) = it.next() {
        let bytes = arg.as_bytes();
        let (flag, inline) = match bytes.iter().position(|&b| b == b'=') {
            Some(i) if bytes.starts_with(b"--") => (&bytes[..i], Some(&bytes[i + 1..])),
            _ => (bytes, None),
        };
        match flag {
            b"-h" | b"--help" => return Ok(Parsed::Help),
            b"-R" | b"--recursive" => out.recursive = true,
            b"--json" => out.json = true,
            b"--layers" => {
                let v = value_of("--layers", inline, &mut it)?;
                // The syntax of `lowerdir=`, as the mount reads it.
                let dirs = options::parse_layer_list(&v).map_err(|e| format!("--layers: {e}"))?;
                out.layers = Some(dirs);
            }
            b"--upper" => {
                let v = value_of("--upper", inline, &mut it)?;
                if v.is_empty() {
                    return Err("--upper: empty directory".into());
                }
                out.upper = Some(PathBuf::from(OsString::from_vec(v)));
            }
            b"--" => {
                out.paths.extend(it.by_ref());
            }
            _ if bytes.len() > 1 && bytes.starts_with(b"-") => {
                return Err(format!(
                    "unknown option '{}' (see strata inspect --help)",
                    arg.to_string_lossy()
                ));
            }
            _ => out.paths.push(arg),
        }
    }
    if out.upper.is_some() && out.layers.is_none() {
        return Err("--upper needs --layers".into());
    }
    if out.paths.is_empty() {
        match out.layers {
            Some(_) => out.paths.push("/".into()),
            None => return Err("no PATH given (see strata inspect --help)".into()),
        }
    }
    Ok(Parsed::Run(out))
}

/// A merged path from a command-line PATH: `/`-separated, `.` and empty
/// components skipped, `..` going up (never above the root).
fn merged_path(arg: &OsStr) -> Result<RelPath, String> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in arg.as_bytes().split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Ok(RelPath::root());
    }
    RelPath::from_components(&parts.join(&b'/'))
        .ok_or_else(|| format!("{}: a name is too long", arg.to_string_lossy()))
}

/// Opens `--layers` and `--upper` read-only as a mount would see them.
fn open_stack(lowers: &[PathBuf], upper: Option<&Path>) -> Result<LayerStack, String> {
    let open = |p: &Path| -> Result<Arc<dyn Layer>, String> {
        match DirLayer::open(p) {
            Ok(layer) => Ok(Arc::new(layer.read_only())),
            Err(e) => Err(format!("layer '{}': {e}", p.display())),
        }
    };
    let upper = upper.map(open).transpose()?;
    let lowers = lowers
        .iter()
        .map(|p| open(p))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(LayerStack::new(upper, lowers))
}

/// Where the output goes; counts the errors met on the way.
struct Out<W: Write> {
    w: W,
    json: bool,
    recursive: bool,
    errors: usize,
}

impl<W: Write> Out<W> {
    /// Prints `e`; the text output names it `shown`.
    fn entry(&mut self, shown: &[u8], e: &Entry) -> io::Result<()> {
        if self.json {
            writeln!(self.w, "{}", json::to_json(e, None))
        } else {
            writeln!(self.w, "{}", text::ls_line(e, shown))?;
            writeln!(self.w, "    {}", text::facts_line(e, self.recursive))
        }
    }

    /// Reports one path's error on stderr, after what is already printed.
    fn error(&mut self, message: &str) -> io::Result<()> {
        self.w.flush()?;
        eprintln!("strata inspect: {message}");
        self.errors += 1;
        Ok(())
    }
}

// ================================================================= the walks

/// What a walk does next (a stack of these, the next on top).
enum Work<T> {
    /// An entry to look up, print and, with `-R`, descend into.
    Visit(T),
    /// An entry already known (a whiteout), and the path to show it under.
    Print(Vec<u8>, Box<Entry>),
}

/// Queues a directory's `children` (keyed by name) to come next, in byte
/// order of their names.
fn visit_next<T>(work: &mut Vec<Work<T>>, mut children: Vec<(Vec<u8>, Work<T>)>) {
    children.sort_by(|a, b| a.0.cmp(&b.0));
    work.extend(children.into_iter().rev().map(|(_, w)| w));
}

fn offline<W: Write>(stack: &LayerStack, args: &Args, out: &mut Out<W>) -> io::Result<()> {
    let inos = InoMap::new(stack.iter().map(|l| l.root_dev()));
    for arg in &args.paths {
        let path = match merged_path(arg) {
            Ok(p) => p,
            Err(e) => {
                out.error(&e)?;
                continue;
            }
        };
        let resolved = match resolve(stack, &path) {
            Ok(r) => r,
            Err(e) => {
                out.error(&e.message(&path))?;
                continue;
            }
        };
        let Some(state) = resolved.state else {
            // Not in the merged tree: its whiteout, if one deletes it.
            let shown = printable(&rooted(&path));
            match explain_missing(stack, &path, resolved.parent.as_ref()) {
                Ok(Some(w)) => out.entry(&w.path, &w)?,
                Ok(None) => out.error(&format!(
                    "{shown}: no such file or directory in the merged tree"
                ))?,
                Err(e) => out.error(&format!("{shown}: {e}"))?,
            }
            continue;
        };
        walk_offline(stack, &inos, path, resolved.parent, state, out)?;
    }
    Ok(())
}

/// A merged directory entry to visit: path, directory, state.
type Visit = (RelPath, Option<NodeState>, NodeState);

/// Prints the entry at `path` and, with `-R`, the tree below it: each
/// directory, then its names in byte order, deleted ones as whiteouts.
fn walk_offline<W: Write>(
    stack: &LayerStack,
    inos: &InoMap,
    path: RelPath,
    parent: Option<NodeState>,
    state: NodeState,
    out: &mut Out<W>,
) -> io::Result<()> {
    let mut work: Vec<Work<Visit>> = vec![Work::Visit((path, parent, state))];
    while let Some(item) = work.pop() {
        let (path, parent, state) = match item {
            Work::Print(shown, e) => {
                out.entry(&shown, &e)?;
                continue;
            }
            Work::Visit(v) => v,
        };
        let entry = match explain(stack, &path, parent.as_ref(), &state, None) {
            Ok(e) => e,
            Err(e) => {
                out.error(&format!("{}: {e}", printable(&rooted(&path))))?;
                continue;
            }
        };
        out.entry(&entry.path, &entry)?;
        if !out.recursive || entry.kind != Kind::Dir {
            continue;
        }
        let listed = match merged_listing(stack, inos, &state) {
            Ok(l) => l,
            Err(e) => {
                out.error(&format!("{}: listing: {e}", printable(&entry.path)))?;
                continue;
            }
        };
        let mut children = Vec::new();
        for item in listed {
            let child = path.join(&item.name);
            match stack.lookup(&state, &item.name) {
                Ok(Some(s)) => children.push((
                    item.name.into_vec(),
                    Work::Visit((child, Some(state.clone()), s)),
                )),
                Ok(None) => {}
                Err(e) => out.error(&format!("{}: {e}", printable(&rooted(&child))))?,
            }
        }
        for d in &entry.deleted {
            let w = entry.deleted_entry(d);
            children.push((d.name.clone(), Work::Print(w.path.clone(), Box::new(w))));
        }
        visit_next(&mut work, children);
    }
    Ok(())
}

/// Prints the entries at the PATHs inside a live mount and, with `-R`,
/// the trees below them, in the order of the offline walk.
fn live<W: Write>(args: &Args, out: &mut Out<W>) -> io::Result<()> {
    let mut live = Live::default();
    for arg in &args.paths {
        let mut work = vec![Work::Visit(PathBuf::from(arg))];
        while let Some(item) = work.pop() {
            let path = match item {
                Work::Print(shown, e) => {
                    out.entry(&shown, &e)?;
                    continue;
                }
                Work::Visit(p) => p,
            };
            let entry = match live.entry(&path) {
                Ok(e) => e,
                Err(e) => {
                    out.error(&e)?;
                    continue;
                }
            };
            out.entry(path.as_os_str().as_bytes(), &entry)?;
            if !out.recursive || entry.kind != Kind::Dir {
                continue;
            }
            let names = fs::read_dir(&path).and_then(|dir| {
                dir.map(|e| e.map(|e| e.file_name().into_vec()))
                    .collect::<io::Result<Vec<_>>>()
            });
            let names = match names {
                Ok(n) => n,
                Err(e) => {
                    out.error(&format!("{}: listing: {e}", path.display()))?;
                    continue;
                }
            };
            let mut children: Vec<_> = names
                .into_iter()
                .map(|n| {
                    let child = path.join(OsStr::from_bytes(&n));
                    (n, Work::Visit(child))
                })
                .collect();
            for d in &entry.deleted {
                // Shown under the path given, like the visible names.
                let shown = path.join(OsStr::from_bytes(&d.name)).into_os_string();
                let w = Box::new(entry.deleted_entry(d));
                children.push((d.name.clone(), Work::Print(shown.into_vec(), w)));
            }
            visit_next(&mut work, children);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines() {
        let parse = |v: &[&str]| parse_args(v.iter().map(OsString::from).collect());
        let Ok(Parsed::Run(a)) = parse(&["--layers", "/a\\:b:/c", "-R", "--json"]) else {
            panic!()
        };
        assert_eq!(
            a.layers.unwrap(),
            [PathBuf::from("/a:b"), PathBuf::from("/c")]
        );
        assert!(a.recursive && a.json);
        assert_eq!(a.paths, [OsString::from("/")]);
        assert!(parse(&["--upper", "/u", "x"]).is_err());
        assert!(parse(&["-x", "p"]).is_err());
        assert!(parse(&[]).is_err());
        assert!(parse(&["--layers=/a::/b"]).is_err());
        assert!(parse(&["--layers=/a\\"]).is_err());
        assert!(matches!(parse(&["--help"]), Ok(Parsed::Help)));
        assert_eq!(
            merged_path(OsStr::new("/a/./b/../c/")).unwrap().as_bytes(),
            b"a/c"
        );
        assert!(merged_path(OsStr::new("..")).unwrap().is_root());
    }
}

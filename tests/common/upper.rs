//! The upper directory itself, read without any mount: what a write path
//! left on disk, normalised so that two implementations that encode the
//! same thing differently compare equal:
//!
//! * whiteouts: a 0/0 character device `NAME` (kernel; the kernel makes all
//!   of them hard links of one shared inode, mode 0000) and a `.wh.NAME`
//!   file (OCI) both read as "whiteout NAME", attributes ignored;
//! * opaque directories: `trusted.overlay.opaque=y`, `user.overlay.opaque=y`,
//!   `user.fuseoverlayfs.opaque=y` and a `.wh..wh..opq` entry all read as
//!   "opaque"; a `.wh.NAME` next to a directory `NAME` (the OCI way to say
//!   "recreated": the whiteout hides the layers below) too; the flag is
//!   compared only where some lower layer has a directory (see
//!   [`upper_diff`]);
//! * st_nlink is not compared (an index=on work dir holds links too), only
//!   which upper entries share an inode;
//! * directory redirects: `trusted.overlay.redirect` / `user.overlay.redirect`
//!   (the value is compared);
//! * other overlay-internal attributes (origin, impure, uuid, ...; every name
//!   `is_internal_xattr` knows) and security.* are ignored, as are all
//!   directory times and sizes, and the raw inode numbers (only which
//!   entries share an inode is compared).
//!
//! The mtimes of non-directories are compared unless both sides are
//! "recent" (set after the script started, i.e. written by it): copy-up
//! must preserve them.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::ops::Mtime;
use super::{Kind, content_hash, dev_major_minor, is_internal_xattr, lgetxattr, llistxattr, show};

/// Attribute names that mark a directory opaque (value "y").
pub const OPAQUE_XATTRS: [&str; 3] = [
    "trusted.overlay.opaque",
    "user.overlay.opaque",
    "user.fuseoverlayfs.opaque",
];
/// Attribute names holding a directory redirect.
pub const REDIRECT_XATTRS: [&str; 2] = ["trusted.overlay.redirect", "user.overlay.redirect"];
/// The OCI opaque marker.
pub const OPQ_MARKER: &[u8] = b".wh..wh..opq";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpperKind {
    Whiteout,
    Plain(Kind),
}

/// One entry of an upper directory after normalisation.
#[derive(Clone, Debug)]
pub struct UpperEntry {
    pub kind: UpperKind,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u64,
    pub mtime: (i64, i64),
    pub content: Option<u64>,
    pub symlink: Option<String>,
    pub rdev: Option<(u32, u32)>,
    /// Sorted (name, escaped value), internal and security.* names left out.
    pub xattrs: Vec<(String, String)>,
    pub opaque: bool,
    /// Where a renamed directory's lower content lives: the redirect
    /// attribute resolved to an absolute path ("/usr/share/other"); the
    /// kernel writes a bare name for a rename within one directory and an
    /// absolute path otherwise, which mean the same.
    pub redirect: Option<String>,
    pub ino: u64,
    /// How the entry is encoded on disk (for reports only), e.g.
    /// "0/0 chardev", ".wh. file", "trusted.overlay.opaque", ".wh..wh..opq".
    pub forms: Vec<String>,
    pub errors: Vec<String>,
}

pub type UpperWalk = BTreeMap<PathBuf, UpperEntry>;

fn escape(v: &[u8]) -> String {
    v.iter()
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect()
}

fn entry_for(path: &Path) -> UpperEntry {
    let mut e = UpperEntry {
        kind: UpperKind::Plain(Kind::Unknown),
        perm: 0,
        uid: 0,
        gid: 0,
        size: 0,
        nlink: 0,
        mtime: (0, 0),
        content: None,
        symlink: None,
        rdev: None,
        xattrs: Vec::new(),
        opaque: false,
        redirect: None,
        ino: 0,
        forms: Vec::new(),
        errors: Vec::new(),
    };
    let md = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(err) => {
            e.errors.push(format!("lstat: {err}"));
            return e;
        }
    };
    let kind = Kind::of(md.file_type());
    e.kind = UpperKind::Plain(kind);
    e.perm = md.mode() & 0o7777;
    e.uid = md.uid();
    e.gid = md.gid();
    e.size = md.size();
    e.nlink = md.nlink();
    e.mtime = (md.mtime(), md.mtime_nsec());
    e.ino = md.ino();
    match kind {
        Kind::File => match fs::read(path) {
            Ok(v) => e.content = Some(content_hash(&v)),
            Err(err) => e.errors.push(format!("read: {err}")),
        },
        Kind::Symlink => match fs::read_link(path) {
            Ok(t) => e.symlink = Some(t.to_string_lossy().into_owned()),
            Err(err) => e.errors.push(format!("readlink: {err}")),
        },
        Kind::CharDev | Kind::BlockDev => {
            e.rdev = Some(dev_major_minor(md.rdev()));
            if kind == Kind::CharDev && e.rdev == Some((0, 0)) {
                e.kind = UpperKind::Whiteout;
                e.forms.push("0/0 chardev".into());
            }
        }
        _ => {}
    }
    match llistxattr(path) {
        Ok(mut names) => {
            names.sort();
            for n in names {
                let v = match lgetxattr(path, &n) {
                    Ok(v) => v,
                    Err(err) => {
                        e.errors.push(format!("lgetxattr {n}: {err}"));
                        continue;
                    }
                };
                if OPAQUE_XATTRS.contains(&n.as_str()) {
                    if v == b"y" {
                        e.opaque = true;
                        e.forms.push(n.clone());
                    } else {
                        e.forms.push(format!("{n}={}", escape(&v)));
                    }
                } else if REDIRECT_XATTRS.contains(&n.as_str()) {
                    // Resolved to an absolute path by upper_walk.
                    e.redirect = Some(String::from_utf8_lossy(&v).into_owned());
                    e.forms.push(format!("{n}={}", escape(&v)));
                } else if !is_internal_xattr(&n) && !n.starts_with("security.") {
                    e.xattrs.push((n, escape(&v)));
                }
            }
        }
        Err(err) if err.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
        Err(err) => e.errors.push(format!("llistxattr: {err}")),
    }
    e
}

/// Reads the upper directory `root` (no mount involved) into normalised
/// entries keyed by path relative to `root` (the root itself is "").
pub fn upper_walk(root: &Path) -> UpperWalk {
    let mut out = UpperWalk::new();
    let mut stack = vec![PathBuf::new()];
    out.insert(PathBuf::new(), entry_for(root));
    while let Some(rel) = stack.pop() {
        let full = root.join(&rel);
        let names: Vec<_> = match fs::read_dir(&full) {
            Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect(),
            Err(err) => {
                if let Some(e) = out.get_mut(&rel) {
                    e.errors.push(format!("readdir: {err}"));
                }
                continue;
            }
        };
        let present: BTreeSet<Vec<u8>> = names.iter().map(|n| n.as_bytes().to_vec()).collect();
        let mut opaque_marker = false;
        for n in &names {
            let b = n.as_bytes();
            if b == OPQ_MARKER {
                opaque_marker = true;
                continue;
            }
            // A 0/0 character device is a whiteout of its own name (kernel
            // format), whatever that name is; `.wh.NAME` entries of other
            // types are OCI whiteouts of NAME.
            let chardev_whiteout = fs::symlink_metadata(full.join(n)).is_ok_and(|m| {
                use std::os::unix::fs::FileTypeExt;
                m.file_type().is_char_device() && m.rdev() == 0
            });
            if !chardev_whiteout && let Some(target) = b.strip_prefix(b".wh.") {
                let tname = std::ffi::OsStr::from_bytes(target);
                let key = rel.join(tname);
                if present.contains(target) {
                    // NAME and .wh.NAME in one layer: the whiteout hides only
                    // the layers below, i.e. a directory NAME is opaque.
                    let is_dir = fs::symlink_metadata(full.join(tname)).is_ok_and(|m| m.is_dir());
                    out.entry(key.clone())
                        .or_insert_with(|| entry_for(&full.join(tname)))
                        .forms
                        .push(".wh. file next to it".into());
                    if is_dir {
                        out.get_mut(&key).unwrap().opaque = true;
                    }
                    continue;
                }
                let mut w = entry_for(&full.join(n));
                w.kind = UpperKind::Whiteout;
                w.forms.push(".wh. file".into());
                out.insert(key, w);
                continue;
            }
            let key = rel.join(n);
            let e = entry_for(&full.join(n));
            let is_dir = e.kind == UpperKind::Plain(Kind::Dir);
            // A ".wh. file next to it" note may be there already.
            let slot = out.entry(key.clone()).or_insert_with(|| e.clone());
            if slot.kind != e.kind || slot.ino != e.ino {
                let forms = std::mem::take(&mut slot.forms);
                let opaque = slot.opaque;
                *slot = e;
                slot.forms.extend(forms);
                slot.opaque |= opaque;
            }
            if is_dir {
                stack.push(key);
            }
        }
        if opaque_marker && let Some(e) = out.get_mut(&rel) {
            e.opaque = true;
            e.forms.push(".wh..wh..opq".into());
        }
    }
    // Relative redirects are relative to the parent's lower path (its own
    // redirect, if any, or its path).
    let paths: Vec<PathBuf> = out
        .iter()
        .filter(|(_, e)| e.redirect.as_deref().is_some_and(|r| !r.starts_with('/')))
        .map(|(p, _)| p.clone())
        .collect();
    let lower_path = |w: &UpperWalk, p: &Path| -> String {
        // The parent chain, root first.
        let mut s = String::new();
        for a in p.ancestors().collect::<Vec<_>>().into_iter().rev().skip(1) {
            match w.get(a).and_then(|e| e.redirect.clone()) {
                Some(r) if r.starts_with('/') => s = r.trim_end_matches('/').to_owned(),
                Some(r) => s = format!("{s}/{r}"),
                None => s = format!("{s}/{}", a.file_name().unwrap().to_string_lossy()),
            }
        }
        s
    };
    // Parents first (sorted paths), so that each parent is absolute by the
    // time its children are resolved.
    for p in paths {
        let parent = p.parent().unwrap_or(Path::new(""));
        let base = lower_path(&out, parent);
        if let Some(e) = out.get_mut(&p) {
            let r = e.redirect.take().unwrap();
            e.redirect = Some(format!("{base}/{r}"));
        }
    }
    // A redirect to where the lower content would be looked up anyway
    // changes nothing (the kernel leaves one behind when a rename fails
    // after it was set): drop it.
    let noop: Vec<PathBuf> = out
        .iter()
        .filter(|(p, e)| {
            let parent = p.parent().unwrap_or(Path::new(""));
            let own = p.file_name().map(|n| n.to_string_lossy().into_owned());
            e.redirect.is_some()
                && own.is_some_and(|n| {
                    e.redirect.as_deref() == Some(&format!("{}/{n}", lower_path(&out, parent)))
                })
        })
        .map(|(p, _)| p.clone())
        .collect();
    for p in noop {
        if let Some(e) = out.get_mut(&p) {
            e.redirect = None;
        }
    }
    out
}

fn describe(e: &UpperEntry) -> String {
    match e.kind {
        UpperKind::Whiteout => format!("whiteout [{}]", e.forms.join(", ")),
        UpperKind::Plain(k) => {
            let mut s = format!("{k:?} {:04o} {}:{}", e.perm, e.uid, e.gid);
            if e.opaque {
                s += " opaque";
            }
            s
        }
    }
}

/// Differences between two normalised upper dirs. `since`: when the
/// scripts started (mtimes after it are "recent" and equal to each other).
///
/// `opaque_matters(path)`: whether the opaque flag of a directory at `path`
/// can change anything, i.e. whether the merged lower layers show a
/// directory there. Elsewhere a difference in the flag is not reported: the kernel
/// sets it on directories it does not need to (a directory created in the
/// upper and renamed inside a merged directory becomes opaque, even by a
/// rename that then fails), and other implementations set it on every new
/// directory; with nothing below, the merged view is the same either way.
pub fn upper_diff(
    a_name: &str,
    a: &UpperWalk,
    b_name: &str,
    b: &UpperWalk,
    since: SystemTime,
    opaque_matters: &dyn Fn(&Path) -> bool,
) -> Vec<String> {
    let mut out = Vec::new();
    // One known, documented difference (the reference is `a`): kernel
    // overlayfs copies up per *name*, so a write through a lower name of a
    // hard-linked file (index=on) links that very name into its upper.
    // FUSE passes only the inode to open/setattr, so strata cannot tell
    // which name was used and keeps serving the other lower names from its
    // index: same merged view, before and after a remount, but those names
    // are missing from its upper. Tolerated: a regular file only in `a`
    // that is one name of an indexed hard link there: its inode has a link
    // outside the upper dir (the index entry) or a name `b` has too.
    // For the same reason, which name strata copies up first may differ
    // from the kernel's: the same tolerance applies to `b`'s side.
    let index_names_of = |x: &UpperWalk, y: &UpperWalk| -> BTreeSet<PathBuf> {
        x.iter()
            .filter(|(p, e)| {
                let names = x.values().filter(|f| f.ino == e.ino).count() as u64;
                !y.contains_key(*p)
                    && matches!(e.kind, UpperKind::Plain(Kind::File))
                    && (e.nlink > names
                        || x.iter()
                            .any(|(q, f)| q != *p && f.ino == e.ino && y.contains_key(q)))
            })
            .map(|(p, _)| p.clone())
            .collect()
    };
    let mut index_names: BTreeSet<PathBuf> = index_names_of(a, b)
        .into_iter()
        .chain(index_names_of(b, a))
        .collect();
    // ... and the kernel copies up the parent directories of the name it
    // links: a directory only in one upper, with no marks of its own, that
    // holds nothing but such names (or such directories) is tolerated too.
    for (x, y) in [(a, b), (b, a)] {
        let mut dirs: Vec<&PathBuf> = x
            .iter()
            .filter(|(p, e)| {
                !y.contains_key(*p)
                    && matches!(e.kind, UpperKind::Plain(Kind::Dir))
                    && !e.opaque
                    && e.redirect.is_none()
            })
            .map(|(p, _)| p)
            .collect();
        dirs.sort_by_key(|p| std::cmp::Reverse(p.components().count())); // deepest first
        for d in dirs {
            let children_ok = x
                .keys()
                .filter(|p| p.parent() == Some(d.as_path()))
                .all(|p| index_names.contains(p));
            let has_children = x.keys().any(|p| p.parent() == Some(d.as_path()));
            if has_children && children_ok {
                index_names.insert(d.clone());
            }
        }
    }
    for (p, e) in a
        .iter()
        .filter(|(p, _)| !b.contains_key(*p) && !index_names.contains(*p))
    {
        out.push(format!(
            "upper {}: only in {a_name}'s upper ({})",
            show(p),
            describe(e)
        ));
    }
    for (p, e) in b
        .iter()
        .filter(|(p, _)| !a.contains_key(*p) && !index_names.contains(*p))
    {
        out.push(format!(
            "upper {}: only in {b_name}'s upper ({})",
            show(p),
            describe(e)
        ));
    }
    for (p, ea) in a {
        let Some(eb) = b.get(p) else { continue };
        let mut diff = |what: &str, va: String, vb: String| {
            if va != vb {
                out.push(format!(
                    "upper {}: {what}: {a_name}={va} {b_name}={vb}",
                    show(p)
                ));
            }
        };
        diff(
            "errors",
            format!("{:?}", ea.errors),
            format!("{:?}", eb.errors),
        );
        if ea.kind != eb.kind {
            diff("type", describe(ea), describe(eb));
            continue;
        }
        let UpperKind::Plain(kind) = ea.kind else {
            continue; // whiteouts: nothing else matters
        };
        diff(
            "mode",
            format!("{:04o}", ea.perm),
            format!("{:04o}", eb.perm),
        );
        diff(
            "owner",
            format!("{}:{}", ea.uid, ea.gid),
            format!("{}:{}", eb.uid, eb.gid),
        );
        diff(
            "xattrs",
            format!("{:?}", ea.xattrs),
            format!("{:?}", eb.xattrs),
        );
        if kind == Kind::Dir {
            // The forms may differ legitimately; only the flag counts.
            if ea.opaque != eb.opaque && opaque_matters(p) {
                diff(
                    "opaque",
                    format!("{} {:?}", ea.opaque, ea.forms),
                    format!("{} {:?}", eb.opaque, eb.forms),
                );
            }
            diff(
                "redirect",
                format!("{:?}", ea.redirect),
                format!("{:?}", eb.redirect),
            );
            continue;
        }
        diff("size", ea.size.to_string(), eb.size.to_string());
        // st_nlink is not compared: it counts links outside the upper dir
        // too (an index=on work dir holds one per indexed file); which
        // upper names share an inode is compared below.
        diff(
            "content",
            ea.content.map_or("-".into(), |h| format!("fnv:{h:016x}")),
            eb.content.map_or("-".into(), |h| format!("fnv:{h:016x}")),
        );
        diff(
            "symlink",
            format!("{:?}", ea.symlink),
            format!("{:?}", eb.symlink),
        );
        diff("rdev", format!("{:?}", ea.rdev), format!("{:?}", eb.rdev));
        diff(
            "mtime",
            Mtime::of(ea.mtime.0, ea.mtime.1, since).to_string(),
            Mtime::of(eb.mtime.0, eb.mtime.1, since).to_string(),
        );
    }
    // Hard links inside the upper (whiteouts share an inode on the kernel's
    // side: left out).
    let classes = |w: &UpperWalk| -> BTreeSet<Vec<PathBuf>> {
        let mut by: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
        for (p, e) in w {
            if matches!(e.kind, UpperKind::Plain(k) if k != Kind::Dir)
                && e.errors.is_empty()
                && !index_names.contains(p)
            {
                by.entry(e.ino).or_default().push(p.clone());
            }
        }
        by.into_values().filter(|v| v.len() > 1).collect()
    };
    let fmt = |c: &Vec<PathBuf>| c.iter().map(|p| show(p)).collect::<Vec<_>>().join(" = ");
    let (ca, cb) = (classes(a), classes(b));
    for c in ca.difference(&cb) {
        out.push(format!(
            "upper: hard links in {a_name}'s upper only: {}",
            fmt(c)
        ));
    }
    for c in cb.difference(&ca) {
        out.push(format!(
            "upper: hard links in {b_name}'s upper only: {}",
            fmt(c)
        ));
    }
    out
}

/// One line per entry, for traces and reports.
pub fn upper_listing(w: &UpperWalk) -> Vec<String> {
    w.iter()
        .map(|(p, e)| {
            let mut s = format!("{} {}", show(p), describe(e));
            if matches!(e.kind, UpperKind::Plain(k) if k != Kind::Dir) {
                s += &format!(
                    " size {} nlink {} mtime {}.{:09}",
                    e.size, e.nlink, e.mtime.0, e.mtime.1
                );
            }
            if let Some(r) = &e.redirect {
                s += &format!(" redirect {r}");
            }
            if !e.forms.is_empty() && e.kind != UpperKind::Whiteout {
                s += &format!(" {:?}", e.forms);
            }
            if !e.xattrs.is_empty() {
                s += &format!(" xattrs {:?}", e.xattrs);
            }
            s
        })
        .collect()
}

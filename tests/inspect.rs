//! `strata inspect`, offline and through a live mount.
//!
//! - Offline, on the fixture in both forms: every entry of `-R` (text and
//!   `--json`) against facts this file derives on its own from the layer
//!   directories with plain `std::fs` (which layer holds each name, which
//!   layers a directory merges, whiteouts in both formats, opaque
//!   directories), and against walks of a strata mount and a kernel
//!   overlay mount of the same layers: every merged entry exactly once.
//! - Live, on a writable mount: after a chmod (copy-up), a rename of a lower
//!   directory (redirect), an rm (whiteout) and, with `metacopy=on`, a chmod
//!   (metadata-only copy-up), the virtual xattr `user.strata.layer` (read
//!   with getfattr and with a size-0 probe) and `strata inspect` say so;
//!   the xattr is not listed and cannot be set or removed; the whole `-R`
//!   through the mount equals the offline `-R` of the same layers.
//! - Names that are not UTF-8, and bad input (one-line errors, no panic).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CString, OsStr};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

const CMD_TIMEOUT: Duration = Duration::from_secs(60);
const XATTR: &str = "user.strata.layer";

// ================================================================= helpers

fn inspect(args: &[&OsStr]) -> CmdOutput {
    let mut cmd = Command::new(strata_bin());
    cmd.arg("inspect").args(args);
    run_with_timeout(&mut cmd, CMD_TIMEOUT)
}

fn inspect_ok(args: &[&OsStr]) -> String {
    let o = inspect(args);
    assert!(o.success() && o.stderr.is_empty(), "{o}");
    o.stdout
}

fn layers_arg(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.to_str().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join(":")
}

/// A small JSON reader of its own (the tool's output is checked with a
/// parser it does not share).
#[derive(Clone, Debug, PartialEq)]
enum J {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<J>),
    Obj(BTreeMap<String, J>),
}

impl J {
    fn parse(s: &str) -> J {
        let mut chars: Vec<char> = s.chars().collect();
        chars.push('\0');
        let mut i = 0;
        let v = J::value(&chars, &mut i);
        J::skip(&chars, &mut i);
        assert_eq!(chars[i], '\0', "trailing text in {s}");
        v
    }

    fn skip(c: &[char], i: &mut usize) {
        while c[*i].is_whitespace() {
            *i += 1;
        }
    }

    fn value(c: &[char], i: &mut usize) -> J {
        J::skip(c, i);
        match c[*i] {
            '{' => {
                *i += 1;
                let mut m = BTreeMap::new();
                J::skip(c, i);
                if c[*i] == '}' {
                    *i += 1;
                    return J::Obj(m);
                }
                loop {
                    J::skip(c, i);
                    let J::Str(k) = J::value(c, i) else {
                        panic!("object key is not a string")
                    };
                    J::skip(c, i);
                    assert_eq!(c[*i], ':');
                    *i += 1;
                    let v = J::value(c, i);
                    assert!(m.insert(k.clone(), v).is_none(), "duplicate key {k}");
                    J::skip(c, i);
                    *i += 1;
                    match c[*i - 1] {
                        ',' => continue,
                        '}' => return J::Obj(m),
                        x => panic!("unexpected {x:?} in an object"),
                    }
                }
            }
            '[' => {
                *i += 1;
                let mut v = Vec::new();
                J::skip(c, i);
                if c[*i] == ']' {
                    *i += 1;
                    return J::Arr(v);
                }
                loop {
                    v.push(J::value(c, i));
                    J::skip(c, i);
                    *i += 1;
                    match c[*i - 1] {
                        ',' => continue,
                        ']' => return J::Arr(v),
                        x => panic!("unexpected {x:?} in an array"),
                    }
                }
            }
            '"' => {
                *i += 1;
                let mut s = String::new();
                loop {
                    let ch = c[*i];
                    *i += 1;
                    match ch {
                        '"' => return J::Str(s),
                        '\\' => {
                            let e = c[*i];
                            *i += 1;
                            s.push(match e {
                                'n' => '\n',
                                't' => '\t',
                                'r' => '\r',
                                'b' => '\u{8}',
                                'f' => '\u{c}',
                                'u' => {
                                    let h: String = c[*i..*i + 4].iter().collect();
                                    *i += 4;
                                    char::from_u32(u32::from_str_radix(&h, 16).unwrap()).unwrap()
                                }
                                other => other,
                            });
                        }
                        '\0' => panic!("unterminated string"),
                        ch => {
                            assert!(ch as u32 >= 0x20, "raw control character in a string");
                            s.push(ch)
                        }
                    }
                }
            }
            't' => {
                *i += 4;
                J::Bool(true)
            }
            'f' => {
                *i += 5;
                J::Bool(false)
            }
            'n' => {
                *i += 4;
                J::Null
            }
            _ => {
                let start = *i;
                while "+-.eE0123456789".contains(c[*i]) {
                    *i += 1;
                }
                let n: String = c[start..*i].iter().collect();
                J::Num(n.parse().unwrap_or_else(|_| panic!("bad number {n:?}")))
            }
        }
    }

    fn get(&self, k: &str) -> Option<&J> {
        match self {
            J::Obj(m) => m.get(k),
            _ => None,
        }
    }

    fn s(&self, k: &str) -> String {
        match self.get(k) {
            Some(J::Str(s)) => s.clone(),
            other => panic!("{k}: not a string but {other:?} in {self:?}"),
        }
    }

    fn n(&self, k: &str) -> u64 {
        match self.get(k) {
            Some(J::Num(n)) => *n as u64,
            other => panic!("{k}: not a number but {other:?}"),
        }
    }

    fn arr(&self, k: &str) -> Vec<J> {
        match self.get(k) {
            Some(J::Arr(v)) => v.clone(),
            None => Vec::new(),
            other => panic!("{k}: not an array but {other:?}"),
        }
    }

    /// The `layer` labels of an array of places (or of plain labels).
    fn labels(&self, k: &str) -> Vec<String> {
        self.arr(k)
            .iter()
            .map(|p| match p {
                J::Str(s) => s.clone(),
                p => p.s("layer"),
            })
            .collect()
    }

    fn strs(&self, k: &str) -> Vec<String> {
        self.arr(k)
            .iter()
            .map(|v| match v {
                J::Str(s) => s.clone(),
                v => panic!("not a string: {v:?}"),
            })
            .collect()
    }
}

fn json_lines(out: &str) -> Vec<J> {
    out.lines().map(J::parse).collect()
}

// ============================================= the model: plain std::fs

/// What one layer holds under one name.
enum Held {
    Absent,
    Whiteout,
    /// The object, and whether a `.wh.NAME` lies beside it.
    Object(fs::Metadata, bool),
}

fn held(dir: &Path, name: &OsStr) -> Held {
    let wh = {
        let mut n = b".wh.".to_vec();
        n.extend_from_slice(name.as_bytes());
        n.len() <= 255 && fs::symlink_metadata(dir.join(OsStr::from_bytes(&n))).is_ok()
    };
    match fs::symlink_metadata(dir.join(name)) {
        Ok(md) if md.file_type().is_char_device() && md.rdev() == 0 => Held::Whiteout,
        Ok(md) => Held::Object(md, wh),
        Err(_) if wh => Held::Whiteout,
        Err(_) => Held::Absent,
    }
}

/// Whether directory `dir` of a layer is marked opaque in either format.
fn marked_opaque(dir: &Path) -> bool {
    fs::symlink_metadata(dir.join(".wh..wh..opq")).is_ok()
        || ["trusted.overlay.opaque", "user.overlay.opaque"]
            .iter()
            .any(|x| lgetxattr(dir, x).is_ok_and(|v| v == b"y"))
}

/// What the test expects of one merged path.
#[derive(Clone, Debug)]
struct Want {
    whiteout: bool,
    /// Index into the layers (top first): the one holding it.
    layer: usize,
    merged: Vec<usize>,
    shadows: Vec<usize>,
    opaque: bool,
    md: Option<fs::Metadata>,
}

/// A merged directory's layers: (index, the directory in that layer).
type LayerDirs = Vec<(usize, PathBuf)>;

/// The merged tree of `layers` (top first, no upper), keyed by merged
/// path (`/` for the root), derived from the directories themselves.
fn model(layers: &[PathBuf]) -> BTreeMap<Vec<u8>, Want> {
    let mut out = BTreeMap::new();
    out.insert(
        b"/".to_vec(),
        Want {
            whiteout: false,
            layer: 0,
            merged: (0..layers.len()).collect(),
            shadows: vec![],
            opaque: false,
            md: Some(fs::symlink_metadata(&layers[0]).unwrap()),
        },
    );
    let mut todo: Vec<(Vec<u8>, LayerDirs)> =
        vec![(b"/".to_vec(), layers.iter().cloned().enumerate().collect())];
    while let Some((path, dirs)) = todo.pop() {
        let mut names = BTreeSet::new();
        for (_, d) in &dirs {
            for e in fs::read_dir(d).unwrap() {
                let n = e.unwrap().file_name().as_bytes().to_vec();
                match n.strip_prefix(b".wh.") {
                    Some(b".wh..opq") => {}
                    Some(target) => {
                        names.insert(target.to_vec());
                    }
                    None => {
                        names.insert(n);
                    }
                }
            }
        }
        for name in names {
            let name_os = OsStr::from_bytes(&name);
            let mut child = path.clone();
            if child != b"/" {
                child.push(b'/');
            }
            child.extend_from_slice(&name);
            let seen: Vec<(usize, PathBuf, Held)> = dirs
                .iter()
                .map(|(i, d)| (*i, d.join(name_os), held(d, name_os)))
                .collect();
            let Some(first) = seen.iter().position(|s| !matches!(s.2, Held::Absent)) else {
                continue;
            };
            let below = |merged: &[usize]| -> Vec<usize> {
                seen[first + 1..]
                    .iter()
                    .take_while(|s| !matches!(s.2, Held::Whiteout))
                    .filter(|s| matches!(s.2, Held::Object(..)) && !merged.contains(&s.0))
                    .map(|s| s.0)
                    .collect()
            };
            let want = match &seen[first].2 {
                Held::Absent => unreachable!(),
                Held::Whiteout => Want {
                    whiteout: true,
                    layer: seen[first].0,
                    merged: vec![],
                    shadows: below(&[]),
                    opaque: false,
                    md: None,
                },
                Held::Object(md, _) if !md.is_dir() => Want {
                    whiteout: false,
                    layer: seen[first].0,
                    merged: vec![],
                    shadows: below(&[]),
                    opaque: false,
                    md: Some(md.clone()),
                },
                Held::Object(md, _) => {
                    // Merge down to an opaque one, a whiteout or a non-directory.
                    let mut merged = Vec::new();
                    let mut opaque = false;
                    for (i, p, h) in &seen[first..] {
                        match h {
                            Held::Absent => continue,
                            Held::Object(m, wh) if m.is_dir() => {
                                merged.push(*i);
                                if *wh || marked_opaque(p) {
                                    opaque = true;
                                    break;
                                }
                            }
                            _ => break,
                        }
                    }
                    let merged_dirs = seen
                        .iter()
                        .filter(|s| merged.contains(&s.0))
                        .map(|s| (s.0, s.1.clone()))
                        .collect();
                    todo.push((child.clone(), merged_dirs));
                    Want {
                        whiteout: false,
                        layer: seen[first].0,
                        shadows: below(&merged),
                        merged,
                        opaque,
                        md: Some(md.clone()),
                    }
                }
            };
            out.insert(child, want);
        }
    }
    out
}

fn label(i: usize) -> String {
    (i + 1).to_string()
}

fn labels(v: &[usize]) -> Vec<String> {
    v.iter().map(|&i| label(i)).collect()
}

fn kind_name(md: &fs::Metadata) -> &'static str {
    let t = md.file_type();
    match () {
        _ if t.is_dir() => "dir",
        _ if t.is_symlink() => "symlink",
        _ if t.is_char_device() => "char",
        _ if t.is_block_device() => "block",
        _ if t.is_fifo() => "fifo",
        _ if t.is_socket() => "socket",
        _ => "file",
    }
}

fn mode_text(md: &fs::Metadata) -> String {
    let m = md.mode();
    let t = match kind_name(md) {
        "dir" => 'd',
        "symlink" => 'l',
        "char" => 'c',
        "block" => 'b',
        "fifo" => 'p',
        "socket" => 's',
        _ => '-',
    };
    let mut s = String::from(t);
    for (shift, special, set) in [(6, 0o4000, 's'), (3, 0o2000, 's'), (0, 0o1000, 't')] {
        let bits = (m >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(match (bits & 1 != 0, m & special != 0) {
            (true, true) => set,
            (false, true) => set.to_ascii_uppercase(),
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// `YYYY-MM-DD HH:MM:SS` in UTC for each time, from date(1).
fn utc_dates(secs: &[i64]) -> Vec<String> {
    let dir = tempdir();
    let input = dir.path().join("times");
    let text: String = secs.iter().map(|s| format!("@{s}\n")).collect();
    fs::write(&input, text).unwrap();
    let o = run_with_timeout(
        Command::new("date")
            .arg("-u")
            .arg("-f")
            .arg(&input)
            .arg("+%Y-%m-%d %H:%M:%S"),
        CMD_TIMEOUT,
    );
    assert!(o.success(), "{o}");
    o.stdout.lines().map(str::to_owned).collect()
}

fn nlink_shown(w: &Want) -> u64 {
    let md = w.md.as_ref().unwrap();
    if md.is_dir() && w.merged.len() > 1 {
        1
    } else {
        md.nlink()
    }
}

/// The two text lines the tool must print for `path`, built from the
/// model (`dates`: the mtime text of each path with an object).
fn want_text(
    path: &[u8],
    w: &Want,
    layers: &[PathBuf],
    dates: &BTreeMap<Vec<u8>, String>,
) -> (String, String) {
    let shown = String::from_utf8(path.to_vec()).unwrap();
    let dir = |i: usize| layers[i].to_str().unwrap().to_owned();
    if w.whiteout {
        let hides = match w.shadows.is_empty() {
            true => "hides nothing".to_owned(),
            false => format!("hides {}", labels(&w.shadows).join(" ")),
        };
        return (
            format!(
                "w--------- {:>3} {:<5} {:<5} {:>10} {:<29} {shown}",
                "-", "-", "-", "-", "-"
            ),
            format!(
                "    whiteout in {} {}; {hides}",
                label(w.layer),
                dir(w.layer)
            ),
        );
    }
    let md = w.md.as_ref().unwrap();
    let size = match kind_name(md) {
        "char" | "block" => format!("{}, {}", libc::major(md.rdev()), libc::minor(md.rdev())),
        _ => md.size().to_string(),
    };
    let mut ls = format!(
        "{} {:>3} {:<5} {:<5} {:>10} {}.{:09} {shown}",
        mode_text(md),
        nlink_shown(w),
        md.uid(),
        md.gid(),
        size,
        dates[path],
        md.mtime_nsec()
    );
    if md.file_type().is_symlink() {
        let t = fs::read_link(layers[w.layer].join(OsStr::from_bytes(&path[1..]))).unwrap();
        ls += &format!(" -> {}", t.display());
    }
    let mut facts = vec![format!("layer {} {}", label(w.layer), dir(w.layer))];
    if w.merged.len() > 1 {
        facts.push(format!("merged {}", labels(&w.merged).join(" ")));
    }
    if !w.shadows.is_empty() {
        facts.push(format!("shadows {}", labels(&w.shadows).join(" ")));
    }
    if w.opaque {
        facts.push("opaque".into());
    }
    (ls, format!("    {}", facts.join("; ")))
}

/// Checks one `--json` entry against the model.
fn check_json(e: &J, w: &Want, layers: &[PathBuf], problems: &mut Vec<String>) {
    let path = e.s("path");
    let mut fail = |what: &str, got: String, want: String| {
        if got != want {
            problems.push(format!("{path}: {what} {got:?}, want {want:?}"));
        }
    };
    fail("layer", e.s("layer"), label(w.layer));
    fail(
        "layer_dir",
        e.s("layer_dir"),
        layers[w.layer].to_str().unwrap().into(),
    );
    fail("layer_path", e.s("layer_path"), path.clone());
    fail(
        "shadows",
        format!("{:?}", e.labels("shadows")),
        format!("{:?}", labels(&w.shadows)),
    );
    for s in e.arr("shadows") {
        let i: usize = s.s("layer").parse::<usize>().unwrap() - 1;
        fail("shadow dir", s.s("dir"), layers[i].to_str().unwrap().into());
    }
    let mut markers = vec![];
    if w.whiteout {
        markers.push("whiteout".to_owned());
    }
    if w.opaque {
        markers.push("opaque".to_owned());
    }
    fail(
        "markers",
        format!("{:?}", e.strs("markers")),
        format!("{markers:?}"),
    );
    let Some(md) = &w.md else {
        fail("type", e.s("type"), "whiteout".into());
        for k in ["mode", "nlink", "uid", "size", "mtime", "merged"] {
            fail(k, e.get(k).is_some().to_string(), "false".into());
        }
        return;
    };
    fail("type", e.s("type"), kind_name(md).into());
    fail("mode", e.s("mode"), mode_text(md));
    fail("perm", e.s("perm"), format!("{:04o}", md.mode() & 0o7777));
    fail(
        "nlink",
        e.n("nlink").to_string(),
        nlink_shown(w).to_string(),
    );
    fail("uid", e.n("uid").to_string(), md.uid().to_string());
    fail("gid", e.n("gid").to_string(), md.gid().to_string());
    fail("size", e.n("size").to_string(), md.size().to_string());
    fail("mtime", e.n("mtime").to_string(), md.mtime().to_string());
    fail(
        "mtime_nsec",
        e.n("mtime_nsec").to_string(),
        md.mtime_nsec().to_string(),
    );
    if md.is_dir() {
        fail(
            "merged",
            format!("{:?}", e.labels("merged")),
            format!("{:?}", labels(&w.merged)),
        );
    } else {
        fail(
            "has merged",
            e.get("merged").is_some().to_string(),
            "false".into(),
        );
    }
    if md.file_type().is_symlink() {
        let t = fs::read_link(layers[w.layer].join(&path[1..])).unwrap();
        fail("target", e.s("target"), t.to_str().unwrap().into());
    }
    if md.file_type().is_char_device() {
        fail(
            "rdev",
            format!("{:?}", e.arr("rdev")),
            format!(
                "{:?}",
                [
                    J::Num(libc::major(md.rdev()) as f64),
                    J::Num(libc::minor(md.rdev()) as f64)
                ]
            ),
        );
    }
}

// ============================================================ offline mode

#[test]
fn offline_output_matches_the_layers() {
    let prepared = prepare_fixture();
    for form in Form::ALL {
        let layers = layer_dirs(prepared.path(), form);
        let want = model(&layers);
        // Sanity of the model itself, against what the fixture documents.
        let w = |p: &str| &want[p.as_bytes()];
        assert!(w("/var/log/old.log").whiteout && w("/var/log/old.log").shadows == [2]);
        assert!(w("/etc/ssl").opaque && w("/etc/ssl").layer == 1);
        assert!(w("/opaque-me").opaque && w("/merged").merged == [0, 1, 2]);
        assert!(w("/never-existed").whiteout && w("/never-existed").shadows.is_empty());

        let l = layers_arg(&layers);
        let args: [&OsStr; 5] = [
            "--layers".as_ref(),
            l.as_ref(),
            "-R".as_ref(),
            "--json".as_ref(),
            "/".as_ref(),
        ];
        let entries = json_lines(&inspect_ok(&args));
        let mut problems = Vec::new();
        let mut seen = BTreeSet::new();
        for e in &entries {
            let path = e.s("path").into_bytes();
            if !seen.insert(path.clone()) {
                problems.push(format!("{}: listed twice", e.s("path")));
            }
            match want.get(&path) {
                Some(w) => check_json(e, w, &layers, &mut problems),
                None => problems.push(format!("{}: not in the model", e.s("path"))),
            }
        }
        for p in want.keys() {
            if !seen.contains(p) {
                problems.push(format!("{}: missing", String::from_utf8_lossy(p)));
            }
        }
        // Entries come in walk order: each directory before what it holds.
        let order: Vec<Vec<u8>> = entries.iter().map(|e| e.s("path").into_bytes()).collect();
        let mut sorted = order.clone();
        sorted.sort_by(|a, b| {
            let split = |p: &[u8]| -> Vec<Vec<u8>> {
                p.split(|&b| b == b'/').map(<[u8]>::to_vec).collect()
            };
            split(a).cmp(&split(b))
        });
        if order != sorted {
            problems.push("entries are not in tree order".into());
        }
        assert_no_problems(&format!("inspect -R --json ({form:?})"), &problems);

        // The same walk as text, line by line.
        let with_objects: Vec<(&Vec<u8>, &Want)> =
            want.iter().filter(|(_, w)| !w.whiteout).collect();
        let secs: Vec<i64> = with_objects
            .iter()
            .map(|(_, w)| w.md.as_ref().unwrap().mtime())
            .collect();
        let dates: BTreeMap<Vec<u8>, String> = with_objects
            .iter()
            .map(|(p, _)| (*p).clone())
            .zip(utc_dates(&secs))
            .collect();
        let text_args: [&OsStr; 4] = ["--layers".as_ref(), l.as_ref(), "-R".as_ref(), "/".as_ref()];
        let text = inspect_ok(&text_args);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2 * order.len(), "two lines per entry");
        let mut problems = Vec::new();
        for (pair, path) in lines.chunks(2).zip(&order) {
            let (ls, facts) = want_text(path, &want[path], &layers, &dates);
            for (got, want) in [(pair[0], ls), (pair[1], facts)] {
                if got != want {
                    problems.push(format!("got  {got}\n  want {want}"));
                }
            }
        }
        assert_no_problems(&format!("inspect -R text ({form:?})"), &problems);

        // Explicit paths, deleted ones included; `-R` below a path.
        let args: [&OsStr; 7] = [
            "--layers".as_ref(),
            l.as_ref(),
            "--json".as_ref(),
            "etc/hostname".as_ref(),
            "/var/log/old.log".as_ref(),
            "/usr/bin/[".as_ref(),
            "/".as_ref(),
        ];
        let got = json_lines(&inspect_ok(&args));
        let paths: Vec<String> = got.iter().map(|e| e.s("path")).collect();
        assert_eq!(
            paths,
            ["/etc/hostname", "/var/log/old.log", "/usr/bin/[", "/"]
        );
        assert_eq!(got[0].labels("shadows"), ["3"]);
        assert_eq!(got[1].strs("markers"), ["whiteout"]);
        assert_eq!(got[2].s("layer"), "2");
        let root_deleted: Vec<String> = got[3].arr("deleted").iter().map(|d| d.s("name")).collect();
        assert_eq!(root_deleted, ["never-existed"]);
        let args: [&OsStr; 5] = [
            "--layers".as_ref(),
            l.as_ref(),
            "-R".as_ref(),
            "--json".as_ref(),
            "/etc".as_ref(),
        ];
        let etc: Vec<String> = json_lines(&inspect_ok(&args))
            .iter()
            .map(|e| e.s("path"))
            .collect();
        let want_etc: Vec<String> = want
            .keys()
            .map(|p| String::from_utf8(p.clone()).unwrap())
            .filter(|p| p == "/etc" || p.starts_with("/etc/"))
            .collect();
        assert_eq!(etc.len(), want_etc.len());
        assert_eq!(
            etc.iter().collect::<BTreeSet<_>>(),
            want_etc.iter().collect()
        );
    }
}

/// The merged paths of a mount walk, `/`-rooted.
fn walked(root: &Path) -> BTreeSet<Vec<u8>> {
    walk(root)
        .keys()
        .map(|p| {
            let mut v = b"/".to_vec();
            v.extend_from_slice(p.as_os_str().as_bytes());
            v
        })
        .collect()
}

#[test]
fn recursive_covers_every_merged_entry_once() {
    let prepared = prepare_fixture();
    for form in Form::ALL {
        let layers = layer_dirs(prepared.path(), form);
        let l = layers_arg(&layers);
        let args: [&OsStr; 4] = [
            "--layers".as_ref(),
            l.as_ref(),
            "-R".as_ref(),
            "--json".as_ref(),
        ];
        let entries = json_lines(&inspect_ok(&args));
        let mut listed = BTreeSet::new();
        for e in entries.iter().filter(|e| e.s("type") != "whiteout") {
            assert!(
                listed.insert(e.s("path").into_bytes()),
                "{} twice",
                e.s("path")
            );
        }
        let strata = StrataMount::mount(&MountSpec::fixture(prepared.path(), form));
        let through_strata = walked(strata.path());
        strata.unmount().unwrap();
        let show = |s: &BTreeSet<Vec<u8>>| -> Vec<String> {
            s.iter()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect()
        };
        assert_eq!(show(&listed), show(&through_strata), "{form:?}: vs strata");
        if form == Form::Kernel {
            let kernel = KernelOverlay::mount(&MountSpec::fixture(prepared.path(), form));
            let through_kernel = walked(kernel.path());
            kernel.unmount().unwrap();
            assert_eq!(show(&listed), show(&through_kernel), "vs kernel overlayfs");
        }
        // No whiteout line names something the mount shows.
        for e in entries.iter().filter(|e| e.s("type") == "whiteout") {
            assert!(!listed.contains(e.s("path").as_bytes()), "{}", e.s("path"));
        }
    }
}

#[test]
fn names_that_are_not_utf8() {
    let dir = tempdir();
    let (top, bottom) = (dir.path().join("top"), dir.path().join("bottom"));
    fs::create_dir_all(&top).unwrap();
    fs::create_dir_all(&bottom).unwrap();
    let bad = OsStr::from_bytes(b"caf\xe9\n");
    fs::write(top.join(bad), b"x").unwrap();
    fs::write(bottom.join(bad), b"y").unwrap();
    fs::write(bottom.join(OsStr::from_bytes(b"gone\xff")), b"z").unwrap();
    fs::write(top.join(OsStr::from_bytes(b".wh.gone\xff")), b"").unwrap();
    let l = format!("{}:{}", top.display(), bottom.display());
    let args: [&OsStr; 4] = [
        "--layers".as_ref(),
        l.as_ref(),
        "-R".as_ref(),
        "--json".as_ref(),
    ];
    let out = inspect_ok(&args);
    let e = json_lines(&out);
    assert_eq!(e.len(), 3, "{out}");
    assert_eq!(e[1].s("path"), "/caf\u{fffd}\n");
    assert_eq!(e[1].s("path_bytes"), "2f636166e90a");
    assert_eq!(e[1].labels("shadows"), ["2"]);
    assert_eq!(e[1].arr("shadows")[0].s("path_bytes"), "2f636166e90a");
    assert_eq!(e[2].s("path_bytes"), "2f676f6e65ff");
    assert_eq!(e[2].strs("markers"), ["whiteout"]);
    let deleted = &e[0].arr("deleted")[0];
    assert_eq!(deleted.s("name_bytes"), "676f6e65ff");
    let args: [&OsStr; 3] = ["--layers".as_ref(), l.as_ref(), "-R".as_ref()];
    let text = inspect_ok(&args);
    assert!(text.contains(" /caf\\xe9\\n\n"), "{text}");
    assert!(text.contains(" /gone\\xff\n    whiteout in 1 "), "{text}");
}

#[test]
fn bad_input_gives_one_line_errors() {
    let prepared = prepare_fixture();
    let layers = layer_dirs(prepared.path(), Form::Oci);
    let l = layers_arg(&layers);
    let missing = format!("/nonexistent-strata-layer:{l}");
    let not_strata = tempdir();
    let file = not_strata.path().join("f");
    fs::write(&file, b"").unwrap();
    let nope = not_strata.path().join("nope");
    let cases: Vec<(Vec<&OsStr>, &str)> = vec![
        (
            vec!["--layers".as_ref(), missing.as_ref(), "/".as_ref()],
            "/nonexistent-strata-layer",
        ),
        (
            vec!["--layers".as_ref(), l.as_ref(), "/no/such/path".as_ref()],
            "/no/such/path: no such file or directory",
        ),
        (
            vec!["--layers".as_ref(), l.as_ref(), "/opt/gone/file1".as_ref()],
            "/opt/gone is deleted by a whiteout in layer 2",
        ),
        (
            vec!["--layers".as_ref(), l.as_ref(), "etc/hostname/x".as_ref()],
            "/etc/hostname is not a directory",
        ),
        (vec![file.as_os_str()], "not in a strata mount"),
        (vec![nope.as_os_str()], "no such file"),
        (vec!["--frobnicate".as_ref()], "unknown option"),
        (
            vec!["--upper".as_ref(), "/x".as_ref(), "/".as_ref()],
            "--upper needs --layers",
        ),
        (vec![], "no PATH"),
    ];
    for (args, want) in cases {
        let o = inspect(&args);
        assert!(!o.success() && o.status.is_some(), "{o}");
        assert_eq!(o.stderr.lines().count(), 1, "one line: {o}");
        assert!(o.stderr.starts_with("strata inspect: "), "{o}");
        assert!(o.stderr.contains(want), "want {want:?}: {o}");
        assert!(!o.stderr.contains("panicked"), "{o}");
        assert!(o.stdout.is_empty(), "{o}");
    }
    // A good path next to a bad one: the good one is printed, exit 1.
    let args: [&OsStr; 4] = [
        "--layers".as_ref(),
        l.as_ref(),
        "/etc".as_ref(),
        "/nope".as_ref(),
    ];
    let o = inspect(&args);
    assert!(!o.success() && o.stdout.lines().count() == 2, "{o}");
    assert_eq!(o.stderr.lines().count(), 1, "{o}");
    let help = inspect_ok(&["--help".as_ref()]);
    assert!(help.contains("--layers") && help.contains(XATTR), "{help}");
}

// =============================================================== live mode

fn getfattr(path: &Path) -> CmdOutput {
    run_with_timeout(
        Command::new("getfattr")
            .args(["-h", "-n", XATTR, "--only-values"])
            .arg(path),
        CMD_TIMEOUT,
    )
}

fn xattr_json(path: &Path) -> J {
    let o = getfattr(path);
    assert!(o.success(), "{o}");
    J::parse(&o.stdout)
}

/// getxattr with a NULL buffer: the value's size.
fn probe_size(path: &Path, name: &str) -> isize {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: NUL-terminated strings; a NULL buffer of size 0 only asks
    // for the size.
    unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) }
}

/// `strata inspect PATH` through the mount: (ls line, facts line).
fn live_text(path: &Path) -> (String, String) {
    let out = inspect_ok(&[path.as_os_str()]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    (lines[0].to_owned(), lines[1].to_owned())
}

#[test]
fn live_mount_reports_copy_up_redirect_and_whiteout() {
    let prepared = prepare_fixture();
    let layers = layer_dirs(prepared.path(), Form::Oci);
    let uw = UpperWork::new();
    let m = StrataMount::mount(&MountSpec::fixture(prepared.path(), Form::Oci).with_upper(&uw));
    let mnt = m.path().to_path_buf();
    let upper = uw.upper.to_str().unwrap().to_owned();

    // Before any change: the xattr tells the lower layer.
    let e = xattr_json(&mnt.join("etc/os-release"));
    assert_eq!((e.s("layer"), e.strs("markers")), ("3".into(), vec![]));

    fs::set_permissions(
        mnt.join("etc/os-release"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    fs::rename(mnt.join("merged"), mnt.join("moved")).unwrap();
    fs::remove_file(mnt.join("etc/group")).unwrap();

    // Copy-up.
    let e = xattr_json(&mnt.join("etc/os-release"));
    assert_eq!(e.s("path"), "/etc/os-release");
    assert_eq!(e.s("layer"), "upper");
    assert_eq!(e.s("layer_dir"), upper);
    assert_eq!(e.strs("markers"), ["copied-up"]);
    assert_eq!(e.labels("shadows"), ["3"]);
    assert_eq!(e.s("perm"), "0600");
    let (ls, facts) = live_text(&mnt.join("etc/os-release"));
    assert!(
        ls.starts_with("-rw------- ") && ls.ends_with("/etc/os-release"),
        "{ls}"
    );
    assert_eq!(
        facts,
        format!("    layer upper {upper}; shadows 3; copied-up")
    );

    // Redirect: the renamed directory keeps its lower content.
    let e = xattr_json(&mnt.join("moved"));
    assert_eq!(e.s("type"), "dir");
    assert_eq!(e.strs("markers"), ["copied-up", "redirected"]);
    assert_eq!(e.labels("merged"), ["upper", "1", "2", "3"]);
    let lower_paths: Vec<String> = e.arr("merged")[1..].iter().map(|p| p.s("path")).collect();
    assert_eq!(lower_paths, ["/merged"; 3]);
    let redirect = e.get("redirect").expect("a redirect");
    assert_eq!(redirect.s("layer"), "upper");
    assert!(["merged", "/merged"].contains(&redirect.s("from").as_str()));
    let (_, facts) = live_text(&mnt.join("moved"));
    assert!(
        facts.starts_with(&format!(
            "    layer upper {upper}; merged upper 1:/merged 2:/merged 3:/merged; copied-up; redirected from "
        )),
        "{facts}"
    );
    // Inside it: the lower file, found through the redirect.
    let e = xattr_json(&mnt.join("moved/b.txt"));
    assert_eq!(
        (e.s("layer"), e.s("layer_path")),
        ("1".into(), "/merged/b.txt".into())
    );

    // Whiteouts: the old name of the directory, and the removed file.
    for (name, hides) in [("merged", "1 2 3"), ("etc/group", "3")] {
        let p = mnt.join(name);
        assert!(fs::symlink_metadata(&p).is_err());
        let (ls, facts) = live_text(&p);
        assert!(ls.starts_with("w--------- "), "{ls}");
        assert_eq!(
            facts,
            format!("    whiteout in upper {upper}; hides {hides}")
        );
        let args: [&OsStr; 2] = ["--json".as_ref(), p.as_os_str()];
        let e = J::parse(&inspect_ok(&args));
        assert_eq!(e.strs("markers"), ["whiteout"]);
        assert_eq!(e.s("layer"), "upper");
    }
    let deleted = xattr_json(&mnt.join("etc")).arr("deleted");
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0].s("name"), "group");
    assert_eq!(deleted[0].labels("shadows"), ["3"]);

    // `strata inspect --json` prints exactly what getfattr reads.
    for p in ["etc/os-release", "moved", "", "usr/share/app"] {
        let path = mnt.join(p);
        let out = inspect_ok(&["--json".as_ref(), path.as_os_str()]);
        assert_eq!(out.trim_end(), getfattr(&mnt.join(p)).stdout, "{p}");
    }

    // A size-0 probe gives the value's size.
    let value = lgetxattr(&mnt.join("moved"), XATTR).unwrap();
    assert_eq!(probe_size(&mnt.join("moved"), XATTR), value.len() as isize);
    assert!(value.len() > 100);

    // Hidden from listxattr, read-only.
    let o = run_with_timeout(
        Command::new("getfattr")
            .args(["-h", "-d", "-m", "-"])
            .arg(mnt.join("etc/os-release")),
        CMD_TIMEOUT,
    );
    assert!(o.success(), "{o}");
    assert!(o.stdout.contains("user.fixture.layer"), "{o}");
    assert!(!o.stdout.contains("user.strata"), "{o}");
    assert!(
        !llistxattr(&mnt)
            .unwrap()
            .iter()
            .any(|n| n.starts_with("user.strata"))
    );
    for args in [vec!["-n", XATTR, "-v", "x"], vec!["-x", XATTR]] {
        let o = run_with_timeout(
            Command::new("setfattr")
                .args(&args)
                .arg(mnt.join("etc/hostname")),
            CMD_TIMEOUT,
        );
        assert!(
            !o.success() && o.stderr.contains("Operation not permitted"),
            "{o}"
        );
    }
    let e = lsetxattr(&mnt.join("etc/hostname"), XATTR, b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM));
    // The failed set copied nothing up.
    assert!(!uw.upper.join("etc/hostname").exists());

    // A symlink (the kernel keeps user.* reads of it from strata).
    assert_eq!(
        errno(&lgetxattr(&mnt.join("usr/bin/sh"), XATTR)),
        Some(libc::ENODATA)
    );
    let (ls, facts) = live_text(&mnt.join("usr/bin/sh"));
    assert!(ls.ends_with("/usr/bin/sh -> busybox"), "{ls}");
    assert_eq!(facts, format!("    layer 3 {}", layers[2].display()));

    // The whole tree through the mount equals the offline view of the
    // same layers.
    let args: [&OsStr; 3] = ["-R".as_ref(), "--json".as_ref(), mnt.as_os_str()];
    let live = inspect_ok(&args);
    let l = layers_arg(&layers);
    let args: [&OsStr; 6] = [
        "--layers".as_ref(),
        l.as_ref(),
        "--upper".as_ref(),
        upper.as_ref(),
        "-R".as_ref(),
        "--json".as_ref(),
    ];
    let offline = inspect_ok(&args);
    let (live, offline): (Vec<&str>, Vec<&str>) =
        (live.lines().collect(), offline.lines().collect());
    assert_eq!(live.len(), offline.len());
    for (a, b) in live.iter().zip(&offline) {
        assert_eq!(a, b, "live vs offline");
    }
    assert!(
        live.iter()
            .map(|l| J::parse(l))
            .any(|e| e.s("path") == "/merged" && e.s("type") == "whiteout")
    );
    m.unmount().unwrap();
}

#[test]
fn live_mount_reports_metacopy() {
    let prepared = prepare_fixture();
    let uw = UpperWork::new();
    let spec = MountSpec::fixture(prepared.path(), Form::Kernel)
        .with_upper(&uw)
        .with_option("metacopy=on");
    let m = StrataMount::mount(&spec);
    let big = m.path().join("usr/share/app/big.bin");
    fs::set_permissions(&big, fs::Permissions::from_mode(0o600)).unwrap();
    let e = xattr_json(&big);
    assert_eq!(e.s("layer"), "upper");
    assert_eq!(e.strs("markers"), ["copied-up", "metacopy"]);
    let data = e.get("metacopy").expect("where the data is");
    assert_eq!(data.s("layer"), "1");
    assert_eq!(data.s("path"), "/usr/share/app/big.bin");
    assert_eq!(e.n("size"), 307_213);
    let (_, facts) = live_text(&big);
    assert!(
        facts.ends_with("; copied-up; metacopy, data in 1"),
        "{facts}"
    );
    // Its data is written: no longer metadata-only.
    fs::OpenOptions::new().append(true).open(&big).unwrap();
    let e = xattr_json(&big);
    assert_eq!(e.strs("markers"), ["copied-up"]);
    assert!(e.get("metacopy").is_none());
    m.unmount().unwrap();
}

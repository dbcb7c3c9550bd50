//! Shell-level scripts for tests whose reference is another program's
//! behaviour: run one command line after another in a mount (as root, or
//! as another user), record what each printed and returned, and list a
//! tree as `ls -ln` would show it.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::run_with_timeout;

/// One path of a tree: type, mode, owner, size and link target, plus the
/// content of regular files.
pub fn listing(root: &Path) -> BTreeMap<String, String> {
    fn visit(root: &Path, rel: &Path, out: &mut BTreeMap<String, String>) {
        let full = root.join(rel);
        let md = fs::symlink_metadata(&full).unwrap();
        let ft = md.file_type();
        let mut line = format!(
            "{:o} {}:{} {}",
            md.mode(),
            md.uid(),
            md.gid(),
            if ft.is_dir() { 0 } else { md.size() }
        );
        if ft.is_symlink() {
            line += &format!(" -> {}", fs::read_link(&full).unwrap().display());
        } else if ft.is_file() {
            line += &format!(" {:?}", String::from_utf8_lossy(&fs::read(&full).unwrap()));
        }
        out.insert(format!("/{}", rel.display()), line);
        if ft.is_dir() {
            for e in fs::read_dir(&full).unwrap() {
                visit(root, &rel.join(e.unwrap().file_name()), out);
            }
        }
    }
    let mut out = BTreeMap::new();
    visit(root, Path::new(""), &mut out);
    out
}

/// What running `script` printed and returned, command by command: each
/// line of the script runs as `sh -c LINE` in the mount, as root, or as
/// `uid:gid` after a leading `as UID:GID`.
pub fn run_script(mnt: &Path, script: &[&str]) -> Vec<String> {
    script
        .iter()
        .map(|line| {
            let mut cmd = match line.strip_prefix("as ") {
                Some(rest) => {
                    let (ids, command) = rest.split_once(' ').unwrap();
                    let (uid, gid) = ids.split_once(':').unwrap();
                    let mut c = Command::new("setpriv");
                    c.args([
                        &format!("--reuid={uid}"),
                        &format!("--regid={gid}"),
                        "--clear-groups",
                        "sh",
                        "-c",
                        command,
                    ]);
                    c
                }
                None => {
                    let mut c = Command::new("sh");
                    c.args(["-c", line]);
                    c
                }
            };
            cmd.current_dir(mnt).env("LC_ALL", "C");
            let o = run_with_timeout(&mut cmd, Duration::from_secs(20));
            // Messages name the path, never the mount point.
            let err = o.stderr.replace(mnt.to_str().unwrap(), "MNT");
            format!(
                "{line} => {:?} {} {}",
                o.status.and_then(|s| s.code()),
                o.stdout.trim(),
                err.trim()
            )
        })
        .collect()
}

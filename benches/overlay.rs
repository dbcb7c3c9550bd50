//! Benchmark: strata against kernel overlayfs (the reference) and
//! fuse-overlayfs, over the same generated layers.
//!
//! ```sh
//! cargo bench --bench overlay                      # as root: 5 runs, full sizes
//! cargo bench --bench overlay -- --quick           # smoke run, tiny sizes
//! cargo bench --bench overlay -- --runs 3 --only walk,stat
//! ```
//!
//! Every workload mounts each file system afresh (with a fresh upper/work
//! where it writes), times only the workload with `Instant`, and unmounts.
//! Repetitions interleave the file systems (kernel, strata, fuse-overlayfs,
//! kernel, ...); the table shows medians, the ratio to kernel overlayfs, and
//! for the FUSE daemons the CPU time (utime+stime) and peak RSS (VmHWM)
//! spent during the timed part. Progress goes to stderr, the table to stdout.
//!
//! The generated layers are cached in `$TMPDIR` (else `/var/tmp`)
//! `/strata-bench-data/<scale>` and reused; `--clean` deletes them. Mount
//! points and uppers live in a per-run `strata-bench-run-<pid>` next to it,
//! removed at the end; mounts left by a killed run are removed at the next.

use std::collections::HashSet;
use std::env;
use std::ffi::OsString;
use std::fmt::Display;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage: cargo bench --bench overlay [-- OPTIONS]   (as root)

  --runs N          repetitions per workload and file system (default 5); medians
  --quick           tiny sizes and 1 run: a smoke test of the benchmark itself
  --only A[,B...]   only the workloads whose name starts with A (or B, ...)
  --keep            keep the generated layers for the next run (the default)
  --clean           delete the cached generated layers and exit

env: STRATA_BIN (else `cargo build --release --bin strata` is run first),
     FUSE_OVERLAYFS_BIN (besides /usr/bin/fuse-overlayfs and any on PATH),
     TMPDIR (where data and mounts go; default /var/tmp)
";

/// How long mounting, unmounting, or a daemon's exit may take.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one subprocess of a workload (tar, grep, cp) may take.
const CMD_TIMEOUT: Duration = Duration::from_secs(900);
/// The largest mount(2) option string (one page).
const MOUNT_DATA_MAX: usize = 4000;

type R<T> = Result<T, String>;

/// `.map_err(ctx("what"))`: an error message naming what failed.
fn ctx<E: Display>(what: impl Display) -> impl FnOnce(E) -> String {
    move |e| format!("{what}: {e}")
}

// ================================================================== sizes

/// The sizes of one data set. `full` is the benchmark; `quick` a smoke test.
struct Scale {
    name: &'static str,
    /// Leaf directories of the image (100 files each, over 5 layers).
    leaves: usize,
    big_mib: u64,
    /// Entries of the merged big directory.
    bigdir: usize,
    tar_files: usize,
    tar_file_bytes: usize,
    /// Stack depths of `stat deep`; the last is the number of layers made.
    deep: &'static [usize],
    stats: u64,
    rand_reads: usize,
    creates: usize,
    default_runs: usize,
}

const FULL: Scale = Scale {
    name: "full",
    leaves: 200,
    big_mib: 1024,
    bigdir: 10_000,
    tar_files: 5_000,
    tar_file_bytes: 20_000,
    deep: &[1, 16, 128, 500],
    stats: 100_000,
    rand_reads: 20_000,
    creates: 10_000,
    default_runs: 5,
};

const QUICK: Scale = Scale {
    name: "quick",
    leaves: 20,
    big_mib: 64,
    bigdir: 1_000,
    tar_files: 500,
    tar_file_bytes: 20_000,
    deep: &[1, 16],
    stats: 10_000,
    rand_reads: 2_000,
    creates: 1_000,
    default_runs: 1,
};

/// Base files per leaf directory of the image (the bottom layer).
const BASE_FILES: usize = 90;
/// Files each of the 4 upper image layers adds to every leaf directory.
const ADDED_FILES: usize = 3;
/// Image layers, bottom (0) to top.
const IMAGE_LAYERS: usize = 5;
/// The files `small files` reads and `delete lower` unlinks: f00..f49 of
/// every leaf directory.
const SET_PER_LEAF: usize = 50;

impl Scale {
    fn size_label(&self) -> String {
        if self.big_mib.is_multiple_of(1024) {
            format!("{}G", self.big_mib / 1024)
        } else {
            format!("{}M", self.big_mib)
        }
    }

    fn set_files(&self) -> usize {
        self.leaves * SET_PER_LEAF
    }
}

fn count_label(n: usize) -> String {
    if n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

// ============================================================ generation

/// Deterministic pseudo-random numbers (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

fn seed(a: usize, b: usize, c: usize) -> u64 {
    ((a as u64) << 40) ^ ((b as u64) << 20) ^ c as u64
}

fn write_file(path: &Path, seed: u64) -> io::Result<()> {
    let mut rng = Rng::new(seed);
    let len = 512 + (rng.next() % 3584) as usize;
    let mut buf = vec![0; len];
    rng.fill(&mut buf);
    fs::write(path, buf)
}

fn whiteout(path: &Path) -> R<()> {
    run(
        Command::new("mknod").arg(path).args(["c", "0", "0"]),
        CMD_TIMEOUT,
    )
}

fn leaf_dir(leaf: usize) -> String {
    format!("a{:02}/b{}", leaf / 10, leaf % 10)
}

/// Where everything generated lives, and the layer stacks (top first).
struct Data {
    /// Image layers, top first.
    image: Vec<PathBuf>,
    /// The two layers of the big directory `d`, top first.
    bigdir: Vec<PathBuf>,
    /// The layer with `big` (the big file) and `empty` (an empty file).
    big: PathBuf,
    /// An empty layer (the lower of write workloads, the top of one-layer
    /// read-only stacks: kernel overlayfs wants two layers without upper).
    empty: PathBuf,
    /// The layer holding `tree/`, the source tree packed in `tar`.
    src: PathBuf,
    tar: PathBuf,
    /// Layers `deep/0` (bottom, holds `f`) to `deep/N-1`.
    deep: PathBuf,
}

impl Data {
    fn deep_stack(&self, n: usize) -> Vec<PathBuf> {
        (0..n)
            .rev()
            .map(|i| self.deep.join(i.to_string()))
            .collect()
    }
}

/// Runs `make` into `root/name` unless `root/name.done` says it was done.
fn cached(root: &Path, name: &str, make: impl FnOnce(&Path) -> R<()>) -> R<PathBuf> {
    let dir = root.join(name);
    let stamp = root.join(format!("{name}.done"));
    if stamp.exists() {
        return Ok(dir);
    }
    eprintln!("generating {}", dir.display());
    let t = Instant::now();
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(ctx(dir.display()))?;
    }
    fs::create_dir_all(&dir).map_err(ctx(dir.display()))?;
    make(&dir)?;
    run(&mut Command::new("sync"), CMD_TIMEOUT)?;
    File::create(&stamp).map_err(ctx(stamp.display()))?;
    eprintln!("  done in {:.1} s", t.elapsed().as_secs_f64());
    Ok(dir)
}

fn generate(root: &Path, sc: &Scale) -> R<Data> {
    fs::create_dir_all(root).map_err(ctx(root.display()))?;
    let image = cached(root, "image", |dir| gen_image(dir, sc))?;
    let bigdir = cached(root, "bigdir", |dir| gen_bigdir(dir, sc.bigdir))?;
    let big = cached(root, "big", |dir| gen_big(dir, sc.big_mib))?;
    let empty = cached(root, "empty", |_| Ok(()))?;
    let src = cached(root, "src", |dir| gen_src(dir, sc))?;
    let deep_layers = *sc.deep.iter().max().unwrap_or(&1);
    let deep = cached(root, "deep", |dir| gen_deep(dir, deep_layers))?;
    Ok(Data {
        image: (0..IMAGE_LAYERS)
            .rev()
            .map(|l| image.join(l.to_string()))
            .collect(),
        bigdir: vec![bigdir.join("1"), bigdir.join("0")],
        big,
        empty,
        tar: src.join("src.tar"),
        src: src.join("layer"),
        deep,
    })
}

/// Five layers of `leaves` directories `aNN/bN`: the bottom layer holds
/// f00..f89 in each, every upper layer L adds gL_0..gL_2 everywhere and
/// rewrites five base files in a quarter of the directories; layer 4 whites
/// out f89 in every tenth directory, layer 2 g1_0 in every twentieth.
fn gen_image(dir: &Path, sc: &Scale) -> R<()> {
    for layer in 0..IMAGE_LAYERS {
        for leaf in 0..sc.leaves {
            let d = dir.join(layer.to_string()).join(leaf_dir(leaf));
            fs::create_dir_all(&d).map_err(ctx(d.display()))?;
            let mut files = Vec::new();
            if layer == 0 {
                files.extend((0..BASE_FILES).map(|i| format!("f{i:02}")));
            } else {
                files.extend((0..ADDED_FILES).map(|j| format!("g{layer}_{j}")));
                if leaf % 4 == layer - 1 {
                    files.extend((0..5).map(|k| format!("f{:02}", layer * 10 + k)));
                }
            }
            for (i, name) in files.iter().enumerate() {
                let p = d.join(name);
                write_file(&p, seed(layer, leaf, i)).map_err(ctx(p.display()))?;
            }
            if layer == 4 && leaf % 10 == 0 {
                whiteout(&d.join(format!("f{:02}", BASE_FILES - 1)))?;
            }
            if layer == 2 && leaf % 20 == 5 {
                whiteout(&d.join("g1_0"))?;
            }
        }
    }
    Ok(())
}

/// `d/` in two layers: the lower holds the first 55 % of the names, the
/// upper the last 55 % (10 % overlap), `n` entries merged.
fn gen_bigdir(dir: &Path, n: usize) -> R<()> {
    let split = n * 55 / 100;
    for (layer, range) in [(0, 0..split), (1, n - split..n)] {
        let d = dir.join(layer.to_string()).join("d");
        fs::create_dir_all(&d).map_err(ctx(d.display()))?;
        for i in range {
            let p = d.join(format!("e{i:05}"));
            File::create(&p).map_err(ctx(p.display()))?;
        }
    }
    Ok(())
}

fn gen_big(dir: &Path, mib: u64) -> R<()> {
    let p = dir.join("big");
    let mut f = File::create(&p).map_err(ctx(p.display()))?;
    let mut rng = Rng::new(1);
    let mut buf = vec![0; 1 << 20];
    for _ in 0..mib {
        rng.fill(&mut buf);
        f.write_all(&buf).map_err(ctx(p.display()))?;
    }
    f.sync_all().map_err(ctx(p.display()))?;
    File::create(dir.join("empty")).map_err(ctx("empty"))?;
    Ok(())
}

const WORDS: &[&str] = &[
    "let", "mut", "self", "value", "buffer", "index", "layer", "inode", "entry", "lookup",
    "parent", "result", "error", "return", "match", "struct", "impl", "offset", "length", "flags",
];
const NEEDLE: &str = "needle_pattern";

/// `layer/tree/mNN/sN/fN.rs`: `tar_files` text files of about
/// `tar_file_bytes`, every seventh with NEEDLE on one line; `src.tar` packs
/// `tree`.
fn gen_src(dir: &Path, sc: &Scale) -> R<()> {
    let layer = dir.join("layer");
    for i in 0..sc.tar_files {
        let d = layer.join(format!("tree/m{:02}/s{}", i / 100, (i / 10) % 10));
        fs::create_dir_all(&d).map_err(ctx(d.display()))?;
        let mut rng = Rng::new(seed(7, i, 0));
        let mut text = String::with_capacity(sc.tar_file_bytes + 128);
        let mut line = 0;
        while text.len() < sc.tar_file_bytes {
            let w = |r: &mut Rng| WORDS[(r.next() % WORDS.len() as u64) as usize];
            let (a, b, c) = (w(&mut rng), w(&mut rng), w(&mut rng));
            let n = rng.next() % 10_000;
            if i % 7 == 0 && line == 40 {
                text += &format!("    // {NEEDLE}: {a} {b}\n");
            }
            text += &format!("    let {a}_{n} = {b}.{c}({n}, {line}); // {a} {c}\n");
            line += 1;
        }
        let p = d.join(format!("f{}.rs", i % 10));
        fs::write(&p, text).map_err(ctx(p.display()))?;
    }
    let tar = dir.join("src.tar");
    run(
        Command::new("tar")
            .arg("cf")
            .arg(&tar)
            .arg("-C")
            .arg(&layer)
            .arg("tree"),
        CMD_TIMEOUT,
    )
}

fn gen_deep(dir: &Path, n: usize) -> R<()> {
    for i in 0..n {
        let d = dir.join(i.to_string());
        fs::create_dir_all(&d).map_err(ctx(d.display()))?;
    }
    fs::write(dir.join("0/f"), "bottom\n").map_err(ctx("deep/0/f"))
}

// ============================================================ processes

fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// Runs `cmd` with stdin and stdout from/to /dev/null (unless set) and
/// stderr into a file (a daemonizing child may keep a pipe open); Err with
/// the command and its stderr unless it exits 0 in time.
fn run(cmd: &mut Command, timeout: Duration) -> R<()> {
    let what = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let what: String = what.chars().take(300).collect();
    let mut err = tempfile::tempfile().map_err(ctx("tempfile"))?;
    cmd.stdin(Stdio::null())
        .stderr(err.try_clone().map_err(ctx("tempfile"))?);
    let mut child = cmd.spawn().map_err(ctx(&what))?;
    let status = wait_timeout(&mut child, timeout);
    let mut msg = String::new();
    let _ = err.seek(SeekFrom::Start(0));
    let _ = err.read_to_string(&mut msg);
    match status {
        Some(s) if s.success() => Ok(()),
        Some(s) => Err(format!("`{what}`: {s}: {}", msg.trim())),
        None => Err(format!(
            "`{what}`: killed after {timeout:?}: {}",
            msg.trim()
        )),
    }
}

/// `run` with stdout to /dev/null.
fn run_quiet(cmd: &mut Command, timeout: Duration) -> R<()> {
    run(cmd.stdout(Stdio::null()), timeout)
}

fn output(cmd: &mut Command) -> String {
    match cmd.stdin(Stdio::null()).output() {
        Ok(o) => {
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
        }
        Err(e) => format!("({e})"),
    }
}

fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie has exited.
        Ok(s) => !matches!(stat_fields(&s).first(), Some(&"Z") | Some(&"X")),
        Err(_) => false,
    }
}

/// The fields of /proc/PID/stat after `(comm)`: [0] is the state (field 3).
fn stat_fields(s: &str) -> Vec<&str> {
    s.rfind(')')
        .map(|i| s[i + 1..].split_whitespace().collect())
        .unwrap_or_default()
}

fn kill(pid: i32) {
    let _ = run_quiet(
        Command::new("kill").args(["-KILL", &pid.to_string()]),
        MOUNT_TIMEOUT,
    );
}

/// Waits for `pid` to exit; kills it after MOUNT_TIMEOUT.
fn reap(pid: i32) {
    let deadline = Instant::now() + MOUNT_TIMEOUT;
    while alive(pid) {
        if Instant::now() > deadline {
            eprintln!("daemon {pid} did not exit after its unmount: killing it");
            kill(pid);
            thread::sleep(Duration::from_millis(100));
            return;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Pids of other processes whose command line (NUL-separated arguments)
/// satisfies `matches`.
fn pids_whose_cmdline(matches: impl Fn(&[u8]) -> bool) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|ent| {
            let pid = ent.file_name().to_str()?.parse::<i32>().ok()?;
            let cmdline = fs::read(ent.path().join("cmdline")).ok()?;
            (matches(&cmdline) && pid != std::process::id() as i32).then_some(pid)
        })
        .collect()
}

/// Pids of processes with `arg` as one of their arguments.
fn pids_with_arg(arg: &Path) -> Vec<i32> {
    let want = arg.as_os_str().as_encoded_bytes();
    pids_whose_cmdline(|c| c.split(|&b| b == 0).any(|a| a == want))
}

/// Pids of processes with an argument naming a path under `dir` (as an
/// option value too: `lowerdir=DIR/...`).
fn pids_with_arg_under(dir: &Path) -> Vec<i32> {
    let want = dir.as_os_str().as_encoded_bytes();
    pids_whose_cmdline(|c| c.windows(want.len()).any(|w| w == want))
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: i32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f = stat_fields(&s);
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// VmHWM of `pid` in KiB.
fn peak_rss_kib(pid: i32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn clock_ticks_per_sec() -> f64 {
    output(Command::new("getconf").arg("CLK_TCK"))
        .trim()
        .parse()
        .unwrap_or(100.0)
}

fn sync() -> R<()> {
    run(&mut Command::new("sync"), CMD_TIMEOUT)
}

fn drop_caches() -> R<()> {
    sync()?;
    fs::write("/proc/sys/vm/drop_caches", "3").map_err(ctx("/proc/sys/vm/drop_caches"))
}

// ================================================================ mounts

/// Mount points listed in /proc/self/mountinfo (octal escapes undone).
fn mount_points() -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|mp| {
            let b = mp.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'\\'
                    && let Some(v) = b
                        .get(i + 1..i + 4)
                        .and_then(|o| std::str::from_utf8(o).ok())
                        .and_then(|o| u8::from_str_radix(o, 8).ok())
                {
                    out.push(v);
                    i += 4;
                    continue;
                }
                out.push(b[i]);
                i += 1;
            }
            PathBuf::from(String::from_utf8_lossy(&out).into_owned())
        })
        .collect()
}

fn is_mounted(p: &Path) -> bool {
    mount_points().iter().any(|m| m == p)
}

/// Unmounts `mnt` (FUSE: fusermount3 -u first), lazily as a last resort,
/// and kills daemons still serving it. Ok if nothing is mounted there.
fn unmount(mnt: &Path, fuse: bool) -> R<()> {
    let daemons = pids_with_arg(mnt);
    let mut tries: Vec<Vec<&str>> = vec![vec!["umount"], vec!["umount", "-l"]];
    if fuse {
        tries.insert(0, vec!["fusermount3", "-u"]);
    }
    let mut last = String::new();
    for t in tries {
        if !is_mounted(mnt) {
            break;
        }
        if let Err(e) = run_quiet(Command::new(t[0]).args(&t[1..]).arg(mnt), MOUNT_TIMEOUT) {
            last = e;
        }
    }
    for pid in daemons {
        reap(pid);
    }
    if is_mounted(mnt) {
        Err(format!("{} is still mounted: {last}", mnt.display()))
    } else {
        Ok(())
    }
}

/// Unmounts everything mounted under `dir` (deepest first).
fn unmount_all_under(dir: &Path) {
    let mut mps: Vec<PathBuf> = mount_points()
        .into_iter()
        .filter(|m| m.starts_with(dir) && m != dir)
        .collect();
    mps.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    mps.dedup();
    for m in mps {
        eprintln!("unmounting leftover {}", m.display());
        if let Err(e) = unmount(&m, true) {
            eprintln!("{e}");
        }
    }
}

#[derive(Clone, Debug)]
enum Kind {
    Kernel,
    Fuse(PathBuf),
}

#[derive(Clone, Debug)]
struct Filesystem {
    label: String,
    kind: Kind,
}

/// What a workload mounts: lower layers (top first) and whether it gets a
/// fresh upper/work.
struct Spec {
    lowers: Vec<PathBuf>,
    upper: bool,
    /// Metadata-only copy-up: kernel `redirect_dir=on,metacopy=on`, strata
    /// `metacopy=on`; fuse-overlayfs has none (n/a).
    metacopy: bool,
}

/// The per-run scratch directory: mount points, uppers, outputs. Dropping
/// it unmounts whatever is still mounted under it, then removes it.
struct Scratch {
    dir: PathBuf,
    next: std::cell::Cell<u32>,
}

impl Scratch {
    fn fresh(&self, what: &str) -> R<PathBuf> {
        let n = self.next.get();
        self.next.set(n + 1);
        let p = self.dir.join(format!("{what}{n}"));
        fs::create_dir_all(&p).map_err(ctx(p.display()))?;
        Ok(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        unmount_all_under(&self.dir);
        // Nothing is mounted there any more: a daemon still naming a path
        // in the run dir is stuck.
        for pid in pids_with_arg_under(&self.dir) {
            eprintln!("killing leftover daemon {pid}");
            kill(pid);
        }
        if mount_points().iter().any(|m| m.starts_with(&self.dir)) {
            eprintln!("not removing {}: still mounted", self.dir.display());
        } else if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("removing {}: {e}", self.dir.display());
        }
    }
}

/// A live mount; dropping it unmounts, waits for the daemon to exit and
/// removes the mount point and upper.
struct Mounted {
    mnt: PathBuf,
    fuse: bool,
    daemon: Option<i32>,
    upper: Option<PathBuf>,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let r = unmount(&self.mnt, self.fuse);
        if let Some(pid) = self.daemon {
            reap(pid);
        }
        match r {
            Err(e) => eprintln!("{e}"),
            Ok(()) => {
                let _ = fs::remove_dir(&self.mnt);
                if let Some(u) = &self.upper
                    && let Err(e) = fs::remove_dir_all(u)
                {
                    eprintln!("removing {}: {e}", u.display());
                }
            }
        }
    }
}

fn path_str(p: &Path) -> R<&str> {
    let s = p
        .to_str()
        .ok_or_else(|| format!("non-UTF-8 path {}", p.display()))?;
    if s.contains([',', ':', '\\']) {
        return Err(format!("unescaped option character in {s}"));
    }
    Ok(s)
}

fn mount(fs_: &Filesystem, spec: &Spec, scratch: &Scratch) -> R<Mounted> {
    let mnt = scratch.fresh("m")?;
    let mut m = Mounted {
        mnt: mnt.clone(),
        fuse: matches!(fs_.kind, Kind::Fuse(_)),
        daemon: None,
        upper: None,
    };
    let mut upper_opts = String::new();
    if spec.upper {
        let u = scratch.fresh("u")?;
        m.upper = Some(u.clone());
        let (upper, work) = (u.join("upper"), u.join("work"));
        for d in [&upper, &work] {
            fs::create_dir(d).map_err(ctx(d.display()))?;
        }
        upper_opts = format!(
            ",upperdir={},workdir={}",
            path_str(&upper)?,
            path_str(&work)?
        );
    }
    let lowers = spec
        .lowers
        .iter()
        .map(|p| path_str(p))
        .collect::<R<Vec<_>>>()?
        .join(":");
    let mut opts = format!("lowerdir={lowers}{upper_opts}");
    if spec.metacopy {
        opts += match (&fs_.kind, fs_.label.as_str()) {
            (Kind::Kernel, _) => ",redirect_dir=on,metacopy=on",
            (_, "strata") => ",metacopy=on",
            _ => return Err(format!("{} has no metadata-only copy-up", fs_.label)),
        };
    }
    match &fs_.kind {
        Kind::Kernel => {
            let mut cmd = Command::new("mount");
            cmd.args(["-t", "overlay", "overlay", "-o"]);
            if opts.len() > MOUNT_DATA_MAX {
                // One page of mount(2) data cannot hold the absolute paths:
                // name the layers relative to their common parent.
                let parent = spec.lowers[0].parent().ok_or("layer without parent")?;
                if spec.upper || spec.lowers.iter().any(|l| l.parent() != Some(parent)) {
                    return Err("option string too long for mount(2)".into());
                }
                let rel = spec
                    .lowers
                    .iter()
                    .map(|l| l.file_name().unwrap_or_default().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(":");
                cmd.arg(format!("lowerdir={rel}")).current_dir(parent);
            } else {
                cmd.arg(&opts);
            }
            run_quiet(cmd.arg(&mnt), MOUNT_TIMEOUT)?;
        }
        Kind::Fuse(bin) => {
            run_quiet(
                Command::new(bin).arg("-o").arg(&opts).arg(&mnt),
                MOUNT_TIMEOUT,
            )?;
            let bin = fs::canonicalize(bin).unwrap_or_else(|_| bin.clone());
            m.daemon = pids_with_arg(&mnt)
                .into_iter()
                .find(|pid| fs::read_link(format!("/proc/{pid}/exe")).ok().as_ref() == Some(&bin));
            if m.daemon.is_none() {
                eprintln!("warning: no daemon process found for {}", mnt.display());
            }
        }
    }
    if !is_mounted(&mnt) {
        return Err(format!(
            "{} is not mounted after the mount command",
            mnt.display()
        ));
    }
    Ok(m)
}

// ============================================================= measuring

#[derive(Clone, Copy, Debug)]
struct Sample {
    secs: f64,
    ops: u64,
    cpu_ms: Option<f64>,
    rss_kib: Option<u64>,
}

/// Brackets the timed part of a workload: wall time, and the daemon's CPU
/// time and peak RSS (reset at start) over the same span.
struct Probe {
    daemon: Option<i32>,
    ticks_per_sec: f64,
    t0: Option<Instant>,
    cpu0: Option<u64>,
    sample: Option<Sample>,
}

impl Probe {
    fn start(&mut self) {
        if let Some(pid) = self.daemon {
            if let Err(e) = fs::write(format!("/proc/{pid}/clear_refs"), "5") {
                eprintln!("clear_refs of {pid}: {e}");
            }
            self.cpu0 = cpu_ticks(pid);
        }
        self.t0 = Some(Instant::now());
    }

    /// Ends the timed part; `ops` counts operations for a per-op time.
    fn stop(&mut self, ops: u64) {
        let secs = self.t0.map_or(0.0, |t| t.elapsed().as_secs_f64());
        let (mut cpu_ms, mut rss_kib) = (None, None);
        if let Some(pid) = self.daemon {
            if let (Some(a), Some(b)) = (self.cpu0, cpu_ticks(pid)) {
                cpu_ms = Some(b.saturating_sub(a) as f64 * 1000.0 / self.ticks_per_sec);
            }
            rss_kib = peak_rss_kib(pid);
        }
        self.sample = Some(Sample {
            secs,
            ops,
            cpu_ms,
            rss_kib,
        });
    }
}

// ============================================================= workloads

#[derive(Clone, Copy, PartialEq)]
enum Unit {
    Ms,
    UsPerOp,
}

type Body = Box<dyn Fn(&Path, &mut Probe) -> R<u64>>;

/// One row: what to mount and what to do on the mount. The body calls
/// `probe.start()`/`probe.stop()` around the timed part and returns a check
/// value (entries seen, bytes read) that must be equal on every file system.
struct Workload {
    name: String,
    spec: Spec,
    unit: Unit,
    body: Body,
    note: Option<String>,
}

/// Number of entries below `dir`, each lstat'ed; directories not followed
/// through symlinks.
fn walk(dir: &Path) -> io::Result<u64> {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for ent in fs::read_dir(&d)? {
            let p = ent?.path();
            let md = fs::symlink_metadata(&p)?;
            n += 1;
            if md.is_dir() {
                stack.push(p);
            }
        }
    }
    Ok(n)
}

/// Reads every file of the layers directly (not through a mount), so that
/// workloads start from the same, warm, page cache.
fn prewarm(layers: &[PathBuf]) -> R<()> {
    let mut buf = vec![0; 1 << 20];
    let mut stack: Vec<PathBuf> = layers.to_vec();
    while let Some(d) = stack.pop() {
        for ent in fs::read_dir(&d).map_err(ctx(d.display()))? {
            let ent = ent.map_err(ctx(d.display()))?;
            let ft = ent.file_type().map_err(ctx(d.display()))?;
            if ft.is_dir() {
                stack.push(ent.path());
            } else if ft.is_file() {
                read_all(&ent.path(), &mut buf).map_err(ctx(ent.path().display()))?;
            }
        }
    }
    Ok(())
}

fn read_all(p: &Path, buf: &mut [u8]) -> io::Result<u64> {
    let mut f = File::open(p)?;
    let mut total = 0;
    loop {
        match f.read(buf)? {
            0 => return Ok(total),
            n => total += n as u64,
        }
    }
}

/// The files of the `small files` and `delete lower` set, relative.
fn set_files(sc: &Scale) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for leaf in 0..sc.leaves {
        for i in 0..SET_PER_LEAF {
            v.push(Path::new(&leaf_dir(leaf)).join(format!("f{i:02}")));
        }
    }
    v
}

fn io_err(p: &Path) -> impl FnOnce(io::Error) -> String + '_ {
    move |e| format!("{}: {e}", p.display())
}

fn workloads(sc: &'static Scale, data: &'static Data, scratch: &'static Scratch) -> Vec<Workload> {
    let ro = |lowers: Vec<PathBuf>| Spec {
        lowers,
        upper: false,
        metacopy: false,
    };
    let rw = |lowers: Vec<PathBuf>| Spec {
        lowers,
        upper: true,
        metacopy: false,
    };
    let size = sc.size_label();
    let big_bytes = sc.big_mib << 20;
    let one_layer = |l: &PathBuf| vec![data.empty.clone(), l.clone()];
    let mut w = vec![
        Workload {
            name: "walk cold".into(),
            spec: ro(data.image.clone()),
            unit: Unit::Ms,
            body: Box::new(|mnt, probe| {
                drop_caches()?;
                probe.start();
                let n = walk(mnt).map_err(io_err(mnt))?;
                probe.stop(n);
                Ok(n)
            }),
            note: None,
        },
        Workload {
            name: "walk warm".into(),
            spec: ro(data.image.clone()),
            unit: Unit::Ms,
            body: Box::new(|mnt, probe| {
                walk(mnt).map_err(io_err(mnt))?;
                probe.start();
                let n = walk(mnt).map_err(io_err(mnt))?;
                probe.stop(n);
                Ok(n)
            }),
            note: None,
        },
        Workload {
            name: format!("readdir {}", count_label(sc.bigdir)),
            spec: ro(data.bigdir.clone()),
            unit: Unit::Ms,
            body: Box::new(|mnt, probe| {
                let d = mnt.join("d");
                let list = || -> R<u64> {
                    let names = fs::read_dir(&d)
                        .map_err(io_err(&d))?
                        .map(|e| e.map(|e| e.file_name()))
                        .collect::<io::Result<Vec<OsString>>>()
                        .map_err(io_err(&d))?;
                    Ok(names.len() as u64)
                };
                list()?;
                probe.start();
                let n = list()?;
                probe.stop(n);
                Ok(n)
            }),
            note: None,
        },
        Workload {
            name: "small files".into(),
            spec: ro(data.image.clone()),
            unit: Unit::Ms,
            body: Box::new(move |mnt, probe| {
                prewarm(&data.image)?;
                let files = set_files(sc);
                let mut buf = vec![0; 64 << 10];
                probe.start();
                let mut bytes = 0;
                for f in &files {
                    let p = mnt.join(f);
                    bytes += read_all(&p, &mut buf).map_err(io_err(&p))?;
                }
                probe.stop(files.len() as u64);
                Ok(bytes)
            }),
            note: Some(format!(
                "small files: open+read+close of {} files on a fresh mount, layers in the page cache",
                sc.set_files()
            )),
        },
        Workload {
            name: format!("seq read {size} cold"),
            spec: ro(one_layer(&data.big)),
            unit: Unit::Ms,
            body: Box::new(|mnt, probe| {
                let p = mnt.join("big");
                let mut buf = vec![0; 1 << 20];
                drop_caches()?;
                probe.start();
                let n = read_all(&p, &mut buf).map_err(io_err(&p))?;
                probe.stop(1);
                Ok(n)
            }),
            note: None,
        },
        Workload {
            name: "rand read 4k".into(),
            spec: ro(one_layer(&data.big)),
            unit: Unit::Ms,
            body: Box::new(move |mnt, probe| {
                let p = mnt.join("big");
                let f = File::open(&p).map_err(io_err(&p))?;
                let blocks = big_bytes / 4096;
                let mut rng = Rng::new(42);
                let offsets: Vec<u64> = (0..sc.rand_reads)
                    .map(|_| (rng.next() % blocks) * 4096)
                    .collect();
                let mut buf = vec![0; 4096];
                let pass = |buf: &mut [u8]| -> R<u64> {
                    let mut sum = 0u64;
                    for &o in &offsets {
                        f.read_exact_at(buf, o).map_err(io_err(&p))?;
                        sum = sum.wrapping_add(buf[0] as u64);
                    }
                    Ok(sum)
                };
                pass(&mut buf)?;
                probe.start();
                let sum = pass(&mut buf)?;
                probe.stop(offsets.len() as u64);
                Ok(sum)
            }),
            note: Some(format!(
                "rand read 4k: {} preads of 4 KiB at random aligned offsets, second pass",
                sc.rand_reads
            )),
        },
        Workload {
            name: format!("seq write {size}"),
            spec: rw(vec![data.empty.clone()]),
            unit: Unit::Ms,
            body: Box::new(move |mnt, probe| {
                let p = mnt.join("new");
                let mut buf = vec![0; 1 << 20];
                Rng::new(3).fill(&mut buf);
                sync()?;
                probe.start();
                let mut f = File::create(&p).map_err(io_err(&p))?;
                for _ in 0..sc.big_mib {
                    f.write_all(&buf).map_err(io_err(&p))?;
                }
                f.sync_all().map_err(io_err(&p))?;
                drop(f);
                probe.stop(1);
                Ok(fs::metadata(&p).map_err(io_err(&p))?.len())
            }),
            note: None,
        },
        Workload {
            name: format!("copy-up write {size}"),
            spec: rw(vec![data.big.clone()]),
            unit: Unit::Ms,
            body: Box::new(move |mnt, probe| {
                let p = mnt.join("big");
                prewarm(std::slice::from_ref(&data.big))?;
                sync()?;
                probe.start();
                let mut f = OpenOptions::new()
                    .append(true)
                    .open(&p)
                    .map_err(io_err(&p))?;
                f.write_all(b"x").map_err(io_err(&p))?;
                drop(f);
                probe.stop(1);
                Ok(fs::metadata(&p).map_err(io_err(&p))?.len())
            }),
            note: Some(format!(
                "copy-up write: open O_WRONLY|O_APPEND, write 1 byte, close, on the {size} lower file"
            )),
        },
        Workload {
            name: format!("chmod {size}"),
            spec: rw(vec![data.big.clone()]),
            unit: Unit::Ms,
            body: Box::new(move |mnt, probe| {
                let p = mnt.join("big");
                prewarm(std::slice::from_ref(&data.big))?;
                sync()?;
                probe.start();
                fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).map_err(io_err(&p))?;
                probe.stop(1);
                Ok(fs::metadata(&p).map_err(io_err(&p))?.mode() as u64)
            }),
            note: None,
        },
        Workload {
            name: format!("chmod {size} metacopy"),
            spec: Spec {
                metacopy: true,
                ..rw(vec![data.big.clone()])
            },
            unit: Unit::Ms,
            body: Box::new(move |mnt, probe| {
                let p = mnt.join("big");
                prewarm(std::slice::from_ref(&data.big))?;
                sync()?;
                probe.start();
                fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).map_err(io_err(&p))?;
                probe.stop(1);
                Ok(fs::metadata(&p).map_err(io_err(&p))?.mode() as u64)
            }),
            note: Some(format!(
                "chmod {size} metacopy: kernel with redirect_dir=on,metacopy=on, strata with metacopy=on"
            )),
        },
        Workload {
            name: "chmod empty".into(),
            spec: rw(vec![data.big.clone()]),
            unit: Unit::Ms,
            body: Box::new(|mnt, probe| {
                let p = mnt.join("empty");
                fs::metadata(&p).map_err(io_err(&p))?;
                probe.start();
                fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).map_err(io_err(&p))?;
                probe.stop(1);
                Ok(fs::metadata(&p).map_err(io_err(&p))?.mode() as u64)
            }),
            note: None,
        },
        Workload {
            name: format!("create {}", count_label(sc.creates)),
            spec: rw(data.image.clone()),
            unit: Unit::Ms,
            body: Box::new(move |mnt, probe| {
                prewarm(&data.image)?;
                sync()?;
                let d = mnt.join("newdir");
                probe.start();
                fs::create_dir(&d).map_err(io_err(&d))?;
                for i in 0..sc.creates {
                    let p = d.join(format!("n{i:05}"));
                    File::create(&p).map_err(io_err(&p))?;
                }
                probe.stop(sc.creates as u64);
                Ok(fs::read_dir(&d).map_err(io_err(&d))?.count() as u64)
            }),
            note: None,
        },
        Workload {
            name: format!("delete {} lower", count_label(sc.set_files())),
            spec: rw(data.image.clone()),
            unit: Unit::Ms,
            body: Box::new(move |mnt, probe| {
                prewarm(&data.image)?;
                sync()?;
                let files = set_files(sc);
                probe.start();
                for f in &files {
                    let p = mnt.join(f);
                    fs::remove_file(&p).map_err(io_err(&p))?;
                }
                probe.stop(files.len() as u64);
                walk(mnt).map_err(io_err(mnt))
            }),
            note: None,
        },
        Workload {
            name: "untar".into(),
            spec: rw(vec![data.empty.clone()]),
            unit: Unit::Ms,
            body: Box::new(move |mnt, probe| {
                prewarm(std::slice::from_ref(&data.src))?;
                read_all(&data.tar, &mut vec![0; 1 << 20]).map_err(io_err(&data.tar))?;
                sync()?;
                probe.start();
                run(
                    Command::new("tar")
                        .arg("xf")
                        .arg(&data.tar)
                        .arg("-C")
                        .arg(mnt),
                    CMD_TIMEOUT,
                )?;
                sync()?;
                probe.stop(1);
                walk(mnt).map_err(io_err(mnt))
            }),
            note: Some(format!(
                "untar: `tar xf` of {} files ({} MB) into an empty upper, then `sync`",
                sc.tar_files,
                sc.tar_files * sc.tar_file_bytes / 1_000_000
            )),
        },
        Workload {
            name: "grep -r".into(),
            spec: ro(one_layer(&data.src)),
            unit: Unit::Ms,
            body: Box::new(move |mnt, probe| {
                let out = scratch.fresh("grep")?.join("out");
                let grep = || -> R<()> {
                    let f = File::create(&out).map_err(io_err(&out))?;
                    // stdout to a file: GNU grep stops at the first match
                    // when its output is /dev/null.
                    run(
                        Command::new("grep")
                            .args(["-r", NEEDLE])
                            .arg(mnt.join("tree"))
                            .stdout(f),
                        CMD_TIMEOUT,
                    )
                };
                grep()?;
                probe.start();
                grep()?;
                probe.stop(1);
                let lines = fs::read_to_string(&out)
                    .map_err(io_err(&out))?
                    .lines()
                    .count();
                let _ = fs::remove_dir_all(out.parent().unwrap_or(&out));
                Ok(lines as u64)
            }),
            note: Some("grep -r: over the source tree (as a lower layer), second pass".into()),
        },
    ];
    for &n in sc.deep {
        w.push(Workload {
            name: format!("stat deep {n}"),
            // Kernel overlayfs mounts no single layer without an upper.
            spec: if n == 1 {
                rw(data.deep_stack(n))
            } else {
                ro(data.deep_stack(n))
            },
            unit: Unit::UsPerOp,
            body: Box::new(move |mnt, probe| {
                let p = mnt.join("f");
                fs::metadata(&p).map_err(io_err(&p))?;
                probe.start();
                let mut sum = 0;
                for _ in 0..sc.stats {
                    sum += fs::metadata(&p).map_err(io_err(&p))?.len();
                }
                probe.stop(sc.stats);
                Ok(sum)
            }),
            note: None,
        });
    }
    w.last_mut().unwrap().note = Some(format!(
        "stat deep N: {} stats of a file in the bottom of N lower layers, after one stat; \
         N = 1 with an empty upper (kernel overlayfs needs two layers without one)",
        sc.stats
    ));
    w
}

// ================================================================ running

/// Mounts, runs the body, unmounts. A panic in the body is caught (the
/// guard has unmounted by then) and reported as an error.
fn run_one(fs_: &Filesystem, w: &Workload, scratch: &Scratch, tps: f64) -> R<(Sample, u64)> {
    let m = mount(fs_, &w.spec, scratch)?;
    let mut probe = Probe {
        daemon: m.daemon,
        ticks_per_sec: tps,
        t0: None,
        cpu0: None,
        sample: None,
    };
    let mnt = m.mnt.clone();
    let r = panic::catch_unwind(AssertUnwindSafe(|| (w.body)(&mnt, &mut probe)));
    drop(m);
    let check = match r {
        Ok(r) => r?,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            return Err(format!("panicked: {msg}"));
        }
    };
    let sample = probe.sample.ok_or("the workload did not stop its probe")?;
    Ok((sample, check))
}

/// `cp --reflink=auto` of the big file on the underlying disk, + fsync.
fn cp_reference(data: &Data, scratch: &Scratch) -> R<f64> {
    let dir = scratch.fresh("cp")?;
    let dst = dir.join("big");
    let src = data.big.join("big");
    prewarm(std::slice::from_ref(&data.big))?;
    sync()?;
    let t = Instant::now();
    run(
        Command::new("cp").arg("--reflink=auto").arg(&src).arg(&dst),
        CMD_TIMEOUT,
    )?;
    File::open(&dst)
        .and_then(|f| f.sync_all())
        .map_err(io_err(&dst))?;
    let secs = t.elapsed().as_secs_f64();
    fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
    Ok(secs)
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn fmt_num(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn which(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
}

/// The strata binary: $STRATA_BIN, else `strata` next to this bench's
/// target dir after `cargo build --release --bin strata`.
fn strata_bin() -> R<PathBuf> {
    if let Some(p) = env::var_os("STRATA_BIN").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    // This program is TARGET/release/deps/overlay-HASH.
    let exe = env::current_exe().map_err(ctx("current_exe"))?;
    let release = exe.parent().and_then(Path::parent).ok_or("no target dir")?;
    let bin = release.join("strata");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("running cargo build --release --bin strata");
    let built = Command::new(cargo)
        .args(["build", "--release", "--bin", "strata"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .status();
    match built {
        Ok(s) if s.success() => {}
        Ok(s) if bin.exists() => eprintln!("warning: cargo build: {s}; using the existing binary"),
        Err(e) if bin.exists() => {
            eprintln!("warning: cargo build: {e}; using the existing binary")
        }
        Ok(s) => return Err(format!("cargo build --release --bin strata: {s}")),
        Err(e) => return Err(format!("cargo build --release --bin strata: {e}")),
    }
    Ok(bin)
}

fn fuse_overlayfs_bins() -> Vec<PathBuf> {
    let mut c: Vec<PathBuf> = Vec::new();
    if let Some(p) = env::var_os("FUSE_OVERLAYFS_BIN").filter(|p| !p.is_empty()) {
        c.push(p.into());
    }
    c.push("/usr/bin/fuse-overlayfs".into());
    c.extend(which("fuse-overlayfs"));
    if let Some(home) = env::var_os("HOME") {
        c.push(Path::new(&home).join(".cargo/bin/fuse-overlayfs"));
    }
    let mut seen = HashSet::new();
    c.into_iter()
        .filter(|p| is_executable(p))
        .filter(|p| seen.insert(fs::canonicalize(p).unwrap_or_else(|_| p.clone())))
        .collect()
}

/// The line of `bin --version` that names the program (fuse-overlayfs
/// also prints fusermount3's).
fn version(bin: &Path) -> String {
    let name = bin.file_name().unwrap_or_default().to_string_lossy();
    let text = output(Command::new(bin).arg("--version"));
    let mut lines = text.lines().map(str::trim);
    lines
        .clone()
        .find(|l| l.starts_with(name.as_ref()))
        .or_else(|| lines.find(|l| l.contains("version")))
        .unwrap_or("?")
        .to_string()
}

struct Args {
    runs: Option<usize>,
    quick: bool,
    only: Vec<String>,
    clean: bool,
}

fn parse_args() -> R<Args> {
    let mut a = Args {
        runs: None,
        quick: false,
        only: Vec::new(),
        clean: false,
    };
    let mut it = env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            // cargo bench passes --bench to harness = false benches.
            "--bench" | "--keep" => {}
            "--quick" => a.quick = true,
            "--clean" => a.clean = true,
            "--runs" => {
                let n = it.next().ok_or("--runs needs a number")?;
                a.runs = Some(
                    n.parse()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or(format!("bad --runs {n}"))?,
                );
            }
            "--only" => {
                let v = it.next().ok_or("--only needs names")?;
                a.only
                    .extend(v.split(',').filter(|s| !s.is_empty()).map(String::from));
            }
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {arg}\n{USAGE}")),
        }
    }
    Ok(a)
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("overlay bench: {e}");
        std::process::exit(1);
    }
}

fn real_main() -> R<()> {
    let args = parse_args()?;
    let base = env::var_os("TMPDIR")
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from);
    let data_root = base.join("strata-bench-data");
    if args.clean {
        if data_root.exists() {
            fs::remove_dir_all(&data_root).map_err(ctx(data_root.display()))?;
        }
        eprintln!("removed {}", data_root.display());
        return Ok(());
    }
    let id = output(Command::new("id").arg("-u"));
    if id.trim() != "0" {
        return Err("must run as root (kernel overlayfs mounts, drop_caches)".into());
    }
    let sc: &'static Scale = if args.quick { &QUICK } else { &FULL };
    let runs = args.runs.unwrap_or(sc.default_runs);
    let started = Instant::now();

    // Mounts of an earlier run that was killed.
    if let Ok(dir) = fs::read_dir(&base) {
        for ent in dir.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("strata-bench-run-")
                && pid.parse::<i32>().is_ok_and(|p| !alive(p))
            {
                drop(Scratch {
                    dir: ent.path(),
                    next: 0.into(),
                });
            }
        }
    }

    let mut filesystems = vec![Filesystem {
        label: "kernel".into(),
        kind: Kind::Kernel,
    }];
    let strata = strata_bin()?;
    let mut versions = vec![("strata".to_string(), strata.clone(), version(&strata))];
    filesystems.push(Filesystem {
        label: "strata".into(),
        kind: Kind::Fuse(strata.clone()),
    });
    let fo = fuse_overlayfs_bins();
    for bin in &fo {
        let v = version(bin);
        let label = if fo.len() == 1 {
            "fuse-overlayfs".to_string()
        } else {
            let num = v.rsplit(' ').next().unwrap_or("?");
            format!("fuse-overlayfs {num}")
        };
        versions.push((label.clone(), bin.clone(), v));
        filesystems.push(Filesystem {
            label,
            kind: Kind::Fuse(bin.clone()),
        });
    }

    let root = data_root.join(sc.name);
    let data: &'static Data = Box::leak(Box::new(generate(&root, sc)?));
    let same_disk =
        fs::metadata(&base).map(|m| m.dev()).ok() == fs::metadata("/").map(|m| m.dev()).ok();
    if !same_disk {
        eprintln!("warning: {} is not on the file system of /", base.display());
    }
    let scratch: &'static Scratch = Box::leak(Box::new(Scratch {
        dir: base.join(format!("strata-bench-run-{}", std::process::id())),
        next: 0.into(),
    }));
    fs::create_dir_all(&scratch.dir).map_err(ctx(scratch.dir.display()))?;
    // Leaked for 'static closures; dropped by hand at the end (and a panic
    // outside the per-run catch_unwind still unmounts through the guards).
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        bench(
            sc,
            runs,
            &args,
            data,
            scratch,
            &filesystems,
            &versions,
            started,
        )
    }));
    // Unmount anything left and remove the run dir.
    unmount_all_under(&scratch.dir);
    let _ = fs::remove_dir_all(&scratch.dir);
    match result {
        Ok(r) => r,
        Err(_) => Err("panicked".into()),
    }
}

#[allow(clippy::too_many_arguments)]
fn bench(
    sc: &'static Scale,
    runs: usize,
    args: &Args,
    data: &'static Data,
    scratch: &'static Scratch,
    filesystems: &[Filesystem],
    versions: &[(String, PathBuf, String)],
    started: Instant,
) -> R<()> {
    let tps = clock_ticks_per_sec();
    let selected =
        |name: &str| args.only.is_empty() || args.only.iter().any(|o| name.starts_with(o.as_str()));
    let all = workloads(sc, data, scratch);
    let chosen: Vec<&Workload> = all.iter().filter(|w| selected(&w.name)).collect();
    if chosen.is_empty() {
        return Err(format!(
            "--only matches no workload; names: {}",
            all.iter()
                .map(|w| w.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }

    // results[workload][filesystem]: (sample, check) per run.
    let mut results: Vec<Vec<Vec<Sample>>> =
        vec![vec![Vec::new(); filesystems.len()]; chosen.len()];
    for (wi, w) in chosen.iter().enumerate() {
        for run_no in 0..runs {
            let mut checks: Vec<(String, u64)> = Vec::new();
            for (fi, f) in filesystems.iter().enumerate() {
                match run_one(f, w, scratch, tps) {
                    Ok((s, check)) => {
                        let shown = match w.unit {
                            Unit::Ms => format!("{} ms", fmt_num(s.secs * 1e3)),
                            Unit::UsPerOp => {
                                format!("{} µs/op", fmt_num(s.secs * 1e6 / s.ops as f64))
                            }
                        };
                        eprintln!(
                            "{:<22} run {}/{runs} {:<20} {shown}",
                            w.name,
                            run_no + 1,
                            f.label
                        );
                        results[wi][fi].push(s);
                        checks.push((f.label.clone(), check));
                    }
                    Err(e) => eprintln!(
                        "{:<22} run {}/{runs} {:<20} FAILED: {e}",
                        w.name,
                        run_no + 1,
                        f.label
                    ),
                }
            }
            if checks.windows(2).any(|p| p[0].1 != p[1].1) {
                eprintln!("warning: {}: the file systems disagree: {checks:?}", w.name);
            }
        }
    }
    let want_cp = chosen
        .iter()
        .any(|w| w.name.starts_with("copy-up") || w.name.starts_with("chmod"));
    let mut cp = Vec::new();
    if want_cp {
        for _ in 0..runs {
            match cp_reference(data, scratch) {
                Ok(s) => cp.push(s),
                Err(e) => eprintln!("cp --reflink=auto reference: {e}"),
            }
        }
    }

    // ---- the table
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let nproc = thread::available_parallelism().map_or(0, |n| n.get());
    let param = |p: &str| {
        fs::read_to_string(format!("/sys/module/overlay/parameters/{p}"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "?".into())
    };
    println!("## strata overlay benchmark");
    println!();
    println!(
        "machine: nproc {nproc}, kernel {}; scale {}; N = {runs} runs per cell (median); total {:.0} s",
        release.trim(),
        sc.name,
        started.elapsed().as_secs_f64()
    );
    println!(
        "kernel overlayfs: module defaults (redirect_dir={}, index={}, metacopy={}, xino_auto={})",
        param("redirect_dir"),
        param("index"),
        param("metacopy"),
        param("xino_auto")
    );
    for (label, bin, v) in versions {
        println!("{label}: {} ({v})", bin.display());
    }
    println!(
        "data: {}",
        data.image[0]
            .parent()
            .map_or(String::new(), |p| p.display().to_string())
    );
    println!();
    let fuse: Vec<usize> = (0..filesystems.len())
        .filter(|&i| matches!(filesystems[i].kind, Kind::Fuse(_)))
        .collect();
    let mut header = vec!["workload".to_string()];
    header.extend(filesystems.iter().map(|f| f.label.clone()));
    for &i in &fuse {
        header.push(format!("{} cpu", filesystems[i].label));
        header.push(format!("{} rss", filesystems[i].label));
    }
    println!("| {} |", header.join(" | "));
    println!("|{}", "---|".repeat(header.len()));
    for (wi, w) in chosen.iter().enumerate() {
        let value = |s: &Sample| match w.unit {
            Unit::Ms => s.secs * 1e3,
            Unit::UsPerOp => s.secs * 1e6 / s.ops.max(1) as f64,
        };
        let unit = match w.unit {
            Unit::Ms => "ms",
            Unit::UsPerOp => "µs/op",
        };
        let med: Vec<Option<f64>> = results[wi]
            .iter()
            .map(|v| median(v.iter().map(value).collect()))
            .collect();
        let mut row = vec![w.name.clone()];
        for (fi, m) in med.iter().enumerate() {
            let partial = if !results[wi][fi].is_empty() && results[wi][fi].len() < runs {
                format!(" [{}/{runs} runs]", results[wi][fi].len())
            } else {
                String::new()
            };
            row.push(match (m, med[0]) {
                (None, _) => "n/a".into(),
                (Some(x), Some(k)) if fi > 0 && k > 0.0 => {
                    format!("{} {unit} ({:.2}x){partial}", fmt_num(*x), x / k)
                }
                (Some(x), _) => format!("{} {unit}{partial}", fmt_num(*x)),
            });
        }
        for &i in &fuse {
            let cpu = median(results[wi][i].iter().filter_map(|s| s.cpu_ms).collect());
            let rss = median(
                results[wi][i]
                    .iter()
                    .filter_map(|s| s.rss_kib.map(|k| k as f64 / 1024.0))
                    .collect(),
            );
            row.push(cpu.map_or("n/a".into(), |c| format!("{c:.0} ms")));
            row.push(rss.map_or("n/a".into(), |r| format!("{r:.1} MiB")));
        }
        println!("| {} |", row.join(" | "));
    }
    println!();
    if let Some(c) = median(cp) {
        println!(
            "reference: `cp --reflink=auto` of the {} lower file on the underlying disk, + fsync: {} ms",
            sc.size_label(),
            fmt_num(c * 1e3)
        );
    }
    println!(
        "walk: lstat of every entry ({} leaf dirs, 5 layers); cold after drop_caches, warm = second walk; \
         readdir: second listing of one merged dir; seq read after drop_caches, 1 MiB reads; \
         seq write: 1 MiB writes + fsync; chmod/copy-up: lower data in the page cache",
        sc.leaves
    );
    for w in &chosen {
        if let Some(n) = &w.note {
            println!("{n}");
        }
    }
    println!(
        "cpu, rss: the daemon's utime+stime and peak RSS (VmHWM, reset first) during the timed part"
    );
    Ok(())
}

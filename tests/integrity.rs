//! Data integrity through the mount.
//!
//! * An fsx-style exerciser: a seeded random sequence of pwrite, pread,
//!   ftruncate (up and down), fallocate (mode 0, KEEP_SIZE, PUNCH_HOLE |
//!   KEEP_SIZE, ZERO_RANGE), mmap reads and MAP_SHARED writes (+ msync),
//!   copy_file_range within the file and from a second file, fsync, fstat,
//!   close + reopen, a second fd (now and then O_APPEND), aligned O_DIRECT
//!   reads and writes through a third one, every read checked against an
//!   in-memory model of the file. It runs on a new file in the upper, on a
//!   lower file (read-only fds first; a later write-open copies it up while
//!   they are still open), on a lower file made metadata-only by a chmod
//!   (`metacopy=on`), each with FUSE passthrough and with `passthrough=0`
//!   (every byte through the daemon), and on kernel overlayfs with the same
//!   seeds as the reference (the model must hold there too). After each run
//!   the upper file on disk, and the file after a remount, must equal the
//!   model.
//! * SQLite: a database rewritten many times (transactions of inserts,
//!   updates and deletes, rollbacks, VACUUM, `journal_mode` WAL and DELETE,
//!   one `sqlite3` process per session) through a strata mount, created in
//!   the upper or started from a lower layer (so it is copied up part way),
//!   must pass `PRAGMA integrity_check`, and every session's output and the
//!   final `.dump` must equal those of the same sessions on a plain
//!   directory, also after a remount.
//!
//! Environment:
//! * `INTEGRITY_OPS`: operations per exerciser run (default 3000; e.g.
//!   100000 for a long run);
//! * `INTEGRITY_SEED`: the base seed (decimal or 0x-hex; default fixed). A
//!   failure prints the seed, the case, the op index and the last ops, and
//!   `INTEGRITY_SEED=S cargo test --test integrity CASE` replays it;
//! * `INTEGRITY_TRACE`: print every op as it runs.
//!
//! Needs root, /dev/fuse, kernel overlayfs, fusermount3 and sqlite3.

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

// ====================================================================== PRNG

/// splitmix64: small, fast, and the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 for n == 0).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    /// True with probability `per_cent` %.
    fn chance(&mut self, per_cent: u64) -> bool {
        self.below(100) < per_cent
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let s = std::env::var(name).ok()?;
    let s = s.trim();
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={s:?} is not a number")))
}

fn ops_count() -> usize {
    env_u64("INTEGRITY_OPS").unwrap_or(3000) as usize
}

fn base_seed() -> u64 {
    env_u64("INTEGRITY_SEED").unwrap_or(0x5742_4154_4131_0001)
}

fn tracing() -> bool {
    std::env::var_os("INTEGRITY_TRACE").is_some()
}

// ============================================================== syscalls

fn check_rc(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn fallocate(f: &File, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: fallocate(2) on an fd we own; no memory is passed.
    check_rc(unsafe { libc::fallocate(f.as_raw_fd(), mode, offset as i64, len as i64) })
}

fn copy_file_range(
    input: &File,
    off_in: u64,
    output: &File,
    off_out: u64,
    len: u64,
) -> io::Result<u64> {
    let mut i = off_in as i64;
    let mut o = off_out as i64;
    // SAFETY: both fds are open files we own; the offsets are locals that
    // outlive the call.
    let n = unsafe {
        libc::copy_file_range(
            input.as_raw_fd(),
            &mut i,
            output.as_raw_fd(),
            &mut o,
            len as usize,
            0,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as u64)
    }
}

/// A shared mapping of a whole file, unmapped on drop.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(f: &File, len: usize, writable: bool) -> io::Result<Mapping> {
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh mapping chosen by the kernel (no fixed address)
        // of an fd we own; len > 0 is checked by the callers.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { ptr, len })
    }

    fn read(&self, off: usize, len: usize) -> Vec<u8> {
        assert!(off + len <= self.len);
        let mut v = vec![0u8; len];
        // SAFETY: the range lies within the mapping, which lies within the
        // file (callers checked its size first), so no SIGBUS; `v` is a
        // distinct allocation of `len` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping((self.ptr as *const u8).add(off), v.as_mut_ptr(), len)
        };
        v
    }

    fn write(&self, off: usize, data: &[u8]) {
        assert!(off + data.len() <= self.len);
        // SAFETY: as in `read`; the mapping is PROT_WRITE (writable = true).
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), (self.ptr as *mut u8).add(off), data.len())
        };
    }

    fn msync(&self) -> io::Result<()> {
        // SAFETY: the whole mapping, which is ours.
        check_rc(unsafe { libc::msync(self.ptr, self.len, libc::MS_SYNC) })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`, once.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// Reads up to `len` bytes at `off`, short only at end of file.
fn pread_full(f: &File, off: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        match f.read_at(&mut buf[filled..], off + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

/// The first offset where `got` and `want` differ, if any.
fn first_difference(got: &[u8], want: &[u8]) -> Option<usize> {
    got.iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .or((got.len() != want.len()).then_some(got.len().min(want.len())))
}

// ============================================================ the exerciser

/// Largest file size and largest single transfer.
const MAX_SIZE: u64 = 512 * 1024;
const MAX_LEN: u64 = 64 * 1024;
const HISTORY: usize = 40;

struct Slot {
    file: File,
    writable: bool,
    append: bool,
    /// Which open this is (for the op log).
    id: u32,
    /// Opened before the copy-up of a lower file: kernel overlayfs maps
    /// the lower file through such an fd (`ovl_mmap` uses the real file
    /// of the open), so a mapping shows stale data there, or SIGBUS.
    before_copy_up: bool,
}

struct Exerciser {
    case: String,
    seed: u64,
    rng: Rng,
    path: PathBuf,
    donor: File,
    donor_model: Vec<u8>,
    model: Vec<u8>,
    slots: Vec<Slot>,
    next_id: u32,
    /// Before this op only read-only opens and reads (a lower file is
    /// copied up by the first write-open, with readers open).
    writes_from: usize,
    zero_range: bool,
    direct_io: bool,
    /// The file came from a lower layer; the mount is kernel overlayfs.
    lower: bool,
    kernel: bool,
    history: VecDeque<String>,
    op: usize,
    counts: BTreeMap<&'static str, u64>,
}

impl Exerciser {
    #[allow(clippy::too_many_arguments)]
    fn new(
        case: &str,
        seed: u64,
        path: &Path,
        donor: &Path,
        model: Vec<u8>,
        donor_model: Vec<u8>,
        writes_from: usize,
        kernel: bool,
    ) -> Exerciser {
        let donor_file =
            File::open(donor).unwrap_or_else(|e| panic!("[{case}] open {}: {e}", donor.display()));
        let mut ex = Exerciser {
            case: case.to_owned(),
            seed,
            rng: Rng::new(seed),
            path: path.to_owned(),
            donor: donor_file,
            donor_model,
            model,
            slots: Vec::new(),
            next_id: 0,
            writes_from,
            zero_range: true,
            direct_io: true,
            lower: writes_from > 0,
            kernel,
            history: VecDeque::new(),
            op: 0,
            counts: BTreeMap::new(),
        };
        ex.open_slot(writes_from == 0);
        ex
    }

    fn fail(&self, what: &str) -> ! {
        let mut msg = format!(
            "[{}] data integrity failure at op #{} (INTEGRITY_SEED={:#x} INTEGRITY_OPS={}; this case's seed {:#x}): {what}\n  model size {}\n  last ops (oldest first):\n",
            self.case,
            self.op,
            base_seed(),
            ops_count(),
            self.seed,
            self.model.len()
        );
        for h in &self.history {
            msg += &format!("    {h}\n");
        }
        panic!("{msg}");
    }

    fn log(&mut self, kind: &'static str, line: String) {
        *self.counts.entry(kind).or_default() += 1;
        let line = format!("#{} {line}", self.op);
        if tracing() {
            eprintln!("[{}] {line}", self.case);
        }
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(line);
    }

    fn ok<T>(&self, what: &str, r: io::Result<T>) -> T {
        r.unwrap_or_else(|e| self.fail(&format!("{what}: {e}")))
    }

    fn writes_allowed(&self) -> bool {
        self.op >= self.writes_from
    }

    /// Opens another fd: read-only, read-write, or (a writable one, now
    /// and then) read-write with O_APPEND.
    fn open_slot(&mut self, writable: bool) {
        let append = writable && self.rng.chance(15);
        self.open_slot_as(writable, append);
    }

    fn open_slot_as(&mut self, writable: bool, append: bool) {
        let id = self.next_id;
        self.next_id += 1;
        let r = OpenOptions::new()
            .read(true)
            .write(writable)
            .append(append)
            .open(&self.path);
        let mode = match (writable, append) {
            (false, _) => "O_RDONLY",
            (true, false) => "O_RDWR",
            (true, true) => "O_RDWR|O_APPEND",
        };
        let file = self.ok(&format!("open fd{id} {mode}"), r);
        self.log("open", format!("open fd{id} {mode}"));
        let before_copy_up = self.lower && !self.writes_allowed();
        self.slots.push(Slot {
            file,
            writable,
            append,
            id,
            before_copy_up,
        });
    }

    fn any_slot(&mut self) -> usize {
        self.rng.below(self.slots.len() as u64) as usize
    }

    /// A writable fd, opening one if there is none.
    fn writable_slot(&mut self) -> usize {
        self.writable_slot_for(true)
    }

    /// A writable fd, with O_APPEND only if `append_ok` (copy_file_range
    /// refuses to write to one: EBADF).
    fn writable_slot_for(&mut self, append_ok: bool) -> usize {
        let w: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].writable && (append_ok || !self.slots[i].append))
            .collect();
        if w.is_empty() {
            if self.slots.len() >= 2 {
                let i = self.any_slot();
                let s = self.slots.remove(i);
                self.log("close", format!("close fd{}", s.id));
            }
            self.open_slot_as(true, false);
            return self.slots.len() - 1;
        }
        w[self.rng.below(w.len() as u64) as usize]
    }

    /// An offset, mostly within the file or just past it.
    fn offset(&mut self) -> u64 {
        let size = self.model.len() as u64;
        if self.rng.chance(75) {
            self.rng.below(size + 1 + 4096).min(MAX_SIZE - 1)
        } else {
            self.rng.below(MAX_SIZE)
        }
    }

    /// A length, log-uniform in 1..=MAX_LEN, within MAX_SIZE from `off`.
    fn length(&mut self, off: u64) -> u64 {
        let bits = self.rng.below(17);
        let len = 1 + self.rng.below(1 << bits);
        len.min(MAX_LEN).min(MAX_SIZE - off).max(1)
    }

    fn fstat_size(&self, slot: usize) -> u64 {
        let r = self.slots[slot].file.metadata();
        self.ok("fstat", r).len()
    }

    fn check_size(&mut self, slot: usize) {
        let got = self.fstat_size(slot);
        self.log(
            "fstat",
            format!("fstat fd{} size {got}", self.slots[slot].id),
        );
        if got != self.model.len() as u64 {
            self.fail(&format!(
                "fstat through fd{} says size {got}, model {}",
                self.slots[slot].id,
                self.model.len()
            ));
        }
    }

    fn compare(&self, what: &str, off: u64, got: &[u8], want: &[u8]) {
        if let Some(d) = first_difference(got, want) {
            let show = |b: &[u8]| {
                b.iter()
                    .skip(d)
                    .take(16)
                    .map(|x| format!("{x:02x}"))
                    .collect::<Vec<_>>()
                    .join("")
            };
            self.fail(&format!(
                "{what}: {} bytes read, {} expected; first difference at file offset {} (got {}…, want {}…)",
                got.len(),
                want.len(),
                off + d as u64,
                show(got),
                show(want)
            ));
        }
    }

    fn model_range(&self, off: u64, len: u64) -> &[u8] {
        let size = self.model.len() as u64;
        let start = off.min(size) as usize;
        let end = (off + len).min(size) as usize;
        &self.model[start..end]
    }

    fn set_range(&mut self, off: u64, data: &[u8]) {
        if data.is_empty() {
            return; // nothing written: no change of size either
        }
        let end = off as usize + data.len();
        if self.model.len() < end {
            self.model.resize(end, 0);
        }
        self.model[off as usize..end].copy_from_slice(data);
    }

    fn zero_range_in_model(&mut self, off: u64, len: u64, keep_size: bool) {
        let size = self.model.len() as u64;
        let end = off + len;
        if !keep_size && end > size {
            self.model.resize(end as usize, 0);
        }
        let size = self.model.len() as u64;
        if off < size {
            self.model[off as usize..end.min(size) as usize].fill(0);
        }
    }

    fn verify_all(&mut self, slot: usize) {
        self.check_size(slot);
        let len = self.model.len();
        let r = pread_full(&self.slots[slot].file, 0, len + 4096);
        let got = self.ok("read whole file", r);
        self.log(
            "verify",
            format!("verify whole file via fd{}", self.slots[slot].id),
        );
        let want = self.model.clone();
        self.compare("whole-file read", 0, &got, &want);
    }

    fn run(&mut self, ops: usize) {
        for i in 0..ops {
            self.op = i;
            if i == self.writes_from && i > 0 {
                // The first write-open, with read-only fds still open.
                if self.slots.len() >= 2 {
                    let s = self.slots.remove(0);
                    self.log("close", format!("close fd{}", s.id));
                }
                self.open_slot(true);
                let last = self.slots.len() - 1;
                self.verify_all(last);
            }
            if i % 500 == 499 {
                let s = self.any_slot();
                self.verify_all(s);
            }
            self.step();
        }
        self.op = ops;
        let s = self.any_slot();
        self.verify_all(s);
    }

    fn step(&mut self) {
        let weights: &[(u64, &str)] = if self.writes_allowed() {
            &[
                (20, "write"),
                (15, "read"),
                (5, "truncate"),
                (4, "falloc"),
                (4, "punch"),
                (3, "zero"),
                (5, "mmap_read"),
                (6, "mmap_write"),
                (5, "cfr_self"),
                (4, "cfr_donor"),
                (2, "fsync"),
                (3, "fstat"),
                (3, "reopen"),
                (1, "reopen_all"),
                (2, "direct"),
            ]
        } else {
            &[
                (40, "read"),
                (15, "mmap_read"),
                (5, "fstat"),
                (6, "reopen"),
                (1, "fsync"),
            ]
        };
        let total: u64 = weights.iter().map(|w| w.0).sum();
        let mut pick = self.rng.below(total);
        let mut op = weights[0].1;
        for (w, name) in weights {
            if pick < *w {
                op = name;
                break;
            }
            pick -= w;
        }
        match op {
            "write" => self.op_write(),
            "read" => self.op_read(),
            "truncate" => self.op_truncate(),
            "falloc" => self.op_falloc(),
            "punch" => self.op_punch(),
            "zero" => self.op_zero(),
            "mmap_read" => self.op_mmap_read(),
            "mmap_write" => self.op_mmap_write(),
            "cfr_self" => self.op_cfr_self(),
            "cfr_donor" => self.op_cfr_donor(),
            "fsync" => self.op_fsync(),
            "direct" => self.op_direct(),
            "fstat" => {
                let s = self.any_slot();
                self.check_size(s);
            }
            "reopen" => self.op_reopen(),
            "reopen_all" => self.op_reopen_all(),
            _ => unreachable!(),
        }
    }

    fn op_write(&mut self) {
        let s = self.writable_slot();
        if self.slots[s].append {
            return self.op_append(s);
        }
        let off = self.offset();
        let len = self.length(off);
        let data = self.rng.bytes(len as usize);
        self.log(
            "write",
            format!("pwrite fd{} off {off} len {len}", self.slots[s].id),
        );
        let r = self.slots[s].file.write_all_at(&data, off);
        self.ok("pwrite", r);
        self.set_range(off, &data);
    }

    /// A write through an O_APPEND fd: at the end, whatever the offset.
    fn op_append(&mut self, s: usize) {
        let size = self.model.len() as u64;
        let off = self.offset();
        let len = self.length(off).min(MAX_SIZE - size);
        if len == 0 {
            return self.op_read();
        }
        let data = self.rng.bytes(len as usize);
        self.log(
            "append",
            format!(
                "pwrite fd{} (O_APPEND) off {off} len {len}: lands at {size}",
                self.slots[s].id
            ),
        );
        let r = self.slots[s].file.write_all_at(&data, off);
        self.ok("pwrite O_APPEND", r);
        self.model.extend_from_slice(&data);
    }

    fn op_read(&mut self) {
        let s = self.any_slot();
        let off = self.offset();
        let len = self.length(off);
        self.log(
            "read",
            format!("pread fd{} off {off} len {len}", self.slots[s].id),
        );
        let r = pread_full(&self.slots[s].file, off, len as usize);
        let got = self.ok("pread", r);
        let want = self.model_range(off, len).to_vec();
        self.compare("pread", off, &got, &want);
    }

    fn op_truncate(&mut self) {
        let s = self.writable_slot();
        let size = self.model.len() as u64;
        let new = if self.rng.chance(50) {
            self.rng.below(size + 1)
        } else {
            self.rng.below(MAX_SIZE)
        };
        self.log(
            "truncate",
            format!("ftruncate fd{} {size} -> {new}", self.slots[s].id),
        );
        let r = self.slots[s].file.set_len(new);
        self.ok("ftruncate", r);
        self.model.resize(new as usize, 0);
    }

    fn op_falloc(&mut self) {
        let s = self.writable_slot();
        let off = self.offset();
        let len = self.length(off);
        let keep = self.rng.chance(30);
        let mode = if keep { libc::FALLOC_FL_KEEP_SIZE } else { 0 };
        self.log(
            "falloc",
            format!(
                "fallocate fd{} mode {mode:#x} off {off} len {len}",
                self.slots[s].id
            ),
        );
        let r = fallocate(&self.slots[s].file, mode, off, len);
        self.ok("fallocate", r);
        if !keep && off + len > self.model.len() as u64 {
            self.model.resize((off + len) as usize, 0);
        }
    }

    fn op_punch(&mut self) {
        let s = self.writable_slot();
        let off = self.offset();
        let len = self.length(off);
        self.log(
            "punch",
            format!(
                "fallocate fd{} PUNCH_HOLE|KEEP_SIZE off {off} len {len}",
                self.slots[s].id
            ),
        );
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        let r = fallocate(&self.slots[s].file, mode, off, len);
        self.ok("fallocate punch", r);
        self.zero_range_in_model(off, len, true);
    }

    fn op_zero(&mut self) {
        if !self.zero_range {
            return self.op_punch();
        }
        let s = self.writable_slot();
        let off = self.offset();
        let len = self.length(off);
        let keep = self.rng.chance(50);
        let mode = libc::FALLOC_FL_ZERO_RANGE | if keep { libc::FALLOC_FL_KEEP_SIZE } else { 0 };
        self.log(
            "zero",
            format!(
                "fallocate fd{} ZERO_RANGE keep={keep} off {off} len {len}",
                self.slots[s].id
            ),
        );
        match fallocate(&self.slots[s].file, mode, off, len) {
            Err(e)
                if e.raw_os_error() == Some(libc::EOPNOTSUPP)
                    && self.counts.get("zero") == Some(&1) =>
            {
                eprintln!(
                    "[{}] FALLOC_FL_ZERO_RANGE not supported here: punching holes instead",
                    self.case
                );
                self.zero_range = false;
            }
            r => {
                self.ok("fallocate zero range", r);
                self.zero_range_in_model(off, len, keep);
            }
        }
    }

    /// A sub-range of the file (which is not empty).
    fn inner_range(&mut self) -> (u64, u64) {
        let size = self.model.len() as u64;
        let off = self.rng.below(size);
        let len = self.length(off).min(size - off);
        (off, len)
    }

    fn op_mmap_read(&mut self) {
        if self.model.is_empty() {
            return self.op_read();
        }
        let s = self.any_slot();
        // Mapping past the end would be SIGBUS: the size must be right first.
        self.check_size(s);
        let (off, len) = self.inner_range();
        if self.kernel && self.slots[s].before_copy_up && self.writes_allowed() {
            // Kernel overlayfs maps the lower file (see `Slot`): a read.
            self.log(
                "read",
                format!(
                    "pread (for mmap) fd{} off {off} len {len}",
                    self.slots[s].id
                ),
            );
            let r = pread_full(&self.slots[s].file, off, len as usize);
            let got = self.ok("pread", r);
            let want = self.model_range(off, len).to_vec();
            return self.compare("pread", off, &got, &want);
        }
        self.log(
            "mmap_read",
            format!("mmap read fd{} off {off} len {len}", self.slots[s].id),
        );
        let m = Mapping::new(&self.slots[s].file, self.model.len(), false);
        let m = self.ok("mmap", m);
        let got = m.read(off as usize, len as usize);
        drop(m);
        let want = self.model_range(off, len).to_vec();
        self.compare("mmap read", off, &got, &want);
    }

    fn op_mmap_write(&mut self) {
        if self.model.is_empty() {
            return self.op_write();
        }
        let s = self.writable_slot();
        self.check_size(s);
        let (off, len) = self.inner_range();
        let sync = self.rng.chance(80);
        let data = self.rng.bytes(len as usize);
        self.log(
            "mmap_write",
            format!(
                "mmap write fd{} off {off} len {len} msync={sync}",
                self.slots[s].id
            ),
        );
        let m = Mapping::new(&self.slots[s].file, self.model.len(), true);
        let m = self.ok("mmap", m);
        m.write(off as usize, &data);
        if sync {
            self.ok("msync", m.msync());
        }
        drop(m);
        self.set_range(off, &data);
    }

    fn op_cfr_self(&mut self) {
        let size = self.model.len() as u64;
        if size == 0 {
            return self.op_write();
        }
        let input = self.any_slot();
        let output = self.writable_slot_for(false);
        let src = self.rng.below(size);
        let len = self.length(src);
        // The same inode: the ranges may not overlap (EINVAL).
        let mut dst = None;
        for _ in 0..8 {
            let d = self.offset().min(MAX_SIZE - len);
            if d + len <= src || src + len <= d {
                dst = Some(d);
                break;
            }
        }
        let Some(dst) = dst else {
            return self.op_read();
        };
        self.log(
            "cfr_self",
            format!(
                "copy_file_range fd{} off {src} -> fd{} off {dst} len {len}",
                self.slots[input].id, self.slots[output].id
            ),
        );
        let r = copy_file_range(
            &self.slots[input].file,
            src,
            &self.slots[output].file,
            dst,
            len,
        );
        let n = self.ok("copy_file_range (same file)", r);
        let want = self.model_range(src, len).to_vec();
        if n != want.len() as u64 {
            self.fail(&format!(
                "copy_file_range copied {n} bytes, {} expected",
                want.len()
            ));
        }
        self.set_range(dst, &want);
    }

    fn op_cfr_donor(&mut self) {
        let output = self.writable_slot_for(false);
        let dlen = self.donor_model.len() as u64;
        let src = self.rng.below(dlen + 100);
        let len = self.length(0);
        let dst = self.offset().min(MAX_SIZE - len);
        self.log(
            "cfr_donor",
            format!(
                "copy_file_range donor off {src} -> fd{} off {dst} len {len}",
                self.slots[output].id
            ),
        );
        let r = copy_file_range(&self.donor, src, &self.slots[output].file, dst, len);
        let n = self.ok("copy_file_range (from the donor)", r);
        let start = src.min(dlen) as usize;
        let end = (src + len).min(dlen) as usize;
        let want = self.donor_model[start..end].to_vec();
        if n != want.len() as u64 {
            self.fail(&format!(
                "copy_file_range copied {n} bytes, {} expected",
                want.len()
            ));
        }
        self.set_range(dst, &want);
    }

    /// An aligned pwrite or pread through a third fd opened with O_DIRECT
    /// for it, beside the open ones (and their page cache).
    fn op_direct(&mut self) {
        if !self.direct_io {
            return self.op_read();
        }
        const BLOCK: u64 = 4096;
        let off = self.offset() / BLOCK * BLOCK;
        let len = (self.length(off) / BLOCK * BLOCK)
            .max(BLOCK)
            .min(MAX_SIZE - off);
        let write = self.rng.chance(50);
        let data = self.rng.bytes(len as usize);
        let what = if write { "pwrite" } else { "pread" };
        self.log("direct", format!("O_DIRECT {what} off {off} len {len}"));
        let r = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&self.path);
        let f = match r {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && self.counts["direct"] == 1 => {
                eprintln!("[{}] O_DIRECT refused here: {e}", self.case);
                self.direct_io = false;
                return;
            }
            r => self.ok("open O_DIRECT", r),
        };
        // An aligned buffer within a bigger one.
        let mut buf = vec![0u8; (len + BLOCK) as usize];
        let skip = buf.as_ptr().align_offset(BLOCK as usize);
        let aligned = &mut buf[skip..skip + len as usize];
        if write {
            aligned.copy_from_slice(&data);
            let r = f.write_at(aligned, off);
            let n = self.ok("O_DIRECT pwrite", r);
            if n as u64 != len {
                self.fail(&format!("O_DIRECT pwrite wrote {n} of {len} bytes"));
            }
            self.set_range(off, &data);
        } else {
            // One call: after a short read at the end, the next offset
            // would not be aligned.
            let r = f.read_at(aligned, off);
            let n = self.ok("O_DIRECT pread", r);
            let want = self.model_range(off, len).to_vec();
            self.compare("O_DIRECT pread", off, &aligned[..n], &want);
        }
    }

    fn op_fsync(&mut self) {
        let s = self.any_slot();
        let data_only = self.rng.chance(50);
        self.log(
            "fsync",
            format!(
                "{} fd{}",
                if data_only { "fdatasync" } else { "fsync" },
                self.slots[s].id
            ),
        );
        let f = &self.slots[s].file;
        let r = if data_only {
            f.sync_data()
        } else {
            f.sync_all()
        };
        self.ok("fsync", r);
    }

    /// Closes one fd and opens another (or a second one).
    fn op_reopen(&mut self) {
        if self.slots.len() == 2 || (self.slots.len() == 1 && self.rng.chance(30)) {
            let i = self.any_slot();
            let s = self.slots.remove(i);
            self.log("close", format!("close fd{}", s.id));
        }
        let writable = self.writes_allowed() && self.rng.chance(60);
        self.open_slot(writable);
    }

    /// Closes every fd, then opens one: the inode has no open file between.
    fn op_reopen_all(&mut self) {
        for s in std::mem::take(&mut self.slots) {
            self.log("close", format!("close fd{}", s.id));
        }
        let writable = self.writes_allowed() && self.rng.chance(70);
        self.open_slot(writable);
    }

    fn summary(&self) -> String {
        self.counts
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

// ================================================================ the cases

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Start {
    /// Created through the mount, in the upper.
    New,
    /// A lower file, copied up by the first write-open.
    Lower,
    /// A lower file, made metadata-only by a chmod (metacopy=on) first.
    Metacopy,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fs {
    Strata,
    Kernel,
}

enum Mounted {
    Strata(StrataMount),
    Kernel(KernelOverlay),
}

impl Mounted {
    fn new(fs: Fs, spec: &MountSpec) -> Mounted {
        match fs {
            Fs::Strata => Mounted::Strata(StrataMount::mount(spec)),
            Fs::Kernel => Mounted::Kernel(KernelOverlay::mount(spec)),
        }
    }

    fn path(&self) -> &Path {
        match self {
            Mounted::Strata(m) => m.path(),
            Mounted::Kernel(m) => m.path(),
        }
    }

    fn unmount(self) {
        match self {
            Mounted::Strata(m) => m.unmount().unwrap(),
            Mounted::Kernel(m) => m.unmount().unwrap(),
        }
    }
}

const FILE: &str = "dir/data.bin";
const DONOR: &str = "dir/donor.bin";

/// A lower file's first content: data, a hole, data, a trailing hole.
fn lower_content(rng: &mut Rng) -> Vec<u8> {
    let mut v = vec![0u8; 200 * 1024];
    rng.fill(&mut v[..64 * 1024]);
    rng.fill(&mut v[128 * 1024..150 * 1024]);
    v
}

fn write_sparse(path: &Path, content: &[u8]) {
    let f = File::create(path).unwrap();
    for (i, chunk) in content.chunks(4096).enumerate() {
        if chunk.iter().any(|&b| b != 0) {
            f.write_all_at(chunk, (i * 4096) as u64).unwrap();
        }
    }
    f.set_len(content.len() as u64).unwrap();
}

fn exercise(case: &str, start: Start, fs: Fs, options: &[&str]) {
    let seed = base_seed()
        ^ match start {
            Start::New => 0,
            Start::Lower => 1,
            Start::Metacopy => 2,
        };
    let ops = ops_count();
    let began = Instant::now();
    let mut rng = Rng::new(seed.rotate_left(17) ^ 0xd0d0);
    let lower = tempdir();
    fs::create_dir(lower.path().join("dir")).unwrap();
    let donor_model = rng.bytes(96 * 1024 + 123);
    let mut model = Vec::new();
    if start != Start::New {
        model = lower_content(&mut rng);
        write_sparse(&lower.path().join(FILE), &model);
        fs::write(lower.path().join(DONOR), &donor_model).unwrap();
    }
    let uw = UpperWork::new();
    let mut spec = MountSpec::new(vec![lower.path().to_owned()]).with_upper(&uw);
    for o in options {
        spec = spec.with_option(o);
    }
    let m = Mounted::new(fs, &spec);
    let path = m.path().join(FILE);
    let donor = m.path().join(DONOR);
    match start {
        Start::New => {
            fs::write(&donor, &donor_model).unwrap();
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&path)
                .unwrap();
        }
        Start::Lower => {}
        Start::Metacopy => {
            let mut p = fs::metadata(&path).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut p, 0o640);
            fs::set_permissions(&path, p).unwrap();
            let upper_file = uw.upper.join(FILE);
            let marked = llistxattr(&upper_file)
                .unwrap_or_default()
                .iter()
                .any(|n| n.ends_with("overlay.metacopy"));
            assert!(
                marked,
                "[{case}] chmod did not make a metadata-only copy: {:?}",
                llistxattr(&upper_file)
            );
        }
    }
    let writes_from = if start == Start::New { 0 } else { ops / 8 };
    let mut ex = Exerciser::new(
        case,
        seed,
        &path,
        &donor,
        model,
        donor_model,
        writes_from,
        fs == Fs::Kernel,
    );
    ex.run(ops);
    let summary = ex.summary();
    let model = std::mem::take(&mut ex.model);
    drop(ex);
    m.unmount();
    let failed = |what: &str, got: &[u8]| -> String {
        format!(
            "[{case}] INTEGRITY_SEED={:#x} INTEGRITY_OPS={ops}: {what}: {} bytes, model {}; first difference at {:?}",
            base_seed(),
            got.len(),
            model.len(),
            first_difference(got, &model)
        )
    };
    let on_disk = fs::read(uw.upper.join(FILE)).unwrap();
    assert!(
        on_disk == model,
        "{}",
        failed("the upper file on disk after unmount", &on_disk)
    );
    let m = Mounted::new(fs, &spec);
    let remounted = fs::read(m.path().join(FILE)).unwrap();
    assert!(
        remounted == model,
        "{}",
        failed("the file after a remount", &remounted)
    );
    m.unmount();
    eprintln!(
        "[{case}] INTEGRITY_SEED={:#x} (case seed {seed:#x}): {ops} ops in {:.1?}, final size {}: {summary}",
        base_seed(),
        began.elapsed(),
        model.len()
    );
}

#[test]
fn fsx_new_file() {
    exercise("fsx_new_file", Start::New, Fs::Strata, &[]);
}

#[test]
fn fsx_new_file_no_passthrough() {
    exercise(
        "fsx_new_file_no_passthrough",
        Start::New,
        Fs::Strata,
        &["passthrough=0"],
    );
}

#[test]
fn fsx_copy_up() {
    exercise("fsx_copy_up", Start::Lower, Fs::Strata, &[]);
}

#[test]
fn fsx_copy_up_no_passthrough() {
    exercise(
        "fsx_copy_up_no_passthrough",
        Start::Lower,
        Fs::Strata,
        &["passthrough=0"],
    );
}

#[test]
fn fsx_metacopy() {
    exercise(
        "fsx_metacopy",
        Start::Metacopy,
        Fs::Strata,
        &["metacopy=on"],
    );
}

#[test]
fn fsx_metacopy_no_passthrough() {
    exercise(
        "fsx_metacopy_no_passthrough",
        Start::Metacopy,
        Fs::Strata,
        &["metacopy=on", "passthrough=0"],
    );
}

/// The same seeds on kernel overlayfs: the model is right there too.
#[test]
fn fsx_kernel_reference() {
    exercise("fsx_kernel_new_file", Start::New, Fs::Kernel, &[]);
    exercise(
        "fsx_kernel_copy_up",
        Start::Lower,
        Fs::Kernel,
        &["redirect_dir=on", "index=on"],
    );
    exercise(
        "fsx_kernel_metacopy",
        Start::Metacopy,
        Fs::Kernel,
        &["redirect_dir=on", "metacopy=on"],
    );
}

// ==================================================================== SQLite

const SQLITE_TIMEOUT: Duration = Duration::from_secs(60);
const SESSIONS: usize = 12;
/// Sessions run before the database goes into a lower layer.
const LOWER_SESSIONS: usize = 5;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

/// The script of one `sqlite3` session: the same for every run.
fn session_script(seed: u64, session: usize) -> String {
    let mut rng = Rng::new(seed ^ (session as u64).wrapping_mul(0x1234_5678_9abc_def1));
    let wal = (session / 2) % 2 == 1;
    let mut s = String::new();
    s += ".bail on\n";
    s += &format!(
        "PRAGMA journal_mode={};\n",
        if wal { "WAL" } else { "DELETE" }
    );
    s += "PRAGMA synchronous=FULL;\n";
    s += "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, k TEXT NOT NULL, v BLOB, n INTEGER);\n";
    s += "CREATE INDEX IF NOT EXISTS t_k ON t(k);\n";
    s += "CREATE TABLE IF NOT EXISTS log(id INTEGER PRIMARY KEY, session INTEGER, note TEXT);\n";
    for tx in 0..6 {
        let rollback = rng.chance(15);
        s += "BEGIN;\n";
        for _ in 0..(20 + rng.below(60)) {
            let len = if rng.chance(5) {
                8000 + rng.below(30000)
            } else {
                rng.below(1500)
            };
            let v = rng.bytes(len as usize);
            s += &format!(
                "INSERT INTO t(k, v, n) VALUES ('k{}-{}', X'{}', {});\n",
                rng.below(1000),
                session,
                hex(&v),
                rng.below(1 << 20)
            );
        }
        for _ in 0..rng.below(6) {
            let n = rng.below(3000) as usize;
            let v = rng.bytes(n);
            s += &format!(
                "UPDATE t SET v = X'{}', n = n + 1 WHERE id % {} = {};\n",
                hex(&v),
                7 + rng.below(10),
                rng.below(7)
            );
        }
        s += &format!(
            "UPDATE t SET k = k || '+' WHERE n % 13 = {};\n",
            rng.below(13)
        );
        s += &format!(
            "DELETE FROM t WHERE n % {} = {};\n",
            9 + rng.below(20),
            rng.below(9)
        );
        s += &format!("INSERT INTO log(session, note) VALUES ({session}, 'tx {tx}');\n");
        s += if rollback { "ROLLBACK;\n" } else { "COMMIT;\n" };
    }
    if session % 4 == 3 {
        s += "VACUUM;\n";
    }
    if wal && rng.chance(50) {
        s += "PRAGMA wal_checkpoint(TRUNCATE);\n";
    }
    s += "SELECT count(*), total(n), total(length(v)), max(id) FROM t;\n";
    s += "SELECT k, n, length(v), hex(substr(v, 1, 8)) FROM t ORDER BY id DESC LIMIT 3;\n";
    s += "PRAGMA integrity_check;\n";
    s
}

/// Runs `script` on `db` with the sqlite3 CLI; its output.
fn sqlite(db: &Path, args: &[&str], script: &str) -> String {
    let file = tempfile::NamedTempFile::new().unwrap();
    fs::write(file.path(), script).unwrap();
    let o = run_with_timeout(
        Command::new("sqlite3")
            .args(["-batch", "-bail"])
            .args(args)
            .arg(db)
            .arg(format!(".read {}", file.path().display())),
        SQLITE_TIMEOUT,
    );
    assert!(
        o.success() && o.stderr.trim().is_empty(),
        "sqlite3 on {}: {o}",
        db.display()
    );
    o.stdout
}

/// The checks at the end: integrity_check says ok; the dump.
fn final_state(db: &Path) -> String {
    let check = sqlite(
        db,
        &["-readonly"],
        "PRAGMA integrity_check;\nPRAGMA journal_mode;\n",
    );
    assert_eq!(
        check.lines().next(),
        Some("ok"),
        "integrity_check of {}: {check}",
        db.display()
    );
    let dump = sqlite(db, &["-readonly"], ".dump\n");
    assert!(
        dump.contains("CREATE TABLE t("),
        "no table in the dump of {}",
        db.display()
    );
    format!("{check}{dump}")
}

/// A read-only session: what a reader of the lower database sees.
const READ_ONLY_SESSION: &str =
    "SELECT count(*), total(n), total(length(v)) FROM t;\nPRAGMA integrity_check;\n";

fn sqlite_available() -> bool {
    run_with_timeout(Command::new("sqlite3").arg("-version"), SQLITE_TIMEOUT).success()
}

fn sqlite_case(case: &str, from_lower: bool, options: &[&str]) {
    assert!(
        sqlite_available(),
        "sqlite3 is not installed (apt-get install sqlite3)"
    );
    let began = Instant::now();
    let seed = base_seed() ^ 0x5117e;
    let first = if from_lower { LOWER_SESSIONS } else { 0 };
    // The reference: every session on a plain directory.
    let plain = tempdir();
    let reference_db = plain.path().join("db.sqlite");
    let mut want = Vec::new();
    for i in 0..SESSIONS {
        if i == first && from_lower {
            // As the lower layer's copy was left.
            sqlite(&reference_db, &[], "PRAGMA journal_mode=DELETE;\n");
            want.push(sqlite(&reference_db, &["-readonly"], READ_ONLY_SESSION));
        }
        let out = sqlite(&reference_db, &[], &session_script(seed, i));
        if i >= first {
            want.push(out);
        }
    }
    let want_final = final_state(&reference_db);
    // The lower layer: the first sessions, ending in DELETE mode.
    let lower = tempdir();
    fs::create_dir(lower.path().join("data")).unwrap();
    if from_lower {
        let db = lower.path().join("data/db.sqlite");
        for i in 0..first {
            sqlite(&db, &[], &session_script(seed, i));
        }
        sqlite(&db, &[], "PRAGMA journal_mode=DELETE;\n");
        let names: Vec<_> = fs::read_dir(lower.path().join("data"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names.len(),
            1,
            "[{case}] the lower layer should hold the database alone: {names:?}"
        );
    }
    let uw = UpperWork::new();
    let mut spec = MountSpec::new(vec![lower.path().to_owned()]).with_upper(&uw);
    for o in options {
        spec = spec.with_option(o);
    }
    let m = StrataMount::mount(&spec);
    let db = m.path().join("data/db.sqlite");
    let mut got = Vec::new();
    if from_lower {
        got.push(sqlite(&db, &["-readonly"], READ_ONLY_SESSION));
        assert!(
            !uw.upper.join("data/db.sqlite").exists(),
            "[{case}] a read-only session copied the database up"
        );
        if options.contains(&"metacopy=on") {
            let mut p = fs::metadata(&db).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut p, 0o600);
            fs::set_permissions(&db, p).unwrap();
            assert!(
                llistxattr(&uw.upper.join("data/db.sqlite"))
                    .unwrap_or_default()
                    .iter()
                    .any(|n| n.ends_with("overlay.metacopy")),
                "[{case}] chmod did not make the database metadata-only"
            );
        }
    }
    // A reader that opened the database before any session wrote it (and,
    // from a lower layer, before the copy-up) reads what the writers left.
    let early_reader = File::open(&db).ok();
    for i in first..SESSIONS {
        got.push(sqlite(&db, &[], &session_script(seed, i)));
    }
    let got_final = final_state(&db);
    if let Some(reader) = early_reader {
        let now = fs::read(&db).unwrap();
        let seen = pread_full(&reader, 0, now.len() + 4096).unwrap();
        assert!(
            seen == now,
            "[{case}] an fd opened before the sessions reads other content than a new open \
             ({} bytes, {} now; first difference at {:?})",
            seen.len(),
            now.len(),
            first_difference(&seen, &now)
        );
    }
    m.unmount().unwrap();
    let m = StrataMount::mount(&spec);
    let remounted = final_state(&m.path().join("data/db.sqlite"));
    m.unmount().unwrap();
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        assert!(
            w == g,
            "[{case}] session {} output differs:\n  plain: {w}\n  strata: {g}",
            first + i
        );
    }
    assert_eq!(want.len(), got.len());
    let same = |what: &str, g: &str| {
        assert!(
            want_final == g,
            "[{case}] {what} differs from the plain directory's (first difference at byte {:?})",
            first_difference(g.as_bytes(), want_final.as_bytes())
        );
    };
    same("the final integrity check and dump", &got_final);
    same("after a remount, the integrity check and dump", &remounted);
    eprintln!(
        "[{case}] {} sessions, dump of {} bytes, in {:.1?}",
        SESSIONS - first,
        want_final.len(),
        began.elapsed()
    );
}

#[test]
fn sqlite_in_upper() {
    sqlite_case("sqlite_in_upper", false, &[]);
}

#[test]
fn sqlite_in_upper_no_passthrough() {
    sqlite_case("sqlite_in_upper_no_passthrough", false, &["passthrough=0"]);
}

#[test]
fn sqlite_from_lower() {
    sqlite_case("sqlite_from_lower", true, &[]);
}

#[test]
fn sqlite_from_lower_metacopy() {
    sqlite_case("sqlite_from_lower_metacopy", true, &["metacopy=on"]);
}

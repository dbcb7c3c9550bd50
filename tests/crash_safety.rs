//! Crash safety of copy-up: the daemon is killed (SIGKILL) at moments
//! spread over the copy-up of a large lower file; the upper then holds the
//! whole copy or none, never a partial file, the lower is untouched, and
//! the next mount removes what the dead daemon left in the workdir and
//! shows the file whole.
//!
//! Needs root and /dev/fuse.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::thread;
use std::time::Duration;

use common::*;

const SIZE: usize = 128 << 20;

/// Whether the first `len` bytes of `a` and `b` are equal.
fn same_prefix(a: &Path, b: &Path, len: usize) -> bool {
    let (mut a, mut b) = (File::open(a).unwrap(), File::open(b).unwrap());
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut left = len;
    while left > 0 {
        let n = left.min(x.len());
        a.read_exact(&mut x[..n]).unwrap();
        b.read_exact(&mut y[..n]).unwrap();
        if x[..n] != y[..n] {
            return false;
        }
        left -= n;
    }
    true
}

fn workdir_leftovers(work: &Path) -> Vec<String> {
    fs::read_dir(work)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("#strata-tmp."))
        .collect()
}

#[test]
fn killed_during_copy_up() {
    let layers = tempdir();
    let lower = layers.path().join("lower");
    fs::create_dir(&lower).unwrap();
    {
        // Data everywhere (no holes to skip), different in every MiB.
        let mut f = File::create(lower.join("big")).unwrap();
        let mut chunk = vec![0u8; 1 << 20];
        for i in 0..SIZE >> 20 {
            chunk
                .iter_mut()
                .enumerate()
                .for_each(|(j, b)| *b = (i * 7 + j) as u8);
            f.write_all(&chunk).unwrap();
        }
    }
    // What the lower file must still be at the end.
    let pristine = layers.path().join("pristine");
    fs::copy(lower.join("big"), &pristine).unwrap();
    // How long one copy-up takes here, so that the kills land at fixed
    // fractions of it whatever the machine's speed.
    let time_one = || {
        let uw = UpperWork::new();
        let m = StrataMount::mount(&MountSpec::new(vec![lower.clone()]).with_upper(&uw));
        let started = std::time::Instant::now();
        OpenOptions::new()
            .append(true)
            .open(m.path().join("big"))
            .unwrap();
        let took = started.elapsed();
        m.unmount().unwrap();
        took
    };
    // The second: the lower file is in the page cache then, as below.
    let copy_up = time_one().min(time_one());
    let mut delays: Vec<u64> = [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.5, 3.0]
        .iter()
        .map(|f| (copy_up.as_secs_f64() * 1000.0 * f) as u64)
        .collect();
    let mut outcomes = Vec::new();
    let mut round = 0;
    while let Some(delay_ms) = delays.get(round).copied() {
        round += 1;
        let uw = UpperWork::new();
        let spec = MountSpec::new(vec![lower.clone()]).with_upper(&uw);
        let m = StrataMount::mount(&spec);
        let target = m.path().join("big");
        let writer = thread::spawn(move || {
            // The first write-open copies the file up; then one more line.
            OpenOptions::new()
                .append(true)
                .open(&target)
                .and_then(|mut f| f.write_all(b"tail"))
        });
        thread::sleep(Duration::from_millis(delay_ms));
        for &pid in m.daemon_pids() {
            // SAFETY: plain kill(2) of the daemon this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let wrote = writer.join().unwrap().is_ok();
        drop(m); // cleans up the dead mount

        let upper_copy = uw.upper.join("big");
        let state = match fs::metadata(&upper_copy) {
            Err(_) => "none".to_string(),
            Ok(meta) => {
                let len = meta.len() as usize;
                assert!(
                    len == SIZE || len == SIZE + 4,
                    "killed after {delay_ms} ms: a partial copy of {len} bytes in the upper"
                );
                assert!(
                    same_prefix(&upper_copy, &pristine, SIZE),
                    "killed after {delay_ms} ms: the upper copy's content differs"
                );
                format!("whole ({len} bytes)")
            }
        };
        let leftovers = !workdir_leftovers(&uw.work).is_empty();
        outcomes.push(format!(
            "{delay_ms} ms: {state}, workdir leftovers {leftovers}, write {wrote}"
        ));
        assert!(
            fs::metadata(lower.join("big")).unwrap().len() as usize == SIZE
                && same_prefix(&lower.join("big"), &pristine, SIZE),
            "the lower file changed"
        );

        let m = StrataMount::mount(&spec);
        assert_eq!(
            workdir_leftovers(&uw.work),
            Vec::<String>::new(),
            "the next mount left the dead daemon's files in the workdir"
        );
        let merged = m.path().join("big");
        let len = fs::metadata(&merged).unwrap().len() as usize;
        assert!(len == SIZE || len == SIZE + 4, "merged size {len}");
        assert!(same_prefix(&merged, &pristine, SIZE));
        m.unmount().unwrap();
        let mid = outcomes.iter().any(|o| o.contains("leftovers true"));
        let whole = outcomes.iter().any(|o| o.contains("whole"));
        if round == delays.len() && round < 16 {
            let ms = copy_up.as_secs_f64() * 1000.0;
            if !mid {
                delays.push((ms * 0.4) as u64 + round as u64);
            } else if !whole {
                delays.push((ms * 2.0 * round as f64) as u64);
            }
        }
    }
    eprintln!("one copy-up took {copy_up:?}");
    // Kills landed in the middle of a copy (it left a temporary file) and
    // after it, at least once each (a few more rounds in the middle if
    // timing noise kept them from it); else the delays no longer span a
    // copy-up on this machine.
    eprintln!("{outcomes:#?}");
    assert!(
        outcomes.iter().any(|o| o.contains("leftovers true")),
        "{outcomes:#?}"
    );
    assert!(
        outcomes.iter().any(|o| o.contains("whole")),
        "{outcomes:#?}"
    );
}

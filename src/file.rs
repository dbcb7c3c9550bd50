//! Open file and directory handles.
//!
//! The FUSE file handle is a key into a sharded map; the value holds what the
//! open needs afterwards: the layer fd of a file, or the snapshot listing of a
//! directory.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

use crate::readdir::MergedEntry;
use crate::sys;

#[derive(Debug)]
pub struct OpenFile {
    fd: OwnedFd,
}

impl OpenFile {
    pub fn new(fd: OwnedFd) -> OpenFile {
        OpenFile { fd }
    }

    /// Reads up to `size` bytes at `offset`, short only at end of file.
    pub fn read(&self, offset: u64, size: usize) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; size];
        let mut filled = 0;
        while filled < size {
            let n = sys::pread(self.fd.as_fd(), &mut buf[filled..], offset + filled as u64)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        buf.truncate(filled);
        Ok(buf)
    }
}

#[derive(Debug)]
pub struct OpenDir {
    /// The directory's own inode and its parent's, for `.` and `..`.
    pub ino: u64,
    pub parent_ino: u64,
    pub entries: Arc<[MergedEntry]>,
}

/// Handles of one kind, numbered from 1.
#[derive(Debug)]
pub struct HandleTable<T> {
    next: AtomicU64,
    open: DashMap<u64, Arc<T>>,
}

impl<T> Default for HandleTable<T> {
    fn default() -> Self {
        HandleTable {
            next: AtomicU64::new(1),
            open: DashMap::new(),
        }
    }
}

impl<T> HandleTable<T> {
    pub fn insert(&self, value: T) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.open.insert(fh, Arc::new(value));
        fh
    }

    pub fn get(&self, fh: u64) -> Option<Arc<T>> {
        self.open.get(&fh).map(|v| v.clone())
    }

    pub fn remove(&self, fh: u64) -> Option<Arc<T>> {
        self.open.remove(&fh).map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

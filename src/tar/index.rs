//! A tar archive read once into a compact index of the tree it holds.
//!
//! The reader understands ustar, GNU (`L`/`K` long names and links, base-256
//! numbers) and POSIX pax (`x` and `g` extended headers: `path`,
//! `linkpath`, `size`, `uid`, `gid`, `mtime`, `SCHILY.xattr.*`,
//! `SCHILY.devmajor`/`devminor`). It builds the tree that extracting the
//! archive would leave: later entries of a path replace earlier ones (a
//! directory over a directory only changes its attributes), parents the
//! archive leaves out are made as directories with default attributes
//! (0755, root, mtime 0), and hard links share one inode. Only headers are
//! read: file data stays where it is in the archive, and the index keeps its
//! offset.
//!
//! Anything that is not a well-formed archive is refused with an error that
//! says where: a bad checksum, a header or data cut short, a missing
//! end-of-archive marker, an absolute name or a `..` component, a name
//! through a non-directory, a hard link to nothing before it, and entry
//! types that cannot be shown as they are (GNU sparse and multi-volume).
//! Nothing in an archive can make the reader panic or resolve a name
//! outside the tree.
//!
//! Layout: nodes (names) in breadth-first order, so the children of a
//! directory are one run of node ids, sorted by name for a binary search;
//! inodes apart from names; names, symlink targets and xattrs in two byte
//! arenas. About 100 bytes an entry.

use std::collections::HashMap;
use std::io;

use super::read::{Entry, Kind, Reader, components};

/// Tar's block size.
pub const BLOCK: u64 = 512;

/// A node: one name in the tree.
pub type NodeId = u32;

/// The root directory's node.
pub const ROOT: NodeId = 0;

/// A range of one of the arenas.
#[derive(Clone, Copy, Debug, Default)]
struct Span {
    off: u32,
    len: u32,
}

/// One object of the archive, shared by all its names (hard links).
#[derive(Clone, Debug)]
pub struct Inode {
    /// File type and permission bits, as in `st_mode`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, u32),
    /// Bytes of data (regular files).
    pub size: u64,
    /// Where the data starts, from the start of the archive.
    pub data: u64,
    pub rdev: u64,
    /// Names in the tree (for a directory: 2 + its subdirectories).
    pub nlink: u32,
    /// The symlink target, in `strings`.
    target: Span,
    /// A run of `xattrs`.
    xattrs: Span,
}

impl Inode {
    pub fn kind(&self) -> u32 {
        self.mode & libc::S_IFMT
    }

    pub fn is_dir(&self) -> bool {
        self.kind() == libc::S_IFDIR
    }
}

#[derive(Clone, Copy, Debug)]
struct Node {
    name: Span,
    inode: u32,
    first_child: u32,
    children: u32,
}

/// The tree of one archive.
#[derive(Debug)]
pub struct Index {
    nodes: Vec<Node>,
    inodes: Vec<Inode>,
    /// Node names.
    names: Vec<u8>,
    /// Symlink targets, xattr names and values.
    strings: Vec<u8>,
    /// (name, value) spans in `strings`.
    xattrs: Vec<(Span, Span)>,
}

pub(super) fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

pub(super) fn show(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

impl Index {
    /// Reads every header of `archive` (a whole tar file in memory).
    pub fn build(archive: &[u8]) -> io::Result<Index> {
        let mut builder = Builder::new();
        Reader::new(archive).for_each(|entry| builder.add(entry))?;
        builder.finish()
    }

    /// The number of names in the tree, the root included.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The number of objects (hard links count once).
    pub fn inode_count(&self) -> usize {
        self.inodes.len()
    }

    pub fn name(&self, node: NodeId) -> &[u8] {
        span(&self.names, self.nodes[node as usize].name)
    }

    /// The inode of `node`, and its number (stable: the order in which the
    /// archive's entries made it).
    pub fn inode(&self, node: NodeId) -> (u32, &Inode) {
        let i = self.nodes[node as usize].inode;
        (i, &self.inodes[i as usize])
    }

    /// The name `name` in directory `dir`.
    pub fn child(&self, dir: NodeId, name: &[u8]) -> Option<NodeId> {
        let n = &self.nodes[dir as usize];
        let (first, count) = (n.first_child as usize, n.children as usize);
        let kids = &self.nodes[first..first + count];
        kids.binary_search_by(|k| span(&self.names, k.name).cmp(name))
            .ok()
            .map(|i| (first + i) as NodeId)
    }

    /// The names in directory `dir`, sorted.
    pub fn children(&self, dir: NodeId) -> impl Iterator<Item = NodeId> + '_ {
        let n = &self.nodes[dir as usize];
        n.first_child..n.first_child + n.children
    }

    /// The node at `a/b/c` (no leading or trailing slash; empty for the
    /// root). ENOENT where a name is missing, ENOTDIR where a component is
    /// not a directory, ELOOP where it is a symlink (no symlink is ever
    /// followed, as in a directory layer).
    pub fn lookup(&self, path: &[u8]) -> io::Result<NodeId> {
        let mut node = ROOT;
        if path.is_empty() || path == b"." {
            return Ok(node);
        }
        for part in path.split(|&b| b == b'/') {
            let (_, inode) = self.inode(node);
            match inode.kind() {
                libc::S_IFDIR => {}
                libc::S_IFLNK => return Err(io::Error::from_raw_os_error(libc::ELOOP)),
                _ => return Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
            }
            node = self
                .child(node, part)
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        }
        Ok(node)
    }

    /// The target of a symlink inode.
    pub fn target(&self, inode: &Inode) -> &[u8] {
        span(&self.strings, inode.target)
    }

    /// The extended attributes of an inode, in archive order.
    pub fn xattrs<'a>(&'a self, inode: &Inode) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
        let s = inode.xattrs;
        self.xattrs[s.off as usize..(s.off + s.len) as usize]
            .iter()
            .map(|&(n, v)| (span(&self.strings, n), span(&self.strings, v)))
    }
}

fn span(arena: &[u8], s: Span) -> &[u8] {
    &arena[s.off as usize..s.off as usize + s.len as usize]
}

fn push(arena: &mut Vec<u8>, bytes: &[u8]) -> io::Result<Span> {
    let off = u32::try_from(arena.len())
        .ok()
        .filter(|off| off.checked_add(bytes.len() as u32).is_some() && bytes.len() < 1 << 31)
        .ok_or_else(|| invalid("the archive's names and xattrs exceed 4 GiB".into()))?;
    arena.extend_from_slice(bytes);
    Ok(Span {
        off,
        len: bytes.len() as u32,
    })
}

// ----------------------------------------------------------------- builder

struct BNode {
    inode: u32,
    is_dir: bool,
}

struct Builder {
    nodes: Vec<BNode>,
    /// (parent, name) → node, for the names in the tree now.
    children: HashMap<(u32, Vec<u8>), u32>,
    inodes: Vec<Inode>,
    strings: Vec<u8>,
    xattrs: Vec<(Span, Span)>,
}

/// A directory the archive implies but does not hold.
fn implicit_dir() -> Inode {
    Inode {
        mode: libc::S_IFDIR | 0o755,
        uid: 0,
        gid: 0,
        mtime: (0, 0),
        size: 0,
        data: 0,
        rdev: 0,
        nlink: 0,
        target: Span::default(),
        xattrs: Span::default(),
    }
}

impl Builder {
    fn new() -> Builder {
        Builder {
            nodes: vec![BNode {
                inode: 0,
                is_dir: true,
            }],
            children: HashMap::new(),
            inodes: vec![implicit_dir()],
            strings: Vec::new(),
            xattrs: Vec::new(),
        }
    }

    fn new_inode(&mut self, inode: Inode) -> io::Result<u32> {
        let id = u32::try_from(self.inodes.len())
            .map_err(|_| invalid("too many entries in the archive".into()))?;
        self.inodes.push(inode);
        Ok(id)
    }

    fn new_node(&mut self, parent: u32, name: &[u8], inode: u32, is_dir: bool) -> io::Result<u32> {
        let id = u32::try_from(self.nodes.len())
            .map_err(|_| invalid("too many entries in the archive".into()))?;
        self.nodes.push(BNode { inode, is_dir });
        self.children.insert((parent, name.to_vec()), id);
        Ok(id)
    }

    /// The directory at `parts`, made (with default attributes) where the
    /// archive left it out.
    fn dir(&mut self, parts: &[&[u8]], entry: &Entry) -> io::Result<u32> {
        let mut node = 0;
        for (i, part) in parts.iter().enumerate() {
            node = match self.children.get(&(node, part.to_vec())) {
                Some(&n) if self.nodes[n as usize].is_dir => n,
                Some(_) => {
                    return Err(invalid(format!(
                        "malformed tar at byte {}: '{}' is inside '{}', which is not a directory",
                        entry.at,
                        show(&entry.name),
                        show(&parts[..=i].join(&b'/'))
                    )));
                }
                None => {
                    let inode = self.new_inode(implicit_dir())?;
                    self.new_node(node, part, inode, true)?
                }
            };
        }
        Ok(node)
    }

    fn add(&mut self, entry: Entry) -> io::Result<()> {
        let at = entry.at;
        let parts = components(&entry.name)
            .map_err(|e| invalid(format!("malformed tar at byte {at}: {e}")))?;
        let Some((last, parents)) = parts.split_last() else {
            // The root itself (`./`).
            if entry.kind != Kind::Dir {
                return Err(invalid(format!(
                    "malformed tar at byte {at}: the archive's root is not a directory"
                )));
            }
            self.inodes[0] = self.inode_of(&entry)?;
            return Ok(());
        };
        let parent = self.dir(parents, &entry)?;
        let existing = self.children.get(&(parent, last.to_vec())).copied();
        match entry.kind {
            Kind::HardLink => {
                let target = components(&entry.link)
                    .map_err(|e| invalid(format!("malformed tar at byte {at}: hard link: {e}")))?;
                let node = self
                    .find(&target)
                    .filter(|&n| !self.nodes[n as usize].is_dir);
                let Some(node) = node else {
                    return Err(invalid(format!(
                        "malformed tar at byte {at}: hard link '{}' to '{}', which is no \
                         earlier non-directory entry",
                        show(&entry.name),
                        show(&entry.link)
                    )));
                };
                let inode = self.nodes[node as usize].inode;
                self.new_node(parent, last, inode, false)?;
            }
            Kind::Dir if existing.is_some_and(|n| self.nodes[n as usize].is_dir) => {
                // A directory again: new attributes, the same entries.
                let node = existing.expect("checked");
                let inode = self.inode_of(&entry)?;
                self.inodes[self.nodes[node as usize].inode as usize] = inode;
            }
            kind => {
                // Replaces whatever had the name (a directory with all
                // that is in it).
                let inode = self.inode_of(&entry)?;
                let inode = self.new_inode(inode)?;
                self.new_node(parent, last, inode, kind == Kind::Dir)?;
            }
        }
        Ok(())
    }

    /// The node at `parts` in the tree as it is now.
    fn find(&self, parts: &[&[u8]]) -> Option<u32> {
        let mut node = 0;
        for part in parts {
            if !self.nodes[node as usize].is_dir {
                return None;
            }
            node = *self.children.get(&(node, part.to_vec()))?;
        }
        Some(node)
    }

    fn inode_of(&mut self, entry: &Entry) -> io::Result<Inode> {
        let at = entry.at;
        let kind = match entry.kind {
            Kind::File => libc::S_IFREG,
            Kind::Symlink => libc::S_IFLNK,
            Kind::Char => libc::S_IFCHR,
            Kind::Block => libc::S_IFBLK,
            Kind::Dir => libc::S_IFDIR,
            Kind::Fifo => libc::S_IFIFO,
            Kind::HardLink => unreachable!("hard links share their target's inode"),
        };
        let target = if entry.kind == Kind::Symlink {
            if entry.link.is_empty() || entry.link.contains(&0) {
                return Err(invalid(format!(
                    "malformed tar at byte {at}: symlink '{}' has an empty or invalid target",
                    show(&entry.name)
                )));
            }
            push(&mut self.strings, &entry.link)?
        } else {
            Span::default()
        };
        let first = self.xattrs.len();
        for (name, value) in &entry.xattrs {
            let n = push(&mut self.strings, name)?;
            let v = push(&mut self.strings, value)?;
            self.xattrs.push((n, v));
        }
        let xattrs = Span {
            off: u32::try_from(first).map_err(|_| invalid("too many xattrs".into()))?,
            len: (self.xattrs.len() - first) as u32,
        };
        Ok(Inode {
            mode: kind | entry.perm,
            uid: entry.uid,
            gid: entry.gid,
            mtime: entry.mtime,
            size: if entry.kind == Kind::File {
                entry.size
            } else {
                0
            },
            data: entry.data,
            rdev: if matches!(entry.kind, Kind::Char | Kind::Block) {
                entry.rdev
            } else {
                0
            },
            nlink: 0,
            target,
            xattrs,
        })
    }

    /// The final tree: nodes breadth first, each directory's children one
    /// sorted run; names no longer in the tree are dropped.
    fn finish(self) -> io::Result<Index> {
        let Builder {
            nodes: bnodes,
            children,
            mut inodes,
            strings,
            xattrs,
        } = self;
        let mut by_parent: Vec<Vec<(Vec<u8>, u32)>> = Vec::new();
        by_parent.resize_with(bnodes.len(), Vec::new);
        for ((parent, name), child) in children {
            by_parent[parent as usize].push((name, child));
        }
        let mut names = Vec::new();
        let mut nodes = vec![Node {
            name: Span::default(),
            inode: bnodes[0].inode,
            first_child: 0,
            children: 0,
        }];
        let mut queue: Vec<u32> = vec![0];
        let mut next = 0;
        while next < queue.len() {
            let mut kids = std::mem::take(&mut by_parent[queue[next] as usize]);
            kids.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            nodes[next].first_child = nodes.len() as u32;
            nodes[next].children = kids.len() as u32;
            for (name, child) in kids {
                let name = push(&mut names, &name)?;
                nodes.push(Node {
                    name,
                    inode: bnodes[child as usize].inode,
                    first_child: 0,
                    children: 0,
                });
                queue.push(child);
            }
            next += 1;
        }
        for node in &nodes {
            let inode = &mut inodes[node.inode as usize];
            inode.nlink += if inode.is_dir() { 2 } else { 1 };
        }
        for i in 0..nodes.len() {
            let node = nodes[i];
            if !inodes[node.inode as usize].is_dir() {
                continue;
            }
            let subdirs = (node.first_child..node.first_child + node.children)
                .filter(|&c| inodes[nodes[c as usize].inode as usize].is_dir())
                .count() as u32;
            inodes[node.inode as usize].nlink += subdirs;
        }
        Ok(Index {
            nodes,
            inodes,
            names,
            strings,
            xattrs,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    //! Archives made by hand for tests.

    /// A tar writer for tests: ustar headers, optional pax records.
    #[derive(Default)]
    pub(crate) struct TestTar(pub Vec<u8>);

    impl TestTar {
        pub(crate) fn header(
            &mut self,
            name: &[u8],
            typeflag: u8,
            mode: u32,
            size: u64,
            link: &[u8],
        ) {
            let mut h = [0u8; 512];
            h[..name.len()].copy_from_slice(name);
            h[100..107].copy_from_slice(format!("{mode:07o}").as_bytes());
            h[108..115].copy_from_slice(b"0000000");
            h[116..123].copy_from_slice(b"0000000");
            h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
            h[136..147].copy_from_slice(format!("{:011o}", 1_600_000_000).as_bytes());
            h[156] = typeflag;
            h[157..157 + link.len()].copy_from_slice(link);
            h[257..263].copy_from_slice(b"ustar\0");
            h[263..265].copy_from_slice(b"00");
            h[329..336].copy_from_slice(b"0000001");
            h[337..344].copy_from_slice(b"0000003");
            h[148..156].copy_from_slice(b"        ");
            let sum: u32 = h.iter().map(|&b| b as u32).sum();
            h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
            self.0.extend_from_slice(&h);
        }

        pub(crate) fn data(&mut self, data: &[u8]) {
            self.0.extend_from_slice(data);
            let pad = (512 - data.len() % 512) % 512;
            self.0.extend(std::iter::repeat_n(0, pad));
        }

        pub(crate) fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
            self.header(name.as_bytes(), b'0', 0o644, data.len() as u64, b"");
            self.data(data);
            self
        }

        pub(crate) fn entry(&mut self, name: &str, typeflag: u8, link: &str) -> &mut Self {
            self.header(name.as_bytes(), typeflag, 0o755, 0, link.as_bytes());
            self
        }

        pub(crate) fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
            let mut body = Vec::new();
            for (k, v) in records {
                let rest = k.len() + v.len() + 3;
                let mut len = rest + 1;
                while len.to_string().len() + rest != len {
                    len += 1;
                }
                body.extend_from_slice(format!("{len} {k}=").as_bytes());
                body.extend_from_slice(v);
                body.push(b'\n');
            }
            self.header(b"PaxHeader", b'x', 0o644, body.len() as u64, b"");
            self.data(&body);
            self
        }

        pub(crate) fn long_name(&mut self, name: &[u8]) -> &mut Self {
            let mut body = name.to_vec();
            body.push(0);
            self.header(b"././@LongLink", b'L', 0o644, body.len() as u64, b"");
            self.data(&body);
            self
        }

        pub(crate) fn end(&mut self) -> Vec<u8> {
            let mut v = std::mem::take(&mut self.0);
            v.extend(std::iter::repeat_n(0, 1024));
            v
        }
    }

    /// An archive of one empty file `name` with pax records.
    pub(crate) fn pax_file(name: &str, records: &[(&str, &[u8])]) -> Vec<u8> {
        TestTar::default().pax(records).file(name, b"").end()
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::TestTar;
    use super::*;

    fn node<'a>(index: &'a Index, path: &str) -> (u32, &'a Inode) {
        index.inode(index.lookup(path.as_bytes()).unwrap())
    }

    fn names(index: &Index, path: &str) -> Vec<String> {
        let dir = index.lookup(path.as_bytes()).unwrap();
        index.children(dir).map(|c| show(index.name(c))).collect()
    }

    #[test]
    fn tree_with_implicit_parents_links_and_duplicates() {
        let tar = TestTar::default()
            .file("./a/b/c.txt", b"hello")
            .entry("a/", b'5', "")
            .entry("a/link", b'2', "b/c.txt")
            .entry("a/hard", b'1', "a/b/c.txt")
            .file("x", b"old")
            .file("x", b"new!")
            .entry("d/", b'5', "")
            .file("d/inner", b"gone")
            .file("d", b"file now")
            .entry("dev/null", b'3', "")
            .end();
        let index = Index::build(&tar).unwrap();
        assert_eq!(names(&index, ""), ["a", "d", "dev", "x"]);
        assert_eq!(names(&index, "a"), ["b", "hard", "link"]);
        let (ci, c) = node(&index, "a/b/c.txt");
        let (hi, h) = node(&index, "a/hard");
        assert_eq!(ci, hi);
        assert_eq!(c.nlink, 2);
        assert_eq!(&tar[c.data as usize..][..5], b"hello");
        assert_eq!(h.size, 5);
        let (_, b) = node(&index, "a/b");
        assert_eq!(b.mode, libc::S_IFDIR | 0o755, "implicit parent");
        assert_eq!(b.mtime, (0, 0));
        let (_, a) = node(&index, "a");
        assert_eq!(a.mtime, (1_600_000_000, 0), "explicit directory attributes");
        let (_, l) = node(&index, "a/link");
        assert_eq!(index.target(l), b"b/c.txt");
        let (_, x) = node(&index, "x");
        assert_eq!(&tar[x.data as usize..][..x.size as usize], b"new!");
        let (_, d) = node(&index, "d");
        assert_eq!(d.kind(), libc::S_IFREG, "a file replaces the directory");
        assert!(index.lookup(b"d/inner").is_err());
        let (_, null) = node(&index, "dev/null");
        assert_eq!(null.rdev, libc::makedev(1, 3));
        assert_eq!(
            index.lookup(b"a/link/x").unwrap_err().raw_os_error(),
            Some(libc::ELOOP)
        );
        assert_eq!(
            index.lookup(b"x/y").unwrap_err().raw_os_error(),
            Some(libc::ENOTDIR)
        );
        assert_eq!(
            index.lookup(b"nope").unwrap_err().raw_os_error(),
            Some(libc::ENOENT)
        );
    }

    #[test]
    fn pax_and_gnu_long_names() {
        let long = "d/".to_string() + &"n".repeat(200) + "/" + &"m".repeat(250);
        let tar = TestTar::default()
            .pax(&[
                ("path", long.as_bytes()),
                ("mtime", b"1700000000.25"),
                ("uid", b"100000"),
                ("SCHILY.xattr.user.k", b"v\0bin"),
                ("SCHILY.xattr.user.empty", b""),
            ])
            .file("ignored", b"data")
            .long_name(b"gnu/".repeat(100).as_slice())
            .file("short", b"")
            .pax(&[("mtime", b"-1.5")])
            .file("neg", b"")
            .end();
        let index = Index::build(&tar).unwrap();
        let (_, f) = node(&index, &long);
        assert_eq!(f.mtime, (1_700_000_000, 250_000_000));
        assert_eq!(f.uid, 100_000);
        let x: Vec<_> = index.xattrs(f).collect();
        assert_eq!(
            x,
            [
                (&b"user.k"[..], &b"v\0bin"[..]),
                (&b"user.empty"[..], &b""[..])
            ]
        );
        assert!(
            index
                .lookup("gnu/".repeat(99).trim_end_matches('/').as_bytes())
                .is_ok()
        );
        assert_eq!(node(&index, "neg").1.mtime, (-2, 500_000_000));
    }

    fn error_of(tar: &[u8]) -> String {
        Index::build(tar).unwrap_err().to_string()
    }

    #[test]
    fn malformed_archives_are_refused() {
        assert!(error_of(b"").contains("no end-of-archive"));
        assert!(error_of(&[7u8; 2048]).contains("not a tar archive"));
        let mut gz = vec![0x1f, 0x8b];
        gz.resize(1024, 0);
        assert!(error_of(&gz).contains("gzip"));
        let good = TestTar::default().file("f", &[1u8; 3000]).end();
        for cut in [100, 512, 1024, 3000, 3584] {
            let e = error_of(&good[..cut]);
            assert!(e.contains("truncated"), "cut at {cut}: {e}");
        }
        let mut bad_sum = good.clone();
        bad_sum[0] = b'g';
        assert!(error_of(&bad_sum).contains("not a tar"));
        let two = TestTar::default().file("a", b"").file("b", b"").end();
        let mut bad_second = two.clone();
        bad_second[512] ^= 1;
        assert!(error_of(&bad_second).contains("checksum"));
        for (name, want) in [
            ("../evil", "'..'"),
            ("a/../../evil", "'..'"),
            ("/etc/passwd", "absolute"),
        ] {
            let tar = TestTar::default().file(name, b"x").end();
            assert!(error_of(&tar).contains(want), "{name}");
        }
        let tar = TestTar::default()
            .pax(&[("path", &[b'a'; 256])])
            .file("x", b"")
            .end();
        assert!(error_of(&tar).contains("longer than"));
        let tar = TestTar::default().entry("h", b'1', "missing").end();
        assert!(error_of(&tar).contains("hard link"));
        let tar = TestTar::default()
            .entry("d", b'5', "")
            .entry("h", b'1', "d")
            .end();
        assert!(error_of(&tar).contains("hard link"));
        let tar = TestTar::default().file("f", b"").file("f/g", b"").end();
        assert!(error_of(&tar).contains("not a directory"));
        let tar = TestTar::default().entry("s", b'S', "").end();
        assert!(error_of(&tar).contains("sparse"));
        let tar = TestTar::default().entry("q", b'Q', "").end();
        assert!(error_of(&tar).contains("unsupported entry type"));
        let tar = TestTar::default().pax(&[("path", b"x")]).end();
        assert!(error_of(&tar).contains("describes no entry"));
        let mut bad_pax = TestTar::default();
        bad_pax.header(b"p", b'x', 0o644, 7, b"");
        bad_pax.data(b"99 a=b\n");
        bad_pax.file("f", b"");
        assert!(error_of(&bad_pax.end()).contains("pax"));
        let tar = TestTar::default().file(".", b"").end();
        assert!(error_of(&tar).contains("root"));
    }

    /// Every node reachable, every name found again by lookup.
    fn check_tree(index: &Index, dir: NodeId, path: &mut Vec<u8>) {
        for child in index.children(dir) {
            let name = index.name(child).to_vec();
            let len = path.len();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(&name);
            assert_eq!(index.lookup(path).unwrap(), child);
            let (_, inode) = index.inode(child);
            if inode.is_dir() {
                check_tree(index, child, path);
            }
            path.truncate(len);
        }
    }

    #[test]
    fn damaged_archives_never_panic() {
        let good = TestTar::default()
            .pax(&[
                ("path", [&b"p/".repeat(60)[..], b"end"].concat().as_slice()),
                ("SCHILY.xattr.user.x", b"1"),
                ("mtime", b"5.5"),
            ])
            .file("ignored", b"some data here")
            .long_name([&b"long/name/".repeat(20)[..], b"leaf"].concat().as_slice())
            .file("short", b"x")
            .entry("dir/", b'5', "")
            .file("dir/f", &[7u8; 1500])
            .entry("dir/h", b'1', "dir/f")
            .entry("dir/s", b'2', "f")
            .entry("dev", b'3', "")
            .end();
        check_tree(&Index::build(&good).unwrap(), ROOT, &mut Vec::new());
        let mut rng = 0x1234_5678_9abc_def1u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let (mut ok, mut refused) = (0, 0);
        for round in 0..3000 {
            let mut bad = good.clone();
            if round % 10 == 0 {
                bad.truncate((next() as usize) % good.len());
            }
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % bad.len().max(1);
                if let Some(b) = bad.get_mut(at) {
                    *b = next() as u8;
                }
            }
            match Index::build(&bad) {
                Ok(index) => {
                    check_tree(&index, ROOT, &mut Vec::new());
                    ok += 1;
                }
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
                    refused += 1;
                }
            }
        }
        assert!(ok > 0 && refused > 0, "{ok} read, {refused} refused");
    }
}

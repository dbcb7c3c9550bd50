//! A small tar writer: POSIX ustar headers, with a PAX extended header
//! (typeflag `x`) in front of an entry for what ustar cannot hold: names and
//! link targets over 100 bytes, sub-second, negative or far-future times,
//! ids and sizes too large for their octal fields, and extended attributes
//! (`SCHILY.xattr.NAME`, the records GNU tar, Go's `archive/tar` and the OCI
//! tools read). Output is a pure function of the entries: no user or group
//! names, no times of the writing.

use std::io::{self, Read, Write};

const BLOCK: usize = 512;

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file of `size` bytes; the data follows its header.
    File {
        size: u64,
    },
    /// Another name of the file stored earlier as `target`.
    HardLink {
        target: Vec<u8>,
    },
    Symlink {
        target: Vec<u8>,
    },
    CharDev {
        major: u32,
        minor: u32,
    },
    BlockDev {
        major: u32,
        minor: u32,
    },
    Dir,
    Fifo,
}

/// One archive member.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The member name, without a leading `/`; a directory's gets a
    /// trailing `/` here.
    pub path: Vec<u8>,
    pub kind: Kind,
    /// Permission, set-id and sticky bits (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds and nanoseconds since the epoch.
    pub mtime: (i64, u32),
    /// Extended attributes, written in this order.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Entry {
    /// An entry with no extended attributes.
    pub fn new(path: Vec<u8>, kind: Kind, mode: u32, ids: (u32, u32), mtime: (i64, u32)) -> Entry {
        Entry {
            path,
            kind,
            mode,
            uid: ids.0,
            gid: ids.1,
            mtime,
            xattrs: Vec::new(),
        }
    }
}

/// Writes entries to `out`; [`TarWriter::finish`] writes the end marker.
pub struct TarWriter<W: Write> {
    out: W,
}

/// The largest value an octal field of `width` bytes holds (one byte is
/// the terminating NUL).
fn octal_max(width: usize) -> u64 {
    (1u64 << (3 * (width as u32 - 1))) - 1
}

/// `value` in octal, zero-padded, NUL-terminated; base-256 (the GNU and
/// POSIX-2008 extension every reader we care about knows) where octal
/// does not fit.
fn put_number(field: &mut [u8], value: u64) {
    let width = field.len();
    if value <= octal_max(width) {
        let text = format!("{value:0w$o}", w = width - 1);
        field[..width - 1].copy_from_slice(text.as_bytes());
        field[width - 1] = 0;
    } else {
        let bytes = value.to_be_bytes();
        field.fill(0);
        field[width - 8..].copy_from_slice(&bytes);
        field[0] |= 0x80;
    }
}

fn put_bytes(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

/// One PAX record: `LEN KEY=VALUE\n`, LEN counting the whole record.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// A PAX time: decimal seconds with the nanoseconds as a fraction
/// (`-1.5` is 1.5 s before the epoch: sec -2, nsec 500000000).
fn pax_time((sec, nsec): (i64, u32)) -> String {
    if nsec == 0 {
        sec.to_string()
    } else if sec >= 0 {
        format!("{sec}.{nsec:09}")
    } else {
        let whole = -(sec + 1); // |sec| - 1, without overflow
        format!("-{whole}.{:09}", 1_000_000_000 - nsec)
    }
}

impl<W: Write> TarWriter<W> {
    pub fn new(out: W) -> TarWriter<W> {
        TarWriter { out }
    }

    /// Writes `entry`; for a regular file, exactly its `size` bytes are
    /// read from `data` (a shorter file is an error: it changed).
    pub fn append(&mut self, entry: &Entry, data: Option<&mut dyn Read>) -> io::Result<()> {
        let (typeflag, size, link, dev) = match &entry.kind {
            Kind::File { size } => (b'0', *size, &[][..], (0, 0)),
            Kind::HardLink { target } => (b'1', 0, &target[..], (0, 0)),
            Kind::Symlink { target } => (b'2', 0, &target[..], (0, 0)),
            Kind::CharDev { major, minor } => (b'3', 0, &[][..], (*major, *minor)),
            Kind::BlockDev { major, minor } => (b'4', 0, &[][..], (*major, *minor)),
            Kind::Dir => (b'5', 0, &[][..], (0, 0)),
            Kind::Fifo => (b'6', 0, &[][..], (0, 0)),
        };
        // Names go into PAX records as the bytes they are, UTF-8 or not,
        // as GNU tar writes them: its reader (1.34) warns about a
        // `hdrcharset` record, and Go's takes the bytes either way.
        let mut pax = Vec::new();
        if entry.path.len() > 100 {
            pax_record(&mut pax, b"path", &entry.path);
        }
        if link.len() > 100 {
            pax_record(&mut pax, b"linkpath", link);
        }
        if u64::from(entry.uid) > octal_max(8) {
            pax_record(&mut pax, b"uid", entry.uid.to_string().as_bytes());
        }
        if u64::from(entry.gid) > octal_max(8) {
            pax_record(&mut pax, b"gid", entry.gid.to_string().as_bytes());
        }
        if size > octal_max(12) {
            pax_record(&mut pax, b"size", size.to_string().as_bytes());
        }
        let (sec, nsec) = entry.mtime;
        let plain_mtime = (0..=octal_max(12) as i64).contains(&sec);
        if nsec != 0 || !plain_mtime {
            pax_record(&mut pax, b"mtime", pax_time(entry.mtime).as_bytes());
        }
        for (name, value) in &entry.xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(name);
            pax_record(&mut pax, &key, value);
        }
        let header_mtime = if plain_mtime { sec as u64 } else { 0 };
        if !pax.is_empty() {
            let mut name = b"PaxHeaders/".to_vec();
            let trimmed = entry.path.strip_suffix(b"/").unwrap_or(&entry.path);
            let base = trimmed.rsplit(|&b| b == b'/').next().unwrap_or(trimmed);
            name.extend_from_slice(&base[..base.len().min(100 - name.len())]);
            let header = ustar(&Fields {
                name: &name,
                mode: 0o644,
                uid: 0,
                gid: 0,
                size: pax.len() as u64,
                mtime: header_mtime,
                typeflag: b'x',
                link: &[],
                dev: (0, 0),
            });
            self.out.write_all(&header)?;
            self.write_padded(&pax)?;
        }
        let header = ustar(&Fields {
            name: &entry.path,
            mode: entry.mode & 0o7777,
            uid: if u64::from(entry.uid) > octal_max(8) {
                0
            } else {
                entry.uid
            },
            gid: if u64::from(entry.gid) > octal_max(8) {
                0
            } else {
                entry.gid
            },
            size: if size > octal_max(12) { 0 } else { size },
            mtime: header_mtime,
            typeflag,
            link,
            dev,
        });
        self.out.write_all(&header)?;
        if let Kind::File { size } = entry.kind {
            let data = data.ok_or_else(|| io::Error::other("a file entry needs its data"))?;
            self.copy_data(data, size)?;
        }
        Ok(())
    }

    /// Copies `size` bytes of `data`, then pads to a whole block.
    fn copy_data(&mut self, data: &mut dyn Read, size: u64) -> io::Result<()> {
        let mut buf = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let want = buf.len().min(left.try_into().unwrap_or(usize::MAX));
            let n = match data.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("file shrank while being read ({left} of {size} bytes missing)"),
                    ));
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.out.write_all(&buf[..n])?;
            left -= n as u64;
        }
        let tail = (size % BLOCK as u64) as usize;
        if tail != 0 {
            self.out.write_all(&[0u8; BLOCK][..BLOCK - tail])?;
        }
        Ok(())
    }

    fn write_padded(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        let tail = bytes.len() % BLOCK;
        if tail != 0 {
            self.out.write_all(&[0u8; BLOCK][..BLOCK - tail])?;
        }
        Ok(())
    }

    /// The end-of-archive marker (two zero blocks); returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

struct Fields<'a> {
    name: &'a [u8],
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: u64,
    typeflag: u8,
    link: &'a [u8],
    dev: (u32, u32),
}

/// One ustar header block. Names longer than the field are cut (the PAX
/// header in front carries them whole).
fn ustar(f: &Fields<'_>) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    put_bytes(&mut h[0..100], f.name);
    put_number(&mut h[100..108], u64::from(f.mode));
    put_number(&mut h[108..116], u64::from(f.uid));
    put_number(&mut h[116..124], u64::from(f.gid));
    put_number(&mut h[124..136], f.size);
    put_number(&mut h[136..148], f.mtime);
    h[156] = f.typeflag;
    put_bytes(&mut h[157..257], f.link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    if matches!(f.typeflag, b'3' | b'4') {
        put_number(&mut h[329..337], u64::from(f.dev.0));
        put_number(&mut h[337..345], u64::from(f.dev.1));
    }
    // The checksum is computed with its own field read as spaces.
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let text = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(text.as_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_octal(field: &[u8]) -> u64 {
        let text: Vec<u8> = field
            .iter()
            .copied()
            .take_while(|&b| b != 0 && b != b' ')
            .collect();
        u64::from_str_radix(std::str::from_utf8(&text).unwrap(), 8).unwrap()
    }

    #[test]
    fn pax_record_lengths_count_themselves() {
        for value_len in [0, 1, 5, 6, 7, 90, 91, 92, 93, 994, 995, 996, 997, 9990] {
            let mut out = Vec::new();
            pax_record(&mut out, b"path", &vec![b'a'; value_len]);
            let (len, _) = out.split_at(out.iter().position(|&b| b == b' ').unwrap());
            let len: usize = std::str::from_utf8(len).unwrap().parse().unwrap();
            assert_eq!(len, out.len(), "value of {value_len} bytes");
        }
    }

    #[test]
    fn pax_times() {
        assert_eq!(pax_time((5, 0)), "5");
        assert_eq!(pax_time((5, 7)), "5.000000007");
        assert_eq!(pax_time((-2, 500_000_000)), "-1.500000000");
        assert_eq!(pax_time((-1, 250_000_000)), "-0.750000000");
        assert_eq!(pax_time((-3, 0)), "-3");
    }

    #[test]
    fn numbers_octal_then_base_256() {
        let mut f = [0u8; 8];
        put_number(&mut f, 0o755);
        assert_eq!(&f, b"0000755\0");
        put_number(&mut f, 0o7777777 + 1);
        assert_eq!(f[0], 0x80);
        assert_eq!(u64::from_be_bytes(f) & !(0x80 << 56), 0o7777777 + 1);
    }

    #[test]
    fn header_checksum_and_fields() {
        let mut out = Vec::new();
        let mut w = TarWriter::new(&mut out);
        let e = Entry::new(
            b"dir/file".to_vec(),
            Kind::File { size: 3 },
            0o4755,
            (1000, 100),
            (1_700_000_000, 0),
        );
        w.append(&e, Some(&mut &b"abc"[..])).unwrap();
        w.finish().unwrap();
        assert_eq!(out.len(), 512 * 4, "header, one data block, end marker");
        let h = &out[..512];
        assert_eq!(&h[..8], b"dir/file");
        assert_eq!(parse_octal(&h[100..108]), 0o4755);
        assert_eq!(parse_octal(&h[108..116]), 1000);
        assert_eq!(parse_octal(&h[124..136]), 3);
        assert_eq!(parse_octal(&h[136..148]), 1_700_000_000);
        assert_eq!(h[156], b'0');
        let mut copy = [0u8; 512];
        copy.copy_from_slice(h);
        copy[148..156].fill(b' ');
        let sum: u64 = copy.iter().map(|&b| b as u64).sum();
        assert_eq!(parse_octal(&h[148..156]), sum);
        assert_eq!(&out[512..515], b"abc");
        assert!(out[515..].iter().all(|&b| b == 0));
    }

    #[test]
    fn huge_sizes_go_to_pax_and_short_data_is_an_error() {
        let mut out = Vec::new();
        let mut w = TarWriter::new(&mut out);
        let size = 1u64 << 34;
        let e = Entry::new(b"big".to_vec(), Kind::File { size }, 0o644, (0, 0), (1, 0));
        let err = w.append(&e, Some(&mut io::empty())).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let pax_len = parse_octal(&out[124..136]) as usize;
        let text = String::from_utf8_lossy(&out[512..512 + pax_len]).into_owned();
        assert_eq!(text, format!("20 size={size}\n"));
        assert_eq!(parse_octal(&out[1024 + 124..1024 + 136]), 0);
    }

    #[test]
    fn long_names_large_ids_and_xattrs_go_to_pax() {
        let mut out = Vec::new();
        let mut w = TarWriter::new(&mut out);
        let long = vec![b'n'; 150];
        let mut e = Entry::new(
            long.clone(),
            Kind::Symlink {
                target: vec![b't'; 120],
            },
            0o777,
            (3_000_000, 5),
            (-2, 500_000_000),
        );
        e.xattrs.push((b"user.a".to_vec(), b"v\0w".to_vec()));
        w.append(&e, None).unwrap();
        w.finish().unwrap();
        assert_eq!(out[156], b'x');
        let pax_len = parse_octal(&out[124..136]) as usize;
        let pax = &out[512..512 + pax_len];
        let text = String::from_utf8_lossy(pax);
        assert!(
            text.contains(&format!("path={}\n", "n".repeat(150))),
            "{text}"
        );
        assert!(text.contains(&format!("linkpath={}\n", "t".repeat(120))));
        assert!(text.contains("uid=3000000\n"));
        assert!(!text.contains("gid="));
        assert!(text.contains("mtime=-1.500000000\n"));
        assert!(pax.windows(21).any(|w| w == b"SCHILY.xattr.user.a=v"));
        let main = &out[512 + pax_len.div_ceil(512) * 512..];
        assert_eq!(main[156], b'2');
        assert_eq!(parse_octal(&main[108..116]), 0);
        assert_eq!(parse_octal(&main[116..124]), 5);
    }
}

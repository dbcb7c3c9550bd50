//! Reading a tar archive's headers: ustar, GNU (`L`/`K` long names and
//! links, base-256 numbers) and pax extended headers, applied to the entry
//! they precede. The entries go to [`super::index`], which builds the tree.

use std::io;

use super::index::{BLOCK, invalid, show};
use crate::layer::NAME_MAX;

/// Extended headers larger than this are refused (they are read whole).
const MAX_EXTENDED_HEADER: u64 = 64 << 20;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    File,
    HardLink,
    Symlink,
    Char,
    Block,
    Dir,
    Fifo,
}

/// One entry, with its extended headers applied.
#[derive(Debug)]
pub(super) struct Entry {
    /// Where its header starts (for messages).
    pub(super) at: u64,
    pub(super) name: Vec<u8>,
    pub(super) kind: Kind,
    pub(super) perm: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) mtime: (i64, u32),
    pub(super) size: u64,
    pub(super) data: u64,
    pub(super) link: Vec<u8>,
    pub(super) rdev: u64,
    pub(super) xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The records of a pax extended header that strata uses.
#[derive(Debug, Default, Clone)]
pub(super) struct Pax {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u32>,
    gid: Option<u32>,
    mtime: Option<(i64, u32)>,
    devmajor: Option<u32>,
    devminor: Option<u32>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Pax {
    /// `other`'s records over these.
    fn overlay(&mut self, other: Pax) {
        macro_rules! take {
            ($($f:ident),*) => { $( if other.$f.is_some() { self.$f = other.$f; } )* };
        }
        take!(path, linkpath, size, uid, gid, mtime, devmajor, devminor);
        for (name, value) in other.xattrs {
            set_xattr(&mut self.xattrs, name, value);
        }
    }
}

pub(super) fn set_xattr(list: &mut Vec<(Vec<u8>, Vec<u8>)>, name: Vec<u8>, value: Vec<u8>) {
    match list.iter_mut().find(|(n, _)| *n == name) {
        Some(slot) => slot.1 = value,
        None => list.push((name, value)),
    }
}

pub(super) struct Reader<'a> {
    data: &'a [u8],
    pos: u64,
}

/// A header field up to its first NUL.
pub(super) fn cstr(field: &[u8]) -> &[u8] {
    match field.iter().position(|&b| b == 0) {
        Some(i) => &field[..i],
        None => field,
    }
}

/// A numeric header field: octal digits (leading spaces, ended by a space
/// or NUL), or GNU base-256 (first byte 0x80 positive, 0xff negative).
pub(super) fn number(field: &[u8]) -> Option<i64> {
    match field.first() {
        Some(&b) if b & 0x80 != 0 => {
            // Big-endian two's complement, the top bit a marker; bit 6 of
            // the first byte is the sign. (-a - 1 == !a.)
            let invert = if b & 0x40 != 0 { 0xff } else { 0 };
            let mut v: u64 = 0;
            for (i, &byte) in field.iter().enumerate() {
                let mut c = byte ^ invert;
                if i == 0 {
                    c &= 0x7f;
                }
                if v >> 55 != 0 {
                    return None;
                }
                v = (v << 8) | c as u64;
            }
            let v = i64::try_from(v).ok()?;
            Some(if invert == 0xff { !v } else { v })
        }
        _ => {
            let text = field;
            let start = text.iter().position(|&b| b != b' ').unwrap_or(text.len());
            let digits = &text[start..];
            let end = digits
                .iter()
                .position(|&b| b == b' ' || b == 0)
                .unwrap_or(digits.len());
            if digits[end..].iter().any(|&b| b != b' ' && b != 0) {
                return None;
            }
            let mut v: i64 = 0;
            for &d in &digits[..end] {
                if !(b'0'..=b'7').contains(&d) {
                    return None;
                }
                v = v.checked_mul(8)?.checked_add((d - b'0') as i64)?;
            }
            Some(v)
        }
    }
}

pub(super) fn decimal(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 20 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// A pax time: `[-]SECONDS[.FRACTION]`.
pub(super) fn pax_time(text: &[u8]) -> Option<(i64, u32)> {
    let (negative, text) = match text.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = match text.iter().position(|&b| b == b'.') {
        Some(i) => (&text[..i], &text[i + 1..]),
        None => (text, &b""[..]),
    };
    if !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let secs = i64::try_from(decimal(int)?).ok()?;
    let mut nsec: u32 = 0;
    for i in 0..9 {
        nsec = nsec * 10 + frac.get(i).map_or(0, |d| (d - b'0') as u32);
    }
    Some(match (negative, nsec) {
        (false, _) => (secs, nsec),
        (true, 0) => (-secs, 0),
        (true, n) => (-secs - 1, 1_000_000_000 - n),
    })
}

impl<'a> Reader<'a> {
    pub(super) fn new(data: &'a [u8]) -> Reader<'a> {
        Reader { data, pos: 0 }
    }

    fn err(&self, at: u64, msg: impl std::fmt::Display) -> io::Error {
        invalid(format!("malformed tar at byte {at}: {msg}"))
    }

    /// The `len` bytes at `from`, or a "truncated" error.
    fn bytes(&self, from: u64, len: u64, what: &str) -> io::Result<&'a [u8]> {
        let end = from
            .checked_add(len)
            .filter(|&e| e <= self.data.len() as u64);
        match end {
            Some(end) => Ok(&self.data[from as usize..end as usize]),
            None => Err(invalid(format!(
                "truncated tar: {what} at byte {from} ends past the end of the archive ({} bytes)",
                self.data.len()
            ))),
        }
    }

    /// Calls `f` on every entry, in archive order.
    pub(super) fn for_each(mut self, mut f: impl FnMut(Entry) -> io::Result<()>) -> io::Result<()> {
        let mut global = Pax::default();
        let mut local: Option<Pax> = None;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pending_at = 0;
        loop {
            let at = self.pos;
            if at == self.data.len() as u64 {
                return Err(invalid(format!(
                    "truncated tar: no end-of-archive marker after byte {at}"
                )));
            }
            let block = self.bytes(at, BLOCK, "a header")?;
            if block.iter().all(|&b| b == 0) {
                if local.is_some() || long_name.is_some() || long_link.is_some() {
                    return Err(self.err(pending_at, "an extended header describes no entry"));
                }
                return Ok(());
            }
            let header = self.header(at, block)?;
            let data_at = at + BLOCK;
            let typeflag = block[156];
            match typeflag {
                b'x' | b'g' | b'L' | b'K' => {
                    if header.size > MAX_EXTENDED_HEADER {
                        return Err(self.err(at, "extended header too large"));
                    }
                    let body = self.bytes(data_at, header.size, "an extended header")?;
                    pending_at = at;
                    match typeflag {
                        b'x' => {
                            let pax = self.pax(at, body, false)?;
                            local.get_or_insert_with(Pax::default).overlay(pax);
                        }
                        b'g' => global.overlay(self.pax(at, body, true)?),
                        b'L' => long_name = Some(cstr(body).to_vec()),
                        _ => long_link = Some(cstr(body).to_vec()),
                    }
                    self.pos = self.next(data_at, header.size)?;
                    continue;
                }
                b'V' => {
                    // A GNU volume label: not a file.
                    self.pos = self.next(data_at, header.size)?;
                    continue;
                }
                _ => {}
            }
            let mut pax = global.clone();
            if let Some(l) = local.take() {
                pax.overlay(l);
            }
            let name = pax
                .path
                .take()
                .or(long_name.take())
                .unwrap_or(header.name.clone());
            let link = pax
                .linkpath
                .take()
                .or(long_link.take())
                .unwrap_or(header.link.clone());
            let kind = match typeflag {
                b'0' | 0 | b'7' if name.ends_with(b"/") => Kind::Dir,
                b'0' | 0 | b'7' => Kind::File,
                b'1' => Kind::HardLink,
                b'2' => Kind::Symlink,
                b'3' => Kind::Char,
                b'4' => Kind::Block,
                b'5' | b'D' => Kind::Dir,
                b'6' => Kind::Fifo,
                b'S' => return Err(self.err(at, "GNU sparse files are not supported")),
                b'M' => return Err(self.err(at, "multi-volume archives are not supported")),
                t => {
                    return Err(self.err(at, format!("unsupported entry type {:?}", char::from(t))));
                }
            };
            let size = match kind {
                Kind::File => pax.size.unwrap_or(header.size),
                // GNU dumpdir: a directory whose data lists its names.
                Kind::Dir if typeflag == b'D' => header.size,
                // Header-only types have no data, whatever the size says.
                _ => 0,
            };
            self.bytes(data_at, size, "file data")?;
            let major = pax.devmajor.unwrap_or(header.devmajor);
            let minor = pax.devminor.unwrap_or(header.devminor);
            let entry = Entry {
                at,
                name,
                kind,
                perm: header.mode & 0o7777,
                uid: pax.uid.unwrap_or(header.uid),
                gid: pax.gid.unwrap_or(header.gid),
                mtime: pax.mtime.unwrap_or((header.mtime, 0)),
                size: if typeflag == b'D' { 0 } else { size },
                data: data_at,
                link,
                rdev: libc::makedev(major, minor),
                xattrs: pax.xattrs,
            };
            self.pos = self.next(data_at, size)?;
            f(entry)?;
        }
    }

    /// Where the header after `size` bytes of data at `data_at` starts.
    fn next(&self, data_at: u64, size: u64) -> io::Result<u64> {
        size.checked_add(BLOCK - 1)
            .map(|s| s / BLOCK * BLOCK)
            .and_then(|s| data_at.checked_add(s))
            .ok_or_else(|| self.err(data_at, "size out of range"))
    }

    fn header(&self, at: u64, block: &[u8]) -> io::Result<Header> {
        // The sum of the header's bytes, the checksum field read as
        // spaces; some old tars summed them as signed bytes.
        let stored = number(&block[148..156]);
        let field = &block[148..156];
        let sum = |b: &[u8]| b.iter().map(|&x| x as i64).sum::<i64>();
        let sum_signed = |b: &[u8]| b.iter().map(|&x| x as i8 as i64).sum::<i64>();
        let unsigned = sum(block) - sum(field) + 8 * 32;
        let matches = stored
            .is_some_and(|s| s == unsigned || s == sum_signed(block) - sum_signed(field) + 8 * 32);
        if !matches {
            if at == 0 {
                return Err(invalid(not_a_tar(block)));
            }
            return Err(self.err(at, "bad header checksum"));
        }
        let magic = &block[257..263];
        let posix = magic == b"ustar\0";
        let gnu = magic == b"ustar ";
        let field = |range: std::ops::Range<usize>, what: &str| -> io::Result<i64> {
            number(&block[range]).ok_or_else(|| self.err(at, format!("bad {what} field")))
        };
        let id = |v: i64, what: &str| {
            u32::try_from(v).map_err(|_| self.err(at, format!("{what} out of range")))
        };
        let mut name = cstr(&block[..100]).to_vec();
        if posix {
            let prefix = cstr(&block[345..500]);
            if !prefix.is_empty() {
                let mut full = prefix.to_vec();
                full.push(b'/');
                full.extend_from_slice(&name);
                name = full;
            }
        }
        let (devmajor, devminor) = if posix || gnu {
            (
                id(field(329..337, "devmajor")?, "devmajor")?,
                id(field(337..345, "devminor")?, "devminor")?,
            )
        } else {
            (0, 0)
        };
        let size = field(124..136, "size")?;
        Ok(Header {
            name,
            mode: field(100..108, "mode")? as u32,
            uid: id(field(108..116, "uid")?, "uid")?,
            gid: id(field(116..124, "gid")?, "gid")?,
            size: u64::try_from(size).map_err(|_| self.err(at, "negative size"))?,
            mtime: field(136..148, "mtime")?,
            link: cstr(&block[157..257]).to_vec(),
            devmajor,
            devminor,
        })
    }

    /// The records of a pax header: `LENGTH KEY=VALUE\n` each.
    fn pax(&self, at: u64, mut body: &[u8], global: bool) -> io::Result<Pax> {
        let mut pax = Pax::default();
        let bad = |msg: &str| self.err(at, format!("pax header: {msg}"));
        while !body.is_empty() {
            let space = body
                .iter()
                .position(|&b| b == b' ')
                .ok_or_else(|| bad("record without a length"))?;
            let len = decimal(&body[..space]).ok_or_else(|| bad("bad record length"))? as usize;
            if len <= space + 1 || len > body.len() || body[len - 1] != b'\n' {
                return Err(bad("bad record length"));
            }
            let record = &body[space + 1..len - 1];
            body = &body[len..];
            let eq = record
                .iter()
                .position(|&b| b == b'=')
                .ok_or_else(|| bad("record without '='"))?;
            let (key, value) = (&record[..eq], &record[eq + 1..]);
            if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                if name.is_empty() || name.contains(&0) {
                    return Err(bad("bad xattr name"));
                }
                set_xattr(&mut pax.xattrs, name.to_vec(), value.to_vec());
                continue;
            }
            if key.starts_with(b"GNU.sparse.") {
                return Err(self.err(at, "GNU sparse files are not supported"));
            }
            // An empty value undoes a global record.
            let value = (!value.is_empty()).then_some(value);
            let num = |v: Option<&[u8]>, what: &str| -> io::Result<Option<u64>> {
                v.map(|v| decimal(v).ok_or_else(|| bad(&format!("bad {what}"))))
                    .transpose()
            };
            let id = |v: Option<u64>, what: &str| -> io::Result<Option<u32>> {
                v.map(|v| u32::try_from(v).map_err(|_| bad(&format!("{what} out of range"))))
                    .transpose()
            };
            match key {
                // A name or size for every later entry makes no sense.
                b"path" | b"linkpath" | b"size" if global => {}
                b"path" => pax.path = value.map(<[u8]>::to_vec),
                b"linkpath" => pax.linkpath = value.map(<[u8]>::to_vec),
                b"size" => pax.size = num(value, "size")?,
                b"uid" => pax.uid = id(num(value, "uid")?, "uid")?,
                b"gid" => pax.gid = id(num(value, "gid")?, "gid")?,
                b"mtime" => {
                    pax.mtime = value
                        .map(|v| pax_time(v).ok_or_else(|| bad("bad mtime")))
                        .transpose()?
                }
                b"SCHILY.devmajor" => pax.devmajor = id(num(value, "devmajor")?, "devmajor")?,
                b"SCHILY.devminor" => pax.devminor = id(num(value, "devminor")?, "devminor")?,
                // atime, ctime, uname, gname, comment, charsets, ACLs and
                // other vendors' records: not shown by a layer.
                _ => {}
            }
        }
        Ok(pax)
    }
}

/// Why the first block is no tar header, as precisely as can be told.
pub(super) fn not_a_tar(block: &[u8]) -> String {
    if block.starts_with(&[0x1f, 0x8b]) {
        "not a tar archive: it is gzip-compressed".into()
    } else if block.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        "not a tar archive: it is zstd-compressed (not supported)".into()
    } else {
        "not a tar archive (no valid header at byte 0)".into()
    }
}

#[derive(Debug)]
pub(super) struct Header {
    name: Vec<u8>,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: i64,
    link: Vec<u8>,
    devmajor: u32,
    devminor: u32,
}

/// The components of an entry name: `./` prefixes, `.` components and
/// repeated or trailing slashes are dropped; an absolute name, a `..`
/// component, a NUL or a component longer than NAME_MAX is refused.
pub(super) fn components(name: &[u8]) -> Result<Vec<&[u8]>, String> {
    if name.is_empty() {
        return Err("an entry has an empty name".into());
    }
    if name.starts_with(b"/") {
        return Err(format!("absolute name '{}'", show(name)));
    }
    if name.contains(&0) {
        return Err(format!("name '{}' contains a NUL byte", show(name)));
    }
    let mut out = Vec::new();
    for part in name.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(format!("name '{}' has a '..' component", show(name))),
            _ if part.len() > NAME_MAX => {
                return Err(format!(
                    "name '{}' has a component longer than {NAME_MAX} bytes",
                    show(name)
                ));
            }
            _ => out.push(part),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(number(b"0000644\0"), Some(0o644));
        assert_eq!(number(b"   644 "), Some(0o644));
        assert_eq!(number(b"\0\0\0\0"), Some(0));
        assert_eq!(number(b"0009\0"), None);
        assert_eq!(
            number(&[0x80, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]),
            Some(1 << 32)
        );
        assert_eq!(number(&[0xff; 12]), Some(-1));
        assert_eq!(
            number(&[
                0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0
            ]),
            None
        );
        assert_eq!(pax_time(b"12"), Some((12, 0)));
        assert_eq!(pax_time(b"1.000000001999"), Some((1, 1)));
        assert_eq!(pax_time(b"-3"), Some((-3, 0)));
        assert_eq!(pax_time(b"1.x"), None);
        assert_eq!(pax_time(b""), None);
    }
}

//! The text output: two lines per entry, an `ls -ln`-like line
//! ([`ls_line`]) and the facts ([`facts_line`]), in the forms the module
//! docs show.

use std::fmt::Write as _;

use super::entry::{Entry, Kind, Place};

/// Bytes for a terminal: UTF-8 as it is, but `\` and control characters
/// escaped, and bytes that are not UTF-8 as `\xNN`.
pub fn printable(bytes: &[u8]) -> String {
    let mut s = String::new();
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => s.push_str("\\\\"),
                '\n' => s.push_str("\\n"),
                '\t' => s.push_str("\\t"),
                c if c.is_control() => {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        let _ = write!(s, "\\x{b:02x}");
                    }
                }
                c => s.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(s, "\\x{b:02x}");
        }
    }
    s
}

/// `ls -l`'s mode column: the type character, then `rwx` three times
/// with the set-id and sticky bits as `s`/`S` and `t`/`T`.
pub fn mode_string(kind: Kind, perm: u32) -> String {
    let bit = |mask: u32, c: char| if perm & mask != 0 { c } else { '-' };
    let exec =
        |x: u32, special: u32, on: char, off: char| match (perm & x != 0, perm & special != 0) {
            (true, true) => on,
            (false, true) => off,
            (true, false) => 'x',
            (false, false) => '-',
        };
    [
        kind.type_char(),
        bit(0o400, 'r'),
        bit(0o200, 'w'),
        exec(0o100, 0o4000, 's', 'S'),
        bit(0o040, 'r'),
        bit(0o020, 'w'),
        exec(0o010, 0o2000, 's', 'S'),
        bit(0o004, 'r'),
        bit(0o002, 'w'),
        exec(0o001, 0o1000, 't', 'T'),
    ]
    .into_iter()
    .collect()
}

/// `YYYY-MM-DD HH:MM:SS.NNNNNNNNN`, UTC.
pub fn utc_time((secs, nsec): (i64, u32)) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Days to civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{nsec:09}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The `ls -ln`-like line of `e`, naming it `shown` (live mode shows the
/// PATH given, not the merged path).
pub fn ls_line(e: &Entry, shown: &[u8]) -> String {
    let Some(st) = &e.stat else {
        // A whiteout has no attributes: dashes, in the same columns.
        return format!(
            "w--------- {:>3} {:<5} {:<5} {:>10} {:<29} {}",
            "-",
            "-",
            "-",
            "-",
            "-",
            printable(shown)
        );
    };
    let size = match st.rdev {
        Some((major, minor)) => format!("{major}, {minor}"),
        None => st.size.to_string(),
    };
    let mut line = format!(
        "{} {:>3} {:<5} {:<5} {:>10} {} {}",
        mode_string(e.kind, st.perm),
        st.nlink,
        st.uid,
        st.gid,
        size,
        utc_time(st.mtime),
        printable(shown)
    );
    if let Some(t) = &e.target {
        line += " -> ";
        line += &printable(t);
    }
    line
}

/// The facts line of `e` (without its indentation). With `-R` the
/// deleted names get lines of their own, so they are left out here.
pub fn facts_line(e: &Entry, recursive: bool) -> String {
    let at = |p: &Place| match p.path == e.path {
        true => p.layer.clone(),
        false => format!("{}:{}", p.layer, printable(&p.path)),
    };
    let list = |places: &[Place]| places.iter().map(at).collect::<Vec<_>>().join(" ");
    let mut parts = Vec::new();
    if e.kind == Kind::Whiteout {
        parts.push(format!(
            "whiteout in {} {}",
            e.layer.layer,
            printable(&e.layer.dir)
        ));
        parts.push(match e.shadows.is_empty() {
            true => "hides nothing".to_owned(),
            false => format!("hides {}", list(&e.shadows)),
        });
        return parts.join("; ");
    }
    let mut supplier = format!("layer {} {}", e.layer.layer, printable(&e.layer.dir));
    if e.layer.path != e.path {
        let _ = write!(supplier, " (as {})", printable(&e.layer.path));
    }
    parts.push(supplier);
    if e.kind == Kind::Dir && (e.merged.len() > 1 || e.merged.iter().any(|p| p.path != e.path)) {
        parts.push(format!("merged {}", list(&e.merged)));
    }
    if !e.shadows.is_empty() {
        parts.push(format!("shadows {}", list(&e.shadows)));
    }
    if e.opaque {
        parts.push("opaque".into());
    }
    if e.copied_up {
        parts.push("copied-up".into());
    }
    if let Some((p, from)) = &e.redirect {
        parts.push(format!(
            "redirected from {} (in {})",
            printable(from),
            p.layer
        ));
    }
    if let Some(p) = &e.metacopy {
        parts.push(format!("metacopy, data in {}", at(p)));
    }
    if !recursive && !e.deleted.is_empty() {
        let names: Vec<String> = e.deleted.iter().map(|d| printable(&d.name)).collect();
        let more = if e.deleted_truncated { ", ..." } else { "" };
        parts.push(format!("deleted {}{more}", names.join(", ")));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms() {
        assert_eq!(mode_string(Kind::File, 0o4755), "-rwsr-xr-x");
        assert_eq!(mode_string(Kind::Dir, 0o1777), "drwxrwxrwt");
        assert_eq!(mode_string(Kind::Dir, 0o2644), "drw-r-Sr--");
        assert_eq!(mode_string(Kind::Symlink, 0o1776), "lrwxrwxrwT");
        assert_eq!(utc_time((0, 0)), "1970-01-01 00:00:00.000000000");
        assert_eq!(
            utc_time((1_609_459_201, 5)),
            "2021-01-01 00:00:01.000000005"
        );
        assert_eq!(utc_time((951_825_600, 0)), "2000-02-29 12:00:00.000000000");
        assert_eq!(utc_time((-1, 0)), "1969-12-31 23:59:59.000000000");
        assert_eq!(printable(b"a b\\\n\xff\x7f"), "a b\\\\\\n\\xff\\x7f");
    }
}

//! An [`Entry`] as one JSON object and back: the `--json` lines and the
//! value of the virtual xattr, with the keys the module docs list.
//!
//! Names and paths are bytes: each such member holds them as UTF-8 with
//! invalid sequences replaced, and where that loses something a sibling
//! `KEY_bytes` holds the exact bytes in hex.

use serde_json::{Map, Value, json};

use super::entry::{Deleted, Entry, Kind, Place, Shown};
use super::text::mode_string;
use crate::tar::sha256::hex;

/// One entry as a JSON object (one line). With `limit`, `deleted` names
/// stop where the object would grow past `limit` bytes
/// (`"deleted_truncated":true`).
pub fn to_json(e: &Entry, limit: Option<usize>) -> String {
    let mut o = Object::default();
    o.bytes("path", &e.path);
    o.put("type", e.kind.name());
    if let Some(st) = &e.stat {
        o.put("mode", mode_string(e.kind, st.perm));
        o.put("perm", format!("{:04o}", st.perm));
        o.put("nlink", st.nlink);
        o.put("uid", st.uid);
        o.put("gid", st.gid);
        o.put("size", st.size);
        if let Some((major, minor)) = st.rdev {
            o.put("rdev", json!([major, minor]));
        }
        o.put("mtime", st.mtime.0);
        o.put("mtime_nsec", st.mtime.1);
    }
    if let Some(t) = &e.target {
        o.bytes("target", t);
    }
    o.put("layer", e.layer.layer.as_str());
    o.bytes("layer_dir", &e.layer.dir);
    o.bytes("layer_path", &e.layer.path);
    o.put("markers", e.markers());
    if e.kind == Kind::Dir {
        o.put("merged", e.merged.iter().map(place).collect::<Vec<_>>());
    }
    o.put("shadows", e.shadows.iter().map(place).collect::<Vec<_>>());
    if let Some((p, from)) = &e.redirect {
        let mut r = Object::place(p);
        r.bytes("from", from);
        o.put("redirect", r);
    }
    if let Some(p) = &e.metacopy {
        o.put("metacopy", place(p));
    }
    if e.kind == Kind::Dir {
        // Room left for the names: what is written so far, less a margin
        // for the `deleted` and `deleted_truncated` members themselves.
        let room = limit.map(|l| l.saturating_sub(o.len() + 64));
        let (deleted, cut) = deleted_within(&e.deleted, room);
        o.put("deleted", deleted);
        if cut || e.deleted_truncated {
            o.put("deleted_truncated", true);
        }
    }
    Value::from(o).to_string()
}

/// Reads an entry back from its JSON object.
pub fn from_json(json: &[u8]) -> Result<Entry, String> {
    let v: Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let kind = Kind::from_name(&string(&v, "type")?).ok_or("unknown \"type\"")?;
    let stat = match kind {
        Kind::Whiteout => None,
        _ => Some(Shown {
            perm: u32::from_str_radix(&string(&v, "perm")?, 8).map_err(|_| "bad \"perm\"")?,
            nlink: unsigned(&v, "nlink")?,
            uid: unsigned(&v, "uid")?,
            gid: unsigned(&v, "gid")?,
            size: unsigned(&v, "size")?,
            rdev: match items(&v, "rdev")? {
                [major @ Value::Number(_), minor @ Value::Number(_)] => {
                    let number = |n: &Value| n.as_u64().and_then(|n| u32::try_from(n).ok());
                    Some((
                        number(major).ok_or("bad \"rdev\"")?,
                        number(minor).ok_or("bad \"rdev\"")?,
                    ))
                }
                _ => None,
            },
            mtime: (
                v.get("mtime")
                    .and_then(Value::as_i64)
                    .ok_or("no number \"mtime\"")?,
                unsigned(&v, "mtime_nsec")?,
            ),
        }),
    };
    let markers: Vec<&str> = items(&v, "markers")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let deleted = items(&v, "deleted")?
        .iter()
        .map(|d| {
            Ok(Deleted {
                name: bytes(d, "name")?,
                layer: string(d, "layer")?,
                shadows: items(d, "shadows")?
                    .iter()
                    .filter_map(|l| l.as_str().map(str::to_owned))
                    .collect(),
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(Entry {
        path: bytes(&v, "path")?,
        kind,
        stat,
        target: bytes(&v, "target").ok(),
        layer: Place {
            layer: string(&v, "layer")?,
            dir: bytes(&v, "layer_dir")?,
            path: bytes(&v, "layer_path")?,
        },
        merged: places(&v, "merged")?,
        shadows: places(&v, "shadows")?,
        opaque: markers.contains(&"opaque"),
        copied_up: markers.contains(&"copied-up"),
        redirect: match v.get("redirect") {
            Some(r) => Some((read_place(r)?, bytes(r, "from")?)),
            None => None,
        },
        metacopy: v.get("metacopy").map(read_place).transpose()?,
        deleted,
        deleted_truncated: v.get("deleted_truncated").and_then(Value::as_bool) == Some(true),
    })
}

/// A JSON object built member by member, in the order the module docs
/// list them (kept as written where serde_json's `preserve_order` is on).
#[derive(Default)]
struct Object(Map<String, Value>);

impl Object {
    fn place(p: &Place) -> Object {
        let mut o = Object::default();
        o.put("layer", p.layer.as_str());
        o.bytes("dir", &p.dir);
        o.bytes("path", &p.path);
        o
    }

    fn put(&mut self, key: &str, value: impl Into<Value>) {
        self.0.insert(key.to_owned(), value.into());
    }

    /// Bytes as lossy UTF-8, plus `KEY_bytes` (hex) where that loses.
    fn bytes(&mut self, key: &str, value: &[u8]) {
        self.put(key, String::from_utf8_lossy(value));
        if std::str::from_utf8(value).is_err() {
            self.put(&format!("{key}_bytes"), hex(value));
        }
    }

    /// The length of the object written out.
    fn len(&self) -> usize {
        serde_json::to_string(&self.0)
            .expect("a JSON map always serializes")
            .len()
    }
}

impl From<Object> for Value {
    fn from(o: Object) -> Value {
        Value::Object(o.0)
    }
}

fn place(p: &Place) -> Value {
    Object::place(p).into()
}

/// The `deleted` array, as many of `deleted` as fit in `room` bytes (all
/// without a limit), and whether some were left out.
fn deleted_within(deleted: &[Deleted], room: Option<usize>) -> (Vec<Value>, bool) {
    let mut items = Vec::new();
    let mut used = 0;
    for d in deleted {
        let mut item = Object::default();
        item.bytes("name", &d.name);
        item.put("layer", d.layer.as_str());
        item.put("shadows", d.shadows.clone());
        used += item.len() + 1; // and its comma
        if room.is_some_and(|room| used > room) {
            return (items, true);
        }
        items.push(item.into());
    }
    (items, false)
}

fn string(v: &Value, key: &str) -> Result<String, String> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| format!("no string {key:?}"))
}

/// The bytes of a name or path member: `KEY_bytes` where it is there.
fn bytes(v: &Value, key: &str) -> Result<Vec<u8>, String> {
    if let Some(h) = v.get(format!("{key}_bytes")).and_then(Value::as_str) {
        return unhex(h).ok_or_else(|| format!("bad hex in {key}_bytes"));
    }
    string(v, key).map(String::into_bytes)
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn unsigned<T: TryFrom<u64>>(v: &Value, key: &str) -> Result<T, String> {
    let n = v
        .get(key)
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("no number {key:?}"))?;
    T::try_from(n).map_err(|_| format!("bad number {key:?}"))
}

/// The members of array `key`; none where it is absent.
fn items<'v>(v: &'v Value, key: &str) -> Result<&'v [Value], String> {
    match v.get(key) {
        Some(Value::Array(items)) => Ok(items),
        None => Ok(&[]),
        _ => Err(format!("{key:?} is not an array")),
    }
}

fn read_place(v: &Value) -> Result<Place, String> {
    Ok(Place {
        layer: string(v, "layer")?,
        dir: bytes(v, "dir")?,
        path: bytes(v, "path")?,
    })
}

fn places(v: &Value, key: &str) -> Result<Vec<Place>, String> {
    items(v, key)?.iter().map(read_place).collect()
}

#[cfg(test)]
mod tests {
    use super::super::explain::XATTR_LIMIT;
    use super::*;

    fn sample() -> Entry {
        let upper = Place {
            layer: "upper".into(),
            dir: b"/c/diff".to_vec(),
            path: b"/x".to_vec(),
        };
        Entry {
            path: b"/a\"b\\c\n\xff".to_vec(),
            kind: Kind::Dir,
            stat: Some(Shown {
                perm: 0o4755,
                nlink: 1,
                uid: 1000,
                gid: 42,
                size: 4096,
                rdev: None,
                mtime: (-1_609_459_200, 7),
            }),
            target: None,
            layer: upper.clone(),
            merged: vec![Place {
                layer: "1".into(),
                dir: b"/l/\x01app".to_vec(),
                path: b"/old".to_vec(),
            }],
            shadows: vec![],
            opaque: false,
            copied_up: true,
            redirect: Some((upper, b"old".to_vec())),
            metacopy: None,
            deleted: vec![Deleted {
                name: b"gone\xfe".to_vec(),
                layer: "1".into(),
                shadows: vec!["2".into(), "3".into()],
            }],
            deleted_truncated: false,
        }
    }

    #[test]
    fn json_round_trips_bytes_and_escapes() {
        let e = sample();
        let s = to_json(&e, None);
        assert!(!s.contains('\n'), "one line: {s}");
        assert!(s.contains(r#""dir":"/l/\u0001app""#), "{s}");
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["path"], "/a\"b\\c\n\u{fffd}");
        assert_eq!(v["path_bytes"], "2f6122625c630aff");
        assert_eq!(v["deleted"][0]["name_bytes"], "676f6e65fe");
        assert_eq!(v["markers"], json!(["copied-up", "redirected"]));
        assert_eq!(v["mode"], "drwsr-xr-x");
        assert_eq!(from_json(s.as_bytes()).unwrap(), e);
    }

    #[test]
    fn deleted_names_stop_at_the_limit() {
        let mut e = sample();
        e.deleted = (0..5000)
            .map(|i| Deleted {
                name: format!("name-{i}").into_bytes(),
                layer: "1".into(),
                shadows: vec!["2".into()],
            })
            .collect();
        let s = to_json(&e, Some(XATTR_LIMIT));
        assert!(s.len() <= XATTR_LIMIT, "{}", s.len());
        let back = from_json(s.as_bytes()).unwrap();
        assert!(back.deleted_truncated && back.deleted.len() < 5000);
        assert!(back.deleted.len() > 1000, "{}", back.deleted.len());
        assert_eq!(back.deleted[..], e.deleted[..back.deleted.len()]);
    }

    #[test]
    fn malformed_values_are_errors() {
        for bad in [
            &b"{\"type\":\"file\"}"[..],
            b"[1] 2",
            b"{\"a\":1,}",
            b"\xff",
        ] {
            assert!(from_json(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}

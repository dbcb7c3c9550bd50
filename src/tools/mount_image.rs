//! `strata mount-image`: mounts a container image's layers without
//! unpacking them.
//!
//! ```text
//! strata mount-image [-f] [-d] [-o OPTS]... IMAGE[:TAG] MOUNTPOINT [-o OPTS]...
//! ```
//!
//! IMAGE is an OCI image layout directory (`oci-layout`, `index.json`,
//! `blobs/`) or a `docker save` tarball (`manifest.json`). Each layer
//! becomes a [`TarLayer`]: its headers are indexed at mount, and file data
//! is read from the mapped archive. An uncompressed layer is mapped where it
//! is (a blob, or its range inside the docker-save tarball); a gzip layer
//! is decompressed once into the cache (`-o cache=DIR`, else
//! `$XDG_CACHE_HOME/strata`, `/var/cache/strata` as root, or
//! `~/.cache/strata`), checked against its digest, written under a
//! temporary name and renamed into place, and reused by later mounts.
//!
//! The layers are the mount's lowers, the image's last layer on top.
//! `-o upperdir=DIR,workdir=DIR` makes the mount writable, and every other
//! option of a strata mount applies (`lowerdir=` does not: the image gives
//! the layers). The mount is served by the same daemon as any other, so it
//! returns once the mount is live.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use log::info;
use serde_json::Value;

use crate::layer::{Layer, MappedFile};
use crate::options::{self, Command};
use crate::tar::TarLayer;
use crate::tar::index::Index;
use crate::tar::sha256::Sha256;
use crate::{daemon, sys};

pub const USAGE: &str = "\
usage: strata mount-image [-f] [-d] [-o OPTS]... IMAGE[:TAG] MOUNTPOINT [-o OPTS]...

IMAGE   an OCI image layout directory, or a `docker save` tarball; :TAG picks
        one of several images (org.opencontainers.image.ref.name, RepoTags)
OPTS    upperdir=DIR,workdir=DIR   a writable mount
        cache=DIR                  where gzip layers are decompressed (once)
        and any other strata mount option
";

/// JSON documents larger than this are refused.
const MAX_JSON: u64 = 16 << 20;

type R<T> = Result<T, String>;

fn ctx<E: std::fmt::Display>(what: impl std::fmt::Display) -> impl FnOnce(E) -> String {
    move |e| format!("{what}: {e}")
}

/// The command line, sorted: the image, the cache, and the arguments left
/// for a strata mount command line.
#[derive(Debug, Default, PartialEq)]
struct Cli {
    image: OsString,
    cache: Option<PathBuf>,
    mount_args: Vec<OsString>,
    help: bool,
}

fn parse_cli(args: Vec<OsString>) -> R<Cli> {
    let mut cli = Cli::default();
    let mut positionals = Vec::new();
    let mut args = args.into_iter();
    fn option_list(cli: &mut Cli, list: &[u8]) -> R<()> {
        let mut kept = Vec::new();
        for item in options::split_option_list(list).map_err(|e| e.to_string())? {
            let key = item.split(|&b| b == b'=').next().unwrap_or(item);
            match key {
                b"cache" => match item.get(6..).filter(|v| !v.is_empty()) {
                    Some(dir) => cli.cache = Some(PathBuf::from(OsStr::from_bytes(dir))),
                    None => return Err("cache= needs a directory".into()),
                },
                b"lowerdir" => {
                    return Err("lowerdir= does not apply: the image gives the layers".into());
                }
                _ => kept.push(item),
            }
        }
        if !kept.is_empty() {
            cli.mount_args.push("-o".into());
            cli.mount_args
                .push(OsString::from_vec(kept.join(&b',').to_vec()));
        }
        Ok(())
    }
    while let Some(arg) = args.next() {
        match arg.as_bytes() {
            b"-h" | b"--help" => cli.help = true,
            b"-o" => {
                let list = args.next().ok_or("-o needs an argument")?;
                option_list(&mut cli, list.as_bytes())?;
            }
            [b'-', b'o', list @ ..] => option_list(&mut cli, list)?,
            b"--" => positionals.extend(args.by_ref()),
            [b'-', _, ..] => cli.mount_args.push(arg),
            _ => positionals.push(arg),
        }
    }
    if cli.help {
        return Ok(cli);
    }
    match <[OsString; 2]>::try_from(positionals) {
        Ok([image, mountpoint]) => {
            cli.image = image;
            cli.mount_args.push("--".into());
            cli.mount_args.push(mountpoint);
            Ok(cli)
        }
        Err(_) => Err("expected IMAGE and MOUNTPOINT (see strata mount-image --help)".into()),
    }
}

/// `strata mount-image ARGS...`.
pub fn run(args: Vec<OsString>) -> R<()> {
    // Before anything of ours is open: the daemon closes these.
    let inherited = sys::inherited_fds();
    let cli = parse_cli(args)?;
    if cli.help {
        print!("{USAGE}");
        return Ok(());
    }
    let mut args = cli.mount_args.clone();
    // A stand-in the parser requires; the image's layers replace it.
    args.splice(0..0, ["-o".into(), OsString::from("lowerdir=/")]);
    let mut config = match options::parse_args(args, sys::geteuid() == 0) {
        Ok(Command::Mount(config)) => config,
        Ok(Command::Version) => {
            println!("strata {}", env!("CARGO_PKG_VERSION"));
            return Ok(());
        }
        Ok(Command::Help) => {
            print!("{USAGE}");
            return Ok(());
        }
        Err(e) => return Err(e.to_string()),
    };
    config.lowerdirs.clear();
    options::drop_context_without_selinux(&mut config);
    let level = if config.debug { "debug" } else { "warn" };
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .try_init();
    for warning in &config.warnings {
        eprintln!("strata: warning: {warning}");
    }
    options::validate(&config).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let layers = open_image(&cli.image, cli.cache.as_deref())?;
    info!(
        "image: {} layer(s) ready in {:.1} ms; their file data is read from the mapped \
         archives (no FUSE passthrough for it)",
        layers.len(),
        started.elapsed().as_secs_f64() * 1e3
    );
    daemon::mount_layers_and_serve(&config, layers, &inherited).map_err(|e| e.to_string())
}

// ------------------------------------------------------------------ images

/// The image at `arg` (`PATH` or `PATH:TAG`), as lowers, top first.
pub fn open_image(arg: &OsStr, cache: Option<&Path>) -> R<Vec<Arc<dyn Layer>>> {
    let (path, tag) = split_tag(arg);
    let shown = path.display().to_string();
    let md = fs::metadata(&path).map_err(ctx(format!("image '{shown}'")))?;
    let cache = Cache { dir: cache };
    let mut layers = if md.is_dir() {
        if !path.join("oci-layout").exists() {
            return Err(format!(
                "image '{shown}': a directory but not an OCI image layout (no oci-layout file)"
            ));
        }
        oci_layers(&path, tag.as_deref(), &cache)?
    } else {
        docker_layers(&path, tag.as_deref(), &cache)?
    };
    if layers.is_empty() {
        return Err(format!("image '{shown}': the image has no layers"));
    }
    layers.reverse();
    Ok(layers)
}

/// `PATH:TAG` → (PATH, TAG) where PATH exists and the whole does not; the
/// longest existing prefix wins (a tag may hold colons too).
fn split_tag(arg: &OsStr) -> (PathBuf, Option<String>) {
    let bytes = arg.as_bytes();
    if Path::new(arg).exists() {
        return (PathBuf::from(arg), None);
    }
    for (i, _) in bytes.iter().enumerate().rev().filter(|(_, b)| **b == b':') {
        let head = Path::new(OsStr::from_bytes(&bytes[..i]));
        if i > 0 && head.exists() {
            let tag = String::from_utf8_lossy(&bytes[i + 1..]).into_owned();
            return (head.to_path_buf(), Some(tag));
        }
    }
    (PathBuf::from(arg), None)
}

/// Whether a stored name (`alpine:3.19`, `docker.io/library/alpine:3.19`,
/// `3.19`) is what the user asked for.
fn tag_matches(stored: &str, wanted: &str) -> bool {
    stored == wanted
        || stored.ends_with(&format!(":{wanted}"))
        || stored.ends_with(&format!("/{wanted}"))
        || wanted.ends_with(&format!(":{stored}"))
}

/// The compression of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
}

/// A layer as the manifest gives it.
struct LayerRef {
    /// For messages: `layer 2 (sha256:…)`.
    what: String,
    /// Digest of the (compressed) blob, `ALG:HEX`, where known.
    digest: Option<String>,
    compression: Compression,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `sha256:HEX` (or sha512) → (algorithm, hex), validated.
fn parse_digest(digest: &str) -> R<(&str, &str)> {
    let bad = || format!("bad digest reference '{digest}'");
    let (alg, hex) = digest.split_once(':').ok_or_else(bad)?;
    match alg {
        "sha256" if is_hex(hex, 64) => Ok((alg, hex)),
        "sha512" if is_hex(hex, 128) => Ok((alg, hex)),
        _ => Err(bad()),
    }
}

fn parse_json(bytes: &[u8], what: &str) -> R<Value> {
    serde_json::from_slice(bytes).map_err(ctx(format!("{what}: not valid JSON")))
}

fn read_limited(path: &Path, what: &str) -> R<Vec<u8>> {
    let file = File::open(path).map_err(ctx(what))?;
    let mut bytes = Vec::new();
    file.take(MAX_JSON + 1)
        .read_to_end(&mut bytes)
        .map_err(ctx(what))?;
    if bytes.len() as u64 > MAX_JSON {
        return Err(format!("{what}: larger than {MAX_JSON} bytes"));
    }
    Ok(bytes)
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// Media types of image indexes (lists of manifests).
const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// The compression a layer media type says, or why it cannot be mounted.
fn layer_compression(media_type: &str) -> Result<Compression, String> {
    let oci = |rest: &str| {
        media_type
            .strip_prefix("application/vnd.oci.image.layer.")
            .and_then(|m| {
                m.strip_prefix("v1.")
                    .or_else(|| m.strip_prefix("nondistributable.v1."))
            })
            == Some(rest)
    };
    if oci("tar") || media_type == "application/vnd.docker.image.rootfs.diff.tar" {
        Ok(Compression::None)
    } else if oci("tar+gzip")
        || media_type == "application/vnd.docker.image.rootfs.diff.tar.gzip"
        || media_type == "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
    {
        Ok(Compression::Gzip)
    } else if oci("tar+zstd") {
        Err(format!(
            "zstd-compressed layers are not supported ({media_type}): convert the image \
             to gzip or uncompressed layers"
        ))
    } else {
        Err(format!("unknown layer media type '{media_type}'"))
    }
}

/// The platform of a descriptor, `os/arch`.
fn platform(desc: &Value) -> Option<String> {
    let p = desc.get("platform")?;
    Some(format!(
        "{}/{}",
        str_field(p, "os")?,
        str_field(p, "architecture")?
    ))
}

/// One manifest of several: the only one, else the one for linux/amd64.
fn pick<'a>(
    candidates: Vec<&'a Value>,
    what: &str,
    names: impl Fn(&Value) -> String,
) -> R<&'a Value> {
    if candidates.len() == 1 {
        return Ok(candidates[0]);
    }
    let amd64: Vec<_> = candidates
        .iter()
        .copied()
        .filter(|d| platform(d).as_deref() == Some("linux/amd64"))
        .collect();
    if amd64.len() == 1 {
        return Ok(amd64[0]);
    }
    if candidates.is_empty() {
        return Err(format!("{what}: no image in it"));
    }
    let list: BTreeSet<String> = candidates.iter().map(|d| names(d)).collect();
    Err(format!(
        "{what}: {} images in it; name one with IMAGE:TAG ({})",
        candidates.len(),
        list.into_iter().collect::<Vec<_>>().join(", ")
    ))
}

/// An OCI image layout directory, for reading its blobs.
struct Layout<'a> {
    dir: &'a Path,
    shown: String,
}

impl Layout<'_> {
    fn blob_path(&self, digest: &str) -> R<PathBuf> {
        let (alg, hex) =
            parse_digest(digest).map_err(|e| format!("image '{}': {e}", self.shown))?;
        let path = self.dir.join("blobs").join(alg).join(hex);
        if !path.is_file() {
            return Err(format!(
                "image '{}': blob {digest} is missing ({})",
                self.shown,
                path.display()
            ));
        }
        Ok(path)
    }

    /// A JSON blob, its digest and size checked against `desc`.
    fn json_blob(&self, desc: &Value) -> R<Value> {
        let digest = str_field(desc, "digest")
            .ok_or_else(|| format!("image '{}': a descriptor without a digest", self.shown))?;
        let path = self.blob_path(digest)?;
        let what = format!("image '{}': blob {digest}", self.shown);
        let bytes = read_limited(&path, &what)?;
        check_size(desc, bytes.len() as u64, &what)?;
        let (alg, hex) = parse_digest(digest).expect("checked by blob_path");
        if alg == "sha256" && Sha256::hex_of(&bytes) != hex {
            return Err(format!("{what}: content does not match its digest"));
        }
        parse_json(&bytes, &what)
    }
}

fn check_size(desc: &Value, size: u64, what: &str) -> R<()> {
    match desc.get("size").map(Value::as_u64) {
        Some(Some(want)) if want != size => {
            Err(format!("{what}: {size} bytes, the descriptor says {want}"))
        }
        Some(None) => Err(format!("{what}: bad size in the descriptor")),
        _ => Ok(()),
    }
}

fn ref_name(desc: &Value) -> Option<&str> {
    desc.get("annotations").and_then(|a| {
        str_field(a, "org.opencontainers.image.ref.name")
            .or_else(|| str_field(a, "io.containerd.image.name"))
    })
}

fn oci_layers(dir: &Path, tag: Option<&str>, cache: &Cache) -> R<Vec<Arc<dyn Layer>>> {
    let shown = dir.display().to_string();
    let layout_file = read_limited(&dir.join("oci-layout"), &format!("image '{shown}'"))?;
    let layout_json = parse_json(&layout_file, &format!("image '{shown}': oci-layout"))?;
    if str_field(&layout_json, "imageLayoutVersion").is_none() {
        return Err(format!(
            "image '{shown}': oci-layout has no imageLayoutVersion: not an OCI image layout"
        ));
    }
    let layout = Layout {
        dir,
        shown: shown.clone(),
    };
    let index_bytes = read_limited(&dir.join("index.json"), &format!("image '{shown}'"))?;
    let index = parse_json(&index_bytes, &format!("image '{shown}': index.json"))?;
    let manifests = index
        .get("manifests")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("image '{shown}': index.json has no manifests"))?;
    let candidates: Vec<&Value> = match tag {
        Some(t) => {
            let found: Vec<_> = manifests
                .iter()
                .filter(|d| ref_name(d).is_some_and(|n| tag_matches(n, t)))
                .collect();
            if found.is_empty() {
                let names: BTreeSet<&str> = manifests.iter().filter_map(ref_name).collect();
                return Err(format!(
                    "image '{shown}': no image tagged '{t}' (tags: {})",
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.into_iter().collect::<Vec<_>>().join(", ")
                    }
                ));
            }
            found
        }
        None => manifests.iter().collect(),
    };
    let name_of = |d: &Value| {
        ref_name(d)
            .map(str::to_owned)
            .or_else(|| platform(d))
            .unwrap_or_else(|| str_field(d, "digest").unwrap_or("?").to_owned())
    };
    let desc = pick(candidates, &format!("image '{shown}'"), name_of)?;
    let mut manifest = layout.json_blob(desc)?;
    let is_index = |doc: &Value, desc: &Value| {
        let t = str_field(desc, "mediaType").or_else(|| str_field(doc, "mediaType"));
        t.is_some_and(|t| INDEX_TYPES.contains(&t))
            || (doc.get("manifests").is_some() && doc.get("layers").is_none())
    };
    if is_index(&manifest, desc) {
        // One level of index: pick the platform's manifest in it.
        let inner = manifest
            .get("manifests")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("image '{shown}': an image index without manifests"))?;
        let desc = pick(inner.iter().collect(), &format!("image '{shown}'"), name_of)?;
        let inner_manifest = layout.json_blob(desc)?;
        if is_index(&inner_manifest, desc) {
            return Err(format!(
                "image '{shown}': an index inside an index inside index.json is not supported"
            ));
        }
        manifest = inner_manifest;
    }
    let layers = manifest
        .get("layers")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("image '{shown}': the manifest has no layers"))?;
    let mut out: Vec<Arc<dyn Layer>> = Vec::new();
    for (i, desc) in layers.iter().enumerate() {
        let digest = str_field(desc, "digest")
            .ok_or_else(|| format!("image '{shown}': layer {i} has no digest"))?;
        let what = format!("image '{shown}': layer {i} ({digest})");
        let media = str_field(desc, "mediaType").ok_or_else(|| format!("{what}: no media type"))?;
        let compression = layer_compression(media).map_err(|e| format!("{what}: {e}"))?;
        let path = layout.blob_path(digest)?;
        let file = File::open(&path).map_err(ctx(&what))?;
        let size = file.metadata().map_err(ctx(&what))?.len();
        check_size(desc, size, &what)?;
        let layer = LayerRef {
            what: what.clone(),
            digest: Some(digest.to_owned()),
            compression,
        };
        let dev = made_up_dev(digest.as_bytes(), i);
        out.push(cache.layer(&layer, path, Arc::new(file), None, dev)?);
    }
    Ok(out)
}

/// The layers of a `docker save` tarball, bottom first.
fn docker_layers(path: &Path, tag: Option<&str>, cache: &Cache) -> R<Vec<Arc<dyn Layer>>> {
    let shown = path.display().to_string();
    let what = format!("image '{shown}'");
    let file = Arc::new(File::open(path).map_err(ctx(&what))?);
    let map = Arc::new(map_file(&file, &what)?);
    let outer = Index::build(&map).map_err(|e| {
        format!("{what}: neither an OCI image layout directory nor a docker-save tarball: {e}")
    })?;
    let (off, len) = outer_file(&outer, b"manifest.json")
        .map_err(|e| format!("{what}: not a docker-save tarball (manifest.json: {e})"))?;
    if len > MAX_JSON {
        return Err(format!(
            "{what}: manifest.json larger than {MAX_JSON} bytes"
        ));
    }
    let manifest = parse_json(
        &map[off as usize..(off + len) as usize],
        &format!("{what}: manifest.json"),
    )?;
    let images = manifest
        .as_array()
        .ok_or_else(|| format!("{what}: manifest.json is not a list of images"))?;
    let tags_of = |img: &Value| -> Vec<String> {
        img.get("RepoTags")
            .and_then(Value::as_array)
            .map(|t| {
                t.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let candidates: Vec<&Value> = match tag {
        Some(t) => {
            let found: Vec<_> = images
                .iter()
                .filter(|img| tags_of(img).iter().any(|n| tag_matches(n, t)))
                .collect();
            if found.is_empty() {
                let all: BTreeSet<String> = images.iter().flat_map(tags_of).collect();
                return Err(format!(
                    "{what}: no image tagged '{t}' (tags: {})",
                    all.into_iter().collect::<Vec<_>>().join(", ")
                ));
            }
            found
        }
        None => images.iter().collect(),
    };
    let image = pick(candidates, &what, |img| {
        tags_of(img)
            .first()
            .cloned()
            .unwrap_or_else(|| str_field(img, "Config").unwrap_or("?").to_owned())
    })?;
    let layer_paths = image
        .get("Layers")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{what}: manifest.json gives no Layers"))?;
    let mut out: Vec<Arc<dyn Layer>> = Vec::new();
    for (i, p) in layer_paths.iter().enumerate() {
        let p = p
            .as_str()
            .ok_or_else(|| format!("{what}: a layer path is not a string"))?;
        let lwhat = format!("{what}: layer {i} ({p})");
        let (off, len) = outer_file(&outer, p.as_bytes()).map_err(ctx(&lwhat))?;
        let bytes = MappedFile::new(map.clone(), off, len).map_err(ctx(&lwhat))?;
        let compression = if bytes.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            return Err(format!("{lwhat}: zstd-compressed layers are not supported"));
        } else {
            Compression::None
        };
        let layer = LayerRef {
            what: lwhat,
            digest: None,
            compression,
        };
        let source = PathBuf::from(format!("{shown}:{p}"));
        let dev = made_up_dev(source.as_os_str().as_bytes(), i);
        out.push(cache.layer(&layer, source, file.clone(), Some(bytes), dev)?);
    }
    Ok(out)
}

/// The data range of regular file `name` in a docker-save tarball,
/// following symlinks inside it (docker links a layer it has twice).
fn outer_file(outer: &Index, name: &[u8]) -> Result<(u64, u64), String> {
    let mut path: Vec<Vec<u8>> = Vec::new();
    let mut pending: Vec<u8> = name.to_vec();
    for _ in 0..16 {
        if pending.starts_with(b"/") {
            return Err("an absolute symlink".into());
        }
        for part in pending.split(|&b| b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => {
                    path.pop().ok_or("a path out of the archive")?;
                }
                _ => path.push(part.to_vec()),
            }
        }
        let joined = path.join(&b'/');
        let node = outer
            .lookup(&joined)
            .map_err(|_| "not in the archive".to_string())?;
        let (_, inode) = outer.inode(node);
        match inode.kind() {
            libc::S_IFREG => return Ok((inode.data, inode.size)),
            libc::S_IFLNK => {
                pending = outer.target(inode).to_vec();
                path.pop();
            }
            _ => return Err("not a regular file".into()),
        }
    }
    Err("too many levels of symlinks".into())
}

/// A device number for a layer: stable for the same blob at the same
/// place in the stack, and no real filesystem's (top bits set).
fn made_up_dev(key: &[u8], position: usize) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.iter().chain(&position.to_le_bytes()) {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    0xfff0_0000_0000_0000 | (h >> 12)
}

fn map_file(file: &File, what: &str) -> R<memmap2::Mmap> {
    let len = file.metadata().map_err(ctx(what))?.len();
    if len == 0 {
        return Err(format!("{what}: an empty file, not a tar archive"));
    }
    sys::map_read_only(file).map_err(ctx(format!("{what}: cannot map it")))
}

/// All of `file`, mapped.
fn map_whole(file: &File, what: &str) -> R<MappedFile> {
    let map = Arc::new(map_file(file, what)?);
    let len = map.len() as u64;
    MappedFile::new(map, 0, len).map_err(ctx(what))
}

// ------------------------------------------------------------------- cache

/// Where gzip layers are decompressed to.
struct Cache<'a> {
    dir: Option<&'a Path>,
}

impl Cache<'_> {
    fn dir(&self) -> R<PathBuf> {
        if let Some(d) = self.dir {
            return Ok(d.to_path_buf());
        }
        if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| Path::new(x).is_absolute()) {
            return Ok(Path::new(&x).join("strata"));
        }
        if sys::geteuid() == 0 {
            return Ok(PathBuf::from("/var/cache/strata"));
        }
        match std::env::var_os("HOME").filter(|h| Path::new(h).is_absolute()) {
            Some(home) => Ok(Path::new(&home).join(".cache/strata")),
            None => Err("no cache directory for gzip layers: give -o cache=DIR".into()),
        }
    }

    /// The layer: mapped where it is when uncompressed (`bytes`, a range of
    /// `file`, or the whole of `file`), else from its decompressed copy in
    /// the cache (made now if it is not there yet, and made again if the
    /// copy there is no tar archive any more).
    fn layer(
        &self,
        layer: &LayerRef,
        source: PathBuf,
        file: Arc<File>,
        bytes: Option<MappedFile>,
        dev: u64,
    ) -> R<Arc<dyn Layer>> {
        let started = Instant::now();
        let archive = match bytes {
            Some(bytes) => bytes,
            None => map_whole(&file, &layer.what)?,
        };
        let tar = match layer.compression {
            Compression::None => {
                TarLayer::new(source, dev, archive, file).map_err(|e| e.to_string())?
            }
            Compression::Gzip => {
                let from_cache = |path: &Path| -> R<TarLayer> {
                    let shown = path.display().to_string();
                    let file = Arc::new(File::open(path).map_err(ctx(&shown))?);
                    let map = map_whole(&file, &shown)?;
                    TarLayer::new(source.clone(), dev, map, file)
                        .map_err(|e| format!("{} (decompressed into {shown}): {e}", layer.what))
                };
                let (path, reused) = self.decompressed(layer, &archive)?;
                match from_cache(&path) {
                    Err(e) if reused => {
                        log::warn!("{e}: decompressing it again");
                        fs::remove_file(&path).map_err(ctx(path.display()))?;
                        from_cache(&self.decompressed(layer, &archive)?.0)?
                    }
                    other => other?,
                }
            }
        };
        info!(
            "{}: {} entries indexed in {:.1} ms",
            layer.what,
            tar.entries(),
            started.elapsed().as_secs_f64() * 1e3
        );
        Ok(Arc::new(tar))
    }

    /// The cache file holding `compressed` decompressed, keyed by the
    /// blob's digest (for a docker-save layer, which has none, by the
    /// SHA-256 of its bytes). Made once: decompressed into a temporary file
    /// of the cache, checked against the digest, synced, renamed into
    /// place; a later mount finds it and decompresses nothing.
    /// Also says whether the file was there already.
    fn decompressed(&self, layer: &LayerRef, compressed: &[u8]) -> R<(PathBuf, bool)> {
        let what = &layer.what;
        let (alg, hex) = match &layer.digest {
            Some(d) => {
                let (alg, hex) = parse_digest(d).map_err(|e| format!("{what}: {e}"))?;
                (alg.to_owned(), hex.to_owned())
            }
            None => ("sha256".to_owned(), Sha256::hex_of(compressed)),
        };
        let dir = self.dir()?;
        let path = dir.join(format!("{alg}-{hex}.tar"));
        if path.is_file() {
            info!("{what}: decompressed copy reused from {}", path.display());
            return Ok((path, true));
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(ctx(format!("cache directory '{}'", dir.display())))?;
        if alg == "sha256" && layer.digest.is_some() && Sha256::hex_of(compressed) != hex {
            return Err(format!("{what}: content does not match its digest"));
        }
        let tmp_prefix = format!(".{alg}-{hex}.tar.tmp.");
        remove_dead_temporaries(&dir, &tmp_prefix);
        let tmp = dir.join(format!("{tmp_prefix}{}", std::process::id()));
        let started = Instant::now();
        let result = (|| -> io::Result<()> {
            let out = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            let mut writer = BufWriter::with_capacity(1 << 20, out);
            let mut decoder = flate2::read::MultiGzDecoder::new(compressed);
            io::copy(&mut decoder, &mut writer)?;
            let out = writer.into_inner().map_err(|e| e.into_error())?;
            out.sync_all()?;
            fs::rename(&tmp, &path)?;
            File::open(&dir)?.sync_all()
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(format!("{what}: cannot decompress it into the cache: {e}"));
        }
        info!(
            "{what}: decompressed into {} in {:.1} ms",
            path.display(),
            started.elapsed().as_secs_f64() * 1e3
        );
        Ok((path, false))
    }
}

/// Removes what a decompression killed part way left in the cache:
/// temporaries `PREFIX<pid>` of processes that are gone.
fn remove_dead_temporaries(dir: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            info!(
                "removing {} (left by a decompression that was killed)",
                name.display()
            );
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn command_line() {
        let cli = parse_cli(os(&[
            "-o",
            "upperdir=/u,cache=/c,workdir=/w",
            "img",
            "/mnt",
            "-oro,\"context=a,b\"",
            "-f",
        ]))
        .unwrap();
        assert_eq!(cli.image, "img");
        assert_eq!(cli.cache.as_deref(), Some(Path::new("/c")));
        assert_eq!(
            cli.mount_args,
            os(&[
                "-o",
                "upperdir=/u,workdir=/w",
                "-o",
                "ro,\"context=a,b\"",
                "-f",
                "--",
                "/mnt"
            ])
        );
        assert!(parse_cli(os(&["img"])).is_err());
        assert!(parse_cli(os(&["a", "b", "c"])).is_err());
        assert!(
            parse_cli(os(&["-o", "lowerdir=/x", "a", "b"]))
                .unwrap_err()
                .contains("lowerdir")
        );
        assert!(parse_cli(os(&["-o", "cache=", "a", "b"])).is_err());
        assert!(parse_cli(os(&["--help"])).unwrap().help);
        // Items split as a mount splits them: `\,` stays inside one.
        let cli = parse_cli(os(&["-o", "a\\,b,cache=/c", "i", "m"])).unwrap();
        assert_eq!(cli.cache, Some(PathBuf::from("/c")));
        assert_eq!(cli.mount_args, os(&["-o", "a\\,b", "--", "m"]));
    }

    #[test]
    fn digests_and_media_types() {
        let hex = "a".repeat(64);
        assert!(parse_digest(&format!("sha256:{hex}")).is_ok());
        assert!(parse_digest(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(parse_digest("sha256:../../etc/passwd").is_err());
        assert!(parse_digest(&format!("md5:{hex}")).is_err());
        assert!(parse_digest("nocolon").is_err());
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.v1.tar"),
            Ok(Compression::None)
        );
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"),
            Ok(Compression::Gzip)
        );
        assert_eq!(
            layer_compression("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Ok(Compression::Gzip)
        );
        assert!(
            layer_compression("application/vnd.oci.image.layer.v1.tar+zstd")
                .unwrap_err()
                .contains("zstd")
        );
        assert!(
            layer_compression("text/plain")
                .unwrap_err()
                .contains("unknown")
        );
        assert!(tag_matches("docker.io/library/alpine:3.19", "3.19"));
        assert!(tag_matches("alpine:3.19", "alpine:3.19"));
        assert!(tag_matches("3.19", "alpine:3.19"));
        assert!(!tag_matches("alpine:3.18", "3.19"));
        assert_ne!(made_up_dev(b"x", 0), made_up_dev(b"x", 1));
        assert_eq!(made_up_dev(b"x", 0) >> 52, 0xfff);
    }
}

//! `volume.toml`: which fragments make a volume, which keys vouch for them,
//! the filesystem options and the overlay.
//!
//! ```toml
//! name = "root"                       # NBD export name (required)
//! fragments = ["base.frag", "app.frag"]   # at least one, no duplicates
//! trust = ["lab.key.pub"]             # at least one
//! [filesystem]                        # every key optional
//! type = "ext4"                       # the only type
//! label = "mosaic"                    # at most 16 bytes
//! free = "1GiB"                       # B, KiB, MiB, GiB, TiB or an integer (bytes); default 256MiB
//! uuid = "0f2b...-..."                # 8-4-4-4-12 hex; default: derived from the volume identity
//! [overlay]                           # omit: the export is read-only
//! path = "root.overlay"
//! ```
//!
//! Paths are relative to the manifest's directory. Fragment and key files
//! must exist when the manifest is loaded; the overlay file need not.
//! Every problem found is reported as `FILE:LINE: message` naming the key
//! (and the file, for a missing one): unknown keys, wrong types, bad
//! sizes, missing files, duplicates.
//!
//! [`FragmentCache`] and [`open_fragments`] then open and check every
//! fragment the manifest names, each file once per process.

use crate::error::{Error, Problem, Result};
use fragments::{Fragment, Trust, VerifyingKey};
use serde::Deserialize;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use toml::Spanned;

/// Default free space the guest sees: 256 MiB.
pub const DEFAULT_FREE: u64 = 256 << 20;
/// Default filesystem label.
pub const DEFAULT_LABEL: &str = "mosaic";
/// Longest ext4 volume label, in bytes.
pub const LABEL_MAX: usize = 16;
/// Longest NBD export name, in bytes (the protocol's limit).
pub const NAME_MAX: usize = 4096;

/// A parsed, checked `volume.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The manifest file, as given.
    pub path: PathBuf,
    /// The NBD export name.
    pub name: String,
    /// Fragment files, resolved against the manifest's directory, in the
    /// manifest's order (the merge does not depend on it).
    pub fragments: Vec<PathBuf>,
    /// Public key files (SPKI PEM), resolved.
    pub trust: Vec<PathBuf>,
    pub filesystem: FsOptions,
    /// The overlay file, resolved; `None`: the export is read-only.
    pub overlay: Option<PathBuf>,
}

/// The `[filesystem]` table with defaults applied (`type` is always ext4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsOptions {
    pub label: String,
    /// Free space the guest sees, in bytes.
    pub free: u64,
    pub uuid: Option<[u8; 16]>,
}

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions {
            label: DEFAULT_LABEL.into(),
            free: DEFAULT_FREE,
            uuid: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: Spanned<String>,
    fragments: Spanned<Vec<Spanned<String>>>,
    trust: Spanned<Vec<Spanned<String>>>,
    filesystem: Option<RawFs>,
    overlay: Option<RawOverlay>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFs {
    #[serde(rename = "type")]
    kind: Option<Spanned<String>>,
    label: Option<Spanned<String>>,
    free: Option<Spanned<toml::Value>>,
    uuid: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOverlay {
    path: Spanned<String>,
}

/// 1-based line of a byte offset (an offset at the end of the text, where
/// an unfinished value is noticed, counts as its last non-blank line).
fn line_of(text: &str, offset: usize) -> usize {
    let content = text.trim_end().len();
    let end = if offset >= content {
        content.saturating_sub(1)
    } else {
        offset
    };
    text.as_bytes()[..end]
        .iter()
        .filter(|&&c| c == b'\n')
        .count()
        + 1
}

struct Problems<'a> {
    text: &'a str,
    list: Vec<Problem>,
}

impl Problems<'_> {
    fn at<T>(&mut self, v: &Spanned<T>, message: String) {
        let line = Some(line_of(self.text, v.span().start));
        self.list.push(Problem { line, message });
    }
}

impl Manifest {
    /// Reads and checks a manifest file. A file that cannot be read is
    /// [`Error::ManifestIo`]; anything wrong inside is [`Error::Manifest`].
    pub fn load(path: impl AsRef<Path>) -> Result<Manifest> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::ManifestIo {
            path: path.to_owned(),
            op: "read manifest",
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let off = e.utf8_error().valid_up_to();
            let text = String::from_utf8_lossy(e.as_bytes());
            Error::Manifest {
                path: path.to_owned(),
                problems: vec![Problem {
                    line: Some(line_of(&text, off)),
                    message: "not UTF-8 text".into(),
                }],
            }
        })?;
        Manifest::parse(path, &text)
    }

    /// Checks manifest `text` as if read from `path` (relative paths are
    /// resolved against `path`'s directory, and files must exist).
    pub fn parse(path: &Path, text: &str) -> Result<Manifest> {
        let err = |problems| Error::Manifest {
            path: path.to_owned(),
            problems,
        };
        let raw: Raw = toml::from_str(text).map_err(|e| err(vec![syntax_problem(text, &e)]))?;
        // "volume.toml" has the parent "": names then stay as written.
        let base = path.parent().unwrap_or(Path::new("")).to_owned();
        let mut pr = Problems {
            text,
            list: Vec::new(),
        };

        let name = raw.name.get_ref().clone();
        if name.is_empty() {
            pr.at(&raw.name, "name: the export name is empty".into());
        } else if name.len() > NAME_MAX {
            pr.at(
                &raw.name,
                format!("name: {} bytes, at most {NAME_MAX}", name.len()),
            );
        } else if name.contains('\0') {
            pr.at(&raw.name, "name: contains a NUL character".into());
        }

        let fragments = files(&mut pr, &base, "fragments", "fragment", &raw.fragments);
        let trust = files(&mut pr, &base, "trust", "key", &raw.trust);

        let mut fs = FsOptions::default();
        if let Some(f) = &raw.filesystem {
            if let Some(t) = &f.kind {
                if t.get_ref() != "ext4" {
                    pr.at(
                        t,
                        format!(
                            "filesystem.type: {:?} is not supported (the only type is \"ext4\")",
                            t.get_ref()
                        ),
                    );
                }
            }
            if let Some(l) = &f.label {
                let s = l.get_ref();
                if s.len() > LABEL_MAX {
                    pr.at(
                        l,
                        format!(
                            "filesystem.label: {s:?} is {} bytes, at most {LABEL_MAX}",
                            s.len()
                        ),
                    );
                } else if s.contains('\0') {
                    pr.at(l, "filesystem.label: contains a NUL character".into());
                } else {
                    fs.label = s.clone();
                }
            }
            if let Some(v) = &f.free {
                match size_value(v.get_ref()) {
                    Ok(n) => fs.free = n,
                    Err(m) => pr.at(v, format!("filesystem.free: {m}")),
                }
            }
            if let Some(u) = &f.uuid {
                match parse_uuid(u.get_ref()) {
                    Some(b) => fs.uuid = Some(b),
                    None => pr.at(
                        u,
                        format!(
                            "filesystem.uuid: {:?} is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, hex)",
                            u.get_ref()
                        ),
                    ),
                }
            }
        }

        let mut overlay = None;
        if let Some(o) = &raw.overlay {
            let s = o.path.get_ref();
            if s.is_empty() {
                pr.at(&o.path, "overlay.path: empty path".into());
            } else {
                let p = base.join(s);
                let same = |q: &PathBuf| {
                    q == &p
                        || match (std::fs::canonicalize(q), std::fs::canonicalize(&p)) {
                            (Ok(a), Ok(b)) => a == b,
                            _ => false,
                        }
                };
                if fragments.iter().chain(&trust).any(same) {
                    pr.at(
                        &o.path,
                        format!(
                            "overlay.path: {} is a fragment or key of this manifest",
                            p.display()
                        ),
                    );
                } else if p.is_dir() {
                    pr.at(
                        &o.path,
                        format!("overlay.path: {} is a directory", p.display()),
                    );
                } else {
                    overlay = Some(p);
                }
            }
        }

        if !pr.list.is_empty() {
            return Err(err(pr.list));
        }
        Ok(Manifest {
            path: path.to_owned(),
            name,
            fragments,
            trust,
            filesystem: fs,
            overlay,
        })
    }
}

/// A parse or type error from the toml crate, located: the line, and the
/// key when the line is a `key = value` one (prefixed with its table).
fn syntax_problem(text: &str, e: &toml::de::Error) -> Problem {
    let message = e.message().trim_end().replace('\n', "; ");
    let Some(span) = e.span() else {
        return Problem {
            line: None,
            message,
        };
    };
    // A span over the whole document (a missing top-level key) has no line.
    if span.start == 0 && span.end >= text.trim_end().len() {
        return Problem {
            line: None,
            message,
        };
    }
    let line = line_of(text, span.start);
    let lines: Vec<&str> = text.lines().collect();
    let bare = |k: &str| {
        !k.is_empty()
            && k.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
    };
    let key = lines.get(line - 1).and_then(|l| {
        let (k, _) = l.split_once('=')?;
        let k = k.trim();
        bare(k).then_some(k)
    });
    let table = lines[..(line - 1).min(lines.len())]
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| l.starts_with('['))
        .and_then(|l| {
            let t = l.trim_start_matches('[').split(']').next()?.trim();
            bare(t).then_some(t)
        });
    let message = match (table, key) {
        (Some(t), Some(k)) => format!("{t}.{k}: {message}"),
        (None, Some(k)) => format!("{k}: {message}"),
        _ => message,
    };
    Problem {
        line: Some(line),
        message,
    }
}

/// Resolves a list of file names, checking that each exists, is not a
/// directory and is listed once; at least one is required.
fn files(
    pr: &mut Problems,
    base: &Path,
    key: &str,
    what: &str,
    list: &Spanned<Vec<Spanned<String>>>,
) -> Vec<PathBuf> {
    if list.get_ref().is_empty() {
        pr.at(list, format!("{key}: at least one {what} is required"));
    }
    let mut out = Vec::with_capacity(list.get_ref().len());
    let mut seen: HashMap<PathBuf, String> = HashMap::new();
    for item in list.get_ref() {
        let s = item.get_ref();
        if s.is_empty() {
            pr.at(item, format!("{key}: empty file name"));
            continue;
        }
        let p = base.join(s);
        match std::fs::metadata(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                pr.at(item, format!("{key}: {}: no such file", p.display()));
                continue;
            }
            Err(e) => {
                pr.at(item, format!("{key}: {}: {e}", p.display()));
                continue;
            }
            Ok(m) if m.is_dir() => {
                pr.at(item, format!("{key}: {}: is a directory", p.display()));
                continue;
            }
            Ok(_) => {}
        }
        let canon = std::fs::canonicalize(&p).unwrap_or_else(|_| p.clone());
        if let Some(first) = seen.get(&canon) {
            pr.at(
                item,
                format!("{key}: {s:?} is listed twice (also as {first:?})"),
            );
            continue;
        }
        seen.insert(canon, s.clone());
        out.push(p);
    }
    out
}

/// A size: a non-negative integer (bytes) or a string `N[UNIT]` with UNIT
/// one of B, KiB, MiB, GiB, TiB.
fn size_value(v: &toml::Value) -> std::result::Result<u64, String> {
    match v {
        toml::Value::Integer(n) => {
            u64::try_from(*n).map_err(|_| format!("{n} is negative (a size in bytes)"))
        }
        toml::Value::String(s) => parse_size(s),
        other => Err(format!(
            "expected a size like \"256MiB\" or a number of bytes, found a {}",
            other.type_str()
        )),
    }
}

/// Parses `N`, `NB`, `NKiB`, `NMiB`, `NGiB`, `NTiB` (an optional space
/// between the number and the unit).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = t.split_at(digits);
    let bad = || {
        format!("bad size {s:?}: expected a whole number with an optional unit B, KiB, MiB, GiB or TiB (e.g. \"256MiB\")")
    };
    if num.is_empty() {
        return Err(bad());
    }
    let shift = match unit.trim_start() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        "TiB" => 40,
        _ => return Err(bad()),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad size {s:?}: too large"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("bad size {s:?}: too large"))
}

/// Parses the standard 8-4-4-4-12 hex form (either case).
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    let mut k = 0;
    let mut i = 0;
    while i < 36 {
        if matches!(i, 8 | 13 | 18 | 23) {
            if b[i] != b'-' {
                return None;
            }
            i += 1;
            continue;
        }
        let hi = (b[i] as char).to_digit(16)?;
        let lo = (b[i + 1] as char).to_digit(16)?;
        out[k] = (hi * 16 + lo) as u8;
        k += 1;
        i += 2;
    }
    Some(out)
}

/// One file's place in the cache: empty until opened successfully.
type Slot = Arc<Mutex<Option<Arc<Fragment>>>>;

/// Opens fragments, each file at most once per cache (so once per process
/// when the server shares one cache between all its manifests).
///
/// Files are keyed by device and inode number, so a file reached through
/// different paths (symlinks, `..`, hard links) is the same entry; the
/// cache holds the file open, so the number cannot be reused meanwhile.
/// A cached fragment is handed out again only if its signer is trusted by
/// the caller's keys.
#[derive(Default)]
pub struct FragmentCache {
    slots: Mutex<HashMap<(u64, u64), Slot>>,
}

impl FragmentCache {
    pub fn new() -> FragmentCache {
        FragmentCache::default()
    }

    /// Number of fragments open in the cache.
    pub fn len(&self) -> usize {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .values()
            .filter(|s| s.lock().map(|g| g.is_some()).unwrap_or(false))
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Opens (and fully checks, see [`Fragment::open`]) the fragment at
    /// `path` trusting `keys`, or returns the already open one.
    pub fn open(&self, path: &Path, keys: &[VerifyingKey]) -> fragments::Result<Arc<Fragment>> {
        let md = std::fs::metadata(path).map_err(|source| fragments::Error::Io {
            path: path.to_owned(),
            op: "stat",
            source,
        })?;
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots.entry((md.dev(), md.ino())).or_default().clone()
        };
        // Held while opening: a second caller for the same file waits and
        // then shares the result instead of opening it again.
        let mut g = slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = g.as_ref() {
            let signer = f.header().signer;
            if !keys.iter().any(|k| k.as_bytes() == &signer) {
                return Err(fragments::Error::Untrusted {
                    path: path.to_owned(),
                    signer: fragments::keys::key_id(&signer),
                });
            }
            return Ok(f.clone());
        }
        let f = Arc::new(Fragment::open(path, Trust::Keys(keys))?);
        *g = Some(f.clone());
        Ok(f)
    }

    /// Loads the manifest's trust keys and opens all its fragments, in
    /// parallel, in the manifest's order. Every failure is reported, each
    /// naming its file: all unreadable keys ([`Error::Keys`]), else all
    /// refused fragments ([`Error::Fragments`]).
    pub fn open_manifest(&self, manifest: &Manifest) -> Result<Vec<Arc<Fragment>>> {
        let mut keys = Vec::with_capacity(manifest.trust.len());
        let mut bad_keys = Vec::new();
        for p in &manifest.trust {
            match fragments::keys::read_public(p) {
                Ok(k) => keys.push(k),
                Err(e) => bad_keys.push(e),
            }
        }
        if !bad_keys.is_empty() {
            return Err(Error::Keys(bad_keys));
        }
        let keys = &keys;
        let results: Vec<fragments::Result<Arc<Fragment>>> = std::thread::scope(|s| {
            let handles: Vec<_> = manifest
                .fragments
                .iter()
                .map(|p| s.spawn(move || self.open(p, keys)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        let mut out = Vec::with_capacity(results.len());
        let mut bad = Vec::new();
        for r in results {
            match r {
                Ok(f) => out.push(f),
                Err(e) => bad.push(e),
            }
        }
        if !bad.is_empty() {
            return Err(Error::Fragments(bad));
        }
        Ok(out)
    }
}

/// Opens every fragment of `manifest` with a fresh cache (see
/// [`FragmentCache::open_manifest`]); a process serving several manifests
/// should share one [`FragmentCache`] instead.
pub fn open_fragments(manifest: &Manifest) -> Result<Vec<Arc<Fragment>>> {
    FragmentCache::new().open_manifest(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        for f in ["a.frag", "b.frag", "k.pub"] {
            std::fs::write(d.path().join(f), b"x").unwrap();
        }
        let m = d.path().join("volume.toml");
        (d, m)
    }

    fn problems(path: &Path, text: &str) -> Vec<Problem> {
        match Manifest::parse(path, text) {
            Err(Error::Manifest { problems, .. }) => problems,
            Err(e) => panic!("unexpected error {e}"),
            Ok(m) => panic!("accepted: {m:?}"),
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1 GiB"), Ok(1 << 30));
        assert_eq!(parse_size("12"), Ok(12));
        assert_eq!(parse_size("12B"), Ok(12));
        assert_eq!(parse_size("3TiB"), Ok(3 << 40));
        assert_eq!(parse_size("0KiB"), Ok(0));
        for bad in [
            "12XB",
            "",
            "MiB",
            "-1MiB",
            "1.5GiB",
            "1mib",
            "1 G",
            "99999999999TiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert!(parse_size("12XB").unwrap_err().contains("\"12XB\""));
    }

    #[test]
    fn uuids() {
        assert_eq!(
            parse_uuid("01234567-89ab-CDEF-0123-456789abcdef"),
            Some([
                0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
                0xcd, 0xef
            ])
        );
        for bad in [
            "",
            "0123456789abcdef0123456789abcdef",
            "01234567-89ab-cdef-0123-456789abcdeg",
            "01234567-89ab-cdef-0123-456789abcde",
            "0123456-789ab-cdef-0123-456789abcdef",
            "+1234567-89ab-cdef-0123-456789abcdef",
        ] {
            assert_eq!(parse_uuid(bad), None, "{bad}");
        }
    }

    #[test]
    fn full_manifest_with_defaults_and_resolution() {
        let (d, m) = setup();
        let man = Manifest::parse(
            &m,
            "name = \"root\"\nfragments = [\"a.frag\", \"b.frag\"]\ntrust = [\"k.pub\"]\n",
        )
        .unwrap();
        assert_eq!(man.name, "root");
        assert_eq!(
            man.fragments,
            vec![d.path().join("a.frag"), d.path().join("b.frag")]
        );
        assert_eq!(man.trust, vec![d.path().join("k.pub")]);
        assert_eq!(man.filesystem, FsOptions::default());
        assert_eq!(man.overlay, None);

        let man = Manifest::parse(
            &m,
            r#"name = "x"
fragments = ["a.frag"]
trust = ["k.pub"]
[filesystem]
type = "ext4"
label = "sixteen-bytes-ok"
free = 4096
uuid = "01234567-89ab-cdef-0123-456789abcdef"
[overlay]
path = "x.overlay"
"#,
        )
        .unwrap();
        assert_eq!(man.filesystem.label, "sixteen-bytes-ok");
        assert_eq!(man.filesystem.free, 4096);
        assert_eq!(man.filesystem.uuid.unwrap()[15], 0xef);
        assert_eq!(man.overlay, Some(d.path().join("x.overlay")));
    }

    #[test]
    fn errors_name_key_and_line() {
        let (_d, m) = setup();
        let head = "name = \"root\"\nfragments = [\"a.frag\"]\ntrust = [\"k.pub\"]\n";
        let cases: &[(&str, usize, &str)] = &[
            ("[filesystem]\nsize = 3\n", 5, "size"),
            ("colour = 1\n", 4, "colour"),
            (
                "[filesystem]\nfree = \"12XB\"\n",
                5,
                "filesystem.free: bad size \"12XB\"",
            ),
            ("[filesystem]\nfree = -5\n", 5, "filesystem.free"),
            ("[filesystem]\nfree = true\n", 5, "filesystem.free"),
            (
                "[filesystem]\ntype = \"xfs\"\n",
                5,
                "filesystem.type: \"xfs\"",
            ),
            ("[filesystem]\nuuid = \"nope\"\n", 5, "filesystem.uuid"),
            (
                "[filesystem]\nlabel = \"seventeen-bytes-x\"\n",
                5,
                "filesystem.label",
            ),
            ("[overlay]\npath = \"a.frag\"\n", 5, "overlay.path"),
            ("[overlay]\nwhere = \"x\"\n", 5, "where"),
            (
                "[filesystem]\nlabel = 3\n",
                5,
                "filesystem.label: invalid type",
            ),
            ("name = \"again\"\n", 4, "name: duplicate key"),
        ];
        for (tail, line, needle) in cases {
            let p = problems(&m, &format!("{head}{tail}"));
            assert_eq!(p.len(), 1, "{tail}: {p:?}");
            assert_eq!(p[0].line, Some(*line), "{tail}: {p:?}");
            assert!(p[0].message.contains(needle), "{tail}: {p:?}");
        }
        // Missing files, duplicates and empty lists: all reported at once.
        let p = problems(
            &m,
            "name = \"\"\nfragments = [\n  \"a.frag\",\n  \"missing.frag\",\n  \"./a.frag\",\n]\ntrust = []\n",
        );
        let got: Vec<_> = p.iter().map(|p| p.line.unwrap()).collect();
        assert_eq!(got, vec![1, 4, 5, 7], "{p:?}");
        assert!(p[1].message.contains("missing.frag: no such file"), "{p:?}");
        assert!(p[2].message.contains("listed twice"), "{p:?}");
        assert!(p[3].message.contains("trust: at least one key"), "{p:?}");
        // A missing required key.
        let p = problems(&m, "fragments = [\"a.frag\"]\ntrust = [\"k.pub\"]\n");
        assert!(p[0].message.contains("missing field `name`"), "{p:?}");
        assert_eq!(p[0].line, None);
        // Syntax error.
        let p = problems(&m, "name = \"root\"\nfragments = [\"a.frag\"\n");
        assert_eq!(p[0].line, Some(2), "{p:?}");
        // Display form.
        let e = Manifest::parse(&m, &format!("{head}[filesystem]\nfree = \"12XB\"\n")).unwrap_err();
        let s = e.to_string();
        assert!(
            s.starts_with(&format!("{}:5: filesystem.free", m.display())),
            "{s}"
        );
        assert!(e.is_invalid_input());
    }

    #[test]
    fn missing_manifest_is_an_environment_error() {
        let e = Manifest::load("/nonexistent/volume.toml").unwrap_err();
        assert!(matches!(e, Error::ManifestIo { .. }));
        assert!(!e.is_invalid_input());
    }
}

//! Golden files in `tests/golden/`: readable dumps and pinned digests,
//! compared byte for byte and re-blessed only on purpose
//! (`MOSAIC_BLESS=1 cargo test --test NAME`, then review the diff).

use std::fs;
use std::path::PathBuf;

pub fn golden_dir() -> PathBuf {
    super::repo().join("tests/golden")
}

/// Whether this run re-blesses the golden files (`MOSAIC_BLESS=1`).
pub fn bless() -> bool {
    std::env::var("MOSAIC_BLESS").is_ok_and(|v| v == "1")
}

/// The running test binary's name (`golden` for `target/.../golden-HASH`),
/// for the re-bless hint.
fn test_name() -> String {
    let exe = std::env::current_exe().unwrap_or_default();
    let stem = exe
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    match stem.rsplit_once('-') {
        Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_owned(),
        _ => stem,
    }
}

/// blake3 of a whole file's bytes in hex: its length is a multiple of 4096
/// and at least two blocks, so the root of its block chaining values is
/// exactly `blake3(bytes)`, as `fragments::hash` documents and tests.
pub fn blake3_hex(bytes: &[u8]) -> String {
    assert!(bytes.len().is_multiple_of(4096) && bytes.len() >= 8192);
    fragments::hash::root_from_cvs(&fragments::hash::cvs_of(bytes))
        .expect("two or more blocks")
        .to_hex()
        .to_string()
}

/// A line diff (longest common subsequence): `-` wanted, `+` got, with
/// line numbers of the wanted file.
pub fn line_diff(want: &str, got: &str) -> String {
    let (w, g): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
    let (n, m) = (w.len(), g.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if w[i] == g[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < n || j < m {
        if i < n && j < m && w[i] == g[j] {
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push_str(&format!("{:5} - {}\n", i + 1, w[i]));
            i += 1;
        } else {
            out.push_str(&format!("{:5} + {}\n", i + 1, g[j]));
            j += 1;
        }
    }
    out
}

/// Compares `got` with `tests/golden/NAME`, byte for byte; with
/// `MOSAIC_BLESS=1` writes it instead. `what` says what changed when they
/// differ and what to bump (e.g. "the fragment format (a FORMAT BREAK)").
#[track_caller]
pub fn compare_or_bless(name: &str, got: &str, what: &str) {
    let path = golden_dir().join(name);
    let test = test_name();
    if bless() {
        fs::create_dir_all(golden_dir()).expect("create tests/golden");
        fs::write(&path, got).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        eprintln!("blessed {}", path.display());
        return;
    }
    let want = fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; generate it with MOSAIC_BLESS=1 cargo test --test {test}",
            path.display()
        )
    });
    assert!(
        want == got,
        "{} differs from what the test made now: a change of {what}? If intended, \
         re-bless with MOSAIC_BLESS=1 cargo test --test {test} and review:\n{}",
        path.display(),
        line_diff(&want, got)
    );
}

//! Deterministic signing keys and the PEM files the CLI reads.

use fragments::SigningKey;
use std::path::{Path, PathBuf};

/// A deterministic test signing key: the secret is `[n; 32]`.
pub fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

/// Writes `key` as `dir/NAME` (PKCS#8 PEM) and `dir/NAME.pub` (SPKI PEM);
/// returns (secret path, public path).
pub fn write_keys(dir: &Path, name: &str, key: &SigningKey) -> (PathBuf, PathBuf) {
    let secret = dir.join(name);
    fragments::keys::write_keypair(&secret, key, true).expect("write key pair");
    let public = fragments::keys::pub_path(&secret);
    (secret, public)
}

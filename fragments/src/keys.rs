//! Signing keys in the PEM forms OpenSSL uses.
//!
//! - Secret key: PKCS#8 `PRIVATE KEY`. We *write* version 1 (no embedded
//!   public key) because OpenSSL 3.0 rejects the v2 form; we *read* both,
//!   so `openssl genpkey -algorithm ed25519` keys work.
//! - Public key: SubjectPublicKeyInfo `PUBLIC KEY`, what
//!   `openssl pkey -in KEY -pubout` prints.

use crate::error::{Error, Result};
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, KeypairBytes,
};
use ed25519_dalek::{SigningKey, VerifyingKey};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Generates a new key with the OS random source.
pub fn generate() -> SigningKey {
    SigningKey::generate(&mut rand_core::OsRng)
}

/// PKCS#8 v1 PEM of a secret key.
pub fn secret_pem(key: &SigningKey) -> String {
    let kp = KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    };
    kp.to_pkcs8_pem(LineEnding::LF)
        .expect("encoding 32 bytes cannot fail")
        .to_string()
}

/// SubjectPublicKeyInfo PEM of a public key.
pub fn public_pem(key: &VerifyingKey) -> String {
    key.to_public_key_pem(LineEnding::LF)
        .expect("encoding 32 bytes cannot fail")
}

/// The path of the public key beside a secret key: `KEY.pub`.
pub fn pub_path(secret: &Path) -> PathBuf {
    let mut s = secret.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

/// Writes `KEY` (mode 0600) and `KEY.pub`. Refuses to replace existing
/// files unless `force`.
pub fn write_keypair(path: &Path, key: &SigningKey, force: bool) -> Result<()> {
    let pubp = pub_path(path);
    for p in [path, pubp.as_path()] {
        if !force && fs::symlink_metadata(p).is_ok() {
            return Err(Error::Options(format!(
                "{} exists; pass --force to replace it",
                p.display()
            )));
        }
    }
    write_atomic(path, secret_pem(key).as_bytes(), 0o600)?;
    write_atomic(&pubp, public_pem(&key.verifying_key()).as_bytes(), 0o644)
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".mosaic-key")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
        .tempfile_in(dir)
        .map_err(Error::io(dir, "create a temporary file"))?;
    tmp.write_all(bytes).map_err(Error::io(path, "write"))?;
    tmp.as_file().sync_all().map_err(Error::io(path, "sync"))?;
    tmp.persist(path).map_err(|e| Error::Io {
        path: path.to_owned(),
        op: "rename into place",
        source: e.error,
    })?;
    Ok(())
}

/// Reads a PKCS#8 (v1 or v2) PEM ed25519 secret key.
pub fn read_secret(path: &Path) -> Result<SigningKey> {
    let text = fs::read_to_string(path).map_err(Error::io(path, "read secret key"))?;
    SigningKey::from_pkcs8_pem(&text).map_err(|e| Error::Key {
        path: path.to_owned(),
        what: format!("not a PKCS#8 PEM ed25519 private key ({e})"),
    })
}

/// Reads a SubjectPublicKeyInfo PEM ed25519 public key.
pub fn read_public(path: &Path) -> Result<VerifyingKey> {
    let text = fs::read_to_string(path).map_err(Error::io(path, "read public key"))?;
    VerifyingKey::from_public_key_pem(&text).map_err(|e| Error::Key {
        path: path.to_owned(),
        what: format!("not a SubjectPublicKeyInfo PEM ed25519 public key ({e})"),
    })
}

/// A short, stable name for a key: the hex of its 32 bytes.
pub fn key_id(key: &[u8; 32]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_pem_is_pkcs8_v1() {
        let k = SigningKey::from_bytes(&[7; 32]);
        let pem = secret_pem(&k);
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        // v1 DER is exactly 48 bytes: base64 of it is 64 characters.
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert_eq!(body.len(), 64);
        assert!(body.starts_with("MC4CAQAwBQYDK2Vw"), "{body}"); // 30 2e 02 01 00 30 05 06 03 2b 65 70
        assert_eq!(
            SigningKey::from_pkcs8_pem(&pem).unwrap().to_bytes(),
            [7; 32]
        );
    }

    #[test]
    fn public_pem_is_spki() {
        let k = SigningKey::from_bytes(&[7; 32]).verifying_key();
        let pem = public_pem(&k);
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA"));
        assert_eq!(VerifyingKey::from_public_key_pem(&pem).unwrap(), k);
    }
}

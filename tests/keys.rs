//! Keys against OpenSSL 3.0, the oracle for the PEM forms: keys made by
//! `openssl genpkey` sign fragments, keys made by `mosaic keygen` are read
//! by `openssl pkey`, and OpenSSL verifies a fragment header's signature.
//! Also the keygen overwrite rules, several `--trust` keys, and a header
//! whose signer was swapped for another valid key.

#[macro_use]
mod kit;

use fragments::{Error, Fragment, Trust};
use kit::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A small source tree.
fn tree(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    write_file(&src.join("etc/motd"), b"hello\n", 0o644);
    write_file(
        &src.join("usr/lib/blob"),
        &nonzero_noise(3, 3 * 4096 + 5),
        0o755,
    );
    src
}

fn build_cli(src: &Path, out: &Path, key: &Path) {
    let o = mosaic(args!["fragment", "build", src, "-o", out, "--key", key]);
    expect_code(&o, 0, "fragment build");
}

fn verify_cli(frag: &Path, trust: &[&Path]) -> std::process::Output {
    let mut a = args!["fragment", "verify", frag];
    for t in trust {
        a.extend(args!["--trust", t]);
    }
    mosaic(a)
}

#[test]
fn openssl_generated_key_signs_and_its_pubout_verifies() {
    let d = tempdir();
    let pem = d.path().join("k.pem");
    let public = d.path().join("k.pub");
    tool_ok(
        "openssl",
        args!["genpkey", "-algorithm", "ed25519", "-out", pem],
    );
    tool_ok(
        "openssl",
        args!["pkey", "-in", pem, "-pubout", "-out", public],
    );
    let src = tree(d.path());
    let frag = d.path().join("f.frag");
    build_cli(&src, &frag, &pem);
    let o = verify_cli(&frag, &[&public]);
    expect_code(&o, 0, "verify with the openssl public key");
    assert!(stdout(&o).contains("OK"), "{}", stdout(&o));

    // The signer recorded in the header is the key OpenSSL derived.
    let der = tool_ok_bytes(
        "openssl",
        args!["pkey", "-pubin", "-in", public, "-outform", "DER"],
    );
    assert_eq!(der.len(), 44, "SPKI DER of an ed25519 key is 44 bytes");
    let bytes = fs::read(&frag).unwrap();
    assert_eq!(&bytes[4000..4032], &der[12..44]);

    // The library reads both files to the same key pair.
    let sk = fragments::keys::read_secret(&pem).unwrap();
    let pk = fragments::keys::read_public(&public).unwrap();
    assert_eq!(sk.verifying_key(), pk);
}

#[test]
fn keygen_output_is_read_by_openssl() {
    let d = tempdir();
    let key = d.path().join("lab.key");
    let o = mosaic(args!["keygen", "-o", key]);
    expect_code(&o, 0, "keygen");
    let pubp = d.path().join("lab.key.pub");
    let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600, "secret key mode is {mode:o}");
    assert!(fs::metadata(&key).unwrap().is_file() && fs::metadata(&pubp).unwrap().is_file());

    // OpenSSL derives exactly our public key file.
    let derived = tool_ok("openssl", args!["pkey", "-in", key, "-pubout"]);
    assert_eq!(
        derived,
        fs::read_to_string(&pubp).unwrap(),
        "openssl pkey -pubout differs from lab.key.pub"
    );
    // OpenSSL 3.0 parses the secret key (PKCS#8 v1).
    let text = tool_ok("openssl", args!["pkey", "-in", key, "-text", "-noout"]);
    assert!(text.contains("ED25519 Private-Key"), "{text}");
    // Version 0 (v1), the form OpenSSL 3.0 accepts; no [1] public key field.
    let asn1 = tool_ok("openssl", args!["asn1parse", "-in", key]);
    let lines: Vec<&str> = asn1.lines().collect();
    assert!(
        lines.len() >= 2 && lines[1].contains("INTEGER           :00"),
        "expected version INTEGER 0 first:\n{asn1}"
    );
    assert!(asn1.contains(":ED25519"), "{asn1}");
    assert!(
        !asn1.contains("cont [ 1 ]"),
        "v2 public key field present:\n{asn1}"
    );
    // The public key parses as SPKI.
    tool_ok("openssl", args!["pkey", "-pubin", "-in", pubp, "-noout"]);

    // And the pair signs and verifies through the CLI.
    let src = tree(d.path());
    let frag = d.path().join("f.frag");
    build_cli(&src, &frag, &key);
    expect_code(&verify_cli(&frag, &[&pubp]), 0, "verify with lab.key.pub");
}

#[test]
fn keygen_refuses_to_overwrite_without_force() {
    let d = tempdir();
    let key = d.path().join("lab.key");
    let pubp = d.path().join("lab.key.pub");
    expect_code(&mosaic(args!["keygen", "-o", key]), 0, "keygen");
    let (k0, p0) = (fs::read(&key).unwrap(), fs::read(&pubp).unwrap());

    let o = mosaic(args!["keygen", "-o", key]);
    expect_code(&o, 2, "keygen over an existing key");
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    assert_eq!(fs::read(&key).unwrap(), k0, "lab.key changed");
    assert_eq!(fs::read(&pubp).unwrap(), p0, "lab.key.pub changed");

    // Only the .pub exists: also refused, nothing written.
    let lone = d.path().join("lone.key");
    fs::write(d.path().join("lone.key.pub"), b"keep me").unwrap();
    let o = mosaic(args!["keygen", "-o", lone]);
    expect_code(&o, 2, "keygen over an existing .pub");
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    assert!(
        !lone.exists(),
        "the secret key was written although the .pub exists"
    );
    assert_eq!(fs::read(d.path().join("lone.key.pub")).unwrap(), b"keep me");

    let o = mosaic(args!["keygen", "-o", key, "--force"]);
    expect_code(&o, 0, "keygen --force");
    let (k1, p1) = (fs::read(&key).unwrap(), fs::read(&pubp).unwrap());
    assert_ne!(k1, k0, "--force did not replace the secret key");
    assert_ne!(p1, p0, "--force did not replace the public key");
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let derived = tool_ok_bytes("openssl", args!["pkey", "-in", key, "-pubout"]);
    assert_eq!(derived, p1, "the replaced pair does not match");
    // No temporary files left behind.
    let names: Vec<String> = fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with(".mosaic")), "{names:?}");
}

#[test]
fn any_listed_trust_key_may_sign() {
    let d = tempdir();
    let (ka, pa) = write_keys(d.path(), "a.key", &key(1));
    let (kb, pb) = write_keys(d.path(), "b.key", &key(2));
    let (_, pc) = write_keys(d.path(), "c.key", &key(3));
    let src = tree(d.path());
    let fa = d.path().join("a.frag");
    let fb = d.path().join("b.frag");
    build_cli(&src, &fa, &ka);
    build_cli(&src, &fb, &kb);
    for trust in [vec![&*pa, &*pb], vec![&*pb, &*pa], vec![&*pc, &*pa, &*pb]] {
        expect_code(&verify_cli(&fa, &trust), 0, "a.frag, a trusted");
        expect_code(&verify_cli(&fb, &trust), 0, "b.frag, b trusted");
    }
    let o = verify_cli(&fb, &[&pa, &pc]);
    expect_code(&o, 1, "b.frag with only a and c trusted");
    assert!(stderr(&o).contains("untrusted"), "{}", stderr(&o));
    // A trust file that is not a key is a usage/environment problem or
    // invalid input, never success.
    let bogus = d.path().join("bogus.pub");
    fs::write(&bogus, b"not a key").unwrap();
    let o = verify_cli(&fa, &[&pa, &bogus]);
    assert_ne!(code(&o), 0, "a bad --trust file must not be ignored");
    assert!(stderr(&o).contains("bogus.pub"), "{}", stderr(&o));
}

#[test]
fn openssl_verifies_the_header_signature() {
    let d = tempdir();
    let (k, p) = write_keys(d.path(), "k", &key(4));
    let src = tree(d.path());
    let frag = d.path().join("f.frag");
    build_cli(&src, &frag, &k);
    let bytes = fs::read(&frag).unwrap();
    let msg = d.path().join("signed.bin");
    let sig = d.path().join("sig.bin");
    fs::write(&msg, &bytes[..4032]).unwrap();
    fs::write(&sig, &bytes[4032..4096]).unwrap();
    let o = tool(
        "openssl",
        args!["pkeyutl", "-verify", "-pubin", "-inkey", p, "-rawin", "-in", msg, "-sigfile", sig],
    );
    assert!(
        o.status.success() && stdout(&o).contains("Signature Verified Successfully"),
        "openssl rejects the header signature: {} {}",
        stdout(&o),
        stderr(&o)
    );
    // And rejects it when one signed byte differs.
    let mut m2 = bytes[..4032].to_vec();
    m2[200] ^= 1;
    fs::write(&msg, &m2).unwrap();
    let o = tool(
        "openssl",
        args!["pkeyutl", "-verify", "-pubin", "-inkey", p, "-rawin", "-in", msg, "-sigfile", sig],
    );
    assert!(!o.status.success(), "openssl accepted a changed header");
}

#[test]
fn swapped_signer_key_is_a_bad_signature() {
    let d = tempdir();
    let (k, p) = write_keys(d.path(), "k", &key(5));
    let (_, other_pub) = write_keys(d.path(), "other", &key(6));
    let src = tree(d.path());
    let frag = d.path().join("f.frag");
    build_cli(&src, &frag, &k);
    let mut bytes = fs::read(&frag).unwrap();
    assert_eq!(&bytes[4000..4032], key(5).verifying_key().as_bytes());
    bytes[4000..4032].copy_from_slice(key(6).verifying_key().as_bytes());
    let bad = d.path().join("swapped.frag");
    fs::write(&bad, &bytes).unwrap();

    let other = key(6).verifying_key();
    for t in [Trust::Keys(std::slice::from_ref(&other)), Trust::AnySigner] {
        match Fragment::open(&bad, t) {
            Err(Error::BadSignature { signer, .. }) => {
                assert_eq!(signer, fragments::keys::key_id(other.as_bytes()));
            }
            other => panic!("expected BadSignature, got {other:?}"),
        }
    }
    for trust in [&other_pub, &p] {
        let o = verify_cli(&bad, &[trust]);
        expect_code(&o, 1, "verify of a fragment with a swapped signer key");
        assert!(stderr(&o).contains("bad signature"), "{}", stderr(&o));
    }
    let o = mosaic(args!["fragment", "inspect", bad]);
    expect_code(&o, 1, "inspect of a fragment with a swapped signer key");
}

#[test]
fn keys_of_other_algorithms_and_swapped_files_are_refused() {
    let d = tempdir();
    let src = tree(d.path());
    let frag = d.path().join("f.frag");
    let (k, p) = write_keys(d.path(), "good", &key(8));
    build_cli(&src, &frag, &k);
    let x = d.path().join("x25519.pem");
    tool_ok(
        "openssl",
        args!["genpkey", "-algorithm", "x25519", "-out", x],
    );
    let xpub = d.path().join("x25519.pub");
    tool_ok("openssl", args!["pkey", "-in", x, "-pubout", "-out", xpub]);
    let out = d.path().join("g.frag");
    for bad_key in [&x, &p, &xpub] {
        let o = mosaic(args!["fragment", "build", src, "-o", out, "--key", bad_key]);
        assert_ne!(code(&o), 0, "build signed with {}", bad_key.display());
        assert!(
            stderr(&o).contains(&*bad_key.to_string_lossy()),
            "the message does not name the key file: {}",
            stderr(&o)
        );
        assert!(!out.exists());
    }
    for bad_trust in [&xpub, &k, &x] {
        let o = verify_cli(&frag, &[bad_trust]);
        assert_ne!(code(&o), 0, "verify trusting {}", bad_trust.display());
        assert!(
            stderr(&o).contains(&*bad_trust.to_string_lossy()),
            "the message does not name the trust file: {}",
            stderr(&o)
        );
    }
    // keygen into a missing directory: an environment error, nothing written.
    let o = mosaic(args!["keygen", "-o", d.path().join("no/such/dir/k")]);
    expect_code(&o, 2, "keygen into a missing directory");
}

//! The input is a fragment whose roots, hash region and signature are
//! recomputed before it is opened, so that mutations reach the checks
//! behind the signature. Body: `mosaic_fuzz::fragment_resigned`.
#![no_main]

use ed25519_dalek::Signer;
use fragments::SigningKey;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::from_bytes(&mosaic_fuzz::RESIGN_SECRET))
}

fuzz_target!(|data: &[u8]| {
    let key = key();
    mosaic_fuzz::fragment_resigned(data, key.verifying_key().to_bytes(), &|msg| {
        key.sign(msg).to_bytes()
    });
});

//! The parsers behind the signature (header, chunk indexes, metadata),
//! called directly. Body: `mosaic_fuzz::unsigned_parse`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mosaic_fuzz::unsigned_parse(data);
});

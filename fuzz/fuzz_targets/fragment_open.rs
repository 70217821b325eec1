//! The input is a fragment file: `Fragment::open(path, Trust::AnySigner)`,
//! then verify, read and dump it. Body: `mosaic_fuzz::fragment_open`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mosaic_fuzz::fragment_open(data);
});

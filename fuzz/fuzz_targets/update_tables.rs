//! The update package manifest and reverse-delta table parsers, called
//! directly. Body: `mosaic_fuzz::update_tables`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mosaic_fuzz::update_tables(data);
});

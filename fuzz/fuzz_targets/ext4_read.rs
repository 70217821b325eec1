//! An ext4 image as a guest leaves it, read by `layout::ext4::read`.
//! Body: `mosaic_fuzz::ext4_read`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mosaic_fuzz::ext4_read(data);
});

//! virtio-blk request parser: read_chain + request::parse on every chain (see src/block.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    devices_fuzz::block::run_request(data);
});

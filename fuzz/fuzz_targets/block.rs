//! virtio-blk device: fuzzed queue, activate + process_queue (see src/block.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    devices_fuzz::block::run_device(data);
});

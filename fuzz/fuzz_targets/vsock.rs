//! virtio-vsock device: fuzzed TX and RX queues, a live unix-socket host side (see src/vsock.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    devices_fuzz::vsock::run_device(data);
});

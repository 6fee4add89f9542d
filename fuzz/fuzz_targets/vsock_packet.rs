//! virtio-vsock packets: Packet::from_tx_chain and RxBuffer on every chain (see src/vsock.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    devices_fuzz::vsock::run_packet(data);
});

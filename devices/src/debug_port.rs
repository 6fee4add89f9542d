//! POST/debug port 0x80 (Cloud Hypervisor convention).
//!
//! Every byte the guest writes is recorded with the time since the VM build
//! started. The boot benchmark's synthetic guest writes this port as its very
//! first instruction, which timestamps guest entry.
//!
//! Linux also uses port 0x80 as its default I/O delay (`outb_p`), so a real
//! kernel adds noise here; the log keeps only the first
//! [`MAX_DEBUG_PORT_EVENTS`] entries, the early ones being the interesting
//! ones.

use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::bus::BusDevice;

/// Conventional I/O port of the debug port.
pub const DEBUG_PORT_ADDRESS: u64 = 0x80;
/// How many writes are remembered; later ones are counted and dropped.
pub const MAX_DEBUG_PORT_EVENTS: usize = 1024;

/// Records the bytes the guest writes to the debug port.
#[derive(Debug)]
pub struct DebugPort {
    start: Instant,
    events: Vec<(Duration, u8)>,
    dropped: u64,
}

impl DebugPort {
    /// Creates a debug port whose timestamps count from `start`.
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            events: Vec::new(),
            dropped: 0,
        }
    }

    /// The recorded `(time since start, value)` pairs, oldest first.
    pub fn events(&self) -> Vec<(Duration, u8)> {
        self.events.clone()
    }

    /// Number of writes not recorded because the log was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

impl BusDevice for DebugPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let elapsed = self.start.elapsed();
        for &value in data {
            debug!(
                value = format_args!("{value:#04x}"),
                elapsed_us = elapsed.as_micros(),
                "debug port write"
            );
            if self.events.len() < MAX_DEBUG_PORT_EVENTS {
                self.events.push((elapsed, value));
            } else {
                if self.dropped == 0 {
                    warn!(
                        limit = MAX_DEBUG_PORT_EVENTS,
                        "debug port log full; further writes are not recorded"
                    );
                }
                self.dropped += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_values_in_order_with_increasing_times() {
        let start = Instant::now();
        let mut port = DebugPort::new(start);
        for value in [0x10u8, 0x20, 0x30] {
            port.write(0, &[value]);
        }
        let events = port.events();
        let values: Vec<u8> = events.iter().map(|&(_, v)| v).collect();
        assert_eq!(values, [0x10, 0x20, 0x30]);
        assert!(events.windows(2).all(|w| w[0].0 <= w[1].0));
        assert!(events.iter().all(|&(t, _)| t <= start.elapsed()));
    }

    #[test]
    fn log_is_bounded() {
        let mut port = DebugPort::new(Instant::now());
        for i in 0..MAX_DEBUG_PORT_EVENTS + 5 {
            port.write(0, &[i as u8]);
        }
        let events = port.events();
        assert_eq!(events.len(), MAX_DEBUG_PORT_EVENTS);
        assert_eq!(events[0].1, 0);
        assert_eq!(port.dropped(), 5);
    }

    #[test]
    fn reads_return_zero() {
        let mut port = DebugPort::new(Instant::now());
        port.write(0, &[0xaa]);
        let mut data = [0xffu8; 1];
        port.read(0, &mut data);
        assert_eq!(data, [0]);
    }
}

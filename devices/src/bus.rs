//! Address-range routing of guest port-I/O and MMIO accesses to devices.
//!
//! A [`Bus`] maps non-overlapping `[base, base + len)` ranges to devices. The
//! vCPU thread calls [`Bus::read`] / [`Bus::write`] on every I/O or MMIO exit;
//! the device sees the access as an offset from the base it was inserted at.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use tracing::{debug, warn};

/// A device on a port-I/O or MMIO bus.
///
/// `offset` is relative to the base the device was inserted at. The bus only
/// forwards accesses that lie entirely inside the device's range, so
/// `offset + data.len() <= len` always holds.
pub trait BusDevice: Send {
    /// Handles a guest read of `data.len()` bytes at `offset`; fill `data`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a guest write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Why a device could not be inserted into a [`Bus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// The requested range intersects a range already on the bus.
    #[error("bus range [{base:#x}, +{len:#x}) overlaps a device already on the bus")]
    Overlap {
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// A device cannot occupy an empty range.
    #[error("bus range must not be empty")]
    ZeroLength,
    /// `base + len` does not fit in the 64-bit address space.
    #[error("bus range [{base:#x}, +{len:#x}) runs past the end of the address space")]
    Overflow {
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
}

/// One occupied range of the bus.
#[derive(Clone)]
struct Slot {
    /// Inclusive last address, so that a range ending at `u64::MAX` is representable.
    last: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// Routes accesses to devices by address.
///
/// Cloning a bus is cheap and shares the devices.
#[derive(Clone, Default)]
pub struct Bus {
    /// Keyed by range base.
    slots: BTreeMap<u64, Slot>,
}

impl Bus {
    /// Creates an empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `device` at `[base, base + len)`.
    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::ZeroLength);
        }
        let last = base
            .checked_add(len - 1)
            .ok_or(BusError::Overflow { base, len })?;

        // Ranges on the bus are disjoint, so only the closest range starting at
        // or before `base` and the closest one starting after it can intersect.
        let before = self.slots.range(..=base).next_back();
        let after = self.slots.range(base..).next();
        let overlaps_before = before.is_some_and(|(_, slot)| slot.last >= base);
        let overlaps_after = after.is_some_and(|(&other_base, _)| other_base <= last);
        if overlaps_before || overlaps_after {
            return Err(BusError::Overlap { base, len });
        }

        self.slots.insert(base, Slot { last, device });
        debug!(
            base = format_args!("{base:#x}"),
            len, "bus: device inserted"
        );
        Ok(())
    }

    /// Number of devices on the bus.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the bus has no devices.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Reads `data.len()` bytes at `addr` from the device that claims it.
    ///
    /// Returns false when no device claims `addr` (the caller counts and
    /// answers it). An access that straddles the end of a range is treated as
    /// unclaimed.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((offset, device)) => {
                lock_device(device, addr).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Writes `data` at `addr` to the device that claims it.
    ///
    /// Returns false when no device claims `addr` (the caller counts and
    /// answers it). An access that straddles the end of a range is treated as
    /// unclaimed.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((offset, device)) => {
                lock_device(device, addr).write(offset, data);
                true
            }
            None => false,
        }
    }

    /// Finds the device whose range wholly contains `[addr, addr + size)` and
    /// the offset of `addr` within that range.
    fn resolve(&self, addr: u64, size: usize) -> Option<(u64, &Mutex<dyn BusDevice>)> {
        let (&base, slot) = self.slots.range(..=addr).next_back()?;
        if addr > slot.last {
            return None;
        }
        let offset = addr - base;
        // Bytes available from `addr` to the end of the range, minus one; no
        // overflow since addr <= last.
        let room_minus_one = slot.last - addr;
        let size = u64::try_from(size).ok()?;
        if size > 0 && size - 1 > room_minus_one {
            return None;
        }
        Some((offset, &*slot.device))
    }
}

/// Locks a device, recovering the guard if a previous holder panicked: a
/// poisoned device must not take the vCPU thread down with it.
fn lock_device<'a>(
    device: &'a Mutex<dyn BusDevice + 'static>,
    addr: u64,
) -> MutexGuard<'a, dyn BusDevice + 'static> {
    device.lock().unwrap_or_else(|poisoned| {
        warn!(
            addr = format_args!("{addr:#x}"),
            "bus: device mutex was poisoned by a panic; recovering and continuing"
        );
        // Warn once per poisoning rather than on every later access.
        device.clear_poison();
        poisoned.into_inner()
    })
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.slots
                    .iter()
                    .map(|(base, slot)| format!("{base:#x}..={:#x}", slot.last)),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records accesses; reads return the offset plus the byte index.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
        reads: Vec<(u64, usize)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            self.reads.push((offset, data.len()));
            for (i, byte) in data.iter_mut().enumerate() {
                *byte = offset as u8 + i as u8;
            }
        }

        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    fn recorder() -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder::default()))
    }

    #[test]
    fn insert_rejects_zero_length_and_overflow() {
        let mut bus = Bus::new();
        assert_eq!(bus.insert(recorder(), 0x10, 0), Err(BusError::ZeroLength));
        assert_eq!(
            bus.insert(recorder(), u64::MAX, 2),
            Err(BusError::Overflow {
                base: u64::MAX,
                len: 2
            })
        );
        // A range ending exactly at the top of the address space is fine.
        bus.insert(recorder(), u64::MAX - 0xfff, 0x1000).unwrap();
        assert_eq!(bus.len(), 1);
    }

    #[test]
    fn insert_rejects_every_kind_of_overlap() {
        let mut bus = Bus::new();
        bus.insert(recorder(), 0x10, 0x10).unwrap();
        for (base, len) in [
            (0x10, 0x10), // identical
            (0x0f, 0x02), // covers the start
            (0x1f, 0x05), // covers the end
            (0x12, 0x01), // inside
            (0x00, 0x40), // encloses
        ] {
            assert_eq!(
                bus.insert(recorder(), base, len),
                Err(BusError::Overlap { base, len }),
                "[{base:#x}, +{len:#x})"
            );
        }
        // Adjacent ranges on both sides are accepted.
        bus.insert(recorder(), 0x00, 0x10).unwrap();
        bus.insert(recorder(), 0x20, 0x05).unwrap();
        assert_eq!(bus.len(), 3);
    }

    #[test]
    fn dispatches_with_offsets_relative_to_base() {
        let mut bus = Bus::new();
        let low = recorder();
        let high = recorder();
        bus.insert(low.clone(), 0x3f8, 8).unwrap();
        bus.insert(high.clone(), 0xc000_0000, 0x1000).unwrap();

        assert!(bus.write(0x3fd, &[0xab]));
        assert!(bus.write(0xc000_0004, &[1, 2, 3, 4]));
        let mut data = [0u8; 2];
        assert!(bus.read(0x3fe, &mut data));
        assert_eq!(data, [6, 7]);

        let low = low.lock().unwrap();
        assert_eq!(low.writes, vec![(5, vec![0xab])]);
        assert_eq!(low.reads, vec![(6, 2)]);
        assert_eq!(high.lock().unwrap().writes, vec![(4, vec![1, 2, 3, 4])]);
    }

    #[test]
    fn unclaimed_and_straddling_accesses_return_false() {
        let mut bus = Bus::new();
        let dev = recorder();
        bus.insert(dev.clone(), 0x60, 5).unwrap();

        let mut data = [0xeeu8; 4];
        assert!(!bus.read(0x5f, &mut data[..1]));
        assert!(!bus.read(0x65, &mut data[..1]));
        assert!(!bus.write(0x1000, &[1]));
        // Starts inside, ends past the range.
        assert!(!bus.read(0x63, &mut data[..4]));
        assert!(!bus.write(0x64, &[1, 2]));
        assert_eq!(data, [0xee; 4], "unclaimed reads leave data untouched");
        // Ends exactly at the end of the range.
        assert!(bus.write(0x63, &[1, 2]));

        let dev = dev.lock().unwrap();
        assert!(dev.reads.is_empty());
        assert_eq!(dev.writes, vec![(3, vec![1, 2])]);
    }

    #[test]
    fn poisoned_device_is_still_served() {
        let mut bus = Bus::new();
        let dev = recorder();
        bus.insert(dev.clone(), 0x80, 1).unwrap();

        let poisoner = dev.clone();
        let result = std::thread::spawn(move || {
            let _guard = poisoner.lock().unwrap();
            panic!("device panicked while holding its lock");
        })
        .join();
        assert!(result.is_err());
        assert!(dev.is_poisoned());

        assert!(bus.write(0x80, &[0x42]));
        let mut data = [0u8; 1];
        assert!(bus.read(0x80, &mut data));
        assert_eq!(data, [0]);
        assert!(!dev.is_poisoned(), "poison is cleared after recovery");
        assert_eq!(dev.lock().unwrap().writes, vec![(0, vec![0x42])]);
    }
}

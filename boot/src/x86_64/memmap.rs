//! The guest memory map reported to the kernel (e820 / PVH memmap).
//!
//! Computed from the RAM regions alone, without touching guest memory, so
//! layouts of any size can be checked in tests.

use super::layout::{EBDA_START, HIMEM_START, MMIO_HOLE_END, MMIO_HOLE_START};

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// What a memory map entry describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    /// Usable RAM.
    Ram,
    /// Present but reserved (EBDA with the MP table, legacy VGA/BIOS area with the ACPI tables).
    Reserved,
}

impl MemoryKind {
    /// The e820 / PVH memmap type number.
    pub fn e820_type(self) -> u32 {
        match self {
            MemoryKind::Ram => E820_RAM,
            MemoryKind::Reserved => E820_RESERVED,
        }
    }
}

/// One entry of the guest memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRange {
    /// First guest physical address.
    pub start: u64,
    /// Length in bytes (never zero).
    pub size: u64,
    /// RAM or reserved.
    pub kind: MemoryKind,
}

impl MemoryRange {
    /// First address past the range.
    pub fn end(&self) -> u64 {
        self.start + self.size
    }
}

/// Errors computing the memory map.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemoryMapError {
    /// There must be RAM from 0 up to at least 1 MiB for the boot structures.
    #[error("guest RAM must start at 0 and extend past {HIMEM_START:#x}: the first region ends at {low_end:#x}")]
    NoLowMemory {
        /// End of the RAM region starting at 0 (0 when there is none).
        low_end: u64,
    },
    /// A RAM region wraps around the end of the address space.
    #[error("guest RAM region at {start:#x} of {size:#x} bytes overflows the address space")]
    RegionOverflow {
        /// Region start.
        start: u64,
        /// Region size.
        size: u64,
    },
}

/// Computes the memory map for the given RAM regions (`(start, size)`).
///
/// RAM below [`EBDA_START`] is reported as RAM, the EBDA and the legacy
/// area up to [`HIMEM_START`] as reserved, and everything else that is RAM
/// as RAM, except that nothing inside the MMIO hole is ever reported. The
/// result is sorted by address and entries do not overlap.
pub fn memory_map(ram: &[(u64, u64)]) -> Result<Vec<MemoryRange>, MemoryMapError> {
    let low_end = ram
        .iter()
        .find(|(start, _)| *start == 0)
        .map_or(0, |(_, size)| *size);
    if low_end <= HIMEM_START {
        return Err(MemoryMapError::NoLowMemory { low_end });
    }

    // Address ranges that must never appear as RAM.
    const EXCLUDED: [(u64, u64); 2] = [(EBDA_START, HIMEM_START), (MMIO_HOLE_START, MMIO_HOLE_END)];

    let mut map = vec![MemoryRange {
        start: EBDA_START,
        size: HIMEM_START - EBDA_START,
        kind: MemoryKind::Reserved,
    }];
    for &(start, size) in ram {
        let end = start
            .checked_add(size)
            .ok_or(MemoryMapError::RegionOverflow { start, size })?;
        let mut pieces = vec![(start, end)];
        for (ex_start, ex_end) in EXCLUDED {
            pieces = pieces
                .into_iter()
                .flat_map(|(s, e)| subtract(s, e, ex_start, ex_end))
                .collect();
        }
        map.extend(pieces.into_iter().map(|(s, e)| MemoryRange {
            start: s,
            size: e - s,
            kind: MemoryKind::Ram,
        }));
    }
    map.sort_by_key(|r| r.start);
    Ok(map)
}

/// `[start, end)` minus `[ex_start, ex_end)`: zero, one or two non-empty ranges.
fn subtract(start: u64, end: u64, ex_start: u64, ex_end: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(2);
    if start < ex_start.min(end) {
        out.push((start, ex_start.min(end)));
    }
    if ex_end.max(start) < end {
        out.push((ex_end.max(start), end));
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::x86_64::layout::ram_regions;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    /// The memory map for `mem_bytes` laid out by [`ram_regions`].
    pub(crate) fn map_for(mem_bytes: u64) -> Vec<MemoryRange> {
        let regions: Vec<(u64, u64)> = ram_regions(mem_bytes)
            .into_iter()
            .map(|(a, s)| (a.0, s as u64))
            .collect();
        memory_map(&regions).unwrap()
    }

    /// Checks the invariants every map must hold.
    pub(crate) fn check_invariants(map: &[MemoryRange], mem_bytes: u64) {
        for pair in map.windows(2) {
            assert!(
                pair[0].end() <= pair[1].start,
                "unsorted/overlap: {pair:x?}"
            );
        }
        let mut ram = 0;
        for r in map {
            assert!(r.size > 0);
            if r.kind == MemoryKind::Ram {
                ram += r.size;
                assert!(
                    r.end() <= MMIO_HOLE_START || r.start >= MMIO_HOLE_END,
                    "RAM in the MMIO hole: {r:x?}"
                );
                assert!(r.end() <= EBDA_START || r.start >= HIMEM_START, "{r:x?}");
            }
        }
        // All RAM is reported except the EBDA + legacy area.
        assert_eq!(ram, mem_bytes - (HIMEM_START - EBDA_START));
    }

    fn ram(start: u64, size: u64) -> MemoryRange {
        MemoryRange {
            start,
            size,
            kind: MemoryKind::Ram,
        }
    }

    fn reserved_legacy() -> MemoryRange {
        MemoryRange {
            start: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: MemoryKind::Reserved,
        }
    }

    #[test]
    fn map_128_mib() {
        let map = map_for(128 * MIB);
        assert_eq!(
            map,
            vec![
                ram(0, EBDA_START),
                reserved_legacy(),
                ram(HIMEM_START, 127 * MIB)
            ]
        );
        check_invariants(&map, 128 * MIB);
    }

    #[test]
    fn map_3_gib_ends_at_the_hole() {
        let map = map_for(3 * GIB);
        assert_eq!(
            map.last(),
            Some(&ram(HIMEM_START, MMIO_HOLE_START - HIMEM_START))
        );
        assert_eq!(map.len(), 3);
        check_invariants(&map, 3 * GIB);
    }

    #[test]
    fn map_3_gib_plus_1_mib_continues_at_4_gib() {
        let map = map_for(3 * GIB + MIB);
        assert_eq!(map.len(), 4);
        assert_eq!(map[2], ram(HIMEM_START, MMIO_HOLE_START - HIMEM_START));
        assert_eq!(map[3], ram(MMIO_HOLE_END, MIB));
        check_invariants(&map, 3 * GIB + MIB);
    }

    #[test]
    fn map_8_gib() {
        let map = map_for(8 * GIB);
        assert_eq!(map[3], ram(4 * GIB, 5 * GIB));
        check_invariants(&map, 8 * GIB);
    }

    #[test]
    fn ram_given_inside_the_hole_is_clipped() {
        // A caller that mapped one flat 5 GiB region still gets no RAM in the hole.
        let map = memory_map(&[(0, 5 * GIB)]).unwrap();
        assert_eq!(map[2], ram(HIMEM_START, MMIO_HOLE_START - HIMEM_START));
        assert_eq!(map[3], ram(MMIO_HOLE_END, GIB));
    }

    #[test]
    fn too_little_low_memory_is_an_error() {
        assert_eq!(
            memory_map(&[(0, 512 * 1024)]),
            Err(MemoryMapError::NoLowMemory {
                low_end: 512 * 1024
            })
        );
        assert_eq!(
            memory_map(&[(MMIO_HOLE_END, GIB)]),
            Err(MemoryMapError::NoLowMemory { low_end: 0 })
        );
        assert!(matches!(
            memory_map(&[(0, GIB), (u64::MAX - 5, 10)]),
            Err(MemoryMapError::RegionOverflow { .. })
        ));
    }
}

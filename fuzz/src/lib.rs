//! Fuzz harnesses for the virtio device model of the `devices` crate.
//!
//! Every target reads its input as a hostile driver's view of guest memory:
//! one or more split virtqueues (descriptor table, available ring, used
//! ring) and a data area, all taken from the fuzz input and laid out in a
//! real [`GuestMemoryMmap`]. The queues are then handed to the device
//! exactly as the virtio-mmio transport does after a driver set them up.
//!
//! Guest memory is two regions with a hole between them, so that buffers
//! straddling the end of a region or lying in the hole are reachable:
//!
//! ```text
//! [0x00000, 0x20000)  region 0: queue q at q * 0x4000 (descriptor table,
//!                     available ring at +0x1000, used ring at +0x2000),
//!                     data area from 0x10000
//! [0x20000, 0x21000)  hole
//! [0x21000, 0x31000)  region 1: the data area continues here
//! ```
//!
//! Input layout of one queue ([`QueueSpec`], little-endian, missing bytes
//! read as zero):
//!
//! ```text
//! u8   cfg         bits 0-3: log2 of the queue size (capped at 8 = 256)
//!                  bit 4: VIRTIO_RING_F_EVENT_IDX negotiated
//!                  bit 5: VRING_AVAIL_F_NO_INTERRUPT in the available ring
//! u16  start       where the device's next_avail / next_used stand (the
//!                  used ring index the device published so far)
//! u8   count       available entries: the available ring index is
//!                  start + count
//! u16  used_event  the driver's used_event field (event index)
//! u8   ndesc       descriptors that follow, written at table index 0..
//! ndesc x {u64 addr, u32 len, u16 flags, u16 next}   raw, as in the table
//! min(count, size) x u16   heads, written to ring slots (start + i) % size
//! ```
//!
//! The targets (`fuzz_targets/`) call the `run_*` functions of [`block`]
//! and [`vsock`]; [`seeds`] builds the saved corpus; `tests/corpus.rs`
//! replays it without libFuzzer.

pub mod block;
pub mod seeds;
pub mod vsock;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest memory regions: (start, size).
pub const REGIONS: [(u64, usize); 2] = [(0, 0x2_0000), (0x2_1000, 0x1_0000)];
/// Where the data area starts (region 0); it continues in region 1.
pub const DATA_BASE: u64 = 0x1_0000;
/// Largest queue size the harness lays out (the devices' maximum).
pub const MAX_QUEUE_SIZE: u16 = 256;

/// `VRING_DESC_F_NEXT`.
pub const F_NEXT: u16 = 1;
/// `VRING_DESC_F_WRITE`.
pub const F_WRITE: u16 = 2;
/// `VRING_DESC_F_INDIRECT`.
pub const F_INDIRECT: u16 = 4;

/// Guest address of the descriptor table of queue `q`.
pub fn desc_table(q: usize) -> u64 {
    q as u64 * 0x4000
}
/// Guest address of the available ring of queue `q`.
pub fn avail_ring(q: usize) -> u64 {
    desc_table(q) + 0x1000
}
/// Guest address of the used ring of queue `q`.
pub fn used_ring(q: usize) -> u64 {
    desc_table(q) + 0x2000
}

/// Reads the fuzz input front to back; past its end every read is zero.
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.data.len());
        out[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        out
    }

    /// Next byte.
    pub fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    /// Next little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }
    /// Next little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    /// Next little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
    /// Next `N` bytes.
    pub fn bytes<const N: usize>(&mut self) -> [u8; N] {
        self.take()
    }
    /// Everything not read yet.
    pub fn rest(self) -> &'a [u8] {
        self.data
    }
}

/// A descriptor table entry, exactly as the driver wrote it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawDesc {
    /// Guest address of the buffer.
    pub addr: u64,
    /// Its length.
    pub len: u32,
    /// `F_NEXT`, `F_WRITE`, `F_INDIRECT` (and any other bits).
    pub flags: u16,
    /// Next descriptor index, when `F_NEXT` is set.
    pub next: u16,
}

/// One split virtqueue as the fuzz input describes it (see the crate
/// documentation for the byte layout).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueSpec {
    /// log2 of the queue size (0..=8).
    pub size_log2: u8,
    /// VIRTIO_RING_F_EVENT_IDX negotiated.
    pub event_idx: bool,
    /// VRING_AVAIL_F_NO_INTERRUPT set by the driver.
    pub no_interrupt: bool,
    /// The device's next_avail and next_used.
    pub start: u16,
    /// Available entries published (may exceed the queue size: a hostile
    /// driver's ring index).
    pub count: u8,
    /// The driver's used_event.
    pub used_event: u16,
    /// The descriptor table from index 0 (at most 255 entries).
    pub descs: Vec<RawDesc>,
    /// Heads in the available ring from slot `start % size`.
    pub heads: Vec<u16>,
}

impl QueueSpec {
    /// Queue size.
    pub fn size(&self) -> u16 {
        1 << self.size_log2.min(8)
    }

    /// Reads a queue description from the input.
    pub fn parse(r: &mut Reader<'_>) -> Self {
        let cfg = r.u8();
        let size_log2 = (cfg & 0xf).min(8);
        let start = r.u16();
        let count = r.u8();
        let used_event = r.u16();
        let ndesc = r.u8();
        let descs = (0..ndesc)
            .map(|_| RawDesc {
                addr: r.u64(),
                len: r.u32(),
                flags: r.u16(),
                next: r.u16(),
            })
            .collect();
        let nheads = u16::from(count).min(1 << size_log2);
        let heads = (0..nheads).map(|_| r.u16()).collect();
        Self {
            size_log2,
            event_idx: cfg & 0x10 != 0,
            no_interrupt: cfg & 0x20 != 0,
            start,
            count,
            used_event,
            descs,
            heads,
        }
    }

    /// The input bytes [`parse`](Self::parse) reads back as `self`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        assert!(self.size_log2 <= 8 && self.descs.len() <= 255);
        assert_eq!(
            self.heads.len(),
            usize::from(self.count).min(usize::from(self.size()))
        );
        let cfg = self.size_log2
            | if self.event_idx { 0x10 } else { 0 }
            | if self.no_interrupt { 0x20 } else { 0 };
        out.push(cfg);
        out.extend_from_slice(&self.start.to_le_bytes());
        out.push(self.count);
        out.extend_from_slice(&self.used_event.to_le_bytes());
        out.push(self.descs.len() as u8);
        for d in &self.descs {
            out.extend_from_slice(&d.addr.to_le_bytes());
            out.extend_from_slice(&d.len.to_le_bytes());
            out.extend_from_slice(&d.flags.to_le_bytes());
            out.extend_from_slice(&d.next.to_le_bytes());
        }
        for h in &self.heads {
            out.extend_from_slice(&h.to_le_bytes());
        }
    }

    /// Writes the queue into guest memory at the place of queue `q` and
    /// returns the ready [`Queue`] the transport would hand the device.
    pub fn install(&self, mem: &GuestMemoryMmap, q: usize) -> Queue {
        let size = self.size();
        let table = desc_table(q);
        for (i, d) in self.descs.iter().enumerate() {
            let at = table + 16 * i as u64;
            let mut raw = [0u8; 16];
            raw[0..8].copy_from_slice(&d.addr.to_le_bytes());
            raw[8..12].copy_from_slice(&d.len.to_le_bytes());
            raw[12..14].copy_from_slice(&d.flags.to_le_bytes());
            raw[14..16].copy_from_slice(&d.next.to_le_bytes());
            mem.write_slice(&raw, GuestAddress(at))
                .expect("descriptor table is in guest memory");
        }
        let avail = avail_ring(q);
        let put = |at: u64, v: u16| {
            mem.write_obj(v, GuestAddress(at))
                .expect("rings are in guest memory")
        };
        put(avail, u16::from(self.no_interrupt));
        put(avail + 2, self.start.wrapping_add(u16::from(self.count)));
        for (i, &head) in self.heads.iter().enumerate() {
            let slot = self.start.wrapping_add(i as u16) % size;
            put(avail + 4 + 2 * u64::from(slot), head);
        }
        put(avail + 4 + 2 * u64::from(size), self.used_event);
        // The used index the device published so far.
        put(used_ring(q) + 2, self.start);

        let mut queue = Queue::new(MAX_QUEUE_SIZE).expect("256 is a valid maximum");
        queue.try_set_size(size).expect("a power of two <= 256");
        queue
            .try_set_desc_table_address(GuestAddress(table))
            .expect("aligned");
        queue
            .try_set_avail_ring_address(GuestAddress(avail))
            .expect("aligned");
        queue
            .try_set_used_ring_address(GuestAddress(used_ring(q)))
            .expect("aligned");
        queue.set_event_idx(self.event_idx);
        queue.set_next_avail(self.start);
        queue.set_next_used(self.start);
        queue.set_ready(true);
        queue
    }
}

/// Fresh, zeroed guest memory.
pub fn guest_memory() -> GuestMemoryMmap {
    let ranges: Vec<(GuestAddress, usize)> = REGIONS
        .iter()
        .map(|&(start, len)| (GuestAddress(start), len))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).expect("guest memory")
}

/// Guest address of byte `offset` of the data area.
pub fn data_addr(offset: usize) -> u64 {
    let first = REGIONS[0].0 + REGIONS[0].1 as u64 - DATA_BASE;
    let offset = offset as u64;
    if offset < first {
        DATA_BASE + offset
    } else {
        REGIONS[1].0 + (offset - first)
    }
}

/// Bytes the data area holds.
pub fn data_capacity() -> usize {
    (REGIONS[0].0 as usize + REGIONS[0].1 - DATA_BASE as usize) + REGIONS[1].1
}

/// Copies `data` into the data area (whatever does not fit is ignored).
pub fn write_data(mem: &GuestMemoryMmap, data: &[u8]) {
    let first = REGIONS[0].1 - DATA_BASE as usize;
    let data = &data[..data.len().min(data_capacity())];
    let (a, b) = data.split_at(data.len().min(first));
    mem.write_slice(a, GuestAddress(DATA_BASE))
        .expect("data area is in guest memory");
    if !b.is_empty() {
        mem.write_slice(b, GuestAddress(REGIONS[1].0))
            .expect("data area is in guest memory");
    }
}

/// Whether a buffer of these queues may lie on the rings (anywhere below
/// [`DATA_BASE`]), directly or through an indirect table. The device then
/// writes guest data over its own used ring entries (or over the available
/// ring it reads), which a hostile driver may do; the ring contents no
/// longer tell what the device did, so [`used_entries`] checks are off.
pub fn may_write_rings(specs: &[&QueueSpec]) -> bool {
    specs
        .iter()
        .flat_map(|s| &s.descs)
        .any(|d| d.flags & F_INDIRECT != 0 || (d.addr < DATA_BASE && d.len > 0))
}

/// The used ring entries queue `q` gained since `start`: (id, len). With
/// `check`, asserts what every device promises whatever the driver wrote:
/// it never publishes more entries than were available, nor an id outside
/// the queue (only meaningful when ![`may_write_rings`]).
pub fn used_entries(
    mem: &GuestMemoryMmap,
    q: usize,
    spec: &QueueSpec,
    check: bool,
) -> Vec<(u32, u32)> {
    let used = used_ring(q);
    let idx: u16 = mem.read_obj(GuestAddress(used + 2)).expect("used ring");
    let mut n = idx.wrapping_sub(spec.start);
    if check {
        assert!(
            n <= u16::from(spec.count) && n <= spec.size(),
            "queue {q}: {n} used entries for {} available (size {})",
            spec.count,
            spec.size()
        );
    }
    n = n.min(spec.size());
    (0..n)
        .map(|i| {
            let slot = spec.start.wrapping_add(i) % spec.size();
            let at = used + 4 + 8 * u64::from(slot);
            let id: u32 = mem.read_obj(GuestAddress(at)).expect("used ring");
            let len: u32 = mem.read_obj(GuestAddress(at + 4)).expect("used ring");
            if check {
                assert!(
                    id < u32::from(spec.size()),
                    "queue {q}: used id {id} outside a queue of {}",
                    spec.size()
                );
            }
            (id, len)
        })
        .collect()
}

/// A directory for the harness's files (disk image, unix sockets): on
/// tmpfs when there is one (so fsync costs nothing), one per process,
/// removed when the process exits normally.
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("vmm-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        extern "C" fn remove_scratch_dir() {
            if let Some(dir) = DIR.get() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        // SAFETY: registers a plain `extern "C" fn()` with no arguments;
        // it only touches a static that is initialised by then.
        unsafe { libc::atexit(remove_scratch_dir) };
        dir
    })
}

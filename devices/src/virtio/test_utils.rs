//! Test helpers: a split virtqueue laid out in real guest memory, built by
//! hand the way a driver would (virtio-queue's own `mock` module sits behind
//! a feature this crate does not enable).

// Shared by the tests of every device; not each one uses every helper.
#![allow(dead_code)]

use std::sync::Arc;

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::device::ActivateContext;
use super::interrupt::EventFdInterrupt;

/// Direction flag for [`TestQueue::add_chain`]: device-readable.
pub const R: bool = false;
/// Direction flag for [`TestQueue::add_chain`]: device-writable.
pub const W: bool = true;

/// Size of [`test_memory`]: 1 MiB at guest address 0.
pub const MEM_SIZE: u64 = 0x10_0000;
/// Where tests put request buffers; everything below holds the rings.
pub const DATA_BASE: u64 = 0x10000;

const DESC_TABLE: u64 = 0x1000;
const AVAIL_RING: u64 = 0x3000;
const USED_RING: u64 = 0x4000;

/// One guest memory region of [`MEM_SIZE`] bytes at address 0.
pub fn test_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

/// An interrupt whose eventfd tests can read.
pub fn test_interrupt() -> Arc<EventFdInterrupt> {
    Arc::new(EventFdInterrupt::new(
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    ))
}

/// A split virtqueue of `size` entries (at most 256) in guest memory: the
/// descriptor table at 0x1000, the available ring at 0x3000, the used ring
/// at 0x4000.
pub struct TestQueue<'a> {
    mem: &'a GuestMemoryMmap,
    size: u16,
    avail_idx: u16,
    next_desc: u16,
}

impl<'a> TestQueue<'a> {
    /// Lays out an empty queue (rings zeroed).
    pub fn new(mem: &'a GuestMemoryMmap, size: u16) -> Self {
        assert!(size <= 256);
        let zeroes = vec![0u8; 0x1000];
        for base in [AVAIL_RING, USED_RING] {
            mem.write_slice(&zeroes, GuestAddress(base)).unwrap();
        }
        Self {
            mem,
            size,
            avail_idx: 0,
            next_desc: 0,
        }
    }

    /// The guest memory the queue lives in.
    pub fn mem(&self) -> &'a GuestMemoryMmap {
        self.mem
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Guest addresses of the descriptor table, available and used rings.
    pub fn addresses(&self) -> (u64, u64, u64) {
        (DESC_TABLE, AVAIL_RING, USED_RING)
    }

    /// Writes descriptor `index`; `next` sets `VRING_DESC_F_NEXT`.
    pub fn set_desc(&self, index: u16, addr: u64, len: u32, writable: bool, next: Option<u16>) {
        let mut flags = 0;
        if writable {
            flags |= VRING_DESC_F_WRITE as u16;
        }
        if next.is_some() {
            flags |= VRING_DESC_F_NEXT as u16;
        }
        let desc = Descriptor::new(addr, len, flags, next.unwrap_or(0));
        let at = DESC_TABLE + u64::from(index) * 16;
        self.mem.write_obj(desc, GuestAddress(at)).unwrap();
    }

    /// Writes `buffers` as a chain of consecutive descriptors and publishes
    /// it; returns the head index.
    pub fn add_chain(&mut self, buffers: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, writable)) in buffers.iter().enumerate() {
            let index = (self.next_desc + i as u16) % self.size;
            let next = (i + 1 < buffers.len()).then_some((index + 1) % self.size);
            self.set_desc(index, addr, len, writable, next);
        }
        self.next_desc = (self.next_desc + buffers.len() as u16) % self.size;
        self.publish(head);
        head
    }

    /// Puts `head` in the available ring and bumps its index.
    pub fn publish(&mut self, head: u16) {
        let slot = AVAIL_RING + 4 + u64::from(self.avail_idx % self.size) * 2;
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(self.avail_idx);
    }

    /// Overwrites the available ring index (to fake a hostile driver).
    pub fn set_avail_idx(&self, idx: u16) {
        self.mem
            .write_obj(idx, GuestAddress(AVAIL_RING + 2))
            .unwrap();
    }

    /// The used ring index the device published.
    pub fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(USED_RING + 2)).unwrap()
    }

    /// Used ring entry `i`: (descriptor head, length written).
    pub fn used_elem(&self, i: u16) -> (u32, u32) {
        let at = USED_RING + 4 + u64::from(i % self.size) * 8;
        let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
        (id, len)
    }

    /// A ready `Queue` pointing at this layout, as the transport would
    /// build it.
    pub fn queue(&self) -> Queue {
        let mut queue = Queue::new(self.size).unwrap();
        queue.try_set_size(self.size).unwrap();
        queue
            .try_set_desc_table_address(GuestAddress(DESC_TABLE))
            .unwrap();
        queue
            .try_set_avail_ring_address(GuestAddress(AVAIL_RING))
            .unwrap();
        queue
            .try_set_used_ring_address(GuestAddress(USED_RING))
            .unwrap();
        queue.set_ready(true);
        queue
    }

    /// An activation context with this queue and `interrupt`.
    pub fn activate_context(&self, interrupt: Arc<EventFdInterrupt>) -> ActivateContext {
        ActivateContext {
            mem: self.mem.clone(),
            queues: vec![self.queue()],
            interrupt,
        }
    }
}

/// A disk image file in the temporary directory, removed on drop.
pub struct TempImage {
    path: std::path::PathBuf,
}

impl TempImage {
    /// Creates an image holding `contents`.
    pub fn new(contents: &[u8]) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "devices-virtio-test-{}-{}.img",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, contents).unwrap();
        Self { path }
    }

    /// Opens the image, read-write or read-only.
    pub fn open(&self, writable: bool) -> std::fs::File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .open(&self.path)
            .unwrap()
    }

    /// The image's current contents.
    pub fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

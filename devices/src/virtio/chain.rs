//! Reading a descriptor chain into a list of guest buffers, with the checks
//! every device needs before it trusts what the driver wrote.
//!
//! virtio-queue's [`DescriptorChain`] iterator already bounds a chain to the
//! queue size (or to the indirect table size), stops at a `next` index
//! outside the table, at an unreadable descriptor and at a chain longer than
//! 4 GiB in total. It does so silently: the iteration just ends early. A
//! chain that ends on a descriptor still flagged `VIRTQ_DESC_F_NEXT` was
//! therefore cut short, which is how a loop shows up here.

use vm_memory::{GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

use virtio_queue::DescriptorChain;

/// One buffer of a descriptor chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffer {
    /// Guest physical address of the buffer.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
    /// Whether the device may write it (`VIRTQ_DESC_F_WRITE`); otherwise the
    /// device may only read it.
    pub device_writable: bool,
}

/// A structurally invalid descriptor chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// Not even the head descriptor could be read: its index is outside the
    /// descriptor table, or an indirect table it points to is invalid.
    #[error("chain {head}: head descriptor index is outside the descriptor table or unreadable")]
    Empty {
        /// Head index the driver published.
        head: u16,
    },
    /// The chain stopped on a descriptor that still announces a next one.
    #[error(
        "chain {head} breaks off after {count} descriptors (a loop, a next index outside \
         the table, an unreadable descriptor or more than 4 GiB in total)"
    )]
    Truncated {
        /// Head index.
        head: u16,
        /// Descriptors read before the chain broke off.
        count: usize,
    },
    /// The chain has more descriptors than the device accepts.
    #[error("chain {head} has more than {max} descriptors")]
    TooLong {
        /// Head index.
        head: u16,
        /// The device's limit.
        max: usize,
    },
    /// A device-readable descriptor follows a device-writable one (virtio
    /// 1.x, 2.7.4.2: drivers place readable buffers first).
    #[error(
        "chain {head}: descriptor {position} is device-readable but follows a device-writable one"
    )]
    ReadableAfterWritable {
        /// Head index.
        head: u16,
        /// Position of the offending descriptor in the chain (0 = head).
        position: usize,
    },
    /// A buffer is not entirely inside guest memory.
    #[error("chain {head}: buffer [{addr:#x}, +{len:#x}) is not inside guest memory")]
    OutsideMemory {
        /// Head index.
        head: u16,
        /// Guest address of the buffer.
        addr: u64,
        /// Its length.
        len: u32,
    },
}

/// Reads every descriptor of `chain`, at most `max_descriptors` of them, and
/// checks that the chain is complete and that readable buffers come before
/// writable ones. Whether the buffers lie in guest memory is checked
/// separately ([`check_guest_memory`]), so that a device can still locate
/// where to report a status.
pub fn read_chain(
    chain: DescriptorChain<&GuestMemoryMmap>,
    max_descriptors: usize,
) -> Result<Vec<Buffer>, ChainError> {
    let head = chain.head_index();
    let mut buffers: Vec<Buffer> = Vec::new();
    // Whether the last descriptor read announced another one.
    let mut announces_next = false;

    for desc in chain {
        if buffers.len() == max_descriptors {
            return Err(ChainError::TooLong {
                head,
                max: max_descriptors,
            });
        }
        let buffer = Buffer {
            addr: desc.addr(),
            len: desc.len(),
            device_writable: desc.is_write_only(),
        };
        if !buffer.device_writable && buffers.last().is_some_and(|b| b.device_writable) {
            return Err(ChainError::ReadableAfterWritable {
                head,
                position: buffers.len(),
            });
        }
        announces_next = desc.has_next();
        buffers.push(buffer);
    }

    if buffers.is_empty() {
        return Err(ChainError::Empty { head });
    }
    if announces_next {
        return Err(ChainError::Truncated {
            head,
            count: buffers.len(),
        });
    }
    Ok(buffers)
}

impl Buffer {
    /// Whether the whole buffer lies in `mem`.
    pub fn is_in(&self, mem: &GuestMemoryMmap) -> bool {
        let access = if self.device_writable {
            Permissions::Write
        } else {
            Permissions::Read
        };
        // u32 always fits in usize on the 64-bit hosts this VMM supports.
        mem.check_range(self.addr, self.len as usize, access)
    }
}

/// Checks that every buffer of the chain with head `head` lies in `mem`.
pub fn check_guest_memory(
    mem: &GuestMemoryMmap,
    head: u16,
    buffers: &[Buffer],
) -> Result<(), ChainError> {
    match buffers.iter().find(|b| !b.is_in(mem)) {
        Some(b) => Err(ChainError::OutsideMemory {
            head,
            addr: b.addr.0,
            len: b.len,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use virtio_queue::QueueT;

    use super::*;
    use crate::virtio::test_utils::{test_memory, TestQueue, MEM_SIZE, R, W};

    fn pop_and_read(tq: &TestQueue, max: usize) -> Result<Vec<Buffer>, ChainError> {
        let mut queue = tq.queue();
        let chain = queue.pop_descriptor_chain(tq.mem()).unwrap();
        let head = chain.head_index();
        let buffers = read_chain(chain, max)?;
        check_guest_memory(tq.mem(), head, &buffers)?;
        Ok(buffers)
    }

    #[test]
    fn reads_a_well_formed_chain() {
        let mem = test_memory();
        let mut tq = TestQueue::new(&mem, 16);
        tq.add_chain(&[(0x10000, 16, R), (0x11000, 512, W), (0x12000, 1, W)]);
        let buffers = pop_and_read(&tq, 16).unwrap();
        assert_eq!(
            buffers,
            vec![
                Buffer {
                    addr: GuestAddress(0x10000),
                    len: 16,
                    device_writable: false
                },
                Buffer {
                    addr: GuestAddress(0x11000),
                    len: 512,
                    device_writable: true
                },
                Buffer {
                    addr: GuestAddress(0x12000),
                    len: 1,
                    device_writable: true
                },
            ]
        );
    }

    #[test]
    fn a_loop_is_reported_as_truncated() {
        let mem = test_memory();
        let mut tq = TestQueue::new(&mem, 8);
        // 0 -> 1 -> 0 -> ...: virtio-queue stops after the queue size.
        tq.set_desc(0, 0x10000, 16, R, Some(1));
        tq.set_desc(1, 0x11000, 16, R, Some(0));
        tq.publish(0);
        assert_eq!(
            pop_and_read(&tq, 64),
            Err(ChainError::Truncated { head: 0, count: 8 })
        );
        // With a lower device limit the same loop is too long.
        let mut tq = TestQueue::new(&mem, 8);
        tq.set_desc(0, 0x10000, 16, R, Some(0));
        tq.publish(0);
        assert_eq!(
            pop_and_read(&tq, 4),
            Err(ChainError::TooLong { head: 0, max: 4 })
        );
    }

    #[test]
    fn next_index_outside_the_table_is_truncated() {
        let mem = test_memory();
        let mut tq = TestQueue::new(&mem, 8);
        tq.set_desc(0, 0x10000, 16, R, Some(200));
        tq.publish(0);
        assert_eq!(
            pop_and_read(&tq, 64),
            Err(ChainError::Truncated { head: 0, count: 1 })
        );
    }

    #[test]
    fn head_outside_the_table_is_empty() {
        let mem = test_memory();
        let mut tq = TestQueue::new(&mem, 8);
        tq.publish(9);
        assert_eq!(pop_and_read(&tq, 64), Err(ChainError::Empty { head: 9 }));
    }

    #[test]
    fn readable_after_writable_is_rejected() {
        let mem = test_memory();
        let mut tq = TestQueue::new(&mem, 8);
        tq.add_chain(&[(0x10000, 16, W), (0x11000, 16, R)]);
        assert_eq!(
            pop_and_read(&tq, 64),
            Err(ChainError::ReadableAfterWritable {
                head: 0,
                position: 1
            })
        );
    }

    #[test]
    fn buffers_outside_guest_memory_are_rejected() {
        let mem = test_memory();
        let end = MEM_SIZE;
        for (addr, len) in [(end, 1), (end - 4, 8), (u64::MAX - 2, 16)] {
            let mut tq = TestQueue::new(&mem, 8);
            tq.add_chain(&[(0x10000, 16, R), (addr, len, W)]);
            assert_eq!(
                pop_and_read(&tq, 64),
                Err(ChainError::OutsideMemory { head: 0, addr, len }),
                "{addr:#x}+{len:#x}"
            );
        }
    }
}

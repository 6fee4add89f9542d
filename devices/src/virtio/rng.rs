//! virtio-rng (entropy device, virtio 1.x section 5.4): fills guest buffers
//! with bytes from the host's `getrandom(2)`.
//!
//! One queue of device-writable buffers. Each request is served with at most
//! [`MAX_BYTES_PER_REQUEST`] bytes (the spec lets the device use less than
//! the whole buffer), so a guest cannot make one notification cost more than
//! that per request.
//!
//! Malformed requests: the driver MUST NOT put device-readable buffers on
//! this queue (5.4.6.1) and the device MUST NOT write into a device-readable
//! buffer (2.7.4). A chain that contains one, or is otherwise invalid (a
//! loop, a buffer outside guest memory...), is returned to the driver
//! untouched with a used length of 0: the driver gets its buffer back, sees
//! zero bytes of entropy, and the queue stays consistent, so nothing else is
//! affected. The device does not enter DEVICE_NEEDS_RESET for it; that is
//! kept for a queue that can no longer be used at all.

use std::io;
use std::sync::Arc;

use tracing::{debug, error};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::chain::{check_guest_memory, read_chain, Buffer, ChainError};
use super::device::{ActivateContext, ActivateError, DeviceError, VirtioDevice, VirtioInterrupt};

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most bytes written for one request.
pub const MAX_BYTES_PER_REQUEST: u32 = 64 * 1024;

const QUEUE_SIZES: &[u16] = &[QUEUE_SIZE];

/// Why a request was returned without entropy.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error("chain {head}: descriptor {position} is device-readable; entropy requests take writable buffers only")]
    ReadableBuffer { head: u16, position: usize },
    #[error("getrandom failed: {0}")]
    Entropy(#[source] io::Error),
}

/// State that exists only while the device is active.
struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<dyn VirtioInterrupt>,
}

/// The virtio entropy device.
#[derive(Default)]
pub struct Rng {
    acked_features: u64,
    active: Option<Active>,
}

impl std::fmt::Debug for Rng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rng")
            .field("acked_features", &self.acked_features)
            .field("active", &self.active.is_some())
            .finish()
    }
}

impl Rng {
    /// Creates an inactive entropy device.
    pub fn new() -> Self {
        Self::default()
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // No configuration space.
        debug!(offset, len = data.len(), "virtio-rng: config read");
        data.fill(0);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        debug!(offset, len = data.len(), "virtio-rng: config write ignored");
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let ([queue], mem, interrupt) = ctx.into_queues::<1>()?;
        self.active = Some(Active {
            mem,
            queue,
            interrupt,
        });
        Ok(())
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
    }

    fn process_queue(&mut self, index: usize) -> Result<(), DeviceError> {
        if index != 0 {
            return Err(DeviceError::UnknownQueue(index));
        }
        let Some(active) = self.active.as_mut() else {
            debug!("virtio-rng: notification before activation ignored");
            return Ok(());
        };
        let queue_error = |source| DeviceError::Queue { queue: 0, source };
        let mem = &active.mem;

        // Serve the requests available now; the driver notifies again for
        // later ones. This bounds the work of one notification.
        let chains: Vec<DescriptorChain<&GuestMemoryMmap>> =
            active.queue.iter(mem).map_err(queue_error)?.collect();
        if chains.is_empty() {
            return Ok(());
        }

        let mut completed = 0usize;
        for chain in chains {
            let head = chain.head_index();
            let written = match serve(mem, chain) {
                Ok(written) => written,
                Err(err) => {
                    debug!("virtio-rng: request returned without entropy: {err}");
                    0
                }
            };
            if head >= active.queue.size() {
                // Cannot be put on the used ring; the driver's bug.
                debug!(
                    head,
                    "virtio-rng: head index outside the queue, request dropped"
                );
                continue;
            }
            active
                .queue
                .add_used(mem, head, written)
                .map_err(queue_error)?;
            completed += 1;
        }

        if completed > 0 && active.queue.needs_notification(mem).map_err(queue_error)? {
            active
                .interrupt
                .signal_used_queue(0)
                .map_err(|source| DeviceError::Interrupt { queue: 0, source })?;
        }
        Ok(())
    }
}

/// Fills the writable buffers of one request; returns the bytes written.
fn serve(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Result<u32, RequestError> {
    let head = chain.head_index();
    let buffers = read_chain(chain, usize::from(QUEUE_SIZE))?;
    check_guest_memory(mem, head, &buffers)?;
    if let Some(position) = buffers.iter().position(|b| !b.device_writable) {
        return Err(RequestError::ReadableBuffer { head, position });
    }

    let total = buffers
        .iter()
        .fold(0u32, |sum, b| sum.saturating_add(b.len))
        .min(MAX_BYTES_PER_REQUEST);
    // u32 fits in usize on supported hosts.
    let mut entropy = vec![0u8; total as usize];
    getrandom(&mut entropy).map_err(RequestError::Entropy)?;

    let mut written = 0u32;
    let mut remaining = entropy.as_slice();
    for Buffer { addr, len, .. } in buffers {
        if remaining.is_empty() {
            break;
        }
        let n = remaining.len().min(len as usize);
        let (chunk, rest) = remaining.split_at(n);
        // read_chain checked the buffer is inside guest memory; a failure
        // here ends the request with what was written so far.
        if let Err(err) = mem.write_slice(chunk, addr) {
            error!("virtio-rng: writing entropy at {:#x} failed: {err}", addr.0);
            break;
        }
        // n <= MAX_BYTES_PER_REQUEST, so it fits in u32.
        written += n as u32;
        remaining = rest;
    }
    Ok(written)
}

/// Fills `buf` from the host's random source, retrying short reads.
fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is a live, writable buffer of `rest.len()` bytes and
        // getrandom(2) writes at most that many bytes into it.
        let ret = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        match usize::try_from(ret) {
            Ok(n) => filled += n,
            Err(_) => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestAddress;

    use super::*;
    use crate::virtio::test_utils::{
        test_interrupt, test_memory, TestQueue, DATA_BASE, MEM_SIZE, R, W,
    };

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    fn active_rng(tq: &TestQueue) -> (Rng, Arc<crate::virtio::EventFdInterrupt>) {
        let interrupt = test_interrupt();
        let mut rng = Rng::new();
        rng.set_acked_features(rng.avail_features());
        rng.activate(tq.activate_context(interrupt.clone()))
            .unwrap();
        (rng, interrupt)
    }

    #[test]
    fn describes_itself() {
        let rng = Rng::new();
        assert_eq!(rng.device_type(), 4);
        assert_eq!(rng.queue_max_sizes(), &[256]);
        assert_eq!(rng.avail_features(), 1 << 32);
        let mut config = [0xffu8; 4];
        rng.read_config(0, &mut config);
        assert_eq!(config, [0; 4]);
    }

    #[test]
    fn fills_writable_buffers_and_signals() {
        let mem = test_memory();
        let mut tq = TestQueue::new(&mem, 16);
        tq.add_chain(&[(DATA_BASE, 64, W), (DATA_BASE + 0x1000, 64, W)]);
        tq.add_chain(&[(DATA_BASE + 0x2000, 4096, W)]);
        let (mut rng, interrupt) = active_rng(&tq);

        rng.process_queue(0).unwrap();

        assert_eq!(tq.used_idx(), 2);
        assert_eq!(tq.used_elem(0), (0, 128));
        assert_eq!(tq.used_elem(1), (2, 4096));
        // 4096 random bytes are not all zero.
        assert!(read(&mem, DATA_BASE + 0x2000, 4096).iter().any(|&b| b != 0));
        assert!(read(&mem, DATA_BASE + 0x1000, 64).iter().any(|&b| b != 0));
        assert_eq!(interrupt.status(), 1);
        assert_eq!(interrupt.irqfd().read().unwrap(), 1);

        // Nothing new: no used entries, no interrupt.
        rng.process_queue(0).unwrap();
        assert_eq!(tq.used_idx(), 2);
        assert!(interrupt.irqfd().read().is_err());
    }

    #[test]
    fn oversize_requests_are_capped() {
        let mem = test_memory();
        let mut tq = TestQueue::new(&mem, 16);
        // 3 x 60 KiB, more than the 64 KiB cap.
        tq.add_chain(&[
            (DATA_BASE, 60 * 1024, W),
            (DATA_BASE + 0x10000, 60 * 1024, W),
            (DATA_BASE + 0x20000, 60 * 1024, W),
        ]);
        // A length past the end of memory is rejected, not capped.
        tq.add_chain(&[(DATA_BASE, u32::MAX, W)]);
        let (mut rng, _interrupt) = active_rng(&tq);
        rng.process_queue(0).unwrap();
        assert_eq!(tq.used_elem(0), (0, MAX_BYTES_PER_REQUEST));
        assert_eq!(tq.used_elem(1), (3, 0));
        // The third buffer was not touched.
        assert!(read(&mem, DATA_BASE + 0x20000, 60 * 1024)
            .iter()
            .all(|&b| b == 0));
    }

    #[test]
    fn malformed_chains_are_returned_empty_and_do_not_stop_the_queue() {
        let mem = test_memory();
        let end = MEM_SIZE;
        let mut tq = TestQueue::new(&mem, 16);
        // Device-readable buffer: never written.
        tq.add_chain(&[(DATA_BASE, 64, R)]);
        // Readable after writable.
        tq.add_chain(&[(DATA_BASE + 0x1000, 64, W), (DATA_BASE + 0x2000, 64, R)]);
        // Outside guest memory.
        tq.add_chain(&[(end - 8, 64, W)]);
        // A loop: 4 -> 5 -> 4.
        tq.set_desc(4, DATA_BASE + 0x3000, 64, W, Some(5));
        tq.set_desc(5, DATA_BASE + 0x4000, 64, W, Some(4));
        tq.publish(4);
        // Head outside the table: dropped, never on the used ring.
        tq.publish(300);
        // And a good one after all that.
        tq.set_desc(6, DATA_BASE + 0x5000, 32, W, None);
        tq.publish(6);
        let (mut rng, interrupt) = active_rng(&tq);

        rng.process_queue(0).unwrap();

        assert_eq!(tq.used_idx(), 5);
        let used: Vec<_> = (0..5).map(|i| tq.used_elem(i)).collect();
        assert_eq!(used, vec![(0, 0), (1, 0), (3, 0), (4, 0), (6, 32)]);
        for addr in [DATA_BASE, DATA_BASE + 0x1000, DATA_BASE + 0x3000] {
            assert!(read(&mem, addr, 64).iter().all(|&b| b == 0), "{addr:#x}");
        }
        assert_eq!(interrupt.status(), 1);
    }

    #[test]
    fn an_impossible_avail_index_is_a_device_error() {
        let mem = test_memory();
        let tq = TestQueue::new(&mem, 16);
        // 100 chains announced in a 16-entry queue.
        tq.set_avail_idx(100);
        let (mut rng, _interrupt) = active_rng(&tq);
        assert!(matches!(
            rng.process_queue(0),
            Err(DeviceError::Queue { queue: 0, .. })
        ));
        assert!(matches!(
            rng.process_queue(1),
            Err(DeviceError::UnknownQueue(1))
        ));
    }

    #[test]
    fn inactive_and_reset_devices_ignore_notifications() {
        let mem = test_memory();
        let mut tq = TestQueue::new(&mem, 16);
        tq.add_chain(&[(DATA_BASE, 64, W)]);
        let mut rng = Rng::new();
        rng.process_queue(0).unwrap();
        assert_eq!(tq.used_idx(), 0);

        let interrupt = test_interrupt();
        rng.activate(tq.activate_context(interrupt.clone()))
            .unwrap();
        assert!(matches!(
            rng.activate(tq.activate_context(interrupt)),
            Err(ActivateError::AlreadyActive)
        ));
        rng.reset();
        assert!(!rng.is_activated());
        rng.process_queue(0).unwrap();
        assert_eq!(tq.used_idx(), 0);
    }

    #[test]
    fn activation_needs_exactly_one_queue() {
        let mem = test_memory();
        let tq = TestQueue::new(&mem, 16);
        let mut ctx = tq.activate_context(test_interrupt());
        ctx.queues.push(tq.queue());
        assert!(matches!(
            Rng::new().activate(ctx),
            Err(ActivateError::QueueCount {
                expected: 1,
                actual: 2
            })
        ));
    }
}

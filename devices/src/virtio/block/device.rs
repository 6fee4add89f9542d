//! The virtio-blk device: features, configuration space and request
//! execution.
//!
//! Offered features: VIRTIO_F_VERSION_1, VIRTIO_BLK_F_FLUSH,
//! VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX and, for a read-only disk,
//! VIRTIO_BLK_F_RO. GET_ID needs no feature bit.
//!
//! Requests are served synchronously on the thread that delivers the queue
//! notification, one notification's worth of available requests at a time.
//! How each kind of bad request ends:
//! - structurally broken chains (a loop, a next index outside the table,
//!   more than [`QUEUE_SIZE`] descriptors, readable after writable) and
//!   chains without a device-writable last byte in guest memory have no
//!   trustworthy place for a status: they are dropped, never put on the
//!   used ring. Completing them with length 0 instead would let the driver
//!   read a status byte the device never wrote (Linux reads it without
//!   looking at the length) and take an unperformed request for a success;
//! - every other invalid request (bad header, wrong direction, partial
//!   sectors, sectors beyond the disk, too many or too large segments, a
//!   data buffer outside guest memory) is completed with VIRTIO_BLK_S_IOERR;
//! - OUT on a read-only disk is completed with VIRTIO_BLK_S_IOERR without
//!   writing anything (virtio 1.x, 5.2.6.1);
//! - unknown request types get VIRTIO_BLK_S_UNSUPP.
//!
//! None of these affect other requests. The status byte is written after
//! the data, and the used length counts the data bytes written to the guest
//! plus the status byte.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use tracing::{debug, warn};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::disk::{DiskError, DiskImage};
use super::request::{self, ParseError, Request, RequestLimits, RequestType};
use super::SECTOR_SIZE;
use crate::virtio::chain::read_chain;
use crate::virtio::device::{
    read_config_bytes, ActivateContext, ActivateError, DeviceError, VirtioDevice, VirtioInterrupt,
};

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most data segments per request (advertised as `seg_max`); a request
/// also needs a header and a status descriptor.
pub const SEG_MAX: u32 = 128;
/// Largest data segment (advertised as `size_max`). With [`SEG_MAX`] this
/// bounds one request to 8 MiB.
pub const SEG_SIZE_MAX: u32 = 64 * 1024;

/// Length of the device ID string GET_ID returns.
const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;
/// capacity (le64), size_max (le32), seg_max (le32).
const CONFIG_LEN: usize = 16;
const QUEUE_SIZES: &[u16] = &[QUEUE_SIZE];

/// Errors creating a block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The disk image cannot be used.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// The serial does not fit in the 20-byte device ID.
    #[error("block device serial is {0} bytes long, at most 20 fit")]
    SerialTooLong(usize),
}

/// State that exists only while the device is active.
struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<dyn VirtioInterrupt>,
}

/// The virtio block device.
pub struct Block {
    disk: DiskImage,
    id: [u8; ID_BYTES],
    avail_features: u64,
    acked_features: u64,
    config: [u8; CONFIG_LEN],
    active: Option<Active>,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("disk", &self.disk)
            .field("id", &String::from_utf8_lossy(&self.id))
            .field("acked_features", &self.acked_features)
            .field("active", &self.active.is_some())
            .finish()
    }
}

impl Block {
    /// A block device on the raw image `file`. A writable disk needs `file`
    /// opened for writing. `serial` (at most 20 bytes) is what GET_ID
    /// returns (`/sys/block/vdX/serial` in the guest); without one, the
    /// image's device and inode numbers make one up.
    pub fn new(file: File, read_only: bool, serial: Option<&str>) -> Result<Self, BlockError> {
        let serial = match serial {
            Some(serial) => serial.to_owned(),
            None => {
                let meta = file.metadata().map_err(DiskError::Metadata)?;
                format!("{:x}{:x}", meta.dev(), meta.ino())
            }
        };
        let serial = serial.as_bytes();
        if serial.len() > ID_BYTES {
            return Err(BlockError::SerialTooLong(serial.len()));
        }
        let mut id = [0u8; ID_BYTES];
        id[..serial.len()].copy_from_slice(serial);

        let disk = DiskImage::new(file, read_only)?;
        let mut avail_features = 1 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_SIZE_MAX;
        if read_only {
            avail_features |= 1 << VIRTIO_BLK_F_RO;
        }
        let mut config = [0u8; CONFIG_LEN];
        config[0..8].copy_from_slice(&disk.sectors().to_le_bytes());
        config[8..12].copy_from_slice(&SEG_SIZE_MAX.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());

        Ok(Self {
            disk,
            id,
            avail_features,
            acked_features: 0,
            config,
            active: None,
        })
    }

    /// Disk capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.sectors()
    }

    /// The device ID GET_ID returns, zero-padded.
    pub fn id(&self) -> &[u8; ID_BYTES] {
        &self.id
    }

    fn limits(&self) -> RequestLimits {
        RequestLimits {
            capacity: self.disk.sectors(),
            max_segments: SEG_MAX as usize,
            max_segment_size: SEG_SIZE_MAX,
        }
    }

    /// Serves one request; returns the used length, or `None` when the
    /// chain cannot be completed.
    fn serve(
        &self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> Option<u32> {
        let head = chain.head_index();
        let buffers = match read_chain(chain, usize::from(QUEUE_SIZE)) {
            Ok(buffers) => buffers,
            Err(err) => {
                debug!("virtio-blk: request dropped: {err}");
                return None;
            }
        };
        let (status_addr, status, written) = match request::parse(mem, &buffers, &self.limits()) {
            Ok(request) => {
                let (status, written) = self.execute(mem, &request);
                (request.status, status, written)
            }
            Err(ParseError::NoStatus) => {
                debug!(
                    head,
                    "virtio-blk: request dropped: {}",
                    ParseError::NoStatus
                );
                return None;
            }
            Err(ParseError::Invalid { status, error }) => {
                debug!(head, "virtio-blk: invalid request: {error}");
                (status, VIRTIO_BLK_S_IOERR, 0)
            }
        };
        // The status byte goes last, after all data. Status codes fit a byte.
        if let Err(err) = mem.write_obj(status as u8, status_addr) {
            warn!(head, "virtio-blk: cannot write the request status: {err}");
            return None;
        }
        // Data is bounded by SEG_MAX * SEG_SIZE_MAX, far below u32::MAX.
        Some(u32::try_from(written).unwrap_or(u32::MAX - 1) + 1)
    }

    /// Executes a valid request; returns the status and the data bytes
    /// written to guest memory.
    fn execute(&self, mem: &GuestMemoryMmap, request: &Request) -> (u32, u64) {
        // For IN and OUT the sectors were checked against the capacity (the
        // image size in sectors), so this cannot overflow; other types carry
        // an unchecked sector number and do not use it.
        let offset = request.sector.saturating_mul(SECTOR_SIZE);
        match request.request_type {
            RequestType::In => match self.disk.read_to_guest(mem, offset, &request.data) {
                (done, Ok(())) => (VIRTIO_BLK_S_OK, done),
                (done, Err(err)) => {
                    warn!(sector = request.sector, "virtio-blk: read failed: {err}");
                    (VIRTIO_BLK_S_IOERR, done)
                }
            },
            RequestType::Out => {
                if self.disk.read_only() {
                    debug!(
                        sector = request.sector,
                        "virtio-blk: write to a read-only disk refused"
                    );
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                let mut result = self.disk.write_from_guest(mem, offset, &request.data);
                if result.is_ok() && self.acked_features & (1 << VIRTIO_BLK_F_FLUSH) == 0 {
                    // No FLUSH negotiated: the driver expects write-through.
                    result = self.disk.flush();
                }
                match result {
                    Ok(()) => (VIRTIO_BLK_S_OK, 0),
                    Err(err) => {
                        warn!(sector = request.sector, "virtio-blk: write failed: {err}");
                        (VIRTIO_BLK_S_IOERR, 0)
                    }
                }
            }
            RequestType::Flush => match self.disk.flush() {
                Ok(()) => (VIRTIO_BLK_S_OK, 0),
                Err(err) => {
                    warn!("virtio-blk: flush failed: {err}");
                    (VIRTIO_BLK_S_IOERR, 0)
                }
            },
            RequestType::GetId => self.write_id(mem, request),
            RequestType::Unsupported(request_type) => {
                debug!(request_type, "virtio-blk: unsupported request type");
                (VIRTIO_BLK_S_UNSUPP, 0)
            }
        }
    }

    /// Copies the device ID into the request's buffers (as much as fits).
    fn write_id(&self, mem: &GuestMemoryMmap, request: &Request) -> (u32, u64) {
        let mut remaining = &self.id[..];
        let mut written = 0u64;
        for segment in &request.data {
            if remaining.is_empty() {
                break;
            }
            let (chunk, rest) = remaining.split_at(remaining.len().min(segment.len as usize));
            if let Err(err) = mem.write_slice(chunk, segment.addr) {
                warn!("virtio-blk: cannot write the device ID: {err}");
                return (VIRTIO_BLK_S_IOERR, written);
            }
            written += chunk.len() as u64;
            remaining = rest;
        }
        (VIRTIO_BLK_S_OK, written)
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        debug!(
            offset,
            len = data.len(),
            "virtio-blk: write to read-only config ignored"
        );
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
        // Take the active state out so that `serve` can borrow `self`.
        let Some(mut active) = self.active.take() else {
            debug!("virtio-blk: notification before activation ignored");
            return Ok(());
        };
        let result = self.process(&mut active);
        self.active = Some(active);
        result
    }
}

impl Block {
    fn process(&self, active: &mut Active) -> Result<(), DeviceError> {
        let queue_error = |source| DeviceError::Queue { queue: 0, source };
        let mem = &active.mem;
        // The requests available now; later ones come with their own
        // notification. This bounds the work of one notification.
        let chains: Vec<DescriptorChain<&GuestMemoryMmap>> =
            active.queue.iter(mem).map_err(queue_error)?.collect();

        let mut completed = 0usize;
        for chain in chains {
            let head = chain.head_index();
            let Some(used_len) = self.serve(mem, chain) else {
                continue;
            };
            active
                .queue
                .add_used(mem, head, used_len)
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

#[cfg(test)]
mod tests {
    use virtio_bindings::virtio_blk::{
        VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    };
    use vm_memory::GuestAddress;

    use super::*;
    use crate::virtio::test_utils::{
        test_interrupt, test_memory, TempImage, TestQueue, DATA_BASE, MEM_SIZE, R, W,
    };
    use crate::virtio::EventFdInterrupt;

    const IMAGE_LEN: usize = 64 * 1024;

    fn pattern() -> Vec<u8> {
        (0..IMAGE_LEN).map(|i| (i % 253) as u8).collect()
    }

    /// Guest memory plan for request `n` (n < 15): headers one page apart
    /// from DATA_BASE, status bytes 16 bytes apart in the page after them,
    /// data buffers 64 KiB apart from 0x20000.
    fn header_addr(n: u64) -> u64 {
        DATA_BASE + n * 0x1000
    }
    fn status_addr(n: u64) -> u64 {
        DATA_BASE + 0xf000 + n * 0x10
    }
    fn data_addr(n: u64) -> u64 {
        0x2_0000 + n * 0x1_0000
    }

    fn write_header(mem: &GuestMemoryMmap, n: u64, request_type: u32, sector: u64) {
        let at = header_addr(n);
        mem.write_obj(request_type, GuestAddress(at)).unwrap();
        mem.write_obj(0u32, GuestAddress(at + 4)).unwrap();
        mem.write_obj(sector, GuestAddress(at + 8)).unwrap();
        // Poison the status so an unwritten one is visible.
        mem.write_obj(0xeeu8, GuestAddress(status_addr(n))).unwrap();
    }

    fn status(mem: &GuestMemoryMmap, n: u64) -> u8 {
        mem.read_obj(GuestAddress(status_addr(n))).unwrap()
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    /// Adds request `n`: header, then `data` buffers, then the status byte.
    fn add_request(
        tq: &mut TestQueue,
        n: u64,
        request_type: u32,
        sector: u64,
        data: &[(u64, u32, bool)],
    ) -> u16 {
        write_header(tq.mem(), n, request_type, sector);
        let mut chain = vec![(header_addr(n), 16, R)];
        chain.extend_from_slice(data);
        chain.push((status_addr(n), 1, W));
        tq.add_chain(&chain)
    }

    fn active_block(
        tq: &TestQueue,
        image: &TempImage,
        read_only: bool,
    ) -> (Block, Arc<EventFdInterrupt>) {
        let interrupt = test_interrupt();
        let mut block = Block::new(image.open(!read_only), read_only, Some("test-disk")).unwrap();
        block.set_acked_features(block.avail_features());
        block
            .activate(tq.activate_context(interrupt.clone()))
            .unwrap();
        (block, interrupt)
    }

    const OK: u8 = VIRTIO_BLK_S_OK as u8;
    const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
    const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

    #[test]
    fn features_and_config_space() {
        let image = TempImage::new(&pattern());
        let block = Block::new(image.open(true), false, None).unwrap();
        assert_eq!(block.device_type(), 2);
        assert_eq!(block.queue_max_sizes(), &[256]);
        assert_eq!(
            block.avail_features(),
            1 << 32
                | 1 << VIRTIO_BLK_F_FLUSH
                | 1 << VIRTIO_BLK_F_SEG_MAX
                | 1 << VIRTIO_BLK_F_SIZE_MAX
        );
        assert_eq!(block.capacity(), 128);
        assert_ne!(block.id(), &[0u8; 20], "a default serial is made up");

        let mut capacity = [0u8; 8];
        block.read_config(0, &mut capacity);
        assert_eq!(u64::from_le_bytes(capacity), 128);
        let mut word = [0u8; 4];
        block.read_config(8, &mut word);
        assert_eq!(u32::from_le_bytes(word), SEG_SIZE_MAX);
        block.read_config(12, &mut word);
        assert_eq!(u32::from_le_bytes(word), SEG_MAX);
        block.read_config(0x40, &mut word);
        assert_eq!(word, [0; 4]);

        let ro = Block::new(image.open(false), true, None).unwrap();
        assert_ne!(ro.avail_features() & 1 << VIRTIO_BLK_F_RO, 0);
    }

    #[test]
    fn construction_errors() {
        let image = TempImage::new(&pattern());
        assert!(matches!(
            Block::new(image.open(true), false, Some("this serial is far too long")),
            Err(BlockError::SerialTooLong(27))
        ));
        assert!(matches!(
            Block::new(image.open(false), false, None),
            Err(BlockError::Disk(DiskError::NotWritable))
        ));
    }

    #[test]
    fn write_then_read_round_trip() {
        let mem = test_memory();
        let image = TempImage::new(&pattern());
        let mut tq = TestQueue::new(&mem, 16);
        // OUT: 1024 bytes at sector 4, from two segments.
        mem.write_slice(&[0x11; 512], GuestAddress(data_addr(0)))
            .unwrap();
        mem.write_slice(&[0x22; 512], GuestAddress(data_addr(0) + 0x1000))
            .unwrap();
        add_request(
            &mut tq,
            0,
            VIRTIO_BLK_T_OUT,
            4,
            &[(data_addr(0), 512, R), (data_addr(0) + 0x1000, 512, R)],
        );
        // IN: sectors 3..7 (2048 bytes) into one buffer.
        add_request(&mut tq, 1, VIRTIO_BLK_T_IN, 3, &[(data_addr(1), 2048, W)]);
        let (mut block, interrupt) = active_block(&tq, &image, false);

        block.process_queue(0).unwrap();

        assert_eq!(tq.used_idx(), 2);
        assert_eq!(tq.used_elem(0), (0, 1));
        assert_eq!(tq.used_elem(1), (4, 2049));
        assert_eq!((status(&mem, 0), status(&mem, 1)), (OK, OK));
        assert_eq!(interrupt.status(), 1);

        let mut expected = pattern();
        expected[2048..2560].fill(0x11);
        expected[2560..3072].fill(0x22);
        assert_eq!(image.contents(), expected);
        assert_eq!(read(&mem, data_addr(1), 2048), expected[1536..3584]);
    }

    #[test]
    fn flush_and_get_id() {
        let mem = test_memory();
        let image = TempImage::new(&pattern());
        let mut tq = TestQueue::new(&mem, 16);
        // Sector numbers of FLUSH and GET_ID are ignored, whatever they are.
        add_request(&mut tq, 0, VIRTIO_BLK_T_FLUSH, u64::MAX, &[]);
        add_request(
            &mut tq,
            1,
            VIRTIO_BLK_T_GET_ID,
            u64::MAX,
            &[(data_addr(1), 20, W)],
        );
        // A short ID buffer gets what fits.
        add_request(&mut tq, 2, VIRTIO_BLK_T_GET_ID, 0, &[(data_addr(2), 4, W)]);
        let (mut block, _interrupt) = active_block(&tq, &image, false);

        block.process_queue(0).unwrap();

        assert_eq!(tq.used_idx(), 3);
        assert_eq!(tq.used_elem(0).1, 1);
        assert_eq!(tq.used_elem(1).1, 21);
        assert_eq!(tq.used_elem(2).1, 5);
        assert_eq!([status(&mem, 0), status(&mem, 1), status(&mem, 2)], [OK; 3]);
        let mut id = b"test-disk".to_vec();
        id.resize(20, 0);
        assert_eq!(read(&mem, data_addr(1), 20), id);
        assert_eq!(read(&mem, data_addr(2), 4), b"test");
    }

    #[test]
    fn read_only_disks_refuse_writes() {
        let mem = test_memory();
        let image = TempImage::new(&pattern());
        let mut tq = TestQueue::new(&mem, 16);
        mem.write_slice(&[0x33; 512], GuestAddress(data_addr(0)))
            .unwrap();
        add_request(&mut tq, 0, VIRTIO_BLK_T_OUT, 0, &[(data_addr(0), 512, R)]);
        add_request(&mut tq, 1, VIRTIO_BLK_T_IN, 0, &[(data_addr(1), 512, W)]);
        let (mut block, _interrupt) = active_block(&tq, &image, true);

        block.process_queue(0).unwrap();

        assert_eq!(tq.used_idx(), 2);
        assert_eq!((status(&mem, 0), status(&mem, 1)), (IOERR, OK));
        assert_eq!(tq.used_elem(0).1, 1);
        assert_eq!(image.contents(), pattern());
        assert_eq!(read(&mem, data_addr(1), 512), pattern()[..512]);
    }

    #[test]
    fn invalid_requests_get_ioerr_and_do_not_disturb_others() {
        let mem = test_memory();
        let image = TempImage::new(&pattern());
        let mut tq = TestQueue::new(&mem, 256);
        // 0: past the end of the disk.
        add_request(&mut tq, 0, VIRTIO_BLK_T_IN, 127, &[(data_addr(0), 1024, W)]);
        // 1: sector number that overflows.
        add_request(
            &mut tq,
            1,
            VIRTIO_BLK_T_OUT,
            u64::MAX,
            &[(data_addr(1), 512, R)],
        );
        // 2: partial sector.
        add_request(&mut tq, 2, VIRTIO_BLK_T_IN, 0, &[(data_addr(2), 100, W)]);
        // 3: wrong direction (IN into a device-readable buffer).
        add_request(&mut tq, 3, VIRTIO_BLK_T_IN, 0, &[(data_addr(3), 512, R)]);
        // 4: data buffer outside guest memory.
        add_request(
            &mut tq,
            4,
            VIRTIO_BLK_T_IN,
            0,
            &[(MEM_SIZE - 0x100, 512, W)],
        );
        // 5: a segment larger than size_max.
        add_request(
            &mut tq,
            5,
            VIRTIO_BLK_T_IN,
            0,
            &[(data_addr(0), SEG_SIZE_MAX + 512, W)],
        );
        // 6: more segments than seg_max.
        let many = vec![(data_addr(1), 512, W); SEG_MAX as usize + 1];
        add_request(&mut tq, 6, VIRTIO_BLK_T_IN, 0, &many);
        // 7: unsupported type (DISCARD).
        add_request(&mut tq, 7, 11, 0, &[]);
        // 8: a good one.
        add_request(&mut tq, 8, VIRTIO_BLK_T_IN, 127, &[(data_addr(2), 512, W)]);
        let (mut block, _interrupt) = active_block(&tq, &image, false);

        block.process_queue(0).unwrap();

        assert_eq!(tq.used_idx(), 9);
        let statuses: Vec<u8> = (0..9).map(|n| status(&mem, n)).collect();
        assert_eq!(
            statuses,
            vec![IOERR, IOERR, IOERR, IOERR, IOERR, IOERR, IOERR, UNSUPP, OK]
        );
        for i in 0..8 {
            assert_eq!(tq.used_elem(i).1, 1, "request {i}: only the status byte");
        }
        assert_eq!(tq.used_elem(8).1, 513);
        assert_eq!(read(&mem, data_addr(2), 512), pattern()[127 * 512..]);
        assert_eq!(image.contents(), pattern());
    }

    #[test]
    fn chains_without_a_usable_status_are_dropped() {
        let mem = test_memory();
        let image = TempImage::new(&pattern());
        let mut tq = TestQueue::new(&mem, 16);
        // Status descriptor device-readable.
        write_header(&mem, 0, VIRTIO_BLK_T_IN, 0);
        tq.add_chain(&[
            (header_addr(0), 16, R),
            (data_addr(0), 512, W),
            (status_addr(0), 1, R),
        ]);
        // Zero-length status descriptor.
        write_header(&mem, 1, VIRTIO_BLK_T_FLUSH, 0);
        tq.add_chain(&[(header_addr(1), 16, R), (status_addr(1), 0, W)]);
        // Status byte outside guest memory.
        write_header(&mem, 2, VIRTIO_BLK_T_FLUSH, 0);
        tq.add_chain(&[(header_addr(2), 16, R), (MEM_SIZE, 1, W)]);
        // A loop: 8 -> 9 -> 8.
        write_header(&mem, 3, VIRTIO_BLK_T_IN, 0);
        tq.set_desc(8, header_addr(3), 16, R, Some(9));
        tq.set_desc(9, status_addr(3), 1, W, Some(8));
        tq.publish(8);
        // A good request after all of that.
        tq.set_desc(10, header_addr(4), 16, R, Some(11));
        tq.set_desc(11, status_addr(4), 1, W, None);
        write_header(&mem, 4, VIRTIO_BLK_T_FLUSH, 0);
        tq.publish(10);
        let (mut block, interrupt) = active_block(&tq, &image, false);

        block.process_queue(0).unwrap();

        assert_eq!(tq.used_idx(), 1);
        assert_eq!(tq.used_elem(0), (10, 1));
        assert_eq!(status(&mem, 4), OK);
        for n in 0..4 {
            assert_eq!(status(&mem, n), 0xee, "request {n}: status untouched");
        }
        assert_eq!(read(&mem, data_addr(0), 512), vec![0; 512]);
        assert_eq!(interrupt.status(), 1);
    }

    #[test]
    fn broken_avail_ring_is_a_device_error() {
        let mem = test_memory();
        let image = TempImage::new(&pattern());
        let tq = TestQueue::new(&mem, 16);
        tq.set_avail_idx(17);
        let (mut block, _interrupt) = active_block(&tq, &image, false);
        assert!(matches!(
            block.process_queue(0),
            Err(DeviceError::Queue { queue: 0, .. })
        ));
        assert!(matches!(
            block.process_queue(3),
            Err(DeviceError::UnknownQueue(3))
        ));
        // Still usable after reset + activation with a sane ring.
        block.reset();
        assert!(!block.is_activated());
        let tq = TestQueue::new(&mem, 16);
        block
            .activate(tq.activate_context(test_interrupt()))
            .unwrap();
        block.process_queue(0).unwrap();
    }

    #[test]
    fn without_negotiated_flush_writes_are_still_completed() {
        let mem = test_memory();
        let image = TempImage::new(&pattern());
        let mut tq = TestQueue::new(&mem, 16);
        add_request(&mut tq, 0, VIRTIO_BLK_T_OUT, 0, &[(data_addr(0), 512, R)]);
        let mut block = Block::new(image.open(true), false, None).unwrap();
        block.set_acked_features(1 << VIRTIO_F_VERSION_1);
        block
            .activate(tq.activate_context(test_interrupt()))
            .unwrap();
        block.process_queue(0).unwrap();
        assert_eq!(status(&mem, 0), OK);
        assert_eq!(image.contents()[..512], [0u8; 512]);
    }
}

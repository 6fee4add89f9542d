//! virtio-blk harnesses.
//!
//! - [`run_device`] (target `block`): a [`Block`] on a 64 KiB image,
//!   activated with one fuzzed queue, then notified twice. Input:
//!
//!   ```text
//!   u8 cfg   bit 0: read-only disk
//!            bit 1: VIRTIO_BLK_F_FLUSH not negotiated (writes go through)
//!   QueueSpec, then the data area
//!   ```
//!
//! - [`run_request`] (target `block_request`): every available chain through
//!   [`read_chain`], [`check_guest_memory`] and [`request::parse`] directly,
//!   with fuzzed [`RequestLimits`], checking what a valid [`Request`]
//!   promises. Input:
//!
//!   ```text
//!   u64 capacity (sectors), u8 max_segments, u32 max_segment_size,
//!   u16 max_descriptors (read_chain's limit, 0 means 256)
//!   QueueSpec, then the data area
//!   ```

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, OnceLock};

use devices::virtio::block::request::{self, HEADER_SIZE};
use devices::virtio::block::{ParseError, Request, RequestLimits, RequestType, SECTOR_SIZE};
use devices::virtio::{
    check_guest_memory, read_chain, ActivateContext, Block, Buffer, DeviceError, EventFdInterrupt,
    VirtioDevice,
};
use virtio_bindings::virtio_blk::VIRTIO_BLK_F_FLUSH;
use virtio_queue::QueueOwnedT;
use vm_memory::{Address, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};
use vmm_sys_util::eventfd::EventFd;

use crate::{
    guest_memory, may_write_rings, scratch_dir, used_entries, write_data, QueueSpec, Reader,
};

/// Size of the disk image: 128 sectors.
pub const IMAGE_SIZE: u64 = 64 * 1024;
/// The serial GET_ID returns.
pub const SERIAL: &str = "fuzz-disk";

/// The disk image, created once per process (the fuzzer's writes change its
/// contents, which does not matter).
fn image() -> &'static File {
    static IMAGE: OnceLock<File> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let path = scratch_dir().join("disk.img");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .expect("disk image");
        let pattern: Vec<u8> = (0..IMAGE_SIZE).map(|i| (i % 251) as u8).collect();
        file.write_all_at(&pattern, 0).expect("disk image");
        file
    })
}

/// What one [`run_device`] did, for the corpus tests.
#[derive(Debug)]
pub struct DeviceOutcome {
    /// The first notification's result (as text).
    pub result: Result<(), String>,
    /// Used ring entries (head, length) after both notifications.
    pub used: Vec<(u32, u32)>,
    /// Guest memory afterwards.
    pub mem: GuestMemoryMmap,
}

/// Only a broken queue may fail a notification: the queue index is valid
/// and the interrupt eventfd works.
fn check_device_result(result: &Result<(), DeviceError>) {
    if let Err(err) = result {
        assert!(
            matches!(err, DeviceError::Queue { .. }),
            "unexpected device error: {err}"
        );
    }
}

/// Target `block`: the device behind its public [`VirtioDevice`] API.
pub fn run_device(input: &[u8]) -> DeviceOutcome {
    let mut r = Reader::new(input);
    let cfg = r.u8();
    let spec = QueueSpec::parse(&mut r);
    let mem = guest_memory();
    write_data(&mem, r.rest());
    let queue = spec.install(&mem, 0);

    let file = image().try_clone().expect("dup the image");
    let mut block = Block::new(file, cfg & 1 != 0, Some(SERIAL)).expect("block device");
    let mut features = block.avail_features();
    if cfg & 2 != 0 {
        features &= !(1 << VIRTIO_BLK_F_FLUSH);
    }
    block.set_acked_features(features);
    let interrupt = Arc::new(EventFdInterrupt::new(
        EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
    ));
    block
        .activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![queue],
            interrupt,
        })
        .expect("activation with one queue");

    let check = !may_write_rings(&[&spec]);
    let first = block.process_queue(0);
    check_device_result(&first);
    let used = used_entries(&mem, 0, &spec, check);
    if check {
        for &(id, len) in &used {
            // The status byte, plus at most 8 MiB of data (seg_max * size_max).
            assert!(
                (1..=8 * 1024 * 1024 + 1).contains(&len),
                "used length {len} for head {id}"
            );
        }
    }

    // A notification without new requests completes nothing more.
    let second = block.process_queue(0);
    check_device_result(&second);
    if check {
        assert_eq!(
            used_entries(&mem, 0, &spec, true),
            used,
            "a spurious notification changed the used ring"
        );
    }
    assert!(matches!(
        block.process_queue(1),
        Err(DeviceError::UnknownQueue(1))
    ));
    block.reset();
    assert!(!block.is_activated());

    DeviceOutcome {
        result: first.map_err(|e| e.to_string()),
        used,
        mem,
    }
}

/// What [`run_request`] parsed, chain by chain, for the corpus tests.
pub type RequestOutcome = Vec<Result<Request, String>>;

/// Target `block_request`: the parser on its own.
pub fn run_request(input: &[u8]) -> RequestOutcome {
    let mut r = Reader::new(input);
    let limits = RequestLimits {
        capacity: r.u64(),
        max_segments: usize::from(r.u8()),
        max_segment_size: r.u32(),
    };
    let max_descriptors = match r.u16() {
        0 => 256,
        n => usize::from(n),
    };
    let spec = QueueSpec::parse(&mut r);
    let mem = guest_memory();
    write_data(&mem, r.rest());
    let mut queue = spec.install(&mem, 0);

    let mut outcome = Vec::new();
    let Ok(chains) = queue.iter(&mem) else {
        return outcome;
    };
    for chain in chains {
        let head = chain.head_index();
        let buffers = match read_chain(chain, max_descriptors) {
            Ok(buffers) => buffers,
            Err(err) => {
                outcome.push(Err(err.to_string()));
                continue;
            }
        };
        check_chain(&buffers, max_descriptors);
        let in_memory = check_guest_memory(&mem, head, &buffers).is_ok();
        match request::parse(&mem, &buffers, &limits) {
            Ok(req) => {
                assert!(in_memory, "a valid request with buffers outside memory");
                check_request(&mem, &buffers, &limits, &req);
                outcome.push(Ok(req));
            }
            Err(ParseError::NoStatus) => {
                assert!(
                    status_byte(&mem, &buffers).is_none(),
                    "NoStatus for a chain ending in a writable byte: {buffers:?}"
                );
                outcome.push(Err(ParseError::NoStatus.to_string()));
            }
            Err(ParseError::Invalid { status, error }) => {
                assert_eq!(Some(status), status_byte(&mem, &buffers));
                outcome.push(Err(error.to_string()));
            }
        }
    }
    outcome
}

/// The last byte of the chain if it is device-writable and in memory
/// (re-derived here, independently of the parser).
fn status_byte(mem: &GuestMemoryMmap, buffers: &[Buffer]) -> Option<GuestAddress> {
    let last = buffers.last()?;
    if !last.device_writable || last.len == 0 {
        return None;
    }
    let addr = last.addr.checked_add(u64::from(last.len) - 1)?;
    mem.check_range(addr, 1, Permissions::Write).then_some(addr)
}

fn check_chain(buffers: &[Buffer], max_descriptors: usize) {
    assert!(!buffers.is_empty() && buffers.len() <= max_descriptors);
    let first_writable = buffers
        .iter()
        .position(|b| b.device_writable)
        .unwrap_or(buffers.len());
    assert!(
        buffers[first_writable..].iter().all(|b| b.device_writable),
        "readable after writable accepted: {buffers:?}"
    );
}

/// What a parsed request promises the code that executes it.
fn check_request(mem: &GuestMemoryMmap, buffers: &[Buffer], limits: &RequestLimits, req: &Request) {
    assert!(mem.check_range(req.status, 1, Permissions::Write));
    let data_writable = match req.request_type {
        RequestType::In | RequestType::GetId => true,
        RequestType::Out => false,
        RequestType::Flush | RequestType::Unsupported(_) => {
            assert!(req.data.is_empty(), "{req:?}");
            return;
        }
    };
    assert!(req.data.len() <= limits.max_segments, "{req:?}");
    let access = if data_writable {
        Permissions::Write
    } else {
        Permissions::Read
    };
    for seg in &req.data {
        assert!(seg.len > 0 && seg.len <= limits.max_segment_size, "{seg:?}");
        assert!(
            mem.check_range(seg.addr, seg.len as usize, access),
            "{seg:?}"
        );
        // Each segment is part of one buffer of the right direction.
        let end = seg.addr.0 + u64::from(seg.len);
        assert!(
            buffers.iter().any(|b| b.device_writable == data_writable
                && b.addr.0 <= seg.addr.0
                && end <= b.addr.0 + u64::from(b.len)),
            "segment {seg:?} is not inside a buffer of {buffers:?}"
        );
    }
    let total: u64 = buffers.iter().map(|b| u64::from(b.len)).sum();
    assert!(
        HEADER_SIZE + req.data_len() < total,
        "{req:?} in {buffers:?}"
    );
    if matches!(req.request_type, RequestType::In | RequestType::Out) {
        assert_eq!(req.data_len() % SECTOR_SIZE, 0);
        let end = req.sector.checked_add(req.data_len() / SECTOR_SIZE);
        assert!(end.is_some_and(|end| end <= limits.capacity), "{req:?}");
    }
}

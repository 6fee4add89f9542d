//! Parsing a virtio-blk request (virtio 1.x, 5.2.6) out of a descriptor
//! chain.
//!
//! A request is a 16-byte header `{type: le32, reserved: le32, sector:
//! le64}` the device reads, data (read for OUT, written for IN and GET_ID)
//! and one status byte the device writes, last. Since VIRTIO_F_VERSION_1
//! implies VIRTIO_F_ANY_LAYOUT, the device must not assume how these bytes
//! are cut into descriptors (2.7.4): the parser works on the byte streams of
//! the readable and writable parts of the chain, so a header split over two
//! descriptors or a status byte sharing a descriptor with data are fine.
//! Linux uses one descriptor each for header, every data segment and status.
//!
//! The status byte is located first, from the last writable byte of the
//! chain: a chain without one cannot be answered at all
//! ([`ParseError::NoStatus`]). Everything else that is wrong is reported
//! with the status address, for the device to answer VIRTIO_BLK_S_IOERR.

use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

use super::SECTOR_SIZE;
use crate::virtio::chain::Buffer;

/// Size of the request header.
pub const HEADER_SIZE: u64 = 16;

const T_IN: u32 = virtio_bindings::virtio_blk::VIRTIO_BLK_T_IN;
const T_OUT: u32 = virtio_bindings::virtio_blk::VIRTIO_BLK_T_OUT;
const T_FLUSH: u32 = virtio_bindings::virtio_blk::VIRTIO_BLK_T_FLUSH;
const T_GET_ID: u32 = virtio_bindings::virtio_blk::VIRTIO_BLK_T_GET_ID;

/// A contiguous byte range of guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

/// What the driver asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    /// Read sectors into guest memory (VIRTIO_BLK_T_IN).
    In,
    /// Write sectors from guest memory (VIRTIO_BLK_T_OUT).
    Out,
    /// Make previous writes durable (VIRTIO_BLK_T_FLUSH).
    Flush,
    /// Return the 20-byte device ID string (VIRTIO_BLK_T_GET_ID).
    GetId,
    /// Anything else, answered with VIRTIO_BLK_S_UNSUPP.
    Unsupported(u32),
}

impl From<u32> for RequestType {
    fn from(value: u32) -> Self {
        match value {
            T_IN => Self::In,
            T_OUT => Self::Out,
            T_FLUSH => Self::Flush,
            T_GET_ID => Self::GetId,
            other => Self::Unsupported(other),
        }
    }
}

/// What the device accepts; requests beyond these limits are errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Disk size in 512-byte sectors.
    pub capacity: u64,
    /// Most data segments in one request (the advertised `seg_max`).
    pub max_segments: usize,
    /// Largest data segment (the advertised `size_max`).
    pub max_segment_size: u32,
}

/// A validated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What to do.
    pub request_type: RequestType,
    /// First sector (IN and OUT).
    pub sector: u64,
    /// The data: device-writable ranges for IN and GET_ID, device-readable
    /// ranges for OUT, none otherwise. No range is empty.
    pub data: Vec<Segment>,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

impl Request {
    /// Total data length in bytes.
    pub fn data_len(&self) -> u64 {
        total_len(&self.data)
    }
}

/// Why a request with a usable status byte is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Fewer than 16 device-readable bytes.
    #[error("the request header needs 16 device-readable bytes, the chain has {0}")]
    HeaderTooShort(u64),
    /// The header could not be read from guest memory.
    #[error("the request header cannot be read from guest memory")]
    HeaderUnreadable,
    /// A buffer is not entirely inside guest memory.
    #[error("buffer [{addr:#x}, +{len:#x}) is not inside guest memory")]
    OutsideMemory {
        /// Guest address of the buffer.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// Data in a direction the request type does not use (for example
    /// device-writable bytes besides the status in an OUT request).
    #[error("{request} request carries {len} unexpected {direction} bytes")]
    UnexpectedData {
        /// Request type name.
        request: &'static str,
        /// "device-readable" or "device-writable".
        direction: &'static str,
        /// How many bytes.
        len: u64,
    },
    /// IN or OUT data that is not a whole number of sectors.
    #[error("data length {0} is not a multiple of 512")]
    PartialSector(u64),
    /// The sectors are not all on the disk.
    #[error("sectors [{sector}, +{count}) are beyond the disk's {capacity} sectors")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Number of sectors.
        count: u64,
        /// Disk capacity in sectors.
        capacity: u64,
    },
    /// More data segments than `seg_max`.
    #[error("{count} data segments, the device accepts at most {max}")]
    TooManySegments {
        /// Segments in the request.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A data segment larger than `size_max`.
    #[error("a data segment of {len} bytes, the device accepts at most {max}")]
    SegmentTooLarge {
        /// The segment length.
        len: u32,
        /// The limit.
        max: u32,
    },
}

/// Why a chain is not a valid request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The chain does not end with a device-writable byte inside guest
    /// memory: there is nowhere to report a status, so the request cannot
    /// be completed.
    #[error("the chain does not end with a device-writable status byte in guest memory")]
    NoStatus,
    /// The request is invalid; its status byte is at `status`.
    #[error("{error}")]
    Invalid {
        /// Where to write VIRTIO_BLK_S_IOERR.
        status: GuestAddress,
        /// What is wrong.
        error: RequestError,
    },
}

/// Parses and validates the request described by `buffers` (a complete
/// chain as [`read_chain`](crate::virtio::read_chain) returns it).
pub fn parse(
    mem: &GuestMemoryMmap,
    buffers: &[Buffer],
    limits: &RequestLimits,
) -> Result<Request, ParseError> {
    let status = status_byte(mem, buffers).ok_or(ParseError::NoStatus)?;
    let invalid = |error| ParseError::Invalid { status, error };

    if let Some(b) = buffers.iter().find(|b| !b.is_in(mem)) {
        return Err(invalid(RequestError::OutsideMemory {
            addr: b.addr.0,
            len: b.len,
        }));
    }

    let segments = |writable: bool| -> Vec<Segment> {
        buffers
            .iter()
            .filter(|b| b.device_writable == writable)
            .map(|b| Segment {
                addr: b.addr,
                len: b.len,
            })
            .collect()
    };
    let readable = segments(false);
    // The writable bytes, minus the status byte at the very end.
    let mut writable = segments(true);
    if let Some(last) = writable.last_mut() {
        last.len -= 1;
    }

    let readable_len = total_len(&readable);
    if readable_len < HEADER_SIZE {
        return Err(invalid(RequestError::HeaderTooShort(readable_len)));
    }
    let (header_segments, readable_data) = split_at(&readable, HEADER_SIZE);
    let mut header = [0u8; HEADER_SIZE as usize];
    gather(mem, &header_segments, &mut header)
        .map_err(|()| invalid(RequestError::HeaderUnreadable))?;
    let request_type = RequestType::from(u32::from_le_bytes([
        header[0], header[1], header[2], header[3],
    ]));
    let mut sector_bytes = [0u8; 8];
    sector_bytes.copy_from_slice(&header[8..16]);
    let sector = u64::from_le_bytes(sector_bytes);

    let unexpected = |request, direction, data: &[Segment]| {
        let len = total_len(data);
        if len == 0 {
            Ok(())
        } else {
            Err(invalid(RequestError::UnexpectedData {
                request,
                direction,
                len,
            }))
        }
    };
    let data = match request_type {
        RequestType::In => {
            unexpected("IN", "device-readable", &readable_data)?;
            writable
        }
        RequestType::GetId => {
            unexpected("GET_ID", "device-readable", &readable_data)?;
            writable
        }
        RequestType::Out => {
            unexpected("OUT", "device-writable", &writable)?;
            readable_data
        }
        RequestType::Flush => {
            unexpected("FLUSH", "device-readable", &readable_data)?;
            unexpected("FLUSH", "device-writable", &writable)?;
            Vec::new()
        }
        RequestType::Unsupported(_) => Vec::new(),
    };
    let data: Vec<Segment> = data.into_iter().filter(|s| s.len > 0).collect();

    if data.len() > limits.max_segments {
        return Err(invalid(RequestError::TooManySegments {
            count: data.len(),
            max: limits.max_segments,
        }));
    }
    if let Some(s) = data.iter().find(|s| s.len > limits.max_segment_size) {
        return Err(invalid(RequestError::SegmentTooLarge {
            len: s.len,
            max: limits.max_segment_size,
        }));
    }
    if matches!(request_type, RequestType::In | RequestType::Out) {
        let len = total_len(&data);
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(invalid(RequestError::PartialSector(len)));
        }
        let count = len / SECTOR_SIZE;
        let fits = sector
            .checked_add(count)
            .is_some_and(|end| end <= limits.capacity);
        if !fits {
            return Err(invalid(RequestError::OutOfRange {
                sector,
                count,
                capacity: limits.capacity,
            }));
        }
    }

    Ok(Request {
        request_type,
        sector,
        data,
        status,
    })
}

/// The last byte of the chain, if it is device-writable and in guest memory.
fn status_byte(mem: &GuestMemoryMmap, buffers: &[Buffer]) -> Option<GuestAddress> {
    let last = buffers.last().filter(|b| b.device_writable && b.len > 0)?;
    let addr = last.addr.checked_add(u64::from(last.len) - 1)?;
    mem.check_range(addr, 1, Permissions::Write).then_some(addr)
}

fn total_len(segments: &[Segment]) -> u64 {
    segments.iter().map(|s| u64::from(s.len)).sum()
}

/// Splits `segments` after the first `at` bytes.
fn split_at(segments: &[Segment], at: u64) -> (Vec<Segment>, Vec<Segment>) {
    let mut head = Vec::new();
    let mut tail = Vec::new();
    let mut remaining = at;
    for &segment in segments {
        let len = u64::from(segment.len);
        if remaining >= len {
            head.push(segment);
            remaining -= len;
        } else if remaining == 0 {
            tail.push(segment);
        } else {
            // 0 < remaining < len <= u32::MAX.
            let cut = remaining as u32;
            head.push(Segment {
                addr: segment.addr,
                len: cut,
            });
            // addr + cut is inside the segment, which is in guest memory.
            tail.push(Segment {
                addr: segment.addr.unchecked_add(u64::from(cut)),
                len: segment.len - cut,
            });
            remaining = 0;
        }
    }
    (head, tail)
}

/// Reads `segments` back to back into `out` (whose length is their total).
fn gather(mem: &GuestMemoryMmap, segments: &[Segment], out: &mut [u8]) -> Result<(), ()> {
    let mut offset = 0;
    for segment in segments {
        let len = segment.len as usize;
        let chunk = out.get_mut(offset..offset + len).ok_or(())?;
        mem.read_slice(chunk, segment.addr).map_err(|_| ())?;
        offset += len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_utils::{test_memory, MEM_SIZE};

    const LIMITS: RequestLimits = RequestLimits {
        capacity: 100,
        max_segments: 4,
        max_segment_size: 4096,
    };
    const HDR: u64 = 0x10000;
    const DATA: u64 = 0x20000;
    const STATUS: u64 = 0x30000;

    fn buffer(addr: u64, len: u32, device_writable: bool) -> Buffer {
        Buffer {
            addr: GuestAddress(addr),
            len,
            device_writable,
        }
    }

    fn write_header(mem: &GuestMemoryMmap, at: u64, request_type: u32, sector: u64) {
        mem.write_obj(request_type, GuestAddress(at)).unwrap();
        mem.write_obj(0u32, GuestAddress(at + 4)).unwrap();
        mem.write_obj(sector, GuestAddress(at + 8)).unwrap();
    }

    fn seg(addr: u64, len: u32) -> Segment {
        Segment {
            addr: GuestAddress(addr),
            len,
        }
    }

    fn invalid(error: RequestError) -> Result<Request, ParseError> {
        Err(ParseError::Invalid {
            status: GuestAddress(STATUS),
            error,
        })
    }

    #[test]
    fn parses_the_usual_layout() {
        let mem = test_memory();
        write_header(&mem, HDR, T_IN, 7);
        let chain = [
            buffer(HDR, 16, false),
            buffer(DATA, 1024, true),
            buffer(DATA + 0x1000, 512, true),
            buffer(STATUS, 1, true),
        ];
        let request = parse(&mem, &chain, &LIMITS).unwrap();
        assert_eq!(
            request,
            Request {
                request_type: RequestType::In,
                sector: 7,
                data: vec![seg(DATA, 1024), seg(DATA + 0x1000, 512)],
                status: GuestAddress(STATUS),
            }
        );
        assert_eq!(request.data_len(), 1536);

        write_header(&mem, HDR, T_OUT, 99);
        let chain = [
            buffer(HDR, 16, false),
            buffer(DATA, 512, false),
            buffer(STATUS, 1, true),
        ];
        let request = parse(&mem, &chain, &LIMITS).unwrap();
        assert_eq!(request.request_type, RequestType::Out);
        assert_eq!(request.data, vec![seg(DATA, 512)]);
    }

    #[test]
    fn any_layout_header_split_and_status_shared_with_data() {
        let mem = test_memory();
        // Header in two pieces, the second also holding OUT data.
        write_header(&mem, HDR, T_OUT, 3);
        let mut header = [0u8; 16];
        mem.read_slice(&mut header, GuestAddress(HDR)).unwrap();
        mem.write_slice(&header[..10], GuestAddress(0x40000))
            .unwrap();
        mem.write_slice(&header[10..], GuestAddress(0x50000))
            .unwrap();
        let chain = [
            buffer(0x40000, 10, false),
            buffer(0x50000, 6 + 512, false),
            buffer(STATUS, 1, true),
        ];
        let request = parse(&mem, &chain, &LIMITS).unwrap();
        assert_eq!(request.sector, 3);
        assert_eq!(request.data, vec![seg(0x50006, 512)]);

        // IN data and status byte in one descriptor.
        write_header(&mem, HDR, T_IN, 0);
        let chain = [buffer(HDR, 16, false), buffer(DATA, 513, true)];
        let request = parse(&mem, &chain, &LIMITS).unwrap();
        assert_eq!(request.data, vec![seg(DATA, 512)]);
        assert_eq!(request.status, GuestAddress(DATA + 512));
    }

    #[test]
    fn flush_get_id_and_unknown_types() {
        let mem = test_memory();
        write_header(&mem, HDR, T_FLUSH, 0);
        let chain = [buffer(HDR, 16, false), buffer(STATUS, 1, true)];
        let request = parse(&mem, &chain, &LIMITS).unwrap();
        assert_eq!(request.request_type, RequestType::Flush);
        assert!(request.data.is_empty());

        write_header(&mem, HDR, T_GET_ID, 0);
        let chain = [
            buffer(HDR, 16, false),
            buffer(DATA, 20, true),
            buffer(STATUS, 1, true),
        ];
        let request = parse(&mem, &chain, &LIMITS).unwrap();
        assert_eq!(request.request_type, RequestType::GetId);
        assert_eq!(request.data, vec![seg(DATA, 20)]);

        // DISCARD (11) is not offered: parsed as unsupported, data ignored.
        write_header(&mem, HDR, 11, 0);
        let chain = [
            buffer(HDR, 16, false),
            buffer(DATA, 16, false),
            buffer(STATUS, 1, true),
        ];
        let request = parse(&mem, &chain, &LIMITS).unwrap();
        assert_eq!(request.request_type, RequestType::Unsupported(11));

        // FLUSH with data is malformed.
        write_header(&mem, HDR, T_FLUSH, 0);
        let chain = [
            buffer(HDR, 16, false),
            buffer(DATA, 512, true),
            buffer(STATUS, 1, true),
        ];
        assert_eq!(
            parse(&mem, &chain, &LIMITS),
            invalid(RequestError::UnexpectedData {
                request: "FLUSH",
                direction: "device-writable",
                len: 512
            })
        );
    }

    #[test]
    fn chains_without_a_status_byte_cannot_be_answered() {
        let mem = test_memory();
        write_header(&mem, HDR, T_IN, 0);
        for chain in [
            // Status descriptor device-readable.
            vec![buffer(HDR, 16, false), buffer(STATUS, 1, false)],
            // Zero-length status descriptor.
            vec![buffer(HDR, 16, false), buffer(STATUS, 0, true)],
            // Status outside guest memory.
            vec![buffer(HDR, 16, false), buffer(MEM_SIZE, 1, true)],
            vec![buffer(HDR, 16, false), buffer(u64::MAX, 2, true)],
            // Nothing at all.
            vec![],
        ] {
            assert_eq!(
                parse(&mem, &chain, &LIMITS),
                Err(ParseError::NoStatus),
                "{chain:?}"
            );
        }
    }

    #[test]
    fn wrong_directions_and_short_headers_are_invalid() {
        let mem = test_memory();
        write_header(&mem, HDR, T_IN, 0);
        // IN with device-readable data.
        let chain = [
            buffer(HDR, 16, false),
            buffer(DATA, 512, false),
            buffer(STATUS, 1, true),
        ];
        assert_eq!(
            parse(&mem, &chain, &LIMITS),
            invalid(RequestError::UnexpectedData {
                request: "IN",
                direction: "device-readable",
                len: 512
            })
        );
        // OUT with device-writable data.
        write_header(&mem, HDR, T_OUT, 0);
        let chain = [
            buffer(HDR, 16, false),
            buffer(DATA, 512, true),
            buffer(STATUS, 1, true),
        ];
        assert_eq!(
            parse(&mem, &chain, &LIMITS),
            invalid(RequestError::UnexpectedData {
                request: "OUT",
                direction: "device-writable",
                len: 512
            })
        );
        // Header device-writable: no readable bytes at all.
        let chain = [buffer(HDR, 16, true), buffer(STATUS, 1, true)];
        assert_eq!(
            parse(&mem, &chain, &LIMITS),
            invalid(RequestError::HeaderTooShort(0))
        );
        let chain = [buffer(HDR, 8, false), buffer(STATUS, 1, true)];
        assert_eq!(
            parse(&mem, &chain, &LIMITS),
            invalid(RequestError::HeaderTooShort(8))
        );
    }

    #[test]
    fn lengths_ranges_and_limits_are_enforced() {
        let mem = test_memory();
        let in_chain = |data: &[(u64, u32)]| {
            let mut chain = vec![buffer(HDR, 16, false)];
            chain.extend(data.iter().map(|&(a, l)| buffer(a, l, true)));
            chain.push(buffer(STATUS, 1, true));
            chain
        };

        write_header(&mem, HDR, T_IN, 0);
        assert_eq!(
            parse(&mem, &in_chain(&[(DATA, 100)]), &LIMITS),
            invalid(RequestError::PartialSector(100))
        );
        assert_eq!(
            parse(&mem, &in_chain(&[(DATA, 8192)]), &LIMITS),
            invalid(RequestError::SegmentTooLarge {
                len: 8192,
                max: 4096
            })
        );
        let five = [(DATA, 512); 5];
        assert_eq!(
            parse(&mem, &in_chain(&five), &LIMITS),
            invalid(RequestError::TooManySegments { count: 5, max: 4 })
        );
        // Zero-length segments do not count.
        let chain = in_chain(&[(DATA, 0), (DATA, 512), (DATA, 0), (DATA, 0), (DATA, 0)]);
        assert_eq!(parse(&mem, &chain, &LIMITS).unwrap().data.len(), 1);

        // Sector ranges: the last sector is fine, one past is not.
        write_header(&mem, HDR, T_IN, 99);
        assert!(parse(&mem, &in_chain(&[(DATA, 512)]), &LIMITS).is_ok());
        assert_eq!(
            parse(&mem, &in_chain(&[(DATA, 1024)]), &LIMITS),
            invalid(RequestError::OutOfRange {
                sector: 99,
                count: 2,
                capacity: 100
            })
        );
        write_header(&mem, HDR, T_IN, u64::MAX);
        assert_eq!(
            parse(&mem, &in_chain(&[(DATA, 512)]), &LIMITS),
            invalid(RequestError::OutOfRange {
                sector: u64::MAX,
                count: 1,
                capacity: 100
            })
        );

        // A data buffer outside guest memory, with a good status byte.
        write_header(&mem, HDR, T_IN, 0);
        assert_eq!(
            parse(&mem, &in_chain(&[(MEM_SIZE - 256, 512)]), &LIMITS),
            invalid(RequestError::OutsideMemory {
                addr: MEM_SIZE - 256,
                len: 512
            })
        );
    }

    #[test]
    fn split_at_cuts_inside_a_segment() {
        let segments = [seg(0x1000, 10), seg(0x2000, 10)];
        assert_eq!(
            split_at(&segments, 15),
            (vec![seg(0x1000, 10), seg(0x2000, 5)], vec![seg(0x2005, 5)])
        );
        assert_eq!(
            split_at(&segments, 10),
            (vec![seg(0x1000, 10)], vec![seg(0x2000, 10)])
        );
        assert_eq!(split_at(&segments, 0), (vec![], segments.to_vec()));
    }
}

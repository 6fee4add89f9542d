//! The raw disk image behind a virtio-blk device: positioned reads and
//! writes straight between the image file and guest memory.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{
    GuestMemory, GuestMemoryMmap, Permissions, ReadVolatile, VolatileMemoryError, VolatileSlice,
    WriteVolatile,
};

use super::request::Segment;
use super::SECTOR_SIZE;

/// Errors of a disk image.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The image's metadata could not be read.
    #[error("cannot stat the disk image: {0}")]
    Metadata(#[source] io::Error),
    /// The image's open mode could not be queried.
    #[error("cannot query the disk image's open mode: {0}")]
    OpenMode(#[source] io::Error),
    /// A writable disk was requested on a file opened read-only.
    #[error("the disk image is open read-only but the disk is writable")]
    NotWritable,
    /// Guest memory could not be accessed for the transfer.
    #[error("guest memory access failed: {0}")]
    GuestMemory(#[source] vm_memory::GuestMemoryError),
    /// The image read or write failed.
    #[error("disk image I/O failed: {0}")]
    Io(#[source] io::Error),
}

/// A raw disk image file.
#[derive(Debug)]
pub struct DiskImage {
    file: File,
    sectors: u64,
    read_only: bool,
}

impl DiskImage {
    /// Wraps `file`; its size, rounded down to whole sectors, is the disk
    /// capacity. A writable disk needs a file opened for writing.
    pub fn new(file: File, read_only: bool) -> Result<Self, DiskError> {
        let len = file.metadata().map_err(DiskError::Metadata)?.len();
        if !len.is_multiple_of(SECTOR_SIZE) {
            tracing::warn!(
                len,
                "virtio-blk: disk image size is not a multiple of 512; the last partial sector is not visible"
            );
        }
        if !read_only && !is_writable(&file)? {
            return Err(DiskError::NotWritable);
        }
        Ok(Self {
            file,
            sectors: len / SECTOR_SIZE,
            read_only,
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Whether the guest may only read.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The image file (for its metadata).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Reads the image from byte `offset` into `segments`, in order. Returns
    /// how many bytes reached guest memory (whole segments only) and the
    /// first error, if any.
    pub fn read_to_guest(
        &self,
        mem: &GuestMemoryMmap,
        offset: u64,
        segments: &[Segment],
    ) -> (u64, Result<(), DiskError>) {
        let mut at = FileAt {
            file: &self.file,
            offset,
        };
        let mut done = 0;
        for segment in segments {
            let result = for_each_slice(mem, segment, Permissions::Write, |slice| {
                at.read_exact_volatile(slice)
            });
            if let Err(err) = result {
                return (done, Err(err));
            }
            done += u64::from(segment.len);
        }
        (done, Ok(()))
    }

    /// Writes `segments`, in order, to the image from byte `offset`.
    pub fn write_from_guest(
        &self,
        mem: &GuestMemoryMmap,
        offset: u64,
        segments: &[Segment],
    ) -> Result<(), DiskError> {
        let mut at = FileAt {
            file: &self.file,
            offset,
        };
        for segment in segments {
            for_each_slice(mem, segment, Permissions::Read, |slice| {
                at.write_all_volatile(slice)
            })?;
        }
        Ok(())
    }

    /// Makes every completed write durable (fdatasync).
    pub fn flush(&self) -> Result<(), DiskError> {
        self.file.sync_data().map_err(DiskError::Io)
    }
}

/// Whether `file` was opened for writing.
fn is_writable(file: &File) -> Result<bool, DiskError> {
    // SAFETY: F_GETFL on a file descriptor owned by `file` only reads its
    // status flags; no memory is passed.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(DiskError::OpenMode(io::Error::last_os_error()));
    }
    Ok(flags & libc::O_ACCMODE != libc::O_RDONLY)
}

/// Runs `transfer` on each host slice of `segment` (a segment may span
/// guest memory regions).
fn for_each_slice(
    mem: &GuestMemoryMmap,
    segment: &Segment,
    access: Permissions,
    mut transfer: impl FnMut(&mut VolatileSlice<'_, ()>) -> Result<(), VolatileMemoryError>,
) -> Result<(), DiskError> {
    // u32 fits in usize on supported hosts.
    let slices = mem
        .get_slices(segment.addr, segment.len as usize, access)
        .map_err(DiskError::GuestMemory)?;
    for slice in slices {
        let mut slice = slice.map_err(DiskError::GuestMemory)?;
        transfer(&mut slice).map_err(|err| match err {
            VolatileMemoryError::IOError(io) => DiskError::Io(io),
            other => DiskError::Io(io::Error::other(other)),
        })?;
    }
    Ok(())
}

/// The image file seen as a stream starting at `offset`, read and written
/// with pread/pwrite so the file position is never shared state.
struct FileAt<'a> {
    file: &'a File,
    offset: u64,
}

impl FileAt<'_> {
    fn offset(&self) -> Result<libc::off_t, VolatileMemoryError> {
        libc::off_t::try_from(self.offset).map_err(|_| {
            VolatileMemoryError::IOError(io::Error::new(
                io::ErrorKind::InvalidInput,
                "disk offset does not fit in off_t",
            ))
        })
    }
}

impl ReadVolatile for FileAt<'_> {
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let offset = self.offset()?;
        let guard = buf.ptr_guard_mut();
        // SAFETY: the guard keeps `buf.len()` bytes of mapped guest memory
        // valid at `guard.as_ptr()` while it lives, and pread(2) writes at
        // most that many bytes there. The file descriptor is owned by
        // `self.file`.
        let n = unsafe {
            libc::pread(
                self.file.as_raw_fd(),
                guard.as_ptr().cast(),
                buf.len(),
                offset,
            )
        };
        let n = usize::try_from(n)
            .map_err(|_| VolatileMemoryError::IOError(io::Error::last_os_error()))?;
        buf.bitmap().mark_dirty(0, n);
        self.offset += n as u64;
        Ok(n)
    }
}

impl WriteVolatile for FileAt<'_> {
    fn write_volatile<B: BitmapSlice>(
        &mut self,
        buf: &VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let offset = self.offset()?;
        let guard = buf.ptr_guard();
        // SAFETY: the guard keeps `buf.len()` bytes of mapped guest memory
        // valid at `guard.as_ptr()` while it lives, and pwrite(2) only reads
        // that many bytes from there. The file descriptor is owned by
        // `self.file`.
        let n = unsafe {
            libc::pwrite(
                self.file.as_raw_fd(),
                guard.as_ptr().cast(),
                buf.len(),
                offset,
            )
        };
        let n = usize::try_from(n)
            .map_err(|_| VolatileMemoryError::IOError(io::Error::last_os_error()))?;
        self.offset += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::virtio::test_utils::TempImage;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn capacity_and_open_mode() {
        let image = TempImage::new(&vec![0u8; 4096 + 100]);
        let disk = DiskImage::new(image.open(true), false).unwrap();
        assert_eq!(disk.sectors(), 8);
        assert!(!disk.read_only());
        assert!(matches!(
            DiskImage::new(image.open(false), false),
            Err(DiskError::NotWritable)
        ));
        assert!(DiskImage::new(image.open(false), true).unwrap().read_only());
    }

    #[test]
    fn transfers_span_guest_memory_regions() {
        // Two adjacent regions; the segment straddles the boundary.
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x10000),
            (GuestAddress(0x10000), 0x10000),
        ])
        .unwrap();
        let image = TempImage::new(&pattern(8192));
        let disk = DiskImage::new(image.open(true), false).unwrap();
        let segments = [
            Segment {
                addr: GuestAddress(0xff00),
                len: 1024,
            },
            Segment {
                addr: GuestAddress(0x4000),
                len: 512,
            },
        ];

        let (done, result) = disk.read_to_guest(&mem, 512, &segments);
        result.unwrap();
        assert_eq!(done, 1536);
        let mut got = vec![0u8; 1024];
        mem.read_slice(&mut got, GuestAddress(0xff00)).unwrap();
        assert_eq!(got, pattern(8192)[512..1536]);

        mem.write_slice(&[0xab; 1024], GuestAddress(0xff00))
            .unwrap();
        disk.write_from_guest(&mem, 4096, &segments[..1]).unwrap();
        disk.flush().unwrap();
        assert_eq!(image.contents()[4096..5120], [0xab; 1024]);
        assert_eq!(image.contents()[..4096], pattern(8192)[..4096]);
    }

    #[test]
    fn reading_past_the_end_of_the_file_fails() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let image = TempImage::new(&pattern(1024));
        let disk = DiskImage::new(image.open(false), true).unwrap();
        let segments = [
            Segment {
                addr: GuestAddress(0x1000),
                len: 512,
            },
            Segment {
                addr: GuestAddress(0x2000),
                len: 1024,
            },
        ];
        let (done, result) = disk.read_to_guest(&mem, 0, &segments);
        assert_eq!(done, 512);
        assert!(matches!(result, Err(DiskError::Io(_))));
    }
}

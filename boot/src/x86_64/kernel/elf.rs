//! ELF `vmlinux` images.
//!
//! The headers are validated here (64-bit little-endian x86-64, program
//! headers and segments inside the file, loadable segments inside guest
//! memory), then `linux_loader::loader::Elf` copies the segments to their
//! physical addresses and looks for the Xen PVH entry note.

use std::fs::File;
use std::os::unix::fs::FileExt;

use linux_loader::loader::{Elf, KernelLoader, PvhBootCapability};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::{check_in_file, check_range, le_u16, le_u32, le_u64, KernelError, LoadedKernel};
use super::{BootProtocol, CMDLINE_MAX_SIZE};
use crate::x86_64::layout::HIMEM_START;

/// `\x7fELF`.
const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
const EHDR_LEN: usize = 64;
const PHDR_LEN: usize = 56;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;

/// Whether the file starts with the ELF magic.
pub(super) fn is_elf(head: &[u8]) -> bool {
    head.starts_with(&ELF_MAGIC)
}

/// The program header fields this loader looks at.
struct ProgramHeader {
    kind: u32,
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

impl ProgramHeader {
    fn parse(b: &[u8; PHDR_LEN]) -> Self {
        ProgramHeader {
            kind: le_u32(b, 0),
            offset: le_u64(b, 8),
            paddr: le_u64(b, 24),
            filesz: le_u64(b, 32),
            memsz: le_u64(b, 40),
        }
    }
}

/// Validates and loads an ELF kernel.
pub(super) fn load<M: GuestMemoryBackend>(
    mem: &M,
    kernel: &mut File,
    file_size: u64,
) -> Result<LoadedKernel, KernelError> {
    check_in_file("ELF header", 0, EHDR_LEN as u64, file_size)?;
    let mut ehdr = [0u8; EHDR_LEN];
    kernel
        .read_exact_at(&mut ehdr, 0)
        .map_err(KernelError::Io)?;

    if ehdr[4] != ELFCLASS64 {
        return Err(KernelError::UnsupportedElf(format!(
            "ELF class {} is not ELFCLASS64",
            ehdr[4]
        )));
    }
    if ehdr[5] != ELFDATA2LSB {
        return Err(KernelError::UnsupportedElf(format!(
            "data encoding {} is not little-endian",
            ehdr[5]
        )));
    }
    let machine = le_u16(&ehdr, 18);
    if machine != EM_X86_64 {
        return Err(KernelError::UnsupportedElf(format!(
            "machine {machine} is not x86-64 ({EM_X86_64})"
        )));
    }
    let entry = le_u64(&ehdr, 24);
    let phoff = le_u64(&ehdr, 32);
    let phentsize = le_u16(&ehdr, 54);
    let phnum = le_u16(&ehdr, 56);
    if usize::from(phentsize) != PHDR_LEN {
        return Err(KernelError::UnsupportedElf(format!(
            "program header entry size {phentsize} is not {PHDR_LEN}"
        )));
    }
    if entry < HIMEM_START {
        return Err(KernelError::UnsupportedElf(format!(
            "entry point {entry:#x} is below high memory ({HIMEM_START:#x})"
        )));
    }
    check_in_file(
        "program header table",
        phoff,
        u64::from(phnum) * PHDR_LEN as u64,
        file_size,
    )?;

    let mut loadable = 0;
    for i in 0..u64::from(phnum) {
        let mut raw = [0u8; PHDR_LEN];
        kernel
            .read_exact_at(&mut raw, phoff + i * PHDR_LEN as u64)
            .map_err(KernelError::Io)?;
        let ph = ProgramHeader::parse(&raw);
        match ph.kind {
            PT_LOAD if ph.filesz != 0 => {
                check_in_file("PT_LOAD segment", ph.offset, ph.filesz, file_size)?;
                if ph.memsz < ph.filesz {
                    return Err(KernelError::UnsupportedElf(format!(
                        "segment at {:#x} has a memory size {:#x} smaller than its file size {:#x}",
                        ph.paddr, ph.memsz, ph.filesz
                    )));
                }
                check_range(mem, "PT_LOAD segment", ph.paddr, ph.memsz)?;
                loadable += 1;
            }
            PT_NOTE => check_in_file("PT_NOTE segment", ph.offset, ph.filesz, file_size)?,
            _ => {}
        }
    }
    if loadable == 0 {
        return Err(KernelError::UnsupportedElf(
            "no loadable segment".to_string(),
        ));
    }

    let result =
        Elf::load(mem, None, kernel, Some(GuestAddress(HIMEM_START))).map_err(|source| {
            KernelError::Load {
                format: "ELF",
                source,
            }
        })?;

    let (entry, protocol) = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(pvh_entry) => (pvh_entry, BootProtocol::Pvh),
        PvhBootCapability::PvhEntryNotPresent | PvhBootCapability::PvhEntryIgnored => {
            (result.kernel_load, BootProtocol::Linux64)
        }
    };
    Ok(LoadedKernel {
        entry,
        protocol,
        kernel_end: GuestAddress(result.kernel_end),
        setup_header: None,
        cmdline_max: CMDLINE_MAX_SIZE,
    })
}

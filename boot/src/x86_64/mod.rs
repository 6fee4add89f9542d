//! x86_64 guest boot.
//!
//! The VMM calls, in order: [`load_kernel`], [`load_initrd`] (optional),
//! [`configure_system`] (command line, MP table, ACPI tables, zero page or
//! PVH start info), [`setup_page_tables`] and [`setup_gdt_idt`], then sets
//! the boot vCPU's registers from [`boot_regs`] and [`boot_sregs`].

pub mod acpi;
pub mod gdt;
pub mod initrd;
pub mod kernel;
pub mod layout;
pub mod memmap;
pub mod mptable;
pub mod paging;
pub mod pvh;
pub mod regs;
pub mod zero_page;

use std::ffi::CStr;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

pub use acpi::VirtioMmioSlot;
pub use gdt::setup_gdt_idt;
pub use initrd::{load_initrd, load_initrd_below, InitrdError, InitrdRegion};
pub use kernel::{load_kernel, BootProtocol, KernelError, LoadedKernel};
pub use paging::setup_page_tables;
pub use regs::{boot_regs, boot_sregs};

use acpi::AcpiError;
use layout::CMDLINE_START;
use memmap::{MemoryKind, MemoryMapError, MemoryRange};
use mptable::MptableError;

/// What [`configure_system`] needs to know about the guest.
#[derive(Clone, Copy, Debug)]
pub struct SystemConfig<'a> {
    /// The loaded kernel.
    pub kernel: &'a LoadedKernel,
    /// Kernel command line.
    pub cmdline: &'a CStr,
    /// The loaded initrd, if any.
    pub initrd: Option<InitrdRegion>,
    /// Number of vCPUs (APIC ids 0..num_cpus).
    pub num_cpus: u8,
    /// virtio-mmio slots to describe in the DSDT.
    pub virtio_mmio: &'a [acpi::VirtioMmioSlot],
}

/// Errors writing the boot structures.
#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    /// The command line does not fit.
    #[error("kernel command line too long: {len} bytes with the terminating NUL, at most {max}")]
    CmdlineTooLong {
        /// Length including the NUL.
        len: usize,
        /// Largest accepted length including the NUL.
        max: usize,
    },
    /// The MP table cannot be built.
    #[error(transparent)]
    Mptable(#[from] MptableError),
    /// The ACPI tables cannot be built.
    #[error(transparent)]
    Acpi(#[from] AcpiError),
    /// The guest RAM layout is unusable.
    #[error(transparent)]
    MemoryMap(#[from] MemoryMapError),
    /// More memory map entries than the boot protocol can carry.
    #[error("{count} memory map entries, the boot protocol carries at most {max}")]
    TooManyMemoryRanges {
        /// Entries needed.
        count: usize,
        /// Entries possible.
        max: usize,
    },
    /// The initrd is not inside guest RAM.
    #[error("the initrd at {addr:#x} ({size:#x} bytes) is not inside guest RAM")]
    InitrdOutsideRam {
        /// Initrd address.
        addr: u64,
        /// Initrd size.
        size: u64,
    },
    /// Writing a structure to guest memory failed.
    #[error("cannot write the {what} to guest address {addr:#x}: {source}")]
    GuestWrite {
        /// The structure.
        what: &'static str,
        /// Where it was going.
        addr: u64,
        /// The memory error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

impl SystemError {
    pub(crate) fn write(
        what: &'static str,
        addr: GuestAddress,
        source: vm_memory::GuestMemoryError,
    ) -> Self {
        SystemError::GuestWrite {
            what,
            addr: addr.0,
            source,
        }
    }
}

/// Writes the command line, the MP table, the ACPI tables and the boot
/// information for the kernel's protocol (zero page or PVH start info).
pub fn configure_system<M: GuestMemoryBackend>(
    mem: &M,
    cfg: &SystemConfig,
) -> Result<(), SystemError> {
    let ram: Vec<(u64, u64)> = mem.iter().map(|r| (r.start_addr().0, r.len())).collect();
    let map = memmap::memory_map(&ram)?;
    if let Some(initrd) = cfg.initrd {
        check_initrd_in_ram(&map, initrd)?;
    }

    let cmdline_len = write_cmdline(mem, cfg.cmdline, cfg.kernel.cmdline_max)?;
    mptable::setup_mptable(mem, cfg.num_cpus)?;
    acpi::setup_acpi(mem, cfg.num_cpus, cfg.virtio_mmio)?;

    match cfg.kernel.protocol {
        BootProtocol::Linux64 => {
            let params = zero_page::build_boot_params(cfg.kernel, cmdline_len, cfg.initrd, &map)?;
            zero_page::write_boot_params(mem, &params)
        }
        BootProtocol::Pvh => {
            let info = pvh::build_pvh_info(&map, cfg.initrd)?;
            pvh::write_pvh_info(mem, &info)
        }
    }
}

/// Writes the NUL-terminated command line at [`CMDLINE_START`] and returns
/// its length including the NUL.
fn write_cmdline<M: GuestMemoryBackend>(
    mem: &M,
    cmdline: &CStr,
    max: usize,
) -> Result<usize, SystemError> {
    let bytes = cmdline.to_bytes_with_nul();
    let max = max.min(layout::CMDLINE_MAX_SIZE);
    if bytes.len() > max {
        return Err(SystemError::CmdlineTooLong {
            len: bytes.len(),
            max,
        });
    }
    let addr = GuestAddress(CMDLINE_START);
    mem.write_slice(bytes, addr)
        .map_err(|source| SystemError::write("command line", addr, source))?;
    Ok(bytes.len())
}

fn check_initrd_in_ram(map: &[MemoryRange], initrd: InitrdRegion) -> Result<(), SystemError> {
    let (addr, size) = (initrd.addr.0, initrd.size as u64);
    let inside = addr.checked_add(size).is_some_and(|end| {
        map.iter()
            .any(|r| r.kind == MemoryKind::Ram && r.start <= addr && end <= r.end())
    });
    if inside {
        Ok(())
    } else {
        Err(SystemError::InitrdOutsideRam { addr, size })
    }
}

#[cfg(test)]
pub(crate) mod tests;

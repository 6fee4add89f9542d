//! Shared test helpers and end-to-end tests of [`configure_system`].

use std::ffi::CString;
use std::fs::File;
use std::io::Write;

use linux_loader::loader::bootparam::{boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::*;
use super::memmap::tests::{check_invariants, map_for};
use super::memmap::{MemoryKind, MemoryRange};
use super::*;

/// Guest memory of `size` bytes from address 0.
pub(crate) fn test_memory(size: u64) -> GuestMemoryMmap<()> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap()
}

/// An unlinked temporary file holding `data`, positioned at its start.
pub(crate) fn temp_file_with(data: &[u8]) -> File {
    let mut file = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
    file.write_all(data).unwrap();
    file
}

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn elf_kernel(protocol: BootProtocol) -> LoadedKernel {
    LoadedKernel {
        entry: GuestAddress(0x100_0000),
        protocol,
        kernel_end: GuestAddress(0x180_0000),
        setup_header: None,
        cmdline_max: CMDLINE_MAX_SIZE,
    }
}

fn read_cmdline(mem: &GuestMemoryMmap<()>, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    mem.read_slice(&mut buf, GuestAddress(CMDLINE_START))
        .unwrap();
    buf
}

fn e820_of(params: &boot_params) -> Vec<MemoryRange> {
    params.e820_table[..usize::from(params.e820_entries)]
        .iter()
        .map(|e| MemoryRange {
            start: e.addr,
            size: e.size,
            kind: if e.r#type == 1 {
                MemoryKind::Ram
            } else {
                assert_eq!({ e.r#type }, 2);
                MemoryKind::Reserved
            },
        })
        .collect()
}

#[test]
fn linux64_zero_page_128_mib() {
    let mem = test_memory(128 * MIB);
    let kernel = elf_kernel(BootProtocol::Linux64);
    let cmdline = CString::new("console=ttyS0 reboot=k panic=1").unwrap();
    let initrd = InitrdRegion {
        addr: GuestAddress(0x7f0_0000),
        size: 0x1234,
    };
    configure_system(
        &mem,
        &SystemConfig {
            kernel: &kernel,
            cmdline: &cmdline,
            initrd: Some(initrd),
            num_cpus: 2,
            virtio_mmio: &[],
        },
    )
    .unwrap();

    let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
    assert_eq!({ params.hdr.boot_flag }, 0xaa55);
    assert_eq!({ params.hdr.header }, 0x5372_6448);
    assert_eq!(params.hdr.type_of_loader, 0xff);
    assert_eq!({ params.hdr.cmd_line_ptr }, 0x20000);
    assert_eq!(
        { params.hdr.cmdline_size } as usize,
        cmdline.as_bytes_with_nul().len()
    );
    assert_eq!({ params.hdr.ramdisk_image }, 0x7f0_0000);
    assert_eq!({ params.hdr.ramdisk_size }, 0x1234);
    assert_eq!({ params.ext_ramdisk_image }, 0);
    assert_eq!({ params.acpi_rsdp_addr }, RSDP_START);

    let e820 = e820_of(&params);
    assert_eq!(e820, map_for(128 * MIB));
    check_invariants(&e820, 128 * MIB);

    assert_eq!(
        read_cmdline(&mem, cmdline.as_bytes_with_nul().len()),
        cmdline.as_bytes_with_nul()
    );
    let mut sig = [0u8; 4];
    mem.read_slice(&mut sig, GuestAddress(MPTABLE_START))
        .unwrap();
    assert_eq!(&sig, b"_MP_");
    let mut rsdp = [0u8; 8];
    mem.read_slice(&mut rsdp, GuestAddress(RSDP_START)).unwrap();
    assert_eq!(&rsdp, b"RSD PTR ");
}

#[test]
fn e820_for_every_memory_size() {
    let kernel = elf_kernel(BootProtocol::Linux64);
    for mem_bytes in [128 * MIB, 3 * GIB, 3 * GIB + MIB, 8 * GIB] {
        let map = map_for(mem_bytes);
        // The initrd as load_initrd places it: at the top of the low region.
        let low_top = mem_bytes.min(MMIO_HOLE_START);
        let initrd = InitrdRegion {
            addr: GuestAddress(low_top - 0x10_0000),
            size: 0x10_0000,
        };
        check_initrd_in_ram(&map, initrd).unwrap();
        let params = zero_page::build_boot_params(&kernel, 10, Some(initrd), &map).unwrap();

        let e820 = e820_of(&params);
        assert_eq!(e820, map, "{mem_bytes:#x}");
        check_invariants(&e820, mem_bytes);
        assert!(e820.iter().any(|r| r.kind == MemoryKind::Ram
            && r.start <= initrd.addr.0
            && initrd.addr.0 + initrd.size as u64 <= r.end()));
        let high_ram: u64 = e820
            .iter()
            .filter(|r| r.start >= MMIO_HOLE_END)
            .map(|r| r.size)
            .sum();
        assert_eq!(
            high_ram,
            mem_bytes.saturating_sub(MMIO_HOLE_START),
            "{mem_bytes:#x}"
        );
    }
}

#[test]
fn bzimage_header_is_kept_and_completed() {
    let mem = test_memory(64 * MIB);
    let header = setup_header {
        setup_sects: 27,
        boot_flag: 0xaa55,
        header: 0x5372_6448,
        version: 0x020f,
        loadflags: 0x1,
        code32_start: 0x10_0000,
        initrd_addr_max: 0x7fff_ffff,
        kernel_alignment: 0x20_0000,
        cmdline_size: 2047,
        ..setup_header::default()
    };
    let kernel = LoadedKernel {
        setup_header: Some(header),
        cmdline_max: 2048,
        ..elf_kernel(BootProtocol::Linux64)
    };
    let cmdline = CString::new("quiet").unwrap();
    configure_system(
        &mem,
        &SystemConfig {
            kernel: &kernel,
            cmdline: &cmdline,
            initrd: None,
            num_cpus: 1,
            virtio_mmio: &[],
        },
    )
    .unwrap();
    let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
    assert_eq!({ params.hdr.version }, 0x020f);
    assert_eq!(params.hdr.setup_sects, 27);
    assert_eq!({ params.hdr.kernel_alignment }, 0x20_0000);
    assert_eq!(params.hdr.type_of_loader, 0xff);
    assert_eq!({ params.hdr.cmd_line_ptr }, 0x20000);
    assert_eq!({ params.hdr.ramdisk_image }, 0);
    assert_eq!({ params.hdr.ramdisk_size }, 0);
}

fn read_start_info(mem: &GuestMemoryMmap<()>) -> (hvm_start_info, Vec<hvm_memmap_table_entry>) {
    let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
    let memmap = (0..u64::from(info.memmap_entries))
        .map(|i| {
            mem.read_obj(GuestAddress(
                info.memmap_paddr + i * std::mem::size_of::<hvm_memmap_table_entry>() as u64,
            ))
            .unwrap()
        })
        .collect();
    (info, memmap)
}

#[test]
fn pvh_start_info_and_memmap() {
    let mem = test_memory(128 * MIB);
    let kernel = elf_kernel(BootProtocol::Pvh);
    let cmdline = CString::new("console=hvc0").unwrap();
    let initrd = InitrdRegion {
        addr: GuestAddress(0x0700_0000),
        size: 0x2000,
    };
    configure_system(
        &mem,
        &SystemConfig {
            kernel: &kernel,
            cmdline: &cmdline,
            initrd: Some(initrd),
            num_cpus: 4,
            virtio_mmio: &[],
        },
    )
    .unwrap();

    let (info, memmap) = read_start_info(&mem);
    assert_eq!(info.magic, 0x336e_c578);
    assert_eq!(info.version, 1);
    assert_eq!(info.cmdline_paddr, CMDLINE_START);
    assert_eq!(info.rsdp_paddr, RSDP_START);
    assert_eq!(
        info.memmap_paddr,
        PVH_INFO_START + std::mem::size_of::<hvm_start_info>() as u64
    );
    let expected = map_for(128 * MIB);
    assert_eq!(memmap.len(), expected.len());
    for (entry, range) in memmap.iter().zip(&expected) {
        assert_eq!(
            (entry.addr, entry.size, entry.type_),
            (range.start, range.size, range.kind.e820_type())
        );
    }

    assert_eq!(info.nr_modules, 1);
    let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
    assert_eq!((module.paddr, module.size), (0x0700_0000, 0x2000));
    // The module list follows the memory map, and everything ends below the zero page.
    assert!(info.modlist_paddr >= info.memmap_paddr + 24 * memmap.len() as u64);
    assert!(info.modlist_paddr + 32 <= ZERO_PAGE_START);

    assert_eq!(read_cmdline(&mem, 13), b"console=hvc0\0");
}

#[test]
fn pvh_without_initrd_has_no_modules() {
    let mem = test_memory(64 * MIB);
    let kernel = elf_kernel(BootProtocol::Pvh);
    let cmdline = CString::new("").unwrap();
    configure_system(
        &mem,
        &SystemConfig {
            kernel: &kernel,
            cmdline: &cmdline,
            initrd: None,
            num_cpus: 1,
            virtio_mmio: &[],
        },
    )
    .unwrap();
    let (info, memmap) = read_start_info(&mem);
    assert_eq!((info.nr_modules, info.modlist_paddr), (0, 0));
    assert_eq!(memmap.len(), 3);
}

#[test]
fn pvh_info_for_large_memory() {
    for mem_bytes in [3 * GIB, 3 * GIB + MIB, 8 * GIB] {
        let map = map_for(mem_bytes);
        let info = pvh::build_pvh_info(&map, None).unwrap();
        assert_eq!(info.start_info.memmap_entries as usize, map.len());
        let ram_above_4g: u64 = info
            .memmap
            .iter()
            .filter(|e| e.addr >= MMIO_HOLE_END && e.type_ == 1)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram_above_4g, mem_bytes.saturating_sub(MMIO_HOLE_START));
        assert!(info
            .memmap
            .iter()
            .all(|e| e.addr + e.size <= MMIO_HOLE_START || e.addr >= MMIO_HOLE_END));
    }
}

#[test]
fn cmdline_too_long_is_an_error() {
    let mem = test_memory(64 * MIB);
    let short_kernel = LoadedKernel {
        cmdline_max: 16,
        ..elf_kernel(BootProtocol::Linux64)
    };
    let cmdline = CString::new("0123456789abcdef").unwrap(); // 17 bytes with the NUL
    let err = configure_system(
        &mem,
        &SystemConfig {
            kernel: &short_kernel,
            cmdline: &cmdline,
            initrd: None,
            num_cpus: 1,
            virtio_mmio: &[],
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, SystemError::CmdlineTooLong { len: 17, max: 16 }),
        "{err}"
    );

    // One byte shorter fits exactly.
    let cmdline = CString::new("0123456789abcde").unwrap();
    configure_system(
        &mem,
        &SystemConfig {
            kernel: &short_kernel,
            cmdline: &cmdline,
            initrd: None,
            num_cpus: 1,
            virtio_mmio: &[],
        },
    )
    .unwrap();

    let kernel = elf_kernel(BootProtocol::Linux64);
    let long = CString::new("x".repeat(CMDLINE_MAX_SIZE)).unwrap();
    let err = configure_system(
        &mem,
        &SystemConfig {
            kernel: &kernel,
            cmdline: &long,
            initrd: None,
            num_cpus: 1,
            virtio_mmio: &[],
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            SystemError::CmdlineTooLong {
                len: 4097,
                max: 4096
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "kernel command line too long: 4097 bytes with the terminating NUL, at most 4096"
    );
}

#[test]
fn initrd_outside_ram_is_an_error() {
    let mem = test_memory(64 * MIB);
    let kernel = elf_kernel(BootProtocol::Linux64);
    let cmdline = CString::new("").unwrap();
    let initrd = InitrdRegion {
        addr: GuestAddress(63 * MIB),
        size: (2 * MIB) as usize,
    };
    let err = configure_system(
        &mem,
        &SystemConfig {
            kernel: &kernel,
            cmdline: &cmdline,
            initrd: Some(initrd),
            num_cpus: 1,
            virtio_mmio: &[],
        },
    )
    .unwrap_err();
    assert!(matches!(err, SystemError::InitrdOutsideRam { .. }), "{err}");
}

#[test]
fn cpu_count_is_validated() {
    let mem = test_memory(64 * MIB);
    let kernel = elf_kernel(BootProtocol::Linux64);
    let cmdline = CString::new("").unwrap();
    for num_cpus in [0u8, 38] {
        let err = configure_system(
            &mem,
            &SystemConfig {
                kernel: &kernel,
                cmdline: &cmdline,
                initrd: None,
                num_cpus,
                virtio_mmio: &[],
            },
        )
        .unwrap_err();
        assert!(matches!(err, SystemError::Mptable(_)), "{err}");
    }
}

#[test]
fn full_boot_sequence_on_small_memory() {
    // The order vmm-core uses, all on one 64 MiB guest.
    let mem = test_memory(64 * MIB);
    let kernel = elf_kernel(BootProtocol::Linux64);
    let cmdline = CString::new("console=ttyS0").unwrap();
    configure_system(
        &mem,
        &SystemConfig {
            kernel: &kernel,
            cmdline: &cmdline,
            initrd: None,
            num_cpus: 1,
            virtio_mmio: &[],
        },
    )
    .unwrap();
    let cr3 = setup_page_tables(&mem).unwrap();
    setup_gdt_idt(&mem, kernel.protocol).unwrap();
    // Nothing written later clobbered what was written first.
    let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
    assert_eq!({ params.hdr.cmd_line_ptr }, 0x20000);
    assert_eq!(read_cmdline(&mem, 14), b"console=ttyS0\0");
    assert_eq!(
        paging::translate(&mem, cr3, ZERO_PAGE_START),
        Some(ZERO_PAGE_START)
    );
}

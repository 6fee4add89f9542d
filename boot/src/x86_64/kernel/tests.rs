//! Kernel loading tests on hand-built images.

use linux_loader::loader::bootparam::setup_header;
use vm_memory::{ByteValued, Bytes, GuestAddress};

use super::*;
use crate::x86_64::tests::{temp_file_with, test_memory};

const MIB: u64 = 1 << 20;
const LOAD_ADDR: u64 = 0x100_0000;
const ELF_ENTRY: u64 = LOAD_ADDR + 0x10;
const PVH_ENTRY: u64 = LOAD_ADDR + 0x100;

/// A note: header (namesz, descsz, type), name and descriptor, each padded to 4 bytes.
fn note(name: &[u8], note_type: u32, desc: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(name.len() as u32).to_le_bytes());
    out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    out.extend_from_slice(&note_type.to_le_bytes());
    for part in [name, desc] {
        out.extend_from_slice(part);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    out
}

/// The Xen PVH entry note: name "Xen", type 18 (XEN_ELFNOTE_PHYS32_ENTRY), 4-byte entry.
pub(crate) fn pvh_note(entry: u32) -> Vec<u8> {
    note(b"Xen\0", 18, &entry.to_le_bytes())
}

/// A minimal ELF64 x86-64 executable: header, program headers, one
/// PT_LOAD of `code` at [`LOAD_ADDR`] (memsz = filesz + 0x1000 of bss) and
/// optionally one PT_NOTE holding `notes`.
pub(crate) fn build_elf(code: &[u8], notes: Option<&[u8]>) -> Vec<u8> {
    let phnum: u16 = if notes.is_some() { 2 } else { 1 };
    let code_offset = 64 + 56 * u64::from(phnum);
    let note_offset = code_offset + code.len() as u64;

    let mut elf = vec![0u8; 64];
    elf[..8].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    elf[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    elf[20..24].copy_from_slice(&1u32.to_le_bytes());
    elf[24..32].copy_from_slice(&ELF_ENTRY.to_le_bytes());
    elf[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    elf[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    elf[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    elf[56..58].copy_from_slice(&phnum.to_le_bytes());

    let phdr = |kind: u32, offset: u64, paddr: u64, filesz: u64, memsz: u64| {
        let mut p = vec![0u8; 56];
        p[0..4].copy_from_slice(&kind.to_le_bytes());
        p[4..8].copy_from_slice(&5u32.to_le_bytes()); // R+X
        p[8..16].copy_from_slice(&offset.to_le_bytes());
        p[16..24].copy_from_slice(&paddr.to_le_bytes());
        p[24..32].copy_from_slice(&paddr.to_le_bytes());
        p[32..40].copy_from_slice(&filesz.to_le_bytes());
        p[40..48].copy_from_slice(&memsz.to_le_bytes());
        p[48..56].copy_from_slice(&4u64.to_le_bytes());
        p
    };
    let code_len = code.len() as u64;
    elf.extend(phdr(1, code_offset, LOAD_ADDR, code_len, code_len + 0x1000));
    if let Some(notes) = notes {
        elf.extend(phdr(
            4,
            note_offset,
            0,
            notes.len() as u64,
            notes.len() as u64,
        ));
    }
    elf.extend_from_slice(code);
    if let Some(notes) = notes {
        elf.extend_from_slice(notes);
    }
    elf
}

/// A minimal bzImage: boot sector + 4 setup sectors with a 2.15 header,
/// followed by `payload` as the protected-mode kernel.
pub(crate) fn build_bzimage(payload: &[u8], tweak: impl FnOnce(&mut setup_header)) -> Vec<u8> {
    let mut header = setup_header {
        setup_sects: 4,
        boot_flag: 0xaa55,
        header: 0x5372_6448,
        version: 0x020f,
        loadflags: 0x1,
        code32_start: 0x10_0000,
        initrd_addr_max: 0x7fff_ffff,
        kernel_alignment: 0x20_0000,
        relocatable_kernel: 1,
        xloadflags: 0x1,
        cmdline_size: 2047,
        init_size: 0x4_0000,
        ..setup_header::default()
    };
    header.syssize = payload.len().div_ceil(16) as u32;
    tweak(&mut header);
    let mut image = vec![0u8; 5 * 512];
    image[0x1f1..0x1f1 + std::mem::size_of::<setup_header>()].copy_from_slice(header.as_slice());
    image.extend_from_slice(payload);
    image
}

fn code() -> Vec<u8> {
    (0..0x300u32).map(|i| (i * 7 % 256) as u8).collect()
}

fn load(bytes: &[u8]) -> Result<LoadedKernel, KernelError> {
    let mem = test_memory(64 * MIB);
    load_kernel(&mem, &mut temp_file_with(bytes))
}

#[test]
fn elf_without_pvh_note_boots_linux64_at_the_elf_entry() {
    let mem = test_memory(64 * MIB);
    let code = code();
    let kernel = load_kernel(&mem, &mut temp_file_with(&build_elf(&code, None))).unwrap();
    assert_eq!(kernel.protocol, BootProtocol::Linux64);
    assert_eq!(kernel.entry, GuestAddress(ELF_ENTRY));
    assert_eq!(
        kernel.kernel_end,
        GuestAddress(LOAD_ADDR + code.len() as u64 + 0x1000)
    );
    assert!(kernel.setup_header.is_none());
    assert_eq!(kernel.cmdline_max, CMDLINE_MAX_SIZE);
    let mut back = vec![0u8; code.len()];
    mem.read_slice(&mut back, GuestAddress(LOAD_ADDR)).unwrap();
    assert_eq!(back, code);
}

#[test]
fn elf_with_pvh_note_boots_pvh() {
    let notes = pvh_note(PVH_ENTRY as u32);
    let kernel = load(&build_elf(&code(), Some(&notes))).unwrap();
    assert_eq!(kernel.protocol, BootProtocol::Pvh);
    assert_eq!(kernel.entry, GuestAddress(PVH_ENTRY));
}

#[test]
fn pvh_note_is_found_after_other_notes() {
    let mut notes = note(b"GNU\0", 3, &[0xab; 20]);
    notes.extend(note(b"Xen\0", 6, b"linux\0")); // another Xen note (XEN_ELFNOTE_GUEST_OS)
    notes.extend(pvh_note(PVH_ENTRY as u32));
    let kernel = load(&build_elf(&code(), Some(&notes))).unwrap();
    assert_eq!(
        (kernel.protocol, kernel.entry),
        (BootProtocol::Pvh, GuestAddress(PVH_ENTRY))
    );
}

#[test]
fn elf_with_unrelated_notes_boots_linux64() {
    let notes = note(b"GNU\0", 3, &[0xab; 20]);
    let kernel = load(&build_elf(&code(), Some(&notes))).unwrap();
    assert_eq!(
        (kernel.protocol, kernel.entry),
        (BootProtocol::Linux64, GuestAddress(ELF_ENTRY))
    );
}

#[test]
fn bzimage_boots_linux64_at_load_plus_0x200() {
    let mem = test_memory(64 * MIB);
    let payload = vec![0x90u8; 0x1000];
    let image = build_bzimage(&payload, |_| {});
    let kernel = load_kernel(&mem, &mut temp_file_with(&image)).unwrap();
    assert_eq!(kernel.protocol, BootProtocol::Linux64);
    assert_eq!(kernel.entry, GuestAddress(0x10_0200));
    // The decompressor's init_size is larger than the payload.
    assert_eq!(kernel.kernel_end, GuestAddress(0x10_0000 + 0x4_0000));
    let header = kernel.setup_header.unwrap();
    assert_eq!({ header.version }, 0x020f);
    assert_eq!({ header.code32_start }, 0x10_0000);
    assert_eq!(kernel.cmdline_max, 2048);
    assert_eq!(kernel.initrd_limit(), GuestAddress(0x8000_0000));
    let mut back = vec![0u8; payload.len()];
    mem.read_slice(&mut back, GuestAddress(0x10_0000)).unwrap();
    assert_eq!(back, payload);
}

#[test]
fn bzimage_zero_cmdline_size_means_the_default() {
    let image = build_bzimage(&[0u8; 0x1000], |h| h.cmdline_size = 0);
    assert_eq!(load(&image).unwrap().cmdline_max, CMDLINE_MAX_SIZE);
    let image = build_bzimage(&[0u8; 0x1000], |h| h.cmdline_size = 100_000);
    assert_eq!(load(&image).unwrap().cmdline_max, CMDLINE_MAX_SIZE);
}

#[test]
fn unsupported_bzimages() {
    let payload = [0u8; 0x1000];
    for (tweak, needle) in [
        (
            Box::new(|h: &mut setup_header| h.version = 0x020b)
                as Box<dyn FnOnce(&mut setup_header)>,
            "older than 2.12",
        ),
        (
            Box::new(|h: &mut setup_header| h.loadflags = 0),
            "LOADED_HIGH",
        ),
        (
            Box::new(|h: &mut setup_header| h.xloadflags = 0),
            "XLF_KERNEL_64",
        ),
        (
            Box::new(|h: &mut setup_header| h.code32_start = 0x1_0000),
            "below high memory",
        ),
    ] {
        let err = load(&build_bzimage(&payload, tweak)).unwrap_err();
        assert!(matches!(err, KernelError::UnsupportedBzImage(_)), "{err}");
        assert!(err.to_string().contains(needle), "{err}");
    }
}

#[test]
fn bzimage_too_big_for_memory() {
    let image = build_bzimage(&[0u8; 0x1000], |h| h.init_size = 0x1000_0000);
    let err = load(&image).unwrap_err();
    assert!(
        matches!(
            err,
            KernelError::OutsideMemory {
                addr: 0x10_0000,
                size: 0x1000_0000,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn empty_file() {
    assert!(matches!(load(&[]), Err(KernelError::Empty)));
}

#[test]
fn random_bytes_are_not_a_kernel() {
    // xorshift: deterministic noise.
    let mut x: u32 = 0x1234_5678;
    let noise: Vec<u8> = (0..8192)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let err = load(&noise).unwrap_err();
    assert!(
        matches!(err, KernelError::UnrecognisedFormat { size: 8192, .. }),
        "{err}"
    );
    assert!(err
        .to_string()
        .contains("neither an ELF vmlinux nor a bzImage"));
    // Short files too.
    assert!(matches!(
        load(b"MZ"),
        Err(KernelError::UnrecognisedFormat { size: 2, .. })
    ));
}

#[test]
fn truncated_elf() {
    let elf = build_elf(&code(), Some(&pvh_note(PVH_ENTRY as u32)));
    let err = load(&elf[..40]).unwrap_err();
    assert!(
        matches!(
            err,
            KernelError::Truncated {
                what: "ELF header",
                ..
            }
        ),
        "{err}"
    );
    let err = load(&elf[..100]).unwrap_err();
    assert!(
        matches!(
            err,
            KernelError::Truncated {
                what: "program header table",
                ..
            }
        ),
        "{err}"
    );
    let err = load(&elf[..300]).unwrap_err();
    assert!(
        matches!(
            err,
            KernelError::Truncated {
                what: "PT_LOAD segment",
                ..
            }
        ),
        "{err}"
    );
    let err = load(&elf[..elf.len() - 2]).unwrap_err();
    assert!(
        matches!(
            err,
            KernelError::Truncated {
                what: "PT_NOTE segment",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("truncated"));
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let elf = build_elf(&code(), Some(&pvh_note(PVH_ENTRY as u32)));
    let bz = build_bzimage(&[0x90u8; 0x400], |h| h.init_size = 0);
    for image in [&elf, &bz] {
        for len in 0..image.len() {
            assert!(load(&image[..len]).is_err(), "prefix of {len} bytes loaded");
        }
        assert!(load(image).is_ok());
    }
}

#[test]
fn corrupt_headers_never_panic() {
    let elf = build_elf(&code(), Some(&pvh_note(PVH_ENTRY as u32)));
    let bz = build_bzimage(&[0x90u8; 0x400], |_| {});
    for (image, header_end) in [(&elf, 64 + 2 * 56), (&bz, 0x270)] {
        for pos in 0..header_end {
            for value in [0x00u8, 0x7f, 0xff] {
                let mut corrupt = image.clone();
                corrupt[pos] = value;
                let _ = load(&corrupt); // any Result is fine, a panic is not
            }
        }
    }
}

#[test]
fn unsupported_elf() {
    let mut elf32 = build_elf(&code(), None);
    elf32[4] = 1; // ELFCLASS32
    let err = load(&elf32).unwrap_err();
    assert!(matches!(err, KernelError::UnsupportedElf(_)), "{err}");

    let mut arm = build_elf(&code(), None);
    arm[18] = 183; // EM_AARCH64
    let err = load(&arm).unwrap_err();
    assert!(err.to_string().contains("not x86-64"), "{err}");

    let mut low_entry = build_elf(&code(), None);
    low_entry[24..32].copy_from_slice(&0x1000u64.to_le_bytes());
    let err = load(&low_entry).unwrap_err();
    assert!(err.to_string().contains("below high memory"), "{err}");
}

#[test]
fn elf_segment_outside_guest_memory() {
    let mem = test_memory(8 * MIB); // the segment wants 16 MiB and up
    let err = load_kernel(&mem, &mut temp_file_with(&build_elf(&code(), None))).unwrap_err();
    assert!(
        matches!(
            err,
            KernelError::OutsideMemory {
                what: "PT_LOAD segment",
                addr: LOAD_ADDR,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn real_vmlinux_if_provided() {
    let Some(path) = std::env::var_os("VMM_TEST_VMLINUX") else {
        println!("skipped: VMM_TEST_VMLINUX not set");
        return;
    };
    let mem = test_memory(512 * MIB);
    let mut file = std::fs::File::open(&path).unwrap();
    let kernel = load_kernel(&mem, &mut file).unwrap();
    println!(
        "{path:?}: {:?} entry {:#x} end {:#x}",
        kernel.protocol, kernel.entry.0, kernel.kernel_end.0
    );
    assert_eq!(
        kernel.protocol,
        BootProtocol::Pvh,
        "vmlinux without a PVH note"
    );
    assert!(kernel.entry.0 >= crate::x86_64::layout::HIMEM_START);
    assert!(kernel.entry.0 < kernel.kernel_end.0);
}

#[test]
fn real_bzimage_if_provided() {
    let Some(path) = std::env::var_os("VMM_TEST_BZIMAGE") else {
        println!("skipped: VMM_TEST_BZIMAGE not set");
        return;
    };
    let mem = test_memory(512 * MIB);
    let mut file = std::fs::File::open(&path).unwrap();
    let kernel = load_kernel(&mem, &mut file).unwrap();
    let header = kernel.setup_header.expect("bzImage without setup header");
    println!(
        "{path:?}: protocol {:#x} entry {:#x} end {:#x}",
        { header.version },
        kernel.entry.0,
        kernel.kernel_end.0
    );
    assert_eq!(kernel.protocol, BootProtocol::Linux64);
    assert_eq!(kernel.entry.0, u64::from(header.code32_start) + 0x200);
    assert!(kernel.cmdline_max > 256 && kernel.cmdline_max <= CMDLINE_MAX_SIZE);
}

//! Synthetic guests: tiny long-mode programs wrapped in an ELF64 image that
//! the VMM loads exactly like a vmlinux (64-bit boot protocol, entry at
//! 16 MiB, RSI = boot_params). They let tests and the boot benchmark run on
//! any /dev/kvm, including PVM hosts that cannot boot a real kernel.
//!
//! Programs are written with [`Asm`], a handful of hand-encoded x86-64
//! instructions, each documented with its encoding.

/// Guest physical (and virtual) address the program is loaded at.
pub const LOAD_ADDR: u64 = 0x100_0000;
/// Port a program reports 32-bit values to (Bochs' debug port number).
pub const REPORT_PORT: u16 = 0xe9;
/// Port the boot benchmark's first instruction writes (CH debug port).
pub const FIRST_INSTRUCTION_PORT: u8 = 0x80;

/// A minimal x86-64 assembler for the few instructions synthetic guests use.
#[derive(Default, Debug, Clone)]
pub struct Asm {
    code: Vec<u8>,
}

impl Asm {
    /// Empty program.
    pub fn new() -> Self {
        Self::default()
    }

    fn bytes(mut self, b: &[u8]) -> Self {
        self.code.extend_from_slice(b);
        self
    }

    /// Appends raw, already-encoded instruction bytes.
    pub fn raw(self, b: &[u8]) -> Self {
        self.bytes(b)
    }

    /// `mov dx, imm16` (66 BA iw).
    pub fn mov_dx(self, port: u16) -> Self {
        let [lo, hi] = port.to_le_bytes();
        self.bytes(&[0x66, 0xba, lo, hi])
    }

    /// `mov eax, imm32` (B8 id).
    pub fn mov_eax(self, value: u32) -> Self {
        let v = value.to_le_bytes();
        self.bytes(&[0xb8, v[0], v[1], v[2], v[3]])
    }

    /// `mov eax, esi` (89 F0).
    pub fn mov_eax_esi(self) -> Self {
        self.bytes(&[0x89, 0xf0])
    }

    /// `mov eax, esp` (89 E0).
    pub fn mov_eax_esp(self) -> Self {
        self.bytes(&[0x89, 0xe0])
    }

    /// `mov eax, [rsi + disp32]` (8B 86 id).
    pub fn load_u32_from_rsi(self, disp: u32) -> Self {
        let d = disp.to_le_bytes();
        self.bytes(&[0x8b, 0x86, d[0], d[1], d[2], d[3]])
    }

    /// `movzx eax, byte [rsi + disp32]` (0F B6 86 id).
    pub fn load_u8_from_rsi(self, disp: u32) -> Self {
        let d = disp.to_le_bytes();
        self.bytes(&[0x0f, 0xb6, 0x86, d[0], d[1], d[2], d[3]])
    }

    /// `mov rax, cr0` (0F 20 C0).
    pub fn mov_rax_cr0(self) -> Self {
        self.bytes(&[0x0f, 0x20, 0xc0])
    }

    /// `mov rax, cr4` (0F 20 E0).
    pub fn mov_rax_cr4(self) -> Self {
        self.bytes(&[0x0f, 0x20, 0xe0])
    }

    /// `mov ecx, 0xC0000080; rdmsr` (B9 id; 0F 32): EFER into EDX:EAX.
    pub fn read_efer(self) -> Self {
        self.bytes(&[0xb9, 0x80, 0x00, 0x00, 0xc0, 0x0f, 0x32])
    }

    /// `mov eax, 1; cpuid; mov eax, ebx; shr eax, 24`: this CPU's initial APIC ID.
    pub fn apic_id_from_cpuid(self) -> Self {
        self.mov_eax(1)
            .bytes(&[0x0f, 0xa2]) // cpuid
            .bytes(&[0x89, 0xd8]) // mov eax, ebx
            .bytes(&[0xc1, 0xe8, 0x18]) // shr eax, 24
    }

    /// `out dx, eax` (EF).
    pub fn out_dx_eax(self) -> Self {
        self.bytes(&[0xef])
    }

    /// `mov al, imm8; out dx, al` (B0 ib; EE).
    pub fn out_dx_byte(self, value: u8) -> Self {
        self.bytes(&[0xb0, value, 0xee])
    }

    /// `out imm8, al` (E6 ib) with AL = `value` (B0 ib first).
    pub fn out_imm_byte(self, port: u8, value: u8) -> Self {
        self.bytes(&[0xb0, value, 0xe6, port])
    }

    /// Reports EAX on [`REPORT_PORT`] (`mov dx, 0xe9; out dx, eax`).
    pub fn report_eax(self) -> Self {
        self.mov_dx(REPORT_PORT).out_dx_eax()
    }

    /// Writes `text` to the serial port COM1 (0x3f8), one `out` per byte.
    pub fn serial_print(mut self, text: &str) -> Self {
        self = self.mov_dx(0x3f8);
        for b in text.bytes() {
            self = self.out_dx_byte(b);
        }
        self
    }

    /// Firecracker's boot-timer signal: `mov eax, 0xC0000000; mov byte [rax], 123`.
    pub fn boot_timer_signal(self) -> Self {
        self.mov_eax(0xc000_0000).bytes(&[0xc6, 0x00, 123])
    }

    /// Pulses the i8042 reset line: `out 0x64, 0xFE`.
    pub fn i8042_reset(self) -> Self {
        self.out_imm_byte(0x64, 0xfe)
    }

    /// Writes S5 | SLP_EN to the ACPI sleep control register (port 0x600).
    pub fn acpi_power_off(self) -> Self {
        self.mov_dx(0x600).out_dx_byte((5 << 2) | (1 << 5))
    }

    /// `ud2`-free triple fault: load a zero-limit IDT and raise `int3`
    /// (`lidt [rip+x]` is avoided: we zero the IDT limit via a stack
    /// descriptor: push 0; push 0; lidt [rsp]; int3).
    pub fn triple_fault(self) -> Self {
        self.bytes(&[0x6a, 0x00]) // push 0
            .bytes(&[0x6a, 0x00]) // push 0
            .bytes(&[0x0f, 0x01, 0x1c, 0x24]) // lidt [rsp]
            .bytes(&[0xcc]) // int3
    }

    /// `hlt; jmp hlt` forever (F4 EB FD).
    pub fn halt_forever(self) -> Self {
        self.bytes(&[0xf4, 0xeb, 0xfd])
    }

    /// `jmp $` spin (EB FE).
    pub fn spin_forever(self) -> Self {
        self.bytes(&[0xeb, 0xfe])
    }

    /// The machine code.
    pub fn code(&self) -> &[u8] {
        &self.code
    }
}

/// Wraps `code` in an ELF64 executable with one PT_LOAD at [`LOAD_ADDR`].
pub fn elf_image(code: &[u8]) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    const CODE_OFFSET: usize = 0x1000;
    let mut img = vec![0u8; CODE_OFFSET + code.len()];
    // e_ident: magic, 64-bit, little endian, version 1, System V.
    img[..8].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    let put16 =
        |img: &mut Vec<u8>, at: usize, v: u16| img[at..at + 2].copy_from_slice(&v.to_le_bytes());
    let put32 =
        |img: &mut Vec<u8>, at: usize, v: u32| img[at..at + 4].copy_from_slice(&v.to_le_bytes());
    let put64 =
        |img: &mut Vec<u8>, at: usize, v: u64| img[at..at + 8].copy_from_slice(&v.to_le_bytes());
    put16(&mut img, 16, 2); // e_type: EXEC
    put16(&mut img, 18, 62); // e_machine: x86-64
    put32(&mut img, 20, 1); // e_version
    put64(&mut img, 24, LOAD_ADDR); // e_entry
    put64(&mut img, 32, EHDR as u64); // e_phoff
    put64(&mut img, 40, 0); // e_shoff
    put32(&mut img, 48, 0); // e_flags
    put16(&mut img, 52, EHDR as u16); // e_ehsize
    put16(&mut img, 54, PHDR as u16); // e_phentsize
    put16(&mut img, 56, 1); // e_phnum
    put16(&mut img, 58, 64); // e_shentsize
    put16(&mut img, 60, 0); // e_shnum
    put16(&mut img, 62, 0); // e_shstrndx
    let ph = EHDR;
    put32(&mut img, ph, 1); // p_type: PT_LOAD
    put32(&mut img, ph + 4, 5); // p_flags: R+X
    put64(&mut img, ph + 8, CODE_OFFSET as u64); // p_offset
    put64(&mut img, ph + 16, LOAD_ADDR); // p_vaddr
    put64(&mut img, ph + 24, LOAD_ADDR); // p_paddr
    put64(&mut img, ph + 32, code.len() as u64); // p_filesz
    put64(&mut img, ph + 40, code.len() as u64); // p_memsz
    put64(&mut img, ph + 48, 0x1000); // p_align
    img[CODE_OFFSET..].copy_from_slice(code);
    img
}

/// The benchmark guest: its first instruction writes port 0x80, then it halts.
pub fn first_instruction_guest() -> Vec<u8> {
    elf_image(
        Asm::new()
            .out_imm_byte(FIRST_INSTRUCTION_PORT, 0x01)
            .halt_forever()
            .code(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        assert_eq!(Asm::new().mov_dx(0x3f8).code(), &[0x66, 0xba, 0xf8, 0x03]);
        assert_eq!(
            Asm::new().out_imm_byte(0x80, 1).code(),
            &[0xb0, 1, 0xe6, 0x80]
        );
        assert_eq!(
            Asm::new().boot_timer_signal().code(),
            &[0xb8, 0, 0, 0, 0xc0, 0xc6, 0x00, 123]
        );
        assert_eq!(Asm::new().halt_forever().code(), &[0xf4, 0xeb, 0xfd]);
    }

    #[test]
    fn elf_header_fields() {
        let img = elf_image(&[0xf4]);
        assert_eq!(&img[..4], b"\x7fELF");
        assert_eq!(img[4], 2, "64-bit");
        assert_eq!(
            u64::from_le_bytes(img[24..32].try_into().unwrap()),
            LOAD_ADDR
        );
        assert_eq!(img[0x1000], 0xf4);
        assert_eq!(img.len(), 0x1001);
    }
}

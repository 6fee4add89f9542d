//! Guest boot: everything written into guest memory before the first vCPU runs.
//!
//! * [`x86_64`]: loading a kernel (ELF `vmlinux` with or without a PVH note,
//!   or a `bzImage`) and an initrd, the zero page / PVH start info, the MP
//!   and ACPI tables, the identity page tables, the GDT/IDT and the initial
//!   vCPU register state. The guest physical layout is fixed by
//!   [`x86_64::layout`].
//! * [`aarch64`]: the guest layout constants and the flattened device tree.
//!   The FDT builder is plain data processing, so it is compiled and tested
//!   on every host architecture.
//!
//! This crate never touches KVM itself: it writes guest memory through
//! `vm-memory` and describes register state with `kvm-bindings` types; the
//! VMM applies it.

#![warn(missing_docs)]

#[cfg(target_arch = "x86_64")]
pub mod x86_64;

pub mod aarch64;

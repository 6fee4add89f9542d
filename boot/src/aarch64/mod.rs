//! aarch64 guest boot: the guest layout and the flattened device tree.
//!
//! [`layout`] and [`fdt`] are plain data processing and are compiled and
//! tested on every host. [`regs`] (the boot vCPU register state) is only
//! part of aarch64 builds; its file is also compiled into the tests of
//! other hosts so that it stays checked.

pub mod fdt;
pub mod layout;

#[cfg(target_arch = "aarch64")]
pub mod regs;

// Keep `regs.rs` compiled and tested on non-aarch64 hosts too.
#[cfg(all(test, not(target_arch = "aarch64")))]
#[path = "regs.rs"]
mod regs_host_check;

pub use fdt::{create_fdt, FdtConfig, FdtError, GicConfig, GicVersion};

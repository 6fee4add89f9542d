//! Device bus and the emulated platform devices of the microVM.
//!
//! - [`Bus`] routes port-I/O and MMIO exits to [`BusDevice`]s by address.
//! - [`Serial`]: 16550A COM1 console (vm-superio), interrupt via an irqfd.
//! - [`I8042`]: PS/2 controller, just enough for Linux to probe it and to
//!   reboot through it (`reboot=k`).
//! - [`AcpiPm`]: HW-reduced ACPI sleep/reset registers (power off, reset).
//! - [`BootTimer`]: the guest's boot-complete signal (MMIO write of 123).
//! - [`DebugPort`]: port 0x80 write log, used to timestamp guest entry.
//!
//! Devices never touch KVM: they are given eventfds to signal interrupts and
//! lifecycle requests, and vmm-core wires those up.

#![warn(missing_docs)]

pub mod acpi_pm;
pub mod boot_timer;
pub mod bus;
pub mod debug_port;
pub mod i8042;
pub mod serial;
pub mod trigger;
pub mod virtio;

pub use acpi_pm::{AcpiPm, RESET_VALUE, S5_SLEEP_TYPE};
pub use boot_timer::{process_cpu_time, BootTimer, BootTimestamp};
pub use bus::{Bus, BusDevice, BusError};
pub use debug_port::DebugPort;
pub use i8042::I8042;
pub use serial::{ConsoleOutput, Serial, SerialError};
pub use trigger::EventFdTrigger;

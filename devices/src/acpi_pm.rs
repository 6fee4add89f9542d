//! Hardware-reduced ACPI power-management registers.
//!
//! A HW-reduced FADT describes three one-byte I/O registers (at 0x600 in this
//! VMM): sleep control, sleep status and reset. Linux powers off by writing
//! SLP_TYP = S5 together with SLP_EN to sleep control, and reboots (with
//! `reboot=acpi`) by writing the reset value to the reset register.

use tracing::{debug, info, warn};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Number of consecutive I/O ports the registers occupy.
pub const ACPI_PM_PORT_COUNT: u64 = 3;
/// Offset of the sleep control register.
pub const SLEEP_CONTROL_OFFSET: u64 = 0;
/// Offset of the sleep status register.
pub const SLEEP_STATUS_OFFSET: u64 = 1;
/// Offset of the reset register.
pub const RESET_OFFSET: u64 = 2;

/// SLP_TYP value for S5 (soft off); the DSDT's `\_S5` package must match.
pub const S5_SLEEP_TYPE: u8 = 5;
/// Value whose write to the reset register requests a reset; the FADT's
/// RESET_VALUE must match.
pub const RESET_VALUE: u8 = 0x1;

/// Sleep enable bit of the sleep control register.
const SLP_EN: u8 = 1 << 5;
/// Position and mask of SLP_TYP in the sleep control register (bits 2..=4).
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0b111;

/// The ACPI power-management register block.
#[derive(Debug)]
pub struct AcpiPm {
    power_off: EventFd,
    reset: EventFd,
}

impl AcpiPm {
    /// Creates the register block; `power_off` is written when the guest
    /// enters S5, `reset` when it writes [`RESET_VALUE`] to the reset register.
    pub fn new(power_off: EventFd, reset: EventFd) -> Self {
        Self { power_off, reset }
    }

    fn write_sleep_control(&mut self, value: u8) {
        if value & SLP_EN == 0 {
            debug!(value, "acpi pm: sleep control write without SLP_EN ignored");
            return;
        }
        let sleep_type = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
        if sleep_type != S5_SLEEP_TYPE {
            warn!(
                sleep_type,
                "acpi pm: unsupported sleep state requested; ignored"
            );
            return;
        }
        info!("acpi pm: guest requested power off (S5)");
        if let Err(e) = self.power_off.write(1) {
            warn!(error = %e, "acpi pm: failed to signal the power-off eventfd");
        }
    }

    fn write_reset(&mut self, value: u8) {
        if value != RESET_VALUE {
            debug!(
                value,
                "acpi pm: reset register write of a non-reset value ignored"
            );
            return;
        }
        info!("acpi pm: guest requested a reset");
        if let Err(e) = self.reset.write(1) {
            warn!(error = %e, "acpi pm: failed to signal the reset eventfd");
        }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        match offset {
            SLEEP_CONTROL_OFFSET => self.write_sleep_control(value),
            // Write-one-to-clear wake status: nothing is ever set.
            SLEEP_STATUS_OFFSET => debug!(value, "acpi pm: sleep status write"),
            RESET_OFFSET => self.write_reset(value),
            _ => debug!(
                offset,
                value, "acpi pm: write outside the register block ignored"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        pm: AcpiPm,
        power_off: EventFd,
        reset: EventFd,
    }

    fn fixture() -> Fixture {
        let power_off = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let reset = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let pm = AcpiPm::new(power_off.try_clone().unwrap(), reset.try_clone().unwrap());
        Fixture {
            pm,
            power_off,
            reset,
        }
    }

    fn sleep_control(sleep_type: u8, enable: bool) -> u8 {
        (sleep_type << SLP_TYP_SHIFT) | if enable { SLP_EN } else { 0 }
    }

    #[test]
    fn s5_with_slp_en_powers_off() {
        let mut f = fixture();
        let value = sleep_control(S5_SLEEP_TYPE, true);
        assert_eq!(value, 0x34, "the value Linux writes for S5");
        f.pm.write(SLEEP_CONTROL_OFFSET, &[value]);
        assert_eq!(f.power_off.read().unwrap(), 1);
        assert!(f.reset.read().is_err());
    }

    #[test]
    fn s3_does_not_power_off() {
        let mut f = fixture();
        f.pm.write(SLEEP_CONTROL_OFFSET, &[sleep_control(3, true)]);
        assert!(f.power_off.read().is_err());
    }

    #[test]
    fn s5_without_slp_en_does_not_power_off() {
        let mut f = fixture();
        f.pm.write(SLEEP_CONTROL_OFFSET, &[sleep_control(S5_SLEEP_TYPE, false)]);
        // S5 written to the wrong register does nothing either.
        f.pm.write(SLEEP_STATUS_OFFSET, &[sleep_control(S5_SLEEP_TYPE, true)]);
        assert!(f.power_off.read().is_err());
    }

    #[test]
    fn reset_value_resets() {
        let mut f = fixture();
        f.pm.write(RESET_OFFSET, &[0x2]);
        assert!(f.reset.read().is_err(), "only RESET_VALUE resets");
        f.pm.write(RESET_OFFSET, &[RESET_VALUE]);
        assert_eq!(f.reset.read().unwrap(), 1);
        assert!(f.power_off.read().is_err());
    }

    #[test]
    fn reads_return_zero() {
        let mut f = fixture();
        for offset in 0..ACPI_PM_PORT_COUNT {
            let mut data = [0xffu8; 1];
            f.pm.read(offset, &mut data);
            assert_eq!(data, [0]);
        }
    }
}

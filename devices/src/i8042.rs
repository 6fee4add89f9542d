//! Minimal i8042 PS/2 controller: enough for Linux to probe it quickly and to
//! reboot through it.
//!
//! The CPU reset command (0xFE on port 0x64) is handled by
//! `vm_superio::I8042Device`, which writes the reset eventfd. On top of it this
//! module answers the controller commands that the Linux i8042 driver issues
//! while probing (read/write the configuration byte, self tests, port enable
//! and disable), so the probe finishes at once instead of waiting for
//! timeouts. No keyboard or mouse is attached: bytes sent to the keyboard are
//! dropped, and the auxiliary port reports a failed interface test.

use std::collections::VecDeque;

use tracing::{debug, info, warn};
use vm_superio::I8042Device;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::trigger::EventFdTrigger;

/// Length of the bus range: offset 0 is the data port (0x60), offset 4 the
/// command/status port (0x64).
pub const I8042_PORT_COUNT: u64 = 5;

const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;
/// The command port offset as `vm_superio::I8042Device` numbers it.
const SUPERIO_COMMAND_REGISTER: u8 = 4;

// Status register (read from 0x64).
/// A byte is waiting in the output buffer.
const STATUS_OUTPUT_FULL: u8 = 0x01;
/// Set once the controller has passed its power-on self test.
const STATUS_SYSTEM_FLAG: u8 = 0x04;
/// The last byte written went to the command port.
const STATUS_LAST_WAS_COMMAND: u8 = 0x08;
/// Keyboard not inhibited.
const STATUS_UNLOCKED: u8 = 0x10;

// Controller configuration byte ("CTR").
const CTR_KBD_INTERRUPT: u8 = 0x01;
const CTR_SYSTEM_FLAG: u8 = 0x04;
const CTR_KBD_DISABLED: u8 = 0x10;
const CTR_AUX_DISABLED: u8 = 0x20;

// Controller commands (written to 0x64).
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_DISABLE_AUX: u8 = 0xA7;
const CMD_ENABLE_AUX: u8 = 0xA8;
const CMD_TEST_AUX: u8 = 0xA9;
const CMD_SELF_TEST: u8 = 0xAA;
const CMD_TEST_KBD: u8 = 0xAB;
const CMD_DISABLE_KBD: u8 = 0xAD;
const CMD_ENABLE_KBD: u8 = 0xAE;
const CMD_READ_OUTPUT_PORT: u8 = 0xD0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xD1;
const CMD_WRITE_AUX_OUTPUT: u8 = 0xD3;
/// Pulse output line 0, which is wired to the CPU reset line.
pub const CMD_PULSE_RESET: u8 = 0xFE;

// Command responses.
const SELF_TEST_PASSED: u8 = 0x55;
const PORT_TEST_PASSED: u8 = 0x00;
/// "Clock line stuck low": how the absent auxiliary port answers its test.
const PORT_TEST_CLOCK_LOW: u8 = 0x01;

/// Bytes the controller can hold for the guest to read from 0x60.
const OUTPUT_BUFFER_LEN: usize = 16;

/// Output port value with the reset line deasserted and the A20 gate open.
const DEFAULT_OUTPUT_PORT: u8 = 0x03;

/// A parameter byte the guest must write to the data port next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PendingParameter {
    Ctr,
    OutputPort,
    AuxOutput,
}

/// The i8042 controller.
#[derive(Debug)]
pub struct I8042 {
    reset_device: I8042Device<EventFdTrigger>,
    status: u8,
    ctr: u8,
    output_port: u8,
    pending: Option<PendingParameter>,
    output: VecDeque<u8>,
}

impl I8042 {
    /// Creates a controller that writes `reset` when the guest pulses the CPU
    /// reset line.
    pub fn new(reset: EventFd) -> Self {
        Self {
            reset_device: I8042Device::new(EventFdTrigger::new(reset)),
            status: STATUS_SYSTEM_FLAG | STATUS_UNLOCKED,
            ctr: CTR_KBD_INTERRUPT | CTR_SYSTEM_FLAG,
            output_port: DEFAULT_OUTPUT_PORT,
            pending: None,
            output: VecDeque::with_capacity(OUTPUT_BUFFER_LEN),
        }
    }

    /// The eventfd written on a reset request.
    pub fn reset_evt(&self) -> &EventFd {
        self.reset_device.reset_evt()
    }

    /// Makes `byte` the only byte the guest reads next from the data port,
    /// as a controller command response.
    fn respond(&mut self, byte: u8) {
        self.output.clear();
        self.output.push_back(byte);
        self.status |= STATUS_OUTPUT_FULL;
    }

    fn read_data(&mut self) -> u8 {
        let byte = self.output.pop_front().unwrap_or(0);
        if self.output.is_empty() {
            self.status &= !STATUS_OUTPUT_FULL;
        }
        byte
    }

    fn command(&mut self, cmd: u8) {
        self.status |= STATUS_LAST_WAS_COMMAND;
        self.pending = None;
        match cmd {
            CMD_READ_CTR => self.respond(self.ctr),
            CMD_WRITE_CTR => self.pending = Some(PendingParameter::Ctr),
            CMD_DISABLE_AUX => self.ctr |= CTR_AUX_DISABLED,
            CMD_ENABLE_AUX => self.ctr &= !CTR_AUX_DISABLED,
            CMD_TEST_AUX => self.respond(PORT_TEST_CLOCK_LOW),
            CMD_SELF_TEST => self.respond(SELF_TEST_PASSED),
            CMD_TEST_KBD => self.respond(PORT_TEST_PASSED),
            CMD_DISABLE_KBD => self.ctr |= CTR_KBD_DISABLED,
            CMD_ENABLE_KBD => self.ctr &= !CTR_KBD_DISABLED,
            CMD_READ_OUTPUT_PORT => self.respond(self.output_port),
            CMD_WRITE_OUTPUT_PORT => self.pending = Some(PendingParameter::OutputPort),
            CMD_WRITE_AUX_OUTPUT => self.pending = Some(PendingParameter::AuxOutput),
            CMD_PULSE_RESET => {
                info!("i8042: guest requested a CPU reset");
                if let Err(e) = self.reset_device.write(SUPERIO_COMMAND_REGISTER, cmd) {
                    warn!(error = %e, "i8042: failed to signal the reset eventfd");
                }
            }
            other => debug!(cmd = format_args!("{other:#04x}"), "i8042: ignored command"),
        }
    }

    fn data(&mut self, value: u8) {
        self.status &= !STATUS_LAST_WAS_COMMAND;
        match self.pending.take() {
            Some(PendingParameter::Ctr) => self.ctr = value,
            Some(PendingParameter::OutputPort) => self.output_port = value,
            // Echo it back, but as keyboard data: with no auxiliary device the
            // Linux loopback check fails at once and the port is skipped.
            Some(PendingParameter::AuxOutput) => self.respond(value),
            None => debug!(
                value = format_args!("{value:#04x}"),
                "i8042: no keyboard attached; byte dropped"
            ),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(first) = data.first_mut() else {
            return;
        };
        *first = match offset {
            DATA_OFFSET => self.read_data(),
            COMMAND_OFFSET => self.status,
            _ => {
                debug!(offset, "i8042: read of an unemulated port");
                0
            }
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        match offset {
            DATA_OFFSET => self.data(value),
            COMMAND_OFFSET => self.command(value),
            _ => debug!(offset, value, "i8042: write to an unemulated port ignored"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn i8042() -> (I8042, EventFd) {
        let reset = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        (I8042::new(reset.try_clone().unwrap()), reset)
    }

    fn read(dev: &mut I8042, offset: u64) -> u8 {
        let mut data = [0u8; 1];
        BusDevice::read(dev, offset, &mut data);
        data[0]
    }

    fn write(dev: &mut I8042, offset: u64, value: u8) {
        BusDevice::write(dev, offset, &[value]);
    }

    #[test]
    fn pulse_reset_fires_the_reset_eventfd() {
        let (mut dev, reset) = i8042();
        write(&mut dev, COMMAND_OFFSET, CMD_PULSE_RESET);
        assert_eq!(reset.read().unwrap(), 1);
    }

    #[test]
    fn other_commands_and_ports_do_not_reset() {
        let (mut dev, reset) = i8042();
        for cmd in (0u8..=0xff).filter(|&c| c != CMD_PULSE_RESET) {
            write(&mut dev, COMMAND_OFFSET, cmd);
        }
        write(&mut dev, DATA_OFFSET, CMD_PULSE_RESET);
        write(&mut dev, 1, CMD_PULSE_RESET);
        assert!(reset.read().is_err(), "reset eventfd must not be written");
    }

    #[test]
    fn status_port_is_readable() {
        let (mut dev, _reset) = i8042();
        let status = read(&mut dev, COMMAND_OFFSET);
        assert_eq!(status & STATUS_OUTPUT_FULL, 0);
        assert_ne!(status & STATUS_SYSTEM_FLAG, 0);
        // Wider reads carry the status in the first byte only.
        let mut wide = [0xffu8; 2];
        BusDevice::read(&mut dev, COMMAND_OFFSET, &mut wide);
        assert_eq!(wide, [status, 0]);
    }

    #[test]
    fn configuration_byte_round_trips() {
        let (mut dev, _reset) = i8042();
        write(&mut dev, COMMAND_OFFSET, CMD_WRITE_CTR);
        write(&mut dev, DATA_OFFSET, 0x47);
        write(&mut dev, COMMAND_OFFSET, CMD_READ_CTR);
        assert_ne!(read(&mut dev, COMMAND_OFFSET) & STATUS_OUTPUT_FULL, 0);
        assert_eq!(read(&mut dev, DATA_OFFSET), 0x47);
        assert_eq!(read(&mut dev, COMMAND_OFFSET) & STATUS_OUTPUT_FULL, 0);

        write(&mut dev, COMMAND_OFFSET, CMD_DISABLE_KBD);
        write(&mut dev, COMMAND_OFFSET, CMD_DISABLE_AUX);
        write(&mut dev, COMMAND_OFFSET, CMD_READ_CTR);
        let ctr = read(&mut dev, DATA_OFFSET);
        assert_eq!(
            ctr & (CTR_KBD_DISABLED | CTR_AUX_DISABLED),
            CTR_KBD_DISABLED | CTR_AUX_DISABLED
        );
    }

    #[test]
    fn self_tests_answer_and_aux_port_is_absent() {
        let (mut dev, _reset) = i8042();
        write(&mut dev, COMMAND_OFFSET, CMD_SELF_TEST);
        assert_eq!(read(&mut dev, DATA_OFFSET), SELF_TEST_PASSED);
        write(&mut dev, COMMAND_OFFSET, CMD_TEST_KBD);
        assert_eq!(read(&mut dev, DATA_OFFSET), PORT_TEST_PASSED);

        // Aux loopback echoes as keyboard data (no AUX bit in the status).
        write(&mut dev, COMMAND_OFFSET, CMD_WRITE_AUX_OUTPUT);
        write(&mut dev, DATA_OFFSET, 0x5a);
        assert_eq!(read(&mut dev, COMMAND_OFFSET) & 0x20, 0);
        // A new command response replaces the unread echo.
        write(&mut dev, COMMAND_OFFSET, CMD_TEST_AUX);
        assert_eq!(read(&mut dev, DATA_OFFSET), PORT_TEST_CLOCK_LOW);
        assert_eq!(read(&mut dev, DATA_OFFSET), 0, "buffer drained");
    }

    #[test]
    fn output_port_round_trips_and_keyboard_bytes_are_dropped() {
        let (mut dev, reset) = i8042();
        write(&mut dev, COMMAND_OFFSET, CMD_WRITE_OUTPUT_PORT);
        write(&mut dev, DATA_OFFSET, 0x01);
        write(&mut dev, COMMAND_OFFSET, CMD_READ_OUTPUT_PORT);
        assert_eq!(read(&mut dev, DATA_OFFSET), 0x01);

        // A keyboard command (e.g. "identify") gets no answer.
        write(&mut dev, DATA_OFFSET, 0xf2);
        assert_eq!(read(&mut dev, COMMAND_OFFSET) & STATUS_OUTPUT_FULL, 0);
        assert!(reset.read().is_err());
    }
}

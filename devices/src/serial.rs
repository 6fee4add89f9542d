//! 16550A UART (COM1) backed by `vm_superio::Serial`.
//!
//! Guest output goes to a [`ConsoleOutput`]; guest input is pushed in by the
//! VMM with [`Serial::enqueue_input`]. Interrupts are delivered by writing an
//! eventfd that vmm-core registers as an irqfd for IRQ 4.

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use tracing::{debug, warn};
use vm_superio::serial::{Error as UartError, NoEvents};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::trigger::EventFdTrigger;

/// Number of consecutive I/O ports a 16550 occupies (0x3f8..=0x3ff for COM1).
pub const SERIAL_PORT_COUNT: u64 = 8;

/// Where the guest's console output goes.
pub enum ConsoleOutput {
    /// The VMM process's standard output, flushed after every byte.
    Stdout,
    /// A file, written unbuffered. It must be open for writing.
    File(File),
    /// Discard everything.
    Sink,
    /// Append to a shared buffer (tests, capture by the controller).
    Shared(Arc<Mutex<Vec<u8>>>),
    /// Any other writer.
    Writer(Box<dyn Write + Send>),
}

impl fmt::Debug for ConsoleOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stdout => f.write_str("Stdout"),
            Self::File(file) => f.debug_tuple("File").field(file).finish(),
            Self::Sink => f.write_str("Sink"),
            Self::Shared(_) => f.write_str("Shared"),
            Self::Writer(_) => f.write_str("Writer"),
        }
    }
}

/// Errors of the serial device.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// The console file's access mode could not be queried.
    #[error("cannot query the access mode of the console output file: {0}")]
    ConsoleFileMode(#[source] io::Error),
    /// The console file was opened read-only.
    #[error("console output file is not open for writing")]
    ConsoleFileNotWritable,
    /// Signalling the serial interrupt eventfd failed.
    #[error("failed to signal the serial interrupt eventfd: {0}")]
    Interrupt(#[source] io::Error),
    /// Writing guest output failed.
    #[error("failed to write serial console output: {0}")]
    Output(#[source] io::Error),
}

/// The `Write` implementation handed to vm-superio.
///
/// vm-superio calls `write_all` then `flush` for each byte the guest writes to
/// THR, so each byte is one write burst.
struct ConsoleWriter(ConsoleOutput);

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.0 {
            ConsoleOutput::Stdout => io::stdout().lock().write(buf),
            ConsoleOutput::File(file) => file.write(buf),
            ConsoleOutput::Sink => Ok(buf.len()),
            ConsoleOutput::Shared(shared) => {
                shared
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .extend_from_slice(buf);
                Ok(buf.len())
            }
            ConsoleOutput::Writer(writer) => writer.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.0 {
            ConsoleOutput::Stdout => io::stdout().lock().flush(),
            // Files are unbuffered; `File::flush` is a no-op.
            ConsoleOutput::File(_) | ConsoleOutput::Sink | ConsoleOutput::Shared(_) => Ok(()),
            ConsoleOutput::Writer(writer) => writer.flush(),
        }
    }
}

impl Drop for ConsoleWriter {
    fn drop(&mut self) {
        // Best effort: nothing useful can be done with an error at teardown.
        let _ = self.flush();
    }
}

impl fmt::Debug for ConsoleWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

type Uart = vm_superio::Serial<EventFdTrigger, NoEvents, ConsoleWriter>;

/// A 16550A serial port.
///
/// Register it on the port-I/O bus with length [`SERIAL_PORT_COUNT`].
#[derive(Debug)]
pub struct Serial {
    uart: Uart,
    /// Guest output bytes that could not be written.
    lost_output_bytes: u64,
}

impl Serial {
    /// Creates a serial port that raises its interrupt by writing `interrupt`
    /// and writes guest output to `output`.
    pub fn new(interrupt: EventFd, output: ConsoleOutput) -> Result<Self, SerialError> {
        if let ConsoleOutput::File(file) = &output {
            check_writable(file)?;
        }
        Ok(Self {
            uart: Uart::new(EventFdTrigger::new(interrupt), ConsoleWriter(output)),
            lost_output_bytes: 0,
        })
    }

    /// Queues guest input (for example from the VMM's stdin).
    ///
    /// Returns how many bytes of `bytes` fit in the receive FIFO (possibly 0);
    /// the rest is for the caller to retry once the guest has drained the FIFO
    /// (see [`Serial::input_capacity`]). When the guest has enabled the
    /// received-data interrupt, the interrupt eventfd is written.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> Result<usize, SerialError> {
        if bytes.is_empty() || self.uart.fifo_capacity() == 0 {
            return Ok(0);
        }
        match self.uart.enqueue_raw_bytes(bytes) {
            Ok(accepted) => Ok(accepted),
            Err(UartError::FullFifo) => Ok(0),
            Err(UartError::Trigger(e)) => Err(SerialError::Interrupt(e)),
            // Enqueueing input never writes output; kept for exhaustiveness.
            Err(UartError::IOError(e)) => Err(SerialError::Output(e)),
        }
    }

    /// Free space in the receive FIFO, in bytes.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// The eventfd written to raise the serial interrupt.
    pub fn interrupt_evt(&self) -> &EventFd {
        self.uart.interrupt_evt()
    }

    /// Guest output bytes dropped because the console output failed.
    pub fn lost_output_bytes(&self) -> u64 {
        self.lost_output_bytes
    }

    fn on_write_error(&mut self, err: UartError<io::Error>) {
        match err {
            UartError::IOError(e) => {
                self.lost_output_bytes += 1;
                // The guest can produce a lot of output; warn once, then stay quiet.
                if self.lost_output_bytes == 1 {
                    warn!(error = %e, "serial: console output failed; dropping guest output");
                } else {
                    debug!(error = %e, "serial: dropped guest output byte");
                }
            }
            UartError::Trigger(e) => {
                warn!(error = %e, "serial: failed to signal the interrupt eventfd");
            }
            UartError::FullFifo => debug!("serial: loopback byte dropped, FIFO full"),
        }
    }
}

/// Rejects a console file that was not opened for writing, so the mistake
/// shows up when the VM is built rather than as silently lost output.
fn check_writable(file: &File) -> Result<(), SerialError> {
    // SAFETY: F_GETFL only reads the status flags of a descriptor that `file`
    // owns and keeps open for the duration of the call; no memory is passed.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(SerialError::ConsoleFileMode(io::Error::last_os_error()));
    }
    match flags & libc::O_ACCMODE {
        libc::O_WRONLY | libc::O_RDWR => Ok(()),
        _ => Err(SerialError::ConsoleFileNotWritable),
    }
}

/// The register offset of a guest access, if it is one of the eight ports.
fn register(offset: u64) -> Option<u8> {
    u8::try_from(offset)
        .ok()
        .filter(|&r| u64::from(r) < SERIAL_PORT_COUNT)
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let (Some(reg), Some(first)) = (register(offset), data.first_mut()) else {
            debug!(offset, len = data.len(), "serial: ignored read");
            return;
        };
        *first = self.uart.read(reg);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Some(reg), Some(&value)) = (register(offset), data.first()) else {
            debug!(offset, len = data.len(), "serial: ignored write");
            return;
        };
        if let Err(err) = self.uart.write(reg, value) {
            self.on_write_error(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek};

    use super::*;

    const THR: u64 = 0;
    const IER: u64 = 1;
    const LSR: u64 = 5;
    const LSR_DATA_READY: u8 = 0x01;
    const LSR_THR_EMPTY: u8 = 0x20;
    const IER_RDA: u8 = 0x01;

    fn serial_with_shared() -> (Serial, EventFd, Arc<Mutex<Vec<u8>>>) {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let out = Arc::new(Mutex::new(Vec::new()));
        let serial =
            Serial::new(irq.try_clone().unwrap(), ConsoleOutput::Shared(out.clone())).unwrap();
        (serial, irq, out)
    }

    fn read_reg(serial: &mut Serial, offset: u64) -> u8 {
        let mut data = [0u8; 1];
        BusDevice::read(serial, offset, &mut data);
        data[0]
    }

    #[test]
    fn guest_output_reaches_the_console() {
        let (mut serial, _irq, out) = serial_with_shared();
        for &b in b"hello\n" {
            BusDevice::write(&mut serial, THR, &[b]);
        }
        // A wider access only carries data[0].
        BusDevice::write(&mut serial, THR, b"!?");
        assert_eq!(out.lock().unwrap().as_slice(), b"hello\n!");
    }

    #[test]
    fn line_status_reports_thr_empty() {
        let (mut serial, _irq, _out) = serial_with_shared();
        let lsr = read_reg(&mut serial, LSR);
        assert_ne!(lsr & LSR_THR_EMPTY, 0);
        assert_eq!(lsr & LSR_DATA_READY, 0);
    }

    #[test]
    fn input_is_readable_and_raises_the_interrupt() {
        let (mut serial, irq, _out) = serial_with_shared();
        BusDevice::write(&mut serial, IER, &[IER_RDA]);
        assert!(irq.read().is_err(), "no interrupt before data arrives");

        assert_eq!(serial.enqueue_input(b"ok").unwrap(), 2);
        assert_eq!(irq.read().unwrap(), 1);
        assert_ne!(read_reg(&mut serial, LSR) & LSR_DATA_READY, 0);
        assert_eq!(read_reg(&mut serial, THR), b'o');
        assert_eq!(read_reg(&mut serial, THR), b'k');
        assert_eq!(read_reg(&mut serial, LSR) & LSR_DATA_READY, 0);
    }

    #[test]
    fn input_without_rda_enabled_does_not_interrupt() {
        let (mut serial, irq, _out) = serial_with_shared();
        assert_eq!(serial.enqueue_input(b"x").unwrap(), 1);
        assert!(irq.read().is_err());
        assert_ne!(read_reg(&mut serial, LSR) & LSR_DATA_READY, 0);
    }

    #[test]
    fn input_is_limited_by_fifo_capacity() {
        let (mut serial, _irq, _out) = serial_with_shared();
        let capacity = serial.input_capacity();
        assert_eq!(capacity, 64);

        let input = vec![b'a'; capacity + 10];
        assert_eq!(serial.enqueue_input(&input).unwrap(), capacity);
        assert_eq!(serial.input_capacity(), 0);
        assert_eq!(serial.enqueue_input(b"more").unwrap(), 0);
        assert_eq!(serial.enqueue_input(b"").unwrap(), 0);

        read_reg(&mut serial, THR);
        assert_eq!(serial.input_capacity(), 1);
        assert_eq!(serial.enqueue_input(b"yz").unwrap(), 1);
    }

    #[test]
    fn out_of_range_offsets_are_ignored() {
        let (mut serial, _irq, out) = serial_with_shared();
        BusDevice::write(&mut serial, 8, b"x");
        BusDevice::write(&mut serial, u64::MAX, b"x");
        BusDevice::write(&mut serial, THR, &[]);
        let mut data = [0xffu8; 2];
        BusDevice::read(&mut serial, 300, &mut data);
        assert_eq!(data, [0, 0]);
        assert!(out.lock().unwrap().is_empty());
    }

    #[test]
    fn file_output_is_written_through() {
        let path = std::env::temp_dir().join(format!("devices-serial-{}", std::process::id()));
        let file = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut reader = file.try_clone().unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut serial = Serial::new(irq, ConsoleOutput::File(file)).unwrap();
        for &b in b"boot" {
            BusDevice::write(&mut serial, THR, &[b]);
        }
        reader.rewind().unwrap();
        let mut text = String::new();
        reader.read_to_string(&mut text).unwrap();
        assert_eq!(text, "boot");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn read_only_console_file_is_rejected() {
        let file = File::open("/dev/null").unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let err = Serial::new(irq, ConsoleOutput::File(file)).unwrap_err();
        assert!(matches!(err, SerialError::ConsoleFileNotWritable), "{err}");
    }

    #[test]
    fn failing_output_counts_lost_bytes() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from(io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut serial = Serial::new(irq, ConsoleOutput::Writer(Box::new(Broken))).unwrap();
        BusDevice::write(&mut serial, THR, b"a");
        BusDevice::write(&mut serial, THR, b"b");
        assert_eq!(serial.lost_output_bytes(), 2);
        // The device keeps working.
        assert_ne!(read_reg(&mut serial, LSR) & LSR_THR_EMPTY, 0);
    }
}

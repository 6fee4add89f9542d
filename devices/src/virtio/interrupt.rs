//! The interrupt line of one virtio-mmio slot.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};

use vmm_sys_util::eventfd::EventFd;

use super::device::{VirtioInterrupt, INTERRUPT_CONFIG_CHANGE, INTERRUPT_USED_RING};

/// A virtio-mmio interrupt: the InterruptStatus register plus an irqfd.
///
/// Signalling sets the cause in the status register the guest reads, then
/// writes the eventfd; vmm-core registers that eventfd as a KVM irqfd for the
/// slot's IRQ, so the interrupt reaches the guest without a VMM thread. The
/// guest clears causes through InterruptACK ([`EventFdInterrupt::ack`]).
#[derive(Debug)]
pub struct EventFdInterrupt {
    status: AtomicU32,
    /// Causes that always read as pending (see [`Self::for_direct_backend`]).
    always: u32,
    irqfd: EventFd,
}

impl EventFdInterrupt {
    /// Wraps `irqfd`, with no interrupt pending.
    pub fn new(irqfd: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            always: 0,
            irqfd,
        }
    }

    /// Wraps the irqfd of a slot whose used-ring interrupts another process
    /// (a vhost-user backend) raises by writing the irqfd directly. That
    /// process cannot set InterruptStatus, so [`INTERRUPT_USED_RING`] always
    /// reads as pending: Linux then scans the used rings on every interrupt
    /// of the slot (a scan that finds nothing new is harmless).
    pub fn for_direct_backend(irqfd: EventFd) -> Self {
        Self {
            always: INTERRUPT_USED_RING,
            ..Self::new(irqfd)
        }
    }

    /// The eventfd to register as the slot's irqfd.
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }

    /// The InterruptStatus register: pending causes
    /// ([`INTERRUPT_USED_RING`], [`INTERRUPT_CONFIG_CHANGE`]).
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst) | self.always
    }

    /// Clears the causes set in `bits` (a guest write to InterruptACK).
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Clears every pending cause (device reset).
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }

    fn raise(&self, cause: u32) -> io::Result<()> {
        // The cause must be visible before the guest can take the interrupt
        // and read InterruptStatus.
        self.status.fetch_or(cause, Ordering::SeqCst);
        self.irqfd.write(1)
    }
}

impl VirtioInterrupt for EventFdInterrupt {
    fn signal_used_queue(&self, _queue: u16) -> io::Result<()> {
        self.raise(INTERRUPT_USED_RING)
    }

    fn signal_config_change(&self) -> io::Result<()> {
        self.raise(INTERRUPT_CONFIG_CHANGE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_set_causes_and_write_the_irqfd() {
        let interrupt = EventFdInterrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        assert_eq!(interrupt.status(), 0);

        interrupt.signal_used_queue(0).unwrap();
        assert_eq!(interrupt.status(), INTERRUPT_USED_RING);
        interrupt.signal_config_change().unwrap();
        assert_eq!(
            interrupt.status(),
            INTERRUPT_USED_RING | INTERRUPT_CONFIG_CHANGE
        );
        assert_eq!(interrupt.irqfd().read().unwrap(), 2);

        interrupt.ack(INTERRUPT_USED_RING);
        assert_eq!(interrupt.status(), INTERRUPT_CONFIG_CHANGE);
        interrupt.clear();
        assert_eq!(interrupt.status(), 0);
    }

    #[test]
    fn a_direct_backend_slot_always_reports_the_used_ring() {
        let interrupt =
            EventFdInterrupt::for_direct_backend(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        assert_eq!(interrupt.status(), INTERRUPT_USED_RING);
        interrupt.ack(INTERRUPT_USED_RING);
        assert_eq!(interrupt.status(), INTERRUPT_USED_RING);
        interrupt.signal_config_change().unwrap();
        assert_eq!(
            interrupt.status(),
            INTERRUPT_USED_RING | INTERRUPT_CONFIG_CHANGE
        );
        interrupt.ack(INTERRUPT_CONFIG_CHANGE);
        interrupt.clear();
        assert_eq!(interrupt.status(), INTERRUPT_USED_RING);
    }
}

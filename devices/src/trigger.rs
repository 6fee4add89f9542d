//! An [`EventFd`]-backed implementation of [`vm_superio::Trigger`].

use std::io;
use std::ops::Deref;

use vmm_sys_util::eventfd::EventFd;

/// Wraps an [`EventFd`] so that the vm-superio devices can signal through it.
///
/// Triggering writes `1` to the eventfd. For the serial port, vmm-core
/// registers the same eventfd as a KVM irqfd, so a trigger becomes a guest
/// interrupt without the VMM thread being involved; for the i8042 it is a
/// reset request that the VMM thread polls.
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl EventFdTrigger {
    /// Wraps `fd`.
    pub fn new(fd: EventFd) -> Self {
        Self(fd)
    }

    /// Duplicates the underlying file descriptor.
    pub fn try_clone(&self) -> io::Result<Self> {
        self.0.try_clone().map(Self)
    }

    /// Unwraps the eventfd.
    pub fn into_inner(self) -> EventFd {
        self.0
    }
}

impl From<EventFd> for EventFdTrigger {
    fn from(fd: EventFd) -> Self {
        Self(fd)
    }
}

impl Deref for EventFdTrigger {
    type Target = EventFd;

    fn deref(&self) -> &EventFd {
        &self.0
    }
}

impl vm_superio::Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

#[cfg(test)]
mod tests {
    use vm_superio::Trigger;

    use super::*;

    #[test]
    fn trigger_increments_the_eventfd_counter() {
        let trigger = EventFdTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let observer = trigger.try_clone().unwrap();
        trigger.trigger().unwrap();
        trigger.trigger().unwrap();
        assert_eq!(observer.read().unwrap(), 2);
    }
}

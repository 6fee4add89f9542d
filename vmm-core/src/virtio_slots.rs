//! virtio-mmio slots: where each virtio device sits in the MMIO window,
//! which interrupt it raises, and how its queue notifications arrive.
//!
//! Slot n is the 4 KiB page at `VIRTIO_MMIO_START + n * 4 KiB` with IRQ
//! `VIRTIO_MMIO_FIRST_IRQ + n` (boot's layout). The guest learns of the
//! slots from the DSDT (boot's ACPI tables): with HW-reduced ACPI, Linux
//! cannot map the raw ISA IRQs a `virtio_mmio.device=` command-line entry
//! names, so the command line is not used on x86_64. For each slot this module
//! registers an irqfd for the IRQ and one ioeventfd per queue on the
//! QueueNotify register (matching the queue index), so a notification never
//! exits to userspace on a vCPU thread: the event thread handles it. A
//! device served by another process (vhost-user: virtio-fs) gets those
//! eventfds instead ([`VirtioDevice::set_direct_notifiers`]) and the event
//! thread never sees its notifications: the backend reads the kicks and
//! writes the irqfd itself.

use std::sync::{Arc, Mutex};

use boot::x86_64::layout;
use boot::x86_64::VirtioMmioSlot;
use devices::virtio::{
    DirectNotifiers, EventFdInterrupt, MmioTransport, QueueNotifier, VirtioDevice, MMIO_SLOT_SIZE,
    QUEUE_NOTIFY_OFFSET,
};
use devices::Bus;
use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMemoryMmap;

/// Why a virtio device could not be placed.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// No interrupt line is left for another slot.
    #[error("no interrupt line left for virtio-mmio slot {0}")]
    NoIrq(u32),
    /// An eventfd could not be created.
    #[error("eventfd for virtio-mmio slot {slot}: {source}")]
    EventFd {
        /// The slot.
        slot: u32,
        /// The error.
        source: std::io::Error,
    },
    /// KVM refused the irqfd or an ioeventfd.
    #[error("{what} for virtio-mmio slot {slot}: {source}")]
    Kvm {
        /// Which registration.
        what: &'static str,
        /// The slot.
        slot: u32,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// The MMIO range is taken.
    #[error("MMIO range of virtio slot {slot}: {source}")]
    Bus {
        /// The slot.
        slot: u32,
        /// The error.
        source: devices::BusError,
    },
}

/// One queue's notification eventfd and where it is delivered.
pub struct QueueEvent {
    /// Written by KVM when the guest writes the queue index to QueueNotify.
    pub event: EventFd,
    /// The transport's notification handle.
    pub notifier: QueueNotifier,
    /// The queue index.
    pub queue: u32,
}

/// The virtio-mmio slots of one VM.
#[derive(Default)]
pub struct VirtioSlots {
    slots: Vec<VirtioMmioSlot>,
    queue_events: Vec<QueueEvent>,
}

impl VirtioSlots {
    /// No slots yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `device` in the next free slot; returns the transport's
    /// notification handle (for devices with host-side events).
    pub fn attach(
        &mut self,
        vm: &VmFd,
        bus: &mut Bus,
        mem: &GuestMemoryMmap,
        device: Arc<Mutex<dyn VirtioDevice>>,
    ) -> Result<QueueNotifier, SlotError> {
        let slot = self.slots.len() as u32;
        let base = layout::virtio_mmio_addr(slot);
        let irq = layout::virtio_mmio_irq(slot).ok_or(SlotError::NoIrq(slot))?;
        let new_eventfd = || {
            EventFd::new(libc::EFD_NONBLOCK).map_err(|source| SlotError::EventFd { slot, source })
        };
        let irqfd = new_eventfd()?;
        vm.register_irqfd(&irqfd, irq)
            .map_err(|source| SlotError::Kvm {
                what: "KVM_IRQFD",
                slot,
                source,
            })?;
        let (queue_count, direct) = {
            let device = device.lock().unwrap_or_else(|p| p.into_inner());
            (
                device.queue_max_sizes().len(),
                device.wants_direct_notifiers(),
            )
        };
        let clone = |fd: &EventFd| {
            fd.try_clone()
                .map_err(|source| SlotError::EventFd { slot, source })
        };
        let mut direct_notifiers = if direct {
            Some(DirectNotifiers {
                kicks: Vec::with_capacity(queue_count),
                call: clone(&irqfd)?,
            })
        } else {
            None
        };
        let interrupt = if direct {
            EventFdInterrupt::for_direct_backend(irqfd)
        } else {
            EventFdInterrupt::new(irqfd)
        };
        let transport = MmioTransport::new(device.clone(), mem.clone(), Arc::new(interrupt));
        let notify_addr = IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET);
        for queue in 0..queue_count as u32 {
            let event = new_eventfd()?;
            vm.register_ioevent(&event, &notify_addr, queue)
                .map_err(|source| SlotError::Kvm {
                    what: "KVM_IOEVENTFD",
                    slot,
                    source,
                })?;
            match direct_notifiers.as_mut() {
                Some(direct) => direct.kicks.push(event),
                None => self.queue_events.push(QueueEvent {
                    event,
                    notifier: transport.queue_notifier(),
                    queue,
                }),
            }
        }
        if let Some(notifiers) = direct_notifiers {
            device
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .set_direct_notifiers(notifiers);
        }
        let notifier = transport.queue_notifier();
        bus.insert(Arc::new(Mutex::new(transport)), base, MMIO_SLOT_SIZE)
            .map_err(|source| SlotError::Bus { slot, source })?;
        self.slots.push(VirtioMmioSlot { base, irq });
        tracing::debug!(
            slot,
            base,
            irq,
            queues = queue_count,
            "virtio-mmio device attached"
        );
        Ok(notifier)
    }

    /// The occupied slots, for the DSDT.
    pub fn slots(&self) -> &[VirtioMmioSlot] {
        &self.slots
    }

    /// The queue notification eventfds, for the event thread.
    pub fn take_queue_events(&mut self) -> Vec<QueueEvent> {
        std::mem::take(&mut self.queue_events)
    }
}

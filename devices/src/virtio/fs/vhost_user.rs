//! The frontend side of one vhost-user connection (the vhost crate's
//! `Frontend`), reduced to what virtio-fs needs.
//!
//! Order of messages, as the vhost-user spec and virtiofsd expect them:
//! - [`Connection::handshake`]: SET_OWNER, GET_FEATURES, and when the
//!   backend offers `VHOST_USER_F_PROTOCOL_FEATURES`:
//!   GET_PROTOCOL_FEATURES / SET_PROTOCOL_FEATURES (REPLY_ACK only, so every
//!   later request is acknowledged and a refusal is seen at once);
//! - [`Connection::start`] (the driver set DRIVER_OK): SET_FEATURES,
//!   SET_MEM_TABLE with one fd per guest RAM region, then per queue
//!   SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE, SET_VRING_CALL,
//!   SET_VRING_KICK and SET_VRING_ENABLE;
//! - [`Connection::stop`] (device reset): GET_VRING_BASE per queue, which
//!   stops the backend's processing of that ring.

use std::os::unix::net::UnixStream;
use std::time::Duration;

use vhost::vhost_user::message::{
    VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// How long the backend may take to answer one request before the
/// connection counts as broken (a hung backend must not hang a vCPU).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The vhost-user-specific feature bit (30): the backend speaks protocol
/// features. Never offered to the guest.
pub const PROTOCOL_FEATURES_BIT: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// Why a vhost-user request failed.
#[derive(Debug, thiserror::Error)]
pub enum VhostUserError {
    /// The socket could not be configured.
    #[error("cannot configure the vhost-user socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The backend refused a request, answered nonsense, or is gone.
    #[error("vhost-user {request} failed: {source}")]
    Request {
        /// The request, e.g. "SET_MEM_TABLE".
        request: &'static str,
        /// What the vhost crate reported.
        #[source]
        source: vhost::Error,
    },
    /// A guest memory region is not backed by a file the backend could map.
    #[error("guest memory region at {0:#x} has no backing file to share")]
    UnsharedMemory(u64),
    /// A ring address is not in guest memory (the transport validated the
    /// rings, so this is a VMM bug rather than guest input).
    #[error("{ring} of queue {queue} at guest {addr:#x} is not in guest memory")]
    RingAddress {
        /// Queue index.
        queue: usize,
        /// Which ring.
        ring: &'static str,
        /// Its guest address.
        addr: u64,
    },
    /// A queue has no notification eventfd.
    #[error("queue {0} has no notification eventfd")]
    NoKick(usize),
}

fn request(request: &'static str) -> impl FnOnce(vhost::Error) -> VhostUserError {
    move |source| VhostUserError::Request { request, source }
}

/// A vhost-user connection after the handshake.
pub struct Connection {
    frontend: Frontend,
    backend_features: u64,
    protocol_features: VhostUserProtocolFeatures,
    queue_count: usize,
    started: bool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("backend_features", &self.backend_features)
            .field("protocol_features", &self.protocol_features)
            .field("queue_count", &self.queue_count)
            .field("started", &self.started)
            .finish()
    }
}

impl Connection {
    /// Takes ownership of the backend on `stream` and learns its features.
    pub fn handshake(stream: UnixStream, queue_count: usize) -> Result<Self, VhostUserError> {
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(REPLY_TIMEOUT)))
            .map_err(VhostUserError::Socket)?;
        let mut frontend = Frontend::from_stream(stream, queue_count as u64);
        frontend.set_owner().map_err(request("SET_OWNER"))?;
        let backend_features = frontend.get_features().map_err(request("GET_FEATURES"))?;
        let mut protocol_features = VhostUserProtocolFeatures::empty();
        if backend_features & PROTOCOL_FEATURES_BIT != 0 {
            let offered = frontend
                .get_protocol_features()
                .map_err(request("GET_PROTOCOL_FEATURES"))?;
            protocol_features = offered & VhostUserProtocolFeatures::REPLY_ACK;
            frontend
                .set_protocol_features(protocol_features)
                .map_err(request("SET_PROTOCOL_FEATURES"))?;
            if protocol_features.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
        }
        Ok(Connection {
            frontend,
            backend_features,
            protocol_features,
            queue_count,
            started: false,
        })
    }

    /// The virtio feature bits the backend offers (GET_FEATURES).
    pub fn backend_features(&self) -> u64 {
        self.backend_features
    }

    /// The protocol features both sides agreed on.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol_features
    }

    /// Whether the rings are running in the backend.
    pub fn is_started(&self) -> bool {
        self.started
    }

    /// Hands the backend the driver's features, guest memory and rings:
    /// `kicks[i]` is queue i's notification eventfd, `call` the irqfd.
    pub fn start(
        &mut self,
        driver_features: u64,
        mem: &GuestMemoryMmap,
        queues: &[Queue],
        kicks: &[EventFd],
        call: &EventFd,
    ) -> Result<(), VhostUserError> {
        let features = driver_features | (self.backend_features & PROTOCOL_FEATURES_BIT);
        self.frontend
            .set_features(features)
            .map_err(request("SET_FEATURES"))?;
        self.frontend
            .set_mem_table(&memory_regions(mem)?)
            .map_err(request("SET_MEM_TABLE"))?;
        for (index, queue) in queues.iter().enumerate() {
            let kick = kicks.get(index).ok_or(VhostUserError::NoKick(index))?;
            self.start_queue(index, queue, mem, kick, call)?;
        }
        self.started = true;
        Ok(())
    }

    fn start_queue(
        &mut self,
        index: usize,
        queue: &Queue,
        mem: &GuestMemoryMmap,
        kick: &EventFd,
        call: &EventFd,
    ) -> Result<(), VhostUserError> {
        let host_addr = |ring: &'static str, addr: u64| {
            mem.get_host_address(GuestAddress(addr))
                .map(|ptr| ptr as u64)
                .map_err(|_| VhostUserError::RingAddress {
                    queue: index,
                    ring,
                    addr,
                })
        };
        let rings = VringConfigData {
            queue_max_size: queue.max_size(),
            queue_size: queue.size(),
            flags: 0,
            desc_table_addr: host_addr("descriptor table", queue.desc_table())?,
            used_ring_addr: host_addr("used ring", queue.used_ring())?,
            avail_ring_addr: host_addr("available ring", queue.avail_ring())?,
            log_addr: None,
        };
        let f = &mut self.frontend;
        f.set_vring_num(index, queue.size())
            .map_err(request("SET_VRING_NUM"))?;
        f.set_vring_addr(index, &rings)
            .map_err(request("SET_VRING_ADDR"))?;
        f.set_vring_base(index, queue.next_avail())
            .map_err(request("SET_VRING_BASE"))?;
        f.set_vring_call(index, call)
            .map_err(request("SET_VRING_CALL"))?;
        f.set_vring_kick(index, kick)
            .map_err(request("SET_VRING_KICK"))?;
        // Without protocol features a ring runs once it has a kick fd; with
        // them it also needs enabling (vhost-user spec, "Ring states").
        if self.backend_features & PROTOCOL_FEATURES_BIT != 0 {
            f.set_vring_enable(index, true)
                .map_err(request("SET_VRING_ENABLE"))?;
        }
        Ok(())
    }

    /// Forgets the rings without telling the backend (it is gone).
    pub fn abandon(&mut self) {
        self.started = false;
    }

    /// Stops every ring (GET_VRING_BASE); the backend keeps its connection
    /// and can be started again. Stops at the first failure.
    pub fn stop(&mut self) -> Result<(), VhostUserError> {
        if !self.started {
            return Ok(());
        }
        self.started = false;
        for index in 0..self.queue_count {
            self.frontend
                .get_vring_base(index)
                .map_err(request("GET_VRING_BASE"))?;
        }
        Ok(())
    }
}

/// One SET_MEM_TABLE entry per guest RAM region: guest address, size, our
/// mapping's address, and the memfd with the region's offset in it.
pub fn memory_regions(
    mem: &GuestMemoryMmap,
) -> Result<Vec<VhostUserMemoryRegionInfo>, VhostUserError> {
    mem.iter()
        .map(|region| {
            VhostUserMemoryRegionInfo::from_guest_region(region).map_err(|_| {
                VhostUserError::UnsharedMemory(vm_memory::GuestMemoryRegion::start_addr(region).0)
            })
        })
        .collect()
}

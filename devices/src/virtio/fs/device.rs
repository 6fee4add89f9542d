//! [`Fs`]: the virtio-fs device as the transport sees it, served by a
//! vhost-user backend.
//!
//! Two queues: the high-priority queue (FUSE interrupts and forgets) and
//! one request queue. The VMM never looks inside them: at DRIVER_OK the
//! device hands the backend guest memory, the rings, each queue's
//! notification eventfd (the ioeventfd KVM writes) and the slot's irqfd,
//! so requests and completions go guest <-> backend directly.
//!
//! Feature negotiation: the guest is offered VIRTIO_F_VERSION_1 plus those
//! of the backend's ring features this transport supports (indirect
//! descriptors, event index); the driver's choice goes to the backend with
//! SET_FEATURES at activation, together with the vhost-user protocol bit.
//!
//! A backend that fails (a refused request, a closed socket, a virtiofsd
//! that exited: [`Fs::backend_failed`]) makes the device fail for good: the
//! next queue notification or activation returns an error, which the
//! transport answers with DEVICE_NEEDS_RESET and a configuration-change
//! interrupt.

use std::os::unix::net::UnixStream;

use tracing::{debug, error, warn};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_FS;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use super::config::{config_space, TagError, CONFIG_SPACE_SIZE};
use super::vhost_user::{Connection, VhostUserError};
use crate::virtio::device::{
    read_config_bytes, ActivateContext, ActivateError, DeviceError, DirectNotifiers, VirtioDevice,
};

/// Request queues offered to the guest (virtiofsd serves one).
pub const NUM_REQUEST_QUEUES: u32 = 1;
/// Maximum size of each queue.
pub const QUEUE_SIZE: u16 = 1024;
/// The high-priority queue plus the request queues.
const QUEUE_SIZES: &[u16] = &[QUEUE_SIZE; 1 + NUM_REQUEST_QUEUES as usize];

/// Ring features passed through to the guest when the backend offers them
/// (the backend implements them; the transport only validates the rings).
const RING_FEATURES: u64 = (1 << VIRTIO_RING_F_INDIRECT_DESC) | (1 << VIRTIO_RING_F_EVENT_IDX);

/// Why a virtio-fs device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag is unusable.
    #[error(transparent)]
    Tag(#[from] TagError),
    /// The vhost-user handshake failed.
    #[error(transparent)]
    VhostUser(#[from] VhostUserError),
    /// The backend does not speak virtio 1.x.
    #[error("the vhost-user backend does not offer VIRTIO_F_VERSION_1 (features {0:#x})")]
    NoVersion1(u64),
}

/// The virtio-fs device.
pub struct Fs {
    tag: String,
    config: [u8; CONFIG_SPACE_SIZE],
    connection: Connection,
    avail_features: u64,
    acked_features: u64,
    notifiers: Option<DirectNotifiers>,
    /// Why the backend can no longer serve the device, once it failed.
    failure: Option<String>,
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs")
            .field("tag", &self.tag)
            .field("avail_features", &self.avail_features)
            .field("acked_features", &self.acked_features)
            .field("connection", &self.connection)
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

impl Fs {
    /// A virtio-fs device named `tag` for the vhost-user backend connected
    /// on `stream` (handshake included).
    pub fn new(tag: &str, stream: UnixStream) -> Result<Self, FsError> {
        let config = config_space(tag, NUM_REQUEST_QUEUES)?;
        let connection = Connection::handshake(stream, QUEUE_SIZES.len())?;
        let backend = connection.backend_features();
        let version_1 = 1u64 << VIRTIO_F_VERSION_1;
        if backend & version_1 == 0 {
            return Err(FsError::NoVersion1(backend));
        }
        Ok(Fs {
            tag: tag.to_string(),
            config,
            connection,
            avail_features: version_1 | (backend & RING_FEATURES),
            acked_features: 0,
            notifiers: None,
            failure: None,
        })
    }

    /// The share's tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The vhost-user connection (tests inspect it).
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Records that the backend can no longer serve the device (it exited,
    /// or its connection broke). The caller then delivers a queue
    /// notification so the transport learns it and asks for a reset.
    pub fn backend_failed(&mut self, why: impl Into<String>) {
        let why = why.into();
        error!(tag = %self.tag, "virtio-fs backend failed: {why}");
        if self.failure.is_none() {
            self.failure = Some(why);
        }
    }

    /// Why the backend failed, if it did.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    fn fail(&mut self, err: &VhostUserError) -> String {
        let message = err.to_string();
        self.backend_failed(message.clone());
        message
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        debug!(
            offset,
            len = data.len(),
            "virtio-fs: config write ignored (read-only)"
        );
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.connection.is_started() {
            return Err(ActivateError::AlreadyActive);
        }
        if let Some(why) = &self.failure {
            return Err(ActivateError::Backend(why.clone()));
        }
        if ctx.queues.len() != QUEUE_SIZES.len() {
            return Err(ActivateError::QueueCount {
                expected: QUEUE_SIZES.len(),
                actual: ctx.queues.len(),
            });
        }
        let Some(notifiers) = &self.notifiers else {
            return Err(ActivateError::Backend(
                "the slot's eventfds were never handed over".into(),
            ));
        };
        let result = self.connection.start(
            self.acked_features,
            &ctx.mem,
            &ctx.queues,
            &notifiers.kicks,
            &notifiers.call,
        );
        match result {
            Ok(()) => {
                debug!(tag = %self.tag, features = self.acked_features, "virtio-fs: backend started");
                Ok(())
            }
            Err(err) => Err(ActivateError::Backend(self.fail(&err))),
        }
    }

    fn is_activated(&self) -> bool {
        self.connection.is_started()
    }

    fn reset(&mut self) {
        if self.failure.is_some() {
            // The backend is gone: there is nothing to stop.
            self.connection.abandon();
        } else if let Err(err) = self.connection.stop() {
            warn!(tag = %self.tag, "virtio-fs: stopping the backend's rings failed: {err}");
            self.fail(&err);
        }
        self.acked_features = 0;
    }

    fn process_queue(&mut self, index: usize) -> Result<(), DeviceError> {
        if let Some(why) = &self.failure {
            return Err(DeviceError::Backend(why.clone()));
        }
        let Some(kick) = self.notifiers.as_ref().and_then(|n| n.kicks.get(index)) else {
            return Err(DeviceError::UnknownQueue(index));
        };
        // Only reached when a notification arrived through the transport
        // rather than the ioeventfd: pass it on to the backend.
        if self.connection.is_started() {
            kick.write(1).map_err(|e| {
                DeviceError::Backend(format!(
                    "cannot forward a notification of queue {index}: {e}"
                ))
            })?;
        }
        Ok(())
    }

    fn wants_direct_notifiers(&self) -> bool {
        true
    }

    fn set_direct_notifiers(&mut self, notifiers: DirectNotifiers) {
        self.notifiers = Some(notifiers);
    }
}

//! Wiring: reaper, event queue, Task service and events method on one ttrpc
//! server, and the run loop until Shutdown or SIGTERM/SIGINT.

use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use crate::events::{self, EventQueue};
use crate::reaper::{Reaper, Wake};
use crate::service::{Agent, Settings, TaskService};

/// Where the agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Unix(PathBuf),
    Vsock(u32),
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("bad listen address {0:?}: expected unix:PATH or vsock:PORT")]
    BadAddress(String),
    #[error("setting up signal handling and reaping: {0}")]
    Reaper(std::io::Error),
    #[error("creating the state directory: {0}")]
    State(std::io::Error),
    #[error("ttrpc server on {addr}: {source}")]
    Ttrpc { addr: String, source: ttrpc::Error },
}

impl Listen {
    /// Parses `unix:PATH` or `vsock:PORT`.
    pub fn parse(s: &str) -> Result<Self, ServerError> {
        let bad = || ServerError::BadAddress(s.to_string());
        if let Some(p) = s.strip_prefix("unix:") {
            let p = p.strip_prefix("//").unwrap_or(p);
            if p.is_empty() {
                return Err(bad());
            }
            return Ok(Self::Unix(PathBuf::from(p)));
        }
        if let Some(port) = s.strip_prefix("vsock:") {
            return port.parse().map(Self::Vsock).map_err(|_| bad());
        }
        Err(bad())
    }

    /// The address in ttrpc's syntax.
    pub fn ttrpc_addr(&self) -> String {
        match self {
            Self::Unix(p) => format!("unix://{}", p.display()),
            Self::Vsock(port) => format!("vsock://-1:{port}"),
        }
    }
}

/// Options of one agent run.
pub struct RunOptions {
    pub listen: Listen,
    pub settings: Settings,
    /// PID 1 in the VM: no subreaper needed (PID 1 reaps everything).
    pub init: bool,
}

/// Most ttrpc worker threads per connection (blocking Wait and Next calls
/// each hold one).
const MAX_THREADS_PER_CONNECTION: usize = 256;

/// Serves until Shutdown or SIGTERM/SIGINT; all containers are removed
/// before it returns.
pub fn run(opts: RunOptions) -> Result<(), ServerError> {
    let reaper = Reaper::install(!opts.init).map_err(ServerError::Reaper)?;
    let queue = Arc::new(EventQueue::new(events::DEFAULT_CAPACITY));
    let (tx, rx) = mpsc::channel();
    let agent =
        Agent::new(opts.settings, reaper.clone(), queue.clone(), tx).map_err(ServerError::State)?;
    {
        let agent = agent.clone();
        reaper
            .spawn(move |w| match w {
                Wake::Terminate => {
                    tracing::info!("termination signal received");
                    agent.request_shutdown();
                }
            })
            .map_err(ServerError::Reaper)?;
    }
    let addr = opts.listen.ttrpc_addr();
    if let Listen::Unix(p) = &opts.listen {
        let _ = std::fs::remove_file(p);
    }
    let ttrpc_err = |source| ServerError::Ttrpc {
        addr: addr.clone(),
        source,
    };
    let mut server = ttrpc::Server::new()
        .bind(&addr)
        .map_err(ttrpc_err)?
        .register_service(containerd_shim_protos::create_task(Arc::new(
            TaskService::new(agent.clone()),
        )))
        .register_service(events::service(queue))
        .set_thread_count_default(4)
        .set_thread_count_min(2)
        .set_thread_count_max(MAX_THREADS_PER_CONNECTION);
    server.start().map_err(ttrpc_err)?;
    tracing::info!(%addr, "guest agent serving");
    if opts.init {
        // "Sandbox ready": the VMM's boot timer measures build -> this point.
        if let Err(e) = crate::guest_root::signal_boot_timer() {
            tracing::debug!("boot-timer write: {e}");
        }
    }

    let _ = rx.recv();
    // Let the Shutdown reply leave before the process goes away.
    std::thread::sleep(Duration::from_millis(100));
    agent.cleanup_all();
    if let Listen::Unix(p) = &opts.listen {
        let _ = std::fs::remove_file(p);
    }
    tracing::info!("guest agent stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            Listen::parse("unix:/run/a.sock").unwrap(),
            Listen::Unix("/run/a.sock".into())
        );
        assert_eq!(
            Listen::parse("unix:///run/a.sock").unwrap(),
            Listen::Unix("/run/a.sock".into())
        );
        assert_eq!(Listen::parse("vsock:1024").unwrap(), Listen::Vsock(1024));
        assert_eq!(Listen::Vsock(1024).ttrpc_addr(), "vsock://-1:1024");
        assert_eq!(Listen::Unix("/a".into()).ttrpc_addr(), "unix:///a");
        for bad in ["", "unix:", "vsock:x", "tcp:1", "/run/a.sock"] {
            assert!(Listen::parse(bad).is_err(), "{bad}");
        }
    }
}

//! `guest-agent`: the sandbox VM's init and container manager.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use guest_agent::server::{self, Listen, RunOptions};
use guest_agent::service::Settings;

#[derive(Parser, Debug)]
#[command(
    name = "guest-agent",
    version,
    about = "Sandbox guest agent (containerd Task API over ttrpc)"
)]
struct Cli {
    /// unix:PATH or vsock:PORT (default in init mode: vsock:1024).
    #[arg(long)]
    listen: Option<String>,
    /// Act as PID 1 (implied when pid is 1 and --listen is absent).
    #[arg(long)]
    init: bool,
    /// Hostname to set in init mode (else kernel cmdline agent.hostname=).
    #[arg(long)]
    hostname: Option<String>,
    /// Directory for container state, shadow bundles and console sockets.
    #[arg(long, default_value = "/run/guest-agent")]
    state_dir: PathBuf,
    /// Parent cgroup of the containers' cgroups.
    #[arg(long, default_value = "vmm-agent")]
    cgroup_root: String,
    /// Log filter (error, warn, info, debug, trace or an env-filter string).
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if matches!(
        args.get(1).map(String::as_str),
        Some(guest_agent::lc_helper::CREATE | guest_agent::lc_helper::EXEC)
    ) {
        return guest_agent::lc_helper::main(&args[1..]);
    }
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Log to a close-on-exec duplicate of stderr rather than fd 2:
    // libcontainer's forked helpers keep logging after they have put the
    // container's stderr on fd 2, and those lines must not end up in the
    // container's output. The writer takes no lock, which matters in the
    // forked children of this multithreaded process.
    let log = match log_file() {
        Ok(f) => Arc::new(f),
        Err(e) => {
            eprintln!("guest-agent: cannot duplicate stderr for logging: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(move || LogWriter(log.clone()))
        .with_ansi(false)
        .init();

    let init = cli.init || (std::process::id() == 1 && cli.listen.is_none());
    let listen = match (&cli.listen, init) {
        (Some(l), _) => Listen::parse(l),
        (None, true) => Ok(Listen::Vsock(1024)),
        (None, false) => {
            eprintln!("guest-agent: --listen is required unless running as init");
            return ExitCode::from(2);
        }
    };
    let listen = match listen {
        Ok(l) => l,
        Err(e) => {
            eprintln!("guest-agent: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = guest_agent::validate::id("cgroup root", &cli.cgroup_root) {
        eprintln!("guest-agent: --cgroup-root: {e}");
        return ExitCode::from(2);
    }
    if init {
        // First, while nothing is mounted yet: containers cannot pivot_root
        // away from the initramfs itself.
        match guest_agent::guest_root::make_root_pivotable() {
            Ok(true) => tracing::info!("initramfs root moved onto a bind mount (pivotable)"),
            Ok(false) => {}
            Err(e) => tracing::error!("{e}; containers fall back to MS_MOVE + chroot"),
        }
        guest_agent::init::setup(cli.hostname.as_deref());
    }
    // Absolute: libcontainer briefly changes the process's working
    // directory while it sets up a console socket.
    let state_dir = match std::path::absolute(&cli.state_dir) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("guest-agent: --state-dir {}: {e}", cli.state_dir.display());
            return ExitCode::from(2);
        }
    };
    let result = server::run(RunOptions {
        listen,
        settings: Settings {
            state_dir,
            cgroup_root: cli.cgroup_root,
        },
        init,
    });
    if init {
        if let Err(e) = &result {
            tracing::error!("{e}");
        }
        guest_agent::init::power_off();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn log_file() -> std::io::Result<File> {
    let fd: OwnedFd = std::io::stderr().as_fd().try_clone_to_owned()?;
    Ok(File::from(fd))
}

/// Unbuffered, lock-free writer on the log fd.
struct LogWriter(Arc<File>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        (&*self.0).write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

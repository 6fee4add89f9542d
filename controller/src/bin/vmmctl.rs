//! `vmmctl`: operate microVMs from the command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use controller::bench::{bench_boot, format_report, BootBench};
use controller::launch::{self, LaunchOptions, DEFAULT_CMDLINE};
use vmm_core::{ConsoleConfig, KvmInfo, VmConfig};

/// Operate microVMs: inspect KVM, boot a guest, measure boot latency.
#[derive(Parser, Debug)]
#[command(name = "vmmctl", version, about, long_about = None)]
struct Cli {
    /// Log filter (tracing env-filter syntax), e.g. `info` or `vmm_core=debug`.
    /// Logs go to stderr. Also read from RUST_LOG.
    #[arg(long, global = true, default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the KVM API version, capabilities, vCPU limits and backend kind,
    /// and whether a standard Linux guest kernel can boot here.
    KvmInfo,
    /// Boot a guest and attach its serial console. Exits 0 when the guest
    /// powers off or reboots; non-zero with a one-line reason otherwise.
    Run(RunArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Connect to a guest vsock port through a VM's hybrid-vsock socket and
    /// relay stdin/stdout (like `socat - UNIX:PATH` plus the CONNECT handshake).
    VsockConnect(VsockConnectArgs),
    /// Drive a guest agent's Task API (containerd.task.v3): run a container
    /// from a bundle, exec, state, stats, pause/resume, kill, delete,
    /// events, shutdown. ADDRESS is `unix:PATH` (an agent started with
    /// `--listen unix:PATH`) or `hvsock:UDS[:PORT]` (the socket a VM was
    /// started with, `run --vsock cid=N,uds=UDS`; PORT defaults to the
    /// agent's 1024). Paths such as --bundle are as the agent sees them.
    Agent(controller::agent_cli::AgentArgs),
}

#[derive(Args, Debug)]
struct VsockConnectArgs {
    /// The VM's vsock unix socket (the `uds=` of `run --vsock`).
    #[arg(long)]
    uds: PathBuf,
    /// Guest port.
    #[arg(long)]
    port: u32,
    /// Keep retrying this many seconds while the socket or the guest
    /// listener is not up yet.
    #[arg(long, default_value_t = 0)]
    wait: u64,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Guest kernel: ELF vmlinux (PVH or 64-bit entry) or bzImage.
    #[arg(long)]
    kernel: PathBuf,
    /// Initial ramdisk (cpio, optionally compressed).
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = DEFAULT_CMDLINE)]
    cmdline: String,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128)]
    memory: u64,
    /// Serial console: `stdio` (output to stdout, input from stdin),
    /// `file:PATH` (output appended to PATH), or `none`.
    #[arg(long, default_value = "stdio", value_parser = parse_console)]
    console: ConsoleConfig,
    /// Print `boot-time-ms:` (VM build start to the guest's boot-timer
    /// write) and `vmm-setup-ms:` (vmmctl start to the first KVM_RUN).
    #[arg(long)]
    boot_timer: bool,
    /// Boot even on a KVM backend that cannot run standard guest kernels (PVM).
    #[arg(long)]
    force: bool,
    /// Attach a virtio-rng device (entropy from the host's getrandom).
    #[arg(long)]
    rng: bool,
    /// Attach a virtio-blk disk backed by a raw image: `PATH` or `PATH,ro`.
    /// Repeat for more disks; the guest sees them as vda, vdb, ... in order.
    #[arg(long, value_name = "PATH[,ro]")]
    disk: Vec<vmm_core::DiskConfig>,
    /// Attach a virtio-vsock device, hybrid unix-socket backend:
    /// `cid=N,uds=PATH`. Host clients connect to PATH and send
    /// `CONNECT <port>\n`; guest connections to host port P go to `PATH_P`.
    #[arg(long, value_name = "cid=N,uds=PATH")]
    vsock: Option<vmm_core::VsockConfig>,
    /// Attach a virtio-net device backed by a tap (created if missing):
    /// `tap=NAME[,mac=xx:xx:xx:xx:xx:xx][,netns=PATH]`. Repeatable.
    #[arg(long, value_name = "tap=NAME[,mac=..][,netns=PATH]")]
    net: Vec<vmm_core::NetConfig>,
    /// Share a host directory with the guest over virtio-fs: `tag=T,dir=PATH`
    /// (the guest runs `mount -t virtiofs T /mnt`; T is 1 to 36 bytes).
    /// vmmctl starts one virtiofsd per share (found through $VMM_VIRTIOFSD,
    /// PATH or ~/.cargo/bin; `make deps` installs it) and stops it when the
    /// VM ends. Repeatable, with distinct tags.
    #[arg(long, value_name = "tag=T,dir=PATH")]
    fs: Vec<vmm_core::FsConfig>,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Boot latency (min/p50/p99) and VMM memory overhead.
    Boot(BenchBootArgs),
}

#[derive(Args, Debug)]
struct BenchBootArgs {
    /// Runs per measurement.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Linux guest kernel for the "VM build -> guest init" measurement
    /// (skipped without it, or where KVM cannot boot standard kernels).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initramfs whose init writes the boot-timer signal.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Guest command line for the Linux runs.
    #[arg(
        long,
        default_value = "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.dumbkbd quiet"
    )]
    cmdline: String,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128)]
    memory: u64,
    /// vCPUs for the Linux runs.
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Seconds a Linux guest may take to reach init.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Run the Linux measurement even where the backend cannot boot standard guests.
    #[arg(long)]
    force: bool,
}

fn parse_console(s: &str) -> Result<ConsoleConfig, String> {
    match s {
        "stdio" => Ok(ConsoleConfig::Stdio),
        "none" => Ok(ConsoleConfig::None),
        _ => match s.strip_prefix("file:") {
            Some(path) if !path.is_empty() => Ok(ConsoleConfig::File(path.into())),
            _ => Err(format!(
                "invalid console `{s}`: expected stdio, none or file:PATH"
            )),
        },
    }
}

fn init_logging(filter: &str) {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| filter.to_string());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn main() -> ExitCode {
    let process_start = Instant::now();
    let cli = Cli::parse();
    init_logging(&cli.log);
    match cli.command {
        Command::KvmInfo => kvm_info(),
        Command::Run(args) => run(process_start, args),
        Command::Bench(BenchCommand::Boot(args)) => bench(args),
        Command::VsockConnect(args) => vsock_connect(args),
        Command::Agent(args) => match controller::agent_cli::run(args) {
            Ok(code) => code,
            Err(e) => fail(format!("{e:#}")),
        },
    }
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("vmmctl: error: {message}");
    ExitCode::FAILURE
}

fn kvm_info() -> ExitCode {
    match kvm_ioctls::Kvm::new() {
        Ok(kvm) => {
            print!("{}", KvmInfo::probe(&kvm));
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("cannot open /dev/kvm: {e}")),
    }
}

fn run(process_start: Instant, args: RunArgs) -> ExitCode {
    let config = VmConfig {
        vcpus: args.cpus,
        memory_mib: args.memory,
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        console: args.console.clone(),
        rng: args.rng,
        disks: args.disk,
        vsock: args.vsock,
        nets: args.net,
        fs: args.fs,
    };
    let _raw = (args.console == ConsoleConfig::Stdio).then(terminal::RawMode::enter);
    let options = LaunchOptions {
        force: args.force,
        boot_timer: args.boot_timer,
    };
    let result = launch::run(process_start, config, options);
    drop(_raw);
    match result {
        Ok(reason) => {
            tracing::info!(%reason, "guest ended");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn vsock_connect(args: VsockConnectArgs) -> ExitCode {
    let stream = match controller::hybrid_vsock::connect_with_retry(
        &args.uds,
        args.port,
        Duration::from_secs(args.wait),
    ) {
        Ok(stream) => stream,
        Err(e) => return fail(e),
    };
    match controller::hybrid_vsock::relay_stdio(stream) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(format!("vsock relay: {e}")),
    }
}

fn bench(args: BenchBootArgs) -> ExitCode {
    let cfg = BootBench {
        runs: args.runs,
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        memory_mib: args.memory,
        vcpus: args.cpus,
        timeout: Duration::from_secs(args.timeout),
        force: args.force,
    };
    let backend = match kvm_ioctls::Kvm::new() {
        Ok(kvm) => KvmInfo::probe(&kvm).backend.to_string(),
        Err(e) => return fail(format!("cannot open /dev/kvm: {e}")),
    };
    match bench_boot(&cfg) {
        Ok(report) => {
            print!("{}", format_report(&report, &backend));
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

mod terminal {
    //! Raw mode for an interactive console, restored on drop.
    use std::io::IsTerminal;
    use vmm_sys_util::terminal::Terminal;

    pub struct RawMode {
        active: bool,
    }

    impl RawMode {
        pub fn enter() -> Self {
            let stdin = std::io::stdin();
            let active = stdin.is_terminal() && stdin.lock().set_raw_mode().is_ok();
            RawMode { active }
        }
    }

    impl Drop for RawMode {
        fn drop(&mut self) {
            if self.active {
                let _ = std::io::stdin().lock().set_canon_mode();
            }
        }
    }
}

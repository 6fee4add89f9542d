//! `vmmctl agent`: drives a guest agent's Task API from the host, over the
//! agent's unix socket (`--listen unix:PATH`) or a VMM's hybrid vsock socket.
//!
//! An operator and test tool: `run` creates, starts, streams, waits for and
//! deletes a container from a bundle the agent can see; `exec` runs one more
//! process in a running container; the rest are single calls. The stdio
//! streams are sockets this tool listens on and the agent dials (see
//! docs/agent.md): a unix socket in a private temporary directory, or, over
//! hybrid vsock, `<uds>_<port>` which the VMM connects guest dials of
//! `vsock://2:<port>` to.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Args, Subcommand};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::MessageField;
use guest_agent::client::{api, ctx, AgentClient, StdioListener};

/// The vsock port the agent listens on inside the VM.
const AGENT_VSOCK_PORT: u32 = 1024;

/// Arguments of `vmmctl agent`.
#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Where the agent listens: unix:PATH or hvsock:UDS[:PORT].
    #[arg(long, short = 'a', value_name = "ADDRESS")]
    address: String,
    /// Seconds to keep retrying the first connection (the VM may still be booting).
    #[arg(long, default_value_t = 30)]
    connect_timeout: u64,
    /// Seconds one Task API call may take (Wait is not limited).
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    #[command(subcommand)]
    command: AgentCommand,
}

/// One Task API action.
#[derive(Subcommand, Debug)]
pub enum AgentCommand {
    /// Create, start, stream the output of, wait for and delete a container;
    /// exits with the container's exit status.
    Run {
        /// Container id.
        #[arg(long)]
        id: String,
        /// OCI bundle directory (config.json + rootfs), as the agent sees it.
        #[arg(long)]
        bundle: String,
        /// Forward this tool's stdin to the container (EOF closes it).
        #[arg(long)]
        stdin: bool,
        /// Leave the container after it exits (no Delete).
        #[arg(long)]
        keep: bool,
    },
    /// Run one more process in a running container; exits with its status.
    Exec {
        /// Container id.
        #[arg(long)]
        id: String,
        /// Exec id (default: exec-<pid of this tool>).
        #[arg(long)]
        exec_id: Option<String>,
        /// Forward this tool's stdin to the process.
        #[arg(long)]
        stdin: bool,
        /// The command line.
        #[arg(required = true, last = true)]
        args: Vec<String>,
    },
    /// Print a container's (or an exec's) state.
    State {
        #[arg(long)]
        id: String,
        #[arg(long, default_value = "")]
        exec_id: String,
    },
    /// Send a signal to a container's init (or every process with --all).
    Kill {
        #[arg(long)]
        id: String,
        #[arg(long, default_value_t = 15)]
        signal: u32,
        #[arg(long)]
        all: bool,
    },
    /// Print a container's cgroup metrics (memory, pids, cpu).
    Stats {
        #[arg(long)]
        id: String,
    },
    /// Freeze every process of a container (cgroup freezer).
    Pause {
        #[arg(long)]
        id: String,
    },
    /// Thaw a paused container.
    Resume {
        #[arg(long)]
        id: String,
    },
    /// Delete a stopped container.
    Delete {
        #[arg(long)]
        id: String,
    },
    /// Print queued events (topic and type) until none arrives for --wait seconds.
    Events {
        #[arg(long, default_value_t = 1)]
        wait: u64,
    },
    /// Ask the agent to shut down (in a VM: the VM powers off).
    Shutdown,
}

/// Where the agent is, parsed from `--address`.
enum Address {
    Unix(PathBuf),
    HybridVsock { uds: PathBuf, port: u32 },
}

impl Address {
    fn parse(text: &str) -> Result<Self> {
        if let Some(rest) = text.strip_prefix("unix:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                bail!("address {text:?}: empty unix socket path");
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = text.strip_prefix("hvsock:") {
            let rest = rest.strip_prefix("//").unwrap_or(rest);
            let (uds, port) = match rest.rsplit_once(':') {
                Some((uds, port)) => (
                    uds,
                    port.parse::<u32>()
                        .with_context(|| format!("address {text:?}: bad port {port:?}"))?,
                ),
                None => (rest, AGENT_VSOCK_PORT),
            };
            if uds.is_empty() {
                bail!("address {text:?}: empty hybrid vsock socket path");
            }
            return Ok(Self::HybridVsock {
                uds: PathBuf::from(uds),
                port,
            });
        }
        bail!("address {text:?}: expected unix:PATH or hvsock:UDS[:PORT]")
    }

    fn connect_once(&self) -> Result<AgentClient> {
        Ok(match self {
            Self::Unix(path) => AgentClient::connect_unix(path)?,
            Self::HybridVsock { uds, port } => AgentClient::connect_hybrid_vsock(uds, *port)?,
        })
    }

    /// Connects, retrying until `timeout` (a VM's agent needs a moment).
    fn connect(&self, timeout: Duration) -> Result<AgentClient> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.connect_once() {
                Ok(client) => return Ok(client),
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!("agent not reachable yet: {e:#}");
                    thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e.context("the agent did not answer in time")),
            }
        }
    }
}

/// The host end of one stdio stream: a socket the agent dials (the
/// client module's listener), and the URL to give it.
struct StdioEndpoint {
    listener: StdioListener,
    url: String,
}

impl StdioEndpoint {
    fn bind(address: &Address, private_dir: &Path, name: &str, index: u32) -> Result<Self> {
        let listener = match address {
            Address::Unix(_) => StdioListener::bind(private_dir, name).with_context(|| {
                format!("binding the {name} socket in {}", private_dir.display())
            })?,
            Address::HybridVsock { uds, .. } => {
                // Guest dials of vsock://2:P arrive at <uds>_P. Pick a port
                // from this process id and skip ones already taken.
                let base = 20_000 + (std::process::id() % 10_000) * 4 + index;
                let mut bound = None;
                for attempt in 0..64 {
                    match StdioListener::bind_hybrid_vsock(uds, base + attempt * 4) {
                        Ok(listener) => {
                            bound = Some(listener);
                            break;
                        }
                        Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
                        Err(e) => {
                            return Err(e).with_context(|| {
                                format!("binding {}_{}", uds.display(), base + attempt * 4)
                            })
                        }
                    }
                }
                bound.ok_or_else(|| anyhow!("no free hybrid vsock port for the {name} stream"))?
            }
        };
        let url = listener.url();
        Ok(Self { listener, url })
    }

    fn accept(&self, timeout: Duration) -> io::Result<UnixStream> {
        self.listener.accept_timeout(timeout)
    }

    /// Copies what the agent sends to `out` until EOF, in a thread.
    fn copy_to(
        self,
        mut out: impl Write + Send + 'static,
        timeout: Duration,
    ) -> JoinHandle<io::Result<u64>> {
        thread::spawn(move || {
            let mut stream = self.accept(timeout)?;
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0u64;
            loop {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    return Ok(total);
                }
                out.write_all(&buf[..n])?;
                out.flush()?;
                total += n as u64;
            }
        })
    }

    /// Copies this tool's stdin to the agent, then closes (EOF), in a thread.
    fn feed_stdin(self, timeout: Duration) -> JoinHandle<io::Result<u64>> {
        thread::spawn(move || {
            let mut stream = self.accept(timeout)?;
            let copied = io::copy(&mut io::stdin().lock(), &mut stream)?;
            stream.shutdown(std::net::Shutdown::Write)?;
            Ok(copied)
        })
    }
}

/// The stdio of one process: the URLs for the request and the copy threads.
struct ProcessIo {
    stdin_url: String,
    stdout_url: String,
    stderr_url: String,
    threads: Vec<(&'static str, JoinHandle<io::Result<u64>>)>,
}

impl ProcessIo {
    fn open(
        address: &Address,
        private_dir: &Path,
        with_stdin: bool,
        timeout: Duration,
    ) -> Result<Self> {
        let stdout = StdioEndpoint::bind(address, private_dir, "stdout", 0)?;
        let stderr = StdioEndpoint::bind(address, private_dir, "stderr", 1)?;
        let stdin = if with_stdin {
            Some(StdioEndpoint::bind(address, private_dir, "stdin", 2)?)
        } else {
            None
        };
        let mut io = Self {
            stdin_url: stdin.as_ref().map(|s| s.url.clone()).unwrap_or_default(),
            stdout_url: stdout.url.clone(),
            stderr_url: stderr.url.clone(),
            threads: Vec::new(),
        };
        io.threads
            .push(("stdout", stdout.copy_to(io::stdout(), timeout)));
        io.threads
            .push(("stderr", stderr.copy_to(io::stderr(), timeout)));
        if let Some(stdin) = stdin {
            io.threads.push(("stdin", stdin.feed_stdin(timeout)));
        }
        Ok(io)
    }

    /// Waits for the output streams to reach EOF (the stdin feeder is left
    /// alone: it may be blocked on this tool's terminal).
    fn finish(self) -> Result<()> {
        for (name, handle) in self.threads {
            if name == "stdin" {
                continue;
            }
            handle
                .join()
                .map_err(|_| anyhow!("{name} copy thread panicked"))?
                .with_context(|| format!("copying the process's {name}"))?;
        }
        Ok(())
    }
}

/// Exit status of the tool for a process exit status (0-255 pass through).
fn exit_code(status: u32) -> ExitCode {
    ExitCode::from(u8::try_from(status).unwrap_or(255))
}

/// Runs one `vmmctl agent` command; the exit code is the process's exit
/// status for `run` and `exec`, else success.
pub fn run(cli: AgentArgs) -> Result<ExitCode> {
    let address = Address::parse(&cli.address)?;
    let call = Duration::from_secs(cli.timeout);
    let agent = address.connect(Duration::from_secs(cli.connect_timeout))?;
    let task = agent.task();
    let private_dir = tempfile::Builder::new()
        .prefix("agent-ctl.")
        .tempdir()
        .context("creating a private directory for the stdio sockets")?;

    match cli.command {
        AgentCommand::Run {
            id,
            bundle,
            stdin,
            keep,
        } => {
            let io = ProcessIo::open(&address, private_dir.path(), stdin, call)?;
            let mut req = api::CreateTaskRequest::new();
            req.id = id.clone();
            req.bundle = bundle;
            req.stdin = io.stdin_url.clone();
            req.stdout = io.stdout_url.clone();
            req.stderr = io.stderr_url.clone();
            task.create(ctx(call), &req)
                .rpc(|| format!("Create {id}"))?;
            let mut start = api::StartRequest::new();
            start.id = id.clone();
            task.start(ctx(call), &start)
                .rpc(|| format!("Start {id}"))?;
            let status = wait(task, &id, "")?;
            io.finish()?;
            if !keep {
                let mut del = api::DeleteRequest::new();
                del.id = id.clone();
                task.delete(ctx(call), &del)
                    .rpc(|| format!("Delete {id}"))?;
            }
            Ok(exit_code(status))
        }
        AgentCommand::Exec {
            id,
            exec_id,
            stdin,
            args,
        } => {
            let exec_id = exec_id.unwrap_or_else(|| format!("exec-{}", std::process::id()));
            let io = ProcessIo::open(&address, private_dir.path(), stdin, call)?;
            let process = serde_json::json!({
                "args": args,
                "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "cwd": "/",
                "user": {"uid": 0, "gid": 0},
                "terminal": false,
            });
            let mut spec = Any::new();
            spec.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process".into();
            spec.value = serde_json::to_vec(&process)?;
            let mut req = api::ExecProcessRequest::new();
            req.id = id.clone();
            req.exec_id = exec_id.clone();
            req.stdin = io.stdin_url.clone();
            req.stdout = io.stdout_url.clone();
            req.stderr = io.stderr_url.clone();
            req.spec = MessageField::some(spec);
            task.exec(ctx(call), &req)
                .rpc(|| format!("Exec {exec_id} in {id}"))?;
            let mut start = api::StartRequest::new();
            start.id = id.clone();
            start.exec_id = exec_id.clone();
            task.start(ctx(call), &start)
                .rpc(|| format!("Start {exec_id}"))?;
            let status = wait(task, &id, &exec_id)?;
            io.finish()?;
            let mut del = api::DeleteRequest::new();
            del.id = id;
            del.exec_id = exec_id.clone();
            task.delete(ctx(call), &del)
                .rpc(|| format!("Delete {exec_id}"))?;
            Ok(exit_code(status))
        }
        AgentCommand::State { id, exec_id } => {
            let mut req = api::StateRequest::new();
            req.id = id.clone();
            req.exec_id = exec_id;
            let state = task.state(ctx(call), &req).rpc(|| format!("State {id}"))?;
            println!(
                "id={} exec_id={} pid={} status={:?} exit_status={} bundle={}",
                state.id,
                state.exec_id,
                state.pid,
                state.status.enum_value_or_default(),
                state.exit_status,
                state.bundle
            );
            Ok(ExitCode::SUCCESS)
        }
        AgentCommand::Kill { id, signal, all } => {
            let mut req = api::KillRequest::new();
            req.id = id.clone();
            req.signal = signal;
            req.all = all;
            task.kill(ctx(call), &req).rpc(|| format!("Kill {id}"))?;
            Ok(ExitCode::SUCCESS)
        }
        AgentCommand::Stats { id } => {
            let mut req = api::StatsRequest::new();
            req.id = id.clone();
            let res = task.stats(ctx(call), &req).rpc(|| format!("Stats {id}"))?;
            let any = res
                .stats
                .into_option()
                .ok_or_else(|| anyhow!("Stats {id}: the reply carries no metrics"))?;
            println!("{}", format_metrics(&any)?);
            Ok(ExitCode::SUCCESS)
        }
        AgentCommand::Pause { id } => {
            let mut req = api::PauseRequest::new();
            req.id = id.clone();
            task.pause(ctx(call), &req).rpc(|| format!("Pause {id}"))?;
            Ok(ExitCode::SUCCESS)
        }
        AgentCommand::Resume { id } => {
            let mut req = api::ResumeRequest::new();
            req.id = id.clone();
            task.resume(ctx(call), &req)
                .rpc(|| format!("Resume {id}"))?;
            Ok(ExitCode::SUCCESS)
        }
        AgentCommand::Delete { id } => {
            let mut req = api::DeleteRequest::new();
            req.id = id.clone();
            let res = task
                .delete(ctx(call), &req)
                .rpc(|| format!("Delete {id}"))?;
            println!("deleted {id}: exit_status={}", res.exit_status);
            Ok(ExitCode::SUCCESS)
        }
        AgentCommand::Events { wait } => {
            while let Some(event) = agent.next_event(Duration::from_secs(wait))? {
                let kind = event
                    .event
                    .as_ref()
                    .map(|any| any.type_url.clone())
                    .unwrap_or_default();
                println!("{} {}", event.topic, kind);
            }
            Ok(ExitCode::SUCCESS)
        }
        AgentCommand::Shutdown => {
            let req = api::ShutdownRequest::new();
            match task.shutdown(ctx(call), &req) {
                Ok(_) => {}
                // The agent may power the VM off before its reply gets out.
                Err(containerd_shim_protos::ttrpc::Error::Socket(e)) => {
                    tracing::debug!("connection closed during Shutdown: {e}");
                }
                Err(e) => return Err(e).context("Shutdown"),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Turns a Task API error into one readable line: the gRPC code and the
/// agent's message for a status, the transport error otherwise.
trait RpcResult<T> {
    fn rpc(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> RpcResult<T> for containerd_shim_protos::ttrpc::Result<T> {
    fn rpc(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| match e {
            containerd_shim_protos::ttrpc::Error::RpcStatus(status) => {
                anyhow!("{}: {:?}: {}", what(), status.code(), status.message())
            }
            other => anyhow!("{}: {other}", what()),
        })
    }
}

/// Waits (without a deadline) for a process and returns its exit status.
fn wait(task: &guest_agent::client::TaskClient, id: &str, exec_id: &str) -> Result<u32> {
    let mut req = api::WaitRequest::new();
    req.id = id.to_string();
    req.exec_id = exec_id.to_string();
    let res = task
        .wait(
            containerd_shim_protos::ttrpc::context::Context::default(),
            &req,
        )
        .rpc(|| format!("Wait {id} {exec_id}"))?;
    Ok(res.exit_status)
}

/// One line of `key=value` pairs from a Stats reply (cgroup v2 or v1 metrics).
fn format_metrics(any: &Any) -> Result<String> {
    use containerd_shim_protos::cgroups::metrics as v1;
    use containerd_shim_protos::cgroups_v2::metrics as v2;
    use containerd_shim_protos::protobuf::Message;
    let kind = any.type_url.rsplit('/').next().unwrap_or_default();
    match kind {
        "io.containerd.cgroups.v2.Metrics" => {
            let m = v2::Metrics::parse_from_bytes(&any.value).context("decoding v2 metrics")?;
            Ok(format!(
                "cgroup=v2 memory.usage={} memory.limit={} pids.current={} pids.limit={} cpu.usage_usec={}",
                m.memory.usage,
                m.memory.usage_limit,
                m.pids.current,
                m.pids.limit,
                m.cpu.usage_usec
            ))
        }
        "io.containerd.cgroups.v1.Metrics" => {
            let m = v1::Metrics::parse_from_bytes(&any.value).context("decoding v1 metrics")?;
            Ok(format!(
                "cgroup=v1 memory.usage={} memory.limit={} pids.current={} pids.limit={} cpu.usage_nsec={}",
                m.memory.usage.usage,
                m.memory.usage.limit,
                m.pids.current,
                m.pids.limit,
                m.cpu.usage.total
            ))
        }
        other => bail!("Stats: unknown metrics type {other:?}"),
    }
}

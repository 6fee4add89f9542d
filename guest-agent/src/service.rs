//! The containerd Task API (`containerd.task.v3.Task`) served by the agent.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use containerd_shim_protos::api::{self, Empty};
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::topics;
use containerd_shim_protos::types::task::{ProcessInfo, Status as TaskStatus};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use ttrpc::TtrpcContext;

use crate::container::{self, Container, Paths};
use crate::error::{AgentError, AgentResult};
use crate::events::EventQueue;
use crate::process::{Exit, Proc, Status};
use crate::reaper::Reaper;
use crate::stdio::{PreparedIo, StdioSpec};
use crate::{cgroups, mounts, validate};

/// How long an exit waits for its output streams to drain before it is
/// reported anyway (a daemonised child may keep the pipe open).
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);

enum Slot {
    /// Create in progress (keeps duplicates out).
    Reserved,
    Ready(Arc<Container>),
}

/// Agent-wide settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub state_dir: PathBuf,
    pub cgroup_root: String,
}

/// Shared agent state.
pub struct Agent {
    settings: Settings,
    paths: Paths,
    reaper: Arc<Reaper>,
    pub events: Arc<EventQueue>,
    containers: Mutex<HashMap<String, Slot>>,
    shutdown: Mutex<Option<Sender<()>>>,
}

fn ts(t: SystemTime) -> MessageField<Timestamp> {
    MessageField::some(Timestamp::from(t))
}

fn cancelled(ctx: &TtrpcContext) -> impl Fn() -> bool {
    let rx = ctx.cancel_rx.clone();
    move || {
        matches!(
            rx.try_recv(),
            Ok(()) | Err(crossbeam::channel::TryRecvError::Disconnected)
        )
    }
}

fn deadline(ctx: &TtrpcContext) -> Option<Instant> {
    u64::try_from(ctx.timeout_nano)
        .ok()
        .filter(|n| *n > 0)
        .and_then(|n| {
            let t = Duration::from_nanos(n);
            Instant::now().checked_add(t - (t / 10).min(Duration::from_millis(20)))
        })
}

impl Agent {
    pub fn new(
        settings: Settings,
        reaper: Arc<Reaper>,
        events: Arc<EventQueue>,
        shutdown: Sender<()>,
    ) -> std::io::Result<Arc<Self>> {
        let paths = Paths::new(&settings.state_dir)?;
        Ok(Arc::new(Self {
            settings,
            paths,
            reaper,
            events,
            containers: Mutex::new(HashMap::new()),
            shutdown: Mutex::new(Some(shutdown)),
        }))
    }

    fn table(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn container(&self, id: &str) -> AgentResult<Arc<Container>> {
        match self.table().get(id) {
            Some(Slot::Ready(c)) => Ok(c.clone()),
            Some(Slot::Reserved) => Err(AgentError::FailedPrecondition(format!(
                "container {id:?} is being created"
            ))),
            None => Err(AgentError::NotFound(format!("container {id:?} not found"))),
        }
    }

    /// The exit callback registered with the reaper for `p`.
    fn on_exit(self: &Arc<Self>, p: Arc<Proc>) -> crate::reaper::ExitCallback {
        let agent = self.clone();
        Box::new(move |code, at| {
            let spawned = std::thread::Builder::new()
                .name("exit".into())
                .spawn(move || agent.finish_exit(&p, Exit { status: code, at }));
            if let Err(e) = spawned {
                tracing::error!("cannot spawn the exit handler: {e}");
            }
        })
    }

    /// Drains the output, records the exit, publishes events, and after an
    /// init exit kills the container's remaining exec processes.
    fn finish_exit(&self, p: &Arc<Proc>, exit: Exit) {
        let io = p.lock().io.take();
        if let Some(mut io) = io {
            // Nobody reads the stdin of a dead process: end its copier.
            io.close_stdin();
            if !io.wait_output(Instant::now() + OUTPUT_DRAIN) {
                tracing::warn!(id = %p.container_id, exec = %p.exec_id, "output still open after the exit; reporting the exit anyway");
            }
        }
        p.wait_start_done(Duration::from_secs(10));
        let pid = p.pid();
        p.set_exited(exit);
        let container = self.container(&p.container_id).ok();
        if let Some(c) = &container {
            self.check_oom(c);
        }
        let mut ev = TaskExit::new();
        ev.container_id = p.container_id.clone();
        ev.id = if p.exec_id.is_empty() {
            p.container_id.clone()
        } else {
            p.exec_id.clone()
        };
        ev.pid = pid;
        ev.exit_status = exit.status;
        ev.exited_at = ts(exit.at);
        self.events.publish(topics::TASK_EXIT_EVENT_TOPIC, &ev);
        if p.exec_id.is_empty() {
            if let Some(c) = container {
                for e in c.execs().values() {
                    let st = e.lock();
                    if st.status == Status::Running && st.pid > 0 {
                        let _ = kill(Pid::from_raw(st.pid as i32), Signal::SIGKILL);
                    }
                }
            }
        }
    }

    fn check_oom(&self, c: &Container) {
        let dir = PathBuf::from("/sys/fs/cgroup")
            .join(c.cgroup_path.strip_prefix("/").unwrap_or(&c.cgroup_path));
        let events = cgroups::parse_flat(
            &std::fs::read_to_string(dir.join("memory.events")).unwrap_or_default(),
        );
        let v1 = cgroups::parse_flat(
            &std::fs::read_to_string(
                PathBuf::from("/sys/fs/cgroup/memory")
                    .join(c.cgroup_path.strip_prefix("/").unwrap_or(&c.cgroup_path))
                    .join("memory.oom_control"),
            )
            .unwrap_or_default(),
        );
        let kills = events
            .get("oom_kill")
            .or_else(|| v1.get("oom_kill"))
            .copied()
            .unwrap_or(0);
        let seen = c.oom_seen.swap(kills, std::sync::atomic::Ordering::SeqCst);
        if kills > seen {
            let mut ev = TaskOOM::new();
            ev.container_id = c.id.clone();
            self.events.publish(topics::TASK_OOM_EVENT_TOPIC, &ev);
        }
    }

    fn create(self: &Arc<Self>, req: &api::CreateTaskRequest) -> AgentResult<u32> {
        validate::id("container id", &req.id)?;
        let bundle = validate::bundle(&req.bundle)?;
        if !req.checkpoint.is_empty() {
            return Err(AgentError::Unimplemented(
                "restoring from a checkpoint is not supported".into(),
            ));
        }
        {
            let mut t = self.table();
            if t.contains_key(&req.id) {
                return Err(AgentError::AlreadyExists(format!(
                    "container {:?} already exists",
                    req.id
                )));
            }
            t.insert(req.id.clone(), Slot::Reserved);
        }
        match self.create_reserved(req, &bundle) {
            Ok((c, pid)) => {
                self.table().insert(req.id.clone(), Slot::Ready(c));
                let mut ev = TaskCreate::new();
                ev.container_id = req.id.clone();
                ev.bundle = req.bundle.clone();
                ev.rootfs = req.rootfs.clone();
                let mut io = TaskIO::new();
                io.stdin = req.stdin.clone();
                io.stdout = req.stdout.clone();
                io.stderr = req.stderr.clone();
                io.terminal = req.terminal;
                ev.io = MessageField::some(io);
                ev.pid = pid;
                self.events.publish(topics::TASK_CREATE_EVENT_TOPIC, &ev);
                Ok(pid)
            }
            Err(e) => {
                self.table().remove(&req.id);
                Err(e)
            }
        }
    }

    fn create_reserved(
        self: &Arc<Self>,
        req: &api::CreateTaskRequest,
        bundle: &std::path::Path,
    ) -> AgentResult<(Arc<Container>, u32)> {
        let mounted = mounts::mount_rootfs(bundle, &req.rootfs)?;
        let result = self.create_mounted(req, bundle, &mounted);
        if result.is_err() {
            mounts::unmount_all(&mounted);
        }
        result
    }

    fn create_mounted(
        self: &Arc<Self>,
        req: &api::CreateTaskRequest,
        bundle: &std::path::Path,
        mounted: &[PathBuf],
    ) -> AgentResult<(Arc<Container>, u32)> {
        let prepared = container::prepare_spec(
            &self.paths,
            &req.id,
            bundle,
            req.terminal,
            &self.settings.cgroup_root,
        )?;
        let stdio = StdioSpec {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let (io, child) = match PreparedIo::open(&stdio) {
            Ok(x) => x,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&prepared.shadow);
                return Err(e);
            }
        };
        let init = Arc::new(Proc::new(&req.id, "", stdio));
        let c = Arc::new(container::new_container(
            &req.id,
            &req.bundle,
            &prepared,
            mounted.to_vec(),
            init.clone(),
        ));
        let lc = self.reaper.lc_lock();
        let (pid, master) =
            match container::create_init(&self.paths, &req.id, &prepared.shadow, &io, child) {
                Ok(x) => x,
                Err(e) => {
                    container::destroy(&self.paths, &req.id, &prepared.shadow);
                    return Err(e);
                }
            };
        {
            let mut st = init.lock();
            st.pid = pid;
            st.io = Some(io.start(&req.id, master));
        }
        self.reaper.register(pid as i32, self.on_exit(init.clone()));
        drop(lc);
        tracing::info!(id = %req.id, pid, "container created");
        Ok((c, pid))
    }

    fn start(self: &Arc<Self>, req: &api::StartRequest) -> AgentResult<u32> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        p.begin_start();
        let r = self.start_process(&c, &p, req);
        p.end_start();
        r
    }

    fn start_process(
        self: &Arc<Self>,
        c: &Arc<Container>,
        p: &Arc<Proc>,
        req: &api::StartRequest,
    ) -> AgentResult<u32> {
        if p.status() != Status::Created {
            return Err(AgentError::FailedPrecondition(format!(
                "process {:?} in {:?} was already started",
                req.exec_id, req.id
            )));
        }
        if req.exec_id.is_empty() {
            {
                let _lc = self.reaper.lc_lock();
                container::start_init(&self.paths, &req.id)?;
            }
            let pid = {
                let mut st = p.lock();
                if st.status == Status::Created {
                    st.status = Status::Running;
                }
                st.pid
            };
            let mut ev = TaskStart::new();
            ev.container_id = req.id.clone();
            ev.pid = pid;
            self.events.publish(topics::TASK_START_EVENT_TOPIC, &ev);
            return Ok(pid);
        }
        if c.init.status() != Status::Running {
            return Err(AgentError::FailedPrecondition(format!(
                "container {:?} is not running",
                req.id
            )));
        }
        let (io, spec) = {
            let mut st = p.lock();
            if st.status != Status::Created || st.pending_io.is_none() {
                return Err(AgentError::FailedPrecondition(format!(
                    "exec {:?} was already started",
                    req.exec_id
                )));
            }
            (st.pending_io.take(), st.exec_spec.take())
        };
        let (Some(io), Some(spec)) = (io, spec) else {
            return Err(AgentError::Internal("exec lost its stdio or spec".into()));
        };
        let (io, child) = io;
        let lc = self.reaper.lc_lock();
        let started = container::start_exec(&self.paths, c, &req.exec_id, &spec, &io, child);
        let (pid, master) = match started {
            Ok(x) => x,
            Err(e) => {
                drop(lc);
                p.set_exited(Exit {
                    status: 255,
                    at: SystemTime::now(),
                });
                return Err(e);
            }
        };
        {
            let mut st = p.lock();
            st.pid = pid;
            st.status = Status::Running;
            st.io = Some(io.start(&format!("{}/{}", req.id, req.exec_id), master));
        }
        self.reaper.register(pid as i32, self.on_exit(p.clone()));
        drop(lc);
        let mut ev = TaskExecStarted::new();
        ev.container_id = req.id.clone();
        ev.exec_id = req.exec_id.clone();
        ev.pid = pid;
        self.events
            .publish(topics::TASK_EXEC_STARTED_EVENT_TOPIC, &ev);
        Ok(pid)
    }

    fn exec(&self, req: &api::ExecProcessRequest) -> AgentResult<()> {
        validate::id("exec id", &req.exec_id)?;
        let c = self.container(&req.id)?;
        if c.init.status() != Status::Running {
            return Err(AgentError::FailedPrecondition(format!(
                "container {:?} is not running",
                req.id
            )));
        }
        let any = req
            .spec
            .as_ref()
            .ok_or_else(|| AgentError::InvalidArgument("exec: spec is missing".into()))?;
        let mut spec: oci_spec::runtime::Process =
            serde_json::from_slice(&any.value).map_err(|e| {
                AgentError::InvalidArgument(format!("exec: spec is not an OCI process: {e}"))
            })?;
        container::check_process(Some(&spec))
            .map_err(|e| AgentError::InvalidArgument(format!("exec: {e}")))?;
        spec.set_terminal(Some(req.terminal));
        if c.execs().contains_key(&req.exec_id) {
            return Err(AgentError::AlreadyExists(format!(
                "exec {:?} already exists",
                req.exec_id
            )));
        }
        let stdio = StdioSpec {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let io = PreparedIo::open(&stdio)?;
        let p = Arc::new(Proc::new(&req.id, &req.exec_id, stdio));
        {
            let mut st = p.lock();
            st.pending_io = Some(io);
            st.exec_spec = Some(spec);
        }
        {
            let mut execs = c.execs();
            if execs.contains_key(&req.exec_id) {
                return Err(AgentError::AlreadyExists(format!(
                    "exec {:?} already exists",
                    req.exec_id
                )));
            }
            execs.insert(req.exec_id.clone(), p);
        }
        let mut ev = TaskExecAdded::new();
        ev.container_id = req.id.clone();
        ev.exec_id = req.exec_id.clone();
        self.events
            .publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, &ev);
        Ok(())
    }

    fn state(&self, req: &api::StateRequest) -> AgentResult<api::StateResponse> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let st = p.lock();
        let mut r = api::StateResponse::new();
        r.id = if req.exec_id.is_empty() {
            req.id.clone()
        } else {
            req.exec_id.clone()
        };
        r.bundle = c.bundle.clone();
        r.pid = st.pid;
        let status = match st.status {
            Status::Created => TaskStatus::CREATED,
            Status::Running if c.paused.load(std::sync::atomic::Ordering::SeqCst) => {
                TaskStatus::PAUSED
            }
            Status::Running => TaskStatus::RUNNING,
            Status::Stopped => TaskStatus::STOPPED,
        };
        r.status = status.into();
        r.stdin = p.stdio.stdin.clone();
        r.stdout = p.stdio.stdout.clone();
        r.stderr = p.stdio.stderr.clone();
        r.terminal = p.stdio.terminal;
        if let Some(e) = st.exit {
            r.exit_status = e.status;
            r.exited_at = ts(e.at);
        }
        r.exec_id = req.exec_id.clone();
        Ok(r)
    }

    fn kill(&self, req: &api::KillRequest) -> AgentResult<()> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let sig = i32::try_from(req.signal)
            .ok()
            .and_then(|s| Signal::try_from(s).ok())
            .ok_or_else(|| {
                AgentError::InvalidArgument(format!("kill: bad signal {}", req.signal))
            })?;
        if req.all && req.exec_id.is_empty() {
            let pids = cgroups::pids(&c.cgroup_path, &c.id).unwrap_or_default();
            for pid in pids {
                let _ = kill(Pid::from_raw(pid), sig);
            }
        }
        let (pid, status) = {
            let st = p.lock();
            (st.pid, st.status)
        };
        if status == Status::Stopped || pid == 0 {
            if req.all {
                return Ok(());
            }
            return Err(AgentError::NotFound(format!(
                "process {:?} of {:?} is not running (already finished or never started)",
                req.exec_id, req.id
            )));
        }
        match kill(Pid::from_raw(pid as i32), sig) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => return Err(AgentError::internal("kill", e)),
        }
        // cgroup v1: a frozen process only dies once thawed.
        if sig == Signal::SIGKILL && c.paused.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = container::set_paused(&self.paths, &c.id, false);
            c.paused.store(false, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(())
    }

    fn delete(&self, req: &api::DeleteRequest) -> AgentResult<api::DeleteResponse> {
        let c = self.container(&req.id)?;
        let mut r = api::DeleteResponse::new();
        if !req.exec_id.is_empty() {
            let p = c.process(&req.exec_id)?;
            let st = p.lock();
            if st.status == Status::Running {
                return Err(AgentError::FailedPrecondition(format!(
                    "exec {:?} is still running",
                    req.exec_id
                )));
            }
            r.pid = st.pid;
            if let Some(e) = st.exit {
                r.exit_status = e.status;
                r.exited_at = ts(e.at);
            }
            drop(st);
            c.execs().remove(&req.exec_id);
            return Ok(r);
        }
        match c.init.status() {
            Status::Running => {
                return Err(AgentError::FailedPrecondition(format!(
                    "container {:?} is running; kill it first",
                    req.id
                )))
            }
            Status::Created => {
                let pid = c.init.pid();
                if pid > 0 {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                }
                let _ = c
                    .init
                    .wait(Some(Instant::now() + Duration::from_secs(10)), &|| false);
            }
            Status::Stopped => {}
        }
        {
            // Take it out of the table first so no new request finds it.
            let mut t = self.table();
            match t.get(&req.id) {
                Some(Slot::Ready(x)) if Arc::ptr_eq(x, &c) => {
                    t.remove(&req.id);
                }
                _ => {
                    return Err(AgentError::NotFound(format!(
                        "container {:?} not found",
                        req.id
                    )))
                }
            }
        }
        self.teardown(&c);
        let exit = c.init.exit();
        r.pid = c.init.pid();
        if let Some(e) = exit {
            r.exit_status = e.status;
            r.exited_at = ts(e.at);
        }
        let mut ev = TaskDelete::new();
        ev.container_id = req.id.clone();
        ev.id = req.id.clone();
        ev.pid = r.pid;
        ev.exit_status = r.exit_status;
        ev.exited_at = r.exited_at.clone();
        self.events.publish(topics::TASK_DELETE_EVENT_TOPIC, &ev);
        tracing::info!(id = %req.id, "container deleted");
        Ok(r)
    }

    /// Kills what is left of a container, waits for the exits, removes its
    /// cgroup, state, shadow bundle and rootfs mounts.
    fn teardown(&self, c: &Container) {
        let pids = cgroups::pids(&c.cgroup_path, &c.id).unwrap_or_default();
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if c.paused.swap(false, std::sync::atomic::Ordering::SeqCst) {
            let _ = container::set_paused(&self.paths, &c.id, false);
        }
        let procs: Vec<Arc<Proc>> = std::iter::once(c.init.clone())
            .chain(c.execs().values().cloned())
            .collect();
        for p in procs {
            if p.status() == Status::Running {
                let _ = kill(Pid::from_raw(p.pid() as i32), Signal::SIGKILL);
                let _ = p.wait(Some(Instant::now() + Duration::from_secs(5)), &|| false);
            }
        }
        {
            let _lc = self.reaper.lc_lock();
            container::destroy(&self.paths, &c.id, &c.shadow);
        }
        mounts::unmount_all(&c.rootfs_mounts);
    }

    fn pause(&self, id: &str, pause: bool) -> AgentResult<()> {
        let c = self.container(id)?;
        if c.init.status() != Status::Running {
            return Err(AgentError::FailedPrecondition(format!(
                "container {id:?} is not running"
            )));
        }
        let paused = c.paused.load(std::sync::atomic::Ordering::SeqCst);
        if paused == pause {
            return Err(AgentError::FailedPrecondition(format!(
                "container {id:?} is {}",
                if paused {
                    "already paused"
                } else {
                    "not paused"
                }
            )));
        }
        container::set_paused(&self.paths, id, pause)?;
        c.paused.store(pause, std::sync::atomic::Ordering::SeqCst);
        if pause {
            let mut ev = TaskPaused::new();
            ev.container_id = id.to_string();
            self.events.publish(topics::TASK_PAUSED_EVENT_TOPIC, &ev);
        } else {
            let mut ev = TaskResumed::new();
            ev.container_id = id.to_string();
            self.events.publish(topics::TASK_RESUMED_EVENT_TOPIC, &ev);
        }
        Ok(())
    }

    /// Kills and deletes every container (Shutdown, SIGTERM).
    pub fn cleanup_all(&self) {
        let all: Vec<Arc<Container>> = self
            .table()
            .drain()
            .filter_map(|(_, s)| match s {
                Slot::Ready(c) => Some(c),
                Slot::Reserved => None,
            })
            .collect();
        for c in all {
            tracing::info!(id = %c.id, "removing container at shutdown");
            self.teardown(&c);
        }
        cgroups::remove_root(&self.settings.cgroup_root);
    }

    /// Asks the main loop to exit.
    pub fn request_shutdown(&self) {
        if let Some(tx) = self
            .shutdown
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = tx.send(());
        }
    }
}

/// The ttrpc service object.
pub struct TaskService {
    agent: Arc<Agent>,
}

impl TaskService {
    pub fn new(agent: Arc<Agent>) -> Self {
        Self { agent }
    }
}

fn log_err<T>(method: &str, r: AgentResult<T>) -> ttrpc::Result<T> {
    r.map_err(|e| {
        tracing::debug!(method, code = ?e.code(), "{e}");
        e.into()
    })
}

impl containerd_shim_protos::Task for TaskService {
    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> ttrpc::Result<api::StateResponse> {
        log_err("State", self.agent.state(&req))
    }

    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> ttrpc::Result<api::CreateTaskResponse> {
        let pid = log_err("Create", self.agent.create(&req))?;
        let mut r = api::CreateTaskResponse::new();
        r.pid = pid;
        Ok(r)
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> ttrpc::Result<api::StartResponse> {
        let pid = log_err("Start", self.agent.start(&req))?;
        let mut r = api::StartResponse::new();
        r.pid = pid;
        Ok(r)
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> ttrpc::Result<api::DeleteResponse> {
        log_err("Delete", self.agent.delete(&req))
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> ttrpc::Result<api::PidsResponse> {
        let r = (|| {
            let c = self.agent.container(&req.id)?;
            let pids = if c.init.status() == Status::Stopped {
                Vec::new()
            } else {
                cgroups::pids(&c.cgroup_path, &c.id)?
            };
            let mut r = api::PidsResponse::new();
            r.processes = pids
                .into_iter()
                .map(|pid| {
                    let mut i = ProcessInfo::new();
                    i.pid = u32::try_from(pid).unwrap_or(0);
                    i
                })
                .collect();
            Ok(r)
        })();
        log_err("Pids", r)
    }

    fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> ttrpc::Result<Empty> {
        log_err("Pause", self.agent.pause(&req.id, true)).map(|_| Empty::new())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> ttrpc::Result<Empty> {
        log_err("Resume", self.agent.pause(&req.id, false)).map(|_| Empty::new())
    }

    fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> ttrpc::Result<Empty> {
        log_err(
            "Checkpoint",
            Err(AgentError::Unimplemented(
                "checkpoint is not supported by the guest agent".into(),
            )),
        )
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> ttrpc::Result<Empty> {
        log_err("Kill", self.agent.kill(&req)).map(|_| Empty::new())
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> ttrpc::Result<Empty> {
        log_err("Exec", self.agent.exec(&req)).map(|_| Empty::new())
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: api::ResizePtyRequest) -> ttrpc::Result<Empty> {
        let r = (|| {
            let c = self.agent.container(&req.id)?;
            let p = c.process(&req.exec_id)?;
            let st = p.lock();
            match &st.io {
                Some(io) => io.resize(req.width, req.height),
                None if !p.stdio.terminal => Err(AgentError::FailedPrecondition(
                    "process has no terminal".into(),
                )),
                None => Err(AgentError::FailedPrecondition(
                    "process is not running".into(),
                )),
            }
        })();
        log_err("ResizePty", r).map(|_| Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> ttrpc::Result<Empty> {
        let r = (|| {
            let c = self.agent.container(&req.id)?;
            let p = c.process(&req.exec_id)?;
            if req.stdin {
                let mut st = p.lock();
                if let Some(io) = st.io.as_mut() {
                    io.close_stdin();
                } else if let Some((io, _)) = st.pending_io.as_mut() {
                    io.close_stdin_before_start();
                }
            }
            Ok(())
        })();
        log_err("CloseIO", r).map(|_| Empty::new())
    }

    fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> ttrpc::Result<Empty> {
        let r = (|| {
            let c = self.agent.container(&req.id)?;
            let any = req
                .resources
                .as_ref()
                .ok_or_else(|| AgentError::InvalidArgument("update: resources missing".into()))?;
            let res = cgroups::parse_resources(any)?;
            if c.init.status() == Status::Stopped {
                return Err(AgentError::FailedPrecondition(format!(
                    "container {:?} is stopped",
                    req.id
                )));
            }
            cgroups::update(&c.cgroup_path, &c.id, &res)
        })();
        log_err("Update", r).map(|_| Empty::new())
    }

    fn wait(&self, ctx: &TtrpcContext, req: api::WaitRequest) -> ttrpc::Result<api::WaitResponse> {
        let r = (|| {
            let c = self.agent.container(&req.id)?;
            let p = c.process(&req.exec_id)?;
            let exit = p.wait(deadline(ctx), &cancelled(ctx))?;
            let mut r = api::WaitResponse::new();
            r.exit_status = exit.status;
            r.exited_at = ts(exit.at);
            Ok(r)
        })();
        log_err("Wait", r)
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> ttrpc::Result<api::StatsResponse> {
        let r = (|| {
            let c = self.agent.container(&req.id)?;
            let any = cgroups::stats(&c.cgroup_path, &c.id)?;
            let mut r = api::StatsResponse::new();
            r.stats = MessageField::some(any);
            Ok(r)
        })();
        log_err("Stats", r)
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> ttrpc::Result<api::ConnectResponse> {
        let mut r = api::ConnectResponse::new();
        r.shim_pid = std::process::id();
        r.version = env!("CARGO_PKG_VERSION").to_string();
        if !req.id.is_empty() {
            let c = log_err("Connect", self.agent.container(&req.id))?;
            r.task_pid = c.init.pid();
        }
        Ok(r)
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> ttrpc::Result<Empty> {
        tracing::info!("shutdown requested");
        self.agent.cleanup_all();
        self.agent.request_shutdown();
        Ok(Empty::new())
    }
}

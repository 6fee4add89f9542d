//! Cgroup metrics in containerd's types, resource updates and freezer.
//!
//! cgroup v2 (the guest): `io.containerd.cgroups.v2.Metrics` read straight
//! from the cgroup's files (pids, cpu, memory, memory.events), so a missing
//! optional file (swap, hugetlb) never fails the whole call. cgroup v1
//! (these build hosts): `io.containerd.cgroups.v1.Metrics` from libcgroups'
//! stats.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use containerd_shim_protos::cgroups::metrics as v1m;
use containerd_shim_protos::cgroups_v2::metrics as v2m;
use libcgroups::common::{CgroupConfig, CgroupManager, CgroupSetup, ControllerOpt};
use oci_spec::runtime::LinuxResources;
use protobuf::well_known_types::any::Any;
use protobuf::MessageFull;

use crate::error::{AgentError, AgentResult};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

fn manager(cgroup_path: &Path, id: &str) -> AgentResult<libcgroups::common::AnyCgroupManager> {
    libcgroups::common::create_cgroup_manager(CgroupConfig {
        cgroup_path: cgroup_path.to_path_buf(),
        systemd_cgroup: false,
        container_name: id.to_string(),
    })
    .map_err(|e| AgentError::internal("cgroup manager", e))
}

fn is_v2() -> bool {
    matches!(
        libcgroups::common::get_cgroup_setup(),
        Ok(CgroupSetup::Unified)
    )
}

fn pack<M: MessageFull>(m: &M) -> AgentResult<Any> {
    let mut any = Any::new();
    any.type_url = M::descriptor().full_name().to_string();
    any.value = m
        .write_to_bytes()
        .map_err(|e| AgentError::internal("encoding metrics", e))?;
    Ok(any)
}

/// Metrics of the container's cgroup as an Any (v2 or v1 type).
pub fn stats(cgroup_path: &Path, id: &str) -> AgentResult<Any> {
    if is_v2() {
        pack(&v2_metrics(&v2_dir(cgroup_path)))
    } else {
        let s = manager(cgroup_path, id)?
            .stats()
            .map_err(|e| AgentError::internal("reading cgroup stats", e))?;
        pack(&v1_metrics(&s))
    }
}

fn v2_dir(cgroup_path: &Path) -> PathBuf {
    Path::new(CGROUP_ROOT).join(cgroup_path.strip_prefix("/").unwrap_or(cgroup_path))
}

fn read_u64(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            let s = s.trim();
            if s == "max" {
                Some(u64::MAX)
            } else {
                s.parse().ok()
            }
        })
        .unwrap_or(0)
}

fn read_flat(path: &Path) -> HashMap<String, u64> {
    std::fs::read_to_string(path)
        .map(|s| parse_flat(&s))
        .unwrap_or_default()
}

/// Parses "key value" lines (memory.stat, cpu.stat, memory.events).
pub fn parse_flat(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// Builds v2 metrics from a cgroup directory.
pub fn v2_metrics(dir: &Path) -> v2m::Metrics {
    let mut m = v2m::Metrics::new();

    let mut pids = v2m::PidsStat::new();
    pids.current = read_u64(&dir.join("pids.current"));
    pids.limit = read_u64(&dir.join("pids.max"));
    m.pids = protobuf::MessageField::some(pids);

    let cpu_stat = read_flat(&dir.join("cpu.stat"));
    let g = |map: &HashMap<String, u64>, k: &str| map.get(k).copied().unwrap_or(0);
    let mut cpu = v2m::CPUStat::new();
    cpu.usage_usec = g(&cpu_stat, "usage_usec");
    cpu.user_usec = g(&cpu_stat, "user_usec");
    cpu.system_usec = g(&cpu_stat, "system_usec");
    cpu.nr_periods = g(&cpu_stat, "nr_periods");
    cpu.nr_throttled = g(&cpu_stat, "nr_throttled");
    cpu.throttled_usec = g(&cpu_stat, "throttled_usec");
    cpu.nr_bursts = g(&cpu_stat, "nr_bursts");
    cpu.burst_usec = g(&cpu_stat, "burst_usec");
    m.cpu = protobuf::MessageField::some(cpu);

    let ms = read_flat(&dir.join("memory.stat"));
    let mut mem = v2m::MemoryStat::new();
    mem.anon = g(&ms, "anon");
    mem.file = g(&ms, "file");
    mem.kernel_stack = g(&ms, "kernel_stack");
    mem.slab = g(&ms, "slab");
    mem.sock = g(&ms, "sock");
    mem.shmem = g(&ms, "shmem");
    mem.file_mapped = g(&ms, "file_mapped");
    mem.file_dirty = g(&ms, "file_dirty");
    mem.file_writeback = g(&ms, "file_writeback");
    mem.anon_thp = g(&ms, "anon_thp");
    mem.inactive_anon = g(&ms, "inactive_anon");
    mem.active_anon = g(&ms, "active_anon");
    mem.inactive_file = g(&ms, "inactive_file");
    mem.active_file = g(&ms, "active_file");
    mem.unevictable = g(&ms, "unevictable");
    mem.slab_reclaimable = g(&ms, "slab_reclaimable");
    mem.slab_unreclaimable = g(&ms, "slab_unreclaimable");
    mem.pgfault = g(&ms, "pgfault");
    mem.pgmajfault = g(&ms, "pgmajfault");
    mem.workingset_refault = g(&ms, "workingset_refault");
    mem.workingset_activate = g(&ms, "workingset_activate");
    mem.workingset_nodereclaim = g(&ms, "workingset_nodereclaim");
    mem.pgrefill = g(&ms, "pgrefill");
    mem.pgscan = g(&ms, "pgscan");
    mem.pgsteal = g(&ms, "pgsteal");
    mem.pgactivate = g(&ms, "pgactivate");
    mem.pgdeactivate = g(&ms, "pgdeactivate");
    mem.pglazyfree = g(&ms, "pglazyfree");
    mem.pglazyfreed = g(&ms, "pglazyfreed");
    mem.thp_fault_alloc = g(&ms, "thp_fault_alloc");
    mem.thp_collapse_alloc = g(&ms, "thp_collapse_alloc");
    mem.usage = read_u64(&dir.join("memory.current"));
    mem.usage_limit = read_u64(&dir.join("memory.max"));
    mem.max_usage = read_u64(&dir.join("memory.peak"));
    mem.swap_usage = read_u64(&dir.join("memory.swap.current"));
    mem.swap_limit = read_u64(&dir.join("memory.swap.max"));
    m.memory = protobuf::MessageField::some(mem);

    let ev = read_flat(&dir.join("memory.events"));
    let mut events = v2m::MemoryEvents::new();
    events.low = g(&ev, "low");
    events.high = g(&ev, "high");
    events.max = g(&ev, "max");
    events.oom = g(&ev, "oom");
    events.oom_kill = g(&ev, "oom_kill");
    events.oom_group_kill = g(&ev, "oom_group_kill");
    m.memory_events = protobuf::MessageField::some(events);
    m
}

fn v1_metrics(s: &libcgroups::stats::Stats) -> v1m::Metrics {
    let mut m = v1m::Metrics::new();
    let mut pids = v1m::PidsStat::new();
    pids.current = s.pids.current;
    pids.limit = s.pids.limit;
    m.pids = protobuf::MessageField::some(pids);

    let mut usage = v1m::CPUUsage::new();
    usage.total = s.cpu.usage.usage_total;
    usage.kernel = s.cpu.usage.usage_kernel;
    usage.user = s.cpu.usage.usage_user;
    usage.per_cpu = s.cpu.usage.per_core_usage_total.clone();
    let mut thr = v1m::Throttle::new();
    thr.periods = s.cpu.throttling.periods;
    thr.throttled_periods = s.cpu.throttling.throttled_periods;
    thr.throttled_time = s.cpu.throttling.throttled_time;
    let mut cpu = v1m::CPUStat::new();
    cpu.usage = protobuf::MessageField::some(usage);
    cpu.throttling = protobuf::MessageField::some(thr);
    m.cpu = protobuf::MessageField::some(cpu);

    let entry = |d: &libcgroups::stats::MemoryData| {
        let mut e = v1m::MemoryEntry::new();
        e.limit = d.limit;
        e.usage = d.usage;
        e.max = d.max_usage;
        e.failcnt = d.fail_count;
        e
    };
    let st = |k: &str| s.memory.stats.get(k).copied().unwrap_or(0);
    let mut mem = v1m::MemoryStat::new();
    mem.cache = st("cache");
    mem.rss = st("rss");
    mem.rss_huge = st("rss_huge");
    mem.mapped_file = st("mapped_file");
    mem.dirty = st("dirty");
    mem.writeback = st("writeback");
    mem.pg_pg_in = st("pgpgin");
    mem.pg_pg_out = st("pgpgout");
    mem.pg_fault = st("pgfault");
    mem.pg_maj_fault = st("pgmajfault");
    mem.inactive_anon = st("inactive_anon");
    mem.active_anon = st("active_anon");
    mem.inactive_file = st("inactive_file");
    mem.active_file = st("active_file");
    mem.unevictable = st("unevictable");
    mem.hierarchical_memory_limit = st("hierarchical_memory_limit");
    mem.hierarchical_swap_limit = st("hierarchical_memsw_limit");
    mem.total_cache = st("total_cache");
    mem.total_rss = st("total_rss");
    mem.total_rss_huge = st("total_rss_huge");
    mem.total_mapped_file = st("total_mapped_file");
    mem.total_dirty = st("total_dirty");
    mem.total_writeback = st("total_writeback");
    mem.total_pg_pg_in = st("total_pgpgin");
    mem.total_pg_pg_out = st("total_pgpgout");
    mem.total_pg_fault = st("total_pgfault");
    mem.total_pg_maj_fault = st("total_pgmajfault");
    mem.total_inactive_anon = st("total_inactive_anon");
    mem.total_active_anon = st("total_active_anon");
    mem.total_inactive_file = st("total_inactive_file");
    mem.total_active_file = st("total_active_file");
    mem.total_unevictable = st("total_unevictable");
    mem.usage = protobuf::MessageField::some(entry(&s.memory.memory));
    mem.swap = protobuf::MessageField::some(entry(&s.memory.memswap));
    mem.kernel = protobuf::MessageField::some(entry(&s.memory.kernel));
    mem.kernel_tcp = protobuf::MessageField::some(entry(&s.memory.kernel_tcp));
    m.memory = protobuf::MessageField::some(mem);
    m
}

/// Parses Update's Any: the value is OCI LinuxResources JSON.
pub fn parse_resources(any: &Any) -> AgentResult<LinuxResources> {
    if any.value.is_empty() {
        return Err(AgentError::InvalidArgument(
            "update: empty resources".into(),
        ));
    }
    serde_json::from_slice(&any.value).map_err(|e| {
        AgentError::InvalidArgument(format!(
            "update: resources are not OCI LinuxResources JSON: {e}"
        ))
    })
}

/// Applies new resource limits to the container's cgroup.
pub fn update(cgroup_path: &Path, id: &str, resources: &LinuxResources) -> AgentResult<()> {
    let opt = ControllerOpt {
        resources,
        disable_oom_killer: false,
        oom_score_adj: None,
        freezer_state: None,
    };
    manager(cgroup_path, id)?
        .apply(&opt)
        .map_err(|e| AgentError::internal("applying resources", e))
}

/// Pids in the container's cgroup.
pub fn pids(cgroup_path: &Path, id: &str) -> AgentResult<Vec<i32>> {
    Ok(manager(cgroup_path, id)?
        .get_all_pids()
        .map_err(|e| AgentError::internal("listing cgroup pids", e))?
        .into_iter()
        .map(|p| p.as_raw())
        .collect())
}

/// Removes the (empty) cgroup root directories the agent created.
pub fn remove_root(root_name: &str) {
    let root = Path::new(CGROUP_ROOT);
    let mut dirs = vec![root.join(root_name)];
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            dirs.push(e.path().join(root_name));
        }
    }
    for d in dirs {
        if d.is_dir() {
            let _ = std::fs::remove_dir(&d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_keyed() {
        let m = parse_flat("usage_usec 12\nuser_usec 7\nbad\nx y\n");
        assert_eq!(m.get("usage_usec"), Some(&12));
        assert_eq!(m.get("user_usec"), Some(&7));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn v2_from_files() {
        let d = tempfile::tempdir().unwrap();
        let w = |f: &str, s: &str| std::fs::write(d.path().join(f), s).unwrap();
        w("memory.current", "4096\n");
        w("memory.max", "max\n");
        w("memory.stat", "anon 100\nfile 200\n");
        w("memory.events", "oom 1\noom_kill 2\n");
        w("cpu.stat", "usage_usec 55\nuser_usec 50\nsystem_usec 5\n");
        w("pids.current", "3\n");
        w("pids.max", "64\n");
        let m = v2_metrics(d.path());
        assert_eq!(m.memory.usage, 4096);
        assert_eq!(m.memory.usage_limit, u64::MAX);
        assert_eq!(m.memory.anon, 100);
        assert_eq!(m.memory.file, 200);
        assert_eq!(m.memory_events.oom_kill, 2);
        assert_eq!(m.cpu.usage_usec, 55);
        assert_eq!(m.pids.current, 3);
        assert_eq!(m.pids.limit, 64);
        let any = pack(&m).unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
    }

    #[test]
    fn resources_json() {
        let mut any = Any::new();
        any.value = br#"{"memory":{"limit":67108864},"pids":{"limit":10}}"#.to_vec();
        let r = parse_resources(&any).unwrap();
        assert_eq!(r.memory().as_ref().unwrap().limit(), Some(67108864));
        any.value = b"{not json".to_vec();
        assert!(matches!(
            parse_resources(&any),
            Err(AgentError::InvalidArgument(_))
        ));
        any.value.clear();
        assert!(parse_resources(&any).is_err());
    }
}

//! Create's rootfs mounts: mounted onto `<bundle>/rootfs` before the
//! container is created, unmounted on Delete.

use std::path::{Path, PathBuf};

use containerd_shim_protos::api::Mount;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::error::{AgentError, AgentResult};

/// Splits mount options into flags and the data string.
pub fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        let (set, clear) = match o.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "defaults" => (MsFlags::empty(), MsFlags::empty()),
            other => {
                data.push(other.to_string());
                (MsFlags::empty(), MsFlags::empty())
            }
        };
        flags.insert(set);
        flags.remove(clear);
    }
    (flags, data.join(","))
}

/// Mounts every entry onto `<bundle>/rootfs` in order. On failure the ones
/// already mounted are undone. Returns the targets to unmount later.
pub fn mount_rootfs(bundle: &Path, mounts: &[Mount]) -> AgentResult<Vec<PathBuf>> {
    let target = bundle.join("rootfs");
    let mut done = Vec::new();
    for m in mounts {
        if let Err(e) = mount_one(&target, m) {
            unmount_all(&done);
            return Err(e);
        }
        done.push(target.clone());
    }
    Ok(done)
}

fn mount_one(target: &Path, m: &Mount) -> AgentResult<()> {
    std::fs::create_dir_all(target)
        .map_err(|e| AgentError::internal(&format!("creating {}", target.display()), e))?;
    let (flags, data) = parse_options(&m.options);
    let fstype = if m.type_.is_empty() || flags.contains(MsFlags::MS_BIND) {
        None
    } else {
        Some(m.type_.as_str())
    };
    let data = (!data.is_empty()).then_some(data.as_str());
    mount(Some(m.source.as_str()), target, fstype, flags, data).map_err(|e| {
        AgentError::InvalidArgument(format!(
            "mounting {} ({}) on {}: {e}",
            m.source,
            m.type_,
            target.display()
        ))
    })?;
    if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
        let _ = mount(
            None::<&str>,
            target,
            None::<&str>,
            flags | MsFlags::MS_REMOUNT,
            None::<&str>,
        );
    }
    Ok(())
}

/// Unmounts in reverse order (lazily, so a busy mount never blocks Delete).
pub fn unmount_all(targets: &[PathBuf]) {
    for t in targets.iter().rev() {
        if let Err(e) = umount2(t, MntFlags::MNT_DETACH) {
            tracing::warn!(target = %t.display(), "unmounting rootfs mount: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let opts: Vec<String> = ["ro", "rbind", "nosuid", "lowerdir=/a", "upperdir=/b"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (flags, data) = parse_options(&opts);
        assert!(flags.contains(
            MsFlags::MS_RDONLY | MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_NOSUID
        ));
        assert_eq!(data, "lowerdir=/a,upperdir=/b");
        let (flags, data) = parse_options(&["ro".to_string(), "rw".to_string()]);
        assert!(!flags.contains(MsFlags::MS_RDONLY));
        assert!(data.is_empty());
    }
}

//! VM configuration and its validation.
//!
//! A [`VmConfig`] is what a user asks for; [`VmConfig::validate`] checks it
//! against the host ([`HostLimits`]) and turns it into a [`ValidatedConfig`],
//! the only form [`crate::Vm::build`] accepts. Every check that can be made
//! before touching KVM is made here, so bad input fails fast with a message
//! that names the offending value.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use devices::virtio::fs::{check_tag, find_virtiofsd, TagError};

/// Smallest guest memory we accept: the boot structures, a kernel and an
/// initramfs need a few MiB; anything below this cannot boot Linux.
pub const MIN_MEMORY_MIB: u64 = 16;

/// Longest kernel command line accepted before the kernel's own limit (read
/// from its boot header) is applied. Includes room for the terminating NUL.
pub const MAX_CMDLINE_LEN: usize = 4095;

/// Where the guest's serial console goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ConsoleConfig {
    /// Serial output to our stdout; our stdin is fed to the guest.
    #[default]
    Stdio,
    /// Serial output appended to a file; no input.
    File(PathBuf),
    /// The serial device exists but its output is discarded.
    None,
}

/// A virtio-blk disk backed by a raw image file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// The raw image.
    pub path: PathBuf,
    /// Expose it read-only (the file is opened read-only too).
    pub read_only: bool,
}

impl std::str::FromStr for DiskConfig {
    type Err = String;

    /// Parses `PATH[,ro]`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (path, read_only) = match s.rsplit_once(',') {
            Some((path, "ro")) => (path, true),
            Some((path, "rw")) => (path, false),
            Some((_, option)) => {
                return Err(format!(
                    "unknown disk option `{option}` in `{s}` (expected PATH[,ro])"
                ))
            }
            None => (s, false),
        };
        if path.is_empty() {
            return Err(format!(
                "invalid disk `{s}`: empty path (expected PATH[,ro])"
            ));
        }
        Ok(DiskConfig {
            path: path.into(),
            read_only,
        })
    }
}

/// A virtio-vsock device with the hybrid unix-socket backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context id (3 or more).
    pub cid: u64,
    /// Host unix socket: clients connect here and send `CONNECT <port>\n`;
    /// guest connections to host port P go to `<uds>_P`.
    pub uds: PathBuf,
}

impl std::str::FromStr for VsockConfig {
    type Err = String;

    /// Parses `cid=N,uds=PATH`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (mut cid, mut uds) = (None, None);
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("cid", v)) => {
                    cid = Some(
                        v.parse::<u64>()
                            .map_err(|e| format!("invalid vsock cid `{v}`: {e}"))?,
                    )
                }
                Some(("uds", v)) if !v.is_empty() => uds = Some(PathBuf::from(v)),
                _ => {
                    return Err(format!(
                        "invalid vsock option `{part}` (expected cid=N,uds=PATH)"
                    ))
                }
            }
        }
        match (cid, uds) {
            (Some(cid), Some(uds)) => Ok(VsockConfig { cid, uds }),
            _ => Err(format!(
                "invalid vsock `{s}`: both cid=N and uds=PATH are required"
            )),
        }
    }
}

/// A virtio-net device backed by a tap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The tap's name (created if it does not exist).
    pub tap: String,
    /// The guest's MAC address.
    pub mac: Option<[u8; 6]>,
    /// Network namespace to open the tap in (e.g. a CNI netns path).
    pub netns: Option<PathBuf>,
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        return Err(format!("invalid MAC `{s}` (expected xx:xx:xx:xx:xx:xx)"));
    }
    for (byte, part) in mac.iter_mut().zip(parts) {
        *byte = u8::from_str_radix(part, 16).map_err(|_| format!("invalid MAC `{s}`"))?;
    }
    Ok(mac)
}

impl std::str::FromStr for NetConfig {
    type Err = String;

    /// Parses `tap=NAME[,mac=xx:xx:xx:xx:xx:xx][,netns=PATH]`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (mut tap, mut mac, mut netns) = (None, None, None);
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("tap", v)) if !v.is_empty() && v.len() < 16 => tap = Some(v.to_string()),
                Some(("tap", v)) => return Err(format!("invalid tap name `{v}` (1 to 15 bytes)")),
                Some(("mac", v)) => mac = Some(parse_mac(v)?),
                Some(("netns", v)) if !v.is_empty() => netns = Some(PathBuf::from(v)),
                _ => {
                    return Err(format!(
                        "invalid net option `{part}` (expected tap=NAME[,mac=..][,netns=PATH])"
                    ))
                }
            }
        }
        let tap = tap.ok_or_else(|| format!("invalid net `{s}`: tap=NAME is required"))?;
        Ok(NetConfig { tap, mac, netns })
    }
}

/// A virtio-fs share served by a virtiofsd the VMM starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsConfig {
    /// The tag the guest mounts (`mount -t virtiofs TAG DIR`): 1 to 36 bytes.
    pub tag: String,
    /// The host directory shared with the guest.
    pub dir: PathBuf,
    /// The virtiofsd binary; when `None`, validation looks it up
    /// (`$VMM_VIRTIOFSD`, PATH, `~/.cargo/bin`) and fills it in.
    pub virtiofsd: Option<PathBuf>,
}

impl std::str::FromStr for FsConfig {
    type Err = String;

    /// Parses `tag=T,dir=PATH` (the tag is checked by validation).
    fn from_str(s: &str) -> Result<Self, String> {
        let (mut tag, mut dir) = (None, None);
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("tag", v)) => tag = Some(v.to_string()),
                Some(("dir", v)) if !v.is_empty() => dir = Some(PathBuf::from(v)),
                _ => {
                    return Err(format!(
                        "invalid fs option `{part}` (expected tag=T,dir=PATH)"
                    ))
                }
            }
        }
        match (tag, dir) {
            (Some(tag), Some(dir)) => Ok(FsConfig {
                tag,
                dir,
                virtiofsd: None,
            }),
            _ => Err(format!(
                "invalid fs `{s}`: both tag=T and dir=PATH are required"
            )),
        }
    }
}

/// What a user asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// Number of vCPUs (1..=KVM's maximum).
    pub vcpus: u32,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Guest kernel: an ELF vmlinux (PVH or 64-bit entry) or a bzImage.
    pub kernel: PathBuf,
    /// Optional initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Serial console wiring.
    pub console: ConsoleConfig,
    /// Attach a virtio-rng device fed from the host's getrandom.
    pub rng: bool,
    /// virtio-blk disks, in the order the guest sees them (vda, vdb, ...).
    pub disks: Vec<DiskConfig>,
    /// A virtio-vsock device.
    pub vsock: Option<VsockConfig>,
    /// virtio-net devices (eth0, eth1, ... in the guest).
    pub nets: Vec<NetConfig>,
    /// virtio-fs shares, one virtiofsd each.
    pub fs: Vec<FsConfig>,
}

/// Facts about the host a configuration is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostLimits {
    /// KVM_CAP_MAX_VCPUS (or the recommended count when absent).
    pub max_vcpus: u32,
    /// Total host RAM in bytes.
    pub host_memory_bytes: u64,
}

impl HostLimits {
    /// Reads the limits of this host from KVM and /proc/meminfo.
    pub fn probe(kvm: &kvm_ioctls::Kvm) -> Result<Self, ConfigError> {
        Ok(HostLimits {
            max_vcpus: u32::try_from(kvm.get_max_vcpus()).unwrap_or(u32::MAX),
            host_memory_bytes: host_memory_bytes()?,
        })
    }
}

/// Total RAM of this host, from /proc/meminfo.
pub fn host_memory_bytes() -> Result<u64, ConfigError> {
    let meminfo =
        fs::read_to_string("/proc/meminfo").map_err(|e| ConfigError::HostMemory(e.to_string()))?;
    parse_mem_total(&meminfo)
        .ok_or_else(|| ConfigError::HostMemory("no MemTotal line in /proc/meminfo".into()))
}

fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// A configuration that passed [`VmConfig::validate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidatedConfig(VmConfig);

impl ValidatedConfig {
    /// The checked configuration.
    pub fn get(&self) -> &VmConfig {
        &self.0
    }

    /// Guest RAM in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.0.memory_mib << 20
    }
}

/// Why a configuration was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// vCPU count of zero.
    #[error("vCPU count must be at least 1")]
    ZeroVcpus,
    /// More vCPUs than KVM supports (or than the boot tables can describe).
    #[error("{requested} vCPUs requested but at most {max} are supported on this host")]
    TooManyVcpus {
        /// Requested count.
        requested: u32,
        /// Host limit.
        max: u32,
    },
    /// Memory of zero or below the minimum.
    #[error("guest memory must be at least {MIN_MEMORY_MIB} MiB, got {0} MiB")]
    MemoryTooSmall(u64),
    /// More memory than the host has.
    #[error("guest memory of {requested_mib} MiB exceeds this host's {host_mib} MiB of RAM")]
    MemoryTooLarge {
        /// Requested MiB.
        requested_mib: u64,
        /// Host total MiB.
        host_mib: u64,
    },
    /// Host memory size unreadable.
    #[error("cannot determine host memory size: {0}")]
    HostMemory(String),
    /// A required file is missing or not a regular file.
    #[error("{what} {path}: {reason}")]
    BadFile {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The path given.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Command line too long.
    #[error("kernel command line is {len} bytes; at most {max} are allowed")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Command line contains a NUL byte.
    #[error("kernel command line contains a NUL byte")]
    CmdlineNul,
    /// A virtio-fs tag is unusable.
    #[error(transparent)]
    FsTag(#[from] TagError),
    /// Two shares have the same tag.
    #[error("virtio-fs tag `{0}` is used by more than one share")]
    DuplicateFsTag(String),
    /// A shared directory is missing or not a directory.
    #[error("virtio-fs share `{tag}`: {path}: {reason}")]
    FsDir {
        /// The share's tag.
        tag: String,
        /// The directory given.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// virtiofsd is not installed (or not where it was said to be).
    #[error("{0}")]
    Virtiofsd(String),
}

/// Largest vCPU count the boot tables (MP table, MADT, APIC IDs in 8 bits) describe.
pub const MAX_BOOT_VCPUS: u32 = 254;

impl VmConfig {
    /// Checks this configuration against `limits` and the filesystem.
    pub fn validate(self, limits: &HostLimits) -> Result<ValidatedConfig, ConfigError> {
        if self.vcpus == 0 {
            return Err(ConfigError::ZeroVcpus);
        }
        let max = limits.max_vcpus.min(MAX_BOOT_VCPUS);
        if self.vcpus > max {
            return Err(ConfigError::TooManyVcpus {
                requested: self.vcpus,
                max,
            });
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(ConfigError::MemoryTooSmall(self.memory_mib));
        }
        let host_mib = limits.host_memory_bytes >> 20;
        if self.memory_mib > host_mib {
            return Err(ConfigError::MemoryTooLarge {
                requested_mib: self.memory_mib,
                host_mib,
            });
        }
        check_file("kernel", &self.kernel)?;
        if let Some(initrd) = &self.initrd {
            check_file("initrd", initrd)?;
        }
        for disk in &self.disks {
            check_file("disk", &disk.path)?;
        }
        if self.cmdline.len() > MAX_CMDLINE_LEN {
            return Err(ConfigError::CmdlineTooLong {
                len: self.cmdline.len(),
                max: MAX_CMDLINE_LEN,
            });
        }
        if self.cmdline.contains('\0') {
            return Err(ConfigError::CmdlineNul);
        }
        let mut config = self;
        check_shares(&mut config.fs)?;
        Ok(ValidatedConfig(config))
    }
}

/// Checks every virtio-fs share (tag, uniqueness, directory) and resolves
/// the virtiofsd binary of those that do not name one.
fn check_shares(shares: &mut [FsConfig]) -> Result<(), ConfigError> {
    let mut tags = HashSet::new();
    for share in shares.iter() {
        check_tag(&share.tag)?;
        if !tags.insert(share.tag.as_str()) {
            return Err(ConfigError::DuplicateFsTag(share.tag.clone()));
        }
        let bad = |reason: String| ConfigError::FsDir {
            tag: share.tag.clone(),
            path: share.dir.clone(),
            reason,
        };
        let meta = fs::metadata(&share.dir).map_err(|e| bad(e.to_string()))?;
        if !meta.is_dir() {
            return Err(bad("not a directory".into()));
        }
    }
    for share in shares.iter_mut().filter(|s| s.virtiofsd.is_none()) {
        let binary = find_virtiofsd().map_err(|e| ConfigError::Virtiofsd(e.to_string()))?;
        share.virtiofsd = Some(binary);
    }
    Ok(())
}

fn check_file(what: &'static str, path: &Path) -> Result<(), ConfigError> {
    let bad = |reason: String| ConfigError::BadFile {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let meta = fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    if meta.len() == 0 {
        return Err(bad("file is empty".into()));
    }
    fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const LIMITS: HostLimits = HostLimits {
        max_vcpus: 8,
        host_memory_bytes: 4 << 30,
    };

    fn kernel_file() -> (vmm_sys_util::tempfile::TempFile, PathBuf) {
        let f = vmm_sys_util::tempfile::TempFile::new().unwrap();
        f.as_file().write_all(b"not really a kernel").unwrap();
        let p = f.as_path().to_path_buf();
        (f, p)
    }

    fn config(kernel: PathBuf) -> VmConfig {
        VmConfig {
            vcpus: 1,
            memory_mib: 128,
            kernel,
            initrd: None,
            cmdline: "console=ttyS0".into(),
            console: ConsoleConfig::None,
            rng: false,
            disks: Vec::new(),
            vsock: None,
            nets: Vec::new(),
            fs: Vec::new(),
        }
    }

    #[test]
    fn accepts_a_sane_config() {
        let (_f, k) = kernel_file();
        let v = config(k).validate(&LIMITS).unwrap();
        assert_eq!(v.memory_bytes(), 128 << 20);
    }

    #[test]
    fn rejects_vcpu_counts() {
        let (_f, k) = kernel_file();
        let mut c = config(k);
        c.vcpus = 0;
        assert_eq!(c.clone().validate(&LIMITS), Err(ConfigError::ZeroVcpus));
        c.vcpus = 9;
        assert_eq!(
            c.validate(&LIMITS),
            Err(ConfigError::TooManyVcpus {
                requested: 9,
                max: 8
            })
        );
    }

    #[test]
    fn vcpus_capped_by_boot_tables() {
        let (_f, k) = kernel_file();
        let mut c = config(k);
        c.vcpus = 255;
        let limits = HostLimits {
            max_vcpus: 1024,
            ..LIMITS
        };
        assert_eq!(
            c.validate(&limits),
            Err(ConfigError::TooManyVcpus {
                requested: 255,
                max: MAX_BOOT_VCPUS
            })
        );
    }

    #[test]
    fn rejects_memory_sizes() {
        let (_f, k) = kernel_file();
        let mut c = config(k);
        c.memory_mib = 0;
        assert_eq!(
            c.clone().validate(&LIMITS),
            Err(ConfigError::MemoryTooSmall(0))
        );
        c.memory_mib = 5000;
        assert_eq!(
            c.validate(&LIMITS),
            Err(ConfigError::MemoryTooLarge {
                requested_mib: 5000,
                host_mib: 4096
            })
        );
    }

    #[test]
    fn rejects_missing_empty_and_directory_kernels() {
        let c = config("/nonexistent/vmlinux".into());
        assert!(matches!(
            c.validate(&LIMITS),
            Err(ConfigError::BadFile { what: "kernel", .. })
        ));
        let empty = vmm_sys_util::tempfile::TempFile::new().unwrap();
        let c = config(empty.as_path().to_path_buf());
        let err = c.validate(&LIMITS).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        let c = config("/".into());
        let err = c.validate(&LIMITS).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn rejects_missing_initrd() {
        let (_f, k) = kernel_file();
        let mut c = config(k);
        c.initrd = Some("/nonexistent/initrd".into());
        assert!(matches!(
            c.validate(&LIMITS),
            Err(ConfigError::BadFile { what: "initrd", .. })
        ));
    }

    #[test]
    fn rejects_bad_cmdlines() {
        let (_f, k) = kernel_file();
        let mut c = config(k);
        c.cmdline = "x".repeat(MAX_CMDLINE_LEN + 1);
        assert_eq!(
            c.clone().validate(&LIMITS),
            Err(ConfigError::CmdlineTooLong {
                len: MAX_CMDLINE_LEN + 1,
                max: MAX_CMDLINE_LEN
            })
        );
        c.cmdline = "a\0b".into();
        assert_eq!(c.validate(&LIMITS), Err(ConfigError::CmdlineNul));
    }

    #[test]
    fn rejects_missing_disk() {
        let (_f, k) = kernel_file();
        let mut c = config(k);
        c.disks = vec!["/nonexistent/disk.img".parse().unwrap()];
        assert!(matches!(
            c.validate(&LIMITS),
            Err(ConfigError::BadFile { what: "disk", .. })
        ));
    }

    #[test]
    fn parses_disk_arguments() {
        let d: DiskConfig = "/a/b.img".parse().unwrap();
        assert_eq!((d.path.to_str().unwrap(), d.read_only), ("/a/b.img", false));
        let d: DiskConfig = "/a/b.img,ro".parse().unwrap();
        assert_eq!((d.path.to_str().unwrap(), d.read_only), ("/a/b.img", true));
        let d: DiskConfig = "/a/x,y.img,rw".parse().unwrap();
        assert_eq!(
            (d.path.to_str().unwrap(), d.read_only),
            ("/a/x,y.img", false)
        );
        assert!("/a/b.img,bogus"
            .parse::<DiskConfig>()
            .unwrap_err()
            .contains("bogus"));
        assert!(",ro".parse::<DiskConfig>().is_err());
    }

    #[test]
    fn parses_vsock_arguments() {
        let v: VsockConfig = "cid=3,uds=/run/v.sock".parse().unwrap();
        assert_eq!((v.cid, v.uds.to_str().unwrap()), (3, "/run/v.sock"));
        let v: VsockConfig = "uds=/x,cid=42".parse().unwrap();
        assert_eq!(v.cid, 42);
        assert!("cid=3"
            .parse::<VsockConfig>()
            .unwrap_err()
            .contains("required"));
        assert!("cid=x,uds=/a"
            .parse::<VsockConfig>()
            .unwrap_err()
            .contains("cid"));
        assert!("cid=3,uds=/a,port=1"
            .parse::<VsockConfig>()
            .unwrap_err()
            .contains("port=1"));
    }

    #[test]
    fn parses_net_arguments() {
        let n: NetConfig = "tap=tap0".parse().unwrap();
        assert_eq!((n.tap.as_str(), n.mac, n.netns), ("tap0", None, None));
        let n: NetConfig = "tap=t1,mac=02:00:00:aa:bb:0c,netns=/run/netns/x"
            .parse()
            .unwrap();
        assert_eq!(n.mac, Some([2, 0, 0, 0xaa, 0xbb, 0x0c]));
        assert_eq!(n.netns.unwrap().to_str().unwrap(), "/run/netns/x");
        assert!("mac=02:00:00:00:00:01"
            .parse::<NetConfig>()
            .unwrap_err()
            .contains("required"));
        assert!("tap=t,mac=zz"
            .parse::<NetConfig>()
            .unwrap_err()
            .contains("MAC"));
        assert!("tap=averyveryverylongname".parse::<NetConfig>().is_err());
    }

    #[test]
    fn parses_fs_arguments() {
        let f: FsConfig = "tag=share,dir=/srv/x".parse().unwrap();
        assert_eq!(
            (f.tag.as_str(), f.dir.to_str().unwrap(), f.virtiofsd),
            ("share", "/srv/x", None)
        );
        let f: FsConfig = "dir=/a,tag=t".parse().unwrap();
        assert_eq!(f.tag, "t");
        assert!("tag=t"
            .parse::<FsConfig>()
            .unwrap_err()
            .contains("required"));
        assert!("tag=t,dir=".parse::<FsConfig>().is_err());
        assert!("tag=t,dir=/a,ro"
            .parse::<FsConfig>()
            .unwrap_err()
            .contains("`ro`"));
    }

    fn share(tag: &str, dir: &Path) -> FsConfig {
        FsConfig {
            tag: tag.into(),
            dir: dir.to_path_buf(),
            virtiofsd: Some("/bin/true".into()),
        }
    }

    #[test]
    fn rejects_bad_shares() {
        let (_f, k) = kernel_file();
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let mut c = config(k);
        c.fs = vec![share("a", dir.as_path()), share("b", dir.as_path())];
        assert!(c.clone().validate(&LIMITS).is_ok());

        c.fs[1].tag = "a".into();
        assert_eq!(
            c.clone().validate(&LIMITS),
            Err(ConfigError::DuplicateFsTag("a".into()))
        );
        c.fs[1].tag = String::new();
        assert_eq!(
            c.clone().validate(&LIMITS),
            Err(ConfigError::FsTag(TagError::Empty))
        );
        c.fs[1].tag = "x".repeat(37);
        let err = c.clone().validate(&LIMITS).unwrap_err();
        assert!(err.to_string().contains("at most 36"), "{err}");

        c.fs[1] = share("b", Path::new("/nonexistent/share"));
        let err = c.clone().validate(&LIMITS).unwrap_err();
        assert!(matches!(err, ConfigError::FsDir { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/share"), "{err}");

        let (_file, file_path) = kernel_file();
        c.fs[1] = share("b", &file_path);
        let err = c.validate(&LIMITS).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
    }

    #[test]
    fn parses_meminfo() {
        assert_eq!(
            parse_mem_total("MemTotal:       24576000 kB\nMemFree: 1 kB\n"),
            Some(24576000 * 1024)
        );
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
    }
}

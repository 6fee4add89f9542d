//! `vmmctl run` with bad input: a clear one-line error, a non-zero exit, no
//! panic, and no files left behind. Most of these fail before KVM is used
//! for the guest, so they run on any host with /dev/kvm (PVM included).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn vmmctl(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmmctl"))
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .output()
        .expect("vmmctl runs")
}

/// Asserts a clean failure: non-zero exit, one `vmmctl: error:` line that
/// contains `needle`, no panic text.
fn assert_clean_failure(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, stderr: {stderr}");
    assert_ne!(
        out.status.code(),
        Some(101),
        "exit 101 means a panic: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("vmmctl: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "exactly one error line: {stderr}");
    assert!(
        errors[0].contains(needle),
        "error line {:?} should mention {needle:?}",
        errors[0]
    );
}

struct Scratch {
    dir: vmm_sys_util::tempdir::TempDir,
}

impl Scratch {
    fn new() -> Self {
        Scratch {
            dir: vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/vmmctl-bad-input").unwrap(),
        }
    }
    fn path(&self) -> &Path {
        self.dir.as_path()
    }
    fn file(&self, name: &str, contents: &[u8]) -> PathBuf {
        let p = self.path().join(name);
        std::fs::File::create(&p)
            .unwrap()
            .write_all(contents)
            .unwrap();
        p
    }
    fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

/// A structurally valid kernel (synthetic ELF) for tests that need one.
fn good_kernel(s: &Scratch) -> PathBuf {
    s.file(
        "vmlinux",
        &controller::synthetic::elf_image(controller::synthetic::Asm::new().i8042_reset().code()),
    )
}

/// Runs `vmmctl run --kernel <valid synthetic kernel> EXTRA... --force` in a
/// fresh scratch directory, so only the flag under test is wrong.
fn run_with_good_kernel(extra: &[&str]) -> (Scratch, Output) {
    let s = Scratch::new();
    let k = good_kernel(&s);
    let mut args = vec!["run", "--kernel", k.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.push(force());
    let out = vmmctl(&args, s.path());
    (s, out)
}

fn force() -> &'static str {
    // Our synthetic kernel runs on PVM too; pass --force so the backend check
    // does not mask the input check being tested.
    "--force"
}

#[test]
fn missing_kernel() {
    let s = Scratch::new();
    let out = vmmctl(
        &["run", "--kernel", "/nonexistent/vmlinux", force()],
        s.path(),
    );
    assert_clean_failure(&out, "/nonexistent/vmlinux");
    assert!(s.entries().is_empty());
}

#[test]
fn corrupt_kernel() {
    let s = Scratch::new();
    let k = s.file("garbage", &[0x5a; 8192]);
    let out = vmmctl(
        &[
            "run",
            "--kernel",
            k.to_str().unwrap(),
            "--console",
            "none",
            force(),
        ],
        s.path(),
    );
    assert_clean_failure(&out, "kernel");
    let truncated = s.file(
        "truncated-elf",
        &controller::synthetic::elf_image(&[0xf4])[..100],
    );
    let out = vmmctl(
        &[
            "run",
            "--kernel",
            truncated.to_str().unwrap(),
            "--console",
            "none",
            force(),
        ],
        s.path(),
    );
    assert_clean_failure(&out, "kernel");
    assert_eq!(
        s.entries(),
        vec!["garbage", "truncated-elf"],
        "no leftover files"
    );
}

#[test]
fn empty_kernel() {
    let s = Scratch::new();
    let k = s.file("empty", b"");
    let out = vmmctl(&["run", "--kernel", k.to_str().unwrap(), force()], s.path());
    assert_clean_failure(&out, "empty");
}

#[test]
fn initrd_larger_than_memory() {
    let s = Scratch::new();
    let k = good_kernel(&s);
    let initrd = s.path().join("big-initrd");
    let f = std::fs::File::create(&initrd).unwrap();
    f.set_len(64 << 20).unwrap(); // sparse: 64 MiB initrd for a 32 MiB guest
    let out = vmmctl(
        &[
            "run",
            "--kernel",
            k.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--memory",
            "32",
            "--console",
            "none",
            force(),
        ],
        s.path(),
    );
    assert_clean_failure(&out, "initrd");
}

#[test]
fn command_line_too_long() {
    let long = "x".repeat(5000);
    let (s, out) = run_with_good_kernel(&["--cmdline", &long]);
    assert_clean_failure(&out, "command line");
    assert_eq!(s.entries(), vec!["vmlinux"], "no leftover files");
}

#[test]
fn zero_vcpus() {
    let (s, out) = run_with_good_kernel(&["--cpus", "0"]);
    assert_clean_failure(&out, "vCPU");
    assert_eq!(s.entries(), vec!["vmlinux"], "no leftover files");
}

#[test]
fn more_vcpus_than_kvm_allows() {
    let (s, out) = run_with_good_kernel(&["--cpus", "100000"]);
    assert_clean_failure(&out, "vCPUs requested");
    assert_eq!(s.entries(), vec!["vmlinux"], "no leftover files");
}

#[test]
fn zero_memory() {
    let (s, out) = run_with_good_kernel(&["--memory", "0"]);
    assert_clean_failure(&out, "memory");
    assert_eq!(s.entries(), vec!["vmlinux"], "no leftover files");
}

#[test]
fn memory_larger_than_the_host() {
    let (s, out) = run_with_good_kernel(&["--memory", "100000000"]);
    assert_clean_failure(&out, "exceeds this host");
    assert_eq!(s.entries(), vec!["vmlinux"], "no leftover files");
}

#[test]
fn bad_console_argument() {
    let s = Scratch::new();
    let k = good_kernel(&s);
    let out = vmmctl(
        &["run", "--kernel", k.to_str().unwrap(), "--console", "tcp:1"],
        s.path(),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid console"));
}

#[test]
fn console_file_that_cannot_be_created() {
    let (s, out) = run_with_good_kernel(&["--console", "file:/nonexistent-dir/console.log"]);
    assert_clean_failure(&out, "console");
    assert_eq!(s.entries(), vec!["vmlinux"], "no leftover files");
}

#[test]
fn help_explains_the_options() {
    let out = vmmctl(&["run", "--help"], Path::new("/"));
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--kernel",
        "--initrd",
        "--cmdline",
        "--cpus",
        "--memory",
        "--console",
        "--boot-timer",
    ] {
        assert!(help.contains(flag), "{flag} missing from help");
    }
}

#[test]
fn kvm_info_reports_backend_and_whether_standard_guests_boot() {
    let Some(_kvm) =
        common::kvm_or_skip("kvm_info_reports_backend_and_whether_standard_guests_boot")
    else {
        return;
    };
    let out = vmmctl(&["kvm-info"], Path::new("/"));
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("KVM API version:   12"), "{text}");
    assert!(text.contains("backend:"), "{text}");
    assert!(text.contains("KVM_CAP_IRQCHIP"), "{text}");
    assert!(text.contains("vCPUs:"), "{text}");
    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    if pvm {
        assert!(text.contains("backend:           PVM"), "{text}");
        assert!(text.contains("standard guests:   CANNOT boot"), "{text}");
    } else {
        assert!(!text.contains("backend:           PVM"), "{text}");
    }
}

#[test]
fn run_on_pvm_refuses_a_standard_kernel_with_an_explanation() {
    if !Path::new("/sys/module/kvm_pvm").exists() {
        println!(
            "SKIPPED run_on_pvm_refuses_a_standard_kernel_with_an_explanation: host KVM is not PVM"
        );
        return;
    }
    let s = Scratch::new();
    let k = good_kernel(&s);
    let started = std::time::Instant::now();
    let out = vmmctl(
        &["run", "--kernel", k.to_str().unwrap(), "--console", "none"],
        s.path(),
    );
    assert_clean_failure(&out, "PVM");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot boot"));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "refuses promptly"
    );
}

#[test]
fn missing_disk_image() {
    let (s, out) = run_with_good_kernel(&["--disk", "/nonexistent/disk.img"]);
    assert_clean_failure(&out, "/nonexistent/disk.img");
    assert_eq!(s.entries(), vec!["vmlinux"], "no leftover files");
}

#[test]
fn unknown_disk_option() {
    let (_s, out) = run_with_good_kernel(&["--disk", "/tmp/x.img,bogus"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown disk option `bogus`"), "{stderr}");
}

/// `vmmctl run --kernel <good kernel> --fs ARG... --force` with `env` set,
/// temporary files (virtiofsd's socket directory) going to the scratch dir.
fn run_with_shares(shares: &[&str], env: &[(&str, &str)]) -> (Scratch, Output) {
    let s = Scratch::new();
    let k = good_kernel(&s);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmmctl"));
    cmd.args(["run", "--kernel", k.to_str().unwrap(), "--console", "none"]);
    for share in shares {
        cmd.args([
            "--fs",
            &share.replace("SCRATCH", s.path().to_str().unwrap()),
        ]);
    }
    cmd.arg(force())
        .current_dir(s.path())
        .env("RUST_LOG", "warn")
        .env("TMPDIR", s.path())
        .env_remove("XDG_RUNTIME_DIR");
    for (k, v) in env {
        cmd.env(k, v.replace("SCRATCH", s.path().to_str().unwrap()));
    }
    let out = cmd.output().expect("vmmctl runs");
    (s, out)
}

/// Processes whose command line mentions `needle` (a leftover virtiofsd).
fn processes_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(needle) && c.contains("virtiofsd"))
        .collect()
}

#[test]
fn fs_share_errors_are_one_clear_line_with_no_leftovers() {
    let cases: [(&[&str], &str); 5] = [
        (&["tag=a,dir=/nonexistent/share"], "/nonexistent/share"),
        (&["tag=a,dir=SCRATCH/vmlinux"], "not a directory"),
        (&["tag=,dir=SCRATCH"], "tag is empty"),
        (
            &["tag=0123456789012345678901234567890123456,dir=SCRATCH"],
            "at most 36 are allowed",
        ),
        (
            &["tag=a,dir=SCRATCH", "tag=a,dir=/"],
            "`a` is used by more than one",
        ),
    ];
    for (shares, needle) in cases {
        let (s, out) = run_with_shares(shares, &[]);
        assert_clean_failure(&out, needle);
        assert_eq!(s.entries(), vec!["vmlinux"], "no leftover files");
    }
}

#[test]
fn fs_without_virtiofsd_says_how_to_install_it() {
    let (s, out) = run_with_shares(
        &["tag=a,dir=SCRATCH"],
        &[
            ("PATH", "/usr/bin:/bin"),
            ("HOME", "SCRATCH"),
            ("CARGO_HOME", "SCRATCH"),
            ("VMM_VIRTIOFSD", ""),
        ],
    );
    assert_clean_failure(&out, "cargo install virtiofsd");
    assert_eq!(s.entries(), vec!["vmlinux"]);
    let (_s, out) = run_with_shares(
        &["tag=a,dir=SCRATCH"],
        &[("VMM_VIRTIOFSD", "/nonexistent/virtiofsd")],
    );
    assert_clean_failure(&out, "VMM_VIRTIOFSD=/nonexistent/virtiofsd");
}

#[test]
fn fs_shares_start_and_stop_their_virtiofsd() {
    // Two shares; the synthetic guest resets at once and vmmctl ends: both
    // virtiofsd instances are stopped and their socket directories gone.
    let share = Scratch::new();
    let dir = share.path().to_str().unwrap();
    let (s, out) = run_with_shares(
        &[&format!("tag=one,dir={dir}"), "tag=two,dir=SCRATCH"],
        &[("RUST_LOG", "vmm_core=info")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stderr.matches("virtiofsd started").count(),
        2,
        "one virtiofsd per share: {stderr}"
    );
    assert_eq!(s.entries(), vec!["vmlinux"], "socket directories removed");
    let scratch = s.path().to_str().unwrap();
    assert_eq!(processes_mentioning(scratch), Vec::<String>::new());
    assert_eq!(processes_mentioning(dir), Vec::<String>::new());
}

#[test]
fn help_explains_fs() {
    let out = vmmctl(&["run", "--help"], Path::new("/"));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--fs <tag=T,dir=PATH>"), "{help}");
    assert!(help.contains("virtiofs"), "{help}");
}

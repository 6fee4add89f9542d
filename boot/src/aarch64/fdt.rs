//! The flattened device tree handed to an aarch64 Linux guest.
//!
//! Describes a `linux,dummy-virt` machine: CPUs started through PSCI (HVC),
//! memory, a GICv2 or GICv3, the architected timer, an optional 16550 UART
//! fed by a fixed clock, and virtio-mmio devices. All addresses use two
//! cells, as do all sizes.

use vm_fdt::FdtWriter;

use super::layout::{FDT_MAX_SIZE, UART_CLOCK_HZ};

/// Result of writing one node.
type WriteResult = Result<(), vm_fdt::Error>;

/// phandle of the interrupt controller.
const GIC_PHANDLE: u32 = 1;
/// phandle of the UART's APB clock.
const CLOCK_PHANDLE: u32 = 2;

/// First interrupt cell: shared peripheral interrupt.
const GIC_SPI: u32 = 0;
/// First interrupt cell: private peripheral interrupt.
const GIC_PPI: u32 = 1;
/// Third interrupt cell: rising edge.
const IRQ_TYPE_EDGE_RISING: u32 = 1;
/// Third interrupt cell: active-high level.
const IRQ_TYPE_LEVEL_HIGH: u32 = 4;
/// MPIDR affinity fields (Aff3, Aff2, Aff1, Aff0).
const MPIDR_AFFINITY_MASK: u64 = 0xff_00ff_ffff;

/// Which GIC architecture the VM has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GicVersion {
    /// GICv2: distributor + CPU interface.
    V2,
    /// GICv3: distributor + redistributors.
    V3,
}

/// The interrupt controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GicConfig {
    /// Architecture version.
    pub version: GicVersion,
    /// Distributor `(address, size)`.
    pub distributor: (u64, u64),
    /// GICv2 CPU interface or GICv3 redistributor region `(address, size)`.
    pub cpu_or_redist: (u64, u64),
    /// Maintenance interrupt (PPI number).
    pub maint_irq: u32,
}

/// Everything the device tree describes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdtConfig {
    /// One entry per vCPU: its MPIDR (the affinity bits become `reg`).
    pub cpu_mpidrs: Vec<u64>,
    /// RAM regions `(address, size)`.
    pub memory: Vec<(u64, u64)>,
    /// Kernel command line (`/chosen/bootargs`).
    pub cmdline: String,
    /// Initrd `(address, size)`.
    pub initrd: Option<(u64, u64)>,
    /// Interrupt controller.
    pub gic: GicConfig,
    /// 16550 UART `(address, SPI)`; also the console (`stdout-path`).
    pub serial: Option<(u64, u32)>,
    /// virtio-mmio devices `(address, size, SPI)`.
    pub virtio_mmio: Vec<(u64, u64, u32)>,
    /// Architected timer PPIs: secure physical, non-secure physical, virtual, hypervisor.
    pub timer_ppis: [u32; 4],
}

/// Errors building the device tree.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FdtError {
    /// No vCPU.
    #[error("the device tree needs at least one CPU")]
    NoCpus,
    /// No RAM region.
    #[error("the device tree needs at least one memory region")]
    NoMemory,
    /// The writer refused a node or property.
    #[error("cannot write FDT node {node}: {source}")]
    Write {
        /// Path of the node being written.
        node: String,
        /// The writer error.
        #[source]
        source: vm_fdt::Error,
    },
    /// The blob is larger than the boot protocol allows.
    #[error("the FDT is {size} bytes, at most {FDT_MAX_SIZE} are allowed")]
    TooLarge {
        /// Blob size.
        size: usize,
    },
}

/// Maps a writer error to an [`FdtError`] naming `node`.
fn at(node: impl Into<String>) -> impl FnOnce(vm_fdt::Error) -> FdtError {
    let node = node.into();
    move |source| FdtError::Write { node, source }
}

/// Builds the device tree blob for `cfg`.
pub fn create_fdt(cfg: &FdtConfig) -> Result<Vec<u8>, FdtError> {
    if cfg.cpu_mpidrs.is_empty() {
        return Err(FdtError::NoCpus);
    }
    if cfg.memory.is_empty() {
        return Err(FdtError::NoMemory);
    }

    let mut fdt = FdtWriter::new().map_err(at("/"))?;
    let root = fdt.begin_node("").map_err(at("/"))?;
    root_properties(&mut fdt).map_err(at("/"))?;
    chosen(&mut fdt, cfg).map_err(at("/chosen"))?;
    memory(&mut fdt, &cfg.memory).map_err(at("/memory"))?;
    cpus(&mut fdt, &cfg.cpu_mpidrs).map_err(at("/cpus"))?;
    psci(&mut fdt).map_err(at("/psci"))?;
    gic(&mut fdt, &cfg.gic).map_err(at("/intc"))?;
    timer(&mut fdt, cfg).map_err(at("/timer"))?;
    if let Some((addr, spi)) = cfg.serial {
        clock(&mut fdt).map_err(at("/apb-pclk"))?;
        uart(&mut fdt, addr, spi).map_err(at(uart_path(addr)))?;
    }
    for &(addr, size, spi) in &cfg.virtio_mmio {
        virtio_mmio(&mut fdt, addr, size, spi).map_err(at(format!("/virtio_mmio@{addr:x}")))?;
    }
    fdt.end_node(root).map_err(at("/"))?;
    let blob = fdt.finish().map_err(at("/"))?;

    if blob.len() as u64 > FDT_MAX_SIZE {
        return Err(FdtError::TooLarge { size: blob.len() });
    }
    Ok(blob)
}

fn uart_path(addr: u64) -> String {
    format!("/uart@{addr:x}")
}

fn root_properties(fdt: &mut FdtWriter) -> WriteResult {
    fdt.property_string("compatible", "linux,dummy-virt")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_u32("interrupt-parent", GIC_PHANDLE)
}

fn chosen(fdt: &mut FdtWriter, cfg: &FdtConfig) -> WriteResult {
    let node = fdt.begin_node("chosen")?;
    fdt.property_string("bootargs", &cfg.cmdline)?;
    if let Some((addr, size)) = cfg.initrd {
        fdt.property_u64("linux,initrd-start", addr)?;
        fdt.property_u64("linux,initrd-end", addr.saturating_add(size))?;
    }
    if let Some((addr, _)) = cfg.serial {
        fdt.property_string("stdout-path", &uart_path(addr))?;
    }
    fdt.end_node(node)
}

fn memory(fdt: &mut FdtWriter, regions: &[(u64, u64)]) -> WriteResult {
    let first = regions.iter().map(|r| r.0).min().unwrap_or(0);
    let node = fdt.begin_node(&format!("memory@{first:x}"))?;
    fdt.property_string("device_type", "memory")?;
    let reg: Vec<u64> = regions
        .iter()
        .flat_map(|&(addr, size)| [addr, size])
        .collect();
    fdt.property_array_u64("reg", &reg)?;
    fdt.end_node(node)
}

fn cpus(fdt: &mut FdtWriter, mpidrs: &[u64]) -> WriteResult {
    let node = fdt.begin_node("cpus")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 0)?;
    for mpidr in mpidrs {
        let reg = mpidr & MPIDR_AFFINITY_MASK;
        let cpu = fdt.begin_node(&format!("cpu@{reg:x}"))?;
        fdt.property_string("device_type", "cpu")?;
        fdt.property_string("compatible", "arm,arm-v8")?;
        fdt.property_string("enable-method", "psci")?;
        fdt.property_u64("reg", reg)?;
        fdt.end_node(cpu)?;
    }
    fdt.end_node(node)
}

fn psci(fdt: &mut FdtWriter) -> WriteResult {
    let node = fdt.begin_node("psci")?;
    fdt.property_string_list(
        "compatible",
        vec!["arm,psci-1.0".to_string(), "arm,psci-0.2".to_string()],
    )?;
    fdt.property_string("method", "hvc")?;
    fdt.end_node(node)
}

fn gic(fdt: &mut FdtWriter, gic: &GicConfig) -> WriteResult {
    let (dist_addr, dist_size) = gic.distributor;
    let (second_addr, second_size) = gic.cpu_or_redist;
    let node = fdt.begin_node(&format!("intc@{dist_addr:x}"))?;
    let compatible = match gic.version {
        GicVersion::V2 => "arm,cortex-a15-gic",
        GicVersion::V3 => "arm,gic-v3",
    };
    fdt.property_string("compatible", compatible)?;
    fdt.property_null("interrupt-controller")?;
    fdt.property_u32("#interrupt-cells", 3)?;
    fdt.property_array_u64("reg", &[dist_addr, dist_size, second_addr, second_size])?;
    // An interrupt provider states its child address format (none are used).
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_null("ranges")?;
    fdt.property_array_u32("interrupts", &[GIC_PPI, gic.maint_irq, IRQ_TYPE_LEVEL_HIGH])?;
    fdt.property_phandle(GIC_PHANDLE)?;
    fdt.end_node(node)
}

fn timer(fdt: &mut FdtWriter, cfg: &FdtConfig) -> WriteResult {
    // GICv2 PPIs also name the CPUs they are wired to (bits 8..15 of the flags).
    let flags = match cfg.gic.version {
        GicVersion::V2 => {
            let cpus = cfg.cpu_mpidrs.len().min(8) as u32;
            IRQ_TYPE_LEVEL_HIGH | ((((1u32 << cpus) - 1) & 0xff) << 8)
        }
        GicVersion::V3 => IRQ_TYPE_LEVEL_HIGH,
    };
    let interrupts: Vec<u32> = cfg
        .timer_ppis
        .iter()
        .flat_map(|&ppi| [GIC_PPI, ppi, flags])
        .collect();
    let node = fdt.begin_node("timer")?;
    fdt.property_string("compatible", "arm,armv8-timer")?;
    fdt.property_null("always-on")?;
    fdt.property_array_u32("interrupts", &interrupts)?;
    fdt.end_node(node)
}

fn clock(fdt: &mut FdtWriter) -> WriteResult {
    let node = fdt.begin_node("apb-pclk")?;
    fdt.property_string("compatible", "fixed-clock")?;
    fdt.property_u32("#clock-cells", 0)?;
    fdt.property_u32("clock-frequency", UART_CLOCK_HZ)?;
    fdt.property_string("clock-output-names", "clk24mhz")?;
    fdt.property_phandle(CLOCK_PHANDLE)?;
    fdt.end_node(node)
}

fn uart(fdt: &mut FdtWriter, addr: u64, spi: u32) -> WriteResult {
    let node = fdt.begin_node(&format!("uart@{addr:x}"))?;
    fdt.property_string("compatible", "ns16550a")?;
    fdt.property_array_u64("reg", &[addr, super::layout::SERIAL_MMIO_SIZE])?;
    fdt.property_u32("clock-frequency", UART_CLOCK_HZ)?;
    fdt.property_u32("clocks", CLOCK_PHANDLE)?;
    fdt.property_string("clock-names", "apb_pclk")?;
    fdt.property_array_u32("interrupts", &[GIC_SPI, spi, IRQ_TYPE_EDGE_RISING])?;
    fdt.end_node(node)
}

fn virtio_mmio(fdt: &mut FdtWriter, addr: u64, size: u64, spi: u32) -> WriteResult {
    let node = fdt.begin_node(&format!("virtio_mmio@{addr:x}"))?;
    fdt.property_string("compatible", "virtio,mmio")?;
    fdt.property_array_u64("reg", &[addr, size])?;
    fdt.property_array_u32("interrupts", &[GIC_SPI, spi, IRQ_TYPE_EDGE_RISING])?;
    fdt.property_null("dma-coherent")?;
    fdt.end_node(node)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::process::{Command, Stdio};

    use super::super::layout::*;
    use super::*;

    /// Decompiles `blob` with `dtc`; fails the test when dtc is missing or
    /// rejects the blob.
    fn decompile(blob: &[u8]) -> String {
        let mut child = match Command::new("dtc")
            .args(["-I", "dtb", "-O", "dts", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(child) => child,
            Err(e) => panic!(
                "cannot run dtc ({e}): install device-tree-compiler \
                 (e.g. `apt-get install device-tree-compiler`) to run the FDT tests"
            ),
        };
        child.stdin.take().unwrap().write_all(blob).unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "dtc rejected the blob: {stderr}");
        assert!(stderr.trim().is_empty(), "dtc warnings: {stderr}");
        String::from_utf8(out.stdout).unwrap()
    }

    fn config(version: GicVersion, num_cpus: u64) -> FdtConfig {
        let second = match version {
            GicVersion::V2 => (GICV2_CPU_START, GICV2_CPU_SIZE),
            GicVersion::V3 => (GICV3_REDIST_START, gicv3_redist_size(num_cpus)),
        };
        FdtConfig {
            cpu_mpidrs: (0..num_cpus).map(|i| 0x8000_0000 | i).collect(),
            memory: vec![(DRAM_START, 256 << 20)],
            cmdline: "console=ttyS0 reboot=k panic=1".to_string(),
            initrd: Some((DRAM_START + (200 << 20), 0x10_0000)),
            gic: GicConfig {
                version,
                distributor: (GIC_DIST_START, GIC_DIST_SIZE),
                cpu_or_redist: second,
                maint_irq: GIC_MAINT_PPI,
            },
            serial: Some((SERIAL_MMIO_START, SERIAL_SPI)),
            virtio_mmio: (0..2)
                .map(|n| virtio_mmio_slot(n).unwrap())
                .map(|(a, spi)| (a, VIRTIO_MMIO_SLOT_SIZE, spi))
                .collect(),
            timer_ppis: TIMER_PPIS,
        }
    }

    /// The text of node `name` (from its opening line to its closing brace).
    fn node<'a>(dts: &'a str, name: &str) -> &'a str {
        let open = format!("{name} {{");
        let start = dts
            .find(&open)
            .unwrap_or_else(|| panic!("no node {name} in:\n{dts}"));
        let end = dts[start..].find("};").unwrap() + start;
        &dts[start..end]
    }

    fn assert_has(text: &str, line: &str) {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }

    #[test]
    fn gicv3_machine() {
        let blob = create_fdt(&config(GicVersion::V3, 2)).unwrap();
        let dts = decompile(&blob);

        assert_has(&dts, "compatible = \"linux,dummy-virt\";");
        assert_has(&dts, "#address-cells = <0x02>;");
        assert_has(&dts, "#size-cells = <0x02>;");
        assert_has(&dts, "interrupt-parent = <0x01>;");

        let chosen = node(&dts, "chosen");
        assert_has(chosen, "bootargs = \"console=ttyS0 reboot=k panic=1\";");
        assert_has(chosen, "linux,initrd-start = <0x00 0x8c800000>;");
        assert_has(chosen, "linux,initrd-end = <0x00 0x8c900000>;");
        assert_has(chosen, "stdout-path = \"/uart@9000000\";");

        let memory = node(&dts, "memory@80000000");
        assert_has(memory, "device_type = \"memory\";");
        assert_has(memory, "reg = <0x00 0x80000000 0x00 0x10000000>;");

        // Bit 31 of MPIDR (RES1) is not an affinity bit.
        for (i, name) in ["cpu@0", "cpu@1"].iter().enumerate() {
            let cpu = node(&dts, name);
            assert_has(cpu, "device_type = \"cpu\";");
            assert_has(cpu, "compatible = \"arm,arm-v8\";");
            assert_has(cpu, "enable-method = \"psci\";");
            assert_has(cpu, &format!("reg = <0x00 0x{i:02x}>;"));
        }
        assert!(!dts.contains("cpu@2"));

        let psci = node(&dts, "psci");
        assert_has(psci, "compatible = \"arm,psci-1.0\\0arm,psci-0.2\";");
        assert_has(psci, "method = \"hvc\";");

        let intc = node(&dts, "intc@8000000");
        assert_has(intc, "compatible = \"arm,gic-v3\";");
        assert_has(intc, "interrupt-controller;");
        assert_has(intc, "#interrupt-cells = <0x03>;");
        assert_has(
            intc,
            "reg = <0x00 0x8000000 0x00 0x10000 0x00 0x80a0000 0x00 0x40000>;",
        );
        assert_has(intc, "interrupts = <0x01 0x09 0x04>;");
        assert_has(intc, "phandle = <0x01>;");

        let timer = node(&dts, "timer");
        assert_has(timer, "compatible = \"arm,armv8-timer\";");
        assert_has(
            timer,
            "interrupts = <0x01 0x0d 0x04 0x01 0x0e 0x04 0x01 0x0b 0x04 0x01 0x0a 0x04>;",
        );

        let clock = node(&dts, "apb-pclk");
        assert_has(clock, "compatible = \"fixed-clock\";");
        assert_has(clock, "clock-frequency = <0x16e3600>;");
        assert_has(clock, "phandle = <0x02>;");

        let uart = node(&dts, "uart@9000000");
        assert_has(uart, "compatible = \"ns16550a\";");
        assert_has(uart, "reg = <0x00 0x9000000 0x00 0x1000>;");
        assert_has(uart, "clocks = <0x02>;");
        assert_has(uart, "clock-frequency = <0x16e3600>;");
        assert_has(uart, "interrupts = <0x00 0x01 0x01>;");

        for (addr, spi) in [("a000000", "0x10"), ("a001000", "0x11")] {
            let dev = node(&dts, &format!("virtio_mmio@{addr}"));
            assert_has(dev, "compatible = \"virtio,mmio\";");
            assert_has(dev, &format!("reg = <0x00 0x{addr} 0x00 0x1000>;"));
            assert_has(dev, &format!("interrupts = <0x00 {spi} 0x01>;"));
            assert_has(dev, "dma-coherent;");
        }
    }

    #[test]
    fn gicv2_machine() {
        let blob = create_fdt(&config(GicVersion::V2, 4)).unwrap();
        let dts = decompile(&blob);
        let intc = node(&dts, "intc@8000000");
        assert_has(intc, "compatible = \"arm,cortex-a15-gic\";");
        assert_has(
            intc,
            "reg = <0x00 0x8000000 0x00 0x10000 0x00 0x8010000 0x00 0x2000>;",
        );
        // Level-high, routed to CPUs 0-3.
        assert_has(node(&dts, "timer"), "interrupts = <0x01 0x0d 0xf04 ");
        assert_eq!(dts.matches("device_type = \"cpu\"").count(), 4);
    }

    #[test]
    fn optional_parts_can_be_left_out() {
        let cfg = FdtConfig {
            initrd: None,
            serial: None,
            virtio_mmio: Vec::new(),
            memory: vec![(DRAM_START, 64 << 20), (DRAM_START + (1 << 30), 64 << 20)],
            ..config(GicVersion::V3, 1)
        };
        let dts = decompile(&create_fdt(&cfg).unwrap());
        assert!(!dts.contains("linux,initrd-start"));
        assert!(!dts.contains("stdout-path"));
        assert!(!dts.contains("uart@"));
        assert!(!dts.contains("apb-pclk"));
        assert!(!dts.contains("virtio_mmio"));
        assert_has(
            node(&dts, "memory@80000000"),
            "reg = <0x00 0x80000000 0x00 0x4000000 0x00 0xc0000000 0x00 0x4000000>;",
        );
    }

    #[test]
    fn blob_has_the_fdt_magic_and_fits() {
        let blob = create_fdt(&config(GicVersion::V3, 8)).unwrap();
        assert_eq!(&blob[..4], &[0xd0, 0x0d, 0xfe, 0xed]);
        assert_eq!(
            u32::from_be_bytes(blob[4..8].try_into().unwrap()) as usize,
            blob.len()
        );
        assert!(blob.len() as u64 <= FDT_MAX_SIZE);
    }

    #[test]
    fn invalid_configs_are_errors() {
        let mut cfg = config(GicVersion::V3, 1);
        cfg.cpu_mpidrs.clear();
        assert_eq!(create_fdt(&cfg), Err(FdtError::NoCpus));

        let mut cfg = config(GicVersion::V3, 1);
        cfg.memory.clear();
        assert_eq!(create_fdt(&cfg), Err(FdtError::NoMemory));

        let mut cfg = config(GicVersion::V3, 1);
        cfg.cmdline = "bad\0cmdline".to_string();
        let err = create_fdt(&cfg).unwrap_err();
        assert_eq!(
            err,
            FdtError::Write {
                node: "/chosen".to_string(),
                source: vm_fdt::Error::InvalidString
            }
        );
        assert_eq!(
            err.to_string(),
            "cannot write FDT node /chosen: Strings cannot contain NUL"
        );

        let mut cfg = config(GicVersion::V3, 1);
        cfg.cmdline = "x".repeat(FDT_MAX_SIZE as usize);
        assert!(matches!(create_fdt(&cfg), Err(FdtError::TooLarge { .. })));
    }
}

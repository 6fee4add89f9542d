//! CPUID normalisation: turn KVM_GET_SUPPORTED_CPUID into what one vCPU of
//! this VM should see.
//!
//! Per vCPU: its APIC ID and the package topology (one socket, one thread per
//! core, `vcpu_count` cores), the hypervisor bit, the KVM signature leaves,
//! and the timing leaf 0x40000010 carrying the TSC and APIC-bus frequencies
//! so the guest never has to calibrate (calibration is slow and unreliable
//! under nested virtualization).

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// Leaf 1 ECX: the guest runs under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX: HTT (more than one logical processor in the package).
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// First hypervisor leaf (signature and max hypervisor leaf).
pub const HYPERVISOR_SIGNATURE_LEAF: u32 = 0x4000_0000;
/// Generic timing leaf (VMware convention, read by Linux and others):
/// EAX = TSC kHz, EBX = APIC bus kHz.
pub const HYPERVISOR_TIMING_LEAF: u32 = 0x4000_0010;
/// KVM's local APIC timer runs at 1 GHz (1 ns per tick).
const KVM_APIC_BUS_KHZ: u32 = 1_000_000;
/// "KVMKVMKVM\0\0\0" as EBX, ECX, EDX.
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];

/// Per-vCPU inputs of normalisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuidParams {
    /// This vCPU's index, used as its APIC ID.
    pub vcpu_index: u8,
    /// Number of vCPUs in the VM.
    pub vcpu_count: u8,
    /// TSC frequency given to the guest, when known.
    pub tsc_khz: Option<u32>,
}

/// Bits needed to number `count` items (x2APIC topology shift width).
fn bits_for(count: u8) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (u32::from(count) - 1).leading_zeros()
    }
}

/// Normalises `cpuid` (a copy of the supported set) for one vCPU.
pub fn normalize(cpuid: &mut CpuId, params: CpuidParams) {
    let mut entries: Vec<kvm_cpuid_entry2> = cpuid.as_slice().to_vec();
    let apic_id = u32::from(params.vcpu_index);
    let count = u32::from(params.vcpu_count.max(1));
    let core_bits = bits_for(params.vcpu_count);

    for entry in entries.iter_mut() {
        match entry.function {
            0x1 => {
                // EBX: [31:24] initial APIC ID, [23:16] logical processors per package.
                entry.ebx = (entry.ebx & 0x0000_ffff) | (apic_id << 24) | ((count & 0xff) << 16);
                entry.ecx |= LEAF1_ECX_HYPERVISOR;
                if count > 1 {
                    entry.edx |= LEAF1_EDX_HTT;
                } else {
                    entry.edx &= !LEAF1_EDX_HTT;
                }
            }
            0x4 => {
                // Deterministic cache parameters: cores per package in EAX[31:26],
                // threads sharing this cache in EAX[25:14].
                let level = (entry.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count - 1 } else { 0 };
                entry.eax =
                    (entry.eax & 0x3fff) | ((sharing & 0xfff) << 14) | (((count - 1) & 0x3f) << 26);
            }
            0x6 => {
                // No thermal/power management for the guest.
                entry.eax = 0;
                entry.ebx = 0;
                entry.ecx &= 0x1; // keep "hardware coordination feedback" only
                entry.edx = 0;
            }
            0xa => {
                // No architectural PMU exposed.
                entry.eax = 0;
                entry.ebx = 0;
                entry.ecx = 0;
                entry.edx = 0;
            }
            0xb | 0x1f => {
                // x2APIC topology: level 0 = SMT (1 thread), level 1 = core.
                entry.edx = apic_id;
                match entry.index {
                    0 => {
                        entry.eax = 0;
                        entry.ebx = 1;
                        entry.ecx = 1 << 8;
                    }
                    1 => {
                        entry.eax = core_bits;
                        entry.ebx = count;
                        entry.ecx = (2 << 8) | 1;
                    }
                    n => {
                        entry.eax = 0;
                        entry.ebx = 0;
                        entry.ecx = n & 0xff;
                    }
                }
            }
            0x8000_0008 => {
                // AMD: ECX[7:0] = cores - 1, [15:12] APIC ID size.
                entry.ecx = (entry.ecx & !0xf0ff) | ((count - 1) & 0xff) | (core_bits << 12);
            }
            0x8000_001e => {
                // AMD extended APIC ID / compute unit / node.
                entry.eax = apic_id;
                entry.ebx = (entry.ebx & !0xff) | (apic_id & 0xff);
                entry.ecx = 0;
            }
            HYPERVISOR_SIGNATURE_LEAF => {
                entry.eax = entry.eax.max(HYPERVISOR_TIMING_LEAF);
                entry.ebx = KVM_SIGNATURE[0];
                entry.ecx = KVM_SIGNATURE[1];
                entry.edx = KVM_SIGNATURE[2];
            }
            _ => {}
        }
    }

    if !entries
        .iter()
        .any(|e| e.function == HYPERVISOR_SIGNATURE_LEAF)
    {
        entries.push(kvm_cpuid_entry2 {
            function: HYPERVISOR_SIGNATURE_LEAF,
            eax: HYPERVISOR_TIMING_LEAF,
            ebx: KVM_SIGNATURE[0],
            ecx: KVM_SIGNATURE[1],
            edx: KVM_SIGNATURE[2],
            ..Default::default()
        });
    }
    entries.retain(|e| e.function != HYPERVISOR_TIMING_LEAF);
    if let Some(tsc_khz) = params.tsc_khz {
        entries.push(kvm_cpuid_entry2 {
            function: HYPERVISOR_TIMING_LEAF,
            eax: tsc_khz,
            ebx: KVM_APIC_BUS_KHZ,
            ..Default::default()
        });
    }
    // KVM requires the index to be ignored unless flagged significant.
    for entry in entries.iter_mut() {
        if !matches!(
            entry.function,
            0x4 | 0x7
                | 0xb
                | 0xd
                | 0xf
                | 0x10
                | 0x12
                | 0x14
                | 0x17
                | 0x18
                | 0x1d
                | 0x1e
                | 0x1f
                | 0x8000_001d
                | 0x8000_0020
                | 0x8000_0026
        ) {
            continue;
        }
        entry.flags |= KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
    }
    // The number of entries can only grow by the two leaves added above,
    // which CpuId accommodates up to KVM_MAX_CPUID_ENTRIES.
    match CpuId::from_entries(&entries) {
        Ok(new) => *cpuid = new,
        Err(e) => tracing::warn!("cannot rebuild CPUID table ({e:?}); keeping KVM's set"),
    }
}

/// Looks up a leaf/subleaf in a CPUID table.
pub fn find(cpuid: &CpuId, function: u32, index: u32) -> Option<&kvm_cpuid_entry2> {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == function && e.index == index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        function: u32,
        index: u32,
        eax: u32,
        ebx: u32,
        ecx: u32,
        edx: u32,
    ) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    /// A small "supported CPUID" as a KVM host would return it.
    fn supported() -> CpuId {
        CpuId::from_entries(&[
            entry(0x0, 0, 0x1f, 0x756e_6547, 0x6c65_746e, 0x4965_6e69),
            entry(0x1, 0, 0x000a_0652, 0x0000_0800, 0x0000_0001, 0x0000_0001),
            entry(0x4, 0, 0x0000_0121, 0, 0, 0),
            entry(0x4, 3, 0x0000_0163, 0, 0, 0),
            entry(0xb, 0, 0, 0, 0, 0),
            entry(0xb, 1, 0, 0, 0, 0),
            entry(0xa, 0, 0x0704_0802, 0, 0, 0x603),
            entry(0x4000_0000, 0, 0x4000_0001, 0, 0, 0),
            entry(0x4000_0001, 0, 0x0100_7afb, 0, 0, 0),
            entry(0x8000_0008, 0, 0x3030, 0, 0, 0),
        ])
        .unwrap()
    }

    #[test]
    fn sets_apic_id_and_logical_count_per_vcpu() {
        for (index, count) in [(0u8, 1u8), (1, 2), (5, 8)] {
            let mut c = supported();
            normalize(
                &mut c,
                CpuidParams {
                    vcpu_index: index,
                    vcpu_count: count,
                    tsc_khz: None,
                },
            );
            let leaf1 = find(&c, 1, 0).unwrap();
            assert_eq!(leaf1.ebx >> 24, u32::from(index));
            assert_eq!((leaf1.ebx >> 16) & 0xff, u32::from(count));
            assert_eq!(leaf1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
            assert_ne!(leaf1.ecx & LEAF1_ECX_HYPERVISOR, 0);
            assert_eq!(leaf1.edx & LEAF1_EDX_HTT != 0, count > 1);
            assert_eq!(find(&c, 0xb, 0).unwrap().edx, u32::from(index));
            assert_eq!(find(&c, 0xb, 1).unwrap().ebx, u32::from(count));
        }
    }

    #[test]
    fn topology_leaves_describe_one_package() {
        let mut c = supported();
        normalize(
            &mut c,
            CpuidParams {
                vcpu_index: 2,
                vcpu_count: 4,
                tsc_khz: None,
            },
        );
        let smt = find(&c, 0xb, 0).unwrap();
        assert_eq!((smt.eax, smt.ebx, smt.ecx), (0, 1, 1 << 8));
        let core = find(&c, 0xb, 1).unwrap();
        assert_eq!((core.eax, core.ebx, core.ecx), (2, 4, (2 << 8) | 1));
        assert_ne!(core.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX, 0);
        let l1 = find(&c, 0x4, 0).unwrap();
        assert_eq!(l1.eax >> 26, 3, "cores per package - 1");
        assert_eq!((l1.eax >> 14) & 0xfff, 0, "L1 not shared");
        let l3 = find(&c, 0x4, 3).unwrap();
        assert_eq!((l3.eax >> 14) & 0xfff, 3, "L3 shared by all");
        assert_eq!(l3.eax & 0x3fff, 0x163, "cache type/level kept");
        assert_eq!(find(&c, 0x8000_0008, 0).unwrap().ecx & 0xff, 3);
        assert_eq!(find(&c, 0xa, 0).unwrap().eax, 0, "no PMU");
    }

    #[test]
    fn hypervisor_leaves_carry_signature_and_tsc() {
        let mut c = supported();
        normalize(
            &mut c,
            CpuidParams {
                vcpu_index: 0,
                vcpu_count: 1,
                tsc_khz: Some(2_500_000),
            },
        );
        let sig = find(&c, HYPERVISOR_SIGNATURE_LEAF, 0).unwrap();
        assert_eq!(sig.eax, HYPERVISOR_TIMING_LEAF);
        let bytes: Vec<u8> = [sig.ebx, sig.ecx, sig.edx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect();
        assert_eq!(&bytes[..9], b"KVMKVMKVM");
        let timing = find(&c, HYPERVISOR_TIMING_LEAF, 0).unwrap();
        assert_eq!((timing.eax, timing.ebx), (2_500_000, 1_000_000));
        assert_eq!(
            find(&c, 0x4000_0001, 0).unwrap().eax,
            0x0100_7afb,
            "KVM features kept"
        );
    }

    #[test]
    fn no_timing_leaf_without_a_tsc_frequency_and_idempotent() {
        let mut c = supported();
        let params = CpuidParams {
            vcpu_index: 0,
            vcpu_count: 1,
            tsc_khz: None,
        };
        normalize(&mut c, params);
        assert!(find(&c, HYPERVISOR_TIMING_LEAF, 0).is_none());
        let once = c.as_slice().to_vec();
        normalize(&mut c, params);
        assert_eq!(once.len(), c.as_slice().len());
    }

    #[test]
    fn adds_signature_leaf_when_missing() {
        let mut c = CpuId::from_entries(&[entry(0x1, 0, 0, 0, 0, 0)]).unwrap();
        normalize(
            &mut c,
            CpuidParams {
                vcpu_index: 0,
                vcpu_count: 1,
                tsc_khz: Some(1000),
            },
        );
        assert!(find(&c, HYPERVISOR_SIGNATURE_LEAF, 0).is_some());
        assert!(find(&c, HYPERVISOR_TIMING_LEAF, 0).is_some());
    }

    #[test]
    fn topology_bit_widths() {
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(2), 1);
        assert_eq!(bits_for(3), 2);
        assert_eq!(bits_for(4), 2);
        assert_eq!(bits_for(5), 3);
        assert_eq!(bits_for(254), 8);
    }
}

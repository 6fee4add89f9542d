//! Direct /dev/kvm tests with synthetic guests: short long-mode programs
//! loaded where a kernel would be. They run on any KVM, including PVM hosts
//! that cannot boot a standard Linux guest.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{kvm_or_skip, run_to_exit, synthetic_vm, wait_for, Reports};
use controller::synthetic::Asm;
use devices::BusDevice;
use vmm_core::ExitReason;

const TIMEOUT: Duration = Duration::from_secs(30);

/// boot_params offsets (Documentation/arch/x86/zero-page.rst).
const BP_E820_ENTRIES: u32 = 0x1e8;
const BP_HEADER_MAGIC: u32 = 0x202;
const BP_CMD_LINE_PTR: u32 = 0x228;
const BP_E820_TABLE: u32 = 0x2d0;

#[test]
fn guest_sees_registers_and_boot_params_from_the_vmm() {
    let Some(kvm) = kvm_or_skip("guest_sees_registers_and_boot_params_from_the_vmm") else {
        return;
    };
    let code = Asm::new()
        .mov_eax_esi()
        .report_eax() // 0: RSI = zero page
        .load_u32_from_rsi(BP_HEADER_MAGIC)
        .report_eax() // 1: "HdrS"
        .load_u32_from_rsi(BP_CMD_LINE_PTR)
        .report_eax() // 2: command line address
        .load_u8_from_rsi(BP_E820_ENTRIES)
        .report_eax() // 3: e820 entry count
        .load_u32_from_rsi(BP_E820_TABLE + 8)
        .report_eax() // 4: size (low 32 bits) of the first e820 entry
        .mov_rax_cr0()
        .report_eax() // 5: CR0
        .mov_rax_cr4()
        .report_eax() // 6: CR4
        .read_efer()
        .report_eax() // 7: EFER
        .mov_eax_esp()
        .report_eax() // 8: RSP
        .i8042_reset()
        .halt_forever();
    let s = synthetic_vm(&kvm, code.code(), 1, false);
    let (reason, _vm) = run_to_exit(s.vm, TIMEOUT);
    assert_eq!(reason, ExitReason::Reset);
    let v = s.reports.lock().unwrap().values.clone();
    assert_eq!(v.len(), 9, "reports: {v:x?}");
    assert_eq!(v[0], 0x7000, "RSI must point at the zero page");
    assert_eq!(v[1], 0x5372_6448, "setup header magic HdrS");
    assert_eq!(v[2], 0x20000, "cmd_line_ptr");
    assert!(v[3] >= 2, "e820 has at least low and high RAM: {}", v[3]);
    assert!(v[4] > 0, "first e820 entry has a size");
    assert_eq!(v[5] & 0x8000_0001, 0x8000_0001, "CR0.PE and CR0.PG");
    assert_ne!(v[6] & (1 << 5), 0, "CR4.PAE");
    assert_eq!(v[7] & 0x500, 0x500, "EFER.LME and EFER.LMA");
    assert_eq!(v[8], 0x8ff0, "boot stack pointer");
}

#[test]
fn guest_command_line_is_in_memory() {
    let Some(kvm) = kvm_or_skip("guest_command_line_is_in_memory") else {
        return;
    };
    let code = Asm::new().i8042_reset().halt_forever();
    let s = synthetic_vm(&kvm, code.code(), 1, false);
    let mut buf = [0u8; 10];
    vm_memory::Bytes::read_slice(s.vm.memory(), &mut buf, vm_memory::GuestAddress(0x20000))
        .unwrap();
    assert_eq!(&buf, b"synthetic\0");
}

#[test]
fn serial_output_reaches_the_console_and_acpi_powers_off() {
    let Some(kvm) = kvm_or_skip("serial_output_reaches_the_console_and_acpi_powers_off") else {
        return;
    };
    let code = Asm::new()
        .serial_print("hello from a synthetic guest\n")
        .acpi_power_off()
        .halt_forever();
    let s = synthetic_vm(&kvm, code.code(), 1, false);
    let (reason, _vm) = run_to_exit(s.vm, TIMEOUT);
    assert_eq!(reason, ExitReason::PowerOff);
    let out = String::from_utf8(s.console.lock().unwrap().clone()).unwrap();
    assert_eq!(out, "hello from a synthetic guest\n");
}

#[test]
fn boot_timer_write_is_recorded() {
    let Some(kvm) = kvm_or_skip("boot_timer_write_is_recorded") else {
        return;
    };
    let code = Asm::new().boot_timer_signal().i8042_reset().halt_forever();
    let s = synthetic_vm(&kvm, code.code(), 1, false);
    let (reason, vm) = run_to_exit(s.vm, TIMEOUT);
    assert_eq!(reason, ExitReason::Reset);
    let stamp = vm.devices().boot_timer.lock().unwrap().boot_time();
    let stamp = stamp.expect("boot timer recorded the guest's write");
    assert!(stamp.wall > Duration::ZERO && stamp.wall < TIMEOUT);
}

#[test]
fn i8042_reset_ends_the_vm() {
    let Some(kvm) = kvm_or_skip("i8042_reset_ends_the_vm") else {
        return;
    };
    let s = synthetic_vm(
        &kvm,
        Asm::new().i8042_reset().spin_forever().code(),
        1,
        false,
    );
    let (reason, vm) = run_to_exit(s.vm, TIMEOUT);
    assert_eq!(reason, ExitReason::Reset);
    assert!(reason.is_clean());
    assert!(vm.first_run_at().is_some());
}

#[test]
fn triple_fault_ends_the_vm_with_a_recorded_reason() {
    let Some(kvm) = kvm_or_skip("triple_fault_ends_the_vm_with_a_recorded_reason") else {
        return;
    };
    let s = synthetic_vm(
        &kvm,
        Asm::new().triple_fault().halt_forever().code(),
        1,
        false,
    );
    let (reason, _vm) = run_to_exit(s.vm, TIMEOUT);
    // Hardware KVM reports KVM_EXIT_SHUTDOWN; PVM's emulator may instead
    // fail on int3 with an internal error. Either way the VM ends, not clean.
    assert!(!reason.is_clean(), "{reason}");
    assert!(
        matches!(
            reason,
            ExitReason::TripleFault { vcpu: 0 } | ExitReason::VcpuError { vcpu: 0, .. }
        ),
        "{reason}"
    );
}

#[test]
fn two_vcpus_run_with_their_own_apic_ids() {
    let Some(kvm) = kvm_or_skip("two_vcpus_run_with_their_own_apic_ids") else {
        return;
    };
    let code = Asm::new().apic_id_from_cpuid().report_eax().halt_forever();
    let s = synthetic_vm(&kvm, code.code(), 2, true);
    let mut vm = s.vm.start().unwrap();
    let reports = s.reports.clone();
    assert!(
        wait_for(TIMEOUT, || reports.lock().unwrap().values.len() >= 2),
        "both vCPUs report"
    );
    assert_eq!(vm.stop(), ExitReason::Stopped);
    let mut ids = reports.lock().unwrap().values.clone();
    ids.sort_unstable();
    assert_eq!(ids, vec![0, 1]);
}

/// Counts port writes, for pause/resume.
#[derive(Default)]
struct Counter(Arc<AtomicU64>);
impl BusDevice for Counter {
    fn read(&mut self, _: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _: u64, _: &[u8]) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn pause_resume_and_stop() {
    let Some(kvm) = kvm_or_skip("pause_resume_and_stop") else {
        return;
    };
    // spin: out 0xe9, eax; jmp spin
    let code = Asm::new().report_eax();
    let mut bytes = code.code().to_vec();
    let len = bytes.len() as i8;
    bytes.extend_from_slice(&[0xeb, (-(len + 2)) as u8]);
    let s = synthetic_vm(&kvm, &bytes, 1, false);
    let count = s.reports.lock().unwrap().count.clone();
    let vm = s.vm.start().unwrap();
    assert!(
        wait_for(TIMEOUT, || count.load(Ordering::SeqCst) > 100),
        "guest runs"
    );
    vm.pause();
    let paused_at = count.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        count.load(Ordering::SeqCst),
        paused_at,
        "no exits while paused"
    );
    vm.resume();
    assert!(
        wait_for(TIMEOUT, || count.load(Ordering::SeqCst) > paused_at + 100),
        "guest runs again after resume"
    );
    let mut vm = vm;
    assert_eq!(vm.stop(), ExitReason::Stopped);
    let stopped_at = count.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        count.load(Ordering::SeqCst),
        stopped_at,
        "nothing runs after stop"
    );
    let _ = Counter::default();
}

#[test]
fn unclaimed_port_and_mmio_accesses_are_answered_and_counted() {
    let Some(kvm) = kvm_or_skip("unclaimed_port_and_mmio_accesses_are_answered_and_counted") else {
        return;
    };
    let code = Asm::new()
        .mov_dx(0x1234)
        .raw(&[0xed]) // in eax, dx
        .report_eax()
        .mov_eax(0xd000_0000)
        .raw(&[0x8b, 0x00]) // mov eax, [rax]
        .report_eax()
        .mov_eax(0xd000_0100)
        .raw(&[0xc6, 0x00, 0x55]) // mov byte [rax], 0x55
        .i8042_reset()
        .halt_forever();
    let s = synthetic_vm(&kvm, code.code(), 1, false);
    let (reason, vm) = run_to_exit(s.vm, TIMEOUT);
    assert_eq!(reason, ExitReason::Reset);
    let v = s.reports.lock().unwrap().values.clone();
    assert_eq!(
        v,
        vec![0xffff_ffff, 0],
        "unclaimed port reads all-ones, MMIO zero"
    );
    let (pio, mmio, _) = vm.exit_counts();
    assert_eq!(pio, 1, "unclaimed port access counted");
    assert_eq!(mmio, 2, "unclaimed MMIO read and write counted");
}

#[test]
fn reports_device_collects_in_order() {
    // Pure check of the test helper so a broken helper cannot hide failures.
    let mut r = Reports::default();
    r.write(0, &[1, 0, 0, 0]);
    r.write(0, &[2]);
    assert_eq!(r.values, vec![1, 2]);
    let _ = Arc::new(Mutex::new(r));
}

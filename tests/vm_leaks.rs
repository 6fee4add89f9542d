//! Many VMs in one process, one after another and at the same time: file
//! descriptors and threads must come back to baseline. (Its own test binary,
//! so no other test's VMs disturb the counts.)

mod common;

use std::time::Duration;

use common::{fds_and_threads, kvm_or_skip, run_to_exit, synthetic_vm, wait_for};
use controller::synthetic::Asm;
use vmm_core::ExitReason;

#[test]
fn twenty_vms_built_run_and_dropped_leave_nothing_behind() {
    let Some(kvm) = kvm_or_skip("twenty_vms_built_run_and_dropped_leave_nothing_behind") else {
        return;
    };
    let code = Asm::new().report_eax().i8042_reset().halt_forever();
    // Warm-up: the first VM installs the kick signal handler and lets the
    // allocator and tracing settle.
    let (reason, running) = run_to_exit(
        synthetic_vm(&kvm, code.code(), 1, false).vm,
        Duration::from_secs(30),
    );
    assert_eq!(reason, ExitReason::Reset);
    drop(running);
    let baseline = fds_and_threads();

    // 20 one after another, half of them never started (built and dropped).
    for i in 0..20 {
        let s = synthetic_vm(&kvm, code.code(), 1 + (i % 2), false);
        if i % 4 == 3 {
            drop(s);
            continue;
        }
        let (reason, running) = run_to_exit(s.vm, Duration::from_secs(30));
        assert_eq!(reason, ExitReason::Reset, "VM {i}");
        drop(running);
    }
    assert_eq!(fds_and_threads(), baseline, "after 20 sequential VMs");

    // 20 at the same time, stopped by the host while running.
    let spin = Asm::new().report_eax().spin_forever();
    let vms: Vec<_> = (0..20)
        .map(|_| synthetic_vm(&kvm, spin.code(), 2, true))
        .collect();
    let mut running = Vec::new();
    for s in vms {
        let reports = s.reports.clone();
        running.push((s.vm.start().unwrap(), reports, s._image));
    }
    let (during_fds, during_threads) = fds_and_threads();
    assert!(
        during_threads >= baseline.1 + 20 * 3,
        "2 vCPU threads + 1 event thread per VM"
    );
    assert!(during_fds > baseline.0);
    for (_, reports, _) in &running {
        assert!(wait_for(Duration::from_secs(30), || !reports
            .lock()
            .unwrap()
            .values
            .is_empty()));
    }
    for (mut vm, _, _) in running {
        assert_eq!(vm.stop(), ExitReason::Stopped);
    }
    assert_eq!(fds_and_threads(), baseline, "after 20 concurrent VMs");
}

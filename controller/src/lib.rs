//! The sandbox controller. For now: the pieces behind `vmmctl` (booting a
//! VM from the command line, the boot benchmark, synthetic guests).

pub mod agent_cli;
pub mod bench;
pub mod hybrid_vsock;
pub mod launch;
pub mod stats;
pub mod synthetic;

//! vmm-core

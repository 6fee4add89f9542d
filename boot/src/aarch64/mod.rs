//! aarch64 guest boot (in progress).

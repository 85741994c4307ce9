//! End-to-end tests of `kraal` and `kraal serve` with real runsc sandboxes.
//!
//! Each test starts its own daemon (own data dir, socket and runsc root) and drives it
//! with the real CLI binary. The base image is shared through `KRAAL_TEST_IMAGE_DIR`
//! (built once, from scratch when empty). Needs root, runsc, nftables, debootstrap and the
//! musl guest build; `.ci/run` provides all of them.

mod agents;
mod backups;
mod budgets;
mod chaos;
mod devcontainers;
mod firecracker;
mod forge;
mod fuzz;
mod github_peer;
mod gvisor_snapshots;
mod harness;
mod hostile_import;
mod housekeeping;
mod idle_pause;
mod images;
mod isolation;
mod kubernetes;
mod lifecycle;
mod metrics;
mod on_demand;
mod push_peer;
mod qemu;
mod remote;
mod restart;
mod security;
mod sessions;
mod supervision;
mod takeover;
mod tasks;
mod validation;
mod web;

//! The Splitter control plane as a library: the CLI and the daemon are thin layers over it,
//! and the tests and benchmarks drive the same code.
//!
//! Layers, from the bottom up; a module uses only those below it (docs/architecture.md has
//! the map, and `tests/layers.rs` fails on a use the map does not allow):
//!
//! - `model`: the config validated into a plan, rollout plans, shares, slots, addresses, paths;
//! - `engine`: pure decisions (gates, the rollout state machine, drills, representativeness,
//!   latency quantiles, backend health), no I/O;
//! - `kernel`: the data plane from user space (loader, maps, apply, aging, the split lock);
//! - `store`: the deployment journal;
//! - `io`: Prometheus queries, health probes, readiness notifications;
//! - `view`: the status, the previous version, and the control API's answers, read by both the
//!   CLI and the daemon;
//! - `daemon`: the daemon's state, rollouts, drills, metrics, control API and runtime;
//! - `cli`: one module per subcommand.

pub mod cli;
pub mod daemon;
pub mod engine;
pub mod io;
pub mod kernel;
pub mod model;
pub mod store;
pub mod view;

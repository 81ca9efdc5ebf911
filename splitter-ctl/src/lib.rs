//! The Splitter control plane as a library: the CLI and the daemon are thin layers over it,
//! and the tests and benchmarks drive the same code.
//!
//! - `config`: the TOML file, validated into a plan;
//! - `dataplane`: loading, attaching, adopting and detaching the kernel programs;
//! - `maps`: typed access to the pinned maps;
//! - `apply`: a config applied to the maps as a diff;
//! - `aging`: closed flows swept out of the flow table;
//! - `slots`, `share`: slot tables and percentages;
//! - `status`: what the data plane is doing now;
//! - `notify`: readiness for systemd and the test bed;
//! - `journal`: the deployment journal (SQLite in the state directory);
//! - `rollout`: the rollout engine's decisions (gates, steps), without I/O;
//! - `promql`: PromQL gates, queried from a Prometheus server;
//! - `cmd`: one module per subcommand.

pub mod aging;
pub mod apply;
pub mod cmd;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod drill;
pub mod health;
pub mod http;
pub mod journal;
pub mod latency;
pub mod maps;
pub mod metrics;
pub mod netdev;
pub mod notify;
pub mod paths;
pub mod previous;
pub mod promql;
pub mod representativeness;
pub mod rollout;
pub mod rollouts;
pub mod share;
pub mod slots;
pub mod split_lock;
pub mod status;

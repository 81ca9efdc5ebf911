//! The bottom layer: the config validated into a plan, rollout plans, shares, slot tables,
//! addresses and paths. Depends on splitter-common only; no I/O but reading the config file.

pub mod actor;
pub mod addr;
pub mod config;
pub mod drain;
pub mod error;
pub mod fleet;
pub mod fleet_rollout;
pub mod l7;
pub mod paths;
pub mod plan;
pub mod promql;
pub mod segment;
pub mod share;
pub mod slots;
pub mod units;

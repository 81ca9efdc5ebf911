//! Pure decisions, with no I/O (no tokio, libc or aya): the gates' judgement, the rollout state
//! machine, drills, representativeness, latency quantiles and backend health. Each takes the
//! time and the readings as arguments and returns what the daemon must do.

pub mod drain;
pub mod drill;
pub mod fleet;
pub mod fleet_rollout;
pub mod gates;
pub mod health;
pub mod latency;
pub mod representativeness;
pub mod rollout;
pub mod signals;
pub mod stats;

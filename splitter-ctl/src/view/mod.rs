//! What the CLI and the daemon both read and show: the status of the data plane, the version a
//! promotion replaced, the fleet (fleet mode), and the control API's answers about rollouts
//! and drills.

pub mod drain;
pub mod drill;
pub mod fleet;
pub mod previous;
pub mod rollout;
pub mod status;

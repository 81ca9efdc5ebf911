//! What is kept on disk: the deployment journal (SQLite in the state directory), the
//! daemon's record of the config it last applied, and rollbacks the fleet was not told of yet.

pub mod applied;
pub mod fleet;
pub mod journal;

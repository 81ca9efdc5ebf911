//! What is kept on disk: the deployment journal (SQLite in the state directory), and the
//! daemon's record of the config it last applied.

pub mod applied;
pub mod journal;

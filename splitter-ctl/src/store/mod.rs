//! What is kept on disk: the deployment journal (SQLite in the state directory).

pub mod journal;

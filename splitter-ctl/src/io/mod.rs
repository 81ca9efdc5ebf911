//! I/O with the world outside the data plane: Prometheus queries, backend health probes,
//! etcd (fleet mode), readiness notifications to the service manager, the host's users and
//! random salts.

pub mod etcd;
pub mod fleet;
pub mod http;
pub mod notify;
pub mod probe;
pub mod prometheus;
pub mod salt;
pub mod users;

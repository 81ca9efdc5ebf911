//! I/O with the world outside the data plane: Prometheus queries, backend health probes and
//! readiness notifications to the service manager.

pub mod http;
pub mod notify;
pub mod probe;
pub mod prometheus;

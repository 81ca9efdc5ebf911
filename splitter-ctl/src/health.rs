//! Backend health: probes (a TCP connect, or an HTTP GET with an expected status) and the
//! per-backend state machine with thresholds. A backend starts healthy; `unhealthy_after`
//! consecutive failures take it out of its pool's slot table and `healthy_after` consecutive
//! successes bring it back. This module decides; the daemon writes the slot tables.

use std::{collections::HashMap, net::SocketAddr};

use serde::Serialize;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::config::{Config, HealthCheck, HttpCheck, Pool};

/// A backend of a service's pool.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId {
    pub service: String,
    pub pool: Pool,
    pub addr: SocketAddr,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackendHealth {
    pub healthy: bool,
    /// Consecutive probes with the same outcome as the last one.
    pub streak: u32,
    /// Why the last failed probe failed.
    pub last_error: Option<String>,
}

/// A change of a backend's health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub backend: BackendId,
    pub healthy: bool,
    pub reason: Option<String>,
}

#[derive(Debug, Default)]
pub struct Health {
    backends: HashMap<BackendId, BackendHealth>,
}

impl Health {
    /// Tracks the backends of `config`: new ones start healthy, removed ones are forgotten,
    /// the others keep their state.
    pub fn sync(&mut self, config: &Config) {
        let wanted: Vec<BackendId> = config
            .backends()
            .map(|(s, pool, b)| BackendId {
                service: s.name.clone(),
                pool,
                addr: b.addr,
            })
            .collect();
        self.backends.retain(|id, _| wanted.contains(id));
        for id in wanted {
            self.backends.entry(id).or_insert(BackendHealth {
                healthy: true,
                streak: 0,
                last_error: None,
            });
        }
    }

    #[must_use]
    pub fn is_healthy(&self, service: &str, pool: impl Into<Pool>, addr: SocketAddr) -> bool {
        let id = BackendId {
            service: service.to_owned(),
            pool: pool.into(),
            addr,
        };
        self.backends.get(&id).is_none_or(|h| h.healthy)
    }

    #[must_use]
    pub fn get(&self, id: &BackendId) -> Option<&BackendHealth> {
        self.backends.get(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&BackendId, &BackendHealth)> {
        self.backends.iter()
    }

    /// Records a probe result; returns the transition when the backend changes state.
    pub fn record(
        &mut self,
        id: &BackendId,
        check: &HealthCheck,
        result: Result<(), String>,
    ) -> Option<Transition> {
        let state = self.backends.get_mut(id)?;
        let ok = result.is_ok();
        let agrees_with_state = ok == state.healthy;
        if agrees_with_state {
            state.streak = 0;
        } else {
            state.streak += 1;
        }
        if let Err(reason) = &result {
            state.last_error = Some(reason.clone());
        }
        let threshold = if state.healthy {
            check.unhealthy_after
        } else {
            check.healthy_after
        };
        if agrees_with_state || state.streak < threshold {
            return None;
        }
        state.healthy = ok;
        state.streak = 0;
        Some(Transition {
            backend: id.clone(),
            healthy: ok,
            reason: result.err(),
        })
    }
}

/// Probes `addr` once, within the check's timeout.
pub async fn probe(addr: SocketAddr, check: &HealthCheck) -> Result<(), String> {
    match tokio::time::timeout(check.timeout, probe_unbounded(addr, check.http.as_ref())).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {} ms", check.timeout.as_millis())),
    }
}

async fn probe_unbounded(addr: SocketAddr, http: Option<&HttpCheck>) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let Some(http) = http else { return Ok(()) };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: splitter-health\r\nConnection: close\r\n\r\n",
        http.path
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < 12 {
        let n = stream
            .read(&mut head[len..])
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("the connection closed before a status line".to_owned());
        }
        len += n;
    }
    let line = String::from_utf8_lossy(&head[..len]);
    let status: u16 = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            format!(
                "not an HTTP status line: {:?}",
                line.lines().next().unwrap_or_default()
            )
        })?;
    if status == http.status {
        Ok(())
    } else {
        Err(format!("status {status}, expected {}", http.status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> BackendId {
        BackendId {
            service: "m".to_owned(),
            pool: Pool::Green,
            addr: SocketAddr::from(([198, 18, 2, 2], 8080)),
        }
    }

    fn health() -> Health {
        let mut h = Health::default();
        h.backends.insert(
            id(),
            BackendHealth {
                healthy: true,
                streak: 0,
                last_error: None,
            },
        );
        h
    }

    #[test]
    fn thresholds_decide_when_a_backend_goes_down_and_comes_back() {
        let check = HealthCheck {
            unhealthy_after: 2,
            healthy_after: 3,
            ..HealthCheck::default()
        };
        let mut h = health();
        assert_eq!(
            h.record(&id(), &check, Err("refused".to_owned())),
            None,
            "one failure is not enough"
        );
        assert_eq!(
            h.record(&id(), &check, Ok(())),
            None,
            "a success resets the streak"
        );
        assert_eq!(h.record(&id(), &check, Err("refused".to_owned())), None);
        let down = h
            .record(&id(), &check, Err("refused".to_owned()))
            .expect("down after two in a row");
        assert!(!down.healthy);
        assert_eq!(down.reason.as_deref(), Some("refused"));
        assert!(!h.is_healthy("m", Pool::Green, id().addr));
        for _ in 0..2 {
            assert_eq!(h.record(&id(), &check, Ok(())), None);
        }
        assert!(
            h.record(&id(), &check, Ok(()))
                .expect("up after three in a row")
                .healthy
        );
        assert!(h.is_healthy("m", Pool::Green, id().addr));
    }

    #[test]
    fn unknown_backends_count_as_healthy_and_record_nothing() {
        let mut h = Health::default();
        assert!(h.is_healthy("m", Pool::Blue, id().addr));
        assert_eq!(
            h.record(&id(), &HealthCheck::default(), Err("x".to_owned())),
            None
        );
    }

    #[tokio::test]
    async fn probes_tell_a_listening_port_from_a_closed_one_and_check_http_status() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            for status in ["200 OK", "503 Service Unavailable", "200 OK"] {
                let (mut conn, _) = listener.accept().await.expect("accept");
                let mut buf = [0u8; 512];
                let _ = conn.read(&mut buf).await;
                let _ = conn
                    .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let tcp = HealthCheck::default();
        assert_eq!(probe(addr, &tcp).await, Ok(()));
        let http = HealthCheck {
            http: Some(HttpCheck {
                path: "/healthz".to_owned(),
                status: 200,
            }),
            ..HealthCheck::default()
        };
        assert_eq!(
            probe(addr, &http).await,
            Err("status 503, expected 200".to_owned())
        );
        assert_eq!(probe(addr, &http).await, Ok(()));
        server.await.expect("server");
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let closed_addr = closed.local_addr().expect("addr");
        drop(closed);
        assert!(
            probe(closed_addr, &tcp)
                .await
                .expect_err("closed port")
                .starts_with("connect: ")
        );
    }
}

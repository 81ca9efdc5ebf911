//! Backend health: the per-backend state machine with thresholds (the probes themselves are
//! `io::probe`). A backend starts healthy; `unhealthy_after`
//! consecutive failures take it out of its pool's slot table and `healthy_after` consecutive
//! successes bring it back. This module decides; the daemon writes the slot tables.

use std::{collections::HashMap, net::SocketAddr};

use serde::Serialize;

use crate::model::config::{Config, HealthCheck, Pool};

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

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer within {0} ms")]
    Timeout(u128),
    #[error("connect")]
    Connect(#[source] std::io::Error),
    #[error(transparent)]
    Http(Box<dyn std::error::Error + Send + Sync>),
    #[error("status {got}, expected {expected}")]
    Status { got: u16, expected: u16 },
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
        result: Result<(), ProbeError>,
    ) -> Option<Transition> {
        let state = self.backends.get_mut(id)?;
        let ok = result.is_ok();
        let agrees_with_state = ok == state.healthy;
        if agrees_with_state {
            state.streak = 0;
        } else {
            state.streak += 1;
        }
        let reason = result
            .err()
            .map(|error| crate::model::error::chain(&error).to_string());
        if let Some(reason) = &reason {
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
            reason,
        })
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

    fn refused() -> ProbeError {
        ProbeError::Connect(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
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
            h.record(&id(), &check, Err(refused())),
            None,
            "one failure is not enough"
        );
        assert_eq!(
            h.record(&id(), &check, Ok(())),
            None,
            "a success resets the streak"
        );
        assert_eq!(h.record(&id(), &check, Err(refused())), None);
        let down = h
            .record(&id(), &check, Err(refused()))
            .expect("down after two in a row");
        assert!(!down.healthy);
        assert_eq!(down.reason.as_deref(), Some("connect: connection refused"));
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
            h.record(&id(), &HealthCheck::default(), Err(refused())),
            None
        );
    }
}

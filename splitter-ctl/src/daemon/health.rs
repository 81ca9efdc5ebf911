//! Backend health in the daemon: which backends to probe, and what a probe's result changes.
//! A backend that goes down leaves its pool's slot table, and comes back when it recovers; the
//! state machine with its thresholds is `engine::health`, the probes `io::probe`.

use super::{Daemon, events::HealthChanged};
use crate::{
    engine::health::{BackendId, ProbeError, Transition},
    kernel::apply,
    model::{
        config::{HealthCheck, Pool},
        error::chain,
    },
};

impl Daemon {
    /// The check and the backends of `service`, or `None` when the service is gone or is not
    /// probed (UDP).
    #[must_use]
    pub fn probe_targets(&self, service: &str) -> Option<(HealthCheck, Vec<BackendId>)> {
        let spec = self.config.service(service)?;
        let check = spec.health.clone()?;
        let backends = Pool::ALL
            .into_iter()
            .flat_map(|pool| {
                spec.backends_of(pool).iter().map(move |b| BackendId {
                    service: service.to_owned(),
                    pool,
                    addr: b.addr,
                })
            })
            .collect();
        Some((check, backends))
    }

    /// The services whose backends are probed.
    #[must_use]
    pub fn probed_services(&self) -> Vec<String> {
        self.config
            .services
            .iter()
            .filter(|s| s.health.is_some())
            .map(|s| s.name.clone())
            .collect()
    }

    /// Records probe results; a backend that changes state rewrites its pool's slot table.
    pub fn record_probes(
        &mut self,
        results: Vec<(BackendId, HealthCheck, Result<(), ProbeError>)>,
    ) {
        let transitions: Vec<Transition> = results
            .into_iter()
            .filter_map(|(id, check, result)| self.health.record(&id, &check, result))
            .collect();
        let changed = !transitions.is_empty();
        for transition in transitions {
            self.on_transition(&transition);
        }
        if changed {
            self.publish_scrape_view();
        }
    }

    fn on_transition(&mut self, transition: &Transition) {
        let BackendId { service, pool, .. } = &transition.backend;
        self.emit(HealthChanged { transition });
        let Some(spec) = self.config.service(service).cloned() else {
            return;
        };
        let health = &self.health;
        let healthy = |s: &str, p: Pool, a| health.is_healthy(s, p, a);
        let down = |p: Pool| {
            spec.backends_of(p)
                .iter()
                .all(|b| !healthy(&spec.name, p, b.addr))
        };
        if down(Pool::Blue) && down(Pool::Green) {
            if spec.last_resort.is_empty() || down(Pool::LastResort) {
                tracing::error!(service = %service, "no healthy backend in blue, green or a last-resort pool: new connections are dropped (slot_miss)");
            } else {
                tracing::error!(service = %service, last_resort = spec.last_resort.len(), "no healthy backend in blue or green: new connections go to the last-resort pool");
            }
        } else if *pool == Pool::LastResort && down(Pool::LastResort) {
            tracing::warn!(service = %service, "no healthy backend left in the last-resort pool; it would take nothing if blue and green failed");
        } else if *pool != Pool::LastResort && down(*pool) {
            tracing::warn!(service = %service, version = pool.name(), "no healthy backend left in this version; its new connections go to the other version");
        }
        let result = self
            .maps
            .service(&spec.endpoint())
            .and_then(|found| match found {
                Some(kernel) => {
                    apply::write_pool(&mut self.maps, kernel.id, &spec, *pool, &healthy)
                }
                None => Ok(()),
            });
        if let Err(error) = result {
            tracing::error!(service = %service, error = %chain(&error), "cannot rewrite the pool after a health change");
        }
    }
}

//! What the daemon does every few seconds: rates over the last window for `status`, the
//! canary's spread and the sweep of closed flows from one walk of the flow table, reverse
//! entries of removed backends, and split words that someone else changed (kept, and logged).

use std::time::{Duration, Instant};

use splitter_common::{
    FLOW_RST, Flow, FlowKey, PROTO_TCP, SplitWord, Version, flow_closed, flow_hash,
};

use super::{Daemon, drain};
use crate::{
    engine::latency,
    kernel::{aging, apply, dataplane, forward, reply_links},
    model::{
        drain::{Established, age_jitter},
        error::chain,
        share::format_percent,
        units,
    },
    view::status::{self, Rates},
};

/// A housekeeping longer than this is logged: control requests and drains wait for it.
const SLOW_HOUSEKEEPING: Duration = Duration::from_millis(50);

/// A version's counters at one housekeeping.
#[derive(Clone, Copy)]
pub(super) struct Sample {
    at: Instant,
    responses: u64,
    events: u64,
    errors: u64,
    response: splitter_common::Histogram,
}

impl Daemon {
    /// Sweeps closed flows and logs split words someone else changed since the last look.
    pub fn housekeeping(&mut self) {
        let started = Instant::now();
        self.sample_rates();
        self.sync_fast_path();
        let synced = started.elapsed();
        if let Err(error) = apply::remove_stale_backends(&mut self.maps, &self.config) {
            tracing::warn!(error = %chain(&error), "cannot remove the reverse entries of removed backends");
        }
        // One walk of the flow table serves the canary's spread and the sweep.
        match self.maps.flows() {
            Ok(flows) => {
                match status::spreads_among(&self.maps, &self.config, &flows) {
                    Ok(spreads) => self.spreads = spreads,
                    Err(error) => {
                        tracing::warn!(error = %chain(&error), "cannot compute the canary's spread");
                    }
                }
                self.age_out(&flows);
                match aging::sweep_among(&mut self.maps, &flows, aging::monotonic_ns()) {
                    Ok(0) => {}
                    Ok(removed) => tracing::debug!(removed, "swept closed flows"),
                    Err(error) => {
                        tracing::warn!(error = %chain(&error), "cannot sweep closed flows")
                    }
                }
            }
            Err(error) => tracing::warn!(error = %chain(&error), "cannot read the flow table"),
        }
        self.publish_scrape_view();
        let took = started.elapsed();
        // It holds the daemon: a drain or a control request waits meanwhile.
        if took > SLOW_HOUSEKEEPING {
            tracing::warn!(
                took_ms = took.as_millis() as u64,
                fast_path_sync_ms = synced.as_millis() as u64,
                "the housekeeping held the daemon this long; drains and control requests waited"
            );
        }
        for spec in &self.config.services {
            let Ok(Some(kernel)) = self.maps.service(&spec.endpoint()) else {
                continue;
            };
            let Ok(now) = self.maps.split(kernel.split) else {
                continue;
            };
            let before = self.known_splits.insert(spec.name.clone(), now);
            if let Some(before) = before.filter(|before| *before != now) {
                tracing::info!(
                    service = %spec.name,
                    green_percent = %format_percent(now.share_of(Version::Green)),
                    was_green_percent = %format_percent(before.share_of(Version::Green)),
                    live = now.live().name(),
                    "the split changed outside the daemon (an operator's weight or rollback); keeping it"
                );
            }
        }
    }

    /// Drains the connections of each service with `max_connection_age_ms` that are older than
    /// it (plus their jitter), at their next idle moment: one drain per release and version.
    fn age_out(&mut self, flows: &[(FlowKey, Flow)]) {
        let now = aging::monotonic_ns();
        let mut plans = Vec::new();
        for release in self.config.releases() {
            let settings = release.leader().drain;
            let Some(max_age) = settings.max_age else {
                continue;
            };
            let Ok(ids) = self.release_ids(release.name) else {
                continue;
            };
            for version in [Version::Blue, Version::Green] {
                let aged: Vec<(FlowKey, Flow)> = flows
                    .iter()
                    .filter(|(key, flow)| {
                        let age = max_age + age_jitter(max_age, flow_hash(key));
                        key.protocol == PROTO_TCP
                            && flow.version == version as u8
                            && ids.members.contains(&flow.service_id)
                            && !flow_closed(flow.state)
                            && flow.state & FLOW_RST == 0
                            && flow.created_ns.saturating_add(units::nanos(age)) <= now
                    })
                    .copied()
                    .collect();
                if aged.is_empty() {
                    continue;
                }
                plans.push(drain::Plan {
                    release: release.name.to_owned(),
                    ids: ids.members.clone(),
                    version,
                    established: Established::Drain,
                    timeout: settings.timeout,
                    idle: settings.unhurried_idle(),
                    spread: Duration::ZERO,
                    decided_ns: now,
                    take: drain::Take::Aged(aged),
                });
            }
        }
        for plan in plans {
            if let Err(error) = self.start_drain(plan, None) {
                tracing::warn!(error = %chain(&error), "cannot drain connections past their max age");
            }
        }
    }

    /// Lists the namespace's devices for the fast path (`kernel::forward`), and attaches the
    /// reply fast path where the fast path has sent packets (`kernel::reply_links`): a new
    /// container's interface joins at the next housekeeping. With `fast_path = false`, empties
    /// the one and removes the other.
    pub(super) fn sync_fast_path(&mut self) {
        let on = self.config.fast_path;
        let generic = dataplane::runs_generic(self.config.xdp_mode, &self.config.interface);
        match forward::sync(&self.config.pin_dir, on, generic) {
            Ok(forward::Synced {
                added: 0,
                removed: 0,
                peers_changed: 0,
            }) => {}
            Ok(synced) => tracing::info!(
                added = synced.added,
                removed = synced.removed,
                peers_changed = synced.peers_changed,
                on,
                "the fast path's devices changed"
            ),
            Err(error) => {
                tracing::warn!(error = %chain(&error), "cannot list the fast path's devices; steered packets take the stack")
            }
        }
        if !on {
            match reply_links::unlink_all(&self.config.pin_dir) {
                Ok(removed) if removed.is_empty() => {}
                Ok(removed) => tracing::info!(
                    removed = removed.len(),
                    "the fast path is off: the reply fast path is detached"
                ),
                Err(error) => {
                    tracing::warn!(error = %chain(&error), "cannot detach the reply fast path")
                }
            }
            return;
        }
        match reply_links::sync(&self.config.pin_dir) {
            Ok(synced) => {
                if !synced.attached.is_empty() || synced.removed > 0 {
                    tracing::info!(
                        attached = ?synced.attached,
                        removed = synced.removed,
                        "the reply fast path's devices changed"
                    );
                }
                for (index, device, error) in synced.refused {
                    if self.reply_refused.insert(index) {
                        tracing::warn!(device, error = %chain(&error), "cannot attach the reply fast path to this device; its replies take the stack");
                    }
                }
            }
            Err(error) => {
                tracing::warn!(error = %chain(&error), "cannot attach the reply fast path; replies take the stack")
            }
        }
    }

    /// Responses per second, the error ratio and the p99 of each version since the last
    /// sample.
    fn sample_rates(&mut self) {
        let now = Instant::now();
        let mut rates = Rates::new();
        for spec in &self.config.services {
            let Ok(Some(kernel)) = self.maps.service(&spec.endpoint()) else {
                continue;
            };
            for version in [Version::Blue, Version::Green] {
                let Ok(counters) = self.maps.counters(kernel.id, version) else {
                    continue;
                };
                let (errors, events) = counters.errors_and_events();
                let response = self
                    .maps
                    .histogram(kernel.id, version, splitter_common::LatencyKind::Response)
                    .unwrap_or_default();
                let sample = Sample {
                    at: now,
                    responses: counters.responses,
                    events,
                    errors,
                    response,
                };
                let key = (spec.name.clone(), version);
                if let Some(before) = self.last_sample.insert(key.clone(), sample) {
                    let seconds = now.duration_since(before.at).as_secs_f64();
                    let d_events = events.saturating_sub(before.events);
                    let ratio = (d_events > 0)
                        .then(|| errors.saturating_sub(before.errors) as f64 / d_events as f64);
                    if seconds > 0.0 {
                        let window = response.since(&before.response);
                        rates.insert(
                            key,
                            status::Recent {
                                responses_per_second: counters
                                    .responses
                                    .saturating_sub(before.responses)
                                    as f64
                                    / seconds,
                                error_ratio: ratio,
                                p99_ms: latency::Quantiles::of(&window).p99_ms,
                            },
                        );
                    }
                }
            }
        }
        self.rates = rates;
    }

    /// Remembers `word` as what the daemon itself wrote for release `name` (a service or a
    /// release group), so housekeeping does not report it as someone else's change.
    pub(super) fn note_split(&mut self, name: &str, word: SplitWord) {
        let members: Vec<String> = self
            .config
            .release(name)
            .map(|r| r.members.iter().map(|m| m.name.clone()).collect())
            .unwrap_or_else(|| vec![name.to_owned()]);
        for member in members {
            self.known_splits.insert(member, word);
        }
    }

    pub(super) fn remember_splits(&mut self) {
        for spec in &self.config.services {
            if let Ok(Some(kernel)) = self.maps.service(&spec.endpoint())
                && let Ok(word) = self.maps.split(kernel.split)
            {
                self.known_splits.insert(spec.name.clone(), word);
            }
        }
        self.known_splits
            .retain(|name, _| self.config.service(name).is_some());
    }
}

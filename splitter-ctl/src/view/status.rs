//! What the data plane is doing now, read from the kernel maps: per service the live pool, the
//! shares, the backends with their slots, and the per-version counters. The JSON form is
//! stable and documented in docs/operations.md; fields are only ever added.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use splitter_common::{LatencyKind, Version, VersionStats};

use crate::{
    engine::{
        health::{BackendId, Health},
        latency::Quantiles,
        representativeness::{self, Spread},
        signals,
    },
    kernel::{
        maps::{Maps, MapsError},
        memory::{self, MapMemory},
    },
    model::{
        config::{Config, Pool, ServiceSpec},
        error::chain,
        l7::L7,
        share::format_percent,
    },
    store::journal::Journal,
    view::{
        drain::DrainReport,
        previous::{Previous, previous},
    },
};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub pin_dir: String,
    pub interface: String,
    pub attached: bool,
    pub services: Vec<ServiceStatus>,
    /// Packets per data-plane outcome (steered, not_service, slot_miss, ...).
    pub plane: BTreeMap<String, u64>,
    /// The kernel memory of each pinned map (`memlock`, as bpftool shows it).
    #[serde(default)]
    pub memory: Vec<MapMemory>,
    /// The daemon's drains under way, then the last ones that ended (empty without a daemon).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drains: Vec<DrainReport>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct ServiceStatus {
    pub name: String,
    pub listen: String,
    pub protocol: String,
    /// `client` (each client sees one version) or `flow`.
    pub affinity: String,
    /// The `l7` setting: what the kernel reads of the service's connections.
    #[serde(default)]
    pub l7: String,
    /// False when the config names the service but the kernel does not hold it yet.
    pub in_data_plane: bool,
    pub id: Option<u32>,
    pub live: Option<String>,
    pub candidate: Option<String>,
    /// The raw split word, for scripts that compare before and after.
    pub split_word: Option<u32>,
    /// Percent of new connections per version.
    pub share_percent: BTreeMap<String, f64>,
    pub pools: BTreeMap<String, PoolStatus>,
    /// `VersionStats` per version, summed over CPUs.
    pub counters: BTreeMap<String, VersionStats>,
    /// TCP connections still open per version, from the flow table (neither side has closed).
    #[serde(default)]
    pub open_connections: BTreeMap<String, u64>,
    /// What the kernel measured of each version's responses.
    pub telemetry: BTreeMap<String, Telemetry>,
    /// The version the last promotion replaced, when the candidate has no share: ready for
    /// `rollback` or retired. Absent when the journal cannot be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Previous>,
    /// The release group whose split word the service shares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The last-resort pool, when the service has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_resort: Option<LastResortStatus>,
    /// How the candidate's clients spread over network prefixes beside the live pool's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub representativeness: Option<Spread>,
}

/// A service's last-resort pool: its backends, and what it took.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct LastResortStatus {
    pub backends: Vec<BackendStatus>,
    /// True when neither blue nor green has a backend in its slot table: new connections go
    /// to this pool now.
    pub active: bool,
    /// New connections it took since the service was created.
    pub new_flows: u64,
    /// Responses its backends gave.
    pub responses: u64,
}

/// Per version: response times, handshakes, errors; rates when the daemon has a window.
#[derive(Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct Telemetry {
    /// Responses timed since the service was created.
    pub responses: u64,
    /// 5xx responses, backend resets and refused handshakes.
    pub errors: u64,
    /// `errors` over (responses, resets and refused handshakes), since the service was created.
    pub error_ratio: Option<f64>,
    /// Time to first byte of the responses.
    pub response: Quantiles,
    /// SYN to SYN-ACK.
    pub handshake: Quantiles,
    /// Time to the response's first body byte (a streamed response's first token; an HTTP/2
    /// call's first DATA).
    #[serde(default)]
    pub first_token: Quantiles,
    /// Time to the response's last byte (a chunked response's last chunk; an HTTP/2 call's
    /// END_STREAM).
    #[serde(default)]
    pub whole: Quantiles,
    /// Responses per second over the daemon's last window (absent without the daemon).
    pub request_rate_per_second: Option<f64>,
    /// `error_ratio` over the daemon's last window.
    pub recent_error_ratio: Option<f64>,
    /// The p99 response time over the daemon's last window.
    #[serde(default)]
    pub recent_p99_ms: Option<f64>,
}

/// Each service's canary spread, by service name.
pub type Spreads = std::collections::HashMap<String, Spread>;

/// Every service's canary spread, from one walk of the flow table.
pub fn spreads(maps: &Maps, config: &Config) -> Result<Spreads, MapsError> {
    spreads_among(maps, config, &maps.flows()?)
}

/// Like `spreads`, over the flows read before.
pub fn spreads_among(
    maps: &Maps,
    config: &Config,
    flows: &[(splitter_common::FlowKey, splitter_common::Flow)],
) -> Result<Spreads, MapsError> {
    let now = crate::kernel::aging::monotonic_ns();
    let mut spreads = Spreads::new();
    for spec in &config.services {
        let Some(service) = maps.service(&spec.endpoint())? else {
            continue;
        };
        let split = maps.split(service.split)?;
        spreads.insert(
            spec.name.clone(),
            representativeness::spread(
                flows,
                &[service.id],
                split.candidate(),
                spec.client_prefixes,
                now,
            ),
        );
    }
    Ok(spreads)
}

/// Rates the daemon measured over its last window, per (service, version): responses per
/// second and the error ratio.
pub type Rates = std::collections::HashMap<(String, Version), Recent>;

/// A version over the daemon's last window.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Recent {
    pub responses_per_second: f64,
    pub error_ratio: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct PoolStatus {
    pub backends: Vec<BackendStatus>,
    /// Slots that hold a backend, of `slots_total`.
    pub slots_set: usize,
    pub slots_total: usize,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct BackendStatus {
    pub address: String,
    pub weight: u32,
    /// Slots of the kernel's table that point at this backend.
    pub slots: usize,
    /// From the daemon's health checks; absent when the status was read without the daemon.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
    /// Why the last failed probe failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Reads the status of the services of `config` (all, or the one named `only`, or the services
/// of release group `only`).
/// With `health` (the daemon's), each backend also says whether it passes its checks.
pub fn gather(
    maps: &Maps,
    config: &Config,
    health: Option<&Health>,
    rates: Option<&Rates>,
    spreads: Option<&Spreads>,
    only: Option<&str>,
) -> Result<Status, MapsError> {
    // The daemon's spreads are from its last housekeeping; without the daemon, read them now.
    let read;
    let spreads = match spreads {
        Some(spreads) => spreads,
        None => {
            read = self::spreads(maps, config)?;
            &read
        }
    };
    let mut services = config
        .services
        .iter()
        .filter(|s| only.is_none_or(|name| s.name == name || s.group.as_deref() == Some(name)))
        .map(|spec| service(maps, spec, health, rates, spreads))
        .collect::<Result<Vec<_>, _>>()?;
    add_open_connections(maps, &mut services)?;
    let plane = maps
        .plane_counters()?
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    Ok(Status {
        pin_dir: config.pin_dir.display().to_string(),
        interface: config.interface.clone(),
        attached: crate::kernel::dataplane::is_attached(&config.pin_dir),
        services,
        plane,
        memory: memory::of_pins(&config.pin_dir)
            .inspect_err(
                |error| tracing::debug!(error = %chain(error), "no map memory in the status"),
            )
            .unwrap_or_default(),
        drains: Vec::new(),
    })
}

/// Counts each service's open TCP connections per version, in one walk of the flow table.
fn add_open_connections(maps: &Maps, services: &mut [ServiceStatus]) -> Result<(), MapsError> {
    let mut open: BTreeMap<(u32, u8), u64> = BTreeMap::new();
    for (key, flow) in maps.flows()? {
        if key.protocol == splitter_common::PROTO_TCP
            && !splitter_common::flow_closed(flow.state)
            && flow.state & splitter_common::FLOW_RST == 0
        {
            *open.entry((flow.service_id, flow.version)).or_default() += 1;
        }
    }
    for service in services.iter_mut() {
        let Some(id) = service.id else { continue };
        for version in [Version::Blue, Version::Green] {
            service.open_connections.insert(
                version.name().to_owned(),
                open.get(&(id, version as u8)).copied().unwrap_or(0),
            );
        }
    }
    Ok(())
}

/// Adds, to each service of `status`, the version its last promotion replaced (see
/// [`previous`]); a journal that cannot be read leaves the field out.
pub fn add_previous(status: &mut Status, config: &Config, journal: &Journal) {
    let now = crate::store::journal::now_ms();
    for s in &mut status.services {
        let (Some(word), Some(spec)) = (s.split_word, config.service(&s.name)) else {
            continue;
        };
        // A release group's promotions are journaled under the group's name.
        let release = config.release(&s.name).map_or(s.name.as_str(), |r| r.name);
        s.previous = previous(
            journal,
            release,
            splitter_common::SplitWord(word),
            spec.rollback_window,
            now,
        )
        .inspect_err(
            |error| tracing::debug!(error = %chain(error), "no previous version in the status"),
        )
        .ok()
        .flatten();
    }
}

fn service(
    maps: &Maps,
    spec: &ServiceSpec,
    health: Option<&Health>,
    rates: Option<&Rates>,
    spreads: &Spreads,
) -> Result<ServiceStatus, MapsError> {
    let mut status = ServiceStatus {
        name: spec.name.clone(),
        listen: spec.listen.to_string(),
        protocol: spec.protocol.name().to_owned(),
        affinity: if spec.client_affinity {
            "client"
        } else {
            "flow"
        }
        .to_owned(),
        l7: spec.l7.as_str().to_owned(),
        in_data_plane: false,
        id: None,
        live: None,
        candidate: None,
        split_word: None,
        share_percent: BTreeMap::new(),
        pools: BTreeMap::new(),
        counters: BTreeMap::new(),
        open_connections: BTreeMap::new(),
        telemetry: BTreeMap::new(),
        previous: None,
        group: spec.group.clone(),
        last_resort: None,
        representativeness: None,
    };
    let Some(service) = maps.service(&spec.endpoint())? else {
        return Ok(status);
    };
    let split = maps.split(service.split)?;
    status.in_data_plane = true;
    status.id = Some(service.id);
    status.live = Some(split.live().name().to_owned());
    status.candidate = Some(split.candidate().name().to_owned());
    status.split_word = Some(split.0);
    status.representativeness = spreads.get(&spec.name).cloned();
    for version in [Version::Blue, Version::Green] {
        status.share_percent.insert(
            version.name().to_owned(),
            crate::model::share::percent_of(split.share_of(version)),
        );
        let table = maps.slots(service.id, version)?;
        let backends = backend_statuses(spec, version.into(), &table, health);
        status.pools.insert(
            version.name().to_owned(),
            PoolStatus {
                backends,
                slots_set: table.iter().filter(|s| s.is_some()).count(),
                slots_total: table.len(),
            },
        );
        let counters = maps.counters(service.id, version)?;
        let (errors, events) = counters.errors_and_events();
        let rate = rates.and_then(|r| r.get(&(spec.name.clone(), version)));
        status.telemetry.insert(
            version.name().to_owned(),
            Telemetry {
                responses: counters.responses,
                errors,
                error_ratio: (events > 0).then(|| errors as f64 / events as f64),
                response: Quantiles::of(&maps.histogram(
                    service.id,
                    version,
                    LatencyKind::Response,
                )?),
                handshake: Quantiles::of(&maps.histogram(
                    service.id,
                    version,
                    LatencyKind::Handshake,
                )?),
                first_token: Quantiles::of(&maps.histogram(
                    service.id,
                    version,
                    LatencyKind::FirstToken,
                )?),
                whole: Quantiles::of(&maps.histogram(service.id, version, LatencyKind::Whole)?),
                request_rate_per_second: rate.map(|r| r.responses_per_second),
                recent_error_ratio: rate.and_then(|r| r.error_ratio),
                recent_p99_ms: rate.and_then(|r| r.p99_ms),
            },
        );
        status.counters.insert(version.name().to_owned(), counters);
    }
    if !spec.last_resort.is_empty() {
        let table = maps.last_resort_slots(service.id)?;
        let counters = maps.last_resort_counters(service.id)?;
        status.last_resort = Some(LastResortStatus {
            backends: backend_statuses(spec, Pool::LastResort, &table, health),
            active: status.pools.values().all(|p| p.slots_set == 0),
            new_flows: counters.new_flows,
            responses: counters.responses,
        });
    }
    Ok(status)
}

/// The backends of one of `spec`'s pools: their slots in `table`, and their health when the
/// daemon's is at hand.
fn backend_statuses(
    spec: &ServiceSpec,
    pool: Pool,
    table: &[Option<std::net::SocketAddr>],
    health: Option<&Health>,
) -> Vec<BackendStatus> {
    spec.backends_of(pool)
        .iter()
        .map(|b| {
            let id = BackendId {
                service: spec.name.clone(),
                pool,
                addr: b.addr,
            };
            let state = health.and_then(|h| h.get(&id));
            BackendStatus {
                address: b.addr.to_string(),
                weight: b.weight,
                slots: table.iter().filter(|s| **s == Some(b.addr)).count(),
                healthy: state.map(|s| s.healthy),
                last_error: state
                    .and_then(|s| s.last_error.clone())
                    .filter(|_| state.is_some_and(|s| !s.healthy)),
            }
        })
        .collect()
}

/// What a version's connections carried and, for HTTP/2, its calls: `None` before any
/// connection sent a payload.
fn protocols_text(c: &VersionStats, l7: L7) -> Option<String> {
    use std::fmt::Write as _;
    let [http1, h2, tls, other] = c.protocols;
    if http1 + h2 + tls + other == 0 {
        return None;
    }
    let mut line = format!("connections: http1 {http1}, h2 {h2}, tls {tls}, other {other}");
    if signals::unreadable(l7, c.protocols) {
        line.push_str(" (the kernel reads none of their requests)");
    }
    if h2 > 0 || c.calls > 0 {
        let [
            trailers_only,
            reset_unanswered,
            reset_answered,
            goaway,
            status,
        ] = c.call_errors;
        let [untracked_calls, lost] = c.untracked;
        let _ = write!(
            line,
            "; calls {} (failed: trailers-only {trailers_only}, error status {status}, reset {}, goaway {goaway}; cancelled by the client {}); untracked: calls {untracked_calls}, connections {lost}",
            c.calls,
            reset_unanswered + reset_answered,
            c.calls_cancelled,
        );
        let codes: Vec<String> = splitter_common::l7::GRPC_STATUS_NAMES
            .iter()
            .zip(c.grpc_status)
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        if !codes.is_empty() {
            let _ = write!(line, "; grpc-status: {}", codes.join(", "));
        }
    }
    Some(line)
}

/// `  up`, `  DOWN (why)`, or nothing without the daemon's health.
fn health_text(b: &BackendStatus) -> String {
    match (b.healthy, &b.last_error) {
        (None, _) => String::new(),
        (Some(true), _) => "  up".to_owned(),
        (Some(false), Some(error)) => format!("  DOWN ({error})"),
        (Some(false), None) => "  DOWN".to_owned(),
    }
}

/// The maps' kernel memory in one line: the total, and the flow table's share of it per entry.
fn memory_line(maps: &[MapMemory]) -> Option<String> {
    let total: u64 = maps.iter().map(|m| m.bytes).sum();
    if total == 0 {
        return None;
    }
    let mib = |bytes: u64| bytes as f64 / f64::from(1u32 << 20);
    let flows = maps
        .iter()
        .find(|m| m.map == splitter_common::maps::FLOWS && m.max_entries > 0)
        .map_or_else(String::new, |f| {
            format!(
                " (flow table {:.1} MiB for {} entries, {} B each)",
                mib(f.bytes),
                f.max_entries,
                f.bytes / f.max_entries
            )
        });
    Some(format!(
        "maps: {:.1} MiB of kernel memory{flows}",
        mib(total)
    ))
}

/// The human form of a status.
#[must_use]
pub fn render(status: &Status) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let attached = if status.attached {
        "attached"
    } else {
        "NOT attached"
    };
    let _ = writeln!(
        out,
        "data plane {} on {} ({attached})",
        status.pin_dir, status.interface
    );
    if let Some(line) = memory_line(&status.memory) {
        let _ = writeln!(out, "{line}");
    }
    for s in &status.services {
        let _ = writeln!(
            out,
            "\nservice {} ({} {}, l7 {})",
            s.name, s.protocol, s.listen, s.l7
        );
        if !s.in_data_plane {
            let _ = writeln!(
                out,
                "  not in the data plane yet: the daemon has not applied it"
            );
            continue;
        }
        let live = s.live.as_deref().unwrap_or("?");
        let _ = writeln!(
            out,
            "  live {live}, candidate {}",
            s.candidate.as_deref().unwrap_or("?")
        );
        if let Some(group) = &s.group {
            let _ = writeln!(
                out,
                "  release group {group}: its split word moves the whole group"
            );
        }
        if let Some(p) = &s.previous {
            let left_min = (p.rollback_until_ms - crate::store::journal::now_ms()) / 60_000;
            let _ = if p.retired {
                writeln!(
                    out,
                    "  previous {}: retired (past its rollback window)",
                    p.version
                )
            } else {
                writeln!(
                    out,
                    "  previous {}: attached, `rollback` returns to it for another {left_min} min",
                    p.version
                )
            };
        }
        for version in ["blue", "green"] {
            let share = s.share_percent.get(version).copied().unwrap_or_default();
            let share = format_percent((share * 100.0).round() as u16);
            let c = s.counters.get(version);
            let pool = s.pools.get(version);
            let role = if version == live { "live" } else { "candidate" };
            let _ = writeln!(
                out,
                "  {version:<5} {role:<9} share {share:>6}%  open {:>6}  new flows {:>8}  packets in/out {:>9}/{:<9} misses flow {} slot {}",
                s.open_connections.get(version).copied().unwrap_or(0),
                c.map_or(0, |c| c.new_flows),
                c.map_or(0, |c| c.traffic.packets_in),
                c.map_or(0, |c| c.traffic.packets_out),
                c.map_or(0, |c| c.flow_misses),
                c.map_or(0, |c| c.slot_misses),
            );
            if let Some(t) = s.telemetry.get(version) {
                let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
                let rate = t
                    .request_rate_per_second
                    .map_or_else(String::new, |r| format!("{r:.1}/s, "));
                let ratio = t
                    .recent_error_ratio
                    .or(t.error_ratio)
                    .map_or_else(|| "-".to_owned(), |r| format!("{:.2}%", r * 100.0));
                let _ = writeln!(
                    out,
                    "        requests {rate}{} in all; errors {ratio}; response p50/p90/p99 {}/{}/{} ms; first token p50/p99 {}/{} ms; whole p50 {} ms; handshake p50 {} ms",
                    t.responses,
                    ms(t.response.p50_ms),
                    ms(t.response.p90_ms),
                    ms(t.response.p99_ms),
                    ms(t.first_token.p50_ms),
                    ms(t.first_token.p99_ms),
                    ms(t.whole.p50_ms),
                    ms(t.handshake.p50_ms),
                );
            }
            let l7 = L7::parse(&s.l7).unwrap_or_default();
            if let Some(line) = c.and_then(|c| protocols_text(c, l7)) {
                let _ = writeln!(out, "        {line}");
            }
            for b in pool.map(|p| p.backends.as_slice()).unwrap_or_default() {
                let _ = writeln!(
                    out,
                    "        backend {} weight {} slots {}{}",
                    b.address,
                    b.weight,
                    b.slots,
                    health_text(b)
                );
            }
        }
        if let Some(r) = &s.representativeness {
            let candidate = s.candidate.as_deref().unwrap_or("?");
            let divergence = r
                .divergence
                .map_or_else(|| "-".to_owned(), |d| format!("{d:.2}"));
            let worst = r.most_different.first().map_or_else(String::new, |p| {
                format!(
                    "; most different {} ({:.0}% of {candidate}'s, {:.0}% of {live}'s)",
                    p.prefix, p.candidate_percent, p.live_percent
                )
            });
            let _ = writeln!(
                out,
                "  clients {} on {candidate}, {} on {live} (by /{} and /{}): divergence {divergence}{worst}",
                r.candidate_clients, r.live_clients, r.prefix_v4, r.prefix_v6
            );
        }
        if let Some(last) = &s.last_resort {
            let state = if last.active {
                "ACTIVE: blue and green have no backend, new connections go here"
            } else {
                "standing by"
            };
            let _ = writeln!(
                out,
                "  last resort {state}; took {} new connections, {} responses",
                last.new_flows, last.responses
            );
            for b in &last.backends {
                let _ = writeln!(
                    out,
                    "        backend {} weight {} slots {}{}",
                    b.address,
                    b.weight,
                    b.slots,
                    health_text(b)
                );
            }
        }
    }
    for drain in &status.drains {
        let _ = writeln!(
            out,
            "\n{} {}",
            if drain.done { "drained:" } else { "draining:" },
            drain.describe()
        );
    }
    let plane: Vec<String> = status
        .plane
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    let _ = writeln!(
        out,
        "\npackets: {}",
        if plane.is_empty() {
            "none yet".to_owned()
        } else {
            plane.join(", ")
        }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_line_gives_the_total_and_the_flow_entry_size() {
        let map = |name: &str, bytes: u64, max_entries: u64| MapMemory {
            map: name.to_owned(),
            bytes,
            max_entries,
        };
        let maps = [
            map(splitter_common::maps::FLOWS, 4_980_736, 32_768),
            map(splitter_common::maps::SERVICES, 4_352_000, 256),
        ];
        assert_eq!(
            memory_line(&maps).as_deref(),
            Some(
                "maps: 8.9 MiB of kernel memory (flow table 4.8 MiB for 32768 entries, 152 B each)"
            )
        );
        assert_eq!(memory_line(&[]), None);
    }

    #[test]
    fn the_protocols_line_names_the_calls_failures_and_the_grpc_codes_read() {
        let mut c = VersionStats {
            protocols: [0, 3, 0, 0],
            calls: 40,
            call_errors: [2, 1, 0, 0, 4],
            ..VersionStats::default()
        };
        c.grpc_status[0] = 30;
        c.grpc_status[13] = 6;
        c.grpc_status[splitter_common::l7::GRPC_CODES] = 2;
        assert_eq!(
            protocols_text(&c, L7::Grpc).as_deref(),
            Some(
                "connections: http1 0, h2 3, tls 0, other 0; calls 40 (failed: trailers-only 2, error status 4, reset 1, goaway 0; cancelled by the client 0); untracked: calls 0, connections 0; grpc-status: OK 30, INTERNAL 6, unread 2"
            )
        );
        c.protocols = [0, 0, 5, 0];
        c.calls = 0;
        c.grpc_status = [0; splitter_common::l7::GRPC_STATUSES];
        assert_eq!(
            protocols_text(&c, L7::Grpc).as_deref(),
            Some(
                "connections: http1 0, h2 0, tls 5, other 0 (the kernel reads none of their requests)"
            )
        );
    }
}

//! Prometheus metrics, served read-only on `metrics_listen` (`GET /metrics`).
//!
//! Two sources: counters the daemon itself keeps (reloads, health transitions), and a collector
//! that reads the kernel maps at every scrape, so what Prometheus sees is exactly what the data
//! plane counted, including while the daemon was down. A scrape never takes the daemon's lock:
//! the collector has its own handles on the pinned maps, and reads the rest (services, backend
//! health, the canary's spread) from the `ScrapeView` the daemon publishes when it changes. Labels are typed and their cardinality is
//! bounded by the config: services × 2 versions (× backends for health).

use std::{fmt::Write as _, sync::Arc};

use hyper::Method;
use prometheus_client::{
    collector::Collector,
    encoding::{
        DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric as _, LabelValueEncoder,
        NoLabelSet,
    },
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
    },
    registry::Registry,
};
use splitter_common::{
    Endpoint, Histogram, LATENCY_BUCKETS, LatencyKind, SplitWord, Version, VersionStats, l7,
};
use tokio::sync::watch;

use super::http::{Request, Response};
use crate::{
    engine::{health::BackendId, latency, representativeness::Spread},
    kernel::maps::{Maps, MapsError},
};

/// `blue` or `green`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct VersionLabel(pub Version);

impl EncodeLabelValue for VersionLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.0.name())
    }
}

/// A backend's pool as a `version` label: `blue`, `green` or `last_resort`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct PoolLabel(pub crate::model::config::Pool);

impl EncodeLabelValue for PoolLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.0.name())
    }
}

/// `live` or `candidate`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types, reason = "label values are lowercase")]
pub enum Role {
    live,
    candidate,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types, reason = "label values are lowercase")]
pub enum Direction {
    /// Client to backend.
    inbound,
    /// Backend to client.
    outbound,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types, reason = "label values are lowercase")]
pub enum HealthState {
    up,
    down,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub service: String,
    pub version: VersionLabel,
    pub role: Role,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TrafficLabels {
    service: String,
    version: VersionLabel,
    role: Role,
    direction: Direction,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub service: String,
    pub version: PoolLabel,
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    pub service: String,
    pub version: PoolLabel,
    pub backend: String,
    pub state: HealthState,
}

/// A per-version counter: name, help, and the field it reads.
type CounterOf = (&'static str, &'static str, fn(&VersionStats) -> u64);

/// Labels of `splitter_http_responses_total`, in the order of `VersionStats::http_status`.
const STATUS_CLASSES: [&str; 6] = ["unparsed", "1xx", "2xx", "3xx", "4xx", "5xx"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    service: String,
    version: VersionLabel,
    role: Role,
    class: &'static str,
}

/// A per-version count of one kind (`splitter_call_errors`, `splitter_untracked`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    service: String,
    version: VersionLabel,
    role: Role,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabels {
    service: String,
    version: VersionLabel,
    role: Role,
    protocol: &'static str,
}

/// Labels of `splitter_grpc_status`: gRPC's name of the code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    service: String,
    version: VersionLabel,
    role: Role,
    code: &'static str,
}

/// Labels of `splitter_connections_by_protocol`, in the order of `VersionStats::protocols`.
const PROTOCOLS: [&str; l7::PROTOCOLS] = ["http1", "h2", "tls", "other"];
/// Labels of `splitter_call_errors`, in the order of `VersionStats::call_errors`.
const CALL_ERRORS: [&str; l7::CALL_ERRORS] = [
    "trailers_only",
    "reset_unanswered",
    "reset_answered",
    "goaway",
    "status",
];
/// Labels of `splitter_untracked`, in the order of `VersionStats::untracked`.
const UNTRACKED: [&str; l7::UNTRACKED] = ["call", "connection"];

/// Writes a per-version counter family with one series per kind: `values` gives each kind's
/// count, `label` makes its labels.
fn encode_kinds<L: EncodeLabelSet + std::fmt::Debug>(
    encoder: &mut DescriptorEncoder,
    (name, help): (&str, &str),
    samples: &[ServiceSample],
    kinds: &[&'static str],
    values: fn(&VersionStats) -> &[u64],
    label: fn(VersionLabels, &'static str) -> L,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for sample in samples {
        for (i, version) in [Version::Blue, Version::Green].iter().enumerate() {
            for (kind, value) in kinds.iter().zip(values(&sample.stats[i])) {
                ConstCounter::new(*value)
                    .encode(family.encode_family(&label(sample.labels(*version), kind))?)?;
            }
        }
    }
    Ok(())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

/// Labels of `splitter_rollouts_ended_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutEndLabels {
    pub service: String,
    /// `promoted` or `rolled_back`.
    pub outcome: &'static str,
    /// `gates` or `operator`.
    pub actor: String,
}

/// Labels of `splitter_promql_queries_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PromqlLabels {
    pub service: String,
    pub gate: String,
    /// `value`, `no_data` or `error`.
    pub result: &'static str,
}

/// Labels of `splitter_drills_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DrillLabels {
    pub service: String,
    /// `passed`, `failed`, `inconclusive` or `refused`.
    pub outcome: String,
    /// `operator` or `schedule`.
    pub actor: &'static str,
}

/// Labels of `splitter_drained_connections_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DrainLabels {
    pub service: String,
    pub version: String,
    /// `version_left` or `max_connection_age`.
    pub cause: String,
    /// `drained_idle`, `drained_after_response`, `reset`, `reset_at_timeout`,
    /// `closed_by_peers` or `no_answer`.
    pub outcome: String,
}

/// The counters the daemon keeps itself; cheap to clone (shared handles).
#[derive(Clone, Debug, Default)]
pub struct DaemonCounters {
    pub reloads: Counter,
    pub reload_errors: Counter,
    pub health_transitions: Family<TransitionLabels, Counter>,
    pub rollouts_ended: Family<RolloutEndLabels, Counter>,
    pub promql_queries: Family<PromqlLabels, Counter>,
    pub drills: Family<DrillLabels, Counter>,
    drained: Family<DrainLabels, Counter>,
    drain_raced: Family<ServiceLabels, Counter>,
    pub fleet: super::fleet::FleetCounters,
}

impl DaemonCounters {
    /// Counts `n` connections a drain of `service`'s `version` ended with `outcome`.
    pub fn drained(&self, service: &str, version: &str, cause: &str, outcome: &str, n: u64) {
        self.drained
            .get_or_create(&DrainLabels {
                service: service.to_owned(),
                version: version.to_owned(),
                cause: cause.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc_by(n);
    }

    /// Counts requests that raced a drain's close (dropped unprocessed).
    pub fn drain_raced(&self, service: &str, n: u64) {
        self.drain_raced
            .get_or_create(&ServiceLabels {
                service: service.to_owned(),
            })
            .inc_by(n);
    }
}

/// What a scrape needs beside the kernel maps, as the daemon last published it (at start, at
/// each reload, health transition and housekeeping).
#[derive(Debug, Default)]
pub struct ScrapeView {
    pub services: Vec<ScrapeService>,
    /// Every probed backend, and whether it passes its checks.
    pub backends: Vec<(BackendId, bool)>,
}

/// A service of the running config.
#[derive(Debug)]
pub struct ScrapeService {
    pub name: String,
    pub endpoint: Endpoint,
    pub has_last_resort: bool,
    /// The candidate's clients beside the live pool's, at the daemon's last housekeeping.
    pub spread: Option<Spread>,
}

/// The registry behind `GET /metrics`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// Registers the daemon's counters, and the kernel collector over `maps` (handles of its
    /// own on the pinned maps) and the daemon's published `view`.
    #[must_use]
    pub fn new(
        counters: &DaemonCounters,
        maps: Maps,
        view: watch::Receiver<Arc<ScrapeView>>,
    ) -> Self {
        let mut registry = Registry::default();
        registry.register(
            "splitter_reloads",
            "Config reloads applied",
            counters.reloads.clone(),
        );
        registry.register(
            "splitter_reload_errors",
            "Config reloads refused (nothing was applied)",
            counters.reload_errors.clone(),
        );
        registry.register(
            "splitter_health_transitions",
            "Backends going up or down",
            counters.health_transitions.clone(),
        );
        registry.register(
            "splitter_rollouts_ended",
            "Rollouts that ended, by outcome and by who decided",
            counters.rollouts_ended.clone(),
        );
        registry.register(
            "splitter_promql_queries",
            "PromQL gate queries, by result: value, no_data or error (both hold the rollout)",
            counters.promql_queries.clone(),
        );
        registry.register(
            "splitter_drills",
            "Rollback drills, by outcome (passed, failed, inconclusive, refused) and who asked",
            counters.drills.clone(),
        );
        registry.register(
            "splitter_drained_connections",
            "Connections of a version left by a rollback or a promotion, by what became of them",
            counters.drained.clone(),
        );
        registry.register(
            "splitter_drain_raced_requests",
            "Requests that raced a drain's close: dropped before the backend saw them",
            counters.drain_raced.clone(),
        );
        counters.fleet.register(&mut registry);
        registry.register_collector(Box::new(KernelCollector { maps, view }));
        Self { registry }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

impl Metrics {
    /// Answers a request to the metrics endpoint: `GET /metrics` only.
    #[must_use]
    pub fn answer(&self, request: &Request) -> Response {
        let path = request.path.split('?').next().unwrap_or_default();
        match (&request.method, path) {
            (&Method::GET, "/metrics") => match self.encode() {
                Ok(text) => Response {
                    status: 200,
                    content_type: CONTENT_TYPE,
                    body: text.into_bytes(),
                },
                Err(_) => Response::error(500, "cannot encode the metrics"),
            },
            (_, "/metrics") => {
                Response::error(405, "the metrics endpoint is read-only: GET /metrics")
            }
            _ => Response::error(404, "only GET /metrics is served here"),
        }
    }
}

/// The content type of `Metrics::encode`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

struct KernelCollector {
    maps: Maps,
    view: watch::Receiver<Arc<ScrapeView>>,
}

impl std::fmt::Debug for KernelCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelCollector").finish_non_exhaustive()
    }
}

/// One service's view for a scrape.
struct ServiceSample {
    name: String,
    split: SplitWord,
    stats: [VersionStats; 2],
    /// [version][kind], in `LatencyKind::ALL`'s order.
    latency: [[Histogram; LatencyKind::ALL.len()]; 2],
    /// New connections the last-resort pool took, when the service has one.
    last_resort_flows: Option<u64>,
    /// The candidate's clients beside the live pool's, at the daemon's last housekeeping.
    spread: Option<Spread>,
}

fn kind_labels(v: VersionLabels, kind: &'static str) -> KindLabels {
    KindLabels {
        service: v.service,
        version: v.version,
        role: v.role,
        kind,
    }
}

impl ServiceSample {
    fn labels(&self, version: Version) -> VersionLabels {
        let role = if version == self.split.live() {
            Role::live
        } else {
            Role::candidate
        };
        VersionLabels {
            service: self.name.clone(),
            version: VersionLabel(version),
            role,
        }
    }
}

impl Collector for KernelCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let view = Arc::clone(&self.view.borrow());
        let Ok(samples) = samples(&self.maps, &view) else {
            return Ok(());
        };
        let versions = [Version::Blue, Version::Green];

        let mut traffic = |name: &str,
                           help: &str,
                           pick: fn(&VersionStats) -> (u64, u64)|
         -> Result<(), std::fmt::Error> {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for sample in &samples {
                for (i, version) in versions.iter().enumerate() {
                    let VersionLabels {
                        service,
                        version,
                        role,
                    } = sample.labels(*version);
                    let (inbound, outbound) = pick(&sample.stats[i]);
                    for (direction, value) in [
                        (Direction::inbound, inbound),
                        (Direction::outbound, outbound),
                    ] {
                        let labels = TrafficLabels {
                            service: service.clone(),
                            version,
                            role,
                            direction,
                        };
                        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
                    }
                }
            }
            Ok(())
        };
        traffic(
            "splitter_packets",
            "Packets steered to (inbound) and translated from (outbound) a version",
            |s| (s.traffic.packets_in, s.traffic.packets_out),
        )?;
        traffic(
            "splitter_bytes",
            "Bytes steered to (inbound) and translated from (outbound) a version",
            |s| (s.traffic.bytes_in, s.traffic.bytes_out),
        )?;

        let per_version: [CounterOf; 9] = [
            (
                "splitter_calls",
                "HTTP/2 and gRPC calls (streams a client opened with HEADERS) the kernel followed",
                |s| s.calls,
            ),
            (
                "splitter_calls_cancelled",
                "HTTP/2 and gRPC calls the client reset (deadlines, cancellations)",
                |s| s.calls_cancelled,
            ),
            (
                "splitter_backend_resets",
                "RSTs a backend sent on an established connection",
                |s| s.backend_resets,
            ),
            (
                "splitter_refused_handshakes",
                "Handshakes a backend refused (RST before any SYN-ACK)",
                |s| s.refused_handshakes,
            ),
            (
                "splitter_connections",
                "New connections (TCP SYN or first UDP datagram) sent to a version",
                |s| s.new_flows,
            ),
            (
                "splitter_flow_misses",
                "Non-SYN packets with no flow entry, steered by hash",
                |s| s.flow_misses,
            ),
            (
                "splitter_slot_misses",
                "New connections dropped: no backend in either version",
                |s| s.slot_misses,
            ),
            (
                "splitter_failovers",
                "New connections a version was chosen for but sent to the other, having no backend",
                |s| s.failovers,
            ),
            (
                "splitter_closed_connections",
                "Connections reset or finished in both directions",
                |s| s.closed_flows,
            ),
        ];
        for (name, help, pick) in per_version {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for sample in &samples {
                for (i, version) in versions.iter().enumerate() {
                    ConstCounter::new(pick(&sample.stats[i]))
                        .encode(family.encode_family(&sample.labels(*version))?)?;
                }
            }
        }

        encode_kinds(
            &mut encoder,
            (
                "splitter_connections_by_protocol",
                "Connections by what their client's first bytes showed: http1, h2 (h2c), tls, other; the kernel reads the requests of http1 and h2 only",
            ),
            &samples,
            &PROTOCOLS,
            |s| &s.protocols,
            |v, protocol| ProtocolLabels {
                service: v.service,
                version: v.version,
                role: v.role,
                protocol,
            },
        )?;
        encode_kinds(
            &mut encoder,
            (
                "splitter_call_errors",
                "Failed HTTP/2 and gRPC calls by kind: a trailers-only response (unless its grpc-status was read as OK), a server RST_STREAM before or after the answer, a GOAWAY with an error code, trailers after the response with an error grpc-status",
            ),
            &samples,
            &CALL_ERRORS,
            |s| &s.call_errors,
            kind_labels,
        )?;
        encode_kinds(
            &mut encoder,
            (
                "splitter_grpc_status",
                "HTTP/2 trailers by their grpc-status, where the kernel read it (a literal with its name: a gRPC server's first trailers with the name, or with each code, on a connection); `unread` where it did not (an index into the connection's HPACK table, Huffman-coded, or absent)",
            ),
            &samples,
            &l7::GRPC_STATUS_NAMES,
            |s| &s.grpc_status,
            |v, code| CodeLabels {
                service: v.service,
                version: v.version,
                role: v.role,
                code,
            },
        )?;
        encode_kinds(
            &mut encoder,
            (
                "splitter_untracked",
                "What the kernel did not read: calls beyond the streams it follows per connection, connections whose framing it lost",
            ),
            &samples,
            &UNTRACKED,
            |s| &s.untracked,
            kind_labels,
        )?;

        let mut classes = encoder.encode_descriptor(
            "splitter_http_responses",
            "Responses by the HTTP/1.x status class of their first bytes; `unparsed` for anything else (HTTP/2, TLS)",
            None,
            MetricType::Counter,
        )?;
        for sample in &samples {
            for (i, version) in versions.iter().enumerate() {
                let VersionLabels {
                    service,
                    version,
                    role,
                } = sample.labels(*version);
                for (class, value) in STATUS_CLASSES.iter().zip(sample.stats[i].http_status) {
                    let labels = ClassLabels {
                        service: service.clone(),
                        version,
                        role,
                        class,
                    };
                    ConstCounter::new(value).encode(classes.encode_family(&labels)?)?;
                }
            }
        }

        for (kind, name, help) in [
            (
                0,
                "splitter_response_latency_seconds",
                "Time from a request's first byte to the response's first byte, measured in the kernel",
            ),
            (
                1,
                "splitter_handshake_latency_seconds",
                "Time from the client's SYN to the backend's SYN-ACK, measured in the kernel",
            ),
            (
                2,
                "splitter_first_token_latency_seconds",
                "Time from a request's first byte to its response's first body byte (a streamed response's first token; an HTTP/2 call's first DATA), measured in the kernel",
            ),
            (
                3,
                "splitter_whole_response_latency_seconds",
                "Time from a request's first byte to its response's last byte (a chunked response's last chunk; an HTTP/2 call's END_STREAM), measured in the kernel",
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for sample in &samples {
                for (i, version) in versions.iter().enumerate() {
                    let histogram = &sample.latency[i][kind];
                    let buckets: Vec<(f64, u64)> = histogram
                        .buckets
                        .iter()
                        .enumerate()
                        .map(|(b, count)| {
                            let upper = if b + 1 == LATENCY_BUCKETS {
                                f64::INFINITY
                            } else {
                                latency::bucket_bounds(b).1 / 1e6
                            };
                            (upper, *count)
                        })
                        .collect();
                    let count = buckets.iter().map(|(_, c)| c).sum();
                    family
                        .encode_family(&sample.labels(*version))?
                        .encode_histogram::<NoLabelSet>(
                            histogram.sum_us as f64 / 1e6,
                            count,
                            &buckets,
                            None,
                        )?;
                }
            }
        }

        let mut share = encoder.encode_descriptor(
            "splitter_share_ratio",
            "Share of new connections a version receives (0 to 1)",
            None,
            MetricType::Gauge,
        )?;
        for sample in &samples {
            for version in versions {
                let ratio = f64::from(sample.split.share_of(version)) / 10_000.0;
                ConstGauge::new(ratio).encode(share.encode_family(&sample.labels(version))?)?;
            }
        }

        let mut clients = encoder.encode_descriptor(
            "splitter_clients",
            "Distinct client addresses with an open or recent (60 s) connection, per version",
            None,
            MetricType::Gauge,
        )?;
        for sample in &samples {
            let Some(spread) = &sample.spread else {
                continue;
            };
            let candidate = sample.split.candidate();
            for (version, n) in [
                (candidate, spread.candidate_clients),
                (candidate.other(), spread.live_clients),
            ] {
                ConstGauge::new(n as i64)
                    .encode(clients.encode_family(&sample.labels(version))?)?;
            }
        }
        let mut divergence = encoder.encode_descriptor(
            "splitter_canary_divergence_ratio",
            "How the candidate's clients spread over network prefixes apart from the live pool's: 0 the same, 1 nothing in common",
            None,
            MetricType::Gauge,
        )?;
        for sample in &samples {
            if let Some(d) = sample.spread.as_ref().and_then(|s| s.divergence) {
                let labels = ServiceLabels {
                    service: sample.name.clone(),
                };
                ConstGauge::new(d).encode(divergence.encode_family(&labels)?)?;
            }
        }

        let mut last_resort = encoder.encode_descriptor(
            "splitter_last_resort_flows",
            "New connections a service's last-resort pool took because neither blue nor green had a backend",
            None,
            MetricType::Counter,
        )?;
        for sample in &samples {
            if let Some(flows) = sample.last_resort_flows {
                let labels = ServiceLabels {
                    service: sample.name.clone(),
                };
                ConstCounter::new(flows).encode(last_resort.encode_family(&labels)?)?;
            }
        }

        let mut up = encoder.encode_descriptor(
            "splitter_backend_up",
            "1 when the backend passes its health checks",
            None,
            MetricType::Gauge,
        )?;
        for (id, healthy) in &view.backends {
            let labels = BackendLabels {
                service: id.service.clone(),
                version: PoolLabel(id.pool),
                backend: id.addr.to_string(),
            };
            ConstGauge::new(i64::from(*healthy)).encode(up.encode_family(&labels)?)?;
        }

        if let Ok(plane) = self.maps.plane_counters() {
            let mut outcomes = encoder.encode_descriptor(
                "splitter_data_plane_packets",
                "Packets by data-plane outcome",
                None,
                MetricType::Counter,
            )?;
            for (outcome, value) in plane {
                ConstCounter::new(value)
                    .encode(outcomes.encode_family(&OutcomeLabels { outcome })?)?;
            }
        }
        Ok(())
    }
}

/// Split word and counters of every service of `view` that the kernel holds, for a scrape.
fn samples(maps: &Maps, view: &ScrapeView) -> Result<Vec<ServiceSample>, MapsError> {
    let mut samples = Vec::with_capacity(view.services.len());
    for spec in &view.services {
        let Some(service) = maps.service(&spec.endpoint)? else {
            continue;
        };
        let split = maps.split(service.split)?;
        samples.push(ServiceSample {
            name: spec.name.clone(),
            split,
            spread: spec.spread.clone(),
            stats: [
                maps.counters(service.id, Version::Blue)?,
                maps.counters(service.id, Version::Green)?,
            ],
            latency: [Version::Blue, Version::Green].map(|v| {
                LatencyKind::ALL.map(|k| maps.histogram(service.id, v, k).unwrap_or_default())
            }),
            last_resort_flows: if spec.has_last_resort {
                Some(maps.last_resort_counters(service.id)?.new_flows)
            } else {
                None
            },
        });
    }
    Ok(samples)
}

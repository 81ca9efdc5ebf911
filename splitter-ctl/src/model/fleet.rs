//! Fleet mode's facts: the `[fleet]` table validated, the keys in etcd and the records under
//! them. One place for the key layout (docs/architecture.md draws it):
//!
//! ```text
//! {prefix}/v1/desired/{release}   Desired      written by any node's CLI (a CAS on its revision)
//!                                              or by a node publishing a rollback made offline
//! {prefix}/v1/nodes/{node}        NodeReport   written by that node's daemon, under its lease
//! {prefix}/v1/members/{node}      Member       written by that node's daemon at each session
//!                                              (no lease: a node gone silent stays listed)
//! {prefix}/v1/events/{ms}-{node}  FleetEvent   written by whoever changed a desired split, after
//!                                              the change; kept `EVENTS_KEPT` (`history --fleet`)
//! {prefix}/v1/rollouts/{release}  FleetRollout written by `rollout` commands and the coordinator,
//!                                              with the desired split in one transaction
//! {prefix}/v1/coordinator         Coordinator  created by the elected daemon, under its lease
//! ```
//!
//! A record carries `schema`; one from a newer schema than this build's is refused, never
//! applied.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};
use splitter_common::{Histogram, SplitWord, Version};

/// The schema of the records this build writes and understands.
pub const SCHEMA: u32 = 1;
/// The key prefix when `[fleet]` does not set one.
pub const DEFAULT_PREFIX: &str = "/splitter";
/// How long a node stays listed alive without renewing its lease (`lease_ttl_s`).
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(5);
/// How long the fleet's events are kept in etcd: each writer removes older ones.
pub const EVENTS_KEPT: Duration = Duration::from_secs(30 * 24 * 3_600);
/// How long a command waits for etcd before it says the fleet was not told.
pub const COMMAND_TIMEOUT: Duration = Duration::from_millis(1_500);

/// An etcd endpoint: `http://host:port` or `https://host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// Parses `http://host:port` or `https://host:port` (an IPv6 host in brackets).
    pub fn parse(url: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else {
            return Err(format!("`{url}` is not an http:// or https:// URL"));
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("`{url}` has no port"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("`{url}`: `{port}` is not a port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains(['/', '@', '?', '#']) {
            return Err(format!("`{url}` has no host, or a path"));
        }
        Ok(Self {
            tls,
            host: host.to_owned(),
            port,
        })
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// TLS to a production etcd: the CA that signed its certificate, and this node's client
/// certificate and key (both or neither).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct FleetTls {
    pub ca_file: Option<PathBuf>,
    pub client: Option<(PathBuf, PathBuf)>,
}

/// The `[fleet]` table, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fleet {
    pub endpoints: Vec<Endpoint>,
    /// This host's name in the fleet.
    pub node: String,
    pub prefix: String,
    pub lease_ttl: Duration,
    pub tls: FleetTls,
}

impl Fleet {
    /// The prefix of every desired split.
    #[must_use]
    pub fn desired_prefix(&self) -> String {
        format!("{}/v1/desired/", self.prefix)
    }

    /// The key of `release`'s desired split.
    #[must_use]
    pub fn desired_key(&self, release: &str) -> String {
        format!("{}{release}", self.desired_prefix())
    }

    /// The prefix of every node's report.
    #[must_use]
    pub fn nodes_prefix(&self) -> String {
        format!("{}/v1/nodes/", self.prefix)
    }

    /// This node's report key.
    #[must_use]
    pub fn node_key(&self) -> String {
        format!("{}{}", self.nodes_prefix(), self.node)
    }

    /// The prefix of every node that ever followed the fleet.
    #[must_use]
    pub fn members_prefix(&self) -> String {
        format!("{}/v1/members/", self.prefix)
    }

    /// The prefix of the fleet's events.
    #[must_use]
    pub fn events_prefix(&self) -> String {
        format!("{}/v1/events/", self.prefix)
    }

    /// The key of an event decided at `at_ms` on `node`: keys sort by time.
    #[must_use]
    pub fn event_key(&self, at_ms: i64, node: &str) -> String {
        format!("{}{:015}-{node}", self.events_prefix(), at_ms.max(0))
    }

    /// Which etcd and which keys: revisions are comparable only within one identity.
    #[must_use]
    pub fn identity(&self) -> String {
        let endpoints: Vec<String> = self.endpoints.iter().map(ToString::to_string).collect();
        format!("{} {}", endpoints.join(","), self.prefix)
    }

    /// This node's membership key.
    #[must_use]
    pub fn member_key(&self) -> String {
        format!("{}{}", self.members_prefix(), self.node)
    }

    /// The prefix of every fleet rollout.
    #[must_use]
    pub fn rollouts_prefix(&self) -> String {
        format!("{}/v1/rollouts/", self.prefix)
    }

    /// The key of `release`'s fleet rollout.
    #[must_use]
    pub fn rollout_key(&self, release: &str) -> String {
        format!("{}{release}", self.rollouts_prefix())
    }

    /// The coordinator's key: held by one node at a time, under its lease.
    #[must_use]
    pub fn coordinator_key(&self) -> String {
        format!("{}/v1/coordinator", self.prefix)
    }
}

/// A node that follows the fleet (`{prefix}/v1/members/{node}`): kept when the node goes
/// silent, so that `status` shows it as not alive rather than not at all. An operator removes
/// a node that left for good with `etcdctl del`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub schema: u32,
    pub node: String,
    /// When its daemon last began a session with etcd (ms since the epoch).
    pub session_at_ms: i64,
}

/// Whether a name can be a node's name, or a segment of a key: letters, digits, `.`, `-`, `_`.
#[must_use]
pub fn is_key_segment(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// What changed a desired split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// An operator's `weight`.
    Weight,
    /// A rollback: sticky, it wins over a pending step when published after an outage.
    Rollback,
    /// The candidate made live (a fleet rollout's end): each node drains the retired version
    /// over its promotion window.
    Promotion,
}

impl Cause {
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Weight => "weight",
            Self::Rollback => "rollback",
            Self::Promotion => "promotion",
        }
    }
}

/// `blue` or `green` by name.
#[must_use]
pub fn version_named(name: &str) -> Option<Version> {
    match name {
        "blue" => Some(Version::Blue),
        "green" => Some(Version::Green),
        _ => None,
    }
}

/// A release's desired split, as etcd holds it (`{prefix}/v1/desired/{release}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    pub schema: u32,
    /// `blue` or `green`.
    pub live: String,
    /// The candidate's share of new connections, in basis points.
    pub candidate_bp: u16,
    pub cause: Cause,
    /// The node whose command wrote it, and who ran the command.
    pub node: String,
    pub actor: String,
    /// When the change was decided (ms since the epoch); a rollback published after an outage
    /// keeps the time it was made.
    pub decided_at_ms: i64,
    /// The client hash's salt that a fleet rollout with client affinity set on every node
    /// (each rollout draws another cohort of clients for the canary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<u32>,
}

/// Reads a record from etcd: the schema first (a newer one is refused whatever else the value
/// holds), then the fields.
pub fn read_record<T: serde::de::DeserializeOwned>(value: &[u8]) -> Result<T, RecordError> {
    #[derive(Deserialize)]
    struct Schema {
        schema: u32,
    }
    let schema: Schema =
        serde_json::from_slice(value).map_err(|e| RecordError::Unreadable(e.to_string()))?;
    if schema.schema > SCHEMA {
        return Err(RecordError::NewerSchema(schema.schema));
    }
    serde_json::from_slice(value).map_err(|e| RecordError::Unreadable(e.to_string()))
}

/// Why a value in etcd is not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("not a record this build reads: {0}")]
    Unreadable(String),
    #[error("schema {0} is newer than this build's {SCHEMA}: upgrade this node")]
    NewerSchema(u32),
    #[error("`{0}` is not a version: `blue` or `green`")]
    Version(String),
    #[error("a candidate share of {0} basis points is past 10000")]
    Share(u16),
}

impl RecordError {
    /// The `reason` label of the refusals' counter.
    #[must_use]
    pub const fn label(&self) -> &'static str {
        match self {
            Self::Unreadable(_) => "unreadable",
            Self::NewerSchema(_) => "newer_schema",
            Self::Version(_) | Self::Share(_) => "invalid",
        }
    }
}

impl Desired {
    #[must_use]
    pub fn new(word: SplitWord, cause: Cause, node: &str, actor: &str, decided_at_ms: i64) -> Self {
        Self {
            schema: SCHEMA,
            live: word.live().name().to_owned(),
            candidate_bp: word.candidate_share_bp(),
            cause,
            node: node.to_owned(),
            actor: actor.to_owned(),
            decided_at_ms,
            salt: None,
        }
    }

    /// Reads a value from etcd (`read_record`), and the word it asks for.
    pub fn parse(value: &[u8]) -> Result<Self, RecordError> {
        let desired: Self = read_record(value)?;
        desired.word()?;
        Ok(desired)
    }

    /// The split word it asks for.
    pub fn word(&self) -> Result<SplitWord, RecordError> {
        let live =
            version_named(&self.live).ok_or_else(|| RecordError::Version(self.live.clone()))?;
        if self.candidate_bp > 10_000 {
            return Err(RecordError::Share(self.candidate_bp));
        }
        Ok(SplitWord::new(live, self.candidate_bp))
    }

    #[must_use]
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A change of a desired split, as the fleet's history keeps it
/// (`{prefix}/v1/events/{decided_at_ms}-{node}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetEvent {
    pub release: String,
    /// The desired revision it wrote.
    pub revision: i64,
    #[serde(flatten)]
    pub desired: Desired,
    /// It was made while etcd was unreachable and published later, by the node's daemon.
    #[serde(default)]
    pub published_later: bool,
}

/// What a node has applied of one release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The desired revision applied (etcd's `mod_revision` of the key); 0 before any.
    pub revision: i64,
    /// The split word in this node's kernel when the report was written: it differs from the
    /// desired one when an operator changed this node alone (`--local`).
    pub kernel_live: String,
    pub kernel_candidate_bp: u16,
    /// What each version served on this node, counted since its data plane was created: the
    /// difference between two reports is a window, and the windows of every node sum to the
    /// fleet's (histograms add bucket by bucket).
    #[serde(default)]
    pub evidence: Vec<Evidence>,
}

/// A version's requests, errors and response times on one node, cumulative.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// `blue` or `green`.
    pub version: String,
    /// Requests or calls the kernel read (connections, for a service judged at L4).
    pub requests: u64,
    pub errors: u64,
    /// The response times the release's rollout plan judges (its `latency`).
    pub latency: Sparse,
}

/// A latency histogram with only its non-empty buckets: `(index, count)`, in index order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sparse {
    pub buckets: Vec<(u16, u64)>,
    pub sum_us: u64,
    pub count: u64,
}

impl Sparse {
    #[must_use]
    pub fn of(histogram: &Histogram) -> Self {
        Self {
            buckets: histogram
                .buckets
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(i, n)| (i as u16, *n))
                .collect(),
            sum_us: histogram.sum_us,
            count: histogram.count,
        }
    }

    /// The histogram again; buckets past this build's are refused.
    pub fn histogram(&self) -> Result<Histogram, RecordError> {
        let mut histogram = Histogram {
            sum_us: self.sum_us,
            count: self.count,
            ..Histogram::default()
        };
        for (i, n) in &self.buckets {
            let slot = histogram
                .buckets
                .get_mut(usize::from(*i))
                .ok_or_else(|| RecordError::Unreadable(format!("latency bucket {i}")))?;
            *slot = *n;
        }
        Ok(histogram)
    }
}

/// A node's report (`{prefix}/v1/nodes/{node}`), under the node's lease: it goes away when the
/// node stops renewing it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    pub schema: u32,
    pub node: String,
    /// When it was written (ms since the epoch).
    pub at_ms: i64,
    /// By release.
    pub applied: std::collections::BTreeMap<String, Applied>,
    /// Desired values this node refused (unreadable, newer schema), by release.
    #[serde(default)]
    pub refused: std::collections::BTreeMap<String, String>,
    /// Every release of this node's config, whether or not its data plane has it: a fleet
    /// rollout judges these nodes, and holds for one that serves the release but reports
    /// nothing of it.
    #[serde(default)]
    pub serves: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_with_scheme_host_and_port_or_say_what_is_wrong() {
        assert_eq!(
            Endpoint::parse("http://198.18.250.2:2379"),
            Ok(Endpoint {
                tls: false,
                host: "198.18.250.2".into(),
                port: 2379
            })
        );
        let v6 = Endpoint::parse("https://[2001:2::1]:2379/").expect("v6");
        assert_eq!((v6.tls, v6.host.as_str()), (true, "2001:2::1"));
        assert_eq!(v6.to_string(), "https://[2001:2::1]:2379");
        assert!(Endpoint::parse("198.18.0.1:2379").is_err());
        assert!(Endpoint::parse("http://198.18.0.1").is_err());
        assert!(Endpoint::parse("http://198.18.0.1:0").is_err());
        assert!(Endpoint::parse("http://:2379").is_err());
        assert!(Endpoint::parse("http://etcd/x:2379").is_err());
    }

    #[test]
    fn a_desired_split_round_trips_and_bad_values_are_refused_by_kind() {
        let word = SplitWord::new(Version::Blue, 2_500);
        let desired = Desired::new(word, Cause::Weight, "n1", "root (uid 0)", 7);
        let parsed = Desired::parse(&desired.to_json()).expect("parses");
        assert_eq!(parsed, desired);
        assert_eq!(parsed.word(), Ok(word));
        let newer = br#"{"schema":2,"whatever":true}"#;
        assert_eq!(Desired::parse(newer), Err(RecordError::NewerSchema(2)));
        assert_eq!(
            Desired::parse(newer).map_err(|e| e.label()),
            Err("newer_schema")
        );
        assert!(matches!(
            Desired::parse(b"not json"),
            Err(RecordError::Unreadable(_))
        ));
        let bad_version = br#"{"schema":1,"live":"red","candidate_bp":0,"cause":"weight","node":"n","actor":"a","decided_at_ms":0}"#;
        assert_eq!(
            Desired::parse(bad_version),
            Err(RecordError::Version("red".into()))
        );
        let bad_share = br#"{"schema":1,"live":"blue","candidate_bp":10001,"cause":"weight","node":"n","actor":"a","decided_at_ms":0}"#;
        assert_eq!(Desired::parse(bad_share), Err(RecordError::Share(10_001)));
    }

    #[test]
    fn a_sparse_histogram_round_trips_and_refuses_buckets_it_does_not_have() {
        let mut histogram = Histogram::default();
        histogram.buckets[3] = 7;
        histogram.buckets[100] = 1;
        histogram.count = 8;
        histogram.sum_us = 900;
        let sparse = Sparse::of(&histogram);
        assert_eq!(sparse.buckets, vec![(3, 7), (100, 1)]);
        assert_eq!(sparse.histogram(), Ok(histogram));
        let beyond = Sparse {
            buckets: vec![(u16::MAX, 1)],
            ..Sparse::default()
        };
        assert!(beyond.histogram().is_err());
    }

    #[test]
    fn key_segments_are_plain_names() {
        assert!(is_key_segment("node-1.example_a"));
        assert!(!is_key_segment(""));
        assert!(!is_key_segment("a/b"));
        assert!(!is_key_segment(&"x".repeat(64)));
    }
}

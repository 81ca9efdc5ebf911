//! The config file: TOML parsed into raw structs that keep each value's place in the file, then
//! validated into a `Config` that the rest of the program runs on. Every error names the file,
//! the line and column, and the field; validation stops at the first one, and nothing is
//! applied unless the whole file is valid.

use std::{
    collections::HashSet,
    fmt, fs,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use crate::model::{addr::addr_bytes, paths, plan::PlanRequest, slots::WeightedBackend};
use splitter_common::{Endpoint, PROTO_TCP, PROTO_UDP, SplitWord, Version, ipv4_mapped};

mod fleet;
pub mod lenient;
mod raw;
mod service;
mod unknown;
mod validate;

#[cfg(test)]
mod tests;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config `{path}`")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {problem}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        problem: String,
    },
    #[error("{path}:{line}:{column}: `{field}`: {problem}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        field: String,
        problem: String,
    },
}

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum XdpMode {
    /// Native (driver) mode, falling back to generic (skb) mode with a warning; generic on
    /// veth, where it is the faster of the two.
    #[default]
    Auto,
    Native,
    Generic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    #[must_use]
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => PROTO_TCP,
            Self::Udp => PROTO_UDP,
        }
    }

    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// A valid config.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub path: PathBuf,
    pub interface: String,
    pub pin_dir: PathBuf,
    pub xdp_mode: XdpMode,
    /// The daemon's control socket (HTTP/JSON on a Unix socket).
    pub control_socket: PathBuf,
    /// The group that may use the control socket besides root.
    pub control_group: Option<ControlGroup>,
    /// Where the daemon serves `GET /metrics`.
    pub metrics_listen: SocketAddr,
    /// Where the daemon keeps its state (the journal of later releases).
    pub state_dir: PathBuf,
    /// Flow-table entries per possible CPU, when the data plane is created.
    pub flow_table_per_cpu: u32,
    /// New flow entries each CPU may add per second; 0: no guard (`new_flow_rate_per_cpu`).
    pub new_flow_rate_per_cpu: u32,
    /// Whether steered packets and their replies skip the node's forwarding path when the FIB
    /// allows it (`fast_path`, default on).
    pub fast_path: bool,
    /// Fleet mode: the etcd this node follows (`[fleet]`); `None`, a host on its own.
    pub fleet: Option<crate::model::fleet::Fleet>,
    pub services: Vec<ServiceSpec>,
}

/// A group by name and id, resolved when the config is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlGroup {
    pub name: String,
    pub gid: u32,
}

/// How a service's backends are probed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failed probes that take a healthy backend out of its pool.
    pub unhealthy_after: u32,
    /// Consecutive good probes that bring an unhealthy backend back.
    pub healthy_after: u32,
    /// An HTTP GET instead of a bare TCP connect.
    pub http: Option<HttpCheck>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCheck {
    pub path: String,
    pub status: u16,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(1_000),
            timeout: Duration::from_millis(500),
            unhealthy_after: 2,
            healthy_after: 2,
            http: None,
        }
    }
}

/// How long after a promotion the previous version stays ready for `rollback`.
pub const DEFAULT_ROLLBACK_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// One of a service's pools: a version's, or the last-resort pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pool {
    Blue,
    Green,
    LastResort,
}

impl Pool {
    pub const ALL: [Self; 3] = [Self::Blue, Self::Green, Self::LastResort];

    /// The pool's number in the kernel (`BackendInfo::version`, `stats_index`, `slot_index`).
    #[must_use]
    pub const fn index(self) -> u8 {
        match self {
            Self::Blue => Version::Blue as u8,
            Self::Green => Version::Green as u8,
            Self::LastResort => splitter_common::LAST_RESORT,
        }
    }

    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Blue => "blue",
            Self::Green => "green",
            Self::LastResort => "last_resort",
        }
    }
}

impl From<Version> for Pool {
    fn from(version: Version) -> Self {
        match version {
            Version::Blue => Self::Blue,
            Version::Green => Self::Green,
        }
    }
}

/// A valid service.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceSpec {
    pub name: String,
    pub listen: SocketAddr,
    pub protocol: Protocol,
    pub live: Version,
    pub blue: Vec<WeightedBackend>,
    pub green: Vec<WeightedBackend>,
    /// Share of new connections for green, in basis points.
    pub green_share_bp: u16,
    /// How the backends are probed; `None` for UDP services, which are not probed.
    pub health: Option<HealthCheck>,
    /// The `[service.rollout]` table: the plan `rollout start` uses, which its options
    /// override field by field. Validated when the file is read.
    pub rollout: PlanRequest,
    /// How long after a promotion `rollback` may still return to the previous version; after
    /// it, that version is reported as retired.
    pub rollback_window: Duration,
    /// Whether each client sees one version (`affinity = "client"`), or each connection is
    /// split on its own (`"flow"`, the default).
    pub client_affinity: bool,
    /// The protocol the service speaks (`l7`): what the kernel reads of its connections.
    pub l7: crate::model::l7::L7,
    /// Client prefixes that always get the candidate, whatever the share (`always_candidate`).
    pub always_candidate: Vec<Cidr>,
    /// Client prefixes that never get the candidate (`never_candidate`).
    pub never_candidate: Vec<Cidr>,
    /// How often the daemon drills the service's rollback by itself (`drill_every_ms`).
    pub drill_every: Option<Duration>,
    /// The release group the service belongs to (`group`): the services of a group share one
    /// split word, so one write moves the whole stack.
    pub group: Option<String>,
    /// The third pool (`last_resort`): takes new connections when neither blue nor green has a
    /// backend to take them. Not probed.
    pub last_resort: Vec<WeightedBackend>,
    /// The prefixes clients are grouped by when the canary's spread is compared with the live
    /// pool's (`client_prefix_v4`, `client_prefix_v6`).
    pub client_prefixes: PrefixLengths,
    /// What a rollback or a promotion does to the connections of the version it leaves.
    pub drain: crate::model::drain::DrainSettings,
}

impl ServiceSpec {
    /// The key of the service in `SERVICES`.
    #[must_use]
    pub fn endpoint(&self) -> Endpoint {
        endpoint(self.listen, self.protocol)
    }

    #[must_use]
    pub fn pool(&self, version: Version) -> &[WeightedBackend] {
        self.backends_of(version.into())
    }

    /// The backends of any of the service's pools.
    #[must_use]
    pub fn backends_of(&self, pool: Pool) -> &[WeightedBackend] {
        match pool {
            Pool::Blue => &self.blue,
            Pool::Green => &self.green,
            Pool::LastResort => &self.last_resort,
        }
    }

    /// The split word the config asks for when the service is first created.
    #[must_use]
    pub fn initial_split(&self) -> SplitWord {
        SplitWord::new(self.live, 0).with_share_of(Version::Green, self.green_share_bp)
    }
}

/// What a rollout, rollback or drill acts on: one service, or a release group (its services in
/// file order; the first one's split word is the group's, and its `[service.rollout]` table the
/// group's plan).
#[derive(Clone, Debug)]
pub struct Release<'a> {
    /// The group's name, or the service's.
    pub name: &'a str,
    pub members: Vec<&'a ServiceSpec>,
}

impl<'a> Release<'a> {
    /// The service whose split word and rollout plan the release uses.
    #[must_use]
    pub fn leader(&self) -> &'a ServiceSpec {
        self.members[0]
    }
}

impl Config {
    /// The release that `name` (a service or a release group) belongs to.
    #[must_use]
    pub fn release(&self, name: &str) -> Option<Release<'_>> {
        let group = match self.service(name) {
            Some(spec) => match &spec.group {
                None => {
                    return Some(Release {
                        name: &spec.name,
                        members: vec![spec],
                    });
                }
                Some(group) => group.as_str(),
            },
            None => name,
        };
        let members: Vec<&ServiceSpec> = self
            .services
            .iter()
            .filter(|s| s.group.as_deref() == Some(group))
            .collect();
        let name = members.first()?.group.as_deref()?;
        Some(Release { name, members })
    }

    /// Every release: the release groups and the services in none, in file order of their
    /// first service.
    #[must_use]
    pub fn releases(&self) -> Vec<Release<'_>> {
        let mut seen = HashSet::new();
        self.services
            .iter()
            .filter(|s| seen.insert(s.group.as_deref().unwrap_or(&s.name).to_owned()))
            .filter_map(|s| self.release(&s.name))
            .collect()
    }

    /// Every backend of every pool, the last-resort pools included: (service, pool, backend).
    pub fn backends(&self) -> impl Iterator<Item = (&ServiceSpec, Pool, &WeightedBackend)> {
        self.services.iter().flat_map(|s| {
            Pool::ALL
                .into_iter()
                .flat_map(move |p| s.backends_of(p).iter().map(move |b| (s, p, b)))
        })
    }

    #[must_use]
    pub fn service(&self, name: &str) -> Option<&ServiceSpec> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::read(path).map(|(config, _)| config)
    }

    /// Reads and validates a config file; the config and the text it was read from.
    pub fn read(path: &Path) -> Result<(Self, String), ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Self::parse(path, &text)?;
        Ok((config, text))
    }

    /// Validates config text; `path` is only used in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |span| span.start);
            let (line, column) = raw::line_column(text, offset);
            let message = e.message().trim();
            match unknown::describe(text, offset, message) {
                Some((field, problem)) => ConfigError::Invalid {
                    path: path.to_owned(),
                    line,
                    column,
                    field,
                    problem,
                },
                None => ConfigError::Syntax {
                    path: path.to_owned(),
                    line,
                    column,
                    problem: message.to_owned(),
                },
            }
        })?;
        validate::Validator { path, text }.config(raw)
    }
}

/// Whether any user on the host may write the file at `path`. The daemon applies what the file
/// says as root, so it warns (and goes on: refusing would turn a chmod slip into an outage).
#[must_use]
pub fn world_writable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o002 != 0)
}

/// The control socket a config file names, read leniently: the CLI must reach the daemon even
/// when the file no longer validates (the daemon then says what is wrong). Falls back to the
/// default when the file cannot be read or parsed at all.
#[must_use]
pub fn control_socket_of(path: &Path) -> PathBuf {
    fs::read_to_string(path)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|table| {
            table
                .get("control_socket")
                .and_then(|v| v.as_str())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(paths::DEFAULT_CONTROL_SOCKET))
}

/// Prefix lengths clients are grouped by, unless the service sets `client_prefix_v4` and
/// `client_prefix_v6`.
pub const DEFAULT_PREFIX_V4: u8 = 16;
pub const DEFAULT_PREFIX_V6: u8 = 48;
/// The prefix lengths a service groups its clients by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixLengths {
    pub v4: u8,
    pub v6: u8,
}

impl Default for PrefixLengths {
    fn default() -> Self {
        Self {
            v4: DEFAULT_PREFIX_V4,
            v6: DEFAULT_PREFIX_V6,
        }
    }
}

/// A client prefix of a cohort: an address (IPv4-mapped for IPv4) and how many of its leading
/// bits count, in the 128-bit form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: splitter_common::Addr,
    pub bits: u32,
}

/// What is wrong with a client prefix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrError {
    #[error("`{0}` is not an address or a prefix like 198.19.0.0/16")]
    Form(String),
    #[error("`{text}`: the prefix length must be 0 to {max}")]
    Length { text: String, max: u32 },
    #[error("`{0}` has bits set past its prefix length")]
    HostBits(String),
}

impl Cidr {
    /// `198.19.0.0/16`, `2001:db8::/32`, or a bare address (one client).
    pub fn parse(text: &str) -> Result<Self, CidrError> {
        let (ip, len) = text
            .split_once('/')
            .map_or((text, None), |(a, l)| (a, Some(l)));
        let ip: IpAddr = ip
            .trim()
            .parse()
            .map_err(|_| CidrError::Form(text.to_owned()))?;
        let (addr, max, offset) = match ip {
            IpAddr::V4(v4) => (ipv4_mapped(v4.octets()), 32, 96),
            IpAddr::V6(v6) => (v6.octets(), 128, 0),
        };
        let len: u32 =
            match len {
                None => max,
                Some(l) => l.trim().parse().ok().filter(|l| *l <= max).ok_or_else(|| {
                    CidrError::Length {
                        text: text.to_owned(),
                        max,
                    }
                })?,
            };
        let bits = offset + len;
        let host_bits_set = (0..128u32)
            .filter(|b| *b >= bits)
            .any(|b| addr[(b / 8) as usize] & (0x80 >> (b % 8)) != 0);
        if host_bits_set {
            return Err(CidrError::HostBits(text.to_owned()));
        }
        Ok(Self { addr, bits })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.addr[..12] == ipv4_mapped([0; 4])[..12] && self.bits >= 96 {
            let [a, b, c, d] = [self.addr[12], self.addr[13], self.addr[14], self.addr[15]];
            write!(f, "{a}.{b}.{c}.{d}/{}", self.bits - 96)
        } else {
            write!(f, "{}/{}", std::net::Ipv6Addr::from(self.addr), self.bits)
        }
    }
}

/// The `Endpoint` of an address and protocol (IPv4 only until IPv6 lands).
#[must_use]
pub fn endpoint(addr: SocketAddr, protocol: Protocol) -> Endpoint {
    Endpoint::new(addr_bytes(addr.ip()), addr.port(), protocol.number())
}

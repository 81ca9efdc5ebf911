//! The config file: TOML parsed into raw structs that keep each value's place in the file, then
//! validated into a `Config` that the rest of the program runs on. Every error names the file,
//! the line and column, and the field; validation stops at the first one, and nothing is
//! applied unless the whole file is valid.

use std::{
    collections::HashSet,
    fmt, fs,
    net::{IpAddr, SocketAddr},
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use splitter_common::{
    Endpoint, PROTO_TCP, PROTO_UDP, SplitWord, Version, ipv4_mapped,
    maps::{FLOW_CAPACITY_PER_CPU, MAX_BACKENDS, MAX_SERVICES, SLOTS_PER_POOL},
};
use toml::Spanned;

use crate::model::{addr::addr_bytes, paths, plan::PlanRequest, share, slots::WeightedBackend};

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
/// The longest rollback window a config may ask for: 30 days.
const MAX_ROLLBACK_WINDOW_MS: u64 = 30 * 24 * 3_600_000;
/// The highest new-flow rate guard a config may set, per CPU and second.
const MAX_NEW_FLOW_RATE: u32 = splitter_common::MAX_GUARD_RATE as u32;
/// The period of scheduled drills: from one second to 30 days.
const DRILL_EVERY_MS: std::ops::RangeInclusive<u64> = 1_000..=30 * 24 * 3_600_000;

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

/// What a service or release group name may be.
const NAME_RULE: &str = "expected 1 to 63 characters of a-z, 0-9, `-` and `_`";

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
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
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Validates config text; `path` is only used in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map_or((1, 1), |span| line_column(text, span.start));
            ConfigError::Syntax {
                path: path.to_owned(),
                line,
                column,
                problem: e.message().trim().to_owned(),
            }
        })?;
        Validator { path, text }.config(raw)
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

impl Cidr {
    /// `198.19.0.0/16`, `2001:db8::/32`, or a bare address (one client).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (ip, len) = text
            .split_once('/')
            .map_or((text, None), |(a, l)| (a, Some(l)));
        let ip: IpAddr = ip
            .trim()
            .parse()
            .map_err(|_| format!("`{text}` is not an address or a prefix like 198.19.0.0/16"))?;
        let (addr, max, offset) = match ip {
            IpAddr::V4(v4) => (ipv4_mapped(v4.octets()), 32, 96),
            IpAddr::V6(v6) => (v6.octets(), 128, 0),
        };
        let len: u32 = match len {
            None => max,
            Some(l) => l
                .trim()
                .parse()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("`{text}`: the prefix length must be 0 to {max}"))?,
        };
        let bits = offset + len;
        let host_bits_set = (0..128u32)
            .filter(|b| *b >= bits)
            .any(|b| addr[(b / 8) as usize] & (0x80 >> (b % 8)) != 0);
        if host_bits_set {
            return Err(format!("`{text}` has bits set past its prefix length"));
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    interface: Spanned<String>,
    pin_dir: Option<Spanned<String>>,
    xdp_mode: Option<Spanned<String>>,
    control_socket: Option<Spanned<String>>,
    control_group: Option<Spanned<String>>,
    metrics_listen: Option<Spanned<String>>,
    state_dir: Option<Spanned<String>>,
    flow_table_per_cpu: Option<Spanned<u32>>,
    new_flow_rate_per_cpu: Option<Spanned<u32>>,
    #[serde(default, rename = "service")]
    services: Vec<Spanned<RawService>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<String>,
    listen: Spanned<String>,
    protocol: Option<Spanned<String>>,
    live: Option<Spanned<String>>,
    blue: Option<Spanned<Vec<Spanned<String>>>>,
    green: Option<Spanned<Vec<Spanned<String>>>>,
    green_weight: Option<Spanned<toml::Value>>,
    health: Option<Spanned<RawHealth>>,
    affinity: Option<Spanned<String>>,
    always_candidate: Option<Vec<Spanned<String>>>,
    never_candidate: Option<Vec<Spanned<String>>>,
    group: Option<Spanned<String>>,
    last_resort: Option<Spanned<Vec<Spanned<String>>>>,
    client_prefix_v4: Option<Spanned<u8>>,
    client_prefix_v6: Option<Spanned<u8>>,
    rollout: Option<Spanned<PlanRequest>>,
    rollback_window_ms: Option<Spanned<u64>>,
    drill_every_ms: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    interval_ms: Option<Spanned<u64>>,
    timeout_ms: Option<Spanned<u64>>,
    unhealthy_after: Option<Spanned<u32>>,
    healthy_after: Option<Spanned<u32>>,
    http_path: Option<Spanned<String>>,
    http_status: Option<Spanned<u16>>,
}

/// The id of group `name`, if the host has it.
fn group_id(name: &str) -> Option<u32> {
    let c_name = std::ffi::CString::new(name).ok()?;
    // SAFETY: getgrnam reads a valid C string; the result is read at once, before any other call.
    let group = unsafe { libc::getgrnam(c_name.as_ptr()) };
    // SAFETY: a non-null result points to a valid group entry.
    (!group.is_null()).then(|| unsafe { (*group).gr_gid })
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

/// Where a grouped service's `group` and `rollout` keys sit in the file.
struct GroupSpans {
    group: Range<usize>,
    rollout: Option<Range<usize>>,
    drill_every: Option<Range<usize>>,
}

struct Validator<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Validator<'_> {
    fn invalid(
        &self,
        span: Range<usize>,
        field: impl fmt::Display,
        problem: impl fmt::Display,
    ) -> ConfigError {
        let (line, column) = line_column(self.text, span.start);
        ConfigError::Invalid {
            path: self.path.to_owned(),
            line,
            column,
            field: field.to_string(),
            problem: problem.to_string(),
        }
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let interface = raw.interface.get_ref().trim();
        if interface.is_empty() || interface.len() > 15 || interface.contains(['/', ' ']) {
            return Err(self.invalid(
                raw.interface.span(),
                "interface",
                "expected an interface name (1 to 15 characters, no `/` or spaces)",
            ));
        }
        let pin_dir = match &raw.pin_dir {
            None => PathBuf::from(paths::DEFAULT_PIN_DIR),
            Some(dir) => {
                let path = PathBuf::from(dir.get_ref());
                if !path.is_absolute()
                    || !path.starts_with(paths::BPFFS_ROOT)
                    || path == Path::new(paths::BPFFS_ROOT)
                {
                    return Err(self.invalid(
                        dir.span(),
                        "pin_dir",
                        format!("expected a directory below `{}`", paths::BPFFS_ROOT),
                    ));
                }
                path
            }
        };
        let xdp_mode = match raw
            .xdp_mode
            .as_ref()
            .map(|m| (m.get_ref().as_str(), m.span()))
        {
            None | Some(("auto", _)) => XdpMode::Auto,
            Some(("native", _)) => XdpMode::Native,
            Some(("generic", _)) => XdpMode::Generic,
            Some((other, span)) => {
                return Err(self.invalid(
                    span,
                    "xdp_mode",
                    format!("`{other}` is not one of `auto`, `native`, `generic`"),
                ));
            }
        };
        if raw.services.len() > MAX_SERVICES as usize {
            let span = raw.services[MAX_SERVICES as usize].span();
            return Err(self.invalid(
                span,
                "service",
                format!("at most {MAX_SERVICES} services fit in one data plane"),
            ));
        }
        let mut names = HashSet::new();
        let mut listens = HashSet::new();
        let mut backends = HashSet::new();
        let mut services = Vec::with_capacity(raw.services.len());
        for (index, raw_service) in raw.services.into_iter().enumerate() {
            let raw_service = raw_service.into_inner();
            let (name_span, listen_span) = (raw_service.name.span(), raw_service.listen.span());
            let group_spans = raw_service.group.as_ref().map(|g| GroupSpans {
                group: g.span(),
                rollout: raw_service.rollout.as_ref().map(Spanned::span),
                drill_every: raw_service.drill_every_ms.as_ref().map(Spanned::span),
            });
            let service = self.service(index, raw_service, &mut backends)?;
            let at = |field: &str| format!("service[{index}].{field}");
            if !names.insert(service.name.clone()) {
                return Err(self.invalid(
                    name_span,
                    at("name"),
                    format!("service `{}` is defined twice", service.name),
                ));
            }
            if !listens.insert((service.listen, service.protocol)) {
                return Err(self.invalid(
                    listen_span.clone(),
                    at("listen"),
                    format!(
                        "another service already listens on {} {}",
                        service.protocol.name(),
                        service.listen
                    ),
                ));
            }
            services.push((service, listen_span, group_spans));
        }
        self.groups(&services)?;
        if backends.len() > MAX_BACKENDS as usize {
            return Err(self.invalid(
                0..0,
                "service",
                format!(
                    "{} backends in all; one data plane holds at most {MAX_BACKENDS}",
                    backends.len()
                ),
            ));
        }
        // Backends must not double as service addresses: replies from them would be rewritten.
        for (index, (service, listen_span, _)) in services.iter().enumerate() {
            if backends.contains(&(service.listen, service.protocol)) {
                return Err(self.invalid(
                    listen_span.clone(),
                    format!("service[{index}].listen"),
                    format!("{} is also a backend", service.listen),
                ));
            }
        }
        let control_socket = self.absolute_path(
            raw.control_socket.as_ref(),
            "control_socket",
            paths::DEFAULT_CONTROL_SOCKET,
        )?;
        let state_dir = self.absolute_path(
            raw.state_dir.as_ref(),
            "state_dir",
            paths::DEFAULT_STATE_DIR,
        )?;
        let metrics_listen = match &raw.metrics_listen {
            None => paths::DEFAULT_METRICS_LISTEN
                .parse()
                .map_err(|_| self.invalid(0..0, "metrics_listen", "bad built-in default"))?,
            Some(text) => text.get_ref().trim().parse().map_err(|_| {
                self.invalid(
                    text.span(),
                    "metrics_listen",
                    format!("`{}` is not an address:port", text.get_ref()),
                )
            })?,
        };
        let control_group = match &raw.control_group {
            None => None,
            Some(name) => Some(ControlGroup {
                name: name.get_ref().clone(),
                gid: group_id(name.get_ref()).ok_or_else(|| {
                    self.invalid(
                        name.span(),
                        "control_group",
                        format!("no group `{}` on this host", name.get_ref()),
                    )
                })?,
            }),
        };
        let flow_table_per_cpu = match &raw.flow_table_per_cpu {
            None => FLOW_CAPACITY_PER_CPU,
            Some(n) if (1_024..=1 << 20).contains(n.get_ref()) => *n.get_ref(),
            Some(n) => {
                return Err(self.invalid(
                    n.span(),
                    "flow_table_per_cpu",
                    format!("{} is outside 1024..=1048576", n.get_ref()),
                ));
            }
        };
        let new_flow_rate_per_cpu = match &raw.new_flow_rate_per_cpu {
            None => 0,
            Some(n) if *n.get_ref() <= MAX_NEW_FLOW_RATE => *n.get_ref(),
            Some(n) => {
                return Err(self.invalid(
                    n.span(),
                    "new_flow_rate_per_cpu",
                    format!("{} is outside 0..={MAX_NEW_FLOW_RATE}", n.get_ref()),
                ));
            }
        };
        Ok(Config {
            flow_table_per_cpu,
            new_flow_rate_per_cpu,
            path: self.path.to_owned(),
            interface: interface.to_owned(),
            pin_dir,
            xdp_mode,
            control_socket,
            control_group,
            metrics_listen,
            state_dir,
            services: services.into_iter().map(|(service, ..)| service).collect(),
        })
    }

    /// Release groups: named apart from services, and their services agree on what the shared
    /// split word and the shared salt mean (live version, initial share, affinity); only the
    /// first service of a group carries the group's `[service.rollout]` table.
    fn groups(
        &self,
        services: &[(ServiceSpec, Range<usize>, Option<GroupSpans>)],
    ) -> Result<(), ConfigError> {
        let mut first: std::collections::HashMap<&str, &ServiceSpec> =
            std::collections::HashMap::new();
        for (index, (spec, _, spans)) in services.iter().enumerate() {
            let (Some(group), Some(spans)) = (&spec.group, spans) else {
                continue;
            };
            let at = |field: &str| format!("service[{index}].{field}");
            if services.iter().any(|(s, ..)| &s.name == group) {
                return Err(self.invalid(
                    spans.group.clone(),
                    at("group"),
                    format!("`{group}` is also a service's name; name the group apart"),
                ));
            }
            let Some(leader) = first.get(group.as_str()) else {
                first.insert(group, spec);
                continue;
            };
            let disagreement = if spec.live != leader.live {
                Some("live")
            } else if spec.green_share_bp != leader.green_share_bp {
                Some("green_weight")
            } else if spec.client_affinity != leader.client_affinity {
                Some("affinity")
            } else if spec.always_candidate != leader.always_candidate {
                Some("always_candidate")
            } else if spec.never_candidate != leader.never_candidate {
                Some("never_candidate")
            } else if spec.rollback_window != leader.rollback_window {
                Some("rollback_window_ms")
            } else if spec.client_prefixes != leader.client_prefixes {
                Some("client_prefix_v4")
            } else {
                None
            };
            if let Some(key) = disagreement {
                return Err(self.invalid(
                    spans.group.clone(),
                    at(key),
                    format!(
                        "differs from `{}`, the first service of release group `{group}`: \
                         the services of a group share one split word and must agree on it",
                        leader.name
                    ),
                ));
            }
            for (span, key, what) in [
                (&spans.rollout, "rollout", "rollout plan"),
                (&spans.drill_every, "drill_every_ms", "drill schedule"),
            ] {
                if let Some(span) = span {
                    return Err(self.invalid(
                        span.clone(),
                        at(key),
                        format!(
                            "release group `{group}` takes its {what} from its first service \
                             `{}`; move this key there",
                            leader.name
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn service(
        &self,
        index: usize,
        raw: RawService,
        backends: &mut HashSet<(SocketAddr, Protocol)>,
    ) -> Result<ServiceSpec, ConfigError> {
        let at = |field: &str| format!("service[{index}].{field}");
        let name = raw.name.get_ref().clone();
        if !valid_name(&name) {
            return Err(self.invalid(raw.name.span(), at("name"), NAME_RULE));
        }
        let group = match &raw.group {
            None => None,
            Some(group) if valid_name(group.get_ref()) => Some(group.get_ref().clone()),
            Some(group) => return Err(self.invalid(group.span(), at("group"), NAME_RULE)),
        };
        let listen = self.socket_addr(&raw.listen, &at("listen"))?;
        let protocol = match raw
            .protocol
            .as_ref()
            .map(|p| (p.get_ref().as_str(), p.span()))
        {
            None | Some(("tcp", _)) => Protocol::Tcp,
            Some(("udp", _)) => Protocol::Udp,
            Some((other, span)) => {
                return Err(self.invalid(
                    span,
                    at("protocol"),
                    format!("`{other}` is not one of `tcp`, `udp`"),
                ));
            }
        };
        let live = match raw.live.as_ref().map(|l| (l.get_ref().as_str(), l.span())) {
            None | Some(("blue", _)) => Version::Blue,
            Some(("green", _)) => Version::Green,
            Some((other, span)) => {
                return Err(self.invalid(
                    span,
                    at("live"),
                    format!("`{other}` is not one of `blue`, `green`"),
                ));
            }
        };
        let blue = self.pool(raw.blue.as_ref(), &at("blue"), protocol, backends)?;
        let green = self.pool(raw.green.as_ref(), &at("green"), protocol, backends)?;
        let last_resort = self.pool(
            raw.last_resort.as_ref(),
            &at("last_resort"),
            protocol,
            backends,
        )?;
        if !last_resort.is_empty() && last_resort.iter().all(|b| b.weight == 0) {
            let span = raw
                .last_resort
                .as_ref()
                .map_or(raw.name.span(), Spanned::span);
            return Err(self.invalid(
                span,
                at("last_resort"),
                "needs at least one backend with a weight (or leave the key out)",
            ));
        }
        // The data plane rewrites addresses in place: a backend speaks the service's family.
        for (pool, raw_pool, name) in [
            (&blue, &raw.blue, "blue"),
            (&green, &raw.green, "green"),
            (&last_resort, &raw.last_resort, "last_resort"),
        ] {
            if let Some(i) = pool
                .iter()
                .position(|b| b.addr.is_ipv4() != listen.is_ipv4())
            {
                let span = raw_pool
                    .as_ref()
                    .map_or(raw.listen.span(), |p| p.get_ref()[i].span());
                let family = |v4: bool| if v4 { "IPv4" } else { "IPv6" };
                return Err(self.invalid(
                    span,
                    at(&format!("{name}[{i}]")),
                    format!(
                        "an {} backend for an {} service: both must be the same family",
                        family(pool[i].addr.is_ipv4()),
                        family(listen.is_ipv4())
                    ),
                ));
            }
        }
        let live_pool = match live {
            Version::Blue => (&blue, &raw.blue),
            Version::Green => (&green, &raw.green),
        };
        if live_pool.0.iter().all(|b| b.weight == 0) {
            let span = live_pool.1.as_ref().map_or(raw.name.span(), Spanned::span);
            return Err(self.invalid(
                span,
                at(live.name()),
                format!(
                    "the live pool ({}) needs at least one backend with a weight",
                    live.name()
                ),
            ));
        }
        let green_share_bp = match &raw.green_weight {
            None => 0,
            Some(value) => self.percent(value, &at("green_weight"))?,
        };
        // Probes are TCP connects or HTTP GETs: a UDP service's backends are not probed.
        let health = match (&raw.health, protocol) {
            (Some(health), Protocol::Udp) => {
                return Err(self.invalid(
                    health.span(),
                    at("health"),
                    "health checks probe over TCP; a UDP service's backends are not probed",
                ));
            }
            (Some(health), Protocol::Tcp) => Some(self.health(health.get_ref(), index)?),
            (None, Protocol::Tcp) => Some(HealthCheck::default()),
            (None, Protocol::Udp) => None,
        };
        let rollout = match &raw.rollout {
            None => PlanRequest::default(),
            Some(plan) => {
                plan.get_ref()
                    .clone()
                    .into_plan()
                    .map_err(|problem| self.invalid(plan.span(), at("rollout"), problem))?;
                plan.get_ref().clone()
            }
        };
        let rollback_window = match &raw.rollback_window_ms {
            None => DEFAULT_ROLLBACK_WINDOW,
            Some(ms) if *ms.get_ref() <= MAX_ROLLBACK_WINDOW_MS => {
                Duration::from_millis(*ms.get_ref())
            }
            Some(ms) => {
                return Err(self.invalid(
                    ms.span(),
                    at("rollback_window_ms"),
                    format!("{} is outside 0..={MAX_ROLLBACK_WINDOW_MS}", ms.get_ref()),
                ));
            }
        };
        let drill_every = match &raw.drill_every_ms {
            None => None,
            Some(ms) if DRILL_EVERY_MS.contains(ms.get_ref()) => {
                Some(Duration::from_millis(*ms.get_ref()))
            }
            Some(ms) => {
                return Err(self.invalid(
                    ms.span(),
                    at("drill_every_ms"),
                    format!(
                        "{} is outside {}..={}",
                        ms.get_ref(),
                        DRILL_EVERY_MS.start(),
                        DRILL_EVERY_MS.end()
                    ),
                ));
            }
        };
        let client_affinity = match raw
            .affinity
            .as_ref()
            .map(|a| (a.get_ref().as_str(), a.span()))
        {
            None | Some(("flow", _)) => false,
            Some(("client", _)) => true,
            Some((other, span)) => {
                return Err(self.invalid(
                    span,
                    at("affinity"),
                    format!("`{other}` is not `flow` or `client`"),
                ));
            }
        };
        let cidrs = |list: &Option<Vec<Spanned<String>>>, field: &str| {
            list.iter()
                .flatten()
                .map(|c| {
                    Cidr::parse(c.get_ref())
                        .map_err(|problem| self.invalid(c.span(), at(field), problem))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let always_candidate = cidrs(&raw.always_candidate, "always_candidate")?;
        let never_candidate = cidrs(&raw.never_candidate, "never_candidate")?;
        if let Some(both) = always_candidate
            .iter()
            .find(|c| never_candidate.contains(c))
            && let Some(span) = raw
                .never_candidate
                .iter()
                .flatten()
                .map(Spanned::span)
                .next()
        {
            return Err(self.invalid(
                span,
                at("never_candidate"),
                format!("{both} is also in always_candidate"),
            ));
        }
        let prefix = |raw: &Option<Spanned<u8>>, field: &str, default: u8, max: u8| match raw {
            None => Ok(default),
            Some(bits) if (1..=max).contains(bits.get_ref()) => Ok(*bits.get_ref()),
            Some(bits) => Err(self.invalid(
                bits.span(),
                at(field),
                format!("{} is outside 1..={max}", bits.get_ref()),
            )),
        };
        let client_prefixes = PrefixLengths {
            v4: prefix(
                &raw.client_prefix_v4,
                "client_prefix_v4",
                DEFAULT_PREFIX_V4,
                32,
            )?,
            v6: prefix(
                &raw.client_prefix_v6,
                "client_prefix_v6",
                DEFAULT_PREFIX_V6,
                128,
            )?,
        };
        let spec = ServiceSpec {
            name,
            listen,
            protocol,
            live,
            blue,
            green,
            green_share_bp,
            health,
            rollout,
            rollback_window,
            client_affinity,
            always_candidate,
            never_candidate,
            drill_every,
            group,
            last_resort,
            client_prefixes,
        };
        let candidate = live.other();
        if spec.initial_split().share_of(candidate) > 0
            && spec.pool(candidate).iter().all(|b| b.weight == 0)
        {
            let span = raw
                .green_weight
                .as_ref()
                .map_or(raw.name.span(), Spanned::span);
            return Err(self.invalid(
                span,
                at("green_weight"),
                format!(
                    "gives {0} a share, but the {0} pool has no backend with a weight",
                    candidate.name()
                ),
            ));
        }
        Ok(spec)
    }

    fn absolute_path(
        &self,
        raw: Option<&Spanned<String>>,
        field: &str,
        default: &str,
    ) -> Result<PathBuf, ConfigError> {
        let Some(raw) = raw else {
            return Ok(PathBuf::from(default));
        };
        let path = PathBuf::from(raw.get_ref());
        if !path.is_absolute() || path.parent().is_none() {
            return Err(self.invalid(
                raw.span(),
                field,
                format!("`{}` is not an absolute path", raw.get_ref()),
            ));
        }
        Ok(path)
    }

    fn health(&self, raw: &RawHealth, index: usize) -> Result<HealthCheck, ConfigError> {
        let at = |field: &str| format!("service[{index}].health.{field}");
        let defaults = HealthCheck::default();
        let ranged = |value: Option<&Spanned<u64>>,
                      field: &str,
                      default: u64,
                      range: std::ops::RangeInclusive<u64>| match value {
            None => Ok(default),
            Some(v) if range.contains(v.get_ref()) => Ok(*v.get_ref()),
            Some(v) => Err(self.invalid(
                v.span(),
                at(field),
                format!(
                    "{} is outside {}..={}",
                    v.get_ref(),
                    range.start(),
                    range.end()
                ),
            )),
        };
        let interval = ranged(
            raw.interval_ms.as_ref(),
            "interval_ms",
            defaults.interval.as_millis() as u64,
            100..=60_000,
        )?;
        let default_timeout = (defaults.timeout.as_millis() as u64).min(interval / 2);
        let timeout = ranged(
            raw.timeout_ms.as_ref(),
            "timeout_ms",
            default_timeout,
            10..=interval,
        )?;
        let threshold = |value: Option<&Spanned<u32>>, field: &str, default: u32| {
            ranged(
                value
                    .map(|v| Spanned::new(v.span(), u64::from(*v.get_ref())))
                    .as_ref(),
                field,
                u64::from(default),
                1..=10,
            )
            .map(|n| n as u32)
        };
        let unhealthy_after = threshold(
            raw.unhealthy_after.as_ref(),
            "unhealthy_after",
            defaults.unhealthy_after,
        )?;
        let healthy_after = threshold(
            raw.healthy_after.as_ref(),
            "healthy_after",
            defaults.healthy_after,
        )?;
        let http = match (&raw.http_path, &raw.http_status) {
            (None, None) => None,
            (None, Some(status)) => {
                return Err(self.invalid(status.span(), at("http_status"), "needs `http_path`"));
            }
            (Some(path), status) => {
                let text = path.get_ref();
                if !text.starts_with('/')
                    || text.len() > 1_024
                    || !text.bytes().all(|b| b.is_ascii_graphic())
                {
                    return Err(self.invalid(
                        path.span(),
                        at("http_path"),
                        "expected a path starting with `/`, printable ASCII without spaces",
                    ));
                }
                let status = match status {
                    None => 200,
                    Some(s) if (100..=599).contains(s.get_ref()) => *s.get_ref(),
                    Some(s) => {
                        return Err(self.invalid(
                            s.span(),
                            at("http_status"),
                            format!("{} is not an HTTP status", s.get_ref()),
                        ));
                    }
                };
                Some(HttpCheck {
                    path: text.clone(),
                    status,
                })
            }
        };
        Ok(HealthCheck {
            interval: Duration::from_millis(interval),
            timeout: Duration::from_millis(timeout),
            unhealthy_after,
            healthy_after,
            http,
        })
    }

    fn socket_addr(&self, raw: &Spanned<String>, field: &str) -> Result<SocketAddr, ConfigError> {
        let parsed: SocketAddr = raw.get_ref().trim().parse().map_err(|_| {
            self.invalid(
                raw.span(),
                field,
                format!("`{}` is not an address:port", raw.get_ref()),
            )
        })?;
        // `[::ffff:a.b.c.d]` is the IPv4 address a.b.c.d to the data plane: treat it as one.
        let addr = SocketAddr::new(parsed.ip().to_canonical(), parsed.port());
        if addr.port() == 0 || addr.ip().is_unspecified() {
            return Err(self.invalid(
                raw.span(),
                field,
                format!("`{addr}` needs a real address and a port other than 0"),
            ));
        }
        Ok(addr)
    }

    fn pool(
        &self,
        raw: Option<&Spanned<Vec<Spanned<String>>>>,
        field: &str,
        protocol: Protocol,
        seen: &mut HashSet<(SocketAddr, Protocol)>,
    ) -> Result<Vec<WeightedBackend>, ConfigError> {
        let Some(raw) = raw else {
            return Ok(Vec::new());
        };
        if raw.get_ref().len() > SLOTS_PER_POOL as usize {
            return Err(self.invalid(
                raw.span(),
                field,
                format!("at most {SLOTS_PER_POOL} backends fit in a pool"),
            ));
        }
        raw.get_ref()
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                let field = format!("{field}[{i}]");
                let mut words = entry.get_ref().split_whitespace();
                let addr_text = Spanned::new(entry.span(), words.next().unwrap_or_default().to_owned());
                let addr = self.socket_addr(&addr_text, &field)?;
                let weight = match words.next() {
                    None => 1,
                    Some(w) => w
                        .strip_prefix("weight=")
                        .and_then(|n| n.parse::<u32>().ok())
                        .filter(|n| *n <= 1_000_000)
                        .ok_or_else(|| self.invalid(entry.span(), &field, format!("`{w}` is not `weight=N` with N from 0 to 1000000")))?,
                };
                if let Some(extra) = words.next() {
                    return Err(self.invalid(entry.span(), &field, format!("unexpected `{extra}`: expected `address:port [weight=N]`")));
                }
                if !seen.insert((addr, protocol)) {
                    return Err(self.invalid(entry.span(), &field, format!("backend {addr} is listed twice; a backend serves one pool of one service")));
                }
                Ok(WeightedBackend { addr, weight })
            })
            .collect()
    }

    fn percent(&self, raw: &Spanned<toml::Value>, field: &str) -> Result<u16, ConfigError> {
        let text = match raw.get_ref() {
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            other => {
                return Err(self.invalid(
                    raw.span(),
                    field,
                    format!("expected a percentage, found a {}", other.type_str()),
                ));
            }
        };
        share::parse_percent(&text).map_err(|e| self.invalid(raw.span(), field, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
interface = "veth-node"
pin_dir = "/sys/fs/bpf/splitter-test"

[[service]]
name = "sentiment"
listen = "198.18.0.1:8080"
protocol = "tcp"
blue = ["198.18.1.2:8080", "198.18.1.3:8080 weight=3"]
green = ["198.18.2.2:8080"]
green_weight = 12.5
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("splitter.toml"), text)
    }

    /// GOOD with every optional table, for the property tests to break.
    const FULL: &str = r#"
interface = "veth-node"
pin_dir = "/sys/fs/bpf/splitter-test"
metrics_listen = "127.0.0.1:9464"

[[service]]
name = "sentiment"
listen = "198.18.0.1:8080"
blue = ["198.18.1.2:8080", "198.18.1.3:8080 weight=3"]
green = ["198.18.2.2:8080"]
green_weight = 12.5
rollback_window_ms = 60000
drill_every_ms = 3600000

[service.health]
interval_ms = 500
http_path = "/healthz"

[service.rollout]
steps = [1, 5, 100]
prometheus_url = "http://127.0.0.1:9090"

[[service.rollout.promql_gates]]
name = "lowconf"
query = 'sum(rate(x{v="$candidate"}[1m]))'
max = 0.05
"#;

    proptest::proptest! {
        #[test]
        fn property_any_edit_of_a_config_is_applied_or_refused_with_its_place(
            edits in proptest::collection::vec((0..FULL.len(), proptest::prelude::any::<u8>()), 1..6)
        ) {
            let mut bytes = FULL.as_bytes().to_vec();
            for (at, byte) in edits {
                bytes[at] = byte;
            }
            let text = String::from_utf8_lossy(&bytes);
            if let Err(error) = parse(&text) {
                let message = error.to_string();
                proptest::prop_assert!(message.starts_with("splitter.toml:"), "{}", message);
            }
        }

        #[test]
        fn property_any_text_is_applied_or_refused(
            chars in proptest::collection::vec(proptest::prelude::any::<char>(), 0..300)
        ) {
            let text: String = chars.into_iter().collect();
            if let Err(error) = parse(&text) {
                proptest::prop_assert!(error.to_string().starts_with("splitter.toml:"));
            }
        }
    }

    fn error(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("config was accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_full_config_is_validated_into_a_plan() {
        let config = parse(GOOD).expect("valid config");
        assert_eq!(config.interface, "veth-node");
        assert_eq!(config.pin_dir, Path::new("/sys/fs/bpf/splitter-test"));
        let service = config.service("sentiment").expect("service");
        assert_eq!(service.listen, "198.18.0.1:8080".parse().expect("addr"));
        assert_eq!(service.blue[1].weight, 3);
        assert_eq!(service.green_share_bp, 1_250);
        assert_eq!(
            service.initial_split(),
            SplitWord::new(Version::Blue, 1_250)
        );
    }

    #[test]
    fn defaults_apply_when_keys_are_left_out() {
        let config = parse("interface = \"eth0\"\n[[service]]\nname = \"m\"\nlisten = \"198.18.0.1:80\"\nblue = [\"198.18.1.2:80\"]\n").expect("valid");
        assert_eq!(config.pin_dir, Path::new(paths::DEFAULT_PIN_DIR));
        assert_eq!(config.xdp_mode, XdpMode::Auto);
        let service = &config.services[0];
        assert_eq!(
            (service.protocol, service.live, service.green_share_bp),
            (Protocol::Tcp, Version::Blue, 0)
        );
        assert!(service.green.is_empty());
    }

    #[test]
    fn green_live_takes_the_complement_share_for_blue() {
        let text = GOOD.replace("protocol = \"tcp\"", "protocol = \"tcp\"\nlive = \"green\"");
        let service = parse(&text).expect("valid").services.remove(0);
        assert_eq!(
            service.initial_split(),
            SplitWord::new(Version::Green, 8_750)
        );
    }

    #[test]
    fn every_validation_error_names_file_line_and_field() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "green_weight = 12.5",
                "green_weight = 120",
                "splitter.toml:11:16: `service[0].green_weight`: `120` is out of range",
            ),
            (
                "green_weight = 12.5",
                "green_weight = 1.234",
                "`service[0].green_weight`: `1.234` is not a percentage",
            ),
            (
                "green_weight = 12.5",
                "green_weight = \"ten\"",
                "expected a percentage, found a string",
            ),
            (
                "listen = \"198.18.0.1:8080\"",
                "listen = \"198.18.0.1\"",
                "splitter.toml:7:10: `service[0].listen`: `198.18.0.1` is not an address:port",
            ),
            (
                "listen = \"198.18.0.1:8080\"",
                "listen = \"[2001:db8::1]:80\"",
                "`service[0].blue[0]`: an IPv4 backend for an IPv6 service: both must be the same family",
            ),
            (
                "listen = \"198.18.0.1:8080\"",
                "listen = \"198.18.0.1:0\"",
                "port other than 0",
            ),
            (
                "protocol = \"tcp\"",
                "protocol = \"sctp\"",
                ":8:12: `service[0].protocol`: `sctp` is not one of `tcp`, `udp`",
            ),
            (
                "name = \"sentiment\"",
                "name = \"Sentiment!\"",
                ":6:8: `service[0].name`: expected 1 to 63 characters",
            ),
            (
                "\"198.18.1.3:8080 weight=3\"",
                "\"198.18.1.3:8080 weight=x\"",
                "`service[0].blue[1]`: `weight=x` is not `weight=N`",
            ),
            (
                "\"198.18.1.3:8080 weight=3\"",
                "\"198.18.1.2:8080\"",
                "`service[0].blue[1]`: backend 198.18.1.2:8080 is listed twice",
            ),
            (
                "green = [\"198.18.2.2:8080\"]",
                "green = [\"198.18.2.2:8080\", 7]",
                "splitter.toml:10:",
            ),
            (
                "blue = [\"198.18.1.2:8080\", \"198.18.1.3:8080 weight=3\"]",
                "blue = []",
                "`service[0].blue`: the live pool (blue) needs at least one backend",
            ),
            (
                "pin_dir = \"/sys/fs/bpf/splitter-test\"",
                "pin_dir = \"/tmp/pins\"",
                ":3:11: `pin_dir`: expected a directory below `/sys/fs/bpf`",
            ),
            (
                "interface = \"veth-node\"",
                "interface = \"\"",
                ":2:13: `interface`: expected an interface name",
            ),
            (
                "interface = \"veth-node\"",
                "interface = \"veth-node\"\nxdp_mode = \"turbo\"",
                "`xdp_mode`: `turbo` is not one of",
            ),
            (
                "protocol = \"tcp\"",
                "protocol = \"tcp\"\ncolour = \"red\"",
                "splitter.toml:9:1: unknown field `colour`",
            ),
            (
                "interface = \"veth-node\"",
                "interfaces = \"veth-node\"",
                "unknown field `interfaces`",
            ),
            (
                "green = [\"198.18.2.2:8080\"]",
                "green = []",
                "`service[0].green_weight`: gives green a share, but the green pool has no backend",
            ),
        ];
        for (from, to, expected) in cases {
            assert!(GOOD.contains(from), "fixture does not contain {from}");
            let message = error(&GOOD.replace(from, to));
            assert!(
                message.contains(expected),
                "for `{to}`:\n  got      {message}\n  expected {expected}"
            );
        }
    }

    #[test]
    fn duplicate_services_and_shared_backends_are_refused() {
        let twice = format!(
            "{GOOD}\n[[service]]\nname = \"sentiment\"\nlisten = \"198.18.0.1:9090\"\nblue = [\"198.18.1.9:80\"]\n"
        );
        assert!(error(&twice).contains(
            "splitter.toml:14:8: `service[1].name`: service `sentiment` is defined twice"
        ));
        let same_listen = format!(
            "{GOOD}\n[[service]]\nname = \"other\"\nlisten = \"198.18.0.1:8080\"\nblue = [\"198.18.1.9:80\"]\n"
        );
        assert!(
            error(&same_listen).contains("another service already listens on tcp 198.18.0.1:8080")
        );
        let shared = format!(
            "{GOOD}\n[[service]]\nname = \"other\"\nlisten = \"198.18.0.1:9090\"\nblue = [\"198.18.2.2:8080\"]\n"
        );
        assert!(error(&shared).contains("backend 198.18.2.2:8080 is listed twice"));
        let backend_as_service = format!(
            "{GOOD}\n[[service]]\nname = \"other\"\nlisten = \"198.18.1.2:8080\"\nblue = [\"198.18.1.9:80\"]\n"
        );
        assert!(
            error(&backend_as_service)
                .contains(":15:10: `service[1].listen`: 198.18.1.2:8080 is also a backend")
        );
    }

    /// Two services `a` and `b` in release group `stack`, with `extra_a` and `extra_b` in them.
    fn group(extra_a: &str, extra_b: &str) -> String {
        format!(
            "interface = \"veth-node\"\n[[service]]\nname = \"a\"\nlisten = \"198.18.0.1:80\"\nblue = [\"198.18.1.1:80\"]\ngreen = [\"198.18.1.2:80\"]\ngroup = \"stack\"\n{extra_a}\n[[service]]\nname = \"b\"\nlisten = \"198.18.0.1:81\"\nblue = [\"198.18.1.1:81\"]\ngreen = [\"198.18.1.2:81\"]\ngroup = \"stack\"\n{extra_b}\n[[service]]\nname = \"solo\"\nlisten = \"198.18.0.1:82\"\nblue = [\"198.18.1.1:82\"]\n"
        )
    }

    #[test]
    fn release_groups_resolve_by_group_or_service_and_must_agree() {
        let config = parse(&group("", "")).expect("valid");
        let names = |name: &str| {
            let release = config.release(name).expect("release");
            (
                release.name.to_owned(),
                release
                    .members
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>(),
            )
        };
        let stack = ("stack".to_owned(), vec!["a", "b"]);
        assert_eq!(names("stack"), stack);
        assert_eq!(names("b"), stack, "a service names its group");
        assert_eq!(names("solo"), ("solo".to_owned(), vec!["solo"]));
        assert!(config.release("nothing").is_none());
        assert_eq!(
            config.releases().iter().map(|r| r.name).collect::<Vec<_>>(),
            ["stack", "solo"]
        );
        assert!(
            error(&group("", "green_weight = 10"))
                .contains("`service[1].green_weight`: differs from `a`, the first service of release group `stack`")
        );
        assert!(error(&group("", "live = \"green\"")).contains("`service[1].live`: differs"));
        assert!(error(&group("affinity = \"client\"", "")).contains("`service[1].affinity`"));
        assert!(
            error(&group("", "[service.rollout]\nsteps = [50, 100]"))
                .contains("takes its rollout plan from its first service `a`")
        );
        assert!(error(&group("", "drill_every_ms = 60000")).contains(
            "`service[1].drill_every_ms`: release group `stack` takes its drill schedule"
        ));
        assert!(
            error(&group("", "never_candidate = [\"198.19.0.0/16\"]"))
                .contains("`service[1].never_candidate`: differs")
        );
        // The first service's plan is the group's.
        assert!(parse(&group("[service.rollout]\nsteps = [50, 100]", "")).is_ok());
        let clash = group("", "").replace("group = \"stack\"", "group = \"solo\"");
        assert!(error(&clash).contains("`solo` is also a service's name"));
        assert!(
            error(&group("", "").replace("\"stack\"", "\"Stack!\""))
                .contains("`service[0].group`: expected")
        );
    }

    #[test]
    fn a_last_resort_pool_is_validated_like_the_others() {
        let with = |pool: &str| format!("{GOOD}last_resort = {pool}\n");
        let config = parse(&with("[\"198.18.3.1:80\"]")).expect("valid");
        assert_eq!(config.services[0].last_resort.len(), 1);
        assert!(
            parse(GOOD).expect("valid").services[0]
                .last_resort
                .is_empty()
        );
        assert!(
            error(&with("[\"198.18.3.1:80 weight=0\"]"))
                .contains("`service[0].last_resort`: needs at least one backend with a weight")
        );
        assert!(
            error(&with("[\"198.18.2.2:8080\"]"))
                .contains("backend 198.18.2.2:8080 is listed twice")
        );
        assert!(
            error(&with("[\"[2001:2::1]:80\"]"))
                .contains("`service[0].last_resort[0]`: an IPv6 backend for an IPv4 service")
        );
    }

    #[test]
    fn a_rollout_plan_in_the_config_is_validated_and_overridden_field_by_field() {
        assert_eq!(
            parse(GOOD).expect("valid").services[0].rollout,
            PlanRequest::default()
        );
        let text = format!(
            "{GOOD}\n[service.rollout]\nsteps = [10, 50, 100]\nhold_ms = 5000\nmax_p99_ms = 250\n"
        );
        let configured = parse(&text).expect("valid").services[0].rollout.clone();
        assert_eq!(configured.steps, Some(vec![10.0, 50.0, 100.0]));
        let plan = configured
            .overridden_by(PlanRequest {
                hold_ms: Some(1_000),
                ..PlanRequest::default()
            })
            .into_plan()
            .expect("valid");
        assert_eq!(plan.steps, [1_000, 5_000, 10_000]);
        assert_eq!(plan.hold, Duration::from_secs(1), "the override wins");
        assert_eq!(plan.gates.max_p99_ms, Some(250.0), "the config stays");
        let text = format!(
            "{GOOD}\n[service.rollout]\nprometheus_url = \"http://127.0.0.1:9090\"\n\
             [[service.rollout.promql_gates]]\nname = \"lowconf\"\n\
             query = 'sum(rate(low_total{{version=\"$candidate\"}}[1m]))'\nmax = 0.05\n"
        );
        let plan = parse(&text).expect("valid").services[0]
            .rollout
            .clone()
            .into_plan()
            .expect("valid");
        assert_eq!(plan.promql.len(), 1);
        assert_eq!(
            plan.promql[0].query,
            r#"sum(rate(low_total{version="$candidate"}[1m]))"#
        );
        assert_eq!(
            plan.prometheus.map(|u| u.to_string()).as_deref(),
            Some("http://127.0.0.1:9090")
        );
        for (table, expected) in [
            (
                "steps = [50, 10, 100]",
                "`service[0].rollout`: steps must rise",
            ),
            (
                "failure_limit = 0",
                "`service[0].rollout`: failure_limit 0 is outside",
            ),
            ("hold = \"5s\"", "unknown field `hold`"),
            (
                "[[service.rollout.promql_gates]]\nname = \"lowconf\"\nquery = \"x\"\nmax = 0.1",
                "`service[0].rollout`: PromQL gates need `prometheus_url`",
            ),
            (
                "prometheus_url = \"http://127.0.0.1:9090\"\n[[service.rollout.promql_gates]]\nname = \"lowconf\"\nquery = \"x\"",
                "PromQL gate `lowconf` needs `max`, `min` or both",
            ),
            (
                "prometheus_url = \"http://127.0.0.1:9090\"\n[[service.rollout.promql_gates]]\nname = \"lowconf\"\nquery = \"x\"\nmaximum = 1",
                "unknown field `maximum`",
            ),
        ] {
            let message = error(&format!("{GOOD}\n[service.rollout]\n{table}\n"));
            assert!(message.contains(expected), "{table}: {message}");
        }
        assert_eq!(
            parse(GOOD).expect("valid").services[0].rollback_window,
            DEFAULT_ROLLBACK_WINDOW
        );
        assert_eq!(parse(GOOD).expect("valid").services[0].drill_every, None);
        assert_eq!(
            parse(&format!("{GOOD}drill_every_ms = 3600000\n"))
                .expect("valid")
                .services[0]
                .drill_every,
            Some(Duration::from_secs(3_600))
        );
        assert!(!parse(GOOD).expect("valid").services[0].client_affinity);
        assert!(
            parse(&format!("{GOOD}affinity = \"client\"\n"))
                .expect("valid")
                .services[0]
                .client_affinity
        );
        let spec = parse(&format!(
            "{GOOD}always_candidate = [\"198.19.0.0/16\", \"198.18.9.9\"]\nnever_candidate = [\"2001:db8::/32\"]\n"
        ))
        .expect("valid");
        let spec = &spec.services[0];
        assert_eq!(
            (spec.always_candidate[0].bits, spec.always_candidate[1].bits),
            (112, 128)
        );
        assert_eq!(spec.always_candidate[0].to_string(), "198.19.0.0/16");
        assert_eq!(spec.never_candidate[0].to_string(), "2001:db8::/32");
        for (list, problem) in [
            (
                "always_candidate = [\"198.19.0.1/16\"]",
                "has bits set past its prefix length",
            ),
            (
                "always_candidate = [\"198.19.0.0/33\"]",
                "the prefix length must be 0 to 32",
            ),
            (
                "never_candidate = [\"staff\"]",
                "is not an address or a prefix",
            ),
            (
                "always_candidate = [\"198.19.0.0/16\"]\nnever_candidate = [\"198.19.0.0/16\"]",
                "198.19.0.0/16 is also in always_candidate",
            ),
        ] {
            let message = error(&format!("{GOOD}{list}\n"));
            assert!(message.contains(problem), "{list}: {message}");
        }
        let message = error(&format!("{GOOD}affinity = \"sticky\"\n"));
        assert!(
            message.contains("`service[0].affinity`: `sticky` is not `flow` or `client`"),
            "{message}"
        );
        let message = error(&format!("{GOOD}drill_every_ms = 999\n"));
        assert!(
            message.contains("`service[0].drill_every_ms`: 999 is outside 1000..="),
            "{message}"
        );
        let message = error(&format!("{GOOD}rollback_window_ms = 2592000001\n"));
        assert!(
            message.contains("`service[0].rollback_window_ms`: 2592000001 is outside"),
            "{message}"
        );
    }

    #[test]
    fn daemon_keys_and_health_checks_have_defaults_and_are_validated() {
        let config = parse(GOOD).expect("valid");
        assert_eq!(
            config.control_socket,
            Path::new(paths::DEFAULT_CONTROL_SOCKET)
        );
        assert_eq!(config.state_dir, Path::new(paths::DEFAULT_STATE_DIR));
        assert_eq!(
            config.metrics_listen.to_string(),
            paths::DEFAULT_METRICS_LISTEN
        );
        assert_eq!(config.control_group, None);
        assert_eq!(config.services[0].health, Some(HealthCheck::default()));

        let text = GOOD.replace("interface = \"veth-node\"", "interface = \"veth-node\"\ncontrol_socket = \"/tmp/s/ctl.sock\"\ncontrol_group = \"root\"\nmetrics_listen = \"127.0.0.1:9500\"\nstate_dir = \"/tmp/s\"")
            + "\n[service.health]\ninterval_ms = 200\ntimeout_ms = 50\nunhealthy_after = 1\nhttp_path = \"/healthz\"\n";
        let config = parse(&text).expect("valid");
        assert_eq!(config.control_socket, Path::new("/tmp/s/ctl.sock"));
        assert_eq!(
            config.control_group,
            Some(ControlGroup {
                name: "root".to_owned(),
                gid: 0
            })
        );
        assert_eq!(config.metrics_listen.port(), 9500);
        let health = config.services[0].health.as_ref().expect("probed");
        assert_eq!(
            (
                health.interval,
                health.timeout,
                health.unhealthy_after,
                health.healthy_after
            ),
            (Duration::from_millis(200), Duration::from_millis(50), 1, 2)
        );
        assert_eq!(
            health.http,
            Some(HttpCheck {
                path: "/healthz".to_owned(),
                status: 200
            })
        );

        let bad: &[(&str, &str)] = &[
            (
                "control_socket = \"run/ctl.sock\"",
                "`control_socket`: `run/ctl.sock` is not an absolute path",
            ),
            (
                "control_group = \"no-such-group-here\"",
                "`control_group`: no group `no-such-group-here` on this host",
            ),
            (
                "metrics_listen = \"localhost\"",
                "`metrics_listen`: `localhost` is not an address:port",
            ),
            (
                "flow_table_per_cpu = 10",
                "`flow_table_per_cpu`: 10 is outside 1024..=1048576",
            ),
            (
                "state_dir = \"\"",
                "`state_dir`: `` is not an absolute path",
            ),
        ];
        for (line, expected) in bad {
            let message = error(&GOOD.replace(
                "interface = \"veth-node\"",
                &format!("interface = \"veth-node\"\n{line}"),
            ));
            assert!(message.contains(expected), "{line}: {message}");
        }
        let bad_health: &[(&str, &str)] = &[
            (
                "interval_ms = 50",
                "`service[0].health.interval_ms`: 50 is outside 100..=60000",
            ),
            (
                "interval_ms = 200\ntimeout_ms = 300",
                "`service[0].health.timeout_ms`: 300 is outside 10..=200",
            ),
            (
                "unhealthy_after = 0",
                "`service[0].health.unhealthy_after`: 0 is outside 1..=10",
            ),
            (
                "http_status = 204",
                "`service[0].health.http_status`: needs `http_path`",
            ),
            (
                "http_path = \"healthz\"",
                "`service[0].health.http_path`: expected a path starting with `/`",
            ),
            (
                "http_path = \"/h\"\nhttp_status = 99",
                "`service[0].health.http_status`: 99 is not an HTTP status",
            ),
            ("intervall_ms = 100", "unknown field `intervall_ms`"),
        ];
        for (lines, expected) in bad_health {
            let message = error(&format!("{GOOD}\n[service.health]\n{lines}\n"));
            assert!(message.contains(expected), "{lines}: {message}");
        }
    }

    /// The keys serde accepts in a table, read from the error an unknown key gets (every raw
    /// table denies unknown fields and names the ones it expects).
    fn keys_of(toml_with_unknown: &str) -> Vec<String> {
        let message = match toml::from_str::<RawConfig>(toml_with_unknown) {
            Ok(_) => panic!("`zzz` was accepted"),
            Err(e) => e.message().to_owned(),
        };
        let expected = message
            .split_once("expected one of ")
            .unwrap_or_else(|| panic!("no key list in: {message}"))
            .1;
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn every_config_key_is_in_the_configuration_docs() {
        let docs = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/configuration.md"
        ))
        .expect("docs/configuration.md");
        let service = "interface = \"x\"\n[[service]]\nname = \"a\"\nlisten = \"198.18.0.1:80\"\n";
        // Each table, the heading of its section in the docs, and a config with an unknown key
        // in it.
        let tables = [
            ("## Top level", "zzz = 1\n".to_owned()),
            ("## `[[service]]`", format!("{service}zzz = 1\n")),
            (
                "### `[service.health]`",
                format!("{service}[service.health]\nzzz = 1\n"),
            ),
            (
                "### `[service.rollout]`",
                format!("{service}[service.rollout]\nzzz = 1\n"),
            ),
            (
                "#### `[[service.rollout.promql_gates]]`",
                format!("{service}[service.rollout]\n[[service.rollout.promql_gates]]\nzzz = 1\n"),
            ),
        ];
        // A section: from its heading to the next heading of any level.
        let section = |heading: &str| -> String {
            let start = docs
                .find(&format!("\n{heading}\n"))
                .unwrap_or_else(|| panic!("no section `{heading}` in docs/configuration.md"));
            docs[start + heading.len() + 2..]
                .lines()
                .take_while(|line| !line.starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let mut missing = Vec::new();
        for (heading, text) in tables {
            let keys = keys_of(&text);
            assert!(keys.len() >= 4, "{heading}: {keys:?}");
            let rows = section(heading);
            for key in keys {
                // A key is a row of its table's section, or (a table itself) a section.
                let documented = rows.contains(&format!("| `{key}` |"))
                    || [
                        format!("## `[[{key}]]`"),
                        format!("### `[service.{key}]`"),
                        format!("#### `[[service.rollout.{key}]]`"),
                    ]
                    .iter()
                    .any(|form| docs.contains(form.as_str()));
                if !documented {
                    missing.push(format!("{heading} `{key}`"));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "keys missing from docs/configuration.md: {missing:?}"
        );
    }

    #[test]
    fn the_shipped_example_config_is_valid() {
        let text = include_str!("../../../../packaging/splitter.toml");
        let config = parse(text).unwrap_or_else(|e| panic!("packaging/splitter.toml: {e}"));
        let http = config.services[0]
            .health
            .as_ref()
            .and_then(|h| h.http.as_ref());
        assert_eq!(http.map(|h| h.path.as_str()), Some("/healthz"));
    }

    #[test]
    fn udp_services_are_not_probed_and_mapped_addresses_are_ipv4() {
        let udp = GOOD.replace("protocol = \"tcp\"", "protocol = \"udp\"");
        assert_eq!(
            parse(&udp).expect("valid").services[0].health,
            None,
            "a UDP service is not probed"
        );
        let probed = format!("{udp}\n[service.health]\ninterval_ms = 500\n");
        assert!(
            error(&probed).contains("`service[0].health`: health checks probe over TCP"),
            "{}",
            error(&probed)
        );

        let mapped = GOOD.replace(
            "listen = \"198.18.0.1:8080\"",
            "listen = \"[::ffff:198.18.0.1]:8080\"",
        );
        let config = parse(&mapped).expect("an IPv4-mapped address is IPv4");
        assert_eq!(
            config.services[0].listen,
            "198.18.0.1:8080".parse().expect("addr")
        );
        let twice = format!(
            "{mapped}\n[[service]]\nname = \"other\"\nlisten = \"198.18.0.1:8080\"\nblue = [\"198.18.1.9:80\"]\n"
        );
        assert!(error(&twice).contains("another service already listens on tcp 198.18.0.1:8080"));
    }

    #[test]
    fn a_syntax_error_names_its_line() {
        let message = error("interface = \"eth0\"\n[[service]\n");
        assert!(message.starts_with("splitter.toml:2:"), "{message}");
    }

    #[test]
    fn a_missing_file_is_a_read_error_naming_the_path() {
        let message = Config::load(Path::new("/nonexistent/splitter.toml"))
            .expect_err("missing")
            .to_string();
        assert_eq!(message, "cannot read config `/nonexistent/splitter.toml`");
    }
}

//! The raw file validated into a `Config`, one function per section of the file. Every error
//! names the file, line, column and field; validation stops at the first one. The checks of
//! one `[[service]]` table are in `service`.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    net::SocketAddr,
    ops::{Range, RangeInclusive},
    path::{Path, PathBuf},
};

use splitter_common::maps::{FLOW_CAPACITY_PER_CPU, MAX_BACKENDS, MAX_SERVICES};
use toml::Spanned;

use super::{
    Config, ConfigError, ControlGroup, Protocol, ServiceSpec, XdpMode,
    raw::{RawConfig, line_column},
};
use crate::model::{paths, share};

/// The highest new-flow rate guard a config may set, per CPU and second.
const MAX_NEW_FLOW_RATE: u32 = splitter_common::MAX_GUARD_RATE as u32;
/// Flow-table entries per CPU a config may ask for.
const FLOW_TABLE_PER_CPU: RangeInclusive<u32> = 1_024..=1 << 20;

/// Where a grouped service's `group`, `rollout` and `drill_every_ms` keys sit in the file.
pub(super) struct GroupSpans {
    pub group: Range<usize>,
    pub rollout: Option<Range<usize>>,
    pub drill_every: Option<Range<usize>>,
}

/// A validated service, with where its keys sit for the checks across services.
pub(super) struct Placed {
    pub spec: ServiceSpec,
    pub listen: Range<usize>,
    pub group: Option<GroupSpans>,
}

pub(super) struct Validator<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

impl Validator<'_> {
    pub(super) fn invalid(
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

    /// One of a few words (`tcp` or `udp`, say), or `default` when the key is left out.
    pub(super) fn choice<T: Copy>(
        &self,
        raw: Option<&Spanned<String>>,
        field: &str,
        default: T,
        options: &[(&str, T)],
    ) -> Result<T, ConfigError> {
        let Some(raw) = raw else {
            return Ok(default);
        };
        options
            .iter()
            .find(|(word, _)| word == raw.get_ref())
            .map(|(_, value)| *value)
            .ok_or_else(|| {
                let words: Vec<String> = options.iter().map(|(w, _)| format!("`{w}`")).collect();
                self.invalid(
                    raw.span(),
                    field,
                    format!("`{}` is not one of {}", raw.get_ref(), words.join(", ")),
                )
            })
    }

    /// A number within `range`, or `default` when the key is left out.
    pub(super) fn ranged<T: Copy + PartialOrd + fmt::Display>(
        &self,
        raw: Option<&Spanned<T>>,
        field: &str,
        default: T,
        range: RangeInclusive<T>,
    ) -> Result<T, ConfigError> {
        match raw {
            None => Ok(default),
            Some(v) if range.contains(v.get_ref()) => Ok(*v.get_ref()),
            Some(v) => Err(self.invalid(
                v.span(),
                field,
                format!(
                    "{} is outside {}..={}",
                    v.get_ref(),
                    range.start(),
                    range.end()
                ),
            )),
        }
    }

    pub(super) fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let interface = self.interface(&raw.interface)?;
        let pin_dir = self.pin_dir(raw.pin_dir.as_ref())?;
        let xdp_mode = self.choice(
            raw.xdp_mode.as_ref(),
            "xdp_mode",
            XdpMode::Auto,
            &[
                ("auto", XdpMode::Auto),
                ("native", XdpMode::Native),
                ("generic", XdpMode::Generic),
            ],
        )?;
        let services = self.services(raw.services)?;
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
        let metrics_listen = self.metrics_listen(raw.metrics_listen.as_ref())?;
        let control_group = self.control_group(raw.control_group.as_ref())?;
        let flow_table_per_cpu = self.ranged(
            raw.flow_table_per_cpu.as_ref(),
            "flow_table_per_cpu",
            FLOW_CAPACITY_PER_CPU,
            FLOW_TABLE_PER_CPU,
        )?;
        let new_flow_rate_per_cpu = self.ranged(
            raw.new_flow_rate_per_cpu.as_ref(),
            "new_flow_rate_per_cpu",
            0,
            0..=MAX_NEW_FLOW_RATE,
        )?;
        let fleet = raw
            .fleet
            .as_ref()
            .map(|fleet| self.fleet(fleet))
            .transpose()?;
        Ok(Config {
            path: self.path.to_owned(),
            interface,
            pin_dir,
            xdp_mode,
            control_socket,
            control_group,
            metrics_listen,
            state_dir,
            flow_table_per_cpu,
            new_flow_rate_per_cpu,
            fast_path: raw.fast_path.as_ref().is_none_or(|on| *on.get_ref()),
            fleet,
            services,
        })
    }

    fn interface(&self, raw: &Spanned<String>) -> Result<String, ConfigError> {
        let interface = raw.get_ref().trim();
        if interface.is_empty() || interface.len() > 15 || interface.contains(['/', ' ']) {
            return Err(self.invalid(
                raw.span(),
                "interface",
                "expected an interface name (1 to 15 characters, no `/` or spaces)",
            ));
        }
        Ok(interface.to_owned())
    }

    fn pin_dir(&self, raw: Option<&Spanned<String>>) -> Result<PathBuf, ConfigError> {
        let Some(dir) = raw else {
            return Ok(PathBuf::from(paths::DEFAULT_PIN_DIR));
        };
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
        Ok(path)
    }

    /// Every `[[service]]`, then what must hold across them: unique names and listeners,
    /// release groups, the data plane's backend capacity, no backend doubling as a service.
    fn services(
        &self,
        raw: Vec<Spanned<super::raw::RawService>>,
    ) -> Result<Vec<ServiceSpec>, ConfigError> {
        if raw.len() > MAX_SERVICES as usize {
            return Err(self.invalid(
                raw[MAX_SERVICES as usize].span(),
                "service",
                format!("at most {MAX_SERVICES} services fit in one data plane"),
            ));
        }
        let mut names = HashSet::new();
        let mut listens = HashSet::new();
        let mut backends = HashSet::new();
        let mut services = Vec::with_capacity(raw.len());
        for (index, raw_service) in raw.into_iter().enumerate() {
            let raw_service = raw_service.into_inner();
            let name_span = raw_service.name.span();
            let placed = self.service(index, raw_service, &mut backends)?;
            let at = |field: &str| format!("service[{index}].{field}");
            let spec = &placed.spec;
            if !names.insert(spec.name.clone()) {
                return Err(self.invalid(
                    name_span,
                    at("name"),
                    format!("service `{}` is defined twice", spec.name),
                ));
            }
            if !listens.insert((spec.listen, spec.protocol)) {
                return Err(self.invalid(
                    placed.listen.clone(),
                    at("listen"),
                    format!(
                        "another service already listens on {} {}",
                        spec.protocol.name(),
                        spec.listen
                    ),
                ));
            }
            services.push(placed);
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
        for (index, placed) in services.iter().enumerate() {
            if backends.contains(&(placed.spec.listen, placed.spec.protocol)) {
                return Err(self.invalid(
                    placed.listen.clone(),
                    format!("service[{index}].listen"),
                    format!("{} is also a backend", placed.spec.listen),
                ));
            }
        }
        Ok(services.into_iter().map(|placed| placed.spec).collect())
    }

    /// Release groups: named apart from services, and their services agree on what the shared
    /// split word and the shared salt mean (live version, initial share, affinity); only the
    /// first service of a group carries the group's `[service.rollout]` table.
    fn groups(&self, services: &[Placed]) -> Result<(), ConfigError> {
        let mut first: HashMap<&str, &ServiceSpec> = HashMap::new();
        for (index, placed) in services.iter().enumerate() {
            let (spec, Some(spans)) = (&placed.spec, &placed.group) else {
                continue;
            };
            let Some(group) = &spec.group else {
                continue;
            };
            let at = |field: &str| format!("service[{index}].{field}");
            if services.iter().any(|p| &p.spec.name == group) {
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
            if let Some(key) = disagreement(spec, leader) {
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

    pub(super) fn absolute_path(
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

    fn metrics_listen(&self, raw: Option<&Spanned<String>>) -> Result<SocketAddr, ConfigError> {
        match raw {
            None => paths::DEFAULT_METRICS_LISTEN
                .parse()
                .map_err(|_| self.invalid(0..0, "metrics_listen", "bad built-in default")),
            Some(text) => text.get_ref().trim().parse().map_err(|_| {
                self.invalid(
                    text.span(),
                    "metrics_listen",
                    format!("`{}` is not an address:port", text.get_ref()),
                )
            }),
        }
    }

    fn control_group(
        &self,
        raw: Option<&Spanned<String>>,
    ) -> Result<Option<ControlGroup>, ConfigError> {
        let Some(name) = raw else {
            return Ok(None);
        };
        let gid = group_id(name.get_ref()).ok_or_else(|| {
            self.invalid(
                name.span(),
                "control_group",
                format!("no group `{}` on this host", name.get_ref()),
            )
        })?;
        Ok(Some(ControlGroup {
            name: name.get_ref().clone(),
            gid,
        }))
    }

    pub(super) fn socket_addr(
        &self,
        raw: &Spanned<String>,
        field: &str,
    ) -> Result<SocketAddr, ConfigError> {
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

    pub(super) fn percent(
        &self,
        raw: &Spanned<toml::Value>,
        field: &str,
    ) -> Result<u16, ConfigError> {
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

/// The first key on which a service of a release group differs from the group's first
/// service, where they must agree.
fn disagreement(spec: &ServiceSpec, leader: &ServiceSpec) -> Option<&'static str> {
    if spec.live != leader.live {
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
    }
}

/// The id of group `name`, if the host has it.
fn group_id(name: &str) -> Option<u32> {
    let c_name = std::ffi::CString::new(name).ok()?;
    // SAFETY: getgrnam reads a valid C string; the result is read at once, before any other call.
    let group = unsafe { libc::getgrnam(c_name.as_ptr()) };
    // SAFETY: a non-null result points to a valid group entry.
    (!group.is_null()).then(|| unsafe { (*group).gr_gid })
}

/// Which family a backend speaks, for the error that says they differ.
pub(super) const fn family(v4: bool) -> &'static str {
    if v4 { "IPv4" } else { "IPv6" }
}

impl Protocol {
    pub(super) const CHOICES: [(&'static str, Self); 2] = [("tcp", Self::Tcp), ("udp", Self::Udp)];
}

//! One `[[service]]` table validated into a `ServiceSpec`, one function per part of it:
//! identity, pools, share, health checks, rollout plan, rollback window, drills, affinity,
//! cohorts, client prefixes and drains.

use std::{collections::HashSet, net::SocketAddr, ops::RangeInclusive, time::Duration};

use splitter_common::{Version, maps::SLOTS_PER_POOL};
use toml::Spanned;

use crate::model::l7::L7;

use super::{
    Cidr, ConfigError, DEFAULT_PREFIX_V4, DEFAULT_PREFIX_V6, DEFAULT_ROLLBACK_WINDOW, HealthCheck,
    HttpCheck, PrefixLengths, Protocol, ServiceSpec,
    raw::{RawHealth, RawService},
    validate::{GroupSpans, Placed, Validator, family},
};
use crate::model::units;
use crate::model::{
    drain::{DrainSettings, Established, MAX_DRAIN_IDLE_MS, MAX_DRAIN_MS, MIN_CONNECTION_AGE_MS},
    plan::PlanRequest,
    slots::WeightedBackend,
};

/// The longest rollback window a config may ask for: 30 days.
const MAX_ROLLBACK_WINDOW_MS: u64 = 30 * 24 * 3_600_000;
/// The period of scheduled drills: from one second to 30 days.
const DRILL_EVERY_MS: RangeInclusive<u64> = 1_000..=30 * 24 * 3_600_000;
/// The highest weight of a backend.
const MAX_WEIGHT: u32 = 1_000_000;

/// What a service or release group name may be.
const NAME_RULE: &str = "expected 1 to 63 characters of a-z, 0-9, `-` and `_`";

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// A service's pools, validated.
struct Pools {
    blue: Vec<WeightedBackend>,
    green: Vec<WeightedBackend>,
    last_resort: Vec<WeightedBackend>,
}

impl Validator<'_> {
    /// The service at `index`; `backends` collects every backend seen so far, so that none
    /// serves two pools.
    pub(super) fn service(
        &self,
        index: usize,
        raw: RawService,
        backends: &mut HashSet<(SocketAddr, Protocol)>,
    ) -> Result<Placed, ConfigError> {
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
        let protocol = self.choice(
            raw.protocol.as_ref(),
            &at("protocol"),
            Protocol::Tcp,
            &Protocol::CHOICES,
        )?;
        let live = self.choice(
            raw.live.as_ref(),
            &at("live"),
            Version::Blue,
            &[("blue", Version::Blue), ("green", Version::Green)],
        )?;
        let pools = self.pools(&raw, index, listen, protocol, live, backends)?;
        let green_share_bp = match &raw.green_weight {
            None => 0,
            Some(value) => self.percent(value, &at("green_weight"))?,
        };
        let health = self.health_check(raw.health.as_ref(), index, protocol)?;
        let rollout = self.rollout(raw.rollout.as_ref(), index)?;
        let rollback_window = Duration::from_millis(self.ranged(
            raw.rollback_window_ms.as_ref(),
            &at("rollback_window_ms"),
            units::millis(DEFAULT_ROLLBACK_WINDOW),
            0..=MAX_ROLLBACK_WINDOW_MS,
        )?);
        let drill_every = match &raw.drill_every_ms {
            None => None,
            Some(ms) => Some(Duration::from_millis(self.ranged(
                Some(ms),
                &at("drill_every_ms"),
                0,
                DRILL_EVERY_MS,
            )?)),
        };
        let client_affinity = self.choice(
            raw.affinity.as_ref(),
            &at("affinity"),
            false,
            &[("flow", false), ("client", true)],
        )?;
        let l7 = self.choice(raw.l7.as_ref(), &at("l7"), L7::default(), &L7::CHOICES)?;
        let (always_candidate, never_candidate) = self.cohorts(&raw, index)?;
        let client_prefixes = PrefixLengths {
            v4: self.ranged(
                raw.client_prefix_v4.as_ref(),
                &at("client_prefix_v4"),
                DEFAULT_PREFIX_V4,
                1..=32,
            )?,
            v6: self.ranged(
                raw.client_prefix_v6.as_ref(),
                &at("client_prefix_v6"),
                DEFAULT_PREFIX_V6,
                1..=128,
            )?,
        };
        let defaults = DrainSettings::default();
        let drain = DrainSettings {
            established: self.choice(
                raw.established.as_ref(),
                &at("established"),
                defaults.established,
                &Established::ALL.map(|p| (p.name(), p)),
            )?,
            timeout: Duration::from_millis(self.ranged(
                raw.drain_timeout_ms.as_ref(),
                &at("drain_timeout_ms"),
                units::millis(defaults.timeout),
                1..=MAX_DRAIN_MS,
            )?),
            idle: Duration::from_millis(self.ranged(
                raw.drain_idle_ms.as_ref(),
                &at("drain_idle_ms"),
                units::millis(defaults.idle),
                1..=MAX_DRAIN_IDLE_MS,
            )?),
            retire_window: Duration::from_millis(self.ranged(
                raw.retire_drain_window_ms.as_ref(),
                &at("retire_drain_window_ms"),
                units::millis(defaults.retire_window),
                0..=MAX_DRAIN_MS,
            )?),
            max_age: match raw.max_connection_age_ms.as_ref() {
                None => None,
                Some(_) => Some(Duration::from_millis(self.ranged(
                    raw.max_connection_age_ms.as_ref(),
                    &at("max_connection_age_ms"),
                    MIN_CONNECTION_AGE_MS,
                    MIN_CONNECTION_AGE_MS..=MAX_DRAIN_MS,
                )?)),
            },
        };
        let spec = ServiceSpec {
            name,
            listen,
            protocol,
            live,
            blue: pools.blue,
            green: pools.green,
            green_share_bp,
            health,
            rollout,
            rollback_window,
            client_affinity,
            l7,
            always_candidate,
            never_candidate,
            drill_every,
            group,
            last_resort: pools.last_resort,
            client_prefixes,
            drain,
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
        let group = raw.group.as_ref().map(|g| GroupSpans {
            group: g.span(),
            rollout: raw.rollout.as_ref().map(Spanned::span),
            drill_every: raw.drill_every_ms.as_ref().map(Spanned::span),
        });
        Ok(Placed {
            spec,
            listen: raw.listen.span(),
            group,
        })
    }

    /// Blue, green and the last-resort pool: each backend once, in the service's address
    /// family, and a live pool with weight.
    fn pools(
        &self,
        raw: &RawService,
        index: usize,
        listen: SocketAddr,
        protocol: Protocol,
        live: Version,
        backends: &mut HashSet<(SocketAddr, Protocol)>,
    ) -> Result<Pools, ConfigError> {
        let at = |field: &str| format!("service[{index}].{field}");
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
        let (live_pool, raw_live) = match live {
            Version::Blue => (&blue, &raw.blue),
            Version::Green => (&green, &raw.green),
        };
        if live_pool.iter().all(|b| b.weight == 0) {
            let span = raw_live.as_ref().map_or(raw.name.span(), Spanned::span);
            return Err(self.invalid(
                span,
                at(live.name()),
                format!(
                    "the live pool ({}) needs at least one backend with a weight",
                    live.name()
                ),
            ));
        }
        Ok(Pools {
            blue,
            green,
            last_resort,
        })
    }

    /// One pool's entries: `address:port [weight=N]`.
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
        let mut pool = Vec::with_capacity(raw.get_ref().len());
        for (i, entry) in raw.get_ref().iter().enumerate() {
            let field = format!("{field}[{i}]");
            let invalid = |problem: String| self.invalid(entry.span(), &field, problem);
            let mut words = entry.get_ref().split_whitespace();
            let addr_text = Spanned::new(entry.span(), words.next().unwrap_or_default().to_owned());
            let addr = self.socket_addr(&addr_text, &field)?;
            let weight = match words.next() {
                None => 1,
                Some(w) => w
                    .strip_prefix("weight=")
                    .and_then(|n| n.parse::<u32>().ok())
                    .filter(|n| *n <= MAX_WEIGHT)
                    .ok_or_else(|| {
                        invalid(format!(
                            "`{w}` is not `weight=N` with N from 0 to {MAX_WEIGHT}"
                        ))
                    })?,
            };
            if let Some(extra) = words.next() {
                return Err(invalid(format!(
                    "unexpected `{extra}`: expected `address:port [weight=N]`"
                )));
            }
            if !seen.insert((addr, protocol)) {
                return Err(invalid(format!(
                    "backend {addr} is listed twice; a backend serves one pool of one service"
                )));
            }
            pool.push(WeightedBackend { addr, weight });
        }
        Ok(pool)
    }

    /// The `[service.health]` table; a TCP service is probed with the defaults without one,
    /// and a UDP service is not probed.
    fn health_check(
        &self,
        raw: Option<&Spanned<RawHealth>>,
        index: usize,
        protocol: Protocol,
    ) -> Result<Option<HealthCheck>, ConfigError> {
        // Probes are TCP connects or HTTP GETs: a UDP service's backends are not probed.
        match (raw, protocol) {
            (Some(health), Protocol::Udp) => Err(self.invalid(
                health.span(),
                format!("service[{index}].health"),
                "health checks probe over TCP; a UDP service's backends are not probed",
            )),
            (Some(health), Protocol::Tcp) => Ok(Some(self.health(health.get_ref(), index)?)),
            (None, Protocol::Tcp) => Ok(Some(HealthCheck::default())),
            (None, Protocol::Udp) => Ok(None),
        }
    }

    fn health(&self, raw: &RawHealth, index: usize) -> Result<HealthCheck, ConfigError> {
        let at = |field: &str| format!("service[{index}].health.{field}");
        let defaults = HealthCheck::default();
        let millis = units::millis;
        let interval = self.ranged(
            raw.interval_ms.as_ref(),
            &at("interval_ms"),
            millis(defaults.interval),
            100..=60_000,
        )?;
        let timeout = self.ranged(
            raw.timeout_ms.as_ref(),
            &at("timeout_ms"),
            millis(defaults.timeout).min(interval / 2),
            10..=interval,
        )?;
        let unhealthy_after = self.ranged(
            raw.unhealthy_after.as_ref(),
            &at("unhealthy_after"),
            defaults.unhealthy_after,
            1..=10,
        )?;
        let healthy_after = self.ranged(
            raw.healthy_after.as_ref(),
            &at("healthy_after"),
            defaults.healthy_after,
            1..=10,
        )?;
        let http = match (&raw.http_path, &raw.http_status) {
            (None, None) => None,
            (None, Some(status)) => {
                return Err(self.invalid(status.span(), at("http_status"), "needs `http_path`"));
            }
            (Some(path), status) => {
                let text = path.get_ref();
                // What the probe's request line can carry as it is: no fragment, no bytes the
                // HTTP library would refuse (`<`, `>`, quotes, ...).
                if !text.starts_with('/')
                    || text.len() > 1_024
                    || text.contains('#')
                    || hyper::http::uri::PathAndQuery::try_from(text.as_str()).is_err()
                {
                    return Err(self.invalid(
                        path.span(),
                        at("http_path"),
                        "expected a path starting with `/` that an HTTP request line can carry \
                         (printable ASCII, no spaces, `#`, `<`, `>` or quotes; percent-encode them)",
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

    /// The `[service.rollout]` table: validated now, kept as given so that `rollout start`
    /// can override it field by field.
    fn rollout(
        &self,
        raw: Option<&Spanned<PlanRequest>>,
        index: usize,
    ) -> Result<PlanRequest, ConfigError> {
        let Some(plan) = raw else {
            return Ok(PlanRequest::default());
        };
        plan.get_ref().clone().into_plan().map_err(|problem| {
            self.invalid(plan.span(), format!("service[{index}].rollout"), problem)
        })?;
        Ok(plan.get_ref().clone())
    }

    /// `always_candidate` and `never_candidate`: client prefixes, none in both lists.
    fn cohorts(
        &self,
        raw: &RawService,
        index: usize,
    ) -> Result<(Vec<Cidr>, Vec<Cidr>), ConfigError> {
        let at = |field: &str| format!("service[{index}].{field}");
        let cidrs = |list: &Option<Vec<Spanned<String>>>, field: &str| {
            list.iter()
                .flatten()
                .map(|c| {
                    Cidr::parse(c.get_ref())
                        .map_err(|problem| self.invalid(c.span(), at(field), problem))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let always = cidrs(&raw.always_candidate, "always_candidate")?;
        let never = cidrs(&raw.never_candidate, "never_candidate")?;
        if let Some(both) = always.iter().find(|c| never.contains(c))
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
        Ok((always, never))
    }
}

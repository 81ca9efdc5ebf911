//! PromQL gates: model-level signals that only the application knows (the rate of
//! low-confidence predictions, say), read from a Prometheus server at every analysis interval
//! and judged beside the kernel's gates.
//!
//! A gate's query must come back as one number. No data (an empty vector, NaN), an error
//! answer or an unreachable server is inconclusive: the rollout holds, and never promotes on
//! it. Queries may use `$service`, `$candidate`, `$live` (version names) and `$interval` (the
//! analysis interval, e.g. `10s`, for range vectors).
//!
//! Prometheus is reached over `http://` or `https://` (`host:port[/prefix]`), with a CA file for
//! a private certificate authority, and basic auth or a bearer token read from files (as
//! Prometheus's own `--web.config.file` sets them up); one query per gate and interval, bounded
//! in size and time (`io::prometheus`).

use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// Longest query accepted.
const MAX_QUERY: usize = 4 * 1024;
/// Longest gate name accepted.
const MAX_NAME: usize = 64;

/// What is wrong with a PromQL gate or with where Prometheus answers.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PromqlError {
    #[error("PromQL gate name `{0}` must be 1 to {MAX_NAME} letters, digits, `_` or `-`")]
    Name(String),
    #[error("PromQL gate `{0}`: the query must be 1 to {MAX_QUERY} bytes")]
    Query(String),
    #[error("PromQL gate `{0}` needs `max`, `min` or both")]
    NoBound(String),
    #[error("PromQL gate `{0}`: `max` and `min` must be finite numbers")]
    NotFinite(String),
    #[error("PromQL gate `{name}`: min {min} is above max {max}")]
    MinAboveMax { name: String, min: f64, max: f64 },
    #[error("`{0}`: a PromQL gate is NAME:QUERY<=MAX or NAME:QUERY>=MIN")]
    Form(String),
    #[error(
        "`{text}`: a PromQL gate is NAME:QUERY<=MAX or NAME:QUERY>=MIN: `{bound}` is not a number"
    )]
    Bound { text: String, bound: String },
    #[error("prometheus_url `{url}`: {why}")]
    Url { url: String, why: &'static str },
    #[error("`{key}`: `{path}` is not an absolute path")]
    RelativePath { key: &'static str, path: String },
    #[error("`prometheus_ca_file` needs an https:// `prometheus_url`")]
    CaWithoutTls,
    #[error("`prometheus_user` and `prometheus_password_file` go together")]
    HalfBasicAuth,
    #[error("basic auth and a bearer token are two ways to log in: set one of them")]
    TwoCredentials,
    #[error("credentials over http:// would cross the network in clear; use https://")]
    ClearCredentials,
}

/// One PromQL gate: the query's value must stay within `min..=max` (either may be left out).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PromqlGate {
    pub name: String,
    pub query: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
}

/// What a query's placeholders stand for in one evaluation.
#[derive(Clone, Copy, Debug)]
pub struct Vars<'a> {
    pub service: &'a str,
    pub candidate: &'a str,
    pub live: &'a str,
    pub interval: Duration,
}

/// What a query gave.
#[derive(Clone, Debug, PartialEq)]
pub enum Reading {
    Value(f64),
    NoData,
    Failed(String),
}

impl Reading {
    /// The label of `splitter_promql_queries_total`.
    #[must_use]
    pub const fn result(&self) -> &'static str {
        match self {
            Self::Value(_) => "value",
            Self::NoData => "no_data",
            Self::Failed(_) => "error",
        }
    }
}

impl fmt::Display for Reading {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Value(v) => write!(f, "{v}"),
            Self::NoData => f.write_str("no data"),
            Self::Failed(why) => write!(f, "error: {why}"),
        }
    }
}

impl PromqlGate {
    /// What is wrong with the gate, if anything.
    pub fn validate(&self) -> Result<(), PromqlError> {
        if self.name.is_empty()
            || self.name.len() > MAX_NAME
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(PromqlError::Name(self.name.clone()));
        }
        if self.query.trim().is_empty() || self.query.len() > MAX_QUERY {
            return Err(PromqlError::Query(self.name.clone()));
        }
        if self.max.is_none() && self.min.is_none() {
            return Err(PromqlError::NoBound(self.name.clone()));
        }
        if self.max.is_some_and(|v| !v.is_finite()) || self.min.is_some_and(|v| !v.is_finite()) {
            return Err(PromqlError::NotFinite(self.name.clone()));
        }
        if let (Some(min), Some(max)) = (self.min, self.max)
            && min > max
        {
            return Err(PromqlError::MinAboveMax {
                name: self.name.clone(),
                min,
                max,
            });
        }
        Ok(())
    }

    /// The command-line form: `NAME:QUERY<=MAX` or `NAME:QUERY>=MIN` (the comparison is the
    /// last `<=` or `>=` in the text).
    pub fn parse(text: &str) -> Result<Self, PromqlError> {
        let form = || PromqlError::Form(text.to_owned());
        let (name, rest) = text.split_once(':').ok_or_else(form)?;
        let at = match (rest.rfind("<="), rest.rfind(">=")) {
            (Some(a), Some(b)) => a.max(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => return Err(form()),
        };
        let (query, bound) = (&rest[..at], rest[at + 2..].trim());
        let bound: f64 = bound.parse().map_err(|_| PromqlError::Bound {
            text: text.to_owned(),
            bound: bound.to_owned(),
        })?;
        let upper = rest[at..].starts_with("<=");
        let gate = Self {
            name: name.trim().to_owned(),
            query: query.trim().to_owned(),
            max: upper.then_some(bound),
            min: (!upper).then_some(bound),
        };
        gate.validate()?;
        Ok(gate)
    }

    /// The query with its placeholders replaced.
    #[must_use]
    pub fn render(&self, vars: &Vars<'_>) -> String {
        let interval = format!("{}ms", vars.interval.as_millis().max(1));
        self.query
            .replace("$service", vars.service)
            .replace("$candidate", vars.candidate)
            .replace("$live", vars.live)
            .replace("$interval", &interval)
    }

    /// What the gate allows, as an operator reads it.
    #[must_use]
    pub fn limit(&self) -> String {
        match (self.min, self.max) {
            (Some(min), Some(max)) => format!("{min} … {max}"),
            (Some(min), None) => format!("≥ {min}"),
            (None, Some(max)) => format!("≤ {max}"),
            (None, None) => "-".to_owned(),
        }
    }

    /// Why `value` breaks the gate, if it does.
    #[must_use]
    pub fn breach(&self, value: f64) -> Option<String> {
        match (self.min, self.max) {
            (_, Some(max)) if value > max => Some(format!("{} {value} > {max}", self.name)),
            (Some(min), _) if value < min => Some(format!("{} {value} < {min}", self.name)),
            _ => None,
        }
    }
}

/// How the daemon logs in to Prometheus; secrets stay in files, read at each query, so they
/// can be rotated without a restart and never sit in the config or the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrometheusAuth {
    None,
    Basic {
        user: String,
        password_file: PathBuf,
    },
    Bearer {
        token_file: PathBuf,
    },
}

/// A Prometheus server and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prometheus {
    pub url: PrometheusUrl,
    /// The certificate authorities to trust for an `https://` URL (PEM); the system's when
    /// left out.
    pub ca_file: Option<PathBuf>,
    pub auth: PrometheusAuth,
}

/// The `prometheus_*` keys of a plan, as given.
#[derive(Clone, Copy, Debug, Default)]
pub struct PrometheusKeys<'a> {
    pub url: &'a str,
    pub ca_file: Option<&'a str>,
    pub user: Option<&'a str>,
    pub password_file: Option<&'a str>,
    pub token_file: Option<&'a str>,
}

impl Prometheus {
    pub fn new(keys: PrometheusKeys<'_>) -> Result<Self, PromqlError> {
        let url = PrometheusUrl::parse(keys.url)?;
        let absolute = |key: &'static str, path: Option<&str>| {
            path.map(|p| {
                if Path::new(p).is_absolute() {
                    Ok(PathBuf::from(p))
                } else {
                    Err(PromqlError::RelativePath {
                        key,
                        path: p.to_owned(),
                    })
                }
            })
            .transpose()
        };
        let ca_file = absolute("prometheus_ca_file", keys.ca_file)?;
        if ca_file.is_some() && !url.tls() {
            return Err(PromqlError::CaWithoutTls);
        }
        let password_file = absolute("prometheus_password_file", keys.password_file)?;
        let token_file = absolute("prometheus_token_file", keys.token_file)?;
        let auth = match (keys.user, password_file, token_file) {
            (None, None, None) => PrometheusAuth::None,
            (Some(user), Some(password_file), None) => PrometheusAuth::Basic {
                user: user.to_owned(),
                password_file,
            },
            (None, None, Some(token_file)) => PrometheusAuth::Bearer { token_file },
            (_, _, Some(_)) => return Err(PromqlError::TwoCredentials),
            _ => return Err(PromqlError::HalfBasicAuth),
        };
        if auth != PrometheusAuth::None && !url.tls() {
            return Err(PromqlError::ClearCredentials);
        }
        Ok(Self { url, ca_file, auth })
    }
}

/// Where Prometheus answers: `http[s]://host:port[/prefix]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrometheusUrl {
    tls: bool,
    host: String,
    port: u16,
    /// The path prefix, without a trailing slash (`""` or `/prometheus`, say).
    prefix: String,
}

impl PrometheusUrl {
    pub fn parse(text: &str) -> Result<Self, PromqlError> {
        let bad = |why| PromqlError::Url {
            url: text.to_owned(),
            why,
        };
        let (tls, rest) = if let Some(rest) = text.strip_prefix("http://") {
            (false, rest)
        } else if let Some(rest) = text.strip_prefix("https://") {
            (true, rest)
        } else {
            return Err(bad("the URL must start with http:// or https://"));
        };
        let (authority, path) = rest.find('/').map_or((rest, ""), |at| rest.split_at(at));
        if path.contains(['?', '#']) {
            return Err(bad("a query string or fragment is not allowed"));
        }
        if !path.is_empty() && hyper::http::uri::PathAndQuery::try_from(path).is_err() {
            return Err(bad(
                "the path has bytes a request line cannot carry (percent-encode them)",
            ));
        }
        if authority.contains('@') {
            return Err(bad(
                "credentials go in prometheus_user and prometheus_password_file, not the URL",
            ));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => (
                host,
                port.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| bad("the port must be a number from 1 to 65535"))?,
            ),
            _ => (authority, if tls { 443 } else { 9090 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'))
        {
            return Err(bad("the host must be a name or an address"));
        }
        Ok(Self {
            tls,
            host: host.to_owned(),
            port,
            prefix: path.trim_end_matches('/').to_owned(),
        })
    }

    /// Whether the URL is `https://`.
    #[must_use]
    pub const fn tls(&self) -> bool {
        self.tls
    }

    #[must_use]
    pub fn host(&self) -> &str {
        &self.host
    }

    #[must_use]
    pub const fn port(&self) -> u16 {
        self.port
    }

    /// The path prefix, without a trailing slash.
    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `host:port`, with brackets around an IPv6 address.
    #[must_use]
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for PrometheusUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority(), self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(max: Option<f64>, min: Option<f64>) -> PromqlGate {
        PromqlGate {
            name: "low_confidence".to_owned(),
            query: "x".to_owned(),
            max,
            min,
        }
    }

    #[test]
    fn the_command_line_form_is_parsed_and_validated() {
        let g = PromqlGate::parse(r#"lowconf:sum(rate(x{v="$candidate"}[1m])) <= 0.05"#)
            .expect("valid");
        assert_eq!(g.name, "lowconf");
        assert_eq!(g.query, r#"sum(rate(x{v="$candidate"}[1m]))"#);
        assert_eq!((g.max, g.min), (Some(0.05), None));
        let g = PromqlGate::parse("accuracy: avg(a) >= 0.9").expect("valid");
        assert_eq!((g.max, g.min), (None, Some(0.9)));
        for bad in [
            "no-colon <= 1",
            "name:query",
            "name:query <= lots",
            ":query <= 1",
            "bad name:query <= 1",
            "name: <= 1",
            "name:q <= inf",
        ] {
            assert!(PromqlGate::parse(bad).is_err(), "{bad}");
        }
        assert!(
            gate(Some(1.0), Some(2.0)).validate().is_err(),
            "min above max"
        );
        assert!(gate(None, None).validate().is_err());
    }

    #[test]
    fn placeholders_are_replaced() {
        let g = PromqlGate {
            query: r#"rate(x{service="$service",version="$candidate"}[$interval]) / rate(x{version="$live"}[$interval])"#.to_owned(),
            ..gate(Some(1.0), None)
        };
        let vars = Vars {
            service: "sentiment",
            candidate: "green",
            live: "blue",
            interval: Duration::from_secs(10),
        };
        assert_eq!(
            g.render(&vars),
            r#"rate(x{service="sentiment",version="green"}[10000ms]) / rate(x{version="blue"}[10000ms])"#
        );
    }

    #[test]
    fn urls_and_queries_are_written_as_prometheus_reads_them() {
        let url = PrometheusUrl::parse("http://127.0.0.1:9091/prom/").expect("valid");
        assert_eq!(url.to_string(), "http://127.0.0.1:9091/prom");
        assert_eq!(
            PrometheusUrl::parse("http://prometheus.local")
                .expect("valid")
                .to_string(),
            "http://prometheus.local:9090"
        );
        assert_eq!(
            PrometheusUrl::parse("http://[::1]:9090")
                .expect("valid")
                .to_string(),
            "http://[::1]:9090"
        );
        assert_eq!(
            PrometheusUrl::parse("https://prometheus.local")
                .expect("valid")
                .to_string(),
            "https://prometheus.local:443"
        );
        assert!(PrometheusUrl::parse("https://p:9090").expect("valid").tls());
        let keys = |url, ca, user, password, token| PrometheusKeys {
            url,
            ca_file: ca,
            user,
            password_file: password,
            token_file: token,
        };
        let basic = Prometheus::new(keys(
            "https://p:9090",
            Some("/etc/ca.pem"),
            Some("splitter"),
            Some("/etc/pw"),
            None,
        ))
        .expect("valid");
        assert_eq!(
            basic.auth,
            PrometheusAuth::Basic {
                user: "splitter".to_owned(),
                password_file: PathBuf::from("/etc/pw")
            }
        );
        for (bad, expected) in [
            (
                keys("http://p", Some("/etc/ca.pem"), None, None, None),
                PromqlError::CaWithoutTls,
            ),
            (
                keys("https://p", None, Some("u"), None, None),
                PromqlError::HalfBasicAuth,
            ),
            (
                keys("https://p", None, None, Some("/pw"), None),
                PromqlError::HalfBasicAuth,
            ),
            (
                keys("https://p", None, Some("u"), Some("/pw"), Some("/t")),
                PromqlError::TwoCredentials,
            ),
            (
                keys("http://p", None, Some("u"), Some("/pw"), None),
                PromqlError::ClearCredentials,
            ),
            (
                keys("http://p", None, None, None, Some("/t")),
                PromqlError::ClearCredentials,
            ),
            (
                keys("https://p", None, None, None, Some("token")),
                PromqlError::RelativePath {
                    key: "prometheus_token_file",
                    path: "token".to_owned(),
                },
            ),
        ] {
            assert_eq!(Prometheus::new(bad), Err(expected));
        }
        for bad in [
            "ftp://p:9090",
            "https://user:secret@p:9090",
            "p:9090",
            "http://:9090",
            "http://p:0",
            "http://p:99999",
            "http://p:9090/?x=1",
            "http://p:9090/pro<m>",
            "http://p q:9090",
        ] {
            assert!(PrometheusUrl::parse(bad).is_err(), "{bad}");
        }
    }
}

//! PromQL gates: model-level signals that only the application knows (the rate of
//! low-confidence predictions, say), read from a Prometheus server at every analysis interval
//! and judged beside the kernel's gates.
//!
//! A gate's query must come back as one number. No data (an empty vector, NaN), an error
//! answer or an unreachable server is inconclusive: the rollout holds, and never promotes on
//! it. Queries may use `$service`, `$candidate`, `$live` (version names) and `$interval` (the
//! analysis interval, e.g. `10s`, for range vectors).
//!
//! Plain HTTP only (`http://host:port[/prefix]`), as Prometheus serves on the host or its
//! network; one request per connection, bounded in size and time.

use std::{fmt, time::Duration};

use serde::{Deserialize, Serialize};

/// Longest query accepted.
const MAX_QUERY: usize = 4 * 1024;
/// Longest gate name accepted.
const MAX_NAME: usize = 64;

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
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty()
            || self.name.len() > MAX_NAME
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(format!(
                "PromQL gate name `{}` must be 1 to {MAX_NAME} letters, digits, `_` or `-`",
                self.name
            ));
        }
        if self.query.trim().is_empty() || self.query.len() > MAX_QUERY {
            return Err(format!(
                "PromQL gate `{}`: the query must be 1 to {MAX_QUERY} bytes",
                self.name
            ));
        }
        if self.max.is_none() && self.min.is_none() {
            return Err(format!(
                "PromQL gate `{}` needs `max`, `min` or both",
                self.name
            ));
        }
        if self.max.is_some_and(|v| !v.is_finite()) || self.min.is_some_and(|v| !v.is_finite()) {
            return Err(format!(
                "PromQL gate `{}`: `max` and `min` must be finite numbers",
                self.name
            ));
        }
        if let (Some(min), Some(max)) = (self.min, self.max)
            && min > max
        {
            return Err(format!(
                "PromQL gate `{}`: min {min} is above max {max}",
                self.name
            ));
        }
        Ok(())
    }

    /// The command-line form: `NAME:QUERY<=MAX` or `NAME:QUERY>=MIN` (the comparison is the
    /// last `<=` or `>=` in the text).
    pub fn parse(text: &str) -> Result<Self, String> {
        let usage = || format!("`{text}`: a PromQL gate is NAME:QUERY<=MAX or NAME:QUERY>=MIN");
        let (name, rest) = text.split_once(':').ok_or_else(usage)?;
        let at = match (rest.rfind("<="), rest.rfind(">=")) {
            (Some(a), Some(b)) => a.max(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => return Err(usage()),
        };
        let (query, bound) = (&rest[..at], &rest[at + 2..]);
        let bound: f64 = bound
            .trim()
            .parse()
            .map_err(|_| format!("{}: `{}` is not a number", usage(), bound.trim()))?;
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

/// Where Prometheus answers: `http://host:port[/prefix]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrometheusUrl {
    host: String,
    port: u16,
    /// The path prefix, without a trailing slash (`""` or `/prometheus`, say).
    prefix: String,
}

impl PrometheusUrl {
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("prometheus_url `{text}`: {why}");
        let rest = text
            .strip_prefix("http://")
            .ok_or_else(|| bad("only http:// URLs are supported"))?;
        let (authority, path) = rest.find('/').map_or((rest, ""), |at| rest.split_at(at));
        if path.contains(['?', '#']) {
            return Err(bad("a query string or fragment is not allowed"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => (
                host,
                port.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| bad("the port must be a number from 1 to 65535"))?,
            ),
            _ => (authority, 9090),
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
            host: host.to_owned(),
            port,
            prefix: path.trim_end_matches('/').to_owned(),
        })
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
        write!(f, "http://{}{}", self.authority(), self.prefix)
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
        for bad in [
            "https://p:9090",
            "p:9090",
            "http://:9090",
            "http://p:0",
            "http://p:99999",
            "http://p:9090/?x=1",
            "http://p q:9090",
        ] {
            assert!(PrometheusUrl::parse(bad).is_err(), "{bad}");
        }
    }
}

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
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::rollout::Judgement;

/// How long one query may take, from connect to the last byte of the answer.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest answer read from Prometheus.
const MAX_ANSWER: usize = 256 * 1024;
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
    fn breach(&self, value: f64) -> Option<String> {
        match (self.min, self.max) {
            (_, Some(max)) if value > max => Some(format!("{} {value} > {max}", self.name)),
            (Some(min), _) if value < min => Some(format!("{} {value} < {min}", self.name)),
            _ => None,
        }
    }
}

/// Judges the readings of `gates` (in the same order): any breach fails; otherwise a gate
/// without a value is inconclusive.
#[must_use]
pub fn judge(gates: &[PromqlGate], readings: &[Reading]) -> Judgement {
    let mut failures = Vec::new();
    let mut missing = Vec::new();
    for (gate, reading) in gates.iter().zip(readings) {
        match reading {
            Reading::Value(v) => failures.extend(gate.breach(*v)),
            other => missing.push(format!("PromQL gate {}: {other}", gate.name)),
        }
    }
    if readings.len() < gates.len() {
        missing.push("PromQL gates not read".to_owned());
    }
    if !failures.is_empty() {
        Judgement::Fail(failures)
    } else if !missing.is_empty() {
        Judgement::Inconclusive(missing.join("; "))
    } else {
        Judgement::Pass
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

    fn authority(&self) -> String {
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

/// Percent-encodes everything but the unreserved characters of RFC 3986.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Runs an instant query; never takes longer than `QUERY_TIMEOUT`.
pub async fn query(url: &PrometheusUrl, query: &str) -> Reading {
    match tokio::time::timeout(QUERY_TIMEOUT, fetch(url, query)).await {
        Ok(Ok(answer)) => parse_answer(&answer),
        Ok(Err(error)) => Reading::Failed(format!("{url}: {error}")),
        Err(_) => Reading::Failed(format!(
            "{url}: no answer within {} s",
            QUERY_TIMEOUT.as_secs()
        )),
    }
}

/// The raw HTTP answer to `GET /api/v1/query` (HTTP/1.0, so the body is never chunked).
async fn fetch(url: &PrometheusUrl, query: &str) -> std::io::Result<Vec<u8>> {
    let mut stream = tokio::net::TcpStream::connect((url.host.as_str(), url.port)).await?;
    let request = format!(
        "GET {}/api/v1/query?query={} HTTP/1.0\r\nHost: {}\r\nAccept: application/json\r\n\r\n",
        url.prefix,
        encode(query),
        url.authority()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    (&mut stream)
        .take(MAX_ANSWER as u64 + 1)
        .read_to_end(&mut answer)
        .await?;
    if answer.len() > MAX_ANSWER {
        return Err(std::io::Error::other(format!(
            "the answer is longer than {MAX_ANSWER} bytes"
        )));
    }
    Ok(answer)
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    data: Option<Data>,
}

#[derive(Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum Data {
    Vector(Vec<Sample>),
    Scalar((f64, String)),
    // Read only to be told apart from numbers.
    Matrix(serde::de::IgnoredAny),
    String(serde::de::IgnoredAny),
}

#[derive(Deserialize)]
struct Sample {
    value: (f64, String),
}

/// The number in an HTTP answer to an instant query.
#[must_use]
pub fn parse_answer(answer: &[u8]) -> Reading {
    let failed = |why: String| Reading::Failed(why);
    let Some(head_end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return failed("not an HTTP answer".to_owned());
    };
    let head = String::from_utf8_lossy(&answer[..head_end]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok());
    let body = &answer[head_end + 4..];
    let parsed: Result<Answer, _> = serde_json::from_slice(body);
    let answer = match (status, parsed) {
        (_, Ok(answer)) if answer.status != "success" => {
            return failed(format!(
                "Prometheus refused the query: {}",
                answer.error.as_deref().unwrap_or("no reason given")
            ));
        }
        (Some(200), Ok(answer)) => answer,
        (status, _) => {
            return failed(format!(
                "HTTP status {} without a Prometheus answer",
                status.map_or_else(|| "?".to_owned(), |s| s.to_string())
            ));
        }
    };
    let text = match answer.data {
        Some(Data::Scalar((_, text))) => text,
        Some(Data::Vector(samples)) => match samples.as_slice() {
            [] => return Reading::NoData,
            [one] => one.value.1.clone(),
            many => {
                return failed(format!(
                    "{} series; a gate needs one number (aggregate with sum(), say)",
                    many.len()
                ));
            }
        },
        Some(Data::Matrix(_) | Data::String(_)) | None => {
            return failed("the result is not a number (a range vector or a string)".to_owned());
        }
    };
    match text.parse::<f64>() {
        Ok(v) if v.is_nan() => Reading::NoData,
        Ok(v) => Reading::Value(v),
        Err(_) => failed(format!("`{text}` is not a number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(status: &str, body: &str) -> Vec<u8> {
        format!("HTTP/1.0 {status}\r\nContent-Type: application/json\r\n\r\n{body}").into_bytes()
    }

    fn gate(max: Option<f64>, min: Option<f64>) -> PromqlGate {
        PromqlGate {
            name: "low_confidence".to_owned(),
            query: "x".to_owned(),
            max,
            min,
        }
    }

    #[test]
    fn answers_are_read_as_one_number_or_no_data() {
        let vector = |result: &str| {
            http(
                "200 OK",
                &format!(
                    r#"{{"status":"success","data":{{"resultType":"vector","result":{result}}}}}"#
                ),
            )
        };
        assert_eq!(
            parse_answer(&vector(r#"[{"metric":{},"value":[1.5,"0.25"]}]"#)),
            Reading::Value(0.25)
        );
        assert_eq!(parse_answer(&vector("[]")), Reading::NoData);
        assert_eq!(
            parse_answer(&vector(r#"[{"metric":{},"value":[1.5,"NaN"]}]"#)),
            Reading::NoData,
            "0/0 rates are no data"
        );
        assert_eq!(
            parse_answer(&vector(r#"[{"metric":{},"value":[1.5,"+Inf"]}]"#)),
            Reading::Value(f64::INFINITY)
        );
        let Reading::Failed(why) = parse_answer(&vector(
            r#"[{"metric":{"a":"1"},"value":[1,"1"]},{"metric":{"a":"2"},"value":[1,"2"]}]"#,
        )) else {
            panic!("two series must fail")
        };
        assert!(why.contains("2 series"), "{why}");
        assert_eq!(
            parse_answer(&http(
                "200 OK",
                r#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"3"]}}"#
            )),
            Reading::Value(3.0)
        );
        let Reading::Failed(why) = parse_answer(&http(
            "400 Bad Request",
            r#"{"status":"error","errorType":"bad_data","error":"parse error at char 4"}"#,
        )) else {
            panic!("an error answer must fail")
        };
        assert!(why.contains("parse error at char 4"), "{why}");
        assert!(matches!(
            parse_answer(&http("502 Bad Gateway", "<html>")),
            Reading::Failed(_)
        ));
        assert!(matches!(parse_answer(b"garbage"), Reading::Failed(_)));
        assert!(matches!(
            parse_answer(&http(
                "200 OK",
                r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#
            )),
            Reading::Failed(_)
        ));
    }

    #[test]
    fn gates_fail_on_a_breach_and_hold_without_a_value() {
        let gates = [gate(Some(0.05), None), gate(None, Some(0.9))];
        assert_eq!(
            judge(&gates, &[Reading::Value(0.05), Reading::Value(0.9)]),
            Judgement::Pass,
            "the bounds are inclusive"
        );
        assert_eq!(
            judge(&gates, &[Reading::Value(0.06), Reading::NoData]),
            Judgement::Fail(vec!["low_confidence 0.06 > 0.05".to_owned()]),
            "a breach fails even when another gate has no data"
        );
        assert_eq!(
            judge(&gates, &[Reading::Value(0.0), Reading::Value(0.5)]),
            Judgement::Fail(vec!["low_confidence 0.5 < 0.9".to_owned()])
        );
        assert!(matches!(
            judge(&gates, &[Reading::Value(0.0), Reading::NoData]),
            Judgement::Inconclusive(why) if why.contains("no data")
        ));
        assert!(matches!(
            judge(&gates, &[Reading::Value(0.0), Reading::Failed("refused".to_owned())]),
            Judgement::Inconclusive(why) if why.contains("refused")
        ));
        assert!(matches!(
            judge(&gates, &[Reading::Value(0.0)]),
            Judgement::Inconclusive(_)
        ));
        assert_eq!(judge(&[], &[]), Judgement::Pass);
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
        assert_eq!(
            encode(r#"sum(x{a="b c"}) / 2"#),
            "sum%28x%7Ba%3D%22b%20c%22%7D%29%20%2F%202"
        );
    }
}

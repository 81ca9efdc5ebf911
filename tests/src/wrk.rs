//! wrk (Debian's package, installed by `cargo xtask setup`) as the benchmarks' load generator:
//! a fixed-duration run from a test bed's client namespace, and its report parsed.

use std::time::Duration;

use crate::netns::Netns;

/// What one wrk run measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Report {
    pub requests: u64,
    pub requests_per_second: f64,
    pub p50: Duration,
    pub p99: Duration,
    /// Connect, read, write errors and timeouts, plus responses other than 2xx/3xx.
    pub errors: u64,
}

/// How the client uses its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connections {
    /// Every connection carries requests until the run ends.
    KeepAlive,
    /// One request per connection (`Connection: close`).
    Short,
}

/// The load of one run.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub threads: u32,
    pub connections: u32,
    pub duration: Duration,
    pub mode: Connections,
}

/// Runs wrk in `client` against `http://addr/`; the report, or what went wrong.
pub fn run(client: &Netns, addr: std::net::SocketAddr, load: &Load) -> Result<Report, String> {
    let mut cmd = client.exec("wrk");
    cmd.arg(format!("-t{}", load.threads))
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{}s", load.duration.as_secs().max(1)))
        .args(["--latency", "--timeout", "5s"]);
    if load.mode == Connections::Short {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(format!("http://{addr}/"));
    let out = cmd.output().map_err(|e| format!("cannot run wrk: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "wrk against {addr} failed ({}): {}{}",
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    parse(&text).map_err(|why| format!("wrk against {addr}: {why} in:\n{text}"))
}

/// A wrk duration: `250.00us`, `1.20ms`, `2.00s`, `1.00m`.
fn duration(text: &str) -> Option<Duration> {
    let at = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(at);
    let value: f64 = number.parse().ok()?;
    let seconds = match unit {
        "us" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3_600.0,
        _ => return None,
    };
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

/// Reads wrk's report (with `--latency`).
pub fn parse(text: &str) -> Result<Report, String> {
    let mut report = Report {
        requests: 0,
        requests_per_second: f64::NAN,
        p50: Duration::ZERO,
        p99: Duration::ZERO,
        errors: 0,
    };
    let (mut p50, mut p99, mut requests) = (None, None, None);
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", d] => p50 = duration(d),
            ["99%", d] => p99 = duration(d),
            [n, "requests", "in", ..] => requests = n.parse().ok(),
            ["Requests/sec:", n] => report.requests_per_second = n.parse().unwrap_or(f64::NAN),
            ["Socket", "errors:", rest @ ..] => {
                report.errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => {
                report.errors += n.parse::<u64>().unwrap_or(0);
            }
            _ => {}
        }
    }
    report.p50 = p50.ok_or("no 50% latency")?;
    report.p99 = p99.ok_or("no 99% latency")?;
    report.requests = requests.ok_or("no request count")?;
    if !report.requests_per_second.is_finite() {
        return Err("no Requests/sec".to_owned());
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "Running 5s test @ http://198.18.1.10:8080/
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   312.45us  120.11us   5.01ms   90.12%
    Req/Sec    40.12k     2.01k   44.00k    70.00%
  Latency Distribution
     50%  290.00us
     75%  340.00us
     90%  420.00us
     99%    1.20ms
  401234 requests in 5.00s, 40.12MB read
  Socket errors: connect 1, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 4
Requests/sec:  80246.80
Transfer/sec:      8.02MB
";

    #[test]
    fn a_report_is_read_with_its_units_and_errors() {
        let r = parse(REPORT).expect("parse");
        assert_eq!(r.requests, 401_234);
        assert!((r.requests_per_second - 80_246.8).abs() < 1e-6);
        assert_eq!(r.p50, Duration::from_micros(290));
        assert_eq!(r.p99, Duration::from_micros(1_200));
        assert_eq!(r.errors, 10);
        let clean = REPORT
            .lines()
            .filter(|l| !l.contains("errors") && !l.contains("Non-2xx"))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(parse(&clean).expect("parse").errors, 0);
    }

    #[test]
    fn an_incomplete_report_is_an_error() {
        let no_p99: String = REPORT
            .lines()
            .filter(|l| !l.trim().starts_with("99%"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(parse(&no_p99).expect_err("no p99").contains("99%"));
        assert!(parse("").is_err());
        assert_eq!(duration("2.00s"), Some(Duration::from_secs(2)));
        assert_eq!(duration("1.5m"), Some(Duration::from_secs(90)));
        assert_eq!(duration("12"), None);
        assert_eq!(duration("3.0x"), None);
    }
}

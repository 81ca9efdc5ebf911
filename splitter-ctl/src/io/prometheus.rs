//! PromQL queries: one instant query per gate and interval, bounded in size and time. What a
//! reading means for the rollout is `engine::gates`' to decide.

use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::model::promql::{PrometheusUrl, Reading};

/// How long one query may take, from connect to the last byte of the answer.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest answer read from Prometheus.
const MAX_ANSWER: usize = 256 * 1024;

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
    let mut stream = tokio::net::TcpStream::connect((url.host(), url.port())).await?;
    let request = format!(
        "GET {}/api/v1/query?query={} HTTP/1.0\r\nHost: {}\r\nAccept: application/json\r\n\r\n",
        url.prefix(),
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
    fn queries_are_percent_encoded() {
        assert_eq!(
            encode(r#"sum(x{a="b c"}) / 2"#),
            "sum%28x%7Ba%3D%22b%20c%22%7D%29%20%2F%202"
        );
    }
}

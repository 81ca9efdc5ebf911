//! PromQL queries: one instant query per gate and interval, bounded in size and time. What a
//! reading means for the rollout is `engine::gates`' to decide.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use bytes::Bytes;
use hyper::StatusCode;
use serde::Deserialize;

use crate::{
    io::http::{self, HttpError, Tls},
    model::{
        error::chain,
        promql::{Prometheus, PrometheusAuth, Reading},
    },
};

/// How long one query may take, from connect to the last byte of the answer.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest answer read from Prometheus.
const MAX_ANSWER: usize = 256 * 1024;

/// Why a query got no answer.
#[derive(Debug, thiserror::Error)]
enum QueryError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("cannot read `{0}`")]
    Secret(PathBuf, #[source] std::io::Error),
}

/// A Prometheus server's client: its TLS set up once (the CA file or the host's authorities
/// read when the rollout starts), its credentials read from their files at each query.
#[derive(Clone, Debug)]
pub struct Client {
    server: Prometheus,
    tls: Option<Tls>,
}

impl Client {
    pub fn new(server: &Prometheus) -> Result<Self, HttpError> {
        let tls = if server.url.tls() {
            Some(Tls::new(server.ca_file.as_deref())?)
        } else {
            None
        };
        Ok(Self {
            server: server.clone(),
            tls,
        })
    }

    /// Runs an instant query; never takes longer than `QUERY_TIMEOUT`.
    pub async fn query(&self, query: &str) -> Reading {
        let fetched = tokio::time::timeout(QUERY_TIMEOUT, self.fetch(query)).await;
        let url = &self.server.url;
        match fetched {
            Ok(Ok(answer)) => parse_answer(answer.status, &answer.body),
            Ok(Err(error)) => Reading::Failed(format!("{url}: {}", chain(&error))),
            Err(_) => Reading::Failed(format!(
                "{url}: no answer within {} s",
                QUERY_TIMEOUT.as_secs()
            )),
        }
    }

    /// The answer to `GET /api/v1/query`, with the credentials read from their files now (so a
    /// rotated secret is used at the next query).
    async fn fetch(&self, query: &str) -> Result<http::Answer, QueryError> {
        let url = &self.server.url;
        let secret = |path: &Path| {
            std::fs::read_to_string(path)
                .map(|text| text.trim().to_owned())
                .map_err(|error| QueryError::Secret(path.to_owned(), error))
        };
        let mut headers = vec![("accept", "application/json".to_owned())];
        match &self.server.auth {
            PrometheusAuth::None => {}
            PrometheusAuth::Basic {
                user,
                password_file,
            } => {
                let pair = format!("{user}:{}", secret(password_file)?);
                headers.push(("authorization", format!("Basic {}", BASE64.encode(pair))));
            }
            PrometheusAuth::Bearer { token_file } => {
                headers.push(("authorization", format!("Bearer {}", secret(token_file)?)));
            }
        }
        let request = http::request(
            hyper::Method::GET,
            &format!(
                "{}/api/v1/query?query={}",
                url.prefix(),
                http::encode(query)
            ),
            &url.authority(),
            &headers,
            Bytes::new(),
        )?;
        let stream = http::connect(url.host(), url.port(), self.tls.as_ref()).await?;
        Ok(http::exchange(stream, request, MAX_ANSWER).await?)
    }
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
pub fn parse_answer(status: StatusCode, body: &[u8]) -> Reading {
    let failed = |why: String| Reading::Failed(why);
    let parsed: Result<Answer, _> = serde_json::from_slice(body);
    let answer = match parsed {
        Ok(answer) if answer.status != "success" => {
            return failed(format!(
                "Prometheus refused the query: {}",
                answer.error.as_deref().unwrap_or("no reason given")
            ));
        }
        Ok(answer) if status == StatusCode::OK => answer,
        _ => {
            return failed(format!("HTTP status {status} without a Prometheus answer"));
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

    /// `parse_answer` on an answer with this status line's code and this body.
    fn read(status: &str, body: &str) -> Reading {
        let code = status
            .split_whitespace()
            .next()
            .and_then(|c| c.parse::<u16>().ok())
            .and_then(|c| StatusCode::from_u16(c).ok())
            .expect("status");
        parse_answer(code, body.as_bytes())
    }

    #[test]
    fn answers_are_read_as_one_number_or_no_data() {
        let vector = |result: &str| {
            read(
                "200 OK",
                &format!(
                    r#"{{"status":"success","data":{{"resultType":"vector","result":{result}}}}}"#
                ),
            )
        };
        assert_eq!(
            vector(r#"[{"metric":{},"value":[1.5,"0.25"]}]"#),
            Reading::Value(0.25)
        );
        assert_eq!(vector("[]"), Reading::NoData);
        assert_eq!(
            vector(r#"[{"metric":{},"value":[1.5,"NaN"]}]"#),
            Reading::NoData,
            "0/0 rates are no data"
        );
        assert_eq!(
            vector(r#"[{"metric":{},"value":[1.5,"+Inf"]}]"#),
            Reading::Value(f64::INFINITY)
        );
        let Reading::Failed(why) = vector(
            r#"[{"metric":{"a":"1"},"value":[1,"1"]},{"metric":{"a":"2"},"value":[1,"2"]}]"#,
        ) else {
            panic!("two series must fail")
        };
        assert!(why.contains("2 series"), "{why}");
        assert_eq!(
            read(
                "200 OK",
                r#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"3"]}}"#
            ),
            Reading::Value(3.0)
        );
        let Reading::Failed(why) = read(
            "400 Bad Request",
            r#"{"status":"error","errorType":"bad_data","error":"parse error at char 4"}"#,
        ) else {
            panic!("an error answer must fail")
        };
        assert!(why.contains("parse error at char 4"), "{why}");
        assert!(matches!(
            read("502 Bad Gateway", "<html>"),
            Reading::Failed(_)
        ));
        assert!(matches!(read("200 OK", "garbage"), Reading::Failed(_)));
        assert!(matches!(
            read(
                "200 OK",
                r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#
            ),
            Reading::Failed(_)
        ));
    }

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            http::encode(r#"sum(x{a="b c"}) / 2"#),
            "sum%28x%7Ba%3D%22b%20c%22%7D%29%20%2F%202"
        );
    }
}

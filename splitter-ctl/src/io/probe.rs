//! Health probes: a TCP connect, or an HTTP GET (hyper) with an expected status, within the
//! check's timeout. What a result means for the backend is `engine::health`'s to decide.

use std::net::SocketAddr;

use bytes::Bytes;
use hyper::Method;
use tokio::net::TcpStream;

use crate::{
    engine::health::ProbeError,
    io::http::{self, HttpError},
    model::config::{HealthCheck, HttpCheck},
};

/// Probes `addr` once, within the check's timeout.
pub async fn probe(addr: SocketAddr, check: &HealthCheck) -> Result<(), ProbeError> {
    match tokio::time::timeout(check.timeout, probe_unbounded(addr, check.http.as_ref())).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::Timeout(check.timeout.as_millis())),
    }
}

async fn probe_unbounded(addr: SocketAddr, check: Option<&HttpCheck>) -> Result<(), ProbeError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(ProbeError::Connect)?;
    let Some(check) = check else { return Ok(()) };
    let failed = |error: HttpError| ProbeError::Http(Box::new(error));
    let request = http::request(
        Method::GET,
        &check.path,
        &addr.to_string(),
        &[("connection", "close".to_owned())],
        Bytes::new(),
    )
    .map_err(failed)?;
    let got = http::status(stream, request)
        .await
        .map_err(failed)?
        .as_u16();
    if got == check.status {
        Ok(())
    } else {
        Err(ProbeError::Status {
            got,
            expected: check.status,
        })
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test]
    async fn probes_tell_a_listening_port_from_a_closed_one_and_check_http_status() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            for status in ["200 OK", "503 Service Unavailable", "200 OK"] {
                let (mut conn, _) = listener.accept().await.expect("accept");
                let mut buf = [0u8; 512];
                let _ = conn.read(&mut buf).await;
                let _ = conn
                    .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let tcp = HealthCheck::default();
        assert!(probe(addr, &tcp).await.is_ok());
        let http = HealthCheck {
            http: Some(HttpCheck {
                path: "/healthz".to_owned(),
                status: 200,
            }),
            ..HealthCheck::default()
        };
        assert!(matches!(
            probe(addr, &http).await,
            Err(ProbeError::Status {
                got: 503,
                expected: 200
            })
        ));
        assert!(probe(addr, &http).await.is_ok());
        server.await.expect("server");
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let closed_addr = closed.local_addr().expect("addr");
        drop(closed);
        assert!(matches!(
            probe(closed_addr, &tcp).await,
            Err(ProbeError::Connect(_))
        ));
    }
}

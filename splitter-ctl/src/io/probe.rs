//! Health probes: a TCP connect, or an HTTP GET with an expected status, within the check's
//! timeout. What a result means for the backend is `engine::health`'s to decide.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::model::config::{HealthCheck, HttpCheck};

/// Probes `addr` once, within the check's timeout.
pub async fn probe(addr: SocketAddr, check: &HealthCheck) -> Result<(), String> {
    match tokio::time::timeout(check.timeout, probe_unbounded(addr, check.http.as_ref())).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {} ms", check.timeout.as_millis())),
    }
}

async fn probe_unbounded(addr: SocketAddr, http: Option<&HttpCheck>) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let Some(http) = http else { return Ok(()) };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: splitter-health\r\nConnection: close\r\n\r\n",
        http.path
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < 12 {
        let n = stream
            .read(&mut head[len..])
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("the connection closed before a status line".to_owned());
        }
        len += n;
    }
    let line = String::from_utf8_lossy(&head[..len]);
    let status: u16 = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            format!(
                "not an HTTP status line: {:?}",
                line.lines().next().unwrap_or_default()
            )
        })?;
    if status == http.status {
        Ok(())
    } else {
        Err(format!("status {status}, expected {}", http.status))
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(probe(addr, &tcp).await, Ok(()));
        let http = HealthCheck {
            http: Some(HttpCheck {
                path: "/healthz".to_owned(),
                status: 200,
            }),
            ..HealthCheck::default()
        };
        assert_eq!(
            probe(addr, &http).await,
            Err("status 503, expected 200".to_owned())
        );
        assert_eq!(probe(addr, &http).await, Ok(()));
        server.await.expect("server");
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let closed_addr = closed.local_addr().expect("addr");
        drop(closed);
        assert!(
            probe(closed_addr, &tcp)
                .await
                .expect_err("closed port")
                .starts_with("connect: ")
        );
    }
}

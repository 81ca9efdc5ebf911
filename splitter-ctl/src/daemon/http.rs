//! The daemon's HTTP/1.1 servers on hyper: the control API on its Unix socket and `GET
//! /metrics` on TCP. A request's body is read whole before it is answered, within
//! `READ_TIMEOUT` and `MAX_BODY`; a head over `MAX_HEAD` is refused by hyper (431), a body
//! over the limit gets 413, a slow one 408. Keep-alive and chunked bodies are hyper's to handle.

use std::{convert::Infallible, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{Method, body::Incoming, header, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

/// Largest request head (request line and headers) accepted: hyper's read buffer (its least
/// is 8 KiB).
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;
/// How long a client may take to send its request's head, and then its body.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A request, its body read whole.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The path and query.
    pub path: String,
    pub body: Bytes,
}

/// An answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    #[must_use]
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        let mut body = serde_json::to_vec_pretty(value).unwrap_or_else(|_| b"{}".to_vec());
        body.push(b'\n');
        Self {
            status,
            content_type: "application/json",
            body,
        }
    }

    #[must_use]
    pub fn error(status: u16, message: &str) -> Self {
        Self::json(status, &serde_json::json!({ "error": message }))
    }

    fn into_hyper(self) -> hyper::Response<Full<Bytes>> {
        let mut response = hyper::Response::new(Full::new(Bytes::from(self.body)));
        *response.status_mut() = hyper::StatusCode::from_u16(self.status)
            .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(self.content_type),
        );
        response
    }
}

/// Serves the requests of one connection with `handler`, until the client closes it or stays
/// silent past `READ_TIMEOUT`.
pub async fn serve_connection<I, H, F>(io: I, handler: H)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request) -> F + Clone + Send + 'static,
    F: Future<Output = Response> + Send,
{
    let service = service_fn(move |request: hyper::Request<Incoming>| {
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(answer(request, handler).await.into_hyper()) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // A client may shut its side down once its request is sent: it still gets its answer.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(READ_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .half_close(true);
    // A connection that breaks or times out ends here; each request was answered or refused.
    let _ = builder.serve_connection(TokioIo::new(io), service).await;
}

/// Reads the body, within its bounds, and asks `handler`.
async fn answer<H, F>(request: hyper::Request<Incoming>, handler: H) -> Response
where
    H: Fn(Request) -> F,
    F: Future<Output = Response>,
{
    let (parts, body) = request.into_parts();
    let collected =
        tokio::time::timeout(READ_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await;
    let body = match collected {
        Err(_) => {
            return Response::error(
                408,
                &format!(
                    "the client sent no complete request within {} s",
                    READ_TIMEOUT.as_secs()
                ),
            );
        }
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
            return Response::error(
                413,
                &format!("the request body is longer than {MAX_BODY} bytes"),
            );
        }
        Ok(Err(_)) => return Response::error(400, "the request body could not be read"),
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned());
    handler(Request {
        method: parts.method,
        path,
        body,
    })
    .await
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// Writes `bytes` to a connection served by a handler that echoes the body's length, closes
    /// the write side, and returns all the server sent back.
    async fn exchange(bytes: Vec<u8>) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(256 * 1024);
        let served = tokio::spawn(serve_connection(server, |request: Request| async move {
            // A panic here fails the test through the connection's task.
            assert!(
                request.body.len() <= MAX_BODY,
                "a body over the limit reached the handler"
            );
            Response::json(
                200,
                &serde_json::json!({ "path": request.path, "length": request.body.len() }),
            )
        }));
        client.write_all(&bytes).await.expect("write");
        client.shutdown().await.expect("shutdown");
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut answer))
            .await
            .expect("the server answers or closes, never hangs");
        tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .expect("the connection ends")
            .expect("no panic");
        answer
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// The status codes of every answer in `answer` (HTTP/1.0 or 1.1).
    fn statuses(answer: &[u8]) -> Vec<u16> {
        let text = String::from_utf8_lossy(answer);
        text.match_indices("HTTP/1.")
            .filter_map(|(at, _)| text.get(at + 9..at + 12)?.parse().ok())
            .collect()
    }

    proptest::proptest! {
        #[test]
        fn property_any_bytes_are_answered_or_refused_never_a_panic_or_a_hang(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)
        ) {
            let answer = runtime().block_on(exchange(bytes));
            for status in statuses(&answer) {
                proptest::prop_assert!(status == 200 || (400..500).contains(&status), "{status}");
            }
        }

        #[test]
        fn property_an_edited_request_is_read_or_refused(
            edits in proptest::collection::vec((0usize..64, proptest::prelude::any::<u8>()), 0..4)
        ) {
            let mut bytes = b"POST /v1/rollouts/sentiment HTTP/1.1\r\nContent-Length: 11\r\n\r\n{\"steps\":1}".to_vec();
            for (at, byte) in edits {
                let at = at % bytes.len();
                bytes[at] = byte;
            }
            let answer = runtime().block_on(exchange(bytes));
            for status in statuses(&answer) {
                proptest::prop_assert!(status == 200 || (400..500).contains(&status), "{status}");
            }
        }
    }

    #[tokio::test]
    async fn requests_are_read_whole_chunked_or_sized_and_oversized_ones_refused() {
        let answer =
            exchange(b"POST /v1/reload?x=1 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello".to_vec())
                .await;
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains(r#""path": "/v1/reload?x=1""#), "{text}");
        assert!(text.contains(r#""length": 5"#), "{text}");

        let chunked = exchange(
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n".to_vec(),
        )
        .await;
        assert!(String::from_utf8_lossy(&chunked).contains(r#""length": 5"#));

        let two = exchange(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n".to_vec()).await;
        assert_eq!(
            statuses(&two),
            [200, 200],
            "keep-alive: both requests answered"
        );

        let mut big = format!(
            "POST /x HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        )
        .into_bytes();
        big.extend(std::iter::repeat_n(b'a', MAX_BODY + 1));
        assert_eq!(statuses(&exchange(big).await), [413]);

        let mut head = b"GET /x HTTP/1.1\r\nX-Long: ".to_vec();
        head.extend(std::iter::repeat_n(b'a', MAX_HEAD + 10));
        head.extend(b"\r\n\r\n");
        assert_eq!(statuses(&exchange(head).await), [431]);

        assert_eq!(
            statuses(&exchange(b"G\x01T /x HTTP/1.1\r\n\r\n".to_vec()).await),
            [400]
        );
        assert!(
            exchange(Vec::new()).await.is_empty(),
            "a closed connection gets nothing"
        );
    }
}

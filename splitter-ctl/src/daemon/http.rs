//! Just enough HTTP/1.1 for the control socket, the metrics endpoint and the CLI: one request
//! per connection, `Content-Length` bodies, bounded sizes and times. Anything else gets a clear
//! 4xx, never a panic or a hung task.

use std::{io, time::Duration};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// Largest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;
/// How long a client may take to send its request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

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
}

/// Why a request could not be read; each maps to a status the client gets.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("the request head is longer than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("the request body is longer than {MAX_BODY} bytes")]
    BodyTooLarge,
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("the client sent no complete request within {} s", READ_TIMEOUT.as_secs())]
    Timeout,
    #[error("the client closed the connection")]
    Closed,
}

impl RequestError {
    #[must_use]
    pub fn status(&self) -> u16 {
        match self {
            Self::HeadTooLarge => 431,
            Self::BodyTooLarge => 413,
            Self::Malformed(_) => 400,
            Self::Timeout => 408,
            Self::Closed => 400,
        }
    }
}

/// Parses a request head: the request line and the `Content-Length` header.
pub fn parse_head(head: &[u8]) -> Result<(String, String, usize), RequestError> {
    let text =
        std::str::from_utf8(head).map_err(|_| RequestError::Malformed("the head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let request_line = lines
        .next()
        .ok_or(RequestError::Malformed("no request line"))?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(path), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(RequestError::Malformed(
            "the request line is not `METHOD PATH HTTP/1.x`",
        ));
    };
    if !version.starts_with("HTTP/1.")
        || method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !path.starts_with('/')
    {
        return Err(RequestError::Malformed(
            "the request line is not `METHOD PATH HTTP/1.x`",
        ));
    }
    let mut length = 0;
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or(RequestError::Malformed("a header line without `:`"))?;
        if name.eq_ignore_ascii_case("content-length") {
            length = value
                .trim()
                .parse()
                .map_err(|_| RequestError::Malformed("Content-Length is not a number"))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(RequestError::Malformed(
                "chunked bodies are not supported; send Content-Length",
            ));
        }
    }
    if length > MAX_BODY {
        return Err(RequestError::BodyTooLarge);
    }
    Ok((method.to_owned(), path.to_owned(), length))
}

/// Reads one request, within `READ_TIMEOUT` and the size limits.
pub async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Request, RequestError> {
    tokio::time::timeout(READ_TIMEOUT, read_request_unbounded(stream))
        .await
        .map_err(|_| RequestError::Timeout)?
}

async fn read_request_unbounded<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Request, RequestError> {
    let mut buffer = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        if buffer.len() > MAX_HEAD {
            return Err(RequestError::HeadTooLarge);
        }
        read_more(stream, &mut buffer).await?;
    };
    if head_end > MAX_HEAD {
        return Err(RequestError::HeadTooLarge);
    }
    let (method, path, length) = parse_head(&buffer[..head_end])?;
    let mut body = buffer.split_off(head_end + 4);
    while body.len() < length {
        read_more(stream, &mut body).await?;
    }
    body.truncate(length);
    Ok(Request { method, path, body })
}

/// Appends what the stream has next to `buffer`; a closed stream is an error.
async fn read_more<S: AsyncRead + Unpin>(
    stream: &mut S,
    buffer: &mut Vec<u8>,
) -> Result<(), RequestError> {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => Err(RequestError::Closed),
        Ok(n) => {
            buffer.extend_from_slice(&chunk[..n]);
            Ok(())
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

/// Writes `response` and closes the write side.
pub async fn write_response<S: AsyncWrite + Unpin>(
    stream: &mut S,
    response: &Response,
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&response.body).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn property_any_bytes_are_a_request_or_a_clear_refusal(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("runtime");
            if let Err(error) = runtime.block_on(read_request(&mut &bytes[..])) {
                proptest::prop_assert!((400..500).contains(&error.status()));
                proptest::prop_assert!(!error.to_string().is_empty());
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
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("runtime");
            match runtime.block_on(read_request(&mut &bytes[..])) {
                Ok(request) => proptest::prop_assert!(request.body.len() <= MAX_BODY),
                Err(error) => proptest::prop_assert!((400..500).contains(&error.status())),
            }
        }
    }

    #[test]
    fn a_request_head_gives_method_path_and_length() {
        let head = b"POST /v1/reload HTTP/1.1\r\nHost: x\r\ncontent-length: 12";
        assert_eq!(
            parse_head(head),
            Ok(("POST".to_owned(), "/v1/reload".to_owned(), 12))
        );
        assert_eq!(
            parse_head(b"GET /metrics HTTP/1.0"),
            Ok(("GET".to_owned(), "/metrics".to_owned(), 0))
        );
    }

    #[test]
    fn malformed_heads_are_refused_with_a_reason() {
        for head in [
            &b""[..],
            b"GET",
            b"GET /x",
            b"GET x HTTP/1.1",
            b"get /x HTTP/1.1",
            b"GET /x HTTP/2",
            b"GET /x HTTP/1.1 extra",
            b"GET /x HTTP/1.1\r\nNoColon",
            b"GET /x HTTP/1.1\r\nContent-Length: -1",
            b"GET /x HTTP/1.1\r\nTransfer-Encoding: chunked",
            b"\xff\xfe",
        ] {
            assert!(
                matches!(parse_head(head), Err(RequestError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
        assert_eq!(
            parse_head(b"POST /x HTTP/1.1\r\nContent-Length: 999999"),
            Err(RequestError::BodyTooLarge)
        );
    }

    #[tokio::test]
    async fn requests_are_read_whole_and_oversized_ones_refused() {
        let (mut client, mut server) = tokio::io::duplex(256 * 1024);
        client
            .write_all(b"POST /v1/reload HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
            .await
            .expect("write");
        let request = read_request(&mut server).await.expect("request");
        assert_eq!(
            (
                request.method.as_str(),
                request.path.as_str(),
                request.body.as_slice()
            ),
            ("POST", "/v1/reload", &b"hello"[..])
        );

        let (mut client, mut server) = tokio::io::duplex(256 * 1024);
        client
            .write_all(&vec![b'a'; MAX_HEAD + 10])
            .await
            .expect("write");
        assert_eq!(
            read_request(&mut server).await,
            Err(RequestError::HeadTooLarge)
        );

        let (client, mut server) = tokio::io::duplex(1024);
        drop(client);
        assert_eq!(read_request(&mut server).await, Err(RequestError::Closed));
    }
}

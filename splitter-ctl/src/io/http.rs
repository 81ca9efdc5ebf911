//! HTTP/1.1 clients on hyper: one request on a fresh connection over TCP (PromQL, health
//! probes), TLS (a production Prometheus) or a Unix socket (the CLI's requests to the daemon's
//! control socket), within a time and an answer size. Chunked answers and keep-alive are
//! hyper's to handle.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{Request, StatusCode, body::Incoming};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use tokio::io::{AsyncRead, AsyncWrite};

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot connect to `{0}`")]
    Connect(String, #[source] std::io::Error),
    #[error("no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("TLS handshake with `{0}`")]
    Tls(String, #[source] std::io::Error),
    #[error("`{0}` is not a name or address a certificate can be checked against")]
    ServerName(String),
    #[error("cannot read the certificate or key file `{0}`")]
    PemFile(PathBuf, #[source] rustls::pki_types::pem::Error),
    #[error("the CA file `{0}` holds no certificate a TLS client can use")]
    NoCertificate(PathBuf),
    #[error("no trusted certificate authority on this host; set `prometheus_ca_file`")]
    NoRoots,
    #[error("cannot set up TLS")]
    TlsConfig(#[source] rustls::Error),
    #[error("HTTP exchange")]
    Http(#[source] hyper::Error),
    #[error("bad request")]
    Request(#[source] hyper::http::Error),
    #[error("the answer is longer than {0} bytes")]
    TooLarge(usize),
    #[error("cannot read the answer")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A complete answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

/// Sends `request` on `stream` (one connection, one request) and reads the whole answer, at
/// most `limit` bytes of body. The caller bounds the time.
pub async fn exchange<S>(
    stream: S,
    request: Request<Full<Bytes>>,
    limit: usize,
) -> Result<Answer, HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (response, connection) = send(stream, request).await?;
    let status = response.status();
    let body = Limited::new(response.into_body(), limit)
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .map_err(|error| {
            if error.is::<http_body_util::LengthLimitError>() {
                HttpError::TooLarge(limit)
            } else {
                HttpError::Body(error)
            }
        });
    connection.abort();
    Ok(Answer {
        status,
        body: body?,
    })
}

/// Sends `request` on `stream` and returns the answer's status, without reading its body (a
/// health check asks for the status only).
pub async fn status<S>(stream: S, request: Request<Full<Bytes>>) -> Result<StatusCode, HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (response, connection) = send(stream, request).await?;
    connection.abort();
    Ok(response.status())
}

/// Sends `request` on `stream`: the answer's head, and the task that drives the connection
/// (the body is read through it, as it arrives, by a caller that streams it; abort the task
/// when done).
pub async fn send<S>(
    stream: S,
    request: Request<Full<Bytes>>,
) -> Result<(hyper::Response<Incoming>, tokio::task::JoinHandle<()>), HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(HttpError::Http)?;
    let driver = tokio::spawn(async move {
        // The connection's end (or error) is the request's, which `send_request` reports.
        let _ = connection.await;
    });
    match sender.send_request(request).await {
        Ok(response) => Ok((response, driver)),
        Err(error) => {
            driver.abort();
            Err(HttpError::Http(error))
        }
    }
}

/// `exchange` within `timeout`, connection included.
pub async fn within<T>(
    timeout: Duration,
    exchange: impl Future<Output = Result<T, HttpError>>,
) -> Result<T, HttpError> {
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| HttpError::Timeout(timeout))?
}

/// A request with a body (or none), as every client here sends it.
pub fn request(
    method: hyper::Method,
    uri: &str,
    host: &str,
    headers: &[(&str, String)],
    body: Bytes,
) -> Result<Request<Full<Bytes>>, HttpError> {
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, "splitter");
    for (name, value) in headers {
        builder = builder.header(*name, value.as_str());
    }
    builder.body(Full::new(body)).map_err(HttpError::Request)
}

/// One request to the daemon's control socket.
pub async fn unix(
    socket: &Path,
    method: hyper::Method,
    path: &str,
    body: Bytes,
    limit: usize,
) -> Result<Answer, HttpError> {
    let request = request(method, path, "splitter", &[], body)?;
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|error| HttpError::Connect(socket.display().to_string(), error))?;
    exchange(stream, request, limit).await
}

/// Percent-encodes everything but the unreserved characters of RFC 3986 (for a query value,
/// or a name in a path).
#[must_use]
pub fn encode(text: &str) -> String {
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

/// A TCP connection to `host:port`, wrapped in TLS when `tls` is given.
pub async fn connect(
    host: &str,
    port: u16,
    tls: Option<&Tls>,
) -> Result<Box<dyn Stream>, HttpError> {
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|error| HttpError::Connect(format!("{host}:{port}"), error))?;
    let Some(tls) = tls else {
        return Ok(Box::new(tcp));
    };
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| HttpError::ServerName(host.to_owned()))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::clone(&tls.config))
        .connect(name, tcp)
        .await
        .map_err(|error| HttpError::Tls(format!("{host}:{port}"), error))?;
    Ok(Box::new(stream))
}

/// A byte stream a request can go over: TCP, or TLS over TCP.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// How a TLS client checks the server: the certificate authorities it trusts.
#[derive(Clone, Debug)]
pub struct Tls {
    config: Arc<rustls::ClientConfig>,
}

impl Tls {
    /// Trusts the authorities of `ca_file` (PEM), or the host's when there is none.
    pub fn new(ca_file: Option<&Path>) -> Result<Self, HttpError> {
        Self::with_client(ca_file, None)
    }

    /// Like `new`, and shows the server `client`'s certificate and key (PEM files) when asked,
    /// as a production etcd asks its clients.
    pub fn with_client(
        ca_file: Option<&Path>,
        client: Option<(&Path, &Path)>,
    ) -> Result<Self, HttpError> {
        let mut roots = rustls::RootCertStore::empty();
        match ca_file {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|error| HttpError::PemFile(path.to_owned(), error))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|error| HttpError::PemFile(path.to_owned(), error))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(HttpError::NoCertificate(path.to_owned()));
                }
            }
            None => {
                let (added, _) =
                    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
                if added == 0 {
                    return Err(HttpError::NoRoots);
                }
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(HttpError::TlsConfig)?
        .with_root_certificates(roots);
        let config = match client {
            None => config.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                    .map_err(|error| HttpError::PemFile(cert.to_owned(), error))?;
                let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key)
                    .map_err(|error| HttpError::PemFile(key.to_owned(), error))?;
                config
                    .with_client_auth_cert(chain, key)
                    .map_err(HttpError::TlsConfig)?
            }
        };
        Ok(Self {
            config: Arc::new(config),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves `answer` (raw bytes) to the first request on a duplex pipe, and returns what the
    /// client made of it.
    async fn answer_with(answer: &'static [u8], limit: usize) -> Result<Answer, HttpError> {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let mut buf = [0u8; 1024];
            let _ = server.read(&mut buf).await;
            let _ = server.write_all(answer).await;
            let _ = server.shutdown().await;
        });
        let request = request(hyper::Method::GET, "/x", "test", &[], Bytes::new())?;
        exchange(client, request, limit).await
    }

    #[tokio::test]
    async fn chunked_and_sized_answers_are_read_whole_and_bounded() {
        let chunked = answer_with(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            1024,
        )
        .await
        .expect("chunked");
        assert_eq!(
            (chunked.status, &chunked.body[..]),
            (StatusCode::OK, &b"hello world"[..])
        );
        let sized = answer_with(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n\r\nno",
            1024,
        )
        .await
        .expect("sized");
        assert_eq!(sized.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(matches!(
            answer_with(
                b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world",
                4
            )
            .await,
            Err(HttpError::TooLarge(4))
        ));
        assert!(matches!(
            answer_with(b"garbage\r\n\r\n", 1024).await,
            Err(HttpError::Http(_))
        ));
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused_with_its_path() {
        let dir = std::env::temp_dir().join(format!("splitter-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("empty.pem");
        std::fs::write(&path, "not a certificate\n").expect("write");
        assert!(matches!(Tls::new(Some(&path)), Err(HttpError::NoCertificate(p)) if p == path));
        assert!(matches!(
            Tls::new(Some(&dir.join("missing.pem"))),
            Err(HttpError::PemFile(..))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! A small HTTP/1.1 client for the end-to-end tests: one request per connection, or many on a
//! keep-alive connection. Every response names the version that served it (`X-Served-By`).

use std::{
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

const TIMEOUT: Duration = Duration::from_secs(5);

/// One request on a fresh connection; returns who served it. A status other than 200 is an
/// error.
pub fn get(addr: SocketAddr) -> io::Result<String> {
    let (status, served_by) = get_any(addr)?;
    if status == 200 {
        Ok(served_by)
    } else {
        Err(io::Error::other(format!(
            "status {status} from {served_by}"
        )))
    }
}

/// One request on a fresh connection; returns the status and who served it.
pub fn get_any(addr: SocketAddr) -> io::Result<(u16, String)> {
    let mut conn = KeepAlive::connect(addr)?;
    conn.send(true)
}

/// A keep-alive connection.
pub struct KeepAlive {
    reader: BufReader<TcpStream>,
}

impl KeepAlive {
    pub fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            reader: BufReader::new(stream),
        })
    }

    /// One request on this connection; returns who served it.
    pub fn request(&mut self) -> io::Result<String> {
        match self.send(false)? {
            (200, served_by) => Ok(served_by),
            (status, served_by) => Err(io::Error::other(format!(
                "status {status} from {served_by}"
            ))),
        }
    }

    fn send(&mut self, close: bool) -> io::Result<(u16, String)> {
        let connection = if close { "close" } else { "keep-alive" };
        write!(
            self.reader.get_mut(),
            "GET / HTTP/1.1\r\nHost: splitter-test\r\nConnection: {connection}\r\n\r\n"
        )?;
        self.reader.get_mut().flush()?;
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status: u16 = line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(&format!("unexpected status line {line:?}")))?;
        let (mut length, mut served_by) = (None, None);
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(bad("connection closed inside the headers"));
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse::<usize>().ok(),
                    "x-served-by" => served_by = Some(value.trim().to_owned()),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length.ok_or_else(|| bad("no content-length"))?];
        self.reader.read_exact(&mut body)?;
        Ok((status, served_by.ok_or_else(|| bad("no x-served-by"))?))
    }
}

/// A plain `GET path` (HTTP/1.0, so the body ends at close); returns status and body.
pub fn get_raw(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or((response.as_str(), ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no status"))?;
    Ok((status, body.to_owned()))
}

//! A small HTTP/1.1 client for the end-to-end tests: one request per connection, or many on a
//! keep-alive connection. Every response names the version that served it (`X-Served-By`).

use std::{
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
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
        Self::over(TcpStream::connect_timeout(&addr, TIMEOUT)?)
    }

    /// A connection from the local address `source` (one of the client's addresses).
    pub fn connect_from(source: Ipv4Addr, addr: SocketAddrV4) -> io::Result<Self> {
        let sockaddr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(ip.octets()),
            },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: a new socket, owned by the TcpStream at once (closed when it drops); bind and
        // connect read sockaddrs that live across the calls.
        let stream = unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let stream = <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd);
            let local = sockaddr(source, 0);
            if libc::bind(fd, (&raw const local).cast(), len) != 0 {
                return Err(io::Error::last_os_error());
            }
            let remote = sockaddr(*addr.ip(), addr.port());
            if libc::connect(fd, (&raw const remote).cast(), len) != 0 {
                return Err(io::Error::last_os_error());
            }
            stream
        };
        Self::over(stream)
    }

    fn over(stream: TcpStream) -> io::Result<Self> {
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            reader: BufReader::new(stream),
        })
    }

    /// Whether the server closed the connection while it was idle (what a pooling client
    /// checks before it reuses one: urllib3's `is_connection_dropped`, Go's and hyper's pools).
    #[must_use]
    pub fn closed_by_peer(&self) -> bool {
        let fd = std::os::fd::AsRawFd::as_raw_fd(self.reader.get_ref());
        let mut byte = 0u8;
        // SAFETY: a one-byte peek into a local, on a socket this connection owns.
        let n = unsafe {
            libc::recv(
                fd,
                (&raw mut byte).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n == 0 || (n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock)
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

    /// One request with `Connection: close`; returns the status and who served it.
    pub fn last_request(&mut self) -> io::Result<(u16, String)> {
        self.send(true)
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

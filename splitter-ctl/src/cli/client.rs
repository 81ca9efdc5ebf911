//! The CLI's side of the control socket: one request to the daemon, and what to say when no
//! daemon answers.

use std::{
    io::{self, Read as _, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

/// The CLI's side: one request to the daemon's control socket. Returns status and body.
pub fn unix_request(
    socket: &Path,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> io::Result<(u16, Vec<u8>)> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: splitter\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "malformed response from the daemon",
        )
    };
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(bad)?;
    let status_line = std::str::from_utf8(&response[..head_end])
        .map_err(|_| bad())?
        .lines()
        .next()
        .ok_or_else(bad)?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, response[head_end + 4..].to_vec()))
}

/// Whether a daemon answers on `path`.
#[must_use]
pub fn daemon_listening(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

/// The error a CLI gets when no daemon answers.
#[must_use]
pub fn not_running(path: &Path, error: &io::Error) -> String {
    if error.kind() == io::ErrorKind::PermissionDenied {
        return format!(
            "permission denied on the control socket `{}`: it is for root and the config's `control_group`",
            path.display()
        );
    }
    format!(
        "the daemon is not running: cannot connect to `{}` ({error})",
        path.display()
    )
}

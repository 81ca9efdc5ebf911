//! Readiness for the service manager: the systemd notification protocol (`NOTIFY_SOCKET`,
//! `READY=1`), so `Type=notify` units and the test bed know when the data plane is attached
//! and the config applied. Without `NOTIFY_SOCKET` it does nothing.

use std::{io, os::unix::net::UnixDatagram};

/// Sends `state` (e.g. `READY=1`) to the service manager, if one listens.
pub fn notify(state: &str) -> io::Result<()> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt as _;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)?;
        socket.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        socket.send_to(state.as_bytes(), &path)?;
    }
    Ok(())
}

//! A SYN flood from spoofed sources, for the tests: a raw IPv4 socket (`IP_HDRINCL`) in the
//! test bed's client namespace sends SYNs from up to 65,536 addresses of 198.19.0.0/16 times
//! several source ports. Bounded in count and in time; the sources stay in the test range, and
//! the backends' answers to them go nowhere (the node has no route to 198.19.0.0/16).

use std::{
    net::SocketAddrV4,
    time::{Duration, Instant},
};

use crate::{
    netns::Netns,
    packet::{Ipv4Packet, SYN},
};

/// The spoofed source of SYN number `i`: 198.19.x.y, and a port that changes every 65,536.
#[must_use]
pub fn source(i: u32) -> SocketAddrV4 {
    let [_, _, x, y] = i.to_be_bytes();
    SocketAddrV4::new([198, 19, x, y].into(), 1_024 + (i >> 16) as u16)
}

/// Sends up to `count` SYNs to `target` from distinct spoofed sources, stopping at `limit`.
/// Returns how many were sent.
pub fn syn_flood(client: &Netns, target: SocketAddrV4, count: u32, limit: Duration) -> u32 {
    client.run(move || {
        // SAFETY: a raw socket, closed below; sendto reads `frame` and `addr`, both alive.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(target.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        let deadline = Instant::now() + limit;
        let mut sent = 0;
        while sent < count && Instant::now() < deadline {
            // The IP packet without its Ethernet header: the kernel adds the link layer.
            let frame = Ipv4Packet::tcp(source(sent), target, SYN).build();
            let packet = &frame[14..];
            // SAFETY: see above.
            let n = unsafe {
                libc::sendto(
                    fd,
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&raw const addr).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            if n < 0 {
                // A full queue: let it drain.
                std::thread::sleep(Duration::from_micros(100));
                continue;
            }
            sent += 1;
        }
        // SAFETY: the descriptor opened above, closed once.
        unsafe { libc::close(fd) };
        sent
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_distinct_and_in_the_test_range() {
        let sources: std::collections::HashSet<_> = (0..200_000).map(source).collect();
        assert_eq!(sources.len(), 200_000);
        assert!(sources.iter().all(|s| s.ip().octets()[..2] == [198, 19]));
    }
}

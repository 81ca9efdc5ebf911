//! Putting a drain's segments on the wire: raw sockets that carry their own IP header
//! (`IPPROTO_RAW`, and `IPV6_HDRINCL` for IPv6), so a segment can leave as the service towards a
//! client and as a client towards a backend, from the network namespace of the data plane.
//! Sends are paced: a drain of thousands of connections never floods the host.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use crate::model::segment::Segment;

/// Segments per second at most, over all of a drain's connections.
pub const MAX_SEGMENTS_PER_SECOND: u32 = 50_000;
/// `IPV6_HDRINCL` (linux/in6.h): the IPv6 header comes with the data.
const IPV6_HDRINCL: libc::c_int = 36;
/// The window a FIN advertises.
const WINDOW: u16 = 502;

/// The raw sockets a drain sends with, and its pace.
#[derive(Debug)]
pub struct Closer {
    v4: OwnedFd,
    v6: Option<OwnedFd>,
    /// Sends left in the current second, and when it began.
    budget: u32,
    second: Instant,
    /// Time spent in `sendto` since `take_sending` last asked: the network's own work on what
    /// was sent (a peer's answer included) runs in it, on this thread.
    sending: Duration,
}

impl Closer {
    /// Opens the sockets (CAP_NET_RAW). IPv6 is optional: a host without it drains IPv4.
    pub fn open() -> io::Result<Self> {
        let v4 = raw_socket(libc::AF_INET)?;
        let v6 = raw_socket(libc::AF_INET6).ok().and_then(|fd| {
            let on: libc::c_int = 1;
            // SAFETY: a valid socket, and an int option that lives across the call.
            let rc = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::IPPROTO_IPV6,
                    IPV6_HDRINCL,
                    (&raw const on).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            (rc == 0).then_some(fd)
        });
        Ok(Self {
            v4,
            v6,
            budget: MAX_SEGMENTS_PER_SECOND,
            second: Instant::now(),
            sending: Duration::ZERO,
        })
    }

    /// Time spent sending since the last call.
    pub fn take_sending(&mut self) -> Duration {
        std::mem::take(&mut self.sending)
    }

    /// Whether the pace allows another segment now; a drain that hears "no" tries again on its
    /// next round.
    pub fn may_send(&mut self) -> bool {
        if self.second.elapsed() >= Duration::from_secs(1) {
            self.second = Instant::now();
            self.budget = MAX_SEGMENTS_PER_SECOND;
        }
        self.budget > 0
    }

    /// Sends `segment` (counted against the pace).
    pub fn send(&mut self, segment: &Segment) -> io::Result<()> {
        self.budget = self.budget.saturating_sub(1);
        let packet = encode(segment)?;
        let (fd, storage, len) = match segment.dst {
            SocketAddr::V4(dst) => {
                // SAFETY: sockaddr_in is plain old data; all zeroes is valid.
                let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_addr.s_addr = u32::from_ne_bytes(dst.ip().octets());
                let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
                // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
                unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
                (&self.v4, storage, size_of::<libc::sockaddr_in>())
            }
            SocketAddr::V6(dst) => {
                let fd = self.v6.as_ref().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::Unsupported, "no raw IPv6 socket")
                })?;
                // SAFETY: as above.
                let mut sin6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_addr.s6_addr = dst.ip().octets();
                let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
                // SAFETY: as above.
                unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
                (fd, storage, size_of::<libc::sockaddr_in6>())
            }
        };
        let began = Instant::now();
        // SAFETY: a valid socket; the buffer and the address live across the call.
        let sent = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&raw const storage).cast(),
                len as libc::socklen_t,
            )
        };
        self.sending += began.elapsed();
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

fn raw_socket(family: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: creates a socket; the descriptor is owned below.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor this function just opened and nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The segment as an IP packet: header, TCP header without options, payload, checksums.
pub fn encode(segment: &Segment) -> io::Result<Vec<u8>> {
    let payload: &[u8] = match &segment.payload {
        Some(bytes) => bytes,
        None => &[],
    };
    // At most a GOAWAY frame: a few bytes past the headers.
    let tcp_len = (20 + payload.len()) as u16;
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&segment.src.port().to_be_bytes());
    tcp[2..4].copy_from_slice(&segment.dst.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&segment.seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&segment.ack.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = segment.flags;
    tcp[14..16].copy_from_slice(&WINDOW.to_be_bytes());
    match (segment.src.ip(), segment.dst.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let mut pseudo = Vec::with_capacity(12);
            pseudo.extend_from_slice(&src.octets());
            pseudo.extend_from_slice(&dst.octets());
            pseudo.extend_from_slice(&[0, libc::IPPROTO_TCP as u8]);
            pseudo.extend_from_slice(&tcp_len.to_be_bytes());
            let check = checksum(&[&pseudo, &tcp, payload]);
            tcp[16..18].copy_from_slice(&check.to_be_bytes());
            let mut ip = [0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&(20 + tcp_len).to_be_bytes());
            ip[6] = 0x40; // don't fragment
            ip[8] = 64;
            ip[9] = libc::IPPROTO_TCP as u8;
            ip[12..16].copy_from_slice(&src.octets());
            ip[16..20].copy_from_slice(&dst.octets());
            let check = checksum(&[&ip]);
            ip[10..12].copy_from_slice(&check.to_be_bytes());
            Ok([ip.as_slice(), &tcp, payload].concat())
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let mut pseudo = Vec::with_capacity(40);
            pseudo.extend_from_slice(&src.octets());
            pseudo.extend_from_slice(&dst.octets());
            pseudo.extend_from_slice(&[0, 0]);
            pseudo.extend_from_slice(&tcp_len.to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, libc::IPPROTO_TCP as u8]);
            let check = checksum(&[&pseudo, &tcp, payload]);
            tcp[16..18].copy_from_slice(&check.to_be_bytes());
            let mut ip = [0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&tcp_len.to_be_bytes());
            ip[6] = libc::IPPROTO_TCP as u8;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&src.octets());
            ip[24..40].copy_from_slice(&dst.octets());
            Ok([ip.as_slice(), &tcp, payload].concat())
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a segment between an IPv4 and an IPv6 address",
        )),
    }
}

/// The Internet checksum (RFC 1071) over `parts`, each of even length but the last (a
/// segment's payload, which may be odd, comes last).
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        for pair in part.chunks(2) {
            let word = u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]);
            sum += u32::from(word);
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verify(parts: &[&[u8]]) -> bool {
        checksum(parts) == 0
    }

    #[test]
    fn encoded_segments_carry_valid_checksums() {
        let fin = Segment::fin_to_client(
            "198.18.0.1:8080".parse().expect("addr"),
            "198.18.0.2:40000".parse().expect("addr"),
            0xdead_beef,
            7,
        );
        let packet = encode(&fin).expect("encode");
        assert_eq!(packet.len(), 40);
        assert!(verify(&[&packet[..20]]), "IP header checksum");
        let mut pseudo = packet[12..20].to_vec();
        pseudo.extend_from_slice(&[0, 6, 0, 20]);
        assert!(verify(&[&pseudo, &packet[20..]]), "TCP checksum");
        assert_eq!(&packet[24..28], &0xdead_beef_u32.to_be_bytes());
        assert_eq!(packet[33], 0x11, "FIN|ACK");

        let rst = Segment::rst_to_backend(
            "[2001:2::2]:40000".parse().expect("addr"),
            "[2001:2::10]:8080".parse().expect("addr"),
            99,
        );
        let packet = encode(&rst).expect("encode");
        assert_eq!(packet.len(), 60);
        let mut pseudo = packet[8..40].to_vec();
        pseudo.extend_from_slice(&[0, 0, 0, 20, 0, 0, 0, 6]);
        assert!(verify(&[&pseudo, &packet[40..]]), "TCP checksum over IPv6");
        assert_eq!(packet[53], 0x04, "RST");

        // An HTTP/2 client's FIN carries a GOAWAY (17 bytes: an odd length) first.
        let fin = Segment::fin_to_h2_client(
            "198.18.0.1:9090".parse().expect("addr"),
            "198.18.0.2:40000".parse().expect("addr"),
            1000,
            7,
            9,
        );
        let packet = encode(&fin).expect("encode");
        assert_eq!(packet.len(), 40 + 17);
        assert_eq!(&packet[2..4], &57u16.to_be_bytes(), "IP total length");
        assert!(verify(&[&packet[..20]]), "IP header checksum");
        let mut pseudo = packet[12..20].to_vec();
        pseudo.extend_from_slice(&[0, 6, 0, 37]);
        assert!(
            verify(&[&pseudo, &packet[20..]]),
            "TCP checksum with payload"
        );
        assert_eq!(
            &packet[40..49],
            &[0, 0, 8, 7, 0, 0, 0, 0, 0],
            "GOAWAY, stream 0"
        );
        assert_eq!(&packet[49..53], &9u32.to_be_bytes(), "the last stream");
        assert_eq!(&packet[53..57], &[0; 4], "NO_ERROR");
    }
}

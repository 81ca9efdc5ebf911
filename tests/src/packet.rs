//! Packets for the fixture tests: Ethernet (optionally 802.1Q-tagged), IPv4 and TCP or UDP,
//! built with correct checksums; and a parser for what comes out of a program.

use std::net::{SocketAddrV4, SocketAddrV6};

use crate::checksum;

pub const ETH_IPV4: [u8; 2] = [0x08, 0x00];
pub const ETH_IPV6: [u8; 2] = [0x86, 0xdd];
pub const ETH_ARP: [u8; 2] = [0x08, 0x06];
pub const ETH_VLAN: [u8; 2] = [0x81, 0x00];
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const FIN: u8 = 0x01;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;

const MAC_DST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const MAC_SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// An IPv4 packet to build.
#[derive(Clone, Debug)]
pub struct Ipv4Packet {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub protocol: u8,
    pub tcp_flags: u8,
    pub payload: Vec<u8>,
    pub vlan: Option<u16>,
    /// IP options (a multiple of 4 bytes).
    pub ip_options: Vec<u8>,
    /// Flags and fragment offset, as in the header (0x2000 = more fragments).
    pub frag: u16,
    /// For UDP: send a zero checksum ("no checksum").
    pub udp_no_checksum: bool,
    /// For TCP: the sequence and acknowledgement numbers (fixed ones when not given).
    pub numbers: Option<(u32, u32)>,
    /// TCP options (a multiple of 4 bytes).
    pub tcp_options: Vec<u8>,
}

impl Ipv4Packet {
    #[must_use]
    pub fn tcp(src: SocketAddrV4, dst: SocketAddrV4, tcp_flags: u8) -> Self {
        Self {
            src,
            dst,
            protocol: TCP,
            tcp_flags,
            payload: Vec::new(),
            vlan: None,
            ip_options: Vec::new(),
            frag: 0x4000,
            udp_no_checksum: false,
            numbers: None,
            tcp_options: Vec::new(),
        }
    }

    #[must_use]
    pub fn udp(src: SocketAddrV4, dst: SocketAddrV4) -> Self {
        Self {
            protocol: UDP,
            tcp_flags: 0,
            ..Self::tcp(src, dst, 0)
        }
    }

    #[must_use]
    pub fn with_payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// A TCP segment with these sequence and acknowledgement numbers.
    #[must_use]
    pub fn with_numbers(mut self, seq: u32, ack: u32) -> Self {
        self.numbers = Some((seq, ack));
        self
    }

    /// A TCP segment with the timestamps option (RFC 7323) as Linux lays it out: NOP, NOP,
    /// kind 8, length 10, TSval, TSecr.
    #[must_use]
    pub fn with_timestamps(mut self, tsval: u32, tsecr: u32) -> Self {
        self.tcp_options = [1, 1, 8, 10].to_vec();
        self.tcp_options.extend_from_slice(&tsval.to_be_bytes());
        self.tcp_options.extend_from_slice(&tsecr.to_be_bytes());
        self
    }

    #[must_use]
    pub fn build(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        match self.protocol {
            TCP | UDP => {
                l4 = segment(
                    self.protocol,
                    self.src.port(),
                    self.dst.port(),
                    self.tcp_flags,
                    self.payload.len(),
                );
                if let (TCP, Some((seq, ack))) = (self.protocol, self.numbers) {
                    l4[4..8].copy_from_slice(&seq.to_be_bytes());
                    l4[8..12].copy_from_slice(&ack.to_be_bytes());
                }
                if self.protocol == TCP && !self.tcp_options.is_empty() {
                    l4[12] = (((20 + self.tcp_options.len()) / 4) << 4) as u8;
                    l4.extend_from_slice(&self.tcp_options);
                }
            }
            _ => {
                // ICMP echo request.
                l4.extend_from_slice(&[8, 0, 0, 0, 0, 1, 0, 1]);
            }
        }
        l4.extend_from_slice(&self.payload);
        let (src, dst) = (self.src.ip().octets(), self.dst.ip().octets());
        match self.protocol {
            TCP => {
                let c = checksum::l4(src, dst, TCP, &l4);
                l4[16..18].copy_from_slice(&c.to_be_bytes());
            }
            UDP if !self.udp_no_checksum => {
                let mut c = checksum::l4(src, dst, UDP, &l4);
                if c == 0 {
                    c = 0xffff;
                }
                l4[6..8].copy_from_slice(&c.to_be_bytes());
            }
            UDP => {}
            _ => {
                // ICMP: the plain Internet checksum over the message.
                let c = checksum::ipv4_header(&l4);
                l4[2..4].copy_from_slice(&c.to_be_bytes());
            }
        }
        let ihl = 5 + self.ip_options.len() / 4;
        let total = ihl * 4 + l4.len();
        let mut ip = vec![(4 << 4) | ihl as u8, 0];
        ip.extend_from_slice(&(total as u16).to_be_bytes());
        ip.extend_from_slice(&[0x12, 0x34]);
        ip.extend_from_slice(&self.frag.to_be_bytes());
        ip.extend_from_slice(&[64, self.protocol, 0, 0]);
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&dst);
        ip.extend_from_slice(&self.ip_options);
        let c = checksum::ipv4_header(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());

        let mut frame = ethernet(self.vlan, ETH_IPV4);
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&l4);
        frame
    }
}

/// A TCP (no options) or UDP header with a zero checksum, for a payload of `payload_len`.
fn segment(
    protocol: u8,
    src_port: u16,
    dst_port: u16,
    tcp_flags: u8,
    payload_len: usize,
) -> Vec<u8> {
    let mut l4 = Vec::with_capacity(20);
    l4.extend_from_slice(&src_port.to_be_bytes());
    l4.extend_from_slice(&dst_port.to_be_bytes());
    if protocol == TCP {
        l4.extend_from_slice(&0x0102_0304u32.to_be_bytes()); // seq
        let ack: u32 = if tcp_flags & ACK != 0 { 0x0a0b_0c0d } else { 0 };
        l4.extend_from_slice(&ack.to_be_bytes());
        l4.extend_from_slice(&[0x50, tcp_flags, 0xfa, 0xf0, 0, 0, 0, 0]); // data offset 5, window, checksum, urgent
    } else {
        l4.extend_from_slice(&((8 + payload_len) as u16).to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
    }
    l4
}

/// An Ethernet header (with a VLAN tag when given) for `ether_type`.
#[must_use]
pub fn ethernet(vlan: Option<u16>, ether_type: [u8; 2]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(64);
    frame.extend_from_slice(&MAC_DST);
    frame.extend_from_slice(&MAC_SRC);
    if let Some(tag) = vlan {
        frame.extend_from_slice(&ETH_VLAN);
        frame.extend_from_slice(&tag.to_be_bytes());
    }
    frame.extend_from_slice(&ether_type);
    frame
}

/// An ARP request frame.
#[must_use]
pub fn arp() -> Vec<u8> {
    let mut frame = ethernet(None, ETH_ARP);
    frame.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(&MAC_SRC);
    frame.extend_from_slice(&[198, 18, 0, 2]);
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&[198, 18, 0, 1]);
    frame
}

/// An IPv6 TCP SYN frame to port `port` (IPv6 is not steered yet).
#[must_use]
pub fn ipv6_tcp_syn(port: u16) -> Vec<u8> {
    let mut frame = ethernet(None, ETH_IPV6);
    frame.extend_from_slice(&[0x60, 0, 0, 0, 0, 20, TCP, 64]);
    frame.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    frame.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    frame.extend_from_slice(&40000u16.to_be_bytes());
    frame.extend_from_slice(&port.to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, SYN, 0xff, 0xff, 0, 0, 0, 0]);
    frame
}

/// What a test reads back from a frame.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub protocol: u8,
    pub ip_checksum_ok: bool,
    pub l4_checksum_ok: bool,
    /// The L4 checksum field as it is.
    pub l4_checksum: u16,
}

/// Parses an Ethernet/[VLAN]/IPv4/TCP|UDP frame built by this module; `None` when the frame is
/// shorter than its headers or its IP total length say.
#[must_use]
pub fn parse(frame: &[u8]) -> Option<Parsed> {
    let mut l3 = 14;
    if frame.get(12..14)? == ETH_VLAN {
        l3 = 18;
    }
    let ihl = usize::from(frame.get(l3)? & 0x0f) * 4;
    let ip = frame.get(l3..l3 + ihl)?;
    let protocol = ip[9];
    let src_ip = [ip[12], ip[13], ip[14], ip[15]];
    let dst_ip = [ip[16], ip[17], ip[18], ip[19]];
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let l4 = frame.get(l3 + ihl..l3 + total)?;
    let check_at = if protocol == TCP { 16 } else { 6 };
    l4.get(..check_at + 2)?;
    let port = |at: usize| u16::from_be_bytes([l4[at], l4[at + 1]]);
    let l4_checksum = port(check_at);
    let l4_checksum_ok = if protocol == UDP && l4_checksum == 0 {
        true
    } else {
        checksum::l4_ok(src_ip, dst_ip, protocol, l4)
    };
    Some(Parsed {
        src: SocketAddrV4::new(src_ip.into(), port(0)),
        dst: SocketAddrV4::new(dst_ip.into(), port(2)),
        protocol,
        ip_checksum_ok: checksum::ipv4_header_ok(ip),
        l4_checksum_ok,
        l4_checksum,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_packets_parse_back_with_valid_checksums() {
        let src: SocketAddrV4 = "198.18.0.2:40000".parse().expect("addr");
        let dst: SocketAddrV4 = "198.18.0.1:8080".parse().expect("addr");
        for packet in [
            Ipv4Packet::tcp(src, dst, SYN),
            Ipv4Packet::tcp(src, dst, ACK | PSH).with_payload(b"GET / HTTP/1.1\r\n\r\n"),
            Ipv4Packet::udp(src, dst).with_payload(b"hello"),
            Ipv4Packet {
                vlan: Some(7),
                ..Ipv4Packet::tcp(src, dst, SYN)
            },
            Ipv4Packet {
                ip_options: vec![1, 1, 1, 0],
                ..Ipv4Packet::tcp(src, dst, SYN)
            },
        ] {
            let parsed = parse(&packet.build()).expect("parses");
            assert_eq!(
                (parsed.src, parsed.dst, parsed.protocol),
                (src, dst, packet.protocol)
            );
            assert!(parsed.ip_checksum_ok && parsed.l4_checksum_ok, "{packet:?}");
        }
        let mut broken = Ipv4Packet::tcp(src, dst, SYN).build();
        broken[40] ^= 0xff;
        assert!(!parse(&broken).expect("parses").l4_checksum_ok);
    }
}

pub const ICMPV6: u8 = 58;
pub const EXT_HOP_BY_HOP: u8 = 0;
pub const EXT_DESTINATION: u8 = 60;
pub const EXT_ROUTING: u8 = 43;
pub const EXT_FRAGMENT: u8 = 44;

/// An IPv6 packet to build: TCP, UDP or an ICMPv6 neighbour solicitation, after any
/// extension headers (`EXT_*`, eight bytes each).
#[derive(Clone, Debug)]
pub struct Ipv6Packet {
    pub src: SocketAddrV6,
    pub dst: SocketAddrV6,
    pub protocol: u8,
    pub tcp_flags: u8,
    pub payload: Vec<u8>,
    pub extensions: Vec<u8>,
}

impl Ipv6Packet {
    #[must_use]
    pub fn tcp(src: SocketAddrV6, dst: SocketAddrV6, tcp_flags: u8) -> Self {
        Self {
            src,
            dst,
            protocol: TCP,
            tcp_flags,
            payload: Vec::new(),
            extensions: Vec::new(),
        }
    }

    #[must_use]
    pub fn udp(src: SocketAddrV6, dst: SocketAddrV6) -> Self {
        Self {
            protocol: UDP,
            tcp_flags: 0,
            ..Self::tcp(src, dst, 0)
        }
    }

    #[must_use]
    pub fn neighbour_solicitation(src: SocketAddrV6, dst: SocketAddrV6) -> Self {
        Self {
            protocol: ICMPV6,
            tcp_flags: 0,
            ..Self::tcp(src, dst, 0)
        }
    }

    #[must_use]
    pub fn with_payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    #[must_use]
    pub fn build(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        match self.protocol {
            TCP | UDP => {
                l4 = segment(
                    self.protocol,
                    self.src.port(),
                    self.dst.port(),
                    self.tcp_flags,
                    self.payload.len(),
                )
            }
            _ => {
                // Neighbour solicitation: type 135, code 0, checksum, reserved, target.
                l4.extend_from_slice(&[135, 0, 0, 0, 0, 0, 0, 0]);
                l4.extend_from_slice(&self.dst.ip().octets());
            }
        }
        l4.extend_from_slice(&self.payload);
        let (src, dst) = (self.src.ip().octets(), self.dst.ip().octets());
        let check_at = match self.protocol {
            TCP => 16,
            UDP => 6,
            _ => 2,
        };
        let c = checksum::l4_v6(src, dst, self.protocol, &l4);
        l4[check_at..check_at + 2].copy_from_slice(&c.to_be_bytes());

        let mut extensions = Vec::new();
        let chain: Vec<u8> = self
            .extensions
            .iter()
            .copied()
            .chain([self.protocol])
            .collect();
        for pair in chain.windows(2) {
            let (kind, next) = (pair[0], pair[1]);
            if kind == EXT_FRAGMENT {
                // Offset 0, more fragments, an identification.
                extensions.extend_from_slice(&[next, 0, 0, 1, 0, 0, 0x12, 0x34]);
            } else {
                // No options but padding (PadN of four bytes).
                extensions.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
            }
        }
        let mut frame = ethernet(None, ETH_IPV6);
        frame.extend_from_slice(&[0x60, 0, 0, 0]);
        frame.extend_from_slice(&((extensions.len() + l4.len()) as u16).to_be_bytes());
        frame.push(chain[0]);
        frame.push(64);
        frame.extend_from_slice(&src);
        frame.extend_from_slice(&dst);
        frame.extend_from_slice(&extensions);
        frame.extend_from_slice(&l4);
        frame
    }
}

/// What a test reads back from an IPv6 frame built by `Ipv6Packet`.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed6 {
    pub src: SocketAddrV6,
    pub dst: SocketAddrV6,
    pub protocol: u8,
    pub l4_checksum_ok: bool,
}

#[must_use]
pub fn parse6(frame: &[u8]) -> Option<Parsed6> {
    let ip = frame.get(14..54)?;
    let src: [u8; 16] = ip[8..24].try_into().ok()?;
    let dst: [u8; 16] = ip[24..40].try_into().ok()?;
    let mut next = ip[6];
    let mut at = 54;
    while matches!(
        next,
        EXT_HOP_BY_HOP | EXT_ROUTING | EXT_DESTINATION | EXT_FRAGMENT
    ) {
        let header = frame.get(at..at + 2)?;
        at += if next == EXT_FRAGMENT {
            8
        } else {
            8 * (usize::from(header[1]) + 1)
        };
        next = header[0];
    }
    let l4 = frame.get(at..)?;
    let port = |i: usize| u16::from_be_bytes([l4[i], l4[i + 1]]);
    Some(Parsed6 {
        src: SocketAddrV6::new(src.into(), port(0), 0, 0),
        dst: SocketAddrV6::new(dst.into(), port(2), 0, 0),
        protocol: next,
        l4_checksum_ok: checksum::l4_v6_ok(src, dst, next, l4),
    })
}

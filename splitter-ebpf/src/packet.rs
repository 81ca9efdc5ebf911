//! Header parsing shared by both programs: Ethernet with at most one 802.1Q tag, then IPv4
//! without options or fragmentation, then TCP or UDP. Every read is bounds-checked first.

use core::mem::size_of;

use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};
use splitter_common::{PROTO_TCP, PROTO_UDP, PlaneCounter};

use crate::Skip;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Offset of the TCP flags byte in the TCP header.
const TCP_FLAGS_OFFSET: usize = 13;
/// Offsets of the checksum fields inside their headers.
pub const IPV4_CHECK_OFFSET: usize = 10;
pub const IPV4_SRC_OFFSET: usize = 12;
pub const TCP_CHECK_OFFSET: usize = 16;
pub const UDP_CHECK_OFFSET: usize = 6;
/// Most bytes the parser reads: Ethernet, one VLAN tag, IPv4 without options, TCP.
pub const MAX_HEADER_LEN: usize = EthHdr::LEN + VlanHdr::LEN + Ipv4Hdr::LEN + TcpHdr::LEN;

/// The linear packet bytes a program can read directly.
#[derive(Clone, Copy)]
pub struct Bounds {
    pub start: usize,
    pub end: usize,
}

impl Bounds {
    #[inline(always)]
    pub fn ptr_at<T>(&self, offset: usize) -> Result<*mut T, Skip> {
        if self.start + offset + size_of::<T>() > self.end {
            return Err(Skip::Pass(PlaneCounter::Malformed));
        }
        Ok((self.start + offset) as *mut T)
    }

    #[inline(always)]
    pub fn len(&self) -> u64 {
        (self.end - self.start) as u64
    }
}

/// A parsed IPv4 TCP or UDP packet: offsets and pointers into the packet.
pub struct Ipv4L4 {
    pub l3_offset: usize,
    pub l4_offset: usize,
    pub ip: *mut Ipv4Hdr,
    pub protocol: u8,
    /// Source and destination ports, in the same place for TCP and UDP.
    pub ports: *mut [[u8; 2]; 2],
    /// The TCP flags byte, 0 for UDP.
    pub tcp_flags: u8,
    /// Offset of the L4 checksum from the packet start.
    pub l4_check_offset: usize,
    /// The L4 checksum field.
    pub l4_check: *mut [u8; 2],
}

#[inline(always)]
fn l3_offset(bounds: &Bounds) -> Result<usize, Skip> {
    let eth: *const EthHdr = bounds.ptr_at(0)?;
    // SAFETY: bounds-checked above.
    let ether_type = unsafe { (*eth).ether_type };
    if ether_type == EtherType::Ipv4 as u16 {
        return Ok(EthHdr::LEN);
    }
    if ether_type == EtherType::Ieee8021q as u16 {
        let vlan: *const VlanHdr = bounds.ptr_at(EthHdr::LEN)?;
        // SAFETY: bounds-checked above.
        if unsafe { (*vlan).ether_type } == EtherType::Ipv4 as u16 {
            return Ok(EthHdr::LEN + VlanHdr::LEN);
        }
    }
    Err(Skip::Pass(PlaneCounter::NotIpv4))
}

#[inline(always)]
pub fn parse(bounds: &Bounds) -> Result<Ipv4L4, Skip> {
    let l3_offset = l3_offset(bounds)?;
    let ip: *mut Ipv4Hdr = bounds.ptr_at(l3_offset)?;
    // SAFETY: bounds-checked above.
    let (vihl, frags, protocol) = unsafe { ((*ip).vihl, (*ip).frags, (*ip).proto) };
    if vihl >> 4 != 4 {
        return Err(Skip::Pass(PlaneCounter::Malformed));
    }
    if vihl & 0x0f != 5 {
        return Err(Skip::Pass(PlaneCounter::IpOptions));
    }
    // More-fragments flag or a fragment offset: only the first fragment has ports, and even it
    // cannot be rewritten without the rest, so fragments pass untouched.
    if frags[0] & 0x3f != 0 || frags[1] != 0 {
        return Err(Skip::Pass(PlaneCounter::Fragment));
    }
    let l4_offset = l3_offset + Ipv4Hdr::LEN;
    let (tcp_flags, check_in_l4) = match protocol {
        PROTO_TCP => {
            let tcp: *const TcpHdr = bounds.ptr_at(l4_offset)?;
            // SAFETY: bounds-checked above; the flags byte lies inside the TCP header.
            let flags = unsafe { *(tcp as *const u8).add(TCP_FLAGS_OFFSET) };
            (flags, TCP_CHECK_OFFSET)
        }
        PROTO_UDP => {
            let _: *const UdpHdr = bounds.ptr_at(l4_offset)?;
            (0, UDP_CHECK_OFFSET)
        }
        _ => return Err(Skip::Pass(PlaneCounter::NotService)),
    };
    let l4_check_offset = l4_offset + check_in_l4;
    Ok(Ipv4L4 {
        l3_offset,
        l4_offset,
        ip,
        protocol,
        ports: bounds.ptr_at(l4_offset)?,
        tcp_flags,
        l4_check_offset,
        l4_check: bounds.ptr_at(l4_check_offset)?,
    })
}

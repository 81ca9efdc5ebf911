//! Header parsing shared by both programs: Ethernet with at most one 802.1Q tag, then IPv4
//! without options or fragmentation, or IPv6 with at most a few extension headers and no
//! fragment header, then TCP or UDP. Every read is bounds-checked first.

use core::mem::size_of;

use aya_ebpf::bindings::__sk_buff;

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
// Offsets of fields inside their headers.
/// The first byte of an IPv4 header without options: version 4, five words.
pub const IPV4_NO_OPTIONS: u8 = 0x45;
/// The total length.
pub const IPV4_LEN_OFFSET: usize = 2;
/// The TTL, then the protocol (one 16-bit word).
pub const IPV4_TTL_OFFSET: usize = 8;
pub const IPV4_PROTOCOL_OFFSET: usize = 9;
pub const IPV4_CHECK_OFFSET: usize = 10;
pub const IPV4_SRC_OFFSET: usize = 12;
pub const IPV4_DST_OFFSET: usize = 16;
/// The TCP byte whose high nibble is the data offset (the header length in words).
pub const TCP_DATA_OFFSET: usize = 12;
pub const TCP_CHECK_OFFSET: usize = 16;
pub const UDP_CHECK_OFFSET: usize = 6;
/// The most header bytes egress pulls into the linear area: Ethernet, one VLAN tag, IPv6
/// without extensions (the larger IP header), TCP (`headers_len` says how many a packet needs).
pub const MAX_HEADER_LEN: usize = EthHdr::LEN + VlanHdr::LEN + 40 + TcpHdr::LEN;

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

/// Word access to packet bytes, in memory order (the bytes read as a native integer).
///
/// network-types' fields are byte arrays, so LLVM cannot prove a multi-byte field aligned and
/// the BPF backend turns each load or store into byte accesses and shifts. The fields read here
/// are aligned for the verifier, which assumes NET_IP_ALIGN (IPv4 addresses and the port pair
/// at 4, checksums at 2), so one instruction each is valid even under strict alignment.
///
/// # Safety
/// `p` must point into the packet, bounds-checked for the width accessed.
#[inline(always)]
pub unsafe fn load_u32(p: *const u8) -> u32 {
    let value: u64;
    // SAFETY: the caller checked the bounds; a plain load.
    unsafe {
        core::arch::asm!("{v} = *(u32 *)({p} + 0)", p = in(reg) p, v = out(reg) value, options(readonly, nostack, preserves_flags))
    };
    value as u32
}

/// See `load_u32`.
///
/// # Safety
/// As for `load_u32`.
#[inline(always)]
pub unsafe fn load_u16(p: *const u8) -> u16 {
    let value: u64;
    // SAFETY: the caller checked the bounds; a plain load.
    unsafe {
        core::arch::asm!("{v} = *(u16 *)({p} + 0)", p = in(reg) p, v = out(reg) value, options(readonly, nostack, preserves_flags))
    };
    value as u16
}

/// See `load_u32`.
///
/// # Safety
/// As for `load_u32`.
#[inline(always)]
pub unsafe fn store_u32(p: *mut u8, value: u32) {
    // SAFETY: the caller checked the bounds; a plain store.
    unsafe {
        core::arch::asm!("*(u32 *)({p} + 0) = {v}", p = in(reg) p, v = in(reg) u64::from(value), options(nostack, preserves_flags))
    };
}

/// See `load_u32`.
///
/// # Safety
/// As for `load_u32`.
#[inline(always)]
pub unsafe fn store_u16(p: *mut u8, value: u16) {
    // SAFETY: the caller checked the bounds; a plain store.
    unsafe {
        core::arch::asm!("*(u16 *)({p} + 0) = {v}", p = in(reg) p, v = in(reg) u64::from(value), options(nostack, preserves_flags))
    };
}

/// The packet's linear bytes from a context's `data` and `data_end` fields, read with volatile
/// loads: plain ones, LLVM may move into a subprogram's caller and pass as 32-bit integers,
/// which the verifier refuses to use as pointers.
///
/// # Safety
/// Both must point into the program's context.
#[inline(always)]
pub unsafe fn bounds(data: *const u32, data_end: *const u32) -> (usize, usize) {
    // SAFETY: the caller's.
    unsafe {
        (
            core::ptr::read_volatile(data) as usize,
            core::ptr::read_volatile(data_end) as usize,
        )
    }
}

/// `bounds` of a TC program's skb, as they are now (a helper that may move the packet
/// invalidates earlier ones).
///
/// # Safety
/// `skb` must be the program's context.
#[inline(always)]
pub unsafe fn skb_bounds(skb: *mut __sk_buff) -> (usize, usize) {
    // SAFETY: the caller's.
    unsafe { bounds(&raw const (*skb).data, &raw const (*skb).data_end) }
}

/// The source and destination port of a port pair, in memory order.
#[inline(always)]
pub const fn split_ports(ports: u32) -> (u16, u16) {
    let b = ports.to_ne_bytes();
    (
        u16::from_ne_bytes([b[0], b[1]]),
        u16::from_ne_bytes([b[2], b[3]]),
    )
}

/// The port pair of a source and destination port, in memory order.
#[inline(always)]
pub const fn join_ports(src: u16, dst: u16) -> u32 {
    let (s, d) = (src.to_ne_bytes(), dst.to_ne_bytes());
    u32::from_ne_bytes([s[0], s[1], d[0], d[1]])
}

/// IPv6 extension headers skipped before giving up on a packet (passed untouched).
pub const MAX_IPV6_EXTENSIONS: usize = 4;
/// The furthest an L4 header may start; past it the packet passes untouched.
const MAX_L4_OFFSET: usize = 256;
const IPV6_HEADER_LEN: usize = 40;
pub const IPV6_SRC_OFFSET: usize = 8;
const IPV6_DST_OFFSET: usize = 24;
const NEXT_HOP_BY_HOP: u8 = 0;
const NEXT_ROUTING: u8 = 43;
const NEXT_FRAGMENT: u8 = 44;
const NEXT_DESTINATION: u8 = 60;

/// A parsed IPv4 or IPv6 TCP or UDP packet: offsets and pointers into it, all bounds-checked.
pub struct Packet {
    /// IPv6 rather than IPv4.
    pub v6: bool,
    pub l3_offset: usize,
    pub l4_offset: usize,
    /// The IP header.
    pub ip: *mut u8,
    /// The L4 header: the port pair first, for TCP and UDP alike.
    pub l4: *mut u8,
    pub protocol: u8,
    /// The TCP flags byte, 0 for UDP.
    pub tcp_flags: u8,
    /// The L4 checksum field, and its offset from the packet start.
    pub l4_check: *mut u8,
    pub l4_check_offset: usize,
    /// Bytes of L4 payload, from the IP length field (0 when the lengths do not add up).
    pub payload_len: usize,
    /// Offset of the L4 payload from the packet start.
    pub payload_offset: usize,
}

impl Packet {
    /// IPv4 source address (IPv4 packets only).
    #[inline(always)]
    pub fn src(&self) -> u32 {
        // SAFETY: `parse` checked the whole IPv4 header.
        unsafe { load_u32(self.ip.add(IPV4_SRC_OFFSET)) }
    }

    /// IPv4 time to live (IPv4 packets only).
    #[inline(always)]
    pub fn ttl(&self) -> u8 {
        // SAFETY: `parse` checked the whole IPv4 header.
        unsafe { *self.ip.add(IPV4_TTL_OFFSET) }
    }

    /// IPv4 destination address (IPv4 packets only).
    #[inline(always)]
    pub fn dst(&self) -> u32 {
        // SAFETY: `parse` checked the whole IPv4 header.
        unsafe { load_u32(self.ip.add(IPV4_DST_OFFSET)) }
    }

    /// IPv6 source address as four words (IPv6 packets only).
    #[inline(always)]
    pub fn src6(&self) -> [u32; 4] {
        self.words6(IPV6_SRC_OFFSET)
    }

    /// IPv6 destination address as four words (IPv6 packets only).
    #[inline(always)]
    pub fn dst6(&self) -> [u32; 4] {
        self.words6(IPV6_DST_OFFSET)
    }

    #[inline(always)]
    fn words6(&self, at: usize) -> [u32; 4] {
        // SAFETY: `parse` checked the whole IPv6 header.
        unsafe { [0, 4, 8, 12].map(|i| load_u32(self.ip.add(at + i))) }
    }

    /// Writes the IPv6 destination address (IPv6 packets only).
    #[inline(always)]
    pub fn set_dst6(&self, addr: [u32; 4]) {
        self.set_words6(IPV6_DST_OFFSET, addr);
    }

    #[inline(always)]
    fn set_words6(&self, at: usize, addr: [u32; 4]) {
        for (i, word) in addr.iter().enumerate() {
            // SAFETY: `parse` checked the whole IPv6 header.
            unsafe { store_u32(self.ip.add(at + i * 4), *word) };
        }
    }

    /// A TCP packet's sequence and acknowledgement numbers (host order) and where its payload
    /// is; zeros for UDP.
    #[inline(always)]
    pub fn segment(&self) -> crate::l7::Segment {
        if self.protocol != PROTO_TCP {
            return crate::l7::Segment::default();
        }
        // SAFETY: `parse` checked the whole TCP header of a TCP packet.
        let (seq, ack) = unsafe { (load_u32(self.l4.add(4)), load_u32(self.l4.add(8))) };
        crate::l7::Segment {
            seq: u32::from_be(seq),
            ack: u32::from_be(ack),
            offset: self.payload_offset as u32,
            len: self.payload_len as u32,
        }
    }

    /// The (source, destination) port pair in memory order.
    #[inline(always)]
    pub fn ports(&self) -> u32 {
        // SAFETY: `parse` checked at least the UDP header's 8 bytes.
        unsafe { load_u32(self.l4) }
    }

    #[inline(always)]
    pub fn l4_check(&self) -> u16 {
        // SAFETY: `parse` checked the checksum field.
        unsafe { load_u16(self.l4_check) }
    }
}

/// How many of the packet's first bytes `parse` needs in the linear area, as far as `bounds`
/// tells: an untagged IPv4 TCP or UDP packet without IP options says exactly (TCP's options
/// included, which the drain reads); anything else is given `MAX_HEADER_LEN`, the most a parsed
/// packet needs. A TC program pulls no more than this: a pull past a TCP clone's headers
/// copies its head (`pskb_expand_head`), and the payload is read with `bpf_skb_load_bytes`.
#[inline(always)]
pub fn headers_len(bounds: &Bounds) -> usize {
    /// Through the TCP data offset's byte.
    const TOLD_BY: usize = EthHdr::LEN + Ipv4Hdr::LEN + TCP_DATA_OFFSET + 1;
    if bounds.start + TOLD_BY > bounds.end {
        return MAX_HEADER_LEN;
    }
    let ip = (bounds.start + EthHdr::LEN) as *const u8;
    // SAFETY: bounds-checked above.
    let (ether_type, first, protocol, data_offset) = unsafe {
        (
            (*(bounds.start as *const EthHdr)).ether_type,
            *ip,
            *ip.add(IPV4_PROTOCOL_OFFSET),
            *ip.add(Ipv4Hdr::LEN + TCP_DATA_OFFSET) >> 4,
        )
    };
    if ether_type != EtherType::Ipv4 as u16 || first != IPV4_NO_OPTIONS {
        return MAX_HEADER_LEN;
    }
    match protocol {
        PROTO_TCP => EthHdr::LEN + Ipv4Hdr::LEN + usize::from(data_offset.max(5)) * 4,
        PROTO_UDP => EthHdr::LEN + Ipv4Hdr::LEN + UdpHdr::LEN,
        _ => MAX_HEADER_LEN,
    }
}

enum Family {
    V4,
    V6,
}

#[inline(always)]
fn l3_offset(bounds: &Bounds) -> Result<(usize, Family), Skip> {
    let eth: *const EthHdr = bounds.ptr_at(0)?;
    // SAFETY: bounds-checked above.
    let mut ether_type = unsafe { (*eth).ether_type };
    let mut offset = EthHdr::LEN;
    if ether_type == EtherType::Ieee8021q as u16 {
        let vlan: *const VlanHdr = bounds.ptr_at(EthHdr::LEN)?;
        // SAFETY: bounds-checked above.
        ether_type = unsafe { (*vlan).ether_type };
        offset += VlanHdr::LEN;
    }
    if ether_type == EtherType::Ipv4 as u16 {
        Ok((offset, Family::V4))
    } else if ether_type == EtherType::Ipv6 as u16 {
        Ok((offset, Family::V6))
    } else {
        Err(Skip::Pass(PlaneCounter::NotIp))
    }
}

#[inline(always)]
pub fn parse(bounds: &Bounds) -> Result<Packet, Skip> {
    match l3_offset(bounds)? {
        (l3_offset, Family::V4) => parse_v4(bounds, l3_offset),
        (l3_offset, Family::V6) => parse_v6(bounds, l3_offset),
    }
}

#[inline(always)]
fn parse_v4(bounds: &Bounds, l3_offset: usize) -> Result<Packet, Skip> {
    let ip: *mut Ipv4Hdr = bounds.ptr_at(l3_offset)?;
    // SAFETY: bounds-checked above.
    let (vihl, frags, protocol, tot_len) =
        unsafe { ((*ip).vihl, (*ip).frags, (*ip).proto, (*ip).tot_len) };
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
    let l3_payload = usize::from(u16::from_be_bytes(tot_len)).saturating_sub(Ipv4Hdr::LEN);
    parse_l4(
        bounds,
        false,
        l3_offset,
        l3_offset + Ipv4Hdr::LEN,
        protocol,
        l3_payload,
        ip.cast(),
    )
}

/// IPv6: the fixed header, then at most `MAX_IPV6_EXTENSIONS` hop-by-hop, routing and
/// destination-options headers. A fragment header, or more extensions, pass untouched.
#[inline(always)]
fn parse_v6(bounds: &Bounds, l3_offset: usize) -> Result<Packet, Skip> {
    let ip: *mut [u8; IPV6_HEADER_LEN] = bounds.ptr_at(l3_offset)?;
    // SAFETY: bounds-checked above.
    let header = unsafe { &*ip };
    if header[0] >> 4 != 6 {
        return Err(Skip::Pass(PlaneCounter::Malformed));
    }
    let payload_len = usize::from(u16::from_be_bytes([header[4], header[5]]));
    let mut next = header[6];
    let mut offset = l3_offset + IPV6_HEADER_LEN;
    for _ in 0..MAX_IPV6_EXTENSIONS {
        match next {
            NEXT_HOP_BY_HOP | NEXT_ROUTING | NEXT_DESTINATION => {
                let ext: *const [u8; 2] = bounds.ptr_at(offset)?;
                // SAFETY: bounds-checked above.
                let [ext_next, ext_len] = unsafe { *ext };
                next = ext_next;
                offset += (usize::from(ext_len) + 1) * 8;
                if offset > MAX_L4_OFFSET {
                    return Err(Skip::Pass(PlaneCounter::IpOptions));
                }
            }
            NEXT_FRAGMENT => return Err(Skip::Pass(PlaneCounter::Fragment)),
            _ => break,
        }
    }
    if matches!(
        next,
        NEXT_HOP_BY_HOP | NEXT_ROUTING | NEXT_DESTINATION | NEXT_FRAGMENT
    ) {
        return Err(Skip::Pass(PlaneCounter::IpOptions));
    }
    let extensions = offset - l3_offset - IPV6_HEADER_LEN;
    parse_l4(
        bounds,
        true,
        l3_offset,
        offset,
        next,
        payload_len.saturating_sub(extensions),
        ip.cast(),
    )
}

/// TCP or UDP at `l4_offset`; `l3_payload` is what the IP header says follows it.
#[inline(always)]
fn parse_l4(
    bounds: &Bounds,
    v6: bool,
    l3_offset: usize,
    l4_offset: usize,
    protocol: u8,
    l3_payload: usize,
    ip: *mut u8,
) -> Result<Packet, Skip> {
    if l4_offset > MAX_L4_OFFSET {
        return Err(Skip::Pass(PlaneCounter::IpOptions));
    }
    let (tcp_flags, check_in_l4, l4_header_len) = match protocol {
        PROTO_TCP => {
            let tcp: *const TcpHdr = bounds.ptr_at(l4_offset)?;
            // SAFETY: bounds-checked above; the flags and data-offset bytes lie inside the header.
            let (flags, data_offset) = unsafe {
                (
                    *(tcp as *const u8).add(TCP_FLAGS_OFFSET),
                    *(tcp as *const u8).add(TCP_FLAGS_OFFSET - 1),
                )
            };
            // A data offset under five words is not a TCP header.
            if data_offset >> 4 < 5 {
                return Err(Skip::Pass(PlaneCounter::Malformed));
            }
            (flags, TCP_CHECK_OFFSET, usize::from(data_offset >> 4) * 4)
        }
        PROTO_UDP => {
            let _: *const UdpHdr = bounds.ptr_at(l4_offset)?;
            (0, UDP_CHECK_OFFSET, UdpHdr::LEN)
        }
        _ => return Err(Skip::Pass(PlaneCounter::NotService)),
    };
    let l4_check_offset = l4_offset + check_in_l4;
    Ok(Packet {
        v6,
        l3_offset,
        l4_offset,
        ip,
        l4: bounds.ptr_at::<[u8; 8]>(l4_offset)?.cast(),
        protocol,
        tcp_flags,
        l4_check: bounds.ptr_at::<[u8; 2]>(l4_check_offset)?.cast(),
        l4_check_offset,
        payload_len: l3_payload.saturating_sub(l4_header_len),
        payload_offset: l4_offset + l4_header_len,
    })
}

//! Addresses in the data plane's 16-byte form (IPv4-mapped for IPv4) and back.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use splitter_common::Addr;

/// The 16-byte form of an address (IPv4-mapped for IPv4).
#[must_use]
pub fn addr_bytes(ip: IpAddr) -> Addr {
    match ip {
        IpAddr::V4(v4) => splitter_common::ipv4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address of a 16-byte form, IPv4 when it is IPv4-mapped.
#[must_use]
pub fn addr_ip(addr: &Addr) -> IpAddr {
    let v6 = Ipv6Addr::from(*addr);
    v6.to_ipv4_mapped()
        .map_or(IpAddr::V6(v6), |v4: Ipv4Addr| IpAddr::V4(v4))
}

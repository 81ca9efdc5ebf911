//! Incremental Internet checksum updates (RFC 1624: HC' = ~(~HC + ~m + m')), used by the
//! kernel programs for every rewrite and property-tested on the host against checksums
//! computed from scratch (tests/tests/checksum_properties.rs).
//!
//! Every value is in memory order: the packet's 16-bit words read as native integers. The
//! one's-complement sum does not depend on byte order, so summing words as they sit gives the
//! checksum as it must sit, with no byte swaps.

use crate::{PROTO_TCP, PROTO_UDP};

#[inline(always)]
const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// `~m + m'` over the two 16-bit halves of a 32-bit field.
#[inline(always)]
const fn delta32(old: u32, new: u32) -> u32 {
    (!old & 0xffff) + (!old >> 16) + (new & 0xffff) + (new >> 16)
}

/// `~m + m'` over a 16-bit field.
#[inline(always)]
const fn delta16(old: u16, new: u16) -> u32 {
    (!old) as u32 + new as u32
}

/// `~m + m'` of an IPv4 address change, for `apply`.
#[inline(always)]
pub const fn address_delta(old: u32, new: u32) -> u32 {
    delta32(old, new)
}

/// `~m + m'` of a port change, or 0 when the port stays (so the caller can skip the update).
#[inline(always)]
pub const fn port_delta(old: u16, new: u16) -> u32 {
    if old == new { 0 } else { delta16(old, new) }
}

/// `~m + m'` of an address and a port change, for `apply`.
#[inline(always)]
pub const fn address_port_delta(old: u32, new: u32, old_port: u16, new_port: u16) -> u32 {
    fold(delta32(old, new) + delta16(old_port, new_port)) as u32
}

/// The checksum after changes whose `~m + m'` is `delta`.
#[inline(always)]
pub const fn apply(check: u16, delta: u32) -> u16 {
    !fold((!check) as u32 + delta)
}

/// The checksum after a 16-bit field changes from `old` to `new`.
#[inline(always)]
pub const fn replace16(check: u16, old: u16, new: u16) -> u16 {
    !fold((!check) as u32 + delta16(old, new))
}

/// The checksum after a 32-bit field (an IPv4 address) changes from `old` to `new`.
#[inline(always)]
pub const fn replace32(check: u16, old: u32, new: u32) -> u16 {
    !fold((!check) as u32 + delta32(old, new))
}

/// The checksum after a 128-bit field (an IPv6 address in the pseudo-header) and a port change.
#[inline(always)]
pub fn replace128_16(
    check: u16,
    old: [u32; 4],
    new: [u32; 4],
    old_port: u16,
    new_port: u16,
) -> u16 {
    let mut sum = (!check) as u32 + delta16(old_port, new_port);
    let mut i = 0;
    while i < 4 {
        sum = fold(sum) as u32 + delta32(old[i], new[i]);
        i += 1;
    }
    !fold(sum)
}

/// Whether a TCP or UDP header's checksum field holds a checksum: always for TCP; for UDP
/// unless it is zero, which over IPv4 means "no checksum" (RFC 768) and is left alone.
#[inline(always)]
#[must_use]
pub const fn l4_has_checksum(protocol: u8, check: u16) -> bool {
    protocol == PROTO_TCP || check != 0
}

/// The value to store for a computed L4 checksum: a UDP checksum that computes to zero is sent
/// as all ones, since zero would mean "no checksum" (RFC 768).
#[inline(always)]
#[must_use]
pub const fn l4_stored(protocol: u8, check: u16) -> u16 {
    if protocol == PROTO_UDP && check == 0 {
        0xffff
    } else {
        check
    }
}

//! Incremental Internet checksum updates (RFC 1624: HC' = ~(~HC + ~m + m')). Values are the
//! 16-bit words as they sit in the packet, read big-endian; the arithmetic does not depend on
//! the byte order as long as it is the same for all of them.

#[inline(always)]
const fn word(bytes: [u8; 2]) -> u32 {
    u16::from_be_bytes(bytes) as u32
}

#[inline(always)]
const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum after an IPv4 address changes from `old` to `new`.
#[inline(always)]
pub fn replace_addr(check: [u8; 2], old: [u8; 4], new: [u8; 4]) -> [u8; 2] {
    let sum = (!u16::from_be_bytes(check) as u32)
        + (!word([old[0], old[1]]) & 0xffff)
        + (!word([old[2], old[3]]) & 0xffff)
        + word([new[0], new[1]])
        + word([new[2], new[3]]);
    (!fold(sum)).to_be_bytes()
}

/// The checksum after an IPv4 address (in the pseudo-header) and a port both change.
#[inline(always)]
pub fn replace_addr_port(
    check: [u8; 2],
    old: [u8; 4],
    new: [u8; 4],
    old_port: [u8; 2],
    new_port: [u8; 2],
) -> [u8; 2] {
    let partial = replace_addr(check, old, new);
    let sum = (!u16::from_be_bytes(partial) as u32) + (!word(old_port) & 0xffff) + word(new_port);
    (!fold(sum)).to_be_bytes()
}

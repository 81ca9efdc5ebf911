//! The Internet checksum computed from scratch over whole headers (RFC 1071), to check what
//! the kernel programs produce with incremental updates.

fn ones_sum(bytes: &[u8]) -> u32 {
    let mut sum = 0u32;
    for chunk in bytes.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += u32::from(word);
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The checksum to store in an IPv4 header whose checksum field is zero.
#[must_use]
pub fn ipv4_header(header: &[u8]) -> u16 {
    !fold(ones_sum(header))
}

/// Whether an IPv4 header, checksum field included, sums to all ones.
#[must_use]
pub fn ipv4_header_ok(header: &[u8]) -> bool {
    fold(ones_sum(header)) == 0xffff
}

fn pseudo_header(src: [u8; 4], dst: [u8; 4], protocol: u8, len: usize) -> u32 {
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&[0, protocol]);
    pseudo.extend_from_slice(&(len as u16).to_be_bytes());
    ones_sum(&pseudo)
}

/// The checksum to store in a TCP or UDP segment whose checksum field is zero.
#[must_use]
pub fn l4(src: [u8; 4], dst: [u8; 4], protocol: u8, segment: &[u8]) -> u16 {
    !fold(pseudo_header(src, dst, protocol, segment.len()) + ones_sum(segment))
}

/// Whether a TCP or UDP segment, checksum field included, is valid for its addresses.
#[must_use]
pub fn l4_ok(src: [u8; 4], dst: [u8; 4], protocol: u8, segment: &[u8]) -> bool {
    fold(pseudo_header(src, dst, protocol, segment.len()) + ones_sum(segment)) == 0xffff
}

fn pseudo_header_v6(src: [u8; 16], dst: [u8; 16], next_header: u8, len: usize) -> u32 {
    let mut pseudo = Vec::with_capacity(40);
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&(len as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, next_header]);
    ones_sum(&pseudo)
}

/// The checksum to store in a TCP, UDP or ICMPv6 message over IPv6 whose checksum field is zero.
#[must_use]
pub fn l4_v6(src: [u8; 16], dst: [u8; 16], next_header: u8, segment: &[u8]) -> u16 {
    !fold(pseudo_header_v6(src, dst, next_header, segment.len()) + ones_sum(segment))
}

/// Whether a message over IPv6, checksum field included, is valid for its addresses.
#[must_use]
pub fn l4_v6_ok(src: [u8; 16], dst: [u8; 16], next_header: u8, segment: &[u8]) -> bool {
    fold(pseudo_header_v6(src, dst, next_header, segment.len()) + ones_sum(segment)) == 0xffff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_ipv4_header_checksum() {
        // The classic example header (checksum 0xb861).
        let mut header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_header(&header), 0xb861);
        header[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert!(ipv4_header_ok(&header));
        header[15] ^= 1;
        assert!(!ipv4_header_ok(&header));
    }
}

//! A TCP segment without payload, as a drain sends it on a raw socket: a probe that makes an
//! idle peer tell its sequence numbers, a FIN that closes the client's side as the service, a
//! RST that closes a side at once. `kernel::closer` puts it on the wire.

use std::net::SocketAddr;

pub const FIN: u8 = 0x01;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;

/// One segment: from `src` to `dst`, with its numbers and flags; no payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
}

/// Sequence numbers compare modulo 2^32 (RFC 793): whether `a` is at or after `b`.
#[must_use]
pub const fn seq_at_or_after(a: u32, b: u32) -> bool {
    a.wrapping_sub(b) as i32 >= 0
}

impl Segment {
    /// An ACK far outside any window, as the service to the client: a live TCP answers it at
    /// once with an ACK that carries its own numbers (once per half second and connection:
    /// `net.ipv4.tcp_invalid_ratelimit`).
    #[must_use]
    pub const fn probe(service: SocketAddr, client: SocketAddr, client_ack: u32) -> Self {
        // Half the sequence space away from where the client's window is (or from 0 when
        // nothing is known yet).
        let seq = client_ack.wrapping_add(0x8000_0000);
        Self {
            src: service,
            dst: client,
            seq,
            ack: 1,
            flags: ACK,
        }
    }

    /// The service's FIN to the client: at the client's `ack` (what it has of the backend's
    /// bytes), acknowledging everything it sent (`client_next`).
    #[must_use]
    pub const fn fin_to_client(
        service: SocketAddr,
        client: SocketAddr,
        client_ack: u32,
        client_next: u32,
    ) -> Self {
        Self {
            src: service,
            dst: client,
            seq: client_ack,
            ack: client_next,
            flags: FIN | ACK,
        }
    }

    /// A RST to the client, as the service: exactly at what the client expects next.
    #[must_use]
    pub const fn rst_to_client(service: SocketAddr, client: SocketAddr, client_ack: u32) -> Self {
        Self {
            src: service,
            dst: client,
            seq: client_ack,
            ack: 0,
            flags: RST,
        }
    }

    /// A RST to the backend, as the client: exactly at what the backend expects next.
    #[must_use]
    pub const fn rst_to_backend(client: SocketAddr, backend: SocketAddr, client_next: u32) -> Self {
        Self {
            src: client,
            dst: backend,
            seq: client_next,
            ack: 0,
            flags: RST,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_compare_across_the_wrap() {
        assert!(seq_at_or_after(5, 5));
        assert!(seq_at_or_after(6, 5));
        assert!(!seq_at_or_after(5, 6));
        assert!(seq_at_or_after(3, u32::MAX - 2));
        assert!(!seq_at_or_after(u32::MAX - 2, 3));
    }
}

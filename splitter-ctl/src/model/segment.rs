//! A TCP segment as a drain sends it on a raw socket: a probe that makes an idle peer tell its
//! sequence numbers, a FIN that closes the client's side as the service (with an HTTP/2 GOAWAY
//! before it for an HTTP/2 client), a RST that closes a side at once. `kernel::closer` puts it
//! on the wire.

use std::net::SocketAddr;

pub const FIN: u8 = 0x01;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;

/// Bytes of an HTTP/2 GOAWAY frame with no debug data: the frame header and 8 bytes.
pub const GOAWAY_LEN: usize = 17;

/// One segment: from `src` to `dst`, with its numbers and flags, and what it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// An HTTP/2 GOAWAY frame, or nothing.
    pub payload: Option<[u8; GOAWAY_LEN]>,
}

/// An HTTP/2 GOAWAY frame (RFC 9113 §6.8) with NO_ERROR: the server processed no stream above
/// `last_stream`, so the client may retry those elsewhere (gRPC does, transparently).
#[must_use]
pub const fn goaway(last_stream: u32) -> [u8; GOAWAY_LEN] {
    let id = (last_stream & 0x7fff_ffff).to_be_bytes();
    // Length 8, type 7 (GOAWAY), no flags, stream 0; the last stream; error code 0.
    [
        0, 0, 8, 7, 0, 0, 0, 0, 0, id[0], id[1], id[2], id[3], 0, 0, 0, 0,
    ]
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
            payload: None,
        }
    }

    /// The same probe to the backend, as the client: the backend's answer carries its TCP
    /// timestamp now, which, beside the one the client echoes, tells how long the backend has
    /// been silent. Half the sequence space from the client's next byte (or from 0).
    #[must_use]
    pub const fn probe_backend(client: SocketAddr, backend: SocketAddr, client_next: u32) -> Self {
        Self {
            src: client,
            dst: backend,
            seq: client_next.wrapping_add(0x8000_0000),
            ack: 1,
            flags: ACK,
            payload: None,
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
            payload: None,
        }
    }

    /// The service's FIN to an HTTP/2 client, after a GOAWAY that names `last_stream`, the
    /// last stream the backend was given: a call the client opened after it (one the close
    /// raced, dropped before the backend saw it) is retried on a new connection, not failed.
    #[must_use]
    pub const fn fin_to_h2_client(
        service: SocketAddr,
        client: SocketAddr,
        client_ack: u32,
        client_next: u32,
        last_stream: u32,
    ) -> Self {
        Self {
            payload: Some(goaway(last_stream)),
            ..Self::fin_to_client(service, client, client_ack, client_next)
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
            payload: None,
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
            payload: None,
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

//! Draining the connections of a version a rollback leaves: what the data plane records of a
//! flow being drained (`DRAINS`), and how user space tells it to close one (`DRAIN_CLOSING`).
//!
//! The kernel cannot send a packet on an idle connection, and a correct close needs each side's
//! sequence numbers. So user space marks the flows to drain in `DRAINS`; for those flows only
//! (the established fast path never sees them: they leave the flow cache), the ingress program
//! records the client's numbers from every packet, and the egress program the backend's, with
//! the head of each response (its status line and headers, for its length) and the tail of the
//! backend's last segment (a chunked body's end). User space elicits a packet from an idle
//! client with an out-of-window ACK, reads the numbers, decides when the connection is idle
//! (no request waiting, the whole response acknowledged), marks it in `DRAIN_CLOSING`, and
//! sends the closes on a raw socket: a FIN to the client, as the service, and a RST to the
//! backend, as the client. From the mark on, the ingress program drops what the client still
//! sends on the flow (a request that raced the close, counted), so no request is processed
//! without its answer reaching the client.

/// Bytes of a response's head `DRAINS` keeps: the status line and the headers that say how
/// long the body is.
pub const DRAIN_HEAD_LEN: usize = 256;
/// Bytes of the end of the backend's last segment `DRAINS` keeps.
pub const DRAIN_TAIL_LEN: usize = 8;

/// `Drain::seen`: a client packet arrived since the drain began.
pub const DRAIN_CLIENT: u8 = 1;
/// `Drain::seen`: a backend segment with payload left since the drain began.
pub const DRAIN_BACKEND: u8 = 2;
/// `Drain::seen`: `head` holds the start of the last response.
pub const DRAIN_HEAD: u8 = 4;
/// `Drain::seen`: the client sent payload (a request) that no response has started to answer.
pub const DRAIN_REQUEST: u8 = 8;
/// `Drain::seen`: a FIN or a RST went either way: the peers are closing the connection
/// themselves.
pub const DRAIN_CLOSED: u8 = 16;
/// `Drain::seen`: `client_tsecr` holds the TCP timestamp echoed by the client's first packet
/// that carried one since the drain began.
pub const DRAIN_CLIENT_TS: u8 = 32;
/// `Drain::seen`: `backend_tsval` holds the TCP timestamp of the backend's last packet.
pub const DRAIN_BACKEND_TS: u8 = 64;

/// A `DRAIN_CLOSING` value: the closes are on their way; client payload is dropped.
pub const CLOSE_FIN: u32 = 1;
/// A `DRAIN_CLOSING` value: the flow is being reset; client payload and backend payload are
/// dropped, so both sides' numbers hold still for the resets.
pub const CLOSE_RESET: u32 = 2;

/// Value of `DRAINS`: what the data plane has seen of a flow being drained since user space
/// created the entry (zeroed). Sequence numbers are in host order.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Drain {
    /// The client's next sequence number after its last segment that reached the backend.
    pub client_next: u32,
    /// The client's acknowledgement number in its last packet: the backend's bytes it has.
    pub client_ack: u32,
    /// The client's next sequence number after its last segment, passed or dropped: a change
    /// tells user space that the client spoke while it was deciding.
    pub client_sent: u32,
    /// The backend's next sequence number after its last segment with payload or a FIN.
    pub backend_next: u32,
    /// The sequence number of `head[0]`: where the last response began.
    pub head_seq: u32,
    /// Bytes of `head` filled.
    pub head_len: u16,
    /// Bytes of `tail` that belong to the backend's last segment (at most `DRAIN_TAIL_LEN`).
    pub tail_len: u8,
    /// `DRAIN_CLIENT`, `DRAIN_BACKEND`, `DRAIN_HEAD`, `DRAIN_REQUEST`, `DRAIN_CLOSED`,
    /// `DRAIN_CLIENT_TS`, `DRAIN_BACKEND_TS`.
    pub seen: u8,
    /// Client segments with payload dropped because the flow was closing.
    pub raced: u32,
    /// The timestamp the client echoed (TSecr, RFC 7323) in its first packet since the drain
    /// began: the backend's clock at the backend's last segment before it.
    pub client_tsecr: u32,
    /// The backend's own timestamp (TSval) in its last packet (the answer to a probe, say): its
    /// clock now. The two on one connection tick alike, so their difference is how long the
    /// backend had been silent, in its clock's ticks (milliseconds on Linux).
    pub backend_tsval: u32,
    pub _pad: u32,
    /// Client packets seen (incremented atomically: a barrier between the client's numbers and
    /// the closing check).
    pub client_packets: u64,
    /// `bpf_ktime_get_ns` of the client's last packet and of the backend's last payload.
    pub client_ns: u64,
    pub backend_ns: u64,
    /// The last `DRAIN_TAIL_LEN` bytes up to `backend_next` (the last `tail_len` are the
    /// segment's).
    pub tail: [u8; DRAIN_TAIL_LEN],
    /// The first bytes of the last response.
    pub head: [u8; DRAIN_HEAD_LEN],
}
const _: () = assert!(core::mem::size_of::<Drain>() == 328);

impl Default for Drain {
    fn default() -> Self {
        Self {
            client_next: 0,
            client_ack: 0,
            client_sent: 0,
            backend_next: 0,
            head_seq: 0,
            head_len: 0,
            tail_len: 0,
            seen: 0,
            raced: 0,
            client_tsecr: 0,
            backend_tsval: 0,
            _pad: 0,
            client_packets: 0,
            client_ns: 0,
            backend_ns: 0,
            tail: [0; DRAIN_TAIL_LEN],
            head: [0; DRAIN_HEAD_LEN],
        }
    }
}

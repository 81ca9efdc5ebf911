//! A version's counters, as both programs keep them per CPU and user space sums them.

use crate::l7::{CALL_ERRORS, GRPC_STATUSES, PROTOCOLS, UNTRACKED};

/// Value of `VERSION_STATS`, one per (service, version) and CPU. "In" is client → backend
/// (XDP ingress), "out" is backend → client (TC egress).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct VersionStats {
    /// The traffic counts: the kernel keeps them in `VERSION_TRAFFIC`, and user space copies
    /// them here when it reads a version's counters (in JSON, they sit beside the others).
    #[cfg_attr(feature = "user", serde(flatten))]
    pub traffic: Traffic,
    /// Flows created by a SYN or a first UDP datagram.
    pub new_flows: u64,
    /// Non-SYN TCP packets with no flow entry, steered by the deterministic hash.
    pub flow_misses: u64,
    /// New flows dropped because neither version had a backend in the slot.
    pub slot_misses: u64,
    /// New flows this version was chosen for but sent to the other version, because this
    /// version had no backend in the slot (all down, or an empty pool).
    pub failovers: u64,
    /// Flows that saw a FIN or RST.
    pub closed_flows: u64,
    /// Responses timed (a request, then the backend's first payload): the latency histogram's count.
    pub responses: u64,
    /// Responses by the status class of their first bytes: [unparsed, 1xx, 2xx, 3xx, 4xx, 5xx].
    /// `unparsed` is anything that is not an HTTP/1.x status line (HTTP/2, TLS, other protocols).
    pub http_status: [u64; 6],
    /// RSTs sent by a backend on an established connection.
    pub backend_resets: u64,
    /// Handshakes a backend refused: a RST before any SYN-ACK.
    pub refused_handshakes: u64,
    /// `bpf_ktime_get_ns` of the last new flow this version was given, and of the last response
    /// it began (on this CPU: user space takes the latest over CPUs). A rollback's times come
    /// from these: the candidate's last new connection, and the last request it answered.
    pub last_new_flow_ns: u64,
    pub last_response_ns: u64,
    /// Connections by the protocol their client's first bytes showed, indexed by `Protocol`:
    /// HTTP/1.x, HTTP/2 (h2c), TLS, anything else.
    pub protocols: [u64; PROTOCOLS],
    /// HTTP/2 calls: streams the client opened with HEADERS that the kernel follows.
    pub calls: u64,
    /// HTTP/2 calls that failed, indexed by `CallError`. A failed call that was answered (a
    /// trailers-only response, trailers with an error status) is also in `responses`.
    pub call_errors: [u64; CALL_ERRORS],
    /// HTTP/2 calls the client cancelled (its RST_STREAM): deadlines and cancellations, which
    /// are the client's decision, not the server's failure.
    pub calls_cancelled: u64,
    /// What the kernel did not read, indexed by `Untracked`: calls beyond the streams followed
    /// per connection, and connections whose framing was lost (a gap in the byte stream, more
    /// frames in one packet than are read). Counted, never guessed.
    pub untracked: [u64; UNTRACKED],
    /// HTTP/2 trailers (HEADERS that end a call's stream) by their grpc-status code (0 OK …
    /// 16), where it was read: sent as a plain literal (C-core's first trailers with each code
    /// on a connection); the last entry counts those whose status was not read (an index into
    /// the connection's HPACK table, Huffman-coded, or not there).
    pub grpc_status: [u64; GRPC_STATUSES],
}
const _: () = assert!(
    core::mem::size_of::<VersionStats>()
        == 160 + 8 * (PROTOCOLS + 2 + CALL_ERRORS + UNTRACKED + GRPC_STATUSES)
);

/// Value of `VERSION_TRAFFIC`, one per (service, version) and CPU: what every steered packet
/// and translated reply adds. Apart from `VersionStats` so that the write each packet makes
/// lands in 32 bytes rather than in a 416-byte entry: with 100 services, the express lane's
/// write to 200 such entries cost about a fifth of its packet's time (docs/benchmarks.md).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct Traffic {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
}
const _: () = assert!(core::mem::size_of::<Traffic>() == 32);

impl Traffic {
    /// Adds `other` field by field (user space sums the per-CPU values with it).
    #[must_use]
    pub const fn add(mut self, other: &Self) -> Self {
        self.packets_in += other.packets_in;
        self.bytes_in += other.bytes_in;
        self.packets_out += other.packets_out;
        self.bytes_out += other.bytes_out;
        self
    }
}

impl VersionStats {
    /// These counters with the traffic counts of `traffic`.
    #[must_use]
    pub const fn with_traffic(mut self, traffic: &Traffic) -> Self {
        self.traffic = *traffic;
        self
    }

    /// Adds `other` field by field (user space sums the per-CPU values with it).
    #[must_use]
    pub const fn add(mut self, other: &Self) -> Self {
        self.traffic = self.traffic.add(&other.traffic);
        self.new_flows += other.new_flows;
        self.flow_misses += other.flow_misses;
        self.slot_misses += other.slot_misses;
        self.failovers += other.failovers;
        self.responses += other.responses;
        let mut i = 0;
        while i < self.http_status.len() {
            self.http_status[i] += other.http_status[i];
            i += 1;
        }
        self.backend_resets += other.backend_resets;
        self.refused_handshakes += other.refused_handshakes;
        self.closed_flows += other.closed_flows;
        let mut i = 0;
        while i < PROTOCOLS {
            self.protocols[i] += other.protocols[i];
            i += 1;
        }
        self.calls += other.calls;
        let mut i = 0;
        while i < CALL_ERRORS {
            self.call_errors[i] += other.call_errors[i];
            i += 1;
        }
        self.calls_cancelled += other.calls_cancelled;
        let mut i = 0;
        while i < UNTRACKED {
            self.untracked[i] += other.untracked[i];
            i += 1;
        }
        let mut i = 0;
        while i < GRPC_STATUSES {
            self.grpc_status[i] += other.grpc_status[i];
            i += 1;
        }
        if other.last_new_flow_ns > self.last_new_flow_ns {
            self.last_new_flow_ns = other.last_new_flow_ns;
        }
        if other.last_response_ns > self.last_response_ns {
            self.last_response_ns = other.last_response_ns;
        }
        self
    }

    /// Errors, and the events they are counted against: 5xx responses, failed HTTP/2 calls,
    /// backend resets and refused handshakes, over responses (answered calls among them), calls
    /// that failed unanswered, resets and refused handshakes. The one definition of a version's
    /// error rate (gates, status, metrics and drills read it here).
    #[must_use]
    pub const fn errors_and_events(&self) -> (u64, u64) {
        let [
            trailers_only,
            reset_unanswered,
            reset_answered,
            goaway,
            status,
        ] = self.call_errors;
        let call_errors = trailers_only + reset_unanswered + reset_answered + goaway + status;
        let errors =
            self.http_status[5] + call_errors + self.backend_resets + self.refused_handshakes;
        (
            errors,
            self.responses
                + reset_unanswered
                + goaway
                + self.backend_resets
                + self.refused_handshakes,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_sums_over_cpus_and_replaces_only_the_four_counts() {
        let cpu = |n: u64| Traffic {
            packets_in: n,
            bytes_in: 100 * n,
            packets_out: 2 * n,
            bytes_out: 200 * n,
        };
        let sum = [cpu(1), cpu(2), cpu(4)]
            .iter()
            .fold(Traffic::default(), Traffic::add);
        assert_eq!(sum, cpu(7));
        let kept = VersionStats {
            traffic: cpu(99),
            new_flows: 5,
            responses: 3,
            ..VersionStats::default()
        };
        let read = kept.with_traffic(&sum);
        assert_eq!(read.traffic, cpu(7));
        assert_eq!((read.new_flows, read.responses), (5, 3));
    }
}

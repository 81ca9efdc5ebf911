//! A drain as decisions, without I/O: for each connection of the version being left, from what
//! the data plane has seen of it (`Drain`), when to probe it, when it is idle (no request
//! waiting, the whole response delivered), when to close it and how, and what became of it.
//!
//! A close is two-phase, so that a request racing it is never processed without its answer:
//! the flow is marked closing (the data plane then drops what the client sends), its numbers
//! are read again, and only if the client sent nothing meanwhile do the RST to the backend and
//! the FIN to the client go out; otherwise the mark is lifted and the flow watched again.

use std::{net::SocketAddr, time::Duration};

use splitter_common::{
    Flow, OPAQUE_CLIENT_LAST, RESPONSE_HEADERS_ONLY, RESPONSE_PHASE, RESPONSE_STREAMING,
    drain::{
        CLOSE_FIN, CLOSE_RESET, DRAIN_BACKEND, DRAIN_BACKEND_TS, DRAIN_CLIENT, DRAIN_CLIENT_TS,
        DRAIN_CLOSED, DRAIN_HEAD, DRAIN_REQUEST, DRAIN_TAIL_LEN, Drain,
    },
    l7::{H2Conn, Read, read_kind},
};

use crate::model::segment::{Segment, seq_at_or_after};

/// Between two probes of one connection: Linux answers out-of-window segments once per half
/// second and socket (`net.ipv4.tcp_invalid_ratelimit`).
pub const PROBE_INTERVAL: Duration = Duration::from_millis(510);
/// A response whose length the head does not give is over once the backend has been silent
/// this long and the client has all of it.
pub const QUIET: Duration = Duration::from_secs(1);
/// A connection being reset: its numbers must hold this long before the resets go out.
pub const STEADY: Duration = Duration::from_millis(2);
/// The longest an HTTP/2 connection the kernel reads is watched for a call before it is closed
/// while idle (the service's `drain_idle_ms` when shorter): a call that races its close is
/// retried by the client (the GOAWAY before the FIN names the last stream the backend was given).
pub const SETTLE_H2: Duration = Duration::from_millis(10);
/// How long a connection the kernel does not read is left open after the drain began while its
/// client spoke last (`Exchange::ClientSpokeLast`): a request waiting that long for its answer
/// is cut.
pub const UNREAD_WAIT: Duration = Duration::from_secs(5);
/// How long the flow table's word that an exchange is open holds while the drain's record
/// shows nothing new: asked again after this.
pub const ASK_AGAIN: Duration = Duration::from_millis(5);
/// How long a connection that never answers a probe is given before it counts as gone.
pub const NO_ANSWER: Duration = Duration::from_secs(2);

/// What became of one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Closed while idle, with no request during the drain.
    DrainedIdle,
    /// Closed once the response it was waiting for had been delivered.
    DrainedAfterResponse,
    /// Reset, as the policy asked.
    Reset,
    /// Still busy at the drain timeout: reset.
    ResetAtTimeout,
    /// The client or the backend closed it first.
    ClosedByPeers,
    /// It never answered a probe (the client is gone); left to the flow table.
    NoAnswer,
}

impl Outcome {
    pub const ALL: [Self; 6] = [
        Self::DrainedIdle,
        Self::DrainedAfterResponse,
        Self::Reset,
        Self::ResetAtTimeout,
        Self::ClosedByPeers,
        Self::NoAnswer,
    ];

    /// The label in metrics and the journal.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::DrainedIdle => "drained_idle",
            Self::DrainedAfterResponse => "drained_after_response",
            Self::Reset => "reset",
            Self::ResetAtTimeout => "reset_at_timeout",
            Self::ClosedByPeers => "closed_by_peers",
            Self::NoAnswer => "no_answer",
        }
    }
}

/// What to do next for one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing yet.
    Wait,
    /// Send these (a probe).
    Send(Vec<Segment>),
    /// Mark the flow closing with this value, read it again and call `step` with that.
    Mark(u32),
    /// Lift the mark: the client spoke while the close was being decided.
    Unmark,
    /// Send these, and the connection is done.
    Close(Vec<Segment>, Outcome),
    /// Nothing to send; the connection is done.
    Done(Outcome),
    /// It looks idle from the drain's record: read the flow table's `Exchange` of it and call
    /// `answer` with that.
    Ask,
}

/// What the flow table says of a connection's exchange, from before the drain began too (the
/// drain's own record starts with the drain): the telemetry's phase of an HTTP/1 response, or
/// the calls an HTTP/2 connection has in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exchange {
    /// Nothing open: no request waiting, the last response over or its end not known (a body
    /// whose length its headers give), or a connection the kernel does not read (TLS) whose
    /// backend spoke last.
    Quiet,
    /// A request the backend has not begun to answer, a streamed response's headers with its
    /// first token to come, or HTTP/2 calls in flight: closed only once answered (or reset at
    /// the drain timeout).
    Waiting,
    /// A response streaming in chunks: closed after its last chunk, or once the backend has been
    /// silent for `QUIET`.
    Streaming,
    /// A connection the kernel does not read (TLS) whose client sent the last payload: maybe a
    /// request waiting, maybe not (an HTTP/2 client's WINDOW_UPDATE): closed once the backend
    /// speaks, or `UNREAD_WAIT` after the drain began.
    ClientSpokeLast,
}

/// The exchange of the flow table's entry of a connection, and of its HTTP/2 state.
#[must_use]
pub fn exchange(flow: &Flow, h2: Option<&H2Conn>) -> Exchange {
    match read_kind(flow) {
        Read::H2 => match h2 {
            Some(conn) if conn.lost == 0 && conn.streams.iter().any(|s| s.id != 0) => {
                Exchange::Waiting
            }
            _ => Exchange::Quiet,
        },
        Read::Opaque if flow.request_ns == OPAQUE_CLIENT_LAST => Exchange::ClientSpokeLast,
        Read::Opaque => Exchange::Quiet,
        // An HTTP/1 connection (or one with no payload yet, whose `request_ns` is 0).
        Read::Http1 | Read::Unread if flow.request_ns == 0 => Exchange::Quiet,
        Read::Http1 | Read::Unread => match flow.request_ns & RESPONSE_PHASE {
            0 | RESPONSE_HEADERS_ONLY => Exchange::Waiting,
            RESPONSE_STREAMING => Exchange::Streaming,
            // RESPONSE_BODY: a body whose end is not known, most often whole already.
            _ => Exchange::Quiet,
        },
    }
}

/// The last `Exchange` read, and the drain record's numbers then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Asked {
    at_ns: u64,
    exchange: Exchange,
    record: (u32, u8, u32),
}

/// What of a drain record tells that something happened: the backend's end, what was seen,
/// what the client sent.
const fn record_of(d: &Drain) -> (u32, u8, u32) {
    (d.backend_next, d.seen, d.client_sent)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Watching,
    /// Marked closing; the client's numbers when the mark went in.
    Confirming {
        sent: u32,
        raced: u32,
    },
    /// Marked for a reset; the numbers last seen, and since when they hold.
    Resetting {
        numbers: (u32, u32, u32),
        since_ns: u64,
        at_timeout: bool,
    },
    Done,
}

/// One connection being drained.
#[derive(Clone, Debug)]
pub struct FlowDrain {
    pub client: SocketAddr,
    pub service: SocketAddr,
    pub backend: SocketAddr,
    phase: Phase,
    reset: bool,
    started_ns: u64,
    deadline_ns: u64,
    last_probe_ns: Option<u64>,
    busy: bool,
    asked: Option<Asked>,
    /// How long it is watched for a request before it is closed while idle.
    settle: Duration,
    /// An HTTP/2 connection the kernel reads: idle when no call is in flight.
    h2: bool,
    /// Its last stream the backend was given, as the flow table said at the last ask: the
    /// GOAWAY before the FIN names it.
    last_stream: Option<u32>,
}

impl FlowDrain {
    /// A connection to drain from `now_ns` on (the kernel's clock); `reset` asks for resets
    /// instead of graceful closes; past `timeout` a busy connection is reset; one that shows no
    /// request for `idle` is closed while idle.
    #[must_use]
    pub fn new(
        client: SocketAddr,
        service: SocketAddr,
        backend: SocketAddr,
        reset: bool,
        now_ns: u64,
        (timeout, idle): (Duration, Duration),
    ) -> Self {
        Self {
            client,
            service,
            backend,
            phase: Phase::Watching,
            reset,
            started_ns: now_ns,
            deadline_ns: now_ns.saturating_add(nanos(timeout)),
            last_probe_ns: None,
            busy: false,
            asked: None,
            settle: idle,
            h2: false,
            last_stream: None,
        }
    }

    /// The same, for an HTTP/2 connection whose frames the kernel reads (`FLOW_L7_H2`): it is
    /// idle when the flow table has no call of it in flight.
    #[must_use]
    pub fn http2(mut self) -> Self {
        self.h2 = true;
        self.settle = self.settle.min(SETTLE_H2);
        self
    }

    #[must_use]
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// The next step, from the data plane's record of the flow (`None`: the record is gone,
    /// the flow with it).
    pub fn step(&mut self, drain: Option<&Drain>, now_ns: u64) -> Step {
        let Some(d) = drain else {
            return self.finish(Step::Done(Outcome::ClosedByPeers));
        };
        if d.seen & DRAIN_CLOSED != 0 && !matches!(self.phase, Phase::Confirming { .. }) {
            return self.finish(Step::Done(Outcome::ClosedByPeers));
        }
        match self.phase {
            Phase::Done => Step::Wait,
            Phase::Watching => self.watch(d, now_ns),
            Phase::Confirming { sent, raced } => {
                if d.client_sent != sent || d.raced != raced {
                    self.phase = Phase::Watching;
                    return Step::Unmark;
                }
                let outcome = if self.busy {
                    Outcome::DrainedAfterResponse
                } else {
                    Outcome::DrainedIdle
                };
                // Only an HTTP/2 connection's answer carries its last stream.
                let fin = match self.last_stream {
                    Some(last) => Segment::fin_to_h2_client(
                        self.service,
                        self.client,
                        server_next(d),
                        d.client_next,
                        last,
                    ),
                    _ => Segment::fin_to_client(
                        self.service,
                        self.client,
                        server_next(d),
                        d.client_next,
                    ),
                };
                // The client's FIN first: a request it sends from now until the FIN reaches
                // it is the race every keep-alive server has (dropped unprocessed, counted),
                // and a daemon killed between the two sends leaves a backend socket to close
                // by itself, never a client whose next request meets a reset backend.
                self.finish(Step::Close(
                    vec![
                        fin,
                        Segment::rst_to_backend(self.client, self.backend, d.client_next),
                    ],
                    outcome,
                ))
            }
            Phase::Resetting {
                numbers,
                since_ns,
                at_timeout,
            } => self.resetting(d, now_ns, numbers, since_ns, at_timeout),
        }
    }

    fn watch(&mut self, d: &Drain, now_ns: u64) -> Step {
        let heard = d.seen & DRAIN_CLIENT != 0;
        if self.reset || now_ns >= self.deadline_ns {
            if !heard && now_ns >= self.started_ns.saturating_add(nanos(NO_ANSWER)) {
                return self.finish(Step::Done(Outcome::NoAnswer));
            }
            self.phase = Phase::Resetting {
                numbers: numbers(d),
                since_ns: now_ns,
                at_timeout: !self.reset,
            };
            return Step::Mark(CLOSE_RESET);
        }
        if !heard {
            if now_ns >= self.started_ns.saturating_add(nanos(NO_ANSWER)) {
                return self.finish(Step::Done(Outcome::NoAnswer));
            }
            return self.probe(d, now_ns);
        }
        if d.seen & (DRAIN_REQUEST | DRAIN_BACKEND) != 0 {
            self.busy = true;
        }
        // Quiet long enough: during the drain, or counting the quiet before it too (an idle
        // pooled connection is closed at once, one quiet for a while before the drain once its
        // quiet adds up).
        let settled = now_ns >= self.started_ns.saturating_add(nanos(self.settle))
            || self
                .quiet_for(d, now_ns)
                .is_some_and(|quiet| quiet >= self.settle);
        // HTTP/2: the kernel's frames say when no call is in flight, which the record's
        // HTTP/1 reading cannot: a channel that spoke during the drain is closed as soon as its
        // calls are all answered, one that stayed quiet after its settle.
        let candidate = if self.h2 {
            d.seen & (DRAIN_REQUEST | DRAIN_BACKEND) != 0 || settled
        } else {
            let behind_a_response = d.seen & DRAIN_HEAD != 0;
            idle(d, now_ns) && (behind_a_response || settled)
        };
        if candidate {
            match self.open(d, now_ns) {
                None => return Step::Ask,
                Some(true) => return Step::Wait,
                Some(false) => {}
            }
            self.phase = Phase::Confirming {
                sent: d.client_sent,
                raced: d.raced,
            };
            return Step::Mark(CLOSE_FIN);
        }
        Step::Wait
    }

    /// How long the connection has been quiet now: what the timestamps said when the backend
    /// answered the probe (`quiet_before`), and the time since that probe went out.
    fn quiet_for(&self, d: &Drain, now_ns: u64) -> Option<Duration> {
        let probed = self.last_probe_ns?;
        quiet_before(d).map(|quiet| quiet + Duration::from_nanos(now_ns.saturating_sub(probed)))
    }

    /// The flow table's `exchange` of the connection, when `step` asked for it, and for an
    /// HTTP/2 connection its last stream.
    pub fn answer(
        &mut self,
        exchange: Exchange,
        last_stream: Option<u32>,
        d: &Drain,
        now_ns: u64,
    ) -> Step {
        self.last_stream = last_stream;
        self.asked = Some(Asked {
            at_ns: now_ns,
            exchange,
            record: record_of(d),
        });
        if exchange != Exchange::Quiet {
            self.busy = true;
        }
        self.step(Some(d), now_ns)
    }

    /// Whether an exchange is open, from the last answer while it holds (`None`: ask).
    fn open(&self, d: &Drain, now_ns: u64) -> Option<bool> {
        let asked = self.asked?;
        if asked.record != record_of(d) || now_ns >= asked.at_ns.saturating_add(nanos(ASK_AGAIN)) {
            return None;
        }
        Some(match asked.exchange {
            Exchange::Quiet => false,
            Exchange::Waiting => true,
            // A stream the backend has left silent this long is over, or stuck.
            Exchange::Streaming => {
                let last = if d.seen & DRAIN_BACKEND != 0 {
                    d.backend_ns
                } else {
                    self.started_ns
                };
                now_ns < last.saturating_add(nanos(QUIET))
            }
            Exchange::ClientSpokeLast => {
                now_ns < self.started_ns.saturating_add(nanos(UNREAD_WAIT))
            }
        })
    }

    fn resetting(
        &mut self,
        d: &Drain,
        now_ns: u64,
        last: (u32, u32, u32),
        since_ns: u64,
        at_timeout: bool,
    ) -> Step {
        if d.seen & DRAIN_CLIENT == 0 {
            if now_ns >= self.started_ns.saturating_add(nanos(NO_ANSWER)) {
                return self.finish(Step::Done(Outcome::NoAnswer));
            }
            return self.probe(d, now_ns);
        }
        let now_numbers = numbers(d);
        if now_numbers != last {
            self.phase = Phase::Resetting {
                numbers: now_numbers,
                since_ns: now_ns,
                at_timeout,
            };
            return Step::Wait;
        }
        if now_ns < since_ns.saturating_add(nanos(STEADY)) {
            return Step::Wait;
        }
        let outcome = if at_timeout {
            Outcome::ResetAtTimeout
        } else {
            Outcome::Reset
        };
        self.finish(Step::Close(
            vec![
                Segment::rst_to_backend(self.client, self.backend, d.client_next),
                Segment::rst_to_client(self.service, self.client, d.client_ack),
            ],
            outcome,
        ))
    }

    fn probe(&mut self, d: &Drain, now_ns: u64) -> Step {
        let due = self
            .last_probe_ns
            .is_none_or(|at| now_ns >= at.saturating_add(nanos(PROBE_INTERVAL)));
        if !due {
            return Step::Wait;
        }
        self.last_probe_ns = Some(now_ns);
        // The client's first: its answer echoes the backend's last timestamp before the
        // backend's own answer (to the client) can replace it.
        Step::Send(vec![
            Segment::probe(self.service, self.client, d.client_ack),
            Segment::probe_backend(self.client, self.backend, d.client_next),
        ])
    }

    fn finish(&mut self, step: Step) -> Step {
        self.phase = Phase::Done;
        step
    }
}

/// How long the backend had been silent when it last answered (its answer to the drain's
/// probe, most often), from TCP timestamps (RFC 7323): the backend's clock then, less the
/// backend's clock at its last segment before the drain, which the client echoes. Both are the
/// backend's clock on one connection, in its ticks: milliseconds on Linux, the BSDs and
/// Windows. `None` without both timestamps, or once the client sent a request or the backend a
/// response during the drain (the drain's own record then tells more).
#[must_use]
pub fn quiet_before(d: &Drain) -> Option<Duration> {
    const BOTH: u8 = DRAIN_CLIENT_TS | DRAIN_BACKEND_TS;
    if d.seen & BOTH != BOTH || d.seen & (DRAIN_REQUEST | DRAIN_BACKEND) != 0 {
        return None;
    }
    let ticks = d.backend_tsval.wrapping_sub(d.client_tsecr) as i32;
    u64::try_from(ticks).ok().map(Duration::from_millis)
}

/// The client's numbers a reset depends on: what it sent, what it has, what reached the backend.
const fn numbers(d: &Drain) -> (u32, u32, u32) {
    (d.client_sent, d.client_ack, d.client_next)
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Whether the connection is idle: the client spoke since the drain began (so its numbers are
/// known), has no request waiting, and the backend has sent the whole of the last response.
/// The client need not have acknowledged it: the FIN goes right behind the response's last
/// byte (`server_next`), so it reaches the client before a client that read the response can
/// send another request (delayed ACKs would otherwise hold the close back until the next
/// request, which then races it).
#[must_use]
pub fn idle(d: &Drain, now_ns: u64) -> bool {
    d.seen & DRAIN_CLIENT != 0 && d.seen & DRAIN_REQUEST == 0 && response_over(d, now_ns)
}

/// The sequence number after the last byte the service sent the client: the backend's last
/// segment's end when one was seen during the drain, else what the client acknowledged.
const fn server_next(d: &Drain) -> u32 {
    if d.seen & DRAIN_BACKEND != 0 && seq_at_or_after(d.backend_next, d.client_ack) {
        d.backend_next
    } else {
        d.client_ack
    }
}

/// Whether the backend has sent the whole of its last response. Without a backend segment
/// since the drain began, there is nothing in flight that the client's acknowledgement does not
/// cover. With one, the response's head says where it ends; a response that began before the
/// drain, or whose head does not say, is over after `QUIET`.
fn response_over(d: &Drain, now_ns: u64) -> bool {
    if d.seen & DRAIN_BACKEND == 0 {
        return true;
    }
    let quiet = || now_ns >= d.backend_ns.saturating_add(nanos(QUIET));
    if d.seen & DRAIN_HEAD == 0 {
        // A response that began before the drain: over at a last chunk, or once quiet.
        return chunked_end(d) || quiet();
    }
    let head = &d.head[..usize::from(d.head_len).min(d.head.len())];
    match framing(head) {
        Framing::Length(body) => {
            let end = d
                .head_seq
                .wrapping_add(u32::try_from(body).unwrap_or(u32::MAX));
            seq_at_or_after(d.backend_next, end)
        }
        Framing::Chunked => chunked_end(d),
        Framing::Unknown => quiet(),
    }
}

/// Whether the backend's last segment ends a chunked body: its payload is the last chunk
/// (`0`, an empty trailer) alone (a server that writes it on its own, as most do), or ends with
/// it after the end of a line. The tail holds the segment's last eight bytes, of which
/// `tail_len` are payload.
fn chunked_end(d: &Drain) -> bool {
    const LAST_CHUNK: &[u8] = b"0\r\n\r\n";
    let n = usize::from(d.tail_len).min(DRAIN_TAIL_LEN);
    let payload = &d.tail[DRAIN_TAIL_LEN - n..];
    payload == LAST_CHUNK
        || (payload.len() > LAST_CHUNK.len()
            && payload.ends_with(LAST_CHUNK)
            && payload[..payload.len() - LAST_CHUNK.len()].ends_with(b"\n"))
}

/// How a response's length is known, from its head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// It ends this many bytes from its first (head and body).
    Length(usize),
    /// Its body is chunked: it ends with the last chunk.
    Chunked,
    /// The head does not say (headers longer than the head kept, or a body that ends with the
    /// connection).
    Unknown,
}

/// The framing of a response from its first bytes: status line and headers (RFC 9112 §6.3).
#[must_use]
pub fn framing(head: &[u8]) -> Framing {
    let Some(headers_end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Framing::Unknown;
    };
    let header_len = headers_end + 4;
    let text = String::from_utf8_lossy(&head[..headers_end]);
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse::<u16>().ok());
    if matches!(status, Some(204 | 304)) {
        return Framing::Length(header_len);
    }
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            return Framing::Chunked;
        }
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        }
    }
    length.map_or(Framing::Unknown, |body| Framing::Length(header_len + body))
}

#[cfg(test)]
mod tests {
    use splitter_common::drain::DRAIN_HEAD_LEN;

    use splitter_common::{
        RESPONSE_BODY,
        l7::{FLOW_L7_H2, FLOW_L7_OPAQUE, FLOW_L7_READ},
    };

    use super::*;
    use crate::model::{drain::DEFAULT_DRAIN_IDLE, segment::goaway};

    const MS: u64 = 1_000_000;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("address")
    }

    fn flow(reset: bool) -> FlowDrain {
        FlowDrain::new(
            addr("198.18.0.2:40000"),
            addr("198.18.0.1:8080"),
            addr("198.18.0.10:8080"),
            reset,
            0,
            (Duration::from_secs(30), DEFAULT_DRAIN_IDLE),
        )
    }

    fn drain(seen: u8) -> Drain {
        Drain {
            seen,
            client_next: 100,
            client_sent: 100,
            client_ack: 500,
            backend_next: 500,
            ..Drain::default()
        }
    }

    fn with_head(mut d: Drain, head: &[u8], head_seq: u32) -> Drain {
        d.head[..head.len()].copy_from_slice(head);
        d.head_len = head.len() as u16;
        d.head_seq = head_seq;
        d.seen |= DRAIN_HEAD | DRAIN_BACKEND;
        d
    }

    #[test]
    fn framing_reads_content_length_chunked_and_bodiless_statuses() {
        let head =
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length: 42\r\n\r\n{";
        // Everything up to the body's first byte, then 42 bytes of body.
        assert_eq!(framing(head), Framing::Length(head.len() - 1 + 42));
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\n"),
            Framing::Chunked
        );
        let no_content = b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n";
        assert_eq!(framing(no_content), Framing::Length(no_content.len()));
        assert_eq!(
            framing(b"HTTP/1.0 200 OK\r\n\r\nbody until close"),
            Framing::Unknown
        );
        assert_eq!(
            framing(&[b'x'; DRAIN_HEAD_LEN]),
            Framing::Unknown,
            "headers past the head kept"
        );
    }

    #[test]
    fn an_idle_connection_is_probed_then_closed_in_two_phases() {
        let mut f = flow(false);
        let nothing = Drain::default();
        // Never heard from: a probe, then nothing until the rate limit allows another.
        assert!(matches!(f.step(Some(&nothing), 0), Step::Send(s) if s[0].flags == 0x10));
        assert_eq!(f.step(Some(&nothing), 100 * MS), Step::Wait);
        assert!(matches!(f.step(Some(&nothing), 600 * MS), Step::Send(_)));
        // The answer: idle, and quiet since the drain began, so the mark, then the
        // confirmation with the same numbers.
        let answered = drain(DRAIN_CLIENT);
        // The flow table is asked whether an exchange is open: none.
        assert_eq!(f.step(Some(&answered), 601 * MS), Step::Ask);
        assert_eq!(
            f.answer(Exchange::Quiet, None, &answered, 601 * MS),
            Step::Mark(CLOSE_FIN)
        );
        match f.step(Some(&answered), 601 * MS) {
            Step::Close(segments, Outcome::DrainedIdle) => {
                assert_eq!(
                    segments[0],
                    Segment::fin_to_client(f.service, f.client, 500, 100)
                );
                assert_eq!(
                    segments[1],
                    Segment::rst_to_backend(f.client, f.backend, 100)
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(f.is_done());
    }

    #[test]
    fn a_quiet_connection_is_closed_once_its_idle_time_has_passed() {
        let quiet = drain(DRAIN_CLIENT);
        let with_idle = |port: u16, idle_ms: u64| {
            FlowDrain::new(
                SocketAddr::from(([198, 18, 0, 2], port)),
                addr("198.18.0.1:8080"),
                addr("198.18.0.10:8080"),
                false,
                0,
                (Duration::from_secs(30), Duration::from_millis(idle_ms)),
            )
        };
        for idle_ms in [10, 50, 1_000] {
            let mut f = with_idle(40000, idle_ms);
            assert_eq!(f.step(Some(&quiet), (idle_ms - 1) * MS), Step::Wait);
            assert_eq!(
                f.step(Some(&quiet), idle_ms * MS),
                Step::Ask,
                "{idle_ms} ms"
            );
            assert_eq!(
                f.answer(Exchange::Quiet, None, &quiet, idle_ms * MS),
                Step::Mark(CLOSE_FIN)
            );
            // An HTTP/2 connection waits SETTLE_H2 at most.
            let mut h2 = with_idle(40001, idle_ms).http2();
            let settle = idle_ms.min(10);
            assert_eq!(h2.step(Some(&quiet), (settle - 1) * MS), Step::Wait);
            assert_eq!(
                h2.step(Some(&quiet), settle * MS),
                Step::Ask,
                "{idle_ms} ms"
            );
        }
    }

    #[test]
    fn a_connection_quiet_long_before_the_drain_is_closed_at_once() {
        // The client echoes the backend's clock at its last segment (10_000); the backend's
        // answer to the probe says its clock is now 10_000 + quiet.
        let stamped = |quiet_ms: u32, also: u8| Drain {
            client_tsecr: 10_000,
            backend_tsval: 10_000u32.wrapping_add(quiet_ms),
            ..drain(DRAIN_CLIENT | DRAIN_CLIENT_TS | DRAIN_BACKEND_TS | also)
        };
        let idle = DEFAULT_DRAIN_IDLE.as_millis() as u32;
        assert_eq!(quiet_before(&stamped(idle, 0)), Some(DEFAULT_DRAIN_IDLE));
        // Quiet for the service's idle time already: asked, then closed, 1 ms into the drain.
        let mut f = flow(false);
        assert!(matches!(f.step(Some(&Drain::default()), 0), Step::Send(s) if s.len() == 2));
        let long = stamped(idle, 0);
        assert_eq!(f.step(Some(&long), MS), Step::Ask);
        assert_eq!(
            f.answer(Exchange::Quiet, None, &long, MS),
            Step::Mark(CLOSE_FIN)
        );
        assert!(matches!(
            f.step(Some(&long), MS),
            Step::Close(_, Outcome::DrainedIdle)
        ));
        // Quiet for 10 ms less: it waits until its quiet adds up, 10 ms after the probe.
        let mut g = flow(false);
        assert!(matches!(g.step(Some(&Drain::default()), 0), Step::Send(_)));
        let shorter = stamped(idle - 10, 0);
        assert_eq!(g.step(Some(&shorter), 9 * MS), Step::Wait);
        assert_eq!(g.step(Some(&shorter), 10 * MS), Step::Ask);
        // A timestamp that went back (another connection's clock, a wrap) says nothing.
        assert_eq!(quiet_before(&stamped(u32::MAX, 0)), None);
        let mut h = flow(false);
        assert!(matches!(h.step(Some(&Drain::default()), 0), Step::Send(_)));
        assert_eq!(h.step(Some(&stamped(u32::MAX, 0)), MS), Step::Wait);
        // Without both timestamps, or once a request or a response passed in the drain, the
        // drain's own record decides.
        let mut one = stamped(idle, 0);
        one.seen &= !DRAIN_BACKEND_TS;
        assert_eq!(quiet_before(&one), None);
        assert_eq!(quiet_before(&stamped(idle, DRAIN_REQUEST)), None);
        assert_eq!(quiet_before(&stamped(idle, DRAIN_BACKEND)), None);
        // Probes go to both sides: the client's first, then the backend's, as the client.
        match flow(false).step(Some(&Drain::default()), 0) {
            Step::Send(segments) => {
                assert_eq!(segments[0].dst, addr("198.18.0.2:40000"));
                assert_eq!(
                    segments[1],
                    Segment::probe_backend(addr("198.18.0.2:40000"), addr("198.18.0.10:8080"), 0)
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_client_that_spoke_during_the_decision_lifts_the_mark() {
        let mut f = flow(false);
        let answered = drain(DRAIN_CLIENT);
        // Idle, but no response seen yet: watched a little first.
        assert_eq!(f.step(Some(&answered), MS), Step::Wait);
        assert_eq!(f.step(Some(&answered), 101 * MS), Step::Ask);
        assert_eq!(
            f.answer(Exchange::Quiet, None, &answered, 101 * MS),
            Step::Mark(CLOSE_FIN)
        );
        let spoke = Drain {
            client_sent: 180,
            raced: 1,
            ..answered
        };
        assert_eq!(f.step(Some(&spoke), 101 * MS), Step::Unmark);
        // A request is now waiting: no close until its response is delivered.
        let waiting = Drain {
            seen: DRAIN_CLIENT | DRAIN_REQUEST,
            client_next: 180,
            ..spoke
        };
        assert_eq!(f.step(Some(&waiting), 102 * MS), Step::Wait);
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n";
        let end = 700 + head.len() as u32 + 10;
        // The response's head arrived (and answered the request) but not its body.
        let sending = with_head(
            Drain {
                seen: DRAIN_CLIENT,
                backend_next: 700 + head.len() as u32,
                client_ack: 700 + head.len() as u32,
                ..waiting
            },
            head,
            700,
        );
        assert_eq!(f.step(Some(&sending), 103 * MS), Step::Wait);
        // The body is out, not yet acknowledged: the FIN goes right behind its last byte.
        let sent = Drain {
            backend_next: end,
            ..sending
        };
        assert_eq!(f.step(Some(&sent), 104 * MS), Step::Ask);
        assert_eq!(
            f.answer(Exchange::Quiet, None, &sent, 104 * MS),
            Step::Mark(CLOSE_FIN)
        );
        match f.step(Some(&sent), 104 * MS) {
            Step::Close(segments, Outcome::DrainedAfterResponse) => assert_eq!(
                segments[0],
                Segment::fin_to_client(f.service, f.client, end, 180)
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_flow_tables_exchange_is_open_for_a_pending_request_a_stream_or_calls_in_flight() {
        let http1 = |request_ns: u64| Flow {
            request_ns,
            state: FLOW_L7_READ | splitter_common::l7::FLOW_L7_HTTP1,
            ..Flow::default()
        };
        assert_eq!(exchange(&http1(0), None), Exchange::Quiet);
        assert_eq!(exchange(&http1(4_000), None), Exchange::Waiting);
        assert_eq!(
            exchange(&http1(4_000 | RESPONSE_HEADERS_ONLY), None),
            Exchange::Waiting
        );
        assert_eq!(
            exchange(&http1(4_000 | RESPONSE_STREAMING), None),
            Exchange::Streaming
        );
        assert_eq!(
            exchange(&http1(4_000 | RESPONSE_BODY), None),
            Exchange::Quiet
        );
        let h2 = Flow {
            state: FLOW_L7_READ | FLOW_L7_H2,
            ..Flow::default()
        };
        let mut conn = H2Conn::new(1, 1);
        assert_eq!(exchange(&h2, Some(&conn)), Exchange::Quiet);
        conn.streams[3].id = 7;
        assert_eq!(exchange(&h2, Some(&conn)), Exchange::Waiting);
        conn.lost = 1;
        assert_eq!(
            exchange(&h2, Some(&conn)),
            Exchange::Quiet,
            "framing lost: its streams say nothing"
        );
        assert_eq!(exchange(&h2, None), Exchange::Quiet);
        let tls = |request_ns: u64| Flow {
            request_ns,
            state: FLOW_L7_READ | FLOW_L7_OPAQUE,
            ..Flow::default()
        };
        assert_eq!(exchange(&tls(0), None), Exchange::Quiet);
        assert_eq!(
            exchange(&tls(OPAQUE_CLIENT_LAST), None),
            Exchange::ClientSpokeLast
        );
        assert_eq!(
            exchange(&tls(splitter_common::OPAQUE_BACKEND_LAST), None),
            Exchange::Quiet
        );
    }

    #[test]
    fn a_request_in_flight_when_the_drain_began_is_answered_before_the_close() {
        let mut f = flow(false);
        let answered = drain(DRAIN_CLIENT);
        assert_eq!(f.step(Some(&answered), 101 * MS), Step::Ask);
        // The backend has not begun to answer a request sent before the drain.
        assert_eq!(
            f.answer(Exchange::Waiting, None, &answered, 101 * MS),
            Step::Wait
        );
        // Nothing new: the answer holds a while, then the flow table is asked again.
        assert_eq!(f.step(Some(&answered), 103 * MS), Step::Wait);
        assert_eq!(f.step(Some(&answered), 107 * MS), Step::Ask);
        assert_eq!(
            f.answer(Exchange::Waiting, None, &answered, 107 * MS),
            Step::Wait
        );
        // The response, whole: asked at once, and closed right behind it.
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let end = 500 + head.len() as u32;
        let answered_now = with_head(
            Drain {
                backend_next: end,
                ..answered
            },
            head,
            500,
        );
        assert_eq!(f.step(Some(&answered_now), 108 * MS), Step::Ask);
        assert_eq!(
            f.answer(Exchange::Quiet, None, &answered_now, 108 * MS),
            Step::Mark(CLOSE_FIN)
        );
        assert!(matches!(
            f.step(Some(&answered_now), 108 * MS),
            Step::Close(_, Outcome::DrainedAfterResponse)
        ));
    }

    #[test]
    fn an_http2_channel_is_closed_between_calls_with_a_goaway_naming_its_last_stream() {
        let mut f = flow(false).http2();
        // Calls and answers during the drain: no HTTP/1 head will ever come.
        let mut d = drain(DRAIN_CLIENT | DRAIN_REQUEST | DRAIN_BACKEND);
        assert_eq!(f.step(Some(&d), MS), Step::Ask);
        assert_eq!(
            f.answer(Exchange::Waiting, Some(5), &d, MS),
            Step::Wait,
            "a call in flight"
        );
        assert_eq!(f.step(Some(&d), 2 * MS), Step::Wait);
        // Its answer's frames: the calls are all answered now.
        d.backend_next = 560;
        d.client_ack = 560;
        assert_eq!(f.step(Some(&d), 3 * MS), Step::Ask);
        assert_eq!(
            f.answer(Exchange::Quiet, Some(7), &d, 3 * MS),
            Step::Mark(CLOSE_FIN)
        );
        match f.step(Some(&d), 3 * MS) {
            Step::Close(segments, Outcome::DrainedAfterResponse) => {
                assert_eq!(
                    segments[0],
                    Segment::fin_to_h2_client(f.service, f.client, 560, 100, 7)
                );
                assert_eq!(segments[0].payload, Some(goaway(7)));
            }
            other => panic!("{other:?}"),
        }
        // A TLS connection (nothing read): quiet since the drain began, it waits its settle
        // (DEFAULT_DRAIN_IDLE); then, its client having spoken last (a request may wait), up
        // to UNREAD_WAIT.
        let mut tls = flow(false);
        let quiet = drain(DRAIN_CLIENT);
        assert_eq!(tls.step(Some(&quiet), 11 * MS), Step::Wait);
        assert_eq!(tls.step(Some(&quiet), 101 * MS), Step::Ask);
        assert_eq!(
            tls.answer(Exchange::ClientSpokeLast, None, &quiet, 101 * MS),
            Step::Wait
        );
        assert_eq!(tls.step(Some(&quiet), 4_000 * MS), Step::Ask);
        assert_eq!(
            tls.answer(Exchange::ClientSpokeLast, None, &quiet, 4_000 * MS),
            Step::Wait
        );
        assert_eq!(tls.step(Some(&quiet), 5_001 * MS), Step::Ask);
        assert_eq!(
            tls.answer(Exchange::ClientSpokeLast, None, &quiet, 5_001 * MS),
            Step::Mark(CLOSE_FIN),
            "a request unanswered that long is given up"
        );
        // A channel quiet since the drain began waits SETTLE_H2, then goes the same way.
        let mut g = flow(false).http2();
        let quiet = drain(DRAIN_CLIENT);
        assert_eq!(g.step(Some(&quiet), MS), Step::Wait);
        assert_eq!(g.step(Some(&quiet), 11 * MS), Step::Ask);
        assert_eq!(
            g.answer(Exchange::Quiet, Some(3), &quiet, 11 * MS),
            Step::Mark(CLOSE_FIN)
        );
    }

    #[test]
    fn a_stream_that_began_before_the_drain_is_closed_after_its_last_chunk_or_a_silence() {
        let mut f = flow(false);
        let mut d = drain(DRAIN_CLIENT);
        assert_eq!(f.step(Some(&d), 101 * MS), Step::Ask);
        assert_eq!(
            f.answer(Exchange::Streaming, None, &d, 101 * MS),
            Step::Wait
        );
        // A chunk 300 ms later (far past the settle): still streaming, by the record too.
        d.seen |= DRAIN_BACKEND;
        d.backend_next = 600;
        d.client_ack = 600;
        d.backend_ns = 400 * MS;
        d.tail = *b"data\n\n\r\n";
        d.tail_len = 8;
        assert_eq!(f.step(Some(&d), 450 * MS), Step::Wait);
        // Its last chunk: the flow table's phase is over.
        d.backend_next = 605;
        d.client_ack = 605;
        d.backend_ns = 1_350 * MS;
        d.tail = *b"\n\n\x000\r\n\r\n";
        d.tail_len = 5;
        assert_eq!(f.step(Some(&d), 1_351 * MS), Step::Ask);
        assert_eq!(
            f.answer(Exchange::Quiet, None, &d, 1_351 * MS),
            Step::Mark(CLOSE_FIN)
        );
        // A stream whose backend went silent for QUIET is over too.
        let mut g = flow(false);
        let d = drain(DRAIN_CLIENT);
        assert_eq!(g.step(Some(&d), 101 * MS), Step::Ask);
        assert_eq!(
            g.answer(Exchange::Streaming, None, &d, 101 * MS),
            Step::Wait
        );
        assert_eq!(g.step(Some(&d), 1_001 * MS), Step::Ask);
        assert_eq!(
            g.answer(Exchange::Streaming, None, &d, 1_001 * MS),
            Step::Mark(CLOSE_FIN)
        );
    }

    #[test]
    fn a_chunked_response_is_over_at_its_last_chunk_and_an_unknown_one_after_quiet() {
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut d = with_head(drain(DRAIN_CLIENT), head, 400);
        d.backend_ns = 10 * MS;
        d.tail = *b"\r\n5\r\nhel";
        d.tail_len = 8;
        assert!(!idle(&d, 11 * MS));
        d.tail = *b"o\r\n\n0\r\n\r";
        assert!(!idle(&d, 11 * MS), "a last chunk cut short");
        d.tail = *b"\r\n\n0\r\n\r\n";
        assert!(idle(&d, 11 * MS));
        // The last chunk alone in its segment: the tail's first bytes are not payload.
        d.tail = *b"\x50\x18\x000\r\n\r\n";
        d.tail_len = 5;
        assert!(idle(&d, 11 * MS));
        d.tail = *b"\r\n\x00\x0010\r\n";
        assert!(!idle(&d, 11 * MS), "a chunk of 16 bytes begins");
        // A response that began before the drain: over once quiet.
        let mut old = drain(DRAIN_CLIENT | DRAIN_BACKEND);
        old.backend_ns = 10 * MS;
        assert!(!idle(&old, 500 * MS));
        assert!(idle(&old, 10 * MS + 1_000 * MS));
    }

    #[test]
    fn a_busy_connection_is_reset_at_the_timeout_once_its_numbers_hold() {
        let mut f = flow(false);
        let busy = drain(DRAIN_CLIENT | DRAIN_REQUEST);
        assert_eq!(f.step(Some(&busy), MS), Step::Wait);
        let late = 30_001 * MS;
        assert_eq!(f.step(Some(&busy), late), Step::Mark(CLOSE_RESET));
        assert_eq!(f.step(Some(&busy), late + MS), Step::Wait);
        match f.step(Some(&busy), late + 3 * MS) {
            Step::Close(segments, Outcome::ResetAtTimeout) => {
                assert_eq!(
                    segments[1],
                    Segment::rst_to_client(f.service, f.client, 500)
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn closes_by_the_peers_and_silent_clients_end_without_packets() {
        let mut f = flow(true);
        assert_eq!(
            f.step(Some(&drain(DRAIN_CLIENT | DRAIN_CLOSED)), MS),
            Step::Done(Outcome::ClosedByPeers)
        );
        let mut g = flow(false);
        assert!(matches!(g.step(Some(&Drain::default()), 0), Step::Send(_)));
        assert_eq!(
            g.step(Some(&Drain::default()), 2_001 * MS),
            Step::Done(Outcome::NoAnswer)
        );
        let mut h = flow(false);
        assert_eq!(h.step(None, 0), Step::Done(Outcome::ClosedByPeers));
    }
}

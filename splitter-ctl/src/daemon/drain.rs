//! Drains under way: the connections of the version a rollback (or a promotion) left, each
//! closed at its first idle moment or reset, as `engine::drain` decides, with the segments
//! `kernel::closer` sends. The daemon polls its runs every millisecond in one task; the CLI
//! runs one to its end itself when no daemon answers (`run_to_end`).

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::SocketAddr,
    time::Duration,
};

use splitter_common::{
    FLOW_RST, Flow, FlowKey, Version,
    drain::CLOSE_FIN,
    flow_closed,
    l7::{Read, read_kind},
    maps::MAX_DRAINS,
};

use crate::{
    engine::drain::{self, Exchange, FlowDrain, Outcome, Step},
    kernel::{
        aging::monotonic_ns,
        closer::Closer,
        maps::{Maps, MapsError},
    },
    model::{
        addr::addr_ip,
        drain::{Cause, Established},
        error::chain,
        units::micros,
    },
    view::drain::DrainReport,
};

/// How often a drain reads what the data plane saw: a close that follows a response must reach
/// the client before it can send the next request on that connection (a pooling client hands
/// a connection back within a fraction of a millisecond).
pub const POLL: Duration = Duration::from_micros(200);
/// After a close, how long the flow stays marked, so that a request racing it is still dropped.
pub const LINGER: Duration = Duration::from_secs(1);
/// Connections the request that starts a drain takes on and probes itself (the poller, the
/// rest): a few milliseconds of work at most, well within the CLI's wait for its answer.
const FIRST_ROUND: usize = 256;
/// When the flow table is walked again for connections the first walk missed (opened while
/// the rollback was being written), after the drain began.
const REWALKS: [Duration; 2] = [Duration::from_millis(100), Duration::from_secs(1)];

/// Runs `poll` (one round of every drain: `None` when none is left, else the round's time
/// spent sending) until it says none is left, on a thread of its own: the runtime's timers
/// tick by the millisecond, too coarse for a close that must reach a client before it reuses
/// its connection. Between rounds it sleeps `POLL`, or as long as the round took less its
/// sends, whichever is longer, so that reading the maps never takes more than half a core. The
/// sends are left out: the network's work on them (a peer's answer to a probe, through the
/// data plane) runs in them, and a round of probes would otherwise hold back the round that
/// reads their answers by as long again.
pub fn poller(poll: impl FnMut() -> Option<Duration> + Send) {
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("splitter-drain".to_owned())
            .spawn_scoped(scope, move || {
                let mut poll = poll;
                loop {
                    let started = std::time::Instant::now();
                    let Some(sending) = poll() else {
                        return;
                    };
                    std::thread::sleep(started.elapsed().saturating_sub(sending).max(POLL));
                }
            });
        if let Err(error) = thread {
            tracing::error!(error = %error, "cannot start the drain poller");
        }
    });
}

/// Which connections a drain takes on.
#[derive(Clone, Debug)]
pub enum Take {
    /// The version's open connections when the drain began, and those the first walk missed
    /// (opened while the rollback was being written).
    Version,
    /// These, past the service's `max_connection_age_ms` (no walk of their own).
    Aged(Vec<(FlowKey, Flow)>),
}

/// What to drain.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The service or release group (the journal's name).
    pub release: String,
    /// The ids of its services in the data plane.
    pub ids: Vec<u32>,
    /// The version left.
    pub version: Version,
    /// `Drain` or `Reset` (`Keep` drains nothing).
    pub established: Established,
    /// How long a connection may stay busy before it is reset.
    pub timeout: Duration,
    /// How long a connection that shows no request is left before it is closed while idle.
    pub idle: Duration,
    /// Over how long the connections are taken on (a promotion's window; 0 for a rollback).
    pub spread: Duration,
    /// The decision, on the kernel's clock.
    pub decided_ns: u64,
    pub take: Take,
}

impl Plan {
    #[must_use]
    pub const fn cause(&self) -> Cause {
        match self.take {
            Take::Version => Cause::Left,
            Take::Aged(_) => Cause::MaxAge,
        }
    }
}

/// A drain under way.
#[derive(Debug)]
pub struct Run {
    plan: Plan,
    started_ns: u64,
    /// Connections not taken on yet, by when they are due.
    pending: VecDeque<(u64, FlowKey, Flow)>,
    active: HashMap<FlowKey, FlowDrain>,
    /// Closed connections still marked: when they closed, and the requests that had raced the
    /// close by then (any after are counted when the mark is lifted).
    lingering: Vec<(FlowKey, u64, u32)>,
    /// Every connection taken on or pending.
    known: std::collections::HashSet<FlowKey>,
    outcomes: BTreeMap<&'static str, u64>,
    raced: u64,
    last_close_ns: Option<u64>,
    rewalks_done: usize,
    /// The version's counters at the decision: new flows and responses.
    base: (u64, u64),
    /// Sends that failed, for one log line.
    send_errors: u64,
}

impl Run {
    /// Takes on the open connections of the plan's version (TCP; UDP has nothing to close).
    pub fn start(maps: &mut Maps, plan: Plan) -> Result<Self, MapsError> {
        let now = monotonic_ns();
        let base = version_totals(maps, &plan)?;
        let mut run = Self {
            plan,
            started_ns: now,
            pending: VecDeque::new(),
            active: HashMap::new(),
            lingering: Vec::new(),
            known: std::collections::HashSet::new(),
            outcomes: Outcome::ALL.iter().map(|o| (o.name(), 0)).collect(),
            raced: 0,
            last_close_ns: None,
            rewalks_done: 0,
            base: (base.0, base.1),
            send_errors: 0,
        };
        match std::mem::replace(&mut run.plan.take, Take::Version) {
            Take::Version => run.walk(maps, now)?,
            Take::Aged(flows) => {
                run.plan.take = Take::Aged(Vec::new());
                run.rewalks_done = REWALKS.len();
                for (key, flow) in flows {
                    if run.known.insert(key) {
                        run.pending.push_back((now, key, flow));
                    }
                }
            }
        }
        Ok(run)
    }

    /// What it drains.
    #[must_use]
    pub const fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Whether every connection is closed and unmarked.
    #[must_use]
    pub fn done(&self) -> bool {
        self.rewalks_done == REWALKS.len()
            && self.pending.is_empty()
            && self.active.is_empty()
            && self.lingering.is_empty()
    }

    /// Adds the version's open connections not known yet, due at once (a rollback) or spread
    /// over the plan's window (a promotion), each at a point its hash picks.
    fn walk(&mut self, maps: &Maps, now: u64) -> Result<(), MapsError> {
        let spread = u64::try_from(self.plan.spread.as_nanos()).unwrap_or(u64::MAX);
        let mut found: Vec<(u64, FlowKey, Flow)> = maps
            .flows()?
            .into_iter()
            .filter(|(key, flow)| {
                key.protocol == splitter_common::PROTO_TCP
                    && flow.version == self.plan.version as u8
                    && self.plan.ids.contains(&flow.service_id)
                    && !flow_closed(flow.state)
                    && flow.state & FLOW_RST == 0
                    && !self.known.contains(key)
                    // Opened before the drain began: a flow the version got after that was
                    // steered there by a later split (a drill's share put back, a weight),
                    // not one that raced the rollback's write.
                    && flow.created_ns <= self.started_ns
            })
            .map(|(key, flow)| {
                let at = if spread == 0 {
                    now
                } else {
                    now + splitter_common::flow_hash(&key) % spread
                };
                (at, key, flow)
            })
            .collect();
        found.sort_by_key(|(at, _, _)| *at);
        for (at, key, flow) in found {
            self.known.insert(key);
            self.pending.push_back((at, key, flow));
        }
        Ok(())
    }

    /// The first round, in the request that starts the drain: takes on at most `FIRST_ROUND`
    /// connections and probes them, so that the request answers at once however many there
    /// are; the poller takes on the rest.
    pub fn first_round(&mut self, maps: &mut Maps, closer: &mut Closer) -> Result<(), MapsError> {
        self.take_on_and_step(maps, closer, monotonic_ns(), FIRST_ROUND)
    }

    /// Takes on at most `most` of the connections due, then steps every one under way.
    fn take_on_and_step(
        &mut self,
        maps: &mut Maps,
        closer: &mut Closer,
        now: u64,
        most: usize,
    ) -> Result<(), MapsError> {
        self.take_on_due(maps, now, most)?;
        let keys: Vec<FlowKey> = self.active.keys().copied().collect();
        for key in keys {
            self.poll_flow(maps, closer, key, now)?;
        }
        Ok(())
    }

    /// One round: takes on the connections due, reads what the data plane saw of each, and
    /// acts on it.
    pub fn poll(&mut self, maps: &mut Maps, closer: &mut Closer) -> Result<(), MapsError> {
        let now = monotonic_ns();
        if matches!(self.plan.take, Take::Version)
            && let Some(after) = REWALKS.get(self.rewalks_done)
            && now >= self.started_ns + micros(*after) * 1_000
        {
            self.walk(maps, now)?;
            self.rewalks_done += 1;
        }
        self.take_on_and_step(maps, closer, now, MAX_DRAINS as usize)?;
        let linger = micros(LINGER) * 1_000;
        let (gone, still): (Vec<_>, Vec<_>) = self
            .lingering
            .drain(..)
            .partition(|(_, closed, _)| now >= closed + linger);
        self.lingering = still;
        for (key, _, raced_at_close) in gone {
            // Requests that crossed the FIN on the wire: dropped unprocessed, and counted.
            if let Some(record) = maps.drain_record(&key)? {
                self.raced += u64::from(record.raced.saturating_sub(raced_at_close));
            }
            maps.end_drain(&key)?;
        }
        if self.send_errors > 0 {
            tracing::warn!(service = %self.plan.release, failed = self.send_errors, "drain segments could not be sent");
            self.send_errors = 0;
        }
        Ok(())
    }

    fn take_on_due(&mut self, maps: &mut Maps, now: u64, most: usize) -> Result<(), MapsError> {
        let room = (MAX_DRAINS as usize)
            .saturating_sub(self.active.len() + self.lingering.len())
            .min(most);
        let mut due = Vec::new();
        while due.len() < room
            && let Some((at, _, _)) = self.pending.front()
            && *at <= now
        {
            if let Some(entry) = self.pending.pop_front() {
                due.push(entry);
            }
        }
        if due.is_empty() {
            return Ok(());
        }
        let flows: Vec<(FlowKey, Flow)> = due.iter().map(|(_, key, flow)| (*key, *flow)).collect();
        let marked = maps.begin_drain(&flows)?;
        let reset = self.plan.established == Established::Reset;
        for (_, key, flow) in due {
            if !marked.contains(&key) {
                continue;
            }
            let client = SocketAddr::new(addr_ip(&key.src_addr), u16::from_be(key.src_port_be));
            let service = SocketAddr::new(addr_ip(&key.dst_addr), u16::from_be(key.dst_port_be));
            let backend = SocketAddr::new(
                addr_ip(&flow.backend_addr),
                u16::from_be(flow.backend_port_be),
            );
            let limits = (self.plan.timeout, self.plan.idle);
            let drain = FlowDrain::new(client, service, backend, reset, now, limits);
            self.active.insert(
                key,
                if read_kind(&flow) == Read::H2 {
                    drain.http2()
                } else {
                    drain
                },
            );
        }
        Ok(())
    }

    fn poll_flow(
        &mut self,
        maps: &mut Maps,
        closer: &mut Closer,
        key: FlowKey,
        now: u64,
    ) -> Result<(), MapsError> {
        let Some(flow) = self.active.get_mut(&key) else {
            return Ok(());
        };
        let mut record = maps.drain_record(&key)?;
        let mut step = flow.step(record.as_ref(), now);
        loop {
            match step {
                Step::Wait => return Ok(()),
                Step::Send(segments) => {
                    for segment in &segments {
                        if closer.may_send() && closer.send(segment).is_err() {
                            self.send_errors += 1;
                        }
                    }
                    return Ok(());
                }
                Step::Mark(how) => {
                    maps.mark_closing(&key, how)?;
                    if how != CLOSE_FIN {
                        return Ok(());
                    }
                    // Read again after the mark: the close goes out only if the client said
                    // nothing in between.
                    record = maps.drain_record(&key)?;
                    step = flow.step(record.as_ref(), now);
                }
                Step::Unmark => return maps.unmark_closing(&key),
                Step::Ask => {
                    let Some(d) = record.as_ref() else {
                        return Ok(());
                    };
                    // A flow no longer in the table has no exchange open.
                    let (exchange, last_stream) = match maps.flow(&key)? {
                        Some(entry) if read_kind(&entry) == Read::H2 => {
                            let conn = maps.h2_conn(&key)?;
                            (
                                drain::exchange(&entry, conn.as_ref()),
                                conn.map(|c| c.last_client_stream),
                            )
                        }
                        Some(entry) => (drain::exchange(&entry, None), None),
                        None => (Exchange::Quiet, None),
                    };
                    step = flow.answer(exchange, last_stream, d, now);
                }
                Step::Close(segments, outcome) => {
                    // Closes are never paced out: a marked flow must not stay half closed.
                    for segment in &segments {
                        if closer.send(segment).is_err() {
                            self.send_errors += 1;
                        }
                    }
                    // Every close resets the backend's side: the flow table records it, so
                    // the flow counts as closed and the backend's RST to the client's last
                    // packets is not counted as the version's error (one RST per flow counts).
                    maps.set_flow_reset(&key)?;
                    let raced = record.as_ref().map_or(0, |r| r.raced);
                    self.raced += u64::from(raced);
                    self.finish(key, outcome, now);
                    self.lingering.push((key, now, raced));
                    self.last_close_ns = Some(now);
                    return Ok(());
                }
                Step::Done(outcome) => {
                    self.raced += record.as_ref().map_or(0, |r| u64::from(r.raced));
                    self.finish(key, outcome, now);
                    return maps.end_drain(&key);
                }
            }
        }
    }

    fn finish(&mut self, key: FlowKey, outcome: Outcome, now: u64) {
        self.active.remove(&key);
        *self.outcomes.entry(outcome.name()).or_default() += 1;
        if outcome == Outcome::ClosedByPeers {
            self.last_close_ns = Some(self.last_close_ns.map_or(now, |at| at.max(now)));
        }
    }

    /// Stops: lifts every mark and forgets every record it made (a daemon stopping, a drain
    /// replaced by another).
    pub fn abandon(&mut self, maps: &mut Maps) {
        for key in self
            .active
            .keys()
            .copied()
            .chain(self.lingering.iter().map(|(key, _, _)| *key))
            .collect::<Vec<_>>()
        {
            if let Err(error) = maps.end_drain(&key) {
                tracing::warn!(error = %chain(&error), "cannot forget a drained flow");
            }
        }
        self.active.clear();
        self.lingering.clear();
        self.pending.clear();
    }

    /// What it did so far.
    #[must_use]
    pub fn report(&self, maps: &Maps) -> DrainReport {
        let decided = self.plan.decided_ns;
        let since = |at_ns: u64| at_ns.saturating_sub(decided) / 1_000;
        let totals = version_totals(maps, &self.plan).unwrap_or(self.base_as_totals());
        DrainReport {
            service: self.plan.release.clone(),
            version: self.plan.version.name().to_owned(),
            cause: self.plan.cause().name().to_owned(),
            established: self.plan.established.name().to_owned(),
            done: self.done(),
            connections: self.known.len() as u64,
            left: (self.pending.len() + self.active.len()) as u64,
            outcomes: self
                .outcomes
                .iter()
                .map(|(outcome, n)| ((*outcome).to_owned(), *n))
                .collect(),
            raced: self.raced,
            new_connections_after_decision: totals.0.saturating_sub(self.base.0),
            responses_after_decision: totals.1.saturating_sub(self.base.1),
            decision_to_start_us: since(self.started_ns),
            decision_to_last_response_us: Some(since(totals.2)),
            decision_to_last_close_us: self.last_close_ns.map(since),
        }
    }

    const fn base_as_totals(&self) -> (u64, u64, u64) {
        (self.base.0, self.base.1, 0)
    }
}

/// The version's new flows, responses and last response (kernel time) over the plan's
/// services.
fn version_totals(maps: &Maps, plan: &Plan) -> Result<(u64, u64, u64), MapsError> {
    let mut totals = (0, 0, 0);
    for id in &plan.ids {
        let c = maps.counters(*id, plan.version)?;
        totals.0 += c.new_flows;
        totals.1 += c.responses;
        totals.2 = totals.2.max(c.last_response_ns);
    }
    Ok(totals)
}

/// Runs a drain to its end in this thread (the CLI, when no daemon answers); its report.
pub fn run_to_end(maps: &mut Maps, plan: Plan) -> Result<DrainReport, DrainError> {
    let mut closer = Closer::open().map_err(DrainError::Sockets)?;
    let mut run = Run::start(maps, plan)?;
    let mut failed = None;
    poller(|| match run.poll(maps, &mut closer) {
        Ok(()) => (!run.done()).then(|| closer.take_sending()),
        Err(error) => {
            failed = Some(error);
            None
        }
    });
    if let Some(error) = failed {
        run.abandon(maps);
        return Err(error.into());
    }
    maps.set_drain_active(!maps.drained_flows().is_empty())?;
    Ok(run.report(maps))
}

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("the policy is `keep`: nothing to drain")]
    Keep,
    #[error("cannot open the raw sockets a drain sends its closes on")]
    Sockets(#[source] std::io::Error),
    #[error(transparent)]
    Maps(#[from] MapsError),
}

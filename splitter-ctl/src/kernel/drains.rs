//! The drain's maps (`DRAINS`, `DRAIN_CLOSING`, `DRAIN_ACTIVE`): marking the flows to drain,
//! reading what the data plane saw of them, marking one closing, and clearing up.

use aya::maps::MapError;
use splitter_common::{FLOW_RST, Flow, FlowKey, drain::Drain, l7::H2Conn, maps as names};

use super::maps::{Maps, MapsError, access, is_missing_key};

/// Creates a zeroed entry with `BPF_NOEXIST`: a flow already being drained keeps its record.
const NO_EXIST: u64 = 1;
/// Updates an entry only if it is still there (`BPF_EXIST`).
const BPF_EXIST: u64 = 2;

impl Maps {
    /// Marks `flows` for draining (those not marked yet, as many as `DRAINS` holds), turns the
    /// drain on, and empties their sets of the flow cache and of the reply cache, so that
    /// every packet of theirs, either way, is seen (egress does not cache a drained flow's
    /// reply again). Returns the keys marked.
    pub fn begin_drain(&mut self, flows: &[(FlowKey, Flow)]) -> Result<Vec<FlowKey>, MapsError> {
        let mut marked = Vec::new();
        let mut reply_sets = Vec::new();
        for (key, flow) in flows {
            match self.drains.insert(key, Drain::default(), NO_EXIST) {
                Ok(()) => {
                    marked.push(*key);
                    reply_sets.push(
                        key.reply(&flow.backend_addr, flow.backend_port_be)
                            .cache_set(),
                    );
                }
                // Already draining, or the map is full: the rest wait for another round.
                Err(MapError::SyscallError(e))
                    if matches!(
                        e.io_error.raw_os_error(),
                        Some(libc::EEXIST | libc::E2BIG | libc::ENOSPC)
                    ) => {}
                Err(e) => return Err(access(names::DRAINS, "mark a flow to drain")(e)),
            }
        }
        self.set_drain_active(true)?;
        let mut sets: Vec<u32> = marked.iter().map(FlowKey::cache_set).collect();
        sets.sort_unstable();
        sets.dedup();
        for set in sets {
            self.clear_cache_set(set)?;
        }
        reply_sets.sort_unstable();
        reply_sets.dedup();
        for set in reply_sets {
            self.clear_reply_set(set)?;
        }
        Ok(marked)
    }

    /// An HTTP/2 connection's state (its calls in flight), if the kernel reads it.
    pub fn h2_conn(&self, key: &FlowKey) -> Result<Option<H2Conn>, MapsError> {
        match self.h2_conns.get(key, 0) {
            Ok(conn) => Ok(Some(conn)),
            Err(e) if is_missing_key(&e) => Ok(None),
            Err(e) => Err(access(names::H2_CONNS, "read an HTTP/2 connection")(e)),
        }
    }

    /// What the data plane has seen of a flow being drained; `None` once its entry is gone.
    pub fn drain_record(&self, key: &FlowKey) -> Result<Option<Drain>, MapsError> {
        match self.drains.get(key, 0) {
            Ok(drain) => Ok(Some(drain)),
            Err(e) if is_missing_key(&e) => Ok(None),
            Err(e) => Err(access(names::DRAINS, "read a drained flow")(e)),
        }
    }

    /// Marks a flow closing (`CLOSE_FIN` or `CLOSE_RESET`), then fences: the mark's stores
    /// are visible before any read that follows (x86 lets a load pass an earlier store, and a
    /// syscall's return does not stop it), so that the read of the client's numbers after the
    /// mark and ingress's read of the mark after its store of them cannot both miss.
    pub fn mark_closing(&mut self, key: &FlowKey, how: u32) -> Result<(), MapsError> {
        self.drain_closing
            .insert(key, how, 0)
            .map_err(access(names::DRAIN_CLOSING, "mark a flow closing"))?;
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Lifts a flow's closing mark.
    pub fn unmark_closing(&mut self, key: &FlowKey) -> Result<(), MapsError> {
        match self.drain_closing.remove(key) {
            Ok(()) => Ok(()),
            Err(e) if is_missing_key(&e) => Ok(()),
            Err(e) => Err(access(names::DRAIN_CLOSING, "lift a closing mark")(e)),
        }
    }

    /// Forgets a drained flow: its record and its closing mark.
    pub fn end_drain(&mut self, key: &FlowKey) -> Result<(), MapsError> {
        self.unmark_closing(key)?;
        match self.drains.remove(key) {
            Ok(()) => Ok(()),
            Err(e) if is_missing_key(&e) => Ok(()),
            Err(e) => Err(access(names::DRAINS, "forget a drained flow")(e)),
        }
    }

    /// The flows marked for draining (left by a drain that did not finish, say).
    pub fn drained_flows(&self) -> Vec<FlowKey> {
        // Entries can go while we iterate; skip those instead of failing.
        self.drains.keys().filter_map(Result::ok).collect()
    }

    /// Records in the flow table that a drain reset the flow's backend side: its RST went out
    /// on a raw socket, past the programs that would have seen it. The flow then counts as
    /// closed, and the backend's RST in answer to the client's last packets is not counted as
    /// a backend reset (the programs count one per flow). A flow gone meanwhile is left so.
    pub fn set_flow_reset(&mut self, key: &FlowKey) -> Result<(), MapsError> {
        let Some(mut flow) = self.flow(key)? else {
            return Ok(());
        };
        flow.state |= FLOW_RST;
        match self.flows.insert(key, flow, BPF_EXIST) {
            Ok(()) => Ok(()),
            Err(e) if is_missing_key(&e) => Ok(()),
            Err(e) => Err(access(names::FLOWS, "mark a drained flow reset")(e)),
        }
    }

    /// Turns the drain's lookups on or off for every other flow.
    pub fn set_drain_active(&mut self, active: bool) -> Result<(), MapsError> {
        self.drain_active
            .set(0, u32::from(active), 0)
            .map_err(access(names::DRAIN_ACTIVE, "switch the drain"))
    }
}

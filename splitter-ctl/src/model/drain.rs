//! What a rollback does to the connections already on the version it leaves, and the drain's
//! time limits: one place for the policy's names and the defaults.

use std::time::Duration;

/// The policy for the connections of the version a rollback (or a promotion) leaves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Established {
    /// Leave them: they end when their clients close them.
    Keep,
    /// Close each at its first idle moment, as a server closes an idle keep-alive connection;
    /// one still busy after the drain timeout is reset.
    #[default]
    Drain,
    /// Reset both sides at once.
    Reset,
}

impl Established {
    pub const ALL: [Self; 3] = [Self::Keep, Self::Drain, Self::Reset];

    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Keep => "keep",
            Self::Drain => "drain",
            Self::Reset => "reset",
        }
    }

    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// A service's drain settings (config `established`, `drain_timeout_ms`, `drain_idle_ms`,
/// `retire_drain_window_ms`, `max_connection_age_ms`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainSettings {
    /// What a rollback does to the connections of the version it leaves.
    pub established: Established,
    /// How long a connection may stay busy during a drain before it is reset.
    pub timeout: Duration,
    /// How long a connection that shows no request during a drain is left before it is closed
    /// while idle (`DEFAULT_DRAIN_IDLE`).
    pub idle: Duration,
    /// Over how long a promotion drains the retired version (zero: at once).
    pub retire_window: Duration,
    /// Connections older than this (plus up to a tenth of it, per connection) are drained at
    /// their next idle moment, whatever their version: a share set by a rollout step reaches
    /// long-lived clients too. `None`: never (the default).
    pub max_age: Option<Duration>,
}

impl DrainSettings {
    /// `idle` for a drain no one waits for (a promotion's retired version, connections past
    /// their age): at least `UNHURRIED_IDLE`.
    #[must_use]
    pub fn unhurried_idle(&self) -> Duration {
        self.idle.max(UNHURRIED_IDLE)
    }
}

impl Default for DrainSettings {
    fn default() -> Self {
        Self {
            established: Established::Drain,
            timeout: DEFAULT_DRAIN_TIMEOUT,
            idle: DEFAULT_DRAIN_IDLE,
            retire_window: DEFAULT_RETIRE_WINDOW,
            max_age: None,
        }
    }
}

/// How long a connection may stay busy during a drain before it is reset (config
/// `drain_timeout_ms`): long streaming responses finish within it.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an HTTP/1 (or unread) connection that shows no request during a drain is watched
/// before it is closed while idle (config `drain_idle_ms`). A connection a pooling client keeps
/// in rotation shows a request within its think time and is then closed right behind that
/// request's response, before the client can reuse it; closing it at a random moment of its
/// idle gap instead races the client's next request on it (the FIN's way to the client, and a
/// Python client's stall between urllib3's check of the connection and its send), and that
/// request fails, counted as raced. The price the other way: a quiet connection that a client
/// picks up within this time is answered by the version left, then closed. Measured: at 10 ms,
/// 32 clients sharing one pool saw no answer from the version left after the decision and no
/// failure over 5 rollbacks, but 16 clients with 10 ms think time each (closed again and again
/// by `max_connection_age_ms`) lost several requests in a run; at 100 ms, the version left
/// answered the 32 for 42-46 ms (medians) and 49-76 ms (maxima) after the command in three
/// runs, with no failure, but a pooled connection picked up at the end of the wait was
/// answered 119 ms after the command in a full test run, past the 100 ms a rollback promises. 50 ms
/// keeps that margin; a client whose think time is shorter still shows a request within it.
pub const DEFAULT_DRAIN_IDLE: Duration = Duration::from_millis(50);
/// The least a drain no one waits for waits on a quiet connection (a promotion's retired
/// version, connections past `max_connection_age_ms`): nothing is urgent, so a connection in a
/// pool's rotation gets the time to show a request and be closed right behind its response.
/// Measured: at 50 ms, 16 pooled clients with 10 ms think time lost 2 requests in a full run
/// to `max_connection_age_ms` closing their connections again and again while idle.
pub const UNHURRIED_IDLE: Duration = Duration::from_secs(1);
/// The longest `drain_idle_ms` a config may ask for: a minute.
pub const MAX_DRAIN_IDLE_MS: u64 = 60_000;
/// The longest drain timeout and retire window a config may ask for: one day.
pub const MAX_DRAIN_MS: u64 = 24 * 3_600_000;
/// Over how long a promotion drains the retired version's connections (config
/// `retire_drain_window_ms`), so that its clients do not all reconnect at once.
pub const DEFAULT_RETIRE_WINDOW: Duration = Duration::from_secs(300);
/// The shortest `max_connection_age_ms` a config may ask for: a connection lives at least a
/// second (the flow table is looked at every `SWEEP_INTERVAL` anyway).
pub const MIN_CONNECTION_AGE_MS: u64 = 1_000;

/// Why a drain runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// A rollback, a promotion, a drill or an operator's request left a version.
    Left,
    /// Connections older than the service's `max_connection_age_ms`.
    MaxAge,
}

impl Cause {
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Left => "version_left",
            Self::MaxAge => "max_connection_age",
        }
    }
}

/// The extra age of a connection past `max_age` before it is drained: up to a tenth of it,
/// picked by `hash` (the connection's), so that connections opened together do not all
/// reconnect together (gRPC's `MAX_CONNECTION_AGE` jitters by ±10% the same way).
#[must_use]
pub fn age_jitter(max_age: Duration, hash: u64) -> Duration {
    let tenth = crate::model::units::nanos(max_age / 10);
    if tenth == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(hash % tenth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drain_no_one_waits_for_waits_at_least_a_second_on_a_quiet_connection() {
        let settings = DrainSettings::default();
        assert_eq!(settings.idle, DEFAULT_DRAIN_IDLE);
        assert_eq!(settings.unhurried_idle(), UNHURRIED_IDLE);
        let patient = DrainSettings {
            idle: Duration::from_secs(5),
            ..settings
        };
        assert_eq!(patient.unhurried_idle(), Duration::from_secs(5));
    }

    #[test]
    fn the_age_jitter_stays_within_a_tenth_and_spreads_by_hash() {
        let age = Duration::from_secs(60);
        let jitters: Vec<Duration> = (0..1000u32)
            .map(|i| age_jitter(age, u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15)))
            .collect();
        assert!(jitters.iter().all(|j| *j < Duration::from_secs(6)));
        let (min, max) = (
            jitters.iter().min().copied().unwrap_or_default(),
            jitters.iter().max().copied().unwrap_or_default(),
        );
        assert!(min < Duration::from_millis(100), "{min:?}");
        assert!(max > Duration::from_millis(5_900), "{max:?}");
        assert_eq!(age_jitter(Duration::from_nanos(5), 7), Duration::ZERO);
    }
}

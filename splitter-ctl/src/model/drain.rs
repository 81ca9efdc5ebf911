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

/// A service's drain settings (config `established`, `drain_timeout_ms`,
/// `retire_drain_window_ms`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainSettings {
    /// What a rollback does to the connections of the version it leaves.
    pub established: Established,
    /// How long a connection may stay busy during a drain before it is reset.
    pub timeout: Duration,
    /// Over how long a promotion drains the retired version (zero: at once).
    pub retire_window: Duration,
}

impl Default for DrainSettings {
    fn default() -> Self {
        Self {
            established: Established::Drain,
            timeout: DEFAULT_DRAIN_TIMEOUT,
            retire_window: DEFAULT_RETIRE_WINDOW,
        }
    }
}

/// How long a connection may stay busy during a drain before it is reset (config
/// `drain_timeout_ms`): long streaming responses finish within it.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest drain timeout and retire window a config may ask for: one day.
pub const MAX_DRAIN_MS: u64 = 24 * 3_600_000;
/// Over how long a promotion drains the retired version's connections (config
/// `retire_drain_window_ms`), so that its clients do not all reconnect at once.
pub const DEFAULT_RETIRE_WINDOW: Duration = Duration::from_secs(300);

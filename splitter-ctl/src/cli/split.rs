//! A split-word write from the CLI, shared by `weight` and `rollback`: straight into the pinned
//! map, under the split-word lock, so it works whether or not the daemon runs; then journaled.

use std::{
    path::Path,
    thread,
    time::{Duration, Instant},
};

use splitter_common::{SplitWord, Version};

use super::{
    CommandError,
    locate::{Located, Overrides, Target, locate},
};
use crate::model::units;
use crate::{
    engine::drill::DRILL_POLL,
    io::users,
    kernel::{maps::Maps, split_lock::SplitLockFile},
    model::{
        error::chain,
        share::{format_percent, percent_of},
    },
    store::journal::{EventKind, Journal, JournalError, NewEvent},
};

/// The outcome of a split-word write.
#[derive(Debug)]
pub struct Change {
    pub service: String,
    /// What the command did: a `weight` or a `rollback`.
    pub kind: EventKind,
    /// Which pins and state were used, and why those (`Located::describe`).
    pub located: String,
    pub before: SplitWord,
    pub after: SplitWord,
    /// The word was already what the command asked for: nothing written or journaled.
    pub unchanged: bool,
    pub write: Duration,
    /// The journal entry, or why it could not be written (the map write happened either way);
    /// `None` when nothing was written.
    pub journaled: Option<Result<i64, JournalError>>,
    /// For a rollback: the live pool's first new connection, still to be awaited.
    pub first_connection: Option<FirstConnection>,
}

/// A rollback's first new connection on the live pool, awaited by reading the kernel's
/// new-flow counter (counted from just after the write).
pub struct FirstConnection {
    maps: Maps,
    /// The ids of the release's services.
    ids: Vec<u32>,
    live: Version,
    base: u64,
    decided: Instant,
    state_dir: std::path::PathBuf,
    event: Option<i64>,
}

impl std::fmt::Debug for FirstConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirstConnection")
            .field("live", &self.live)
            .finish_non_exhaustive()
    }
}

impl FirstConnection {
    /// New flows on the live pool so far, over the release's services.
    fn new_on_live(&self) -> Result<u64, crate::kernel::maps::MapsError> {
        let mut sum = 0;
        for id in &self.ids {
            sum += self.maps.new_flows(*id)?[self.live as usize];
        }
        Ok(sum)
    }

    /// Waits up to `limit` for it; journals the time from the decision when it comes, and
    /// says what was seen.
    #[must_use]
    pub fn wait(self, limit: Duration) -> String {
        let live = self.live.name();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            match self.new_on_live() {
                Ok(now) if now > self.base => {
                    let took = self.decided.elapsed();
                    let us = units::micros(took);
                    let journaled = self.event.map(|event| {
                        Journal::open(&self.state_dir)
                            .and_then(|journal| journal.set_first_connection(event, us))
                    });
                    let note = match journaled {
                        Some(Err(error)) => format!(" (not journaled: {})", chain(&error)),
                        _ => String::new(),
                    };
                    return format!(
                        "first new connection on {live} {:.1} ms after the decision{note}",
                        took.as_secs_f64() * 1e3
                    );
                }
                Ok(_) => thread::sleep(DRILL_POLL),
                Err(error) => {
                    return format!("cannot read the new-flow counters: {}", chain(&error));
                }
            }
        }
        format!(
            "no new connection on {live} within {} ms: the time to the first one is not recorded",
            limit.as_millis()
        )
    }
}

impl Change {
    /// Prints the change, and warns (without failing: the map write happened) when it could
    /// not be journaled.
    pub fn print(&self) -> Result<(), CommandError> {
        eprintln!("using {}", self.located);
        super::out(format!("{}\n", self.describe()))?;
        if let Some(Err(error)) = &self.journaled {
            eprintln!(
                "warning: the change is in effect but not in the journal: {}",
                chain(error)
            );
        }
        Ok(())
    }

    #[must_use]
    pub fn describe(&self) -> String {
        let a = self.after;
        if self.unchanged {
            let already = if self.kind == EventKind::Rollback {
                "already rolled back"
            } else {
                "already so"
            };
            return format!(
                "{}: {already}: blue {}%, green {}% of new connections (live {}); nothing written",
                self.service,
                format_percent(a.share_of(Version::Blue)),
                format_percent(a.share_of(Version::Green)),
                a.live().name(),
            );
        }
        format!(
            "{}: blue {}%, green {}% of new connections (live {}); was blue {}%, green {}%; map write took {:.1} µs",
            self.service,
            format_percent(a.share_of(Version::Blue)),
            format_percent(a.share_of(Version::Green)),
            a.live().name(),
            format_percent(self.before.share_of(Version::Blue)),
            format_percent(self.before.share_of(Version::Green)),
            self.write.as_secs_f64() * 1e6,
        )
    }
}

/// Reads `name`'s split word, computes the new one with `change`, writes it, and journals it as
/// `kind`: the read and the write under the split-word lock, so that concurrent writers (other
/// commands, the daemon's rollout steps and drills) never lose an update. A release group, or
/// any of its services, names the group's one word: the write moves the whole group, and is
/// journaled under the group's name (which `change` gets, with the group's services). When the
/// word would not change, nothing is written or journaled: repeating a command is not an error.
/// The config comes from `locate`, so a file that no longer validates does not block it.
pub fn update(
    config: &Path,
    overrides: &Overrides,
    name: &str,
    kind: EventKind,
    change: impl FnOnce(SplitWord, &Located, &Target) -> Result<SplitWord, CommandError>,
) -> Result<Change, CommandError> {
    let decided = Instant::now();
    let located = locate(config, overrides)?;
    let target = located.target(name)?;
    let mut maps = located.maps()?;
    let service = located.kernel(&maps, &target)?;
    let journal_name = target.journal_name();
    let name = journal_name.as_str();
    // Read, decide and write under the split-word lock: no other writer (a rollout step, a
    // drill, another operator) replaces the word between the read and the write.
    let lock_file = SplitLockFile::open(located.state_dir());
    let lock = lock_file.hold();
    let before = maps.split(service.split)?;
    let after = change(before, &located, &target)?;
    if after == before {
        drop(lock);
        return Ok(Change {
            service: name.to_owned(),
            kind,
            located: located.describe(),
            before,
            after,
            unchanged: true,
            write: Duration::ZERO,
            journaled: None,
            first_connection: None,
        });
    }
    let write = maps.set_split(service.split, after)?;
    let decision_to_write = decided.elapsed();
    drop(lock);
    // Counted from after the write, as a drill counts, over every service of a release group.
    let ids: Vec<u32> = match &target {
        Target::Named { members, .. } => members
            .iter()
            .filter_map(|m| maps.service(&m.endpoint()).ok().flatten())
            .map(|s| s.id)
            .collect(),
        Target::Address(_) => vec![service.id],
    };
    let base = (kind == EventKind::Rollback)
        .then(|| {
            ids.iter()
                .map(|id| maps.new_flows(*id).map(|n| n[after.live() as usize]))
                .sum::<Result<u64, _>>()
                .ok()
        })
        .flatten();
    // The data plane first, the record after: a journal that cannot be written never delays
    // or blocks the change.
    let journaled = Journal::open(located.state_dir()).and_then(|journal| {
        journal.record(&NewEvent {
            decision_to_write_us: Some(units::micros(decision_to_write)),
            details: serde_json::json!({
                "before": { "live": before.live().name(), "green_percent": percent_of(before.share_of(Version::Green)) },
                "after": { "live": after.live().name(), "green_percent": percent_of(after.share_of(Version::Green)) },
                "map_write_us": write.as_secs_f64() * 1e6,
            }),
            ..NewEvent::new(name, kind, &users::describe(users::this_process()))
        })
    });
    let event = journaled.as_ref().ok().copied();
    let first_connection = base.map(|base| FirstConnection {
        maps,
        ids,
        live: after.live(),
        base,
        decided,
        state_dir: located.state_dir().to_owned(),
        event,
    });
    Ok(Change {
        service: name.to_owned(),
        kind,
        located: located.describe(),
        before,
        after,
        unchanged: false,
        write,
        journaled: Some(journaled),
        first_connection,
    })
}

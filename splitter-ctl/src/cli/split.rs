//! A split-word write from the CLI, shared by `weight` and `rollback`: straight into the pinned
//! map, under the split-word lock, so it works whether or not the daemon runs; then journaled.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use splitter_common::{SplitWord, Version};

use super::{
    CommandError,
    locate::{Located, Overrides, Target, locate},
};
use crate::model::units;
use crate::{
    io::users,
    kernel::split_lock::SplitLockFile,
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
    /// For a rollback that changed the word: the version left, to drain.
    pub left: Option<Left>,
}

/// What a rollback left behind: the version whose connections are still open.
#[derive(Debug)]
pub struct Left {
    /// The services' ids in the data plane.
    pub ids: Vec<u32>,
    /// The version left.
    pub version: Version,
    /// The policy and timeout the target's config gives (the defaults for an address).
    pub drain: crate::model::drain::DrainSettings,
    /// The journal entry of the rollback.
    pub event: Option<i64>,
    /// The decision, on the kernel's clock.
    pub decided_ns: u64,
    pub pin_dir: std::path::PathBuf,
    pub state_dir: std::path::PathBuf,
    pub control_socket: std::path::PathBuf,
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
    update_then(config, overrides, name, kind, change, |_, _| ()).map(|(change, _)| change)
}

/// As `update`; a rollback that changed the word then calls `written` with the release's name
/// and what it left, right after the write and before the journal entry (which `Left::event`
/// does not name yet): a drain asked for there is never delayed by the journal's write.
pub fn update_then<R>(
    config: &Path,
    overrides: &Overrides,
    name: &str,
    kind: EventKind,
    change: impl FnOnce(SplitWord, &Located, &Target) -> Result<SplitWord, CommandError>,
    written: impl FnOnce(&str, &Left) -> R,
) -> Result<(Change, Option<R>), CommandError> {
    let decided = Instant::now();
    let located = locate(config, overrides)?;
    let target = located.target(name)?;
    let located_at = decided.elapsed();
    let mut maps = located.split_maps()?;
    let service = located.kernel(&maps, &target)?;
    let opened_at = decided.elapsed();
    let journal_name = target.journal_name();
    let name = journal_name.as_str();
    // Read, decide and write under the split-word lock: no other writer (a rollout step, a
    // drill, another operator) replaces the word between the read and the write.
    let lock_file = SplitLockFile::open(located.state_dir());
    let lock = lock_file.hold();
    let locked_at = decided.elapsed();
    let before = maps.split(service.split)?;
    let after = change(before, &located, &target)?;
    // What a rollback leaves, for its drain: over every service of a release group.
    let ids = |maps: &crate::kernel::split_maps::SplitMaps| -> Vec<u32> {
        match &target {
            Target::Named { members, .. } => members
                .iter()
                .filter_map(|m| maps.service(&m.endpoint()).ok().flatten())
                .map(|s| s.id)
                .collect(),
            Target::Address(_) => vec![service.id],
        }
    };
    let left = |ids: Vec<u32>, event: Option<i64>, decided_ns: u64| {
        (kind == EventKind::Rollback).then(|| Left {
            ids,
            version: after.live().other(),
            drain: match &target {
                Target::Named { members, .. } => members[0].drain,
                Target::Address(_) => crate::model::drain::DrainSettings::default(),
            },
            event,
            decided_ns,
            pin_dir: located.config.pin_dir.clone(),
            state_dir: located.state_dir().to_owned(),
            control_socket: located.config.control_socket.clone(),
        })
    };
    let change = |write, journaled: Option<Result<i64, JournalError>>, left| Change {
        service: name.to_owned(),
        kind,
        located: located.describe(),
        before,
        after,
        unchanged: journaled.is_none(),
        write,
        journaled,
        left,
    };
    if after == before {
        drop(lock);
        // A repeated rollback still knows what it left: `--established` drains it again.
        let left = left(ids(&maps), None, crate::kernel::aging::monotonic_ns());
        return Ok((change(Duration::ZERO, None, left), None));
    }
    let write = maps.set_split(service.split, after)?;
    let written_ns = crate::kernel::aging::monotonic_ns();
    let decision_to_write = decided.elapsed();
    drop(lock);
    let decided_ns = written_ns.saturating_sub(units::micros(decision_to_write) * 1_000);
    let early = left(ids(&maps), None, decided_ns).map(|left| written(name, &left));
    // The data plane first, the record after: a journal that cannot be written never delays
    // or blocks the change.
    let journaled = Journal::open(located.state_dir()).and_then(|journal| {
        journal.record(&NewEvent {
            decision_to_write_us: Some(units::micros(decision_to_write)),
            details: serde_json::json!({
                "before": { "live": before.live().name(), "green_percent": percent_of(before.share_of(Version::Green)) },
                "after": { "live": after.live().name(), "green_percent": percent_of(after.share_of(Version::Green)) },
                "map_write_us": write.as_secs_f64() * 1e6,
                // When the write returned, on CLOCK_MONOTONIC: a caller that noted the clock
                // when it started this command gets start → map written.
                "written_monotonic_ns": written_ns,
                // Where the time to the write went (µs from the decision, each phase's end):
                // the config read and the target found, the pinned maps opened, the split
                // lock taken.
                "phases_us": {
                    "config": units::micros(located_at),
                    "maps": units::micros(opened_at),
                    "lock": units::micros(locked_at),
                },
            }),
            ..NewEvent::new(name, kind, &users::describe(users::this_process()))
        })
    });
    let event = journaled.as_ref().ok().copied();
    let left = left(ids(&maps), event, decided_ns);
    Ok((change(write, Some(journaled), left), early))
}

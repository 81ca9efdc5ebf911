//! `weight` and `rollback`: one write of the split word, straight into the pinned map, so they
//! work whether or not the daemon runs.

use std::{
    path::Path,
    thread,
    time::{Duration, Instant},
};

use splitter_common::{SplitWord, Version};

use super::{CommandError, Target};
use crate::{
    engine::drill::DRILL_POLL,
    kernel::{maps::Maps, split_lock::SplitLockFile},
    model::share::{format_percent, parse_percent, percent_of},
    store::journal::{EventKind, Journal, NewEvent, now_ms},
    view::previous::previous,
};

/// The outcome of a split-word write.
#[derive(Debug)]
pub struct Change {
    pub service: String,
    pub before: SplitWord,
    pub after: SplitWord,
    pub write: Duration,
    /// The journal entry, or why it could not be written (the map write happened either way).
    pub journaled: Result<i64, String>,
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
                    let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
                    let journaled = self.event.map(|event| {
                        Journal::open(&self.state_dir)
                            .and_then(|journal| journal.set_first_connection(event, us))
                    });
                    let note = match journaled {
                        Some(Err(error)) => {
                            format!(" (not journaled: {:#})", anyhow::Error::from(error))
                        }
                        _ => String::new(),
                    };
                    return format!(
                        "first new connection on {live} {:.1} ms after the decision{note}",
                        took.as_secs_f64() * 1e3
                    );
                }
                Ok(_) => thread::sleep(DRILL_POLL),
                Err(error) => return format!("cannot read the new-flow counters: {error}"),
            }
        }
        format!(
            "no new connection on {live} within {} ms: the time to the first one is not recorded",
            limit.as_millis()
        )
    }
}

impl Change {
    #[must_use]
    pub fn describe(&self) -> String {
        let a = self.after;
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

/// `splitter-ctl weight SERVICE VERSION PERCENT`.
pub fn weight(
    config: &Path,
    service: &str,
    version: Version,
    percent: &str,
) -> Result<Change, CommandError> {
    let share_bp = parse_percent(percent)?;
    update(config, service, EventKind::Weight, |word, _, _| {
        Ok(word.with_share_of(version, share_bp))
    })
}

/// `splitter-ctl rollback SERVICE`: every new connection to the live pool. When the candidate
/// has no share left, and a promotion made the live version live less than the service's
/// rollback window ago, the previous version is made live again instead.
pub fn rollback(config: &Path, service: &str) -> Result<Change, CommandError> {
    update(
        config,
        service,
        EventKind::Rollback,
        |word, target, release| {
            if word.share_of(word.live().other()) > 0 {
                return Ok(SplitWord::new(word.live(), 0));
            }
            previous_version(target, release, word).map(|previous| SplitWord::new(previous, 0))
        },
    )
}

/// The version that was live before the last promotion, while its rollback window lasts.
fn previous_version(
    target: &Target,
    service: &str,
    word: SplitWord,
) -> Result<Version, CommandError> {
    let (spec, _) = target.service(service)?;
    let live = word.live();
    let nothing = |why: String| CommandError::NothingToRollBack {
        service: service.to_owned(),
        why,
    };
    let journal = Journal::open(&target.config.state_dir)?;
    let now = now_ms();
    match previous(&journal, service, word, spec.rollback_window, now)? {
        None => Err(nothing(format!(
            "{} is live with every new connection, and no journaled promotion made it live",
            live.name()
        ))),
        Some(p) if p.retired => Err(nothing(format!(
            "{} was retired: {} was promoted {} s ago, past the rollback window of {} s",
            p.version,
            live.name(),
            (now - p.promoted_at_ms) / 1_000,
            spec.rollback_window.as_secs()
        ))),
        Some(_)
            if target.config.release(service).is_some_and(|r| {
                r.members
                    .iter()
                    .any(|m| m.pool(live.other()).iter().all(|b| b.weight == 0))
            }) || spec.pool(live.other()).iter().all(|b| b.weight == 0) =>
        {
            Err(nothing(format!(
                "the {} pool has no backend",
                live.other().name()
            )))
        }
        Some(_) => Ok(live.other()),
    }
}

/// Reads `name`'s split word, computes the new one with `change`, writes it, and journals it as
/// `kind`: the read and the write under the split-word lock, so that concurrent writers (other
/// commands, the daemon's rollout steps and drills) never lose an update. A release group, or
/// any of its services, names the group's one word: the write moves the whole group, and is
/// journaled under the group's name (which `change` gets).
pub fn update(
    config: &Path,
    name: &str,
    kind: EventKind,
    change: impl FnOnce(SplitWord, &Target, &str) -> Result<SplitWord, CommandError>,
) -> Result<Change, CommandError> {
    let decided = Instant::now();
    let mut target = Target::open(config)?;
    let (_, service) = target.service(name)?;
    let release = target
        .config
        .release(name)
        .map_or_else(|| name.to_owned(), |r| r.name.to_owned());
    let name = release.as_str();
    // Read, decide and write under the split-word lock: no other writer (a rollout step, a
    // drill, another operator) replaces the word between the read and the write.
    let lock_file = SplitLockFile::open(&target.config.state_dir);
    let lock = lock_file.hold();
    let before = target.maps.split(service.split)?;
    let after = change(before, &target, name)?;
    let write = target.maps.set_split(service.split, after)?;
    let decision_to_write = decided.elapsed();
    drop(lock);
    // Counted from after the write, as a drill counts, over every service of a release group.
    let ids: Vec<u32> = target.config.release(name).map_or_else(
        || vec![service.id],
        |r| {
            r.members
                .iter()
                .filter_map(|m| target.maps.service(&m.endpoint()).ok().flatten())
                .map(|s| s.id)
                .collect()
        },
    );
    let base = (kind == EventKind::Rollback)
        .then(|| {
            ids.iter()
                .map(|id| target.maps.new_flows(*id).map(|n| n[after.live() as usize]))
                .sum::<Result<u64, _>>()
                .ok()
        })
        .flatten();
    // The data plane first, the record after: a journal that cannot be written never delays
    // or blocks the change.
    let journaled = Journal::open(&target.config.state_dir)
        .and_then(|journal| {
            journal.record(&NewEvent {
                service: name.to_owned(),
                kind,
                actor: "operator".to_owned(),
                reason: None,
                decision_to_write_us: Some(u64::try_from(decision_to_write.as_micros()).unwrap_or(u64::MAX)),
                decision_to_first_connection_us: None,
                details: serde_json::json!({
                    "before": { "live": before.live().name(), "green_percent": percent_of(before.share_of(Version::Green)) },
                    "after": { "live": after.live().name(), "green_percent": percent_of(after.share_of(Version::Green)) },
                    "map_write_us": write.as_secs_f64() * 1e6,
                }),
            })
        })
        .map_err(|e| format!("{:#}", anyhow::Error::from(e)));
    let event = journaled.as_ref().ok().copied();
    let Target { config, maps } = target;
    let first_connection = base.map(|base| FirstConnection {
        maps,
        ids,
        live: after.live(),
        base,
        decided,
        state_dir: config.state_dir,
        event,
    });
    Ok(Change {
        service: name.to_owned(),
        before,
        after,
        write,
        journaled,
        first_connection,
    })
}

//! `weight` and `rollback`: one write of the split word, straight into the pinned map, so they
//! work whether or not the daemon runs.

use std::{path::Path, time::Duration};

use splitter_common::{SplitWord, Version};

use super::{CommandError, Target};
use crate::share::{format_percent, parse_percent};

/// The outcome of a split-word write.
#[derive(Debug)]
pub struct Change {
    pub service: String,
    pub before: SplitWord,
    pub after: SplitWord,
    pub write: Duration,
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
    write(config, service, |word| {
        word.with_share_of(version, share_bp)
    })
}

/// `splitter-ctl rollback SERVICE`: every new connection to the live pool.
pub fn rollback(config: &Path, service: &str) -> Result<Change, CommandError> {
    write(config, service, |word| SplitWord::new(word.live(), 0))
}

fn write(
    config: &Path,
    name: &str,
    change: impl FnOnce(SplitWord) -> SplitWord,
) -> Result<Change, CommandError> {
    let mut target = Target::open(config)?;
    let (_, service) = target.service(name)?;
    let before = target.maps.split(service.id)?;
    let after = change(before);
    let write = target.maps.set_split(service.id, after)?;
    Ok(Change {
        service: name.to_owned(),
        before,
        after,
        write,
    })
}

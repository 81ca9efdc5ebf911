//! `splitter-ctl rollback SERVICE`: every new connection to the live pool, in one write of the
//! split word; after a promotion, within the rollback window, the previous version made live
//! again. Repeated, it says the service is rolled back already and succeeds.

use std::path::Path;

use splitter_common::{SplitWord, Version};

use super::{
    CommandError,
    locate::{Located, Overrides, Target},
    split::{Change, Left, update_then},
};
use crate::{
    store::journal::{EventKind, Journal, now_ms},
    view::previous::previous,
};

/// `splitter-ctl rollback SERVICE`: every new connection to the live pool. When the candidate
/// has no share left, and a promotion made the live version live less than the service's
/// rollback window ago (with nothing changing the split since), the previous version is made
/// live again instead; with no such promotion, the service is rolled back already and nothing
/// changes.
/// `written` runs right after the write (`update_then`).
pub fn rollback<R>(
    config: &Path,
    overrides: &Overrides,
    service: &str,
    written: impl FnOnce(&str, &Left) -> R,
) -> Result<(Change, Option<R>), CommandError> {
    update_then(
        config,
        overrides,
        service,
        EventKind::Rollback,
        |word, located, target| {
            if word.share_of(word.live().other()) > 0 {
                return Ok(SplitWord::new(word.live(), 0));
            }
            previous_version(located, target, word)
                .map(|previous| previous.map_or(word, |v| SplitWord::new(v, 0)))
        },
        written,
    )
}

/// The version that was live before the last promotion, while its rollback window lasts;
/// `None` when no standing promotion made the live version live (it is rolled back already).
fn previous_version(
    located: &Located,
    target: &Target,
    word: SplitWord,
) -> Result<Option<Version>, CommandError> {
    let live = word.live();
    let Target::Named { release, members } = target else {
        // Known by its address only: every new connection goes to the live pool already, and
        // without its config neither a promotion nor the previous pool can be checked, so it
        // is never returned to a previous version this way.
        eprintln!(
            "{}: known by its address only, so it is not returned to a version a promotion replaced; name it by its config for that",
            target.journal_name()
        );
        return Ok(None);
    };
    let nothing = |why: String| CommandError::NothingToRollBack {
        service: release.clone(),
        why,
    };
    let window = members[0].rollback_window;
    let journal = Journal::open(located.state_dir())?;
    let now = now_ms();
    match previous(&journal, release, word, window, now)? {
        None => Ok(None),
        Some(p) if p.retired => Err(nothing(format!(
            "{} was retired: {} was promoted {} s ago, past the rollback window of {} s",
            p.version,
            live.name(),
            (now - p.promoted_at_ms) / 1_000,
            window.as_secs()
        ))),
        Some(_)
            if members
                .iter()
                .any(|m| m.pool(live.other()).iter().all(|b| b.weight == 0)) =>
        {
            Err(nothing(format!(
                "the {} pool has no backend",
                live.other().name()
            )))
        }
        Some(_) => Ok(Some(live.other())),
    }
}

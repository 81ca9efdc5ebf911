//! `splitter-ctl rollback SERVICE`: every new connection to the live pool, in one write of the
//! split word; after a promotion, within the rollback window, the previous version made live
//! again.

use std::path::Path;

use splitter_common::{SplitWord, Version};

use super::{
    CommandError, Target,
    split::{Change, update},
};
use crate::{
    store::journal::{EventKind, Journal, now_ms},
    view::previous::previous,
};

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

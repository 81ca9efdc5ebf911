//! The version a promotion replaced: ready for `rollback` during the service's rollback window,
//! retired after it. Worked out from the split word and the journal's last promotion, so the
//! CLI knows it without the daemon.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use splitter_common::SplitWord;

use crate::store::journal::{Journal, JournalError};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Previous {
    /// `blue` or `green`.
    pub version: String,
    /// When the promotion that replaced it happened (Unix ms).
    pub promoted_at_ms: i64,
    /// Until when `rollback` makes it live again (Unix ms).
    pub rollback_until_ms: i64,
    /// Past its rollback window: `rollback` refuses to return to it.
    pub retired: bool,
}

/// The version the last promotion replaced; `None` while the candidate still has a share (a
/// rollback then sends everything to the live pool), when no journaled promotion made the
/// live version live, or when something changed the split since (a new rollout, a rollback,
/// a weight): that promotion no longer stands, and a rollback has nothing to undo.
pub fn previous(
    journal: &Journal,
    service: &str,
    word: SplitWord,
    window: Duration,
    now_ms: i64,
) -> Result<Option<Previous>, JournalError> {
    let live = word.live();
    if word.share_of(live.other()) > 0 {
        return Ok(None);
    }
    let Some((at_ms, promoted)) = journal.standing_promotion(service)? else {
        return Ok(None);
    };
    if promoted != live.name() {
        return Ok(None);
    }
    let until = at_ms.saturating_add(i64::try_from(window.as_millis()).unwrap_or(i64::MAX));
    Ok(Some(Previous {
        version: live.other().name().to_owned(),
        promoted_at_ms: at_ms,
        rollback_until_ms: until,
        retired: now_ms > until,
    }))
}

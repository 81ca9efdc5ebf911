//! `splitter-ctl weight SERVICE VERSION PERCENT`: one write of the split word (none when the
//! share is that already). In fleet mode, the fleet's desired split first (a compare-and-swap
//! on its revision: `cli::fleet`), then this node's kernel; every other node's daemon applies it.

use std::path::Path;

use splitter_common::Version;

use super::{
    CommandError, fleet,
    locate::{Located, Overrides, locate},
    split::{Change, update},
};
use crate::store::journal::EventKind;

/// `splitter-ctl weight SERVICE VERSION PERCENT`: `version` gets `share_bp` of new connections,
/// on every node of the fleet unless `local`. Prints what it did.
pub fn weight(
    config: &Path,
    overrides: &Overrides,
    local: bool,
    service: &str,
    version: Version,
    share_bp: u16,
) -> Result<(), CommandError> {
    let target = if local {
        None
    } else {
        let located = locate(config, overrides)?;
        fleet::target_in(&located, service)?.map(|target| (target, located))
    };
    let Some((target, located)) = target else {
        return weight_here(config, overrides, service, version, share_bp)?.print();
    };
    let kernel = kernel_word(&located, service)?;
    let published = fleet::publish_weight(&target, kernel, |word| {
        word.with_share_of(version, share_bp)
    })?;
    fleet::forget_pending(&target);
    // This node's word, unless its daemon wrote a newer revision of the fleet's split since it
    // was read (the daemon applies this one too, if it is the newest).
    let change = update(
        config,
        overrides,
        service,
        EventKind::Weight,
        |now, _, _| {
            if now != kernel {
                return Ok(now);
            }
            // Under the split lock: this node's daemon reads it under the same lock, and does
            // not apply this revision again over a later change made here.
            fleet::note_applied(&target, published.revision);
            Ok(published.word)
        },
    )?;
    change.print()?;
    eprintln!(
        "fleet: told at revision {}; every node applies it (`splitter-ctl status` shows each node's)",
        published.revision
    );
    Ok(())
}

/// This node's split word for `name`, now.
pub(super) fn kernel_word(
    located: &Located,
    name: &str,
) -> Result<splitter_common::SplitWord, CommandError> {
    let target = located.target(name)?;
    let maps = located.split_maps()?;
    let service = located.kernel(&maps, &target)?;
    Ok(maps.split(service.split)?)
}

/// This node alone.
pub fn weight_here(
    config: &Path,
    overrides: &Overrides,
    service: &str,
    version: Version,
    share_bp: u16,
) -> Result<Change, CommandError> {
    update(
        config,
        overrides,
        service,
        EventKind::Weight,
        |word, _, _| Ok(word.with_share_of(version, share_bp)),
    )
}

//! `splitter-ctl weight SERVICE VERSION PERCENT`: one write of the split word (none when the
//! share is that already).

use std::path::Path;

use splitter_common::Version;

use super::{
    CommandError,
    locate::Overrides,
    split::{Change, update},
};
use crate::store::journal::EventKind;

/// `splitter-ctl weight SERVICE VERSION PERCENT`: `version` gets `share_bp` of new connections.
pub fn weight(
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

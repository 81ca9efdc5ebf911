//! `splitter-ctl weight SERVICE VERSION PERCENT`: one write of the split word.

use std::path::Path;

use splitter_common::Version;

use super::{
    CommandError,
    split::{Change, update},
};
use crate::{model::share::parse_percent, store::journal::EventKind};

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

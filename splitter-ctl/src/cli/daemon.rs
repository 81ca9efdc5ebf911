//! `splitter-ctl daemon`: runs the daemon in the foreground (see `crate::daemon::runtime`).

use std::path::Path;

use super::CommandError;
use crate::daemon::runtime::Options;

pub fn run(config: &Path, options: Options) -> Result<(), CommandError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| CommandError::Io {
            what: "start the async runtime",
            source,
        })?;
    Ok(runtime.block_on(crate::daemon::runtime::run(config, options))?)
}

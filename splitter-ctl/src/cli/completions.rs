//! `splitter-ctl completions SHELL` and `splitter-ctl man`: generated from the same clap
//! definitions as `--help`.

use clap::CommandFactory as _;

use super::{CommandError, args::Cli};

/// The completion script for `shell`.
#[must_use]
pub fn completions(shell: clap_complete::Shell) -> Vec<u8> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "splitter-ctl", &mut script);
    script
}

/// The man page (roff).
pub fn man() -> Result<Vec<u8>, CommandError> {
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut page)
        .map_err(|source| CommandError::Io {
            what: "render the man page",
            source,
        })?;
    Ok(page)
}

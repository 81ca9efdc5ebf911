//! `splitter-ctl completions SHELL` and `splitter-ctl man`: generated from the same clap
//! definitions as `--help`.

use clap::CommandFactory as _;

use super::{CommandError, args::Cli};

/// Prints the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) {
    clap_complete::generate(
        shell,
        &mut Cli::command(),
        "splitter-ctl",
        &mut std::io::stdout(),
    );
}

/// Prints the man page (roff).
pub fn man() -> Result<(), CommandError> {
    clap_mangen::Man::new(Cli::command())
        .render(&mut std::io::stdout())
        .map_err(|source| CommandError::Io {
            what: "write the man page",
            source,
        })
}

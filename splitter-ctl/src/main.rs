//! The `splitter-ctl` binary: the command line is `splitter_ctl::cli`.

fn main() -> std::process::ExitCode {
    splitter_ctl::cli::main()
}

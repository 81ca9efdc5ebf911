//! An error written with its causes (`a: b: c`): the one way log lines, API answers and the CLI
//! show an error, so that no `#[source]` is dropped on the way.

use std::{error::Error, fmt};

/// `error` and each of its sources, joined by `: `.
pub struct Chain<'a>(&'a (dyn Error + 'static));

/// The error with its sources, for a log field (`error = %chain(&error)`) or a message.
#[must_use]
pub fn chain<E: Error + 'static>(error: &E) -> Chain<'_> {
    Chain(error)
}

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot open the journal")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn an_error_is_written_with_every_cause() {
        let error = Outer(std::io::Error::other("disk full"));
        assert_eq!(
            chain(&error).to_string(),
            "cannot open the journal: disk full"
        );
    }
}

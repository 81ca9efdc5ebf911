//! Who made a change, as the journal and the metrics record it: an operator (a Unix user, named
//! by `io::users`), or the daemon's own gates and drill schedule.

/// Who did something the daemon or the CLI journals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Actor {
    /// An operator: the Unix user behind the CLI, or behind the peer of the control socket;
    /// `None` when it is not known (a split changed from outside the daemon, which the command
    /// that changed it journals under its own user).
    Operator { uid: Option<u32> },
    /// The rollout's gates.
    Gates,
    /// The drill schedule.
    Schedule,
}

impl Actor {
    /// The `actor` label of the metrics: one of `operator`, `gates` and `schedule`, whoever
    /// the user (a label per user would grow without bound).
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::Operator { .. } => "operator",
            Self::Gates => "gates",
            Self::Schedule => "schedule",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators_are_counted_under_one_label() {
        assert_eq!(Actor::Operator { uid: Some(1000) }.label(), "operator");
        assert_eq!(Actor::Schedule.label(), "schedule");
    }
}

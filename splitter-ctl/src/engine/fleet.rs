//! What a node does with a desired split it reads from etcd: apply it, or not and why. Pure:
//! the revision, what the node applied last and its kernel's word are arguments.

use splitter_common::{SplitWord, Version};

use crate::model::fleet::Cause;

/// What to do with a desired split at some revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Not newer than the revision applied already: a replay (a watch restarted, a range read
    /// after a watch event). Never applied: a node never goes back to an older revision.
    Stale,
    /// This node holds a rollback the fleet has not been told of yet: the rollback is
    /// published first and wins; nothing from the fleet is applied over it.
    HeldForRollback,
    /// The kernel holds the word already: only the revision is noted.
    Same,
    /// Write the word; `left` is the version a rollback left, whose connections are drained.
    Write { left: Option<Version> },
}

/// Decides what a node does with `desired` at `revision`, having applied `applied` (0: none),
/// with `kernel` in its kernel and `pending` when a rollback made here is not published yet.
#[must_use]
pub fn decide(
    revision: i64,
    applied: i64,
    pending: bool,
    kernel: SplitWord,
    desired: SplitWord,
    cause: Cause,
) -> Step {
    if revision <= applied {
        return Step::Stale;
    }
    if pending {
        return Step::HeldForRollback;
    }
    if kernel == desired {
        return Step::Same;
    }
    Step::Write {
        left: left_by(cause, kernel, desired),
    }
}

/// The version a rollback leaves (the one that served new connections before it and none
/// after), or that a promotion retires (the live one before it). A weight that takes a share
/// to 0 leaves nothing to drain (as on one node).
#[must_use]
pub fn left_by(cause: Cause, before: SplitWord, after: SplitWord) -> Option<Version> {
    match cause {
        Cause::Weight => None,
        Cause::Rollback => {
            let left = after.live().other();
            (before.share_of(left) > 0 && after.share_of(left) == 0).then_some(left)
        }
        Cause::Promotion => (before.live() != after.live()).then_some(before.live()),
    }
}

/// How many revisions a node is behind the desired one (0 when it is level or ahead).
#[must_use]
pub const fn lag(desired: i64, applied: i64) -> i64 {
    if desired > applied {
        desired - applied
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLUE_ONLY: SplitWord = SplitWord::new(Version::Blue, 0);
    const GREEN_30: SplitWord = SplitWord::new(Version::Blue, 3_000);

    #[test]
    fn a_node_never_goes_back_to_an_older_revision() {
        assert_eq!(
            decide(7, 9, false, BLUE_ONLY, GREEN_30, Cause::Weight),
            Step::Stale
        );
        assert_eq!(
            decide(9, 9, false, BLUE_ONLY, GREEN_30, Cause::Weight),
            Step::Stale
        );
        assert_eq!(
            decide(10, 9, false, BLUE_ONLY, GREEN_30, Cause::Weight),
            Step::Write { left: None }
        );
    }

    #[test]
    fn a_rollback_not_yet_published_wins_over_the_fleet() {
        assert_eq!(
            decide(12, 9, true, BLUE_ONLY, GREEN_30, Cause::Weight),
            Step::HeldForRollback
        );
    }

    #[test]
    fn a_word_already_in_the_kernel_is_not_written_again() {
        assert_eq!(
            decide(12, 9, false, GREEN_30, GREEN_30, Cause::Weight),
            Step::Same
        );
    }

    #[test]
    fn a_rollback_drains_the_version_it_left_and_a_weight_does_not() {
        assert_eq!(
            decide(12, 9, false, GREEN_30, BLUE_ONLY, Cause::Rollback),
            Step::Write {
                left: Some(Version::Green)
            }
        );
        assert_eq!(
            decide(12, 9, false, GREEN_30, BLUE_ONLY, Cause::Weight),
            Step::Write { left: None }
        );
        // Back to the previous version after a promotion: green live at 100% becomes blue.
        let green_live = SplitWord::new(Version::Green, 0);
        assert_eq!(
            left_by(Cause::Rollback, green_live, BLUE_ONLY),
            Some(Version::Green)
        );
        // A promotion retires the live version before it; one that changes nothing, nothing.
        let blue_at_100 = SplitWord::new(Version::Blue, 10_000);
        assert_eq!(
            left_by(Cause::Promotion, blue_at_100, green_live),
            Some(Version::Blue)
        );
        assert_eq!(left_by(Cause::Promotion, green_live, green_live), None);
    }

    #[test]
    fn lag_counts_revisions_behind_and_never_below_zero() {
        assert_eq!(lag(15, 12), 3);
        assert_eq!(lag(12, 15), 0);
    }
}

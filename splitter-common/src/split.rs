//! The split word: one aligned `u32` per service that holds the live pool and the candidate's
//! share of new connections in basis points. A step, a rollback and a promotion are each one
//! write of this word, so the kernel never sees a half-made decision.
//!
//! Layout: bits 0..=15 the candidate share (0..=10000), bit 16 the live version (0 blue,
//! 1 green), the other bits zero.

/// A pool of a service.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Version {
    Blue = 0,
    Green = 1,
}

impl Version {
    #[inline(always)]
    #[must_use]
    pub const fn other(self) -> Self {
        match self {
            Self::Blue => Self::Green,
            Self::Green => Self::Blue,
        }
    }

    #[inline(always)]
    #[must_use]
    pub const fn from_bit(bit: u32) -> Self {
        if bit & 1 == 0 {
            Self::Blue
        } else {
            Self::Green
        }
    }

    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Blue => "blue",
            Self::Green => "green",
        }
    }
}

/// Basis points in 100%.
pub const FULL_SHARE_BP: u16 = 10_000;
const SHARE_MASK: u32 = 0xffff;
const LIVE_GREEN: u32 = 1 << 16;

#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SplitWord(pub u32);

impl SplitWord {
    /// Shares above 100% are clamped, so every `u16` gives a valid word.
    #[inline(always)]
    #[must_use]
    pub const fn new(live: Version, candidate_share_bp: u16) -> Self {
        let share = if candidate_share_bp > FULL_SHARE_BP {
            FULL_SHARE_BP
        } else {
            candidate_share_bp
        };
        let live_bit = match live {
            Version::Blue => 0,
            Version::Green => LIVE_GREEN,
        };
        Self(live_bit | share as u32)
    }

    #[inline(always)]
    #[must_use]
    pub const fn live(self) -> Version {
        Version::from_bit(self.0 >> 16)
    }

    #[inline(always)]
    #[must_use]
    pub const fn candidate(self) -> Version {
        self.live().other()
    }

    /// The candidate's share in basis points, clamped to 10000 whatever the word holds.
    #[inline(always)]
    #[must_use]
    pub const fn candidate_share_bp(self) -> u16 {
        let share = (self.0 & SHARE_MASK) as u16;
        if share > FULL_SHARE_BP {
            FULL_SHARE_BP
        } else {
            share
        }
    }

    /// The share of new connections that `version` receives, in basis points.
    #[must_use]
    pub const fn share_of(self, version: Version) -> u16 {
        let candidate = self.candidate_share_bp();
        if version as u8 == self.candidate() as u8 {
            candidate
        } else {
            FULL_SHARE_BP - candidate
        }
    }

    /// The word that gives `version` `share_bp` of new connections, keeping the live pool.
    #[must_use]
    pub const fn with_share_of(self, version: Version, share_bp: u16) -> Self {
        let share = if share_bp > FULL_SHARE_BP {
            FULL_SHARE_BP
        } else {
            share_bp
        };
        let candidate_share = if version as u8 == self.candidate() as u8 {
            share
        } else {
            FULL_SHARE_BP - share
        };
        Self::new(self.live(), candidate_share)
    }

    /// The version a new flow goes to, given a uniformly distributed 32-bit hash.
    #[inline(always)]
    #[must_use]
    pub const fn choose(self, hash: u32) -> Version {
        if (hash % FULL_SHARE_BP as u32) < self.candidate_share_bp() as u32 {
            self.candidate()
        } else {
            self.live()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips_live_and_share() {
        for live in [Version::Blue, Version::Green] {
            for share in [0, 1, 100, 5_000, 9_999, 10_000] {
                let word = SplitWord::new(live, share);
                assert_eq!(word.live(), live);
                assert_eq!(word.candidate(), live.other());
                assert_eq!(word.candidate_share_bp(), share);
            }
        }
        assert_eq!(SplitWord::new(Version::Green, 250).0, 0x1_00fa);
    }

    #[test]
    fn shares_above_full_are_clamped() {
        assert_eq!(
            SplitWord::new(Version::Blue, 60_000).candidate_share_bp(),
            10_000
        );
        assert_eq!(SplitWord(0xffff).candidate_share_bp(), 10_000);
    }

    #[test]
    fn share_of_a_version_is_relative_to_the_live_pool() {
        let word = SplitWord::new(Version::Blue, 1_000);
        assert_eq!(word.share_of(Version::Green), 1_000);
        assert_eq!(word.share_of(Version::Blue), 9_000);
        let word = word.with_share_of(Version::Blue, 2_500);
        assert_eq!(word.live(), Version::Blue);
        assert_eq!(word.share_of(Version::Green), 7_500);
        let green_live = SplitWord::new(Version::Green, 0).with_share_of(Version::Green, 9_000);
        assert_eq!(green_live.candidate_share_bp(), 1_000);
    }

    #[test]
    fn choose_follows_the_share_exactly_over_all_residues() {
        let word = SplitWord::new(Version::Blue, 1_234);
        let to_candidate = (0..10_000u32)
            .filter(|h| word.choose(*h) == Version::Green)
            .count();
        assert_eq!(to_candidate, 1_234);
        assert!(
            (0..10_000u32).all(|h| SplitWord::new(Version::Green, 0).choose(h) == Version::Green)
        );
        assert!(
            (0..10_000u32)
                .all(|h| SplitWord::new(Version::Green, 10_000).choose(h) == Version::Blue)
        );
    }
}

//! Who made a change, as the journal records it: a Unix user (`alice (uid 1000)`), for what an
//! operator did through the CLI or the control socket; the daemon's own decisions are `gates`
//! and `schedule`.

use std::ffi::CStr;

/// Who did something the daemon or the CLI journals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Actor {
    /// An operator: the Unix user of the CLI, or of the peer of the control socket
    /// (SO_PEERCRED); `None` when it is not known (a split changed from outside the daemon,
    /// which the command that changed it journals under its own user).
    Operator { uid: Option<u32> },
    /// The rollout's gates.
    Gates,
    /// The drill schedule.
    Schedule,
}

impl Actor {
    /// The operator running this process.
    #[must_use]
    pub fn this_process() -> Self {
        // SAFETY: geteuid has no preconditions.
        Self::Operator {
            uid: Some(unsafe { libc::geteuid() }),
        }
    }

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

    /// The journal's actor: the user by name and uid (`alice (uid 1000)`), or the label.
    #[must_use]
    pub fn name(self) -> String {
        match self {
            Self::Operator { uid: Some(uid) } => user(uid),
            other => other.label().to_owned(),
        }
    }
}

/// The user `uid`, by name when the host knows it: `alice (uid 1000)`, or `uid 1000`.
#[must_use]
pub fn user(uid: u32) -> String {
    match name_of(uid) {
        Some(name) => format!("{name} (uid {uid})"),
        None => format!("uid {uid}"),
    }
}

fn name_of(uid: u32) -> Option<String> {
    let mut entry: libc::passwd = unsafe_zeroed();
    let mut buffer = vec![0u8; 4096];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwuid_r writes the entry and its strings into `entry` and `buffer`, both
    // valid for their sizes, and sets `found` to `&entry` or null.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &raw mut entry,
            buffer.as_mut_ptr().cast(),
            buffer.len(),
            &raw mut found,
        )
    };
    if rc != 0 || found.is_null() || entry.pw_name.is_null() {
        return None;
    }
    // SAFETY: a non-null pw_name points into `buffer`, NUL-terminated by getpwuid_r.
    let name = unsafe { CStr::from_ptr(entry.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

fn unsafe_zeroed() -> libc::passwd {
    // SAFETY: passwd is plain old data (pointers and integers); all zeroes is a valid value.
    unsafe { std::mem::zeroed() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_named_with_their_uid() {
        assert_eq!(user(0), "root (uid 0)");
        assert_eq!(user(4_000_000_000), "uid 4000000000");
    }

    #[test]
    fn operators_are_journaled_by_name_and_counted_under_one_label() {
        let root = Actor::Operator { uid: Some(0) };
        assert_eq!(
            (root.name().as_str(), root.label()),
            ("root (uid 0)", "operator")
        );
        let unknown = Actor::Operator { uid: None };
        assert_eq!(unknown.name(), "operator");
        assert_eq!(
            (Actor::Gates.name(), Actor::Schedule.label()),
            ("gates".to_owned(), "schedule")
        );
    }
}

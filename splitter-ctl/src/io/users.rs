//! Who an operator is, for the journal: the person behind a command, by the login uid the
//! kernel keeps across `sudo` and `su` (`/proc/PID/loginuid`), else `SUDO_UID` for this
//! process, else the uid it runs as; by name where the host knows it (`alice (uid 1000)`).
//! Names are looked up once per uid and kept: a lookup may go to LDAP, and the daemon names
//! actors under its lock.

use std::{
    collections::HashMap,
    ffi::CStr,
    sync::{Mutex, OnceLock},
};

use crate::model::actor::Actor;

/// The loginuid of a process that never logged in (a daemon, a container's init).
const NO_LOGIN: u32 = u32::MAX;

/// The operator running this process.
#[must_use]
pub fn this_process() -> Actor {
    let sudo = || std::env::var("SUDO_UID").ok()?.parse().ok();
    // SAFETY: geteuid has no preconditions.
    let uid = login_uid("self")
        .or_else(sudo)
        .unwrap_or_else(|| unsafe { libc::geteuid() });
    Actor::Operator { uid: Some(uid) }
}

/// The operator at the other end of a control connection: the login uid of its process when
/// the kernel keeps one, else its uid.
#[must_use]
pub fn peer(uid: Option<u32>, pid: Option<i32>) -> Actor {
    let login = pid.and_then(|pid| login_uid(&pid.to_string()));
    Actor::Operator { uid: login.or(uid) }
}

/// The journal's name of `actor`: the user by name and uid, or the actor's label.
#[must_use]
pub fn describe(actor: Actor) -> String {
    match actor {
        Actor::Operator { uid: Some(uid) } => user(uid),
        other => other.label().to_owned(),
    }
}

/// The user `uid`, by name when the host knows it: `alice (uid 1000)`, or `uid 1000`.
#[must_use]
pub fn user(uid: u32) -> String {
    static NAMES: OnceLock<Mutex<HashMap<u32, String>>> = OnceLock::new();
    let names = NAMES.get_or_init(Mutex::default);
    if let Some(name) = names.lock().ok().and_then(|n| n.get(&uid).cloned()) {
        return name;
    }
    let name = match name_of(uid) {
        Some(name) => format!("{name} (uid {uid})"),
        None => format!("uid {uid}"),
    };
    if let Ok(mut names) = names.lock() {
        names.insert(uid, name.clone());
    }
    name
}

/// The login uid of process `pid` (`self` for this one), when it has one.
fn login_uid(pid: &str) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/loginuid")).ok()?;
    text.trim().parse().ok().filter(|uid| *uid != NO_LOGIN)
}

fn name_of(uid: u32) -> Option<String> {
    // SAFETY: passwd is plain old data (pointers and integers); all zeroes is a valid value.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_named_with_their_uid_and_operators_by_their_user() {
        assert_eq!(user(0), "root (uid 0)");
        assert_eq!(user(4_000_000_000), "uid 4000000000");
        assert_eq!(describe(Actor::Operator { uid: Some(0) }), "root (uid 0)");
        assert_eq!(describe(Actor::Operator { uid: None }), "operator");
        assert_eq!(describe(Actor::Gates), "gates");
    }
}

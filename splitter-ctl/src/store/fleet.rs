//! Fleet mode's state on disk. Rollbacks made on this node that the fleet has not been told of
//! yet (etcd was unreachable): one file per release in the state directory
//! (`fleet-pending/RELEASE.json`, the desired split as it will be published); the daemon
//! publishes them when etcd answers again and then removes them, and until then it applies
//! nothing from the fleet over them. And the desired revisions this node applied
//! (`fleet-applied.json`), so that a restarted daemon applies only what is newer.

use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
};

use crate::model::fleet::{Desired, is_key_segment};

/// The directory of pending publications, in the state directory.
const DIR: &str = "fleet-pending";

fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join(DIR)
}

fn file(state_dir: &Path, release: &str) -> PathBuf {
    dir(state_dir).join(format!("{release}.json"))
}

/// Keeps `desired` for `release` until it is published: written whole or not at all. A later
/// one for the same release replaces it (the newest rollback is the one that stands).
pub fn save(state_dir: &Path, release: &str, desired: &Desired) -> io::Result<PathBuf> {
    if !is_key_segment(release) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{release}` cannot name a key in etcd"),
        ));
    }
    fs::create_dir_all(dir(state_dir))?;
    let path = file(state_dir, release);
    let temporary = path.with_extension("json.new");
    fs::write(&temporary, desired.to_json())?;
    fs::rename(&temporary, &path)?;
    Ok(path)
}

/// Every pending publication, by release. A file that does not read is returned as its
/// problem, to be logged, not silently dropped.
#[must_use]
pub fn list(state_dir: &Path) -> Vec<(String, Result<Desired, String>)> {
    let Ok(entries) = fs::read_dir(dir(state_dir)) else {
        return Vec::new();
    };
    let mut pending: Vec<_> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry
                .file_name()
                .to_str()?
                .strip_suffix(".json")?
                .to_owned();
            let read = fs::read(entry.path())
                .map_err(|e| e.to_string())
                .and_then(|bytes| Desired::parse(&bytes).map_err(|e| e.to_string()));
            Some((name, read))
        })
        .collect();
    pending.sort_by(|a, b| a.0.cmp(&b.0));
    pending
}

/// Whether `release` has a rollback waiting to be published (a file that does not read is
/// none: the daemon reports it instead of holding the fleet off for it).
#[must_use]
pub fn is_pending(state_dir: &Path, release: &str) -> bool {
    fs::read(file(state_dir, release))
        .ok()
        .is_some_and(|bytes| Desired::parse(&bytes).is_ok())
}

/// Removes `release`'s pending publication once `published` is in etcd, unless a newer one
/// replaced it in the meantime (it is published next time).
pub fn published(state_dir: &Path, release: &str, published: &Desired) -> io::Result<()> {
    let path = file(state_dir, release);
    match fs::read(&path) {
        Ok(bytes) if Desired::parse(&bytes).as_ref() == Ok(published) => fs::remove_file(path),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Drops `release`'s pending publication whatever it holds: a newer change to the fleet's
/// split (a rollback or a weight published from here) replaced it.
pub fn forget(state_dir: &Path, release: &str) -> io::Result<()> {
    match fs::remove_file(file(state_dir, release)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The file of the desired revisions this node applied.
const APPLIED: &str = "fleet-applied.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct AppliedFile {
    identity: String,
    applied: BTreeMap<String, i64>,
}

/// The desired revisions this node applied, by release, when they were of `identity` (the
/// same etcd and prefix); none otherwise.
#[must_use]
pub fn load_applied(state_dir: &Path, identity: &str) -> BTreeMap<String, i64> {
    fs::read(state_dir.join(APPLIED))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<AppliedFile>(&bytes).ok())
        .filter(|file| file.identity == identity)
        .map(|file| file.applied)
        .unwrap_or_default()
}

/// Notes that this node's word for `release` is of the fleet's `revision` (a command wrote it,
/// or wrote something newer here since): its daemon does not apply that revision again. The
/// caller holds the split lock, as the daemon does when it reads this.
pub fn note_applied(
    state_dir: &Path,
    identity: &str,
    release: &str,
    revision: i64,
) -> io::Result<()> {
    let mut applied = load_applied(state_dir, identity);
    let entry = applied.entry(release.to_owned()).or_insert(revision);
    *entry = (*entry).max(revision);
    save_applied(state_dir, identity, &applied)
}

/// Keeps the desired revisions applied: written whole or not at all.
pub fn save_applied(
    state_dir: &Path,
    identity: &str,
    applied: &BTreeMap<String, i64>,
) -> io::Result<()> {
    fs::create_dir_all(state_dir)?;
    let path = state_dir.join(APPLIED);
    let temporary = path.with_extension("json.new");
    let file = AppliedFile {
        identity: identity.to_owned(),
        applied: applied.clone(),
    };
    fs::write(
        &temporary,
        serde_json::to_vec(&file).map_err(io::Error::other)?,
    )?;
    fs::rename(&temporary, &path)
}

#[cfg(test)]
mod tests {
    use splitter_common::{SplitWord, Version};

    use super::*;
    use crate::model::fleet::Cause;

    #[test]
    fn a_pending_rollback_is_kept_until_that_one_is_published() {
        let state = std::env::temp_dir().join(format!("splitter-pending-{}", std::process::id()));
        let _ = fs::remove_dir_all(&state);
        let first = Desired::new(
            SplitWord::new(Version::Blue, 0),
            Cause::Rollback,
            "n1",
            "root",
            1,
        );
        let second = Desired {
            decided_at_ms: 2,
            ..first.clone()
        };
        assert!(list(&state).is_empty());
        save(&state, "model", &first).expect("save");
        assert!(is_pending(&state, "model"));
        save(&state, "model", &second).expect("replace");
        // The first was published while the second replaced it: the second stays.
        published(&state, "model", &first).expect("published");
        assert_eq!(list(&state), vec![("model".to_owned(), Ok(second.clone()))]);
        published(&state, "model", &second).expect("published");
        assert!(!is_pending(&state, "model"));
        save(&state, "model", &first).expect("save");
        forget(&state, "model").expect("forget");
        assert!(!is_pending(&state, "model"));
        forget(&state, "model").expect("forgetting nothing is no error");
        assert!(save(&state, "../x", &first).is_err());
        fs::write(dir(&state).join("bad.json"), "{").expect("write");
        assert!(matches!(&list(&state)[..], [(name, Err(_))] if name == "bad"));
        assert!(
            !is_pending(&state, "bad"),
            "a file that does not read holds nothing"
        );
        let _ = fs::remove_dir_all(&state);
    }

    #[test]
    fn applied_revisions_are_kept_for_one_etcd_and_prefix() {
        let state = std::env::temp_dir().join(format!("splitter-applied-{}", std::process::id()));
        let _ = fs::remove_dir_all(&state);
        assert!(load_applied(&state, "a").is_empty());
        let applied: BTreeMap<String, i64> = [("model".to_owned(), 12)].into();
        save_applied(&state, "a", &applied).expect("save");
        assert_eq!(load_applied(&state, "a"), applied);
        assert!(load_applied(&state, "another etcd").is_empty());
        // A command notes what it wrote; never below what is there.
        note_applied(&state, "a", "model", 9).expect("note");
        assert_eq!(load_applied(&state, "a")["model"], 12);
        note_applied(&state, "a", "other", 3).expect("note");
        assert_eq!(load_applied(&state, "a")["other"], 3);
        let _ = fs::remove_dir_all(&state);
    }
}

//! The daemon's record of the config it last applied: a copy of the file's text, in a fixed
//! place (`paths::APPLIED_DIR`, one file per config path), written at start and at each reload
//! that applied. The emergency commands read it when the file on disk no longer parses, so a
//! rollback never waits for someone to fix a typo.

use std::{
    fs, io,
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use crate::model::paths;

/// The first line of a record: what it is, then the time it was written (Unix ms).
const HEADER: &str = "# splitter-ctl daemon: the config applied at ";

/// A recorded config.
#[derive(Debug)]
pub struct Recorded {
    /// Where the record is.
    pub path: PathBuf,
    /// When it was written (Unix ms).
    pub at_ms: i64,
    /// The config's text, as the daemon validated and applied it.
    pub text: String,
}

/// The config path, absolute, so that `--config x.toml` and its full path name one record.
/// Links are not followed: a config management that points a link at a new (broken) file
/// must find the record of the link the daemon was started with.
fn absolute(config_path: &Path) -> PathBuf {
    std::path::absolute(config_path).unwrap_or_else(|_| config_path.to_owned())
}

/// Where the record of the config at `config_path` is.
#[must_use]
pub fn record_path(config_path: &Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt as _;
    // FNV-1a over the absolute path: a stable file name per config.
    let hash = absolute(config_path)
        .as_os_str()
        .as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
    Path::new(paths::APPLIED_DIR).join(format!("{hash:016x}.toml"))
}

/// Records `text` as the config applied from `config_path`, at `at_ms`: written whole or not
/// at all (a temporary file renamed over the record), readable by root only.
pub fn write(config_path: &Path, text: &str, at_ms: i64) -> io::Result<PathBuf> {
    let path = record_path(config_path);
    let dir = Path::new(paths::APPLIED_DIR);
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    let temporary = path.with_extension("toml.new");
    let mut file = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)?;
    writeln!(
        file,
        "{HEADER}{at_ms} from {}",
        absolute(config_path).display()
    )?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    fs::rename(&temporary, &path)?;
    Ok(path)
}

/// The record of the config at `config_path`, when the daemon left one.
pub fn read(config_path: &Path) -> io::Result<Option<Recorded>> {
    let path = record_path(config_path);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let at_ms = text
        .lines()
        .next()
        .and_then(|line| line.strip_prefix(HEADER))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(0);
    Ok(Some(Recorded { path, at_ms, text }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_record_per_config_path_whatever_way_it_is_named() {
        let here = std::env::current_dir().expect("cwd");
        assert_eq!(
            record_path(Path::new("splitter.toml")),
            record_path(&here.join("splitter.toml"))
        );
        assert_ne!(
            record_path(Path::new("/etc/splitter/a.toml")),
            record_path(Path::new("/etc/splitter/b.toml"))
        );
        assert!(record_path(Path::new("/etc/splitter/a.toml")).starts_with(paths::APPLIED_DIR));
    }
}

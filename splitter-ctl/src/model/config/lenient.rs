//! A config file that does not validate, read as far as it can be: what the emergency commands
//! (`rollback`, `weight`, `status`) need is the pin directory, the state directory and the
//! services, and one broken key must not keep them from a rollback. The paths are taken as
//! written, or as their defaults when the file leaves them out; a path that is there but not
//! valid fails the read, since its default could name another data plane. Each `[[service]]`
//! is validated on its own, and the services that do not validate even so are left out, with
//! why (named by their place in the file).

use std::path::{Path, PathBuf};

use super::{Config, ConfigError, XdpMode};
use crate::model::paths;

/// A config read leniently.
#[derive(Debug)]
pub struct Lenient {
    /// The paths, and the services that validate on their own.
    pub config: Config,
    /// The services left out (by name, or `service[N]`), and the problem each has.
    pub skipped: Vec<(String, String)>,
}

/// Reads `text` leniently. Fails only when it is not TOML at all.
pub fn read(path: &Path, text: &str) -> Result<Lenient, ConfigError> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let (line, column) = e
            .span()
            .map_or((1, 1), |span| super::raw::line_column(text, span.start));
        ConfigError::Syntax {
            path: path.to_owned(),
            line,
            column,
            problem: e.message().trim().to_owned(),
        }
    })?;
    let invalid = |field: &str, problem: &str| ConfigError::Invalid {
        path: path.to_owned(),
        line: 1,
        column: 1,
        field: field.to_owned(),
        problem: problem.to_owned(),
    };
    let absolute = |key: &str, default: &str| match table.get(key) {
        None => Ok(PathBuf::from(default)),
        Some(value) => value
            .as_str()
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .ok_or_else(|| invalid(key, "not an absolute path")),
    };
    let pin_dir = absolute("pin_dir", paths::DEFAULT_PIN_DIR)?;
    if !pin_dir.starts_with(paths::BPFFS_ROOT) || pin_dir == Path::new(paths::BPFFS_ROOT) {
        return Err(invalid("pin_dir", "not a directory under the bpffs"));
    }
    let state_dir = absolute("state_dir", paths::DEFAULT_STATE_DIR)?;
    let control_socket = absolute("control_socket", paths::DEFAULT_CONTROL_SOCKET)?;
    let interface = table
        .get("interface")
        .and_then(toml::Value::as_str)
        .unwrap_or("?")
        .to_owned();
    let mut services = Vec::new();
    let mut skipped = Vec::new();
    let entries = table
        .get("service")
        .and_then(toml::Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (index, entry) in entries.into_iter().enumerate() {
        let name = entry
            .get("name")
            .and_then(toml::Value::as_str)
            .map_or_else(|| format!("service[{index}]"), str::to_owned);
        match service_alone(path, entry, index) {
            Ok(spec) => services.push(spec),
            Err(problem) => skipped.push((name, problem)),
        }
    }
    // Fleet mode on its own: a broken `[fleet]` leaves this node's own commands working, and
    // says the fleet is not told.
    let fleet = match table
        .get("fleet")
        .cloned()
        .map(|entry| fleet_alone(path, entry))
    {
        None => None,
        Some(Ok(fleet)) => fleet,
        Some(Err(problem)) => {
            skipped.push(("fleet".to_owned(), problem));
            None
        }
    };
    Ok(Lenient {
        config: Config {
            interface,
            control_socket,
            fleet,
            services,
            ..with_paths(path, &pin_dir, &state_dir)?
        },
        skipped,
    })
}

/// A config with no services and every default but the given paths: what the emergency
/// commands work with when only the command line says where the data plane is. The defaults
/// are the validator's own (a config that says nothing else).
pub fn with_paths(path: &Path, pin_dir: &Path, state_dir: &Path) -> Result<Config, ConfigError> {
    let defaults = Config::parse(path, "interface = \"lo\"\n")?;
    Ok(Config {
        interface: "?".to_owned(),
        pin_dir: pin_dir.to_owned(),
        state_dir: state_dir.to_owned(),
        xdp_mode: XdpMode::Auto,
        ..defaults
    })
}

/// A config of `key = value` alone (beside a placeholder interface), validated; its problem,
/// when it has one, with the field renamed by `in_file`.
fn alone(
    path: &Path,
    key: &str,
    value: toml::Value,
    in_file: impl Fn(&str) -> String,
) -> Result<Config, String> {
    let mut document = toml::Table::new();
    document.insert("interface".to_owned(), toml::Value::from("lo"));
    document.insert(key.to_owned(), value);
    let text = toml::to_string(&document).map_err(|e| e.to_string())?;
    Config::parse(path, &text).map_err(|error| match error {
        ConfigError::Invalid { field, problem, .. } => format!("`{}`: {problem}", in_file(&field)),
        other => other.to_string(),
    })
}

/// The `[fleet]` table validated on its own.
fn fleet_alone(
    path: &Path,
    entry: toml::Value,
) -> Result<Option<crate::model::fleet::Fleet>, String> {
    alone(path, "fleet", entry, str::to_owned).map(|config| config.fleet)
}

/// The `[[service]]` table at `index` validated on its own; its problem, when it has one,
/// with the field named by the service's place in the file.
fn service_alone(
    path: &Path,
    entry: toml::Value,
    index: usize,
) -> Result<super::ServiceSpec, String> {
    let in_file = |field: &str| {
        field.strip_prefix("service[0]").map_or_else(
            || field.to_owned(),
            |rest| format!("service[{index}]{rest}"),
        )
    };
    let mut config = alone(path, "service", toml::Value::Array(vec![entry]), in_file)?;
    Ok(config.services.remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_with_a_broken_service_still_gives_its_paths_and_the_other_services() {
        let text = r#"
interface = "eth0"
pin_dir = "/sys/fs/bpf/splitter-a"
state_dir = "/var/lib/splitter-a"
flow_table_per_cpu = 7

[[service]]
name = "sentiment"
listen = "198.18.0.1:8080"
blue = ["198.18.1.2:8080"]
green = ["198.18.2.2:8080"]
green_weight = 20

[[service]]
name = "broken"
listen = "198.18.0.1:9090"
blue = ["not an address"]
"#;
        assert!(Config::parse(Path::new("f.toml"), text).is_err());
        let lenient = read(Path::new("f.toml"), text).expect("lenient");
        assert_eq!(
            lenient.config.pin_dir,
            PathBuf::from("/sys/fs/bpf/splitter-a")
        );
        assert_eq!(
            lenient.config.state_dir,
            PathBuf::from("/var/lib/splitter-a")
        );
        assert_eq!(lenient.config.services.len(), 1);
        assert_eq!(lenient.config.services[0].name, "sentiment");
        assert_eq!(lenient.config.services[0].green_share_bp, 2_000);
        assert_eq!(lenient.skipped.len(), 1);
        assert_eq!(lenient.skipped[0].0, "broken");
        assert!(
            lenient.skipped[0].1.contains("service[1].blue[0]"),
            "{:?}",
            lenient.skipped
        );
    }

    #[test]
    fn a_fleet_table_is_read_on_its_own() {
        let good = "interface = \"eth0\"\nbroken = 1\n[fleet]\netcd = [\"http://198.18.250.2:2379\"]\nnode = \"n1\"\n";
        let lenient = read(Path::new("f.toml"), good).expect("lenient");
        assert_eq!(lenient.config.fleet.map(|f| f.node), Some("n1".to_owned()));
        let bad = "interface = \"eth0\"\n[fleet]\netcd = [\"etcd:2379\"]\n";
        let lenient = read(Path::new("f.toml"), bad).expect("lenient");
        assert_eq!(lenient.config.fleet, None);
        assert_eq!(lenient.skipped.len(), 1);
        assert_eq!(lenient.skipped[0].0, "fleet");
        assert!(
            lenient.skipped[0].1.contains("fleet.etcd[0]"),
            "{:?}",
            lenient.skipped
        );
    }

    #[test]
    fn a_file_that_is_not_toml_is_a_syntax_error() {
        assert!(matches!(
            read(Path::new("f.toml"), "interface = \n[[[["),
            Err(ConfigError::Syntax { .. })
        ));
    }

    #[test]
    fn paths_left_out_take_their_defaults_and_paths_that_are_wrong_fail_the_read() {
        let lenient = read(Path::new("f.toml"), "interface = \"eth0\"\n").expect("lenient");
        assert_eq!(
            lenient.config.pin_dir,
            PathBuf::from(paths::DEFAULT_PIN_DIR)
        );
        assert_eq!(
            lenient.config.state_dir,
            PathBuf::from(paths::DEFAULT_STATE_DIR)
        );
        for (text, field) in [
            ("pin_dir = \"/etc\"\n", "pin_dir"),
            ("state_dir = \"relative\"\n", "state_dir"),
            ("state_dir = 7\n", "state_dir"),
        ] {
            match read(Path::new("f.toml"), text) {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }
}

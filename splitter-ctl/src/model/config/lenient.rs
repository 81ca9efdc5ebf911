//! A config file that does not validate, read as far as it can be: what the emergency commands
//! (`rollback`, `weight`, `status`) need is the pin directory, the state directory and the
//! services, and one broken key must not keep them from a rollback. The paths are taken as
//! written (or their defaults); each `[[service]]` is validated on its own, and the services
//! that do not validate even so are left out, with why.

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
    let absolute = |key: &str, default: &str| {
        table
            .get(key)
            .and_then(toml::Value::as_str)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .unwrap_or_else(|| PathBuf::from(default))
    };
    let pin_dir = Some(absolute("pin_dir", paths::DEFAULT_PIN_DIR))
        .filter(|p| p.starts_with(paths::BPFFS_ROOT) && p != Path::new(paths::BPFFS_ROOT))
        .unwrap_or_else(|| PathBuf::from(paths::DEFAULT_PIN_DIR));
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
        match alone(path, entry) {
            Ok(spec) => services.push(spec),
            Err(problem) => skipped.push((name, problem)),
        }
    }
    let defaults = Config::parse(path, "interface = \"lo\"\n")?;
    Ok(Lenient {
        config: Config {
            path: path.to_owned(),
            interface,
            pin_dir,
            state_dir: absolute("state_dir", paths::DEFAULT_STATE_DIR),
            control_socket: absolute("control_socket", paths::DEFAULT_CONTROL_SOCKET),
            xdp_mode: XdpMode::Auto,
            services,
            ..defaults
        },
        skipped,
    })
}

/// One `[[service]]` table validated on its own; its problem, when it has one.
fn alone(path: &Path, entry: toml::Value) -> Result<super::ServiceSpec, String> {
    let mut document = toml::Table::new();
    document.insert("interface".to_owned(), toml::Value::from("lo"));
    document.insert("service".to_owned(), toml::Value::Array(vec![entry]));
    let text = toml::to_string(&document).map_err(|e| e.to_string())?;
    match Config::parse(path, &text) {
        Ok(mut config) => Ok(config.services.remove(0)),
        Err(ConfigError::Invalid { field, problem, .. }) => Err(format!("`{field}`: {problem}")),
        Err(other) => Err(other.to_string()),
    }
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
            lenient.skipped[0].1.contains("service[0].blue[0]"),
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
    fn paths_that_are_not_where_they_may_be_fall_back_to_the_defaults() {
        let lenient = read(
            Path::new("f.toml"),
            "pin_dir = \"/etc\"\nstate_dir = \"relative\"\n",
        )
        .expect("lenient");
        assert_eq!(
            lenient.config.pin_dir,
            PathBuf::from(paths::DEFAULT_PIN_DIR)
        );
        assert_eq!(
            lenient.config.state_dir,
            PathBuf::from(paths::DEFAULT_STATE_DIR)
        );
    }
}

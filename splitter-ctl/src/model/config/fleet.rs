//! The `[fleet]` table validated: etcd's endpoints, this node's name, the key prefix, the lease
//! and TLS. The facts (defaults, key layout) are `model::fleet`'s.

use std::{ops::RangeInclusive, time::Duration};

use toml::Spanned;

use super::{ConfigError, raw::RawFleet, validate::Validator};
use crate::model::fleet::{
    DEFAULT_LEASE_TTL, DEFAULT_PREFIX, Endpoint, Fleet, FleetTls, is_key_segment,
};

/// Lease TTLs a config may set, in seconds: etcd's minimum is about 2 s (its election timeout
/// and heartbeat), and a node silent for more than a minute is not one to wait for.
const LEASE_TTL_S: RangeInclusive<u64> = 2..=60;

impl Validator<'_> {
    pub(super) fn fleet(&self, raw: &Spanned<RawFleet>) -> Result<Fleet, ConfigError> {
        let raw = raw.get_ref();
        if raw.etcd.get_ref().is_empty() {
            return Err(self.invalid(
                raw.etcd.span(),
                "fleet.etcd",
                "lists no endpoint: give one or more URLs, such as \"http://198.18.250.2:2379\"",
            ));
        }
        let endpoints = raw
            .etcd
            .get_ref()
            .iter()
            .enumerate()
            .map(|(i, url)| {
                Endpoint::parse(url.get_ref()).map_err(|problem| {
                    self.invalid(url.span(), format!("fleet.etcd[{i}]"), problem)
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let node = match &raw.node {
            Some(node) if is_key_segment(node.get_ref()) => node.get_ref().clone(),
            Some(node) => {
                return Err(self.invalid(
                    node.span(),
                    "fleet.node",
                    "expected 1 to 63 letters, digits, `.`, `-` or `_`",
                ));
            }
            None => hostname().filter(|h| is_key_segment(h)).ok_or_else(|| {
                self.invalid(
                    raw.etcd.span(),
                    "fleet.node",
                    "this host's name cannot name a node in etcd; set `node`",
                )
            })?,
        };
        let prefix = match &raw.prefix {
            None => DEFAULT_PREFIX.to_owned(),
            Some(prefix) => {
                let text = prefix.get_ref();
                let segments_ok = text
                    .strip_prefix('/')
                    .is_some_and(|rest| rest.split('/').all(is_key_segment));
                if !segments_ok {
                    return Err(self.invalid(
                        prefix.span(),
                        "fleet.prefix",
                        "expected `/name` or `/name/name...` (letters, digits, `.`, `-`, `_`)",
                    ));
                }
                text.clone()
            }
        };
        let ttl = self.ranged(
            raw.lease_ttl_s.as_ref(),
            "fleet.lease_ttl_s",
            DEFAULT_LEASE_TTL.as_secs(),
            LEASE_TTL_S,
        )?;
        let tls = self.fleet_tls(raw, &endpoints)?;
        Ok(Fleet {
            endpoints,
            node,
            prefix,
            lease_ttl: Duration::from_secs(ttl),
            tls,
        })
    }

    fn fleet_tls(&self, raw: &RawFleet, endpoints: &[Endpoint]) -> Result<FleetTls, ConfigError> {
        let path = |raw: &Option<Spanned<String>>, field: &str| -> Result<_, ConfigError> {
            raw.as_ref()
                .map(|p| self.absolute_path(Some(p), field, "/"))
                .transpose()
        };
        let ca_file = path(&raw.ca_file, "fleet.ca_file")?;
        let cert = path(&raw.cert_file, "fleet.cert_file")?;
        let key = path(&raw.key_file, "fleet.key_file")?;
        let client = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                let span = raw
                    .cert_file
                    .as_ref()
                    .or(raw.key_file.as_ref())
                    .map_or(0..0, Spanned::span);
                return Err(self.invalid(
                    span,
                    "fleet.cert_file",
                    "a client certificate needs its key: set both `cert_file` and `key_file`, or neither",
                ));
            }
        };
        let tls = FleetTls { ca_file, client };
        if tls != FleetTls::default() && endpoints.iter().any(|e| !e.tls) {
            return Err(self.invalid(
                raw.etcd.span(),
                "fleet.etcd",
                "TLS files are set but an endpoint is http://: use https:// for every endpoint",
            ));
        }
        Ok(tls)
    }
}

/// This host's name, as the kernel has it.
fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::super::Config;
    use super::*;

    fn parse(fleet: &str) -> Result<Option<Fleet>, String> {
        let text = format!("interface = \"lo\"\n\n[fleet]\n{fleet}");
        Config::parse(Path::new("f.toml"), &text)
            .map(|c| c.fleet)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_fleet_table_takes_its_defaults() {
        let fleet = parse("etcd = [\"http://198.18.250.2:2379\"]\nnode = \"n1\"\n")
            .expect("valid")
            .expect("fleet");
        assert_eq!(fleet.prefix, "/splitter");
        assert_eq!(fleet.lease_ttl, Duration::from_secs(5));
        assert_eq!(fleet.node_key(), "/splitter/v1/nodes/n1");
        assert_eq!(fleet.desired_key("model"), "/splitter/v1/desired/model");
        assert_eq!(fleet.tls, FleetTls::default());
        let without = Config::parse(Path::new("f.toml"), "interface = \"lo\"\n").expect("valid");
        assert_eq!(without.fleet, None);
    }

    #[test]
    fn bad_fleet_values_are_named_with_their_place() {
        for (fleet, expected) in [
            ("etcd = []\n", "f.toml:4:8: `fleet.etcd`: lists no endpoint"),
            ("etcd = [\"198.18.0.1:2379\"]\n", "`fleet.etcd[0]`"),
            (
                "etcd = [\"http://198.18.0.1:2379\"]\nnode = \"a/b\"\n",
                "`fleet.node`",
            ),
            (
                "etcd = [\"http://198.18.0.1:2379\"]\nprefix = \"splitter\"\n",
                "`fleet.prefix`",
            ),
            (
                "etcd = [\"http://198.18.0.1:2379\"]\nlease_ttl_s = 1\n",
                "`fleet.lease_ttl_s`: 1 is outside 2..=60",
            ),
            (
                "etcd = [\"https://198.18.0.1:2379\"]\ncert_file = \"/etc/c.pem\"\n",
                "`fleet.cert_file`: a client certificate needs its key",
            ),
            (
                "etcd = [\"http://198.18.0.1:2379\"]\nca_file = \"/etc/ca.pem\"\n",
                "use https://",
            ),
            (
                "etcd = [\"http://198.18.0.1:2379\"]\nttl = 5\n",
                "unknown key",
            ),
        ] {
            let error = parse(fleet).expect_err(fleet);
            assert!(error.contains(expected), "{fleet}: {error}");
        }
    }

    #[test]
    fn tls_files_are_taken_with_https_endpoints() {
        let fleet = parse(
            "etcd = [\"https://198.18.0.1:2379\", \"https://198.18.0.2:2379\"]\nnode = \"n\"\nca_file = \"/etc/ca.pem\"\ncert_file = \"/etc/c.pem\"\nkey_file = \"/etc/k.pem\"\n",
        )
        .expect("valid")
        .expect("fleet");
        assert_eq!(fleet.endpoints.len(), 2);
        assert_eq!(
            fleet.tls,
            FleetTls {
                ca_file: Some(PathBuf::from("/etc/ca.pem")),
                client: Some((PathBuf::from("/etc/c.pem"), PathBuf::from("/etc/k.pem"))),
            }
        );
    }
}

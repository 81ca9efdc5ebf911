//! Every filesystem path Splitter uses, in one place.

use std::path::{Path, PathBuf};

/// Where every command looks for the config unless `--config` says otherwise.
pub const DEFAULT_CONFIG: &str = "/etc/splitter/splitter.toml";
/// The default bpffs directory of one data plane (config key `pin_dir`).
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/splitter";
/// Where bpffs is mounted; the daemon mounts it when missing.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";
/// The daemon's control socket (config key `control_socket`).
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/splitter/ctl.sock";
/// Where the daemon keeps state (config key `state_dir`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/splitter";
/// Where the daemon keeps a copy of each config it applied, for the emergency commands to read
/// when the file itself no longer parses (one file per config path: `store::applied`).
pub const APPLIED_DIR: &str = "/run/splitter/applied";
/// Where the daemon serves metrics (config key `metrics_listen`).
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";
/// Pin of the XDP ingress link, inside the pin directory.
pub const XDP_LINK_PIN: &str = "link_xdp";
/// Pin of the TC egress link, inside the pin directory.
pub const TC_LINK_PIN: &str = "link_tc";
/// Pin of the reply fast path's program, inside the pin directory.
pub const REPLY_PROGRAM_PIN: &str = "prog_reply";
/// Directory of the reply fast path's links (one pin per device, by ifindex), inside the pin
/// directory.
pub const REPLY_LINKS_DIR: &str = "links_reply";

/// The pin of a map or link named `name` in `pin_dir`.
#[must_use]
pub fn pin(pin_dir: &Path, name: &str) -> PathBuf {
    pin_dir.join(name)
}

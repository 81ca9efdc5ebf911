//! The config file as TOML gives it: every value with its place in the file (`Spanned`), so
//! that validation can name the line and column of what is wrong. Unknown keys are refused
//! here, by serde.

use serde::Deserialize;
use toml::Spanned;

use crate::model::plan::PlanRequest;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub interface: Spanned<String>,
    pub pin_dir: Option<Spanned<String>>,
    pub xdp_mode: Option<Spanned<String>>,
    pub control_socket: Option<Spanned<String>>,
    pub control_group: Option<Spanned<String>>,
    pub metrics_listen: Option<Spanned<String>>,
    pub state_dir: Option<Spanned<String>>,
    pub flow_table_per_cpu: Option<Spanned<u32>>,
    pub new_flow_rate_per_cpu: Option<Spanned<u32>>,
    pub fast_path: Option<Spanned<bool>>,
    pub fleet: Option<Spanned<RawFleet>>,
    #[serde(default, rename = "service")]
    pub services: Vec<Spanned<RawService>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub name: Spanned<String>,
    pub listen: Spanned<String>,
    pub protocol: Option<Spanned<String>>,
    pub live: Option<Spanned<String>>,
    pub blue: Option<Spanned<Vec<Spanned<String>>>>,
    pub green: Option<Spanned<Vec<Spanned<String>>>>,
    pub green_weight: Option<Spanned<toml::Value>>,
    pub health: Option<Spanned<RawHealth>>,
    pub affinity: Option<Spanned<String>>,
    pub l7: Option<Spanned<String>>,
    pub always_candidate: Option<Vec<Spanned<String>>>,
    pub never_candidate: Option<Vec<Spanned<String>>>,
    pub group: Option<Spanned<String>>,
    pub last_resort: Option<Spanned<Vec<Spanned<String>>>>,
    pub client_prefix_v4: Option<Spanned<u8>>,
    pub client_prefix_v6: Option<Spanned<u8>>,
    pub rollout: Option<Spanned<PlanRequest>>,
    pub rollback_window_ms: Option<Spanned<u64>>,
    pub drill_every_ms: Option<Spanned<u64>>,
    pub established: Option<Spanned<String>>,
    pub drain_timeout_ms: Option<Spanned<u64>>,
    pub drain_idle_ms: Option<Spanned<u64>>,
    pub retire_drain_window_ms: Option<Spanned<u64>>,
    pub max_connection_age_ms: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFleet {
    pub etcd: Spanned<Vec<Spanned<String>>>,
    pub node: Option<Spanned<String>>,
    pub prefix: Option<Spanned<String>>,
    pub lease_ttl_s: Option<Spanned<u64>>,
    pub ca_file: Option<Spanned<String>>,
    pub cert_file: Option<Spanned<String>>,
    pub key_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub interval_ms: Option<Spanned<u64>>,
    pub timeout_ms: Option<Spanned<u64>>,
    pub unhealthy_after: Option<Spanned<u32>>,
    pub healthy_after: Option<Spanned<u32>>,
    pub http_path: Option<Spanned<String>>,
    pub http_status: Option<Spanned<u16>>,
}

/// The line and column (both from 1) of byte `offset` in `text`.
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

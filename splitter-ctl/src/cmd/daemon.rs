//! `splitter-ctl daemon`: loads or adopts the data plane, attaches it, applies the config, and
//! stays in the foreground until SIGINT or SIGTERM. On exit the data plane keeps running
//! (pinned), unless `--detach-on-exit` asks for it to be removed.

use std::{path::Path, time::Duration};

use tokio::signal::unix::{SignalKind, signal};

use super::CommandError;
use crate::{
    apply::apply, config::Config, dataplane, maps::Maps, notify::notify, share::format_percent,
};
use splitter_common::{FLOW_FIN, FLOW_OPEN, Version};

/// How often closed flows are swept from the flow table.
pub const FLOW_SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// How long a flow that saw a FIN stays, for the last ACKs and a half-closed peer.
pub const FIN_GRACE: Duration = Duration::from_secs(60);
/// How long a flow that saw a RST stays.
pub const RST_GRACE: Duration = Duration::from_secs(10);

pub async fn run(config_path: &Path, detach_on_exit: bool) -> Result<(), CommandError> {
    let config = Config::load(config_path)?;
    let fresh = !dataplane::is_attached(&config.pin_dir);
    let mut maps = match start(&config) {
        Ok(maps) => maps,
        Err(error) => {
            // Leave nothing half-made behind when there was no data plane before us.
            if fresh {
                let _ = dataplane::detach(&config.pin_dir);
            }
            return Err(error);
        }
    };

    let mut terminate = signal(SignalKind::terminate()).map_err(|source| CommandError::Io {
        what: "install the SIGTERM handler",
        source,
    })?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|source| CommandError::Io {
        what: "install the SIGINT handler",
        source,
    })?;
    if let Err(error) = notify("READY=1") {
        tracing::warn!(error = %error, "cannot tell the service manager that the daemon is ready");
    }
    tracing::info!("ready");
    let mut sweep = tokio::time::interval(FLOW_SWEEP_INTERVAL);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let signal_name = loop {
        tokio::select! {
            _ = terminate.recv() => break "SIGTERM",
            _ = interrupt.recv() => break "SIGINT",
            _ = sweep.tick() => match sweep_closed_flows(&mut maps) {
                Ok(0) => {}
                Ok(removed) => tracing::debug!(removed, "swept closed flows"),
                Err(error) => tracing::warn!(error = %error, "cannot sweep closed flows"),
            },
        }
    };
    let _ = notify("STOPPING=1");
    if detach_on_exit {
        let removed = dataplane::detach(&config.pin_dir)?;
        tracing::info!(
            signal = signal_name,
            pins = removed.len(),
            "stopping; data plane detached (--detach-on-exit)"
        );
    } else {
        tracing::info!(signal = signal_name, pin_dir = %config.pin_dir.display(), "stopping; the data plane keeps running");
    }
    Ok(())
}

fn start(config: &Config) -> Result<Maps, CommandError> {
    let mut ebpf = dataplane::load(Some(&config.pin_dir))?;
    let attachment = dataplane::attach(
        &mut ebpf,
        &config.interface,
        &config.pin_dir,
        config.xdp_mode,
    )?;
    let mut maps = Maps::from_ebpf(&mut ebpf)?;
    // The pinned links hold the programs; the object itself is no longer needed.
    drop(ebpf);
    if attachment.adopted {
        tracing::info!(interface = %config.interface, pin_dir = %config.pin_dir.display(), "adopted the pinned data plane; programs replaced in place, maps kept");
    } else {
        tracing::info!(interface = %config.interface, pin_dir = %config.pin_dir.display(), xdp_mode = attachment.xdp_mode.unwrap_or("?"), "attached the data plane");
    }
    let applied = apply(&mut maps, config)?;
    for (service, kernel, wanted) in &applied.split_differs {
        tracing::info!(
            service = %service,
            kernel_green_percent = %format_percent(kernel.share_of(Version::Green)),
            config_green_percent = %format_percent(wanted.share_of(Version::Green)),
            kernel_live = kernel.live().name(),
            "keeping the split in the kernel, which differs from the config (an operator change)"
        );
    }
    tracing::info!(
        added = ?applied.added,
        kept = ?applied.kept,
        removed = ?applied.removed,
        purged_flows = applied.purged_flows,
        "config applied"
    );
    Ok(maps)
}

/// Removes flows whose connection closed longer ago than its grace period.
pub fn sweep_closed_flows(maps: &mut Maps) -> Result<usize, CommandError> {
    let now = monotonic_ns();
    let fin = FIN_GRACE.as_nanos() as u64;
    let rst = RST_GRACE.as_nanos() as u64;
    Ok(maps.purge_flows(|_, flow| {
        let age = now.saturating_sub(flow.state_changed_ns);
        match flow.state {
            FLOW_OPEN => false,
            FLOW_FIN => age > fin,
            _ => age > rst,
        }
    })?)
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

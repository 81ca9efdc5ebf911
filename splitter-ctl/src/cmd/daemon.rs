//! `splitter-ctl daemon`: loads or adopts the data plane, attaches it, applies the config, and
//! stays in the foreground until SIGINT or SIGTERM. On exit the data plane keeps running
//! (pinned), unless `--detach-on-exit` asks for it to be removed.

use std::path::Path;

use tokio::signal::unix::{SignalKind, signal};

use super::CommandError;
use crate::{
    aging, apply::apply, config::Config, dataplane, maps::Maps, notify::notify,
    share::format_percent,
};
use splitter_common::Version;

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
    let mut sweep = tokio::time::interval(aging::SWEEP_INTERVAL);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let signal_name = loop {
        tokio::select! {
            _ = terminate.recv() => break "SIGTERM",
            _ = interrupt.recv() => break "SIGINT",
            _ = sweep.tick() => match aging::sweep(&mut maps, aging::monotonic_ns()) {
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

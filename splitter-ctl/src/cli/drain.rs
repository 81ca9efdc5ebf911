//! The drain after `rollback`'s write: the connections of the version it left, each closed at
//! its first idle moment (or reset, or kept, as `--established` or the service's config says).
//! The daemon runs it when it answers, so the command returns at once and the journal gets the
//! drain's times when it ends; with no daemon, this process runs it to its end.

use std::{
    thread,
    time::{Duration, Instant},
};

use bytes::Bytes;
use hyper::{Method, StatusCode};

use super::{
    CommandError,
    client::{self, ClientError},
    split::Left,
};
use crate::{
    daemon::drain::{self, Plan},
    io::{http::encode, users},
    kernel::maps::Maps,
    model::{drain::Established, error::chain},
    store::journal::{EventKind, Journal, NewEvent},
    view::drain::{DrainReport, DrainRequest},
};

/// How long the daemon has to take the drain on.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the daemon's drain is looked at while the command waits for it.
const WAIT_POLL: Duration = Duration::from_millis(20);

/// Drains what `release`'s rollback left: through the daemon, waiting up to `wait` for its
/// report, or here to the end. What happened, for a person.
pub fn after_rollback(
    release: &str,
    left: &Left,
    established: Option<Established>,
    wait: Duration,
) -> Result<String, CommandError> {
    let policy = established.unwrap_or(left.drain.established);
    let version = left.version.name();
    if policy == Established::Keep {
        return Ok(format!(
            "connections already on {version} are kept (established = keep): they end when their clients close them"
        ));
    }
    let request = DrainRequest {
        version: version.to_owned(),
        established: Some(policy.name().to_owned()),
        event: left.event,
        decided_monotonic_ns: Some(left.decided_ns),
    };
    let body = Bytes::from(serde_json::to_vec(&request)?);
    let path = format!("/v1/drains/{}", encode(release));
    let why_here = match client::send(
        &left.control_socket,
        Method::POST,
        &path,
        body,
        DAEMON_TIMEOUT,
    ) {
        Ok((StatusCode::ACCEPTED, _)) => {
            return Ok(wait_for_daemon(left, release, version, wait));
        }
        // The daemon does not run this service (named by its address, say): drained here.
        Ok((StatusCode::NOT_FOUND, _)) => "the daemon does not run it".to_owned(),
        Ok((_, body)) => {
            let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            return Err(CommandError::Daemon(format!(
                "the rollback is written, but the daemon refused to drain {version}: {}",
                value["error"].as_str().unwrap_or("no reason given")
            )));
        }
        Err(ClientError::NotRunning { .. }) => "the daemon is not running".to_owned(),
        Err(ClientError::NoAnswer { .. }) => "the daemon does not answer".to_owned(),
        Err(other) => chain(&other).to_string(),
    };
    eprintln!("{why_here}: draining {version} from this command");
    let report = drain_here(release, left, policy)?;
    Ok(report.describe())
}

/// Waits up to `wait` for the daemon's drain of `release`'s `version` to end; its report, or
/// where it stands.
fn wait_for_daemon(left: &Left, release: &str, version: &str, wait: Duration) -> String {
    let deadline = Instant::now() + wait;
    let mut last: Option<DrainReport> = None;
    loop {
        let reports = client::send(
            &left.control_socket,
            Method::GET,
            "/v1/drains",
            Bytes::new(),
            DAEMON_TIMEOUT,
        )
        .ok()
        .and_then(|(_, body)| serde_json::from_slice::<Vec<DrainReport>>(&body).ok());
        if let Some(report) = reports
            .into_iter()
            .flatten()
            .find(|r| r.service == release && r.version == version)
        {
            if report.done || Instant::now() >= deadline {
                let tail = if report.done {
                    ""
                } else {
                    " (the daemon goes on; `splitter-ctl status` shows it)"
                };
                return format!("{}{tail}", report.describe());
            }
            last = Some(report);
        }
        if Instant::now() >= deadline {
            return last.map_or_else(
                || format!("the daemon is draining {version}"),
                |r| r.describe(),
            );
        }
        thread::sleep(WAIT_POLL);
    }
}

/// Runs the drain in this process, to its end, and journals it.
fn drain_here(
    release: &str,
    left: &Left,
    established: Established,
) -> Result<DrainReport, CommandError> {
    let mut maps = Maps::open_pinned(&left.pin_dir)?;
    let plan = Plan {
        release: release.to_owned(),
        ids: left.ids.clone(),
        version: left.version,
        established,
        timeout: left.drain.timeout,
        idle: left.drain.idle,
        spread: Duration::ZERO,
        decided_ns: left.decided_ns,
        take: drain::Take::Version,
    };
    let report = drain::run_to_end(&mut maps, plan)?;
    let details = serde_json::to_value(&report)?;
    let journaled = Journal::open(&left.state_dir).and_then(|journal| {
        if let Some(id) = left.event {
            journal.set_drain(
                id,
                report.decision_to_last_response_us,
                report.decision_to_last_close_us,
                &details,
            )?;
        }
        journal.record(&NewEvent {
            reason: Some(report.describe()),
            details,
            ..NewEvent::new(
                release,
                EventKind::Drain,
                &users::describe(users::this_process()),
            )
        })
    });
    if let Err(error) = journaled {
        eprintln!(
            "warning: the drain is done but not in the journal: {}",
            chain(&error)
        );
    }
    Ok(report)
}

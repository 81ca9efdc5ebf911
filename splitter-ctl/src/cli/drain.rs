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
    view::drain::{DrainJournal, DrainReport, DrainRequest},
};

/// How long the daemon has to take the drain on.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the daemon's drain is looked at while the command waits for it.
const WAIT_POLL: Duration = Duration::from_millis(20);

/// A drain asked for right after the rollback's write, before its journal entry, so that the
/// journal's write (its fsyncs: milliseconds) never delays the drain.
#[derive(Debug)]
pub enum Begun {
    /// Nothing to drain (`keep`): what to say.
    Kept(String),
    /// The daemon took it on; it learns the journal entry later (`attach`).
    Daemon,
    /// This command runs it, once the rollback is journaled: why here.
    Here(String),
    /// The daemon refused it: why.
    Refused(String),
}

/// Asks the daemon to drain what `release`'s rollback left (the policy `established`, or the
/// service's).
pub fn begin(release: &str, left: &Left, established: Option<Established>) -> Begun {
    let policy = established.unwrap_or(left.drain.established);
    let version = left.version.name();
    if policy == Established::Keep {
        return Begun::Kept(format!(
            "connections already on {version} are kept (established = keep): they end when their clients close them"
        ));
    }
    let request = DrainRequest {
        version: version.to_owned(),
        established: Some(policy.name().to_owned()),
        event: left.event,
        decided_monotonic_ns: Some(left.decided_ns),
    };
    let Ok(body) = serde_json::to_vec(&request) else {
        return Begun::Here("the drain request cannot be written".to_owned());
    };
    let path = format!("/v1/drains/{}", encode(release));
    let why_here = match client::send(
        &left.control_socket,
        Method::POST,
        &path,
        Bytes::from(body),
        DAEMON_TIMEOUT,
    ) {
        Ok((StatusCode::ACCEPTED, _)) => return Begun::Daemon,
        // The daemon does not run this service (named by its address, say): drained here.
        Ok((StatusCode::NOT_FOUND, _)) => "the daemon does not run it".to_owned(),
        Ok((_, body)) => {
            let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            return Begun::Refused(
                value["error"]
                    .as_str()
                    .unwrap_or("no reason given")
                    .to_owned(),
            );
        }
        Err(ClientError::NotRunning { .. }) => "the daemon is not running".to_owned(),
        Err(ClientError::NoAnswer { .. }) => "the daemon does not answer".to_owned(),
        Err(other) => chain(&other).to_string(),
    };
    Begun::Here(why_here)
}

/// Ends what `begin` began, once the rollback is journaled (`left.event`): tells the daemon
/// the journal entry and waits up to `wait` for its report, or runs the drain here to its end.
/// What happened, for a person.
pub fn finish(
    begun: Begun,
    release: &str,
    left: &Left,
    established: Option<Established>,
    wait: Duration,
) -> Result<String, CommandError> {
    let version = left.version.name();
    match begun {
        Begun::Kept(said) => Ok(said),
        Begun::Refused(why) => Err(CommandError::Daemon(format!(
            "the rollback is written, but the daemon refused to drain {version}: {why}"
        ))),
        Begun::Daemon => {
            if let Some(event) = left.event {
                attach(release, left, event);
            }
            Ok(wait_for_daemon(left, release, version, wait))
        }
        Begun::Here(why_here) => {
            eprintln!("{why_here}: draining {version} from this command");
            let policy = established.unwrap_or(left.drain.established);
            let report = drain_here(release, left, policy)?;
            Ok(report.describe())
        }
    }
}

/// Tells the daemon the journal entry its drain completes (asked for before the entry was
/// written); a warning when it cannot be told: the drain goes on, its times not journaled.
fn attach(release: &str, left: &Left, event: i64) {
    let request = DrainJournal {
        version: left.version.name().to_owned(),
        decided_monotonic_ns: left.decided_ns,
        event,
    };
    let told = serde_json::to_vec(&request)
        .map_err(|e| e.to_string())
        .and_then(|body| {
            client::send(
                &left.control_socket,
                Method::PUT,
                &format!("/v1/drains/{}/journal", encode(release)),
                Bytes::from(body),
                DAEMON_TIMEOUT,
            )
            .map_err(|e| chain(&e).to_string())
        });
    match told {
        Ok((StatusCode::OK, _)) => {}
        Ok((status, body)) => eprintln!(
            "warning: the daemon drains, but its times will not be in the rollback's journal entry: {status} {}",
            String::from_utf8_lossy(&body)
        ),
        Err(why) => eprintln!(
            "warning: the daemon drains, but its times will not be in the rollback's journal entry: {why}"
        ),
    }
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

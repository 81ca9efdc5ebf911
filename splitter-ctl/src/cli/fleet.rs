//! Fleet mode on the command line (`[fleet]` in the config; `--local` acts on this node alone):
//! `weight` moves the fleet's desired split by a compare-and-swap on its revision and then this
//! node's kernel; `rollback` writes this node's kernel first, never waiting for etcd, then
//! tells the fleet, or leaves the rollback for the daemon to publish when etcd answers again;
//! `status` shows every node.

use std::path::Path;

use splitter_common::SplitWord;

use super::{
    CommandError,
    client::runtime,
    locate::{Located, Overrides, Target, locate},
};
use crate::{
    io::{
        etcd::{Etcd, EtcdError, Swap},
        fleet, users,
    },
    kernel::split_lock::SplitLockFile,
    model::{
        error::chain,
        fleet::{
            COMMAND_TIMEOUT, Cause, Desired, Fleet, FleetEvent, Member, NodeReport, RecordError,
        },
        fleet_rollout::{Coordinator, FleetRollout},
        share::format_percent,
    },
    store::{self, journal::now_ms},
    view::fleet::{FleetView, Read, view},
};

/// What a command on the fleet acts on.
#[derive(Debug)]
pub struct FleetTarget {
    pub fleet: Fleet,
    /// The release (service or group) the desired split is kept under.
    pub release: String,
    pub state_dir: std::path::PathBuf,
}

/// The fleet a command on `name` acts on: `None` without `[fleet]`, or for a service known by
/// its address only (no name to keep a desired split under: this node alone, said so).
pub fn target(
    config: &Path,
    overrides: &Overrides,
    name: &str,
) -> Result<Option<FleetTarget>, CommandError> {
    target_in(&locate(config, overrides)?, name)
}

/// `target` with the config located already.
pub fn target_in(located: &Located, name: &str) -> Result<Option<FleetTarget>, CommandError> {
    let Some(fleet) = located.config.fleet.clone() else {
        return Ok(None);
    };
    let target = located.target(name)?;
    let Target::Named { release, .. } = &target else {
        eprintln!("{name}: known by its address only: this node alone; the fleet is not told");
        return Ok(None);
    };
    Ok(Some(FleetTarget {
        release: release.clone(),
        fleet,
        state_dir: located.state_dir().to_owned(),
    }))
}

pub(super) fn etcd(fleet: &Fleet) -> Result<Etcd, CommandError> {
    Etcd::new(fleet, COMMAND_TIMEOUT)
        .map_err(|error| CommandError::Fleet(chain(&error).to_string()))
}

/// etcd did not answer: nothing changed.
pub(super) fn unreachable(error: EtcdError) -> CommandError {
    CommandError::FleetUnreachable(chain(&error).to_string())
}

/// A change made whose record in the fleet's history could not be written: said, not fatal.
pub(super) fn note_event(recorded: Result<(), EtcdError>) {
    if let Err(error) = recorded {
        eprintln!(
            "warning: the change is made but not in the fleet's history: {}",
            chain(&error)
        );
    }
}

/// `history --fleet`: the newest `limit` changes of the fleet's desired splits, of `release`
/// (or all), as etcd keeps them.
pub fn history(
    fleet: &Fleet,
    release: Option<&str>,
    limit: usize,
) -> Result<(Vec<FleetEvent>, usize), CommandError> {
    let etcd = etcd(fleet)?;
    // Read more than asked when one release is wanted: the others are left out here.
    let read = if release.is_some() {
        limit.saturating_mul(8)
    } else {
        limit
    };
    let (mut events, unreadable) = runtime()?
        .block_on(fleet::newest(&etcd, fleet, read))
        .map_err(|error| CommandError::FleetUnreachable(chain(&error).to_string()))?;
    events.retain(|e| release.is_none_or(|r| e.release == r));
    events.truncate(limit);
    Ok((events, unreadable))
}

pub(super) fn actor() -> String {
    users::describe(users::this_process())
}

/// A weight published to the fleet.
#[derive(Debug)]
pub struct Published {
    pub revision: i64,
    pub word: SplitWord,
}

/// `weight` on the fleet: the desired split that etcd holds (`kernel`, this node's word, when
/// it holds none) moved by `change`, written only if no one wrote it since it was read.
/// Nothing is changed when etcd cannot be reached or another writer won.
pub fn publish_weight(
    target: &FleetTarget,
    kernel: SplitWord,
    change: impl FnOnce(SplitWord) -> SplitWord,
) -> Result<Published, CommandError> {
    let etcd = etcd(&target.fleet)?;
    let key = target.fleet.desired_key(&target.release);
    runtime()?.block_on(async {
        let current = etcd.get(&key).await.map_err(unreachable)?;
        let (base, expected) = match &current {
            None => (kernel, 0),
            Some(kv) => match Desired::parse(&kv.value).and_then(|d| d.word()) {
                Ok(word) => (word, kv.mod_revision),
                // A newer build's value: not this build's to replace.
                Err(error @ RecordError::NewerSchema(_)) => {
                    return Err(CommandError::Fleet(format!(
                        "etcd holds a desired split of {} from a newer build ({error}); nothing changed",
                        target.release
                    )));
                }
                // A value no node applies: replaced, from this node's kernel word.
                Err(error) => {
                    eprintln!(
                        "fleet: the desired split of {} in etcd cannot be read ({error}); replacing it, from this node's split",
                        target.release
                    );
                    (kernel, kv.mod_revision)
                }
            },
        };
        let word = change(base);
        let desired = Desired::new(word, Cause::Weight, &target.fleet.node, &actor(), now_ms());
        match etcd
            .put_if(&key, &desired.to_json(), expected)
            .await
            .map_err(unreachable)?
        {
            Swap::Written(revision) => {
                note_event(
                    fleet::record(&etcd, &target.fleet, &target.release, revision, &desired, false)
                        .await,
                );
                Ok(Published { revision, word })
            }
            Swap::Lost(now) => Err(CommandError::FleetRaced {
                release: target.release.clone(),
                now: now.map_or_else(
                    || "it was deleted".to_owned(),
                    |kv| match Desired::parse(&kv.value) {
                        Ok(d) => format!(
                            "revision {}: {} by {} on {}, live {} with the candidate at {}%",
                            kv.mod_revision,
                            match d.cause {
                                Cause::Weight => "a weight",
                                Cause::Rollback => "a rollback",
                                Cause::Promotion => "a promotion",
                            },
                            d.actor,
                            d.node,
                            d.live,
                            format_percent(d.candidate_bp)
                        ),
                        Err(error) => format!("revision {}: {error}", kv.mod_revision),
                    },
                ),
            }),
        }
    })
}

/// After this node's kernel was rolled back to `word`: tells the fleet, so that every node
/// rolls back. The rollback is kept in the state directory first and dropped once etcd has it:
/// when etcd cannot be reached within `COMMAND_TIMEOUT`, it stays there for the daemon to
/// publish, and until then the daemon applies nothing from the fleet over it. Never fails:
/// what to print (`None` without a fleet), whatever happened.
#[must_use]
pub fn publish_rollback(
    config: &Path,
    overrides: &Overrides,
    release: &str,
    word: SplitWord,
) -> Option<String> {
    let target = match target(config, overrides, release) {
        Ok(target) => target?,
        Err(error) => return Some(format!("fleet: NOT told: {}", chain(&error))),
    };
    let desired = Desired::new(
        word,
        Cause::Rollback,
        &target.fleet.node,
        &actor(),
        now_ms(),
    );
    let kept = store::fleet::save(&target.state_dir, &target.release, &desired);
    let key = target.fleet.desired_key(&target.release);
    let put = etcd(&target.fleet).and_then(|etcd| {
        runtime()?
            .block_on(async {
                let revision = etcd.put(&key, &desired.to_json(), None).await?;
                note_event(
                    fleet::record(
                        &etcd,
                        &target.fleet,
                        &target.release,
                        revision,
                        &desired,
                        false,
                    )
                    .await,
                );
                Ok(revision)
            })
            .map_err(|error: EtcdError| CommandError::FleetUnreachable(chain(&error).to_string()))
    });
    Some(match (put, kept) {
        (Ok(revision), _) => {
            // This node's word is the rollback or newer: its daemon does not write it again.
            {
                let lock_file = SplitLockFile::open(&target.state_dir);
                let _lock = lock_file.hold();
                note_applied(&target, revision);
            }
            if let Err(error) = store::fleet::forget(&target.state_dir, &target.release) {
                eprintln!(
                    "warning: the rollback is published but its copy in fleet-pending/ stays ({error}); the daemon removes it"
                );
            }
            format!(
                "fleet: told at revision {revision}; every node rolls back (`splitter-ctl status` shows each node's)"
            )
        }
        (Err(error), Ok(_)) => format!(
            "fleet: NOT told yet ({}). This node is rolled back; its daemon tells the fleet when etcd answers, and the rollback wins over any share set before it",
            chain(&error)
        ),
        (Err(error), Err(io)) => format!(
            "fleet: NOT told ({}), and the rollback cannot be kept for the daemon to tell it ({io}): run the rollback again when etcd answers",
            chain(&error)
        ),
    })
}

/// Notes that this node's word is of the fleet's `revision` (the caller holds the split lock).
pub fn note_applied(target: &FleetTarget, revision: i64) {
    if let Err(error) = store::fleet::note_applied(
        &target.state_dir,
        &target.fleet.identity(),
        &target.release,
        revision,
    ) {
        eprintln!(
            "warning: cannot note the fleet's revision in the state directory ({error}); this node's daemon writes the same split again"
        );
    }
}

/// After a weight published to the fleet: a rollback kept from an outage stands no more (an
/// operator moved the share again).
pub fn forget_pending(target: &FleetTarget) {
    if let Err(error) = store::fleet::forget(&target.state_dir, &target.release) {
        eprintln!(
            "warning: a rollback kept in fleet-pending/ from an outage cannot be removed ({error}); the daemon publishes it only if nothing was decided after it"
        );
    }
}

/// The fleet as etcd holds it, for `status`.
pub fn status(fleet: &Fleet) -> Result<FleetView, CommandError> {
    let etcd = etcd(fleet)?;
    // The three reads side by side, within one `COMMAND_TIMEOUT`.
    let read = runtime()?
        .block_on(async {
            let prefixes = [
                fleet.desired_prefix(),
                fleet.members_prefix(),
                fleet.nodes_prefix(),
                fleet.rollouts_prefix(),
            ];
            let coordinator_key = fleet.coordinator_key();
            let (desired, members, reports, rollouts, coordinator) = tokio::join!(
                etcd.range_prefix(&prefixes[0]),
                etcd.range_prefix(&prefixes[1]),
                etcd.range_prefix(&prefixes[2]),
                etcd.range_prefix(&prefixes[3]),
                etcd.get(&coordinator_key),
            );
            Ok::<_, EtcdError>((
                desired?.1,
                members?.1,
                reports?.1,
                rollouts?.1,
                coordinator?,
            ))
        })
        .map_err(unreachable)?;
    let (desired, members, reports, rollouts, coordinator) = read;
    let rollouts_prefix = fleet.rollouts_prefix();
    let prefix = fleet.desired_prefix();
    let read = Read {
        desired: desired
            .into_iter()
            .map(|kv| {
                let release = kv.key.strip_prefix(&prefix).unwrap_or(&kv.key).to_owned();
                let value = Desired::parse(&kv.value).map_err(|e| e.to_string());
                (release, kv.mod_revision, value)
            })
            .collect(),
        members: members
            .into_iter()
            .map(|kv| serde_json::from_slice::<Member>(&kv.value).map_err(|e| e.to_string()))
            .collect(),
        reports: reports
            .into_iter()
            .map(|kv| serde_json::from_slice::<NodeReport>(&kv.value).map_err(|e| e.to_string()))
            .collect(),
        rollouts: rollouts
            .into_iter()
            .map(|kv| {
                let release = kv.key.strip_prefix(&rollouts_prefix).unwrap_or(&kv.key);
                let value = FleetRollout::parse(&kv.value).map_err(|e| e.to_string());
                (release.to_owned(), value)
            })
            .collect(),
        coordinator: coordinator
            .and_then(|kv| serde_json::from_slice::<Coordinator>(&kv.value).ok())
            .map(|c| c.node),
    };
    Ok(view(&fleet.node, read))
}

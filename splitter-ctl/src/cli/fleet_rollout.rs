//! `rollout …` on the fleet (`[fleet]` in the config, without `--local`). `start` writes the
//! rollout's record and its first step's desired split in one transaction; the elected
//! coordinator (one node's daemon) judges and moves it; `status` reads the record; `pause`,
//! `resume`, `promote` and `abort` change it by a compare-and-swap (with the desired split,
//! for the last two), so that a command and the coordinator racing never both win.

use splitter_common::{SplitWord, Version};

use super::{
    CommandError, Output,
    args::RolloutAction,
    client::runtime,
    fleet::{FleetTarget, actor, etcd, note_event, unreachable},
    locate::Located,
    weight::kernel_word,
};
use crate::{
    io::{
        etcd::{Etcd, EtcdError, Kv},
        fleet as fleet_events, salt,
    },
    model::{
        error::chain,
        fleet::{Cause, Desired, RecordError, SCHEMA, version_named},
        fleet_rollout::{self, Coordinator, FleetRollout, State},
        plan::PlanRequest,
        share::format_percent,
    },
    store::journal::now_ms,
    view::rollout::RolloutCommand,
};

/// Runs one `rollout` subcommand on the fleet; what to print.
pub fn run(
    located: &Located,
    target: &FleetTarget,
    action: RolloutAction,
) -> Result<String, CommandError> {
    match action {
        RolloutAction::Start { plan, .. } => start(located, target, plan.into_request()),
        RolloutAction::Status { output, .. } => status(target, output),
        RolloutAction::Pause { .. } => command(target, RolloutCommand::Pause),
        RolloutAction::Resume { .. } => command(target, RolloutCommand::Resume),
        RolloutAction::Promote { .. } => command(target, RolloutCommand::Promote),
        RolloutAction::Abort { .. } => command(target, RolloutCommand::Abort),
    }
}

/// The rollout's record and the desired split, as etcd holds them now.
async fn read(etcd: &Etcd, target: &FleetTarget) -> Result<(Option<Kv>, Option<Kv>), EtcdError> {
    let fleet = &target.fleet;
    let (record, desired) = (
        fleet.rollout_key(&target.release),
        fleet.desired_key(&target.release),
    );
    tokio::try_join!(etcd.get(&record), etcd.get(&desired))
}

/// A record read from etcd: one from a newer build is refused, not replaced.
fn parsed(kv: &Kv, release: &str) -> Result<Result<FleetRollout, RecordError>, CommandError> {
    match FleetRollout::parse(&kv.value) {
        Err(error @ RecordError::NewerSchema(_)) => Err(CommandError::Fleet(format!(
            "the fleet rollout of {release} in etcd is from a newer build ({error}); nothing changed"
        ))),
        other => Ok(other),
    }
}

/// Refuses when a fleet rollout of `release` is running or paused (`record`, its key's value),
/// or when its record comes from a newer build: a new rollout or a drill would fight it.
pub(super) fn refuse_running(record: Option<&Kv>, release: &str) -> Result<(), CommandError> {
    if let Some(kv) = record
        && let Ok(running) = parsed(kv, release)?
        && !running.state.ended()
    {
        return Err(CommandError::Fleet(format!(
            "a fleet rollout of {release} is {} at step {}; abort it first (`splitter-ctl rollout abort {release}`)",
            state_name(&running.state),
            running.step + 1,
        )));
    }
    Ok(())
}

fn start(
    located: &Located,
    target: &FleetTarget,
    request: PlanRequest,
) -> Result<String, CommandError> {
    let release = located
        .config
        .release(&target.release)
        .ok_or_else(|| CommandError::Fleet(format!("no release `{}`", target.release)))?;
    let plan = fleet_rollout::plan(&release, &request)
        .map_err(|error| CommandError::Fleet(chain(&error).to_string()))?;
    let kernel = kernel_word(located, &target.release)?;
    let etcd = etcd(&target.fleet)?;
    let fleet = &target.fleet;
    runtime()?.block_on(async {
        let (record, desired) = read(&etcd, target).await.map_err(unreachable)?;
        refuse_running(record.as_ref(), &target.release)?;
        // From the fleet's split (this node's when etcd holds none): its live pool stays live.
        let base = desired
            .as_ref()
            .and_then(|kv| Desired::parse(&kv.value).ok())
            .and_then(|d| d.word().ok())
            .unwrap_or(kernel);
        let candidate = base.live().other();
        if let Some(empty) = release
            .members
            .iter()
            .find(|spec| spec.pool(candidate).iter().all(|b| b.weight == 0))
        {
            return Err(CommandError::Fleet(format!(
                "the {} pool of `{}` has no backend",
                candidate.name(),
                empty.name
            )));
        }
        let (now, actor) = (now_ms(), actor());
        let salt = release.leader().client_affinity.then(salt::fresh);
        let first_bp = plan.steps.first().copied().unwrap_or(10_000);
        let first = Desired {
            salt,
            ..Desired::new(
                SplitWord::new(base.live(), first_bp),
                Cause::Weight,
                &fleet.node,
                &actor,
                now,
            )
        };
        let started = FleetRollout {
            schema: SCHEMA,
            release: target.release.clone(),
            candidate: candidate.name().to_owned(),
            request,
            steps_bp: plan.steps.clone(),
            step: 0,
            state: State::Running,
            salt,
            started_by: actor,
            started_on: fleet.node.clone(),
            started_at_ms: now,
            step_started_at_ms: now,
            wrote: first.clone(),
            consecutive_failures: 0,
            takeovers: Vec::new(),
            last: None,
            live_reference: None,
        };
        let (record_key, desired_key) = (
            fleet.rollout_key(&target.release),
            fleet.desired_key(&target.release),
        );
        let (record_json, first_json) = (started.to_json(), first.to_json());
        let written = etcd
            .put_all_if(
                &[
                    (&record_key, record.as_ref().map_or(0, |kv| kv.mod_revision)),
                    (&desired_key, desired.as_ref().map_or(0, |kv| kv.mod_revision)),
                ],
                &[(&record_key, &record_json), (&desired_key, &first_json)],
                None,
            )
            .await
            .map_err(unreachable)?;
        let Some(revision) = written else {
            return Err(CommandError::FleetRaced {
                release: target.release.clone(),
                now: "a rollout or a split was written in between".to_owned(),
            });
        };
        note_event(fleet_events::record(&etcd, fleet, &target.release, revision, &first, false).await);
        let steps: Vec<String> = plan
            .steps
            .iter()
            .map(|bp| format!("{}%", format_percent(*bp)))
            .collect();
        Ok(format!(
            "fleet rollout of {} started at revision {revision}: {} at {}% on every node (steps {}); {}",
            target.release,
            candidate.name(),
            format_percent(first_bp),
            steps.join(" → "),
            match coordinator(&etcd, target).await {
                Some(node) => format!("node {node} coordinates it"),
                None => "no node coordinates it yet: it waits for a daemon to be elected".to_owned(),
            }
        ))
    })
}

/// The node that holds the coordinator's key, if any.
async fn coordinator(etcd: &Etcd, target: &FleetTarget) -> Option<String> {
    let kv = etcd.get(&target.fleet.coordinator_key()).await.ok()??;
    serde_json::from_slice::<Coordinator>(&kv.value)
        .ok()
        .map(|c| c.node)
}

fn state_name(state: &State) -> String {
    match state {
        State::Running => "running".to_owned(),
        State::Paused(why) => format!("PAUSED ({why})"),
        State::Promoted => "promoted".to_owned(),
        State::RolledBack(why) => format!("rolled back ({why})"),
    }
}

fn status(target: &FleetTarget, output: Output) -> Result<String, CommandError> {
    let etcd = etcd(&target.fleet)?;
    let (record, holder) = runtime()?.block_on(async {
        let (record, _) = read(&etcd, target).await.map_err(unreachable)?;
        Ok::<_, CommandError>((record, coordinator(&etcd, target).await))
    })?;
    let Some(kv) = record else {
        return Err(CommandError::Fleet(format!(
            "no fleet rollout of {} in etcd",
            target.release
        )));
    };
    let record = parsed(&kv, &target.release)?
        .map_err(|error| CommandError::Fleet(format!("the record in etcd: {error}")))?;
    let steps = Some(record.steps_bp.clone()).filter(|s| !s.is_empty());
    if output == Output::Json {
        let mut json = serde_json::to_value(&record)?;
        json["revision"] = kv.mod_revision.into();
        json["coordinator"] = holder.into();
        json["steps_percent"] = steps
            .as_ref()
            .map(|s| {
                s.iter()
                    .map(|bp| f64::from(*bp) / 100.0)
                    .collect::<Vec<_>>()
            })
            .into();
        return Ok(serde_json::to_string_pretty(&json)? + "\n");
    }
    let share = record
        .wrote
        .word()
        .map(|w| w.share_of(version_named(&record.candidate).unwrap_or(Version::Green)))
        .unwrap_or(0);
    let mut text = format!(
        "{} (fleet): {} at {}% (step {} of {}), {}; coordinator: {}\n",
        target.release,
        record.candidate,
        format_percent(share),
        record.step + 1,
        steps.map_or_else(|| "?".to_owned(), |s| s.len().to_string()),
        state_name(&record.state),
        holder
            .as_deref()
            .unwrap_or("none (no daemon holds the key)"),
    );
    if let Some(last) = &record.last {
        text += &format!("  last judgement, by {}: {}\n", last.node, last.judgement);
        for (node, requests, errors) in &last.nodes {
            text += &format!("    node {node}: candidate {requests} requests, {errors} errors\n");
        }
    }
    for takeover in &record.takeovers {
        text += &match &takeover.from {
            Some(from) => format!(
                "  taken over by {} from {from} at step {}\n",
                takeover.node,
                takeover.step + 1
            ),
            None => format!(
                "  coordinated by {} from step {}\n",
                takeover.node,
                takeover.step + 1
            ),
        };
    }
    Ok(text)
}

/// How many times a command reads and writes the rollout again when the coordinator wrote it
/// in between (it writes its judgement at every interval).
const ATTEMPTS: usize = 5;

/// `pause`, `resume`, `promote` or `abort` of the fleet's rollout, tried again (read afresh,
/// judged afresh) when the coordinator or another operator wrote in between.
fn command(target: &FleetTarget, command: RolloutCommand) -> Result<String, CommandError> {
    let etcd = etcd(&target.fleet)?;
    runtime()?.block_on(async {
        for _ in 0..ATTEMPTS {
            if let Some(said) = command_once(&etcd, target, command).await? {
                return Ok(said);
            }
        }
        Err(CommandError::FleetRaced {
            release: target.release.clone(),
            now: format!("the coordinator or another operator moved the rollout {ATTEMPTS} times"),
        })
    })
}

/// One attempt of `command`: what to print, or `None` when a key moved since it was read.
async fn command_once(
    etcd: &Etcd,
    target: &FleetTarget,
    command: RolloutCommand,
) -> Result<Option<String>, CommandError> {
    let fleet = &target.fleet;
    let release = &target.release;
    {
        let (record, desired) = read(etcd, target).await.map_err(unreachable)?;
        let (Some(record_kv), Some(desired_kv)) = (record, desired) else {
            return Err(CommandError::Fleet(format!(
                "no fleet rollout of {release} in etcd"
            )));
        };
        let mut record = parsed(&record_kv, release)?
            .map_err(|error| CommandError::Fleet(format!("the record in etcd: {error}")))?;
        if record.state.ended() {
            return Err(CommandError::Fleet(format!(
                "the fleet rollout of {release} is over: {}",
                state_name(&record.state)
            )));
        }
        let candidate = version_named(&record.candidate).ok_or_else(|| {
            CommandError::Fleet(format!("`{}` is not a version", record.candidate))
        })?;
        let (now, actor) = (now_ms(), actor());
        let by = format!("{actor} on {}", fleet.node);
        let (change, said) = match command {
            RolloutCommand::Pause => {
                record.state = State::Paused(format!("paused by {by}"));
                (None, "paused on every node".to_owned())
            }
            RolloutCommand::Resume => {
                // From the split etcd holds now, even one an operator set: the step's hold
                // starts again. Not from one whose live version is the candidate: that is a
                // promotion or an inverted split, not a step of this rollout.
                let now_desired = Desired::parse(&desired_kv.value).map_err(|error| {
                    CommandError::Fleet(format!("the desired split in etcd: {error}"))
                })?;
                if now_desired.live != candidate.other().name() {
                    return Err(CommandError::Fleet(format!(
                        "{} is live on the fleet now, not {}: this rollout cannot resume; abort it and start another",
                        now_desired.live,
                        candidate.other().name()
                    )));
                }
                record.wrote = now_desired;
                record.state = State::Running;
                record.step_started_at_ms = now;
                record.consecutive_failures = 0;
                (None, "resumed".to_owned())
            }
            RolloutCommand::Promote => {
                record.state = State::Promoted;
                let word = SplitWord::new(candidate, 0);
                let said = format!("promoted: {} is live on every node", candidate.name());
                (
                    Some(Desired::new(
                        word,
                        Cause::Promotion,
                        &fleet.node,
                        &actor,
                        now,
                    )),
                    said,
                )
            }
            RolloutCommand::Abort => {
                record.state = State::RolledBack(format!("aborted by {by}"));
                let word = SplitWord::new(candidate.other(), 0);
                let said = "aborted: every node sends every new connection to the live pool";
                (
                    Some(Desired::new(
                        word,
                        Cause::Rollback,
                        &fleet.node,
                        &actor,
                        now,
                    )),
                    said.to_owned(),
                )
            }
        };
        if let Some(change) = &change {
            record.wrote = change.clone();
        }
        let (record_key, desired_key) = (fleet.rollout_key(release), fleet.desired_key(release));
        let (record_json, change_json) = (record.to_json(), change.as_ref().map(Desired::to_json));
        let mut puts = vec![(record_key.as_str(), record_json.as_slice())];
        if let Some(json) = &change_json {
            puts.push((desired_key.as_str(), json.as_slice()));
        }
        let written = etcd
            .put_all_if(
                &[
                    (&record_key, record_kv.mod_revision),
                    (&desired_key, desired_kv.mod_revision),
                ],
                &puts,
                None,
            )
            .await
            .map_err(unreachable)?;
        let Some(revision) = written else {
            return Ok(None);
        };
        if let Some(change) = &change {
            note_event(fleet_events::record(etcd, fleet, release, revision, change, false).await);
        }
        Ok(Some(format!(
            "{release} (fleet): {said}, at revision {revision}"
        )))
    }
}

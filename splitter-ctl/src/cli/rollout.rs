//! `splitter-ctl rollout start|status|pause|resume|promote|abort SERVICE`: rollouts run in the
//! daemon; these commands ask it through the control socket. In fleet mode (`[fleet]`, without
//! `--local`) they act on the fleet's rollout in etcd instead (`cli::fleet_rollout`).

use std::path::Path;

use bytes::Bytes;
use hyper::Method;

use super::{
    CommandError, Output,
    args::RolloutAction,
    client, fleet, fleet_rollout,
    locate::{Overrides, locate},
};
use crate::{
    io::http::encode,
    model::{plan::PlanRequest, share::format_percent},
    view::rollout::RolloutCommand,
};

/// Runs one `rollout` subcommand, on the fleet unless `local`; what to print.
pub fn run(config_path: &Path, local: bool, action: RolloutAction) -> Result<String, CommandError> {
    if !local {
        let located = locate(config_path, &Overrides::default())?;
        if let Some(target) = fleet::target_in(&located, action.service())? {
            return fleet_rollout::run(&located, &target, action);
        }
    }
    match action {
        RolloutAction::Start { service, plan } => {
            start(config_path, &service, &plan.into_request())
        }
        RolloutAction::Status { service, output } => status(config_path, &service, output),
        RolloutAction::Pause { service } => command(config_path, &service, RolloutCommand::Pause),
        RolloutAction::Resume { service } => command(config_path, &service, RolloutCommand::Resume),
        RolloutAction::Promote { service } => {
            command(config_path, &service, RolloutCommand::Promote)
        }
        RolloutAction::Abort { service } => command(config_path, &service, RolloutCommand::Abort),
    }
}

/// Sends one rollout request to the daemon; returns the answer's JSON.
pub fn request(
    config_path: &Path,
    method: Method,
    path: &str,
    body: Bytes,
) -> Result<serde_json::Value, CommandError> {
    client::request(config_path, method, path, body, client::TIMEOUT)
}

pub fn start(
    config_path: &Path,
    service: &str,
    plan: &PlanRequest,
) -> Result<String, CommandError> {
    let body = serde_json::to_vec(plan)?;
    let status = request(
        config_path,
        Method::POST,
        &format!("/v1/rollouts/{}/start", encode(service)),
        Bytes::from(body),
    )?;
    Ok(format!(
        "rollout of {service} started: {} at {}% (steps {})",
        status["candidate"].as_str().unwrap_or("?"),
        percent(&status["candidate_percent"]),
        status["steps_percent"]
            .as_array()
            .map(|s| s.iter().map(percent).collect::<Vec<_>>().join(" → "))
            .unwrap_or_default()
    ))
}

pub fn status(config_path: &Path, service: &str, output: Output) -> Result<String, CommandError> {
    let status = request(
        config_path,
        Method::GET,
        &format!("/v1/rollouts/{}", encode(service)),
        Bytes::new(),
    )?;
    if output == Output::Json {
        return Ok(serde_json::to_string_pretty(&status)? + "\n");
    }
    Ok(format!(
        "{service}: {} at {}% (step {} of {}){}; last judgement: {}\n",
        status["candidate"].as_str().unwrap_or("?"),
        percent(&status["candidate_percent"]),
        status["step"].as_u64().unwrap_or(0),
        status["steps"].as_u64().unwrap_or(0),
        status["paused"]
            .as_str()
            .map_or_else(String::new, |why| format!(", PAUSED ({why})")),
        status["last_judgement"].as_str().unwrap_or("none yet"),
    ) + &judged_by(&status))
}

/// The lines of `judged_by`: what judges the rollout.
fn judged_by(status: &serde_json::Value) -> String {
    status["judged_by"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|line| line.as_str())
        .map(|line| format!("  judged by {line}\n"))
        .collect()
}

pub fn command(
    config_path: &Path,
    service: &str,
    command: RolloutCommand,
) -> Result<String, CommandError> {
    let action = command.name();
    let answer = request(
        config_path,
        Method::POST,
        &format!("/v1/rollouts/{}/{action}", encode(service)),
        Bytes::new(),
    )?;
    Ok(format!(
        "{service}: {}",
        answer["done"].as_str().unwrap_or(action)
    ))
}

/// A share from the API's JSON as an operator writes it: `10`, `2.5`, never `10.0`.
pub(super) fn percent(value: &serde_json::Value) -> String {
    value.as_f64().map_or_else(
        || "?".to_owned(),
        |p| format_percent((p * 100.0).round() as u16),
    )
}

#[cfg(test)]
mod tests {
    use super::super::args::parse_duration;

    #[test]
    fn durations_take_the_usual_units() {
        assert_eq!(parse_duration("500ms"), Ok(500));
        assert_eq!(parse_duration("5s"), Ok(5_000));
        assert_eq!(parse_duration("2m"), Ok(120_000));
        assert_eq!(parse_duration("1h"), Ok(3_600_000));
        for bad in ["", "5", "s", "5x", "-1s", "1.5s", "99999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}

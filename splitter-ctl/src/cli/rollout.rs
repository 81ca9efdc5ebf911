//! `splitter-ctl rollout start|status|pause|resume|promote|abort SERVICE` and `drill SERVICE`:
//! rollouts and drills run in the daemon; these commands ask it through the control socket.

use std::path::Path;

use super::{CommandError, client};
use crate::{
    model::{config, plan::PlanRequest, share::format_percent},
    view::rollout::RolloutCommand,
};

/// A duration as operators type it (`500ms`, `5s`, `2m`, `1h`), in milliseconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 500ms, 5s, 2m or 1h"))?;
    let factor = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => {
            return Err(format!(
                "`{text}` is not a duration like 500ms, 5s, 2m or 1h"
            ));
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("`{text}` is too long"))
}

/// Sends one rollout request to the daemon; returns the answer's JSON.
pub fn request(
    config_path: &Path,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<serde_json::Value, CommandError> {
    send(config_path, method, path, body, super::reload::TIMEOUT)
}

/// A request without a body that waits at most `timeout` for the answer.
pub fn request_within(
    config_path: &Path,
    method: &str,
    path: &str,
    timeout: std::time::Duration,
) -> Result<serde_json::Value, CommandError> {
    send(config_path, method, path, b"", timeout)
}

fn send(
    config_path: &Path,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: std::time::Duration,
) -> Result<serde_json::Value, CommandError> {
    let socket = config::control_socket_of(config_path);
    let (status, body) = client::unix_request(&socket, method, path, body, timeout)
        .map_err(|e| CommandError::Daemon(client::not_running(&socket, &e)))?;
    let value: serde_json::Value = serde_json::from_slice(&body)?;
    if status != 200 {
        return Err(CommandError::Daemon(
            value["error"]
                .as_str()
                .unwrap_or("the daemon refused the request")
                .to_owned(),
        ));
    }
    Ok(value)
}

pub fn start(
    config_path: &Path,
    service: &str,
    plan: &PlanRequest,
) -> Result<String, CommandError> {
    let body = serde_json::to_vec(plan)?;
    let status = request(
        config_path,
        "POST",
        &format!("/v1/rollouts/{service}/start"),
        &body,
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

pub fn status(config_path: &Path, service: &str, json: bool) -> Result<String, CommandError> {
    let status = request(config_path, "GET", &format!("/v1/rollouts/{service}"), b"")?;
    if json {
        return Ok(serde_json::to_string_pretty(&status)? + "\n");
    }
    Ok(format!(
        "{service}: {} at {}% (step {} of {}){}; last judgement: {}\n",
        status["candidate"].as_str().unwrap_or("?"),
        percent(&status["candidate_percent"]),
        status["step"].as_u64().unwrap_or(0) + 1,
        status["steps_percent"].as_array().map_or(0, Vec::len),
        status["paused"]
            .as_str()
            .map_or_else(String::new, |why| format!(", PAUSED ({why})")),
        status["last_judgement"].as_str().unwrap_or("none yet"),
    ))
}

pub fn command(
    config_path: &Path,
    service: &str,
    command: RolloutCommand,
) -> Result<String, CommandError> {
    let action = command.name();
    let answer = request(
        config_path,
        "POST",
        &format!("/v1/rollouts/{service}/{action}"),
        b"",
    )?;
    Ok(format!(
        "{service}: {}",
        answer["done"].as_str().unwrap_or(action)
    ))
}

/// Runs a rollback drill in the daemon: what it measured, and whether it passed.
pub fn drill(
    config_path: &Path,
    service: &str,
    last_resort: bool,
    json: bool,
) -> Result<(String, Result<(), String>), CommandError> {
    let query = if last_resort { "?kind=last_resort" } else { "" };
    let report = request(
        config_path,
        "POST",
        &format!("/v1/drills/{service}{query}"),
        b"",
    )?;
    let outcome = report["outcome"].as_str().unwrap_or("?").to_owned();
    let passed = if outcome == "passed" {
        Ok(())
    } else {
        Err(outcome)
    };
    if json {
        return Ok((serde_json::to_string_pretty(&report)? + "\n", passed));
    }
    let us = |v: &serde_json::Value| {
        v.as_u64()
            .map_or_else(|| "none seen".to_owned(), |us| format!("{us} µs"))
    };
    let what = if last_resort {
        "last-resort drill"
    } else {
        "drill"
    };
    let text = format!(
        "{what} of {service}: {}\n  write: {}\n  decision to first new connection on {}: {}\n  new connections during the drill: {} on {}, {} elsewhere\n  restored: {}\n",
        report["outcome"].as_str().unwrap_or("?"),
        us(&report["decision_to_write_us"]),
        report["live"].as_str().unwrap_or("?"),
        us(&report["decision_to_first_connection_us"]),
        report["new_on_live"],
        report["live"].as_str().unwrap_or("?"),
        report["new_on_candidate"],
        report["restored"].as_str().unwrap_or("?"),
    );
    Ok((text, passed))
}

/// A share from the API's JSON as an operator writes it: `10`, `2.5`, never `10.0`.
fn percent(value: &serde_json::Value) -> String {
    value.as_f64().map_or_else(
        || "?".to_owned(),
        |p| format_percent((p * 100.0).round() as u16),
    )
}

#[cfg(test)]
mod tests {
    use super::parse_duration;

    #[test]
    fn durations_take_the_usual_units() {
        assert_eq!(parse_duration("500ms"), Ok(500));
        assert_eq!(parse_duration("5s"), Ok(5_000));
        assert_eq!(parse_duration("2m"), Ok(120_000));
        assert_eq!(parse_duration("1h"), Ok(3_600_000));
        for bad in ["", "5", "s", "5x", "-1s", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}

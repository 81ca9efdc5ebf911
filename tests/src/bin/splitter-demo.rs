//! `cargo xtask demo`: a rollout told from start to end on a test bed of network namespaces.
//! v1 (blue) answers well; v2 (green) is slower and answers 500 to one request in five. The
//! demo rolls v2 out under a bounded load, shows each step, the gate that catches it and the
//! automatic rollback with its measured times, then rolls a fixed v3 out to 100% and promotes
//! it. Everything it made is removed at the end, also on Ctrl-C.

use std::{
    process::ExitCode,
    thread,
    time::{Duration, Instant},
};

use splitter_tests::{bed_binary, load::Load, testbed::Testbed};

/// The test bed index: 198.18.201.0/24 and namespaces `sp201-*`.
const INDEX: u8 = 201;
/// The longest the load runs, whatever happens.
const LOAD_LIMIT: Duration = Duration::from_secs(180);
/// The longest one rollout may take before the demo gives up.
const ROLLOUT_LIMIT: Duration = Duration::from_secs(60);
/// The plan both rollouts use: small steps, quick holds, strict gates.
const PLAN: &[&str] = &[
    "--steps",
    "10,50,100",
    "--hold",
    "4s",
    "--interval",
    "1s",
    "--min-samples",
    "10",
    "--max-error-rate",
    "0.05",
    "--max-p99-ms",
    "15",
    "--max-p99-vs-live",
    "20",
];

fn main() -> ExitCode {
    let server = match bed_binary::prepare("splitter-demo", "demo") {
        Ok(server) => server,
        Err(why) => {
            eprintln!("{why}");
            return ExitCode::FAILURE;
        }
    };
    // The bed removes its namespaces, pins and processes when it is dropped, at the end of
    // `demo` whichever way it returns.
    let mut bed = Testbed::with_index(INDEX, &server);
    match demo(&mut bed, &server) {
        Ok(()) => {
            println!("\nremoving the test bed");
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("\nsplitter-demo: {why}; removing the test bed");
            ExitCode::FAILURE
        }
    }
}

fn demo(bed: &mut Testbed, server: &str) -> Result<(), String> {
    bed.write_config("0");
    bed.start_daemon(&[]);
    println!(
        "test bed up: client {} -> service sentiment {} -> blue (v1) {} / green {}",
        bed.client.name,
        bed.vip(),
        bed.blue_addr(),
        bed.green_addr()
    );
    deploy_green(
        bed,
        server,
        "v2: 20 ms slower, HTTP 500 on one request in five",
        &["--delay-ms", "20", "--error-every", "5"],
    );
    let load = Load::start(bed, LOAD_LIMIT);

    println!("\n== rollout of v2 ==");
    let v2 = rollout(bed, &load)?;
    if v2 != "rolled back" {
        return Err(format!(
            "v2 was {v2}, but its gates should have rolled it back"
        ));
    }
    let events = history(bed);
    let rollback = events
        .iter()
        .find(|e| e["kind"] == "rollback")
        .ok_or("no rollback in the journal")?;
    println!(
        "\nautomatic rollback: {}\n  decision to map write: {} µs\n  decision to green's last response: {}",
        rollback["reason"].as_str().unwrap_or("?"),
        rollback["decision_to_write_us"],
        rollback["decision_to_last_response_us"]
            .as_u64()
            .map_or_else(|| "not drained yet".to_owned(), |us| format!("{us} µs"))
    );
    if let Some(id) = events
        .iter()
        .rev()
        .find(|e| e["kind"] == "rollout_started")
        .and_then(|e| e["id"].as_i64())
    {
        println!("\n{}", bed.ctl_ok(&["review", &id.to_string()]));
    }

    deploy_green(bed, server, "v3: the fix", &[]);
    println!("\n== rollout of v3 ==");
    let v3 = rollout(bed, &load)?;
    let [(blue_ok, blue_failed), (green_ok, green_failed)] = load.stop();
    println!(
        "\nload: blue {blue_ok} ok / {blue_failed} failed, green {green_ok} ok / {green_failed} failed"
    );
    println!("\n{}", bed.ctl_ok(&["summary"]));
    if v3 != "promoted" {
        return Err(format!("v3 was {v3}"));
    }
    println!(
        "v3 is live. The journal: splitter-ctl --config {} history",
        bed.config_path.display()
    );
    Ok(())
}

/// Replaces the green server with one started with `faults`.
fn deploy_green(bed: &mut Testbed, server: &str, what: &str, faults: &[&str]) {
    bed.stop("green");
    let addr = bed.green_addr();
    bed.serve_on_backend_with(server, true, addr, "green", faults);
    println!("green is now {what}");
}

/// Runs a rollout of green to its end and prints it once a second: `promoted`, `rolled back`.
fn rollout(bed: &Testbed, load: &Load) -> Result<&'static str, String> {
    let mut args = vec!["rollout", "start", "sentiment"];
    args.extend_from_slice(PLAN);
    println!("{}", bed.ctl_ok(&args).trim_end());
    let started = Instant::now();
    let mut last = load.tally.read();
    while started.elapsed() < ROLLOUT_LIMIT {
        if bed_binary::stop_requested() {
            return Err("interrupted".to_owned());
        }
        thread::sleep(Duration::from_secs(1));
        let now = load.tally.read();
        let out = bed.ctl(&["rollout", "status", "sentiment", "--output", "json"]);
        let traffic = format!(
            "last second: blue {} ok {} failed, green {} ok {} failed",
            now[0].0 - last[0].0,
            now[0].1 - last[0].1,
            now[1].0 - last[1].0,
            now[1].1 - last[1].1
        );
        last = now;
        if out.status.success() {
            let status: serde_json::Value =
                serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
            println!(
                "  green at {:>3}%  {traffic}\n             gates: {}",
                status["candidate_percent"].as_f64().unwrap_or(0.0),
                status["last_judgement"].as_str().unwrap_or("none yet")
            );
            continue;
        }
        println!("  {traffic}");
        let live = bed.status()["services"][0]["live"].clone();
        return Ok(if live == "green" {
            "promoted"
        } else {
            "rolled back"
        });
    }
    Err(format!("the rollout did not end within {ROLLOUT_LIMIT:?}"))
}

fn history(bed: &Testbed) -> Vec<serde_json::Value> {
    let text = bed.ctl_ok(&["history", "--limit", "1000", "--output", "json"]);
    let mut events: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap_or_default();
    events.reverse();
    events
}

//! gRPC throughput through Splitter beside direct: h2load (Debian's nghttp2-client) making
//! unary gRPC calls (POST, `application/grpc`, a length-prefixed message) on multiplexed
//! connections to real gRPC servers (tests/clients/grpc_peer.py, C-core), in interleaved rounds:
//! **direct** to blue's address through the node's routing, **splitter** to the service's
//! address (every call to blue too), the kernel reading every call's frames.

use std::{fmt::Write as _, time::Duration};

use splitter_tests::{grpc, testbed::Testbed};

/// One h2load run's results.
struct Run {
    per_second: f64,
    mean_ms: f64,
    succeeded: u64,
    failed: u64,
}

fn h2load(
    bed: &Testbed,
    target: &str,
    body: &std::path::Path,
    seconds: u64,
) -> Result<Run, String> {
    let output = bed
        .client
        .exec("h2load")
        .args(["-c", "4", "-m", "8", "-t", "1", "-D"])
        .arg(seconds.to_string())
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg("-d")
        .arg(body)
        .arg(format!("http://{target}/model.Model/Predict"))
        .output()
        .map_err(|e| {
            format!("cannot run h2load (cargo xtask setup installs nghttp2-client): {e}")
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    let number_after = |line_start: &str, word: &str| -> Option<f64> {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(line_start))?;
        let at = line.find(word)?;
        line[..at]
            .split_whitespace()
            .last()?
            .trim_end_matches(',')
            .parse()
            .ok()
    };
    let per_second = number_after("finished in", " req/s")
        .ok_or_else(|| format!("h2load printed no rate: {text}"))?;
    let succeeded = number_after("requests:", " succeeded").unwrap_or(0.0) as u64;
    let failed = number_after("requests:", " failed").unwrap_or(0.0) as u64;
    // "time for request:  min  max  mean  sd  +/- sd"
    let mean_ms = text
        .lines()
        .find(|l| l.trim_start().starts_with("time for request:"))
        .and_then(|l| l.split_whitespace().nth(5))
        .and_then(|mean| {
            let (value, unit) = mean.split_at(mean.find(|c: char| c.is_ascii_alphabetic())?);
            let value: f64 = value.parse().ok()?;
            Some(match unit {
                "us" => value / 1_000.0,
                "s" => value * 1_000.0,
                _ => value,
            })
        })
        .unwrap_or(f64::NAN);
    Ok(Run {
        per_second,
        mean_ms,
        succeeded,
        failed,
    })
}

pub fn section(server: &str, quick: bool) -> Result<String, String> {
    let (rounds, seconds) = if quick { (1, 3) } else { (3, 8) };
    let mut bed = Testbed::new(server);
    grpc::serve(&mut bed, "blue", &[]);
    grpc::serve(&mut bed, "green", &[]);
    // Every call to blue, as direct: the servers bound the rate, and a second one would add
    // capacity, not measure the path.
    grpc::write_config(&bed, "grpc", "0", "");
    bed.start_daemon(&[]);
    // A unary call's message: the 5-byte gRPC prefix (not compressed, its length), then 64 bytes.
    let body = bed.dir.join("grpc-message.bin");
    let mut message = vec![0u8, 0, 0, 0, 64];
    message.extend([b'x'; 64]);
    std::fs::write(&body, message).map_err(|e| format!("the message file: {e}"))?;
    let targets = [
        ("direct", grpc::backend(&bed, false).to_string()),
        ("splitter", grpc::vip(&bed).to_string()),
    ];
    // Warm both paths (and let the daemon attach the reply program on the backends' devices).
    let _ = h2load(&bed, &targets[0].1, &body, 1)?;
    let warm = h2load(&bed, &targets[1].1, &body, 1)?;
    std::thread::sleep(Duration::from_secs(6));
    let mut runs: Vec<[Run; 2]> = Vec::new();
    for _ in 0..rounds {
        let direct = h2load(&bed, &targets[0].1, &body, seconds)?;
        let split = h2load(&bed, &targets[1].1, &body, seconds)?;
        runs.push([direct, split]);
    }
    let status = bed.status();
    let count = |field: &str, i: Option<usize>| -> u64 {
        ["blue", "green"]
            .iter()
            .map(|v| {
                let value = &status["services"][0]["counters"][v][field];
                i.map_or(value, |i| &value[i]).as_u64().unwrap_or(0)
            })
            .sum()
    };
    let calls = count("calls", None);
    let (untracked_calls, lost) = (count("untracked", Some(0)), count("untracked", Some(1)));
    let median = |f: &dyn Fn(&[Run; 2]) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(f).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let mut out = String::new();
    let _ = writeln!(out, "### gRPC through Splitter beside direct\n");
    let _ = writeln!(
        out,
        "h2load (nghttp2-client): 4 connections, 8 concurrent streams each, unary calls to `model.Model/Predict` (a 64-byte message) for {seconds} s per run, {rounds} round(s) of direct then splitter; real gRPC servers (Python grpcio, C-core) on blue and green, the service `l7 = \"grpc\"` with every call to blue (as direct: the servers bound the rate, and splitting to green would add a server, not measure the path), the kernel reading every call's frames. Medians over rounds; the ratio within each round. The servers, not the network path, bound the rate here: Python's gRPC server is far slower than a model server's C++ one.\n"
    );
    let _ = writeln!(
        out,
        "| setup | calls/s | × direct | mean ms | succeeded | failed |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
    for (i, (name, _)) in targets.iter().enumerate() {
        let _ = writeln!(
            out,
            "| {name} | {:.0} | {:.3} | {:.2} | {} | {} |",
            median(&|r| r[i].per_second),
            median(&|r| r[i].per_second / r[0].per_second),
            median(&|r| r[i].mean_ms),
            runs.iter().map(|r| r[i].succeeded).sum::<u64>(),
            runs.iter().map(|r| r[i].failed).sum::<u64>(),
        );
    }
    let _ = writeln!(
        out,
        "\nThe kernel followed {calls} calls through the splitter and counted {untracked_calls} more as untracked (beyond the calls it follows at once on a connection) and {lost} connections whose framing it lost; h2load completed {} (warm-up included; the calls in flight when a run ends are started, not counted by h2load).\n",
        warm.succeeded
            + warm.failed
            + runs
                .iter()
                .map(|r| r[1].succeeded + r[1].failed)
                .sum::<u64>()
    );
    Ok(out)
}

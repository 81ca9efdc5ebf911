//! `cargo xtask testbed`: the end-to-end test bed for a person. It builds the namespaces, starts
//! blue and green and the real daemon, then sends a bounded stream of new connections from the
//! client and prints, once a second, which version served them. Change the split from another
//! terminal with the commands it prints. Ctrl-C (or `--seconds`) removes everything.

use std::{
    process::ExitCode,
    thread,
    time::{Duration, Instant},
};

use splitter_tests::{
    bed_binary, http,
    testbed::{Testbed, ctl_bin},
};

/// The test bed index: 198.18.200.0/24 and namespaces `sp200-*`.
const INDEX: u8 = 200;
/// New connections per second, at most.
const RATE: u32 = 50;

fn main() -> ExitCode {
    let mut seconds = 600u64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next().and_then(|s| s.parse().ok())) {
            ("--seconds", Some(n)) => seconds = n,
            _ => {
                eprintln!("usage: splitter-testbed [--seconds N]   (default 600)");
                return ExitCode::FAILURE;
            }
        }
    }
    let server = match bed_binary::prepare("splitter-testbed", "testbed") {
        Ok(server) => server,
        Err(why) => {
            eprintln!("{why}");
            return ExitCode::FAILURE;
        }
    };
    let mut bed = Testbed::with_index(INDEX, &server);
    bed.write_config("10");
    bed.start_daemon(&[]);
    // Commands that work as pasted: splitter-ctl by its full path, as root.
    let ctl = format!(
        "{} --config {}",
        ctl_bin().display(),
        bed.config_path.display()
    );
    println!(
        "test bed up: client {} -> service {} -> blue {} / green {}",
        bed.client.name,
        bed.vip(),
        bed.blue_addr(),
        bed.green_addr()
    );
    println!("daemon log: {}", bed.dir.join("daemon.log").display());
    println!("try, in another terminal (as root):");
    println!("  {ctl} status");
    println!("  {ctl} weight sentiment green 50");
    println!("  {ctl} rollback sentiment");
    println!(
        "sending up to {RATE} new connections a second for {seconds} s; Ctrl-C stops and cleans up\n"
    );

    let vip = bed.vip();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !bed_binary::stop_requested() && Instant::now() < deadline {
        let second = Instant::now();
        let (blue, green, failed) = bed.client.run(move || {
            let mut tally = (0, 0, 0);
            for _ in 0..RATE {
                match http::get(vip).as_deref() {
                    Ok("blue") => tally.0 += 1,
                    Ok("green") => tally.1 += 1,
                    _ => tally.2 += 1,
                }
            }
            tally
        });
        println!("new connections: blue {blue:>3}  green {green:>3}  failed {failed}");
        thread::sleep(Duration::from_secs(1).saturating_sub(second.elapsed()));
    }
    println!("removing the test bed");
    ExitCode::SUCCESS
}

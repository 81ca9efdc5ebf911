//! The setups the benchmarks compare Splitter with (tests/src/compare.rs) do what the benchmark
//! says they do: each splits new connections about 90/10, rolls back to blue, and keeps
//! established connections on their version across share changes. The benchmark's numbers are
//! only worth reading if this holds.

use splitter_tests::{
    compare::{Kind, Setups, broken_across_changes, rollback, tally},
    require_root,
    testbed::Testbed,
};

const SERVER: &str = env!("CARGO_BIN_EXE_splitter-testbed-server");

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn every_compared_setup_splits_rolls_back_and_keeps_established_connections() {
    require_root!();
    let mut bed = Testbed::new(SERVER);
    let mut setups = Setups::new(&mut bed, 1_000).expect("setups");
    let direct = Setups::addr(&bed, Kind::Direct);
    setups.enter(&mut bed, Kind::Direct).expect("enter");
    assert_eq!(tally(&bed, direct, 50), Ok([50, 0]));
    let interface = bed.node_interface();
    assert_eq!(
        bed.node
            .run(move || splitter_ctl::kernel::netdev::driver(&interface))
            .as_deref(),
        Some("veth")
    );
    setups.enter(&mut bed, Kind::XdpPass).expect("XDP_PASS");
    assert_eq!(tally(&bed, direct, 50), Ok([50, 0]), "through XDP_PASS");
    setups
        .leave(&mut bed, Kind::XdpPass)
        .expect("detach XDP_PASS");
    // The native-mode variant splits too (the benchmark only times it).
    setups
        .enter(&mut bed, Kind::SplitterNative)
        .expect("native");
    let [_, green] = tally(&bed, Setups::addr(&bed, Kind::SplitterNative), 200).expect("native");
    assert!((5..=40).contains(&green), "{green} of 200 on green");
    assert!(
        !bed.daemon_log().contains("generic mode"),
        "{}",
        bed.daemon_log()
    );
    setups
        .leave(&mut bed, Kind::SplitterNative)
        .expect("native");
    for kind in Kind::SPLITTING {
        let addr = Setups::addr(&bed, kind);
        setups.enter(&mut bed, kind).expect("enter");
        if kind == Kind::Splitter {
            assert!(
                bed.daemon_log()
                    .contains("veth: attaching XDP in generic mode"),
                "auto picks generic on veth: {}",
                bed.daemon_log()
            );
        }
        let [blue, green] = tally(&bed, addr, 400).expect("connections");
        assert!(
            (20..=65).contains(&green),
            "{}: {blue} blue, {green} green for a 10% share",
            kind.name()
        );
        // The rollback checks itself: green got new connections before it and none of 100 after.
        rollback(&bed, &mut setups, kind, 1_000).expect("rollback");
        assert_eq!(
            tally(&bed, addr, 50),
            Ok([50, 0]),
            "{} after the rollback",
            kind.name()
        );
        assert_eq!(
            broken_across_changes(&bed, &mut setups, kind, 5, 10),
            Ok(0),
            "{}",
            kind.name()
        );
        setups.leave(&mut bed, kind).expect("leave");
        if kind != Kind::Haproxy {
            assert!(
                tally(&bed, addr, 1).is_err(),
                "{} still answers after it left",
                kind.name()
            );
        }
    }
}

use super::*;

const GOOD: &str = r#"
interface = "veth-node"
pin_dir = "/sys/fs/bpf/splitter-test"

[[service]]
name = "sentiment"
listen = "198.18.0.1:8080"
protocol = "tcp"
blue = ["198.18.1.2:8080", "198.18.1.3:8080 weight=3"]
green = ["198.18.2.2:8080"]
green_weight = 12.5
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("splitter.toml"), text)
}

/// GOOD with every optional table, for the property tests to break.
const FULL: &str = r#"
interface = "veth-node"
pin_dir = "/sys/fs/bpf/splitter-test"
metrics_listen = "127.0.0.1:9464"

[[service]]
name = "sentiment"
listen = "198.18.0.1:8080"
blue = ["198.18.1.2:8080", "198.18.1.3:8080 weight=3"]
green = ["198.18.2.2:8080"]
green_weight = 12.5
rollback_window_ms = 60000
drill_every_ms = 3600000

[service.health]
interval_ms = 500
http_path = "/healthz"

[service.rollout]
steps = [1, 5, 100]
prometheus_url = "http://127.0.0.1:9090"

[[service.rollout.promql_gates]]
name = "lowconf"
query = 'sum(rate(x{v="$candidate"}[1m]))'
max = 0.05
"#;

proptest::proptest! {
    #[test]
    fn property_any_edit_of_a_config_is_applied_or_refused_with_its_place(
        edits in proptest::collection::vec((0..FULL.len(), proptest::prelude::any::<u8>()), 1..6)
    ) {
        let mut bytes = FULL.as_bytes().to_vec();
        for (at, byte) in edits {
            bytes[at] = byte;
        }
        let text = String::from_utf8_lossy(&bytes);
        if let Err(error) = parse(&text) {
            let message = error.to_string();
            proptest::prop_assert!(message.starts_with("splitter.toml:"), "{}", message);
        }
    }

    #[test]
    fn property_any_text_is_applied_or_refused(
        chars in proptest::collection::vec(proptest::prelude::any::<char>(), 0..300)
    ) {
        let text: String = chars.into_iter().collect();
        if let Err(error) = parse(&text) {
            proptest::prop_assert!(error.to_string().starts_with("splitter.toml:"));
        }
    }
}

fn error(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("config was accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_full_config_is_validated_into_a_plan() {
    let config = parse(GOOD).expect("valid config");
    assert_eq!(config.interface, "veth-node");
    assert_eq!(config.pin_dir, Path::new("/sys/fs/bpf/splitter-test"));
    let service = config.service("sentiment").expect("service");
    assert_eq!(service.listen, "198.18.0.1:8080".parse().expect("addr"));
    assert_eq!(service.blue[1].weight, 3);
    assert_eq!(service.green_share_bp, 1_250);
    assert_eq!(
        service.initial_split(),
        SplitWord::new(Version::Blue, 1_250)
    );
}

#[test]
fn defaults_apply_when_keys_are_left_out() {
    let config = parse("interface = \"eth0\"\n[[service]]\nname = \"m\"\nlisten = \"198.18.0.1:80\"\nblue = [\"198.18.1.2:80\"]\n").expect("valid");
    assert_eq!(config.pin_dir, Path::new(paths::DEFAULT_PIN_DIR));
    assert_eq!(config.xdp_mode, XdpMode::Auto);
    let service = &config.services[0];
    assert_eq!(
        (service.protocol, service.live, service.green_share_bp),
        (Protocol::Tcp, Version::Blue, 0)
    );
    assert!(service.green.is_empty());
    assert_eq!(
        service.drain.max_age, None,
        "connections age out only when asked"
    );
    assert_eq!(service.drain.idle, crate::model::drain::DEFAULT_DRAIN_IDLE);
    let aging = parse("interface = \"eth0\"\n[[service]]\nname = \"m\"\nlisten = \"198.18.0.1:80\"\nblue = [\"198.18.1.2:80\"]\nmax_connection_age_ms = 600000\ndrain_idle_ms = 10\n").expect("valid");
    assert_eq!(
        aging.services[0].drain.max_age,
        Some(std::time::Duration::from_secs(600))
    );
    assert_eq!(
        aging.services[0].drain.idle,
        std::time::Duration::from_millis(10)
    );
}

#[test]
fn green_live_takes_the_complement_share_for_blue() {
    let text = GOOD.replace("protocol = \"tcp\"", "protocol = \"tcp\"\nlive = \"green\"");
    let service = parse(&text).expect("valid").services.remove(0);
    assert_eq!(
        service.initial_split(),
        SplitWord::new(Version::Green, 8_750)
    );
}

#[test]
fn every_validation_error_names_file_line_and_field() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "green_weight = 12.5",
            "green_weight = 120",
            "splitter.toml:11:16: `service[0].green_weight`: `120` is out of range",
        ),
        (
            "green_weight = 12.5",
            "green_weight = 12.5\nmax_connection_age_ms = 999",
            "splitter.toml:12:25: `service[0].max_connection_age_ms`: 999 is outside 1000..=86400000",
        ),
        (
            "green_weight = 12.5",
            "green_weight = 12.5\ndrain_idle_ms = 0",
            "splitter.toml:12:17: `service[0].drain_idle_ms`: 0 is outside 1..=60000",
        ),
        (
            "green_weight = 12.5",
            "green_weight = 1.234",
            "`service[0].green_weight`: `1.234` is not a percentage",
        ),
        (
            "green_weight = 12.5",
            "green_weight = \"ten\"",
            "expected a percentage, found a string",
        ),
        (
            "listen = \"198.18.0.1:8080\"",
            "listen = \"198.18.0.1\"",
            "splitter.toml:7:10: `service[0].listen`: `198.18.0.1` is not an address:port",
        ),
        (
            "listen = \"198.18.0.1:8080\"",
            "listen = \"[2001:db8::1]:80\"",
            "`service[0].blue[0]`: an IPv4 backend for an IPv6 service: both must be the same family",
        ),
        (
            "listen = \"198.18.0.1:8080\"",
            "listen = \"198.18.0.1:0\"",
            "port other than 0",
        ),
        (
            "protocol = \"tcp\"",
            "protocol = \"sctp\"",
            ":8:12: `service[0].protocol`: `sctp` is not one of `tcp`, `udp`",
        ),
        (
            "name = \"sentiment\"",
            "name = \"Sentiment!\"",
            ":6:8: `service[0].name`: expected 1 to 63 characters",
        ),
        (
            "\"198.18.1.3:8080 weight=3\"",
            "\"198.18.1.3:8080 weight=x\"",
            "`service[0].blue[1]`: `weight=x` is not `weight=N`",
        ),
        (
            "\"198.18.1.3:8080 weight=3\"",
            "\"198.18.1.2:8080\"",
            "`service[0].blue[1]`: backend 198.18.1.2:8080 is listed twice",
        ),
        (
            "green = [\"198.18.2.2:8080\"]",
            "green = [\"198.18.2.2:8080\", 7]",
            "splitter.toml:10:",
        ),
        (
            "blue = [\"198.18.1.2:8080\", \"198.18.1.3:8080 weight=3\"]",
            "blue = []",
            "`service[0].blue`: the live pool (blue) needs at least one backend",
        ),
        (
            "pin_dir = \"/sys/fs/bpf/splitter-test\"",
            "pin_dir = \"/tmp/pins\"",
            ":3:11: `pin_dir`: expected a directory below `/sys/fs/bpf`",
        ),
        (
            "interface = \"veth-node\"",
            "interface = \"\"",
            ":2:13: `interface`: expected an interface name",
        ),
        (
            "interface = \"veth-node\"",
            "interface = \"veth-node\"\nxdp_mode = \"turbo\"",
            "`xdp_mode`: `turbo` is not one of",
        ),
        (
            "protocol = \"tcp\"",
            "protocol = \"tcp\"\ncolour = \"red\"",
            "splitter.toml:9:1: `service[0].colour`: unknown key (it takes name, listen,",
        ),
        (
            "interface = \"veth-node\"",
            "interfaces = \"veth-node\"",
            "`interfaces`: unknown key; did you mean `interface`?",
        ),
        (
            "green = [\"198.18.2.2:8080\"]",
            "green = []",
            "`service[0].green_weight`: gives green a share, but the green pool has no backend",
        ),
    ];
    for (from, to, expected) in cases {
        assert!(GOOD.contains(from), "fixture does not contain {from}");
        let message = error(&GOOD.replace(from, to));
        assert!(
            message.contains(expected),
            "for `{to}`:\n  got      {message}\n  expected {expected}"
        );
    }
}

#[test]
fn duplicate_services_and_shared_backends_are_refused() {
    let twice = format!(
        "{GOOD}\n[[service]]\nname = \"sentiment\"\nlisten = \"198.18.0.1:9090\"\nblue = [\"198.18.1.9:80\"]\n"
    );
    assert!(
        error(&twice).contains(
            "splitter.toml:14:8: `service[1].name`: service `sentiment` is defined twice"
        )
    );
    let same_listen = format!(
        "{GOOD}\n[[service]]\nname = \"other\"\nlisten = \"198.18.0.1:8080\"\nblue = [\"198.18.1.9:80\"]\n"
    );
    assert!(error(&same_listen).contains("another service already listens on tcp 198.18.0.1:8080"));
    let shared = format!(
        "{GOOD}\n[[service]]\nname = \"other\"\nlisten = \"198.18.0.1:9090\"\nblue = [\"198.18.2.2:8080\"]\n"
    );
    assert!(error(&shared).contains("backend 198.18.2.2:8080 is listed twice"));
    let backend_as_service = format!(
        "{GOOD}\n[[service]]\nname = \"other\"\nlisten = \"198.18.1.2:8080\"\nblue = [\"198.18.1.9:80\"]\n"
    );
    assert!(
        error(&backend_as_service)
            .contains(":15:10: `service[1].listen`: 198.18.1.2:8080 is also a backend")
    );
}

/// Two services `a` and `b` in release group `stack`, with `extra_a` and `extra_b` in them.
fn group(extra_a: &str, extra_b: &str) -> String {
    format!(
        "interface = \"veth-node\"\n[[service]]\nname = \"a\"\nlisten = \"198.18.0.1:80\"\nblue = [\"198.18.1.1:80\"]\ngreen = [\"198.18.1.2:80\"]\ngroup = \"stack\"\n{extra_a}\n[[service]]\nname = \"b\"\nlisten = \"198.18.0.1:81\"\nblue = [\"198.18.1.1:81\"]\ngreen = [\"198.18.1.2:81\"]\ngroup = \"stack\"\n{extra_b}\n[[service]]\nname = \"solo\"\nlisten = \"198.18.0.1:82\"\nblue = [\"198.18.1.1:82\"]\n"
    )
}

#[test]
fn release_groups_resolve_by_group_or_service_and_must_agree() {
    let config = parse(&group("", "")).expect("valid");
    let names = |name: &str| {
        let release = config.release(name).expect("release");
        (
            release.name.to_owned(),
            release
                .members
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>(),
        )
    };
    let stack = ("stack".to_owned(), vec!["a", "b"]);
    assert_eq!(names("stack"), stack);
    assert_eq!(names("b"), stack, "a service names its group");
    assert_eq!(names("solo"), ("solo".to_owned(), vec!["solo"]));
    assert!(config.release("nothing").is_none());
    assert_eq!(
        config.releases().iter().map(|r| r.name).collect::<Vec<_>>(),
        ["stack", "solo"]
    );
    assert!(error(&group("", "green_weight = 10")).contains(
        "`service[1].green_weight`: differs from `a`, the first service of release group `stack`"
    ));
    assert!(error(&group("", "live = \"green\"")).contains("`service[1].live`: differs"));
    assert!(error(&group("affinity = \"client\"", "")).contains("`service[1].affinity`"));
    assert!(
        error(&group("", "[service.rollout]\nsteps = [50, 100]"))
            .contains("takes its rollout plan from its first service `a`")
    );
    assert!(
        error(&group("", "drill_every_ms = 60000")).contains(
            "`service[1].drill_every_ms`: release group `stack` takes its drill schedule"
        )
    );
    assert!(
        error(&group("", "never_candidate = [\"198.19.0.0/16\"]"))
            .contains("`service[1].never_candidate`: differs")
    );
    // The first service's plan is the group's.
    assert!(parse(&group("[service.rollout]\nsteps = [50, 100]", "")).is_ok());
    let clash = group("", "").replace("group = \"stack\"", "group = \"solo\"");
    assert!(error(&clash).contains("`solo` is also a service's name"));
    assert!(
        error(&group("", "").replace("\"stack\"", "\"Stack!\""))
            .contains("`service[0].group`: expected")
    );
}

#[test]
fn a_last_resort_pool_is_validated_like_the_others() {
    let with = |pool: &str| format!("{GOOD}last_resort = {pool}\n");
    let config = parse(&with("[\"198.18.3.1:80\"]")).expect("valid");
    assert_eq!(config.services[0].last_resort.len(), 1);
    assert!(
        parse(GOOD).expect("valid").services[0]
            .last_resort
            .is_empty()
    );
    assert!(
        error(&with("[\"198.18.3.1:80 weight=0\"]"))
            .contains("`service[0].last_resort`: needs at least one backend with a weight")
    );
    assert!(
        error(&with("[\"198.18.2.2:8080\"]")).contains("backend 198.18.2.2:8080 is listed twice")
    );
    assert!(
        error(&with("[\"[2001:2::1]:80\"]"))
            .contains("`service[0].last_resort[0]`: an IPv6 backend for an IPv4 service")
    );
}

#[test]
fn a_rollout_plan_in_the_config_is_validated_and_overridden_field_by_field() {
    assert_eq!(
        parse(GOOD).expect("valid").services[0].rollout,
        PlanRequest::default()
    );
    let text = format!(
        "{GOOD}\n[service.rollout]\nsteps = [10, 50, 100]\nhold_ms = 5000\nmax_p99_ms = 250\n"
    );
    let configured = parse(&text).expect("valid").services[0].rollout.clone();
    assert_eq!(configured.steps, Some(vec![10.0, 50.0, 100.0]));
    let plan = configured
        .overridden_by(PlanRequest {
            hold_ms: Some(1_000),
            ..PlanRequest::default()
        })
        .into_plan()
        .expect("valid");
    assert_eq!(plan.steps, [1_000, 5_000, 10_000]);
    assert_eq!(plan.hold, Duration::from_secs(1), "the override wins");
    assert_eq!(plan.gates.max_p99_ms, Some(250.0), "the config stays");
    let text = format!(
        "{GOOD}\n[service.rollout]\nprometheus_url = \"http://127.0.0.1:9090\"\n\
         [[service.rollout.promql_gates]]\nname = \"lowconf\"\n\
         query = 'sum(rate(low_total{{version=\"$candidate\"}}[1m]))'\nmax = 0.05\n"
    );
    let plan = parse(&text).expect("valid").services[0]
        .rollout
        .clone()
        .into_plan()
        .expect("valid");
    assert_eq!(plan.promql.len(), 1);
    assert_eq!(
        plan.promql[0].query,
        r#"sum(rate(low_total{version="$candidate"}[1m]))"#
    );
    assert_eq!(
        plan.prometheus.map(|p| p.url.to_string()).as_deref(),
        Some("http://127.0.0.1:9090")
    );
    for (table, expected) in [
        (
            "steps = [50, 10, 100]",
            "`service[0].rollout`: steps must rise",
        ),
        (
            "failure_limit = 0",
            "`service[0].rollout`: failure_limit 0 is outside",
        ),
        (
            "hold = \"5s\"",
            "`service[0].rollout.hold`: unknown key; did you mean `hold_ms`?",
        ),
        (
            "[[service.rollout.promql_gates]]\nname = \"lowconf\"\nquery = \"x\"\nmax = 0.1",
            "`service[0].rollout`: PromQL gates need `prometheus_url`",
        ),
        (
            "prometheus_url = \"http://127.0.0.1:9090\"\n[[service.rollout.promql_gates]]\nname = \"lowconf\"\nquery = \"x\"",
            "PromQL gate `lowconf` needs `max`, `min` or both",
        ),
        (
            "prometheus_url = \"http://127.0.0.1:9090\"\n[[service.rollout.promql_gates]]\nname = \"lowconf\"\nquery = \"x\"\nmaximum = 1",
            "`service[0].rollout.promql_gates[0].maximum`: unknown key",
        ),
    ] {
        let message = error(&format!("{GOOD}\n[service.rollout]\n{table}\n"));
        assert!(message.contains(expected), "{table}: {message}");
    }
    assert_eq!(
        parse(GOOD).expect("valid").services[0].rollback_window,
        DEFAULT_ROLLBACK_WINDOW
    );
    assert_eq!(parse(GOOD).expect("valid").services[0].drill_every, None);
    assert_eq!(
        parse(&format!("{GOOD}drill_every_ms = 3600000\n"))
            .expect("valid")
            .services[0]
            .drill_every,
        Some(Duration::from_secs(3_600))
    );
    assert!(!parse(GOOD).expect("valid").services[0].client_affinity);
    assert!(
        parse(&format!("{GOOD}affinity = \"client\"\n"))
            .expect("valid")
            .services[0]
            .client_affinity
    );
    let spec = parse(&format!(
        "{GOOD}always_candidate = [\"198.19.0.0/16\", \"198.18.9.9\"]\nnever_candidate = [\"2001:db8::/32\"]\n"
    ))
    .expect("valid");
    let spec = &spec.services[0];
    assert_eq!(
        (spec.always_candidate[0].bits, spec.always_candidate[1].bits),
        (112, 128)
    );
    assert_eq!(spec.always_candidate[0].to_string(), "198.19.0.0/16");
    assert_eq!(spec.never_candidate[0].to_string(), "2001:db8::/32");
    for (list, problem) in [
        (
            "always_candidate = [\"198.19.0.1/16\"]",
            "has bits set past its prefix length",
        ),
        (
            "always_candidate = [\"198.19.0.0/33\"]",
            "the prefix length must be 0 to 32",
        ),
        (
            "never_candidate = [\"staff\"]",
            "is not an address or a prefix",
        ),
        (
            "always_candidate = [\"198.19.0.0/16\"]\nnever_candidate = [\"198.19.0.0/16\"]",
            "198.19.0.0/16 is also in always_candidate",
        ),
    ] {
        let message = error(&format!("{GOOD}{list}\n"));
        assert!(message.contains(problem), "{list}: {message}");
    }
    let message = error(&format!("{GOOD}affinity = \"sticky\"\n"));
    assert!(
        message.contains("`service[0].affinity`: `sticky` is not one of `flow`, `client`"),
        "{message}"
    );
    let message = error(&format!("{GOOD}drill_every_ms = 999\n"));
    assert!(
        message.contains("`service[0].drill_every_ms`: 999 is outside 1000..="),
        "{message}"
    );
    let message = error(&format!("{GOOD}rollback_window_ms = 2592000001\n"));
    assert!(
        message.contains("`service[0].rollback_window_ms`: 2592000001 is outside"),
        "{message}"
    );
}

#[test]
fn daemon_keys_and_health_checks_have_defaults_and_are_validated() {
    let config = parse(GOOD).expect("valid");
    assert_eq!(
        config.control_socket,
        Path::new(paths::DEFAULT_CONTROL_SOCKET)
    );
    assert_eq!(config.state_dir, Path::new(paths::DEFAULT_STATE_DIR));
    assert_eq!(
        config.metrics_listen.to_string(),
        paths::DEFAULT_METRICS_LISTEN
    );
    assert_eq!(config.control_group, None);
    assert_eq!(config.services[0].health, Some(HealthCheck::default()));

    let text = GOOD.replace("interface = \"veth-node\"", "interface = \"veth-node\"\ncontrol_socket = \"/tmp/s/ctl.sock\"\ncontrol_group = \"root\"\nmetrics_listen = \"127.0.0.1:9500\"\nstate_dir = \"/tmp/s\"")
        + "\n[service.health]\ninterval_ms = 200\ntimeout_ms = 50\nunhealthy_after = 1\nhttp_path = \"/healthz\"\n";
    let config = parse(&text).expect("valid");
    assert_eq!(config.control_socket, Path::new("/tmp/s/ctl.sock"));
    assert_eq!(
        config.control_group,
        Some(ControlGroup {
            name: "root".to_owned(),
            gid: 0
        })
    );
    assert_eq!(config.metrics_listen.port(), 9500);
    let health = config.services[0].health.as_ref().expect("probed");
    assert_eq!(
        (
            health.interval,
            health.timeout,
            health.unhealthy_after,
            health.healthy_after
        ),
        (Duration::from_millis(200), Duration::from_millis(50), 1, 2)
    );
    assert_eq!(
        health.http,
        Some(HttpCheck {
            path: "/healthz".to_owned(),
            status: 200
        })
    );

    let bad: &[(&str, &str)] = &[
        (
            "control_socket = \"run/ctl.sock\"",
            "`control_socket`: `run/ctl.sock` is not an absolute path",
        ),
        (
            "control_group = \"no-such-group-here\"",
            "`control_group`: no group `no-such-group-here` on this host",
        ),
        (
            "metrics_listen = \"localhost\"",
            "`metrics_listen`: `localhost` is not an address:port",
        ),
        (
            "flow_table_per_cpu = 10",
            "`flow_table_per_cpu`: 10 is outside 1024..=1048576",
        ),
        (
            "state_dir = \"\"",
            "`state_dir`: `` is not an absolute path",
        ),
    ];
    for (line, expected) in bad {
        let message = error(&GOOD.replace(
            "interface = \"veth-node\"",
            &format!("interface = \"veth-node\"\n{line}"),
        ));
        assert!(message.contains(expected), "{line}: {message}");
    }
    let bad_health: &[(&str, &str)] = &[
        (
            "interval_ms = 50",
            "`service[0].health.interval_ms`: 50 is outside 100..=60000",
        ),
        (
            "interval_ms = 200\ntimeout_ms = 300",
            "`service[0].health.timeout_ms`: 300 is outside 10..=200",
        ),
        (
            "unhealthy_after = 0",
            "`service[0].health.unhealthy_after`: 0 is outside 1..=10",
        ),
        (
            "http_status = 204",
            "`service[0].health.http_status`: needs `http_path`",
        ),
        (
            "http_path = \"healthz\"",
            "`service[0].health.http_path`: expected a path starting with `/`",
        ),
        (
            "http_path = \"/health<z>\"",
            "`service[0].health.http_path`: expected a path starting with `/`",
        ),
        (
            "http_path = \"/healthz#top\"",
            "`service[0].health.http_path`: expected a path starting with `/`",
        ),
        (
            "http_path = \"/h\"\nhttp_status = 99",
            "`service[0].health.http_status`: 99 is not an HTTP status",
        ),
        (
            "intervall_ms = 100",
            "`service[0].health.intervall_ms`: unknown key; did you mean `interval_ms`?",
        ),
    ];
    for (lines, expected) in bad_health {
        let message = error(&format!("{GOOD}\n[service.health]\n{lines}\n"));
        assert!(message.contains(expected), "{lines}: {message}");
    }
}

/// The keys serde accepts in a table, read from the error an unknown key gets (every raw
/// table denies unknown fields and names the ones it expects).
fn keys_of(toml_with_unknown: &str) -> Vec<String> {
    let message = match toml::from_str::<raw::RawConfig>(toml_with_unknown) {
        Ok(_) => panic!("`zzz` was accepted"),
        Err(e) => e.message().to_owned(),
    };
    let expected = message
        .split_once("expected one of ")
        .unwrap_or_else(|| panic!("no key list in: {message}"))
        .1;
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_config_key_is_in_the_configuration_docs() {
    let docs = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/configuration.md"
    ))
    .expect("docs/configuration.md");
    let service = "interface = \"x\"\n[[service]]\nname = \"a\"\nlisten = \"198.18.0.1:80\"\n";
    // Each table, the heading of its section in the docs, and a config with an unknown key
    // in it.
    let tables = [
        ("## Top level", "zzz = 1\n".to_owned()),
        ("## `[[service]]`", format!("{service}zzz = 1\n")),
        (
            "## `[fleet]`",
            "interface = \"x\"\n[fleet]\netcd = []\nzzz = 1\n".to_owned(),
        ),
        (
            "### `[service.health]`",
            format!("{service}[service.health]\nzzz = 1\n"),
        ),
        (
            "### `[service.rollout]`",
            format!("{service}[service.rollout]\nzzz = 1\n"),
        ),
        (
            "#### `[[service.rollout.promql_gates]]`",
            format!("{service}[service.rollout]\n[[service.rollout.promql_gates]]\nzzz = 1\n"),
        ),
    ];
    // A section: from its heading to the next heading of any level.
    let section = |heading: &str| -> String {
        let start = docs
            .find(&format!("\n{heading}\n"))
            .unwrap_or_else(|| panic!("no section `{heading}` in docs/configuration.md"));
        docs[start + heading.len() + 2..]
            .lines()
            .take_while(|line| !line.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut missing = Vec::new();
    for (heading, text) in tables {
        let keys = keys_of(&text);
        assert!(keys.len() >= 4, "{heading}: {keys:?}");
        let rows = section(heading);
        for key in keys {
            // A key is a row of its table's section, or (a table itself) a section.
            let documented = rows.contains(&format!("| `{key}` |"))
                || [
                    format!("## `[[{key}]]`"),
                    format!("### `[service.{key}]`"),
                    format!("#### `[[service.rollout.{key}]]`"),
                ]
                .iter()
                .any(|form| docs.contains(form.as_str()));
            if !documented {
                missing.push(format!("{heading} `{key}`"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "keys missing from docs/configuration.md: {missing:?}"
    );
}

#[test]
fn the_shipped_example_config_is_valid() {
    let text = include_str!("../../../../packaging/splitter.toml");
    let config = parse(text).unwrap_or_else(|e| panic!("packaging/splitter.toml: {e}"));
    let http = config.services[0]
        .health
        .as_ref()
        .and_then(|h| h.http.as_ref());
    assert_eq!(http.map(|h| h.path.as_str()), Some("/healthz"));
}

#[test]
fn udp_services_are_not_probed_and_mapped_addresses_are_ipv4() {
    let udp = GOOD.replace("protocol = \"tcp\"", "protocol = \"udp\"");
    assert_eq!(
        parse(&udp).expect("valid").services[0].health,
        None,
        "a UDP service is not probed"
    );
    let probed = format!("{udp}\n[service.health]\ninterval_ms = 500\n");
    assert!(
        error(&probed).contains("`service[0].health`: health checks probe over TCP"),
        "{}",
        error(&probed)
    );

    let mapped = GOOD.replace(
        "listen = \"198.18.0.1:8080\"",
        "listen = \"[::ffff:198.18.0.1]:8080\"",
    );
    let config = parse(&mapped).expect("an IPv4-mapped address is IPv4");
    assert_eq!(
        config.services[0].listen,
        "198.18.0.1:8080".parse().expect("addr")
    );
    let twice = format!(
        "{mapped}\n[[service]]\nname = \"other\"\nlisten = \"198.18.0.1:8080\"\nblue = [\"198.18.1.9:80\"]\n"
    );
    assert!(error(&twice).contains("another service already listens on tcp 198.18.0.1:8080"));
}

#[test]
fn a_syntax_error_names_its_line() {
    let message = error("interface = \"eth0\"\n[[service]\n");
    assert!(message.starts_with("splitter.toml:2:"), "{message}");
}

#[test]
fn a_missing_file_is_a_read_error_naming_the_path() {
    let message = Config::load(Path::new("/nonexistent/splitter.toml"))
        .expect_err("missing")
        .to_string();
    assert_eq!(message, "cannot read config `/nonexistent/splitter.toml`");
}

#[test]
fn the_first_unknown_key_in_the_file_is_the_one_reported() {
    // Alphabetically `helth` < `protocl` < `zeta`; in the file `zeta` comes first, then
    // `protocl`.
    let text = "interface = \"veth-node\"\nzeta = 1\n[[service]]\nname = \"a\"\nlisten = \"198.18.0.1:80\"\nprotocl = \"tcp\"\nhelth = 1\n";
    assert_eq!(
        error(text),
        "splitter.toml:2:1: `zeta`: unknown key (it takes interface, pin_dir, xdp_mode, control_socket, control_group, metrics_listen, state_dir, flow_table_per_cpu, new_flow_rate_per_cpu, fast_path, fleet, service)"
    );
    let text = text.replace("zeta = 1\n", "");
    assert!(
        error(&text).starts_with(
            "splitter.toml:5:1: `service[0].protocl`: unknown key; did you mean `protocol`?"
        ),
        "{}",
        error(&text)
    );
}

#[test]
fn the_fast_path_is_on_unless_the_config_turns_it_off() {
    let on = Config::parse(Path::new("splitter.toml"), "interface = \"eth0\"\n").expect("valid");
    assert!(on.fast_path);
    let off = Config::parse(
        Path::new("splitter.toml"),
        "interface = \"eth0\"\nfast_path = false\n",
    )
    .expect("valid");
    assert!(!off.fast_path);
    let wrong = Config::parse(
        Path::new("splitter.toml"),
        "interface = \"eth0\"\nfast_path = \"yes\"\n",
    )
    .expect_err("a string is not a switch")
    .to_string();
    assert!(
        wrong.contains("splitter.toml:2:13") && wrong.contains("boolean"),
        "{wrong}"
    );
}

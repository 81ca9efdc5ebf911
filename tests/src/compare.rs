//! The setups the benchmarks compare Splitter with, on one test bed and the same two backends,
//! each splitting new connections between blue and green where it splits at all:
//! - **direct**: the client talks to blue's address; the node only forwards (the ceiling);
//! - **XDP_PASS**: direct, with a program that only returns XDP_PASS attached where and as
//!   Splitter attaches (generic mode on veth): the floor of any XDP program there;
//! - **splitter**: XDP ingress and TC egress on the node, the service at the node's address,
//!   attached as `xdp_mode = "auto"` does (generic on veth);
//! - **splitter, native XDP**: the same with `xdp_mode = "native"`, what `auto` chose on veth
//!   before this benchmark showed generic mode to be faster there;
//! - **nftables**: DNAT with `numgen random mod 10000` mapped to the two backends, with
//!   conntrack, as kube-proxy's nftables mode splits; a share change is an atomic replace of
//!   the chain by `nft -f`;
//! - **HAProxy**: TCP mode, two weighted servers (roundrobin), weights set through its runtime
//!   API (`set weight`).
//!
//! They answer on different ports of the node's address, and only the one being measured is in
//! the packet path where they would touch each other's packets: the nftables table exists only
//! while nftables is measured (its NAT hook sends every packet of the namespace through
//! conntrack), and Splitter is attached only while Splitter is (its egress program translates
//! every reply from a backend). HAProxy is a listener on its own port and stays up.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, SocketAddrV4},
    os::unix::net::UnixStream,
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use splitter_common::{SplitWord, Version};
use splitter_ctl::kernel::maps::Maps;

use crate::{http, testbed::Testbed};

/// Where nftables answers on the node's address.
pub const NFT_PORT: u16 = 8082;
/// Where HAProxy answers on the node's address.
pub const HAPROXY_PORT: u16 = 8081;
/// The nftables table the setup owns.
const NFT_TABLE: &str = "splitter_bench";
/// How long HAProxy may take to come up.
const HAPROXY_START: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Direct,
    XdpPass,
    Splitter,
    SplitterNative,
    Nftables,
    Haproxy,
}

impl Kind {
    pub const ALL: [Self; 6] = [
        Self::Direct,
        Self::XdpPass,
        Self::Splitter,
        Self::SplitterNative,
        Self::Nftables,
        Self::Haproxy,
    ];
    /// The setups that split, and so have shares, rollbacks and share changes.
    pub const SPLITTING: [Self; 3] = [Self::Splitter, Self::Nftables, Self::Haproxy];

    /// The client's ephemeral ports while `self` is measured. Each setup has its own, so that a
    /// backend's TIME_WAIT entries left by one setup never meet another's new connections: the
    /// client's TCP timestamps differ per destination address, and a reused 4-tuple from another
    /// setup would be refused by PAWS, stalling the SYN for a second.
    #[must_use]
    pub const fn client_ports(self) -> (u16, u16) {
        match self {
            Self::Direct => (2_000, 11_999),
            Self::XdpPass => (12_000, 21_999),
            Self::Splitter => (22_000, 31_999),
            Self::SplitterNative => (32_000, 41_999),
            Self::Nftables => (42_000, 51_999),
            Self::Haproxy => (52_000, 61_999),
        }
    }

    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::XdpPass => "XDP_PASS only",
            Self::Splitter => "splitter",
            Self::SplitterNative => "splitter, native XDP",
            Self::Nftables => "nftables",
            Self::Haproxy => "HAProxy",
        }
    }
}

/// The four setups on one bed.
pub struct Setups {
    /// The initial green share, in basis points.
    green_bp: u16,
    haproxy_socket: PathBuf,
    /// While Splitter is attached: its maps and the service's id.
    splitter: Option<(Maps, u32)>,
    /// While the XDP_PASS program is attached: the object that owns its link.
    xdp_pass: Option<aya::Ebpf>,
}

impl Setups {
    /// Starts HAProxy with green at `green_bp` (Splitter's config is written when it enters). The client
    /// reuses its ports in TIME_WAIT (`tcp_tw_reuse = 1`), as load generators run: wrk sometimes
    /// closes first, and `connect` slows to a crawl once TIME_WAIT fills the port range.
    pub fn new(bed: &mut Testbed, green_bp: u16) -> Result<Self, String> {
        bed.client.sysctl("net.ipv4.tcp_tw_reuse", "1");
        let dir = bed.dir.join("haproxy");
        std::fs::create_dir_all(&dir).map_err(|e| format!("haproxy dir: {e}"))?;
        let socket = dir.join("haproxy.sock");
        let _ = std::fs::remove_file(&socket);
        let (blue_w, green_w) = haproxy_weights(green_bp);
        let config = format!(
            "global\n  maxconn 4096\n  stats socket {} mode 600 level admin\n\n\
             defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\n\
             listen bench\n  bind {}:{HAPROXY_PORT}\n  balance roundrobin\n  maxconn 4096\n\
             \x20 server blue {} weight {blue_w}\n  server green {} weight {green_w}\n",
            socket.display(),
            bed.node_addr(),
            bed.blue_addr(),
            bed.green_addr()
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).map_err(|e| format!("haproxy config: {e}"))?;
        let mut haproxy = Command::new("haproxy");
        haproxy
            .args(["-db", "-f"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("haproxy.log")).map_err(|e| e.to_string())?,
            ));
        let (child, _) = bed
            .node
            .start(haproxy)
            .map_err(|e| format!("cannot start haproxy (`cargo xtask setup` installs it): {e}"))?;
        bed.keep("haproxy", child);
        let setups = Self {
            green_bp,
            haproxy_socket: socket,
            splitter: None,
            xdp_pass: None,
        };
        let deadline = Instant::now() + HAPROXY_START;
        while setups.haproxy("show info").is_err() {
            if Instant::now() > deadline {
                return Err(format!(
                    "HAProxy did not answer on its runtime socket within {HAPROXY_START:?}: {}",
                    std::fs::read_to_string(dir.join("haproxy.log")).unwrap_or_default()
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(setups)
    }

    /// What the client connects to for `kind`.
    #[must_use]
    pub fn addr(bed: &Testbed, kind: Kind) -> SocketAddr {
        let node = |port| {
            SocketAddr::V4(SocketAddrV4::new(
                bed.node_addr().parse().expect("node address"),
                port,
            ))
        };
        match kind {
            Kind::Direct | Kind::XdpPass => SocketAddr::V4(bed.blue_addr()),
            Kind::Splitter | Kind::SplitterNative => bed.vip(),
            Kind::Nftables => node(NFT_PORT),
            Kind::Haproxy => node(HAPROXY_PORT),
        }
    }

    /// Puts `kind` into the packet path, splitting at the initial share, with the client on the
    /// setup's own ephemeral ports.
    pub fn enter(&mut self, bed: &mut Testbed, kind: Kind) -> Result<(), String> {
        let (low, high) = kind.client_ports();
        bed.client
            .sysctl("net.ipv4.ip_local_port_range", &format!("{low} {high}"));
        match kind {
            Kind::Direct | Kind::Haproxy => Ok(()),
            Kind::XdpPass => {
                let interface = bed.node_interface();
                self.xdp_pass = Some(bed.node.run(move || attach_xdp_pass(&interface))?);
                Ok(())
            }
            Kind::Splitter | Kind::SplitterNative => {
                let percent = format!("{}", f64::from(self.green_bp) / 100.0);
                bed.write_config(&percent);
                if kind == Kind::SplitterNative {
                    bed.prepend_config("xdp_mode = \"native\"\n");
                }
                bed.start_daemon(&["--detach-on-exit"]);
                let maps = Maps::open_pinned(&bed.pin_dir).map_err(|e| e.to_string())?;
                let endpoint = splitter_ctl::model::config::endpoint(
                    bed.vip(),
                    splitter_ctl::model::config::Protocol::Tcp,
                );
                let service = maps
                    .service(&endpoint)
                    .map_err(|e| e.to_string())?
                    .ok_or("the service is not in the data plane")?;
                self.splitter = Some((maps, service.split));
                if kind == Kind::Splitter {
                    warm_up_reply_path(bed)?;
                }
                Ok(())
            }
            Kind::Nftables => {
                let ruleset = format!(
                    "table ip {NFT_TABLE} {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n  }}\n}}\n{}",
                    self.nft_rule(bed, self.green_bp)
                );
                nft(bed, &ruleset).map(drop)
            }
        }
    }

    /// Takes `kind` out of the packet path again.
    pub fn leave(&mut self, bed: &mut Testbed, kind: Kind) -> Result<(), String> {
        match kind {
            Kind::Direct | Kind::Haproxy => Ok(()),
            Kind::XdpPass => {
                self.xdp_pass = None;
                Ok(())
            }
            Kind::Splitter | Kind::SplitterNative => {
                self.splitter = None;
                let exit = bed.stop_daemon(libc::SIGTERM);
                if !exit.success() {
                    return Err(format!("the daemon exited with {exit}"));
                }
                if splitter_ctl::kernel::dataplane::is_attached(&bed.pin_dir) {
                    return Err("the daemon left the data plane attached".to_owned());
                }
                // The kernel releases an unpinned link from a work queue, a moment after the
                // pin is gone: wait until the interface shows no XDP program.
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
                while xdp_attached(bed) {
                    if std::time::Instant::now() > deadline {
                        return Err(
                            "an XDP program is still attached 2 s after the daemon left".to_owned()
                        );
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Ok(())
            }
            Kind::Nftables => nft(bed, &format!("delete table ip {NFT_TABLE}\n")).map(drop),
        }
    }

    /// Gives green `green_bp` of new connections: `kind`'s own way of changing the share. Returns
    /// how long the command took, from its start to its return.
    pub fn set_green(
        &mut self,
        bed: &Testbed,
        kind: Kind,
        green_bp: u16,
    ) -> Result<Duration, String> {
        match kind {
            Kind::Direct | Kind::XdpPass => Err(format!("{} does not split", kind.name())),
            Kind::Splitter | Kind::SplitterNative => {
                let (maps, split) = self.splitter.as_mut().ok_or("splitter is not attached")?;
                let started = Instant::now();
                maps.set_split(*split, SplitWord::new(Version::Blue, green_bp))
                    .map_err(|e| e.to_string())?;
                Ok(started.elapsed())
            }
            Kind::Nftables => {
                let rule = self.nft_rule(bed, green_bp);
                nft(
                    bed,
                    &format!("flush chain ip {NFT_TABLE} prerouting\n{rule}"),
                )
            }
            Kind::Haproxy => {
                let (blue, green) = haproxy_weights(green_bp);
                let started = Instant::now();
                self.haproxy(&format!(
                    "set weight bench/blue {blue}; set weight bench/green {green}"
                ))?;
                Ok(started.elapsed())
            }
        }
    }

    /// The DNAT rule that splits `green_bp` of new connections to green.
    fn nft_rule(&self, bed: &Testbed, green_bp: u16) -> String {
        let (blue, green) = (bed.blue_addr(), bed.green_addr());
        let cut = 10_000 - u32::from(green_bp.min(10_000));
        let map = match cut {
            0 => format!("0-9999 : {}", green.ip()),
            10_000 => format!("0-9999 : {}", blue.ip()),
            cut => format!("0-{} : {}, {cut}-9999 : {}", cut - 1, blue.ip(), green.ip()),
        };
        format!(
            "add rule ip {NFT_TABLE} prerouting ip daddr {} tcp dport {NFT_PORT} dnat to numgen random mod 10000 map {{ {map} }} : {}\n",
            bed.node_addr(),
            blue.port()
        )
    }

    /// Rolls green back to 0 with `kind`'s own command, run as a process: Splitter's
    /// `splitter-ctl rollback` (it also asks the daemon to drain green's connections, without
    /// waiting), `nft -f`, or HAProxy's runtime command through socat.
    pub fn rollback_command(&mut self, bed: &Testbed, kind: Kind) -> Result<Rollback, String> {
        match kind {
            Kind::Direct | Kind::XdpPass => Err(format!("{} does not split", kind.name())),
            Kind::Splitter | Kind::SplitterNative => {
                let mut rollback = crate::testbed::rollback_command(&bed.config_path);
                rollback.stdout(Stdio::piped()).stderr(Stdio::piped());
                let fail = |e: std::io::Error| format!("splitter-ctl: {e}");
                let (child, started) = bed.node.start(rollback).map_err(fail)?;
                // CLOCK_MONOTONIC (the journal's clock) when the spawn began: Instant's clock.
                let started_ns = splitter_ctl::kernel::aging::monotonic_ns()
                    .saturating_sub(started.elapsed().as_nanos() as u64);
                let out = child.wait_with_output().map_err(fail)?;
                let command = started.elapsed();
                if !out.status.success() {
                    return Err(format!(
                        "splitter-ctl rollback: {}",
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
                let event = splitter_ctl::store::journal::Journal::open(&bed.dir.join("state"))
                    .and_then(|j| j.history(Some("sentiment"), 10))
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .find(|e| e.event.kind.name() == "rollback")
                    .ok_or("the rollback was not journaled")?;
                let details = &event.event.details;
                let written = details["written_monotonic_ns"]
                    .as_u64()
                    .ok_or("the rollback journaled no write time")?;
                let to_effect = Duration::from_nanos(written.saturating_sub(started_ns));
                // The command's own clock starts when it reaches its work; before that, the
                // process started.
                let inside = Duration::from_micros(event.event.decision_to_write_us.unwrap_or(0));
                let main = to_effect.saturating_sub(inside);
                let phase = |name: &str| {
                    main + Duration::from_micros(details["phases_us"][name].as_u64().unwrap_or(0))
                };
                Ok(Rollback {
                    command,
                    to_effect,
                    phases: Some([main, phase("config"), phase("maps"), phase("lock")]),
                })
            }
            Kind::Nftables => {
                let rule = self.nft_rule(bed, 0);
                let command = nft(
                    bed,
                    &format!("flush chain ip {NFT_TABLE} prerouting\n{rule}"),
                )?;
                Ok(Rollback {
                    command,
                    to_effect: command,
                    phases: None,
                })
            }
            Kind::Haproxy => {
                let command =
                    self.haproxy_process("set weight bench/blue 100; set weight bench/green 0")?;
                Ok(Rollback {
                    command,
                    to_effect: command,
                    phases: None,
                })
            }
        }
    }

    /// `command` sent to HAProxy's runtime socket by a process (`socat`), as its operators
    /// send it; how long the process took, start to exit.
    pub fn haproxy_process(&self, command: &str) -> Result<Duration, String> {
        let started = Instant::now();
        let mut child = Command::new("socat")
            .arg("-")
            .arg(format!("UNIX-CONNECT:{}", self.haproxy_socket.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run socat (`cargo xtask setup` installs it): {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(format!("{command}\n").as_bytes())
                .map_err(|e| format!("socat stdin: {e}"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("socat: {e}"))?;
        let took = started.elapsed();
        let answer = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !answer.trim().is_empty() {
            return Err(format!(
                "HAProxy through socat ({}): `{command}`: {}{}",
                out.status,
                answer.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(took)
    }

    /// One command on HAProxy's runtime socket; its answer.
    fn haproxy(&self, command: &str) -> Result<String, String> {
        let fail = |e: std::io::Error| format!("HAProxy runtime API: {e}");
        let mut socket = UnixStream::connect(&self.haproxy_socket).map_err(fail)?;
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(fail)?;
        socket
            .write_all(format!("{command}\n").as_bytes())
            .map_err(fail)?;
        let mut answer = String::new();
        socket.read_to_string(&mut answer).map_err(fail)?;
        // `set weight` answers nothing when it worked, and says why when it did not.
        if command.starts_with("set ") && !answer.trim().is_empty() {
            return Err(format!("HAProxy refused `{command}`: {}", answer.trim()));
        }
        Ok(answer)
    }
}

/// Loads the XDP_PASS program and attaches it to `interface` in the mode Splitter's `auto`
/// picks (from a thread in the node's namespace); dropping the object detaches it.
fn attach_xdp_pass(interface: &str) -> Result<aya::Ebpf, String> {
    use splitter_common::maps::PROGRAM_BASELINE;
    let mut ebpf = splitter_ctl::kernel::dataplane::load(None, 1_024)
        .map_err(|e| format!("load: {:#}", anyhow::Error::from(e)))?;
    let program: &mut aya::programs::Xdp = ebpf
        .program_mut(PROGRAM_BASELINE)
        .and_then(|p| p.try_into().ok())
        .ok_or("no XDP_PASS program in the object")?;
    splitter_ctl::kernel::dataplane::load_program(PROGRAM_BASELINE, || program.load())
        .map_err(|e| format!("load XDP_PASS: {e}"))?;
    program
        .attach(
            interface,
            if splitter_ctl::kernel::dataplane::prefers_generic(interface) {
                aya::programs::xdp::XdpMode::Skb
            } else {
                aya::programs::xdp::XdpMode::Driver
            },
        )
        .map_err(|e| format!("attach XDP_PASS to {interface}: {e}"))?;
    Ok(ebpf)
}

/// HAProxy weights (0-256) for a green share in basis points: percentages.
fn haproxy_weights(green_bp: u16) -> (u16, u16) {
    let green = (green_bp.min(10_000) + 50) / 100;
    (100 - green, green)
}

/// Runs `nft -f -` with `ruleset` in the node namespace (one transaction); how long it took.
fn nft(bed: &Testbed, ruleset: &str) -> Result<Duration, String> {
    let mut nft = Command::new("nft");
    nft.args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let (mut child, started) = bed
        .node
        .start(nft)
        .map_err(|e| format!("cannot run nft (`cargo xtask setup` installs it): {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(ruleset.as_bytes())
            .map_err(|e| format!("nft stdin: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    let took = started.elapsed();
    if out.status.success() {
        Ok(took)
    } else {
        Err(format!(
            "nft refused the ruleset ({}): {}\n{ruleset}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `count` new connections from the client to `addr`, one after another: [blue, green]. A
/// failed connection is an error.
pub fn tally(bed: &Testbed, addr: SocketAddr, count: usize) -> Result<[u64; 2], String> {
    bed.client.run(move || {
        let mut tally = [0u64; 2];
        for i in 0..count {
            match http::get(addr) {
                Ok(version) => tally[usize::from(version == "green")] += 1,
                Err(e) => return Err(format!("connection {} of {count} to {addr}: {e}", i + 1)),
            }
        }
        Ok(tally)
    })
}

/// A rollback as an operator runs it: a command, timed as a new process.
#[derive(Clone, Copy, Debug)]
pub struct Rollback {
    /// From the process's start to its exit.
    pub command: Duration,
    /// From the process's start to the change in effect: Splitter's map write (the time it
    /// journals, on CLOCK_MONOTONIC); for nftables and HAProxy, whose change is in effect when
    /// the command returns, its exit.
    pub to_effect: Duration,
    /// Splitter: where the time to the write went, each phase's end after the process's start
    /// (main reached, config read, maps opened, lock taken).
    pub phases: Option<[Duration; 4]>,
}

/// New connections that must all land on blue after a rollback from 10%: a rollback that did
/// nothing would pass 0.9¹⁰⁰ ≈ 3·10⁻⁵ of the time.
const AFTER_ROLLBACK: usize = 100;

/// Sets green to `green_bp`, checks that green gets new connections, rolls back (green 0) with
/// `kind`'s command, and checks that no new connection reaches green after it.
pub fn rollback(
    bed: &Testbed,
    setups: &mut Setups,
    kind: Kind,
    green_bp: u16,
) -> Result<Rollback, String> {
    setups.set_green(bed, kind, green_bp)?;
    let addr = Setups::addr(bed, kind);
    let [_, green_before] = tally(bed, addr, AFTER_ROLLBACK)?;
    if green_before == 0 {
        return Err(format!(
            "{}: no new connection reached green before the rollback; the share was not in effect",
            kind.name()
        ));
    }
    let timed = setups.rollback_command(bed, kind)?;
    let [_, green_after] = tally(bed, addr, AFTER_ROLLBACK)?;
    if green_after > 0 {
        return Err(format!(
            "{}: {green_after} of {AFTER_ROLLBACK} new connections reached green after the rollback",
            kind.name()
        ));
    }
    Ok(timed)
}

/// Opens `connections` keep-alive connections, changes the share `changes` times (alternating
/// green 50% and 10%), and after each change sends one request on every connection. Returns the
/// connections broken: a request that failed, or one answered by the other version.
pub fn broken_across_changes(
    bed: &Testbed,
    setups: &mut Setups,
    kind: Kind,
    connections: usize,
    changes: usize,
) -> Result<u64, String> {
    let addr = Setups::addr(bed, kind);
    let mut open = bed.client.run(move || {
        (0..connections)
            .map(|_| {
                let mut conn =
                    http::KeepAlive::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
                let version = conn.request().map_err(|e| format!("first request: {e}"))?;
                Ok((conn, version))
            })
            .collect::<Result<Vec<_>, String>>()
    })?;
    let mut broken = 0;
    for i in 0..changes {
        setups.set_green(bed, kind, if i % 2 == 0 { 5_000 } else { 1_000 })?;
        open.retain_mut(|(conn, version)| {
            let kept = conn.request().is_ok_and(|now| now == *version);
            if !kept {
                broken += 1;
            }
            kept
        });
    }
    Ok(broken)
}

/// Sends a few requests through the service and waits until the daemon has attached the reply
/// fast path to both backends' devices (at its first housekeeping after the fast path sent
/// there), so that a run measures the steady state, both directions fast.
fn warm_up_reply_path(bed: &Testbed) -> Result<(), String> {
    // New connections until both versions have answered (green may have a small share), so
    // that the fast path has sent packets to both backends' devices.
    let vip = bed.vip();
    let answered = bed.client.run(move || {
        let mut seen = [false; 2];
        for _ in 0..1_000 {
            let who = crate::http::get(vip)?;
            seen[usize::from(who.contains("green"))] = true;
            if seen == [true; 2] {
                break;
            }
        }
        Ok::<_, std::io::Error>(seen)
    });
    match answered {
        Ok([true, true]) => {}
        Ok(_) => return Err("1,000 warm-up connections did not reach both versions".to_owned()),
        Err(e) => return Err(format!("a warm-up request failed: {e}")),
    }
    let links = bed.pin_dir.join("links_reply");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(8);
    while std::fs::read_dir(&links).map_or(0, Iterator::count) < 2 {
        if std::time::Instant::now() > deadline {
            return Err(
                "the reply fast path was not attached to both backends' devices within 8 s"
                    .to_owned(),
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(())
}

/// Whether the node's client-facing interface has an XDP program (`ip link` shows its id).
fn xdp_attached(bed: &Testbed) -> bool {
    std::process::Command::new("ip")
        .args([
            "-n",
            &bed.node.name,
            "link",
            "show",
            "dev",
            &bed.node_interface(),
        ])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("prog/xdp"))
}

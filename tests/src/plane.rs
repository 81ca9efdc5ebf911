//! The data plane loaded without pins and without attaching, for fixture tests and
//! benchmarks: programs run through BPF_PROG_TEST_RUN, maps are private to the test.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray},
    programs::{SchedClassifier, TestRun as _, TestRunOptions, Xdp},
};
use splitter_common::{
    FlowKey, NextHop,
    maps::{
        NEXT_HOP_SLOTS, NEXT_HOPS, PROGRAM_BASELINE, PROGRAM_EGRESS, PROGRAM_INGRESS,
        PROGRAM_TC_BASELINE,
    },
};
use splitter_ctl::{
    kernel::{apply, dataplane, maps::Maps},
    model::config::Config,
};

/// The services the fixture and property tests load: TCP with two blue backends (weights 1 and
/// 3) and one green, UDP, and a TCP service with blue only.
pub const FIXTURE_CONFIG: &str = r#"
interface = "lo"
pin_dir = "/sys/fs/bpf/unused-by-fixtures"

[[service]]
name = "model"
listen = "198.18.0.1:8080"
blue = ["198.18.1.2:8080", "198.18.1.3:8080 weight=3"]
green = ["198.18.2.2:8080"]

[[service]]
name = "dns"
listen = "198.18.0.1:5353"
protocol = "udp"
blue = ["198.18.1.2:5353"]
green = ["198.18.2.2:5353"]

[[service]]
name = "blue-only"
listen = "198.18.0.1:9090"
blue = ["198.18.1.4:9090"]
"#;

pub struct Plane {
    ebpf: Ebpf,
    pub maps: Maps,
    pub config: Config,
}

/// A program's verdict and the bytes it left.
#[derive(Debug)]
pub struct Run {
    pub verdict: u32,
    pub data: Vec<u8>,
    pub duration_ns: u128,
}

impl Plane {
    /// Loads the programs and applies `config` (TOML) to the maps. Panics with context: the
    /// tests that call it cannot go on without it.
    #[must_use]
    pub fn load(config: &str) -> Self {
        Self::load_sized(config, splitter_common::maps::FLOW_CAPACITY_PER_CPU)
    }

    /// Like `load`, with a flow table of `flows_per_cpu` entries per possible CPU.
    #[must_use]
    pub fn load_sized(config: &str, flows_per_cpu: u32) -> Self {
        let config = Config::parse(Path::new("fixture.toml"), config)
            .unwrap_or_else(|e| panic!("fixture config: {e}"));
        let mut ebpf = dataplane::load(None, flows_per_cpu)
            .unwrap_or_else(|e| panic!("load: {:#}", anyhow::Error::from(e)));
        for name in [PROGRAM_INGRESS, PROGRAM_BASELINE] {
            let program: &mut Xdp = ebpf
                .program_mut(name)
                .and_then(|p| p.try_into().ok())
                .unwrap_or_else(|| panic!("program {name}"));
            dataplane::load_program(name, || program.load())
                .unwrap_or_else(|e| panic!("verifier refused {name}: {e:?}"));
        }
        let tc_baseline: &mut SchedClassifier = ebpf
            .program_mut(PROGRAM_TC_BASELINE)
            .and_then(|p| p.try_into().ok())
            .expect("tc baseline program");
        dataplane::load_program(PROGRAM_TC_BASELINE, || tc_baseline.load())
            .unwrap_or_else(|e| panic!("verifier refused {PROGRAM_TC_BASELINE}: {e:?}"));
        let reply: &mut SchedClassifier = ebpf
            .program_mut(splitter_common::maps::PROGRAM_REPLY)
            .and_then(|p| p.try_into().ok())
            .expect("reply program");
        dataplane::load_program(splitter_common::maps::PROGRAM_REPLY, || reply.load())
            .unwrap_or_else(|e| panic!("verifier refused the reply program: {e:?}"));
        let egress: &mut SchedClassifier = ebpf
            .program_mut(PROGRAM_EGRESS)
            .and_then(|p| p.try_into().ok())
            .expect("egress program");
        dataplane::load_program(PROGRAM_EGRESS, || egress.load())
            .unwrap_or_else(|e| panic!("verifier refused {PROGRAM_EGRESS}: {e:?}"));
        dataplane::load_tail_calls(&mut ebpf)
            .unwrap_or_else(|e| panic!("tail calls: {:#}", anyhow::Error::from(e)));
        let mut maps = Maps::from_ebpf(&mut ebpf).unwrap_or_else(|e| panic!("maps: {e}"));
        apply::apply(&mut maps, &config, &apply::all_healthy)
            .unwrap_or_else(|e| panic!("apply: {e}"));
        Self { ebpf, maps, config }
    }

    /// The instructions the verifier walked to accept program `name` (its states times their
    /// lengths), against its limit of a million.
    #[must_use]
    pub fn verified_instructions(&self, name: &str) -> u32 {
        self.ebpf
            .program(name)
            .unwrap_or_else(|| panic!("program {name}"))
            .info()
            .unwrap_or_else(|e| panic!("program info of {name}: {e}"))
            .verified_instruction_count()
            .unwrap_or_else(|| panic!("the kernel does not say how long {name} took to verify"))
    }

    /// Reads the programs' rare-event reports (aya-log) into `logger`, at each `flush`.
    pub fn take_reports<L: log::Log>(&mut self, logger: L) -> aya_log::EbpfLogger<L> {
        aya_log::EbpfLogger::init_with_logger(&mut self.ebpf, logger)
            .unwrap_or_else(|e| panic!("the reports' ring buffer: {e}"))
    }

    fn xdp(&self, name: &str) -> &Xdp {
        self.ebpf
            .program(name)
            .and_then(|p| p.try_into().ok())
            .unwrap_or_else(|| panic!("program {name}"))
    }

    /// Runs the XDP ingress program once on `frame`.
    #[must_use]
    pub fn ingress(&self, frame: &[u8]) -> Run {
        run(|opts| self.xdp(PROGRAM_INGRESS).test_run(opts), frame, 1)
    }

    /// Runs the TC egress program once on `frame`.
    #[must_use]
    pub fn egress(&self, frame: &[u8]) -> Run {
        let program: &SchedClassifier = self
            .ebpf
            .program(PROGRAM_EGRESS)
            .and_then(|p| p.try_into().ok())
            .expect("egress program");
        run(|opts| program.test_run(opts), frame, 1)
    }

    /// Runs a TC program `repeat` times in the kernel; the mean duration is per run.
    #[must_use]
    pub fn time_tc(&self, name: &str, frame: &[u8], repeat: u32) -> Run {
        let program: &SchedClassifier = self
            .ebpf
            .program(name)
            .and_then(|p| p.try_into().ok())
            .unwrap_or_else(|| panic!("program {name}"));
        run(|opts| program.test_run(opts), frame, repeat)
    }

    /// Runs an XDP program `repeat` times in the kernel; the mean duration is per run.
    #[must_use]
    pub fn time_xdp(&self, name: &str, frame: &[u8], repeat: u32) -> Run {
        run(|opts| self.xdp(name).test_run(opts), frame, repeat)
    }

    /// What `set` of `FLOW_CACHE` holds on `cpu`, in its ways' order, valid ways only: each
    /// flow's key and the backend the cache would send it to.
    #[must_use]
    pub fn cached_flows(&self, set: u32, cpu: usize) -> Vec<(FlowKey, SocketAddrV4)> {
        let values = self.maps.flow_cache_set(set).expect("a flow-cache set");
        values[cpu]
            .ways
            .iter()
            .filter(|way| way.key.is_valid())
            .map(|way| {
                let backend = Ipv4Addr::from(way.hop.addr.to_ne_bytes());
                let key = way.key.key();
                let key = FlowKey::from_ipv4(key.src, key.dst, key.ports, key.protocol);
                (key, SocketAddrV4::new(backend, u16::from_be(way.port)))
            })
            .collect()
    }

    /// The backends (IPv4, in memory order) `NEXT_HOPS` keeps a next hop of on `cpu`.
    #[must_use]
    pub fn kept_next_hops(&self, cpu: usize) -> Vec<u32> {
        let hops: PerCpuArray<_, NextHop> = self.per_cpu_array(NEXT_HOPS);
        (0..NEXT_HOP_SLOTS)
            .map(|slot| hops.get(&slot, 0).expect("a next-hop slot")[cpu])
            .filter(|hop| hop.asked_ns != 0)
            .map(|hop| hop.addr)
            .collect()
    }

    fn per_cpu_array<T: aya::Pod>(&self, name: &str) -> PerCpuArray<&MapData, T> {
        let map = self.ebpf.map(name).unwrap_or_else(|| panic!("map {name}"));
        PerCpuArray::try_from(map).unwrap_or_else(|e| panic!("map {name}: {e}"))
    }
}

/// This thread pinned to one CPU until dropped, when its previous affinity comes back.
pub struct Pinned(libc::cpu_set_t);

impl Pinned {
    #[must_use]
    pub fn to_cpu(cpu: usize) -> Self {
        // SAFETY: zeroed cpu_set_t values are valid; the calls only read and write them.
        unsafe {
            let mut before: libc::cpu_set_t = std::mem::zeroed();
            libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut before);
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut one);
            let rc = libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &one);
            assert_eq!(
                rc,
                0,
                "pin to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            );
            Self(before)
        }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: restores a mask read from the kernel.
        unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &self.0) };
    }
}

fn run(
    test_run: impl FnOnce(
        TestRunOptions<'_>,
    ) -> Result<aya::programs::TestRunResult, aya::programs::ProgramError>,
    frame: &[u8],
    repeat: u32,
) -> Run {
    let mut out = vec![0u8; frame.len() + 256];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        repeat,
        ..TestRunOptions::default()
    };
    let result = test_run(opts).unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN failed: {e:?}"));
    out.truncate(result.data_size_out as usize);
    Run {
        verdict: result.return_value,
        data: out,
        duration_ns: result.duration.as_nanos(),
    }
}

//! `cargo xtask setup`: makes a fresh machine of this kind able to build and test Splitter.
//! Every step checks first and does nothing when its work is already done.
//!
//! 1. rust-src for the installed nightly (the eBPF crate builds core with `-Z build-std`), and
//!    rustfmt and clippy, which the test command runs;
//! 2. bpf-linker 0.13 linked against the nightly's own libLLVM (no system LLVM needed);
//! 3. the Debian packages the tests and benchmarks run.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::status;

const BPF_LINKER_VERSION: &str = "0.13.0";
const BPF_LINKER_FEATURE: &str = "llvm-22";

/// Debian packages, by the command (or, for a path, the file) each one provides.
const PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nsenter", "util-linux"),
    ("ping", "iputils-ping"),
    ("ethtool", "ethtool"),
    ("prometheus", "prometheus"),
    // A Prometheus behind TLS with basic auth: its certificates and its password hash.
    ("openssl", "openssl"),
    ("htpasswd", "apache2-utils"),
    ("curl", "curl"),
    // The kernel's own account of the maps' memory, which `status` is checked against.
    ("bpftool", "bpftool"),
    // The benchmarks' load generator and the setups Splitter is compared with.
    ("wrk", "wrk"),
    // gRPC load (h2load) for the benchmark's gRPC rows.
    ("h2load", "nghttp2-client"),
    ("nft", "nftables"),
    ("haproxy", "haproxy"),
    // HAProxy's runtime commands sent by a process, as its operators send them (the rollback
    // timings are of commands, start to exit).
    ("socat", "socat"),
    // The drain tests' pooled keep-alive client (tests/clients/pooled_client.py), run by
    // Debian's python3, the way model-serving clients hold their connections.
    (
        "/usr/lib/python3/dist-packages/requests/__init__.py",
        "python3-requests",
    ),
    // The gRPC tests' servers and clients (tests/clients/grpc_peer.py): gRPC's C-core, as
    // Triton's and TF Serving's Python clients use it.
    (
        "/usr/lib/python3/dist-packages/grpc/__init__.py",
        "python3-grpcio",
    ),
    // The fleet tests' etcd (3.4, with the v3 JSON gateway the daemon speaks): started by each
    // test in a namespace of its own.
    ("etcd", "etcd-server"),
    // The font `splitter-ctl report` lays out its charts with (its `report::FONT`).
    (
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "fonts-dejavu-core",
    ),
];

pub fn run() -> Result<()> {
    rust_src()?;
    bpf_linker()?;
    packages()
}

fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The rustup components each toolchain needs: the nightly builds the eBPF crate (rust-src)
/// and lints it; the stable toolchain formats and lints the rest.
const COMPONENTS: &[(&str, &[&str])] = &[
    ("nightly", &["rust-src", "clippy"]),
    ("stable", &["rustfmt", "clippy"]),
];

fn rust_src() -> Result<()> {
    for (toolchain, components) in COMPONENTS {
        let installed = output(Command::new("rustup").args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            toolchain,
        ]))
        .with_context(|| format!("the {toolchain} toolchain is needed to build and lint"))?;
        for component in *components {
            if installed.lines().any(|l| l.starts_with(component)) {
                continue;
            }
            eprintln!("xtask setup: adding {component} to the {toolchain} toolchain");
            status(Command::new("rustup").args([
                "component",
                "add",
                component,
                "--toolchain",
                toolchain,
            ]))?;
        }
    }
    Ok(())
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

fn bpf_linker_ok() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
        })
}

fn bpf_linker() -> Result<()> {
    if bpf_linker_ok() {
        return Ok(());
    }
    // The nightly ships libLLVM.so.<version> but no libLLVM.so; a prefix with both names lets
    // bpf-linker link against it, and its RUNPATH keeps pointing there.
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let nightly_lib = Path::new(sysroot.trim()).join("lib");
    let soname = fs::read_dir(&nightly_lib)
        .with_context(|| format!("cannot list {}", nightly_lib.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", nightly_lib.display()))?;
    let prefix = cargo_home().join("splitter-llvm");
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("cannot create {}", lib.display()))?;
    for name in ["libLLVM.so", soname.as_str()] {
        let link = lib.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(nightly_lib.join(&soname), &link)
            .with_context(|| format!("cannot link {}", link.display()))?;
    }
    eprintln!("xtask setup: installing bpf-linker {BPF_LINKER_VERSION} against {soname}");
    status(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                BPF_LINKER_FEATURE,
            ])
            .env("LLVM_PREFIX", &prefix),
    )?;
    if !bpf_linker_ok() {
        bail!(
            "bpf-linker was installed but `bpf-linker --version` does not answer {BPF_LINKER_VERSION}; is {} on PATH?",
            cargo_home().join("bin").display()
        );
    }
    Ok(())
}

fn has_command(name: &str) -> bool {
    env::var_os("PATH").is_some_and(|path| {
        env::split_paths(&path)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .any(|dir| dir.join(name).is_file())
    })
}

fn packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(what, _)| {
            if what.starts_with('/') {
                !Path::new(what).exists()
            } else {
                !has_command(what)
            }
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask setup: installing Debian packages {missing:?}");
    status(
        Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    status(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    if missing.contains(&"etcd-server") && has_command("systemctl") {
        // The package starts an etcd of its own on 127.0.0.1:2379 where systemd runs; the
        // tests start theirs, so the host's is stopped (quietly: there may be no systemd).
        let _ = Command::new("systemctl")
            .args(["disable", "--now", "etcd"])
            .output();
    }
    Ok(())
}

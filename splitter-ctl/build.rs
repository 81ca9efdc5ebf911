//! Builds the kernel programs (splitter-ebpf) for the BPF target with aya-build and leaves the
//! object in OUT_DIR, where `dataplane::OBJECT` embeds it. With `AYA_BUILD_SKIP=1` (cargo check,
//! clippy) an empty placeholder stands in, and loading it fails with a clear error.
use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.join("../splitter-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path"))?;
    println!("cargo:rerun-if-changed=../splitter-common/src");
    // aya-build turns every line the inner cargo prints into a `cargo:warning`, which cargo
    // replays on every later build ("Compiling core ...", dozens of lines): keep the inner cargo
    // to its real warnings and errors.
    // SAFETY: the build script is single-threaded here; nothing reads the environment meanwhile.
    unsafe { env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "splitter-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )?;
    let object = PathBuf::from(env::var("OUT_DIR")?).join("splitter");
    if !object.exists() {
        fs::write(&object, [])?;
    }
    Ok(())
}

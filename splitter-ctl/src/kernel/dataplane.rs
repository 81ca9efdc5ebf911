//! Loading, attaching, adopting and detaching the kernel programs.
//!
//! Everything lives under one pin directory: a pin per map (named as in
//! `splitter_common::maps`) and a pin per link. Pinned links keep the programs attached when
//! user space exits, crashes or is upgraded. Loading with an existing pin directory reuses the
//! pinned maps (their contents survive) and replaces the programs atomically through the pinned
//! links (`bpf_link_update`), so a restart or an upgrade never detaches anything.

use std::{
    ffi::CString,
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{MapData, ProgramArray},
    programs::{
        LinkOrder, ProgramError, ProgramFd, SchedClassifier, TcAttachType, Xdp,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::{XdpLink, XdpMode as AyaXdpMode},
    },
};
use splitter_common::maps as names;

use crate::{
    kernel::layout::{LayoutError, check_layout},
    model::{config::XdpMode, error::chain, paths},
};

/// The kernel programs, built by build.rs and embedded in the binary.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/splitter"));

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(
        "this binary was built without its kernel programs (AYA_BUILD_SKIP=1); build it again without that variable"
    )]
    NotBuilt,
    #[error(
        "`{}` is not a Splitter pin directory ({why}): nothing removed",
        path.display()
    )]
    NotAPinDir { path: PathBuf, why: &'static str },
    #[error("cannot create pin directory `{path}`")]
    PinDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`{path}` is not on a bpffs and mounting one there failed")]
    Bpffs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "pinned map `{path}` does not match this build's map `{map}`: {problem}; run `splitter-ctl detach` first"
    )]
    ForeignPin {
        path: PathBuf,
        map: &'static str,
        problem: Box<LayoutError>,
    },
    #[error("cannot count the possible CPUs")]
    Cpus(#[source] io::Error),
    #[error("cannot load the kernel programs")]
    Load(#[source] Box<EbpfError>),
    #[error("the object has no program `{0}`")]
    MissingProgram(&'static str),
    #[error("the kernel refused program `{name}`")]
    Program {
        name: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("interface `{0}` does not exist in this network namespace")]
    NoInterface(String),
    #[error("cannot attach {what} to `{interface}`{hint}")]
    Attach {
        what: &'static str,
        interface: String,
        hint: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error(
        "cannot adopt pinned link `{path}` (if its interface was deleted or renamed, run `splitter-ctl detach` and start again)"
    )]
    Adopt {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot pin link at `{path}`")]
    PinLink {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot put program `{name}` where the ingress calls it")]
    TailCall {
        name: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot remove pin `{path}`")]
    Unpin {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// How the programs ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// The XDP program replaced the one behind an existing pinned link.
    pub adopted: bool,
    /// `"native"` or `"generic"`; `None` when adopted (the link keeps its mode).
    pub xdp_mode: Option<&'static str>,
}

/// Loads the object. With a pin directory, maps are reused from their pins or created and
/// pinned there; without one (tests, benchmarks) they are private to the returned object.
/// The flow table holds `flows_per_cpu` for each possible CPU (a pinned table keeps its size).
pub fn load(pin_dir: Option<&Path>, flows_per_cpu: u32) -> Result<Ebpf, DataplaneError> {
    if OBJECT.is_empty() {
        return Err(DataplaneError::NotBuilt);
    }
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Cpus(e))?;
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(
        names::FLOWS,
        flows_per_cpu.saturating_mul(u32::try_from(cpus).unwrap_or(u32::MAX)),
    );
    if let Some(dir) = pin_dir {
        ensure_bpffs(dir)?;
        fs::create_dir_all(dir).map_err(|source| DataplaneError::PinDir {
            path: dir.to_owned(),
            source,
        })?;
        set_mode(dir, 0o700).map_err(|source| DataplaneError::PinDir {
            path: dir.to_owned(),
            source,
        })?;
        // Every pin is checked before any is replaced: a refusal leaves the directory as it was.
        let mut replaced = Vec::new();
        for name in names::ALL {
            let path = paths::pin(dir, name);
            if let Some(problem) = check_pin(&path, name)? {
                replaced.push((name, path.clone(), problem));
            }
            loader.map_pin_path(name, path);
        }
        for (map, path, problem) in replaced {
            tracing::warn!(
                map,
                %problem,
                "this build lays out a map of measurements or copies differently: its pin is replaced with a new, empty one"
            );
            fs::remove_file(&path).map_err(|source| DataplaneError::Unpin { path, source })?;
        }
    }
    loader
        .load(OBJECT)
        .map_err(|e| DataplaneError::Load(Box::new(e)))
}

/// Refuses a pinned map whose layout is not this build's, before aya silently reuses it; for a
/// map of measurements only (an upgrade that refines the histograms) says what differs instead:
/// the caller unpins it, so the load creates it anew (the running programs keep the old one
/// until they are replaced).
fn check_pin(path: &Path, map: &'static str) -> Result<Option<LayoutError>, DataplaneError> {
    if !path.exists() {
        return Ok(None);
    }
    let foreign = |problem: LayoutError| DataplaneError::ForeignPin {
        path: path.to_owned(),
        map,
        problem: Box::new(problem),
    };
    let data = MapData::from_pin(path).map_err(|e| foreign(LayoutError::Open(e)))?;
    match check_layout(&data, map) {
        Ok(()) => Ok(None),
        Err(problem) if names::REPLACEABLE.contains(&map) => Ok(Some(problem)),
        Err(problem) => Err(foreign(problem)),
    }
}

/// Loads the programs of `ebpf` and attaches them to `interface`, or adopts the links pinned in
/// `pin_dir` by replacing their programs atomically.
pub fn attach(
    ebpf: &mut Ebpf,
    interface: &str,
    pin_dir: &Path,
    mode: XdpMode,
) -> Result<Attachment, DataplaneError> {
    let c_name =
        CString::new(interface).map_err(|_| DataplaneError::NoInterface(interface.to_owned()))?;
    // SAFETY: a C string that lives across the call.
    if unsafe { libc::if_nametoindex(c_name.as_ptr()) } == 0 {
        return Err(DataplaneError::NoInterface(interface.to_owned()));
    }
    // Both programs pass the verifier before either replaces what runs now, so an upgrade
    // never leaves a new ingress beside an old egress.
    let ingress: &mut Xdp = program(ebpf, names::PROGRAM_INGRESS)?;
    load_program(names::PROGRAM_INGRESS, || ingress.load())?;
    let egress: &mut SchedClassifier = program(ebpf, names::PROGRAM_EGRESS)?;
    load_program(names::PROGRAM_EGRESS, || egress.load())?;
    load_tail_calls(ebpf)?;
    // The reply fast path too; its pinned links move to the new program at once.
    let adopted = super::reply_links::load_and_adopt(ebpf, pin_dir)?;
    if adopted > 0 {
        tracing::info!(
            links = adopted,
            "the reply fast path's links run the new program"
        );
    }
    let ingress: &mut Xdp = program(ebpf, names::PROGRAM_INGRESS)?;
    let xdp_pin = paths::pin(pin_dir, paths::XDP_LINK_PIN);
    let attachment = if xdp_pin.exists() {
        let link = adopt_link(&xdp_pin, XdpLink::try_from)?;
        ingress
            .attach_to_link(link)
            .map_err(|source| DataplaneError::Adopt {
                path: xdp_pin.clone(),
                source: Box::new(source),
            })?;
        Attachment {
            adopted: true,
            xdp_mode: None,
        }
    } else {
        let (id, used) = attach_xdp(ingress, interface, mode)?;
        let link = ingress
            .take_link(id)
            .map_err(|source| DataplaneError::PinLink {
                path: xdp_pin.clone(),
                source: Box::new(source),
            })?;
        pin_link(FdLink::try_from(link), &xdp_pin)?;
        Attachment {
            adopted: false,
            xdp_mode: Some(used),
        }
    };

    let egress: &mut SchedClassifier = program(ebpf, names::PROGRAM_EGRESS)?;
    let tc_pin = paths::pin(pin_dir, paths::TC_LINK_PIN);
    if tc_pin.exists() {
        let link = adopt_link(&tc_pin, SchedClassifierLink::try_from)?;
        egress
            .attach_to_link(link)
            .map_err(|source| DataplaneError::Adopt {
                path: tc_pin.clone(),
                source: Box::new(source),
            })?;
    } else {
        let id = egress
            .attach_with_options(
                interface,
                TcAttachType::Egress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(|source| DataplaneError::Attach {
                what: "the TC egress program",
                interface: interface.to_owned(),
                hint: "",
                source: Box::new(source),
            })?;
        let link = egress
            .take_link(id)
            .map_err(|source| DataplaneError::PinLink {
                path: tc_pin.clone(),
                source: Box::new(source),
            })?;
        pin_link(FdLink::try_from(link), &tc_pin)?;
    }
    Ok(attachment)
}

/// Loads the programs the steering programs tail-call and puts them in their program arrays
/// (pinned, so they stay there while no daemon runs; a new daemon puts its own there before
/// its steering programs run): `split_h2` for the XDP ingress, `split_h2_reply` for the TC
/// egress and reply programs.
pub fn load_tail_calls(ebpf: &mut Ebpf) -> Result<(), DataplaneError> {
    let h2: &mut Xdp = program(ebpf, names::PROGRAM_H2)?;
    load_program(names::PROGRAM_H2, || h2.load())?;
    let fd = cloned_fd(names::PROGRAM_H2, h2.fd())?;
    put_tail_call(ebpf, names::PROGRAM_H2, &fd, names::L7_PROGRAMS)?;
    let reply: &mut SchedClassifier = program(ebpf, names::PROGRAM_H2_REPLY)?;
    load_program(names::PROGRAM_H2_REPLY, || reply.load())?;
    let fd = cloned_fd(names::PROGRAM_H2_REPLY, reply.fd())?;
    put_tail_call(ebpf, names::PROGRAM_H2_REPLY, &fd, names::TC_L7_PROGRAMS)
}

/// How many times a program's load is tried while the kernel answers `EAGAIN`, as libbpf does:
/// the verifier stops when a signal is pending for the loading thread, and a program as large
/// as the ingress takes it long enough for one to come.
const LOAD_ATTEMPTS: u32 = 5;

/// Loads program `name` with `load`, again while the verifier was interrupted (`EAGAIN`).
pub fn load_program(
    name: &'static str,
    mut load: impl FnMut() -> Result<(), ProgramError>,
) -> Result<(), DataplaneError> {
    let mut attempt = 1;
    loop {
        match load() {
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt < LOAD_ATTEMPTS =>
            {
                tracing::debug!(
                    program = name,
                    attempt,
                    "the verifier was interrupted; loading again"
                );
                attempt += 1;
            }
            outcome => return outcome.map_err(load_error(name)),
        }
    }
}

/// A program's load (or typing) failure, named.
fn load_error(name: &'static str) -> impl FnOnce(ProgramError) -> DataplaneError {
    move |source| DataplaneError::Program {
        name,
        source: Box::new(source),
    }
}

fn tail_call_error(
    name: &'static str,
) -> impl Fn(Box<dyn std::error::Error + Send + Sync>) -> DataplaneError {
    move |source| DataplaneError::TailCall { name, source }
}

/// The loaded program `name`'s fd, owned (the program keeps its own).
fn cloned_fd(
    name: &'static str,
    fd: Result<&ProgramFd, ProgramError>,
) -> Result<ProgramFd, DataplaneError> {
    let error = tail_call_error(name);
    fd.map_err(|e| error(Box::new(e)))?
        .try_clone()
        .map_err(|e| error(Box::new(e)))
}

/// Puts the program `name` (`fd`) at `L7_PROGRAM_H2` of the program array `array`.
fn put_tail_call(
    ebpf: &mut Ebpf,
    name: &'static str,
    fd: &ProgramFd,
    array: &'static str,
) -> Result<(), DataplaneError> {
    let error = tail_call_error(name);
    let map = ebpf
        .map_mut(array)
        .ok_or_else(|| error(format!("the object has no map {array}").into()))?;
    let mut programs = ProgramArray::try_from(map).map_err(|e| error(Box::new(e)))?;
    programs
        .set(names::L7_PROGRAM_H2, fd, 0)
        .map_err(|e| error(Box::new(e)))
}

pub(super) fn program<'a, T>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut T, DataplaneError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .ok_or(DataplaneError::MissingProgram(name))?;
    program.try_into().map_err(load_error(name))
}

/// Whether `auto` attaches XDP to `interface` in generic mode: on veth, where native mode moves
/// every packet through a ring and a NAPI poll and copies each one whose head is shared
/// (docs/benchmarks.md measures both).
#[must_use]
pub fn prefers_generic(interface: &str) -> bool {
    crate::kernel::netdev::driver(interface).as_deref() == Some("veth")
}

/// Whether XDP runs in generic mode on `interface` with `mode`, as `attach` chose it (an `auto`
/// whose native attach failed fell back to generic; taken here as native, which lists fewer
/// devices for the fast path, never more).
#[must_use]
pub fn runs_generic(mode: XdpMode, interface: &str) -> bool {
    match mode {
        XdpMode::Generic => true,
        XdpMode::Native => false,
        XdpMode::Auto => prefers_generic(interface),
    }
}

fn attach_xdp(
    program: &mut Xdp,
    interface: &str,
    mode: XdpMode,
) -> Result<(aya::programs::xdp::XdpLinkId, &'static str), DataplaneError> {
    const HINT: &str = " (another XDP program may be attached: `ip link show` tells)";
    let attach = |program: &mut Xdp, aya_mode| {
        program
            .attach(interface, aya_mode)
            .map_err(|source| DataplaneError::Attach {
                what: "the XDP program",
                interface: interface.to_owned(),
                hint: HINT,
                source: Box::new(source),
            })
    };
    match mode {
        XdpMode::Native => attach(program, AyaXdpMode::Driver).map(|id| (id, "native")),
        XdpMode::Generic => attach(program, AyaXdpMode::Skb).map(|id| (id, "generic")),
        XdpMode::Auto if prefers_generic(interface) => {
            tracing::info!(
                interface,
                "veth: attaching XDP in generic mode, which is faster than native on veth"
            );
            attach(program, AyaXdpMode::Skb).map(|id| (id, "generic"))
        }
        XdpMode::Auto => match attach(program, AyaXdpMode::Driver) {
            Ok(id) => Ok((id, "native")),
            Err(native) => {
                tracing::warn!(interface, error = %chain(&native), "native XDP failed; falling back to generic (skb) mode, which is slower");
                attach(program, AyaXdpMode::Skb).map(|id| (id, "generic"))
            }
        },
    }
}

pub(super) fn adopt_link<L, E>(
    path: &Path,
    convert: impl FnOnce(FdLink) -> Result<L, E>,
) -> Result<L, DataplaneError>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let pinned = PinnedLink::from_pin(path).map_err(|source| DataplaneError::Adopt {
        path: path.to_owned(),
        source: Box::new(source),
    })?;
    convert(FdLink::from(pinned)).map_err(|source| DataplaneError::Adopt {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

pub(super) fn pin_link<E>(link: Result<FdLink, E>, path: &Path) -> Result<(), DataplaneError>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let link = link.map_err(|source| DataplaneError::PinLink {
        path: path.to_owned(),
        source: Box::new(source),
    })?;
    link.pin(path).map_err(|source| DataplaneError::PinLink {
        path: path.to_owned(),
        source: Box::new(source),
    })?;
    set_mode(path, 0o600).map_err(|source| DataplaneError::PinLink {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

/// Removes the links (which detaches the programs) and then the maps and the directory.
/// Returns the pins it removed; an absent directory is not an error.
pub fn detach(pin_dir: &Path) -> Result<Vec<PathBuf>, DataplaneError> {
    let mut removed = Vec::new();
    if !pin_dir.exists() {
        return Ok(removed);
    }
    let pins = || {
        [paths::XDP_LINK_PIN, paths::TC_LINK_PIN]
            .into_iter()
            .chain(names::ALL)
    };
    // Never a directory that is not ours (`detach --pin-dir /etc`): it must be on a bpffs, and
    // hold one of Splitter's link pins, or most of its map pins (a data plane left half made),
    // or nothing at all. A pin that only shares a common name is not enough.
    let refuse = |why| DataplaneError::NotAPinDir {
        path: pin_dir.to_owned(),
        why,
    };
    if !fs_magic(pin_dir).is_ok_and(|magic| magic == BPF_FS_MAGIC) {
        return Err(refuse("it is not on a bpffs"));
    }
    let empty = fs::read_dir(pin_dir)
        .map_err(|source| DataplaneError::Unpin {
            path: pin_dir.to_owned(),
            source,
        })?
        .next()
        .is_none();
    let present = |name: &str| paths::pin(pin_dir, name).exists();
    let links = [paths::XDP_LINK_PIN, paths::TC_LINK_PIN]
        .into_iter()
        .any(present);
    let maps = names::ALL.into_iter().filter(|name| present(name)).count();
    if !empty && !links && maps * 2 < names::ALL.len() {
        return Err(refuse("it does not hold Splitter's pins"));
    }
    removed.extend(super::reply_links::detach(pin_dir)?);
    for name in pins() {
        let path = paths::pin(pin_dir, name);
        match fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(DataplaneError::Unpin { path, source }),
        }
    }
    match fs::remove_dir(pin_dir) {
        Ok(()) => Ok(removed),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(removed),
        Err(source) => Err(DataplaneError::Unpin {
            path: pin_dir.to_owned(),
            source,
        }),
    }
}

/// Whether the programs are attached through pins in `pin_dir`.
#[must_use]
pub fn is_attached(pin_dir: &Path) -> bool {
    paths::pin(pin_dir, paths::XDP_LINK_PIN).exists()
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Mounts bpffs at `/sys/fs/bpf` when the pin directory is not on one.
fn ensure_bpffs(pin_dir: &Path) -> Result<(), DataplaneError> {
    let root = Path::new(paths::BPFFS_ROOT);
    let probe = if pin_dir.exists() { pin_dir } else { root };
    if fs_magic(probe).is_ok_and(|magic| magic == BPF_FS_MAGIC) {
        return Ok(());
    }
    let err = |source| DataplaneError::Bpffs {
        path: root.to_owned(),
        source,
    };
    fs::create_dir_all(root).map_err(err)?;
    let target = CString::new(paths::BPFFS_ROOT).map_err(|e| err(io::Error::other(e)))?;
    let fstype = c"bpf";
    // SAFETY: valid C strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    tracing::info!(path = paths::BPFFS_ROOT, "mounted bpffs");
    Ok(())
}

/// Whose bpffs this process pins into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BpffsScope {
    /// The host's (the one the host's init sees): pins outlive the process, and every command
    /// on the host sees them.
    Host,
    /// This process's own: it runs in a mount namespace of its own (`ip netns exec` gives one)
    /// where the bpffs is not the host's, or would be mounted by the daemon itself. Pins there
    /// go away with the namespace, and no other command can reach them.
    Private,
}

/// Whose bpffs `BPFFS_ROOT` is, as this process sees it: the host's when this process shares
/// the mount namespace of the host's init, or sees the same bpffs as it does. Where init's
/// `/proc` entry is closed to us (some sandboxes), the process that started us stands in for
/// it: `ip netns exec` and `unshare -m` give their child a mount namespace its parent does not
/// have. When neither can be read, nothing says the bpffs is private: `Host`.
pub fn bpffs_scope() -> io::Result<BpffsScope> {
    let own = fs::read_link("/proc/self/ns/mnt")?;
    let parent = std::os::unix::process::parent_id().to_string();
    let Some((reference, theirs)) = ["1", parent.as_str()].into_iter().find_map(|pid| {
        fs::read_link(format!("/proc/{pid}/ns/mnt"))
            .ok()
            .map(|ns| (pid, ns))
    }) else {
        return Ok(BpffsScope::Host);
    };
    if own == theirs {
        return Ok(BpffsScope::Host);
    }
    let root = Path::new(paths::BPFFS_ROOT);
    let their_root =
        Path::new(&format!("/proc/{reference}/root")).join(root.strip_prefix("/").unwrap_or(root));
    let is_bpffs = |path: &Path| fs_magic(path).is_ok_and(|magic| magic == BPF_FS_MAGIC);
    if !is_bpffs(root) || !is_bpffs(&their_root) {
        // The daemon would mount a bpffs of its own here, or the host has none to share.
        return Ok(BpffsScope::Private);
    }
    use std::os::unix::fs::MetadataExt as _;
    let same = fs::metadata(root)?.dev() == fs::metadata(&their_root)?.dev();
    Ok(if same {
        BpffsScope::Host
    } else {
        BpffsScope::Private
    })
}

fn fs_magic(path: &Path) -> io::Result<i64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: statfs fills the zeroed struct; the path is a valid C string.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &raw mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.f_type as i64)
}

fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(errno: i32) -> ProgramError {
        ProgramError::LoadError {
            io_error: std::io::Error::from_raw_os_error(errno),
            verifier_log: aya_obj::VerifierLog::new(String::new()),
        }
    }

    /// How many tries `load_program` makes when the kernel answers `errno` to the first
    /// `refusals` tries and loads the program after them, and whether it loaded.
    fn tries(errno: i32, refusals: u32) -> (u32, bool) {
        let mut tries = 0;
        let loaded = load_program("p", || {
            tries += 1;
            if tries <= refusals {
                Err(refused(errno))
            } else {
                Ok(())
            }
        });
        (tries, loaded.is_ok())
    }

    #[test]
    fn a_load_the_verifier_gave_up_on_for_a_signal_is_tried_again_a_few_times() {
        assert_eq!(tries(libc::EAGAIN, 2), (3, true));
        assert_eq!(
            tries(libc::EAGAIN, LOAD_ATTEMPTS - 1),
            (LOAD_ATTEMPTS, true)
        );
        assert_eq!(tries(libc::EAGAIN, LOAD_ATTEMPTS), (LOAD_ATTEMPTS, false));
        // Any other refusal is the verifier's answer: not tried again.
        assert_eq!(tries(libc::EACCES, 1), (1, false));
    }
}

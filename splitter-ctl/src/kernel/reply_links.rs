//! The reply fast path's attachments (`split_reply` in splitter-ebpf): one TC ingress link per
//! device the fast path sends steered packets to, where their replies come back. The XDP
//! ingress records those devices in `FORWARD_SEEN` when it asks the FIB; the daemon attaches the
//! program there at every housekeeping, so a backend's device gets it within seconds of its
//! first steered packet. The program is pinned, so links can be made without the object; each
//! link is pinned under `links_reply/` (`paths::REPLY_LINKS_DIR`) by ifindex, kept while its device lives, adopted by the
//! next daemon (its program replaced in place) like the other links, and removed by `detach`.

use std::{
    collections::BTreeSet,
    ffi::CStr,
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{Array, MapData},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        links::FdLink,
        tc::{SchedClassifierLink, TcAttachOptions},
    },
};
use splitter_common::maps as names;

use super::{
    dataplane::{DataplaneError, adopt_link, pin_link, program},
    maps::{MapsError, access, open_pin, typed},
};
use crate::model::paths;

/// The directory of the link pins, inside the pin directory.
pub fn links_dir(pin_dir: &Path) -> PathBuf {
    paths::pin(pin_dir, paths::REPLY_LINKS_DIR)
}

fn program_pin(pin_dir: &Path) -> PathBuf {
    paths::pin(pin_dir, paths::REPLY_PROGRAM_PIN)
}

/// Loads the reply program of `ebpf` (the verifier runs here, before anything is replaced),
/// pins it in place of a previous build's, and moves the pinned links to it. Returns how many
/// links it adopted.
pub fn load_and_adopt(ebpf: &mut Ebpf, pin_dir: &Path) -> Result<usize, DataplaneError> {
    let reply: &mut SchedClassifier = program(ebpf, names::PROGRAM_REPLY)?;
    super::dataplane::load_program(names::PROGRAM_REPLY, || reply.load())?;
    let pin = program_pin(pin_dir);
    match fs::remove_file(&pin) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(DataplaneError::Unpin { path: pin, source }),
    }
    reply.pin(&pin).map_err(|source| DataplaneError::PinLink {
        path: pin.clone(),
        source: Box::new(source),
    })?;
    let mut adopted = 0;
    for (_, path) in pinned_links(pin_dir)? {
        let link = adopt_link(&path, SchedClassifierLink::try_from)?;
        reply
            .attach_to_link(link)
            .map_err(|source| DataplaneError::Adopt {
                path: path.clone(),
                source: Box::new(source),
            })?;
        adopted += 1;
    }
    Ok(adopted)
}

/// The pinned links, by ifindex.
fn pinned_links(pin_dir: &Path) -> Result<Vec<(u32, PathBuf)>, DataplaneError> {
    let dir = links_dir(pin_dir);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(DataplaneError::Unpin { path: dir, source }),
    };
    Ok(entries
        .flatten()
        .filter_map(|entry| {
            let index = entry.file_name().to_str()?.parse().ok()?;
            Some((index, entry.path()))
        })
        .collect())
}

/// The devices `FORWARD_SEEN` names.
fn seen(pin_dir: &Path) -> Result<BTreeSet<u32>, MapsError> {
    let map: Array<MapData, u32> =
        typed(names::FORWARD_SEEN, open_pin(pin_dir, names::FORWARD_SEEN)?)?;
    map.iter()
        .map(|entry| entry.map_err(access(names::FORWARD_SEEN, "read the devices")))
        .filter(|entry| !matches!(entry, Ok(0)))
        .collect()
}

/// The name of device `index` in this namespace, if it exists.
fn device_name(index: u32) -> Option<String> {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: a buffer of IF_NAMESIZE bytes, as the call requires.
    let found = unsafe { libc::if_indextoname(index, name.as_mut_ptr()) };
    if found.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into the buffer.
    Some(
        unsafe { CStr::from_ptr(name.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// What a sync changed.
#[derive(Debug, Default)]
pub struct Synced {
    pub attached: Vec<String>,
    pub removed: usize,
    /// Devices the program could not be attached to (a device that takes no TC program, say),
    /// by ifindex, with why: their replies take the stack. Tried again at the next sync.
    pub refused: Vec<(u32, String, DataplaneError)>,
}

/// Attaches the pinned reply program to each device the fast path has sent to that has no link
/// yet, and removes the links of devices that are gone.
pub fn sync(pin_dir: &Path) -> Result<Synced, SyncError> {
    let mut synced = Synced::default();
    let pinned = pinned_links(pin_dir)?;
    let mut linked = BTreeSet::new();
    for (index, path) in pinned {
        if device_name(index).is_some() {
            linked.insert(index);
        } else {
            // The device went, and its link with it: only the pin is left.
            fs::remove_file(&path).map_err(|source| DataplaneError::Unpin { path, source })?;
            synced.removed += 1;
        }
    }
    let wanted: Vec<(u32, String)> = seen(pin_dir)?
        .difference(&linked)
        .filter_map(|index| device_name(*index).map(|name| (*index, name)))
        .collect();
    if wanted.is_empty() {
        return Ok(synced);
    }
    let dir = links_dir(pin_dir);
    fs::create_dir_all(&dir).map_err(|source| DataplaneError::PinDir {
        path: dir.clone(),
        source,
    })?;
    let mut reply = SchedClassifier::from_pin(program_pin(pin_dir)).map_err(|source| {
        DataplaneError::Program {
            name: names::PROGRAM_REPLY,
            source: Box::new(source),
        }
    })?;
    for (index, name) in wanted {
        match attach(&mut reply, &name, &dir.join(index.to_string())) {
            Ok(()) => synced.attached.push(name),
            Err(error) => synced.refused.push((index, name, error)),
        }
    }
    Ok(synced)
}

/// Attaches `reply` to the TC ingress of device `name` and pins the link at `path`.
fn attach(reply: &mut SchedClassifier, name: &str, path: &Path) -> Result<(), DataplaneError> {
    let id = reply
        .attach_with_options(
            name,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(|source| DataplaneError::Attach {
            what: "the reply fast path",
            interface: name.to_owned(),
            hint: "",
            source: Box::new(source),
        })?;
    let link = reply
        .take_link(id)
        .map_err(|source| DataplaneError::PinLink {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
    pin_link(FdLink::try_from(link), path)
}

/// Removes every reply link, which detaches the program from its device (the fast path
/// turned off). Returns the pins removed.
pub fn unlink_all(pin_dir: &Path) -> Result<Vec<PathBuf>, DataplaneError> {
    let mut removed = Vec::new();
    for (_, path) in pinned_links(pin_dir)? {
        fs::remove_file(&path).map_err(|source| DataplaneError::Unpin {
            path: path.clone(),
            source,
        })?;
        removed.push(path);
    }
    Ok(removed)
}

/// Removes every reply link and the program's pin. Returns the pins removed.
pub fn detach(pin_dir: &Path) -> Result<Vec<PathBuf>, DataplaneError> {
    let mut removed = unlink_all(pin_dir)?;
    let dir = links_dir(pin_dir);
    match fs::remove_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(DataplaneError::Unpin { path: dir, source }),
    }
    let pin = program_pin(pin_dir);
    match fs::remove_file(&pin) {
        Ok(()) => removed.push(pin),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(DataplaneError::Unpin { path: pin, source }),
    }
    Ok(removed)
}

/// Why a sync failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Maps(#[from] MapsError),
}

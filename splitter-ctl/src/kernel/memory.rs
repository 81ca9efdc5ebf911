//! What the pinned maps hold in kernel memory, as the kernel accounts it: the `memlock` of each
//! map's file descriptor (`/proc/self/fdinfo`), the number `bpftool map show` prints. Sizes in
//! docs/benchmarks.md come from here, not from arithmetic on key and value sizes: the kernel
//! adds per-entry and per-CPU overhead (a flow entry costs about 152 bytes, not the 100 its key
//! and value take).

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
};

use aya::maps::MapData;
use serde::{Deserialize, Serialize};
use splitter_common::maps as names;

use super::maps::MapsError;
use crate::model::paths;

/// One pinned map's kernel memory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapMemory {
    pub map: String,
    /// Bytes the kernel charges for the map (`memlock`).
    pub bytes: u64,
    pub max_entries: u64,
}

/// The kernel memory of every map pinned in `pin_dir`, in the order of `maps::ALL`.
pub fn of_pins(pin_dir: &Path) -> Result<Vec<MapMemory>, MapsError> {
    names::ALL
        .iter()
        .map(|name| {
            let path = paths::pin(pin_dir, name);
            let data = MapData::from_pin(&path).map_err(|source| MapsError::Open {
                path: path.clone(),
                source,
            })?;
            let info = std::fs::read_to_string(format!(
                "/proc/self/fdinfo/{}",
                data.fd().as_fd().as_raw_fd()
            ))
            .unwrap_or_default();
            Ok(MapMemory {
                map: (*name).to_owned(),
                bytes: field(&info, "memlock").unwrap_or(0),
                max_entries: field(&info, "max_entries").unwrap_or(0),
            })
        })
        .collect()
}

/// The number after `name:` in an fdinfo text.
fn field(info: &str, name: &str) -> Option<u64> {
    info.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|value| value.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::field;

    #[test]
    fn fdinfo_fields_are_read_by_name() {
        let info =
            "pos:\t0\nflags:\t02000002\nmap_type:\t1\nmax_entries:\t32768\nmemlock:\t4980736\n";
        assert_eq!(field(info, "memlock"), Some(4_980_736));
        assert_eq!(field(info, "max_entries"), Some(32_768));
        assert_eq!(field(info, "map_id"), None);
    }
}

//! The devices the fast path may redirect steered packets to (`FORWARD_DEVICES`; see
//! `forward.rs` in splitter-ebpf). The programs redirect a packet only to a device listed here
//! and leave any other to the stack, so the list says where an `XDP_REDIRECT` is delivered:
//! - in generic (skb) XDP, the redirect hands the skb to the device's transmit: every device of
//!   the namespace takes it, loopback aside;
//! - natively, the device receives an XDP frame, which a veth takes only when its peer runs
//!   NAPI (an XDP program or GRO on the peer, in a namespace the node cannot see): veth devices
//!   are left out, and their packets take the stack.
//!
//! The daemon brings the list up to date at start and at every housekeeping, so a container's
//! new interface joins within seconds; the kernel drops a device that goes away by itself.

use std::{collections::BTreeSet, ffi::CStr, path::Path};

use aya::maps::{DevMapHash, MapData, PerCpuArray};
use splitter_common::{NextHop, maps as names};

use super::{
    maps::{Maps, MapsError, access, open_pin, typed, zeroed},
    netdev,
};

/// A network interface of the caller's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    pub index: u32,
    pub name: String,
    /// As `ethtool -i` reports it; `None` when the device does not say.
    pub driver: Option<String>,
}

/// The interfaces of the caller's network namespace, with their drivers.
#[must_use]
pub fn devices() -> Vec<Device> {
    let mut found = Vec::new();
    // SAFETY: if_nameindex returns an array ended by a zero entry, freed below.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return found;
        }
        let mut at = list;
        while (*at).if_index != 0 && !(*at).if_name.is_null() {
            let name = CStr::from_ptr((*at).if_name).to_string_lossy().into_owned();
            found.push(Device {
                index: (*at).if_index,
                driver: netdev::driver(&name),
                name,
            });
            at = at.add(1);
        }
        libc::if_freenameindex(list);
    }
    found
}

/// The devices a redirect reaches, of `devices`, for XDP in generic mode or natively.
#[must_use]
pub fn reachable(devices: &[Device], generic: bool) -> BTreeSet<u32> {
    devices
        .iter()
        .filter(|d| d.name != "lo")
        .filter(|d| generic || d.driver.as_deref() != Some("veth"))
        .map(|d| d.index)
        .collect()
}

/// What a sync changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Synced {
    pub added: usize,
    pub removed: usize,
}

/// `FORWARD_DEVICES`.
pub struct ForwardDevices(DevMapHash<MapData>);

impl ForwardDevices {
    pub fn open_pinned(pin_dir: &Path) -> Result<Self, MapsError> {
        let map = open_pin(pin_dir, names::FORWARD_DEVICES)?;
        Ok(Self(typed(names::FORWARD_DEVICES, map)?))
    }

    /// The devices listed now.
    pub fn listed(&self) -> Result<BTreeSet<u32>, MapsError> {
        self.0
            .keys()
            .collect::<Result<_, _>>()
            .map_err(access(names::FORWARD_DEVICES, "list the devices"))
    }

    /// Lists exactly `wanted`, `listed` being what it lists now.
    fn sync(
        &mut self,
        listed: &BTreeSet<u32>,
        wanted: &BTreeSet<u32>,
    ) -> Result<Synced, MapsError> {
        let mut synced = Synced::default();
        for index in wanted.difference(listed) {
            self.0
                .insert(*index, *index, None, 0)
                .map_err(|source| MapsError::ForwardDevice {
                    ifindex: *index,
                    source,
                })?;
            synced.added += 1;
        }
        for index in listed.difference(wanted) {
            match self.0.remove(*index) {
                Ok(()) => synced.removed += 1,
                // Gone with its device meanwhile.
                Err(e) if super::maps::is_missing_key(&e) => {}
                Err(e) => return Err(access(names::FORWARD_DEVICES, "unlist a device")(e)),
            }
        }
        Ok(synced)
    }
}

/// Brings `FORWARD_DEVICES` in `pin_dir` up to date with this namespace's devices, or empties
/// it when the fast path is off (every steered packet then takes the stack, counted as
/// `forward_no_device`).
pub fn sync(pin_dir: &Path, on: bool, generic: bool) -> Result<Synced, MapsError> {
    let wanted = if on {
        reachable(&devices(), generic)
    } else {
        BTreeSet::new()
    };
    let mut devices = ForwardDevices::open_pinned(pin_dir)?;
    let listed = devices.listed()?;
    if listed == wanted {
        return Ok(Synced::default());
    }
    // The kept next hops name devices as they were: a hop kept for a device about to leave the
    // list would be redirected nowhere (and dropped) until it expires, and one kept as "take
    // the stack" would keep a new device unused. They go before and after the change (a packet
    // between the two asks the FIB again).
    // The flow cache's ways keep copies of next hops (the express lane's): they go too.
    let mut hops = [
        NextHops::open_pinned(pin_dir, names::NEXT_HOPS)?,
        NextHops::open_pinned(pin_dir, names::REPLY_HOPS)?,
    ];
    let mut maps = Maps::open_pinned(pin_dir)?;
    let clear = |hops: &mut [NextHops], maps: &mut Maps| {
        hops.iter_mut().try_for_each(NextHops::clear)?;
        maps.clear_flow_ways()
    };
    clear(&mut hops, &mut maps)?;
    let synced = devices.sync(&listed, &wanted)?;
    clear(&mut hops, &mut maps)?;
    Ok(synced)
}

/// `NEXT_HOPS` or `REPLY_HOPS`: the fast path's next hops (the backends', the clients'), kept
/// per CPU.
struct NextHops {
    name: &'static str,
    map: PerCpuArray<MapData, NextHop>,
}

impl NextHops {
    fn open_pinned(pin_dir: &Path, name: &'static str) -> Result<Self, MapsError> {
        let map = open_pin(pin_dir, name)?;
        Ok(Self {
            name,
            map: typed(name, map)?,
        })
    }

    fn clear(&mut self) -> Result<(), MapsError> {
        for slot in 0..names::NEXT_HOP_SLOTS {
            let empty = zeroed::<NextHop>(self.name)?;
            self.map
                .set(slot, empty, 0)
                .map_err(access(self.name, "clear a slot"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(index: u32, name: &str, driver: &str) -> Device {
        Device {
            index,
            name: name.to_owned(),
            driver: Some(driver.to_owned()),
        }
    }

    #[test]
    fn generic_xdp_reaches_every_device_but_loopback_and_native_xdp_no_veth() {
        let devices = [
            device(1, "lo", "loopback"),
            device(2, "eth0", "virtio_net"),
            device(7, "veth1a2b", "veth"),
            Device {
                index: 9,
                name: "dummy0".to_owned(),
                driver: None,
            },
        ];
        assert_eq!(reachable(&devices, true), BTreeSet::from([2, 7, 9]));
        assert_eq!(reachable(&devices, false), BTreeSet::from([2, 9]));
    }

    #[test]
    fn this_namespace_has_its_loopback() {
        assert!(devices().iter().any(|d| d.name == "lo" && d.index > 0));
    }
}

//! The devices the fast path may redirect steered packets to (`FORWARD_DEVICES`; see
//! `forward.rs` in splitter-ebpf). The programs redirect a packet only to a device listed here
//! and leave any other to the stack, so the list says where an `XDP_REDIRECT` is delivered:
//! - in generic (skb) XDP, the redirect hands the skb to the device's transmit: every device of
//!   the namespace takes it, loopback aside;
//! - natively, the device receives an XDP frame, which a veth takes only when its peer runs
//!   NAPI (an XDP program or GRO on the peer, in a namespace the node cannot see): veth devices
//!   are left out, and their packets take the stack.
//!
//! Of those, a veth (or netkit) whose other end is in another network namespace is listed in
//! `PEER_DEVICES` too: the replies' fast path, at a TC ingress, hands a reply for it straight to
//! that end (`bpf_redirect_peer`). The kernel drops such a redirect when the other end is in the
//! same namespace, so a device is listed only when the kernel says it is elsewhere.
//!
//! The daemon brings the lists up to date at start and at every housekeeping, so a container's
//! new interface joins within seconds; the kernel drops a device that goes away by itself from
//! `FORWARD_DEVICES`, and the next sync from `PEER_DEVICES`.

use std::{collections::BTreeSet, ffi::CStr, path::Path};

use aya::maps::{Array, DevMapHash, MapData, PerCpuArray};
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
    /// A veth or netkit whose other end the kernel says is in another network namespace.
    pub other_end_elsewhere: bool,
}

/// Drivers whose devices come in pairs, where `bpf_redirect_peer` reaches the other end.
const PAIRED_DRIVERS: [&str; 2] = ["veth", "netkit"];

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
            let driver = netdev::driver(&name);
            let paired = driver
                .as_deref()
                .is_some_and(|d| PAIRED_DRIVERS.contains(&d));
            found.push(Device {
                index: (*at).if_index,
                other_end_elsewhere: paired && netdev::links_elsewhere((*at).if_index),
                driver,
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

/// The devices of `reachable` a reply may be handed to at their other end.
#[must_use]
pub fn peers(devices: &[Device], reachable: &BTreeSet<u32>) -> BTreeSet<u32> {
    devices
        .iter()
        .filter(|d| d.other_end_elsewhere && reachable.contains(&d.index))
        .map(|d| d.index)
        .collect()
}

/// What a sync changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Synced {
    pub added: usize,
    pub removed: usize,
    /// Devices that joined or left `PEER_DEVICES` (a slot that changed hands counts twice).
    pub peers_changed: usize,
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
    ) -> Result<(usize, usize), MapsError> {
        let (mut added, mut removed) = (0, 0);
        for index in wanted.difference(listed) {
            self.0
                .insert(*index, *index, None, 0)
                .map_err(|source| MapsError::ForwardDevice {
                    ifindex: *index,
                    source,
                })?;
            added += 1;
        }
        for index in listed.difference(wanted) {
            match self.0.remove(*index) {
                Ok(()) => removed += 1,
                // Gone with its device meanwhile.
                Err(e) if super::maps::is_missing_key(&e) => {}
                Err(e) => return Err(access(names::FORWARD_DEVICES, "unlist a device")(e)),
            }
        }
        Ok((added, removed))
    }
}

/// What `PEER_DEVICES` holds for `peers`: per slot, the smallest index of the devices whose
/// index falls there, or 0.
#[must_use]
pub fn peer_slots(peers: &BTreeSet<u32>) -> Vec<u32> {
    let mut slots = vec![0u32; names::PEER_DEVICE_SLOTS as usize];
    // In ascending order: the first to take a slot keeps it.
    for index in peers {
        let slot = &mut slots[(*index % names::PEER_DEVICE_SLOTS) as usize];
        if *slot == 0 {
            *slot = *index;
        }
    }
    slots
}

/// Of the slots `now` holds, those `wanted` keeps as they are; every other slot empty (a
/// device to add is not added yet).
fn staying(now: &[u32], wanted: &[u32]) -> Vec<u32> {
    now.iter()
        .zip(wanted)
        .map(|(now, want)| if now == want { *now } else { 0 })
        .collect()
}

/// `PEER_DEVICES`.
struct PeerDevices(Array<MapData, u32>);

impl PeerDevices {
    fn open_pinned(pin_dir: &Path) -> Result<Self, MapsError> {
        let map = open_pin(pin_dir, names::PEER_DEVICES)?;
        Ok(Self(typed(names::PEER_DEVICES, map)?))
    }

    /// What the slots hold now.
    fn slots(&self) -> Result<Vec<u32>, MapsError> {
        (0..names::PEER_DEVICE_SLOTS)
            .map(|slot| {
                self.0
                    .get(&slot, 0)
                    .map_err(access(names::PEER_DEVICES, "read a slot"))
            })
            .collect()
    }

    /// Writes the slots of `wanted` that differ from `now` (what they hold, kept up to date);
    /// how many it wrote.
    fn write(&mut self, now: &mut [u32], wanted: &[u32]) -> Result<usize, MapsError> {
        let mut written = 0;
        for ((slot, now), want) in (0u32..).zip(now.iter_mut()).zip(wanted) {
            if *now != *want {
                self.0
                    .set(slot, *want, 0)
                    .map_err(access(names::PEER_DEVICES, "write a slot"))?;
                *now = *want;
                written += 1;
            }
        }
        Ok(written)
    }
}

/// Brings `FORWARD_DEVICES` and `PEER_DEVICES` in `pin_dir` up to date with this namespace's
/// devices, or empties them when the fast path is off (every steered packet then takes the
/// stack, counted as `forward_no_device`).
pub fn sync(pin_dir: &Path, on: bool, generic: bool) -> Result<Synced, MapsError> {
    let found = if on { devices() } else { Vec::new() };
    let wanted = reachable(&found, generic);
    // The replies' fast path redirects to a peer only if `FORWARD_DEVICES` lists the device
    // too. A device listed there while a stale entry here names its index (an index freed and
    // taken again) would have its replies handed to an "other end" that may be here, where
    // the kernel drops them: so what is no longer wanted here goes first, whatever becomes of
    // the device list, and what is new here is added only after the device list changed.
    let wanted_peers = peer_slots(&peers(&found, &wanted));
    let mut peer_devices = PeerDevices::open_pinned(pin_dir)?;
    let mut slots = peer_devices.slots()?;
    let kept = staying(&slots, &wanted_peers);
    let mut peers_changed = peer_devices.write(&mut slots, &kept)?;
    let mut devices = ForwardDevices::open_pinned(pin_dir)?;
    let listed = devices.listed()?;
    if listed == wanted {
        peers_changed += peer_devices.write(&mut slots, &wanted_peers)?;
        return Ok(Synced {
            peers_changed,
            ..Synced::default()
        });
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
    let (added, removed) = devices.sync(&listed, &wanted)?;
    peers_changed += peer_devices.write(&mut slots, &wanted_peers)?;
    clear(&mut hops, &mut maps)?;
    Ok(Synced {
        added,
        removed,
        peers_changed,
    })
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
            other_end_elsewhere: false,
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
                other_end_elsewhere: false,
            },
        ];
        assert_eq!(reachable(&devices, true), BTreeSet::from([2, 7, 9]));
        assert_eq!(reachable(&devices, false), BTreeSet::from([2, 9]));
    }

    #[test]
    fn only_reachable_devices_whose_other_end_is_elsewhere_take_a_peer_redirect() {
        let elsewhere = |index, name| Device {
            other_end_elsewhere: true,
            ..device(index, name, "veth")
        };
        let devices = [
            device(2, "eth0", "virtio_net"),
            elsewhere(7, "veth1a2b"),
            // Both ends here: a peer redirect to it would be dropped.
            device(8, "vethpair0", "veth"),
            elsewhere(11, "lxc9"),
        ];
        let generic = reachable(&devices, true);
        assert_eq!(peers(&devices, &generic), BTreeSet::from([7, 11]));
        // Natively, no veth is reachable, so none is a peer either.
        assert_eq!(
            peers(&devices, &reachable(&devices, false)),
            BTreeSet::new()
        );
    }

    #[test]
    fn peers_take_the_slot_of_their_index_and_the_smaller_index_keeps_a_shared_one() {
        let n = names::PEER_DEVICE_SLOTS;
        let slots = peer_slots(&BTreeSet::from([7, 11, n + 7, 2 * n + 3]));
        assert_eq!(slots.len(), n as usize);
        assert_eq!((slots[7], slots[11], slots[3]), (7, 11, 2 * n + 3));
        assert_eq!(slots.iter().filter(|s| **s != 0).count(), 3);
        assert!(peer_slots(&BTreeSet::new()).iter().all(|s| *s == 0));
    }

    #[test]
    fn stale_peers_go_before_the_device_list_changes_and_new_ones_wait() {
        // Slots: kept, stale (another device took the index's slot), gone, new.
        let now = [7, 9, 12, 0];
        let wanted = [7, 1033, 0, 14];
        assert_eq!(staying(&now, &wanted), [7, 0, 0, 0]);
    }

    #[test]
    fn this_namespace_has_its_loopback() {
        assert!(devices().iter().any(|d| d.name == "lo" && d.index > 0));
    }
}

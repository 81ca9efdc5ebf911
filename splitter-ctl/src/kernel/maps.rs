//! Typed access to the data plane's maps. `Maps` owns one handle per map, opened from the pins
//! of a running data plane or taken from a freshly loaded object, and keeps related maps
//! consistent: a pool change rewrites its whole slot table, a service removal purges its flows
//! and counters. The kernel maps are the source of truth; nothing here caches their contents.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{
        Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuValues,
        lpm_trie::Key as LpmKey,
    },
};
use splitter_common::{
    BackendInfo, CacheSet, CachedFlow, CachedReply, Endpoint, Flow, FlowGuard, FlowKey, Histogram,
    LAST_RESORT, LatencyKind, PLANE_COUNTERS, PlaneCounter, SLOT_SET, Service, Slot, SplitWord,
    Traffic, Version, VersionStats, WayKey,
    drain::Drain,
    maps::{self as names, SLOTS_PER_POOL},
    slot_index, stats_index,
};

use super::{
    layout::{LayoutError, check_layout},
    split_maps::SplitMaps,
};
use crate::model::{
    addr::{addr_bytes, addr_ip},
    paths,
};

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error(
        "no data plane is pinned at `{pin_dir}` (map `{map}` is missing): start it with `splitter-ctl daemon --config FILE`"
    )]
    NotPinned { pin_dir: PathBuf, map: &'static str },
    #[error(
        "permission denied on the pin directory `{pin_dir}`: the data plane is root's; run the \
         command as root (sudo)"
    )]
    PermissionDenied { pin_dir: PathBuf },
    #[error("cannot open pinned map `{path}`")]
    Open {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error(
        "pinned map `{path}` is not Splitter's map `{map}` ({problem}); run `splitter-ctl detach` and start the daemon again"
    )]
    Foreign {
        path: PathBuf,
        map: &'static str,
        problem: Box<LayoutError>,
    },
    #[error("the loaded object has no map `{0}`")]
    MissingInObject(&'static str),
    #[error("map `{map}` has the wrong type for its role")]
    Type {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("cannot {action} in map `{map}`")]
    Access {
        map: &'static str,
        action: &'static str,
        #[source]
        source: MapError,
    },
    #[error("cannot list device {ifindex} in map `{map}`", map = names::FORWARD_DEVICES)]
    ForwardDevice {
        ifindex: u32,
        #[source]
        source: aya::maps::xdp::XdpMapError,
    },
    #[error("service id {0} is outside the data plane's {max} services", max = names::MAX_SERVICES)]
    ServiceId(u32),
}

/// A `COHORTS` key: bits that count (service id and address prefix), and the data.
pub type CohortKey = (u32, [u8; 20]);

pub struct Maps {
    /// `SERVICES` and `SPLIT`, which a split-word write also opens alone.
    word: SplitMaps,
    service_ports: Array<MapData, u32>,
    slots: Array<MapData, Slot>,
    pub(super) flows: HashMap<MapData, FlowKey, Flow>,
    flow_cache: PerCpuArray<MapData, CacheSet<CachedFlow>>,
    reply_cache: PerCpuArray<MapData, CacheSet<CachedReply>>,
    backends: HashMap<MapData, Endpoint, BackendInfo>,
    version_stats: PerCpuArray<MapData, VersionStats>,
    version_traffic: PerCpuArray<MapData, Traffic>,
    latency: PerCpuArray<MapData, Histogram>,
    plane_stats: PerCpuArray<MapData, u64>,
    flow_guard: PerCpuArray<MapData, FlowGuard>,
    cohorts: LpmTrie<MapData, [u8; 20], u32>,
    /// The drain's maps, for `kernel::drains`.
    pub(super) drains: HashMap<MapData, FlowKey, Drain>,
    /// HTTP/2 connections' state, for a drain's look at the calls in flight.
    pub(super) h2_conns: HashMap<MapData, FlowKey, splitter_common::l7::H2Conn>,
    pub(super) drain_closing: HashMap<MapData, FlowKey, u32>,
    pub(super) drain_active: Array<MapData, u32>,
}

/// A cache set's per-CPU values with every way marked invalid and nothing else changed. The
/// kernel copies the new values over the old while programs on other CPUs may be reading them:
/// with only the valid byte different, a reader that saw its way valid reads the same data
/// after as before, never a half-zeroed way (a source of 0.0.0.0, a wrong checksum).
fn invalidated<W: aya::Pod>(
    map: &'static str,
    values: &PerCpuValues<CacheSet<W>>,
    key: impl Fn(&mut W) -> &mut WayKey,
) -> Result<PerCpuValues<CacheSet<W>>, MapsError> {
    let cleared: Vec<CacheSet<W>> = values
        .iter()
        .map(|set| {
            let mut set = *set;
            for way in &mut set.ways {
                key(way).valid = 0;
            }
            set
        })
        .collect();
    PerCpuValues::try_from(cleared).map_err(|io_error| {
        access(map, "clear a set")(MapError::from(aya::sys::SyscallError {
            call: "bpf_map_update_elem",
            io_error,
        }))
    })
}

/// Zeroes entry `index` of the per-CPU map `name` on every CPU.
fn zero<T: aya::Pod + Default + Clone>(
    map: &mut PerCpuArray<MapData, T>,
    name: &'static str,
    index: u32,
) -> Result<(), MapsError> {
    let zeros = zeroed::<T>(name)?;
    map.set(index, zeros, 0)
        .map_err(access(name, "zero an entry"))
}

/// A per-CPU value of zeroes for every possible CPU.
pub(super) fn zeroed<T: aya::Pod + Default + Clone>(
    map: &'static str,
) -> Result<PerCpuValues<T>, MapsError> {
    per_cpu(map, T::default())
}

/// `value` for every possible CPU.
fn per_cpu<T: aya::Pod + Clone>(map: &'static str, value: T) -> Result<PerCpuValues<T>, MapsError> {
    let cpus = aya::util::nr_cpus().map_err(|(call, io_error)| {
        access(map, "count CPUs")(MapError::from(aya::sys::SyscallError { call, io_error }))
    })?;
    PerCpuValues::try_from(vec![value; cpus]).map_err(|io_error| {
        access(map, "build per-CPU values")(MapError::from(aya::sys::SyscallError {
            call: "nr_cpus",
            io_error,
        }))
    })
}

pub(super) fn access(
    map: &'static str,
    action: &'static str,
) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError::Access {
        map,
        action,
        source,
    }
}

pub(super) fn is_missing_key(error: &MapError) -> bool {
    match error {
        MapError::KeyNotFound | MapError::ElementNotFound => true,
        // What `bpf_map_delete_elem` and a `BPF_EXIST` update say of a key that is not there.
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// `m` as the map type `T` its name says it is.
pub(super) fn typed<T: TryFrom<Map, Error = MapError>>(
    map: &'static str,
    m: Map,
) -> Result<T, MapsError> {
    T::try_from(m).map_err(|source| MapsError::Type { map, source })
}

/// Opens the pin of map `name` in `pin_dir`, checking its layout.
pub(super) fn open_pin(pin_dir: &Path, name: &'static str) -> Result<Map, MapsError> {
    let path = paths::pin(pin_dir, name);
    match std::fs::symlink_metadata(&path) {
        Ok(_) => {}
        // The pin directory is root's (0700): its pins look absent to anyone else.
        Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(MapsError::PermissionDenied {
                pin_dir: pin_dir.to_owned(),
            });
        }
        Err(_) => {
            return Err(MapsError::NotPinned {
                pin_dir: pin_dir.to_owned(),
                map: name,
            });
        }
    }
    let data = MapData::from_pin(&path).map_err(|source| MapsError::Open {
        path: path.clone(),
        source,
    })?;
    if let Err(problem) = check_layout(&data, name) {
        return Err(MapsError::Foreign {
            path,
            map: name,
            problem: Box::new(problem),
        });
    }
    Map::from_map_data(data).map_err(|source| MapsError::Open { path, source })
}

impl Maps {
    /// Opens the maps of the data plane pinned in `pin_dir`, checking each one's layout.
    pub fn open_pinned(pin_dir: &Path) -> Result<Self, MapsError> {
        Self::from_maps(&mut |name| open_pin(pin_dir, name))
    }

    /// Takes the maps out of a freshly loaded object (the programs keep their own references).
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<Self, MapsError> {
        Self::from_maps(&mut |name| ebpf.take_map(name).ok_or(MapsError::MissingInObject(name)))
    }

    fn from_maps(
        open: &mut dyn FnMut(&'static str) -> Result<Map, MapsError>,
    ) -> Result<Self, MapsError> {
        Ok(Self {
            word: SplitMaps {
                services: typed(names::SERVICES, open(names::SERVICES)?)?,
                split: typed(names::SPLIT, open(names::SPLIT)?)?,
            },
            service_ports: typed(names::SERVICE_PORTS, open(names::SERVICE_PORTS)?)?,
            slots: typed(names::POOL_SLOTS, open(names::POOL_SLOTS)?)?,
            flows: typed(names::FLOWS, open(names::FLOWS)?)?,
            flow_cache: typed(names::FLOW_CACHE, open(names::FLOW_CACHE)?)?,
            reply_cache: typed(names::REPLY_CACHE, open(names::REPLY_CACHE)?)?,
            backends: typed(names::BACKENDS, open(names::BACKENDS)?)?,
            version_stats: typed(names::VERSION_STATS, open(names::VERSION_STATS)?)?,
            version_traffic: typed(names::VERSION_TRAFFIC, open(names::VERSION_TRAFFIC)?)?,
            latency: typed(names::LATENCY, open(names::LATENCY)?)?,
            plane_stats: typed(names::PLANE_STATS, open(names::PLANE_STATS)?)?,
            flow_guard: typed(names::FLOW_GUARD, open(names::FLOW_GUARD)?)?,
            cohorts: typed(names::COHORTS, open(names::COHORTS)?)?,
            drains: typed(names::DRAINS, open(names::DRAINS)?)?,
            h2_conns: typed(names::H2_CONNS, open(names::H2_CONNS)?)?,
            drain_closing: typed(names::DRAIN_CLOSING, open(names::DRAIN_CLOSING)?)?,
            drain_active: typed(names::DRAIN_ACTIVE, open(names::DRAIN_ACTIVE)?)?,
        })
    }

    // ---- services ----

    /// Every service the kernel knows, by endpoint.
    pub fn services(&self) -> Result<Vec<(Endpoint, Service)>, MapsError> {
        self.word
            .services
            .iter()
            .collect::<Result<_, _>>()
            .map_err(access(names::SERVICES, "list services"))
    }

    pub fn service(&self, endpoint: &Endpoint) -> Result<Option<Service>, MapsError> {
        self.word.service(endpoint)
    }

    /// Gives the client hash of the service at `endpoint` a new salt (24 bits): another cohort
    /// of clients lands on the candidate. Nothing changes for a service without client affinity.
    pub fn set_service_salt(&mut self, endpoint: &Endpoint, salt: u32) -> Result<(), MapsError> {
        let Some(mut service) = self.service(endpoint)? else {
            return Ok(());
        };
        let mask = (1 << splitter_common::SERVICE_SALT_SHIFT) - 1;
        service.flags =
            (service.flags & mask) | ((salt & 0x00ff_ffff) << splitter_common::SERVICE_SALT_SHIFT);
        self.insert_service(endpoint, service)
    }

    /// Makes the service visible to the kernel. Call after its split, slots and backends are set.
    pub fn insert_service(
        &mut self,
        endpoint: &Endpoint,
        service: Service,
    ) -> Result<(), MapsError> {
        Self::check_id(service.id)?;
        self.word
            .services
            .insert(endpoint, service, 0)
            .map_err(access(names::SERVICES, "insert a service"))
    }

    pub fn remove_service(&mut self, endpoint: &Endpoint) -> Result<(), MapsError> {
        match self.word.services.remove(endpoint) {
            Ok(()) => Ok(()),
            Err(e) if is_missing_key(&e) => Ok(()),
            Err(e) => Err(access(names::SERVICES, "remove a service")(e)),
        }
    }

    pub fn set_port_services(&mut self, port: u16, count: u32) -> Result<(), MapsError> {
        self.service_ports
            .set(u32::from(port), count, 0)
            .map_err(access(names::SERVICE_PORTS, "set a port"))
    }

    pub fn port_services(&self, port: u16) -> Result<u32, MapsError> {
        self.service_ports
            .get(&u32::from(port), 0)
            .map_err(access(names::SERVICE_PORTS, "read a port"))
    }

    pub(super) fn check_id(id: u32) -> Result<(), MapsError> {
        if id < names::MAX_SERVICES {
            Ok(())
        } else {
            Err(MapsError::ServiceId(id))
        }
    }

    // ---- split ----

    pub fn split(&self, id: u32) -> Result<SplitWord, MapsError> {
        self.word.split(id)
    }

    /// Writes the split word: one map update. Returns how long the write took.
    pub fn set_split(&mut self, id: u32, word: SplitWord) -> Result<Duration, MapsError> {
        self.word.set_split(id, word)
    }

    // ---- pools ----

    /// Rewrites the whole slot table of a version's pool.
    pub fn write_slots(
        &mut self,
        id: u32,
        version: Version,
        table: &[Option<SocketAddr>],
    ) -> Result<(), MapsError> {
        self.write_pool_slots(id, version as u8, table)
    }

    /// Rewrites the whole slot table of a service's last-resort pool.
    pub fn write_last_resort_slots(
        &mut self,
        id: u32,
        table: &[Option<SocketAddr>],
    ) -> Result<(), MapsError> {
        self.write_pool_slots(id, LAST_RESORT, table)
    }

    fn write_pool_slots(
        &mut self,
        id: u32,
        pool: u8,
        table: &[Option<SocketAddr>],
    ) -> Result<(), MapsError> {
        Self::check_id(id)?;
        for (i, slot) in table.iter().take(SLOTS_PER_POOL as usize).enumerate() {
            let value = slot.map_or_else(Slot::default, |addr| Slot {
                addr: addr_bytes(addr.ip()),
                port_be: addr.port().to_be(),
                flags: SLOT_SET,
            });
            let index = slot_index(id, pool, i as u32);
            self.slots
                .set(index, value, 0)
                .map_err(access(names::POOL_SLOTS, "write a slot"))?;
        }
        Ok(())
    }

    /// The slot table of a version's pool as the kernel holds it.
    pub fn slots(&self, id: u32, version: Version) -> Result<Vec<Option<SocketAddr>>, MapsError> {
        self.pool_slots(id, version as u8)
    }

    /// The slot table of a service's last-resort pool as the kernel holds it.
    pub fn last_resort_slots(&self, id: u32) -> Result<Vec<Option<SocketAddr>>, MapsError> {
        self.pool_slots(id, LAST_RESORT)
    }

    fn pool_slots(&self, id: u32, pool: u8) -> Result<Vec<Option<SocketAddr>>, MapsError> {
        Self::check_id(id)?;
        (0..SLOTS_PER_POOL)
            .map(|i| {
                let slot = self
                    .slots
                    .get(&slot_index(id, pool, i), 0)
                    .map_err(access(names::POOL_SLOTS, "read a slot"))?;
                Ok((slot.flags & SLOT_SET != 0)
                    .then(|| SocketAddr::new(addr_ip(&slot.addr), u16::from_be(slot.port_be))))
            })
            .collect()
    }

    // ---- backends (reverse translation) ----

    pub fn backends(&self) -> Result<Vec<(Endpoint, BackendInfo)>, MapsError> {
        self.backends
            .iter()
            .collect::<Result<_, _>>()
            .map_err(access(names::BACKENDS, "list backends"))
    }

    /// Writes a backend's reverse entry. True when it replaced a different one (a backend moved
    /// to another pool or service): the caller then clears the reply cache, whose copies are of
    /// the old one.
    pub fn insert_backend(
        &mut self,
        backend: &Endpoint,
        info: BackendInfo,
    ) -> Result<bool, MapsError> {
        let before = match self.backends.get(backend, 0) {
            Ok(before) => Some(before),
            Err(e) if is_missing_key(&e) => None,
            Err(e) => return Err(access(names::BACKENDS, "read a backend")(e)),
        };
        self.backends
            .insert(backend, info, 0)
            .map_err(access(names::BACKENDS, "insert a backend"))?;
        Ok(before.is_some_and(|before| before != info))
    }

    /// Removes a backend's reverse entry; the caller clears the reply cache once it has removed
    /// all it removes.
    pub fn remove_backend(&mut self, backend: &Endpoint) -> Result<(), MapsError> {
        match self.backends.remove(backend) {
            Ok(()) => Ok(()),
            Err(e) if is_missing_key(&e) => Ok(()),
            Err(e) => Err(access(names::BACKENDS, "remove a backend")(e)),
        }
    }

    // ---- flows ----

    pub fn flows(&self) -> Result<Vec<(FlowKey, Flow)>, MapsError> {
        // Entries can vanish (LRU) while we iterate; skip those instead of failing.
        Ok(self.flows.iter().filter_map(Result::ok).collect())
    }

    pub fn flow(&self, key: &FlowKey) -> Result<Option<Flow>, MapsError> {
        match self.flows.get(key, 0) {
            Ok(flow) => Ok(Some(flow)),
            Err(e) if is_missing_key(&e) => Ok(None),
            Err(e) => Err(access(names::FLOWS, "read a flow")(e)),
        }
    }

    /// Removes the flows `doomed` picks; returns how many went. Each flow is read again just
    /// before it is removed, so one the kernel changed meanwhile (a SYN reusing the 5-tuple) is
    /// judged on what it is now.
    pub fn purge_flows(
        &mut self,
        doomed: impl Fn(&FlowKey, &Flow) -> bool,
    ) -> Result<usize, MapsError> {
        let flows = self.flows()?;
        self.purge_among(&flows, doomed)
    }

    /// Like `purge_flows`, over `flows` read before (one walk of the table serving several
    /// readers).
    pub fn purge_among(
        &mut self,
        flows: &[(FlowKey, Flow)],
        doomed: impl Fn(&FlowKey, &Flow) -> bool,
    ) -> Result<usize, MapsError> {
        let keys: Vec<FlowKey> = flows
            .iter()
            .filter(|(k, f)| doomed(k, f))
            .map(|(k, _)| *k)
            .collect();
        let mut removed = 0;
        for key in keys {
            if !self.flow(&key)?.is_some_and(|now| doomed(&key, &now)) {
                continue;
            }
            match self.flows.remove(&key) {
                Ok(()) => removed += 1,
                Err(e) if is_missing_key(&e) => {}
                Err(e) => return Err(access(names::FLOWS, "remove a flow")(e)),
            }
        }
        Ok(removed)
    }

    /// Empties the flow cache and the reply cache on every CPU. Needed when flows are purged
    /// for a reason other than their own close (a removed service): a cached copy would
    /// outlive its entry.
    pub fn clear_flow_cache(&mut self) -> Result<(), MapsError> {
        self.clear_flow_ways()?;
        self.clear_reply_cache()
    }

    /// Empties the flow cache (not the reply cache) on every CPU: its ways also keep copies of
    /// next hops, which go when `NEXT_HOPS` is cleared.
    pub fn clear_flow_ways(&mut self) -> Result<(), MapsError> {
        for set in 0..names::FLOW_CACHE_SETS {
            self.clear_cache_set(set)?;
        }
        Ok(())
    }

    /// Empties the reply cache on every CPU.
    pub fn clear_reply_cache(&mut self) -> Result<(), MapsError> {
        for set in 0..names::FLOW_CACHE_SETS {
            self.clear_reply_set(set)?;
        }
        Ok(())
    }

    /// Empties one set of the reply cache (both its ways) on every CPU. Only each way's valid
    /// byte changes (see `invalidated`).
    pub fn clear_reply_set(&mut self, set: u32) -> Result<(), MapsError> {
        let values = self
            .reply_cache
            .get(&set, 0)
            .map_err(access(names::REPLY_CACHE, "read a set"))?;
        let cleared = invalidated(names::REPLY_CACHE, &values, |way| &mut way.key)?;
        self.reply_cache
            .set(set, cleared, 0)
            .map_err(access(names::REPLY_CACHE, "clear a set"))
    }

    /// One set of the flow cache, as each CPU holds it.
    pub fn flow_cache_set(
        &self,
        set: u32,
    ) -> Result<PerCpuValues<CacheSet<CachedFlow>>, MapsError> {
        self.flow_cache
            .get(&set, 0)
            .map_err(access(names::FLOW_CACHE, "read a set"))
    }

    /// Empties one set of the flow cache (both its ways) on every CPU. Only each way's valid
    /// byte changes (see `invalidated`).
    pub fn clear_cache_set(&mut self, set: u32) -> Result<(), MapsError> {
        let values = self
            .flow_cache
            .get(&set, 0)
            .map_err(access(names::FLOW_CACHE, "read a set"))?;
        let cleared = invalidated(names::FLOW_CACHE, &values, |way| &mut way.key)?;
        self.flow_cache
            .set(set, cleared, 0)
            .map_err(access(names::FLOW_CACHE, "clear a set"))
    }

    // ---- cohorts ----

    /// Every cohort entry: (prefix length over service id and address, key data) → kind.
    pub fn cohorts(&self) -> Result<Vec<(CohortKey, u32)>, MapsError> {
        self.cohorts
            .iter()
            .map(|entry| {
                entry
                    .map(|(key, kind)| ((key.prefix_len(), key.data()), kind))
                    .map_err(access(names::COHORTS, "read the cohorts"))
            })
            .collect()
    }

    /// Puts a cohort entry in (or replaces its kind).
    pub fn set_cohort(&mut self, key: CohortKey, kind: u32) -> Result<(), MapsError> {
        self.cohorts
            .insert(&LpmKey::new(key.0, key.1), kind, 0)
            .map_err(access(names::COHORTS, "write a cohort"))
    }

    pub fn remove_cohort(&mut self, key: CohortKey) -> Result<(), MapsError> {
        self.cohorts
            .remove(&LpmKey::new(key.0, key.1))
            .map_err(access(names::COHORTS, "remove a cohort"))
    }

    // ---- the new-flow rate guard ----

    /// Sets the new flow entries each CPU may add per second (0: no guard). Writing it refills
    /// nothing: each CPU's bucket fills from empty at the new rate.
    pub fn set_new_flow_rate(&mut self, per_cpu: u32) -> Result<(), MapsError> {
        let current = self
            .flow_guard
            .get(&0, 0)
            .map_err(access(names::FLOW_GUARD, "read the rate guard"))?;
        if current.iter().all(|g| g.rate_per_s == u64::from(per_cpu)) {
            return Ok(());
        }
        let values = self::per_cpu(
            names::FLOW_GUARD,
            FlowGuard {
                rate_per_s: u64::from(per_cpu),
                ..FlowGuard::default()
            },
        )?;
        self.flow_guard
            .set(0, values, 0)
            .map_err(access(names::FLOW_GUARD, "set the rate guard"))
    }

    // ---- counters ----

    /// The counters of a (service, version), summed over CPUs.
    pub fn counters(&self, id: u32, version: Version) -> Result<VersionStats, MapsError> {
        self.pool_counters(id, version as u8)
    }

    /// The counters of a service's last-resort pool, summed over CPUs: `new_flows` counts the
    /// connections it took.
    pub fn last_resort_counters(&self, id: u32) -> Result<VersionStats, MapsError> {
        self.pool_counters(id, LAST_RESORT)
    }

    fn pool_counters(&self, id: u32, pool: u8) -> Result<VersionStats, MapsError> {
        Self::check_id(id)?;
        let index = stats_index(id, pool);
        let per_cpu = self
            .version_stats
            .get(&index, 0)
            .map_err(access(names::VERSION_STATS, "read counters"))?;
        let traffic = self
            .version_traffic
            .get(&index, 0)
            .map_err(access(names::VERSION_TRAFFIC, "read counters"))?;
        Ok(per_cpu
            .iter()
            .fold(VersionStats::default(), VersionStats::add)
            .with_traffic(&traffic.iter().fold(Traffic::default(), Traffic::add)))
    }

    /// New flows steered to each version so far: [blue, green].
    pub fn new_flows(&self, id: u32) -> Result<[u64; 2], MapsError> {
        Ok([
            self.counters(id, Version::Blue)?.new_flows,
            self.counters(id, Version::Green)?.new_flows,
        ])
    }

    /// A latency histogram of a (service, version), summed over CPUs.
    pub fn histogram(
        &self,
        id: u32,
        version: Version,
        kind: LatencyKind,
    ) -> Result<Histogram, MapsError> {
        Self::check_id(id)?;
        let index = splitter_common::latency_index(stats_index(id, version as u8), kind);
        let per_cpu = self
            .latency
            .get(&index, 0)
            .map_err(access(names::LATENCY, "read a histogram"))?;
        Ok(per_cpu.iter().fold(Histogram::default(), Histogram::add))
    }

    /// Zeroes the counters and histograms of a (service, version) on every CPU.
    pub fn reset_counters(&mut self, id: u32, version: Version) -> Result<(), MapsError> {
        self.reset_pool_counters(id, version as u8)
    }

    /// Zeroes the counters and histograms of a service's last-resort pool on every CPU.
    pub fn reset_last_resort_counters(&mut self, id: u32) -> Result<(), MapsError> {
        self.reset_pool_counters(id, LAST_RESORT)
    }

    fn reset_pool_counters(&mut self, id: u32, version: u8) -> Result<(), MapsError> {
        Self::check_id(id)?;
        let index = stats_index(id, version);
        zero(&mut self.version_stats, names::VERSION_STATS, index)?;
        zero(&mut self.version_traffic, names::VERSION_TRAFFIC, index)?;
        for kind in LatencyKind::ALL {
            let at = splitter_common::latency_index(index, kind);
            zero(&mut self.latency, names::LATENCY, at)?;
        }
        Ok(())
    }

    /// Packets per data-plane outcome, summed over CPUs: `steered` and `reply_translated`
    /// (the sums of every version's `packets_in` and `packets_out`), then each `PlaneCounter`.
    pub fn plane_counters(&self) -> Result<Vec<(&'static str, u64)>, MapsError> {
        let (mut steered, mut translated) = (0, 0);
        for values in self.version_traffic.iter() {
            for traffic in values
                .map_err(access(names::VERSION_TRAFFIC, "read counters"))?
                .iter()
            {
                steered += traffic.packets_in;
                translated += traffic.packets_out;
            }
        }
        let mut counters = vec![("steered", steered), ("reply_translated", translated)];
        for counter in PlaneCounter::ALL.iter().take(PLANE_COUNTERS as usize) {
            let per_cpu = self
                .plane_stats
                .get(&(*counter as u32), 0)
                .map_err(access(names::PLANE_STATS, "read counters"))?;
            counters.push((counter.name(), per_cpu.iter().sum()));
        }
        Ok(counters)
    }
}

//! Applying a validated config to the maps, as a diff against what the kernel holds.
//!
//! Order matters, because the kernel reads the maps while we write them: a new service's split
//! word, slot tables and reverse entries are written before its `SERVICES` entry makes it
//! visible; a removed service disappears from `SERVICES` first and its state is cleared after.
//! The split word of a release (a service, or a release group sharing one word) that already
//! exists is never overwritten: it may hold an operator's `weight` or `rollback`, and the kernel
//! is the source of truth. When a group's first service changes (it left the config, or the
//! group formed), the word is copied to the new first service's index before any service
//! points at it.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::SocketAddr,
};

use splitter_common::{
    Addr, BackendInfo, COHORT_CANDIDATE, COHORT_ID_BITS, COHORT_LIVE, Endpoint,
    SERVICE_AFFINITY_CLIENT, SERVICE_HAS_COHORTS, SERVICE_SALT_SHIFT, Service, SplitWord, Version,
    cohort_data, maps::MAX_SERVICES,
};

use crate::{
    kernel::maps::{Maps, MapsError},
    model::{
        addr::addr_ip,
        config::{Config, Pool, Release, ServiceSpec, endpoint},
        slots,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("the data plane has no free service id (it holds {MAX_SERVICES} services)")]
    NoFreeId,
    #[error(transparent)]
    Maps(#[from] MapsError),
}

/// What an apply changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub added: Vec<String>,
    pub kept: Vec<String>,
    /// Services removed from the kernel, by listen address.
    pub removed: Vec<String>,
    /// Services whose kernel split word differs from the config's initial one (an operator
    /// change, or a later step of a rollout): (name, kernel word, config word).
    pub split_differs: Vec<(String, SplitWord, SplitWord)>,
    /// Flows purged with removed services.
    pub purged_flows: usize,
    /// Backends removed from the config that established flows still use.
    pub draining_backends: usize,
}

/// Which backends may take new connections: (service, pool, backend) → healthy.
pub type Healthy<'a> = &'a dyn Fn(&str, Pool, SocketAddr) -> bool;

/// Every backend counts as healthy (no health checks: tests, benchmarks).
pub fn all_healthy(_: &str, _: Pool, _: SocketAddr) -> bool {
    true
}

/// Rewrites the slot table of one pool from its healthy backends. A version's pool with none
/// has an empty table, and the kernel sends its new connections to the other version (then to
/// the last-resort pool).
pub fn write_pool(
    maps: &mut Maps,
    id: u32,
    spec: &ServiceSpec,
    pool: Pool,
    healthy: Healthy<'_>,
) -> Result<(), MapsError> {
    let up: Vec<_> = spec
        .backends_of(pool)
        .iter()
        .copied()
        .filter(|b| healthy(&spec.name, pool, b.addr))
        .collect();
    let table = slots::build(&up);
    match pool {
        Pool::Blue => maps.write_slots(id, Version::Blue, &table),
        Pool::Green => maps.write_slots(id, Version::Green, &table),
        Pool::LastResort => maps.write_last_resort_slots(id, &table),
    }
}

pub fn apply(
    maps: &mut Maps,
    config: &Config,
    healthy: Healthy<'_>,
) -> Result<Applied, ApplyError> {
    let existing: HashMap<Endpoint, Service> = maps.services()?.into_iter().collect();
    let wanted: HashSet<Endpoint> = config.services.iter().map(ServiceSpec::endpoint).collect();

    // Plan ids first, so running out of ids changes nothing.
    // Ids of services about to be removed are free for new ones: removal clears their state
    // first. Not those whose split word a staying service still reads (a release group's first
    // service that leaves): the staying services point elsewhere only at the end of the apply.
    let mut used: BTreeSet<u32> = existing
        .iter()
        .filter(|(e, _)| wanted.contains(e))
        .flat_map(|(_, s)| [s.id, s.split])
        .collect();
    let mut ids = Vec::with_capacity(config.services.len());
    for spec in &config.services {
        let id = match existing.get(&spec.endpoint()) {
            Some(service) => service.id,
            None => {
                let id = (0..MAX_SERVICES)
                    .find(|id| !used.contains(id))
                    .ok_or(ApplyError::NoFreeId)?;
                used.insert(id);
                id
            }
        };
        ids.push(id);
    }

    // Each release's split word, read before any removal clears one: a release group's word
    // lives at its first service's id, which changes when that service leaves or the group
    // forms, and the word (an operator's rollback, a rollout's step) must move with it.
    let id_of: HashMap<&str, u32> = config
        .services
        .iter()
        .zip(&ids)
        .map(|(spec, id)| (spec.name.as_str(), *id))
        .collect();
    // Per service: the index of the split word it reads and the salt it keeps (the salt stays
    // across reloads, changing only when a rollout starts; a service joining a release group
    // takes the group's, so a client sees one version across it).
    let mut word_of: HashMap<&str, (u32, u32)> = HashMap::new();
    let mut releases = Vec::new();
    for release in config.releases() {
        let index = id_of[release.leader().name.as_str()];
        let at = group_word_index(&release, &existing);
        let kernel = at.map(|at| maps.split(at)).transpose()?;
        let salt = at
            .and_then(|at| {
                release
                    .members
                    .iter()
                    .filter_map(|m| existing.get(&m.endpoint()))
                    .find(|s| s.split == at)
            })
            .map_or(0, Service::salt);
        for member in &release.members {
            word_of.insert(member.name.as_str(), (index, salt));
        }
        releases.push((release, index, kernel));
    }
    let read_by_staying: HashSet<u32> = existing
        .iter()
        .filter(|(e, _)| wanted.contains(e))
        .map(|(_, s)| s.split)
        .collect();

    maps.set_new_flow_rate(config.new_flow_rate_per_cpu)?;
    let mut applied = Applied::default();
    for (endpoint, service) in &existing {
        if !wanted.contains(endpoint) {
            let keep_word = read_by_staying.contains(&service.id);
            applied.purged_flows += remove(maps, endpoint, service.id, keep_word)?;
            applied
                .removed
                .push(format!("{}:{}", addr_ip(&endpoint.addr), endpoint.port()));
        }
    }

    // Reverse entries first: a slot must never send a SYN to a backend whose replies the
    // egress program cannot translate yet.
    let mut moved = false;
    for (spec, pool, backend) in config.backends() {
        let service_endpoint = spec.endpoint();
        let info = BackendInfo {
            service_addr: service_endpoint.addr,
            service_port_be: service_endpoint.port_be,
            version: pool.index(),
            _pad: 0,
            service_id: id_of[spec.name.as_str()],
        };
        moved |= maps.insert_backend(&endpoint(backend.addr, spec.protocol), info)?;
    }
    if moved {
        maps.clear_reply_cache()?;
    }
    for (spec, id) in config.services.iter().zip(&ids) {
        let id = *id;
        for pool in Pool::ALL {
            write_pool(maps, id, spec, pool, healthy)?;
        }
        if existing.contains_key(&spec.endpoint()) {
            applied.kept.push(spec.name.clone());
        } else {
            maps.reset_counters(id, Version::Blue)?;
            maps.reset_counters(id, Version::Green)?;
            maps.reset_last_resort_counters(id)?;
            applied.added.push(spec.name.clone());
        }
    }
    for (release, index, kernel) in &releases {
        let initial = release.leader().initial_split();
        match kernel {
            Some(kernel) => {
                if maps.split(*index)? != *kernel {
                    maps.set_split(*index, *kernel)?;
                }
                if *kernel != initial {
                    applied
                        .split_differs
                        .push((release.name.to_owned(), *kernel, initial));
                }
            }
            None => {
                maps.set_split(*index, initial)?;
            }
        }
    }
    write_cohorts(maps, config, &ids)?;
    applied.draining_backends = remove_stale_backends(maps, config)?;
    write_ports(maps, config, existing.keys())?;
    for (spec, id) in config.services.iter().zip(&ids) {
        let (split, salt) = word_of.get(spec.name.as_str()).copied().unwrap_or((*id, 0));
        let mut flags = salt << SERVICE_SALT_SHIFT | spec.l7.service_flags();
        if spec.client_affinity {
            flags |= SERVICE_AFFINITY_CLIENT;
        }
        if !spec.always_candidate.is_empty() || !spec.never_candidate.is_empty() {
            flags |= SERVICE_HAS_COHORTS;
        }
        maps.insert_service(
            &spec.endpoint(),
            Service {
                id: *id,
                flags,
                split,
            },
        )?;
    }
    Ok(applied)
}

/// Makes `COHORTS` hold exactly the config's cohorts: stale entries out (a service removed, a
/// prefix dropped), wanted ones in.
fn write_cohorts(maps: &mut Maps, config: &Config, ids: &[u32]) -> Result<(), ApplyError> {
    let mut wanted: HashMap<crate::kernel::maps::CohortKey, u32> = HashMap::new();
    for (spec, id) in config.services.iter().zip(ids) {
        for (list, kind) in [
            (&spec.always_candidate, COHORT_CANDIDATE),
            (&spec.never_candidate, COHORT_LIVE),
        ] {
            for cidr in list {
                wanted.insert(
                    (COHORT_ID_BITS + cidr.bits, cohort_data(*id, &cidr.addr)),
                    kind,
                );
            }
        }
    }
    for (key, kind) in maps.cohorts()? {
        if wanted.get(&key) != Some(&kind) {
            maps.remove_cohort(key)?;
        }
    }
    for (key, kind) in wanted {
        maps.set_cohort(key, kind)?;
    }
    Ok(())
}

/// Removes the reverse entries of backends the config no longer has, except those that flows
/// still use: their connections keep working (draining) until they close, and housekeeping
/// removes the entry then. Returns how many are still draining.
pub fn remove_stale_backends(maps: &mut Maps, config: &Config) -> Result<usize, MapsError> {
    let configured: HashSet<Endpoint> = config
        .backends()
        .map(|(s, _, b)| endpoint(b.addr, s.protocol))
        .collect();
    let stale: Vec<Endpoint> = maps
        .backends()?
        .into_iter()
        .map(|(b, _)| b)
        .filter(|b| !configured.contains(b))
        .collect();
    if stale.is_empty() {
        return Ok(0);
    }
    let in_use: HashSet<(Addr, u16, u8)> = maps
        .flows()?
        .into_iter()
        .map(|(k, f)| (f.backend_addr, f.backend_port_be, k.protocol))
        .collect();
    let (mut draining, mut removed) = (0, false);
    for backend in stale {
        if in_use.contains(&(backend.addr, backend.port_be, backend.protocol)) {
            draining += 1;
        } else {
            maps.remove_backend(&backend)?;
            removed = true;
        }
    }
    if removed {
        maps.clear_reply_cache()?;
    }
    Ok(draining)
}

/// Sets the per-port service counts for every port that had or has a service.
fn write_ports<'a>(
    maps: &mut Maps,
    config: &Config,
    old: impl Iterator<Item = &'a Endpoint>,
) -> Result<(), MapsError> {
    let mut counts: HashMap<u16, u32> = old.map(|e| (e.port(), 0)).collect();
    for spec in &config.services {
        *counts.entry(spec.listen.port()).or_default() += 1;
    }
    for (port, count) in counts {
        maps.set_port_services(port, count)?;
    }
    Ok(())
}

/// Where the kernel holds the word (and whose salt) a release continues with: of the indexes its
/// existing services read, the one most services in the kernel read (a group's word, not that of
/// a service joining it: the group's first service may be leaving), the first one's in file
/// order on a tie; `None` for a release with no service in the kernel yet.
fn group_word_index(release: &Release<'_>, existing: &HashMap<Endpoint, Service>) -> Option<u32> {
    let reads: Vec<u32> = release
        .members
        .iter()
        .filter_map(|m| existing.get(&m.endpoint()))
        .map(|s| s.split)
        .collect();
    let votes = |at: u32| existing.values().filter(|s| s.split == at).count();
    reads
        .iter()
        .copied()
        .fold(None, |best: Option<u32>, at| match best {
            Some(b) if votes(b) >= votes(at) => Some(b),
            _ => Some(at),
        })
}

/// Removes a service: invisible first, then its state (its split word too, unless
/// `keep_word`: staying services of its release group still read it). Returns the flows
/// purged.
fn remove(
    maps: &mut Maps,
    endpoint: &Endpoint,
    id: u32,
    keep_word: bool,
) -> Result<usize, MapsError> {
    maps.remove_service(endpoint)?;
    for version in [Version::Blue, Version::Green] {
        maps.write_slots(id, version, &slots::build(&[]))?;
        maps.reset_counters(id, version)?;
    }
    maps.write_last_resort_slots(id, &slots::build(&[]))?;
    maps.reset_last_resort_counters(id)?;
    if !keep_word {
        maps.set_split(id, SplitWord::default())?;
    }
    for (backend, info) in maps.backends()? {
        if info.service_id == id {
            maps.remove_backend(&backend)?;
        }
    }
    let purged = maps.purge_flows(|_, flow| flow.service_id == id)?;
    maps.clear_flow_cache()?;
    Ok(purged)
}

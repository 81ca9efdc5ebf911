//! The two maps a split-word write needs, `SERVICES` and `SPLIT`, which `weight` and
//! `rollback` open alone: they write before they open anything else (opening and checking
//! every pin of a data plane takes about a millisecond; docs/benchmarks.md has where a
//! rollback command's time goes). `Maps` holds one of these for the same two maps.

use std::{path::Path, time::Instant};

use aya::maps::{Array, HashMap, MapData};
use splitter_common::{Endpoint, Service, SplitWord, maps as names};

use super::maps::{Maps, MapsError, access, is_missing_key, open_pin, typed};

pub struct SplitMaps {
    pub(super) services: HashMap<MapData, Endpoint, Service>,
    pub(super) split: Array<MapData, u32>,
}

impl SplitMaps {
    /// Opens `SERVICES` and `SPLIT` of the data plane pinned in `pin_dir`, checking their
    /// layouts.
    pub fn open_pinned(pin_dir: &Path) -> Result<Self, MapsError> {
        Ok(Self {
            services: typed(names::SERVICES, open_pin(pin_dir, names::SERVICES)?)?,
            split: typed(names::SPLIT, open_pin(pin_dir, names::SPLIT)?)?,
        })
    }

    /// The kernel's entry of the service at `endpoint`.
    pub fn service(&self, endpoint: &Endpoint) -> Result<Option<Service>, MapsError> {
        match self.services.get(endpoint, 0) {
            Ok(service) => Ok(Some(service)),
            Err(e) if is_missing_key(&e) => Ok(None),
            Err(e) => Err(access(names::SERVICES, "read a service")(e)),
        }
    }

    /// The split word at `id`.
    pub fn split(&self, id: u32) -> Result<SplitWord, MapsError> {
        Maps::check_id(id)?;
        self.split
            .get(&id, 0)
            .map(SplitWord)
            .map_err(access(names::SPLIT, "read the split word"))
    }

    /// Writes the split word: one map update. Returns how long the write took.
    pub fn set_split(
        &mut self,
        id: u32,
        word: SplitWord,
    ) -> Result<std::time::Duration, MapsError> {
        Maps::check_id(id)?;
        let started = Instant::now();
        self.split
            .set(id, word.0, 0)
            .map_err(access(names::SPLIT, "write the split word"))?;
        Ok(started.elapsed())
    }
}

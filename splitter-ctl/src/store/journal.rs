//! The deployment journal: what happened to each service's split, in SQLite in the state
//! directory. Events are appended, never updated; history, deployment frequency and mean time
//! to rollback are read from them. The CLI and the daemon both write (WAL mode, a busy
//! timeout); a write to the data plane always comes first, so a journal that cannot be written
//! never delays or blocks a rollback.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rusqlite::{Connection, OptionalExtension as _, params};
use serde::{Deserialize, Serialize};

/// The journal's file, inside `state_dir`.
pub const FILE: &str = "journal.db";
/// The schema this build writes (SQLite `user_version`).
const SCHEMA_VERSION: i64 = 2;
/// Samples a rollout keeps at most (two per judgement): the newest ones stay.
pub const MAX_SAMPLES_PER_ROLLOUT: i64 = 20_000;
/// How long samples are kept.
pub const SAMPLE_RETENTION_MS: i64 = 90 * 24 * 3_600_000;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot open the journal `{path}`")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "the journal `{path}` has schema version {found}; this build knows up to {SCHEMA_VERSION}"
    )]
    NewerSchema { path: PathBuf, found: i64 },
    #[error("cannot {what} in the journal")]
    Query {
        what: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot create the state directory `{path}`")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What an event records. Stored by name; new kinds are only ever added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// An operator's `weight`: the share of new connections changed.
    Weight,
    /// Every new connection sent to the live pool (manual or automatic).
    Rollback,
    /// The candidate made live.
    Promotion,
    /// A rollback drill.
    Drill,
    /// A drill of the last-resort pool.
    LastResortDrill,
    /// A rollout began.
    RolloutStarted,
    /// A rollout moved to its next share.
    Step,
    /// The gates judged a window.
    GateEvaluation,
    /// Someone changed the split during a rollout; the rollout paused.
    OperatorOverride,
    /// The connections of a version a rollback or a promotion left were drained (or reset).
    Drain,
    /// This node became the coordinator of a fleet rollout (it started it, or took it over).
    Coordinator,
}

impl EventKind {
    const ALL: [Self; 11] = [
        Self::Weight,
        Self::Rollback,
        Self::Promotion,
        Self::Drill,
        Self::LastResortDrill,
        Self::RolloutStarted,
        Self::Step,
        Self::GateEvaluation,
        Self::OperatorOverride,
        Self::Drain,
        Self::Coordinator,
    ];

    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Weight => "weight",
            Self::Rollback => "rollback",
            Self::Promotion => "promotion",
            Self::Drill => "drill",
            Self::LastResortDrill => "last_resort_drill",
            Self::RolloutStarted => "rollout_started",
            Self::Step => "step",
            Self::GateEvaluation => "gate_evaluation",
            Self::OperatorOverride => "operator_override",
            Self::Drain => "drain",
            Self::Coordinator => "coordinator",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// One version's window at one judgement of a rollout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub at_ms: i64,
    /// The candidate's share when the window was judged, in basis points.
    pub candidate_share_bp: u16,
    /// `blue` or `green`.
    pub version: String,
    /// `candidate` or `live`.
    pub role: String,
    pub requests: u64,
    pub errors: u64,
    pub p99_ms: Option<f64>,
}

/// An event to append.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    pub service: String,
    pub kind: EventKind,
    /// Who or what decided: `operator`, or the gate that fired.
    pub actor: String,
    pub reason: Option<String>,
    /// From the decision to the completed map write.
    pub decision_to_write_us: Option<u64>,
    /// From the decision to the first new connection on the live pool: written by versions
    /// before drains, which measure the last response of the version left instead; kept so
    /// that older entries read whole.
    pub decision_to_first_connection_us: Option<u64>,
    /// Anything else worth keeping (shares before and after, gate values).
    pub details: serde_json::Value,
}

/// Whether a journal exists in `state_dir` (reading a status never creates one).
#[must_use]
pub fn exists(state_dir: &Path) -> bool {
    state_dir.join(FILE).exists()
}

impl NewEvent {
    /// An event of `kind` by `actor` with nothing else to say yet (no reason, no times, no
    /// details): the fields to fill in follow with `..`.
    #[must_use]
    pub fn new(service: &str, kind: EventKind, actor: &str) -> Self {
        Self {
            service: service.to_owned(),
            kind,
            actor: actor.to_owned(),
            reason: None,
            decision_to_write_us: None,
            decision_to_first_connection_us: None,
            details: serde_json::json!({}),
        }
    }
}

/// An event as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: i64,
    /// Unix time in milliseconds.
    pub at_ms: i64,
    #[serde(flatten)]
    pub event: NewEvent,
    /// A rollback's drain: from the decision to the last response the version left began.
    #[serde(default)]
    pub decision_to_last_response_us: Option<u64>,
    /// A rollback's drain: from the decision to its last close.
    #[serde(default)]
    pub decision_to_last_close_us: Option<u64>,
}

/// An event from a row of `SELECT {EVENT_COLUMNS}`.
fn event_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    let kind: String = row.get(3)?;
    let details: String = row.get(8)?;
    let as_u64 = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok());
    Ok(Event {
        id: row.get(0)?,
        at_ms: row.get(1)?,
        event: NewEvent {
            service: row.get(2)?,
            kind: EventKind::parse(&kind).unwrap_or(EventKind::Weight),
            actor: row.get(4)?,
            reason: row.get(5)?,
            decision_to_write_us: as_u64(row.get(6)?),
            decision_to_first_connection_us: as_u64(row.get(7)?),
            details: serde_json::from_str(&details).unwrap_or(serde_json::Value::Null),
        },
        decision_to_last_response_us: as_u64(row.get(9)?),
        decision_to_last_close_us: as_u64(row.get(10)?),
    })
}

/// The columns `event_from_row` reads, in its order.
const EVENT_COLUMNS: &str = "id, at_ms, service, kind, actor, reason, decision_to_write_us, \
     decision_to_first_connection_us, details, decision_to_last_response_us, \
     decision_to_last_close_us";

/// Deployment frequency and mean time to rollback over a window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub since_ms: i64,
    pub days: f64,
    pub promotions: u64,
    pub rollbacks: u64,
    pub drills: u64,
    /// Promotions per day.
    pub deployment_frequency_per_day: f64,
    /// Mean of the rollbacks' decision-to-write times (µs); absent without rollbacks.
    pub mean_time_to_rollback_write_us: Option<f64>,
    /// Mean time to rollback: the rollbacks' times from the decision to the last response the
    /// version left began (µs), over those drained.
    pub mean_time_to_rollback_us: Option<f64>,
    /// Mean of the rollbacks' times from the decision to their drain's last close (µs).
    pub mean_time_to_rollback_last_close_us: Option<f64>,
}

pub struct Journal {
    connection: Connection,
}

/// Now, in Unix milliseconds.
#[must_use]
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Journal {
    /// Opens (creating when missing) the journal in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self, JournalError> {
        std::fs::create_dir_all(state_dir).map_err(|source| JournalError::StateDir {
            path: state_dir.to_owned(),
            source,
        })?;
        let path = state_dir.join(FILE);
        let open = |source| JournalError::Open {
            path: path.clone(),
            source,
        };
        let connection = Connection::open(&path).map_err(open)?;
        connection
            .busy_timeout(Duration::from_secs(5))
            .map_err(open)?;
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(open)?;
        let version: i64 = connection
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(open)?;
        if version > SCHEMA_VERSION {
            return Err(JournalError::NewerSchema {
                path,
                found: version,
            });
        }
        if version < 1 {
            connection
                .execute_batch(
                    "BEGIN;
                     CREATE TABLE IF NOT EXISTS events (
                         id INTEGER PRIMARY KEY AUTOINCREMENT,
                         at_ms INTEGER NOT NULL,
                         service TEXT NOT NULL,
                         kind TEXT NOT NULL,
                         actor TEXT NOT NULL,
                         reason TEXT,
                         decision_to_write_us INTEGER,
                         decision_to_first_connection_us INTEGER,
                         details TEXT NOT NULL
                     );
                     CREATE INDEX IF NOT EXISTS events_by_service ON events (service, at_ms);
                     PRAGMA user_version = 1;
                     COMMIT;",
                )
                .map_err(open)?;
        }
        if version < 2 {
            // Rollouts in progress, one row per service, so a restarted daemon resumes them.
            connection
                .execute_batch(
                    "BEGIN;
                     CREATE TABLE IF NOT EXISTS active_rollouts (
                         service TEXT PRIMARY KEY,
                         state TEXT NOT NULL
                     );
                     PRAGMA user_version = 2;
                     COMMIT;",
                )
                .map_err(open)?;
        }
        // A rollback's drain times: added columns that older builds leave alone (they name the
        // columns they read and write), so no new schema version either.
        for column in ["decision_to_last_response_us", "decision_to_last_close_us"] {
            let present: bool = connection
                .query_row(
                    "SELECT COUNT(*) FROM pragma_table_info('events') WHERE name = ?1",
                    params![column],
                    |row| row.get::<_, i64>(0),
                )
                .map(|n| n > 0)
                .map_err(open)?;
            if !present {
                connection
                    .execute_batch(&format!("ALTER TABLE events ADD COLUMN {column} INTEGER"))
                    .map_err(open)?;
            }
        }
        // Per-version metrics at each judgement of a rollout, for `report`. An added table that
        // older builds ignore: created whenever it is missing, without a new schema version,
        // so a journal opened by this build still opens in an older one.
        {
            connection
                .execute_batch(
                    "BEGIN;
                     CREATE TABLE IF NOT EXISTS samples (
                         rollout INTEGER NOT NULL,
                         at_ms INTEGER NOT NULL,
                         candidate_share_bp INTEGER NOT NULL,
                         version TEXT NOT NULL,
                         role TEXT NOT NULL,
                         requests INTEGER NOT NULL,
                         errors INTEGER NOT NULL,
                         p99_ms REAL
                     );
                     CREATE INDEX IF NOT EXISTS samples_by_rollout ON samples (rollout, at_ms);
                     CREATE INDEX IF NOT EXISTS samples_by_time ON samples (at_ms);
                     COMMIT;",
                )
                .map_err(open)?;
        }
        Ok(Self { connection })
    }

    /// Records one judgement's windows of rollout `rollout` (its `rollout_started` event id),
    /// then keeps the series bounded: the newest `MAX_SAMPLES_PER_ROLLOUT` of the rollout, and
    /// nothing older than `SAMPLE_RETENTION_MS`.
    pub fn record_samples(&self, rollout: i64, samples: &[Sample]) -> Result<(), JournalError> {
        self.record_samples_bounded(rollout, samples, MAX_SAMPLES_PER_ROLLOUT)
    }

    fn record_samples_bounded(
        &self,
        rollout: i64,
        samples: &[Sample],
        bound: i64,
    ) -> Result<(), JournalError> {
        let query = |what| move |source| JournalError::Query { what, source };
        // One transaction: one commit per judgement, not four.
        let transaction = self
            .connection
            .unchecked_transaction()
            .map_err(query("record samples"))?;
        for s in samples {
            transaction
                .execute(
                    "INSERT INTO samples (rollout, at_ms, candidate_share_bp, version, role, requests, errors, p99_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        rollout,
                        s.at_ms,
                        s.candidate_share_bp,
                        s.version,
                        s.role,
                        i64::try_from(s.requests).unwrap_or(i64::MAX),
                        i64::try_from(s.errors).unwrap_or(i64::MAX),
                        s.p99_ms
                    ],
                )
                .map_err(query("record a sample"))?;
        }
        // Past the bound, the oldest go: everything older than the bound-th newest.
        transaction
            .execute(
                "DELETE FROM samples WHERE rollout = ?1 AND rowid IN
                 (SELECT rowid FROM samples WHERE rollout = ?1 ORDER BY at_ms DESC, rowid DESC LIMIT -1 OFFSET ?2)",
                params![rollout, bound],
            )
            .map_err(query("bound the samples"))?;
        transaction
            .execute(
                "DELETE FROM samples WHERE at_ms < ?1",
                params![now_ms() - SAMPLE_RETENTION_MS],
            )
            .map_err(query("expire samples"))?;
        transaction.commit().map_err(query("record samples"))
    }

    /// The journal in `state_dir` if one was ever written there; `None` otherwise (a reader
    /// must not create one).
    pub fn open_existing(state_dir: &Path) -> Result<Option<Self>, JournalError> {
        if state_dir.join(FILE).exists() {
            Self::open(state_dir).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The samples of rollout `rollout`, oldest first.
    pub fn samples(&self, rollout: i64) -> Result<Vec<Sample>, JournalError> {
        let query = |what| move |source| JournalError::Query { what, source };
        let mut statement = self
            .connection
            .prepare(
                "SELECT at_ms, candidate_share_bp, version, role, requests, errors, p99_ms
                 FROM samples WHERE rollout = ?1 ORDER BY at_ms, rowid",
            )
            .map_err(query("read samples"))?;
        let rows = statement
            .query_map(params![rollout], |row| {
                Ok(Sample {
                    at_ms: row.get(0)?,
                    candidate_share_bp: row.get(1)?,
                    version: row.get(2)?,
                    role: row.get(3)?,
                    requests: u64::try_from(row.get::<_, i64>(4)?).unwrap_or(0),
                    errors: u64::try_from(row.get::<_, i64>(5)?).unwrap_or(0),
                    p99_ms: row.get(6)?,
                })
            })
            .map_err(query("read samples"))?;
        rows.collect::<Result<_, _>>()
            .map_err(query("read samples"))
    }

    /// When (Unix ms) `service` last had an event of `kind`.
    pub fn last_event_at(
        &self,
        service: &str,
        kind: EventKind,
    ) -> Result<Option<i64>, JournalError> {
        self.connection
            .query_row(
                "SELECT MAX(at_ms) FROM events WHERE service = ?1 AND kind = ?2",
                params![service, kind.name()],
                |row| row.get(0),
            )
            .map_err(|source| JournalError::Query {
                what: "find the last event of a kind",
                source,
            })
    }

    /// Completes rollback `id` with its drain: the times from the decision to the last response
    /// the version left began and to the drain's last close, and the drain's report in its
    /// details (`drain`).
    pub fn set_drain(
        &self,
        id: i64,
        last_response_us: Option<u64>,
        last_close_us: Option<u64>,
        report: &serde_json::Value,
    ) -> Result<(), JournalError> {
        let as_i64 = |us: Option<u64>| us.map(|us| i64::try_from(us).unwrap_or(i64::MAX));
        self.connection
            .execute(
                "UPDATE events SET decision_to_last_response_us = ?1,
                 decision_to_last_close_us = ?2, details = json_set(details, '$.drain', json(?3))
                 WHERE id = ?4",
                params![
                    as_i64(last_response_us),
                    as_i64(last_close_us),
                    report.to_string(),
                    id
                ],
            )
            .map(drop)
            .map_err(|source| JournalError::Query {
                what: "record a rollback's drain",
                source,
            })
    }

    /// The promotion of `service` that set its split as it is: when (Unix ms) and which version
    /// it made live. `None` when anything changed the split after the last promotion (a
    /// rollout, a step, a rollback, a weight, an override): the split is then theirs, and no
    /// promotion stands to be undone.
    pub fn standing_promotion(&self, service: &str) -> Result<Option<(i64, String)>, JournalError> {
        let row: Option<(String, i64, String)> = self
            .connection
            .query_row(
                "SELECT kind, at_ms, details FROM events WHERE service = ?1
                 AND kind IN (?2, ?3, ?4, ?5, ?6, ?7)
                 ORDER BY id DESC LIMIT 1",
                params![
                    service,
                    EventKind::Promotion.name(),
                    EventKind::Rollback.name(),
                    EventKind::Weight.name(),
                    EventKind::RolloutStarted.name(),
                    EventKind::Step.name(),
                    EventKind::OperatorOverride.name(),
                ],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()
            .map_err(|source| JournalError::Query {
                what: "find the last change of the split",
                source,
            })?;
        Ok(row.and_then(|(kind, at_ms, details)| {
            if kind != EventKind::Promotion.name() {
                return None;
            }
            let details: serde_json::Value = serde_json::from_str(&details).ok()?;
            Some((at_ms, details["live"].as_str()?.to_owned()))
        }))
    }

    /// The events of the rollout that event `id` started, oldest first: up to its promotion or
    /// rollback, or up to now while it runs. `None` when `id` is not a rollout's start.
    pub fn rollout_events(&self, id: i64) -> Result<Option<Vec<Event>>, JournalError> {
        let query = |what| move |source| JournalError::Query { what, source };
        let start: Option<String> = self
            .connection
            .query_row(
                "SELECT service FROM events WHERE id = ?1 AND kind = ?2",
                params![id, EventKind::RolloutStarted.name()],
                |row| row.get(0),
            )
            .optional()
            .map_err(query("find the rollout"))?;
        let Some(service) = start else {
            return Ok(None);
        };
        let mut statement = self
            .connection
            .prepare(&format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE service = ?1 AND id >= ?2 ORDER BY id"
            ))
            .map_err(query("read the rollout"))?;
        let rows = statement
            .query_map(params![service, id], event_from_row)
            .map_err(query("read the rollout"))?;
        let mut events = Vec::new();
        for row in rows {
            let event = row.map_err(query("read the rollout"))?;
            let kind = event.event.kind;
            // A later rollout of the same service is not part of this one.
            if kind == EventKind::RolloutStarted && event.id != id {
                break;
            }
            events.push(event);
            if matches!(kind, EventKind::Promotion | EventKind::Rollback) {
                break;
            }
        }
        Ok(Some(events))
    }

    /// Saves the state of `service`'s rollout in progress (JSON), replacing the last one.
    pub fn save_rollout(&self, service: &str, state: &str) -> Result<(), JournalError> {
        self.connection
            .execute(
                "INSERT INTO active_rollouts (service, state) VALUES (?1, ?2)
                 ON CONFLICT (service) DO UPDATE SET state = excluded.state",
                params![service, state],
            )
            .map_err(|source| JournalError::Query {
                what: "save a rollout's state",
                source,
            })?;
        Ok(())
    }

    /// Forgets `service`'s rollout state (the rollout ended).
    pub fn forget_rollout(&self, service: &str) -> Result<(), JournalError> {
        self.connection
            .execute(
                "DELETE FROM active_rollouts WHERE service = ?1",
                params![service],
            )
            .map_err(|source| JournalError::Query {
                what: "forget a rollout's state",
                source,
            })?;
        Ok(())
    }

    /// The saved rollouts in progress: (service, state).
    pub fn saved_rollouts(&self) -> Result<Vec<(String, String)>, JournalError> {
        let query = |source| JournalError::Query {
            what: "read the saved rollouts",
            source,
        };
        let mut statement = self
            .connection
            .prepare("SELECT service, state FROM active_rollouts ORDER BY service")
            .map_err(query)?;
        let rows = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(query)?;
        rows.collect::<Result<_, _>>().map_err(query)
    }

    /// Appends an event at `at_ms`; returns its id.
    pub fn record_at(&self, at_ms: i64, event: &NewEvent) -> Result<i64, JournalError> {
        let as_i64 = |v: Option<u64>| v.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
        self.connection
            .execute(
                "INSERT INTO events (at_ms, service, kind, actor, reason, decision_to_write_us, decision_to_first_connection_us, details)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    at_ms,
                    event.service,
                    event.kind.name(),
                    event.actor,
                    event.reason,
                    as_i64(event.decision_to_write_us),
                    as_i64(event.decision_to_first_connection_us),
                    event.details.to_string(),
                ],
            )
            .map_err(|source| JournalError::Query { what: "append an event", source })?;
        Ok(self.connection.last_insert_rowid())
    }

    /// Appends an event now.
    pub fn record(&self, event: &NewEvent) -> Result<i64, JournalError> {
        self.record_at(now_ms(), event)
    }

    /// The newest `limit` events, newest first; of one service when given.
    pub fn history(&self, service: Option<&str>, limit: usize) -> Result<Vec<Event>, JournalError> {
        self.history_without(service, limit, None)
    }

    /// Like `history`, leaving out the events of kind `except` (gate evaluations, say).
    pub fn history_without(
        &self,
        service: Option<&str>,
        limit: usize,
        except: Option<EventKind>,
    ) -> Result<Vec<Event>, JournalError> {
        let query = |what| move |source| JournalError::Query { what, source };
        let mut statement = self
            .connection
            .prepare(&format!(
                "SELECT {EVENT_COLUMNS} FROM events
                 WHERE (?1 IS NULL OR service = ?1) AND (?3 IS NULL OR kind != ?3)
                 ORDER BY at_ms DESC, id DESC LIMIT ?2"
            ))
            .map_err(query("read the history"))?;
        let rows = statement
            .query_map(
                params![
                    service,
                    i64::try_from(limit).unwrap_or(i64::MAX),
                    except.map(EventKind::name)
                ],
                event_from_row,
            )
            .map_err(query("read the history"))?;
        rows.collect::<Result<_, _>>()
            .map_err(query("read the history"))
    }

    /// Counts and means over the events since `since_ms`, up to `until_ms`.
    pub fn summary(&self, since_ms: i64, until_ms: i64) -> Result<Summary, JournalError> {
        let query = |what| move |source| JournalError::Query { what, source };
        let count = |kind: EventKind| -> Result<u64, JournalError> {
            self.connection
                .query_row(
                    "SELECT COUNT(*) FROM events WHERE kind = ?1 AND at_ms >= ?2 AND at_ms <= ?3",
                    params![kind.name(), since_ms, until_ms],
                    |row| row.get::<_, i64>(0),
                )
                .map(|n| u64::try_from(n).unwrap_or(0))
                .map_err(query("count events"))
        };
        let mean = |column: &str| -> Result<Option<f64>, JournalError> {
            self.connection
                .query_row(
                    &format!("SELECT AVG({column}) FROM events WHERE kind = 'rollback' AND {column} IS NOT NULL AND at_ms >= ?1 AND at_ms <= ?2"),
                    params![since_ms, until_ms],
                    |row| row.get::<_, Option<f64>>(0),
                )
                .optional()
                .map(Option::flatten)
                .map_err(query("average rollback times"))
        };
        let promotions = count(EventKind::Promotion)?;
        let days = ((until_ms - since_ms).max(1) as f64) / 86_400_000.0;
        Ok(Summary {
            since_ms,
            days,
            promotions,
            rollbacks: count(EventKind::Rollback)?,
            drills: count(EventKind::Drill)?,
            deployment_frequency_per_day: promotions as f64 / days,
            mean_time_to_rollback_write_us: mean("decision_to_write_us")?,
            mean_time_to_rollback_us: mean("decision_to_last_response_us")?,
            mean_time_to_rollback_last_close_us: mean("decision_to_last_close_us")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("splitter-journal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn event(service: &str, kind: EventKind, write_us: Option<u64>) -> NewEvent {
        NewEvent {
            reason: Some("test".to_owned()),
            decision_to_write_us: write_us,
            details: serde_json::json!({ "green_percent": 5 }),
            ..NewEvent::new(service, kind, "operator")
        }
    }

    #[test]
    fn events_come_back_newest_first_and_by_service() {
        let dir = temp_dir("history");
        let journal = Journal::open(&dir).expect("open");
        journal
            .record_at(1_000, &event("a", EventKind::Weight, None))
            .expect("record");
        journal
            .record_at(2_000, &event("b", EventKind::Rollback, Some(3)))
            .expect("record");
        journal
            .record_at(3_000, &event("a", EventKind::Rollback, Some(5)))
            .expect("record");
        let all = journal.history(None, 10).expect("history");
        assert_eq!(
            all.iter().map(|e| e.at_ms).collect::<Vec<_>>(),
            vec![3_000, 2_000, 1_000]
        );
        let a = journal.history(Some("a"), 10).expect("history");
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].event, event("a", EventKind::Rollback, Some(5)));
        assert_eq!(journal.history(None, 1).expect("history").len(), 1);
        // Reopening keeps everything (and does not migrate twice).
        drop(journal);
        assert_eq!(
            Journal::open(&dir)
                .expect("reopen")
                .history(None, 10)
                .expect("history")
                .len(),
            3
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_promotion_stands_until_anything_else_changes_the_split() {
        let dir = temp_dir("standing");
        let journal = Journal::open(&dir).expect("open");
        let promotion = NewEvent {
            details: serde_json::json!({ "live": "green" }),
            ..NewEvent::new("a", EventKind::Promotion, "gates")
        };
        assert_eq!(journal.standing_promotion("a").expect("query"), None);
        journal.record_at(1_000, &promotion).expect("record");
        // A drill or a gate evaluation does not change the split for good.
        journal
            .record_at(2_000, &NewEvent::new("a", EventKind::Drill, "schedule"))
            .expect("record");
        journal
            .record_at(2_500, &NewEvent::new("b", EventKind::Rollback, "gates"))
            .expect("record");
        assert_eq!(
            journal.standing_promotion("a").expect("query"),
            Some((1_000, "green".to_owned()))
        );
        for (at, kind) in [
            (3_000, EventKind::RolloutStarted),
            (4_000, EventKind::Rollback),
            (5_000, EventKind::Weight),
        ] {
            journal
                .record_at(at, &NewEvent::new("a", kind, "operator"))
                .expect("record");
            assert_eq!(
                journal.standing_promotion("a").expect("query"),
                None,
                "{kind:?}"
            );
        }
        journal.record_at(6_000, &promotion).expect("record");
        assert_eq!(
            journal.standing_promotion("a").expect("query"),
            Some((6_000, "green".to_owned()))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn summary_counts_deployments_and_averages_rollback_times_in_the_window() {
        let dir = temp_dir("summary");
        let journal = Journal::open(&dir).expect("open");
        let day = 86_400_000;
        for (at, kind, write) in [
            (0, EventKind::Promotion, None),
            (day, EventKind::Promotion, None),
            (day + 1, EventKind::Rollback, Some(4)),
            (2 * day, EventKind::Rollback, Some(8)),
            (2 * day, EventKind::Drill, Some(2)),
            (10 * day, EventKind::Promotion, None),
        ] {
            let id = journal
                .record_at(at, &event("a", kind, write))
                .expect("record");
            // The first rollback's drain completes its entry; the second was never drained.
            if at == day + 1 {
                journal
                    .set_drain(
                        id,
                        Some(3_000),
                        Some(5_000),
                        &serde_json::json!({"done": true}),
                    )
                    .expect("drain");
            }
        }
        let summary = journal.summary(0, 2 * day).expect("summary");
        assert_eq!(
            (summary.promotions, summary.rollbacks, summary.drills),
            (2, 2, 1)
        );
        assert!(
            (summary.deployment_frequency_per_day - 1.0).abs() < 1e-9,
            "{summary:?}"
        );
        assert_eq!(
            summary.mean_time_to_rollback_write_us,
            Some(6.0),
            "drills are not rollbacks"
        );
        assert_eq!(
            (
                summary.mean_time_to_rollback_us,
                summary.mean_time_to_rollback_last_close_us
            ),
            (Some(3_000.0), Some(5_000.0)),
            "over the drained rollbacks only"
        );
        let empty = journal.summary(3 * day, 4 * day).expect("summary");
        assert_eq!(
            (empty.rollbacks, empty.mean_time_to_rollback_write_us),
            (0, None)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rollout_state_is_replaced_per_service_survives_reopening_and_is_forgotten() {
        let dir = temp_dir("rollouts");
        let journal = Journal::open(&dir).expect("open");
        journal.save_rollout("a", "1").expect("save");
        journal.save_rollout("b", "2").expect("save");
        journal.save_rollout("a", "3").expect("replace");
        drop(journal);
        let journal = Journal::open(&dir).expect("reopen");
        assert_eq!(
            journal.saved_rollouts().expect("read"),
            [
                ("a".to_owned(), "3".to_owned()),
                ("b".to_owned(), "2".to_owned())
            ]
        );
        journal.forget_rollout("a").expect("forget");
        assert_eq!(journal.saved_rollouts().expect("read").len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_rollouts_events_end_at_its_promotion_or_rollback() {
        let dir = temp_dir("review");
        let journal = Journal::open(&dir).expect("open");
        let record =
            |service: &str, kind| journal.record(&event(service, kind, None)).expect("record");
        let first = record("a", EventKind::RolloutStarted);
        record("b", EventKind::Step);
        record("a", EventKind::Step);
        record("a", EventKind::Rollback);
        let second = record("a", EventKind::RolloutStarted);
        record("a", EventKind::Step);
        let kinds = |id| -> Vec<EventKind> {
            journal
                .rollout_events(id)
                .expect("read")
                .expect("a rollout")
                .iter()
                .map(|e| e.event.kind)
                .collect()
        };
        assert_eq!(
            kinds(first),
            [
                EventKind::RolloutStarted,
                EventKind::Step,
                EventKind::Rollback
            ]
        );
        assert_eq!(kinds(second), [EventKind::RolloutStarted, EventKind::Step]);
        assert_eq!(journal.rollout_events(first + 1).expect("read"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn samples_keep_the_newest_up_to_their_bound_and_a_version_2_journal_gains_the_table() {
        let dir =
            std::env::temp_dir().join(format!("splitter-journal-samples-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let journal = Journal::open(&dir).expect("journal");
        let sample = |at_ms| Sample {
            at_ms,
            candidate_share_bp: 100,
            version: "green".to_owned(),
            role: "candidate".to_owned(),
            requests: 10,
            errors: 1,
            p99_ms: Some(5.0),
        };
        let now = now_ms();
        for i in 0..6 {
            journal
                .record_samples_bounded(7, &[sample(now + i)], 4)
                .expect("record");
        }
        journal
            .record_samples_bounded(8, &[sample(now - SAMPLE_RETENTION_MS - 1)], 4)
            .expect("record");
        let kept: Vec<i64> = journal
            .samples(7)
            .expect("read")
            .iter()
            .map(|s| s.at_ms)
            .collect();
        assert_eq!(
            kept,
            (2..6).map(|i| now + i).collect::<Vec<_>>(),
            "the newest four"
        );
        assert!(journal.samples(8).expect("read").is_empty(), "expired");
        drop(journal);
        // A journal an older build wrote (schema 2, no samples table) opens, keeps its
        // version, and gains the table.
        let connection = Connection::open(dir.join(FILE)).expect("open");
        connection
            .execute_batch("DROP TABLE samples;")
            .expect("drop");
        drop(connection);
        let journal = Journal::open(&dir).expect("reopen");
        assert!(journal.samples(7).expect("read").is_empty());
        let version: i64 = journal
            .connection
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .expect("version");
        assert_eq!(version, 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_journal_from_a_newer_build_is_refused() {
        let dir = temp_dir("newer");
        std::fs::create_dir_all(&dir).expect("dir");
        let connection = Connection::open(dir.join(FILE)).expect("open");
        connection
            .pragma_update(None, "user_version", 7)
            .expect("version");
        drop(connection);
        let error = Journal::open(&dir).err().expect("refused").to_string();
        assert!(error.contains("schema version 7"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

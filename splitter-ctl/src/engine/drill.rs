//! Drills as decisions, without I/O: who asked, what is exercised, how long a drill watches,
//! and when each service's scheduled drill is due.

use std::{collections::HashMap, time::Duration};

/// How long a drill waits for the new connections it needs before it gives up (inconclusive).
pub const DRILL_LIMIT: Duration = Duration::from_secs(10);
/// How unlikely a drill's pass must be if the rollback had done nothing.
pub const NO_OP_PASS: f64 = 1e-3;
/// The fewest new connections a drill counts on the live pool before it passes.
pub const DRILL_MIN_CONNECTIONS: u64 = 5;

/// New connections that must all land on the live pool for a drill to pass, when the candidate
/// had `candidate_bp` (basis points) before the write: a rollback that did nothing would send
/// each to the live pool with probability 1 − share, so all `n` only with (1 − share)ⁿ, which
/// must be below `NO_OP_PASS`. At 30% that is 20 connections; at 1%, 688.
#[must_use]
pub fn connections_needed(candidate_bp: u16) -> u64 {
    let share = f64::from(candidate_bp.min(10_000)) / 10_000.0;
    if share <= 0.0 {
        return u64::MAX;
    }
    if share >= 1.0 {
        return DRILL_MIN_CONNECTIONS;
    }
    let n = (NO_OP_PASS.ln() / (1.0 - share).ln()).floor() as u64 + 1;
    n.max(DRILL_MIN_CONNECTIONS)
}
/// How often a drill reads the counters.
pub const DRILL_POLL: Duration = Duration::from_millis(1);

/// When each service's next scheduled drill is due.
#[derive(Debug, Default)]
pub struct DrillSchedule {
    /// By service: the period, and the next drill (Unix ms).
    next: HashMap<String, (Duration, i64)>,
}

impl DrillSchedule {
    /// The services (with their periods) whose drill is due at `now_ms`, each booked one period
    /// later. A service seen for the first time, or whose period changed, is booked one period
    /// after its last drill (`last_drill_ms`), or after now when it never had one. Services no
    /// longer scheduled are forgotten.
    pub fn due(
        &mut self,
        periods: &[(String, Duration)],
        last_drill_ms: impl Fn(&str) -> Option<i64>,
        now_ms: i64,
    ) -> Vec<String> {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        self.next
            .retain(|service, _| periods.iter().any(|(s, _)| s == service));
        let mut due = Vec::new();
        for (service, period) in periods {
            let booked = match self.next.get(service) {
                Some((p, next)) if p == period => *next,
                _ => last_drill_ms(service)
                    .unwrap_or(now_ms)
                    .saturating_add(ms(*period)),
            };
            if now_ms >= booked {
                due.push(service.clone());
                self.next.insert(
                    service.clone(),
                    (*period, now_ms.saturating_add(ms(*period))),
                );
            } else {
                self.next.insert(service.clone(), (*period, booked));
            }
        }
        due
    }
}

/// What a drill exercises (`rollback` or `last_resort` in the journal and the API; a report
/// written before drills had kinds was a rollback's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrillKind {
    /// A rollback: the candidate's share to 0, then back.
    #[default]
    Rollback,
    /// The last-resort pool: blue's and green's slot tables emptied, then rebuilt from health.
    LastResort,
}

impl DrillKind {
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Rollback => "rollback",
            Self::LastResort => "last_resort",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_no_op_rollback_passes_a_drill_less_than_once_in_a_thousand() {
        for bp in [1, 100, 1_000, 2_000, 3_000, 5_000, 9_000, 9_999] {
            let n = connections_needed(bp);
            let share = f64::from(bp) / 10_000.0;
            let no_op = (1.0 - share).powf(n as f64);
            assert!(no_op < NO_OP_PASS, "{bp} bp: {n} connections, {no_op}");
            // And no more than needed (beside the floor).
            let fewer = (1.0 - share).powf((n - 1) as f64);
            assert!(
                n == DRILL_MIN_CONNECTIONS || fewer >= NO_OP_PASS,
                "{bp} bp: {n}"
            );
        }
        assert_eq!(connections_needed(3_000), 20);
        assert_eq!(connections_needed(100), 688);
        assert_eq!(connections_needed(10_000), DRILL_MIN_CONNECTIONS);
        assert_eq!(connections_needed(0), u64::MAX);
    }

    #[test]
    fn scheduled_drills_come_one_period_after_the_last() {
        let hour = Duration::from_secs(3_600);
        let h = 3_600_000;
        let mut schedule = DrillSchedule::default();
        let periods = vec![("a".to_owned(), hour), ("b".to_owned(), hour)];
        // `a` was drilled 30 minutes ago; `b` never was.
        let last = |s: &str| (s == "a").then_some(10 * h - h / 2);
        assert!(schedule.due(&periods, last, 10 * h).is_empty());
        assert_eq!(schedule.due(&periods, last, 10 * h + h / 2), ["a"]);
        assert!(
            schedule.due(&periods, last, 10 * h + h / 2 + 1).is_empty(),
            "booked again one period later"
        );
        assert_eq!(schedule.due(&periods, last, 11 * h), ["b"]);
        assert_eq!(schedule.due(&periods, last, 11 * h + h / 2), ["a"]);
        // A new period is counted from the last drill; a service taken out is forgotten.
        let periods = vec![("a".to_owned(), 2 * hour)];
        let last = |_: &str| Some(11 * h + h / 2);
        assert!(schedule.due(&periods, last, 12 * h).is_empty());
        assert_eq!(schedule.due(&periods, last, 13 * h + h / 2), ["a"]);
        assert_eq!(schedule.next.len(), 1);
    }
}

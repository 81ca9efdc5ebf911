//! The rollout engine's decisions, with no I/O: judging the candidate over a window of kernel
//! counters and histograms, and moving a rollout through its steps. The daemon feeds it
//! snapshots and carries out what it decides (a share write, a promotion, a rollback).
//!
//! Rules it keeps, whatever the input:
//! - too few samples is inconclusive, and an inconclusive window holds the rollout: it never
//!   promotes on missing data;
//! - `failure_limit` failing windows in a row roll back; a passing window resets the count;
//! - a step advances only after its hold has passed and its last window passed.

use std::time::Instant;

use crate::{engine::gates::Judgement, model::plan::Plan};

/// What the daemon must do after an evaluation.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Nothing changes.
    Hold,
    /// Write the candidate's next share (basis points).
    Advance(u16),
    /// Make the candidate live.
    Promote,
    /// Send every new connection to the live pool.
    RollBack(String),
}

/// A rollout in progress.
#[derive(Clone, Debug, PartialEq)]
pub struct Rollout {
    pub plan: Plan,
    /// Index into `plan.steps` of the share in effect.
    pub step: usize,
    pub step_started: Instant,
    pub consecutive_failures: u32,
    pub done: bool,
}

impl Rollout {
    /// A rollout at its first step, which the daemon writes when it starts it.
    #[must_use]
    pub fn start(plan: Plan, now: Instant) -> Self {
        Self {
            plan,
            step: 0,
            step_started: now,
            consecutive_failures: 0,
            done: false,
        }
    }

    /// The candidate's share in effect.
    #[must_use]
    pub fn share(&self) -> u16 {
        self.plan.steps.get(self.step).copied().unwrap_or(0)
    }

    /// Whether the step is still in its warm-up, which the judgement leaves out (its window
    /// starts when the warm-up ends).
    #[must_use]
    pub fn warming_up(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.step_started) < self.plan.warmup
    }

    /// Moves the rollout on after a window was judged.
    pub fn on_judgement(&mut self, now: Instant, judgement: &Judgement) -> Decision {
        if self.done {
            return Decision::Hold;
        }
        match judgement {
            Judgement::Inconclusive(_) => Decision::Hold,
            Judgement::Fail(reasons) => {
                self.consecutive_failures += 1;
                if self.consecutive_failures >= self.plan.failure_limit.max(1) {
                    self.done = true;
                    Decision::RollBack(reasons.join("; "))
                } else {
                    Decision::Hold
                }
            }
            Judgement::Pass => {
                self.consecutive_failures = 0;
                if now.duration_since(self.step_started) < self.plan.hold {
                    return Decision::Hold;
                }
                if self.step + 1 >= self.plan.steps.len() {
                    self.done = true;
                    return Decision::Promote;
                }
                self.step += 1;
                self.step_started = now;
                Decision::Advance(self.share())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::plan::Gates;

    fn plan(steps: &[u16]) -> Plan {
        Plan {
            steps: steps.to_vec(),
            hold: Duration::from_secs(10),
            warmup: Duration::ZERO,
            interval: Duration::from_secs(1),
            gates: Gates::default(),
            failure_limit: 2,
            prometheus: None,
            promql: Vec::new(),
            l4_only: false,
            latency: crate::model::plan::JudgedLatency::default(),
        }
    }

    #[test]
    fn each_step_starts_with_its_warm_up() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut rollout = Rollout::start(
            Plan {
                warmup: Duration::from_secs(3),
                ..plan(&[100, 10_000])
            },
            t0,
        );
        assert!(rollout.warming_up(at(2)));
        assert!(!rollout.warming_up(at(3)));
        assert_eq!(
            rollout.on_judgement(at(10), &Judgement::Pass),
            Decision::Advance(10_000)
        );
        assert!(rollout.warming_up(at(12)), "the next step warms up again");
        assert!(!rollout.warming_up(at(13)));
        assert!(
            !Rollout::start(plan(&[10_000]), t0).warming_up(t0),
            "no warm-up by default"
        );
    }

    #[test]
    fn a_rollout_advances_after_each_hold_and_promotes_at_the_end() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut rollout = Rollout::start(plan(&[100, 5_000, 10_000]), t0);
        assert_eq!(rollout.share(), 100);
        assert_eq!(
            rollout.on_judgement(at(5), &Judgement::Pass),
            Decision::Hold,
            "still holding"
        );
        assert_eq!(
            rollout.on_judgement(at(10), &Judgement::Pass),
            Decision::Advance(5_000)
        );
        assert_eq!(
            rollout.on_judgement(at(15), &Judgement::Pass),
            Decision::Hold
        );
        assert_eq!(
            rollout.on_judgement(at(20), &Judgement::Pass),
            Decision::Advance(10_000)
        );
        assert_eq!(
            rollout.on_judgement(at(30), &Judgement::Pass),
            Decision::Promote
        );
        assert!(rollout.done);
        assert_eq!(
            rollout.on_judgement(at(40), &Judgement::Pass),
            Decision::Hold,
            "nothing after the end"
        );
    }

    #[test]
    fn missing_data_never_promotes() {
        let t0 = Instant::now();
        let mut rollout = Rollout::start(plan(&[10_000]), t0);
        for s in 0..1_000 {
            let decision = rollout.on_judgement(
                t0 + Duration::from_secs(s * 60),
                &Judgement::Inconclusive("no traffic".to_owned()),
            );
            assert_eq!(decision, Decision::Hold);
        }
        assert!(!rollout.done);
    }

    #[test]
    fn consecutive_failures_roll_back_and_a_pass_resets_the_count() {
        let t0 = Instant::now();
        let fail = Judgement::Fail(vec!["error rate 20.00% > 1.00%".to_owned()]);
        let mut rollout = Rollout::start(plan(&[100, 10_000]), t0);
        assert_eq!(rollout.on_judgement(t0, &fail), Decision::Hold);
        assert_eq!(
            rollout.on_judgement(t0, &Judgement::Pass),
            Decision::Hold,
            "the pass resets the count"
        );
        assert_eq!(rollout.on_judgement(t0, &fail), Decision::Hold);
        assert_eq!(
            rollout.on_judgement(t0, &Judgement::Inconclusive("quiet".to_owned())),
            Decision::Hold,
            "inconclusive neither resets nor counts"
        );
        assert_eq!(
            rollout.on_judgement(t0, &fail),
            Decision::RollBack("error rate 20.00% > 1.00%".to_owned())
        );
        assert!(rollout.done);
    }
}

//! Which signals judge a rollout. The kernel gates read requests and calls (HTTP/1.x responses,
//! HTTP/2 and gRPC calls); a service whose requests the kernel cannot read (`l7 = "opaque"`:
//! TLS) has none, so its rollout needs PromQL gates, or the operator's acknowledgement that
//! only L4 signals judge it (`l4_only`): then the kernel gates count connections as the
//! samples, resets and refused handshakes as the errors, and time handshakes. A gate never
//! judges what it cannot see.

use splitter_common::{VersionStats, l7::PROTOCOLS};

use crate::{
    engine::gates::{GateReading, GateState},
    model::{l7::L7, plan::Plan},
};

/// Whether the kernel reads none of a service's requests: it is set to `opaque`, or every
/// connection it carried so far (`protocols`, by what the client's first bytes showed) was one
/// its `l7` setting does not read. Before any connection, a readable setting is given the
/// benefit of the doubt.
#[must_use]
pub fn unreadable(l7: L7, protocols: [u64; PROTOCOLS]) -> bool {
    let [http1, h2, tls, other] = protocols;
    let readable = match l7 {
        L7::Opaque => return true,
        L7::Auto => http1 + h2,
        L7::Http1 => http1,
        L7::Grpc | L7::Http2 => h2,
    };
    readable == 0 && http1 + h2 + tls + other > 0
}

/// The connections by protocol of a service's versions, summed.
#[must_use]
pub fn protocols_of<'a>(versions: impl IntoIterator<Item = &'a VersionStats>) -> [u64; PROTOCOLS] {
    versions
        .into_iter()
        .fold([0; PROTOCOLS], |mut sum, counters| {
            for (total, n) in sum.iter_mut().zip(counters.protocols) {
                *total += n;
            }
            sum
        })
}

/// Why a rollout may not start: the unreadable services of the release, when nothing else
/// would judge them (no PromQL gate, no `l4_only`). `None` when the plan can judge the release.
#[must_use]
pub fn refused_blind<'a>(plan: &Plan, unreadable: &'a [String]) -> Option<&'a [String]> {
    (!plan.l4_only && plan.promql.is_empty() && !unreadable.is_empty()).then_some(unreadable)
}

/// The kernel's reading of a release whose every service it cannot read, under a plan without
/// `l4_only`: none when PromQL gates judge it; otherwise a gate that holds the rollout (a
/// service became unreadable after the start, by its traffic or a reload), never one that lets
/// it pass on nothing.
#[must_use]
pub fn blind_readings(plan: &Plan) -> Vec<GateReading> {
    if !plan.promql.is_empty() {
        return Vec::new();
    }
    vec![GateReading {
        gate: "l7".to_owned(),
        limit: "requests the kernel can read".to_owned(),
        value: None,
        state: GateState::Waiting(Some(
            "hold: the kernel reads none of this release's requests (TLS or other); abort, and start again with PromQL gates or --l4-only".to_owned(),
        )),
        numbers: Vec::new(),
        evidence: None,
    }]
}

/// The counters as an L4-only plan's gates read them: connections are the samples, resets and
/// refused handshakes the errors (`errors_and_events` adds those two to the samples: they are
/// taken out of the connections first, so each connection counts once); nothing of the
/// requests.
#[must_use]
pub fn l4_view(counters: &VersionStats) -> VersionStats {
    let failed = counters.backend_resets + counters.refused_handshakes;
    VersionStats {
        responses: counters.new_flows.saturating_sub(failed),
        http_status: [0; 6],
        call_errors: [0; splitter_common::l7::CALL_ERRORS],
        ..*counters
    }
}

/// What judges a rollout of a release whose `unreadable` services are named, for `rollout
/// status`: one line per kind of signal.
#[must_use]
pub fn judged_by(plan: &Plan, unreadable: &[String]) -> Vec<String> {
    let kernel = if plan.l4_only {
        "kernel, L4 only: connections, resets, refused handshakes, handshake time".to_owned()
    } else {
        let mut line = format!(
            "kernel: requests and calls (HTTP/1.x responses, HTTP/2 and gRPC calls): errors, {}",
            plan.latency.describe()
        );
        if !unreadable.is_empty() {
            line.push_str(&format!(
                "; nothing of {} (it reads none of their requests)",
                unreadable.join(", ")
            ));
        }
        line
    };
    let mut signals = vec![kernel];
    if !plan.promql.is_empty() {
        let names: Vec<&str> = plan.promql.iter().map(|g| g.name.as_str()).collect();
        signals.push(format!("PromQL: {}", names.join(", ")));
    }
    signals
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::promql::PromqlGate;

    #[test]
    fn an_unreadable_service_needs_promql_gates_or_the_l4_acknowledgement() {
        let unreadable = vec!["tls".to_owned()];
        let plan = Plan::default();
        assert_eq!(refused_blind(&plan, &unreadable), Some(&unreadable[..]));
        assert_eq!(refused_blind(&plan, &[]), None);
        let l4 = Plan {
            l4_only: true,
            ..Plan::default()
        };
        assert_eq!(refused_blind(&l4, &unreadable), None);
        let promql = Plan {
            promql: vec![PromqlGate::parse("errors:rate(x[1m])<=0.01").expect("gate")],
            ..Plan::default()
        };
        assert_eq!(refused_blind(&promql, &unreadable), None);
        assert!(judged_by(&promql, &unreadable)[0].contains("nothing of tls"));
        assert!(judged_by(&promql, &unreadable)[1].contains("errors"));
        assert!(judged_by(&l4, &unreadable)[0].contains("L4 only"));
        // Nothing judging an unreadable release holds it; PromQL gates judge it alone.
        assert!(matches!(
            blind_readings(&plan)[..],
            [GateReading {
                state: GateState::Waiting(Some(_)),
                ..
            }]
        ));
        assert!(blind_readings(&promql).is_empty());
    }

    #[test]
    fn what_is_unreadable_follows_the_setting_and_what_was_seen() {
        assert!(unreadable(L7::Opaque, [0; 4]));
        assert!(!unreadable(L7::Auto, [0; 4]), "no connection yet");
        assert!(unreadable(L7::Auto, [0, 0, 5, 1]));
        assert!(!unreadable(L7::Auto, [1, 0, 5, 1]));
        assert!(
            unreadable(L7::Grpc, [7, 0, 0, 0]),
            "HTTP/1 on a gRPC service is not read"
        );
        assert!(!unreadable(L7::Http2, [0, 3, 9, 0]));
        assert!(unreadable(L7::Http1, [0, 3, 0, 0]));
    }

    #[test]
    fn the_l4_view_counts_each_connection_once_and_its_failures() {
        let counters = VersionStats {
            new_flows: 40,
            responses: 1000,
            http_status: [0, 0, 900, 0, 0, 100],
            call_errors: [5, 0, 0, 0, 0],
            backend_resets: 3,
            refused_handshakes: 1,
            ..VersionStats::default()
        };
        assert_eq!(l4_view(&counters).errors_and_events(), (4, 40));
        assert_eq!(counters.errors_and_events(), (109, 1004));
    }
}

//! Which signals judge a rollout. The kernel gates read requests and calls (HTTP/1.x responses,
//! HTTP/2 and gRPC calls); a service whose requests the kernel cannot read (`l7 = "opaque"`:
//! TLS) has none, so its rollout needs PromQL gates, or the operator's acknowledgement that
//! only L4 signals judge it (`l4_only`): then the kernel gates count connections as the
//! samples, resets and refused handshakes as the errors, and time handshakes. A gate never
//! judges what it cannot see.

use splitter_common::VersionStats;

use crate::model::{l7::L7, plan::Plan};

/// Why a rollout may not start: the services of the release whose requests the kernel cannot
/// read, when nothing else would judge them. `None` when the plan can judge the release.
#[must_use]
pub fn blind_services<'a>(
    plan: &Plan,
    members: impl IntoIterator<Item = (&'a str, L7)>,
) -> Option<Vec<&'a str>> {
    if plan.l4_only || !plan.promql.is_empty() {
        return None;
    }
    let blind: Vec<&str> = members
        .into_iter()
        .filter(|(_, l7)| *l7 == L7::Opaque)
        .map(|(name, _)| name)
        .collect();
    (!blind.is_empty()).then_some(blind)
}

/// The counters as an L4-only plan's gates read them: connections are the samples (in
/// `responses`), resets and refused handshakes the errors; nothing of the requests.
#[must_use]
pub fn l4_view(counters: &VersionStats) -> VersionStats {
    VersionStats {
        responses: counters.new_flows,
        http_status: [0; 6],
        call_errors: [0; splitter_common::l7::CALL_ERRORS],
        ..*counters
    }
}

/// What judges a rollout of a release (`opaque` when a service of it is), for `rollout
/// status`: one line per kind of signal.
#[must_use]
pub fn judged_by(plan: &Plan, opaque: bool) -> Vec<String> {
    let mut signals = vec![if opaque && !plan.l4_only {
        "kernel: nothing (l7 = \"opaque\": it reads none of the requests)".to_owned()
    } else if plan.l4_only {
        "kernel, L4 only: connections, resets, refused handshakes, handshake time".to_owned()
    } else {
        format!(
            "kernel: requests and calls (HTTP/1.x responses, HTTP/2 and gRPC calls): errors, {}",
            plan.latency.describe()
        )
    }];
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
    fn an_opaque_service_needs_promql_gates_or_the_l4_acknowledgement() {
        let members = [("web", L7::Auto), ("tls", L7::Opaque)];
        let plan = Plan::default();
        assert_eq!(blind_services(&plan, members), Some(vec!["tls"]));
        let l4 = Plan {
            l4_only: true,
            ..Plan::default()
        };
        assert_eq!(blind_services(&l4, members), None);
        let promql = Plan {
            promql: vec![PromqlGate::parse("errors:rate(x[1m])<=0.01").expect("gate")],
            ..Plan::default()
        };
        assert_eq!(blind_services(&promql, members), None);
        assert!(judged_by(&promql, true)[0].contains("nothing"));
        assert!(judged_by(&promql, true)[1].contains("errors"));
        assert!(judged_by(&l4, true)[0].contains("L4 only"));
        assert_eq!(blind_services(&plan, [("grpc", L7::Grpc)]), None);
    }

    #[test]
    fn the_l4_view_counts_connections_and_their_failures_only() {
        let counters = VersionStats {
            new_flows: 40,
            responses: 1000,
            http_status: [0, 0, 900, 0, 0, 100],
            call_errors: [5, 0, 0, 0],
            backend_resets: 3,
            refused_handshakes: 1,
            ..VersionStats::default()
        };
        assert_eq!(l4_view(&counters).errors_and_events(), (4, 44));
        assert_eq!(counters.errors_and_events(), (109, 1004));
    }
}

//! Whether a canary's clients look like the live pool's. A canary that only staff networks,
//! one region or one customer reach says little about the rest: the daemon compares how the
//! candidate's clients spread over network prefixes (/16 for IPv4, /48 for IPv6 by default) with
//! how the live pool's do, reports the divergence in `status` and in metrics, and the rollout
//! gate `max_divergence` holds a step while the canary is not representative.
//!
//! The clients are the source addresses of the flow table's entries that are open, or were
//! created within `RECENT`: the connections of now and the last minute, closed or not. Each
//! client counts once per version. The divergence is the total variation distance between the
//! two spreads: half the sum, over prefixes, of the difference of the shares of clients in it.
//! 0 is the same spread, 1 no prefix in common.

use std::{
    collections::{BTreeMap, HashSet},
    net::IpAddr,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use splitter_common::{Addr, Flow, FlowKey, Version, flow_closed, split::FULL_SHARE_BP};

use crate::{
    engine::gates::{GateReading, GateState},
    model::{addr::addr_ip, config::PrefixLengths},
};

/// How far back closed connections still count.
pub const RECENT: Duration = Duration::from_secs(60);
/// Candidate clients the gate needs before it judges: with fewer, the spread is mostly chance.
pub const MIN_CANARY_CLIENTS: usize = 10;
/// Prefixes listed in a report as those that differ most.
const MOST_DIFFERENT: usize = 5;

/// How the candidate's clients spread over prefixes, beside the live pool's.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Spread {
    pub prefix_v4: u8,
    pub prefix_v6: u8,
    pub candidate_clients: usize,
    pub live_clients: usize,
    /// From 0 (the same spread) to 1 (no prefix in common); absent while either version has
    /// no client.
    pub divergence: Option<f64>,
    /// The prefixes whose shares differ most, most first.
    pub most_different: Vec<PrefixShares>,
}

/// One prefix's share of each version's clients, in percent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PrefixShares {
    pub prefix: String,
    pub candidate_percent: f64,
    pub live_percent: f64,
}

/// The prefix of `addr` (IPv4-mapped for IPv4) of the given lengths, as text.
fn prefix_of(addr: &Addr, lengths: PrefixLengths) -> String {
    let (ip, bits) = match addr_ip(addr) {
        IpAddr::V4(v4) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(lengths.v4.min(32)))
                .unwrap_or(0);
            (
                IpAddr::V4((u32::from(v4) & mask).into()),
                lengths.v4.min(32),
            )
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(lengths.v6.min(128)))
                .unwrap_or(0);
            (
                IpAddr::V6((u128::from(v6) & mask).into()),
                lengths.v6.min(128),
            )
        }
    };
    format!("{ip}/{bits}")
}

/// The spread of the clients of services `ids` on `candidate` and on the other version, from
/// the flow table (`flows`) at `now_ns` on the kernel's clock.
#[must_use]
pub fn spread(
    flows: &[(FlowKey, Flow)],
    ids: &[u32],
    candidate: Version,
    lengths: PrefixLengths,
    now_ns: u64,
) -> Spread {
    let recent = u64::try_from(RECENT.as_nanos()).unwrap_or(u64::MAX);
    let mut clients: [HashSet<Addr>; 2] = [HashSet::new(), HashSet::new()];
    for (key, flow) in flows {
        let counts = ids.contains(&flow.service_id)
            && flow.version <= Version::Green as u8
            && (!flow_closed(flow.state) || now_ns.saturating_sub(flow.created_ns) <= recent);
        if counts {
            clients[usize::from(flow.version)].insert(key.src_addr);
        }
    }
    let [candidate_clients, live_clients] = [
        &clients[candidate as usize],
        &clients[candidate.other() as usize],
    ];
    // Per prefix: (candidate clients, live clients).
    let mut prefixes: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for addr in candidate_clients {
        prefixes.entry(prefix_of(addr, lengths)).or_default().0 += 1;
    }
    for addr in live_clients {
        prefixes.entry(prefix_of(addr, lengths)).or_default().1 += 1;
    }
    let (nc, nl) = (candidate_clients.len(), live_clients.len());
    let share = |n: usize, of: usize| if of == 0 { 0.0 } else { n as f64 / of as f64 };
    let mut shares: Vec<PrefixShares> = prefixes
        .into_iter()
        .map(|(prefix, (c, l))| PrefixShares {
            prefix,
            candidate_percent: 100.0 * share(c, nc),
            live_percent: 100.0 * share(l, nl),
        })
        .collect();
    let divergence = (nc > 0 && nl > 0).then(|| {
        shares
            .iter()
            .map(|s| (s.candidate_percent - s.live_percent).abs())
            .sum::<f64>()
            / 200.0
    });
    shares.sort_by(|a, b| {
        let gap = |s: &PrefixShares| (s.candidate_percent - s.live_percent).abs();
        gap(b)
            .total_cmp(&gap(a))
            .then_with(|| a.prefix.cmp(&b.prefix))
    });
    shares.truncate(MOST_DIFFERENT);
    Spread {
        prefix_v4: lengths.v4,
        prefix_v6: lengths.v6,
        candidate_clients: nc,
        live_clients: nl,
        divergence,
        most_different: shares,
    }
}

/// The `max_divergence` gate: holds while the canary's spread diverges more than `max` from the
/// live pool's, or cannot be compared (no live client, fewer than `MIN_CANARY_CLIENTS` candidate
/// clients). At a share of 100% the candidate serves every new client, so there is nothing left
/// to compare and the gate passes.
#[must_use]
pub fn gate(max: f64, spread: &Spread, candidate_share_bp: u16) -> GateReading {
    GateReading {
        gate: "max_divergence".to_owned(),
        limit: format!("≤ {max:.2}"),
        value: spread.divergence.map(|d| format!("{d:.2}")),
        numbers: std::iter::once(("limit_divergence", max))
            .chain(spread.divergence.map(|d| ("value_divergence", d)))
            .collect(),
        state: state(max, spread, candidate_share_bp),
        evidence: None,
    }
}

/// The gate never fails: a canary that is not representative holds the step.
fn state(max: f64, spread: &Spread, candidate_share_bp: u16) -> GateState {
    if candidate_share_bp >= FULL_SHARE_BP {
        return GateState::Pass;
    }
    if spread.candidate_clients < MIN_CANARY_CLIENTS {
        return GateState::Waiting(Some(format!(
            "representativeness: {} candidate clients, fewer than the {MIN_CANARY_CLIENTS} it takes to judge their spread",
            spread.candidate_clients
        )));
    }
    match spread.divergence {
        None => GateState::Waiting(Some(format!(
            "representativeness: {} candidate and {} live clients, nothing to compare",
            spread.candidate_clients, spread.live_clients
        ))),
        Some(d) if d > max => {
            let worst = spread.most_different.first().map_or_else(String::new, |p| {
                format!(
                    " ({} is {:.0}% of the candidate's clients, {:.0}% of the live pool's)",
                    p.prefix, p.candidate_percent, p.live_percent
                )
            });
            GateState::Waiting(Some(format!(
                "the canary is not representative: divergence {d:.2} > {max}{worst}"
            )))
        }
        Some(_) => GateState::Pass,
    }
}

#[cfg(test)]
mod tests {
    use splitter_common::{FLOW_FIN_BACKEND, FLOW_FIN_CLIENT, ipv4_mapped};

    use super::*;
    use crate::engine::gates::Judgement;

    fn judge(max: f64, spread: &Spread, share: u16) -> Judgement {
        Judgement::of(&[gate(max, spread, share)])
    }

    fn flow(src: [u8; 4], port: u16, version: Version, service_id: u32) -> (FlowKey, Flow) {
        (
            FlowKey {
                src_addr: ipv4_mapped(src),
                src_port_be: port.to_be(),
                ..FlowKey::default()
            },
            Flow {
                version: version as u8,
                service_id,
                created_ns: 1_000,
                ..Flow::default()
            },
        )
    }

    const NOW: u64 = 2_000;

    #[test]
    fn the_same_spread_is_zero_and_disjoint_prefixes_are_one() {
        let lengths = PrefixLengths::default();
        // Two clients per /16 on each version, in two /16s.
        let same: Vec<_> = [
            ([10, 1, 0, 1], Version::Green),
            ([10, 1, 0, 2], Version::Blue),
            ([10, 2, 0, 1], Version::Green),
            ([10, 2, 0, 2], Version::Blue),
        ]
        .into_iter()
        .map(|(a, v)| flow(a, 1, v, 0))
        .collect();
        let s = spread(&same, &[0], Version::Green, lengths, NOW);
        assert_eq!((s.candidate_clients, s.live_clients), (2, 2));
        assert_eq!(s.divergence, Some(0.0));
        let apart: Vec<_> = [
            ([10, 1, 0, 1], Version::Green),
            ([10, 2, 0, 1], Version::Blue),
        ]
        .into_iter()
        .map(|(a, v)| flow(a, 1, v, 0))
        .collect();
        let s = spread(&apart, &[0], Version::Green, lengths, NOW);
        assert_eq!(s.divergence, Some(1.0));
        assert_eq!(s.most_different[0].prefix, "10.1.0.0/16");
        assert_eq!(s.most_different[0].candidate_percent, 100.0);
        // A /8 puts both in one prefix.
        let wide = PrefixLengths { v4: 8, v6: 48 };
        assert_eq!(
            spread(&apart, &[0], Version::Green, wide, NOW).divergence,
            Some(0.0)
        );
    }

    #[test]
    fn clients_count_once_per_version_and_only_their_services_recent_flows() {
        let lengths = PrefixLengths::default();
        let mut flows: Vec<_> = (0..10)
            .map(|port| flow([10, 1, 0, 1], port, Version::Green, 0))
            .collect();
        flows.push(flow([10, 2, 0, 1], 1, Version::Blue, 0));
        flows.push(flow([10, 3, 0, 1], 1, Version::Blue, 7)); // another service
        let mut last_resort = flow([10, 4, 0, 1], 1, Version::Blue, 0);
        last_resort.1.version = splitter_common::LAST_RESORT;
        flows.push(last_resort);
        let mut old = flow([10, 5, 0, 1], 1, Version::Blue, 0);
        old.1.state = FLOW_FIN_CLIENT | FLOW_FIN_BACKEND;
        old.1.created_ns = 0;
        flows.push(old);
        let far = NOW + u64::try_from(RECENT.as_nanos()).expect("fits");
        let s = spread(&flows, &[0], Version::Green, lengths, far);
        assert_eq!((s.candidate_clients, s.live_clients), (1, 1));
        // The same closed flow counts while it is recent.
        let s = spread(&flows, &[0], Version::Green, lengths, NOW);
        assert_eq!(s.live_clients, 2);
        // A group's services count together.
        let s = spread(&flows, &[0, 7], Version::Green, lengths, far);
        assert_eq!(s.live_clients, 2);
    }

    #[test]
    fn ipv6_clients_group_by_their_48() {
        let mut a = flow([0; 4], 1, Version::Green, 0);
        a.0.src_addr = "2001:2:0:1::1"
            .parse::<std::net::Ipv6Addr>()
            .expect("v6")
            .octets();
        let mut b = a;
        b.0.src_addr = "2001:2:0:2::1"
            .parse::<std::net::Ipv6Addr>()
            .expect("v6")
            .octets();
        b.1.version = Version::Blue as u8;
        let s = spread(&[a, b], &[0], Version::Green, PrefixLengths::default(), NOW);
        assert_eq!(s.divergence, Some(0.0), "one /48");
        let s = spread(
            &[a, b],
            &[0],
            Version::Green,
            PrefixLengths { v4: 16, v6: 64 },
            NOW,
        );
        assert_eq!(s.divergence, Some(1.0), "two /64s");
    }

    #[test]
    fn the_gate_holds_a_skewed_or_empty_canary_and_passes_at_full_share() {
        let lengths = PrefixLengths::default();
        // Twelve staff clients on the candidate, twelve others on the live pool.
        let apart: Vec<_> = (1..=12)
            .flat_map(|h| {
                [
                    flow([10, 1, 0, h], 1, Version::Green, 0),
                    flow([10, 2, 0, h], 1, Version::Blue, 0),
                ]
            })
            .collect();
        let s = spread(&apart, &[0], Version::Green, lengths, NOW);
        match judge(0.3, &s, 2_500) {
            Judgement::Inconclusive(why) => {
                assert!(
                    why.contains("not representative: divergence 1.00 > 0.3"),
                    "{why}"
                );
                assert!(why.contains("10.1.0.0/16 is 100%"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(judge(1.0, &s, 2_500), Judgement::Pass);
        assert_eq!(judge(0.3, &s, FULL_SHARE_BP), Judgement::Pass);
        let no_live: Vec<_> = apart.iter().copied().step_by(2).collect();
        let none = spread(&no_live, &[0], Version::Green, lengths, NOW);
        assert!(matches!(
            judge(0.3, &none, 2_500),
            Judgement::Inconclusive(_)
        ));
        let few = spread(&apart[..4], &[0], Version::Green, lengths, NOW);
        match judge(1.0, &few, 2_500) {
            Judgement::Inconclusive(why) => assert!(why.contains("2 candidate clients"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}

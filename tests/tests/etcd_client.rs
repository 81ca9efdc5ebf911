//! Splitter's etcd client (`splitter_ctl::io::etcd`, over etcd's JSON gateway) against a real
//! three-member etcd: the compare-and-swap that decides between two writers, watches, leases,
//! and calls and new watches with a member killed.

use std::time::Duration;

use splitter_ctl::{
    io::etcd::{Change, Etcd, EtcdError, Swap},
    model::fleet::{DEFAULT_LEASE_TTL, Endpoint, Fleet, FleetTls},
};
use splitter_tests::{etcd::EtcdCluster, require_root};

fn client(cluster: &EtcdCluster) -> Etcd {
    let fleet = Fleet {
        endpoints: cluster
            .urls()
            .iter()
            .map(|u| Endpoint::parse(u).expect("url"))
            .collect(),
        node: "test".into(),
        prefix: "/t".into(),
        lease_ttl: DEFAULT_LEASE_TTL,
        tls: FleetTls::default(),
    };
    Etcd::new(&fleet, Duration::from_secs(3)).expect("client")
}

/// Runs `f` on a runtime of its own, on a thread inside the cluster's namespace.
fn within<T: Send + 'static>(
    cluster: &EtcdCluster,
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    cluster.ns.run(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    })
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn two_writers_from_one_revision_one_wins_and_the_other_is_told() {
    require_root!();
    let cluster = EtcdCluster::alone(3);
    let etcd = client(&cluster);
    within(&cluster, async move {
        let key = "/t/v1/desired/model";
        let first = etcd.put_if(key, b"first", 0).await.expect("first");
        let Swap::Written(revision) = first else {
            panic!("the first write lost: {first:?}")
        };
        // A second writer that also read "no value" loses, and is told what won.
        match etcd.put_if(key, b"second", 0).await.expect("second") {
            Swap::Lost(Some(now)) => {
                assert_eq!(
                    (now.value.as_slice(), now.mod_revision),
                    (&b"first"[..], revision)
                );
            }
            other => panic!("the second write did not lose: {other:?}"),
        }
        // From the revision it read, it wins.
        let third = etcd.put_if(key, b"third", revision).await.expect("third");
        assert!(
            matches!(third, Swap::Written(r) if r > revision),
            "{third:?}"
        );
        let now = etcd.get(key).await.expect("get").expect("a value");
        assert_eq!(now.value, b"third");

        // Two keys moved together, compared on both (a fleet rollout's record and its split):
        // one stale revision and nothing is written.
        let record = "/t/v1/rollouts/model";
        let stale = etcd
            .put_all_if(
                &[(key, revision), (record, 0)],
                &[(key, b"x"), (record, b"r1")],
                None,
            )
            .await
            .expect("stale");
        assert_eq!(stale, None);
        assert_eq!(
            etcd.get(record).await.expect("get"),
            None,
            "nothing written"
        );
        let both = etcd
            .put_all_if(
                &[(key, now.mod_revision), (record, 0)],
                &[(record, b"r1"), (key, b"y")],
                None,
            )
            .await
            .expect("both")
            .expect("written");
        for (k, v) in [(key, &b"y"[..]), (record, b"r1")] {
            let kv = etcd.get(k).await.expect("get").expect("a value");
            assert_eq!((kv.value.as_slice(), kv.mod_revision), (v, both));
        }
        // A key created under a lease goes when the lease is revoked (a coordinator stepping
        // down), and only one of two creators wins it.
        let lease = etcd.grant(Duration::from_secs(30)).await.expect("grant");
        let coordinator = "/t/v1/coordinator";
        let won = etcd
            .put_all_if(&[(coordinator, 0)], &[(coordinator, b"n0")], Some(lease))
            .await
            .expect("campaign");
        assert!(won.is_some());
        let again = etcd
            .put_all_if(&[(coordinator, 0)], &[(coordinator, b"n1")], None)
            .await
            .expect("campaign");
        assert_eq!(again, None, "the key is held");
        etcd.revoke(lease).await.expect("revoke");
        assert_eq!(etcd.get(coordinator).await.expect("get"), None);
    });
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn watches_see_every_change_and_calls_go_on_with_a_member_killed() {
    require_root!();
    let mut cluster = EtcdCluster::alone(3);
    let etcd = client(&cluster);
    let etcd_put = etcd.clone();
    // One runtime for the watch's whole life: its connection is driven by a task of it.
    let seen = within(&cluster, async move {
        let (revision, kvs) = etcd_put
            .range_prefix("/t/v1/desired/")
            .await
            .expect("range");
        assert!(kvs.is_empty());
        let mut watch = etcd_put
            .watch("/t/v1/desired/", revision + 1)
            .await
            .expect("watch");
        let created = watch.next().await.expect("created");
        assert!(created.created);
        etcd_put
            .put("/t/v1/desired/model", b"v1", None)
            .await
            .expect("put");
        // A key outside the prefix is not seen.
        etcd_put.put("/t/v1/other", b"x", None).await.expect("put");
        etcd_put
            .put("/t/v1/desired/model", b"v2", None)
            .await
            .expect("put");
        let mut values = Vec::new();
        while values.len() < 2 {
            let batch = tokio::time::timeout(Duration::from_secs(3), watch.next())
                .await
                .expect("a change within 3 s")
                .expect("batch");
            for change in batch.changes {
                if let Change::Put(kv) = change {
                    values.push((kv.key, kv.value));
                }
            }
        }
        values
    });
    assert_eq!(
        seen,
        vec![
            ("/t/v1/desired/model".to_owned(), b"v1".to_vec()),
            ("/t/v1/desired/model".to_owned(), b"v2".to_vec()),
        ]
    );

    // The first member, the one a client tries first, dies: calls go on through the others.
    cluster.kill_member(0);
    within(&cluster, async move {
        let revision = etcd
            .put("/t/v1/desired/model", b"v3", None)
            .await
            .expect("a put with one member of three down");
        let mut watch = etcd
            .watch("/t/v1/desired/", revision)
            .await
            .expect("a watch with one member of three down");
        let mut got = None;
        while got.is_none() {
            let batch = tokio::time::timeout(Duration::from_secs(3), watch.next())
                .await
                .expect("within 3 s")
                .expect("batch");
            got = batch.changes.into_iter().find_map(|c| match c {
                Change::Put(kv) => Some(kv.value),
                Change::Delete { .. } => None,
            });
        }
        assert_eq!(got.as_deref(), Some(&b"v3"[..]));
    });
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_key_under_a_lease_goes_when_the_lease_is_not_renewed() {
    require_root!();
    let cluster = EtcdCluster::alone(1);
    let etcd = client(&cluster);
    within(&cluster, async move {
        let lease = etcd.grant(Duration::from_secs(2)).await.expect("grant");
        etcd.put("/t/v1/nodes/a", b"report", Some(lease))
            .await
            .expect("put");
        // Renewed, it stays past its TTL.
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(600)).await;
            etcd.keep_alive(lease).await.expect("renewed");
        }
        assert!(etcd.get("/t/v1/nodes/a").await.expect("get").is_some());
        // Left alone, it goes, and renewing it then says so.
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(etcd.get("/t/v1/nodes/a").await.expect("get").is_none());
        assert!(matches!(
            etcd.keep_alive(lease).await,
            Err(EtcdError::LeaseExpired(id)) if id == lease
        ));
    });
}

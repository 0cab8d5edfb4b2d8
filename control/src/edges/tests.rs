use std::time::Duration;

use super::writer::tests::decision;
use super::*;
use crate::decisions::Query;

fn settings(
    dir: &std::path::Path,
    queue: usize,
    learning: Duration,
    on: OnNewEdge,
) -> EdgeSettings {
    EdgeSettings {
        path: dir.join(DB_FILE),
        queue,
        retention: Retention {
            decisions: Duration::from_secs(3600),
            buckets: Duration::from_secs(3600),
        },
        learning,
        webhook: None,
        on_new_edge: on,
    }
}

async fn settle(store: &EdgeStore, n: u64) {
    for _ in 0..500 {
        if store.stored() + store.dropped() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{n} decisions not written: {} stored", store.stored());
}

const A: &str = "spiffe://td/ns/a/sa/web";
const B: &str = "spiffe://td/ns/b/sa/api";
const DB: &str = "spiffe://td/ns/c/sa/db";

#[tokio::test]
async fn decisions_and_edges_are_queried_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = Arc::new(State::new());
    let s = settings(dir.path(), 1000, Duration::ZERO, OnNewEdge::Alert);
    let store = EdgeStore::open(s.clone(), state.clone(), None).unwrap();
    let now = now_ms();
    for (i, src) in [A, A, B].iter().enumerate() {
        assert!(store.offer(decision(now - 1000 + i as i64, src, DB, 5432, 1)));
    }
    let mut old = decision(now - 1_800_000, B, DB, 6379, 4);
    old.event.action = svidcar_policy::Action::Deny;
    assert!(store.offer(old));
    settle(&store, 4).await;

    let all = store.query(&Query::default());
    assert_eq!(all.len(), 4);
    assert!(all
        .windows(2)
        .all(|w| w[0].event.time_ms <= w[1].event.time_ms));
    let q = |identity: &str, action: Option<&str>, limit: Option<usize>| Query {
        identity: Some(identity.into()),
        action: action.map(Into::into),
        limit,
        ..Query::default()
    };
    assert_eq!(store.query(&q(A, None, None)).len(), 2);
    assert_eq!(store.query(&q("spiffe://td/ns/*", None, None)).len(), 4);
    assert_eq!(store.query(&q("spiffe://td/ns/b*", None, None)).len(), 2);
    assert_eq!(store.query(&q(DB, Some("DENY"), None)).len(), 1);
    let newest = store.query(&q(DB, None, Some(2)));
    assert_eq!(newest.last().map(|d| d.event.time_ms), Some(now - 998));
    assert_eq!(newest.len(), 2);

    let edges = store.edges(&EdgeQuery::default()).unwrap();
    assert_eq!(edges.len(), 3, "{edges:?}");
    let recent = store
        .edges(&EdgeQuery {
            since_ms: Some(now - 60_000),
            source: Some(A.into()),
            ..EdgeQuery::default()
        })
        .unwrap();
    assert_eq!(recent.len(), 1);
    assert_eq!((recent[0].count, recent[0].key.port), (2, 5432));
    let by_dst = store
        .edges(&EdgeQuery {
            destination: Some(DB.into()),
            ..EdgeQuery::default()
        })
        .unwrap();
    let old_edge = by_dst.iter().find(|e| e.key.port == 6379).unwrap();
    assert_eq!(old_edge.count, 4, "folded decisions count whole");
    // Learning `0s`: every edge was new, each raised once.
    assert_eq!(store.new_edges().unwrap().len(), 3);

    drop(store);
    let store = EdgeStore::open(s, state, None).unwrap();
    assert_eq!(store.query(&Query::default()).len(), 4);
    assert_eq!(store.edges(&EdgeQuery::default()).unwrap(), edges);
    assert!(store.offer(decision(now, A, DB, 5432, 1)));
    settle(&store, 1).await;
    assert_eq!(
        store.new_edges().unwrap().len(),
        3,
        "no second alert after a restart"
    );
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_without_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path(), 4, Duration::from_secs(3600), OnNewEdge::Alert);
    let store = EdgeStore::open(s, Arc::new(State::new()), None).unwrap();
    // Another connection holds the write lock: the writer waits, the queue fills.
    let blocker = Connection::open(dir.path().join(DB_FILE)).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    // The writer takes this one and waits for the lock with it.
    assert!(store.offer(decision(0, A, DB, 1, 1)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = tokio::time::Instant::now();
    let accepted = (1..=1000)
        .filter(|i| store.offer(decision(*i, A, DB, 1, 1)))
        .count() as u64;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "offer never waits"
    );
    assert_eq!((accepted, store.dropped()), (4, 996), "the queue holds 4");
    blocker.execute_batch("COMMIT").unwrap();
    settle(&store, 1001).await;
    assert_eq!(
        store.stored(),
        5,
        "what was queued is written once the lock is gone"
    );
}

#[tokio::test]
async fn deny_mode_installs_lifts_and_reinstalls_generated_policies() {
    let dir = tempfile::tempdir().unwrap();
    let state = Arc::new(State::new());
    let s = settings(dir.path(), 100, Duration::ZERO, OnNewEdge::Deny);
    let store = EdgeStore::open(s.clone(), state.clone(), None).unwrap();
    store.offer(decision(now_ms(), A, DB, 5432, 1));
    store.offer(decision(now_ms(), B, DB, 5432, 1));
    settle(&store, 2).await;
    let generated = |state: &State| -> Vec<String> {
        state
            .policies
            .borrow()
            .policies
            .iter()
            .map(|p| p.name.clone())
            .collect()
    };
    for _ in 0..100 {
        if generated(&state).len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        generated(&state),
        vec![
            "svidcar-generated-new-edge-1",
            "svidcar-generated-new-edge-2"
        ]
    );
    let allowed = store.allow(1).unwrap().unwrap();
    assert_eq!(
        (allowed.status, allowed.denied),
        (AlertStatus::Allowed, false)
    );
    assert_eq!(generated(&state), vec!["svidcar-generated-new-edge-2"]);
    assert!(store.allow(99).unwrap().is_none());
    drop(store);
    // A restart puts the open one back, not the allowed one.
    let state = Arc::new(State::new());
    let _store = EdgeStore::open(s, state.clone(), None).unwrap();
    assert_eq!(generated(&state), vec!["svidcar-generated-new-edge-2"]);
}

/// `POST /new-edges/<id>/allow` is a change: from loopback callers only, like `/revocations`.
#[tokio::test]
async fn allow_listing_over_http_is_for_loopback_callers_only() {
    let dir = tempfile::tempdir().unwrap();
    let state = Arc::new(State::new());
    let s = settings(dir.path(), 100, Duration::ZERO, OnNewEdge::Alert);
    let store = Arc::new(EdgeStore::open(s, state, None).unwrap());
    store.offer(decision(now_ms(), A, DB, 5432, 1));
    settle(&store, 1).await;
    let post = |caller: &str| {
        let store = store.clone();
        let caller = caller.parse().ok();
        async move {
            let r = http::route(
                &store,
                &hyper::Method::POST,
                "/new-edges/1/allow",
                None,
                caller,
            )
            .await
            .unwrap();
            r.status()
        }
    };
    assert_eq!(post("10.1.2.3:4000").await, hyper::StatusCode::FORBIDDEN);
    assert_eq!(post("unknown").await, hyper::StatusCode::FORBIDDEN);
    assert_eq!(store.new_edges().unwrap()[0].status, AlertStatus::Open);
    assert_eq!(post("127.0.0.1:4000").await, hyper::StatusCode::OK);
    assert_eq!(store.new_edges().unwrap()[0].status, AlertStatus::Allowed);
    // Reading stays open.
    let r = http::route(
        &store,
        &hyper::Method::GET,
        "/new-edges",
        None,
        "10.1.2.3:4000".parse().ok(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), hyper::StatusCode::OK);
}

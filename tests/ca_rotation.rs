//! CA rotation end to end: the real agent (in-process) with a 30 s CA and 6 s SVIDs, watched
//! through the Workload API by the third-party `spiffe` crate. A new root must be in the bundle
//! before any SVID it signed is handed out, later SVIDs must chain to it, and the old root must
//! stay in the bundle until the last SVID it signed has expired.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use futures_util::StreamExt;
use rustls::pki_types::{CertificateDer, UnixTime};
use svidcar_control::agent::{start, AgentArgs};
use svidcar_identity::Dur;
use svidcar_identity::{
    check_leaf, unix_now, verify_chain, Purpose, TrustBundles, TrustDomain, WorkloadEndpoint,
};

const TD: &str = "example.org";
const ID: &str = "spiffe://example.org/rotating";

/// What one Workload API update carried, and when it arrived.
struct Update {
    at: i64,
    bundle: Vec<Vec<u8>>,
    /// Each SVID's leaf (DER) and expiry.
    svids: Vec<(Vec<u8>, i64)>,
}

/// The root of `bundle` (if any) that `leaf` chains to at `now`.
fn signer(leaf: &[u8], roots: &[Vec<u8>], now: i64) -> Option<Vec<u8>> {
    let td = TrustDomain::parse(TD).unwrap();
    let time = UnixTime::since_unix_epoch(Duration::from_secs(now as u64));
    roots
        .iter()
        .find(|root| {
            let mut bundles = TrustBundles::new();
            bundles
                .insert(td.clone(), vec![CertificateDer::from(root.to_vec())])
                .unwrap();
            let chain = [CertificateDer::from(leaf.to_vec())];
            verify_chain(&chain, &bundles, time, Purpose::Server).is_ok()
        })
        .cloned()
}

#[tokio::test]
async fn a_new_root_is_published_before_it_signs_and_the_old_one_kept_until_its_svids_expire() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    std::fs::create_dir(&ca_dir).unwrap();
    std::fs::set_permissions(&ca_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let registration = dir.path().join("registration.yaml");
    std::fs::write(
        &registration,
        format!(
            "entries:\n  - spiffe_id: {ID}\n    selectors: [\"unix:uid:{}\"]\n",
            nix::unistd::Uid::current()
        ),
    )
    .unwrap();
    let args = AgentArgs {
        socket: dir.path().join("agent.sock"),
        socket_mode: 0o600,
        socket_group: None,
        ca_dir: Some(ca_dir.clone()),
        trust_domain: Some(TrustDomain::parse(TD).unwrap()),
        registration,
        svid_ttl: Dur(Duration::from_secs(6)),
        ca_ttl: Dur(Duration::from_secs(30)),
        reload_interval: Dur(Duration::from_secs(1)),
        admin_listen: None,
        upstream: Default::default(),
        kubernetes: Default::default(),
    };
    let agent = start(&args).await.unwrap();
    let endpoint = WorkloadEndpoint::Unix(args.socket.clone()).to_string();
    let client = spiffe::WorkloadApiClient::connect_to(endpoint)
        .await
        .unwrap();
    let mut stream = client.stream_x509_contexts().await.unwrap();
    let td = spiffe::TrustDomain::new(TD).unwrap();

    // Record every update until the first root has left the bundle (about 31 s in: prepared
    // at 13 s, activated at 24 s, its last SVIDs expire by 30 s).
    let mut updates: Vec<Update> = Vec::new();
    let watched = tokio::time::timeout(Duration::from_secs(50), async {
        while let Some(ctx) = stream.next().await {
            let ctx = ctx.unwrap();
            let update = Update {
                at: unix_now(),
                bundle: ctx
                    .bundle_set()
                    .get(&td)
                    .unwrap()
                    .authorities()
                    .iter()
                    .map(|c| c.as_bytes().to_vec())
                    .collect(),
                svids: ctx
                    .svids()
                    .iter()
                    .map(|s| {
                        let leaf = s.leaf().as_bytes().to_vec();
                        let not_after = check_leaf(&leaf).unwrap().not_after;
                        (leaf, not_after)
                    })
                    .collect(),
            };
            let first_root = updates
                .first()
                .map_or(update.bundle[0].clone(), |u| u.bundle[0].clone());
            let gone = !update.bundle.contains(&first_root);
            updates.push(update);
            if gone {
                return;
            }
        }
        panic!("the stream ended");
    })
    .await;
    assert!(
        watched.is_ok(),
        "the first root was not dropped within 50 s"
    );

    let old = updates[0].bundle.clone();
    assert_eq!(old.len(), 1, "one root at start");
    let old = old[0].clone();
    // Every SVID handed out chains to a root of the bundle handed out with it.
    let mut signers = Vec::new();
    for (i, u) in updates.iter().enumerate() {
        for (leaf, not_after) in &u.svids {
            let root = signer(leaf, &u.bundle, u.at)
                .unwrap_or_else(|| panic!("update {i}: an SVID outside its bundle"));
            signers.push((i, root, *not_after));
        }
    }

    // The new root was published in an update before the first SVID it signed.
    let (first_new_svid, new, _) = signers
        .iter()
        .find(|(_, root, _)| *root != old)
        .cloned()
        .expect("an SVID signed by the new root");
    let published = updates
        .iter()
        .position(|u| u.bundle.contains(&new))
        .unwrap();
    assert!(
        published < first_new_svid,
        "new root published in update {published}, signing in update {first_new_svid}"
    );
    assert!(updates[published].at < updates[first_new_svid].at);
    assert_eq!(updates[published].bundle, [old.clone(), new.clone()]);

    // The old root left the bundle only after every SVID it signed had expired.
    let last = updates.last().unwrap();
    let old_expiry = signers
        .iter()
        .filter(|(_, root, _)| *root == old)
        .map(|(_, _, not_after)| *not_after)
        .max()
        .unwrap();
    assert!(
        last.at > old_expiry,
        "old root dropped at {} while an SVID it signed was valid until {old_expiry}",
        last.at
    );
    // Later SVIDs chain to the new root.
    for (leaf, _) in &last.svids {
        assert_eq!(signer(leaf, &last.bundle, last.at), Some(new.clone()));
    }

    // On disk: the new root is active, the old one's record is gone.
    let pem = std::fs::read(ca_dir.join("ca.pem")).unwrap();
    let active = {
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(&pem).unwrap()
    };
    assert_eq!(active.as_ref(), new.as_slice());
    let names: Vec<String> = std::fs::read_dir(&ca_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with("retired-")),
        "{names:?}"
    );
    agent.shutdown().await;
}

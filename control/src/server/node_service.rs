//! The node API served by `svidcar control` (see [`crate::node`]): joins with one-time tokens,
//! node SVID renewals, and workload SVIDs signed from CSRs for the IDs each node may obtain.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use svidcar_identity::{check_leaf, format_unix, unix_now, SpiffeId};
use tonic::{Request, Response, Status};

use super::join_throttle::JoinThrottle;
use super::metrics::ControlMetrics;
use super::nodes::{is_reserved, Nodes, NodesError, NodesFile, TokenLedger};
use super::state::State;
use super::{ControlConfig, ControlError};
use crate::authority::{Authority, AuthorityError};
use crate::node::{bundle_to_wire, node_id, node_name};
use crate::CaError;
use svidcar_api::node::server::NodeService;
use svidcar_api::node::{
    BundleResponse, GetBundleRequest, JoinRequest, NodeSvidResponse, RenewNodeRequest,
    SignWorkloadRequest, SignWorkloadResponse,
};

/// The node API.
#[derive(Debug)]
pub(super) struct NodeApi {
    pub(crate) authority: Arc<Authority>,
    /// The nodes file; `None`: no node may join.
    pub(crate) nodes: Option<NodesFile>,
    pub(crate) ledger: Arc<TokenLedger>,
    pub(crate) svid_ttl: Duration,
    pub(crate) node_svid_ttl: Duration,
    pub(crate) throttle: JoinThrottle,
    pub(crate) metrics: ControlMetrics,
    pub(crate) state: Arc<State>,
    /// Every workload SVID signed is recorded here (the identity inventory).
    pub(crate) inventory: Arc<crate::inventory::IssuanceStore>,
}

/// Failed joins allowed per source address and minute.
const FAILED_JOINS_PER_MINUTE: u32 = 10;

impl NodeApi {
    /// The node API over the CA held here: opens the ledger of used join tokens and checks the
    /// nodes file, if any.
    pub(super) fn open(
        args: &ControlConfig,
        authority: Arc<Authority>,
        state: &Arc<State>,
        inventory: Arc<crate::inventory::IssuanceStore>,
    ) -> Result<Self, ControlError> {
        let ledger = TokenLedger::open(&args.state_dir.join("used-join-tokens"))?;
        let nodes = match &args.nodes {
            Some(path) => Some(nodes_file(path, &authority)?),
            None => None,
        };
        Ok(Self {
            authority,
            nodes,
            ledger: Arc::new(ledger),
            svid_ttl: args.svid_ttl.0,
            node_svid_ttl: args.node_svid_ttl.0,
            throttle: JoinThrottle::new(FAILED_JOINS_PER_MINUTE, Duration::from_secs(60)),
            metrics: state.metrics.clone(),
            state: state.clone(),
            inventory,
        })
    }
}

impl NodeApi {
    /// Records a workload SVID in the identity inventory, with the selectors the agent issued
    /// it for. A failure is logged, never held against the node: the SVID is already signed.
    async fn record_issuance(
        &self,
        id: &SpiffeId,
        node: &str,
        selectors: Vec<String>,
        cert: &[u8],
    ) {
        let Some((not_after, serial)) = crate::inventory::certificate_facts(cert) else {
            tracing::warn!(%id, "cannot read back a signed SVID for the inventory");
            return;
        };
        let (store, id, node) = (self.inventory.clone(), id.clone(), node.to_owned());
        let recorded = tokio::task::spawn_blocking(move || {
            store.record(&crate::inventory::Issuance {
                id: &id,
                node: Some(&node),
                selectors: &selectors,
                at: unix_now(),
                not_after,
                serial,
            })
        })
        .await;
        match recorded {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot record an issued SVID"),
            Err(e) => tracing::error!(error = %e, "cannot record an issued SVID"),
        }
    }
}

/// The nodes file at `path`, checked now so that a broken file stops start-up; then again on
/// each request, parsed anew when it changed.
fn nodes_file(path: &Path, authority: &Authority) -> Result<NodesFile, NodesError> {
    let file = NodesFile::new(path.to_owned(), authority.trust_domain().clone());
    let n = file.current()?;
    tracing::info!(file = %path.display(), nodes = n.len(), "serving SVIDs to nodes");
    Ok(file)
}

/// Selectors an agent sent, as the inventory keeps them: in the agent's order, each once, at most
/// [`MAX_SELECTORS`] of at most [`MAX_SELECTOR_LEN`] bytes (empty or longer ones dropped). They
/// are a node's word, recorded for operators and never checked, so they only need bounds.
fn inventory_selectors(sent: Vec<String>) -> Vec<String> {
    let mut kept: Vec<String> = Vec::new();
    for s in sent {
        if kept.len() == MAX_SELECTORS {
            break;
        }
        if !s.is_empty() && s.len() <= MAX_SELECTOR_LEN && !kept.contains(&s) {
            kept.push(s);
        }
    }
    kept
}

/// Selectors kept per issuance.
const MAX_SELECTORS: usize = 32;
/// Longest selector kept, in bytes (a `unix:sha256:` one is 76).
const MAX_SELECTOR_LEN: usize = 256;

fn ca_status(e: AuthorityError) -> Status {
    match e {
        AuthorityError::Csr(m) => {
            Status::invalid_argument(format!("certificate signing request: {m}"))
        }
        AuthorityError::Ca(CaError::ForeignId { id, td }) => {
            Status::invalid_argument(format!("{id} is not in trust domain {td}"))
        }
        other => {
            tracing::error!(error = %other, "the CA cannot sign");
            Status::unavailable(format!("the CA cannot sign: {other}"))
        }
    }
}

fn peer<T>(req: &Request<T>) -> String {
    req.remote_addr().map(|a| a.to_string()).unwrap_or_default()
}

impl NodeApi {
    fn refused(&self, reason: &str, status: Status) -> Status {
        self.metrics.refusals.with_label_values(&[reason]).inc();
        status
    }

    fn join_outcome(&self, outcome: &str) {
        self.metrics.joins.with_label_values(&[outcome]).inc();
    }

    fn nodes(&self) -> Result<Arc<Nodes>, Status> {
        let Some(file) = &self.nodes else {
            return Err(Status::failed_precondition(
                "this control plane serves no nodes (start it with --nodes)",
            ));
        };
        file.current().map_err(|e| {
            tracing::error!(error = %e, "cannot read the nodes file");
            Status::unavailable("the control plane cannot read its nodes file")
        })
    }

    /// The calling node's name, from its verified client SVID, if the nodes file still names it.
    fn calling_node<T>(&self, req: &Request<T>) -> Result<(String, Arc<Nodes>), Status> {
        let leaf = req
            .peer_certs()
            .and_then(|c| c.first().cloned())
            .ok_or_else(|| {
                self.refused(
                    "no_certificate",
                    Status::unauthenticated("a node SVID is required"),
                )
            })?;
        let id = check_leaf(&leaf)
            .map_err(|e| {
                self.refused(
                    "no_certificate",
                    Status::unauthenticated(format!("client SVID: {e}")),
                )
            })?
            .id;
        super::revocations::refuse_revoked(&self.state, &id)?;
        let name = node_name(self.authority.trust_domain(), &id)
            .ok_or_else(|| {
                self.refused(
                    "not_a_node",
                    Status::permission_denied(format!("{id} is not a node SVID")),
                )
            })?
            .to_owned();
        let nodes = self.nodes()?;
        if nodes.by_name(&name).is_none() {
            tracing::warn!(node = %name, addr = %peer(req), "refused a node that is no longer registered");
            return Err(self.refused(
                "unregistered_node",
                Status::permission_denied(format!("node {name} is no longer registered")),
            ));
        }
        Ok((name, nodes))
    }

    fn node_svid(&self, name: &str, csr: &[u8]) -> Result<NodeSvidResponse, Status> {
        let id = node_id(self.authority.trust_domain(), name)
            .map_err(|e| Status::internal(format!("node ID: {e}")))?;
        let cert = self
            .authority
            .sign_csr(&id, csr, self.node_svid_ttl)
            .map_err(ca_status)?;
        Ok(NodeSvidResponse {
            svid: cert.to_vec(),
            bundle: bundle_to_wire(&self.authority.bundle()),
            node: name.to_owned(),
        })
    }
}

#[tonic::async_trait]
impl NodeService for NodeApi {
    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<NodeSvidResponse>, Status> {
        let addr = peer(&req);
        let ip = req.remote_addr().map(|a| a.ip());
        let now = tokio::time::Instant::now();
        if let Some(ip) = ip {
            if !self.throttle.allows(ip, now) {
                self.join_outcome("throttled");
                tracing::warn!(%addr, "join refused: too many failed joins from this address");
                return Err(Status::resource_exhausted(
                    "too many failed joins from this address; try again later",
                ));
            }
        }
        let failed = |status: Status| {
            if let Some(ip) = ip {
                self.throttle.failed(ip, now);
            }
            status
        };
        let JoinRequest { token, csr } = req.into_inner();
        let refused = || Status::permission_denied("unknown or already used join token");
        let nodes = self.nodes()?;
        let Some(node) = nodes.by_token(&token) else {
            self.join_outcome("unknown_token");
            tracing::warn!(%addr, "join refused: unknown join token");
            return Err(failed(refused()));
        };
        if let Some(expired) = node.token_expires.filter(|t| *t <= unix_now()) {
            self.join_outcome("expired_token");
            tracing::warn!(node = %node.name, %addr, expired = %format_unix(expired), "join refused: the join token expired");
            return Err(failed(Status::permission_denied(format!(
                "the join token expired at {}",
                format_unix(expired)
            ))));
        }
        // Sign first (a bad CSR must not burn the token), hand out only if the token was fresh.
        let resp = self.node_svid(&node.name, &csr).map_err(|s| {
            if s.code() == tonic::Code::Unavailable {
                // Our fault (the CA cannot sign), not the caller's: not held against it.
                s
            } else {
                self.join_outcome("bad_request");
                failed(s)
            }
        })?;
        let fresh = self.ledger.consume(&token).map_err(|e| {
            tracing::error!(error = %e, "cannot record the join token");
            Status::unavailable("the control plane cannot record join tokens")
        })?;
        if !fresh {
            self.join_outcome("used_token");
            tracing::warn!(node = %node.name, %addr, "join refused: the join token was already used");
            return Err(failed(refused()));
        }
        self.join_outcome("ok");
        self.metrics.signed.with_label_values(&["node"]).inc();
        let not_after = check_leaf(&resp.svid).ok().map(|l| l.not_after);
        self.state.node_call(&node.name, &addr, "Join", |n| {
            n.joined_at = Some(n.last_call_at);
            n.node_svid_not_after = not_after;
        });
        tracing::info!(node = %node.name, %addr, "node joined");
        Ok(Response::new(resp))
    }

    async fn renew_node(
        &self,
        req: Request<RenewNodeRequest>,
    ) -> Result<Response<NodeSvidResponse>, Status> {
        let (name, _) = self.calling_node(&req)?;
        let resp = self.node_svid(&name, &req.get_ref().csr)?;
        self.metrics.signed.with_label_values(&["node"]).inc();
        let not_after = check_leaf(&resp.svid).ok().map(|l| l.not_after);
        self.state.node_call(&name, &peer(&req), "RenewNode", |n| {
            n.node_svid_not_after = not_after;
        });
        tracing::info!(node = %name, "renewed node SVID");
        Ok(Response::new(resp))
    }

    async fn sign_workload(
        &self,
        req: Request<SignWorkloadRequest>,
    ) -> Result<Response<SignWorkloadResponse>, Status> {
        let (name, nodes) = self.calling_node(&req)?;
        let addr = peer(&req);
        let SignWorkloadRequest {
            spiffe_id,
            csr,
            selectors,
        } = req.into_inner();
        let id = SpiffeId::parse(&spiffe_id)
            .map_err(|e| Status::invalid_argument(format!("spiffe_id {spiffe_id:?}: {e}")))?;
        super::revocations::refuse_revoked(&self.state, &id)?;
        let allowed = nodes.by_name(&name).is_some_and(|n| n.may_obtain(&id));
        if !allowed {
            let (reason, why) = if is_reserved(&id) {
                (
                    "reserved",
                    "IDs under /svidcar/ are never issued to workloads",
                )
            } else {
                ("not_allowed", "not in the node's allow list")
            };
            tracing::warn!(node = %name, %id, reason = why, "workload SVID refused");
            self.state.node_call(&name, &addr, "SignWorkload", |n| {
                n.workload_svids_refused += 1;
            });
            return Err(self.refused(
                reason,
                Status::permission_denied(format!("node {name} may not obtain {id}: {why}")),
            ));
        }
        let cert = self
            .authority
            .sign_csr(&id, &csr, self.svid_ttl)
            .map_err(ca_status)?;
        self.metrics.signed.with_label_values(&["workload"]).inc();
        self.state.node_call(&name, &addr, "SignWorkload", |n| {
            n.workload_svids_signed += 1;
        });
        tracing::debug!(node = %name, %id, "signed workload SVID");
        self.record_issuance(&id, &name, inventory_selectors(selectors), &cert)
            .await;
        Ok(Response::new(SignWorkloadResponse {
            svid: cert.to_vec(),
            bundle: bundle_to_wire(&self.authority.bundle()),
        }))
    }

    async fn get_bundle(
        &self,
        req: Request<GetBundleRequest>,
    ) -> Result<Response<BundleResponse>, Status> {
        let (name, _) = self.calling_node(&req)?;
        self.state
            .node_call(&name, &peer(&req), "GetBundle", |_| {});
        Ok(Response::new(BundleResponse {
            bundle: bundle_to_wire(&self.authority.bundle()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_are_kept_in_the_agents_order_once_and_bounded() {
        let sent = ["k8s:ns:shop", "", "k8s:sa:web", "k8s:ns:shop"].map(String::from);
        assert_eq!(
            inventory_selectors(sent.to_vec()),
            ["k8s:ns:shop", "k8s:sa:web"]
        );
        assert!(inventory_selectors(vec!["x".repeat(MAX_SELECTOR_LEN + 1)]).is_empty());
        let many: Vec<String> = (0..100).map(|i| format!("unix:uid:{i}")).collect();
        let kept = inventory_selectors(many);
        assert_eq!(kept.len(), MAX_SELECTORS);
        assert_eq!(kept[0], "unix:uid:0");
    }
}

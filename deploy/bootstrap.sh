#!/usr/bin/env bash
# First install of svidcar on a cluster, and the steps that need the control plane's CA.
# Needs kubectl (pointing at the cluster), openssl and curl. README: "Kubernetes in five steps".
#
#   deploy/bootstrap.sh          join tokens for every node not yet listed, apply deploy/, then
#                                publish the CA bundle (agents' first contact, webhook caBundle)
#   deploy/bootstrap.sh bundle   only publish the CA bundle again: after a CA rotation prepared
#                                a successor root (the bundle then holds two roots)
#
# Re-running is safe: nodes already in nodes.yaml keep their entry and token (a spent token stays
# spent), new nodes get one.
set -euo pipefail

ns=svidcar-system
here=$(cd "$(dirname "$0")" && pwd)
local_port=${SVIDCAR_QUERY_PORT:-15014}

apply_stdin() { kubectl apply -f -; }

join_tokens() {
  kubectl apply -f "$here/kubernetes/namespace.yaml" -f "$here/kubernetes/mesh-config.yaml"
  local td nodes_yaml node token expires
  td=$(kubectl -n "$ns" get configmap svidcar-mesh -o jsonpath='{.data.trust_domain}')
  nodes_yaml=$(kubectl -n "$ns" get secret svidcar-nodes -o jsonpath='{.data.nodes\.yaml}' \
    2>/dev/null | base64 -d || true)
  [ -n "$nodes_yaml" ] || nodes_yaml="nodes:"
  for node in $(kubectl get nodes -o jsonpath='{.items[*].metadata.name}'); do
    if grep -qxF "  - name: $node" <<<"$nodes_yaml"; then continue; fi
    if [ "${#node}" -gt 63 ]; then
      echo "node $node: names in nodes.yaml have at most 63 characters; add it by hand" >&2
      continue
    fi
    token=$(openssl rand -hex 16)
    # A token unused for a day is refused: delete the node's entry from nodes.yaml (Secret
    # svidcar-nodes) and run this again.
    expires=$(date -u -d '+1 day' +%Y-%m-%dT%H:%M:%SZ 2>/dev/null || date -u -v+1d +%Y-%m-%dT%H:%M:%SZ)
    # Any pod may be scheduled on any node, so every node may obtain every namespace's IDs.
    nodes_yaml+=$'\n'"  - name: $node"$'\n'"    join_token: $token"$'\n'"    expires: $expires"
    nodes_yaml+=$'\n'"    allow:"$'\n'"      - spiffe://$td/ns/*"
    echo "node $node: join token created" >&2
  done
  # nodes.yaml for the control plane; one key per node (its token) for the agents.
  kubectl -n "$ns" create secret generic svidcar-nodes \
    --from-file=nodes.yaml=<(printf '%s\n' "$nodes_yaml") --dry-run=client -o yaml | apply_stdin
  local args=()
  while read -r name tok; do
    args+=("--from-literal=$name=$tok")
  done < <(awk '$1 == "-" && $2 == "name:" { n = $3 } $1 == "join_token:" { print n, $2 }' \
             <<<"$nodes_yaml")
  kubectl -n "$ns" create secret generic svidcar-join-tokens "${args[@]}" \
    --dry-run=client -o yaml | apply_stdin
}

publish_bundle() {
  kubectl -n "$ns" rollout status deployment/svidcar-control --timeout=5m
  # The query port is loopback-only in the pod; port-forward reaches it there.
  kubectl -n "$ns" port-forward deployment/svidcar-control "$local_port:15014" >/dev/null &
  local pf=$! bundle
  trap 'kill "$pf" 2>/dev/null || true' EXIT
  for _ in $(seq 50); do
    bundle=$(curl -fsS "http://127.0.0.1:$local_port/bundle" 2>/dev/null) && break
    sleep 0.2
  done
  kill "$pf" 2>/dev/null || true
  if ! grep -q 'BEGIN CERTIFICATE' <<<"${bundle:-}"; then
    echo "no CA bundle from the control plane's /bundle" >&2
    exit 1
  fi
  # The agents verify the control plane with it on their first join.
  kubectl -n "$ns" create configmap svidcar-bundle \
    --from-file=bundle.pem=<(printf '%s\n' "$bundle") --dry-run=client -o yaml | apply_stdin
  # The API server verifies the webhook's serving certificate (issued by the same CA) with it.
  local ca
  ca=$(printf '%s\n' "$bundle" | base64 | tr -d '\n')
  kubectl patch mutatingwebhookconfiguration svidcar-injector --type=json \
    -p "[{\"op\":\"add\",\"path\":\"/webhooks/0/clientConfig/caBundle\",\"value\":\"$ca\"}]"
}

case "${1:-all}" in
  all)
    join_tokens
    kubectl apply -k "$here"
    publish_bundle
    # Agents that started before the bundle existed are in back-off; start them now.
    kubectl -n "$ns" rollout restart daemonset/svidcar-agent
    kubectl -n "$ns" rollout status daemonset/svidcar-agent --timeout=5m
    ;;
  bundle) publish_bundle ;;
  *) echo "usage: $0 [all|bundle]" >&2; exit 2 ;;
esac

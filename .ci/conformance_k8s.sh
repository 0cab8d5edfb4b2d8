#!/usr/bin/env bash
# Conformance of `svidcar inject` on real manifests written by other projects.
#
#   .ci/conformance_k8s.sh DIR          (CI only: DIR holds other projects' real manifests)
#
# For every *.yaml / *.yml in DIR: `svidcar inject` must succeed; every pod template of a
# workload (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, ReplicationController,
# CronJob, also inside `kind: List`) must get `svidcar-proxy`, except hostNetwork pods, opted-out
# and already injected ones, which must be left alone; every document without a pod template must be byte
# for byte what it was; and the output must pass `kubernetes-validate --strict` (PyPI), with List
# items validated one by one and batch/v1beta1 CronJobs validated as batch/v1 (the validator
# has no schema for either and would only warn). Exits non-zero on any failure.
#
# SVIDCAR_BIN picks the binary (default: target/debug/svidcar, built if missing).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
if [ $# -ne 1 ]; then
  echo "usage: .ci/conformance_k8s.sh DIR (a directory of Kubernetes manifests)" >&2
  exit 2
fi
dir=$1
bin=${SVIDCAR_BIN:-$root/target/debug/svidcar}

if [ ! -d "$dir" ]; then
  echo "conformance_k8s: $dir: no such directory" >&2
  exit 2
fi
if [ ! -x "$bin" ]; then
  (cd "$root" && cargo build --bin svidcar)
fi
command -v kubernetes-validate >/dev/null || { echo "conformance_k8s: kubernetes-validate (pip install kubernetes-validate) is missing" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

shopt -s nullglob
files=("$dir"/*.yaml "$dir"/*.yml)
if [ ${#files[@]} -eq 0 ]; then
  echo "conformance_k8s: $dir: no manifests" >&2
  exit 2
fi

passed=0
failed=0
for f in "${files[@]}"; do
  name=$(basename "$f")
  if ! "$bin" inject "$f" >"$work/out.yaml" 2>"$work/err"; then
    echo "FAIL $name: svidcar inject: $(cat "$work/err")"
    failed=$((failed + 1))
    continue
  fi
  if ! python3 - "$f" "$work/out.yaml" "$work/validate.yaml" <<'PY'
import re, sys, yaml

src, out, for_validation = sys.argv[1:4]
text_in, text_out = open(src).read(), open(out).read()

def split(text):
    docs, start, offset = [], 0, 0
    for line in text.splitlines(keepends=True):
        if re.match(r"---([ \t]|\r?\n|$)", line) and offset > start:
            docs.append(text[start:offset])
            start = offset
        offset += len(line)
    docs.append(text[start:])
    return docs

TEMPLATE = {"Deployment": ("spec", "template"), "StatefulSet": ("spec", "template"),
            "DaemonSet": ("spec", "template"), "ReplicaSet": ("spec", "template"),
            "Job": ("spec", "template"), "ReplicationController": ("spec", "template"),
            "CronJob": ("spec", "jobTemplate", "spec", "template"), "Pod": ()}

def template(obj):
    path = TEMPLATE.get(obj.get("kind"))
    if path is None:
        return None
    for key in path:
        obj = (obj or {}).get(key)
    return obj

def opted_out(obj, tpl):
    for meta in ((obj or {}).get("metadata") or {}, (tpl or {}).get("metadata") or {}):
        for field in ("labels", "annotations"):
            if ((meta.get(field) or {}).get("svidcar.io/inject")) in ("false", "disabled"):
                return True
    return False

def objects(doc):
    if isinstance(doc, dict) and doc.get("kind") == "List":
        return doc.get("items") or []
    return [doc] if isinstance(doc, dict) else []

problems, injected, skipped, untouched = [], 0, 0, 0
raw_in, raw_out = split(text_in), split(text_out)
if len(raw_in) != len(raw_out):
    problems.append(f"{len(raw_in)} documents in, {len(raw_out)} out")
for n, (a, b) in enumerate(zip(raw_in, raw_out), 1):
    din, dout = yaml.safe_load(a), yaml.safe_load(b)
    objs_in, objs_out = objects(din), objects(dout)
    workloads = [o for o in objs_in if template(o) is not None]
    if not workloads:
        untouched += 1
        if a != b:
            problems.append(f"document {n}: no pod template, but changed")
        continue
    if len(objs_in) != len(objs_out):
        problems.append(f"document {n}: {len(objs_in)} objects in, {len(objs_out)} out")
        continue
    before = injected
    for oi, oo in zip(objs_in, objs_out):
        tin, tout = template(oi), template(oo)
        what = f"document {n}: {oi.get('kind')}/{(oi.get('metadata') or {}).get('name')}"
        if tin is None:
            if oi != oo:
                problems.append(f"{what}: not a workload, but changed")
            continue
        spec_in = (tin or {}).get("spec") or {}
        spec_out = (tout or {}).get("spec") or {}
        names = [c.get("name") for c in (spec_out.get("initContainers") or []) + (spec_out.get("containers") or [])]
        already = "svidcar.io/status" in ((((tin or {}).get("metadata") or {}).get("annotations")) or {})
        if spec_in.get("hostNetwork") or opted_out(oi, tin) or already:
            skipped += 1
            if oi != oo:
                problems.append(f"{what}: hostNetwork or opted out, but changed")
        elif "svidcar-proxy" not in names or "svidcar-init" not in names:
            problems.append(f"{what}: no svidcar-proxy/svidcar-init (containers: {names})")
        else:
            injected += 1
            if not any(v.get("name") == "svidcar-agent-socket" for v in spec_out.get("volumes") or []):
                problems.append(f"{what}: no svidcar-agent-socket volume")
            if "svidcar.io/status" not in (((tout or {}).get("metadata") or {}).get("annotations") or {}):
                problems.append(f"{what}: no svidcar.io/status annotation")

    if injected == before and a != b:
        problems.append(f"document {n}: nothing injected, but not byte-identical")

validation = []
for d in yaml.safe_load_all(text_out):
    for o in objects(d):
        if o.get("apiVersion") == "batch/v1beta1" and o.get("kind") == "CronJob":
            o = dict(o, apiVersion="batch/v1")
        validation.append(o)
with open(for_validation, "w") as fh:
    yaml.safe_dump_all(validation, fh)

for p in problems:
    print(f"  {p}")
print(f"  pod templates injected: {injected}, skipped: {skipped}; documents without one (byte-identical): {untouched}")
sys.exit(1 if problems else 0)
PY
  then
    echo "FAIL $name"
    failed=$((failed + 1))
    continue
  fi
  if ! kubernetes-validate --strict --quiet "$work/validate.yaml" >"$work/kv" 2>&1 || grep -q "ERROR" "$work/kv"; then
    echo "FAIL $name: kubernetes-validate --strict:"
    sed 's/^/  /' "$work/kv"
    failed=$((failed + 1))
    continue
  fi
  if [ -s "$work/kv" ]; then
    sed 's/^/  kubernetes-validate: /' "$work/kv"
  fi
  echo "ok   $name"
  passed=$((passed + 1))
done

echo "conformance_k8s: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

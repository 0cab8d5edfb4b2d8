"""Parses Prometheus text exposition format from stdin with the official Python client's
parser (prometheus_client) and prints every sample as JSON lines: name, labels, value.
Exits non-zero if the input is not valid exposition format."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        print(json.dumps({"type": family.type, "name": s.name, "labels": s.labels, "value": s.value}))

"""Parse an OpenMetrics exposition from stdin with the official Prometheus Python client's
strict parser, and print its samples as JSON: [{"name", "labels", "value", "type"}].

Any deviation from the format (a missing `# EOF`, a counter without `_total`, histogram
buckets out of order, a bad label) makes the parser raise, and this exits non-zero."""

import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        samples.append({"name": sample.name, "labels": sample.labels, "value": sample.value, "type": family.type})
json.dump(samples, sys.stdout)

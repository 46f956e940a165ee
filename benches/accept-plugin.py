#!/usr/bin/env python3
# The cheapest write plugin in strfry's protocol: accept every event. For measuring what the
# plugin stage itself costs (benches/ab-per-core.sh with EXTRA_B='[write_plugin] ...').
import json
import sys

for line in sys.stdin:
    print(json.dumps({"id": json.loads(line)["event"]["id"], "action": "accept"}), flush=True)

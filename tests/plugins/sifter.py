#!/usr/bin/env python3
# A write-policy plugin in strfry's protocol, for the tests (and as an example): one JSON
# request per line on stdin, one JSON answer per line on stdout. It decides by the event's
# content, and logs each request next to itself (<this file>.log) for the test to read.
#   "spam"   -> reject with a message
#   "shadow" -> shadowReject (OK true, not stored)
#   "hang"   -> never answers (the relay times out and restarts it)
#   "crash"  -> exits without answering
#   anything else -> accept
import json
import sys
import time

log = open(__file__ + ".log", "a")
for line in sys.stdin:
    request = json.loads(line)
    log.write(line)
    log.flush()
    event = request["event"]
    content = event["content"]
    if content == "hang":
        time.sleep(1000)
    if content == "crash":
        sys.exit(3)
    answer = {"id": event["id"], "action": "accept"}
    if content == "spam":
        answer = {"id": event["id"], "action": "reject", "msg": "blocked: no spam here"}
    elif content == "shadow":
        answer = {"id": event["id"], "action": "shadowReject", "msg": ""}
    print("a line that is not JSON, which the relay skips")
    print(json.dumps(answer), flush=True)

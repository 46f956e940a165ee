"""NIP-77 sync with rust-nostr's nostr-sdk (`Client.sync`), the way its users run it.

    python3 sync.py URL DB_DIR EVENTS_FILE KIND DIRECTION

The client's database (LMDB in DB_DIR) is first given the events in EVENTS_FILE (one JSON
event per line), then synced with the relay at URL over the filter {"kinds": [KIND]} in
DIRECTION (up, down or both). Prints the summary as JSON: `local` (ids the client had and
the relay lacked), `remote` (the other way), `sent`, `received` (ids moved), `failed`.
"""

import asyncio
import json
import os
import sys
from datetime import timedelta

from nostr_sdk import (
    ClientBuilder,
    Event,
    Filter,
    Kind,
    NostrLmdb,
    RelayUrl,
    SyncDirection,
    SyncOptions,
    uniffi_set_event_loop,
)


async def main(url, db_dir, events_file, kind, direction):
    uniffi_set_event_loop(asyncio.get_running_loop())
    database = await NostrLmdb.open(db_dir)
    with open(events_file) as lines:
        for line in lines:
            if line.strip():
                await database.save_event(Event.from_json(line))
    client = ClientBuilder().database(database).build()
    await client.add_relay(RelayUrl.parse(url))
    await client.try_connect(timedelta(seconds=10))
    options = SyncOptions().direction(getattr(SyncDirection, direction.upper()))
    output = await client.sync(Filter().kind(Kind(kind)), opts=options)
    report = output.report
    ids = lambda items: sorted(item.to_hex() for item in items)
    print(json.dumps({
        "local": ids(report.local),
        "remote": ids(report.remote),
        "sent": ids(report.sent),
        "received": ids(report.received),
        "failed": {str(relay): reason for relay, reason in output.failed.items()},
    }))


if __name__ == "__main__":
    url, db_dir, events_file, kind, direction = sys.argv[1:6]
    asyncio.run(main(url, db_dir, events_file, int(kind), direction))
    # The binding's threads crash the interpreter's teardown (SIGSEGV after a successful
    # sync, nostr-sdk 0.45.1): leave without it once the summary is out.
    sys.stdout.flush()
    os._exit(0)

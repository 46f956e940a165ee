// NDK's NIP-77 sync (@nostr-dev-kit/sync) against a relay, both ways. The client's events
// are a JSON-lines file, served to NDK from an in-memory cache adapter; NDK reconciles the
// filter with the relay, fetches what it lacks into the cache, and the script publishes what
// the relay lacks (NDK reports them as `have`), as an app does. Prints one JSON line:
// {need, have, fetched, published}. Usage: node ndk-sync.mjs ws://127.0.0.1:PORT FILE FILTER
import NDK, { NDKEvent } from '@nostr-dev-kit/ndk'
import { NDKSync } from '@nostr-dev-kit/sync'
import { readFileSync } from 'node:fs'
import WebSocket from 'ws'

globalThis.WebSocket ??= WebSocket
setTimeout(() => { console.error('FAIL the sync took over 60 s'); process.exit(2) }, 60_000).unref()

const [url, file, filterText] = process.argv.slice(2)
const filter = JSON.parse(filterText)
const mine = readFileSync(file, 'utf8').split('\n').filter(Boolean).map((line) => JSON.parse(line))

const matches = (f, e) =>
  (!f.kinds || f.kinds.includes(e.kind)) && (!f.authors || f.authors.includes(e.pubkey)) &&
  (!f.ids || f.ids.includes(e.id)) && (f.since === undefined || e.created_at >= f.since) &&
  (f.until === undefined || e.created_at <= f.until)

// The smallest cache NDK's sync accepts: events by id, queried by filter.
class MemoryCache {
  locking = false
  ready = true
  events = new Map(mine.map((raw) => [raw.id, raw]))
  query (subscription) {
    const raws = [...this.events.values()].filter((raw) => subscription.filters.some((f) => matches(f, raw)))
    return raws.map((raw) => new NDKEvent(subscription.ndk, raw))
  }
  async setEvent (event) { this.events.set(event.id, event.rawEvent()) }
}

const cache = new MemoryCache()
const ndk = new NDK({ explicitRelayUrls: [url], cacheAdapter: cache })
// Not awaited: NDK's pool waits out its whole timeout; the sync waits for the relay itself.
ndk.connect(5000)
const result = await NDKSync.sync(ndk, filter, { relayUrls: [url] })
// Published 500 at a time, each awaiting the relay's OK.
let published = 0
const have = [...result.have]
for (let at = 0; at < have.length; at += 500) {
  const batch = have.slice(at, at + 500).map((id) => new NDKEvent(ndk, cache.events.get(id)).publish())
  published += (await Promise.all(batch)).filter((relays) => relays.size > 0).length
}
const report = { need: [...result.need].sort(), have: [...result.have].sort(), fetched: result.events.map((e) => e.id).sort(), published }
// Exit once the whole line is written (a pipe takes 64 KiB at a time).
process.stdout.write(JSON.stringify(report) + '\n', () => process.exit(0))

// NIP-50 through nostr-tools: the relay says it supports 50, a REQ with `search` returns
// the matching notes best first, with `limit` and `authors`, and a live search subscription
// gets a new match. Usage: node search.mjs ws://127.0.0.1:PORT. Exit 0 when all pass.
import { Relay } from 'nostr-tools/relay'
import { finalizeEvent, generateSecretKey, getPublicKey } from 'nostr-tools/pure'
import { fetchRelayInformation } from 'nostr-tools/nip11'
import WebSocket from 'ws'
import { check, finish, within } from './check.mjs'

setTimeout(() => { console.log('FAIL the checks took over 30 s'); process.exit(2) }, 30_000).unref()
const url = process.argv[2]
const [alice, bob] = [generateSecretKey(), generateSecretKey()]
const now = Math.floor(Date.now() / 1000)
const note = (secret, content, age) => finalizeEvent({ kind: 1, tags: [], content, created_at: now - age }, secret)

const info = await within(fetchRelayInformation(url.replace(/^ws/, 'http')), 'NIP-11')
check('NIP-11 lists 50', info.supported_nips.includes(50), JSON.stringify(info.supported_nips))

const relay = await within(Relay.connect(url, { websocketImplementation: WebSocket }), 'connect')
const notes = [
  note(alice, 'Wombats dig burrows; wombats dig all night', 30),
  note(bob, 'a long note that mentions a wombat once and digging nowhere, just words about other animals entirely', 20),
  note(bob, 'wombats never dig on Sundays', 10),
  note(alice, 'koalas sleep all day', 5)
]
for (const event of notes) {
  const reason = await within(relay.publish(event), 'EVENT')
  check(`published ${event.content.slice(0, 20)}`, reason === '', reason)
}
const query = (filter) => within(new Promise((resolve) => {
  const events = []
  const sub = relay.subscribe([filter], { onevent: (e) => events.push(e), oneose: () => { sub.close(); resolve(events) } })
}), `REQ ${JSON.stringify(filter)}`)
const searched = async (filter, count) => {
  for (let tries = 0; tries < 50; tries++) {
    const events = await query(filter)
    if (events.length >= count) return events
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  return query(filter)
}
const ids = (events) => events.map((e) => e.id).join()
let events = await searched({ search: 'wombats dig' }, 2)
check('every word, best first', ids(events) === ids([notes[0], notes[2]]), JSON.stringify(events.map((e) => e.content)))
events = await query({ search: 'wombats dig', limit: 1 })
check('limit after ranking', ids(events) === ids([notes[0]]), JSON.stringify(events.map((e) => e.content)))
events = await query({ search: 'WOMBATS', authors: [getPublicKey(bob)] })
check('combined with authors', ids(events) === ids([notes[2]]), JSON.stringify(events.map((e) => e.content)))
events = await query({ search: '"dig on sundays"' })
check('a phrase', ids(events) === ids([notes[2]]), JSON.stringify(events.map((e) => e.content)))

const live = []
relay.subscribe([{ search: 'platypus' }], { onevent: (e) => live.push(e) })
await new Promise((resolve) => setTimeout(resolve, 200))
const platypus = note(alice, 'a platypus appears', 0)
await within(relay.publish(platypus), 'EVENT')
await within(relay.publish(note(alice, 'nothing to see', 0)), 'EVENT')
const deadline = Date.now() + 5000
while (live.length < 1 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20))
await new Promise((resolve) => setTimeout(resolve, 200))
check('a live search gets the new match only', ids(live) === ids([platypus]), JSON.stringify(live.map((e) => e.content)))

relay.close()
finish()

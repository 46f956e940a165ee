// The relay through nostr-tools, the JavaScript library most Nostr web clients are built on:
// publish (accepted, duplicate, tampered), REQ by tag, replaceable and addressable events,
// deletion by `a` tag, COUNT, a live event after EOSE, CLOSED for a bad filter, the NIP-11
// document, and NIP-42 AUTH for a protected (NIP-70) event. Usage: node nostr-tools.mjs ws://127.0.0.1:PORT. Exit 0 when all pass.
import { Relay, useWebSocketImplementation } from 'nostr-tools/relay'
import { finalizeEvent, generateSecretKey, getPublicKey } from 'nostr-tools/pure'
import { fetchRelayInformation } from 'nostr-tools/nip11'
import WebSocket from 'ws'
import { check, finish, within } from './check.mjs'

useWebSocketImplementation(WebSocket)
// Never hang a test run: every step below is bounded, and so is the whole.
setTimeout(() => { console.log('FAIL the checks took over 30 s'); process.exit(2) }, 30_000).unref()

const url = process.argv[2]
const secret = generateSecretKey()
const author = getPublicKey(secret)
const now = Math.floor(Date.now() / 1000)
const signed = (kind, tags, content, createdAt = now) =>
  finalizeEvent({ kind, tags, content, created_at: createdAt }, secret)
const refusal = async (promise) => {
  try { await promise; return null } catch (error) { return String(error.message ?? error) }
}

const relay = await within(Relay.connect(url), 'connect')
const query = (filters) => within(new Promise((resolve) => {
  const events = []
  const sub = relay.subscribe(filters, { onevent: (e) => events.push(e), oneose: () => { sub.close(); resolve(events) } })
}), `REQ ${JSON.stringify(filters)}`)

const note = signed(1, [['t', 'nostr-tools-check']], 'quotes " backslash \\ newline \n emoji 🎉 separator \u2028 end')
// publish() resolves with the OK's reason when accepted, and rejects with it otherwise.
const first = await within(relay.publish(note), 'EVENT')
check('a note is accepted', first === '', first)
const again = await within(relay.publish(note), 'EVENT')
check('the same note again is accepted as a duplicate:', String(again).startsWith('duplicate:'), again)
const tampered = await refusal(within(relay.publish({ ...note, content: 'tampered' }), 'EVENT'))
check('a tampered note is refused with invalid:', tampered?.startsWith('invalid:'), tampered)

let events = await query([{ '#t': ['nostr-tools-check'] }])
check('REQ by tag returns the note as signed', events.length === 1 && events[0].id === note.id && events[0].content === note.content, JSON.stringify(events))

const older = signed(0, [], '{"name":"older"}', now - 10)
const newer = signed(0, [], '{"name":"newer"}', now - 5)
await within(relay.publish(older), 'EVENT')
await within(relay.publish(newer), 'EVENT')
events = await query([{ kinds: [0], authors: [author] }])
check('a replaceable event keeps its newest version', events.length === 1 && events[0].id === newer.id, JSON.stringify(events))

await within(relay.publish(signed(30023, [['d', 'post']], 'article', now - 20)), 'EVENT')
await within(relay.publish(signed(5, [['a', `30023:${author}:post`]], '', now - 15)), 'EVENT')
events = await query([{ kinds: [30023], authors: [author] }])
check('a deletion by a tag removes the article', events.length === 0, JSON.stringify(events))
const rewritten = signed(30023, [['d', 'post']], 'article, rewritten', now - 1)
await within(relay.publish(rewritten), 'EVENT')
events = await query([{ kinds: [30023], authors: [author] }])
check('a version newer than the deletion is served', events.length === 1 && events[0].id === rewritten.id, JSON.stringify(events))

// The note, the newest profile, the deletion request and the rewritten article.
const count = await within(relay.count([{ authors: [author] }], {}), 'COUNT')
check('COUNT counts what REQ would return', count === 4, count)

const live = within(new Promise((resolve) => {
  const sub = relay.subscribe([{ kinds: [1], authors: [author], limit: 0 }], {
    onevent: (e) => { sub.close(); resolve(e) },
  })
}), 'a live event')
const later = signed(1, [], 'live')
await within(relay.publish(later), 'EVENT')
check('a live event arrives after EOSE', (await live).id === later.id)

const closed = await within(new Promise((resolve) => {
  relay.subscribe([{ kinds: 'not a list' }], { onclose: resolve, oneose: () => resolve('EOSE instead of CLOSED') })
}), 'a bad filter')
check('a bad filter gets CLOSED with invalid:', String(closed).startsWith('invalid:'), closed)

const info = await within(fetchRelayInformation(url), 'NIP-11')
check('the NIP-11 document lists NIPs and limits', info.supported_nips?.includes(1) && info.limitation?.max_subscriptions > 0, JSON.stringify(info))

// NIP-42 and NIP-70: the challenge came on connect; a protected event needs its author's AUTH.
check('the relay sent an AUTH challenge on connect', typeof relay.challenge === 'string' && relay.challenge.length > 0, relay.challenge)
const guarded = signed(1, [['-']], 'protected')
const unauthed = await refusal(within(relay.publish(guarded), 'EVENT'))
check('a protected event before AUTH is refused with auth-required:', unauthed?.startsWith('auth-required:'), unauthed)
const authed = await refusal(within(relay.auth((template) => finalizeEvent(template, secret)), 'AUTH'))
check('nostr-tools authenticates with the challenge', authed === null, authed)
const published = await within(relay.publish(guarded), 'EVENT')
check('the protected event is accepted from its authenticated author', published === '', published)

relay.close()
finish()

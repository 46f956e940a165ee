// permessage-deflate with Node's `ws`, through nostr-tools: a reader that takes the `ws`
// default (it offers deflate), a plain reader (deflate off), a writer that compresses every
// message it sends, and a raw `ws` client that asks for a 10-bit window. They must all read
// the same live events and stored answers. Usage: node deflate.mjs ws://127.0.0.1:PORT.
// Exit 0 when all pass.
import { Relay } from 'nostr-tools/relay'
import { finalizeEvent, generateSecretKey } from 'nostr-tools/pure'
import WebSocket from 'ws'
import { check, finish, within } from './check.mjs'

setTimeout(() => { console.log('FAIL the checks took over 30 s'); process.exit(2) }, 30_000).unref()

const url = process.argv[2]
const secret = generateSecretKey()
const now = Math.floor(Date.now() / 1000)

class Compressing extends WebSocket {
  constructor (address, protocols) { super(address, protocols, { perMessageDeflate: { threshold: 0 } }) }
}
class Plain extends WebSocket {
  constructor (address, protocols) { super(address, protocols, { perMessageDeflate: false }) }
}
const connect = (websocketImplementation) => within(Relay.connect(url, { websocketImplementation }), 'connect')
const reader = await connect(WebSocket)
const plain = await connect(Plain)
const writer = await connect(Compressing)
check('the default ws client agrees to permessage-deflate', reader.ws.extensions.startsWith('permessage-deflate'), reader.ws.extensions)
check('a client without it gets none', plain.ws.extensions === '', plain.ws.extensions)
check('the compressing writer agrees too', writer.ws.extensions.startsWith('permessage-deflate'), writer.ws.extensions)

// A raw ws client asking the relay to keep within a 10-bit window.
const narrow = new WebSocket(url, { perMessageDeflate: { serverMaxWindowBits: 10 } })
const narrowMessages = []
let answered = ''
narrow.on('upgrade', (response) => { answered = response.headers['sec-websocket-extensions'] ?? '' })
narrow.on('message', (data) => narrowMessages.push(JSON.parse(data.toString())))
await within(new Promise((resolve, reject) => { narrow.once('open', resolve); narrow.once('error', reject) }), 'narrow connect')
check('a window the client asks for is answered', answered.includes('server_max_window_bits=10'), answered)
narrow.send(JSON.stringify(['REQ', 'narrow', { kinds: [1], '#t': ['deflate-check'] }]))

const live = (relay) => {
  const events = []
  relay.subscribe([{ kinds: [1], '#t': ['deflate-check'] }], { onevent: (e) => events.push(e) })
  return events
}
const readerLive = live(reader)
const plainLive = live(plain)
await new Promise((resolve) => setTimeout(resolve, 200))

const notes = [10, 300, 3000, 30000].map((size, i) => finalizeEvent({
  kind: 1,
  tags: [['t', 'deflate-check']],
  content: `${i} émoji 🎉 ` + 'a compressible sentence, '.repeat(Math.ceil(size / 25)),
  created_at: now - i
}, secret))
for (const note of notes) {
  const reason = await within(writer.publish(note), 'EVENT')
  check(`a compressed EVENT of ${note.content.length} characters is accepted`, reason === '', reason)
}
const deadline = Date.now() + 5000
const narrowEvents = () => narrowMessages.filter((m) => m[0] === 'EVENT').map((m) => m[2])
while ((readerLive.length < notes.length || plainLive.length < notes.length || narrowEvents().length < notes.length) && Date.now() < deadline) {
  await new Promise((resolve) => setTimeout(resolve, 20))
}
const same = (events) => JSON.stringify(events.map((e) => [e.id, e.content])) === JSON.stringify(notes.map((e) => [e.id, e.content]))
check('the compressed reader gets every live event as published', same(readerLive), `${readerLive.length} events`)
check('the plain reader gets the same', same(plainLive), `${plainLive.length} events`)
check('the narrow-window reader gets the same', same(narrowEvents()), `${narrowEvents().length} events`)

const query = (relay) => within(new Promise((resolve) => {
  const events = []
  const sub = relay.subscribe([{ '#t': ['deflate-check'] }], { onevent: (e) => events.push(e), oneose: () => { sub.close(); resolve(events) } })
}), 'REQ')
check('a stored answer reads the same compressed', same(await query(reader)))
check('and plain', same(await query(plain)))

reader.close(); plain.close(); writer.close(); narrow.close()
finish()

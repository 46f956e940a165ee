// NIP-50 through the relay: REQ→EOSE latency of search filters, one at a time, over
// whatever the relay holds. QUERIES is a JSON list of search strings (or the defaults,
// made for a store from `cargo bench --bench build_store`: its notes say "note N word
// word ...", replies "reply N", and notes carry a hashtag topic0..topic63). Prints p50,
// p99 and max and the events returned, per query kind.
//   node benches/search-latency.mjs ws://127.0.0.1:PORT [ROUNDS]
// Needs `ws`: run it from the suite's installed client checks, as deflate-memory.mjs.
import WebSocket from 'ws'
const url = process.argv[2]
const rounds = Number(process.argv[3] ?? 100)
const kinds = {
  'one common word ("word", in half the notes)': () => 'word',
  'one rarer word ("topicN", 1/64 of notes)': () => `topic${Math.floor(Math.random() * 64)}`,
  'two words ("reply N")': () => `reply ${Math.floor(Math.random() * 1_000_000)}`,
  'a phrase ("\\"note N\\"")': () => `"note ${Math.floor(Math.random() * 1_000_000)}"`
}
const ws = new WebSocket(url, { perMessageDeflate: false })
await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject) })
let waiting = null
ws.on('message', (data) => {
  const message = JSON.parse(data.toString())
  if (!waiting) return
  if (message[0] === 'EVENT') waiting.events++
  if (message[0] === 'EOSE' || message[0] === 'CLOSED') {
    const done = waiting
    waiting = null
    done.resolve({ ms: Number(process.hrtime.bigint() - done.started) / 1e6, events: done.events })
  }
})
const ask = (search) => new Promise((resolve) => {
  waiting = { events: 0, resolve, started: process.hrtime.bigint() }
  ws.send(JSON.stringify(['REQ', 's', { search, limit: 20 }]))
})
for (const [kind, make] of Object.entries(kinds)) {
  const times = []
  let events = 0
  for (let i = 0; i < rounds; i++) {
    const answer = await ask(make())
    times.push(answer.ms)
    events += answer.events
  }
  times.sort((a, b) => a - b)
  const at = (p) => times[Math.min(times.length - 1, Math.floor(times.length * p))].toFixed(2)
  console.log(`${kind.padEnd(48)} p50 ${at(0.5)} ms, p99 ${at(0.99)} ms, max ${times.at(-1).toFixed(2)} ms, ${(events / rounds).toFixed(1)} events a REQ`)
}
ws.close()
process.exit(0)

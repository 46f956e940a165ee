// Memory per idle compressed connection: CONNS connections through Node's `ws` (which offers
// permessage-deflate unless DEFLATE=0), each with one subscription that one published note
// reaches (unless DELIVER=0), so every connection has compressed a delivery; the relay's resident memory
// (GET /stats) before and after, divided by the count. It needs `ws`: run it from the
// suite's installed client checks (cargo test --test it clients installs them):
//   cp benches/deflate-memory.mjs target/tmp/client-checks/ &&
//   node target/tmp/client-checks/deflate-memory.mjs ws://127.0.0.1:PORT [CONNS]
import WebSocket from 'ws'
const url = process.argv[2]
const conns = Number(process.argv[3] ?? 500)
const deflate = process.env.DEFLATE !== '0'
const http = url.replace(/^ws/, 'http')
const rss = async () => (await (await fetch(`${http}/stats`)).json()).rss_bytes
const open = () => new Promise((resolve, reject) => {
  const ws = new WebSocket(url, { perMessageDeflate: deflate })
  ws.once('open', () => resolve(ws))
  ws.once('error', reject)
})
const before = await rss()
const sockets = []
for (let c = 0; c < conns; c++) sockets.push(await open())
const eose = sockets.map((ws, i) => new Promise((resolve) => {
  ws.on('message', (data) => { const m = JSON.parse(data.toString()); if (m[0] === 'EOSE') resolve() })
  ws.send(JSON.stringify(['REQ', `idle${i}`, { kinds: [1], '#t': ['deflate-memory'], limit: 0 }]))
}))
await Promise.all(eose)
const delivered = sockets.map((ws) => new Promise((resolve) => ws.on('message', (data) => {
  if (JSON.parse(data.toString())[0] === 'EVENT') resolve()
})))
// An unsigned note is refused, so publish a real one signed by nostr-tools.
const { finalizeEvent, generateSecretKey } = await import('nostr-tools/pure')
const note = finalizeEvent({ kind: 1, tags: [['t', 'deflate-memory']], content: 'a note every idle connection gets '.repeat(8), created_at: Math.floor(Date.now() / 1000) }, generateSecretKey())
if (process.env.DELIVER !== '0') sockets[0].send(JSON.stringify(['EVENT', note]))
if (process.env.DELIVER !== '0') await Promise.all(delivered)
await new Promise((resolve) => setTimeout(resolve, 1000))
const after = await rss()
const agreed = sockets.filter((ws) => ws.extensions.includes('permessage-deflate')).length
console.log(`${conns} connections (${agreed} compressed): ${((after - before) / conns / 1024).toFixed(1)} KiB of relay RSS each`)
for (const ws of sockets) ws.terminate()
process.exit(0)

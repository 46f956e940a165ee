// Memory per idle subscription: CONNS connections each open SUBS subscriptions of a typical
// filter; the relay's resident memory (GET /stats) before and after, divided by the count.
// node --experimental-websocket benches/sub-memory.mjs ws://127.0.0.1:PORT [CONNS] [SUBS]
const url = process.argv[2];
const conns = Number(process.argv[3] ?? 20);
const subs = Number(process.argv[4] ?? 200);
const http = url.replace(/^ws/, 'http');
const rss = async () => (await (await fetch(`${http}/stats`)).json()).rss_bytes;
const hex = (i) => i.toString(16).padStart(64, '0');

function open() {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    ws.onopen = () => resolve(ws);
    ws.onerror = reject;
  });
}

function subscribe(ws, base) {
  return new Promise((resolve) => {
    let eose = 0;
    ws.onmessage = (m) => {
      if (JSON.parse(m.data)[0] === 'EOSE' && ++eose === subs) resolve();
    };
    for (let i = 0; i < subs; i++) {
      // A client's usual mix: a follow feed, replies to a note, a profile.
      const filter = [
        { kinds: [1, 6], authors: Array.from({ length: 20 }, (_, a) => hex(base + i * 20 + a)), limit: 0 },
        { kinds: [1, 7], '#e': [hex(base + i)], limit: 0 },
        { kinds: [0], authors: [hex(base + i)], limit: 0 },
      ][i % 3];
      ws.send(JSON.stringify(['REQ', `s${i}`, filter]));
    }
  });
}

const sockets = [];
for (let c = 0; c < conns; c++) sockets.push(await open());
await new Promise((r) => setTimeout(r, 500));
const before = await rss();
for (let c = 0; c < conns; c++) await subscribe(sockets[c], c * subs * 20);
await new Promise((r) => setTimeout(r, 500));
const after = await rss();
const count = conns * subs;
console.log(JSON.stringify({ subscriptions: count, rss_before: before, rss_after: after, bytes_per_subscription: Math.round((after - before) / count) }));
process.exit(0);

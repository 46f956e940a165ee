// COUNT round trip from a node client, three filters three times each: one key from the
// index, the same with since (a counting scan), and since alone.
// node --experimental-websocket benches/count-latency.mjs ws://127.0.0.1:PORT
const ws = new WebSocket(process.argv[2]);
const filters = [{kinds:[1]}, {kinds:[1], since:1}, {since:1}];
let i = 0, t0;
function next() { if (i >= filters.length * 3) process.exit(0); t0 = performance.now(); ws.send(JSON.stringify(["COUNT", "c"+i, filters[i % filters.length]])); }
ws.onopen = next;
ws.onmessage = m => { console.log(JSON.stringify(filters[i % filters.length]), m.data, (performance.now() - t0).toFixed(2), 'ms'); i++; next(); };

// A NIP-98 `Authorization` header for one NIP-86 management call, made with nostr-tools:
//   node nip98.mjs <relay http(s) URL> <admin secret key, 64 hex> '<compact JSON body>'
// prints `Nostr <base64 event>`. The event's payload tag is the SHA-256 of the body, so send
// exactly that body (compact JSON, as JSON.stringify writes it), e.g. with
//   curl -X POST -H 'Content-Type: application/nostr+json+rpc' -H "Authorization: $HEADER" --data "$BODY" "$URL"
import { finalizeEvent } from 'nostr-tools/pure'
import { getToken } from 'nostr-tools/nip98'

const [url, secretHex, body] = process.argv.slice(2)
if (!url || !/^[0-9a-f]{64}$/.test(secretHex ?? '') || body === undefined) {
  console.error("usage: node nip98.mjs <relay URL> <secret key hex> '<JSON body>'")
  process.exit(2)
}
const payload = JSON.parse(body)
if (JSON.stringify(payload) !== body) {
  console.error(`send the body as compact JSON, or its hash will not match: ${JSON.stringify(payload)}`)
  process.exit(2)
}
const secret = Uint8Array.from(secretHex.match(/../g).map((byte) => parseInt(byte, 16)))
console.log(await getToken(url, 'POST', (event) => finalizeEvent(event, secret), true, payload))

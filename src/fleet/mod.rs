//! ringrelay as a client of other relays, the way a fleet converges: a WebSocket
//! [`client`] on glommio (NIP-42 answered with the relay's own key), the relay messages it
//! reads ([`wire`]), and a NIP-77 [`sync`] (reconcile, then fetch and publish the difference)
//! over a [`sync::Local`] side: a stopped data directory (`ringrelay sync`) or the running
//! relay. Nothing here imports the server.

pub mod client;
pub mod sync;
pub mod wire;

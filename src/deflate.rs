//! RFC 7692 permessage-deflate as the relay speaks it, sans-IO: which offer to accept and
//! what to answer, and the codec.
//!
//! Two modes (`[compression] mode`):
//! - **shared**: no context takeover in either direction. Each message is compressed on its
//!   own, so a live event is deflated once and the same bytes go to every compressed
//!   recipient: the recipient's own frame head (`["EVENT","<sub>",`) travels in a stored
//!   block in front of the event's shared deflate blocks. No memory per connection.
//! - **context**: the relay keeps a deflate context (window) per connection, so a message
//!   may refer back to earlier ones: fewer bytes, at a deflate per delivery and the
//!   context's memory, under a per-core budget of such connections (past it a connection
//!   gets the shared mode).
//!
//! Clients are always asked for `client_no_context_takeover`: what they send is inflated by
//! one inflater per core, and a connection holds no inflate window.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use serde::{Deserialize, Serialize};

/// The four bytes a sync flush ends with: RFC 7692 §7.2.1 drops them from each message,
/// and the receiver puts them back before inflating.
const SYNC_TAIL: [u8; 4] = [0, 0, 0xff, 0xff];
/// The most bytes one stored deflate block carries.
const STORED_BLOCK_SIZE_MAX: usize = u16::MAX as usize;
/// The window every client may use, and the relay's inflater has (RFC 7692's default).
pub const WINDOW_BITS_MAX: u8 = 15;
/// The smallest window zlib's raw deflate keeps (it turns 8 into 9).
pub const CONTEXT_WINDOW_BITS_MIN: u8 = 9;
/// Output grown at a time while inflating, at most.
const INFLATE_STEP_SIZE: usize = 16 * 1024;

/// How the relay compresses what it sends (see the module's comment).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Shared,
    Context,
}

/// `[compression]`: permessage-deflate.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompressionConfig {
    /// Accept a client's permessage-deflate offer; `false` declines every offer.
    pub enabled: bool,
    pub mode: Mode,
    /// zlib's level, 1 (fastest) to 9 (smallest).
    pub level: u32,
    /// The context mode's window: 2^window_bits bytes of history, 9 to 15. The context
    /// costs about 2^(window_bits+3) + 128 KiB per connection (docs/benchmarks.md).
    pub window_bits: u8,
    /// Compressed connections one core may hold; past it an offer is declined (the
    /// connection goes uncompressed): what the shared mode costs is a deflate per stored
    /// event answered to each of them.
    pub connections_per_core_max: usize,
    /// Connections of one core that may hold a deflate context (context mode); past it a
    /// connection gets the shared mode.
    pub contexts_per_core_max: usize,
    /// Messages shorter than this go uncompressed (an OK, an EOSE): deflate would save
    /// nothing and cost a call.
    pub size_min: usize,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        CompressionConfig {
            enabled: true,
            mode: Mode::Shared,
            level: 6,
            window_bits: 12,
            connections_per_core_max: 50_000,
            contexts_per_core_max: 1024,
            size_min: 128,
        }
    }
}

impl CompressionConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!((1..=9).contains(&self.level), "compression.level must be 1 to 9");
        anyhow::ensure!(
            (CONTEXT_WINDOW_BITS_MIN..=WINDOW_BITS_MAX).contains(&self.window_bits),
            "compression.window_bits must be 9 to 15"
        );
        anyhow::ensure!(
            self.contexts_per_core_max <= self.connections_per_core_max,
            "compression.contexts_per_core_max must be at most compression.connections_per_core_max"
        );
        Ok(())
    }
}

/// What was agreed with one client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Agreement {
    pub mode: Mode,
    /// A message the relay sends may refer back at most 2^window_bits bytes: a shared copy,
    /// deflated with the largest window, goes only to a message no longer than that.
    pub window_bits: u8,
    /// The client asked for `server_max_window_bits`, so the answer must name it.
    window_asked: bool,
}

impl Agreement {
    /// The `Sec-WebSocket-Extensions` value of the response.
    pub fn response(&self) -> String {
        let mut response = String::from("permessage-deflate; client_no_context_takeover");
        if self.mode == Mode::Shared {
            response.push_str("; server_no_context_takeover");
        }
        if self.mode == Mode::Context || self.window_asked {
            response.push_str(&format!("; server_max_window_bits={}", self.window_bits));
        }
        response
    }

    /// The longest message that may go out as a shared copy (deflated on its own with the
    /// largest window): its references reach back no further than its own length.
    pub fn shared_size_max(&self) -> usize {
        1 << self.window_bits
    }
}

/// The first permessage-deflate offer in `header` (every `Sec-WebSocket-Extensions` value,
/// joined by commas) the relay accepts, and on what terms; `None` declines them all.
/// `context_room`: whether this core may give one more connection a deflate context.
pub fn negotiate(header: &str, config: &CompressionConfig, context_room: bool) -> Option<Agreement> {
    if !config.enabled {
        return None;
    }
    header.split(',').find_map(|offer| accept(offer, config, context_room))
}

/// One offer's terms, if the relay can meet them.
fn accept(offer: &str, config: &CompressionConfig, context_room: bool) -> Option<Agreement> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut seen = Vec::new();
    let mut server_window = None;
    let mut server_no_context = false;
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (param, None),
        };
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return None;
        }
        let bits = || value.and_then(|v| v.parse::<u8>().ok()).filter(|bits| (8..=WINDOW_BITS_MAX).contains(bits));
        match (name.as_str(), value) {
            ("server_no_context_takeover", None) => server_no_context = true,
            ("client_no_context_takeover", None) => {}
            ("server_max_window_bits", Some(_)) => server_window = Some(bits()?),
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(_)) => {
                bits()?;
            }
            _ => return None,
        }
        seen.push(name);
    }
    let window_bits = server_window.unwrap_or(WINDOW_BITS_MAX);
    let context_bits = config.window_bits.min(window_bits);
    let context =
        config.mode == Mode::Context && context_room && !server_no_context && context_bits >= CONTEXT_WINDOW_BITS_MIN;
    Some(Agreement {
        mode: if context { Mode::Context } else { Mode::Shared },
        window_bits: if context { context_bits } else { window_bits },
        window_asked: server_window.is_some(),
    })
}

/// Why a compressed message could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates to more than the message size limit.
    TooLarge,
    /// It is not a valid deflate stream.
    Invalid,
}

/// The compressor and inflater the connections of a core share: each message is handled on
/// its own, so nothing is kept between messages.
pub struct Codec {
    compress: Compress,
    inflate: Decompress,
}

impl Codec {
    pub fn new(level: u32) -> Codec {
        Codec { compress: Compress::new(Compression::new(level), false), inflate: Decompress::new(false) }
    }

    /// `input` deflated on its own, as a message's payload, appended to `out`; `false` (and
    /// `out` as it was) if deflate failed.
    pub fn deflate(&mut self, input: &[u8], out: &mut Vec<u8>) -> bool {
        self.compress.reset();
        deflate_into(&mut self.compress, input, out)
    }

    /// A compressed message's payload inflated, if it comes to at most `size_max` bytes.
    pub fn inflate(&mut self, payload: &[u8], size_max: usize) -> Result<Vec<u8>, InflateError> {
        self.inflate.reset(false);
        let mut out = Vec::with_capacity(payload.len().saturating_mul(3).clamp(64, INFLATE_STEP_SIZE));
        for input in [payload, &SYNC_TAIL] {
            let mut consumed = 0;
            loop {
                if out.len() == out.capacity() {
                    if out.len() > size_max {
                        return Err(InflateError::TooLarge);
                    }
                    out.reserve_exact(
                        (size_max.saturating_add(1) - out.len()).min(out.len().max(64)).min(INFLATE_STEP_SIZE),
                    );
                }
                let read = self.inflate.total_in();
                let status = self
                    .inflate
                    .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
                    .map_err(|_| InflateError::Invalid)?;
                consumed += (self.inflate.total_in() - read) as usize;
                if status == Status::StreamEnd {
                    // A final block ends the message (RFC 7692 §7.2.3.3); nothing may follow.
                    let rest_is_tail = input.len() == consumed || input[consumed..] == SYNC_TAIL[..];
                    return if rest_is_tail { within(out, size_max) } else { Err(InflateError::Invalid) };
                }
                // Room left over: inflate has taken all it can of this input.
                if out.len() < out.capacity() {
                    break;
                }
            }
        }
        within(out, size_max)
    }
}

fn within(out: Vec<u8>, size_max: usize) -> Result<Vec<u8>, InflateError> {
    if out.len() > size_max {
        Err(InflateError::TooLarge)
    } else {
        Ok(out)
    }
}

/// One connection's deflate context (context mode): each message may refer back into the
/// ones before it, within the window.
pub struct Deflater(Compress);

impl Deflater {
    pub fn new(level: u32, window_bits: u8) -> Deflater {
        let bits = window_bits.clamp(CONTEXT_WINDOW_BITS_MIN, WINDOW_BITS_MAX);
        Deflater(Compress::new_with_window_bits(Compression::new(level), false, bits))
    }

    /// `input` deflated in this connection's context, appended to `out`; `false` if deflate
    /// failed (the context is then no longer usable: the connection must not compress again).
    pub fn deflate(&mut self, input: &[u8], out: &mut Vec<u8>) -> bool {
        deflate_into(&mut self.0, input, out)
    }
}

/// Deflate `input` with a sync flush and drop the flush's tail (RFC 7692 §7.2.1).
fn deflate_into(compress: &mut Compress, input: &[u8], out: &mut Vec<u8>) -> bool {
    let start = out.len();
    let mut consumed = 0;
    loop {
        out.reserve(input.len().saturating_sub(consumed) / 2 + 64);
        let read = compress.total_in();
        if compress.compress_vec(&input[consumed..], out, FlushCompress::Sync).is_err() {
            out.truncate(start);
            return false;
        }
        consumed += (compress.total_in() - read) as usize;
        // The flush is complete once deflate stops short of the room it was given.
        if consumed == input.len() && out.len() < out.capacity() {
            break;
        }
    }
    if !out[start..].ends_with(&SYNC_TAIL) {
        out.truncate(start);
        return false;
    }
    out.truncate(out.len() - SYNC_TAIL.len());
    true
}

/// A message's payload made of `head` in stored (uncompressed) deflate blocks, then `body`,
/// a payload deflated on its own: how one compressed copy of a broadcast goes to recipients
/// whose frames begin differently. `body`'s references stay within itself, so what comes
/// before it does not change what it means.
pub fn stored_then(head: &[u8], body: &[u8], out: &mut Vec<u8>) {
    out.reserve(head.len() + 5 * head.len().div_ceil(STORED_BLOCK_SIZE_MAX) + body.len());
    for chunk in head.chunks(STORED_BLOCK_SIZE_MAX) {
        let size = chunk.len() as u16;
        // BFINAL 0, BTYPE 00 (stored), padded to the byte; LEN and NLEN, little-endian.
        out.push(0);
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&(!size).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(mode: Mode) -> CompressionConfig {
        CompressionConfig { mode, ..CompressionConfig::default() }
    }

    fn note(n: usize) -> String {
        format!(
            r#"{{"id":"{:064x}","pubkey":"{:064x}","created_at":{},"kind":1,"tags":[["p","{:064x}"]],"content":"hello number {n}, hello again","sig":"{:0128x}"}}"#,
            n * 7919,
            n % 13,
            1_700_000_000 + n,
            n % 5,
            n
        )
    }

    #[test]
    fn the_first_acceptable_offer_is_taken_on_the_relays_terms() {
        let shared = config(Mode::Shared);
        let agreed = negotiate("permessage-deflate; client_max_window_bits", &shared, true).unwrap();
        assert_eq!(agreed.mode, Mode::Shared);
        assert_eq!(agreed.response(), "permessage-deflate; client_no_context_takeover; server_no_context_takeover");
        // An unknown parameter declines that offer; the next one is taken.
        let agreed =
            negotiate("permessage-deflate; x_other, permessage-deflate; server_max_window_bits=10", &shared, true)
                .unwrap();
        assert_eq!(agreed.window_bits, 10);
        assert_eq!(agreed.shared_size_max(), 1024);
        assert!(agreed.response().ends_with("; server_max_window_bits=10"));
        for declined in [
            "x-webkit-deflate-frame",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_no_context_takeover=1",
        ] {
            assert_eq!(negotiate(declined, &shared, true), None, "{declined}");
        }
        let off = CompressionConfig { enabled: false, ..shared };
        assert_eq!(negotiate("permessage-deflate", &off, true), None);
    }

    #[test]
    fn a_context_is_given_within_the_budget_and_the_clients_window() {
        let context = config(Mode::Context);
        let agreed = negotiate("permessage-deflate", &context, true).unwrap();
        assert_eq!((agreed.mode, agreed.window_bits), (Mode::Context, 12));
        assert_eq!(agreed.response(), "permessage-deflate; client_no_context_takeover; server_max_window_bits=12");
        let narrower = negotiate("permessage-deflate; server_max_window_bits=10", &context, true).unwrap();
        assert_eq!((narrower.mode, narrower.window_bits), (Mode::Context, 10));
        // No room on the core, a client that forbids it, or a window zlib cannot keep: shared.
        for (offer, room) in [
            ("permessage-deflate", false),
            ("permessage-deflate; server_no_context_takeover", true),
            ("permessage-deflate; server_max_window_bits=8", true),
        ] {
            let agreed = negotiate(offer, &context, room).unwrap();
            assert_eq!(agreed.mode, Mode::Shared, "{offer}");
            assert!(agreed.response().contains("server_no_context_takeover"));
        }
    }

    #[test]
    fn what_is_deflated_inflates_back_alone_after_a_stored_head_and_in_context() {
        let mut codec = Codec::new(6);
        let text = note(1);
        let mut body = Vec::new();
        assert!(codec.deflate(text.as_bytes(), &mut body));
        assert!(body.len() < text.len() * 3 / 4, "{} of {}", body.len(), text.len());
        assert_eq!(codec.inflate(&body, 1 << 20).unwrap(), text.as_bytes());
        // The shared copy behind two different heads.
        for head in [&br#"["EVENT","a","#[..], &br#"["EVENT","a much longer subscription id","#[..]] {
            let mut frame = Vec::new();
            stored_then(head, &body, &mut frame);
            assert_eq!(codec.inflate(&frame, 1 << 20).unwrap(), [head, text.as_bytes()].concat());
        }
        // A context: later messages are smaller, and a fresh-context reader with the
        // history (flate2's own inflater, kept across messages) reads them all.
        let mut deflater = Deflater::new(6, 12);
        let mut reader = Decompress::new(false);
        let mut sizes = Vec::new();
        for n in 0..20 {
            let text = note(n);
            let mut payload = Vec::new();
            assert!(deflater.deflate(text.as_bytes(), &mut payload));
            sizes.push(payload.len());
            payload.extend_from_slice(&SYNC_TAIL);
            let mut out = Vec::with_capacity(4096);
            reader.decompress_vec(&payload, &mut out, FlushDecompress::Sync).unwrap();
            assert_eq!(out, text.as_bytes());
        }
        assert!(sizes[19] < sizes[0] / 2, "{sizes:?}");
    }

    #[test]
    fn a_bomb_or_garbage_is_refused_not_inflated() {
        let mut codec = Codec::new(6);
        let zeros = vec![b'a'; 1 << 20];
        let mut bomb = Vec::new();
        assert!(codec.deflate(&zeros, &mut bomb));
        assert!(bomb.len() < 4096);
        assert_eq!(codec.inflate(&bomb, 64 * 1024), Err(InflateError::TooLarge));
        assert_eq!(codec.inflate(&bomb, 1 << 20).map(|out| out.len()), Ok(1 << 20));
        assert_eq!(codec.inflate(&[0xff, 0xff, 0xff, 0x12, 0x34], 1 << 20), Err(InflateError::Invalid));
        // A final block ends the message; bytes after it are not a message.
        let mut finished = Compress::new(Compression::new(6), false);
        let mut payload = Vec::with_capacity(256);
        finished.compress_vec(b"[\"REQ\",\"x\",{}]", &mut payload, FlushCompress::Finish).unwrap();
        assert_eq!(codec.inflate(&payload, 1024).unwrap(), b"[\"REQ\",\"x\",{}]");
        payload.extend_from_slice(b"junk");
        assert_eq!(codec.inflate(&payload, 1024), Err(InflateError::Invalid));
        // The codec is fine for the next message.
        assert_eq!(codec.inflate(&bomb, 1 << 20).map(|out| out.len()), Ok(1 << 20));
    }
}

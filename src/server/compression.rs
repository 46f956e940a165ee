//! permessage-deflate on one core: what each connection agreed (its [`Wire`]), the codec
//! the core's connections share, and the budget of connections holding a deflate context.
//! The negotiation and the codec themselves are sans-IO, in [`crate::deflate`].

use std::cell::RefCell;
use std::rc::Rc;

use async_tungstenite::tungstenite::protocol::frame::coding::{Data as OpData, OpCode};
use async_tungstenite::tungstenite::protocol::frame::Frame;
use async_tungstenite::tungstenite::Message;

use super::outbox::Out;
use super::stats::{Gauge, Stats};
use crate::deflate::{self, Agreement, Codec, CompressionConfig, Deflater, InflateError, Mode};
use crate::proto;

/// How one connection's messages go on the wire.
pub enum Wire {
    Plain,
    /// Each message compressed on its own; a live event as its shared copy. Messages longer
    /// than `size_max` (the client's window) go uncompressed.
    Shared {
        size_max: usize,
        _slot: Held,
    },
    /// Compressed in the connection's own context, counted in the core's budget while held.
    Context {
        deflater: Deflater,
        _slot: Held,
        _context: Held,
    },
}

impl Wire {
    pub fn is_compressed(&self) -> bool {
        !matches!(self, Wire::Plain)
    }
}

/// One of a core's compressed connections (`connections_per_core_max`) or deflate
/// contexts (`contexts_per_core_max`), counted in its gauge while the connection holds it.
pub struct Held {
    stats: Rc<Stats>,
    gauge: fn(&Stats) -> &Gauge,
}

impl Held {
    fn take(stats: &Rc<Stats>, gauge: fn(&Stats) -> &Gauge) -> Held {
        gauge(stats).add(1);
        Held { stats: stats.clone(), gauge }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        (self.gauge)(&self.stats).sub(1);
    }
}

/// A message ready for the socket, and its sizes: as the client reads it, and on the wire.
pub struct Encoded {
    pub message: Message,
    pub size: usize,
    pub wire_size: usize,
}

pub struct Compression {
    config: CompressionConfig,
    /// Each message on its own: the shared mode's compressor, and every client's inflater.
    codec: RefCell<Codec>,
    stats: Rc<Stats>,
}

impl Compression {
    pub fn new(config: CompressionConfig, stats: Rc<Stats>) -> Compression {
        Compression { codec: RefCell::new(Codec::new(config.level)), config, stats }
    }

    /// The terms for a client that sent `offers` (its `Sec-WebSocket-Extensions`): the
    /// extension to answer with, and the connection's wire.
    pub fn agree(&self, offers: Option<&str>) -> (Option<String>, Wire) {
        let room = self.stats.deflate_contexts.get() < self.config.contexts_per_core_max as u64;
        let Some(agreement) = offers.and_then(|offers| deflate::negotiate(offers, &self.config, room)) else {
            return (None, Wire::Plain);
        };
        if self.stats.deflate_connections.get() >= self.config.connections_per_core_max as u64 {
            self.stats.deflate_declined.inc();
            return (None, Wire::Plain);
        }
        self.stats.compressed_connections.inc();
        if self.config.mode == Mode::Context && agreement.mode == Mode::Shared {
            self.stats.deflate_contexts_declined.inc();
        }
        (Some(agreement.response()), self.wire(&agreement))
    }

    fn wire(&self, agreement: &Agreement) -> Wire {
        let slot = Held::take(&self.stats, |stats| &stats.deflate_connections);
        match agreement.mode {
            Mode::Shared => Wire::Shared { size_max: agreement.shared_size_max(), _slot: slot },
            Mode::Context => Wire::Context {
                deflater: Deflater::new(self.config.level, agreement.window_bits),
                _slot: slot,
                _context: Held::take(&self.stats, |stats| &stats.deflate_contexts),
            },
        }
    }

    /// `out` as the message to write on `wire`; `None` for a close.
    pub fn encode(&self, wire: &mut Wire, out: Out) -> Option<Encoded> {
        if let (Wire::Shared { size_max, .. }, Out::Event { sub, event }) = (&*wire, &out) {
            let head = proto::frame_event_head(sub);
            let size = head.len() + event.json.len() + 1;
            if (self.config.size_min..=*size_max).contains(&size) {
                let body = event.packed(|json| {
                    let input = [json.as_bytes(), b"]"].concat();
                    self.deflated(&input, input.len())
                });
                if let Some(body) = body {
                    let mut payload = Vec::new();
                    deflate::stored_then(head.as_bytes(), body, &mut payload);
                    return Some(compressed(payload, size));
                }
            }
        }
        let text = out.into_text()?;
        let size = text.len();
        if size < self.config.size_min {
            return Some(plain(text));
        }
        match wire {
            Wire::Plain => Some(plain(text)),
            Wire::Shared { size_max, .. } if size > *size_max => Some(plain(text)),
            Wire::Shared { .. } => Some(match self.deflated(text.as_bytes(), size) {
                Some(payload) => compressed(payload.into_vec(), size),
                None => plain(text),
            }),
            Wire::Context { deflater, .. } => {
                let mut payload = Vec::new();
                if deflater.deflate(text.as_bytes(), &mut payload) {
                    return Some(compressed(payload, size));
                }
                // A failed deflate leaves the context unknown: nothing more is compressed.
                *wire = Wire::Plain;
                Some(plain(text))
            }
        }
    }

    /// `input` deflated on its own, if that makes it smaller than `size` on the wire.
    fn deflated(&self, input: &[u8], size: usize) -> Option<Box<[u8]>> {
        let mut out = Vec::new();
        let made = self.codec.borrow_mut().deflate(input, &mut out);
        (made && out.len() + 8 < size).then(|| out.into_boxed_slice())
    }

    /// A compressed message's payload, inflated within `size_max` bytes.
    pub fn inflate(&self, payload: &[u8], size_max: usize) -> Result<Vec<u8>, InflateError> {
        self.codec.borrow_mut().inflate(payload, size_max)
    }
}

fn plain(text: String) -> Encoded {
    let size = text.len();
    Encoded { message: Message::text(text), size, wire_size: size }
}

/// A text message's compressed payload, as a frame with RSV1 set (RFC 7692 §6).
fn compressed(payload: Vec<u8>, size: usize) -> Encoded {
    let wire_size = payload.len();
    let mut frame = Frame::message(payload.into_boxed_slice(), OpCode::Data(OpData::Text), true);
    frame.header_mut().rsv1 = true;
    Encoded { message: Message::Frame(frame), size, wire_size }
}

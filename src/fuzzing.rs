//! Entry points of the fuzz targets in `fuzz/`, and of the suite that replays the inputs
//! they found (`tests/it/fuzz_regressions.rs` runs `fuzz/regressions/TARGET/*`). Each feeds
//! arbitrary bytes to one reader of untrusted input and checks what must hold for every
//! input; a panic anywhere is a finding.

use crate::event::parse_event;
use crate::limits::{EventLimits, SHARD_COUNT_MAX};
use crate::proto::{parse_client_message, MessageLimits};
use crate::store::crypto::SegmentKey;
use crate::store::{datadir, format, segment};

/// A segment file as read at open, by `verify` and by `repair`: header, records (plain and
/// with a key), seal, and the search for records that vouch for damage.
pub fn segment(bytes: &[u8]) {
    let _ = format::SegmentHeader::decode(bytes);
    let _ = format::seal_offset(bytes);
    let key = SegmentKey::from_bytes([7; 32]);
    for key in [None, Some(&key)] {
        let scanned = segment::scan(bytes, key, |span, record| {
            assert!(span.end() <= bytes.len().next_multiple_of(format::RECORD_ALIGN));
            let _ = (record.json.len(), record.tag_pairs().count());
        });
        if let Ok(report) = scanned {
            assert!(report.valid_end <= bytes.len().next_multiple_of(format::RECORD_ALIGN));
            if let Some((offset, _)) = report.corrupt {
                if let Some(after) = format::acknowledged_after(bytes, offset) {
                    assert!(after > offset);
                }
            }
        }
    }
}

/// Record payloads a reader finds behind valid checksums: the input, cut at its `0xff 0xff`
/// pairs, framed as event records (and a seal) of a segment whose checksums all hold, so
/// that the archive check (`record::access`) and the seal see arbitrary payloads, which
/// random bytes behind a blake3 checksum never reach.
pub fn framed_records(bytes: &[u8]) {
    let header = format::SegmentHeader { shard_id: 0, segment_id: 1, created_unix_ms: 0, key_check: None };
    let payloads: Vec<Vec<u8>> = bytes
        .split(|&b| b == 0xff)
        .filter(|p| !p.is_empty() && p.len() <= format::RECORD_PAYLOAD_SIZE_MAX)
        .map(<[u8]>::to_vec)
        .collect();
    let framed = segment::build_sealed_segment(&header, None, &payloads);
    segment(&framed);
    // The same records without their seal, as a crash leaves the newest segment.
    if let Some(seal) = format::seal_offset(&framed) {
        segment(&framed[..seal]);
    }
}

/// A data directory's manifest.
pub fn manifest(bytes: &[u8]) {
    if let Ok((shards, _)) = std::str::from_utf8(bytes).map_err(|e| e.to_string()).and_then(datadir::parse_manifest) {
        assert!(shards >= 1 && usize::from(shards) <= SHARD_COUNT_MAX);
    }
}

/// An event object from a client: a parsed event's stored JSON parses again to itself.
pub fn event(bytes: &[u8]) {
    let limits = EventLimits::default();
    if let Ok(event) = parse_event(bytes, &limits) {
        let again = parse_event(event.json.as_bytes(), &limits).expect("the stored JSON parses again");
        assert_eq!(again.json, event.json);
        assert_eq!(again.id, event.id);
    }
}

/// A text frame from a client.
pub fn client_message(bytes: &[u8]) {
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = parse_client_message(text, &MessageLimits::default());
        let _ = crate::proto::event_id_in_unparsed(text);
    }
}

/// A NIP-77 message from a client, to the relay's side of a sync over a small fixed set:
/// as the first message (`NEG-OPEN`) and as a later one (`NEG-MSG`). An error is an
/// answer; a panic or an allocation the message sizes is the bug.
pub fn neg_message(bytes: &[u8]) {
    use crate::server::negsync::Built;
    let items: Vec<(u64, [u8; 32])> = (0..40u8).map(|n| (u64::from(n / 3), [n; 32])).collect();
    let _ = Built::build(items.clone(), 0, bytes);
    if let Ok((mut built, _)) = Built::build(items, 4096, &[0x61]) {
        let _ = built.reconcile(bytes);
    }
}

/// What another relay sends a syncing client (`ringrelay sync`, a peer link), all of it
/// untrusted: its messages as `fleet::wire` reads them, and a NEG-MSG answer to the
/// initiating side of a sync over a small set (bad varints, huge id lists, ranges that
/// overlap or go backwards).
pub fn relay_message(bytes: &[u8]) {
    use negentropy::{Id, Negentropy};
    if let Ok(text) = std::str::from_utf8(bytes) {
        if let Ok(crate::fleet::wire::RelayMessage::Event { event, .. }) = crate::fleet::wire::RelayMessage::parse(text)
        {
            let _ = crate::fleet::sync::event_id(&event);
        }
    }
    let items: Vec<(u64, [u8; 32])> = (0..40u8).map(|n| (u64::from(n / 3), [n; 32])).collect();
    let Ok(storage) = crate::fleet::sync::sealed_set(items) else { return };
    let Ok(mut client) = Negentropy::owned(storage, 60_000) else { return };
    if client.initiate().is_ok() {
        let (mut have, mut need): (Vec<Id>, Vec<Id>) = (Vec::new(), Vec::new());
        let _ = client.reconcile_with_ids(bytes, &mut have, &mut need);
    }
}

/// A NIP-50 `search` value from a client, and text to match it against: the query is
/// refused or read, and a query read from text matches that text (live matching agrees
/// with what the words say). The first line is the query, the rest the text.
pub fn search_query(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    let (query, body) = text.split_once('\n').unwrap_or((text, ""));
    if let Ok(parsed) = crate::search::SearchQuery::parse(query) {
        let _ = parsed.matches(body);
        // The query's own text, its quotes and extensions left out, holds what it asks for.
        let own: Vec<&str> = query
            .split('"')
            .enumerate()
            .flat_map(|(n, piece)| match n % 2 {
                1 => vec![piece],
                _ => piece.split_whitespace().filter(|word| !parsed.extensions.iter().any(|e| e == word)).collect(),
            })
            .collect();
        assert!(parsed.matches(&own.join(" ")), "{parsed:?}");
    }
    let _ = crate::search::text::searchable_text_of_json(body);
}

/// What a client sends on a connection that agreed to permessage-deflate: its offer (the
/// first line) negotiated, and the rest inflated within a small limit. A bomb or garbage is
/// an error; a panic, or an output over the limit, is the bug.
pub fn compressed_message(bytes: &[u8]) {
    use crate::deflate::{negotiate, Codec, CompressionConfig, Mode};
    let split = bytes.iter().position(|&b| b == b'\n').unwrap_or(bytes.len());
    if let Ok(offer) = std::str::from_utf8(&bytes[..split]) {
        for mode in [Mode::Shared, Mode::Context] {
            let config = CompressionConfig { mode, ..CompressionConfig::default() };
            if let Some(agreed) = negotiate(offer, &config, true) {
                assert!(agreed.response().starts_with("permessage-deflate"));
            }
        }
    }
    let payload = bytes.get(split + 1..).unwrap_or_default();
    let mut codec = Codec::new(6);
    if let Ok(out) = codec.inflate(payload, 4096) {
        assert!(out.len() <= 4096);
    }
}

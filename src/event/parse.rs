//! Bounded parse of an event's wire JSON into a [`ParsedEvent`]: every limit is checked
//! before the thing it limits is kept, the served JSON bytes are built once, and the id is
//! checked against the sha256 of the canonical serialization.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use sha2::{Digest, Sha256};

use super::ids::{EventId, Pubkey};
use super::json;
use crate::limits::{EventLimits, JSON_DEPTH_MAX};

/// Why an event was refused. Every variant reads after `invalid: ` in an `OK` reply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("event is {size} bytes, more than the {max} allowed")]
    TooLarge { size: usize, max: usize },
    #[error("event json nests deeper than {0} levels")]
    TooDeep(usize),
    #[error("malformed event json: {0}")]
    Json(String),
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    #[error("duplicate field `{0}`")]
    DuplicateField(&'static str),
    #[error("`{0}` is not lowercase hex of the right length")]
    BadHex(&'static str),
    #[error("kind {0} is out of range 0..=65535")]
    KindOutOfRange(u64),
    #[error("created_at {0} is out of range")]
    CreatedAtOutOfRange(u64),
    #[error("more than {0} tags")]
    TooManyTags(usize),
    #[error("a tag has more than {0} elements")]
    TagTooLong(usize),
    #[error("a tag element is more than {0} bytes")]
    TagElementTooLarge(usize),
    #[error("content is more than {0} bytes")]
    ContentTooLarge(usize),
    #[error("event id does not match its content")]
    IdMismatch,
    #[error("pubkey is not a valid secp256k1 x-only key")]
    BadPubkey,
    #[error("signature is invalid")]
    BadSignature,
}

impl EventError {
    /// The NIP-01 `OK` reason: machine-readable prefix, then the message.
    pub fn reason(&self) -> String {
        format!("invalid: {self}")
    }

    /// A short name for the metrics' `reason` label.
    pub fn label(&self) -> &'static str {
        match self {
            EventError::TooLarge { .. } => "too_large",
            EventError::TooDeep(_) => "too_deep",
            EventError::Json(_) => "malformed_json",
            EventError::MissingField(_) => "missing_field",
            EventError::DuplicateField(_) => "duplicate_field",
            EventError::BadHex(_) => "bad_hex",
            EventError::KindOutOfRange(_) => "kind_out_of_range",
            EventError::CreatedAtOutOfRange(_) => "created_at_out_of_range",
            EventError::TooManyTags(_) => "too_many_tags",
            EventError::TagTooLong(_) => "tag_too_long",
            EventError::TagElementTooLarge(_) => "tag_element_too_large",
            EventError::ContentTooLarge(_) => "content_too_large",
            EventError::IdMismatch => "id_mismatch",
            EventError::BadPubkey => "bad_pubkey",
            EventError::BadSignature => "bad_signature",
        }
    }

    /// A reason without the details of one event, for counting rejections by kind.
    pub fn category(&self) -> &'static str {
        match self {
            EventError::TooLarge { .. } => "invalid: event too large",
            EventError::TooDeep(_) => "invalid: event json nests too deep",
            EventError::Json(_) => "invalid: malformed event json",
            EventError::MissingField(_) => "invalid: missing field",
            EventError::DuplicateField(_) => "invalid: duplicate field",
            EventError::BadHex(_) => "invalid: bad hex",
            EventError::KindOutOfRange(_) => "invalid: kind out of range",
            EventError::CreatedAtOutOfRange(_) => "invalid: created_at out of range",
            EventError::TooManyTags(_) => "invalid: too many tags",
            EventError::TagTooLong(_) => "invalid: tag too long",
            EventError::TagElementTooLarge(_) => "invalid: tag element too large",
            EventError::ContentTooLarge(_) => "invalid: content too large",
            EventError::IdMismatch => "invalid: id mismatch",
            EventError::BadPubkey => "invalid: bad pubkey",
            EventError::BadSignature => "invalid: bad signature",
        }
    }
}

/// A single-letter tag's first value, the unit of the tag index (NIP-01: "only the first
/// value in any given tag is indexed").
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IndexTag {
    pub letter: u8,
    pub value: Box<[u8]>,
}

/// An event whose structure, limits and id are checked, but not yet its signature.
#[derive(Clone, Debug)]
pub struct ParsedEvent {
    pub id: EventId,
    pub pubkey: Pubkey,
    pub sig: [u8; 64],
    pub created_at: u64,
    pub kind: u16,
    /// Single-letter tags with a value, in event order.
    pub index_tags: Vec<IndexTag>,
    /// NIP-40 `expiration`, when present and well-formed.
    pub expiration: Option<u64>,
    /// NIP-70 `["-"]`.
    pub protected: bool,
    /// The compact JSON the relay stores and serves.
    pub json: String,
}

/// Largest `created_at` accepted: JavaScript's largest safe integer, so every client can
/// represent it.
pub const CREATED_AT_MAX: u64 = (1 << 53) - 1;

/// Parse and id-check one event object. Limits are checked before allocating.
pub fn parse_event(bytes: &[u8], limits: &EventLimits) -> Result<ParsedEvent, EventError> {
    if bytes.len() > limits.event_size_max {
        return Err(EventError::TooLarge { size: bytes.len(), max: limits.event_size_max });
    }
    let refusal = Cell::new(None);
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let wire = EventSeed { limits, refusal: &refusal }
        .deserialize(&mut deserializer)
        .and_then(|wire| deserializer.end().map(|()| wire));
    let wire = match (wire, refusal.take()) {
        (_, Some(error)) => return Err(error),
        (Err(error), None) => return Err(EventError::Json(error.to_string())),
        (Ok(wire), None) => wire,
    };
    wire.into_parsed()
}

/// The event as read off the wire, borrowing from the input where no escapes intervene.
struct WireEvent<'a> {
    id: [u8; 32],
    pubkey: [u8; 32],
    sig: [u8; 64],
    created_at: u64,
    kind: u16,
    tags: Vec<Vec<Cow<'a, str>>>,
    content: Cow<'a, str>,
}

impl WireEvent<'_> {
    /// The served JSON's length when nothing needs escaping: fields, hex, punctuation, and
    /// each tag element and the content quoted. Escapes grow the buffer, rarely.
    fn served_len_estimate(&self) -> usize {
        const FIXED: usize = r#"{"id":"","pubkey":"","created_at":,"kind":,"tags":,"content":"","sig":""}"#.len();
        let tags: usize =
            self.tags.iter().map(|tag| 3 + tag.iter().map(|element| element.len() + 3).sum::<usize>()).sum();
        FIXED + 2 * (32 + 32 + 64) + 20 + 5 + 2 + tags + self.content.len()
    }

    fn into_parsed(self) -> Result<ParsedEvent, EventError> {
        // Built as a `String` from parsed strings and ASCII, so it is known to be UTF-8
        // without checking it again when it is served.
        let mut out = String::with_capacity(self.served_len_estimate());
        out.push_str("{\"id\":\"");
        crate::hex::encode_into(&self.id, &mut out);
        out.push_str("\",\"pubkey\":\"");
        let pubkey_at = out.len();
        crate::hex::encode_into(&self.pubkey, &mut out);
        out.push_str("\",\"created_at\":");
        let created_at_at = out.len();
        out.push_str(itoa::Buffer::new().format(self.created_at));
        let created_at_end = out.len();
        out.push_str(",\"kind\":");
        out.push_str(itoa::Buffer::new().format(self.kind));
        let kind_end = out.len();
        out.push_str(",\"tags\":");
        let tags_at = out.len();
        write_tags(&mut out, &self.tags);
        let tags_end = out.len();
        out.push_str(",\"content\":");
        let content_at = out.len();
        json::write_str(&mut out, &self.content);
        let content_end = out.len();
        out.push_str(",\"sig\":\"");
        crate::hex::encode_into(&self.sig, &mut out);
        out.push_str("\"}");
        let served = out.as_bytes();

        // Canonical form: [0,"<pubkey>",<created_at>,<kind>,<tags>,<content>], hashed from
        // the pieces of the served JSON without building it.
        let mut hasher = Sha256::new();
        hasher.update(b"[0,\"");
        hasher.update(&served[pubkey_at..pubkey_at + 64]);
        hasher.update(b"\",");
        hasher.update(&served[created_at_at..created_at_end]);
        hasher.update(b",");
        hasher.update(&served[created_at_end + 8..kind_end]);
        hasher.update(b",");
        hasher.update(&served[tags_at..tags_end]);
        hasher.update(b",");
        hasher.update(&served[content_at..content_end]);
        hasher.update(b"]");
        if hasher.finalize().as_slice() != self.id {
            return Err(EventError::IdMismatch);
        }

        let (index_tags, expiration, protected) = tag_facts(&self.tags);
        Ok(ParsedEvent {
            id: EventId(self.id),
            pubkey: Pubkey(self.pubkey),
            sig: self.sig,
            created_at: self.created_at,
            kind: self.kind,
            index_tags,
            expiration,
            protected,
            json: out,
        })
    }
}

fn write_tags(out: &mut String, tags: &[Vec<Cow<'_, str>>]) {
    out.push('[');
    for (tag_index, tag) in tags.iter().enumerate() {
        if tag_index > 0 {
            out.push(',');
        }
        out.push('[');
        for (element_index, element) in tag.iter().enumerate() {
            if element_index > 0 {
                out.push(',');
            }
            json::write_str(out, element);
        }
        out.push(']');
    }
    out.push(']');
}

/// Index tags, NIP-40 expiration and NIP-70 protection, read once from the tags.
fn tag_facts(tags: &[Vec<Cow<'_, str>>]) -> (Vec<IndexTag>, Option<u64>, bool) {
    let mut index_tags = Vec::new();
    let mut expiration = None;
    let mut protected = false;
    for tag in tags {
        let name = tag.first().map(|name| name.as_bytes()).unwrap_or_default();
        match (name, tag.get(1)) {
            ([letter], Some(value)) if letter.is_ascii_alphabetic() => {
                index_tags.push(IndexTag { letter: *letter, value: value.as_bytes().into() })
            }
            (b"-", None) => protected = true,
            (b"expiration", Some(value)) if expiration.is_none() => expiration = value.parse().ok(),
            _ => {}
        }
    }
    (index_tags, expiration, protected)
}

#[derive(Clone, Copy)]
struct EventSeed<'l> {
    limits: &'l EventLimits,
    refusal: &'l Cell<Option<EventError>>,
}

impl EventSeed<'_> {
    /// Remember the typed reason and stop the parser.
    fn refuse<E: de::Error>(&self, error: EventError) -> E {
        let message = error.to_string();
        self.refusal.set(Some(error));
        E::custom(message)
    }
}

impl<'de> DeserializeSeed<'de> for EventSeed<'_> {
    type Value = WireEvent<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

#[derive(serde::Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Field {
    Id,
    Pubkey,
    CreatedAt,
    Kind,
    Tags,
    Content,
    Sig,
    #[serde(other)]
    Other,
}

impl<'de> Visitor<'de> for EventSeed<'_> {
    type Value = WireEvent<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut id = None;
        let mut pubkey = None;
        let mut sig = None;
        let mut created_at = None;
        let mut kind = None;
        let mut tags = None;
        let mut content = None;
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Id => set_once(self, &mut id, "id", hex_field::<32, _>(self, "id", &mut map)?)?,
                Field::Pubkey => set_once(self, &mut pubkey, "pubkey", hex_field::<32, _>(self, "pubkey", &mut map)?)?,
                Field::Sig => set_once(self, &mut sig, "sig", hex_field::<64, _>(self, "sig", &mut map)?)?,
                Field::CreatedAt => {
                    let value: u64 = map.next_value()?;
                    if value > CREATED_AT_MAX {
                        return Err(self.refuse(EventError::CreatedAtOutOfRange(value)));
                    }
                    set_once(self, &mut created_at, "created_at", value)?
                }
                Field::Kind => {
                    let value: u64 = map.next_value()?;
                    let value = u16::try_from(value).map_err(|_| self.refuse(EventError::KindOutOfRange(value)))?;
                    set_once(self, &mut kind, "kind", value)?
                }
                Field::Tags => {
                    let value = map.next_value_seed(TagsSeed(self))?;
                    set_once(self, &mut tags, "tags", value)?
                }
                Field::Content => {
                    let Str(value) = map.next_value()?;
                    if value.len() > self.limits.content_size_max {
                        return Err(self.refuse(EventError::ContentTooLarge(self.limits.content_size_max)));
                    }
                    set_once(self, &mut content, "content", value)?
                }
                Field::Other => map.next_value_seed(BoundedIgnore { seed: self, depth_left: JSON_DEPTH_MAX - 1 })?,
            }
        }
        let missing = |name| self.refuse::<A::Error>(EventError::MissingField(name));
        Ok(WireEvent {
            id: id.ok_or_else(|| missing("id"))?,
            pubkey: pubkey.ok_or_else(|| missing("pubkey"))?,
            sig: sig.ok_or_else(|| missing("sig"))?,
            created_at: created_at.ok_or_else(|| missing("created_at"))?,
            kind: kind.ok_or_else(|| missing("kind"))?,
            tags: tags.ok_or_else(|| missing("tags"))?,
            content: content.ok_or_else(|| missing("content"))?,
        })
    }
}

fn set_once<T, E: de::Error>(seed: EventSeed<'_>, slot: &mut Option<T>, name: &'static str, value: T) -> Result<(), E> {
    if slot.is_some() {
        return Err(seed.refuse(EventError::DuplicateField(name)));
    }
    *slot = Some(value);
    Ok(())
}

fn hex_field<'de, const N: usize, A: MapAccess<'de>>(
    seed: EventSeed<'_>,
    name: &'static str,
    map: &mut A,
) -> Result<[u8; N], A::Error> {
    let Str(text) = map.next_value()?;
    crate::hex::decode_lower::<N>(text.as_bytes()).ok_or_else(|| seed.refuse(EventError::BadHex(name)))
}

struct TagsSeed<'l>(EventSeed<'l>);

impl<'de> DeserializeSeed<'de> for TagsSeed<'_> {
    type Value = Vec<Vec<Cow<'de, str>>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for TagsSeed<'_> {
    type Value = Vec<Vec<Cow<'de, str>>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of tags")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let max = self.0.limits.tag_count_max;
        let mut tags = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(16));
        while let Some(tag) = seq.next_element_seed(TagSeed(self.0))? {
            if tags.len() == max {
                return Err(self.0.refuse(EventError::TooManyTags(max)));
            }
            tags.push(tag);
        }
        Ok(tags)
    }
}

struct TagSeed<'l>(EventSeed<'l>);

impl<'de> DeserializeSeed<'de> for TagSeed<'_> {
    type Value = Vec<Cow<'de, str>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for TagSeed<'_> {
    type Value = Vec<Cow<'de, str>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a tag: an array of strings")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let limits = self.0.limits;
        let mut tag = Vec::with_capacity(3);
        while let Some(Str(element)) = seq.next_element()? {
            if tag.len() == limits.tag_element_count_max {
                return Err(self.0.refuse(EventError::TagTooLong(limits.tag_element_count_max)));
            }
            if element.len() > limits.tag_element_size_max {
                return Err(self.0.refuse(EventError::TagElementTooLarge(limits.tag_element_size_max)));
            }
            tag.push(element);
        }
        Ok(tag)
    }
}

/// Skips a value of an unknown field, refusing nesting deeper than the depth limit. (The
/// known fields have a fixed shape, so this is the only place depth can grow.)
#[derive(Clone, Copy)]
struct BoundedIgnore<'l> {
    seed: EventSeed<'l>,
    depth_left: usize,
}

impl BoundedIgnore<'_> {
    fn nested<E: de::Error>(self) -> Result<Self, E> {
        match self.depth_left {
            0 => Err(self.seed.refuse(EventError::TooDeep(JSON_DEPTH_MAX))),
            depth_left => Ok(BoundedIgnore { depth_left: depth_left - 1, ..self }),
        }
    }
}

impl<'de> DeserializeSeed<'de> for BoundedIgnore<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for BoundedIgnore<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any json value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_borrowed_str<E>(self, _: &'de str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self.nested()?;
        while seq.next_element_seed(inner)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.nested()?;
        while map.next_key_seed(inner)?.is_some() {
            map.next_value_seed(inner)?;
        }
        Ok(())
    }
}

/// A JSON string, borrowed from the input when it has no escapes.
struct Str<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor;
        impl<'de> Visitor<'de> for StrVisitor {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(value)))
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(value.to_owned())))
            }
            fn visit_string<E: de::Error>(self, value: String) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(value)))
            }
        }
        deserializer.deserialize_str(StrVisitor)
    }
}

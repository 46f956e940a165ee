//! NIP-01 filters: parse from JSON (bounded) and match one event (the naive definition the
//! query engine must agree with). Sans-IO.

use serde_json::Value;

use crate::event::{EventId, Pubkey};
use crate::search::{QueryError, SearchQuery};

/// Most values in one filter list (`ids`, `authors`, `kinds`, one `#x`).
pub const FILTER_VALUE_COUNT_MAX: usize = 1_000;

/// One filter of a `REQ`: every condition present must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub ids: Option<Vec<EventId>>,
    pub authors: Option<Vec<Pubkey>>,
    pub kinds: Option<Vec<u16>>,
    pub tags: Vec<TagFilter>,
    pub since: Option<u64>,
    pub until: Option<u64>,
    pub limit: Option<u64>,
    /// NIP-50: the events whose text holds these words and phrases, best first.
    pub search: Option<SearchQuery>,
}

/// `#x: [values]`: the event has a tag `x` whose first value is one of `values`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagFilter {
    pub letter: u8,
    pub values: Vec<Box<[u8]>>,
}

/// Why a filter was refused; `reason()` carries the NIP-01 prefix for `CLOSED`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("filter is not a json object")]
    NotAnObject,
    #[error("filter field `{0}` is not supported")]
    UnknownField(String),
    #[error("filter field `{0}` has the wrong type")]
    WrongType(String),
    #[error("`{0}` must be 64 lowercase hex characters")]
    BadHex(&'static str),
    #[error("filter list `{0}` has more than {FILTER_VALUE_COUNT_MAX} values")]
    TooManyValues(String),
    #[error("{0}")]
    Search(#[from] QueryError),
}

impl FilterError {
    pub fn reason(&self) -> String {
        match self {
            FilterError::UnknownField(_) => format!("unsupported: {self}"),
            _ => format!("invalid: {self}"),
        }
    }
}

/// What a filter needs to see of an event.
pub trait Matchable {
    fn id(&self) -> &[u8; 32];
    fn pubkey(&self) -> &[u8; 32];
    fn created_at(&self) -> u64;
    fn kind(&self) -> u16;
    /// Whether a tag named `letter` has `value` as its first value.
    fn has_tag(&self, letter: u8, value: &[u8]) -> bool;
    /// The terms a search reads in the event (`search::text::searchable_text`, analyzed),
    /// in order; `None` when it cannot be read, and then no search matches it.
    fn search_terms(&self) -> Option<std::borrow::Cow<'_, [String]>>;
}

impl Filter {
    /// Parse one filter object.
    pub fn from_json(value: &Value) -> Result<Filter, FilterError> {
        let object = value.as_object().ok_or(FilterError::NotAnObject)?;
        let mut filter = Filter::default();
        for (key, value) in object {
            match key.as_str() {
                "ids" => filter.ids = Some(hex_list(key, value, "ids")?.into_iter().map(EventId).collect()),
                "authors" => filter.authors = Some(hex_list(key, value, "authors")?.into_iter().map(Pubkey).collect()),
                "kinds" => filter.kinds = Some(kind_list(key, value)?),
                "since" => filter.since = Some(integer(key, value)?),
                "until" => filter.until = Some(integer(key, value)?),
                "limit" => filter.limit = Some(integer(key, value)?),
                "search" => {
                    let text = value.as_str().ok_or_else(|| FilterError::WrongType(key.to_owned()))?;
                    filter.search = Some(SearchQuery::parse(text)?);
                }
                _ => filter.tags.push(tag_filter(key, value)?),
            }
        }
        Ok(filter)
    }

    /// Parse a filter from JSON text.
    pub fn from_text(text: &str) -> Result<Filter, FilterError> {
        let value: Value = serde_json::from_str(text).map_err(|_| FilterError::NotAnObject)?;
        Filter::from_json(&value)
    }

    /// The naive definition: does `event` pass every condition?
    pub fn matches(&self, event: &impl Matchable) -> bool {
        let created_at = event.created_at();
        self.since.is_none_or(|since| created_at >= since)
            && self.until.is_none_or(|until| created_at <= until)
            && self.kinds.as_ref().is_none_or(|kinds| kinds.contains(&event.kind()))
            && self.ids.as_ref().is_none_or(|ids| ids.iter().any(|id| &id.0 == event.id()))
            && self.authors.as_ref().is_none_or(|authors| authors.iter().any(|a| &a.0 == event.pubkey()))
            && self.matches_tags(event)
            && self
                .search
                .as_ref()
                .is_none_or(|query| event.search_terms().is_some_and(|terms| query.matches_terms(&terms)))
    }

    /// The filter without its search: what a search's hits must also pass.
    pub fn without_search(&self) -> Filter {
        Filter { search: None, ..self.clone() }
    }

    /// The tag conditions alone.
    pub fn matches_tags(&self, event: &impl Matchable) -> bool {
        self.tags.iter().all(|tag| tag.values.iter().any(|value| event.has_tag(tag.letter, value)))
    }
}

fn list<'v>(key: &str, value: &'v Value) -> Result<&'v Vec<Value>, FilterError> {
    let items = value.as_array().ok_or_else(|| FilterError::WrongType(key.to_owned()))?;
    if items.len() > FILTER_VALUE_COUNT_MAX {
        return Err(FilterError::TooManyValues(key.to_owned()));
    }
    Ok(items)
}

fn hex_list(key: &str, value: &Value, name: &'static str) -> Result<Vec<[u8; 32]>, FilterError> {
    list(key, value)?
        .iter()
        .map(|item| {
            let text = item.as_str().ok_or_else(|| FilterError::WrongType(key.to_owned()))?;
            crate::hex::decode_lower::<32>(text.as_bytes()).ok_or(FilterError::BadHex(name))
        })
        .collect()
}

/// Kinds outside 0..=65535 can match nothing, so they are dropped, not refused.
fn kind_list(key: &str, value: &Value) -> Result<Vec<u16>, FilterError> {
    let mut kinds = Vec::new();
    for item in list(key, value)? {
        let kind = item.as_u64().ok_or_else(|| FilterError::WrongType(key.to_owned()))?;
        if let Ok(kind) = u16::try_from(kind) {
            kinds.push(kind);
        }
    }
    Ok(kinds)
}

fn integer(key: &str, value: &Value) -> Result<u64, FilterError> {
    value.as_u64().ok_or_else(|| FilterError::WrongType(key.to_owned()))
}

fn tag_filter(key: &str, value: &Value) -> Result<TagFilter, FilterError> {
    let letter = match key.as_bytes() {
        [b'#', letter] if letter.is_ascii_alphabetic() => *letter,
        _ => return Err(FilterError::UnknownField(key.to_owned())),
    };
    let values = list(key, value)?
        .iter()
        .map(|item| {
            item.as_str()
                .map(|text| Box::<[u8]>::from(text.as_bytes()))
                .ok_or_else(|| FilterError::WrongType(key.to_owned()))
        })
        .collect::<Result<_, _>>()?;
    Ok(TagFilter { letter, values })
}

impl Matchable for crate::event::VerifiedEvent {
    fn id(&self) -> &[u8; 32] {
        &self.id().0
    }
    fn pubkey(&self) -> &[u8; 32] {
        &self.pubkey().0
    }
    fn created_at(&self) -> u64 {
        self.created_at()
    }
    fn kind(&self) -> u16 {
        self.kind()
    }
    fn has_tag(&self, letter: u8, value: &[u8]) -> bool {
        self.index_tags().iter().any(|tag| tag.letter == letter && &tag.value[..] == value)
    }
    fn search_terms(&self) -> Option<std::borrow::Cow<'_, [String]>> {
        crate::search::text::search_terms_of_json(self.json()).map(std::borrow::Cow::Owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Result<(), &str>) {
        let got = Filter::from_text(text).map(|_| ()).map_err(|error| error.reason());
        assert_eq!(got.as_ref().map(|_| ()).map_err(String::as_str), expected, "{text}");
    }

    #[test]
    fn parse_cases() {
        check(r#"{}"#, Ok(()));
        check(r##"{"kinds":[1,70000],"since":1,"until":2,"limit":0,"#e":["x"],"#Z":[]}"##, Ok(()));
        check(r#"{"ids":["AB"]}"#, Err("invalid: `ids` must be 64 lowercase hex characters"));
        check(r#"{"kinds":"1"}"#, Err("invalid: filter field `kinds` has the wrong type"));
        check(r#"{"since":-1}"#, Err("invalid: filter field `since` has the wrong type"));
        check(r#"{"foo":1}"#, Err("unsupported: filter field `foo` is not supported"));
        check(r##"{"#ee":["x"]}"##, Err("unsupported: filter field `#ee` is not supported"));
        check(r#"[]"#, Err("invalid: filter is not a json object"));
    }
}

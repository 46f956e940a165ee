//! What a search reads of an event and how it cuts text into terms, the NIP-50 query
//! language, and matching one event against a query without an index (live events).
//! Sans-IO: the same analyzer feeds the index, reads the queries and matches live events,
//! so the three agree.
//!
//! Terms: runs of letters and digits, lowercased and folded to ASCII where a Latin letter
//! has a plain form (`Café` and `cafe` are one term). Scripts written without spaces
//! (Chinese, Japanese, Korean) are cut into overlapping pairs of characters, as Lucene's
//! CJK analyzer does, so that any two-character word inside a run is found; a query in
//! those scripts is cut the same way, its pairs read as a phrase.

use tantivy::tokenizer::{
    AsciiFoldingFilter, LowerCaser, RemoveLongFilter, TextAnalyzer, Token, TokenStream, Tokenizer,
};

use crate::limits::{SEARCH_QUERY_SIZE_MAX, SEARCH_TERMS_MAX};

/// Longest term kept, in bytes (an npub is 63).
const TERM_SIZE_MAX: usize = 96;
/// The NIP-50 extensions (`key:value`): recognised and set aside, never read as words.
const EXTENSIONS: &[&str] = &["include", "domain", "language", "sentiment", "nsfw"];

/// The analyzer every search uses: [`WordsAndPairs`], long terms dropped, lowercased,
/// folded to ASCII.
pub fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(WordsAndPairs)
        .filter(RemoveLongFilter::limit(TERM_SIZE_MAX))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .build()
}

/// `text`'s terms, in order.
pub fn terms(analyzer: &mut TextAnalyzer, text: &str) -> Vec<String> {
    let mut stream = analyzer.token_stream(text);
    let mut terms = Vec::new();
    while let Some(token) = stream.next() {
        terms.push(token.text.clone());
    }
    terms
}

/// Whether `c` belongs to a script written without spaces between words.
fn is_unspaced(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF      // Hiragana, Katakana
        | 0x3400..=0x4DBF    // CJK Extension A
        | 0x4E00..=0x9FFF    // CJK Unified Ideographs
        | 0xAC00..=0xD7AF    // Hangul syllables
        | 0xF900..=0xFAFF    // CJK Compatibility Ideographs
        | 0x20000..=0x2FA1F  // CJK Extensions B-F, Compatibility Supplement
    )
}

/// Runs of letters and digits are terms; a run in a script without spaces gives its
/// overlapping pairs (one character alone gives itself).
#[derive(Clone, Default)]
pub struct WordsAndPairs;

impl Tokenizer for WordsAndPairs {
    type TokenStream<'a> = Tokens;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> Tokens {
        let mut tokens = Vec::new();
        let mut push = |from: usize, to: usize| {
            tokens.push(Token {
                offset_from: from,
                offset_to: to,
                position: tokens.len(),
                text: text[from..to].to_owned(),
                position_length: 1,
            })
        };
        let mut chars = text.char_indices().peekable();
        while let Some((start, c)) = chars.next() {
            if is_unspaced(c) {
                let mut run = vec![start];
                while let Some(&(at, next)) = chars.peek() {
                    if !is_unspaced(next) {
                        break;
                    }
                    run.push(at);
                    chars.next();
                }
                let end = chars.peek().map_or(text.len(), |&(at, _)| at);
                run.push(end);
                match run.len() {
                    2 => push(run[0], run[1]),
                    _ => run.windows(3).for_each(|pair| push(pair[0], pair[2])),
                }
            } else if c.is_alphanumeric() {
                let mut end = start + c.len_utf8();
                while let Some(&(at, next)) = chars.peek() {
                    if !next.is_alphanumeric() || is_unspaced(next) {
                        break;
                    }
                    end = at + next.len_utf8();
                    chars.next();
                }
                push(start, end);
            }
        }
        Tokens { tokens, next: 0 }
    }
}

/// The terms of one text, handed out in order.
pub struct Tokens {
    tokens: Vec<Token>,
    next: usize,
}

impl TokenStream for Tokens {
    fn advance(&mut self) -> bool {
        self.next += 1;
        self.next <= self.tokens.len()
    }
    fn token(&self) -> &Token {
        &self.tokens[self.next - 1]
    }
    fn token_mut(&mut self) -> &mut Token {
        &mut self.tokens[self.next - 1]
    }
}

/// A NIP-50 `search` value, read: every word must be in the event; a quoted phrase must
/// be there as written (its words in order, side by side); `key:value` extensions are set
/// aside (none is acted on: there is no spam, language or sentiment signal here).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchQuery {
    /// As the client sent it.
    pub text: String,
    /// Each entry: one word (one term), or a phrase or an unspaced word (several terms in
    /// a row).
    pub groups: Vec<Vec<String>>,
    /// The extensions named, as sent.
    pub extensions: Vec<String>,
}

/// Why a `search` value was refused (`invalid:`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("search is longer than {SEARCH_QUERY_SIZE_MAX} bytes")]
    TooLong,
    #[error("search has more than {SEARCH_TERMS_MAX} terms")]
    TooManyTerms,
    #[error("search has no words to look for")]
    Empty,
}

impl SearchQuery {
    pub fn parse(text: &str) -> Result<SearchQuery, QueryError> {
        if text.len() > SEARCH_QUERY_SIZE_MAX {
            return Err(QueryError::TooLong);
        }
        let mut analyzer = analyzer();
        let mut groups = Vec::new();
        let mut extensions = Vec::new();
        // Outside quotes: words; inside: a phrase. An unclosed quote runs to the end.
        for (n, piece) in text.split('"').enumerate() {
            if n % 2 == 1 {
                groups.push(terms(&mut analyzer, piece));
                continue;
            }
            for word in piece.split_whitespace() {
                if word.split_once(':').is_some_and(|(key, value)| !value.is_empty() && EXTENSIONS.contains(&key)) {
                    extensions.push(word.to_owned());
                    continue;
                }
                // A word in an unspaced script cuts into pairs that must come in a row;
                // one with punctuation inside (`e-mail`) into words that must too.
                groups.push(terms(&mut analyzer, word));
            }
        }
        groups.retain(|group| !group.is_empty());
        let count: usize = groups.iter().map(Vec::len).sum();
        if count > SEARCH_TERMS_MAX {
            return Err(QueryError::TooManyTerms);
        }
        if groups.is_empty() {
            return Err(QueryError::Empty);
        }
        Ok(SearchQuery { text: text.to_owned(), groups, extensions })
    }

    /// Whether `text` (an event's [`searchable_text`]) holds every group.
    pub fn matches(&self, text: &str) -> bool {
        self.matches_terms(&terms(&mut analyzer(), text))
    }

    /// Whether an event's analyzed terms, in order, hold every group.
    pub fn matches_terms(&self, found: &[String]) -> bool {
        self.groups.iter().all(|group| found.windows(group.len()).any(|window| window == group.as_slice()))
    }
}

/// What a search reads of an event: its content (a profile's name, display name, about and
/// NIP-05 address rather than its JSON), then its hashtags and its title and summary tags.
pub fn searchable_text<'a>(kind: u16, content: &str, tags: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut text = if kind == 0 { profile_text(content) } else { content.to_owned() };
    for (name, value) in tags {
        if matches!(name, "t" | "title" | "summary") {
            text.push('\n');
            text.push_str(value);
        }
    }
    text
}

fn profile_text(content: &str) -> String {
    let Ok(serde_json::Value::Object(profile)) = serde_json::from_str::<serde_json::Value>(content) else {
        return content.to_owned();
    };
    ["name", "display_name", "about", "nip05"]
        .iter()
        .filter_map(|key| profile.get(*key).and_then(|value| value.as_str()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The analyzed terms of an event's JSON's [`searchable_text`]; `None` when it does not parse.
pub fn search_terms_of_json(json: &str) -> Option<Vec<String>> {
    Some(terms(&mut analyzer(), &searchable_text_of_json(json)?))
}

/// [`searchable_text`] of an event's JSON; `None` when it does not parse.
pub fn searchable_text_of_json(json: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Event<'a> {
        kind: u16,
        #[serde(borrow)]
        content: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        tags: Vec<Vec<std::borrow::Cow<'a, str>>>,
    }
    let event: Event = serde_json::from_str(json).ok()?;
    let tags = event.tags.iter().filter_map(|tag| Some((tag.first()?.as_ref(), tag.get(1)?.as_ref())));
    Some(searchable_text(event.kind, &event.content, tags))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(text: &str) -> Vec<String> {
        terms(&mut analyzer(), text)
    }

    #[test]
    fn words_are_folded_and_unspaced_scripts_cut_into_pairs() {
        assert_eq!(cut("Café au LAIT, naïve résumé!"), ["cafe", "au", "lait", "naive", "resume"]);
        assert_eq!(cut("東京タワー"), ["東京", "京タ", "タワ", "ワー"]);
        assert_eq!(cut("I ❤ 東 nostr中文x"), ["i", "東", "nostr", "中文", "x"]);
        assert_eq!(cut("한국어 텍스트"), ["한국", "국어", "텍스", "스트"]);
        assert_eq!(cut("e-mail https://example.com/x?y=1"), ["e", "mail", "https", "example", "com", "x", "y", "1"]);
        assert!(cut(&"a".repeat(200)).is_empty());
    }

    #[test]
    fn a_query_needs_every_word_and_each_phrase_in_order() {
        let query = SearchQuery::parse(r#"Nostr  "relay operators" language:en include:spam"#).unwrap();
        assert_eq!(query.groups, [vec!["nostr"], vec!["relay", "operators"]]);
        assert_eq!(query.extensions, ["language:en", "include:spam"]);
        assert!(query.matches("Relay operators love NOSTR"));
        assert!(!query.matches("operators of a relay love nostr"), "the phrase is in order");
        assert!(!query.matches("relay operators"), "every word");
        // Accents and case do not matter; a word in an unspaced script is found inside a run.
        assert!(SearchQuery::parse("CAFÉ").unwrap().matches("un café noir"));
        let tokyo = SearchQuery::parse("東京").unwrap();
        assert!(tokyo.matches("私は東京タワーに行った"));
        assert!(!SearchQuery::parse("京東").unwrap().matches("東京"));
        assert!(SearchQuery::parse("タワー").unwrap().matches("東京タワー"));
        // A key that is not an extension is read as words.
        assert_eq!(SearchQuery::parse("time:now").unwrap().groups, [vec!["time", "now"]]);
    }

    #[test]
    fn hostile_queries_are_refused() {
        assert_eq!(SearchQuery::parse(&"a ".repeat(200)), Err(QueryError::TooLong));
        assert_eq!(SearchQuery::parse(&"ab ".repeat(17)), Err(QueryError::TooManyTerms));
        for empty in ["", "   ", "*", "\"\"", "!!! ???", "language:en"] {
            assert_eq!(SearchQuery::parse(empty), Err(QueryError::Empty), "{empty:?}");
        }
    }

    #[test]
    fn a_profile_is_read_by_its_fields_and_tags_count() {
        let profile = r#"{"name":"Alice","about":"Rust and relays","picture":"https://x/a.png"}"#;
        assert_eq!(searchable_text(0, profile, std::iter::empty()), "Alice\nRust and relays");
        let article = searchable_text(30023, "body", [("title", "A Title"), ("d", "slug"), ("t", "nostr")].into_iter());
        assert_eq!(article, "body\nA Title\nnostr");
        let json = r#"{"id":"x","kind":1,"content":"hello","tags":[["t","greeting"],["e"]],"created_at":1}"#;
        assert_eq!(searchable_text_of_json(json).unwrap(), "hello\ngreeting");
    }
}

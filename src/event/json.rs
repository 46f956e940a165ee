//! JSON string escaping exactly as NIP-01's canonical form requires.
//!
//! NIP-01 names the short escapes (`\n \" \\ \r \t \b \f`); every other byte is verbatim
//! except the remaining control characters below 0x20, which JSON forbids raw and which
//! every signer (JSON.stringify, serde_json) writes as `\u00xx` with lowercase hex.

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `0` means verbatim, `b'u'` means `\u00xx`, anything else is the short escape letter.
const ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut c = 0;
    while c < 0x20 {
        table[c] = b'u';
        c += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// Where escaped JSON goes: bytes (an event's stored form) or a `String` (a frame to send,
/// built without validating UTF-8 again: only `&str` pieces and ASCII go in).
pub trait JsonOut {
    fn reserve_more(&mut self, additional: usize);
    fn push_text(&mut self, text: &str);
    fn push_ascii(&mut self, byte: u8);
}

impl JsonOut for Vec<u8> {
    fn reserve_more(&mut self, additional: usize) {
        self.reserve(additional);
    }
    fn push_text(&mut self, text: &str) {
        self.extend_from_slice(text.as_bytes());
    }
    fn push_ascii(&mut self, byte: u8) {
        self.push(byte);
    }
}

impl JsonOut for String {
    fn reserve_more(&mut self, additional: usize) {
        self.reserve(additional);
    }
    fn push_text(&mut self, text: &str) {
        self.push_str(text);
    }
    fn push_ascii(&mut self, byte: u8) {
        debug_assert!(byte.is_ascii());
        self.push(char::from(byte));
    }
}

/// The length of `text` written by [`write_str`], quotes included.
pub fn quoted_len(text: &str) -> usize {
    2 + text
        .bytes()
        .map(|byte| match ESCAPE[usize::from(byte)] {
            0 => 1,
            b'u' => 6,
            _ => 2,
        })
        .sum::<usize>()
}

/// Append `text` as a quoted JSON string in canonical form.
pub fn write_str<O: JsonOut>(out: &mut O, text: &str) {
    let bytes = text.as_bytes();
    out.reserve_more(bytes.len() + 2);
    out.push_ascii(b'"');
    let mut start = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        let escape = ESCAPE[usize::from(byte)];
        if escape == 0 {
            continue;
        }
        // Escaped bytes are ASCII, so `index` is a character boundary.
        out.push_text(&text[start..index]);
        start = index + 1;
        out.push_ascii(b'\\');
        out.push_ascii(escape);
        if escape == b'u' {
            out.push_text("00");
            out.push_ascii(HEX[usize::from(byte >> 4)]);
            out.push_ascii(HEX[usize::from(byte & 0x0f)]);
        }
    }
    out.push_text(&text[start..]);
    out.push_ascii(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: &str) {
        let mut out = Vec::new();
        write_str(&mut out, input);
        assert_eq!(String::from_utf8(out).unwrap(), expected);
        let mut text = String::new();
        write_str(&mut text, input);
        assert_eq!(text, expected);
        assert_eq!(quoted_len(input), expected.len());
        // serde_json is what most Rust signers use; the forms must agree.
        assert_eq!(serde_json::to_string(input).unwrap(), expected);
    }

    #[test]
    fn escapes_match_nip01() {
        check("plain", "\"plain\"");
        check("a\nb\"c\\d\re\tf\u{8}g\u{c}h", "\"a\\nb\\\"c\\\\d\\re\\tf\\bg\\fh\"");
        check("\u{1}\u{1f}\u{7f}", "\"\\u0001\\u001f\u{7f}\"");
        check("日本語 🎉 \u{2028}/", "\"日本語 🎉 \u{2028}/\"");
        check("", "\"\"");
    }
}

//! Lowercase hex, as NIP-01 requires for ids, pubkeys and signatures.
//!
//! Written here rather than taken from the `hex` crate because decoding must reject
//! uppercase digits, and both directions sit on the ingest hot path.

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// The two hex digits of every byte, so encoding is one lookup per byte.
const PAIRS: [[u8; 2]; 256] = {
    let mut pairs = [[0u8; 2]; 256];
    let mut byte = 0;
    while byte < 256 {
        pairs[byte] = [DIGITS[byte >> 4], DIGITS[byte & 0x0f]];
        byte += 1;
    }
    pairs
};

/// The value of every lowercase hex digit, and `NOT_A_DIGIT` for every other byte.
const NIBBLES: [u8; 256] = {
    let mut nibbles = [NOT_A_DIGIT; 256];
    let mut value = 0;
    while value < 16 {
        nibbles[DIGITS[value] as usize] = value as u8;
        value += 1;
    }
    nibbles
};
const NOT_A_DIGIT: u8 = 0xff;

/// Decode exactly `N` bytes from `2 * N` lowercase hex digits. Branch-free over the digits,
/// with one check at the end: ids, keys and signatures are decoded for every event.
pub fn decode_lower<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    decode_into(text, &mut out).then_some(out)
}

/// Decode lowercase hex of any even length (a NIP-77 message).
pub fn decode_lower_vec(text: &[u8]) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let mut out = vec![0u8; text.len() / 2];
    decode_into(text, &mut out).then_some(out)
}

/// Fill `out` from the pairs of digits in `text` (twice its length); whether every byte of
/// `text` was a lowercase hex digit.
#[inline]
fn decode_into(text: &[u8], out: &mut [u8]) -> bool {
    let mut seen = 0u8;
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let (high, low) = (NIBBLES[usize::from(pair[0])], NIBBLES[usize::from(pair[1])]);
        seen |= high | low;
        *byte = (high << 4) | (low & 0x0f);
    }
    seen & 0xf0 == 0
}

/// Append the lowercase hex of `bytes` to a string; the digits go through a stack buffer so
/// the string grows by whole slices.
pub fn encode_into(bytes: &[u8], out: &mut String) {
    out.reserve(bytes.len() * 2);
    let mut digits = [0u8; 128];
    for piece in bytes.chunks(64) {
        for (pair, &byte) in digits.chunks_exact_mut(2).zip(piece) {
            pair.copy_from_slice(&PAIRS[usize::from(byte)]);
        }
        out.push_str(std::str::from_utf8(&digits[..piece.len() * 2]).expect("hex digits are ascii"));
    }
}

/// The lowercase hex of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    encode_into(bytes, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_case() {
        let bytes = [0x00, 0x9f, 0xa5, 0xff];
        assert_eq!(encode(&bytes), "009fa5ff");
        assert_eq!(decode_lower::<4>(b"009fa5ff"), Some(bytes));
        assert_eq!(decode_lower::<4>(b"009FA5ff"), None);
        assert_eq!(decode_lower::<4>(b"009fa5f"), None);
        assert_eq!(decode_lower::<4>(b"009fa5fg"), None);
    }

    #[test]
    fn encoding_past_one_buffer_appends_every_byte() {
        let bytes: Vec<u8> = (0..=200u8).collect();
        let mut out = String::from("x");
        encode_into(&bytes, &mut out);
        let expected: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(out, format!("x{expected}"));
        assert_eq!(decode_lower::<201>(&out.as_bytes()[1..]).map(|d| d.to_vec()), Some(bytes));
    }

    #[test]
    fn decoding_accepts_exactly_the_lowercase_digits() {
        for byte in 0..=255u8 {
            let expected = DIGITS.iter().position(|&d| d == byte).map(|value| value as u8);
            assert_eq!(decode_lower::<1>(&[b'0', byte]), expected.map(|v| [v]), "digit {byte:#04x}");
            assert_eq!(decode_lower::<1>(&[byte, b'0']), expected.map(|v| [v << 4]), "digit {byte:#04x}");
        }
    }
}

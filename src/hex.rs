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

/// Decode exactly `N` bytes from `2 * N` lowercase hex digits.
pub fn decode_lower<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

fn nibble(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    }
}

/// Append the lowercase hex of `bytes` to `out`.
pub fn encode_into(bytes: &[u8], out: &mut Vec<u8>) {
    out.extend(bytes.iter().flat_map(|&b| PAIRS[usize::from(b)]));
}

/// The lowercase hex of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    encode_into(bytes, &mut out);
    String::from_utf8(out).expect("hex digits are ascii")
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
}

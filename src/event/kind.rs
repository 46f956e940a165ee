//! NIP-01 kind classes and the kinds other NIPs give meaning to.

/// How the relay stores events of a kind (NIP-01 "Kinds").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KindClass {
    /// Stored; every event kept.
    Regular,
    /// Only the newest per (pubkey, kind) is kept: 0, 3, 10000–19999.
    Replaceable,
    /// Never stored: 20000–29999.
    Ephemeral,
    /// Only the newest per (pubkey, kind, `d` tag) is kept: 30000–39999.
    Addressable,
}

/// NIP-09 deletion request.
pub const KIND_DELETION: u16 = 5;
/// NIP-62 request to vanish.
pub const KIND_VANISH: u16 = 62;
/// NIP-59 gift wrap.
pub const KIND_GIFT_WRAP: u16 = 1059;

impl KindClass {
    /// The class of `kind`. Kinds NIP-01 leaves unclassified (45–999, 40000+) are stored
    /// like regular events, which is what clients of those kinds expect.
    pub fn of(kind: u16) -> KindClass {
        match kind {
            0 | 3 | 10_000..=19_999 => KindClass::Replaceable,
            20_000..=29_999 => KindClass::Ephemeral,
            30_000..=39_999 => KindClass::Addressable,
            _ => KindClass::Regular,
        }
    }

    /// Whether a newer version supersedes older ones.
    pub fn is_versioned(self) -> bool {
        matches!(self, KindClass::Replaceable | KindClass::Addressable)
    }
}

/// A replaceable or addressable event's address, as an `a` tag names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Address<'a> {
    pub kind: u16,
    pub pubkey: [u8; 32],
    pub d: &'a [u8],
}

/// `<kind>:<pubkey hex>:<d>` from an `a` tag (`d` empty for a replaceable kind).
pub fn parse_address(value: &[u8]) -> Option<Address<'_>> {
    let mut parts = value.splitn(3, |&b| b == b':');
    let kind = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let pubkey = crate::hex::decode_lower::<32>(parts.next()?)?;
    Some(Address { kind, pubkey, d: parts.next()? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_boundaries() {
        let check = |kind: u16, expected: KindClass| assert_eq!(KindClass::of(kind), expected, "kind {kind}");
        check(0, KindClass::Replaceable);
        check(1, KindClass::Regular);
        check(2, KindClass::Regular);
        check(3, KindClass::Replaceable);
        check(4, KindClass::Regular);
        check(44, KindClass::Regular);
        check(45, KindClass::Regular);
        check(999, KindClass::Regular);
        check(1000, KindClass::Regular);
        check(9999, KindClass::Regular);
        check(10000, KindClass::Replaceable);
        check(19999, KindClass::Replaceable);
        check(20000, KindClass::Ephemeral);
        check(29999, KindClass::Ephemeral);
        check(30000, KindClass::Addressable);
        check(39999, KindClass::Addressable);
        check(40000, KindClass::Regular);
        check(65535, KindClass::Regular);
    }
}

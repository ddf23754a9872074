//! Request IDs: one value that names a request in the gateway's access
//! line, on the upstream's request and on the response, so one request can
//! be found in every log it touched.

use std::cell::Cell;

use http::HeaderValue;

/// The longest ID taken from a trusted proxy; longer ones are replaced.
const MAX_LEN: usize = 200;

/// The ID for a request: a trusted proxy's `offered` value when it is one
/// a log line can carry as it is, else a new one.
///
/// Marked sensitive, which HTTP/2 encodes as never indexed: a value sent
/// once would otherwise enter the connection's HPACK table on every
/// response, evict entries that do repeat, and make the encoder compare
/// each new ID with every earlier one still in the table.
pub fn for_request(offered: Option<&HeaderValue>) -> HeaderValue {
    let mut id = match offered {
        Some(value) if usable(value.as_bytes()) => value.clone(),
        _ => generate(),
    };
    id.set_sensitive(true);
    id
}

/// Visible ASCII without quotes or backslashes, so the access line (text or
/// JSON) shows it as sent; never empty, never over [`MAX_LEN`].
fn usable(value: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&value.len())
        && value
            .iter()
            .all(|b| b.is_ascii_graphic() && *b != b'"' && *b != b'\\')
}

thread_local! {
    /// A splitmix64 state per thread, seeded from the OS once: unique
    /// values at the cost of a few multiplications, no system call per
    /// request.
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    match getrandom::fill(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        // std's hash keys come from the OS too, by another path.
        Err(_) => {
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        }
    }
}

fn next() -> u64 {
    STATE.with(|state| {
        let s = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// 32 lowercase hex digits: 128 bits.
pub fn generate() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 32];
    for (half, word) in [next(), next()].into_iter().enumerate() {
        for i in 0..16 {
            text[half * 16 + i] = HEX[((word >> (60 - 4 * i)) & 0xf) as usize];
        }
    }
    HeaderValue::from_bytes(&text).expect("hex digits make a header value")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_never_indexed_by_hpack() {
        assert!(for_request(None).is_sensitive());
        let offered = HeaderValue::from_static("from-the-proxy-1");
        let id = for_request(Some(&offered));
        assert_eq!(id, offered);
        assert!(id.is_sensitive());
    }

    #[test]
    fn generated_ids_are_hex_and_distinct() {
        let ids: HashSet<_> = (0..10_000).map(|_| generate()).collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(10) {
            assert_eq!(id.len(), 32);
            assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit));
        }
    }

    #[test]
    fn an_offered_id_is_kept_only_when_a_log_can_carry_it() {
        let kept = HeaderValue::from_static("abc-123_x.y");
        assert_eq!(for_request(Some(&kept)), kept);
        for bad in ["", "has space", "quote\"d", "back\\slash"] {
            let bad = HeaderValue::from_str(bad).unwrap();
            assert_ne!(for_request(Some(&bad)), bad);
        }
        let long = HeaderValue::from_str(&"a".repeat(MAX_LEN + 1)).unwrap();
        assert_eq!(for_request(Some(&long)).len(), 32);
        assert_eq!(for_request(None).len(), 32);
    }
}

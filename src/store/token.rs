//! API token format: `tg_` + 43 base62 characters of secret (256 bits) + a
//! 6-character checksum. The prefix lets secret scanners spot a leaked token;
//! the checksum lets a mistyped one be refused without touching the store.
//! The store only ever sees `TokenDigest`, the SHA-256 of the whole token.

use std::fmt;

use sha2::{Digest, Sha256};

const PREFIX: &str = "tg_";
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// 62^43 > 2^256.
const SECRET_LEN: usize = 43;
/// 62^6 > 2^32.
const CHECKSUM_LEN: usize = 6;
pub const TOKEN_LEN: usize = PREFIX.len() + SECRET_LEN + CHECKSUM_LEN;

/// A token in clear. Shown once, at login or `token issue`; never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

/// What the store keys tokens by. A copy of the store yields no usable token.
#[derive(Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct TokenDigest(pub [u8; 32]);

impl Token {
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut token = String::with_capacity(TOKEN_LEN);
        token.push_str(PREFIX);
        let mut pool = [0u8; 64];
        while token.len() < PREFIX.len() + SECRET_LEN {
            getrandom::fill(&mut pool)?;
            // Rejection sampling: 248 = 4 × 62, so `b % 62` stays uniform.
            for b in pool.iter().filter(|b| **b < 248) {
                if token.len() == PREFIX.len() + SECRET_LEN {
                    break;
                }
                token.push(ALPHABET[usize::from(*b % 62)] as char);
            }
        }
        let checksum = checksum(&token);
        token.extend(checksum.iter().map(|b| char::from(*b)));
        Ok(Self(token))
    }

    /// Checks shape and checksum; `None` for anything that cannot be a token.
    pub fn parse(text: &str) -> Option<Self> {
        Self::well_formed(text).then(|| Self(text.to_owned()))
    }

    /// The digest of `text` if it is a well-formed token (shape and
    /// checksum): what the store is asked about a presented token, with
    /// no copy of the secret made.
    pub fn digest_of(text: &str) -> Option<TokenDigest> {
        Self::well_formed(text).then(|| digest(text))
    }

    /// The digest a token imported from Django is stored under, when
    /// `text` has the shape of one: a DRF key (40 hex digits) by its
    /// SHA-256, a django-rest-knox token (an optional prefix of up to 10
    /// characters, then 64 hex digits) by the first half of the SHA-512
    /// knox keeps. Exact match only: there is no checksum to check first.
    pub fn django_digest_of(text: &str) -> Option<TokenDigest> {
        let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
        if text.len() == DRF_KEY_LEN && hex(text) {
            return Some(digest(text));
        }
        let knox = text.len() >= KNOX_TOKEN_LEN
            && text.len() <= KNOX_TOKEN_LEN + KNOX_MAX_PREFIX
            && text.is_char_boundary(text.len() - KNOX_TOKEN_LEN)
            && hex(&text[text.len() - KNOX_TOKEN_LEN..]);
        knox.then(|| knox_digest(&sha2::Sha512::digest(text.as_bytes())))
    }

    fn well_formed(text: &str) -> bool {
        if text.len() != TOKEN_LEN || !text.starts_with(PREFIX) {
            return false;
        }
        // All-ASCII is checked first so the split below is on a char boundary.
        if !text[PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric())
        {
            return false;
        }
        let (body, sum) = text.split_at(PREFIX.len() + SECRET_LEN);
        checksum(body) == sum.as_bytes()
    }

    pub fn digest(&self) -> TokenDigest {
        digest(&self.0)
    }

    /// The secret itself, for the one response that hands it out.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A DRF key: 40 hex digits.
const DRF_KEY_LEN: usize = 40;
/// A knox token after its prefix: 64 hex digits.
const KNOX_TOKEN_LEN: usize = 64;
/// knox's MAXIMUM_TOKEN_PREFIX_LENGTH.
const KNOX_MAX_PREFIX: usize = 10;

/// What a knox token is stored under: the first 32 bytes of the SHA-512
/// knox computed (its `digest` column, in hex, at import).
pub fn knox_digest(sha512: &[u8]) -> TokenDigest {
    let mut key = [0u8; 32];
    key.copy_from_slice(&sha512[..32]);
    TokenDigest(key)
}

fn digest(token: &str) -> TokenDigest {
    TokenDigest(Sha256::digest(token.as_bytes()).into())
}

fn checksum(body: &str) -> [u8; CHECKSUM_LEN] {
    let hash = Sha256::digest(body.as_bytes());
    let mut n = u32::from_be_bytes([hash[0], hash[1], hash[2], hash[3]]);
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    out
}

impl TokenDigest {
    /// The public identifier of a token (what `token revoke` takes): the first
    /// 8 bytes of the digest in hex. It reveals nothing usable.
    pub fn id(&self) -> String {
        self.0[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The whole digest in hex: how the CLI names a token it holds the
    /// secret of to a server, without sending the secret.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
        }
        Some(Self(out))
    }

    /// Parses an id back to the digest prefix it names.
    pub fn parse_id(id: &str) -> Option<[u8; 8]> {
        if id.len() != 16 {
            return None;
        }
        let mut out = [0u8; 8];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = u8::from_str_radix(id.get(i * 2..i * 2 + 2)?, 16).ok()?;
        }
        Some(out)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenDigest({})", self.id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_and_differ() {
        let a = Token::generate().unwrap();
        let b = Token::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), TOKEN_LEN);
        assert!(a.expose().starts_with("tg_"));
        assert_eq!(Token::parse(a.expose()), Some(a.clone()));
        assert_eq!(Token::digest_of(a.expose()), Some(a.digest()));
        assert_ne!(a.digest(), b.digest());
    }

    #[test]
    fn a_typo_fails_the_checksum() {
        let t = Token::generate().unwrap();
        let mut bytes = t.expose().as_bytes().to_vec();
        bytes[10] = if bytes[10] == b'a' { b'b' } else { b'a' };
        let typo = String::from_utf8(bytes).unwrap();
        assert_eq!(Token::parse(&typo), None);
        assert_eq!(Token::digest_of(&typo), None);
        assert_eq!(Token::parse(&t.expose()[..TOKEN_LEN - 1]), None);
        assert_eq!(Token::parse(""), None);
        assert_eq!(Token::parse(&"tg_".repeat(20)[..TOKEN_LEN]), None);
        let non_ascii = format!("tg_{}é", "a".repeat(SECRET_LEN + CHECKSUM_LEN - 2));
        assert_eq!(Token::parse(&non_ascii), None);
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let t = Token::generate().unwrap();
        assert!(!format!("{t:?}").contains(&t.expose()[3..]));
    }

    #[test]
    fn ids_round_trip() {
        let d = Token::generate().unwrap().digest();
        assert_eq!(
            TokenDigest::parse_id(&d.id()),
            Some(d.0[..8].try_into().unwrap())
        );
        assert_eq!(TokenDigest::parse_id("xyz"), None);
        assert_eq!(TokenDigest::parse_id("zzzzzzzzzzzzzzzz"), None);
    }
}

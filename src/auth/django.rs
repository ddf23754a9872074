//! Password hashes as Django writes them, verified as Django does, so a
//! Django site's users keep their passwords when they move to the gateway.
//! Each hash carries its own parameters; those past what a login may cost
//! here are refused (the user is then without a usable password, as for an
//! unknown algorithm) rather than letting one login take the machine.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::Digest as _;

/// Django 5.2 writes 1,000,000; a few times that is still one login.
const MAX_PBKDF2_ITERATIONS: u32 = 5_000_000;
/// Django's argon2 default is 100 MiB; the gateway's own limit is 1 GiB.
const MAX_ARGON2_MEMORY_KIB: u32 = 1 << 20;
const MAX_ARGON2_ITERATIONS: u32 = 64;
/// bcrypt's cost is a power of two; Django writes 12.
const MAX_BCRYPT_COST: u32 = 16;
/// scrypt's memory is 128 × n × r bytes: Django's default (n 2^14, r 8)
/// takes 16 MiB.
const MAX_SCRYPT_BYTES: u64 = 256 << 20;
/// ... and its work that memory times p: Django's default (p 5) is 80 MiB
/// of mixing.
const MAX_SCRYPT_WORK: u64 = 4 << 30;

/// A Django password hash, its parameters read and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DjangoHash {
    /// `pbkdf2_sha256$ITERATIONS$SALT$HASH` and `pbkdf2_sha1$...`.
    Pbkdf2 {
        sha1: bool,
        iterations: u32,
        salt: String,
        hash: Vec<u8>,
    },
    /// `argon2$argon2id$v=19$m=...,t=...,p=...$SALT$HASH`: a PHC string
    /// without its leading `$`.
    Argon2 { phc: String },
    /// `bcrypt_sha256$$2b$COST$...`: bcrypt over the hex SHA-256 of the
    /// password.
    BcryptSha256 { bcrypt: String },
    /// `scrypt$N$SALT$R$P$HASH`.
    Scrypt {
        log_n: u8,
        r: u32,
        p: u32,
        salt: String,
        hash: Vec<u8>,
    },
}

/// Why a stored hash cannot be used to log in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    #[error("unusable password (Django's `!`)")]
    Disabled,
    #[error("algorithm `{0}` is not one the gateway verifies")]
    Algorithm(String),
    #[error("{0} hash is malformed")]
    Malformed(&'static str),
    #[error("{0} parameters cost more than a login may: {1}")]
    TooCostly(&'static str, String),
}

impl DjangoHash {
    /// Reads a hash as Django's `auth_user.password` holds it.
    pub fn parse(stored: &str) -> Result<Self, Unusable> {
        if stored.is_empty() || stored.starts_with('!') {
            return Err(Unusable::Disabled);
        }
        let (algorithm, rest) = stored.split_once('$').unwrap_or((stored, ""));
        match algorithm {
            "pbkdf2_sha256" | "pbkdf2_sha1" => {
                let name = if algorithm == "pbkdf2_sha1" {
                    "pbkdf2_sha1"
                } else {
                    "pbkdf2_sha256"
                };
                let [iterations, salt, hash] =
                    fields::<3>(rest).ok_or(Unusable::Malformed(name))?;
                let iterations: u32 = iterations.parse().map_err(|_| Unusable::Malformed(name))?;
                if iterations == 0 || iterations > MAX_PBKDF2_ITERATIONS {
                    return Err(Unusable::TooCostly(
                        name,
                        format!("{iterations} iterations"),
                    ));
                }
                let hash = STANDARD
                    .decode(hash)
                    .map_err(|_| Unusable::Malformed(name))?;
                let expected = if name == "pbkdf2_sha1" { 20 } else { 32 };
                if hash.len() != expected {
                    return Err(Unusable::Malformed(name));
                }
                Ok(DjangoHash::Pbkdf2 {
                    sha1: name == "pbkdf2_sha1",
                    iterations,
                    salt: salt.to_owned(),
                    hash,
                })
            }
            "argon2" => {
                let phc = format!("${rest}");
                let parsed =
                    argon2::PasswordHash::new(&phc).map_err(|_| Unusable::Malformed("argon2"))?;
                let param = |name: &str| {
                    parsed
                        .params
                        .get_decimal(name)
                        .ok_or(Unusable::Malformed("argon2"))
                };
                let (m, t) = (param("m")?, param("t")?);
                if m > MAX_ARGON2_MEMORY_KIB || t > MAX_ARGON2_ITERATIONS {
                    return Err(Unusable::TooCostly("argon2", format!("m={m} KiB, t={t}")));
                }
                Ok(DjangoHash::Argon2 { phc })
            }
            "bcrypt_sha256" => {
                // `$2b$COST$SALTHASH`, after the empty field Django leaves.
                let bcrypt = Some(rest)
                    .filter(|b| b.starts_with("$2"))
                    .ok_or(Unusable::Malformed("bcrypt_sha256"))?;
                let cost: u32 = bcrypt
                    .split('$')
                    .nth(2)
                    .and_then(|c| c.parse().ok())
                    .ok_or(Unusable::Malformed("bcrypt_sha256"))?;
                if cost > MAX_BCRYPT_COST {
                    return Err(Unusable::TooCostly("bcrypt_sha256", format!("cost {cost}")));
                }
                Ok(DjangoHash::BcryptSha256 {
                    bcrypt: bcrypt.to_owned(),
                })
            }
            "scrypt" => {
                let [n, salt, r, p, hash] =
                    fields::<5>(rest).ok_or(Unusable::Malformed("scrypt"))?;
                let parse = |v: &str| v.parse::<u64>().map_err(|_| Unusable::Malformed("scrypt"));
                let (n, r, p) = (parse(n)?, parse(r)?, parse(p)?);
                if !n.is_power_of_two() || n < 2 || r == 0 || p == 0 {
                    return Err(Unusable::Malformed("scrypt"));
                }
                let bytes = 128u64.saturating_mul(n).saturating_mul(r);
                if bytes > MAX_SCRYPT_BYTES || bytes.saturating_mul(p) > MAX_SCRYPT_WORK {
                    return Err(Unusable::TooCostly(
                        "scrypt",
                        format!("n={n}, r={r}, p={p}"),
                    ));
                }
                let hash = STANDARD
                    .decode(hash)
                    .map_err(|_| Unusable::Malformed("scrypt"))?;
                if hash.is_empty() || hash.len() > 128 {
                    return Err(Unusable::Malformed("scrypt"));
                }
                Ok(DjangoHash::Scrypt {
                    log_n: n.trailing_zeros() as u8,
                    r: r as u32,
                    p: p as u32,
                    salt: salt.to_owned(),
                    hash,
                })
            }
            other => Err(Unusable::Algorithm(other.to_owned())),
        }
    }

    /// Whether `password` is the one this hash was made from. Constant
    /// time in the comparison; the work is the hash's own.
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            DjangoHash::Pbkdf2 {
                sha1,
                iterations,
                salt,
                hash,
            } => {
                let mut out = vec![0u8; hash.len()];
                if *sha1 {
                    pbkdf2::pbkdf2_hmac::<sha1::Sha1>(
                        password,
                        salt.as_bytes(),
                        *iterations,
                        &mut out,
                    );
                } else {
                    pbkdf2::pbkdf2_hmac::<sha2::Sha256>(
                        password,
                        salt.as_bytes(),
                        *iterations,
                        &mut out,
                    );
                }
                equal(&out, hash)
            }
            DjangoHash::Argon2 { phc } => {
                use argon2::PasswordVerifier as _;
                argon2::PasswordHash::new(phc).is_ok_and(|h| {
                    argon2::Argon2::default()
                        .verify_password(password, &h)
                        .is_ok()
                })
            }
            DjangoHash::BcryptSha256 { bcrypt } => {
                let digest = sha2::Sha256::digest(password);
                let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
                bcrypt::verify(hex.as_bytes(), bcrypt).unwrap_or(false)
            }
            DjangoHash::Scrypt {
                log_n,
                r,
                p,
                salt,
                hash,
            } => {
                let Ok(params) = scrypt::Params::new(*log_n, *r, *p) else {
                    return false;
                };
                let mut out = vec![0u8; hash.len()];
                scrypt::scrypt(password, salt.as_bytes(), &params, &mut out).is_ok()
                    && equal(&out, hash)
            }
        }
    }

    /// The algorithm's name as Django writes it.
    pub fn algorithm(&self) -> &'static str {
        match self {
            DjangoHash::Pbkdf2 { sha1: true, .. } => "pbkdf2_sha1",
            DjangoHash::Pbkdf2 { sha1: false, .. } => "pbkdf2_sha256",
            DjangoHash::Argon2 { .. } => "argon2",
            DjangoHash::BcryptSha256 { .. } => "bcrypt_sha256",
            DjangoHash::Scrypt { .. } => "scrypt",
        }
    }
}

/// Whether a stored hash is one of Django's (rather than the gateway's own
/// argon2id PHC string, which starts with `$`).
pub fn is_django(stored: &str) -> bool {
    !stored.starts_with('$') && !stored.starts_with('!')
}

/// Exactly `N` `$`-separated fields.
fn fields<const N: usize>(text: &str) -> Option<[&str; N]> {
    let mut parts = text.split('$');
    let out: [&str; N] = std::array::from_fn(|_| parts.next().unwrap_or(""));
    (parts.next().is_none() && out.iter().all(|f| !f.is_empty())).then_some(out)
}

/// Constant-time equality of two digests.
fn equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by Django 5.2.19's make_password("correct horse é"), one per
    /// hasher, with Django's default parameters.
    const DJANGO: [&str; 5] = [
        "pbkdf2_sha256$1000000$3KZ2ku5e7CctBuLFEBODfM$+yFtBGAkHZ9RMujepYAawNVM2BbTxSTYtStMVDGbwnw=",
        "pbkdf2_sha1$1000000$4FFGjPrpVb4bRBVFb663bY$b6Ca0XUrNMD2Dg++xt9pODutVig=",
        "argon2$argon2id$v=19$m=102400,t=2,p=8$M2hqVlk0M0M1YnBVV2VJT0llMXRMcA$lMJ9UKc1nX/PEuQR8AhYhbAKDdkvJ+XhS7TphYUEySI",
        "bcrypt_sha256$$2b$12$DC84rWWNyCpltIz4vpS9r.moc/y0ccnJwuD3jYmlHC4njB7R2qrMG",
        "scrypt$16384$VLnuRcGEAVKctHAlP536Tr$8$5$km8zCHng4PNYOLlXQvDFl8ADXe4FaMZJoosljyXUIRNlm8l78K9AIiJNi+CLTb12L7L4sz5arciqYdd6k0Q4Ew==",
    ];

    #[test]
    fn every_django_hasher_verifies_the_right_password_only() {
        for stored in DJANGO {
            let hash = DjangoHash::parse(stored).unwrap_or_else(|e| panic!("{stored}: {e}"));
            assert!(stored.starts_with(hash.algorithm()));
            assert!(hash.verify("correct horse é".as_bytes()), "{stored}");
            assert!(!hash.verify(b"correct horse e"), "{stored}");
            assert!(is_django(stored));
        }
    }

    #[test]
    fn unusable_unknown_malformed_and_costly_hashes_are_told_apart() {
        assert_eq!(DjangoHash::parse("!x7Gq"), Err(Unusable::Disabled));
        assert_eq!(DjangoHash::parse(""), Err(Unusable::Disabled));
        assert_eq!(
            DjangoHash::parse("md5$salt$abc"),
            Err(Unusable::Algorithm("md5".into()))
        );
        assert!(matches!(
            DjangoHash::parse("pbkdf2_sha256$abc$salt$hash"),
            Err(Unusable::Malformed(_))
        ));
        assert!(matches!(
            DjangoHash::parse("pbkdf2_sha256$1000$salt"),
            Err(Unusable::Malformed(_))
        ));
        assert!(matches!(
            DjangoHash::parse(
                "pbkdf2_sha256$900000000$s$+yFtBGAkHZ9RMujepYAawNVM2BbTxSTYtStMVDGbwnw="
            ),
            Err(Unusable::TooCostly(..))
        ));
        assert!(matches!(
            DjangoHash::parse(
                "argon2$argon2id$v=19$m=4194304,t=2,p=8$M2hqVlk0M0M1YnBVV2VJT0llMXRMcA$lMJ9UKc1nX/PEuQR8AhYhbAKDdkvJ+XhS7TphYUEySI"
            ),
            Err(Unusable::TooCostly(..))
        ));
        assert!(matches!(
            DjangoHash::parse(
                "bcrypt_sha256$$2b$31$DC84rWWNyCpltIz4vpS9r.moc/y0ccnJwuD3jYmlHC4njB7R2qrMG"
            ),
            Err(Unusable::TooCostly(..))
        ));
        assert!(matches!(
            DjangoHash::parse("scrypt$1048576$salt$64$5$km8z"),
            Err(Unusable::TooCostly(..))
        ));
        assert!(matches!(
            DjangoHash::parse("scrypt$16384$salt$8$8192$km8z"),
            Err(Unusable::TooCostly(..))
        ));
        assert!(matches!(
            DjangoHash::parse("scrypt$1000$salt$8$5$km8z"),
            Err(Unusable::Malformed(_))
        ));
        assert!(!is_django("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA"));
    }
}

//! `tokengate import django`: what `python manage.py dumpdata auth.group
//! auth.user authtoken.token knox.authtoken` writes, read into users and
//! tokens for the store. Passwords keep Django's hashes (verified at login,
//! rehashed on the first); tokens keep their digests only.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use crate::auth::django::DjangoHash;
use crate::store::token::{Token, TokenDigest, knox_digest};

/// A user to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportUser {
    pub username: String,
    /// Django's hash as written, or the unusable `!` when it cannot be
    /// verified here.
    pub password_hash: String,
    /// Why the password is not usable, for the report.
    pub unusable: Option<String>,
    /// Group names, then `staff` and `superuser` for the flags.
    pub roles: Vec<String>,
    pub active: bool,
}

/// A token to add, by the digest the gateway looks it up by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportToken {
    pub username: String,
    pub digest: TokenDigest,
    /// Unix seconds.
    pub created_at: u64,
    pub expires_at: Option<u64>,
    /// `django` (DRF) or `knox`.
    pub label: &'static str,
}

/// Everything the file holds that the gateway takes, and what it left.
#[derive(Debug, Default)]
pub struct Plan {
    pub users: Vec<ImportUser>,
    pub tokens: Vec<ImportToken>,
    /// Models the import does not read, with how many objects each.
    pub ignored: BTreeMap<String, usize>,
    /// Objects of a read model that could not be used, and why.
    pub skipped: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(
        "not a Django dumpdata file: {0}; write one with `python manage.py dumpdata auth.group auth.user authtoken.token knox.authtoken`"
    )]
    NotDumpdata(String),
}

/// Reads a dumpdata file: any subset of the four models, with or without
/// natural keys, any indentation.
pub fn plan(text: &str) -> Result<Plan, ImportError> {
    let objects: Vec<Value> =
        serde_json::from_str(text).map_err(|e| ImportError::NotDumpdata(e.to_string()))?;
    let mut plan = Plan::default();
    let mut groups: HashMap<i64, String> = HashMap::new();
    // Users by primary key, for tokens that name them by id.
    let mut user_ids: HashMap<i64, String> = HashMap::new();
    let model = |o: &Value| o["model"].as_str().unwrap_or("").to_owned();
    for o in &objects {
        if !o.is_object() || o["model"].as_str().is_none() {
            return Err(ImportError::NotDumpdata(
                "an entry without a `model`".into(),
            ));
        }
        if model(o) == "auth.group"
            && let (Some(pk), Some(name)) = (o["pk"].as_i64(), o["fields"]["name"].as_str())
        {
            groups.insert(pk, name.to_owned());
        }
    }
    for o in &objects {
        let fields = &o["fields"];
        match model(o).as_str() {
            "auth.group" => {}
            "auth.user" => {
                let Some(username) = fields["username"].as_str() else {
                    plan.skipped.push("an auth.user without a username".into());
                    continue;
                };
                if let Some(pk) = o["pk"].as_i64() {
                    user_ids.insert(pk, username.to_owned());
                }
                let stored = fields["password"].as_str().unwrap_or("");
                let (password_hash, unusable) = match DjangoHash::parse(stored) {
                    Ok(_) => (stored.to_owned(), None),
                    Err(why) => (crate::store::NO_PASSWORD.to_owned(), Some(why.to_string())),
                };
                let mut roles: Vec<String> = fields["groups"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|g| match g {
                        // --natural-foreign: ["name"]
                        Value::Array(natural) => natural.first()?.as_str().map(str::to_owned),
                        Value::Number(id) => groups.get(&id.as_i64()?).cloned(),
                        _ => None,
                    })
                    .collect();
                if fields["is_staff"].as_bool() == Some(true) {
                    roles.push("staff".into());
                }
                if fields["is_superuser"].as_bool() == Some(true) {
                    roles.push("superuser".into());
                }
                roles.sort();
                roles.dedup();
                plan.users.push(ImportUser {
                    username: username.to_owned(),
                    password_hash,
                    unusable,
                    roles,
                    active: fields["is_active"].as_bool().unwrap_or(true),
                });
            }
            "authtoken.token" => {
                let key = o["pk"].as_str().or_else(|| fields["key"].as_str());
                let digest = key.and_then(Token::django_digest_of);
                match (digest, owner(&fields["user"], &user_ids)) {
                    (Some(digest), Some(username)) if key.is_some_and(|k| k.len() == 40) => {
                        plan.tokens.push(ImportToken {
                            username,
                            digest,
                            created_at: fields["created"].as_str().and_then(unix).unwrap_or(0),
                            expires_at: None,
                            label: "django",
                        });
                    }
                    _ => plan
                        .skipped
                        .push("an authtoken.token without a 40-digit key or a known user".into()),
                }
            }
            "knox.authtoken" => {
                let digest = o["pk"]
                    .as_str()
                    .or_else(|| fields["digest"].as_str())
                    .and_then(hex_bytes)
                    .filter(|d| d.len() == 64);
                let expiry = &fields["expiry"];
                let expires_at = match expiry {
                    Value::Null => Some(None),
                    Value::String(at) => unix(at).map(Some),
                    _ => None,
                };
                match (digest, owner(&fields["user"], &user_ids), expires_at) {
                    (Some(digest), Some(username), Some(expires_at)) => {
                        plan.tokens.push(ImportToken {
                            username,
                            digest: knox_digest(&digest),
                            created_at: fields["created"].as_str().and_then(unix).unwrap_or(0),
                            expires_at,
                            label: "knox",
                        });
                    }
                    _ => plan.skipped.push(
                        "a knox.authtoken without a SHA-512 digest, a known user or a readable expiry"
                            .into(),
                    ),
                }
            }
            other => *plan.ignored.entry(other.to_owned()).or_default() += 1,
        }
    }
    Ok(plan)
}

/// A token's user: an id, or `["username"]` with --natural-foreign.
fn owner(user: &Value, ids: &HashMap<i64, String>) -> Option<String> {
    match user {
        Value::Number(id) => ids.get(&id.as_i64()?).cloned(),
        Value::Array(natural) => natural.first()?.as_str().map(str::to_owned),
        _ => None,
    }
}

fn hex_bytes(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Unix seconds of a Django datetime: `2026-12-05T05:20:00.123Z`, or with
/// an offset (`+01:00`), or naive (taken as UTC).
fn unix(text: &str) -> Option<u64> {
    let (naive, offset_s): (&str, i64) = if let Some(t) = text.strip_suffix('Z') {
        (t, 0)
    } else if text.len() > 6
        && let (t, off) = text.split_at(text.len() - 6)
        && (off.starts_with('+') || off.starts_with('-'))
        && off.as_bytes()[3] == b':'
    {
        let hours: i64 = off[1..3].parse().ok()?;
        let minutes: i64 = off[4..6].parse().ok()?;
        let sign = if off.starts_with('-') { -1 } else { 1 };
        (t, sign * (hours * 3600 + minutes * 60))
    } else {
        (text, 0)
    };
    let at = humantime::parse_rfc3339_weak(naive).ok()?;
    let secs = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    u64::try_from(i64::try_from(secs).ok()?.checked_sub(offset_s)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest as _;

    /// What knox stores for `token`.
    fn sha512_hex(token: &str) -> String {
        sha2::Sha512::digest(token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    const DUMP: &str = r#"[
 {"model": "auth.group", "pk": 1, "fields": {"name": "finance", "permissions": []}},
 {"model": "contenttypes.contenttype", "pk": 1, "fields": {"app_label": "x", "model": "y"}},
 {"model": "auth.user", "pk": 1, "fields": {"password": "pbkdf2_sha256$1000000$3KZ2ku5e7CctBuLFEBODfM$+yFtBGAkHZ9RMujepYAawNVM2BbTxSTYtStMVDGbwnw=", "username": "ann", "is_staff": true, "is_superuser": false, "is_active": true, "groups": [1]}},
 {"model": "auth.user", "pk": 2, "fields": {"password": "!unusable", "username": "bob", "is_active": false, "groups": []}},
 {"model": "auth.user", "pk": 3, "fields": {"password": "md5$salt$abc", "username": "cy", "groups": [["finance"]]}},
 {"model": "authtoken.token", "pk": "9944b09199c62bcf9418ad846dd0e4bbdfc6ee4b", "fields": {"user": 1, "created": "2026-01-02T03:04:05.678Z"}},
 {"model": "authtoken.token", "pk": "5dd5e4b1fa6fa4ff7a6cc4e0cd2fbbc6a95d1a1b", "fields": {"user": ["bob"], "created": "2026-01-02T03:04:05+01:00"}},
 {"model": "knox.authtoken", "pk": "PLACEHOLDER", "fields": {"token_key": "abc", "user": 1, "created": "2026-01-02T03:04:05Z", "expiry": "2026-02-02T03:04:05Z"}}
]"#;

    #[test]
    fn users_roles_hashes_and_tokens_are_read_with_or_without_natural_keys() {
        let knox_token = format!("tg-{}", "ab".repeat(32));
        let dump = DUMP.replace("PLACEHOLDER", &sha512_hex(&knox_token));
        let plan = plan(&dump).unwrap();
        let users: BTreeMap<_, _> = plan
            .users
            .iter()
            .map(|u| (u.username.as_str(), u))
            .collect();
        assert_eq!(users["ann"].roles, ["finance", "staff"]);
        assert!(users["ann"].password_hash.starts_with("pbkdf2_sha256$"));
        assert!(users["ann"].unusable.is_none());
        assert!(!users["bob"].active);
        assert_eq!(users["bob"].password_hash, "!");
        assert_eq!(users["cy"].roles, ["finance"]);
        assert!(users["cy"].unusable.as_deref().unwrap().contains("md5"));
        assert_eq!(plan.ignored["contenttypes.contenttype"], 1);
        assert_eq!(plan.tokens.len(), 3, "{:?}", plan.skipped);
        let drf = &plan.tokens[0];
        assert_eq!(drf.username, "ann");
        assert_eq!(drf.label, "django");
        assert_eq!(
            Some(drf.digest),
            Token::django_digest_of("9944b09199c62bcf9418ad846dd0e4bbdfc6ee4b")
        );
        assert_eq!(drf.created_at, 1_767_323_045);
        assert_eq!(plan.tokens[1].username, "bob");
        assert_eq!(plan.tokens[1].created_at, 1_767_323_045 - 3600);
        let knox = &plan.tokens[2];
        assert_eq!(knox.label, "knox");
        assert_eq!(Some(knox.digest), Token::django_digest_of(&knox_token));
        assert_eq!(knox.expires_at, Some(1_770_001_445));
    }

    #[test]
    fn anything_but_dumpdata_is_refused_with_the_way_to_make_it() {
        for bad in ["", "{}", "[1]", "[{\"pk\": 1}]"] {
            let e = plan(bad).unwrap_err().to_string();
            assert!(e.contains("dumpdata"), "{bad}: {e}");
        }
    }
}

//! `tokengate import django`: what `python manage.py dumpdata auth.group
//! auth.user authtoken.token knox.authtoken` writes, read into users and
//! tokens for the store. Passwords keep Django's hashes (verified at login,
//! rehashed on the first); tokens keep their digests only.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use crate::auth::django::DjangoHash;
use crate::store::token::{Token, knox_digest};
use crate::store::{ImportedToken, ImportedUser};

/// A user read from the file, with what the report says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportUser {
    pub user: ImportedUser,
    /// Why the password is not usable, for the report.
    pub unusable: Option<String>,
    /// Group names that are not valid roles, left out.
    pub dropped_roles: Vec<String>,
}

/// Everything the file holds that the gateway takes.
#[derive(Debug, Default)]
pub struct Plan {
    pub users: Vec<ImportUser>,
    pub tokens: Vec<ImportedToken>,
    /// Models the import does not read, with how many objects each.
    pub ignored: BTreeMap<String, usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(
        "not a Django dumpdata file: {0}; write one with `python manage.py dumpdata auth.group auth.user authtoken.token knox.authtoken`"
    )]
    NotDumpdata(String),
    #[error("entry {index} ({model}): {message}; nothing was imported")]
    Entry {
        /// 1-based, in the file's order.
        index: usize,
        model: String,
        message: String,
    },
}

/// Reads a whole dumpdata file (any subset of the four models, with or
/// without natural keys, any indent) and checks every entry the import
/// uses: one it cannot use is an error naming the entry, so a bad file
/// imports nothing.
pub fn plan(text: &str) -> Result<Plan, ImportError> {
    let objects: Vec<Value> =
        serde_json::from_str(text).map_err(|e| ImportError::NotDumpdata(e.to_string()))?;
    let mut plan = Plan::default();
    let mut groups: HashMap<i64, String> = HashMap::new();
    // Users by primary key, for tokens and groups that name them by id.
    let mut user_ids: HashMap<i64, String> = HashMap::new();
    let mut usernames: Vec<String> = Vec::new();
    let entry = |index: usize, model: &str, message: String| ImportError::Entry {
        index: index + 1,
        model: model.to_owned(),
        message,
    };
    // Groups and users first: tokens and memberships refer to them.
    for (i, o) in objects.iter().enumerate() {
        let Some(model) = o.get("model").and_then(Value::as_str) else {
            return Err(ImportError::NotDumpdata(format!(
                "entry {} has no `model`",
                i + 1
            )));
        };
        let fields = o
            .get("fields")
            .filter(|f| f.is_object())
            .ok_or_else(|| entry(i, model, "no `fields` object".into()))?;
        match model {
            "auth.group" => {
                let name = text_field(fields, "name").map_err(|m| entry(i, model, m))?;
                if let Some(pk) = o.get("pk").and_then(Value::as_i64) {
                    groups.insert(pk, name.to_owned());
                }
            }
            "auth.user" => {
                let username = text_field(fields, "username").map_err(|m| entry(i, model, m))?;
                if let Some(pk) = o.get("pk") {
                    let pk = pk
                        .as_i64()
                        .ok_or_else(|| entry(i, model, "`pk` is not a number".into()))?;
                    user_ids.insert(pk, username.to_owned());
                }
                usernames.push(username.to_owned());
            }
            _ => {}
        }
    }
    for (i, o) in objects.iter().enumerate() {
        let model = o["model"].as_str().unwrap_or_default();
        let fields = &o["fields"];
        let fail = |m: String| entry(i, model, m);
        match model {
            "auth.group" => {}
            "auth.user" => {
                let username = text_field(fields, "username").map_err(fail)?;
                let stored = match &fields["password"] {
                    Value::String(p) => p.as_str(),
                    Value::Null => "",
                    _ => return Err(fail("`password` is not a string".into())),
                };
                let flag = |name: &str, default: bool| match &fields[name] {
                    Value::Bool(b) => Ok(*b),
                    Value::Null => Ok(default),
                    _ => Err(entry(i, model, format!("`{name}` is not true or false"))),
                };
                let (active, staff, superuser) = (
                    flag("is_active", true)?,
                    flag("is_staff", false)?,
                    flag("is_superuser", false)?,
                );
                let (password_hash, unusable) = match DjangoHash::parse(stored) {
                    Ok(_) => (stored.to_owned(), None),
                    Err(why) => (crate::store::NO_PASSWORD.to_owned(), Some(why.to_string())),
                };
                let mut roles = Vec::new();
                match &fields["groups"] {
                    Value::Null => {}
                    Value::Array(list) => {
                        for g in list {
                            let name = match g {
                                // --natural-foreign: ["name"]
                                Value::Array(natural) => natural.first().and_then(Value::as_str),
                                Value::Number(id) => id
                                    .as_i64()
                                    .and_then(|id| groups.get(&id))
                                    .map(String::as_str),
                                _ => None,
                            };
                            let name = name.ok_or_else(|| {
                                fail(format!(
                                    "group {g} is neither a group in the file nor [\"name\"]"
                                ))
                            })?;
                            roles.push(name.to_owned());
                        }
                    }
                    _ => return Err(fail("`groups` is not a list".into())),
                }
                if staff {
                    roles.push("staff".into());
                }
                if superuser {
                    roles.push("superuser".into());
                }
                roles.sort();
                roles.dedup();
                let (roles, dropped_roles): (Vec<String>, Vec<String>) = roles
                    .into_iter()
                    .partition(|r| crate::store::validate_role(r).is_ok());
                crate::store::validate_username(username).map_err(|e| fail(e.to_string()))?;
                plan.users.push(ImportUser {
                    user: ImportedUser {
                        username: username.to_owned(),
                        password_hash,
                        roles,
                        disabled: !active,
                    },
                    unusable,
                    dropped_roles,
                });
            }
            "authtoken.token" => {
                let key = o
                    .get("pk")
                    .and_then(Value::as_str)
                    .or_else(|| fields["key"].as_str())
                    .filter(|k| k.len() == 40)
                    .ok_or_else(|| fail("the key is not 40 hex digits".into()))?;
                let digest = Token::django_digest_of(key)
                    .ok_or_else(|| fail("the key is not 40 hex digits".into()))?;
                plan.tokens.push(ImportedToken {
                    username: owner(&fields["user"], &user_ids, &usernames).map_err(fail)?,
                    digest,
                    created_at: time_field(fields, "created").map_err(fail)?.unwrap_or(0),
                    expires_at: None,
                    label: "django".into(),
                });
            }
            "knox.authtoken" => {
                let digest = o
                    .get("pk")
                    .and_then(Value::as_str)
                    .or_else(|| fields["digest"].as_str())
                    .and_then(hex_bytes)
                    .filter(|d| d.len() == 64)
                    .ok_or_else(|| fail("the digest is not a SHA-512 in hex".into()))?;
                plan.tokens.push(ImportedToken {
                    username: owner(&fields["user"], &user_ids, &usernames).map_err(fail)?,
                    digest: knox_digest(&digest),
                    created_at: time_field(fields, "created").map_err(fail)?.unwrap_or(0),
                    expires_at: time_field(fields, "expiry").map_err(fail)?,
                    label: "knox".into(),
                });
            }
            other => *plan.ignored.entry(other.to_owned()).or_default() += 1,
        }
    }
    Ok(plan)
}

fn text_field<'a>(fields: &'a Value, name: &str) -> Result<&'a str, String> {
    fields[name]
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| format!("`{name}` is missing or not text"))
}

/// A datetime field as Unix seconds; `None` when null or absent.
fn time_field(fields: &Value, name: &str) -> Result<Option<u64>, String> {
    match &fields[name] {
        Value::Null => Ok(None),
        Value::String(at) => unix(at)
            .map(Some)
            .ok_or_else(|| format!("`{name}` is not a date and time: {at}")),
        _ => Err(format!("`{name}` is not a date and time")),
    }
}

/// A token's user: an id, or `["username"]` with --natural-foreign; a
/// user of this file either way.
fn owner(user: &Value, ids: &HashMap<i64, String>, names: &[String]) -> Result<String, String> {
    let name = match user {
        Value::Number(id) => id.as_i64().and_then(|id| ids.get(&id)).cloned(),
        Value::Array(natural) => natural.first().and_then(Value::as_str).map(str::to_owned),
        _ => None,
    };
    name.filter(|n| names.contains(n))
        .ok_or_else(|| format!("its user {user} is not a user in the file"))
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
            .map(|u| (u.user.username.as_str(), u))
            .collect();
        assert_eq!(users["ann"].user.roles, ["finance", "staff"]);
        assert!(
            users["ann"]
                .user
                .password_hash
                .starts_with("pbkdf2_sha256$")
        );
        assert!(users["ann"].unusable.is_none());
        assert!(users["bob"].user.disabled);
        assert_eq!(users["bob"].user.password_hash, "!");
        assert_eq!(users["cy"].user.roles, ["finance"]);
        assert!(users["cy"].unusable.as_deref().unwrap().contains("md5"));
        assert_eq!(plan.ignored["contenttypes.contenttype"], 1);
        assert_eq!(plan.tokens.len(), 3);
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
    fn a_bad_entry_is_named_and_fails_the_whole_file() {
        let knox = DUMP.replace("PLACEHOLDER", &sha512_hex("x"));
        for (broken, says) in [
            (
                knox.replace("\"is_active\": false", "\"is_active\": \"no\""),
                "entry 4 (auth.user): `is_active`",
            ),
            (
                knox.replace("\"user\": [\"bob\"]", "\"user\": [\"nobody\"]"),
                "entry 7 (authtoken.token)",
            ),
            (
                knox.replace("\"groups\": [1]", "\"groups\": [9]"),
                "entry 3 (auth.user): group 9",
            ),
            (
                knox.replace("2026-02-02T03:04:05Z", "next tuesday"),
                "entry 8 (knox.authtoken): `expiry`",
            ),
            (
                knox.replace("9944b09199c62bcf9418ad846dd0e4bbdfc6ee4b", "short"),
                "entry 6 (authtoken.token)",
            ),
        ] {
            let e = plan(&broken).unwrap_err().to_string();
            assert!(e.starts_with(says), "{says}: {e}");
            assert!(e.ends_with("nothing was imported"), "{e}");
        }
        let truncated = &knox[..knox.len() / 2];
        let e = plan(truncated).unwrap_err().to_string();
        assert!(e.contains("line"), "where: {e}");
    }

    #[test]
    fn anything_but_dumpdata_is_refused_with_the_way_to_make_it() {
        for bad in ["", "{}", "[1]", "[{\"pk\": 1}]"] {
            let e = plan(bad).unwrap_err().to_string();
            assert!(e.contains("dumpdata"), "{bad}: {e}");
        }
    }
}

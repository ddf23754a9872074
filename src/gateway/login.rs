//! `POST {login_path}`: username and password in, a new token out. The body
//! is the one thing the gateway reads whole, through a size limit and a
//! deadline.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use percent_encoding::percent_decode;

use crate::auth::django::{self, DjangoHash};
use crate::auth::password::{Hasher, Password};
use crate::auth::throttle::{self, Throttle};
use crate::gateway::response::{self, Body, LoginRejection, Rejection};
use crate::observe::metrics::{LoginOutcome, Metrics};
use crate::request::scope::Scope;
use crate::store::token::Token;
use crate::store::{Store, StoreError, TokenRecord, User};

/// The credentials a login body carried.
#[derive(Debug)]
pub struct LoginForm {
    pub username: String,
    pub password: Password,
}

/// The two body encodings a login accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Form,
    Json,
}

/// Counts a sign-in, through `/login` or the token page, by its outcome,
/// with how long it took since `started`.
pub fn count<T>(metrics: &Metrics, started: Instant, result: &Result<T, Rejection>) {
    metrics.login_latency.observe(started.elapsed());
    metrics.login(match result {
        Ok(_) => LoginOutcome::Ok,
        Err(Rejection::StoreUnavailable) => LoginOutcome::Error,
        Err(Rejection::Login(LoginRejection::Limited(_))) => LoginOutcome::Limited,
        Err(_) => LoginOutcome::Failed,
    });
}

pub struct Login<'a> {
    pub store: &'a Store,
    pub hasher: &'a Hasher,
    pub throttle: &'a Throttle,
    /// The client address failures are counted against.
    pub client: IpAddr,
    pub max_body: u64,
    pub body_timeout: Duration,
    pub token_ttl: Option<Duration>,
    /// How long a limited login waits before its 429.
    pub limited_delay: Duration,
}

impl Login<'_> {
    /// The 429 for a limited login, after a tarpit: a client flooding
    /// logins gets one answer per delay and connection, so the flood costs
    /// timers, not the CPU that authenticated traffic needs (and the log
    /// sees a line per delay).
    async fn limited(&self, username: &str, which: throttle::Limited, wait: Duration) -> Rejection {
        let client = self.client;
        tracing::warn!(%client, user = %username, limited_by = ?which, retry_after_s = wait.as_secs(), "login limited");
        let delay = self.limited_delay.min(wait);
        tokio::time::sleep(delay).await;
        LoginRejection::Limited(wait - delay).into()
    }

    pub async fn handle(
        &self,
        req: Request<Incoming>,
    ) -> Result<(Response<Body>, String), Rejection> {
        if req.method() != Method::POST {
            return Err(Rejection::MethodNotAllowed { allow: "POST" });
        }
        let format = content_format(req.headers())?;
        let body = read_body(req, self.max_body, self.body_timeout).await?;
        let form = parse(format, &body)?;
        let (user, username) = self.authenticate(&form).await?;
        let (token, record) = self
            .issue(user, &username, self.token_ttl, None, &[])
            .await?;
        tracing::info!(client = %self.client, user = %username, "login succeeded");
        let expires_at = record.expires_at.map(crate::time::rfc3339);
        let mut response = response::json(
            StatusCode::OK,
            &serde_json::json!({ "token": token.expose(), "expires_at": expires_at }),
        );
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
            .headers_mut()
            .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        Ok((response, username))
    }

    /// The user `form` names if its password is theirs and they may log
    /// in, with the name as logs may show it: throttled, timed alike for
    /// every failure, and counted, as every sign-in is (`/login` and the
    /// token page).
    pub async fn authenticate(&self, form: &LoginForm) -> Result<(User, String), Rejection> {
        // What the log lines below carry: the name as sent when it could be
        // a username, escaped otherwise, so a login cannot forge log lines.
        let username = loggable(&form.username);
        let client = self.client;

        // Reserved before any argon2 work, so a limited attacker costs
        // nothing, and parallel guesses count before they are hashed.
        let attempt = match self
            .throttle
            .reserve(client, &form.username, Instant::now())
        {
            Ok(attempt) => attempt,
            Err((which, wait)) => return Err(self.limited(&username, which, wait).await),
        };
        // The failures the other gateways on a shared store counted.
        match self.store.login_ban(client, &form.username).await {
            Ok(None) => {}
            Ok(Some((key, wait))) => {
                let which = if key == 0 {
                    throttle::Limited::Client
                } else {
                    throttle::Limited::User
                };
                return Err(self.limited(&username, which, wait).await);
            }
            Err(e) => {
                tracing::error!(error = %e, "reading shared login failures failed");
                return Err(Rejection::StoreUnavailable);
            }
        }
        // Many failures across all clients slow every login down, for a
        // spray from many addresses that no per-key count sees.
        let slowed = self.throttle.global_delay(Instant::now());
        if !slowed.is_zero() {
            tracing::debug!(%client, delay_ms = slowed.as_millis(), "login slowed by the global failure budget");
            tokio::time::sleep(slowed).await;
        }

        let user = match self.store.user_async(&form.username).await {
            Ok(user) => user,
            Err(e) => {
                tracing::error!(error = %e, "user lookup failed during login");
                return Err(Rejection::StoreUnavailable);
            }
        };
        // Always verify, even for an unknown user, so timing reveals nothing;
        // a hash that cannot be verified (an imported one past the cost
        // limits) is checked like an unknown user's.
        let stored = user
            .as_ref()
            .and_then(|u| u.password())
            .filter(|h| !django::is_django(h) || DjangoHash::parse(h).is_ok());
        let verified = self.hasher.verify(&form.password, stored).await;
        let user = match user {
            Some(user) if verified && !user.disabled => user,
            _ => {
                tracing::info!(%client, user = %username, "login failed");
                if let Some(ban) = attempt.fail(Instant::now()) {
                    tracing::warn!(%client, user = %username, ban_s = ban.as_secs(), "login ban started");
                }
                let policy = self.throttle.config();
                match self
                    .store
                    .login_failed(client, &form.username, &policy)
                    .await
                {
                    Ok(None) => {}
                    Ok(Some(ban)) => {
                        tracing::warn!(%client, user = %username, ban_s = ban.as_secs(), "login ban started on every gateway")
                    }
                    Err(e) => tracing::warn!(error = %e, "counting a shared login failure failed"),
                }
                return Err(LoginRejection::BadCredentials.into());
            }
        };
        attempt.succeed();
        if let Err(e) = self.store.login_succeeded(&form.username).await {
            tracing::warn!(error = %e, "clearing shared login failures failed");
        }
        if django::is_django(&user.password_hash) {
            self.rehash(&user, &form.password, &username).await;
        }
        Ok((user, username))
    }

    /// A token for `user` as `authenticate` returned them: none when their
    /// credentials changed meanwhile, and only once it is stored.
    pub async fn issue(
        &self,
        user: User,
        username: &str,
        ttl: Option<Duration>,
        label: Option<String>,
        scopes: &[Scope],
    ) -> Result<(Token, TokenRecord), Rejection> {
        let store = self.store.clone();
        let scopes = scopes.to_vec();
        let issued =
            tokio::task::spawn_blocking(move || store.issue_token(&user, ttl, label, &scopes))
                .await;
        let issued = match issued {
            Ok(Ok(issued)) => issued,
            Ok(Err(StoreError::Stale | StoreError::UnknownUser(_))) => {
                tracing::info!(user = %username, "login raced a credential change");
                return Err(LoginRejection::BadCredentials.into());
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "storing a token failed; no token handed out");
                return Err(Rejection::StoreUnavailable);
            }
            Err(e) => {
                tracing::error!(error = %e, "token task failed");
                return Err(Rejection::StoreUnavailable);
            }
        };
        Ok(issued)
    }
}

/// A username as it may appear in a log line. Names that no user can have
/// (see `store::validate_username`) are escaped outside that character set
/// and cut short: a name carrying a newline would otherwise write a forged
/// line — `login failed client=<someone else>` — for fail2ban to act on.
fn loggable(name: &str) -> String {
    if crate::store::validate_username(name).is_ok() {
        return name.to_owned();
    }
    let mut shown = String::with_capacity(name.len().min(64) + 2);
    shown.push('"');
    for c in name.chars().take(64) {
        if c.is_ascii_alphanumeric() || "@.+-_".contains(c) {
            shown.push(c);
        } else {
            shown.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        }
    }
    shown.push('"');
    shown
}

fn content_format(headers: &HeaderMap) -> Result<Format, LoginRejection> {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    match media.as_deref() {
        Some("application/x-www-form-urlencoded") => Ok(Format::Form),
        Some("application/json") => Ok(Format::Json),
        _ => Err(LoginRejection::UnsupportedMediaType),
    }
}

pub(crate) async fn read_body(
    req: Request<Incoming>,
    max: u64,
    deadline: Duration,
) -> Result<Bytes, LoginRejection> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max) {
        return Err(LoginRejection::TooLarge);
    }
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    let body = Limited::new(req.into_body(), limit);
    match tokio::time::timeout(deadline, body.collect()).await {
        Err(_) => Err(LoginRejection::BodyTimeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(LoginRejection::TooLarge),
        Ok(Err(_)) => Err(LoginRejection::Malformed(
            "The request body could not be read.",
        )),
    }
}

/// Parses a login body; public for the fuzz target.
pub fn parse(format: Format, body: &[u8]) -> Result<LoginForm, LoginRejection> {
    let (username, password) = match format {
        Format::Form => parse_form(body)?,
        Format::Json => parse_json(body)?,
    };
    let mut errors = serde_json::Map::new();
    for (field, value) in [("username", &username), ("password", &password)] {
        match value {
            None => {
                errors.insert(field.into(), serde_json::json!(["This field is required."]));
            }
            Some(v) if v.is_empty() => {
                errors.insert(
                    field.into(),
                    serde_json::json!(["This field may not be blank."]),
                );
            }
            Some(_) => {}
        }
    }
    match (username, password) {
        (Some(username), Some(password)) if errors.is_empty() => Ok(LoginForm {
            username,
            password: Password::new(password),
        }),
        _ => Err(LoginRejection::Fields(errors.into())),
    }
}

type Fields = (Option<String>, Option<String>);

fn parse_form(body: &[u8]) -> Result<Fields, LoginRejection> {
    let mut username = None;
    let mut password = None;
    for pair in body.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
        let (key, value) = match pair.iter().position(|b| *b == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &b""[..]),
        };
        let slot = match decode_form(key)?.as_str() {
            "username" => &mut username,
            "password" => &mut password,
            _ => continue,
        };
        if slot.replace(decode_form(value)?).is_some() {
            return Err(LoginRejection::Malformed("A field appears more than once."));
        }
    }
    Ok((username, password))
}

pub(crate) fn decode_form(raw: &[u8]) -> Result<String, LoginRejection> {
    let spaced: Vec<u8> = raw
        .iter()
        .map(|b| if *b == b'+' { b' ' } else { *b })
        .collect();
    percent_decode(&spaced)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| LoginRejection::Malformed("The form body is not valid UTF-8."))
}

fn parse_json(body: &[u8]) -> Result<Fields, LoginRejection> {
    let Ok(Entries(entries)) = serde_json::from_slice::<Entries>(body) else {
        return Err(LoginRejection::Malformed(
            "The JSON body must be an object, e.g. {\"username\": \"…\", \"password\": \"…\"}.",
        ));
    };
    let field = |name: &str| -> Result<Option<String>, LoginRejection> {
        let mut values = entries.iter().filter(|(k, _)| k == name).map(|(_, v)| v);
        let value = values.next();
        // A field sent twice could be read either way; refuse like the form does.
        if values.next().is_some() {
            return Err(LoginRejection::Malformed("A field appears more than once."));
        }
        match value {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(LoginRejection::Fields(
                serde_json::json!({ name: ["Not a valid string."] }),
            )),
        }
    };
    Ok((field("username")?, field("password")?))
}

/// A JSON object's members in order, duplicates kept (a `Map` would keep
/// only the last, hiding an ambiguous body).
struct Entries(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, serde_json::Value>()? {
                    out.push(entry);
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(Visitor)
    }
}

impl Login<'_> {
    /// Replaces an imported Django hash with the gateway's own argon2id,
    /// now that the password is known to be right. A failure is logged and
    /// the login goes on: the old hash still verifies.
    async fn rehash(&self, user: &User, password: &Password, username: &str) {
        let new = match self.hasher.hash(password).await {
            Ok(new) => new,
            Err(e) => {
                tracing::warn!(user = %username, error = %e, "rehashing an imported password failed");
                return;
            }
        };
        let store = self.store.clone();
        let (name, old) = (user.username.clone(), user.password_hash.clone());
        match tokio::task::spawn_blocking(move || store.rehash_password(&name, &old, new)).await {
            Ok(Ok(true)) => {
                tracing::info!(user = %username, "imported password rehashed with argon2id")
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                tracing::warn!(user = %username, error = %e, "storing a rehashed password failed")
            }
            Err(e) => tracing::warn!(user = %username, error = %e, "rehash task failed"),
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn names_no_user_can_have_are_escaped_in_logs() {
        assert_eq!(loggable("alice.b+c@example.com"), "alice.b+c@example.com");
        let forged = "x\n2026-11-27T00:00:00Z  INFO login failed client=6.6.6.6 user=y";
        let shown = loggable(forged);
        assert!(!shown.contains(['\n', ' ', '\r']), "{shown}");
        assert!(shown.starts_with("\"x\\u{a}2026"), "{shown}");
        assert_eq!(loggable(&"é".repeat(500)).chars().count(), 2 + 64 * 6);
    }

    use super::*;

    fn ok(format: Format, body: &str) -> (String, String) {
        let f = parse(format, body.as_bytes()).unwrap();
        (f.username, f.password.expose().to_owned())
    }

    #[test]
    fn form_bodies() {
        assert_eq!(
            ok(Format::Form, "username=alice&password=p%40ss+word"),
            ("alice".into(), "p@ss word".into())
        );
        assert_eq!(
            ok(Format::Form, "password=x&other=1&username=bob"),
            ("bob".into(), "x".into())
        );
    }

    #[test]
    fn json_bodies() {
        assert_eq!(
            ok(
                Format::Json,
                r#"{"username":"alice","password":"pw","extra":1}"#
            ),
            ("alice".into(), "pw".into())
        );
    }

    #[test]
    fn missing_blank_and_mistyped_fields_are_field_errors() {
        let err = parse(Format::Json, br#"{"username":"a"}"#).unwrap_err();
        let LoginRejection::Fields(v) = err else {
            panic!()
        };
        assert_eq!(
            v,
            serde_json::json!({"password": ["This field is required."]})
        );
        let err = parse(Format::Form, b"username=&password=").unwrap_err();
        let LoginRejection::Fields(v) = err else {
            panic!()
        };
        assert_eq!(v["username"][0], "This field may not be blank.");
        assert_eq!(v["password"][0], "This field may not be blank.");
        assert!(matches!(
            parse(Format::Json, br#"{"username":1,"password":"x"}"#),
            Err(LoginRejection::Fields(_))
        ));
    }

    #[test]
    fn malformed_bodies() {
        for (format, body) in [
            (Format::Json, &b"{"[..]),
            (Format::Json, b"[1,2]"),
            (Format::Json, b"\xff\xfe"),
            (Format::Form, b"username=%ff&password=x"),
            (Format::Form, b"username=a&username=b&password=x"),
            (
                Format::Json,
                br#"{"username":"a","username":"b","password":"x"}"#,
            ),
            (
                Format::Json,
                br#"{"username":"a","password":"x","password":"y"}"#,
            ),
        ] {
            assert!(
                matches!(parse(format, body), Err(LoginRejection::Malformed(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn content_types() {
        let mut h = HeaderMap::new();
        assert!(content_format(&h).is_err());
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Application/JSON; charset=utf-8"),
        );
        assert_eq!(content_format(&h).unwrap(), Format::Json);
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(content_format(&h).is_err());
    }
}

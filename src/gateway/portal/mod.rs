//! The token page (`[portal]`): people sign in with their password, see
//! their tokens, create and revoke them and change their password;
//! administrators also manage every user. Served by the gateway itself,
//! never forwarded. Signing in is `/login`'s own check (`Login::
//! authenticate`): the same throttle, answers and timing.
//!
//! Every POST must come from the page (`session::same_origin`) and, once
//! signed in, carry the session's CSRF value; a refused request changes
//! nothing. Every answer carries the headers in `secure_headers`.

pub mod form;
pub mod page;
pub mod session;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::auth::password::Password;
use crate::config::{AuthConfig, PortalConfig};
use crate::gateway::login::{self, Login, LoginForm};
use crate::gateway::response::{Body, LoginRejection, Rejection};
use crate::observe::metrics::Metrics;
use crate::request::scope::Scope;
use crate::store::token::{Token, TokenDigest};
use crate::store::{Store, StoreError, TokenInfo};
use form::{Form, FormError};

const CSS: &str = include_str!("assets/style.css");
const JS: &str = include_str!("assets/copy.js");

/// No inline script or style, nothing from elsewhere, no framing.
const CSP: &str = "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The page, for one request.
pub struct Portal<'a> {
    pub config: &'a PortalConfig,
    pub auth: &'a AuthConfig,
    pub store: &'a Store,
    pub login: Login<'a>,
    /// Sign-ins here count in `tokengate_logins_total` as `/login`'s do.
    pub metrics: &'a Metrics,
    /// The client reached the gateway over TLS (directly or through a
    /// trusted proxy): cookies are `Secure`.
    pub secure: bool,
}

/// A signed-in request's session.
struct Session {
    secret: String,
    digest: TokenDigest,
    user: String,
    roles: Vec<String>,
}

/// What a handler answers: a page or a redirect, with its status.
enum Answer {
    Page(StatusCode, String),
    /// 303 to the page, with a notice key, and maybe a new cookie.
    Back(&'static str, Option<HeaderValue>),
    Asset(&'static str, &'static str),
    MethodNotAllowed(&'static str),
    Limited(StatusCode, String, Option<Duration>),
}

impl Portal<'_> {
    /// Answers a request for the page's `path` (canonical, the page's own
    /// or below it); the user it acted for, for the access log.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        path: &str,
    ) -> (Response<Body>, Option<String>) {
        let rest = path.strip_prefix(self.config.path.as_str()).unwrap_or("");
        let method = req.method().clone();
        let mut user = None;
        let answer = match (rest, &method) {
            ("" | "/", &Method::GET | &Method::HEAD) => {
                let notice = req.uri().query().and_then(notice_for);
                match self.session(req.headers()).await {
                    Some(s) => {
                        user = Some(s.user.clone());
                        self.dashboard(&s, StatusCode::OK, notice, None, None).await
                    }
                    None => Answer::Page(
                        StatusCode::OK,
                        page::sign_in(&self.config.path, None, notice),
                    ),
                }
            }
            ("" | "/", _) => Answer::MethodNotAllowed("GET"),
            ("/style.css", &Method::GET | &Method::HEAD) => {
                Answer::Asset("text/css; charset=utf-8", CSS)
            }
            ("/copy.js", &Method::GET | &Method::HEAD) => {
                Answer::Asset("text/javascript; charset=utf-8", JS)
            }
            ("/style.css" | "/copy.js", _) => Answer::MethodNotAllowed("GET"),
            (action, &Method::POST) if ACTIONS.contains(&action) => {
                self.post(req, action, &mut user).await
            }
            (action, _) if ACTIONS.contains(&action) => Answer::MethodNotAllowed("POST"),
            _ => self.message(StatusCode::NOT_FOUND, "Not found", "There is no such page."),
        };
        (self.respond(answer), user)
    }

    async fn post(
        &self,
        req: Request<Incoming>,
        action: &str,
        user: &mut Option<String>,
    ) -> Answer {
        if !session::same_origin(req.headers(), if self.secure { "https" } else { "http" }) {
            return self.forbidden("The form was sent from another site; nothing was changed.");
        }
        if action == "/sign-in" {
            return match self.read(req).await {
                Ok(form) => self.sign_in(&form, user).await,
                Err(answer) => answer,
            };
        }
        let Some(s) = self.session(req.headers()).await else {
            return self.forbidden("Your session has ended; sign in again. Nothing was changed.");
        };
        *user = Some(s.user.clone());
        let form = match self.read(req).await {
            Ok(form) => form,
            Err(answer) => return answer,
        };
        if !session::same(form.get("csrf"), &session::csrf(&s.secret)) {
            return self
                .forbidden("The form is out of date; reload the page. Nothing was changed.");
        }
        match action {
            "/sign-out" => self.sign_out(&s).await,
            "/tokens" => self.create(&s, &form).await,
            "/tokens/revoke" => self.revoke(&s, form.get("id")).await,
            "/tokens/revoke-all" => self.revoke_all(&s).await,
            "/password" => self.change_password(&s, &form).await,
            admin => self.administer(&s, admin, form.get("user")).await,
        }
    }

    async fn read(&self, req: Request<Incoming>) -> Result<Form, Answer> {
        Form::read(req, self.auth.max_login_body, self.auth.login_body_timeout)
            .await
            .map_err(|e| match e {
                FormError::NotAForm => self.message(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "Not a form",
                    "Send the page's forms as application/x-www-form-urlencoded.",
                ),
                FormError::TooLarge => self.message(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "Too large",
                    "The form is larger than the gateway accepts.",
                ),
                FormError::Bad(why) => self.message(StatusCode::BAD_REQUEST, "Bad form", why),
            })
    }

    /// The live session the request's cookie names, if any: a token of
    /// the page's own kind, not an API token.
    async fn session(&self, headers: &http::HeaderMap) -> Option<Session> {
        let secret = session::from_cookie(headers)?;
        let digest = Token::digest_of(&secret)?;
        let live = self.store.use_token_async(&digest).await.ok()??;
        session::is_session(&live.scopes).then_some(Session {
            secret,
            digest,
            user: live.identity.username,
            roles: live.identity.roles,
        })
    }

    async fn sign_in(&self, form: &Form, user: &mut Option<String>) -> Answer {
        let login = LoginForm {
            username: form.get("username").to_owned(),
            password: Password::new(form.get("password").to_owned()),
        };
        let started = Instant::now();
        let signed = match self.login.authenticate(&login).await {
            Ok((found, name)) => {
                *user = Some(name.clone());
                self.login
                    .issue(
                        found,
                        &name,
                        Some(self.config.session_ttl),
                        Some(session::LABEL.into()),
                        &[session::scope()],
                    )
                    .await
            }
            Err(e) => Err(e),
        };
        login::count(self.metrics, started, &signed);
        match signed {
            Ok((token, _)) => {
                // `user` is the name as `authenticate` made it safe to log.
                let name = user.as_deref().unwrap_or_default();
                tracing::info!(client = %self.login.client, user = %name, "token page: signed in");
                Answer::Back("", Some(self.cookie(Some(token.expose()))))
            }
            Err(rejection) => self.refused_sign_in(rejection),
        }
    }

    /// A failed sign-in as `/login` would answer it (401, 429 with
    /// Retry-After, 503), on the sign-in page.
    fn refused_sign_in(&self, rejection: Rejection) -> Answer {
        let (status, text, retry) = match rejection {
            Rejection::Login(LoginRejection::Limited(wait)) => (
                StatusCode::TOO_MANY_REQUESTS,
                "Too many failed attempts; wait a moment, then try again.",
                Some(wait),
            ),
            Rejection::Login(LoginRejection::BadCredentials) => (
                StatusCode::UNAUTHORIZED,
                "Wrong username or password.",
                None,
            ),
            Rejection::StoreUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "The gateway cannot reach its store; try again shortly.",
                None,
            ),
            _ => (
                StatusCode::BAD_REQUEST,
                "Enter your username and password.",
                None,
            ),
        };
        Answer::Limited(
            status,
            page::sign_in(&self.config.path, Some(text), None),
            retry,
        )
    }

    async fn sign_out(&self, s: &Session) -> Answer {
        let (store, digest) = (self.store.clone(), s.digest);
        match tokio::task::spawn_blocking(move || store.revoke(&digest)).await {
            Ok(Ok(_)) => Answer::Back("signed-out", Some(self.cookie(None))),
            _ => self.unavailable(),
        }
    }

    /// The user's API tokens, sessions left out.
    async fn api_tokens(&self, user: &str) -> Result<Vec<TokenInfo>, StoreError> {
        let (store, user) = (self.store.clone(), user.to_owned());
        let tokens = tokio::task::spawn_blocking(move || store.tokens(Some(&user)))
            .await
            .map_err(|_| StoreError::Stopped)??;
        Ok(tokens
            .into_iter()
            .filter(|t| !session::listed_as_session(t))
            .collect())
    }

    async fn create(&self, s: &Session, form: &Form) -> Answer {
        let label = form.get("label").trim();
        if label.is_empty() {
            return self
                .dashboard(
                    s,
                    StatusCode::BAD_REQUEST,
                    None,
                    Some("Give the token a label."),
                    None,
                )
                .await;
        }
        let ttl = match self.lifetime(form.get("ttl").trim()) {
            Ok(ttl) => ttl,
            Err(why) => {
                return self
                    .dashboard(s, StatusCode::BAD_REQUEST, None, Some(&why), None)
                    .await;
            }
        };
        let texts: Vec<&str> = form
            .get("scopes")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let scopes = match Scope::parse_all(&texts) {
            Ok(scopes) => scopes,
            Err(why) => {
                return self
                    .dashboard(s, StatusCode::BAD_REQUEST, None, Some(&why), None)
                    .await;
            }
        };
        let Ok(Some(user)) = self.store.user_async(&s.user).await else {
            return self.unavailable();
        };
        let (store, label_owned) = (self.store.clone(), label.to_owned());
        let issued = tokio::task::spawn_blocking(move || {
            store.issue_token(&user, ttl, Some(label_owned), &scopes)
        })
        .await;
        match issued {
            Ok(Ok((token, _))) => {
                tracing::info!(user = %s.user, "token page: token created");
                self.dashboard(
                    s,
                    StatusCode::OK,
                    Some("Token created."),
                    None,
                    Some((label, token.expose())),
                )
                .await
            }
            Ok(Err(StoreError::InvalidLabel)) => {
                self.dashboard(
                    s,
                    StatusCode::BAD_REQUEST,
                    None,
                    Some("A label is at most 200 characters, without control characters."),
                    None,
                )
                .await
            }
            _ => self.unavailable(),
        }
    }

    /// A new token's lifetime: empty is `auth.token_ttl`; none may be
    /// longer.
    fn lifetime(&self, text: &str) -> Result<Option<Duration>, String> {
        let max = self.auth.token_ttl;
        if text.is_empty() {
            return Ok(max);
        }
        let ttl = crate::config::units::parse_duration(text)
            .map_err(|_| format!("`{text}` is not a lifetime; write it as 12h, 7d or 30m."))?;
        if ttl.is_zero() {
            return Err("A lifetime must be longer than zero.".into());
        }
        match max {
            Some(max) if ttl > max => Err(format!(
                "A token lives at most {}.",
                crate::config::units::format_duration(max)
            )),
            _ => Ok(Some(ttl)),
        }
    }

    async fn revoke(&self, s: &Session, id: &str) -> Answer {
        let tokens = match self.api_tokens(&s.user).await {
            Ok(tokens) => tokens,
            Err(_) => return self.unavailable(),
        };
        if !tokens.iter().any(|t| t.id == id) {
            return self.message(
                StatusCode::NOT_FOUND,
                "No such token",
                "You have no token with that ID; nothing was changed.",
            );
        }
        let (store, id) = (self.store.clone(), id.to_owned());
        match tokio::task::spawn_blocking(move || store.revoke_id(&id)).await {
            Ok(Ok(())) => {
                tracing::info!(user = %s.user, "token page: token revoked");
                Answer::Back("revoked", None)
            }
            Ok(Err(StoreError::UnknownToken(_))) => Answer::Back("revoked", None),
            _ => self.unavailable(),
        }
    }

    /// Every API token of the user, one by one: their sessions live on.
    async fn revoke_all(&self, s: &Session) -> Answer {
        let tokens = match self.api_tokens(&s.user).await {
            Ok(tokens) => tokens,
            Err(_) => return self.unavailable(),
        };
        let store = self.store.clone();
        let ids: Vec<String> = tokens.into_iter().map(|t| t.id).collect();
        let done = tokio::task::spawn_blocking(move || {
            ids.iter().try_for_each(|id| match store.revoke_id(id) {
                Ok(()) | Err(StoreError::UnknownToken(_)) => Ok(()),
                Err(e) => Err(e),
            })
        })
        .await;
        match done {
            Ok(Ok(())) => {
                tracing::info!(user = %s.user, "token page: all tokens revoked");
                Answer::Back("revoked-all", None)
            }
            _ => self.unavailable(),
        }
    }

    /// As `tokengate user passwd`: every token and session of the user
    /// ends; this browser gets a new session.
    async fn change_password(&self, s: &Session, form: &Form) -> Answer {
        let new = Password::new(form.get("new").to_owned());
        let error = if form.get("new") != form.get("confirm") {
            Some("The two new passwords differ.".to_owned())
        } else {
            new.validate_new().err().map(|e| e.to_string())
        };
        if let Some(error) = error {
            return self
                .dashboard(s, StatusCode::BAD_REQUEST, None, Some(&error), None)
                .await;
        }
        // The current password, checked as a sign-in is: a stolen session
        // cannot guess it faster than a login could.
        let check = LoginForm {
            username: s.user.clone(),
            password: Password::new(form.get("old").to_owned()),
        };
        if let Err(rejection) = self.login.authenticate(&check).await {
            let (status, text) = match rejection {
                Rejection::Login(LoginRejection::Limited(_)) => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too many failed attempts; wait a moment.",
                ),
                Rejection::StoreUnavailable => return self.unavailable(),
                _ => (
                    StatusCode::FORBIDDEN,
                    "The current password is wrong; nothing was changed.",
                ),
            };
            return self.dashboard(s, status, None, Some(text), None).await;
        }
        let Ok(hash) = self.login.hasher.hash(&new).await else {
            return self.unavailable();
        };
        let (store, name) = (self.store.clone(), s.user.clone());
        let changed = tokio::task::spawn_blocking(move || {
            store.set_password(&name, hash)?;
            store.user(&name)
        })
        .await;
        let Ok(Ok(Some(user))) = changed else {
            return self.unavailable();
        };
        tracing::info!(user = %s.user, "token page: password changed; every token and session ended");
        match self
            .login
            .issue(
                user,
                &s.user,
                Some(self.config.session_ttl),
                Some(session::LABEL.into()),
                &[session::scope()],
            )
            .await
        {
            Ok((token, _)) => Answer::Back("password", Some(self.cookie(Some(token.expose())))),
            // Changed, but no new session: sign in again.
            Err(_) => Answer::Back("password", Some(self.cookie(None))),
        }
    }

    async fn administer(&self, s: &Session, action: &str, name: &str) -> Answer {
        if !s.roles.contains(&self.config.admin_role) {
            return self.forbidden("Only administrators manage other users; nothing was changed.");
        }
        let Ok(found) = self.store.user_async(name).await else {
            return self.unavailable();
        };
        if found.is_none() {
            return self.message(
                StatusCode::NOT_FOUND,
                "No such user",
                "There is no user by that name; nothing was changed.",
            );
        }
        let (store, target) = (self.store.clone(), name.to_owned());
        let action_owned = action.to_owned();
        let done = tokio::task::spawn_blocking(move || match action_owned.as_str() {
            "/users/disable" => store.set_disabled(&target, true),
            "/users/enable" => store.set_disabled(&target, false),
            _ => store.revoke_user_tokens(&target).map(drop),
        })
        .await;
        match done {
            Ok(Ok(())) => {
                tracing::info!(admin = %s.user, user = %name, action = %action, "token page: user changed");
                Answer::Back(
                    match action {
                        "/users/disable" => "disabled",
                        "/users/enable" => "enabled",
                        _ => "user-revoked",
                    },
                    None,
                )
            }
            _ => self.unavailable(),
        }
    }

    async fn dashboard(
        &self,
        s: &Session,
        status: StatusCode,
        notice: Option<&str>,
        error: Option<&str>,
        created: Option<(&str, &str)>,
    ) -> Answer {
        let Ok(tokens) = self.api_tokens(&s.user).await else {
            return self.unavailable();
        };
        let admin = s.roles.contains(&self.config.admin_role);
        let users = if admin {
            let store = self.store.clone();
            match tokio::task::spawn_blocking(move || store.users()).await {
                Ok(Ok(users)) => Some(users),
                _ => return self.unavailable(),
            }
        } else {
            None
        };
        let csrf = session::csrf(&s.secret);
        let max_ttl = self
            .auth
            .token_ttl
            .map(crate::config::units::format_duration);
        let html = page::dashboard(&page::Dashboard {
            base: &self.config.path,
            user: &s.user,
            csrf: &csrf,
            tokens: &tokens,
            users: users.as_deref(),
            notice,
            error,
            created,
            max_ttl: max_ttl.as_deref(),
        });
        Answer::Page(status, html)
    }

    fn cookie(&self, secret: Option<&str>) -> HeaderValue {
        session::set_cookie(
            &self.config.path,
            secret,
            self.config.session_ttl.as_secs(),
            self.secure,
        )
    }

    fn message(&self, status: StatusCode, title: &str, text: &str) -> Answer {
        Answer::Page(status, page::message(&self.config.path, title, text))
    }

    fn forbidden(&self, text: &str) -> Answer {
        self.message(StatusCode::FORBIDDEN, "Refused", text)
    }

    fn unavailable(&self) -> Answer {
        self.message(
            StatusCode::SERVICE_UNAVAILABLE,
            "Unavailable",
            "The gateway cannot reach its store; nothing may have changed. Try again shortly.",
        )
    }

    fn respond(&self, answer: Answer) -> Response<Body> {
        let html = HeaderValue::from_static("text/html; charset=utf-8");
        let mut extra = Vec::new();
        let (status, content_type, body) = match answer {
            Answer::Page(status, text) => (status, html, Bytes::from(text)),
            Answer::Limited(status, text, retry) => {
                if let Some(wait) = retry {
                    extra.push((
                        header::RETRY_AFTER,
                        HeaderValue::from(wait.as_secs().max(1)),
                    ));
                }
                (status, html, Bytes::from(text))
            }
            Answer::Asset(kind, text) => (
                StatusCode::OK,
                HeaderValue::from_static(kind),
                Bytes::from_static(text.as_bytes()),
            ),
            Answer::MethodNotAllowed(allow) => {
                extra.push((header::ALLOW, HeaderValue::from_static(allow)));
                let text = page::message(
                    &self.config.path,
                    "Not allowed",
                    "This page does not take that method.",
                );
                (StatusCode::METHOD_NOT_ALLOWED, html, Bytes::from(text))
            }
            Answer::Back(done, cookie) => {
                let to = match done {
                    "" => format!("{}/", self.config.path),
                    done => format!("{}/?done={done}", self.config.path),
                };
                // The path is a canonical one from the config: ASCII.
                if let Ok(location) = HeaderValue::from_str(&to) {
                    extra.push((header::LOCATION, location));
                }
                if let Some(cookie) = cookie {
                    extra.push((header::SET_COOKIE, cookie));
                }
                (StatusCode::SEE_OTHER, html, Bytes::new())
            }
        };
        let mut response = Response::new(Either::Left(Full::new(body)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, content_type);
        secure_headers(headers);
        for (name, value) in extra {
            headers.insert(name, value);
        }
        response
    }
}

/// The paths that take a POST.
const ACTIONS: &[&str] = &[
    "/sign-in",
    "/sign-out",
    "/tokens",
    "/tokens/revoke",
    "/tokens/revoke-all",
    "/password",
    "/users/disable",
    "/users/enable",
    "/users/revoke",
];

/// The fixed notice a redirect's `?done=` names: never text from the URL.
fn notice_for(query: &str) -> Option<&'static str> {
    let done = query.split('&').find_map(|p| p.strip_prefix("done="))?;
    Some(match done {
        "revoked" => "Token revoked.",
        "revoked-all" => "All your tokens were revoked.",
        "password" => "Password changed. Every other session and all your tokens have ended.",
        "signed-out" => "Signed out.",
        "disabled" => "User disabled; their tokens have ended.",
        "enabled" => "User enabled.",
        "user-revoked" => "All of that user's tokens were revoked.",
        _ => return None,
    })
}

/// Headers every answer of the page carries.
pub fn secure_headers(headers: &mut http::HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

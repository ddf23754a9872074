//! The request pipeline, in the order every request goes through it:
//! target check ([`target`]) → login/logout ([`login`]) → authenticate
//! ([`crate::auth`]) → authorize ([`policy`]) → forward ([`forward`],
//! [`tunnel`]) → log. Each phase returns a typed outcome;
//! `Rejection::into_response` ([`response`]) is the only place a failure
//! becomes an HTTP answer.

pub mod forward;
mod forward_auth;
pub mod login;
pub mod policy;
pub mod portal;
pub mod request_id;
pub mod response;
pub mod target;
pub mod tunnel;

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::header::HeaderValue;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::auth::cache::{TokenCache, Verified};
use crate::auth::password::Hasher;
use crate::auth::throttle::Throttle;
use crate::auth::{self, Credential, Unauthenticated};
use crate::config::Config;
use crate::gateway::login::Login;
use crate::observe::accesslog::{self, Logged, Outcome, Pending};
use crate::observe::metrics::{AuthOutcome, Metrics};
use crate::request::headers;
use crate::store::Store;
use crate::upstream::pool::Returning;
use crate::upstream::{Failure, Upstream};
use arc_swap::ArcSwap;
use futures_util::FutureExt;
use response::{Body, Rejection};
use tokio_rustls::TlsAcceptor;

/// Everything a request needs. The config-derived part is swapped whole on
/// reload; a request keeps the `Settings` it started with.
pub struct Gateway {
    settings: ArcSwap<Settings>,
    store: Store,
    metrics: Arc<Metrics>,
    /// Survives reloads, so a SIGHUP does not lift bans.
    throttle: Arc<Throttle>,
    /// Checks of live tokens, trusted until the store next changes.
    tokens: TokenCache,
    /// The config at start: what keys that need a restart still run with.
    started: Arc<Config>,
}

/// What one config produces: replaced at once by a reload.
pub struct Settings {
    pub config: Arc<Config>,
    hasher: Hasher,
    upstream: Arc<Upstream>,
    /// `Some` when the gateway terminates TLS.
    pub tls: Option<TlsAcceptor>,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Password(#[from] crate::auth::password::PasswordError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Upstream(#[from] crate::upstream::UpstreamError),
}

impl Settings {
    /// Async for the dummy password hash, computed on the hashing threads.
    pub async fn new(config: Arc<Config>) -> Result<Self, SettingsError> {
        Ok(Self {
            hasher: Hasher::start(config.auth.argon2).await?,
            upstream: Arc::new(Upstream::new(&config.upstream)?),
            tls: config
                .server
                .tls
                .as_ref()
                .map(crate::tls::acceptor)
                .transpose()?,
            config,
        })
    }
}

/// What the server knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub proto: &'static str,
    /// `addr`'s IP as a header value for `X-Forwarded-For`, formatted once
    /// per connection rather than on every request.
    pub ip: HeaderValue,
    /// The same text for the access log: an `Arc<str>` is 16 bytes to a
    /// `HeaderValue`'s 40 in the slot every HTTP/1 connection keeps for
    /// its response (`response::tests::the_logged_body_stays_small`).
    pub ip_text: Arc<str>,
}

impl Peer {
    pub fn new(addr: SocketAddr, proto: &'static str) -> Self {
        let ip = headers::ip_value(addr.ip());
        let ip_text = Arc::from(ip.to_str().unwrap_or_default());
        Self {
            addr,
            proto,
            ip,
            ip_text,
        }
    }
}

impl Gateway {
    pub async fn new(
        config: Arc<Config>,
        store: Store,
        metrics: Arc<Metrics>,
    ) -> Result<Self, SettingsError> {
        let throttle = Arc::new(Throttle::new(config.throttle));
        // sled's unbans come through the control socket instead.
        if !store.is_embedded() {
            tokio::spawn(lift_unbanned(store.unbans(), Arc::clone(&throttle)));
        }
        Ok(Self {
            throttle,
            started: config.clone(),
            settings: ArcSwap::from_pointee(Settings::new(config).await?),
            store,
            metrics,
            tokens: TokenCache::new(),
        })
    }

    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// Replaces the config-derived settings at once. On error nothing changes.
    /// Requests go on under the old settings while the new are built.
    pub async fn reload(&self, config: Config) -> Result<(), SettingsError> {
        // Compared with what runs: the config the process started with,
        // not the last file read, whose restart-only keys never applied.
        let old = &self.started;
        for (what, changed) in [
            ("server.listen", old.server.listen != config.server.listen),
            (
                "store",
                old.store.path != config.store.path
                    || old.store.describe() != config.store.describe(),
            ),
            (
                "server.max_connections",
                old.server.max_connections != config.server.max_connections,
            ),
            (
                "admin.listen",
                old.admin.as_ref().map(|a| a.listen) != config.admin.as_ref().map(|a| a.listen),
            ),
            (
                "log",
                old.log.format != config.log.format || old.log.level != config.log.level,
            ),
        ] {
            if changed {
                tracing::warn!(
                    key = what,
                    "this setting changed but only takes effect after a restart"
                );
            }
        }
        let settings = Settings::new(Arc::new(config)).await?;
        self.throttle.set_config(settings.config.throttle);
        self.settings.store(Arc::new(settings));
        Ok(())
    }

    /// The login throttle, whose bans the control socket lists and lifts.
    pub fn throttle(&self) -> Arc<Throttle> {
        self.throttle.clone()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Answers one request; its access line is written once the response
    /// body has ended (or the client has gone). Everything up to the
    /// upstream call runs here, at once: a request the gateway refuses
    /// costs no future, and one it forwards carries only the state of the
    /// exchange.
    pub fn handle(self: &Arc<Self>, req: Request<Incoming>, peer: &Peer) -> Answer {
        if let Some(digest) = self.unheard_token(&req) {
            // A shared store answers over the network: ask it first, off
            // this thread, then run the checks, which find the answer cached.
            let gateway = Arc::clone(self);
            let peer = peer.clone();
            return Answer::Waiting(Box::pin(async move {
                gateway.tokens.fetch(&gateway.store, &digest).await;
                match gateway.answer(req, &peer).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            }));
        }
        self.answer(req, peer)
    }

    /// The token of a request whose check would wait on a shared store:
    /// one the cache does not hold. Never for sled, which answers at once.
    fn unheard_token(&self, req: &Request<Incoming>) -> Option<crate::store::token::TokenDigest> {
        if self.store.is_embedded() {
            return None;
        }
        let settings = self.settings.load();
        match auth::credential(req.headers(), &settings.config.auth.schemes) {
            Credential::Token(digest) if !self.tokens.holds(&self.store, &digest) => Some(digest),
            _ => None,
        }
    }

    fn answer(self: &Arc<Self>, mut req: Request<Incoming>, peer: &Peer) -> Answer {
        let mut pending = Pending::new(req.method().clone(), peer.ip_text.clone());
        let settings = self.settings.load_full();
        let server = &settings.config.server;
        let offered = forward::from_trusted_proxy(server, peer)
            .then(|| req.headers().get(&server.request_id_header))
            .flatten();
        pending.outcome().request_id = Some(request_id::for_request(offered));
        match self.admit(&settings, &mut req, peer, pending.outcome()) {
            Err(rejection) => {
                // hyper parses the connection's next request into the
                // response's header map: handing it the request's, with
                // its room, saves growing a new one on both sides.
                let response = rejection.into_response_with(std::mem::take(req.headers_mut()));
                Answer::Ready(Some(self.respond(&settings, pending, response)))
            }
            Ok(Admitted::Answered(response)) => {
                Answer::Ready(Some(self.respond(&settings, pending, response)))
            }
            Ok(Admitted::Forward(upgrade)) => {
                // hyper drops this future when the client leaves before the head.
                let unanswered = Unanswered(Some(Arc::clone(&self.metrics)));
                let gateway = Arc::clone(self);
                let started = Instant::now();
                // A closure over the exchange, not an async block: that
                // would keep its captures, the request among them, beside
                // the exchange's own copy, and the box would be twice the size.
                let exchange = settings.upstream.send(req).map(move |response| {
                    gateway.forwarded(&settings, response, started, upgrade, pending, unanswered)
                });
                Answer::Waiting(Box::pin(exchange))
            }
            Ok(Admitted::Local(local)) => {
                let gateway = Arc::clone(self);
                Answer::Waiting(Box::pin(async move {
                    let unanswered = Unanswered(Some(Arc::clone(&gateway.metrics)));
                    let response = gateway
                        .local(&settings, req, local, pending.outcome())
                        .await
                        .unwrap_or_else(Rejection::into_response);
                    unanswered.answered();
                    gateway.respond(&settings, pending, response)
                }))
            }
        }
    }

    /// The upstream's answer to a forwarded request, on its way back.
    fn forwarded(
        &self,
        s: &Settings,
        response: Result<Response<Returning>, Failure>,
        started: Instant,
        upgrade: Option<Upgrade>,
        mut pending: Pending,
        unanswered: Unanswered,
    ) -> Response<Logged<Body>> {
        let elapsed = started.elapsed();
        self.metrics.upstream_latency.observe(elapsed);
        pending.outcome().upstream_us = Some(accesslog::micros(elapsed));
        let response = match response {
            Ok(response) => forward::response(response, upgrade, &self.store),
            Err(failure) => Rejection::from(failure).into_response(),
        };
        unanswered.answered();
        self.respond(s, pending, response)
    }

    /// Every answer leaves here: counted, carrying the request's ID, and
    /// handed to the access log.
    fn respond(
        &self,
        s: &Settings,
        mut pending: Pending,
        mut response: Response<Body>,
    ) -> Response<Logged<Body>> {
        self.metrics.response(response.status().as_u16());
        if let Some(id) = &pending.outcome().request_id {
            response
                .headers_mut()
                .insert(s.config.server.request_id_header.clone(), id.clone());
        }
        pending.respond(response)
    }

    /// The checks that need no waiting: target, authentication,
    /// authorization, and the request rewritten for the upstream.
    fn admit(
        &self,
        s: &Settings,
        req: &mut Request<Incoming>,
        peer: &Peer,
        outcome: &mut Outcome,
    ) -> Result<Admitted, Rejection> {
        let path: &str = outcome.path.insert(target::canonical_path(
            req,
            s.config.server.max_path_length,
        )?);
        let auth = &s.config.auth;
        if let Some(portal) = &s.config.portal
            && portal.owns(path)
        {
            let client = forward::client_ip(peer, req.headers(), &s.config.server.trusted_proxies);
            let secure = peer.proto == "https"
                || (forward::from_trusted_proxy(&s.config.server, peer)
                    && req
                        .headers()
                        .get("x-forwarded-proto")
                        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https")));
            return Ok(Admitted::Local(Local::Portal { client, secure }));
        }
        if path == auth.login_path {
            let client = forward::client_ip(peer, req.headers(), &s.config.server.trusted_proxies);
            return Ok(Admitted::Local(Local::Login(client)));
        }
        if path == auth.logout_path {
            return Ok(Admitted::Local(Local::Logout));
        }
        if auth.forward_auth_path.as_deref() == Some(path) {
            return self
                .forward_auth(s, req, peer, outcome)
                .map(Admitted::Answered);
        }
        // A tunnel is not a request: on a public path it still needs a
        // token unless `public_upgrades` says otherwise.
        let public = policy::is_public(&auth.public, path)
            && (auth.public_upgrades || tunnel::requested(req).is_none());
        let caller = if public {
            self.metrics.auth(AuthOutcome::Public);
            // Optional there: a valid token (in scope) names its caller to
            // the upstream; anything else is as if no token were sent.
            let caller =
                auth::authenticate(&self.store, &self.tokens, req.headers(), &auth.schemes)
                    .ok()
                    .filter(|v| policy::in_scope(v.scopes.as_deref(), req.method(), path));
            if let Some(verified) = &caller {
                outcome.user = Some(verified.username.clone());
            }
            caller
        } else {
            Some(self.authorize(
                s,
                req.headers(),
                req.method(),
                path,
                (&mut outcome.user, &mut outcome.reason),
            )?)
        };
        let upgrade = forward::request(
            s,
            req,
            path,
            caller.as_deref(),
            peer,
            outcome.request_id.as_ref(),
        )?
        .map(|(protocol, client)| (protocol, client, caller));
        Ok(Admitted::Forward(upgrade))
    }

    /// The caller of a request to `method path` that is not public: the
    /// token's, if it is live, the rules let its user in and its scopes
    /// cover the request. Forwarded requests and forward auth both decide
    /// here, so the two cannot drift apart.
    fn authorize(
        &self,
        s: &Settings,
        headers: &http::HeaderMap,
        method: &Method,
        path: &str,
        (user, reason): (&mut Option<Arc<str>>, &mut Option<accesslog::Reason>),
    ) -> Result<Arc<Verified>, Rejection> {
        let auth = &s.config.auth;
        let verified = auth::authenticate(&self.store, &self.tokens, headers, &auth.schemes)
            .inspect_err(|reason| {
                self.metrics.auth(match reason {
                    Unauthenticated::Missing => AuthOutcome::Missing,
                    _ => AuthOutcome::Invalid,
                })
            })?;
        *user = Some(verified.username.clone());
        policy::authorize(&s.config.rules, method, path, &verified.identity)
            .inspect_err(|_| self.metrics.auth(AuthOutcome::Forbidden))?;
        if !policy::in_scope(verified.scopes.as_deref(), method, path) {
            self.metrics.auth(AuthOutcome::Forbidden);
            *reason = Some(accesslog::Reason::Scope);
            return Err(Rejection::Forbidden);
        }
        self.metrics.auth(AuthOutcome::Ok);
        Ok(verified)
    }

    /// Login and logout: answered by the gateway, after waiting on the
    /// store and argon2.
    async fn local(
        &self,
        s: &Settings,
        req: Request<Incoming>,
        local: Local,
        outcome: &mut Outcome,
    ) -> Result<Response<Body>, Rejection> {
        match local {
            // Boxed: large (body reading, argon2).
            Local::Login(client) => Box::pin(self.login(s, req, client, outcome)).await,
            Local::Logout => self.logout(s, &req, outcome).await,
            Local::Portal { client, secure } => {
                Box::pin(self.portal(s, req, client, secure, outcome)).await
            }
        }
    }

    /// The sign-in check for `client`, as `/login` and the token page run it.
    fn login_for<'a>(&'a self, s: &'a Settings, client: IpAddr) -> Login<'a> {
        let auth = &s.config.auth;
        Login {
            store: &self.store,
            hasher: &s.hasher,
            throttle: &self.throttle,
            client,
            max_body: auth.max_login_body,
            body_timeout: auth.login_body_timeout,
            token_ttl: auth.token_ttl,
            limited_delay: s.config.throttle.limited_delay,
        }
    }

    async fn portal(
        &self,
        s: &Settings,
        req: Request<Incoming>,
        client: IpAddr,
        secure: bool,
        outcome: &mut Outcome,
    ) -> Result<Response<Body>, Rejection> {
        // Admitted under these very settings, so the page is configured.
        let Some(config) = &s.config.portal else {
            return Err(Rejection::BadRequest("no token page is configured"));
        };
        let portal = portal::Portal {
            config,
            auth: &s.config.auth,
            store: &self.store,
            login: self.login_for(s, client),
            metrics: &self.metrics,
            secure,
        };
        let path = outcome.path.clone().unwrap_or_default();
        let (response, user) = portal.handle(req, &path).await;
        outcome.user = user.map(Arc::from);
        Ok(response)
    }

    async fn login(
        &self,
        s: &Settings,
        req: Request<Incoming>,
        client: IpAddr,
        outcome: &mut Outcome,
    ) -> Result<Response<Body>, Rejection> {
        let login = self.login_for(s, client);
        let started = Instant::now();
        let result = login.handle(req).await;
        login::count(&self.metrics, started, &result);
        let (response, user) = result?;
        outcome.user = Some(Arc::from(user));
        Ok(response)
    }

    async fn logout(
        &self,
        s: &Settings,
        req: &Request<Incoming>,
        outcome: &mut Outcome,
    ) -> Result<Response<Body>, Rejection> {
        if req.method() != Method::POST {
            return Err(Rejection::MethodNotAllowed { allow: "POST" });
        }
        let digest = match auth::credential(req.headers(), &s.config.auth.schemes) {
            Credential::Missing => return Err(Rejection::NotProvided),
            Credential::Malformed => return Err(Rejection::InvalidToken),
            Credential::Token(digest) => digest,
        };
        let identity = auth::verify(&self.store, &self.tokens, &digest)?;
        outcome.user = Some(identity.username.clone());
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.revoke(&digest)).await {
            Ok(Ok(_)) => {
                tracing::info!(user = %identity.username, "logout");
                Ok(response::empty(StatusCode::NO_CONTENT))
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "revoking a token at logout failed");
                Err(Rejection::StoreUnavailable)
            }
            Err(e) => {
                tracing::error!(error = %e, "logout task failed");
                Err(Rejection::StoreUnavailable)
            }
        }
    }
}

/// Forgets this gateway's own failures of whoever `throttle unban` names
/// in a shared store, for as long as the store is open.
async fn lift_unbanned(
    mut unbans: tokio::sync::broadcast::Receiver<Arc<str>>,
    throttle: Arc<Throttle>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match unbans.recv().await {
            Ok(who) => {
                throttle.lift(&who);
            }
            // The missed ones run out on their own.
            Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    }
}

/// What [`Gateway::admit`] lets through, with what the rest needs.
#[allow(clippy::large_enum_variant)]
enum Admitted {
    /// Decided at once with an answer of the gateway's own (forward auth).
    Answered(Response<Body>),
    /// The request is rewritten for the upstream.
    Forward(Option<Upgrade>),
    Local(Local),
}

/// The paths the gateway answers itself.
enum Local {
    /// With the client's address, for the login throttle.
    Login(IpAddr),
    Logout,
    /// The token page; `secure`: the client came over TLS.
    Portal {
        client: IpAddr,
        secure: bool,
    },
}

/// The answer to one request, as hyper's service future: ready at once
/// when the gateway answers itself, else the exchange still to run.
// A ready response stays inline: boxing it would be the very allocation
// this type saves, and hyper keeps just one of these per connection.
#[allow(clippy::large_enum_variant)]
pub enum Answer {
    /// `None` once taken.
    Ready(Option<Response<Logged<Body>>>),
    Waiting(Pin<Box<dyn Future<Output = Response<Logged<Body>>> + Send>>),
}

impl Future for Answer {
    type Output = Result<Response<Logged<Body>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Answer::Ready(response) => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                // Polled again after its answer: there is nothing more.
                None => Poll::Pending,
            },
            Answer::Waiting(exchange) => exchange.as_mut().poll(cx).map(Ok),
        }
    }
}

/// Counts the request as abandoned if dropped before [`answered`](Self::answered).
struct Unanswered(Option<Arc<Metrics>>);

impl Unanswered {
    fn answered(mut self) {
        self.0 = None;
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(metrics) = &self.0 {
            metrics.abandoned();
        }
    }
}

/// A requested protocol switch: the `Upgrade` value, the client's side
/// of the connection once hyper hands it over, and the token check the
/// tunnel lives by (`None` when anonymous).
type Upgrade = (
    HeaderValue,
    hyper::upgrade::OnUpgrade,
    Option<Arc<Verified>>,
);

//! Forward auth: the gateway as the decision only, behind a proxy that
//! stays in the data path (nginx `auth_request`, Traefik `forwardAuth`,
//! Caddy `forward_auth`). The proxy describes the original request in
//! headers; the answer is the one that request would have had here, with
//! an empty body, and nothing is forwarded.

use http::header::HeaderName;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;

use super::response::{self, Body, Rejection};
use super::{Gateway, Peer, Settings, forward, policy, target};
use crate::observe::accesslog::Outcome;
use crate::observe::metrics::AuthOutcome;

/// Where each proxy puts the original method and URI: Traefik and Caddy,
/// then nginx (by convention in its `auth_request` set-ups).
const ORIGINAL: [(&str, &str); 2] = [
    ("x-forwarded-method", "x-forwarded-uri"),
    ("x-original-method", "x-original-uri"),
];

impl Gateway {
    /// The answer to a forward-auth request: 200 with the identity headers
    /// (none on a public path), or the 401/403 the original request would
    /// have had.
    pub(super) fn forward_auth(
        &self,
        s: &Settings,
        req: &Request<Incoming>,
        peer: &Peer,
        outcome: &mut Outcome,
    ) -> Result<Response<Body>, Rejection> {
        // Anyone else could describe any request, and learn who a token
        // belongs to.
        if !forward::from_trusted_proxy(&s.config.server, peer) {
            tracing::warn!(client = %peer.addr.ip(), "forward-auth request from a peer not in server.trusted_proxies");
            return Err(Rejection::Forbidden);
        }
        let (method, uri) = original(req.headers())?;
        let path = target::canonical_uri_path(&uri, s.config.server.max_path_length)?;
        let auth = &s.config.auth;
        if policy::is_public(&auth.public, &path) {
            self.metrics.auth(AuthOutcome::Public);
            return Ok(response::empty(StatusCode::OK));
        }
        let verified = self.authorize(
            s,
            req.headers(),
            &method,
            &path,
            (&mut outcome.user, &mut outcome.reason),
        )?;
        let (Some(user), Some(roles)) = (&verified.user_value, &verified.roles_value) else {
            return Err(Rejection::InvalidToken);
        };
        let mut response = response::empty(StatusCode::OK);
        let headers = response.headers_mut();
        headers.insert(auth.identity_header.clone(), user.clone());
        headers.insert(auth.roles_header.clone(), roles.clone());
        Ok(response)
    }
}

/// The original method and URI, from the one pair of headers present.
/// Both pairs at once is refused: a proxy that sets one and passes a
/// client's copy of the other along would let the client choose.
fn original(headers: &HeaderMap) -> Result<(Method, Uri), Rejection> {
    let present: Vec<&(&str, &str)> = ORIGINAL
        .iter()
        .filter(|(method, uri)| headers.contains_key(*method) || headers.contains_key(*uri))
        .collect();
    let (method, uri) = match present.as_slice() {
        [] => {
            return Err(Rejection::BadRequest(
                "A forward-auth request must name the original request in X-Forwarded-Method and X-Forwarded-Uri, or X-Original-Method and X-Original-URI.",
            ));
        }
        [(method, uri)] => (
            one(headers, &HeaderName::from_static(method)),
            one(headers, &HeaderName::from_static(uri)),
        ),
        _ => {
            return Err(Rejection::BadRequest(
                "Both X-Forwarded-Method/Uri and X-Original-Method/URI came: the proxy must send one pair and clear the other.",
            ));
        }
    };
    let (Some(method), Some(uri)) = (method, uri) else {
        return Err(Rejection::BadRequest(
            "A forward-auth request must name the original method and URI once each.",
        ));
    };
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| Rejection::BadRequest("The original method is not a method."))?;
    let uri = uri
        .parse::<Uri>()
        .ok()
        .filter(|u| u.scheme().is_none() && u.path().starts_with('/'))
        .ok_or(Rejection::BadRequest(
            "The original URI must be a path such as /orders/7?x=1.",
        ))?;
    Ok((method, uri))
}

/// A header's one value as text; `None` when absent, repeated or not text.
fn one<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    let mut values = headers.get_all(name).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    value.to_str().ok()
}

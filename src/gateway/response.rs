//! Every answer the gateway gives, and the one function that turns a
//! rejection into its HTTP response. Clients get the contract's generic
//! bodies; the detail goes to the log.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::{Either, Full};

use crate::auth::Unauthenticated;
use crate::upstream::pool::Returning;
use crate::upstream::{Failure, InvalidTarget};

/// Either a body the gateway wrote or the upstream's, streamed untouched.
pub type Body = Either<Full<Bytes>, Returning>;

/// Why a request was not forwarded, or failed on the way.
#[derive(Debug)]
pub enum Rejection {
    /// The request target or its headers are ambiguous or malformed.
    BadRequest(&'static str),
    /// The path is longer than `server.max_path_length`: refused before
    /// any decision looks at it.
    PathTooLong,
    MethodNotAllowed {
        allow: &'static str,
    },
    NotProvided,
    InvalidToken,
    Forbidden,
    Login(LoginRejection),
    UpstreamUnreachable,
    UpstreamTimeout,
    /// Every upstream connection the gateway may open stayed busy.
    UpstreamBusy,
    /// The store could not be read or written; nothing was acknowledged.
    StoreUnavailable,
}

#[derive(Debug)]
pub enum LoginRejection {
    /// DRF-style field errors, e.g. `{"password": ["This field is required."]}`.
    Fields(serde_json::Value),
    Malformed(&'static str),
    BadCredentials,
    TooLarge,
    UnsupportedMediaType,
    BodyTimeout,
    /// Too many failures from this client or for this username; retry after this.
    Limited(std::time::Duration),
}

impl From<LoginRejection> for Rejection {
    fn from(r: LoginRejection) -> Self {
        Rejection::Login(r)
    }
}

impl From<Failure> for Rejection {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Timeout => Rejection::UpstreamTimeout,
            Failure::ClientBody => Rejection::BadRequest("The request body is malformed."),
            Failure::Busy => Rejection::UpstreamBusy,
            Failure::Unreachable => Rejection::UpstreamUnreachable,
        }
    }
}

impl From<Unauthenticated> for Rejection {
    fn from(reason: Unauthenticated) -> Self {
        match reason {
            Unauthenticated::Missing => Rejection::NotProvided,
            Unauthenticated::Invalid => Rejection::InvalidToken,
            Unauthenticated::StoreUnavailable => Rejection::StoreUnavailable,
        }
    }
}

impl From<InvalidTarget> for Rejection {
    fn from(_: InvalidTarget) -> Self {
        Rejection::BadRequest("The request target is not valid.")
    }
}

/// `{"detail": …}` with the text fixed at compile time: the 401s and 403s
/// a gateway sends most cost no serialisation and no allocation.
macro_rules! detail {
    ($text:literal) => {
        Bytes::from_static(concat!(r#"{"detail":""#, $text, r#""}"#).as_bytes())
    };
}

const REALM: HeaderValue = HeaderValue::from_static("Token realm=\"tokengate\"");

impl Rejection {
    pub fn into_response(self) -> Response<Body> {
        self.into_response_with(HeaderMap::new())
    }

    /// The response, its headers in `headers` (cleared first): a map with
    /// room already, to save allocating one.
    pub fn into_response_with(self, mut headers: HeaderMap) -> Response<Body> {
        use LoginRejection as L;
        use Rejection as R;
        let (status, body) = match &self {
            R::BadRequest(why) => (StatusCode::BAD_REQUEST, detail_of(why)),
            R::PathTooLong => (
                StatusCode::URI_TOO_LONG,
                detail!("The request path is too long."),
            ),
            R::MethodNotAllowed { .. } => (
                StatusCode::METHOD_NOT_ALLOWED,
                detail!("Method not allowed."),
            ),
            R::NotProvided => (
                StatusCode::UNAUTHORIZED,
                detail!("Authentication credentials were not provided."),
            ),
            R::InvalidToken => (StatusCode::UNAUTHORIZED, detail!("Invalid token.")),
            R::Forbidden => (
                StatusCode::FORBIDDEN,
                detail!("You do not have permission to perform this action."),
            ),
            R::Login(L::Fields(errors)) => {
                (StatusCode::BAD_REQUEST, Bytes::from(errors.to_string()))
            }
            R::Login(L::Malformed(why)) => (StatusCode::BAD_REQUEST, detail_of(why)),
            R::Login(L::BadCredentials) => (
                StatusCode::UNAUTHORIZED,
                Bytes::from_static(
                    br#"{"non_field_errors":["Unable to log in with provided credentials."]}"#,
                ),
            ),
            R::Login(L::TooLarge) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                detail!("Request body is too large."),
            ),
            R::Login(L::UnsupportedMediaType) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                detail!(
                    "Unsupported media type; send application/json or application/x-www-form-urlencoded."
                ),
            ),
            R::Login(L::Limited(_)) => (
                StatusCode::TOO_MANY_REQUESTS,
                detail!("Too many failed login attempts; try again later."),
            ),
            R::Login(L::BodyTimeout) => (
                StatusCode::REQUEST_TIMEOUT,
                detail!("Request body was not received in time."),
            ),
            R::UpstreamUnreachable => (
                StatusCode::BAD_GATEWAY,
                detail!("The upstream service is unreachable."),
            ),
            R::UpstreamTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                detail!("The upstream service did not respond in time."),
            ),
            R::UpstreamBusy => (
                StatusCode::SERVICE_UNAVAILABLE,
                detail!("The upstream service is busy; try again later."),
            ),
            R::StoreUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                detail!("Service temporarily unavailable; try again later."),
            ),
        };
        headers.clear();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match self {
            R::NotProvided | R::InvalidToken | R::Login(L::BadCredentials) => {
                headers.insert(header::WWW_AUTHENTICATE, REALM);
            }
            R::Login(L::Limited(wait)) => {
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            }
            R::MethodNotAllowed { allow } => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            R::Login(L::BodyTimeout) | R::Login(L::TooLarge) => {
                // The rest of the body is unread; the connection cannot be reused.
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        let mut response = Response::new(Either::Left(Full::new(body)));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        response
    }
}

fn detail_of(text: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "detail": text }).to_string())
}

/// A JSON response the gateway wrote itself.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    json_bytes(status, Bytes::from(value.to_string()))
}

fn json_bytes(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Either::Left(Full::new(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

pub fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Either::Left(Full::new(Bytes::new())));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_of(r: Response<Body>) -> serde_json::Value {
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn a_reused_header_map_keeps_none_of_its_headers() {
        let mut request = HeaderMap::with_capacity(32);
        request.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Token tg_secret"),
        );
        request.append(header::COOKIE, HeaderValue::from_static("a=1"));
        request.append(header::COOKIE, HeaderValue::from_static("b=2"));
        request.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let r = Rejection::InvalidToken.into_response_with(request);
        let names: Vec<_> = r
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str(), v.clone()))
            .collect();
        assert_eq!(
            names,
            [
                ("content-type", HeaderValue::from_static("application/json")),
                ("www-authenticate", REALM),
            ]
        );
        assert!(r.headers().capacity() >= 32, "the map's room is kept");
    }

    #[tokio::test]
    async fn every_rejection_body_is_json() {
        use std::time::Duration;
        let all = [
            Rejection::BadRequest("a \"quoted\" reason"),
            Rejection::MethodNotAllowed { allow: "POST" },
            Rejection::NotProvided,
            Rejection::InvalidToken,
            Rejection::Forbidden,
            LoginRejection::Malformed("bad").into(),
            LoginRejection::BadCredentials.into(),
            LoginRejection::TooLarge.into(),
            LoginRejection::UnsupportedMediaType.into(),
            LoginRejection::Limited(Duration::from_secs(3)).into(),
            LoginRejection::BodyTimeout.into(),
            Rejection::UpstreamUnreachable,
            Rejection::UpstreamTimeout,
            Rejection::UpstreamBusy,
            Rejection::StoreUnavailable,
        ];
        for rejection in all {
            let shown = format!("{rejection:?}");
            let r = rejection.into_response();
            assert_eq!(r.headers()["content-type"], "application/json", "{shown}");
            let body = body_of(r).await;
            assert!(
                body["detail"].is_string() || body["non_field_errors"][0].is_string(),
                "{shown}: {body}"
            );
        }
    }

    #[tokio::test]
    async fn the_contracts_401_and_403_bodies() {
        let r = Rejection::NotProvided.into_response();
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()["www-authenticate"], "Token realm=\"tokengate\"");
        assert_eq!(
            body_of(r).await,
            serde_json::json!({"detail": "Authentication credentials were not provided."})
        );
        let r = Rejection::InvalidToken.into_response();
        assert_eq!(r.status(), 401);
        assert_eq!(
            body_of(r).await,
            serde_json::json!({"detail": "Invalid token."})
        );
        let r = Rejection::Forbidden.into_response();
        assert_eq!(r.status(), 403);
        assert_eq!(
            body_of(r).await,
            serde_json::json!({"detail": "You do not have permission to perform this action."})
        );
    }

    #[test]
    fn statuses() {
        let cases = [
            (Rejection::BadRequest("x"), 400),
            (Rejection::PathTooLong, 414),
            (Rejection::MethodNotAllowed { allow: "POST" }, 405),
            (LoginRejection::TooLarge.into(), 413),
            (LoginRejection::UnsupportedMediaType.into(), 415),
            (LoginRejection::BadCredentials.into(), 401),
            (LoginRejection::BodyTimeout.into(), 408),
            (
                LoginRejection::Limited(std::time::Duration::from_millis(1500)).into(),
                429,
            ),
            (Rejection::UpstreamUnreachable, 502),
            (Rejection::UpstreamTimeout, 504),
            (Rejection::UpstreamBusy, 503),
            (Rejection::StoreUnavailable, 503),
        ];
        for (rejection, status) in cases {
            let r = rejection.into_response();
            assert_eq!(r.status(), status);
            assert_eq!(r.headers()["content-type"], "application/json");
        }
        let r = Rejection::MethodNotAllowed { allow: "POST" }.into_response();
        assert_eq!(r.headers()["allow"], "POST");
        let r = Rejection::from(LoginRejection::Limited(std::time::Duration::from_millis(
            1500,
        )))
        .into_response();
        assert_eq!(r.headers()["retry-after"], "2", "rounded up, never 0");
    }

    #[test]
    fn the_logged_body_stays_small() {
        // hyper keeps a slot this size in every HTTP/1 connection for its
        // life (the upstream body's connection, driver and the request's
        // progress included); boxing the entry would trade that for an
        // allocation per request. The request ID's header value (40 bytes)
        // and the refusal reason (8 with padding) are kept for the access
        // line, written when the body ends.
        let size = std::mem::size_of::<crate::observe::accesslog::Logged<Body>>();
        assert!(size <= 288, "Logged<Body> is {size} bytes");
    }
}

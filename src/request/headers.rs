//! Header operations on forwarded requests and responses: small pure
//! functions, each with its tests beside it.

use std::net::{IpAddr, Ipv6Addr};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use smallvec::SmallVec;

const HOP_BY_HOP_COUNT: usize = 9;
// `remove_hop_by_hop` marks the ones present in a u16.
const _: () = assert!(HOP_BY_HOP_COUNT <= 16);

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus the non-standard ones proxies
/// also treat as connection-scoped. Names, not strings: removing by
/// `HeaderName` skips parsing the name on every request.
const HOP_BY_HOP: [HeaderName; HOP_BY_HOP_COUNT] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers that ask an upstream framework to treat a request as another
/// method; a gateway that authorized a GET must not forward a disguised DELETE.
const METHOD_OVERRIDES: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Forwarding headers only the gateway may set. `X-Real-IP` is one too,
/// but a trusted proxy's is kept: see [`remove_client_claims`].
const FORWARDING: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "forwarded",
];

const X_REAL_IP: &str = "x-real-ip";

/// The default of `upstream.strip_headers`: headers some frameworks take
/// as the real path (IIS, Symfony, Laravel), the client's address or the
/// scheme it used. A client sending them could pick the path the upstream
/// routes, or the address and scheme it believes.
pub const STRIP_BY_DEFAULT: &[&str] = &[
    "X-Original-URL",
    "X-Rewrite-URL",
    "X-Client-IP",
    "True-Client-IP",
    "CF-Connecting-IP",
    "Client-IP",
    "X-Cluster-Client-IP",
    "X-Forwarded-Ssl",
    "X-Forwarded-Scheme",
    "Front-End-Https",
];

/// True when two header names would be read as the same header by an
/// upstream that folds case and treats `_` as `-` (as CGI, WSGI and many
/// frameworks do).
pub fn same_header(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes().zip(b.bytes()).all(|(x, y)| {
            let norm = |c: u8| {
                if c == b'_' {
                    b'-'
                } else {
                    c.to_ascii_lowercase()
                }
            };
            norm(x) == norm(y)
        })
}

/// Removes hop-by-hop headers, including every header the `Connection`
/// header names. Call before the gateway adds its own headers, so a client
/// cannot use `Connection: X-Auth-User` to strip what the gateway sets.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names marks the hop-by-hop headers present; only
    // those are looked up again. Nearly every upstream response carries
    // `Connection: keep-alive` and nothing else of the list, and removing
    // all nine names blindly cost ten hash lookups per response.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // `Connection` is HOP_BY_HOP[0]. Options that are names on the list
    // (`keep-alive`, `upgrade`, ...) go below anyway, so they are skipped
    // before parsing: a parsed custom name allocates.
    if present & 1 != 0 {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|option| {
                !HOP_BY_HOP
                    .iter()
                    .any(|h| option.eq_ignore_ascii_case(h.as_str()))
            })
            .filter_map(|option| HeaderName::from_bytes(option.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.into_iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// Removes every header a client could use to pose as someone: its copies of
/// the identity and roles headers (in any case, `_` or `-`), the forwarding
/// headers, method overrides, and the credential itself. `X-Real-IP` stays
/// when it comes from a trusted proxy (`trusted_peer`): it names the client
/// that proxy saw, as the `X-Forwarded-For` chain it sends does; its
/// look-alikes (`X_Real_IP`) never stay.
pub fn remove_client_claims(
    headers: &mut HeaderMap,
    identity: &HeaderName,
    roles: &HeaderName,
    trusted_peer: bool,
) {
    // On the stack: every authenticated request has at least one to remove.
    let doomed: SmallVec<[HeaderName; 4]> = headers
        .keys()
        .filter(|name| {
            let n = name.as_str();
            same_header(n, identity.as_str())
                || same_header(n, roles.as_str())
                || FORWARDING.iter().any(|f| same_header(n, f))
                || (same_header(n, X_REAL_IP) && !(trusted_peer && n == X_REAL_IP))
                || METHOD_OVERRIDES.iter().any(|m| same_header(n, m))
                || is_framing_lookalike(n)
                || same_header(n, "authorization")
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// Removes the headers named in `listed` (`upstream.strip_headers`), in
/// every spelling an upstream could read them as.
pub fn remove_listed(headers: &mut HeaderMap, listed: &[HeaderName]) {
    if listed.is_empty() {
        return;
    }
    let doomed: SmallVec<[HeaderName; 4]> = headers
        .keys()
        .filter(|name| {
            listed
                .iter()
                .any(|l| same_header(name.as_str(), l.as_str()))
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// Headers that frame the message, route it, or carry what the gateway
/// reads or sets itself. An identity or roles header with one of these
/// names would be dropped as hop-by-hop, overwritten, or would reframe the
/// request on its way upstream.
const NOT_FOR_IDENTITY: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "cookie",
    "forwarded",
    "x-real-ip",
];

/// True when `name` may not be the identity or roles header (see
/// [`NOT_FOR_IDENTITY`]); any `X-Forwarded-*` is the gateway's too.
pub fn reserved_for_gateway(name: &str) -> bool {
    const PREFIX: &str = "x-forwarded-";
    NOT_FOR_IDENTITY.iter().any(|n| same_header(name, n))
        || name
            .get(..PREFIX.len())
            .is_some_and(|head| same_header(head, PREFIX))
}

/// True when `value` is an authority an `http` URI may have (RFC 3986
/// §3.2, RFC 9110 §4.2.1): a non-empty host (a reg-name, an IPv4 address,
/// or an IPv6 address in brackets), then an optional `:port`. No userinfo,
/// no path, nothing an upstream could split differently from the gateway.
pub fn is_authority(value: &[u8]) -> bool {
    let (host_ok, port) = match value.strip_prefix(b"[") {
        Some(rest) => {
            let Some(end) = rest.iter().position(|&b| b == b']') else {
                return false;
            };
            let literal =
                std::str::from_utf8(&rest[..end]).is_ok_and(|ip| ip.parse::<Ipv6Addr>().is_ok());
            (literal, &rest[end + 1..])
        }
        None => {
            let end = value.iter().position(|&b| b == b':').unwrap_or(value.len());
            (is_reg_name(&value[..end]), &value[end..])
        }
    };
    host_ok
        && match port {
            [] => true,
            [b':', digits @ ..] => {
                (1..=5).contains(&digits.len())
                    && digits.iter().all(u8::is_ascii_digit)
                    && digits
                        .iter()
                        .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'))
                        <= u32::from(u16::MAX)
            }
            _ => false,
        }
}

/// A non-empty reg-name: unreserved characters, sub-delims and
/// percent-escapes (RFC 3986 §3.2.2). IPv4 addresses are reg-names too.
fn is_reg_name(name: &[u8]) -> bool {
    let mut rest = name;
    while let [first, tail @ ..] = rest {
        rest = match first {
            b'%' => match tail {
                [a, b, after @ ..] if a.is_ascii_hexdigit() && b.is_ascii_hexdigit() => after,
                _ => return false,
            },
            c if c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(c) => tail,
            _ => return false,
        };
    }
    !name.is_empty()
}

/// `Transfer_Encoding` or `content_length`: not framing to us, but framing
/// to an upstream that folds `_` into `-` — a request smuggling vector.
fn is_framing_lookalike(name: &str) -> bool {
    (name != "content-length" && same_header(name, "content-length"))
        || (name != "transfer-encoding" && same_header(name, "transfer-encoding"))
}

/// The facts the forwarding headers are built from.
pub struct Forwarded<'a> {
    /// The client's address as a header value (see [`ip_value`]).
    pub client: &'a HeaderValue,
    /// The `X-Forwarded-For` chain a trusted proxy sent, if the peer is one.
    pub trusted_chain: Option<&'a str>,
    pub proto: &'static str,
    pub host: Option<&'a HeaderValue>,
}

/// An address as a header value: made once per connection, not per request.
pub fn ip_value(ip: IpAddr) -> HeaderValue {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(ip.to_string()))
        .expect("an IP address is a valid header value")
}

/// Sets `X-Forwarded-For` (the client's address last), `-Proto` and `-Host`.
pub fn set_forwarded(headers: &mut HeaderMap, fwd: &Forwarded<'_>) {
    let client = match fwd.trusted_chain {
        Some(chain) if !chain.trim().is_empty() => {
            // The client value came from `ip_value`: ASCII.
            let ip = fwd.client.to_str().unwrap_or_default();
            HeaderValue::from_str(&format!("{}, {ip}", chain.trim())).ok()
        }
        _ => Some(fwd.client.clone()),
    };
    if let Some(client) = client {
        headers.insert(X_FORWARDED_FOR, client);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(fwd.proto));
    if let Some(host) = fwd.host {
        headers.insert(X_FORWARDED_HOST, host.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn same_header_folds_case_and_underscore() {
        assert!(same_header("x-auth-user", "X-Auth-User"));
        assert!(same_header("x_auth_user", "X-Auth-User"));
        assert!(same_header("X_AUTH-user", "x-auth-user"));
        assert!(!same_header("x-auth-users", "x-auth-user"));
        assert!(!same_header("x-auth-usr", "x-auth-user"));
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("connection", "x-other"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic x"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("accept", "*/*"),
        ]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["accept"], "*/*");
    }

    #[test]
    fn connection_options_in_any_case_name_headers_to_remove() {
        let mut h = map(&[
            ("connection", "Keep-Alive , X-SECRET,close"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("close", "2"),
            ("x-kept", "3"),
        ]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "3");
        // `Connection` alone, the usual upstream response: only it goes.
        let mut h = map(&[("connection", "keep-alive"), ("content-length", "5")]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("content-length"));
    }

    #[test]
    fn without_hop_by_hop_headers_nothing_goes() {
        let mut h = map(&[("x-secret", "1"), ("accept", "*/*"), ("host", "gw")]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 3, "{h:?}");
        let mut h = map(&[("x-secret", "1"), ("keep-alive", "timeout=5")]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-secret"], "1", "only a Connection header names others");
    }

    #[test]
    fn client_claims_go_in_every_spelling() {
        let identity = HeaderName::from_static("x-auth-user");
        let roles = HeaderName::from_static("x-auth-roles");
        let mut h = map(&[
            ("x-auth-user", "root"),
            ("X_Auth_User", "root"),
            ("x-auth_roles", "admin"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x_forwarded_host", "evil"),
            ("forwarded", "for=1.2.3.4"),
            ("x-http-method-override", "DELETE"),
            ("authorization", "Token tg_x"),
            ("x-auth-username", "kept"),
            ("transfer_encoding", "chunked"),
            ("content_length", "5"),
        ]);
        remove_client_claims(&mut h, &identity, &roles, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-auth-username"], "kept");
    }

    #[test]
    fn x_real_ip_stays_only_from_a_trusted_peer_and_only_so_spelled() {
        let identity = HeaderName::from_static("x-auth-user");
        let roles = HeaderName::from_static("x-auth-roles");
        let sent = [("x-real-ip", "203.0.113.1"), ("x_real_ip", "203.0.113.2")];
        let mut h = map(&sent);
        remove_client_claims(&mut h, &identity, &roles, false);
        assert!(h.is_empty(), "{h:?}");
        let mut h = map(&sent);
        remove_client_claims(&mut h, &identity, &roles, true);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-real-ip"], "203.0.113.1");
    }

    #[test]
    fn listed_headers_go_in_every_spelling() {
        let listed: Vec<HeaderName> = STRIP_BY_DEFAULT
            .iter()
            .map(|n| HeaderName::from_bytes(n.as_bytes()).unwrap())
            .collect();
        let mut h = map(&[
            ("x-original-url", "/admin"),
            ("X_Rewrite_URL", "/admin"),
            ("true-client-ip", "1.2.3.4"),
            ("front_end_https", "on"),
            ("x-original-urls", "kept"),
        ]);
        remove_listed(&mut h, &listed);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-original-urls"], "kept");
        let mut h = map(&[("x-original-url", "/admin")]);
        remove_listed(&mut h, &[]);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn authorities_are_host_and_port_only() {
        for good in [
            "gw",
            "api.example.com:8443",
            "127.0.0.1",
            "127.0.0.1:1",
            "[::1]",
            "[::1]:65535",
            "[2001:db8::1]:80",
            "under_score.example",
            "caf%C3%A9.example",
        ] {
            assert!(is_authority(good.as_bytes()), "{good}");
        }
        for bad in [
            "",
            ":80",
            "a b",
            "x@host",
            "host/admin",
            "host\\x",
            "host?x",
            "host#x",
            "host:",
            "host:abc",
            "host:65536",
            "host:123456",
            "host:1:2",
            "::1",
            "[::1",
            "[::1]x",
            "[::1]:",
            "[zz::1]",
            "[127.0.0.1]",
            "ho%zzst",
            "ho%4",
            "host\"",
            "h\u{e9}st",
        ] {
            assert!(!is_authority(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn forwarded_headers_put_the_client_last() {
        let mut h = HeaderMap::new();
        let host = HeaderValue::from_static("api.example");
        set_forwarded(
            &mut h,
            &Forwarded {
                client: &ip_value("10.0.0.9".parse().unwrap()),
                trusted_chain: Some("203.0.113.7"),
                proto: "https",
                host: Some(&host),
            },
        );
        assert_eq!(h["x-forwarded-for"], "203.0.113.7, 10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "api.example");

        let mut h = HeaderMap::new();
        set_forwarded(
            &mut h,
            &Forwarded {
                client: &ip_value("::1".parse().unwrap()),
                trusted_chain: None,
                proto: "http",
                host: None,
            },
        );
        assert_eq!(h["x-forwarded-for"], "::1");
        assert!(h.get("x-forwarded-host").is_none());
    }
}

//! The request as the upstream sees it and the response as the client
//! sees it: everything the gateway changes in what it forwards, in one
//! place. The upstream side below only carries bytes.

use std::net::IpAddr;

use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Either;
use hyper::body::Incoming;

use super::response::{Body, Rejection};
use super::tunnel;
use super::{Peer, Settings, Upgrade};
use crate::auth::cache::Verified;
use crate::config::{IpNet, ServerConfig};
use crate::request::headers::{self, Forwarded, X_FORWARDED_FOR};
use crate::store::Store;
use crate::upstream::pool::Returning;

/// Rewrites the request for the upstream: canonical path, no client
/// claims or hop-by-hop headers, then the gateway's own headers (and the
/// upgrade headers back, for a protocol switch the gateway tunnels).
pub fn request(
    s: &Settings,
    req: &mut Request<Incoming>,
    path: &str,
    identity: Option<&Verified>,
    peer: &Peer,
    request_id: Option<&HeaderValue>,
) -> Result<Option<(HeaderValue, hyper::upgrade::OnUpgrade)>, Rejection> {
    let auth = &s.config.auth;
    let upgrade = tunnel::requested(req).map(|protocol| (protocol, hyper::upgrade::on(&mut *req)));
    // HTTP/2 carries the host in :authority, which hyper puts in the URI.
    let host = match req.headers().get(header::HOST) {
        Some(host) => Some(host.clone()),
        None => req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    };
    *req.uri_mut() = s.upstream.uri_for(req.uri(), path)?;
    let headers = req.headers_mut();
    let trusted_peer = from_trusted_proxy(&s.config.server, peer);
    let trusted_chain = if trusted_peer {
        joined(headers, &X_FORWARDED_FOR)
    } else {
        None
    };
    headers::remove_hop_by_hop(headers);
    headers::remove_client_claims(
        headers,
        &auth.identity_header,
        &auth.roles_header,
        trusted_peer,
    );
    headers::remove_listed(headers, &s.config.upstream.strip_headers);
    if let Some(id) = request_id {
        // Its look-alikes too: a framework may read `X_Request_Id` as it.
        let name = &s.config.server.request_id_header;
        headers::remove_listed(headers, std::slice::from_ref(name));
        headers.insert(name.clone(), id.clone());
    }
    // After hop-by-hop removal, so `Connection: Host` cannot drop it.
    // HTTP/1.0 may come without a host; the upstream hears its own name.
    let upstream_host = host.clone().unwrap_or_else(|| s.upstream.host().clone());
    headers.insert(header::HOST, upstream_host);
    headers::set_forwarded(
        headers,
        &Forwarded {
            client: &peer.ip,
            trusted_chain: trusted_chain.as_deref(),
            proto: peer.proto,
            host: host.as_ref(),
        },
    );
    if let Some(identity) = identity {
        let (Some(user), Some(roles)) = (&identity.user_value, &identity.roles_value) else {
            return Err(Rejection::InvalidToken);
        };
        headers.insert(auth.identity_header.clone(), user.clone());
        headers.insert(auth.roles_header.clone(), roles.clone());
    }
    if let Some((protocol, _)) = &upgrade {
        tunnel::restore_headers(headers, protocol.clone());
    }
    Ok(upgrade)
}

/// The client's address: the peer, unless the peer is a trusted proxy, in
/// which case the nearest untrusted hop of `X-Forwarded-For`.
pub fn client_ip(peer: &Peer, headers: &http::HeaderMap, trusted: &[IpNet]) -> IpAddr {
    if !self::trusted(trusted, peer.addr.ip()) {
        return peer.addr.ip();
    }
    let values: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    // Walk back from the nearest hop; the first untrusted one is the client.
    for hop in values.iter().rev() {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) if self::trusted(trusted, ip) => continue,
            Ok(ip) => return ip,
            // A garbled hop was written by whoever the proxies received from.
            Err(_) => break,
        }
    }
    peer.addr.ip()
}

/// All values of a header joined with ", ", as one chain.
fn joined(headers: &http::HeaderMap, name: &HeaderName) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

/// The upstream's response as the client gets it: hop-by-hop headers
/// removed and, when the upstream switched protocols for a tunnel the
/// client asked for, the tunnel spliced and its upgrade headers back.
pub fn response(
    response: Response<Returning>,
    upgrade: Option<Upgrade>,
    store: &Store,
) -> Response<Body> {
    let mut response = response.map(Either::Right);
    headers::remove_hop_by_hop(response.headers_mut());
    if let Some((protocol, client, verified)) = upgrade
        && response.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        let lease = verified.map(|v| tunnel::Lease::new(store.clone(), v));
        tunnel::splice(client, &mut response, lease);
        tunnel::restore_headers(response.headers_mut(), protocol);
    }
    response
}

/// Whether the request came through one of the `trusted_proxies`.
pub fn from_trusted_proxy(server: &ServerConfig, peer: &Peer) -> bool {
    trusted(&server.trusted_proxies, peer.addr.ip())
}

/// Whether `ip` is one of the `trusted_proxies`.
fn trusted(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|net| net.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn peer(ip: &str) -> Peer {
        Peer::new(SocketAddr::new(ip.parse().unwrap(), 1234), "http")
    }

    fn xff(values: &[&str]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn client_ip_believes_forwarded_for_only_from_trusted_peers() {
        let trusted = [IpNet::parse("10.0.0.0/8").unwrap()];
        let h = xff(&["203.0.113.9, 10.0.0.2"]);
        assert_eq!(
            client_ip(&peer("10.0.0.1"), &h, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(&peer("198.51.100.1"), &h, &trusted),
            "198.51.100.1".parse::<IpAddr>().unwrap()
        );
        let spoofed = xff(&["1.1.1.1", "203.0.113.9"]);
        assert_eq!(
            client_ip(&peer("10.0.0.1"), &spoofed, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        let garbled = xff(&["nonsense"]);
        assert_eq!(
            client_ip(&peer("10.0.0.1"), &garbled, &trusted),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(&peer("10.0.0.1"), &xff(&[]), &trusted),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }
}

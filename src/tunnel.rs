//! HTTP/1.1 upgrades (WebSocket and kin) on authorized requests: the
//! handshake is forwarded like any request, and once the upstream answers
//! 101 both connections are spliced together. `h2c` upgrades are never
//! passed on: they would let a client speak HTTP/2 to the upstream past the
//! gateway's per-request checks.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// The `Upgrade` value of a request asking for a protocol switch we tunnel.
pub fn requested<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let connection_upgrade = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    let mut values = req.headers().get_all(header::UPGRADE).iter();
    let upgrade = values.next()?;
    if !connection_upgrade || values.next().is_some() {
        return None;
    }
    let h2c = upgrade.to_str().map_or(true, |v| {
        v.split(',').any(|p| p.trim().eq_ignore_ascii_case("h2c"))
    });
    (!h2c).then(|| upgrade.clone())
}

/// Puts back the two headers hop-by-hop removal took off a handshake.
pub fn restore_headers(headers: &mut HeaderMap, upgrade: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, upgrade);
}

/// After a 101 from the upstream: hands the client its 101 and splices the
/// two upgraded connections in a task of their own.
pub fn splice<B>(client: OnUpgrade, response: &mut Response<B>) {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    let upstream = hyper::upgrade::on(&mut *response);
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((up, down)) => tracing::debug!(bytes_up = up, bytes_down = down, "tunnel closed"),
            Err(e) => tracing::debug!(error = %e, "tunnel ended with an error"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::get("/ws").version(version);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn websocket_upgrades_are_recognised() {
        let r = req(
            Version::HTTP_11,
            &[
                ("connection", "keep-alive, Upgrade"),
                ("upgrade", "websocket"),
            ],
        );
        assert_eq!(requested(&r).unwrap(), "websocket");
    }

    #[test]
    fn h2c_and_half_asked_upgrades_are_not() {
        let h2c = req(
            Version::HTTP_11,
            &[
                ("connection", "Upgrade, HTTP2-Settings"),
                ("upgrade", "h2c"),
            ],
        );
        assert!(requested(&h2c).is_none());
        let sneaky = req(
            Version::HTTP_11,
            &[("connection", "upgrade"), ("upgrade", "websocket, h2c")],
        );
        assert!(requested(&sneaky).is_none());
        let no_connection = req(Version::HTTP_11, &[("upgrade", "websocket")]);
        assert!(requested(&no_connection).is_none());
        let http10 = req(
            Version::HTTP_10,
            &[("connection", "upgrade"), ("upgrade", "websocket")],
        );
        assert!(requested(&http10).is_none());
        let twice = req(
            Version::HTTP_11,
            &[
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
                ("upgrade", "foo"),
            ],
        );
        assert!(requested(&twice).is_none());
    }
}

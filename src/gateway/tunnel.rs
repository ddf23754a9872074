//! HTTP/1.1 upgrades (WebSocket and kin) on authorized requests: the
//! handshake is forwarded like any request, and once the upstream answers
//! 101 both connections are spliced together. `h2c` upgrades are never
//! passed on: they would let a client speak HTTP/2 to the upstream past the
//! gateway's per-request checks.
//!
//! A tunnel is one long request: its token is checked once, at the
//! handshake, so the tunnel holds a [`Lease`] on that check and closes when
//! the store announces that the token or its user's epoch ended, or when
//! the token expires. Announcements are events, not polls: an open tunnel
//! costs no store reads, and is woken only by revocations.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::broadcast::error::RecvError;

use crate::auth::cache::Verified;
use crate::store::{Revoked, Store};

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
/// two upgraded connections in a task of their own, until either side
/// closes or `lease` ends; `None` for an anonymous tunnel (a public path
/// with `auth.public_upgrades`).
pub fn splice<B>(client: OnUpgrade, response: &mut Response<B>, lease: Option<Lease>) {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    let upstream = hyper::upgrade::on(&mut *response);
    tokio::spawn(async move {
        let tunnel = async {
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
                Ok((up, down)) => {
                    tracing::debug!(bytes_up = up, bytes_down = down, "tunnel closed")
                }
                Err(e) => tracing::debug!(error = %e, "tunnel ended with an error"),
            }
        };
        let Some(lease) = lease else {
            return tunnel.await;
        };
        // Dropping the tunnel's future drops both connections: the client
        // and the upstream each see the close at once.
        tokio::select! {
            () = tunnel => {}
            end = lease.ended() => tracing::info!(
                user = %lease.verified.username,
                reason = end.reason(),
                "tunnel closed: its token ended"
            ),
        }
    });
}

/// A tunnel's hold on the token check that let it open.
pub struct Lease {
    store: Store,
    verified: Arc<Verified>,
}

/// Why a lease ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Revoked, its user changed (password, disable, enable, removal), or
    /// a recheck found it gone.
    Revoked,
    /// Its user's roles changed: what they were allowed then is decided
    /// anew on the next request.
    RolesChanged,
    Expired,
    /// A recheck could not reach the store: the tunnel fails closed, as a
    /// request would get 503.
    Unchecked,
}

impl End {
    fn reason(self) -> &'static str {
        match self {
            End::Revoked => "revoked",
            End::RolesChanged => "roles changed",
            End::Expired => "expired",
            End::Unchecked => "store unavailable",
        }
    }
}

impl Lease {
    pub fn new(store: Store, verified: Arc<Verified>) -> Self {
        Self { store, verified }
    }

    /// Resolves when the token is no longer live.
    pub async fn ended(&self) -> End {
        let checked = &self.verified.checked;
        // Subscribe before comparing generations: a write after the
        // comparison is announced to this receiver, one before it shows
        // as a new generation and is caught by the recheck.
        let mut revocations = self.store.revocations();
        let expiry = expiry(checked.expires_at);
        tokio::pin!(expiry);
        let mut recheck = self.store.generation() != checked.generation;
        loop {
            if recheck {
                if let Some(end) = self.recheck().await {
                    return end;
                }
                recheck = false;
            }
            tokio::select! {
                () = &mut expiry => return End::Expired,
                revoked = revocations.recv() => match revoked {
                    Ok(Revoked::Token(digest)) if digest == checked.digest => return End::Revoked,
                    Ok(Revoked::User(user)) if user == self.verified.username => {
                        return End::Revoked;
                    }
                    Ok(Revoked::Roles(user)) if user == self.verified.username => {
                        return End::RolesChanged;
                    }
                    Ok(Revoked::Token(_) | Revoked::User(_) | Revoked::Roles(_)) => {}
                    Ok(Revoked::Any) | Err(RecvError::Lagged(_)) => recheck = true,
                    // The sender lives in the store this lease holds.
                    Err(RecvError::Closed) => return End::Unchecked,
                },
            }
        }
    }

    /// Asks the store again, on the blocking pool: `None` while the token
    /// is live and still the same user's.
    async fn recheck(&self) -> Option<End> {
        let store = self.store.clone();
        let digest = self.verified.checked.digest;
        match tokio::task::spawn_blocking(move || store.use_token(&digest)).await {
            Ok(Ok(Some(live))) if live.identity.username == *self.verified.username => None,
            Ok(Ok(_)) => Some(End::Revoked),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "rechecking a tunnel's token failed");
                Some(End::Unchecked)
            }
            Err(e) => {
                tracing::warn!(error = %e, "rechecking a tunnel's token failed");
                Some(End::Unchecked)
            }
        }
    }
}

/// Sleeps until `expires_at` (Unix seconds) has come by the wall clock,
/// as the store judges expiry; never, for `None`.
async fn expiry(expires_at: Option<u64>) {
    let Some(at) = expires_at.and_then(|at| UNIX_EPOCH.checked_add(Duration::from_secs(at))) else {
        return std::future::pending().await;
    };
    // Again after each sleep: the wall clock may have been set back meanwhile.
    while let Ok(left) = at.duration_since(SystemTime::now())
        && !left.is_zero()
    {
        tokio::time::sleep(left).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::cache::TokenCache;
    use futures_util::FutureExt;

    fn issue(s: &Store, name: &str) -> crate::store::token::Token {
        let user = s.user(name).unwrap().unwrap();
        s.issue_token(&user, None, None, &[]).unwrap().0
    }

    /// A lease on a check of `token` made now.
    fn lease(s: &Store, token: &crate::store::token::Token) -> Lease {
        let verified = TokenCache::new()
            .verify(s, &token.digest())
            .unwrap()
            .unwrap();
        Lease::new(s.clone(), verified)
    }

    #[tokio::test]
    async fn a_lease_ends_with_its_token_or_its_user_only() {
        let (_d, s) = crate::store::temporary();
        s.add_user("ann", "h".into(), vec![]).unwrap();
        s.add_user("bob", "h".into(), vec![]).unwrap();
        let tokens = [issue(&s, "ann"), issue(&s, "ann"), issue(&s, "bob")];
        // Checked after the last write, so no lease needs a recheck and
        // each hears of its end from an announcement.
        let [ann, other, bob] = [0, 1, 2].map(|i| lease(&s, &tokens[i]));
        let mut ann = Box::pin(ann.ended());
        let mut other = Box::pin(other.ended());
        let mut bob = Box::pin(bob.ended());
        assert!((&mut ann).now_or_never().is_none());
        assert!((&mut other).now_or_never().is_none());
        assert!((&mut bob).now_or_never().is_none());
        s.revoke(&tokens[0].digest()).unwrap();
        assert_eq!((&mut ann).now_or_never(), Some(End::Revoked));
        assert!((&mut other).now_or_never().is_none(), "another token");
        s.set_disabled("ann", true).unwrap();
        assert_eq!((&mut other).now_or_never(), Some(End::Revoked));
        assert!((&mut bob).now_or_never().is_none(), "another user");
        s.remove_user("bob").unwrap();
        assert_eq!((&mut bob).now_or_never(), Some(End::Revoked));
    }

    #[tokio::test]
    async fn a_revocation_between_the_check_and_the_tunnel_is_not_missed() {
        let (_d, s) = crate::store::temporary();
        s.add_user("ann", "h".into(), vec![]).unwrap();
        let token = issue(&s, "ann");
        let lease = lease(&s, &token);
        // Before the lease listens: only the generation shows it.
        s.revoke(&token.digest()).unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(10), lease.ended());
        assert_eq!(ended.await.unwrap(), End::Revoked);
    }

    #[tokio::test]
    async fn an_expired_token_ends_its_lease() {
        assert!(expiry(Some(crate::store::now())).now_or_never().is_some());
        assert!(expiry(Some(0)).now_or_never().is_some());
        assert!(expiry(Some(u64::MAX)).now_or_never().is_none());
        assert!(expiry(None).now_or_never().is_none());
    }

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

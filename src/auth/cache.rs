//! A cache of token checks, so a valid token costs a hash lookup instead
//! of two store reads and two JSON parses on every request.
//!
//! Why it never outlives a revocation: every store write moves the store's
//! generation on before the writing call returns (`Store::generation`), and
//! an entry is trusted only while the generation is the one read *before*
//! the store was asked. A check that raced a write is tagged with the old
//! generation and dies with it. Revocations are rare (logout, `token
//! revoke`, password and user changes), so dropping every entry on any
//! write costs little. An entry is also dropped when its token expires, and
//! after `LAST_USED_GRANULARITY`, so the store still records each token's
//! last use once a minute. Only live tokens are cached; an unknown token
//! always goes to the store.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use http::HeaderValue;

use crate::request::scope::Scope;
use crate::store::token::TokenDigest;
use crate::store::{Identity, LAST_USED_GRANULARITY, LiveToken, Store, StoreError};

/// More live tokens than this in one minute and the cache starts over.
const CAPACITY: usize = 10_000;

/// A caller whose token checked out, with the headers that name them
/// upstream made once per check rather than once per request.
#[derive(Debug)]
pub struct Verified {
    pub identity: Identity,
    /// For the access log.
    pub username: Arc<str>,
    /// The identity header's value; `None` if the name cannot be one.
    pub user_value: Option<HeaderValue>,
    /// The roles header's value, comma-separated.
    pub roles_value: Option<HeaderValue>,
    /// Which check this was, for a tunnel that must end with the token.
    pub checked: Checked,
    /// `None` for an unscoped token, which then pays nothing for scopes.
    pub scopes: Option<Box<[Scope]>>,
}

/// A token check, as something that outlives its request needs it: what
/// ends the token, and what may have changed since.
#[derive(Debug, Clone, Copy)]
pub struct Checked {
    pub digest: TokenDigest,
    /// Unix seconds.
    pub expires_at: Option<u64>,
    /// The store generation read before the check: while it holds, the
    /// check does.
    pub generation: u64,
}

impl Verified {
    /// `scopes` as stored; one that no longer parses (written by a newer
    /// version) allows nothing, rather than everything.
    pub fn new(identity: Identity, checked: Checked, scopes: &[String]) -> Self {
        let scopes = (!scopes.is_empty()).then(|| {
            scopes
                .iter()
                .filter_map(|text| Scope::parse(text).ok())
                .collect()
        });
        Self {
            checked,
            scopes,
            username: Arc::from(identity.username.as_str()),
            user_value: HeaderValue::from_str(&identity.username).ok(),
            roles_value: HeaderValue::from_str(&identity.roles.join(",")).ok(),
            identity,
        }
    }
}

struct Cached {
    verified: Arc<Verified>,
    expires_at: Option<u64>,
    /// Unix seconds from which the store must be asked again.
    recheck_at: u64,
}

struct Entries {
    /// The store generation every entry was checked at.
    generation: u64,
    map: HashMap<TokenDigest, Cached>,
}

pub struct TokenCache {
    entries: RwLock<Entries>,
}

impl Default for TokenCache {
    fn default() -> Self {
        Self::new()
    }
}

impl TokenCache {
    pub fn new() -> Self {
        Self {
            entries: RwLock::new(Entries {
                generation: 0,
                map: HashMap::new(),
            }),
        }
    }

    /// The caller behind `digest` if the token is live, from the cache when
    /// nothing was written since it was checked, else from the store.
    pub fn verify(
        &self,
        store: &Store,
        digest: &TokenDigest,
    ) -> Result<Option<Arc<Verified>>, StoreError> {
        match self.lookup(store, digest)? {
            Ok(hit) => Ok(Some(hit)),
            Err(generation) => Ok(store
                .use_token(digest)?
                .map(|live| self.remember(digest, generation, live))),
        }
    }

    /// Brings the store's answer for `digest` into the cache without
    /// holding the thread while a shared store answers: run before a
    /// request's checks (`Gateway::handle`), whose `verify` then finds it.
    /// A failure is left for that `verify` to meet and answer.
    pub async fn fetch(&self, store: &Store, digest: &TokenDigest) {
        let Ok(Err(generation)) = self.lookup(store, digest) else {
            return;
        };
        if let Ok(Some(live)) = store.use_token_async(digest).await {
            self.remember(digest, generation, live);
        }
    }

    /// Whether `digest` would be answered from the cache now.
    pub fn holds(&self, store: &Store, digest: &TokenDigest) -> bool {
        self.get(digest, store.generation(), crate::store::now())
            .is_some()
    }

    /// The cached check, or the generation to tag the store's answer with.
    fn lookup(
        &self,
        store: &Store,
        digest: &TokenDigest,
    ) -> Result<Result<Arc<Verified>, u64>, StoreError> {
        // A shared store whose changes this process has not heard for too
        // long: no cached answer is to be trusted.
        store.in_touch()?;
        // Read before the store is asked: see the module comment.
        let generation = store.generation();
        Ok(self
            .get(digest, generation, crate::store::now())
            .ok_or(generation))
    }

    /// The store's answer for `digest`, cached (when it has been used
    /// recently enough) under the generation read before it was asked.
    fn remember(&self, digest: &TokenDigest, generation: u64, live: LiveToken) -> Arc<Verified> {
        let LiveToken {
            identity,
            expires_at,
            last_used_at,
            scopes,
        } = live;
        let verified = Arc::new(Verified::new(
            identity,
            Checked {
                digest: *digest,
                expires_at,
                generation,
            },
            &scopes,
        ));
        if let Some(used) = last_used_at {
            let entry = Cached {
                verified: verified.clone(),
                expires_at,
                recheck_at: used.saturating_add(LAST_USED_GRANULARITY),
            };
            self.insert(*digest, generation, entry);
        }
        verified
    }

    fn get(&self, digest: &TokenDigest, generation: u64, now: u64) -> Option<Arc<Verified>> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        if entries.generation != generation {
            return None;
        }
        let entry = entries.map.get(digest)?;
        let live = entry.expires_at.is_none_or(|at| now < at) && now < entry.recheck_at;
        live.then(|| entry.verified.clone())
    }

    fn insert(&self, digest: TokenDigest, generation: u64, entry: Cached) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if generation < entries.generation {
            // Checked before a write that a newer check already saw.
            return;
        }
        if generation > entries.generation || entries.map.len() >= CAPACITY {
            entries.map.clear();
            entries.generation = generation;
        }
        entries.map.insert(digest, entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::store::temporary as store;

    /// A store with user ann and a token of hers, and an empty cache.
    fn ann_with_token() -> (
        tempfile::TempDir,
        Store,
        TokenCache,
        crate::store::token::Token,
    ) {
        let (d, s) = store();
        let user = s.add_user("ann", "h".into(), vec![]).unwrap();
        let (t, _) = s.issue_token(&user, None, None, &[]).unwrap();
        (d, s, TokenCache::new(), t)
    }

    fn name(v: Option<Arc<Verified>>) -> Option<String> {
        v.map(|v| v.identity.username.clone())
    }

    #[test]
    fn a_live_token_is_served_from_the_cache_until_the_store_changes() {
        let (_d, s) = store();
        let cache = TokenCache::new();
        let user = s.add_user("ann", "h".into(), vec!["a".into()]).unwrap();
        let (t, _) = s.issue_token(&user, None, None, &[]).unwrap();
        let first = cache.verify(&s, &t.digest()).unwrap().unwrap();
        let second = cache.verify(&s, &t.digest()).unwrap().unwrap();
        assert!(Arc::ptr_eq(&first, &second), "the second check was cached");
        assert_eq!(second.user_value.as_ref().unwrap(), "ann");
        assert_eq!(second.roles_value.as_ref().unwrap(), "a");
        // Any write, even an unrelated one, ends the cached check.
        s.add_user("bob", "h".into(), vec![]).unwrap();
        let third = cache.verify(&s, &t.digest()).unwrap().unwrap();
        assert!(!Arc::ptr_eq(&second, &third));
    }

    type Revocation = dyn Fn(&Store, &crate::store::token::Token);

    #[test]
    fn every_revocation_is_seen_at_once() {
        let (_d, s) = store();
        let cache = TokenCache::new();
        let user = s.add_user("ann", "h".into(), vec![]).unwrap();
        let revocations: [&Revocation; 5] = [
            &|s, t| assert!(s.revoke(&t.digest()).unwrap()),
            &|s, t| s.revoke_id(&t.digest().id()).unwrap(),
            &|s, _| s.set_password("ann", "h2".into()).unwrap(),
            &|s, _| {
                s.revoke_user_tokens("ann").unwrap();
            },
            &|s, _| s.set_disabled("ann", true).unwrap(),
        ];
        for revoke in revocations {
            let user = s.user("ann").unwrap().unwrap_or(user.clone());
            let (t, _) = s.issue_token(&user, None, None, &[]).unwrap();
            assert_eq!(name(cache.verify(&s, &t.digest()).unwrap()).unwrap(), "ann");
            assert!(cache.verify(&s, &t.digest()).unwrap().is_some());
            revoke(&s, &t);
            assert!(cache.verify(&s, &t.digest()).unwrap().is_none());
        }
        s.set_disabled("ann", false).unwrap();
        let user = s.user("ann").unwrap().unwrap();
        let (t, _) = s.issue_token(&user, None, None, &[]).unwrap();
        assert!(cache.verify(&s, &t.digest()).unwrap().is_some());
        s.remove_user("ann").unwrap();
        assert!(cache.verify(&s, &t.digest()).unwrap().is_none());
    }

    #[test]
    fn a_check_that_raced_a_write_is_not_trusted_after_it() {
        let (_d, s, cache, t) = ann_with_token();
        // A check that read the generation, then the store, before a revoke...
        let before = s.generation();
        let live = s.use_token(&t.digest()).unwrap().unwrap();
        s.revoke(&t.digest()).unwrap();
        // ...and was cached after it.
        cache.insert(
            t.digest(),
            before,
            Cached {
                verified: Arc::new(Verified::new(
                    live.identity,
                    Checked {
                        digest: t.digest(),
                        expires_at: None,
                        generation: before,
                    },
                    &[],
                )),
                expires_at: None,
                recheck_at: u64::MAX,
            },
        );
        assert!(cache.verify(&s, &t.digest()).unwrap().is_none());
    }

    #[test]
    fn expired_tokens_leave_the_cache() {
        let (_d, s, cache, t) = ann_with_token();
        let verified = cache.verify(&s, &t.digest()).unwrap().unwrap();
        let now = crate::store::now();
        cache.insert(
            t.digest(),
            s.generation(),
            Cached {
                verified,
                expires_at: Some(now),
                recheck_at: u64::MAX,
            },
        );
        assert!(cache.get(&t.digest(), s.generation(), now - 1).is_some());
        assert!(cache.get(&t.digest(), s.generation(), now).is_none());
        // An entry made from the store carries the token's expiry.
        let user = s.user("ann").unwrap().unwrap();
        let (short, _) = s
            .issue_token(&user, Some(Duration::from_secs(60)), None, &[])
            .unwrap();
        assert!(cache.verify(&s, &short.digest()).unwrap().is_some());
        let expires = s
            .tokens(None)
            .unwrap()
            .iter()
            .find_map(|t| t.record.expires_at)
            .unwrap();
        assert!(
            cache
                .get(&short.digest(), s.generation(), expires - 1)
                .is_some()
        );
        assert!(
            cache
                .get(&short.digest(), s.generation(), expires)
                .is_none()
        );
    }

    #[test]
    fn last_use_is_still_recorded_once_a_minute() {
        let (_d, s, cache, t) = ann_with_token();
        cache.verify(&s, &t.digest()).unwrap().unwrap();
        let used = s.tokens(None).unwrap()[0].record.last_used_at.unwrap();
        let generation = s.generation();
        // A minute on, the cached entry sends the check back to the store.
        assert!(
            cache
                .get(&t.digest(), generation, used + LAST_USED_GRANULARITY - 1)
                .is_some()
        );
        assert!(
            cache
                .get(&t.digest(), generation, used + LAST_USED_GRANULARITY)
                .is_none()
        );
    }
}

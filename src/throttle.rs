//! Login throttling: failures are counted per client address and per
//! username; past `max_failures` within `window` the key is banned, and each
//! further ban on the same key doubles, up to `max_ban`. While banned, even
//! the right password gets 429. Memory is bounded by `max_tracked` keys
//! whatever an attacker varies.
//!
//! Every method takes `now`, so the policy is tested without a clock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    pub enabled: bool,
    pub max_failures: u32,
    pub window: Duration,
    pub ban: Duration,
    pub max_ban: Duration,
    pub max_tracked: usize,
    /// How long a limited login waits for its 429: a flooding client then
    /// costs a timer instead of a request's work each time.
    pub limited_delay: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Client(IpAddr),
    User(String),
}

#[derive(Debug)]
struct Entry {
    /// Failures since `window_start`.
    failures: u32,
    window_start: Instant,
    banned_until: Option<Instant>,
    /// Bans so far; each doubles the next.
    strikes: u32,
    last_seen: Instant,
}

/// Which key is limited, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    Client,
    User,
}

pub struct Throttle {
    state: Mutex<State>,
}

struct State {
    /// Swapped by reloads; the counts survive them.
    config: ThrottleConfig,
    entries: HashMap<Key, Entry>,
}

/// Usernames longer than any valid one still count, under a bounded key.
const MAX_KEY_USERNAME: usize = 160;

impl Throttle {
    pub fn new(config: ThrottleConfig) -> Self {
        Self {
            state: Mutex::new(State {
                config,
                entries: HashMap::new(),
            }),
        }
    }

    pub fn set_config(&self, config: ThrottleConfig) {
        self.lock().config = config;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent across a panic elsewhere; keep using it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn keys(client: IpAddr, username: &str) -> [Key; 2] {
        let mut name = username;
        if name.len() > MAX_KEY_USERNAME {
            let mut end = MAX_KEY_USERNAME;
            while !name.is_char_boundary(end) {
                end -= 1;
            }
            name = &name[..end];
        }
        [Key::Client(client), Key::User(name.to_owned())]
    }

    /// `Err` with the time to wait when either key is banned.
    pub fn check(
        &self,
        client: IpAddr,
        username: &str,
        now: Instant,
    ) -> Result<(), (Limited, Duration)> {
        let state = self.lock();
        if !state.config.enabled {
            return Ok(());
        }
        let entries = &state.entries;
        let mut longest: Option<(Limited, Duration)> = None;
        for key in Self::keys(client, username) {
            let Some(until) = entries.get(&key).and_then(|e| e.banned_until) else {
                continue;
            };
            if until > now {
                let wait = until - now;
                let which = match key {
                    Key::Client(_) => Limited::Client,
                    Key::User(_) => Limited::User,
                };
                if longest.is_none_or(|(_, w)| wait > w) {
                    longest = Some((which, wait));
                }
            }
        }
        longest.map_or(Ok(()), Err)
    }

    /// Records a failed login; returns the ban it started, if any.
    pub fn fail(&self, client: IpAddr, username: &str, now: Instant) -> Option<Duration> {
        let mut state = self.lock();
        if !state.config.enabled {
            return None;
        }
        let c = state.config;
        let entries = &mut state.entries;
        let mut started = None;
        for key in Self::keys(client, username) {
            if !entries.contains_key(&key) && entries.len() >= c.max_tracked {
                make_room(entries, now, &c);
            }
            let e = entries.entry(key).or_insert(Entry {
                failures: 0,
                window_start: now,
                banned_until: None,
                strikes: 0,
                last_seen: now,
            });
            e.last_seen = now;
            if now.duration_since(e.window_start) > c.window {
                e.failures = 0;
                e.window_start = now;
            }
            e.failures += 1;
            if e.failures >= c.max_failures {
                let factor = 1u32.checked_shl(e.strikes.min(20)).unwrap_or(u32::MAX);
                let ban = c.ban.saturating_mul(factor).min(c.max_ban);
                e.banned_until = Some(now + ban);
                e.strikes = e.strikes.saturating_add(1);
                e.failures = 0;
                e.window_start = now;
                started = Some(started.map_or(ban, |b: Duration| b.max(ban)));
            }
        }
        started
    }

    /// A successful login clears the username's record, not the client's:
    /// an attacker must not reset their address's count with an account of
    /// their own.
    pub fn succeed(&self, username: &str) {
        let [_, user] = Self::keys(IpAddr::from([0, 0, 0, 0]), username);
        self.lock().entries.remove(&user);
    }

    pub fn tracked(&self) -> usize {
        self.lock().entries.len()
    }
}

/// Drops entries that no longer matter; if none, the least recently seen.
fn make_room(entries: &mut HashMap<Key, Entry>, now: Instant, c: &ThrottleConfig) {
    // An entry is stale once its window has passed, it is not banned, and a
    // max_ban has passed since it was last seen (so its strikes can lapse).
    let before = entries.len();
    entries.retain(|_, e| {
        let banned = e.banned_until.is_some_and(|u| u > now);
        let recent = now.duration_since(e.last_seen) < c.window.max(c.max_ban);
        banned || recent
    });
    if entries.len() < before {
        return;
    }
    if let Some(oldest) = entries
        .iter()
        .filter(|(_, e)| e.banned_until.is_none_or(|u| u <= now))
        .min_by_key(|(_, e)| e.last_seen)
        .or_else(|| entries.iter().min_by_key(|(_, e)| e.last_seen))
        .map(|(k, _)| k.clone())
    {
        entries.remove(&oldest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ThrottleConfig {
        ThrottleConfig {
            enabled: true,
            max_failures: 3,
            window: Duration::from_secs(60),
            ban: Duration::from_secs(10),
            max_ban: Duration::from_secs(35),
            max_tracked: 1000,
            limited_delay: Duration::ZERO,
        }
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn bans_after_max_failures_and_lifts_after_the_ban() {
        let t = Throttle::new(config());
        let t0 = Instant::now();
        assert_eq!(t.fail(ip(1), "alice", t0), None);
        assert_eq!(t.fail(ip(1), "alice", t0), None);
        assert!(t.check(ip(1), "alice", t0).is_ok());
        assert_eq!(t.fail(ip(1), "alice", t0), Some(Duration::from_secs(10)));
        let (_, wait) = t
            .check(ip(1), "alice", t0 + Duration::from_secs(4))
            .unwrap_err();
        assert_eq!(wait, Duration::from_secs(6));
        assert!(
            t.check(ip(1), "alice", t0 + Duration::from_secs(10))
                .is_ok()
        );
    }

    #[test]
    fn the_username_is_limited_from_any_address_and_the_address_for_any_username() {
        let t = Throttle::new(config());
        let t0 = Instant::now();
        for n in 1..=3 {
            t.fail(ip(n), "alice", t0);
        }
        assert_eq!(t.check(ip(9), "alice", t0).unwrap_err().0, Limited::User);
        assert!(t.check(ip(9), "bob", t0).is_ok());
        for name in ["a", "b", "c"] {
            t.fail(ip(7), name, t0);
        }
        assert_eq!(t.check(ip(7), "zed", t0).unwrap_err().0, Limited::Client);
    }

    #[test]
    fn bans_double_up_to_the_cap() {
        let t = Throttle::new(config());
        let mut now = Instant::now();
        let mut bans = Vec::new();
        for _ in 0..4 {
            let mut ban = None;
            for _ in 0..3 {
                ban = t.fail(ip(1), "alice", now);
            }
            bans.push(ban.unwrap());
            now += ban.unwrap();
        }
        let secs: Vec<u64> = bans.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [10, 20, 35, 35]);
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let t = Throttle::new(config());
        let t0 = Instant::now();
        t.fail(ip(1), "alice", t0);
        t.fail(ip(1), "alice", t0);
        assert_eq!(t.fail(ip(1), "alice", t0 + Duration::from_secs(61)), None);
    }

    #[test]
    fn success_clears_the_username_but_not_the_address() {
        let t = Throttle::new(config());
        let t0 = Instant::now();
        t.fail(ip(1), "alice", t0);
        t.fail(ip(1), "alice", t0);
        t.succeed("alice");
        assert_eq!(t.fail(ip(2), "alice", t0), None, "alice's count restarted");
        assert!(
            t.fail(ip(1), "mallory", t0).is_some(),
            "the address kept its count"
        );
    }

    #[test]
    fn memory_stays_bounded_and_bans_survive_eviction_pressure() {
        let t = Throttle::new(ThrottleConfig {
            max_tracked: 50,
            ..config()
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            t.fail(ip(1), "victim", t0);
        }
        for n in 0..10_000u32 {
            t.fail(IpAddr::from(n.to_be_bytes()), &format!("u{n}"), t0);
        }
        assert!(t.tracked() <= 50, "{}", t.tracked());
        assert!(
            t.check(ip(200), "victim", t0).is_err(),
            "a live ban was evicted"
        );
    }

    #[test]
    fn disabled_never_limits() {
        let t = Throttle::new(ThrottleConfig {
            enabled: false,
            ..config()
        });
        let t0 = Instant::now();
        for _ in 0..10 {
            assert_eq!(t.fail(ip(1), "a", t0), None);
        }
        assert!(t.check(ip(1), "a", t0).is_ok());
    }

    #[test]
    fn huge_usernames_share_a_bounded_key() {
        let t = Throttle::new(config());
        let t0 = Instant::now();
        let long = "é".repeat(10_000);
        for n in 0..3 {
            t.fail(ip(n), &long, t0);
        }
        assert!(t.check(ip(50), &long, t0).is_err());
    }
}

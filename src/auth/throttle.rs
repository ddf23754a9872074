//! Login throttling: failures are counted per client address and per
//! username; past `max_failures` within `window` the key is banned, and each
//! further ban on the same key doubles, up to `max_ban`. While banned, even
//! the right password gets 429. Memory is bounded by `max_tracked` keys
//! whatever an attacker varies.
//!
//! Attempts in flight count as failures until they resolve: a login reserves
//! a slot on both keys before its password is hashed ([`Throttle::reserve`]),
//! so guesses sent in parallel cannot all get a try before the first failure
//! is recorded. A key never has more than `max_failures` attempts failed or
//! in flight, and so starts one ban at a time.
//!
//! Across all keys, failures draw on a global budget (a token bucket of
//! `global_failure_rate` per second); while it is overdrawn every login waits
//! before its hash, up to `global_max_delay`, so a spray from many addresses
//! over many usernames is slowed without refusing anyone.
//!
//! Every method takes `now`, so the policy is tested without a clock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::ThrottleConfig;
use crate::store::control::Bans;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Client(IpAddr),
    User(String),
}

#[derive(Debug)]
struct Counts {
    /// Failures since `window_start`.
    failures: u32,
    /// Reserved attempts not yet resolved; they count against
    /// `max_failures` as if they had failed.
    in_flight: u32,
    window_start: Instant,
    banned_until: Option<Instant>,
    /// Bans so far; each doubles the next.
    strikes: u32,
    last_seen: Instant,
}

impl Counts {
    fn new(now: Instant) -> Self {
        Counts {
            failures: 0,
            in_flight: 0,
            window_start: now,
            banned_until: None,
            strikes: 0,
            last_seen: now,
        }
    }

    fn banned(&self, now: Instant) -> Option<Duration> {
        self.banned_until.filter(|u| *u > now).map(|u| u - now)
    }
}

/// Which key is limited, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    Client,
    User,
}

/// What a key with every slot failed or in flight (but no ban yet) tells
/// the client to wait: the attempts in flight resolve within a hash.
const BUSY_RETRY: Duration = Duration::from_secs(1);

pub struct Throttle {
    state: Mutex<State>,
}

struct State {
    /// Swapped by reloads; the counts survive them.
    config: ThrottleConfig,
    entries: HashMap<Key, Counts>,
    budget: Budget,
}

/// The global failure budget: a token bucket holding up to a second of
/// `global_failure_rate`, which failures may overdraw by up to
/// `global_max_delay` worth; the overdraft is how long a login waits.
struct Budget {
    tokens: f64,
    updated: Instant,
}

impl Budget {
    fn refill(&mut self, c: &ThrottleConfig, now: Instant) {
        let rate = f64::from(c.global_failure_rate);
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.updated = self.updated.max(now);
    }

    fn delay(&self, c: &ThrottleConfig) -> Duration {
        if self.tokens >= 0.0 {
            return Duration::ZERO;
        }
        let wait = -self.tokens / f64::from(c.global_failure_rate);
        Duration::from_secs_f64(wait).min(c.global_max_delay)
    }

    fn charge(&mut self, c: &ThrottleConfig) {
        let floor = -(f64::from(c.global_failure_rate) * c.global_max_delay.as_secs_f64());
        self.tokens = (self.tokens - 1.0).max(floor);
    }
}

/// Usernames longer than any valid one still count, under a bounded key.
const MAX_KEY_USERNAME: usize = 160;

/// A login attempt holding a slot on its client's and its username's
/// counts. Resolve it with [`Attempt::fail`] or [`Attempt::succeed`];
/// dropped unresolved (the client left mid-hash, the store failed), it
/// gives its slots back without counting a failure.
pub struct Attempt<'a> {
    throttle: &'a Throttle,
    /// `None` once resolved, or when the throttle was off at reservation.
    keys: Option<[Key; 2]>,
}

impl Throttle {
    pub fn new(config: ThrottleConfig) -> Self {
        Self {
            state: Mutex::new(State {
                config,
                entries: HashMap::new(),
                budget: Budget {
                    tokens: f64::from(config.global_failure_rate),
                    updated: Instant::now(),
                },
            }),
        }
    }

    /// The policy in force (a reload may change it).
    pub fn config(&self) -> ThrottleConfig {
        self.lock().config
    }

    pub fn set_config(&self, config: ThrottleConfig) {
        self.lock().config = config;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent across a panic elsewhere; keep using it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bans in force now, longest first: who, and for how much longer.
    pub fn bans(&self, now: Instant) -> Vec<(String, Duration)> {
        let state = self.lock();
        let mut bans: Vec<(String, Duration)> = state
            .entries
            .iter()
            .filter_map(|(key, counts)| {
                let left = counts.banned(now)?;
                let who = match key {
                    Key::Client(ip) => ip.to_string(),
                    Key::User(name) => name.clone(),
                };
                Some((who, left))
            })
            .collect();
        bans.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        bans
    }

    /// Forgets an address's or a username's failures and ban at once, as
    /// if it had never failed; `false` when nothing was recorded for it.
    /// Text that parses as an IP address names the address.
    pub fn lift(&self, who: &str) -> bool {
        let key = match who.parse::<IpAddr>() {
            Ok(ip) => Key::Client(ip),
            Err(_) => Self::keys(IpAddr::from([0, 0, 0, 0]), who)[1].clone(),
        };
        let mut state = self.lock();
        match state.entries.get_mut(&key) {
            // A slot in flight stays reserved: its guard gives it back.
            Some(counts) => {
                let had = counts.failures > 0 || counts.banned_until.is_some();
                counts.failures = 0;
                counts.banned_until = None;
                counts.strikes = 0;
                had
            }
            None => false,
        }
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

    /// Reserves a slot for one login on both keys, or `Err` with the time to
    /// wait when either key is banned or has every slot failed or in flight.
    /// Checking and reserving are one step under the lock, so parallel
    /// attempts cannot all pass the check.
    pub fn reserve(
        &self,
        client: IpAddr,
        username: &str,
        now: Instant,
    ) -> Result<Attempt<'_>, (Limited, Duration)> {
        let mut state = self.lock();
        let c = state.config;
        if !c.enabled {
            return Ok(Attempt {
                throttle: self,
                keys: None,
            });
        }
        let keys = Self::keys(client, username);
        let mut longest: Option<(Limited, Duration)> = None;
        for key in &keys {
            let Some(e) = state.entries.get_mut(key) else {
                continue;
            };
            if e.banned(now).is_none() && now.duration_since(e.window_start) > c.window {
                e.failures = 0;
                e.window_start = now;
            }
            let wait = match e.banned(now) {
                Some(wait) => wait,
                None if e.failures.saturating_add(e.in_flight) >= c.max_failures => BUSY_RETRY,
                None => continue,
            };
            let which = match key {
                Key::Client(_) => Limited::Client,
                Key::User(_) => Limited::User,
            };
            if longest.is_none_or(|(_, w)| wait > w) {
                longest = Some((which, wait));
            }
        }
        if let Some(limited) = longest {
            return Err(limited);
        }
        for key in &keys {
            if !state.entries.contains_key(key) && state.entries.len() >= c.max_tracked {
                make_room(&mut state.entries, now, &c);
            }
            let e = state
                .entries
                .entry(key.clone())
                .or_insert_with(|| Counts::new(now));
            e.in_flight = e.in_flight.saturating_add(1);
            e.last_seen = now;
        }
        Ok(Attempt {
            throttle: self,
            keys: Some(keys),
        })
    }

    /// How long a login waits before its hash while the global failure
    /// budget is overdrawn.
    pub fn global_delay(&self, now: Instant) -> Duration {
        let mut state = self.lock();
        let c = state.config;
        if !c.enabled || c.global_max_delay.is_zero() {
            return Duration::ZERO;
        }
        state.budget.refill(&c, now);
        state.budget.delay(&c)
    }

    pub fn tracked(&self) -> usize {
        self.lock().entries.len()
    }
}

impl Attempt<'_> {
    /// Records the attempt as failed; returns the ban it started, if any.
    pub fn fail(mut self, now: Instant) -> Option<Duration> {
        let keys = self.keys.take()?;
        let mut state = self.throttle.lock();
        let c = state.config;
        if !c.enabled {
            release(&mut state.entries, &keys);
            return None;
        }
        state.budget.refill(&c, now);
        state.budget.charge(&c);
        let mut started = None;
        for key in keys {
            // An entry evicted under memory pressure while in flight comes
            // back as new rather than losing the failure.
            let e = state.entries.entry(key).or_insert_with(|| Counts::new(now));
            e.in_flight = e.in_flight.saturating_sub(1);
            e.last_seen = now;
            e.failures = e.failures.saturating_add(1);
            // A failure while banned (possible only after a reload lowered
            // max_failures) does not escalate the ban it is under.
            if e.failures >= c.max_failures && e.banned(now).is_none() {
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

    /// A successful login gives its slots back and clears the username's
    /// record, not the client's: an attacker must not reset their address's
    /// count with an account of their own.
    pub fn succeed(mut self) {
        let Some(keys) = self.keys.take() else {
            return;
        };
        let mut state = self.throttle.lock();
        release(&mut state.entries, &keys);
        let [_, user] = &keys;
        if let Some(e) = state.entries.get_mut(user) {
            if e.in_flight == 0 {
                state.entries.remove(user);
            } else {
                e.failures = 0;
                e.strikes = 0;
                e.banned_until = None;
            }
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if let Some(keys) = self.keys.take() {
            release(&mut self.throttle.lock().entries, &keys);
        }
    }
}

fn release(entries: &mut HashMap<Key, Counts>, keys: &[Key; 2]) {
    for key in keys {
        if let Some(e) = entries.get_mut(key) {
            e.in_flight = e.in_flight.saturating_sub(1);
        }
    }
}

/// Drops entries that no longer matter; if none, the least recently seen.
fn make_room(entries: &mut HashMap<Key, Counts>, now: Instant, c: &ThrottleConfig) {
    // An entry is stale once its window has passed, it is not banned, has
    // nothing in flight, and a max_ban has passed since it was last seen (so
    // its strikes can lapse).
    let before = entries.len();
    entries.retain(|_, e| {
        let banned = e.banned(now).is_some();
        let recent = now.duration_since(e.last_seen) < c.window.max(c.max_ban);
        banned || recent || e.in_flight > 0
    });
    if entries.len() < before {
        return;
    }
    if let Some(oldest) = entries
        .iter()
        .filter(|(_, e)| e.banned(now).is_none() && e.in_flight == 0)
        .min_by_key(|(_, e)| e.last_seen)
        .or_else(|| entries.iter().min_by_key(|(_, e)| e.last_seen))
        .map(|(k, _)| k.clone())
    {
        entries.remove(&oldest);
    }
}

impl Bans for Throttle {
    fn list(&self) -> Vec<(String, u64)> {
        self.bans(Instant::now())
            .into_iter()
            // Rounded up: a ban with 0.4 s left is still in force.
            .map(|(who, left)| (who, left.as_secs() + u64::from(left.subsec_nanos() > 0)))
            .collect()
    }

    fn lift(&self, who: &str) -> bool {
        Throttle::lift(self, who)
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
            global_failure_rate: 1000,
            global_max_delay: Duration::from_secs(2),
        }
    }

    /// One failed attempt, or `None` when it was not let through.
    fn fail(t: &Throttle, client: IpAddr, name: &str, now: Instant) -> Option<Duration> {
        t.reserve(client, name, now).ok()?.fail(now)
    }

    fn check(
        t: &Throttle,
        client: IpAddr,
        name: &str,
        now: Instant,
    ) -> Result<(), (Limited, Duration)> {
        t.reserve(client, name, now).map(drop)
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn bans_after_max_failures_and_lifts_after_the_ban() {
        let t = Throttle::new(config());
        let t0 = Instant::now();
        assert_eq!(fail(&t, ip(1), "alice", t0), None);
        assert_eq!(fail(&t, ip(1), "alice", t0), None);
        assert!(check(&t, ip(1), "alice", t0).is_ok());
        assert_eq!(fail(&t, ip(1), "alice", t0), Some(Duration::from_secs(10)));
        let (_, wait) = check(&t, ip(1), "alice", t0 + Duration::from_secs(4)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(6));
        assert!(check(&t, ip(1), "alice", t0 + Duration::from_secs(10)).is_ok());
    }

    #[test]
    fn the_username_is_limited_from_any_address_and_the_address_for_any_username() {
        let t = Throttle::new(config());
        let t0 = Instant::now();
        for n in 1..=3 {
            fail(&t, ip(n), "alice", t0);
        }
        assert_eq!(check(&t, ip(9), "alice", t0).unwrap_err().0, Limited::User);
        assert!(check(&t, ip(9), "bob", t0).is_ok());
        for name in ["a", "b", "c"] {
            fail(&t, ip(7), name, t0);
        }
        assert_eq!(check(&t, ip(7), "zed", t0).unwrap_err().0, Limited::Client);
    }

    #[test]
    fn bans_double_up_to_the_cap() {
        let t = Throttle::new(config());
        let mut now = Instant::now();
        let mut bans = Vec::new();
        for _ in 0..4 {
            let mut ban = None;
            for _ in 0..3 {
                ban = fail(&t, ip(1), "alice", now);
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
        fail(&t, ip(1), "alice", t0);
        fail(&t, ip(1), "alice", t0);
        assert_eq!(fail(&t, ip(1), "alice", t0 + Duration::from_secs(61)), None);
    }

    #[test]
    fn success_clears_the_username_but_not_the_address() {
        let t = Throttle::new(config());
        let t0 = Instant::now();
        fail(&t, ip(1), "alice", t0);
        fail(&t, ip(1), "alice", t0);
        t.reserve(ip(3), "alice", t0).unwrap().succeed();
        assert_eq!(
            fail(&t, ip(2), "alice", t0),
            None,
            "alice's count restarted"
        );
        assert!(
            fail(&t, ip(1), "mallory", t0).is_some(),
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
            fail(&t, ip(1), "victim", t0);
        }
        for n in 0..10_000u32 {
            fail(&t, IpAddr::from(n.to_be_bytes()), &format!("u{n}"), t0);
        }
        assert!(t.tracked() <= 50, "{}", t.tracked());
        assert!(
            check(&t, ip(200), "victim", t0).is_err(),
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
            assert_eq!(fail(&t, ip(1), "a", t0), None);
        }
        assert!(check(&t, ip(1), "a", t0).is_ok());
    }

    #[test]
    fn huge_usernames_share_a_bounded_key() {
        let t = Throttle::new(config());
        let t0 = Instant::now();
        let long = "é".repeat(10_000);
        for n in 0..3 {
            fail(&t, ip(n), &long, t0);
        }
        assert!(check(&t, ip(50), &long, t0).is_err());
    }

    #[test]
    fn attempts_in_flight_count_as_failures() {
        let t = Throttle::new(config());
        let t0 = Instant::now();
        let held: Vec<_> = (0..3)
            .map(|_| t.reserve(ip(1), "alice", t0).unwrap())
            .collect();
        let (which, wait) = check(&t, ip(1), "alice", t0).unwrap_err();
        assert_eq!((which, wait), (Limited::Client, BUSY_RETRY));
        assert_eq!(check(&t, ip(2), "alice", t0).unwrap_err().0, Limited::User);
        assert!(check(&t, ip(2), "bob", t0).is_ok());
        drop(held);
        assert!(
            check(&t, ip(1), "alice", t0).is_ok(),
            "dropped attempts give their slots back"
        );
    }

    #[test]
    fn a_racing_burst_starts_one_ban() {
        let t = Throttle::new(config());
        let t0 = Instant::now();
        let held: Vec<_> = (0..3)
            .map(|_| t.reserve(ip(1), "alice", t0).unwrap())
            .collect();
        let bans: Vec<_> = held.into_iter().filter_map(|a| a.fail(t0)).collect();
        assert_eq!(bans, [Duration::from_secs(10)]);
        let (_, wait) = check(&t, ip(1), "alice", t0).unwrap_err();
        assert_eq!(
            wait,
            Duration::from_secs(10),
            "the first ban, not escalated"
        );
    }

    #[test]
    fn a_success_in_flight_beside_others_keeps_their_slots() {
        let t = Throttle::new(config());
        let t0 = Instant::now();
        let a = t.reserve(ip(1), "alice", t0).unwrap();
        let b = t.reserve(ip(2), "alice", t0).unwrap();
        a.succeed();
        let _c = t.reserve(ip(3), "alice", t0).unwrap();
        let _d = t.reserve(ip(4), "alice", t0).unwrap();
        assert!(
            check(&t, ip(5), "alice", t0).is_err(),
            "b, c and d are in flight"
        );
        drop(b);
        assert!(check(&t, ip(5), "alice", t0).is_ok());
    }

    /// Many threads reserving and resolving on a few keys: no key ever has
    /// more than `max_failures` attempts failed or in flight, and each key
    /// starts exactly one ban (the clock stands still, so bans never lift).
    #[test]
    fn throttle_under_concurrency_never_lets_more_than_max_failures_through() {
        use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
        const KEYS: usize = 4;
        let t = Throttle::new(config());
        let t0 = Instant::now();
        // Per key: attempts let through and not given back (failed or open),
        // raised after a reservation and lowered before a release, so it
        // never undercounts what the throttle let through.
        let clients: [AtomicU32; KEYS] = Default::default();
        let users: [AtomicU32; KEYS] = Default::default();
        let bans = AtomicU32::new(0);
        let granted = AtomicU32::new(0);
        std::thread::scope(|s| {
            for thread in 0..8u64 {
                let (t, clients, users, bans, granted) = (&t, &clients, &users, &bans, &granted);
                s.spawn(move || {
                    let mut rng = thread.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                    for _ in 0..20_000 {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let (c, u) = (
                            (rng % KEYS as u64) as usize,
                            ((rng >> 8) % KEYS as u64) as usize,
                        );
                        let Ok(attempt) = t.reserve(ip(c as u8), &format!("u{u}"), t0) else {
                            continue;
                        };
                        granted.fetch_add(1, SeqCst);
                        let open_c = clients[c].fetch_add(1, SeqCst) + 1;
                        let open_u = users[u].fetch_add(1, SeqCst) + 1;
                        assert!(open_c <= 3 && open_u <= 3, "client {open_c}, user {open_u}");
                        std::thread::yield_now();
                        if (rng >> 16) % 3 == 0 {
                            clients[c].fetch_sub(1, SeqCst);
                            users[u].fetch_sub(1, SeqCst);
                            drop(attempt);
                        } else if attempt.fail(t0).is_some() {
                            bans.fetch_add(1, SeqCst);
                        }
                    }
                });
            }
        });
        assert!(granted.load(SeqCst) > 0);
        // Each key starts one ban; one failure may start two (its client's
        // and its username's) and is logged once.
        assert!(
            bans.load(SeqCst) as usize <= 2 * KEYS,
            "{}",
            bans.load(SeqCst)
        );
        for n in 0..KEYS {
            assert!(clients[n].load(SeqCst) <= 3 && users[n].load(SeqCst) <= 3);
        }
    }

    #[test]
    fn the_global_budget_slows_logins_once_overdrawn_and_recovers() {
        let t = Throttle::new(ThrottleConfig {
            max_failures: 1000,
            global_failure_rate: 10,
            global_max_delay: Duration::from_secs(2),
            ..config()
        });
        let t0 = Instant::now();
        // A spray: each failure from its own address, on its own username.
        for n in 0..10u8 {
            fail(&t, ip(n), &format!("u{n}"), t0);
        }
        assert_eq!(
            t.global_delay(t0),
            Duration::ZERO,
            "a second's worth is free"
        );
        for n in 10..15u8 {
            fail(&t, ip(n), &format!("u{n}"), t0);
        }
        assert_eq!(t.global_delay(t0), Duration::from_millis(500));
        for n in 15..200u8 {
            fail(&t, ip(n), &format!("u{n}"), t0);
        }
        assert_eq!(t.global_delay(t0), Duration::from_secs(2), "bounded");
        let later = t0 + Duration::from_millis(1500);
        assert_eq!(t.global_delay(later), Duration::from_millis(500));
        assert_eq!(t.global_delay(t0 + Duration::from_secs(2)), Duration::ZERO);
        let off = Throttle::new(ThrottleConfig {
            global_max_delay: Duration::ZERO,
            ..config()
        });
        for n in 0..200u8 {
            fail(&off, ip(n), &format!("u{n}"), t0);
        }
        assert_eq!(off.global_delay(t0), Duration::ZERO);
    }

    #[test]
    fn bans_are_listed_and_lifted_by_address_or_username() {
        let t = Throttle::new(config());
        let now = Instant::now();
        for _ in 0..5 {
            fail(&t, ip(1), "eve", now);
        }
        let bans = t.bans(now);
        let who: Vec<&str> = bans.iter().map(|(w, _)| w.as_str()).collect();
        assert_eq!(bans.len(), 2, "{bans:?}");
        assert!(who.contains(&"eve") && who.contains(&ip(1).to_string().as_str()));
        assert!(bans.iter().all(|(_, left)| !left.is_zero()));
        assert!(t.lift("eve"));
        assert!(!t.lift("eve"), "nothing left to lift");
        assert!(!t.lift("nobody"));
        assert_eq!(t.bans(now).len(), 1);
        // Still limited by the address, not by the name any more.
        assert!(check(&t, ip(1), "eve", now).is_err());
        assert!(check(&t, ip(2), "eve", now).is_ok());
        assert!(t.lift(&ip(1).to_string()));
        assert!(t.bans(now).is_empty());
        assert!(check(&t, ip(1), "eve", now).is_ok());
    }
}

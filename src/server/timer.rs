//! hyper's header-read timer, coarse and cheap.
//!
//! hyper arms a timer for every HTTP/1 request head: it boxes a sleep when
//! the connection starts waiting for a head and drops it once the head is
//! in. With tokio's timer that is a timer-wheel insertion and removal per
//! request, about 6 % of the whole 401 path, for a deadline that is
//! almost never reached. Here arming is an entry in a slab under a mutex,
//! and one task per timer walks the entries every `tick`, waking those past
//! their deadline: a deadline is met within one tick after it passes.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Independent slabs, so that worker threads arming timers at once do not
/// queue on one lock. A thread keeps to one shard.
const SHARDS: usize = 8;

#[derive(Clone)]
pub struct CoarseTimer {
    wheel: Arc<Wheel>,
}

struct Wheel {
    shards: [Mutex<Slab>; SHARDS],
    tick: Duration,
    /// Whether the task firing deadlines runs. The atomic is read without
    /// the lock on every arming; the lock orders starting and stopping.
    ticking: Mutex<()>,
    running: AtomicBool,
}

#[derive(Default)]
struct Slab {
    entries: Vec<Option<Deadline>>,
    free: Vec<usize>,
    armed: usize,
}

struct Deadline {
    deadline: Instant,
    waker: Option<Waker>,
    fired: bool,
}

impl CoarseTimer {
    /// Deadlines are met within `tick` after they pass.
    pub fn new(tick: Duration) -> Self {
        Self {
            wheel: Arc::new(Wheel {
                shards: Default::default(),
                tick,
                ticking: Mutex::new(()),
                running: AtomicBool::new(false),
            }),
        }
    }

    /// How many sleeps are armed (for tests).
    pub fn armed(&self) -> usize {
        self.wheel.shards.iter().map(|s| lock(s).armed).sum()
    }
}

impl hyper::rt::Timer for CoarseTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Sleep {
            wheel: Arc::clone(&self.wheel),
            deadline,
            slot: None,
        })
    }
}

/// A deadline; armed (given a slab entry) when first polled, so a head that
/// arrives whole with its first read never touches the slab.
struct Sleep {
    wheel: Arc<Wheel>,
    deadline: Instant,
    /// Shard and entry, once armed.
    slot: Option<(usize, usize)>,
}

impl hyper::rt::Sleep for Sleep {}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if let Some((shard, key)) = this.slot {
            let mut slab = lock(&this.wheel.shards[shard]);
            let Some(entry) = slab.entries.get_mut(key).and_then(Option::as_mut) else {
                return Poll::Ready(());
            };
            if entry.fired {
                return Poll::Ready(());
            }
            let replaced = match &entry.waker {
                Some(w) if w.will_wake(cx.waker()) => None,
                _ => entry.waker.replace(cx.waker().clone()),
            };
            drop(slab);
            drop(replaced);
            return Poll::Pending;
        }
        let shard = shard_of_this_thread();
        let key = lock(&this.wheel.shards[shard]).insert(Deadline {
            deadline: this.deadline,
            waker: Some(cx.waker().clone()),
            fired: false,
        });
        this.slot = Some((shard, key));
        Wheel::ensure_ticking(&this.wheel);
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some((shard, key)) = self.slot {
            let waker = lock(&self.wheel.shards[shard]).remove(key);
            // A waker's drop may run arbitrary code: not under the lock.
            drop(waker);
        }
    }
}

impl Slab {
    fn insert(&mut self, entry: Deadline) -> usize {
        self.armed += 1;
        match self.free.pop() {
            Some(key) => {
                self.entries[key] = Some(entry);
                key
            }
            None => {
                self.entries.push(Some(entry));
                self.entries.len() - 1
            }
        }
    }

    fn remove(&mut self, key: usize) -> Option<Waker> {
        let entry = self.entries.get_mut(key)?.take()?;
        self.armed -= 1;
        self.free.push(key);
        entry.waker
    }

    /// Marks the entries past `now` fired and hands over their wakers.
    fn fire(&mut self, now: Instant, due: &mut Vec<Waker>) {
        for entry in self.entries.iter_mut().flatten() {
            if !entry.fired && entry.deadline <= now {
                entry.fired = true;
                due.extend(entry.waker.take());
            }
        }
    }
}

impl Wheel {
    /// Starts the task firing deadlines unless it runs. It stops when it
    /// finds nothing armed, and the next armed sleep starts it again.
    fn ensure_ticking(this: &Arc<Self>) {
        if this.running.load(Ordering::Acquire) {
            return;
        }
        let ticking = lock(&this.ticking);
        if this.running.load(Ordering::Acquire) {
            return;
        }
        // Outside a runtime there is nothing to spawn on; the next poll
        // tries again. hyper polls its timer only inside one.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        this.running.store(true, Ordering::Release);
        drop(ticking);
        runtime.spawn(ticker(Arc::downgrade(this), this.tick));
    }
}

async fn ticker(wheel: Weak<Wheel>, tick: Duration) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut due = Vec::new();
    loop {
        interval.tick().await;
        let Some(wheel) = wheel.upgrade() else {
            return;
        };
        let now = Instant::now();
        let mut armed = 0;
        for shard in &wheel.shards {
            let mut slab = lock(shard);
            slab.fire(now, &mut due);
            armed += slab.armed;
        }
        for waker in due.drain(..) {
            waker.wake();
        }
        if armed == 0 {
            let _ticking = lock(&wheel.ticking);
            wheel.running.store(false, Ordering::SeqCst);
            // Re-checked once stopped: a sleep armed before the store may
            // have found the task running and counts on it.
            if wheel.shards.iter().all(|s| lock(s).armed == 0) {
                return;
            }
            wheel.running.store(true, Ordering::SeqCst);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The slabs stay consistent whatever panicked while holding them.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn shard_of_this_thread() -> usize {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    SHARD.with(|shard| {
        if shard.get() == usize::MAX {
            shard.set(NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS);
        }
        shard.get()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Timer;

    #[tokio::test]
    async fn a_sleep_ends_within_a_tick_of_its_deadline() {
        let timer = CoarseTimer::new(Duration::from_millis(20));
        let started = Instant::now();
        timer.sleep(Duration::from_millis(100)).await;
        let slept = started.elapsed();
        assert!(slept >= Duration::from_millis(100), "{slept:?}");
        assert!(slept < Duration::from_millis(1000), "{slept:?}");
        assert_eq!(timer.armed(), 0);
    }

    #[tokio::test]
    async fn a_sleep_dropped_early_leaves_nothing_armed_and_others_still_fire() {
        let timer = CoarseTimer::new(Duration::from_millis(10));
        let mut early = timer.sleep(Duration::from_secs(60));
        let polled = std::future::poll_fn(|cx| Poll::Ready(early.as_mut().poll(cx))).await;
        assert!(polled.is_pending());
        assert_eq!(timer.armed(), 1);
        drop(early);
        assert_eq!(timer.armed(), 0);
        // The ticker stopped with nothing armed; the next sleep starts it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        tokio::time::timeout(
            Duration::from_secs(5),
            timer.sleep(Duration::from_millis(30)),
        )
        .await
        .expect("a sleep armed after the ticker stopped never fired");
    }

    #[tokio::test]
    async fn a_sleep_never_polled_is_never_armed() {
        let timer = CoarseTimer::new(Duration::from_millis(10));
        drop(timer.sleep(Duration::from_millis(1)));
        assert_eq!(timer.armed(), 0);
    }
}

//! How long `tokengate serve` takes to start on a big store: the time from
//! spawning the binary until it forwards a request made with one of the
//! stored tokens. A measurement, not a check (timings are printed, never
//! asserted):
//!
//! ```sh
//! TOKENGATE_RESTART_TOKENS=1000000 cargo test --release --test restart_time -- --ignored --nocapture
//! ```
//!
//! The tokens are written through the library (`Store::issue_token`, each
//! one flushed, as a login would), from a few threads at once.

mod common;

use std::time::{Duration, Instant};

use common::binary::{Env, Server};
use tokengate::store::Store;

const THREADS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: builds a store of TOKENGATE_RESTART_TOKENS (default 1000000) tokens"]
async fn start_time_with_a_big_store() {
    let count: usize = std::env::var("TOKENGATE_RESTART_TOKENS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let upstream = common::echo_upstream().await;
    let env = Env::new(&common::config_text(
        &format!("http://{}", upstream.addr),
        "",
    ));
    env.add_user("bulk", "pw-bulk");

    let started = Instant::now();
    let sample = {
        let store = Store::open(&env.store_path()).unwrap();
        let user = store.user("bulk").unwrap().unwrap();
        let per_thread = count.div_ceil(THREADS);
        let sample = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (store, user) = (&store, &user);
                    s.spawn(move || {
                        let mut kept = Vec::new();
                        for i in 0..per_thread.min(count.saturating_sub(t * per_thread)) {
                            let (token, _) = store.issue_token(user, None, None, &[]).unwrap();
                            if i % 10_000 == 0 {
                                kept.push(token.expose().to_owned());
                            }
                            if t == 0 && i % 50_000 == 0 && i > 0 {
                                eprintln!("  {} tokens in {:.0?}", i * THREADS, started.elapsed());
                            }
                        }
                        kept
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        });
        assert_eq!(store.tokens(Some("bulk")).unwrap().len(), count);
        sample
    };
    let written = started.elapsed();
    let size = dir_size(&env.store_path());
    eprintln!(
        "restart time: {count} tokens written in {written:.1?} ({:.0}/s), store {:.0} MiB",
        count as f64 / written.as_secs_f64(),
        size as f64 / (1024.0 * 1024.0)
    );

    // A clean start, a start after SIGKILL, and another clean one.
    for (round, how) in ["after the bulk write", "after SIGKILL", "after SIGTERM"]
        .into_iter()
        .enumerate()
    {
        let t0 = Instant::now();
        let server = Server::start(&env).expect("serve starts");
        let listening = t0.elapsed();
        let token = &sample[round % sample.len()];
        let req = common::binary::get_request("/ready", token);
        match common::binary::try_send(server.addr, req, Duration::from_secs(60)).await {
            Some((s, _)) if s == 200 => {}
            other => panic!("a stored token failed: {other:?}"),
        }
        let serving = t0.elapsed();
        eprintln!(
            "restart time {how}: listening (and admin socket up) after {listening:.2?}, first authorized request answered after {serving:.2?}"
        );
        if round == 0 {
            server.kill9();
        } else {
            assert!(server.stop().success());
        }
    }
}

fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

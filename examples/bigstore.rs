//! Builds a store with many tokens for the benchmark (`bench/run.sh`).
//!
//! `cargo run --release --example bigstore -- SRC DST COUNT SECRETS` copies
//! the store at SRC (made with the real CLI: a user and an issued token)
//! into the empty store at DST, adds tokens for SRC's first user until DST
//! holds COUNT tokens, and writes 999 of the new tokens, spread over the
//! whole store, to the file SECRETS, one a line. It goes through `Store::snapshot` and `Store::load`,
//! the same calls `tokengate backup` and `restore` make, so a million
//! tokens cost one transaction and one flush instead of a million fsyncs.
//! Neither store may be open in a running gateway.

use std::path::PathBuf;

use tokengate::store::token::Token;
use tokengate::store::{Store, TokenRecord, User, now};

/// How many of the new tokens are written out for the load generator.
const SECRETS: usize = 999;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [src, dst, count, secrets_path] = args.as_slice() else {
        return Err("usage: bigstore SRC DST COUNT SECRETS".into());
    };
    let count: usize = count.parse()?;
    let src = Store::open(&PathBuf::from(src))?;
    let mut entries: Vec<(String, Vec<u8>, Vec<u8>)> = Vec::new();
    src.snapshot(|tree, key, value| {
        entries.push((tree.to_owned(), key.to_vec(), value.to_vec()));
        Ok(())
    })?;
    drop(src);
    let user: User = entries
        .iter()
        .find(|(tree, _, _)| tree == "users")
        .map(|(_, _, value)| serde_json::from_slice(value))
        .ok_or("the source store has no user")??;
    let existing = entries
        .iter()
        .filter(|(tree, _, _)| tree == "tokens")
        .count();
    let created_at = now();
    let record = TokenRecord {
        user: user.username.clone(),
        epoch: user.epoch,
        created_at,
        expires_at: None,
        label: Some("bench".into()),
        last_used_at: None,
        scopes: Vec::new(),
    };
    let value = serde_json::to_vec(&record)?;
    let new = count.saturating_sub(existing);
    let every = (new / SECRETS).max(1);
    let mut secrets = String::new();
    for i in 0..new {
        let token = Token::generate()?;
        if i % every == 0 && secrets.len() / (token.expose().len() + 1) < SECRETS {
            secrets.push_str(token.expose());
            secrets.push('\n');
        }
        let digest = token.digest();
        // The `user_tokens` index key: username ‖ 0x00 ‖ digest (see store.rs).
        let mut index = user.username.as_bytes().to_vec();
        index.push(0);
        index.extend_from_slice(&digest.0);
        entries.push(("tokens".into(), digest.0.to_vec(), value.clone()));
        entries.push(("user_tokens".into(), index, Vec::new()));
    }
    std::fs::write(secrets_path, secrets)?;
    let started = std::time::Instant::now();
    Store::open(&PathBuf::from(dst))?.load(&entries)?;
    eprintln!(
        "bigstore: {} tokens for `{}` loaded in {:.1?}",
        count.max(existing),
        user.username,
        started.elapsed()
    );
    Ok(())
}

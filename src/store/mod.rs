//! The user and token store, behind one handle ([`Store`]). Users and
//! tokens live in an embedded sled database ([`embedded`]) or in a
//! PostgreSQL database several gateways share ([`postgres`]); every
//! backend keeps the same records
//! ([`records`]), fails with the same errors ([`error`]) and announces
//! what may have changed the same way ([`changes`]).
//!
//! Each user carries a random `epoch`, copied into every token issued to
//! them. Changing the password, disabling or removing the user, or revoking
//! all of their tokens sets a new epoch in one write, which ends every
//! token at once — including one a concurrent login is about to store.
//!
//! A check holds for one request; a tunnel outlives its request, so every
//! write that ends tokens is also announced (`Store::revocations`) once it
//! is durable and the generation has moved on, for the tunnel to close.

pub mod backup;
pub mod changes;
pub mod control;
pub mod embedded;
pub mod error;
pub mod files;
mod handle;
pub mod postgres;
pub mod records;
pub mod token;

pub use changes::Revoked;
pub use embedded::TREES;
pub use error::StoreError;
pub use handle::{Opener, SharedBans, Store};
pub use records::*;

/// A store in a fresh temporary directory, for unit tests here and in
/// the modules built on the store.
#[cfg(test)]
pub(crate) fn temporary() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("db")).unwrap();
    (dir, store)
}

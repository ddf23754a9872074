//! The open-file budget. Every client connection, upstream connection and
//! store file is a descriptor; when they run out, accept fails and clients
//! wait in the backlog. At start the soft `RLIMIT_NOFILE` is raised to the
//! hard limit, and `server.max_connections` is fitted under it with room
//! for `upstream.max_connections` and for the process's own files, so the
//! connection cap is reached before the limit is.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

use crate::config::Config;

/// Descriptors kept for the process itself: standard streams, the
/// runtime's poller, the listeners, the admin and control channels and
/// their clients, the store's files, DNS lookups, certificates being
/// re-read and the listener's spare.
pub const RESERVED: u64 = 64;

/// The soft limit now and what it may be raised to; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

pub fn current() -> Limit {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    Limit {
        soft: current,
        hard: maximum,
    }
}

/// Raises the soft limit to the hard one, which needs no privilege: many
/// systems start services with 1024 of a much higher hard limit. An
/// unlimited hard limit is left alone (Linux refuses it as a soft limit).
/// Returns the limit before, and the error if raising failed.
pub fn raise() -> (Limit, Option<std::io::Error>) {
    let before = current();
    let (Some(hard), Some(soft)) = (before.hard, before.soft) else {
        return (before, None);
    };
    if soft >= hard {
        return (before, None);
    }
    let raised = Rlimit {
        current: Some(hard),
        maximum: Some(hard),
    };
    let error = setrlimit(Resource::Nofile, raised).err();
    (before, error.map(std::io::Error::from))
}

/// How `server.max_connections` fits under an open-file limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    Fits,
    /// Lowered to `to`, the most the limit leaves room for.
    Lowered {
        to: usize,
    },
    /// Not even one client connection fits.
    NoRoom,
}

/// Fits `max_connections` client connections, `upstream` connections and
/// [`RESERVED`] under `limit`.
pub fn fit(limit: Option<u64>, max_connections: usize, upstream: usize) -> Fit {
    let Some(limit) = limit else {
        return Fit::Fits;
    };
    let free = limit.saturating_sub(RESERVED);
    let room = free.saturating_sub(upstream as u64);
    match usize::try_from(room).unwrap_or(usize::MAX) {
        0 => Fit::NoRoom,
        room if max_connections <= room => Fit::Fits,
        room => Fit::Lowered { to: room },
    }
}

/// The budget as a sentence for the log or `check`, naming the keys.
pub fn explain(
    fit: Fit,
    limit: Option<u64>,
    max_connections: usize,
    upstream: usize,
) -> Option<String> {
    let limit = limit.map_or_else(|| "unlimited".to_owned(), |l| l.to_string());
    let upstream = format!("upstream.max_connections ({upstream}) need room");
    let raise = "raise the limit (ulimit -n, systemd LimitNOFILE=, docker --ulimit nofile=)";
    match fit {
        Fit::Fits => None,
        Fit::Lowered { to } => Some(format!(
            "server.max_connections ({max_connections}) lowered to {to}: the open-file limit is \
             {limit}, {upstream}, and {RESERVED} files are kept for the gateway itself; {raise} \
             or set server.max_connections to at most {to}"
        )),
        Fit::NoRoom => Some(format!(
            "the open-file limit ({limit}) leaves no room for connections \
             (server.max_connections): {upstream}, and {RESERVED} files are kept for the \
             gateway itself; {raise}"
        )),
    }
}

/// Applies the fit to `config` (the server then runs with the lowered
/// cap); returns it and, unless it fits, the sentence saying so.
pub fn apply(config: &mut Config, limit: Option<u64>) -> (Fit, Option<String>) {
    let max = config.server.max_connections;
    let upstream = config.upstream.max_connections;
    let fit = fit(limit, max, upstream);
    if let Fit::Lowered { to } = fit {
        config.server.max_connections = to;
    }
    (fit, explain(fit, limit, max, upstream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_fit_beside_the_pool_and_the_reserve() {
        let beside = |limit, clients| fit(limit, clients, 100);
        assert_eq!(beside(None, 10_000), Fit::Fits);
        assert_eq!(beside(Some(1_048_576), 10_000), Fit::Fits);
        assert_eq!(beside(Some(10_164), 10_000), Fit::Fits);
        assert_eq!(beside(Some(10_163), 10_000), Fit::Lowered { to: 9_999 });
        assert_eq!(beside(Some(RESERVED + 101), 10), Fit::Lowered { to: 1 });
        assert_eq!(beside(Some(RESERVED + 100), 10), Fit::NoRoom);
        assert_eq!(beside(Some(0), 10), Fit::NoRoom);
    }

    #[test]
    fn connections_fit_beside_a_capped_upstream_pool() {
        assert_eq!(fit(Some(10_576), 10_000, 512), Fit::Fits);
        assert_eq!(fit(Some(1_024), 10_000, 512), Fit::Lowered { to: 448 });
        assert_eq!(fit(Some(RESERVED + 512), 10, 512), Fit::NoRoom);
        assert_eq!(fit(None, 10, 512), Fit::Fits);
    }

    #[test]
    fn the_explanation_names_the_keys_and_the_limit() {
        let text = explain(Fit::Lowered { to: 448 }, Some(1024), 10_000, 512).unwrap();
        assert!(
            text.contains("server.max_connections (10000) lowered to 448"),
            "{text}"
        );
        assert!(text.contains("limit is 1024"), "{text}");
        let text = explain(Fit::NoRoom, Some(10), 10, 512).unwrap();
        assert!(text.contains("(10) leaves no room"), "{text}");
        let text = explain(Fit::NoRoom, Some(300), 10, 512).unwrap();
        assert!(text.contains("upstream.max_connections (512)"), "{text}");
        assert!(text.contains("server.max_connections"), "{text}");
        assert_eq!(explain(Fit::Fits, Some(1024), 10, 512), None);
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let (before, error) = raise();
        assert!(error.is_none(), "{error:?}");
        let after = current();
        assert_eq!(after.hard, before.hard);
        if before.hard.is_some() {
            assert_eq!(after.soft, before.hard);
        }
    }
}

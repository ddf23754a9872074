//! Counters for the admin listener's `/metrics`, in Prometheus text format.
//! Plain atomics: the hot path pays one relaxed increment per fact.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Why a request was or was not let through, for `tokengate_auth_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOutcome {
    Ok,
    Public,
    Missing,
    Invalid,
    Forbidden,
}

impl AuthOutcome {
    const ALL: [AuthOutcome; 5] = [
        AuthOutcome::Ok,
        AuthOutcome::Public,
        AuthOutcome::Missing,
        AuthOutcome::Invalid,
        AuthOutcome::Forbidden,
    ];
    fn label(self) -> &'static str {
        match self {
            AuthOutcome::Ok => "ok",
            AuthOutcome::Public => "public",
            AuthOutcome::Missing => "missing",
            AuthOutcome::Invalid => "invalid",
            AuthOutcome::Forbidden => "forbidden",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginOutcome {
    Ok,
    Failed,
    Limited,
    Error,
}

impl LoginOutcome {
    const ALL: [LoginOutcome; 4] = [
        LoginOutcome::Ok,
        LoginOutcome::Failed,
        LoginOutcome::Limited,
        LoginOutcome::Error,
    ];
    fn label(self) -> &'static str {
        match self {
            LoginOutcome::Ok => "ok",
            LoginOutcome::Failed => "failed",
            LoginOutcome::Limited => "limited",
            LoginOutcome::Error => "error",
        }
    }
}

/// Bucket upper bounds in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    fn new() -> Self {
        Self {
            buckets: Default::default(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us
            .fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_us.load(Relaxed) as f64 / 1_000_000.0
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

pub struct Metrics {
    /// Indexed by status code; 600 slots so any valid status fits.
    responses: Box<[AtomicU64]>,
    auth: [AtomicU64; AuthOutcome::ALL.len()],
    logins: [AtomicU64; LoginOutcome::ALL.len()],
    pub login_latency: Histogram,
    pub upstream_latency: Histogram,
    open_connections: AtomicI64,
    /// Requests whose client left before the response head (logged as 499).
    abandoned: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self {
            responses: (0..600).map(|_| AtomicU64::new(0)).collect(),
            auth: Default::default(),
            logins: Default::default(),
            login_latency: Histogram::new(),
            upstream_latency: Histogram::new(),
            open_connections: AtomicI64::new(0),
            abandoned: AtomicU64::new(0),
        }
    }

    pub fn response(&self, status: u16) {
        if let Some(slot) = self.responses.get(usize::from(status)) {
            slot.fetch_add(1, Relaxed);
        }
    }

    /// A request whose client went away before its response head.
    pub fn abandoned(&self) {
        self.abandoned.fetch_add(1, Relaxed);
    }

    pub fn auth(&self, outcome: AuthOutcome) {
        self.auth[outcome as usize].fetch_add(1, Relaxed);
    }

    pub fn login(&self, outcome: LoginOutcome) {
        self.logins[outcome as usize].fetch_add(1, Relaxed);
    }

    /// Counts a connection as open until the guard drops.
    pub fn connection(self: &std::sync::Arc<Self>) -> ConnectionGuard {
        self.open_connections.fetch_add(1, Relaxed);
        ConnectionGuard(self.clone())
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP tokengate_responses_total Responses sent, by status code.\n# TYPE tokengate_responses_total counter\n");
        for (status, count) in self.responses.iter().enumerate() {
            let count = count.load(Relaxed);
            if count > 0 {
                let _ = writeln!(
                    out,
                    "tokengate_responses_total{{status=\"{status}\"}} {count}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP tokengate_requests_abandoned_total Requests whose client went away before the response head (logged as 499).\n# TYPE tokengate_requests_abandoned_total counter\ntokengate_requests_abandoned_total {}",
            self.abandoned.load(Relaxed)
        );
        by_outcome(
            &mut out,
            "tokengate_auth_total",
            "Authentication decisions on proxied paths, by outcome.",
            AuthOutcome::ALL.map(|o| (o.label(), self.auth[o as usize].load(Relaxed))),
        );
        by_outcome(
            &mut out,
            "tokengate_logins_total",
            "Login attempts, by outcome.",
            LoginOutcome::ALL.map(|o| (o.label(), self.logins[o as usize].load(Relaxed))),
        );
        self.login_latency.render(
            &mut out,
            "tokengate_login_duration_seconds",
            "Time to answer a login.",
        );
        self.upstream_latency.render(
            &mut out,
            "tokengate_upstream_duration_seconds",
            "Time from sending a request upstream to its response headers.",
        );
        let _ = writeln!(
            out,
            "# HELP tokengate_open_connections Client connections open now.\n# TYPE tokengate_open_connections gauge\ntokengate_open_connections {}",
            self.open_connections.load(Relaxed)
        );
        out
    }
}

/// A counter family labelled by `outcome`, every outcome listed.
fn by_outcome<const N: usize>(out: &mut String, name: &str, help: &str, counts: [(&str, u64); N]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (outcome, count) in counts {
        let _ = writeln!(out, "{name}{{outcome=\"{outcome}\"}} {count}");
    }
}

pub struct ConnectionGuard(std::sync::Arc<Metrics>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = std::sync::Arc::new(Metrics::new());
        m.response(200);
        m.response(200);
        m.response(401);
        m.auth(AuthOutcome::Invalid);
        m.login(LoginOutcome::Failed);
        m.upstream_latency.observe(Duration::from_millis(3));
        let guard = m.connection();
        let text = m.render();
        assert!(text.contains("tokengate_responses_total{status=\"200\"} 2\n"));
        assert!(text.contains("tokengate_responses_total{status=\"401\"} 1\n"));
        assert!(text.contains("tokengate_auth_total{outcome=\"invalid\"} 1\n"));
        assert!(text.contains("tokengate_logins_total{outcome=\"failed\"} 1\n"));
        assert!(text.contains("tokengate_upstream_duration_seconds_bucket{le=\"0.0025\"} 0\n"));
        assert!(text.contains("tokengate_upstream_duration_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("tokengate_upstream_duration_seconds_count 1\n"));
        assert!(text.contains("tokengate_open_connections 1\n"));
        drop(guard);
        assert!(m.render().contains("tokengate_open_connections 0\n"));
    }
}

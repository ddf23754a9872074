//! Configuration: the TOML file read once, checked once, and turned into the
//! typed values the server runs on (addresses, URIs, durations, compiled path
//! patterns). Every problem in a file is reported at once, each with the
//! file, line and key.

mod raw;
pub mod units;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, Uri};
use toml::Spanned;

use crate::request::canonical::canonicalize;
use crate::request::pattern::PathPattern;
use raw::RawConfig;
use units::{parse_duration, parse_size};

/// An environment variable that overrides one key, for container use: its
/// name, the key, and where the key's value sits in the raw config.
pub struct EnvOverride {
    pub var: &'static str,
    pub key: &'static str,
    value: fn(&mut RawConfig) -> &mut Spanned<String>,
}

pub const ENV_OVERRIDES: &[EnvOverride] = &[
    EnvOverride {
        var: "TOKENGATE_LISTEN",
        key: "server.listen",
        value: |raw| &mut raw.server.listen,
    },
    EnvOverride {
        var: "TOKENGATE_UPSTREAM_URL",
        key: "upstream.url",
        value: |raw| &mut raw.upstream.url,
    },
    EnvOverride {
        var: "TOKENGATE_STORE_PATH",
        key: "store.path",
        value: |raw| &mut raw.store.path,
    },
    EnvOverride {
        var: "TOKENGATE_ADMIN_LISTEN",
        key: "admin.listen",
        value: |raw| &mut raw.admin.get_or_insert_with(Default::default).listen,
    },
];

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from; relative paths inside were resolved against its folder.
    pub source: PathBuf,
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub store: StoreConfig,
    pub auth: AuthConfig,
    pub admin: Option<AdminConfig>,
    pub log: LogConfig,
    pub throttle: ThrottleConfig,
    pub rules: Vec<Rule>,
}

/// `[throttle]`: login failures counted per address and per username.
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
    /// Failed logins per second, across all keys, before logins slow down.
    pub global_failure_rate: u32,
    /// The longest a login waits on an overdrawn global budget; zero turns
    /// the budget off.
    pub global_max_delay: Duration,
}

/// The most `server.max_connections` may be.
pub const MAX_CONNECTIONS: usize = 1_000_000;

/// The most `server.max_concurrent_streams` may be.
pub const MAX_CONCURRENT_STREAMS: u32 = 1_000;
/// argon2 bounds. A hash runs per core at once, each holding its memory,
/// so 1 GiB a hash is already several GiB on a small server (RFC 9106's
/// 2 GiB option is for machines that do nothing else).
const ARGON2_MAX_MEMORY_KIB: u32 = 1 << 20;
/// RFC 9106 and OWASP recommend 1 to 5 passes; more than ten times that
/// is a typo, not a policy.
const ARGON2_MAX_ITERATIONS: u32 = 64;
/// Time grows with memory x passes: 4 GiB of passes in all keeps every
/// recommended setting (at most a few hundred MiB) and refuses the ones
/// that make each login, and the hash a reload computes, take seconds.
const ARGON2_MAX_WORK_KIB: u64 = 4 << 20;
/// The most `upstream.max_connections` may be: as many as there are ports
/// to connect from to the one upstream address.
pub const MAX_UPSTREAM_CONNECTIONS: usize = 65_535;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub tls: Option<TlsFiles>,
    pub trusted_proxies: Vec<IpNet>,
    /// Connections past this are closed at accept, so a flood cannot exhaust
    /// file descriptors and starve the clients already being served.
    pub max_connections: usize,
    /// Deadline for a request's headers, counted from when the server starts
    /// waiting for them; it also closes idle keep-alive connections.
    pub header_read_timeout: Duration,
    pub max_header_size: usize,
    pub shutdown_timeout: Duration,
    /// Deadline for a TLS handshake to complete.
    pub tls_handshake_timeout: Duration,
    /// Streams one HTTP/2 connection may have open at once; each may hold
    /// an upstream connection, so this bounds what one client can take.
    pub max_concurrent_streams: u32,
    /// Longer request paths get 414 before any matching or authentication.
    pub max_path_length: usize,
    /// Carries the request's ID to the upstream and back to the client.
    pub request_id_header: HeaderName,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// Prepended to every forwarded path; empty when the URL has no path.
    pub base_path: String,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub pool_idle_timeout: Duration,
    /// Upstream connections open at once, idle, busy or tunneling; a
    /// request finding none free waits up to `connect_timeout`, then 503.
    pub max_connections: usize,
    /// Extra trust roots (PEM) for an https upstream with a private CA.
    pub ca_file: Option<PathBuf>,
    /// Request headers removed before forwarding, in every spelling.
    pub strip_headers: Vec<HeaderName>,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub path: PathBuf,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Lower-cased; the scheme word is case-insensitive (RFC 9110 §11.1).
    pub schemes: Vec<String>,
    /// `None` = tokens from login never expire.
    pub token_ttl: Option<Duration>,
    pub login_path: String,
    pub logout_path: String,
    pub public: Vec<PathPattern>,
    /// Whether upgrades on public paths are tunneled without a token.
    pub public_upgrades: bool,
    pub identity_header: HeaderName,
    pub roles_header: HeaderName,
    pub max_login_body: u64,
    pub login_body_timeout: Duration,
    pub argon2: Argon2Params,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Params {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub path: PathPattern,
    pub roles: Vec<String>,
}

/// An address or CIDR block from `trusted_proxies`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{text}` is not an IP address or CIDR block like 10.0.0.0/8"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{text}`: prefix length must be 0..={max}"))?,
        };
        Ok(Self { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based; `None` for values that came from the environment or defaults.
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "cannot read config file {path}: {source}\n  pass -c FILE, set TOKENGATE_CONFIG, or create tokengate.toml in the working directory (config.example.toml documents every key)"
    )]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", render_problems(path, problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

fn render_problems(path: &Path, problems: &[Problem]) -> String {
    let mut out = format!(
        "invalid config file {} ({} problem{}):",
        path.display(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        match p.line {
            Some(line) => out.push_str(&format!(
                "\n  {}:{line}: key `{}`: {}",
                path.display(),
                p.key,
                p.message
            )),
            None => out.push_str(&format!(
                "\n  {}: key `{}`: {}",
                path.display(),
                p.key,
                p.message
            )),
        }
    }
    out
}

/// Where the config file is: `-c FILE`, else `$TOKENGATE_CONFIG`, else
/// `tokengate.toml` in the working directory. (clap fills `flag` from the env.)
pub fn locate(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("tokengate.toml"))
}

impl Config {
    /// Reads and validates `path`; `env` supplies the `ENV_OVERRIDES` values.
    pub fn load(path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, path, env)
    }

    pub fn from_toml(
        text: &str,
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let raw = parse_raw(text, path, env)?;
        let mut v = Validator {
            text,
            problems: Vec::new(),
        };
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let config = v.config(raw, path, &base);
        match config {
            Some(config) if v.problems.is_empty() => Ok(config),
            _ => Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems: v.problems,
            }),
        }
    }

    /// The effective configuration as TOML: every key, defaults filled in and
    /// environment overrides applied (what `tokengate check` prints).
    pub fn effective_toml(
        text: &str,
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<String, ConfigError> {
        let raw = parse_raw(text, path, env)?;
        toml::to_string(&raw).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            problems: vec![Problem {
                line: None,
                key: "(whole file)".into(),
                message: e.to_string(),
            }],
        })
    }
}

fn parse_raw(
    text: &str,
    path: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<RawConfig, ConfigError> {
    let mut raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Invalid {
        path: path.to_path_buf(),
        problems: vec![Problem {
            line: e.span().map(|span| line_of(text, span.start)),
            key: key_from_toml_error(text, &e),
            message: e.message().trim().to_owned(),
        }],
    })?;
    for over in ENV_OVERRIDES {
        if let Some(value) = env(over.var) {
            // Spans of 0..0 mark values that did not come from the file.
            *(over.value)(&mut raw) = Spanned::new(0..0, value);
        }
    }
    Ok(raw)
}

/// The key on the line a toml error points at, e.g. `timeout` in `timeout = 5`.
fn key_from_toml_error(text: &str, e: &toml::de::Error) -> String {
    if let Some(rest) = e.message().split('`').nth(1)
        && e.message().starts_with("unknown field")
    {
        return rest.to_owned();
    }
    let Some(span) = e.span() else {
        return "(whole file)".into();
    };
    let start = text[..span.start.min(text.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or("");
    match line.split_once('=') {
        Some((key, _)) => key.trim().to_owned(),
        None => line.trim().to_owned(),
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

struct Validator<'a> {
    text: &'a str,
    problems: Vec<Problem>,
}

impl Validator<'_> {
    fn line<T>(&self, value: &Spanned<T>) -> Option<usize> {
        let span = value.span();
        (span != (0..0)).then(|| line_of(self.text, span.start))
    }

    fn problem<T>(&mut self, key: &str, at: &Spanned<T>, message: String) {
        let line = self.line(at);
        let key = match (line, ENV_OVERRIDES.iter().find(|over| over.key == key)) {
            (None, Some(over)) => format!("{key} (or ${})", over.var),
            _ => key.to_owned(),
        };
        self.problems.push(Problem { line, key, message });
    }

    /// Parses one value, recording a problem on failure.
    fn parse<T, U>(
        &mut self,
        key: &str,
        value: &Spanned<T>,
        f: impl FnOnce(&T) -> Result<U, String>,
    ) -> Option<U> {
        match f(value.get_ref()) {
            Ok(v) => Some(v),
            Err(message) => {
                self.problem(key, value, message);
                None
            }
        }
    }

    fn config(&mut self, raw: RawConfig, path: &Path, base: &Path) -> Option<Config> {
        let server = self.server(&raw, base);
        let upstream = self.upstream(&raw, base);
        let store = self.parse("store.path", &raw.store.path, |p| {
            if p.trim().is_empty() {
                Err("must not be empty".into())
            } else {
                Ok(StoreConfig { path: base.join(p) })
            }
        });
        let auth = self.auth(&raw);
        let admin = match &raw.admin {
            None => Some(None),
            Some(admin) => self
                .parse("admin.listen", &admin.listen, |l| parse_listen(l))
                .map(|listen| Some(AdminConfig { listen })),
        };
        let log = self.log(&raw);
        let throttle = self.throttle(&raw);
        let rules = self.rules(&raw);
        Some(Config {
            source: path.to_path_buf(),
            server: server?,
            upstream: upstream?,
            store: store?,
            auth: auth?,
            admin: admin?,
            log: log?,
            throttle: throttle?,
            rules: rules?,
        })
    }

    fn server(&mut self, raw: &RawConfig, base: &Path) -> Option<ServerConfig> {
        let r = &raw.server;
        let listen = self.parse("server.listen", &r.listen, |l| parse_listen(l));
        let tls = match (&r.tls_cert, &r.tls_key) {
            (None, None) => Some(None),
            (Some(cert), Some(key)) => Some(Some(TlsFiles {
                cert: base.join(cert.get_ref()),
                key: base.join(key.get_ref()),
            })),
            (Some(at), None) | (None, Some(at)) => {
                self.problem(
                    "server.tls_cert",
                    at,
                    "tls_cert and tls_key must be set together".into(),
                );
                None
            }
        };
        let mut proxies = Some(Vec::new());
        for p in &r.trusted_proxies {
            let net = self.parse("server.trusted_proxies", p, |p| IpNet::parse(p));
            match (net, proxies.as_mut()) {
                (Some(net), Some(list)) => list.push(net),
                _ => proxies = None,
            }
        }
        // Bounded so that shutdown can wait for every connection's permit
        // at once (a u32 count) and no file descriptor limit comes near it.
        let max_connections = self.parse("server.max_connections", &r.max_connections, |n| {
            usize::try_from(*n)
                .ok()
                .filter(|n| (1..=MAX_CONNECTIONS).contains(n))
                .ok_or_else(|| format!("must be between 1 and {MAX_CONNECTIONS}"))
        });
        let header_read_timeout =
            self.parse("server.header_read_timeout", &r.header_read_timeout, |d| {
                positive(d)
            });
        let max_header_size = self.parse("server.max_header_size", &r.max_header_size, |s| {
            let size = parse_size(s)?;
            if !(8192..=(16 << 20)).contains(&size) {
                return Err("must be between 8KiB and 16MiB".into());
            }
            usize::try_from(size).map_err(|e| e.to_string())
        });
        let shutdown_timeout = self.parse("server.shutdown_timeout", &r.shutdown_timeout, |d| {
            parse_duration(d)
        });
        let tls_handshake_timeout = self.parse(
            "server.tls_handshake_timeout",
            &r.tls_handshake_timeout,
            |d| positive(d),
        );
        let max_concurrent_streams = self.parse(
            "server.max_concurrent_streams",
            &r.max_concurrent_streams,
            |n| {
                u32::try_from(*n)
                    .ok()
                    .filter(|n| (1..=MAX_CONCURRENT_STREAMS).contains(n))
                    .ok_or_else(|| format!("must be between 1 and {MAX_CONCURRENT_STREAMS}"))
            },
        );
        let max_path_length = self.parse("server.max_path_length", &r.max_path_length, |s| {
            let size = parse_size(s)?;
            if !(256..=(1 << 20)).contains(&size) {
                return Err("must be between 256 and 1MiB".into());
            }
            usize::try_from(size).map_err(|e| e.to_string())
        });
        let request_id_header = self.parse("server.request_id_header", &r.request_id_header, |h| {
            identity_header_name(h)
        });
        // The identity headers are the gateway's own on the way up: the ID
        // must not overwrite them, nor they it.
        if let Some(name) = &request_id_header
            && [&raw.auth.identity_header, &raw.auth.roles_header]
                .iter()
                .any(|h| crate::request::headers::same_header(name.as_str(), h.get_ref()))
        {
            self.problem(
                "server.request_id_header",
                &r.request_id_header,
                "must differ from auth.identity_header and auth.roles_header".into(),
            );
            return None;
        }
        Some(ServerConfig {
            listen: listen?,
            tls: tls?,
            trusted_proxies: proxies?,
            max_connections: max_connections?,
            header_read_timeout: header_read_timeout?,
            max_header_size: max_header_size?,
            shutdown_timeout: shutdown_timeout?,
            tls_handshake_timeout: tls_handshake_timeout?,
            max_concurrent_streams: max_concurrent_streams?,
            max_path_length: max_path_length?,
            request_id_header: request_id_header?,
        })
    }

    fn upstream(&mut self, raw: &RawConfig, base: &Path) -> Option<UpstreamConfig> {
        let r = &raw.upstream;
        let url = self.parse("upstream.url", &r.url, |u| parse_upstream_url(u));
        let connect_timeout = self.parse("upstream.connect_timeout", &r.connect_timeout, |d| {
            positive(d)
        });
        let timeout = self.parse("upstream.timeout", &r.timeout, |d| positive(d));
        let pool_idle_timeout =
            self.parse("upstream.pool_idle_timeout", &r.pool_idle_timeout, |d| {
                positive(d)
            });
        let mut strip_headers = Some(Vec::new());
        for h in &r.strip_headers {
            let name = self.parse("upstream.strip_headers", h, |h| {
                let name = header_name(h)?;
                // The gateway frames and routes the request with these.
                if ["host", "content-length", "transfer-encoding"]
                    .iter()
                    .any(|framing| crate::request::headers::same_header(name.as_str(), framing))
                {
                    return Err(format!("`{h}` frames the request; it cannot be stripped"));
                }
                Ok(name)
            });
            match (name, strip_headers.as_mut()) {
                (Some(name), Some(list)) => list.push(name),
                _ => strip_headers = None,
            }
        }
        let max_connections = self.parse("upstream.max_connections", &r.max_connections, |n| {
            usize::try_from(*n)
                .ok()
                .filter(|n| (1..=MAX_UPSTREAM_CONNECTIONS).contains(n))
                .ok_or_else(|| format!("must be between 1 and {MAX_UPSTREAM_CONNECTIONS}"))
        });
        let (scheme, authority, base_path) = url?;
        let ca_file = r.ca_file.as_ref().map(|f| base.join(f.get_ref()));
        Some(UpstreamConfig {
            ca_file,
            strip_headers: strip_headers?,
            scheme,
            authority,
            base_path,
            connect_timeout: connect_timeout?,
            timeout: timeout?,
            pool_idle_timeout: pool_idle_timeout?,
            max_connections: max_connections?,
        })
    }

    fn auth(&mut self, raw: &RawConfig) -> Option<AuthConfig> {
        let r = &raw.auth;
        let mut schemes = Some(Vec::new());
        if r.schemes.is_empty() {
            self.problem(
                "auth.schemes",
                &r.token_ttl,
                "must name at least one scheme, e.g. [\"Token\"]".into(),
            );
            schemes = None;
        }
        for scheme in &r.schemes {
            let parsed = self.parse("auth.schemes", scheme, |s| {
                if !s.is_empty() && s.bytes().all(is_tchar) {
                    Ok(s.to_ascii_lowercase())
                } else {
                    Err(format!(
                        "`{s}` is not a valid scheme word (letters, digits, no spaces)"
                    ))
                }
            });
            match (parsed, schemes.as_mut()) {
                (Some(s), Some(list)) => list.push(s),
                _ => schemes = None,
            }
        }
        let token_ttl = self.parse("auth.token_ttl", &r.token_ttl, |d| {
            parse_duration(d).map(|d| (!d.is_zero()).then_some(d))
        });
        let login_path = self.parse("auth.login_path", &r.login_path, |p| exact_path(p));
        let logout_path = self.parse("auth.logout_path", &r.logout_path, |p| exact_path(p));
        if let (Some(a), Some(b)) = (&login_path, &logout_path)
            && a == b
        {
            self.problem(
                "auth.logout_path",
                &r.logout_path,
                "must differ from auth.login_path".into(),
            );
        }
        let mut public = Some(Vec::new());
        for p in &r.public {
            let parsed = self.parse("auth.public", p, |p| PathPattern::parse(p));
            match (parsed, public.as_mut()) {
                (Some(p), Some(list)) => list.push(p),
                _ => public = None,
            }
        }
        let identity_header = self.parse("auth.identity_header", &r.identity_header, |h| {
            identity_header_name(h)
        });
        let roles_header = self.parse("auth.roles_header", &r.roles_header, |h| {
            identity_header_name(h)
        });
        if let (Some(a), Some(b)) = (&identity_header, &roles_header)
            && crate::request::headers::same_header(a.as_str(), b.as_str())
        {
            self.problem(
                "auth.roles_header",
                &r.roles_header,
                "must differ from auth.identity_header".into(),
            );
        }
        let max_login_body = self.parse("auth.max_login_body", &r.max_login_body, |s| {
            let size = parse_size(s)?;
            if size == 0 || size > (1 << 20) {
                return Err("must be between 1 byte and 1MiB".into());
            }
            Ok(size)
        });
        let login_body_timeout =
            self.parse("auth.login_body_timeout", &r.login_body_timeout, |d| {
                positive(d)
            });
        let memory = self.parse("auth.argon2_memory", &r.argon2_memory, |m| {
            let bytes = parse_size(m)?;
            u32::try_from(bytes / 1024)
                .ok()
                .filter(|kib| (8..=ARGON2_MAX_MEMORY_KIB).contains(kib))
                .ok_or_else(|| "must be between 8KiB and 1GiB".to_owned())
        });
        let iterations = self.parse("auth.argon2_iterations", &r.argon2_iterations, |i| {
            if (1..=ARGON2_MAX_ITERATIONS).contains(i) {
                Ok(*i)
            } else {
                Err(format!("must be between 1 and {ARGON2_MAX_ITERATIONS}"))
            }
        });
        if let (Some(m), Some(i)) = (memory, iterations)
            && u64::from(m) * u64::from(i) > ARGON2_MAX_WORK_KIB
        {
            self.problem(
                "auth.argon2_iterations",
                &r.argon2_iterations,
                format!(
                    "argon2_memory x argon2_iterations must be at most 4GiB (here {} MiB x {i}): each login would take seconds of CPU",
                    m / 1024
                ),
            );
        }
        let parallelism = self.parse("auth.argon2_parallelism", &r.argon2_parallelism, |p| {
            if (1..=255).contains(p) {
                Ok(*p)
            } else {
                Err("must be between 1 and 255".into())
            }
        });
        let argon2 = match (memory, iterations, parallelism) {
            (Some(memory_kib), Some(iterations), Some(parallelism)) => {
                let params = Argon2Params {
                    memory_kib,
                    iterations,
                    parallelism,
                };
                if let Err(e) = params.to_argon2() {
                    self.problem("auth.argon2_memory", &r.argon2_memory, e);
                    None
                } else {
                    Some(params)
                }
            }
            _ => None,
        };
        Some(AuthConfig {
            schemes: schemes?,
            token_ttl: token_ttl?,
            login_path: login_path?,
            logout_path: logout_path?,
            public: public?,
            public_upgrades: *r.public_upgrades.get_ref(),
            identity_header: identity_header?,
            roles_header: roles_header?,
            max_login_body: max_login_body?,
            login_body_timeout: login_body_timeout?,
            argon2: argon2?,
        })
    }

    fn log(&mut self, raw: &RawConfig) -> Option<LogConfig> {
        let format = self.parse("log.format", &raw.log.format, |f| match f.as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "`{other}` is not a log format; use \"text\" or \"json\""
            )),
        });
        let level = self.parse("log.level", &raw.log.level, |l| {
            tracing_subscriber::EnvFilter::builder()
                .parse(l)
                .map(|_| l.clone())
                .map_err(|e| {
                    format!(
                        "`{l}` is not a log level or filter ({e}); use e.g. \"info\" or \"debug\""
                    )
                })
        });
        Some(LogConfig {
            format: format?,
            level: level?,
        })
    }

    fn throttle(&mut self, raw: &RawConfig) -> Option<ThrottleConfig> {
        let r = &raw.throttle;
        let max_failures = self.parse("throttle.max_failures", &r.max_failures, |n| {
            if *n >= 1 {
                Ok(*n)
            } else {
                Err("must be at least 1".into())
            }
        });
        let window = self.parse("throttle.window", &r.window, |d| positive(d));
        let ban = self.parse("throttle.ban", &r.ban, |d| positive(d));
        let max_ban = self.parse("throttle.max_ban", &r.max_ban, |d| positive(d));
        if let (Some(ban), Some(max)) = (ban, max_ban)
            && max < ban
        {
            self.problem(
                "throttle.max_ban",
                &r.max_ban,
                "must be at least throttle.ban".into(),
            );
        }
        let max_tracked = self.parse("throttle.max_tracked", &r.max_tracked, |n| {
            usize::try_from(*n)
                .ok()
                .filter(|n| (100..=10_000_000).contains(n))
                .ok_or_else(|| "must be between 100 and 10000000".to_owned())
        });
        let limited_delay = self.parse("throttle.limited_delay", &r.limited_delay, |d| {
            let delay = parse_duration(d)?;
            if delay > Duration::from_secs(60) {
                Err("must be at most 60s".into())
            } else {
                Ok(delay)
            }
        });
        let global_failure_rate = self.parse(
            "throttle.global_failure_rate",
            &r.global_failure_rate,
            |n| {
                if (1..=1_000_000).contains(n) {
                    Ok(*n)
                } else {
                    Err("must be between 1 and 1000000".into())
                }
            },
        );
        let global_max_delay = self.parse("throttle.global_max_delay", &r.global_max_delay, |d| {
            let delay = parse_duration(d)?;
            if delay > Duration::from_secs(10) {
                Err("must be at most 10s".into())
            } else {
                Ok(delay)
            }
        });
        Some(ThrottleConfig {
            enabled: *r.enabled.get_ref(),
            max_failures: max_failures?,
            window: window?,
            ban: ban?,
            max_ban: max_ban?,
            max_tracked: max_tracked?,
            limited_delay: limited_delay?,
            global_failure_rate: global_failure_rate?,
            global_max_delay: global_max_delay?,
        })
    }

    fn rules(&mut self, raw: &RawConfig) -> Option<Vec<Rule>> {
        let mut rules = Some(Vec::new());
        for (i, rule) in raw.rules.iter().enumerate() {
            let key = format!("rules[{i}].path");
            let path = self.parse(&key, &rule.path, |p| PathPattern::parse(p));
            if rule.roles.is_empty() {
                self.problem(
                    &format!("rules[{i}].roles"),
                    &rule.path,
                    "must list at least one role; a path any user may reach needs no rule".into(),
                );
            }
            let roles: Vec<String> = rule.roles.iter().map(|r| r.get_ref().clone()).collect();
            match (path, rules.as_mut()) {
                (Some(path), Some(list)) if !roles.is_empty() => list.push(Rule { path, roles }),
                _ => rules = None,
            }
        }
        rules
    }
}

impl Argon2Params {
    pub fn to_argon2(self) -> Result<argon2::Params, String> {
        argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| format!("invalid argon2 parameters: {e}"))
    }
}

fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        format!("`{text}` is not an address:port such as \"127.0.0.1:8080\" or \"[::]:8080\"")
    })
}

fn positive(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d.is_zero() {
        Err("must be greater than zero".into())
    } else {
        Ok(d)
    }
}

fn exact_path(text: &str) -> Result<String, String> {
    match canonicalize(text) {
        Ok(canonical) if canonical == text && !text.contains(['*', '?', '#']) => Ok(canonical),
        _ => Err(format!(
            "`{text}` must be a plain path such as \"/login\" (no wildcards, dots or escapes)"
        )),
    }
}

fn header_name(text: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(text.as_bytes())
        .map_err(|_| format!("`{text}` is not a valid header name"))
}

fn identity_header_name(text: &str) -> Result<HeaderName, String> {
    let name = header_name(text)?;
    if crate::request::headers::reserved_for_gateway(name.as_str()) {
        return Err(format!(
            "`{text}` frames the request or is the gateway's own; choose another name such as X-Auth-User"
        ));
    }
    Ok(name)
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn parse_upstream_url(
    text: &str,
) -> Result<(http::uri::Scheme, http::uri::Authority, String), String> {
    let uri: Uri = text
        .parse()
        .map_err(|_| format!("`{text}` is not a URL such as \"http://127.0.0.1:8000\""))?;
    let scheme = match uri.scheme_str() {
        Some("http") => http::uri::Scheme::HTTP,
        Some("https") => http::uri::Scheme::HTTPS,
        _ => return Err(format!("`{text}` must start with http:// or https://")),
    };
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("`{text}` has no host"))?;
    if authority.as_str().contains('@') {
        return Err("credentials in the upstream URL are not supported".into());
    }
    if uri.query().is_some() {
        return Err("the upstream URL must not have a query string".into());
    }
    let base_path = uri.path().trim_end_matches('/').to_owned();
    if !base_path.is_empty() {
        canonicalize(&base_path)
            .map_err(|e| format!("the upstream URL's path is not canonical: {e}"))?;
    }
    Ok((scheme, authority, base_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("/etc/tg/tokengate.toml"), |_| None)
    }

    fn problems(text: &str) -> Vec<Problem> {
        match load(text) {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let c = load("").unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.upstream.authority.as_str(), "127.0.0.1:8000");
        assert_eq!(c.upstream.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.upstream.timeout, Duration::from_secs(60));
        assert_eq!(c.store.path, PathBuf::from("/etc/tg/data"));
        assert_eq!(c.auth.schemes, ["token", "bearer"]);
        assert_eq!(c.auth.token_ttl, Some(Duration::from_secs(30 * 86400)));
        assert_eq!(c.auth.identity_header, "x-auth-user");
        assert_eq!(c.auth.max_login_body, 16 * 1024);
        assert_eq!(
            c.auth.argon2,
            Argon2Params {
                memory_kib: 19 * 1024,
                iterations: 2,
                parallelism: 1
            }
        );
        assert!(c.admin.is_none());
        assert!(c.rules.is_empty());
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let p = problems("[server]\nlisten = \"127.0.0.1:1\"\nlisten_port = 3\n");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].line, Some(3));
        assert_eq!(p[0].key, "listen_port");
    }

    #[test]
    fn max_connections_is_bounded_both_ways() {
        for n in ["0", "1000001", "18446744073709551615"] {
            let p = problems(&format!("[server]\nmax_connections = {n}\n"));
            assert_eq!(p.len(), 1, "{n}: {p:?}");
            assert_eq!(p[0].key, "server.max_connections");
            assert_eq!(p[0].line, Some(2));
        }
        let c = load("[server]\nmax_connections = 1000000\n").unwrap();
        assert_eq!(c.server.max_connections, MAX_CONNECTIONS);
    }

    #[test]
    fn public_upgrades_are_off_unless_asked_for() {
        assert!(!load("").unwrap().auth.public_upgrades);
        assert!(
            load("[auth]\npublic_upgrades = true\n")
                .unwrap()
                .auth
                .public_upgrades
        );
        let p = problems("[auth]\npublic = []\npublic_upgrades = \"yes\"\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].line, Some(3));
        assert!(p[0].key.contains("public_upgrades"), "{p:?}");
    }

    #[test]
    fn max_concurrent_streams_defaults_to_100_and_is_bounded() {
        assert_eq!(load("").unwrap().server.max_concurrent_streams, 100);
        for n in ["0", "1001", "4294967296"] {
            let p = problems(&format!("[server]\nmax_concurrent_streams = {n}\n"));
            assert_eq!(p.len(), 1, "{n}: {p:?}");
            assert_eq!(p[0].key, "server.max_concurrent_streams");
            assert_eq!(p[0].line, Some(2));
        }
        let c = load("[server]\nmax_concurrent_streams = 1000\n").unwrap();
        assert_eq!(c.server.max_concurrent_streams, MAX_CONCURRENT_STREAMS);
    }

    #[test]
    fn wrong_type_names_key_and_line() {
        let p = problems("[upstream]\n\ntimeout = 5\n");
        assert_eq!(p[0].line, Some(3));
        assert_eq!(p[0].key, "timeout");
    }

    #[test]
    fn every_bad_value_is_reported_at_once() {
        let p = problems(
            "[server]\nlisten = \"nowhere\"\n[upstream]\ntimeout = \"5 parsecs\"\n[auth]\npublic = [\"docs/**\"]\ntoken_ttl = \"1y\"\n",
        );
        let keys: Vec<_> = p.iter().map(|p| (p.key.as_str(), p.line)).collect();
        assert_eq!(
            keys,
            [
                ("server.listen", Some(2)),
                ("upstream.timeout", Some(4)),
                ("auth.token_ttl", Some(7)),
                ("auth.public", Some(6)),
            ]
        );
        let shown = load("[server]\nlisten = \"nowhere\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            shown.contains("/etc/tg/tokengate.toml:2: key `server.listen`"),
            "{shown}"
        );
    }

    #[test]
    fn the_global_failure_budget_has_defaults_and_bounds() {
        let c = load("").unwrap();
        assert_eq!(c.throttle.global_failure_rate, 10);
        assert_eq!(c.throttle.global_max_delay, Duration::from_secs(2));
        let c = load("[throttle]\nglobal_max_delay = \"0s\"\n").unwrap();
        assert_eq!(c.throttle.global_max_delay, Duration::ZERO);
        let p = problems("[throttle]\nglobal_failure_rate = 0\nglobal_max_delay = \"1m\"\n");
        let keys: Vec<_> = p.iter().map(|p| (p.key.as_str(), p.line)).collect();
        assert_eq!(
            keys,
            [
                ("throttle.global_failure_rate", Some(2)),
                ("throttle.global_max_delay", Some(3))
            ]
        );
    }

    #[test]
    fn limited_delay_defaults_to_a_second_and_is_bounded() {
        let c = load("").unwrap();
        assert_eq!(c.throttle.limited_delay, Duration::from_secs(1));
        let c = load("[throttle]\nlimited_delay = \"0s\"\n").unwrap();
        assert_eq!(c.throttle.limited_delay, Duration::ZERO);
        let p = problems("[throttle]\nlimited_delay = \"2m\"\n");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].key, "throttle.limited_delay");
        assert!(p[0].message.contains("at most 60s"), "{}", p[0].message);
    }

    #[test]
    fn check_refuses_unsafe_argon2_and_identity_headers() {
        for (text, key, line) in [
            (
                "[auth]\nargon2_memory = \"16GiB\"\n",
                "auth.argon2_memory",
                2,
            ),
            (
                "[auth]\nargon2_memory = \"2GiB\"\n",
                "auth.argon2_memory",
                2,
            ),
            (
                "[auth]\nargon2_iterations = 4294967295\n",
                "auth.argon2_iterations",
                2,
            ),
            (
                "[auth]\nargon2_iterations = 65\n",
                "auth.argon2_iterations",
                2,
            ),
            // Each bound alone holds; together a hash would take seconds.
            (
                "[auth]\nargon2_memory = \"1GiB\"\nargon2_iterations = 64\n",
                "auth.argon2_iterations",
                3,
            ),
        ] {
            let p = problems(text);
            assert_eq!(p.len(), 1, "{text}: {p:?}");
            assert_eq!((p[0].key.as_str(), p[0].line), (key, Some(line)), "{text}");
        }
        let c = load("[auth]\nargon2_memory = \"1GiB\"\nargon2_iterations = 4\n").unwrap();
        assert_eq!(c.auth.argon2.memory_kib, 1 << 20);
        load("[auth]\nargon2_memory = \"64MiB\"\nargon2_iterations = 64\n").unwrap();

        for name in [
            "authorization",
            "Content-Length",
            "host",
            "transfer_encoding",
            "Connection",
            "keep-alive",
            "te",
            "trailer",
            "upgrade",
            "proxy-authorization",
            "cookie",
            "x-forwarded-for",
            "X-Forwarded-Anything",
            "forwarded",
            "x-real-ip",
            "expect",
        ] {
            for key in ["identity_header", "roles_header"] {
                let p = problems(&format!("[auth]\n\n{key} = \"{name}\"\n"));
                assert_eq!(p.len(), 1, "{key} = {name}: {p:?}");
                assert_eq!(p[0].key, format!("auth.{key}"));
                assert_eq!(p[0].line, Some(3));
                assert!(p[0].message.contains(name), "{}", p[0].message);
            }
        }
        load("[auth]\nidentity_header = \"X-Remote-User\"\nroles_header = \"X-Remote-Groups\"\n")
            .unwrap();
    }

    #[test]
    fn zero_ttl_means_never_expires() {
        let c = load("[auth]\ntoken_ttl = \"0s\"\n").unwrap();
        assert_eq!(c.auth.token_ttl, None);
    }

    #[test]
    fn env_overrides_win_and_are_named_in_errors() {
        let c = Config::from_toml("", Path::new("x.toml"), |k| {
            (k == "TOKENGATE_UPSTREAM_URL").then(|| "http://api:9000".to_owned())
        })
        .unwrap();
        assert_eq!(c.upstream.authority.as_str(), "api:9000");
        let err = Config::from_toml("", Path::new("x.toml"), |k| {
            (k == "TOKENGATE_LISTEN").then(|| "bogus".to_owned())
        })
        .unwrap_err();
        assert!(err.to_string().contains("TOKENGATE_LISTEN"), "{err}");
    }

    #[test]
    fn rules_and_upstream_paths() {
        let c = load(
            "[upstream]\nurl = \"http://10.0.0.1:81/api/\"\n[[rules]]\npath = \"/admin/**\"\nroles = [\"admin\"]\n",
        )
        .unwrap();
        assert_eq!(c.upstream.base_path, "/api");
        assert!(c.rules[0].path.matches("/admin/x"));
        let p = problems("[[rules]]\npath = \"/admin/**\"\nroles = []\n");
        assert_eq!(p[0].key, "rules[0].roles");
    }

    #[test]
    fn trusted_proxy_blocks() {
        let net = IpNet::parse("10.0.0.0/8").unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(
            IpNet::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(
            IpNet::parse("::1")
                .unwrap()
                .contains("::1".parse().unwrap())
        );
        assert!(IpNet::parse("10.0.0.0/33").is_err());
        assert!(IpNet::parse("example.com").is_err());
    }
}

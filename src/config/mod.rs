//! Configuration: the TOML file read once, checked once, and turned into the
//! typed values the server runs on (addresses, URIs, durations, compiled path
//! patterns). Every problem in a file is reported at once, each with the
//! file, line and key.

pub mod database;
mod raw;
pub mod units;
mod validate;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use toml::Spanned;

use crate::request::pattern::PathPattern;
use raw::RawConfig;
use validate::Validator;

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
        var: "TOKENGATE_STORE_BACKEND",
        key: "store.backend",
        value: |raw| &mut raw.store.backend,
    },
    EnvOverride {
        var: "TOKENGATE_STORE_URL",
        key: "store.url",
        value: |raw| {
            raw.store
                .url
                .get_or_insert_with(|| Spanned::new(0..0, String::new()))
        },
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
    /// `[portal]`: the token page; `None` = no page.
    pub portal: Option<PortalConfig>,
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
    /// sled's directory; for PostgreSQL, where nothing is kept.
    pub path: PathBuf,
    pub backend: StoreBackend,
}

/// Whether `text` can name a role: 1 to 64 letters, digits and `. _ : -`.
/// The config's role names (rules, the token page's admin role) and the
/// store's follow the one rule.
pub fn is_role_name(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

/// `[portal]`: the token page for people.
#[derive(Debug, Clone)]
pub struct PortalConfig {
    /// Served by the gateway itself, with everything below it.
    pub path: String,
    pub session_ttl: Duration,
    /// Users with this role also manage every user.
    pub admin_role: String,
}

impl PortalConfig {
    /// Whether `path` (canonical) is the page's or below it.
    pub fn owns(&self, path: &str) -> bool {
        path.strip_prefix(self.path.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }
}

impl StoreConfig {
    /// Where the store is, for logs: never a password.
    pub fn describe(&self) -> String {
        match &self.backend {
            StoreBackend::Sled => self.path.display().to_string(),
            StoreBackend::Postgres(pg) => pg.url.redacted(),
        }
    }
}

#[derive(Debug, Clone)]
pub enum StoreBackend {
    Sled,
    Postgres(PostgresConfig),
}

#[derive(Debug, Clone)]
pub struct PostgresConfig {
    pub url: DatabaseUrl,
    /// Connections each process keeps to the database at most.
    pub pool_size: usize,
    /// How long cached token checks are served after the notification
    /// link is lost (then 503).
    pub max_stale: Duration,
}

/// The most `store.pool_size` may be: PostgreSQL's own default allows
/// 100 connections for all its clients.
pub const MAX_POOL_SIZE: u64 = 256;

/// A database URL, which may hold a password: `Debug` and `redacted`
/// show it without one.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn new(url: String) -> Self {
        Self(url)
    }

    /// The URL with its password, for the database driver only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`, in both the URL form
    /// (`postgres://user:pw@host`) and the key=value form (`password=pw`).
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

/// `url` with any password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        // userinfo ends at the last '@' before the path; a password may hold '@'.
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let authority = match authority.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***@{host}"),
                None => authority.to_owned(),
            },
            None => authority.to_owned(),
        };
        let tail = match tail.split_once('?') {
            Some((path, query)) => format!("{path}?{}", redact_params(query, '&')),
            None => tail.to_owned(),
        };
        return format!("{scheme}://{authority}{tail}");
    }
    redact_params(url, ' ')
}

/// `password=...` values in a query string or a key=value string.
fn redact_params(text: &str, separator: char) -> String {
    text.split(separator)
        .map(|part| match part.split_once('=') {
            Some((key, _)) if key.trim().eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => part.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(&separator.to_string())
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Lower-cased; the scheme word is case-insensitive (RFC 9110 §11.1).
    pub schemes: Vec<String>,
    /// `None` = tokens from login never expire.
    pub token_ttl: Option<Duration>,
    pub login_path: String,
    pub logout_path: String,
    /// The check-only endpoint for a proxy in front (forward auth).
    pub forward_auth_path: Option<String>,
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
    /// `None`: the rule applies to every method.
    pub methods: Option<Vec<http::Method>>,
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
        let parsed = parse_raw(text, path, env)?;
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let mut problems = parsed.problems;
        match Validator::new(&parsed.text).validate(parsed.raw, path, &base) {
            Ok(config) if problems.is_empty() => Ok(config),
            Ok(_) => Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            }),
            Err(more) => {
                problems.extend(more);
                problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
                Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    problems,
                })
            }
        }
    }

    /// The effective configuration as TOML: every key, defaults filled in and
    /// environment overrides applied (what `tokengate check` prints).
    pub fn effective_toml(
        text: &str,
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<String, ConfigError> {
        let mut parsed = parse_raw(text, path, env)?;
        if !parsed.problems.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems: parsed.problems,
            });
        }
        // What `check` prints may end up in a ticket or a CI log.
        if let Some(url) = parsed.raw.store.url.as_mut() {
            *url = Spanned::new(0..0, redact_url(url.get_ref()));
        }
        toml::to_string(&parsed.raw).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            problems: vec![Problem {
                line: None,
                key: "(whole file)".into(),
                message: e.to_string(),
            }],
        })
    }
}

/// The file as serde read it, with the problems found on the way and the
/// text it was finally read from.
struct Parsed {
    raw: RawConfig,
    problems: Vec<Problem>,
    /// The file with the lines of those problems blanked (same offsets).
    text: String,
}

/// At most this many keys are blanked and read again; past it, the file
/// is too far from a config for more to help.
const MAX_PARSE_PROBLEMS: usize = 64;

/// toml stops at the first unknown key or wrong type. Each such key's
/// lines are blanked (spaces, so every offset and line number stays) and
/// the file read again, so one run reports every one of them.
fn parse_raw(
    text: &str,
    path: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Parsed, ConfigError> {
    let mut text = text.to_owned();
    let mut problems = Vec::new();
    let mut raw: RawConfig = loop {
        let e = match toml::from_str::<RawConfig>(&text) {
            Ok(raw) => break raw,
            Err(e) => e,
        };
        let span = e.span();
        problems.push(Problem {
            line: span.as_ref().map(|span| line_of(&text, span.start)),
            key: dotted_key(&text, &e),
            message: e.message().trim().to_owned(),
        });
        // A syntax error cannot be stepped over: the rest may mean anything.
        let syntax = text.parse::<toml::Table>().is_err();
        let lines = span
            .filter(|_| !syntax)
            .and_then(|span| blankable(&text, span));
        match lines {
            Some(range) if problems.len() < MAX_PARSE_PROBLEMS => {
                text.replace_range(range.clone(), &blank(&text[range]));
            }
            _ => {
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    problems,
                });
            }
        }
    };
    for over in ENV_OVERRIDES {
        if let Some(value) = env(over.var) {
            // Spans of 0..0 mark values that did not come from the file.
            *(over.value)(&mut raw) = Spanned::new(0..0, value);
        }
    }
    Ok(Parsed {
        raw,
        problems,
        text,
    })
}

/// The byte range to blank for an error at `span`: the whole lines of a
/// `key = value` it falls in, or a whole table (header to the next one)
/// when it points at a header. `None` for anything else (a syntax error).
fn blankable(text: &str, span: std::ops::Range<usize>) -> Option<std::ops::Range<usize>> {
    let start = text[..span.start.min(text.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let end = text[span.end.min(text.len())..]
        .find('\n')
        .map_or(text.len(), |i| span.end + i);
    let first = text[start..end].lines().next().unwrap_or("").trim_start();
    if first.starts_with('[') {
        // The table's own lines too: left, they would land in the table above.
        let rest = &text[end..];
        let next = rest
            .match_indices('\n')
            .map(|(i, _)| end + i + 1)
            .find(|&at| text[at..].trim_start().starts_with('['))
            .unwrap_or(text.len());
        return Some(start..next);
    }
    first.contains('=').then_some(start..end)
}

fn blank(text: &str) -> String {
    text.chars()
        .map(|c| if c == '\n' { '\n' } else { ' ' })
        .collect()
}

/// The full dotted key a toml error points at: `upstream.timeout`,
/// `rules[1].roles`, or a table's name for an unknown table.
fn dotted_key(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else {
        return "(whole file)".into();
    };
    let at = span.start.min(text.len());
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    let unknown = e
        .message()
        .starts_with("unknown field")
        .then(|| e.message().split('`').nth(1))
        .flatten();
    if let Some(header) = line.strip_prefix('[') {
        // An unknown table: its own name.
        let name = header.trim_matches(|c| c == '[' || c == ']' || c == ' ');
        return unknown.unwrap_or(name).to_owned();
    }
    let key = match unknown {
        Some(name) => name.to_owned(),
        None => line
            .split_once('=')
            .map_or(line, |(k, _)| k)
            .trim()
            .to_owned(),
    };
    match table_at(&text[..line_start]) {
        Some(table) => format!("{table}.{key}"),
        None => key,
    }
}

/// The table that `before` (the text above a line) leaves open:
/// `upstream`, or `rules[2]` for the third `[[rules]]`.
fn table_at(before: &str) -> Option<String> {
    let headers: Vec<&str> = before
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('['))
        .collect();
    let last = *headers.last()?;
    if let Some(name) = last.strip_prefix("[[") {
        let name = name.trim_end_matches(']').trim();
        let index = headers
            .iter()
            .filter(|h| {
                h.strip_prefix("[[")
                    .is_some_and(|n| n.trim_end_matches(']').trim() == name)
            })
            .count()
            - 1;
        return Some(format!("{name}[{index}]"));
    }
    Some(
        last.trim_matches(|c| c == '[' || c == ']' || c == ' ')
            .to_owned(),
    )
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
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
    fn the_postgres_backend_needs_a_url_and_hides_its_password() {
        let c = load(
            "[store]\nbackend = \"postgres\"\nurl = \"postgres://tg:s3cret@db:5432/tg\"\nmax_stale = \"3s\"\npool_size = 8\n",
        )
        .unwrap();
        let StoreBackend::Postgres(pg) = &c.store.backend else {
            panic!("not postgres: {:?}", c.store.backend);
        };
        assert_eq!(pg.url.expose(), "postgres://tg:s3cret@db:5432/tg");
        assert_eq!((pg.max_stale, pg.pool_size), (Duration::from_secs(3), 8));
        assert!(!format!("{c:?}").contains("s3cret"), "Debug redacts");
        assert_eq!(c.store.describe(), "postgres://tg:***@db:5432/tg");
        let text = "[store]\nbackend = \"postgres\"\nurl = \"postgres://tg:s3cret@db/tg\"\n";
        let printed = Config::effective_toml(text, Path::new("/x.toml"), |_| None).unwrap();
        assert!(
            !printed.contains("s3cret") && printed.contains("tg:***@db"),
            "{printed}"
        );

        let p = problems("[store]\nbackend = \"postgres\"\n");
        assert_eq!((p[0].key.as_str(), p[0].line), ("store.backend", Some(2)));
        assert!(p[0].message.contains("store.url"), "{}", p[0].message);
        let p = problems("[store]\nurl = \"postgres://db/tg\"\n");
        assert_eq!((p[0].key.as_str(), p[0].line), ("store.url", Some(2)));
        let p = problems("[store]\nbackend = \"mysql\"\n");
        assert!(p[0].message.contains("sled"), "{}", p[0].message);
        let p = problems(
            "[store]\nbackend = \"postgres\"\nurl = \"postgres://tg:s3cret@db/tg?nonsense=1\"\npool_size = 0\n",
        );
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p.iter().all(|p| !p.message.contains("s3cret")), "{p:?}");
        // The environment wins over the file, as for the other keys.
        let c = Config::from_toml(
            "[store]\nbackend = \"postgres\"\nurl = \"postgres://file/tg\"\n",
            Path::new("/x.toml"),
            |var| (var == "TOKENGATE_STORE_URL").then(|| "postgres://env/tg".to_owned()),
        )
        .unwrap();
        assert_eq!(c.store.describe(), "postgres://env/tg");
    }

    #[test]
    fn the_token_page_has_defaults_and_a_path_of_its_own() {
        assert!(load("").unwrap().portal.is_none(), "no [portal]: no page");
        let c = load("[portal]\n").unwrap();
        let p = c.portal.unwrap();
        assert_eq!(p.path, "/_tokengate");
        assert_eq!(p.session_ttl, Duration::from_secs(12 * 3600));
        assert_eq!(p.admin_role, "admin");
        assert!(p.owns("/_tokengate") && p.owns("/_tokengate/tokens"));
        assert!(!p.owns("/_tokengatex") && !p.owns("/api"));
        for (text, says) in [
            ("[portal]\npath = \"/\"\n", "whole API"),
            ("[portal]\npath = \"/x/\"\n", "end with"),
            ("[portal]\npath = \"/x/../y\"\n", "plain path"),
            (
                "[auth]\nlogin_path = \"/me/login\"\n[portal]\npath = \"/me\"\n",
                "/me/login",
            ),
            ("[portal]\nsession_ttl = \"0s\"\n", ""),
            ("[portal]\nadmin_role = \"a b\"\n", "role"),
        ] {
            let p = problems(text);
            assert!(p[0].key.starts_with("portal."), "{text}: {p:?}");
            assert!(p[0].message.contains(says), "{text}: {}", p[0].message);
        }
    }

    #[test]
    fn passwords_are_redacted_in_every_url_form() {
        for (url, shown) in [
            ("postgres://u:p@h/db", "postgres://u:***@h/db"),
            (
                "postgres://u:p@ss@h:5/db?x=1",
                "postgres://u:***@h:5/db?x=1",
            ),
            ("postgres://u@h/db", "postgres://u@h/db"),
            (
                "postgresql://h/db?password=p&sslmode=disable",
                "postgresql://h/db?password=***&sslmode=disable",
            ),
            ("host=h password=p user=u", "host=h password=*** user=u"),
        ] {
            assert_eq!(redact_url(url), shown);
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
        assert_eq!(p[0].key, "server.listen_port");
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
        assert_eq!(p[0].key, "upstream.timeout");
    }

    /// Unknown keys and wrong types used to stop the parse at the first.
    #[test]
    fn unknown_keys_wrong_types_and_bad_values_all_in_one_run() {
        let p = problems(
            "[server]\nmax_conections = 5\n[upstream]\ntimout = \"5s\"\ntimeout = 5\n[auth]\ntoken_ttl = \"forever\"\n[upstreem]\nurl = \"x\"\n[[rules]]\npath = \"/a\"\nroles = [\"r\"]\n[[rules]]\npath = \"a\"\nroles = [\"r\"]\nbogus = 1\n",
        );
        let keys: Vec<_> = p.iter().map(|p| (p.key.as_str(), p.line)).collect();
        assert_eq!(
            keys,
            [
                ("server.max_conections", Some(2)),
                ("upstream.timout", Some(4)),
                ("upstream.timeout", Some(5)),
                ("auth.token_ttl", Some(7)),
                ("upstreem", Some(8)),
                ("rules[1].path", Some(14)),
                ("rules[1].bogus", Some(16)),
            ]
        );
        // A syntax error still stops there: what follows may mean anything.
        let p = problems("[server]\nlisten = \n[upstream]\ntimout = 1\n");
        assert_eq!(p.len(), 1, "{p:?}");
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
                ("auth.public", Some(6)),
                ("auth.token_ttl", Some(7)),
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

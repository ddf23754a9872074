//! From the raw config to validated types: every key checked, every
//! problem recorded with its key and line, all reported at once.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::{HeaderName, Uri};
use toml::Spanned;

use super::raw::RawConfig;
use super::units::{parse_duration, parse_size};
use super::*;
use crate::request::canonical::canonicalize;
use crate::request::pattern::PathPattern;

pub(super) struct Validator<'a> {
    text: &'a str,
    problems: Vec<Problem>,
}

impl<'a> Validator<'a> {
    /// A validator for the config file's `text`, which problems' lines
    /// are counted in.
    pub(super) fn new(text: &'a str) -> Self {
        Self {
            text,
            problems: Vec::new(),
        }
    }

    /// The config, or every problem found in it.
    pub(super) fn validate(
        mut self,
        raw: RawConfig,
        path: &Path,
        base: &Path,
    ) -> Result<Config, Vec<Problem>> {
        match self.config(raw, path, base) {
            Some(config) if self.problems.is_empty() => Ok(config),
            _ => Err(self.problems),
        }
    }

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
        let store = self.store(&raw, base);
        let auth = self.auth(&raw);
        let admin = match &raw.admin {
            None => Some(None),
            Some(admin) => self
                .parse("admin.listen", &admin.listen, |l| parse_listen(l))
                .map(|listen| Some(AdminConfig { listen })),
        };
        let portal = self.portal(&raw, auth.as_ref());
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
            portal: portal?,
            log: log?,
            throttle: throttle?,
            rules: rules?,
        })
    }

    fn portal(
        &mut self,
        raw: &RawConfig,
        auth: Option<&AuthConfig>,
    ) -> Option<Option<PortalConfig>> {
        let Some(r) = &raw.portal else {
            return Some(None);
        };
        let path = self.parse("portal.path", &r.path, |p| match exact_path(p)? {
            p if p == "/" => Err("must not be `/`: the whole API would be the page's".into()),
            p if p.ends_with('/') => Err("must not end with `/`".into()),
            p => Ok(p),
        });
        if let (Some(path), Some(auth)) = (&path, auth) {
            let portal = PortalConfig {
                path: path.clone(),
                session_ttl: Duration::ZERO,
                admin_role: String::new(),
            };
            let clash = [
                Some(&auth.login_path),
                Some(&auth.logout_path),
                auth.forward_auth_path.as_ref(),
            ]
            .into_iter()
            .flatten()
            .find(|p| portal.owns(p));
            if let Some(clash) = clash {
                self.problem(
                    "portal.path",
                    &r.path,
                    format!("must not hold {clash}, which the gateway already answers"),
                );
            }
        }
        let session_ttl = self.parse("portal.session_ttl", &r.session_ttl, |d| positive(d));
        let admin_role = self.parse("portal.admin_role", &r.admin_role, |role| {
            if is_role_name(role) {
                Ok(role.clone())
            } else {
                Err(format!(
                    "invalid role `{}`: use 1 to 64 letters, digits and . _ : -",
                    role.escape_default()
                ))
            }
        });
        Some(Some(PortalConfig {
            path: path?,
            session_ttl: session_ttl?,
            admin_role: admin_role?,
        }))
    }

    fn store(&mut self, raw: &RawConfig, base: &Path) -> Option<StoreConfig> {
        let r = &raw.store;
        let path = self.parse("store.path", &r.path, |p| {
            if p.trim().is_empty() {
                Err("must not be empty".into())
            } else {
                Ok(base.join(p))
            }
        });
        let max_stale = self.parse("store.max_stale", &r.max_stale, |d| positive(d));
        let pool_size = self.parse("store.pool_size", &r.pool_size, |n| {
            usize::try_from(*n)
                .ok()
                .filter(|n| (1..=MAX_POOL_SIZE as usize).contains(n))
                .ok_or_else(|| format!("must be between 1 and {MAX_POOL_SIZE}"))
        });
        let backend = match (r.backend.get_ref().as_str(), &r.url) {
            ("sled", None) => Some(StoreBackend::Sled),
            ("sled", Some(url)) => {
                self.problem(
                    "store.url",
                    url,
                    "is for backend = \"postgres\"; remove it, or set store.backend = \"postgres\""
                        .into(),
                );
                None
            }
            ("postgres", None) => {
                self.problem(
                    "store.backend",
                    &r.backend,
                    "\"postgres\" needs store.url (or $TOKENGATE_STORE_URL), e.g. \"postgres://tokengate:PASSWORD@db:5432/tokengate\"".into(),
                );
                None
            }
            ("postgres", Some(url)) => {
                let url = self.parse("store.url", url, |u| parse_database_url(u));
                Some(StoreBackend::Postgres(PostgresConfig {
                    url: url?,
                    pool_size: pool_size?,
                    max_stale: max_stale?,
                }))
            }
            (other, _) => {
                self.problem(
                    "store.backend",
                    &r.backend,
                    format!("unknown backend {other:?}; use \"sled\" or \"postgres\""),
                );
                None
            }
        };
        Some(StoreConfig {
            path: path?,
            backend: backend?,
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
        let forward_auth_path = match &r.forward_auth_path {
            None => Some(None),
            Some(p) => self
                .parse("auth.forward_auth_path", p, |p| exact_path(p))
                .map(Some),
        };
        if let Some(Some(path)) = &forward_auth_path
            && [&login_path, &logout_path]
                .iter()
                .any(|other| other.as_deref() == Some(path.as_str()))
            && let Some(at) = &r.forward_auth_path
        {
            self.problem(
                "auth.forward_auth_path",
                at,
                "must differ from auth.login_path and auth.logout_path".into(),
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
            forward_auth_path: forward_auth_path?,
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
            let methods = match &rule.methods {
                None => Some(None),
                Some(list) if list.is_empty() => {
                    self.problem(
                        &format!("rules[{i}].methods"),
                        &rule.path,
                        "must list at least one method, or be left out to cover every method"
                            .into(),
                    );
                    None
                }
                Some(list) => {
                    let key = format!("rules[{i}].methods");
                    let parsed: Vec<Option<http::Method>> = list
                        .iter()
                        .map(|m| self.parse(&key, m, |m| rule_method(m)))
                        .collect();
                    parsed.into_iter().collect::<Option<Vec<_>>>().map(Some)
                }
            };
            let roles: Vec<String> = rule.roles.iter().map(|r| r.get_ref().clone()).collect();
            match (path, methods, rules.as_mut()) {
                (Some(path), Some(methods), Some(list)) if !roles.is_empty() => list.push(Rule {
                    path,
                    methods,
                    roles,
                }),
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

/// A method name as requests carry it (upper case), for `[[rules]] methods`.
fn rule_method(text: &str) -> Result<http::Method, String> {
    let upper = text.to_ascii_uppercase();
    match http::Method::from_bytes(upper.as_bytes()) {
        Ok(method) if !upper.is_empty() && upper.bytes().all(|b| b.is_ascii_alphabetic()) => {
            Ok(method)
        }
        _ => Err(format!(
            "`{text}` is not a method such as \"GET\" or \"DELETE\""
        )),
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

/// A PostgreSQL URL or key=value string the driver accepts, with a known
/// `sslmode`. The message never repeats the URL: it
/// may hold a password.
fn parse_database_url(url: &str) -> Result<DatabaseUrl, String> {
    let parsed = super::database::parse(url)?;
    parsed.url.parse::<tokio_postgres::Config>().map_err(|e| {
        format!("not a PostgreSQL URL ({e}); write postgres://USER:PASSWORD@HOST:PORT/DATABASE")
    })?;
    Ok(DatabaseUrl::new(url.to_owned()))
}

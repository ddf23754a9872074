//! The config file as written: serde structs mirroring the TOML, defaults
//! filled in, values still as text. `super::Validator` turns this into types.
//! Values that need validating are `Spanned` so errors can name their line.

use serde::{Deserialize, Serialize};
use toml::Spanned;

fn s(value: &str) -> Spanned<String> {
    Spanned::new(0..0, value.to_owned())
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub server: RawServer,
    pub upstream: RawUpstream,
    pub store: RawStore,
    pub auth: RawAuth,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<RawAdmin>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub portal: Option<RawPortal>,
    pub log: RawLog,
    pub throttle: RawThrottle,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    pub listen: Spanned<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<Spanned<String>>,
    pub trusted_proxies: Vec<Spanned<String>>,
    pub max_connections: Spanned<u64>,
    pub header_read_timeout: Spanned<String>,
    pub max_header_size: Spanned<String>,
    pub shutdown_timeout: Spanned<String>,
    pub tls_handshake_timeout: Spanned<String>,
    pub max_concurrent_streams: Spanned<u64>,
    pub max_path_length: Spanned<String>,
    pub request_id_header: Spanned<String>,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: s("127.0.0.1:8080"),
            tls_cert: None,
            tls_key: None,
            trusted_proxies: Vec::new(),
            max_connections: Spanned::new(0..0, 10_000),
            header_read_timeout: s("10s"),
            max_header_size: s("64KiB"),
            shutdown_timeout: s("30s"),
            tls_handshake_timeout: s("10s"),
            max_concurrent_streams: Spanned::new(0..0, 100),
            max_path_length: s("8KiB"),
            request_id_header: s("X-Request-Id"),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpstream {
    pub url: Spanned<String>,
    pub connect_timeout: Spanned<String>,
    pub timeout: Spanned<String>,
    pub pool_idle_timeout: Spanned<String>,
    pub max_connections: Spanned<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<Spanned<String>>,
    pub strip_headers: Vec<Spanned<String>>,
}

impl Default for RawUpstream {
    fn default() -> Self {
        Self {
            url: s("http://127.0.0.1:8000"),
            connect_timeout: s("5s"),
            timeout: s("60s"),
            pool_idle_timeout: s("90s"),
            max_connections: Spanned::new(0..0, 512),
            ca_file: None,
            strip_headers: crate::request::headers::STRIP_BY_DEFAULT
                .iter()
                .map(|h| s(h))
                .collect(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStore {
    pub backend: Spanned<String>,
    pub path: Spanned<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<Spanned<String>>,
    pub max_stale: Spanned<String>,
    pub pool_size: Spanned<u64>,
}

impl Default for RawStore {
    fn default() -> Self {
        Self {
            backend: s("sled"),
            path: s("data"),
            url: None,
            max_stale: s("10s"),
            pool_size: Spanned::new(0..0, 16),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    pub schemes: Vec<Spanned<String>>,
    pub token_ttl: Spanned<String>,
    pub login_path: Spanned<String>,
    pub logout_path: Spanned<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward_auth_path: Option<Spanned<String>>,
    pub public: Vec<Spanned<String>>,
    pub public_upgrades: Spanned<bool>,
    pub identity_header: Spanned<String>,
    pub roles_header: Spanned<String>,
    pub max_login_body: Spanned<String>,
    pub login_body_timeout: Spanned<String>,
    pub argon2_memory: Spanned<String>,
    pub argon2_iterations: Spanned<u32>,
    pub argon2_parallelism: Spanned<u32>,
}

impl Default for RawAuth {
    fn default() -> Self {
        Self {
            schemes: vec![s("Token"), s("Bearer")],
            token_ttl: s("30d"),
            login_path: s("/login"),
            logout_path: s("/logout"),
            forward_auth_path: None,
            public: Vec::new(),
            public_upgrades: Spanned::new(0..0, false),
            identity_header: s("X-Auth-User"),
            roles_header: s("X-Auth-Roles"),
            max_login_body: s("16KiB"),
            login_body_timeout: s("10s"),
            // OWASP Password Storage Cheat Sheet: argon2id, m=19 MiB, t=2, p=1.
            argon2_memory: s("19MiB"),
            argon2_iterations: Spanned::new(0..0, 2),
            argon2_parallelism: Spanned::new(0..0, 1),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    pub listen: Spanned<String>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: s("127.0.0.1:9090"),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPortal {
    pub path: Spanned<String>,
    pub session_ttl: Spanned<String>,
    pub admin_role: Spanned<String>,
}

impl Default for RawPortal {
    fn default() -> Self {
        Self {
            path: s("/_tokengate"),
            session_ttl: s("12h"),
            admin_role: s("admin"),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    pub format: Spanned<String>,
    pub level: Spanned<String>,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            format: s("text"),
            level: s("info"),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub path: Spanned<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<Spanned<String>>>,
    pub roles: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawThrottle {
    pub enabled: Spanned<bool>,
    pub max_failures: Spanned<u32>,
    pub window: Spanned<String>,
    pub ban: Spanned<String>,
    pub max_ban: Spanned<String>,
    pub max_tracked: Spanned<u64>,
    pub limited_delay: Spanned<String>,
    pub global_failure_rate: Spanned<u32>,
    pub global_max_delay: Spanned<String>,
}

impl Default for RawThrottle {
    fn default() -> Self {
        // In the spirit of Authelia's regulation: a handful of failures
        // within minutes earns minutes of ban.
        Self {
            enabled: Spanned::new(0..0, true),
            max_failures: Spanned::new(0..0, 5),
            window: s("5m"),
            ban: s("5m"),
            max_ban: s("1h"),
            max_tracked: Spanned::new(0..0, 100_000),
            limited_delay: s("1s"),
            global_failure_rate: Spanned::new(0..0, 10),
            global_max_delay: s("2s"),
        }
    }
}

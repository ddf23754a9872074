//! PostgreSQL for the tests: a database of its own per test on the server
//! `.ci/run` starts (TOKENGATE_TEST_POSTGRES_URL), or a private server a
//! test may stop and start again.

use std::path::Path;
use std::process::Command;

/// The URL of the server `.ci/run` started; `None` (after saying why) on a
/// developer machine without one. CI must have one.
pub fn server_url() -> Option<String> {
    match std::env::var("TOKENGATE_TEST_POSTGRES_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            assert!(
                std::env::var("CI").is_err(),
                "CI=true but TOKENGATE_TEST_POSTGRES_URL is not set: .ci/run starts PostgreSQL"
            );
            eprintln!(
                "skipped: set TOKENGATE_TEST_POSTGRES_URL (.ci/postgres.sh start DIR prints one)"
            );
            None
        }
    }
}

/// A new, empty database on the shared test server; `None` without one.
pub async fn database() -> Option<String> {
    let url = server_url()?;
    Some(create_database(&url).await)
}

/// A new database on the server at `url`; returns its URL.
pub async fn create_database(url: &str) -> String {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("the test server answers");
    tokio::spawn(connection);
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).unwrap();
    let name = format!(
        "tg_{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    );
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let (base, _) = url.rsplit_once('/').unwrap();
    format!("{base}/{name}")
}

/// A query's first column as i64, on a connection of its own.
pub async fn scalar(url: &str, sql: &str) -> i64 {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("the database answers");
    tokio::spawn(connection);
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// A PostgreSQL server of the test's own, for outages: stopped when dropped.
pub struct PrivateServer {
    dir: tempfile::TempDir,
    pub url: String,
}

fn script(action: &str, dir: &Path, tls: Option<&Path>) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/postgres.sh");
    let mut cmd = Command::new(script);
    if let Some(tls) = tls {
        cmd.env("TOKENGATE_PG_TLS", tls);
    }
    let out = cmd.arg(action).arg(dir).output().unwrap();
    assert!(
        out.status.success(),
        "postgres.sh {action}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl PrivateServer {
    /// `None` where the shared server is not set up either (the same
    /// machines have the PostgreSQL binaries).
    pub fn start() -> Option<Self> {
        Self::start_with(None)
    }

    /// A server that also speaks TLS, with this certificate chain and key
    /// (PEM).
    pub fn start_tls(cert: &str, key: &str) -> Option<Self> {
        Self::start_with(Some((cert, key)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> Option<Self> {
        server_url()?;
        let dir = tempfile::tempdir().unwrap();
        // The server runs as the postgres user: it must reach its folder.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let files = tls.map(|(cert, key)| {
            let files = dir.path().join("tls");
            std::fs::create_dir(&files).unwrap();
            std::fs::write(files.join("server.crt"), cert).unwrap();
            std::fs::write(files.join("server.key"), key).unwrap();
            files
        });
        let url = script("start", &dir.path().join("pg"), files.as_deref());
        Some(Self { dir, url })
    }

    pub fn stop(&self) {
        script("stop", &self.dir.path().join("pg"), None);
    }

    /// Starts it again, on the same port.
    pub fn resume(&self) {
        script("resume", &self.dir.path().join("pg"), None);
    }

    /// A file in the server's test folder, for the test's own use.
    pub fn file(&self, name: &str, text: &str) -> std::path::PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.stop();
    }
}

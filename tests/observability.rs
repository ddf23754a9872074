//! The admin listener: health, readiness and metrics after real traffic;
//! `tokengate healthcheck` through the binary.

mod common;

use std::sync::Arc;

use common::*;
use tokengate::config::Config;
use tokengate::store::Store;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

struct WithAdmin {
    gw: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    store: Store,
    config: Arc<Config>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn start_with_admin(upstream: std::net::SocketAddr, extra: &str) -> WithAdmin {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokengate.toml");
    std::fs::write(&path, config_text(&format!("http://{upstream}"), extra)).unwrap();
    let config = Arc::new(Config::load(&path, |_| None).unwrap());
    let store = Store::open(&config.store.path).unwrap();
    let gateway = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (gw, admin_addr) = (gateway.local_addr().unwrap(), admin.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokengate::run_with(
        tokengate::Listeners {
            gateway,
            admin: Some(admin),
        },
        config.clone(),
        store.clone(),
        None,
        async {
            let _ = stopped.await;
        },
    );
    let task = tokio::spawn(async move { run.await.unwrap() });
    WithAdmin {
        gw,
        admin: admin_addr,
        store,
        config,
        stop,
        task,
        _dir: dir,
    }
}

#[tokio::test]
async fn health_readiness_and_metrics_after_traffic() {
    let up = echo_upstream().await;
    let g = start_with_admin(
        up.addr,
        "public = [\"/open\"]\n[[rules]]\npath = \"/admin/**\"\nroles = [\"admin\"]\n",
    )
    .await;
    let hasher = tokengate::password::Hasher::new(g.config.auth.argon2).unwrap();
    let hash = hasher
        .hash_now(&tokengate::password::Password::new("pw".into()))
        .unwrap();
    g.store.add_user("ann", hash, vec![]).unwrap();

    assert_eq!(get(g.admin, "/healthz", None).await.status, 200);
    assert_eq!(get(g.admin, "/readyz", None).await.status, 200);
    assert_eq!(get(g.admin, "/nope", None).await.status, 404);

    let login = |password: &'static str| {
        let addr = g.gw;
        async move {
            send(
                addr,
                http::Request::post("/login")
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(format!("username=ann&password={password}"))
                    .unwrap(),
            )
            .await
        }
    };
    assert_eq!(login("bad").await.status, 401);
    let token = login("pw").await.json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(get(g.gw, "/x", Some(&token)).await.status, 200);
    assert_eq!(get(g.gw, "/y", Some(&token)).await.status, 200);
    assert_eq!(get(g.gw, "/x", None).await.status, 401);
    assert_eq!(get(g.gw, "/open", None).await.status, 200);
    assert_eq!(get(g.gw, "/admin/x", Some(&token)).await.status, 403);

    let m = get(g.admin, "/metrics", None).await;
    assert_eq!(m.status, 200);
    assert!(
        m.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = m.text();
    for line in [
        "tokengate_responses_total{status=\"200\"} 4",
        "tokengate_responses_total{status=\"401\"} 2",
        "tokengate_responses_total{status=\"403\"} 1",
        "tokengate_auth_total{outcome=\"ok\"} 2",
        "tokengate_auth_total{outcome=\"missing\"} 1",
        "tokengate_auth_total{outcome=\"public\"} 1",
        "tokengate_auth_total{outcome=\"forbidden\"} 1",
        "tokengate_logins_total{outcome=\"ok\"} 1",
        "tokengate_logins_total{outcome=\"failed\"} 1",
        "tokengate_login_duration_seconds_count 2",
        "tokengate_upstream_duration_seconds_count 3",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in:\n{text}"
        );
    }
    assert!(text.contains("tokengate_open_connections "));

    g.stop.send(()).unwrap();
    g.task.await.unwrap();
}

#[test]
fn healthcheck_command_follows_the_running_gateway() {
    use std::process::Command;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = rt.block_on(echo_upstream());
    let dir = tempfile::tempdir().unwrap();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (gw, admin) = (free(), free());
    let config = dir.path().join("tokengate.toml");
    let text = config_text(&format!("http://{}", up.addr), "")
        .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{gw}\""))
        + &format!("\n[admin]\nlisten = \"{admin}\"\n");
    std::fs::write(&config, text).unwrap();
    let bin = env!("CARGO_BIN_EXE_tokengate");
    let check = || {
        Command::new(bin)
            .env_clear()
            .arg("healthcheck")
            .arg("-c")
            .arg(&config)
            .output()
            .unwrap()
    };
    let down = check();
    assert!(!down.status.success(), "healthy with nothing running");
    assert!(String::from_utf8_lossy(&down.stderr).contains("not healthy"));

    let mut server = Command::new(bin)
        .env_clear()
        .args(["serve", "-c"])
        .arg(&config)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !check().status.success() {
        assert!(std::time::Instant::now() < deadline, "never became healthy");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(server.wait().unwrap().success());
    assert!(!check().status.success());
}

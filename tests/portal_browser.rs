//! The token page in a real browser: Debian's chromium, driven over
//! WebDriver (chromedriver) by fantoccini. `.ci/run` installs both; on a
//! developer machine without them the test says so and passes, under
//! CI=true it fails.
//!
//! Screenshots at desktop and phone widths are written to
//! `target/portal-screenshots/`; with TOKENGATE_UPDATE_SCREENSHOTS=1 they
//! also replace `docs/portal-desktop.png` and `docs/portal-phone.png`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver on a free port; killed when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn driver() -> Option<Driver> {
    if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
        assert!(
            std::env::var("CI").is_err(),
            "CI=true but {CHROMIUM} or {CHROMEDRIVER} is missing: .ci/run installs chromium and chromium-driver"
        );
        eprintln!("skipped: apt-get install chromium chromium-driver to run the browser test");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Driver { child, port })
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": CHROMIUM,
            // CI runs as root, where chromium's sandbox cannot start.
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--hide-scrollbars",
                     "--force-device-scale-factor=1"],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("chromedriver starts chromium")
}

async fn fill(b: &Client, css: &str, text: &str) {
    let field = b.find(Locator::Css(css)).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
}

async fn click(b: &Client, css: &str) {
    b.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

async fn sign_in(b: &Client, base: &str, user: &str, password: &str) {
    b.goto(base).await.unwrap();
    fill(b, "#username", user).await;
    fill(b, "#password", password).await;
    click(b, "form[action$='/sign-in'] button").await;
}

/// The page's text once it contains `needle` (a navigation may still be
/// under way when a click returns); fails with the last text after 5 s.
async fn shows(b: &Client, needle: &str) -> String {
    shows_any(b, &[needle]).await
}

/// The page's text once it contains any of `needles`.
async fn shows_any(b: &Client, needles: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = String::new();
    while Instant::now() < deadline {
        // An element of the page being replaced goes stale: ask again.
        if let Ok(body) = b.find(Locator::Css("body")).await
            && let Ok(text) = body.text().await
        {
            if needles.iter().any(|n| text.contains(n)) {
                return text;
            }
            last = text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the page never showed any of {needles:?}; it shows: {last}");
}

async fn screenshot(b: &Client, width: u32, height: u32, name: &str) {
    b.set_window_size(width, height).await.unwrap();
    // Let the layout settle at the new size.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let png = b.screenshot().await.unwrap();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/portal-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.png")), &png).unwrap();
    if std::env::var("TOKENGATE_UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1") {
        let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs");
        std::fs::write(docs.join(format!("{name}.png")), &png).unwrap();
    }
}

/// A page on another origin that posts a form to the token page at once,
/// as a hostile site would.
async fn hostile_site(target: &str) -> SocketAddr {
    let html = format!(
        "<!doctype html><form method=post action=\"{target}/tokens/revoke-all\">\
         <input name=csrf value=guess></form>\
         <script>document.forms[0].submit()</script>"
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let html = html.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{html}",
                    html.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_manages_tokens_in_a_real_browser() {
    let Some(driver) = driver() else { return };
    let up = echo_upstream().await;
    let gw = Gateway::start(
        up.addr,
        "\n[portal]\npath = \"/_tokengate\"\n\n[throttle]\nmax_failures = 4\nlimited_delay = \"0s\"\n",
    )
    .await;
    gw.add_user("ann", "ann-password", &["staff"]);
    gw.add_user("root", "root-password", &["admin"]);
    let base = format!("http://127.0.0.1:{}/_tokengate", gw.addr.port());
    let b = browser(&driver).await;
    b.set_window_size(1280, 800).await.unwrap();

    // A wrong password, then the right one.
    sign_in(&b, &base, "root", "wrong").await;
    shows(&b, "Wrong username or password.").await;
    sign_in(&b, &base, "root", "root-password").await;
    shows(&b, "Signed in as root").await;
    let cookie = b.get_named_cookie("tg_session").await.unwrap();
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(format!("{:?}", cookie.same_site()), "Some(Strict)");
    assert_eq!(cookie.path(), Some("/_tokengate"));
    assert_ne!(cookie.secure(), Some(true), "plain HTTP here");

    // Create a token; the page's one script shows its copy button.
    fill(&b, "#label", "reporting job").await;
    fill(&b, "#ttl", "7d").await;
    fill(&b, "#scopes", "GET /reports/**").await;
    click(&b, "form[action$='/tokens'] button").await;
    shows(&b, "New token: reporting job").await;
    let secret = b
        .find(Locator::Css("#new-token"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(secret.starts_with("tg_"), "{secret}");
    let copy = b.find(Locator::Css("button[data-copy]")).await.unwrap();
    assert!(
        copy.is_displayed().await.unwrap(),
        "copy.js ran under the CSP"
    );
    let seen = get(gw.addr, "/reports/q3", Some(&secret)).await.seen();
    assert_eq!(seen.header("x-auth-user"), Some("root"));
    let page = get(gw.addr, "/_tokengate/", None).await;
    assert!(
        page.headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );

    // Screenshots while the page shows the most: a new token, the list,
    // and the administrator's users.
    let ann_token = gw.login("ann", "ann-password").await;
    b.goto(&base).await.unwrap();
    fill(&b, "#label", "laptop").await;
    click(&b, "form[action$='/tokens'] button").await;
    shows(&b, "New token: laptop").await;
    screenshot(&b, 1280, 1000, "portal-desktop").await;
    screenshot(&b, 390, 844, "portal-phone").await;
    b.set_window_size(1280, 800).await.unwrap();

    // Revoke the reporting token from its row.
    b.goto(&base).await.unwrap();
    b.find(Locator::XPath(
        "//tr[td[contains(., 'reporting job')]]//form[contains(@action, '/tokens/revoke')]//button",
    ))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
    shows(&b, "Token revoked.").await;
    assert_eq!(get(gw.addr, "/reports/q3", Some(&secret)).await.status, 401);

    // Disable ann from the users table.
    assert_eq!(get(gw.addr, "/api", Some(&ann_token)).await.status, 200);
    click(
        &b,
        "form[action$='/users/disable'] input[value='ann'] ~ button",
    )
    .await;
    shows(&b, "User disabled").await;
    assert_eq!(get(gw.addr, "/api", Some(&ann_token)).await.status, 401);

    // Another site posting to the page is refused, and nothing changes.
    let remaining = gw.store.tokens(Some("root")).unwrap().len();
    let evil = hostile_site(&base).await;
    b.goto(&format!("http://localhost:{}/", evil.port()))
        .await
        .unwrap();
    shows(&b, "sent from another site").await;
    assert_eq!(gw.store.tokens(Some("root")).unwrap().len(), remaining);

    // Sign out; then repeated wrong passwords get 429.
    b.goto(&base).await.unwrap();
    click(&b, "header form button").await;
    shows(&b, "Signed out.").await;
    for _ in 0..4 {
        sign_in(&b, &base, "root", "wrong").await;
        // Answered before the next: a navigation still under way when
        // the next starts is cancelled, and its attempt may never count.
        shows_any(
            &b,
            &["Wrong username or password", "Too many failed attempts"],
        )
        .await;
    }
    shows(&b, "Too many failed attempts").await;
    b.close().await.unwrap();
}

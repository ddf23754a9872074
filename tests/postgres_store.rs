//! The PostgreSQL backend against a real server: `.ci/run` starts one
//! (`.ci/postgres.sh`) and exports its URL as TOKENGATE_TEST_POSTGRES_URL.
//! Each test works in a database of its own. Several `Postgres` values on
//! one database stand for several gateways.

mod common;

use std::time::{Duration, Instant};

use common::postgres::{PrivateServer, create_database, database, scalar};

use tokengate::store::changes::Revoked;
use tokengate::store::postgres::Postgres;
use tokengate::store::postgres::schema::SUPPORTED;
use tokengate::store::token::Token;
use tokengate::store::{StoreError, User};

/// A user made as the CLI makes one and stored in `s`.
async fn add_user(
    s: &Postgres,
    name: &str,
    password_hash: String,
    roles: Vec<String>,
) -> Result<User, StoreError> {
    s.insert_user(tokengate::store::new_user(name, password_hash, roles)?)
        .await
}

/// A token for `user`, made as the gateway makes one and stored in `s`.
async fn issue(
    s: &Postgres,
    user: &User,
    ttl: Option<Duration>,
    label: Option<String>,
    scopes: &[tokengate::request::scope::Scope],
) -> Result<(Token, tokengate::store::TokenRecord), StoreError> {
    let (token, record) = tokengate::store::new_token(user, ttl, label, scopes)?;
    s.insert_token(token, record).await
}

async fn open(url: &str) -> Postgres {
    Postgres::open(url, 4).await.unwrap()
}

/// Waits (up to a second) for a revocation matching `want`.
async fn heard(
    rx: &mut tokio::sync::broadcast::Receiver<Revoked>,
    want: impl Fn(&Revoked) -> bool,
) {
    tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            match rx.recv().await {
                Ok(r) if want(&r) => return,
                Ok(_) => {}
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("announced within 1 s");
}

/// `store` listening (for as long as the guard lives), and what it hears.
async fn listening(
    store: &Postgres,
) -> (AbortOnDrop<()>, tokio::sync::broadcast::Receiver<Revoked>) {
    let task = AbortOnDrop(tokio::spawn(store.listen()));
    link_up(store).await;
    (task, store.changes().subscribe())
}

/// Waits until `store` listens (its link is up).
async fn link_up(store: &Postgres) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.link().down_for().is_some() {
        assert!(Instant::now() < deadline, "never started listening");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn gateways_share_users_and_tokens() {
    let Some(url) = database().await else { return };
    let a = open(&url).await;
    let b = open(&url).await;
    let ann = add_user(&a, "ann", "hash".into(), vec!["ops".into()])
        .await
        .unwrap();
    assert!(matches!(
        add_user(&b, "ann", "other".into(), vec![]).await,
        Err(StoreError::UserExists(_))
    ));
    let seen: User = b.user("ann").await.unwrap().unwrap();
    assert_eq!(seen.password_hash, "hash");
    assert_eq!(seen.roles, ["ops"]);
    assert_eq!(seen.epoch, ann.epoch, "epochs keep all 64 bits");
    let (token, _) = issue(
        &a,
        &ann,
        Some(Duration::from_secs(60)),
        Some("ci".into()),
        &[],
    )
    .await
    .unwrap();
    let live = b.use_token(&token.digest()).await.unwrap().unwrap();
    assert_eq!(live.identity.username, "ann");
    assert_eq!(live.identity.roles, ["ops"]);
    assert!(live.last_used_at.is_some(), "first use recorded");
    let listed = a.tokens(Some("ann")).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, token.digest().id());
    assert_eq!(listed[0].record.label.as_deref(), Some("ci"));
    assert!(listed[0].record.expires_at.is_some());
    assert!(b.tokens(Some("bob")).await.unwrap().is_empty());
    // A token nobody issued is unknown everywhere.
    let stranger = Token::generate().unwrap();
    assert!(b.use_token(&stranger.digest()).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn every_revocation_reaches_the_other_gateways_within_a_second() {
    let Some(url) = database().await else { return };
    let a = open(&url).await;
    let b = open(&url).await;
    let (_listen, mut rx) = listening(&b).await;
    add_user(&a, "ann", "h".into(), vec![]).await.unwrap();

    let issue = |s: &Postgres| {
        let s = s.clone();
        async move {
            let user = s.user("ann").await.unwrap().unwrap();
            issue(&s, &user, None, None, &[]).await.unwrap().0
        }
    };
    let mut report = Vec::new();
    for (kind, user_wide) in [
        ("token revoke", false),
        ("user passwd", true),
        ("user disable", true),
        ("token revoke --user", true),
        ("user remove", true),
    ] {
        if a.user("ann").await.unwrap().is_none() {
            add_user(&a, "ann", "h".into(), vec![]).await.unwrap();
        }
        a.set_disabled("ann", false).await.unwrap();
        // Heard before the revocation under test, so it cannot pass for it.
        heard(&mut rx, |r| matches!(r, Revoked::User(n) if &**n == "ann")).await;
        let token = issue(&a).await;
        assert!(b.use_token(&token.digest()).await.unwrap().is_some());
        let before = b.changes().generation();
        let started = Instant::now();
        match kind {
            "token revoke" => assert!(a.revoke(&token.digest()).await.unwrap()),
            "user passwd" => a.set_password("ann", "h2".into()).await.unwrap(),
            "user disable" => a.set_disabled("ann", true).await.unwrap(),
            "token revoke --user" => assert_eq!(a.revoke_user_tokens("ann").await.unwrap(), 1),
            _ => a.remove_user("ann").await.unwrap(),
        }
        let digest = token.digest();
        heard(&mut rx, |r| match r {
            Revoked::Token(d) => !user_wide && *d == digest,
            Revoked::User(name) => user_wide && &**name == "ann",
            _ => false,
        })
        .await;
        let took = started.elapsed();
        assert!(b.changes().generation() > before, "{kind}: cache emptied");
        assert!(
            b.use_token(&digest).await.unwrap().is_none(),
            "{kind}: refused"
        );
        report.push(format!("{kind}: {took:?}"));
    }
    println!("propagation to another gateway: {}", report.join(", "));
}

#[tokio::test(flavor = "multi_thread")]
async fn role_changes_are_announced_and_tokens_live_on() {
    let Some(url) = database().await else { return };
    let a = open(&url).await;
    let b = open(&url).await;
    let (_listen, mut rx) = listening(&b).await;
    let ann = add_user(&a, "ann", "h".into(), vec!["a".into()])
        .await
        .unwrap();
    let (token, _) = issue(&a, &ann, None, None, &[]).await.unwrap();
    a.set_roles("ann", vec!["b".into()]).await.unwrap();
    heard(&mut rx, |r| matches!(r, Revoked::Roles(n) if &**n == "ann")).await;
    let live = b.use_token(&token.digest()).await.unwrap().unwrap();
    assert_eq!(live.identity.roles, ["b"]);
    assert!(matches!(
        a.set_roles("nobody", vec![]).await,
        Err(StoreError::UnknownUser(_))
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_is_never_issued_on_a_stale_epoch() {
    let Some(url) = database().await else { return };
    let a = open(&url).await;
    let ann = add_user(&a, "ann", "h".into(), vec![]).await.unwrap();
    a.set_password("ann", "h2".into()).await.unwrap();
    assert!(matches!(
        issue(&a, &ann, None, None, &[]).await,
        Err(StoreError::Stale)
    ));
    let current = a.user("ann").await.unwrap().unwrap();
    a.set_disabled("ann", true).await.unwrap();
    let disabled = a.user("ann").await.unwrap().unwrap();
    assert!(matches!(
        issue(&a, &disabled, None, None, &[]).await,
        Err(StoreError::Stale)
    ));
    assert!(matches!(
        issue(&a, &current, None, None, &[]).await,
        Err(StoreError::Stale)
    ));
    assert!(a.tokens(None).await.unwrap().is_empty());
    // The hash swap at a Django user's first login keeps their tokens.
    a.set_disabled("ann", false).await.unwrap();
    let ann = a.user("ann").await.unwrap().unwrap();
    let (token, _) = issue(&a, &ann, None, None, &[]).await.unwrap();
    assert!(a.rehash_password("ann", "h2", "h3".into()).await.unwrap());
    assert!(!a.rehash_password("ann", "h2", "h4".into()).await.unwrap());
    assert_eq!(a.user("ann").await.unwrap().unwrap().password_hash, "h3");
    assert!(a.use_token(&token.digest()).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn gateways_starting_at_once_on_an_empty_database_all_come_up() {
    let Some(url) = database().await else { return };
    let starts: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { Postgres::open(&url, 2).await.map(drop) })
        })
        .collect();
    for start in starts {
        start
            .await
            .unwrap()
            .expect("every concurrent first start comes up");
    }
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let versions: Vec<i32> = client
        .query("SELECT version FROM tokengate_schema ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, (1..=SUPPORTED).collect::<Vec<_>>());
    // A database a newer tokengate migrated is refused, saying so.
    client
        .execute(
            "INSERT INTO tokengate_schema (version) VALUES ($1)",
            &[&(SUPPORTED + 1)],
        )
        .await
        .unwrap();
    let refused = Postgres::open(&url, 2).await.err().expect("refused");
    assert!(matches!(refused, StoreError::SchemaTooNew { .. }));
    assert!(refused.to_string().contains("newer than this binary"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_link_is_noticed_and_recovered_with_every_check_dropped() {
    let Some(url) = database().await else { return };
    let a = open(&url).await;
    let (_listen, mut rx) = listening(&a).await;
    // Cut the listening connection from the server's side.
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let before = a.changes().generation();
    let cut = client
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()
               AND query LIKE 'LISTEN%'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(cut.get::<_, i64>(0), 1, "one listening connection");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Ok(Revoked::Any)) => break,
            Ok(Ok(_)) => {}
            other => panic!("no recheck after the link was cut: {other:?}"),
        }
        assert!(Instant::now() < deadline);
    }
    link_up(&a).await;
    assert!(a.changes().generation() > before, "cached checks dropped");
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A CA, and a server certificate it signed for `name` only.
fn chain(name: &str) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread")]
async fn sslmodes_encrypt_and_verify_as_libpq_does() {
    // The certificate names another host than the 127.0.0.1 dialled, so
    // verify-ca (chain only) passes where verify-full (chain and name) must not.
    let (ca, cert, key) = chain("db.internal");
    let Some(pg) = PrivateServer::start_tls(&cert, &key) else {
        return;
    };
    let url = create_database(&pg.url).await;
    let ours = pg.file("ca.pem", &ca);
    let (other_ca, _, _) = chain("db.internal");
    let theirs = pg.file("other-ca.pem", &other_ca);
    let encrypted = format!(
        "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid)
         WHERE ssl AND datname = '{}'",
        url.rsplit('/').next().unwrap()
    );
    for (query, encrypts) in [
        ("sslmode=disable".to_owned(), false),
        ("sslmode=require".to_owned(), true),
        (
            format!("sslmode=verify-ca&sslrootcert={}", ours.display()),
            true,
        ),
    ] {
        let store = open(&format!("{url}?{query}")).await;
        store.ping().await.unwrap();
        let tls = scalar(&url, &encrypted).await;
        assert_eq!(tls > 0, encrypts, "{query}: {tls} TLS connections");
        drop(store);
    }
    for (query, why) in [
        (
            format!("sslmode=verify-full&sslrootcert={}", ours.display()),
            "another name",
        ),
        (
            format!("sslmode=verify-ca&sslrootcert={}", theirs.display()),
            "another CA",
        ),
    ] {
        let refused = Postgres::open(&format!("{url}?{query}"), 1).await;
        let Err(e) = refused else {
            panic!("{query}: a certificate for {why} was accepted")
        };
        assert!(e.to_string().contains("certificate"), "{query}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_import_adds_users_and_tokens_once_and_keeps_what_is_there() {
    use tokengate::store::{ImportedToken, ImportedUser};
    let Some(url) = database().await else { return };
    let db = open(&url).await;
    add_user(&db, "kept", "mine".into(), vec![]).await.unwrap();
    let user = |name: &str, disabled| ImportedUser {
        username: name.into(),
        password_hash: "pbkdf2_sha256$1$salt$hash".into(),
        roles: vec!["staff".into()],
        disabled,
    };
    let secrets: Vec<Token> = (0..3).map(|_| Token::generate().unwrap()).collect();
    let token = |name: &str, t: &Token| ImportedToken {
        username: name.into(),
        digest: t.digest(),
        created_at: 1,
        expires_at: None,
        label: "django".into(),
    };
    let users = [user("ann", false), user("off", true), user("kept", false)];
    let tokens = [
        token("ann", &secrets[0]),
        token("off", &secrets[1]),
        token("kept", &secrets[2]),
    ];
    let done = db.import(&users, &tokens).await.unwrap();
    assert_eq!(done.added, ["ann", "off"]);
    assert_eq!(done.kept, ["kept"]);
    assert_eq!(
        done.tokens.get("django"),
        Some(&1),
        "only the enabled new user's"
    );
    let live = db.use_token(&secrets[0].digest()).await.unwrap().unwrap();
    assert_eq!(live.identity.roles, ["staff"]);
    assert!(db.use_token(&secrets[1].digest()).await.unwrap().is_none());
    assert!(db.use_token(&secrets[2].digest()).await.unwrap().is_none());
    assert_eq!(
        db.user("kept").await.unwrap().unwrap().password_hash,
        "mine"
    );
    let again = db.import(&users, &tokens).await.unwrap();
    assert!(
        again.added.is_empty() && again.tokens.is_empty(),
        "{again:?}"
    );
}

//! TLS to PostgreSQL: the broadcaster's LISTEN connection and pool against a cluster started with
//! `ssl=on`, a CA made by the test, and a broadcaster role that may only come over TLS.

use threadcast_broadcaster::error::chain;
use threadcast_broadcaster::{Broadcaster, Config};
use threadcast_tests::server::SECRET;
use threadcast_tests::tls_cluster::{TlsCluster, CERT_ROLE, SERVER_NAME};
use threadcast_tests::{TestDb, TestServer};
use tokio_util::sync::CancellationToken;

/// One TLS cluster for these tests (each test makes its own database in it).
fn cluster() -> &'static TlsCluster {
    TlsCluster::shared()
}

async fn database() -> TestDb {
    TestDb::in_cluster(&cluster().cluster).await
}

/// Why the broadcaster does not start with `database_url`, as the operator reads it.
async fn start_error(database_url: String) -> String {
    let config = Config::new(database_url.clone(), SECRET);
    match Broadcaster::start(config, CancellationToken::new()).await {
        Ok(_) => panic!("the broadcaster started with {database_url}"),
        Err(error) => chain(&error),
    }
}

/// Every connection of the broadcaster to `db`, as (application_name, encrypted).
async fn broadcaster_connections(db: &TestDb) -> Vec<(String, bool)> {
    db.client
        .query(
            "SELECT a.application_name, s.ssl
               FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
              WHERE a.datname = current_database()
                AND a.application_name LIKE 'threadcast-broadcaster%'
              ORDER BY 1",
            &[],
        )
        .await
        .expect("read pg_stat_ssl")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

#[tokio::test]
async fn require_encrypts_the_listen_connection_and_the_pool_and_streams_work() {
    let db = database().await;
    let server = TestServer::start_with(&db, |c| c.database_url.push_str(" sslmode=require")).await;
    let thread = db.create_thread().await;
    let mut stream = server.open(thread).await;
    db.insert_reply(thread, "over TLS").await;
    assert_eq!(stream.next_event().await.content(), "over TLS");

    let connections = broadcaster_connections(&db).await;
    let names: Vec<&str> = connections.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.contains(&"threadcast-broadcaster")
            && names.contains(&"threadcast-broadcaster-fetch"),
        "the LISTEN connection and a pool connection are open: {connections:?}"
    );
    assert!(
        connections.iter().all(|(_, ssl)| *ssl),
        "every connection of the broadcaster is encrypted: {connections:?}"
    );
}

#[tokio::test]
async fn verify_full_connects_to_the_host_its_ca_signed_for() {
    let db = database().await;
    let ca = cluster().ca.display().to_string();
    // A URL this time, with the CA path percent-encoded as a URL needs.
    let url = format!(
        "postgres://threadcast_broadcaster@{SERVER_NAME}:{}/{}?sslmode=verify-full&sslrootcert={}",
        cluster().cluster.port(),
        db.name,
        ca.replace('/', "%2F")
    );
    let server = TestServer::start_with(&db, |c| c.database_url = url).await;
    let thread = db.create_thread().await;
    let mut stream = server.open(thread).await;
    db.insert_reply(thread, "verified").await;
    assert_eq!(stream.next_event().await.content(), "verified");
    assert!(broadcaster_connections(&db)
        .await
        .iter()
        .all(|(_, ssl)| *ssl));
}

#[tokio::test]
async fn verify_full_refuses_a_wrong_host_name() {
    let db = database().await;
    // The certificate names `localhost`; 127.0.0.1 is the same server under another name.
    let url = format!(
        "{} sslmode=verify-full sslrootcert={}",
        db.reader_url,
        cluster().ca.display()
    );
    let error = start_error(url).await;
    assert!(
        error.contains("invalid peer certificate") && error.contains("not valid for name"),
        "the error names the certificate's name mismatch: {error}"
    );
}

#[tokio::test]
async fn verify_full_refuses_a_certificate_from_an_unknown_ca() {
    let db = database().await;
    let url = format!(
        "{} sslmode=verify-full sslrootcert={}",
        db.reader_url.replace("127.0.0.1", SERVER_NAME),
        cluster().other_ca.display()
    );
    let error = start_error(url).await;
    assert!(
        error.contains("invalid peer certificate") && error.contains("UnknownIssuer"),
        "the error says the certificate's issuer is unknown: {error}"
    );
}

#[tokio::test]
async fn verify_ca_checks_the_chain_but_not_the_name() {
    let db = database().await;
    let url = format!(
        "{} sslmode=verify-ca sslrootcert={}",
        db.reader_url,
        cluster().ca.display()
    );
    let server = TestServer::start_with(&db, |c| c.database_url = url).await;
    assert_eq!(server.readyz().await, 200);

    let wrong_ca = format!(
        "{} sslmode=verify-ca sslrootcert={}",
        db.reader_url,
        cluster().other_ca.display()
    );
    let error = start_error(wrong_ca).await;
    assert!(error.contains("UnknownIssuer"), "{error}");
}

#[tokio::test]
async fn disable_against_a_server_that_demands_tls_says_so() {
    let db = database().await;
    let error = start_error(format!("{} sslmode=disable", db.reader_url)).await;
    assert!(
        error.contains("pg_hba.conf rejects connection") && error.contains("no encryption"),
        "the server's refusal of a connection without TLS reaches the operator: {error}"
    );
}

#[tokio::test]
async fn a_role_that_needs_a_client_certificate_logs_in_with_sslcert_and_sslkey() {
    let db = database().await;
    cluster().create_cert_role(&db).await;
    let tls = cluster();
    let base = db
        .reader_url
        .replace("user=threadcast_broadcaster", &format!("user={CERT_ROLE}"));
    let with_cert = format!(
        "{base} sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
        tls.ca.display(),
        tls.client.cert.display(),
        tls.client.key.display()
    )
    .replace("127.0.0.1", SERVER_NAME);
    let server = TestServer::start_with(&db, |c| c.database_url = with_cert).await;
    let thread = db.create_thread().await;
    let mut stream = server.open(thread).await;
    db.insert_reply(thread, "with a client certificate").await;
    assert_eq!(
        stream.next_event().await.content(),
        "with a client certificate"
    );

    let error = start_error(format!("{base} sslmode=require")).await;
    assert!(
        error.contains("certificate"),
        "without a client certificate the server's refusal says why: {error}"
    );
}

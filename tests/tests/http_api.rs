//! The HTTP surface: the auth and parameter matrix of the stream endpoint (every refusal is JSON
//! with the right status), the connection limit, CORS, and the operations endpoints.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use threadcast_broadcaster::auth::{Claims, Keys, Role};
use threadcast_tests::server::SECRET;
use threadcast_tests::sse::SseStream;
use threadcast_tests::{eventually, TestDb, TestServer};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A token with `header` and `claims` as JSON and `signature` as given (unsigned forgeries).
fn forged(header: serde_json::Value, claims: serde_json::Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        base64url(header.to_string().as_bytes()),
        base64url(claims.to_string().as_bytes())
    )
}

/// A token with `header` and `claims` as JSON, signed with HMAC-SHA256 over the test secret
/// whatever `alg` the header names: the key-confusion forgery a verifier that lets the token
/// choose its algorithm would accept.
fn hmac_signed(header: serde_json::Value, claims: serde_json::Value) -> String {
    let message = format!(
        "{}.{}",
        base64url(header.to_string().as_bytes()),
        base64url(claims.to_string().as_bytes())
    );
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(SECRET),
        Algorithm::HS256,
    )
    .unwrap();
    format!("{message}.{signature}")
}

/// How a case presents its token.
enum Via {
    None,
    Bearer(String),
    Cookie(String),
    Header(&'static str, String),
}

struct Case {
    name: &'static str,
    query: String,
    via: Via,
    last_event_id: Option<String>,
    expected: StatusCode,
}

#[tokio::test]
async fn the_stream_endpoint_answers_each_client_mistake_with_its_status_and_a_json_error() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db).await;
    let thread = db.create_thread().await;
    let other = db.create_thread().await;
    let keys = Keys::new(SECRET);
    let good = server.token(thread);
    let ok_query = format!("feedbackId={thread}");
    let claims = |exp: u64| serde_json::json!({ "feedback_id": thread.to_string(), "exp": exp });
    let expired = keys.sign(&Claims {
        feedback_id: thread,
        exp: now() - 3600,
        role: Role::EndUser,
    });
    let hs512 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS512),
        &claims(now() + 3600),
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    let no_exp = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({ "feedback_id": thread.to_string() }),
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    let not_a_uuid = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({ "feedback_id": "nope", "exp": now() + 3600 }),
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    let bad_role = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({ "feedback_id": thread.to_string(), "exp": now() + 3600, "role": "admin" }),
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    let alg_none = forged(
        serde_json::json!({ "alg": "none", "typ": "JWT" }),
        claims(now() + 3600),
        "",
    );
    let good_signature = good.rsplit('.').next().unwrap().to_owned();
    let rs256 = forged(
        serde_json::json!({ "alg": "RS256", "typ": "JWT" }),
        claims(now() + 3600),
        &good_signature,
    );
    let hs256_by_hand = hmac_signed(
        serde_json::json!({ "alg": "HS256", "typ": "JWT" }),
        claims(now() + 3600),
    );
    let rs256_hmac = hmac_signed(
        serde_json::json!({ "alg": "RS256", "typ": "JWT" }),
        claims(now() + 3600),
    );
    let none_hmac = hmac_signed(
        serde_json::json!({ "alg": "none", "typ": "JWT" }),
        claims(now() + 3600),
    );
    let truncated = good[..good.len() - 3].to_owned();
    let ten_kb_of_digits = "9".repeat(10_000);
    let oversized = format!(
        "{}.{}.{good_signature}",
        base64url(br#"{"alg":"HS256","typ":"JWT"}"#),
        "A".repeat(30_000)
    );
    let badly_signed =
        Keys::new(b"another secret").mint(thread, Duration::from_secs(3600), Role::EndUser);
    let tampered = {
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        parts[1] = base64url(claims(now() + 7200).to_string().as_bytes());
        parts.join(".")
    };
    let for_other = server.token(other);
    let agency = keys.mint(thread, Duration::from_secs(3600), Role::Agency);

    use StatusCode as S;
    let case = |name, query: &str, via, last_event_id: Option<&str>, expected| Case {
        name,
        query: query.to_owned(),
        via,
        last_event_id: last_event_id.map(str::to_owned),
        expected,
    };
    let cases = vec![
        case(
            "bearer token",
            &ok_query,
            Via::Bearer(good.clone()),
            None,
            S::OK,
        ),
        case(
            "token in the query",
            &format!("{ok_query}&token={good}"),
            Via::None,
            None,
            S::OK,
        ),
        case(
            "token in the cookie",
            &ok_query,
            Via::Cookie(good.clone()),
            None,
            S::OK,
        ),
        case("agency role", &ok_query, Via::Bearer(agency), None, S::OK),
        case(
            "missing feedbackId",
            "",
            Via::Bearer(good.clone()),
            None,
            S::BAD_REQUEST,
        ),
        case(
            "malformed feedbackId",
            "feedbackId=42",
            Via::Bearer(good.clone()),
            None,
            S::BAD_REQUEST,
        ),
        case(
            "negative lastEventId",
            &format!("{ok_query}&lastEventId=-1"),
            Via::Bearer(good.clone()),
            None,
            S::BAD_REQUEST,
        ),
        case(
            "non-numeric lastEventId",
            &format!("{ok_query}&lastEventId=abc"),
            Via::Bearer(good.clone()),
            None,
            S::BAD_REQUEST,
        ),
        case(
            "huge lastEventId",
            &format!("{ok_query}&lastEventId=123456789012345678901234567890"),
            Via::Bearer(good.clone()),
            None,
            S::BAD_REQUEST,
        ),
        case(
            "malformed Last-Event-ID header",
            &ok_query,
            Via::Bearer(good.clone()),
            Some("1e3"),
            S::BAD_REQUEST,
        ),
        case(
            "negative Last-Event-ID header",
            &ok_query,
            Via::Bearer(good.clone()),
            Some("-1"),
            S::BAD_REQUEST,
        ),
        case(
            "Last-Event-ID header past i64",
            &ok_query,
            Via::Bearer(good.clone()),
            Some("9223372036854775808"),
            S::BAD_REQUEST,
        ),
        case(
            "non-numeric Last-Event-ID header",
            &ok_query,
            Via::Bearer(good.clone()),
            Some("abc"),
            S::BAD_REQUEST,
        ),
        case(
            "Last-Event-ID header of 10 KB of digits",
            &ok_query,
            Via::Bearer(good.clone()),
            Some(ten_kb_of_digits.as_str()),
            S::BAD_REQUEST,
        ),
        case("no token", &ok_query, Via::None, None, S::UNAUTHORIZED),
        case(
            "a token signed by hand like the others (the forgeries below differ only in alg)",
            &ok_query,
            Via::Bearer(hs256_by_hand),
            None,
            S::OK,
        ),
        case(
            "alg RS256, HMAC-signed with the secret as key",
            &ok_query,
            Via::Bearer(rs256_hmac),
            None,
            S::UNAUTHORIZED,
        ),
        case(
            "alg none, HMAC-signed with the secret as key",
            &ok_query,
            Via::Bearer(none_hmac),
            None,
            S::UNAUTHORIZED,
        ),
        case(
            "truncated token",
            &ok_query,
            Via::Bearer(truncated),
            None,
            S::UNAUTHORIZED,
        ),
        case(
            "30 KB token",
            &ok_query,
            Via::Bearer(oversized.clone()),
            None,
            S::UNAUTHORIZED,
        ),
        case(
            "30 KB token in the query",
            &format!("{ok_query}&token={oversized}"),
            Via::None,
            None,
            S::UNAUTHORIZED,
        ),
        case(
            "malformed token",
            &ok_query,
            Via::Bearer("not.a.jwt".into()),
            None,
            S::UNAUTHORIZED,
        ),
        case(
            "garbage token",
            &ok_query,
            Via::Bearer("garbage".into()),
            None,
            S::UNAUTHORIZED,
        ),
        case(
            "expired token",
            &ok_query,
            Via::Bearer(expired),
            None,
            S::UNAUTHORIZED,
        ),
        case(
            "token signed with another secret",
            &ok_query,
            Via::Bearer(badly_signed),
            None,
            S::UNAUTHORIZED,
        ),
        case(
            "tampered claims",
            &ok_query,
            Via::Bearer(tampered),
            None,
            S::UNAUTHORIZED,
        ),
        case(
            "alg none",
            &ok_query,
            Via::Bearer(alg_none),
            None,
            S::UNAUTHORIZED,
        ),
        case(
            "alg RS256",
            &ok_query,
            Via::Bearer(rs256),
            None,
            S::UNAUTHORIZED,
        ),
        case(
            "alg HS512",
            &ok_query,
            Via::Bearer(hs512),
            None,
            S::UNAUTHORIZED,
        ),
        case(
            "token without exp",
            &ok_query,
            Via::Bearer(no_exp),
            None,
            S::UNAUTHORIZED,
        ),
        case(
            "feedback_id claim not a uuid",
            &ok_query,
            Via::Bearer(not_a_uuid),
            None,
            S::UNAUTHORIZED,
        ),
        case(
            "unknown role",
            &ok_query,
            Via::Bearer(bad_role),
            None,
            S::UNAUTHORIZED,
        ),
        case(
            "Basic authorization",
            &ok_query,
            Via::Header("authorization", "Basic dTpw".into()),
            None,
            S::UNAUTHORIZED,
        ),
        case(
            "empty bearer",
            &ok_query,
            Via::Header("authorization", "Bearer ".into()),
            None,
            S::UNAUTHORIZED,
        ),
        case(
            "token for another thread",
            &ok_query,
            Via::Bearer(for_other.clone()),
            None,
            S::FORBIDDEN,
        ),
        case(
            "token for another thread in the query",
            &format!("{ok_query}&token={for_other}"),
            Via::None,
            None,
            S::FORBIDDEN,
        ),
    ];

    for case in cases {
        let mut request = server
            .http
            .get(server.url(&format!("/api/widget/stream?{}", case.query)));
        request = match case.via {
            Via::None => request,
            Via::Bearer(token) => request.bearer_auth(token),
            Via::Cookie(token) => {
                request.header("cookie", format!("theme=dark; threadcast_token={token}"))
            }
            Via::Header(name, value) => request.header(name, value),
        };
        if let Some(id) = case.last_event_id {
            request = request.header("last-event-id", id);
        }
        match SseStream::open(request).await {
            Ok(_) => assert_eq!(case.expected, StatusCode::OK, "{}: got 200", case.name),
            Err(refused) => {
                assert_eq!(
                    refused.status, case.expected,
                    "{}: {:?}",
                    case.name, refused.body
                );
                assert!(
                    refused.body["error"].is_string(),
                    "{}: the body is {{\"error\": ...}}, got {:?}",
                    case.name,
                    refused.body
                );
            }
        }
    }
}

#[tokio::test]
async fn at_the_connection_limit_new_streams_get_503_until_one_closes() {
    let db = TestDb::new().await;
    let server = TestServer::start_with(&db, |c| c.max_connections = 2).await;
    let thread = db.create_thread().await;
    let first = server.open(thread).await;
    let _second = server.open(thread).await;

    let refused = server
        .open_with(thread, "", None)
        .await
        .err()
        .expect("a third stream is refused");
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.body["error"].is_string(), "{:?}", refused.body);

    drop(first);
    eventually("the closed stream to free its place", || async {
        server.metric("threadcast_open_streams").await == 1.0
    })
    .await;
    server
        .open_with(thread, "", None)
        .await
        .expect("a place is free again");
}

#[tokio::test]
async fn operations_endpoints_report_health_readiness_and_metrics() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db).await;
    let thread = db.create_thread().await;
    let mut stream = server.open(thread).await;
    db.insert_reply(thread, "counted").await;
    stream.next_event().await;

    let health = server
        .http
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(server.readyz().await, 200, "ready while LISTEN is in force");
    let metrics = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "threadcast_open_streams 1",
        "threadcast_events_delivered_total 1",
        "threadcast_notifications_received_total 1",
        "threadcast_listener_reconnects_total 0",
        "threadcast_gap_fills_total 0",
        "threadcast_slow_consumer_disconnects_total 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == name),
            "/metrics lacks `{name}`:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn cors_admits_only_the_configured_origins() {
    let db = TestDb::new().await;
    let server = TestServer::start_with(&db, |c| {
        c.allowed_origins = vec!["https://app.example".into()]
    })
    .await;
    let thread = db.create_thread().await;
    let preflight = |origin: &'static str| {
        server
            .http
            .request(reqwest::Method::OPTIONS, server.stream_url(thread, ""))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };

    let allowed = preflight("https://app.example").await.unwrap();
    let other = preflight("https://evil.example").await.unwrap();

    assert_eq!(
        allowed
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap()),
        Some("https://app.example")
    );
    assert_eq!(
        other.headers().get("access-control-allow-origin"),
        None,
        "an unlisted origin gets no CORS grant"
    );
}

#[tokio::test]
async fn the_broadcaster_refuses_to_start_for_a_table_that_is_not_enabled() {
    let db = TestDb::new().await;
    db.client
        .batch_execute("CREATE TABLE public.plain (id int)")
        .await
        .unwrap();
    let mut config = threadcast_broadcaster::Config::new(db.reader_url.clone(), SECRET);
    config.source = "public.plain".into();

    let error = threadcast_broadcaster::Broadcaster::start(config, Default::default())
        .await
        .err()
        .expect("starting on a table that is not enabled fails");

    assert!(
        error.to_string().contains("threadcast.enable"),
        "the error says what to do: {error}"
    );
}

#[test]
fn base64url_matches_the_rfc_examples() {
    assert_eq!(base64url(b"f"), "Zg");
    assert_eq!(base64url(b"fo"), "Zm8");
    assert_eq!(base64url(b"foo"), "Zm9v");
    assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
}

//! The stream endpoint's parameter and auth matrix: every refusal is JSON with the right status,
//! and every way of presenting a good token opens the stream. One case per test.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{header, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use threadcast_broadcaster::auth::{Claims, Keys, Role};
use uuid::Uuid;

use crate::support::{get, Api, SECRET};

const THREAD: Uuid = Uuid::from_u128(0x6f1c2b8e_8a7b_4d3c_9a57_0d3f8e1e2a10);
const OTHER: Uuid = Uuid::from_u128(0x0b9a7a52_3d1c_4a8e_9f4e_2d7c1b6a5e01);

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

fn claims(exp: u64) -> serde_json::Value {
    json!({ "feedback_id": THREAD.to_string(), "exp": exp })
}

/// A token with `header` and `claims` as JSON and `signature` as given (unsigned forgeries).
fn forged(header: serde_json::Value, claims: serde_json::Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        base64url(header.to_string().as_bytes()),
        base64url(claims.to_string().as_bytes())
    )
}

/// A token with `header` and `claims`, signed with HMAC-SHA256 over the secret whatever `alg`
/// the header names: the key-confusion forgery a verifier that lets the token choose its
/// algorithm would accept.
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

fn encoded(alg: Algorithm, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn good() -> String {
    Keys::new(SECRET).mint(THREAD, Duration::from_secs(3600), Role::EndUser)
}

/// How a case presents its token.
enum Via {
    None,
    Bearer(String),
    Cookie(String),
    Header(&'static str, String),
}

/// Asks for the stream with `query`, the token `via`, and `last_event_id`; checks the status,
/// and that a refusal says why in JSON.
async fn check(query: &str, via: Via, last_event_id: Option<&str>, expected: StatusCode) {
    let api = Api::new();
    let uri = format!("/api/widget/stream?{query}");
    let mut headers: Vec<(&str, String)> = Vec::new();
    match via {
        Via::None => {}
        Via::Bearer(token) => headers.push(("authorization", format!("Bearer {token}"))),
        Via::Cookie(token) => {
            headers.push(("cookie", format!("theme=dark; threadcast_token={token}")))
        }
        Via::Header(name, value) => headers.push((name, value)),
    }
    if let Some(id) = last_event_id {
        headers.push(("last-event-id", id.to_owned()));
    }
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let response = api.send(get(&uri, &headers)).await;
    let status = response.status();
    if status == StatusCode::OK {
        assert_eq!(expected, StatusCode::OK, "got 200");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/event-stream"
        );
        return;
    }
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&body).expect("a JSON body");
    assert_eq!(status, expected, "{body}");
    assert!(
        body["error"].is_string(),
        "the body is {{\"error\": ...}}, got {body}"
    );
}

fn ok_query() -> String {
    format!("feedbackId={THREAD}")
}

macro_rules! cases {
    ($($name:ident: $query:expr, $via:expr, $last_event_id:expr => $status:ident;)*) => {$(
        #[tokio::test]
        async fn $name() {
            check(AsRef::<str>::as_ref(&$query), $via, $last_event_id, StatusCode::$status).await;
        }
    )*};
}

cases! {
    a_bearer_token_opens_the_stream: ok_query(), Via::Bearer(good()), None => OK;
    a_token_in_the_query_opens_the_stream: format!("{}&token={}", ok_query(), good()), Via::None, None => OK;
    a_token_in_the_cookie_opens_the_stream: ok_query(), Via::Cookie(good()), None => OK;
    an_agency_token_opens_the_stream:
        ok_query(), Via::Bearer(Keys::new(SECRET).mint(THREAD, Duration::from_secs(3600), Role::Agency)), None => OK;
    a_token_signed_by_hand_like_the_forgeries_below_opens_the_stream:
        ok_query(), Via::Bearer(hmac_signed(json!({ "alg": "HS256", "typ": "JWT" }), claims(now() + 3600))), None => OK;
    a_missing_feedback_id_is_400: "", Via::Bearer(good()), None => BAD_REQUEST;
    a_malformed_feedback_id_is_400: "feedbackId=42", Via::Bearer(good()), None => BAD_REQUEST;
    a_negative_last_event_id_is_400: format!("{}&lastEventId=-1", ok_query()), Via::Bearer(good()), None => BAD_REQUEST;
    a_non_numeric_last_event_id_is_400: format!("{}&lastEventId=abc", ok_query()), Via::Bearer(good()), None => BAD_REQUEST;
    a_huge_last_event_id_is_400:
        format!("{}&lastEventId=123456789012345678901234567890", ok_query()), Via::Bearer(good()), None => BAD_REQUEST;
    a_malformed_last_event_id_header_is_400: ok_query(), Via::Bearer(good()), Some("1e3") => BAD_REQUEST;
    a_negative_last_event_id_header_is_400: ok_query(), Via::Bearer(good()), Some("-1") => BAD_REQUEST;
    a_last_event_id_header_past_i64_is_400: ok_query(), Via::Bearer(good()), Some("9223372036854775808") => BAD_REQUEST;
    a_non_numeric_last_event_id_header_is_400: ok_query(), Via::Bearer(good()), Some("abc") => BAD_REQUEST;
    a_last_event_id_header_of_10_kb_of_digits_is_400:
        ok_query(), Via::Bearer(good()), Some(&*"9".repeat(10_000)) => BAD_REQUEST;
    no_token_is_401: ok_query(), Via::None, None => UNAUTHORIZED;
    alg_rs256_hmac_signed_with_the_secret_is_401:
        ok_query(), Via::Bearer(hmac_signed(json!({ "alg": "RS256", "typ": "JWT" }), claims(now() + 3600))), None => UNAUTHORIZED;
    alg_none_hmac_signed_with_the_secret_is_401:
        ok_query(), Via::Bearer(hmac_signed(json!({ "alg": "none", "typ": "JWT" }), claims(now() + 3600))), None => UNAUTHORIZED;
    a_truncated_token_is_401: ok_query(), Via::Bearer({ let g = good(); g[..g.len() - 3].to_owned() }), None => UNAUTHORIZED;
    a_30_kb_token_is_401: ok_query(), Via::Bearer(oversized()), None => UNAUTHORIZED;
    a_30_kb_token_in_the_query_is_401: format!("{}&token={}", ok_query(), oversized()), Via::None, None => UNAUTHORIZED;
    a_malformed_token_is_401: ok_query(), Via::Bearer("not.a.jwt".into()), None => UNAUTHORIZED;
    a_garbage_token_is_401: ok_query(), Via::Bearer("garbage".into()), None => UNAUTHORIZED;
    an_expired_token_is_401: ok_query(), Via::Bearer(Keys::new(SECRET).sign(&Claims {
        feedback_id: THREAD, exp: now() - 3600, ..Claims::default() })), None => UNAUTHORIZED;
    a_token_not_valid_yet_is_401: ok_query(), Via::Bearer(Keys::new(SECRET).sign(&Claims {
        feedback_id: THREAD, exp: now() + 7200, nbf: Some(now() + 3600), ..Claims::default() })), None => UNAUTHORIZED;
    a_token_signed_with_another_secret_is_401:
        ok_query(), Via::Bearer(Keys::new(b"another secret").mint(THREAD, Duration::from_secs(3600), Role::EndUser)), None => UNAUTHORIZED;
    tampered_claims_are_401: ok_query(), Via::Bearer(tampered()), None => UNAUTHORIZED;
    alg_none_is_401: ok_query(), Via::Bearer(forged(json!({ "alg": "none", "typ": "JWT" }), claims(now() + 3600), "")), None => UNAUTHORIZED;
    alg_rs256_is_401: ok_query(), Via::Bearer(forged(json!({ "alg": "RS256", "typ": "JWT" }), claims(now() + 3600), &signature_of_good())), None => UNAUTHORIZED;
    alg_hs512_is_401: ok_query(), Via::Bearer(encoded(Algorithm::HS512, claims(now() + 3600))), None => UNAUTHORIZED;
    a_token_without_exp_is_401:
        ok_query(), Via::Bearer(encoded(Algorithm::HS256, json!({ "feedback_id": THREAD.to_string() }))), None => UNAUTHORIZED;
    a_feedback_id_claim_that_is_not_a_uuid_is_401:
        ok_query(), Via::Bearer(encoded(Algorithm::HS256, json!({ "feedback_id": "nope", "exp": now() + 3600 }))), None => UNAUTHORIZED;
    an_unknown_role_is_401:
        ok_query(), Via::Bearer(encoded(Algorithm::HS256, json!({ "feedback_id": THREAD.to_string(), "exp": now() + 3600, "role": "admin" }))), None => UNAUTHORIZED;
    basic_authorization_is_401: ok_query(), Via::Header("authorization", "Basic dTpw".into()), None => UNAUTHORIZED;
    an_empty_bearer_is_401: ok_query(), Via::Header("authorization", "Bearer ".into()), None => UNAUTHORIZED;
    a_token_for_another_thread_is_403: ok_query(), Via::Bearer(other_thread()), None => FORBIDDEN;
    a_token_for_another_thread_in_the_query_is_403: format!("{}&token={}", ok_query(), other_thread()), Via::None, None => FORBIDDEN;
}

fn signature_of_good() -> String {
    good().rsplit('.').next().unwrap().to_owned()
}

fn oversized() -> String {
    format!(
        "{}.{}.{}",
        base64url(br#"{"alg":"HS256","typ":"JWT"}"#),
        "A".repeat(30_000),
        signature_of_good()
    )
}

fn tampered() -> String {
    let mut parts: Vec<String> = good().split('.').map(str::to_owned).collect();
    parts[1] = base64url(claims(now() + 7200).to_string().as_bytes());
    parts.join(".")
}

fn other_thread() -> String {
    Keys::new(SECRET).mint(OTHER, Duration::from_secs(3600), Role::EndUser)
}

#[test]
fn base64url_matches_the_rfc_examples() {
    assert_eq!(base64url(b"f"), "Zg");
    assert_eq!(base64url(b"fo"), "Zm8");
    assert_eq!(base64url(b"foo"), "Zm9v");
    assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
}

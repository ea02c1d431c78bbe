//! Round trips, the size limit, signatures (forged, tampered, unknown key, rotation), hostile
//! input (deep nesting, numbers out of range, duplicate fields), and property tests: any string,
//! any bytes and any mutation of a valid payload decode or are refused, never panic, and a
//! mutated payload never verifies.

use super::*;
use proptest::prelude::*;

const KEY: Key = Key {
    id: 7,
    secret: [42; KEY_BYTES],
};

fn ring() -> KeyRing {
    KeyRing::new([KEY.clone()])
}

fn insert<'a>(row: &'a RawValue) -> Payload<'a> {
    Payload {
        v: FORMAT_VERSION,
        op: Op::Insert,
        table: "public.feedback_replies".into(),
        src: Some(16384),
        thread: "7c9e6679-7425-40de-944b-e07fc1f90ae7".into(),
        seq: 17,
        id: "a3bb189e-8bf9-3888-9912-ace4e6543002".into(),
        row: Some(row),
        omitted: None,
        kid: Some(KEY.id),
        sig: None,
    }
}

#[test]
fn an_insert_is_signed_compactly_and_verifies_to_itself() {
    let row: &RawValue = serde_json::from_str(r#"{"id":"x","content":"hi \"there\""}"#).unwrap();
    let text = insert(row).sign(&KEY).unwrap();
    let body = r#"{"v":2,"op":"I","table":"public.feedback_replies","src":16384,"thread":"7c9e6679-7425-40de-944b-e07fc1f90ae7","seq":17,"id":"a3bb189e-8bf9-3888-9912-ace4e6543002","row":{"id":"x","content":"hi \"there\""},"kid":7"#;
    assert!(text.starts_with(body), "{text}");
    assert_eq!(text.len(), format!("{body}}}").len() + SIGNATURE_BYTES);
    let verified = Payload::verify(&text, &ring()).unwrap();
    assert_eq!(verified, insert(row));
    assert_eq!(verified.sig.as_deref().map(str::len), Some(43));
}

#[test]
fn a_forged_payload_is_refused() {
    let forged = r#"{"v":2,"op":"D","table":"public.feedback_replies","src":16384,"thread":"a","seq":18,"id":"1","kid":7,"sig":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#;
    assert_eq!(
        Payload::verify(forged, &ring()),
        Err(PayloadError::BadSignature)
    );
    let unsigned = r#"{"v":2,"op":"D","table":"public.feedback_replies","src":16384,"thread":"a","seq":18,"id":"1","kid":7}"#;
    assert_eq!(
        Payload::verify(unsigned, &ring()),
        Err(PayloadError::BadSignature)
    );
    let no_kid = r#"{"v":2,"op":"D","table":"public.feedback_replies","src":16384,"thread":"a","seq":18,"id":"1"}"#;
    assert_eq!(
        Payload::verify(no_kid, &ring()),
        Err(PayloadError::Unsigned)
    );
}

#[test]
fn a_signed_payload_with_a_changed_field_is_refused() {
    let row: &RawValue = serde_json::from_str(r#"{"content":"hi"}"#).unwrap();
    let text = insert(row).sign(&KEY).unwrap();
    for (from, to) in [
        (r#""seq":17"#, r#""seq":18"#),
        (r#""thread":"7c9e"#, r#""thread":"8c9e"#),
        (r#""src":16384"#, r#""src":16385"#),
        (r#""op":"I""#, r#""op":"U""#),
        (r#""content":"hi""#, r#""content":"ho""#),
        (r#""kid":7"#, r#""kid":7 "#),
    ] {
        let tampered = text.replacen(from, to, 1);
        assert_ne!(tampered, text);
        assert!(
            Payload::verify(&tampered, &ring()).is_err(),
            "{from} -> {to} must not verify"
        );
    }
}

#[test]
fn a_payload_signed_with_an_unknown_or_other_key_is_refused() {
    let row: &RawValue = serde_json::from_str("{}").unwrap();
    let other = Key {
        id: 8,
        secret: [1; KEY_BYTES],
    };
    let text = insert(row).sign(&other).unwrap();
    assert_eq!(
        Payload::verify(&text, &ring()),
        Err(PayloadError::UnknownKey(8))
    );
    let impostor = Key {
        id: 7,
        secret: [1; KEY_BYTES],
    };
    let text = insert(row).sign(&impostor).unwrap();
    assert_eq!(
        Payload::verify(&text, &ring()),
        Err(PayloadError::BadSignature)
    );
}

#[test]
fn old_and_new_keys_both_verify_during_a_rotation() {
    let row: &RawValue = serde_json::from_str("{}").unwrap();
    let new = Key {
        id: 8,
        secret: [9; KEY_BYTES],
    };
    let both = KeyRing::new([KEY.clone(), new.clone()]);
    for key in [&KEY, &new] {
        let text = insert(row).sign(key).unwrap();
        assert!(
            Payload::verify(&text, &both).is_ok(),
            "key {} verifies",
            key.id
        );
    }
}

#[test]
fn the_legacy_form_is_unsigned_version_1_and_is_not_trusted() {
    let row: &RawValue = serde_json::from_str(r#"{"c":1}"#).unwrap();
    let text = insert(row).encode_legacy().unwrap();
    assert_eq!(
        text,
        r#"{"v":1,"op":"I","table":"public.feedback_replies","thread":"7c9e6679-7425-40de-944b-e07fc1f90ae7","seq":17,"id":"a3bb189e-8bf9-3888-9912-ace4e6543002","row":{"c":1}}"#
    );
    assert_eq!(
        Payload::verify(&text, &ring()),
        Err(PayloadError::Version(1))
    );
}

#[test]
fn a_reset_needs_no_row_and_no_id() {
    let reset = Payload {
        op: Op::Reset,
        id: "".into(),
        row: None,
        ..insert(serde_json::from_str("{}").unwrap())
    };
    let text = reset.sign(&KEY).unwrap();
    let p = Payload::verify(&text, &ring()).unwrap();
    assert_eq!(p.op, Op::Reset);
    assert!(!p.needs_fetch());
}

#[test]
fn a_row_too_big_for_notify_is_left_out_and_flagged() {
    let big = format!(r#"{{"content":"{}"}}"#, "x".repeat(9000));
    let row: &RawValue = serde_json::from_str(&big).unwrap();
    let text = insert(row).sign(&KEY).unwrap();
    assert!(text.len() <= MAX_PAYLOAD_BYTES);
    let p = Payload::verify(&text, &ring()).unwrap();
    assert!(p.row.is_none(), "the row is left out");
    assert_eq!(p.omitted, Some(Omitted::TooLarge));
    assert!(p.needs_fetch(), "the consumer must fetch an omitted row");
}

#[test]
fn a_payload_just_under_the_limit_keeps_its_row() {
    let overhead = insert(serde_json::from_str(r#"{"c":""}"#).unwrap())
        .to_json()
        .len()
        + SIGNATURE_BYTES;
    let fill = "y".repeat(MAX_PAYLOAD_BYTES - overhead);
    let json = format!(r#"{{"c":"{fill}"}}"#);
    let text = insert(serde_json::from_str(&json).unwrap())
        .sign(&KEY)
        .unwrap();
    assert_eq!(text.len(), MAX_PAYLOAD_BYTES);
    assert!(Payload::verify(&text, &ring()).unwrap().row.is_some());
    let over = format!(r#"{{"c":"{fill}y"}}"#);
    let text = insert(serde_json::from_str(&over).unwrap())
        .sign(&KEY)
        .unwrap();
    assert!(
        Payload::verify(&text, &ring()).unwrap().row.is_none(),
        "one byte more and the row is left out"
    );
}

#[test]
fn keys_that_alone_overflow_notify_are_refused() {
    let mut p = insert(serde_json::from_str("{}").unwrap());
    let id = "k".repeat(9000);
    p.id = id.as_str().into();
    assert!(matches!(p.sign(&KEY), Err(PayloadError::TooLong(_))));
}

#[test]
fn bad_payloads_are_refused_with_a_reason() {
    let cases = [
        ("", "Malformed"),
        ("{}", "Malformed"),
        (
            r#"{"v":1,"op":"D","table":"t","thread":"a","seq":1,"id":"1"}"#,
            "Version",
        ),
        (
            r#"{"v":3,"src":1,"kid":7,"op":"D","table":"t","thread":"a","seq":1,"id":"1"}"#,
            "Version",
        ),
        (
            r#"{"v":2,"op":"D","table":"t","thread":"a","seq":1,"id":"1"}"#,
            "Unsigned",
        ),
        (
            r#"{"v":2,"src":1,"kid":7,"op":"D","table":"t","thread":"a","seq":0,"id":"1"}"#,
            "Seq",
        ),
        (
            r#"{"v":2,"src":1,"kid":7,"op":"I","table":"t","thread":"a","seq":1,"id":"1"}"#,
            "MissingRow",
        ),
        (
            r#"{"v":2,"src":1,"kid":7,"op":"X","table":"t","thread":"a","seq":1,"id":"1"}"#,
            "Malformed",
        ),
        (
            r#"{"v":2,"src":1,"kid":7,"op":"D","table":"t","thread":"a","seq":1,"id":"1","extra":1}"#,
            "Malformed",
        ),
    ];
    for (input, want) in cases {
        let err = Payload::decode(input).expect_err(input);
        assert!(
            format!("{err:?}").starts_with(want),
            "{input}: got {err:?}, want {want}"
        );
    }
}

#[test]
fn a_delete_needs_no_row() {
    let p = Payload::decode(
        r#"{"v":2,"src":1,"kid":7,"op":"D","table":"t","thread":"a","seq":3,"id":"1"}"#,
    )
    .unwrap();
    assert_eq!(p.op, Op::Delete);
    assert!(!p.needs_fetch());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn any_string_decodes_or_is_refused(s in ".{0,300}") {
        let _ = Payload::decode(&s);
    }

    #[test]
    fn any_json_shaped_string_decodes_or_is_refused(
        op in prop::sample::select(vec!["I", "U", "D", "Z", ""]),
        seq in any::<i64>(),
        thread in ".{0,40}",
        row in prop::option::of(r#"\{("[a-z]{1,5}":("[^"\\]{0,10}"|-?[0-9]{1,5}|null|true),?){0,3}\}"#),
    ) {
        let row = row.map(|r| format!(r#","row":{r}"#)).unwrap_or_default();
        let text = format!(r#"{{"v":2,"src":1,"kid":7,"op":"{op}","table":"t","thread":{},"seq":{seq},"id":"1"{row}}}"#,
            serde_json::to_string(&thread).unwrap());
        if let Ok(p) = Payload::decode(&text) {
            prop_assert!(p.seq >= 1);
            prop_assert_eq!(p.thread.as_ref(), thread.as_str());
        }
    }

    #[test]
    fn encoded_payloads_always_fit_and_decode(content in ".{0,3000}", repeat in 1usize..5) {
        let json = serde_json::json!({ "content": content.repeat(repeat) }).to_string();
        let row: &RawValue = serde_json::from_str(&json).unwrap();
        let text = insert(row).sign(&KEY).unwrap();
        prop_assert!(text.len() <= MAX_PAYLOAD_BYTES);
        let p = Payload::verify(&text, &ring()).unwrap();
        prop_assert_eq!(p.row.is_none(), p.omitted == Some(Omitted::TooLarge));
    }
}

// A NOTIFY on the channel may come from any role that can connect, so the decoder faces whatever
// bytes a hostile client sends (PostgreSQL only guarantees text in the database encoding; the
// lossy conversion stands in for a client library that does not).

#[test]
fn deeply_nested_json_never_exhausts_the_stack() {
    let (open, close) = ("[".repeat(100_000), "]".repeat(100_000));
    // Well-formed: the row is kept as raw text, never walked recursively, so it decodes.
    let balanced = format!(
        r#"{{"v":2,"src":1,"kid":7,"op":"I","table":"t","thread":"a","seq":1,"id":"1","row":{open}{close}}}"#
    );
    assert!(Payload::decode(&balanced).is_ok());
    for text in [
        format!(
            r#"{{"v":2,"src":1,"kid":7,"op":"I","table":"t","thread":"a","seq":1,"id":"1","row":{open}"#
        ),
        open.clone(),
        "{\"a\":".repeat(100_000),
    ] {
        assert!(
            matches!(Payload::decode(&text), Err(PayloadError::Malformed(_))),
            "refused: {}...",
            &text[..40]
        );
    }
}

#[test]
fn numbers_out_of_range_are_refused() {
    for seq in [
        "9223372036854775808",
        "1e400",
        "-0",
        "1.5",
        "0x10",
        "NaN",
        "null",
        "\"1\"",
    ] {
        let text = format!(
            r#"{{"v":2,"src":1,"kid":7,"op":"D","table":"t","thread":"a","seq":{seq},"id":"1"}}"#
        );
        assert!(Payload::decode(&text).is_err(), "seq {seq} is refused");
    }
    let text = r#"{"v":4294967297,"op":"D","table":"t","thread":"a","seq":1,"id":"1"}"#;
    assert!(
        Payload::decode(text).is_err(),
        "a version past u32 is refused"
    );
}

#[test]
fn duplicate_fields_are_refused() {
    let text = r#"{"v":2,"src":1,"kid":7,"op":"D","table":"t","thread":"a","thread":"b","seq":1,"id":"1"}"#;
    assert!(matches!(
        Payload::decode(text),
        Err(PayloadError::Malformed(_))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_decode_or_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = Payload::decode(&text);
        prop_assert!(Payload::verify(&text, &ring()).is_err());
    }

    #[test]
    fn a_valid_payload_with_bytes_changed_decodes_to_a_valid_payload_or_is_refused(
        content in ".{0,40}",
        op in prop::sample::select(vec![Op::Insert, Op::Update, Op::Delete]),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
    ) {
        let json = serde_json::json!({ "id": "x", "content": content }).to_string();
        let row: &RawValue = serde_json::from_str(&json).unwrap();
        let mut payload = insert(row);
        payload.op = op;
        if op == Op::Delete {
            payload.row = None;
        }
        let original = payload.clone().sign(&KEY).unwrap();
        let mut bytes = original.clone().into_bytes();
        for (at, byte, edit) in edits {
            let i = at.index(bytes.len() + 1);
            match edit {
                0 if i < bytes.len() => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ if i < bytes.len() => {
                    bytes.remove(i);
                }
                _ => {}
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        if text != original {
            prop_assert!(Payload::verify(&text, &ring()).is_err(), "a changed payload never verifies");
        }
        if let Ok(p) = Payload::decode(&text) {
            prop_assert_eq!(p.v, FORMAT_VERSION);
            prop_assert!(p.seq >= 1);
            prop_assert!(p.op == Op::Delete || p.row.is_some() || p.omitted.is_some());
        }
    }
}

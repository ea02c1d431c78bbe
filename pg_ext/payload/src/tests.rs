//! Round trips, the size limit, and a property test: any string decodes or is refused, never panics.

use super::*;
use proptest::prelude::*;

fn insert<'a>(row: &'a RawValue) -> Payload<'a> {
    Payload {
        v: FORMAT_VERSION,
        op: Op::Insert,
        table: "public.feedback_replies".into(),
        thread: "7c9e6679-7425-40de-944b-e07fc1f90ae7".into(),
        seq: 17,
        id: "a3bb189e-8bf9-3888-9912-ace4e6543002".into(),
        row: Some(row),
        omitted: None,
    }
}

#[test]
fn an_insert_encodes_compactly_and_decodes_to_itself() {
    let row: &RawValue = serde_json::from_str(r#"{"id":"x","content":"hi \"there\""}"#).unwrap();
    let text = insert(row).encode().unwrap();
    assert_eq!(
        text,
        r#"{"v":1,"op":"I","table":"public.feedback_replies","thread":"7c9e6679-7425-40de-944b-e07fc1f90ae7","seq":17,"id":"a3bb189e-8bf9-3888-9912-ace4e6543002","row":{"id":"x","content":"hi \"there\""}}"#
    );
    assert_eq!(Payload::decode(&text).unwrap(), insert(row));
}

#[test]
fn a_row_too_big_for_notify_is_left_out_and_flagged() {
    let big = format!(r#"{{"content":"{}"}}"#, "x".repeat(9000));
    let row: &RawValue = serde_json::from_str(&big).unwrap();
    let text = insert(row).encode().unwrap();
    assert!(text.len() <= MAX_PAYLOAD_BYTES);
    let p = Payload::decode(&text).unwrap();
    assert!(p.row.is_none(), "the row is left out");
    assert_eq!(p.omitted, Some(Omitted::TooLarge));
    assert!(p.needs_fetch(), "the consumer must fetch an omitted row");
}

#[test]
fn a_payload_just_under_the_limit_keeps_its_row() {
    let overhead = insert(serde_json::from_str(r#"{"c":""}"#).unwrap())
        .to_json()
        .len();
    let fill = "y".repeat(MAX_PAYLOAD_BYTES - overhead);
    let json = format!(r#"{{"c":"{fill}"}}"#);
    let text = insert(serde_json::from_str(&json).unwrap())
        .encode()
        .unwrap();
    assert_eq!(text.len(), MAX_PAYLOAD_BYTES);
    assert!(Payload::decode(&text).unwrap().row.is_some());
}

#[test]
fn keys_that_alone_overflow_notify_are_refused() {
    let mut p = insert(serde_json::from_str("{}").unwrap());
    let id = "k".repeat(9000);
    p.id = id.as_str().into();
    assert!(matches!(p.encode(), Err(PayloadError::TooLong(_))));
}

#[test]
fn bad_payloads_are_refused_with_a_reason() {
    let cases = [
        ("", "Malformed"),
        ("{}", "Malformed"),
        (
            r#"{"v":2,"op":"D","table":"t","thread":"a","seq":1,"id":"1"}"#,
            "Version",
        ),
        (
            r#"{"v":1,"op":"D","table":"t","thread":"a","seq":0,"id":"1"}"#,
            "Seq",
        ),
        (
            r#"{"v":1,"op":"I","table":"t","thread":"a","seq":1,"id":"1"}"#,
            "MissingRow",
        ),
        (
            r#"{"v":1,"op":"X","table":"t","thread":"a","seq":1,"id":"1"}"#,
            "Malformed",
        ),
        (
            r#"{"v":1,"op":"D","table":"t","thread":"a","seq":1,"id":"1","extra":1}"#,
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
    let p =
        Payload::decode(r#"{"v":1,"op":"D","table":"t","thread":"a","seq":3,"id":"1"}"#).unwrap();
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
        let text = format!(r#"{{"v":1,"op":"{op}","table":"t","thread":{},"seq":{seq},"id":"1"{row}}}"#,
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
        let text = insert(row).encode().unwrap();
        prop_assert!(text.len() <= MAX_PAYLOAD_BYTES);
        let p = Payload::decode(&text).unwrap();
        prop_assert_eq!(p.row.is_none(), p.omitted == Some(Omitted::TooLarge));
    }
}

//! The NOTIFY payload of every kind of change, decoded with the shared contract type.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;
    use threadcast_payload::{Omitted, Op, Payload, MAX_PAYLOAD_BYTES};

    use crate::tests::support::{keys, one, reply, schema, thread};

    /// The one payload the last statement queued, decoded; also checks it went to `threadcast`.
    fn only_payload() -> String {
        let sent = crate::trigger::take_sent();
        assert_eq!(sent.len(), 1, "one change, one notification: {sent:?}");
        assert_eq!(sent[0].0, "threadcast");
        sent[0].1.clone()
    }

    fn row_field(p: &Payload, field: &str) -> serde_json::Value {
        let row: serde_json::Value =
            serde_json::from_str(p.row.expect("the row is included").get()).unwrap();
        row[field].clone()
    }

    #[pg_test]
    fn an_insert_announces_the_whole_row() {
        schema();
        let t = thread(1);
        crate::trigger::take_sent();
        let (id, seq) = reply(&t, "hello");
        let text = only_payload();
        let p = Payload::verify(&text, &keys()).expect("signed with the current key");
        assert_eq!(
            (
                p.v,
                p.op,
                p.table.as_ref(),
                p.thread.as_ref(),
                p.seq,
                p.id.as_ref()
            ),
            (
                2,
                Op::Insert,
                "public.feedback_replies",
                t.as_str(),
                seq,
                id.as_str()
            )
        );
        assert_eq!(row_field(&p, "content"), "hello");
        assert_eq!(
            row_field(&p, "thread_seq"),
            seq,
            "the row carries its own number"
        );
        let src = one::<i64>("SELECT 'feedback_replies'::regclass::oid::int8");
        assert_eq!(p.src, Some(src as u32), "the payload names the table's oid");
        assert!(text.starts_with(&format!(r#"{{"v":2,"op":"I","table":"public.feedback_replies","src":{src},"thread":"{t}","seq":1,"id":"{id}","row":{{"#)), "compact: {text}");
    }

    #[pg_test]
    fn an_update_announces_the_new_row_under_a_new_number() {
        schema();
        let t = thread(1);
        let (id, _) = reply(&t, "draft");
        crate::trigger::take_sent();
        Spi::run(&format!(
            "UPDATE feedback_replies SET content = 'final' WHERE id = '{id}'"
        ))
        .unwrap();
        let text = only_payload();
        let p = Payload::decode(&text).unwrap();
        assert_eq!((p.op, p.seq), (Op::Update, 2));
        assert_eq!(row_field(&p, "content"), "final");
    }

    #[pg_test]
    fn a_delete_announces_only_the_keys() {
        schema();
        let t = thread(1);
        let (id, _) = reply(&t, "secret");
        crate::trigger::take_sent();
        Spi::run(&format!("DELETE FROM feedback_replies WHERE id = '{id}'")).unwrap();
        let text = only_payload();
        let src = one::<i64>("SELECT 'feedback_replies'::regclass::oid::int8");
        let kid = one::<i32>("SELECT max(kid) FROM threadcast.keys");
        assert!(
            text.starts_with(&format!(
                r#"{{"v":2,"op":"D","table":"public.feedback_replies","src":{src},"thread":"{t}","seq":2,"id":"{id}","kid":{kid},"sig":""#
            )),
            "{text}"
        );
        assert!(Payload::verify(&text, &keys()).is_ok(), "signed: {text}");
    }

    #[pg_test]
    fn a_row_too_big_for_notify_is_left_out_and_can_be_read_back() {
        schema();
        let t = thread(1);
        crate::trigger::take_sent();
        let (id, seq) = reply(&t, &"x".repeat(20_000));
        let text = only_payload();
        assert!(text.len() <= MAX_PAYLOAD_BYTES);
        let p = Payload::decode(&text).unwrap();
        assert_eq!(
            (p.row.is_none(), p.omitted, p.id.as_ref()),
            (true, Some(Omitted::TooLarge), id.as_str())
        );
        let len = one::<i32>(&format!("SELECT length(\"row\"->>'content') FROM threadcast.changes('feedback_replies', '{t}', {seq} - 1, {seq})"));
        assert_eq!(len, 20_000, "the consumer fetches the whole row by seq");
    }

    #[pg_test]
    fn a_keys_only_source_never_sends_content() {
        schema();
        Spi::run("SELECT threadcast.enable('feedback_replies', payload => 'keys')").unwrap();
        let t = thread(1);
        crate::trigger::take_sent();
        reply(&t, "private words");
        let text = only_payload();
        assert!(!text.contains("private words"), "{text}");
        assert_eq!(
            Payload::decode(&text).unwrap().omitted,
            Some(Omitted::KeysOnly)
        );
    }

    #[pg_test]
    fn quotes_backslashes_unicode_emoji_and_nulls_survive_the_round_trip() {
        schema();
        let t = thread(1);
        let content = "she said \"hi\" \\o/ — naïve 日本語 🎉 {\"json\": [1]} \n tab\t";
        crate::trigger::take_sent();
        Spi::run_with_args(
            "INSERT INTO feedback_replies (feedback_id, author_type, author_name, content) VALUES ($1::uuid, NULL, NULL, $2)",
            &[t.as_str().into(), content.into()],
        )
        .unwrap();
        let p = Payload::decode(&only_payload())
            .unwrap()
            .row
            .map(|r| r.get().to_owned())
            .unwrap();
        let row: serde_json::Value = serde_json::from_str(&p).unwrap();
        assert_eq!(row["content"], content);
        assert_eq!(row["author_name"], serde_json::Value::Null);
        assert_eq!(row["author_type"], serde_json::Value::Null);
    }

    #[pg_test]
    fn text_thread_keys_with_quotes_are_escaped() {
        Spi::run("CREATE TABLE \"Odd Table\" (\"the id\" int PRIMARY KEY, \"Thread\" text NOT NULL, body text)").unwrap();
        Spi::run("SELECT threadcast.enable('\"Odd Table\"', thread_column => 'Thread')").unwrap();
        crate::trigger::take_sent();
        Spi::run("INSERT INTO \"Odd Table\" VALUES (1, 'it''s \"quoted\" \\ ok', 'b')").unwrap();
        let text = only_payload();
        let p = Payload::decode(&text).unwrap();
        assert_eq!(p.thread, "it's \"quoted\" \\ ok");
        assert_eq!(p.table, "public.\"Odd Table\"");
        assert_eq!(p.id, "1");
    }
}

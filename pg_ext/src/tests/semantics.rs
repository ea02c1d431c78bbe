//! Change semantics that hold for a whole statement (seq order, implied deletes, TRUNCATE), the
//! signing key's rotation, and the repair of counters behind their table.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;
    use threadcast_payload::{Op, Payload};

    use crate::tests::support::{keys, one, reply, schema, thread};

    /// The notifications queued since the last call, as `Op@thread-suffix#seq`.
    fn sent() -> Vec<String> {
        crate::trigger::take_sent()
            .iter()
            .map(|(_, p)| {
                let p = Payload::decode(p).unwrap();
                format!("{:?}@{}#{}", p.op, &p.thread[p.thread.len() - 2..], p.seq)
            })
            .collect()
    }

    #[pg_test]
    fn one_statement_that_moves_a_row_and_updates_another_announces_each_thread_in_seq_order() {
        schema();
        let (a, b) = (thread(1), thread(2));
        let (moved, _) = reply(&a, "to move");
        reply(&a, "to edit");
        crate::trigger::take_sent();
        // One statement: the first row leaves thread a, the second is edited in it.
        Spi::run(&format!(
            "UPDATE feedback_replies SET feedback_id = CASE WHEN id = '{moved}' THEN '{b}'::uuid ELSE feedback_id END, \
                    content = content || '!' WHERE feedback_id = '{a}'"
        ))
        .unwrap();
        let sent = sent();
        let in_a: Vec<&String> = sent.iter().filter(|s| s.contains("@01#")).collect();
        let seqs: Vec<i64> = in_a
            .iter()
            .map(|s| s.rsplit('#').next().unwrap().parse().unwrap())
            .collect();
        let mut sorted = seqs.clone();
        sorted.sort();
        assert_eq!(
            seqs, sorted,
            "thread a hears its changes in seq order: {sent:?}"
        );
        assert_eq!(
            seqs,
            vec![3, 4],
            "a delete and an update, numbered 3 and 4: {sent:?}"
        );
        assert!(sent.contains(&"Update@02#1".to_string()), "{sent:?}");
    }

    #[pg_test]
    fn changing_a_primary_key_announces_the_delete_of_the_old_id() {
        schema();
        let t = thread(1);
        let (old, _) = reply(&t, "renamed");
        crate::trigger::take_sent();
        let new = "10000000-0000-4000-8000-0000000000ff";
        Spi::run(&format!(
            "UPDATE feedback_replies SET id = '{new}' WHERE id = '{old}'"
        ))
        .unwrap();
        let payloads: Vec<(Op, i64, String)> = crate::trigger::take_sent()
            .iter()
            .map(|(_, p)| {
                let p = Payload::decode(p).unwrap();
                (p.op, p.seq, p.id.into_owned())
            })
            .collect();
        assert_eq!(
            payloads,
            vec![
                (Op::Delete, 2, old.clone()),
                (Op::Update, 3, new.to_string())
            ]
        );
        assert_eq!(
            one::<String>(&format!(
                "SELECT string_agg(seq || kind || id, ',' ORDER BY seq) FROM threadcast.changes('feedback_replies', '{t}', 0)"
            )),
            format!("2delete{old},3reply{new}"),
            "a client resuming from the table learns of the old id's delete"
        );
    }

    #[pg_test]
    fn truncate_announces_a_reset_in_every_thread_and_numbers_go_on() {
        schema();
        let (a, b) = (thread(1), thread(2));
        reply(&a, "one");
        reply(&a, "two");
        reply(&b, "three");
        crate::trigger::take_sent();
        Spi::run("TRUNCATE feedback_replies").unwrap();
        let mut sent = sent();
        sent.sort();
        assert_eq!(sent, vec!["Reset@01#3", "Reset@02#2"]);
        assert_eq!(
            one::<String>(&format!(
                "SELECT string_agg(seq || kind, ',' ORDER BY seq) FROM threadcast.changes('feedback_replies', '{a}', 0)"
            )),
            "3reset",
            "a client resuming from before the truncation learns of it"
        );
        assert_eq!(reply(&a, "after").1, 4, "numbers are never reused");
    }

    #[pg_test]
    fn rotate_key_signs_from_then_on_with_a_new_key_and_keeps_the_old_one() {
        schema();
        let t = thread(1);
        reply(&t, "before");
        let before = Payload::decode(&crate::trigger::take_sent()[0].1)
            .unwrap()
            .kid;
        let new = one::<i32>("SELECT threadcast.rotate_key()");
        reply(&t, "after");
        let text = crate::trigger::take_sent()[0].1.clone();
        let after = Payload::verify(&text, &keys()).expect("verifies with the keys");
        assert_eq!(after.kid, Some(new as u32), "signed with the new key");
        assert_ne!(before, after.kid);
        assert_eq!(
            one::<i64>("SELECT count(*) FROM threadcast.keys"),
            2,
            "the old key still verifies what it signed"
        );
        assert_eq!(
            one::<i64>("SELECT count(*) FROM threadcast.keys WHERE retired_at IS NULL"),
            1
        );
    }

    #[pg_test]
    fn repair_raises_counters_left_behind_by_rows_written_without_the_triggers() {
        schema();
        let t = thread(1);
        reply(&t, "one");
        // As logical replication applies rows: the triggers stay silent.
        Spi::run("SET LOCAL session_replication_role = replica").unwrap();
        Spi::run(&format!(
            "INSERT INTO feedback_replies (feedback_id, content, thread_seq) VALUES ('{t}', 'replicated', 7)"
        ))
        .unwrap();
        let failing = one::<String>(
            "SELECT string_agg(\"check\", ',') FROM threadcast.doctor('feedback_replies') WHERE NOT ok",
        );
        assert!(
            failing.contains("trigger threadcast_seq") && failing.contains("counters"),
            "doctor names the replica session and the counters behind: {failing}"
        );
        Spi::run("SET LOCAL session_replication_role = origin").unwrap();
        assert_eq!(
            one::<i64>("SELECT threadcast.repair('feedback_replies')"),
            1
        );
        assert_eq!(reply(&t, "after repair").1, 8, "numbering goes on after 7");
        assert_eq!(
            one::<i64>("SELECT threadcast.repair('feedback_replies')"),
            0,
            "nothing left to raise"
        );
    }

    #[pg_test]
    fn doctor_tells_a_replica_only_trigger_as_not_firing() {
        schema();
        Spi::run("ALTER TABLE feedback_replies ENABLE REPLICA TRIGGER threadcast_notify").unwrap();
        let detail = one::<String>(
            "SELECT detail FROM threadcast.doctor('feedback_replies') WHERE \"check\" = 'trigger threadcast_notify' AND NOT ok",
        );
        assert!(
            detail.contains("ENABLE TRIGGER threadcast_notify"),
            "{detail}"
        );
    }
}

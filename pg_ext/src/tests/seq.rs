//! Per-thread sequence numbers: where they start, what takes one, and that none is reused.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    use crate::tests::support::{one, reply, schema, thread};

    #[pg_test]
    fn numbers_start_at_one_and_count_up_in_each_thread_on_its_own() {
        schema();
        let (a, b) = (thread(1), thread(2));
        let seqs: Vec<i64> = [&a, &a, &b, &a, &b]
            .iter()
            .map(|t| reply(t, "x").1)
            .collect();
        assert_eq!(seqs, vec![1, 2, 1, 3, 2]);
    }

    #[pg_test]
    fn an_update_moves_the_row_to_a_new_higher_number() {
        schema();
        let t = thread(1);
        let (id, _) = reply(&t, "first");
        reply(&t, "second");
        Spi::run_with_args(
            "UPDATE feedback_replies SET content = 'edited' WHERE id = $1::uuid",
            &[id.as_str().into()],
        )
        .unwrap();
        assert_eq!(
            one::<i64>("SELECT thread_seq FROM feedback_replies WHERE content = 'edited'"),
            3
        );
    }

    #[pg_test]
    fn a_delete_takes_a_number_and_leaves_a_tombstone() {
        schema();
        let t = thread(1);
        let (id, _) = reply(&t, "doomed");
        Spi::run_with_args(
            "DELETE FROM feedback_replies WHERE id = $1::uuid",
            &[id.as_str().into()],
        )
        .unwrap();
        assert_eq!(
            one::<String>("SELECT seq || ':' || id FROM threadcast.tombstones"),
            format!("2:{id}")
        );
        assert_eq!(
            reply(&t, "next").1,
            3,
            "a number is never handed out twice, even after its row is gone"
        );
    }

    #[pg_test]
    fn a_seq_written_by_the_client_is_overwritten() {
        schema();
        let t = thread(1);
        let seq = one::<i64>(&format!(
            "INSERT INTO feedback_replies (feedback_id, content, thread_seq) VALUES ('{t}', 'forged', 999) RETURNING thread_seq"
        ));
        assert_eq!(seq, 1);
    }

    #[pg_test]
    fn moving_a_reply_to_another_thread_deletes_it_from_the_old_one() {
        schema();
        let (a, b) = (thread(1), thread(2));
        let (id, _) = reply(&a, "wrong thread");
        crate::trigger::take_sent();
        Spi::run(&format!(
            "UPDATE feedback_replies SET feedback_id = '{b}' WHERE id = '{id}'"
        ))
        .unwrap();
        let ops: Vec<String> = crate::trigger::take_sent()
            .iter()
            .map(|(_, p)| {
                let p = threadcast_payload::Payload::decode(p).unwrap();
                format!("{:?}@{}#{}", p.op, &p.thread[p.thread.len() - 2..], p.seq)
            })
            .collect();
        assert_eq!(ops, vec!["Delete@01#2", "Update@02#1"]);
    }

    #[pg_test]
    fn changes_lists_replies_and_deletes_after_a_seq_in_order() {
        schema();
        let t = thread(1);
        let (first, _) = reply(&t, "one");
        reply(&t, "two");
        Spi::run(&format!(
            "DELETE FROM feedback_replies WHERE id = '{first}'"
        ))
        .unwrap();
        reply(&t, "three");
        let rows = one::<String>(&format!(
            "SELECT string_agg(seq || kind || coalesce(\"row\"->>'content', ''), ',' ORDER BY seq) FROM threadcast.changes('feedback_replies', '{t}', 1)"
        ));
        assert_eq!(rows, "2replytwo,3delete,4replythree");
        let bounded = one::<String>(&format!(
            "SELECT string_agg(seq::text, ',') FROM threadcast.changes('feedback_replies', '{t}', 0, 3)"
        ));
        assert_eq!(
            bounded, "2,3",
            "until_seq bounds the range; seq 1 was deleted"
        );
        assert_eq!(
            one::<i64>(&format!(
                "SELECT threadcast.current_seq('feedback_replies', '{t}')"
            )),
            4
        );
        assert_eq!(
            one::<String>(&format!("SELECT string_agg(\"row\"->>'content', ',' ORDER BY seq) FROM threadcast.latest('feedback_replies', '{t}', 2)")),
            "two,three"
        );
    }
}

//! enable(), disable() and doctor() on good input.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    use crate::tests::support::{one, reply, schema, thread};

    fn threadcast_triggers() -> i64 {
        one("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'feedback_replies'::regclass AND tgname LIKE 'threadcast%'")
    }

    fn doctor_failures() -> Vec<String> {
        Spi::connect(|c| {
            c.select(
                "SELECT \"check\" FROM threadcast.doctor('feedback_replies') WHERE NOT ok",
                None,
                &[],
            )
            .unwrap()
            .map(|r| r.get::<String>(1).unwrap().unwrap())
            .collect()
        })
    }

    #[pg_test]
    fn enable_adds_the_seq_column_its_unique_index_the_triggers_and_the_registration() {
        schema();
        assert_eq!(one::<String>("SELECT format_type(atttypid, NULL) FROM pg_attribute WHERE attrelid = 'feedback_replies'::regclass AND attname = 'thread_seq'"), "bigint");
        assert_eq!(threadcast_triggers(), 3, "seq, notify and truncate");
        assert!(one::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = 'feedback_replies'::regclass AND i.indisunique \
               AND i.indkey::text = (SELECT attnum FROM pg_attribute WHERE attrelid = i.indrelid AND attname = 'feedback_id') || ' ' || \
                                   (SELECT attnum FROM pg_attribute WHERE attrelid = i.indrelid AND attname = 'thread_seq'))"
        ), "a unique index covers (feedback_id, thread_seq)");
        assert_eq!(
            one::<String>("SELECT concat_ws(',', thread_column, seq_column, id_column, channel, payload) FROM threadcast.sources WHERE source = 'feedback_replies'::regclass"),
            "feedback_id,thread_seq,id,threadcast,full"
        );
    }

    #[pg_test]
    fn enable_twice_leaves_exactly_one_set_of_triggers() {
        schema();
        Spi::run("SELECT threadcast.enable('feedback_replies')").unwrap();
        Spi::run("SELECT threadcast.enable('feedback_replies')").unwrap();
        assert_eq!(threadcast_triggers(), 3, "seq, notify and truncate");
        assert_eq!(one::<i64>("SELECT count(*) FROM threadcast.sources"), 1);
        assert_eq!(one::<i64>("SELECT count(*) FROM pg_index WHERE indrelid = 'feedback_replies'::regclass AND indisunique"), 2, "the primary key and one seq index");
    }

    #[pg_test]
    fn enable_with_other_arguments_reconfigures_the_channel_and_payload_mode() {
        schema();
        Spi::run(
            "SELECT threadcast.enable('feedback_replies', channel => 'replies', payload => 'keys')",
        )
        .unwrap();
        assert_eq!(
            one::<String>("SELECT channel || '/' || payload FROM threadcast.sources"),
            "replies/keys"
        );
        assert_eq!(threadcast_triggers(), 3, "seq, notify and truncate");
        let t = thread(1);
        reply(&t, "hello");
        let sent = crate::trigger::take_sent();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, "replies", "the trigger uses the new channel");
    }

    #[pg_test]
    fn enable_numbers_rows_that_existed_before_it() {
        Spi::run(
            "CREATE TABLE notes (id int PRIMARY KEY, topic text NOT NULL, body text); \
             INSERT INTO notes VALUES (1, 'a', 'x'), (2, 'b', 'y'), (3, 'a', 'z');",
        )
        .unwrap();
        Spi::run("SELECT threadcast.enable('notes', thread_column => 'topic')").unwrap();
        assert_eq!(
            one::<String>("SELECT string_agg(topic || thread_seq, ',' ORDER BY id) FROM notes"),
            "a1,b1,a2"
        );
        Spi::run("INSERT INTO notes VALUES (4, 'a', 'w')").unwrap();
        assert_eq!(
            one::<i64>("SELECT thread_seq FROM notes WHERE id = 4"),
            3,
            "new rows continue after the numbered ones"
        );
    }

    #[pg_test]
    fn disable_removes_triggers_index_and_registration_but_keeps_the_numbers() {
        schema();
        let t = thread(1);
        reply(&t, "kept");
        Spi::run("SELECT threadcast.disable('feedback_replies')").unwrap();
        Spi::run("SELECT threadcast.disable('feedback_replies')").unwrap();
        assert_eq!(threadcast_triggers(), 0);
        assert_eq!(one::<i64>("SELECT count(*) FROM threadcast.sources"), 0);
        assert_eq!(one::<i64>("SELECT count(*) FROM pg_index WHERE indrelid = 'feedback_replies'::regclass AND indisunique"), 1, "only the primary key is left");
        assert_eq!(
            one::<i64>("SELECT thread_seq FROM feedback_replies"),
            1,
            "the seq column and its data stay"
        );

        Spi::run("SELECT threadcast.enable('feedback_replies')").unwrap();
        assert_eq!(
            reply(&t, "after re-enable").1,
            2,
            "numbering resumes where it stopped"
        );
    }

    #[pg_test]
    fn enable_can_set_replica_identity_full() {
        Spi::run("CREATE TABLE r (id int PRIMARY KEY, feedback_id uuid)").unwrap();
        Spi::run("SELECT threadcast.enable('r')").unwrap();
        assert_eq!(
            one::<String>("SELECT relreplident::text FROM pg_class WHERE oid = 'r'::regclass"),
            "d",
            "only a warning without the flag"
        );
        Spi::run("SELECT threadcast.enable('r', replica_identity_full => true)").unwrap();
        assert_eq!(
            one::<String>("SELECT relreplident::text FROM pg_class WHERE oid = 'r'::regclass"),
            "f"
        );
    }

    #[pg_test]
    fn doctor_passes_every_check_but_the_listener_on_a_fresh_schema() {
        schema();
        let rows = one::<i64>("SELECT count(*) FROM threadcast.doctor('feedback_replies')");
        assert_eq!(rows, 12, "every check reports a row");
        assert_eq!(
            doctor_failures(),
            vec!["listener".to_string()],
            "no broadcaster runs in a pg_test"
        );
    }

    #[pg_test]
    fn doctor_names_a_disabled_trigger_and_a_missing_replica_identity() {
        schema();
        Spi::run("ALTER TABLE feedback_replies DISABLE TRIGGER threadcast_notify").unwrap();
        Spi::run("ALTER TABLE feedback_replies REPLICA IDENTITY DEFAULT").unwrap();
        assert_eq!(
            doctor_failures(),
            vec!["trigger threadcast_notify", "replica identity", "listener"]
        );
        let detail: String = one("SELECT detail FROM threadcast.doctor('feedback_replies') WHERE \"check\" = 'trigger threadcast_notify'");
        assert!(
            detail.contains("ENABLE TRIGGER threadcast_notify"),
            "the fix is spelled out: {detail}"
        );
    }

    #[pg_test]
    fn doctor_checks_supabase_realtime_membership_when_the_publication_exists() {
        schema();
        Spi::run("CREATE PUBLICATION supabase_realtime").unwrap();
        assert!(doctor_failures().contains(&"supabase_realtime publication".to_string()));
        Spi::run("ALTER PUBLICATION supabase_realtime ADD TABLE feedback_replies").unwrap();
        assert!(!doctor_failures().contains(&"supabase_realtime publication".to_string()));
    }
}

//! Batched delivery inside one (rolled-back) transaction: what the trigger keeps for the commit
//! instead of NOTIFYing. The commit itself, the ring, the worker and every fault are tested over
//! real connections in `tests/it/batched.rs`.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;
    use threadcast_payload::Payload;

    use crate::tests::support::{keys, one, reply, schema, thread};

    #[pg_test]
    fn enable_records_batched_delivery_on_the_source_and_its_triggers() {
        schema();
        Spi::run("SELECT threadcast.enable('feedback_replies', delivery => 'batched')").unwrap();
        assert_eq!(
            one::<String>("SELECT delivery FROM threadcast.sources"),
            "batched"
        );
        assert_eq!(
            one::<i64>(
                "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'feedback_replies'::regclass \
                  AND tgname IN ('threadcast_notify', 'threadcast_truncate') \
                  AND encode(tgargs, 'escape') LIKE '%batched%'"
            ),
            2,
            "the row and truncate triggers carry the mode"
        );
        Spi::run("SELECT threadcast.enable('feedback_replies')").unwrap();
        assert_eq!(
            one::<String>("SELECT delivery FROM threadcast.sources"),
            "transaction",
            "enable() without it goes back to per-transaction delivery"
        );
    }

    #[pg_test]
    fn a_batched_change_is_kept_signed_for_the_commit_not_queued_with_notify() {
        schema();
        Spi::run("SELECT threadcast.enable('feedback_replies', delivery => 'batched')").unwrap();
        let t = thread(1);
        let before = crate::pending::kept().len();
        let (_, seq) = reply(&t, "kept for the commit");
        let kept = crate::pending::kept();
        assert_eq!(kept.len(), before + 1, "one change kept: {kept:?}");
        let (channel, text) = kept.last().unwrap();
        assert_eq!(channel, "threadcast");
        let p = Payload::verify(text, &keys()).expect("kept signed, as NOTIFY would carry it");
        assert_eq!(p.seq, seq);
        assert_eq!(
            one::<i64>("SELECT count(*) FROM pg_listening_channels()"),
            0,
            "(nothing here listens)"
        );
    }

    #[pg_test(error = "threadcast: delivery must be 'transaction' or 'batched', not 'lazy'")]
    fn an_unknown_delivery_mode_is_refused() {
        schema();
        Spi::run("SELECT threadcast.enable('feedback_replies', delivery => 'lazy')").unwrap();
    }

    #[pg_test]
    fn doctor_reports_the_delivery_mode() {
        schema();
        let detail = |check: &str| {
            one::<String>(&format!(
                "SELECT ok || ' ' || detail FROM threadcast.doctor('feedback_replies') WHERE \"check\" = '{check}'"
            ))
        };
        assert!(
            detail("delivery").starts_with("true per transaction"),
            "{}",
            detail("delivery")
        );
        Spi::run("SELECT threadcast.enable('feedback_replies', delivery => 'batched')").unwrap();
        assert!(
            detail("delivery").starts_with("true batched"),
            "{}",
            detail("delivery")
        );
    }
}

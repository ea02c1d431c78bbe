//! The SQL of a flood of notifications from a role that may only connect, shared by the test
//! (`tests/it/flood.rs`) and `cargo xtask bench stream`'s flood (`xtask/loadgen`): forged
//! notifications, and replays of genuine ones captured with LISTEN.

/// A statement that sends forged notifications `from..=to` on threadcast's channel, each shaped
/// like an insert into the table of oid `src` in `thread`, with a made-up signature; one in ten
/// names a key id (99) that does not exist. Run alone, it is one transaction.
pub fn forged(src: i64, thread: &str, from: u64, to: u64) -> String {
    format!(
        "SELECT pg_catalog.pg_notify('threadcast', pg_catalog.format(
             '{{\"v\":2,\"op\":\"I\",\"table\":\"public.feedback_replies\",\"src\":{src},\"thread\":\"%s\",\"seq\":%s,\"id\":\"x\",\"row\":{{\"content\":\"forged %s\"}},\"kid\":%s,\"sig\":\"%s\"}}',
             '{thread}', i, i, CASE WHEN i % 10 = 0 THEN 99 ELSE 1 END, pg_catalog.repeat('A', 43)))
           FROM pg_catalog.generate_series({from}, {to}) i"
    )
}

/// The temporary table the captured notifications go into, one `payload` per row.
pub const CAPTURED_TABLE: &str = "CREATE TEMP TABLE captured (payload text)";

/// A block that sends every payload of `captured` again, `rounds` times. Identical payloads in
/// one transaction are sent once, so each round commits: run it alone, outside a transaction.
pub fn replays(rounds: u64) -> String {
    format!(
        "DO $$ BEGIN
           FOR round IN 1..{rounds} LOOP
             PERFORM pg_catalog.pg_notify('threadcast', payload) FROM captured;
             COMMIT;
           END LOOP;
         END $$"
    )
}

//! Every bad input to enable() and the triggers is a PostgreSQL ERROR with a message a DBA
//! understands, never a panic or a crash.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    use crate::tests::support::{schema, thread};

    #[pg_test(error = "relation \"no_such_table\" does not exist")]
    fn enable_refuses_a_missing_table() {
        Spi::run("SELECT threadcast.enable('no_such_table')").unwrap();
    }

    #[pg_test(error = "threadcast: column 'nope' of public.t does not exist")]
    fn enable_refuses_a_missing_thread_column() {
        Spi::run("CREATE TABLE t (id int PRIMARY KEY, feedback_id uuid)").unwrap();
        Spi::run("SELECT threadcast.enable('t', thread_column => 'nope')").unwrap();
    }

    #[pg_test(
        error = "threadcast: thread column 'feedback_id' of public.t has type jsonb, which threadcast does not support"
    )]
    fn enable_refuses_an_unsupported_thread_column_type() {
        Spi::run("CREATE TABLE t (id int PRIMARY KEY, feedback_id jsonb)").unwrap();
        Spi::run("SELECT threadcast.enable('t')").unwrap();
    }

    #[pg_test(error = "threadcast: table public.t has no primary key")]
    fn enable_refuses_a_table_without_a_primary_key() {
        Spi::run("CREATE TABLE t (id int, feedback_id uuid)").unwrap();
        Spi::run("SELECT threadcast.enable('t')").unwrap();
    }

    #[pg_test(
        error = "threadcast: the primary key of public.t has 2 columns; threadcast needs a single-column primary key"
    )]
    fn enable_refuses_a_composite_primary_key() {
        Spi::run("CREATE TABLE t (a int, b int, feedback_id uuid, PRIMARY KEY (a, b))").unwrap();
        Spi::run("SELECT threadcast.enable('t')").unwrap();
    }

    #[pg_test(
        error = "threadcast: must be owner of table public.t to enable or disable threadcast on it"
    )]
    fn enable_refuses_a_caller_who_does_not_own_the_table() {
        Spi::run("CREATE TABLE t (id int PRIMARY KEY, feedback_id uuid)").unwrap();
        Spi::run("CREATE ROLE threadcast_stranger").unwrap();
        Spi::run("GRANT ALL ON t TO threadcast_stranger").unwrap();
        Spi::run("SET LOCAL ROLE threadcast_stranger").unwrap();
        Spi::run("SELECT threadcast.enable('t')").unwrap();
    }

    #[pg_test(error = "threadcast: payload must be 'full' or 'keys', not 'everything'")]
    fn enable_refuses_an_unknown_payload_mode() {
        schema();
        Spi::run("SELECT threadcast.enable('feedback_replies', payload => 'everything')").unwrap();
    }

    #[pg_test(error = "threadcast: channel must be 1 to 63 bytes long")]
    fn enable_refuses_an_empty_channel() {
        schema();
        Spi::run("SELECT threadcast.enable('feedback_replies', channel => '')").unwrap();
    }

    #[pg_test(error = "threadcast: seq column 'n' of public.t has type integer; it must be bigint")]
    fn enable_refuses_a_seq_column_of_the_wrong_type() {
        Spi::run("CREATE TABLE t (id int PRIMARY KEY, feedback_id uuid, n int)").unwrap();
        Spi::run("SELECT threadcast.enable('t', seq_column => 'n')").unwrap();
    }

    #[pg_test(error = "threadcast: public.v is not a table")]
    fn enable_refuses_a_view() {
        Spi::run("CREATE VIEW v AS SELECT 1 AS id, gen_random_uuid() AS feedback_id").unwrap();
        Spi::run("SELECT threadcast.enable('v')").unwrap();
    }

    #[pg_test(
        error = "threadcast: public.feedback_replies is already enabled with thread column 'feedback_id' and seq column 'thread_seq'"
    )]
    fn enable_refuses_to_switch_the_thread_column_under_existing_numbers() {
        schema();
        Spi::run("SELECT threadcast.enable('feedback_replies', thread_column => 'author_name')")
            .unwrap();
    }

    #[pg_test(error = "threadcast: thread column \"topic\" of public.t must not be NULL")]
    fn a_row_without_a_thread_is_refused() {
        Spi::run("CREATE TABLE t (id int PRIMARY KEY, topic text)").unwrap();
        Spi::run("SELECT threadcast.enable('t', thread_column => 'topic')").unwrap();
        Spi::run("INSERT INTO t VALUES (1, NULL)").unwrap();
    }

    #[pg_test(error = "threadcast: table public.feedback_replies is not enabled")]
    fn changes_refuses_a_table_that_is_not_enabled() {
        schema();
        let t = thread(1);
        Spi::run("SELECT threadcast.disable('feedback_replies')").unwrap();
        Spi::run(&format!(
            "SELECT * FROM threadcast.changes('feedback_replies', '{t}', 0)"
        ))
        .unwrap();
    }
}

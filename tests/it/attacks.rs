//! Attacks on the extension by roles that may do no more than create objects in a schema of their
//! own (and a superuser who then administers their tables): each test names the threat, mounts
//! the attack for real over a real connection, and checks that the attacker gained nothing.
//!
//! Under threadcast 0.1.0 the first two made the attacker superuser (see `upgrade.rs`, which
//! reproduces them on 0.1.0's SQL objects before upgrading).

use threadcast_tests::attacker::Attacker;
use threadcast_tests::db;
use threadcast_tests::TestDb;

/// A cast to json of a user-defined type, which `row_to_json` calls when it renders a row.
fn cast_attack(kind: &str, schema: &str) -> (String, &'static str) {
    let (make_type, column_type, value) = match kind {
        "enum" => (
            format!("CREATE TYPE {schema}.t AS ENUM ('x')"),
            "t",
            "'x'",
        ),
        "range" => (
            format!("CREATE TYPE {schema}.t AS RANGE (subtype = int4)"),
            "t",
            "'[1,2)'",
        ),
        "multirange" => (
            format!("CREATE TYPE {schema}.r AS RANGE (subtype = int4, multirange_type_name = {schema}.t)"),
            "t",
            "'{[1,2)}'",
        ),
        other => panic!("no attack for {other}"),
    };
    let sql = format!(
        "{make_type};
         CREATE TABLE {schema}.calls (who text);
         CREATE FUNCTION {schema}.to_json({schema}.{column_type}) RETURNS json LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO {schema}.calls VALUES (current_user);
             BEGIN
                 EXECUTE format('ALTER ROLE %I SUPERUSER', session_user);
             EXCEPTION WHEN insufficient_privilege THEN NULL;
             END;
             RETURN '\"x\"'::json;
         END $$;
         CREATE CAST ({schema}.{column_type} AS json) WITH FUNCTION {schema}.to_json({schema}.{column_type});
         CREATE TABLE {schema}.replies (id bigserial PRIMARY KEY, feedback_id uuid NOT NULL, v {schema}.{column_type});
         SELECT threadcast.enable('{schema}.replies');
         INSERT INTO {schema}.replies (feedback_id, v) VALUES (gen_random_uuid(), {value});"
    );
    (sql, "cast")
}

#[tokio::test]
async fn a_json_cast_planted_on_a_user_type_runs_as_the_writer_not_the_extension_owner() {
    let db = TestDb::new().await;
    for kind in ["enum", "range", "multirange"] {
        let mallory = Attacker::new(&db).await;
        let (attack, _) = cast_attack(kind, &mallory.schema);
        mallory
            .client
            .batch_execute(&attack)
            .await
            .unwrap_or_else(|e| panic!("the {kind} attack runs as far as the insert: {e:?}"));
        let callers: Vec<String> = db
            .client
            .query(&format!("SELECT who FROM {}.calls", mallory.schema), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(
            !callers.is_empty(),
            "the {kind} cast ran (the trigger rendered the row), so the attack was real"
        );
        assert!(
            callers.iter().all(|who| *who == mallory.role),
            "the {kind} cast ran only as the writer, never as the extension owner: {callers:?}"
        );
        assert!(
            !mallory.is_superuser(&db).await,
            "the {kind} cast gained nothing"
        );
    }
}

#[tokio::test]
async fn a_table_owner_cannot_write_threadcasts_own_tables() {
    let db = TestDb::new().await;
    let mallory = Attacker::new(&db).await;
    mallory
        .client
        .batch_execute(&format!(
            "CREATE TABLE {0}.replies (id bigserial PRIMARY KEY, feedback_id uuid NOT NULL, body text);
             SELECT threadcast.enable('{0}.replies');",
            mallory.schema
        ))
        .await
        .expect("an owner may enable its own table");
    let table = format!("'{}.replies'::regclass", mallory.schema);
    for sql in [
        format!("UPDATE threadcast.sources SET channel = 'x' WHERE source = {table}"),
        format!("DELETE FROM threadcast.sources WHERE source = {table}"),
        format!("INSERT INTO threadcast.sources (source, thread_column, seq_column, id_column, channel, payload) VALUES ({table}, 'a', 'b', 'c', 'd', 'full')"),
        format!("UPDATE threadcast.counters SET last_seq = 1 WHERE source = {table}"),
        format!("INSERT INTO threadcast.counters VALUES ({table}, 'x', 5)"),
        format!("INSERT INTO threadcast.tombstones (source, thread, seq, id) VALUES ({table}, 'x', 5, 'y')"),
        format!("DELETE FROM threadcast.tombstones WHERE source = {table}"),
        "SELECT * FROM threadcast.keys".to_owned(),
    ] {
        let error = mallory
            .client
            .batch_execute(&sql)
            .await
            .expect_err(&format!("refused: {sql}"));
        assert_eq!(
            error.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{sql}: {error:?}"
        );
    }
}

#[tokio::test]
async fn no_role_but_the_extension_can_call_the_privileged_helpers() {
    let db = TestDb::new().await;
    let mallory = Attacker::new(&db).await;
    let definers: Vec<(String, String)> = db
        .client
        .query(
            "SELECT p.oid::regprocedure::text, p.oid::text FROM pg_proc p
               JOIN pg_depend d ON d.objid = p.oid AND d.classid = 'pg_proc'::regclass AND d.deptype = 'e'
               JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'threadcast'
              WHERE p.prosecdef",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(!definers.is_empty());
    for (function, oid) in &definers {
        let can: bool = db
            .client
            .query_one(
                "SELECT has_function_privilege($1, $2::text::oid, 'EXECUTE')",
                &[&mallory.role, oid],
            )
            .await
            .unwrap()
            .get(0);
        assert!(!can, "{function} is not executable by other roles");
        let call = format!("SELECT {}", placeholder_call(function));
        let error = mallory
            .client
            .batch_execute(&call)
            .await
            .expect_err(&format!("{call} is refused"));
        assert_eq!(
            error.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{call}: {error:?}"
        );
    }
}

/// `threadcast.f(oid,text)` -> `threadcast.f('0'::oid,'x'::text)`: real values, since the
/// planner folds a STRICT call with a NULL argument away without ever checking EXECUTE.
fn placeholder_call(signature: &str) -> String {
    let (name, args) = signature.split_once('(').unwrap();
    let args = args.trim_end_matches(')');
    let args: Vec<String> = args
        .split(',')
        .filter(|a| !a.trim().is_empty())
        .map(|a| {
            let value = match a.trim() {
                "text" => "'x'",
                "boolean" => "'false'",
                t if t.ends_with("[]") => "'{}'",
                _ => "'0'",
            };
            format!("{value}::{}", a.trim())
        })
        .collect();
    format!("{name}({})", args.join(","))
}

#[tokio::test]
async fn every_security_definer_function_of_the_extension_pins_search_path() {
    let db = TestDb::new().await;
    let rows = db
        .client
        .query(
            "SELECT p.oid::regprocedure::text, coalesce(p.proconfig, '{}')
               FROM pg_proc p
               JOIN pg_depend d ON d.objid = p.oid AND d.classid = 'pg_proc'::regclass AND d.deptype = 'e'
               JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'threadcast'
              WHERE p.prosecdef ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        names,
        [
            "threadcast.advance_counters(oid,text[],bigint[])",
            "threadcast.next_seq(oid,text)",
            "threadcast.record_tombstone(oid,text,bigint,text)",
            "threadcast.register_source(oid,text,text,text,text,text,boolean,text)",
            "threadcast.reset_threads(oid)",
            "threadcast.signing_key()",
            "threadcast.unregister_source(oid)",
        ],
        "SECURITY DEFINER only on the small helpers that touch threadcast's own tables"
    );
    for row in &rows {
        let (name, config): (String, Vec<String>) = (row.get(0), row.get(1));
        assert_eq!(
            config,
            ["search_path=pg_catalog, pg_temp"],
            "{name} pins search_path"
        );
    }
}

#[tokio::test]
async fn a_tampered_registration_runs_nothing_when_a_superuser_administers_the_table() {
    let db = TestDb::new().await;
    let mallory = Attacker::new(&db).await;
    let table = format!("{}.replies", mallory.schema);
    mallory
        .client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id bigserial PRIMARY KEY, feedback_id uuid NOT NULL, body text);
             SELECT threadcast.enable('{table}');"
        ))
        .await
        .unwrap();
    // Breakouts from an identifier, a literal and plain text; each fits a `name` (63 bytes).
    let planted = [
        format!("\"; ALTER ROLE {} SUPERUSER; --", mallory.role),
        format!("'); ALTER ROLE {} SUPERUSER; --", mallory.role),
        "x; CREATE TABLE public.pwned(); --".to_owned(),
    ];
    // Owners cannot write threadcast.sources any more (tested above); this stands for a row
    // tampered with under 0.1.0 and carried through the upgrade, or a hostile restore.
    let columns = ["thread_column", "seq_column", "id_column", "channel"];
    for (column, planted) in columns
        .iter()
        .flat_map(|c| planted.iter().map(move |p| (c, p)))
    {
        db.client
            .execute(
                &format!(
                    "UPDATE threadcast.sources SET {column} = $1 WHERE source = $2::text::regclass"
                ),
                &[planted, &table],
            )
            .await
            .unwrap_or_else(|e| panic!("tamper with {column}: {e:?}"));
        for call in ["doctor", "disable", "enable", "repair"] {
            let sql = format!("SELECT * FROM threadcast.{call}('{table}')");
            // An ERROR is fine (the registration is nonsense); running the planted SQL is not.
            let _ = db.client.batch_execute(&sql).await;
        }
        assert!(
            !mallory.is_superuser(&db).await,
            "a planted {column} made nobody superuser"
        );
        let pwned: bool = db
            .client
            .query_one("SELECT to_regclass('public.pwned') IS NOT NULL", &[])
            .await
            .unwrap()
            .get(0);
        assert!(!pwned, "no statement planted in {column} ran");
        // Back to a sane registration for the next column.
        db.client
            .batch_execute(&format!(
                "DELETE FROM threadcast.sources WHERE source = '{table}'::regclass;
                 SELECT threadcast.enable('{table}');"
            ))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_superuser_enabling_an_untrusted_table_runs_its_code_as_the_owner() {
    let db = TestDb::new().await;
    let mallory = Attacker::new(&db).await;
    let schema = &mallory.schema;
    // Rows that need numbering make enable() UPDATE the table, firing the owner's own trigger.
    mallory
        .client
        .batch_execute(&format!(
            "CREATE TABLE {schema}.replies (id bigserial PRIMARY KEY, feedback_id uuid NOT NULL, body text, thread_seq bigint);
             CREATE TABLE {schema}.calls (who text);
             INSERT INTO {schema}.replies (feedback_id, body) VALUES (gen_random_uuid(), 'a'), (gen_random_uuid(), 'b');
             CREATE FUNCTION {schema}.trap() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 INSERT INTO {schema}.calls VALUES (current_user);
                 PERFORM set_config('search_path', '{schema}, pg_catalog', false);
                 BEGIN
                     EXECUTE format('ALTER ROLE %I SUPERUSER', '{role}');
                 EXCEPTION WHEN insufficient_privilege THEN NULL;
                 END;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER trap BEFORE UPDATE ON {schema}.replies FOR EACH ROW EXECUTE FUNCTION {schema}.trap();",
            role = mallory.role
        ))
        .await
        .expect("the trap is set");
    let admin = db::connect(&db.admin_url).await;
    admin
        .batch_execute(&format!("SELECT threadcast.enable('{schema}.replies')"))
        .await
        .expect("a superuser enables the table");
    let callers: Vec<String> = db
        .client
        .query(&format!("SELECT who FROM {schema}.calls"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        callers,
        [mallory.role.clone(), mallory.role.clone()],
        "the owner's trigger ran, as the owner"
    );
    assert!(!mallory.is_superuser(&db).await, "the trap gained nothing");
    let search_path: String = admin
        .query_one("SHOW search_path", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        search_path, "\"$user\", public",
        "the superuser's session settings are untouched"
    );
}

#[tokio::test]
async fn a_threadcast_schema_made_first_by_another_role_stops_create_extension() {
    let db = TestDb::new().await;
    let mallory = Attacker::new(&db).await;
    let fresh = format!("{}_fresh", db.name);
    db.client
        .batch_execute(&format!("CREATE DATABASE {fresh}"))
        .await
        .unwrap();
    let url = db.admin_url.replace(&db.name, &fresh);
    let admin = db::connect(&url).await;
    admin
        .batch_execute(&format!(
            "CREATE SCHEMA threadcast AUTHORIZATION {}",
            mallory.role
        ))
        .await
        .unwrap();
    let error = admin
        .batch_execute("CREATE EXTENSION threadcast")
        .await
        .expect_err("a schema owned by another role is refused");
    let message = error
        .as_db_error()
        .map(|e| e.message().to_owned())
        .unwrap_or_default();
    assert!(
        message.contains("already exists and belongs to role"),
        "{message}"
    );
}

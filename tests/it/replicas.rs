//! A source's life beyond one database: a logical replica that is promoted goes on numbering where
//! the replicated rows left off (doctor names the repair, repair makes it so), and a database
//! dumped with pg_dump and restored elsewhere goes on streaming and numbering.

use std::process::Command;

use threadcast_harness::cluster::pg_bin;
use threadcast_tests::{assert_exactly_once, eventually, seqs, Cluster, TestDb, TestServer};
use uuid::Uuid;

/// The checks of `threadcast.doctor()` that fail, with their details.
async fn doctor_failures(db: &TestDb) -> Vec<(String, String)> {
    db.client
        .query(
            "SELECT \"check\", detail FROM threadcast.doctor('public.feedback_replies') WHERE NOT ok",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn thread_seqs(db: &TestDb, thread: Uuid) -> Vec<i64> {
    db.client
        .query(
            "SELECT thread_seq FROM feedback_replies WHERE feedback_id = $1 ORDER BY thread_seq",
            &[&thread],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn a_promoted_logical_replica_goes_on_numbering_after_the_replicated_rows() {
    let primary_cluster = Cluster::start_with(&[("wal_level", "logical")]);
    let replica_cluster = Cluster::start();
    let primary = TestDb::in_cluster(&primary_cluster).await;
    let replica = TestDb::in_cluster(&replica_cluster).await;
    // The rows and their tombstones travel; the counters do not (a replica's own triggers never
    // fire for replicated rows, so nothing would keep them up to date anyway).
    primary
        .client
        .batch_execute(
            "CREATE PUBLICATION threadcast_pub FOR TABLE public.feedback, public.feedback_replies, threadcast.tombstones",
        )
        .await
        .expect("publish the source and its tombstones");
    replica
        .client
        .batch_execute(&format!(
            "CREATE SUBSCRIPTION threadcast_sub CONNECTION '{}' PUBLICATION threadcast_pub",
            primary_cluster.url(&primary.name, "postgres")
        ))
        .await
        .expect("subscribe");

    let thread = primary.create_thread().await;
    let first = primary.insert_reply(thread, "one").await;
    let second = primary.insert_reply(thread, "two").await;
    primary.insert_reply(thread, "three").await;
    primary.update_reply(first, "one, edited").await; // seq 4
    primary.delete_reply(second).await; // seq 5, a tombstone
    eventually("the replica has every row and tombstone", || async {
        let tombstones: i64 = replica
            .client
            .query_one("SELECT count(*) FROM threadcast.tombstones", &[])
            .await
            .unwrap()
            .get(0);
        thread_seqs(&replica, thread).await == [3, 4] && tombstones == 1
    })
    .await;

    // Promotion: the replica stops applying and takes writes of its own.
    replica
        .client
        .batch_execute("ALTER SUBSCRIPTION threadcast_sub DISABLE")
        .await
        .unwrap();
    let failing = doctor_failures(&replica).await;
    let counters = failing
        .iter()
        .find(|(check, _)| check == "counters")
        .unwrap_or_else(|| panic!("doctor names the counters behind: {failing:?}"));
    assert!(
        counters.1.contains("threadcast.repair("),
        "and the repair: {}",
        counters.1
    );
    let raised: i64 = replica
        .client
        .query_one("SELECT threadcast.repair('public.feedback_replies')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(raised, 1, "one thread's counter is raised");
    assert!(
        doctor_failures(&replica)
            .await
            .iter()
            .all(|(check, _)| check != "counters"),
        "doctor is content after the repair"
    );

    replica
        .insert_reply(thread, "written on the promoted replica")
        .await;
    assert_eq!(
        thread_seqs(&replica, thread).await,
        [3, 4, 6],
        "gap-free after the primary's last number (5, the delete): no number reused, no collision"
    );
    replica
        .client
        .batch_execute("DROP SUBSCRIPTION threadcast_sub")
        .await
        .unwrap();
}

/// Runs a PostgreSQL client tool (pg_dump, pg_restore); panics with its output on failure.
fn run(tool: &str, args: &[&str]) {
    let output = Command::new(pg_bin(tool))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {tool}: {e}"));
    assert!(
        output.status.success(),
        "{tool} {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn a_database_restored_from_pg_dump_goes_on_streaming_and_numbering() {
    let db = TestDb::new().await;
    let thread = db.create_thread().await;
    db.insert_reply(thread, "one").await;
    let doomed = db.insert_reply(thread, "two").await;
    db.insert_reply(thread, "three").await;
    db.delete_reply(doomed).await; // seq 4, a tombstone

    let dump = std::env::temp_dir().join(format!("threadcast-{}.dump", Uuid::new_v4()));
    let dump_path = dump.to_str().unwrap();
    let source = Cluster::shared();
    run(
        "pg_dump",
        &["-Fc", "-f", dump_path, &source.uri(&db.name, "postgres")],
    );
    let target = Cluster::start();
    let restored_name = format!("r_{}", Uuid::new_v4().simple());
    target.create_db(&restored_name).unwrap();
    let admin = threadcast_tests::db::connect(&target.url(&restored_name, "postgres")).await;
    // Roles are the cluster's, not the dump's.
    admin
        .batch_execute("CREATE ROLE threadcast_broadcaster LOGIN")
        .await
        .unwrap();
    run(
        "pg_restore",
        &[
            "--exit-on-error",
            "-d",
            &target.uri(&restored_name, "postgres"),
            dump_path,
        ],
    );
    let _ = std::fs::remove_file(&dump);

    let restored = TestDb::attach_in(&target, &restored_name).await;
    assert_eq!(
        doctor_failures(&restored).await.len(),
        1,
        "only the listener is missing: {:?}",
        doctor_failures(&restored).await
    );
    let server = TestServer::start(&restored).await;
    let mut resumed = server
        .open_with(thread, "&lastEventId=0", None)
        .await
        .expect("a stream on the restored database");
    let history = resumed.events(3).await;
    assert_eq!(
        seqs(&history),
        [1, 3, 4],
        "the replies and the delete, restored"
    );
    restored.insert_reply(thread, "after the restore").await;
    let next = resumed.next_event().await;
    assert_eq!(
        (next.seq(), next.content()),
        (5, "after the restore".to_owned()),
        "numbering goes on, announced live with the restored database's own key"
    );
    let mut all = history;
    all.push(next);
    assert_exactly_once("the restored thread", &all, &restored, thread).await;
}

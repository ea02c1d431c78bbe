//! Tenants under row-level security (the usual Supabase pattern: each role sees the replies of
//! its own projects) learn nothing of each other's threads through threadcast: not their keys,
//! numbers or deleted ids in threadcast.counters and threadcast.tombstones, nor anything through
//! current_seq() or changes().

use threadcast_tests::{db, Cluster, TestDb};
use uuid::Uuid;

struct Tenant {
    role: String,
    thread: Uuid,
    deleted: Uuid,
}

#[tokio::test]
async fn a_tenant_under_rls_sees_only_its_own_threads_counters_and_tombstones() {
    let db = TestDb::new().await;
    let suffix = &Uuid::new_v4().simple().to_string()[..10];
    db.client
        .batch_execute(
            "CREATE TABLE public.tenant_projects (role name NOT NULL, project uuid NOT NULL);
             ALTER TABLE feedback_replies ENABLE ROW LEVEL SECURITY;
             CREATE POLICY own_projects ON feedback_replies USING (EXISTS (
                 SELECT 1 FROM feedback f JOIN tenant_projects t ON t.project = f.project_id
                  WHERE f.id = feedback_id AND t.role = current_user));",
        )
        .await
        .unwrap();
    let mut tenants = Vec::new();
    for name in ["a", "b"] {
        let role = format!("tenant_{name}_{suffix}");
        let project = Uuid::new_v4();
        db.client
            .batch_execute(&format!(
                "CREATE ROLE {role} LOGIN;
                 GRANT SELECT ON feedback, feedback_replies, tenant_projects TO {role};
                 INSERT INTO tenant_projects VALUES ('{role}', '{project}');"
            ))
            .await
            .unwrap();
        let thread: Uuid = db
            .client
            .query_one(
                "INSERT INTO feedback (project_id, title) VALUES ($1, 'x') RETURNING id",
                &[&project],
            )
            .await
            .unwrap()
            .get(0);
        db.insert_reply(thread, "kept").await;
        let deleted = db.insert_reply(thread, "deleted").await;
        db.delete_reply(deleted).await;
        tenants.push(Tenant {
            role,
            thread,
            deleted,
        });
    }

    for (me, other) in [(&tenants[0], &tenants[1]), (&tenants[1], &tenants[0])] {
        let client = db::connect(&Cluster::shared().url(&db.name, &me.role)).await;
        let counters: Vec<String> = client
            .query("SELECT thread FROM threadcast.counters", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(
            counters,
            [me.thread.to_string()],
            "{} sees its own counter only",
            me.role
        );
        let tombstones: Vec<(String, String)> = client
            .query("SELECT thread, id FROM threadcast.tombstones", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(
            tombstones,
            [(me.thread.to_string(), me.deleted.to_string())],
            "{} sees its own deletes only",
            me.role
        );
        for (whose, tenant, seq, changes) in [("its own", me, 3, 2), ("the other's", other, 0, 0)] {
            let current: i64 = client
                .query_one(
                    "SELECT threadcast.current_seq('public.feedback_replies', $1::uuid::text)",
                    &[&tenant.thread],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(current, seq, "{}: current_seq of {whose} thread", me.role);
            let listed = client
                .query(
                    "SELECT * FROM threadcast.changes('public.feedback_replies', $1::uuid::text, 0)",
                    &[&tenant.thread],
                )
                .await
                .unwrap()
                .len();
            assert_eq!(listed, changes, "{}: changes of {whose} thread", me.role);
        }
    }
}

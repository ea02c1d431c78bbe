//! A hostile role for the attack tests: it may log in and create objects in one schema, and
//! nothing more (no superuser, no other grants), as the threat model of docs/security.md puts it.

use tokio_postgres::Client;
use uuid::Uuid;

use crate::db::{connect, TestDb};
use threadcast_harness::Cluster;

pub struct Attacker {
    /// The role's name (cluster-wide, so unique per test).
    pub role: String,
    /// The one schema it may create objects in (made by a superuser; not its own).
    pub schema: String,
    /// A connection as the role.
    pub client: Client,
}

impl Attacker {
    /// A new role with only USAGE and CREATE on a schema of its name, in `db` of the shared cluster.
    pub async fn new(db: &TestDb) -> Attacker {
        Attacker::in_cluster(db, Cluster::shared()).await
    }

    pub async fn in_cluster(db: &TestDb, cluster: &Cluster) -> Attacker {
        let role = format!("mallory_{}", &Uuid::new_v4().simple().to_string()[..12]);
        db.client
            .batch_execute(&format!(
                "CREATE ROLE {role} LOGIN;
                 CREATE SCHEMA {role};
                 GRANT USAGE, CREATE ON SCHEMA {role} TO {role};"
            ))
            .await
            .expect("create the attacker's role and schema");
        let client = connect(&cluster.url(&db.name, &role)).await;
        Attacker {
            schema: role.clone(),
            role,
            client,
        }
    }

    /// Whether the attack made the role a superuser.
    pub async fn is_superuser(&self, db: &TestDb) -> bool {
        db.client
            .query_one(
                "SELECT rolsuper FROM pg_roles WHERE rolname = $1",
                &[&self.role],
            )
            .await
            .expect("read the attacker's role")
            .get(0)
    }
}

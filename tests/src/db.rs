//! A test database: its own database in a cluster, with the extension and the feedback schema
//! installed, a least-privilege role for the broadcaster, and helpers to write replies.

use threadcast_payload::{DeliveryMode, Notification};
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

use threadcast_harness::Cluster;

/// The role the broadcaster connects as, created by `sql/roles.sql` exactly as in production: it
/// may read and insert replies (`POST /api/widget/replies`) and nothing more.
pub const READER_ROLE: &str = "threadcast_broadcaster";

/// One database with the threadcast extension and `sql/schema.sql`.
pub struct TestDb {
    pub name: String,
    /// Connection string for the superuser.
    pub admin_url: String,
    /// Connection string for [`READER_ROLE`], what the broadcaster gets.
    pub reader_url: String,
    /// A superuser connection for arranging and writing.
    pub client: Client,
    /// How `feedback_replies`' notifications leave the database.
    pub delivery: DeliveryMode,
}

/// Connects and drives the connection in the background of the current runtime.
pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

impl TestDb {
    /// A fresh database in the shared cluster.
    pub async fn new() -> TestDb {
        TestDb::in_cluster(Cluster::shared()).await
    }

    /// A fresh database in the shared cluster whose source delivers in `delivery` mode.
    pub async fn with_delivery(delivery: DeliveryMode) -> TestDb {
        TestDb::in_cluster_with(Cluster::shared(), delivery).await
    }

    /// A fresh database in `cluster`.
    pub async fn in_cluster(cluster: &Cluster) -> TestDb {
        TestDb::in_cluster_with(cluster, DeliveryMode::Transaction).await
    }

    /// A fresh database in `cluster` whose source delivers in `delivery` mode.
    pub async fn in_cluster_with(cluster: &Cluster, delivery: DeliveryMode) -> TestDb {
        let name = format!("t_{}", Uuid::new_v4().simple());
        let admin = connect(&cluster.url("postgres", "postgres")).await;
        // CREATE DATABASE refuses to run in the implicit transaction of a multi-statement query.
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create the test database");
        let admin_url = cluster.url(&name, "postgres");
        let client = connect(&admin_url).await;
        let schema =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../sql/schema.sql"))
                .expect("read sql/schema.sql");
        let roles =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../sql/roles.sql"))
                .expect("read sql/roles.sql");
        client
            .batch_execute("CREATE EXTENSION threadcast")
            .await
            .expect("CREATE EXTENSION threadcast (is the extension installed? `cargo pgrx install` in pg_ext/)");
        client
            .batch_execute(&schema)
            .await
            .expect("run sql/schema.sql");
        client
            .batch_execute(&roles)
            .await
            .expect("run sql/roles.sql");
        if delivery != DeliveryMode::Transaction {
            client
                .batch_execute(&format!(
                    "SELECT threadcast.enable('public.feedback_replies', replica_identity_full => true, delivery => '{delivery}')"
                ))
                .await
                .expect("enable the source in its delivery mode");
        }
        TestDb {
            reader_url: cluster.url(&name, READER_ROLE),
            name,
            admin_url,
            client,
            delivery,
        }
    }

    /// A database of the shared cluster that the caller has set up itself (no extension or
    /// schema installed here).
    pub async fn attach(name: &str) -> TestDb {
        TestDb::attach_in(Cluster::shared(), name).await
    }

    /// [`TestDb::attach`] for a database of `cluster`.
    pub async fn attach_in(cluster: &Cluster, name: &str) -> TestDb {
        let admin_url = cluster.url(name, "postgres");
        TestDb {
            reader_url: cluster.url(name, READER_ROLE),
            name: name.to_owned(),
            client: connect(&admin_url).await,
            admin_url,
            delivery: DeliveryMode::Transaction,
        }
    }

    /// The keys that sign notifications, as the broadcaster reads them.
    pub async fn keys(&self) -> threadcast_payload::KeyRing {
        let rows = self
            .client
            .query("SELECT kid, secret FROM threadcast.keys", &[])
            .await
            .expect("read threadcast.keys");
        threadcast_payload::KeyRing::new(rows.iter().map(|r| {
            threadcast_payload::Key::from_row(r.get::<_, i32>(0) as u32, r.get::<_, &[u8]>(1))
                .expect("a 32-byte key")
        }))
    }

    /// The oid of `public.feedback_replies`, which notifications name it by (`src`).
    pub async fn source_oid(&self) -> i64 {
        self.client
            .query_one("SELECT 'public.feedback_replies'::regclass::oid::int8", &[])
            .await
            .expect("the replies table exists")
            .get(0)
    }

    /// A new feedback thread; returns its id (the thread key).
    pub async fn create_thread(&self) -> Uuid {
        let row = self
            .client
            .query_one(
                "INSERT INTO feedback (title) VALUES ('a thread') RETURNING id",
                &[],
            )
            .await
            .expect("insert a feedback thread");
        row.get(0)
    }

    /// A new feedback thread in `project`; returns its id.
    pub async fn create_thread_in(&self, project: Uuid) -> Uuid {
        self.client
            .query_one(
                "INSERT INTO feedback (title, project_id) VALUES ('a card', $1) RETURNING id",
                &[&project],
            )
            .await
            .expect("insert a feedback thread")
            .get(0)
    }

    /// Inserts one reply; returns its id.
    pub async fn insert_reply(&self, thread: Uuid, content: &str) -> Uuid {
        insert_reply(&self.client, thread, content).await
    }

    /// Changes a reply's content (it moves to a new seq).
    pub async fn update_reply(&self, reply: Uuid, content: &str) {
        self.client
            .execute(
                "UPDATE feedback_replies SET content = $2 WHERE id = $1",
                &[&reply, &content],
            )
            .await
            .expect("update a reply");
    }

    /// Deletes a reply.
    pub async fn delete_reply(&self, reply: Uuid) {
        self.client
            .execute("DELETE FROM feedback_replies WHERE id = $1", &[&reply])
            .await
            .expect("delete a reply");
    }

    /// The last seq handed out in `thread` (0 before its first change).
    pub async fn current_seq(&self, thread: Uuid) -> i64 {
        // A connection of its own: `client` may have died with a restarted server.
        connect(&self.admin_url)
            .await
            .query_one(
                "SELECT threadcast.current_seq('public.feedback_replies', $1::uuid::text)",
                &[&thread],
            )
            .await
            .expect("read threadcast.current_seq")
            .get(0)
    }

    /// Terminates the broadcaster's LISTEN connection(s) to this database; returns how many.
    pub async fn terminate_listener(&self) -> u64 {
        let rows = self
            .client
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                  WHERE application_name = $1 AND datname = current_database()",
                &[&threadcast_broadcaster::APPLICATION_NAME],
            )
            .await
            .expect("terminate the LISTEN backend");
        rows.len() as u64
    }

    /// A new connection to this database (for concurrent writers).
    pub async fn connect(&self) -> Client {
        connect(&self.admin_url).await
    }
}

/// A connection LISTENing on `channel` (quoted as an identifier); notifications arrive on the
/// receiver in delivery order, as sent (a batch is one notification: see [`changes`]).
pub async fn listen(
    url: &str,
    channel: &str,
) -> (Client, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use futures::StreamExt;
    let (client, mut connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN \"{}\"", channel.replace('"', "\"\"")))
        .await
        .expect("LISTEN");
    (client, rx)
}

/// Inserts one reply over `client`; returns its id.
pub async fn insert_reply(client: &Client, thread: Uuid, content: &str) -> Uuid {
    let row = client
        .query_one(
            "INSERT INTO feedback_replies (feedback_id, author_type, author_name, content)
             VALUES ($1, 'agency', 'Ada', $2) RETURNING id",
            &[&thread, &content],
        )
        .await
        .unwrap_or_else(|e| panic!("insert a reply: {e:?}"));
    row.get(0)
}

/// What one notification says, whatever its form: its changes' payloads in order (a batch's
/// members, or the one change), or a resync notice (returned as `Err` with its text).
pub fn changes(notification: &str) -> Result<Vec<String>, String> {
    match Notification::parse(notification) {
        Ok(Notification::Batch(members)) => Ok(members.into_iter().map(str::to_owned).collect()),
        Ok(Notification::Resync(text)) => Err(text.to_owned()),
        _ => Ok(vec![notification.to_owned()]),
    }
}

/// A LISTEN connection read change by change: batches are opened, resync notices counted and
/// skipped, so that a test reads the same sequence of payloads in either delivery mode.
pub struct Heard {
    _client: Client,
    rx: tokio::sync::mpsc::UnboundedReceiver<String>,
    queued: std::collections::VecDeque<String>,
    /// Resync notices heard so far.
    pub resyncs: Vec<String>,
    /// Notifications heard so far (a batch counts once).
    pub notifications: usize,
}

impl Heard {
    /// LISTENs on `channel` of the database at `url`.
    pub async fn listen(url: &str, channel: &str) -> Heard {
        let (client, rx) = listen(url, channel).await;
        Heard {
            _client: client,
            rx,
            queued: Default::default(),
            resyncs: Vec::new(),
            notifications: 0,
        }
    }

    /// The next change's payload; panics after 20 s without one.
    pub async fn next(&mut self) -> String {
        loop {
            if let Some(payload) = self.queued.pop_front() {
                return payload;
            }
            let notification = self.notification().await;
            match changes(&notification) {
                Ok(payloads) => self.queued.extend(payloads),
                Err(resync) => self.resyncs.push(resync),
            }
        }
    }

    /// The next resync notice; changes heard meanwhile stay queued for [`Heard::next`].
    pub async fn next_resync(&mut self) -> String {
        loop {
            if let Some(resync) = (!self.resyncs.is_empty()).then(|| self.resyncs.remove(0)) {
                return resync;
            }
            let notification = self.notification().await;
            match changes(&notification) {
                Ok(payloads) => self.queued.extend(payloads),
                Err(resync) => self.resyncs.push(resync),
            }
        }
    }

    async fn notification(&mut self) -> String {
        let notification = tokio::time::timeout(std::time::Duration::from_secs(20), self.rx.recv())
            .await
            .expect("a notification within 20 s")
            .expect("the listener is alive");
        self.notifications += 1;
        notification
    }
}

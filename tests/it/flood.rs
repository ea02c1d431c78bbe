//! A flood of notifications from a role that may only connect (issue 10): any such role may
//! NOTIFY on threadcast's channel, and LISTEN to capture genuine notifications and send them
//! again. While it floods, real replies flow to open streams. The broadcaster runs as a process
//! of its own, so that its memory is its own: its peak RSS must stay within a bound, every real
//! reply must reach every stream exactly once, and a POST and a catch-up must be answered.
//!
//! CI floods with 200,000 notifications (half forged, half replayed); `cargo xtask bench flood`
//! sends a million to the release build and measures the replies' latency meanwhile.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use threadcast_broadcaster::auth::{Keys, Role};
use threadcast_harness::flood;
use threadcast_tests::{
    assert_every_subscriber_got_exactly_once, db, eventually, Cluster, SseStream, Subscriber,
    TestDb, Writer,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Forged notifications (bad signatures; one in ten names a key id that does not exist).
const FORGED: u32 = 100_000;
/// Genuine notifications captured by the flooder, each sent again this many times.
const CAPTURED: usize = 50;
const REPLAYS: u32 = 2_000;
/// How much the broadcaster's peak RSS may grow over its RSS before the flood. The listener holds
/// at most `--listener-buffer` (1,024) notifications and each followed thread at most 64 events,
/// a few megabytes of these payloads; an unbounded buffer held the whole flood (over 100 MB).
const RSS_GROWTH_BOUND: u64 = 32 << 20;

const SECRET: &str = "a-flood-test-secret-of-at-least-32-bytes";

/// The broadcaster in a child process (`broadcaster-process`), killed on drop.
struct Process {
    child: Child,
    base: String,
    keys: Keys,
}

impl Process {
    async fn start(db: &TestDb) -> Process {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("find a free port")
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_broadcaster-process"))
            .env("DATABASE_URL", &db.reader_url)
            .env("THREADCAST_ADDR", format!("127.0.0.1:{port}"))
            .env("THREADCAST_JWT_SECRET", SECRET)
            .env("THREADCAST_REPLY_RATE", "off")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the broadcaster process");
        let process = Process {
            child,
            base: format!("http://127.0.0.1:{port}"),
            keys: Keys::new(SECRET.as_bytes()),
        };
        let http = reqwest::Client::new();
        eventually("the broadcaster process to be ready", || async {
            http.get(format!("{}/readyz", process.base))
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK)
        })
        .await;
        process
    }

    fn token(&self, thread: Uuid) -> String {
        self.keys
            .mint(thread, Duration::from_secs(3600), Role::EndUser)
    }

    /// A `VmRSS` or `VmHWM` (peak) figure of /proc/<pid>/status, in bytes.
    fn memory(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read the broadcaster's /proc status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim_start_matches(':').split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"));
        kib * 1024
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.base))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("read /metrics");
        threadcast_tests::metric_value(&text, name)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_a_connect_only_role_keeps_memory_bounded_and_real_replies_flowing() {
    let db = TestDb::new().await;
    let broadcaster = Process::start(&db).await;
    let mut threads = Vec::new();
    for _ in 0..4 {
        threads.push(db.create_thread().await);
    }
    let subscribers: Vec<Subscriber> = threads
        .iter()
        .enumerate()
        .flat_map(|(t, thread)| {
            let base = &broadcaster.base;
            [
                Subscriber::spawn(
                    format!("client of thread {t}"),
                    base,
                    *thread,
                    broadcaster.token(*thread),
                ),
                Subscriber::spawn_live(
                    format!("live client of thread {t}"),
                    base,
                    *thread,
                    broadcaster.token(*thread),
                ),
            ]
        })
        .collect();

    // The flooder may connect, and LISTEN: it keeps genuine notifications to send them again.
    let role = format!("flooder_{}", &Uuid::new_v4().simple().to_string()[..12]);
    db.client
        .batch_execute(&format!("CREATE ROLE {role} LOGIN"))
        .await
        .unwrap();
    let flooder_url = Cluster::shared().url(&db.name, &role);
    let (flooder, mut heard) = db::listen(&flooder_url, "threadcast").await;
    for i in 0..CAPTURED {
        db.insert_reply(threads[i % threads.len()], &format!("captured {i}"))
            .await;
    }
    flooder.batch_execute(flood::CAPTURED_TABLE).await.unwrap();
    for _ in 0..CAPTURED {
        let payload = heard.recv().await.expect("a genuine notification");
        flooder
            .execute("INSERT INTO captured VALUES ($1)", &[&payload])
            .await
            .unwrap();
    }
    for subscriber in &subscribers {
        subscriber
            .wait_for_seq(db.current_seq(subscriber.thread).await)
            .await;
    }
    let rss_before = broadcaster.memory("VmRSS");

    // Real replies flow while the flood goes on.
    let writing = CancellationToken::new();
    let writer = tokio::spawn({
        let (stop, threads, url) = (writing.clone(), threads.clone(), db.admin_url.clone());
        async move {
            let mut writer = Writer::new(&url);
            let mut i = 0;
            while !stop.is_cancelled() {
                writer
                    .insert_reply(threads[i % threads.len()], &format!("real reply {i}"))
                    .await;
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            i
        }
    });
    let src = db.source_oid().await;
    let forger = db::connect(&flooder_url).await;
    let forge = flood::forged(src, &threads[0].to_string(), 1, FORGED.into());
    // Identical payloads in one transaction are sent once: one transaction per round of replays.
    flooder
        .batch_execute("SET synchronous_commit = off")
        .await
        .unwrap();
    let replay = flood::replays(REPLAYS.into());
    let (forged, replayed) =
        tokio::join!(forger.batch_execute(&forge), flooder.batch_execute(&replay));
    forged.expect("a role that may connect may NOTIFY");
    replayed.expect("and replay what it heard");

    // POST and a catch-up are answered while the broadcaster works through the flood.
    let http = reqwest::Client::new();
    let posted = http
        .post(format!("{}/api/widget/replies", broadcaster.base))
        .bearer_auth(broadcaster.token(threads[1]))
        .json(&serde_json::json!({
            "content": "posted during the flood",
            "author_name": "Maya",
            "client_id": Uuid::new_v4(),
        }))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("POST is answered during the flood");
    assert_eq!(posted.status(), StatusCode::CREATED);
    let owed = db.current_seq(threads[2]).await;
    let mut catch_up = SseStream::open(
        http.get(format!(
            "{}/api/widget/stream?feedbackId={}&lastEventId=0",
            broadcaster.base, threads[2]
        ))
        .bearer_auth(broadcaster.token(threads[2])),
    )
    .await
    .expect("a catch-up stream opens during the flood");
    let caught_up = catch_up.events(owed as usize).await;
    assert_eq!(caught_up.last().map(|e| e.seq()), Some(owed));

    let received = (FORGED as usize + CAPTURED * REPLAYS as usize) as f64;
    eventually(
        "the broadcaster to have taken every notification",
        || async {
            broadcaster
                .metric("threadcast_notifications_received_total")
                .await
                >= received
        },
    )
    .await;
    writing.cancel();
    let written = writer.await.unwrap();
    assert!(written > 0, "real replies were written during the flood");
    assert_every_subscriber_got_exactly_once(&db, subscribers).await;

    let peak = broadcaster.memory("VmHWM");
    let (rejected, stale, dropped) = (
        broadcaster
            .metric("threadcast_notifications_rejected_total")
            .await,
        broadcaster
            .metric("threadcast_notifications_stale_total")
            .await,
        broadcaster
            .metric("threadcast_notifications_dropped_total")
            .await,
    );
    eprintln!(
        "flood of {received} notifications: RSS {} MiB before, peak {} MiB; {rejected} rejected, \
         {stale} stale, {dropped} dropped for a full buffer; {written} real replies meanwhile",
        rss_before >> 20,
        peak >> 20
    );
    assert!(
        peak < rss_before + RSS_GROWTH_BOUND,
        "the broadcaster's peak RSS grew by {} MiB during a flood of {received} notifications \
         (bound {} MiB)",
        (peak - rss_before) >> 20,
        RSS_GROWTH_BOUND >> 20
    );
    assert!(
        rejected + dropped >= f64::from(FORGED),
        "every forged notification was refused or dropped: {rejected} + {dropped}"
    );
}

//! The demo's agency dashboard in a real browser (headless Chromium over WebDriver): a React page,
//! built with esbuild from npm (React's development build, under StrictMode), with a card per
//! thread of the demo project, each through `useThreadReplies`, against the real broadcaster and
//! a real PostgreSQL. Checked from the DOM, the page's own count of its connections, and the
//! broadcaster's gauges.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde::Deserialize;
use threadcast_tests::browser::{artifacts_dir, Browser};
use threadcast_tests::dashboard::feedback_projects;
use threadcast_tests::db::{insert_reply, READER_ROLE};
use threadcast_tests::{eventually, TestDb, TestServer};
use uuid::Uuid;

/// Page load, a first connect of every card, on a slow machine.
const PAGE_READY: Duration = Duration::from_secs(60);
/// Anything after the page is live.
const ARRIVAL: Duration = Duration::from_secs(30);

/// The page's script, built once per test run with the widget's esbuild.
fn bundle() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out = artifacts_dir().join("demo-dashboard");
            let widget = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../widget"));
            let status = Command::new("node")
                .arg(widget.join("scripts/build-demo.mjs"))
                .arg(&out)
                .status()
                .expect("run node (apt-get install nodejs)");
            assert!(
                status.success(),
                "building the dashboard page failed: run `npm ci` in widget/ first"
            );
            out
        })
        .clone()
}

/// A database with `sql/demo.sql`, and a demo-mode broadcaster serving the dashboard.
async fn demo(db: &TestDb, addr: Option<std::net::SocketAddr>) -> TestServer {
    let assets = bundle();
    let adjust = move |c: &mut threadcast_broadcaster::Config| {
        c.demo = true;
        c.demo_assets = Some(assets);
        c.projects = Some(feedback_projects());
        c.reply_rate = None;
        c.max_backoff = Duration::from_millis(500);
    };
    match addr {
        Some(addr) => TestServer::start_at(db, addr, adjust).await,
        None => TestServer::start_with(db, adjust).await,
    }
}

async fn demo_db() -> TestDb {
    let db = TestDb::new().await;
    let demo_sql = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../sql/demo.sql"))
        .expect("read sql/demo.sql");
    db.client
        .batch_execute(&demo_sql)
        .await
        .expect("load sql/demo.sql");
    // Demo mode reads the threads' titles.
    db.client
        .batch_execute(&format!("GRANT SELECT ON public.feedback TO {READER_ROLE}"))
        .await
        .expect("grant the titles");
    db
}

/// A card as the page shows it.
#[derive(Debug, Deserialize)]
struct Card {
    thread: String,
    ids: Vec<String>,
    seqs: Vec<i64>,
}

struct Page {
    browser: Browser,
}

impl Page {
    async fn open(server: &TestServer) -> Page {
        let browser = Browser::launch().await;
        browser.goto(&server.url("/demo/dashboard/")).await;
        let page = Page { browser };
        page.browser
            .wait_until(
                "the dashboard to be ready",
                "document.body.dataset.ready === 'true'",
                PAGE_READY,
            )
            .await;
        page.wait_all_live().await;
        page
    }

    async fn wait_all_live(&self) {
        self.browser
            .wait_until(
                "every card to be live",
                "(() => { const c = document.querySelectorAll('[data-card]'); return c.length > 0 && \
                 Array.from(c).every((e) => e.dataset.status === 'live') })()",
                PAGE_READY,
            )
            .await;
    }

    async fn cards(&self) -> Vec<Card> {
        self.browser
            .eval(
                "Array.from(document.querySelectorAll('[data-card]')).map((c) => ({
                    thread: c.dataset.thread,
                    ids: Array.from(c.querySelectorAll('li')).map((li) => li.dataset.id),
                    seqs: Array.from(c.querySelectorAll('li')).map((li) => Number(li.dataset.seq)),
                }))",
            )
            .await
    }

    /// The page's count of its dashboard connections: (opened ever, open now).
    async fn connections(&self) -> (u64, u64) {
        let stats: serde_json::Value = self
            .browser
            .eval("window.threadcastDashboard.stats()")
            .await;
        (
            stats["opened"].as_u64().unwrap(),
            stats["open"].as_u64().unwrap(),
        )
    }

    /// Waits until every card shows exactly its thread's replies in the table, in seq order.
    async fn wait_cards_match(&self, db: &TestDb, why: &str) {
        let deadline = tokio::time::Instant::now() + ARRIVAL;
        loop {
            let cards = self.cards().await;
            let mut mismatch = None;
            for card in &cards {
                let table = ids_in_table(db, card.thread.parse().unwrap()).await;
                if card.ids != table || !card.seqs.windows(2).all(|w| w[0] < w[1]) {
                    mismatch = Some(format!("{card:?} against the table's {table:?}"));
                    break;
                }
            }
            match mismatch {
                None => return,
                Some(m) if tokio::time::Instant::now() > deadline => {
                    panic!("{why}: a card does not show its thread: {m}")
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

/// The ids of `thread`'s replies in the table, in seq order.
async fn ids_in_table(db: &TestDb, thread: Uuid) -> Vec<String> {
    db.client
        .query(
            "SELECT id::text FROM feedback_replies WHERE feedback_id = $1 ORDER BY thread_seq",
            &[&thread],
        )
        .await
        .expect("read the thread's replies")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_card_gets_its_own_threads_replies_over_one_connection_which_closes_with_the_last_card(
) {
    let db = demo_db().await;
    let server = demo(&db, None).await;
    let page = Page::open(&server).await;
    let cards = page.cards().await;
    assert!(
        cards.len() >= 24,
        "the demo project has at least 24 cards: {}",
        cards.len()
    );
    assert_eq!(
        page.connections().await,
        (1, 1),
        "one connection for every card, under StrictMode's double mount"
    );
    eventually("the broadcaster to count one dashboard stream", || async {
        server.metric("threadcast_dashboard_streams").await == 1.0
            && server.metric("threadcast_dashboard_threads").await == cards.len() as f64
    })
    .await;

    // The end user answers in the widget beside the cards; the agency's card shows it.
    let client = &page.browser.client;
    client
        .find(fantoccini::Locator::Css("#end-user-input"))
        .await
        .expect("the widget's compose box")
        .send_keys("Found it right away now, thank you!")
        .await
        .expect("type");
    client
        .find(fantoccini::Locator::Css("#end-user-send"))
        .await
        .expect("the send button")
        .click()
        .await
        .expect("send");
    page.browser
        .wait_until(
            "the end user's reply on the first card",
            "document.querySelector('[data-card]').innerText.includes('Found it right away now')",
            ARRIVAL,
        )
        .await;
    let path = artifacts_dir().join("dashboard.png");
    page.browser.screenshot(&path).await;
    let png = std::fs::read(&path).expect("read the screenshot back");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "a PNG of the page"
    );

    // A reply in every thread, written with SQL, each naming its thread.
    let writer = db.connect().await;
    for card in &cards {
        let thread: Uuid = card.thread.parse().unwrap();
        insert_reply(&writer, thread, &format!("for {thread}")).await;
    }
    page.wait_cards_match(&db, "after a reply in every thread")
        .await;
    let text: HashMap<String, String> = page
        .browser
        .eval::<Vec<(String, String)>>(
            "Array.from(document.querySelectorAll('[data-card]')).map((c) => [c.dataset.thread, c.innerText])",
        )
        .await
        .into_iter()
        .collect();
    for card in &cards {
        for other in &cards {
            let mentions = text[&card.thread].contains(&format!("for {}", other.thread));
            assert_eq!(
                mentions,
                card.thread == other.thread,
                "card {} shows only its own thread",
                card.thread
            );
        }
    }

    // A card moved to another thread keeps the one connection.
    let elsewhere = db
        .create_thread_in(Uuid::parse_str("5f0c2b8e-1a7d-4c3b-8e9f-6a1d2c3b4a50").unwrap())
        .await;
    insert_reply(&writer, elsewhere, "on the moved card").await;
    page.browser
        .eval::<serde_json::Value>(&format!(
            "window.threadcastDashboard.moveCard(0, '{elsewhere}')"
        ))
        .await;
    page.browser
        .wait_until(
            "the first card to show its new thread",
            "document.querySelector('[data-card]').innerText.includes('on the moved card')",
            ARRIVAL,
        )
        .await;
    page.wait_cards_match(&db, "after the move").await;
    assert_eq!(
        page.connections().await,
        (1, 1),
        "the move took no second connection"
    );

    // Unmounting every card closes the connection; mounting them opens one again.
    page.browser
        .eval::<serde_json::Value>("window.threadcastDashboard.unmountAll()")
        .await;
    page.browser
        .wait_until(
            "the connection to close",
            "window.threadcastDashboard.stats().open === 0",
            ARRIVAL,
        )
        .await;
    eventually("the broadcaster to count no dashboard stream", || async {
        server.metric("threadcast_dashboard_streams").await == 0.0
            && server.metric("threadcast_dashboard_threads").await == 0.0
    })
    .await;
    page.browser
        .eval::<serde_json::Value>("window.threadcastDashboard.mountAll()")
        .await;
    page.wait_all_live().await;
    assert_eq!(
        page.connections().await,
        (2, 1),
        "one new connection for the remounted cards"
    );
    page.wait_cards_match(&db, "after remounting").await;
    page.browser.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcaster_restart_mid_conversation_loses_and_duplicates_nothing_on_any_card() {
    let db = demo_db().await;
    let first = demo(&db, None).await;
    let addr = first.addr;
    let page = Page::open(&first).await;
    let threads: Vec<Uuid> = page
        .cards()
        .await
        .iter()
        .map(|c| c.thread.parse().unwrap())
        .collect();
    let writer = db.connect().await;
    let mut written = Vec::new();
    for (i, t) in threads.iter().enumerate() {
        written.push(insert_reply(&writer, *t, &format!("before the restart {i}")).await);
    }
    page.wait_cards_match(&db, "before the restart").await;

    first.stop().await;
    // The conversation goes on meanwhile: replies, an edit, a delete.
    for (i, t) in threads.iter().enumerate().step_by(2) {
        insert_reply(&writer, *t, &format!("while the broadcaster was away {i}")).await;
    }
    writer
        .execute(
            "UPDATE feedback_replies SET content = 'edited while away' WHERE id = $1",
            &[&written[1]],
        )
        .await
        .unwrap();
    writer
        .execute("DELETE FROM feedback_replies WHERE id = $1", &[&written[2]])
        .await
        .unwrap();
    let second = demo(&db, Some(addr)).await;
    for (i, t) in threads.iter().enumerate().skip(1).step_by(3) {
        insert_reply(&writer, *t, &format!("after the restart {i}")).await;
    }
    page.wait_all_live().await;
    page.wait_cards_match(&db, "after the restart").await;
    assert_eq!(page.connections().await.1, 1, "still one open connection");
    eventually("one dashboard stream on the new broadcaster", || async {
        second.metric("threadcast_dashboard_streams").await == 1.0
    })
    .await;

    let path = artifacts_dir().join("dashboard.png");
    page.browser.screenshot(&path).await;
    let png = std::fs::read(&path).expect("read the screenshot back");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "a PNG of the page"
    );
    page.browser.quit().await;
}

//! The demo page in a real browser (headless Chromium over WebDriver) against the real
//! broadcaster in demo mode and a real PostgreSQL: what a person sees, checked from the DOM.
//!
//! Each test has a browser of its own and they take turns; see `threadcast_tests::browser`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;
use threadcast_tests::browser::{artifacts_dir, Browser};
use threadcast_tests::db::insert_reply;
use threadcast_tests::{eventually, TestDb, TestServer};
use uuid::Uuid;

/// The two panes of the demo page, by the role they post as.
const PANES: [&str; 2] = ["agency", "end_user"];

/// Page load, first connect and a first render on a slow machine.
const PAGE_READY: Duration = Duration::from_secs(60);

/// Anything after the page is live: a reply arriving, a refresh, a reconnect.
const ARRIVAL: Duration = Duration::from_secs(20);

/// A reply as one pane shows it.
#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
struct Shown {
    id: String,
    seq: i64,
    author: String,
    content: String,
}

/// A browser on the demo page of one thread.
struct DemoPage {
    browser: Browser,
}

impl DemoPage {
    /// Opens `/demo/?feedbackId=thread` plus `extra` and waits until both panes are live.
    async fn open(server: &TestServer, thread: Uuid, extra: &str) -> DemoPage {
        let browser = Browser::launch().await;
        browser
            .goto(&server.url(&format!("/demo/?feedbackId={thread}{extra}")))
            .await;
        let page = DemoPage { browser };
        page.wait_live().await;
        page
    }

    /// Waits until the page is set up and both panes' streams are live.
    async fn wait_live(&self) {
        self.browser
            .wait_until(
                "the demo page to be ready",
                "document.body.dataset.ready === 'true'",
                PAGE_READY,
            )
            .await;
        for role in PANES {
            self.browser
                .wait_until(
                    &format!("the {role} pane to be live"),
                    &format!("document.querySelector('#pane-{role}').dataset.status === 'live'"),
                    PAGE_READY,
                )
                .await;
        }
    }

    /// What `role`'s pane shows, top to bottom.
    async fn shown(&self, role: &str) -> Vec<Shown> {
        self.browser
            .eval(&format!(
                "Array.from(document.querySelectorAll('#replies-{role} li.reply')).map((li) => ({{
                    id: li.dataset.id,
                    seq: Number(li.dataset.seq),
                    author: li.dataset.authorType,
                    content: li.querySelector('.reply-content').textContent,
                }}))"
            ))
            .await
    }

    /// Waits until both panes show the reply `id`.
    async fn wait_for_reply(&self, id: Uuid, timeout: Duration) {
        self.browser
            .wait_until(
                &format!("reply {id} in both panes"),
                &both_show(id),
                timeout,
            )
            .await;
    }

    /// Waits until both panes show exactly `n` replies.
    async fn wait_for_count(&self, n: usize) {
        self.browser
            .wait_until(
                &format!("{n} replies in both panes"),
                &PANES
                    .map(|role| {
                        format!("document.querySelector('#pane-{role}').dataset.count === '{n}'")
                    })
                    .join(" && "),
                ARRIVAL,
            )
            .await;
    }

    /// A pane's `data-token-fetches`: how often its getToken fetched a token.
    async fn token_fetches(&self, role: &str) -> u64 {
        self.browser
            .eval::<String>(&format!(
                "document.querySelector('#pane-{role}').dataset.tokenFetches"
            ))
            .await
            .parse()
            .expect("data-token-fetches is a number")
    }

    /// `threadcastDemo.panes[role].send(content, clientId)`: the row it resolves to, or the error.
    async fn send(&self, role: &str, content: &str, client_id: Uuid) -> serde_json::Value {
        self.browser
            .run_async(
                "return await threadcastDemo.panes[args[0]].send(args[1], args[2]);",
                vec![json!(role), json!(content), json!(client_id.to_string())],
            )
            .await
    }

    /// Types `content` into `role`'s compose box and clicks Send, as a person would.
    async fn type_and_send(&self, role: &str, content: &str) {
        let client = &self.browser.client;
        let input = client
            .find(fantoccini::Locator::Css(&format!("#input-{role}")))
            .await
            .expect("the compose box");
        input.send_keys(content).await.expect("type a reply");
        client
            .find(fantoccini::Locator::Css(&format!("#send-{role}")))
            .await
            .expect("the send button")
            .click()
            .await
            .expect("click send");
        self.browser
            .wait_until(
                &format!("the {role} compose box to be sent and cleared"),
                &format!(
                    "document.querySelector('#compose-{role}').dataset.sending !== 'true' \
                     && document.querySelector('#input-{role}').value === ''"
                ),
                ARRIVAL,
            )
            .await;
        let error: bool = self
            .browser
            .eval(&format!("!document.querySelector('#error-{role}').hidden"))
            .await;
        assert!(!error, "the {role} pane shows no send error");
    }
}

/// A JavaScript condition: both panes show reply `id`.
fn both_show(id: Uuid) -> String {
    PANES
        .map(|role| format!("document.querySelector('#replies-{role} li.reply[data-id=\"{id}\"]')"))
        .join(" && ")
}

/// Asserts that both panes show exactly `expected` (ids in this order), each once.
async fn assert_both_panes_show(page: &DemoPage, expected: &[Uuid], why: &str) {
    let expected: Vec<String> = expected.iter().map(Uuid::to_string).collect();
    for role in PANES {
        let shown = page.shown(role).await;
        let ids: Vec<String> = shown.iter().map(|r| r.id.clone()).collect();
        assert_eq!(ids, expected, "{why}: the {role} pane's replies");
        assert!(
            shown.windows(2).all(|w| w[0].seq < w[1].seq),
            "{why}: the {role} pane is in seq order: {shown:?}"
        );
    }
}

/// The ids of `thread`'s replies in the table, in seq order.
async fn ids_in_table(db: &TestDb, thread: Uuid) -> Vec<Uuid> {
    db.client
        .query(
            "SELECT id FROM feedback_replies WHERE feedback_id = $1 ORDER BY thread_seq",
            &[&thread],
        )
        .await
        .expect("read the thread's replies")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn demo_server(db: &TestDb) -> TestServer {
    TestServer::start_with(db, |c| {
        c.demo = true;
        // The tests post in quick succession on purpose.
        c.reply_rate = None;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_committed_with_sql_appears_in_both_panes() {
    let db = TestDb::new().await;
    let server = demo_server(&db).await;
    let thread = db.create_thread().await;
    let earlier = db
        .insert_reply(thread, "committed before the page opened")
        .await;
    let page = DemoPage::open(&server, thread, "").await;
    page.wait_for_reply(earlier, ARRIVAL).await;

    for i in 0..3 {
        // A deadline, not a latency bound: how fast a reply arrives is measured by
        // `cargo xtask bench stream`, on a machine that is not also compiling.
        let id = db.insert_reply(thread, &format!("from SQL {i}")).await;
        page.wait_for_reply(id, ARRIVAL).await;
    }
    assert_both_panes_show(
        &page,
        &ids_in_table(&db, thread).await,
        "after four replies",
    )
    .await;
    page.browser.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_sent_from_one_pane_appears_in_the_other_and_in_the_table_once_even_when_retried() {
    let db = TestDb::new().await;
    let server = demo_server(&db).await;
    let thread = db.create_thread().await;
    let page = DemoPage::open(&server, thread, "").await;
    // Every event of the thread, as a second client sees it on the wire.
    let mut wire = server.open(thread).await;

    // The end user's send, retried: twice at once, then once more after both answered.
    let client_id = Uuid::new_v4();
    let first = page
        .browser
        .run_async(
            "return await Promise.all([
                threadcastDemo.panes.end_user.send(args[0], args[1]),
                threadcastDemo.panes.end_user.send(args[0], args[1]),
            ]);",
            vec![
                json!("Still below the fold on my phone."),
                json!(client_id.to_string()),
            ],
        )
        .await;
    let again = page
        .send("end_user", "Still below the fold on my phone.", client_id)
        .await;
    for row in first
        .as_array()
        .expect("both sends resolve")
        .iter()
        .chain([&again])
    {
        assert_eq!(
            row["id"],
            json!(client_id.to_string()),
            "every try answers the one row: {row}"
        );
        assert_eq!(row["author_type"], "end_user");
        assert_eq!(row["author_name"], "Maya");
    }
    page.wait_for_reply(client_id, ARRIVAL).await;

    // The agency answers through the compose box.
    page.type_and_send("agency", "Thanks! We moved it up; could you check again?")
        .await;
    page.wait_for_count(2).await;

    let table = ids_in_table(&db, thread).await;
    assert_eq!(
        table.len(),
        2,
        "one row per reply, however often it was posted"
    );
    assert_eq!(table[0], client_id);
    assert_both_panes_show(&page, &table, "after a retried send and a typed one").await;
    let agency_reply = &page.shown("end_user").await[1];
    assert_eq!(
        (agency_reply.author.as_str(), agency_reply.seq),
        ("agency", 2),
        "the typed reply is the agency's, numbered right after the first (no number was burnt)"
    );
    let events = wire.events(2).await;
    assert_eq!(
        events.iter().map(|e| e.seq()).collect::<Vec<_>>(),
        [1, 2],
        "one event per reply on the wire"
    );
    db.insert_reply(thread, "marker").await;
    assert_eq!(
        wire.next_event().await.content(),
        "marker",
        "and no repeat of the retried reply before the next one"
    );
    page.browser.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_the_listen_backend_while_the_page_is_open_loses_nothing() {
    let db = TestDb::new().await;
    let server = TestServer::start_with(&db, |c| {
        c.demo = true;
        c.max_backoff = Duration::from_millis(500);
    })
    .await;
    let thread = db.create_thread().await;
    let page = DemoPage::open(&server, thread, "").await;
    let first = db.insert_reply(thread, "before the cut").await;
    page.wait_for_reply(first, ARRIVAL).await;

    assert_eq!(
        db.terminate_listener().await,
        1,
        "there is one LISTEN connection"
    );
    let writer = db.connect().await;
    for i in 0..5 {
        insert_reply(&writer, thread, &format!("while listening again {i}")).await;
    }
    eventually("the broadcaster to listen again", || async {
        server.readyz().await == 200
    })
    .await;
    for i in 0..3 {
        db.insert_reply(thread, &format!("after {i}")).await;
    }

    page.wait_for_count(9).await;
    assert_both_panes_show(&page, &ids_in_table(&db, thread).await, "after the cut").await;
    for role in PANES {
        let status: String = page
            .browser
            .eval(&format!(
                "document.querySelector('#pane-{role}').dataset.status"
            ))
            .await;
        assert_eq!(status, "live", "the {role} pane stayed live");
    }
    page.browser.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refreshed_through_get_token_without_losing_a_reply() {
    const TTL_SECS: u64 = 3;
    let db = TestDb::new().await;
    let server = demo_server(&db).await;
    let thread = db.create_thread().await;
    let page = DemoPage::open(&server, thread, &format!("&ttl={TTL_SECS}")).await;
    let started = Instant::now();
    let fetched_first: HashMap<&str, u64> = {
        let mut m = HashMap::new();
        for role in PANES {
            m.insert(role, page.token_fetches(role).await);
        }
        m
    };
    let mut written = vec![db.insert_reply(thread, "with the first token").await];

    // One reply after each of the agency pane's next three token fetches: the last ones come
    // after the first token has expired, while streams are being swapped for fresh tokens.
    for round in 1..=3 {
        let target = fetched_first["agency"] + round;
        page.browser
            .wait_until(
                &format!("token fetch {target} of the agency pane"),
                &format!("Number(document.querySelector('#pane-agency').dataset.tokenFetches) >= {target}"),
                ARRIVAL,
            )
            .await;
        written.push(
            db.insert_reply(thread, &format!("after refresh {round}"))
                .await,
        );
    }
    assert!(
        started.elapsed() > Duration::from_secs(TTL_SECS),
        "the replies went on past the first token's expiry"
    );
    for role in PANES {
        assert!(
            page.token_fetches(role).await > fetched_first[role],
            "the {role} pane fetched new tokens"
        );
    }
    page.wait_for_count(written.len()).await;
    assert_both_panes_show(&page, &written, "across token refreshes").await;
    page.browser.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_a_page_never_shows_thread_b_replies() {
    let db = TestDb::new().await;
    let server = demo_server(&db).await;
    let (a, b) = (db.create_thread().await, db.create_thread().await);
    let page = DemoPage::open(&server, a, "").await;
    let mut b_wire = server.open(b).await;

    let mut a_ids = Vec::new();
    for i in 0..4 {
        db.insert_reply(b, &format!("thread B secret {i}")).await;
        a_ids.push(db.insert_reply(a, &format!("thread A {i}")).await);
    }
    let posted = server
        .http
        .post(server.url("/api/widget/replies"))
        .bearer_auth(server.token(b))
        .json(&json!({ "content": "thread B secret posted", "author_name": "Jon", "client_id": Uuid::new_v4() }))
        .send()
        .await
        .expect("POST a reply to thread B");
    assert_eq!(posted.status(), 201);
    // B's replies have all gone out before A's last one is written.
    assert_eq!(b_wire.events(5).await.len(), 5);
    a_ids.push(db.insert_reply(a, "thread A last").await);

    page.wait_for_count(a_ids.len()).await;
    assert_both_panes_show(&page, &a_ids, "thread A's page").await;
    let text: String = page.browser.eval("document.body.innerText").await;
    assert!(
        !text.contains("thread B"),
        "nothing of thread B is on the page:\n{text}"
    );

    // Nor can the page ask for B's stream with its own token.
    let status = page
        .browser
        .run_async(
            "const token = await threadcastDemo.panes.end_user.getToken();
             const res = await fetch(`/api/widget/stream?feedbackId=${args[0]}&token=${token}`);
             return res.status;",
            vec![json!(b.to_string())],
        )
        .await;
    assert_eq!(
        status,
        json!(403),
        "thread A's token is refused for thread B"
    );
    page.browser.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_shows_the_demo_thread_and_a_screenshot_is_written() {
    let db = TestDb::new().await;
    let demo_sql = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../sql/demo.sql"))
        .expect("read sql/demo.sql");
    db.client
        .batch_execute(&demo_sql)
        .await
        .expect("load sql/demo.sql");
    // Demo mode reads the thread's title from public.feedback.
    db.client
        .batch_execute(&format!(
            "GRANT SELECT ON public.feedback TO {}",
            threadcast_tests::db::READER_ROLE
        ))
        .await
        .expect("grant the reader the feedback table");
    let server = demo_server(&db).await;

    // Without ?feedbackId= the page asks /demo/thread; /demo redirects to /demo/.
    let browser = Browser::launch().await;
    browser.goto(&server.url("/demo")).await;
    let page = DemoPage { browser };
    page.wait_live().await;
    page.wait_for_count(3).await;
    let title: String = page
        .browser
        .eval("document.querySelector('#thread-title').textContent")
        .await;
    assert_eq!(title, "Checkout button is hard to find on mobile");

    page.type_and_send(
        "agency",
        "We moved the button above the fold on small screens. Could you check again, Maya?",
    )
    .await;
    page.wait_for_count(4).await;
    page.type_and_send("end_user", "Found it right away. Thank you!")
        .await;
    page.wait_for_count(5).await;
    let shown = page.shown("agency").await;
    assert_eq!(
        shown.iter().map(|r| r.author.as_str()).collect::<Vec<_>>(),
        ["end_user", "agency", "end_user", "agency", "end_user"]
    );
    assert_eq!(shown[4].content, "Found it right away. Thank you!");

    let path = artifacts_dir().join("demo.png");
    page.browser.screenshot(&path).await;
    let png = std::fs::read(&path).expect("read the screenshot back");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{} is a PNG of the page ({} bytes)",
        path.display(),
        png.len()
    );
    page.browser.quit().await;
}

//! A dashboard client for tests: opens `GET /api/dashboard/stream`, learns its id from the
//! `open` event, changes what it follows with `POST /api/dashboard/stream/{id}`, and reads the
//! threads' events, keeping each thread's cursor (the last seq it received).

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};
use threadcast_broadcaster::auth::Role;
use threadcast_broadcaster::dashboard::{mint_projects, ProjectsOf};
use uuid::Uuid;

use crate::server::TestServer;
use crate::sse::{Refused, SseEvent, SseStream};

/// The membership of `sql/schema.sql`: `public.feedback`'s `id` is the thread, `project_id` its
/// project.
pub fn feedback_projects() -> ProjectsOf {
    ProjectsOf {
        table: "public.feedback".into(),
        thread_key: "id".into(),
        project_column: "project_id".into(),
    }
}

/// A one-hour agency token for `projects`.
pub fn project_token(server: &TestServer, projects: &[Uuid]) -> String {
    let projects: Vec<String> = projects.iter().map(Uuid::to_string).collect();
    mint_projects(
        &server.keys,
        &projects,
        Duration::from_secs(3600),
        Role::Agency,
    )
}

/// A change of one thread, as a dashboard stream carries it.
#[derive(Clone, Debug, PartialEq)]
pub struct ThreadEvent {
    /// `reply`, `delete` or `reset`.
    pub kind: String,
    pub thread: Uuid,
    pub seq: i64,
    pub data: Value,
}

/// An open dashboard stream.
pub struct Dashboard {
    pub stream: SseStream,
    pub id: String,
    url: String,
    http: reqwest::Client,
    /// Every thread event received, in order.
    pub events: Vec<ThreadEvent>,
    /// Every other event (`joined`, `revoked`, `refused`, `expired`), in order.
    pub notes: Vec<SseEvent>,
}

impl Dashboard {
    /// Opens a stream with `token` and reads its `open` event.
    pub async fn open(server: &TestServer, token: &str) -> Result<Dashboard, Refused> {
        let request = server
            .http
            .get(server.url("/api/dashboard/stream"))
            .bearer_auth(token);
        let mut stream = SseStream::open(request).await?;
        let open = stream.next_event().await;
        assert_eq!(open.event, "open", "a dashboard stream starts with `open`");
        Ok(Dashboard {
            id: open.json()["stream"]
                .as_str()
                .expect("a stream id")
                .to_owned(),
            stream,
            url: server.url(""),
            http: server.http.clone(),
            events: Vec::new(),
            notes: Vec::new(),
        })
    }

    /// POSTs `body` to the stream with `token`; returns the status and the JSON answer.
    pub async fn change(&self, token: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/api/dashboard/stream/{}", self.url, self.id))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("POST a change");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Follows `threads`, each after the given seq (0: the whole thread).
    pub async fn follow(&self, token: &str, threads: &[(Uuid, i64)]) -> Value {
        let follow: serde_json::Map<String, Value> = threads
            .iter()
            .map(|(t, seq)| (t.to_string(), json!(seq)))
            .collect();
        let (status, body) = self.change(token, json!({ "follow": follow })).await;
        assert_eq!(status, 200, "follow: {body}");
        body
    }

    /// Reads the next event; a thread's change is recorded in `events`, others in `notes`.
    /// None at the end of the stream.
    pub async fn next(&mut self) -> Option<SseEvent> {
        let event = self.stream.next_event_or_end().await?;
        match event.event.as_str() {
            "reply" | "delete" | "reset" => {
                let data = event.json();
                self.events.push(ThreadEvent {
                    kind: event.event.clone(),
                    thread: data["thread"]
                        .as_str()
                        .and_then(|t| t.parse().ok())
                        .expect("a thread"),
                    seq: data["seq"].as_i64().expect("a seq"),
                    data: data["data"].clone(),
                });
            }
            _ => self.notes.push(event.clone()),
        }
        Some(event)
    }

    /// Reads until `done` holds for what has been read; panics if the stream ends first.
    pub async fn until(&mut self, what: &str, done: impl Fn(&Dashboard) -> bool) {
        while !done(self) {
            if self.next().await.is_none() {
                panic!(
                    "the stream ended before {what}: {:?} {:?}",
                    self.events, self.notes
                );
            }
        }
    }

    /// Reads until every thread of `threads` has joined.
    pub async fn joined(&mut self, threads: &[Uuid]) {
        self.until("every thread joined", |d| {
            threads.iter().all(|t| {
                d.notes
                    .iter()
                    .any(|n| n.event == "joined" && n.json()["thread"] == t.to_string())
            })
        })
        .await;
    }

    /// Each thread's last seq received: the cursor to follow again with.
    pub fn cursor(&self) -> HashMap<Uuid, i64> {
        let mut cursor = HashMap::new();
        for e in &self.events {
            let last = cursor.entry(e.thread).or_insert(0);
            *last = e.seq.max(*last);
        }
        cursor
    }

    /// The seqs received for `thread`, in order.
    pub fn seqs(&self, thread: Uuid) -> Vec<i64> {
        self.events
            .iter()
            .filter(|e| e.thread == thread)
            .map(|e| e.seq)
            .collect()
    }
}

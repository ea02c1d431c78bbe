//! The dashboard stream's wire format: the widget's events wrapped with the thread they belong
//! to, and the stream's own events (`open`, `joined`, `revoked`, `expired`). `docs/dashboard.md`
//! describes it for clients.
//!
//! Frames carry no `id:` field: a stream of many threads has no single position to resume from,
//! so a client resumes by sending its cursor (thread → last seq) when it follows again.

use axum::body::Bytes;

use crate::sse::Event;

/// `event: open` with the stream's id, which `POST /api/dashboard/stream/{id}` names.
pub fn open(stream: &str) -> Bytes {
    frame("open", &serde_json::json!({ "stream": stream }).to_string())
}

/// `event: joined`: the thread is followed; every change after `seq` follows.
pub fn joined(thread: &str, seq: i64) -> Bytes {
    frame(
        "joined",
        &serde_json::json!({ "thread": thread, "seq": seq }).to_string(),
    )
}

/// `event: reply|delete|reset` of `thread`: `{"thread", "seq", "data"}`, where `data` is what the
/// widget stream sends for the same change (the row, `{"id"}`, or `{}`).
pub fn change(thread: &str, event: &Event) -> Bytes {
    let (kind, data) = event.parts();
    let thread = serde_json::to_string(thread).expect("a string serializes");
    let mut text = String::with_capacity(data.len() + thread.len() + kind.len() + 48);
    text.push_str("event: ");
    text.push_str(kind);
    text.push_str("\ndata: {\"thread\":");
    text.push_str(&thread);
    text.push_str(",\"seq\":");
    text.push_str(&event.seq.to_string());
    text.push_str(",\"data\":");
    text.push_str(data);
    text.push_str("}\n\n");
    Bytes::from(text)
}

/// `event: revoked`: the token no longer covers the thread (it left the token's projects);
/// nothing more of it follows.
pub fn revoked(thread: &str, reason: &str) -> Bytes {
    frame(
        "revoked",
        &serde_json::json!({ "thread": thread, "reason": reason }).to_string(),
    )
}

/// `event: refused`: a thread the stream was asked to follow and does not (it follows as many
/// as it may).
pub fn refused(thread: &str, reason: &str) -> Bytes {
    frame(
        "refused",
        &serde_json::json!({ "thread": thread, "reason": reason }).to_string(),
    )
}

/// `event: expired`, the last frame of a stream whose token has expired: reconnect with a fresh
/// token and the cursor.
pub fn expired() -> Bytes {
    frame("expired", "{}")
}

fn frame(kind: &str, data: &str) -> Bytes {
    Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_names_its_thread_and_seq_around_the_widget_data() {
        let frame = change("t-1", &Event::reply(4, r#"{"id":"a","content":"hi"}"#));
        assert_eq!(
            &frame[..],
            b"event: reply\ndata: {\"thread\":\"t-1\",\"seq\":4,\"data\":{\"id\":\"a\",\"content\":\"hi\"}}\n\n"
        );
        let frame = change("t\"2", &Event::delete(5, "a"));
        let data: serde_json::Value = serde_json::from_slice(
            frame
                .strip_prefix(b"event: delete\ndata: ")
                .unwrap()
                .strip_suffix(b"\n\n")
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            data,
            serde_json::json!({"thread": "t\"2", "seq": 5, "data": {"id": "a"}})
        );
    }
}

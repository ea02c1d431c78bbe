//! What the `#[pg_test]`s share: the feedback schema, threads and replies.

use pgrx::prelude::*;

/// The feedback tables of `sql/schema.sql`, with threadcast enabled on the replies.
pub fn schema() {
    Spi::run(include_str!("../../../sql/schema.sql")).expect("sql/schema.sql loads");
}

/// A feedback thread, by its uuid in text form.
pub fn thread(n: u8) -> String {
    let id = format!("00000000-0000-4000-8000-0000000000{n:02x}");
    Spi::run(&format!(
        "INSERT INTO feedback (id, title) VALUES ('{id}', 'thread {n}') ON CONFLICT DO NOTHING"
    ))
    .expect("a thread inserts");
    id
}

/// Inserts a reply and returns (id, thread_seq).
pub fn reply(thread: &str, content: &str) -> (String, i64) {
    let (id, seq) = Spi::get_two_with_args::<String, i64>(
        "INSERT INTO feedback_replies (feedback_id, author_type, author_name, content) \
         VALUES ($1::uuid, 'end_user', 'Maya', $2) RETURNING id::text, thread_seq",
        &[thread.into(), content.into()],
    )
    .expect("a reply inserts");
    (id.expect("id"), seq.expect("thread_seq"))
}

pub fn one<T: FromDatum + IntoDatum>(sql: &str) -> T {
    Spi::get_one::<T>(sql)
        .expect(sql)
        .expect("a non-NULL result")
}

/// Every key of `threadcast.keys` (a pg_test runs as a superuser, who may read them).
pub fn keys() -> threadcast_payload::KeyRing {
    Spi::connect(|c| {
        let keys = c
            .select("SELECT kid, secret FROM threadcast.keys", None, &[])
            .unwrap()
            .map(|row| {
                let kid = row.get::<i32>(1).unwrap().unwrap();
                let secret = row.get::<Vec<u8>>(2).unwrap().unwrap();
                threadcast_payload::Key::from_row(kid as u32, &secret).unwrap()
            })
            .collect::<Vec<_>>();
        threadcast_payload::KeyRing::new(keys)
    })
}

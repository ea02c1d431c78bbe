-- The role the broadcaster connects as: what it needs, and nothing more (docs/security.md).
--
-- Run it in the application's database after sql/schema.sql, as a superuser or a role with
-- CREATEROLE that owns public.feedback_replies. It is idempotent. It sets no password: give the
-- role one (ALTER ROLE threadcast_broadcaster PASSWORD '...') or map it in pg_hba.conf the way
-- your platform does, and put it in the broadcaster's DATABASE_URL.
--
-- What the broadcaster does not need, and so does not get: superuser, ownership of any table,
-- UPDATE or DELETE on the replies, any column of public.feedback but its key and its project
-- (no titles, no content), and any write to the
-- extension's own tables. LISTEN needs no privilege; the extension's read functions run as
-- their caller, so SELECT on the replies is what lets them read; threadcast.sources,
-- threadcast.counters and threadcast.tombstones are readable by every role already, row-level
-- security showing each reader the threads it can see; and an INSERT numbers its row through
-- the extension's privileged helpers, never by writing the counters itself. The one grant on
-- the extension's tables is SELECT on threadcast.keys, through threadcast.grant_listen(): the
-- broadcaster checks every notification's signature with those keys.

DO $$
BEGIN
    CREATE ROLE threadcast_broadcaster LOGIN;
EXCEPTION
    -- Already there; or created by a concurrent run of this script in another database.
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

-- PUBLIC may connect by default; this keeps working where that was revoked.
DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO threadcast_broadcaster', current_database());
END
$$;

-- To name the replies table and call threadcast.changes, latest and current_seq.
GRANT USAGE ON SCHEMA public, threadcast TO threadcast_broadcaster;

-- SELECT: catch-up after Last-Event-ID, ?history=N, rows a notification left out (too large,
-- keys-only), and a retried POST answered with the row already stored. INSERT: POST
-- /api/widget/replies (its RETURNING needs the SELECT too).
GRANT SELECT, INSERT ON public.feedback_replies TO threadcast_broadcaster;

-- Dashboard tokens scoped to projects (THREADCAST_PROJECT_TABLE=public.feedback): which project
-- each thread belongs to, read in batches. Only the two columns that say so.
GRANT SELECT (id, project_id) ON public.feedback TO threadcast_broadcaster;

-- To verify the signature of every notification (docs/payload.md).
SELECT threadcast.grant_listen('threadcast_broadcaster');

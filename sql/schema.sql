-- The feedback product's tables: threads (`feedback`) and their replies (`feedback_replies`),
-- with threadcast attached to the replies. Needs `CREATE EXTENSION threadcast` first.

CREATE TABLE IF NOT EXISTS public.feedback (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    project_id uuid,
    title      text,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.feedback_replies (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    feedback_id uuid NOT NULL REFERENCES public.feedback ON DELETE CASCADE,
    author_type text CHECK (author_type IN ('agency', 'end_user')),
    author_name text,
    content     text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Per-thread sequence numbers, the unique index, and the NOTIFY triggers. Logical decoding
-- consumers (Supabase Realtime among them) need REPLICA IDENTITY FULL; set it here once.
SELECT threadcast.enable('public.feedback_replies', replica_identity_full => true);
